//! `rbac_denial`, `sample` and `filter` in the real binary: the quickstart chain over the
//! sample log, deterministic across processes, with its metrics; a bad condition refused
//! with its file, component, option and column.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use auditflow_e2e::{
    auditflow_bin, free_port, http_get, metric, repo_root, wait_ready, Auditflow, Workspace,
};
use serde_json::Value;

fn sample_log() -> String {
    std::fs::read_to_string(repo_root().join("pipelines/samples/audit.log")).unwrap()
}

/// Runs rbac_denial -> sample(rate 10) -> stdout over the sample log; returns the output
/// events and the metrics text scraped once every denial was counted.
fn run_chain(workspace: &Workspace) -> (Vec<Value>, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let pipeline = workspace.write(
        &format!("chain-{}.yaml", free_port()),
        &format!(
            "data_dir: {}\nmetrics:\n  address: {address}\n\
             sources:\n  in:\n    type: stdin\n\
             transforms:\n  denials:\n    type: rbac_denial\n    inputs: [in]\n  \
             thin:\n    type: sample\n    inputs: [denials]\n    rate: 10\n\
             sinks:\n  out:\n    type: stdout\n    inputs: [thin]\n",
            workspace.path().join("data").display()
        ),
    );
    let mut auditflow = Auditflow::run(workspace, &pipeline);
    let lines = auditflow.stdout_lines();
    let mut stdin = auditflow.take_stdin();
    wait_ready(&address, Duration::from_secs(10));
    stdin.write_all(sample_log().as_bytes()).unwrap();
    stdin.flush().unwrap();
    // Keep stdin open until the denials are counted, so the endpoint is still up.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (_, text) = http_get(&address, "/metrics").unwrap();
        let denials = metric(
            &text,
            "auditflow_rbac_denials_total",
            &[("component_id", "denials")],
        );
        if denials == Some(10.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "denials not counted:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(stdin);
    assert!(auditflow.wait_timeout(Duration::from_secs(10)).success());
    let events = lines
        .iter()
        .map(|line| serde_json::from_str(&line).unwrap())
        .collect();
    (events, text)
}

fn annotation<'a>(event: &'a Value, key: &str) -> Option<&'a str> {
    event["annotations"][key].as_str()
}

#[test]
fn the_quickstart_chain_tags_denials_and_samples_the_rest_the_same_way_twice() {
    let workspace = Workspace::new();
    let input: Vec<Value> = sample_log()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let (out, metrics) = run_chain(&workspace);

    // Every denial and every error is kept, untouched by sampling.
    let errors = input
        .iter()
        .filter(|e| e["responseStatus"]["code"].as_u64() >= Some(400))
        .count();
    let kept_errors: Vec<&Value> = out
        .iter()
        .filter(|e| e["responseStatus"]["code"].as_u64() >= Some(400))
        .collect();
    assert_eq!(kept_errors.len(), errors);
    assert!(kept_errors
        .iter()
        .all(|e| annotation(e, "auditflow.io/sample-rate").is_none()));
    let classes: Vec<&str> = out
        .iter()
        .filter_map(|e| annotation(e, "auditflow.io/denial"))
        .collect();
    assert_eq!(classes.iter().filter(|c| **c == "rbac").count(), 8);
    assert!(classes.contains(&"authentication") && classes.contains(&"forbidden"));
    let rules: BTreeSet<&str> = out
        .iter()
        .filter_map(|e| annotation(e, "auditflow.io/missing-permission"))
        .collect();
    assert!(rules.contains(
        r#"{"verb":"get","apiGroup":"","resource":"pods/log","resourceName":"web-6d4cf56db6-x7k2p","namespace":"team-a"}"#
    ));
    assert!(rules.contains(r#"{"verb":"get","nonResourceURL":"/metrics"}"#));

    // Everything else that came out was sampled at 1 in 10 and says so.
    let sampled: BTreeSet<String> = out
        .iter()
        .filter(|e| e["responseStatus"]["code"].as_u64() < Some(400))
        .map(|e| {
            assert_eq!(annotation(e, "auditflow.io/sample-rate"), Some("10"));
            e["auditID"].as_str().unwrap().to_owned()
        })
        .collect();
    let candidates = input.len() - errors;
    assert!(
        sampled.len() < candidates / 3,
        "{} of {candidates}",
        sampled.len()
    );
    let discarded = metric(
        &metrics,
        "auditflow_component_discarded_events_total",
        &[("component_id", "thin"), ("reason", "sampled")],
    );
    assert_eq!(discarded, Some((input.len() - out.len()) as f64));
    assert_eq!(
        metric(
            &metrics,
            "auditflow_rbac_denials_total",
            &[
                ("component_id", "denials"),
                ("class", "rbac"),
                ("verb", "get"),
                ("resource", "pods/log")
            ],
        ),
        Some(1.0)
    );

    // A second process keeps exactly the same requests.
    let (again, _) = run_chain(&workspace);
    let sampled_again: BTreeSet<String> = again
        .iter()
        .filter(|e| e["responseStatus"]["code"].as_u64() < Some(400))
        .map(|e| e["auditID"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sampled, sampled_again);
}

#[test]
fn a_bad_condition_is_refused_with_file_component_option_and_column() {
    let workspace = Workspace::new();
    workspace.write(
        "x.yaml",
        "sources:\n  in: { type: stdin }\n\
         transforms:\n  keep:\n    type: filter\n    inputs: [in]\n    condition: 'verb = \"get\"'\n\
         sinks:\n  out: { type: stdout, inputs: [keep] }\n",
    );
    let output = Command::new(auditflow_bin())
        .args(["validate", "x.yaml"])
        .current_dir(workspace.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "an invalid pipeline");
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(
            "x.yaml: transforms.keep.condition: column 6: unexpected `=`: use `==` to compare"
        ),
        "{text}"
    );
}
