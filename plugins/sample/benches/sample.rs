//! `sample` over the real capture (a Metadata-level mix, 245 events) and over 245 generated
//! RequestResponse-level events with large objects.
//! One iteration is the whole capture: events/s = 245 / time per iteration.

use std::sync::Arc;

use auditflow_core::{Batch, NoTelemetry, Transform};
use auditflow_generator::{generated_events, Profile};
use auditflow_sample::{Sample, SampleConfig};
use auditflow_testkit::events::audit_log_events;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let request_response = generated_events(Profile::RequestResponse, 1, 245);
    for (mix, events) in [
        ("metadata", audit_log_events()),
        ("request_response", request_response),
    ] {
        bench_mix(c, mix, events);
    }
}

fn bench_mix(c: &mut Criterion, mix: &str, events: Vec<auditflow_core::Event>) {
    let bytes: usize = events.iter().map(|e| e.raw().len()).sum();
    let mut group = c.benchmark_group(format!("sample/{mix}"));
    group.throughput(Throughput::Bytes(bytes as u64));
    for rate in [10u64, 100] {
        let config: SampleConfig =
            serde_json::from_value(serde_json::json!({ "rate": rate })).unwrap();
        let mut sample = Sample::new(&config, Arc::new(NoTelemetry));
        group.bench_function(format!("rate_{rate}_default_exclude"), |b| {
            b.iter_batched(
                || Batch::new(events.clone()),
                |mut batch| {
                    sample.transform(&mut batch);
                    batch
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
