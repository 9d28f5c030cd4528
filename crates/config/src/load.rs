//! From pipeline files to a checked [`Pipeline`].
//!
//! Each file is interpolated and parsed on its own (so syntax errors and components can
//! be attributed to it), then all of them and the `AUDITFLOW_*` environment are merged
//! with figment, and the merged tree is checked: top-level keys, each component's type
//! and options, and the graph the `inputs` draw.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use auditflow_core::duration::DurationRange;
use auditflow_core::{dead_letter, ComponentKind};
use figment::providers::{Env, Format, Json, Toml, Yaml};
use figment::Figment;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::api::ApiConfig;
use crate::buffer::BufferConfig;
use crate::error::ConfigError;
use crate::interpolate::interpolate;
use crate::registry::{AnyConfig, Registry};

/// Top-level keys a pipeline may have.
const TOP_LEVEL: &[&str] = &[
    "api",
    "data_dir",
    "memory_limit_mb",
    "metrics",
    "shutdown_timeout_secs",
    "sources",
    "transforms",
    "sinks",
    "tests",
];

/// `shutdown_timeout_secs`: draining in-flight events may take up to an hour.
const SHUTDOWN_TIMEOUT_SECS: DurationRange = DurationRange::secs(1, DurationRange::HOUR_SECS);

const KINDS: [ComponentKind; 3] = [
    ComponentKind::Source,
    ComponentKind::Transform,
    ComponentKind::Sink,
];

/// Where the engine serves `/metrics`, `/health` and `/ready`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to listen on, e.g. `0.0.0.0:9598`.
    pub address: SocketAddr,
}

/// A loaded, checked pipeline.
#[derive(Debug)]
pub struct Pipeline {
    /// Where components keep state (checkpoints), one folder per component id.
    pub data_dir: PathBuf,
    /// The `metrics` section: where `/metrics`, `/health` and `/ready` are served; `None`:
    /// not served.
    pub metrics: Option<MetricsConfig>,
    /// The HTTP API (`auditflow tap`); `None`: not served.
    pub api: Option<ApiConfig>,
    /// `memory_limit_mb`: above this much memory (MiB) sources pause. `None` when not set:
    /// `run` then takes 90% of the cgroup's limit, if there is one.
    pub memory_limit_mb: Option<NonZeroU64>,
    /// How long `SIGTERM` waits for in-flight batches to reach the sinks.
    pub shutdown_timeout: Duration,
    /// Sources, then transforms, then sinks, each sorted by id.
    pub components: Vec<Component>,
    /// The `tests:` section of each file that has one, in the order the files were
    /// given; read by `auditflow test` only (`run` and `validate` ignore it).
    pub tests: Vec<TestsSection>,
}

/// One file's `tests:` section, as written (after `${VAR}` interpolation). Kept per file,
/// not merged, so that tests from several files add up and each names its own file.
#[derive(Debug, Clone)]
pub struct TestsSection {
    /// The file as given on the command line.
    pub file: String,
    /// The section's value, parsed by `auditflow test` into its test cases.
    pub value: Value,
}

/// One component of the pipeline.
#[derive(Debug)]
pub struct Component {
    /// The component id: its key under its section, as in metric labels and log fields.
    pub id: String,
    /// The section it was defined in (`sources`, `transforms` or `sinks`).
    pub kind: ComponentKind,
    /// Its `type:` value, the name of the plugin that parses and builds it.
    pub type_name: String,
    /// The outputs it reads, as written in `inputs` (component ids, or `<id>.dead_letter`);
    /// empty for a source. Every one names a component that exists.
    pub inputs: Vec<String>,
    /// The plugin's options, parsed (not yet built).
    pub config: AnyConfig,
    /// Where a sink's input waits (`buffer`); always `Memory` for sources and transforms.
    pub buffer: BufferConfig,
    /// How many bytes of a refused record a dead letter keeps (`max_dead_letter_bytes`,
    /// sources and sinks; 1 MiB unless set).
    pub max_dead_letter_bytes: usize,
    /// How many batches a transform may process at once (`concurrency`); `None`: one per
    /// worker thread, or one for a transform that keeps state across batches.
    pub concurrency: Option<usize>,
    /// The file that defined it (for messages at run time).
    pub file: String,
    /// The component's entry as loaded (after `${VAR}` replacement and merging): type,
    /// inputs, common and plugin options; plus, under the key [`FILES_KEY`], the SHA-256 of
    /// each file its options name (every `*_file` option, nested ones included:
    /// `policy_file`, `bearer_tokens_file`, `tls.key_file`…). A reload rebuilds the
    /// component when it differs, so a changed policy, token list or certificate is read
    /// again by `SIGHUP` even when the pipeline file is unchanged.
    pub definition: Value,
}

