//! The sink against real HTTPS servers on 127.0.0.1:0, with certificates made here, and
//! real audit events.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auditflow_core::channel;
use auditflow_core::{
    BatchStatus, BuildContext, Output, Shutdown, Sink, SinkConfig, SinkContext, Source,
    SourceContext, Telemetry, Validate,
};
use auditflow_metrics::{ComponentMetrics, Metrics};
use auditflow_testkit::events::{audit_log_events, audit_log_lines};
use auditflow_testkit::stall::StallWatch;
use auditflow_testkit::{compliance, event, MemorySource, RecordingTelemetry, SourceProbe};
use serde_json::{json, Value};
use tls_server::{Pki, Recorded, Reply, ServerOptions, TestServer};

use crate::{HttpsConfig, BATCH_TIMEOUT_MS, RETRY_MAX_DURATION_SECS};

use auditflow_testkit::tls as tls_server;

/// A private CA on disk and a server using it.
struct Setup {
    pki: Pki,
    dir: tempfile::TempDir,
    server: TestServer,
}

impl Setup {
    fn new(options: ServerOptions) -> Setup {
        let pki = Pki::new("collector");
        let dir = tempfile::tempdir().unwrap();
        pki.write_to(dir.path());
        let server = TestServer::start(&pki, options);
        Setup { pki, dir, server }
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Options for a sink trusting the private CA, plus `extra` (merged at the top level).
    fn options(&self, extra: Value) -> Value {
        let mut options = json!({
            "uri": self.server.url("/ingest"),
            "tls": { "ca_file": self.file("ca.pem") },
        });
        merge(&mut options, extra);
        options
    }
}

fn merge(into: &mut Value, extra: Value) {
    match (into, extra) {
        (Value::Object(into), Value::Object(extra)) => {
            for (key, value) in extra {
                match into.get_mut(&key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        merge(existing, value)
                    }
                    _ => {
                        into.insert(key, value);
                    }
                }
            }
        }
        (into, extra) => *into = extra,
    }
}

fn config(options: Value) -> HttpsConfig {
    serde_json::from_value(options).expect("valid https options")
}

fn build(id: &str, options: Value, telemetry: Arc<dyn Telemetry>) -> Box<dyn Sink> {
    let metrics = ComponentMetrics::new(&Metrics::new(), id, "sink", "https");
    build_with(metrics, options, telemetry)
}

/// Builds the sink recording its series through `metrics`.
fn build_with(
    metrics: Arc<ComponentMetrics>,
    options: Value,
    telemetry: Arc<dyn Telemetry>,
) -> Box<dyn Sink> {
    config(options)
        .build(BuildContext {
            id: metrics.id().to_owned(),
            data_dir: "/nonexistent".into(),
            telemetry,
            metrics,
        })
        .expect("the sink builds")
}

/// Everything logged while the guard lives (on this thread: `#[tokio::test]` runs every
/// task on it).
struct Logs {
    text: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Logs {
    fn capture() -> Logs {
        let text = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::clone(&text);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(Arc::clone(&writer)))
            .finish();
        Logs {
            text,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.text.lock().unwrap()).into_owned()
    }
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The events in a request body, as the raw bytes of each, in order.
fn events_in(request: &Recorded, encoding: &str) -> Vec<String> {
    assert_eq!(request.decode_error, None, "request {}", request.index);
    let body = request.body_str();
    match encoding {
        "ndjson" => {
            assert!(body.ends_with('\n'), "an NDJSON body ends with a newline");
            body.lines().map(str::to_owned).collect()
        }
        "json_array" => raw_items(body),
        "event_list" => {
            #[derive(serde::Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct EventList<'a> {
                kind: &'a str,
                api_version: &'a str,
                #[serde(borrow)]
                items: Vec<&'a serde_json::value::RawValue>,
            }
            let list: EventList = serde_json::from_str(body).expect("an EventList");
            assert_eq!(
                (list.kind, list.api_version),
                ("EventList", "audit.k8s.io/v1")
            );
            list.items
                .iter()
                .map(|item| item.get().to_owned())
                .collect()
        }
        other => panic!("unknown encoding {other}"),
    }
}

