//! Every metric auditflow exports, and the HTTP endpoint that serves them.
//!
//! # Layout
//! - [`names`]: every metric name, as a constant.
//! - this module: the process-wide registry, the engine's per-component series
//!   ([`ComponentMetrics`], which implements the core's `Telemetry`), and the
//!   plugin-specific series as accessors (`file_rotations_total()`, ...).
//! - [`endpoint`]: `GET /metrics`, `/health`, `/ready`.
//!
//! # The one design decision
//! One process-wide registry, and every series is created here, so that names, help texts
//! and label sets are defined once. Labels never carry unbounded values: component ids,
//! kinds and types, bounded reasons, and values plugins bound themselves.

pub mod endpoint;
pub mod names;

use std::sync::{Arc, LazyLock};

use auditflow_core::{ComponentKind, Telemetry};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

/// The process-wide registry.
pub fn registry() -> &'static Registry {
    &REGISTRY
}

/// The registry in Prometheus text format.
pub fn render() -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * 1024);
    TextEncoder::new()
        .encode(&REGISTRY.gather(), &mut out)
        .expect("the text encoder writes to a Vec");
    out
}

fn register<C: prometheus::core::Collector + Clone + 'static>(collector: C) -> C {
    REGISTRY
        .register(Box::new(collector.clone()))
        .expect("every metric is registered once, here");
    collector
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    register(
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .expect("valid metric"),
    )
}

const COMPONENT_LABELS: &[&str] = &["component_id", "component_kind", "component_type"];

struct ComponentSeries {
    received_events: IntCounterVec,
    received_bytes: IntCounterVec,
    sent_events: IntCounterVec,
    sent_bytes: IntCounterVec,
    errors: IntCounterVec,
    discarded: IntCounterVec,
    dead_letters: IntCounterVec,
    buffer_events: IntGaugeVec,
}

static COMPONENT: LazyLock<ComponentSeries> = LazyLock::new(|| {
    let with = |extra: &'static str| -> Vec<&'static str> {
        let mut labels = COMPONENT_LABELS.to_vec();
        labels.push(extra);
        labels
    };
    ComponentSeries {
        received_events: counter_vec(
            names::COMPONENT_RECEIVED_EVENTS_TOTAL,
            "Events a component took in.",
            COMPONENT_LABELS,
        ),
        received_bytes: counter_vec(
            names::COMPONENT_RECEIVED_BYTES_TOTAL,
            "Bytes of the events a component took in (as JSON).",
            COMPONENT_LABELS,
        ),
        sent_events: counter_vec(
            names::COMPONENT_SENT_EVENTS_TOTAL,
            "Events a component passed on (sources, transforms) or delivered (sinks).",
            COMPONENT_LABELS,
        ),
        sent_bytes: counter_vec(
            names::COMPONENT_SENT_BYTES_TOTAL,
            "Bytes a component passed on or delivered.",
            COMPONENT_LABELS,
        ),
        errors: counter_vec(
            names::COMPONENT_ERRORS_TOTAL,
            "Errors a component met, by error_type.",
            &with("error_type"),
        ),
        discarded: counter_vec(
            names::COMPONENT_DISCARDED_EVENTS_TOTAL,
            "Events a component dropped, by reason (sampled, filtered, malformed, oversized, rejected).",
            &with("reason"),
        ),
        dead_letters: counter_vec(
            names::COMPONENT_DEAD_LETTER_EVENTS_TOTAL,
            "Dead letters a source or sink sent on its <id>.dead_letter output.",
            COMPONENT_LABELS,
        ),
        buffer_events: gauge_vec(
            names::BUFFER_EVENTS,
            "Events waiting in the channel in front of a component.",
            COMPONENT_LABELS,
        ),
    }
});

/// One component's engine series; its [`Telemetry`] implementation.
pub struct ComponentMetrics {
    labels: [String; 3],
    received_events: IntCounter,
    received_bytes: IntCounter,
    sent_events: IntCounter,
    sent_bytes: IntCounter,
    dead_letters: IntCounter,
    buffer_events: IntGauge,
}

impl ComponentMetrics {
    /// The series of one component, created at zero so that they show before traffic.
    pub fn new(id: &str, kind: ComponentKind, component_type: &str) -> Arc<ComponentMetrics> {
        let series = &*COMPONENT;
        let labels = [id, kind.as_str(), component_type];
        Arc::new(ComponentMetrics {
            received_events: series.received_events.with_label_values(&labels),
            received_bytes: series.received_bytes.with_label_values(&labels),
            sent_events: series.sent_events.with_label_values(&labels),
            sent_bytes: series.sent_bytes.with_label_values(&labels),
            dead_letters: series.dead_letters.with_label_values(&labels),
            buffer_events: series.buffer_events.with_label_values(&labels),
            labels: labels.map(str::to_owned),
        })
    }

