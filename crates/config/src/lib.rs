//! Loading pipeline files into a checked [`Pipeline`].
//!
//! # Layout
//! - [`interpolate`]: `${VAR}` / `${VAR:-default}` replacement before parsing.
//! - [`registry`]: the table of component types a binary knows (filled by the CLI).
//! - [`load`](mod@load): reading, merging (figment), per-component parsing, graph checks.
//! - [`api`]: the `api` section ([`ApiConfig`]).
//! - [`buffer`]: the `buffer` option every sink takes ([`BufferConfig`]).
//! - [`error`]: [`ConfigError`], which always names the file, the location and the problem.
//!
//! # The one design decision
//! Loading never stops at the first problem: every file, component and edge is checked
//! and all the problems come back at once, sorted, so that one `auditflow validate`
//! tells the operator everything to fix.

#![warn(missing_docs)]

pub mod api;
pub mod buffer;
pub mod error;
pub mod interpolate;
pub mod load;
pub mod registry;
pub mod types;

pub use api::ApiConfig;
pub use buffer::{BufferConfig, DiskBufferConfig, WhenFull};
pub use error::ConfigError;
pub use load::{load, Component, MetricsConfig, Pipeline, TestsSection};
pub use registry::{AnyConfig, Plugin, Registry};
