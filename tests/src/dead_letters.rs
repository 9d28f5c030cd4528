//! Reading what a `file` sink wrote from `<id>.dead_letter`.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

use crate::Auditflow;

/// The lines of `path` as JSON, once there are at least `count` of them; fails the test
/// after `timeout`, with auditflow's stderr.
pub fn wait_lines(
    path: &Path,
    count: usize,
    timeout: Duration,
    auditflow: &Auditflow,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("a dead letter is one JSON line"))
            .collect();
        if lines.len() >= count {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} lines in {} within {timeout:?}; stderr:\n{}",
            lines.len(),
            path.display(),
            auditflow.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A dead letter's `raw` as the bytes it stands for (base64 decoded where
/// `raw_encoding` says so).
pub fn raw_bytes(letter: &Value) -> Vec<u8> {
    let raw = letter["raw"].as_str().expect("raw is a string");
    match letter.get("raw_encoding").and_then(Value::as_str) {
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(raw)
            .expect("raw is base64"),
        None => raw.as_bytes().to_vec(),
        Some(other) => panic!("unknown raw_encoding {other}"),
    }
}
