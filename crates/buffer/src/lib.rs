//! Disk buffers: a sink's input written to disk, acknowledged to the sources once durable,
//! and delivered to the sink from there.
//!
//! # Layout
//! - [`frame`]: one record on disk (length, CRC-32, write time, payload) and how damaged
//!   records are found and skipped.
//! - [`queue`]: the segmented queue: a writer, a reader, releases, the ledger, recovery.
//! - [`relay`]: the two tasks that sit between the topology's channel and the sink.
//!
//! # The one design decision
//! A record leaves the buffer only when the destination acknowledged it, not when it was
//! read: the reader hands out *spans*, the sink's acknowledgement releases a span, and
//! the queue's frontier (where a restart resumes) moves only over a leading run of
//! released spans. Sources are acknowledged as soon as their batch is fsynced, so an
//! outage of any length costs disk space, not events. Every disk operation runs on a
//! blocking thread; the async tasks only wait on channels and signals.
//!
//! No existing crate was used for the queue: `queue-file` keeps one circular file and
//! fails on a checksum mismatch instead of skipping the record; `yaque` checks headers
//! with parity bits only and watches files with `notify`; `okaywal` is a database log
//! whose entries are consumed by checkpointing, not released out of order by a consumer.

#![warn(missing_docs)]

pub mod frame;
pub mod queue;
pub mod relay;

pub use relay::{start, DiskBufferOptions, WhenFull};

#[cfg(test)]
mod tests;