fn raw_items(body: &str) -> Vec<String> {
    let items: Vec<&serde_json::value::RawValue> =
        serde_json::from_str(body).expect("a JSON array");
    items.iter().map(|item| item.get().to_owned()).collect()
}

fn fixture_lines() -> Vec<String> {
    audit_log_lines().map(str::to_owned).collect()
}

fn batches_of(size: usize) -> Vec<Vec<auditflow_core::Event>> {
    audit_log_events().chunks(size).map(<[_]>::to_vec).collect()
}

type Task = tokio::task::JoinHandle<Result<(), auditflow_core::ComponentError>>;

/// Runs a MemorySource into `sink`; returns the probe and the two tasks.
fn run_pipeline(
    sink: Box<dyn Sink>,
    batches: Vec<Vec<auditflow_core::Event>>,
) -> (SourceProbe, Task, Task) {
    let telemetry: Arc<dyn Telemetry> = Arc::new(auditflow_core::NoTelemetry);
    let (source, probe) = MemorySource::new(batches);
    let (tx, rx) = channel::channel(1, Arc::clone(&telemetry));
    let (_trigger, shutdown) = Shutdown::new();
    let source = tokio::spawn(Box::new(source).run(SourceContext {
        id: "memory".into(),
        out: Output::new(vec![tx], Arc::clone(&telemetry)),
        shutdown,
        telemetry: Arc::clone(&telemetry),
        dead_letter: auditflow_core::DeadLetterOutput::disconnected("memory"),
    }));
    let sink = tokio::spawn(sink.run(SinkContext {
        id: "out".into(),
        input: rx,
        telemetry,
        dead_letter: auditflow_core::DeadLetterOutput::disconnected("out"),
    }));
    (probe, source, sink)
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_encoding_and_compression_arrives_byte_for_byte() {
    let expected = fixture_lines();
    for encoding in ["ndjson", "json_array", "event_list"] {
        for compression in ["none", "gzip", "zstd"] {
            let setup = Setup::new(ServerOptions::default());
            let sink = build(
                "byte_for_byte",
                setup.options(json!({
                    "encoding": encoding,
                    "compression": compression,
                    "batch": { "max_events": 100 },
                    "request": { "concurrency": 1 },
                })),
                Arc::new(auditflow_core::NoTelemetry),
            );
            let statuses =
                compliance::check_sink(sink, batches_of(60), Duration::from_secs(10)).await;
            assert_eq!(statuses, vec![BatchStatus::Delivered; 5]);

            let requests = setup.server.requests();
            let arrived: Vec<String> = requests
                .iter()
                .flat_map(|request| events_in(request, encoding))
                .collect();
            assert!(
                arrived == expected,
                "{encoding}/{compression}: the events that arrived differ from those sent"
            );
            // 245 events in requests of at most 100: 100, 100, 45.
            let sizes: Vec<usize> = requests
                .iter()
                .map(|request| events_in(request, encoding).len())
                .collect();
            assert_eq!(sizes, [100, 100, 45], "{encoding}/{compression}");
            for request in &requests {
                assert_eq!(request.method, "POST");
                assert_eq!(request.path, "/ingest");
                assert_eq!(request.version, "HTTP/2.0", "ALPN picks HTTP/2");
                let content_encoding = request.header("content-encoding");
                match compression {
                    "none" => assert_eq!(content_encoding, None),
                    other => {
                        assert_eq!(content_encoding, Some(other));
                        assert!(request.wire_len * 3 < request.body.len(), "compressed");
                    }
                }
                let content_type = if encoding == "ndjson" {
                    "application/x-ndjson"
                } else {
                    "application/json"
                };
                assert_eq!(request.header("content-type"), Some(content_type));
            }
        }
    }
}

#[tokio::test]
async fn compressing_a_large_body_does_not_stall_the_runtime() {
    for compression in ["gzip", "zstd"] {
        // Just under 1 MiB (one body) of events that carry the marker the watch recognises.
        let marker = format!("compressed-off-the-runtime-{compression}");
        let ids: Vec<String> = (0..800).map(|i| format!("{marker}-{i}")).collect();
        let events: Vec<_> = ids
            .iter()
            .map(|id| {
                event(&format!(
                    r#"{{"kind":"Event","auditID":"{id}","pad":"{}"}}"#,
                    "x".repeat(1100)
                ))
            })
            .collect();
        let setup = Setup::new(ServerOptions::default());
        let sink = build(
            "compressing",
            setup.options(json!({
                "compression": compression,
                "batch": { "max_events": 1000 },
                "request": { "concurrency": 1 },
            })),
            Arc::new(auditflow_core::NoTelemetry),
        );
        // On the runtime of `#[tokio::test]`: one thread, which compressing on it would
        // hold for as long as that takes.
        let watch = StallWatch::start(marker);
        let statuses = compliance::check_sink(sink, vec![events], Duration::from_secs(60)).await;
        assert_eq!(statuses, [BatchStatus::Delivered], "{compression}");
        let arrived: Vec<Value> = setup
            .server
            .requests()
            .iter()
            .flat_map(|request| events_in(request, "ndjson"))
            .map(|line| serde_json::from_str::<Value>(&line).unwrap()["auditID"].clone())
            .collect();
        assert!(
            arrived == ids.iter().map(|id| json!(id)).collect::<Vec<_>>(),
            "{compression}: {} events arrived, not the {} sent in order",
            arrived.len(),
            ids.len()
        );
        watch.assert_runtime_kept_running(&format!("{compression} compression"));
    }
}

#[tokio::test]
async fn put_with_headers_and_basic_auth() {
    let setup = Setup::new(ServerOptions::default());
    let sink = build(
        "put",
        setup.options(json!({
            "method": "PUT",
            "headers": { "X-Tenant": "blue" },
            "auth": { "basic": { "user": "audit", "password": "s3cret" } },
        })),
        Arc::new(auditflow_core::NoTelemetry),
    );
    let statuses = compliance::check_sink(sink, batches_of(245), Duration::from_secs(10)).await;
    assert_eq!(statuses, [BatchStatus::Delivered]);
    let requests = setup.server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "PUT");
    assert_eq!(requests[0].header("x-tenant"), Some("blue"));
    // base64("audit:s3cret")
    assert_eq!(
        requests[0].header("authorization"),
        Some("Basic YXVkaXQ6czNjcmV0")
    );
}

