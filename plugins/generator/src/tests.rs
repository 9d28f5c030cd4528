//! What a user of the generator relies on: valid events in kube-apiserver's shape, the
//! mix of a real cluster, every stage of a request under one auditID, the same bytes for
//! the same seed, `count` honoured exactly, `rate_per_sec` honoured by the clock.

use std::collections::HashMap;
use std::sync::Arc;

use auditflow_core::channel::channel;
use auditflow_core::{BuildContext, NoTelemetry, Output, Shutdown, SourceConfig, SourceContext};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

use super::*;

fn events(profile: Profile, seed: u64, count: u64) -> Vec<Bytes> {
    let mut generator = AuditGenerator::new(profile, seed, SEEDED_START_US);
    let mut out = Vec::new();
    while (out.len() as u64) < count {
        let left = count - out.len() as u64;
        out.extend(generator.next_events(MAX_BATCH_EVENTS, MAX_BATCH_BYTES, Some(left)));
    }
    assert_eq!(out.len() as u64, count, "exactly `count` events");
    out
}

fn parse(bytes: &Bytes) -> serde_json::Map<String, Value> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(map)) => map,
        other => panic!(
            "not a JSON object: {other:?}\n{}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

use bytes::Bytes;

/// The keys kube-apiserver writes, in its order; each event's keys follow it.
const KEY_ORDER: &[&str] = &[
    "kind",
    "apiVersion",
    "level",
    "auditID",
    "stage",
    "requestURI",
    "verb",
    "user",
    "sourceIPs",
    "userAgent",
    "objectRef",
    "responseStatus",
    "requestObject",
    "responseObject",
    "requestReceivedTimestamp",
    "stageTimestamp",
    "annotations",
];

#[test]
fn the_same_seed_gives_the_same_bytes() {
    for profile in [Profile::Metadata, Profile::RequestResponse] {
        let first = events(profile, 42, 3000);
        let second = events(profile, 42, 3000);
        assert!(first == second, "{profile:?}: same seed, different bytes");
        let other = events(profile, 43, 3000);
        assert!(first != other, "{profile:?}: different seeds, same bytes");
    }
}

#[test]
fn output_does_not_depend_on_batch_sizes() {
    let whole = events(Profile::Metadata, 9, 2500);
    let mut generator = AuditGenerator::new(Profile::Metadata, 9, SEEDED_START_US);
    let mut pieces = Vec::new();
    let mut size = 1;
    while pieces.len() < 2500 {
        let left = 2500 - pieces.len() as u64;
        pieces.extend(generator.next_events(size, MAX_BATCH_BYTES, Some(left)));
        size = size % 97 + 13;
    }
    assert!(whole == pieces);
}

#[test]
fn detached_events_are_the_same_bytes() {
    let sliced = events(Profile::Metadata, 4, 3000);
    let mut generator =
        AuditGenerator::new(Profile::Metadata, 4, SEEDED_START_US).detach_events(true);
    let mut detached = Vec::new();
    while detached.len() < 3000 {
        let left = 3000 - detached.len() as u64;
        detached.extend(generator.next_events(50, MAX_BATCH_BYTES, Some(left)));
    }
    assert!(sliced == detached);
}

#[test]
fn events_have_the_api_servers_shape() {
    for profile in [Profile::Metadata, Profile::RequestResponse] {
        for bytes in events(profile, 1, 4000) {
            assert!(!bytes.contains(&b'\n'), "one line per event");
            let event = parse(&bytes);
            Event::from_bytes(bytes.clone()).expect("auditflow decodes it");
            let keys: Vec<&str> = event.keys().map(String::as_str).collect();
            let mut order = KEY_ORDER.iter();
            for key in &keys {
                assert!(
                    order.any(|k| k == key),
                    "key {key} out of order in {keys:?}"
                );
            }
            assert_eq!(event["kind"], "Event");
            assert_eq!(event["apiVersion"], "audit.k8s.io/v1");
            for key in [
                "auditID",
                "stage",
                "requestURI",
                "verb",
                "requestReceivedTimestamp",
                "stageTimestamp",
            ] {
                assert!(event[key].is_string(), "{key} in {event:?}");
            }
            let id = event["auditID"].as_str().unwrap();
            assert_eq!((id.len(), &id[14..15]), (36, "4"), "a v4 UUID: {id}");
            for key in ["requestReceivedTimestamp", "stageTimestamp"] {
                let ts = event[key].as_str().unwrap();
                assert!(
                    ts.len() == 27 && ts.ends_with('Z') && &ts[19..20] == ".",
                    "{ts}"
                );
            }
            assert!(event["requestReceivedTimestamp"].as_str() <= event["stageTimestamp"].as_str());
            if profile == Profile::RequestResponse {
                assert_eq!(event["level"], "RequestResponse");
            }
        }
    }
}

#[test]
fn the_mix_looks_like_a_busy_cluster() {
    let all = events(Profile::Metadata, 7, 20_000);
    let total = all.len() as f64;
    let mut verbs: HashMap<String, usize> = HashMap::new();
    let (mut denials, mut unauthorized, mut reviews, mut requests, mut secret_writes) =
        (0, 0, 0, 0, 0);
    let mut sizes = Vec::new();
    for bytes in &all {
        sizes.push(bytes.len());
        let event = parse(bytes);
        *verbs
            .entry(event["verb"].as_str().unwrap().to_owned())
            .or_default() += 1;
        let code = event.get("responseStatus").and_then(|s| s["code"].as_u64());
        let decision = event
            .get("annotations")
            .and_then(|a| a["authorization.k8s.io/decision"].as_str());
        if decision == Some("forbid") {
            assert_eq!(code, Some(403));
            denials += 1;
        }
        if code == Some(401) {
            assert_eq!(event["user"], serde_json::json!({}));
            assert!(event.get("annotations").is_none());
            unauthorized += 1;
        }
        let resource = event.get("objectRef").and_then(|o| o["resource"].as_str());
        let subresource = event
            .get("objectRef")
            .and_then(|o| o["subresource"].as_str());
        if resource == Some("tokenreviews") && event["stage"] == "ResponseComplete" {
            assert_jwt(event["requestObject"]["spec"]["token"].as_str().unwrap());
            reviews += 1;
        }
        if subresource == Some("token") && event["stage"] == "ResponseComplete" {
            let Some(response) = event.get("responseObject") else {
                panic!("{}", String::from_utf8_lossy(bytes));
            };
            assert_jwt(response["status"]["token"].as_str().unwrap());
            requests += 1;
        }
        if resource == Some("secrets")
            && ["create", "update", "patch"].contains(&event["verb"].as_str().unwrap())
        {
            secret_writes += 1;
            if event["level"] == "RequestResponse" && event["stage"] == "ResponseComplete" {
                assert!(event["requestObject"]["data"]["API_TOKEN"]
                    .as_str()
                    .unwrap()
                    .starts_with("ZXlK"));
            }
        }
    }
    let share = |n: usize| n as f64 / total;
    let reads = ["get", "list", "watch"]
        .iter()
        .map(|v| verbs.get(*v).copied().unwrap_or(0))
        .sum();
    assert!(share(reads) > 0.6, "reads {verbs:?}");
    for verb in ["create", "update", "patch", "delete"] {
        assert!(share(verbs[verb]) > 0.005, "{verb}: {verbs:?}");
    }
    assert!(
        (0.012..0.03).contains(&share(denials)),
        "denials {}",
        share(denials)
    );
    assert!(share(unauthorized) > 0.003, "401s {unauthorized}");
    assert!(
        share(reviews) > 0.01 && share(requests) > 0.01,
        "{reviews} {requests}"
    );
    assert!(secret_writes > 50, "secret writes {secret_writes}");
    sizes.sort_unstable();
    let median = sizes[sizes.len() / 2];
    assert!(
        (800..2000).contains(&median),
        "median metadata event {median} bytes"
    );
}

fn assert_jwt(token: &str) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert!(claims["sub"]
        .as_str()
        .unwrap()
        .starts_with("system:serviceaccount:"));
    assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().len(), 256);
}

