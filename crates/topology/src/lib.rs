//! Wires components into a running graph: one task per component, bounded channels
//! between them, fan-out by sharing batches, and a draining shutdown.
//!
//! # Layout
//! - [`TopologyBuilder`]: add built components by id and inputs; `start` spawns them.
//! - [`build`]: builds every component of a loaded [`Pipeline`] into a builder, reporting
//!   build failures as located config errors.
//! - [`Running`] (`running.rs`): the live pipeline; trigger shutdown, await the end,
//!   rewire outputs while components run.
//! - [`reload`](mod@reload): compares a new [`Pipeline`] with the running one and rebuilds
//!   only the components whose definition changed ([`Running::reload`]).
//!
//! # The one design decision
//! Shutdown is a cascade, not a kill: sources stop reading and return, which closes their
//! outputs; each transform and sink drains its channel and returns when it is empty and
//! closed. Nothing is dropped on the way unless the shutdown timeout runs out, and then
//! only unacknowledged data, which sources offer again on restart. A reload uses the same
//! cascade for the components it replaces or removes, while the rest keep running.

#![warn(missing_docs)]

pub mod reload;
mod running;

pub use reload::{config_hash, ReloadSummary};
pub use running::{ComponentFailure, Running};

use std::collections::BTreeMap;
use std::sync::Arc;

use auditflow_buffer::DiskBufferOptions;
use auditflow_config::{AnyConfig, BufferConfig, Component, ConfigError, Pipeline};
use auditflow_core::tap::Taps;
use auditflow_core::{
    BuildContext, ComponentError, ComponentKind, Sink, Source, Telemetry, Transform,
};
use auditflow_metrics::{ComponentMetrics, Metrics};

/// Batches a channel holds in front of each transform and sink. With batches of at most
/// 1,000 events or 1 MiB, this bounds what waits between two components.
pub const CHANNEL_BATCHES: usize = 2;

/// Builds a source once the instance it replaces has stopped (see [`Built::LaterSource`]).
type MakeSource = Box<dyn FnOnce() -> Result<Box<dyn Source>, ComponentError> + Send>;

enum Built {
    Source(Box<dyn Source>),
    /// A source rebuilt by a reload: built only once the instance it replaces has stopped
    /// and released what it held (a listening socket, its checkpoint file).
    LaterSource(MakeSource),
    Transform(Box<dyn Transform>),
    Sink(Box<dyn Sink>),
}

struct Node {
    kind: ComponentKind,
    inputs: Vec<String>,
    component: Built,
    telemetry: Arc<dyn Telemetry>,
    /// The pipeline-file entry it was built from, when built by [`build`]: what a reload
    /// compares.
    definition: Option<serde_json::Value>,
}

/// Collects built components, then wires and spawns them.
#[derive(Default)]
pub struct TopologyBuilder {
    nodes: BTreeMap<String, Node>,
    /// Sinks whose input goes through a disk buffer.
    disk_buffers: BTreeMap<String, DiskBufferOptions>,
    /// `max_dead_letter_bytes` of the components that set it.
    dead_letter_max_bytes: BTreeMap<String, usize>,
    /// `concurrency` of the transforms that set it.
    concurrency: BTreeMap<String, usize>,
    /// What `auditflow tap` watches: every component's input and output.
    taps: Taps,
}

impl TopologyBuilder {
    /// A builder with no components yet.
    pub fn new() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    /// The tap points of the pipeline `start` will wire (for the API's `/tap`).
    pub fn taps(&self) -> Taps {
        self.taps.clone()
    }

    /// Adds the built source `id`; `telemetry` gets the engine's counts for it (what it
    /// sends), and is the one its [`BuildContext`] carried when built by [`build`].
    ///
    /// # Panics
    /// When a component with this `id` was already added.
    pub fn source(&mut self, id: &str, source: Box<dyn Source>, telemetry: Arc<dyn Telemetry>) {
        self.insert(
            id,
            ComponentKind::Source,
            &[],
            Built::Source(source),
            telemetry,
        );
    }

