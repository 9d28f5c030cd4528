use auditflow_core::decode::{decode, Shape};
use auditflow_testkit::events::{audit_log_events, WEBHOOK_EVENT_LIST};
use auditflow_testkit::{event, run_transform};

use super::*;

type Discards = auditflow_testkit::RecordingTelemetry;

fn config(options: serde_json::Value) -> DedupeConfig {
    serde_json::from_value(options).unwrap()
}

fn dedupe(options: serde_json::Value) -> (Dedupe, Arc<Discards>) {
    let discards = Arc::new(Discards::default());
    let telemetry: Arc<dyn Telemetry> = discards.clone();
    (Dedupe::new(&config(options), telemetry, None), discards)
}

fn run_at(dedupe: &mut Dedupe, events: Vec<Event>, now_ms: u64) -> Vec<Event> {
    let mut batch = Batch::new(events);
    dedupe.transform_at(&mut batch, now_ms);
    batch.events
}

fn request(audit_id: &str, stage: &str) -> Event {
    event(&format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{audit_id}","stage":"{stage}","requestURI":"/api/v1/namespaces/default/pods","verb":"list","user":{{"username":"admin","groups":["system:masters"]}}}}"#
    ))
}

fn ids(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.get_str("auditID").unwrap_or_default().to_owned(),
                e.get_str("stage").unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_resent_webhook_batch_is_dropped_whole_and_counted() {
    let body = bytes::Bytes::from_static(WEBHOOK_EVENT_LIST.as_bytes());
    let first = decode(&body, Shape::EventList).unwrap().events;
    assert_eq!(first.len(), 140);
    let (mut dedupe, discards) = dedupe(serde_json::json!({}));
    let kept = run_transform(&mut dedupe, first.clone());
    assert_eq!(kept.len(), 140, "every event of the first delivery is new");
    for (kept, original) in kept.iter().zip(&first) {
        assert_eq!(kept.raw(), original.raw());
        assert!(!kept.is_modified());
    }
    // kube-apiserver resends the same bytes after an error.
    let resent = decode(&body, Shape::EventList).unwrap().events;
    assert!(run_transform(&mut dedupe, resent).is_empty());
    assert_eq!(discards.discarded_events("duplicate"), 140);
    assert_eq!(dedupe.len(), 140);
}

#[test]
fn stages_of_one_request_are_different_keys() {
    let (mut dedupe, discards) = dedupe(serde_json::json!({}));
    let kept = run_transform(
        &mut dedupe,
        vec![
            request("a", "RequestReceived"),
            request("a", "ResponseComplete"),
            request("a", "RequestReceived"),
            request("b", "ResponseComplete"),
        ],
    );
    assert_eq!(
        ids(&kept),
        [
            ("a".into(), "RequestReceived".into()),
            ("a".into(), "ResponseComplete".into()),
            ("b".into(), "ResponseComplete".into())
        ]
    );
    assert_eq!(discards.discarded_events("duplicate"), 1);
}

#[test]
fn the_real_log_replayed_after_a_crash_is_dropped_and_the_rest_kept() {
    let events = audit_log_events();
    let (mut dedupe, discards) = dedupe(serde_json::json!({}));
    // The first 100 were delivered, then the process died before acknowledging them;
    // the restart replays them with everything after.
    assert_eq!(
        run_transform(&mut dedupe, events[..100].to_vec()).len(),
        100
    );
    let kept = run_transform(&mut dedupe, events.clone());
    assert_eq!(ids(&kept), ids(&events[100..]));
    assert_eq!(discards.discarded_events("duplicate"), 100);
}

#[test]
fn a_key_is_forgotten_when_its_window_ends() {
    let (mut dedupe, _) = dedupe(serde_json::json!({"window_secs": 10}));
    assert_eq!(
        run_at(&mut dedupe, vec![request("a", "ResponseComplete")], 0).len(),
        1
    );
    // Within the window: a duplicate, and it does not extend the window.
    assert!(run_at(&mut dedupe, vec![request("a", "ResponseComplete")], 9_999).is_empty());
    assert_eq!(dedupe.len(), 1);
    // 10 s after it was first seen it is new again.
    assert_eq!(
        run_at(&mut dedupe, vec![request("a", "ResponseComplete")], 10_000).len(),
        1
    );
    assert_eq!(dedupe.len(), 1);
    assert!(run_at(&mut dedupe, vec![request("a", "ResponseComplete")], 19_999).is_empty());
    // Everything expires: nothing is held.
    assert_eq!(run_at(&mut dedupe, Vec::new(), 20_000).len(), 0);
    assert!(dedupe.is_empty());
}

#[test]
fn when_full_the_oldest_key_is_forgotten_first() {
    let (mut dedupe, _) = dedupe(serde_json::json!({"max_entries": 3}));
    let batch = |names: &[&str]| -> Vec<Event> {
        names
            .iter()
            .map(|n| request(n, "ResponseComplete"))
            .collect()
    };
    assert_eq!(
        run_transform(&mut dedupe, batch(&["a", "b", "c", "d"])).len(),
        4
    );
    assert_eq!(dedupe.len(), 3);
    // `a` was evicted to make room for `d`: it is new again (and evicts `b`); `c` and `d`
    // are still held.
    let kept = run_transform(&mut dedupe, batch(&["a", "c", "d"]));
    assert_eq!(ids(&kept), [("a".into(), "ResponseComplete".into())]);
    // `b` is new again (evicting `c`); `d` is still held.
    let kept = run_transform(&mut dedupe, batch(&["b", "d"]));
    assert_eq!(ids(&kept), [("b".into(), "ResponseComplete".into())]);
    assert_eq!(dedupe.len(), 3);
}

#[test]
fn events_without_any_key_field_are_kept() {
    let (mut dedupe, discards) = dedupe(serde_json::json!({}));
    let bare = event(r#"{"verb":"get"}"#);
    let kept = run_transform(&mut dedupe, vec![bare.clone(), bare.clone(), bare]);
    assert_eq!(kept.len(), 3);
    assert_eq!(discards.discarded_events("duplicate"), 0);
    assert!(dedupe.is_empty());
}

#[test]
fn a_missing_field_differs_from_a_present_one() {
    let (mut dedupe, _) = dedupe(serde_json::json!({}));
    let kept = run_transform(
        &mut dedupe,
        vec![
            event(r#"{"auditID":"a"}"#),
            event(r#"{"auditID":"a","stage":"ResponseComplete"}"#),
            event(r#"{"auditID":"a","stage":null}"#),
        ],
    );
    assert_eq!(kept.len(), 2, "null and absent are the same: both absent");
}

#[test]
fn the_same_value_written_differently_is_the_same_key() {
    let (mut dedupe, _) =
        dedupe(serde_json::json!({"fields": ["auditID", "objectRef.name", "user"]}));
    let kept = run_transform(
        &mut dedupe,
        vec![
            event(r#"{"auditID":"a","objectRef":{"name":"x"},"user":{"username":"u"}}"#),
            event(
                r#"{"auditID":"\u0061","objectRef":{"name":"\u0078"},"user":{ "username" : "u" }}"#,
            ),
            event(r#"{"auditID":"a","objectRef":{"name":"y"},"user":{"username":"u"}}"#),
        ],
    );
    assert_eq!(kept.len(), 2);
    assert_eq!(
        kept[1].get_path(["objectRef", "name"]).unwrap(),
        "y",
        "a different nested field is a different key"
    );
}

#[test]
fn the_gauge_reports_the_keys_held() {
    let metrics = auditflow_metrics::Metrics::new();
    let cx = BuildContext::new(
        &metrics,
        auditflow_core::ComponentKind::Transform,
        "dedupe",
        "dedupe-gauge",
        std::env::temp_dir(),
    );
    let mut dedupe = config(serde_json::json!({"max_entries": 2}))
        .build(cx)
        .unwrap();
    let events = vec![
        request("a", "ResponseComplete"),
        request("b", "ResponseComplete"),
        request("c", "ResponseComplete"),
    ];
    run_transform(dedupe.as_mut(), events);
    let rendered = String::from_utf8(metrics.render()).unwrap();
    assert!(
        rendered
            .lines()
            .any(|l| l == "auditflow_dedupe_keys{component_id=\"dedupe-gauge\"} 2"),
        "{rendered}"
    );
}

#[test]
fn a_window_past_one_week_is_a_validate_error() {
    let week = config(serde_json::json!({"window_secs": 604_800}));
    assert!(week.validate().is_empty());
    let problems: Vec<(Option<String>, String)> =
        config(serde_json::json!({"window_secs": u64::MAX}))
            .validate()
            .into_iter()
            .map(|problem| (problem.field, problem.message))
            .collect();
    assert_eq!(
        problems,
        [(
            Some("window_secs".to_owned()),
            "must be between 1 and 604800 seconds (1 s to 7 days), found 18446744073709551615"
                .to_owned()
        )]
    );
}

/// Only `validate` ran the checks: `build`, called on its own, made a transform with no
/// key fields, which silently keeps every event.
#[test]
fn validate_reports_every_error_not_only_the_first() {
    let options = config(serde_json::json!({"fields": [], "window_secs": 604_801}));
    let fields: Vec<_> = options
        .validate()
        .into_iter()
        .filter_map(|problem| problem.field)
        .collect();
    assert_eq!(fields, ["fields", "window_secs"]);
    let built = options.build(BuildContext::unobserved("dedupe", std::env::temp_dir()));
    let error = built.err().expect("the options are refused");
    assert_eq!(error.field.as_deref(), Some("fields"));
}

#[test]
fn config_defaults_and_errors() {
    let defaults = config(serde_json::json!({}));
    assert_eq!(
        defaults
            .fields
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>(),
        ["auditID", "stage"]
    );
    assert_eq!(defaults.window_secs.get(), 300);
    assert_eq!(defaults.max_entries.get(), 1_000_000);
    assert!(defaults.validate().is_empty());

    let empty = config(serde_json::json!({"fields": []}));
    let problems = empty.validate();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].field.as_deref(), Some("fields"));

    let registry = auditflow_config::Registry::new(vec![auditflow_config::Plugin::transform::<
        DedupeConfig,
    >("dedupe", "")]);
    let plugin = registry
        .find(auditflow_core::ComponentKind::Transform, "dedupe")
        .unwrap();
    let error = plugin
        .parse(serde_json::json!({"window_secs": 0}))
        .err()
        .unwrap();
    assert_eq!(error.path, "window_secs");
    let error = plugin
        .parse(serde_json::json!({"max_entry": 10}))
        .err()
        .unwrap();
    assert!(error.message.contains("max_entry"), "{}", error.message);
}

#[test]
fn keeps_the_engine_contract() {
    // Acknowledgements kept, every event out an object, a forked copy the same.
    let out = auditflow_testkit::compliance::check_transform_config::<crate::DedupeConfig>(
        serde_json::json!({}),
    );
    assert!(!out.is_empty());
}
