//! `file` source: tails kube-apiserver audit logs (one JSON event per line) across rename
//! and copy-truncate rotation, deletion, restarts and crashes, without losing an event.
//!
//! # Layout
//! - this module: the options ([`FileConfig`]), their checks, and the build step.
//! - [`tailer`]: the running source: finding files, reading them, batching, and turning
//!   acknowledgements into checkpoints.
//! - [`fingerprint`]: how a file is recognised across renames and restarts.
//! - [`checkpoint`]: the on-disk checkpoint file, written atomically.
//! - [`sink`]: the `file` sink ([`FileSinkConfig`]): NDJSON to dated, rotated files.
//!
//! # The one design decision
//! A file's checkpoint is its *acknowledged* offset, not its read offset. Every batch
//! carries a finalizer; per file the source keeps the end offsets of its batches in
//! flight, in order, and moves the checkpoint only over a leading run of delivered ones.
//! A crash therefore replays at most what was in flight (bounded by
//! [`tailer::MAX_BATCHES_IN_FLIGHT`]) plus the last checkpoint interval, and never skips.
//! Files are found by polling (a directory listing every `glob_interval_ms`, `fstat` of
//! open files when idle), so the source needs no inotify and works on any file system.

mod checkpoint;
mod fingerprint;
mod sink;
mod tailer;

pub use sink::FileSinkConfig;

use std::time::Duration;

use auditflow_core::duration::DurationRange;
use auditflow_core::envelope::{Decoding, Envelope, EnvelopeField};
use auditflow_core::framing::Framing;
use auditflow_core::{BuildContext, BuildError, CompileOnce, Source, SourceConfig, Validate};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use schemars::JsonSchema;
use serde::Deserialize;

/// Tails files of one JSON event per line (kube-apiserver's audit log backend), following
/// rotation and resuming from acknowledged checkpoints.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// What `validate` compiled when the pipeline loaded, for `build` to take.
    #[serde(skip)]
    #[schemars(skip)]
    compiled: CompileOnce<tailer::Settings>,
    /// Glob patterns of the files to read (`/var/log/kubernetes/audit/*.log`). `*` stays
    /// within one directory; `**` crosses directories. Rotated backups must match too for
    /// their last lines to be read after a restart.
    pub include: Vec<String>,
    /// Glob patterns of files not to read, even when `include` matches them.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// How often to look for new, renamed and deleted files, in milliseconds (1 to
    /// 3600000: 1 ms to 1 h). Open files are polled for new data more often than this.
    #[serde(default = "default_glob_interval_ms")]
    pub glob_interval_ms: u64,
    /// Where to start in a file the source has no checkpoint for, on its very first start
    /// (no checkpoint file yet). Files that appear later are always read from the beginning.
    #[serde(default)]
    pub read_from: ReadFrom,
    /// How a file is recognised across renames and restarts.
    #[serde(default)]
    pub fingerprint: FingerprintMode,
    /// Longest line accepted, in bytes; a longer line is skipped whole and counted as
    /// `oversized`.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// How a file is split into events: `lines` (default: one event per line, as
    /// kube-apiserver writes its log) or `json_stream` (JSON values in any layout: events
    /// back to back, or pretty-printed over several lines, as `jq .` writes them).
    #[serde(default)]
    pub framing: Framing,
    /// How each record holds events: `audit` (default: an event, an `EventList` or an
    /// array), `azure_diagnostic_records` (one `{"records":[...]}` batch per record, as
    /// exported to a storage account) or `cloudwatch_logs` (one CloudWatch Logs
    /// subscription payload per record).
    #[serde(default)]
    pub decoding: Decoding,
    /// Envelope fields kept on every event as annotations (`cloudwatch_logs` only):
    /// `logGroup` (`auditflow.io/log-group`), `logStream` (`auditflow.io/log-stream`).
    #[serde(default)]
    pub keep_envelope_fields: Vec<EnvelopeField>,
    /// How long to keep reading a file after it was renamed away or deleted (or has not
    /// grown), in seconds (0 to 86400: up to 1 day), before closing it.
    #[serde(default = "default_rotate_wait_secs")]
    pub rotate_wait_secs: u64,
    /// How long the checkpointed position of a file that is no longer found (deleted, or
    /// renamed out of the globs) is kept, in seconds (1 to 2592000: 1 s to 30 days),
    /// before it is forgotten. A file that
    /// comes back after that is read again from its beginning.
    #[serde(default = "default_forget_after_secs")]
    pub forget_after_secs: u64,
}

/// Where to start reading a file with no checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadFrom {
    /// From its first byte.
    #[default]
    Beginning,
    /// From its end: only lines written after the source started.
    End,
}