impl Pipeline {
    /// The component with id `id`, if the pipeline has one.
    pub fn component(&self, id: &str) -> Option<&Component> {
        self.components.iter().find(|component| component.id == id)
    }
}

/// One pipeline file, parsed on its own.
struct ParsedFile {
    name: String,
    value: Value,
    provider: Figment,
}

/// Loads and checks the pipeline made of `paths` (merged in order: later files override
/// earlier ones) and the `AUDITFLOW_*` environment.
pub fn load(paths: &[PathBuf], registry: &Registry) -> Result<Pipeline, Vec<ConfigError>> {
    load_with_env(paths, registry, |name| std::env::var(name).ok(), true)
}

/// [`load`] with the variable lookup given, and `AUDITFLOW_*` overrides on or off.
pub fn load_with_env(
    paths: &[PathBuf],
    registry: &Registry,
    lookup: impl Fn(&str) -> Option<String>,
    environment_overrides: bool,
) -> Result<Pipeline, Vec<ConfigError>> {
    let mut errors = Vec::new();
    if paths.is_empty() {
        errors.push(ConfigError::new(
            "auditflow",
            "",
            "no pipeline file given: pass one or more YAML, TOML or JSON files",
        ));
        return Err(errors);
    }
    let files: Vec<ParsedFile> = paths
        .iter()
        .filter_map(|path| parse_file(path, &lookup, &mut errors))
        .collect();
    if !errors.is_empty() {
        return Err(sorted(errors));
    }

    let mut figment = Figment::new();
    for file in &files {
        figment = figment.merge(file.provider.clone());
    }
    if environment_overrides {
        figment = figment.merge(
            Env::prefixed("AUDITFLOW_")
                .split("__")
                // figment lower-cases keys only after filtering: compare without case.
                .filter(|key| {
                    let top = top_segment(key.as_str());
                    TOP_LEVEL
                        .iter()
                        .any(|known| known.eq_ignore_ascii_case(top))
                }),
        );
    }
    let merged: Value = match figment.extract() {
        Ok(value) => value,
        Err(error) => {
            for error in error {
                errors.push(ConfigError::new("environment", "", error.to_string()));
            }
            return Err(sorted(errors));
        }
    };
    let origin = Origin { files: &files };
    let mut pipeline = check(&merged, &origin, registry, &mut errors);
    pipeline.tests = files
        .iter()
        .filter_map(|file| {
            let value = file.value.get("tests")?;
            (!value.is_null()).then(|| TestsSection {
                file: file.name.clone(),
                value: value.clone(),
            })
        })
        .collect();
    if errors.is_empty() {
        Ok(pipeline)
    } else {
        Err(sorted(errors))
    }
}

fn top_segment(key: &str) -> &str {
    key.split('.').next().unwrap_or_default()
}

fn sorted(mut errors: Vec<ConfigError>) -> Vec<ConfigError> {
    errors.sort();
    errors.dedup();
    errors
}

