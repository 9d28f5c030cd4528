//! Wires components into a running graph: one task per component, bounded channels
//! between them, fan-out by sharing batches, and a draining shutdown.
//!
//! # Layout
//! - [`TopologyBuilder`]: add built components by id and inputs; `start` spawns them.
//! - [`build`]: builds every component of a loaded [`Pipeline`] into a builder, reporting
//!   build failures as located config errors.
//! - [`Running`]: the live pipeline; trigger shutdown, await the end.
//!
//! # The one design decision
//! Shutdown is a cascade, not a kill: sources stop reading and return, which closes their
//! outputs; each transform and sink drains its channel and returns when it is empty and
//! closed. Nothing is dropped on the way unless the shutdown timeout runs out, and then
//! only unacknowledged data, which sources offer again on restart.

use std::collections::BTreeMap;
use std::sync::Arc;

use auditflow_buffer::DiskBufferOptions;
use auditflow_config::{AnyConfig, BufferConfig, ConfigError, Pipeline};
use auditflow_core::channel::{self, Output, Receiver, Sender};
use auditflow_core::tap::{Port, Taps};
use auditflow_core::{
    dead_letter, BuildContext, ComponentError, ComponentKind, DeadLetterOutput, NoTelemetry,
    Shutdown, ShutdownTrigger, Sink, SinkContext, Source, SourceContext, Telemetry, Transform,
};
use auditflow_metrics::ComponentMetrics;
use tokio::task::JoinSet;

/// Batches a channel holds in front of each transform and sink. With batches of at most
/// 1,000 events or 1 MiB, this bounds what waits between two components.
pub const CHANNEL_BATCHES: usize = 2;

enum Built {
    Source(Box<dyn Source>),
    Transform(Box<dyn Transform>),
    Sink(Box<dyn Sink>),
}

struct Node {
    kind: ComponentKind,
    inputs: Vec<String>,
    component: Built,
    telemetry: Arc<dyn Telemetry>,
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
    pub fn new() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    /// The tap points of the pipeline `start` will wire (for the API's `/tap`).
    pub fn taps(&self) -> Taps {
        self.taps.clone()
    }

