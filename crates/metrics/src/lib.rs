//! Every metric auditflow exports, the handle each component records them through, and
//! the HTTP endpoint that serves them.
//!
//! # Layout
//! - [`names`]: every metric name, as a constant.
//! - this module: [`Metrics`], a registry holding every metric family; [`ComponentMetrics`],
//!   one component's handle (the engine's series, bound to its labels, and typed handles
//!   for the series of each plugin: [`ComponentMetrics::file`],
//!   [`ComponentMetrics::webhook`], ...).
//! - [`endpoint`]: `GET /metrics`, `/health`, `/ready`.
//!
//! # The one design decision
//! Every family is created in one place, [`Metrics::new`], so that names, help texts and
//! label sets are defined once; a component records only through the [`ComponentMetrics`]
//! it is given at build time (`BuildContext::metrics`), which fills in its
//! `component_id` itself. No plugin spells a metric name or a label value of its own
//! identity, and nothing reaches a process-wide registry behind the handle's back:
//! `auditflow run` builds its components against [`Metrics::global`] (what `/metrics`
//! renders), while a test builds its own [`Metrics::new`] and reads exactly what its
//! component recorded. Labels never carry unbounded values: component ids, kinds and
//! types, bounded reasons, and values plugins bound themselves.
//!
//! This crate is a leaf: it knows nothing of the engine's types, so that the core's
//! `BuildContext` can carry a handle (the core implements its `Telemetry` for
//! [`ComponentMetrics`]).

#![warn(missing_docs)]

pub mod endpoint;
pub mod names;

use std::fmt;
use std::sync::{Arc, LazyLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// A registry and every family auditflow exports, registered in it once.
///
/// Cloning shares the registry. [`Metrics::global`] is the process's; [`Metrics::new`]
/// makes another, isolated one (tests, and components built outside `run`).
#[derive(Clone)]
pub struct Metrics {
    families: Arc<Families>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

struct Families {
    registry: Registry,
    // The engine's, for every component.
    received_events: IntCounterVec,
    received_bytes: IntCounterVec,
    sent_events: IntCounterVec,
    sent_bytes: IntCounterVec,
    errors: IntCounterVec,
    discarded: IntCounterVec,
    dead_letters: IntCounterVec,
    buffer_events: IntGaugeVec,
    // Disk buffers in front of sinks.
    buffer_bytes: IntGaugeVec,
    buffer_max_bytes: IntGaugeVec,
    buffer_oldest_event_age_seconds: IntGaugeVec,
    buffer_corrupt_records_total: IntCounterVec,
    // Plugins'.
    file_checkpoint_lag_bytes: IntGaugeVec,
    file_open_files: IntGaugeVec,
    file_rotations_total: IntCounterVec,
    file_lost_bytes_total: IntCounterVec,
    redactions_total: IntCounterVec,
    rbac_denials_total: IntCounterVec,
    dedupe_keys: IntGaugeVec,
    sink_request_duration_seconds: HistogramVec,
    sink_retries_total: IntCounterVec,
    sink_inflight_requests: IntGaugeVec,
    webhook_requests_total: IntCounterVec,
    webhook_request_duration_seconds: HistogramVec,
    webhook_connections: IntGaugeVec,
    webhook_connections_refused_total: IntCounterVec,
    webhook_timeouts_total: IntCounterVec,
    webhook_tls_failures_total: IntCounterVec,
    webhook_checks_total: IntCounterVec,
    kafka_consumer_lag: IntGaugeVec,
    // The process's (`auditflow run`).
    reloads_total: IntCounterVec,
    config_hash: IntGaugeVec,
    memory_limited: IntGauge,
    memory_limited_total: IntCounter,
    memory_limit_bytes: IntGauge,
}

/// Registers each family as it is made.
struct Registrar<'a>(&'a Registry);

impl Registrar<'_> {
    fn register<C: prometheus::core::Collector + Clone + 'static>(&self, collector: C) -> C {
        self.0
            .register(Box::new(collector.clone()))
            .expect("every family is registered once, in Metrics::new");
        collector
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn histograms(&self, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(latency_buckets());
        self.register(HistogramVec::new(opts, labels).expect("valid metric"))
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).expect("valid metric"))
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("valid metric"))
    }
}

/// Request latency buckets, 5 ms to 60 s.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ]
}

