//! Reloading a running pipeline: what a new version of the pipeline files changes, and
//! the rebuild of only that.
//!
//! A component is unchanged when its pipeline-file entry (type, inputs, its own options
//! and the engine's: `buffer`, `concurrency`, `max_dead_letter_bytes`) is the same, and
//! whether something reads its `<id>.dead_letter` is the same. Unchanged components keep
//! running with their state (file positions, Kafka assignments, a listening socket);
//! only the outputs that feed changed components are pointed elsewhere. A changed
//! transform or sink is no longer fed, drains what it holds, and its replacement starts
//! on a fresh channel once it has finished (so two instances never write one file, and
//! the order downstream is kept). A changed source stops as at shutdown (final
//! checkpoint, pending acknowledgements) before its replacement is built, because the
//! replacement may need the same checkpoint; its listening sockets are held open meanwhile
//! and handed to the replacement when it listens on the same address (see
//! [`auditflow_core::listener`]), so that the port never closes. Removed components drain
//! as at shutdown; added ones start.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use auditflow_config::{AnyConfig, ConfigError, Pipeline};
use auditflow_core::{dead_letter, listener, ComponentError, ComponentKind, Source};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::running::Running;
use crate::{build_context, build_into, build_later, located, TopologyBuilder};

/// What a reload changed, by component id (each list sorted).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// New ids, started.
    pub added: Vec<String>,
    /// Ids whose definition changed, rebuilt.
    pub changed: Vec<String>,
    /// Ids no longer in the pipeline, drained and stopped.
    pub removed: Vec<String>,
    /// Ids that kept running as they were.
    pub unchanged: Vec<String>,
}

impl ReloadSummary {
    /// Whether the reload changed nothing that runs.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

impl Running {
    /// Moves the running pipeline to `pipeline` (already loaded and validated): builds the
    /// added and changed components first, and when one of them cannot be built returns
    /// every such error with nothing changed. Then rewires, stops and starts (see the
    /// module documentation). Must be called on the runtime that runs the pipeline.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn reload(&mut self, pipeline: Arc<Pipeline>) -> Result<ReloadSummary, Vec<ConfigError>> {
        let old = self.pipeline.clone();
        let data_dir_moved = old
            .as_ref()
            .is_some_and(|old| old.data_dir != pipeline.data_dir);
        let read_dead_letters: BTreeSet<&str> = pipeline
            .components
            .iter()
            .flat_map(|component| component.inputs.iter())
            .filter_map(|input| dead_letter::component_of(input))
            .collect();
        let mut summary = ReloadSummary::default();
        for component in &pipeline.components {
            let id = component.id.clone();
            match self.live.get(&component.id) {
                None => summary.added.push(id),
                Some(live) => {
                    // A new data_dir moves every component's state: all start again there.
                    let same = !data_dir_moved
                        && live.kind == component.kind
                        && live.definition.as_ref() == Some(&component.definition)
                        && live.dead_letter_read
                            == read_dead_letters.contains(component.id.as_str());
                    match same {
                        true => summary.unchanged.push(id),
                        false => summary.changed.push(id),
                    }
                }
            }
        }
        summary.removed = self
            .live
            .keys()
            .filter(|id| pipeline.component(id).is_none())
            .cloned()
            .collect();
        for list in [
            &mut summary.added,
            &mut summary.changed,
            &mut summary.unchanged,
        ] {
            list.sort();
        }

        let mut builder = TopologyBuilder::new();
        let mut errors = Vec::new();
        for component in &pipeline.components {
            let changed = summary.changed.binary_search(&component.id).is_ok();
            let added = summary.added.binary_search(&component.id).is_ok();
            let was_source = self
                .live
                .get(&component.id)
                .is_some_and(|live| live.kind == ComponentKind::Source);
            if changed && was_source && component.kind == ComponentKind::Source {
                let (new, old, id) = (Arc::clone(&pipeline), old.clone(), component.id.clone());
                // Its listening sockets stay open from the old instance's stop until the
                // new one is built: one on the same address is handed over.
                let sockets = listener::hold(&id);
                let make = Box::new(move || {
                    let source = restart_source(&new, old.as_deref(), &id);
                    drop(sockets);
                    source
                });
                build_later(&mut builder, &pipeline, component, make);
            } else if changed || added {
                if let Err(error) = build_into(&mut builder, &pipeline, component) {
                    errors.push(error);
                }
            }
        }
        if !errors.is_empty() {
            errors.sort();
            return Err(errors);
        }

