//! The `buffer` option every sink takes: where its input waits while the destination is
//! slow or down.

use schemars::JsonSchema;
use serde::Deserialize;

use auditflow_core::duration::DurationRange;
use auditflow_core::BuildError;

/// The smallest disk buffer: room for a few segments of full batches.
pub const MIN_DISK_BUFFER_BYTES: u64 = 16 * 1024 * 1024;

/// Where a sink's input waits: in memory (a couple of batches; a full channel holds
/// the sources back) or on disk (acknowledged to the sources once fsynced there).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum BufferConfig {
    /// A small in-memory channel: nothing is acknowledged before the destination has it.
    Memory(MemoryBufferConfig),
    /// Segment files under `<data_dir>/<sink id>/buffer`.
    Disk(DiskBufferConfig),
}

impl Default for BufferConfig {
    fn default() -> BufferConfig {
        BufferConfig::Memory(MemoryBufferConfig {})
    }
}

/// A memory buffer takes no options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryBufferConfig {}

/// A disk buffer's options.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskBufferConfig {
    /// The most bytes the buffer's files may take, at least 16 MiB (16777216).
    pub max_bytes: u64,
    /// What happens to new events when the buffer is full.
    #[serde(default)]
    pub when_full: WhenFull,
    /// Longest wait, in milliseconds (1 to 60000), between writing a batch and fsyncing
    /// it (fsyncs are grouped); the sources are acknowledged after the fsync.
    #[serde(default = "default_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
}

/// What a full buffer does with new events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// The sink's input waits, and back-pressure reaches the sources.
    #[default]
    Block,
    /// New events are dropped and counted (`discarded_events_total{reason="buffer_full"}`).
    DropNewest,
}

/// `fsync_interval_ms`: the sources' acknowledgements wait for the fsync, so a minute
/// at most.
const FSYNC_INTERVAL_MS: DurationRange = DurationRange::millis(1, 60_000);

fn default_fsync_interval_ms() -> u64 {
    200
}

/// A `buffer` option that did not parse: the path inside it (`when_full`), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferOptionError {
    /// Dotted path inside `buffer`; empty for the option as a whole.
    pub path: String,
    /// What serde said is wrong there.
    pub message: String,
}

impl BufferConfig {
    /// Parses the `buffer` option by its `type` first, so that an error names the field
    /// inside it (`buffer.when_full`), which serde's tagged enums cannot.
    pub fn from_value(value: serde_json::Value) -> Result<BufferConfig, BufferOptionError> {
        let fail = |path: &str, message: String| BufferOptionError {
            path: path.to_owned(),
            message,
        };
        let serde_json::Value::Object(mut options) = value else {
            return Err(fail(
                "",
                "expected a mapping: `{type: memory}` or `{type: disk, max_bytes: ...}`".into(),
            ));
        };
        let kind = options.remove("type");
        match kind.as_ref().map(|kind| kind.as_str()) {
            Some(Some("memory")) => match options.keys().next() {
                None => Ok(BufferConfig::Memory(MemoryBufferConfig {})),
                Some(key) => Err(fail(
                    key,
                    "a memory buffer takes no options besides `type`; this one is for `type: disk`"
                        .into(),
                )),
            },
            Some(Some("disk")) => {
                serde_path_to_error::deserialize(serde_json::Value::Object(options))
                    .map(BufferConfig::Disk)
                    .map_err(|error| {
                        let path = error.path().to_string();
                        let path = if path == "." { String::new() } else { path };
                        fail(&path, error.into_inner().to_string())
                    })
            }
            Some(Some(other)) => Err(fail(
                "type",
                format!("unknown buffer type `{other}`; expected `memory` or `disk`"),
            )),
            Some(None) | None => Err(fail("type", "missing: `memory` or `disk`".into())),
        }
    }

    /// Checks what the types cannot; fields are named relative to the sink (`buffer.max_bytes`).
    pub fn validate(&self) -> Vec<BuildError> {
        let mut problems = Vec::new();
        if let BufferConfig::Disk(disk) = self {
            if disk.max_bytes < MIN_DISK_BUFFER_BYTES {
                problems.push(BuildError::field(
                    "buffer.max_bytes",
                    format!(
                        "a disk buffer needs at least {MIN_DISK_BUFFER_BYTES} bytes (16 MiB), found {}",
                        disk.max_bytes
                    ),
                ));
            }
            problems.extend(
                FSYNC_INTERVAL_MS
                    .check("buffer.fsync_interval_ms", disk.fsync_interval_ms)
                    .err(),
            );
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<BufferConfig, String> {
        BufferConfig::from_value(json).map_err(|error| format!("{}: {}", error.path, error.message))
    }

    #[test]
    fn disk_takes_its_options_with_defaults() {
        let config =
            parse(serde_json::json!({"type": "disk", "max_bytes": 1073741824u64})).unwrap();
        assert_eq!(
            config,
            BufferConfig::Disk(DiskBufferConfig {
                max_bytes: 1 << 30,
                when_full: WhenFull::Block,
                fsync_interval_ms: 200,
            })
        );
        assert!(config.validate().is_empty());
    }

    #[test]
    fn disk_needs_max_bytes_and_memory_takes_none() {
        let missing = parse(serde_json::json!({"type": "disk"})).unwrap_err();
        assert!(missing.contains("missing field `max_bytes`"), "{missing}");
        let extra = parse(serde_json::json!({"type": "memory", "max_bytes": 5})).unwrap_err();
        assert!(
            extra.starts_with("max_bytes: a memory buffer takes no options"),
            "{extra}"
        );
        let unknown = parse(serde_json::json!({"type": "tape"})).unwrap_err();
        assert_eq!(
            unknown,
            "type: unknown buffer type `tape`; expected `memory` or `disk`"
        );
        let when_full = parse(
            serde_json::json!({"type": "disk", "max_bytes": 1u64 << 30, "when_full": "wait"}),
        )
        .unwrap_err();
        assert!(
            when_full.starts_with("when_full: unknown variant `wait`"),
            "{when_full}"
        );
    }

    #[test]
    fn a_small_disk_buffer_is_refused_naming_the_field() {
        let config =
            parse(serde_json::json!({"type": "disk", "max_bytes": 1000, "fsync_interval_ms": 0}))
                .unwrap();
        let fields: Vec<_> = config
            .validate()
            .into_iter()
            .map(|p| p.field.unwrap())
            .collect();
        assert_eq!(fields, ["buffer.max_bytes", "buffer.fsync_interval_ms"]);
    }
}
