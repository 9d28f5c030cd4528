//! Fan-out, fan-in and acknowledgements through a running topology, in process: real
//! channels and tasks, the testkit's `MemorySource` (one finalizer per batch) and
//! `CollectSink`s.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auditflow_core::{Batch, BatchStatus, Event, NoTelemetry, Telemetry, Transform};
use auditflow_testkit::events::audit_log_events;
use auditflow_testkit::{CollectSink, MemorySource, SinkBehaviour, SourceProbe};
use auditflow_topology::TopologyBuilder;

fn telemetry() -> Arc<dyn Telemetry> {
    Arc::new(NoTelemetry)
}

/// The 245 captured events in batches of `size`.
fn batches(size: usize) -> Vec<Vec<Event>> {
    audit_log_events().chunks(size).map(<[_]>::to_vec).collect()
}

fn written(events: &[Event]) -> Vec<Vec<u8>> {
    events
        .iter()
        .map(|event| {
            let mut out = Vec::new();
            event.write_json(&mut out);
            out
        })
        .collect()
}

/// Waits (bounded) until the source has heard back about every batch.
async fn all_resolved(probe: &SourceProbe, batches: usize) -> Vec<(usize, BatchStatus)> {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let statuses = probe.statuses();
            if statuses.len() == batches {
                return statuses;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("every batch is acknowledged")
}

fn delivered(batches: usize) -> Vec<(usize, BatchStatus)> {
    (0..batches).map(|i| (i, BatchStatus::Delivered)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_delivers_every_event_to_both_sinks_and_acknowledges_after_the_slower() {
    // Both orders: the engine must not treat the first or the last reader specially.
    fan_out_with_a_slow_sink("a_slow", "b_fast").await;
    fan_out_with_a_slow_sink("y_slow", "x_fast").await;
}

async fn fan_out_with_a_slow_sink(slow_id: &str, fast_id: &str) {
    let input = batches(25);
    let count = input.len();
    let expected = written(&audit_log_events());
    let (source, probe) = MemorySource::new(input);
    let (fast, fast_events) = CollectSink::new(SinkBehaviour::Deliver);
    let (slow, slow_events) = CollectSink::new(SinkBehaviour::Delay(Duration::from_millis(30)));

    let mut builder = TopologyBuilder::new();
    builder.source("in", Box::new(source), telemetry());
    builder.sink(fast_id, &["in"], Box::new(fast), telemetry());
    builder.sink(slow_id, &["in"], Box::new(slow), telemetry());
    let mut running = builder.start();

    // While the pipeline runs: a batch's status may only be known once the slow sink has
    // taken (and delivered) it. Reading statuses first, then the slow sink's events, makes
    // this check exact: the sink stores events before it resolves.
    let mut checks = 0;
    loop {
        let statuses = probe.statuses();
        let slow_seen = slow_events.lock().unwrap().len();
        let fast_seen = fast_events.lock().unwrap().len();
        for (index, _) in &statuses {
            let needed = ((index + 1) * 25).min(expected.len());
            assert!(
                slow_seen >= needed,
                "batch {index} was acknowledged when the slow sink had only {slow_seen} events"
            );
        }
        if statuses.is_empty() && fast_seen > 0 && slow_seen == 0 {
            checks += 1; // the fast sink delivered while the slow one still held batch 0
        }
        if statuses.len() == count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        checks > 0,
        "never saw the fast sink ahead of the slow one, so the check above proved nothing"
    );
    running.wait().await.expect("the pipeline ends cleanly");

    let mut order: Vec<_> = probe.statuses();
    order.sort();
    assert_eq!(order, delivered(count));
    assert_eq!(written(&fast_events.lock().unwrap()), expected);
    assert_eq!(written(&slow_events.lock().unwrap()), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_held_by_one_sink_is_not_acknowledged() {
    let go_on = Arc::new(tokio::sync::Notify::new());
    let (source, probe) = MemorySource::new(batches(1000));
    let (fast, fast_events) = CollectSink::new(SinkBehaviour::Deliver);
    let (stalled, stalled_events) = CollectSink::new(SinkBehaviour::Stall(Arc::clone(&go_on)));

    let mut builder = TopologyBuilder::new();
    builder.source("in", Box::new(source), telemetry());
    // The stalled sink sorts first, so it is not the one that gets the original batch.
    builder.sink("fast", &["in"], Box::new(fast), telemetry());
    builder.sink("a_stalled", &["in"], Box::new(stalled), telemetry());
    let mut running = builder.start();

    tokio::time::timeout(Duration::from_secs(10), async {
        while fast_events.lock().unwrap().len() < 245 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the fast sink delivers the batch");
    // The fast sink has resolved its copy; the stalled sink holds the other one.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        probe.statuses(),
        vec![],
        "acknowledged before every copy was delivered"
    );
    assert!(stalled_events.lock().unwrap().is_empty());

    go_on.notify_one();
    assert_eq!(all_resolved(&probe, 1).await, delivered(1));
    running.wait().await.expect("the pipeline ends cleanly");
    assert_eq!(stalled_events.lock().unwrap().len(), 245);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_in_merges_two_sources_keeping_each_ones_order() {
    let events = audit_log_events();
    let (first, second) = events.split_at(120);
    let (source_a, probe_a) = MemorySource::new(first.chunks(10).map(<[_]>::to_vec).collect());
    let (source_b, probe_b) = MemorySource::new(second.chunks(7).map(<[_]>::to_vec).collect());
    let (sink, collected) = CollectSink::new(SinkBehaviour::Deliver);

    let mut builder = TopologyBuilder::new();
    builder.source("a", Box::new(source_a), telemetry());
    builder.source("b", Box::new(source_b), telemetry());
    builder.sink("out", &["a", "b"], Box::new(sink), telemetry());
    builder
        .start()
        .wait()
        .await
        .expect("the pipeline ends cleanly");

    assert_eq!(all_resolved(&probe_a, 12).await.len(), 12);
    assert_eq!(all_resolved(&probe_b, 18).await.len(), 18);
    let collected = collected.lock().unwrap();
    assert_eq!(collected.len(), events.len());
    // Interleaving between the sources is free; each source's own order is kept.
    let collected = written(&collected);
    let from = |part: &[Event]| {
        let part: HashSet<Vec<u8>> = written(part).into_iter().collect();
        collected
            .iter()
            .filter(|event| part.contains(*event))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(from(first), written(first));
    assert_eq!(from(second), written(second));
}

/// Drops every `get`, and records what it saw.
struct DropGets {
    seen: Arc<Mutex<usize>>,
}

impl Transform for DropGets {
    fn transform(&mut self, batch: &mut Batch) {
        *self.seen.lock().unwrap() += batch.events.len();
        batch
            .events
            .retain(|event| event.get_str("verb") != Some("get"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_a_transform_drops_count_as_delivered() {
    let events = audit_log_events();
    let gets: Vec<Event> = events
        .iter()
        .filter(|event| event.get_str("verb") == Some("get"))
        .cloned()
        .collect();
    let others: Vec<Event> = events
        .iter()
        .filter(|event| event.get_str("verb") != Some("get"))
        .cloned()
        .collect();
    assert!(gets.len() >= 5 && others.len() >= 5, "the capture has both");
    // Batch 0: only gets (emptied by the transform); batch 1: mixed; batch 2: no gets.
    let mixed: Vec<Event> = gets[..2].iter().chain(&others[..3]).cloned().collect();
    let input = vec![gets.clone(), mixed, others[3..].to_vec()];
    let (source, probe) = MemorySource::new(input);
    let (sink, collected) = CollectSink::new(SinkBehaviour::Deliver);
    let seen = Arc::new(Mutex::new(0));

    let mut builder = TopologyBuilder::new();
    builder.source("in", Box::new(source), telemetry());
    let transform = DropGets {
        seen: Arc::clone(&seen),
    };
    builder.transform("no_gets", &["in"], Box::new(transform), telemetry());
    builder.sink("out", &["no_gets"], Box::new(sink), telemetry());
    builder
        .start()
        .wait()
        .await
        .expect("the pipeline ends cleanly");

    let mut statuses = all_resolved(&probe, 3).await;
    statuses.sort();
    assert_eq!(statuses, delivered(3));
    assert_eq!(*seen.lock().unwrap(), gets.len() + 5 + others.len() - 3);
    assert_eq!(written(&collected.lock().unwrap()), written(&others));
}
