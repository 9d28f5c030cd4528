//! End-to-end acknowledgements.
//!
//! A source that wants to know when a batch has been delivered creates a
//! [`BatchNotifier`]: it gets one [`Finalizer`] to attach to the batch and a
//! [`BatchReceiver`] to await. Every copy of the batch (fan-out clones it) holds its own
//! finalizer handle; each sink resolves its handle when it is done with its copy. When the
//! last handle is gone the receiver yields the combined status: `Delivered` only if every
//! handle said so.
//!
//! A handle dropped without being resolved counts as `Errored`: a batch lost to a crash,
//! an aborted shutdown or a bug is never reported as delivered.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

/// What became of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum BatchStatus {
    /// Every sink that got a copy delivered it (or a transform dropped it on purpose).
    Delivered = 1,
    /// A copy was lost without a verdict (shutdown timeout, a component failed): the
    /// source should offer the data again.
    Errored = 2,
    /// A sink gave up on it for good (the destination refused it).
    Rejected = 3,
}

impl BatchStatus {
    fn from_u8(value: u8) -> BatchStatus {
        match value {
            0 | 1 => BatchStatus::Delivered,
            2 => BatchStatus::Errored,
            _ => BatchStatus::Rejected,
        }
    }
}

/// The shared state behind every finalizer handle of one batch.
#[derive(Debug)]
pub struct BatchNotifier {
    /// The worst status reported so far (0 = none yet).
    status: AtomicU8,
    tx: Option<oneshot::Sender<BatchStatus>>,
}

impl BatchNotifier {
    /// A new notifier: the finalizer goes with the batch, the receiver stays with the source.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> (Finalizer, BatchReceiver) {
        let (tx, rx) = oneshot::channel();
        let notifier = Arc::new(BatchNotifier {
            status: AtomicU8::new(0),
            tx: Some(tx),
        });
        (
            Finalizer {
                notifier,
                resolved: false,
            },
            BatchReceiver { rx },
        )
    }

    fn update(&self, status: BatchStatus) {
        self.status.fetch_max(status as u8, Ordering::AcqRel);
    }
}

impl Drop for BatchNotifier {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            // The source may have stopped listening; nothing to tell then.
            let _ = tx.send(BatchStatus::from_u8(*self.status.get_mut()));
        }
    }
}

/// One handle on a batch's acknowledgement. Cloning makes another handle that must be
/// resolved too.
#[derive(Debug)]
pub struct Finalizer {
    notifier: Arc<BatchNotifier>,
    resolved: bool,
}

impl Finalizer {
    /// Reports what became of this copy of the batch.
    pub fn resolve(mut self, status: BatchStatus) {
        self.notifier.update(status);
        self.resolved = true;
    }
}

impl Clone for Finalizer {
    fn clone(&self) -> Finalizer {
        Finalizer {
            notifier: Arc::clone(&self.notifier),
            resolved: false,
        }
    }
}

impl Drop for Finalizer {
    fn drop(&mut self) {
        if !self.resolved {
            self.notifier.update(BatchStatus::Errored);
        }
    }
}

/// The finalizers a batch carries: usually one, several once sinks merge batches.
#[derive(Debug, Clone, Default)]
pub struct Finalizers(Vec<Finalizer>);

impl Finalizers {
    /// No finalizers: a batch no source waits on.
    pub fn new() -> Finalizers {
        Finalizers(Vec::new())
    }

    /// Adds one source batch's handle; it is resolved with the others.
    pub fn push(&mut self, finalizer: Finalizer) {
        self.0.push(finalizer);
    }

    /// Takes over another batch's finalizers (a sink merging batches into one request).
    pub fn merge(&mut self, other: Finalizers) {
        self.0.extend(other.0);
    }

    /// Whether no source waits on this batch.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Resolves every handle with the same status.
    pub fn resolve(self, status: BatchStatus) {
        for finalizer in self.0 {
            finalizer.resolve(status);
        }
    }
}

impl From<Finalizer> for Finalizers {
    fn from(finalizer: Finalizer) -> Finalizers {
        Finalizers(vec![finalizer])
    }
}

/// Resolves once every handle of the batch is resolved or dropped.
#[derive(Debug)]
pub struct BatchReceiver {
    rx: oneshot::Receiver<BatchStatus>,
}

impl Future for BatchReceiver {
    type Output = BatchStatus;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<BatchStatus> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|result| result.unwrap_or(BatchStatus::Errored))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_delivered_once_every_copy_is_delivered() {
        let (finalizer, mut receiver) = BatchNotifier::new();
        let copy = finalizer.clone();
        finalizer.resolve(BatchStatus::Delivered);
        assert!(
            futures_poll_once(&mut receiver).is_none(),
            "fired too early"
        );
        copy.resolve(BatchStatus::Delivered);
        assert_eq!(receiver.await, BatchStatus::Delivered);
    }

    #[tokio::test]
    async fn one_rejection_rejects_the_batch() {
        let (finalizer, receiver) = BatchNotifier::new();
        let copy = finalizer.clone();
        copy.resolve(BatchStatus::Rejected);
        finalizer.resolve(BatchStatus::Delivered);
        assert_eq!(receiver.await, BatchStatus::Rejected);
    }

    #[tokio::test]
    async fn a_dropped_copy_is_never_reported_delivered() {
        let (finalizer, receiver) = BatchNotifier::new();
        let copy = finalizer.clone();
        finalizer.resolve(BatchStatus::Delivered);
        drop(copy);
        assert_eq!(receiver.await, BatchStatus::Errored);
    }

    fn futures_poll_once(receiver: &mut BatchReceiver) -> Option<BatchStatus> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match Pin::new(receiver).poll(&mut cx) {
            Poll::Ready(status) => Some(status),
            Poll::Pending => None,
        }
    }
}
