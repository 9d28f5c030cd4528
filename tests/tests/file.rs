//! The `file` source through the real binary, on real files: rename rotation,
//! copy-truncate, gzip backups, deletion, oversized lines, `SIGKILL` and restart, and torn
//! checkpoint files. Every event is a captured kube-apiserver event with its own
//! `auditID`, and the test counts each one that arrives on standard output.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use auditflow_core::batch::MAX_BATCH_EVENTS;
use auditflow_e2e::audit_lines::{append, audit_line, audit_lines};
use auditflow_e2e::{http_get, metric, wait_ready, Auditflow, Workspace};

const ID_PREFIX: &str = "\"auditID\":\"00000000-0000-4000-8000-";
/// `auditflow_file::tailer::MAX_BATCHES_IN_FLIGHT`: what one crash can replay, in batches.
const MAX_BATCHES_IN_FLIGHT: usize = 16;
/// `auditflow_file::tailer::CHECKPOINT_INTERVAL`: the checkpoint is at most this old.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// Generous deadlines: the machine running the suite may be loaded.
const DEADLINE: Duration = Duration::from_secs(120);

/// The index in an [`audit_line`], from a line of output.
fn index_of(line: &str) -> Option<usize> {
    let start = line.find(ID_PREFIX)? + ID_PREFIX.len();
    line.get(start..start + 12)?.parse().ok()
}

/// How often each event arrived, over every run of the process.
struct Tally {
    counts: Vec<AtomicU32>,
    distinct: AtomicUsize,
    foreign: AtomicUsize,
    /// When each line was counted, in order.
    arrivals: std::sync::Mutex<Vec<Instant>>,
}

