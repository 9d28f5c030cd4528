//! `kafka` sink and source through the real binary against a real Kafka-protocol broker
//! (Tansu, one per test; see `auditflow_e2e::kafka`): completeness and keys at volume,
//! scale-out across two processes with one SIGKILLed, a stalled sink that pauses the
//! partitions without leaving the group, and a restart that resumes at the committed
//! offsets.
//!
//! Joining a consumer group takes about 20 s against Tansu, so each test joins as few
//! times as it can.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use auditflow_e2e::audit_lines::{audit_id, audit_line};
use auditflow_e2e::kafka::{line_index, log_ends, Broker};
use auditflow_e2e::{http_get, metric, wait_ready, Auditflow, Workspace};

const LAG: &str = "auditflow_kafka_consumer_lag";
const DISCARDED: &str = "auditflow_component_discarded_events_total";
const SENT: &str = "auditflow_component_sent_events_total";

/// Group timings short enough for a SIGKILLed member to be noticed within seconds, and a
/// poll interval a stalled member would exceed if it stopped polling.
const GROUP_OPTIONS: &str = "      session.timeout.ms: \"6000\"\n      \
                             heartbeat.interval.ms: \"1000\"\n      \
                             max.poll.interval.ms: \"10000\"\n";

/// `kafka` source → `stdout`, with the metrics endpoint on any free port (read from the
/// log with [`Auditflow::metrics_address`]).
fn reader_pipeline(
    workspace: &Workspace,
    name: &str,
    broker: &Broker,
    topic: &str,
    group: &str,
) -> PathBuf {
    workspace.write(
        name,
        &format!(
            "data_dir: {data}\n\
             metrics:\n  address: 127.0.0.1:0\n\
             sources:\n  in:\n    type: kafka\n    bootstrap_servers: {servers}\n    \
             topics: [{topic}]\n    group_id: {group}\n    commit_interval_ms: 500\n    \
             librdkafka_options:\n{GROUP_OPTIONS}\
             sinks:\n  out:\n    type: stdout\n    inputs: [in]\n",
            data = workspace.path().join("data").display(),
            servers = broker.bootstrap_servers,
        ),
    )
}

fn scrape(address: &str) -> String {
    let (status, body) = http_get(address, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    body
}

/// Receives `count` lines, failing with the process's stderr after `timeout`.
fn take_lines(
    lines: &Receiver<String>,
    count: usize,
    timeout: Duration,
    process: &Auditflow,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut taken = Vec::with_capacity(count);
    while taken.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => taken.push(line),
            Err(_) => panic!(
                "only {} of {count} lines within {timeout:?}; stderr:\n{}",
                taken.len(),
                process.stderr()
            ),
        }
    }
    taken
}

