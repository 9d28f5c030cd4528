//! Reading audit events from files and standard input, in chunks, on every core.
//!
//! Reader threads (one per core at most, each with every n-th input) open the inputs,
//! undo gzip (recognised by its magic bytes, whatever the file is called), and cut the
//! stream into chunks of whole lines.
//! The calling thread takes chunks in waves and hands each wave to rayon: every chunk
//! is split into lines and decoded in parallel, folded into a partial result, and the
//! partials are merged back on the calling thread in input order. At most a few waves of
//! chunks are in memory at once, whatever the size of the input.
//!
//! An input whose first bytes hold `"EventList"` (a webhook body saved to a file) or that
//! starts with `[` is read whole and decoded with [`auditflow_core::decode`].

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use auditflow_core::decode::{self, Shape};
use auditflow_core::Event;
use bytes::{Bytes, BytesMut};
use flate2::read::MultiGzDecoder;
use rayon::prelude::*;

/// Where events come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Standard input (`-`, or no file at all).
    Stdin,
    File(PathBuf),
}

impl Input {
    /// How the input is named in messages.
    pub fn name(&self) -> String {
        match self {
            Input::Stdin => "<stdin>".to_owned(),
            Input::File(path) => path.display().to_string(),
        }
    }
}

/// An input that cannot be read at all.
#[derive(Debug, thiserror::Error)]
#[error("{input}: {error}")]
pub struct InputError {
    pub input: String,
    pub error: io::Error,
}

/// How inputs are read.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Bytes per chunk handed to one core (a line longer than this makes its chunk larger).
    pub chunk_bytes: usize,
}

impl Default for ReadOptions {
    fn default() -> ReadOptions {
        ReadOptions {
            chunk_bytes: 4 << 20,
        }
    }
}

/// What a scan read, for the summary at the end and the progress bar on the way.
#[derive(Debug, Clone, Default)]
pub struct ScanStats {
    /// Bytes read from the inputs (compressed bytes for `.gz`).
    pub bytes_read: u64,
    /// Events decoded.
    pub events: u64,
    /// Lines or items that were not events.
    pub malformed: u64,
    /// Where the first few malformed lines were, and why (`audit.log line 7: ...`).
    pub malformed_examples: Vec<String>,
    /// Inputs that failed part-way (a truncated `.gz`), with why.
    pub read_errors: Vec<String>,
}

/// How many malformed lines are named in [`ScanStats::malformed_examples`].
const MALFORMED_EXAMPLES: usize = 5;

/// Orders inputs so that a rotated set reads oldest first: kube-apiserver's backups
/// (`audit-2006-01-02T15-04-05.000.log`, optionally `.gz`) by their time, logrotate's
/// (`audit.log.2.gz`, `audit.log.1`) by falling number, then the live file (`audit.log`).
/// Files of different sets keep the order in which their sets first appear.
pub fn order_rotated(inputs: Vec<Input>) -> Vec<Input> {
    let mut keyed: Vec<(usize, RotationKey, Input)> = Vec::with_capacity(inputs.len());
    let mut sets: Vec<String> = Vec::new();
    for input in inputs {
        let (set, key) = match &input {
            Input::Stdin => ("-".to_owned(), RotationKey::Live),
            Input::File(path) => rotation_key(path),
        };
        let set_index = match sets.iter().position(|s| *s == set) {
            Some(index) => index,
            None => {
                sets.push(set);
                sets.len() - 1
            }
        };
        keyed.push((set_index, key, input));
    }
    keyed.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    keyed.into_iter().map(|(_, _, input)| input).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum RotationKey {
    /// A lumberjack backup: its UTC time as written in the name (sorts as text).
    Timed(String),
    /// A logrotate backup: `Reverse` of its number, so higher (older) comes first.
    Numbered(std::cmp::Reverse<u64>),
    Live,
}

/// The set a file belongs to (its directory and live name) and its place in the set.
fn rotation_key(path: &Path) -> (String, RotationKey) {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = name.strip_suffix(".gz").unwrap_or(&name);
    let set = |live: &str| format!("{}/{live}", dir.display());
    // logrotate: `audit.log.3`
    if let Some((live, number)) = base.rsplit_once('.') {
        if let Ok(number) = number.parse::<u64>() {
            return (set(live), RotationKey::Numbered(std::cmp::Reverse(number)));
        }
    }
    // lumberjack: `audit-2006-01-02T15-04-05.000.log`
    if let Some((stem, ext)) = base.split_once('.').map(|(s, _)| (s, &base[s.len()..])) {
        const STAMP: usize = "-2006-01-02T15-04-05".len();
        if stem.len() > STAMP && stem.is_char_boundary(stem.len() - STAMP) {
            let (prefix, stamp) = stem.split_at(stem.len() - STAMP);
            let ext = ext.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
            let is_stamp = stamp.len() == STAMP
                && stamp.as_bytes()[0] == b'-'
                && stamp.as_bytes()[11] == b'T'
                && stamp[1..]
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b'-' || b == b'T');
            if is_stamp {
                let millis = &base[stem.len()..base.len() - ext.len()];
                return (
                    set(&format!("{prefix}.{ext}")),
                    RotationKey::Timed(format!("{stamp}{millis}")),
                );
            }
        }
    }
    (set(base), RotationKey::Live)
}

