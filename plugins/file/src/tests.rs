//! The source over real files in a temporary directory, with a channel standing in for the
//! rest of the pipeline so that each test decides when batches are acknowledged.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use auditflow_core::channel::{self, Receiver};
use auditflow_core::{
    Batch, BatchStatus, BuildContext, ComponentError, Output, Shutdown, ShutdownTrigger,
    SourceConfig, SourceContext, Telemetry, Validate,
};
use auditflow_testkit::RecordingTelemetry;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::checkpoint::CheckpointStore;
use crate::FileConfig;

/// One run of the source over `dir/logs`, with its state in `dir/state`.
struct Running {
    trigger: ShutdownTrigger,
    input: Receiver,
    task: JoinHandle<Result<(), ComponentError>>,
    counts: Arc<RecordingTelemetry>,
}

fn config(dir: &Path, extra: serde_json::Value) -> FileConfig {
    let mut options = json!({
        "include": [format!("{}/logs/*.log*", dir.display())],
        "glob_interval_ms": 50,
        "rotate_wait_secs": 1,
    });
    for (key, value) in extra.as_object().unwrap() {
        options[key] = value.clone();
    }
    serde_json::from_value(options).unwrap()
}

fn start(dir: &Path, extra: serde_json::Value) -> Running {
    let counts = Arc::new(RecordingTelemetry::default());
    let telemetry: Arc<dyn Telemetry> = counts.clone();
    let source = config(dir, extra)
        .build(BuildContext {
            telemetry: Arc::clone(&telemetry),
            ..BuildContext::unobserved("logs", dir.join("state"))
        })
        .unwrap();
    let (tx, input) = channel::channel(2, Arc::clone(&telemetry));
    let (trigger, shutdown) = Shutdown::new();
    let cx = SourceContext {
        id: "logs".into(),
        out: Output::new(vec![tx], Arc::clone(&telemetry)),
        shutdown,
        telemetry,
        dead_letter: auditflow_core::DeadLetterOutput::disconnected("logs"),
    };
    Running {
        trigger,
        input,
        task: tokio::spawn(source.run(cx)),
        counts,
    }
}

