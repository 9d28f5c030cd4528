//! What each scan makes of the files the globs match. A new file becomes an entry; a
//! known fingerprint at another path is a rename (or a `.gz` or copy of a file being
//! read); a file shorter than what was read from it is a copy-truncate; an open file no
//! longer matched is drained for `rotate_wait` (closed by [`super::closing`]). Under
//! `checksum`, a file that only shares its first line with a known one is told apart.

use std::collections::HashSet;
use std::fs::{File, Metadata};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use auditflow_core::framing::Framer;
use auditflow_core::Telemetry;
use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::reading::{is_gzip, Input, Reader};
use super::{Entry, Inode, Position, Tailer};
use crate::fingerprint::{Fingerprint, CHECKSUM_BYTES};
use crate::{FingerprintMode, ReadFrom};

/// Bytes compared at most to tell a copy of a known file from another file that only
/// shares its fingerprint (its first line).
const COMPARE_BYTES: usize = 4096;

/// A digest of a file's first bytes, up to [`COMPARE_BYTES`].
#[derive(Debug, Clone, Copy)]
pub(super) struct StartDigest {
    len: usize,
    sum: [u8; 32],
}

impl StartDigest {
    pub(super) fn of(start: &[u8]) -> StartDigest {
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
pub(super) struct Settled {
    len: u64,
    modified: Option<SystemTime>,
    pub(super) key: u64,
}

impl Tailer {
    /// Looks for new, renamed, truncated and deleted files.
    pub(super) fn scan(&mut self, telemetry: &dyn Telemetry) {
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
    pub(super) fn truncated(&mut self, key: u64) {
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

    pub(super) fn settle(&mut self, inode: Inode, meta: &Metadata, key: u64) {
        self.settled.insert(
            inode,
            Settled {
                len: meta.len(),
                modified: meta.modified().ok(),
                key,
            },
        );
    }
}

/// Up to [`COMPARE_BYTES`] of a file's start, decompressed if `gzip`, read without moving
/// the handle's offset (it may be a reader's). A `.gz` still being written gives what it
/// holds so far.
pub(super) fn start_of(file: &File, gzip: bool) -> io::Result<Vec<u8>> {
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
