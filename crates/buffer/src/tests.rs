//! The queue against real files: replay order, release, damage, a full file system.

use std::path::Path;

use crate::frame;
use crate::queue::{self, Options, Read, Reader, Writer};

fn event(i: usize) -> String {
    format!(
        r#"{{"auditID":"id-{i:06}","verb":"get","pad":"{}"}}"#,
        "x".repeat(i % 50)
    )
}

fn append(writer: &mut Writer, range: std::ops::Range<usize>) {
    let mut frames = Vec::new();
    for i in range.clone() {
        frame::push(&mut frames, 1, |out| {
            out.extend_from_slice(event(i).as_bytes())
        });
    }
    writer.append(&frames, range.len() as u64).unwrap();
    writer.sync().unwrap();
}

/// Reads everything durable; returns the payloads, the damage count, and the spans.
fn drain(reader: &mut Reader) -> (Vec<String>, usize, Vec<queue::SpanId>) {
    let (mut payloads, mut damaged, mut spans) = (Vec::new(), 0, Vec::new());
    loop {
        match reader.read(100, 1 << 20).unwrap() {
            Read::Span {
                id,
                records,
                damaged: damage,
            } => {
                payloads.extend(
                    records
                        .iter()
                        .map(|r| String::from_utf8(r.payload.to_vec()).unwrap()),
                );
                damaged += damage.len();
                spans.push(id);
            }
            Read::Empty { .. } => return (payloads, damaged, spans),
        }
    }
}

fn small() -> Options {
    Options {
        max_bytes: 16 << 20,
        segment_bytes: 16 * 1024,
    }
}

fn segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".seg"))
        .collect();
    names.sort();
    names
}

fn expected(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(event).collect()
}

#[test]
fn a_restart_replays_everything_not_released_in_order_before_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, mut writer, mut reader, _) = queue::open(dir.path(), small()).unwrap();
    append(&mut writer, 0..300);
    let (read, _, spans) = drain(&mut reader);
    assert_eq!(read, expected(0..300));
    // The destination acknowledged the first two spans only, the third out of order.
    queue.release(spans[0]).unwrap();
    queue.release(spans[2]).unwrap();
    queue.release(spans[1]).unwrap();
    drop((queue, writer, reader));

    let (_, mut writer, mut reader, recovered) = queue::open(dir.path(), small()).unwrap();
    assert_eq!(recovered.records, 0, "three spans of 100 were all released");
    append(&mut writer, 300..400);
    assert_eq!(drain(&mut reader).0, expected(300..400));

    // Now a crash with nothing released: all of it comes back, then new records.
    drop((writer, reader));
    let (_, mut writer, mut reader, recovered) = queue::open(dir.path(), small()).unwrap();
    assert_eq!(recovered.records, 100);
    append(&mut writer, 400..450);
    assert_eq!(drain(&mut reader).0, expected(300..450));
}

#[test]
fn a_segment_is_deleted_once_every_record_in_it_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, mut writer, mut reader, _) = queue::open(dir.path(), small()).unwrap();
    for start in (0..2000).step_by(100) {
        append(&mut writer, start..start + 100);
    }
    let before = segments(dir.path()).len();
    assert!(before > 5, "16 KiB segments roll: {before}");
    let (read, _, spans) = drain(&mut reader);
    assert_eq!(read, expected(0..2000));
    // Releasing all but the first span frees nothing: the oldest record holds its segment.
    for span in &spans[1..] {
        queue.release(*span).unwrap();
    }
    assert_eq!(segments(dir.path()).len(), before);
    assert_eq!(queue.stats().unreleased_records, 100);
    queue.release(spans[0]).unwrap();
    assert_eq!(
        segments(dir.path()).len(),
        1,
        "only the segment being written is left"
    );
    assert_eq!(queue.stats().unreleased_records, 0);
    assert_eq!(queue.stats().unreleased_bytes, 0);
}

