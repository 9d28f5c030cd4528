//! What docs/file.md promises of the `file` source, one behaviour per test, through the
//! real binary on real files: `exclude`; `?`, `[...]`, `{a,b}` and `**` globs; symbolic
//! links (to a file, to a directory, and a link re-pointed as kubelet re-points one); a
//! `.gz` of a partly read file (after a restart, and while running under back-pressure);
//! positions of vanished files forgotten after `forget_after_secs`; a file deleted with
//! bytes unread (the error line and `auditflow_file_lost_bytes_total`); and the exact count
//! of `auditflow_file_rotations_total`.
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
}

impl Seen {
    fn count(&self, line: &str) {
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

/// The paths `checkpoints.json` names.
fn checkpointed(workspace: &Workspace) -> BTreeSet<PathBuf> {
    let path = workspace.path().join("data/in/checkpoints.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    state["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| PathBuf::from(record["path"].as_str().unwrap()))
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
    let workspace = Workspace::new();
    let logs = dir(workspace.path().join("logs"));
    let live = logs.join("audit.log");
    append(&live, &audit_lines(0..TOTAL));
    let collector = Collector::start(&workspace, false);
    let pipeline = workspace.pipeline_with_metrics(
        "127.0.0.1:0",
        &format!(
            "sources:\n  in:\n    type: file\n    include: [\"{0}/*.log\", \"{0}/*.log.gz\"]\n    glob_interval_ms: 100\n    rotate_wait_secs: 1\n\
             sinks:\n  out:\n    inputs: [in]\n{1}",
            logs.display(),
            collector.sink_options()
        ),
    );
    let auditflow = Auditflow::run(&workspace, &pipeline);
    let metrics = auditflow.metrics_address(DEADLINE);
    wait_ready(&metrics, DEADLINE);
    // Reading has started and stalled: the destination refuses every request.
    wait_checkpoint(&workspace, "the live file is checkpointed", |files| {
        files.contains(&live)
    });
    let backup = logs.join("audit-2024-01-01T00-00-00.000.log");
    fs::rename(&live, &backup).unwrap();
    write_gzip(
        &logs.join("audit-2024-01-01T00-00-00.000.log.gz"),
        &fs::read(&backup).unwrap(),
    );
    fs::remove_file(&backup).unwrap();
    wait_log(
        &auditflow,
        "a matched copy of it (such as its .gz) supplies the rest",
        1,
    );

    collector.set_up(true);
    let delivered = collector.wait_for(DEADLINE, "every event delivered", |delivered| {
        delivered.iter().collect::<BTreeSet<_>>().len() >= TOTAL
    });
    let indices: BTreeSet<usize> = delivered.iter().filter_map(|id| index_of_id(id)).collect();
    assert_eq!(indices, (0..TOTAL).collect::<BTreeSet<_>>());
    assert_eq!(duplicates(&delivered), 0, "events delivered twice");
    let text = http_get(&metrics, "/metrics").unwrap().1;
    assert_eq!(
        metric(
            &text,
            "auditflow_file_lost_bytes_total",
            &[("component_id", "in")]
        ),
        Some(0.0),
        "nothing was lost:\n{}",
        auditflow.stderr()
    );
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
    let workspace = Workspace::new();
    let logs = dir(workspace.path().join("logs"));
    let live = logs.join("audit.log");
    let text = audit_lines(0..TOTAL);
    append(&live, &text);
    let collector = Collector::start(&workspace, false);
    let pipeline = workspace.pipeline_with_metrics(
        "127.0.0.1:0",
        &format!(
            "sources:\n  in:\n    type: file\n    include: [\"{}/*.log\"]\n    glob_interval_ms: 100\n    rotate_wait_secs: 1\n\
             sinks:\n  out:\n    inputs: [in]\n{}",
            logs.display(),
            collector.sink_options()
        ),
    );
    let auditflow = Auditflow::run(&workspace, &pipeline);
    let metrics = auditflow.metrics_address(DEADLINE);
    wait_ready(&metrics, DEADLINE);
    wait_checkpoint(&workspace, "the file is checkpointed", |files| {
        files.contains(&live)
    });
    let lost_series = || {
        let text = http_get(&metrics, "/metrics").unwrap().1;
        metric(
            &text,
            "auditflow_file_lost_bytes_total",
            &[("component_id", "in")],
        )
        .expect("the lost-bytes series exists from the start")
    };
    assert_eq!(lost_series(), 0.0);
    // Nothing acknowledged: the lag is the whole file.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let metrics_text = http_get(&metrics, "/metrics").unwrap().1;
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
    fs::remove_file(&live).unwrap();
    let stderr = wait_log(&auditflow, "with bytes unread: they are lost", 1);
    let line = stderr
        .lines()
        .find(|line| line.contains("with bytes unread: they are lost"))
        .unwrap();
    assert!(line.contains("ERROR"), "logged as an error: {line}");
    assert!(
        line.contains(&live.display().to_string()),
        "names the file: {line}"
    );
    let logged: u64 = line
        .split("lost_bytes=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no lost_bytes=N in {line}"));
    assert_eq!(lost_series(), logged as f64);
    assert!(logged > 0 && (logged as usize) < text.len());

    // What was read before the delete arrives; with the lost bytes it is the whole file.
    collector.set_up(true);
    let read_bytes = text.len() - logged as usize;
    let read_events = text[..read_bytes].matches('\n').count();
    assert!(
        text[..read_bytes].ends_with('\n'),
        "the loss starts at a line boundary"
    );
    let delivered = collector.wait_for(DEADLINE, "what was read delivered", |delivered| {
        delivered.len() >= read_events
    });
    let indices: BTreeSet<usize> = delivered.iter().filter_map(|id| index_of_id(id)).collect();
    assert_eq!(indices, (0..read_events).collect::<BTreeSet<_>>());
    assert_eq!(duplicates(&delivered), 0);
    assert_eq!(lost_series(), logged as f64, "counted once");
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
