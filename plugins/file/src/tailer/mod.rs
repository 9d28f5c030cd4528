//! The running `file` source: one task that finds files, reads them into batches, and
//! turns acknowledgements into checkpoints.
//!
//! Every file the source knows is an [`Entry`], keyed by a number in order of discovery
//! and indexed by fingerprint (how it is found again after a rename or a restart) and, while
//! open, by inode (how a rename is noticed without reading the file). An entry outlives its
//! open file: it keeps the acknowledged position for the checkpoint and the read position
//! for a reopen.
//!
//! - **Rename rotation**: the open file keeps being read through its handle; under its new
//!   name if the globs still match it, or for `rotate_wait` if not. The new file at the old
//!   name is a new entry, read from 0. A file renamed away and closed with bytes unread is
//!   still on disk: it, or a copy compressed later, may come back and supply them, so they
//!   are counted lost only once its position is forgotten (`forget_after`).
//! - **Copy-truncate**: a file shorter than what was read from it (or, with `checksum`,
//!   whose first line changed) is read again from 0 as a new entry; the old entry keeps its
//!   fingerprint and position, so a copy that the globs match resumes where reading stopped.
//! - **Deletion**: the open handle is drained for up to `rotate_wait`, then closed; what
//!   is unread then is lost, unless a matched copy of the file supplies it.
//! - **Back-pressure**: while a full pipeline holds a batch back, scans and checkpoint
//!   writes go on, so a file rotated and deleted during a long outage is still known, and
//!   what it loses is counted (once, across restarts too).
//! - **Idle files** at their end for `rotate_wait` are closed and remembered by inode, size
//!   and mtime, so that a later scan reopens them only when they change.
//!
//! What waits on the disk runs off the async runtime: each directory scan (listings,
//! `stat`s, fingerprint reads, decompressing a `.gz` up to its resume offset) and each
//! checkpoint write (two fsyncs) hands the whole tailer to a blocking thread and takes it
//! back when done ([`Tailer::off_runtime`]). A slow fsync on a disk shared with etcd thus
//! holds this source up, but no other task on its worker. Reading new lines stays on the
//! task: reads of at most [`reading::READ_CHUNK`] bytes that the page cache serves, with the JSON
//! checks on them, between which the task awaits the output, acknowledgements and timers.
//!
//! # Layout
//! - this module: the [`Tailer`], its entries, and the [`Source::run`] loop that reads,
//!   sends and housekeeps in turn.
//! - [`globs`]: listing the files the globs match.
//! - [`discovery`]: what a scan finds: new files, renames, truncations, deletions, copies
//!   (`.gz`), collisions.
//! - [`closing`]: closing gone and idle files, counting lost bytes, forgetting positions.
//! - [`reading`]: opening and closing files (plain or gzip) and reading them into batches.
//! - [`acks`]: batches in flight, the committed position they move, the checkpoint write
//!   and the lag gauge.

mod acks;
mod closing;
mod discovery;
mod globs;
mod reading;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use auditflow_core::blocking;
use auditflow_core::framing::Framing;
use auditflow_core::records::RecordDecoder;
use auditflow_core::{
    Batch, BatchNotifier, BatchStatus, ComponentError, Finalizers, Source, SourceContext, Telemetry,
};
use auditflow_metrics::FileMetrics;
use globset::GlobSet;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::checkpoint::CheckpointStore;
use crate::fingerprint::Fingerprint;
use crate::{FingerprintMode, ReadFrom};
use acks::{Ack, Pending};
use discovery::{Settled, StartDigest};
use reading::{is_gzip, Reader};

/// Batches sent and not yet acknowledged, over all files. Reading pauses at this many:
/// it bounds both memory held downstream and what a crash replays.
pub(crate) const MAX_BATCHES_IN_FLIGHT: usize = 16;
/// How often open files are checked for new data when there was none.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Checkpoints are written at most this often (and at shutdown).
pub(crate) const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// How long shutdown waits for batches in flight to be acknowledged.
const SHUTDOWN_ACK_WAIT: Duration = Duration::from_secs(30);

/// The options, compiled.
#[derive(Debug)]
pub(crate) struct Settings {
    pub include_patterns: Vec<String>,
    pub include: GlobSet,
    pub exclude: GlobSet,
    pub glob_interval: Duration,
    pub read_from: ReadFrom,
    pub fingerprint: FingerprintMode,
    pub max_line_bytes: usize,
    pub framing: Framing,
    /// How each record holds events (`decoding`).
    pub envelope: auditflow_core::envelope::Envelope,
    pub rotate_wait: Duration,
    /// How long a closed file's position is kept after its file was last seen
    /// (`forget_after_secs`).
    pub forget_after: Duration,
}

