//! `auditflow query`: filter, group and list audit events from files or standard input.
//!
//! The work is done by `auditflow-query`; this file turns flags into a [`Query`], draws
//! the progress bar (on a terminal only) and prints the summary on standard error.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use auditflow_core::condition::{Condition, ConditionError, Path};
use auditflow_query::input::{order_rotated, total_bytes};
use auditflow_query::output::{self, Format};
use auditflow_query::time::parse_bound;
use auditflow_query::{
    Filter, Input, Query, ReadOptions, Request, ScanStats, TimeField, TimeWindow,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What events to read and which of them to look at: shared by `query` and `rbac suggest`.
#[derive(Debug, clap::Args)]
pub(crate) struct Inputs {
    /// Audit log files: plain, `.gz`, a rotated set (read oldest first), or webhook
    /// `EventList` bodies. `-` or none at all reads standard input.
    pub files: Vec<PathBuf>,
    /// Only events at or after this time: RFC 3339 (`2026-11-23T08:00:00Z`) or a duration
    /// back from now (`2h`, `90m`, `1h30m`, `2 days`).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only events before this time (same forms as `--since`).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// The timestamp `--since` and `--until` apply to.
    #[arg(long, default_value = "requestReceivedTimestamp", value_parser = ["requestReceivedTimestamp", "stageTimestamp"])]
    pub time_field: String,
    /// Threads that decode (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl Inputs {
    /// The inputs in reading order.
    pub(crate) fn inputs(&self) -> Vec<Input> {
        if self.files.is_empty() {
            return vec![Input::Stdin];
        }
        let given = self
            .files
            .iter()
            .map(|path| match path.to_str() {
                Some("-") => Input::Stdin,
                _ => Input::File(path.clone()),
            })
            .collect();
        order_rotated(given)
    }

    /// The `--since`/`--until` window.
    pub(crate) fn window(&self) -> Result<TimeWindow, String> {
        let now = jiff::Timestamp::now();
        let bound = |flag: &str, text: &Option<String>| {
            text.as_deref()
                .map(|text| parse_bound(text, now).map_err(|e| format!("{flag}: {e}")))
                .transpose()
        };
        Ok(TimeWindow {
            field: self.time_field.parse::<TimeField>()?,
            since: bound("--since", &self.since)?,
            until: bound("--until", &self.until)?,
        })
    }

    /// Sizes rayon's pool; only the first call in a process has an effect.
    pub(crate) fn configure_threads(&self) {
        if let Some(threads) = self.threads.filter(|n| *n > 0) {
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build_global();
        }
    }
}

/// Options of `query`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    inputs: Inputs,
    /// Only events for which this condition holds (the language of `filter`, see
    /// docs/conditions.md): `responseStatus.code == 403 and verb == "list"`.
    #[arg(long = "where", value_name = "CONDITION")]
    condition: Option<String>,
    /// Count events per distinct value of these paths (comma-separated), most frequent
    /// first.
    #[arg(
        long,
        value_name = "PATH,...",
        value_delimiter = ',',
        conflicts_with = "select"
    )]
    group_by: Vec<String>,
    /// With `--group-by`: print every group with its count (the default).
    #[arg(long, requires = "group_by", conflicts_with = "top")]
    count: bool,
    /// With `--group-by`: only the N most frequent groups.
    #[arg(long, value_name = "N", requires = "group_by")]
    top: Option<usize>,
    /// List matching events with these columns (comma-separated paths).
    #[arg(long, value_name = "PATH,...", value_delimiter = ',')]
    select: Vec<String>,
    /// Only denials, as `rbac_denial` classifies them: RBAC (`forbid`), authentication
    /// (401) and other 403s (admission).
    #[arg(long)]
    denials: bool,
    /// Output format. `json`/`ndjson` without `--select` or `--group-by` print the
    /// matching events themselves.
    #[arg(long, default_value = "table", value_parser = ["table", "json", "csv", "ndjson"])]
    format: String,
}