    pub fn source(&mut self, id: &str, source: Box<dyn Source>, telemetry: Arc<dyn Telemetry>) {
        self.insert(
            id,
            ComponentKind::Source,
            &[],
            Built::Source(source),
            telemetry,
        );
    }

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
    /// [`dead_letter::DEFAULT_MAX_BYTES`]).
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
        };
        assert!(
            self.nodes.insert(id.to_owned(), node).is_none(),
            "component id {id:?} added twice"
        );
    }

    /// Spawns every component on the current runtime. Sinks start first so that nothing
    /// a source sends waits on a component that is not there yet.
    pub fn start(mut self) -> Running {
        let (trigger, shutdown) = Shutdown::new();
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        let mut senders: BTreeMap<String, Sender> = BTreeMap::new();
        let mut receivers: BTreeMap<String, Receiver> = BTreeMap::new();
        for (id, node) in &self.nodes {
            if node.kind != ComponentKind::Source {
                let (tx, rx) = channel::channel(CHANNEL_BATCHES, Arc::clone(&node.telemetry));
                senders.insert(id.clone(), tx);
                let tap = self.taps.point(id, node.kind, Port::InputsOf);
                receivers.insert(id.clone(), rx.with_tap(tap));
            }
        }
        let output_of = |id: &str, telemetry: &Arc<dyn Telemetry>| {
            let targets = self
                .nodes
                .iter()
                .filter(|(_, node)| node.inputs.iter().any(|input| input == id))
                .filter_map(|(target, _)| senders.get(target).cloned())
                .collect();
            Output::new(targets, Arc::clone(telemetry))
        };
        let mut outputs: BTreeMap<String, Output> = BTreeMap::new();
        let mut dead_letters: BTreeMap<String, DeadLetterOutput> = BTreeMap::new();
        for (id, node) in &self.nodes {
            if node.kind != ComponentKind::Sink {
                let tap = self.taps.point(id, node.kind, Port::OutputsOf);
                outputs.insert(id.clone(), output_of(id, &node.telemetry).with_tap(tap));
            }
            let output_id = dead_letter::output_id(id);
            let read = self
                .nodes
                .values()
                .any(|reader| reader.inputs.contains(&output_id));
            let output = match read && node.kind != ComponentKind::Transform {
                // The dead letters are counted on their own; `sent` stays the main output's.
                true => DeadLetterOutput::new(
                    id,
                    output_of(&output_id, &(Arc::new(NoTelemetry) as Arc<dyn Telemetry>)),
                    self.dead_letter_max_bytes
                        .get(id)
                        .copied()
                        .unwrap_or(dead_letter::DEFAULT_MAX_BYTES),
                    Arc::clone(&node.telemetry),
                ),
                false => DeadLetterOutput::disconnected(id),
            };
            dead_letters.insert(id.clone(), output);
        }
        drop(senders);

        let mut tasks = JoinSet::new();
        let mut order: Vec<(String, Node)> = self.nodes.into_iter().collect();
        order.sort_by_key(|(_, node)| std::cmp::Reverse(node.kind));
        for (id, node) in order {
            let telemetry = node.telemetry;
            match node.component {
                Built::Sink(sink) => {
                    let mut input = receivers.remove(&id).expect("every sink has a channel");
                    if let Some(options) = self.disk_buffers.remove(&id) {
                        let (buffered, relay) =
                            auditflow_buffer::start(&id, options, input, Arc::clone(&telemetry));
                        input = buffered;
                        let relay_id = format!("{id} (disk buffer)");
                        tasks.spawn(async move { (relay_id, relay.await) });
                    }
                    let cx = SinkContext {
                        dead_letter: dead_letters.remove(&id).expect("every sink has one"),
                        id: id.clone(),
                        input,
                        telemetry,
                    };
                    tasks.spawn(async move { (id, sink.run(cx).await) });
                }
                Built::Transform(transform) => {
                    let input = receivers
                        .remove(&id)
                        .expect("every transform has a channel");
                    let output = outputs.remove(&id).expect("every transform has an output");
                    let wanted = self.concurrency.get(&id).copied().unwrap_or(workers);
                    let mut copies = vec![transform];
                    while copies.len() < wanted {
                        match copies[0].fork() {
                            Some(copy) => copies.push(copy),
                            None => break,
                        }
                    }
                    tasks.spawn(async move {
                        let result = match copies.len() {
                            1 => run_transform(copies.pop().expect("one"), input, output).await,
                            _ => run_concurrently(copies, input, output).await,
                        };
                        (id, result)
                    });
                }
                Built::Source(source) => {
                    let cx = SourceContext {
                        dead_letter: dead_letters.remove(&id).expect("every source has one"),
                        id: id.clone(),
                        out: outputs.remove(&id).expect("every source has an output"),
                        shutdown: shutdown.clone(),
                        telemetry,
                    };
                    tasks.spawn(async move { (id, source.run(cx).await) });
                }
            }
        }
        Running {
            trigger,
            tasks,
            failures: Vec::new(),
        }
    }
}

async fn run_transform(
    mut transform: Box<dyn Transform>,
    mut input: Receiver,
    output: Output,
) -> Result<(), ComponentError> {
    while let Some(mut batch) = input.recv().await {
        transform.transform(&mut batch);
        output.send(batch).await?;
    }
    Ok(())
}

/// Runs up to `copies.len()` batches at once, each on its own copy of the transform as a
/// task of its own (so on any worker thread), and sends them on in the order they came.
///
/// At most that many batches are taken from the input before the oldest is sent: a slow
/// output is back-pressure here as for any transform.
async fn run_concurrently(
    mut idle: Vec<Box<dyn Transform>>,
    mut input: Receiver,
    output: Output,
) -> Result<(), ComponentError> {
    type Running = tokio::task::JoinHandle<(Box<dyn Transform>, auditflow_core::Batch)>;
    let mut running: std::collections::VecDeque<Running> = std::collections::VecDeque::new();
    let mut input_done = false;
    loop {
        tokio::select! {
            // The oldest batch first: order is what the next component sees.
            biased;
            done = async { running.front_mut().expect("checked").await }, if !running.is_empty() => {
                running.pop_front();
                let (transform, batch) = done.map_err(|error| {
                    ComponentError::Fatal(format!("transforming a batch failed: {error}"))
                })?;
                idle.push(transform);
                output.send(batch).await?;
            }
            batch = input.recv(), if !idle.is_empty() && !input_done => match batch {
                Some(mut batch) => {
                    let mut transform = idle.pop().expect("checked");
                    running.push_back(tokio::spawn(async move {
                        transform.transform(&mut batch);
                        (transform, batch)
                    }));
                }
                None => input_done = true,
            },
            else => return Ok(()),
        }
    }
}

