//! Input fidelity through the real binary: every audit input a real cluster produces is
//! accepted by stdin, file and webhook alike, and nothing changes that nobody asked to
//! change. Each test is named after what it pins.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use auditflow_e2e::{http_get, metric, wait_ready, Auditflow, Workspace};

/// `{"auditID":id,"verb":"patch","requestObject":{"x":` + `levels` arrays deep holding
/// `leaf` + `}}`.
fn nested(id: &str, levels: usize, leaf: &str) -> String {
    format!(
        r#"{{"auditID":"{id}","verb":"patch","requestObject":{{"x":{}{leaf}{}}}}}"#,
        "[".repeat(levels),
        "]".repeat(levels)
    )
}

/// The sidecar's transforms, so that every one of them sees the input.
const TRANSFORMS: &str = "transforms:\n  scrub: { type: redact, inputs: [in] }\n  \
     tag: { type: rbac_denial, inputs: [scrub] }\n  \
     quiet: { type: filter, inputs: [tag], condition: 'verb != \"watch\"' }\n  \
     thin: { type: sample, inputs: [quiet], rate: 10, exclude: 'auditID exists' }\n";

/// A number for a pipeline file name that no other run in this process uses.
fn next_pipeline() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Runs `source` (YAML under `in:`) → the sidecar transforms → stdout, feeding `stdin`;
/// returns the output lines and the metrics text scraped, before stdin closed, once the
/// source counted `records` received and the sink `expect` sent.
fn run_pipeline(
    workspace: &Workspace,
    source: &str,
    stdin: &[u8],
    records: usize,
    expect: usize,
) -> Run {
    let pipeline = workspace.write(
        &format!("p-{}.yaml", next_pipeline()),
        &format!(
            "data_dir: {}\nmetrics: {{ address: 127.0.0.1:0 }}\nsources:\n  in: {source}\n{TRANSFORMS}\
             sinks:\n  out: {{ type: stdout, inputs: [thin] }}\n",
            workspace.path().join("data").display()
        ),
    );
    let mut auditflow = Auditflow::run(workspace, &pipeline);
    let lines = auditflow.stdout_lines();
    let address = auditflow.metrics_address(Duration::from_secs(20));
    let mut input = auditflow.take_stdin();
    input.write_all(stdin).unwrap();
    input.flush().unwrap();
    let mut out = receive(&lines, expect, &auditflow);
    let metrics = scrape_settled(&address, records, expect);
    drop(input);
    auditflow.signal(libc::SIGTERM);
    let status = auditflow.wait_timeout(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", auditflow.stderr());
    out.extend(lines.try_iter());
    Run {
        out,
        metrics,
        stderr: auditflow.stderr(),
    }
}

/// The first `expect` lines of output, failing the test after 30 s without them.
fn receive(
    lines: &std::sync::mpsc::Receiver<String>,
    expect: usize,
    auditflow: &Auditflow,
) -> Vec<String> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < expect {
        match lines.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => out.push(line),
            Err(_) => assert!(
                Instant::now() < deadline,
                "{} of {expect} events arrived; stderr:\n{}",
                out.len(),
                auditflow.stderr()
            ),
        }
    }
    out
}

struct Run {
    out: Vec<String>,
    metrics: String,
    stderr: String,
}

impl Run {
    fn discarded(&self, reason: &str) -> f64 {
        metric(
            &self.metrics,
            "auditflow_component_discarded_events_total",
            &[("component_id", "in"), ("reason", reason)],
        )
        .unwrap_or_else(|| panic!("no discarded{{reason={reason}}} series:\n{}", self.metrics))
    }
}

