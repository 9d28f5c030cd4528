//! `kafka` source and sink: the aggregation tier, scaled out through consumer groups,
//! at-least-once from end to end.
//!
//! Both sides are librdkafka (the `rdkafka` crate, built from source without cmake).
//! Kafka is the distributed engine: partitions, consumer groups and rebalancing are
//! librdkafka's; this crate only ties them to auditflow's batches and acknowledgements.
//!
//! # Layout
//! - [`source`]: the consumer group member, its rebalance hooks, backpressure by pausing;
//!   payloads are split into events by [`auditflow_core::decode`], shared with `webhook`.
//! - [`offsets`]: which offsets may be committed, from out-of-order acknowledgements.
//! - [`sink`]: the idempotent producer, acknowledging batches from delivery reports.
//!
//! # The one design decision
//! The source never lets librdkafka commit on its own (`enable.auto.commit=false`): an
//! offset is committed only once every message up to it in its partition has been
//! acknowledged `Delivered` by every sink, so a crash anywhere replays instead of losing.
//! When the pipeline is full the source pauses its partitions and keeps polling, so it
//! stays in the group instead of being evicted for not polling.

mod offsets;
mod sink;
mod source;

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

pub use sink::{Compression, KafkaSinkConfig};
pub use source::{AutoOffsetReset, Decoding, KafkaSourceConfig};

/// A librdkafka configuration from the options every kafka component shares; the
/// `librdkafka_options` passthrough goes last so that it can override anything.
fn client_config(
    bootstrap_servers: &str,
    defaults: &[(&str, &str)],
    passthrough: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap_servers);
    for (key, value) in defaults {
        config.set(*key, *value);
    }
    for (key, value) in passthrough {
        config.set(key, value);
    }
    config
}

/// The last of a build: names the client after its component (`auditflow-<id>`) unless
/// `librdkafka_options` names it (the passthrough overrides anything), then has librdkafka
/// check every property, so that a typo fails `run` at start. That check is not part of
/// the compile step behind `validate`: what librdkafka accepts depends on how the binary
/// was built (OpenSSL, SASL), not on the pipeline.
fn finish_client(
    config: &mut ClientConfig,
    id: &str,
    passthrough: &BTreeMap<String, String>,
) -> Result<(), auditflow_core::BuildError> {
    if !passthrough.contains_key("client.id") {
        config.set("client.id", format!("auditflow-{id}"));
    }
    config.create_native_config().map_err(|error| {
        auditflow_core::BuildError::field("librdkafka_options", error.to_string())
    })?;
    Ok(())
}

/// Sends librdkafka's own log lines and client errors to `tracing`, with the component
/// id (otherwise they would go nowhere).
fn forward_log(id: &str, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as Level;
    match level {
        Level::Emerg | Level::Alert | Level::Critical | Level::Error => {
            tracing::error!(component_id = %id, facility, "librdkafka: {message}")
        }
        Level::Warning => tracing::warn!(component_id = %id, facility, "librdkafka: {message}"),
        Level::Notice | Level::Info => {
            tracing::info!(component_id = %id, facility, "librdkafka: {message}")
        }
        Level::Debug => tracing::debug!(component_id = %id, facility, "librdkafka: {message}"),
    }
}

/// The sink's librdkafka callbacks: logs and client errors.
struct ProducerLogs {
    id: String,
}

impl rdkafka::ClientContext for ProducerLogs {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        forward_log(&self.id, level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(component_id = %self.id, %error, reason, "kafka sink client error");
    }
}
