//! `auditflow test`: the unit tests a pipeline carries in its `tests:` section.
//!
//! Each test puts events in front of a transform (`insert_at`), runs them through that
//! transform and every transform downstream of it that leads to a checked one, and
//! checks what came out (`outputs`: conditions or exact events; `no_outputs_from`).
//! No source or sink is built, nothing listens, and the transforms' data directories are
//! in a temporary directory removed at the end.
//!
//! The one design decision: the transforms are the pipeline's own, loaded and built by
//! the same code as `run` (the registry, `auditflow_config::load`, `TransformConfig::build`),
//! and run synchronously one batch per input, each test on fresh instances, so a test
//! sees what the running pipeline would do to the same events, and a stateful transform
//! (`dedupe`) starts empty in every test.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use auditflow_config::{AnyConfig, ConfigError, Pipeline, Registry, TestsSection};
use auditflow_core::condition::Condition;
use auditflow_core::{Batch, BuildContext, ComponentKind, Event, Transform};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

/// One test as written in a `tests:` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestSpec {
    /// What the test is called in the output (`test <name> ... ok`); unique in a pipeline.
    name: String,
    /// The events to put in, each list in front of one transform.
    inputs: Vec<InputSpec>,
    /// What must come out of which transforms.
    #[serde(default)]
    outputs: Vec<OutputSpec>,
    /// Transforms that must let no event out for these inputs.
    #[serde(default)]
    no_outputs_from: Vec<String>,
}

/// Events put in front of one transform, as if they came from its inputs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSpec {
    /// The transform that receives the events.
    insert_at: String,
    /// The events, inline: each a mapping (YAML or JSON), or a string holding one JSON
    /// object (its bytes reach the transform exactly as written). Or `file`.
    events: Option<Vec<Value>>,
    /// A file of events, one JSON object per line, relative to the pipeline file. Or
    /// `events`.
    file: Option<PathBuf>,
}

/// What one transform must let out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputSpec {
    /// The transform whose output is checked.
    extract_from: String,
    /// Conditions (docs/conditions.md) that every event it lets out must satisfy; at
    /// least one event must come out.
    #[serde(default)]
    conditions: Vec<String>,
    /// The exact events it must let out, in order (compared as JSON values: key order and
    /// spacing do not matter), inline as for an input. Or `file`.
    events: Option<Vec<Value>>,
    /// The exact events it must let out, from a file of one JSON object per line,
    /// relative to the pipeline file. Or `events`.
    file: Option<PathBuf>,
}

/// A test ready to run: events parsed, conditions compiled, transforms chosen.
struct UnitTest {
    name: String,
    /// Where it is written: `pipelines/x.yaml: tests[2]`.
    origin: String,
    inputs: Vec<(String, Vec<Event>)>,
    outputs: Vec<ExpectedOutput>,
    no_outputs_from: Vec<String>,
    /// The transforms this test runs: downstream of an `insert_at` and upstream of (or
    /// being) a checked transform.
    under_test: BTreeSet<String>,
}

struct ExpectedOutput {
    extract_from: String,
    conditions: Vec<Condition>,
    events: Option<Vec<Value>>,
}

