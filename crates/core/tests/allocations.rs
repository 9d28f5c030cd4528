//! What the event model allocates per event, counted by dhat's heap profiler: decoding an
//! audit event, reading the fields the sidecar transforms read, and cloning it for a
//! fan-out allocate nothing. (An event with more than 20 top-level members spills its
//! index to the heap; kube-apiserver writes at most 18.)

use auditflow_core::Event;
use bytes::Bytes;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// The bundled sample log: real kube-apiserver events of every level.
fn lines() -> Vec<Bytes> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../pipelines/samples/audit.log"
    );
    let text = std::fs::read(path).expect("pipelines/samples/audit.log is in the repository");
    let lines: Vec<Bytes> = text
        .split(|&byte| byte == b'\n')
        .filter(|line| !line.is_empty())
        .map(Bytes::copy_from_slice)
        .collect();
    // Cloning a `Bytes` made from a `Vec` allocates its shared header once; sources hand
    // events over already shared.
    for line in &lines {
        drop(line.clone());
    }
    lines
}

#[test]
fn decoding_reading_and_cloning_an_event_allocate_nothing() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let lines = lines();
    assert!(lines.len() > 40, "{} lines", lines.len());
    let before = dhat::HeapStats::get();
    assert!(
        before.total_blocks > lines.len() as u64,
        "the profiler counts"
    );
    let mut read = 0;
    for line in &lines {
        let event = Event::from_bytes(line.clone()).unwrap();
        read += event.get_str("verb").map_or(0, str::len);
        read += event.get_str("stage").map_or(0, str::len);
        read += event.get_str("level").map_or(0, str::len);
        read += event.str_at(&["objectRef", "resource"]).map_or(0, str::len);
        read += event.str_at(&["user", "username"]).map_or(0, str::len);
        read += event.u64_at(&["responseStatus", "code"]).unwrap_or(0) as usize;
        read += usize::from(event.contains_key("requestObject"));
        let copy = event.clone();
        read += copy.raw().len();
    }
    let after = dhat::HeapStats::get();
    assert!(read > 0);
    dhat::assert_eq!(after.total_blocks - before.total_blocks, 0);
}
