//! How fast the generator makes events, per core: writing the bytes, and writing them plus
//! `Event::from_bytes` (what the source does). The source must outrun every pipeline it
//! feeds; the end-to-end figures are in docs/bench.md.

use std::hint::black_box;

use auditflow_core::batch::{MAX_BATCH_BYTES, MAX_BATCH_EVENTS};
use auditflow_core::Event;
use auditflow_generator::{AuditGenerator, Profile};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const START_US: i64 = 1_795_420_800_000_000;

fn generate(c: &mut Criterion) {
    for (name, profile) in [
        ("metadata", Profile::Metadata),
        ("request_response", Profile::RequestResponse),
    ] {
        // One batch's bytes, to express the throughput in bytes.
        let mut sizing = AuditGenerator::new(profile, 1, START_US);
        let batch_bytes: usize = (0..20)
            .flat_map(|_| sizing.next_events(MAX_BATCH_EVENTS, MAX_BATCH_BYTES, None))
            .map(|event| event.len())
            .sum::<usize>()
            / 20;
        let mut group = c.benchmark_group(format!("generator/{name}"));
        group.throughput(Throughput::Bytes(batch_bytes as u64));
        let mut generator = AuditGenerator::new(profile, 1, START_US);
        group.bench_function("write", |b| {
            b.iter(|| black_box(generator.next_events(MAX_BATCH_EVENTS, MAX_BATCH_BYTES, None)))
        });
        let mut generator = AuditGenerator::new(profile, 1, START_US);
        group.bench_function("write_and_decode", |b| {
            b.iter(|| {
                let events: Vec<Event> = generator
                    .next_events(MAX_BATCH_EVENTS, MAX_BATCH_BYTES, None)
                    .into_iter()
                    .map(|bytes| Event::from_bytes(bytes).unwrap())
                    .collect();
                black_box(events)
            })
        });
        group.finish();
    }
}

criterion_group!(benches, generate);
criterion_main!(benches);
