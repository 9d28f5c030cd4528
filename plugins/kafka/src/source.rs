//! The `kafka` source: one member of a consumer group.
//!
//! Messages are cut into batches in the order the consumer hands them out; each batch's
//! acknowledgement is awaited on its own small task, which updates the shared
//! [`OffsetTracker`]. Offsets are committed every `commit_interval_ms`, before giving up
//! revoked partitions, and at shutdown.
//!
//! Backpressure: when the pipeline cannot take the next batch, the source pauses every
//! assigned partition and keeps polling. Polling keeps the member alive in the group
//! (librdkafka leaves the group when the application stops polling for
//! `max.poll.interval.ms`) and serves rebalances; pausing stops the fetches. Once the
//! batch is taken the partitions resume from where the consumer stopped.
//!
//! A batch finalised without a verdict (`Errored`: a sink failed, a shutdown timed out)
//! is not skipped: its acknowledgement asks the reading task to rewind its partitions,
//! and the reading task seeks each back to the first offset not yet delivered there and
//! reads on from it, without a restart. What was in flight after it comes twice.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use auditflow_core::batch::{MAX_BATCH_BYTES, MAX_BATCH_EVENTS};
use auditflow_core::channel::Closed;
use auditflow_core::decode::{Decoded, Shape};
use auditflow_core::duration::DurationRange;
use auditflow_core::envelope::{self, Envelope, EnvelopeField};
use auditflow_core::records::LogLimiter;
use auditflow_core::{
    Batch, BatchNotifier, BatchStatus, BuildContext, BuildError, CompileOnce, ComponentError,
    DeadLetter, DeadLetterOutput, Event, Finalizers, Location, Output, Source, SourceConfig,
    SourceContext, Telemetry, Validate,
};
use auditflow_metrics::KafkaLagMetrics;
use bytes::Bytes;
use rdkafka::client::ClientContext;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::offsets::{BatchOffsets, OffsetTracker, Partition, Span};

/// How long a revoked partition waits for its in-flight batches before it is given up.
const REVOKE_WAIT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the acknowledgements of batches already sent.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);
/// How often `auditflow_kafka_consumer_lag` is refreshed from the brokers' watermarks.
const LAG_INTERVAL: Duration = Duration::from_secs(2);
/// How long a seek back to an unacknowledged offset may wait for librdkafka.
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a failed seek back waits before it is tried again.
const SEEK_RETRY: Duration = Duration::from_secs(1);

/// Reads audit events from Kafka topics as one member of a consumer group.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// What `validate` compiled when the pipeline loaded, for `build` to take.
    #[serde(skip)]
    #[schemars(skip)]
    compiled: CompileOnce<KafkaSource>,
    /// Brokers to bootstrap from, comma-separated `host:port`.
    pub bootstrap_servers: String,
    /// Topics to subscribe to.
    pub topics: Vec<String>,
    /// Consumer group; every replica with the same group shares the partitions.
    pub group_id: String,
    /// Where a group without a committed offset starts in a partition.
    #[serde(default)]
    pub auto_offset_reset: AutoOffsetReset,
    /// How a message holds events: `json` (one event), `event_list`, `ndjson`, `audit`
    /// (any of those, or a JSON array), `azure_diagnostic_records` (an AKS audit Event Hub)
    /// or `cloudwatch_logs` (a CloudWatch Logs subscription payload, gzip or not).
    #[serde(default)]
    pub decoding: Decoding,
    /// Envelope fields kept on every event as annotations (`cloudwatch_logs` only):
    /// `logGroup` (`auditflow.io/log-group`), `logStream` (`auditflow.io/log-stream`).
    #[serde(default)]
    pub keep_envelope_fields: Vec<EnvelopeField>,
    /// How often delivered offsets are committed, in milliseconds (1 to 3600000: 1 ms to
    /// 1 h).
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// librdkafka properties passed through as they are (TLS, SASL, tuning), applied last.
    #[serde(default)]
    pub librdkafka_options: BTreeMap<String, String>,
}

/// Where a partition without a committed offset starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AutoOffsetReset {
    /// The oldest message still in the partition.
    #[default]
    Earliest,
    /// Only messages produced after the group joined.
    Latest,
}

/// How a message's payload holds events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decoding {
    /// One JSON event per message (what the `kafka` sink writes).
    #[default]
    Json,
    /// A Kubernetes `EventList` (`{"items":[...]}`), as the webhook backend sends it.
    EventList,
    /// Newline-delimited JSON events; blank lines are ignored.
    Ndjson,
    /// Whichever the message holds: an event, an `EventList`, a JSON array, or NDJSON.
    Audit,
    /// Azure Monitor diagnostic records, `{"records":[...]}`, as AKS streams its audit log
    /// to an Event Hub; records of other categories are counted as `not_audit`.
    AzureDiagnosticRecords,
    /// A CloudWatch Logs subscription payload (EKS), gzip-compressed or not.
    CloudwatchLogs,
}

