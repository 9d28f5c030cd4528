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
