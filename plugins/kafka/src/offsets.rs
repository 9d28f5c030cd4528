//! Which offsets may be committed, from acknowledgements that arrive in any order.
//!
//! Batches are cut from the consumer's stream in order, so within one partition the
//! offset ranges of successive batches are increasing and disjoint. Per partition the
//! tracker keeps a queue of the batches still in flight; an acknowledgement marks its
//! entry, and the committable offset advances over the acknowledged prefix of the queue
//! only. A batch that is not `Delivered` stays at the front and holds the commit back.
//!
//! A batch finalised without a verdict (`Errored`) asks for a rewind of its partitions:
//! the reading task then seeks each one back to the first offset of the first batch not
//! yet delivered there, [`OffsetTracker::rewind`] forgets every batch in flight in it,
//! and the messages are read again (the batches after it are read twice: at-least-once).
//!
//! Each assignment of a partition, and each rewind, gets a new generation:
//! acknowledgements for batches read under an earlier one are ignored.

use std::collections::{HashMap, VecDeque};

/// A topic partition.
pub(crate) type Partition = (String, i32);

/// One batch's messages in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Span {
    pub topic: String,
    pub partition: i32,
    /// The offset of the batch's first message in the partition (where a rewind seeks).
    pub first_offset: i64,
    /// The offset after the batch's last message in the partition.
    pub next_offset: i64,
}

/// The partitions a batch holds messages of, as registered with the tracker.
#[derive(Debug, Default)]
pub(crate) struct BatchOffsets {
    seq: u64,
    parts: Vec<(Partition, u64)>,
}

#[derive(Debug)]
struct InFlight {
    seq: u64,
    first_offset: i64,
    next_offset: i64,
    state: Ack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ack {
    Waiting,
    Delivered,
    /// Resolved without delivery: holds the commit back until its partition is rewound;
    /// nothing waits for it.
    Errored,
}

#[derive(Debug, Default)]
struct PartitionState {
    generation: u64,
    in_flight: VecDeque<InFlight>,
    /// The offset to commit next: every message before it has been delivered.
    committable: Option<i64>,
    /// The offset last handed to a commit.
    committed: Option<i64>,
    /// An `Errored` batch waits for this partition to be read again from before it.
    rewind_requested: bool,
}

/// Offsets of in-flight batches for every partition this consumer reads.
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    partitions: HashMap<Partition, PartitionState>,
    next_seq: u64,
    next_generation: u64,
}

impl OffsetTracker {
    /// Records a batch about to be sent. `spans` has one entry per partition the batch
    /// (including messages skipped as malformed) covers.
    pub(crate) fn register(&mut self, spans: &[Span]) -> BatchOffsets {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut parts = Vec::with_capacity(spans.len());
        for span in spans {
            let key = (span.topic.clone(), span.partition);
            let state = match self.partitions.get_mut(&key) {
                Some(state) => state,
                None => {
                    self.next_generation += 1;
                    let generation = self.next_generation;
                    self.partitions
                        .entry(key.clone())
                        .or_insert(PartitionState {
                            generation,
                            ..PartitionState::default()
                        })
                }
            };
            state.in_flight.push_back(InFlight {
                seq,
                first_offset: span.first_offset,
                next_offset: span.next_offset,
                state: Ack::Waiting,
            });
            parts.push((key, state.generation));
        }
        BatchOffsets { seq, parts }
    }

    /// Marks a batch delivered; the partitions' committable offsets advance over every
    /// delivered batch at the front of their queues.
    pub(crate) fn delivered(&mut self, batch: &BatchOffsets) {
        self.resolve(batch, Ack::Delivered);
    }

    /// Marks a batch lost without delivery: the commit stops before it, and its partitions
    /// (those still read under the generation it was read in) ask for a rewind. Returns
    /// whether any did.
    pub(crate) fn errored(&mut self, batch: &BatchOffsets) -> bool {
        self.resolve(batch, Ack::Errored)
    }

    /// Whether some partition waits for a rewind (the source reads it per partition).
    #[cfg(test)]
    fn rewind_requested(&self) -> bool {
        self.partitions.values().any(|state| state.rewind_requested)
    }

    /// Rewinds every partition that asked for it: returns where to seek each one (the first
    /// offset of its first batch not delivered), gives it a new generation so that late
    /// acknowledgements of the batches in flight are ignored, and forgets those batches.
    /// Their messages are read again from the returned offset; the committable offset stays
    /// where it was (it is at or before the seek offset).
    ///
    /// Every batch read so far must be registered first, or a batch registered later would
    /// cover offsets past the seek offset under the new generation.
    pub(crate) fn rewind(&mut self) -> Vec<(Partition, i64)> {
        let mut seeks = Vec::new();
        for (key, state) in &mut self.partitions {
            if !std::mem::take(&mut state.rewind_requested) {
                continue;
            }
            // The front is the first batch not delivered: delivered ones leave the queue.
            let Some(front) = state.in_flight.front() else {
                continue;
            };
            seeks.push((key.clone(), front.first_offset));
            self.next_generation += 1;
            state.generation = self.next_generation;
            state.in_flight.clear();
        }
        seeks.sort();
        seeks
    }

