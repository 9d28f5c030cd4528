//! Disk buffers and the `file` sink through the real binary: crashes while buffering,
//! damaged buffer files, a destination down longer than kube-apiserver retries, a full
//! disk, and the file sink's rotation.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditflow_e2e::audit_lines::{audit_id, audit_line};
use auditflow_e2e::collector::{duplicates, Collector};
use auditflow_e2e::webhook_client::WebhookClient;
use auditflow_e2e::{http_get, metric, wait_ready, Auditflow, Workspace};

fn metrics_text(address: &str) -> String {
    http_get(address, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

fn wait_metric(
    address: &str,
    name: &str,
    labels: &[(&str, &str)],
    timeout: Duration,
    done: impl Fn(f64) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        if metric(&metrics_text(address), name, labels).is_some_and(&done) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} {labels:?} did not reach the expected value within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
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
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            r#"
data_dir: {data_dir}
metrics: {{ address: 127.0.0.1:0 }}
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
        let metrics = auditflow.metrics_address(Duration::from_secs(20));
        wait_ready(&metrics, Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(100 + random.below(900)));
        let text = metrics_text(&metrics);
        let waiting = metric(
            &text,
            "auditflow_buffer_events",
            &[("component_id", "collector")],
        )
        .unwrap_or(0.0);
        let unacknowledged = metric(
            &text,
            "auditflow_file_checkpoint_lag_bytes",
            &[("component_id", "apiserver")],
        )
        .unwrap_or(0.0);
        // Whatever the sink has taken and not had released, plus what the source would
        // read again, plus one batch read between this scrape and the kill.
        in_flight_at_kills +=
            if kill >= 2 { waiting } else { 0.0 } + unacknowledged / shortest_line + 1000.0;
        auditflow.signal(libc::SIGKILL);
        auditflow.wait_timeout(Duration::from_secs(10));
    }
    collector.set_up(true);
    let _auditflow = Auditflow::run(&workspace, &pipeline);
    let delivered = collector.wait_for(
        Duration::from_secs(120),
        "every event delivered after five SIGKILLs",
        |delivered| delivered.iter().collect::<BTreeSet<_>>().len() >= EVENTS,
    );
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
        let event: serde_json::Value =
            serde_json::from_slice(&bytes[at + 16..at + 16 + len]).unwrap();
        records.push((at, len, event["auditID"].as_str().unwrap().to_owned()));
        at += 16 + len;
    }
    records
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "seg"))
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    paths
}

