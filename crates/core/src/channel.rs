//! The bounded channel in front of every transform and sink, and the fan-out that feeds it.
//!
//! A full channel makes the sender wait: that wait is the backpressure that reaches all
//! the way back to the source. The receiving component's telemetry is told how many
//! events sit in the channel (`auditflow_buffer_events`).

use std::sync::{Arc, PoisonError, RwLock, Weak};

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

impl Sender {
    /// A handle that does not keep the channel open: the receiver still ends once every
    /// strong sender is gone (the topology keeps these to rewire outputs on reload).
    pub fn downgrade(&self) -> WeakSender {
        WeakSender {
            tx: self.tx.downgrade(),
            telemetry: Arc::clone(&self.telemetry),
        }
    }
}

/// A [`Sender`] that does not keep its channel open.
#[derive(Clone)]
pub struct WeakSender {
    tx: mpsc::WeakSender<Batch>,
    telemetry: Arc<dyn Telemetry>,
}

impl WeakSender {
    /// The sender, while some strong sender still keeps the channel open.
    pub fn upgrade(&self) -> Option<Sender> {
        Some(Sender {
            tx: self.tx.upgrade()?,
            telemetry: Arc::clone(&self.telemetry),
        })
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

/// The downstream channels of an output, shared by its clones and replaced whole on a
/// reload (read once per batch, so a lock costs nothing per event).
type Targets = RwLock<Arc<[Sender]>>;

/// Where a component's output goes: every downstream component gets each batch (sharing
/// the event bytes).
///
/// Clones share one list of targets, which [`Rewire`] can replace while the component
/// runs: a batch already being sent finishes with the list it started with.
#[derive(Clone)]
pub struct Output {
    targets: Arc<Targets>,
    telemetry: Arc<dyn Telemetry>,
    tap: Option<Arc<TapPoint>>,
}

impl Output {
    /// `telemetry` is the sending component's: it counts what it sent.
    pub fn new(targets: Vec<Sender>, telemetry: Arc<dyn Telemetry>) -> Output {
        Output {
            targets: Arc::new(RwLock::new(targets.into())),
            telemetry,
            tap: None,
        }
    }

    /// Shows what this output sends to `tap` (`auditflow tap --outputs-of`).
    pub fn with_tap(mut self, tap: Arc<TapPoint>) -> Output {
        self.tap = Some(tap);
        self
    }

    /// A handle to change where this output and its clones send. It does not keep the
    /// output (nor its targets' channels) alive.
    pub fn rewire(&self) -> Rewire {
        Rewire {
            targets: Arc::downgrade(&self.targets),
        }
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
        let targets = Arc::clone(&self.targets.read().unwrap_or_else(PoisonError::into_inner));
        let Some((last, rest)) = targets.split_last() else {
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

/// Changes the targets of a running [`Output`] (see [`Output::rewire`]).
#[derive(Clone)]
pub struct Rewire {
    targets: Weak<Targets>,
}

impl Rewire {
    /// Sends the next batches to `targets`. The old targets' channels close once nothing
    /// else holds them. `false` when the output is gone (its component finished).
    pub fn set(&self, targets: Vec<Sender>) -> bool {
        let Some(shared) = self.targets.upgrade() else {
            return false;
        };
        let old = std::mem::replace(
            &mut *shared.write().unwrap_or_else(PoisonError::into_inner),
            targets.into(),
        );
        // Dropped outside the lock.
        drop(old);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::NoTelemetry;
    use crate::event::Event;

    fn telemetry() -> Arc<dyn Telemetry> {
        Arc::new(NoTelemetry)
    }

    fn batch(id: &str) -> Batch {
        let json = format!(r#"{{"auditID":"{id}"}}"#);
        Batch::new(vec![
            Event::from_bytes(bytes::Bytes::from(json)).expect("an object")
        ])
    }

    #[tokio::test]
    async fn a_rewired_output_sends_to_the_new_targets_and_lets_the_old_channel_close() {
        let (old_tx, mut old_rx) = channel(2, telemetry());
        let (new_tx, mut new_rx) = channel(2, telemetry());
        let output = Output::new(vec![old_tx], telemetry());
        let clone = output.clone();
        output.send(batch("a")).await.expect("sent");
        assert!(output.rewire().set(vec![new_tx]));
        clone.send(batch("b")).await.expect("sent");

        assert_eq!(old_rx.recv().await.expect("a").len(), 1);
        // The output held the old channel's only sender: it is closed now.
        assert!(old_rx.recv().await.is_none());
        let b = new_rx.recv().await.expect("b");
        assert_eq!(b.events[0].raw().as_ref(), br#"{"auditID":"b"}"#);
    }

    #[tokio::test]
    async fn a_rewire_handle_keeps_nothing_alive() {
        let (tx, mut rx) = channel(2, telemetry());
        let weak = tx.downgrade();
        let output = Output::new(vec![tx], telemetry());
        let rewire = output.rewire();
        assert!(weak.upgrade().is_some());
        drop(output);
        assert!(
            rx.recv().await.is_none(),
            "the channel closed with the output"
        );
        assert!(weak.upgrade().is_none());
        assert!(!rewire.set(Vec::new()), "nothing left to rewire");
    }
}