#[tokio::test]
async fn a_client_certificate_gets_through_a_server_that_requires_one() {
    let setup = Setup::new(ServerOptions::default().require_client_cert());
    let sink = build(
        "mtls",
        setup.options(json!({
            "tls": { "cert_file": setup.file("client.pem"), "key_file": setup.file("client.key") },
        })),
        Arc::new(auditflow_core::NoTelemetry),
    );
    let statuses = compliance::check_sink(sink, batches_of(100), Duration::from_secs(10)).await;
    assert_eq!(statuses, vec![BatchStatus::Delivered; 3]);
    let requests = setup.server.requests();
    assert!(requests.iter().all(|request| request.client_cert));
    let arrived: Vec<String> = requests
        .iter()
        .flat_map(|request| events_in(request, "ndjson"))
        .collect();
    assert_eq!(arrived.len(), 245);
}

#[tokio::test]
async fn without_the_client_certificate_nothing_is_acknowledged_and_the_log_says_why() {
    let logs = Logs::capture();
    let setup = Setup::new(ServerOptions::default().require_client_cert());
    let counts = Arc::new(RecordingTelemetry::default());
    let sink = build(
        "no_client_cert",
        setup.options(json!({
            "request": { "retry_initial_backoff_ms": 50, "retry_max_backoff_ms": 200, "retry_max_duration_secs": 1 },
        })),
        counts.clone(),
    );
    let statuses = compliance::check_sink(sink, batches_of(245), Duration::from_secs(10)).await;
    assert_eq!(statuses, [BatchStatus::Rejected]);
    assert!(setup.server.requests().is_empty());
    assert!(!setup.server.handshake_errors().is_empty());
    // With TLS 1.3 the client finishes its side of the handshake before the server
    // refuses it, so the server's alert can be lost to its close: the client then sees
    // the connection reset, closed, or a broken pipe on its next write. The server's own
    // handshake errors above show that it was the refusal.
    let logs = logs.text();
    let refused = [
        "CertificateRequired",
        "reset",
        "connection closed",
        "broken pipe",
    ];
    assert!(
        logs.contains("giving up a request of 245 events")
            && refused.iter().any(|why| logs.contains(why)),
        "logs:\n{logs}"
    );
    assert_eq!(counts.recorded().errored, [("retries_exhausted", 245)]);
}