#[test]
fn every_stage_of_a_request_shares_its_audit_id() {
    let all = events(Profile::Metadata, 3, 20_000);
    let mut stages: HashMap<String, Vec<String>> = HashMap::new();
    for bytes in &all {
        let event = parse(bytes);
        stages
            .entry(event["auditID"].as_str().unwrap().to_owned())
            .or_default()
            .push(event["stage"].as_str().unwrap().to_owned());
    }
    let (mut long, mut received) = (0, 0);
    for (id, stages) in &stages {
        match stages
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["ResponseComplete"] => {}
            ["ResponseStarted"] => {} // a 401
            ["ResponseStarted", "ResponseComplete"] => long += 1,
            ["RequestReceived", "ResponseComplete"] => received += 1,
            other => panic!("{id}: stages {other:?}"),
        }
    }
    assert!(
        long > 1000 && received > 100,
        "{long} watches, {received} with RequestReceived"
    );
}

#[test]
fn request_response_bodies_are_2_to_50_kb() {
    let all = events(Profile::RequestResponse, 5, 3000);
    let mut sizes: Vec<usize> = all
        .iter()
        .filter(|bytes| parse(bytes).contains_key("responseObject"))
        .map(Bytes::len)
        .collect();
    assert!(sizes.len() > 1500);
    sizes.sort_unstable();
    let (p10, median, p99) = (
        sizes[sizes.len() / 10],
        sizes[sizes.len() / 2],
        sizes[sizes.len() * 99 / 100],
    );
    assert!(
        p10 >= 2048 && (4096..30_000).contains(&median) && p99 < 90_000,
        "{p10} {median} {p99}"
    );
}