    /// Undoes a rewind whose seek failed: the partition is held at `offset` again (nothing
    /// past it is committed, whatever is delivered meanwhile) and asks for another rewind.
    pub(crate) fn hold(&mut self, key: &Partition, offset: i64) {
        let Some(state) = self.partitions.get_mut(key) else {
            return;
        };
        // Sequence 0 sorts first; the batch that had it belongs to an older generation.
        state.in_flight.push_front(InFlight {
            seq: 0,
            first_offset: offset,
            next_offset: offset,
            state: Ack::Errored,
        });
        state.rewind_requested = true;
    }

    /// Returns whether the acknowledgement asked for a rewind of some partition.
    fn resolve(&mut self, batch: &BatchOffsets, ack: Ack) -> bool {
        let mut rewind = false;
        for (key, generation) in &batch.parts {
            let Some(state) = self.partitions.get_mut(key) else {
                continue;
            };
            if state.generation != *generation {
                continue;
            }
            if let Ok(index) = state
                .in_flight
                .binary_search_by_key(&batch.seq, |entry| entry.seq)
            {
                state.in_flight[index].state = ack;
                if ack == Ack::Errored {
                    state.rewind_requested = true;
                    rewind = true;
                }
            }
            while state
                .in_flight
                .front()
                .is_some_and(|entry| entry.state == Ack::Delivered)
            {
                let entry = state.in_flight.pop_front().expect("front exists");
                state.committable = Some(entry.next_offset);
            }
        }
        rewind
    }

    /// Offsets that advanced since the last call, marked as committed.
    pub(crate) fn take_commits(&mut self, only: Option<&[Partition]>) -> Vec<(Partition, i64)> {
        let mut commits = Vec::new();
        for (key, state) in &mut self.partitions {
            if only.is_some_and(|only| !only.contains(key)) {
                continue;
            }
            if let Some(offset) = state.committable {
                if state.committed != Some(offset) {
                    state.committed = Some(offset);
                    commits.push((key.clone(), offset));
                }
            }
        }
        commits
    }

    /// How many batches await their acknowledgement in these partitions (all when `None`).
    pub(crate) fn in_flight(&self, only: Option<&[Partition]>) -> usize {
        self.partitions
            .iter()
            .filter(|(key, _)| only.is_none_or(|only| only.contains(key)))
            .map(|(_, state)| {
                state
                    .in_flight
                    .iter()
                    .filter(|entry| entry.state == Ack::Waiting)
                    .count()
            })
            .sum()
    }

    /// The offset a partition is committed (or committable) at, if known.
    pub(crate) fn position(&self, key: &Partition) -> Option<i64> {
        self.partitions.get(key)?.committable
    }