#[tokio::test]
async fn a_wrong_ca_fails_with_a_clear_error_and_acknowledges_nothing() {
    let logs = Logs::capture();
    let setup = Setup::new(ServerOptions::default());
    let other = Pki::new("somebody else");
    std::fs::write(setup.dir.path().join("other-ca.pem"), &other.ca_pem).unwrap();
    let counts = Arc::new(RecordingTelemetry::default());
    let sink = build(
        "wrong_ca",
        setup.options(json!({
            "tls": { "ca_file": setup.file("other-ca.pem") },
            "request": { "retry_initial_backoff_ms": 50, "retry_max_backoff_ms": 200, "retry_max_duration_secs": 1 },
        })),
        counts.clone(),
    );
    let statuses = compliance::check_sink(sink, batches_of(100), Duration::from_secs(10)).await;
    assert_eq!(statuses, vec![BatchStatus::Rejected; 3]);
    assert!(setup.server.requests().is_empty(), "nothing got through");
    assert_eq!(counts.recorded().sent.0, 0);
    assert_eq!(counts.recorded().discarded, [("retries_exhausted", 245)]);
    let logs = logs.text();
    let expected = format!(
        "sinks.wrong_ca: TLS handshake with {} failed: invalid peer certificate: UnknownIssuer; check tls.ca_file",
        setup.server.address
    );
    assert!(
        logs.contains(&expected),
        "expected {expected:?} in:\n{logs}"
    );
    assert!(
        logs.contains("giving up a request of 245 events"),
        "logs:\n{logs}"
    );
    drop(setup.pki);
}