/// Checks that every file can be opened, before any work starts.
pub fn check_inputs(inputs: &[Input]) -> Result<(), InputError> {
    for input in inputs {
        if let Input::File(path) = input {
            File::open(path).map_err(|error| InputError {
                input: input.name(),
                error,
            })?;
        }
    }
    Ok(())
}

/// Total size of the file inputs, for the progress bar; `None` when stdin is among them.
pub fn total_bytes(inputs: &[Input]) -> Option<u64> {
    let mut total = 0;
    for input in inputs {
        match input {
            Input::Stdin => return None,
            Input::File(path) => total += std::fs::metadata(path).ok()?.len(),
        }
    }
    Some(total)
}

/// One unit of work from the reader thread.
enum Work {
    /// Whole lines of one input; `input` indexes the inputs.
    Lines { input: usize, bytes: Bytes },
    /// A whole document (an EventList, a JSON array of events).
    Document { input: usize, bytes: Bytes },
    /// The input broke off.
    Failed { input: usize, error: String },
    /// Nothing more of this input.
    End,
}

/// What one chunk made: the caller's partial result and the chunk's own accounting.
struct Done<P> {
    input: usize,
    partial: P,
    lines: u64,
    events: u64,
    /// (line within the chunk or item location, why), in order.
    malformed: Vec<(Location, String)>,
    malformed_count: u64,
}

enum Location {
    Line(u64),
    Item(String),
}

/// Reads every input, calling `each` on every event with a partial result made by
/// `init` for its chunk, and `merge` on the partials in input order. `progress` is
/// called on the calling thread after each wave.
///
/// Fails only when an input cannot be opened; everything else is counted in the stats.
pub fn scan<P, I, E, M>(
    inputs: &[Input],
    options: &ReadOptions,
    init: I,
    each: E,
    mut merge: M,
    progress: &mut dyn FnMut(&ScanStats),
) -> Result<ScanStats, InputError>
where
    P: Send,
    I: Fn() -> P + Sync,
    E: Fn(&mut P, &Event) + Sync,
    M: FnMut(P),
{
    check_inputs(inputs)?;
    let read = Arc::new(AtomicU64::new(0));
    let wave = rayon::current_num_threads().max(1) * 2;
    // Files are read (and un-gzipped) by up to one thread per core, input `i` by reader
    // `i % readers`, each into its own bounded channel; taking from the channels in input
    // order keeps the order while decompression runs in parallel.
    let readers = inputs.len().clamp(1, rayon::current_num_threads().max(1));
    let capacity = (wave / readers).max(1);
    let mut stats = ScanStats::default();
    let mut lines_before: Vec<u64> = vec![0; inputs.len()];
    std::thread::scope(|scope| {
        let chunk_bytes = options.chunk_bytes.max(1024);
        let mut receivers = Vec::with_capacity(readers);
        for reader in 0..readers {
            let (tx, rx) = mpsc::sync_channel::<Work>(capacity);
            receivers.push(rx);
            let read = Arc::clone(&read);
            scope.spawn(move || {
                for index in (reader..inputs.len()).step_by(readers) {
                    read_input(index, &inputs[index], chunk_bytes, &read, &tx);
                    if tx.send(Work::End).is_err() {
                        return;
                    }
                }
            });
        }
        let mut ordered = Ordered {
            receivers,
            current: 0,
            inputs: inputs.len(),
        };
        loop {
            let Some(first) = ordered.next(true) else {
                break;
            };
            let mut batch = vec![first];
            while batch.len() < wave {
                match ordered.next(false) {
                    Some(work) => batch.push(work),
                    None => break,
                }
            }
            let done: Vec<Result<Done<P>, (usize, String)>> = batch
                .into_par_iter()
                .map(|work| process(work, &init, &each))
                .collect();
            for result in done {
                match result {
                    Ok(done) => {
                        let name = || inputs[done.input].name();
                        stats.events += done.events;
                        stats.malformed += done.malformed_count;
                        for (location, why) in done.malformed {
                            if stats.malformed_examples.len() < MALFORMED_EXAMPLES {
                                let place = match location {
                                    Location::Line(line) => {
                                        format!("line {}", lines_before[done.input] + line + 1)
                                    }
                                    Location::Item(item) => item,
                                };
                                stats
                                    .malformed_examples
                                    .push(format!("{} {place}: {why}", name()));
                            }
                        }
                        lines_before[done.input] += done.lines;
                        merge(done.partial);
                    }
                    Err((input, error)) => stats
                        .read_errors
                        .push(format!("{}: {error}", inputs[input].name())),
                }
            }
            stats.bytes_read = read.load(Ordering::Relaxed);
            progress(&stats);
        }
    });
    stats.bytes_read = read.load(Ordering::Relaxed);
    Ok(stats)
}

