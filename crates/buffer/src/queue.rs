//! The on-disk queue: numbered segment files, a ledger, and in-memory bookkeeping of
//! what was read and what was released.
//!
//! - A [`Writer`] appends whole framed records to the newest segment and rolls to a new
//!   one past the segment size; [`Writer::sync`] makes what was appended durable and
//!   readable.
//! - A [`Reader`] reads durable records in order, a span at a time, skipping (and
//!   reporting) damaged ones.
//! - [`Queue::release`] marks a span delivered. The *frontier* is the start of the
//!   oldest span not yet released (or the read position when none is out); segments
//!   wholly before it are deleted and the frontier is written to the ledger, where a
//!   restart resumes.
//!
//! Every call here blocks on the disk: the async side calls them from blocking threads.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::frame::{self, Scan, HEADER_BYTES};

const LEDGER: &str = "ledger";
const LEDGER_BYTES: usize = 20;
/// Reads are at least this large, so that small records cost one read per batch.
const READ_CHUNK_BYTES: usize = 1024 * 1024;

/// Sizes of one queue.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The most bytes the segment files may hold together.
    pub max_bytes: u64,
    /// A segment is closed and a new one started once it holds this many bytes.
    pub segment_bytes: u64,
}

impl Options {
    /// Eight segments per buffer, each between 1 MiB and 64 MiB: a segment is deleted
    /// only whole, so smaller segments return space sooner.
    pub fn with_max_bytes(max_bytes: u64) -> Options {
        Options {
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(1 << 20, 64 << 20),
        }
    }
}

/// A position in the queue: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    /// The segment's number, which names its file (`<dir>/<number, 20 digits>.seg`).
    pub segment: u64,
    /// The byte offset in that segment file.
    pub offset: u64,
}

/// Identifies a span handed out by [`Reader::read`], for [`Queue::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanId(u64);

/// One record read back.
#[derive(Debug, Clone)]
pub struct Record {
    /// The record's payload as written (one event as compact JSON, for a sink's buffer).
    pub payload: Bytes,
    /// When the record was written, in milliseconds since the Unix epoch.
    pub written_at_ms: u64,
}

/// A damaged record that was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The segment file holding it.
    pub file: PathBuf,
    /// The byte offset in that file where the damaged record starts.
    pub offset: u64,
}

/// What one read found.
#[derive(Debug)]
pub enum Read {
    /// Records (possibly none, when the span held only damage) to deliver, then release.
    Span {
        /// The span to pass to [`Queue::release`] once its records are delivered.
        id: SpanId,
        /// The intact records, in the order they were written.
        records: Vec<Record>,
        /// The damaged records skipped in this span, counted in its release too.
        damaged: Vec<Damage>,
    },
    /// Nothing durable is left to read. `finished`: the writer is closed, so nothing more
    /// will come.
    Empty {
        /// Whether the writer is closed, so that nothing more will come.
        finished: bool,
    },
}

/// What a release freed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// Records (intact and damaged) in the released span.
    pub records: u64,
}

/// Gauges of the queue's contents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes of records not yet released.
    pub unreleased_bytes: u64,
    /// Records not yet released.
    pub unreleased_records: u64,
    /// When the oldest record handed out and not yet released was written.
    pub oldest_written_at_ms: Option<u64>,
}

#[derive(Debug)]
struct Segment {
    /// Bytes appended (for the segment being written, possibly not yet durable).
    bytes: u64,
}

#[derive(Debug)]
struct Span {
    id: u64,
    start: Position,
    records: u64,
    oldest_written_at_ms: Option<u64>,
    released: bool,
}

#[derive(Debug)]
struct State {
    segments: BTreeMap<u64, Segment>,
    write_segment: u64,
    /// Readable up to here in the segment being written.
    durable: Position,
    writer_closed: bool,
    read: Position,
    spans: VecDeque<Span>,
    next_span: u64,
    frontier: Position,
    unreleased_records: u64,
    ledger: File,
}

