//! `sample` over the real capture (a Metadata-level mix), in batches of its 245 events.
//! One iteration is the whole capture: events/s = 245 / time per iteration.

use std::sync::Arc;

use auditflow_core::{Batch, NoTelemetry, Transform};
use auditflow_sample::{Sample, SampleConfig};
use auditflow_testkit::events::audit_log_events;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let events = audit_log_events();
    let bytes: usize = events.iter().map(|e| e.raw().len()).sum();
    let mut group = c.benchmark_group("sample");
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
