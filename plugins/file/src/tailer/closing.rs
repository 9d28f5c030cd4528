//! The end of a file's life: closing files gone for `rotate_wait` (drained, supplied by a
//! matched copy, or with bytes unread) and files idle for as long; counting what is lost,
//! once (at the close for a deleted file, when its position is forgotten for one renamed
//! away, at the first scan after a restart for one gone meanwhile); forgetting positions
//! unseen for `forget_after`.

use std::os::unix::fs::MetadataExt;

use tokio::time::Instant;

use super::reading::Input;
use super::Tailer;

impl Tailer {
    /// Closes files gone for `rotate_wait`, and files idle at their end for as long.
    pub(super) fn close_finished(&mut self, now: Instant) {
        let wait = self.settings.rotate_wait;
        let mut closing = Vec::new();
        let mut lost = Vec::new();
        let mut held = Vec::new();
        for (&key, entry) in &self.entries {
            let Some(reader) = &entry.reader else {
                continue;
            };
            if let Some(since) = entry.gone_since {
                if now.duration_since(since) >= wait {
                    // The size through the handle: the last scan may predate the last write.
                    let (size, deleted) = match &reader.input {
                        Input::Plain(file) => file
                            .metadata()
                            .map_or((entry.size, true), |meta| (meta.len(), meta.nlink() == 0)),
                        Input::Gzip(_) => (entry.size, true),
                    };
                    let unread = size.saturating_sub(reader.framer.offset());
                    if unread > 0 && entry.copy_seen_in_scan == Some(self.scans) {
                        // A `.gz` (or a copy) of it is matched: the rest is read from there.
                        tracing::info!(component_id = %self.id, file = %entry.path.display(),
                            unread_bytes = unread,
                            "closing a renamed or deleted file after rotate_wait_secs; a matched copy of it (such as its .gz) supplies the rest");
                    } else if unread > 0 && deleted {
                        self.metrics.lost_bytes.inc_by(unread);
                        tracing::error!(component_id = %self.id, file = %entry.path.display(),
                            lost_bytes = unread, "closing a renamed or deleted file after rotate_wait_secs with bytes unread: they are lost (reading fell behind, or its last line had no newline); a disk buffer on the sinks, a longer rotate_wait_secs or more --audit-log-maxbackup keep them");
                        lost.push((key, reader.framer.offset()));
                    } else if unread > 0 {
                        // Renamed away, still on disk: renamed back, or compressed late into a
                        // `.gz` that include matches, it supplies them while its position is
                        // kept. Only then are they known to be lost.
                        tracing::warn!(component_id = %self.id, file = %entry.path.display(),
                            unread_bytes = unread, forget_after_secs = self.settings.forget_after.as_secs(),
                            "closing a renamed or deleted file after rotate_wait_secs with bytes unread; it was renamed, not deleted: unless it or a copy of it (such as its .gz) comes back under include within forget_after_secs, they are counted as lost then");
                        held.push((key, size));
                    } else {
                        tracing::info!(component_id = %self.id, file = %entry.path.display(),
                            "closing a renamed or deleted file: drained");
                    }
                    closing.push(key);
                }
            } else if entry
                .idle_since
                .is_some_and(|since| now.duration_since(since) >= wait)
                && reader.framer.pending_bytes() == 0
                // Written to while reading was held back (a full pipeline, the memory
                // limit): not finished. (A gzip file's size is not in read offsets.)
                && (matches!(reader.input, Input::Gzip(_)) || entry.size <= entry.read.offset)
            {
                closing.push(key);
            }
        }
        for (key, read) in lost {
            // Counted once: a restart counts only what stays unacknowledged of what was read.
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.size = read;
                self.dirty = true;
                self.checkpoint_now = true;
            }
        }
        for (key, size) in held {
            if let Some(entry) = self.entries.get_mut(&key) {
                // Checkpointed with its size: a restart that finds neither the file nor a
                // copy of it counts them then, once.
                entry.size = size;
                entry.unread_until = Some(size);
                self.dirty = true;
            }
        }
        for key in closing {
            self.close(key, true);
        }
    }

    /// Files renamed out of include and closed with bytes unread that neither came back
    /// nor left a copy that supplied those bytes within `forget_after`: they are lost.
    fn count_unread_as_lost(&mut self, now: Instant) {
        for entry in self.entries.values_mut() {
            let expired =
                entry.retired || now.duration_since(entry.last_seen) >= self.settings.forget_after;
            if entry.reader.is_some() || !expired {
                continue;
            }
            let Some(end) = entry.unread_until.take() else {
                continue;
            };
            let lost = end.saturating_sub(entry.read.offset);
            if lost == 0 {
                continue;
            }
            self.metrics.lost_bytes.inc_by(lost);
            // Counted once: the checkpoint says so at once, so a restart does not count
            // them again.
            entry.size = entry.read.offset;
            self.dirty = true;
            self.checkpoint_now = true;
            tracing::error!(component_id = %self.id, file = %entry.path.display(),
                lost_bytes = lost, "forgetting a file renamed out of include and closed after rotate_wait_secs with bytes unread: they are lost, as neither it nor a copy of it (such as its .gz) came back under include within forget_after_secs (reading fell behind, or its last line had no newline); a disk buffer on the sinks, a longer rotate_wait_secs or more --audit-log-maxbackup keep them");
        }
    }

    /// After the first scan: files the checkpoint names that are gone, with bytes that
    /// were never acknowledged. They cannot be read any more: count and report them.
    pub(super) fn account_missing_at_start(&mut self) {
        for entry in self.entries.values_mut() {
            if !std::mem::take(&mut entry.unseen_since_start) || entry.retired {
                continue;
            }
            let lost = entry.size.saturating_sub(entry.committed.offset);
            if lost > 0 {
                // Counted once: the next checkpoint says nothing more is missing from it, so
                // a later restart does not count these bytes again.
                let size = std::mem::replace(&mut entry.size, entry.committed.offset);
                self.dirty = true;
                self.metrics.lost_bytes.inc_by(lost);
                tracing::error!(component_id = %self.id, file = %entry.path.display(),
                    checkpoint = entry.committed.offset, size, lost_bytes = lost,
                    "a file the checkpoint names is gone with bytes never acknowledged: they are lost (deleted or rotated away while auditflow was stopped or blocked); a disk buffer on the sinks, or more --audit-log-maxbackup, keeps them");
            }
        }
    }

    /// Forgets files closed and unseen for `forget_after`, and retired entries with nothing
    /// in flight.
    pub(super) fn forget_old(&mut self, now: Instant) {
        self.count_unread_as_lost(now);
        let mut forgotten = Vec::new();
        for (&key, entry) in &self.entries {
            if entry.reader.is_some() || !entry.pending.is_empty() || self.sending == Some(key) {
                continue;
            }
            if entry.retired || now.duration_since(entry.last_seen) >= self.settings.forget_after {
                forgotten.push(key);
            }
        }
        for key in forgotten {
            if let Some(entry) = self.entries.remove(&key) {
                if let Some(fingerprint) = entry.fingerprint {
                    if self.by_fingerprint.get(&fingerprint) == Some(&key) {
                        self.by_fingerprint.remove(&fingerprint);
                    }
                }
                self.settled.retain(|_, settled| settled.key != key);
                self.dirty = true;
            }
        }
    }
}
