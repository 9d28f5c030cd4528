//! `stdin` → `stdout` through the real binary: completeness and byte-exactness at volume,
//! malformed lines, `SIGTERM` draining, a second signal, and backpressure from a stalled
//! reader of standard output.

use std::io::Write;
use std::path::PathBuf;
use std::process::ChildStdin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use auditflow_core::batch::MAX_BATCH_EVENTS;
use auditflow_e2e::audit_lines::{audit_line, vm_rss_kib};
use auditflow_e2e::{http_get, metric, wait_ready, Auditflow, Workspace};
use auditflow_topology::CHANNEL_BATCHES;

const RECEIVED: &str = "auditflow_component_received_events_total";
const SENT: &str = "auditflow_component_sent_events_total";
const SENT_BYTES: &str = "auditflow_component_sent_bytes_total";
const DISCARDED: &str = "auditflow_component_discarded_events_total";
const BUFFER: &str = "auditflow_buffer_events";

/// `stdin` → `stdout` with the metrics endpoint on any free port (read from the log with
/// [`Auditflow::metrics_address`]).
fn pipeline(workspace: &Workspace, shutdown_timeout_secs: u64) -> PathBuf {
    workspace.write(
        "pipeline.yaml",
        &format!(
            "data_dir: {data}\n\
             metrics:\n  address: 127.0.0.1:0\n\
             shutdown_timeout_secs: {shutdown_timeout_secs}\n\
             sources:\n  in:\n    type: stdin\n\
             sinks:\n  out:\n    type: stdout\n    inputs: [in]\n",
            data = workspace.path().join("data").display(),
        ),
    )
}

fn scrape(address: &str) -> String {
    let (status, body) = http_get(address, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    body
}

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{text}"))
}

/// Writes audit lines `0..count` to stdin, `per_write` lines per `write_all`, counting
/// the lines written completely, until done or until `stop` is set; then closes stdin.
struct Writer {
    written: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Writer {
    fn start(mut stdin: ChildStdin, count: usize, per_write: usize) -> Writer {
        let written = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (written, stop) = (Arc::clone(&written), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut chunk = String::new();
                for start in (0..count).step_by(per_write) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let end = (start + per_write).min(count);
                    chunk.clear();
                    for i in start..end {
                        chunk.push_str(&audit_line(i));
                        chunk.push('\n');
                    }
                    if stdin.write_all(chunk.as_bytes()).is_err() {
                        break;
                    }
                    written.store(end, Ordering::Release);
                }
            })
        };
        Writer {
            written,
            stop,
            thread,
        }
    }

    fn written(&self) -> usize {
        self.written.load(Ordering::Acquire)
    }

    /// Stops after the line being written and closes stdin; returns the lines written.
    fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the writer thread");
        self.written.load(Ordering::Acquire)
    }
}

/// Waits until the pipeline is stalled: the writer and the source's received count stop
/// moving for several scrapes in a row. Returns the source's received count.
fn wait_until_stalled(address: &str, writer: &Writer, total: usize) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (usize::MAX, -1.0);
    let mut steady = 0;
    loop {
        assert!(Instant::now() < deadline, "the pipeline never stalled");
        std::thread::sleep(Duration::from_millis(150));
        let received = value(&scrape(address), RECEIVED, &[("component_id", "in")]);
        let now = (writer.written(), received);
        assert!(
            now.0 < total,
            "the writer was never blocked: all {total} lines went in"
        );
        if now == last && received > 0.0 {
            steady += 1;
            if steady == 4 {
                return received;
            }
        } else {
            steady = 0;
        }
        last = now;
    }
}

/// Every line until stdout closes, failing if one takes longer than `timeout`.
fn read_to_end(lines: &Receiver<String>, timeout: Duration) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        match lines.recv_timeout(timeout) {
            Ok(line) => out.push(line),
            Err(RecvTimeoutError::Disconnected) => return out,
            Err(RecvTimeoutError::Timeout) => panic!("stdout went quiet after {} lines", out.len()),
        }
    }
}

/// Output line `i` must be input line `i`, byte for byte.
fn assert_prefix_of_input(lines: &[String]) {
    for (i, line) in lines.iter().enumerate() {
        if *line != audit_line(i) {
            panic!(
                "output line {i} is not input line {i}:\n  got  {}\n  want {}",
                &line[..line.len().min(200)],
                &audit_line(i)[..200]
            );
        }
    }
}