fn parse_file(
    path: &Path,
    lookup: &impl Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) -> Option<ParsedFile> {
    let name = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => {
            errors.push(ConfigError::new(
                name,
                "",
                format!("cannot read the file: {error}"),
            ));
            return None;
        }
    };
    let text = match interpolate(&text, lookup) {
        Ok(text) => text,
        Err(missing) => {
            for variable in missing {
                errors.push(ConfigError::new(
                    name.clone(),
                    format!("line {}", variable.line),
                    format!(
                        "environment variable {} is not set (set it, or write ${{{}:-default}})",
                        variable.name, variable.name
                    ),
                ));
            }
            return None;
        }
    };
    let extension = path
        .extension()
        .and_then(|extension| extension.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let provider = match extension.as_str() {
        "yaml" | "yml" => Figment::from(Yaml::string(&text)),
        "toml" => Figment::from(Toml::string(&text)),
        "json" => Figment::from(Json::string(&text)),
        _ => {
            errors.push(ConfigError::new(
                name,
                "",
                "unknown file type: name pipeline files .yaml, .yml, .toml or .json",
            ));
            return None;
        }
    };
    match provider.extract::<Value>() {
        Ok(value @ Value::Object(_)) => Some(ParsedFile {
            name,
            value,
            provider,
        }),
        Ok(Value::Null) => Some(ParsedFile {
            name,
            value: Value::Object(Map::new()),
            provider: Figment::new(),
        }),
        Ok(_) => {
            errors.push(ConfigError::new(
                name,
                "",
                "a pipeline file must be a mapping of data_dir, metrics, sources, transforms, sinks",
            ));
            None
        }
        Err(error) => {
            // The kind alone: figment's full message names its in-memory source
            // ("in YAML source string"), which says nothing the file name does not.
            let message = one_line(&error.kind.to_string());
            errors.push(ConfigError::new(
                name,
                "",
                format!("cannot parse: {message}"),
            ));
            None
        }
    }
}

/// A parser's message on one line: the TOML parser draws the offending source line
/// with a caret below it, which would break "one problem per line".
fn one_line(message: &str) -> String {
    let is_snippet = |line: &str| {
        let line = line.trim();
        line.is_empty()
            || line.starts_with('|')
            || line.starts_with('^')
            || line
                .split_once(" |")
                .is_some_and(|(number, _)| number.chars().all(|c| c.is_ascii_digit()))
    };
    message
        .lines()
        .filter(|line| !is_snippet(line))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Says which file a location came from: the last file that has it, or the environment.
struct Origin<'a> {
    files: &'a [ParsedFile],
}

impl Origin<'_> {
    fn of(&self, path: &[&str]) -> String {
        self.files
            .iter()
            .rev()
            .find(|file| {
                let mut value = &file.value;
                path.iter().all(|key| match value.get(key) {
                    Some(inner) => {
                        value = inner;
                        true
                    }
                    None => false,
                })
            })
            .map(|file| file.name.clone())
            .unwrap_or_else(|| "environment".to_owned())
    }
}

fn check(
    merged: &Value,
    origin: &Origin,
    registry: &Registry,
    errors: &mut Vec<ConfigError>,
) -> Pipeline {
    let empty = Map::new();
    let top = merged.as_object().unwrap_or(&empty);
    for key in top.keys() {
        if !TOP_LEVEL.contains(&key.as_str()) {
            errors.push(ConfigError::new(
                origin.of(&[key]),
                key.clone(),
                format!(
                    "unknown top-level key{}; known keys: {}",
                    suggestion(key, TOP_LEVEL.iter().copied()),
                    TOP_LEVEL.join(", ")
                ),
            ));
        }
    }
    let data_dir = top_level::<PathBuf>(top, "data_dir", origin, errors)
        .unwrap_or_else(|| PathBuf::from("/var/lib/auditflow"));
    let metrics = top_level::<MetricsConfig>(top, "metrics", origin, errors);
    let api = top_level::<ApiConfig>(top, "api", origin, errors);
    for (field, message) in api.iter().flat_map(ApiConfig::problems) {
        errors.push(ConfigError::new(
            origin.of(&["api"]),
            format!("api.{field}"),
            message,
        ));
    }
    let memory_limit_mb = top_level::<NonZeroU64>(top, "memory_limit_mb", origin, errors);
    let shutdown_timeout_secs =
        top_level::<u64>(top, "shutdown_timeout_secs", origin, errors).unwrap_or(30);
    let shutdown_timeout =
        match SHUTDOWN_TIMEOUT_SECS.check("shutdown_timeout_secs", shutdown_timeout_secs) {
            Ok(timeout) => timeout,
            Err(error) => {
                errors.push(ConfigError::new(
                    origin.of(&["shutdown_timeout_secs"]),
                    "shutdown_timeout_secs",
                    error.message,
                ));
                Duration::from_secs(30)
            }
        };

    let mut components = Vec::new();
    for kind in KINDS {
        let section = kind.section();
        let Some(entries) = top.get(section) else {
            continue;
        };
        let Some(entries) = entries.as_object() else {
            if !entries.is_null() {
                errors.push(ConfigError::new(
                    origin.of(&[section]),
                    section,
                    format!("expected a mapping of component ids to {section}"),
                ));
            }
            continue;
        };
        for (id, body) in entries {
            if let Some(component) = check_component(kind, id, body, origin, registry, errors) {
                components.push(component);
            }
        }
    }
    check_graph(top, origin, errors);
    components.sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
    Pipeline {
        data_dir,
        metrics,
        api,
        memory_limit_mb,
        shutdown_timeout,
        components,
        tests: Vec::new(),
    }
}

