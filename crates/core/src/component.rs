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
    /// Reads events from outside (`sources` section); has outputs, no inputs.
    Source,
    /// Changes batches between inputs and outputs (`transforms` section).
    Transform,
    /// Delivers events outside (`sinks` section); has inputs, no outputs.
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
    /// A new shutdown signal, not yet triggered, and the trigger that fires it. Dropping the
    /// trigger counts as triggering.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger { tx }, Shutdown { rx })
    }

    /// Resolves once shutdown is triggered (or its trigger is gone).
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|triggered| *triggered).await;
    }

    /// Whether shutdown was triggered or its trigger dropped; does not wait.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }
}

impl ShutdownTrigger {
    /// Fires the shutdown for every clone of the [`Shutdown`]; calling it again does nothing.
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
    /// What is wrong and what to do, lowercase, without the file or component id: the
    /// topology prefixes those (`pipelines/x.yaml: sinks.out.tls.ca_file: <message>`).
    pub message: String,
}

impl BuildError {
    /// An error about the component as a whole, not one option.
    pub fn new(message: impl Into<String>) -> BuildError {
        BuildError {
            field: None,
            message: message.into(),
        }
    }

    /// An error about the option at the dotted path `field` (`tls.ca_file`).
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

/// A config's compiled options, kept from [`Validate::validate`] for the `build` that
/// follows, so that `auditflow run` compiles each component once: globs, templates and
/// TLS files are compiled or read by `validate` when the pipeline loads, and `build` takes
/// that result instead of compiling again.
///
/// A plugin holds one as a field of its config (`#[serde(skip)]`, `#[schemars(skip)]`),
/// fills it in `validate` with [`CompileOnce::validate`] and empties it in `build` with
/// [`CompileOnce::take`]. A `build` with nothing kept (no `validate` before it, or a
/// second build of the same config, as when a reload restarts a source with its previous
/// options) compiles afresh, so a build never uses a result twice. A clone starts empty.
pub struct CompileOnce<T> {
    kept: std::sync::Mutex<Option<T>>,
}

impl<T> CompileOnce<T> {
    /// Runs `compile` and keeps its result for the next [`CompileOnce::take`]; returns
    /// every problem it found (none when it compiled).
    pub fn validate(
        &self,
        compile: impl FnOnce() -> Result<T, Vec<BuildError>>,
    ) -> Vec<BuildError> {
        match compile() {
            Ok(compiled) => {
                *self.kept() = Some(compiled);
                Vec::new()
            }
            Err(problems) => problems,
        }
    }

    /// What the last [`CompileOnce::validate`] compiled, or else what `compile` gives now;
    /// the first problem when it does not compile.
    pub fn take(
        &self,
        compile: impl FnOnce() -> Result<T, Vec<BuildError>>,
    ) -> Result<T, BuildError> {
        let kept = self.kept().take();
        match kept {
            Some(compiled) => Ok(compiled),
            None => compile().map_err(BuildError::first_of),
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Option<T>> {
        // A panic while holding the lock leaves only an `Option` behind, which is sound.
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<T> Default for CompileOnce<T> {
    fn default() -> CompileOnce<T> {
        CompileOnce {
            kept: std::sync::Mutex::new(None),
        }
    }
}

impl<T> Clone for CompileOnce<T> {
    fn clone(&self) -> CompileOnce<T> {
        CompileOnce::default()
    }
}

impl<T> fmt::Debug for CompileOnce<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CompileOnce")
    }
}

/// A running component failed.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// An I/O operation failed; `context` says which and on what.
    #[error("{context}: {source}")]
    Io {
        /// What was being done and on which path or address (`reading /var/log/audit.log`).
        context: String,
        /// The operating system's error.
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
    /// The component id from the pipeline file, as in metric labels and log fields.
    pub id: String,
    /// Where batches go; waiting on it is the backpressure.
    pub out: Output,
    /// Stop reading when this fires, wait (bounded) for pending acknowledgements, write
    /// the final checkpoint, and return.
    pub shutdown: Shutdown,
    /// The component's counters; a source reports `received` per batch it reads.
    pub telemetry: Arc<dyn Telemetry>,
    /// Where refused records go (`<id>.dead_letter`), when something reads them.
    pub dead_letter: DeadLetterOutput,
}

/// What a sink runs with.
pub struct SinkContext {
    /// The component id from the pipeline file, as in metric labels and log fields.
    pub id: String,
    /// Batches to deliver; `None` once every upstream has finished (then flush and return).
    pub input: Receiver,
    /// The component's counters; a sink reports `sent` per batch the destination accepted.
    pub telemetry: Arc<dyn Telemetry>,
    /// Where events the destination refused for good go (`<id>.dead_letter`), when
    /// something reads them.
    pub dead_letter: DeadLetterOutput,
}

/// Produces batches until its input ends or shutdown is signalled.
#[async_trait]
pub trait Source: Send {
    /// Reads until the input ends or `cx.shutdown` fires, sending batches on `cx.out`;
    /// returns `Ok` once stopped cleanly, an error when it cannot go on (the topology logs
    /// it under the component id and stops the pipeline).
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), ComponentError>;
}

/// Changes batches in place: drops events, edits fields. Runs synchronously, on the
/// runtime's worker threads.
///
/// A transform that keeps no state from one batch to the next offers copies of itself
/// ([`Transform::fork`]); the topology then runs up to `concurrency` batches at once, each
/// on its own copy, and passes them on in the order they came in.
pub trait Transform: Send {
    /// Transforms `batch` in place: drops events or edits their fields. Cannot fail; an event it
    /// cannot handle is dropped and counted with [`Telemetry::discarded`], or passed on as is.
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
    /// Delivers batches from `cx.input` until it returns `None`, resolving each batch's
    /// finalizers with the destination's answer; returns `Ok` once flushed, an error when it
    /// cannot go on.
    async fn run(self: Box<Self>, cx: SinkContext) -> Result<(), ComponentError>;
}

/// Checks that cannot be expressed in the config's types (mutually dependent options).
/// Shared by `auditflow validate` and `auditflow run`.
pub trait Validate {
    /// Every problem found, each naming its option ([`BuildError::field`]); empty when the
    /// options are consistent. The default finds none.
    fn validate(&self) -> Vec<BuildError> {
        Vec::new()
    }
}

/// A source's options, as deserialised from the pipeline file.
pub trait SourceConfig: Validate + fmt::Debug + Send + Sync {
    /// Builds the source from these options (taking what `validate` compiled, where the
    /// plugin keeps it in a [`CompileOnce`]); fails with the first problem that keeps it
    /// from running (an unreadable file, a bad address).
    fn build(&self, cx: BuildContext) -> Result<Box<dyn Source>, BuildError>;

