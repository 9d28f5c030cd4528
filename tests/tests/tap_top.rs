//! `auditflow tap` and `auditflow top` against a running instance, through the real
//! binary: the tap sees the events that pass, and the dead letters of a source (and is
//! refused with the reason when the instance does not allow it, or when a reload removed
//! the component), `validate` refuses an API open beyond loopback without a
//! token, and `top` is driven in tmux the way a person uses it.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use auditflow_e2e::audit_lines::audit_line;
use auditflow_e2e::{auditflow_bin, Auditflow, Tmux, Workspace};

const DEADLINE: Duration = Duration::from_secs(60);

/// The API's address, read from the line `run` logs once it listens (`127.0.0.1:0`).
fn api_address(instance: &Auditflow) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let stderr = instance.stderr();
        let found = stderr
            .lines()
            .find(|line| line.contains("serving the api"))
            .and_then(|line| {
                let (_, rest) = line.split_once("address=")?;
                Some(rest.split_whitespace().next()?.to_owned())
            });
        if let Some(address) = found {
            return address;
        }
        assert!(
            Instant::now() < deadline,
            "no api address logged; stderr:\n{stderr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `stdin` → `stdout`, with `api` as given (YAML flow mapping).
fn stdin_pipeline(workspace: &Workspace, api: &str) -> PathBuf {
    stdin_pipeline_with(workspace, api, "")
}

/// `stdin` → `stdout` and the sinks `more_sinks` (YAML lines under `sinks:`).
fn stdin_pipeline_with(workspace: &Workspace, api: &str, more_sinks: &str) -> PathBuf {
    workspace.write(
        "pipeline.yaml",
        &format!(
            "data_dir: {}\napi: {api}\nsources:\n  in: {{type: stdin}}\nsinks:\n  out: {{type: stdout, inputs: [in]}}\n{more_sinks}",
            workspace.path().join("data").display()
        ),
    )
}

/// Writes numbered audit events to the instance's standard input, a few hundred a second,
/// until stopped; returns the lines written.
struct Feeder {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<String>>,
}

impl Feeder {
    fn start(instance: &mut Auditflow) -> Feeder {
        Feeder::start_with(instance, audit_line)
    }

    /// Writes line `line(i)` for i = 0, 1, 2...
    fn start_with(instance: &mut Auditflow, line: fn(usize) -> String) -> Feeder {
        let mut stdin = instance.take_stdin();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut written = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                let line = line(written.len());
                if writeln!(stdin, "{line}")
                    .and_then(|()| stdin.flush())
                    .is_err()
                {
                    break;
                }
                written.push(line);
                std::thread::sleep(Duration::from_millis(2));
            }
            written
        });
        Feeder { stop, thread }
    }

    fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the feeder thread")
    }
}

/// Starts `auditflow tap ARGS...` without a token from the environment, its standard
/// output and error piped.
fn spawn_tap(args: &[&str]) -> std::process::Child {
    Command::new(auditflow_bin())
        .arg("tap")
        .args(args)
        .env_remove("AUDITFLOW_API_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start auditflow tap")
}

/// Runs `auditflow tap ARGS...` to its end (bounded by [`DEADLINE`]).
fn tap(args: &[&str]) -> Output {
    let child = spawn_tap(args);
    let id = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(DEADLINE) {
        Ok(output) => output.expect("auditflow tap ran"),
        Err(_) => {
            let _ = Command::new("kill").arg(id.to_string()).status();
            panic!("auditflow tap {args:?} did not end within {DEADLINE:?}");
        }
    }
}