/// Runs every test of the pipeline made of `files` (merged as `run` merges them).
pub(crate) fn test(files: &[PathBuf], registry: &Registry) -> ExitCode {
    let pipeline = match auditflow_config::load(files, registry) {
        Ok(pipeline) => pipeline,
        Err(errors) => return crate::run::config_failure(&errors),
    };
    let tests = match compile(&pipeline) {
        Ok(tests) => tests,
        Err(errors) => return test_config_failure(&errors),
    };
    let scratch = match tempfile::Builder::new().prefix("auditflow-test-").tempdir() {
        Ok(dir) => dir,
        Err(error) => {
            eprintln!("auditflow: cannot create a temporary directory for the transforms' data_dir: {error}");
            return ExitCode::from(1);
        }
    };
    println!(
        "running {} test{}",
        tests.len(),
        if tests.len() == 1 { "" } else { "s" }
    );
    let mut failures = Vec::new();
    for test in &tests {
        let ran = match run_test(&pipeline, test, scratch.path()) {
            Ok(ran) => ran,
            Err(errors) => return test_config_failure(&errors),
        };
        let problems = check(test, &ran);
        if problems.is_empty() {
            println!("test {} ... {}", test.name, console::style("ok").green());
        } else {
            println!("test {} ... {}", test.name, console::style("FAILED").red());
            failures.push((test, problems));
        }
    }
    if !failures.is_empty() {
        println!("\nfailures:");
        for (test, problems) in &failures {
            println!("\n---- {} ({}) ----", test.name, test.origin);
            for problem in problems {
                println!("{problem}");
            }
        }
        println!("\nfailures:");
        for (test, _) in &failures {
            println!("    {}", test.name);
        }
    }
    let passed = tests.len() - failures.len();
    let verdict = match failures.is_empty() {
        true => console::style("ok").green(),
        false => console::style("FAILED").red(),
    };
    println!(
        "\ntest result: {verdict}. {passed} passed; {} failed",
        failures.len()
    );
    match failures.is_empty() {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(1),
    }
}

/// A test section is invalid: exit 2, nothing ran.
fn test_config_failure(errors: &[ConfigError]) -> ExitCode {
    for error in errors {
        eprintln!("{error}");
    }
    eprintln!(
        "auditflow: the tests have {} problem{}; no test ran",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    ExitCode::from(2)
}

/// The transforms of `pipeline`: id -> inputs.
fn transforms(pipeline: &Pipeline) -> BTreeMap<&str, &[String]> {
    pipeline
        .components
        .iter()
        .filter(|component| component.kind == ComponentKind::Transform)
        .map(|component| (component.id.as_str(), component.inputs.as_slice()))
        .collect()
}

/// Parses and checks every test of every section, collecting every problem.
fn compile(pipeline: &Pipeline) -> Result<Vec<UnitTest>, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut tests = Vec::new();
    if pipeline.tests.is_empty() {
        errors.push(ConfigError::new(
            "auditflow",
            "",
            "no tests: none of the files has a `tests:` section (docs/testing.md)",
        ));
    }
    let graph = transforms(pipeline);
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for section in &pipeline.tests {
        let Some(items) = section.value.as_array() else {
            errors.push(ConfigError::new(
                &section.file,
                "tests",
                "expected a list of tests, each with `name`, `inputs` and `outputs` or `no_outputs_from`",
            ));
            continue;
        };
        for (index, item) in items.iter().enumerate() {
            let here = match item.get("name").and_then(Value::as_str) {
                Some(name) => format!("tests[{index}] ({name:?})"),
                None => format!("tests[{index}]"),
            };
            let mut fail = |field: &str, message: String| {
                let location = match field {
                    "" => here.clone(),
                    field => format!("{here}.{field}"),
                };
                errors.push(ConfigError::new(&section.file, location, message));
            };
            let spec: TestSpec = match serde_path_to_error::deserialize(item) {
                Ok(spec) => spec,
                Err(error) => {
                    let path = error.path().to_string();
                    let path = if path == "." { String::new() } else { path };
                    fail(&path, error.into_inner().to_string());
                    continue;
                }
            };
            if let Some(first) = names.insert(spec.name.clone(), section.file.clone()) {
                fail(
                    "name",
                    format!("another test (in {first}) has this name; names must be unique"),
                );
            }
            let origin = format!("{}: tests[{index}]", section.file);
            if let Some(test) = compile_test(spec, section, origin, pipeline, &graph, &mut fail) {
                tests.push(test);
            }
        }
    }
    if errors.is_empty() {
        Ok(tests)
    } else {
        errors.sort();
        errors.dedup();
        Err(errors)
    }
}