impl Tally {
    fn new(size: usize) -> Arc<Tally> {
        Arc::new(Tally {
            counts: (0..size).map(|_| AtomicU32::new(0)).collect(),
            distinct: AtomicUsize::new(0),
            foreign: AtomicUsize::new(0),
            arrivals: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Lines counted at `since` or later.
    fn arrived_since(&self, since: Instant) -> usize {
        let arrivals = self.arrivals.lock().unwrap();
        arrivals.len() - arrivals.partition_point(|&at| at < since)
    }

    fn count(&self, line: &str) {
        self.arrivals.lock().unwrap().push(Instant::now());
        match index_of(line).and_then(|i| self.counts.get(i)) {
            Some(count) => {
                if count.fetch_add(1, Ordering::SeqCst) == 0 {
                    self.distinct.fetch_add(1, Ordering::SeqCst);
                }
            }
            None => {
                self.foreign.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn get(&self, i: usize) -> u32 {
        self.counts[i].load(Ordering::SeqCst)
    }

    fn distinct(&self) -> usize {
        self.distinct.load(Ordering::SeqCst)
    }

    /// Arrivals beyond the first, over `range`.
    fn duplicates(&self, range: std::ops::Range<usize>) -> u64 {
        range
            .map(|i| u64::from(self.get(i).saturating_sub(1)))
            .sum()
    }

    fn wait_distinct(&self, at_least: usize, timeout: Duration, what: &Process) {
        let deadline = Instant::now() + timeout;
        while self.distinct() < at_least {
            assert!(
                Instant::now() < deadline,
                "only {} of {at_least} events arrived within {timeout:?}; stderr:\n{}",
                self.distinct(),
                what.stderr_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One run of `auditflow` with a `file` source `in` → `stdout` sink, its standard output
/// counted into a [`Tally`].
struct Process {
    auditflow: Auditflow,
    metrics: String,
    counter: JoinHandle<()>,
}

impl Process {
    fn start(workspace: &Workspace, source_options: &str, tally: &Arc<Tally>) -> Process {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let pipeline = workspace.write(
            &format!("pipeline-{}.yaml", RUNS.fetch_add(1, Ordering::Relaxed)),
            &format!(
                "data_dir: {data}\n\
                 metrics:\n  address: 127.0.0.1:0\n\
                 sources:\n  in:\n    type: file\n{options}\n\
                 sinks:\n  out:\n    type: stdout\n    inputs: [in]\n",
                data = workspace.path().join("data").display(),
                options = source_options
                    .lines()
                    .map(|line| format!("    {line}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
        );
        let mut auditflow = Auditflow::run(workspace, &pipeline);
        let output = auditflow.stdout_lines();
        let counter = {
            let tally = Arc::clone(tally);
            std::thread::spawn(move || {
                for line in output {
                    tally.count(&line);
                }
            })
        };
        let metrics = auditflow.metrics_address(DEADLINE);
        wait_ready(&metrics, DEADLINE);
        Process {
            auditflow,
            metrics,
            counter,
        }
    }

    fn scrape(&self) -> String {
        http_get(&self.metrics, "/metrics").expect("GET /metrics").1
    }

    fn stderr_tail(&self) -> String {
        let stderr = self.auditflow.stderr();
        stderr
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `SIGKILL`, then wait until everything it wrote to stdout is counted. Returns what
    /// the restart may repeat at most, as docs/file.md bounds it: the batches in flight
    /// plus what was acknowledged since the last checkpoint write. The latter is taken as
    /// the lines that arrived in the last two checkpoint intervals before the kill (twice
    /// the interval: the process, like the test, may be descheduled on a loaded machine).
    fn kill(mut self, tally: &Tally) -> usize {
        let killed = Instant::now();
        self.auditflow.signal(libc::SIGKILL);
        self.auditflow.wait_timeout(DEADLINE);
        self.counter.join().unwrap();
        MAX_BATCHES_IN_FLIGHT * MAX_BATCH_EVENTS
            + tally.arrived_since(
                killed
                    .checked_sub(2 * CHECKPOINT_INTERVAL)
                    .unwrap_or(killed),
            )
    }

    /// `SIGTERM`: must exit 0; returns its stderr.
    fn stop(mut self) -> String {
        self.auditflow.signal(libc::SIGTERM);
        let status = self.auditflow.wait_timeout(DEADLINE);
        let stderr = self.auditflow.stderr();
        assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
        self.counter.join().unwrap();
        stderr
    }
}

fn logs_dir(workspace: &Workspace) -> PathBuf {
    let logs = workspace.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    logs
}

/// Writes `range` to `logs/audit.log` at about `per_second` lines a second, as
/// kube-apiserver would, rename-rotating it every `rotate_every` lines, and once (at
/// `copy_truncate_at`) copy-truncating it instead, while paused.
struct Writer {
    done: Arc<AtomicBool>,
    thread: JoinHandle<(usize, usize)>,
}

impl Writer {
    fn start(
        logs: PathBuf,
        range: std::ops::Range<usize>,
        per_second: usize,
        rotate_every: usize,
        copy_truncate_at: usize,
    ) -> Writer {
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let live = logs.join("audit.log");
                let open = || {
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&live)
                        .unwrap()
                };
                let mut file = open();
                let (mut rotations, mut truncations) = (0, 0);
                let begun = Instant::now();
                let first = range.start;
                let mut chunk = String::new();
                for start in range.clone().step_by(100) {
                    let end = (start + 100).min(range.end);
                    chunk.clear();
                    for i in start..end {
                        chunk.push_str(&audit_line(i));
                        chunk.push('\n');
                    }
                    file.write_all(chunk.as_bytes()).unwrap();
                    if end % rotate_every == 0 && end != range.end {
                        drop(file);
                        rotations += 1;
                        let backup = format!("audit-2024-01-01T00-00-{rotations:02}.000.log");
                        fs::rename(&live, logs.join(backup)).unwrap();
                        file = open();
                    }
                    if end == copy_truncate_at {
                        // A copy the globs match, then the truncate, with the writer paused
                        // (what is written between the two is lost to any tailer).
                        fs::copy(&live, logs.join("audit-copytruncate.log")).unwrap();
                        OpenOptions::new()
                            .write(true)
                            .open(&live)
                            .unwrap()
                            .set_len(0)
                            .unwrap();
                        truncations += 1;
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    let due = Duration::from_secs_f64((end - first) as f64 / per_second as f64);
                    if let Some(ahead) = due.checked_sub(begun.elapsed()) {
                        std::thread::sleep(ahead);
                    }
                }
                done.store(true, Ordering::SeqCst);
                (rotations, truncations)
            })
        };
        Writer { done, thread }
    }
}

/// 200,000 events written while the file is rotated six times and copy-truncated once,
/// and auditflow is killed twice: every event arrives, with bounded duplicates.
fn rotation_and_crashes(read_from: &str) {
    const TOTAL: usize = 200_000;
    // Written before the first start: read with `beginning`, never with `end`.
    const BEFORE: usize = 5_000;
    let workspace = Workspace::new();
    let logs = logs_dir(&workspace);
    append(&logs.join("audit.log"), &audit_lines(0..BEFORE));
    let options = format!(
        "include: [\"{}/*.log\"]\nread_from: {read_from}\nglob_interval_ms: 250\nrotate_wait_secs: 5",
        logs.display()
    );
    let expected = if read_from == "end" {
        BEFORE..TOTAL
    } else {
        0..TOTAL
    };
    let tally = Tally::new(TOTAL);

    let first = Process::start(&workspace, &options, &tally);
    // The first scan is checkpointed before anything else: then `end` is fixed.
    let checkpoint = workspace.path().join("data/in/checkpoints.json");
    let deadline = Instant::now() + DEADLINE;
    while !checkpoint.exists() {
        assert!(Instant::now() < deadline, "no checkpoint written at start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let writer = Writer::start(logs.clone(), BEFORE..TOTAL, 10_000, 30_000, 115_000);

    // (How many rotations each process counted is checked exactly in file_behaviours.rs,
    // where no kill resets the counter.)
    tally.wait_distinct(expected.len() / 4, DEADLINE, &first);
    let mut bound = first.kill(&tally);
    // Down for a moment, as a crashed container is, while the writer goes on.
    std::thread::sleep(Duration::from_millis(700));
    let second = Process::start(&workspace, &options, &tally);
    tally.wait_distinct(expected.len() * 6 / 10, DEADLINE, &second);
    bound += second.kill(&tally);
    std::thread::sleep(Duration::from_millis(700));
    let third = Process::start(&workspace, &options, &tally);
    let (rotations, truncations) = writer.thread.join().unwrap();
    assert!(writer.done.load(Ordering::SeqCst));
    // The writer did what this test needs (not a check of auditflow).
    assert_eq!((rotations, truncations), (6, 1), "the writer's rotations");
    tally.wait_distinct(expected.len(), DEADLINE, &third);
    third.stop();

    let missing: Vec<usize> = expected.clone().filter(|&i| tally.get(i) == 0).collect();
    assert!(
        missing.is_empty(),
        "{} events never arrived, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let early: Vec<usize> = (0..expected.start).filter(|&i| tally.get(i) > 0).collect();
    assert!(
        early.is_empty(),
        "{} events written before the first start arrived with read_from: end",
        early.len()
    );
    assert_eq!(
        tally.foreign.load(Ordering::SeqCst),
        0,
        "lines that are no written event arrived"
    );
    let duplicates = tally.duplicates(expected.clone());
    println!(
        "read_from {read_from}: {} events, {rotations} rotations, 1 copy-truncate, 2 kills: {duplicates} duplicates (bound {bound})",
        expected.len()
    );
    // Each kill replays at most the batches in flight plus what was acknowledged since the
    // last checkpoint write (see `Process::kill`); the clean stop replays nothing.
    assert!(
        duplicates as usize <= bound,
        "{duplicates} duplicates, more than the {bound} that two kills may repeat"
    );
}

/// A `SIGTERM` while the source waits to send a batch must not be reported as a loss: the
/// batch never entered the pipeline. The drain logs no error (nor warning), exits 0, and
/// the checkpoint resumes exactly after what was delivered: no duplicates, no gap.
#[test]
fn a_clean_shutdown_mid_file_logs_no_error_and_resumes_without_duplicates() {
    const TOTAL: usize = 60_000;
    let workspace = Workspace::new();
    let logs = logs_dir(&workspace);
    fs::write(logs.join("audit.log"), audit_lines(0..TOTAL)).unwrap();
    let options = format!("include: [\"{}/*.log\"]", logs.display());
    let tally = Tally::new(TOTAL);

    for stop in 0..2 {
        let process = Process::start(&workspace, &options, &tally);
        let reached = tally.distinct();
        tally.wait_distinct(reached + 1, DEADLINE, &process);
        let stderr = process.stop();
        for level in ["ERROR", "WARN"] {
            assert!(
                !stderr.contains(level),
                "stop {stop} logged {level}:\n{stderr}"
            );
        }
        if tally.distinct() == TOTAL {
            break;
        }
    }
    let process = Process::start(&workspace, &options, &tally);
    tally.wait_distinct(TOTAL, DEADLINE, &process);
    process.stop();
    assert_eq!(tally.duplicates(0..TOTAL), 0, "events delivered twice");
    assert_eq!(tally.foreign.load(Ordering::SeqCst), 0);
}

#[test]
fn every_event_arrives_across_rotation_copy_truncate_and_two_kills() {
    rotation_and_crashes("beginning");
}

#[test]
fn read_from_end_skips_what_was_written_before_the_first_start_and_nothing_after() {
    rotation_and_crashes("end");
}

#[test]
fn a_gzipped_backup_is_read_whole_once() {
    let workspace = Workspace::new();
    let logs = logs_dir(&workspace);
    let mut gz = flate2::write::GzEncoder::new(
        File::create(logs.join("audit-2024-01-01T00-00-00.000.log.gz")).unwrap(),
        flate2::Compression::default(),
    );
    gz.write_all(audit_lines(0..2_000).as_bytes()).unwrap();
    gz.finish().unwrap();
    append(&logs.join("audit.log"), &audit_lines(2_000..2_100));
    let options = format!(
        "include: [\"{0}/*.log\", \"{0}/*.log.gz\"]\nglob_interval_ms: 100",
        logs.display()
    );
    let tally = Tally::new(2_200);
    let run = Process::start(&workspace, &options, &tally);
    tally.wait_distinct(2_100, DEADLINE, &run);
    run.stop();
    // Known by its fingerprint after a restart: nothing is read again. Lines appended
    // after the restart arrive after the first scan, whose files are read in one pass: had
    // the backup been opened again, its first batch would be out before them.
    let run = Process::start(&workspace, &options, &tally);
    append(&logs.join("audit.log"), &audit_lines(2_100..2_200));
    tally.wait_distinct(2_200, DEADLINE, &run);
    run.stop();
    assert_eq!(tally.duplicates(0..2_200), 0);
    assert_eq!(tally.foreign.load(Ordering::SeqCst), 0);
}

#[test]
fn a_file_deleted_while_being_read_is_drained() {
    const TOTAL: usize = 30_000;
    let workspace = Workspace::new();
    let logs = logs_dir(&workspace);
    let log = logs.join("audit.log");
    append(&log, &audit_lines(0..TOTAL));
    let options = format!(
        "include: [\"{}/*.log\"]\nglob_interval_ms: 100\nrotate_wait_secs: 30",
        logs.display()
    );
    let tally = Tally::new(TOTAL);
    // Standard output is read by hand here: stalling it holds the source mid-file.
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            "data_dir: {data}\nmetrics:\n  address: 127.0.0.1:0\n\
             sources:\n  in:\n    type: file\n    {}\n\
             sinks:\n  out:\n    type: stdout\n    inputs: [in]\n",
            options.replace('\n', "\n    "),
            data = workspace.path().join("data").display(),
        ),
    );
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let metrics = auditflow.metrics_address(DEADLINE);
    let mut stdout = BufReader::new(auditflow.child.stdout.take().unwrap());
    let mut line = String::new();
    for _ in 0..100 {
        line.clear();
        stdout.read_line(&mut line).unwrap();
        tally.count(&line);
    }
    fs::remove_file(&log).unwrap();
    let deleted = Instant::now();
    let reader = {
        let tally = Arc::clone(&tally);
        std::thread::spawn(move || {
            for line in stdout.lines() {
                tally.count(&line.unwrap());
            }
        })
    };
    let deadline = Instant::now() + DEADLINE;
    while tally.distinct() < TOTAL {
        assert!(
            Instant::now() < deadline,
            "{} of {TOTAL} events arrived after the file was deleted",
            tally.distinct()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "deleted file drained {:?} after the delete",
        deleted.elapsed()
    );
    // Closed once rotate_wait_secs has passed, with nothing lost.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = http_get(&metrics, "/metrics").unwrap().1;
        if metric(
            &text,
            "auditflow_file_open_files",
            &[("component_id", "in")],
        ) == Some(0.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deleted file is still open:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = http_get(&metrics, "/metrics").unwrap().1;
    assert_eq!(
        metric(
            &text,
            "auditflow_file_lost_bytes_total",
            &[("component_id", "in")]
        ),
        Some(0.0)
    );
    auditflow.signal(libc::SIGTERM);
    assert_eq!(auditflow.wait_timeout(DEADLINE).code(), Some(0));
    reader.join().unwrap();
    assert_eq!(tally.duplicates(0..TOTAL), 0);
    assert!(
        auditflow
            .stderr()
            .contains("closing a renamed or deleted file: drained"),
        "{}",
        auditflow.stderr()
    );
}

#[test]
fn a_10_mib_line_is_skipped_and_the_next_line_arrives() {
    let workspace = Workspace::new();
    let logs = logs_dir(&workspace);
    let log = logs.join("audit.log");
    let huge = format!(
        "{{\"auditID\":\"huge\",\"x\":\"{}\"}}\n",
        "x".repeat(10 << 20)
    );
    append(
        &log,
        &format!("{}{huge}{}", audit_lines(0..1), audit_lines(1..2)),
    );
    let options = format!(
        "include: [\"{}/*.log\"]\nmax_line_bytes: 1048576\nglob_interval_ms: 100",
        logs.display()
    );
    let tally = Tally::new(2);
    let run = Process::start(&workspace, &options, &tally);
    tally.wait_distinct(2, DEADLINE, &run);
    let metrics = run.scrape();
    let stderr = run.stop();
    assert_eq!(
        tally.foreign.load(Ordering::SeqCst),
        0,
        "the long line was not passed on"
    );
    assert_eq!(
        metric(
            &metrics,
            "auditflow_component_discarded_events_total",
            &[("component_id", "in"), ("reason", "oversized")]
        ),
        Some(1.0)
    );
    let location = format!("{}:2", log.display());
    assert!(
        stderr.contains(&location),
        "the skip is logged at {location}:\n{stderr}"
    );
}

#[test]
fn torn_checkpoint_files_neither_restart_from_zero_nor_skip() {
    let workspace = Workspace::new();
    let logs = logs_dir(&workspace);
    let log = logs.join("audit.log");
    let options = format!(
        "include: [\"{}/*.log\"]\nglob_interval_ms: 100",
        logs.display()
    );
    let state = workspace.path().join("data/in");
    let tally = Tally::new(2_000);

    append(&log, &audit_lines(0..1_000));
    let run = Process::start(&workspace, &options, &tally);
    tally.wait_distinct(1_000, DEADLINE, &run);
    run.stop();

    // A crash while writing the temporary file left it torn: it is ignored.
    let whole = fs::read(state.join("checkpoints.json")).unwrap();
    fs::write(
        state.join("checkpoints.json.tmp"),
        &whole[..whole.len() / 2],
    )
    .unwrap();
    append(&log, &audit_lines(1_000..1_500));
    let run = Process::start(&workspace, &options, &tally);
    tally.wait_distinct(1_500, DEADLINE, &run);
    run.stop();
    assert_eq!(
        tally.duplicates(0..1_500),
        0,
        "resumed exactly at the checkpoint"
    );

    // The checkpoint file itself is torn: the previous one is used. It is one write
    // older, so reading resumes at its offset: what lies between it and the torn one's
    // comes again, exactly that, and nothing before it.
    let previous: serde_json::Value =
        serde_json::from_slice(&fs::read(state.join("checkpoints.json.bak")).unwrap()).unwrap();
    let previous_offset = previous["files"][0]["offset"].as_u64().unwrap() as usize;
    let previous_events = fs::read(&log).unwrap()[..previous_offset]
        .iter()
        .filter(|&&byte| byte == b'\n')
        .count();
    assert!(
        (1_000..=1_500).contains(&previous_events),
        "the previous checkpoint is from the second run: {previous}"
    );
    let whole = fs::read(state.join("checkpoints.json")).unwrap();
    fs::write(state.join("checkpoints.json"), &whole[..whole.len() / 2]).unwrap();
    append(&log, &audit_lines(1_500..2_000));
    let run = Process::start(&workspace, &options, &tally);
    tally.wait_distinct(2_000, DEADLINE, &run);
    let stderr = run.stop();
    assert!(
        stderr.contains("resuming from the previous one"),
        "{stderr}"
    );
    let replayed_from_zero = (0..1_000).filter(|&i| tally.get(i) > 1).count();
    assert_eq!(replayed_from_zero, 0, "the first run's events came again");
    let repeated: Vec<usize> = (0..2_000).filter(|&i| tally.get(i) > 1).collect();
    assert_eq!(
        repeated,
        (previous_events..1_500).collect::<Vec<_>>(),
        "exactly the events after the previous checkpoint came again"
    );
    assert!((0..2_000).all(|i| tally.get(i) <= 2));

    // Both unusable: refuse to start rather than start over.
    fs::write(state.join("checkpoints.json"), b"\0\0\0").unwrap();
    fs::write(state.join("checkpoints.json.bak"), b"{\"version\":1,").unwrap();
    let pipeline = workspace.path().join("refused.yaml");
    fs::write(
        &pipeline,
        format!(
            "data_dir: {}\nsources:\n  in:\n    type: file\n    {}\nsinks:\n  out:\n    type: stdout\n    inputs: [in]\n",
            workspace.path().join("data").display(),
            options.replace('\n', "\n    ")
        ),
    )
    .unwrap();
    let mut refused = Auditflow::run(&workspace, &pipeline);
    let status = refused.wait_timeout(DEADLINE);
    assert_eq!(
        status.code(),
        Some(1),
        "an unusable checkpoint is a start failure"
    );
    assert!(
        refused.stderr().contains("checkpoints.json"),
        "{}",
        refused.stderr()
    );
}

/// The sidecar's worst case: the destination is down, so nothing is ever acknowledged and
/// back-pressure stops the source with most of the file unread; the log file is deleted
/// (rotation with a small `--audit-log-maxbackup`) and auditflow is killed. While it ran, the
/// open file kept its bytes readable; after the restart they are gone, and
/// `auditflow_file_lost_bytes_total` says exactly how many, with an error line naming the file.
#[test]
fn a_deleted_file_with_unacknowledged_events_is_counted_exactly_as_lost_bytes() {
    const TOTAL: usize = 40_000;
    let workspace = Workspace::new();
    let logs = logs_dir(&workspace);
    let log = logs.join("audit.log");
    fs::write(&log, audit_lines(0..TOTAL)).unwrap();
    let size = fs::metadata(&log).unwrap().len();
    // Nothing listens here: the sink retries and never acknowledges.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let down = closed.local_addr().unwrap();
    drop(closed);
    let pipeline = workspace.write(
        "down.yaml",
        &format!(
            "data_dir: {}\nmetrics: {{ address: 127.0.0.1:0 }}\n\
             sources:\n  in: {{ type: file, include: [\"{}/*.log\"], rotate_wait_secs: 600, glob_interval_ms: 100 }}\n\
             sinks:\n  out: {{ type: https, inputs: [in], uri: \"http://{down}/\", allow_plaintext: true }}\n",
            workspace.path().join("data").display(),
            logs.display()
        ),
    );
    let lost = |process: &Auditflow, at_least: f64| -> f64 {
        let address = process.metrics_address(DEADLINE);
        wait_ready(&address, DEADLINE);
        let deadline = Instant::now() + DEADLINE;
        loop {
            let text = http_get(&address, "/metrics").unwrap().1;
            let value = metric(
                &text,
                "auditflow_file_lost_bytes_total",
                &[("component_id", "in")],
            )
            .expect("the lost-bytes series exists from the start");
            if value >= at_least {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "lost bytes stayed at {value}:\n{}",
                process.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    let mut first = Auditflow::run(&workspace, &pipeline);
    assert_eq!(lost(&first, 0.0), 0.0);
    // Wait for the checkpoint that names the file, then delete it under the blocked source.
    let checkpoint = workspace.path().join("data/in/checkpoints.json");
    let deadline = Instant::now() + DEADLINE;
    while !fs::read_to_string(&checkpoint).is_ok_and(|text| text.contains("audit.log")) {
        assert!(Instant::now() < deadline, "no checkpoint naming the file");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Killed while the deleted file is still open (rotate_wait_secs is far longer than the
    // test): the loss is counted at the restart, from the checkpoint.
    fs::remove_file(&log).unwrap();
    first.signal(libc::SIGKILL);
    first.wait_timeout(DEADLINE);

    let mut second = Auditflow::run(&workspace, &pipeline);
    assert_eq!(lost(&second, 1.0), size as f64, "every byte of the file");
    assert!(
        second
            .stderr()
            .contains("is gone with bytes never acknowledged"),
        "{}",
        second.stderr()
    );
    second.signal(libc::SIGKILL);
    second.wait_timeout(DEADLINE);
}
