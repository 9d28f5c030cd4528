//! The bounded channel in front of every transform and sink, and the fan-out that feeds it.
//!
//! A full channel makes the sender wait: that wait is the backpressure that reaches all
//! the way back to the source. The receiving component's telemetry is told how many
//! events sit in the channel (`auditflow_buffer_events`).

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::batch::Batch;
use crate::component::Telemetry;
use crate::finalize::BatchStatus;
use crate::tap::TapPoint;

/// The downstream component stopped: nothing more can be sent.
#[derive(Debug, thiserror::Error)]
#[error("the downstream component stopped")]
pub struct Closed;

/// A bounded channel of batches. `capacity` is in batches; the buffered events are
/// reported to `telemetry` (the receiver's).
pub fn channel(capacity: usize, telemetry: Arc<dyn Telemetry>) -> (Sender, Receiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (
        Sender {
            tx,
            telemetry: Arc::clone(&telemetry),
        },
        Receiver {
            rx,
            telemetry,
            tap: None,
        },
    )
}

/// The sending half; cloned for every upstream (fan-in).
#[derive(Clone)]
pub struct Sender {
    tx: mpsc::Sender<Batch>,
    telemetry: Arc<dyn Telemetry>,
}

impl Sender {
    /// Waits for room, then sends.
    pub async fn send(&self, batch: Batch) -> Result<(), Closed> {
        let permit = self.tx.reserve().await.map_err(|_| Closed)?;
        self.telemetry.buffer_changed(batch.len() as i64);
        permit.send(batch);
        Ok(())
    }
}

/// The receiving half, owned by the component it feeds.
pub struct Receiver {
    rx: mpsc::Receiver<Batch>,
    telemetry: Arc<dyn Telemetry>,
    tap: Option<Arc<TapPoint>>,
}

impl Receiver {
    /// Shows what this receiver takes to `tap` (`auditflow tap --inputs-of`).
    pub fn with_tap(mut self, tap: Arc<TapPoint>) -> Receiver {
        self.tap = Some(tap);
        self
    }

    /// The next batch, or `None` once every upstream has finished.
    pub async fn recv(&mut self) -> Option<Batch> {
        let batch = self.rx.recv().await?;
        self.telemetry.buffer_changed(-(batch.len() as i64));
        self.telemetry.received(batch.len(), batch.size_hint());
        if let Some(tap) = &self.tap {
            tap.observe(&batch);
        }
        Some(batch)
    }
}

/// Where a component's output goes: every downstream component gets each batch (sharing
/// the event bytes).
#[derive(Clone)]
pub struct Output {
    targets: Vec<Sender>,
    telemetry: Arc<dyn Telemetry>,
    tap: Option<Arc<TapPoint>>,
}

impl Output {
    /// `telemetry` is the sending component's: it counts what it sent.
    pub fn new(targets: Vec<Sender>, telemetry: Arc<dyn Telemetry>) -> Output {
        Output {
            targets,
            telemetry,
            tap: None,
        }
    }

    /// Shows what this output sends to `tap` (`auditflow tap --outputs-of`).
    pub fn with_tap(mut self, tap: Arc<TapPoint>) -> Output {
        self.tap = Some(tap);
        self
    }

    /// Sends a batch to every downstream component, waiting for room in each.
    ///
    /// An empty batch is acknowledged at once: its events were dropped on purpose.
    pub async fn send(&self, batch: Batch) -> Result<(), Closed> {
        if batch.is_empty() {
            batch.resolve(BatchStatus::Delivered);
            return Ok(());
        }
        self.telemetry.sent(batch.len(), batch.size_hint());
        if let Some(tap) = &self.tap {
            tap.observe(&batch);
        }
        let Some((last, rest)) = self.targets.split_last() else {
            // Validation refuses a component whose output goes nowhere.
            batch.resolve(BatchStatus::Delivered);
            return Ok(());
        };
        for target in rest {
            target.send(batch.clone()).await?;
        }
        last.send(batch).await
    }
}
