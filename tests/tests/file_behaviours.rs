//! What docs/file.md promises of the `file` source, one behaviour per test, through the
//! real binary on real files: `exclude`; `?`, `[...]`, `{a,b}` and `**` globs; symbolic
//! links (to a file, to a directory, and a link re-pointed as kubelet re-points one); a
//! `.gz` of a partly read file (after a restart, and while running under back-pressure);
//! positions of vanished files forgotten after `forget_after_secs`; a file deleted with
//! bytes unread (the error line and `auditflow_file_lost_bytes_total`); a file renamed out
//! of the globs with bytes unread (supplied by a `.gz` appearing late, or counted lost when
//! its position is forgotten); an idle-closed file renamed away and back; the exact count
//! of `auditflow_file_rotations_total`; `fingerprint: device_inode` across renames; a file
//! too short for its checksum (also with `read_from: end`); a file truncated while
//! auditflow was stopped; and pretty-printed files that share their first line (reported
//! under `checksum`, read with `device_inode`, a copy told apart from another file); and
//! `stdin`, a plain file and a `.gz` counting blank, oversized and malformed lines alike.
//!
//! Each test waits for conditions (events on stdout or at a collector, a log line, a
//! metric, the checkpoint file) with generous deadlines: the machine may be loaded.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use auditflow_e2e::audit_lines::{append, audit_line, audit_lines};
use auditflow_e2e::collector::{duplicates, Collector};
use auditflow_e2e::{http_get, metric, wait_ready, Auditflow, Workspace};

const DEADLINE: Duration = Duration::from_secs(120);
const ID_PREFIX: &str = "00000000-0000-4000-8000-";

/// The index of an [`audit_line`] from its `auditID`.
fn index_of_id(id: &str) -> Option<usize> {
    id.strip_prefix(ID_PREFIX)?.parse().ok()
}

/// The index of an [`audit_line`] from a line of output.
fn index_of(line: &str) -> Option<usize> {
    let start = line.find(ID_PREFIX)? + ID_PREFIX.len();
    line.get(start..start + 12)?.parse().ok()
}

fn write_gzip(path: &Path, text: &[u8]) {
    let mut gz =
        flate2::write::GzEncoder::new(File::create(path).unwrap(), flate2::Compression::fast());
    gz.write_all(text).unwrap();
    gz.finish().unwrap();
}

fn dir(path: PathBuf) -> PathBuf {
    fs::create_dir_all(&path).unwrap();
    path
}

/// How often each event arrived on standard output, over every run.
#[derive(Default)]
struct Seen {
    counts: Mutex<BTreeMap<usize, u32>>,
    foreign: Mutex<Vec<String>>,
    /// Every line, in the order it arrived.
    lines: Mutex<Vec<String>>,
}

impl Seen {
    fn count(&self, line: &str) {
        self.lines.lock().unwrap().push(line.to_owned());
        match index_of(line) {
            Some(i) => *self.counts.lock().unwrap().entry(i).or_default() += 1,
            None => self.foreign.lock().unwrap().push(line.to_owned()),
        }
    }

    fn counts(&self) -> BTreeMap<usize, u32> {
        self.counts.lock().unwrap().clone()
    }

    /// Fails unless every event arrived exactly once, and nothing else did.
    fn assert_exactly_once(&self, expected: impl IntoIterator<Item = usize>) {
        let expected: BTreeMap<usize, u32> = expected.into_iter().map(|i| (i, 1)).collect();
        let counts = self.counts();
        let missing: Vec<usize> = expected
            .keys()
            .filter(|i| !counts.contains_key(i))
            .copied()
            .collect();
        let unexpected: Vec<usize> = counts
            .keys()
            .filter(|i| !expected.contains_key(i))
            .copied()
            .collect();
        let repeated: Vec<(usize, u32)> = counts
            .iter()
            .filter(|(_, &n)| n > 1)
            .map(|(&i, &n)| (i, n))
            .collect();
        assert!(
            missing.is_empty() && unexpected.is_empty() && repeated.is_empty(),
            "missing {} (first {:?}), not expected {} (first {:?}), repeated {} (first {:?})",
            missing.len(),
            &missing[..missing.len().min(10)],
            unexpected.len(),
            &unexpected[..unexpected.len().min(10)],
            repeated.len(),
            &repeated[..repeated.len().min(10)],
        );
        assert!(
            self.foreign.lock().unwrap().is_empty(),
            "lines that are no written event"
        );
    }

    /// Fails unless the lines of `expected` (one file's events, in the order it holds
    /// them) arrived in that order, each byte for byte as [`audit_line`] wrote it.
    fn assert_in_file_order(&self, expected: impl IntoIterator<Item = usize>) {
        let expected: Vec<usize> = expected.into_iter().collect();
        let wanted: BTreeSet<usize> = expected.iter().copied().collect();
        let arrived: Vec<String> = self
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|line| index_of(line).is_some_and(|i| wanted.contains(&i)))
            .cloned()
            .collect();
        let written: Vec<String> = expected.iter().map(|&i| audit_line(i)).collect();
        let first_difference = arrived
            .iter()
            .zip(&written)
            .position(|(got, want)| got != want);
        assert!(
            arrived == written,
            "{} lines arrived, {} written; first difference at {first_difference:?}: got {:?}",
            arrived.len(),
            written.len(),
            first_difference.map(|at| index_of(&arrived[at]))
        );
    }
}

/// `auditflow run` with a `file` source `in` (the given options) → `stdout` sink.
struct Run {
    auditflow: Auditflow,
    metrics: String,
    counter: Option<JoinHandle<()>>,
    seen: Arc<Seen>,
}

fn source_block(options: &str) -> String {
    options
        .lines()
        .map(|line| format!("    {line}\n"))
        .collect()
}

impl Run {
    fn start(workspace: &Workspace, options: &str, seen: &Arc<Seen>) -> Run {
        let pipeline = workspace.pipeline_with_metrics(
            "127.0.0.1:0",
            &format!(
                "sources:\n  in:\n    type: file\n{}sinks:\n  out:\n    type: stdout\n    inputs: [in]\n",
                source_block(options)
            ),
        );
        let mut auditflow = Auditflow::run(workspace, &pipeline);
        let output = auditflow.stdout_lines();
        let counter = {
            let seen = Arc::clone(seen);
            std::thread::spawn(move || {
                for line in output {
                    seen.count(&line);
                }
            })
        };
        let metrics = auditflow.metrics_address(DEADLINE);
        wait_ready(&metrics, DEADLINE);
        Run {
            auditflow,
            metrics,
            counter: Some(counter),
            seen: Arc::clone(seen),
        }
    }

    fn scrape(&self) -> String {
        http_get(&self.metrics, "/metrics").expect("GET /metrics").1
    }

    /// The value of a `component_id="in"` series, which must exist.
    fn metric(&self, name: &str) -> f64 {
        let text = self.scrape();
        metric(&text, name, &[("component_id", "in")])
            .unwrap_or_else(|| panic!("no series {name} for component in:\n{text}"))
    }