/// The metrics once they account for the whole input: the source `in` counted `records`
/// received (every refusal among them is counted by then too) and the sink `out` `sent`
/// events. Fails after 30 s.
fn scrape_settled(address: &str, records: usize, sent: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = http_get(address, "/metrics").unwrap();
        let count =
            |name: &str, id: &str| metric(&text, name, &[("component_id", id)]).unwrap_or(0.0);
        let counted = (
            count("auditflow_component_received_events_total", "in"),
            count("auditflow_component_sent_events_total", "out"),
        );
        if counted == (records as f64, sent as f64) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "after 30 s the source counted {} of {records} records received and the sink {} of {sent} events sent:\n{text}",
            counted.0,
            counted.1
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP/1.1 POST on a fresh connection: (status, body).
fn post(address: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "POST /audit?timeout=30s HTTP/1.1\r\nHost: {address}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A webhook source → the sidecar transforms → stdout; posts each body, expecting 200;
/// returns the output and the metrics once the source counted `records` received (events
/// and refused items) and the sink `expect` sent.
fn through_webhook(
    workspace: &Workspace,
    bodies: &[(&str, Vec<u8>)],
    records: usize,
    expect: usize,
) -> Run {
    let pipeline = workspace.write(
        &format!("w-{}.yaml", next_pipeline()),
        &format!(
            "data_dir: {}\nmetrics: {{ address: 127.0.0.1:0 }}\n\
             sources:\n  in: {{ type: webhook, address: \"127.0.0.1:0\", path: /audit, allow_plaintext: true }}\n\
             {TRANSFORMS}sinks:\n  out: {{ type: stdout, inputs: [thin] }}\n",
            workspace.path().join("data").display()
        ),
    );
    let mut auditflow = Auditflow::run(workspace, &pipeline);
    let lines = auditflow.stdout_lines();
    let metrics = auditflow.metrics_address(Duration::from_secs(20));
    wait_ready(&metrics, Duration::from_secs(20));
    let address = auditflow
        .webhook_address("in", Duration::from_secs(20))
        .to_string();
    for (content_type, body) in bodies {
        let (status, reply) = post(&address, content_type, body);
        assert_eq!(status, 200, "{content_type}: {reply}");
    }
    let mut out = receive(&lines, expect, &auditflow);
    let text = scrape_settled(&metrics, records, expect);
    auditflow.signal(libc::SIGTERM);
    assert_eq!(
        auditflow.wait_timeout(Duration::from_secs(30)).code(),
        Some(0)
    );
    out.extend(lines.try_iter());
    Run {
        out,
        metrics: text,
        stderr: auditflow.stderr(),
    }
}

#[test]
fn events_nested_up_to_10_000_levels_pass_every_transform_unchanged_and_deeper_is_too_deep() {
    let workspace = Workspace::new();
    let shallow = nested("a", 150, "");
    // The top object, requestObject and 9,998 arrays: 10,000 levels, the most accepted.
    let deepest = nested("b", 9_998, "\"x\"");
    let secret = nested("s", 2_000, "\"Bearer abcdef0123456789abcdef\"");
    let too_deep = nested("c", 9_999, "");
    let input = format!("{shallow}\n{deepest}\n{secret}\n{too_deep}\n");
    for (name, source) in [
        (
            "stdin",
            "{ type: stdin, max_line_bytes: 1048576 }".to_owned(),
        ),
        ("file", {
            let logs = workspace.path().join("logs");
            fs::create_dir_all(&logs).unwrap();
            fs::write(logs.join("audit.log"), &input).unwrap();
            format!("{{ type: file, include: [\"{}/*.log\"] }}", logs.display())
        }),
    ] {
        let stdin = if name == "stdin" {
            input.as_bytes()
        } else {
            b""
        };
        // Four lines: three events and the one too deep.
        let run = run_pipeline(&workspace, &source, stdin, 4, 3);
        assert_eq!(run.out.len(), 3, "{name}");
        assert_eq!(run.out[0], shallow, "{name}: 150 levels, byte for byte");
        assert_eq!(run.out[1], deepest, "{name}: 10,000 levels, byte for byte");
        assert!(
            run.out[2].contains("[REDACTED]") && !run.out[2].contains("abcdef0123456789abcdef"),
            "{name}: the token 2,000 levels down is redacted"
        );
        assert_eq!(run.discarded("too_deep"), 1.0, "{name}");
        assert!(!run.stderr.contains("overflow"), "{}", run.stderr);
    }
    let run = through_webhook(
        &workspace,
        &[(
            "application/json",
            format!(r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{shallow},{deepest},{too_deep}]}}"#)
                .into_bytes(),
        )],
        3,
        2,
    );
    assert_eq!(run.out, [shallow, deepest], "webhook");
    assert_eq!(run.discarded("too_deep"), 1.0, "webhook");
}

