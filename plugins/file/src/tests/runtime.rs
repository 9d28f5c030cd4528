//! The source leaves the async runtime free while it waits on the disk: each test runs it
//! on the `current_thread` runtime of `#[tokio::test]`, beside a [`StallWatch`] whose
//! ticker must keep ticking while a blocking section (an fsync, a directory listing, a
//! `.gz` decompressed up to its checkpoint) runs.

use std::time::{Duration, Instant};

use auditflow_testkit::stall::StallWatch;

use super::*;

/// Waits until `done` holds, failing after 20 s.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn key(path: &Path) -> String {
    path.display().to_string()
}

#[tokio::test]
async fn a_slow_checkpoint_fsync_does_not_stall_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let log = logs(dir.path()).join("audit.log");
    append(&log, &lines("a", 0..5));
    let len = fs::metadata(&log).unwrap().len();
    let watch = StallWatch::start(key(&dir.path().join("state")));
    let mut source = start(dir.path(), json!({}));
    assert_eq!(source.ids(5).await, ids("a", 0..5));
    eventually("a checkpoint past the acknowledged lines", || {
        checkpoint_offset(dir.path(), &log) == len
    })
    .await;
    let before_stop = watch.sections();
    source.stop().await;
    // The final checkpoint is written, through the same blocking section, before the
    // source returns.
    assert!(
        watch.sections() > before_stop,
        "no checkpoint written at shutdown"
    );
    assert_eq!(checkpoint_offset(dir.path(), &log), len);
    watch.assert_runtime_kept_running("checkpoint fsyncs");
}

#[tokio::test]
async fn a_slow_directory_scan_does_not_stall_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let logs = logs(dir.path());
    append(&logs.join("audit.log"), &lines("a", 0..5));
    let watch = StallWatch::start(key(&logs));
    let mut source = start(dir.path(), json!({}));
    assert_eq!(source.ids(5).await, ids("a", 0..5));
    // A file that only a later scan finds.
    append(&logs.join("audit-2.log"), &lines("b", 0..3));
    assert_eq!(source.ids(3).await, ids("b", 0..3));
    eventually("a few more scans", || watch.sections() >= 5).await;
    source.stop().await;
    watch.assert_runtime_kept_running("directory listings");
}

#[tokio::test]
async fn resuming_a_gzipped_file_does_not_stall_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let (logs, log, source) = reading_five_lines(dir.path()).await;
    source.stop().await;
    // Written to while the source was stopped, then rotated into a `.gz`: the next start
    // finds it by its fingerprint and decompresses it up to the checkpoint.
    append(&log, &lines("a", 5..8));
    let gz = logs.join("audit-2024-01-01T00-00-00.000.log.gz");
    write_gz(&gz, &fs::read(&log).unwrap());
    fs::remove_file(&log).unwrap();
    let watch = StallWatch::start(key(&gz));
    let mut source = start(dir.path(), json!({}));
    assert_eq!(source.ids(3).await, ids("a", 5..8));
    source.quiet().await;
    source.stop().await;
    watch.assert_runtime_kept_running("decompressing the .gz up to its checkpoint");
}
