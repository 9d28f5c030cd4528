//! The unit that flows between components.

use crate::event::Event;
use crate::finalize::{BatchStatus, Finalizer, Finalizers};

/// How many events a source puts in one batch at most.
pub const MAX_BATCH_EVENTS: usize = 1000;

/// How many bytes (as JSON) a source puts in one batch at most; one larger event still
/// makes a batch of its own.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Events travelling together, with the acknowledgement handles of the source batches
/// they came from.
///
/// Cloning a batch (fan-out) shares every event's bytes and the values already parsed
/// from them; only the small inline per-event index is copied (and the fields a
/// transform changed, which belong to that copy alone).
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The events in arrival order; transforms drop and edit them in place.
    pub events: Vec<Event>,
    finalizers: Finalizers,
}

impl Batch {
    /// A batch nobody waits on.
    pub fn new(events: Vec<Event>) -> Batch {
        Batch {
            events,
            finalizers: Finalizers::new(),
        }
    }

    /// A batch whose source waits for its acknowledgement.
    pub fn with_finalizer(events: Vec<Event>, finalizer: Finalizer) -> Batch {
        Batch {
            events,
            finalizers: Finalizers::from(finalizer),
        }
    }

    /// A batch carrying finalizers taken from other batches (dead letters, which are
    /// acknowledged with the data they stand for).
    pub fn with_finalizers(events: Vec<Event>, finalizers: Finalizers) -> Batch {
        Batch { events, finalizers }
    }

    /// How many events the batch holds (not bytes; see [`Batch::size_hint`]).
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no event is left (a transform may have dropped them all).
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// About how many bytes the events take as JSON.
    pub fn size_hint(&self) -> usize {
        self.events.iter().map(Event::size_hint).sum()
    }

    /// Takes the acknowledgement handles, leaving none (a sink merging batches).
    pub fn take_finalizers(&mut self) -> Finalizers {
        std::mem::take(&mut self.finalizers)
    }

    /// Reports the batch's fate to its sources and drops it.
    pub fn resolve(self, status: BatchStatus) {
        self.finalizers.resolve(status);
    }
}
