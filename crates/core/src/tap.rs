//! Taps: a sample of the events passing a component, for `auditflow tap`.
//!
//! Every component has a [`TapPoint`] at its output (outputs of) and, for transforms and
//! sinks, one at its input (inputs of). A point that nobody taps costs one relaxed atomic
//! load per batch: the subscriber list is only locked while someone is subscribed.
//!
//! A subscriber gets at most `max_events_per_sec` events a second, spread over the batches
//! of that second (a stride through each batch), through a bounded queue: when the reader
//! falls behind, events are dropped and counted, never waited for. The pipeline never
//! waits on a tap.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::batch::Batch;
use crate::component::ComponentKind;

/// Events queued for one subscriber before more are dropped.
pub const QUEUE_EVENTS: usize = 1024;

/// Which side of a component a tap watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Port {
    /// What the component sends on (sources and transforms).
    OutputsOf,
    /// What reaches the component (transforms and sinks).
    InputsOf,
}

impl Port {
    /// The name in the `port` field of the API's tap stream (`outputs_of`, `inputs_of`).
    pub fn as_str(self) -> &'static str {
        match self {
            Port::OutputsOf => "outputs_of",
            Port::InputsOf => "inputs_of",
        }
    }
}

/// One event seen by a tap: which component and side, and the event as compact JSON.
#[derive(Debug, Clone)]
pub struct Tapped {
    /// The id of the component the event passed, from the pipeline file.
    pub component_id: Arc<str>,
    /// Whether the event was leaving the component or reaching it.
    pub port: Port,
    /// The event as compact JSON, as it was at that side of the component.
    pub event: Bytes,
}

struct Subscriber {
    key: u64,
    queue: mpsc::Sender<Tapped>,
    limit: Arc<Mutex<RateLimit>>,
    dropped: Arc<AtomicU64>,
}

/// Events a subscription may still take in the current second (shared by all the points
/// it watches).
#[derive(Debug)]
struct RateLimit {
    max_per_sec: u32,
    window_start: Instant,
    left: u32,
}

impl RateLimit {
    fn take(&mut self, wanted: usize, now: Instant) -> usize {
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.left = self.max_per_sec;
        }
        let granted = wanted.min(self.left as usize);
        self.left -= granted as u32;
        granted
    }
}

/// The tap on one side of one component.
pub struct TapPoint {
    component_id: Arc<str>,
    port: Port,
    subscribed: AtomicUsize,
    subscribers: Mutex<Vec<Subscriber>>,
}

impl TapPoint {
    fn new(component_id: &str, port: Port) -> TapPoint {
        TapPoint {
            component_id: Arc::from(component_id),
            port,
            subscribed: AtomicUsize::new(0),
            subscribers: Mutex::new(Vec::new()),
        }
    }

    /// Offers a batch to the subscribers, if any: the one check made when nobody taps.
    #[inline]
    pub fn observe(&self, batch: &Batch) {
        if self.subscribed.load(Ordering::Relaxed) == 0 || batch.is_empty() {
            return;
        }
        self.offer(batch);
    }

    #[cold]
    fn offer(&self, batch: &Batch) {
        let subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        for subscriber in subscribers.iter() {
            let granted = subscriber
                .limit
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(batch.len(), now);
            if granted == 0 {
                continue;
            }
            // Spread the sample over the batch rather than taking its head.
            let stride = batch.len().div_ceil(granted);
            for event in batch.events.iter().step_by(stride).take(granted) {
                let tapped = Tapped {
                    component_id: Arc::clone(&self.component_id),
                    port: self.port,
                    event: event.to_json_bytes(),
                };
                if subscriber.queue.try_send(tapped).is_err() {
                    subscriber.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn add(&self, subscriber: Subscriber) {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subscribers.push(subscriber);
        self.subscribed.store(subscribers.len(), Ordering::Relaxed);
    }

    fn remove(&self, key: u64) {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subscribers.retain(|subscriber| subscriber.key != key);
        self.subscribed.store(subscribers.len(), Ordering::Relaxed);
    }

    /// Lets every subscriber go: a subscription whose points are all closed ends.
    fn close(&self) {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subscribers.clear();
        self.subscribed.store(0, Ordering::Relaxed);
    }
}

/// Why a tap could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TapError {
    /// No component of the running pipeline has this id.
    #[error("no component `{id}` in this pipeline; components: {known}")]
    UnknownComponent {
        /// The id asked for.
        id: String,
        /// Every component id of the pipeline, sorted, joined with `, `.
        known: String,
    },
    /// `--outputs-of` named a sink.
    #[error("`{id}` is a sink: it has no outputs; tap what reaches it with --inputs-of")]
    SinkHasNoOutputs {
        /// The sink's component id.
        id: String,
    },
    /// `--inputs-of` named a source.
    #[error(
        "`{id}` is a source: nothing in the pipeline feeds it; tap what it sends with --outputs-of"
    )]
    SourceHasNoInputs {
        /// The source's component id.
        id: String,
    },
    /// The list of component ids was empty.
    #[error("no component id given")]
    NothingToTap,
}

#[derive(Default)]
struct Registry {
    components: BTreeMap<String, ComponentKind>,
    points: BTreeMap<(String, Port), Arc<TapPoint>>,
}

/// Every tap point of a running pipeline; cheap to clone (a handle).
#[derive(Clone, Default)]
pub struct Taps {
    registry: Arc<Mutex<Registry>>,
    next_key: Arc<AtomicU64>,
}

impl std::fmt::Debug for Taps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taps").finish_non_exhaustive()
    }
}