impl Decoding {
    fn shape(self) -> Shape {
        match self {
            Decoding::Json => Shape::Event,
            Decoding::EventList => Shape::EventList,
            Decoding::Ndjson => Shape::Ndjson,
            Decoding::Audit | Decoding::AzureDiagnosticRecords | Decoding::CloudwatchLogs => {
                Shape::Json
            }
        }
    }

    fn envelope(self, keep: &[EnvelopeField]) -> Envelope {
        let decoding = match self {
            Decoding::AzureDiagnosticRecords => envelope::Decoding::AzureDiagnosticRecords,
            Decoding::CloudwatchLogs => envelope::Decoding::CloudwatchLogs,
            Decoding::Json | Decoding::EventList | Decoding::Ndjson | Decoding::Audit => {
                envelope::Decoding::Audit
            }
        };
        Envelope {
            decoding,
            keep: keep.to_vec(),
        }
    }
}

/// `commit_interval_ms`: at least once an hour (a restart reads again what was delivered
/// since the last commit).
const COMMIT_INTERVAL_MS: DurationRange = DurationRange::millis(1, DurationRange::HOUR_SECS * 1000);

fn default_commit_interval_ms() -> u64 {
    1000
}

/// Options that would let librdkafka commit on its own and break at-least-once.
const OWNED_OPTIONS: &[&str] = &["enable.auto.commit", "enable.auto.offset.store", "group.id"];

