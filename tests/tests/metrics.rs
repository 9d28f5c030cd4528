//! The metrics endpoint of a running pipeline: the engine's series for every component,
//! labelled with its id, kind and type, counting what really went through; `/health`
//! and `/ready`.

use std::io::Write;
use std::time::{Duration, Instant};

use auditflow_e2e::audit_lines::audit_line;
use auditflow_e2e::{http_get, metric, wait_ready, Auditflow, Workspace};

const ENGINE_SERIES: [&str; 5] = [
    "auditflow_component_received_events_total",
    "auditflow_component_received_bytes_total",
    "auditflow_component_sent_events_total",
    "auditflow_component_sent_bytes_total",
    "auditflow_buffer_events",
];

const COMPONENTS: [(&str, &str, &str); 3] = [
    ("in", "source", "stdin"),
    ("out", "sink", "stdout"),
    ("drop", "sink", "blackhole"),
];

fn scrape(address: &str) -> String {
    let (status, body) = http_get(address, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    body
}

fn value(text: &str, name: &str, id: &str) -> f64 {
    metric(text, name, &[("component_id", id)])
        .unwrap_or_else(|| panic!("no {name} for {id} in:\n{text}"))
}

#[test]
fn every_component_reports_the_engine_series_and_counts_what_went_through() {
    let workspace = Workspace::new();
    let address = "127.0.0.1:0";
    let pipeline = workspace.pipeline_with_metrics(
        address,
        "sources:\n  in:\n    type: stdin\n\
             sinks:\n  out:\n    type: stdout\n    inputs: [in]\n  \
             drop:\n    type: blackhole\n    inputs: [in]\n",
    );
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let lines = auditflow.stdout_lines();
    let mut stdin = auditflow.take_stdin();
    let address = auditflow.metrics_address(Duration::from_secs(20));
    wait_ready(&address, Duration::from_secs(20));

    assert_eq!(http_get(&address, "/health").unwrap().0, 200);
    assert_eq!(http_get(&address, "/ready").unwrap().0, 200);
    assert_eq!(http_get(&address, "/nothing-here").unwrap().0, 404);

    // Before any traffic every series exists, at zero, with all three labels.
    let text = scrape(&address);
    for name in ENGINE_SERIES {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} has no TYPE line"
        );
        for (id, kind, component_type) in COMPONENTS {
            let labels = [
                ("component_id", id),
                ("component_kind", kind),
                ("component_type", component_type),
            ];
            assert_eq!(metric(&text, name, &labels), Some(0.0), "{name} {labels:?}");
        }
    }

    let mut bytes = 0;
    for i in 0..10 {
        let line = audit_line(i);
        bytes += line.len() + 1;
        writeln!(stdin, "{line}").unwrap();
        if i == 4 {
            writeln!(stdin, "not json").unwrap();
        }
    }
    stdin.flush().unwrap();
    for i in 0..10 {
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("events reach stdout");
        assert_eq!(line, audit_line(i));
    }
    // A sink counts after its write returned, which is a moment after the lines can be
    // read; the blackhole runs beside stdout. Wait for both.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(&address);
        let sent = |id| value(&text, "auditflow_component_sent_events_total", id);
        if sent("out") == 10.0 && sent("drop") == 10.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the sinks never counted 10:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };

    let received = "auditflow_component_received_events_total";
    let sent = "auditflow_component_sent_events_total";
    assert_eq!(
        value(&text, received, "in"),
        11.0,
        "lines read, the bad one included"
    );
    assert_eq!(
        value(&text, "auditflow_component_received_bytes_total", "in"),
        (bytes + "not json\n".len()) as f64
    );
    assert_eq!(value(&text, sent, "in"), 10.0);
    assert_eq!(
        metric(
            &text,
            "auditflow_component_discarded_events_total",
            &[
                ("component_id", "in"),
                ("component_kind", "source"),
                ("component_type", "stdin"),
                ("reason", "malformed"),
            ]
        ),
        Some(1.0)
    );
    for sink in ["out", "drop"] {
        assert_eq!(value(&text, received, sink), 10.0, "{sink}");
        assert_eq!(value(&text, sent, sink), 10.0, "{sink}");
        assert_eq!(value(&text, "auditflow_buffer_events", sink), 0.0, "{sink}");
    }
    assert_eq!(
        value(&text, "auditflow_component_sent_bytes_total", "out"),
        bytes as f64,
        "stdout counts the bytes it wrote"
    );
    assert_eq!(
        metric(&text, "auditflow_component_errors_total", &[]),
        None,
        "no errors"
    );

    drop(stdin);
    let status = auditflow.wait_timeout(Duration::from_secs(20));
    assert!(
        status.success(),
        "exit {status}; stderr:\n{}",
        auditflow.stderr()
    );
}