    fn with<'a>(&'a self, extra: &'a str) -> [&'a str; 4] {
        [&self.labels[0], &self.labels[1], &self.labels[2], extra]
    }
}

impl Telemetry for ComponentMetrics {
    fn received(&self, events: usize, bytes: usize) {
        self.received_events.inc_by(events as u64);
        self.received_bytes.inc_by(bytes as u64);
    }

    fn sent(&self, events: usize, bytes: usize) {
        self.sent_events.inc_by(events as u64);
        self.sent_bytes.inc_by(bytes as u64);
    }

    fn discarded(&self, reason: &'static str, events: usize) {
        COMPONENT
            .discarded
            .with_label_values(&self.with(reason))
            .inc_by(events as u64);
    }

    fn errored(&self, error_type: &'static str, count: usize) {
        COMPONENT
            .errors
            .with_label_values(&self.with(error_type))
            .inc_by(count as u64);
    }

    fn buffer_changed(&self, delta_events: i64) {
        self.buffer_events.add(delta_events);
    }

    fn dead_lettered(&self, events: usize) {
        self.dead_letters.inc_by(events as u64);
    }
}

macro_rules! series {
    ($(#[$doc:meta])* $fn:ident: $kind:ident($name:expr, $help:expr, [$($label:expr),*] $(, $buckets:expr)?)) => {
        $(#[$doc])*
        pub fn $fn() -> &'static $kind {
            static SERIES: LazyLock<$kind> =
                LazyLock::new(|| series!(@make $kind, $name, $help, &[$($label),*] $(, $buckets)?));
            &SERIES
        }
    };
    (@make IntCounterVec, $name:expr, $help:expr, $labels:expr) => { counter_vec($name, $help, $labels) };
    (@make IntGaugeVec, $name:expr, $help:expr, $labels:expr) => { gauge_vec($name, $help, $labels) };
    (@make IntGauge, $name:expr, $help:expr, $labels:expr) => {
        register(IntGauge::new($name, $help).expect("valid metric"))
    };
    (@make IntCounter, $name:expr, $help:expr, $labels:expr) => {
        register(IntCounter::new($name, $help).expect("valid metric"))
    };
    (@make HistogramVec, $name:expr, $help:expr, $labels:expr, $buckets:expr) => { histogram_vec($name, $help, $labels, $buckets) };
}

/// Request latency buckets, 5 ms to 60 s.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ]
}

series!(
    /// `file` source: bytes written to its files that are not yet acknowledged.
    file_checkpoint_lag_bytes: IntGaugeVec(names::FILE_CHECKPOINT_LAG_BYTES,
        "File size minus acknowledged offset, summed over the files a file source follows.",
        ["component_id"]));
series!(
    /// `file` source: files currently open.
    file_open_files: IntGaugeVec(names::FILE_OPEN_FILES,
        "Files a file source holds open.", ["component_id"]));
series!(
    /// `file` source: rotations noticed (rename, copy-truncate).
    file_rotations_total: IntCounterVec(names::FILE_ROTATIONS_TOTAL,
        "Rotations a file source noticed (rename or truncate).", ["component_id"]));
series!(
    /// `file` source: bytes of files that were gone (deleted, or rotated out of reach)
    /// before they were read or acknowledged.
    file_lost_bytes_total: IntCounterVec(names::FILE_LOST_BYTES_TOTAL,
        "Bytes a file source lost: files gone with bytes unread or unacknowledged.",
        ["component_id"]));
series!(
    /// Disk buffers: bytes of records not yet released (acknowledged by the destination).
    buffer_bytes: IntGaugeVec(names::BUFFER_BYTES,
        "Bytes a sink's disk buffer holds that the destination has not acknowledged yet.",
        ["component_id"]));
series!(
    /// Disk buffers: the configured `max_bytes`.
    buffer_max_bytes: IntGaugeVec(names::BUFFER_MAX_BYTES,
        "The most bytes a sink's disk buffer may hold (its max_bytes).", ["component_id"]));
series!(
    /// Disk buffers: age of the oldest event handed to the sink and not yet acknowledged.
    buffer_oldest_event_age_seconds: IntGaugeVec(names::BUFFER_OLDEST_EVENT_AGE_SECONDS,
        "Seconds since the oldest event the sink has not delivered yet was written to its disk buffer.",
        ["component_id"]));
series!(
    /// Disk buffers: damaged records skipped (cut by a crash, or changed on disk).
    buffer_corrupt_records_total: IntCounterVec(names::BUFFER_CORRUPT_RECORDS_TOTAL,
        "Damaged records a disk buffer skipped.", ["component_id"]));
series!(
    /// `redact` transform: secrets replaced, by detector.
    redactions_total: IntCounterVec(names::REDACTIONS_TOTAL,
        "Secrets the redact transform replaced, by detector.", ["component_id", "detector"]));