#[test]
fn tap_prints_the_events_passing_a_component_and_stops_after_the_limit() {
    let workspace = Workspace::new();
    let pipeline = stdin_pipeline(&workspace, "{address: 127.0.0.1:0, tap: true}");
    let mut instance = Auditflow::run(&workspace, &pipeline);
    let url = format!("http://{}", api_address(&instance));
    let printed = instance.stdout_lines();
    let feeder = Feeder::start(&mut instance);

    let output = tap(&["in", "--url", &url, "--limit", "5"]);
    let written = feeder.stop();
    let written: HashMap<String, &String> =
        written.iter().map(|line| (audit_id(line), line)).collect();
    let mut seen = Vec::new();
    for tapped in tapped_events(&output, 5) {
        assert_eq!(tapped["component_id"], "in");
        assert_eq!(tapped["port"], "outputs_of");
        let id = tapped["event"]["auditID"].as_str().expect("an auditID");
        let sent = written
            .get(id)
            .unwrap_or_else(|| panic!("tapped an event that was never written: {id}"));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(sent).unwrap(),
            tapped["event"],
            "the tapped event is the event as it passed"
        );
        seen.push(id.to_owned());
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 5, "five different events: {seen:?}");

    // The pipeline itself lost nothing to the tap: the sink printed what was written.
    instance.signal(libc::SIGTERM);
    assert!(instance.wait_timeout(DEADLINE).success());
    let out: Vec<String> = printed.iter().collect();
    assert_eq!(out.len(), written.len(), "stdout carried every event");
}

fn audit_id(line: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(line).expect("an audit line");
    value["auditID"].as_str().expect("auditID").to_owned()
}

#[test]
fn tap_against_an_instance_whose_tap_is_off_fails_with_the_reason() {
    let workspace = Workspace::new();
    let pipeline = stdin_pipeline(&workspace, "{address: 127.0.0.1:0}");
    let mut instance = Auditflow::run(&workspace, &pipeline);
    let url = format!("http://{}", api_address(&instance));
    let feeder = Feeder::start(&mut instance);

    let output = tap(&["in", "--url", &url, "--limit", "1"]);
    feeder.stop();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(output.stdout.is_empty(), "no event is shown");
    assert!(
        stderr.contains("tap is disabled on this instance") && stderr.contains("tap: true"),
        "stderr says why and what to set: {stderr}"
    );
}

