//! `memory_limit_mb` through the real binary, in a cgroup limited to 64 MiB: the sidecar
//! deployment (a `file` source following the API server's log, an `https` sink) fed
//! 100 MB/s of `RequestResponse` events of 4 MiB each while its collector refuses
//! everything (`503`).
//!
//! - Without a limit (`memory_limit_mb` above the cgroup's), the same load runs the process
//!   into the cgroup's OOM killer: the events in flight (the file source's batches, the
//!   sink's request bodies and their retries) are more than 64 MiB. This shows the load is
//!   one the limit has to stop.
//! - With the default (90% of the cgroup's limit, read from the cgroup), the sources pause
//!   twice the largest line below it: `auditflow_memory_limited` goes to 1, the cgroup sees
//!   no OOM kill, the process's anonymous memory stays under the limit and the process
//!   alive, and once the collector answers `200` again every event written arrives.
//!
//! The test makes a child cgroup of its own (cgroup v2, or v1's memory controller where
//! that is what the machine has) and starts auditflow in it through `sh -c 'echo $$ >
//! cgroup.procs; exec auditflow run ...'`, so the process is limited before it allocates.
//! Where that cannot be done (not root, no memory controller, the controller not
//! delegated), it prints why and returns.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditflow_core::memory::{DEFAULT_CGROUP_PERCENT, MAX_RESERVE_PERCENT};
use auditflow_e2e::audit_lines::{audit_id, audit_line};
use auditflow_e2e::tls::{Pki, Reply, ServerOptions, TestServer};
use auditflow_e2e::{
    auditflow_bin, http_get, logged_address, metric, run_to_end, wait_ready, Workspace,
    METRICS_LISTENING,
};

const CGROUP_LIMIT_BYTES: u64 = 64 << 20;
/// The sidecar's `max_line_bytes`: room for one event of [`EVENT_BYTES`].
const MAX_LINE_BYTES: u64 = 8 << 20;
/// What the writer appends per second, as kube-apiserver's log backend under a burst of
/// large requests.
const RATE_BYTES_PER_SECOND: usize = 100_000_000;
/// The size of each `RequestResponse` event (a large list response). What the pipeline
/// holds grows with it: the file source keeps up to 16 batches in flight, of one such
/// event each, and the sink a request body for them.
const EVENT_BYTES: usize = (4 << 20) - (64 << 10);
/// The writer writes (while the collector is down) until the process is killed or paused
/// its sources and then for this long; or, failing the test, for [`WRITING_AT_MOST`].
const WRITING_AFTER_PAUSE: Duration = Duration::from_secs(3);
const WRITING_AT_MOST: Duration = Duration::from_secs(60);
/// And never more than this (the disk is shared).
const WRITING_AT_MOST_BYTES: usize = 1_500_000_000;

/// A child cgroup limited to [`CGROUP_LIMIT_BYTES`], removed when dropped.
struct Cgroup {
    dir: PathBuf,
    version: u8,
}

