//! How `auditflow run` starts and stops, by exit code: a pipeline that cannot start (a
//! busy port, an unusable checkpoint directory) exits 1 and `validate` still calls it
//! valid; `SIGINT` drains like `SIGTERM` and exits 0; a drain that outlasts
//! `shutdown_timeout_secs`, or a second signal, exits 1.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditflow_e2e::audit_lines::audit_line;
use auditflow_e2e::tls::{Pki, Recorded, Reply, ServerOptions, TestServer};
use auditflow_e2e::{auditflow_bin, Auditflow, Workspace};

fn wait_for_log(process: &Auditflow, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !process.stderr().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log within {timeout:?}:\n{}",
            process.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn validate(dir: &Path, pipeline: &Path) -> std::process::Output {
    Command::new(auditflow_bin())
        .args(["validate".as_ref(), pipeline.as_os_str()])
        .current_dir(dir)
        .output()
        .expect("run auditflow validate")
}

/// Holds a loopback port and writes a pipeline (`data_dir` plus `rest(port)`) that names
/// it: the pipeline is valid (`validate` exits 0), though `run` cannot listen there.
/// Returns the held port, its address and the pipeline file.
fn valid_on_a_taken_port(
    workspace: &Workspace,
    rest: impl FnOnce(std::net::SocketAddr) -> String,
) -> (TcpListener, std::net::SocketAddr, std::path::PathBuf) {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            "data_dir: {}\n{}",
            workspace.path().join("data").display(),
            rest(address)
        ),
    );
    let checked = validate(workspace.path(), &pipeline);
    assert_eq!(checked.status.code(), Some(0), "{checked:?}");
    (taken, address, pipeline)
}

/// A webhook source on a port another process holds: valid (exit 0 from `validate`), but
/// `run` cannot start it: exit 1, with the component and the address in the message.
#[test]
fn a_busy_port_is_a_start_failure_exit_1() {
    let workspace = Workspace::new();
    let (taken, address, pipeline) = valid_on_a_taken_port(&workspace, |address| {
        format!(
            "sources:\n  api:\n    type: webhook\n    address: {address}\n    allow_plaintext: true\n\
             sinks:\n  out: {{ type: blackhole, inputs: [api] }}\n"
        )
    });

    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let status = auditflow.wait_timeout(Duration::from_secs(20));
    let stderr = auditflow.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("sources.api"), "{stderr}");
    assert!(stderr.contains(&address.to_string()), "{stderr}");
    assert!(
        stderr.contains("auditflow: 1 component could not start; nothing was started"),
        "{stderr}"
    );
    drop(taken);
}

/// The metrics endpoint's port is taken: exit 1 too.
#[test]
fn a_busy_metrics_port_is_a_start_failure_exit_1() {
    let workspace = Workspace::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let pipeline = workspace.pipeline_with_metrics(
        address,
        "sources:\n  in: { type: stdin }\nsinks:\n  out: { type: blackhole, inputs: [in] }\n",
    );
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let status = auditflow.wait_timeout(Duration::from_secs(20));
    let stderr = auditflow.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("metrics.address {address}: cannot listen")),
        "{stderr}"
    );
    drop(taken);
}

/// The API's port is taken (docs/operating.md: "At start (exit 1)"): exit 1 too, before
/// any component starts.
#[test]
fn a_busy_api_port_is_a_start_failure_exit_1() {
    let workspace = Workspace::new();
    let (taken, address, pipeline) = valid_on_a_taken_port(&workspace, |address| {
        format!(
            "api:\n  address: {address}\n  tap: true\n\
             sources:\n  in: {{ type: stdin }}\nsinks:\n  out: {{ type: blackhole, inputs: [in] }}\n"
        )
    });

    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let stdin = auditflow.take_stdin();
    let status = auditflow.wait_timeout(Duration::from_secs(20));
    let stderr = auditflow.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("api.address {address}: cannot listen")),
        "{stderr}"
    );
    assert!(!stderr.contains("pipeline started"), "{stderr}");
    drop(stdin);
    drop(taken);
}

/// A file source whose checkpoint directory (`<data_dir>/<id>`) is a regular file cannot
/// keep checkpoints: exit 1, naming the component and what to look at.
#[test]
fn an_unopenable_checkpoint_directory_is_a_start_failure_exit_1() {
    let workspace = Workspace::new();
    let data_dir = workspace.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::write(data_dir.join("logs"), "not a directory").unwrap();
    workspace.write("audit.log", &format!("{}\n", audit_line(0)));
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            "data_dir: {}\nsources:\n  logs:\n    type: file\n    include: [\"{}/*.log\"]\n\
             sinks:\n  out: {{ type: blackhole, inputs: [logs] }}\n",
            data_dir.display(),
            workspace.path().display()
        ),
    );
    let checked = validate(workspace.path(), &pipeline);
    assert_eq!(checked.status.code(), Some(0), "{checked:?}");

    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let status = auditflow.wait_timeout(Duration::from_secs(20));
    let stderr = auditflow.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("sources.logs: cannot use the checkpoint directory"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&data_dir.join("logs").display().to_string()),
        "{stderr}"
    );
}

