//! Concurrent transforms change nothing but speed: random chains of the synchronous
//! transforms over random real-shaped events give byte-identical output streams at
//! concurrency 1 and 8, on a runtime of 8 worker threads, and every batch is acknowledged.

use std::sync::Arc;
use std::time::Duration;

use auditflow_core::{BatchStatus, BuildContext, Event, NoTelemetry, Telemetry, TransformConfig};
use auditflow_testkit::events::audit_log_lines;
use auditflow_testkit::{CollectSink, MemorySource, SinkBehaviour};
use auditflow_topology::TopologyBuilder;
use proptest::prelude::*;

/// The transforms a chain is drawn from, as pipeline-file options.
const TRANSFORMS: &[(&str, &str)] = &[
    ("redact", "{}"),
    (
        "redact",
        r#"{"mode": "hash", "hash_key": "k3y-for-the-test"}"#,
    ),
    ("rbac_denial", "{}"),
    ("sample", r#"{"rate": 3}"#),
    ("sample", r#"{"rate": 2, "exclude": "verb == \"delete\""}"#),
    ("filter", r#"{"condition": "verb != \"watch\""}"#),
    (
        "filter",
        r#"{"condition": "objectRef.namespace exists or user.username matches \"^system:\""}"#,
    ),
];

fn config(kind: &str, options: &str) -> Box<dyn TransformConfig> {
    let value: serde_json::Value = serde_json::from_str(options).unwrap();
    match kind {
        "redact" => {
            Box::new(serde_json::from_value::<auditflow_redact::RedactConfig>(value).unwrap())
        }
        "rbac_denial" => Box::new(
            serde_json::from_value::<auditflow_rbac_denial::RbacDenialConfig>(value).unwrap(),
        ),
        "sample" => {
            Box::new(serde_json::from_value::<auditflow_sample::SampleConfig>(value).unwrap())
        }
        "filter" => {
            Box::new(serde_json::from_value::<auditflow_filter::FilterConfig>(value).unwrap())
        }
        "dedupe" => {
            Box::new(serde_json::from_value::<auditflow_dedupe::DedupeConfig>(value).unwrap())
        }
        other => unreachable!("{other}"),
    }
}

/// A captured event with odd but valid JSON spliced in: a planted secret, escapes,
/// non-ASCII text, big and odd numbers, deep nesting, odd whitespace.
fn event_strategy() -> impl Strategy<Value = String> {
    let lines: Vec<&'static str> = audit_log_lines().collect();
    (
        proptest::sample::select(lines),
        0usize..6,
        any::<u32>(),
        proptest::sample::select(vec![" ", "\t", "\n", "  \r\n ", ""]),
        1usize..300,
    )
        .prop_map(|(line, extra, n, space, depth)| {
            let line = line.trim_end();
            let body = &line[..line.len() - 1];
            let extra = match extra {
                0 => format!(r#""x":{space}"Authorization: Bearer abcdefghij{n:010}klmnopqrst""#),
                1 => format!(r#""x":"\u00e9\ud83d\ude00 \"quoted\" \\ \/ \b\f\n\r\t {n}""#),
                2 => format!(r#""x":[123456789012345678901234567890,1.50,-0.0,1e400,{n}]"#),
                3 => format!(r#""x":{}{n}{}"#, "[".repeat(depth), "]".repeat(depth)),
                4 => format!(r#""x":{{"password":"hunter{n}"}}"#),
                _ => format!(r#""x":{space}"ünïcødé {n}""#),
            };
            format!("{body},{space}{extra}{space}}}")
        })
}

/// Runs the chain at `concurrency` over `batches`; returns the output bytes and the
/// sources' acknowledgements.
fn run(
    chain: &[(&str, &str)],
    batches: &[Vec<String>],
    concurrency: usize,
) -> (Vec<Vec<u8>>, Vec<BatchStatus>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(8)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let telemetry: Arc<dyn Telemetry> = Arc::new(NoTelemetry);
        let events: Vec<Vec<Event>> = batches
            .iter()
            .map(|batch| {
                batch
                    .iter()
                    .map(|line| Event::from_bytes(line.clone().into_bytes().into()).unwrap())
                    .collect()
            })
            .collect();
        let count = events.len();
        let (source, probe) = MemorySource::new(events);
        let (sink, collected) = CollectSink::new(SinkBehaviour::Deliver);
        let mut builder = TopologyBuilder::new();
        builder.source("in", Box::new(source), Arc::clone(&telemetry));
        let mut previous = "in".to_owned();
        for (index, (kind, options)) in chain.iter().enumerate() {
            let id = format!("t{index}");
            let cx = BuildContext {
                telemetry: Arc::clone(&telemetry),
                ..BuildContext::unobserved(&id, std::env::temp_dir())
            };
            let transform = config(kind, options).build(cx).unwrap();
            builder.transform(&id, &[&previous], transform, Arc::clone(&telemetry));
            builder.concurrency(&id, concurrency);
            previous = id;
        }
        builder.sink("out", &[&previous], Box::new(sink), Arc::clone(&telemetry));
        let mut running = builder.start();
        tokio::time::timeout(Duration::from_secs(60), running.wait())
            .await
            .expect("the pipeline ends")
            .unwrap_or_else(|_| panic!("a component failed"));
        let mut statuses = probe.statuses();
        assert_eq!(statuses.len(), count, "every batch acknowledged");
        statuses.sort();
        let output = collected
            .lock()
            .unwrap()
            .iter()
            .map(|event| {
                let mut out = Vec::new();
                event.write_json(&mut out);
                out
            })
            .collect();
        (
            output,
            statuses.into_iter().map(|(_, status)| status).collect(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn concurrency_eight_gives_the_bytes_and_order_of_concurrency_one(
        chain in proptest::collection::vec(proptest::sample::select(TRANSFORMS), 1..5),
        batches in proptest::collection::vec(
            proptest::collection::vec(event_strategy(), 1..40),
            1..30,
        ),
    ) {
        let (one, acks_one) = run(&chain, &batches, 1);
        let (eight, acks_eight) = run(&chain, &batches, 8);
        prop_assert!(acks_one.iter().all(|s| *s == BatchStatus::Delivered));
        prop_assert_eq!(acks_one, acks_eight);
        prop_assert_eq!(one.len(), eight.len());
        for (index, (a, b)) in one.iter().zip(&eight).enumerate() {
            prop_assert!(
                a == b,
                "event {} differs:\n{}\n{}",
                index,
                String::from_utf8_lossy(a),
                String::from_utf8_lossy(b)
            );
        }
    }
}

#[test]
fn a_stateful_transform_runs_one_batch_at_a_time_whatever_is_asked() {
    // Every captured event twice, the copies in other batches: dedupe (which has no
    // fork) asked for 8 still runs alone, so each copy after the first is dropped.
    let lines: Vec<String> = audit_log_lines().map(str::to_owned).collect();
    let batches: Vec<Vec<String>> = lines
        .chunks(7)
        .map(<[_]>::to_vec)
        .chain(lines.chunks(5).map(<[_]>::to_vec))
        .collect();
    let (alone, _) = run(&[("dedupe", "{}")], &batches, 1);
    let (asked_eight, _) = run(&[("dedupe", "{}")], &batches, 8);
    let unique: std::collections::HashSet<&[u8]> = lines
        .iter()
        .map(|line| line.trim_end().as_bytes())
        .collect();
    assert_eq!(alone.len(), unique.len());
    assert_eq!(asked_eight, alone);
}