#[test]
fn tap_names_the_components_when_an_id_is_unknown() {
    let workspace = Workspace::new();
    let pipeline = stdin_pipeline(&workspace, "{address: 127.0.0.1:0, tap: true}");
    let instance = Auditflow::run(&workspace, &pipeline);
    let url = format!("http://{}", api_address(&instance));

    let output = tap(&["nope", "--url", &url, "--limit", "1"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("no component `nope` in this pipeline; components: in, out"),
        "stderr: {stderr}"
    );
    let output = tap(&["out", "--outputs-of", "--url", &url, "--limit", "1"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("`out` is a sink"), "stderr: {stderr}");
}

#[test]
fn a_token_file_makes_the_tap_ask_for_the_bearer_token() {
    let workspace = Workspace::new();
    let token = workspace.write("token", "s3cret-token\n");
    let pipeline = stdin_pipeline(
        &workspace,
        &format!(
            "{{address: 127.0.0.1:0, tap: true, token_file: {}}}",
            token.display()
        ),
    );
    let mut instance = Auditflow::run(&workspace, &pipeline);
    let url = format!("http://{}", api_address(&instance));
    let feeder = Feeder::start(&mut instance);

    let refused = tap(&["in", "--url", &url, "--limit", "1"]);
    let wrong = workspace.write("wrong", "not-it");
    let wrong = tap(&[
        "in",
        "--url",
        &url,
        "--limit",
        "1",
        "--token-file",
        path(&wrong),
    ]);
    let allowed = tap(&[
        "in",
        "--url",
        &url,
        "--limit",
        "2",
        "--token-file",
        path(&token),
    ]);
    feeder.stop();
    for output in [&refused, &wrong] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
        assert!(
            stderr.contains("401") && stderr.contains("bearer token"),
            "{stderr}"
        );
    }
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert_eq!(allowed.stdout.iter().filter(|b| **b == b'\n').count(), 2);
}

/// Every odd line is torn off mid-event: the stdin source refuses it as malformed.
fn torn_every_other_line(i: usize) -> String {
    match i % 2 {
        0 => audit_line(i),
        _ => format!(r#"{{"auditID":"torn-{i}","verb":"#),
    }
}

#[test]
fn tap_on_a_dead_letter_output_shows_the_refused_line() {
    let workspace = Workspace::new();
    let pipeline = stdin_pipeline_with(
        &workspace,
        "{address: 127.0.0.1:0, tap: true}",
        "  refused: {type: blackhole, inputs: [in.dead_letter]}\n",
    );
    let mut instance = Auditflow::run(&workspace, &pipeline);
    let url = format!("http://{}", api_address(&instance));
    let feeder = Feeder::start_with(&mut instance, torn_every_other_line);

    let output = tap(&["in.dead_letter", "--url", &url, "--limit", "2"]);
    let written = feeder.stop();
    for tapped in tapped_events(&output, 2) {
        assert_eq!(tapped["component_id"], "in.dead_letter");
        assert_eq!(tapped["port"], "outputs_of");
        let letter = &tapped["event"];
        assert_eq!(letter["kind"], "DeadLetter", "{letter}");
        assert_eq!(letter["component_id"], "in");
        assert_eq!(letter["reason"], "malformed");
        let raw = letter["raw"].as_str().expect("the refused line as text");
        assert!(
            raw.starts_with(r#"{"auditID":"torn-"#) && written.iter().any(|line| line == raw),
            "the dead letter carries a torn line as it was written: {raw:?}"
        );
    }
}

/// Starts `auditflow tap ARGS...` and returns once it printed its first event: from then on
/// its subscription is open. Its standard output's remaining lines come on the receiver.
fn tap_in_background(args: &[&str]) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = spawn_tap(args);
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = lines.recv_timeout(DEADLINE);
    if first.is_err() {
        let _ = child.kill();
        panic!("auditflow tap {args:?} printed nothing within {DEADLINE:?}");
    }
    (child, lines)
}

/// Waits until the instance logged `count` reloads done.
fn wait_reloaded(instance: &Auditflow, count: usize) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let stderr = instance.stderr();
        if stderr.matches("pipeline reloaded").count() >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no reload logged within {DEADLINE:?}; stderr:\n{stderr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_component_removed_by_a_reload_can_no_longer_be_tapped_and_its_open_tap_ends() {
    let workspace = Workspace::new();
    let api = "{address: 127.0.0.1:0, tap: true}";
    let pipeline =
        stdin_pipeline_with(&workspace, api, "  copy: {type: blackhole, inputs: [in]}\n");
    let mut instance = Auditflow::run(&workspace, &pipeline);
    let url = format!("http://{}", api_address(&instance));
    let printed = instance.stdout_lines();
    let feeder = Feeder::start(&mut instance);
    let (mut open_tap, _tapped) = tap_in_background(&["copy", "--url", &url, "--limit", "1000000"]);

    stdin_pipeline(&workspace, api);
    instance.signal(libc::SIGHUP);
    wait_reloaded(&instance, 1);

    let removed = tap(&["copy", "--url", &url, "--limit", "1"]);
    let stderr = String::from_utf8_lossy(&removed.stderr);
    assert_eq!(removed.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("404")
            && stderr.contains("no component `copy` in this pipeline; components: in, out"),
        "the removed sink is gone from the taps: {stderr}"
    );
    // The tap that was open on it ends rather than waiting for events that cannot come.
    let deadline = Instant::now() + DEADLINE;
    let ended = loop {
        if let Some(status) = open_tap.try_wait().expect("wait for the open tap") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = open_tap.kill();
            panic!("the tap on the removed sink did not end within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut open_stderr = String::new();
    std::io::Read::read_to_string(
        open_tap.stderr.as_mut().expect("stderr is piped"),
        &mut open_stderr,
    )
    .expect("read the open tap's stderr");
    assert_eq!(ended.code(), Some(1), "stderr: {open_stderr}");
    assert!(
        open_stderr.contains("the instance ended the stream"),
        "{open_stderr}"
    );

    // What was kept is still tapped, and still carries everything.
    let kept = tap(&["out", "--url", &url, "--limit", "3"]);
    for tapped in tapped_events(&kept, 3) {
        assert_eq!(tapped["component_id"], "out");
        assert_eq!(tapped["port"], "inputs_of");
    }
    let written = feeder.stop();
    instance.signal(libc::SIGTERM);
    assert!(instance.wait_timeout(DEADLINE).success());
    let out: Vec<String> = printed.iter().collect();
    assert_eq!(out, written, "stdout carried every event, in order");
}

fn path(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

#[test]
fn validate_refuses_an_api_beyond_loopback_without_a_token() {
    let workspace = Workspace::new();
    let pipeline = stdin_pipeline(&workspace, "{address: 0.0.0.0:8686, tap: true}");
    let output = Command::new(auditflow_bin())
        .args(["validate", path(&pipeline)])
        .output()
        .expect("run validate");
    // `validate` lists the problems on standard output.
    let report = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "output: {report}");
    assert!(
        report.contains(&format!(
            "{}: api.token_file: api.address 0.0.0.0:8686 is not a loopback address",
            pipeline.display()
        )),
        "the error names the file and the field, and says why: {report}"
    );

    let token = workspace.write("token", "t");
    let pipeline = stdin_pipeline(
        &workspace,
        &format!(
            "{{address: 0.0.0.0:8686, tap: true, token_file: {}}}",
            token.display()
        ),
    );
    let output = Command::new(auditflow_bin())
        .args(["validate", path(&pipeline)])
        .output()
        .expect("run validate");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn top_in_tmux_shows_every_component_with_its_rates_and_quits_on_q() {
    let workspace = Workspace::new();
    let pipeline = workspace.pipeline_with_metrics(
        "127.0.0.1:0",
        "sources:\n  gen: {type: generator, rate_per_sec: 500, seed: 7}\nsinks:\n  drain: {type: blackhole, inputs: [gen]}\n",
    );
    let instance = Auditflow::run(&workspace, &pipeline);
    let metrics = instance.metrics_address(DEADLINE);
    let exit_file = workspace.path().join("top.exit");

    let tmux = Tmux::new("top");
    let command = format!(
        "{} top --url http://{metrics}; echo exit=$? > {}; sleep 600",
        auditflow_bin().display(),
        exit_file.display()
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "30",
        &command,
    ]);

    // Wait for a screen with both components and events flowing through the sink.
    let deadline = Instant::now() + DEADLINE;
    let screen = loop {
        let screen = tmux.run(&["capture-pane", "-p", "-t", "top"]);
        let rate = row(&screen, "drain").and_then(|cells| cells.get(3)?.parse::<f64>().ok());
        if row(&screen, "gen").is_some() && rate.is_some_and(|rate| rate > 0.0) {
            break screen;
        }
        assert!(
            Instant::now() < deadline,
            "top never showed both components with a rate; last screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        screen.contains("IN/S") && screen.contains("KAFKA LAG"),
        "{screen}"
    );
    let gen = row(&screen, "gen").expect("checked");
    assert_eq!(&gen[1..3], ["source", "generator"], "{screen}");
    let out_rate: f64 = gen[4].parse().unwrap_or_else(|_| panic!("{screen}"));
    assert!(out_rate > 0.0, "the source's OUT/S: {screen}");

    tmux.run(&["send-keys", "-t", "top", "q"]);
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(text) = std::fs::read_to_string(&exit_file) {
            assert_eq!(text.trim(), "exit=0", "top exited cleanly on q");
            break;
        }
        assert!(Instant::now() < deadline, "top did not exit on q");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The cells of the table row of component `id`, without the table's borders.
fn row(screen: &str, id: &str) -> Option<Vec<String>> {
    screen.lines().find_map(|line| {
        let cells: Vec<String> = line
            .trim_matches(|c: char| c == '│' || c.is_whitespace())
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        (cells.first().map(String::as_str) == Some(id)).then_some(cells)
    })
}

/// The events a successful `auditflow tap --limit count` printed, one JSON object per line;
/// fails the test unless it exited 0 with exactly `count` lines.
fn tapped_events(output: &std::process::Output, count: usize) -> Vec<serde_json::Value> {
    assert!(
        output.status.success(),
        "tap failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = std::str::from_utf8(&output.stdout)
        .expect("UTF-8")
        .lines()
        .collect();
    assert_eq!(
        lines.len(),
        count,
        "--limit {count} prints {count} events: {lines:?}"
    );
    lines
        .iter()
        .map(|line| serde_json::from_str(line).expect("one JSON line"))
        .collect()
}
