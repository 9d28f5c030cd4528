//! `dedupe` holding 1,000,000 keys (its default `max_entries`), over Metadata-level events
//! shaped like the real capture's: batches of 1,000 new events (each one evicts the oldest
//! key: the steady state of a full store), and the same batches resent (every event a
//! duplicate). events/s = 1,000 / time per iteration.
//!
//! Also prints the memory the store takes per key, measured as the growth of the
//! process's resident set while 1,000,000 keys go in.

use std::sync::Arc;

use auditflow_core::{Batch, Event, NoTelemetry, Transform};
use auditflow_dedupe::{key_of, Dedupe, DedupeConfig, KeyStore};
use auditflow_testkit::events::audit_log_lines;
use cpu_time::ThreadTime;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const KEYS: usize = 1_000_000;
const BATCH: usize = 1_000;

/// A Metadata event of the capture with the auditID of number `n`.
fn event(template: &str, n: u64) -> Event {
    let id = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        n >> 32,
        (n >> 16) & 0xffff,
        n & 0xfff,
        (n >> 4) & 0xfff,
        n
    );
    let json = template.replacen("1b324196-e8ec-4ca7-9161-defb81ba7337", &id, 1);
    Event::from_bytes(bytes::Bytes::from(json)).unwrap()
}

fn resident_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn bench(c: &mut Criterion) {
    let template = audit_log_lines().next().unwrap().to_owned();
    assert!(template.contains("1b324196-e8ec-4ca7-9161-defb81ba7337"));

    // The store alone: bytes per key.
    let before = resident_bytes();
    let mut store = KeyStore::new(300_000, KEYS);
    for n in 0..KEYS as u64 {
        store.insert(key_of(&n.to_le_bytes()), 0);
    }
    if let (Some(before), Some(after)) = (before, resident_bytes()) {
        eprintln!(
            "dedupe: {KEYS} keys take {} bytes of resident memory, {:.1} bytes per key",
            after - before,
            (after - before) as f64 / KEYS as f64
        );
    }
    drop(store);

    let config: DedupeConfig = serde_json::from_value(serde_json::json!({})).unwrap();
    let mut dedupe = Dedupe::new(&config, Arc::new(NoTelemetry), None);
    // Fill it with 1M keys, a batch at a time.
    let mut next: u64 = 0;
    while next < KEYS as u64 {
        let events: Vec<Event> = (next..next + BATCH as u64)
            .map(|n| event(&template, n))
            .collect();
        next += BATCH as u64;
        let mut batch = Batch::new(events);
        dedupe.transform(&mut batch);
        assert_eq!(batch.len(), BATCH);
    }
    assert_eq!(dedupe.len(), KEYS);

    let mut group = c.benchmark_group("dedupe/1m_keys_metadata");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("new_events_evicting_the_oldest", |b| {
        b.iter_batched(
            || {
                let events: Vec<Event> = (next..next + BATCH as u64)
                    .map(|n| event(&template, n))
                    .collect();
                next += BATCH as u64;
                Batch::new(events)
            },
            |mut batch| {
                dedupe.transform(&mut batch);
                batch
            },
            BatchSize::SmallInput,
        )
    });
    assert_eq!(dedupe.len(), KEYS);
    // The last batch again and again: all duplicates.
    let resent: Vec<Event> = (next - BATCH as u64..next)
        .map(|n| event(&template, n))
        .collect();
    group.bench_function("resent_events_all_duplicates", |b| {
        b.iter_batched(
            || Batch::new(resent.clone()),
            |mut batch| {
                dedupe.transform(&mut batch);
                assert!(batch.is_empty());
                batch
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();

    // The same two cases timed in CPU time of this thread, transform calls only: the
    // median and the best batch, which stay put on a loaded machine where totals do not.
    for case in [
        "new_events_evicting_the_oldest",
        "resent_events_all_duplicates",
    ] {
        let mut per_batch = Vec::new();
        for _ in 0..200 {
            let mut batch = if case == "resent_events_all_duplicates" {
                Batch::new(resent.clone())
            } else {
                let events: Vec<Event> = (next..next + BATCH as u64)
                    .map(|n| event(&template, n))
                    .collect();
                next += BATCH as u64;
                Batch::new(events)
            };
            let start = ThreadTime::now();
            dedupe.transform(&mut batch);
            per_batch.push(start.elapsed().as_nanos() as u64);
        }
        per_batch.sort_unstable();
        let rate = |ns: u64| BATCH as f64 / ns.max(1) as f64 * 1e3;
        eprintln!(
            "dedupe/1m_keys_metadata/{case}: {:.2} M events per CPU-second (median of {} batches of {BATCH}; best batch {:.2})",
            rate(per_batch[per_batch.len() / 2]),
            per_batch.len(),
            rate(per_batch[0]),
        );
    }
    assert_eq!(dedupe.len(), KEYS);
}

criterion_group!(benches, bench);
criterion_main!(benches);
