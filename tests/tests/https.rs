//! The real binary: standard input -> `https` sink -> an HTTPS server with a private CA.

use std::io::Write;
use std::time::Duration;

use auditflow_e2e::tls::{Pki, ServerOptions, TestServer};
use auditflow_e2e::{http_get, metric, wait_ready, Auditflow, Workspace};

const FIXTURE: &str = include_str!("../../crates/testkit/fixtures/kube-apiserver-1.32-audit.log");

#[test]
fn every_event_from_stdin_reaches_the_https_server() {
    let workspace = Workspace::new();
    let pki = Pki::new("collector");
    let files = pki.write_to(workspace.path());
    let server = TestServer::start(&pki, ServerOptions::default().require_client_cert());
    let metrics = "127.0.0.1:0";
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            r#"
data_dir: {data_dir}
metrics:
  address: {metrics}
sources:
  apiserver:
    type: stdin
sinks:
  collector:
    type: https
    inputs: [apiserver]
    uri: {uri}
    encoding: event_list
    compression: zstd
    batch: {{ max_events: 100, timeout_ms: 200 }}
    auth: {{ bearer_token: "${{COLLECTOR_TOKEN}}" }}
    tls:
      ca_file: {ca}
      cert_file: {cert}
      key_file: {key}
"#,
            data_dir = workspace.path().display(),
            uri = server.url("/audit"),
            ca = files.ca.display(),
            cert = files.client_cert.display(),
            key = files.client_key.display(),
        ),
    );
    let mut auditflow = Auditflow::spawn(
        &workspace,
        &["run".as_ref(), pipeline.as_os_str()],
        &[("COLLECTOR_TOKEN", "t0ken-from-env")],
    );
    let metrics = auditflow.metrics_address(Duration::from_secs(20));
    wait_ready(&metrics, Duration::from_secs(20));
    let mut stdin = auditflow.take_stdin();
    stdin.write_all(FIXTURE.as_bytes()).unwrap();
    stdin.flush().unwrap();

    let expected: Vec<&str> = FIXTURE.lines().filter(|line| !line.is_empty()).collect();
    server.wait_until(Duration::from_secs(20), |requests| {
        requests
            .iter()
            .map(|r| items(r.body_str()).len())
            .sum::<usize>()
            >= expected.len()
    });
    let (_, text) = http_get(&metrics, "/metrics").unwrap();
    let labels = [("component_id", "collector")];
    assert_eq!(
        metric(&text, "auditflow_component_sent_events_total", &labels),
        Some(expected.len() as f64),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "auditflow_sink_request_duration_seconds_count",
            &[("component_id", "collector"), ("status_class", "2xx")]
        ),
        Some(server.requests().len() as f64)
    );

    drop(stdin);
    let status = auditflow.wait_timeout(Duration::from_secs(20));
    assert!(
        status.success(),
        "exit {status:?}; stderr:\n{}",
        auditflow.stderr()
    );

    // Requests run concurrently (4 by default), so they may arrive in any order; each
    // holds a run of consecutive events, byte for byte.
    let requests = server.requests();
    let mut runs: Vec<Vec<String>> = requests.iter().map(|r| items(r.body_str())).collect();
    runs.sort_by_key(|run| expected.iter().position(|line| *line == run[0]));
    let arrived: Vec<String> = runs.concat();
    assert!(
        arrived == expected,
        "the events that arrived differ from those sent ({} vs {})",
        arrived.len(),
        expected.len()
    );
    for request in &requests {
        assert_eq!(request.path, "/audit");
        assert!(request.client_cert);
        assert_eq!(request.header("content-encoding"), Some("zstd"));
        assert_eq!(
            request.header("authorization"),
            Some("Bearer t0ken-from-env")
        );
    }
    assert!(
        !auditflow.stderr().contains("t0ken-from-env"),
        "the token leaked into the log"
    );
}

