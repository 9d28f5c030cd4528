//! Every metric name auditflow exports.

pub const COMPONENT_RECEIVED_EVENTS_TOTAL: &str = "auditflow_component_received_events_total";
pub const COMPONENT_RECEIVED_BYTES_TOTAL: &str = "auditflow_component_received_bytes_total";
pub const COMPONENT_SENT_EVENTS_TOTAL: &str = "auditflow_component_sent_events_total";
pub const COMPONENT_SENT_BYTES_TOTAL: &str = "auditflow_component_sent_bytes_total";
pub const COMPONENT_ERRORS_TOTAL: &str = "auditflow_component_errors_total";
pub const COMPONENT_DISCARDED_EVENTS_TOTAL: &str = "auditflow_component_discarded_events_total";
pub const COMPONENT_DEAD_LETTER_EVENTS_TOTAL: &str = "auditflow_component_dead_letter_events_total";
pub const BUFFER_EVENTS: &str = "auditflow_buffer_events";
pub const BUFFER_BYTES: &str = "auditflow_buffer_bytes";
pub const BUFFER_MAX_BYTES: &str = "auditflow_buffer_max_bytes";
pub const BUFFER_OLDEST_EVENT_AGE_SECONDS: &str = "auditflow_buffer_oldest_event_age_seconds";
pub const BUFFER_CORRUPT_RECORDS_TOTAL: &str = "auditflow_buffer_corrupt_records_total";

pub const FILE_CHECKPOINT_LAG_BYTES: &str = "auditflow_file_checkpoint_lag_bytes";
pub const FILE_OPEN_FILES: &str = "auditflow_file_open_files";
pub const FILE_ROTATIONS_TOTAL: &str = "auditflow_file_rotations_total";
pub const FILE_LOST_BYTES_TOTAL: &str = "auditflow_file_lost_bytes_total";

pub const REDACTIONS_TOTAL: &str = "auditflow_redactions_total";
pub const RBAC_DENIALS_TOTAL: &str = "auditflow_rbac_denials_total";
pub const DEDUPE_KEYS: &str = "auditflow_dedupe_keys";

pub const SINK_REQUEST_DURATION_SECONDS: &str = "auditflow_sink_request_duration_seconds";
pub const SINK_RETRIES_TOTAL: &str = "auditflow_sink_retries_total";
pub const SINK_INFLIGHT_REQUESTS: &str = "auditflow_sink_inflight_requests";

pub const WEBHOOK_REQUESTS_TOTAL: &str = "auditflow_webhook_requests_total";
pub const WEBHOOK_REQUEST_DURATION_SECONDS: &str = "auditflow_webhook_request_duration_seconds";
pub const WEBHOOK_CONNECTIONS: &str = "auditflow_webhook_connections";
pub const WEBHOOK_CONNECTIONS_REFUSED_TOTAL: &str = "auditflow_webhook_connections_refused_total";
pub const WEBHOOK_TIMEOUTS_TOTAL: &str = "auditflow_webhook_timeouts_total";
pub const WEBHOOK_TLS_FAILURES_TOTAL: &str = "auditflow_webhook_tls_failures_total";
pub const WEBHOOK_CHECKS_TOTAL: &str = "auditflow_webhook_checks_total";

pub const KAFKA_CONSUMER_LAG: &str = "auditflow_kafka_consumer_lag";

pub const RELOADS_TOTAL: &str = "auditflow_reloads_total";
pub const CONFIG_HASH: &str = "auditflow_config_hash";
pub const MEMORY_LIMITED: &str = "auditflow_memory_limited";
pub const MEMORY_LIMITED_TOTAL: &str = "auditflow_memory_limited_total";
pub const MEMORY_LIMIT_BYTES: &str = "auditflow_memory_limit_bytes";