fn top_level<T: serde::de::DeserializeOwned>(
    top: &Map<String, Value>,
    key: &str,
    origin: &Origin,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let value = top.get(key)?;
    if value.is_null() {
        return None;
    }
    match serde_path_to_error::deserialize::<_, T>(value.clone()) {
        Ok(parsed) => Some(parsed),
        Err(error) => {
            let path = error.path().to_string();
            let location = if path == "." {
                key.to_owned()
            } else {
                format!("{key}.{path}")
            };
            errors.push(ConfigError::new(
                origin.of(&[key]),
                location,
                error.into_inner().to_string(),
            ));
            None
        }
    }
}

fn check_component(
    kind: ComponentKind,
    id: &str,
    body: &Value,
    origin: &Origin,
    registry: &Registry,
    errors: &mut Vec<ConfigError>,
) -> Option<Component> {
    let section = kind.section();
    let file = origin.of(&[section, id]);
    let here = format!("{section}.{id}");
    let mut fail = |location: String, message: String| {
        errors.push(ConfigError::new(file.clone(), location, message));
    };
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        fail(
            here.clone(),
            "a component id uses only letters, digits, `_` and `-`".into(),
        );
    }
    let Some(body) = body.as_object() else {
        fail(
            here,
            "expected a mapping with `type` and the component's options".into(),
        );
        return None;
    };
    let mut definition = body.clone();
    let files = referenced_files(&definition);
    if !files.is_empty() {
        definition.insert(FILES_KEY.to_owned(), Value::Object(files));
    }
    let definition = Value::Object(definition);
    let mut options = body.clone();
    let known = match registry.names(kind).join(", ") {
        names if names.is_empty() => "(none)".to_owned(),
        names => names,
    };
    let type_name = match options.remove("type") {
        Some(Value::String(name)) => name,
        Some(other) => {
            fail(
                format!("{here}.type"),
                format!("expected a string, found {other}; known {kind} types: {known}"),
            );
            return None;
        }
        None => {
            fail(here, format!("missing `type`; known {kind} types: {known}"));
            return None;
        }
    };
    let inputs = match (kind, options.remove("inputs")) {
        (ComponentKind::Source, Some(_)) => {
            fail(
                format!("{here}.inputs"),
                "a source reads from outside the pipeline and takes no inputs".into(),
            );
            Vec::new()
        }
        (_, None | Some(Value::Null)) => Vec::new(),
        (_, Some(Value::Array(items))) => {
            let mut inputs = Vec::new();
            for item in items {
                match item {
                    Value::String(input) => inputs.push(input),
                    other => fail(
                        format!("{here}.inputs"),
                        format!("expected component ids (strings), found {other}"),
                    ),
                }
            }
            inputs
        }
        (_, Some(Value::String(input))) => vec![input],
        (_, Some(other)) => {
            fail(
                format!("{here}.inputs"),
                format!("expected a list of component ids, found {other}"),
            );
            Vec::new()
        }
    };
    // `buffer` is the engine's, common to every sink; the rest is the plugin's.
    let buffer = match (kind, options.remove("buffer")) {
        (ComponentKind::Sink, Some(value)) if !value.is_null() => {
            match BufferConfig::from_value(value) {
                Ok(buffer) => buffer,
                Err(error) => {
                    let location = if error.path.is_empty() {
                        format!("{here}.buffer")
                    } else {
                        format!("{here}.buffer.{}", error.path)
                    };
                    fail(location, error.message);
                    BufferConfig::default()
                }
            }
        }
        (ComponentKind::Sink, _) => BufferConfig::default(),
        (_, Some(value)) => {
            // Not the engine's here: the plugin reports it as an unknown option.
            options.insert("buffer".to_owned(), value);
            BufferConfig::default()
        }
        (_, None) => BufferConfig::default(),
    };
    // `max_dead_letter_bytes` is the engine's too, common to every source and sink.
    let max_dead_letter_bytes = match (kind, options.remove("max_dead_letter_bytes")) {
        (ComponentKind::Transform, Some(value)) => {
            options.insert("max_dead_letter_bytes".to_owned(), value);
            auditflow_core::dead_letter::DEFAULT_MAX_BYTES
        }
        (_, None | Some(Value::Null)) => auditflow_core::dead_letter::DEFAULT_MAX_BYTES,
        (_, Some(value)) => match value.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(bytes) if bytes > 0 => bytes,
            _ => {
                fail(
                    format!("{here}.max_dead_letter_bytes"),
                    format!(
                        "expected a positive number of bytes (the default is 1048576, 1 MiB), found {value}"
                    ),
                );
                auditflow_core::dead_letter::DEFAULT_MAX_BYTES
            }
        },
    };
    // `concurrency` is the engine's, common to every transform.
    let concurrency = match (kind, options.remove("concurrency")) {
        (ComponentKind::Transform, None | Some(Value::Null)) => None,
        (ComponentKind::Transform, Some(value)) => {
            match value.as_u64().and_then(|n| usize::try_from(n).ok()) {
                Some(n) if n > 0 => Some(n),
                _ => {
                    fail(
                        format!("{here}.concurrency"),
                        format!("expected a number of batches, at least 1, found {value}"),
                    );
                    None
                }
            }
        }
        (_, Some(value)) => {
            options.insert("concurrency".to_owned(), value);
            None
        }
        (_, None) => None,
    };
    for problem in buffer.validate() {
        let field = problem.field.unwrap_or_default();
        fail(format!("{here}.{field}"), problem.message);
    }
    let Some(plugin) = registry.find(kind, &type_name) else {
        let elsewhere = KINDS
            .iter()
            .find(|other| registry.find(**other, &type_name).is_some());
        let message = match elsewhere {
            Some(other) => format!(
                "`{type_name}` is a {other} type, not a {kind} type; known {kind} types: {known}"
            ),
            None => format!(
                "unknown {kind} type `{type_name}`{}; known {kind} types: {known}",
                suggestion(&type_name, registry.names(kind).into_iter())
            ),
        };
        fail(format!("{here}.type"), message);
        return None;
    };
    let config = match plugin.parse(Value::Object(options)) {
        Ok(config) => config,
        Err(error) => {
            let location = if error.path.is_empty() {
                here.clone()
            } else {
                format!("{here}.{}", error.path)
            };
            fail(location, describe_option_error(&error.message));
            return None;
        }
    };
    let mut problems = config.validate();
    if let (AnyConfig::Transform(transform), Some(batches)) = (&config, concurrency) {
        if batches > 1 && transform.one_batch_at_a_time() {
            problems.push(auditflow_core::BuildError::field(
                "concurrency",
                format!("a `{type_name}` transform keeps state across batches and processes one batch at a time; remove `concurrency`"),
            ));
        }
    }
    if !problems.is_empty() {
        for problem in problems {
            let location = match &problem.field {
                Some(field) => format!("{here}.{field}"),
                None => here.clone(),
            };
            fail(location, problem.message);
        }
        return None;
    }
    Some(Component {
        id: id.to_owned(),
        kind,
        type_name,
        inputs,
        config,
        buffer,
        max_dead_letter_bytes,
        concurrency,
        file,
        definition,
    })
}