fn compile_test(
    spec: TestSpec,
    section: &TestsSection,
    origin: String,
    pipeline: &Pipeline,
    graph: &BTreeMap<&str, &[String]>,
    fail: &mut impl FnMut(&str, String),
) -> Option<UnitTest> {
    let known = graph.keys().copied().collect::<Vec<_>>().join(", ");
    let known = if known.is_empty() {
        "(the pipeline has none)".to_owned()
    } else {
        known
    };
    let is_transform = |id: &str, field: &str, fail: &mut dyn FnMut(&str, String)| {
        let found = graph.contains_key(id);
        if !found {
            let what = match pipeline.component(id) {
                Some(component) => format!(
                    "`{id}` is a {}; tests run transforms only (no source or sink starts)",
                    component.kind
                ),
                None => format!("`{id}` is no transform of this pipeline"),
            };
            fail(field, format!("{what}; transforms: {known}"));
        }
        found
    };
    let mut ok = true;
    if spec.inputs.is_empty() {
        fail("inputs", "a test needs at least one input".into());
        ok = false;
    }
    if spec.outputs.is_empty() && spec.no_outputs_from.is_empty() {
        fail(
            "",
            "this test checks nothing: give `outputs` (with `extract_from`) or `no_outputs_from`"
                .into(),
        );
        ok = false;
    }
    let mut inputs = Vec::new();
    for (index, input) in spec.inputs.into_iter().enumerate() {
        let field = format!("inputs[{index}]");
        ok &= is_transform(&input.insert_at, &format!("{field}.insert_at"), fail);
        let events = events_of(input.events, input.file, section, &field, fail).map(|values| {
            let mut events = Vec::with_capacity(values.len());
            for (at, value) in values {
                match event_of(value) {
                    Ok(event) => events.push(event),
                    Err(message) => {
                        fail(&at, message);
                        ok = false;
                    }
                }
            }
            events
        });
        match events {
            Some(events) if events.is_empty() => {
                fail(&field, "no events: give at least one".into());
                ok = false;
            }
            Some(events) => inputs.push((input.insert_at, events)),
            None => ok = false,
        }
    }
    let mut outputs = Vec::new();
    for (index, output) in spec.outputs.into_iter().enumerate() {
        let field = format!("outputs[{index}]");
        ok &= is_transform(&output.extract_from, &format!("{field}.extract_from"), fail);
        let mut conditions = Vec::new();
        for (at, text) in output.conditions.iter().enumerate() {
            match Condition::parse(text) {
                Ok(condition) => conditions.push(condition),
                Err(error) => {
                    fail(&format!("{field}.conditions[{at}]"), error.to_string());
                    ok = false;
                }
            }
        }
        let events = match (&output.events, &output.file) {
            (None, None) => None,
            _ => match events_of(output.events, output.file, section, &field, fail) {
                Some(values) => {
                    let mut events = Vec::with_capacity(values.len());
                    for (at, value) in values {
                        match expected_value(value) {
                            Ok(value) => events.push(value),
                            Err(message) => {
                                fail(&at, message);
                                ok = false;
                            }
                        }
                    }
                    Some(events)
                }
                None => {
                    ok = false;
                    None
                }
            },
        };
        if conditions.is_empty() && events.is_none() && ok {
            fail(
                &field,
                "this output checks nothing: give `conditions`, or the exact `events` (or `file`)"
                    .into(),
            );
            ok = false;
        }
        outputs.push(ExpectedOutput {
            extract_from: output.extract_from,
            conditions,
            events,
        });
    }
    for (index, id) in spec.no_outputs_from.iter().enumerate() {
        ok &= is_transform(id, &format!("no_outputs_from[{index}]"), fail);
    }
    if !ok {
        return None;
    }

    // Which transforms run: downstream of an input, and leading to a checked transform.
    let downstream = reach(inputs.iter().map(|(id, _)| id.as_str()), |id| {
        graph
            .iter()
            .filter(|(_, inputs)| inputs.iter().any(|input| input == id))
            .map(|(reader, _)| *reader)
            .collect()
    });
    let checked: Vec<(String, &str)> = outputs
        .iter()
        .enumerate()
        .map(|(index, output)| {
            (
                format!("outputs[{index}].extract_from"),
                output.extract_from.as_str(),
            )
        })
        .chain(
            spec.no_outputs_from
                .iter()
                .enumerate()
                .map(|(index, id)| (format!("no_outputs_from[{index}]"), id.as_str())),
        )
        .collect();
    let mut unreachable = false;
    for (field, id) in &checked {
        if !downstream.contains(*id) {
            let from: Vec<&str> = inputs.iter().map(|(id, _)| id.as_str()).collect();
            fail(
                field,
                format!(
                    "`{id}` is not downstream of the inputs ({}): no event of this test can reach it, so this check could never fail",
                    from.join(", ")
                ),
            );
            unreachable = true;
        }
    }
    if unreachable {
        return None;
    }
    let upstream = reach(checked.iter().map(|(_, id)| *id), |id| {
        graph
            .get(id)
            .map(|inputs| inputs.iter().map(String::as_str).collect())
            .unwrap_or_default()
    });
    let under_test = downstream
        .intersection(&upstream)
        .map(|id| id.to_string())
        .collect();
    Some(UnitTest {
        name: spec.name,
        origin,
        inputs,
        outputs,
        no_outputs_from: spec.no_outputs_from,
        under_test,
    })
}

