//! The `kafka` options docs/kafka.md promises, through the real binary against a
//! Kafka-protocol broker (Tansu; see `auditflow_e2e::kafka`): the sink's `key_field` and
//! every `compression`; a full producer queue as backpressure; the source's
//! `auto_offset_reset: latest` and `decoding` (`event_list`, `ndjson`) end to end.
//!
//! Joining a consumer group takes about 20 s against Tansu, so the source options share
//! one process (three sources, joined at once).

use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant};

use auditflow_e2e::audit_lines::{audit_id, audit_line};
use auditflow_e2e::kafka::{line_index, Broker};
use auditflow_e2e::{http_get, metric, Auditflow, Workspace};

/// stdin -> kafka sink with `options` (YAML lines indented by four), fed `lines`; waits
/// for a clean exit.
fn write_through_the_sink(broker: &Broker, topic: &str, options: &str, lines: &[String]) {
    let workspace = Workspace::new();
    let pipeline = workspace.write(
        "writer.yaml",
        &format!(
            "data_dir: {data}\nmetrics:\n  address: 127.0.0.1:0\n\
             sources:\n  in:\n    type: stdin\n\
             sinks:\n  out:\n    type: kafka\n    inputs: [in]\n    \
             bootstrap_servers: {servers}\n    topic: {topic}\n{options}",
            data = workspace.path().join("data").display(),
            servers = broker.bootstrap_servers,
        ),
    );
    let mut process = Auditflow::run(&workspace, &pipeline);
    let address = process.metrics_address(Duration::from_secs(20));
    let mut stdin = process.take_stdin();
    let feeder = {
        let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
        std::thread::spawn(move || {
            stdin
                .write_all(text.as_bytes())
                .expect("write to auditflow");
            stdin
        })
    };
    let stdin = feeder.join().expect("feed stdin");
    // Input still open, so the process is still there: every event gets a successful
    // delivery report, and none is refused.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, text) = http_get(&address, "/metrics").expect("GET /metrics");
        // The series appears with the sink's first delivery report: it must exist by the
        // deadline, and then count every event.
        let sent = metric(
            &text,
            "auditflow_component_sent_events_total",
            &[("component_id", "out")],
        );
        assert!(
            metric(
                &text,
                "auditflow_component_errors_total",
                &[("component_id", "out")]
            )
            .is_none_or(|errors| errors == 0.0),
            "{text}"
        );
        if sent == Some(lines.len() as f64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sink's sent_events_total is {sent:?}, not {}: {text}",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stdin);
    let status = process.wait_timeout(Duration::from_secs(120));
    assert_eq!(status.code(), Some(0), "writer: {}", process.stderr());
}

/// For every compression: the payloads arrive byte for byte, keyed by `key_field` (a
/// string's characters; no key for an event without the field).
#[test]
fn key_field_and_every_compression_round_trip() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let keyless = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"None","auditID":"00000000-0000-4000-8000-999999999999","stage":"ResponseComplete"}"#;
    for (round, compression) in ["none", "gzip", "snappy", "lz4", "zstd"]
        .into_iter()
        .enumerate()
    {
        let topic = broker.create_topic(compression, 1);
        let mut lines: Vec<String> = (round * 20..round * 20 + 20).map(audit_line).collect();
        lines.push(keyless.to_owned());
        write_through_the_sink(
            &broker,
            &topic,
            &format!("    key_field: verb\n    compression: {compression}\n"),
            &lines,
        );
        let records = broker.read_all(&topic, lines.len(), Duration::from_secs(60));
        let payloads: Vec<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
        let expected: Vec<&[u8]> = lines.iter().map(|line| line.as_bytes()).collect();
        assert_eq!(payloads, expected, "{compression}: payloads");
        for (record, line) in records.iter().zip(&lines) {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            let key = event["verb"].as_str().map(str::as_bytes);
            assert_eq!(
                record.key.as_deref(),
                key,
                "{compression}: the key of {line}"
            );
        }
        assert_eq!(records.last().unwrap().key, None, "{compression}");
    }
}

/// A producer queue of 10 messages and a linger that keeps it full: 2,000 events are all
/// delivered, in order, none refused: a full queue is waited for, not an error.
#[test]
fn a_full_producer_queue_is_backpressure_not_loss() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let topic = broker.create_topic("queue-full", 1);
    let lines: Vec<String> = (0..2_000).map(audit_line).collect();
    write_through_the_sink(
        &broker,
        &topic,
        "    librdkafka_options:\n      queue.buffering.max.messages: \"10\"\n      linger.ms: \"20\"\n",
        &lines,
    );
    let records = broker.read_all(&topic, lines.len(), Duration::from_secs(120));
    assert_eq!(records.len(), lines.len());
    for (record, i) in records.iter().zip(0..) {
        let payload = std::str::from_utf8(&record.payload).unwrap();
        assert_eq!(line_index(payload), i, "order within the partition");
        assert_eq!(record.key.as_deref(), Some(audit_id(i).as_bytes()));
    }
}