        let mut leaving = Vec::new();
        let mut predecessors = BTreeMap::new();
        for id in summary.changed.iter().chain(&summary.removed) {
            let live = self
                .live
                .remove(id)
                .expect("listed from the live components");
            if summary.changed.binary_search(id).is_ok() {
                predecessors.insert(id.clone(), Arc::clone(&live.finished));
            }
            // A replacement of the same kind takes over the tap points (`launch` asks for
            // them again); the points of a removed component, of a side the replacement
            // does not have, or of dead letters no longer read go, and their taps end.
            if pipeline
                .component(id)
                .is_none_or(|component| component.kind != live.kind)
            {
                self.taps.remove(id);
            }
            if live.dead_letter_read && !read_dead_letters.contains(id.as_str()) {
                self.taps.remove(&dead_letter::output_id(id));
            }
            leaving.push(live);
        }
        self.launch(builder, predecessors);
        // Stopped only once the new graph holds its own senders: a source that stopped
        // before could close the channel of an unchanged reader for good (its last
        // sender gone), and the replacement would find nothing to feed.
        for live in &leaving {
            live.stop();
        }
        self.pipeline = Some(pipeline);
        Ok(summary)
    }
}

/// Builds the replacement of a changed source once its predecessor stopped. When the new
/// options cannot start (a port someone else took meanwhile), the previous ones are tried,
/// so that the pipeline keeps its input; when neither can, the pipeline fails.
fn restart_source(
    new: &Pipeline,
    old: Option<&Pipeline>,
    id: &str,
) -> Result<Box<dyn Source>, ComponentError> {
    let error = match build_source(new, id) {
        Ok(source) => return Ok(source),
        Err(error) => error,
    };
    tracing::error!(component_id = id, error = %error, "the reloaded source cannot start; starting it again with its previous options");
    let previous = old.map(|old| build_source(old, id));
    match previous {
        Some(Ok(source)) => Ok(source),
        Some(Err(again)) => Err(ComponentError::Fatal(format!(
            "cannot start after a reload ({error}), nor with its previous options ({again})"
        ))),
        None => Err(ComponentError::Fatal(format!(
            "cannot start after a reload ({error})"
        ))),
    }
}

/// Builds the source `id` of `pipeline` now.
fn build_source(pipeline: &Pipeline, id: &str) -> Result<Box<dyn Source>, String> {
    let Some(component) = pipeline.component(id) else {
        return Err(format!("no source `{id}` in the pipeline"));
    };
    let AnyConfig::Source(config) = &component.config else {
        return Err(format!("`{id}` is not a source"));
    };
    let (cx, _) = build_context(pipeline, component);
    config
        .build(cx)
        .map_err(|error| located(component, error).to_string())
}

/// A short fingerprint of what `pipeline` runs: the top-level options and every
/// component's definition, hashed with SHA-256 over a canonical JSON form (keys sorted),
/// so that the same pipeline gives the same hash whatever the key order or file split.
/// 16 hexadecimal digits.
pub fn config_hash(pipeline: &Pipeline) -> String {
    let mut text = String::new();
    text.push_str(&serde_json::json!(pipeline.data_dir).to_string());
    if let Some(metrics) = &pipeline.metrics {
        text.push_str(&metrics.address.to_string());
    }
    text.push_str(&pipeline.shutdown_timeout.as_millis().to_string());
    for component in &pipeline.components {
        text.push('\n');
        text.push_str(component.kind.section());
        text.push('.');
        text.push_str(&component.id);
        text.push('=');
        canonical(&component.definition, &mut text);
    }
    let digest = Sha256::digest(text.as_bytes());
    digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// `value` as JSON with object keys sorted.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by_key(|(key, _)| *key);
            out.push('{');
            for (n, (key, value)) in entries.into_iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::canonical;

    fn canonical_of(json: &str) -> String {
        let mut out = String::new();
        canonical(&serde_json::from_str(json).expect("JSON"), &mut out);
        out
    }

    #[test]
    fn the_hashed_form_ignores_key_order_and_keeps_every_value() {
        let a =
            canonical_of(r#"{"type":"filter","inputs":["a","b"],"condition":"verb == \"get\""}"#);
        let b =
            canonical_of(r#"{"condition":"verb == \"get\"","type":"filter","inputs":["a","b"]}"#);
        assert_eq!(a, b);
        assert_eq!(
            a,
            r#"{"condition":"verb == \"get\"","inputs":["a","b"],"type":"filter"}"#
        );
        // Order inside a list is meaning (inputs, include globs): it stays.
        assert_ne!(
            a,
            canonical_of(r#"{"type":"filter","inputs":["b","a"],"condition":"verb == \"get\""}"#)
        );
    }
}