    fn wait(&self, what: &str, done: impl Fn(&BTreeMap<usize, u32>) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let counts = self.seen.counts();
            if done(&counts) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {DEADLINE:?} ({} distinct events arrived); stderr:\n{}",
                counts.len(),
                self.auditflow.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every event of `range` arrived at least once.
    fn wait_all(&self, range: impl IntoIterator<Item = usize> + Clone) {
        self.wait("events to arrive", |counts| {
            range.clone().into_iter().all(|i| counts.contains_key(&i))
        });
    }

    fn wait_metric(&self, name: &str, value: f64) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let now = self.metric(name);
            if now == value {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} stayed {now}, not {value}; stderr:\n{}",
                self.auditflow.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `SIGTERM`: exits 0; returns its stderr once every line it printed is counted.
    fn stop(mut self) -> String {
        self.auditflow.signal(libc::SIGTERM);
        let status = self.auditflow.wait_timeout(DEADLINE);
        let stderr = self.auditflow.stderr();
        assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
        self.counter.take().unwrap().join().unwrap();
        stderr
    }
}

/// Waits until `process`'s stderr holds `text` `times` times; returns the stderr.
fn wait_log(process: &Auditflow, text: &str, times: usize) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let stderr = process.stderr();
        if stderr.matches(text).count() >= times {
            return stderr;
        }
        assert!(
            Instant::now() < deadline,
            "{text:?} not logged {times} times within {DEADLINE:?}; stderr:\n{stderr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One record of `checkpoints.json`.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Checkpoint {
    path: PathBuf,
    fingerprint: String,
    offset: u64,
}

/// The records of `checkpoints.json`, sorted by path.
fn checkpoints(workspace: &Workspace) -> Vec<Checkpoint> {
    let path = workspace.path().join("data/in/checkpoints.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut records: Vec<Checkpoint> = state["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| Checkpoint {
            path: PathBuf::from(record["path"].as_str().unwrap()),
            fingerprint: record["fingerprint"].as_str().unwrap().to_owned(),
            offset: record["offset"].as_u64().unwrap(),
        })
        .collect();
    records.sort();
    records
}

/// The paths `checkpoints.json` names.
fn checkpointed(workspace: &Workspace) -> BTreeSet<PathBuf> {
    checkpoints(workspace)
        .into_iter()
        .map(|record| record.path)
        .collect()
}

fn wait_checkpoint(workspace: &Workspace, what: &str, done: impl Fn(&BTreeSet<PathBuf>) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let path = workspace.path().join("data/in/checkpoints.json");
        if path.exists() {
            let files = checkpointed(workspace);
            if done(&files) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {DEADLINE:?}; the checkpoint names {files:?}"
            );
        }
        assert!(Instant::now() < deadline, "{what}: no checkpoint");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `logs/audit.log` in a new workspace, holding events `0..total`, read by `auditflow run`
/// with a `file` source `in` (`include` in `logs/`, scans every 100 ms, `rotate_wait_secs:
/// 1`, then `options`) → an https sink to a [`Collector`] that is down at first:
/// back-pressure stops reading once the pipeline is full. Returned once the file is
/// checkpointed: reading has started and stalled.
struct Stalled {
    logs: PathBuf,
    live: PathBuf,
    collector: Collector,
    auditflow: Auditflow,
    metrics: String,
    /// Holds the directory while the process runs.
    _workspace: Workspace,
}

impl Stalled {
    fn start(total: usize, include: &[&str], options: &str) -> Stalled {
        let workspace = Workspace::new();
        let logs = dir(workspace.path().join("logs"));
        let live = logs.join("audit.log");
        append(&live, &audit_lines(0..total));
        let include: Vec<String> = include
            .iter()
            .map(|pattern| format!("\"{}/{pattern}\"", logs.display()))
            .collect();
        let collector = Collector::start(&workspace, false);
        let pipeline = workspace.pipeline_with_metrics(
            "127.0.0.1:0",
            &format!(
                "sources:\n  in:\n    type: file\n{}sinks:\n  out:\n    inputs: [in]\n{}",
                source_block(&format!(
                    "include: [{}]\nglob_interval_ms: 100\nrotate_wait_secs: 1\n{options}",
                    include.join(", ")
                )),
                collector.sink_options()
            ),
        );
        let auditflow = Auditflow::run(&workspace, &pipeline);
        let metrics = auditflow.metrics_address(DEADLINE);
        wait_ready(&metrics, DEADLINE);
        wait_checkpoint(&workspace, "the live file is checkpointed", |files| {
            files.contains(&live)
        });
        Stalled {
            logs,
            live,
            collector,
            auditflow,
            metrics,
            _workspace: workspace,
        }
    }

    /// Brings the destination up; fails unless events `0..total` then arrive, each once,
    /// and nothing is counted lost.
    fn delivers_each_once_and_loses_nothing(&self, total: usize) {
        self.collector.set_up(true);
        let delivered = self
            .collector
            .wait_for(DEADLINE, "every event delivered", |delivered| {
                delivered.iter().collect::<BTreeSet<_>>().len() >= total
            });
        let indices: BTreeSet<usize> = delivered.iter().filter_map(|id| index_of_id(id)).collect();
        assert_eq!(indices, (0..total).collect::<BTreeSet<_>>());
        assert_eq!(duplicates(&delivered), 0, "events delivered twice");
        assert_eq!(
            self.lost_bytes(),
            0.0,
            "bytes counted lost:\n{}",
            self.auditflow.stderr()
        );
    }

    /// `auditflow_file_lost_bytes_total`, which exists from the start.
    fn lost_bytes(&self) -> f64 {
        let text = http_get(&self.metrics, "/metrics").unwrap().1;
        metric(
            &text,
            "auditflow_file_lost_bytes_total",
            &[("component_id", "in")],
        )
        .expect("the lost-bytes series exists from the start")
    }
}

/// The first line of `stderr` that says `text`, and the `lost_bytes=N` it reports.
fn lost_line<'a>(stderr: &'a str, text: &str) -> (&'a str, u64) {
    let line = stderr.lines().find(|line| line.contains(text)).unwrap();
    let logged = line
        .split("lost_bytes=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no lost_bytes=N in {line}"));
    (line, logged)
}

#[test]
fn exclude_skips_files_that_include_matches() {
    let workspace = Workspace::new();
    let logs = dir(workspace.path().join("logs"));
    append(&logs.join("audit.log"), &audit_lines(0..50));
    append(&logs.join("audit-debug.log"), &audit_lines(50..100));
    append(&logs.join("skip-me.log"), &audit_lines(100..150));
    let options = format!(
        "include: [\"{0}/*.log\"]\nexclude: [\"{0}/*-debug.log\", \"{0}/skip-*\"]\nglob_interval_ms: 100",
        logs.display()
    );
    let seen = Arc::new(Seen::default());
    let run = Run::start(&workspace, &options, &seen);
    run.wait_all(0..50);
    // Appended after several scans: the excluded files had every chance to be read.
    append(&logs.join("audit.log"), &audit_lines(150..160));
    append(&logs.join("audit-debug.log"), &audit_lines(160..170));
    run.wait_all(150..160);
    run.stop();
    seen.assert_exactly_once((0..50).chain(150..160));
    assert_eq!(
        checkpointed(&workspace),
        BTreeSet::from([logs.join("audit.log")]),
        "only the file that is not excluded is followed"
    );
}

#[test]
fn globs_match_one_character_classes_braces_and_double_star() {
    let workspace = Workspace::new();
    let logs = dir(workspace.path().join("logs"));
    // (file, events in it, whether the globs match it)
    let layout = [
        ("kube/a.log", 0..10, true),
        ("etcd/b.log", 10..20, true),
        ("other/c.log", 20..30, false),
        ("q-1.log", 30..40, true),
        ("q-12.log", 40..50, false),
        ("r-a.log", 50..60, true),
        ("r-c.log", 60..70, false),
        ("deep/x/y/z.json", 70..80, true),
        ("deep/top.json", 80..90, true),
        ("deep/x/y/z.txt", 90..100, false),
    ];
    for (name, range, _) in &layout {
        let path = logs.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        append(&path, &audit_lines(range.clone()));
    }
    let l = logs.display();
    let options = format!(
        "include: [\"{l}/{{kube,etcd}}/*.log\", \"{l}/q-?.log\", \"{l}/r-[ab].log\", \"{l}/deep/**/*.json\"]\nglob_interval_ms: 100"
    );
    let matched: Vec<usize> = layout
        .iter()
        .filter(|(_, _, matched)| *matched)
        .flat_map(|(_, range, _)| range.clone())
        .collect();
    let seen = Arc::new(Seen::default());
    let run = Run::start(&workspace, &options, &seen);
    run.wait_all(matched.clone());
    // A later line in a matched file: several scans have passed since the first.
    append(&logs.join("kube/a.log"), &audit_lines(100..101));
    run.wait_all(100..101);
    run.stop();
    seen.assert_exactly_once(matched.into_iter().chain(100..101));
    let expected: BTreeSet<PathBuf> = layout
        .iter()
        .filter(|(_, _, matched)| *matched)
        .map(|(name, _, _)| logs.join(name))
        .collect();
    assert_eq!(checkpointed(&workspace), expected);
}