impl KafkaSourceConfig {
    /// The options checked (every problem at once) and made into the source, but for the
    /// client's name, which is the component's. The one step behind both `validate` and
    /// `build` ([`crate::finish_client`] does the rest).
    fn compile(&self) -> Result<KafkaSource, Vec<BuildError>> {
        let mut errors = Vec::new();
        if self.bootstrap_servers.trim().is_empty() {
            errors.push(BuildError::field(
                "bootstrap_servers",
                "must name at least one broker (host:port)",
            ));
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            errors.push(BuildError::field(
                "topics",
                "must list at least one topic, none of them empty",
            ));
        }
        if self.group_id.trim().is_empty() {
            errors.push(BuildError::field("group_id", "must not be empty"));
        }
        errors.extend(
            COMMIT_INTERVAL_MS
                .check("commit_interval_ms", self.commit_interval_ms)
                .err(),
        );
        let envelope = self.decoding.envelope(&self.keep_envelope_fields);
        if let Some(problem) = envelope.problem() {
            errors.push(BuildError::field("keep_envelope_fields", problem));
        }
        for key in OWNED_OPTIONS {
            if self.librdkafka_options.contains_key(*key) {
                errors.push(BuildError::field(
                    format!("librdkafka_options.{key}"),
                    "is set by the source itself (offsets are committed only once delivered); remove it",
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(KafkaSource {
            config: self.client_config(),
            topics: self.topics.clone(),
            decoding: self.decoding,
            envelope,
            commit_interval: Duration::from_millis(self.commit_interval_ms),
            lag: None,
        })
    }

    fn client_config(&self) -> ClientConfig {
        let reset = match self.auto_offset_reset {
            AutoOffsetReset::Earliest => "earliest",
            AutoOffsetReset::Latest => "latest",
        };
        let mut config = crate::client_config(
            &self.bootstrap_servers,
            &[
                ("auto.offset.reset", reset),
                ("enable.partition.eof", "false"),
            ],
            &self.librdkafka_options,
        );
        config
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        config
    }
}

impl Validate for KafkaSourceConfig {
    fn validate(&self) -> Vec<BuildError> {
        self.compiled.validate(|| self.compile())
    }
}

impl SourceConfig for KafkaSourceConfig {
    fn build(&self, cx: BuildContext) -> Result<Box<dyn Source>, BuildError> {
        let mut source = self.compiled.take(|| self.compile())?;
        crate::finish_client(&mut source.config, &cx.id, &self.librdkafka_options)?;
        source.lag = Some(cx.metrics.kafka_lag());
        Ok(Box::new(source))
    }
}

/// A running consumer group member.
pub(crate) struct KafkaSource {
    config: ClientConfig,
    topics: Vec<String>,
    decoding: Decoding,
    envelope: Envelope,
    commit_interval: Duration,
    /// The lag series, from the component's metrics handle: set by `build` (`compile`
    /// also serves `validate`, which records nothing).
    lag: Option<KafkaLagMetrics>,
}

type Consumer_ = rdkafka::consumer::StreamConsumer<GroupContext>;
type SendFuture = Pin<Box<dyn Future<Output = Result<(), Closed>> + Send>>;

#[async_trait]
impl Source for KafkaSource {
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), ComponentError> {
        let SourceContext {
            id,
            out,
            mut shutdown,
            telemetry,
            dead_letter,
        } = cx;
        let Some(lag) = self.lag.clone() else {
            return Err(ComponentError::Fatal(format!(
                "kafka source {id}: started without its metrics handle (it is set by build)"
            )));
        };
        let shared = Arc::new(Shared::default());
        let context = GroupContext {
            id: id.clone(),
            shared: Arc::clone(&shared),
            lag: lag.clone(),
        };
        let consumer: Arc<Consumer_> = Arc::new(
            Consumer_::from_config_and_context(&self.config, context).map_err(|error| {
                ComponentError::Fatal(format!(
                    "kafka source {id}: cannot create the consumer: {error}; check bootstrap_servers and librdkafka_options"
                ))
            })?,
        );
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(|error| {
            ComponentError::Fatal(format!(
                "kafka source {id}: cannot subscribe to {topics:?}: {error}"
            ))
        })?;
        tracing::info!(component_id = %id, topics = ?self.topics, "kafka source joining its consumer group");

        let lag = tokio::spawn(report_lag(lag, Arc::clone(&consumer), Arc::clone(&shared)));
        let mut reader = Reader::new(id.clone(), self.decoding, telemetry, dead_letter);
        reader.envelope = self.envelope.clone();
        let mut pending: Option<SendFuture> = None;
        let mut paused = false;
        // Over memory_limit_mb the partitions pause as when the pipeline is full.
        let mut memory = auditflow_core::memory::pressure();
        let mut commit_tick = tokio::time::interval(self.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let result = loop {
            tokio::select! {
                biased;
                _ = shutdown.wait() => break Ok(()),
                sent = async { pending.as_mut().expect("guarded").await }, if pending.is_some() => {
                    pending = None;
                    if let Err(closed) = sent {
                        break Err(closed.into());
                    }
                    if paused && !memory.is_limited() {
                        set_paused(&consumer, &id, None);
                        paused = false;
                    }
                    if !reader.is_empty() {
                        pending = reader.flush(&out, &shared);
                    }
                }
                // An `Errored` batch: read its partitions again from before it.
                _ = shared.rewind.notified(), if pending.is_none() => {
                    // Every message read so far is registered before the tracker rewinds,
                    // so no batch registered later covers offsets past the seek.
                    pending = reader.flush(&out, &shared);
                    if pending.is_some() && !paused {
                        set_paused(&consumer, &id, Some(FULL));
                        paused = true;
                    }
                    let seeks = shared.lock().rewind();
                    seek_back(&consumer, &shared, &id, seeks).await;
                }
                _ = memory.changed() => {
                    let limited = memory.is_limited();
                    if limited && !paused {
                        set_paused(&consumer, &id, Some(MEMORY));
                        paused = true;
                    } else if !limited && pending.is_none() {
                        // What was fetched before the pause goes first.
                        if !reader.is_empty() {
                            pending = reader.flush(&out, &shared);
                        }
                        if paused && pending.is_none() {
                            set_paused(&consumer, &id, None);
                            paused = false;
                        }
                    }
                }
                _ = commit_tick.tick() => commit(&*consumer, &shared, None, CommitMode::Async, &id),
                message = consumer.recv() => {
                    reader.push(message);
                    // Take everything already fetched, without waiting, up to a full batch.
                    while !reader.is_full() {
                        let next = std::future::poll_fn(|task| {
                            Poll::Ready(std::pin::pin!(consumer.recv()).poll(task))
                        })
                        .await;
                        match next {
                            Poll::Ready(message) => reader.push(message),
                            Poll::Pending => break,
                        }
                    }
                    if pending.is_none() && !memory.is_limited() {
                        pending = reader.flush(&out, &shared);
                    }
                    if (pending.is_some() || memory.is_limited()) && (!paused || shared.rebalanced.swap(false, Ordering::AcqRel)) {
                        // Partitions assigned while paused start unpaused: pause them too.
                        let why = if pending.is_some() { FULL } else { MEMORY };
                        set_paused(&consumer, &id, Some(why));
                        paused = true;
                    }
                }
            }
        };

        // Shutdown: stop reading, let what was sent be delivered, commit, leave the group.
        // A batch still waiting for room was never sent: its offsets stay uncommitted.
        drop(pending);
        drop(out);
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        while shared.lock().in_flight(None) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let unacknowledged = shared.lock().in_flight(None);
        if unacknowledged > 0 {
            tracing::warn!(
                component_id = %id,
                batches = unacknowledged,
                "kafka source stopping with batches not yet acknowledged; their messages will be read again"
            );
        }
        commit(&*consumer, &shared, None, CommitMode::Sync, &id);
        shared.closing.store(true, Ordering::Release);
        lag.abort();
        let _ = lag.await;
        // Closing the consumer leaves the group (a blocking exchange with the broker).
        let closed = tokio::task::spawn_blocking(move || drop(consumer)).await;
        if let Err(error) = closed {
            tracing::warn!(component_id = %id, %error, "closing the kafka consumer failed");
        }
        tracing::info!(component_id = %id, "kafka source stopped");
        result
    }
}

/// State shared by the reading task, the acknowledgement tasks and the rebalance hooks.
#[derive(Default)]
struct Shared {
    tracker: Mutex<OffsetTracker>,
    /// Signalled whenever a batch is acknowledged (a revoke waits on it).
    acknowledged: Condvar,
    /// A rebalance happened since the reading task last looked.
    rebalanced: AtomicBool,
    /// The source is leaving: revokes commit what they can without waiting.
    closing: AtomicBool,
    /// Signalled when an `Errored` batch asks for its partitions to be read again.
    rewind: tokio::sync::Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, OffsetTracker> {
        // A panic while holding the lock leaves offsets that are still consistent.
        self.tracker
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// The librdkafka callbacks: logs, commit results and the rebalance hooks.
struct GroupContext {
    id: String,
    shared: Arc<Shared>,
    lag: KafkaLagMetrics,
}

impl ClientContext for GroupContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        crate::forward_log(&self.id, level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(component_id = %self.id, %error, reason, "kafka source client error");
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        let revoked = partitions(list);
        if !self.shared.closing.load(Ordering::Acquire) {
            // Give in-flight batches of these partitions a bounded chance to be delivered,
            // so the next owner starts after them instead of reading them again.
            let unacknowledged = blocking(|| {
                let deadline = Instant::now() + REVOKE_WAIT;
                let mut tracker = self.shared.lock();
                while tracker.in_flight(Some(&revoked)) > 0 {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    tracker = self
                        .shared
                        .acknowledged
                        .wait_timeout(tracker, left)
                        .unwrap_or_else(|poison| poison.into_inner())
                        .0;
                }
                tracker.in_flight(Some(&revoked))
            });
            if unacknowledged > 0 {
                tracing::warn!(
                    component_id = %self.id,
                    batches = unacknowledged,
                    "partitions revoked with batches still unacknowledged after {REVOKE_WAIT:?}; their new owner reads them again"
                );
            }
        }
        commit(
            consumer,
            &self.shared,
            Some(&revoked),
            CommitMode::Sync,
            &self.id,
        );
        self.shared.lock().revoke(&revoked);
        for (topic, partition) in &revoked {
            self.lag.remove(topic, *partition);
        }
        tracing::info!(component_id = %self.id, partitions = ?revoked, "kafka partitions revoked");
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                self.shared.rebalanced.store(true, Ordering::Release);
                tracing::info!(component_id = %self.id, partitions = ?partitions(list), "kafka partitions assigned");
            }
            Rebalance::Revoke(_) => self.shared.rebalanced.store(true, Ordering::Release),
            Rebalance::Error(error) => {
                tracing::warn!(component_id = %self.id, %error, "kafka rebalance failed")
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::warn!(
                component_id = %self.id,
                %error,
                partitions = ?partitions(offsets),
                "committing kafka offsets failed; they are committed again with the next ones"
            );
        }
    }
}

/// Runs a blocking wait without starving the runtime's other tasks.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn partitions(list: &TopicPartitionList) -> Vec<Partition> {
    list.elements()
        .iter()
        .map(|element| (element.topic().to_owned(), element.partition()))
        .collect()
}

fn commit<C: Consumer<X>, X: ConsumerContext>(
    consumer: &C,
    shared: &Shared,
    only: Option<&[Partition]>,
    mode: CommitMode,
    id: &str,
) {
    let commits = shared.lock().take_commits(only);
    if commits.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::with_capacity(commits.len());
    for ((topic, partition), offset) in &commits {
        if let Err(error) = list.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
            tracing::warn!(component_id = %id, %error, "cannot list an offset to commit");
        }
    }
    let committed = if matches!(mode, CommitMode::Sync) {
        blocking(|| consumer.commit(&list, mode))
    } else {
        consumer.commit(&list, mode)
    };
    if let Err(error) = committed {
        tracing::warn!(component_id = %id, %error, offsets = ?commits, "committing kafka offsets failed");
    } else {
        tracing::debug!(component_id = %id, offsets = ?commits, "kafka offsets committed");
    }
}

/// Why partitions pause, as the log says it.
const FULL: &str = "the pipeline is full";
const MEMORY: &str = "memory is at its limit";

/// Pauses the assigned partitions (`why` they pause), or resumes them (`None`).
fn set_paused(consumer: &Consumer_, id: &str, why: Option<&'static str>) {
    let pause = why.is_some();
    let assignment = match consumer.assignment() {
        Ok(assignment) => assignment,
        Err(error) => {
            tracing::warn!(component_id = %id, %error, "cannot read the kafka assignment");
            return;
        }
    };
    let result = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    match result {
        Ok(()) => match why {
            Some(why) => tracing::debug!(
                component_id = %id,
                partitions = assignment.count(),
                "kafka partitions paused: {why}"
            ),
            None => tracing::debug!(
                component_id = %id,
                partitions = assignment.count(),
                "kafka partitions resumed"
            ),
        },
        Err(error) => {
            tracing::warn!(component_id = %id, %error, pause, "cannot pause or resume kafka partitions")
        }
    }
}

/// Refreshes `auditflow_kafka_consumer_lag`: the high watermark minus the delivered
/// position of every assigned partition. Watermarks come from the broker, so the lag keeps
/// growing while the partitions are paused.
async fn report_lag(lag: KafkaLagMetrics, consumer: Arc<Consumer_>, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(LAG_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let consumer = Arc::clone(&consumer);
        let shared = Arc::clone(&shared);
        let lag = lag.clone();
        let measured = tokio::task::spawn_blocking(move || measure_lag(&lag, &consumer, &shared));
        if measured.await.is_err() {
            return;
        }
    }
}

fn measure_lag(lag: &KafkaLagMetrics, consumer: &Consumer_, shared: &Shared) {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    // Where nothing was delivered yet in this assignment, the group's committed offset
    // (or, for a new group, the start of the partition) is the delivered position.
    let mut unknown = TopicPartitionList::new();
    for element in assignment.elements() {
        let key = (element.topic().to_owned(), element.partition());
        if shared.lock().position(&key).is_none() {
            unknown.add_partition(element.topic(), element.partition());
        }
    }
    let committed = if unknown.count() > 0 {
        consumer.committed_offsets(unknown, TIMEOUT).ok()
    } else {
        None
    };
    for element in assignment.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let Ok((low, high)) = consumer.fetch_watermarks(topic, partition, TIMEOUT) else {
            continue;
        };
        let key = (topic.to_owned(), partition);
        let position = shared.lock().position(&key).unwrap_or_else(|| {
            let committed = committed
                .as_ref()
                .and_then(|list| list.find_partition(topic, partition))
                .map(|element| element.offset());
            match committed {
                Some(Offset::Offset(offset)) => offset,
                _ => low,
            }
        });
        lag.set(topic, partition, (high - position).max(0));
    }
}

/// The batch being cut from the consumer's messages.
struct Reader {
    id: String,
    decoding: Decoding,
    /// The cloud envelope the messages come in, if any (from `decoding`).
    envelope: Envelope,
    telemetry: Arc<dyn Telemetry>,
    /// The batch's events (and the current message's malformed records).
    decoded: Decoded,
    bytes: usize,
    /// Messages of the batch per partition (malformed ones included: they are committed).
    spans: Vec<Span>,
    /// Events (and malformed records) and payload bytes read since the last flush.
    read_events: usize,
    read_bytes: usize,
    /// Warnings about malformed content, at a bounded rate.
    warnings: LogLimiter,
    /// Where refused messages and records go, when something reads `<id>.dead_letter`.
    dead_letter: DeadLetterOutput,
    /// The batch's dead letters; they are committed with it.
    letters: Vec<Event>,
}

impl Reader {
    fn new(
        id: String,
        decoding: Decoding,
        telemetry: Arc<dyn Telemetry>,
        dead_letter: DeadLetterOutput,
    ) -> Reader {
        Reader {
            id,
            decoding,
            envelope: decoding.envelope(&[]),
            telemetry,
            dead_letter,
            letters: Vec::new(),
            decoded: Decoded::default(),
            bytes: 0,
            spans: Vec::new(),
            warnings: LogLimiter::default(),
            read_events: 0,
            read_bytes: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    fn is_full(&self) -> bool {
        self.decoded.events.len() >= MAX_BATCH_EVENTS || self.bytes >= MAX_BATCH_BYTES
    }

    fn push(&mut self, message: KafkaResult<rdkafka::message::BorrowedMessage<'_>>) {
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                // librdkafka recovers from broker and network errors by itself.
                tracing::warn!(component_id = %self.id, %error, "kafka consumer error");
                return;
            }
        };
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        let payload = message.payload();
        let before = self.decoded.events.len();
        let malformed = self.decode(payload, (topic, partition, offset));
        let decoded = self.decoded.events.len() - before;
        let payload_len = payload.map_or(0, <[u8]>::len);
        self.bytes += payload_len;
        self.read_bytes += payload_len;
        self.read_events += decoded;
        if let Some((count, error)) = malformed {
            self.read_events += count;
            if let Some(suppressed) = self.warnings.allow("malformed") {
                if suppressed > 0 {
                    tracing::warn!(component_id = %self.id, suppressed,
                        "suppressed {suppressed} similar warnings in the last minute (all are counted in auditflow_component_discarded_events_total)");
                }
                tracing::warn!(
                    component_id = %self.id,
                    topic,
                    partition,
                    offset,
                    events = count,
                    %error,
                    "skipping malformed kafka message content"
                );
            }
        }
        match self
            .spans
            .iter_mut()
            .find(|span| span.partition == partition && span.topic == topic)
        {
            Some(span) => span.next_offset = offset + 1,
            None => self.spans.push(Span {
                topic: topic.to_owned(),
                partition,
                first_offset: offset,
                next_offset: offset + 1,
            }),
        }
    }