fn process<P, I, E>(work: Work, init: &I, each: &E) -> Result<Done<P>, (usize, String)>
where
    I: Fn() -> P,
    E: Fn(&mut P, &Event),
{
    let mut done = Done {
        input: 0,
        partial: init(),
        lines: 0,
        events: 0,
        malformed: Vec::new(),
        malformed_count: 0,
    };
    match work {
        Work::Lines { input, bytes } => {
            done.input = input;
            let mut start = 0;
            let mut line = 0u64;
            let one = |start: usize, end: usize, line: u64, done: &mut Done<P>| {
                let text = &bytes[start..end];
                if !text.iter().all(u8::is_ascii_whitespace) {
                    match Event::from_bytes(bytes.slice(start..end)) {
                        Ok(event) => {
                            done.events += 1;
                            each(&mut done.partial, &event);
                        }
                        Err(error) => {
                            done.malformed_count += 1;
                            if done.malformed.len() < MALFORMED_EXAMPLES {
                                done.malformed
                                    .push((Location::Line(line), error.to_string()));
                            }
                        }
                    }
                }
            };
            for end in memchr::memchr_iter(b'\n', &bytes) {
                one(start, end, line, &mut done);
                start = end + 1;
                line += 1;
            }
            if start < bytes.len() {
                one(start, bytes.len(), line, &mut done);
                line += 1;
            }
            done.lines = line;
        }
        Work::Document { input, bytes } => {
            done.input = input;
            match decode::decode(&bytes, Shape::Json) {
                Ok(decoded) => {
                    for event in &decoded.events {
                        done.events += 1;
                        each(&mut done.partial, event);
                    }
                    done.malformed_count = decoded.malformed.len() as u64;
                    for malformed in decoded.malformed.into_iter().take(MALFORMED_EXAMPLES) {
                        done.malformed
                            .push((Location::Item(malformed.location), malformed.reason));
                    }
                }
                Err(refused) => {
                    done.malformed_count = 1;
                    done.malformed
                        .push((Location::Item("the document".to_owned()), refused.0));
                }
            }
        }
        Work::Failed { input, error } => return Err((input, error)),
        Work::End => unreachable!("the end of an input is taken by `Ordered`"),
    }
    Ok(done)
}

/// Counts the bytes read through it, for the progress bar.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The work of every reader, taken input by input in order.
struct Ordered {
    receivers: Vec<mpsc::Receiver<Work>>,
    /// The input being taken.
    current: usize,
    inputs: usize,
}

