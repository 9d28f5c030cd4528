use super::*;
use auditflow_testkit::{event, run_transform};
use serde_json::json;

fn config(options: Value) -> Result<RedactConfig, String> {
    serde_json::from_value(options).map_err(|error| error.to_string())
}

fn redact_with(options: Value, id: &str) -> Box<dyn Transform> {
    config(options)
        .unwrap()
        .build(BuildContext::unobserved(id, "/nonexistent"))
        .unwrap()
}

/// Runs `redact` with `options` over one event; returns the output line.
fn run(options: Value, input: &str) -> String {
    let mut transform = redact_with(options, "test");
    let out = run_transform(transform.as_mut(), vec![event(input)]);
    String::from_utf8(out[0].to_json_bytes().to_vec()).unwrap()
}

const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJl";

#[test]
fn an_event_without_a_candidate_is_left_as_it_came() {
    let mut transform = redact_with(json!({}), "untouched");
    let events = auditflow_testkit::events::audit_log_events();
    let out = run_transform(transform.as_mut(), events.clone());
    for (before, after) in events.iter().zip(&out) {
        assert!(!after.is_modified(), "{after:?}");
        assert_eq!(before.raw(), after.raw());
    }
}

#[test]
fn a_candidate_field_without_a_secret_keeps_its_bytes() {
    // `data` of a ConfigMap is a candidate, `\u0041` (A) is a risky escape: both parsed,
    // neither changed.
    let input = r#"{"verb":"create","requestObject":{"kind":"ConfigMap","data":{"a":"1.50 \u0041"}},"n":1.50}"#;
    let out = run(json!({}), input);
    assert_eq!(out, input);
}

#[test]
fn only_the_field_with_a_secret_is_rewritten() {
    let input = format!(
        r#"{{"requestURI":"/a?b=1\u0026c=2","requestObject":{{"x":"Bearer {JWT}"}},"stageTimestamp":"2026-11-23T08:24:13.385958Z","annotations":{{"a":"b"}}}}"#
    );
    let out = run(json!({}), &input);
    assert_eq!(
        out,
        r#"{"requestURI":"/a?b=1\u0026c=2","requestObject":{"x":"Bearer [REDACTED]"},"stageTimestamp":"2026-11-23T08:24:13.385958Z","annotations":{"a":"b","auditflow.io/redacted":"bearer"}}"#
    );
}

#[test]
fn escaped_secrets_are_found() {
    // `\u0065yJ` is `eyJ`, `\/` is `/`: the raw bytes hold no marker as written.
    let escaped = JWT.replacen('e', "\\u0065", 1);
    let input = format!(r#"{{"userAgent":"{escaped}","requestURI":"https:\/\/u:pw@h\/x"}}"#);
    let out = run(json!({}), &input);
    assert_eq!(
        out,
        r#"{"userAgent":"[REDACTED]","requestURI":"https:\/\/u:[REDACTED]@h\/x","annotations":{"auditflow.io/redacted":"jwt,url_credentials"}}"#
    );
}

#[test]
fn detectors_switch_off_by_name() {
    let input = r#"{"msg":"join --token abcdef.0123456789abcdef"}"#;
    assert_eq!(
        run(json!({"detectors": {"bootstrap_token": false}}), input),
        input
    );
    assert_ne!(run(json!({}), input), input);
}

#[test]
fn unknown_detector_names_are_refused_with_the_valid_ones() {
    let error = config(json!({"detectors": {"jtw": false}})).unwrap_err();
    assert!(error.contains("unknown field `jtw`"), "{error}");
    assert!(
        error.contains("`jwt`") && error.contains("`url_credentials`"),
        "{error}"
    );
}

#[test]
fn hash_mode_needs_a_key() {
    let errors = config(json!({"mode": "hash"})).unwrap().validate();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field.as_deref(), Some("hash_key"));
    let errors = config(json!({"hash_key": "k"})).unwrap().validate();
    assert_eq!(errors[0].field.as_deref(), Some("hash_key"));
    assert!(config(json!({"mode": "hash", "hash_key": "k"}))
        .unwrap()
        .validate()
        .is_empty());
    let debug = format!(
        "{:?}",
        config(json!({"mode": "hash", "hash_key": "s3cret"})).unwrap()
    );
    assert!(!debug.contains("s3cret"), "{debug}");
}

