//! What the engine costs per event, on ~2 KB audit events:
//! - `decode_encode`: what `stdin` → `stdout` does per byte (framing, decoding into the
//!   field index, writing back out), without the system calls;
//! - `noop_transform`: a source → no-op transform → sink topology on the runtime,
//!   measuring channels, tasks, fan-out bookkeeping and acknowledgements.

use std::sync::Arc;

use auditflow_core::framing::{Frame, Framer, Framing};
use auditflow_core::{Batch, Event, NoTelemetry, Transform};
use auditflow_testkit::MemorySource;
use auditflow_topology::TopologyBuilder;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// A Request-level event of about 2 KB: a real captured event with a request body.
fn two_kb_event(i: usize) -> String {
    let mut value: serde_json::Value = serde_json::from_str(
        auditflow_testkit::events::audit_log_lines()
            .find(|line| line.contains("\"verb\":\"update\""))
            .expect("the capture has an update"),
    )
    .unwrap();
    value["auditID"] = format!("6f1c8a52-0b7e-4d8e-9a3f-{i:012}").into();
    value["requestObject"] = serde_json::json!({
        "kind": "Lease", "apiVersion": "coordination.k8s.io/v1",
        "metadata": {"name": "kube-apiserver-x7lwt4", "namespace": "kube-system",
            "uid": "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901", "resourceVersion": "123456",
            "labels": {"apiserver.kubernetes.io/identity": "kube-apiserver", "kubernetes.io/hostname": "control-plane-1"},
            "managedFields": [{"manager": "kube-apiserver", "operation": "Update", "apiVersion": "coordination.k8s.io/v1",
                "time": "2026-11-23T08:24:13Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:apiserver.kubernetes.io/identity": {}, "f:kubernetes.io/hostname": {}}},
                    "f:spec": {"f:holderIdentity": {}, "f:leaseDurationSeconds": {}, "f:renewTime": {}}}}]},
        "spec": {"holderIdentity": "kube-apiserver-x7lwt4_5e0c3f1a-9d3b-4b7e-8f2c-3a1d9e6b7c40",
            "leaseDurationSeconds": 3600, "renewTime": "2026-11-23T08:24:13.385382Z"}
    });
    serde_json::to_string(&value).unwrap()
}

fn corpus(events: usize) -> Vec<u8> {
    let mut text = Vec::new();
    for i in 0..events {
        text.extend_from_slice(two_kb_event(i).as_bytes());
        text.push(b'\n');
    }
    text
}

fn decode_encode(c: &mut Criterion) {
    let input = corpus(10_000);
    let mut group = c.benchmark_group("passthrough");
    group.throughput(Throughput::Bytes(input.len() as u64));
    for (name, framing) in [
        ("decode_encode", Framing::Lines),
        ("decode_encode_json_stream", Framing::JsonStream),
    ] {
        group.bench_function(name, |b| {
            let mut out = Vec::with_capacity(input.len() + 1024);
            b.iter(|| {
                out.clear();
                let mut framer = Framer::new(framing, 4 << 20, 0);
                for chunk in input.chunks(256 * 1024) {
                    framer.extend(chunk);
                    while let Some(Frame::Line { line, .. }) = framer.next_frame() {
                        let event = Event::from_bytes(line).unwrap();
                        event.write_json(&mut out);
                        out.push(b'\n');
                    }
                }
                assert_eq!(out.len(), input.len());
            })
        });
    }
    group.finish();
}

struct Noop;

impl Transform for Noop {
    fn transform(&mut self, batch: &mut Batch) {
        std::hint::black_box(&batch.events);
    }
}

fn noop_transform(c: &mut Criterion) {
    let input = corpus(10_000);
    let events: Vec<Event> = input
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| Event::from_bytes(Bytes::copy_from_slice(line)).unwrap())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("topology");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("noop_transform", |b| {
        b.iter(|| {
            let batches: Vec<Vec<Event>> = events.chunks(1000).map(<[_]>::to_vec).collect();
            runtime.block_on(async {
                let telemetry = || Arc::new(NoTelemetry);
                let (source, probe) = MemorySource::new(batches);
                let mut builder = TopologyBuilder::new();
                builder.source("in", Box::new(source), telemetry());
                builder.transform("noop", &["in"], Box::new(Noop), telemetry());
                let sink = auditflow_blackhole::BlackholeConfig::default();
                let sink = auditflow_core::SinkConfig::build(
                    &sink,
                    auditflow_core::BuildContext {
                        telemetry: telemetry(),
                        ..auditflow_core::BuildContext::unobserved("out", "/nonexistent")
                    },
                )
                .unwrap();
                builder.sink("out", &["noop"], sink, telemetry());
                builder.start().wait().await.unwrap();
                assert_eq!(probe.statuses().len(), 10);
            })
        })
    });
    group.finish();
}

criterion_group!(benches, decode_encode, noop_transform);
criterion_main!(benches);
