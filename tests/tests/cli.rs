//! The commands besides `run`, as an operator types them: `plugins [TYPE]`,
//! `webhook-kubeconfig` with the token from the environment, `graph` on an invalid
//! pipeline, and `--log-format json`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use auditflow_e2e::{auditflow_bin, Auditflow, Workspace};

fn auditflow(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(auditflow_bin())
        .args(args)
        .env_remove("AUDITFLOW_WEBHOOK_TOKEN")
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .expect("run auditflow")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn plugins_lists_every_type_and_plugins_type_only_that_one() {
    let workspace = Workspace::new();
    let all = auditflow(workspace.path(), &["plugins"], &[]);
    assert_eq!(all.status.code(), Some(0), "{}", text(&all.stderr));
    let all = text(&all.stdout);
    for section in ["sources:", "transforms:", "sinks:"] {
        assert!(all.lines().any(|line| line == section), "{section}:\n{all}");
    }
    for name in [
        "file",
        "webhook",
        "kafka",
        "stdin",
        "redact",
        "filter",
        "sample",
        "https",
        "stdout",
        "blackhole",
    ] {
        assert!(
            all.lines()
                .any(|line| line.starts_with(&format!("  {name} — "))),
            "{name} is not listed:\n{all}"
        );
    }

    let one = auditflow(workspace.path(), &["plugins", "https"], &[]);
    assert_eq!(one.status.code(), Some(0), "{}", text(&one.stderr));
    let one = text(&one.stdout);
    let listed: Vec<&str> = one
        .lines()
        .filter(|line| line.starts_with("  ") && line.contains(" — "))
        .collect();
    assert_eq!(listed.len(), 1, "{one}");
    assert!(listed[0].starts_with("  https — "), "{one}");
    assert!(one.starts_with("sinks:\n"), "{one}");
    // Options with their type, default and the config struct's own doc.
    let max_bytes = one
        .lines()
        .find(|line| line.trim_start().starts_with("batch.max_bytes "))
        .unwrap_or_else(|| panic!("no batch.max_bytes in:\n{one}"));
    assert!(max_bytes.contains("default: 1048576"), "{max_bytes}");
    assert!(
        one.lines()
            .any(|line| line.trim_start().starts_with("uri ") && line.contains("required")),
        "{one}"
    );
    assert!(one.contains("request.retry_max_backoff_ms"), "{one}");

    let unknown = auditflow(workspace.path(), &["plugins", "nosuchtype"], &[]);
    assert_eq!(unknown.status.code(), Some(2));
    assert_eq!(text(&unknown.stdout), "");
    assert!(
        text(&unknown.stderr).contains("nosuchtype"),
        "{}",
        text(&unknown.stderr)
    );
}

#[test]
fn webhook_kubeconfig_takes_the_token_from_the_environment() {
    let workspace = Workspace::new();
    let output = auditflow(
        workspace.path(),
        &[
            "webhook-kubeconfig",
            "--server",
            "https://auditflow.logging.svc:8443/audit",
        ],
        &[("AUDITFLOW_WEBHOOK_TOKEN", "t0ken-from-the-environment")],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let kubeconfig = text(&output.stdout);
    assert!(
        kubeconfig.contains("  user:\n    token: \"t0ken-from-the-environment\"\n"),
        "{kubeconfig}"
    );
    assert!(
        kubeconfig.contains("server: \"https://auditflow.logging.svc:8443/audit\""),
        "{kubeconfig}"
    );
    assert_eq!(text(&output.stderr), "");
}

#[test]
fn graph_of_an_invalid_pipeline_exits_2_and_prints_no_graph() {
    let workspace = Workspace::new();
    workspace.write(
        "pipeline.yaml",
        "sources:\n  in: { type: stdin }\nsinks:\n  out: { type: stdout, inputs: [inn] }\n",
    );
    let output = auditflow(workspace.path(), &["graph", "pipeline.yaml"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(text(&output.stdout), "", "no half graph on stdout");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("pipeline.yaml: sinks.out.inputs: `inn` names no source or transform"),
        "{stderr}"
    );
    assert!(
        stderr.contains("auditflow: the pipeline has 2 problems; nothing was started")
            || stderr.contains("auditflow: the pipeline has 1 problem; nothing was started"),
        "{stderr}"
    );
}

#[test]
fn log_format_json_writes_one_json_object_per_stderr_line() {
    let workspace = Workspace::new();
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            "data_dir: {}\nsources:\n  in: {{ type: stdin }}\nsinks:\n  out: {{ type: blackhole, inputs: [in] }}\n",
            workspace.path().join("data").display()
        ),
    );
    let mut auditflow = Auditflow::spawn(
        &workspace,
        &[
            "--log-format".as_ref(),
            "json".as_ref(),
            "run".as_ref(),
            pipeline.as_os_str(),
        ],
        &[],
    );
    drop(auditflow.take_stdin());
    let status = auditflow.wait_timeout(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", auditflow.stderr());
    let stderr = auditflow.stderr();
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 2, "too few log lines:\n{stderr}");
    let mut messages = Vec::new();
    for line in lines {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
        let level = event["level"]
            .as_str()
            .unwrap_or_else(|| panic!("no level: {line}"));
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
            "{line}"
        );
        let message = event["fields"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no message: {line}"));
        messages.push(message.to_owned());
    }
    assert!(
        messages.iter().any(|m| m == "pipeline started"),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m == "pipeline finished"),
        "{messages:?}"
    );
}