    /// Appends the payload's events to the batch; returns how many records (events, or the
    /// whole message) were not events, and the first problem.
    /// Decodes a message into `self.decoded.events`; counts what is not an event (by
    /// reason: `malformed`, `too_deep`) and returns how many, with the first problem.
    fn decode(
        &mut self,
        payload: Option<&[u8]>,
        (topic, partition, offset): (&str, i32, i64),
    ) -> Option<(usize, String)> {
        let location = || Location::Kafka {
            topic: topic.to_owned(),
            partition,
            offset,
        };
        let Some(payload) = payload.filter(|payload| !payload.is_empty()) else {
            self.telemetry.discarded("malformed", 1);
            let error = "the message has no payload";
            self.letters.extend(self.dead_letter.letter(&DeadLetter {
                reason: "malformed",
                error,
                location: &location(),
                status: None,
                reply: None,
                raw: b"",
                truncated: false,
            }));
            return Some((1, error.into()));
        };
        // The one copy out of librdkafka's buffer: every event is a slice of it.
        let payload = Bytes::copy_from_slice(payload);
        if let Err(refused) = envelope::decode_into(
            &payload,
            self.decoding.shape(),
            &self.envelope,
            &mut self.decoded,
        ) {
            let reason = refused_reason(&payload, self.decoding);
            self.telemetry.discarded(reason, 1);
            self.letters.extend(self.dead_letter.letter(&DeadLetter {
                reason,
                error: &refused.0,
                location: &location(),
                status: None,
                reply: None,
                raw: &payload,
                truncated: false,
            }));
            return Some((1, refused.0));
        }
        let first = self.decoded.malformed.first()?.to_string();
        for malformed in &self.decoded.malformed {
            self.telemetry.discarded(malformed.kind, 1);
            self.letters.extend(self.dead_letter.letter(&DeadLetter {
                reason: malformed.kind,
                error: &malformed.to_string(),
                location: &location(),
                status: None,
                reply: None,
                raw: &malformed.raw,
                truncated: false,
            }));
        }
        let count = self.decoded.malformed.len();
        self.decoded.malformed.clear();
        Some((count, first))
    }