const COMPONENT_LABELS: &[&str] = &["component_id", "component_kind", "component_type"];
const ID: &[&str] = &["component_id"];

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry of its own, with every family registered and no series yet.
    pub fn new() -> Metrics {
        use names::*;
        let registry = Registry::new();
        let r = Registrar(&registry);
        let with = |extra: &'static str| -> Vec<&'static str> {
            let mut labels = COMPONENT_LABELS.to_vec();
            labels.push(extra);
            labels
        };
        let families = Families {
            received_events: r.counters(COMPONENT_RECEIVED_EVENTS_TOTAL,
                "Events a component took in.", COMPONENT_LABELS),
            received_bytes: r.counters(COMPONENT_RECEIVED_BYTES_TOTAL,
                "Bytes of the events a component took in (as JSON).", COMPONENT_LABELS),
            sent_events: r.counters(COMPONENT_SENT_EVENTS_TOTAL,
                "Events a component passed on (sources, transforms) or delivered (sinks).",
                COMPONENT_LABELS),
            sent_bytes: r.counters(COMPONENT_SENT_BYTES_TOTAL,
                "Bytes a component passed on or delivered.", COMPONENT_LABELS),
            errors: r.counters(COMPONENT_ERRORS_TOTAL,
                "Errors a component met, by error_type.", &with("error_type")),
            discarded: r.counters(COMPONENT_DISCARDED_EVENTS_TOTAL,
                "Events a component dropped, by reason (sampled, filtered, malformed, oversized, rejected).",
                &with("reason")),
            dead_letters: r.counters(COMPONENT_DEAD_LETTER_EVENTS_TOTAL,
                "Dead letters a source or sink sent on its <id>.dead_letter output.",
                COMPONENT_LABELS),
            buffer_events: r.gauges(BUFFER_EVENTS,
                "Events waiting in the channel in front of a component.", COMPONENT_LABELS),
            buffer_bytes: r.gauges(BUFFER_BYTES,
                "Bytes a sink's disk buffer holds that the destination has not acknowledged yet.",
                ID),
            buffer_max_bytes: r.gauges(BUFFER_MAX_BYTES,
                "The most bytes a sink's disk buffer may hold (its max_bytes).", ID),
            buffer_oldest_event_age_seconds: r.gauges(BUFFER_OLDEST_EVENT_AGE_SECONDS,
                "Seconds since the oldest event the sink has not delivered yet was written to its disk buffer.",
                ID),
            buffer_corrupt_records_total: r.counters(BUFFER_CORRUPT_RECORDS_TOTAL,
                "Damaged records a disk buffer skipped.", ID),
            file_checkpoint_lag_bytes: r.gauges(FILE_CHECKPOINT_LAG_BYTES,
                "File size minus acknowledged offset, summed over the files a file source follows.",
                ID),
            file_open_files: r.gauges(FILE_OPEN_FILES, "Files a file source holds open.", ID),
            file_rotations_total: r.counters(FILE_ROTATIONS_TOTAL,
                "Rotations a file source noticed (rename or truncate).", ID),
            file_lost_bytes_total: r.counters(FILE_LOST_BYTES_TOTAL,
                "Bytes a file source lost: files gone with bytes unread or unacknowledged.", ID),
            redactions_total: r.counters(REDACTIONS_TOTAL,
                "Secrets the redact transform replaced, by detector.",
                &["component_id", "detector"]),
            rbac_denials_total: r.counters(RBAC_DENIALS_TOTAL,
                "Denied requests, by class (rbac, authentication, forbidden), verb and resource.",
                &["component_id", "class", "verb", "resource"]),
            dedupe_keys: r.gauges(DEDUPE_KEYS,
                "Keys a dedupe transform holds, each remembered for its window.", ID),
            sink_request_duration_seconds: r.histograms(SINK_REQUEST_DURATION_SECONDS,
                "Duration of a sink's requests, by status class.",
                &["component_id", "status_class"]),
            sink_retries_total: r.counters(SINK_RETRIES_TOTAL, "Requests a sink retried.", ID),
            sink_inflight_requests: r.gauges(SINK_INFLIGHT_REQUESTS,
                "Requests a sink has in flight.", ID),
            webhook_requests_total: r.counters(WEBHOOK_REQUESTS_TOTAL,
                "Requests the webhook source answered, by status code.",
                &["component_id", "code"]),
            webhook_request_duration_seconds: r.histograms(WEBHOOK_REQUEST_DURATION_SECONDS,
                "Time the webhook source took to answer a request.", ID),
            webhook_connections: r.gauges(WEBHOOK_CONNECTIONS,
                "Connections the webhook source holds open.", ID),
            webhook_connections_refused_total: r.counters(WEBHOOK_CONNECTIONS_REFUSED_TOTAL,
                "Connections the webhook source closed at accept, over max_connections.", ID),
            webhook_timeouts_total: r.counters(WEBHOOK_TIMEOUTS_TOTAL,
                "Connections or requests the webhook source closed for being too slow, by phase.",
                &["component_id", "phase"]),
            webhook_tls_failures_total: r.counters(WEBHOOK_TLS_FAILURES_TOTAL,
                "TLS handshakes the webhook source saw fail.", ID),
            webhook_checks_total: r.counters(WEBHOOK_CHECKS_TOTAL,
                "Test events from `auditflow webhook-check` the webhook source received.", ID),
            kafka_consumer_lag: r.gauges(KAFKA_CONSUMER_LAG,
                "Messages between the committed position and the high watermark, per partition.",
                &["component_id", "topic", "partition"]),
            reloads_total: r.counters(RELOADS_TOTAL,
                "Reloads of the pipeline files (SIGHUP or --watch), by result: ok, or failed (the old pipeline kept running).",
                &["result"]),
            config_hash: r.gauges(CONFIG_HASH,
                "Always 1, labelled with the hash of the pipeline running now.", &["hash"]),
            memory_limited: r.gauge(MEMORY_LIMITED,
                "1 while the process is near its memory limit (memory_limit_mb) and sources are paused."),
            memory_limited_total: r.counter(MEMORY_LIMITED_TOTAL,
                "Times the process came near its memory limit and paused its sources."),
            memory_limit_bytes: r.gauge(MEMORY_LIMIT_BYTES,
                "The memory limit in force (memory_limit_mb, or 90% of the cgroup's), in bytes; 0 when none."),
            registry,
        };
        Metrics {
            families: Arc::new(families),
        }
    }

    /// The process's: what `auditflow run` records into and `/metrics` renders.
    pub fn global() -> &'static Metrics {
        &GLOBAL
    }

    /// The registry every family of this set is registered in (what `/metrics` renders
    /// for [`Metrics::global`]).
    pub fn registry(&self) -> &Registry {
        &self.families.registry
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.families.registry.gather(), &mut out)
            .expect("the text encoder writes to a Vec");
        out
    }

    /// `run`: reloads of the pipeline files, by `result` (`ok`, `failed`).
    pub fn reloads_total(&self, result: &str) -> IntCounter {
        self.families.reloads_total.with_label_values(&[result])
    }

    /// `run`: 1, labelled with the `hash` of the pipeline running now. Setting it removes
    /// the series of the previous hash, so that one series shows at a time.
    pub fn set_config_hash(&self, hash: &str) {
        let gauge = &self.families.config_hash;
        gauge.reset();
        gauge.with_label_values(&[hash]).set(1);
    }

    /// 1 while the process is over `memory_limit_mb` and sources are paused, else 0.
    pub fn memory_limited(&self) -> &IntGauge {
        &self.families.memory_limited
    }

    /// Times the process went over `memory_limit_mb` (the gauge went from 0 to 1).
    pub fn memory_limited_total(&self) -> &IntCounter {
        &self.families.memory_limited_total
    }

    /// The limit in force, in bytes; 0 when there is none.
    pub fn memory_limit_bytes(&self) -> &IntGauge {
        &self.families.memory_limit_bytes
    }
}

