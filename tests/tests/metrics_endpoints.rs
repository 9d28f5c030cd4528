//! The metrics endpoint as docs/metrics.md describes it, on a running binary: `/ready`
//! answering `503 starting` while a component is still being built, `405` for other
//! methods and `HEAD` like `GET`; `auditflow_sink_inflight_requests` and
//! `auditflow_component_errors_total{error_type}` with the values of what happened.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditflow_e2e::audit_lines::audit_line;
use auditflow_e2e::tls::{Pki, Recorded, Reply, ServerOptions, TestServer};
use auditflow_e2e::{http_get, metric, wait_ready, Auditflow, Workspace};

/// One request with `method`; returns the whole response as text.
fn request(address: &str, method: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).expect("connect to the metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn scrape(address: &str) -> String {
    let (status, body) = http_get(address, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    body
}

/// A series that must exist: its value.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{text}"))
}

/// The file source reads its checkpoint while it is built; a checkpoint file that does not
/// answer yet (a named pipe standing in for a slow disk) holds the build, and meanwhile
/// `/health` is 200 and `/ready` is `503 starting`. Once the checkpoint is read, `/ready`
/// turns 200.
#[test]
fn ready_answers_503_until_every_component_is_built_and_started() {
    let workspace = Workspace::new();
    let data_dir = workspace.path().join("data");
    let checkpoint_dir = data_dir.join("logs");
    std::fs::create_dir_all(&checkpoint_dir).unwrap();
    let fifo = checkpoint_dir.join("checkpoints.json");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo {}", fifo.display());
    let address = "127.0.0.1:0";
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            "data_dir: {}\nmetrics:\n  address: {address}\n\
             sources:\n  logs:\n    type: file\n    include: [\"{}/*.log\"]\n\
             sinks:\n  out: {{ type: blackhole, inputs: [logs] }}\n",
            data_dir.display(),
            workspace.path().display()
        ),
    );
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let address = auditflow.metrics_address(Duration::from_secs(20));
    wait_until(
        "the endpoint to answer /health",
        Duration::from_secs(20),
        || matches!(http_get(&address, "/health"), Ok((200, _))),
    );
    let (status, body) = http_get(&address, "/ready").unwrap();
    assert_eq!((status, body.as_str()), (503, "starting\n"));
    assert!(auditflow.child.try_wait().unwrap().is_none());

    // The checkpoint answers: an empty one (no file read yet). Written from a thread, so
    // that a process that never opens the pipe fails the wait below instead of hanging.
    std::thread::spawn(move || {
        std::fs::write(&fifo, "{\"version\":1,\"files\":[]}\n").expect("write the checkpoint pipe");
    });
    wait_ready(&address, Duration::from_secs(20));
    assert_eq!(
        http_get(&address, "/ready").unwrap(),
        (200, "ready\n".to_owned())
    );

    auditflow.signal(libc::SIGTERM);
    let status = auditflow.wait_timeout(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", auditflow.stderr());
}

