//! The `kafka` sink: an idempotent producer that acknowledges batches from delivery
//! reports.
//!
//! Every event becomes one message, its payload the event's JSON bytes (an unchanged
//! event is written as the bytes it arrived as). The sink hands a whole batch to
//! librdkafka without waiting, then a small task per batch awaits the batch's delivery
//! reports and resolves its finalizers, so batches pipeline through the producer. A full
//! producer queue is backpressure: the sink waits for room, which in turn stops it from
//! taking more batches.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use auditflow_core::{
    BatchStatus, BuildContext, BuildError, CompileOnce, ComponentError, DeadLetter, Event,
    Location, Sink, SinkConfig, SinkContext, Validate,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::task::JoinSet;

/// How long to wait before offering a message again to a full producer queue.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(10);
/// How long the sink waits at the end for messages still in the producer.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes each event as one JSON message to a Kafka topic.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// What `validate` compiled when the pipeline loaded, for `build` to take.
    #[serde(skip)]
    #[schemars(skip)]
    compiled: CompileOnce<KafkaSink>,
    /// Brokers to bootstrap from, comma-separated `host:port`.
    pub bootstrap_servers: String,
    /// Topic to write to.
    pub topic: String,
    /// Top-level field whose value is the message key (events without it get no key).
    /// The default keeps every stage of one request in one partition.
    #[serde(default = "default_key_field")]
    pub key_field: String,
    /// Compression of message batches: `zstd`, `lz4`, `gzip`, `snappy` or `none`.
    #[serde(default)]
    pub compression: Compression,
    /// Headers added to every message.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// librdkafka properties passed through as they are (TLS, SASL, tuning), applied last.
    #[serde(default)]
    pub librdkafka_options: BTreeMap<String, String>,
}

fn default_key_field() -> String {
    "auditID".to_owned()
}

/// Compression codec of produced message batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    Zstd,
    Lz4,
    Gzip,
    Snappy,
    None,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::None => "none",
        }
    }
}

