use auditflow_testkit::events::audit_log_events;
use auditflow_testkit::{event, run_transform};
use serde_json::json;

use super::*;

/// A real-shaped event: the capture's RBAC denial (`bob` listing secrets) with the
/// request, the object reference, the status and the annotations replaced.
fn request(
    verb: &str,
    uri: &str,
    object_ref: Option<Value>,
    status: Value,
    annotations: Option<Value>,
) -> Event {
    let mut value = json!({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
        "auditID": "332b4024-e672-4823-9bfa-80a2ddf4aa1e", "stage": "ResponseComplete",
        "requestURI": uri, "verb": verb,
        "user": {"username": "bob", "uid": "uid-1002", "groups": ["qa-team", "system:authenticated"]},
        "sourceIPs": ["127.0.0.1"],
        "userAgent": "kubectl/v1.32.0 (linux/amd64) kubernetes/cd13ec4",
    });
    let map = value.as_object_mut().unwrap();
    if let Some(object_ref) = object_ref {
        map.insert("objectRef".into(), object_ref);
    }
    map.insert("responseStatus".into(), status);
    map.insert(
        "requestReceivedTimestamp".into(),
        "2026-11-23T08:24:14.772829Z".into(),
    );
    map.insert(
        "stageTimestamp".into(),
        "2026-11-23T08:24:14.773282Z".into(),
    );
    if let Some(annotations) = annotations {
        map.insert("annotations".into(), annotations);
    }
    event(&value.to_string())
}

fn forbid(reason: &str) -> Option<Value> {
    Some(json!({"authorization.k8s.io/decision": "forbid", "authorization.k8s.io/reason": reason}))
}

fn allow() -> Option<Value> {
    Some(
        json!({"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": "RBAC: allowed by ClusterRoleBinding \"qa\" of ClusterRole \"view\" to Group \"qa-team\""}),
    )
}

fn forbidden_status(message: &str) -> Value {
    json!({"metadata": {}, "status": "Failure", "message": message, "reason": "Forbidden", "details": {}, "code": 403})
}

fn ok(code: u64) -> Value {
    json!({"metadata": {}, "code": code})
}

fn transform() -> RbacDenial {
    RbacDenial::unobserved(&RbacDenialConfig::default())
}

fn tagged(event: Event) -> Event {
    run_transform(&mut transform(), vec![event]).pop().unwrap()
}

fn annotation<'a>(event: &'a Event, key: &str) -> Option<&'a str> {
    event.get_path(["annotations", key])?.as_str()
}

fn missing(event: &Event) -> Option<Value> {
    annotation(event, "auditflow.io/missing-permission")
        .map(|text| serde_json::from_str(text).unwrap())
}

