//! `sample` transform: keeps about 1 in `rate` requests, the same ones on every replica.
//!
//! # Layout
//! One file: [`SampleConfig`], the [`Sample`] transform it builds, [`key_hash`], and the
//! tests.
//!
//! # The one design decision
//! The decision is a pure function of the event's `key` (default `auditID`): a fixed
//! 64-bit hash (FNV-1a, then the murmur3 finaliser to spread the bits), kept when
//! `hash % rate == 0`. Every stage of one request shares its `auditID`, so stages are kept
//! or dropped together; every replica and every version decides the same, so a request
//! split across Kafka partitions or restarts is never half-sampled. The hash is part of
//! the contract: a test pins its values.

use std::num::NonZeroU64;
use std::sync::Arc;

use auditflow_core::condition::{Condition, Path};
use auditflow_core::{
    Batch, BuildContext, BuildError, Event, Telemetry, Transform, TransformConfig, Validate,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

/// The annotation kept events carry, so that downstream counts can be re-weighted.
pub const SAMPLE_RATE_ANNOTATION: &str = "auditflow.io/sample-rate";

/// Keeps about 1 in `rate` events, deciding by a hash of `key`; events matching `exclude`
/// are always kept.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SampleConfig {
    /// Keep about 1 in this many events (1 keeps all). Kept events get the annotation
    /// `auditflow.io/sample-rate` with this value.
    pub rate: NonZeroU64,
    /// The field whose value decides, as a path (`auditID`, `user.username`). Every event
    /// with the same value is kept or dropped together. Events without it are kept.
    #[serde(default = "default_key")]
    #[schemars(with = "String")]
    pub key: Path,
    /// A condition (docs/conditions.md): matching events are always kept, and not
    /// annotated. By default errors and denials are never sampled away.
    #[serde(default = "default_exclude")]
    #[schemars(with = "String")]
    pub exclude: Condition,
}

fn default_key() -> Path {
    Path::parse("auditID").expect("a valid path")
}

/// The default `exclude`, as written in the docs.
pub const DEFAULT_EXCLUDE: &str =
    r#"responseStatus.code >= 400 or annotations."auditflow.io/denial" exists"#;

fn default_exclude() -> Condition {
    Condition::parse(DEFAULT_EXCLUDE).expect("a valid condition")
}

impl Validate for SampleConfig {}

impl TransformConfig for SampleConfig {
    fn build(&self, cx: BuildContext) -> Result<Box<dyn Transform>, BuildError> {
        Ok(Box::new(Sample::new(self, cx.telemetry)))
    }
}

/// The running `sample` transform. It keeps no state: whether an event is kept depends
/// on its key alone, so batches may be sampled at the same time.
#[derive(Clone)]
pub struct Sample {
    rate: u64,
    rate_text: String,
    key: Path,
    exclude: Condition,
    telemetry: Arc<dyn Telemetry>,
}

impl Sample {
    pub fn new(config: &SampleConfig, telemetry: Arc<dyn Telemetry>) -> Sample {
        Sample {
            rate: config.rate.get(),
            rate_text: config.rate.to_string(),
            key: config.key.clone(),
            exclude: config.exclude.clone(),
            telemetry,
        }
    }

    fn key_bytes_hash(&self, event: &Event) -> Option<u64> {
        // The common case, a string without escapes (`auditID`): hash the characters read
        // from the event's bytes, without parsing or allocating.
        if let Some(text) = event.str_at(self.key.segments()) {
            return Some(key_hash(text.as_bytes()));
        }
        match self.key.first(event)? {
            Value::Null => None,
            Value::String(text) => Some(key_hash(text.as_bytes())),
            // Numbers, booleans, objects: their compact JSON text.
            other => Some(key_hash(other.to_string().as_bytes())),
        }
    }
}

impl Transform for Sample {
    fn fork(&self) -> Option<Box<dyn Transform>> {
        Some(Box::new(self.clone()))
    }

    fn transform(&mut self, batch: &mut Batch) {
        let before = batch.events.len();
        batch.events.retain_mut(|event| {
            if self.exclude.matches(event) {
                return true;
            }
            let Some(hash) = self.key_bytes_hash(event) else {
                // No key, no decision to make: kept as is, like an excluded event.
                return true;
            };
            if hash % self.rate != 0 {
                return false;
            }
            event.add_annotation(SAMPLE_RATE_ANNOTATION, &self.rate_text);
            true
        });
        let dropped = before - batch.events.len();
        if dropped > 0 {
            self.telemetry.discarded("sampled", dropped);
        }
    }
}

/// The sampling hash: 64-bit FNV-1a over the key's bytes, then the murmur3 `fmix64`
/// finaliser (FNV's low bits alone are poorly mixed, and `% rate` reads the low bits).
/// Fixed forever: changing it changes which requests every deployment keeps.
pub fn key_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests;