/// Three sources in one process: `latest` skips what was in its topic before it joined
/// and reads what comes after; `event_list` splits an `EventList` message into its items;
/// `ndjson` splits a message into its lines. Each event keeps its bytes.
#[test]
fn auto_offset_reset_latest_and_decoding_event_list_and_ndjson() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let late = broker.create_topic("latest", 1);
    let lists = broker.create_topic("event-list", 1);
    let ndjson = broker.create_topic("ndjson", 1);
    // Already in the topic when the `latest` source joins: never read. Then one message
    // alone in a batch of its own: Tansu answers `ListOffsets` for the end of a partition
    // with the base offset of its last batch, not the high watermark (librdkafka's debug
    // log shows `Offset END request ... returned offset 0` for a partition of two), so a
    // source starting at "the end" reads that last batch again. A real broker would not;
    // the fence keeps the check on 0..100 honest either way.
    broker.produce(&late, (0..100).map(|i| (Some(audit_id(i)), audit_line(i))));
    broker.produce(&late, [(Some(audit_id(100)), audit_line(100))]);

    let workspace = Workspace::new();
    let source = |id: &str, topic: &str, extra: &str| {
        format!(
            "  {id}:\n    type: kafka\n    bootstrap_servers: {}\n    topics: [{topic}]\n    \
             group_id: {id}\n    commit_interval_ms: 500\n{extra}",
            broker.bootstrap_servers
        )
    };
    let pipeline = workspace.write(
        "reader.yaml",
        &format!(
            "data_dir: {}\nsources:\n{}{}{}sinks:\n  out:\n    type: stdout\n    inputs: [late, lists, lines]\n",
            workspace.path().join("data").display(),
            source("late", &late, "    auto_offset_reset: latest\n"),
            source("lists", &lists, "    decoding: event_list\n"),
            source("lines", &ndjson, "    decoding: ndjson\n"),
        ),
    );
    let mut process = Auditflow::run(&workspace, &pipeline);
    let output = process.stdout_lines();
    let deadline = Instant::now() + Duration::from_secs(120);
    while process
        .stderr()
        .matches("kafka partitions assigned")
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "{}", process.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }

    // Two EventList messages of 5 items, and two NDJSON messages of 5 lines.
    let list = |range: std::ops::Range<usize>| {
        let items: Vec<String> = range.map(audit_line).collect();
        format!(
            r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{{}},"items":[{}]}}"#,
            items.join(",")
        )
    };
    broker.produce(
        &lists,
        [(None::<&str>, list(1000..1005)), (None, list(1005..1010))],
    );
    let lines_of =
        |range: std::ops::Range<usize>| range.map(audit_line).collect::<Vec<_>>().join("\n") + "\n";
    broker.produce(
        &ndjson,
        [
            (None::<&str>, lines_of(2000..2005)),
            (None, lines_of(2005..2010)),
        ],
    );
    // `latest` starts at the end it finds once assigned, which may be a moment after the
    // assignment is logged: produce until something arrives from it, then a last 10.
    let mut seen: Vec<String> = Vec::new();
    let mut next = 101;
    let from_late = |line: &String| line_index(line) < 1000;
    while !seen.iter().any(from_late) {
        assert!(
            next < 900,
            "the `latest` source read nothing; {}",
            process.stderr()
        );
        broker.produce(
            &late,
            (next..next + 10).map(|i| (Some(audit_id(i)), audit_line(i))),
        );
        next += 10;
        if let Ok(line) = output.recv_timeout(Duration::from_secs(2)) {
            seen.push(line);
        }
    }
    broker.produce(
        &late,
        (900..910).map(|i| (Some(audit_id(i)), audit_line(i))),
    );
    let wanted: HashSet<usize> = (1000..1010).chain(2000..2010).chain(900..910).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !wanted
        .iter()
        .all(|i| seen.iter().any(|line| line_index(line) == *i))
    {
        assert!(Instant::now() < deadline, "{}", process.stderr());
        if let Ok(line) = output.recv_timeout(Duration::from_millis(200)) {
            seen.push(line);
        }
    }
    process.signal(libc::SIGTERM);
    let status = process.wait_timeout(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", process.stderr());
    seen.extend(output.try_iter());

    for line in &seen {
        let i = line_index(line);
        assert_eq!(line, &audit_line(i), "event {i} changed");
        assert!(
            i >= 100,
            "`latest` read event {i}, produced before it joined"
        );
    }
    let indexes: Vec<usize> = seen.iter().map(|line| line_index(line)).collect();
    let of = |range: std::ops::Range<usize>| -> Vec<usize> {
        indexes
            .iter()
            .copied()
            .filter(|i| range.contains(i))
            .collect()
    };
    assert_eq!(
        of(1000..1010),
        (1000..1010).collect::<Vec<_>>(),
        "EventList items"
    );
    assert_eq!(
        of(2000..2010),
        (2000..2010).collect::<Vec<_>>(),
        "NDJSON lines"
    );
    let late_read = of(100..1000);
    assert!(!late_read.is_empty());
    let first = late_read[0];
    assert_eq!(
        late_read,
        (first..next).chain(900..910).collect::<Vec<_>>(),
        "`latest` reads everything after its start, in order"
    );
}

