//! Golden tests of `auditflow validate`: one bad pipeline per kind of problem, and one with
//! many at once. The expected output lives in `tests/golden/validate/<case>.txt`.
//! A differing output fails the test and is saved under `target/golden-actual/`;
//! `scripts/update-goldens` accepts it.
//!
//! The list of known types in "unknown type" messages grows with every plugin, so it is
//! checked to hold the types these pipelines use and then replaced by `<known types>`.

use std::path::Path;
use std::process::Output;

use auditflow_e2e::{assert_golden, clean_command, Workspace};

/// Runs the binary in `dir` (so that file names in messages are relative) with no
/// `AUDITFLOW_*` overrides from the test's environment.
fn auditflow(dir: &Path, args: &[&str]) -> Output {
    clean_command(args)
        .current_dir(dir)
        .output()
        .expect("run auditflow")
}

/// Replaces the list after each "known <kind> types: " (up to `;` or the end of the line)
/// with `<known types>`, after checking that it names `must_list`.
fn normalise_known_types(text: &str) -> String {
    text.lines()
        .map(|line| {
            let Some(at) = line.find(" types: ") else {
                return line.to_owned();
            };
            let start = at + " types: ".len();
            let end = line[start..]
                .find(';')
                .map_or(line.len(), |end| start + end);
            let kind = line[..at].rsplit(' ').next().unwrap_or_default();
            let listed: Vec<&str> = line[start..end].split(", ").collect();
            let must_list: &[&str] = match kind {
                "source" => &["stdin"],
                "sink" => &["blackhole", "stdout"],
                _ => &[],
            };
            for name in must_list {
                assert!(
                    listed.contains(name),
                    "{kind} types should list {name}: {line}"
                );
            }
            let mut sorted = listed.clone();
            sorted.sort_unstable();
            assert_eq!(listed, sorted, "known types are listed sorted: {line}");
            format!("{}<known types>{}", &line[..start], &line[end..])
        })
        .map(|line| line + "\n")
        .collect()
}

/// Writes `files` to a fresh directory, validates them (in order), and compares the
/// output with the golden file. Invalid pipelines exit 2 (as `run` does) and print nothing on stderr.
fn check(case: &str, files: &[(&str, &str)]) {
    let workspace = Workspace::new();
    for (name, contents) in files {
        workspace.write(name, contents);
    }
    let mut args = vec!["validate"];
    args.extend(files.iter().map(|(name, _)| *name));
    let output = auditflow(workspace.path(), &args);
    let stdout = String::from_utf8(output.stdout).expect("validate prints text");
    assert_eq!(
        output.status.code(),
        Some(2),
        "validate of {case}:\n{stdout}"
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "",
        "{case}: stderr"
    );
    let actual = normalise_known_types(&stdout);

    assert_golden(&format!("validate/{case}.txt"), &actual);
}

const SINK: &str = "sinks:\n  out:\n    type: stdout\n    inputs: [in]\n";

#[test]
fn unknown_type_lists_the_known_ones() {
    check(
        "unknown_type",
        &[(
            "pipeline.yaml",
            &format!("sources:\n  in:\n    type: stdinn\n{SINK}"),
        )],
    );
}

#[test]
fn a_type_of_the_wrong_kind_says_so() {
    check(
        "wrong_kind",
        &[(
            "pipeline.yaml",
            "sources:\n  in:\n    type: stdout\nsinks:\n  out:\n    type: stdout\n    inputs: [in]\n",
        )],
    );
}

#[test]
fn unknown_option_suggests_the_closest_valid_name() {
    check(
        "unknown_option",
        &[(
            "pipeline.yaml",
            &format!("sources:\n  in:\n    type: stdin\n    max_line_byte: 1000\n{SINK}"),
        )],
    );
}

#[test]
fn wrong_value_type_names_the_option() {
    check(
        "wrong_value_type",
        &[(
            "pipeline.yaml",
            &format!("sources:\n  in:\n    type: stdin\n    max_line_bytes: lots\n{SINK}"),
        )],
    );
}

#[test]
fn inputs_naming_nothing_suggest_the_closest_id() {
    check(
        "dangling_input",
        &[(
            "pipeline.yaml",
            "sources:\n  apiserver:\n    type: stdin\n\
             sinks:\n  out:\n    type: stdout\n    inputs: [apiserver, apiservr]\n",
        )],
    );
}

