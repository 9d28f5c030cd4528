//! Which offsets may be committed, from acknowledgements that arrive in any order.
//!
//! Batches are cut from the consumer's stream in order, so within one partition the
//! offset ranges of successive batches are increasing and disjoint. Per partition the
//! tracker keeps a queue of the batches still in flight; an acknowledgement marks its
//! entry, and the committable offset advances over the acknowledged prefix of the queue
//! only. A batch that is not `Delivered` stays at the front and holds the commit back, so
//! its messages are read again after a restart or a rebalance.
//!
//! Each assignment of a partition gets a new generation: acknowledgements for batches
//! read under an earlier assignment (the partition was revoked meanwhile) are ignored.

use std::collections::{HashMap, VecDeque};

/// A topic partition.
pub type Partition = (String, i32);

/// One batch's messages in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub topic: String,
    pub partition: i32,
    /// The offset after the batch's last message in the partition.
    pub next_offset: i64,
}

/// The partitions a batch holds messages of, as registered with the tracker.
#[derive(Debug, Default)]
pub struct BatchOffsets {
    seq: u64,
    parts: Vec<(Partition, u64)>,
}

#[derive(Debug)]
struct InFlight {
    seq: u64,
    next_offset: i64,
    state: Ack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ack {
    Waiting,
    Delivered,
    /// Resolved without delivery: holds the commit back, but nothing waits for it.
    Abandoned,
}

#[derive(Debug, Default)]
struct PartitionState {
    generation: u64,
    in_flight: VecDeque<InFlight>,
    /// The offset to commit next: every message before it has been delivered.
    committable: Option<i64>,
    /// The offset last handed to a commit.
    committed: Option<i64>,
}

/// Offsets of in-flight batches for every partition this consumer reads.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<Partition, PartitionState>,
    next_seq: u64,
    next_generation: u64,
}

impl OffsetTracker {
    pub fn new() -> OffsetTracker {
        OffsetTracker::default()
    }

    /// Records a batch about to be sent. `spans` has one entry per partition the batch
    /// (including messages skipped as malformed) covers.
    pub fn register(&mut self, spans: &[Span]) -> BatchOffsets {
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
                next_offset: span.next_offset,
                state: Ack::Waiting,
            });
            parts.push((key, state.generation));
        }
        BatchOffsets { seq, parts }
    }

    /// Marks a batch delivered; the partitions' committable offsets advance over every
    /// delivered batch at the front of their queues.
    pub fn delivered(&mut self, batch: &BatchOffsets) {
        self.resolve(batch, Ack::Delivered);
    }

    /// Marks a batch lost without delivery: the commit stops before it for good (its
    /// messages are read again after a restart or a rebalance).
    pub fn abandoned(&mut self, batch: &BatchOffsets) {
        self.resolve(batch, Ack::Abandoned);
    }

    fn resolve(&mut self, batch: &BatchOffsets, ack: Ack) {
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
    }

    /// Offsets that advanced since the last call, marked as committed.
    pub fn take_commits(&mut self, only: Option<&[Partition]>) -> Vec<(Partition, i64)> {
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
    pub fn in_flight(&self, only: Option<&[Partition]>) -> usize {
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
    pub fn position(&self, key: &Partition) -> Option<i64> {
        self.partitions.get(key)?.committable
    }

    /// Forgets revoked partitions; late acknowledgements for them are ignored.
    pub fn revoke(&mut self, partitions: &[Partition]) {
        for key in partitions {
            self.partitions.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(partition: i32, next_offset: i64) -> Span {
        Span {
            topic: "audit".into(),
            partition,
            next_offset,
        }
    }

    fn key(partition: i32) -> Partition {
        ("audit".into(), partition)
    }

    #[test]
    fn commits_only_the_delivered_prefix_of_out_of_order_acknowledgements() {
        let mut tracker = OffsetTracker::new();
        let first = tracker.register(&[span(0, 10)]);
        let second = tracker.register(&[span(0, 20), span(1, 5)]);
        let third = tracker.register(&[span(0, 30)]);

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
    fn an_undelivered_batch_holds_the_commit_back() {
        let mut tracker = OffsetTracker::new();
        let errored = tracker.register(&[span(0, 10)]);
        let later = tracker.register(&[span(0, 20)]);
        tracker.delivered(&later);
        tracker.abandoned(&errored);
        assert!(tracker.take_commits(None).is_empty());
        assert_eq!(tracker.position(&key(0)), None);
        // Nothing is waited for any more: a revoke or shutdown does not stall on it.
        assert_eq!(tracker.in_flight(None), 0);
    }

    #[test]
    fn acknowledgements_from_a_revoked_assignment_are_ignored() {
        let mut tracker = OffsetTracker::new();
        let old = tracker.register(&[span(0, 10)]);
        tracker.revoke(&[key(0)]);
        let new = tracker.register(&[span(0, 50)]);
        tracker.delivered(&old);
        assert!(tracker.take_commits(None).is_empty());
        tracker.delivered(&new);
        assert_eq!(tracker.take_commits(None), vec![(key(0), 50)]);
    }

    #[test]
    fn commits_can_be_limited_to_revoked_partitions() {
        let mut tracker = OffsetTracker::new();
        let batch = tracker.register(&[span(0, 10), span(1, 7)]);
        tracker.delivered(&batch);
        assert_eq!(tracker.take_commits(Some(&[key(1)])), vec![(key(1), 7)]);
        assert_eq!(tracker.take_commits(None), vec![(key(0), 10)]);
    }
}
