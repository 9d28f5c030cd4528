//! Property: plant any kind of secret anywhere in a real audit event (request and response
//! bodies, lists, annotations, strings inside strings, written with JSON escapes or not)
//! and none of it survives `redact`, while every string that held no secret comes out
//! unchanged and every top-level field without one keeps its bytes.

use auditflow_core::{BuildContext, Event, Transform, TransformConfig};
use auditflow_redact::RedactConfig;
use auditflow_testkit::{event, run_transform};
use base64::Engine;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Map, Value};

/// The key every planted carrier sits under (or starts with).
const PLANTED: &str = "planted";

#[derive(Debug, Clone)]
enum Kind {
    Jwt,
    Bearer,
    Basic,
    BootstrapToken,
    Pem,
    UrlCredentials,
    KubeconfigYaml,
    TokenKey,
    ClientKeyData,
    SecretData,
    SecretList,
    TokenReview,
    TokenRequest,
    LastApplied,
}

/// One planted secret: the value to insert, and the strings that must not survive.
#[derive(Debug, Clone)]
struct Plant {
    carrier: Value,
    secrets: Vec<String>,
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn secret_object(values: &[String]) -> Value {
    let data: Map<String, Value> = values
        .iter()
        .enumerate()
        .map(|(i, value)| (format!("key-{i}"), json!(b64(value))))
        .collect();
    json!({
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": {"name": "s", "namespace": "legacy-app"},
        "data": data,
        "stringData": {"plain": values[0]},
        "type": "Opaque",
    })
}

fn plant(kind: &Kind, material: &[String], prefix: &str, suffix: &str) -> Plant {
    let m = &material[0];
    let in_text = |secret: String, text: String| Plant {
        carrier: json!(format!("{prefix}{text}{suffix}")),
        secrets: vec![secret],
    };
    match kind {
        Kind::Jwt => {
            let jwt = format!("eyJhbGciOiJSUzI1NiJ9.{m}.{}", material[1]);
            in_text(jwt.clone(), jwt)
        }
        Kind::Bearer => in_text(format!("{m}9"), format!("Authorization: Bearer {m}9")),
        Kind::Basic => {
            let credentials = b64(&format!("user:{m}"));
            in_text(credentials.clone(), format!("Basic {credentials}"))
        }
        Kind::BootstrapToken => {
            let lower = m.to_ascii_lowercase();
            let token = format!("{}.{}", &lower[..6], &lower[6..22]);
            in_text(
                token.clone(),
                format!("kubeadm join --token {token} --discovery"),
            )
        }
        Kind::Pem => {
            let body = format!("MII{m}\n{}", material[1]);
            Plant {
                carrier: json!(format!(
                    "{prefix}-----BEGIN EC PRIVATE KEY-----\n{body}\n-----END EC PRIVATE KEY-----\n{suffix}"
                )),
                secrets: vec![format!("MII{m}"), material[1].clone()],
            }
        }
        Kind::UrlCredentials => in_text(
            format!("{m}%40x"),
            format!("https://deploy:{m}%40x@git.example.com/repo.git"),
        ),
        Kind::KubeconfigYaml => in_text(
            m.clone(),
            format!("apiVersion: v1\nusers:\n- name: ci\n  user:\n    token: {m}\n"),
        ),
        Kind::TokenKey => Plant {
            carrier: json!({"user": {"token": m}, "name": "ci"}),
            secrets: vec![m.clone()],
        },
        Kind::ClientKeyData => Plant {
            carrier: json!({"users": [{"user": {"client-key-data": b64(m)}}]}),
            secrets: vec![b64(m)],
        },
        Kind::SecretData => Plant {
            carrier: secret_object(material),
            secrets: material.iter().flat_map(|v| [v.clone(), b64(v)]).collect(),
        },
        Kind::SecretList => Plant {
            carrier: json!({
                "kind": "SecretList",
                "apiVersion": "v1",
                "items": [{"metadata": {"name": "a"}, "data": {"k": b64(m)}},
                          {"metadata": {"name": "b"}, "stringData": {"k": material[1]}}],
            }),
            secrets: vec![b64(m), material[1].clone()],
        },
        Kind::TokenReview => Plant {
            carrier: json!({
                "kind": "TokenReview",
                "apiVersion": "authentication.k8s.io/v1",
                "spec": {"token": m},
                "status": {"user": {}},
            }),
            secrets: vec![m.clone()],
        },
        Kind::TokenRequest => Plant {
            carrier: json!({
                "kind": "TokenRequest",
                "apiVersion": "authentication.k8s.io/v1",
                "spec": {"expirationSeconds": 3600},
                "status": {"token": m, "expirationTimestamp": "2026-11-23T09:31:39Z"},
            }),
            secrets: vec![m.clone()],
        },
        Kind::LastApplied => {
            let manifest = secret_object(material).to_string() + "\n";
            Plant {
                carrier: json!({
                    "kind": "Secret",
                    "apiVersion": "v1",
                    "metadata": {"name": "s", "annotations": {
                        "kubectl.kubernetes.io/last-applied-configuration": manifest,
                    }},
                }),
                secrets: material.iter().flat_map(|v| [v.clone(), b64(v)]).collect(),
            }
        }
    }
}

fn kinds() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Jwt),
        Just(Kind::Bearer),
        Just(Kind::Basic),
        Just(Kind::BootstrapToken),
        Just(Kind::Pem),
        Just(Kind::UrlCredentials),
        Just(Kind::KubeconfigYaml),
        Just(Kind::TokenKey),
        Just(Kind::ClientKeyData),
        Just(Kind::SecretData),
        Just(Kind::SecretList),
        Just(Kind::TokenReview),
        Just(Kind::TokenRequest),
        Just(Kind::LastApplied),
    ]
}