#[test]
fn a_hundred_thousand_events_arrive_complete_in_order_and_byte_equal() {
    const EVENTS: usize = 100_000;
    const MALFORMED_AFTER: usize = 50_000;
    let workspace = Workspace::new();
    let pipeline = pipeline(&workspace, 30);
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let address = auditflow.metrics_address(Duration::from_secs(20));
    let lines = auditflow.stdout_lines();
    let mut stdin = auditflow.take_stdin();
    let writer = std::thread::spawn(move || {
        let mut out = std::io::BufWriter::with_capacity(1 << 16, &mut stdin);
        let mut bytes = 0;
        for i in 0..EVENTS {
            if i == MALFORMED_AFTER {
                // Cut off mid-object, as a crashed writer leaves it.
                writeln!(
                    out,
                    "{{\"kind\":\"Event\",\"auditID\":\"cut-off\",\"verb\":"
                )
                .unwrap();
            }
            let line = audit_line(i);
            bytes += line.len() + 1;
            writeln!(out, "{line}").unwrap();
        }
        out.flush().unwrap();
        drop(out);
        (stdin, bytes) // kept open: the test scrapes the metrics before closing it
    });
    wait_ready(&address, Duration::from_secs(20));

    let mut received = Vec::with_capacity(EVENTS);
    while received.len() < EVENTS {
        match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => received.push(line),
            Err(error) => panic!(
                "stdout stopped after {} events ({error}); stderr:\n{}",
                received.len(),
                auditflow.stderr()
            ),
        }
    }
    assert_prefix_of_input(&received);
    let first: serde_json::Value = serde_json::from_str(&received[0]).unwrap();
    assert_eq!(
        first,
        serde_json::from_str::<serde_json::Value>(&audit_line(0)).unwrap()
    );

    let (stdin, bytes) = writer.join().expect("the writer thread");
    let text = scrape(&address);
    let source = [("component_id", "in")];
    let sink = [("component_id", "out")];
    assert_eq!(
        value(
            &text,
            DISCARDED,
            &[("component_id", "in"), ("reason", "malformed")]
        ),
        1.0
    );
    assert_eq!(
        value(&text, RECEIVED, &source),
        (EVENTS + 1) as f64,
        "lines read"
    );
    assert_eq!(value(&text, SENT, &source), EVENTS as f64);
    assert_eq!(value(&text, SENT, &sink), EVENTS as f64);
    assert_eq!(value(&text, SENT_BYTES, &sink), bytes as f64);

    drop(stdin);
    let status = auditflow.wait_timeout(Duration::from_secs(30));
    assert!(
        status.success(),
        "exit {status}; stderr:\n{}",
        auditflow.stderr()
    );
    assert_eq!(
        read_to_end(&lines, Duration::from_secs(5)),
        Vec::<String>::new()
    );
    let stderr = auditflow.stderr();
    let warning = stderr
        .lines()
        .find(|line| line.contains("malformed"))
        .unwrap_or_else(|| panic!("no warning about the malformed line:\n{stderr}"));
    assert!(
        warning.contains(&format!("record {}", MALFORMED_AFTER + 1)),
        "the warning names the record number: {warning}"
    );
}

#[test]
fn sigterm_mid_stream_drains_every_event_read_and_exits_0() {
    const TOTAL: usize = 400_000;
    let workspace = Workspace::new();
    let pipeline = pipeline(&workspace, 60);
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let address = auditflow.metrics_address(Duration::from_secs(20));
    wait_ready(&address, Duration::from_secs(20));
    // Nobody reads stdout yet: the pipeline fills and stops reading mid-stream, with
    // batches in flight in every channel.
    let stdout = auditflow.child.stdout.take().expect("stdout is piped");
    let writer = Writer::start(auditflow.take_stdin(), TOTAL, 1);
    let read_before_signal = wait_until_stalled(&address, &writer, TOTAL);

    auditflow.signal(libc::SIGTERM);
    let reader = std::thread::spawn(move || {
        std::io::BufRead::lines(std::io::BufReader::new(stdout))
            .map(|line| line.expect("stdout is text"))
            .collect::<Vec<_>>()
    });
    let status = auditflow.wait_timeout(Duration::from_secs(60));
    let written = writer.finish();
    let out = reader.join().expect("the reader thread");

    assert!(
        status.success(),
        "exit {status}; stderr:\n{}",
        auditflow.stderr()
    );
    assert!(
        out.len() as f64 >= read_before_signal,
        "{} events out, but {read_before_signal} had been read before the signal",
        out.len()
    );
    assert!(out.len() < written, "the signal came mid-stream");
    assert_prefix_of_input(&out);
    assert!(auditflow.stderr().contains("shutting down"));
}

