//! Questions asked of audit logs at a shell, over the files an operator already has:
//! `auditflow query` (filter, group and count, list) and `auditflow rbac suggest` (the
//! least RBAC that would have allowed what was denied).
//!
//! # Layout
//! - [`input`]: files (plain, `.gz`, rotated sets in time order), stdin and webhook
//!   `EventList` bodies, read in chunks and decoded on every core.
//! - [`time`]: `--since` / `--until` windows on an event timestamp.
//! - [`query`]: the filter (`--where`, the window, `--denials`), grouping and listings.
//! - [`output`]: `table`, `json`, `csv` and `ndjson`.
//! - [`suggest`]: RBAC denials into Roles, ClusterRoles and their bindings, as YAML.
//!
//! # The one design decision
//! Nothing here has its own idea of an event, a condition or a denial: events are
//! [`auditflow_core::Event`]s decoded from slices of the chunk they were read in, filters
//! are the pipeline's [`auditflow_core::condition`] language, and denials are what the
//! `rbac_denial` transform would tag. A question answered here is answered the same way
//! by a pipeline.

pub mod input;
pub mod output;
pub mod query;
pub mod suggest;
pub mod time;

pub use input::{Input, InputError, ReadOptions, ScanStats};
pub use output::Format;
pub use query::{Filter, Query, Request};
pub use suggest::{Subject, SuggestOptions};
pub use time::{TimeField, TimeWindow};