#[test]
fn a_cycle_is_printed_as_a_path() {
    // No transform type is assumed to exist: the cycle is found in the graph the inputs
    // draw, whatever the types.
    check(
        "cycle",
        &[(
            "pipeline.yaml",
            "sources:\n  in:\n    type: stdin\n\
             transforms:\n  a:\n    type: passthrough\n    inputs: [in, b]\n\
             \x20 b:\n    type: passthrough\n    inputs: [a]\n\
             sinks:\n  out:\n    type: stdout\n    inputs: [b]\n",
        )],
    );
}

#[test]
fn duplicate_ids_across_sections() {
    check(
        "duplicate_id",
        &[(
            "pipeline.yaml",
            "sources:\n  in:\n    type: stdin\n\
             sinks:\n  out:\n    type: stdout\n    inputs: [in]\n\
             \x20 in:\n    type: blackhole\n    inputs: [in]\n",
        )],
    );
}

#[test]
fn a_sink_without_inputs() {
    check(
        "sink_without_inputs",
        &[(
            "pipeline.yaml",
            &format!("sources:\n  in:\n    type: stdin\n{SINK}  idle:\n    type: blackhole\n"),
        )],
    );
}

#[test]
fn a_source_nothing_reads() {
    check(
        "unread_source",
        &[(
            "pipeline.yaml",
            &format!("sources:\n  in:\n    type: stdin\n  spare:\n    type: stdin\n{SINK}"),
        )],
    );
}

#[test]
fn missing_environment_variables_are_named_with_their_line() {
    check(
        "missing_env_var",
        &[(
            "pipeline.yaml",
            &format!(
                "data_dir: ${{AUDITFLOW_GOLDEN_UNSET_DIR}}\nsources:\n  in:\n    type: stdin\n    \
                 max_line_bytes: ${{AUDITFLOW_GOLDEN_UNSET_MAX}}\n{SINK}"
            ),
        )],
    );
}

#[test]
fn bad_yaml_syntax() {
    check(
        "bad_yaml",
        &[(
            "pipeline.yaml",
            "sources:\n  in:\n    type: stdin\n  sinks:\n out: [\n",
        )],
    );
}

#[test]
fn bad_toml_syntax() {
    check(
        "bad_toml",
        &[(
            "pipeline.toml",
            "[sources.in]\ntype = \"stdin\"\n[sinks.out\ntype = \"stdout\"\n",
        )],
    );
}

#[test]
fn bad_json_syntax() {
    check(
        "bad_json",
        &[(
            "pipeline.json",
            "{\"sources\": {\"in\": {\"type\": \"stdin\"}},\n \"sinks\": {\"out\": {\"type\": \"stdout\", \"inputs\": [\"in\"]},}\n",
        )],
    );
}

#[test]
fn every_problem_at_once_sorted_by_file_and_location() {
    check(
        "several",
        &[
            (
                "base.yaml",
                "data_dir: 42\nmetrcs:\n  address: 127.0.0.1:9598\n\
                 sources:\n  in:\n    type: stdin\n    max_line_bytes: -1\n  spare:\n    type: stdin\n\
                 transforms:\n  loop:\n    type: passthrough\n    inputs: [loop]\n",
            ),
            (
                "sinks.toml",
                "[sinks.out]\ntype = \"stdout\"\ninputs = [\"in\", \"nowhere\"]\npretty = true\n\
                 [sinks.drop]\ntype = \"blackhole\"\n",
            ),
        ],
    );
}

/// Durations that cannot work (0, or past their range's top, up to `u64::MAX`): refused by
/// every plugin and at the top level, each with its file, id, field and range.
const BAD_DURATIONS: [(&str, &str); 2] = [
    (
        "sources.yaml",
        "shutdown_timeout_secs: 0\n\
         sources:\n  logs:\n    type: file\n    include: [/var/log/audit/*.log]\n\
         \x20   glob_interval_ms: 0\n    forget_after_secs: 99999999999\n\
         \x20 hook:\n    type: webhook\n    allow_plaintext: true\n    address: 127.0.0.1:0\n\
         \x20   ack_timeout_ms: 18446744073709551615\n",
    ),
    (
        "sinks.yaml",
        "sinks:\n  out:\n    type: https\n    inputs: [logs, hook]\n\
         \x20   uri: https://collector.example/ingest\n\
         \x20   request: { timeout_ms: 0, retry_max_backoff_ms: 86400001 }\n",
    ),
];