/// Every id reachable from `start` (included) through `next`.
fn reach<'a>(
    start: impl Iterator<Item = &'a str>,
    next: impl Fn(&str) -> Vec<&'a str>,
) -> BTreeSet<&'a str> {
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut queue: VecDeque<&str> = start.collect();
    while let Some(id) = queue.pop_front() {
        if seen.insert(id) {
            queue.extend(next(id));
        }
    }
    seen
}

/// The events of an input or output: inline (`events`) or from `file`, each with the
/// location to blame it on.
fn events_of(
    inline: Option<Vec<Value>>,
    file: Option<PathBuf>,
    section: &TestsSection,
    field: &str,
    fail: &mut impl FnMut(&str, String),
) -> Option<Vec<(String, Value)>> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            fail(field, "give `events` or `file`, not both".into());
            None
        }
        (None, None) => {
            fail(
                field,
                "no events: give `events` (inline) or `file` (one JSON object per line)".into(),
            );
            None
        }
        (Some(events), None) => Some(
            events
                .into_iter()
                .enumerate()
                .map(|(index, value)| (format!("{field}.events[{index}]"), value))
                .collect(),
        ),
        (None, Some(file)) => {
            let path = Path::new(&section.file)
                .parent()
                .unwrap_or(Path::new(""))
                .join(&file);
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(error) => {
                    fail(
                        &format!("{field}.file"),
                        format!(
                            "cannot read {} (a path relative to the pipeline file): {error}",
                            path.display()
                        ),
                    );
                    return None;
                }
            };
            Some(
                text.lines()
                    .enumerate()
                    .filter(|(_, line)| !line.trim().is_empty())
                    .map(|(number, line)| {
                        (
                            format!("{field}.file ({}, line {})", path.display(), number + 1),
                            Value::String(line.to_owned()),
                        )
                    })
                    .collect(),
            )
        }
    }
}

/// An input event: a mapping, or a string holding JSON (its bytes kept as written).
fn event_of(value: Value) -> Result<Event, String> {
    let bytes = match value {
        Value::String(text) => Bytes::from(text),
        value @ Value::Object(_) => {
            Bytes::from(serde_json::to_vec(&value).map_err(|e| e.to_string())?)
        }
        other => {
            return Err(format!(
                "expected an event (a mapping, or a string holding a JSON object), found {other}"
            ))
        }
    };
    Event::from_bytes(bytes).map_err(|error| format!("not an audit event: {error}"))
}

/// An expected event, as a JSON value to compare with.
fn expected_value(value: Value) -> Result<Value, String> {
    match value {
        Value::String(text) => match serde_json::from_str::<Value>(&text) {
            Ok(value @ Value::Object(_)) => Ok(value),
            Ok(other) => Err(format!("expected a JSON object, found {other}")),
            Err(error) => Err(format!("not JSON: {error}")),
        },
        value @ Value::Object(_) => Ok(value),
        other => Err(format!(
            "expected an event (a mapping, or a string holding a JSON object), found {other}"
        )),
    }
}

