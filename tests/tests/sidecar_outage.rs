//! The sidecar deployment through a long outage of its destination while kube-apiserver's
//! log backend keeps writing: rename rotation with `--audit-log-maxbackup=2` at 2,000
//! events/s, the https destination down, auditflow SIGKILLed twice during the outage and
//! restarted at once (as kubelet restarts a crashed container).
//!
//! - With a disk buffer on the sink, every event written arrives.
//! - Without one, back-pressure stops the source, the API server deletes files auditflow
//!   had not finished, and what is lost is exactly what `auditflow_file_lost_bytes_total`
//!   (summed over the three processes: a SIGKILL resets it) and the error lines naming
//!   each deleted file say.
//!
//! # Scaled
//!
//! The outage lasts 18 s instead of 3 minutes, and auditflow's `rotate_wait_secs` is 3
//! instead of 30 (both 1/10); the rate (2,000 events/s), the rotation (every 2,000 events,
//! so once a second) and `maxbackup` are as the issue states them. What decides the loss is
//! how long the API server keeps a file, (maxbackup + 1) rotations = 3 s, against the
//! outage: once the outage is longer than that window plus what auditflow reads before
//! back-pressure stops it, each further second of outage loses one more second of events,
//! in the same way whether the outage spans 6 windows (here) or 60 (3 minutes). Every path
//! of the real outage still runs: files deleted under a blocked source and closed with bytes
//! unread after `rotate_wait_secs` (3 s, shorter than the outage as 30 s is shorter than 3
//! minutes), files deleted while they were open when auditflow was killed (counted at the
//! restart from the checkpoint), and the restart of a process that has those files in its
//! checkpoint. The kills fall 6 s and 12 s into the outage (1 and 2 minutes, scaled).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use auditflow_e2e::audit_lines::{audit_id, audit_line};
use auditflow_e2e::collector::{duplicates, Collector};
use auditflow_e2e::{http_get, metric, wait_ready, Auditflow, Workspace};

const RATE_PER_SECOND: usize = 2000;
const ROTATE_EVERY_EVENTS: usize = 2000;
const MAX_BACKUPS: usize = 2;
/// From the first event written.
const OUTAGE_STARTS: Duration = Duration::from_secs(2);
const OUTAGE: Duration = Duration::from_secs(18);
/// Into the outage.
const KILLS: [Duration; 2] = [Duration::from_secs(6), Duration::from_secs(12)];
/// The writer stops this long after its first event (4 s after the outage).
const WRITING: Duration = Duration::from_secs(24);
const ROTATE_WAIT_SECS: u64 = 3;

/// One file the writer wrote: its last name, the events in it, whether it was deleted.
#[derive(Debug, Clone)]
struct WrittenFile {
    name: String,
    ids: Range<usize>,
    deleted: bool,
}

/// kube-apiserver's log backend: appends events to `audit.log` at [`RATE_PER_SECOND`],
/// renames it to `audit-<n>.log` every [`ROTATE_EVERY_EVENTS`] events, and deletes all but
/// the [`MAX_BACKUPS`] newest backups, on a thread of its own.
struct ApiServerLog {
    files: Arc<Mutex<Vec<WrittenFile>>>,
    written: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServerLog {
    fn start(dir: PathBuf) -> ApiServerLog {
        let files = Arc::new(Mutex::new(vec![WrittenFile {
            name: "audit.log".into(),
            ids: 0..0,
            deleted: false,
        }]));
        let written = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (files, written, stop) = (files.clone(), written.clone(), stop.clone());
            std::thread::spawn(move || write_rotating(&dir, &files, &written, &stop))
        };
        ApiServerLog {
            files,
            written,
            stop,
            thread: Some(thread),
        }
    }

    fn written(&self) -> usize {
        self.written.load(Ordering::SeqCst)
    }

    /// Stops writing; returns every file written, oldest first.
    fn finish(mut self) -> Vec<WrittenFile> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the writer thread");
        }
        self.files.lock().unwrap().clone()
    }
}