type Inode = (u64, u64);

/// A point in a file: the byte offset just past a line, and how many lines lie before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Position {
    offset: u64,
    line: u64,
}

/// A file the source knows: open or not, with its positions.
struct Entry {
    /// `None` while a truncated file is too short to be fingerprinted (not checkpointed).
    fingerprint: Option<Fingerprint>,
    path: PathBuf,
    gzip: bool,
    reader: Option<Reader>,
    /// Just past the last line handed out: where a reopen resumes.
    read: Position,
    /// Just past the last line every sink acknowledged: what the checkpoint stores.
    committed: Position,
    pending: VecDeque<Pending>,
    next_seq: u64,
    /// Size at the last `fstat`.
    size: u64,
    /// Since when the globs no longer match it (renamed away or deleted).
    gone_since: Option<Instant>,
    /// Since when it has had no new data.
    idle_since: Option<Instant>,
    last_seen: Instant,
    /// Replaced by a new entry for the same fingerprint; kept only to absorb acknowledgements.
    retired: bool,
    /// A batch was lost unacknowledged: the checkpoint stays before it until a restart.
    frozen: bool,
    /// Loaded from the checkpoint and not found by the first scan yet.
    unseen_since_start: bool,
    /// The scan that last found another matched file with this file's fingerprint while
    /// this one was open (a `.gz` or a copy): what is unread here can be read from it.
    copy_seen_in_scan: Option<u64>,
    /// Closed after `rotate_wait` gone, with its bytes unread up to this offset: what of
    /// them neither the file coming back nor a copy of it supplies is counted lost when
    /// the entry is forgotten.
    unread_until: Option<u64>,
    /// The file's start when it was last closed (`checksum` only): once the file is gone,
    /// what tells another file with its fingerprint from it.
    start: Option<StartDigest>,
}

impl Entry {
    fn new(path: PathBuf, fingerprint: Option<Fingerprint>, start: Position) -> Entry {
        Entry {
            fingerprint,
            gzip: is_gzip(&path),
            path,
            reader: None,
            read: start,
            committed: start,
            pending: VecDeque::new(),
            next_seq: 0,
            size: start.offset,
            gone_since: None,
            idle_since: None,
            last_seen: Instant::now(),
            retired: false,
            frozen: false,
            unseen_since_start: false,
            copy_seen_in_scan: None,
            unread_until: None,
            start: None,
        }
    }
}

/// When the next directory scan and the next checkpoint write are due.
struct Timers {
    next_scan: Instant,
    next_checkpoint: Instant,
}

impl Timers {
    /// The next moment there is housekeeping to do.
    fn wake(&self, dirty: bool) -> Instant {
        if dirty {
            self.next_scan.min(self.next_checkpoint)
        } else {
            self.next_scan
        }
    }
}

/// The `file` source.
pub(crate) struct Tailer {
    id: String,
    settings: Settings,
    store: CheckpointStore,
    /// No checkpoint existed at start: `read_from` applies to the files found first.
    first_start: bool,
    scans: u64,
    entries: BTreeMap<u64, Entry>,
    next_key: u64,
    by_fingerprint: HashMap<Fingerprint, u64>,
    open_by_inode: HashMap<Inode, u64>,
    settled: HashMap<Inode, Settled>,
    acks: JoinSet<Ack>,
    dirty: bool,
    metrics: FileMetrics,
    /// Frames into events; counts and warns (rate-limited) about what it refuses.
    records: RecordDecoder,
    /// The entry whose batch waits to be sent: scans go on meanwhile, and must not forget
    /// it before its batch is registered.
    sending: Option<u64>,
    /// Lost bytes were just reported: the checkpoint must say so at once, or a crash before
    /// the next periodic write would have the restart report them again.
    checkpoint_now: bool,
    /// Matched files left unread because another file has their fingerprint: reported
    /// once each while the globs match them.
    collisions: HashSet<PathBuf>,
    timers: Timers,
}

