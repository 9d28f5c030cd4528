//! The `https` sink's options and answers as docs/https.md describes them, through the
//! real binary (stdin -> https) against HTTPS servers on 127.0.0.1:0: `batch.max_bytes`,
//! `request.timeout_ms` against a server that hangs, `tls.server_name`,
//! `tls.insecure_skip_verify`, SEC1 and PKCS#1 client keys, 3xx as a refusal, 408 retried,
//! `Retry-After` as an HTTP date and bounded by `retry_max_backoff_ms`, HTTP/1.1 without
//! h2, and the partial batch flushed at shutdown.
//!
//! Every wait is for a condition (a request, an exit); timing is asserted only as a lower
//! bound (a wait the sink must have made), which load cannot break.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime};

use auditflow_e2e::audit_lines::audit_line;
use auditflow_e2e::tls::{Pki, PkiFiles, Recorded, Reply, ServerOptions, TestServer};
use auditflow_e2e::{http_get, metric, wait_ready, Auditflow, Workspace};

/// A workspace with a private CA on disk.
struct Setup {
    workspace: Workspace,
    pki: Pki,
    files: PkiFiles,
}

impl Setup {
    fn new(name: &str) -> Setup {
        let workspace = Workspace::new();
        let pki = Pki::new(name);
        let files = pki.write_to(workspace.path());
        Setup {
            workspace,
            pki,
            files,
        }
    }

    fn server(&self, options: ServerOptions) -> TestServer {
        TestServer::start(&self.pki, options)
    }

    /// stdin -> https to `uri`, with `sink` (YAML lines indented by four) added to the
    /// sink's options; the metrics endpoint on a port of its own choosing.
    fn pipeline(&self, uri: &str, sink: &str) -> PathBuf {
        self.workspace.write(
            "pipeline.yaml",
            &format!(
                "data_dir: {}\nmetrics:\n  address: 127.0.0.1:0\nshutdown_timeout_secs: 60\n\
                 sources:\n  in:\n    type: stdin\n\
                 sinks:\n  collector:\n    type: https\n    inputs: [in]\n    uri: {uri}\n{sink}",
                self.workspace.path().join("data").display()
            ),
        )
    }

    fn ca_line(&self) -> String {
        format!("    tls: {{ ca_file: {} }}\n", self.files.ca.display())
    }

    /// Starts the pipeline and waits until it is ready; returns it with its metrics
    /// address.
    fn start(&self, pipeline: &std::path::Path) -> (Auditflow, String) {
        let auditflow = Auditflow::run(&self.workspace, pipeline);
        let address = auditflow.metrics_address(Duration::from_secs(20));
        wait_ready(&address, Duration::from_secs(20));
        (auditflow, address)
    }
}

/// Writes events `range` to the process's stdin and closes it.
fn feed(auditflow: &mut Auditflow, range: std::ops::Range<usize>) -> Vec<String> {
    let mut stdin = auditflow.take_stdin();
    let lines: Vec<String> = range.map(audit_line).collect();
    for line in &lines {
        writeln!(stdin, "{line}").unwrap();
    }
    lines
}

fn exit(auditflow: &mut Auditflow) -> ExitStatus {
    auditflow.wait_timeout(Duration::from_secs(60))
}

fn assert_exit_0(auditflow: &mut Auditflow) {
    let status = exit(auditflow);
    assert_eq!(status.code(), Some(0), "{}", auditflow.stderr());
}