/// Writes `bytes` gzipped to `path`, as a log rotator's compressed backup.
fn write_gz(path: &Path, bytes: &[u8]) {
    let mut gz = flate2::write::GzEncoder::new(fs::File::create(path).unwrap(), Default::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap();
}

/// A source over `dir/logs` that has read the five lines `a0..a4` of `logs/audit.log`:
/// returns the folder, the log and the running source.
async fn reading_five_lines(dir: &Path) -> (PathBuf, PathBuf, Running) {
    let logs = logs(dir);
    let log = logs.join("audit.log");
    append(&log, &lines("a", 0..5));
    let mut source = start(dir, json!({}));
    assert_eq!(source.ids(5).await, ids("a", 0..5));
    (logs, log, source)
}

impl Running {
    /// The next batch, failing after a few seconds.
    async fn batch(&mut self) -> Batch {
        tokio::time::timeout(Duration::from_secs(10), self.input.recv())
            .await
            .expect("a batch within 10 s")
            .expect("the source is running")
    }

    /// Collects `n` events' auditIDs, acknowledging each batch.
    async fn ids(&mut self, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        while ids.len() < n {
            let batch = self.batch().await;
            ids.extend(
                batch
                    .events
                    .iter()
                    .map(|event| event.get_str("auditID").unwrap().to_owned()),
            );
            batch.resolve(BatchStatus::Delivered);
        }
        ids
    }

    /// Nothing more arrives for a while.
    async fn quiet(&mut self) {
        let next = tokio::time::timeout(Duration::from_millis(600), self.input.recv()).await;
        if let Ok(Some(batch)) = next {
            panic!("unexpected batch of {} events", batch.len());
        }
    }

    async fn stop(mut self) {
        self.trigger.trigger();
        // Acknowledge what is still coming so that the final checkpoint includes it.
        while let Some(batch) = self.input.recv().await {
            batch.resolve(BatchStatus::Delivered);
        }
        self.task.await.unwrap().unwrap();
    }
}

fn line(id: &str) -> String {
    format!(
        "{{\"kind\":\"Event\",\"auditID\":\"{id}\",\"verb\":\"get\",\"pad\":\"{}\"}}\n",
        "µ".repeat(40)
    )
}

fn append(path: &Path, text: &str) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

fn lines(prefix: &str, range: std::ops::Range<usize>) -> String {
    range.map(|i| line(&format!("{prefix}{i}"))).collect()
}

fn ids(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

fn logs(dir: &Path) -> PathBuf {
    let logs = dir.join("logs");
    fs::create_dir_all(&logs).unwrap();
    logs
}

/// The offset the checkpoint in `dir/state` holds for `file` (0 when it names no such file).
fn checkpoint_offset(dir: &Path, file: &Path) -> u64 {
    let store = CheckpointStore::open(&dir.join("state")).unwrap();
    store
        .load()
        .unwrap()
        .unwrap_or_default()
        .iter()
        .filter(|record| record.path == file)
        .map(|record| record.offset)
        .sum()
}

/// Waits until the checkpoint holds `offset` for `file`, failing after 20 s.
async fn wait_for_checkpoint(dir: &Path, file: &Path, offset: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let checkpointed = checkpoint_offset(dir, file);
        if checkpointed == offset {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the checkpoint holds {checkpointed} for {}, not {offset}, after 20 s",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

#[tokio::test]
async fn reads_every_line_and_waits_for_a_partial_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = logs(dir.path()).join("audit.log");
    append(&log, &lines("a", 0..3));
    let mut source = start(dir.path(), json!({}));
    assert_eq!(source.ids(3).await, ids("a", 0..3));
    let partial = line("a3");
    append(&log, &partial[..20]);
    source.quiet().await;
    append(&log, &partial[20..]);
    assert_eq!(source.ids(1).await, ids("a", 3..4));
    source.stop().await;
}

#[tokio::test]
async fn malformed_and_oversized_lines_are_counted_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let log = logs(dir.path()).join("audit.log");
    let long = format!("{{\"auditID\":\"long\",\"x\":\"{}\"}}\n", "x".repeat(5000));
    append(
        &log,
        &format!("{}not json\n[1,2]\n{long}{}", line("a0"), line("a1")),
    );
    let mut source = start(dir.path(), json!({"max_line_bytes": 1000}));
    assert_eq!(source.ids(2).await, ids("a", 0..2));
    // `not json`, and the two items of `[1,2]` (an array is read as its items).
    assert_eq!(source.counts.discarded_events("malformed"), 3);
    assert_eq!(source.counts.discarded_events("oversized"), 1);
    source.stop().await;
}

#[tokio::test]
async fn the_checkpoint_never_passes_an_unacknowledged_batch() {
    let dir = tempfile::tempdir().unwrap();
    let log = logs(dir.path()).join("audit.log");
    append(&log, &lines("a", 0..10));
    let mut source = start(dir.path(), json!({}));
    let first = source.batch().await;
    append(&log, &lines("b", 0..10));
    let second = source.batch().await;
    assert_eq!(second.events[0].get_str("auditID"), Some("b0"));
    // The later batch is delivered first: the checkpoint must wait for the earlier one.
    second.resolve(BatchStatus::Delivered);
    // A batch from another file, delivered after the second: once the checkpoint holds
    // it, the source has taken the second's acknowledgement too (in the order given).
    let other = log.with_file_name("other.log");
    append(&other, &lines("c", 0..3));
    let third = source.batch().await;
    assert_eq!(third.events[0].get_str("auditID"), Some("c0"));
    third.resolve(BatchStatus::Delivered);
    wait_for_checkpoint(dir.path(), &other, len(&other)).await;
    assert_eq!(checkpoint_offset(dir.path(), &log), 0);
    first.resolve(BatchStatus::Delivered);
    wait_for_checkpoint(dir.path(), &log, len(&log)).await;
    source.stop().await;
}

#[tokio::test]
async fn a_restart_resumes_after_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let log = logs(dir.path()).join("audit.log");
    append(&log, &lines("a", 0..5));
    let mut source = start(dir.path(), json!({}));
    assert_eq!(source.ids(5).await, ids("a", 0..5));
    source.stop().await;
    append(&log, &lines("a", 5..8));
    let mut source = start(dir.path(), json!({}));
    assert_eq!(source.ids(3).await, ids("a", 5..8));
    source.quiet().await;
    source.stop().await;
}

#[tokio::test]
async fn an_unacknowledged_batch_is_read_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = logs(dir.path()).join("audit.log");
    append(&log, &lines("a", 0..5));
    let mut source = start(dir.path(), json!({}));
    let batch = source.batch().await;
    assert_eq!(batch.len(), 5);
    drop(batch); // lost in the pipeline: Errored
    source.stop().await;
    let mut source = start(dir.path(), json!({}));
    assert_eq!(source.ids(5).await, ids("a", 0..5));
    source.stop().await;
}

