//! The `generator` source through the real binary: a seeded corpus written to standard
//! output is the same bytes on every run, holds exactly `count` events in kube-apiserver's
//! shape, and the pipeline ends by itself; the bench pipelines in `scripts/bench-pipelines`
//! stay valid.

use std::process::Command;
use std::time::Duration;

use auditflow_e2e::{auditflow_bin, repo_root, Auditflow, Workspace};

fn corpus(workspace: &Workspace, profile: &str, count: u64, seed: u64) -> Vec<u8> {
    let pipeline = workspace.write(
        &format!("gen-{profile}-{seed}.yaml"),
        &format!(
            "data_dir: {data}\n\
             sources:\n  gen:\n    type: generator\n    profile: {profile}\n    count: {count}\n    seed: {seed}\n\
             sinks:\n  out:\n    type: stdout\n    inputs: [gen]\n",
            data = workspace.path().join("data").display(),
        ),
    );
    let mut run = Auditflow::run(workspace, &pipeline);
    let mut stdout = run.child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut bytes).expect("read stdout");
        bytes
    });
    let status = run.wait_timeout(Duration::from_secs(60));
    assert!(status.success(), "exit {status}; stderr:\n{}", run.stderr());
    reader.join().expect("the stdout reader")
}

#[test]
fn a_seeded_corpus_is_the_same_bytes_every_run() {
    let workspace = Workspace::new();
    for (profile, count) in [("metadata", 20_000), ("request_response", 2_000)] {
        let first = corpus(&workspace, profile, count, 7);
        let second = corpus(&workspace, profile, count, 7);
        assert!(first == second, "{profile}: two runs with seed 7 differ");
        let other = corpus(&workspace, profile, count, 8);
        assert!(
            first != other,
            "{profile}: seeds 7 and 8 gave the same bytes"
        );

        let lines: Vec<&[u8]> = first
            .strip_suffix(b"\n")
            .unwrap()
            .split(|&b| b == b'\n')
            .collect();
        assert_eq!(
            lines.len() as u64,
            count,
            "{profile}: exactly `count` events"
        );
        for line in lines {
            let event: serde_json::Value =
                serde_json::from_slice(line).expect("one JSON event per line");
            assert_eq!(event["apiVersion"], "audit.k8s.io/v1");
            let level = event["level"].as_str().unwrap();
            if profile == "request_response" {
                assert_eq!(level, "RequestResponse");
            }
        }
    }
}

/// Every bench pipeline loads with the variables scripts/bench sets.
#[test]
fn the_bench_pipelines_validate() {
    let dir = repo_root().join("scripts/bench-pipelines");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("scripts/bench-pipelines") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|ext| ext != "yaml") {
            continue;
        }
        let output = Command::new(auditflow_bin())
            .arg("validate")
            .arg(&path)
            .envs([
                ("BENCH_DATA_DIR", "/tmp/auditflow-bench-validate"),
                ("BENCH_METRICS_ADDR", "127.0.0.1:9598"),
                ("BENCH_CORPUS", "/tmp/corpus.log"),
                ("BENCH_PROFILE", "metadata"),
                ("BENCH_SEED", "1"),
                ("BENCH_RATE", "5000"),
                ("BENCH_RECEIVER_PORT", "9443"),
            ])
            .output()
            .expect("run auditflow validate");
        assert!(
            output.status.success(),
            "{}: {}{}",
            path.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        checked += 1;
    }
    assert_eq!(
        checked, 12,
        "the bench's nine pipelines and the three of the thread sweep"
    );
}