/// Text around a secret inside a string; each side ends on a non-word character, as
/// secrets are delimited in real text.
fn affixes() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("msg: ".to_owned()),
        Just("\n".to_owned()),
        Just(" (12µs) ".to_owned()),
        Just(" a&b<c> ".to_owned()),
        Just("\"quoted\" ".to_owned()),
        Just("\u{2028}".to_owned()),
    ]
}

/// Where to put the carrier: the path to every object and array in the event.
fn containers(value: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match value {
        Value::Object(map) => {
            out.push(at.clone());
            for (key, child) in map {
                at.push(key.clone());
                containers(child, at, out);
                at.pop();
            }
        }
        Value::Array(items) => {
            out.push(at.clone());
            for (index, item) in items.iter().enumerate() {
                at.push(index.to_string());
                containers(item, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn place(event: &mut Value, path: &[String], carrier: Value) {
    let mut target = event;
    for seg in path {
        target = match target {
            Value::Object(map) => &mut map[seg.as_str()],
            Value::Array(items) => &mut items[seg.parse::<usize>().unwrap()],
            _ => unreachable!(),
        };
    }
    match target {
        Value::Object(map) => {
            map.insert(PLANTED.to_owned(), carrier);
        }
        Value::Array(items) => items.push(json!({ PLANTED: carrier })),
        _ => unreachable!(),
    }
}

/// Every string leaf not under a planted key, by path.
fn strings(value: &Value, at: String, out: &mut Vec<(String, String)>) {
    match value {
        Value::String(text) => out.push((at, text.clone())),
        Value::Object(map) => {
            for (key, child) in map {
                if !key.starts_with(PLANTED) {
                    let key = key.replace('~', "~0").replace('/', "~1");
                    strings(child, format!("{at}/{key}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                strings(item, format!("{at}/{index}"), out);
            }
        }
        _ => {}
    }
}

fn redact() -> Box<dyn Transform> {
    let config: RedactConfig = serde_json::from_value(json!({})).unwrap();
    config
        .build(BuildContext::unobserved("leaks", "/nonexistent"))
        .unwrap()
}

fn written(event: &Event) -> String {
    String::from_utf8(event.to_json_bytes().to_vec()).unwrap()
}

/// Writes `text` with the character at `at` (or the first `/`) as a JSON escape.
fn escape_one(text: &str, at: usize, slash: bool) -> String {
    if slash && text.contains('/') {
        return text.replacen('/', "\\/", 1);
    }
    let at = at % text.len();
    let c = text.as_bytes()[at];
    format!("{}\\u{:04x}{}", &text[..at], c, &text[at + 1..])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn no_planted_secret_survives(
        base in any::<Index>(),
        kind in kinds(),
        material in proptest::collection::vec("[A-Za-z0-9]{24,40}", 3),
        prefix in affixes(),
        suffix in affixes(),
        where_ in any::<Index>(),
        depth in 0usize..4,
        in_list in any::<bool>(),
        nest_in_string in any::<bool>(),
        escape in proptest::option::of((any::<usize>(), any::<bool>())),
    ) {
        let corpus = auditflow_testkit::events::audit_log_events();
        let mut value = corpus[base.index(corpus.len())].to_value();
        let Plant { mut carrier, secrets } = plant(&kind, &material, &prefix, &suffix);
        if nest_in_string && carrier.is_string() {
            // A string holding JSON that holds the secret.
            carrier = json!(json!({"inner": carrier}).to_string());
        }
        for level in 0..depth {
            carrier = match in_list && level == 0 {
                true => json!(["x", carrier]),
                false => json!({ format!("{PLANTED}{level}"): carrier }),
            };
        }
        let mut places = Vec::new();
        containers(&value, &mut Vec::new(), &mut places);
        let path = places[where_.index(places.len())].clone();
        place(&mut value, &path, carrier);

        // Written as kube-apiserver writes: Go's HTML-safe escapes.
        let mut line = value.to_string().replace('&', "\\u0026").replace('<', "\\u003c");
        let mut forms: Vec<String> = Vec::new();
        for secret in &secrets {
            let escaped = serde_json::to_string(secret).unwrap();
            forms.push(secret.clone());
            forms.push(escaped[1..escaped.len() - 1].to_owned());
        }
        if let Some((at, slash)) = escape {
            for secret in &secrets {
                if line.contains(secret.as_str()) {
                    let variant = escape_one(secret, at, slash);
                    line = line.replace(secret.as_str(), &variant);
                    forms.push(variant);
                }
            }
        }
        let input = event(&line);
        let out = run_transform(redact().as_mut(), vec![input.clone()]);
        let output = written(&out[0]);

        for form in &forms {
            prop_assert!(!output.contains(form.as_str()), "{form} survived ({kind:?}) in {output}");
        }
        prop_assert!(serde_json::from_str::<Value>(&output).is_ok());
        let reparsed = event(&output);
        let mut before = Vec::new();
        strings(&input.to_value(), String::new(), &mut before);
        let after = reparsed.to_value();
        for (path, text) in &before {
            prop_assert_eq!(after.pointer(path).and_then(Value::as_str), Some(text.as_str()), "{}", path);
        }
        let planted_top = path.first().map_or(PLANTED, String::as_str);
        for key in input.keys() {
            if key != planted_top && key != "annotations" {
                prop_assert_eq!(input.raw_field(key), reparsed.raw_field(key), "{}", key);
            }
        }
        prop_assert!(reparsed.get_path(["annotations", "auditflow.io/redacted"]).is_some());
    }
}
