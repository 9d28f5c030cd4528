//! The live pipeline: its tasks, and the wiring that a reload changes while they run.

use std::collections::BTreeMap;
use std::sync::Arc;

use auditflow_config::Pipeline;
use auditflow_core::channel::{self, Output, Receiver, Rewire, Sender, WeakSender};
use auditflow_core::tap::{Port, Taps};
use auditflow_core::{
    dead_letter, ComponentError, ComponentKind, DeadLetterOutput, NoTelemetry, Shutdown,
    ShutdownTrigger, SinkContext, SourceContext, Telemetry, Transform,
};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::{Built, TopologyBuilder, CHANNEL_BATCHES};

/// A component that failed while running.
#[derive(Debug, thiserror::Error)]
#[error("component `{id}` failed: {error}")]
pub struct ComponentFailure {
    /// The failed component's id from the pipeline file (`unknown` when its task panicked
    /// or was aborted, as its id is not known then).
    pub id: String,
    /// What it returned, or a [`ComponentError::Fatal`] saying how its task ended.
    pub error: ComponentError,
}

/// Resolves (through [`watch::Sender::closed`]) once every task of one component instance
/// has ended: each task holds a receiver, and drops it when it returns or is aborted.
pub(crate) type Finished = Arc<watch::Sender<()>>;

/// What the topology keeps of a running component to rewire or stop it. It holds nothing
/// that keeps a channel open, so that the shutdown cascade works as if it were not there.
pub(crate) struct Live {
    pub(crate) kind: ComponentKind,
    pub(crate) inputs: Vec<String>,
    /// The pipeline-file entry it was built from (`None`: added by hand to a builder).
    pub(crate) definition: Option<serde_json::Value>,
    /// Whether something read its `<id>.dead_letter` when it was built.
    pub(crate) dead_letter_read: bool,
    /// The channel in front of a transform or sink.
    input: Option<WeakSender>,
    /// Where a source or transform sends.
    output: Option<Rewire>,
    /// Where its dead letters go, when something reads them.
    dead_letter: Option<Rewire>,
    /// A source's own stop signal.
    stop: Option<ShutdownTrigger>,
    pub(crate) finished: Finished,
}

impl Live {
    /// Tells a source to stop (the rest of its branch drains behind it).
    pub(crate) fn stop(&self) {
        if let Some(stop) = &self.stop {
            stop.trigger();
        }
    }
}

/// The live pipeline.
pub struct Running {
    tasks: JoinSet<(String, Result<(), ComponentError>)>,
    failures: Vec<ComponentFailure>,
    pub(crate) live: BTreeMap<String, Live>,
    /// The pipeline it runs, when started from one (what a reload compares with).
    pub(crate) pipeline: Option<Arc<Pipeline>>,
    /// The tap points of every component, the ones a reload starts included.
    pub(crate) taps: Taps,
    /// Sources a reload could not start with their new options, running their previous
    /// ones: the pipeline whose options each runs. The next reload starts them again.
    pub(crate) fallen_back: crate::reload::FallenBack,
}

impl Running {
    pub(crate) fn empty() -> Running {
        Running {
            tasks: JoinSet::new(),
            failures: Vec::new(),
            live: BTreeMap::new(),
            pipeline: None,
            taps: Taps::new(),
            fallen_back: Default::default(),
        }
    }

    /// Records the pipeline this topology was built from, so that [`Running::reload`]
    /// can tell what a new version changes.
    pub fn set_pipeline(&mut self, pipeline: Arc<Pipeline>) {
        self.pipeline = Some(pipeline);
    }

    /// Tells every source to stop; the rest of the pipeline drains behind them.
    pub fn shutdown(&self) {
        for live in self.live.values() {
            live.stop();
        }
    }