#[test]
fn symbolic_links_to_files_and_directories_are_followed() {
    let workspace = Workspace::new();
    let logs = dir(workspace.path().join("logs"));
    let real = dir(workspace.path().join("real"));
    // A link to a file outside the globs.
    append(&real.join("target.log"), &audit_lines(0..10));
    std::os::unix::fs::symlink(real.join("target.log"), logs.join("current.log")).unwrap();
    // `**` through a linked directory, next to a link that loops back.
    let tree = dir(logs.join("tree"));
    append(
        &dir(real.join("dir")).join("inner.log"),
        &audit_lines(10..20),
    );
    std::os::unix::fs::symlink(real.join("dir"), tree.join("linked")).unwrap();
    std::os::unix::fs::symlink(&tree, tree.join("loop")).unwrap();
    // A linked directory in the literal part of a pattern.
    append(&dir(real.join("dir2")).join("x.log"), &audit_lines(20..30));
    std::os::unix::fs::symlink(real.join("dir2"), logs.join("viadir")).unwrap();
    let l = logs.display();
    let options = format!(
        "include: [\"{l}/*.log\", \"{l}/tree/**/*.log\", \"{l}/viadir/*.log\"]\nglob_interval_ms: 100"
    );
    let seen = Arc::new(Seen::default());
    let run = Run::start(&workspace, &options, &seen);
    run.wait_all(0..30);
    // Reading continues through the links.
    append(&real.join("target.log"), &audit_lines(30..35));
    append(&real.join("dir/inner.log"), &audit_lines(35..40));
    run.wait_all(30..40);
    run.stop();
    seen.assert_exactly_once(0..40);
}

/// kubelet's way: a new link is made beside the old one and renamed over it, so the name
/// points at the new container's log from one moment to the next.
#[test]
fn a_re_pointed_link_drains_the_old_target_and_reads_the_new_one_from_its_start() {
    let workspace = Workspace::new();
    let logs = dir(workspace.path().join("logs"));
    let real = dir(workspace.path().join("real"));
    append(&real.join("0.log"), &audit_lines(0..100));
    let link = logs.join("current.log");
    std::os::unix::fs::symlink(real.join("0.log"), &link).unwrap();
    let options = format!(
        "include: [\"{}/*.log\"]\nglob_interval_ms: 100\nrotate_wait_secs: 60",
        logs.display()
    );
    let seen = Arc::new(Seen::default());
    let run = Run::start(&workspace, &options, &seen);
    run.wait_all(0..100);
    // The old container's last lines, then the new container's log and the re-pointed link.
    append(&real.join("0.log"), &audit_lines(100..150));
    append(&real.join("1.log"), &audit_lines(150..250));
    let tmp = logs.join(".current.log.tmp");
    std::os::unix::fs::symlink(real.join("1.log"), &tmp).unwrap();
    fs::rename(&tmp, &link).unwrap();
    run.wait_all(0..250);
    append(&real.join("1.log"), &audit_lines(250..260));
    run.wait_all(250..260);
    run.stop();
    seen.assert_exactly_once(0..260);
}

/// Read to a checkpoint, stopped; the file grows, is rotated and compressed (and the plain
/// copy removed) while auditflow is stopped: the restart reads only the `.gz`'s tail.
#[test]
fn after_a_restart_a_gz_of_a_partly_read_file_supplies_only_its_unread_tail() {
    let workspace = Workspace::new();
    let logs = dir(workspace.path().join("logs"));
    let live = logs.join("audit.log");
    append(&live, &audit_lines(0..1_000));
    let options = format!(
        "include: [\"{0}/*.log\", \"{0}/*.log.gz\"]\nglob_interval_ms: 100",
        logs.display()
    );
    let seen = Arc::new(Seen::default());
    let run = Run::start(&workspace, &options, &seen);
    run.wait_all(0..1_000);
    run.stop();

    append(&live, &audit_lines(1_000..1_500));
    let backup = logs.join("audit-2024-01-01T00-00-00.000.log");
    fs::rename(&live, &backup).unwrap();
    write_gzip(
        &logs.join("audit-2024-01-01T00-00-00.000.log.gz"),
        &fs::read(&backup).unwrap(),
    );
    fs::remove_file(&backup).unwrap();
    append(&live, &audit_lines(1_500..1_600));

    let run = Run::start(&workspace, &options, &seen);
    run.wait_all(1_000..1_600);
    let lost = run.metric("auditflow_file_lost_bytes_total");
    let stderr = run.stop();
    seen.assert_exactly_once(0..1_600);
    assert_eq!(lost, 0.0, "nothing is lost:\n{stderr}");
    assert!(
        stderr.contains("resuming file"),
        "the .gz is resumed at the checkpoint:\n{stderr}"
    );
}

/// Under back-pressure (the destination is down), kube-apiserver rotates the file the
/// source is reading, compresses the backup and removes the plain copy; the source closes
/// the plain file after `rotate_wait_secs` with most of it unread. The `.gz` supplies the
/// rest: when the destination is back, every event arrives once, and nothing is counted
/// as lost.
#[test]
fn under_back_pressure_a_gz_of_a_partly_read_file_loses_and_repeats_nothing() {
    const TOTAL: usize = 40_000;
    // Reading has started and stalled: the destination refuses every request.
    let stalled = Stalled::start(TOTAL, &["*.log", "*.log.gz"], "");
    let (logs, live) = (&stalled.logs, &stalled.live);
    let backup = logs.join("audit-2024-01-01T00-00-00.000.log");
    fs::rename(live, &backup).unwrap();
    write_gzip(
        &logs.join("audit-2024-01-01T00-00-00.000.log.gz"),
        &fs::read(&backup).unwrap(),
    );
    fs::remove_file(&backup).unwrap();
    wait_log(
        &stalled.auditflow,
        "a matched copy of it (such as its .gz) supplies the rest",
        1,
    );

    stalled.delivers_each_once_and_loses_nothing(TOTAL);
}

/// Scaled: `forget_after_secs: 10` stands for the default hour, `rotate_wait_secs: 1` for
/// 30 s. A file renamed out of the globs is drained, closed, and its position kept: renamed
/// back in time it resumes where it was. After `forget_after_secs` unseen its position is
/// gone from the checkpoint, and the same file coming back is read from its start.
#[test]
fn positions_of_vanished_files_are_forgotten_after_forget_after_secs() {
    const FORGET_AFTER: Duration = Duration::from_secs(10);
    let workspace = Workspace::new();
    let logs = dir(workspace.path().join("logs"));
    let (a, b) = (logs.join("a.log"), logs.join("b.log"));
    append(&a, &audit_lines(0..100));
    append(&b, &audit_lines(100..200));
    let options = format!(
        "include: [\"{}/*.log\"]\nglob_interval_ms: 100\nrotate_wait_secs: 1\nforget_after_secs: {}",
        logs.display(),
        FORGET_AFTER.as_secs()
    );
    let seen = Arc::new(Seen::default());
    let run = Run::start(&workspace, &options, &seen);
    run.wait_all(0..200);
    wait_checkpoint(&workspace, "both files are checkpointed", |files| {
        files.contains(&a) && files.contains(&b)
    });

    let (a_away, b_away) = (logs.join("a.old"), logs.join("b.old"));
    fs::rename(&a, &a_away).unwrap();
    fs::rename(&b, &b_away).unwrap();
    let renamed = Instant::now();
    // Both closed (drained after rotate_wait_secs, or idle before).
    run.wait_metric("auditflow_file_open_files", 0.0);
    // Closed, still remembered: b comes back and resumes after what was read.
    assert_eq!(
        checkpointed(&workspace),
        BTreeSet::from([a.clone(), b.clone()])
    );
    fs::rename(&b_away, &b).unwrap();
    append(&b, &audit_lines(200..210));
    run.wait_all(200..210);
    seen.assert_exactly_once(0..210);

    // a stays away: its position is forgotten, b's (seen on every scan) is kept.
    wait_checkpoint(&workspace, "a's position is forgotten", |files| {
        !files.contains(&a)
    });
    let forgotten_after = renamed.elapsed();
    assert!(
        forgotten_after + Duration::from_secs(1) >= FORGET_AFTER,
        "forgotten {forgotten_after:?} after the rename, before forget_after_secs"
    );
    assert_eq!(checkpointed(&workspace), BTreeSet::from([b.clone()]));
    // Back under the globs, a is a new file: read again from its start.
    fs::rename(&a_away, &a).unwrap();
    run.wait("a is read again", |counts| {
        (0..100).all(|i| counts.get(&i) == Some(&2))
    });
    run.stop();
    let counts = seen.counts();
    assert!((100..210).all(|i| counts.get(&i) == Some(&1)));
}

