//! Acknowledgements: each file's batches in flight, in order, and the committed position
//! that moves over a leading run of resolved ones; the checkpoint write that stores the
//! committed positions, and the lag gauge.

use auditflow_core::{BatchStatus, Telemetry};
use tokio::task::JoinError;

use super::{Position, Tailer};
use crate::checkpoint::Record;

/// A batch in flight, or one resolved behind an unresolved one.
#[derive(Debug)]
pub(super) struct Pending {
    seq: u64,
    end: Position,
    status: Option<BatchStatus>,
}

pub(super) struct Ack {
    pub(super) key: u64,
    pub(super) seq: u64,
    pub(super) status: BatchStatus,
}

impl Tailer {
    /// Records a batch that was sent; returns its sequence number.
    pub(super) fn push_pending(
        &mut self,
        key: u64,
        end: Position,
        status: Option<BatchStatus>,
    ) -> u64 {
        let entry = self.entries.get_mut(&key).expect("reading entries exist");
        let seq = entry.next_seq;
        entry.next_seq += 1;
        entry.pending.push_back(Pending { seq, end, status });
        if status.is_some() {
            self.advance(key);
        }
        seq
    }

    pub(super) fn acked(&mut self, done: Result<Ack, JoinError>) {
        let Ok(Ack { key, seq, status }) = done else {
            return;
        };
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        if let Some(pending) = entry.pending.iter_mut().find(|pending| pending.seq == seq) {
            pending.status = Some(status);
        }
        self.advance(key);
    }

    /// Moves the committed position over the leading run of resolved batches.
    fn advance(&mut self, key: u64) {
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        while let Some(front) = entry.pending.front() {
            match front.status {
                None => break,
                Some(BatchStatus::Delivered) => {}
                Some(BatchStatus::Rejected) => {
                    // Sending it again would be refused again; the sink counted it.
                    tracing::warn!(component_id = %self.id, file = %entry.path.display(),
                        offset = entry.committed.offset,
                        "a sink rejected events from this file for good; moving past them");
                }
                Some(BatchStatus::Errored) => {
                    if !entry.frozen {
                        tracing::error!(component_id = %self.id, file = %entry.path.display(),
                            offset = entry.committed.offset,
                            "events from this file were lost unacknowledged in the pipeline; \
                             its checkpoint stays here and they are read again after a restart");
                        entry.frozen = true;
                    }
                    // Nothing behind it can be committed before a restart.
                    entry.pending.truncate(1);
                    break;
                }
            }
            entry.committed = front.end;
            entry.pending.pop_front();
            self.dirty = true;
        }
    }

    pub(super) fn write_checkpoint(&mut self, telemetry: &dyn Telemetry) {
        let records: Vec<Record> = self
            .entries
            .values()
            .filter(|entry| !entry.retired)
            .filter_map(|entry| {
                Some(Record {
                    fingerprint: entry.fingerprint?.to_string(),
                    path: entry.path.clone(),
                    offset: entry.committed.offset,
                    line: entry.committed.line,
                    size: Some(entry.size.max(entry.committed.offset)),
                })
            })
            .collect();
        match self.store.write(&records) {
            Ok(()) => {
                self.dirty = false;
                self.checkpoint_now = false;
            }
            Err(error) => {
                telemetry.errored("checkpoint", 1);
                tracing::error!(component_id = %self.id, file = %self.store.path().display(),
                    %error, "cannot write checkpoint; retrying (a restart now would read some events again)");
            }
        }
    }

    pub(super) fn update_lag(&self) {
        let lag: u64 = self
            .entries
            .values()
            .filter(|entry| !entry.retired && (entry.reader.is_some() || !entry.pending.is_empty()))
            .map(|entry| {
                entry
                    .size
                    .max(entry.read.offset)
                    .saturating_sub(entry.committed.offset)
            })
            .sum();
        self.metrics
            .lag_bytes
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
    }
}
