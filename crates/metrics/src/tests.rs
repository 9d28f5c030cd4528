use super::*;

fn rendered(metrics: &Metrics) -> String {
    String::from_utf8(metrics.render()).expect("the text format is UTF-8")
}

/// The lines of `text` for `name` (samples only, not `# HELP`/`# TYPE`).
fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .collect()
}

#[test]
fn two_components_with_the_same_id_in_separate_registries_do_not_share_series() {
    let (one, two) = (Metrics::new(), Metrics::new());
    let first = ComponentMetrics::new(&one, "scrub", "transform", "redact");
    let second = ComponentMetrics::new(&two, "scrub", "transform", "redact");

    first.received(3, 300);
    first.discarded("filtered", 2);
    first.redactions("jwt").inc_by(5);
    first.file().rotations.inc();
    second.received(1, 10);
    second.redactions("jwt").inc();

    let one = rendered(&one);
    let two = rendered(&two);
    assert_eq!(
        samples(&one, names::COMPONENT_RECEIVED_EVENTS_TOTAL),
        [
            r#"auditflow_component_received_events_total{component_id="scrub",component_kind="transform",component_type="redact"} 3"#
        ]
    );
    assert_eq!(
        samples(&two, names::COMPONENT_RECEIVED_EVENTS_TOTAL),
        [
            r#"auditflow_component_received_events_total{component_id="scrub",component_kind="transform",component_type="redact"} 1"#
        ]
    );
    assert_eq!(
        samples(&one, names::REDACTIONS_TOTAL),
        [r#"auditflow_redactions_total{component_id="scrub",detector="jwt"} 5"#]
    );
    assert_eq!(
        samples(&two, names::REDACTIONS_TOTAL),
        [r#"auditflow_redactions_total{component_id="scrub",detector="jwt"} 1"#]
    );
    assert_eq!(
        samples(&one, names::COMPONENT_DISCARDED_EVENTS_TOTAL).len(),
        1
    );
    assert!(samples(&two, names::COMPONENT_DISCARDED_EVENTS_TOTAL).is_empty());
    assert_eq!(
        samples(&one, names::FILE_ROTATIONS_TOTAL),
        [r#"auditflow_file_rotations_total{component_id="scrub"} 1"#]
    );
    assert!(samples(&two, names::FILE_ROTATIONS_TOTAL).is_empty());
    // Nothing of either reached the process's registry.
    let global = rendered(Metrics::global());
    assert!(!global.contains(r#"component_id="scrub""#), "{global}");
}

#[test]
fn each_handle_labels_its_series_with_its_component_id_only() {
    let metrics = Metrics::new();
    let cx = ComponentMetrics::new(&metrics, "audit", "source", "webhook");
    let webhook = cx.webhook();
    webhook.answered("200");
    webhook.timed_out("header");
    webhook.connections.inc();
    webhook.request_duration.observe(0.01);
    let sink = cx.sink_requests();
    sink.retries.inc();
    sink.observe("5xx", 0.2);
    let lag = cx.kafka_lag();
    lag.set("audit", 3, 42);
    lag.set("audit", 4, 7);
    lag.remove("audit", 4);
    cx.rbac_denials("rbac", "list", "secrets").inc();
    cx.dedupe_keys().set(9);
    cx.disk_buffer().max_bytes.set(1024);
    let text = rendered(&metrics);
    for line in [
        r#"auditflow_webhook_requests_total{code="200",component_id="audit"} 1"#,
        r#"auditflow_webhook_timeouts_total{component_id="audit",phase="header"} 1"#,
        r#"auditflow_webhook_connections{component_id="audit"} 1"#,
        r#"auditflow_webhook_request_duration_seconds_count{component_id="audit"} 1"#,
        r#"auditflow_sink_retries_total{component_id="audit"} 1"#,
        r#"auditflow_sink_request_duration_seconds_count{component_id="audit",status_class="5xx"} 1"#,
        r#"auditflow_kafka_consumer_lag{component_id="audit",partition="3",topic="audit"} 42"#,
        r#"auditflow_rbac_denials_total{class="rbac",component_id="audit",resource="secrets",verb="list"} 1"#,
        r#"auditflow_dedupe_keys{component_id="audit"} 9"#,
        r#"auditflow_buffer_max_bytes{component_id="audit"} 1024"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
    }
    assert!(!text.contains(r#"partition="4""#), "{text}");
}

#[test]
fn a_new_config_hash_replaces_the_old_series() {
    let metrics = Metrics::new();
    metrics.set_config_hash("aaaa");
    metrics.set_config_hash("bbbb");
    let text = rendered(&metrics);
    assert_eq!(
        samples(&text, names::CONFIG_HASH),
        [r#"auditflow_config_hash{hash="bbbb"} 1"#]
    );
}
