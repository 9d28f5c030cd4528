//! Reading files: opening one at its entry's read position (a `.gz` is decompressed up
//! to it), reading it in chunks of at most [`READ_CHUNK`] bytes into a [`Framer`], and
//! turning its frames into a batch's worth of events with the shared
//! [`RecordDecoder`], the same one `stdin` uses; then closing it.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use auditflow_core::batch::{MAX_BATCH_BYTES, MAX_BATCH_EVENTS};
use auditflow_core::framing::{Frame, Framer};
use auditflow_core::records::RecordDecoder;
use auditflow_core::{Event, Location, Telemetry};
use flate2::read::MultiGzDecoder;
use tokio::time::Instant;

use super::discovery::{start_of, StartDigest};
use super::{Entry, Inode, Position, Tailer};
use crate::FingerprintMode;

/// Bytes read from a file at once.
pub(super) const READ_CHUNK: usize = 256 * 1024;

pub(super) enum Input {
    Plain(File),
    Gzip(Box<MultiGzDecoder<File>>),
}

/// An open file.
pub(super) struct Reader {
    pub(super) inode: Inode,
    pub(super) input: Input,
    pub(super) framer: Framer,
}

impl Reader {
    /// Bytes taken from the file so far (framed or held as a partial line).
    pub(super) fn fed(&self) -> u64 {
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

/// What one read of a file produced.
pub(super) struct Fill {
    pub(super) events: Vec<Event>,
    pub(super) end: Position,
    /// Lines and JSON values taken, blank ones included: what bounds a batch.
    pub(super) lines: usize,
    /// Records that were meant to be events (events plus refused records; not blank
    /// lines nor NUL padding), counted as received as `stdin` counts them.
    pub(super) records: usize,
    pub(super) bytes: usize,
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

/// Where one file's frames go during one [`Tailer::fill`]: its read position moves past
/// each, and `records` turns each into events in `fill` (or counts it as refused).
struct Framed<'a> {
    records: &'a mut RecordDecoder,
    read: &'a mut Position,
    path: &'a Path,
    fill: Fill,
    telemetry: &'a dyn Telemetry,
}

impl Framed<'_> {
    fn take(&mut self, frame: Frame) {
        let end = match &frame {
            Frame::Line { end, .. } | Frame::Oversized { end, .. } | Frame::Padding { end, .. } => {
                *end
            }
        };
        if !matches!(frame, Frame::Padding { .. }) {
            self.read.line += 1;
            self.fill.lines += 1;
        }
        self.fill.bytes += (end - self.read.offset) as usize;
        let start = std::mem::replace(&mut self.read.offset, end);
        let line = self.read.line;
        let path = self.path;
        let read = self
            .records
            .decode(frame, self.telemetry, &mut self.fill.events, || {
                Location::File {
                    file: path.display().to_string(),
                    line,
                    offset: start,
                }
            });
        self.fill.records += read.records;
    }

    /// Whether the batch is full. Counting lines, not events, also bounds a run of
    /// malformed lines.
    fn is_full(&self) -> bool {
        self.fill.lines >= MAX_BATCH_EVENTS || self.fill.bytes >= MAX_BATCH_BYTES
    }
}

impl Reader {
    /// Frames what is buffered and reads on, until the batch is full or the file has
    /// nothing more for now. Returns what to do with the file, and whether any byte was
    /// read.
    fn read_into(&mut self, framed: &mut Framed, size: &mut u64, id: &str) -> (AfterRead, bool) {
        let mut read_any = false;
        let after = loop {
            if self.frame_buffered(framed) {
                break AfterRead::Nothing;
            }
            match self.read_chunk() {
                Ok(0) => break self.at_end(framed, size),
                Ok(_) => read_any = true,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => break self.read_failed(&error, framed, id),
            }
        };
        (after, read_any)
    }

    /// Hands every complete frame buffered to `framed`; whether the batch is full.
    fn frame_buffered(&mut self, framed: &mut Framed) -> bool {
        while let Some(frame) = self.framer.next_frame() {
            framed.take(frame);
            if framed.is_full() {
                return true;
            }
        }
        false
    }

    /// At the end of what the file holds for now. A plain file may grow again, or may
    /// have been truncated under its handle; a compressed file is complete: its last line
    /// needs no newline, and it is closed.
    fn at_end(&mut self, framed: &mut Framed, size: &mut u64) -> AfterRead {
        match &self.input {
            Input::Plain(file) => {
                if let Ok(meta) = file.metadata() {
                    *size = meta.len();
                    if meta.len() < self.fed() {
                        return AfterRead::Truncated;
                    }
                }
                AfterRead::Nothing
            }
            Input::Gzip(_) => {
                while let Some(frame) = self.framer.finish() {
                    framed.take(frame);
                }
                *size = framed.read.offset;
                AfterRead::Close
            }
        }
    }

    /// A read failed: the file is reopened on the next scan. A gzip file still being
    /// written ends early, which is no error: it is read again later.
    fn read_failed(&self, error: &io::Error, framed: &Framed, id: &str) -> AfterRead {
        let gzip = matches!(self.input, Input::Gzip(_));
        if !(gzip && error.kind() == io::ErrorKind::UnexpectedEof) {
            tracing::warn!(component_id = %id, file = %framed.path.display(),
                %error, "cannot read file; reopening it on the next scan");
            framed.telemetry.errored("io", 1);
        }
        AfterRead::Reopen
    }
}

impl Tailer {
    /// Opens `file` for entry `key` at the entry's read position.
    pub(super) fn open(&mut self, key: u64, mut file: File, inode: Inode, len: u64) {
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

    pub(super) fn close_reader(&mut self, reader: Reader) {
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
    pub(super) fn close(&mut self, key: u64, settle: bool) {
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

    /// Reads entry `key` until a batch is full or the file has nothing more for now.
    pub(super) fn fill(&mut self, key: u64, telemetry: &dyn Telemetry) -> Option<Fill> {
        let entry = self.entries.get_mut(&key)?;
        let reader = entry.reader.as_mut()?;
        let mut framed = Framed {
            records: &mut self.records,
            read: &mut entry.read,
            path: &entry.path,
            fill: Fill {
                events: Vec::new(),
                end: Position::default(),
                lines: 0,
                records: 0,
                bytes: 0,
            },
            telemetry,
        };
        let (after, read_any) = reader.read_into(&mut framed, &mut entry.size, &self.id);
        let mut fill = framed.fill;
        fill.end = entry.read;
        entry.note_progress(read_any || fill.lines > 0);
        self.after_read(key, after);
        (fill.lines > 0).then_some(fill)
    }

    fn after_read(&mut self, key: u64, after: AfterRead) {
        match after {
            AfterRead::Nothing => {}
            AfterRead::Truncated => self.truncated(key),
            AfterRead::Close => self.close(key, true),
            AfterRead::Reopen => self.close(key, false),
        }
    }
}

impl Entry {
    /// Starts or ends the idle time that closes a file after `rotate_wait`.
    fn note_progress(&mut self, progressed: bool) {
        if progressed {
            self.idle_since = None;
        } else if self.idle_since.is_none() {
            self.idle_since = Some(Instant::now());
        }
    }
}

pub(super) fn is_gzip(path: &Path) -> bool {
    path.extension().is_some_and(|extension| extension == "gz")
}