#[test]
fn ndjson_lines_holding_an_event_list_or_an_array_are_unrolled_and_tagged() {
    let workspace = Workspace::new();
    let denied = r#"{"auditID":"d1","stage":"ResponseComplete","verb":"list","user":{"username":"bob"},"objectRef":{"resource":"secrets","namespace":"ns","apiVersion":"v1"},"responseStatus":{"code":403},"annotations":{"authorization.k8s.io/decision":"forbid","authorization.k8s.io/reason":""}}"#;
    let body = format!(
        "{{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"items\":[{denied}]}}\n[{{\"auditID\":\"a1\",\"verb\":\"get\"}},{{\"auditID\":\"a2\",\"verb\":\"get\"}}]\n"
    );
    let run = through_webhook(
        &workspace,
        &[("application/x-ndjson", body.into_bytes())],
        3,
        3,
    );
    let ids: Vec<serde_json::Value> = run
        .out
        .iter()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["auditID"].clone())
        .collect();
    assert_eq!(ids, ["d1", "a1", "a2"]);
    assert!(
        run.out[0].contains(r#""auditflow.io/denial":"rbac""#),
        "{}",
        run.out[0]
    );
}

#[test]
fn pretty_printed_events_one_after_another_are_a_stream_for_stdin_webhook_and_file() {
    let workspace = Workspace::new();
    let pretty = "{\n  \"auditID\": \"p1\",\n  \"verb\": \"get\",\n  \"n\": 1.50\n}\n{\n  \"auditID\": \"p2\",\n  \"verb\": \"get\"\n}{\"auditID\":\"p3\",\"verb\":\"get\"}\n";
    let expected = [
        r#"{"auditID":"p1","verb":"get","n":1.50}"#,
        r#"{"auditID":"p2","verb":"get"}"#,
        r#"{"auditID":"p3","verb":"get"}"#,
    ];
    let run = run_pipeline(
        &workspace,
        "{ type: stdin, framing: json_stream }",
        pretty.as_bytes(),
        3,
        3,
    );
    assert_eq!(run.out, expected, "stdin with framing: json_stream");
    let run = through_webhook(
        &workspace,
        &[("application/json", pretty.as_bytes().to_vec())],
        3,
        3,
    );
    assert_eq!(run.out, expected, "webhook");
    let logs = workspace.path().join("pretty");
    fs::create_dir_all(&logs).unwrap();
    fs::write(logs.join("audit.json"), pretty).unwrap();
    let source = format!(
        "{{ type: file, include: [\"{}/*.json\"], framing: json_stream }}",
        logs.display()
    );
    let run = run_pipeline(&workspace, &source, b"", 3, 3);
    assert_eq!(run.out, expected, "file with framing: json_stream");
}

#[test]
fn a_utf8_byte_order_mark_is_skipped_by_stdin_file_and_webhook() {
    let workspace = Workspace::new();
    let event = r#"{"auditID":"bom","verb":"get"}"#;
    let with_bom = format!("\u{feff}{event}\n");
    let run = run_pipeline(&workspace, "{ type: stdin }", with_bom.as_bytes(), 1, 1);
    assert_eq!(run.out, [event], "stdin");
    let logs = workspace.path().join("bom");
    fs::create_dir_all(&logs).unwrap();
    fs::write(logs.join("audit.log"), &with_bom).unwrap();
    let source = format!("{{ type: file, include: [\"{}/*.log\"] }}", logs.display());
    let run = run_pipeline(&workspace, &source, b"", 1, 1);
    assert_eq!(run.out, [event], "file");
    let run = through_webhook(
        &workspace,
        &[("application/json", with_bom.into_bytes())],
        1,
        1,
    );
    assert_eq!(run.out, [event], "webhook");
}