impl KafkaSinkConfig {
    /// The options checked (every problem at once) and made into the sink, but for the
    /// client's name, which is the component's. The one step behind both `validate` and
    /// `build` ([`crate::finish_client`] does the rest).
    fn compile(&self) -> Result<KafkaSink, Vec<BuildError>> {
        let mut errors = Vec::new();
        if self.bootstrap_servers.trim().is_empty() {
            errors.push(BuildError::field(
                "bootstrap_servers",
                "must name at least one broker (host:port)",
            ));
        }
        if self.topic.trim().is_empty() {
            errors.push(BuildError::field("topic", "must not be empty"));
        }
        if self.key_field.is_empty() {
            errors.push(BuildError::field("key_field", "must not be empty"));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let headers = (!self.headers.is_empty()).then(|| {
            self.headers
                .iter()
                .fold(OwnedHeaders::new(), |headers, (key, value)| {
                    headers.insert(Header {
                        key,
                        value: Some(value),
                    })
                })
        });
        Ok(KafkaSink {
            config: crate::client_config(
                &self.bootstrap_servers,
                &[
                    ("enable.idempotence", "true"),
                    ("acks", "all"),
                    ("compression.type", self.compression.as_str()),
                ],
                &self.librdkafka_options,
            ),
            topic: self.topic.clone(),
            key_field: self.key_field.clone(),
            headers,
        })
    }
}

impl Validate for KafkaSinkConfig {
    fn validate(&self) -> Vec<BuildError> {
        self.compiled.validate(|| self.compile())
    }
}

impl SinkConfig for KafkaSinkConfig {
    fn build(&self, cx: BuildContext) -> Result<Box<dyn Sink>, BuildError> {
        let mut sink = self.compiled.take(|| self.compile())?;
        crate::finish_client(&mut sink.config, &cx.id, &self.librdkafka_options)?;
        Ok(Box::new(sink))
    }
}

/// A running producer.
pub(crate) struct KafkaSink {
    config: ClientConfig,
    topic: String,
    key_field: String,
    headers: Option<OwnedHeaders>,
}

#[async_trait]
impl Sink for KafkaSink {
    async fn run(self: Box<Self>, mut cx: SinkContext) -> Result<(), ComponentError> {
        let id = cx.id.clone();
        let logs = crate::ProducerLogs { id: id.clone() };
        let producer: FutureProducer<crate::ProducerLogs> =
            self.config.create_with_context(logs).map_err(|error| {
            ComponentError::Fatal(format!(
                "kafka sink {id}: cannot create the producer: {error}; check bootstrap_servers and librdkafka_options"
            ))
        })?;
        let mut deliveries = JoinSet::new();
        while let Some(mut batch) = cx.input.recv().await {
            let finalizers = batch.take_finalizers();
            let mut reports = Vec::with_capacity(batch.len());
            let mut bytes = 0;
            let mut refused = Vec::new();
            // With dead letters, each payload is kept until its message's fate is known.
            let keep = cx.dead_letter.is_connected();
            for event in &batch.events {
                let payload = event.to_json_bytes();
                bytes += payload.len();
                let key = key_of(event, &self.key_field);
                let produced = self.produce(&producer, key, &payload).await;
                let kept = keep.then(|| payload.clone());
                match produced {
                    Ok(report) => reports.push((report, kept)),
                    Err(error) => refused.push((error, kept)),
                }
            }
            let telemetry = Arc::clone(&cx.telemetry);
            let id = id.clone();
            let dead_letter = cx.dead_letter.clone();
            let location = Location::Destination {
                destination: self.topic.clone(),
            };
            deliveries.spawn(async move {
                let events = reports.len() + refused.len();
                let mut failed = refused;
                for (report, payload) in reports {
                    match report.await {
                        Ok(Ok(_)) => {}
                        Ok(Err((error, _))) => failed.push((error, payload)),
                        Err(_) => failed.push((KafkaError::Canceled, payload)),
                    }
                }
                if failed.is_empty() {
                    telemetry.sent(events, bytes);
                    finalizers.resolve(BatchStatus::Delivered);
                    return;
                }
                telemetry.sent(events - failed.len(), 0);
                telemetry.errored("rejected", failed.len());
                telemetry.discarded("rejected", failed.len());
                tracing::error!(
                    component_id = %id,
                    events = failed.len(),
                    error = %failed[0].0,
                    dead_letters = dead_letter.is_connected(),
                    "kafka refused messages for good; their batch is rejected"
                );
                if !dead_letter.is_connected() {
                    finalizers.resolve(BatchStatus::Rejected);
                    return;
                }
                let letters = failed
                    .iter()
                    .filter_map(|(error, payload)| {
                        dead_letter.letter(&DeadLetter {
                            reason: "rejected",
                            error: &error.to_string(),
                            location: &location,
                            status: None,
                            reply: None,
                            raw: payload.as_deref().unwrap_or_default(),
                            truncated: false,
                        })
                    })
                    .collect();
                if dead_letter.send(letters, finalizers).await.is_err() {
                    tracing::error!(component_id = %id,
                        "the dead-letter output closed before the refused messages reached it; they are lost");
                }
            });
            while deliveries.try_join_next().is_some() {}
        }
        // Upstream finished: wait for every delivery report before returning.
        let flushed = tokio::task::spawn_blocking(move || {
            let flushed = producer.flush(FLUSH_TIMEOUT);
            (producer, flushed)
        })
        .await;
        match flushed {
            Ok((_producer, Err(error))) => tracing::warn!(
                component_id = %id,
                %error,
                "kafka messages still undelivered after {FLUSH_TIMEOUT:?}"
            ),
            Err(error) => {
                tracing::warn!(component_id = %id, %error, "flushing the kafka producer failed")
            }
            Ok((_producer, Ok(()))) => {}
        }
        while deliveries.join_next().await.is_some() {}
        Ok(())
    }
}

impl KafkaSink {
    /// Hands one message to librdkafka, waiting while its queue is full.
    async fn produce(
        &self,
        producer: &FutureProducer<crate::ProducerLogs>,
        key: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<DeliveryFuture, KafkaError> {
        loop {
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).payload(payload);
            if let Some(key) = key {
                record = record.key(key);
            }
            if let Some(headers) = &self.headers {
                record = record.headers(headers.clone());
            }
            match producer.send_result(record) {
                Ok(report) => return Ok(report),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(QUEUE_FULL_WAIT).await;
                }
                Err((error, _)) => return Err(error),
            }
        }
    }
}

/// The message key: a string field's characters (borrowed from the event when it has no
/// escapes, the usual case for `auditID`), or another value's JSON text.
fn key_of<'a>(event: &'a Event, field: &str) -> Option<&'a [u8]> {
    if let Some(text) = event.str_at(&[field]) {
        return Some(text.as_bytes());
    }
    match event.raw_field(field) {
        Some(raw) if raw.first() != Some(&b'"') => Some(raw),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use auditflow_testkit::event;

    /// Only `validate` ran the option checks; `build`, called on its own, made a producer
    /// of a config they refuse.
    #[test]
    fn validate_reports_every_error_not_only_the_first() {
        let config: KafkaSinkConfig = serde_json::from_value(serde_json::json!({
            "bootstrap_servers": "127.0.0.1:9092",
            "topic": "",
            "key_field": "",
        }))
        .unwrap();
        let fields: Vec<_> = config
            .validate()
            .into_iter()
            .filter_map(|e| e.field)
            .collect();
        assert_eq!(fields, ["topic", "key_field"]);
        let built = config.build(BuildContext::unobserved("kafka", std::env::temp_dir()));
        let error = built.err().expect("the options are refused");
        assert_eq!(error.field.as_deref(), Some("topic"));
    }

    #[test]
    fn keys_are_the_field_characters() {
        let plain = event(r#"{"auditID":"5f1c-77","verb":"get"}"#);
        assert_eq!(key_of(&plain, "auditID"), Some(&b"5f1c-77"[..]));
        let escaped = event(r#"{"auditID":"a\u0026b"}"#);
        assert_eq!(key_of(&escaped, "auditID"), Some(&b"a&b"[..]));
        let number = event(r#"{"code":403}"#);
        assert_eq!(key_of(&number, "code"), Some(&b"403"[..]));
        assert_eq!(key_of(&plain, "missing"), None);
    }
}
