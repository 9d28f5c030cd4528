//! The one list of every component type this binary knows. A new plugin is one line here
//! (and one dependency in Cargo.toml).

use auditflow_config::{Plugin, Registry};

pub(crate) fn registry() -> Registry {
    Registry::new(vec![
        // Sources.
        Plugin::source::<auditflow_stdin::StdinConfig>(
            "stdin",
            "One JSON event per line from standard input; ends at end of input.",
        ),
        Plugin::source::<auditflow_file::FileConfig>(
            "file",
            "Tails audit log files across rotation, restarts and crashes; checkpoints what sinks acknowledged.",
        ),
        Plugin::source::<auditflow_webhook::WebhookConfig>(
            "webhook",
            "Receives kube-apiserver's audit webhook batches (EventList) over HTTPS.",
        ),
        Plugin::source::<auditflow_kafka::KafkaSourceConfig>(
            "kafka",
            "Reads Kafka topics as a consumer group member; commits offsets once delivered.",
        ),
        Plugin::source::<auditflow_generator::GeneratorConfig>(
            "generator",
            "Realistic synthetic audit events (benchmarks, load tests); deterministic per seed.",
        ),
        // Transforms.
        Plugin::transform::<auditflow_filter::FilterConfig>(
            "filter",
            "Keeps the events that match a condition; discards the rest (reason `filtered`).",
        ),
        Plugin::transform::<auditflow_rbac_denial::RbacDenialConfig>(
            "rbac_denial",
            "Tags refused requests (rbac, authentication, forbidden) with the permission they lacked.",
        ),
        Plugin::transform::<auditflow_sample::SampleConfig>(
            "sample",
            "Keeps about 1 in `rate` requests by a hash of auditID; never errors or denials.",
        ),
        Plugin::transform::<auditflow_redact::RedactConfig>(
            "redact",
            "Replaces secrets (tokens, Secret data, JWTs, keys, credentials) wherever they appear.",
        ),
        Plugin::transform::<auditflow_audit_policy::AuditPolicyConfig>(
            "audit_policy",
            "Applies a kube-apiserver audit Policy: drops and trims events as the API server would have.",
        ),
        Plugin::transform::<auditflow_dedupe::DedupeConfig>(
            "dedupe",
            "Drops events whose key (auditID, stage) was seen within a window; bounded memory.",
        ),
        // Sinks.
        Plugin::sink::<auditflow_stdout::StdoutConfig>(
            "stdout",
            "One compact JSON event per line to standard output.",
        ),
        Plugin::sink::<auditflow_blackhole::BlackholeConfig>(
            "blackhole",
            "Counts and drops events, acknowledging at once (benchmarks).",
        ),
        Plugin::sink::<auditflow_kafka::KafkaSinkConfig>(
            "kafka",
            "One JSON message per event to a Kafka topic; idempotent, acknowledged from delivery reports.",
        ),
        Plugin::sink::<auditflow_file::FileSinkConfig>(
            "file",
            "NDJSON to local files named by a date template; rotated by size and date, optionally gzipped; acknowledged once fsynced.",
        ),
        Plugin::sink::<auditflow_https::HttpsConfig>(
            "https",
            "Batched, compressed, retried HTTP(S) requests; acknowledges only what the server accepted (2xx).",
        ),
    ])
}
