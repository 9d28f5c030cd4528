//! `rbac_denial` over the real capture (a Metadata-level mix with one RBAC denial among
//! 245 events), and over a mix with one denial in ten. One iteration is 245 events:
//! events/s = 245 / time per iteration. Also 245 generated RequestResponse-level events
//! with large objects (the generator's ~2% denials).

use auditflow_core::{Batch, Event, Transform};
use auditflow_generator::{generated_events, Profile};
use auditflow_rbac_denial::{RbacDenial, RbacDenialConfig};
use auditflow_testkit::events::audit_log_events;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let capture = audit_log_events();
    let denial = capture
        .iter()
        .find(|e| {
            e.get_path(["responseStatus", "code"])
                .and_then(|c| c.as_u64())
                == Some(403)
        })
        .expect("the capture holds one RBAC denial")
        .clone();
    let every_tenth: Vec<Event> = capture
        .iter()
        .enumerate()
        .map(|(i, e)| {
            if i % 10 == 0 {
                denial.clone()
            } else {
                e.clone()
            }
        })
        .collect();
    let mut group = c.benchmark_group("rbac_denial");
    let request_response = generated_events(Profile::RequestResponse, 1, 245);
    for (name, events) in [
        ("capture", capture),
        ("one_in_ten_denied", every_tenth),
        ("request_response", request_response),
    ] {
        let bytes: usize = events.iter().map(|e| e.raw().len()).sum();
        group.throughput(Throughput::Bytes(bytes as u64));
        let mut transform = RbacDenial::unobserved(&RbacDenialConfig::default());
        group.bench_function(name, |b| {
            b.iter_batched(
                || Batch::new(events.clone()),
                |mut batch| {
                    transform.transform(&mut batch);
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