    /// Adds the built transform `id`, reading the outputs named in `inputs` (component ids,
    /// or `<id>.dead_letter`); `telemetry` as for [`TopologyBuilder::source`].
    ///
    /// # Panics
    /// When a component with this `id` was already added.
    pub fn transform(
        &mut self,
        id: &str,
        inputs: &[&str],
        transform: Box<dyn Transform>,
        telemetry: Arc<dyn Telemetry>,
    ) {
        let node = Built::Transform(transform);
        self.insert(id, ComponentKind::Transform, inputs, node, telemetry);
    }

    /// Adds the built sink `id`, reading the outputs named in `inputs` (component ids, or
    /// `<id>.dead_letter`); `telemetry` as for [`TopologyBuilder::source`].
    ///
    /// # Panics
    /// When a component with this `id` was already added.
    pub fn sink(
        &mut self,
        id: &str,
        inputs: &[&str],
        sink: Box<dyn Sink>,
        telemetry: Arc<dyn Telemetry>,
    ) {
        self.insert(
            id,
            ComponentKind::Sink,
            inputs,
            Built::Sink(sink),
            telemetry,
        );
    }

    /// Puts a disk buffer in front of the sink `id`: its input is written there,
    /// acknowledged to the sources once fsynced, and delivered to the sink from there.
    pub fn disk_buffer(&mut self, id: &str, options: DiskBufferOptions) {
        self.disk_buffers.insert(id.to_owned(), options);
    }

    /// Keeps at most `max_bytes` of each refused record in `id`'s dead letters (default
    /// [`auditflow_core::dead_letter::DEFAULT_MAX_BYTES`]).
    pub fn max_dead_letter_bytes(&mut self, id: &str, max_bytes: usize) {
        self.dead_letter_max_bytes.insert(id.to_owned(), max_bytes);
    }

    /// Lets transform `id` process up to `batches` batches at once (when it can: see
    /// [`Transform::fork`]). Unset, it is the runtime's number of worker threads.
    pub fn concurrency(&mut self, id: &str, batches: usize) {
        self.concurrency.insert(id.to_owned(), batches.max(1));
    }

    fn insert(
        &mut self,
        id: &str,
        kind: ComponentKind,
        inputs: &[&str],
        component: Built,
        telemetry: Arc<dyn Telemetry>,
    ) {
        let node = Node {
            kind,
            inputs: inputs.iter().map(|input| input.to_string()).collect(),
            component,
            telemetry,
            definition: None,
        };
        assert!(
            self.nodes.insert(id.to_owned(), node).is_none(),
            "component id {id:?} added twice"
        );
    }

    /// Spawns every component on the current runtime. Sinks start first so that nothing
    /// a source sends waits on a component that is not there yet.
    ///
    /// An input naming no component added here stays unconnected (the loaded pipeline's
    /// graph checks have refused such an input already).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(self) -> Running {
        let mut running = Running::empty();
        // The registry `taps()` handed out (to the API) is the one every launch uses.
        running.taps = self.taps.clone();
        running.launch(self, BTreeMap::new());
        running
    }
}

/// Builds every component of `pipeline`. Build failures come back as config errors naming
/// the file, component and option.
pub fn build(pipeline: &Pipeline) -> Result<TopologyBuilder, Vec<ConfigError>> {
    let mut builder = TopologyBuilder::new();
    let mut errors = Vec::new();
    for component in &pipeline.components {
        if let Err(error) = build_into(&mut builder, pipeline, component) {
            errors.push(error);
        }
    }
    if errors.is_empty() {
        Ok(builder)
    } else {
        errors.sort();
        Err(errors)
    }
}

/// The handle of `component` in the process's registry (what `/metrics` renders). A
/// component rebuilt by a reload gets the same series back: they are keyed by its labels.
fn metrics_of(component: &Component) -> Arc<ComponentMetrics> {
    ComponentMetrics::new(
        Metrics::global(),
        &component.id,
        component.kind.as_str(),
        &component.type_name,
    )
}