impl Drop for ApiServerLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn write_rotating(
    dir: &Path,
    files: &Mutex<Vec<WrittenFile>>,
    written: &AtomicUsize,
    stop: &AtomicBool,
) {
    let active = dir.join("audit.log");
    let open = || {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&active)
            .expect("open audit.log")
    };
    let start = Instant::now();
    let mut out = open();
    let (mut next, mut in_file, mut rotations) = (0, 0, 0);
    let mut chunk = String::new();
    while !stop.load(Ordering::SeqCst) {
        let due = (start.elapsed().as_secs_f64() * RATE_PER_SECOND as f64) as usize;
        while next < due {
            let count = (due - next).min(ROTATE_EVERY_EVENTS - in_file);
            chunk.clear();
            for i in next..next + count {
                chunk.push_str(&audit_line(i));
                chunk.push('\n');
            }
            out.write_all(chunk.as_bytes())
                .expect("append to audit.log");
            next += count;
            in_file += count;
            files.lock().unwrap().last_mut().expect("a file").ids.end = next;
            written.store(next, Ordering::SeqCst);
            if in_file < ROTATE_EVERY_EVENTS {
                continue;
            }
            // Rotate as lumberjack does: close, rename, delete old backups, open anew.
            drop(out);
            rotations += 1;
            let name = format!("audit-{rotations}.log");
            fs::rename(&active, dir.join(&name)).expect("rotate audit.log");
            let mut files = files.lock().unwrap();
            files.last_mut().expect("a file").name = name;
            let backups: Vec<usize> = (0..files.len()).filter(|&i| !files[i].deleted).collect();
            for &old in &backups[..backups.len().saturating_sub(MAX_BACKUPS)] {
                fs::remove_file(dir.join(&files[old].name)).expect("delete an old backup");
                files[old].deleted = true;
            }
            files.push(WrittenFile {
                name: "audit.log".into(),
                ids: next..next,
                deleted: false,
            });
            out = open();
            in_file = 0;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sleep_until(at: Instant) {
    if let Some(left) = at.checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
}

fn metrics_text(address: &str) -> String {
    http_get(address, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

fn source_metric(address: &str, name: &str) -> f64 {
    metric(
        &metrics_text(address),
        name,
        &[("component_id", "apiserver")],
    )
    .unwrap_or(0.0)
}

const LOST_BYTES: &str = "auditflow_file_lost_bytes_total";
const LAG_BYTES: &str = "auditflow_file_checkpoint_lag_bytes";

/// One auditflow process: what it logged and its lost-bytes counter when it ended.
struct Run {
    stderr: String,
    lost_bytes_metric: f64,
}

impl Run {
    /// The error lines that report lost bytes: (file name, bytes).
    fn lost_lines(&self) -> Vec<(String, u64)> {
        self.stderr
            .lines()
            .filter(|line| line.contains("ERROR") && line.contains(" lost_bytes="))
            .map(|line| {
                let field = |name: &str| {
                    let (_, rest) = line
                        .split_once(&format!(" {name}="))
                        .unwrap_or_else(|| panic!("no {name} in {line:?}"));
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                };
                let file = field("file");
                let name = Path::new(&file)
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or(file);
                (name, field("lost_bytes").parse().expect("a byte count"))
            })
            .collect()
    }
}

struct Outcome {
    files: Vec<WrittenFile>,
    delivered: Vec<String>,
    runs: Vec<Run>,
    /// An upper bound on the events a restart could deliver twice.
    in_flight_at_kills: f64,
    /// Events written when the destination went down.
    written_before_outage: usize,
}

impl Outcome {
    fn written(&self) -> usize {
        self.files.last().map_or(0, |file| file.ids.end)
    }

    fn lost_ids(&self) -> BTreeSet<usize> {
        let got: BTreeSet<&String> = self.delivered.iter().collect();
        (0..self.written())
            .filter(|&i| !got.contains(&audit_id(i)))
            .collect()
    }
}

/// Runs the scenario with `buffer` (YAML lines under the sink, or nothing).
fn sidecar_outage(buffer: &str, expect_loss: bool) -> Outcome {
    let workspace = Workspace::new();
    let logs = workspace.path().join("audit");
    fs::create_dir(&logs).unwrap();
    let collector = Collector::start(&workspace, true);
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            r#"
data_dir: {data_dir}
metrics: {{ address: 127.0.0.1:0 }}
sources:
  apiserver:
    type: file
    include: ["{logs}/audit*.log"]
    glob_interval_ms: 100
    rotate_wait_secs: {ROTATE_WAIT_SECS}
sinks:
  collector:
    inputs: [apiserver]
{sink}{buffer}"#,
            data_dir = workspace.path().join("data").display(),
            logs = logs.display(),
            sink = collector.sink_options(),
        ),
    );
    let checkpoint = workspace.path().join("data/apiserver/checkpoints.json");
    let shortest_line = (0..1000).map(|i| audit_line(i).len() + 1).min().unwrap() as f64;

    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    // Each run serves /metrics on a port of its own, read from its log.
    let mut metrics = auditflow.metrics_address(Duration::from_secs(20));
    wait_ready(&metrics, Duration::from_secs(20));
    let start = Instant::now();
    let log = ApiServerLog::start(logs.clone());
    sleep_until(start + OUTAGE_STARTS);
    // Read before the switch: every event written later is written during the outage.
    let written_before_outage = log.written();
    collector.set_up(false);
    println!("outage from {written_before_outage} events written");

    let mut runs = Vec::new();
    let mut in_flight_at_kills = 0.0;
    for kill in KILLS {
        sleep_until(start + OUTAGE_STARTS + kill);
        if expect_loss {
            wait_for_a_counted_loss(&auditflow, &metrics, &checkpoint);
        }
        let text = metrics_text(&metrics);
        let lost = metric(&text, LOST_BYTES, &[("component_id", "apiserver")]).unwrap_or(0.0);
        let lag = metric(&text, LAG_BYTES, &[("component_id", "apiserver")]).unwrap_or(0.0);
        auditflow.signal(libc::SIGKILL);
        auditflow.wait_timeout(Duration::from_secs(10));
        println!(
            "SIGKILL at {} events written; {lost} lost bytes counted by that process",
            log.written()
        );
        runs.push(Run {
            stderr: auditflow.stderr(),
            lost_bytes_metric: lost,
        });
        // What the restart reads again: the bytes past the acknowledged offsets, plus what
        // was acknowledged since the checkpoint was last written (it is written every
        // 500 ms: about 1,000 events at this rate) and a batch read after the scrape.
        in_flight_at_kills += lag / shortest_line + 2.0 * 1000.0;
        auditflow = Auditflow::run(&workspace, &pipeline);
        metrics = auditflow.metrics_address(Duration::from_secs(20));
        wait_ready(&metrics, Duration::from_secs(20));
    }
    sleep_until(start + OUTAGE_STARTS + OUTAGE);
    collector.set_up(true);
    println!("destination back at {} events written", log.written());
    sleep_until(start + WRITING);
    let files = log.finish();
    let written = files.last().map_or(0, |file| file.ids.end);

    let delivered = if expect_loss {
        // Settled when every event in a file that still exists arrived and nothing read
        // awaits an acknowledgement: a deleted file still open would hold lag.
        let kept: Vec<String> = files
            .iter()
            .filter(|file| !file.deleted)
            .flat_map(|file| file.ids.clone())
            .map(audit_id)
            .collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let delivered = collector.delivered();
            let got: BTreeSet<&String> = delivered.iter().collect();
            if kept.iter().all(|id| got.contains(id)) && source_metric(&metrics, LAG_BYTES) == 0.0 {
                break delivered;
            }
            assert!(
                Instant::now() < deadline,
                "the events of the files still there, and nothing left in flight, within 120 s: {} of {} delivered",
                kept.iter().filter(|id| got.contains(id)).count(),
                kept.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    } else {
        collector.wait_for(
            Duration::from_secs(120),
            "every event written delivered",
            |delivered| delivered.iter().collect::<BTreeSet<_>>().len() >= written,
        )
    };
    let lost = source_metric(&metrics, LOST_BYTES);
    auditflow.signal(libc::SIGTERM);
    assert!(
        auditflow.wait_timeout(Duration::from_secs(30)).success(),
        "{}",
        auditflow.stderr()
    );
    runs.push(Run {
        stderr: auditflow.stderr(),
        lost_bytes_metric: lost,
    });
    Outcome {
        files,
        delivered,
        runs,
        in_flight_at_kills,
        written_before_outage,
    }
}

/// Waits until the source counts lost bytes and has written the checkpoint that records
/// them, so that a SIGKILL now finds the counter at its last value: the next deleted file
/// is closed about a rotation (1 s) later. (A kill between the count and that checkpoint
/// write, a moment of a few milliseconds, would have the restart count those bytes again.)
fn wait_for_a_counted_loss(auditflow: &Auditflow, metrics: &str, checkpoint: &Path) {
    let before = source_metric(metrics, LOST_BYTES);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut unchanged_at = SystemTime::now();
    loop {
        let asked_at = SystemTime::now();
        if source_metric(metrics, LOST_BYTES) != before {
            break;
        }
        unchanged_at = asked_at;
        assert!(
            Instant::now() < deadline,
            "no lost bytes counted within 10 s:\n{}",
            auditflow.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    while !fs::metadata(checkpoint)
        .and_then(|meta| meta.modified())
        .is_ok_and(|written| written > unchanged_at)
    {
        assert!(
            Instant::now() < deadline,
            "no checkpoint written after lost bytes were counted"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn line_bytes(i: usize) -> u64 {
    audit_line(i).len() as u64 + 1
}

#[test]
fn heavy_sidecar_outage_with_two_sigkills_loses_nothing_with_a_disk_buffer() {
    let outcome = sidecar_outage(
        "    buffer: { type: disk, max_bytes: 268435456, fsync_interval_ms: 50 }\n",
        false,
    );
    let lost = outcome.lost_ids();
    let duplicates = duplicates(&outcome.delivered);
    let deleted = outcome.files.iter().filter(|file| file.deleted).count();
    println!(
        "disk buffer: {} events written in {} files ({deleted} deleted by rotation), {} delivered, {} lost, {duplicates} duplicates (at most {} in flight at the kills)",
        outcome.written(),
        outcome.files.len(),
        outcome.delivered.len(),
        lost.len(),
        outcome.in_flight_at_kills
    );
    assert!(deleted >= 15, "the outage outlasted the rotation window");
    assert!(lost.is_empty(), "{} events never arrived", lost.len());
    let expected: BTreeSet<String> = (0..outcome.written()).map(audit_id).collect();
    let got: BTreeSet<String> = outcome.delivered.iter().cloned().collect();
    assert_eq!(got, expected, "lost or foreign events");
    assert!(
        duplicates as f64 <= outcome.in_flight_at_kills,
        "{duplicates} duplicates, more than the {} events in flight at the kills",
        outcome.in_flight_at_kills
    );
    for (i, run) in outcome.runs.iter().enumerate() {
        assert_eq!(run.lost_bytes_metric, 0.0, "process {i} counted lost bytes");
        assert_eq!(
            run.lost_lines(),
            Vec::new(),
            "process {i} logged lost bytes:\n{}",
            run.stderr
        );
    }
}

/// Without a disk buffer, auditflow's account of the loss matches what never arrived, file
/// by file and byte for byte. The source acknowledges whole batches, and the sink may
/// split one batch over several requests: when the destination goes down between two of
/// them, the part that arrived is unacknowledged like the rest and counted with it. So for
/// each deleted file the count is exactly the bytes from a line boundary to the file's end;
/// every event before that boundary arrived, every event after it that arrived was written
/// before the outage began (in a batch the outage cut), and no other event is missing.
#[test]
fn heavy_sidecar_outage_with_two_sigkills_counts_every_lost_byte_without_a_disk_buffer() {
    let outcome = sidecar_outage("", true);
    let lost = outcome.lost_ids();
    let duplicates = duplicates(&outcome.delivered);

    // What auditflow said: the error lines of every process, and each process's counter.
    let mut logged_per_file: BTreeMap<String, u64> = BTreeMap::new();
    for run in &outcome.runs {
        for (file, bytes) in run.lost_lines() {
            *logged_per_file.entry(file).or_default() += bytes;
        }
    }
    let logged: u64 = logged_per_file.values().sum();
    let metric_sum: f64 = outcome.runs.iter().map(|run| run.lost_bytes_metric).sum();
    for (i, run) in outcome.runs.iter().enumerate() {
        let logged: u64 = run.lost_lines().iter().map(|(_, bytes)| bytes).sum();
        assert_eq!(
            logged as f64, run.lost_bytes_metric,
            "process {i}: the error lines and auditflow_file_lost_bytes_total disagree"
        );
    }
    assert_eq!(metric_sum, logged as f64);

    // What the test knows, checked against each file's count.
    let (mut lost_bytes, mut cut_events, mut cut_bytes) = (0, 0, 0);
    let mut files_with_loss = 0;
    for file in &outcome.files {
        let counted = logged_per_file.remove(&file.name).unwrap_or(0);
        let mut boundary = file.ids.end;
        let mut suffix = 0;
        while suffix < counted && boundary > file.ids.start {
            boundary -= 1;
            suffix += line_bytes(boundary);
        }
        assert_eq!(
            suffix, counted,
            "{}: the {counted} bytes counted lost are not the lines from one point to the end",
            file.name
        );
        assert!(
            counted == 0 || file.deleted,
            "{} still exists, yet {counted} bytes of it were counted lost",
            file.name
        );
        files_with_loss += usize::from(counted > 0);
        for i in file.ids.clone() {
            if lost.contains(&i) {
                assert!(
                    i >= boundary,
                    "event {i} in {} never arrived and was not counted lost",
                    file.name
                );
                lost_bytes += line_bytes(i);
            } else if i >= boundary {
                assert!(
                    i < outcome.written_before_outage,
                    "event {i} of {} was written during the outage and arrived, yet was counted lost",
                    file.name
                );
                cut_events += 1;
                cut_bytes += line_bytes(i);
            }
        }
    }
    assert!(
        logged_per_file.is_empty(),
        "error lines name files the writer never wrote: {logged_per_file:?}"
    );
    let deleted = outcome.files.iter().filter(|file| file.deleted).count();
    println!(
        "memory buffer: {} events written in {} files ({deleted} deleted by rotation), {} delivered, {} lost ({lost_bytes} bytes), {duplicates} duplicates; auditflow counted {metric_sum} lost bytes in {files_with_loss} files (per process: {:?}, {} error lines): the {lost_bytes} lost and {cut_bytes} ({cut_events} events) that arrived in batches the outage cut",
        outcome.written(),
        outcome.files.len(),
        outcome.delivered.len(),
        lost.len(),
        outcome.runs.iter().map(|run| run.lost_bytes_metric).collect::<Vec<_>>(),
        outcome.runs.iter().map(|run| run.lost_lines().len()).sum::<usize>(),
    );
    assert_eq!(logged, lost_bytes + cut_bytes);
    assert!(
        lost.len() > ROTATE_EVERY_EVENTS,
        "an outage past the rotation window loses events without a disk buffer"
    );
    assert!(
        duplicates as f64 <= outcome.in_flight_at_kills,
        "{duplicates} duplicates, more than the {} events in flight at the kills",
        outcome.in_flight_at_kills
    );
}
