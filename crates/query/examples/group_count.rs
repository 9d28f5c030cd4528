//! The library behind `auditflow query --where COND --group-by PATHS FILE...`, without the
//! CLI around it: for measuring and profiling the scan on its own.
//!
//! ```sh
//! cargo run --release -p auditflow-query --example group_count -- \
//!     'responseStatus.code == 403 and verb == "list"' user.username target/bench/corpus-metadata-1.log
//! ```

use std::path::PathBuf;
use std::time::Instant;

use auditflow_core::condition::{Condition, Path};
use auditflow_query::output::{sink, Format};
use auditflow_query::query::run;
use auditflow_query::{Filter, Input, Query, ReadOptions, Request};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(condition), Some(paths)) = (args.next(), args.next()) else {
        eprintln!("usage: group_count CONDITION PATH[,PATH...] FILE...");
        std::process::exit(2);
    };
    let query = Query {
        filter: Filter {
            condition: Some(Condition::parse(&condition).expect("a valid condition")),
            ..Filter::default()
        },
        request: Request::Group {
            paths: paths
                .split(',')
                .map(|p| Path::parse(p).expect("a valid path"))
                .collect(),
            top: None,
        },
    };
    let inputs: Vec<Input> = args.map(|a| Input::File(PathBuf::from(a))).collect();
    let started = Instant::now();
    let mut out = sink(Format::Table, Box::new(std::io::stdout()), None);
    let summary = run(
        &query,
        &inputs,
        &ReadOptions::default(),
        out.as_mut(),
        &mut |_| {},
    )
    .expect("readable inputs");
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "{} events, {:.1} MB in {seconds:.2} s: {:.0} MB/s",
        summary.scan.events,
        summary.scan.bytes_read as f64 / 1e6,
        summary.scan.bytes_read as f64 / 1e6 / seconds
    );
}