/// Runs `query`; exits 2 on a usage error, 1 when an input cannot be read.
pub(crate) fn run(args: &Args) -> ExitCode {
    let (query, format) = match build(args) {
        Ok(built) => built,
        Err(message) => {
            eprintln!("auditflow query: {message}");
            return ExitCode::from(2);
        }
    };
    args.inputs.configure_threads();
    let inputs = args.inputs.inputs();
    let stdout = std::io::stdout();
    let on_terminal = stdout.is_terminal();
    let width = table_width(on_terminal);
    let mut progress = Progress::new(&inputs);
    // On a terminal that also shows the bar, the answer is written with the bar lifted,
    // so that the bar's redraws and its final clearing never touch the answer's lines.
    let out: Box<dyn Write> = match &progress.bar {
        Some(bar) if on_terminal => Box::new(AroundBar {
            bar: bar.clone(),
            out: stdout.lock(),
            partial: Vec::new(),
        }),
        _ => Box::new(stdout.lock()),
    };
    let mut sink = output::sink(format, out, width);
    let result = auditflow_query::query::run(
        &query,
        &inputs,
        &ReadOptions::default(),
        sink.as_mut(),
        &mut |stats| progress.update(stats),
    );
    progress.finish();
    match result {
        Ok(summary) => {
            let failed = report(&summary.scan, &format!("{} matched", summary.matched));
            if let Some(error) = sink.error() {
                if error.kind() != std::io::ErrorKind::BrokenPipe {
                    eprintln!("auditflow query: writing the answer: {error}");
                    return ExitCode::FAILURE;
                }
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => {
            eprintln!("auditflow query: {error}");
            ExitCode::FAILURE
        }
    }
}

fn build(args: &Args) -> Result<(Query, Format), String> {
    let condition = match &args.condition {
        Some(text) => Some(Condition::parse(text).map_err(|e| pointed("--where", text, &e))?),
        None => None,
    };
    let paths = |flag: &str, texts: &[String]| -> Result<Vec<Path>, String> {
        texts
            .iter()
            .map(|text| Path::parse(text.trim()).map_err(|e| pointed(flag, text, &e)))
            .collect()
    };
    let format: Format = args.format.parse()?;
    let request = if !args.group_by.is_empty() {
        Request::Group {
            paths: paths("--group-by", &args.group_by)?,
            top: args.top,
        }
    } else if !args.select.is_empty() {
        Request::List {
            columns: Some(paths("--select", &args.select)?),
        }
    } else if matches!(format, Format::Json | Format::Ndjson) {
        Request::Events
    } else {
        Request::List { columns: None }
    };
    let filter = Filter {
        condition,
        window: args.inputs.window()?,
        denials_only: args.denials,
    };
    Ok((Query { filter, request }, format))
}

/// `--where: column 12: expected ...`, the text, and a caret under the column.
fn pointed(flag: &str, text: &str, error: &ConditionError) -> String {
    let caret = " ".repeat(error.column.saturating_sub(1));
    format!("{flag}: {error}\n  {text}\n  {caret}^")
}

/// The width tables fit: `COLUMNS` when set, else the terminal's when standard output is
/// one, else none (a pipe gets whole lines).
fn table_width(is_terminal: bool) -> Option<u16> {
    if let Some(columns) = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()) {
        return Some(columns);
    }
    if !is_terminal {
        return None;
    }
    console::Term::stdout()
        .size_checked()
        .map(|(_rows, columns)| columns)
}

/// The progress bar on standard error: drawn only when standard error is a terminal and
/// the input is large (over 32 MB, or standard input).
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
}

impl Progress {
    pub(crate) fn new(inputs: &[Input]) -> Progress {
        const LARGE_BYTES: u64 = 32_000_000;
        let total = total_bytes(inputs);
        let wanted = std::io::stderr().is_terminal() && total.is_none_or(|t| t > LARGE_BYTES);
        let bar = wanted.then(|| {
            let (bar, template) = match total {
                Some(total) => (
                    ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()),
                    "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg} (eta {eta})",
                ),
                None => (
                    ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
                    "{spinner} {bytes} {bytes_per_sec} {msg}",
                ),
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar
        });
        Progress {
            bar,
            started: Instant::now(),
        }
    }

    pub(crate) fn update(&mut self, stats: &ScanStats) {
        if let Some(bar) = &self.bar {
            bar.set_position(stats.bytes_read);
            let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
            bar.set_message(format!(
                "{} events, {:.0} events/s",
                stats.events,
                stats.events as f64 / seconds
            ));
        }
    }

    pub(crate) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Standard output while the progress bar is on the same terminal. Whole lines are
/// written with the bar lifted and flushed at once (the bar redraws below them); the end
/// of a line not yet complete waits here, since the bar would be drawn after it.
struct AroundBar<W: Write> {
    bar: ProgressBar,
    out: W,
    partial: Vec<u8>,
}

impl<W: Write> AroundBar<W> {
    fn write_lifted(&mut self, upto: usize) -> std::io::Result<()> {
        let (out, lines) = (&mut self.out, &self.partial[..upto]);
        self.bar.suspend(|| {
            out.write_all(lines)?;
            out.flush()
        })?;
        self.partial.drain(..upto);
        Ok(())
    }
}

impl<W: Write> Drop for AroundBar<W> {
    fn drop(&mut self) {
        // The rest of a last line without its newline; a failure here was the sink's too.
        let _ = self.flush();
    }
}

impl<W: Write> Write for AroundBar<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.partial.extend_from_slice(bytes);
        if let Some(newline) = memchr::memrchr(b'\n', &self.partial) {
            self.write_lifted(newline + 1)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.write_lifted(self.partial.len())
    }
}

/// Prints the summary line, malformed lines and read errors on standard error; returns
/// whether an input failed part-way.
pub(crate) fn report(stats: &ScanStats, what: &str) -> bool {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "auditflow: {} events read ({:.1} MB), {what}",
        stats.events,
        stats.bytes_read as f64 / 1e6
    );
    if stats.malformed > 0 {
        let _ = writeln!(
            err,
            "auditflow: {} malformed line{} skipped, first:",
            stats.malformed,
            if stats.malformed == 1 { "" } else { "s" }
        );
        for example in &stats.malformed_examples {
            let _ = writeln!(err, "  {example}");
        }
    }
    for error in &stats.read_errors {
        let _ = writeln!(err, "auditflow: reading stopped early: {error}");
    }
    !stats.read_errors.is_empty()
}