/// The key of a component's [`Component::definition`] that holds the fingerprints of the
/// files its options name; no option can have it (option names have no `#`).
pub const FILES_KEY: &str = "#files";

/// `path -> sha256 hex` (or `"unreadable"`) for every string option whose name ends in
/// `_file`, at any depth of `options`. The build reports an unreadable file; here it only
/// has to differ from a readable one.
fn referenced_files(options: &Map<String, Value>) -> Map<String, Value> {
    fn walk(value: &Value, name: Option<&str>, out: &mut Map<String, Value>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    walk(value, Some(key), out);
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, name, out)),
            Value::String(path) if name.is_some_and(|name| name.ends_with("_file")) => {
                let digest = match std::fs::read(path) {
                    Ok(bytes) => Sha256::digest(&bytes)
                        .iter()
                        .map(|byte| format!("{byte:02x}"))
                        .collect(),
                    Err(_) => "unreadable".to_owned(),
                };
                out.insert(path.clone(), Value::String(digest));
            }
            _ => {}
        }
    }
    let mut out = Map::new();
    for (key, value) in options {
        walk(value, Some(key), &mut out);
    }
    out
}

/// Rewrites serde's "unknown field `x`, expected one of `a`, `b`" into a suggestion.
fn describe_option_error(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_owned();
    };
    let Some((field, expected)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let valid: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    if valid.is_empty() {
        return format!("unknown option `{field}`; this component takes no options");
    }
    format!(
        "unknown option `{field}`{}; valid options: {}",
        suggestion(field, valid.iter().copied()),
        valid.join(", ")
    )
}