#[tokio::test]
async fn rename_rotation_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (logs, log, mut source) = reading_five_lines(dir.path()).await;
    // Lines written just before the rename are read from the renamed file.
    append(&log, &lines("a", 5..8));
    fs::rename(&log, logs.join("audit-2024-01-01T00-00-00.000.log")).unwrap();
    append(&log, &lines("b", 0..4));
    let mut got = source.ids(7).await;
    got.sort();
    let mut want = [ids("a", 5..8), ids("b", 0..4)].concat();
    want.sort();
    assert_eq!(got, want);
    source.quiet().await;
    source.stop().await;
}

#[tokio::test]
async fn copy_truncate_reads_the_new_content_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = logs(dir.path()).join("audit.log");
    append(&log, &lines("a", 0..20));
    let mut source = start(dir.path(), json!({}));
    assert_eq!(source.ids(20).await, ids("a", 0..20));
    fs::copy(&log, dir.path().join("audit.log.1")).unwrap();
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&log)
        .unwrap();
    // Whether the source looks between the truncate and the append or only after, the
    // file is shorter than what was read from it: either way it is read from the start.
    append(&log, &lines("b", 0..3));
    assert_eq!(source.ids(3).await, ids("b", 0..3));
    source.quiet().await;
    source.stop().await;
}

#[tokio::test]
async fn a_matched_copy_supplies_what_was_not_read_before_the_truncate() {
    let dir = tempfile::tempdir().unwrap();
    let logs = logs(dir.path());
    let log = logs.join("audit.log");
    append(&log, &lines("a", 0..3));
    let mut source = start(dir.path(), json!({}));
    assert_eq!(source.ids(3).await, ids("a", 0..3));
    // Appended, copied and truncated well within one poll interval, so the source usually
    // reads a3..a5 from the copy; if it polled in between, the copy is known and skipped.
    append(&log, &lines("a", 3..6));
    fs::copy(&log, logs.join("audit.log.1")).unwrap();
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&log)
        .unwrap();
    append(&log, &lines("b", 0..2));
    let mut got = source.ids(5).await;
    got.sort();
    let mut want = [ids("a", 3..6), ids("b", 0..2)].concat();
    want.sort();
    assert_eq!(got, want);
    source.quiet().await;
    source.stop().await;
}

#[tokio::test]
async fn a_gzipped_backup_is_read_once() {
    let dir = tempfile::tempdir().unwrap();
    let logs = logs(dir.path());
    let text = lines("z", 0..50);
    write_gz(
        &logs.join("audit-2024-01-01T00-00-00.000.log.gz"),
        text.as_bytes(),
    );
    let mut source = start(dir.path(), json!({}));
    assert_eq!(source.ids(50).await, ids("z", 0..50));
    source.quiet().await;
    source.stop().await;
    // Known by its fingerprint after a restart: not read again.
    let mut source = start(dir.path(), json!({}));
    source.quiet().await;
    source.stop().await;
}