/// A component that failed while running.
#[derive(Debug, thiserror::Error)]
#[error("component `{id}` failed: {error}")]
pub struct ComponentFailure {
    pub id: String,
    pub error: ComponentError,
}

/// The live pipeline.
pub struct Running {
    trigger: ShutdownTrigger,
    tasks: JoinSet<(String, Result<(), ComponentError>)>,
    failures: Vec<ComponentFailure>,
}

impl Running {
    /// Tells every source to stop; the rest of the pipeline drains behind them.
    pub fn shutdown(&self) {
        self.trigger.trigger();
    }

    /// Waits until every component has returned. A component that fails triggers the
    /// shutdown of the rest; its failure (the first cause, not the components that then
    /// found their neighbour gone) is returned.
    pub async fn wait(&mut self) -> Result<(), Vec<ComponentFailure>> {
        while let Some(joined) = self.tasks.join_next().await {
            let (id, result) = match joined {
                Ok(done) => done,
                Err(error) => (
                    "unknown".to_owned(),
                    Err(ComponentError::Fatal(format!(
                        "task ended abnormally: {error}"
                    ))),
                ),
            };
            match result {
                Ok(()) => tracing::debug!(component_id = %id, "component finished"),
                Err(ComponentError::Closed) if !self.failures.is_empty() => {
                    tracing::debug!(component_id = %id, "component stopped after a neighbour failed")
                }
                Err(error) => {
                    tracing::error!(component_id = %id, error = %error, "component failed; stopping the pipeline");
                    self.trigger.trigger();
                    self.failures.push(ComponentFailure { id, error });
                }
            }
        }
        if self.failures.is_empty() {
            Ok(())
        } else {
            Err(std::mem::take(&mut self.failures))
        }
    }

    /// Stops every component at once (the shutdown timeout ran out, or a second signal).
    pub fn abort(&mut self) {
        self.tasks.abort_all();
    }
}

/// Builds every component of `pipeline`. Build failures come back as config errors naming
/// the file, component and option.
pub fn build(pipeline: &Pipeline) -> Result<TopologyBuilder, Vec<ConfigError>> {
    let mut builder = TopologyBuilder::new();
    let mut errors = Vec::new();
    for component in &pipeline.components {
        let telemetry: Arc<dyn Telemetry> =
            ComponentMetrics::new(&component.id, component.kind, &component.type_name);
        let cx = BuildContext {
            id: component.id.clone(),
            data_dir: pipeline.data_dir.join(&component.id),
            telemetry: Arc::clone(&telemetry),
        };
        let inputs: Vec<&str> = component.inputs.iter().map(String::as_str).collect();
        let built = match &component.config {
            AnyConfig::Source(config) => config.build(cx).map(|source| {
                builder.source(&component.id, source, telemetry);
                builder.max_dead_letter_bytes(&component.id, component.max_dead_letter_bytes);
            }),
            AnyConfig::Transform(config) => config.build(cx).map(|transform| {
                if let Some(batches) = component.concurrency {
                    builder.concurrency(&component.id, batches);
                }
                builder.transform(&component.id, &inputs, transform, telemetry);
            }),
            AnyConfig::Sink(config) => config.build(cx).map(|sink| {
                builder.max_dead_letter_bytes(&component.id, component.max_dead_letter_bytes);
                builder.sink(&component.id, &inputs, sink, telemetry);
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
                    };
                    builder.disk_buffer(&component.id, options);
                }
            }),
        };
        if let Err(error) = built {
            let here = format!("{}.{}", component.kind.section(), component.id);
            let location = match &error.field {
                Some(field) => format!("{here}.{field}"),
                None => here,
            };
            errors.push(ConfigError::new(&component.file, location, error.message));
        }
    }
    if errors.is_empty() {
        Ok(builder)
    } else {
        errors.sort();
        Err(errors)
    }
}
