//! The `webhook` source through the real binary, with real HTTPS clients: kube-apiserver's
//! own requests replayed over mTLS and with a bearer token, the TLS alert of each refused
//! client certificate, every refusal with its status and message, every body shape over
//! plain HTTP with a token from a file, `acknowledgements: false`, backpressure from a
//! stalled sink, and 50 concurrent clients.

use std::collections::HashSet;
use std::path::Path;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auditflow_e2e::audit_lines::{audit_line, vm_rss_kib};
use auditflow_e2e::tls::{Pki, PkiFiles, Reply, ServerOptions, TestServer};
use auditflow_e2e::webhook_client::{captured_requests, gzip, Answer, RequestBody, WebhookClient};
use auditflow_e2e::{http_get, metric, wait_ready, Auditflow, Workspace};
use auditflow_topology::CHANNEL_BATCHES;
use bytes::Bytes;

const TOKEN: &str = "audit-sink-shared-secret-123";
const REQUESTS: &str = "auditflow_webhook_requests_total";
/// How long to wait for a condition (a log line, an answer, a refused connection).
const DEADLINE: Duration = Duration::from_secs(20);

/// A pipeline of `sources` (YAML, indented under `sources:`) into one `stdout` sink `out`.
///
/// The sources and the metrics endpoint listen on `127.0.0.1:0`; the addresses they bound
/// are read from the log ([`Auditflow::webhook_address`]).
fn start(workspace: &Workspace, sources: &str, inputs: &str) -> (Auditflow, String) {
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            "data_dir: {data}\n\
             metrics:\n  address: 127.0.0.1:0\n\
             shutdown_timeout_secs: 30\n\
             sources:\n{sources}\
             sinks:\n  out:\n    type: stdout\n    inputs: [{inputs}]\n",
            data = workspace.path().join("data").display(),
        ),
    );
    let auditflow = Auditflow::run(workspace, &pipeline);
    let metrics = auditflow.metrics_address(DEADLINE);
    wait_ready(&metrics, DEADLINE);
    (auditflow, metrics)
}

fn tls_files(workspace: &Workspace) -> (Pki, PkiFiles) {
    let pki = Pki::new("webhook");
    let files = pki.write_to(workspace.path());
    (pki, files)
}