#[test]
fn a_torn_last_record_and_a_flipped_byte_cost_those_two_records_only() {
    const EVENTS: usize = 300;
    let workspace = Workspace::new();
    let collector = Collector::start(&workspace, false);
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            r#"
data_dir: {data_dir}
metrics: {{ address: 127.0.0.1:0 }}
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
    let metrics = auditflow.metrics_address(Duration::from_secs(20));
    wait_ready(&metrics, Duration::from_secs(20));
    let mut stdin = auditflow.take_stdin();
    for i in 0..EVENTS {
        writeln!(stdin, "{}", audit_line(i)).unwrap();
    }
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while segments(&buffer_dir)
        .iter()
        .map(|s| records_in(s).len())
        .sum::<usize>()
        < EVENTS
    {
        assert!(
            Instant::now() < deadline,
            "the events never reached the disk buffer"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    auditflow.signal(libc::SIGKILL);
    auditflow.wait_timeout(Duration::from_secs(10));
    drop(auditflow);

    // One segment holds them all (16 MiB buffers roll at 2 MiB).
    let segment = segments(&buffer_dir)
        .into_iter()
        .find(|s| !records_in(s).is_empty())
        .unwrap();
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
    let metrics = auditflow.metrics_address(Duration::from_secs(20));
    wait_ready(&metrics, Duration::from_secs(20));
    let _stdin = auditflow.take_stdin();
    wait_metric(
        &metrics,
        "auditflow_buffer_corrupt_records_total",
        &[("component_id", "collector")],
        Duration::from_secs(30),
        |v| v >= 2.0,
    );
    let delivered = collector.wait_for(
        Duration::from_secs(30),
        "every intact record delivered",
        |delivered| delivered.len() >= EVENTS - 2,
    );
    let expected: BTreeSet<String> = (0..EVENTS)
        .map(audit_id)
        .filter(|id| *id != flipped_id && *id != torn_id)
        .collect();
    assert_eq!(delivered.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(delivered.len(), EVENTS - 2, "no duplicates");
    assert_eq!(
        metric(
            &metrics_text(&metrics),
            "auditflow_buffer_corrupt_records_total",
            &[("component_id", "collector")]
        ),
        Some(2.0)
    );
    let stderr = auditflow.stderr();
    let offset = format!("offset={}", flipped_at);
    assert!(
        stderr.contains("skipped a damaged record")
            && stderr.contains(&offset)
            && stderr.contains(&*segment.to_string_lossy()),
        "the damage is logged with its file and offset:\n{stderr}"
    );
    auditflow.signal(libc::SIGTERM);
    assert!(auditflow.wait_timeout(Duration::from_secs(20)).success());
}

/// kube-apiserver's webhook backend at 1/20 of its time scale: batches of up to 400
/// events, each attempt cut at 30 s, retried after 10 s and then 1.5 times longer each
/// time, 5 attempts, then the batch is dropped and counted.
mod apiserver {
    use super::*;

    pub(crate) const TIME_SCALE: f64 = 1.0 / 20.0;
    pub(crate) const BATCH_EVENTS: usize = 400;

    pub(crate) fn scaled(seconds: f64) -> Duration {
        Duration::from_secs_f64(seconds * TIME_SCALE)
    }

    pub(crate) fn event_list(ids: &[usize]) -> bytes::Bytes {
        let items: Vec<String> = ids.iter().map(|&i| audit_line(i)).collect();
        format!(
            r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{{}},"items":[{}]}}"#,
            items.join(",")
        )
        .into()
    }

    /// Sends one batch with the backend's retries; `attempts: None` retries for ever.
    /// Returns whether it was accepted.
    pub(crate) async fn send(
        client: &WebhookClient,
        ids: &[usize],
        attempts: Option<usize>,
    ) -> bool {
        let body = event_list(ids);
        let mut backoff = scaled(10.0);
        let mut attempt = 0;
        loop {
            let answer = tokio::time::timeout(scaled(30.0), async {
                let mut connection = client.connect().await?;
                connection
                    .post(
                        "/audit?timeout=30s",
                        &[("Content-Type", "application/json")],
                        body.clone(),
                    )
                    .await
            })
            .await;
            if let Ok(Ok(answer)) = answer {
                if (200..=206).contains(&answer.status) {
                    return true;
                }
            }
            attempt += 1;
            if attempts.is_some_and(|most| attempt >= most) {
                return false;
            }
            tokio::time::sleep(backoff).await;
            backoff = backoff.mul_f64(1.5);
        }
    }
}

/// What the kube-apiserver-like client saw during an outage.
struct Outage {
    sent: usize,
    dropped: BTreeSet<String>,
    delivered: Vec<String>,
}

/// 1,000 events/s from a kube-apiserver-like client to a webhook source, while the https
/// destination is down for 3 minutes (scaled 1/20: 9 s).
fn webhook_outage(buffer: &str) -> Outage {
    const RATE_PER_SECOND: usize = 1000;
    let workspace = Workspace::new();
    let collector = Collector::start(&workspace, true);
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            r#"
data_dir: {data_dir}
metrics: {{ address: 127.0.0.1:0 }}
sources:
  apiserver:
    type: webhook
    address: 127.0.0.1:0
    path: /audit
    allow_plaintext: true
    accept_timeout_ms: {accept}
    ack_timeout_ms: {ack}
sinks:
  collector:
    inputs: [apiserver]
{sink}{buffer}"#,
            data_dir = workspace.path().display(),
            sink = collector.sink_options(),
            accept = apiserver::scaled(5.0).as_millis(),
            ack = apiserver::scaled(25.0).as_millis(),
        ),
    );
    let auditflow = Auditflow::run(&workspace, &pipeline);
    let metrics = auditflow.metrics_address(Duration::from_secs(20));
    wait_ready(&metrics, Duration::from_secs(20));
    let webhook = auditflow.webhook_address("apiserver", Duration::from_secs(20));
    let client = Arc::new(WebhookClient::plain(webhook));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (sent, dropped) = runtime.block_on(async {
        let start = tokio::time::Instant::now();
        let outage = (
            start + apiserver::scaled(20.0),
            start + apiserver::scaled(200.0),
        );
        let end = start + apiserver::scaled(240.0);
        let batch_every =
            Duration::from_secs_f64(apiserver::BATCH_EVENTS as f64 / RATE_PER_SECOND as f64);
        let mut batches = tokio::task::JoinSet::new();
        let mut next = 0;
        let mut tick = tokio::time::interval(batch_every);
        while tokio::time::Instant::now() < end {
            tick.tick().await;
            let now = tokio::time::Instant::now();
            collector.set_up(!(outage.0..outage.1).contains(&now));
            let ids: Vec<usize> = (next..next + apiserver::BATCH_EVENTS).collect();
            next += apiserver::BATCH_EVENTS;
            let client = Arc::clone(&client);
            batches.spawn(async move {
                let accepted = apiserver::send(&client, &ids, Some(5)).await;
                (ids, accepted)
            });
        }
        collector.set_up(true);
        let mut dropped = BTreeSet::new();
        while let Some(done) = batches.join_next().await {
            let (ids, accepted) = done.unwrap();
            if !accepted {
                dropped.extend(ids.into_iter().map(audit_id));
            }
        }
        (next, dropped)
    });
    let expected = sent - dropped.len();
    let delivered = collector.wait_for(
        Duration::from_secs(60),
        "every accepted event delivered",
        |delivered| {
            delivered
                .iter()
                .filter(|id| !dropped.contains(*id))
                .collect::<BTreeSet<_>>()
                .len()
                >= expected
        },
    );
    Outage {
        sent,
        dropped,
        delivered,
    }
}