series!(
    /// `rbac_denial` transform: denials tagged. `resource` is bounded by the transform.
    rbac_denials_total: IntCounterVec(names::RBAC_DENIALS_TOTAL,
        "Denied requests, by class (rbac, authentication, forbidden), verb and resource.",
        ["component_id", "class", "verb", "resource"]));
series!(
    /// `dedupe` transform: keys held (bounded by its `max_entries`).
    dedupe_keys: IntGaugeVec(names::DEDUPE_KEYS,
        "Keys a dedupe transform holds, each remembered for its window.", ["component_id"]));
series!(
    /// Sinks that make requests: request latency by status class (`2xx`, `5xx`, `error`).
    sink_request_duration_seconds: HistogramVec(names::SINK_REQUEST_DURATION_SECONDS,
        "Duration of a sink's requests, by status class.",
        ["component_id", "status_class"], latency_buckets()));
series!(
    /// Sinks: retried requests.
    sink_retries_total: IntCounterVec(names::SINK_RETRIES_TOTAL,
        "Requests a sink retried.", ["component_id"]));
series!(
    /// Sinks: requests in flight.
    sink_inflight_requests: IntGaugeVec(names::SINK_INFLIGHT_REQUESTS,
        "Requests a sink has in flight.", ["component_id"]));
series!(
    /// `webhook` source: requests answered, by status code.
    webhook_requests_total: IntCounterVec(names::WEBHOOK_REQUESTS_TOTAL,
        "Requests the webhook source answered, by status code.", ["component_id", "code"]));
series!(
    /// `webhook` source: time from request to answer (including waiting for delivery).
    webhook_request_duration_seconds: HistogramVec(names::WEBHOOK_REQUEST_DURATION_SECONDS,
        "Time the webhook source took to answer a request.", ["component_id"], latency_buckets()));
series!(
    /// `webhook` source: connections open now.
    webhook_connections: IntGaugeVec(names::WEBHOOK_CONNECTIONS,
        "Connections the webhook source holds open.", ["component_id"]));
series!(
    /// `webhook` source: connections closed at accept because `max_connections` were open.
    webhook_connections_refused_total: IntCounterVec(names::WEBHOOK_CONNECTIONS_REFUSED_TOTAL,
        "Connections the webhook source closed at accept, over max_connections.", ["component_id"]));
series!(
    /// `webhook` source: connections closed for being slow, by phase (`handshake`,
    /// `header`, `idle`, `body`).
    webhook_timeouts_total: IntCounterVec(names::WEBHOOK_TIMEOUTS_TOTAL,
        "Connections or requests the webhook source closed for being too slow, by phase.",
        ["component_id", "phase"]));
series!(
    /// `webhook` source: failed TLS handshakes (the log says why).
    webhook_tls_failures_total: IntCounterVec(names::WEBHOOK_TLS_FAILURES_TOTAL,
        "TLS handshakes the webhook source saw fail.", ["component_id"]));
series!(
    /// `webhook` source: test events from `auditflow webhook-check` received.
    webhook_checks_total: IntCounterVec(names::WEBHOOK_CHECKS_TOTAL,
        "Test events from `auditflow webhook-check` the webhook source received.", ["component_id"]));
series!(
    /// `kafka` source: messages behind the partition's high watermark.
    kafka_consumer_lag: IntGaugeVec(names::KAFKA_CONSUMER_LAG,
        "Messages between the committed position and the high watermark, per partition.",
        ["component_id", "topic", "partition"]));
series!(
    /// `run`: reloads of the pipeline files, by `result` (`ok`, `failed`).
    reloads_total: IntCounterVec(names::RELOADS_TOTAL,
        "Reloads of the pipeline files (SIGHUP or --watch), by result: ok, or failed (the old pipeline kept running).",
        ["result"]));
series!(
    /// `run`: 1, labelled with the `hash` of the pipeline running now (one series at a time).
    config_hash: IntGaugeVec(names::CONFIG_HASH,
        "Always 1, labelled with the hash of the pipeline running now.", ["hash"]));
series!(
    /// 1 while the process is over `memory_limit_mb` and sources are paused, else 0.
    memory_limited: IntGauge(names::MEMORY_LIMITED,
        "1 while the process is over its memory limit (memory_limit_mb) and sources are paused.",
        []));
series!(
    /// Times the process went over `memory_limit_mb` (the gauge went from 0 to 1).
    memory_limited_total: IntCounter(names::MEMORY_LIMITED_TOTAL,
        "Times the process went over its memory limit and paused its sources.", []));
series!(
    /// The limit in force, in bytes; 0 when there is none.
    memory_limit_bytes: IntGauge(names::MEMORY_LIMIT_BYTES,
        "The memory limit in force (memory_limit_mb, or 90% of the cgroup's), in bytes; 0 when none.",
        []));