/// Waits until the process logged `needle` `times` times.
fn wait_for_log(process: &Auditflow, needle: &str, times: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while process.stderr().matches(needle).count() < times {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} (x{times}) within {timeout:?}; stderr:\n{}",
            process.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn produce_lines(broker: &Broker, topic: &str, range: std::ops::Range<usize>) {
    broker.produce(topic, range.map(|i| (Some(audit_id(i)), audit_line(i))));
}

#[test]
fn stdin_to_kafka_to_stdout_delivers_every_event_keyed_by_audit_id() {
    const EVENTS: usize = 100_000;
    let Some(broker) = Broker::start() else {
        return;
    };
    let topic = broker.create_topic("audit", 3);
    let workspace = Workspace::new();

    // stdin → kafka sink.
    let writer = workspace.write(
        "writer.yaml",
        &format!(
            "data_dir: {data}\n\
             sources:\n  in:\n    type: stdin\n\
             sinks:\n  out:\n    type: kafka\n    inputs: [in]\n    \
             bootstrap_servers: {servers}\n    topic: {topic}\n    \
             headers:\n      origin: e2e\n",
            data = workspace.path().join("data").display(),
            servers = broker.bootstrap_servers,
        ),
    );
    let mut process = Auditflow::run(&workspace, &writer);
    let mut stdin = process.take_stdin();
    let feeder = std::thread::spawn(move || {
        let mut buffer = std::io::BufWriter::with_capacity(1 << 20, &mut stdin);
        for i in 0..EVENTS {
            writeln!(buffer, "{}", audit_line(i)).expect("write to auditflow");
        }
        buffer.flush().expect("flush to auditflow");
    });
    feeder.join().expect("feed stdin");
    let started = Instant::now();
    let status = process.wait_timeout(Duration::from_secs(180));
    assert!(status.success(), "writer failed: {}", process.stderr());
    eprintln!(
        "writer drained {EVENTS} events into kafka ({:?} after end of input)",
        started.elapsed()
    );

    // What the sink wrote: every event once, the original bytes, keyed by auditID.
    let records = broker.read_all(&topic, EVENTS, Duration::from_secs(120));
    assert_eq!(records.len(), EVENTS, "messages in the topic");
    let mut seen = vec![false; EVENTS];
    for record in &records {
        let payload = std::str::from_utf8(&record.payload).expect("UTF-8 payload");
        let i = line_index(payload);
        assert!(!seen[i], "event {i} produced twice");
        seen[i] = true;
        assert_eq!(payload, audit_line(i), "payload bytes of event {i}");
        assert_eq!(record.key.as_deref(), Some(audit_id(i).as_bytes()), "key");
        assert_eq!(record.headers, [("origin".to_owned(), b"e2e".to_vec())]);
    }
    let partitions: HashSet<i32> = records.iter().map(|r| r.partition).collect();
    assert_eq!(partitions.len(), 3, "keys spread over every partition");

    // kafka source → stdout: every event exactly once, bytes unchanged.
    let reader = reader_pipeline(&workspace, "reader.yaml", &broker, &topic, "readers");
    let mut process = Auditflow::run(&workspace, &reader);
    let lines = process.stdout_lines();
    let started = Instant::now();
    let received = take_lines(&lines, EVENTS, Duration::from_secs(240), &process);
    eprintln!(
        "reader delivered {EVENTS} events in {:?} (group join included)",
        started.elapsed()
    );
    let mut seen = vec![false; EVENTS];
    for line in &received {
        let i = line_index(line);
        assert!(!seen[i], "event {i} delivered twice");
        seen[i] = true;
        assert_eq!(line, &audit_line(i));
    }

    // A clean stop commits everything that was delivered.
    process.signal(libc::SIGTERM);
    let status = process.wait_timeout(Duration::from_secs(60));
    assert!(status.success(), "reader failed: {}", process.stderr());
    assert_eq!(
        broker.committed("readers", &topic),
        log_ends(&records, 3),
        "committed offsets after a clean stop"
    );
}

#[test]
fn restart_after_a_clean_stop_resumes_at_the_committed_offsets() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let topic = broker.create_topic("audit", 2);
    let workspace = Workspace::new();
    // Malformed messages in the middle: counted, skipped, and committed past.
    produce_lines(&broker, &topic, 0..2_000);
    broker.produce(
        &topic,
        [
            (None::<&str>, "not json"),
            (None, "[1,2,3]"),
            (None, "{\"half\":"),
        ],
    );
    produce_lines(&broker, &topic, 2_000..5_000);

    let pipeline = reader_pipeline(&workspace, "reader.yaml", &broker, &topic, "g");
    let mut process = Auditflow::run(&workspace, &pipeline);
    let address = process.metrics_address(Duration::from_secs(30));
    let lines = process.stdout_lines();
    let first: HashSet<usize> = take_lines(&lines, 5_000, Duration::from_secs(120), &process)
        .iter()
        .map(|line| line_index(line))
        .collect();
    assert_eq!(first, (0..5_000).collect(), "first run");
    let text = scrape(&address);
    assert_eq!(
        metric(&text, DISCARDED, &[("reason", "malformed")]),
        Some(3.0)
    );
    process.signal(libc::SIGTERM);
    assert!(process.wait_timeout(Duration::from_secs(60)).success());
    assert!(
        process
            .stderr()
            .contains("skipping malformed kafka message content"),
        "malformed messages are logged"
    );
    let end = broker.log_ends(&topic, 5_003);
    assert_eq!(
        broker.committed("g", &topic),
        end,
        "committed after a clean stop"
    );

    produce_lines(&broker, &topic, 5_000..10_000);
    let mut process = Auditflow::run(&workspace, &pipeline);
    let lines = process.stdout_lines();
    let second: Vec<usize> = take_lines(&lines, 5_000, Duration::from_secs(120), &process)
        .iter()
        .map(|line| line_index(line))
        .collect();
    let unique: HashSet<usize> = second.iter().copied().collect();
    assert_eq!(
        unique,
        (5_000..10_000).collect(),
        "second run reads only the new events"
    );
    match lines.recv_timeout(Duration::from_secs(3)) {
        Err(RecvTimeoutError::Timeout) => {}
        Ok(line) => panic!("a duplicate after restart: event {}", line_index(&line)),
        Err(RecvTimeoutError::Disconnected) => panic!("auditflow exited: {}", process.stderr()),
    }
    process.signal(libc::SIGTERM);
    assert!(process.wait_timeout(Duration::from_secs(60)).success());
}

