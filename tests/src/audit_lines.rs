//! Real-shaped audit input in any quantity, and what a test reads off a running process.
//!
//! Lines are the captured kube-apiserver log (`crates/testkit/fixtures`), cycled, each
//! with its own `auditID` of the same length, so that every line is unique and the bytes
//! are otherwise exactly what the API server wrote.

use std::sync::LazyLock;

static CAPTURE: LazyLock<Vec<String>> = LazyLock::new(|| {
    let path = crate::repo_root().join("crates/testkit/fixtures/kube-apiserver-1.32-audit.log");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    text.lines()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
});

const AUDIT_ID: &str = "\"auditID\":\"";

/// Line `i` of an endless stream: a captured event with the `auditID`
/// `00000000-0000-4000-8000-<i, 12 digits>`. No trailing newline.
pub fn audit_line(i: usize) -> String {
    let line = &CAPTURE[i % CAPTURE.len()];
    let start = line
        .find(AUDIT_ID)
        .expect("every captured event has an auditID")
        + AUDIT_ID.len();
    let end = start + line[start..].find('"').expect("the auditID is a string");
    format!(
        "{}00000000-0000-4000-8000-{i:012}{}",
        &line[..start],
        &line[end..]
    )
}

/// The `auditID` [`audit_line`] gives line `i`.
pub fn audit_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// The resident memory of process `pid` in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|error| panic!("read /proc/{pid}/status: {error}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("/proc/<pid>/status has VmRSS")
}

/// Lines `range` of the stream, each with its newline: what a writer appends to a log.
pub fn audit_lines(range: std::ops::Range<usize>) -> String {
    range.map(|i| audit_line(i) + "\n").collect()
}

/// Appends `text` to the file at `path`, creating it if needed (as kube-apiserver's log
/// writer does).
///
/// # Panics
/// When the file cannot be opened or written.
pub fn append(path: &std::path::Path, text: &str) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|error| panic!("open {}: {error}", path.display()))
        .write_all(text.as_bytes())
        .unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
}