/// An outage: 503 until the test ends it, then 429 with `Retry-After: 1`, then three
/// connection resets, then recovery. Synchronised on what the server saw, never on time;
/// the one timing check is a lower bound (the `Retry-After` wait), which load cannot break.
#[tokio::test]
async fn an_outage_loses_nothing_retries_as_configured_and_delays_the_acks() {
    let logs = Logs::capture();
    let recovered = Arc::new(AtomicBool::new(false));
    let resets = Arc::new(AtomicUsize::new(0));
    let throttled = Arc::new(AtomicBool::new(false));
    let responder = {
        let (recovered, resets, throttled) = (recovered.clone(), resets.clone(), throttled.clone());
        move |_: &Recorded| {
            if !recovered.load(Ordering::SeqCst) {
                Reply::status(503).body("collector warming up")
            } else if !throttled.swap(true, Ordering::SeqCst) {
                Reply::status(429).header("Retry-After", "1")
            } else if resets.fetch_add(1, Ordering::SeqCst) < 3 {
                Reply::Reset
            } else {
                Reply::ok()
            }
        }
    };
    let setup = Setup::new(ServerOptions::responder(responder));
    let id = "outage";
    let metrics = ComponentMetrics::new(&Metrics::new(), id, "sink", "https");
    let sink = build_with(
        Arc::clone(&metrics),
        setup.options(json!({
            "batch": { "max_events": 100, "timeout_ms": 50 },
            "request": { "concurrency": 1, "retry_initial_backoff_ms": 50, "retry_max_backoff_ms": 1500, "timeout_ms": 10000 },
        })),
        Arc::new(auditflow_core::NoTelemetry),
    );
    let (probe, source, sink) = run_pipeline(sink, batches_of(25));

    // In the middle of the outage (the first request refused four times) nothing is
    // acknowledged, and the source is held back: 4 batches in the request being retried,
    // 4 in the next request, 1 in the channel.
    let server = &setup.server;
    wait_for(
        "four refused tries and a held-back source",
        Duration::from_secs(30),
        || server.requests().len() >= 4 && probe.sent() >= 9,
    )
    .await;
    assert!(
        probe.statuses().is_empty(),
        "acknowledged during the outage"
    );
    assert_eq!(probe.sent(), 9, "the source was not held back");
    recovered.store(true, Ordering::SeqCst);

    wait_for("every batch acknowledged", Duration::from_secs(30), || {
        probe.statuses().len() == 10
    })
    .await;
    assert!(probe
        .statuses()
        .iter()
        .all(|(_, status)| *status == BatchStatus::Delivered));
    source.await.unwrap().unwrap();
    sink.await.unwrap().unwrap();

    let requests = setup.server.requests();
    let delivered: Vec<String> = requests
        .iter()
        .filter(|request| request.reply.code() == Some(200))
        .flat_map(|request| events_in(request, "ndjson"))
        .collect();
    assert!(
        delivered == fixture_lines(),
        "events lost, duplicated or reordered"
    );

    // The order of answers: the 503s, one 429, three resets, then only 200s; the same
    // first request went through all of the failures.
    let codes: Vec<Option<u16>> = requests.iter().map(|r| r.reply.code()).collect();
    let refused = codes.iter().take_while(|code| **code == Some(503)).count();
    assert!(refused >= 4, "answers: {codes:?}");
    assert_eq!(
        codes[refused..refused + 5],
        [Some(429), None, None, None, Some(200)],
        "answers: {codes:?}"
    );
    assert!(codes[refused + 5..].iter().all(|code| *code == Some(200)));
    let first_body = &requests[0].body;
    assert!(requests[..refused + 5]
        .iter()
        .all(|r| &r.body == first_body));
    // Retry-After: 1 is honoured (below retry_max_backoff_ms): the next try came no sooner.
    let gap = requests[refused + 1].at - requests[refused].at;
    assert!(
        gap >= Duration::from_millis(1000),
        "Retry-After: 1 was followed after {gap:?}"
    );
    let failures = requests
        .iter()
        .filter(|request| request.reply.code() != Some(200))
        .count() as u64;
    let retries = metrics.sink_requests().retries.get();
    assert_eq!(
        retries, failures,
        "every failed try was retried and counted"
    );
    let logs = logs.text();
    assert!(
        logs.contains("answered 503 Service Unavailable; retrying"),
        "{logs}"
    );
    assert!(
        logs.contains("answered 429 Too Many Requests; retrying"),
        "{logs}"
    );
}

#[tokio::test]
async fn a_400_rejects_its_batch_logs_the_body_and_the_next_batch_goes_through() {
    let logs = Logs::capture();
    let setup = Setup::new(ServerOptions::replies(vec![
        Reply::status(400).body("event 17: requestReceivedTimestamp is not a timestamp")
    ]));
    let counts = Arc::new(RecordingTelemetry::default());
    let sink = build(
        "bad_request",
        setup.options(json!({
            "batch": { "max_events": 100 },
            "request": { "concurrency": 1 },
        })),
        counts.clone(),
    );
    let statuses = compliance::check_sink(sink, batches_of(100), Duration::from_secs(10)).await;
    assert_eq!(
        statuses,
        [
            BatchStatus::Rejected,
            BatchStatus::Delivered,
            BatchStatus::Delivered
        ]
    );
    assert_eq!(setup.server.requests().len(), 3, "the 400 was not retried");
    assert_eq!(counts.recorded().sent.0, 145);
    assert_eq!(counts.recorded().errored, [("rejected", 100)]);
    assert_eq!(counts.recorded().discarded, [("rejected", 100)]);
    let logs = logs.text();
    assert!(
        logs.contains("refused a request of 100 events with 400 Bad Request")
            && logs.contains("event 17: requestReceivedTimestamp is not a timestamp"),
        "logs:\n{logs}"
    );
}