/// The destination is down, so back-pressure holds the source with most of the file
/// unread; the file is deleted. After `rotate_wait_secs` it is closed: an error names it
/// and the bytes lost, and `auditflow_file_lost_bytes_total` adds exactly those bytes:
/// the file's size less what was read (which arrives once the destination is back).
#[test]
fn a_file_deleted_with_unread_bytes_is_reported_and_counted_exactly() {
    const TOTAL: usize = 40_000;
    let stalled = Stalled::start(TOTAL, &["*.log"], "");
    let live = &stalled.live;
    let text = audit_lines(0..TOTAL);
    assert_eq!(stalled.lost_bytes(), 0.0);
    // Nothing acknowledged: the lag is the whole file.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let metrics_text = http_get(&stalled.metrics, "/metrics").unwrap().1;
        let lag = metric(
            &metrics_text,
            "auditflow_file_checkpoint_lag_bytes",
            &[("component_id", "in")],
        );
        if lag == Some(text.len() as f64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "checkpoint lag {lag:?}, not the file's {} bytes",
            text.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    fs::remove_file(live).unwrap();
    let stderr = wait_log(&stalled.auditflow, "with bytes unread: they are lost", 1);
    let (line, logged) = lost_line(&stderr, "with bytes unread: they are lost");
    assert!(line.contains("ERROR"), "logged as an error: {line}");
    assert!(
        line.contains(&live.display().to_string()),
        "names the file: {line}"
    );
    assert_eq!(stalled.lost_bytes(), logged as f64);
    assert!(logged > 0 && (logged as usize) < text.len());

    // What was read before the delete arrives; with the lost bytes it is the whole file.
    stalled.collector.set_up(true);
    let read_bytes = text.len() - logged as usize;
    let read_events = text[..read_bytes].matches('\n').count();
    assert!(
        text[..read_bytes].ends_with('\n'),
        "the loss starts at a line boundary"
    );
    let delivered = stalled
        .collector
        .wait_for(DEADLINE, "what was read delivered", |delivered| {
            delivered.len() >= read_events
        });
    let indices: BTreeSet<usize> = delivered.iter().filter_map(|id| index_of_id(id)).collect();
    assert_eq!(indices, (0..read_events).collect::<BTreeSet<_>>());
    assert_eq!(duplicates(&delivered), 0);
    assert_eq!(stalled.lost_bytes(), logged as f64, "counted once");
}

/// Each kind of rotation docs/file.md lists is counted once: a rename that the globs still
/// match, a truncation, a rename out of the globs. A deletion is not a rotation. (Files
/// stay open throughout: `rotate_wait_secs` is longer than the test.)
#[test]
fn rotations_are_counted_once_each() {
    let workspace = Workspace::new();
    let logs = dir(workspace.path().join("logs"));
    let live = logs.join("audit.log");
    append(&live, &audit_lines(0..100));
    let options = format!(
        "include: [\"{}/*.log\"]\nglob_interval_ms: 100\nrotate_wait_secs: 120",
        logs.display()
    );
    let seen = Arc::new(Seen::default());
    let run = Run::start(&workspace, &options, &seen);
    run.wait_all(0..100);
    assert_eq!(run.metric("auditflow_file_rotations_total"), 0.0);

    // Rename rotation, as kube-apiserver does it.
    let backup = logs.join("audit-1.log");
    fs::rename(&live, &backup).unwrap();
    append(&live, &audit_lines(100..200));
    run.wait_all(100..200);
    run.wait_metric("auditflow_file_rotations_total", 1.0);

    // Copy-truncate (the copy is not matched).
    fs::copy(&live, logs.join("audit.copy")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&live)
        .unwrap()
        .set_len(0)
        .unwrap();
    run.wait_metric("auditflow_file_rotations_total", 2.0);
    append(&live, &audit_lines(200..300));
    run.wait_all(200..300);

    // The backup renamed out of the globs.
    fs::rename(&backup, logs.join("audit-1.old")).unwrap();
    run.wait_metric("auditflow_file_rotations_total", 3.0);

    // A deletion (of an open file): not counted. A new file found afterwards shows that
    // a scan since has seen the deletion.
    append(&logs.join("extra.log"), &audit_lines(300..310));
    run.wait_all(300..310);
    fs::remove_file(logs.join("extra.log")).unwrap();
    append(&logs.join("later.log"), &audit_lines(310..320));
    run.wait_all(310..320);
    wait_log(&run.auditflow, "deleted=true", 1);
    assert_eq!(run.metric("auditflow_file_rotations_total"), 3.0);
    run.stop();
    seen.assert_exactly_once(0..320);
}

/// A malformed line is counted, logged with its `file:line`, and skipped; an empty line is
/// skipped silently; a line holding an `EventList` or an array is read as its items.
#[test]
fn malformed_empty_and_list_lines_in_a_file() {
    let workspace = Workspace::new();
    let logs = dir(workspace.path().join("logs"));
    let log = logs.join("audit.log");
    let text = format!(
        "{}\nnot json at all\n\n{{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"items\":[{},{}]}}\n[{}]\n{}\n",
        audit_line(0),
        audit_line(1),
        audit_line(2),
        audit_line(3),
        audit_line(4)
    );
    append(&log, &text);
    let options = format!(
        "include: [\"{}/*.log\"]\nglob_interval_ms: 100",
        logs.display()
    );
    let seen = Arc::new(Seen::default());
    let run = Run::start(&workspace, &options, &seen);
    run.wait_all(0..5);
    let text = run.scrape();
    let discarded = |reason: &str| {
        metric(
            &text,
            "auditflow_component_discarded_events_total",
            &[("component_id", "in"), ("reason", reason)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(discarded("malformed"), 1.0, "{text}");
    let stderr = run.stop();
    seen.assert_exactly_once(0..5);
    let location = format!("{}:2", log.display());
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("WARN"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning, for the malformed line: {warnings:#?}"
    );
    assert!(warnings[0].contains(&location), "{}", warnings[0]);
}

/// A last line without its newline is not sent; stopped there, the checkpoint ends before
/// it, and after a restart the completed line arrives whole, once.
#[test]
fn a_partial_last_line_waits_for_its_newline_across_a_restart() {
    let workspace = Workspace::new();
    let logs = dir(workspace.path().join("logs"));
    let log = logs.join("audit.log");
    let partial = audit_line(10);
    let (head, tail) = partial.split_at(partial.len() / 2);
    append(&log, &(audit_lines(0..10) + head));
    let options = format!(
        "include: [\"{}/*.log\"]\nglob_interval_ms: 100",
        logs.display()
    );
    let seen = Arc::new(Seen::default());
    let run = Run::start(&workspace, &options, &seen);
    run.wait_all(0..10);
    let malformed = |run: &Run| {
        metric(
            &run.scrape(),
            "auditflow_component_discarded_events_total",
            &[("component_id", "in"), ("reason", "malformed")],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(malformed(&run), 0.0);
    run.stop();
    seen.assert_exactly_once(0..10);
    let state: serde_json::Value = serde_json::from_slice(
        &fs::read(workspace.path().join("data/in/checkpoints.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        state["files"][0]["offset"].as_u64(),
        Some(audit_lines(0..10).len() as u64),
        "the checkpoint ends before the partial line"
    );

    append(&log, &format!("{tail}\n{}\n", audit_line(11)));
    let run = Run::start(&workspace, &options, &seen);
    run.wait_all(10..12);
    assert_eq!(malformed(&run), 0.0);
    run.stop();
    seen.assert_exactly_once(0..12);
}

fn len(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .len()
}

/// The `device_inode` fingerprint of the file at `path`, as the checkpoint writes it.
fn device_inode(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).unwrap();
    format!("device_inode:{}:{}", meta.dev(), meta.ino())
}

/// The indices of `ranges`, one range after another.
fn indices(ranges: &[std::ops::Range<usize>]) -> Vec<usize> {
    ranges.iter().flat_map(Clone::clone).collect()
}

/// `fingerprint: device_inode`: a file renamed by rotation (the globs still match it) is
/// followed under its new name and not read again, both when it is renamed while auditflow
/// runs and when it is renamed while auditflow is stopped (the restart finds it by its
/// inode and resumes at its checkpoint). The new file at the old name has a new inode: it
/// is read from its start.
#[test]
fn device_inode_follows_a_renamed_file_and_reads_a_new_inode_from_its_start() {
    let workspace = Workspace::new();
    let logs = dir(workspace.path().join("logs"));
    let live = logs.join("audit.log");
    let (first, second) = (logs.join("audit-1.log"), logs.join("audit-2.log"));
    append(&live, &audit_lines(0..100));
    let options = format!(
        "include: [\"{}/*.log\"]\nfingerprint: device_inode\nglob_interval_ms: 100\nrotate_wait_secs: 120",
        logs.display()
    );
    let seen = Arc::new(Seen::default());
    let run = Run::start(&workspace, &options, &seen);
    run.wait_all(0..100);

    // Rotated while running: the last lines written before the rename, then a new file.
    append(&live, &audit_lines(100..110));
    fs::rename(&live, &first).unwrap();
    append(&live, &audit_lines(200..250));
    run.wait_all(indices(&[100..110, 200..250]));
    run.wait_metric("auditflow_file_rotations_total", 1.0);
    append(&live, &audit_lines(250..260));
    run.wait_all(250..260);
    run.stop();
    seen.assert_exactly_once(indices(&[0..110, 200..260]));
    // Both known by their inodes, the renamed one under its new name, each read to its end.
    let record = |path: &Path| Checkpoint {
        path: path.to_owned(),
        fingerprint: device_inode(path),
        offset: len(path),
    };
    assert_eq!(checkpoints(&workspace), [record(&first), record(&live)]);

    // Rotated while stopped, after a few more lines.
    let resume_at = len(&live);
    append(&live, &audit_lines(260..270));
    fs::rename(&live, &second).unwrap();
    append(&live, &audit_lines(300..320));
    let run = Run::start(&workspace, &options, &seen);
    run.wait_all(indices(&[260..270, 300..320]));
    append(&live, &audit_lines(320..330));
    run.wait_all(320..330);
    let stderr = run.stop();

    seen.assert_exactly_once(indices(&[0..110, 200..270, 300..330]));
    for file in [0..110, 200..270, 300..330] {
        seen.assert_in_file_order(file);
    }
    let second_name = format!("file={}", second.display());
    let resumed = stderr
        .lines()
        .find(|line| line.contains("resuming file") && line.contains(&second_name))
        .unwrap_or_else(|| panic!("no \"resuming file\" line for {second_name}:\n{stderr}"));
    assert!(
        resumed.contains(&format!("offset={resume_at} ")),
        "resumed at its checkpoint, {resume_at}: {resumed}"
    );
    assert_eq!(
        checkpoints(&workspace),
        [record(&first), record(&second), record(&live)]
    );
}

/// With `fingerprint: checksum` (the default) a file is known by its first line, or by its
/// first 256 bytes: a file holding less than that, with no newline yet, has no identity. It
/// is not followed and not checkpointed (neither before nor after a restart), and nothing of
/// it is sent. Once its first line is complete it is read from its start: every event once,
/// whole, in order; the other file goes on being read once.
#[test]
fn a_file_shorter_than_its_checksum_is_read_from_its_start_once_it_grows() {
    let workspace = Workspace::new();
    let logs = dir(workspace.path().join("logs"));
    let (live, short) = (logs.join("audit.log"), logs.join("short.log"));
    append(&live, &audit_lines(0..50));
    let options = format!(
        "include: [\"{}/*.log\"]\nglob_interval_ms: 100",
        logs.display()
    );
    let seen = Arc::new(Seen::default());
    let run = Run::start(&workspace, &options, &seen);
    run.wait_all(0..50);

    let line = audit_line(50);
    let (head, tail) = line.split_at(120);
    append(&short, head);
    // A file made after the short one: the scan that finds it looks at the short one too,
    // and the checkpoint that names it names every file followed by then.
    let not_followed = |marker: &Path, index: usize, run: &Run| {
        append(marker, &audit_lines(index..index + 1));
        run.wait_all(index..index + 1);
        wait_checkpoint(&workspace, "the marker file is checkpointed", |files| {
            files.contains(marker)
        });
        assert!(
            !checkpointed(&workspace).contains(&short),
            "a file of {} bytes without a newline is followed",
            len(&short)
        );
    };
    not_followed(&logs.join("marker-1.log"), 60, &run);
    run.stop();
    assert!(!checkpointed(&workspace).contains(&short));

    let run = Run::start(&workspace, &options, &seen);
    not_followed(&logs.join("marker-2.log"), 61, &run);
    append(&short, &format!("{tail}\n{}", audit_lines(51..55)));
    run.wait_all(50..55);
    append(&live, &audit_lines(70..75));
    run.wait_all(70..75);
    let malformed = metric(
        &run.scrape(),
        "auditflow_component_discarded_events_total",
        &[("component_id", "in"), ("reason", "malformed")],
    )
    .unwrap_or(0.0);
    run.stop();

    assert_eq!(malformed, 0.0, "the start of the line was never sent alone");
    seen.assert_exactly_once(indices(&[0..55, 60..62, 70..75]));
    seen.assert_in_file_order(50..55);
    seen.assert_in_file_order(indices(&[0..50, 70..75]));
    let short_record = checkpoints(&workspace)
        .into_iter()
        .find(|record| record.path == short)
        .expect("the grown file is checkpointed");
    assert_eq!(short_record.offset, len(&short));
}

/// `read_from: end` applies to the files the first scan of the first start fingerprints.
/// A file too short for a fingerprint then (part of its first line) is read from its
/// beginning once it can be: its first event, begun before the start, is not skipped.
#[test]
fn read_from_end_reads_a_file_too_short_at_the_first_start_from_its_beginning() {
    let workspace = Workspace::new();
    let logs = dir(workspace.path().join("logs"));
    let (live, short) = (logs.join("audit.log"), logs.join("short.log"));
    append(&live, &audit_lines(0..20));
    let line = audit_line(100);
    let (head, tail) = line.split_at(120);
    append(&short, head);
    let options = format!(
        "include: [\"{}/*.log\"]\nread_from: end\nglob_interval_ms: 100",
        logs.display()
    );
    let seen = Arc::new(Seen::default());
    let run = Run::start(&workspace, &options, &seen);
    // The first scan is checkpointed at once: audit.log at its end, the short file unnamed.
    wait_checkpoint(&workspace, "the first scan is checkpointed", |files| {
        files.contains(&live)
    });
    let positions: Vec<(PathBuf, u64)> = checkpoints(&workspace)
        .into_iter()
        .map(|record| (record.path, record.offset))
        .collect();
    assert_eq!(positions, [(live.clone(), len(&live))]);

    append(&live, &audit_lines(20..25));
    run.wait_all(20..25);
    append(&short, &format!("{tail}\n{}", audit_lines(101..104)));
    run.wait_all(100..104);
    run.stop();
    seen.assert_exactly_once(indices(&[20..25, 100..104]));
    seen.assert_in_file_order(100..104);
    seen.assert_in_file_order(20..25);
}

/// What a restart made of a file truncated while auditflow was stopped.
struct Truncated {
    seen: Arc<Seen>,
    /// The lines the restart printed, in order.
    after_restart: Vec<String>,
    stderr: String,
    rotations: f64,
    lost_bytes: f64,
    /// The file's checkpointed offset before the truncation, and its size after.
    checkpoint: u64,
    size: u64,
    /// The file's size when the restart stopped.
    end: u64,
    /// The checkpoint's records after the restart, as (path, offset), sorted.
    positions: Vec<(PathBuf, u64)>,
    path: PathBuf,
}

/// `audit.log` (events 0..100) read whole and stopped; then, while auditflow is stopped, it
/// is cut to its first `kept` lines and events 1000..1010 are appended, so that its
/// checkpoint lies past its new end. The restart must go on following it (1010..1015 are
/// appended once it has read 1000..1010) and stop with exit 0.
fn truncated_while_stopped(fingerprint: &str, kept: usize) -> Truncated {
    let workspace = Workspace::new();
    let logs = dir(workspace.path().join("logs"));
    let live = logs.join("audit.log");
    append(&live, &audit_lines(0..100));
    let options = format!(
        "include: [\"{}/*.log\"]\nfingerprint: {fingerprint}\nglob_interval_ms: 100",
        logs.display()
    );
    let seen = Arc::new(Seen::default());
    let run = Run::start(&workspace, &options, &seen);
    run.wait_all(0..100);
    run.stop();
    let checkpoint = checkpoints(&workspace)[0].offset;
    assert_eq!(checkpoint, len(&live));

    OpenOptions::new()
        .write(true)
        .open(&live)
        .unwrap()
        .set_len(audit_lines(0..kept).len() as u64)
        .unwrap();
    append(&live, &audit_lines(1_000..1_010));
    let size = len(&live);
    assert!(size < checkpoint, "the checkpoint lies past the new end");

    let restart = seen.lines.lock().unwrap().len();
    let run = Run::start(&workspace, &options, &seen);
    run.wait_all(1_000..1_010);
    append(&live, &audit_lines(1_010..1_015));
    run.wait_all(1_010..1_015);
    let rotations = run.metric("auditflow_file_rotations_total");
    let lost_bytes = run.metric("auditflow_file_lost_bytes_total");
    let stderr = run.stop();
    let mut positions: Vec<(PathBuf, u64)> = checkpoints(&workspace)
        .into_iter()
        .map(|record| (record.path, record.offset))
        .collect();
    positions.sort();
    let after_restart = seen.lines.lock().unwrap()[restart..].to_vec();
    Truncated {
        seen,
        after_restart,
        stderr,
        rotations,
        lost_bytes,
        checkpoint,
        size,
        end: len(&live),
        positions,
        path: live,
    }
}

impl Truncated {
    /// The restart printed exactly `expected`, in order, byte for byte.
    fn assert_restart_printed(&self, expected: impl IntoIterator<Item = usize>) {
        let written: Vec<String> = expected.into_iter().map(audit_line).collect();
        assert!(
            self.after_restart == written,
            "after the restart: {:?}",
            self.after_restart
                .iter()
                .map(|line| index_of(line))
                .collect::<Vec<_>>()
        );
    }

    /// The checkpoint holds the file at its new end, and no other position for it.
    fn assert_checkpointed_at_its_new_end_only(&self) {
        assert_eq!(self.positions, [(self.path.clone(), self.end)]);
    }

    fn assert_no_warning_or_error(&self) {
        for level in ["ERROR", "WARN"] {
            assert!(
                !self.stderr.contains(level),
                "the restart logged {level}:\n{}",
                self.stderr
            );
        }
        assert_eq!(self.lost_bytes, 0.0, "nothing is reported lost");
    }

    /// The restart logged that the file is shorter than its checkpoint, with both numbers.
    fn assert_logged_shorter_than_checkpoint(&self) {
        let line = self
            .stderr
            .lines()
            .find(|line| line.contains("file is shorter than its checkpoint"))
            .unwrap_or_else(|| panic!("nothing logged of the truncation:\n{}", self.stderr));
        for field in [
            format!("file={}", self.path.display()),
            format!("checkpoint={}", self.checkpoint),
            format!("size={}", self.size),
        ] {
            assert!(line.contains(&field), "{field} missing from: {line}");
        }
    }
}

/// `device_inode`: the truncated file keeps its inode, so the restart recognises it, sees
/// that it is shorter than its checkpoint, logs so, counts a rotation and reads its new
/// content from the start: every new event once, in order, nothing of the old content.
#[test]
fn device_inode_a_file_truncated_while_stopped_is_read_again_from_its_start() {
    let truncated = truncated_while_stopped("device_inode", 0);
    truncated.assert_restart_printed(1_000..1_015);
    truncated
        .seen
        .assert_exactly_once(indices(&[0..100, 1_000..1_015]));
    truncated.assert_logged_shorter_than_checkpoint();
    assert_eq!(truncated.rotations, 1.0);
    truncated.assert_checkpointed_at_its_new_end_only();
    truncated.assert_no_warning_or_error();
}

/// `checksum`, the first line kept (cut at a line boundary, then written again): the same
/// file by its fingerprint, shorter than its checkpoint. Read from the start, as the
/// docs say: its first ten events come a second time, then the new ones, once each; the
/// cut is logged and counted as a rotation.
#[test]
fn checksum_a_file_cut_short_while_stopped_is_read_again_from_its_start() {
    let truncated = truncated_while_stopped("checksum", 10);
    truncated.assert_restart_printed(indices(&[0..10, 1_000..1_015]));
    let counts = truncated.seen.counts();
    assert!((0..10).all(|i| counts[&i] == 2));
    assert!((10..100).chain(1_000..1_015).all(|i| counts[&i] == 1));
    assert_eq!(counts.len(), 115);
    truncated.assert_logged_shorter_than_checkpoint();
    assert_eq!(truncated.rotations, 1.0);
    truncated.assert_checkpointed_at_its_new_end_only();
    truncated.assert_no_warning_or_error();
}

/// `checksum`, emptied and written again (copy-truncate while auditflow was stopped): a new
/// first line is a new file, read from its start; the old content was all acknowledged, so
/// nothing is reported lost. The old position stays in the checkpoint beside the new one
/// (a file that vanished is remembered for `forget_after_secs`).
#[test]
fn checksum_a_file_emptied_and_rewritten_while_stopped_is_a_new_file_read_from_its_start() {
    let truncated = truncated_while_stopped("checksum", 0);
    truncated.assert_restart_printed(1_000..1_015);
    truncated
        .seen
        .assert_exactly_once(indices(&[0..100, 1_000..1_015]));
    assert!(
        truncated.stderr.contains("following a new file"),
        "{}",
        truncated.stderr
    );
    assert!(!truncated.stderr.contains("shorter than its checkpoint"));
    assert_eq!(truncated.rotations, 0.0);
    assert_eq!(
        truncated.positions,
        [
            (truncated.path.clone(), truncated.end),
            (truncated.path.clone(), truncated.checkpoint)
        ]
    );
    truncated.assert_no_warning_or_error();
}

/// Events `range` pretty-printed as `jq .` writes them: every such file starts with the
/// line `{`, so under `fingerprint: checksum` all of them share one fingerprint.
fn pretty_events(range: std::ops::Range<usize>) -> String {
    range
        .map(|i| {
            let event: serde_json::Value = serde_json::from_str(&audit_line(i)).unwrap();
            serde_json::to_string_pretty(&event).unwrap() + "\n"
        })
        .collect()
}

const COLLISION_WARNING: &str = "share their first line";

/// `a.json` (events 0..5) and `b.json` (events 5..10), pretty-printed, read with
/// `framing: json_stream` and the given `fingerprint`; returns the workspace, the two
/// files, the run and what it printed.
fn two_pretty_files(fingerprint: &str) -> (Workspace, PathBuf, PathBuf, Run, Arc<Seen>) {
    let workspace = Workspace::new();
    let logs = dir(workspace.path().join("logs"));
    let (a, b) = (logs.join("a.json"), logs.join("b.json"));
    append(&a, &pretty_events(0..5));
    append(&b, &pretty_events(5..10));
    let options = format!(
        "include: [\"{}/*.json\"]\nframing: json_stream\nfingerprint: {fingerprint}\nglob_interval_ms: 100",
        logs.display()
    );
    let seen = Arc::new(Seen::default());
    let run = Run::start(&workspace, &options, &seen);
    (workspace, a, b, run, seen)
}

/// Lets several directory scans pass: each marker file is found by a scan that starts
/// after the previous marker's event arrived. Returns the markers' events.
fn let_scans_pass(run: &Run, logs: &Path, first: usize) -> std::ops::Range<usize> {
    for i in first..first + 3 {
        append(
            &logs.join(format!("marker-{i}.json")),
            &audit_lines(i..i + 1),
        );
        run.wait_all(i..i + 1);
    }
    first..first + 3
}

fn collisions_counted(run: &Run) -> f64 {
    metric(
        &run.scrape(),
        "auditflow_component_errors_total",
        &[
            ("component_id", "in"),
            ("error_type", "fingerprint_collision"),
        ],
    )
    .unwrap_or(0.0)
}

/// Under `fingerprint: checksum` two pretty-printed files share a fingerprint (their first
/// line is `{`). The second is another file, not a copy: it is not read, and that is not
/// silent. One warning names both files and says to use `device_inode`, once however many
/// scans pass, and `auditflow_component_errors_total{error_type="fingerprint_collision"}`
/// reads 1. The first file is read whole.
#[test]
fn checksum_two_pretty_printed_files_sharing_their_first_line_are_reported_once() {
    let (_workspace, a, b, run, seen) = two_pretty_files("checksum");
    run.wait_all(0..5);
    wait_log(&run.auditflow, COLLISION_WARNING, 1);
    let markers = let_scans_pass(&run, a.parent().unwrap(), 20);
    assert_eq!(collisions_counted(&run), 1.0);
    let stderr = run.stop();
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains(COLLISION_WARNING))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning, not one per scan:\n{stderr}"
    );
    let warning = warnings[0];
    assert!(warning.contains("WARN"), "{warning}");
    for file in [&a, &b] {
        assert!(
            warning.contains(&file.display().to_string()),
            "names {}: {warning}",
            file.display()
        );
    }
    assert!(
        warning.contains("fingerprint: device_inode") && warning.contains("not read"),
        "{warning}"
    );
    seen.assert_exactly_once(indices(&[0..5, markers]));
}

/// The same two files with `fingerprint: device_inode` (what the warning advises): every
/// event of both arrives once, and nothing is reported.
#[test]
fn device_inode_reads_two_pretty_printed_files_sharing_their_first_line() {
    let (_workspace, a, _, run, seen) = two_pretty_files("device_inode");
    run.wait_all(0..10);
    let markers = let_scans_pass(&run, a.parent().unwrap(), 20);
    assert_eq!(collisions_counted(&run), 0.0);
    let stderr = run.stop();
    assert!(!stderr.contains(COLLISION_WARNING), "{stderr}");
    seen.assert_exactly_once(indices(&[0..10, markers]));
}

/// A real copy (`cp`) of a pretty-printed file being read, under `checksum`: the same bytes, so no warning and no error count, and their events are not
/// read a second time; what is appended to the file later is read once.
#[test]
fn checksum_a_copy_of_a_pretty_printed_file_is_not_a_collision() {
    let workspace = Workspace::new();
    let logs = dir(workspace.path().join("logs"));
    let a = logs.join("a.json");
    append(&a, &pretty_events(0..5));
    let options = format!(
        "include: [\"{}/*.json\"]\nframing: json_stream\nglob_interval_ms: 100",
        logs.display()
    );
    let seen = Arc::new(Seen::default());
    let run = Run::start(&workspace, &options, &seen);
    run.wait_all(0..5);
    fs::copy(&a, logs.join("a-copy.json")).unwrap();
    let markers = let_scans_pass(&run, &logs, 20);
    append(&a, &pretty_events(5..8));
    run.wait_all(5..8);
    let more_markers = let_scans_pass(&run, &logs, 30);
    assert_eq!(collisions_counted(&run), 0.0);
    let stderr = run.stop();
    assert!(!stderr.contains(COLLISION_WARNING), "{stderr}");
    seen.assert_exactly_once(indices(&[0..8, markers, more_markers]));
}

/// What one source made of the bytes [`alike_input`] holds: what it printed, in order, and
/// what it counted.
#[derive(Debug, PartialEq)]
struct Counted {
    printed: Vec<String>,
    /// `auditflow_component_discarded_events_total` by reason.
    discarded: BTreeMap<&'static str, f64>,
    received_events: f64,
    received_bytes: f64,
}

impl Counted {
    fn counts(&self) -> (&BTreeMap<&'static str, f64>, f64, f64) {
        (&self.discarded, self.received_events, self.received_bytes)
    }
}

const ALIKE_MAX_LINE_BYTES: usize = 16_384;

/// Events 0 to 5 among every kind of line that is not one event: a blank line, a line of
/// spaces and a tab, a line over `max_line_bytes`, a malformed line, an `EventList` of two
/// items, a line ending in `\r\n`, and a run of NUL bytes.
fn alike_input() -> Vec<u8> {
    for i in 0..6 {
        assert!(audit_line(i).len() < ALIKE_MAX_LINE_BYTES);
    }
    let oversized = format!(
        "{{\"kind\":\"Event\",\"padding\":\"{}\"}}",
        "x".repeat(ALIKE_MAX_LINE_BYTES + 100)
    );
    let mut input = format!(
        "{}\n\n  \t \n{}\n{oversized}\nnot json\n\
         {{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"items\":[{},{}]}}\n{}\r\n",
        audit_line(0),
        audit_line(1),
        audit_line(2),
        audit_line(3),
        audit_line(4),
    )
    .into_bytes();
    input.extend_from_slice(&[0; 64]);
    input.extend_from_slice(format!("{}\n", audit_line(5)).as_bytes());
    input
}

/// Runs a source `in` with `options` (and `max_line_bytes`) → `stdout`, writing `stdin`
/// to its standard input (kept open until the end), until it printed six events; then
/// reads its counts.
fn count_alike(workspace: &Workspace, options: &str, stdin: &[u8]) -> Counted {
    let pipeline = workspace.pipeline_with_metrics(
        "127.0.0.1:0",
        &format!(
            "sources:\n  in:\n{}sinks:\n  out:\n    type: stdout\n    inputs: [in]\n",
            source_block(&format!(
                "{options}\nmax_line_bytes: {ALIKE_MAX_LINE_BYTES}"
            ))
        ),
    );
    let mut auditflow = Auditflow::run(workspace, &pipeline);
    let lines = auditflow.stdout_lines();
    let mut input = auditflow.take_stdin();
    input.write_all(stdin).unwrap();
    input.flush().unwrap();
    let metrics = auditflow.metrics_address(DEADLINE);
    wait_ready(&metrics, DEADLINE);
    let mut printed = Vec::new();
    while printed.len() < 6 {
        match lines.recv_timeout(DEADLINE) {
            Ok(line) => printed.push(line),
            Err(error) => panic!(
                "{options}: {} events printed ({error}); stderr:\n{}",
                printed.len(),
                auditflow.stderr()
            ),
        }
    }
    // The last line holds the last event: everything before it was counted before it
    // was sent.
    let text = http_get(&metrics, "/metrics").unwrap().1;
    let source = [("component_id", "in")];
    let discarded = ["malformed", "too_deep", "oversized", "nul_padding"]
        .into_iter()
        .map(|reason| {
            let labels = [("component_id", "in"), ("reason", reason)];
            let count = metric(&text, "auditflow_component_discarded_events_total", &labels);
            (reason, count.unwrap_or(0.0))
        })
        .collect();
    let counted = Counted {
        printed,
        discarded,
        received_events: metric(&text, "auditflow_component_received_events_total", &source)
            .unwrap_or_else(|| panic!("{options}: no received series:\n{text}")),
        received_bytes: metric(&text, "auditflow_component_received_bytes_total", &source)
            .unwrap_or_else(|| panic!("{options}: no received bytes series:\n{text}")),
    };
    drop(input);
    auditflow.signal(libc::SIGTERM);
    let status = auditflow.wait_timeout(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", auditflow.stderr());
    counted
}

/// `stdin`, a plain file and a `.gz` file frame and decode lines with the same code, and
/// count alike what is not an event: the same bytes give the same events, byte for byte
/// and in order, and the same `discarded` and `received` counts. Blank and whitespace-only
/// lines are skipped uncounted; a line over `max_line_bytes` is one `oversized` record;
/// NUL padding is counted once and is no record; an `EventList` line is two events.
#[test]
fn stdin_files_and_gzip_count_blank_and_oversized_lines_alike() {
    let input = alike_input();
    let from_stdin = count_alike(&Workspace::new(), "type: stdin", &input);

    let workspace = Workspace::new();
    let logs = dir(workspace.path().join("logs"));
    fs::write(logs.join("audit.log"), &input).unwrap();
    let from_file = count_alike(
        &workspace,
        &format!(
            "type: file\ninclude: [\"{}/*.log\"]\nglob_interval_ms: 100",
            logs.display()
        ),
        b"",
    );

    let workspace = Workspace::new();
    let logs = dir(workspace.path().join("logs"));
    write_gzip(&logs.join("audit.log.gz"), &input);
    let from_gzip = count_alike(
        &workspace,
        &format!(
            "type: file\ninclude: [\"{}/*.gz\"]\nglob_interval_ms: 100",
            logs.display()
        ),
        b"",
    );

    let expected: Vec<String> = (0..6).map(audit_line).collect();
    assert_eq!(from_stdin.printed, expected);
    assert_eq!(
        from_stdin.discarded,
        BTreeMap::from([
            ("malformed", 1.0),
            ("too_deep", 0.0),
            ("oversized", 1.0),
            ("nul_padding", 1.0)
        ])
    );
    // Six events, the malformed line and the oversized one.
    assert_eq!(from_stdin.received_events, 8.0);
    assert_eq!(from_stdin.received_bytes, input.len() as f64);
    for (what, counted) in [("a plain file", &from_file), ("a .gz file", &from_gzip)] {
        assert!(
            counted.printed == from_stdin.printed,
            "{what} printed other lines than stdin"
        );
        assert_eq!(
            counted.counts(),
            from_stdin.counts(),
            "{what} counts unlike stdin (discarded, received events, received bytes)"
        );
    }
}

/// Under back-pressure (the destination is down) a file is renamed out of the globs and
/// closed after `rotate_wait_secs` with most of it unread. Only then does a `.gz` of it
/// appear (compressed late, as logrotate's `delaycompress` or a slow compression leaves
/// it), and the plain file is removed. The `.gz` supplies the unread tail: every event
/// arrives once, and as nothing was lost, `auditflow_file_lost_bytes_total` stays 0.
#[test]
fn a_gz_appearing_after_its_file_was_closed_with_bytes_unread_is_not_counted_lost() {
    const TOTAL: usize = 40_000;
    let stalled = Stalled::start(TOTAL, &["*.log", "*.gz"], "");
    let (logs, live) = (&stalled.logs, &stalled.live);
    // Renamed out of the globs (`*.log` does not match `audit.log.1`), drained for
    // rotate_wait_secs, then closed with bytes unread: no copy of it exists yet.
    let backup = logs.join("audit.log.1");
    fs::rename(live, &backup).unwrap();
    wait_log(
        &stalled.auditflow,
        "closing a renamed or deleted file after rotate_wait_secs with bytes unread",
        1,
    );
    write_gzip(&logs.join("audit.log.1.gz"), &fs::read(&backup).unwrap());
    fs::remove_file(&backup).unwrap();

    stalled.delivers_each_once_and_loses_nothing(TOTAL);
}

/// A file read to its end is closed once idle for `rotate_wait_secs`. Renamed out of the
/// globs while closed, it loses nothing; renamed back, it resumes where it was and is not
/// read again; a new file taking its name is read from its start, once. A closed file's
/// rename is not seen, so it is not counted as a rotation (nor twice when it comes back).
#[test]
fn an_idle_closed_file_renamed_away_is_neither_lost_nor_read_again() {
    let workspace = Workspace::new();
    let logs = dir(workspace.path().join("logs"));
    let live = logs.join("audit.log");
    let away = logs.join("audit.old");
    append(&live, &audit_lines(0..100));
    let options = format!(
        "include: [\"{0}/*.log\", \"{0}/marker-*.json\"]\nglob_interval_ms: 100\nrotate_wait_secs: 1",
        logs.display()
    );
    let seen = Arc::new(Seen::default());
    let run = Run::start(&workspace, &options, &seen);
    run.wait_all(0..100);
    run.wait_metric("auditflow_file_open_files", 0.0);

    // Away and back, with scans in between that no longer find it.
    fs::rename(&live, &away).unwrap();
    let markers = let_scans_pass(&run, &logs, 1_000);
    run.wait_metric("auditflow_file_open_files", 0.0);
    fs::rename(&away, &live).unwrap();
    append(&live, &audit_lines(100..110));
    run.wait_all(100..110);
    run.wait_metric("auditflow_file_open_files", 0.0);

    // Away again, and a new file takes its name.
    fs::rename(&live, &away).unwrap();
    let more_markers = let_scans_pass(&run, &logs, 2_000);
    append(&live, &audit_lines(110..200));
    run.wait_all(110..200);
    let more_scans = let_scans_pass(&run, &logs, 3_000);
    assert_eq!(run.metric("auditflow_file_lost_bytes_total"), 0.0);
    assert_eq!(run.metric("auditflow_file_rotations_total"), 0.0);
    run.stop();
    seen.assert_exactly_once(
        (0..200)
            .chain(markers)
            .chain(more_markers)
            .chain(more_scans),
    );
    seen.assert_in_file_order(0..110);
    seen.assert_in_file_order(110..200);
}

/// Under back-pressure a file is renamed out of the globs and closed after
/// `rotate_wait_secs` with bytes unread. It is still on disk, so nothing is counted yet;
/// when neither it nor a copy of it came back within `forget_after_secs`, the unread bytes
/// are counted lost, once, with an error naming the file; what was read arrives.
#[test]
fn a_file_renamed_away_with_bytes_unread_is_counted_lost_when_its_position_is_forgotten() {
    const TOTAL: usize = 40_000;
    let stalled = Stalled::start(TOTAL, &["*.log"], "forget_after_secs: 3");
    let (logs, live) = (&stalled.logs, &stalled.live);
    let text = audit_lines(0..TOTAL);
    fs::rename(live, logs.join("audit.log.1")).unwrap();
    wait_log(
        &stalled.auditflow,
        "closing a renamed or deleted file after rotate_wait_secs with bytes unread",
        1,
    );
    // What was read before the rename arrives; the batches in flight are acknowledged.
    stalled.collector.set_up(true);
    let stderr = wait_log(&stalled.auditflow, "with bytes unread: they are lost", 1);
    let (line, logged) = lost_line(&stderr, "with bytes unread: they are lost");
    assert!(line.contains("ERROR"), "logged as an error: {line}");
    assert!(
        line.contains(&live.display().to_string()),
        "names the file: {line}"
    );
    assert!(
        line.contains("forget_after_secs"),
        "counted when the position is forgotten, not when the file is closed: {line}"
    );
    assert_eq!(stalled.lost_bytes(), logged as f64);
    assert!(logged > 0 && (logged as usize) < text.len());

    // With the lost bytes, what was read is the whole file.
    let read_events = text[..text.len() - logged as usize].matches('\n').count();
    let delivered = stalled
        .collector
        .wait_for(DEADLINE, "what was read delivered", |delivered| {
            delivered.len() >= read_events
        });
    let indices: BTreeSet<usize> = delivered.iter().filter_map(|id| index_of_id(id)).collect();
    assert_eq!(indices, (0..read_events).collect::<BTreeSet<_>>());
    assert_eq!(duplicates(&delivered), 0);
    assert_eq!(stalled.lost_bytes(), logged as f64, "counted once");
}