    /// The largest record this source may read in one piece, in bytes, and the option
    /// that sets it (`max_line_bytes` for a line, `max_body_bytes` for a request); `None`
    /// when it sets no such bound of its own. Under `memory_limit_mb`, sources pause twice the largest of these below
    /// the limit, so that a record read between two samples of the memory, and the copy a
    /// sink encodes from it, still fit under it (see [`crate::memory::set_reserve`]).
    fn max_record_bytes(&self) -> Option<(u64, &'static str)> {
        None
    }
}

/// A transform's options.
pub trait TransformConfig: Validate + fmt::Debug + Send + Sync {
    /// Builds the transform from these options; fails with the first problem, as
    /// [`SourceConfig::build`] does.
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
    /// Builds the sink from these options; fails with the first problem, as
    /// [`SourceConfig::build`] does.
    fn build(&self, cx: BuildContext) -> Result<Box<dyn Sink>, BuildError>;
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::{BuildError, CompileOnce};

    /// A compile step that counts its runs and compiles to its run number, or fails.
    fn counting(
        runs: &Cell<u32>,
        fails: bool,
    ) -> impl FnOnce() -> Result<u32, Vec<BuildError>> + '_ {
        move || {
            runs.set(runs.get() + 1);
            if fails {
                Err(vec![
                    BuildError::field("a", "first"),
                    BuildError::field("b", "second"),
                ])
            } else {
                Ok(runs.get())
            }
        }
    }

    #[test]
    fn a_build_after_validate_takes_what_validate_compiled() {
        let runs = Cell::new(0);
        let compiled = CompileOnce::default();
        assert!(compiled.validate(counting(&runs, false)).is_empty());
        assert_eq!(compiled.take(counting(&runs, false)), Ok(1));
        assert_eq!(runs.get(), 1, "the build compiled again");
        // A second build (a source restarted with its previous options) compiles afresh.
        assert_eq!(compiled.take(counting(&runs, false)), Ok(2));
        assert_eq!(runs.get(), 2);
    }

    #[test]
    fn validate_returns_every_problem_and_keeps_nothing() {
        let runs = Cell::new(0);
        let compiled: CompileOnce<u32> = CompileOnce::default();
        let problems = compiled.validate(counting(&runs, true));
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_deref()).collect();
        assert_eq!(fields, [Some("a"), Some("b")]);
        let error = compiled.take(counting(&runs, true)).unwrap_err();
        assert_eq!(error, BuildError::field("a", "first"));
        assert_eq!(runs.get(), 2);
    }

    #[test]
    fn a_clone_starts_empty() {
        let runs = Cell::new(0);
        let compiled = CompileOnce::default();
        assert!(compiled.validate(counting(&runs, false)).is_empty());
        let copy = compiled.clone();
        assert_eq!(copy.take(counting(&runs, false)), Ok(2));
        assert_eq!(compiled.take(counting(&runs, false)), Ok(1));
    }
}