/// One component's handle: its engine series (the core's `Telemetry` for it) and the
/// series of its plugin, each bound to the component's labels.
///
/// The typed handles ([`file`](Self::file), [`webhook`](Self::webhook), ...) resolve their
/// series when asked, so a plugin asks once, at build or start, and keeps what it got;
/// only series with a label the plugin learns per event (a denial's verb, a request's
/// status) are looked up as they are recorded.
pub struct ComponentMetrics {
    metrics: Metrics,
    /// `component_id`, `component_kind`, `component_type`.
    labels: [String; 3],
    received_events: IntCounter,
    received_bytes: IntCounter,
    sent_events: IntCounter,
    sent_bytes: IntCounter,
    dead_letters: IntCounter,
    buffer_events: IntGauge,
}

impl fmt::Debug for ComponentMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComponentMetrics")
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

impl ComponentMetrics {
    /// The handle of component `id` in `metrics`. Its engine series are created at zero, so
    /// that they show before traffic. `kind` is the singular kind (`source`), `component_type`
    /// the plugin (`file`).
    pub fn new(
        metrics: &Metrics,
        id: &str,
        kind: &str,
        component_type: &str,
    ) -> Arc<ComponentMetrics> {
        let families = &metrics.families;
        let labels = [id, kind, component_type];
        Arc::new(ComponentMetrics {
            received_events: families.received_events.with_label_values(&labels),
            received_bytes: families.received_bytes.with_label_values(&labels),
            sent_events: families.sent_events.with_label_values(&labels),
            sent_bytes: families.sent_bytes.with_label_values(&labels),
            dead_letters: families.dead_letters.with_label_values(&labels),
            buffer_events: families.buffer_events.with_label_values(&labels),
            labels: labels.map(str::to_owned),
            metrics: metrics.clone(),
        })
    }