impl Cgroup {
    /// A fresh cgroup under this process's own, or why one cannot be made here.
    fn create(name: &str) -> Result<Cgroup, String> {
        let membership = fs::read_to_string("/proc/self/cgroup")
            .map_err(|error| format!("cannot read /proc/self/cgroup: {error}"))?;
        let root = Path::new("/sys/fs/cgroup");
        let v1 = membership.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            controllers
                .split(',')
                .any(|controller| controller == "memory")
                .then(|| root.join("memory").join(path.trim_start_matches('/')))
        });
        let v2 = membership
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .map(|path| root.join(path.trim_start_matches('/')));
        let (parent, version) = match (v1, v2) {
            (Some(parent), _) if parent.join("memory.limit_in_bytes").exists() => (parent, 1),
            (_, Some(parent)) if root.join("cgroup.controllers").exists() => {
                let available =
                    fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
                if !available.split_whitespace().any(|c| c == "memory") {
                    return Err("the cgroup v2 hierarchy has no memory controller".into());
                }
                let delegated =
                    fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
                if !delegated.split_whitespace().any(|c| c == "memory") {
                    fs::write(parent.join("cgroup.subtree_control"), "+memory").map_err(|error| {
                        format!(
                            "the memory controller is not delegated to {} and enabling it failed ({error}); a cgroup with processes in it cannot enable controllers for its children",
                            parent.display()
                        )
                    })?;
                }
                (parent, 2)
            }
            _ => return Err("no cgroup memory controller is mounted under /sys/fs/cgroup".into()),
        };
        let dir = parent.join(format!("{name}-{}", std::process::id()));
        fs::create_dir(&dir).map_err(|error| {
            format!(
                "cannot create the cgroup {} ({error}); the test needs root",
                dir.display()
            )
        })?;
        let cgroup = Cgroup { dir, version };
        let limit = CGROUP_LIMIT_BYTES.to_string();
        let writes: &[(&str, &str)] = if version == 2 {
            &[("memory.max", &limit), ("memory.swap.max", "0")]
        } else {
            &[
                ("memory.limit_in_bytes", &limit),
                ("memory.memsw.limit_in_bytes", &limit),
            ]
        };
        for (file, value) in writes {
            let path = cgroup.dir.join(file);
            if path.exists() {
                fs::write(&path, value)
                    .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
            }
        }
        Ok(cgroup)
    }

    /// OOM kills in this cgroup so far.
    fn oom_kills(&self) -> u64 {
        let file = if self.version == 2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        let text = fs::read_to_string(self.dir.join(file)).expect("read the cgroup's OOM counts");
        text.lines()
            .find_map(|line| line.strip_prefix("oom_kill "))
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The most memory the cgroup was charged, where the kernel says.
    fn peak_bytes(&self) -> Option<u64> {
        let file = if self.version == 2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|text| text.trim().parse().ok())
    }

    /// Starts `auditflow run pipeline` inside the cgroup; stderr goes to `stderr`.
    fn spawn(&self, pipeline: &Path, stderr: &Path) -> Process {
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#"echo $$ > "$1" && exec "$2" run "$3""#)
            .arg("sh")
            .arg(self.dir.join("cgroup.procs"))
            .arg(auditflow_bin())
            .arg(pipeline)
            .env("AUDITFLOW_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(stderr).expect("create the stderr log"))
            .spawn()
            .expect("start sh");
        Process(child)
    }
}

/// The auditflow process, killed if the test ends first (so that its cgroup can go).
struct Process(Child);

impl std::ops::Deref for Process {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty once its process is gone; retried while the kernel lets it go.
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove the cgroup {}", self.dir.display());
    }
}

/// Event `i`: a captured event raised to `RequestResponse`, with a request and a response
/// object (a ConfigMap's data) that make it [`EVENT_BYTES`] long, and its own auditID.
/// `None` for the captured events that already have a request or response object.
fn large_event(i: usize, payload: &str) -> Option<String> {
    let line = audit_line(i);
    if !line.contains("\"level\":\"Metadata\"") {
        return None;
    }
    let line = line.replacen("\"level\":\"Metadata\"", "\"level\":\"RequestResponse\"", 1);
    let body = line.strip_suffix('}').expect("an event is an object");
    let half = payload.len() / 2;
    let mut event = format!(
        "{body},\"requestObject\":{{\"kind\":\"ConfigMap\",\"apiVersion\":\"v1\",\"data\":{{\"blob\":\"{}\"}}}},\"responseObject\":{{\"kind\":\"ConfigMap\",\"apiVersion\":\"v1\",\"data\":{{\"blob\":\"{}\"}}}}}}",
        &payload[..half],
        &payload[half..]
    );
    event.push('\n');
    Some(event)
}

/// Text that looks like configuration data and does not compress to nothing.
fn payload(len: usize) -> String {
    let mut text = String::with_capacity(len);
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 =:-_.";
    while text.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        text.push(ALPHABET[(state % ALPHABET.len() as u64) as usize] as char);
    }
    text
}