/// `; did you mean "x"?` when one of `candidates` is close to `word`.
fn suggestion<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    candidates
        .map(|candidate| (strsim::damerau_levenshtein(word, candidate), candidate))
        .filter(|(distance, candidate)| *distance <= 2.max(candidate.len() / 3))
        .min()
        .map(|(_, candidate)| format!(" (did you mean `{candidate}`?)"))
        .unwrap_or_default()
}

/// Duplicate ids, dangling inputs, missing inputs, unread outputs and cycles.
fn check_graph(top: &Map<String, Value>, origin: &Origin, errors: &mut Vec<ConfigError>) {
    // id -> (kind, inputs), with duplicates across sections reported.
    let mut nodes: BTreeMap<String, (ComponentKind, Vec<String>)> = BTreeMap::new();
    for kind in KINDS {
        let Some(entries) = top.get(kind.section()).and_then(Value::as_object) else {
            continue;
        };
        for (id, body) in entries {
            let inputs = match body.get("inputs") {
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(|item| item.as_str().map(str::to_owned))
                    .collect(),
                Some(Value::String(input)) => vec![input.clone()],
                _ => Vec::new(),
            };
            if let Some((first, _)) = nodes.get(id) {
                errors.push(ConfigError::new(
                    origin.of(&[kind.section(), id]),
                    format!("{}.{id}", kind.section()),
                    format!(
                        "the id `{id}` is also used in {}; ids must be unique across sources, transforms and sinks",
                        first.section()
                    ),
                ));
                continue;
            }
            nodes.insert(id.clone(), (kind, inputs));
        }
    }

    let mut read: BTreeSet<&str> = BTreeSet::new();
    for (id, (kind, inputs)) in &nodes {
        let here = format!("{}.{id}", kind.section());
        let file = origin.of(&[kind.section(), id]);
        if *kind != ComponentKind::Source && inputs.is_empty() {
            errors.push(ConfigError::new(
                file.clone(),
                format!("{here}.inputs"),
                format!("a {kind} needs at least one input (a source or transform id)"),
            ));
        }
        for input in inputs {
            if let Some(of) = dead_letter::component_of(input) {
                match nodes.get(of) {
                    Some((ComponentKind::Transform, _)) => errors.push(ConfigError::new(
                        file.clone(),
                        format!("{here}.inputs"),
                        format!("`{input}`: only sources and sinks have a dead-letter output; `{of}` is a transform"),
                    )),
                    Some(_) => {
                        read.insert(input.as_str());
                    }
                    None => errors.push(ConfigError::new(
                        file.clone(),
                        format!("{here}.inputs"),
                        format!(
                            "`{input}` names the dead letters of `{of}`, which is no source or sink{}",
                            suggestion(
                                of,
                                nodes
                                    .iter()
                                    .filter(|(_, (k, _))| *k != ComponentKind::Transform)
                                    .map(|(id, _)| id.as_str())
                            )
                        ),
                    )),
                }
                continue;
            }
            match nodes.get(input) {
                None => errors.push(ConfigError::new(
                    file.clone(),
                    format!("{here}.inputs"),
                    format!(
                        "`{input}` names no source or transform{}",
                        suggestion(
                            input,
                            nodes
                                .iter()
                                .filter(|(_, (k, _))| *k != ComponentKind::Sink)
                                .map(|(id, _)| id.as_str())
                        )
                    ),
                )),
                Some((ComponentKind::Sink, _)) => errors.push(ConfigError::new(
                    file.clone(),
                    format!("{here}.inputs"),
                    format!("`{input}` is a sink; inputs name sources and transforms (and `{input}.dead_letter`, the events its destination refused)"),
                )),
                Some(_) => {
                    read.insert(input.as_str());
                }
            }
        }
    }
    for (id, (kind, _)) in &nodes {
        if *kind != ComponentKind::Sink && !read.contains(id.as_str()) {
            errors.push(ConfigError::new(
                origin.of(&[kind.section(), id]),
                format!("{}.{id}", kind.section()),
                format!("nothing reads this {kind}: name it in the inputs of a transform or sink"),
            ));
        }
    }
    for cycle in cycles(&nodes) {
        let first = &cycle[0];
        let section = nodes
            .get(first)
            .map_or("transforms", |(kind, _)| kind.section());
        errors.push(ConfigError::new(
            origin.of(&[section, first]),
            format!("{section}.{first}.inputs"),
            format!("cycle: {}", cycle.join(" -> ")),
        ));
    }
}

