use std::collections::HashMap;

use auditflow_testkit::events::audit_log_events;
use auditflow_testkit::{event, run_transform};

use super::*;

type Discards = auditflow_testkit::RecordingTelemetry;

fn config(options: serde_json::Value) -> SampleConfig {
    serde_json::from_value(options).unwrap()
}

fn sampler(options: serde_json::Value) -> (Sample, Arc<Discards>) {
    let discards = Arc::new(Discards::default());
    let telemetry: Arc<dyn Telemetry> = discards.clone();
    (Sample::new(&config(options), telemetry), discards)
}

/// A real allowed `get` from the capture, with its auditID and stage replaced.
fn request(audit_id: &str, stage: &str) -> Event {
    event(&format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{audit_id}","stage":"{stage}","requestURI":"/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication","verb":"get","user":{{"username":"system:apiserver","uid":"ddf72608-c4f7-4955-95c2-b9ce23d361f6","groups":["system:authenticated","system:masters"]}},"sourceIPs":["127.0.0.1"],"userAgent":"kube-apiserver/v1.32.0 (linux/amd64) kubernetes/cd13ec4","objectRef":{{"resource":"configmaps","namespace":"kube-system","name":"extension-apiserver-authentication","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":200}},"requestReceivedTimestamp":"2026-11-23T08:24:13.385382Z","stageTimestamp":"2026-11-23T08:24:13.385958Z","annotations":{{"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":""}}}}"#
    ))
}

/// Deterministic UUID-shaped ids (a 64-bit LCG), so the test is exact and repeatable.
fn audit_ids(n: usize) -> Vec<String> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        state
    };
    (0..n)
        .map(|_| {
            let (a, b) = (next(), next());
            format!(
                "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                a >> 32,
                (a >> 16) & 0xffff,
                a & 0xfff,
                (b >> 48) | 0x8000,
                b & 0xffff_ffff_ffff
            )
        })
        .collect()
}

fn sample_rate(event: &Event) -> Option<&str> {
    event
        .get_path(["annotations", SAMPLE_RATE_ANNOTATION])?
        .as_str()
}

#[test]
fn the_hash_is_pinned() {
    // Changing these values changes which requests every deployment keeps: don't.
    // The values were computed by an independent implementation (Python) of FNV-1a 64
    // followed by murmur3's fmix64.
    assert_eq!(key_hash(b""), 0xefd0_1f60_ba99_2926);
    assert_eq!(
        key_hash(b"332b4024-e672-4823-9bfa-80a2ddf4aa1e"),
        0x9aed_4d01_0ec6_c4d2
    );
    assert_eq!(key_hash(b"admin"), 0xdcea_9df5_0191_87c5);
}

#[test]
fn keeps_about_one_in_rate_of_100_000_requests() {
    let ids = audit_ids(100_000);
    // Tolerance: five binomial standard deviations (rate 10: sd 95 events; rate 100: 31),
    // as a fraction: 1/rate ± 0.0048 and ± 0.0016.
    for (rate, tolerance) in [(10u64, 475usize), (100, 160)] {
        let (mut sample, discards) = sampler(serde_json::json!({ "rate": rate }));
        let mut kept = 0;
        for chunk in ids.chunks(1000) {
            let events = chunk
                .iter()
                .map(|id| request(id, "ResponseComplete"))
                .collect();
            let out = run_transform(&mut sample, events);
            for event in &out {
                assert_eq!(sample_rate(event), Some(rate.to_string().as_str()));
            }
            kept += out.len();
        }
        let expected = 100_000 / rate as usize;
        assert!(
            kept.abs_diff(expected) <= tolerance,
            "rate {rate}: kept {kept}, expected {expected} ± {tolerance}"
        );
        assert_eq!(discards.discarded_events("sampled"), 100_000 - kept);
    }
}

#[test]
fn the_stages_of_one_request_are_never_split() {
    let ids = audit_ids(3000);
    let stages = ["RequestReceived", "ResponseStarted", "ResponseComplete"];
    // Stages arrive in different batches and interleaved with other requests, as they do
    // from a real API server.
    let mut all: Vec<Event> = Vec::new();
    for stage in stages {
        all.extend(ids.iter().rev().map(|id| request(id, stage)));
    }
    let (mut sample, _) = sampler(serde_json::json!({ "rate": 7 }));
    let mut kept: HashMap<String, usize> = HashMap::new();
    for chunk in all.chunks(400) {
        for event in run_transform(&mut sample, chunk.to_vec()) {
            *kept
                .entry(event.get_str("auditID").unwrap().to_owned())
                .or_default() += 1;
        }
    }
    assert!(!kept.is_empty());
    for (id, stages_kept) in &kept {
        assert_eq!(*stages_kept, 3, "request {id} was split");
    }
    // Another replica (a new transform) keeps exactly the same requests.
    let (mut replica, _) = sampler(serde_json::json!({ "rate": 7 }));
    let again: Vec<Event> = run_transform(&mut replica, all.clone());
    assert_eq!(again.len(), kept.len() * 3);
}

