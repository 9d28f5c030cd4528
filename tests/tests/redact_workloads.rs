//! `redact` in the real binary over credentials in workload specs: stdin → redact →
//! stdout, asserting the exact output bytes. Every workload kind, a JSON patch, a shell
//! string, false-positive guards, and a field whose neighbours must keep their bytes.

use std::io::{Read, Write};
use std::time::Duration;

use auditflow_e2e::{Auditflow, Workspace};

/// Runs `stdin → redact → stdout` over `input` (closing stdin) and returns stdout.
fn redact(input: &str) -> String {
    let workspace = Workspace::new();
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            "data_dir: {}\n\
             sources:\n  in:\n    type: stdin\n\
             transforms:\n  scrub:\n    type: redact\n    inputs: [in]\n\
             sinks:\n  out:\n    type: stdout\n    inputs: [scrub]\n",
            workspace.path().join("data").display()
        ),
    );
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let mut stdout = auditflow.child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).expect("read stdout");
        out
    });
    let mut stdin = auditflow.take_stdin();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    let status = auditflow.wait_timeout(Duration::from_secs(30));
    assert!(status.success(), "stderr:\n{}", auditflow.stderr());
    reader.join().unwrap()
}

const ANNOTATED: &str = r#","annotations":{"auditflow.io/redacted":"#;

/// The container every workload below carries, and what it becomes.
const CONTAINER: &str = r#"{"name":"api","env":[{"name":"DB_PASSWORD","value":"hunter2-prod"},{"name":"LOG_LEVEL","value":"debug"}],"args":["--api-key=sk_live_4eC39HqLyjWDarjtT1zdp7dc","--port=8080"]}"#;
const REDACTED_CONTAINER: &str = r#"{"name":"api","env":[{"name":"DB_PASSWORD","value":"[REDACTED]"},{"name":"LOG_LEVEL","value":"debug"}],"args":["--api-key=[REDACTED]","--port=8080"]}"#;

