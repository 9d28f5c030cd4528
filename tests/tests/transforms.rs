//! The transforms in the real binary: `rbac_denial` -> `sample` over the sample log,
//! keeping exactly the requests the documented hash picks, the same in a second process,
//! with its metrics; `pipelines/quickstart.yaml` (redact, rbac_denial, filter, sample) doing
//! what README says it does; a bad condition refused with its file, component, option and
//! column.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use auditflow_e2e::{auditflow_bin, http_get, metric, repo_root, wait_ready, Auditflow, Workspace};
use serde_json::Value;

fn sample_log() -> String {
    std::fs::read_to_string(repo_root().join("pipelines/samples/audit.log")).unwrap()
}

/// Runs rbac_denial -> sample(rate 10) -> stdout over the sample log; returns the output
/// events and the metrics text scraped once every denial was counted and every event
/// passed `sample`.
fn run_chain(workspace: &Workspace) -> (Vec<Value>, String) {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let pipeline = workspace.write(
        &format!("chain-{}.yaml", RUNS.fetch_add(1, Ordering::Relaxed)),
        &format!(
            "data_dir: {}\nmetrics:\n  address: 127.0.0.1:0\n\
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
    let address = auditflow.metrics_address(Duration::from_secs(20));
    wait_ready(&address, Duration::from_secs(20));
    stdin.write_all(sample_log().as_bytes()).unwrap();
    stdin.flush().unwrap();
    // Keep stdin open until the denials are counted, so the endpoint is still up.
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let (_, text) = http_get(&address, "/metrics").unwrap();
        let denials = metric(
            &text,
            "auditflow_rbac_denials_total",
            &[("component_id", "denials")],
        );
        // And every event has passed `thin`: kept ones reached `out`, the rest were
        // counted as sampled out.
        let passed = |component: &str, name: &str, labels: &[(&str, &str)]| {
            let mut labels = labels.to_vec();
            labels.push(("component_id", component));
            metric(&text, name, &labels).unwrap_or(0.0)
        };
        let through = passed("out", "auditflow_component_received_events_total", &[])
            + passed(
                "thin",
                "auditflow_component_discarded_events_total",
                &[("reason", "sampled")],
            );
        if denials == Some(10.0) && through == sample_log().lines().count() as f64 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "denials not counted or events not through `thin` ({through}):\n{text}"
        );
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
    // Exactly the requests docs/transforms.md's hash picks (64-bit FNV-1a over the
    // auditID's bytes, then murmur3's fmix64, kept when it is a multiple of the rate),
    // computed here independently of the plugin.
    let expected: BTreeSet<String> = input
        .iter()
        .filter(|e| e["responseStatus"]["code"].as_u64() < Some(400))
        .filter_map(|e| e["auditID"].as_str())
        .filter(|id| documented_sample_hash(id.as_bytes()).is_multiple_of(10))
        .map(str::to_owned)
        .collect();
    let candidates = input.len() - errors;
    assert!(
        !sampled.is_empty() && sampled.len() < candidates / 3,
        "{} of {candidates} kept",
        sampled.len()
    );
    assert_eq!(sampled, expected, "kept auditIDs");
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

/// The sampling hash as docs/transforms.md documents it.
fn documented_sample_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf29ce484222325;
    for &byte in bytes {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x100000001b3);
    }
    for multiplier in [0xff51afd7ed558ccd_u64, 0xc4ceb9fe1a85ec53] {
        hash = (hash ^ (hash >> 33)).wrapping_mul(multiplier);
    }
    hash ^ (hash >> 33)
}

/// README's first command, checked against what README says comes out.
#[test]
fn the_quickstart_pipeline_does_what_the_readme_says() {
    let workspace = Workspace::new();
    let data_dir = workspace.path().join("data");
    let mut auditflow = Auditflow::spawn(
        &workspace,
        &[
            "run".as_ref(),
            repo_root().join("pipelines/quickstart.yaml").as_os_str(),
        ],
        &[("AUDITFLOW_DATA_DIR", data_dir.to_str().unwrap())],
    );
    let lines = auditflow.stdout_lines();
    let input_text = sample_log();
    let mut stdin = auditflow.take_stdin();
    stdin.write_all(input_text.as_bytes()).unwrap();
    drop(stdin);
    let status = auditflow.wait_timeout(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", auditflow.stderr());
    let stderr = auditflow.stderr();
    assert!(
        stderr.contains("pipeline started components=6") && stderr.contains("pipeline finished"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("ERROR") && !stderr.contains("WARN"),
        "{stderr}"
    );
    let output: Vec<String> = lines.iter().collect();

    // "Of the 57 sample events, 42 come out."
    let input: Vec<&str> = input_text.lines().collect();
    assert_eq!((input.len(), output.len()), (57, 42));
    let events: Vec<Value> = output
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();

    // Probes are dropped by the filter.
    assert!(events.iter().all(|e| !e["requestURI"]
        .as_str()
        .unwrap_or("")
        .starts_with("/healthz")));

    // No token or Secret value of the input comes out; [REDACTED] stands where they were.
    let secrets: Vec<&str> = input_text
        .split(|c: char| !(c.is_ascii_alphanumeric() || "._-".contains(c)))
        .filter(|word| word.starts_with("eyJ") && word.matches('.').count() == 2)
        .collect();
    assert!(
        !secrets.is_empty(),
        "the sample holds service-account tokens"
    );
    for secret in &secrets {
        assert!(
            output.iter().all(|line| !line.contains(secret)),
            "a token leaked"
        );
    }
    for kind in ["TokenReview", "TokenRequest", "Secret"] {
        let redacted = events.iter().any(|e| {
            let text = e.to_string();
            text.contains(&format!("\"kind\":\"{kind}\"")) && text.contains("[REDACTED]")
        });
        assert!(redacted, "no {kind} body carries [REDACTED]");
    }

    // README's denial example, annotations exactly.
    let bob = events
        .iter()
        .find(|e| {
            e["user"]["username"] == "bob"
                && e["verb"] == "list"
                && e["objectRef"]["resource"] == "secrets"
                && e["objectRef"]["namespace"] == "kube-system"
                && e["responseStatus"]["code"] == 403
        })
        .expect("bob's denied list of secrets comes out");
    assert_eq!(
        bob["annotations"],
        serde_json::json!({
            "authorization.k8s.io/decision": "forbid",
            "authorization.k8s.io/reason": "",
            "auditflow.io/denial": "rbac",
            "auditflow.io/missing-permission": "{\"verb\":\"list\",\"apiGroup\":\"\",\"resource\":\"secrets\",\"namespace\":\"kube-system\"}",
            "auditflow.io/denied-user": "bob"
        })
    );

    // "Fields nobody changed leave byte for byte as they came": an event no transform
    // annotated is its input line exactly, and an annotated one keeps every other field.
    for (line, event) in output.iter().zip(&events) {
        let original = input
            .iter()
            .find(|candidate| {
                let candidate: Value = serde_json::from_str(candidate).unwrap();
                candidate["auditID"] == event["auditID"] && candidate["stage"] == event["stage"]
            })
            .expect("every output event has its input");
        if event.get("annotations").is_none_or(|a| {
            a.as_object()
                .unwrap()
                .keys()
                .all(|key| !key.starts_with("auditflow.io/"))
        }) {
            assert_eq!(line, original);
        } else {
            let original: Value = serde_json::from_str(original).unwrap();
            for (key, value) in original.as_object().unwrap() {
                if key != "annotations" && !line.contains("[REDACTED]") {
                    assert_eq!(&event[key], value, "{key} changed");
                }
            }
        }
    }
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
