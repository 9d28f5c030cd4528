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
//!   name is a new entry, read from 0.
//! - **Copy-truncate**: a file shorter than what was read from it (or, with `checksum`,
//!   whose first line changed) is read again from 0 as a new entry; the old entry keeps its
//!   fingerprint and position, so a copy that the globs match resumes where reading stopped.
//! - **Deletion**: the open handle is drained for up to `rotate_wait`, then closed.
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
//! task: reads of at most [`READ_CHUNK`] bytes that the page cache serves, with the JSON
//! checks on them, between which the task awaits the output, acknowledgements and timers.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use auditflow_core::batch::{MAX_BATCH_BYTES, MAX_BATCH_EVENTS};
use auditflow_core::blocking;
use auditflow_core::framing::{Frame, Framer, Framing};
use auditflow_core::records::RecordDecoder;
use auditflow_core::Location;
use auditflow_core::{
    Batch, BatchNotifier, BatchStatus, ComponentError, Event, Finalizers, Source, SourceContext,
    Telemetry,
};
use auditflow_metrics::FileMetrics;
use flate2::read::MultiGzDecoder;
use globset::GlobSet;
use sha2::{Digest, Sha256};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use crate::checkpoint::{CheckpointStore, Record};
use crate::fingerprint::{Fingerprint, CHECKSUM_BYTES};
use crate::{FingerprintMode, ReadFrom};

/// Batches sent and not yet acknowledged, over all files. Reading pauses at this many:
/// it bounds both memory held downstream and what a crash replays.
pub const MAX_BATCHES_IN_FLIGHT: usize = 16;
/// How often open files are checked for new data when there was none.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Checkpoints are written at most this often (and at shutdown).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// How long shutdown waits for batches in flight to be acknowledged.
const SHUTDOWN_ACK_WAIT: Duration = Duration::from_secs(30);
/// Bytes read from a file at once.
const READ_CHUNK: usize = 256 * 1024;
/// Directory levels `**` descends at most.
const MAX_DEPTH: usize = 32;
/// Bytes compared at most to tell a copy of a known file from another file that only
/// shares its fingerprint (its first line).
const COMPARE_BYTES: usize = 4096;

/// The options, compiled.
#[derive(Debug)]
pub struct Settings {
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

/// A batch in flight, or one resolved behind an unresolved one.
#[derive(Debug)]
struct Pending {
    seq: u64,
    end: Position,
    status: Option<BatchStatus>,
}

enum Input {
    Plain(File),
    Gzip(Box<MultiGzDecoder<File>>),
}

/// An open file.
struct Reader {
    inode: Inode,
    input: Input,
    framer: Framer,
}

impl Reader {
    /// Bytes taken from the file so far (framed or held as a partial line).
    fn fed(&self) -> u64 {
        self.framer.offset() + self.framer.pending_bytes() as u64
    }

    /// Reads one chunk into the framer; 0 at the end of the file.
    fn read_chunk(&mut self) -> io::Result<usize> {
        let buffer = self.framer.buffer();
        let held = buffer.len();
        // Safe code cannot read into spare capacity; zeroing 256 KiB is cheap next to
        // validating the JSON it will hold.
        buffer.resize(held + READ_CHUNK, 0);
        let read = match &mut self.input {
            Input::Plain(file) => file.read(&mut buffer[held..]),
            Input::Gzip(decoder) => decoder.read(&mut buffer[held..]),
        };
        buffer.truncate(held + *read.as_ref().unwrap_or(&0));
        read
    }
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
            start: None,
        }
    }
}

/// A digest of a file's first bytes, up to [`COMPARE_BYTES`].
#[derive(Debug, Clone, Copy)]
struct StartDigest {
    len: usize,
    sum: [u8; 32],
}

impl StartDigest {
    fn of(start: &[u8]) -> StartDigest {
        let mut sum = [0u8; 32];
        sum.copy_from_slice(&Sha256::digest(start));
        StartDigest {
            len: start.len(),
            sum,
        }
    }