impl Taps {
    /// No components and no tap points yet; the topology adds them as it wires components.
    pub fn new() -> Taps {
        Taps::default()
    }

    /// The tap point of component `id` on `port`, made on first use. The topology asks for
    /// every component's points as it wires them.
    pub fn point(&self, id: &str, kind: ComponentKind, port: Port) -> Arc<TapPoint> {
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        registry.components.insert(id.to_owned(), kind);
        Arc::clone(
            registry
                .points
                .entry((id.to_owned(), port))
                .or_insert_with(|| Arc::new(TapPoint::new(id, port))),
        )
    }

    /// Forgets component `id` (a reload removed it, or its `<id>.dead_letter` is no longer
    /// read): it can no longer be tapped, and the taps open on it stop receiving from it (a
    /// subscription that watched only `id` ends). Nothing happens for an unknown id.
    ///
    /// A replaced component keeps its points: the instance that replaces it asks for them
    /// again with [`Taps::point`] and gets the same ones, so a tap open across the reload
    /// goes on with the new instance.
    pub fn remove(&self, id: &str) {
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        registry.components.remove(id);
        let points: Vec<Arc<TapPoint>> = [Port::OutputsOf, Port::InputsOf]
            .into_iter()
            .filter_map(|port| registry.points.remove(&(id.to_owned(), port)))
            .collect();
        drop(registry);
        // The instance still draining keeps offering batches to them: they are turned off
        // rather than only forgotten.
        for point in points {
            point.close();
        }
    }

