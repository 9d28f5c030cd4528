use auditflow_core::decode::{decode, Shape};
use auditflow_core::NoTelemetry;
use auditflow_testkit::events::audit_log_events;
use auditflow_testkit::{event, run_transform};

use super::*;
use crate::explain::explain;
use crate::request::{request_of, user_of, Needs};

/// The real capture's policy and webhook bodies, as copied into the repository from
/// `shared/corpus/kube-apiserver-1.32/` (its log is the testkit's).
const POLICY_FIXTURES: &str = "../../tests/fixtures/policy";
const WEBHOOK_FIXTURES: &str = "../../tests/fixtures/webhook";

/// A policy from its rules (YAML, indented as list items under `rules:`), which must load
/// without errors.
fn policy(head: &str, rules: &str) -> Policy {
    let text = format!("apiVersion: audit.k8s.io/v1\nkind: Policy\n{head}rules:\n{rules}");
    let loaded = load(&text);
    let errors: Vec<&Finding> = loaded.findings.iter().filter(|f| f.is_error()).collect();
    assert!(errors.is_empty(), "{errors:#?}\n{text}");
    loaded.policy
}

/// The level and matching rule (1-based) `policy` gives `event`.
fn decide(policy: &Policy, event: &Event) -> (Option<usize>, Level) {
    let decision = policy.evaluate(&request_of(event, Needs::ALL));
    (decision.rule.map(|i| i + 1), decision.level)
}

/// A resource request by `user` (groups `groups`) with `verb` on `object_ref`.
fn resource_event(user: &str, groups: &[&str], verb: &str, object_ref: &str) -> Event {
    event(&format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"x","stage":"ResponseComplete","requestURI":"/api/v1/x","verb":"{verb}","user":{{"username":"{user}","groups":{}}},"objectRef":{object_ref}}}"#,
        serde_json::to_string(groups).unwrap()
    ))
}

fn get(object_ref: &str) -> Event {
    resource_event(
        "tim",
        &["humans", "system:authenticated"],
        "get",
        object_ref,
    )
}

fn non_resource(verb: &str, uri: &str) -> Event {
    event(&format!(
        r#"{{"level":"Metadata","auditID":"x","stage":"ResponseComplete","requestURI":"{uri}","verb":"{verb}","user":{{"username":"tim","groups":["humans"]}}}}"#
    ))
}