/// Appends large events to `log` at [`RATE_BYTES_PER_SECOND`] until `stop` (or for
/// [`WRITING_AT_MOST`]); returns the indices of the events it wrote.
fn write_at_rate(log: &Path, stop: &AtomicBool) -> Vec<usize> {
    let payload = payload(EVENT_BYTES - 2048);
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the audit log");
    let started = Instant::now();
    let mut bytes = 0usize;
    let mut written = Vec::new();
    let mut i = 0;
    while started.elapsed() < WRITING_AT_MOST
        && bytes < WRITING_AT_MOST_BYTES
        && !stop.load(Ordering::SeqCst)
    {
        i += 1;
        let Some(event) = large_event(i, &payload) else {
            continue;
        };
        let due = started + Duration::from_secs_f64(bytes as f64 / RATE_BYTES_PER_SECOND as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        file.write_all(event.as_bytes())
            .expect("append to the audit log");
        bytes += event.len();
        written.push(i);
    }
    written
}

/// A collector that answers `503` while `up` is false and `200` after, and counts the
/// distinct auditIDs of the events it accepted.
fn collector(pki: &Pki, up: &Arc<AtomicBool>) -> TestServer {
    let up = Arc::clone(up);
    TestServer::start(
        pki,
        ServerOptions::responder(move |_| {
            if up.load(Ordering::SeqCst) {
                Reply::ok()
            } else {
                Reply::status(503)
            }
        }),
    )
}

/// Which events the collector accepted, read incrementally (requests are kept in order).
struct Accepted {
    /// By event index: `Some(false)` expected and not seen yet, `Some(true)` seen.
    seen: Vec<Option<bool>>,
    expected: usize,
    count: usize,
    next_request: usize,
}

impl Accepted {
    fn new(written: &[usize]) -> Accepted {
        let mut seen = vec![None; written.iter().max().map_or(0, |max| max + 1)];
        for &i in written {
            seen[i] = Some(false);
        }
        Accepted {
            seen,
            expected: written.len(),
            count: 0,
            next_request: 0,
        }
    }

    /// Reads the requests that arrived since the last call; true once every event is in.
    fn all_in(&mut self, server: &TestServer) -> bool {
        let state = std::cell::RefCell::new(&mut *self);
        server.wait_until(Duration::ZERO, |requests| {
            let mut state = state.borrow_mut();
            for request in &requests[state.next_request..] {
                if request.reply.code() != Some(200) {
                    continue;
                }
                for line in request.body_str().split('\n') {
                    let Some(i) = index_of(line) else { continue };
                    if let Some(seen @ Some(false)) = state.seen.get_mut(i) {
                        *seen = Some(true);
                        state.count += 1;
                    }
                }
            }
            state.next_request = requests.len();
            true
        });
        self.count == self.expected
    }
}

/// The event index in an [`audit_id`] found in `line`.
fn index_of(line: &str) -> Option<usize> {
    let prefix = audit_id(0);
    let prefix = &prefix[..prefix.len() - 12];
    let start = line.find(prefix)? + prefix.len();
    line.get(start..start + 12)?.parse().ok()
}

/// The metrics address that the process logging to `stderr` serves on.
fn metrics_address(stderr: &Path) -> String {
    logged_address(stderr, METRICS_LISTENING, None, Duration::from_secs(60))
}

/// Writes the sidecar pipeline (metrics on any free port, logged) with `extra` top-level
/// lines.
fn sidecar_pipeline(workspace: &Workspace, server: &TestServer, ca: &Path, extra: &str) -> PathBuf {
    let log = workspace.path().join("audit.log");
    fs::write(&log, "").expect("create the audit log");
    workspace.write(
        "pipeline.yaml",
        &format!(
            r#"data_dir: {data}
metrics:
  address: 127.0.0.1:0
{extra}
sources:
  audit_log:
    type: file
    include: [{log}]
    max_line_bytes: {max_line}
sinks:
  collector:
    type: https
    inputs: [audit_log]
    uri: {uri}
    encoding: ndjson
    compression: none
    batch: {{ timeout_ms: 50 }}
    request: {{ concurrency: 16, retry_initial_backoff_ms: 200, retry_max_backoff_ms: 500 }}
    tls: {{ ca_file: {ca} }}
"#,
            data = workspace.path().join("data").display(),
            log = log.display(),
            uri = server.url("/ingest"),
            ca = ca.display(),
            max_line = MAX_LINE_BYTES,
        ),
    )
}

/// `RssAnon` of process `pid` in KiB (0 once it is gone).
fn rss_anon_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn metrics_text(address: &str) -> String {
    http_get(address, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

#[test]
fn a_sidecar_under_a_64_mib_cgroup_pauses_its_sources_and_delivers_every_event() {
    let unlimited = match Cgroup::create("auditflow-no-limit") {
        Ok(cgroup) => cgroup,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };

    // 1. Without the limit, the load is more than the cgroup holds.
    {
        let workspace = Workspace::new();
        let pki = Pki::new("collector");
        let files = pki.write_to(workspace.path());
        let up = Arc::new(AtomicBool::new(false));
        let server = collector(&pki, &up);
        let pipeline = sidecar_pipeline(&workspace, &server, &files.ca, "memory_limit_mb: 4096");
        let stderr = workspace.path().join("auditflow.stderr");
        let mut child = unlimited.spawn(&pipeline, &stderr);
        wait_ready(&metrics_address(&stderr), Duration::from_secs(60));
        let stop = AtomicBool::new(false);
        let log = workspace.path().join("audit.log");
        std::thread::scope(|scope| {
            let writer = scope.spawn(|| write_at_rate(&log, &stop));
            let deadline = Instant::now() + WRITING_AT_MOST;
            let status = loop {
                if let Some(status) = child.try_wait().expect("wait for auditflow") {
                    break Some(status);
                }
                if Instant::now() > deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            stop.store(true, Ordering::SeqCst);
            writer.join().expect("the writer");
            if status.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let log = fs::read_to_string(&stderr).unwrap_or_default();
            assert!(
                status.is_some() && unlimited.oom_kills() > 0,
                "without a memory limit auditflow was expected to be OOM-killed in a 64 MiB cgroup under this load (else the test proves nothing); it {}; oom_kill {}; peak {:?}\n{log}",
                match status {
                    Some(status) => format!("exited: {status}"),
                    None => "kept running".to_owned(),
                },
                unlimited.oom_kills(),
                unlimited.peak_bytes(),
            );
        });
    }
    drop(unlimited);

    // 2. With the default limit (no `memory_limit_mb`: 90% of the cgroup's), it pauses and
    // delivers everything.
    let cgroup = Cgroup::create("auditflow-memory-limit").expect("a second cgroup, as the first");
    let workspace = Workspace::new();
    let pki = Pki::new("collector");
    let files = pki.write_to(workspace.path());
    let up = Arc::new(AtomicBool::new(false));
    let server = collector(&pki, &up);
    let pipeline = sidecar_pipeline(&workspace, &server, &files.ca, "");
    let stderr = workspace.path().join("auditflow.stderr");
    let mut child = cgroup.spawn(&pipeline, &stderr);
    let address = metrics_address(&stderr);
    wait_ready(&address, Duration::from_secs(60));
    let text = metrics_text(&address);
    let limit_bytes = CGROUP_LIMIT_BYTES / 100 * DEFAULT_CGROUP_PERCENT;
    assert_eq!(
        metric(&text, "auditflow_memory_limit_bytes", &[]),
        Some(limit_bytes as f64),
        "the default limit is {DEFAULT_CGROUP_PERCENT}% of the cgroup's memory limit"
    );
    assert_eq!(metric(&text, "auditflow_memory_limited", &[]), Some(0.0));
    assert_eq!(
        metric(&text, "auditflow_memory_limited_total", &[]),
        Some(0.0)
    );
    // Twice the 8 MiB line is more than a quarter of the limit: a quarter is kept free.
    let pause_bytes = limit_bytes - limit_bytes / 100 * MAX_RESERVE_PERCENT;
    let log = fs::read_to_string(&stderr).unwrap_or_default();
    assert!(
        log.contains("memory limit: 90% of the cgroup's")
            && log.contains("cgroup_limit_mb=64")
            && log.contains(&format!(
                "sources pause at {} MiB, {} MiB below the limit: room for twice the largest record a source reads (audit_log.max_line_bytes)",
                pause_bytes >> 20,
                (limit_bytes - pause_bytes) >> 20
            )),
        "the limit in force and where sources pause are logged at start:\n{log}"
    );

    let stop = AtomicBool::new(false);
    let audit_log = workspace.path().join("audit.log");
    let mut seen_limited = false;
    let mut peak_anon_kib = 0;
    let written = std::thread::scope(|scope| {
        let writer = scope.spawn(|| write_at_rate(&audit_log, &stop));
        let mut paused_at = None;
        while !writer.is_finished() {
            let text = metrics_text(&address);
            if metric(&text, "auditflow_memory_limited", &[]) == Some(1.0) {
                seen_limited = true;
                paused_at.get_or_insert_with(Instant::now);
            }
            peak_anon_kib = peak_anon_kib.max(rss_anon_kib(child.id()));
            if paused_at.is_some_and(|at| at.elapsed() > WRITING_AFTER_PAUSE) {
                stop.store(true, Ordering::SeqCst);
            }
            assert!(
                child.try_wait().expect("wait for auditflow").is_none(),
                "auditflow exited under load (oom_kill {}):\n{}",
                cgroup.oom_kills(),
                fs::read_to_string(&stderr).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        writer.join().expect("the writer")
    });
    let text = metrics_text(&address);
    seen_limited |= metric(&text, "auditflow_memory_limited", &[]) == Some(1.0);
    let times_limited = metric(&text, "auditflow_memory_limited_total", &[]).unwrap_or(0.0);
    assert!(
        seen_limited && times_limited >= 1.0,
        "auditflow_memory_limited went to 1 (seen {seen_limited}, auditflow_memory_limited_total {times_limited})"
    );

    // 3. The collector recovers: every event written arrives.
    up.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut accepted = Accepted::new(&written);
    while !accepted.all_in(&server) {
        assert!(
            Instant::now() < deadline,
            "{} of the {} events arrived within 300 s:\n{}",
            accepted.count,
            written.len(),
            fs::read_to_string(&stderr).unwrap_or_default()
        );
        assert!(
            child.try_wait().expect("wait for auditflow").is_none(),
            "auditflow exited (oom_kill {})",
            cgroup.oom_kills()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        child.try_wait().expect("wait for auditflow").is_none(),
        "auditflow is alive"
    );
    assert_eq!(cgroup.oom_kills(), 0, "no OOM kill in the cgroup");
    assert!(
        peak_anon_kib << 10 <= limit_bytes,
        "the process held {peak_anon_kib} KiB of anonymous memory, over its limit of {} KiB",
        limit_bytes >> 10
    );
    eprintln!(
        "{} events of {EVENT_BYTES} bytes delivered; limited {times_limited} times; RssAnon at most {peak_anon_kib} KiB while writing; cgroup peak {:?} bytes",
        written.len(),
        cgroup.peak_bytes()
    );
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

#[test]
fn memory_limit_mb_must_be_a_positive_number_of_mib() {
    let workspace = Workspace::new();
    let pipeline = |limit: &str| {
        format!(
            "memory_limit_mb: {limit}\nsources:\n  in: {{ type: stdin }}\nsinks:\n  out: {{ type: blackhole, inputs: [in] }}\n"
        )
    };
    workspace.write("ok.yaml", &pipeline("48"));
    let valid = run_to_end(workspace.path(), &["validate", "ok.yaml"], &[], b"");
    assert!(
        valid.status.success(),
        "{}{}",
        String::from_utf8_lossy(&valid.stdout),
        String::from_utf8_lossy(&valid.stderr)
    );
    for (limit, problem) in [
        ("0", "nonzero"),
        ("-5", "invalid value"),
        ("64Mi", "invalid type"),
    ] {
        workspace.write("bad.yaml", &pipeline(limit));
        let invalid = run_to_end(workspace.path(), &["validate", "bad.yaml"], &[], b"");
        let stderr =
            String::from_utf8_lossy(&invalid.stdout) + String::from_utf8_lossy(&invalid.stderr);
        assert_eq!(invalid.status.code(), Some(2), "{limit}: {stderr}");
        assert!(
            stderr.contains("bad.yaml")
                && stderr.contains("memory_limit_mb")
                && stderr.contains(problem),
            "{limit}: {stderr}"
        );
    }
}
