//! What one event costs in the engine's event model, per event, in the thread's CPU time
//! (not wall time, so that the figures hold on a shared machine):
//! - `decode`: `Event::from_bytes` (validation and the top-level index);
//! - `decode_read`: decoding, then the reads the sidecar transforms make of every event
//!   (`verb`, `stage`, `level`, `requestURI`, `objectRef.resource`, `user.username`,
//!   `responseStatus.code`), the nested ones as parsed values (`get_path`);
//! - `decode_read_bytes`: the same reads through the accessors that read the bytes
//!   (`str_at`, `u64_at`), as the transforms now make them;
//! - `clone`: a clone of a decoded and read event, as fan-out to a second output makes.
//!
//! Over three inputs: 1,000 generated Metadata events (~700 B), 200 generated
//! RequestResponse events (~6 KB) and the real capture (245 events).

use std::time::Duration;

use auditflow_core::Event;
use auditflow_generator::{generated_events, Profile};
use bytes::Bytes;
use cpu_time::ThreadTime;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn inputs() -> Vec<(&'static str, Vec<Bytes>)> {
    let raw = |events: Vec<Event>| events.iter().map(Event::to_json_bytes).collect();
    vec![
        (
            "metadata",
            raw(generated_events(Profile::Metadata, 7, 1_000)),
        ),
        (
            "request_response",
            raw(generated_events(Profile::RequestResponse, 7, 200)),
        ),
        (
            "capture",
            auditflow_testkit::events::audit_log_lines()
                .map(|line| Bytes::copy_from_slice(line.as_bytes()))
                .collect(),
        ),
    ]
}

/// Runs `routine` `iters` times and returns the CPU time this thread spent.
fn cpu_time(iters: u64, mut routine: impl FnMut()) -> Duration {
    let start = ThreadTime::now();
    for _ in 0..iters {
        routine();
    }
    start.elapsed()
}

fn read(event: &Event) -> usize {
    let mut seen = 0;
    for key in ["verb", "stage", "level", "requestURI"] {
        seen += event.get_str(key).map_or(0, str::len);
    }
    for path in [
        ["objectRef", "resource"],
        ["user", "username"],
        ["responseStatus", "code"],
    ] {
        seen += usize::from(event.get_path(path).is_some());
    }
    seen
}

fn read_bytes(event: &Event) -> usize {
    let mut seen = 0;
    for key in ["verb", "stage", "level", "requestURI"] {
        seen += event.get_str(key).map_or(0, str::len);
    }
    seen += event.str_at(&["objectRef", "resource"]).map_or(0, str::len);
    seen += event.str_at(&["user", "username"]).map_or(0, str::len);
    seen += event
        .u64_at(&["responseStatus", "code"])
        .map_or(0, |code| code as usize);
    seen
}

fn events(c: &mut Criterion) {
    for (name, lines) in inputs() {
        let mut group = c.benchmark_group(format!("event/{name}"));
        group.throughput(Throughput::Elements(lines.len() as u64));
        group.bench_function("decode", |b| {
            b.iter_custom(|iters| {
                cpu_time(iters, || {
                    for line in &lines {
                        std::hint::black_box(Event::from_bytes(line.clone()).unwrap());
                    }
                })
            })
        });
        group.bench_function("decode_read", |b| {
            b.iter_custom(|iters| {
                cpu_time(iters, || {
                    for line in &lines {
                        let event = Event::from_bytes(line.clone()).unwrap();
                        std::hint::black_box(read(&event));
                    }
                })
            })
        });
        group.bench_function("decode_read_bytes", |b| {
            b.iter_custom(|iters| {
                cpu_time(iters, || {
                    for line in &lines {
                        let event = Event::from_bytes(line.clone()).unwrap();
                        std::hint::black_box(read_bytes(&event));
                    }
                })
            })
        });
        let decoded: Vec<Event> = lines
            .iter()
            .map(|line| {
                let event = Event::from_bytes(line.clone()).unwrap();
                read(&event);
                event
            })
            .collect();
        group.bench_function("clone", |b| {
            b.iter_custom(|iters| {
                cpu_time(iters, || {
                    std::hint::black_box(decoded.clone());
                })
            })
        });
        group.finish();
    }
}

criterion_group!(benches, events);
criterion_main!(benches);