#[test]
fn other_methods_get_405_and_head_answers_like_get_without_a_body() {
    let workspace = Workspace::new();
    let address = "127.0.0.1:0";
    let pipeline = workspace.pipeline_with_metrics(
        address,
        "sources:\n  in: { type: stdin }\nsinks:\n  out: { type: blackhole, inputs: [in] }\n",
    );
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let address = auditflow.metrics_address(Duration::from_secs(20));
    let stdin = auditflow.take_stdin();
    wait_ready(&address, Duration::from_secs(20));

    for path in ["/metrics", "/health", "/ready"] {
        for method in ["POST", "PUT", "DELETE"] {
            let response = request(&address, method, path);
            assert!(
                response.starts_with("HTTP/1.1 405"),
                "{method} {path}: {response}"
            );
        }
        let head = request(&address, "HEAD", path);
        assert!(head.starts_with("HTTP/1.1 200"), "HEAD {path}: {head}");
        let (_, body) = head.split_once("\r\n\r\n").expect("a response head");
        assert_eq!(body, "", "HEAD {path} sent a body");
    }
    let head = request(&address, "HEAD", "/nothing-here");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    drop(stdin);
    let status = auditflow.wait_timeout(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", auditflow.stderr());
}

fn https_pipeline(
    workspace: &Workspace,
    address: &str,
    server: &TestServer,
    ca: &Path,
    batch: &str,
) -> std::path::PathBuf {
    workspace.write(
        "pipeline.yaml",
        &format!(
            r#"
data_dir: {data_dir}
metrics:
  address: {address}
sources:
  in:
    type: stdin
sinks:
  collector:
    type: https
    inputs: [in]
    uri: {uri}
    batch: {batch}
    request: {{ concurrency: 2, retry_initial_backoff_ms: 20, retry_max_backoff_ms: 100 }}
    tls:
      ca_file: {ca}
"#,
            data_dir = workspace.path().join("data").display(),
            uri = server.url("/ingest"),
            ca = ca.display(),
        ),
    )
}

/// Two request slots, both held by a refusing server: the gauge says 2; once the
/// server accepts, it falls back to 0.
#[test]
fn sink_inflight_requests_counts_the_requests_holding_a_slot() {
    let workspace = Workspace::new();
    let pki = Pki::new("inflight");
    let files = pki.write_to(workspace.path());
    let open = Arc::new(AtomicBool::new(false));
    let server = {
        let open = Arc::clone(&open);
        TestServer::start(
            &pki,
            ServerOptions::responder(move |_: &Recorded| {
                if open.load(Ordering::SeqCst) {
                    Reply::ok()
                } else {
                    Reply::status(503)
                }
            }),
        )
    };
    let address = "127.0.0.1:0";
    let pipeline = https_pipeline(
        &workspace,
        address,
        &server,
        &files.ca,
        "{ max_events: 5, timeout_ms: 50 }",
    );
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let address = auditflow.metrics_address(Duration::from_secs(20));
    let mut stdin = auditflow.take_stdin();
    wait_ready(&address, Duration::from_secs(20));
    let labels = [("component_id", "collector")];
    assert_eq!(
        value(
            &scrape(&address),
            "auditflow_sink_inflight_requests",
            &labels
        ),
        0.0
    );
    for i in 0..30 {
        writeln!(stdin, "{}", audit_line(i)).unwrap();
    }
    stdin.flush().unwrap();
    wait_until("two refused requests", Duration::from_secs(20), || {
        let requests = server.requests();
        let mut bodies: Vec<&Vec<u8>> = requests.iter().map(|r| &r.body).collect();
        bodies.sort();
        bodies.dedup();
        bodies.len() >= 2
    });
    assert_eq!(
        value(
            &scrape(&address),
            "auditflow_sink_inflight_requests",
            &labels
        ),
        2.0
    );

    open.store(true, Ordering::SeqCst);
    wait_until("every event delivered", Duration::from_secs(30), || {
        metric(
            &scrape(&address),
            "auditflow_component_sent_events_total",
            &labels,
        ) == Some(30.0)
    });
    wait_until("no request in flight", Duration::from_secs(20), || {
        value(
            &scrape(&address),
            "auditflow_sink_inflight_requests",
            &labels,
        ) == 0.0
    });
    drop(stdin);
    let status = auditflow.wait_timeout(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", auditflow.stderr());
}

/// A request refused with 400 counts its events under `error_type="rejected"`, exactly.
#[test]
fn component_errors_total_counts_rejected_events_by_error_type() {
    let workspace = Workspace::new();
    let pki = Pki::new("rejected");
    let files = pki.write_to(workspace.path());
    let server = TestServer::start(
        &pki,
        ServerOptions::replies(vec![Reply::status(400).body("bad event")]),
    );
    let address = "127.0.0.1:0";
    let pipeline = https_pipeline(
        &workspace,
        address,
        &server,
        &files.ca,
        "{ max_events: 7, timeout_ms: 50 }",
    );
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let address = auditflow.metrics_address(Duration::from_secs(20));
    let mut stdin = auditflow.take_stdin();
    wait_ready(&address, Duration::from_secs(20));
    // The first request (7 events) is refused; the second (3) delivered.
    for i in 0..7 {
        writeln!(stdin, "{}", audit_line(i)).unwrap();
    }
    stdin.flush().unwrap();
    server.wait_until(Duration::from_secs(20), |requests| !requests.is_empty());
    for i in 7..10 {
        writeln!(stdin, "{}", audit_line(i)).unwrap();
    }
    stdin.flush().unwrap();
    server.wait_until(Duration::from_secs(20), |requests| requests.len() >= 2);
    let labels = [("component_id", "collector")];
    wait_until("the delivery counted", Duration::from_secs(20), || {
        metric(
            &scrape(&address),
            "auditflow_component_sent_events_total",
            &labels,
        ) == Some(3.0)
    });
    let text = scrape(&address);
    assert_eq!(
        value(
            &text,
            "auditflow_component_errors_total",
            &[("component_id", "collector"), ("error_type", "rejected")]
        ),
        7.0
    );
    assert_eq!(
        value(
            &text,
            "auditflow_component_discarded_events_total",
            &[("component_id", "collector"), ("reason", "rejected")]
        ),
        7.0
    );
    drop(stdin);
    let status = auditflow.wait_timeout(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", auditflow.stderr());
}

/// docs/redact.md: a field holding a number beyond a double (`1e400`) is still read: the
/// token beside it is redacted in place, the number kept as it is, and nothing is counted
/// under `error_type="unparseable_field"` (only a field nested deeper than the decoder
/// accepts, which no input can carry, is replaced whole).
#[test]
fn redact_reads_a_field_with_an_out_of_range_number_and_redacts_in_place() {
    let workspace = Workspace::new();
    let address = "127.0.0.1:0";
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            "data_dir: {}\nmetrics:\n  address: {address}\n\
             sources:\n  in: {{ type: stdin }}\n\
             transforms:\n  scrub: {{ type: redact, inputs: [in] }}\n\
             sinks:\n  out: {{ type: stdout, inputs: [scrub] }}\n",
            workspace.path().join("data").display()
        ),
    );
    // A Metadata-level event (no bodies) given a body that holds a bearer token and a
    // number no double can hold.
    let plain = (0..245)
        .map(audit_line)
        .find(|line| line.contains("\"level\":\"Metadata\"") && !line.contains("requestObject"))
        .expect("a Metadata-level event");
    let broken = format!(
        "{},\"requestObject\":{{\"note\":\"Authorization: Bearer abc123def456ghi789\",\"n\":1e400}}}}",
        plain.strip_suffix('}').unwrap()
    );
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let address = auditflow.metrics_address(Duration::from_secs(20));
    let lines = auditflow.stdout_lines();
    let mut stdin = auditflow.take_stdin();
    wait_ready(&address, Duration::from_secs(20));
    writeln!(stdin, "{plain}\n{broken}").unwrap();
    stdin.flush().unwrap();
    let first = lines
        .recv_timeout(Duration::from_secs(20))
        .expect("event 1");
    let second = lines
        .recv_timeout(Duration::from_secs(20))
        .expect("event 2");
    assert_eq!(first, plain, "an event without secrets keeps its bytes");
    assert!(
        second.contains(r#""requestObject":{"note":"Authorization: Bearer [REDACTED]","n":1e400}"#),
        "{second}"
    );
    assert!(!second.contains("abc123def456ghi789"), "{second}");
    let text = scrape(&address);
    assert_eq!(
        metric(
            &text,
            "auditflow_component_errors_total",
            &[
                ("component_id", "scrub"),
                ("error_type", "unparseable_field")
            ]
        ),
        Some(0.0),
        "nothing was unparseable"
    );
    drop(stdin);
    let status = auditflow.wait_timeout(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", auditflow.stderr());
}
