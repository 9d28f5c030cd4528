//! What docs/pipelines.md promises about pipeline files, through `validate`, `graph` and
//! `run`: formats by extension, empty files, the component rules (`inputs` as a string,
//! id characters, inputs naming a sink), lists replaced on merge, and nested and list
//! overrides from `AUDITFLOW_<SECTION>__...` variables.

use std::path::Path;
use std::process::Output;

use auditflow_e2e::audit_lines::audit_line;
use auditflow_e2e::{run_to_end, Workspace};

/// Runs the binary in `dir` with only the `AUDITFLOW_*` variables given in `env`.
fn auditflow(dir: &Path, args: &[&str], env: &[(&str, &str)], input: &str) -> Output {
    run_to_end(dir, args, env, input.as_bytes())
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The `a -> b` edges of `graph`'s DOT output, sorted.
fn edges(dot: &str) -> Vec<String> {
    let mut edges: Vec<String> = dot
        .lines()
        .filter(|line| line.contains(" -> "))
        .map(|line| line.trim().trim_end_matches(';').replace('"', ""))
        .collect();
    edges.sort();
    edges
}

const TWO_SOURCES: &str = "sources:\n  x: { type: generator, count: 1, seed: 1 }\n  \
                           y: { type: generator, count: 1, seed: 2 }\n";

#[test]
fn an_unsupported_extension_is_refused_naming_the_file() {
    let workspace = Workspace::new();
    workspace.write(
        "pipeline.ini",
        "sources:\n  in: { type: stdin }\nsinks:\n  out: { type: stdout, inputs: [in] }\n",
    );
    let output = auditflow(workspace.path(), &["validate", "pipeline.ini"], &[], "");
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    let report = stdout(&output);
    assert!(report.starts_with("pipeline.ini: "), "{report}");
    for format in [".yaml", ".toml", ".json"] {
        assert!(report.contains(format), "{report}");
    }
    let run = auditflow(workspace.path(), &["run", "pipeline.ini"], &[], "");
    assert_eq!(run.status.code(), Some(2), "{}", stderr(&run));
    assert!(
        stderr(&run).starts_with("pipeline.ini: "),
        "{}",
        stderr(&run)
    );
}

/// An empty YAML file is an empty pipeline: merged with others it changes nothing.
#[test]
fn an_empty_yaml_file_is_an_empty_pipeline() {
    let workspace = Workspace::new();
    workspace.write("empty.yaml", "");
    workspace.write(
        "pipeline.yaml",
        &format!(
            "data_dir: {}\nsources:\n  in: {{ type: stdin }}\nsinks:\n  out: {{ type: stdout, inputs: [in] }}\n",
            workspace.path().join("data").display()
        ),
    );
    let output = auditflow(
        workspace.path(),
        &["validate", "empty.yaml", "pipeline.yaml", "empty.yaml"],
        &[],
        "",
    );
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert_eq!(
        stdout(&output),
        "valid: 1 source(s), 0 transform(s), 1 sink(s)\n"
    );
    let line = audit_line(3);
    let run = auditflow(
        workspace.path(),
        &["run", "pipeline.yaml", "empty.yaml"],
        &[],
        &format!("{line}\n"),
    );
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    assert_eq!(stdout(&run), format!("{line}\n"));
}

/// `inputs: in` is `inputs: [in]`: the event arrives.
#[test]
fn inputs_given_as_a_string_is_a_list_of_one() {
    let workspace = Workspace::new();
    workspace.write(
        "pipeline.yaml",
        &format!(
            "data_dir: {}\nsources:\n  in:\n    type: stdin\nsinks:\n  out:\n    type: stdout\n    inputs: in\n",
            workspace.path().join("data").display()
        ),
    );
    let line = audit_line(1);
    let run = auditflow(
        workspace.path(),
        &["run", "pipeline.yaml"],
        &[],
        &format!("{line}\n"),
    );
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    assert_eq!(stdout(&run), format!("{line}\n"));
}

#[test]
fn ids_outside_letters_digits_underscore_and_dash_are_refused() {
    let workspace = Workspace::new();
    for (id, valid) in [
        ("api-server_2", true),
        ("api.server", false),
        ("api server", false),
        ("apí", false),
    ] {
        workspace.write(
            "pipeline.yaml",
            &format!(
                "sources:\n  \"{id}\": {{ type: stdin }}\nsinks:\n  out: {{ type: stdout, inputs: [\"{id}\"] }}\n"
            ),
        );
        let output = auditflow(workspace.path(), &["validate", "pipeline.yaml"], &[], "");
        let report = stdout(&output);
        if valid {
            assert_eq!(output.status.code(), Some(0), "{id:?}: {report}");
        } else {
            assert_eq!(output.status.code(), Some(2), "{id:?}: {report}");
            assert!(
                report.contains(&format!("pipeline.yaml: sources.{id}")),
                "{id:?}: {report}"
            );
            assert!(
                report.contains("letters, digits, `_` and `-`"),
                "{id:?}: {report}"
            );
        }
    }
}

#[test]
fn inputs_naming_a_sink_are_refused() {
    let workspace = Workspace::new();
    workspace.write(
        "pipeline.yaml",
        "sources:\n  in: { type: stdin }\nsinks:\n  first: { type: stdout, inputs: [in] }\n  \
         second: { type: blackhole, inputs: [first] }\n",
    );
    let output = auditflow(workspace.path(), &["validate", "pipeline.yaml"], &[], "");
    let report = stdout(&output);
    assert_eq!(output.status.code(), Some(2), "{report}");
    assert!(
        report.contains("pipeline.yaml: sinks.second.inputs: `first` is a sink"),
        "{report}"
    );
}

/// A later file's list replaces the earlier one: `out` keeps only `x`.
#[test]
fn a_later_files_list_replaces_the_earlier_list() {
    let workspace = Workspace::new();
    workspace.write(
        "a.yaml",
        &format!("{TWO_SOURCES}sinks:\n  out: {{ type: blackhole, inputs: [x, y] }}\n"),
    );
    workspace.write(
        "b.yaml",
        "sinks:\n  out: { inputs: [x] }\n  other: { type: blackhole, inputs: [y] }\n",
    );
    let output = auditflow(workspace.path(), &["graph", "a.yaml", "b.yaml"], &[], "");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(edges(&stdout(&output)), ["x -> out", "y -> other"]);
}

/// `AUDITFLOW_SINKS__OUT__INPUTS=[x]` replaces a list; `..__BATCH__MAX_EVENTS` reaches an
/// option one level down, checked and located like the file's own.
#[test]
fn overrides_reach_nested_options_and_replace_lists() {
    let workspace = Workspace::new();
    workspace.write(
        "pipeline.yaml",
        &format!(
            "{TWO_SOURCES}sinks:\n  out:\n    type: https\n    inputs: [x, y]\n    \
             uri: https://collector.example:8443/ingest\n    batch: {{ max_events: 10 }}\n"
        ),
    );
    let graph = auditflow(
        workspace.path(),
        &["graph", "pipeline.yaml"],
        &[
            ("AUDITFLOW_SINKS__OUT__INPUTS", "[x]"),
            ("AUDITFLOW_SINKS__OTHER__TYPE", "blackhole"),
            ("AUDITFLOW_SINKS__OTHER__INPUTS", "[y]"),
        ],
        "",
    );
    assert_eq!(graph.status.code(), Some(0), "{}", stderr(&graph));
    assert_eq!(edges(&stdout(&graph)), ["x -> out", "y -> other"]);

    let nested = auditflow(
        workspace.path(),
        &["validate", "pipeline.yaml"],
        &[("AUDITFLOW_SINKS__OUT__BATCH__MAX_EVENTS", "0")],
        "",
    );
    let report = stdout(&nested);
    assert_eq!(nested.status.code(), Some(2), "{report}");
    assert!(report.contains("sinks.out.batch.max_events"), "{report}");
    // The override replaced only that option: the file's `max_events` alone is valid.
    let plain = auditflow(workspace.path(), &["validate", "pipeline.yaml"], &[], "");
    assert_eq!(plain.status.code(), Some(0), "{}", stdout(&plain));
}
