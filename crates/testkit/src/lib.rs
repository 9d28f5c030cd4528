//! Test helpers for auditflow components. Dev-only: no production crate depends on it.
//!
//! # Layout
//! - [`events`]: real audit events to test with (from a kube-apiserver capture).
//! - [`MemorySource`]: sends prepared batches, each with a finalizer, and records what
//!   became of them.
//! - [`CollectSink`]: keeps what it receives, optionally slowly or not at all.
//! - [`run_transform`]: runs a transform over events, synchronously.
//! - [`RecordingTelemetry`]: the counters a component reported, for asserting on them.
//! - [`compliance`]: the checks every plugin passes.
//! - [`stall`]: whether a component's blocking work leaves the async runtime free.
//! - `tls` (feature `tls`): a real HTTPS server with a private CA, for the https sink's
//!   tests and the end-to-end tests.

pub mod compliance;
pub mod events;
pub mod stall;
#[cfg(feature = "tls")]
pub mod tls;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use auditflow_core::{
    Batch, BatchNotifier, BatchStatus, ComponentError, Event, Sink, SinkContext, Source,
    SourceContext, Transform,
};
use tokio::sync::{watch, Notify};

/// Sends prepared batches, each with its own finalizer, then ends. The fate of each batch
/// (in order) is recorded in [`MemorySource::statuses`].
pub struct MemorySource {
    batches: Vec<Vec<Event>>,
    statuses: Arc<Mutex<Vec<(usize, BatchStatus)>>>,
    sent: watch::Sender<usize>,
}

/// What a [`MemorySource`] reports while it runs.
#[derive(Clone)]
pub struct SourceProbe {
    statuses: Arc<Mutex<Vec<(usize, BatchStatus)>>>,
    sent: watch::Receiver<usize>,
}

impl MemorySource {
    pub fn new(batches: Vec<Vec<Event>>) -> (MemorySource, SourceProbe) {
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let (sent, sent_rx) = watch::channel(0);
        (
            MemorySource {
                batches,
                statuses: Arc::clone(&statuses),
                sent,
            },
            SourceProbe {
                statuses,
                sent: sent_rx,
            },
        )
    }
}

impl SourceProbe {
    /// `(batch index, status)` of every batch resolved so far, in resolution order.
    pub fn statuses(&self) -> Vec<(usize, BatchStatus)> {
        self.statuses.lock().unwrap().clone()
    }

    /// How many batches the source has handed to the pipeline so far.
    pub fn sent(&self) -> usize {
        *self.sent.borrow()
    }
}

#[async_trait]
impl Source for MemorySource {
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), ComponentError> {
        let mut pending = tokio::task::JoinSet::new();
        for (index, events) in self.batches.into_iter().enumerate() {
            let (finalizer, receiver) = BatchNotifier::new();
            cx.out
                .send(Batch::with_finalizer(events, finalizer))
                .await?;
            self.sent.send_replace(index + 1);
            let statuses = Arc::clone(&self.statuses);
            pending.spawn(async move {
                let status = receiver.await;
                statuses.lock().unwrap().push((index, status));
            });
        }
        drop(cx.out);
        while pending.join_next().await.is_some() {}
        Ok(())
    }
}

/// How a [`CollectSink`] behaves.
#[derive(Clone, Default)]
pub enum SinkBehaviour {
    /// Delivers at once.
    #[default]
    Deliver,
    /// Waits this long per batch before delivering.
    Delay(Duration),
    /// Takes one batch, then waits for the notify before going on (and again per batch).
    Stall(Arc<Notify>),
}

/// Keeps every event it receives and resolves each batch `Delivered`.
pub struct CollectSink {
    events: Arc<Mutex<Vec<Event>>>,
    behaviour: SinkBehaviour,
}

impl CollectSink {
    pub fn new(behaviour: SinkBehaviour) -> (CollectSink, Arc<Mutex<Vec<Event>>>) {
        let events = Arc::new(Mutex::new(Vec::new()));
        (
            CollectSink {
                events: Arc::clone(&events),
                behaviour,
            },
            events,
        )
    }
}

#[async_trait]
impl Sink for CollectSink {
    async fn run(self: Box<Self>, mut cx: SinkContext) -> Result<(), ComponentError> {
        while let Some(mut batch) = cx.input.recv().await {
            match &self.behaviour {
                SinkBehaviour::Deliver => {}
                SinkBehaviour::Delay(delay) => tokio::time::sleep(*delay).await,
                SinkBehaviour::Stall(go_on) => go_on.notified().await,
            }
            let events = std::mem::take(&mut batch.events);
            cx.telemetry.sent(events.len(), 0);
            self.events.lock().unwrap().extend(events);
            batch.resolve(BatchStatus::Delivered);
        }
        Ok(())
    }
}

/// Runs `transform` over `events` as one batch and returns what comes out.
pub fn run_transform(transform: &mut dyn Transform, events: Vec<Event>) -> Vec<Event> {
    let mut batch = Batch::new(events);
    transform.transform(&mut batch);
    batch.events
}

/// Parses one JSON object into an event (panics on bad JSON: for test fixtures).
pub fn event(json: &str) -> Event {
    Event::from_bytes(bytes::Bytes::copy_from_slice(json.as_bytes()))
        .unwrap_or_else(|error| panic!("fixture is not a JSON object: {error}: {json}"))
}

/// Telemetry that records every count a component reports, for tests that assert what it
/// counted (`discarded` by reason, `errored` by type, `received`/`sent` totals).
#[derive(Debug, Default)]
pub struct RecordingTelemetry {
    recorded: Mutex<Recorded>,
}

/// What a [`RecordingTelemetry`] has seen so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// (events, bytes) received.
    pub received: (usize, usize),
    /// (events, bytes) sent.
    pub sent: (usize, usize),
    /// Every `discarded` call, in order.
    pub discarded: Vec<(&'static str, usize)>,
    /// Every `errored` call, in order.
    pub errored: Vec<(&'static str, usize)>,
    /// The net change of the buffer gauge.
    pub buffer: i64,
}

impl RecordingTelemetry {
    /// A copy of everything recorded so far.
    pub fn recorded(&self) -> Recorded {
        self.lock().clone()
    }

    /// Events discarded with `reason`, over all calls.
    pub fn discarded_events(&self, reason: &str) -> usize {
        let recorded = self.lock();
        recorded
            .discarded
            .iter()
            .filter(|(r, _)| *r == reason)
            .map(|(_, n)| n)
            .sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl auditflow_core::Telemetry for RecordingTelemetry {
    fn received(&self, events: usize, bytes: usize) {
        let mut recorded = self.lock();
        recorded.received.0 += events;
        recorded.received.1 += bytes;
    }
    fn sent(&self, events: usize, bytes: usize) {
        let mut recorded = self.lock();
        recorded.sent.0 += events;
        recorded.sent.1 += bytes;
    }
    fn discarded(&self, reason: &'static str, events: usize) {
        self.lock().discarded.push((reason, events));
    }
    fn errored(&self, error_type: &'static str, count: usize) {
        self.lock().errored.push((error_type, count));
    }
    fn buffer_changed(&self, delta_events: i64) {
        self.lock().buffer += delta_events;
    }
}