/// Every elementary cycle through transforms (and sinks, through their dead letters),
/// each once, starting at its smallest id.
fn cycles(nodes: &BTreeMap<String, (ComponentKind, Vec<String>)>) -> Vec<Vec<String>> {
    // Edges go from a component to the components it reads from (`x.dead_letter` is read
    // from `x`); a cycle read backwards is still the same cycle, and printed in data-flow
    // order below.
    fn visit<'a>(
        node: &'a str,
        start: &'a str,
        nodes: &'a BTreeMap<String, (ComponentKind, Vec<String>)>,
        path: &mut Vec<&'a str>,
        found: &mut BTreeSet<Vec<String>>,
    ) {
        let Some((_, inputs)) = nodes.get(node) else {
            return;
        };
        for input in inputs {
            let input = dead_letter::component_of(input).unwrap_or(input);
            if input == start {
                let mut cycle: Vec<String> = path.iter().rev().map(|s| s.to_string()).collect();
                // Data flows from input to reader: reverse, then rotate to the smallest.
                let smallest = (0..cycle.len()).min_by_key(|&i| &cycle[i]).unwrap_or(0);
                cycle.rotate_left(smallest);
                cycle.push(cycle[0].clone());
                found.insert(cycle);
            } else if input > start && !path.contains(&input) {
                path.push(input);
                visit(input, start, nodes, path, found);
                path.pop();
            }
        }
    }
    let mut found = BTreeSet::new();
    for (id, (kind, _)) in nodes {
        if *kind != ComponentKind::Source {
            let mut path = vec![id.as_str()];
            visit(id, id, nodes, &mut path, &mut found);
        }
    }
    found.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(kind: ComponentKind, inputs: &[&str]) -> (ComponentKind, Vec<String>) {
        (kind, inputs.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn a_cycle_is_printed_in_data_flow_order() {
        let nodes = BTreeMap::from([
            (
                "a".to_string(),
                node(ComponentKind::Transform, &["src", "c"]),
            ),
            ("b".to_string(), node(ComponentKind::Transform, &["a"])),
            ("c".to_string(), node(ComponentKind::Transform, &["b"])),
            ("src".to_string(), node(ComponentKind::Source, &[])),
        ]);
        assert_eq!(
            cycles(&nodes),
            vec![vec!["a", "b", "c", "a"]
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>()]
        );
    }

    #[test]
    fn a_self_loop_is_a_cycle() {
        let nodes = BTreeMap::from([("a".to_string(), node(ComponentKind::Transform, &["a"]))]);
        assert_eq!(cycles(&nodes), vec![vec!["a".to_string(), "a".to_string()]]);
    }

    #[test]
    fn a_toml_syntax_error_is_one_line() {
        let message = "TOML parse error at line 3, column 11\n  |\n3 | [sinks.out\n  |           ^\ninvalid table header\nexpected `.`, `]`\n";
        assert_eq!(
            one_line(message),
            "TOML parse error at line 3, column 11; invalid table header; expected `.`, `]`"
        );
    }

    #[test]
    fn unknown_fields_get_a_suggestion() {
        assert_eq!(
            describe_option_error("unknown field `urii`, expected one of `uri`, `method`"),
            "unknown option `urii` (did you mean `uri`?); valid options: uri, method"
        );
    }
}