    /// Sends the batch; returns the send when it has to wait for room.
    fn flush(&mut self, out: &Output, shared: &Arc<Shared>) -> Option<SendFuture> {
        if self.read_events > 0 || self.read_bytes > 0 {
            self.telemetry.received(self.read_events, self.read_bytes);
            (self.read_events, self.read_bytes) = (0, 0);
        }
        if self.spans.is_empty() {
            return None;
        }
        let offsets = shared.lock().register(&self.spans);
        self.spans.clear();
        self.bytes = 0;
        let events = std::mem::take(&mut self.decoded.events);
        let letters = std::mem::take(&mut self.letters);
        if events.is_empty() && letters.is_empty() {
            // Nothing but malformed messages: skipped, so their offsets are done.
            acknowledge(shared, &offsets, BatchStatus::Delivered, &self.id);
            return None;
        }
        let (finalizer, receiver) = BatchNotifier::new();
        let shared_for_ack = Arc::clone(shared);
        let id = self.id.clone();
        tokio::spawn(async move {
            let status = receiver.await;
            acknowledge(&shared_for_ack, &offsets, status, &id);
        });
        let out = out.clone();
        let dead_letter = self.dead_letter.clone();
        let mut send: SendFuture = Box::pin(async move {
            // The dead letters hold the commit like the events do.
            let letters_finalizer = Finalizers::from(finalizer.clone());
            dead_letter.send(letters, letters_finalizer).await?;
            out.send(Batch::with_finalizer(events, finalizer)).await
        });
        // Most sends find room at once; only a full pipeline leaves one pending.
        let waker = std::task::Waker::noop();
        match send
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
        {
            Poll::Ready(Ok(())) => None,
            Poll::Ready(Err(closed)) => Some(Box::pin(std::future::ready(Err(closed)))),
            Poll::Pending => Some(send),
        }
    }
}

/// The reason a whole message was refused under: `too_deep` for a single event nested
/// deeper than kube-apiserver allows (the refusal itself does not say; this parses the
/// refused payload once more, which only refusals pay for), `malformed` otherwise.
fn refused_reason(payload: &Bytes, decoding: Decoding) -> &'static str {
    match decoding {
        Decoding::Json => Event::from_bytes(payload.clone())
            .err()
            .map_or("malformed", |error| error.reason()),
        // Their items (or records) are refused one by one, each with its own reason.
        Decoding::EventList
        | Decoding::Ndjson
        | Decoding::Audit
        | Decoding::AzureDiagnosticRecords
        | Decoding::CloudwatchLogs => "malformed",
    }
}

