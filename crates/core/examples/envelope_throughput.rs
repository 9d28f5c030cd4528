//! Decode throughput of the cloud envelopes against plain NDJSON, over the same events
//! (the kube-apiserver 1.32 capture): `cargo run --release -p auditflow-core --example
//! envelope_throughput`.

use std::time::Instant;

use auditflow_core::decode::Shape;
use auditflow_core::envelope::{self, Decoding, Envelope};
use bytes::Bytes;

const FIXTURE: &str = include_str!("../../testkit/fixtures/kube-apiserver-1.32-audit.log");

fn main() {
    let events: Vec<&str> = FIXTURE.lines().filter(|l| !l.is_empty()).collect();
    let plain = Bytes::from(events.join("\n"));
    let records: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                r#"{{"category":"kube-audit","properties":{{"log":{}}}}}"#,
                serde_json::to_string(&format!("{e}\n")).unwrap()
            )
        })
        .collect();
    let azure = Bytes::from(format!(r#"{{"records":[{}]}}"#, records.join(",")));
    let messages: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                r#"{{"id":"1","timestamp":1,"message":{}}}"#,
                serde_json::to_string(e).unwrap()
            )
        })
        .collect();
    let cloudwatch = Bytes::from(format!(
        r#"{{"messageType":"DATA_MESSAGE","logGroup":"g","logStream":"s","logEvents":[{}]}}"#,
        messages.join(",")
    ));
    let cases = [
        ("audit (ndjson)", &plain, Decoding::Audit),
        (
            "azure_diagnostic_records",
            &azure,
            Decoding::AzureDiagnosticRecords,
        ),
        ("cloudwatch_logs", &cloudwatch, Decoding::CloudwatchLogs),
    ];
    let event_bytes: usize = events.iter().map(|e| e.len()).sum();
    for (name, body, decoding) in cases {
        let envelope = Envelope {
            decoding,
            keep: Vec::new(),
        };
        let rounds = 400;
        let start = Instant::now();
        let mut count = 0;
        for _ in 0..rounds {
            count += envelope::decode(body, Shape::Json, &envelope)
                .unwrap()
                .events
                .len();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{name:>26}: {:>8.0} events/s, {:>6.1} MiB/s of event bytes ({} bytes of body per {} events)",
            count as f64 / secs,
            (event_bytes * rounds) as f64 / secs / (1 << 20) as f64,
            body.len(),
            events.len()
        );
    }
}
