//! Loading pipelines, through the real binary: several files (YAML, TOML, JSON) merge into
//! one, `${VAR:-default}` interpolation, and `AUDITFLOW_<SECTION>__<ID>__<OPTION>`
//! overrides. Each is shown by what the running pipeline does with its input.

use std::path::Path;
use std::process::Output;

use auditflow_e2e::{run_to_end, Workspace};

const SHORT: &str = r#"{"verb":"get","n":1}"#;

/// An event of about 300 bytes: longer than a 64-byte `max_line_bytes`.
fn long_line() -> String {
    format!(r#"{{"verb":"list","padding":"{}"}}"#, "x".repeat(280))
}

/// Runs `auditflow <args>` in `dir` with `env` (and no other `AUDITFLOW_*` variables),
/// feeding `input` on stdin and closing it.
fn auditflow(dir: &Path, args: &[&str], env: &[(&str, &str)], input: &str) -> Output {
    run_to_end(dir, args, env, input.as_bytes())
}

/// `run` with `SHORT` and a long line as input; returns stdout's lines.
fn run_lines(workspace: &Workspace, files: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let input = format!("{SHORT}\n{}\n", long_line());
    let mut args = vec!["run"];
    args.extend_from_slice(files);
    let output = auditflow(workspace.path(), &args, env, &input);
    assert!(
        output.status.success(),
        "exit {}; stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn data_dir(workspace: &Workspace) -> String {
    workspace.path().join("data").display().to_string()
}

#[test]
fn yaml_toml_and_json_files_merge_with_later_files_winning() {
    let workspace = Workspace::new();
    workspace.write(
        "base.yaml",
        &format!(
            "data_dir: {}\nsources:\n  in:\n    type: stdin\n    max_line_bytes: 64\n\
             sinks:\n  out:\n    type: stdout\n    inputs: [in]\n",
            data_dir(&workspace)
        ),
    );
    workspace.write(
        "more-sinks.toml",
        "[sinks.count]\ntype = \"blackhole\"\ninputs = [\"in\"]\n",
    );
    workspace.write(
        "bigger.json",
        r#"{"sources": {"in": {"max_line_bytes": 100000}}, "shutdown_timeout_secs": 5}"#,
    );

    let graph = auditflow(
        workspace.path(),
        &["graph", "base.yaml", "more-sinks.toml", "bigger.json"],
        &[],
        "",
    );
    let dot = String::from_utf8(graph.stdout).unwrap();
    assert!(graph.status.success(), "{dot}");
    for edge in ["\"in\" -> \"count\";", "\"in\" -> \"out\";"] {
        assert!(dot.contains(edge), "{edge} missing from:\n{dot}");
    }

    // Alone, the base file's 64-byte limit drops the long line ...
    assert_eq!(run_lines(&workspace, &["base.yaml"], &[]), [SHORT]);
    // ... merged, the JSON file's limit replaces it while the YAML file's `type` stays.
    assert_eq!(
        run_lines(
            &workspace,
            &["base.yaml", "more-sinks.toml", "bigger.json"],
            &[]
        ),
        [SHORT.to_owned(), long_line()]
    );
}

#[test]
fn variables_are_interpolated_with_defaults() {
    let workspace = Workspace::new();
    workspace.write(
        "pipeline.yaml",
        &format!(
            "data_dir: ${{E2E_DATA_DIR:-{}}}\n\
             sources:\n  in:\n    type: stdin\n    max_line_bytes: ${{E2E_MAX_LINE_BYTES:-64}}\n\
             sinks:\n  out:\n    type: stdout\n    inputs: [in]\n",
            data_dir(&workspace)
        ),
    );
    assert_eq!(run_lines(&workspace, &["pipeline.yaml"], &[]), [SHORT]);
    assert_eq!(
        run_lines(
            &workspace,
            &["pipeline.yaml"],
            &[("E2E_MAX_LINE_BYTES", "100000")]
        ),
        [SHORT.to_owned(), long_line()]
    );
    // Empty counts as unset, as in a shell.
    assert_eq!(
        run_lines(
            &workspace,
            &["pipeline.yaml"],
            &[("E2E_MAX_LINE_BYTES", "")]
        ),
        [SHORT]
    );
}

#[test]
fn upper_case_environment_overrides_reach_lower_case_options() {
    let workspace = Workspace::new();
    workspace.write(
        "pipeline.yaml",
        &format!(
            "data_dir: {}\nsources:\n  in:\n    type: stdin\n\
             sinks:\n  out:\n    type: stdout\n    inputs: [in]\n",
            data_dir(&workspace)
        ),
    );
    assert_eq!(
        run_lines(&workspace, &["pipeline.yaml"], &[]),
        [SHORT.to_owned(), long_line()]
    );
    assert_eq!(
        run_lines(
            &workspace,
            &["pipeline.yaml"],
            &[("AUDITFLOW_SOURCES__IN__MAX_LINE_BYTES", "64")]
        ),
        [SHORT]
    );
    // Even the type: the sink becomes a blackhole and stdout stays empty.
    assert_eq!(
        run_lines(
            &workspace,
            &["pipeline.yaml"],
            &[("AUDITFLOW_SINKS__OUT__TYPE", "blackhole")]
        ),
        Vec::<String>::new()
    );

    // An override is checked like the file: a wrong one is a located problem.
    let output = auditflow(
        workspace.path(),
        &["validate", "pipeline.yaml"],
        &[("AUDITFLOW_SINKS__OUT__PRETTY", "true")],
        "",
    );
    assert_eq!(output.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("sinks.out.pretty: unknown option `pretty`"),
        "{stdout}"
    );
}