impl Ordered {
    /// The next piece of work in input order: waiting for it when `wait`, else only if
    /// it is ready. `None` at the end (or, without `wait`, when nothing is ready).
    fn next(&mut self, wait: bool) -> Option<Work> {
        while self.current < self.inputs {
            let receiver = &self.receivers[self.current % self.receivers.len()];
            let work = if wait {
                receiver.recv().ok()?
            } else {
                receiver.try_recv().ok()?
            };
            match work {
                Work::End => self.current += 1,
                work => return Some(work),
            }
        }
        None
    }
}

/// One input, as chunks of whole lines or one whole document, on `tx`.
fn read_input(
    index: usize,
    input: &Input,
    chunk_bytes: usize,
    read: &Arc<AtomicU64>,
    tx: &mpsc::SyncSender<Work>,
) {
    let raw: Box<dyn Read + Send> = match input {
        Input::Stdin => Box::new(io::stdin()),
        Input::File(path) => match File::open(path) {
            Ok(file) => Box::new(file),
            Err(error) => {
                let _ = tx.send(Work::Failed {
                    input: index,
                    error: error.to_string(),
                });
                return;
            }
        },
    };
    let counted = Counting {
        inner: raw,
        read: Arc::clone(read),
    };
    if let Err(error) = read_one(index, counted, chunk_bytes, tx) {
        let _ = tx.send(Work::Failed {
            input: index,
            error: error.to_string(),
        });
    }
}

