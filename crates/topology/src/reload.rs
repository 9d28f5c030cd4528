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
//!
//! A changed source whose new options cannot start (its new port is taken) starts again
//! with the options it ran with, and the reload counts as failed; the next reload starts
//! it again, with the options the files then give, even when they did not change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use auditflow_config::{AnyConfig, ConfigError, Pipeline};
use auditflow_core::{dead_letter, listener, ComponentError, ComponentKind, Source};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::running::Running;
use crate::{build_context, build_into, build_later, located, TopologyBuilder};

/// Sources running the options they had before a reload, because the reload's could not
/// start: the pipeline whose options each runs, by id.
pub(crate) type FallenBack = Arc<Mutex<BTreeMap<String, Arc<Pipeline>>>>;

fn lock(fallen_back: &FallenBack) -> MutexGuard<'_, BTreeMap<String, Arc<Pipeline>>> {
    fallen_back.lock().unwrap_or_else(|e| e.into_inner())
}

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
        // A source that fell back runs other options than the running pipeline says.
        let fallen_back = lock(&self.fallen_back).clone();
        let mut summary = ReloadSummary::default();
        for component in &pipeline.components {
            let id = component.id.clone();
            match self.live.get(&component.id) {
                None => summary.added.push(id),
                Some(live) => {
                    // A new data_dir moves every component's state: all start again there.
                    let same = !data_dir_moved
                        && !fallen_back.contains_key(&component.id)
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
                let (new, id) = (Arc::clone(&pipeline), component.id.clone());
                let runs = fallen_back.get(&id).cloned().or_else(|| old.clone());
                let fell_back = Arc::clone(&self.fallen_back);
                // Its listening sockets stay open from the old instance's stop until the
                // new one is built: one on the same address is handed over.
                let sockets = listener::hold(&id);
                let make = Box::new(move || {
                    let source = restart_source(&new, runs, &id, &fell_back);
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
        // Rebuilt or removed now (before the rebuilt ones can fall back again).
        lock(&self.fallen_back).retain(|id, _| !fallen_back.contains_key(id));
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

impl Running {
    /// Sets `auditflow_config_hash` to the [`config_hash`] of what runs now, and returns
    /// it: the pipeline last started or reloaded, with each source that fell back to its
    /// previous options (see [`Running::reload`]) hashed with the options it runs. When a
    /// source falls back later, as its replacement starts, the series moves again then.
    /// `None` (and nothing set) for a topology not started from a pipeline.
    pub fn publish_config_hash(&self) -> Option<String> {
        let pipeline = self.pipeline.as_ref()?;
        let fallen_back = lock(&self.fallen_back);
        let hash = hash_running(pipeline, &fallen_back);
        auditflow_metrics::Metrics::global().set_config_hash(&hash);
        Some(hash)
    }

    /// The [`config_hash`] of what runs now, as [`Running::publish_config_hash`] sets it,
    /// without setting it.
    pub fn config_hash(&self) -> Option<String> {
        let pipeline = self.pipeline.as_ref()?;
        Some(hash_running(pipeline, &lock(&self.fallen_back)))
    }
}

/// Builds the replacement of a changed source once its predecessor stopped. When the new
/// options cannot start (a port someone else took meanwhile), the options it ran with
/// (`old`) are tried, so that the pipeline keeps its input, and the reload counts as
/// failed; when neither can start, the pipeline fails.
fn restart_source(
    new: &Pipeline,
    old: Option<Arc<Pipeline>>,
    id: &str,
    fallen_back: &FallenBack,
) -> Result<Box<dyn Source>, ComponentError> {
    let error = match build_source(new, id) {
        Ok(source) => return Ok(source),
        Err(error) => error,
    };
    auditflow_metrics::Metrics::global()
        .reloads_total("failed")
        .inc();
    tracing::error!(
        component_id = %id,
        error = %error,
        "the reloaded source cannot start; starting it again with its previous options \
         (fix the cause, then reload to start it with the new ones)"
    );
    let previous = old.map(|old| (build_source(&old, id), old));
    match previous {
        Some((Ok(source), old)) => {
            let mut fallen_back = lock(fallen_back);
            fallen_back.insert(id.to_owned(), old);
            // The hash shows what runs: this source's old definition. Set under the lock,
            // so that it cannot cross `Running::publish_config_hash`.
            auditflow_metrics::Metrics::global().set_config_hash(&hash_running(new, &fallen_back));
            Ok(source)
        }
        Some((Err(again), _)) => Err(ComponentError::Fatal(format!(
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
    hash_running(pipeline, &BTreeMap::new())
}

/// [`config_hash`] of what runs: `pipeline`, except that each source in `fallen_back` is
/// hashed with the definition it runs, the one of the pipeline it fell back to.
fn hash_running(pipeline: &Pipeline, fallen_back: &BTreeMap<String, Arc<Pipeline>>) -> String {
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
        let definition = fallen_back
            .get(&component.id)
            .and_then(|runs| runs.component(&component.id))
            .map_or(&component.definition, |runs| &runs.definition);
        canonical(definition, &mut text);
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