    /// Whether another file's `start`, at least as long, differs from the digested one.
    fn differs_from(&self, start: &[u8]) -> bool {
        Sha256::digest(&start[..self.len]).as_slice() != self.sum
    }
}

/// A closed file known to hold nothing unread, as it looked then.
struct Settled {
    len: u64,
    modified: Option<SystemTime>,
    key: u64,
}

/// What one read of a file produced.
struct Fill {
    events: Vec<Event>,
    end: Position,
    lines: usize,
    bytes: usize,
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

struct Ack {
    key: u64,
    seq: u64,
    status: BatchStatus,
}

/// What to do with a file after reading it.
enum AfterRead {
    Nothing,
    Truncated,
    /// Read to its end for good (a gzip file).
    Close,
    /// Close now, open again on the next scan.
    Reopen,
}

/// One frame of `entry`'s file into `fill`: the read position moves past it, and
/// `records` turns it into events (or counts it as refused).
fn take_frame(
    records: &mut RecordDecoder,
    (read, path): (&mut Position, &Path),
    fill: &mut Fill,
    frame: Frame,
    telemetry: &dyn Telemetry,
) {
    let end = match &frame {
        Frame::Line { end, .. } | Frame::Oversized { end, .. } | Frame::Padding { end, .. } => *end,
    };
    if !matches!(frame, Frame::Padding { .. }) {
        read.line += 1;
        fill.lines += 1;
    }
    fill.bytes += (end - read.offset) as usize;
    let start = std::mem::replace(&mut read.offset, end);
    let line = read.line;
    records.decode(frame, telemetry, &mut fill.events, || Location::File {
        file: path.display().to_string(),
        line,
        offset: start,
    });
}

/// The `file` source.
pub struct Tailer {
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
    pub fn new(
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

    /// Lists the files the globs match, oldest first.
    fn expand(&self) -> Vec<(PathBuf, Metadata)> {
        let mut found = BTreeMap::new();
        for pattern in &self.settings.include_patterns {
            let (base, depth) = walk_root(Path::new(pattern));
            let mut visited = HashSet::new();
            self.first_visit(&base, &mut visited);
            self.walk(&base, depth, &mut found, &mut visited);
        }
        let mut files: Vec<(PathBuf, Metadata)> = found.into_iter().collect();
        files.sort_by_key(|(path, meta)| (meta.modified().ok(), path.clone()));
        files
    }

    /// Whether directory `dir` was not listed yet in this expansion (links can form cycles).
    fn first_visit(&self, dir: &Path, visited: &mut HashSet<Inode>) -> bool {
        fs::metadata(dir).is_ok_and(|meta| visited.insert((meta.dev(), meta.ino())))
    }

    fn walk(
        &self,
        dir: &Path,
        depth: usize,
        found: &mut BTreeMap<PathBuf, Metadata>,
        visited: &mut HashSet<Inode>,
    ) {
        #[cfg(test)]
        auditflow_testkit::stall::inside_blocking_section(|key| dir.starts_with(key));
        let listing = match fs::read_dir(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }) {
            Ok(listing) => listing,
            Err(error) => {
                if error.kind() != io::ErrorKind::NotFound {
                    tracing::debug!(component_id = %self.id, dir = %dir.display(), %error, "cannot list directory");
                }
                return;
            }
        };
        for item in listing.flatten() {
            let path = dir.join(item.file_name());
            let Ok(kind) = item.file_type() else { continue };
            // A link to a directory is descended like the directory (`**` through it).
            let is_dir = kind.is_dir()
                || (kind.is_symlink() && fs::metadata(&path).is_ok_and(|meta| meta.is_dir()));
            if is_dir {
                if depth > 1 && self.first_visit(&path, visited) {
                    self.walk(&path, depth - 1, found, visited);
                }
                continue;
            }
            if !self.settings.include.is_match(&path) || self.settings.exclude.is_match(&path) {
                continue;
            }
            // Follows symbolic links: a link to a log file is read as that file.
            if let Ok(meta) = fs::metadata(&path) {
                if meta.is_file() {
                    found.insert(path, meta);
                }
            }
        }
    }