/// The NDJSON lines of the requests answered 200, in arrival order.
fn delivered(server: &TestServer) -> Vec<String> {
    server
        .requests()
        .iter()
        .filter(|request| request.reply.code() == Some(200))
        .flat_map(|request| {
            request
                .body_str()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn codes(server: &TestServer) -> Vec<Option<u16>> {
    server.requests().iter().map(|r| r.reply.code()).collect()
}

/// Every request holds at most `max_bytes` of events (one separator each), except a
/// single event larger than that, which goes alone.
#[test]
fn batch_max_bytes_caps_each_request_before_compression() {
    let setup = Setup::new("max-bytes");
    let server = setup.server(ServerOptions::default());
    const MAX_BYTES: usize = 8_000;
    let pipeline = setup.pipeline(
        &server.url("/ingest"),
        &format!(
            "    compression: gzip\n    request: {{ concurrency: 1 }}\n    \
             batch: {{ max_events: 1000, max_bytes: {MAX_BYTES}, timeout_ms: 60000 }}\n{}",
            setup.ca_line()
        ),
    );
    let (mut auditflow, _) = setup.start(&pipeline);
    let lines = feed(&mut auditflow, 0..300);
    assert_exit_0(&mut auditflow);
    assert_eq!(delivered(&server), lines, "lost, duplicated or reordered");
    let requests = server.requests();
    assert!(requests.len() > 10, "only {} requests", requests.len());
    for request in &requests {
        let events = request.body_str().lines().count();
        assert!(
            request.body.len() <= MAX_BYTES || events == 1,
            "a request of {events} events and {} bytes",
            request.body.len()
        );
        assert_eq!(request.header("content-encoding"), Some("gzip"));
        assert!(request.wire_len < request.body.len(), "not compressed");
    }
}

/// A server that takes the request and never answers: the attempt is abandoned after
/// `request.timeout_ms`, retried, and the retry delivers.
#[test]
fn request_timeout_ms_abandons_an_attempt_the_server_never_answers() {
    let setup = Setup::new("hang");
    let server = setup.server(ServerOptions::replies(vec![Reply::Hang]));
    let pipeline = setup.pipeline(
        &server.url("/ingest"),
        &format!(
            "    batch: {{ max_events: 100, timeout_ms: 50 }}\n    \
             request: {{ timeout_ms: 700, retry_initial_backoff_ms: 20, retry_max_backoff_ms: 100 }}\n{}",
            setup.ca_line()
        ),
    );
    let (mut auditflow, _) = setup.start(&pipeline);
    let started = Instant::now();
    let lines = feed(&mut auditflow, 0..5);
    assert_exit_0(&mut auditflow);
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert_eq!(codes(&server), [None, Some(200)]);
    let requests = server.requests();
    assert_eq!(requests[0].body, requests[1].body, "the same request again");
    assert_eq!(delivered(&server), lines);
    let stderr = auditflow.stderr();
    assert!(
        stderr.contains("within 700 ms (request.timeout_ms)"),
        "{stderr}"
    );
}

/// The certificate carries `localhost` and `127.0.0.1`: a `tls.server_name` it does not
/// carry fails with a hint naming the option, and `localhost` works with a uri by IP.
#[test]
fn tls_server_name_is_the_name_the_certificate_is_checked_against() {
    let setup = Setup::new("server-name");
    let server = setup.server(ServerOptions::default());
    let tls = |name: &str| {
        format!(
            "    batch: {{ timeout_ms: 50 }}\n    request: {{ retry_initial_backoff_ms: 20, retry_max_backoff_ms: 100 }}\n    \
             tls: {{ ca_file: {}, server_name: {name} }}\n",
            setup.files.ca.display()
        )
    };
    // A wrong name: nothing gets through, and the log says what to check.
    let pipeline = setup.pipeline(&server.url("/ingest"), &tls("collector.example"));
    let (mut auditflow, _) = setup.start(&pipeline);
    let mut stdin = auditflow.take_stdin();
    writeln!(stdin, "{}", audit_line(0)).unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !auditflow.stderr().contains("tls.server_name") {
        assert!(Instant::now() < deadline, "{}", auditflow.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        auditflow
            .stderr()
            .contains("certificate not valid for name \"collector.example\""),
        "{}",
        auditflow.stderr()
    );
    assert!(server.requests().is_empty());
    auditflow.signal(libc::SIGKILL);
    let _ = exit(&mut auditflow);
    drop(stdin);

    // The right name, though the uri's host is an IP.
    let pipeline = setup.pipeline(&server.url("/ingest"), &tls("localhost"));
    let (mut auditflow, _) = setup.start(&pipeline);
    let lines = feed(&mut auditflow, 0..3);
    assert_exit_0(&mut auditflow);
    assert_eq!(delivered(&server), lines);
}

/// No CA at all, `insecure_skip_verify: true`: delivered, with the warning at start.
#[test]
fn insecure_skip_verify_accepts_an_unknown_ca_and_warns() {
    let setup = Setup::new("insecure");
    let server = setup.server(ServerOptions::default());
    let pipeline = setup.pipeline(
        &server.url("/ingest"),
        "    batch: { timeout_ms: 50 }\n    tls: { insecure_skip_verify: true }\n",
    );
    let (mut auditflow, _) = setup.start(&pipeline);
    let lines = feed(&mut auditflow, 0..3);
    assert_exit_0(&mut auditflow);
    assert_eq!(delivered(&server), lines);
    let stderr = auditflow.stderr();
    let warning = stderr
        .lines()
        .find(|line| line.contains("tls.insecure_skip_verify is on"))
        .unwrap_or_else(|| panic!("no warning:\n{stderr}"));
    assert!(warning.contains("WARN"), "{warning}");
}

/// docs/https.md: the client key may be PKCS#8, PKCS#1 or SEC1.
#[test]
fn client_keys_in_sec1_and_pkcs1_form_are_accepted() {
    let setup = Setup::new("key-forms");
    let server = setup.server(ServerOptions::default().require_client_cert());
    let dir = setup.workspace.path();
    let sec1 = dir.join("client-sec1.key");
    std::fs::write(&sec1, &setup.pki.client_key_sec1_pem).unwrap();
    let rsa_cert = dir.join("client-rsa.pem");
    std::fs::write(&rsa_cert, &setup.pki.client_rsa_cert_pem).unwrap();
    let pkcs1 = dir.join("client-rsa.key");
    std::fs::write(&pkcs1, &setup.pki.client_rsa_key_pkcs1_pem).unwrap();
    assert!(setup
        .pki
        .client_key_sec1_pem
        .starts_with("-----BEGIN EC PRIVATE KEY-----"));
    assert!(setup
        .pki
        .client_rsa_key_pkcs1_pem
        .starts_with("-----BEGIN RSA PRIVATE KEY-----"));

    let mut sent = 0;
    for (cert, key) in [(&setup.files.client_cert, &sec1), (&rsa_cert, &pkcs1)] {
        let pipeline = setup.pipeline(
            &server.url("/ingest"),
            &format!(
                "    batch: {{ timeout_ms: 50 }}\n    tls: {{ ca_file: {}, cert_file: {}, key_file: {} }}\n",
                setup.files.ca.display(),
                cert.display(),
                key.display()
            ),
        );
        let (mut auditflow, _) = setup.start(&pipeline);
        feed(&mut auditflow, sent..sent + 2);
        sent += 2;
        assert_exit_0(&mut auditflow);
    }
    let requests = server.requests();
    assert!(requests.iter().all(|request| request.client_cert));
    assert_eq!(
        delivered(&server).len(),
        4,
        "{:?}",
        server.handshake_errors()
    );
}

/// A redirect is a refusal: not followed, not retried, the events counted as rejected;
/// the next request goes through.
#[test]
fn a_3xx_answer_is_a_refusal() {
    let setup = Setup::new("redirect");
    let server = setup.server(ServerOptions::replies(vec![Reply::status(301)
        .header("Location", "https://127.0.0.1:1/elsewhere")
        .body("moved")]));
    let pipeline = setup.pipeline(
        &server.url("/ingest"),
        &format!(
            "    batch: {{ max_events: 4, timeout_ms: 50 }}\n    request: {{ concurrency: 1 }}\n{}",
            setup.ca_line()
        ),
    );
    let (mut auditflow, address) = setup.start(&pipeline);
    let mut stdin = auditflow.take_stdin();
    let lines: Vec<String> = (0..8).map(audit_line).collect();
    for line in &lines {
        writeln!(stdin, "{line}").unwrap();
    }
    stdin.flush().unwrap();
    server.wait_until(Duration::from_secs(20), |requests| requests.len() >= 2);
    let labels = [("component_id", "collector"), ("error_type", "rejected")];
    let deadline = Instant::now() + Duration::from_secs(20);
    let rejected = loop {
        let (_, text) = http_get(&address, "/metrics").unwrap();
        if let Some(value) = metric(&text, "auditflow_component_errors_total", &labels) {
            break value;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(rejected, 4.0);
    drop(stdin);
    assert_exit_0(&mut auditflow);
    assert_eq!(codes(&server), [Some(301), Some(200)]);
    assert!(server.requests().iter().all(|r| r.path == "/ingest"));
    assert_eq!(delivered(&server), lines[4..]);
    let stderr = auditflow.stderr();
    assert!(
        stderr.contains("refused a request of 4 events with 301 Moved Permanently"),
        "{stderr}"
    );
}

/// `408 Request Timeout` is retried, and the retry delivers the same events.
#[test]
fn a_408_is_retried() {
    let setup = Setup::new("408");
    let server = setup.server(ServerOptions::replies(vec![Reply::status(408)]));
    let pipeline = setup.pipeline(
        &server.url("/ingest"),
        &format!(
            "    batch: {{ timeout_ms: 50 }}\n    request: {{ retry_initial_backoff_ms: 20, retry_max_backoff_ms: 100 }}\n{}",
            setup.ca_line()
        ),
    );
    let (mut auditflow, _) = setup.start(&pipeline);
    let lines = feed(&mut auditflow, 0..5);
    assert_exit_0(&mut auditflow);
    assert_eq!(codes(&server), [Some(408), Some(200)]);
    let requests = server.requests();
    assert_eq!(requests[0].body, requests[1].body);
    assert_eq!(delivered(&server), lines);
}

/// `Retry-After` as an HTTP date two seconds ahead: the next try comes no sooner than the
/// date (at least a second after the 429, as the date has whole seconds).
#[test]
fn retry_after_as_an_http_date_is_honoured() {
    let setup = Setup::new("retry-date");
    let mut first = true;
    let server = setup.server(ServerOptions::responder(move |_: &Recorded| {
        if std::mem::take(&mut first) {
            let when = SystemTime::now() + Duration::from_secs(2);
            Reply::status(429).header("Retry-After", &httpdate::fmt_http_date(when))
        } else {
            Reply::ok()
        }
    }));
    let pipeline = setup.pipeline(
        &server.url("/ingest"),
        &format!(
            "    batch: {{ timeout_ms: 50 }}\n    request: {{ retry_initial_backoff_ms: 20, retry_max_backoff_ms: 10000 }}\n{}",
            setup.ca_line()
        ),
    );
    let (mut auditflow, _) = setup.start(&pipeline);
    let lines = feed(&mut auditflow, 0..5);
    assert_exit_0(&mut auditflow);
    assert_eq!(codes(&server), [Some(429), Some(200)]);
    let requests = server.requests();
    let gap = requests[1].at - requests[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "retried {gap:?} after a Retry-After date 2 s ahead"
    );
    assert_eq!(delivered(&server), lines);
}

/// A server answering `429` with `Retry-After: 18446744073709551615` parked the sink for
/// ever (and shutdown with it). The wait is bounded by `retry_max_backoff_ms`: the sink
/// retries, delivers, and `SIGTERM` drains and exits 0.
#[test]
fn a_retry_after_of_u64_max_is_bounded_by_retry_max_backoff_ms_and_shutdown_completes() {
    let setup = Setup::new("retry-u64-max");
    let huge = || Reply::status(429).header("Retry-After", "18446744073709551615");
    let server = setup.server(ServerOptions::replies(vec![huge(), huge(), huge()]));
    let pipeline = setup.pipeline(
        &server.url("/ingest"),
        &format!(
            "    batch: {{ timeout_ms: 50 }}\n    request: {{ retry_initial_backoff_ms: 50, retry_max_backoff_ms: 200 }}\n{}",
            setup.ca_line()
        ),
    );
    let (mut auditflow, _) = setup.start(&pipeline);
    let mut stdin = auditflow.take_stdin();
    let lines: Vec<String> = (0..5).map(audit_line).collect();
    for line in &lines {
        writeln!(stdin, "{line}").unwrap();
    }
    stdin.flush().unwrap();
    server.wait_until(Duration::from_secs(20), |requests| !requests.is_empty());
    auditflow.signal(libc::SIGTERM);
    assert_exit_0(&mut auditflow);
    assert_eq!(codes(&server), [Some(429), Some(429), Some(429), Some(200)]);
    assert_eq!(delivered(&server), lines);
    let stderr = auditflow.stderr();
    assert!(stderr.contains("retry_in_ms=200"), "{stderr}");
    assert!(!stderr.contains("retry_in_ms=18446"), "{stderr}");
    drop(stdin);
}

/// HTTP/2 when the server offers `h2` by ALPN, HTTP/1.1 when it offers only `http/1.1`.
#[test]
fn http_1_1_when_the_server_offers_no_h2() {
    let setup = Setup::new("alpn");
    let h2 = setup.server(ServerOptions::default());
    let h1 = setup.server(ServerOptions::default().http1_only());
    for (server, version) in [(&h2, "HTTP/2.0"), (&h1, "HTTP/1.1")] {
        let pipeline = setup.pipeline(
            &server.url("/ingest"),
            &format!("    batch: {{ timeout_ms: 50 }}\n{}", setup.ca_line()),
        );
        let (mut auditflow, _) = setup.start(&pipeline);
        let lines = feed(&mut auditflow, 0..3);
        assert_exit_0(&mut auditflow);
        assert_eq!(delivered(server), lines);
        assert!(server.requests().iter().all(|r| r.version == version));
    }
}

/// A request batch that is neither full nor due (`timeout_ms` of an hour) goes out when
/// `SIGTERM` ends the input, and the process exits 0 once it is delivered.
#[test]
fn the_partial_batch_is_flushed_at_shutdown() {
    let setup = Setup::new("flush");
    let server = setup.server(ServerOptions::default());
    let pipeline = setup.pipeline(
        &server.url("/ingest"),
        &format!(
            "    batch: {{ max_events: 1000, timeout_ms: 3600000 }}\n{}",
            setup.ca_line()
        ),
    );
    let (mut auditflow, address) = setup.start(&pipeline);
    let mut stdin = auditflow.take_stdin();
    let lines: Vec<String> = (0..5).map(audit_line).collect();
    for line in &lines {
        writeln!(stdin, "{line}").unwrap();
    }
    stdin.flush().unwrap();
    let labels = [("component_id", "collector")];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, text) = http_get(&address, "/metrics").unwrap();
        if metric(&text, "auditflow_component_received_events_total", &labels) == Some(5.0) {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.requests().is_empty(), "sent before it was due");
    auditflow.signal(libc::SIGTERM);
    assert_exit_0(&mut auditflow);
    assert_eq!(server.requests().len(), 1);
    assert_eq!(delivered(&server), lines);
    drop(stdin);
}