#[test]
fn a_torn_last_record_is_skipped_and_counted_and_the_next_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut writer, _, _) = queue::open(dir.path(), small()).unwrap();
    append(&mut writer, 0..10);
    drop(writer);
    // A crash in the middle of the last record.
    let last = dir.path().join(&segments(dir.path())[0]);
    let len = std::fs::metadata(&last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 7)
        .unwrap();

    let (_, mut writer, mut reader, recovered) = queue::open(dir.path(), small()).unwrap();
    assert_eq!(recovered.records, 10);
    append(&mut writer, 10..20);
    let (read, damaged, _) = drain(&mut reader);
    let mut want = expected(0..9);
    want.extend(expected(10..20));
    assert_eq!(read, want);
    assert_eq!(damaged, 1);
}

#[test]
fn a_flipped_byte_mid_segment_costs_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut writer, _, _) = queue::open(dir.path(), small()).unwrap();
    append(&mut writer, 0..50);
    drop(writer);
    let path = dir.path().join(&segments(dir.path())[0]);
    let mut bytes = std::fs::read(&path).unwrap();
    // Somewhere inside the 20th record's payload.
    let at = (0..20)
        .map(|i| frame::HEADER_BYTES + event(i).len())
        .sum::<usize>()
        + frame::HEADER_BYTES
        + 5;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let (_, _, mut reader, _) = queue::open(dir.path(), small()).unwrap();
    let (read, damaged, _) = drain(&mut reader);
    let mut want = expected(0..20);
    want.extend(expected(21..50));
    assert_eq!(read, want);
    assert_eq!(damaged, 1);
}

#[test]
fn a_flipped_length_costs_the_record_and_the_rest_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut writer, _, _) = queue::open(dir.path(), small()).unwrap();
    append(&mut writer, 0..30);
    drop(writer);
    let path = dir.path().join(&segments(dir.path())[0]);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = (0..10)
        .map(|i| frame::HEADER_BYTES + event(i).len())
        .sum::<usize>();
    bytes[at + 1] ^= 0x10; // the length grows by 4 KiB
    std::fs::write(&path, &bytes).unwrap();

    let (_, _, mut reader, _) = queue::open(dir.path(), small()).unwrap();
    let (read, damaged, _) = drain(&mut reader);
    let mut want = expected(0..10);
    want.extend(expected(11..30));
    assert_eq!(read, want);
    assert_eq!(damaged, 1);
}

#[test]
fn a_full_buffer_says_so_until_a_release_frees_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        max_bytes: 64 * 1024,
        segment_bytes: 16 * 1024,
    };
    let (queue, mut writer, mut reader, _) = queue::open(dir.path(), options).unwrap();
    let mut next = 0;
    while queue.has_room(8 * 1024) {
        append(&mut writer, next..next + 50);
        next += 50;
    }
    let (_, _, spans) = drain(&mut reader);
    for span in spans {
        queue.release(span).unwrap();
    }
    assert!(queue.has_room(8 * 1024), "released segments were deleted");
}

/// ENOSPC on a real, small file system. Needs root (to mount a tmpfs); skipped otherwise.
#[test]
fn a_full_disk_fails_the_append_and_damages_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|status| status.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(dir.path());
    let options = Options {
        max_bytes: 16 << 20,
        segment_bytes: 16 << 20,
    };
    let (queue, mut writer, mut reader, _) = queue::open(dir.path(), options).unwrap();
    let mut next = 0;
    let error = loop {
        let mut frames = Vec::new();
        for i in next..next + 100 {
            frame::push(&mut frames, 1, |out| {
                out.extend_from_slice(event(i).as_bytes())
            });
        }
        match writer.append(&frames, 100) {
            Ok(()) => next += 100,
            Err(error) => break error,
        }
        writer.sync().unwrap();
    };
    assert_eq!(error.kind(), std::io::ErrorKind::StorageFull, "{error}");
    let (read, damaged, spans) = drain(&mut reader);
    assert_eq!(read, expected(0..next));
    assert_eq!(damaged, 0, "the failed append left no partial record");
    // Space comes back once released; the writer goes on where it was.
    for span in spans {
        queue.release(span).unwrap();
    }
    writer.roll_if_released().unwrap();
    assert_eq!(drain(&mut reader).0, Vec::<String>::new());
    append(&mut writer, next..next + 100);
    assert_eq!(drain(&mut reader).0, expected(next..next + 100));
}