fn acknowledge(shared: &Shared, offsets: &BatchOffsets, status: BatchStatus, id: &str) {
    let mut tracker = shared.lock();
    match status {
        // A rejected batch was counted by the sink that gave up on it; reading it again
        // would not change the verdict.
        BatchStatus::Delivered | BatchStatus::Rejected => tracker.delivered(offsets),
        BatchStatus::Errored => {
            if tracker.errored(offsets) {
                tracing::warn!(
                    component_id = %id,
                    "a kafka batch was finalised without delivery; its partitions are read again from its first message"
                );
                // One stored permit is enough: a rewind takes every request at once.
                shared.rewind.notify_one();
            }
        }
    }
    drop(tracker);
    shared.acknowledged.notify_all();
}

/// Seeks partitions back to offsets to read again, off the runtime's threads (librdkafka
/// waits for its fetcher to take the new position), each within [`SEEK_TIMEOUT`].
async fn seek_back(
    consumer: &Arc<Consumer_>,
    shared: &Arc<Shared>,
    id: &str,
    seeks: Vec<(Partition, i64)>,
) {
    if seeks.is_empty() {
        return;
    }
    let consumer_ = Arc::clone(consumer);
    let seeks_ = seeks.clone();
    let sought = tokio::task::spawn_blocking(move || {
        seeks_
            .into_iter()
            .map(|((topic, partition), offset)| {
                consumer_
                    .seek(&topic, partition, Offset::Offset(offset), SEEK_TIMEOUT)
                    .map_err(|error| error.to_string())
            })
            .collect::<Vec<_>>()
    })
    .await;
    let results = match sought {
        Ok(results) => results,
        Err(error) => {
            let error = format!("the seek task failed: {error}");
            seeks.iter().map(|_| Err(error.clone())).collect()
        }
    };
    let mut failed = false;
    for (((topic, partition), offset), result) in seeks.iter().zip(results) {
        match result {
            Ok(()) => tracing::warn!(
                component_id = %id,
                topic,
                partition,
                offset,
                "kafka partition sought back to its first unacknowledged message after a batch was not delivered; reading it again (messages after it may come twice)"
            ),
            Err(error) => {
                tracing::error!(
                    component_id = %id,
                    topic,
                    partition,
                    offset,
                    %error,
                    "cannot seek a kafka partition back to its first unacknowledged message; nothing past it is committed, and the seek is tried again in {SEEK_RETRY:?}"
                );
                shared.lock().hold(&(topic.clone(), *partition), *offset);
                failed = true;
            }
        }
    }
    if failed {
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            tokio::time::sleep(SEEK_RETRY).await;
            shared.rewind.notify_one();
        });
    }
}