#[tokio::test]
async fn read_from_end_skips_what_was_there_at_the_first_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = logs(dir.path()).join("audit.log");
    append(&log, &lines("old", 0..5));
    let mut source = start(dir.path(), json!({"read_from": "end"}));
    // The first scan checkpoints where reading starts: the end of what is there.
    wait_for_checkpoint(dir.path(), &log, len(&log)).await;
    append(&log, &lines("new", 0..2));
    assert_eq!(source.ids(2).await, ids("new", 0..2));
    source.stop().await;
    // Not the first start any more: a new file is read whole.
    append(&log, &lines("new", 2..3));
    append(&dir.path().join("logs/other.log"), &lines("other", 0..2));
    let mut source = start(dir.path(), json!({"read_from": "end"}));
    let mut got = source.ids(3).await;
    got.sort();
    assert_eq!(got, vec!["new2", "other0", "other1"]);
    source.stop().await;
}

#[tokio::test]
async fn device_inode_fingerprints_follow_renames_too() {
    let dir = tempfile::tempdir().unwrap();
    let logs = logs(dir.path());
    let log = logs.join("audit.log");
    append(&log, &lines("a", 0..2));
    let mut source = start(dir.path(), json!({"fingerprint": "device_inode"}));
    assert_eq!(source.ids(2).await, ids("a", 0..2));
    fs::rename(&log, logs.join("audit-1.log")).unwrap();
    append(&logs.join("audit-1.log"), &lines("a", 2..3));
    assert_eq!(source.ids(1).await, ids("a", 2..3));
    source.stop().await;
}

/// The field and message of each problem `validate` finds with `options` added to an
/// `include`.
fn duration_problems(options: serde_json::Value) -> Vec<(String, String)> {
    let mut all = json!({"include": ["/var/log/audit/*.log"]});
    all.as_object_mut()
        .unwrap()
        .extend(options.as_object().unwrap().clone());
    serde_json::from_value::<FileConfig>(all)
        .unwrap()
        .validate()
        .into_iter()
        .map(|error| (error.field.unwrap_or_default(), error.message))
        .collect()
}

#[test]
fn a_glob_interval_of_zero_is_a_validate_error() {
    assert_eq!(
        duration_problems(json!({"glob_interval_ms": 0})),
        [(
            "glob_interval_ms".to_owned(),
            "must be between 1 and 3600000 milliseconds (1 ms to 1 h), found 0".to_owned()
        )]
    );
}

#[test]
fn a_rotate_wait_past_one_day_is_a_validate_error() {
    assert!(duration_problems(json!({"rotate_wait_secs": 0})).is_empty());
    assert!(duration_problems(json!({"rotate_wait_secs": 86_400})).is_empty());
    assert_eq!(
        duration_problems(json!({"rotate_wait_secs": u64::MAX})),
        [(
            "rotate_wait_secs".to_owned(),
            "must be between 0 and 86400 seconds (0 s to 1 day), found 18446744073709551615"
                .to_owned()
        )]
    );
}

#[test]
fn a_forget_after_past_30_days_is_a_validate_error() {
    assert_eq!(
        duration_problems(
            json!({"forget_after_secs": 30 * 86_400 + 1, "glob_interval_ms": 3_600_001})
        ),
        [
            (
                "glob_interval_ms".to_owned(),
                "must be between 1 and 3600000 milliseconds (1 ms to 1 h), found 3600001"
                    .to_owned()
            ),
            (
                "forget_after_secs".to_owned(),
                "must be between 1 and 2592000 seconds (1 s to 30 days), found 2592001".to_owned()
            ),
        ]
    );
}

/// The field of each problem `validate` finds with `options`.
fn problem_fields(options: serde_json::Value) -> Vec<String> {
    serde_json::from_value::<FileConfig>(options)
        .unwrap()
        .validate()
        .into_iter()
        .filter_map(|e| e.field)
        .collect()
}