#[test]
fn a_stalled_sink_pauses_the_partitions_and_keeps_the_group_membership() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let topic = broker.create_topic("audit", 3);
    let workspace = Workspace::new();
    produce_lines(&broker, &topic, 0..20_000);

    let pipeline = reader_pipeline(&workspace, "reader.yaml", &broker, &topic, "g");
    // Nobody reads standard output: the stdout sink blocks, the pipeline fills up.
    let mut process = Auditflow::run(&workspace, &pipeline);
    let address = process.metrics_address(Duration::from_secs(30));
    wait_ready(&address, Duration::from_secs(30));
    wait_for_log(
        &process,
        "kafka partitions assigned",
        1,
        Duration::from_secs(90),
    );
    let lag_of = |address: &str| metric(&scrape(address), LAG, &[("component_id", "in")]);
    let every_partition_reports = |address: &str| {
        let text = scrape(address);
        ["0", "1", "2"]
            .iter()
            .all(|p| metric(&text, LAG, &[("component_id", "in"), ("partition", p)]).is_some())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let stalled_lag = loop {
        if every_partition_reports(&address) {
            if let Some(lag) = lag_of(&address).filter(|lag| *lag > 0.0) {
                break lag;
            }
        }
        assert!(Instant::now() < deadline, "no consumer lag reported");
        std::thread::sleep(Duration::from_millis(200));
    };
    let stalled_at = Instant::now();
    let sent_while_stalled = metric(&scrape(&address), SENT, &[("component_id", "in")])
        .expect("the source's sent_events_total series");
    assert!(
        sent_while_stalled < 20_000.0,
        "the source kept sending: {sent_while_stalled}"
    );

    // More events while stalled: the lag grows by them (it is refreshed every 2 s, so
    // wait for it). Tansu answers the end of a partition with the base offset of its last
    // batch rather than the high watermark (see kafka_options.rs), so the lag it allows
    // us to see leaves out the last batch of each partition: expect most of the 10,000,
    // not all. And the member stays stalled for longer than max.poll.interval.ms (10 s):
    // one that stopped polling would be evicted; a paused one stays.
    produce_lines(&broker, &topic, 20_000..30_000);
    let deadline = Instant::now() + Duration::from_secs(60);
    let grown_lag = loop {
        let lag = lag_of(&address).expect("lag while stalled");
        if lag >= stalled_lag + 5_000.0 {
            break lag;
        }
        assert!(
            Instant::now() < deadline,
            "lag did not grow while stalled: {stalled_lag} then {lag}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    while stalled_at.elapsed() < Duration::from_secs(12) {
        assert!(
            !process.stderr().contains("partitions revoked"),
            "left the group while stalled: {}",
            process.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let stderr = process.stderr();
    assert_eq!(
        stderr.matches("kafka partitions assigned").count(),
        1,
        "{stderr}"
    );
    assert!(
        !stderr.contains("partitions revoked"),
        "left the group: {stderr}"
    );
    assert!(
        !stderr.contains("max.poll.interval.ms"),
        "poll interval exceeded: {stderr}"
    );
    let sent = metric(&scrape(&address), SENT, &[("component_id", "in")])
        .expect("the source's sent_events_total series");
    eprintln!(
        "stalled: lag {stalled_lag} -> {grown_lag}, source sent {sent_while_stalled} -> {sent} of 30000"
    );

    // Reading standard output drains everything, and the lag with it.
    let lines = process.stdout_lines();
    let all: HashSet<usize> = take_lines(&lines, 30_000, Duration::from_secs(120), &process)
        .iter()
        .map(|line| line_index(line))
        .collect();
    assert_eq!(all.len(), 30_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    while lag_of(&address) != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "lag did not drain: {:?}",
            lag_of(&address)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    process.signal(libc::SIGTERM);
    assert!(process.wait_timeout(Duration::from_secs(60)).success());
}

#[test]
fn scale_out_survives_a_sigkilled_member_without_losing_events() {
    const EVENTS: usize = 200_000;
    let Some(broker) = Broker::start() else {
        return;
    };
    let topic = broker.create_topic("audit", 6);
    let workspace = Workspace::new();
    let first = reader_pipeline(&workspace, "a.yaml", &broker, &topic, "scale");
    let second = reader_pipeline(&workspace, "b.yaml", &broker, &topic, "scale");
    let mut victim = Auditflow::run(&workspace, &first);
    let mut survivor = Auditflow::run(&workspace, &second);
    let victim_lines = victim.stdout_lines();
    let survivor_lines = survivor.stdout_lines();
    wait_for_log(
        &victim,
        "kafka partitions assigned",
        1,
        Duration::from_secs(90),
    );
    wait_for_log(
        &survivor,
        "kafka partitions assigned",
        1,
        Duration::from_secs(90),
    );

    let producer = {
        let servers = broker.bootstrap_servers.clone();
        let topic = topic.clone();
        std::thread::spawn(move || {
            let broker = Broker::external(&servers);
            for chunk in (0..EVENTS).step_by(10_000) {
                produce_lines(&broker, &topic, chunk..chunk + 10_000);
            }
        })
    };

    let mut counts = vec![0u8; EVENTS];
    let mut from_victim = vec![false; EVENTS];
    let (mut victim_total, mut survivor_total, mut distinct) = (0usize, 0usize, 0usize);
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(300);
    while distinct < EVENTS {
        assert!(
            Instant::now() < deadline,
            "{distinct} of {EVENTS} events arrived; survivor stderr:\n{}",
            survivor.stderr()
        );
        let mut got = false;
        while let Ok(line) = victim_lines.try_recv() {
            let i = line_index(&line);
            from_victim[i] = true;
            distinct += usize::from(counts[i] == 0);
            counts[i] = counts[i].saturating_add(1);
            victim_total += 1;
            got = true;
        }
        while let Ok(line) = survivor_lines.try_recv() {
            let i = line_index(&line);
            distinct += usize::from(counts[i] == 0);
            counts[i] = counts[i].saturating_add(1);
            survivor_total += 1;
            got = true;
        }
        if !killed && victim_total >= 20_000 && distinct >= EVENTS / 4 {
            victim.signal(libc::SIGKILL);
            killed = true;
            eprintln!("SIGKILLed one member after it delivered {victim_total} events ({distinct} distinct so far)");
        }
        if !got {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    producer.join().expect("produce");
    assert!(killed, "the victim never got its share of the partitions");
    let duplicates = victim_total + survivor_total - EVENTS;
    eprintln!(
        "scale-out: victim {victim_total}, survivor {survivor_total}, duplicates {duplicates}"
    );
    // Only what the killed member had delivered but not yet committed comes twice.
    for (i, count) in counts.iter().enumerate() {
        if *count > 1 {
            assert!(
                from_victim[i],
                "event {i} duplicated without the victim having it"
            );
            assert_eq!(*count, 2, "event {i} delivered {count} times");
        }
    }
    assert!(
        duplicates < victim_total,
        "more duplicates ({duplicates}) than the victim delivered ({victim_total})"
    );
    assert!(
        survivor
            .stderr()
            .matches("kafka partitions assigned")
            .count()
            >= 2,
        "the survivor never took over"
    );
    survivor.signal(libc::SIGTERM);
    assert!(survivor.wait_timeout(Duration::from_secs(60)).success());
}

#[test]
fn the_sink_passes_the_compliance_check_and_rejects_what_kafka_refuses() {
    use auditflow_core::{BatchStatus, BuildContext, SinkConfig};
    let Some(broker) = Broker::start() else {
        return;
    };
    let topic = broker.create_topic("compliance", 1);
    let config: auditflow_kafka::KafkaSinkConfig = serde_json::from_value(serde_json::json!({
        "bootstrap_servers": broker.bootstrap_servers,
        "topic": topic,
        // Small enough for librdkafka to refuse the big event below for good.
        "librdkafka_options": { "message.max.bytes": "100000" },
    }))
    .expect("a kafka sink config");
    let workspace = Workspace::new();
    let sink = config
        .build(BuildContext::unobserved(
            "out",
            workspace.path().join("out"),
        ))
        .expect("build the kafka sink");
    let events = auditflow_testkit::events::audit_log_events();
    let big = auditflow_testkit::event(&format!(
        r#"{{"auditID":"big","requestObject":"{}"}}"#,
        "x".repeat(200_000)
    ));
    let batches = vec![events[..100].to_vec(), vec![big], events[100..].to_vec()];
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let statuses = runtime.block_on(auditflow_testkit::compliance::check_sink(
        sink,
        batches,
        Duration::from_secs(60),
    ));
    assert_eq!(
        statuses,
        [
            BatchStatus::Delivered,
            BatchStatus::Rejected,
            BatchStatus::Delivered
        ]
    );
    let records = broker.read_all(&topic, events.len(), Duration::from_secs(60));
    assert_eq!(records.len(), events.len());
    for (record, event) in records.iter().zip(&events) {
        assert_eq!(
            &record.payload[..],
            &event.raw()[..],
            "bytes as they arrived, in order"
        );
    }
}
