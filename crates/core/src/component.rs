//! The traits plugins implement, and what they are given to run.
//!
//! Each component has a build step and a run step: a `*Config` (deserialised from the
//! pipeline file) builds the component; the topology then runs it. A transform is a plain
//! synchronous function over a batch; sources and sinks are tasks.
//!
//! Every series a plugin records goes through the handle its [`BuildContext`] carries
//! (`metrics`), bound to the component's labels and to the registry it was built
//! against: the process's in `auditflow run`, a test's own in a test.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use auditflow_metrics::{ComponentMetrics, Metrics};
use tokio::sync::watch;

use crate::batch::Batch;
use crate::channel::{Output, Receiver};
use crate::dead_letter::DeadLetterOutput;

/// What a component is in the pipeline graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ComponentKind {
    Source,
    Transform,
    Sink,
}

impl ComponentKind {
    /// The singular name, as used in metric labels (`source`).
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::Source => "source",
            ComponentKind::Transform => "transform",
            ComponentKind::Sink => "sink",
        }
    }

    /// The pipeline file section (`sources`).
    pub fn section(self) -> &'static str {
        match self {
            ComponentKind::Source => "sources",
            ComponentKind::Transform => "transforms",
            ComponentKind::Sink => "sinks",
        }
    }
}

impl fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The engine's per-component counters: a component's [`ComponentMetrics`] in a running
/// pipeline, [`NoTelemetry`] or a recording double in benchmarks and tests.
///
/// Calls are per batch, not per event.
pub trait Telemetry: Send + Sync + 'static {
    /// Events (and their bytes) that came in: read by a source, taken from the channel
    /// by a transform or sink.
    fn received(&self, events: usize, bytes: usize);
    /// Events (and bytes) that went out: sent downstream, or delivered by a sink.
    fn sent(&self, events: usize, bytes: usize);
    /// Events dropped on purpose or refused, with a bounded `reason` (`malformed`,
    /// `sampled`, `filtered`, `oversized`).
    fn discarded(&self, reason: &'static str, events: usize);
    /// Failures, with a bounded `error_type` (`rejected`, `io`, `request_failed`).
    fn errored(&self, error_type: &'static str, count: usize);
    /// Events entering (+) or leaving (-) the channel in front of this component.
    fn buffer_changed(&self, delta_events: i64);
    /// Dead letters sent on `<id>.dead_letter` (each refusal is also counted by
    /// [`Telemetry::discarded`] under its reason).
    fn dead_lettered(&self, _events: usize) {}
}

/// Telemetry that records nothing (benchmarks, unit tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTelemetry;

impl Telemetry for NoTelemetry {
    fn received(&self, _: usize, _: usize) {}
    fn sent(&self, _: usize, _: usize) {}
    fn discarded(&self, _: &'static str, _: usize) {}
    fn errored(&self, _: &'static str, _: usize) {}
    fn buffer_changed(&self, _: i64) {}
}

/// Tells sources to stop reading. Cloned freely; resolves for every clone at once.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// Triggers a [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

impl Shutdown {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger { tx }, Shutdown { rx })
    }

    /// Resolves once shutdown is triggered (or its trigger is gone).
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|triggered| *triggered).await;
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

impl Telemetry for ComponentMetrics {
    fn received(&self, events: usize, bytes: usize) {
        ComponentMetrics::received(self, events, bytes);
    }

    fn sent(&self, events: usize, bytes: usize) {
        ComponentMetrics::sent(self, events, bytes);
    }

    fn discarded(&self, reason: &'static str, events: usize) {
        ComponentMetrics::discarded(self, reason, events);
    }

    fn errored(&self, error_type: &'static str, count: usize) {
        ComponentMetrics::errored(self, error_type, count);
    }

    fn buffer_changed(&self, delta_events: i64) {
        ComponentMetrics::buffer_changed(self, delta_events);
    }

    fn dead_lettered(&self, events: usize) {
        ComponentMetrics::dead_lettered(self, events);
    }
}

/// What a config gets to build its component.
#[derive(Clone)]
pub struct BuildContext {
    /// The component id from the pipeline file.
    pub id: String,
    /// The component's own directory for state (checkpoints): `<data_dir>/<id>`. Not
    /// created until the component needs it.
    pub data_dir: PathBuf,
    /// The component's engine counters (the engine counts through the same value; a
    /// plugin uses it for what only it can see, such as `discarded` reasons of its own).
    pub telemetry: Arc<dyn Telemetry>,
    /// The component's metrics handle: every series of its plugin
    /// (`metrics.file()`, `metrics.redactions(detector)`, ...) is recorded through it,
    /// already labelled with the component's id. In a running pipeline it is the same
    /// value as `telemetry`.
    pub metrics: Arc<ComponentMetrics>,
}

impl BuildContext {
    /// The context of component `id`, recording into `metrics`, whose engine counters are
    /// its [`ComponentMetrics`] (what `auditflow run` builds).
    pub fn new(
        metrics: &Metrics,
        kind: ComponentKind,
        component_type: &str,
        id: &str,
        data_dir: PathBuf,
    ) -> BuildContext {
        let handle = ComponentMetrics::new(metrics, id, kind.as_str(), component_type);
        BuildContext {
            id: id.to_owned(),
            data_dir,
            telemetry: Arc::clone(&handle) as Arc<dyn Telemetry>,
            metrics: handle,
        }
    }

    /// The context of a component built outside a running pipeline (`auditflow test`,
    /// benchmarks, tests that read no metric): its series go to a registry of its own that
    /// nothing renders, and its engine counters count nothing ([`NoTelemetry`]).
    pub fn unobserved(id: &str, data_dir: impl Into<PathBuf>) -> BuildContext {
        BuildContext {
            id: id.to_owned(),
            data_dir: data_dir.into(),
            telemetry: Arc::new(NoTelemetry),
            metrics: ComponentMetrics::new(&Metrics::new(), id, "", ""),
        }
    }
}

/// A component that could not be built from its config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BuildError {
    /// The option at fault, as a dotted path inside the component (`tls.ca_file`).
    pub field: Option<String>,
    pub message: String,
}