/// A second member joins while the first reads (events keep coming until the rebalance
/// is done): the first gives partitions up only after committing what it delivered, so
/// nothing is lost and nothing is read twice (beyond batches still unacknowledged after
/// the 10 s revoke wait, which the log names).
#[test]
fn a_member_joining_rebalances_without_loss_or_duplicates() {
    const MAX_EVENTS: usize = 400_000;
    let Some(broker) = Broker::start() else {
        return;
    };
    let topic = broker.create_topic("rebalance", 4);
    let workspace = Workspace::new();
    let pipeline = |name: &str| {
        workspace.write(
            name,
            &format!(
                "data_dir: {}\nsources:\n  in:\n    type: kafka\n    bootstrap_servers: {}\n    \
                 topics: [{topic}]\n    group_id: rebalance\n    commit_interval_ms: 500\n    \
                 librdkafka_options:\n      session.timeout.ms: \"6000\"\n      heartbeat.interval.ms: \"1000\"\n\
                 sinks:\n  out:\n    type: stdout\n    inputs: [in]\n",
                workspace.path().join(name).with_extension("data").display(),
                broker.bootstrap_servers,
            ),
        )
    };
    let (first_file, second_file) = (pipeline("a.yaml"), pipeline("b.yaml"));
    let mut first = Auditflow::run(&workspace, &first_file);
    let first_lines = first.stdout_lines();
    let assigned = |process: &Auditflow, times: usize| {
        process
            .stderr()
            .matches("kafka partitions assigned")
            .count()
            >= times
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !assigned(&first, 1) {
        assert!(Instant::now() < deadline, "{}", first.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }

    // Produces 1,000 at a time until told to stop; returns how many.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut producer = Some({
        let servers = broker.bootstrap_servers.clone();
        let topic = topic.clone();
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let broker = Broker::external(&servers);
            let mut produced = 0;
            while produced < MAX_EVENTS && !stop.load(std::sync::atomic::Ordering::SeqCst) {
                broker.produce(
                    &topic,
                    (produced..produced + 1_000).map(|i| (Some(audit_id(i)), audit_line(i))),
                );
                produced += 1_000;
            }
            produced
        })
    });
    let mut counts = vec![0u8; MAX_EVENTS];
    let mut distinct = 0;
    let mut second: Option<(Auditflow, std::sync::mpsc::Receiver<String>)> = None;
    let mut total = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while total != Some(distinct) {
        assert!(
            Instant::now() < deadline,
            "{distinct} of {total:?} arrived; first:\n{}",
            first.stderr()
        );
        let mut got = false;
        let mut count = |line: String| {
            let i = line_index(&line);
            distinct += usize::from(counts[i] == 0);
            counts[i] = counts[i].saturating_add(1);
            got = true;
        };
        first_lines.try_iter().for_each(&mut count);
        if let Some((_, lines)) = &second {
            lines.try_iter().for_each(&mut count);
        }
        match &second {
            None if distinct >= 5_000 => {
                let mut process = Auditflow::run(&workspace, &second_file);
                let lines = process.stdout_lines();
                second = Some((process, lines));
            }
            Some((process, _))
                if total.is_none()
                    && assigned(process, 1)
                    && first.stderr().contains("kafka partitions revoked") =>
            {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
                total = producer
                    .take()
                    .map(|thread| thread.join().expect("produce"));
            }
            _ => {}
        }
        if !got {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let (mut second, _second_lines) = second.expect("the second member started");
    let duplicates = counts.iter().filter(|count| **count > 1).count();
    assert!(
        counts.iter().all(|count| *count <= 2),
        "an event came 3 times"
    );
    let late = first
        .stderr()
        .contains("partitions revoked with batches still unacknowledged");
    eprintln!("rebalance: {distinct} events, {duplicates} duplicates, late revoke: {late}");
    if late {
        assert!(duplicates <= 4 * 1_000, "{duplicates} duplicates");
    } else {
        assert_eq!(duplicates, 0, "duplicates after a graceful rebalance");
    }
    for process in [&mut first, &mut second] {
        process.signal(libc::SIGTERM);
        let status = process.wait_timeout(Duration::from_secs(60));
        assert_eq!(status.code(), Some(0), "{}", process.stderr());
    }
}
