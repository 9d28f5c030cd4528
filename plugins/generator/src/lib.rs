//! `generator` source: realistic synthetic `audit.k8s.io/v1` events, for benchmarks, load
//! tests and demos, at a fixed rate or as fast as the pipeline takes them.
//!
//! # Layout
//! - this file: [`GeneratorConfig`], the source it builds, and its pacing.
//! - `audit`: the request mix of a busy cluster, written event by event.
//! - `cast`: the simulated cluster (users, nodes, controllers, workloads), made from the seed.
//! - `objects`: request and response bodies (pods, nodes, secrets, token reviews, ...).
//! - `json`: integers, UUIDs, timestamps and templates written straight into bytes.
//!
//! # The one design decision
//! Events are written as bytes, never built as `serde_json` values: pre-rendered pieces
//! (a user object, a resource path) and templates with holes are copied into one buffer
//! per batch, and each event is a slice of it handed to [`Event::from_bytes`]. The source
//! has to outrun every pipeline it feeds, so it must cost far less per byte than the
//! parsing it is there to measure. (At a paced rate each event gets its own copy instead,
//! so that the few events a sampled pipeline keeps do not hold whole batches in memory.)
//! Randomness comes from one seeded [`StdRng`] (ChaCha12) and the clock is virtual, so a
//! seed gives byte-identical output.
//!
//! [`StdRng`]: rand::rngs::StdRng

mod audit;
mod cast;
mod json;
mod objects;

use std::num::NonZeroU64;
use std::time::Duration;

use async_trait::async_trait;
use auditflow_core::batch::{MAX_BATCH_BYTES, MAX_BATCH_EVENTS};
use auditflow_core::{
    Batch, BuildContext, BuildError, ComponentError, Event, Source, SourceConfig, SourceContext,
    Validate,
};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::time::Instant;

pub use audit::AuditGenerator;

/// `count` events of `profile` made from `seed`, for benchmarks and tests of other
/// components that want realistic volume (a RequestResponse mix with large objects).
pub fn generated_events(profile: Profile, seed: u64, count: usize) -> Vec<auditflow_core::Event> {
    let mut generator = AuditGenerator::new(profile, seed, SEEDED_START_US);
    let mut events = Vec::with_capacity(count);
    while events.len() < count {
        let left = (count - events.len()) as u64;
        for bytes in generator.next_events(count - events.len(), 4 << 20, Some(left)) {
            events.push(
                auditflow_core::Event::from_bytes(bytes)
                    .expect("the generator writes JSON objects"),
            );
        }
    }
    events
}

/// Generates realistic Kubernetes audit events.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    /// `metadata`: events at Metadata level (~1–2 KB; token and leaky-Secret requests
    /// carry bodies), or `request_response`: every request at RequestResponse level with
    /// request and response objects of 2–50 KB.
    #[serde(default)]
    pub profile: Profile,
    /// Stop after this many events (the source then ends, and the pipeline with it once
    /// drained). Unset: never stop.
    #[serde(default)]
    pub count: Option<NonZeroU64>,
    /// At most this many events per second. Unset: as fast as the pipeline takes them.
    #[serde(default)]
    pub rate_per_sec: Option<NonZeroU64>,
    /// Seed of the random choices and of the virtual clock: the same seed gives
    /// byte-identical events. Unset: a random seed (logged at start).
    #[serde(default)]
    pub seed: Option<u64>,
}

/// Which audit level the generated requests are logged at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    #[default]
    Metadata,
    RequestResponse,
}

impl Validate for GeneratorConfig {}

/// Where the virtual clock of a seeded run starts: 2026-11-23T08:00:00Z, close to the
/// real capture in the corpus.
const SEEDED_START_US: i64 = 1_795_420_800_000_000;