/// An input batch split across two requests is acknowledged only once both are delivered,
/// and rejected if either is refused.
#[tokio::test]
async fn a_batch_split_across_requests_waits_for_both() {
    let setup = Setup::new(ServerOptions::replies(vec![
        Reply::ok(),
        Reply::status(422).body("no"),
    ]));
    let sink = build(
        "split",
        setup.options(json!({
            "batch": { "max_events": 30 },
            "request": { "concurrency": 1 },
        })),
        Arc::new(auditflow_core::NoTelemetry),
    );
    let events = audit_log_events();
    let batches = vec![
        events[..20].to_vec(),
        events[20..40].to_vec(),
        events[40..50].to_vec(),
    ];
    let statuses = compliance::check_sink(sink, batches, Duration::from_secs(10)).await;
    // Requests: [0..30) delivered, [30..50) refused. Batch 1 spans both.
    assert_eq!(
        statuses,
        [
            BatchStatus::Delivered,
            BatchStatus::Rejected,
            BatchStatus::Rejected
        ]
    );
}

#[tokio::test]
async fn a_busy_server_holds_the_source_back() {
    let open = Arc::new(AtomicBool::new(false));
    let setup = Setup::new(ServerOptions::responder({
        let open = open.clone();
        move |_: &Recorded| {
            if open.load(Ordering::SeqCst) {
                Reply::ok()
            } else {
                Reply::status(503)
            }
        }
    }));
    let sink = build(
        "busy",
        setup.options(json!({
            "batch": { "max_events": 10, "timeout_ms": 10 },
            "request": { "concurrency": 2, "retry_initial_backoff_ms": 20, "retry_max_backoff_ms": 50 },
        })),
        Arc::new(auditflow_core::NoTelemetry),
    );
    let (probe, source, sink) = run_pipeline(sink, batches_of(10));
    // Both slots refused twice: two requests in flight, one sealed batch waiting, one
    // batch in the channel, and the source waiting to send the next: nothing more is taken.
    let server = &setup.server;
    wait_for(
        "two refusals of each request",
        Duration::from_secs(30),
        || {
            let requests = server.requests();
            let mut bodies: Vec<&Vec<u8>> = requests.iter().map(|r| &r.body).collect();
            bodies.sort();
            bodies.windows(2).filter(|pair| pair[0] == pair[1]).count() >= 2
        },
    )
    .await;
    let sent = probe.sent();
    assert!(
        sent <= 5,
        "the source sent {sent} batches into a blocked sink"
    );
    assert!(probe.statuses().is_empty());
    open.store(true, Ordering::SeqCst);
    wait_for("every batch acknowledged", Duration::from_secs(10), || {
        probe.statuses().len() == 25
    })
    .await;
    source.await.unwrap().unwrap();
    sink.await.unwrap().unwrap();
    let delivered = setup
        .server
        .requests()
        .iter()
        .filter(|request| request.reply.code() == Some(200))
        .map(|request| events_in(request, "ndjson").len())
        .sum::<usize>();
    assert_eq!(delivered, 245);
}

#[test]
fn plain_http_needs_allow_plaintext() {
    let errors = config(json!({ "uri": "http://collector:8080/ingest" })).validate();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field.as_deref(), Some("uri"));
    assert!(errors[0].message.contains("allow_plaintext: true"));
    let errors = config(json!({ "uri": "http://collector:8080/ingest", "allow_plaintext": true }))
        .validate();
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn validation_names_the_field_at_fault() {
    let errors = config(json!({
        "uri": "https://collector/ingest",
        "headers": { "bad header": "x" },
        "request": { "retry_initial_backoff_ms": 1000, "retry_max_backoff_ms": 10 },
        "tls": { "cert_file": "/nonexistent/client.pem", "ca_file": "/nonexistent/ca.pem" },
    }))
    .validate();
    let fields: Vec<_> = errors.iter().filter_map(|e| e.field.as_deref()).collect();
    assert_eq!(
        fields,
        [
            "headers.bad header",
            "request.retry_max_backoff_ms",
            "tls.ca_file",
            "tls.key_file"
        ],
        "{errors:?}"
    );
}

/// The field and message of each problem `validate` finds.
fn problems(options: Value) -> Vec<(String, String)> {
    config(options)
        .validate()
        .into_iter()
        .map(|error| (error.field.unwrap_or_default(), error.message))
        .collect()
}