fn nul_padding(padding: usize) {
    let workspace = Workspace::new();
    let logs = workspace.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    let line = |i: usize| format!(r#"{{"auditID":"n{i}","verb":"get"}}"#);
    let mut content = Vec::new();
    for i in 0..10 {
        content.extend(line(i).bytes());
        content.push(b'\n');
    }
    content.extend(std::iter::repeat_n(0u8, padding));
    for i in 10..20 {
        content.extend(line(i).bytes());
        content.push(b'\n');
    }
    fs::write(logs.join("audit.log"), &content).unwrap();
    let source = format!("{{ type: file, include: [\"{}/*.log\"] }}", logs.display());
    let run = run_pipeline(&workspace, &source, b"", 20, 20);
    let expected: Vec<String> = (0..20).map(line).collect();
    assert_eq!(run.out, expected, "{padding} NUL bytes");
    assert!(run.discarded("nul_padding") >= 1.0);
    assert_eq!(
        metric(
            &run.metrics,
            "auditflow_component_discarded_events_total",
            &[("component_id", "in"), ("reason", "malformed")],
        )
        .unwrap_or(0.0),
        0.0
    );
}

#[test]
fn nul_padding_of_8_kib_after_a_crash_loses_no_event() {
    nul_padding(8 * 1024);
}

#[test]
fn nul_padding_of_5_mib_after_a_crash_loses_no_event() {
    nul_padding(5 * 1024 * 1024);
}

#[test]
fn a_flood_of_malformed_input_is_counted_whole_and_logged_at_a_bounded_rate() {
    let workspace = Workspace::new();
    let mut input = String::new();
    for i in 0..1_000 {
        input.push_str(&format!("not json {i}\n"));
    }
    input.push_str(r#"{"auditID":"last","verb":"get"}"#);
    input.push('\n');
    let run = run_pipeline(&workspace, "{ type: stdin }", input.as_bytes(), 1_001, 1);
    assert_eq!(run.discarded("malformed"), 1_000.0);
    let warnings = run
        .stderr
        .lines()
        .filter(|line| line.contains("skipping a record that is not an audit event"))
        .count();
    assert_eq!(warnings, 10, "{}", run.stderr);
    assert!(
        run.stderr.contains("suppressed 990 similar warnings"),
        "{}",
        run.stderr
    );
}

/// A small deterministic generator (xorshift64*), so that a failure replays from its seed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Whitespace JSON allows between tokens, on one line.
    fn blank(&mut self) -> &'static str {
        ["", "", "", " ", "\t", "  "][self.below(6) as usize]
    }

    fn string(&mut self, out: &mut String) {
        const PIECES: [&str; 14] = [
            "a",
            "Z",
            "0",
            " ",
            "µs",
            "é",
            "日本",
            "\\u0026",
            "\\\"",
            "\\\\",
            "\\n",
            "\\ud83d\\ude00",
            "\\/",
            "😀",
        ];
        out.push('"');
        for _ in 0..self.below(8) {
            out.push_str(PIECES[self.below(PIECES.len() as u64) as usize]);
        }
        out.push('"');
    }

    fn number(&mut self, out: &mut String) {
        const NUMBERS: [&str; 10] = [
            "0",
            "-0",
            "1.50",
            "123456789012345678901234567890",
            "1e400",
            "-2.5E-3",
            "1E+2",
            "18446744073709551616",
            "0.000000000000000000001",
            "9007199254740993",
        ];
        out.push_str(NUMBERS[self.below(NUMBERS.len() as u64) as usize]);
    }

    fn value(&mut self, out: &mut String, depth: usize) {
        let kind = if depth == 0 {
            self.below(4)
        } else {
            self.below(6)
        };
        match kind {
            0 => self.string(out),
            1 => self.number(out),
            2 => out.push_str(["true", "false", "null"][self.below(3) as usize]),
            3 => {
                // Now and then a long chain of nesting.
                let levels = if self.below(20) == 0 {
                    300 + self.below(700) as usize
                } else {
                    1
                };
                out.push_str(&"[".repeat(levels));
                self.number(out);
                out.push_str(&"]".repeat(levels));
            }
            4 => {
                out.push('[');
                for i in 0..self.below(4) {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(self.blank());
                    self.value(out, depth - 1);
                    out.push_str(self.blank());
                }
                out.push(']');
            }
            _ => {
                out.push('{');
                for i in 0..self.below(4) {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(self.blank());
                    self.string(out);
                    out.push_str(self.blank());
                    out.push(':');
                    out.push_str(self.blank());
                    self.value(out, depth - 1);
                }
                out.push('}');
            }
        }
    }
}

