//! Commands that read pipelines and plugins without running anything.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use auditflow_config::{Pipeline, Registry};
use auditflow_core::ComponentKind;
use serde_json::Value;

/// `auditflow validate`: every problem, sorted, one per line; exit 2 when there are any
/// (the code `run` exits with for the same pipeline).
pub(crate) fn validate(files: &[PathBuf], registry: &Registry) -> ExitCode {
    let pipeline = match auditflow_config::load(files, registry) {
        Ok(pipeline) => pipeline,
        Err(errors) => {
            for error in &errors {
                println!("{error}");
            }
            println!(
                "{} problem{} found",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            );
            return ExitCode::from(2);
        }
    };
    let count = |kind| {
        pipeline
            .components
            .iter()
            .filter(|component| component.kind == kind)
            .count()
    };
    println!(
        "valid: {} source(s), {} transform(s), {} sink(s)",
        count(ComponentKind::Source),
        count(ComponentKind::Transform),
        count(ComponentKind::Sink)
    );
    ExitCode::SUCCESS
}

/// `auditflow graph`: the pipeline in Graphviz DOT.
pub(crate) fn graph(files: &[PathBuf], registry: &Registry) -> ExitCode {
    match auditflow_config::load(files, registry) {
        Ok(pipeline) => {
            print!("{}", to_dot(&pipeline));
            ExitCode::SUCCESS
        }
        Err(errors) => crate::run::config_failure(&errors),
    }
}

fn to_dot(pipeline: &Pipeline) -> String {
    let mut dot = String::from("digraph auditflow {\n  rankdir=LR;\n");
    for component in &pipeline.components {
        let shape = match component.kind {
            ComponentKind::Source => "house",
            ComponentKind::Transform => "box",
            ComponentKind::Sink => "invhouse",
        };
        let _ = writeln!(
            dot,
            "  {:?} [shape={shape}, label=\"{}\\n({} {})\"];",
            component.id, component.id, component.type_name, component.kind
        );
    }
    for component in &pipeline.components {
        for input in &component.inputs {
            // A dead-letter edge starts at its component, dashed and labelled.
            match auditflow_core::dead_letter::component_of(input) {
                Some(of) => {
                    let _ = writeln!(
                        dot,
                        "  {of:?} -> {:?} [style=dashed, color=red, label=\"dead_letter\"];",
                        component.id
                    );
                }
                None => {
                    let _ = writeln!(dot, "  {input:?} -> {:?};", component.id);
                }
            }
        }
    }
    dot.push_str("}\n");
    dot
}

/// `auditflow plugins`: every type with its options, from the config structs' docs.
pub(crate) fn plugins(only: Option<&str>, registry: &Registry) -> ExitCode {
    let mut out = String::new();
    let mut shown = 0;
    for kind in [
        ComponentKind::Source,
        ComponentKind::Transform,
        ComponentKind::Sink,
    ] {
        let plugins: Vec<_> = registry
            .plugins()
            .iter()
            .filter(|plugin| plugin.kind == kind && only.is_none_or(|name| plugin.name == name))
            .collect();
        if plugins.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{}:", kind.section());
        for plugin in plugins {
            shown += 1;
            let _ = writeln!(out, "  {} — {}", plugin.name, plugin.summary);
            let schema = plugin.schema();
            let root = schema.as_value();
            let mut options = Vec::new();
            collect_options(root, root, "", &mut options);
            if options.is_empty() {
                let _ = writeln!(out, "    (no options)");
            }
            for option in options {
                let _ = write!(out, "    {}  ({})", option.name, option.kind);
                if option.required {
                    out.push_str("  required");
                }
                if let Some(default) = option.default {
                    let _ = write!(out, "  default: {default}");
                }
                out.push('\n');
                for line in option.doc.lines() {
                    let _ = writeln!(out, "        {line}");
                }
            }
            out.push('\n');
        }
    }
    if shown == 0 {
        eprintln!(
            "auditflow: no component type named {:?}; run `auditflow plugins` for the list",
            only.unwrap_or_default()
        );
        return ExitCode::from(2);
    }
    print!("{out}");
    ExitCode::SUCCESS
}

struct OptionDoc {
    name: String,
    kind: String,
    required: bool,
    default: Option<String>,
    doc: String,
}

/// Flattens an object schema's properties (following `$ref`s into nested option groups)
/// into dotted option names.
fn collect_options(root: &Value, schema: &Value, prefix: &str, out: &mut Vec<OptionDoc>) {
    let schema = resolve(root, schema);
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, property) in properties {
        let full = format!("{prefix}{name}");
        let target = resolve(root, property);
        let doc = property
            .get("description")
            .or_else(|| target.get("description"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        out.push(OptionDoc {
            name: full.clone(),
            kind: describe_type(root, property),
            required: required.contains(&name.as_str()),
            default: property.get("default").map(Value::to_string),
            doc,
        });
        if target.get("properties").is_some() {
            collect_options(root, target, &format!("{full}."), out);
        }
    }
}

/// Follows a `$ref` (also through `anyOf: [{$ref}, {type: null}]` for optional groups).
fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let pointer = reference.trim_start_matches('#');
        return root.pointer(pointer).unwrap_or(schema);
    }
    if let Some(variants) = schema.get("anyOf").and_then(Value::as_array) {
        let mut non_null = variants
            .iter()
            .filter(|variant| variant.get("type") != Some(&Value::from("null")));
        if let (Some(only), None) = (non_null.next(), non_null.next()) {
            return resolve(root, only);
        }
    }
    schema
}

fn describe_type(root: &Value, schema: &Value) -> String {
    let schema = resolve(root, schema);
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let names: Vec<String> = values.iter().map(plain).collect();
        return format!("one of: {}", names.join(", "));
    }
    if let Some(variants) = schema.get("oneOf").and_then(Value::as_array) {
        let names: Vec<String> = variants
            .iter()
            .map(|variant| {
                let variant = resolve(root, variant);
                if let Some(constant) = variant.get("const") {
                    plain(constant)
                } else if let Some(values) = variant.get("enum").and_then(Value::as_array) {
                    values.iter().map(plain).collect::<Vec<_>>().join(", ")
                } else if let Some(properties) =
                    variant.get("properties").and_then(Value::as_object)
                {
                    properties.keys().cloned().collect::<Vec<_>>().join(" | ")
                } else {
                    describe_type(root, variant)
                }
            })
            .collect();
        return format!("one of: {}", names.join(", "));
    }
    match schema.get("type") {
        Some(Value::String(kind)) if kind == "array" => {
            let items = schema.get("items").map(|items| describe_type(root, items));
            format!("list of {}", items.unwrap_or_else(|| "values".into()))
        }
        Some(Value::String(kind)) if kind == "object" && schema.get("properties").is_none() => {
            "map".into()
        }
        Some(Value::String(kind)) => kind.clone(),
        Some(Value::Array(kinds)) => kinds
            .iter()
            .filter(|kind| kind.as_str() != Some("null"))
            .map(plain)
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "value".into(),
    }
}

fn plain(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}