    /// Subscribes to `port` of every component of `ids`, at most `max_events_per_sec`
    /// events a second in all. `port` `None`: the outputs of sources and transforms, the
    /// inputs of sinks.
    pub fn subscribe(
        &self,
        ids: &[String],
        port: Option<Port>,
        max_events_per_sec: u32,
    ) -> Result<Subscription, TapError> {
        if ids.is_empty() {
            return Err(TapError::NothingToTap);
        }
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut points = Vec::new();
        for id in ids {
            let Some(kind) = registry.components.get(id) else {
                return Err(TapError::UnknownComponent {
                    id: id.clone(),
                    known: registry
                        .components
                        .keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            let port = match (port, kind) {
                (Some(Port::OutputsOf), ComponentKind::Sink) => {
                    return Err(TapError::SinkHasNoOutputs { id: id.clone() })
                }
                (Some(Port::InputsOf), ComponentKind::Source) => {
                    return Err(TapError::SourceHasNoInputs { id: id.clone() })
                }
                (Some(port), _) => port,
                (None, ComponentKind::Sink) => Port::InputsOf,
                (None, _) => Port::OutputsOf,
            };
            if let Some(point) = registry.points.get(&(id.clone(), port)) {
                points.push(Arc::clone(point));
            }
        }
        drop(registry);
        let (queue, events) = mpsc::channel(QUEUE_EVENTS);
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let limit = Arc::new(Mutex::new(RateLimit {
            max_per_sec: max_events_per_sec.max(1),
            window_start: Instant::now(),
            left: max_events_per_sec.max(1),
        }));
        let dropped = Arc::new(AtomicU64::new(0));
        for point in &points {
            point.add(Subscriber {
                key,
                queue: queue.clone(),
                limit: Arc::clone(&limit),
                dropped: Arc::clone(&dropped),
            });
        }
        Ok(Subscription {
            key,
            points,
            events,
            dropped,
        })
    }
}

/// An open tap; dropping it unsubscribes.
pub struct Subscription {
    key: u64,
    points: Vec<Arc<TapPoint>>,
    events: mpsc::Receiver<Tapped>,
    dropped: Arc<AtomicU64>,
}

impl Subscription {
    /// The next tapped event (waits while nothing passes).
    pub async fn next(&mut self) -> Option<Tapped> {
        self.events.recv().await
    }

    /// [`next`](Self::next) for hand-written futures and bodies.
    pub fn poll_next(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Tapped>> {
        self.events.poll_recv(cx)
    }

    /// The next tapped event if one is queued, without waiting.
    pub fn try_next(&mut self) -> Option<Tapped> {
        self.events.try_recv().ok()
    }

    /// Events dropped because the reader fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        for point in &self.points {
            point.remove(self.key);
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("points", &self.points.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Event;

    fn batch(n: usize) -> Batch {
        Batch::new(
            (0..n)
                .map(|i| Event::from_bytes(Bytes::from(format!(r#"{{"auditID":"{i}"}}"#))).unwrap())
                .collect(),
        )
    }

    fn taps() -> (Taps, Arc<TapPoint>, Arc<TapPoint>) {
        let taps = Taps::new();
        let out = taps.point("in", ComponentKind::Source, Port::OutputsOf);
        let sink = taps.point("out", ComponentKind::Sink, Port::InputsOf);
        (taps, out, sink)
    }

    #[test]
    fn a_subscriber_sees_the_events_of_the_side_it_taps() {
        let (taps, out, sink) = taps();
        let mut subscription = taps.subscribe(&["in".into()], None, 100).unwrap();
        out.observe(&batch(3));
        sink.observe(&batch(5));
        let mut seen = Vec::new();
        while let Some(tapped) = subscription.try_next() {
            assert_eq!(&*tapped.component_id, "in");
            assert_eq!(tapped.port, Port::OutputsOf);
            seen.push(String::from_utf8(tapped.event.to_vec()).unwrap());
        }
        assert_eq!(
            seen,
            [
                r#"{"auditID":"0"}"#,
                r#"{"auditID":"1"}"#,
                r#"{"auditID":"2"}"#
            ]
        );
    }

    #[test]
    fn the_rate_limit_spreads_its_sample_over_the_batch() {
        let (taps, out, _) = taps();
        let mut subscription = taps.subscribe(&["in".into()], None, 4).unwrap();
        out.observe(&batch(1000));
        out.observe(&batch(1000));
        let mut ids = Vec::new();
        while let Some(tapped) = subscription.try_next() {
            ids.push(String::from_utf8(tapped.event.to_vec()).unwrap());
        }
        assert_eq!(
            ids,
            [
                r#"{"auditID":"0"}"#,
                r#"{"auditID":"250"}"#,
                r#"{"auditID":"500"}"#,
                r#"{"auditID":"750"}"#
            ]
        );
    }

    #[test]
    fn dropping_the_subscription_turns_the_point_off() {
        let (taps, out, _) = taps();
        let subscription = taps.subscribe(&["in".into()], None, 10).unwrap();
        assert_eq!(out.subscribed.load(Ordering::Relaxed), 1);
        drop(subscription);
        assert_eq!(out.subscribed.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_removed_component_can_no_longer_be_tapped_and_its_taps_end() {
        let (taps, out, sink) = taps();
        let mut both = taps
            .subscribe(&["in".into(), "out".into()], None, 100)
            .unwrap();
        let mut only_in = taps.subscribe(&["in".into()], None, 100).unwrap();
        taps.remove("in");

        let error = taps.subscribe(&["in".into()], None, 1).unwrap_err();
        assert_eq!(
            error.to_string(),
            "no component `in` in this pipeline; components: out"
        );
        // The instance still draining offers to a point nobody watches any more.
        out.observe(&batch(3));
        assert_eq!(out.subscribed.load(Ordering::Relaxed), 0);
        assert!(only_in.next().await.is_none(), "the tap on `in` ended");
        sink.observe(&batch(1));
        let tapped = both.next().await.expect("`out` is still tapped");
        assert_eq!(&*tapped.component_id, "out");
        assert!(
            both.try_next().is_none(),
            "nothing from `in` after its removal"
        );
    }

    #[test]
    fn a_component_asked_for_again_keeps_its_point_and_its_subscribers() {
        let (taps, out, _) = taps();
        let mut subscription = taps.subscribe(&["in".into()], None, 100).unwrap();
        let again = taps.point("in", ComponentKind::Source, Port::OutputsOf);
        assert!(Arc::ptr_eq(&out, &again));
        again.observe(&batch(1));
        assert!(subscription.try_next().is_some());
    }

    #[test]
    fn a_slow_reader_loses_events_and_the_loss_is_counted() {
        let (taps, out, _) = taps();
        let subscription = taps.subscribe(&["in".into()], None, 10_000).unwrap();
        out.observe(&batch(1000));
        out.observe(&batch(1000));
        assert_eq!(subscription.dropped(), 2000 - QUEUE_EVENTS as u64);
    }

    #[test]
    fn unknown_ids_and_impossible_sides_are_refused_with_the_reason() {
        let (taps, _, _) = taps();
        let error = taps.subscribe(&["nope".into()], None, 1).unwrap_err();
        assert_eq!(
            error.to_string(),
            "no component `nope` in this pipeline; components: in, out"
        );
        let error = taps
            .subscribe(&["out".into()], Some(Port::OutputsOf), 1)
            .unwrap_err();
        assert!(matches!(error, TapError::SinkHasNoOutputs { .. }));
        let error = taps
            .subscribe(&["in".into()], Some(Port::InputsOf), 1)
            .unwrap_err();
        assert!(matches!(error, TapError::SourceHasNoInputs { .. }));
    }
}
