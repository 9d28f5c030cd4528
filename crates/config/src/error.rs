//! A problem in a pipeline, located.

use std::fmt;

/// One problem: which file, where in it, and what.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigError {
    /// The file as given on the command line, or `environment` for `AUDITFLOW_*` overrides.
    pub file: String,
    /// A dotted location (`sinks.out.batch.max_events`), empty for the file as a whole.
    pub location: String,
    /// What is wrong (and, where it helps, what to do), lowercase; shown after the file and
    /// location.
    pub message: String,
}

impl ConfigError {
    /// A problem in `file` at the dotted `location` (empty for the file as a whole).
    pub fn new(
        file: impl Into<String>,
        location: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: file.into(),
            location: location.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.location.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.location, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}