#[test]
fn options_are_checked() {
    let fields = problem_fields(json!({
        "include": ["/var/log/[audit/*.log"],
        "max_line_bytes": 0,
        "forget_after_secs": 0,
    }));
    assert_eq!(
        fields,
        vec!["include[0]", "max_line_bytes", "forget_after_secs"]
    );
    let unknown =
        serde_json::from_value::<FileConfig>(json!({"include": ["a"], "read_from": "middle"}));
    assert!(unknown.is_err());
}

/// Each glob option used to stop at its first bad pattern: with two bad `include`
/// patterns only `include[0]` was reported, and `auditflow validate` had to be run again
/// to find the second.
#[test]
fn validate_reports_every_error_not_only_the_first() {
    let fields = problem_fields(json!({
        "include": ["/var/log/[audit/*.log", "/var/log/audit/*.log", "/var/log/{a/*.log"],
        "exclude": ["/var/log/[old"],
        "max_line_bytes": 0,
    }));
    assert_eq!(
        fields,
        ["include[0]", "include[2]", "exclude[0]", "max_line_bytes"]
    );
}

/// The pause outlasts `rotate_wait_secs` (1 s here): a file idle at its end when the pause
/// began, and written to meanwhile, must not be closed as finished with those lines unread.
/// (The flag is process-wide: nextest runs each test in a process of its own.)
#[tokio::test]
async fn over_the_memory_limit_nothing_more_is_read_until_memory_falls() {
    let dir = tempfile::tempdir().unwrap();
    let log = logs(dir.path()).join("audit.log");
    append(&log, &lines("a", 0..3));
    let mut source = start(dir.path(), json!({}));
    assert_eq!(source.ids(3).await, ids("a", 0..3));
    auditflow_core::memory::set_limited(true);
    append(&log, &lines("a", 3..6));
    source.quiet().await;
    source.quiet().await;
    auditflow_core::memory::set_limited(false);
    assert_eq!(source.ids(3).await, ids("a", 3..6));
    source.stop().await;
}

mod runtime;

/// Events `prefix{range}` pretty-printed as `jq .` writes them: every such file starts with
/// the line `{`, so all of them share one `checksum` fingerprint.
fn pretty(prefix: &str, range: std::ops::Range<usize>) -> String {
    range
        .map(|i| {
            let event = json!({"kind": "Event", "auditID": format!("{prefix}{i}"), "verb": "get"});
            serde_json::to_string_pretty(&event).unwrap() + "\n"
        })
        .collect()
}

/// How often the source counted a fingerprint collision.
fn collisions(source: &Running) -> usize {
    source
        .counts
        .recorded()
        .errored
        .iter()
        .filter(|(error_type, _)| *error_type == "fingerprint_collision")
        .map(|(_, n)| n)
        .sum()
}

/// Lets several scans pass: each file of plain lines appended here is found by a scan that
/// starts after the previous one's events arrived.
async fn let_scans_pass(source: &mut Running, logs: &Path) {
    for marker in ["marker-1", "marker-2", "marker-3"] {
        append(&logs.join(format!("{marker}.log")), &lines(marker, 0..1));
        assert_eq!(source.ids(1).await, ids(marker, 0..1));
    }
}

#[tokio::test]
async fn a_file_sharing_only_its_first_line_with_a_file_being_read_is_reported_once_not_skipped_silently(
) {
    let dir = tempfile::tempdir().unwrap();
    let logs = logs(dir.path());
    append(&logs.join("a.log"), &pretty("a", 0..3));
    let mut source = start(dir.path(), json!({"framing": "json_stream"}));
    assert_eq!(source.ids(3).await, ids("a", 0..3));
    append(&logs.join("b.log"), &pretty("b", 0..3));
    let_scans_pass(&mut source, &logs).await;
    assert_eq!(collisions(&source), 1, "counted once, not once per scan");
    // Reading the first file goes on.
    append(&logs.join("a.log"), &pretty("a", 3..4));
    assert_eq!(source.ids(1).await, ids("a", 3..4));
    let_scans_pass(&mut source, &logs).await;
    assert_eq!(collisions(&source), 1);
    source.stop().await;
}