/// Waits until the series `name{labels}` on `metrics` reaches `at_least`.
async fn wait_for_metric(metrics: &str, name: &str, labels: &[(&str, &str)], at_least: f64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let value = metric(&scrape(metrics), name, labels);
        if value >= Some(at_least) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} is {value:?}, not {at_least}, after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn scrape(metrics: &str) -> String {
    let (status, body) = http_get(metrics, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    body
}

/// The items of an `EventList` as their own bytes, by a parse independent of auditflow.
fn items_of(body: &[u8]) -> Vec<String> {
    use serde_json::value::RawValue;
    let list: std::collections::HashMap<&str, &RawValue> =
        serde_json::from_slice(body).expect("an EventList");
    let items: Vec<&RawValue> = serde_json::from_str(list["items"].get()).expect("items");
    items.iter().map(|item| item.get().to_owned()).collect()
}

fn path_str(path: &Path) -> String {
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_batches_arrive_unchanged_over_mtls_and_with_a_token() {
    let workspace = Workspace::new();
    let (pki, files) = tls_files(&workspace);
    let sources = format!(
        "  mtls:\n    type: webhook\n    address: 127.0.0.1:0\n    path: /audit\n\
         \x20   tls:\n      cert_file: {cert}\n      key_file: {key}\n      client_ca_file: {ca}\n\
         \x20 token:\n    type: webhook\n    address: 127.0.0.1:0\n    path: /audit\n\
         \x20   tls:\n      cert_file: {cert}\n      key_file: {key}\n\
         \x20   auth:\n      bearer_tokens: [\"{TOKEN}\"]\n",
        cert = path_str(&files.server_cert),
        key = path_str(&files.server_key),
        ca = path_str(&files.ca),
    );
    let (mut auditflow, metrics) = start(&workspace, &sources, "mtls, token");
    let mtls_address = auditflow.webhook_address("mtls", DEADLINE);
    let token_address = auditflow.webhook_address("token", DEADLINE);
    let lines = auditflow.stdout_lines();

    let mtls = WebhookClient::https(
        mtls_address,
        &pki.ca_pem,
        Some((&pki.client_cert_pem, &pki.client_key_pem)),
    );
    let token = WebhookClient::https(token_address, &pki.ca_pem, None);
    let captured = captured_requests();
    assert_eq!(
        captured.len(),
        3,
        "tests/fixtures/webhook holds three requests"
    );
    assert!(captured.iter().all(|r| r.target == "/audit?timeout=30s"));

    let mut expected = Vec::new();
    for (client, name) in [(&mtls, "mtls"), (&token, "token")] {
        let mut connection = client.connect().await.expect("connect");
        for compress in [false, true] {
            for request in &captured {
                let items = items_of(&request.body);
                let answer = connection.replay(request, compress).await.expect("POST");
                assert_eq!(
                    answer.status, 200,
                    "{name}, gzip {compress}: {}",
                    answer.body
                );
                let accepted: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
                assert_eq!(accepted["accepted"], items.len(), "{name}");
                expected.extend(items);
            }
        }
    }

    // Every item, in order, byte for byte: each request was acknowledged (written to
    // stdout) before the next one was sent.
    let mut arrived = Vec::new();
    while arrived.len() < expected.len() {
        match lines.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => arrived.push(line),
            Err(error) => panic!(
                "{} of {} lines, then {error:?}",
                arrived.len(),
                expected.len()
            ),
        }
    }
    for (index, (got, want)) in arrived.iter().zip(&expected).enumerate() {
        assert!(
            got == want,
            "line {index} differs:\n got {got}\nwant {want}"
        );
    }
    assert_eq!(expected.len(), 2 * 2 * (74 + 140 + 1));

    // Without a client certificate, or with one from another CA, the mTLS source ends
    // the handshake with the alert that says why. The metrics below and the end of
    // stdout show that nothing more was delivered.
    let anonymous = WebhookClient::https(mtls_address, &pki.ca_pem, None);
    let refusal = anonymous.tls_refusal().await;
    assert!(
        refusal.contains("received fatal alert: CertificateRequired"),
        "no client certificate: {refusal}"
    );
    let stranger = Pki::new("stranger");
    let foreign = WebhookClient::https(
        mtls_address,
        &pki.ca_pem,
        Some((&stranger.client_cert_pem, &stranger.client_key_pem)),
    );
    let refusal = foreign.tls_refusal().await;
    assert!(
        refusal.contains("received fatal alert: UnknownCA"),
        "a client certificate from another CA: {refusal}"
    );

    let text = scrape(&metrics);
    for id in ["mtls", "token"] {
        assert_eq!(
            metric(&text, REQUESTS, &[("component_id", id), ("code", "200")]),
            Some(6.0),
            "{id}"
        );
        assert_eq!(
            metric(
                &text,
                "auditflow_component_received_events_total",
                &[("component_id", id)]
            ),
            Some(2.0 * 215.0),
            "{id}"
        );
    }
    assert!(
        text.contains("auditflow_webhook_request_duration_seconds_count{component_id=\"mtls\"} 6")
    );
    auditflow.signal(libc::SIGTERM);
    assert!(auditflow.wait_timeout(Duration::from_secs(20)).success());
    assert!(matches!(
        lines.recv_timeout(Duration::from_secs(1)),
        Err(RecvTimeoutError::Disconnected)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_request_gets_its_status_and_says_why() {
    let workspace = Workspace::new();
    let (pki, files) = tls_files(&workspace);
    let sources = format!(
        "  api:\n    type: webhook\n    address: 127.0.0.1:0\n    path: /audit\n    max_body_bytes: 100000\n\
         \x20   tls:\n      cert_file: {cert}\n      key_file: {key}\n\
         \x20   auth:\n      bearer_tokens: [\"{TOKEN}\"]\n",
        cert = path_str(&files.server_cert),
        key = path_str(&files.server_key),
    );
    let (mut auditflow, metrics) = start(&workspace, &sources, "api");
    let address = auditflow.webhook_address("api", DEADLINE);
    let lines = auditflow.stdout_lines();
    let client = WebhookClient::https(address, &pki.ca_pem, None);
    let bearer = format!("Bearer {TOKEN}");
    let json = ("Content-Type", "application/json");
    let auth = ("Authorization", bearer.as_str());
    let small = captured_requests()[2].body.clone();
    let big = captured_requests()[1].body.clone();
    assert!(big.len() > 100_000 && small.len() < 100_000);

    // Each on a fresh connection: a refused request may leave its connection closed.
    async fn ask(
        client: &WebhookClient,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: RequestBody,
    ) -> Answer {
        let mut connection = client.connect().await.expect("connect");
        connection
            .send(method, target, headers, body)
            .await
            .expect("an answer")
    }
    let full = |bytes: &Bytes| RequestBody::Full(http_body_util::Full::new(bytes.clone()));
    let target = "/audit?timeout=30s";

    let cases: Vec<(u16, &str, Answer)> = vec![
        (401, "missing credentials", ask(&client, "POST", target, &[json], full(&small)).await),
        (
            401,
            "not one this receiver accepts",
            ask(&client, "POST", target, &[json, ("Authorization", "Bearer nope")], full(&small)).await,
        ),
        (
            404,
            "no webhook at \"/other\": POST audit events to \"/audit\"",
            ask(&client, "POST", "/other?timeout=30s", &[json, auth], full(&small)).await,
        ),
        (
            405,
            "method GET is not allowed",
            ask(&client, "GET", target, &[auth], full(&Bytes::new())).await,
        ),
        (
            413,
            "the body is 120143 bytes, over max_body_bytes (100000)",
            ask(&client, "POST", target, &[json, auth], full(&big)).await,
        ),
        (
            413,
            "over max_body_bytes (100000)",
            ask(
                &client,
                "POST",
                target,
                &[json, auth],
                RequestBody::Chunked(big.chunks(30_000).map(Bytes::copy_from_slice).collect()),
            )
            .await,
        ),
        (
            413,
            "decompresses to more bytes than allowed",
            ask(
                &client,
                "POST",
                target,
                &[json, auth, ("Content-Encoding", "gzip")],
                full(&gzip(&vec![b' '; 300_000])),
            )
            .await,
        ),
        (
            415,
            "Content-Type \"text/plain\" is not supported",
            ask(&client, "POST", target, &[("Content-Type", "text/plain"), auth], full(&small)).await,
        ),
        (
            415,
            "Content-Encoding \"br\" is not supported",
            ask(&client, "POST", target, &[json, auth, ("Content-Encoding", "br")], full(&small)).await,
        ),
        (
            400,
            "not valid gzip",
            ask(&client, "POST", target, &[json, auth, ("Content-Encoding", "gzip")], full(&small)).await,
        ),
        (
            400,
            "not JSON",
            ask(&client, "POST", target, &[json, auth], full(&Bytes::from_static(b"{\"kind\":\"EventList\",\"items\":[{\"a\":"))).await,
        ),
        (
            400,
            "items[0]: expected an object, found a string",
            ask(&client, "POST", target, &[json, auth], full(&Bytes::from_static(b"{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"items\":[\"x\"]}"))).await,
        ),
        (
            400,
            "kind: expected \"EventList\" or \"Event\", found \"PodList\"",
            ask(&client, "POST", target, &[json, auth], full(&Bytes::from_static(b"{\"kind\":\"PodList\",\"items\":[]}"))).await,
        ),
    ];
    for (status, message, answer) in &cases {
        assert_eq!(answer.status, *status, "{message}: {}", answer.body);
        assert!(
            answer.error().contains(message),
            "{status}: {:?} does not say {message:?}",
            answer.error()
        );
        assert_eq!(answer.header("content-type"), Some("application/json"));
    }
    assert_eq!(
        cases[0].2.header("www-authenticate"),
        Some("Bearer realm=\"auditflow\"")
    );
    assert_eq!(cases[3].2.header("allow"), Some("POST"));

    // One item that is not an event among good ones: counted, logged where, the rest go on.
    let mut items: Vec<String> = (0..18).map(audit_line).collect();
    items[17] = "17".into();
    let body = format!(
        "{{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"items\":[{}]}}",
        items.join(",")
    );
    let answer = ask(
        &client,
        "POST",
        target,
        &[json, auth],
        full(&Bytes::from(body)),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, "{\"accepted\":17,\"malformed\":1}");
    for (i, want) in items.iter().take(17).enumerate() {
        let got = lines.recv_timeout(Duration::from_secs(10)).expect("a line");
        assert!(got == *want, "line {i}");
    }

    let text = scrape(&metrics);
    let discarded = metric(
        &text,
        "auditflow_component_discarded_events_total",
        &[("component_id", "api"), ("reason", "malformed")],
    );
    assert_eq!(discarded, Some(1.0));
    for (code, count) in [
        ("401", 2.0),
        ("404", 1.0),
        ("405", 1.0),
        ("413", 3.0),
        ("415", 2.0),
        ("400", 4.0),
        ("200", 1.0),
    ] {
        assert_eq!(
            metric(&text, REQUESTS, &[("component_id", "api"), ("code", code)]),
            Some(count),
            "{code}"
        );
    }
    let stderr = auditflow.stderr();
    assert!(
        stderr.contains("items[17]") && stderr.contains("expected an object, found a number"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_sink_gets_503_with_retry_after_and_memory_stays_bounded() {
    const CLIENTS: usize = 16;
    const REQUESTS_EACH: usize = 40;
    const ACCEPT_TIMEOUT_MS: u64 = 200;
    let workspace = Workspace::new();
    let (pki, files) = tls_files(&workspace);
    let sources = format!(
        "  api:\n    type: webhook\n    address: 127.0.0.1:0\n    path: /audit\n\
         \x20   max_body_bytes: 1048576\n    accept_timeout_ms: {ACCEPT_TIMEOUT_MS}\n    ack_timeout_ms: 1000\n\
         \x20   tls:\n      cert_file: {cert}\n      key_file: {key}\n\
         \x20   auth:\n      bearer_tokens: [\"{TOKEN}\"]\n",
        cert = path_str(&files.server_cert),
        key = path_str(&files.server_key),
    );
    // Nobody reads the process's stdout: the sink blocks once the pipe is full.
    let (mut auditflow, metrics) = start(&workspace, &sources, "api");
    let address = auditflow.webhook_address("api", DEADLINE);
    let pid = auditflow.child.id();
    let client = WebhookClient::https(address, &pki.ca_pem, None);
    let request = captured_requests()[1].clone();
    let events_per_request = items_of(&request.body).len();
    let baseline_kib = vm_rss_kib(pid);

    let answers = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (client, request, answers) = (client.clone(), request.clone(), Arc::clone(&answers));
        clients.push(tokio::spawn(async move {
            let mut connection = client.connect().await.expect("connect");
            for _ in 0..REQUESTS_EACH {
                let sent = Instant::now();
                let answer = match connection.replay(&request, false).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        connection = client.connect().await.expect("reconnect");
                        connection.replay(&request, false).await.expect("an answer")
                    }
                };
                answers.lock().unwrap().push((sent.elapsed(), answer));
            }
        }));
    }
    let mut peak_kib = baseline_kib;
    let mut peak_buffer = 0.0f64;
    while clients.iter().any(|c| !c.is_finished()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak_kib = peak_kib.max(vm_rss_kib(pid));
        let buffered = metric(
            &scrape(&metrics),
            "auditflow_buffer_events",
            &[("component_id", "out")],
        );
        peak_buffer = peak_buffer.max(buffered.unwrap_or(0.0));
    }
    for client in clients {
        client.await.unwrap();
    }

    let answers = std::mem::take(&mut *answers.lock().unwrap());
    assert_eq!(answers.len(), CLIENTS * REQUESTS_EACH);
    let refused: Vec<_> = answers.iter().filter(|(_, a)| a.status == 503).collect();
    let accepted = answers.iter().filter(|(_, a)| a.status == 200).count();
    assert_eq!(refused.len() + accepted, answers.len(), "only 200 and 503");
    assert!(
        accepted <= 2,
        "{accepted} requests accepted while stdout was never read"
    );
    let mut backpressure_latencies = Vec::new();
    for (elapsed, answer) in &refused {
        assert_eq!(answer.header("retry-after"), Some("5"));
        let error = answer.error();
        if error.contains("did not take the events within accept_timeout_ms (200 ms)")
            || error.contains("too many request bodies in flight")
        {
            backpressure_latencies.push(*elapsed);
        } else {
            assert!(
                error.contains("not delivered within ack_timeout_ms"),
                "{error}"
            );
        }
    }
    let backpressured = backpressure_latencies.len();
    assert!(
        backpressured > answers.len() / 2,
        "{backpressured} backpressure 503s"
    );
    // How long a 503 takes (accept_timeout_ms, plus uploading and parsing a 120 KB body) is
    // a figure for the log, not a check: a loaded machine stretches it at will.
    backpressure_latencies.sort();
    let median = backpressure_latencies[backpressured / 2];
    let slowest = backpressure_latencies[backpressured - 1];
    let offered_mib = answers.len() * request.body.len() / (1024 * 1024);
    let grown_mib = (peak_kib.saturating_sub(baseline_kib)) / 1024;
    eprintln!(
        "stalled sink: {} requests ({offered_mib} MiB offered), {backpressured} backpressure 503s (median {median:?}, slowest {slowest:?}), RSS {} -> {} MiB, peak buffer {peak_buffer} events",
        answers.len(),
        baseline_kib / 1024,
        peak_kib / 1024
    );
    assert!(
        offered_mib > 60,
        "the test must offer far more than the bound"
    );
    assert!(
        grown_mib < 40,
        "RSS grew by {grown_mib} MiB with {offered_mib} MiB offered"
    );
    assert!(
        peak_buffer <= (CHANNEL_BATCHES * events_per_request) as f64,
        "{peak_buffer} events buffered in front of the sink"
    );

    // Once stdout is read again, the same request goes through.
    let lines = auditflow.stdout_lines();
    let drain =
        std::thread::spawn(move || while lines.recv_timeout(Duration::from_secs(5)).is_ok() {});
    let mut connection = client.connect().await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = connection.replay(&request, true).await.expect("an answer");
        if answer.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {}: {}",
            answer.status,
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    auditflow.signal(libc::SIGTERM);
    assert!(auditflow.wait_timeout(Duration::from_secs(30)).success());
    drain.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_clients_send_a_thousand_batches_and_every_event_arrives_once() {
    const CLIENTS: usize = 50;
    const BATCHES_EACH: usize = 20;
    const EVENTS_PER_BATCH: usize = 400;
    const TOTAL: usize = CLIENTS * BATCHES_EACH * EVENTS_PER_BATCH;
    let workspace = Workspace::new();
    let (pki, files) = tls_files(&workspace);
    let sources = format!(
        "  api:\n    type: webhook\n    address: 127.0.0.1:0\n    path: /audit\n\
         \x20   tls:\n      cert_file: {cert}\n      key_file: {key}\n\
         \x20   auth:\n      bearer_tokens: [\"{TOKEN}\"]\n",
        cert = path_str(&files.server_cert),
        key = path_str(&files.server_key),
    );
    let (mut auditflow, _metrics) = start(&workspace, &sources, "api");
    let address = auditflow.webhook_address("api", DEADLINE);
    let lines = auditflow.stdout_lines();
    // Counts arrivals per event, checking each line against what was sent.
    let counter = std::thread::spawn(move || {
        let mut seen = vec![0u8; TOTAL];
        let mut wrong = 0usize;
        while let Ok(line) = lines.recv_timeout(Duration::from_secs(120)) {
            let index = line
                .find("00000000-0000-4000-8000-")
                .and_then(|at| line.get(at + 24..at + 36))
                .and_then(|digits| digits.parse::<usize>().ok())
                .filter(|&i| i < TOTAL);
            match index {
                Some(i) if line == audit_line(i) => seen[i] = seen[i].saturating_add(1),
                _ => wrong += 1,
            }
        }
        (seen, wrong)
    });

    let client = WebhookClient::https(address, &pki.ca_pem, None);
    let started = Instant::now();
    let retried_batches = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (client, retried_batches) = (client.clone(), Arc::clone(&retried_batches));
        tasks.push(tokio::spawn(async move {
            let bearer = format!("Bearer {TOKEN}");
            let headers = [("Content-Type", "application/json"), ("Authorization", bearer.as_str())];
            let mut connection = client.connect().await.expect("connect");
            for b in 0..BATCHES_EACH {
                let batch = c * BATCHES_EACH + b;
                let first = batch * EVENTS_PER_BATCH;
                let items: Vec<String> = (first..first + EVENTS_PER_BATCH).map(audit_line).collect();
                let body = Bytes::from(format!(
                    "{{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"metadata\":{{}},\"items\":[{}]}}",
                    items.join(",")
                ));
                // As the API server does: resend the same bytes until a 200.
                loop {
                    let answer = match connection.post("/audit?timeout=30s", &headers, body.clone()).await {
                        Ok(answer) => Some(answer),
                        Err(_) => {
                            connection = client.connect().await.expect("reconnect");
                            None
                        }
                    };
                    if answer.as_ref().is_some_and(|a| a.status == 200) {
                        break;
                    }
                    retried_batches.lock().unwrap().insert(batch);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    auditflow.signal(libc::SIGTERM);
    assert!(auditflow.wait_timeout(Duration::from_secs(60)).success());
    let (seen, wrong) = counter.join().unwrap();
    let retried = retried_batches.lock().unwrap().clone();
    eprintln!(
        "{TOTAL} events in {} batches from {CLIENTS} clients in {elapsed:?}; {} batches resent",
        CLIENTS * BATCHES_EACH,
        retried.len()
    );
    assert_eq!(wrong, 0, "lines that are not an event sent, byte for byte");
    let missing = seen.iter().filter(|&&n| n == 0).count();
    assert_eq!(missing, 0, "{missing} events never arrived");
    for (i, &count) in seen.iter().enumerate() {
        if count > 1 {
            assert!(
                retried.contains(&(i / EVENTS_PER_BATCH)),
                "event {i} arrived {count} times, but its batch was answered 200 at once"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_and_answers_the_request_in_flight() {
    let workspace = Workspace::new();
    let (pki, files) = tls_files(&workspace);
    let sources = format!(
        "  api:\n    type: webhook\n    address: 127.0.0.1:0\n    path: /audit\n    ack_timeout_ms: 20000\n\
         \x20   tls:\n      cert_file: {cert}\n      key_file: {key}\n",
        cert = path_str(&files.server_cert),
        key = path_str(&files.server_key),
    );
    let (mut auditflow, metrics) = start(&workspace, &sources, "api");
    let address = auditflow.webhook_address("api", DEADLINE);
    let client = WebhookClient::https(address, &pki.ca_pem, None);
    let request = captured_requests()[1].clone();
    let expected = items_of(&request.body);

    // stdout is not read yet: the sink blocks and the request waits for its acknowledgement.
    let mut connection = client.connect().await.expect("connect");
    let in_flight = tokio::spawn(async move { connection.replay(&request, true).await });
    wait_for_metric(
        &metrics,
        "auditflow_component_received_events_total",
        &[("component_id", "api")],
        expected.len() as f64,
    )
    .await;
    assert!(
        !in_flight.is_finished(),
        "answered before the sink wrote anything"
    );
    auditflow.signal(libc::SIGTERM);
    // The listener closes once the signal is taken: poll until a connection is refused.
    let deadline = Instant::now() + DEADLINE;
    while client.connect().await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "new connections were still accepted {DEADLINE:?} after SIGTERM; stderr:\n{}",
            auditflow.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !in_flight.is_finished(),
        "the request in flight was answered before the sink wrote anything"
    );

    // The sink gets going again: the request is answered 200, then the process exits 0.
    let lines = auditflow.stdout_lines();
    let answer = in_flight.await.unwrap().expect("an answer");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let arrived: Vec<String> = (0..expected.len())
        .map(|_| lines.recv_timeout(Duration::from_secs(10)).expect("a line"))
        .collect();
    assert!(arrived == expected, "the in-flight events arrived changed");
    assert!(auditflow.wait_timeout(Duration::from_secs(20)).success());
}

/// Every body shape docs/webhook.md accepts, over plain HTTP: an `EventList` of
/// `audit.k8s.io/v1beta1`, a single `Event`, a JSON array, and NDJSON whose lines hold an
/// event, an array and an `EventList`. Each item arrives as its own bytes, in order. The
/// token comes from `bearer_tokens_file`, whose `#` line is a comment, not a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_body_shape_arrives_item_by_item_over_http_with_a_token_from_a_file() {
    const FILE_TOKEN: &str = "file-token-0123456789";
    const COMMENT: &str = "# tokens of the audit webhook";
    let workspace = Workspace::new();
    let tokens = workspace.write("tokens", &format!("{COMMENT}\n\n{FILE_TOKEN}\n"));
    let sources = format!(
        "  api:\n    type: webhook\n    address: 127.0.0.1:0\n    path: /audit\n    allow_plaintext: true\n\
         \x20   auth:\n      bearer_tokens_file: {}\n",
        path_str(&tokens)
    );
    let (mut auditflow, metrics) = start(&workspace, &sources, "api");
    let address = auditflow.webhook_address("api", DEADLINE);
    let lines = auditflow.stdout_lines();
    let client = WebhookClient::plain(address);

    let event = audit_line;
    let list = |api_version: &str, items: &[usize]| {
        let items: Vec<String> = items.iter().map(|&i| event(i)).collect();
        format!(
            "{{\"kind\":\"EventList\",\"apiVersion\":\"{api_version}\",\"metadata\":{{}},\"items\":[{}]}}",
            items.join(",")
        )
    };
    let bodies = [
        (
            "an EventList of audit.k8s.io/v1beta1",
            "application/json",
            list("audit.k8s.io/v1beta1", &[0, 1]),
            vec![0, 1],
        ),
        ("a single Event", "application/json", event(2), vec![2]),
        (
            "a JSON array",
            "application/json",
            format!("[{},{}]", event(3), event(4)),
            vec![3, 4],
        ),
        (
            "NDJSON of an event, an array and an EventList",
            "application/x-ndjson",
            format!(
                "{}\n[{},{}]\n{}\n",
                event(5),
                event(6),
                event(7),
                list("audit.k8s.io/v1", &[8])
            ),
            vec![5, 6, 7, 8],
        ),
    ];
    let bearer = format!("Bearer {FILE_TOKEN}");
    let mut connection = client.connect().await.expect("connect");
    for (shape, content_type, body, items) in &bodies {
        let answer = connection
            .post(
                "/audit",
                &[("Content-Type", content_type), ("Authorization", &bearer)],
                Bytes::from(body.clone()),
            )
            .await
            .unwrap_or_else(|error| panic!("{shape}: {error}"));
        assert_eq!(answer.status, 200, "{shape}: {}", answer.body);
        let accepted: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(
            accepted["accepted"],
            items.len(),
            "{shape}: {}",
            answer.body
        );
        assert_eq!(accepted["malformed"], 0, "{shape}: {}", answer.body);
        // Acknowledged, so already written to stdout.
        for &i in items {
            let line = lines
                .recv_timeout(DEADLINE)
                .unwrap_or_else(|error| panic!("{shape}: item {i}: {error:?}"));
            assert!(
                line == event(i),
                "{shape}: item {i} differs:\n got {line}\nwant {}",
                event(i)
            );
        }
    }

    // The comment line of the tokens file is not a token.
    let comment = format!("Bearer {COMMENT}");
    let mut connection = client.connect().await.expect("connect");
    let answer = connection
        .post(
            "/audit",
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &comment),
            ],
            Bytes::from(event(9)),
        )
        .await
        .expect("POST with the comment as a token");
    assert_eq!(answer.status, 401, "{}", answer.body);

    let text = scrape(&metrics);
    assert_eq!(
        metric(&text, REQUESTS, &[("component_id", "api"), ("code", "200")]),
        Some(4.0)
    );
    assert_eq!(
        metric(
            &text,
            "auditflow_component_received_events_total",
            &[("component_id", "api")]
        ),
        Some(9.0)
    );
    auditflow.signal(libc::SIGTERM);
    assert_eq!(auditflow.wait_timeout(DEADLINE).code(), Some(0));
    assert!(matches!(
        lines.recv_timeout(DEADLINE),
        Err(RecvTimeoutError::Disconnected)
    ));
}

/// `acknowledgements: false` answers `200` once the pipeline took the events, though the
/// sink cannot deliver them (its server never answers); the same pipeline with
/// acknowledgements on answers `503` + `Retry-After` after `ack_timeout_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_acknowledgements_200_means_taken_not_delivered() {
    let workspace = Workspace::new();
    let (pki, files) = tls_files(&workspace);
    let server = TestServer::start(&pki, ServerOptions::responder(|_| Reply::Hang));
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            "data_dir: {data}\n\
             metrics:\n  address: 127.0.0.1:0\n\
             sources:\n\
             \x20 taken:\n    type: webhook\n    address: 127.0.0.1:0\n    path: /audit\n\
             \x20   allow_plaintext: true\n    acknowledgements: false\n\
             \x20 delivered:\n    type: webhook\n    address: 127.0.0.1:0\n    path: /audit\n\
             \x20   allow_plaintext: true\n    ack_timeout_ms: 1000\n\
             sinks:\n  collector:\n    type: https\n    inputs: [taken, delivered]\n    uri: {uri}\n\
             \x20   tls: {{ ca_file: {ca} }}\n\
             \x20   batch: {{ max_events: 1, timeout_ms: 10 }}\n",
            data = workspace.path().join("data").display(),
            uri = server.url("/ingest"),
            ca = path_str(&files.ca),
        ),
    );
    let auditflow = Auditflow::run(&workspace, &pipeline);
    let metrics = auditflow.metrics_address(DEADLINE);
    wait_ready(&metrics, DEADLINE);
    let json = ("Content-Type", "application/json");

    let taken = WebhookClient::plain(auditflow.webhook_address("taken", DEADLINE));
    let mut connection = taken.connect().await.expect("connect");
    let answer = connection
        .post("/audit", &[json], Bytes::from(audit_line(0)))
        .await
        .expect("POST to taken");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let accepted: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(accepted["accepted"], 1, "{}", answer.body);
    // The event went on to the sink, whose server never answers.
    server.wait_until(DEADLINE, |requests| {
        requests
            .iter()
            .any(|request| request.body_str().contains(&audit_line(0)))
    });

    let delivered = WebhookClient::plain(auditflow.webhook_address("delivered", DEADLINE));
    let mut connection = delivered.connect().await.expect("connect");
    let answer = connection
        .post("/audit", &[json], Bytes::from(audit_line(1)))
        .await
        .expect("POST to delivered");
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.header("retry-after"), Some("5"));
    assert!(
        server
            .requests()
            .iter()
            .all(|request| request.reply.code().is_none()),
        "the server answered a request"
    );
    let text = scrape(&metrics);
    assert_eq!(
        metric(
            &text,
            REQUESTS,
            &[("component_id", "taken"), ("code", "200")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            REQUESTS,
            &[("component_id", "delivered"), ("code", "503")]
        ),
        Some(1.0)
    );
}

/// A body that stops arriving is answered `408` once `body_read_timeout_ms` has passed,
/// with a JSON error naming the option, and none of it is delivered.
#[test]
fn a_body_that_stops_arriving_gets_408_naming_body_read_timeout_ms() {
    use std::io::{Read as _, Write as _};
    let workspace = Workspace::new();
    let sources = "  api:\n    type: webhook\n    address: 127.0.0.1:0\n    path: /audit\n\
                   \x20   allow_plaintext: true\n    body_read_timeout_ms: 500\n";
    let (mut auditflow, metrics) = start(&workspace, sources, "api");
    let address = auditflow.webhook_address("api", DEADLINE);
    let lines = auditflow.stdout_lines();

    let event = audit_line(0);
    let half = &event[..event.len() / 2];
    let mut tcp = std::net::TcpStream::connect(address).expect("connect");
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        tcp,
        "POST /audit HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{half}",
        event.len()
    )
    .unwrap();
    tcp.flush().unwrap();
    // The rest never comes; the answer does: its head, then `Content-Length` bytes.
    let mut answer = Vec::new();
    let complete = |answer: &[u8]| {
        let text = String::from_utf8_lossy(answer);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let length: usize = head
            .lines()
            .find_map(|line| {
                line.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_owned())
            })?
            .parse()
            .ok()?;
        (body.len() >= length).then(|| (head.to_owned(), body[..length].to_owned()))
    };
    let (head, body) = loop {
        if let Some(whole) = complete(&answer) {
            break whole;
        }
        let mut chunk = [0_u8; 4096];
        let read = tcp.read(&mut chunk).unwrap_or_else(|error| {
            panic!(
                "no whole answer within {DEADLINE:?}: {error}; {:?}",
                String::from_utf8_lossy(&answer)
            )
        });
        assert!(
            read > 0,
            "closed before a whole answer: {:?}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&chunk[..read]);
    };
    assert!(head.starts_with("HTTP/1.1 408 "), "{head}");
    // The connection is closed after the answer, so it holds nothing up at shutdown.
    assert!(
        head.to_ascii_lowercase().contains("\r\nconnection: close"),
        "{head}"
    );
    let mut rest = [0_u8; 64];
    assert_eq!(
        tcp.read(&mut rest)
            .expect("the server closes the connection"),
        0,
        "nothing follows the answer"
    );
    let body = body.as_str();
    let error: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(
        error["error"], "the body did not arrive within body_read_timeout_ms (500 ms)",
        "{head}"
    );

    let text = scrape(&metrics);
    assert_eq!(
        metric(&text, REQUESTS, &[("component_id", "api"), ("code", "408")]),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "auditflow_component_received_events_total",
            &[("component_id", "api")]
        ),
        Some(0.0)
    );
    drop(tcp);
    auditflow.signal(libc::SIGTERM);
    assert_eq!(auditflow.wait_timeout(DEADLINE).code(), Some(0));
    assert!(matches!(
        lines.recv_timeout(DEADLINE),
        Err(RecvTimeoutError::Disconnected)
    ));
}