impl State {
    /// How far the reader may read in `segment`.
    fn limit(&self, segment: u64) -> u64 {
        if segment != self.write_segment {
            self.segments.get(&segment).map_or(0, |s| s.bytes)
        } else if self.durable.segment == segment {
            self.durable.offset
        } else {
            0
        }
    }

    fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.bytes).sum()
    }

    fn unreleased_bytes(&self) -> u64 {
        self.segments
            .range(self.frontier.segment..)
            .map(|(_, s)| s.bytes)
            .sum::<u64>()
            .saturating_sub(self.frontier.offset)
    }

    /// Moves the frontier over released spans; returns the segments now wholly behind it.
    fn advance_frontier(&mut self) -> Vec<u64> {
        while self.spans.front().is_some_and(|span| span.released) {
            self.spans.pop_front();
        }
        let mut frontier = self.spans.front().map_or(self.read, |span| span.start);
        // The end of a closed segment is the start of the next one.
        while frontier.segment != self.write_segment
            && frontier.offset >= self.segments.get(&frontier.segment).map_or(0, |s| s.bytes)
        {
            let Some((&next, _)) = self.segments.range(frontier.segment + 1..).next() else {
                break;
            };
            frontier = Position {
                segment: next,
                offset: 0,
            };
        }
        self.frontier = frontier;
        let behind: Vec<u64> = self
            .segments
            .range(..frontier.segment)
            .map(|(&id, _)| id)
            .collect();
        for id in &behind {
            self.segments.remove(id);
        }
        behind
    }
}

struct Shared {
    dir: PathBuf,
    options: Options,
    state: Mutex<State>,
    /// Signalled when records became durable (or the writer closed).
    durable: Notify,
    /// Signalled when a release freed space.
    space: Notify,
}

/// A handle on the queue: releases, stats, and the signals the async side waits on.
#[derive(Clone)]
pub struct Queue {
    shared: Arc<Shared>,
}

/// What [`open`] found on disk.
#[derive(Debug, Clone, Copy, Default)]
pub struct Recovered {
    /// Records left from a previous run, to be replayed.
    pub records: u64,
    /// The bytes of segment files from the ledger's position on, record headers included.
    pub bytes: u64,
}

/// Opens (creating if needed) the queue in `dir`: earlier segments from the ledger's
/// position on are kept for replay, and writing starts in a new segment, so that bytes
/// a crash left half-written are never appended to.
pub fn open(dir: &Path, options: Options) -> io::Result<(Queue, Writer, Reader, Recovered)> {
    std::fs::create_dir_all(dir)?;
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name
            .strip_suffix(".seg")
            .and_then(|id| id.parse::<u64>().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    let ledger = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LEDGER))?;
    let mut frontier = read_ledger(&ledger, dir)?;
    let mut segments = BTreeMap::new();
    for id in ids {
        if id < frontier.segment {
            remove_segment(dir, id);
            continue;
        }
        let bytes = std::fs::metadata(segment_path(dir, id))?.len();
        segments.insert(id, Segment { bytes });
    }
    match segments.iter().next() {
        Some((&first, segment)) if first == frontier.segment => {
            frontier.offset = frontier.offset.min(segment.bytes);
        }
        Some((&first, _)) => {
            frontier = Position {
                segment: first,
                offset: 0,
            }
        }
        None => frontier.offset = 0,
    }
    let mut recovered = Recovered::default();
    for (&id, segment) in &segments {
        let from = if id == frontier.segment {
            frontier.offset
        } else {
            0
        };
        recovered.records += count_records(&segment_path(dir, id), from, segment.bytes)?;
        recovered.bytes += segment.bytes - from;
    }
    let write_segment = segments
        .keys()
        .next_back()
        .map_or(frontier.segment, |last| last + 1)
        .max(frontier.segment)
        .max(1);
    let file = create_segment(dir, write_segment)?;
    segments.insert(write_segment, Segment { bytes: 0 });
    let state = State {
        segments,
        write_segment,
        durable: Position {
            segment: write_segment,
            offset: 0,
        },
        writer_closed: false,
        read: frontier,
        spans: VecDeque::new(),
        next_span: 0,
        frontier,
        unreleased_records: recovered.records,
        ledger,
    };
    let shared = Arc::new(Shared {
        dir: dir.to_owned(),
        options,
        state: Mutex::new(state),
        durable: Notify::new(),
        space: Notify::new(),
    });
    let writer = Writer {
        shared: Arc::clone(&shared),
        file,
        segment: write_segment,
        len: 0,
    };
    let reader = Reader {
        shared: Arc::clone(&shared),
        file: None,
    };
    Ok((Queue { shared }, writer, reader, recovered))
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