#[test]
fn durations_out_of_range_are_each_reported_with_their_range() {
    check("durations", &BAD_DURATIONS);
}

/// `validate` and `run` give the same code for the same bad pipeline (2), and `run`
/// prints the same problems, on standard error.
#[test]
fn validate_and_run_exit_2_alike_for_the_same_bad_pipeline() {
    let workspace = Workspace::new();
    for (name, contents) in BAD_DURATIONS {
        workspace.write(name, contents);
    }
    let validate = auditflow(
        workspace.path(),
        &["validate", "sources.yaml", "sinks.yaml"],
    );
    let run = auditflow(workspace.path(), &["run", "sources.yaml", "sinks.yaml"]);
    let report = String::from_utf8_lossy(&validate.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(validate.status.code(), Some(2), "{report}");
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    let (problems, count) = report.trim_end().rsplit_once('\n').unwrap();
    assert_eq!(count, "6 problems found");
    assert_eq!(
        stderr,
        format!("{problems}\nauditflow: the pipeline has 6 problems; nothing was started\n")
    );
}

#[test]
fn a_valid_pipeline_exits_0() {
    let workspace = Workspace::new();
    workspace.write(
        "pipeline.yaml",
        &format!("sources:\n  in:\n    type: stdin\n{SINK}"),
    );
    let output = auditflow(workspace.path(), &["validate", "pipeline.yaml"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "valid: 1 source(s), 0 transform(s), 1 sink(s)\n"
    );
}

#[test]
fn run_of_a_bad_pipeline_exits_2_with_the_problem_on_stderr() {
    let workspace = Workspace::new();
    workspace.write(
        "pipeline.yaml",
        &format!("sources:\n  in:\n    type: stdin\n    max_line_bytes: lots\n{SINK}"),
    );
    let output = auditflow(workspace.path(), &["run", "pipeline.yaml"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "",
        "stdout carries only data"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "pipeline.yaml: sources.in.max_line_bytes: invalid type: string \"lots\", expected usize",
            "auditflow: the pipeline has 1 problem; nothing was started",
        ]
    );

    let missing = auditflow(workspace.path(), &["run", "missing.yaml"]);
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.starts_with("missing.yaml: cannot read the file: "),
        "{stderr}"
    );
}

#[test]
fn concurrency_is_a_positive_number_and_not_for_dedupe() {
    check(
        "concurrency",
        &[(
            "pipeline.yaml",
            "sources:\n  in:\n    type: stdin\ntransforms:\n  once:\n    type: dedupe\n    inputs: [in]\n    concurrency: 4\n\
             \x20 none:\n    type: filter\n    inputs: [once]\n    condition: 'verb != \"watch\"'\n    concurrency: 0\n\
             sinks:\n  out:\n    type: stdout\n    inputs: [none]\n",
        )],
    );
}

/// `redact` patterns that each compile alone but not together (the prefilter's one set
/// passes the regex size limit): `validate` said valid and `run` panicked building the
/// transform. Both now name the field and exit 2, the code of an invalid pipeline.
#[test]
fn redact_patterns_past_the_regex_size_limit_fail_validate_and_run_alike() {
    let workspace = Workspace::new();
    workspace.write(
        "pipeline.yaml",
        "sources:\n  in:\n    type: stdin\n\
         transforms:\n  scrub:\n    type: redact\n    inputs: [in]\n    patterns:\n\
         \x20     word_a: 'a=\\w{100}'\n      word_b: 'b=\\w{100}'\n\
         \x20     word_c: 'c=\\w{100}'\n      word_d: 'd=\\w{100}'\n\
         sinks:\n  out:\n    type: stdout\n    inputs: [scrub]\n",
    );
    let problem = "pipeline.yaml: transforms.scrub.patterns: the patterns together compile past \
                   the regex size limit of 10 MiB: use fewer or smaller patterns (a large \
                   repetition count such as `{1000}`, or a Unicode class such as `\\w` \
                   repeated, makes a pattern large; `[A-Za-z0-9_]` or a smaller count keeps \
                   it small)";

    let validate = auditflow(workspace.path(), &["validate", "pipeline.yaml"]);
    let stdout = String::from_utf8_lossy(&validate.stdout);
    assert_eq!(validate.status.code(), Some(2), "{stdout}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [problem, "1 problem found"]
    );

    let run = auditflow(workspace.path(), &["run", "pipeline.yaml"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            problem,
            "auditflow: the pipeline has 1 problem; nothing was started"
        ]
    );
}
