//! `dedupe` transform: drops an event whose key (default `auditID` and `stage`) was seen
//! within the last `window_secs`.
//!
//! kube-apiserver's webhook backend resends a whole batch after any error, and
//! at-least-once delivery replays what was not acknowledged before a crash: both arrive
//! here as events already seen.
//!
//! # Layout
//! One file: [`DedupeConfig`], the [`Dedupe`] transform, its [`KeyStore`], and the tests.
//!
//! # The one design decision
//! The store holds a 128-bit hash of each key (XXH3-128 over the key fields' JSON bytes),
//! never the key itself: 16 bytes whatever the key, and a false duplicate needs a 128-bit
//! collision. Keys are kept in arrival order; the oldest leave first, when their window
//! ends or when the store is full (`max_entries`), so memory is bounded under any input
//! rate: about 60 bytes per entry at 1M entries (measured, see docs/dedupe.md). A key
//! is remembered from its first sighting: a duplicate does not extend its window.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::num::{NonZeroU64, NonZeroUsize};
use std::sync::Arc;
use std::time::Instant;

use auditflow_core::condition::Path;
use auditflow_core::duration::DurationRange;
use auditflow_core::event::RawLookup;
use auditflow_core::{
    Batch, BuildContext, BuildError, CompileOnce, Event, Telemetry, Transform, TransformConfig,
    Validate,
};
use prometheus::IntGauge;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use twox_hash::XxHash3_128;

/// Drops events whose key was seen within the window (reason `duplicate`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// What `validate` compiled when the pipeline loaded, for `build` to take.
    #[serde(skip)]
    #[schemars(skip)]
    compiled: CompileOnce<KeyStore>,
    /// The fields that make an event's key, as paths (`auditID`, `objectRef.name`). Two
    /// events are duplicates when every field is equal (or absent in both). Events that
    /// have none of them are always kept.
    #[serde(default = "default_fields")]
    #[schemars(with = "Vec<String>")]
    pub fields: Vec<Path>,
    /// How long a key is remembered after it was first seen, in seconds (1 to 604800: up
    /// to 7 days). kube-apiserver retries a batch for about 3 minutes (10 s, 27 s, 52 s,
    /// 91 s after the first try).
    #[serde(default = "default_window_secs")]
    pub window_secs: NonZeroU64,
    /// The most keys held; when full the oldest is forgotten first. About 60 bytes each
    /// at 1,000,000 (docs/dedupe.md).
    #[serde(default = "default_max_entries")]
    pub max_entries: NonZeroUsize,
}

fn default_fields() -> Vec<Path> {
    ["auditID", "stage"]
        .into_iter()
        .map(|field| Path::parse(field).expect("a valid path"))
        .collect()
}

fn default_window_secs() -> NonZeroU64 {
    NonZeroU64::new(300).expect("not zero")
}

fn default_max_entries() -> NonZeroUsize {
    NonZeroUsize::new(1_000_000).expect("not zero")
}

/// `window_secs`: a week at most (kube-apiserver stops resending after minutes).
const WINDOW_SECS: DurationRange = DurationRange::secs(1, 7 * DurationRange::DAY_SECS);

impl DedupeConfig {
    /// The options checked, every problem at once, and made into the (empty) store of the
    /// keys seen. The one step behind both `validate` and `build`.
    fn compile(&self) -> Result<KeyStore, Vec<BuildError>> {
        let mut problems = Vec::new();
        if self.fields.is_empty() {
            problems.push(BuildError::field(
                "fields",
                "needs at least one field (the default is [auditID, stage])",
            ));
        }
        problems.extend(
            WINDOW_SECS
                .check("window_secs", self.window_secs.get())
                .err(),
        );
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(self.key_store())
    }

    fn key_store(&self) -> KeyStore {
        KeyStore::new(
            self.window_secs.get().saturating_mul(1000),
            self.max_entries.get(),
        )
    }
}

impl Validate for DedupeConfig {
    fn validate(&self) -> Vec<BuildError> {
        self.compiled.validate(|| self.compile())
    }
}

impl TransformConfig for DedupeConfig {
    /// The window of keys seen spans batches.
    fn one_batch_at_a_time(&self) -> bool {
        true
    }

    fn build(&self, cx: BuildContext) -> Result<Box<dyn Transform>, BuildError> {
        let store = self.compiled.take(|| self.compile())?;
        Ok(Box::new(Dedupe::with_store(
            self,
            store,
            cx.telemetry,
            Some(cx.metrics.dedupe_keys()),
        )))
    }
}

/// The running `dedupe` transform.
pub struct Dedupe {
    fields: Vec<Path>,
    store: KeyStore,
    /// The key fields' bytes of the event at hand, reused across events.
    buffer: Vec<u8>,
    started: Instant,
    telemetry: Arc<dyn Telemetry>,
    gauge: Option<IntGauge>,
}

impl Dedupe {
    /// `gauge` (the component's `auditflow_dedupe_keys`) is `None` where no metrics are
    /// wanted (benchmarks).
    pub fn new(
        config: &DedupeConfig,
        telemetry: Arc<dyn Telemetry>,
        gauge: Option<IntGauge>,
    ) -> Dedupe {
        Dedupe::with_store(config, config.key_store(), telemetry, gauge)
    }