    /// Waits until every component has returned. A component that fails triggers the
    /// shutdown of the rest; its failure (the first cause, not the components that then
    /// found their neighbour gone) is returned.
    ///
    /// Cancel-safe: dropped while waiting (to reload), it loses nothing, and a later call
    /// goes on where it stopped.
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
                    self.shutdown();
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

    /// Wires and spawns the components of `builder` next to those already running, and
    /// points the outputs of the running ones at the new graph (the running components
    /// plus the new ones). A new component whose id is in `predecessors` starts only once
    /// that predecessor (the instance it replaces) has finished.
    ///
    /// Components that were taken out of [`Running::live`] (replaced or removed) keep
    /// their old outputs: they drain into what they fed, which drains in turn.
    pub(crate) fn launch(
        &mut self,
        mut builder: TopologyBuilder,
        mut predecessors: BTreeMap<String, Finished>,
    ) {
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        let mut receivers: BTreeMap<String, Receiver> = BTreeMap::new();
        // Every reader in the new graph: its id, its inputs, its channel.
        let mut readers: Vec<(String, Vec<String>, Sender)> = Vec::new();
        for (id, node) in &builder.nodes {
            if node.kind != ComponentKind::Source {
                let (tx, rx) = channel::channel(CHANNEL_BATCHES, Arc::clone(&node.telemetry));
                readers.push((id.clone(), node.inputs.clone(), tx));
                let tap = self.taps.point(id, node.kind, Port::InputsOf);
                receivers.insert(id.clone(), rx.with_tap(tap));
            }
        }
        for (id, live) in &self.live {
            // A reader whose channel is closed has finished: nothing can feed it.
            if let Some(tx) = live.input.as_ref().and_then(WeakSender::upgrade) {
                readers.push((id.clone(), live.inputs.clone(), tx));
            }
        }
        let targets_of = |output_id: &str| -> Vec<Sender> {
            readers
                .iter()
                .filter(|(_, inputs, _)| inputs.iter().any(|input| input == output_id))
                .map(|(_, _, tx)| tx.clone())
                .collect()
        };
        let is_read = |output_id: &str| {
            readers
                .iter()
                .any(|(_, inputs, _)| inputs.iter().any(|input| input == output_id))
        };

        for (id, live) in &self.live {
            if let Some(output) = &live.output {
                output.set(targets_of(id));
            }
            if let Some(output) = &live.dead_letter {
                output.set(targets_of(&dead_letter::output_id(id)));
            }
        }

        let mut started: Vec<(String, Live)> = Vec::new();
        let mut order: Vec<(String, crate::Node)> =
            std::mem::take(&mut builder.nodes).into_iter().collect();
        order.sort_by_key(|(_, node)| std::cmp::Reverse(node.kind));
        for (id, node) in order {
            let telemetry = node.telemetry;
            let (finished, alive) = watch::channel(());
            let before = predecessors.remove(&id);
            let mut live = Live {
                kind: node.kind,
                inputs: node.inputs,
                definition: node.definition,
                dead_letter_read: false,
                input: None,
                output: None,
                dead_letter: None,
                stop: None,
                finished: Arc::new(finished),
            };
            let output = (node.kind != ComponentKind::Sink).then(|| {
                let targets = targets_of(&id);
                tracing::debug!(component_id = %id, targets = targets.len(), "wired");
                let tap = self.taps.point(&id, node.kind, Port::OutputsOf);
                let output = Output::new(targets, Arc::clone(&telemetry)).with_tap(tap);
                live.output = Some(output.rewire());
                output
            });
            let dead_letter_id = dead_letter::output_id(&id);
            let dead_letter_output =
                match is_read(&dead_letter_id) && node.kind != ComponentKind::Transform {
                    true => {
                        // The dead letters are counted on their own; `sent` stays the main
                        // output's. Tapped as a source of its own: only its component
                        // feeds it.
                        let output = Output::new(
                            targets_of(&dead_letter_id),
                            Arc::new(NoTelemetry) as Arc<dyn Telemetry>,
                        )
                        .with_tap(self.taps.point(
                            &dead_letter_id,
                            ComponentKind::Source,
                            Port::OutputsOf,
                        ));
                        live.dead_letter = Some(output.rewire());
                        live.dead_letter_read = true;
                        DeadLetterOutput::new(
                            &id,
                            output,
                            builder
                                .dead_letter_max_bytes
                                .get(&id)
                                .copied()
                                .unwrap_or(dead_letter::DEFAULT_MAX_BYTES),
                            Arc::clone(&telemetry),
                        )
                    }
                    false => DeadLetterOutput::disconnected(&id),
                };
            let task_id = id.clone();
            match node.component {
                Built::Sink(sink) => {
                    let mut input = receivers.remove(&id).expect("every sink has a channel");
                    live.input = readers
                        .iter()
                        .find(|(reader, _, _)| *reader == id)
                        .map(|(_, _, tx)| tx.downgrade());
                    if let Some(options) = builder.disk_buffers.remove(&id) {
                        let (buffered, relay) =
                            auditflow_buffer::start(&id, options, input, Arc::clone(&telemetry));
                        input = buffered;
                        let relay_id = format!("{id} (disk buffer)");
                        let (before, alive) = (before.clone(), alive.clone());
                        self.tasks.spawn(async move {
                            let _alive = alive;
                            after(before).await;
                            (relay_id, relay.await)
                        });
                    }
                    let cx = SinkContext {
                        dead_letter: dead_letter_output,
                        id: id.clone(),
                        input,
                        telemetry,
                    };
                    self.tasks.spawn(async move {
                        let _alive = alive;
                        after(before).await;
                        (task_id, sink.run(cx).await)
                    });
                }
                Built::Transform(transform) => {
                    let input = receivers
                        .remove(&id)
                        .expect("every transform has a channel");
                    live.input = readers
                        .iter()
                        .find(|(reader, _, _)| *reader == id)
                        .map(|(_, _, tx)| tx.downgrade());
                    let output = output.expect("every transform has an output");
                    let wanted = builder.concurrency.get(&id).copied().unwrap_or(workers);
                    let mut copies = vec![transform];
                    while copies.len() < wanted {
                        match copies[0].fork() {
                            Some(copy) => copies.push(copy),
                            None => break,
                        }
                    }
                    self.tasks.spawn(async move {
                        let _alive = alive;
                        after(before).await;
                        let result = match copies.len() {
                            1 => run_transform(copies.pop().expect("one"), input, output).await,
                            _ => run_concurrently(copies, input, output).await,
                        };
                        (task_id, result)
                    });
                }
                Built::Source(source) => {
                    let (stop, shutdown) = Shutdown::new();
                    live.stop = Some(stop);
                    let cx = SourceContext {
                        dead_letter: dead_letter_output,
                        id: id.clone(),
                        out: output.expect("every source has an output"),
                        shutdown,
                        telemetry,
                    };
                    self.tasks.spawn(async move {
                        let _alive = alive;
                        after(before).await;
                        (task_id, source.run(cx).await)
                    });
                }
                Built::LaterSource(make) => {
                    let (stop, shutdown) = Shutdown::new();
                    live.stop = Some(stop);
                    let cx = SourceContext {
                        dead_letter: dead_letter_output,
                        id: id.clone(),
                        out: output.expect("every source has an output"),
                        shutdown,
                        telemetry,
                    };
                    self.tasks.spawn(async move {
                        let _alive = alive;
                        after(before).await;
                        let result = match make() {
                            Ok(source) => source.run(cx).await,
                            Err(error) => Err(error),
                        };
                        (task_id, result)
                    });
                }
            }
            started.push((id, live));
        }
        self.live.extend(started);
    }
}

/// Waits until the instance a component replaces has finished.
async fn after(predecessor: Option<Finished>) {
    if let Some(predecessor) = predecessor {
        predecessor.closed().await;
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