#[test]
fn errors_and_denials_are_always_kept_and_not_annotated() {
    let (mut sample, discards) = sampler(serde_json::json!({ "rate": 1000 }));
    let events = audit_log_events();
    let errors: Vec<&str> = events
        .iter()
        .filter(|e| {
            e.get_path(["responseStatus", "code"])
                .and_then(|c| c.as_u64())
                >= Some(400)
        })
        .map(|e| e.get_str("auditID").unwrap())
        .collect();
    assert_eq!(errors.len(), 16);
    let mut tagged = request("5d1f0c55-0000-4000-8000-000000000001", "ResponseComplete");
    tagged
        .annotations_mut()
        .insert("auditflow.io/denial".into(), "rbac".into());
    let mut input = events.clone();
    input.push(tagged.clone());
    let out = run_transform(&mut sample, input);
    for id in &errors {
        let kept = out.iter().find(|e| e.get_str("auditID") == Some(id));
        let kept = kept.unwrap_or_else(|| panic!("error {id} was sampled away"));
        assert_eq!(sample_rate(kept), None);
        assert!(!kept.is_modified(), "an excluded event leaves as it came");
    }
    assert!(out.iter().any(|e| *e == tagged && sample_rate(e).is_none()));
    assert_eq!(
        discards.discarded_events("sampled"),
        events.len() + 1 - out.len()
    );
}

#[test]
fn a_user_exclude_replaces_the_default() {
    let (mut sample, _) = sampler(serde_json::json!({
        "rate": 1000,
        "exclude": r#"verb in ["create", "update", "patch", "delete"]"#,
    }));
    let out = run_transform(&mut sample, audit_log_events());
    let verbs: Vec<&str> = out.iter().filter_map(|e| e.get_str("verb")).collect();
    // The one update and the one create (a 422) are kept; the 500s are no longer excluded.
    assert!(
        verbs.contains(&"update") && verbs.contains(&"create"),
        "{verbs:?}"
    );
    assert!(out.len() < 16, "errors were sampled too: {}", out.len());
}

#[test]
fn events_without_the_key_are_kept() {
    let (mut sample, discards) = sampler(serde_json::json!({ "rate": 1000000 }));
    let without = event(r#"{"verb":"get","responseStatus":{"code":200}}"#);
    let null = event(r#"{"auditID":null,"verb":"get"}"#);
    let out = run_transform(&mut sample, vec![without, null]);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|e| !e.is_modified()));
    assert_eq!(discards.discarded_events("sampled"), 0);
}

#[test]
fn any_path_can_be_the_key() {
    // Keyed on the user, a user's requests are kept or dropped together.
    let (mut sample, _) = sampler(serde_json::json!({ "rate": 2, "key": "user.username" }));
    let out = run_transform(&mut sample, audit_log_events());
    let excluded = Condition::parse(DEFAULT_EXCLUDE).unwrap();
    let mut decisions: HashMap<String, Vec<bool>> = HashMap::new();
    for event in audit_log_events().iter().filter(|e| !excluded.matches(e)) {
        let user = event
            .get_path(["user", "username"])
            .unwrap()
            .as_str()
            .unwrap();
        let kept = out
            .iter()
            .any(|e| e.get_str("auditID") == event.get_str("auditID"));
        decisions.entry(user.to_owned()).or_default().push(kept);
    }
    for (user, kept) in &decisions {
        assert!(
            kept.iter().all(|k| *k == kept[0]),
            "{user}'s requests were split"
        );
    }
    let outcomes: Vec<bool> = decisions.values().map(|kept| kept[0]).collect();
    assert!(
        outcomes.contains(&true) && outcomes.contains(&false),
        "{decisions:?}"
    );
}

#[test]
fn escaped_keys_hash_like_their_text() {
    // The raw-bytes shortcut and the parsed path agree on a key with escapes.
    let (mut sample, _) = sampler(serde_json::json!({ "rate": 3 }));
    let mut kept_plain = Vec::new();
    let mut kept_escaped = Vec::new();
    for i in 0..300 {
        let plain = event(&format!(r#"{{"auditID":"a&b-{i}"}}"#));
        let escaped = event(&format!(r#"{{"auditID":"a\u0026b-{i}"}}"#));
        kept_plain.push(run_transform(&mut sample, vec![plain]).len());
        kept_escaped.push(run_transform(&mut sample, vec![escaped]).len());
    }
    assert_eq!(kept_plain, kept_escaped);
    assert!(kept_plain.contains(&0) && kept_plain.contains(&1));
}

#[test]
fn config_errors_name_file_component_option_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.yaml");
    std::fs::write(
        &file,
        r#"
sources:
  in: { type: stdin }
transforms:
  thin:
    type: sample
    inputs: [in]
    rate: 10
    exclude: 'verb in ["create" "update"]'
sinks:
  out: { type: stdout, inputs: [thin] }
"#,
    )
    .unwrap();
    let registry = auditflow_config::Registry::new(vec![auditflow_config::Plugin::transform::<
        SampleConfig,
    >("sample", "")]);
    let errors = auditflow_config::load::load_with_env(
        std::slice::from_ref(&file),
        &registry,
        |_| None,
        false,
    )
    .err()
    .unwrap();
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let expected = format!(
        "{}: transforms.thin.exclude: column 19: expected `,` or `]`, found the string \"update\"",
        file.display()
    );
    assert!(messages.contains(&expected), "{messages:#?}");
}

#[test]
fn rate_zero_is_refused() {
    let error = serde_json::from_value::<SampleConfig>(serde_json::json!({ "rate": 0 }))
        .unwrap_err()
        .to_string();
    assert!(error.contains("nonzero"), "{error}");
}

#[test]
fn keeps_the_engine_contract() {
    // Acknowledgements kept, every event out an object, a forked copy the same.
    let out = auditflow_testkit::compliance::check_transform_config::<crate::SampleConfig>(
        serde_json::json!({"rate": 2}),
    );
    assert!(!out.is_empty());
}
