//! The vocabulary every auditflow component speaks: events, batches, acknowledgements and
//! the `Source` / `Transform` / `Sink` traits.
//!
//! # Layout
//! - [`event`]: one audit event, parsed once into an index of its top-level fields.
//! - [`batch`]: the unit that flows between components, with its finalizers.
//! - [`finalize`]: end-to-end acknowledgements (`Delivered` / `Errored` / `Rejected`).
//! - [`framing`]: splitting a byte stream into records: lines, or JSON values in any
//!   layout; NUL padding and byte-order marks skipped.
//! - [`records`]: from records to events for the stream sources, refusals counted by
//!   reason and warned about at a bounded rate.
//! - [`decode`]: request bodies and message payloads (EventList, array, NDJSON) into
//!   events that share the body's bytes; used by the webhook and kafka sources.
//! - [`envelope`]: cloud envelopes around events (Azure diagnostic records, CloudWatch
//!   Logs payloads), the sources' `decoding` option.
//! - `scan`: the validating JSON scanner behind [`Event::from_bytes`](event::Event::from_bytes).
//! - [`raw`]: walking nested objects and arrays in an event's bytes without parsing them.
//! - [`condition`]: the expression language of `filter`, `sample` and `redact`.
//! - [`dead_letter`]: the `<id>.dead_letter` output of sources and sinks, and the
//!   `DeadLetter` event shape.
//! - [`channel`]: the bounded channel between components, which is the backpressure.
//! - [`tap`]: samples of the events passing a component, for `auditflow tap`.
//! - [`listener`]: listening sockets that a reload hands from a component's old instance
//!   to its new one.
//! - [`component`]: the traits plugins implement and the contexts they run in; a
//!   component's `BuildContext` carries its metrics handle (`auditflow-metrics`'s
//!   `ComponentMetrics`, which sits below this crate and is its `Telemetry`).
//! - [`duration`]: the range each duration option of a pipeline file must fall in.
//! - [`memory`]: `memory_limit_mb`: the monitor, and the flag that pauses sources.
//! - [`blocking`]: fsyncs, directory scans and compression, run off the async runtime.
//!
//! # The one design decision
//! An [`Event`] keeps the bytes it arrived as and parses only the top-level
//! field boundaries. A transform that reads `verb` parses `verb`; a sink that writes an
//! untouched event copies its original bytes. Most of an audit event's bytes sit in
//! `requestObject` / `responseObject`, which the common path never parses.

#![warn(missing_docs)]

pub mod batch;
pub mod blocking;
pub mod channel;
pub mod component;
pub mod condition;
pub mod dead_letter;
pub mod decode;
pub mod duration;
pub mod envelope;
pub mod event;
pub mod finalize;
pub mod framing;
pub mod listener;
pub mod memory;
pub mod raw;
pub mod records;
mod scan;
pub mod tap;

pub use batch::Batch;
pub use channel::Output;
pub use component::{
    BuildContext, BuildError, CompileOnce, ComponentError, ComponentKind, NoTelemetry, Shutdown,
    ShutdownTrigger, Sink, SinkConfig, SinkContext, Source, SourceConfig, SourceContext, Telemetry,
    Transform, TransformConfig, Validate,
};
pub use dead_letter::{DeadLetter, DeadLetterOutput, Location};
pub use event::{DecodeError, Event};
pub use finalize::{BatchNotifier, BatchReceiver, BatchStatus, Finalizer, Finalizers};