#[test]
fn with_a_disk_buffer_an_outage_past_the_apiserver_retry_window_loses_nothing() {
    let outage =
        webhook_outage("    buffer: { type: disk, max_bytes: 268435456, fsync_interval_ms: 50 }\n");
    let got: BTreeSet<String> = outage.delivered.iter().cloned().collect();
    let missing: Vec<String> = (0..outage.sent)
        .map(audit_id)
        .filter(|id| !got.contains(id))
        .collect();
    println!(
        "disk buffer: {} sent, {} dropped by the client, {} missing, {} duplicates",
        outage.sent,
        outage.dropped.len(),
        missing.len(),
        duplicates(&outage.delivered)
    );
    assert!(
        outage.dropped.is_empty(),
        "the client gave up on {} events",
        outage.dropped.len()
    );
    assert!(missing.is_empty(), "{} events never arrived", missing.len());
}

#[test]
fn without_a_buffer_the_outage_loses_what_the_apiserver_dropped() {
    let outage = webhook_outage("");
    let got: BTreeSet<String> = outage.delivered.iter().cloned().collect();
    let missing: BTreeSet<String> = (0..outage.sent)
        .map(audit_id)
        .filter(|id| !got.contains(id))
        .collect();
    println!(
        "memory buffer: {} sent, {} dropped by the client, {} missing at the destination",
        outage.sent,
        outage.dropped.len(),
        missing.len()
    );
    assert!(
        !missing.is_empty(),
        "an outage past the retry window loses events without a disk buffer"
    );
    assert!(
        missing.is_subset(&outage.dropped),
        "every missing event is one the client counted as dropped"
    );
}

/// Mounts a tmpfs of `size` at `dir` (root only); unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        mounted.then(|| Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_blocks_answers_503_and_resumes_without_loss() {
    const EVENTS: usize = 6000;
    let workspace = Workspace::new();
    let data_dir = workspace.path().join("small-disk");
    let Some(_tmpfs) = Tmpfs::mount(&data_dir, "3m") else {
        println!("skipped: cannot mount a tmpfs (needs root)");
        return;
    };
    let collector = Collector::start(&workspace, false);
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            r#"
data_dir: {data_dir}
metrics: {{ address: 127.0.0.1:0 }}
sources:
  apiserver:
    type: webhook
    address: 127.0.0.1:0
    path: /audit
    allow_plaintext: true
    accept_timeout_ms: 250
    ack_timeout_ms: 1250