    /// Looks for new, renamed, truncated and deleted files.
    fn scan(&mut self, telemetry: &dyn Telemetry) {
        let now = Instant::now();
        let files = self.expand();
        if self.scans == 0 && files.is_empty() {
            tracing::info!(component_id = %self.id, include = ?self.settings.include_patterns,
                "no file matches include yet; waiting for one");
        }
        self.collisions
            .retain(|collided| files.iter().any(|(path, _)| path == collided));
        let mut seen = HashSet::with_capacity(files.len());
        let mut unopened = Vec::new();
        // Files open already: renamed, truncated?
        for (path, meta) in files {
            let inode = (meta.dev(), meta.ino());
            seen.insert(inode);
            let Some(&key) = self.open_by_inode.get(&inode) else {
                unopened.push((path, meta, inode));
                continue;
            };
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            entry.gone_since = None;
            entry.last_seen = now;
            if entry.path != path {
                tracing::info!(component_id = %self.id, from = %entry.path.display(),
                    to = %path.display(), "file renamed (rotation); still reading it");
                self.metrics.rotations.inc();
                entry.path = path;
                self.dirty = true;
            }
            if self.was_replaced(key, meta.len()) {
                self.truncated(key);
            }
        }
        // Files open but no longer matched: renamed away or deleted.
        for (&key, entry) in self.entries.iter_mut() {
            let Some(reader) = &entry.reader else {
                continue;
            };
            if seen.contains(&reader.inode) || entry.gone_since.is_some() {
                continue;
            }
            entry.gone_since = Some(now);
            let deleted = match &reader.input {
                Input::Plain(file) => file.metadata().map(|m| m.nlink() == 0).unwrap_or(true),
                Input::Gzip(_) => true,
            };
            if !deleted {
                self.metrics.rotations.inc();
            }
            tracing::info!(component_id = %self.id, file = %entry.path.display(), key,
                deleted, wait_secs = self.settings.rotate_wait.as_secs(),
                "file no longer matches include (renamed away or deleted); draining it");
        }
        // Files not open: new, or known ones that changed.
        for (path, meta, inode) in unopened {
            if let Some(settled) = self.settled.get(&inode) {
                if settled.len == meta.len() && settled.modified == meta.modified().ok() {
                    if let Some(entry) = self.entries.get_mut(&settled.key) {
                        entry.last_seen = now;
                    }
                    continue;
                }
                self.settled.remove(&inode);
            }
            self.discover(path, &meta, inode, now, telemetry);
        }
        self.settled.retain(|inode, _| seen.contains(inode));
        self.close_finished(now);
        self.fingerprint_truncated();
        self.forget_old(now);
        self.scans += 1;
    }

    /// Whether an open plain file now holds other content than what was read from it.
    fn was_replaced(&mut self, key: u64, len: u64) -> bool {
        let mode = self.settings.fingerprint;
        let Some(entry) = self.entries.get_mut(&key) else {
            return false;
        };
        let Some(reader) = &entry.reader else {
            return false;
        };
        let Input::Plain(file) = &reader.input else {
            return false;
        };
        entry.size = len;
        if len < reader.fed() {
            return true;
        }
        // Truncated and rewritten past the old size between two looks.
        mode == FingerprintMode::Checksum
            && entry.fingerprint.is_some()
            && matches!(Fingerprint::of_file(mode, file), Ok(Some(now)) if Some(now) != entry.fingerprint)
    }