/// `headers` used to stop at the first header that could not be sent, so a second bad one
/// showed only after the first was fixed.
#[test]
fn validate_reports_every_error_not_only_the_first() {
    let found = problems(json!({
        "uri": "https://collector/ingest",
        "headers": { "bad header": "x", "X-Tenant": "line\nbreak" },
    }));
    assert_eq!(
        found,
        [
            (
                "headers.X-Tenant".to_owned(),
                "has characters an HTTP header value cannot hold".to_owned()
            ),
            (
                "headers.bad header".to_owned(),
                "is not a valid HTTP header name".to_owned()
            ),
        ]
    );
}

/// The client key was matched to its certificate only when the sink was built, so
/// `auditflow validate` passed a pair that `run` then refused.
#[test]
fn a_client_key_that_is_not_the_certificates_is_a_validate_error() {
    let dir = tempfile::tempdir().unwrap();
    let files = Pki::new("collector").write_to(dir.path());
    let tls = |key: &std::path::Path| json!({ "ca_file": files.ca, "cert_file": files.client_cert, "key_file": key });
    let uri = "https://collector/ingest";
    let matched = problems(json!({ "uri": uri, "tls": tls(&files.client_key) }));
    assert!(matched.is_empty(), "{matched:?}");
    let found = problems(json!({ "uri": uri, "tls": tls(&files.server_key) }));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "tls.key_file");
    let expected = format!(
        "{}: does not go with tls.cert_file {}: ",
        files.server_key.display(),
        files.client_cert.display()
    );
    assert!(found[0].1.starts_with(&expected), "{found:?}");
}

/// A CA file that is a named pipe giving its bytes to one reader only: a second open
/// waits for a writer that never comes.
fn ca_file_for_one_reader(dir: &std::path::Path) -> std::path::PathBuf {
    let ca = dir.join("ca.pem");
    let made = std::process::Command::new("mkfifo").arg(&ca).status();
    assert!(made.expect("mkfifo runs").success());
    let pem = Pki::new("collector").ca_pem;
    let writer_side = ca.clone();
    std::thread::spawn(move || {
        let mut pipe = std::fs::OpenOptions::new()
            .write(true)
            .open(writer_side)
            .unwrap();
        pipe.write_all(pem.as_bytes()).unwrap();
    });
    ca
}

/// Runs `work` on its own thread; fails the test with `stuck` when it takes over 30 s.
fn within_30_s(stuck: &str, work: impl FnOnce() + Send + 'static) {
    let (finished, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        work();
        finished.send(()).unwrap();
    });
    match done.recv_timeout(Duration::from_secs(30)) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{stuck}"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("it panicked"),
    }
}

/// `build` ran `validate`, which read the TLS files, and then read them again to make the
/// client configuration.
#[test]
fn build_reads_the_tls_files_once() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file_for_one_reader(dir.path());
    within_30_s(
        "build is still waiting to open the CA file a second time",
        move || {
            let options = json!({ "uri": "https://collector/ingest", "tls": { "ca_file": ca } });
            build("read_once", options, Arc::new(auditflow_core::NoTelemetry));
        },
    );
}

/// `auditflow run` validates every component when the pipeline loads and then builds it:
/// the build takes what `validate` compiled instead of reading the TLS files again.
#[test]
fn validate_then_build_reads_the_tls_files_once() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file_for_one_reader(dir.path());
    within_30_s(
        "build is waiting to open the CA file that validate already read",
        move || {
            let options = json!({ "uri": "https://collector/ingest", "tls": { "ca_file": ca } });
            let config = config(options);
            let problems = config.validate();
            assert!(problems.is_empty(), "{problems:?}");
            let cx = BuildContext::unobserved("validated_once", "/nonexistent");
            assert!(config.build(cx).is_ok(), "the validated sink did not build");
        },
    );
}

