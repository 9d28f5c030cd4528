//! `audit_policy` and `dedupe` in the real binary (stdin -> transform -> stdout over the
//! real kube-apiserver capture), and `auditflow policy lint` / `explain`: goldens on the
//! seeds' policies and kube-apiserver's documented example, exit codes, JSON output.
//!
//! Goldens live in `tests/golden/policy/`; they are compared, never rewritten by a test.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use auditflow_e2e::{http_get, metric, repo_root, run_to_end, wait_ready, Auditflow, Workspace};
use serde_json::Value;

/// The real capture's log (copied from `shared/corpus/kube-apiserver-1.32/`).
fn audit_log() -> String {
    auditflow_testkit::events::AUDIT_LOG.to_owned()
}

fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures/policy")
}

/// Runs the binary in `dir` (file names in messages stay relative), with `stdin`, and no
/// `AUDITFLOW_*` overrides from the test's environment.
fn auditflow(dir: &Path, args: &[&str], stdin: &[u8]) -> Output {
    run_to_end(dir, args, &[], stdin)
}

fn golden(name: &str) -> String {
    let path = repo_root().join("tests/golden/policy").join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("golden {}: {error}", path.display()))
}

/// Runs `pipeline` over `input` on stdin, keeping stdin open until `until` holds for the
/// scraped metrics; returns the stdout lines and that metrics text.
fn run_pipeline(
    workspace: &Workspace,
    pipeline: &str,
    input: &str,
    until: impl Fn(&str) -> bool,
) -> (Vec<String>, String) {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let file = workspace.write(
        &format!("pipeline-{}.yaml", RUNS.fetch_add(1, Ordering::Relaxed)),
        &format!(
            "data_dir: {}\nmetrics:\n  address: 127.0.0.1:0\n{pipeline}",
            workspace.path().join("data").display()
        ),
    );
    let mut process = Auditflow::run(workspace, &file);
    let lines = process.stdout_lines();
    let mut stdin = process.take_stdin();
    let address = process.metrics_address(Duration::from_secs(20));
    wait_ready(&address, Duration::from_secs(20));
    stdin.write_all(input.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let (_, text) = http_get(&address, "/metrics").unwrap();
        if until(&text) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never got there:\n{text}\nstderr:\n{}",
            process.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(stdin);
    let status = process.wait_timeout(Duration::from_secs(20));
    assert!(status.success(), "stderr:\n{}", process.stderr());
    (lines.iter().collect(), text)
}

#[test]
fn audit_policy_drops_and_trims_the_capture_as_a_stricter_api_server_would() {
    let workspace = Workspace::new();
    let policy = workspace.write(
        "central-policy.yaml",
        "apiVersion: audit.k8s.io/v1\nkind: Policy\n\
         omitStages: [RequestReceived, ResponseStarted]\n\
         rules:\n\
         - level: None\n  verbs: [watch]\n\
         - level: Metadata\n",
    );
    let input = audit_log();
    let expected: Vec<Value> = input
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|e| e["verb"] != "watch" && e["stage"] == "ResponseComplete")
        .map(|mut e| {
            let map = e.as_object_mut().unwrap();
            map["level"] = "Metadata".into();
            map.remove("requestObject");
            map.remove("responseObject");
            e
        })
        .collect();
    assert_eq!(expected.len(), 185);
    let dropped = 245 - expected.len();
    let (lines, metrics) = run_pipeline(
        &workspace,
        &format!(
            "sources:\n  hook:\n    type: stdin\n\
             transforms:\n  tenant_policy:\n    type: audit_policy\n    inputs: [hook]\n    policy_file: {}\n\
             sinks:\n  out:\n    type: stdout\n    inputs: [tenant_policy]\n",
            policy.display()
        ),
        &input,
        |text| {
            metric(
                text,
                "auditflow_component_sent_events_total",
                &[("component_id", "out")],
            ) == Some(185.0)
        },
    );
    let out: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(out, expected);
    // Events already at Metadata leave byte for byte as they came.
    let untouched = input
        .lines()
        .filter(|l| l.contains(r#""level":"Metadata""#) && l.contains("ResponseComplete"))
        .filter(|l| !l.contains(r#""verb":"watch""#))
        .count();
    assert_eq!(
        lines.iter().filter(|l| input.contains(l.as_str())).count(),
        untouched
    );
    assert_eq!(
        metric(
            &metrics,
            "auditflow_component_discarded_events_total",
            &[("component_id", "tenant_policy"), ("reason", "filtered")],
        ),
        Some(dropped as f64)
    );
}

#[test]
fn the_capture_under_its_own_policy_comes_out_unchanged() {
    let workspace = Workspace::new();
    let input = audit_log();
    let (lines, _) = run_pipeline(
        &workspace,
        &format!(
            "sources:\n  hook:\n    type: stdin\n\
             transforms:\n  same:\n    type: audit_policy\n    inputs: [hook]\n    policy_file: {}\n\
             sinks:\n  out:\n    type: stdout\n    inputs: [same]\n",
            fixtures()
                .join("kube-apiserver-1.32-audit-policy.yaml")
                .display()
        ),
        &input,
        |text| {
            metric(
                text,
                "auditflow_component_sent_events_total",
                &[("component_id", "out")],
            ) == Some(245.0)
        },
    );
    let expected: Vec<&str> = input.lines().collect();
    assert_eq!(lines, expected);
}

#[test]
fn a_policy_kube_apiserver_would_misread_is_refused_with_its_line() {
    let workspace = Workspace::new();
    std::fs::copy(
        fixtures().join("seed-ko.yaml"),
        workspace.path().join("policy.yaml"),
    )
    .unwrap();
    workspace.write(
        "pipeline.yaml",
        "sources:\n  hook:\n    type: stdin\n\
         transforms:\n  tenant:\n    type: audit_policy\n    inputs: [hook]\n    policy_file: policy.yaml\n\
         sinks:\n  out:\n    type: stdout\n    inputs: [tenant]\n",
    );
    let output = auditflow(workspace.path(), &["validate", "pipeline.yaml"], b"");
    let stdout = String::from_utf8(output.stdout).unwrap();
    // An invalid pipeline: 1 before the exit codes were split, 2 (configuration error)
    // since.
    assert!(
        matches!(output.status.code(), Some(1 | 2)),
        "{:?}: {stdout}",
        output.status
    );
    assert!(
        stdout.contains("transforms.tenant.policy_file")
            && stdout.contains("policy.yaml:39: unknown key `verbs` in a `resources` entry"),
        "{stdout}"
    );
}

#[test]
fn dedupe_drops_a_replayed_log_and_reports_the_keys_it_holds() {
    let workspace = Workspace::new();
    let log = audit_log();
    // The whole log, then all of it again: a replay after a crash.
    let input = format!("{log}{log}");
    let (lines, metrics) = run_pipeline(
        &workspace,
        "sources:\n  hook:\n    type: stdin\n\
         transforms:\n  once:\n    type: dedupe\n    inputs: [hook]\n\
         sinks:\n  out:\n    type: stdout\n    inputs: [once]\n",
        &input,
        |text| {
            metric(
                text,
                "auditflow_component_discarded_events_total",
                &[("component_id", "once"), ("reason", "duplicate")],
            ) == Some(245.0)
        },
    );
    let expected: Vec<&str> = log.lines().collect();
    assert_eq!(lines, expected);
    assert_eq!(
        metric(
            &metrics,
            "auditflow_dedupe_keys",
            &[("component_id", "once")]
        ),
        Some(245.0)
    );
}

#[test]
fn dedupe_memory_is_bounded_by_max_entries() {
    let workspace = Workspace::new();
    let log = audit_log();
    let (lines, metrics) = run_pipeline(
        &workspace,
        "sources:\n  hook:\n    type: stdin\n\
         transforms:\n  once:\n    type: dedupe\n    inputs: [hook]\n    max_entries: 100\n    window_secs: 3600\n\
         sinks:\n  out:\n    type: stdout\n    inputs: [once]\n",
        &format!("{log}{log}"),
        |text| {
            metric(
                text,
                "auditflow_component_sent_events_total",
                &[("component_id", "out")],
            ) == Some(490.0)
        },
    );
    // Only the last 100 keys were held when the replay began, and the replay evicts
    // them before reaching them (oldest first): every replayed event is new again.
    assert_eq!(lines.len(), 490);
    assert_eq!(
        metric(
            &metrics,
            "auditflow_dedupe_keys",
            &[("component_id", "once")]
        ),
        Some(100.0)
    );
}

/// `policy lint` on each fixture: the golden output and the exit code.
#[test]
fn lint_goldens_for_the_seeds_and_the_kubernetes_example() {
    for (file, code) in [
        ("seed-ja.yaml", 1),
        ("seed-ko.yaml", 1),
        ("kubernetes-example.yaml", 0),
    ] {
        let output = auditflow(&fixtures(), &["policy", "lint", file], b"");
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert_eq!(
            stdout,
            golden(&file.replace(".yaml", ".lint.txt")),
            "{file}"
        );
        assert_eq!(output.status.code(), Some(code), "{file}: {stdout}");
        assert_eq!(String::from_utf8_lossy(&output.stderr), "", "{file}");
    }
}

#[test]
fn lint_json_lists_every_finding_of_every_file() {
    let output = auditflow(
        &fixtures(),
        &[
            "policy",
            "lint",
            "--format",
            "json",
            "seed-ko.yaml",
            "kubernetes-example.yaml",
        ],
        b"",
    );
    assert_eq!(output.status.code(), Some(1));
    let findings: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let summary: Vec<(String, u64, String, String)> = findings
        .iter()
        .map(|f| {
            (
                f["file"].as_str().unwrap().to_owned(),
                f["line"].as_u64().unwrap(),
                f["severity"].as_str().unwrap().to_owned(),
                f["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let text = golden("seed-ko.lint.txt") + &golden("kubernetes-example.lint.txt");
    // The same findings as the text goldens, in the same order.
    let from_text: Vec<(String, u64, String, String)> = text
        .lines()
        .filter(|l| l.contains(".yaml:"))
        .map(|l| {
            let mut parts = l.splitn(4, ':');
            let file = parts.next().unwrap().to_owned();
            let line = parts.next().unwrap().parse().unwrap();
            let kind = parts.next().unwrap().trim();
            let (severity, code) = kind.trim_end_matches(']').split_once('[').unwrap();
            (file, line, severity.to_owned(), code.to_owned())
        })
        .collect();
    assert_eq!(summary, from_text);
    assert!(!summary.is_empty());
}

#[test]
fn lint_exit_codes() {
    let workspace = Workspace::new();
    workspace.write(
        "clean.yaml",
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n",
    );
    let output = auditflow(workspace.path(), &["policy", "lint", "clean.yaml"], b"");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "0 errors, 0 warnings\n"
    );
    let output = auditflow(
        workspace.path(),
        &["policy", "lint", "clean.yaml", "missing.yaml"],
        b"",
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read missing.yaml"));
}

#[test]
fn explain_golden_for_events_from_a_file_and_from_stdin() {
    let log = audit_log();
    let lines: Vec<&str> = log.lines().collect();
    // A list, a watch, the capture's one RBAC denial and a /readyz check.
    let first =
        |needle: &str| -> &str { lines.iter().copied().find(|l| l.contains(needle)).unwrap() };
    let chosen = [
        lines[0],
        first(r#""verb":"watch""#),
        first("332b4024-e672"),
        first(r#""requestURI":"/readyz""#),
    ];
    let workspace = Workspace::new();
    let file = workspace.write("events.json", &format!("{}\n", chosen[..2].join("\n")));
    std::fs::copy(
        fixtures().join("kubernetes-example.yaml"),
        workspace.path().join("policy.yaml"),
    )
    .unwrap();
    let stdin = format!("{}\n", chosen[2..].join("\n"));
    let output = auditflow(
        workspace.path(),
        &["policy", "explain", "policy.yaml", "events.json", "-"],
        stdin.as_bytes(),
    );
    assert_eq!(output.status.code(), Some(0), "{:?}", output);
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        golden("explain.txt")
    );
    assert!(file.exists());

    let output = auditflow(
        workspace.path(),
        &["policy", "explain", "--format", "json", "policy.yaml", "-"],
        stdin.as_bytes(),
    );
    assert_eq!(output.status.code(), Some(0));
    let explained: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(explained.len(), 2);
    // The denied list of secrets: rule 7, Metadata for secrets and configmaps.
    assert_eq!(
        explained[0]["rule"],
        serde_json::json!({"number": 7, "line": 52})
    );
    assert_eq!(explained[0]["level"], "Metadata");
    assert_eq!(
        explained[0]["omit_stages"],
        serde_json::json!(["RequestReceived"])
    );
    assert_eq!(
        (&explained[0]["source"], &explained[0]["event"]),
        (&"-".into(), &1.into())
    );
    assert_eq!(explained[0]["not_matched"].as_array().unwrap().len(), 6);
    // /readyz is not under `/api*`: the catch-all.
    assert_eq!(explained[1]["rule"]["number"], 9);
    assert_eq!(
        explained[1]["not_matched"][4]["reason"],
        "path `/readyz` is not in nonResourceURLs [/api*, /version]"
    );
}

#[test]
fn explain_refuses_an_invalid_policy_and_input_that_is_not_events() {
    let workspace = Workspace::new();
    std::fs::copy(
        fixtures().join("seed-ko.yaml"),
        workspace.path().join("policy.yaml"),
    )
    .unwrap();
    workspace.write("events.json", "{\"verb\":\"get\"}\n");
    let output = auditflow(
        workspace.path(),
        &["policy", "explain", "policy.yaml", "events.json"],
        b"",
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("policy.yaml:39: unknown key `verbs`"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());

    std::fs::copy(
        fixtures().join("kubernetes-example.yaml"),
        workspace.path().join("good.yaml"),
    )
    .unwrap();
    let output = auditflow(
        workspace.path(),
        &["policy", "explain", "good.yaml", "-"],
        b"{\"verb\":\"get\"}\nnot json\n",
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("-: line 2"), "{stderr}");
    // The good event is still explained.
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("-: event 1: "));
}