impl BuildError {
    pub fn new(message: impl Into<String>) -> BuildError {
        BuildError {
            field: None,
            message: message.into(),
        }
    }

    pub fn field(field: impl Into<String>, message: impl Into<String>) -> BuildError {
        BuildError {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// The first of the problems a plugin's compile step found: what `build` returns, as
    /// `validate` (the same compile step) has reported every one of them when the pipeline
    /// loaded.
    pub fn first_of(problems: Vec<BuildError>) -> BuildError {
        problems
            .into_iter()
            .next()
            .unwrap_or_else(|| BuildError::new("the options cannot be compiled"))
    }
}

/// A running component failed.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// An I/O operation failed; `context` says which and on what.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// The component cannot go on; the message says why and what to do.
    #[error("{0}")]
    Fatal(String),
    /// The pipeline closed the component's output or input under it.
    #[error("the pipeline stopped while this component was sending")]
    Closed,
}

impl From<crate::channel::Closed> for ComponentError {
    fn from(_: crate::channel::Closed) -> ComponentError {
        ComponentError::Closed
    }
}

/// What a source runs with.
pub struct SourceContext {
    pub id: String,
    /// Where batches go; waiting on it is the backpressure.
    pub out: Output,
    /// Stop reading when this fires, wait (bounded) for pending acknowledgements, write
    /// the final checkpoint, and return.
    pub shutdown: Shutdown,
    pub telemetry: Arc<dyn Telemetry>,
    /// Where refused records go (`<id>.dead_letter`), when something reads them.
    pub dead_letter: DeadLetterOutput,
}

/// What a sink runs with.
pub struct SinkContext {
    pub id: String,
    /// Batches to deliver; `None` once every upstream has finished (then flush and return).
    pub input: Receiver,
    pub telemetry: Arc<dyn Telemetry>,
    /// Where events the destination refused for good go (`<id>.dead_letter`), when
    /// something reads them.
    pub dead_letter: DeadLetterOutput,
}

/// Produces batches until its input ends or shutdown is signalled.
#[async_trait]
pub trait Source: Send {
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), ComponentError>;
}

/// Changes batches in place: drops events, edits fields. Runs synchronously, on the
/// runtime's worker threads.
///
/// A transform that keeps no state from one batch to the next offers copies of itself
/// ([`Transform::fork`]); the topology then runs up to `concurrency` batches at once, each
/// on its own copy, and passes them on in the order they came in.
pub trait Transform: Send {
    fn transform(&mut self, batch: &mut Batch);

    /// Another instance that may transform batches at the same time as this one (sharing
    /// counters and compiled options, not per-batch scratch space). `None`, the default,
    /// says the transform keeps state across batches (`dedupe`'s window) and must see them
    /// one at a time, in order.
    fn fork(&self) -> Option<Box<dyn Transform>> {
        None
    }
}

/// Delivers batches and resolves their finalizers.
#[async_trait]
pub trait Sink: Send {
    async fn run(self: Box<Self>, cx: SinkContext) -> Result<(), ComponentError>;
}

/// Checks that cannot be expressed in the config's types (mutually dependent options).
/// Shared by `auditflow validate` and `auditflow run`.
pub trait Validate {
    fn validate(&self) -> Vec<BuildError> {
        Vec::new()
    }
}

/// A source's options, as deserialised from the pipeline file.
pub trait SourceConfig: Validate + fmt::Debug + Send + Sync {
    fn build(&self, cx: BuildContext) -> Result<Box<dyn Source>, BuildError>;
}

/// A transform's options.
pub trait TransformConfig: Validate + fmt::Debug + Send + Sync {
    fn build(&self, cx: BuildContext) -> Result<Box<dyn Transform>, BuildError>;

    /// Whether the transform keeps state across batches, so that it must process them one
    /// at a time (its [`Transform::fork`] gives `None`); `validate` then refuses a
    /// `concurrency` above 1.
    fn one_batch_at_a_time(&self) -> bool {
        false
    }
}

/// A sink's options.
pub trait SinkConfig: Validate + fmt::Debug + Send + Sync {
    fn build(&self, cx: BuildContext) -> Result<Box<dyn Sink>, BuildError>;
}