sinks:
  collector:
    inputs: [apiserver]
{sink}    buffer: {{ type: disk, max_bytes: 16777216, fsync_interval_ms: 50 }}
"#,
            data_dir = data_dir.display(),
            sink = collector.sink_options(),
        ),
    );
    let auditflow = Auditflow::run(&workspace, &pipeline);
    let metrics = auditflow.metrics_address(Duration::from_secs(20));
    wait_ready(&metrics, Duration::from_secs(20));
    let webhook = auditflow.webhook_address("apiserver", Duration::from_secs(20));
    let client = Arc::new(WebhookClient::plain(webhook));
    let refused = Arc::new(AtomicUsize::new(0));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut batches = tokio::task::JoinSet::new();
        for start in (0..EVENTS).step_by(200) {
            let client = Arc::clone(&client);
            let refused = Arc::clone(&refused);
            batches.spawn(async move {
                let ids: Vec<usize> = (start..start + 200).collect();
                let body = apiserver::event_list(&ids);
                loop {
                    let answer = async {
                        let mut connection = client.connect().await?;
                        connection
                            .post(
                                "/audit",
                                &[("Content-Type", "application/json")],
                                body.clone(),
                            )
                            .await
                    };
                    match answer.await {
                        Ok(answer) if answer.status == 200 => return,
                        Ok(answer) => {
                            assert_eq!(answer.status, 503, "{}", answer.body);
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => {}
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        }
        // The disk fills while the destination is down: writing stops, requests get 503.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(auditflow
            .stderr()
            .contains("cannot write to the disk buffer")
            && refused.load(Ordering::SeqCst) > 0)
        {
            assert!(
                Instant::now() < deadline,
                "the disk never filled:\n{}",
                auditflow.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        collector.set_up(true);
        while let Some(done) = batches.join_next().await {
            done.unwrap();
        }
    });
    let delivered = collector.wait_for(
        Duration::from_secs(60),
        "every event delivered after the disk freed up",
        |delivered| delivered.iter().collect::<BTreeSet<_>>().len() >= EVENTS,
    );
    let expected: BTreeSet<String> = (0..EVENTS).map(audit_id).collect();
    assert_eq!(delivered.iter().cloned().collect::<BTreeSet<_>>(), expected);
    let stderr = auditflow.stderr();
    let episodes = stderr.matches("cannot write to the disk buffer").count();
    let resumed = stderr.matches("disk buffer is taking events again").count();
    println!(
        "{} requests refused with 503, {episodes} full-disk episodes, {resumed} resumed",
        refused.load(Ordering::SeqCst)
    );
    assert!(
        episodes >= 1 && resumed >= episodes,
        "logged once per episode, and each one ended:\n{stderr}"
    );
    assert_eq!(
        metric(
            &metrics_text(&metrics),
            "auditflow_buffer_corrupt_records_total",
            &[("component_id", "collector")]
        ),
        Some(0.0),
        "a full disk damaged nothing"
    );
}

fn gunzip(path: &Path) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text
}

#[test]
fn the_file_sink_writes_what_arrived_rotating_and_gzipping() {
    const EVENTS: usize = 400;
    let workspace = Workspace::new();
    let out = workspace.path().join("archive");
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            r#"
data_dir: {data_dir}
sources:
  apiserver: {{ type: stdin }}
sinks:
  archive:
    type: file
    inputs: [apiserver]
    path: {out}/audit-%Y-%m-%d.log
    max_bytes: 100000
    compression: gzip
"#,
            data_dir = workspace.path().display(),
            out = out.display(),
        ),
    );
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let mut stdin = auditflow.take_stdin();
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(20) {
        let lines: String = chunk.iter().map(|&i| audit_line(i) + "\n").collect();
        stdin.write_all(lines.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
    drop(stdin);
    assert!(
        auditflow.wait_timeout(Duration::from_secs(30)).success(),
        "{}",
        auditflow.stderr()
    );

    // Closed files are numbered from 1 (oldest), then the active file.
    let mut files: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let mut active = None;
    for entry in std::fs::read_dir(&out).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(number) = name
            .strip_suffix(".gz")
            .and_then(|rest| rest.rsplit('.').next())
            .and_then(|n| n.parse().ok())
        {
            files.insert(number, path);
        } else if name.ends_with(".log") {
            active = Some(path);
        } else {
            panic!("unexpected file {name}");
        }
    }
    assert!(files.len() >= 3, "100 kB files rotated: {files:?}");
    let mut written: String = files.values().map(|path| gunzip(path)).collect();
    written.push_str(&std::fs::read_to_string(active.expect("the active file")).unwrap());
    let expected: String = (0..EVENTS)
        .map(|i| format!("{}\n", audit_line(i)))
        .collect();
    assert_eq!(written.len(), expected.len());
    assert!(
        written == expected,
        "every event, once, in order, as it arrived"
    );
}

#[test]
fn validate_names_each_bad_buffer_and_file_sink_option() {
    let workspace = Workspace::new();
    let pipeline = workspace.write(
        "pipeline.yaml",
        r#"
sources:
  in: { type: stdin }
sinks:
  small:
    type: stdout
    inputs: [in]
    buffer: { type: disk, max_bytes: 1000 }
  patient:
    type: stdout
    inputs: [in]
    buffer: { type: disk, max_bytes: 16777216, when_full: wait }
  unsized:
    type: stdout
    inputs: [in]
    buffer: { type: disk }
  archive:
    type: file
    inputs: [in]
    path: /var/log/auditflow/audit-%F.log
    buffer: { type: memory, max_bytes: 5 }
"#,
    );
    let output = std::process::Command::new(auditflow_e2e::auditflow_bin())
        .arg("validate")
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let file = pipeline.display();
    for expected in [
        format!("{file}: sinks.small.buffer.max_bytes: a disk buffer needs at least 16777216 bytes (16 MiB), found 1000"),
        format!("{file}: sinks.patient.buffer.when_full: unknown variant `wait`, expected `block` or `drop_newest`"),
        format!("{file}: sinks.unsized.buffer: missing field `max_bytes`"),
        format!("{file}: sinks.archive.buffer.max_bytes: a memory buffer takes no options besides `type`"),
        format!("{file}: sinks.archive.path: unknown time field `%F`"),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in:\n{text}");
    }
}