#[test]
fn a_second_signal_exits_at_once() {
    const TOTAL: usize = 400_000;
    let workspace = Workspace::new();
    let pipeline = pipeline(&workspace, 600);
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let address = auditflow.metrics_address(Duration::from_secs(20));
    wait_ready(&address, Duration::from_secs(20));
    let _stalled_stdout = auditflow.child.stdout.take();
    let writer = Writer::start(auditflow.take_stdin(), TOTAL, 1000);
    wait_until_stalled(&address, &writer, TOTAL);

    auditflow.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !auditflow.stderr().contains("shutting down") {
        assert!(Instant::now() < deadline, "the first signal was not taken");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Draining cannot finish while stdout is not read, and the timeout is 10 minutes: after
    // the first signal the process still answers, with events held in front of the sink.
    // That it went on draining until the second signal is shown by the answer to that
    // signal below: only a process still draining logs "second signal" and exits 1.
    let buffered = value(&scrape(&address), BUFFER, &[("component_id", "out")]);
    assert!(
        buffered > 0.0,
        "nothing held in front of the stalled sink after the first signal"
    );
    assert!(
        auditflow.child.try_wait().unwrap().is_none(),
        "exited although draining could not finish"
    );

    auditflow.signal(libc::SIGTERM);
    let status = auditflow.wait_timeout(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(1),
        "exit {status}: events were left undelivered"
    );
    assert!(auditflow.stderr().contains("second signal"));
    drop(writer); // its thread ends on the broken pipe
}

#[test]
fn a_stalled_stdout_stops_reading_with_memory_bounded() {
    const TOTAL: usize = 1_000_000;
    let workspace = Workspace::new();
    let pipeline = pipeline(&workspace, 30);
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let address = auditflow.metrics_address(Duration::from_secs(20));
    wait_ready(&address, Duration::from_secs(20));
    let idle_rss = vm_rss_kib(auditflow.child.id());
    let stdout = auditflow.child.stdout.take().expect("stdout is piped");
    let writer = Writer::start(auditflow.take_stdin(), TOTAL, 1000);
    let read = wait_until_stalled(&address, &writer, TOTAL);

    // The writer is blocked, and what the process holds is bounded by the engine's limits.
    let text = scrape(&address);
    let buffered = value(&text, BUFFER, &[("component_id", "out")]);
    assert!(buffered > 0.0, "the sink's channel is full while it stalls");
    assert!(
        buffered <= (CHANNEL_BATCHES * MAX_BATCH_EVENTS) as f64,
        "{buffered} events buffered in front of the sink"
    );
    let stalled_at = writer.written();
    let rss = vm_rss_kib(auditflow.child.id());
    // Still stalled over another run of steady scrapes, at the same place: the writer is
    // blocked, not slowed.
    assert_eq!(wait_until_stalled(&address, &writer, TOTAL), read);
    assert_eq!(
        writer.written(),
        stalled_at,
        "the writer is blocked, not slowed"
    );
    let rss_later = vm_rss_kib(auditflow.child.id());
    // ~2 KB events: at most a few MiB of batches, buffers and pipes, whatever the input.
    for kib in [rss, rss_later] {
        assert!(
            kib < idle_rss + 64 * 1024,
            "VmRSS {kib} KiB (idle {idle_rss} KiB) after {stalled_at} lines written"
        );
    }
    assert!(
        (stalled_at as f64) < read + 20_000.0,
        "the writer got {stalled_at} lines in, the source read {read}: pipes hold the rest"
    );

    // Reading stdout again lets everything through, in order.
    let lines = {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    };
    let mut out = Vec::new();
    while out.len() < stalled_at + 10_000 {
        out.push(
            lines
                .recv_timeout(Duration::from_secs(30))
                .expect("events flow again"),
        );
    }
    let written = writer.finish();
    out.extend(read_to_end(&lines, Duration::from_secs(30)));
    let status = auditflow.wait_timeout(Duration::from_secs(30));
    assert!(
        status.success(),
        "exit {status}; stderr:\n{}",
        auditflow.stderr()
    );
    assert_eq!(out.len(), written);
    assert_prefix_of_input(&out);
}