#[tokio::test]
async fn after_a_restart_a_file_sharing_only_its_first_line_does_not_take_the_other_files_position()
{
    let dir = tempfile::tempdir().unwrap();
    let logs = logs(dir.path());
    let (a, b) = (logs.join("a.log"), logs.join("b.log"));
    append(&a, &pretty("a", 0..3));
    let mut source = start(dir.path(), json!({"framing": "json_stream"}));
    assert_eq!(source.ids(3).await, ids("a", 0..3));
    source.stop().await;
    // Longer than what was read of `a.log`, and older: the first scan finds it first, while
    // the entry it matches is closed. Taken for `a.log`, it would be read from that offset.
    append(&b, &pretty("b", 0..5));
    let older = fs::metadata(&a).unwrap().modified().unwrap() - Duration::from_secs(60);
    fs::File::options()
        .write(true)
        .open(&b)
        .unwrap()
        .set_modified(older)
        .unwrap();
    append(&a, &pretty("a", 3..5));
    let mut source = start(dir.path(), json!({"framing": "json_stream"}));
    assert_eq!(source.ids(2).await, ids("a", 3..5));
    let_scans_pass(&mut source, &logs).await;
    assert_eq!(collisions(&source), 1);
    source.stop().await;
}

#[tokio::test]
async fn a_copy_of_a_pretty_printed_file_is_neither_read_twice_nor_reported() {
    let dir = tempfile::tempdir().unwrap();
    let logs = logs(dir.path());
    let a = logs.join("a.log");
    append(&a, &pretty("a", 0..3));
    let mut source = start(dir.path(), json!({"framing": "json_stream"}));
    assert_eq!(source.ids(3).await, ids("a", 0..3));
    fs::copy(&a, logs.join("a-copy.log")).unwrap();
    fs::hard_link(&a, logs.join("a-link.log")).unwrap();
    let_scans_pass(&mut source, &logs).await;
    assert_eq!(collisions(&source), 0);
    source.stop().await;
    // After a restart too, with the first file found after its copy.
    let mut source = start(dir.path(), json!({"framing": "json_stream"}));
    let_scans_pass(&mut source, &logs).await;
    assert_eq!(collisions(&source), 0);
    source.stop().await;
}

#[tokio::test]
async fn a_file_sharing_only_its_first_line_with_a_deleted_file_does_not_take_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let logs = logs(dir.path());
    let (a, b) = (logs.join("a.log"), logs.join("b.log"));
    append(&a, &pretty("a", 0..3));
    let options = json!({"framing": "json_stream", "rotate_wait_secs": 0});
    let mut source = start(dir.path(), options);
    assert_eq!(source.ids(3).await, ids("a", 0..3));
    fs::remove_file(&a).unwrap();
    // The scan that finds the first marker also finds `a.log` gone and, with no wait,
    // closes it: its entry is kept, with its position, and nothing is left at its path.
    let_scans_pass(&mut source, &logs).await;
    // Longer than what was read of `a.log`: taken for it, it would be read from that offset.
    append(&b, &pretty("b", 0..5));
    let_scans_pass(&mut source, &logs).await;
    assert_eq!(collisions(&source), 1);
    source.stop().await;
}

#[tokio::test]
async fn a_closed_pretty_printed_file_renamed_and_grown_is_resumed_not_reported() {
    let dir = tempfile::tempdir().unwrap();
    let logs = logs(dir.path());
    let a = logs.join("a.log");
    append(&a, &pretty("a", 0..3));
    let options = json!({"framing": "json_stream", "rotate_wait_secs": 0});
    let mut source = start(dir.path(), options);
    assert_eq!(source.ids(3).await, ids("a", 0..3));
    // Idle with no wait: closed by the time the markers' scans have passed.
    let_scans_pass(&mut source, &logs).await;
    let renamed = logs.join("a-1.log");
    fs::rename(&a, &renamed).unwrap();
    append(&renamed, &pretty("a", 3..5));
    assert_eq!(source.ids(2).await, ids("a", 3..5));
    let_scans_pass(&mut source, &logs).await;
    assert_eq!(collisions(&source), 0);
    source.stop().await;
}