    /// Forgets revoked partitions; late acknowledgements for them are ignored.
    pub(crate) fn revoke(&mut self, partitions: &[Partition]) {
        for key in partitions {
            self.partitions.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offsets `first..next` of partition `partition`.
    fn span(partition: i32, offsets: std::ops::Range<i64>) -> Span {
        Span {
            topic: "audit".into(),
            partition,
            first_offset: offsets.start,
            next_offset: offsets.end,
        }
    }

    fn key(partition: i32) -> Partition {
        ("audit".into(), partition)
    }

    #[test]
    fn commits_only_the_delivered_prefix_of_out_of_order_acknowledgements() {
        let mut tracker = OffsetTracker::default();
        let first = tracker.register(&[span(0, 0..10)]);
        let second = tracker.register(&[span(0, 10..20), span(1, 0..5)]);
        let third = tracker.register(&[span(0, 20..30)]);

        tracker.delivered(&third);
        tracker.delivered(&second);
        // Partition 1 only had the second batch; partition 0 waits for the first.
        assert_eq!(tracker.take_commits(None), vec![(key(1), 5)]);
        assert_eq!(tracker.in_flight(Some(&[key(0)])), 1);

        tracker.delivered(&first);
        assert_eq!(tracker.take_commits(None), vec![(key(0), 30)]);
        assert_eq!(tracker.in_flight(None), 0);
        assert!(tracker.take_commits(None).is_empty(), "committed twice");
    }

    #[test]
    fn an_errored_batch_holds_the_commit_back_until_its_partition_is_rewound() {
        let mut tracker = OffsetTracker::default();
        let errored = tracker.register(&[span(0, 0..10)]);
        let later = tracker.register(&[span(0, 10..20)]);
        tracker.delivered(&later);
        assert!(tracker.errored(&errored), "asks for a rewind");
        assert!(tracker.rewind_requested());
        assert!(tracker.take_commits(None).is_empty());
        assert_eq!(tracker.position(&key(0)), None);
        // Nothing is waited for any more: a revoke or shutdown does not stall on it.
        assert_eq!(tracker.in_flight(None), 0);

        assert_eq!(tracker.rewind(), vec![(key(0), 0)]);
        assert!(!tracker.rewind_requested());
        assert!(tracker.rewind().is_empty(), "rewound twice");
        // Read again from 0: both batches once more, delivered this time.
        let again = tracker.register(&[span(0, 0..20)]);
        tracker.delivered(&again);
        assert_eq!(tracker.take_commits(None), vec![(key(0), 20)]);
    }

    #[test]
    fn a_rewind_seeks_to_the_first_batch_not_delivered_and_ignores_late_acknowledgements() {
        let mut tracker = OffsetTracker::default();
        let delivered = tracker.register(&[span(0, 0..10)]);
        let waiting = tracker.register(&[span(0, 10..20)]);
        let errored = tracker.register(&[span(0, 20..30)]);
        let after = tracker.register(&[span(0, 30..40)]);
        tracker.delivered(&delivered);
        tracker.errored(&errored);
        assert_eq!(tracker.take_commits(None), vec![(key(0), 10)]);
        // The batch still waiting before the errored one is read again too: nothing is
        // skipped, even if it would have been delivered.
        assert_eq!(tracker.rewind(), vec![(key(0), 10)]);
        tracker.delivered(&waiting);
        tracker.delivered(&after);
        assert!(
            tracker.take_commits(None).is_empty(),
            "a late acknowledgement from before the rewind moved the commit"
        );
        assert_eq!(tracker.position(&key(0)), Some(10));
        // A late `Errored` from before the rewind asks for nothing.
        assert!(!tracker.errored(&after));
        assert!(tracker.rewind().is_empty());

        let reread = tracker.register(&[span(0, 10..40)]);
        tracker.delivered(&reread);
        assert_eq!(tracker.take_commits(None), vec![(key(0), 40)]);
    }

    #[test]
    fn a_rewind_touches_only_the_partitions_of_the_errored_batch() {
        let mut tracker = OffsetTracker::default();
        let first = tracker.register(&[span(0, 0..10), span(1, 100..105)]);
        let errored = tracker.register(&[span(0, 10..20), span(1, 105..110)]);
        let other = tracker.register(&[span(2, 50..60)]);
        tracker.delivered(&first);
        tracker.errored(&errored);
        assert_eq!(tracker.rewind(), vec![(key(0), 10), (key(1), 105)]);
        // Partition 2 keeps its batch in flight, and its acknowledgement counts.
        assert_eq!(tracker.in_flight(None), 1);
        tracker.delivered(&other);
        let mut commits = tracker.take_commits(None);
        commits.sort();
        assert_eq!(commits, vec![(key(0), 10), (key(1), 105), (key(2), 60)]);
    }

    #[test]
    fn a_failed_seek_holds_the_partition_until_a_rewind_succeeds() {
        let mut tracker = OffsetTracker::default();
        let errored = tracker.register(&[span(0, 0..10)]);
        tracker.errored(&errored);
        assert_eq!(tracker.rewind(), vec![(key(0), 0)]);
        tracker.hold(&key(0), 0);
        // The consumer went on past the failed seek: what it delivers is not committed.
        let past = tracker.register(&[span(0, 10..20)]);
        tracker.delivered(&past);
        assert!(tracker.take_commits(None).is_empty());
        assert!(tracker.rewind_requested());
        assert_eq!(tracker.rewind(), vec![(key(0), 0)]);
        let again = tracker.register(&[span(0, 0..20)]);
        tracker.delivered(&again);
        assert_eq!(tracker.take_commits(None), vec![(key(0), 20)]);
    }

    #[test]
    fn a_partition_revoked_before_its_rewind_is_not_sought() {
        let mut tracker = OffsetTracker::default();
        let errored = tracker.register(&[span(0, 0..10)]);
        tracker.errored(&errored);
        tracker.revoke(&[key(0)]);
        assert!(!tracker.rewind_requested());
        assert!(tracker.rewind().is_empty());
    }

    #[test]
    fn acknowledgements_from_a_revoked_assignment_are_ignored() {
        let mut tracker = OffsetTracker::default();
        let old = tracker.register(&[span(0, 0..10)]);
        tracker.revoke(&[key(0)]);
        let new = tracker.register(&[span(0, 40..50)]);
        tracker.delivered(&old);
        assert!(tracker.take_commits(None).is_empty());
        tracker.delivered(&new);
        assert_eq!(tracker.take_commits(None), vec![(key(0), 50)]);
    }

    #[test]
    fn commits_can_be_limited_to_revoked_partitions() {
        let mut tracker = OffsetTracker::default();
        let batch = tracker.register(&[span(0, 0..10), span(1, 0..7)]);
        tracker.delivered(&batch);
        assert_eq!(tracker.take_commits(Some(&[key(1)])), vec![(key(1), 7)]);
        assert_eq!(tracker.take_commits(None), vec![(key(0), 10)]);
    }
}