/// Random valid events (deep nesting, big and odd numbers, every escape, non-ASCII text,
/// odd whitespace) through stdin → every transform, configured so that none of them
/// changes anything → stdout: each comes out byte for byte as it went in, in order.
#[test]
fn random_events_pass_through_every_transform_byte_for_byte() {
    let seed = std::env::var("AUDITFLOW_FIDELITY_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0x5eed_0001_u64);
    let mut random = Random(seed);
    let mut events = Vec::new();
    for i in 0..2_000 {
        let mut event = format!(
            "{{{}\"auditID\":{}\"r-{i}\"",
            random.blank(),
            random.blank()
        );
        event.push_str(",\"verb\":\"get\",\"stage\":\"ResponseComplete\"");
        for key in ["requestObject", "responseObject", "x"] {
            event.push_str(&format!(",{}\"{key}\"{}:", random.blank(), random.blank()));
            random.value(&mut event, 4);
        }
        event.push_str(&format!("{}}}", random.blank()));
        serde_json::from_str::<serde_json::Value>(&event)
            .or_else(|_| {
                // 1e400 is valid JSON that serde_json's Value cannot hold; check the
                // rest of the event is valid by reading it as a raw value.
                serde_json::from_str::<&serde_json::value::RawValue>(&event)
                    .map(|_| serde_json::Value::Null)
            })
            .unwrap_or_else(|error| {
                panic!("seed {seed}: generated invalid JSON ({error}): {event}")
            });
        events.push(event);
    }
    let input = events.join("\n") + "\n";
    let workspace = Workspace::new();
    let pipeline = workspace.write(
        "random.yaml",
        &format!(
            "data_dir: {}\nsources:\n  in: {{ type: stdin, max_line_bytes: 1048576 }}\n\
             transforms:\n  scrub: {{ type: redact, inputs: [in] }}\n  \
             tag: {{ type: rbac_denial, inputs: [scrub] }}\n  \
             keep: {{ type: filter, inputs: [tag], condition: 'verb != \"watch\"' }}\n  \
             thin: {{ type: sample, inputs: [keep], rate: 10, exclude: 'auditID exists' }}\n  \
             once: {{ type: dedupe, inputs: [thin] }}\n\
             sinks:\n  out: {{ type: stdout, inputs: [once] }}\n",
            workspace.path().join("data").display()
        ),
    );
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let lines = auditflow.stdout_lines();
    let mut stdin = auditflow.take_stdin();
    let writer = std::thread::spawn(move || {
        stdin.write_all(input.as_bytes()).unwrap();
    });
    let out: Vec<String> = lines.iter().collect();
    writer.join().unwrap();
    let status = auditflow.wait_timeout(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", auditflow.stderr());
    assert_eq!(out.len(), events.len(), "seed {seed}: events lost or added");
    for (i, (got, sent)) in out.iter().zip(&events).enumerate() {
        assert_eq!(got, sent, "seed {seed}: event {i} changed");
    }
}