impl Tailer {
    /// Opens the checkpoint store in `data_dir` and loads what it holds.
    pub(crate) fn new(
        id: &str,
        data_dir: &Path,
        settings: Settings,
        metrics: FileMetrics,
    ) -> Result<Tailer, String> {
        let store = CheckpointStore::open(data_dir)
            .map_err(|error| format!("{}: {error}", data_dir.display()))?;
        let records = store.load()?;
        let records_decoder = RecordDecoder::new(id).with_envelope(settings.envelope.clone());
        let mut tailer = Tailer {
            id: id.to_owned(),
            settings,
            store,
            first_start: records.is_none(),
            scans: 0,
            entries: BTreeMap::new(),
            next_key: 0,
            by_fingerprint: HashMap::new(),
            open_by_inode: HashMap::new(),
            settled: HashMap::new(),
            acks: JoinSet::new(),
            dirty: false,
            records: records_decoder,
            sending: None,
            checkpoint_now: false,
            collisions: HashSet::new(),
            timers: Timers {
                next_scan: Instant::now(),
                next_checkpoint: Instant::now(),
            },
            metrics,
        };
        for record in records.unwrap_or_default() {
            let Some(fingerprint) = Fingerprint::parse(&record.fingerprint) else {
                tracing::warn!(component_id = %id, fingerprint = %record.fingerprint,
                    "ignoring a checkpoint record with an unknown fingerprint");
                continue;
            };
            let start = Position {
                offset: record.offset,
                line: record.line,
            };
            let mut entry = Entry::new(record.path, Some(fingerprint), start);
            entry.size = record.size.unwrap_or(record.offset).max(record.offset);
            entry.unseen_since_start = true;
            tailer.insert(entry);
        }
        Ok(tailer)
    }

    fn insert(&mut self, entry: Entry) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        if let Some(fingerprint) = entry.fingerprint {
            if let Some(old) = self.by_fingerprint.insert(fingerprint, key) {
                if let Some(old) = self.entries.get_mut(&old) {
                    old.retired = true;
                }
            }
        }
        self.entries.insert(key, entry);
        self.dirty = true;
        key
    }

    /// Whether a scan, or a write of a changed checkpoint, is due.
    fn housekeeping_due(&self) -> bool {
        let now = Instant::now();
        now >= self.timers.next_scan
            || (self.dirty && (now >= self.timers.next_checkpoint || self.checkpoint_now))
    }

    /// Scans when a scan is due, and writes the checkpoint when it is due and changed.
    /// Blocks on the disk: called through [`Tailer::off_runtime`].
    fn housekeep(&mut self, telemetry: &dyn Telemetry) {
        let now = Instant::now();
        if now >= self.timers.next_scan {
            self.scan(telemetry);
            self.timers.next_scan = Instant::from_std(auditflow_core::duration::deadline(
                now.into_std(),
                self.settings.glob_interval,
            ));
            if self.scans == 1 {
                self.account_missing_at_start();
                // Remember where reading starts (read_from: end) before anything else.
                self.write_checkpoint(telemetry);
                self.timers.next_checkpoint = now + CHECKPOINT_INTERVAL;
            }
        }
        if self.dirty && (now >= self.timers.next_checkpoint || self.checkpoint_now) {
            self.write_checkpoint(telemetry);
            self.timers.next_checkpoint = now + CHECKPOINT_INTERVAL;
        }
    }

    /// Hands the tailer to a blocking thread for `work`, and takes it back with what
    /// `work` returned. The task awaits meanwhile: nothing else touches the tailer, so
    /// what `work` sees and writes (a checkpoint records only acknowledgements taken in
    /// before it) keeps the order of the task's own steps.
    async fn off_runtime<T: Send + 'static>(
        self: Box<Self>,
        work: impl FnOnce(&mut Tailer) -> T + Send + 'static,
    ) -> (Box<Self>, T) {
        let mut tailer = self;
        blocking::run(move || {
            let done = work(&mut tailer);
            (tailer, done)
        })
        .await
    }

    /// [`Tailer::housekeep`], off the runtime.
    async fn housekeep_off_runtime(self: Box<Self>, telemetry: &Arc<dyn Telemetry>) -> Box<Self> {
        let telemetry = Arc::clone(telemetry);
        self.off_runtime(move |tailer| tailer.housekeep(&*telemetry))
            .await
            .0
    }

    fn open_keys(&self) -> Vec<u64> {
        self.entries
            .iter()
            .filter(|(_, entry)| entry.reader.is_some())
            .map(|(&key, _)| key)
            .collect()
    }
}