    /// The component id its series are labelled with.
    pub fn id(&self) -> &str {
        &self.labels[0]
    }

    fn families(&self) -> &Families {
        &self.metrics.families
    }

    fn with<'a>(&'a self, extra: &'a str) -> [&'a str; 4] {
        [&self.labels[0], &self.labels[1], &self.labels[2], extra]
    }

    // The engine's series (the core's `Telemetry` calls these, once per batch).

    /// Adds `events` (and their `bytes`, as JSON) taken in.
    pub fn received(&self, events: usize, bytes: usize) {
        self.received_events.inc_by(events as u64);
        self.received_bytes.inc_by(bytes as u64);
    }

    /// Adds `events` (and their `bytes`) passed on or delivered.
    pub fn sent(&self, events: usize, bytes: usize) {
        self.sent_events.inc_by(events as u64);
        self.sent_bytes.inc_by(bytes as u64);
    }

    /// Adds `events` dropped for `reason` (a bounded word: `sampled`, `malformed`, ...).
    pub fn discarded(&self, reason: &str, events: usize) {
        self.families()
            .discarded
            .with_label_values(&self.with(reason))
            .inc_by(events as u64);
    }

    /// Adds `count` errors of `error_type` (a bounded word: `io`, `rejected`, ...).
    pub fn errored(&self, error_type: &str, count: usize) {
        self.families()
            .errors
            .with_label_values(&self.with(error_type))
            .inc_by(count as u64);
    }

    /// Moves the gauge of events waiting in front of the component by `delta_events`.
    pub fn buffer_changed(&self, delta_events: i64) {
        self.buffer_events.add(delta_events);
    }

    /// Adds `events` sent on the component's `<id>.dead_letter` output.
    pub fn dead_lettered(&self, events: usize) {
        self.dead_letters.inc_by(events as u64);
    }

    // The plugins' series.

    /// `file` source: its four series.
    pub fn file(&self) -> FileMetrics {
        let f = self.families();
        let id = [self.id()];
        FileMetrics {
            lag_bytes: f.file_checkpoint_lag_bytes.with_label_values(&id),
            open_files: f.file_open_files.with_label_values(&id),
            rotations: f.file_rotations_total.with_label_values(&id),
            lost_bytes: f.file_lost_bytes_total.with_label_values(&id),
        }
    }

    /// The disk buffer in front of this sink.
    pub fn disk_buffer(&self) -> DiskBufferMetrics {
        let f = self.families();
        let id = [self.id()];
        DiskBufferMetrics {
            bytes: f.buffer_bytes.with_label_values(&id),
            max_bytes: f.buffer_max_bytes.with_label_values(&id),
            oldest_age_seconds: f.buffer_oldest_event_age_seconds.with_label_values(&id),
            corrupt: f.buffer_corrupt_records_total.with_label_values(&id),
        }
    }

    /// `redact` transform: secrets replaced by `detector`.
    pub fn redactions(&self, detector: &str) -> IntCounter {
        self.families()
            .redactions_total
            .with_label_values(&[self.id(), detector])
    }

    /// `rbac_denial` transform: denials by `class`, `verb` and `resource`, which the
    /// transform bounds.
    pub fn rbac_denials(&self, class: &str, verb: &str, resource: &str) -> IntCounter {
        self.families()
            .rbac_denials_total
            .with_label_values(&[self.id(), class, verb, resource])
    }

    /// `dedupe` transform: keys held.
    pub fn dedupe_keys(&self) -> IntGauge {
        self.families().dedupe_keys.with_label_values(&[self.id()])
    }

    /// Sinks that make requests: in flight, retried, and their latency.
    pub fn sink_requests(&self) -> SinkRequestMetrics {
        let f = self.families();
        let id = [self.id()];
        SinkRequestMetrics {
            inflight: f.sink_inflight_requests.with_label_values(&id),
            retries: f.sink_retries_total.with_label_values(&id),
            duration: f.sink_request_duration_seconds.clone(),
            id: self.id().to_owned(),
        }
    }

    /// `webhook` source: its connections, requests, timeouts, TLS failures and checks.
    pub fn webhook(&self) -> WebhookMetrics {
        let f = self.families();
        let id = [self.id()];
        WebhookMetrics {
            connections: f.webhook_connections.with_label_values(&id),
            connections_refused: f.webhook_connections_refused_total.with_label_values(&id),
            tls_failures: f.webhook_tls_failures_total.with_label_values(&id),
            checks: f.webhook_checks_total.with_label_values(&id),
            request_duration: f.webhook_request_duration_seconds.with_label_values(&id),
            requests: f.webhook_requests_total.clone(),
            timeouts: f.webhook_timeouts_total.clone(),
            id: self.id().to_owned(),
        }
    }

    /// `kafka` source: consumer lag per assigned partition.
    pub fn kafka_lag(&self) -> KafkaLagMetrics {
        KafkaLagMetrics {
            lag: self.families().kafka_consumer_lag.clone(),
            id: self.id().to_owned(),
        }
    }
}