#[test]
fn pattern_names_must_not_shadow_built_ins() {
    let errors = config(json!({"patterns": {"jwt": "x", "a,b": "y", "ok_name": "z"}}))
        .unwrap()
        .validate();
    let fields: Vec<_> = errors.iter().filter_map(|e| e.field.as_deref()).collect();
    assert_eq!(fields, ["patterns.a,b", "patterns.jwt"]);
}

#[test]
fn custom_patterns_replace_the_match_or_its_secret_group() {
    let options = json!({"patterns": {
        "stripe": "sk_live_[0-9a-zA-Z]{8,}",
        "query_password": "password=(?P<secret>[^&]+)",
        "anchored": "^internal-[0-9]+$",
    }});
    let input = r#"{"requestURI":"/x?password=pw1\u0026a=b","msg":"key sk_live_abcdef123 used","id":"internal-42","other":"internal-42 x"}"#;
    assert_eq!(
        run(options, input),
        r#"{"requestURI":"/x?password=[REDACTED]\u0026a=b","msg":"key [REDACTED] used","id":"[REDACTED]","other":"internal-42 x","annotations":{"auditflow.io/redacted":"anchored,query_password,stripe"}}"#
    );
}

#[test]
fn fields_are_always_redacted() {
    let options = json!({"fields": ["requestObject.spec.password", "responseObject.items.spec.pin", "user.extra"]});
    let input = r#"{"user":{"username":"a","extra":{"k":["v1","v2"]}},"requestObject":{"spec":{"password":"p","other":"o"}},"responseObject":{"items":[{"spec":{"pin":1234}},{"spec":{}}]}}"#;
    assert_eq!(
        run(options, input),
        r#"{"user":{"username":"a","extra":{"k":["[REDACTED]","[REDACTED]"]}},"requestObject":{"spec":{"password":"[REDACTED]","other":"o"}},"responseObject":{"items":[{"spec":{"pin":"[REDACTED]"}},{"spec":{}}]},"annotations":{"auditflow.io/redacted":"fields"}}"#
    );
}