fn create_segment(dir: &Path, id: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(segment_path(dir, id))?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

fn remove_segment(dir: &Path, id: u64) {
    let path = segment_path(dir, id);
    if let Err(error) = std::fs::remove_file(&path) {
        if error.kind() != io::ErrorKind::NotFound {
            tracing::warn!(file = %path.display(), error = %error, "cannot delete a released buffer segment; delete it by hand");
        }
    }
}

fn read_ledger(ledger: &File, dir: &Path) -> io::Result<Position> {
    let mut bytes = [0u8; LEDGER_BYTES];
    let len = ledger.metadata()?.len();
    if len == 0 {
        return Ok(Position::default());
    }
    if len < LEDGER_BYTES as u64 || ledger.read_exact_at(&mut bytes, 0).is_err() {
        tracing::warn!(file = %dir.join(LEDGER).display(), "buffer ledger is cut short; replaying every segment (expect duplicates)");
        return Ok(Position::default());
    }
    let crc = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[..16]) != crc {
        tracing::warn!(file = %dir.join(LEDGER).display(), "buffer ledger is damaged; replaying every segment (expect duplicates)");
        return Ok(Position::default());
    }
    Ok(Position {
        segment: u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes")),
        offset: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
    })
}

fn write_ledger(ledger: &File, position: Position) -> io::Result<()> {
    let mut bytes = [0u8; LEDGER_BYTES];
    bytes[0..8].copy_from_slice(&position.segment.to_le_bytes());
    bytes[8..16].copy_from_slice(&position.offset.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..16]);
    bytes[16..20].copy_from_slice(&crc.to_le_bytes());
    ledger.write_all_at(&bytes, 0)
}

/// Counts the records between `from` and `to` by their headers alone (a damaged or cut
/// record counts as one, and ends the count for that segment).
fn count_records(path: &Path, from: u64, to: u64) -> io::Result<u64> {
    let file = File::open(path)?;
    let mut header = [0u8; HEADER_BYTES];
    let (mut at, mut records) = (from, 0);
    while at < to {
        records += 1;
        if to - at < HEADER_BYTES as u64 || file.read_exact_at(&mut header, at).is_err() {
            break;
        }
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as u64;
        at += HEADER_BYTES as u64 + len;
    }
    Ok(records)
}

