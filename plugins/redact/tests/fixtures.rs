//! `redact` over real-shaped TokenReview, TokenRequest and Secret create / list / update /
//! patch events (tests/fixtures/secret-bearing.log, made by generate.py beside it in the
//! shape of the kube-apiserver 1.32 capture), and over the capture itself.

use auditflow_core::{BuildContext, Event, Transform, TransformConfig};
use auditflow_redact::RedactConfig;
use auditflow_testkit::{event, run_transform};
use base64::Engine;
use serde_json::{json, Value};

const FIXTURES: &str = include_str!("fixtures/secret-bearing.log");

fn redact(options: Value) -> Box<dyn Transform> {
    let config: RedactConfig = serde_json::from_value(options).unwrap();
    config
        .build(BuildContext::unobserved("fixtures", "/nonexistent"))
        .unwrap()
}

fn fixture_events() -> Vec<Event> {
    FIXTURES.lines().map(event).collect()
}

fn text(event: &Event) -> String {
    String::from_utf8(event.to_json_bytes().to_vec()).unwrap()
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Every secret the fixtures carry, as written in the input.
fn planted_secrets(events: &[Event]) -> Vec<String> {
    let tokens = [
        events[0].get_path(["requestObject", "spec"]).unwrap()["token"].clone(),
        events[1].get_path(["responseObject", "status"]).unwrap()["token"].clone(),
    ];
    let mut secrets: Vec<String> = tokens
        .iter()
        .map(|token| token.as_str().unwrap().to_owned())
        .collect();
    // The JWT signatures alone, in case a token were only partly replaced.
    secrets.extend(
        secrets
            .clone()
            .iter()
            .map(|t| t.rsplit('.').next().unwrap().to_owned()),
    );
    for plain in [
        "hunter2-prod-db",
        "hunter3-prod-db",
        "hunter4-prod-db",
        "app",
    ] {
        secrets.push(b64(plain));
    }
    secrets.push("hunter5-prod-db".into());
    secrets.push("sk_live_51HqLyjWDarjtT1zdp7dc".into());
    secrets.push(b64("sk_live_51HqLyjWDarjtT1zdp7dc"));
    for item in events[3]
        .get_path(["responseObject", "items"])
        .unwrap()
        .as_array()
        .unwrap()
    {
        for value in item["data"].as_object().unwrap().values() {
            secrets.push(value.as_str().unwrap().to_owned());
        }
    }
    secrets.extend(
        [
            "07401b.f395accd246ae52d",
            "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tCk1JSUV2UUlCQURBTkJna3Foa2lHOXcwQkFRRUZBQVND",
            "Zm9vYmFy",
            "8f14e45fceea167a5a36dedd4bea2543",
        ]
        .map(String::from),
    );
    secrets
}

#[test]
fn no_planted_secret_survives_and_everything_else_is_kept() {
    let input = fixture_events();
    let secrets = planted_secrets(&input);
    for secret in &secrets {
        assert!(
            FIXTURES.contains(secret.as_str()),
            "not in the fixtures: {secret}"
        );
    }
    let mut transform = redact(json!({}));
    let output = run_transform(transform.as_mut(), input.clone());
    assert_eq!(output.len(), input.len());

    let expected_annotations = [
        "token_review",
        "token_request",
        "secret_data",
        "secret_data",
        "secret_data",
        "secret_data",
        "secret_data",
        "bearer,private_key,url_credentials",
    ];
    for ((before, after), expected) in input.iter().zip(&output).zip(expected_annotations) {
        let written = text(after);
        for secret in &secrets {
            assert!(
                !written.contains(secret.as_str()),
                "{secret} survived in {written}"
            );
            let escaped = serde_json::to_string(secret).unwrap();
            assert!(!written.contains(&escaped[1..escaped.len() - 1]));
        }
        let reparsed = event(&written);
        assert_eq!(
            reparsed.get_path(["annotations", "auditflow.io/redacted"]),
            Some(&json!(expected)),
            "{written}"
        );
        // Same top-level fields in the same order; all but the bodies and annotations
        // byte for byte.
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            reparsed.keys().collect::<Vec<_>>()
        );
        for key in before.keys() {
            if !["requestObject", "responseObject", "annotations"].contains(&key) {
                assert_eq!(before.raw_field(key), reparsed.raw_field(key), "{key}");
            }
        }
        same_shape(&before.to_value(), &reparsed.to_value(), "");
    }
}

/// Same keys and array lengths everywhere; a changed string is a redaction.
fn same_shape(before: &Value, after: &Value, at: &str) {
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            let keys_a: Vec<_> = a.keys().collect();
            let keys_b: Vec<_> = b.keys().filter(|k| *k != "auditflow.io/redacted").collect();
            assert_eq!(keys_a, keys_b, "at {at}");
            for (key, value) in a {
                same_shape(value, &b[key], &format!("{at}.{key}"));
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "at {at}");
            for (index, (x, y)) in a.iter().zip(b).enumerate() {
                same_shape(x, y, &format!("{at}[{index}]"));
            }
        }
        (Value::String(a), Value::String(b)) if a != b => {
            let embedded = at.ends_with("last-applied-configuration");
            assert!(b.contains("[REDACTED]"), "at {at}: {a:?} became {b:?}");
            assert!(embedded || b.len() < a.len() + 10, "at {at}");
        }
        (a, b) => assert_eq!(a, b, "at {at}"),
    }
}