#[test]
fn hash_mode_correlates_equal_secrets() {
    let options = json!({"mode": "hash", "hash_key": "k"});
    let input = format!(r#"{{"a":"{JWT}","b":{{"token":"{JWT}"}}}}"#);
    let out: Value = serde_json::from_str(&run(options, &input)).unwrap();
    let a = out["a"].as_str().unwrap();
    assert!(a.starts_with("hmac-sha256:") && a.len() == 28, "{a}");
    assert_eq!(out["b"]["token"], a);
}

#[test]
fn an_earlier_redaction_annotation_is_merged() {
    let input =
        r#"{"annotations":{"auditflow.io/redacted":"secret_data"},"msg":"Bearer abc123def"}"#;
    assert_eq!(
        run(json!({}), input),
        r#"{"annotations":{"auditflow.io/redacted":"bearer,secret_data"},"msg":"Bearer [REDACTED]"}"#
    );
}

#[test]
fn events_changed_upstream_are_checked_field_by_field() {
    let mut transform = redact_with(json!({}), "modified");
    let mut input = event(r#"{"verb":"get","requestURI":"/a\u0026b"}"#);
    input.insert(
        "responseObject",
        json!({"status": {"token": "t0ken-value"}}),
    );
    let out = run_transform(transform.as_mut(), vec![input]);
    assert_eq!(
        String::from_utf8(out[0].to_json_bytes().to_vec()).unwrap(),
        r#"{"verb":"get","requestURI":"/a\u0026b","responseObject":{"status":{"token":"[REDACTED]"}},"annotations":{"auditflow.io/redacted":"private_key"}}"#
    );
}

#[test]
fn a_repeated_key_leaves_no_copy_behind() {
    let input = format!(r#"{{"x":"{JWT}","v":1,"x":"Bearer {JWT}"}}"#);
    let out = run(json!({}), &input);
    assert!(!out.contains("eyJ"), "{out}");
    assert_eq!(
        out,
        r#"{"x":"Bearer [REDACTED]","v":1,"annotations":{"auditflow.io/redacted":"bearer"}}"#
    );
    // The secret in an earlier copy goes too, though no parser would show it.
    let input = r#"{"x":"Bearer abc123def456","v":1,"x":"ok"}"#;
    assert_eq!(run(json!({}), input), r#"{"x":"ok","v":1}"#);
}

#[test]
fn a_number_serde_cannot_hold_keeps_its_digits_beside_a_secret() {
    let input = format!(r#"{{"requestObject":{{"n":1e400,"token":"{JWT}"}},"verb":"get"}}"#);
    assert_eq!(
        run(json!({}), &input),
        r#"{"requestObject":{"n":1e400,"token":"[REDACTED]"},"verb":"get","annotations":{"auditflow.io/redacted":"private_key"}}"#
    );
}

#[test]
fn a_field_nested_too_deep_to_read_is_replaced_whole_and_counted_as_unparseable_field() {
    // Only a transform upstream could set such a field: the decoder refuses it. Run on a
    // stack as large as the runtime's threads have.
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(|| {
            let mut deep = json!("Bearer abc123def456");
            for _ in 0..10_001 {
                deep = json!([deep]);
            }
            let mut input = event(r#"{"verb":"get","requestObject":{},"responseObject":{}}"#);
            input.insert("requestObject", deep.clone());
            input.insert("responseObject", deep);
            let readable = event(r#"{"verb":"get","requestObject":{"h":"Bearer abc123def456"}}"#);
            let telemetry = Arc::new(auditflow_testkit::RecordingTelemetry::default());
            let mut transform = config(json!({}))
                .unwrap()
                .build(BuildContext {
 telemetry: Arc::clone(&telemetry) as Arc<dyn auditflow_core::Telemetry>,
 ..BuildContext::unobserved("deep", "/nonexistent")
 })
                .unwrap();
            let out = run_transform(transform.as_mut(), vec![input, readable]);
            assert_eq!(
                String::from_utf8(out[0].to_json_bytes().to_vec()).unwrap(),
                r#"{"verb":"get","requestObject":"[REDACTED]","responseObject":"[REDACTED]"}"#
            );
            assert_eq!(
                String::from_utf8(out[1].to_json_bytes().to_vec()).unwrap(),
                r#"{"verb":"get","requestObject":{"h":"Bearer [REDACTED]"},"annotations":{"auditflow.io/redacted":"bearer"}}"#
            );
            // Two unreadable fields of one event; the readable event counts nothing. The
            // build put the series at zero first.
            assert_eq!(
                telemetry.recorded().errored,
                [("unparseable_field", 0), ("unparseable_field", 2)]
            );
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn only_the_secret_characters_change_in_a_rewritten_field() {
    // Big and odd numbers, escapes and spacing around the secret keep their bytes.
    let input = r#"{"auditID":"c","verb":"patch","requestObject":{"n":123456789012345678901234567890,"m":1.50,"u":"a\u0026b","h":"Bearer abcdef123456"}}"#;
    assert_eq!(
        run(json!({}), input),
        r#"{"auditID":"c","verb":"patch","requestObject":{"n":123456789012345678901234567890,"m":1.50,"u":"a\u0026b","h":"Bearer [REDACTED]"},"annotations":{"auditflow.io/redacted":"bearer"}}"#
    );
    let input = r#"{"requestObject":{ "e" : -0.0E+2 , "s":"\u00e9\t\"q\" Bearer abc\u0031\u00322def456 \ud83d\ude00","t":"x"},"annotations":{"z":"a\u003cb","a":"1"}}"#;
    assert_eq!(
        run(json!({}), input),
        r#"{"requestObject":{ "e" : -0.0E+2 , "s":"\u00e9\t\"q\" Bearer [REDACTED] \ud83d\ude00","t":"x"},"annotations":{"z":"a\u003cb","a":"1","auditflow.io/redacted":"bearer"}}"#
    );
}

const W1: &str = r#"{"auditID":"w1","verb":"create","objectRef":{"resource":"pods","namespace":"shop","name":"api"},"requestObject":{"kind":"Pod","spec":{"containers":[{"name":"api","env":[{"name":"DB_PASSWORD","value":"hunter2-prod"},{"name":"LOG_LEVEL","value":"debug"}],"args":["--api-key=sk_live_4eC39HqLyjWDarjtT1zdp7dc","--port=8080"]}]}}}"#;
const W2: &str = r#"{"auditID":"w2","verb":"patch","objectRef":{"resource":"deployments","apiGroup":"apps","namespace":"ci","name":"runner"},"requestObject":{"spec":{"template":{"spec":{"containers":[{"name":"r","command":["runner","--github-token","ghp_0123456789abcdefABCDEF0123456789abcd"],"env":[{"name":"AWS_ACCESS_KEY_ID","value":"AKIAIOSFODNN7EXAMPLE"},{"name":"AWS_SECRET_ACCESS_KEY","value":"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}]}]}}}}}"#;

#[test]
fn credentials_in_workload_specs_are_redacted() {
    assert_eq!(
        run(json!({}), W1),
        r#"{"auditID":"w1","verb":"create","objectRef":{"resource":"pods","namespace":"shop","name":"api"},"requestObject":{"kind":"Pod","spec":{"containers":[{"name":"api","env":[{"name":"DB_PASSWORD","value":"[REDACTED]"},{"name":"LOG_LEVEL","value":"debug"}],"args":["--api-key=[REDACTED]","--port=8080"]}]}},"annotations":{"auditflow.io/redacted":"cli_secret,env_secret"}}"#
    );
    assert_eq!(
        run(json!({}), W2),
        r#"{"auditID":"w2","verb":"patch","objectRef":{"resource":"deployments","apiGroup":"apps","namespace":"ci","name":"runner"},"requestObject":{"spec":{"template":{"spec":{"containers":[{"name":"r","command":["runner","--github-token","[REDACTED]"],"env":[{"name":"AWS_ACCESS_KEY_ID","value":"[REDACTED]"},{"name":"AWS_SECRET_ACCESS_KEY","value":"[REDACTED]"}]}]}}}},"annotations":{"auditflow.io/redacted":"cli_secret,env_secret,known_tokens"}}"#
    );
}

#[test]
fn each_new_detector_switches_off_by_name() {
    let out = run(json!({"detectors": {"env_secret": false}}), W1);
    assert!(out.contains(r#""value":"hunter2-prod""#), "{out}");
    assert!(out.contains(r#""--api-key=[REDACTED]""#), "{out}");
    let out = run(json!({"detectors": {"cli_secret": false}}), W1);
    assert!(out.contains(r#""value":"[REDACTED]""#), "{out}");
    // The key still matches a known format.
    assert!(out.contains(r#""--api-key=[REDACTED]""#), "{out}");
    assert!(out.contains("env_secret,known_tokens"), "{out}");
    let out = run(
        json!({"detectors": {"cli_secret": false, "known_tokens": false}}),
        W1,
    );
    assert!(out.contains("sk_live_4eC39HqLyjWDarjtT1zdp7dc"), "{out}");
    let out = run(json!({"detectors": {"known_tokens": false}}), W2);
    assert!(out.contains(r#""value":"AKIAIOSFODNN7EXAMPLE""#), "{out}");
}

#[test]
fn value_from_and_names_that_only_contain_a_word_are_left_alone() {
    let input = r#"{"requestObject":{"kind":"Pod","spec":{"containers":[{"name":"a","env":[{"name":"DB_PASSWORD","valueFrom":{"secretKeyRef":{"name":"db","key":"password"}}},{"name":"AUTHOR","value":"jane"},{"name":"TOKENIZER_MODE","value":"fast"},{"name":"TOKEN_TTL","value":"3600"},{"name":"FEATURE_AUTH","value":"true"},{"name":"CHECKSUM","value":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}],"args":["--token-ttl=3600","--anonymous-auth=false","--authorization-mode=Node,RBAC","--digest","sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]}]}}}"#;
    assert_eq!(run(json!({}), input), input);
}

#[test]
fn flags_in_shell_strings_and_as_separate_arguments_are_redacted() {
    let input = r#"{"requestObject":{"kind":"Job","spec":{"template":{"spec":{"containers":[{"name":"m","command":["sh","-c","migrate --db-password='p w' --port 5432 \u0026\u0026 curl --token abc123 x"],"args":["--password","s3cr3t","--verbose","--client-secret=\"x y\""]}]}}}}}"#;
    assert_eq!(
        run(json!({}), input),
        r#"{"requestObject":{"kind":"Job","spec":{"template":{"spec":{"containers":[{"name":"m","command":["sh","-c","migrate --db-password='[REDACTED]' --port 5432 \u0026\u0026 curl --token [REDACTED] x"],"args":["--password","[REDACTED]","--verbose","--client-secret=[REDACTED]"]}]}}}},"annotations":{"auditflow.io/redacted":"cli_secret"}}"#
    );
}

#[test]
fn env_values_are_redacted_through_a_json_patch() {
    let input = r#"{"verb":"patch","objectRef":{"resource":"deployments","apiGroup":"apps"},"requestObject":[{"op":"replace","path":"/spec/template/spec/containers/0/env/0/value","value":"n3w-pass"},{"op":"add","path":"/spec/template/spec/containers/0/env/-","value":{"name":"API_TOKEN","value":"t0k"}},{"op":"replace","path":"/spec/template/spec/containers/0/args/1","value":"--token=abc"},{"op":"replace","path":"/spec/replicas","value":3}]}"#;
    assert_eq!(
        run(json!({}), input),
        r#"{"verb":"patch","objectRef":{"resource":"deployments","apiGroup":"apps"},"requestObject":[{"op":"replace","path":"/spec/template/spec/containers/0/env/0/value","value":"[REDACTED]"},{"op":"add","path":"/spec/template/spec/containers/0/env/-","value":{"name":"API_TOKEN","value":"[REDACTED]"}},{"op":"replace","path":"/spec/template/spec/containers/0/args/1","value":"--token=[REDACTED]"},{"op":"replace","path":"/spec/replicas","value":3}],"annotations":{"auditflow.io/redacted":"cli_secret,env_secret"}}"#
    );
}

#[test]
fn the_new_detectors_work_inside_last_applied_configuration() {
    let manifest = r#"{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"spec\":{\"containers\":[{\"args\":[\"--api-key=k3y\"],\"env\":[{\"name\":\"DB_PASSWORD\",\"value\":\"p\\u0026w\"}],\"name\":\"a\u003cb\"}]}}\n"#;
    let input = format!(
        r#"{{"requestObject":{{"metadata":{{"annotations":{{"kubectl.kubernetes.io/last-applied-configuration":"{manifest}"}}}}}}}}"#
    );
    let expected_manifest = manifest
        .replace("--api-key=k3y", "--api-key=[REDACTED]")
        .replace(r#"\"p\\u0026w\""#, r#"\"[REDACTED]\""#);
    assert_eq!(
        run(json!({}), &input),
        format!(
            r#"{{"requestObject":{{"metadata":{{"annotations":{{"kubectl.kubernetes.io/last-applied-configuration":"{expected_manifest}"}}}}}},"annotations":{{"auditflow.io/redacted":"cli_secret,env_secret"}}}}"#
        )
    );
}

#[test]
fn credential_names_are_configurable() {
    let input = r#"{"requestObject":{"spec":{"containers":[{"env":[{"name":"APP_PIN","value":"1234"},{"name":"DB_PASSWORD","value":"x"}]}]}}}"#;
    let out = run(json!({"credential_names": {"last_words": ["pin"]}}), input);
    assert_eq!(
        out,
        r#"{"requestObject":{"spec":{"containers":[{"env":[{"name":"APP_PIN","value":"[REDACTED]"},{"name":"DB_PASSWORD","value":"x"}]}]}},"annotations":{"auditflow.io/redacted":"env_secret"}}"#
    );
    let errors = config(json!({"credential_names": {"endings": ["api key", "ok_word"]}}))
        .unwrap()
        .validate();
    let fields: Vec<_> = errors.iter().filter_map(|e| e.field.as_deref()).collect();
    assert_eq!(fields, ["credential_names.endings[0]"]);
}

#[test]
fn redactions_are_counted_per_detector() {
    let metrics = auditflow_metrics::Metrics::new();
    let cx = BuildContext::new(
        &metrics,
        auditflow_core::ComponentKind::Transform,
        "redact",
        "counted",
        "/nonexistent".into(),
    );
    let mut transform = config(json!({})).unwrap().build(cx).unwrap();
    let input = format!(r#"{{"a":"{JWT} and Bearer x1y2z3w4","b":"{JWT}"}}"#);
    run_transform(transform.as_mut(), vec![event(&input), event(&input)]);
    let text = String::from_utf8(metrics.render()).unwrap();
    let count = |detector: &str| {
        let line = format!(
            r#"auditflow_redactions_total{{component_id="counted",detector="{detector}"}} "#
        );
        text.lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .unwrap_or_else(|| panic!("no {line} in\n{text}"))
            .parse::<u64>()
            .unwrap()
    };
    // Every detector's series exists from the build, at 0 for those that found nothing.
    assert_eq!(
        (count("jwt"), count("bearer"), count("secret_data")),
        (4, 2, 0)
    );
}

#[test]
fn keeps_the_engine_contract() {
    // Acknowledgements kept, every event out an object, a forked copy the same.
    let out = auditflow_testkit::compliance::check_transform_config::<crate::RedactConfig>(
        serde_json::json!({}),
    );
    assert!(!out.is_empty());
}

/// Four patterns of `\w{100}` (a Unicode class repeated) each compile alone, under the
/// regex size limit, but not together: the prefilter's set panicked when the transform
/// was built, after `validate` had passed.
#[test]
fn regex_set_past_the_size_limit_is_a_validate_error() {
    let patterns: serde_json::Map<String, Value> = ["a", "b", "c", "d"]
        .into_iter()
        .map(|name| {
            (
                format!("long_word_{name}"),
                json!(format!("{name}=\\w{{100}}")),
            )
        })
        .collect();
    let config = config(json!({ "patterns": patterns })).expect("each pattern compiles alone");
    let errors = config.validate();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field.as_deref(), Some("patterns"));
    assert!(
        errors[0]
            .message
            .starts_with("the patterns together compile past the regex size limit of 10 MiB: use fewer or smaller patterns"),
        "{}",
        errors[0].message
    );
    let cx = BuildContext::unobserved("too_big", "/nonexistent");
    let built = config.build(cx);
    assert_eq!(built.err(), Some(errors[0].clone()));

    // Other problems are reported beside it.
    let mut options = json!({ "patterns": patterns, "mode": "hash" });
    options["patterns"]["jwt"] = json!("x");
    let fields: Vec<Option<String>> = self::config(options)
        .unwrap()
        .validate()
        .into_iter()
        .map(|error| error.field)
        .collect();
    assert_eq!(
        fields,
        [
            Some("hash_key".to_owned()),
            Some("patterns.jwt".to_owned()),
            Some("patterns".to_owned())
        ]
    );
}