#[async_trait]
impl Source for Tailer {
    async fn run(mut self: Box<Self>, cx: SourceContext) -> Result<(), ComponentError> {
        let SourceContext {
            out,
            mut shutdown,
            telemetry,
            dead_letter,
            ..
        } = cx;
        let telemetry_handle = telemetry;
        let telemetry = &*telemetry_handle;
        self.records = std::mem::replace(&mut self.records, RecordDecoder::new(&self.id))
            .with_dead_letters(&dead_letter);
        self.timers = Timers {
            next_scan: Instant::now(),
            next_checkpoint: Instant::now(),
        };
        // Over memory_limit_mb, read nothing more (as when the pipeline is full).
        let mut memory = auditflow_core::memory::pressure();
        'running: loop {
            while let Some(done) = self.acks.try_join_next() {
                self.acked(done);
            }
            if shutdown.is_triggered() {
                break;
            }
            if self.housekeeping_due() {
                self = self.housekeep_off_runtime(&telemetry_handle).await;
            }
            let mut progressed = false;
            for key in self.open_keys() {
                while self.acks.len() < MAX_BATCHES_IN_FLIGHT && !memory.is_limited() {
                    let Some(fill) = self.fill(key, telemetry) else {
                        break;
                    };
                    progressed = true;
                    telemetry.received(fill.records, fill.bytes);
                    let letters = self.records.take_dead_letters();
                    if fill.events.is_empty() && letters.is_empty() {
                        self.push_pending(key, fill.end, Some(BatchStatus::Delivered));
                        continue;
                    }
                    let (finalizer, receiver) = BatchNotifier::new();
                    // The dead letters hold the checkpoint like the events do.
                    let letters_finalizer = Finalizers::from(finalizer.clone());
                    let batch = Batch::with_finalizer(fill.events, finalizer);
                    // Registered once sent: a batch that shutdown stops before it is sent
                    // was never in the pipeline, so it is not lost, just not read yet
                    // (the checkpoint stays before it).
                    let send = async {
                        dead_letter.send(letters, letters_finalizer).await?;
                        out.send(batch).await
                    };
                    tokio::pin!(send);
                    // A full pipeline can hold this send for as long as a destination is
                    // down. Files keep being rotated and deleted meanwhile: scanning goes on,
                    // so that every file is known, checkpointed, and its loss counted if it
                    // is deleted before it could be read.
                    self.sending = Some(key);
                    let sent = loop {
                        tokio::select! {
                            biased;
                            _ = shutdown.wait() => break None,
                            sent = &mut send => break Some(sent),
                            Some(done) = self.acks.join_next(), if !self.acks.is_empty() => self.acked(done),
                            _ = tokio::time::sleep_until(self.timers.wake(self.dirty)) => {
                                self = self.housekeep_off_runtime(&telemetry_handle).await;
                                self.update_lag();
                            }
                        }
                    };
                    self.sending = None;
                    match sent {
                        None => break 'running,
                        Some(sent) => sent?,
                    }
                    let seq = self.push_pending(key, fill.end, None);
                    self.acks.spawn(async move {
                        Ack {
                            key,
                            seq,
                            status: receiver.await,
                        }
                    });
                }
            }
            self.update_lag();
            if progressed && self.acks.len() < MAX_BATCHES_IN_FLIGHT {
                // Lines that made no batch (all malformed) awaited nothing so far.
                tokio::task::yield_now().await;
                continue;
            }
            let wake = self
                .timers
                .wake(self.dirty)
                .min(Instant::now() + POLL_INTERVAL);
            tokio::select! {
                biased;
                _ = shutdown.wait() => break,
                Some(done) = self.acks.join_next(), if !self.acks.is_empty() => self.acked(done),
                _ = memory.relieved(), if memory.is_limited() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }

        // Stop reading; let the pipeline drain; commit what it delivered.
        drop(out);
        drop(dead_letter);
        let deadline = Instant::now() + SHUTDOWN_ACK_WAIT;
        while !self.acks.is_empty() {
            match tokio::time::timeout_at(deadline, self.acks.join_next()).await {
                Ok(Some(done)) => {
                    self.acked(done);
                    if Instant::now() >= self.timers.next_checkpoint {
                        // The process may be stopped before the wait ends.
                        let telemetry = Arc::clone(&telemetry_handle);
                        (self, ()) = self
                            .off_runtime(move |tailer| tailer.write_checkpoint(&*telemetry))
                            .await;
                        self.timers.next_checkpoint = Instant::now() + CHECKPOINT_INTERVAL;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(component_id = %self.id, batches = self.acks.len(),
                        "shutdown: gave up waiting for acknowledgements; those events are read again after a restart");
                    break;
                }
            }
        }
        // Written before the source returns: the topology's shutdown waits for it.
        self.off_runtime(move |tailer| {
            tailer.write_checkpoint(&*telemetry_handle);
            tailer.update_lag();
            for key in tailer.open_keys() {
                tailer.close(key, false);
            }
        })
        .await;
        Ok(())
    }
}
