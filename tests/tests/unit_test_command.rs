//! `auditflow test`: the unit tests in a pipeline's `tests:` section, through the real
//! binary. A passing file exits 0 with one `ok` line per test; a failing one exits 1 and
//! shows the differing field; an invalid test exits 2 naming its file and test; no source
//! or sink starts; every example in `pipelines/` passes its own tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;

use auditflow_e2e::{clean_command, repo_root, Workspace};

fn samples() -> PathBuf {
    repo_root().join("pipelines/samples")
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn auditflow_test(dir: &Path, files: &[&Path]) -> Output {
    clean_command(&["test"])
        .args(files)
        .current_dir(dir)
        .output()
        .expect("run auditflow test")
}

/// The lines `test <name> ... <verdict>` of a run, in order.
fn verdicts(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.starts_with("test ") && line.contains(" ... "))
        .map(str::to_owned)
        .collect()
}

/// A pipeline whose sources and sinks would leave traces if they started: a file source
/// (checkpoints in `data_dir`), metrics on `held_port` (one the test holds, or 0 where
/// nothing checks that `test` binds no port), a file sink. Its
/// transforms: `scrub` (redact) -> `keep_denials` (filter) -> `tag` (rbac_denial), and
/// `once` (dedupe) on a branch of its own.
fn pipeline(workspace: &Workspace, held_port: u16, tests: &str) -> PathBuf {
    let dir = workspace.path();
    std::fs::write(dir.join("input.log"), "").unwrap();
    for name in [
        "denials.jsonl",
        "noise.jsonl",
        "tokens.jsonl",
        "tagged-denials.jsonl",
    ] {
        std::fs::copy(samples().join(name), dir.join(name)).unwrap();
    }
    workspace.write(
        "pipeline.yaml",
        &format!(
            r#"data_dir: {data_dir}
metrics:
  address: 127.0.0.1:{held_port}
sources:
  audit:
    type: file
    include: [{input}]
transforms:
  scrub:
    type: redact
    inputs: [audit]
  keep_denials:
    type: filter
    inputs: [scrub]
    condition: 'responseStatus.code == 403'
  tag:
    type: rbac_denial
    inputs: [keep_denials]
  once:
    type: dedupe
    inputs: [audit]
sinks:
  out:
    type: file
    inputs: [tag, once]
    path: {out}
{tests}"#,
            data_dir = dir.join("data").display(),
            input = dir.join("input.log").display(),
            out = dir.join("out/audit.ndjson").display(),
        ),
    )
}

const PASSING: &str = r#"
tests:
  - name: denials come out of the chain tagged
    inputs:
      - insert_at: scrub
        file: denials.jsonl
      - insert_at: scrub
        file: noise.jsonl
    outputs:
      - extract_from: tag
        file: tagged-denials.jsonl
      - extract_from: tag
        conditions:
          - 'annotations."auditflow.io/denial" == "rbac"'
          - 'responseStatus.code == 403'
  - name: probes never pass the filter
    inputs:
      - insert_at: keep_denials
        file: noise.jsonl
    no_outputs_from: [keep_denials, tag]
  - name: inline events, as YAML and as JSON text
    inputs:
      - insert_at: once
        events:
          - { kind: Event, auditID: a-1, stage: ResponseComplete, verb: get }
          - '{"kind":"Event","auditID":"a-1","stage":"ResponseComplete","verb":"get"}'
          - { kind: Event, auditID: a-2, stage: ResponseComplete, verb: list }
    outputs:
      - extract_from: once
        events:
          - { auditID: a-1, kind: Event, stage: ResponseComplete, verb: get }
          - '{"kind":"Event","auditID":"a-2","stage":"ResponseComplete","verb":"list"}'
  - name: every test starts with fresh transforms
    inputs:
      - insert_at: once
        events:
          - { kind: Event, auditID: a-1, stage: ResponseComplete, verb: get }
    outputs:
      - extract_from: once
        conditions: ['auditID == "a-1"']
"#;