#[test]
fn credentials_in_every_workload_kind_are_redacted_and_nothing_else_changes() {
    let pod_spec = |containers: &str| format!(r#"{{"containers":[{containers}]}}"#);
    let template =
        |containers: &str| format!(r#"{{"template":{{"spec":{}}}}}"#, pod_spec(containers));
    let bodies = |c: &str| -> Vec<(&'static str, String)> {
        vec![
            (
                "pods",
                format!(
                    r#"{{"kind":"Pod","apiVersion":"v1","spec":{}}}"#,
                    pod_spec(c)
                ),
            ),
            (
                "pods",
                format!(
                    r#"{{"kind":"Pod","apiVersion":"v1","spec":{{"initContainers":[{c}],"containers":[{{"name":"x"}}]}}}}"#
                ),
            ),
            (
                "pods",
                format!(
                    r#"{{"kind":"Pod","apiVersion":"v1","spec":{{"ephemeralContainers":[{c}]}}}}"#
                ),
            ),
            (
                "deployments",
                format!(
                    r#"{{"kind":"Deployment","apiVersion":"apps/v1","spec":{}}}"#,
                    template(c)
                ),
            ),
            (
                "statefulsets",
                format!(
                    r#"{{"kind":"StatefulSet","apiVersion":"apps/v1","spec":{}}}"#,
                    template(c)
                ),
            ),
            (
                "daemonsets",
                format!(
                    r#"{{"kind":"DaemonSet","apiVersion":"apps/v1","spec":{}}}"#,
                    template(c)
                ),
            ),
            (
                "jobs",
                format!(
                    r#"{{"kind":"Job","apiVersion":"batch/v1","spec":{}}}"#,
                    template(c)
                ),
            ),
            (
                "cronjobs",
                format!(
                    r#"{{"kind":"CronJob","apiVersion":"batch/v1","spec":{{"schedule":"*/5 * * * *","jobTemplate":{{"spec":{}}}}}}}"#,
                    template(c)
                ),
            ),
            (
                "pods",
                format!(
                    r#"{{"kind":"PodList","apiVersion":"v1","items":[{{"metadata":{{"name":"a"}},"spec":{}}},{{"metadata":{{"name":"b"}},"spec":{}}}]}}"#,
                    pod_spec(c),
                    pod_spec(c)
                ),
            ),
        ]
    };
    let mut input = String::new();
    let mut expected = String::new();
    for (i, ((resource, body), (_, redacted))) in bodies(CONTAINER)
        .into_iter()
        .zip(bodies(REDACTED_CONTAINER))
        .enumerate()
    {
        let head = format!(
            r#"{{"auditID":"k{i}","verb":"create","objectRef":{{"resource":"{resource}","namespace":"shop"}},"responseObject":"#
        );
        input.push_str(&format!("{head}{body}}}\n"));
        expected.push_str(&format!(
            "{head}{redacted}{ANNOTATED}\"cli_secret,env_secret\"}}}}\n"
        ));
    }
    assert_eq!(redact(&input), expected);
}

#[test]
fn the_issue_events_a_json_patch_a_shell_string_and_look_alikes_come_out_as_expected() {
    let cases = [
        (
            r#"{"auditID":"w1","verb":"create","objectRef":{"resource":"pods","namespace":"shop","name":"api"},"requestObject":{"kind":"Pod","spec":{"containers":[{"name":"api","env":[{"name":"DB_PASSWORD","value":"hunter2-prod"},{"name":"LOG_LEVEL","value":"debug"}],"args":["--api-key=sk_live_4eC39HqLyjWDarjtT1zdp7dc","--port=8080"]}]}}}"#,
            r#"{"auditID":"w1","verb":"create","objectRef":{"resource":"pods","namespace":"shop","name":"api"},"requestObject":{"kind":"Pod","spec":{"containers":[{"name":"api","env":[{"name":"DB_PASSWORD","value":"[REDACTED]"},{"name":"LOG_LEVEL","value":"debug"}],"args":["--api-key=[REDACTED]","--port=8080"]}]}},"annotations":{"auditflow.io/redacted":"cli_secret,env_secret"}}"#,
        ),
        (
            r#"{"auditID":"w2","verb":"patch","objectRef":{"resource":"deployments","apiGroup":"apps","namespace":"ci","name":"runner"},"requestObject":{"spec":{"template":{"spec":{"containers":[{"name":"r","command":["runner","--github-token","ghp_0123456789abcdefABCDEF0123456789abcd"],"env":[{"name":"AWS_ACCESS_KEY_ID","value":"AKIAIOSFODNN7EXAMPLE"},{"name":"AWS_SECRET_ACCESS_KEY","value":"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}]}]}}}}}"#,
            r#"{"auditID":"w2","verb":"patch","objectRef":{"resource":"deployments","apiGroup":"apps","namespace":"ci","name":"runner"},"requestObject":{"spec":{"template":{"spec":{"containers":[{"name":"r","command":["runner","--github-token","[REDACTED]"],"env":[{"name":"AWS_ACCESS_KEY_ID","value":"[REDACTED]"},{"name":"AWS_SECRET_ACCESS_KEY","value":"[REDACTED]"}]}]}}}},"annotations":{"auditflow.io/redacted":"cli_secret,env_secret,known_tokens"}}"#,
        ),
        (
            r#"{"auditID":"p1","verb":"patch","objectRef":{"resource":"deployments","apiGroup":"apps","name":"api"},"requestObject":[{"op":"replace","path":"/spec/template/spec/containers/0/env/0/value","value":"n3w-pass"},{"op":"replace","path":"/spec/replicas","value":3}]}"#,
            r#"{"auditID":"p1","verb":"patch","objectRef":{"resource":"deployments","apiGroup":"apps","name":"api"},"requestObject":[{"op":"replace","path":"/spec/template/spec/containers/0/env/0/value","value":"[REDACTED]"},{"op":"replace","path":"/spec/replicas","value":3}],"annotations":{"auditflow.io/redacted":"env_secret"}}"#,
        ),
        (
            r#"{"auditID":"s1","verb":"create","objectRef":{"resource":"jobs","apiGroup":"batch"},"requestObject":{"kind":"Job","spec":{"template":{"spec":{"containers":[{"name":"m","command":["sh","-c","migrate --password=s3cr3t --port 5432 \u0026\u0026 echo done"]}]}}}}}"#,
            r#"{"auditID":"s1","verb":"create","objectRef":{"resource":"jobs","apiGroup":"batch"},"requestObject":{"kind":"Job","spec":{"template":{"spec":{"containers":[{"name":"m","command":["sh","-c","migrate --password=[REDACTED] --port 5432 \u0026\u0026 echo done"]}]}}}},"annotations":{"auditflow.io/redacted":"cli_secret"}}"#,
        ),
    ];
    // Look-alikes that hold no credential: they come out byte for byte.
    let unchanged = r#"{"auditID":"f1","verb":"create","objectRef":{"resource":"pods"},"requestObject":{"kind":"Pod","spec":{"containers":[{"name":"a","env":[{"name":"AUTHOR","value":"jane"},{"name":"TOKENIZER_MODE","value":"fast"},{"name":"DB_PASSWORD","valueFrom":{"secretKeyRef":{"name":"db","key":"password"}}},{"name":"CHECKSUM","value":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}],"args":["--token-ttl=3600","--digest=da39a3ee5e6b4b0d3255bfef95601890afd80709"]}]}}}"#;
    let mut input = String::new();
    let mut expected = String::new();
    for (line, out) in cases {
        input.push_str(line);
        input.push('\n');
        expected.push_str(out);
        expected.push('\n');
    }
    input.push_str(unchanged);
    input.push('\n');
    expected.push_str(unchanged);
    expected.push('\n');
    assert_eq!(redact(&input), expected);
}

#[test]
fn a_redacted_field_keeps_its_big_numbers_and_escapes() {
    let input = r#"{"auditID":"c","verb":"patch","requestObject":{"n":123456789012345678901234567890,"m":1.50,"u":"a\u0026b","h":"Bearer abcdef123456"}}"#;
    assert_eq!(
        redact(&format!("{input}\n")),
        "{\"auditID\":\"c\",\"verb\":\"patch\",\"requestObject\":{\"n\":123456789012345678901234567890,\"m\":1.50,\"u\":\"a\\u0026b\",\"h\":\"Bearer [REDACTED]\"},\"annotations\":{\"auditflow.io/redacted\":\"bearer\"}}\n"
    );
}
