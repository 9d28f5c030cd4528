//! `redact` throughput per core on two mixes:
//! - `metadata`: the kube-apiserver capture (Metadata and Request level, no secret),
//!   which is what most of a real audit log looks like: the no-candidate path;
//! - `request_response`: RequestResponse-level events with large objects (pod lists of
//!   ~100 KB, a ConfigMap with big data), one in ten carrying a secret (a TokenReview, a
//!   Secret create, a SecretList).
//!
//! Each iteration redacts fresh clones of the events (cloning shares the bytes), as a
//! pipeline does with every batch. The `bytes` and `events` figures are the thread's CPU
//! time spent in the transform (the clones are made outside it), so that other work on
//! a shared machine does not inflate them; `memmem_floor` is wall time.

use std::hint::black_box;
use std::time::Duration;

use auditflow_core::{Batch, BuildContext, Event, Transform, TransformConfig};
use auditflow_redact::RedactConfig;
use auditflow_testkit::event;
use cpu_time::ThreadTime;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Value};

fn transform() -> Box<dyn Transform> {
    let config: RedactConfig = serde_json::from_value(json!({})).unwrap();
    config
        .build(BuildContext::unobserved("bench", "/nonexistent"))
        .unwrap()
}

fn metadata_mix() -> Vec<Event> {
    auditflow_testkit::events::audit_log_events()
}

fn request_response_mix() -> Vec<Event> {
    let corpus = auditflow_testkit::events::audit_log_events();
    let pod_list = corpus
        .iter()
        .find(|e| {
            e.get_str("level") == Some("RequestResponse") && e.get_str("verb") == Some("list")
        })
        .expect("the capture has a RequestResponse pod list")
        .to_value();
    // A large pod list: the capture's pod repeated to ~100 KB.
    let mut large = pod_list.clone();
    let pod = large["responseObject"]["items"][0].clone();
    large["responseObject"]["items"] = Value::Array((0..30).map(|_| pod.clone()).collect());
    let large = event(&large.to_string().replace('&', "\\u0026"));

    let mut config_map = pod_list.clone();
    config_map["objectRef"] =
        json!({"resource": "configmaps", "namespace": "kube-system", "apiVersion": "v1"});
    config_map["requestObject"] = json!({
        "kind": "ConfigMap", "apiVersion": "v1",
        "metadata": {"name": "big", "namespace": "kube-system"},
        "data": {"config.yaml": "key: value\n".repeat(4000)},
    });
    let config_map = event(&config_map.to_string().replace('&', "\\u0026"));

    let fixtures: Vec<Event> = include_str!("../tests/fixtures/secret-bearing.log")
        .lines()
        .map(event)
        .collect();
    let mut mix = Vec::new();
    for i in 0..30 {
        mix.push(match i % 10 {
            0 => fixtures[i / 10 % fixtures.len()].clone(),
            1 => config_map.clone(),
            _ => large.clone(),
        });
    }
    mix
}

/// The thread's CPU time in `iters` runs of the transform over fresh clones of `events`.
fn cpu_time(iters: u64, events: &[Event], redact: &mut dyn Transform) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let mut batch = Batch::new(events.to_vec());
        let start = ThreadTime::now();
        redact.transform(&mut batch);
        total += start.elapsed();
        black_box(batch);
    }
    total
}

fn bench(c: &mut Criterion) {
    for (name, events) in [
        ("metadata", metadata_mix()),
        ("request_response", request_response_mix()),
    ] {
        let bytes: usize = events.iter().map(|e| e.raw().len()).sum();
        let mut group = c.benchmark_group(name);
        let mut redact = transform();
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function("bytes", |b| {
            b.iter_custom(|iters| cpu_time(iters, &events, redact.as_mut()))
        });
        group.throughput(Throughput::Elements(events.len() as u64));
        group.bench_function("events", |b| {
            b.iter_custom(|iters| cpu_time(iters, &events, redact.as_mut()))
        });
        // The floor on this machine: one SIMD substring search over the same bytes.
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function("memmem_floor", |b| {
            b.iter(|| {
                events
                    .iter()
                    .filter(|e| memchr::memmem::find(e.raw(), b"eyJ").is_some())
                    .count()
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