#[test]
fn each_secret_lands_where_a_user_expects() {
    let mut transform = redact(json!({}));
    let out = run_transform(transform.as_mut(), fixture_events());
    let value = |index: usize, path: &[&str]| -> Value {
        let mut value = out[index].get(path[0]).unwrap().clone();
        for key in &path[1..] {
            value = match value {
                Value::Array(items) => items[key.parse::<usize>().unwrap()].clone(),
                value => value[*key].clone(),
            };
        }
        value
    };
    assert_eq!(value(0, &["requestObject", "spec", "token"]), "[REDACTED]");
    assert_eq!(value(0, &["responseObject", "spec", "token"]), "[REDACTED]");
    assert_eq!(
        value(0, &["responseObject", "status", "user", "username"]),
        "system:serviceaccount:team-a:builder"
    );
    // The request's empty token stays empty; the response's is replaced.
    assert_eq!(value(1, &["requestObject", "status", "token"]), "");
    assert_eq!(
        value(1, &["responseObject", "status", "token"]),
        "[REDACTED]"
    );
    assert_eq!(
        value(1, &["responseObject", "status", "expirationTimestamp"]),
        "2026-11-23T09:31:39Z"
    );
    // Secret create: data and stringData by key, and the manifest kubectl embedded.
    assert_eq!(
        value(2, &["requestObject", "data"]),
        json!({"password": "[REDACTED]", "username": "[REDACTED]"})
    );
    assert_eq!(
        value(2, &["requestObject", "stringData", "api-key"]),
        "[REDACTED]"
    );
    let applied = value(
        2,
        &[
            "requestObject",
            "metadata",
            "annotations",
            "kubectl.kubernetes.io/last-applied-configuration",
        ],
    );
    let applied = applied.as_str().unwrap();
    assert!(applied.ends_with("}\n"), "{applied:?}");
    let applied: Value = serde_json::from_str(applied).unwrap();
    assert_eq!(applied["data"]["password"], "[REDACTED]");
    assert_eq!(applied["metadata"]["name"], "db-credentials");
    // SecretList items, update, JSON patch, strategic merge patch.
    assert_eq!(
        value(3, &["responseObject", "items", "2", "data", "tls.key"]),
        "[REDACTED]"
    );
    assert_eq!(
        value(3, &["responseObject", "items", "2", "metadata", "name"]),
        "s2"
    );
    assert_eq!(
        value(4, &["requestObject", "data", "password"]),
        "[REDACTED]"
    );
    assert_eq!(value(5, &["requestObject", "0", "value"]), "[REDACTED]");
    assert_eq!(
        value(5, &["requestObject", "1", "value"]),
        json!({"rotated": "true"})
    );
    assert_eq!(
        value(6, &["requestObject", "stringData", "password"]),
        "[REDACTED]"
    );
    // The kubeconfig in a ConfigMap: only the credentials.
    let kubeconfig = value(7, &["requestObject", "data", "kubeconfig"]);
    assert_eq!(
        kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    server: https://10.0.0.1:6443\n  name: prod\nusers:\n- name: ci\n  user:\n    token: [REDACTED]\n    client-key-data: [REDACTED]\n"
    );
    assert_eq!(
        value(7, &["requestObject", "data", "registry"]),
        "harbor.example.com"
    );
    assert_eq!(
        value(
            7,
            &[
                "requestObject",
                "metadata",
                "annotations",
                "ci.example.com/auth"
            ]
        ),
        "Authorization: Bearer [REDACTED]"
    );
}

#[test]
fn hash_mode_gives_the_documented_keyed_digest() {
    use hmac::{Hmac, Mac};
    let mut transform = redact(json!({"mode": "hash", "hash_key": "correlate-me"}));
    let input = fixture_events();
    let token = input[0].get_path(["requestObject", "spec"]).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = run_transform(transform.as_mut(), input);
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"correlate-me").unwrap();
    mac.update(token.as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let expected = json!(format!("hmac-sha256:{hex}"));
    assert_eq!(
        out[0].get_path(["requestObject", "spec"]).unwrap()["token"],
        expected
    );
    assert_eq!(
        out[0].get_path(["responseObject", "spec"]).unwrap()["token"],
        expected
    );
}

#[test]
fn the_capture_passes_through_byte_for_byte() {
    let mut transform = redact(json!({}));
    let mut events = auditflow_testkit::events::audit_log_events();
    events.extend(
        serde_json::from_str::<Value>(auditflow_testkit::events::WEBHOOK_EVENT_LIST).unwrap()
            ["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| event(&item.to_string())),
    );
    let out = run_transform(transform.as_mut(), events.clone());
    for (before, after) in events.iter().zip(&out) {
        assert!(!after.is_modified());
        assert_eq!(before.to_json_bytes(), after.to_json_bytes());
    }
}