impl Queue {
    /// The directory the queue was opened in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The sizes the queue was opened with.
    pub fn options(&self) -> Options {
        self.shared.options
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    /// Marks a span delivered: moves the frontier, deletes the segments wholly behind it,
    /// and writes the frontier to the ledger. Blocks on the disk.
    pub fn release(&self, span: SpanId) -> io::Result<Released> {
        let mut state = self.state();
        let Some(found) = state.spans.iter_mut().find(|s| s.id == span.0) else {
            return Ok(Released::default());
        };
        found.released = true;
        let records = found.records;
        state.unreleased_records = state.unreleased_records.saturating_sub(records);
        let before = state.frontier;
        let behind = state.advance_frontier();
        for id in behind {
            remove_segment(&self.shared.dir, id);
        }
        if state.frontier != before {
            write_ledger(&state.ledger, state.frontier)?;
            self.shared.space.notify_one();
        }
        Ok(Released { records })
    }

    /// The queue's contents now, for the buffer's gauges; does not touch the disk.
    pub fn stats(&self) -> Stats {
        let state = self.state();
        Stats {
            unreleased_bytes: state.unreleased_bytes(),
            unreleased_records: state.unreleased_records,
            oldest_written_at_ms: state
                .spans
                .iter()
                .find(|s| !s.released)
                .and_then(|s| s.oldest_written_at_ms),
        }
    }

    /// Whether `bytes` more fit within `max_bytes`. An empty queue always takes a write,
    /// so that one record larger than the whole buffer cannot stop it for good.
    pub fn has_room(&self, bytes: u64) -> bool {
        let state = self.state();
        state.disk_bytes().saturating_add(bytes) <= self.shared.options.max_bytes
            || state.unreleased_bytes() == 0
    }

    /// Resolves after the next release that moved the frontier (or at once if one happened
    /// since the last wait).
    pub async fn space_freed(&self) {
        self.shared.space.notified().await
    }

    /// Resolves after the next [`Writer::sync`] or [`Writer::close`].
    pub async fn durable_grew(&self) {
        self.shared.durable.notified().await
    }

    /// Makes the ledger durable (at shutdown; during a run it is written without fsync,
    /// which a crash of the process does not lose).
    pub fn sync_ledger(&self) -> io::Result<()> {
        self.state().ledger.sync_data()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves plain counters behind: keep going.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Appends to the newest segment. One per queue.
pub struct Writer {
    shared: Arc<Shared>,
    file: File,
    segment: u64,
    len: u64,
}

impl Writer {
    /// Appends whole framed records (`frames` holds `records` of them). Rolls to a new
    /// segment first when they would not fit in this one. A failed write (a full disk) is
    /// cut back off, so that the segment holds only whole records, and returned.
    pub fn append(&mut self, frames: &[u8], records: u64) -> io::Result<()> {
        if self.len > 0 && self.len + frames.len() as u64 > self.shared.options.segment_bytes {
            self.roll()?;
        }
        if let Err(error) = self.file.write_all(frames) {
            // Best effort: if even this fails, the next open starts a new segment and the
            // reader skips the cut record as damaged.
            let _ = self.file.set_len(self.len);
            return Err(error);
        }
        self.len += frames.len() as u64;
        let mut state = lock(&self.shared.state);
        if let Some(segment) = state.segments.get_mut(&self.segment) {
            segment.bytes = self.len;
        }
        state.unreleased_records += records;
        Ok(())
    }

    /// Makes everything appended durable (fsync) and readable.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        let mut state = lock(&self.shared.state);
        state.durable = Position {
            segment: self.segment,
            offset: self.len,
        };
        drop(state);
        self.shared.durable.notify_one();
        Ok(())
    }

    /// When the buffer is full but everything in the segment being written was released,
    /// starts a new segment so that this one can be deleted.
    pub fn roll_if_released(&mut self) -> io::Result<()> {
        let released = {
            let state = lock(&self.shared.state);
            self.len > 0
                && state.frontier
                    == Position {
                        segment: self.segment,
                        offset: self.len,
                    }
        };
        if released {
            self.roll()?;
            let mut state = lock(&self.shared.state);
            for id in state.advance_frontier() {
                remove_segment(&self.shared.dir, id);
            }
            write_ledger(&state.ledger, state.frontier)?;
        }
        Ok(())
    }

    fn roll(&mut self) -> io::Result<()> {
        self.sync()?;
        let next = self.segment + 1;
        let file = create_segment(&self.shared.dir, next)?;
        let mut state = lock(&self.shared.state);
        state.segments.insert(next, Segment { bytes: 0 });
        state.write_segment = next;
        state.durable = Position {
            segment: next,
            offset: 0,
        };
        drop(state);
        self.file = file;
        self.segment = next;
        self.len = 0;
        Ok(())
    }

    /// No more appends: the reader reports `finished` once it has read everything.
    pub fn close(self) {
        lock(&self.shared.state).writer_closed = true;
        self.shared.durable.notify_one();
    }
}

/// Reads durable records in order. One per queue.
pub struct Reader {
    shared: Arc<Shared>,
    file: Option<(u64, File)>,
}

impl Reader {
    /// Reads the next span: up to `max_records` records or about `max_bytes` bytes, never
    /// across segments. Damaged records are skipped and listed; a span ends after one.
    pub fn read(&mut self, max_records: usize, max_bytes: usize) -> io::Result<Read> {
        let (position, limit) = loop {
            let mut state = lock(&self.shared.state);
            let position = state.read;
            let limit = state.limit(position.segment);
            if position.offset < limit {
                break (position, limit);
            }
            let next = state
                .segments
                .range(position.segment + 1..)
                .next()
                .map(|(&id, _)| id);
            match next {
                Some(next) if position.segment != state.write_segment => {
                    // Let go of the finished segment, so that deleting it frees its space.
                    self.file = None;
                    state.read = Position {
                        segment: next,
                        offset: 0,
                    };
                }
                _ => {
                    let finished = state.writer_closed && position.segment == state.write_segment;
                    return Ok(Read::Empty { finished });
                }
            }
        };
        let path = segment_path(&self.shared.dir, position.segment);
        if self
            .file
            .as_ref()
            .is_none_or(|(id, _)| *id != position.segment)
        {
            self.file = Some((position.segment, File::open(&path)?));
        }
        let file = &self.file.as_ref().expect("opened above").1;
        let available = limit - position.offset;
        let mut want = available.min(max_bytes.max(READ_CHUNK_BYTES) as u64);
        let (buf, mut at, records, damaged) = 'read: loop {
            let mut buf = vec![0u8; want as usize];
            file.read_exact_at(&mut buf, position.offset)?;
            let at_end = want == available;
            let (mut at, mut records, mut damaged, mut bytes) =
                (0usize, Vec::new(), Vec::new(), 0usize);
            while at < buf.len() && records.len() < max_records && bytes < max_bytes {
                match frame::next(&buf, at, at_end) {
                    Scan::Record(found) => {
                        records.push(found);
                        bytes += found.payload.1 - found.payload.0;
                        at = found.payload.1;
                    }
                    Scan::Incomplete if records.is_empty() => {
                        // One record larger than the chunk: read exactly it.
                        let len = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
                        want = (HEADER_BYTES as u64 + u64::from(len)).min(available);
                        continue 'read;
                    }
                    Scan::Incomplete => break,
                    Scan::Damaged => {
                        damaged.push(Damage {
                            file: path.clone(),
                            offset: position.offset + at as u64,
                        });
                        break;
                    }
                }
            }
            break (buf, at, records, damaged);
        };
        if !damaged.is_empty() {
            // Look for the next intact record in the rest of the segment.
            let from = position.offset + at as u64;
            let mut rest = vec![0u8; (limit - from) as usize];
            file.read_exact_at(&mut rest, from)?;
            at += frame::resync(&rest, 0).unwrap_or(rest.len());
        }
        let end = Position {
            segment: position.segment,
            offset: position.offset + at as u64,
        };
        let buf = Bytes::from(buf);
        let records: Vec<Record> = records
            .iter()
            .map(|found| Record {
                payload: buf.slice(found.payload.0..found.payload.1),
                written_at_ms: found.written_at_ms,
            })
            .collect();
        let mut state = lock(&self.shared.state);
        let id = state.next_span;
        state.next_span += 1;
        state.spans.push_back(Span {
            id,
            start: position,
            records: (records.len() + damaged.len()) as u64,
            oldest_written_at_ms: records.first().map(|r| r.written_at_ms),
            released: false,
        });
        state.read = end;
        Ok(Read::Span {
            id: SpanId(id),
            records,
            damaged,
        })
    }
}