    /// The file under an open entry was truncated: its new content becomes a new entry,
    /// read from 0 through the same handle.
    fn truncated(&mut self, key: u64) {
        let mode = self.settings.fingerprint;
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        let Some(mut reader) = entry.reader.take() else {
            return;
        };
        tracing::info!(component_id = %self.id, file = %entry.path.display(),
            read_bytes = reader.fed(), "file was truncated (copy-truncate rotation); reading it again from the start");
        self.metrics.rotations.inc();
        let path = entry.path.clone();
        if mode == FingerprintMode::DeviceInode {
            // The new content has the same identity: the old entry only absorbs acks.
            entry.retired = true;
        }
        let Input::Plain(file) = &mut reader.input else {
            return;
        };
        if let Err(error) = file.seek(SeekFrom::Start(0)) {
            tracing::warn!(component_id = %self.id, file = %path.display(), %error,
                "cannot rewind a truncated file; reopening it on the next scan");
            self.close_reader(reader);
            return;
        }
        let fingerprint = match mode {
            FingerprintMode::DeviceInode => Fingerprint::of_file(mode, file).ok().flatten(),
            FingerprintMode::Checksum => None,
        };
        reader.framer = Framer::new(self.settings.framing, self.settings.max_line_bytes, 0);
        let inode = reader.inode;
        let mut fresh = Entry::new(path, fingerprint, Position::default());
        fresh.reader = Some(reader);
        let fresh_key = self.insert(fresh);
        self.open_by_inode.insert(inode, fresh_key);
    }

    /// Gives a fingerprint to truncated files that have grown enough.
    fn fingerprint_truncated(&mut self) {
        let waiting: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.fingerprint.is_none() && entry.reader.is_some())
            .map(|(&key, _)| key)
            .collect();
        for key in waiting {
            let Some(Reader {
                input: Input::Plain(file),
                ..
            }) = &self.entries[&key].reader
            else {
                continue;
            };
            if let Ok(Some(fingerprint)) = Fingerprint::of_file(self.settings.fingerprint, file) {
                if let Some(old) = self.by_fingerprint.insert(fingerprint, key) {
                    if let Some(old) = self.entries.get_mut(&old) {
                        old.retired = true;
                    }
                }
                if let Some(entry) = self.entries.get_mut(&key) {
                    entry.fingerprint = Some(fingerprint);
                }
                self.dirty = true;
            }
        }
    }