/// One plain-HTTP POST of `body` to the webhook at `address`; returns the status code.
fn post(address: std::net::SocketAddr, path: &str, body: &str) -> u16 {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the webhook");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

/// Every plugin's series, recorded through its component's metrics handle, shows on the
/// process's `/metrics` under exactly the names and labels docs/metrics.md lists: a file
/// source, redact, rbac_denial and dedupe in a chain to an https sink with a disk
/// buffer, and a webhook source beside them. (The kafka source's lag has its own test in
/// kafka.rs, which needs a broker.)
#[test]
fn every_plugin_series_shows_on_metrics_labelled_with_its_component_id() {
    use auditflow_e2e::tls::{Pki, Reply, ServerOptions, TestServer};

    const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJl";
    let workspace = Workspace::new();
    let pki = Pki::new("every-series");
    let files = pki.write_to(workspace.path());
    let server = TestServer::start(&pki, ServerOptions::responder(|_| Reply::ok()));
    let logs = workspace.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    // The capture (it holds one RBAC denial: bob listing secrets), then one event with a
    // token in it.
    let mut text = auditflow_e2e::audit_lines::audit_lines(0..245);
    text.push_str(&format!(
        "{{\"kind\":\"Event\",\"apiVersion\":\"audit.k8s.io/v1\",\"level\":\"Request\",\
         \"auditID\":\"jwt-1\",\"stage\":\"ResponseComplete\",\"verb\":\"create\",\
         \"requestURI\":\"/api/v1/namespaces/a/configmaps\",\"requestObject\":{{\"note\":\"{JWT}\"}}}}\n"
    ));
    std::fs::write(logs.join("audit.log"), &text).unwrap();
    let events = text.lines().count();
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            r#"
data_dir: {data_dir}
metrics:
  address: 127.0.0.1:0
sources:
  logs:
    type: file
    include: ["{logs}/*.log"]
  hook:
    type: webhook
    address: 127.0.0.1:0
    path: /audit
    allow_plaintext: true
transforms:
  scrub: {{ type: redact, inputs: [logs] }}
  tag: {{ type: rbac_denial, inputs: [scrub] }}
  once: {{ type: dedupe, inputs: [tag] }}
sinks:
  central:
    type: https
    inputs: [once]
    uri: {uri}
    batch: {{ max_events: 100, timeout_ms: 50 }}
    tls: {{ ca_file: {ca} }}
    buffer: {{ type: disk, max_bytes: 16777216 }}
  drop: {{ type: blackhole, inputs: [hook] }}
"#,
            data_dir = workspace.path().join("data").display(),
            logs = logs.display(),
            uri = server.url("/ingest"),
            ca = files.ca.display(),
        ),
    );
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let address = auditflow.metrics_address(Duration::from_secs(20));
    let hook = auditflow.webhook_address("hook", Duration::from_secs(20));
    wait_ready(&address, Duration::from_secs(20));
    assert_eq!(post(hook, "/audit", &audit_line(0)), 200);

    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = scrape(&address);
        let delivered = |id| {
            metric(
                &text,
                "auditflow_component_sent_events_total",
                &[("component_id", id)],
            )
        };
        if delivered("central") == Some(events as f64) && delivered("drop") == Some(1.0) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "not every event was delivered:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };

    // Exact lines: the names, the label sets (only `component_id` and the series' own
    // labels) and the values.
    for line in [
        r#"auditflow_file_open_files{component_id="logs"} 1"#,
        r#"auditflow_file_rotations_total{component_id="logs"} 0"#,
        r#"auditflow_file_lost_bytes_total{component_id="logs"} 0"#,
        r#"auditflow_rbac_denials_total{class="rbac",component_id="tag",resource="secrets",verb="list"} 1"#,
        r#"auditflow_dedupe_keys{component_id="once"} 246"#,
        r#"auditflow_sink_retries_total{component_id="central"} 0"#,
        r#"auditflow_sink_inflight_requests{component_id="central"} 0"#,
        r#"auditflow_buffer_max_bytes{component_id="central"} 16777216"#,
        r#"auditflow_buffer_corrupt_records_total{component_id="central"} 0"#,
        r#"auditflow_webhook_requests_total{code="200",component_id="hook"} 1"#,
        r#"auditflow_webhook_request_duration_seconds_count{component_id="hook"} 1"#,
        r#"auditflow_webhook_connections_refused_total{component_id="hook"} 0"#,
        r#"auditflow_webhook_tls_failures_total{component_id="hook"} 0"#,
        r#"auditflow_webhook_checks_total{component_id="hook"} 0"#,
        r#"auditflow_reloads_total{result="ok"} 0"#,
        r#"auditflow_reloads_total{result="failed"} 0"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    // Series whose value moves on its own: present, with exactly these labels.
    for series in [
        r#"auditflow_file_checkpoint_lag_bytes{component_id="logs"} "#,
        r#"auditflow_webhook_connections{component_id="hook"} "#,
        r#"auditflow_buffer_bytes{component_id="central"} "#,
        r#"auditflow_buffer_oldest_event_age_seconds{component_id="central"} "#,
        r#"auditflow_sink_request_duration_seconds_count{component_id="central",status_class="2xx"} "#,
        "auditflow_memory_limit_bytes ",
        "auditflow_memory_limited 0",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(series)),
            "missing `{series}` in:\n{text}"
        );
    }
    // The token in the last event (the capture may hold more).
    let jwt = r#"auditflow_redactions_total{component_id="scrub",detector="jwt"} "#;
    let redacted = text
        .lines()
        .find_map(|l| l.strip_prefix(jwt))
        .and_then(|value| value.parse::<f64>().ok());
    assert!(redacted >= Some(1.0), "missing `{jwt}` in:\n{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("auditflow_config_hash{hash="))
            .count(),
        1,
        "{text}"
    );

    auditflow.signal(libc::SIGTERM);
    let status = auditflow.wait_timeout(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", auditflow.stderr());
}