/// What each transform under test let out, in order.
type Outputs = BTreeMap<String, Vec<Event>>;

/// Builds the transforms of `test` afresh and runs its inputs through them.
fn run_test(
    pipeline: &Pipeline,
    test: &UnitTest,
    scratch: &Path,
) -> Result<Outputs, Vec<ConfigError>> {
    let mut built: BTreeMap<&str, Box<dyn Transform>> = BTreeMap::new();
    let mut errors = Vec::new();
    // Each test gets its own folder: a transform that keeps state on disk starts empty.
    let data_dir = scratch.join(sanitize(&test.name));
    for component in &pipeline.components {
        if !test.under_test.contains(&component.id) {
            continue;
        }
        let AnyConfig::Transform(config) = &component.config else {
            continue;
        };
        let cx = BuildContext::unobserved(&component.id, data_dir.join(&component.id));
        match config.build(cx) {
            Ok(transform) => {
                built.insert(component.id.as_str(), transform);
            }
            Err(error) => {
                let here = format!("transforms.{}", component.id);
                let location = match &error.field {
                    Some(field) => format!("{here}.{field}"),
                    None => here,
                };
                errors.push(ConfigError::new(
                    &component.file,
                    location,
                    format!("{} (while building it for {})", error.message, test.origin),
                ));
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let readers: BTreeMap<&str, Vec<&str>> = pipeline
        .components
        .iter()
        .filter(|component| test.under_test.contains(&component.id))
        .flat_map(|component| {
            component
                .inputs
                .iter()
                .map(move |input| (input.as_str(), component.id.as_str()))
        })
        .fold(BTreeMap::new(), |mut readers, (input, reader)| {
            readers.entry(input).or_default().push(reader);
            readers
        });
    let mut outputs = Outputs::new();
    for (insert_at, events) in &test.inputs {
        // One batch per input, passed on as the topology passes it (fan-out shares it).
        let mut queue = VecDeque::from([(insert_at.as_str(), Batch::new(events.clone()))]);
        while let Some((id, mut batch)) = queue.pop_front() {
            let Some(transform) = built.get_mut(id) else {
                continue;
            };
            transform.transform(&mut batch);
            outputs
                .entry(id.to_owned())
                .or_default()
                .extend(batch.events.iter().cloned());
            for reader in readers.get(id).into_iter().flatten() {
                queue.push_back((reader, batch.clone()));
            }
        }
    }
    Ok(outputs)
}

/// A test name as a folder name.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// How many failing events a check prints before saying how many more there are.
const SHOWN_EVENTS: usize = 3;

/// Every way `ran` differs from what `test` expects, each ready to print.
fn check(test: &UnitTest, ran: &Outputs) -> Vec<String> {
    let mut problems = Vec::new();
    let none = Vec::new();
    for (index, expected) in test.outputs.iter().enumerate() {
        let id = &expected.extract_from;
        let actual = ran.get(id).unwrap_or(&none);
        if !expected.conditions.is_empty() && actual.is_empty() {
            problems.push(format!(
                "outputs[{index}]: `{id}` let out no event, so its conditions were never checked (use no_outputs_from to expect none)"
            ));
        }
        for condition in &expected.conditions {
            let failing: Vec<(usize, &Event)> = actual
                .iter()
                .enumerate()
                .filter(|(_, event)| !condition.matches(event))
                .collect();
            if failing.is_empty() {
                continue;
            }
            let mut problem = format!(
                "outputs[{index}]: {} of the {} events out of `{id}` do not satisfy `{}`:",
                failing.len(),
                actual.len(),
                condition.as_str()
            );
            for (at, event) in failing.iter().take(SHOWN_EVENTS) {
                let _ = write!(problem, "\nevent {at}:\n{}", pretty(&event.to_value()));
            }
            if failing.len() > SHOWN_EVENTS {
                let _ = write!(problem, "\n... and {} more", failing.len() - SHOWN_EVENTS);
            }
            problems.push(problem);
        }
        if let Some(events) = &expected.events {
            let actual: Vec<Value> = actual.iter().map(Event::to_value).collect();
            if &actual != events {
                problems.push(format!(
                    "outputs[{index}]: the events out of `{id}` differ from the expected ones ({} expected, {} out):\n{}",
                    events.len(),
                    actual.len(),
                    diff(events, &actual)
                ));
            }
        }
    }
    for id in &test.no_outputs_from {
        let Some(actual) = ran.get(id).filter(|events| !events.is_empty()) else {
            continue;
        };
        let mut problem = format!(
            "no_outputs_from: `{id}` let out {} event{}, expected none:",
            actual.len(),
            if actual.len() == 1 { "" } else { "s" }
        );
        for (at, event) in actual.iter().enumerate().take(SHOWN_EVENTS) {
            let _ = write!(problem, "\nevent {at}:\n{}", pretty(&event.to_value()));
        }
        if actual.len() > SHOWN_EVENTS {
            let _ = write!(problem, "\n... and {} more", actual.len() - SHOWN_EVENTS);
        }
        problems.push(problem);
    }
    problems
}

/// A value as indented JSON with keys sorted, so that two events line up in a diff
/// whatever order their fields came in.
fn pretty(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(key, value)| (key.clone(), sorted(value)))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string_pretty(&sorted(value)).unwrap_or_else(|_| value.to_string())
}

/// A unified diff of the expected and actual events, line by line.
fn diff(expected: &[Value], actual: &[Value]) -> String {
    let expected = pretty(&Value::Array(expected.to_vec()));
    let actual = pretty(&Value::Array(actual.to_vec()));
    let diff = similar::TextDiff::from_lines(&expected, &actual);
    let mut out = String::new();
    for hunk in diff
        .unified_diff()
        .context_radius(3)
        .header("expected", "actual")
        .iter_hunks()
    {
        for line in hunk.to_string().lines() {
            let styled = match line.chars().next() {
                Some('-') => console::style(line).red().to_string(),
                Some('+') => console::style(line).green().to_string(),
                _ => line.to_owned(),
            };
            out.push_str(&styled);
            out.push('\n');
        }
    }
    // The header once, before the hunks.
    format!("--- expected\n+++ actual\n{}", out.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_shows_only_the_field_that_differs_whatever_the_key_order() {
        let expected =
            vec![serde_json::json!({"verb": "get", "user": {"username": "alice"}, "code": 403})];
        let actual =
            vec![serde_json::json!({"code": 403, "user": {"username": "bob"}, "verb": "get"})];
        let shown = diff(&expected, &actual);
        let changed: Vec<&str> = shown
            .lines()
            .filter(|line| {
                (line.starts_with('-') || line.starts_with('+'))
                    && !line.starts_with("---")
                    && !line.starts_with("+++")
            })
            .collect();
        assert_eq!(
            changed,
            [
                r#"-      "username": "alice""#,
                r#"+      "username": "bob""#
            ],
            "{shown}"
        );
    }

    #[test]
    fn an_event_given_as_a_string_keeps_its_bytes() {
        let text = r#"{"verb":"get",  "auditID":"a"}"#;
        let event = event_of(Value::String(text.to_owned())).unwrap();
        assert_eq!(event.raw().as_ref(), text.as_bytes());
        assert!(event_of(serde_json::json!(["not", "an", "event"])).is_err());
        assert!(event_of(Value::String("{".to_owned())).is_err());
    }

    #[test]
    fn reach_follows_chains_and_stops_at_cycles() {
        let next = |id: &str| match id {
            "a" => vec!["b"],
            "b" => vec!["c", "a"],
            _ => Vec::new(),
        };
        assert_eq!(
            reach(["a"].into_iter(), next)
                .into_iter()
                .collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
    }
}