fn context() -> (
    SourceContext,
    auditflow_core::channel::Receiver,
    auditflow_core::ShutdownTrigger,
) {
    let telemetry: Arc<dyn auditflow_core::Telemetry> = Arc::new(NoTelemetry);
    let (tx, rx) = channel(4, Arc::clone(&telemetry));
    let (trigger, shutdown) = Shutdown::new();
    let cx = SourceContext {
        id: "gen".into(),
        out: Output::new(vec![tx], Arc::clone(&telemetry)),
        shutdown,
        telemetry,
        dead_letter: auditflow_core::DeadLetterOutput::disconnected("gen"),
    };
    (cx, rx, trigger)
}

fn source(yaml_like: GeneratorConfig) -> Box<dyn auditflow_core::Source> {
    yaml_like
        .build(BuildContext::unobserved("gen", "/nonexistent"))
        .unwrap()
}

fn config(count: Option<u64>, rate: Option<u64>) -> GeneratorConfig {
    GeneratorConfig {
        profile: Profile::Metadata,
        count: count.and_then(NonZeroU64::new),
        rate_per_sec: rate.and_then(NonZeroU64::new),
        seed: Some(11),
    }
}

#[tokio::test]
async fn the_source_ends_after_count_events_in_bounded_batches() {
    let (cx, mut rx, _trigger) = context();
    let run = tokio::spawn(source(config(Some(2_345), None)).run(cx));
    let mut all = Vec::new();
    while let Some(batch) = rx.recv().await {
        assert!(batch.len() <= MAX_BATCH_EVENTS);
        let bytes: usize = batch.events.iter().map(|e| e.raw().len()).sum();
        // One event may cross the byte limit; then the batch ends.
        assert!(
            bytes < MAX_BATCH_BYTES + 64 * 1024,
            "{bytes} bytes in one batch"
        );
        all.extend(batch.events.iter().map(|e| e.raw().clone()));
    }
    run.await.unwrap().unwrap();
    assert!(
        all == events(Profile::Metadata, 11, 2_345),
        "the source writes what the generator makes"
    );
}

#[tokio::test(start_paused = true)]
async fn rate_per_sec_paces_by_the_clock() {
    let (cx, mut rx, _trigger) = context();
    let started = Instant::now();
    let run = tokio::spawn(source(config(Some(5_000), Some(2_000))).run(cx));
    let mut batches = 0;
    let mut received = 0;
    while let Some(batch) = rx.recv().await {
        batches += 1;
        received += batch.len();
    }
    run.await.unwrap().unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(received, 5_000);
    assert!(
        (2.4..2.6).contains(&elapsed),
        "5000 events at 2000/s took {elapsed} s"
    );
    // About one wake-up per 10 ms tick, not one per event.
    assert!((200..=300).contains(&batches), "{batches} batches");
}

#[tokio::test]
async fn shutdown_stops_an_endless_source() {
    let (cx, mut rx, trigger) = context();
    let run = tokio::spawn(source(config(None, None)).run(cx));
    for _ in 0..3 {
        assert!(!rx.recv().await.unwrap().is_empty());
    }
    trigger.trigger();
    while rx.recv().await.is_some() {}
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn keeps_the_engine_contract() {
    // Every batch acknowledged, a clean return on shutdown, nothing sent after it.
    use auditflow_core::SourceConfig as _;
    let config: crate::GeneratorConfig =
        serde_json::from_value(serde_json::json!({"seed": 3})).unwrap();
    let source = config
        .build(auditflow_core::BuildContext::unobserved(
            "generator-contract",
            std::env::temp_dir(),
        ))
        .unwrap();
    let events = auditflow_testkit::compliance::check_source(
        source,
        3_000,
        std::time::Duration::from_secs(60),
    )
    .await;
    assert!(events.len() >= 3_000);
}
