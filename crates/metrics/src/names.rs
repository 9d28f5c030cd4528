//! Every metric name auditflow exports.

/// Events a component took in.
pub const COMPONENT_RECEIVED_EVENTS_TOTAL: &str = "auditflow_component_received_events_total";
/// Bytes of the events a component took in (as JSON).
pub const COMPONENT_RECEIVED_BYTES_TOTAL: &str = "auditflow_component_received_bytes_total";
/// Events a component passed on (sources, transforms) or delivered (sinks).
pub const COMPONENT_SENT_EVENTS_TOTAL: &str = "auditflow_component_sent_events_total";
/// Bytes a component passed on or delivered.
pub const COMPONENT_SENT_BYTES_TOTAL: &str = "auditflow_component_sent_bytes_total";
/// Errors a component met, by error_type.
pub const COMPONENT_ERRORS_TOTAL: &str = "auditflow_component_errors_total";
/// Events a component dropped, by reason (sampled, filtered, malformed, oversized, rejected).
pub const COMPONENT_DISCARDED_EVENTS_TOTAL: &str = "auditflow_component_discarded_events_total";
/// Dead letters a source or sink sent on its `<id>.dead_letter` output.
pub const COMPONENT_DEAD_LETTER_EVENTS_TOTAL: &str = "auditflow_component_dead_letter_events_total";
/// Events waiting in the channel in front of a component.
pub const BUFFER_EVENTS: &str = "auditflow_buffer_events";
/// Bytes a sink's disk buffer holds that the destination has not acknowledged yet.
pub const BUFFER_BYTES: &str = "auditflow_buffer_bytes";
/// The most bytes a sink's disk buffer may hold (its max_bytes).
pub const BUFFER_MAX_BYTES: &str = "auditflow_buffer_max_bytes";
/// Seconds since the oldest event the sink has not delivered yet was written to its disk buffer.
pub const BUFFER_OLDEST_EVENT_AGE_SECONDS: &str = "auditflow_buffer_oldest_event_age_seconds";
/// Damaged records a disk buffer skipped.
pub const BUFFER_CORRUPT_RECORDS_TOTAL: &str = "auditflow_buffer_corrupt_records_total";

/// File size minus acknowledged offset, summed over the files a file source follows.
pub const FILE_CHECKPOINT_LAG_BYTES: &str = "auditflow_file_checkpoint_lag_bytes";
/// Files a file source holds open.
pub const FILE_OPEN_FILES: &str = "auditflow_file_open_files";
/// Rotations a file source noticed (rename or truncate).
pub const FILE_ROTATIONS_TOTAL: &str = "auditflow_file_rotations_total";
/// Bytes a file source lost: files gone with bytes unread or unacknowledged.
pub const FILE_LOST_BYTES_TOTAL: &str = "auditflow_file_lost_bytes_total";

/// Secrets the redact transform replaced, by detector.
pub const REDACTIONS_TOTAL: &str = "auditflow_redactions_total";
/// Denied requests, by class (rbac, authentication, forbidden), verb and resource.
pub const RBAC_DENIALS_TOTAL: &str = "auditflow_rbac_denials_total";
/// Keys a dedupe transform holds, each remembered for its window.
pub const DEDUPE_KEYS: &str = "auditflow_dedupe_keys";

/// Duration of a sink's requests, by status class.
pub const SINK_REQUEST_DURATION_SECONDS: &str = "auditflow_sink_request_duration_seconds";
/// Requests a sink retried.
pub const SINK_RETRIES_TOTAL: &str = "auditflow_sink_retries_total";
/// Requests a sink has in flight.
pub const SINK_INFLIGHT_REQUESTS: &str = "auditflow_sink_inflight_requests";

/// Requests the webhook source answered, by status code.
pub const WEBHOOK_REQUESTS_TOTAL: &str = "auditflow_webhook_requests_total";
/// Time the webhook source took to answer a request.
pub const WEBHOOK_REQUEST_DURATION_SECONDS: &str = "auditflow_webhook_request_duration_seconds";
/// Connections the webhook source holds open.
pub const WEBHOOK_CONNECTIONS: &str = "auditflow_webhook_connections";
/// Connections the webhook source closed at accept, over max_connections.
pub const WEBHOOK_CONNECTIONS_REFUSED_TOTAL: &str = "auditflow_webhook_connections_refused_total";
/// Connections or requests the webhook source closed for being too slow, by phase.
pub const WEBHOOK_TIMEOUTS_TOTAL: &str = "auditflow_webhook_timeouts_total";
/// TLS handshakes the webhook source saw fail.
pub const WEBHOOK_TLS_FAILURES_TOTAL: &str = "auditflow_webhook_tls_failures_total";
/// Test events from `auditflow webhook-check` the webhook source received.
pub const WEBHOOK_CHECKS_TOTAL: &str = "auditflow_webhook_checks_total";

/// Messages between the committed position and the high watermark, per partition.
pub const KAFKA_CONSUMER_LAG: &str = "auditflow_kafka_consumer_lag";

/// Reloads of the pipeline files (SIGHUP or --watch), by result: ok, or failed (the old pipeline kept running).
pub const RELOADS_TOTAL: &str = "auditflow_reloads_total";
/// Always 1, labelled with the hash of the pipeline running now.
pub const CONFIG_HASH: &str = "auditflow_config_hash";
/// 1 while the process is near its memory limit (`memory_limit_mb`) and sources are paused, else 0.
pub const MEMORY_LIMITED: &str = "auditflow_memory_limited";
/// Times the process came near its memory limit and paused its sources.
pub const MEMORY_LIMITED_TOTAL: &str = "auditflow_memory_limited_total";
/// The memory limit in force (`memory_limit_mb`, or 90% of the cgroup's), in bytes; 0 when none.
pub const MEMORY_LIMIT_BYTES: &str = "auditflow_memory_limit_bytes";