#[test]
fn a_passing_file_exits_0_with_one_ok_line_per_test_and_starts_no_source_or_sink() {
    let workspace = Workspace::new();
    // A running pipeline would fail to listen here; `test` does not listen at all.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let file = pipeline(&workspace, port, PASSING);
    let output = auditflow_test(workspace.path(), &[&file]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(
        verdicts(&output),
        [
            "test denials come out of the chain tagged ... ok",
            "test probes never pass the filter ... ok",
            "test inline events, as YAML and as JSON text ... ok",
            "test every test starts with fresh transforms ... ok",
        ],
        "{}",
        text(&output)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("test result: ok. 4 passed; 0 failed"),
        "{}",
        text(&output)
    );
    // Neither the file source's checkpoints nor the file sink's output were written.
    assert!(
        !workspace.path().join("data").exists(),
        "data_dir was written"
    );
    assert!(
        !workspace.path().join("out").exists(),
        "the file sink wrote"
    );
    drop(held);
}

#[test]
fn tests_in_a_file_of_their_own_run_against_the_pipeline_they_are_merged_with() {
    let workspace = Workspace::new();
    let file = pipeline(&workspace, 0, "");
    let tests = workspace.write("pipeline.tests.yaml", PASSING);
    let output = auditflow_test(workspace.path(), &[&file, &tests]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(verdicts(&output).len(), 4, "{}", text(&output));
}

#[test]
fn a_failing_test_exits_1_and_its_diff_shows_the_differing_field() {
    let workspace = Workspace::new();
    // The expected event says alice was refused; the transforms say bob.
    let denial = std::fs::read_to_string(samples().join("tagged-denials.jsonl")).unwrap();
    let first = denial.lines().next().unwrap();
    assert!(
        first.contains(r#""auditflow.io/denied-user":"bob""#),
        "{first}"
    );
    let wrong = first.replace(
        r#""auditflow.io/denied-user":"bob""#,
        r#""auditflow.io/denied-user":"alice""#,
    );
    workspace.write("expected.jsonl", &format!("{wrong}\n"));
    let tests = r#"
tests:
  - name: the denial names the wrong user
    inputs:
      - insert_at: scrub
        events:
          - '{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"332b4024-e672-4823-9bfa-80a2ddf4aa1e","stage":"ResponseComplete","requestURI":"/api/v1/secrets?limit=500","verb":"list","user":{"username":"bob","uid":"uid-1002","groups":["qa-team","system:authenticated"]},"sourceIPs":["127.0.0.1"],"userAgent":"kubectl/v1.32.0 (linux/amd64) kubernetes/cd13ec4","objectRef":{"resource":"secrets","apiVersion":"v1"},"responseStatus":{"metadata":{},"status":"Failure","message":"secrets is forbidden: User \"bob\" cannot list resource \"secrets\" in API group \"\" at the cluster scope","reason":"Forbidden","details":{"kind":"secrets"},"code":403},"requestReceivedTimestamp":"2026-11-23T08:24:14.772829Z","stageTimestamp":"2026-11-23T08:24:14.773282Z","annotations":{"authorization.k8s.io/decision":"forbid","authorization.k8s.io/reason":""}}'
    outputs:
      - extract_from: tag
        file: expected.jsonl
  - name: denials pass
    inputs:
      - insert_at: keep_denials
        file: denials.jsonl
    outputs:
      - extract_from: keep_denials
        conditions: ['responseStatus.code == 403']
  - name: a condition that the probes do not satisfy
    inputs:
      - insert_at: scrub
        file: noise.jsonl
    outputs:
      - extract_from: scrub
        conditions: ['requestURI == "/livez"']
  - name: probes expected to vanish at redact
    inputs:
      - insert_at: scrub
        file: noise.jsonl
    no_outputs_from: [scrub]
"#;
    let file = pipeline(&workspace, 0, tests);
    let output = auditflow_test(workspace.path(), &[&file]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert_eq!(
        verdicts(&output),
        [
            "test the denial names the wrong user ... FAILED",
            "test denials pass ... ok",
            "test a condition that the probes do not satisfy ... FAILED",
            "test probes expected to vanish at redact ... FAILED",
        ],
        "{}",
        text(&output)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    // The diff: the expected value removed, the actual one added, nothing else differing.
    let removed: Vec<&&str> = lines
        .iter()
        .filter(|line| line.starts_with('-') && !line.starts_with("---"))
        .collect();
    let added: Vec<&&str> = lines
        .iter()
        .filter(|line| line.starts_with('+') && !line.starts_with("+++"))
        .collect();
    assert_eq!(
        removed,
        [&r#"-      "auditflow.io/denied-user": "alice","#],
        "{}",
        text(&output)
    );
    assert_eq!(
        added,
        [&r#"+      "auditflow.io/denied-user": "bob","#],
        "{}",
        text(&output)
    );
    assert!(
        stdout.contains(
            "outputs[0]: the events out of `tag` differ from the expected ones (1 expected, 1 out)"
        ),
        "{}",
        text(&output)
    );
    // The condition's failure names the condition and shows the events that fail it.
    assert!(
        stdout.contains(
            r#"3 of the 3 events out of `scrub` do not satisfy `requestURI == "/livez"`"#
        ),
        "{}",
        text(&output)
    );
    assert!(
        stdout.contains(r#""requestURI": "/readyz""#),
        "{}",
        text(&output)
    );
    // And no_outputs_from says how many came out.
    assert!(
        stdout.contains("no_outputs_from: `scrub` let out 3 events, expected none"),
        "{}",
        text(&output)
    );
    assert!(
        stdout.contains("test result: FAILED. 1 passed; 3 failed"),
        "{}",
        text(&output)
    );
}

#[test]
fn an_invalid_test_exits_2_naming_the_file_and_the_test() {
    let workspace = Workspace::new();
    let tests = r#"
tests:
  - name: fine
    inputs:
      - insert_at: scrub
        file: denials.jsonl
    outputs:
      - extract_from: tag
        conditions: ['responseStatus.code == 403']
  - name: reads a sink
    inputs:
      - insert_at: scrub
        file: denials.jsonl
    outputs:
      - extract_from: out
        conditions: ['verb == list']
  - name: checks what no input reaches
    inputs:
      - insert_at: tag
        file: denials.jsonl
    no_outputs_from: [once]
  - name: misspells a key
    inputs:
      - insert_at: scrub
        evnts: []
    no_outputs_from: [scrub]
"#;
    let file = pipeline(&workspace, 0, tests);
    let output = auditflow_test(workspace.path(), &[&file]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        verdicts(&output).is_empty(),
        "a test ran:\n{}",
        text(&output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let name = file.display();
    for expected in [
        format!(
            r#"{name}: tests[1] ("reads a sink").outputs[0].extract_from: `out` is a sink; tests run transforms only"#
        ),
        format!(r#"{name}: tests[1] ("reads a sink").outputs[0].conditions[0]: column 9: "#),
        format!(
            r#"{name}: tests[2] ("checks what no input reaches").no_outputs_from[0]: `once` is not downstream of the inputs (tag)"#
        ),
        format!(r#"{name}: tests[3] ("misspells a key").inputs[0].evnts: unknown field `evnts`"#),
        "auditflow: the tests have 4 problems; no test ran".to_owned(),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{}",
            text(&output)
        );
    }

    // A broken pipeline is a config error too, named as `validate` names it.
    let broken = workspace.write(
        "broken.yaml",
        "sources: {in: {type: stdin}}\ntransforms:\n  t: {type: filtre, inputs: [in]}\nsinks: {out: {type: stdout, inputs: [t]}}\ntests: []\n",
    );
    let output = auditflow_test(workspace.path(), &[&broken]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(&format!(
            "{}: transforms.t.type: unknown transform type `filtre`",
            broken.display()
        )),
        "{}",
        text(&output)
    );

    // And a pipeline without tests has nothing to pass.
    let untested = pipeline(&workspace, 0, "");
    let output = auditflow_test(workspace.path(), &[&untested]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("no tests: none of the files has a `tests:` section"),
        "{}",
        text(&output)
    );
}

/// Names in `${NAME}` references without a default: the variables a user must set.
fn required_variables(text: &str) -> Vec<String> {
    text.split("${")
        .skip(1)
        .filter_map(|rest| rest.split('}').next())
        .filter(|inner| !inner.contains(":-"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_example_pipeline_passes_its_own_tests() {
    let root = repo_root();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("pipelines"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "toml" | "json")
            )
        })
        .collect();
    files.sort();
    assert!(files.len() >= 7, "pipelines/: {files:?}");
    let mut failures = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&root).unwrap();
        let mut command = clean_command(&["test"]);
        command.arg(relative).current_dir(&root);
        // Secrets and addresses come from the environment; no source or sink starts, so
        // any value does.
        for name in required_variables(&std::fs::read_to_string(file).unwrap()) {
            command.env(name, "dummy-value-for-test");
        }
        let output = command.output().expect("run auditflow test");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let ran = verdicts(&output);
        let ok = ran.iter().filter(|line| line.ends_with(" ... ok")).count();
        println!("{}: {ok} tests ok", relative.display());
        if !output.status.success() || ran.len() < 2 || ok != ran.len() {
            failures.push(format!("{}:\n{}", relative.display(), text(&output)));
        } else {
            assert!(stdout.contains(&format!("test result: ok. {ok} passed; 0 failed")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