fn read_one<R: Read + Send>(
    index: usize,
    raw: R,
    chunk_bytes: usize,
    tx: &mpsc::SyncSender<Work>,
) -> io::Result<()> {
    let mut buffered = BufReader::with_capacity(64 << 10, raw);
    let is_gzip = buffered.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let mut reader: Box<dyn Read + Send> = if is_gzip {
        Box::new(MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let mut buf = BytesMut::new();
    let mut first = true;
    let mut target = chunk_bytes;
    loop {
        let eof = fill(&mut reader, &mut buf, target)?;
        if first {
            first = false;
            if is_document(&buf) {
                let mut rest = Vec::new();
                reader.read_to_end(&mut rest)?;
                buf.extend_from_slice(&rest);
                let _ = tx.send(Work::Document {
                    input: index,
                    bytes: buf.freeze(),
                });
                return Ok(());
            }
        }
        if eof {
            if !buf.is_empty() {
                let _ = tx.send(Work::Lines {
                    input: index,
                    bytes: buf.freeze(),
                });
            }
            return Ok(());
        }
        match memchr::memrchr(b'\n', &buf) {
            Some(newline) => {
                let rest = buf.split_off(newline + 1);
                let chunk = std::mem::replace(&mut buf, BytesMut::with_capacity(chunk_bytes));
                buf.extend_from_slice(&rest);
                target = chunk_bytes;
                if tx
                    .send(Work::Lines {
                        input: index,
                        bytes: chunk.freeze(),
                    })
                    .is_err()
                {
                    return Ok(());
                }
            }
            // One line longer than a chunk: read on until it ends.
            None => target = buf.len() * 2,
        }
    }
}

/// Reads until `buf` holds `target` bytes or the input ends; returns whether it ended.
fn fill(reader: &mut dyn Read, buf: &mut BytesMut, target: usize) -> io::Result<bool> {
    while buf.len() < target {
        let filled = buf.len();
        buf.resize(target, 0);
        match reader.read(&mut buf[filled..]) {
            Ok(0) => {
                buf.truncate(filled);
                return Ok(true);
            }
            Ok(n) => buf.truncate(filled + n),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => buf.truncate(filled),
            Err(error) => {
                buf.truncate(filled);
                return Err(error);
            }
        }
    }
    Ok(false)
}

/// Whether the input is one JSON document of events rather than one event per line.
fn is_document(start: &[u8]) -> bool {
    let trimmed = start.trim_ascii_start();
    match trimmed.first() {
        Some(b'[') => true,
        Some(b'{') => {
            let head = &trimmed[..trimmed.len().min(512)];
            memchr::memmem::find(head, b"\"EventList\"").is_some()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(names: &[&str]) -> Vec<Input> {
        names
            .iter()
            .map(|name| Input::File(PathBuf::from(name)))
            .collect()
    }

    #[test]
    fn a_rotated_set_reads_oldest_first_and_the_live_file_last() {
        let given = files(&[
            "/var/log/audit/audit.log",
            "/var/log/audit/audit-2026-11-23T08-10-00.000.log.gz",
            "/var/log/audit/audit-2026-11-23T08-05-00.500.log",
            "/var/log/audit/audit-2026-11-23T08-05-00.100.log",
        ]);
        assert_eq!(
            order_rotated(given),
            files(&[
                "/var/log/audit/audit-2026-11-23T08-05-00.100.log",
                "/var/log/audit/audit-2026-11-23T08-05-00.500.log",
                "/var/log/audit/audit-2026-11-23T08-10-00.000.log.gz",
                "/var/log/audit/audit.log",
            ])
        );
    }

    #[test]
    fn logrotate_numbers_read_highest_first() {
        let given = files(&[
            "a/audit.log",
            "a/audit.log.1",
            "a/audit.log.10.gz",
            "a/audit.log.2.gz",
        ]);
        assert_eq!(
            order_rotated(given),
            files(&[
                "a/audit.log.10.gz",
                "a/audit.log.2.gz",
                "a/audit.log.1",
                "a/audit.log"
            ])
        );
    }

    #[test]
    fn separate_sets_keep_the_order_they_were_given_in() {
        let given = files(&["b/x.log", "a/audit.log", "a/audit.log.1"]);
        assert_eq!(
            order_rotated(given),
            files(&["b/x.log", "a/audit.log.1", "a/audit.log"])
        );
    }

    #[test]
    fn documents_are_told_from_lines_by_their_start() {
        assert!(is_document(
            b"  {\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\""
        ));
        assert!(is_document(b"[{\"kind\":\"Event\"}]"));
        assert!(!is_document(
            b"{\"kind\":\"Event\",\"level\":\"Metadata\"}\n"
        ));
    }

    fn count_events(inputs: &[Input], chunk_bytes: usize) -> (u64, ScanStats) {
        let mut total = 0;
        let stats = scan(
            inputs,
            &ReadOptions { chunk_bytes },
            || 0u64,
            |n, _| *n += 1,
            |n| total += n,
            &mut |_| {},
        )
        .unwrap();
        (total, stats)
    }

    #[test]
    fn small_chunks_split_lines_without_losing_or_doubling_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut text = String::new();
        for i in 0..500 {
            text.push_str(&format!("{{\"auditID\":\"{i}\",\"verb\":\"get\"}}\n"));
        }
        text.push_str("not json\n{\"auditID\":\"last\"}");
        std::fs::write(&path, &text).unwrap();
        let (total, stats) = count_events(&[Input::File(path)], 1024);
        assert_eq!(total, 501);
        assert_eq!(stats.events, 501);
        assert_eq!(stats.malformed, 1);
        assert!(
            stats.malformed_examples[0].contains("line 501: not a JSON object"),
            "{:?}",
            stats.malformed_examples
        );
        assert_eq!(stats.bytes_read, text.len() as u64);
    }

    #[test]
    fn many_inputs_read_in_parallel_keep_their_order() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let mut inputs = Vec::new();
        let mut expected = Vec::new();
        for file in 0..7 {
            let mut text = String::new();
            for i in 0..300 {
                let id = format!("{file}-{i}");
                text.push_str(&format!("{{\"auditID\":\"{id}\"}}\n"));
                expected.push(id);
            }
            let path = dir.path().join(format!("part-{file}.log"));
            if file % 2 == 0 {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(text.as_bytes()).unwrap();
                std::fs::write(&path, gz.finish().unwrap()).unwrap();
            } else {
                std::fs::write(&path, text).unwrap();
            }
            inputs.push(Input::File(path));
        }
        let mut seen = Vec::new();
        scan(
            &inputs,
            &ReadOptions { chunk_bytes: 2048 },
            Vec::new,
            |ids: &mut Vec<String>, event| ids.push(event.get_str("auditID").unwrap().to_owned()),
            |ids| seen.extend(ids),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_missing_file_fails_before_anything_is_read() {
        let error = scan(
            &[Input::File(PathBuf::from("/nonexistent/audit.log"))],
            &ReadOptions::default(),
            || (),
            |_, _| {},
            |_| {},
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            error.to_string().starts_with("/nonexistent/audit.log: "),
            "{error}"
        );
    }
}
