//! Conditions evaluated over the real capture (kube-apiserver 1.32, 245 events).

use auditflow_core::condition::Condition;
use auditflow_core::Event;
use auditflow_testkit::events::audit_log_events;

fn count(condition: &str) -> usize {
    let condition = Condition::parse(condition).unwrap_or_else(|e| panic!("{condition}: {e}"));
    audit_log_events()
        .iter()
        .filter(|event| condition.matches(event))
        .count()
}

/// The same question asked of the fully parsed event, as the reference.
fn count_by(f: impl Fn(&serde_json::Value) -> bool) -> usize {
    audit_log_events()
        .iter()
        .map(Event::to_value)
        .filter(|value| f(value))
        .count()
}

#[test]
fn status_codes_compare_numerically() {
    assert_eq!(count("responseStatus.code >= 400"), 16);
    assert_eq!(
        count("responseStatus.code >= 400"),
        count_by(|e| e["responseStatus"]["code"]
            .as_u64()
            .is_some_and(|c| c >= 400))
    );
    assert_eq!(count("responseStatus.code == 500"), 12);
    assert_eq!(count("responseStatus.code != 200"), 16);
}

#[test]
fn the_rbac_denial_is_found_by_its_quoted_annotation() {
    let condition = r#"annotations."authorization.k8s.io/decision" == "forbid" and objectRef.resource == "secrets" and not objectRef.namespace exists"#;
    assert_eq!(count(condition), 1);
    assert_eq!(
        count(r#"annotations."authorization.k8s.io/decision" == "allow""#),
        244
    );
}

#[test]
fn verbs_lists_and_regexes() {
    assert_eq!(count(r#"verb in ["watch", "list"]"#), 96);
    assert_eq!(
        count(r#"verb in ["watch", "list"]"#),
        count_by(|e| e["verb"] == "watch" || e["verb"] == "list")
    );
    assert_eq!(
        count(r#"userAgent matches "^kubectl/""#),
        count_by(|e| e["userAgent"]
            .as_str()
            .is_some_and(|a| a.starts_with("kubectl/")))
    );
}

#[test]
fn group_membership_matches_any_element() {
    let masters = count(r#"user.groups == "system:masters""#);
    assert_eq!(
        masters,
        count_by(|e| e["user"]["groups"]
            .as_array()
            .is_some_and(|groups| groups.iter().any(|g| g == "system:masters")))
    );
    assert!(masters > 0 && masters < 245);
    assert_eq!(
        count(r#"user.groups == "qa-team""#),
        count(r#"user.username == "bob""#)
    );
}