mod relay {
    use std::sync::Arc;
    use std::time::Duration;

    use auditflow_core::channel;
    use auditflow_core::{Batch, BatchNotifier, BatchStatus, Event};
    use auditflow_metrics::{ComponentMetrics, Metrics};
    use auditflow_testkit::RecordingTelemetry;

    use crate::{start, DiskBufferOptions, WhenFull};

    fn batch_of(range: std::ops::Range<usize>) -> Vec<Event> {
        range
            .map(|i| Event::from_bytes(super::event(i).into_bytes().into()).unwrap())
            .collect()
    }

    fn options(dir: &std::path::Path, max_bytes: u64, when_full: WhenFull) -> DiskBufferOptions {
        DiskBufferOptions {
            dir: dir.to_owned(),
            max_bytes,
            when_full,
            fsync_interval: Duration::from_millis(20),
            metrics: ComponentMetrics::new(&Metrics::new(), "out", "sink", "file").disk_buffer(),
        }
    }

    #[tokio::test]
    async fn sources_are_acknowledged_once_fsynced_and_records_released_once_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let counts = Arc::new(RecordingTelemetry::default());
        let (tx, rx) = channel::channel(2, counts.clone());
        let (mut sink, run) = start(
            "out",
            options(dir.path(), 16 << 20, WhenFull::Block),
            rx,
            counts.clone(),
        );
        let run = tokio::spawn(run);
        let (finalizer, acknowledged) = BatchNotifier::new();
        tx.send(Batch::with_finalizer(batch_of(0..10), finalizer))
            .await
            .unwrap();
        // Nobody has delivered anything yet: the acknowledgement comes from the disk.
        let status = tokio::time::timeout(Duration::from_secs(10), acknowledged)
            .await
            .unwrap();
        assert_eq!(status, BatchStatus::Delivered);
        let delivered = sink.recv().await.unwrap();
        assert_eq!(delivered.events, batch_of(0..10));
        assert_eq!(counts.recorded().buffer, 10, "on disk until released");
        delivered.resolve(BatchStatus::Delivered);
        drop(tx);
        assert!(sink.recv().await.is_none());
        run.await.unwrap().unwrap();
        assert_eq!(counts.recorded().buffer, 0);
    }

    #[tokio::test]
    async fn drop_newest_drops_and_counts_what_does_not_fit_and_acknowledges_it() {
        let dir = tempfile::tempdir().unwrap();
        let counts = Arc::new(RecordingTelemetry::default());
        let (tx, rx) = channel::channel(2, counts.clone());
        // 64 KiB and a sink that does not read yet.
        let (mut sink, run) = start(
            "out",
            options(dir.path(), 64 * 1024, WhenFull::DropNewest),
            rx,
            counts.clone(),
        );
        let run = tokio::spawn(run);
        let mut acknowledgements = Vec::new();
        for start in (0..2000).step_by(100) {
            let (finalizer, acknowledged) = BatchNotifier::new();
            tx.send(Batch::with_finalizer(
                batch_of(start..start + 100),
                finalizer,
            ))
            .await
            .unwrap();
            acknowledgements.push(acknowledged);
        }
        drop(tx);
        for acknowledged in acknowledgements {
            assert_eq!(acknowledged.await, BatchStatus::Delivered);
        }
        let mut delivered = Vec::new();
        while let Some(batch) = sink.recv().await {
            delivered.extend(
                batch
                    .events
                    .iter()
                    .map(|e| e.get_str("auditID").unwrap().to_owned()),
            );
            batch.resolve(BatchStatus::Delivered);
        }
        run.await.unwrap().unwrap();
        let recorded = counts.recorded();
        assert!(
            recorded
                .discarded
                .iter()
                .all(|(reason, _)| *reason == "buffer_full"),
            "{:?}",
            recorded.discarded
        );
        let discarded = counts.discarded_events("buffer_full");
        assert!(discarded > 0, "2000 events do not fit in 64 KiB");
        assert_eq!(
            delivered.len() + discarded,
            2000,
            "every event delivered or counted"
        );
        let mut sorted = delivered.clone();
        sorted.sort();
        assert_eq!(delivered, sorted, "in order");
    }
}