#[test]
fn the_captured_denial_names_the_cluster_scoped_rule() {
    let events = audit_log_events();
    let out = run_transform(&mut transform(), events.clone());
    let denied: Vec<&Event> = out.iter().filter(|e| e.is_modified()).collect();
    assert_eq!(denied.len(), 1);
    let denied = denied[0];
    assert_eq!(annotation(denied, "auditflow.io/denial"), Some("rbac"));
    assert_eq!(
        annotation(denied, "auditflow.io/missing-permission"),
        Some(r#"{"verb":"list","apiGroup":"","resource":"secrets","scope":"cluster"}"#)
    );
    // The authorizer's reason is empty in real RBAC denials: no reason annotation then.
    assert_eq!(annotation(denied, "auditflow.io/denial-reason"), None);
    assert_eq!(annotation(denied, "auditflow.io/denied-user"), Some("bob"));
    // Every other event, the 404s, 422 and 500s included, leaves byte for byte.
    for (before, after) in events.iter().zip(&out) {
        if !after.is_modified() {
            assert_eq!(after.to_json_bytes(), before.raw());
        }
    }
    // Only the annotations changed, and the original ones are kept in order.
    let mut expected = events
        .iter()
        .find(|e| e.get_str("auditID") == denied.get_str("auditID"))
        .unwrap()
        .to_value();
    let annotations = expected["annotations"].as_object_mut().unwrap();
    annotations.insert("auditflow.io/denial".into(), "rbac".into());
    annotations.insert(
        "auditflow.io/missing-permission".into(),
        r#"{"verb":"list","apiGroup":"","resource":"secrets","scope":"cluster"}"#.into(),
    );
    annotations.insert("auditflow.io/denied-user".into(), "bob".into());
    assert_eq!(
        String::from_utf8(denied.to_json_bytes().to_vec()).unwrap(),
        expected.to_string()
    );
}

#[test]
fn denials_of_every_verb_name_verb_group_resource_name_and_namespace() {
    let deployments = "/apis/apps/v1/namespaces/shop/deployments";
    let cases = [
        ("get", format!("{deployments}/web"), Some("web")),
        ("list", format!("{deployments}?limit=500"), None),
        ("watch", format!("{deployments}?watch=true"), None),
        (
            "create",
            format!("{deployments}?fieldManager=kubectl-client-side-apply"),
            None,
        ),
        ("update", format!("{deployments}/web"), Some("web")),
        (
            "patch",
            format!("{deployments}/web?fieldManager=kubectl-edit"),
            Some("web"),
        ),
        ("delete", format!("{deployments}/web"), Some("web")),
        ("deletecollection", deployments.to_owned(), None),
    ];
    for (verb, uri, name) in cases {
        let mut object_ref = json!({"resource": "deployments", "namespace": "shop", "apiGroup": "apps", "apiVersion": "v1"});
        let mut rule = json!({"verb": verb, "apiGroup": "apps", "resource": "deployments"});
        if let Some(name) = name {
            object_ref["name"] = name.into();
            rule["resourceName"] = name.into();
        }
        rule["namespace"] = "shop".into();
        let message = format!("deployments.apps is forbidden: User \"bob\" cannot {verb} resource \"deployments\" in API group \"apps\" in the namespace \"shop\"");
        let denied = tagged(request(
            verb,
            &uri,
            Some(object_ref.clone()),
            forbidden_status(&message),
            forbid(""),
        ));
        assert_eq!(
            annotation(&denied, "auditflow.io/denial"),
            Some("rbac"),
            "{verb}"
        );
        assert_eq!(missing(&denied), Some(rule.clone()), "{verb}");
        // Key order is the documented one.
        assert!(annotation(&denied, "auditflow.io/missing-permission")
            .unwrap()
            .starts_with(&format!(
                "{{\"verb\":\"{verb}\",\"apiGroup\":\"apps\",\"resource\":\"deployments\","
            )));

        // The same request allowed: not touched at all.
        let code = if verb == "create" { 201 } else { 200 };
        let allowed = request(verb, &uri, Some(object_ref), ok(code), allow());
        let out = tagged(allowed.clone());
        assert!(!out.is_modified(), "{verb}");
        assert_eq!(out.to_json_bytes(), allowed.raw());
    }
}

#[test]
fn subresources_are_folded_as_rbac_names_them() {
    // kubectl logs
    let logs = tagged(request(
        "get",
        "/api/v1/namespaces/shop/pods/web-0/log?container=app",
        Some(json!({"resource": "pods", "namespace": "shop", "name": "web-0", "apiVersion": "v1", "subresource": "log"})),
        forbidden_status("pods \"web-0\" is forbidden: User \"bob\" cannot get resource \"pods/log\" in API group \"\" in the namespace \"shop\""),
        forbid(""),
    ));
    assert_eq!(
        annotation(&logs, "auditflow.io/missing-permission"),
        Some(
            r#"{"verb":"get","apiGroup":"","resource":"pods/log","resourceName":"web-0","namespace":"shop"}"#
        )
    );
    // kubectl exec: `create` up to kubectl 1.29, `get` (WebSocket) from 1.30.
    for verb in ["create", "get"] {
        let exec = tagged(request(
            verb,
            "/api/v1/namespaces/shop/pods/web-0/exec?command=sh\u{0026}container=app\u{0026}stdin=true\u{0026}tty=true",
            Some(json!({"resource": "pods", "namespace": "shop", "name": "web-0", "apiVersion": "v1", "subresource": "exec"})),
            forbidden_status(&format!("pods \"web-0\" is forbidden: User \"bob\" cannot {verb} resource \"pods/exec\" in API group \"\" in the namespace \"shop\"")),
            forbid(""),
        ));
        assert_eq!(
            missing(&exec),
            Some(
                json!({"verb": verb, "apiGroup": "", "resource": "pods/exec", "resourceName": "web-0", "namespace": "shop"})
            )
        );
    }
}

#[test]
fn cluster_scoped_resources_have_cluster_scope() {
    let cases = [
        (
            "get",
            "/api/v1/nodes/worker-1",
            json!({"resource": "nodes", "name": "worker-1", "apiVersion": "v1"}),
            json!({"verb": "get", "apiGroup": "", "resource": "nodes", "resourceName": "worker-1", "scope": "cluster"}),
        ),
        (
            "list",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles?limit=500",
            json!({"resource": "clusterroles", "apiGroup": "rbac.authorization.k8s.io", "apiVersion": "v1"}),
            json!({"verb": "list", "apiGroup": "rbac.authorization.k8s.io", "resource": "clusterroles", "scope": "cluster"}),
        ),
        (
            "delete",
            "/api/v1/namespaces/shop",
            json!({"resource": "namespaces", "namespace": "shop", "name": "shop", "apiVersion": "v1"}),
            // A namespace object lives in its own namespace in the audit objectRef.
            json!({"verb": "delete", "apiGroup": "", "resource": "namespaces", "resourceName": "shop", "namespace": "shop"}),
        ),
        (
            "patch",
            "/api/v1/nodes/worker-1/status",
            json!({"resource": "nodes", "name": "worker-1", "apiVersion": "v1", "subresource": "status"}),
            json!({"verb": "patch", "apiGroup": "", "resource": "nodes/status", "resourceName": "worker-1", "scope": "cluster"}),
        ),
    ];
    for (verb, uri, object_ref, rule) in cases {
        let denied = tagged(request(
            verb,
            uri,
            Some(object_ref),
            forbidden_status("forbidden"),
            forbid(""),
        ));
        assert_eq!(missing(&denied), Some(rule), "{uri}");
    }
}

#[test]
fn non_resource_urls_drop_the_query() {
    for (uri, path) in [
        ("/metrics", "/metrics"),
        ("/logs/kube-apiserver.log?x=1", "/logs/kube-apiserver.log"),
        ("/debug/pprof/profile?seconds=30", "/debug/pprof/profile"),
    ] {
        let denied = tagged(request(
            "get",
            uri,
            None,
            forbidden_status(&format!(
                "forbidden: User \"bob\" cannot get path \"{path}\""
            )),
            forbid(""),
        ));
        assert_eq!(
            annotation(&denied, "auditflow.io/missing-permission"),
            Some(format!(r#"{{"verb":"get","nonResourceURL":"{path}"}}"#).as_str())
        );
    }
}

#[test]
fn the_authorizer_reason_is_kept_when_it_says_something() {
    let denied = tagged(request(
        "get",
        "/api/v1/namespaces/shop/secrets/db",
        Some(json!({"resource": "secrets", "namespace": "shop", "name": "db", "apiVersion": "v1"})),
        forbidden_status("secrets \"db\" is forbidden: User \"system:node:worker-1\" cannot get resource \"secrets\" in API group \"\" in the namespace \"shop\": no relationship found between node 'worker-1' and this object"),
        forbid("no relationship found between node 'worker-1' and this object"),
    ));
    assert_eq!(
        annotation(&denied, "auditflow.io/denial-reason"),
        Some("no relationship found between node 'worker-1' and this object")
    );
}

#[test]
fn an_impersonated_request_is_denied_to_the_impersonated_user() {
    let mut value = request(
        "list",
        "/api/v1/namespaces/kube-system/secrets?limit=500",
        Some(json!({"resource": "secrets", "namespace": "kube-system", "apiVersion": "v1"})),
        forbidden_status("secrets is forbidden: User \"jane\" cannot list resource \"secrets\" in API group \"\" in the namespace \"kube-system\""),
        forbid(""),
    )
    .to_value();
    value["impersonatedUser"] = json!({"username": "jane", "groups": ["system:authenticated"]});
    let denied = tagged(event(&value.to_string()));
    assert_eq!(
        annotation(&denied, "auditflow.io/missing-permission"),
        Some(r#"{"verb":"list","apiGroup":"","resource":"secrets","namespace":"kube-system"}"#)
    );
    assert_eq!(
        annotation(&denied, "auditflow.io/denied-user"),
        Some("jane")
    );
}

#[test]
fn a_refused_impersonation_needs_impersonate_on_users_groups_or_serviceaccounts() {
    // The impersonation filter answers 403 before authorization runs: no decision
    // annotation, and the request's own verb and objectRef are not what was refused.
    let cases = [
        ("users \"jane\" is forbidden: User \"bob\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope",
         json!({"verb": "impersonate", "apiGroup": "", "resource": "users", "resourceName": "jane", "scope": "cluster"})),
        ("groups \"system:masters\" is forbidden: User \"bob\" cannot impersonate resource \"groups\" in API group \"\" at the cluster scope",
         json!({"verb": "impersonate", "apiGroup": "", "resource": "groups", "resourceName": "system:masters", "scope": "cluster"})),
        ("serviceaccounts \"deployer\" is forbidden: User \"bob\" cannot impersonate resource \"serviceaccounts\" in API group \"\" in the namespace \"ci\"",
         json!({"verb": "impersonate", "apiGroup": "", "resource": "serviceaccounts", "resourceName": "deployer", "namespace": "ci"})),
        ("userextras.authentication.k8s.io \"admin\" is forbidden: User \"bob\" cannot impersonate resource \"userextras/scopes\" in API group \"authentication.k8s.io\" at the cluster scope",
         json!({"verb": "impersonate", "apiGroup": "authentication.k8s.io", "resource": "userextras/scopes", "scope": "cluster"})),
    ];
    for (message, rule) in cases {
        let denied = tagged(request(
            "get",
            "/api/v1/namespaces/shop/pods?limit=500",
            Some(json!({"resource": "pods", "namespace": "shop", "apiVersion": "v1"})),
            forbidden_status(message),
            None,
        ));
        assert_eq!(
            annotation(&denied, "auditflow.io/denial"),
            Some("rbac"),
            "{message}"
        );
        assert_eq!(missing(&denied), Some(rule), "{message}");
        assert_eq!(annotation(&denied, "auditflow.io/denied-user"), Some("bob"));
    }
}

#[test]
fn authentication_failures_are_tagged_without_a_rule() {
    // A 401 has `user: {}` and no authorization annotations.
    let mut value = request(
        "list",
        "/api/v1/namespaces/default/pods?limit=500",
        Some(json!({"resource": "pods", "namespace": "default", "apiVersion": "v1"})),
        json!({"metadata": {}, "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized", "code": 401}),
        None,
    )
    .to_value();
    value["user"] = json!({});
    let denied = tagged(event(&value.to_string()));
    assert_eq!(
        denied.get("annotations"),
        Some(&json!({"auditflow.io/denial": "authentication"}))
    );
}

#[test]
fn admission_rejections_are_forbidden_not_rbac() {
    // PodSecurity answers 403 after RBAC allowed the request: the allow reason must not
    // be reported as the denial's reason.
    let denied = tagged(request(
        "create",
        "/api/v1/namespaces/shop/pods?fieldManager=kubectl-client-side-apply",
        Some(json!({"resource": "pods", "namespace": "shop", "name": "priv", "apiVersion": "v1"})),
        forbidden_status("pods \"priv\" is forbidden: violates PodSecurity \"restricted:latest\": privileged (container \"app\" must not set securityContext.privileged=true)"),
        allow(),
    ));
    assert_eq!(
        annotation(&denied, "auditflow.io/denial"),
        Some("forbidden")
    );
    assert_eq!(annotation(&denied, "auditflow.io/denial-reason"), None);
    assert_eq!(annotation(&denied, "auditflow.io/missing-permission"), None);
    // An old event without any annotations.
    let old = tagged(request(
        "get",
        "/api/v1/namespaces/shop/pods/web-0",
        Some(json!({"resource": "pods", "namespace": "shop", "name": "web-0", "apiVersion": "v1"})),
        forbidden_status("forbidden"),
        None,
    ));
    assert_eq!(
        old.get("annotations"),
        Some(&json!({"auditflow.io/denial": "forbidden"}))
    );
}

#[test]
fn the_prefix_is_configurable() {
    let config: RbacDenialConfig =
        serde_json::from_value(json!({"annotation_prefix": "acme.io/"})).unwrap();
    let mut transform = RbacDenial::unobserved(&config);
    let out = run_transform(&mut transform, audit_log_events());
    let denied = out.iter().find(|e| e.is_modified()).unwrap();
    assert_eq!(annotation(denied, "acme.io/denial"), Some("rbac"));
    assert!(annotation(denied, "acme.io/missing-permission").is_some());
    assert_eq!(annotation(denied, "auditflow.io/denial"), None);
    assert!(serde_json::from_value::<RbacDenialConfig>(json!({"prefix": "x"})).is_err());
}

#[test]
fn events_changed_upstream_are_still_classified() {
    // An earlier transform changed the annotations and the status: the raw-bytes shortcut
    // is not available and the parsed fields are read instead.
    let mut upstream = request(
        "list",
        "/api/v1/secrets?limit=500",
        Some(json!({"resource": "secrets", "apiVersion": "v1"})),
        forbidden_status("secrets is forbidden"),
        forbid(""),
    );
    upstream
        .annotations_mut()
        .insert("auditflow.io/redacted".into(), "jwt".into());
    upstream.get_mut("responseStatus").unwrap()["message"] = "[REDACTED]".into();
    let denied = tagged(upstream);
    assert_eq!(annotation(&denied, "auditflow.io/denial"), Some("rbac"));
    assert_eq!(annotation(&denied, "auditflow.io/redacted"), Some("jwt"));
    // And an allowed event without any status (a RequestReceived stage) is left alone.
    let mut received = request("get", "/api/v1/nodes", None, json!(null), allow()).to_value();
    received.as_object_mut().unwrap().remove("responseStatus");
    let received = event(&received.to_string());
    assert!(!tagged(received).is_modified());
}

#[test]
fn status_codes_are_the_member_of_response_status() {
    let code = |status: &str| {
        event(&format!(r#"{{"verb":"get","responseStatus":{status}}}"#))
            .u64_at(&["responseStatus", "code"])
    };
    assert_eq!(code(r#"{"metadata":{},"code":200}"#), Some(200));
    assert_eq!(code(r#"{ "code" : 403 , "status":"Failure"}"#), Some(403));
    assert_eq!(
        code(r#"{"message":"bad \"code\": 500","code":401}"#),
        Some(401)
    );
    // A `code` nested in `details` is not the status' code.
    assert_eq!(code(r#"{"details":{"code":500},"code":403}"#), Some(403));
    assert_eq!(code(r#"{"details":{"code":403}}"#), None);
    assert_eq!(code(r#"{"metadata":{}}"#), None);
}

#[test]
fn metric_labels_are_bounded() {
    let metrics = Metrics::new();
    let handle = ComponentMetrics::new(&metrics, "bounded", "transform", "rbac_denial");
    let mut transform = RbacDenial::new(Arc::clone(&handle), &RbacDenialConfig::default());
    let events: Vec<Event> = (0..150)
        .map(|i| {
            request(
                if i % 2 == 0 { "list" } else { "frobnicate" },
                "/apis/example.com/v1/widgets",
                Some(json!({"resource": format!("widgets{i}"), "apiGroup": "example.com", "apiVersion": "v1"})),
                forbidden_status("forbidden"),
                forbid(""),
            )
        })
        .collect();
    let out = run_transform(&mut transform, events);
    assert!(out
        .iter()
        .all(|e| annotation(e, "auditflow.io/denial") == Some("rbac")));
    let value = |verb: &str, resource: &str| handle.rbac_denials("rbac", verb, resource).get();
    assert_eq!(value("list", "widgets0"), 1);
    assert_eq!(value("other", "widgets1"), 1);
    assert_eq!(value("other", "widgets99"), 1);
    assert_eq!(value("list", "other") + value("other", "other"), 50);
    assert_eq!(value("list", "widgets100"), 0);
    // The resource annotation is exact even when the label is `other`.
    assert_eq!(missing(&out[149]).unwrap()["resource"], json!("widgets149"));
    // Non-resource requests and user names never become label values.
    let text = String::from_utf8(metrics.render()).unwrap();
    assert!(text.contains(r#"auditflow_rbac_denials_total{class="rbac",component_id="bounded",resource="widgets0",verb="list"} 1"#), "{text}");
    assert!(!text.contains("bob"));
}

#[test]
fn keeps_the_engine_contract() {
    // Acknowledgements kept, every event out an object, a forked copy the same.
    let out = auditflow_testkit::compliance::check_transform_config::<crate::RbacDenialConfig>(
        serde_json::json!({}),
    );
    assert!(!out.is_empty());
}
