//! The component types a binary knows. The CLI fills it from its one explicit list.

use std::fmt;

use auditflow_core::{ComponentKind, SinkConfig, SourceConfig, TransformConfig};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

/// A parsed component config, ready to build.
pub enum AnyConfig {
    /// The options of a `sources` entry.
    Source(Box<dyn SourceConfig>),
    /// The options of a `transforms` entry.
    Transform(Box<dyn TransformConfig>),
    /// The options of a `sinks` entry.
    Sink(Box<dyn SinkConfig>),
}

impl AnyConfig {
    /// The plugin's own checks ([`auditflow_core::Validate`]): every problem, each naming
    /// its option; empty when there is none.
    pub fn validate(&self) -> Vec<auditflow_core::BuildError> {
        match self {
            AnyConfig::Source(config) => config.validate(),
            AnyConfig::Transform(config) => config.validate(),
            AnyConfig::Sink(config) => config.validate(),
        }
    }
}

impl fmt::Debug for AnyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnyConfig::Source(config) => config.fmt(f),
            AnyConfig::Transform(config) => config.fmt(f),
            AnyConfig::Sink(config) => config.fmt(f),
        }
    }
}

/// Why a component's options did not parse: where inside the component, and what.
#[derive(Debug, Clone)]
pub struct OptionError {
    /// Dotted path inside the component (`batch.max_events`); empty for the whole.
    pub path: String,
    /// What serde said is wrong there (``unknown field `tsl`, expected one of ...``).
    pub message: String,
}

type Parse = fn(serde_json::Value) -> Result<AnyConfig, OptionError>;

/// One component type.
#[derive(Clone)]
pub struct Plugin {
    /// The `type:` value in pipeline files.
    pub name: &'static str,
    /// Whether it is a source, a transform or a sink: the section its `type:` is looked up in.
    pub kind: ComponentKind,
    /// One line saying what it does.
    pub summary: &'static str,
    parse: Parse,
    schema: fn() -> schemars::Schema,
}

impl Plugin {
    /// The source type `name`, whose options deserialise into `C`; `summary` is the line
    /// `auditflow plugins` prints beside the name.
    pub fn source<C>(name: &'static str, summary: &'static str) -> Plugin
    where
        C: SourceConfig + DeserializeOwned + JsonSchema + 'static,
    {
        Plugin {
            name,
            kind: ComponentKind::Source,
            summary,
            parse: |value| parse::<C>(value).map(|c| AnyConfig::Source(Box::new(c))),
            schema: || schemars::schema_for!(C),
        }
    }

    /// The transform type `name`, whose options deserialise into `C`; `summary` as for
    /// [`Plugin::source`].
    pub fn transform<C>(name: &'static str, summary: &'static str) -> Plugin
    where
        C: TransformConfig + DeserializeOwned + JsonSchema + 'static,
    {
        Plugin {
            name,
            kind: ComponentKind::Transform,
            summary,
            parse: |value| parse::<C>(value).map(|c| AnyConfig::Transform(Box::new(c))),
            schema: || schemars::schema_for!(C),
        }
    }

    /// The sink type `name`, whose options deserialise into `C`; `summary` as for
    /// [`Plugin::source`].
    pub fn sink<C>(name: &'static str, summary: &'static str) -> Plugin
    where
        C: SinkConfig + DeserializeOwned + JsonSchema + 'static,
    {
        Plugin {
            name,
            kind: ComponentKind::Sink,
            summary,
            parse: |value| parse::<C>(value).map(|c| AnyConfig::Sink(Box::new(c))),
            schema: || schemars::schema_for!(C),
        }
    }

    /// Parses a component's options (everything but `type` and `inputs`).
    pub fn parse(&self, options: serde_json::Value) -> Result<AnyConfig, OptionError> {
        (self.parse)(options)
    }

    /// The JSON schema of the options, with the `///` docs of the config struct.
    pub fn schema(&self) -> schemars::Schema {
        (self.schema)()
    }
}

fn parse<C: DeserializeOwned>(value: serde_json::Value) -> Result<C, OptionError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        OptionError {
            path: if path == "." { String::new() } else { path },
            message: error.into_inner().to_string(),
        }
    })
}

/// Every component type a binary knows, in the order they were listed.
#[derive(Clone, Default)]
pub struct Registry {
    plugins: Vec<Plugin>,
}

impl Registry {
    /// A registry of `plugins`. Two plugins of one kind with one name is a programming
    /// error and fails loudly.
    ///
    /// # Panics
    /// When two plugins of one kind share a name.
    pub fn new(plugins: Vec<Plugin>) -> Registry {
        for (i, plugin) in plugins.iter().enumerate() {
            assert!(
                !plugins[..i]
                    .iter()
                    .any(|other| other.kind == plugin.kind && other.name == plugin.name),
                "two {} plugins are named {:?}",
                plugin.kind,
                plugin.name
            );
        }
        Registry { plugins }
    }

    /// Every plugin, in the order given to [`Registry::new`].
    pub fn plugins(&self) -> &[Plugin] {
        &self.plugins
    }

    /// The plugin of `kind` whose `type:` value is `name`; `None` for an unknown type.
    pub fn find(&self, kind: ComponentKind, name: &str) -> Option<&Plugin> {
        self.plugins
            .iter()
            .find(|plugin| plugin.kind == kind && plugin.name == name)
    }

    /// The type names of one kind, sorted.
    pub fn names(&self, kind: ComponentKind) -> Vec<&'static str> {
        let mut names: Vec<_> = self
            .plugins
            .iter()
            .filter(|plugin| plugin.kind == kind)
            .map(|plugin| plugin.name)
            .collect();
        names.sort_unstable();
        names
    }
}
