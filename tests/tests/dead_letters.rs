//! Dead letters through the real binary: what a source refuses, and what a destination
//! refuses for good, reaches a `file` sink reading `<id>.dead_letter`, with its raw bytes
//! intact and where it came from; where nothing reads the output, nothing changes.

use std::fs;
use std::time::Duration;

use auditflow_e2e::dead_letters::{raw_bytes, wait_lines};
use auditflow_e2e::tls::{Pki, Reply, ServerOptions, TestServer};
use auditflow_e2e::webhook_client::WebhookClient;
use auditflow_e2e::{http_get, metric, wait_ready, Auditflow, Workspace};
use serde_json::Value;

fn stop(mut auditflow: Auditflow) -> String {
    auditflow.signal(libc::SIGTERM);
    let status = auditflow.wait_timeout(Duration::from_secs(30));
    let stderr = auditflow.stderr();
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    stderr
}

#[test]
fn every_record_a_file_source_refuses_reaches_the_dead_letter_file_with_its_bytes() {
    let workspace = Workspace::new();
    let deep = format!(
        r#"{{"auditID":"deep","requestObject":{}1{}}}"#,
        "[".repeat(10_001),
        "]".repeat(10_001)
    );
    let long = format!(r#"{{"auditID":"long","x":"{}"}}"#, "y".repeat(40_000));
    // Each record as written, and what is expected of it: `None` for an event.
    let records: Vec<(Vec<u8>, Option<&str>)> = vec![
        (br#"{"auditID":"a","verb":"get"}"#.to_vec(), None),
        (br#"{"auditID":"torn","verb":"#.to_vec(), Some("malformed")),
        (b"42".to_vec(), Some("malformed")),
        (deep.into_bytes(), Some("too_deep")),
        (long.into_bytes(), Some("oversized")),
        (
            b"\xff\xfe{\"auditID\":\"latin1-\xe9\"}".to_vec(),
            Some("malformed"),
        ),
        (br#"{"auditID":"b","verb":"list"}"#.to_vec(), None),
    ];
    let mut log = Vec::new();
    let mut offsets = Vec::new();
    for (record, _) in &records {
        offsets.push(log.len() as u64);
        log.extend_from_slice(record);
        log.push(b'\n');
    }
    let logs = workspace.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    let audit_log = logs.join("audit.log");
    fs::write(&audit_log, &log).unwrap();
    let dead = workspace.path().join("dead").join("letters.log");
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            "data_dir: {data}\nmetrics: {{ address: 127.0.0.1:0 }}\n\
             sources:\n  tail:\n    type: file\n    include: [{logs}/*.log]\n    max_line_bytes: 30000\n\
             sinks:\n  out: {{ type: stdout, inputs: [tail] }}\n  \
             dead: {{ type: file, inputs: [tail.dead_letter], path: {dead} }}\n",
            data = workspace.path().join("data").display(),
            logs = logs.display(),
            dead = dead.display(),
        ),
    );
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let out = auditflow.stdout_lines();
    let address = auditflow.metrics_address(Duration::from_secs(20));
    let refused: Vec<usize> = (0..records.len())
        .filter(|&i| records[i].1.is_some())
        .collect();
    let letters = wait_lines(&dead, refused.len(), Duration::from_secs(30), &auditflow);
    assert_eq!(
        letters.len(),
        refused.len(),
        "one dead letter per refused record"
    );
    for (letter, &index) in letters.iter().zip(&refused) {
        let (record, reason) = &records[index];
        assert_eq!(letter["kind"], "DeadLetter");
        assert_eq!(letter["component_id"], "tail");
        assert_eq!(letter["reason"], reason.unwrap(), "{letter}");
        assert_eq!(
            letter["location"],
            serde_json::json!({
                "file": audit_log.display().to_string(),
                "line": index + 1,
                "offset": offsets[index],
            })
        );
        assert!(letter["error"].as_str().is_some_and(|e| !e.is_empty()));
        assert!(letter["received_at"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .is_ok());
        if *reason == Some("oversized") {
            // Skipped without being held: nothing of it to keep.
            assert_eq!(letter["raw"], "");
            assert_eq!(letter["truncated"], true);
        } else {
            assert_eq!(&raw_bytes(letter), record, "raw bytes of record {index}");
            assert!(letter.get("truncated").is_none());
        }
    }
    assert_eq!(letters[4]["raw_encoding"], "base64", "not UTF-8");
    let events: Vec<String> = (0..2)
        .map(|_| out.recv_timeout(Duration::from_secs(30)).expect("an event"))
        .collect();
    assert_eq!(
        events,
        [
            r#"{"auditID":"a","verb":"get"}"#,
            r#"{"auditID":"b","verb":"list"}"#
        ]
    );
    let text = http_get(&address, "/metrics").unwrap().1;
    let tail = [("component_id", "tail")];
    assert_eq!(
        metric(&text, "auditflow_component_dead_letter_events_total", &tail),
        Some(5.0)
    );
    for (reason, count) in [("malformed", 3.0), ("too_deep", 1.0), ("oversized", 1.0)] {
        assert_eq!(
            metric(
                &text,
                "auditflow_component_discarded_events_total",
                &[("component_id", "tail"), ("reason", reason)]
            ),
            Some(count),
            "{reason}"
        );
    }
    stop(auditflow);
}

#[test]
fn max_dead_letter_bytes_cuts_raw_and_says_so() {
    let workspace = Workspace::new();
    let dead = workspace.path().join("dead.log");
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            "data_dir: {data}\nsources:\n  in: {{ type: stdin, max_dead_letter_bytes: 10 }}\n\
             sinks:\n  out: {{ type: stdout, inputs: [in] }}\n  \
             dead: {{ type: file, inputs: [in.dead_letter], path: {dead} }}\n",
            data = workspace.path().join("data").display(),
            dead = dead.display(),
        ),
    );
    let output = auditflow_e2e::run_to_end(
        workspace.path(),
        &["run", pipeline.to_str().unwrap()],
        &[],
        b"{\"auditID\":\"x\"}\nnot json at all, and long\n",
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "{\"auditID\":\"x\"}\n"
    );
    let text = fs::read_to_string(&dead).unwrap();
    let letters: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 1, "{text}");
    assert_eq!(letters[0]["raw"], "not json a");
    assert_eq!(letters[0]["truncated"], true);
    assert_eq!(
        letters[0]["location"],
        serde_json::json!({"file": "-", "line": 2, "offset": 16})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_items_that_are_not_events_and_refused_bodies_become_dead_letters() {
    let workspace = Workspace::new();
    let dead = workspace.path().join("dead.log");
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            "data_dir: {data}\nmetrics: {{ address: 127.0.0.1:0 }}\nsources:\n  hook:\n    type: webhook\n    \
             address: 127.0.0.1:0\n    path: /audit\n    allow_plaintext: true\n\
             sinks:\n  out: {{ type: stdout, inputs: [hook] }}\n  \
             dead: {{ type: file, inputs: [hook.dead_letter], path: {dead} }}\n",
            data = workspace.path().join("data").display(),
            dead = dead.display(),
        ),
    );
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let out = auditflow.stdout_lines();
    let metrics = auditflow.metrics_address(Duration::from_secs(20));
    wait_ready(&metrics, Duration::from_secs(20));
    let address = auditflow.webhook_address("hook", Duration::from_secs(20));
    let client = WebhookClient::plain(address);
    let mut connection = client.connect().await.expect("connect");
    let list = r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"auditID":"a"}, 7 ,{"auditID":"b"},"text"]}"#;
    let answer = connection
        .post(
            "/audit",
            &[("content-type", "application/json")],
            list.into(),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body = "{\"kind\":\"EventList\",\"items\":[{\"auditID\":";
    let answer = connection
        .post(
            "/audit",
            &[("content-type", "application/json")],
            body.into(),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 400, "the client still hears the refusal");
    assert!(!answer.error().is_empty());

    let letters = wait_lines(&dead, 3, Duration::from_secs(30), &auditflow);
    let peer = letters[0]["location"]["peer"].as_str().unwrap().to_owned();
    assert!(peer.starts_with("127.0.0.1:"), "{peer}");
    let shapes: Vec<(Value, Value, Value)> = letters
        .iter()
        .map(|l| {
            (
                l["reason"].clone(),
                l["location"]["item"].clone(),
                l["raw"].clone(),
            )
        })
        .collect();
    assert_eq!(
        shapes,
        [
            ("malformed".into(), 1.into(), "7".into()),
            ("malformed".into(), 3.into(), "\"text\"".into()),
            ("malformed".into(), Value::Null, body.into()),
        ]
    );
    let events: Vec<String> = (0..2)
        .map(|_| out.recv_timeout(Duration::from_secs(30)).unwrap())
        .collect();
    assert_eq!(events, [r#"{"auditID":"a"}"#, r#"{"auditID":"b"}"#]);
    drop(connection);
    stop(auditflow);
}

#[test]
fn events_the_destination_refuses_for_good_become_dead_letters_with_status_and_reply() {
    let workspace = Workspace::new();
    let pki = Pki::new("collector");
    let files = pki.write_to(workspace.path());
    // The request holding event 3 (with 4: requests of 2 events) is refused for good; the
    // others are taken, in whatever order they come.
    let server = TestServer::start(
        &pki,
        ServerOptions::responder(|request| {
            match request.body_str().contains("\"auditID\":\"3\"") {
                true => Reply::status(400).body("{\"message\":\"field verb: unknown value\"}"),
                false => Reply::ok(),
            }
        }),
    );
    let dead = workspace.path().join("dead.log");
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            "data_dir: {data}\nsources:\n  in: {{ type: stdin }}\n\
             transforms:\n  scrub: {{ type: redact, inputs: [in] }}\n\
             sinks:\n  central:\n    type: https\n    inputs: [scrub]\n    uri: {uri}\n    \
             encoding: ndjson\n    batch: {{ max_events: 2, timeout_ms: 100 }}\n    \
             tls: {{ ca_file: {ca} }}\n  \
             dead: {{ type: file, inputs: [central.dead_letter], path: {dead} }}\n",
            data = workspace.path().join("data").display(),
            uri = server.url("/ingest"),
            ca = files.ca.display(),
            dead = dead.display(),
        ),
    );
    // One request at a time, in order: 2 events each.
    let input = "{\"auditID\":\"1\"}\n{\"auditID\":\"2\"}\n\
                 {\"auditID\":\"3\",\"user\":{\"extra\":{\"token\":[\"Bearer abcdefghijklmnopqrstuvwxyz0123\"]}}}\n\
                 {\"auditID\":\"4\"}\n{\"auditID\":\"5\"}\n";
    let output = auditflow_e2e::run_to_end(
        workspace.path(),
        &["run", pipeline.to_str().unwrap()],
        &[],
        input.as_bytes(),
    );
    assert!(output.status.success(), "{output:?}");
    let text = fs::read_to_string(&dead).unwrap();
    let letters: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let delivered: usize = server
        .requests()
        .iter()
        .filter(|r| r.reply.code() == Some(200))
        .map(|r| r.body_str().lines().count())
        .sum();
    assert_eq!(
        delivered + letters.len(),
        5,
        "every event delivered or dead-lettered"
    );
    assert_eq!(letters.len(), 2, "{text}");
    for letter in &letters {
        assert_eq!(letter["component_id"], "central");
        assert_eq!(letter["reason"], "rejected");
        assert_eq!(letter["status"], 400);
        assert_eq!(
            letter["reply"],
            "{\"message\":\"field verb: unknown value\"}"
        );
        assert_eq!(
            letter["location"]["destination"],
            server.url("/ingest").as_str()
        );
        let raw = letter["raw"].as_str().unwrap();
        assert!(
            !raw.contains("abcdefghijklmnopqrstuvwxyz0123"),
            "a dead letter holds the event as sent: redacted"
        );
        let event: Value = serde_json::from_str(raw).unwrap();
        assert!(event["auditID"].is_string());
    }
}