    /// A matched file that is not open: a new file, or a known one to resume.
    fn discover(
        &mut self,
        path: PathBuf,
        meta: &Metadata,
        inode: Inode,
        now: Instant,
        telemetry: &dyn Telemetry,
    ) {
        let mode = self.settings.fingerprint;
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(error) => {
                if error.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(component_id = %self.id, file = %path.display(), %error,
                        "cannot open file; retrying on the next scan");
                }
                return;
            }
        };
        let gzip = is_gzip(&path);
        let fingerprint = if gzip {
            Fingerprint::of_gzip(mode, &file)
        } else {
            Fingerprint::of_file(mode, &file)
        };
        let fingerprint = match fingerprint {
            Ok(Some(fingerprint)) => fingerprint,
            // Too short to recognise yet.
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(component_id = %self.id, file = %path.display(), %error,
                    "cannot read the start of a file; retrying on the next scan");
                return;
            }
        };
        let key = match self.by_fingerprint.get(&fingerprint) {
            Some(&key) => {
                if let Some(known) = self.other_file_with_fingerprint(key, &path, &file, inode) {
                    self.report_collision(&path, &known, telemetry);
                    return;
                }
                let entry = self.entries.get_mut(&key).expect("indexed entries exist");
                entry.last_seen = now;
                entry.unseen_since_start = false;
                if entry.reader.is_some() {
                    // A copy (or hard link) of a file being read: read only one of them.
                    entry.copy_seen_in_scan = Some(self.scans);
                    return;
                }
                if !gzip && meta.len() < entry.read.offset {
                    tracing::info!(component_id = %self.id, file = %path.display(),
                        checkpoint = entry.read.offset, size = meta.len(),
                        "file is shorter than its checkpoint (truncated while not followed); reading it from the start");
                    self.metrics.rotations.inc();
                    entry.retired = true;
                    self.by_fingerprint.remove(&fingerprint);
                    self.insert(Entry::new(
                        path.clone(),
                        Some(fingerprint),
                        Position::default(),
                    ))
                } else {
                    if entry.gzip != gzip || entry.path != path {
                        entry.path = path.clone();
                        entry.gzip = gzip;
                        self.dirty = true;
                    }
                    if gzip && gzip_fully_read(&file, meta.len(), entry.read.offset) {
                        self.settle(inode, meta, key);
                        return;
                    }
                    key
                }
            }
            None => {
                let start = if self.first_start
                    && self.scans == 0
                    && self.settings.read_from == ReadFrom::End
                    && !gzip
                {
                    Position {
                        offset: end_of_last_line(&file, meta.len()).unwrap_or(0),
                        line: 0,
                    }
                } else {
                    Position::default()
                };
                tracing::info!(component_id = %self.id, file = %path.display(),
                    offset = start.offset, "following a new file");
                self.insert(Entry::new(path.clone(), Some(fingerprint), start))
            }
        };
        self.open(key, file, inode, meta.len());
    }

    /// The path of entry `key`'s file when `file` (at `path`, with the same `checksum`
    /// fingerprint) is another file rather than a copy of it, a hard link to it, or the
    /// same file moved: their starts differ beyond the first line. The entry's start is
    /// read from its open handle; once closed, a digest of it taken then stands in for it;
    /// else (after a restart) it is read from the entry's last path while that holds its
    /// fingerprint. `None` when there is nothing to compare with (gone while auditflow was
    /// stopped): then `file` is taken for it, as the fingerprint says.
    fn other_file_with_fingerprint(
        &self,
        key: u64,
        path: &Path,
        file: &File,
        inode: Inode,
    ) -> Option<PathBuf> {
        if self.settings.fingerprint != FingerprintMode::Checksum {
            return None;
        }
        let entry = self.entries.get(&key)?;
        let known_start = match &entry.reader {
            Some(reader) if reader.inode == inode => return None,
            Some(reader) => match &reader.input {
                Input::Plain(known) => start_of(known, false),
                Input::Gzip(decoder) => start_of(decoder.get_ref(), true),
            },
            None => {
                if entry.path == path {
                    return None;
                }
                if let Some(closed) = entry.start {
                    // Its start as it was closed tells, whether it moved or not, unless
                    // `file` is shorter (then its last path may still tell).
                    let start = start_of(file, is_gzip(path)).ok()?;
                    if start.len() >= closed.len {
                        return closed.differs_from(&start).then(|| entry.path.clone());
                    }
                }
                // The entry's file, if it is still at its last path.
                let known = File::open(&entry.path).ok()?;
                let meta = known.metadata().ok()?;
                if (meta.dev(), meta.ino()) == inode {
                    return None;
                }
                start_of(&known, entry.gzip)
            }
        };
        let known_start = known_start.ok()?;
        let head = &known_start[..known_start.len().min(CHECKSUM_BYTES)];
        if Fingerprint::of_start(head) != entry.fingerprint {
            // Another file took the entry's path (a rotation), or the open one was
            // truncated and rewritten since the last look: nothing to compare with.
            return None;
        }
        let start = start_of(file, is_gzip(path)).ok()?;
        (!same_start(&known_start, &start)).then(|| entry.path.clone())
    }

    /// Warns and counts, once per path, that the file at `path` is not read because it
    /// shares its fingerprint with the file at `known`.
    fn report_collision(&mut self, path: &Path, known: &Path, telemetry: &dyn Telemetry) {
        if !self.collisions.insert(path.to_path_buf()) {
            return;
        }
        telemetry.errored("fingerprint_collision", 1);
        tracing::warn!(component_id = %self.id, file = %path.display(),
            same_first_line_as = %known.display(),
            "this file and another one share their first line, and with it their checksum fingerprint: this file is not read; set `fingerprint: device_inode` on source {}, or make the files' first lines differ",
            self.id);
    }

    /// Opens `file` for entry `key` at the entry's read position.
    fn open(&mut self, key: u64, mut file: File, inode: Inode, len: u64) {
        let max_line_bytes = self.settings.max_line_bytes;
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        let start = entry.read.offset;
        let input = if entry.gzip {
            let rewound = file.seek(SeekFrom::Start(0));
            let mut decoder = Box::new(MultiGzDecoder::new(file));
            #[cfg(test)]
            auditflow_testkit::stall::inside_blocking_section(|key| entry.path.starts_with(key));
            let skipped =
                rewound.and_then(|_| io::copy(&mut (&mut decoder).take(start), &mut io::sink()));
            match skipped {
                Ok(skipped) if skipped == start => Input::Gzip(decoder),
                // Shorter than the position, or still being written: look again later.
                _ => return,
            }
        } else {
            if let Err(error) = file.seek(SeekFrom::Start(start)) {
                tracing::warn!(component_id = %self.id, file = %entry.path.display(), %error,
                    "cannot seek to the checkpoint; retrying on the next scan");
                return;
            }
            Input::Plain(file)
        };
        if start > 0 {
            tracing::info!(component_id = %self.id, file = %entry.path.display(),
                offset = start, line = entry.read.line, "resuming file");
        }
        entry.reader = Some(Reader {
            inode,
            input,
            framer: Framer::new(self.settings.framing, max_line_bytes, start),
        });
        entry.size = len;
        entry.gone_since = None;
        entry.idle_since = None;
        self.open_by_inode.insert(inode, key);
        self.metrics.open_files.inc();
    }

    fn close_reader(&mut self, reader: Reader) {
        if self.open_by_inode.get(&reader.inode).is_some_and(|key| {
            self.entries
                .get(key)
                .is_none_or(|entry| entry.reader.is_none())
        }) {
            self.open_by_inode.remove(&reader.inode);
        }
        self.metrics.open_files.dec();
    }

    /// Closes entry `key`'s file. A file read to its end that the globs still match is
    /// remembered as settled, so that scans skip it until it changes.
    fn close(&mut self, key: u64, settle: bool) {
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        let Some(reader) = entry.reader.take() else {
            return;
        };
        let still_matched = settle && entry.gone_since.is_none();
        if self.settings.fingerprint == FingerprintMode::Checksum {
            let start = match &reader.input {
                Input::Plain(file) => start_of(file, false),
                Input::Gzip(decoder) => start_of(decoder.get_ref(), true),
            };
            entry.start = start.ok().map(|start| StartDigest::of(&start));
        }
        let meta = match &reader.input {
            Input::Plain(file) => file.metadata().ok(),
            Input::Gzip(decoder) => decoder.get_ref().metadata().ok(),
        };
        let inode = reader.inode;
        self.close_reader(reader);
        if let (true, Some(meta)) = (still_matched, meta) {
            self.settle(inode, &meta, key);
        }
    }

    fn settle(&mut self, inode: Inode, meta: &Metadata, key: u64) {
        self.settled.insert(
            inode,
            Settled {
                len: meta.len(),
                modified: meta.modified().ok(),
                key,
            },
        );
    }

    /// Closes files gone for `rotate_wait`, and files idle at their end for as long.
    fn close_finished(&mut self, now: Instant) {
        let wait = self.settings.rotate_wait;
        let mut closing = Vec::new();
        let mut lost = Vec::new();
        for (&key, entry) in &self.entries {
            let Some(reader) = &entry.reader else {
                continue;
            };
            if let Some(since) = entry.gone_since {
                if now.duration_since(since) >= wait {
                    // The size through the handle: the last scan may predate the last write.
                    let size = match &reader.input {
                        Input::Plain(file) => file.metadata().map_or(entry.size, |meta| meta.len()),
                        Input::Gzip(_) => entry.size,
                    };
                    let unread = size.saturating_sub(reader.framer.offset());
                    if unread > 0 && entry.copy_seen_in_scan == Some(self.scans) {
                        // A `.gz` (or a copy) of it is matched: the rest is read from there.
                        tracing::info!(component_id = %self.id, file = %entry.path.display(),
                            unread_bytes = unread,
                            "closing a renamed or deleted file after rotate_wait_secs; a matched copy of it (such as its .gz) supplies the rest");
                    } else if unread > 0 {
                        self.metrics.lost_bytes.inc_by(unread);
                        tracing::error!(component_id = %self.id, file = %entry.path.display(),
                            lost_bytes = unread, "closing a renamed or deleted file after rotate_wait_secs with bytes unread: they are lost (reading fell behind, or its last line had no newline); a disk buffer on the sinks, a longer rotate_wait_secs or more --audit-log-maxbackup keep them");
                        lost.push((key, reader.framer.offset()));
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
        for key in closing {
            self.close(key, true);
        }
    }

    /// After the first scan: files the checkpoint names that are gone, with bytes that
    /// were never acknowledged. They cannot be read any more: count and report them.
    fn account_missing_at_start(&mut self) {
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
    fn forget_old(&mut self, now: Instant) {
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

    /// Reads entry `key` until a batch is full or the file has nothing more for now.
    fn fill(&mut self, key: u64, telemetry: &dyn Telemetry) -> Option<Fill> {
        let entry = self.entries.get_mut(&key)?;
        let reader = entry.reader.as_mut()?;
        let mut fill = Fill {
            events: Vec::new(),
            end: entry.read,
            lines: 0,
            bytes: 0,
        };
        let mut after = AfterRead::Nothing;
        let mut read_any = false;
        'reading: loop {
            while let Some(frame) = reader.framer.next_frame() {
                take_frame(
                    &mut self.records,
                    (&mut entry.read, &entry.path),
                    &mut fill,
                    frame,
                    telemetry,
                );
                // Counting lines, not events, also bounds a run of malformed lines.
                if fill.lines >= MAX_BATCH_EVENTS || fill.bytes >= MAX_BATCH_BYTES {
                    break 'reading;
                }
            }
            match reader.read_chunk() {
                Ok(0) => {
                    match &reader.input {
                        Input::Plain(file) => {
                            if let Ok(meta) = file.metadata() {
                                entry.size = meta.len();
                                if meta.len() < reader.fed() {
                                    after = AfterRead::Truncated;
                                }
                            }
                        }
                        Input::Gzip(_) => {
                            // A compressed file is complete: its last line needs no newline.
                            while let Some(frame) = reader.framer.finish() {
                                take_frame(
                                    &mut self.records,
                                    (&mut entry.read, &entry.path),
                                    &mut fill,
                                    frame,
                                    telemetry,
                                );
                            }
                            entry.size = entry.read.offset;
                            after = AfterRead::Close;
                        }
                    }
                    break;
                }
                Ok(_) => read_any = true,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    if !(entry.gzip && error.kind() == io::ErrorKind::UnexpectedEof) {
                        tracing::warn!(component_id = %self.id, file = %entry.path.display(),
                            %error, "cannot read file; reopening it on the next scan");
                        telemetry.errored("io", 1);
                    }
                    // A gzip file still being written ends early: read it again later.
                    after = AfterRead::Reopen;
                    break;
                }
            }
        }
        if read_any || fill.lines > 0 {
            entry.idle_since = None;
        } else if entry.idle_since.is_none() {
            entry.idle_since = Some(Instant::now());
        }
        fill.end = entry.read;
        match after {
            AfterRead::Nothing => {}
            AfterRead::Truncated => self.truncated(key),
            AfterRead::Close => self.close(key, true),
            AfterRead::Reopen => self.close(key, false),
        }
        (fill.lines > 0).then_some(fill)
    }

    /// Records a batch that was sent; returns its sequence number.
    fn push_pending(&mut self, key: u64, end: Position, status: Option<BatchStatus>) -> u64 {
        let entry = self.entries.get_mut(&key).expect("reading entries exist");
        let seq = entry.next_seq;
        entry.next_seq += 1;
        entry.pending.push_back(Pending { seq, end, status });
        if status.is_some() {
            self.advance(key);
        }
        seq
    }

    fn acked(&mut self, done: Result<Ack, JoinError>) {
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

    fn write_checkpoint(&mut self, telemetry: &dyn Telemetry) {
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

    fn update_lag(&self) {
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
                    telemetry.received(fill.lines, fill.bytes);
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

fn is_gzip(path: &Path) -> bool {
    path.extension().is_some_and(|extension| extension == "gz")
}

/// Up to [`COMPARE_BYTES`] of a file's start, decompressed if `gzip`, read without moving
/// the handle's offset (it may be a reader's). A `.gz` still being written gives what it
/// holds so far.
fn start_of(file: &File, gzip: bool) -> io::Result<Vec<u8>> {
    let mut start = vec![0; COMPARE_BYTES];
    let mut filled = 0;
    let mut input: Box<dyn Read + '_> = if gzip {
        Box::new(MultiGzDecoder::new(ReadAt { file, offset: 0 }))
    } else {
        Box::new(ReadAt { file, offset: 0 })
    };
    while filled < COMPARE_BYTES {
        match input.read(&mut start[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if gzip && error.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(error) => return Err(error),
        }
    }
    start.truncate(filled);
    Ok(start)
}

/// Whether two files' starts agree as far as both go: one can be a copy of the other
/// (a copy still being written is shorter).
fn same_start(a: &[u8], b: &[u8]) -> bool {
    let both = a.len().min(b.len());
    a[..both] == b[..both]
}

/// Reads a file from its own offset, leaving the handle's offset alone.
struct ReadAt<'a> {
    file: &'a File,
    offset: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let read = self.file.read_at(buffer, self.offset)?;
        self.offset += read as u64;
        Ok(read)
    }
}

/// The directory to list for a pattern, and how many levels below it to look.
fn walk_root(pattern: &Path) -> (PathBuf, usize) {
    let components: Vec<Component> = pattern.components().collect();
    let is_glob = |component: &Component| {
        component
            .as_os_str()
            .to_string_lossy()
            .contains(['*', '?', '[', '{'])
    };
    let literal = components
        .iter()
        .take(components.len().saturating_sub(1))
        .take_while(|component| !is_glob(component))
        .count();
    let base: PathBuf = components[..literal].iter().collect();
    let rest = &components[literal..];
    let depth = if rest.iter().any(|c| c.as_os_str() == "**") {
        MAX_DEPTH
    } else {
        rest.len()
    };
    (base, depth.max(1))
}

/// Where the last complete line of a file ends (0 if it has none).
fn end_of_last_line(file: &File, len: u64) -> io::Result<u64> {
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let window = &mut chunk[..(end - start) as usize];
        file.read_exact_at(window, start)?;
        if let Some(newline) = window.iter().rposition(|&byte| byte == b'\n') {
            return Ok(start + newline as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Whether a gzip file's decompressed size (its trailer, modulo 2^32) says it holds no
/// more than `read` bytes: then it need not be decompressed to know it was read.
fn gzip_fully_read(file: &File, len: u64, read: u64) -> bool {
    let mut trailer = [0u8; 4];
    len >= 18
        && file.read_exact_at(&mut trailer, len - 4).is_ok()
        && u64::from(u32::from_le_bytes(trailer)) == read % (1 << 32)
        && read > 0
}