#[test]
fn users_match_the_authenticated_user_not_the_impersonated_one() {
    let p = policy(
        "",
        "- level: Request\n  users: [bob]\n- level: Metadata\n  users: [admin, tim]\n",
    );
    let impersonating = event(
        r#"{"verb":"get","user":{"username":"admin","groups":["system:masters"]},"impersonatedUser":{"username":"bob","groups":["devs"]},"objectRef":{"resource":"pods","namespace":"default","name":"p","apiVersion":"v1"}}"#,
    );
    assert_eq!(decide(&p, &impersonating), (Some(2), Level::Metadata));
    let bob = resource_event("bob", &[], "get", r#"{"resource":"pods"}"#);
    assert_eq!(decide(&p, &bob), (Some(1), Level::Request));
    let nobody = resource_event("eve", &[], "get", r#"{"resource":"pods"}"#);
    assert_eq!(decide(&p, &nobody), (None, Level::None));
}

#[test]
fn user_groups_match_any_of_the_users_groups() {
    let p = policy(
        "",
        "- level: Request\n  userGroups: [system:serviceaccounts, humans]\n- level: Metadata\n",
    );
    assert_eq!(
        decide(&p, &get(r#"{"resource":"pods"}"#)),
        (Some(1), Level::Request)
    );
    let robot = resource_event("r", &["system:nodes"], "get", r#"{"resource":"pods"}"#);
    assert_eq!(decide(&p, &robot), (Some(2), Level::Metadata));
}

#[test]
fn a_request_without_a_user_matches_no_user_or_group_rule() {
    let p = policy(
        "",
        "- level: RequestResponse\n  users: [\"\"]\n- level: Request\n  userGroups: [system:unauthenticated]\n- level: Metadata\n",
    );
    // A failed authentication: kube-apiserver logs `user: {}` and checked the policy with
    // no user at all.
    let unauthenticated = event(
        r#"{"verb":"get","user":{},"requestURI":"/api/v1/pods","objectRef":{"resource":"pods"},"responseStatus":{"code":401}}"#,
    );
    assert_eq!(decide(&p, &unauthenticated), (Some(3), Level::Metadata));
    let anonymous = resource_event(
        "system:anonymous",
        &["system:unauthenticated"],
        "get",
        r#"{"resource":"pods"}"#,
    );
    assert_eq!(decide(&p, &anonymous), (Some(2), Level::Request));
}

#[test]
fn verbs_match_exactly() {
    let p = policy(
        "",
        "- level: None\n  verbs: [watch, list]\n- level: Request\n  verbs: [create]\n",
    );
    for (verb, expected) in [
        ("watch", (Some(1), Level::None)),
        ("list", (Some(1), Level::None)),
        ("create", (Some(2), Level::Request)),
        ("get", (None, Level::None)),
        ("WATCH", (None, Level::None)),
    ] {
        let e = resource_event("tim", &[], verb, r#"{"resource":"pods"}"#);
        assert_eq!(decide(&p, &e), expected, "verb {verb}");
    }
}

#[test]
fn resource_patterns_and_subresources() {
    // Each pattern alone, against each request: (pattern, [pods, pods/log, pods/exec,
    // deployments/scale (apps), deployments (apps), configmaps]).
    let requests = [
        r#"{"resource":"pods","namespace":"default","name":"p"}"#,
        r#"{"resource":"pods","subresource":"log","namespace":"default","name":"p"}"#,
        r#"{"resource":"pods","subresource":"exec","namespace":"default","name":"p"}"#,
        r#"{"resource":"deployments","subresource":"scale","apiGroup":"apps","namespace":"default","name":"d"}"#,
        r#"{"resource":"deployments","apiGroup":"apps","namespace":"default","name":"d"}"#,
        r#"{"resource":"configmaps","namespace":"default","name":"c"}"#,
    ];
    let table: [(&str, &str, [bool; 6]); 10] = [
        ("\"\"", "[pods]", [true, false, false, false, false, false]),
        (
            "\"\"",
            "[pods/log]",
            [false, true, false, false, false, false],
        ),
        (
            "\"\"",
            "[\"pods/*\"]",
            [true, true, true, false, false, false],
        ),
        (
            "\"\"",
            "[\"*/log\"]",
            [false, true, false, false, false, false],
        ),
        (
            "apps",
            "[\"*/scale\"]",
            [false, false, false, true, false, false],
        ),
        ("\"\"", "[\"*\"]", [true, true, true, false, false, true]),
        ("apps", "[\"*\"]", [false, false, false, true, true, false]),
        (
            "apps",
            "[deployments]",
            [false, false, false, false, true, false],
        ),
        // The group alone: every resource and subresource in it.
        ("\"\"", "[]", [true, true, true, false, false, true]),
        ("apps", "[]", [false, false, false, true, true, false]),
    ];
    for (group, resources, expected) in table {
        let p = policy(
            "",
            &format!(
                "- level: Request\n  resources:\n  - group: {group}\n    resources: {resources}\n"
            ),
        );
        for (object_ref, expected) in requests.iter().zip(expected) {
            let matched = decide(&p, &get(object_ref)).0 == Some(1);
            assert_eq!(
                matched, expected,
                "group {group} resources {resources} vs {object_ref}"
            );
        }
    }
}

#[test]
fn resource_names_and_creates() {
    let p = policy(
        "",
        "- level: None\n  resources:\n  - group: \"\"\n    resources: [configmaps, serviceaccounts/token]\n    resourceNames: [controller-leader, builder]\n- level: Metadata\n",
    );
    let leader =
        r#"{"resource":"configmaps","namespace":"kube-system","name":"controller-leader"}"#;
    assert_eq!(decide(&p, &get(leader)).0, Some(1));
    let other = r#"{"resource":"configmaps","namespace":"kube-system","name":"other"}"#;
    assert_eq!(decide(&p, &get(other)).0, Some(2));
    // A create is a POST to the collection: kube-apiserver checks the policy without a
    // name and fills objectRef.name in from the body afterwards.
    let create = resource_event("tim", &[], "create", leader);
    assert_eq!(decide(&p, &create).0, Some(2));
    // A create on a subresource names its object in the URL.
    let token = resource_event(
        "tim",
        &[],
        "create",
        r#"{"resource":"serviceaccounts","subresource":"token","namespace":"ci","name":"builder"}"#,
    );
    assert_eq!(decide(&p, &token).0, Some(1));
    // resourceNames does not reach other resources of the group.
    let pod = r#"{"resource":"pods","namespace":"kube-system","name":"controller-leader"}"#;
    assert_eq!(decide(&p, &get(pod)).0, Some(2));
}

#[test]
fn namespaces_and_cluster_scope() {
    let p = policy(
        "",
        "- level: RequestResponse\n  namespaces: [\"\"]\n- level: Request\n  namespaces: [kube-system]\n  resources:\n  - group: \"\"\n- level: Metadata\n  namespaces: [default]\n",
    );
    let cluster =
        get(r#"{"resource":"clusterroles","apiGroup":"rbac.authorization.k8s.io","name":"edit"}"#);
    assert_eq!(decide(&p, &cluster), (Some(1), Level::RequestResponse));
    let kube_system = get(r#"{"resource":"configmaps","namespace":"kube-system","name":"c"}"#);
    assert_eq!(decide(&p, &kube_system), (Some(2), Level::Request));
    let apps_kube_system =
        get(r#"{"resource":"deployments","apiGroup":"apps","namespace":"kube-system"}"#);
    assert_eq!(decide(&p, &apps_kube_system), (None, Level::None));
    // A rule with namespaces and no resources: every resource there, never a
    // non-resource request.
    let default = get(r#"{"resource":"secrets","namespace":"default"}"#);
    assert_eq!(decide(&p, &default), (Some(3), Level::Metadata));
    assert_eq!(
        decide(&p, &non_resource("get", "/healthz")),
        (None, Level::None)
    );
}

#[test]
fn non_resource_urls() {
    let p = policy(
        "",
        "- level: None\n  nonResourceURLs: [/version, \"/healthz*\"]\n- level: Request\n  nonResourceURLs: [\"*\"]\n- level: Metadata\n",
    );
    for (uri, expected) in [
        ("/version", Some(1)),
        ("/version/extra", Some(2)),
        ("/healthz", Some(1)),
        ("/healthz/etcd", Some(1)),
        ("/healthzfoo", Some(1)),
        // The query is not part of the path.
        ("/version?timeout=32s", Some(1)),
        ("/readyz?verbose", Some(2)),
        ("/metrics", Some(2)),
    ] {
        assert_eq!(decide(&p, &non_resource("get", uri)).0, expected, "{uri}");
    }
    // A resource request never matches a nonResourceURLs rule, not even `*`.
    assert_eq!(
        decide(&p, &get(r#"{"resource":"pods"}"#)),
        (Some(3), Level::Metadata)
    );
}

#[test]
fn a_rule_without_resource_selectors_matches_both_kinds() {
    let p = policy("", "- level: Request\n  verbs: [get]\n");
    assert_eq!(decide(&p, &get(r#"{"resource":"pods"}"#)).0, Some(1));
    assert_eq!(decide(&p, &non_resource("get", "/logs/x")).0, Some(1));
    assert_eq!(decide(&p, &non_resource("post", "/logs/x")).0, None);
}

#[test]
fn the_first_matching_rule_wins() {
    let p = policy(
        "",
        "- level: Metadata\n  resources:\n  - group: \"\"\n    resources: [pods/log]\n- level: RequestResponse\n  resources:\n  - group: \"\"\n    resources: [\"pods/*\"]\n",
    );
    let log = get(r#"{"resource":"pods","subresource":"log","namespace":"d","name":"p"}"#);
    assert_eq!(decide(&p, &log), (Some(1), Level::Metadata));
    let exec = get(r#"{"resource":"pods","subresource":"exec","namespace":"d","name":"p"}"#);
    assert_eq!(decide(&p, &exec), (Some(2), Level::RequestResponse));
}

#[test]
fn omit_stages_are_the_policys_joined_with_the_rules() {
    let p = policy(
        "omitStages: [RequestReceived]\n",
        "- level: Request\n  verbs: [get]\n  omitStages: [ResponseStarted]\n- level: Metadata\n  verbs: [list]\n",
    );
    let decision = p.evaluate(&request_of(&get(r#"{"resource":"pods"}"#), Needs::ALL));
    assert_eq!(
        decision.omit_stages.iter().collect::<Vec<_>>(),
        [Stage::RequestReceived, Stage::ResponseStarted]
    );
    let list = resource_event("tim", &[], "list", r#"{"resource":"pods"}"#);
    let decision = p.evaluate(&request_of(&list, Needs::ALL));
    assert_eq!(
        decision.omit_stages.iter().collect::<Vec<_>>(),
        [Stage::RequestReceived]
    );
    // No rule matched: the policy's own.
    let watch = resource_event("tim", &[], "watch", r#"{"resource":"pods"}"#);
    let decision = p.evaluate(&request_of(&watch, Needs::ALL));
    assert_eq!((decision.rule, decision.level), (None, Level::None));
    assert_eq!(
        decision.omit_stages.iter().collect::<Vec<_>>(),
        [Stage::RequestReceived]
    );
}

#[test]
fn omit_managed_fields_the_rule_wins_when_set() {
    let request = get(r#"{"resource":"pods"}"#);
    for (policy_value, rule_value, expected) in [
        ("false", "", false),
        ("true", "", true),
        ("true", "  omitManagedFields: false\n", false),
        ("false", "  omitManagedFields: true\n", true),
    ] {
        let p = policy(
            &format!("omitManagedFields: {policy_value}\n"),
            &format!("- level: RequestResponse\n  verbs: [get]\n{rule_value}"),
        );
        let decision = p.evaluate(&request_of(&request, Needs::ALL));
        assert_eq!(
            decision.omit_managed_fields, expected,
            "policy {policy_value}, rule {rule_value:?}"
        );
    }
    // No rule matches: the policy's value.
    let p = policy(
        "omitManagedFields: true\n",
        "- level: Request\n  verbs: [list]\n",
    );
    assert!(
        p.evaluate(&request_of(&request, Needs::ALL))
            .omit_managed_fields
    );
}

type Discards = auditflow_testkit::RecordingTelemetry;

fn transform(p: Policy) -> (AuditPolicy, Arc<Discards>) {
    let discards = Arc::new(Discards::default());
    let telemetry: Arc<dyn Telemetry> = discards.clone();
    (AuditPolicy::new(Arc::new(p), telemetry), discards)
}

const POD: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"d","managedFields":[{"manager":"kubectl","operation":"Apply"}],"labels":{"a":"b"}},"spec":{"containers":[]}}"#;

fn full_event(stage: &str, level: &str) -> Event {
    event(&format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"{level}","auditID":"a1","stage":"{stage}","requestURI":"/api/v1/namespaces/d/pods","verb":"create","user":{{"username":"tim","groups":["humans"]}},"objectRef":{{"resource":"pods","namespace":"d","name":"p","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":201}},"requestObject":{POD},"responseObject":{POD},"annotations":{{"µs":"ok"}}}}"#
    ))
}

fn json(event: &Event) -> serde_json::Value {
    let mut out = Vec::new();
    event.write_json(&mut out);
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn levels_only_go_down() {
    for (rule_level, expected_level, request_kept, response_kept) in [
        ("Metadata", "Metadata", false, false),
        ("Request", "Request", true, false),
        ("RequestResponse", "RequestResponse", true, true),
    ] {
        let (mut t, _) = transform(policy("", &format!("- level: {rule_level}\n")));
        let original = full_event("ResponseComplete", "RequestResponse");
        let out = run_transform(&mut t, vec![original.clone()]);
        assert_eq!(out.len(), 1);
        let out = json(&out[0]);
        assert_eq!(out["level"], expected_level);
        assert_eq!(
            out.get("requestObject").is_some(),
            request_kept,
            "{rule_level}"
        );
        assert_eq!(
            out.get("responseObject").is_some(),
            response_kept,
            "{rule_level}"
        );
        // Everything else as it came, in its place.
        let mut expected = json(&original);
        let map = expected.as_object_mut().unwrap();
        map["level"] = expected_level.into();
        if !request_kept {
            map.remove("requestObject");
        }
        if !response_kept {
            map.remove("responseObject");
        }
        assert_eq!(out, expected);
    }
    // An event already below the policy's level is not raised, nor touched.
    let (mut t, _) = transform(policy("", "- level: RequestResponse\n"));
    let metadata = event(
        r#"{"level":"Metadata","auditID":"a","stage":"ResponseComplete","verb":"get","objectRef":{"resource":"pods"}}"#,
    );
    let out = run_transform(&mut t, vec![metadata.clone()]);
    assert_eq!(out[0].raw(), metadata.raw());
    assert!(!out[0].is_modified());
}

#[test]
fn level_none_and_omitted_stages_drop_the_event_as_filtered() {
    let (mut t, discards) = transform(policy(
        "omitStages: [RequestReceived]\n",
        "- level: None\n  users: [tim]\n  verbs: [get]\n- level: Metadata\n  omitStages: [ResponseStarted]\n",
    ));
    let events = vec![
        full_event("RequestReceived", "Metadata"),
        full_event("ResponseStarted", "Metadata"),
        full_event("ResponseComplete", "Metadata"),
        full_event("Panic", "Metadata"),
        get(r#"{"resource":"pods"}"#),
    ];
    let out = run_transform(&mut t, events);
    let stages: Vec<&str> = out.iter().map(|e| e.get_str("stage").unwrap()).collect();
    assert_eq!(stages, ["ResponseComplete", "Panic"]);
    assert_eq!(discards.recorded().discarded, [("filtered", 3)]);
}

#[test]
fn omit_managed_fields_strips_objects_and_list_items() {
    let (mut t, _) = transform(policy(
        "omitManagedFields: true\n",
        "- level: RequestResponse\n",
    ));
    let list = r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"a","managedFields":[{"manager":"m"}]}},{"metadata":{"name":"b"}}]}"#;
    let listed = event(&format!(
        r#"{{"level":"RequestResponse","stage":"ResponseComplete","verb":"list","objectRef":{{"resource":"pods"}},"responseObject":{list}}}"#
    ));
    let out = run_transform(
        &mut t,
        vec![full_event("ResponseComplete", "RequestResponse"), listed],
    );
    let single = json(&out[0]);
    for key in ["requestObject", "responseObject"] {
        assert!(single[key]["metadata"].get("managedFields").is_none());
        assert_eq!(single[key]["metadata"]["labels"]["a"], "b");
    }
    let list = json(&out[1]);
    assert_eq!(
        list["responseObject"]["items"],
        serde_json::json!([{"metadata":{"name":"a"}},{"metadata":{"name":"b"}}])
    );
    // Without the option, managed fields stay.
    let (mut t, _) = transform(policy("", "- level: RequestResponse\n"));
    let original = full_event("ResponseComplete", "RequestResponse");
    let out = run_transform(&mut t, vec![original.clone()]);
    assert_eq!(out[0].raw(), original.raw());
    assert!(!out[0].is_modified());
}

fn corpus_policy(name: &str) -> Policy {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(POLICY_FIXTURES)
        .join(name);
    PolicyFile::read(&path).unwrap().policy().as_ref().clone()
}

/// Every event of the capture: its log file and its webhook batches.
fn corpus_events() -> Vec<Event> {
    let mut events = audit_log_events();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(WEBHOOK_FIXTURES);
    for n in 1..=3 {
        let body = std::fs::read(dir.join(format!("webhook-{n:04}.json"))).unwrap();
        let decoded = decode(&bytes::Bytes::from(body), Shape::EventList).unwrap();
        assert!(decoded.malformed.is_empty());
        events.extend(decoded.events);
    }
    assert_eq!(events.len(), 245 + 74 + 140 + 1);
    events
}

#[test]
fn the_capture_under_its_own_policy_is_unchanged() {
    let p = corpus_policy("kube-apiserver-1.32-audit-policy.yaml");
    // The policy kube-apiserver applied gives every event the level it was logged at.
    for event in corpus_events() {
        let decision = p.evaluate(&request_of(&event, Needs::ALL));
        assert_eq!(
            Some(decision.level),
            Level::parse(event.get_str("level").unwrap()),
            "{}",
            String::from_utf8_lossy(event.raw())
        );
    }
    let (mut t, discards) = transform(p);
    let events = corpus_events();
    let out = run_transform(&mut t, events.clone());
    assert_eq!(out.len(), events.len());
    for (out, original) in out.iter().zip(&events) {
        assert!(!out.is_modified());
        assert_eq!(out.raw(), original.raw());
    }
    assert!(discards.recorded().discarded.is_empty());
}

#[test]
fn a_stricter_policy_gives_what_kube_apiserver_would_have_logged() {
    // A central tier's policy: no health checks, not the API server's own RBAC reads,
    // only completed requests, no response bodies, and only Metadata for secrets.
    let p = policy(
        "omitStages: [RequestReceived, ResponseStarted]\n",
        r#"- level: None
  nonResourceURLs: ["/readyz*", "/healthz*", "/livez*"]
- level: None
  users: [system:apiserver]
  verbs: [get]
  resources:
  - group: rbac.authorization.k8s.io
- level: Metadata
  resources:
  - group: ""
    resources: [secrets, serviceaccounts/token]
- level: Request
  verbs: [create, update, patch, delete, list]
- level: Metadata
"#,
    );
    let events = corpus_events();
    // What kube-apiserver would have written under this policy, worked out from each event
    // independently of the matcher.
    let expected: Vec<serde_json::Value> = events
        .iter()
        .filter_map(|event| {
            let mut value = json(event);
            let map = value.as_object_mut().unwrap();
            let uri = map["requestURI"].as_str().unwrap();
            if map.get("objectRef").is_none()
                && ["/readyz", "/healthz", "/livez"]
                    .iter()
                    .any(|p| uri.starts_with(p))
            {
                return None;
            }
            let object_ref = map.get("objectRef").cloned().unwrap_or_default();
            let field = |key: &str| object_ref.get(key).and_then(|v| v.as_str()).unwrap_or("");
            if map["user"]["username"] == "system:apiserver"
                && map["verb"] == "get"
                && field("apiGroup") == "rbac.authorization.k8s.io"
            {
                return None;
            }
            if map["stage"] == "RequestReceived" || map["stage"] == "ResponseStarted" {
                return None;
            }
            let resource = map
                .get("objectRef")
                .and_then(|o| o.get("resource"))
                .and_then(|r| r.as_str())
                .unwrap_or("");
            let mutating = ["create", "update", "patch", "delete", "list"]
                .contains(&map["verb"].as_str().unwrap());
            let subresource = map
                .get("objectRef")
                .and_then(|o| o.get("subresource"))
                .and_then(|r| r.as_str())
                .unwrap_or("");
            let secret =
                resource == "secrets" || (resource, subresource) == ("serviceaccounts", "token");
            let level = if secret || !mutating {
                Level::Metadata
            } else {
                Level::Request
            };
            let logged = Level::parse(map["level"].as_str().unwrap()).unwrap();
            if logged > level {
                map["level"] = level.as_str().into();
                map.remove("responseObject");
                if level < Level::Request {
                    map.remove("requestObject");
                }
            }
            Some(value)
        })
        .collect();
    // 116 of the 460: most of the capture is the API server reading RBAC objects.
    assert_eq!(expected.len(), 116);
    assert!(expected.iter().any(|e| e["level"] == "Request"));
    assert!(expected
        .iter()
        .any(|e| e["level"] == "Request" && e.get("requestObject").is_some()));
    let (mut t, discards) = transform(p);
    let out: Vec<serde_json::Value> = run_transform(&mut t, events.clone())
        .iter()
        .map(json)
        .collect();
    assert_eq!(out.len(), expected.len());
    for (out, expected) in out.iter().zip(&expected) {
        assert_eq!(out, expected);
    }
    assert_eq!(
        discards
            .recorded()
            .discarded
            .iter()
            .map(|(_, n)| n)
            .sum::<usize>(),
        events.len() - expected.len()
    );
}

#[test]
fn the_transform_counts_into_the_real_metrics() {
    let metrics = auditflow_metrics::Metrics::new();
    let telemetry = auditflow_metrics::ComponentMetrics::new(
        &metrics,
        "policy-metrics",
        "transform",
        "audit_policy",
    );
    let mut t = AuditPolicy::new(
        Arc::new(policy(
            "",
            "- level: None\n  verbs: [watch]\n- level: Metadata\n",
        )),
        telemetry,
    );
    let events = audit_log_events();
    let watches = events
        .iter()
        .filter(|e| e.get_str("verb") == Some("watch"))
        .count();
    assert_eq!(watches, 60);
    assert_eq!(run_transform(&mut t, events).len(), 245 - 60);
    let rendered = String::from_utf8(metrics.render()).unwrap();
    assert!(rendered.lines().any(|l| l
        == "auditflow_component_discarded_events_total{component_id=\"policy-metrics\",\
            component_kind=\"transform\",component_type=\"audit_policy\",reason=\"filtered\"} 60"));
}

fn errors(text: &str) -> Vec<(usize, Code, String)> {
    load(text)
        .findings
        .into_iter()
        .filter(Finding::is_error)
        .map(|f| (f.line, f.code, f.message))
        .collect()
}

#[test]
fn loading_refuses_what_kube_apiserver_ignores_or_refuses() {
    let text = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestRecieved]
rules:
- level: Metadata
  resources:
  - group: ""
    resources: [pods]
    verbs: [create]
- level: Everything
- level: None
  nonResourceURLs: [healthz, "/a*b"]
- resources:
  - group: apps/v1
  - group: ""
    resourceNames: [x]
- level: Request
  namespaces: [default]
  nonResourceURLs: [/x]
  userGroup: [devs]
"#;
    let found = errors(text);
    let summary: Vec<(usize, &str)> = found.iter().map(|(l, c, _)| (*l, c.as_str())).collect();
    assert_eq!(
        summary,
        [
            (3, "AP102"),  // unknown stage
            (9, "AP101"),  // verbs inside resources
            (10, "AP102"), // unknown level
            (12, "AP102"), // URL without a leading /
            (12, "AP102"), // * not last
            (13, "AP102"), // missing level
            (14, "AP102"), // group with a version
            (15, "AP102"), // resourceNames without resources
            (17, "AP102"), // both kinds of rule
            (20, "AP101"), // userGroup
        ],
        "{found:#?}"
    );
    assert!(
        found[1].2.contains("`verbs` belongs to the rule"),
        "{}",
        found[1].2
    );
    assert!(
        found[9].2.contains("valid keys: level, users, userGroups"),
        "{}",
        found[9].2
    );
}

#[test]
fn loading_checks_the_envelope() {
    assert_eq!(
        errors("apiVersion: audit.k8s.io/v1beta1\nkind: Policy\nrules:\n- level: None\n"),
        []
    );
    let found = errors("apiVersion: v1\nkind: ConfigMap\nrules: []\n");
    let lines: Vec<usize> = found.iter().map(|(l, _, _)| *l).collect();
    assert_eq!(lines, [1, 2, 3], "{found:#?}");
    assert_eq!(
        errors("kind: Policy\napiVersion: audit.k8s.io/v1\n").len(),
        1
    );
    let found = errors(
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n  level: Metadata\n",
    );
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].0, found[0].1), (5, Code::Syntax));
    let found = errors("rules:\n- level: [\n");
    assert_eq!(found[0].1, Code::Syntax);
}

#[test]
fn the_config_names_the_file_and_line_of_each_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(
        &path,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n  verb: [get]\n- level: Loud\n",
    )
    .unwrap();
    let registry = auditflow_config::Registry::new(vec![auditflow_config::Plugin::transform::<
        AuditPolicyConfig,
    >("audit_policy", "")]);
    let plugin = registry
        .find(auditflow_core::ComponentKind::Transform, "audit_policy")
        .unwrap();
    let error = plugin
        .parse(serde_json::json!({"policy_file": path}))
        .err()
        .unwrap();
    assert_eq!(error.path, "policy_file");
    let file = path.display();
    assert!(
        error
            .message
            .contains(&format!("{file}:5: unknown key `verb` in rule 1"))
            && error
                .message
                .contains(&format!("{file}:6: rule 2: unknown level `Loud`")),
        "{}",
        error.message
    );
    let missing = plugin
        .parse(serde_json::json!({"policy_file": dir.path().join("nope.yaml")}))
        .err()
        .unwrap();
    assert!(
        missing.message.starts_with("cannot read policy file"),
        "{}",
        missing.message
    );
    std::fs::write(
        &path,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n",
    )
    .unwrap();
    assert!(plugin
        .parse(serde_json::json!({"policy_file": path}))
        .is_ok());
}

fn warnings(text: &str) -> Vec<(usize, &'static str, String)> {
    lint(text)
        .into_iter()
        .filter(|f| !f.is_error())
        .map(|f| (f.line, f.code.as_str(), f.message))
        .collect()
}

#[test]
fn lint_finds_shadowed_rules() {
    let text = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  resources:
  - group: ""
    resources: ["pods/*", secrets]
- level: Request
  verbs: [get]
  resources:
  - group: ""
    resources: [pods/log]
- level: None
  nonResourceURLs: ["/healthz*"]
- level: None
  nonResourceURLs: [/healthz/etcd]
- level: Request
  users: [a]
  resources:
  - group: ""
    resources: [secrets]
    resourceNames: [x]
- level: Request
  resources:
  - group: ""
    resources: [configmaps]
- level: Metadata
  namespaces: [kube-system]
  resources:
  - group: ""
    resources: [configmaps]
- level: Metadata
- level: None
  verbs: [watch]
"#;
    let found: Vec<(usize, &str)> = warnings(text).iter().map(|(l, c, _)| (*l, *c)).collect();
    assert_eq!(
        found,
        [
            (9, "AP201"),
            (16, "AP201"),
            (18, "AP201"),
            (28, "AP201"),
            (34, "AP201"),
        ]
    );
    let messages = warnings(text);
    assert_eq!(
        messages[0].2,
        "rule 2 can never match: rule 1 (line 5) already matches every request it does; move it above rule 1 or remove it"
    );
}

#[test]
fn lint_warns_about_credentials_volume_and_gaps() {
    let text = r#"apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: Metadata
  resources:
  - group: ""
    resources: [secrets]
- level: RequestResponse
  resources:
  - group: ""
  - group: authentication.k8s.io
- level: Request
  verbs: [create, update]
  omitStages: [RequestReceived]
- level: None
  users: [system:kube-proxy]
"#;
    let found: Vec<(usize, &str)> = warnings(text).iter().map(|(l, c, _)| (*l, *c)).collect();
    assert_eq!(
        found,
        [
            (3, "AP203"),
            (4, "AP204"),
            (8, "AP202"),
            (8, "AP205"),
            (8, "AP204"),
        ]
    );
    let messages = warnings(text);
    // Secrets are already caught at Metadata by rule 1; rule 3 adds nothing rule 2 did
    // not already log.
    assert!(
        messages[2].2.starts_with(
            "rule 2 logs tokenreviews, serviceaccounts/token, tokenrequests at RequestResponse"
        ),
        "{}",
        messages[2].2
    );
    assert!(messages[2].2.contains("`redact`"));

    let request_level = "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Request\n  resources:\n  - group: \"\"\n    resources: [secrets]\n- level: Metadata\n";
    let messages = warnings(request_level);
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert_eq!((messages[0].0, messages[0].1), (5, "AP202"));
    assert!(messages[0].2.starts_with("rule 1 logs secrets at Request:"));
    // A TokenRequest carries its token in the response only; reviews are never watched.
    let token_request = "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Request\n  resources:\n  - group: \"\"\n    resources: [serviceaccounts/token]\n- level: RequestResponse\n  resources:\n  - group: authorization.k8s.io\n    resources: [subjectaccessreviews]\n- level: Metadata\n";
    assert_eq!(warnings(token_request), []);
}

#[test]
fn explain_names_the_rule_and_why_the_earlier_ones_did_not_match() {
    let p = policy(
        "omitStages: [RequestReceived]\n",
        r#"- level: None
  users: [system:kube-proxy]
- level: None
  nonResourceURLs: ["/healthz*"]
- level: RequestResponse
  resources:
  - group: ""
    resources: [pods]
- level: Request
  namespaces: [kube-system]
- level: Metadata
  userGroups: [humans]
"#,
    );
    let e = get(r#"{"resource":"pods","subresource":"log","namespace":"default","name":"p"}"#);
    let explanation = explain(&p, &e);
    assert_eq!(
        explanation.to_string(),
        "rule 5 (line 15) matches: level Metadata, omitStages [RequestReceived]; kept, lowered to Metadata (requestObject and responseObject removed)
  rule 1 (line 5): user `tim` is not in users [system:kube-proxy]
  rule 2 (line 7): the rule is for non-resource URLs, and this is a resource request
  rule 3 (line 9): group `` resource `pods/log` name `p` is not in resources [group `` resources [pods]]
  rule 4 (line 13): namespace `default` is not in namespaces [kube-system]
"
    );
    let health = non_resource("get", "/healthz/etcd?verbose");
    assert_eq!(
        explain(&p, &health).to_string(),
        "rule 2 (line 7) matches: level None, omitStages [RequestReceived]; dropped (level None)
  rule 1 (line 5): user `tim` is not in users [system:kube-proxy]
"
    );
    let robot = resource_event("r", &["robots"], "get", r#"{"resource":"nodes"}"#);
    let explanation = explain(&p, &robot);
    assert!(explanation.rule.is_none());
    assert!(explanation.to_string().starts_with(
        "no rule matches: level None, omitStages [RequestReceived]; dropped (level None)\n"
    ));
    assert_eq!(explanation.not_matched.len(), 5);
}

#[test]
fn no_telemetry_and_an_empty_batch() {
    let mut t = AuditPolicy::new(
        Arc::new(policy("", "- level: Metadata\n")),
        Arc::new(NoTelemetry),
    );
    assert!(run_transform(&mut t, Vec::new()).is_empty());
}

/// The request as read from the bytes, and as read from the same event rebuilt from its
/// parsed value (which takes the deserialising route), printed for comparison.
fn both_routes(event: &Event) -> (String, String) {
    let walked = format!("{:?}", request_of(event, Needs::ALL));
    let Value::Object(map) = event.to_value() else {
        panic!("an event is an object")
    };
    let parsed = Event::from_map(map);
    let deserialised = format!("{:?}", request_of(&parsed, Needs::ALL));
    (walked, deserialised)
}

#[test]
fn walking_the_bytes_reads_the_same_request_as_deserialising() {
    let mut events = corpus_events();
    events.extend(auditflow_generator::generated_events(
        auditflow_generator::Profile::Metadata,
        7,
        2_000,
    ));
    let tricky = [
        // Duplicate members: the last one wins on both routes.
        r#"{"verb":"get","objectRef":{"resource":"pods","resource":"secrets","namespace":"a"},"user":{"username":"x","username":"y"}}"#,
        // Escapes in values and keys; `null` members; empty and long group lists.
        r#"{"verb":"g\u0065t","objectRef":{"reso\u0075rce":"pods","namespace":null,"name":"a\"b"},"user":{"username":"sys\u003aadmin","groups":["a\\b","c","d","e","f","g"]}}"#,
        r#"{"verb":"list","objectRef":{"resource":"pods","apiGroup":null,"subresource":"log"},"user":{"username":"x","groups":[],"extra":{"k":["v"]}}}"#,
        r#"{"verb":"get","objectRef":{"resource":"pods"},"user":{"username":"x","groups":null}}"#,
        // Members of another type: deserialising refuses the whole object.
        r#"{"verb":"get","objectRef":{"resource":7},"user":{"username":"x","groups":["a",1]}}"#,
        r#"{"verb":5,"objectRef":"pods","user":["x"],"requestURI":"/x?y"}"#,
        r#"{"verb":"get","objectRef":null,"user":{},"requestURI":"/healthz?verbose"}"#,
        r#"{"verb":"create","objectRef":{"resource":"pods","name":"p"},"user":{"username":""}}"#,
    ];
    events.extend(tricky.iter().map(|text| event(text)));
    for event in &events {
        let (walked, deserialised) = both_routes(event);
        assert_eq!(
            walked,
            deserialised,
            "{}",
            String::from_utf8_lossy(event.raw())
        );
    }
    // The routes really differ in what they read: the walk borrows what the other parses.
    let (walked, _) = both_routes(&event(tricky[0]));
    assert!(walked.contains(r#"resource: "secrets""#), "{walked}");
}

#[test]
fn reading_the_user_only_when_a_rule_asks_decides_the_same() {
    let p = policy(
        "",
        r#"- level: None
  users: [system:kube-proxy]
  verbs: [watch]
  resources: [{group: "", resources: [endpoints, services]}]
- level: None
  resources: [{group: coordination.k8s.io, resources: [leases]}]
- level: Request
  userGroups: [system:nodes]
  verbs: [get, patch]
- level: Metadata
  userGroups: [system:authenticated]
- level: RequestResponse
"#,
    );
    let mut events = corpus_events();
    events.extend(auditflow_generator::generated_events(
        auditflow_generator::Profile::Metadata,
        3,
        2_000,
    ));
    let (mut asked, mut decided_by_user_rules) = (0, 0);
    for event in &events {
        let eager = p.evaluate(&request_of(event, Needs::ALL));
        let without_user = Needs {
            user: false,
            path: true,
        };
        let lazy = p.evaluate_with(&request_of(event, without_user), || {
            asked += 1;
            user_of(event)
        });
        assert_eq!(eager, lazy, "{}", String::from_utf8_lossy(event.raw()));
        decided_by_user_rules += usize::from(matches!(eager.rule, Some(0 | 2 | 3)));
    }
    // Some decisions needed the user, and many did not ask for it at all.
    assert!(decided_by_user_rules > 0 && asked >= decided_by_user_rules);
    assert!(asked < events.len() * 9 / 10, "{asked} of {}", events.len());
}

#[test]
fn stage_and_level_written_with_escapes_read_as_the_names_they_spell() {
    let p = policy("omitStages: [RequestReceived]\n", "- level: Request\n");
    let (mut policy_transform, discards) = transform(p);
    let escaped_stage = full_event("Request\\u0052eceived", "Metadata");
    let escaped_level = full_event("ResponseComplete", "Metadat\\u0061");
    let request_response = full_event("ResponseComplete", "RequestResponse");
    let mut batch = Batch::new(vec![escaped_stage, escaped_level.clone(), request_response]);
    policy_transform.transform(&mut batch);
    // The omitted stage is dropped; `Metadata` is at or below `Request`, so that event
    // leaves as it came; `RequestResponse` is lowered to `Request`.
    assert_eq!(batch.len(), 2);
    assert_eq!(discards.discarded_events("filtered"), 1);
    assert_eq!(batch.events[0].raw(), escaped_level.raw());
    assert!(!batch.events[0].is_modified());
    assert_eq!(json(&batch.events[1])["level"], "Request");
}