#[test]
fn a_timeout_of_zero_is_a_validate_error() {
    let found = problems(json!({
        "uri": "https://collector/ingest",
        "batch": { "timeout_ms": 0 },
        "request": { "timeout_ms": 0 },
    }));
    assert_eq!(
        found,
        [
            (
                "batch.timeout_ms".to_owned(),
                "must be between 1 and 3600000 milliseconds (1 ms to 1 h), found 0".to_owned()
            ),
            (
                "request.timeout_ms".to_owned(),
                "must be between 1 and 86400000 milliseconds (1 ms to 1 day), found 0".to_owned()
            ),
        ]
    );
}

#[test]
fn a_backoff_past_one_day_is_a_validate_error() {
    let day_ms: u64 = 24 * 60 * 60 * 1000;
    let at_a_day = problems(json!({
        "uri": "https://collector/ingest",
        "request": { "retry_initial_backoff_ms": day_ms, "retry_max_backoff_ms": day_ms },
    }));
    assert!(at_a_day.is_empty(), "{at_a_day:?}");
    let found = problems(json!({
        "uri": "https://collector/ingest",
        "request": { "retry_initial_backoff_ms": day_ms + 1, "retry_max_backoff_ms": u64::MAX },
    }));
    let fields: Vec<&str> = found.iter().map(|(field, _)| field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "request.retry_initial_backoff_ms",
            "request.retry_max_backoff_ms"
        ]
    );
    assert_eq!(
        found[1].1,
        "must be between 1 and 86400000 milliseconds (1 ms to 1 day), found 18446744073709551615"
    );
}

#[test]
fn a_retry_duration_of_zero_or_past_30_days_is_a_validate_error() {
    for secs in [0, 30 * 24 * 60 * 60 + 1] {
        let found = problems(json!({
            "uri": "https://collector/ingest",
            "request": { "retry_max_duration_secs": secs },
        }));
        assert_eq!(
            found,
            [(
                "request.retry_max_duration_secs".to_owned(),
                format!(
                    "must be between 1 and 2592000 seconds (1 s to 30 days), found {secs}; \
                     leave it unset to retry for ever"
                )
            )]
        );
    }
}

#[test]
fn debug_output_masks_secrets() {
    let config = config(json!({
        "uri": "https://collector/ingest",
        "headers": { "X-Api-Key": "header-secret" },
        "auth": { "bearer_token": "token-secret" },
    }));
    let shown = format!("{config:?}");
    assert!(!shown.contains("secret"), "{shown}");
    assert!(shown.contains("X-Api-Key"), "{shown}");
    let config: HttpsConfig = serde_json::from_value(json!({
        "uri": "https://collector/ingest",
        "auth": { "basic": { "user": "audit", "password": "pw-secret" } },
    }))
    .unwrap();
    let shown = format!("{config:?}");
    assert!(
        !shown.contains("pw-secret") && shown.contains("audit"),
        "{shown}"
    );
}

/// A server answering `429` with `Retry-After: 18446744073709551615` parked the sink for
/// ever; the wait is bounded by `retry_max_backoff_ms`, and no arithmetic overflows (with
/// the largest durations `validate` lets through).
#[tokio::test]
async fn a_retry_after_of_u64_max_waits_at_most_retry_max_backoff_ms() {
    let setup = Setup::new(ServerOptions::replies(vec![
        Reply::status(429).header("Retry-After", "18446744073709551615"),
        Reply::status(429).header("Retry-After", "18446744073709551615"),
    ]));
    let sink = build(
        "retry_after_u64_max",
        setup.options(json!({
            "batch": { "max_events": 1000, "timeout_ms": BATCH_TIMEOUT_MS.max },
            "request": { "concurrency": 1, "retry_initial_backoff_ms": 50, "retry_max_backoff_ms": 100, "retry_max_duration_secs": RETRY_MAX_DURATION_SECS.max },
        })),
        Arc::new(auditflow_core::NoTelemetry),
    );
    let statuses = compliance::check_sink(sink, batches_of(100), Duration::from_secs(30)).await;
    assert_eq!(statuses, [BatchStatus::Delivered; 3]);
    let codes: Vec<Option<u16>> = setup
        .server
        .requests()
        .iter()
        .map(|r| r.reply.code())
        .collect();
    assert_eq!(codes, [Some(429), Some(429), Some(200)]);
}