fn build_context(pipeline: &Pipeline, component: &Component) -> (BuildContext, Arc<dyn Telemetry>) {
    let metrics = metrics_of(component);
    let telemetry: Arc<dyn Telemetry> = Arc::clone(&metrics) as Arc<dyn Telemetry>;
    let cx = BuildContext {
        id: component.id.clone(),
        data_dir: pipeline.data_dir.join(&component.id),
        telemetry: Arc::clone(&telemetry),
        metrics,
    };
    (cx, telemetry)
}

/// A build failure as a config error: file, component and option.
fn located(component: &Component, error: auditflow_core::BuildError) -> ConfigError {
    let here = format!("{}.{}", component.kind.section(), component.id);
    let location = match &error.field {
        Some(field) => format!("{here}.{field}"),
        None => here,
    };
    ConfigError::new(&component.file, location, error.message)
}

/// Builds `component` and adds it, with its engine options, to `builder`.
fn build_into(
    builder: &mut TopologyBuilder,
    pipeline: &Pipeline,
    component: &Component,
) -> Result<(), ConfigError> {
    let (cx, telemetry) = build_context(pipeline, component);
    let metrics = Arc::clone(&cx.metrics);
    let inputs: Vec<&str> = component.inputs.iter().map(String::as_str).collect();
    let built = match &component.config {
        AnyConfig::Source(config) => config.build(cx).map(|source| {
            builder.source(&component.id, source, telemetry);
        }),
        AnyConfig::Transform(config) => config.build(cx).map(|transform| {
            builder.transform(&component.id, &inputs, transform, telemetry);
        }),
        AnyConfig::Sink(config) => config.build(cx).map(|sink| {
            builder.sink(&component.id, &inputs, sink, telemetry);
        }),
    };
    built.map_err(|error| located(component, error))?;
    add_engine_options(builder, pipeline, component, &metrics);
    Ok(())
}

/// Adds a source that is built only when it starts, by `make`.
fn build_later(
    builder: &mut TopologyBuilder,
    pipeline: &Pipeline,
    component: &Component,
    make: MakeSource,
) {
    let node = Built::LaterSource(make);
    let metrics = metrics_of(component);
    let telemetry = Arc::clone(&metrics) as Arc<dyn Telemetry>;
    builder.insert(&component.id, ComponentKind::Source, &[], node, telemetry);
    add_engine_options(builder, pipeline, component, &metrics);
}

/// The options the engine applies around a component, and its definition.
fn add_engine_options(
    builder: &mut TopologyBuilder,
    pipeline: &Pipeline,
    component: &Component,
    metrics: &ComponentMetrics,
) {
    if let Some(node) = builder.nodes.get_mut(&component.id) {
        node.definition = Some(component.definition.clone());
    }
    match component.kind {
        ComponentKind::Source => {
            builder.max_dead_letter_bytes(&component.id, component.max_dead_letter_bytes)
        }
        ComponentKind::Transform => {
            if let Some(batches) = component.concurrency {
                builder.concurrency(&component.id, batches);
            }
        }
        ComponentKind::Sink => {
            builder.max_dead_letter_bytes(&component.id, component.max_dead_letter_bytes);
            if let BufferConfig::Disk(disk) = &component.buffer {
                let options = DiskBufferOptions {
                    dir: pipeline.data_dir.join(&component.id).join("buffer"),
                    max_bytes: disk.max_bytes,
                    when_full: match disk.when_full {
                        auditflow_config::WhenFull::Block => auditflow_buffer::WhenFull::Block,
                        auditflow_config::WhenFull::DropNewest => {
                            auditflow_buffer::WhenFull::DropNewest
                        }
                    },
                    fsync_interval: std::time::Duration::from_millis(disk.fsync_interval_ms),
                    metrics: metrics.disk_buffer(),
                };
                builder.disk_buffer(&component.id, options);
            }
        }
    }
}