#[test]
fn validate_knows_the_dead_letter_outputs_and_graph_draws_them() {
    let workspace = Workspace::new();
    let check = |name: &str, body: &str| {
        let file = workspace.write(name, body);
        let output = auditflow_e2e::clean_command(&["validate", file.to_str().unwrap()])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let good = "sources:\n  in: { type: stdin }\nsinks:\n  out: { type: stdout, inputs: [in] }\n  \
                dead: { type: stdout, inputs: [in.dead_letter, out.dead_letter] }\n";
    let (code, text) = check("good.yaml", good);
    assert_eq!(code, Some(0), "{text}");

    let transform = "sources:\n  in: { type: stdin }\ntransforms:\n  t: { type: filter, inputs: [in], condition: 'verb == \"get\"' }\n\
                     sinks:\n  out: { type: stdout, inputs: [t, t.dead_letter] }\n";
    let (code, text) = check("transform.yaml", transform);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("sinks.out.inputs")
            && text.contains("only sources and sinks have a dead-letter output"),
        "{text}"
    );

    let unknown = "sources:\n  in: { type: stdin }\nsinks:\n  out: { type: stdout, inputs: [in, inn.dead_letter] }\n";
    let (code, text) = check("unknown.yaml", unknown);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("did you mean `in`?"), "{text}");

    let cycle = "sources:\n  in: { type: stdin }\ntransforms:\n  t: { type: filter, inputs: [in, out.dead_letter], condition: 'verb == \"get\"' }\n\
                 sinks:\n  out: { type: stdout, inputs: [t] }\n";
    let (code, text) = check("cycle.yaml", cycle);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("cycle: out -> t -> out"), "{text}");

    let bad = "sources:\n  in: { type: stdin, max_dead_letter_bytes: 0 }\nsinks:\n  out: { type: stdout, inputs: [in] }\n";
    let (code, text) = check("bad.yaml", bad);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("sources.in.max_dead_letter_bytes"), "{text}");

    let file = workspace.write("graph.yaml", good);
    let output = auditflow_e2e::clean_command(&["graph", file.to_str().unwrap()])
        .output()
        .unwrap();
    let dot = String::from_utf8_lossy(&output.stdout);
    assert!(
        dot.contains("\"in\" -> \"dead\" [style=dashed, color=red, label=\"dead_letter\"];"),
        "{dot}"
    );
    assert!(dot.contains("\"out\" -> \"dead\" [style=dashed"), "{dot}");
}
