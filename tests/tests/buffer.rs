//! Disk buffers and the `file` sink through the real binary: crashes while buffering,
//! damaged buffer files, a destination down longer than kube-apiserver retries, a full
//! disk, and the file sink's rotation.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auditflow_e2e::audit_lines::{audit_id, audit_line};
use auditflow_e2e::tls::{Pki, PkiFiles, Reply, ServerOptions, TestServer};
use auditflow_e2e::webhook_client::WebhookClient;
use auditflow_e2e::{free_port, http_get, metric, wait_ready, Auditflow, Workspace};

/// An HTTPS collector that can be taken down (it then answers 503) and brought back.
struct Collector {
    server: TestServer,
    up: Arc<AtomicBool>,
    files: PkiFiles,
}

impl Collector {
    fn start(workspace: &Workspace, up: bool) -> Collector {
        let pki = Pki::new("collector");
        let files = pki.write_to(workspace.path());
        let up = Arc::new(AtomicBool::new(up));
        let flag = Arc::clone(&up);
        let server = TestServer::start(
            &pki,
            ServerOptions::responder(move |_| {
                if flag.load(Ordering::SeqCst) {
                    Reply::ok()
                } else {
                    Reply::status(503)
                }
            }),
        );
        Collector { server, up, files }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    /// The auditIDs of every event in a request the collector accepted, with repeats.
    fn delivered(&self) -> Vec<String> {
        self.server
            .requests()
            .iter()
            .filter(|request| request.reply.code() == Some(200))
            .flat_map(|request| {
                request
                    .body_str()
                    .lines()
                    .filter(|line| !line.is_empty())
                    .map(|line| {
                        let event: serde_json::Value = serde_json::from_str(line).expect("NDJSON");
                        event["auditID"].as_str().expect("an auditID").to_owned()
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn wait_for(&self, timeout: Duration, what: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let delivered = self.delivered();
            if done(&delivered) {
                return delivered;
            }
            assert!(
                Instant::now() < deadline,
                "{what} within {timeout:?}: {} events delivered",
                delivered.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The https sink's options, pointed at this collector.
    fn sink_options(&self) -> String {
        format!(
            r#"    type: https
    uri: {uri}
    encoding: ndjson
    batch: {{ max_events: 200, timeout_ms: 50 }}
    request: {{ retry_initial_backoff_ms: 50, retry_max_backoff_ms: 250 }}
    tls: {{ ca_file: {ca} }}
"#,
            uri = self.server.url("/ingest"),
            ca = self.files.ca.display()
        )
    }
}

fn metrics_text(address: &str) -> String {
    http_get(address, "/metrics").map(|(_, body)| body).unwrap_or_default()
}

fn wait_metric(address: &str, name: &str, labels: &[(&str, &str)], timeout: Duration, done: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if metric(&metrics_text(address), name, labels).is_some_and(&done) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} {labels:?} did not reach the expected value within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn duplicates(delivered: &[String]) -> usize {
    delivered.len() - delivered.iter().collect::<BTreeSet<_>>().len()
}

/// A small deterministic generator, seeded from the clock (the seed is printed).
struct Lcg(u64);

impl Lcg {
    fn seeded() -> Lcg {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        println!("random seed: {seed}");
        Lcg(seed)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

#[test]
fn five_sigkills_while_buffering_and_replaying_lose_nothing() {
    const EVENTS: usize = 20_000;
    let workspace = Workspace::new();
    let collector = Collector::start(&workspace, false);
    let log = workspace.path().join("audit.log");
    let mut text = String::new();
    for i in 0..EVENTS {
        text.push_str(&audit_line(i));
        text.push('\n');
    }
    std::fs::write(&log, &text).unwrap();
    let shortest_line = (0..EVENTS).map(|i| audit_line(i).len() + 1).min().unwrap() as f64;
    let metrics = format!("127.0.0.1:{}", free_port());
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            r#"
data_dir: {data_dir}
metrics: {{ address: {metrics} }}
sources:
  apiserver:
    type: file
    include: ["{log}"]
    glob_interval_ms: 100
sinks:
  collector:
    inputs: [apiserver]
{sink}    buffer: {{ type: disk, max_bytes: 268435456, fsync_interval_ms: 50 }}
"#,
            data_dir = workspace.path().display(),
            log = log.display(),
            sink = collector.sink_options(),
        ),
    );
    let mut random = Lcg::seeded();
    let mut in_flight_at_kills = 0.0;
    for kill in 0..5 {
        // Two kills with the destination down (while the buffer fills), then three with it
        // up (while the buffer replays and releases).
        collector.set_up(kill >= 2);
        let mut auditflow = Auditflow::run(&workspace, &pipeline);
        wait_ready(&metrics, Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(100 + random.below(900)));
        let text = metrics_text(&metrics);
        let waiting = metric(&text, "auditflow_buffer_events", &[("component_id", "collector")]).unwrap_or(0.0);
        let unacknowledged = metric(&text, "auditflow_file_checkpoint_lag_bytes", &[("component_id", "apiserver")]).unwrap_or(0.0);
        // Whatever the sink has taken and not had released, plus what the source would
        // read again, plus one batch read between this scrape and the kill.
        in_flight_at_kills += if kill >= 2 { waiting } else { 0.0 } + unacknowledged / shortest_line + 1000.0;
        auditflow.signal(libc::SIGKILL);
        auditflow.wait_timeout(Duration::from_secs(10));
    }
    collector.set_up(true);
    let _auditflow = Auditflow::run(&workspace, &pipeline);
    let delivered = collector.wait_for(Duration::from_secs(120), "every event delivered after five SIGKILLs", |delivered| {
        delivered.iter().collect::<BTreeSet<_>>().len() >= EVENTS
    });
    let expected: BTreeSet<String> = (0..EVENTS).map(audit_id).collect();
    let got: BTreeSet<String> = delivered.iter().cloned().collect();
    assert_eq!(got, expected, "lost or foreign events");
    let duplicates = duplicates(&delivered);
    println!("{} delivered, {duplicates} duplicates, in flight at the kills at most {in_flight_at_kills}", delivered.len());
    assert!(
        duplicates as f64 <= in_flight_at_kills,
        "{duplicates} duplicates, more than the {in_flight_at_kills} events in flight at the kills"
    );
}

/// Offsets and auditIDs of the records in a buffer segment (the format in docs/buffers.md).
fn records_in(segment: &Path) -> Vec<(usize, usize, String)> {
    let bytes = std::fs::read(segment).unwrap();
    let mut records = Vec::new();
    let mut at = 0;
    while at + 16 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if at + 16 + len > bytes.len() {
            break;
        }
        let event: serde_json::Value = serde_json::from_slice(&bytes[at + 16..at + 16 + len]).unwrap();
        records.push((at, len, event["auditID"].as_str().unwrap().to_owned()));
        at += 16 + len;
    }
    records
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "seg")).collect())
        .unwrap_or_default();
    paths.sort();
    paths
}

#[test]
fn a_torn_last_record_and_a_flipped_byte_cost_those_two_records_only() {
    const EVENTS: usize = 300;
    let workspace = Workspace::new();
    let collector = Collector::start(&workspace, false);
    let metrics = format!("127.0.0.1:{}", free_port());
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            r#"
data_dir: {data_dir}
metrics: {{ address: {metrics} }}
sources:
  apiserver: {{ type: stdin }}
sinks:
  collector:
    inputs: [apiserver]
{sink}    buffer: {{ type: disk, max_bytes: 16777216 }}
"#,
            data_dir = workspace.path().display(),
            sink = collector.sink_options(),
        ),
    );
    let buffer_dir = workspace.path().join("collector/buffer");
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    wait_ready(&metrics, Duration::from_secs(20));
    let mut stdin = auditflow.take_stdin();
    for i in 0..EVENTS {
        writeln!(stdin, "{}", audit_line(i)).unwrap();
    }
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while segments(&buffer_dir).iter().map(|s| records_in(s).len()).sum::<usize>() < EVENTS {
        assert!(Instant::now() < deadline, "the events never reached the disk buffer");
        std::thread::sleep(Duration::from_millis(50));
    }
    auditflow.signal(libc::SIGKILL);
    auditflow.wait_timeout(Duration::from_secs(10));
    drop(auditflow);

    // One segment holds them all (16 MiB buffers roll at 2 MiB).
    let segment = segments(&buffer_dir).into_iter().find(|s| !records_in(s).is_empty()).unwrap();
    let records = records_in(&segment);
    assert_eq!(records.len(), EVENTS);
    let mut bytes = std::fs::read(&segment).unwrap();
    let (flipped_at, flipped_len, flipped_id) = records[EVENTS / 2].clone();
    bytes[flipped_at + 16 + flipped_len / 2] ^= 0x20;
    let torn_id = records[EVENTS - 1].2.clone();
    bytes.truncate(bytes.len() - 10);
    std::fs::write(&segment, &bytes).unwrap();

    collector.set_up(true);
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    wait_ready(&metrics, Duration::from_secs(20));
    let _stdin = auditflow.take_stdin();
    wait_metric(&metrics, "auditflow_buffer_corrupt_records_total", &[("component_id", "collector")], Duration::from_secs(30), |v| v >= 2.0);
    let delivered = collector.wait_for(Duration::from_secs(30), "every intact record delivered", |delivered| {
        delivered.len() >= EVENTS - 2
    });
    let expected: BTreeSet<String> = (0..EVENTS)
        .map(audit_id)
        .filter(|id| *id != flipped_id && *id != torn_id)
        .collect();
    assert_eq!(delivered.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(delivered.len(), EVENTS - 2, "no duplicates");
    assert_eq!(
        metric(&metrics_text(&metrics), "auditflow_buffer_corrupt_records_total", &[("component_id", "collector")]),
        Some(2.0)
    );
    let stderr = auditflow.stderr();
    let offset = format!("offset={}", flipped_at);
    assert!(
        stderr.contains("skipped a damaged record") && stderr.contains(&offset) && stderr.contains(&*segment.to_string_lossy()),
        "the damage is logged with its file and offset:\n{stderr}"
    );
    auditflow.signal(libc::SIGTERM);
    assert!(auditflow.wait_timeout(Duration::from_secs(20)).success());
}
