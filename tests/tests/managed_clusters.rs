//! Managed clusters through the real binary: AKS audit logs as Azure diagnostic records
//! (through `stdin`, and through a real Kafka-protocol broker as an Event Hub delivers
//! them), and EKS audit logs as CloudWatch Logs payloads sent by a client that behaves as
//! Amazon Data Firehose does (`protocol: firehose`). Every audit event must come out as the
//! exact bytes the API server wrote, which the envelope held as a string.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditflow_e2e::kafka::Broker;
use auditflow_e2e::tls::{Pki, Reply, ServerOptions, TestServer};
use auditflow_e2e::webhook_client::{gzip, Answer, WebhookClient};
use auditflow_e2e::{free_port, run_to_end, wait_ready, Auditflow, Workspace};
use base64::Engine;
use bytes::Bytes;

const FIXTURE: &str = include_str!("../../crates/testkit/fixtures/kube-apiserver-1.32-audit.log");
const ACCESS_KEY: &str = "firehose-destination-key-0123456789";

fn fixture_events() -> Vec<&'static str> {
    FIXTURE.lines().filter(|line| !line.is_empty()).collect()
}

/// Diagnostic-records batches of 20 records each, as AKS writes them to an Event Hub:
/// every fourth record another category, every third audit record's `log` an object
/// rather than a string. Returns the batches and the events they hold, in order.
fn diagnostic_batches(events: &[&'static str]) -> (Vec<String>, Vec<&'static str>) {
    let mut batches = Vec::new();
    let mut wrapped = Vec::new();
    let mut records = Vec::new();
    let mut next = events.iter();
    let mut n = 0usize;
    loop {
        if records.len() == 20 {
            batches.push(format!(r#"{{"records":[{}]}}"#, records.join(",")));
            records.clear();
        }
        n += 1;
        if n.is_multiple_of(4) {
            let category = if n.is_multiple_of(8) {
                "guard"
            } else {
                "kube-apiserver"
            };
            records.push(format!(
                r#"{{"time":"2026-12-01T04:00:00Z","category":"{category}","operationName":"Microsoft.ContainerService/managedClusters/diagnosticLogs/Read","properties":{{"log":"I1201 04:00:00.000000 1 handler.go:286] line {n}\n","stream":"stderr","pod":"kube-apiserver-5d9f"}}}}"#
            ));
            continue;
        }
        let Some(event) = next.next() else { break };
        let category = if n.is_multiple_of(5) {
            "kube-audit-admin"
        } else {
            "kube-audit"
        };
        let log = if n.is_multiple_of(3) {
            (*event).to_owned()
        } else {
            serde_json::to_string(&format!("{event}\n")).unwrap()
        };
        records.push(format!(
            r#"{{"time":"2026-12-01T04:00:00Z","resourceId":"/SUBSCRIPTIONS/0000/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.CONTAINERSERVICE/MANAGEDCLUSTERS/AKS-1","category":"{category}","operationName":"Microsoft.ContainerService/managedClusters/diagnosticLogs/Read","properties":{{"log":{log},"stream":"stdout","pod":"kube-apiserver-5d9f"}}}}"#
        ));
        wrapped.push(*event);
    }
    if !records.is_empty() {
        batches.push(format!(r#"{{"records":[{}]}}"#, records.join(",")));
    }
    (batches, wrapped)
}

#[test]
fn aks_diagnostic_records_through_stdin_come_out_byte_for_byte() {
    let workspace = Workspace::new();
    let events = fixture_events();
    let (batches, wrapped) = diagnostic_batches(&events);
    assert!(batches.len() > 10 && wrapped.len() == events.len());
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            "data_dir: {}\n\
             sources:\n  aks:\n    type: stdin\n    decoding: azure_diagnostic_records\n    max_line_bytes: 16777216\n\
             sinks:\n  out:\n    type: stdout\n    inputs: [aks]\n",
            workspace.path().join("data").display()
        ),
    );
    let input = batches.join("\n") + "\n";
    let output = run_to_end(
        workspace.path(),
        &["run", pipeline.to_str().unwrap()],
        &[],
        input.as_bytes(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), wrapped.len(), "{stderr}");
    for (line, event) in lines.iter().zip(&wrapped) {
        assert_eq!(line, event, "an event changed on the way");
    }
    // The other categories were refused as not_audit, and said so.
    assert!(stderr.contains("not_audit"), "{stderr}");
}

#[test]
fn aks_event_hub_messages_through_a_kafka_broker_come_out_byte_for_byte() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let workspace = Workspace::new();
    let events = fixture_events();
    let (batches, wrapped) = diagnostic_batches(&events);
    let topic = broker.create_topic("aks-audit", 2);
    broker.produce(
        &topic,
        batches
            .iter()
            .enumerate()
            .map(|(i, batch)| (Some(format!("{i}")), batch.as_bytes().to_vec())),
    );
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            "data_dir: {data}\n\
             metrics:\n  address: 127.0.0.1:0\n\
             sources:\n  eventhub:\n    type: kafka\n    bootstrap_servers: {servers}\n    topics: [{topic}]\n    group_id: auditflow\n    decoding: azure_diagnostic_records\n\
             sinks:\n  out:\n    type: stdout\n    inputs: [eventhub]\n",
            data = workspace.path().join("data").display(),
            servers = broker.bootstrap_servers,
        ),
    );
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let metrics = auditflow.metrics_address(Duration::from_secs(20));
    let lines = auditflow.stdout_lines();
    let mut arrived = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while arrived.len() < wrapped.len() && Instant::now() < deadline {
        if let Ok(line) = lines.recv_timeout(Duration::from_secs(1)) {
            arrived.push(line);
        }
    }
    assert_eq!(
        arrived.len(),
        wrapped.len(),
        "stderr:\n{}",
        auditflow.stderr()
    );
    // Two partitions: the order holds within each message, not across them.
    let expected: HashSet<&str> = wrapped.iter().copied().collect();
    let got: HashSet<&str> = arrived.iter().map(String::as_str).collect();
    assert_eq!(
        got, expected,
        "the events differ from the strings they were wrapped in"
    );
    let (_, text) = auditflow_e2e::http_get(&metrics, "/metrics").unwrap();
    let not_audit = auditflow_e2e::metric(
        &text,
        "auditflow_component_discarded_events_total",
        &[("component_id", "eventhub"), ("reason", "not_audit")],
    );
    let others: usize = batches
        .iter()
        .map(|batch| {
            batch.matches(r#""category":"kube-apiserver""#).count()
                + batch.matches(r#""category":"guard""#).count()
        })
        .sum();
    assert!(others > 50);
    assert_eq!(not_audit, Some(others as f64));
}

/// A CloudWatch Logs subscription payload holding `events` from EKS's audit stream.
fn cloudwatch_payload(events: &[&str]) -> String {
    let log_events: Vec<String> = events
        .iter()
        .enumerate()
        .map(|(i, event)| {
            format!(
                r#"{{"id":"3752871846591{i:011}","timestamp":1764561600000,"message":{}}}"#,
                serde_json::to_string(event).unwrap()
            )
        })
        .collect();
    format!(
        r#"{{"messageType":"DATA_MESSAGE","owner":"123456789012","logGroup":"/aws/eks/prod/cluster","logStream":"kube-apiserver-audit-3f1c9a","subscriptionFilters":["audit-to-firehose"],"logEvents":[{}]}}"#,
        log_events.join(",")
    )
}

/// A Firehose request whose records are `payloads`, each gzip-compressed as CloudWatch
/// Logs delivers them, then base64.
fn firehose_body(request_id: &str, payloads: &[String]) -> String {
    let records: Vec<String> = payloads
        .iter()
        .map(|payload| {
            format!(
                r#"{{"data":"{}"}}"#,
                base64::engine::general_purpose::STANDARD.encode(gzip(payload.as_bytes()))
            )
        })
        .collect();
    format!(
        r#"{{"requestId":"{request_id}","timestamp":1764561600000,"records":[{}]}}"#,
        records.join(",")
    )
}

async fn post(
    client: &WebhookClient,
    request_id: &str,
    key: &str,
    body: &str,
    compress: bool,
) -> Answer {
    let mut connection = client.connect().await.expect("connect");
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("X-Amz-Firehose-Protocol-Version", "1.0"),
        ("X-Amz-Firehose-Request-Id", request_id),
        ("X-Amz-Firehose-Access-Key", key),
        (
            "X-Amz-Firehose-Source-Arn",
            "arn:aws:firehose:eu-west-1:123456789012:deliverystream/eks-audit",
        ),
    ];
    let body = if compress {
        headers.push(("Content-Encoding", "gzip"));
        gzip(body.as_bytes())
    } else {
        Bytes::from(body.to_owned())
    };
    connection
        .post("/firehose", &headers, body)
        .await
        .expect("an answer")
}

fn contract_body(answer: &Answer, request_id: &str) -> serde_json::Value {
    let body: serde_json::Value = serde_json::from_str(&answer.body).expect("a JSON body");
    assert_eq!(body["requestId"], request_id, "{}", answer.body);
    assert!(body["timestamp"].as_u64().is_some(), "{}", answer.body);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    body
}

/// The raw items of the `EventList` bodies the HTTPS sink delivered.
fn delivered(server: &TestServer) -> Vec<String> {
    use serde_json::value::RawValue;
    let mut items = Vec::new();
    for request in server.requests() {
        if request.reply.code() != Some(200) {
            continue;
        }
        let list: HashMap<&str, &RawValue> = serde_json::from_str(request.body_str()).unwrap();
        let raw: Vec<&RawValue> = serde_json::from_str(list["items"].get()).unwrap();
        items.extend(raw.iter().map(|item| item.get().to_owned()));
    }
    items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eks_audit_logs_from_a_firehose_client_arrive_byte_for_byte() {
    let workspace = Workspace::new();
    let pki = Pki::new("collector");
    let files = pki.write_to(workspace.path());
    // The collector behind auditflow fails while `failing` is set.
    let failing = Arc::new(AtomicBool::new(false));
    let server = {
        let failing = Arc::clone(&failing);
        TestServer::start(
            &pki,
            ServerOptions::responder(move |_| {
                if failing.load(Ordering::SeqCst) {
                    Reply::status(503)
                } else {
                    Reply::ok()
                }
            }),
        )
    };
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            r#"
data_dir: {data}
metrics:
  address: 127.0.0.1:0
sources:
  firehose:
    type: webhook
    protocol: firehose
    decoding: cloudwatch_logs
    address: 127.0.0.1:0
    path: /firehose
    allow_plaintext: true
    ack_timeout_ms: 1500
    auth:
      access_keys: ["${{FIREHOSE_ACCESS_KEY}}"]
sinks:
  collector:
    type: https
    inputs: [firehose]
    uri: {uri}
    encoding: event_list
    batch: {{ max_events: 1000, timeout_ms: 50 }}
    request: {{ retry_initial_backoff_ms: 50, retry_max_backoff_ms: 200 }}
    tls:
      ca_file: {ca}
"#,
            data = workspace.path().join("data").display(),
            uri = server.url("/audit"),
            ca = files.ca.display(),
        ),
    );
    let mut auditflow = Auditflow::spawn(
        &workspace,
        &["run".as_ref(), pipeline.as_os_str()],
        &[("FIREHOSE_ACCESS_KEY", ACCESS_KEY)],
    );
    let metrics = auditflow.metrics_address(Duration::from_secs(20));
    wait_ready(&metrics, Duration::from_secs(20));
    let address = auditflow.webhook_address("firehose", Duration::from_secs(20));
    let client = WebhookClient::plain(address);
    let events = fixture_events();

    // A wrong access key: 401 in the contract's shape, and nothing delivered.
    let wrong = post(
        &client,
        "req-wrong-key",
        "not-the-key",
        &firehose_body("req-wrong-key", &[cloudwatch_payload(&events[..3])]),
        false,
    )
    .await;
    assert_eq!(wrong.status, 401);
    let body = contract_body(&wrong, "req-wrong-key");
    assert!(body["errorMessage"]
        .as_str()
        .unwrap()
        .contains("access key"));

    // CloudWatch's CONTROL_MESSAGE: acknowledged, nothing to deliver.
    let control = r#"{"messageType":"CONTROL_MESSAGE","owner":"CloudwatchLogs","logGroup":"","logStream":"","subscriptionFilters":[],"logEvents":[{"id":"","timestamp":1764561600000,"message":"CWL CONTROL MESSAGE: Checking health of destination Firehose."}]}"#;
    let answer = post(
        &client,
        "req-control",
        ACCESS_KEY,
        &firehose_body("req-control", &[control.to_owned()]),
        false,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(contract_body(&answer, "req-control")
        .get("errorMessage")
        .is_none());

    // Most events in gzip payloads, two requests, one of them gzip as a whole.
    let (first, rest) = events.split_at(events.len() / 2);
    let (rest, last) = rest.split_at(rest.len() - 10);
    for (i, (part, compress)) in [(first, false), (rest, true)].into_iter().enumerate() {
        let payloads: Vec<String> = part.chunks(25).map(cloudwatch_payload).collect();
        let id = format!("req-data-{i}");
        let answer = post(
            &client,
            &id,
            ACCESS_KEY,
            &firehose_body(&id, &payloads),
            compress,
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        contract_body(&answer, &id);
    }

    // The collector fails: the request cannot be delivered now, so it gets the
    // contract's error; Firehose retries the same request, which then succeeds.
    failing.store(true, Ordering::SeqCst);
    let retried = firehose_body("req-retried", &[cloudwatch_payload(last)]);
    let answer = post(&client, "req-retried", ACCESS_KEY, &retried, false).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    let body = contract_body(&answer, "req-retried");
    assert!(!body["errorMessage"].as_str().unwrap().is_empty());
    failing.store(false, Ordering::SeqCst);
    let answer = post(&client, "req-retried", ACCESS_KEY, &retried, false).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    contract_body(&answer, "req-retried");

    // Every event arrived (the retried ones possibly twice), each exactly as written.
    let expected: HashSet<&str> = events.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let arrived = loop {
        let arrived = delivered(&server);
        let got: HashSet<&str> = arrived.iter().map(String::as_str).collect();
        if got.len() >= expected.len() || Instant::now() > deadline {
            break arrived;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let got: HashSet<&str> = arrived.iter().map(String::as_str).collect();
    assert_eq!(got, expected, "stderr:\n{}", auditflow.stderr());
    assert!(arrived.len() <= events.len() + last.len());
    assert!(
        auditflow.stderr().contains("req-retried"),
        "the request id is logged"
    );
    assert!(!auditflow.stderr().contains(ACCESS_KEY), "the key leaked");
    auditflow.signal(libc::SIGTERM);
    assert!(auditflow.wait_timeout(Duration::from_secs(30)).success());
}

/// An Event Hubs source whose `librdkafka_options` say `security.protocol: <protocol>` and
/// SASL PLAIN with `$ConnectionString`, into stdout; `extra` adds options. Its broker is a
/// port nothing listens on; its metrics endpoint is on any free port (logged).
fn event_hub_pipeline(workspace: &Workspace, protocol: &str, extra: &str) -> std::path::PathBuf {
    workspace.write(
        &format!("event-hub-{protocol}-{}.yaml", extra.len()),
        &format!(
            "data_dir: {data}\nmetrics:\n  address: 127.0.0.1:0\n\
             sources:\n  aks:\n    type: kafka\n    bootstrap_servers: 127.0.0.1:{port}\n\
             \x20   topics: [aks-audit]\n    group_id: auditflow\n    decoding: azure_diagnostic_records\n\
             \x20   librdkafka_options:\n      security.protocol: {protocol}\n      sasl.mechanism: PLAIN\n\
             \x20     sasl.username: $$ConnectionString\n      sasl.password: Endpoint=sb://aks-audit-ns.servicebus.windows.net/;SharedAccessKeyName=auditflow;SharedAccessKey=c2VjcmV0\n{extra}\
             sinks:\n  out: {{ type: stdout, inputs: [aks] }}\n",
            data = workspace.path().display(),
            port = free_port(),
        ),
    )
}

#[test]
fn event_hub_sasl_options_reach_librdkafka() {
    let workspace = Workspace::new();
    // SASL PLAIN is built into librdkafka: the consumer is created and the source starts.
    let file = event_hub_pipeline(&workspace, "sasl_plaintext", "");
    let mut auditflow = Auditflow::run(&workspace, &file);
    let metrics = auditflow.metrics_address(Duration::from_secs(20));
    wait_ready(&metrics, Duration::from_secs(20));
    auditflow.signal(libc::SIGTERM);
    assert!(
        auditflow.wait_timeout(Duration::from_secs(30)).success(),
        "{}",
        auditflow.stderr()
    );

    // TLS needs OpenSSL, which this build leaves out: librdkafka refuses the option when
    // the pipeline starts, and the error names the file, the source and the field.
    let file = event_hub_pipeline(&workspace, "sasl_ssl", "");
    let output = run_to_end(workspace.path(), &["run", file.to_str().unwrap()], &[], b"");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("sources.aks.librdkafka_options")
            && stderr.contains("\"sasl_ssl\" for configuration property \"security.protocol\""),
        "{stderr}"
    );

    // A misspelt property fails the same way: the options are not dropped on the way.
    let file = event_hub_pipeline(
        &workspace,
        "sasl_plaintext",
        "      sasl.mechanismz: PLAIN\n",
    );
    let output = run_to_end(workspace.path(), &["run", file.to_str().unwrap()], &[], b"");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("sasl.mechanismz"), "{stderr}");
}
