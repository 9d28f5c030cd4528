//! Kafka dead letters through the real binary against a real Kafka-protocol broker (Tansu;
//! see `auditflow_e2e::kafka`): what the `kafka` source cannot decode, and what the
//! `kafka` sink's broker refuses for good, reaches a `file` sink reading
//! `<id>.dead_letter` with its raw bytes intact and where it was; the good messages go
//! through, and the source's offsets are committed past the refused ones.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::time::{Duration, Instant};

use auditflow_e2e::audit_lines::{audit_id, audit_line};
use auditflow_e2e::dead_letters::{raw_bytes, wait_lines};
use auditflow_e2e::kafka::{line_index, Broker};
use auditflow_e2e::{http_get, metric, Auditflow, Workspace};
use serde_json::Value;

fn stop(mut auditflow: Auditflow) -> String {
    auditflow.signal(libc::SIGTERM);
    let status = auditflow.wait_timeout(Duration::from_secs(60));
    let stderr = auditflow.stderr();
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    stderr
}

#[test]
fn every_message_the_kafka_source_refuses_reaches_the_dead_letter_file_and_is_committed() {
    const GOOD: usize = 3_000;
    let Some(broker) = Broker::start() else {
        return;
    };
    let topic = broker.create_topic("refused", 2);
    // Refused messages between good ones and at the very end of the topic, so that the
    // commit has to pass them to reach the end.
    let refused: Vec<(Vec<u8>, &str)> = vec![
        (b"not json".to_vec(), "malformed"),
        (b"[1,2,3]".to_vec(), "malformed"),
        (br#"{"auditID":"torn","verb":"#.to_vec(), "malformed"),
        (
            b"\xff\xfe{\"auditID\":\"latin1-\xe9\"}".to_vec(),
            "malformed",
        ),
        (Vec::new(), "malformed"),
        (
            format!(
                r#"{{"auditID":"deep","requestObject":{}1{}}}"#,
                "[".repeat(10_001),
                "]".repeat(10_001)
            )
            .into_bytes(),
            "too_deep",
        ),
    ];
    let good = |range: std::ops::Range<usize>| {
        range
            .map(|i| (Some(audit_id(i).into_bytes()), audit_line(i).into_bytes()))
            .collect::<Vec<_>>()
    };
    broker.produce(&topic, good(0..GOOD / 2));
    broker.produce(
        &topic,
        refused[..3]
            .iter()
            .map(|(payload, _)| (None::<&[u8]>, payload.clone())),
    );
    broker.produce(&topic, good(GOOD / 2..GOOD));
    broker.produce(
        &topic,
        refused[3..]
            .iter()
            .map(|(payload, _)| (None::<&[u8]>, payload.clone())),
    );
    let total = GOOD + refused.len();
    let records = broker.read_all(&topic, total, Duration::from_secs(120));
    assert_eq!(records.len(), total, "messages in {topic}");
    let ends = auditflow_e2e::kafka::log_ends(&records, 2);
    // Where each refused payload landed.
    let placed: HashMap<&[u8], (i32, i64)> = records
        .iter()
        .map(|record| (&record.payload[..], (record.partition, record.offset)))
        .collect();

    let workspace = Workspace::new();
    let dead = workspace.path().join("dead").join("letters.log");
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            "data_dir: {data}\nmetrics: {{ address: 127.0.0.1:0 }}\n\
             sources:\n  in:\n    type: kafka\n    bootstrap_servers: {servers}\n    \
             topics: [{topic}]\n    group_id: refusals\n    commit_interval_ms: 200\n    \
             librdkafka_options:\n      session.timeout.ms: \"6000\"\n      \
             heartbeat.interval.ms: \"1000\"\n\
             sinks:\n  out: {{ type: stdout, inputs: [in] }}\n  \
             dead: {{ type: file, inputs: [in.dead_letter], path: {dead} }}\n",
            data = workspace.path().join("data").display(),
            servers = broker.bootstrap_servers,
            dead = dead.display(),
        ),
    );
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let out = auditflow.stdout_lines();
    let address = auditflow.metrics_address(Duration::from_secs(20));

    // Every good event on standard output, once.
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < GOOD {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = out.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "{} of {GOOD} events within 120 s; stderr:\n{}",
                seen.len(),
                auditflow.stderr()
            )
        });
        let i = line_index(&line);
        assert_eq!(line, audit_line(i), "event {i} bytes");
        assert!(seen.insert(i), "event {i} twice");
    }

    // Every refused message in the dead-letter file, with its bytes and its place.
    let letters = wait_lines(&dead, refused.len(), Duration::from_secs(60), &auditflow);
    assert_eq!(letters.len(), refused.len(), "one dead letter per message");
    let mut by_place: HashMap<(i64, i64), &Value> = HashMap::new();
    for letter in &letters {
        assert_eq!(letter["kind"], "DeadLetter");
        assert_eq!(letter["component_id"], "in");
        assert_eq!(letter["location"]["topic"], topic.as_str(), "{letter}");
        assert!(letter["error"].as_str().is_some_and(|e| !e.is_empty()));
        assert!(letter.get("truncated").is_none(), "{letter}");
        let place = (
            letter["location"]["partition"].as_i64().expect("partition"),
            letter["location"]["offset"].as_i64().expect("offset"),
        );
        assert!(
            by_place.insert(place, letter).is_none(),
            "two dead letters for {place:?}"
        );
    }
    for (payload, reason) in &refused {
        let (partition, offset) = placed[&payload[..]];
        let letter = by_place
            .get(&(i64::from(partition), offset))
            .unwrap_or_else(|| panic!("no dead letter for {topic}/{partition}@{offset}"));
        assert_eq!(letter["reason"], *reason, "{letter}");
        assert_eq!(
            &raw_bytes(letter),
            payload,
            "raw bytes at {partition}@{offset}"
        );
    }
    assert_eq!(
        letters
            .iter()
            .filter(|letter| letter.get("raw_encoding").is_some())
            .count(),
        1,
        "only the message that is not UTF-8 is base64"
    );
    let (_, text) = http_get(&address, "/metrics").expect("GET /metrics");
    assert_eq!(
        metric(
            &text,
            "auditflow_component_dead_letter_events_total",
            &[("component_id", "in")]
        ),
        Some(refused.len() as f64)
    );

    // The commits pass the refused messages, to the end of both partitions, while running.
    let deadline = Instant::now() + Duration::from_secs(60);
    while broker.committed("refusals", &topic) != ends {
        assert!(
            Instant::now() < deadline,
            "committed {:?}, log ends {ends:?}; stderr:\n{}",
            broker.committed("refusals", &topic),
            auditflow.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    stop(auditflow);
    assert_eq!(broker.committed("refusals", &topic), ends);
}

#[test]
fn a_message_the_broker_refuses_for_good_reaches_the_kafka_sinks_dead_letter_file() {
    const GOOD: usize = 500;
    const BIG_AT: usize = 200;
    let Some(broker) = Broker::start() else {
        return;
    };
    let topic = broker.create_topic("too-large", 1);
    let big = format!(
        r#"{{"auditID":"big","verb":"create","requestObject":{{"data":"{}"}}}}"#,
        "x".repeat(200_000)
    );
    let workspace = Workspace::new();
    let dead = workspace.path().join("dead").join("letters.log");
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            "data_dir: {data}\nmetrics: {{ address: 127.0.0.1:0 }}\n\
             sources:\n  in: {{ type: stdin }}\n\
             sinks:\n  out:\n    type: kafka\n    inputs: [in]\n    \
             bootstrap_servers: {servers}\n    topic: {topic}\n    \
             librdkafka_options:\n      message.max.bytes: \"100000\"\n  \
             dead: {{ type: file, inputs: [out.dead_letter], path: {dead} }}\n",
            data = workspace.path().join("data").display(),
            servers = broker.bootstrap_servers,
            dead = dead.display(),
        ),
    );
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let address = auditflow.metrics_address(Duration::from_secs(20));
    let mut stdin = auditflow.take_stdin();
    let mut input = String::new();
    for i in 0..GOOD {
        if i == BIG_AT {
            input.push_str(&big);
            input.push('\n');
        }
        input.push_str(&audit_line(i));
        input.push('\n');
    }
    let feeder = std::thread::spawn(move || {
        stdin
            .write_all(input.as_bytes())
            .expect("write to auditflow");
        stdin
    });
    // Input stays open until the metrics are read; closing it lets the process drain and exit.
    let stdin = feeder.join().expect("feed stdin");

    let letters = wait_lines(&dead, 1, Duration::from_secs(60), &auditflow);
    assert_eq!(letters.len(), 1, "one refused message: {letters:?}");
    let letter = &letters[0];
    assert_eq!(letter["kind"], "DeadLetter");
    assert_eq!(letter["component_id"], "out");
    assert_eq!(letter["reason"], "rejected");
    assert_eq!(
        letter["location"],
        serde_json::json!({ "destination": topic })
    );
    assert!(
        letter["error"]
            .as_str()
            .is_some_and(|e| e.contains("too large") || e.contains("MsgSizeTooLarge")),
        "{letter}"
    );
    assert_eq!(
        raw_bytes(letter),
        big.as_bytes(),
        "the event as it was sent"
    );
    assert!(letter.get("truncated").is_none());
    let (_, text) = http_get(&address, "/metrics").expect("GET /metrics");
    assert_eq!(
        metric(
            &text,
            "auditflow_component_discarded_events_total",
            &[("component_id", "out"), ("reason", "rejected")]
        ),
        Some(1.0)
    );

    drop(stdin);
    let status = auditflow.wait_timeout(Duration::from_secs(60));
    assert!(status.success(), "stderr:\n{}", auditflow.stderr());

    // Every other event is in the topic, once, with its bytes.
    let records = broker.read_all(&topic, GOOD, Duration::from_secs(60));
    assert_eq!(records.len(), GOOD, "messages in {topic}");
    let mut seen = HashSet::new();
    for record in &records {
        let payload = std::str::from_utf8(&record.payload).expect("UTF-8");
        let i = line_index(payload);
        assert_eq!(payload, audit_line(i), "event {i} bytes");
        assert!(seen.insert(i), "event {i} twice");
    }
    // Nothing more comes: the big event was not produced after all.
    let more = broker.read_all(&topic, GOOD + 1, Duration::from_secs(3));
    assert_eq!(more.len(), GOOD, "the refused event reached the topic");
}