/// The `file` source's series.
#[derive(Clone, Debug)]
pub struct FileMetrics {
    /// File size minus acknowledged offset, summed over the files followed.
    pub lag_bytes: IntGauge,
    /// Files held open.
    pub open_files: IntGauge,
    /// Rotations noticed (rename, copy-truncate).
    pub rotations: IntCounter,
    /// Bytes of files gone (deleted, or rotated out of reach) before they were read or
    /// acknowledged.
    pub lost_bytes: IntCounter,
}

/// A sink's disk buffer's series.
#[derive(Clone, Debug)]
pub struct DiskBufferMetrics {
    /// Bytes of records not yet released (acknowledged by the destination).
    pub bytes: IntGauge,
    /// The configured `max_bytes`.
    pub max_bytes: IntGauge,
    /// Age of the oldest event handed to the sink and not yet acknowledged.
    pub oldest_age_seconds: IntGauge,
    /// Damaged records skipped (cut by a crash, or changed on disk).
    pub corrupt: IntCounter,
}

/// The series of a sink that makes requests.
#[derive(Clone, Debug)]
pub struct SinkRequestMetrics {
    /// Requests in flight.
    pub inflight: IntGauge,
    /// Retried requests.
    pub retries: IntCounter,
    duration: HistogramVec,
    id: String,
}

impl SinkRequestMetrics {
    /// Records a request's latency under its status class (`2xx`, `5xx`, `error`).
    pub fn observe(&self, status_class: &str, seconds: f64) {
        self.duration
            .with_label_values(&[&self.id, status_class])
            .observe(seconds);
    }
}

/// The `webhook` source's series.
#[derive(Clone, Debug)]
pub struct WebhookMetrics {
    /// Connections open now.
    pub connections: IntGauge,
    /// Connections closed at accept because `max_connections` were open.
    pub connections_refused: IntCounter,
    /// Failed TLS handshakes.
    pub tls_failures: IntCounter,
    /// Test events from `auditflow webhook-check` received.
    pub checks: IntCounter,
    /// Time from request to answer (including waiting for delivery).
    pub request_duration: Histogram,
    requests: IntCounterVec,
    timeouts: IntCounterVec,
    id: String,
}

impl WebhookMetrics {
    /// Counts a request answered with status `code` (`200`, `429`).
    pub fn answered(&self, code: &str) {
        self.requests.with_label_values(&[&self.id, code]).inc();
    }

    /// Counts a connection or request closed for being slow in `phase` (`handshake`,
    /// `header`, `idle`, `body`).
    pub fn timed_out(&self, phase: &str) {
        self.timeouts.with_label_values(&[&self.id, phase]).inc();
    }
}

/// The `kafka` source's lag, per partition.
#[derive(Clone, Debug)]
pub struct KafkaLagMetrics {
    lag: IntGaugeVec,
    id: String,
}

impl KafkaLagMetrics {
    /// Messages between the position and the high watermark of `topic`'s `partition`.
    pub fn set(&self, topic: &str, partition: i32, lag: i64) {
        self.lag
            .with_label_values(&[&self.id, topic, &partition.to_string()])
            .set(lag);
    }

    /// Removes the series of a partition no longer assigned.
    pub fn remove(&self, topic: &str, partition: i32) {
        let _ = self
            .lag
            .remove_label_values(&[&self.id, topic, &partition.to_string()]);
    }
}

#[cfg(test)]
mod tests;