impl SourceConfig for GeneratorConfig {
    fn build(&self, cx: BuildContext) -> Result<Box<dyn Source>, BuildError> {
        let (seed, start_us) = match self.seed {
            Some(seed) => (seed, SEEDED_START_US),
            None => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(SEEDED_START_US, |since| since.as_micros() as i64);
                (rand::random(), now)
            }
        };
        tracing::info!(component_id = %cx.id, seed, profile = ?self.profile, "generator seeded");
        Ok(Box::new(GeneratorSource {
            // Paced batches are small and long-lived downstream: see `detach_events`.
            generator: AuditGenerator::new(self.profile, seed, start_us)
                .detach_events(self.rate_per_sec.is_some()),
            count: self.count.map(NonZeroU64::get),
            rate_per_sec: self.rate_per_sec.map(NonZeroU64::get),
        }))
    }
}

struct GeneratorSource {
    generator: AuditGenerator,
    count: Option<u64>,
    rate_per_sec: Option<u64>,
}

/// How often a paced source wakes at most: it then sends what fell due since.
const PACED_TICK: Duration = Duration::from_millis(10);

#[async_trait]
impl Source for GeneratorSource {
    async fn run(mut self: Box<Self>, mut cx: SourceContext) -> Result<(), ComponentError> {
        let mut pacer = self.rate_per_sec.map(Pacer::new);
        let mut sent = 0u64;
        let mut memory = auditflow_core::memory::pressure();
        loop {
            let left = self.count.map(|count| count - sent);
            if left == Some(0) {
                break;
            }
            if memory.is_limited() {
                // Over memory_limit_mb: make nothing more until memory falls.
                tokio::select! {
                    biased;
                    _ = cx.shutdown.wait() => break,
                    _ = memory.relieved() => {}
                }
            }
            let mut max_events = MAX_BATCH_EVENTS;
            if let Some(pacer) = &mut pacer {
                let due = tokio::select! {
                    biased;
                    _ = cx.shutdown.wait() => break,
                    due = pacer.due() => due,
                };
                max_events = max_events.min(due as usize);
            }
            let chunks = self
                .generator
                .next_events(max_events, MAX_BATCH_BYTES, left);
            let bytes: usize = chunks.iter().map(|chunk| chunk.len()).sum();
            let events: Vec<Event> = chunks
                .into_iter()
                .map(|chunk| Event::from_bytes(chunk).expect("the generator writes JSON objects"))
                .collect();
            let n = events.len() as u64;
            cx.telemetry.received(events.len(), bytes);
            if let Some(pacer) = &mut pacer {
                pacer.sent(n);
            }
            sent += n;
            tokio::select! {
                biased;
                _ = cx.shutdown.wait() => break,
                result = cx.out.send(Batch::new(events)) => result?,
            }
        }
        Ok(())
    }
}

/// Paces by the clock, not by a timer per event: events fall due at `rate` per second
/// since `start`, and the source sleeps until a tick's worth is due. A source held back
/// (backpressure) does not burst more than one second's worth to catch up.
struct Pacer {
    rate: u64,
    start: Instant,
    sent: u64,
}

impl Pacer {
    fn new(rate: u64) -> Pacer {
        Pacer {
            rate,
            start: Instant::now(),
            sent: 0,
        }
    }

    /// Waits until at least one event is due; returns how many are.
    async fn due(&mut self) -> u64 {
        loop {
            let elapsed = self.start.elapsed();
            let due_total = (elapsed.as_secs_f64() * self.rate as f64) as u64;
            if due_total > self.sent + self.rate {
                // Held back for over a second: start counting again from now.
                self.start = Instant::now() - Duration::from_secs(1);
                self.sent = 0;
                continue;
            }
            let due = due_total.saturating_sub(self.sent);
            if due > 0 {
                return due;
            }
            // Sleep until a tick's worth (at least one event) is due.
            let chunk = (self.rate as f64 * PACED_TICK.as_secs_f64()).max(1.0);
            let at = (self.sent as f64 + chunk) / self.rate as f64;
            tokio::time::sleep_until(self.start + Duration::from_secs_f64(at)).await;
        }
    }

    fn sent(&mut self, events: u64) {
        self.sent += events;
    }
}

#[cfg(test)]
mod tests;