/// How a file is recognised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FingerprintMode {
    /// A checksum of the file's first line, or of its first 256 bytes if the line is
    /// longer. Survives inode reuse and recognises gzipped backups of files already read.
    /// A file shorter than that (and with no newline yet) is not read until it grows.
    #[default]
    Checksum,
    /// The device and inode numbers. Reads a file as soon as it exists, but a reused
    /// inode looks like the old file, and gzipped backups are read again.
    DeviceInode,
}

/// `glob_interval_ms`: a scan at least once an hour.
const GLOB_INTERVAL_MS: DurationRange = DurationRange::millis(1, DurationRange::HOUR_SECS * 1000);
/// `rotate_wait_secs`: 0 closes a file as soon as it is gone and read to its end.
const ROTATE_WAIT_SECS: DurationRange = DurationRange::secs(0, DurationRange::DAY_SECS);
/// `forget_after_secs`: up to 30 days.
const FORGET_AFTER_SECS: DurationRange = DurationRange::secs(1, 30 * DurationRange::DAY_SECS);

fn default_glob_interval_ms() -> u64 {
    1000
}

fn default_max_line_bytes() -> usize {
    4 * 1024 * 1024
}

fn default_rotate_wait_secs() -> u64 {
    30
}

fn default_forget_after_secs() -> u64 {
    3600
}

/// Compiles glob patterns, or every pattern that does not compile, each named by option
/// and index.
fn glob_set(field: &str, patterns: &[String]) -> Result<GlobSet, Vec<BuildError>> {
    let mut set = GlobSetBuilder::new();
    let mut errors = Vec::new();
    for (index, pattern) in patterns.iter().enumerate() {
        match GlobBuilder::new(pattern).literal_separator(true).build() {
            Ok(glob) => {
                set.add(glob);
            }
            Err(e) => errors.push(BuildError::field(
                format!("{field}[{index}]"),
                e.kind().to_string(),
            )),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    set.build()
        .map_err(|e| vec![BuildError::field(field, e.to_string())])
}

impl FileConfig {
    /// The options compiled into the tailer's settings (each glob compiled once), or every
    /// problem with them, each naming its field. The one step behind both `validate` and
    /// `build`; the checkpoint directory, which depends on the machine, is left to `build`.
    fn compile(&self) -> Result<tailer::Settings, Vec<BuildError>> {
        let mut errors = Vec::new();
        if self.include.is_empty() {
            errors.push(BuildError::field(
                "include",
                "list at least one file or glob pattern",
            ));
        }
        let mut globs = |field, patterns| match glob_set(field, patterns) {
            Ok(set) => Some(set),
            Err(problems) => {
                errors.extend(problems);
                None
            }
        };
        let include = globs("include", &self.include);
        let exclude = globs("exclude", &self.exclude);
        if self.max_line_bytes == 0 {
            errors.push(BuildError::field("max_line_bytes", "must be at least 1"));
        }
        let durations = [
            ("glob_interval_ms", GLOB_INTERVAL_MS, self.glob_interval_ms),
            ("rotate_wait_secs", ROTATE_WAIT_SECS, self.rotate_wait_secs),
            (
                "forget_after_secs",
                FORGET_AFTER_SECS,
                self.forget_after_secs,
            ),
        ];
        for (field, range, value) in durations {
            errors.extend(range.check(field, value).err());
        }
        let envelope = self.envelope();
        if let Some(problem) = envelope.problem() {
            errors.push(BuildError::field("keep_envelope_fields", problem));
        }
        match (include, exclude) {
            (Some(include), Some(exclude)) if errors.is_empty() => Ok(tailer::Settings {
                include_patterns: self.include.clone(),
                include,
                exclude,
                glob_interval: Duration::from_millis(self.glob_interval_ms),
                read_from: self.read_from,
                fingerprint: self.fingerprint,
                max_line_bytes: self.max_line_bytes,
                framing: self.framing,
                envelope,
                rotate_wait: Duration::from_secs(self.rotate_wait_secs),
                forget_after: Duration::from_secs(self.forget_after_secs),
            }),
            _ => Err(errors),
        }
    }

    fn envelope(&self) -> Envelope {
        Envelope {
            decoding: self.decoding,
            keep: self.keep_envelope_fields.clone(),
        }
    }
}

impl Validate for FileConfig {
    fn validate(&self) -> Vec<BuildError> {
        self.compiled.validate(|| self.compile())
    }
}

impl SourceConfig for FileConfig {
    fn max_record_bytes(&self) -> Option<(u64, &'static str)> {
        Some((u64::try_from(self.max_line_bytes).ok()?, "max_line_bytes"))
    }

    fn build(&self, cx: BuildContext) -> Result<Box<dyn Source>, BuildError> {
        let settings = self.compiled.take(|| self.compile())?;
        let tailer = tailer::Tailer::new(&cx.id, &cx.data_dir, settings, cx.metrics.file())
            .map_err(|message| {
                BuildError::new(format!("cannot use the checkpoint directory: {message}"))
            })?;
        Ok(Box::new(tailer))
    }
}

#[cfg(test)]
mod tests;