/// The raw items of an `EventList` body.
fn items(body: &str) -> Vec<String> {
    use serde_json::value::RawValue;
    let list: std::collections::HashMap<String, Box<RawValue>> =
        serde_json::from_str(body).expect("an EventList body");
    assert_eq!(list["kind"].get(), r#""EventList""#);
    let items: Vec<Box<RawValue>> =
        serde_json::from_str(list["items"].get()).expect("items is an array");
    items.iter().map(|item| item.get().to_owned()).collect()
}

/// Issue 5: auditflow -> `https` (`event_list`, gzip, TLS, bearer token) -> auditflow
/// `webhook` source. The receiver answers 200 only once its stdout has the events, and the
/// sender acknowledges only on that 200, so the sender exits at EOF only after every event
/// is out of the receiver, in order and byte for byte.
#[test]
fn an_event_list_round_trip_through_the_webhook_source_delivers_every_event_in_order() {
    const TOKEN: &str = "round-trip-t0ken";
    let workspace = Workspace::new();
    let pki = Pki::new("round-trip");
    let files = pki.write_to(workspace.path());

    // B: webhook source -> stdout.
    let receiver_metrics = "127.0.0.1:0";
    let receiver_pipeline = workspace.write(
        "receiver.yaml",
        &format!(
            r#"
data_dir: {data_dir}
metrics:
  address: {receiver_metrics}
sources:
  api:
    type: webhook
    address: 127.0.0.1:0
    path: /audit
    tls:
      cert_file: {cert}
      key_file: {key}
    auth:
      bearer_tokens: ["${{RECEIVER_TOKEN}}"]
sinks:
  out:
    type: stdout
    inputs: [api]
"#,
            data_dir = workspace.path().join("receiver").display(),
            cert = files.server_cert.display(),
            key = files.server_key.display(),
        ),
    );
    let mut receiver = Auditflow::spawn(
        &workspace,
        &["run".as_ref(), receiver_pipeline.as_os_str()],
        &[("RECEIVER_TOKEN", TOKEN)],
    );
    let received = receiver.stdout_lines();
    let receiver_metrics = receiver.metrics_address(Duration::from_secs(20));
    wait_ready(&receiver_metrics, Duration::from_secs(20));
    let receiver_address = receiver.webhook_address("api", Duration::from_secs(20));

    // A: stdin -> https sink, one request at a time so that the order is kept.
    let sender_metrics = "127.0.0.1:0";
    let sender_pipeline = workspace.write(
        "sender.yaml",
        &format!(
            r#"
data_dir: {data_dir}
metrics:
  address: {sender_metrics}
sources:
  apiserver:
    type: stdin
sinks:
  forward:
    type: https
    inputs: [apiserver]
    uri: https://{receiver_address}/audit
    encoding: event_list
    compression: gzip
    batch: {{ max_events: 50, timeout_ms: 200 }}
    request: {{ concurrency: 1 }}
    auth: {{ bearer_token: "${{SENDER_TOKEN}}" }}
    tls:
      ca_file: {ca}
"#,
            data_dir = workspace.path().join("sender").display(),
            ca = files.ca.display(),
        ),
    );
    let mut sender = Auditflow::spawn(
        &workspace,
        &["run".as_ref(), sender_pipeline.as_os_str()],
        &[("SENDER_TOKEN", TOKEN)],
    );
    let sender_metrics = sender.metrics_address(Duration::from_secs(20));
    wait_ready(&sender_metrics, Duration::from_secs(20));
    let mut stdin = sender.take_stdin();
    stdin.write_all(FIXTURE.as_bytes()).unwrap();
    drop(stdin);

    let status = sender.wait_timeout(Duration::from_secs(60));
    assert!(
        status.success(),
        "the sender exited {status:?}; stderr:\n{}\nreceiver stderr:\n{}",
        sender.stderr(),
        receiver.stderr()
    );
    let expected: Vec<&str> = FIXTURE.lines().collect();
    assert_eq!(expected.len(), 245);
    // The sender is gone, so every event was acknowledged: the receiver's stdout already
    // had all of them.
    let (_, text) = http_get(&receiver_metrics, "/metrics").unwrap();
    assert_eq!(
        metric(
            &text,
            "auditflow_component_sent_events_total",
            &[("component_id", "out")]
        ),
        Some(expected.len() as f64),
        "{text}"
    );
    let answered = metric(
        &text,
        "auditflow_webhook_requests_total",
        &[("component_id", "api"), ("code", "200")],
    );
    assert!(answered >= Some(1.0), "{text}");

    let mut arrived = Vec::with_capacity(expected.len());
    while arrived.len() < expected.len() {
        match received.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => arrived.push(line),
            Err(_) => break,
        }
    }
    assert_eq!(
        arrived.len(),
        expected.len(),
        "events on the receiver's stdout"
    );
    if let Some(index) = (0..expected.len()).find(|&i| arrived[i] != expected[i]) {
        panic!(
            "event {index} differs:\n sent: {}\n got:  {}",
            expected[index], arrived[index]
        );
    }

    receiver.signal(libc::SIGTERM);
    let status = receiver.wait_timeout(Duration::from_secs(30));
    assert!(status.success(), "receiver stderr:\n{}", receiver.stderr());
    assert!(
        received.recv_timeout(Duration::from_secs(1)).is_err(),
        "the receiver wrote more than was sent"
    );
    assert!(!sender.stderr().contains(TOKEN) && !receiver.stderr().contains(TOKEN));
}