    fn with_store(
        config: &DedupeConfig,
        store: KeyStore,
        telemetry: Arc<dyn Telemetry>,
        gauge: Option<IntGauge>,
    ) -> Dedupe {
        Dedupe {
            fields: config.fields.clone(),
            store,
            buffer: Vec::with_capacity(128),
            started: Instant::now(),
            telemetry,
            gauge,
        }
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.len() == 0
    }

    /// Runs over `batch` as if it arrived `now_ms` after the transform started (tests of
    /// the window run without waiting).
    pub fn transform_at(&mut self, batch: &mut Batch, now_ms: u64) {
        self.store.expire(now_ms);
        let before = batch.events.len();
        let Dedupe {
            fields,
            store,
            buffer,
            ..
        } = self;
        batch.events.retain(|event| {
            if !key_bytes(fields, event, buffer) {
                return true;
            }
            store.insert(key_hash(buffer), now_ms)
        });
        let dropped = before - batch.events.len();
        if dropped > 0 {
            self.telemetry.discarded("duplicate", dropped);
        }
        if let Some(gauge) = &self.gauge {
            gauge.set(i64::try_from(self.store.len()).unwrap_or(i64::MAX));
        }
    }
}

impl Transform for Dedupe {
    fn transform(&mut self, batch: &mut Batch) {
        // One clock read per batch: a batch spans microseconds, the window seconds.
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.transform_at(batch, now_ms);
    }
}

/// Writes the key fields of `event` into `buffer`, each as its JSON bytes followed by a
/// separator that cannot occur in JSON (`0xff`); an absent field is a lone `0xfe`.
/// Returns `false` when the event has none of the fields.
fn key_bytes(fields: &[Path], event: &Event, buffer: &mut Vec<u8>) -> bool {
    buffer.clear();
    let mut any = false;
    for field in fields {
        let found = match field.segments() {
            [key] => match event.raw_field(key) {
                Some(raw) => push_raw(buffer, raw),
                None => push_value(buffer, event.get(key)),
            },
            segments => match event.raw_path(segments) {
                RawLookup::Found(raw) => push_raw(buffer, raw),
                RawLookup::Missing => push_value(buffer, None),
                RawLookup::Unavailable => push_value(buffer, field.first(event)),
            },
        };
        any |= found;
    }
    any
}

/// A string without escapes as its bytes; anything else in its canonical compact form,
/// so that the same value hashes the same however it was written.
fn push_raw(buffer: &mut Vec<u8>, raw: &[u8]) -> bool {
    if let [b'"', inner @ .., b'"'] = raw {
        if memchr::memchr(b'\\', inner).is_none() {
            buffer.extend_from_slice(raw);
            buffer.push(0xff);
            return true;
        }
    }
    let value = serde_json::from_slice::<Value>(raw).ok();
    push_value(buffer, value.as_ref())
}

fn push_value(buffer: &mut Vec<u8>, value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => {
            buffer.push(0xfe);
            false
        }
        Some(value) => {
            // Writing JSON into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *buffer, value);
            buffer.push(0xff);
            true
        }
    }
}

fn key_hash(bytes: &[u8]) -> Key {
    let hash = XxHash3_128::oneshot(bytes);
    Key(hash as u64, (hash >> 64) as u64)
}

/// A key's 128-bit hash, as two words so that it packs without 16-byte alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(u64, u64);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a good hash: hand one word to the table as it is.
        state.write_u64(self.0);
    }
}

/// The table's hasher: passes the key's first word through.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `Key`; fold anything else in, for correctness.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// Keys in arrival order with their first-seen time, and a set for lookups. Every key in
/// the set is in the queue once, and the other way round.
pub struct KeyStore {
    keys: HashSet<Key, BuildHasherDefault<PassThrough>>,
    order: VecDeque<(Key, u64)>,
    window_ms: u64,
    max_entries: usize,
}

impl KeyStore {
    pub fn new(window_ms: u64, max_entries: usize) -> KeyStore {
        KeyStore {
            keys: HashSet::default(),
            order: VecDeque::new(),
            window_ms,
            max_entries: max_entries.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Forgets the keys first seen `window_ms` or longer before `now_ms`.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some(&(key, seen)) = self.order.front() {
            if now_ms.saturating_sub(seen) < self.window_ms {
                break;
            }
            self.order.pop_front();
            self.keys.remove(&key);
        }
    }

    /// Records `key` seen at `now_ms`; `false` if it was already held (a duplicate).
    pub fn insert(&mut self, key: Key, now_ms: u64) -> bool {
        if self.keys.contains(&key) {
            return false;
        }
        if self.keys.len() >= self.max_entries {
            if let Some((oldest, _)) = self.order.pop_front() {
                self.keys.remove(&oldest);
            }
        }
        self.keys.insert(key);
        self.order.push_back((key, now_ms));
        true
    }
}

/// The key of arbitrary bytes (benchmarks and tests that fill the store directly).
pub fn key_of(bytes: &[u8]) -> Key {
    key_hash(bytes)
}

#[cfg(test)]
mod tests;