/// stdin -> https, against a server that refuses (503) until the test opens it.
fn held_back_pipeline(
    workspace: &Workspace,
    server: &TestServer,
    ca: &Path,
    shutdown_timeout_secs: u64,
) -> std::path::PathBuf {
    workspace.write(
        "pipeline.yaml",
        &format!(
            r#"
data_dir: {data_dir}
shutdown_timeout_secs: {shutdown_timeout_secs}
sources:
  in:
    type: stdin
sinks:
  collector:
    type: https
    inputs: [in]
    uri: {uri}
    batch: {{ max_events: 100, timeout_ms: 50 }}
    request: {{ concurrency: 1, retry_initial_backoff_ms: 20, retry_max_backoff_ms: 100 }}
    tls:
      ca_file: {ca}
"#,
            data_dir = workspace.path().join("data").display(),
            uri = server.url("/ingest"),
            ca = ca.display(),
        ),
    )
}

fn gated_server(pki: &Pki, open: &Arc<AtomicBool>) -> TestServer {
    let open = Arc::clone(open);
    TestServer::start(
        pki,
        ServerOptions::responder(move |_: &Recorded| {
            if open.load(Ordering::SeqCst) {
                Reply::ok()
            } else {
                Reply::status(503)
            }
        }),
    )
}

/// `SIGINT` (Ctrl-C) drains like `SIGTERM`: the events already read, held back by a
/// refusing server, are delivered once it accepts, and the process exits 0.
#[test]
fn sigint_drains_the_events_in_flight_and_exits_0() {
    let workspace = Workspace::new();
    let pki = Pki::new("sigint");
    let files = pki.write_to(workspace.path());
    let open = Arc::new(AtomicBool::new(false));
    let server = gated_server(&pki, &open);
    let pipeline = held_back_pipeline(&workspace, &server, &files.ca, 60);
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let mut stdin = auditflow.take_stdin();
    let lines: Vec<String> = (0..5).map(audit_line).collect();
    for line in &lines {
        writeln!(stdin, "{line}").unwrap();
    }
    stdin.flush().unwrap();
    server.wait_until(Duration::from_secs(20), |requests| requests.len() >= 2);

    auditflow.signal(libc::SIGINT);
    wait_for_log(&auditflow, "shutting down", Duration::from_secs(10));
    assert!(
        auditflow.child.try_wait().unwrap().is_none(),
        "exited before its events were delivered"
    );
    open.store(true, Ordering::SeqCst);
    let status = auditflow.wait_timeout(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", auditflow.stderr());
    let delivered: Vec<String> = server
        .requests()
        .iter()
        .filter(|request| request.reply.code() == Some(200))
        .flat_map(|request| {
            request
                .body_str()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(delivered, lines);
    drop(stdin);
}

/// Runs a pipeline whose sink's server refuses everything (`503`), with
/// `shutdown_timeout_secs`, and writes one event: returns once the server saw a request
/// for it. The workspace is returned to keep it alive.
fn one_event_held_back(
    name: &str,
    shutdown_timeout_secs: u64,
) -> (Workspace, TestServer, Auditflow, std::process::ChildStdin) {
    let workspace = Workspace::new();
    let pki = Pki::new(name);
    let files = pki.write_to(workspace.path());
    let open = Arc::new(AtomicBool::new(false));
    let server = gated_server(&pki, &open);
    let pipeline = held_back_pipeline(&workspace, &server, &files.ca, shutdown_timeout_secs);
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let mut stdin = auditflow.take_stdin();
    writeln!(stdin, "{}", audit_line(0)).unwrap();
    stdin.flush().unwrap();
    server.wait_until(Duration::from_secs(20), |requests| !requests.is_empty());
    (workspace, server, auditflow, stdin)
}

fn assert_nothing_accepted(server: &TestServer) {
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.reply.code() == Some(503)),
        "nothing was accepted"
    );
}

/// A drain that cannot finish (the server never accepts) stops when
/// `shutdown_timeout_secs` runs out: exit 1, and the log says what was not checkpointed.
#[test]
fn a_drain_longer_than_shutdown_timeout_secs_exits_1() {
    let (_workspace, server, mut auditflow, stdin) = one_event_held_back("timeout", 1);

    auditflow.signal(libc::SIGTERM);
    let status = auditflow.wait_timeout(Duration::from_secs(30));
    let stderr = auditflow.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("shutdown timed out"), "{stderr}");
    assert_nothing_accepted(&server);
    drop(stdin);
}

/// A second signal while the drain waits on a refusing server: exit 1 at once, without
/// waiting out `shutdown_timeout_secs` (60 s), with nothing delivered.
#[test]
fn a_second_signal_cuts_the_drain_short_and_exits_1() {
    let (_workspace, server, mut auditflow, stdin) = one_event_held_back("second-signal", 60);

    auditflow.signal(libc::SIGTERM);
    wait_for_log(&auditflow, "shutting down", Duration::from_secs(20));
    auditflow.signal(libc::SIGINT);
    // A process that ignored the second signal would exit 1 too, after the 60 s: the log
    // tells the two apart.
    let status = auditflow.wait_timeout(Duration::from_secs(90));
    let stderr = auditflow.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("second signal: exiting now without draining"),
        "{stderr}"
    );
    assert!(!stderr.contains("shutdown timed out"), "{stderr}");
    assert_nothing_accepted(&server);
    drop(stdin);
}