#[cfg(test)]
mod tests {
    /// Where the test messages sit (for dead letters, which these tests do not read).
    const AT: (&str, i32, i64) = ("audit", 0, 0);
    use auditflow_core::NoTelemetry;

    use super::*;

    fn reader(decoding: Decoding) -> Reader {
        Reader::new(
            "kafka".into(),
            decoding,
            Arc::new(NoTelemetry),
            DeadLetterOutput::disconnected("kafka"),
        )
    }

    fn ids(reader: &Reader) -> Vec<&str> {
        let events = &reader.decoded.events;
        events.iter().filter_map(|e| e.get_str("auditID")).collect()
    }

    /// Only `validate` ran the option checks; `build`, called on its own (as a reload may),
    /// made a consumer of a config they refuse, with no broker and no topic.
    #[test]
    fn validate_reports_every_error_not_only_the_first() {
        let config: KafkaSourceConfig = serde_json::from_value(serde_json::json!({
            "bootstrap_servers": " ",
            "topics": [],
            "group_id": "auditflow",
            "librdkafka_options": { "enable.auto.commit": "true" },
        }))
        .unwrap();
        let fields: Vec<_> = config
            .validate()
            .into_iter()
            .filter_map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "bootstrap_servers",
                "topics",
                "librdkafka_options.enable.auto.commit"
            ]
        );
        let built = config.build(BuildContext::unobserved("kafka", std::env::temp_dir()));
        let error = built.err().expect("the options are refused");
        assert_eq!(error.field.as_deref(), Some("bootstrap_servers"));
    }

    #[test]
    fn a_commit_interval_of_zero_or_past_one_hour_is_a_validate_error() {
        let problems = |interval: u64| -> Vec<(String, String)> {
            let config: KafkaSourceConfig = serde_json::from_value(serde_json::json!({
                "bootstrap_servers": "127.0.0.1:9092",
                "topics": ["audit"],
                "group_id": "auditflow",
                "commit_interval_ms": interval,
            }))
            .unwrap();
            config
                .validate()
                .into_iter()
                .map(|error| (error.field.unwrap_or_default(), error.message))
                .collect()
        };
        assert!(problems(3_600_000).is_empty());
        for interval in [0, 3_600_001] {
            assert_eq!(
                problems(interval),
                [(
                    "commit_interval_ms".to_owned(),
                    format!(
                        "must be between 1 and 3600000 milliseconds (1 ms to 1 h), found {interval}"
                    )
                )]
            );
        }
    }

    #[test]
    fn a_message_without_payload_is_one_malformed_record() {
        let mut reader = reader(Decoding::Json);
        let expected = Some((1, "the message has no payload".to_owned()));
        assert_eq!(reader.decode(None, AT), expected);
        assert_eq!(reader.decode(Some(b""), AT), expected);
        assert!(reader.decoded.events.is_empty());
    }

    #[test]
    fn each_bad_item_counts_and_the_first_is_named() {
        let mut reader = reader(Decoding::EventList);
        let payload = br#"{"kind":"EventList","items":[{"auditID":"a"},7,"x",{"auditID":"b"}]}"#;
        let (count, error) = reader.decode(Some(payload), AT).unwrap();
        assert_eq!(count, 2);
        assert!(error.starts_with("items[1]: "), "{error}");
        // Even when not one item is an event: every item is counted, nothing refused.
        assert_eq!(
            reader.decode(Some(br#"{"items":[1,2,3]}"#), AT).unwrap().0,
            3
        );

        let mut lines = self::reader(Decoding::Ndjson);
        let payload = b"{\"auditID\":\"c\"}\n\n{oops\n{\"auditID\":\"d\"}";
        let (count, error) = lines.decode(Some(payload), AT).unwrap();
        assert_eq!(count, 1);
        assert!(error.starts_with("line 3: "), "{error}");
        assert_eq!(ids(&reader), ["a", "b"]);
        assert_eq!(ids(&lines), ["c", "d"]);
    }

    #[test]
    fn a_message_nested_too_deep_is_counted_as_too_deep() {
        let deep = format!("{}1{}", "[".repeat(10_001), "]".repeat(10_001));
        let payload = Bytes::from(format!(r#"{{"auditID":"deep","requestObject":{deep}}}"#));
        assert_eq!(refused_reason(&payload, Decoding::Json), "too_deep");
        assert_eq!(
            refused_reason(&Bytes::from_static(b"{oops"), Decoding::Json),
            "malformed"
        );
        let mut reader = reader(Decoding::Json);
        assert_eq!(
            reader.decode(Some(&payload), AT).map(|(count, _)| count),
            Some(1)
        );
    }

    #[test]
    fn messages_accumulate_into_one_batch() {
        let mut reader = reader(Decoding::Json);
        assert_eq!(reader.decode(Some(br#"{"auditID":"a"}"#), AT), None);
        assert_eq!(
            reader.decode(Some(b"[1,2]"), AT).map(|(count, _)| count),
            Some(1)
        );
        assert_eq!(reader.decode(Some(b"{\"auditID\":\"b\"}\n"), AT), None);
        assert_eq!(ids(&reader), ["a", "b"]);
        assert!(reader.decoded.malformed.is_empty());
    }
}
