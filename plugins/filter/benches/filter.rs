//! `filter` over the real capture (a Metadata-level mix, 245 events) and over 245 generated
//! RequestResponse-level events with large objects.

use std::sync::Arc;

use auditflow_core::condition::Condition;
use auditflow_core::{Batch, NoTelemetry, Transform};
use auditflow_filter::Filter;
use auditflow_generator::{generated_events, Profile};
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
    let mut group = c.benchmark_group(format!("filter/{mix}"));
    for (name, condition) in [
        ("verb", r#"verb != "watch""#),
        (
            "errors_or_secrets",
            r#"responseStatus.code >= 400 or objectRef.resource in ["secrets", "configmaps"]"#,
        ),
    ] {
        let mut filter = Filter::new(Condition::parse(condition).unwrap(), Arc::new(NoTelemetry));
        // One iteration is the whole capture: events/s = 245 / time per iteration.
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function(name, |b| {
            b.iter_batched(
                || Batch::new(events.clone()),
                |mut batch| {
                    filter.transform(&mut batch);
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
