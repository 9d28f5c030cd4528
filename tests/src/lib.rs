//! Helpers for the end-to-end tests in `tests/tests/`: they run the real `auditflow`
//! binary as a process, against real files, HTTP(S) servers and a Kafka-protocol broker.
//!
//! The binary is `target/debug/auditflow` (or `$AUDITFLOW_BIN`); the project's test
//! command (`scripts/test`) builds it before running the tests.

pub mod audit_lines;
pub mod collector;
pub mod dead_letters;
pub mod kafka;
/// The HTTPS test server, shared with the https sink's unit tests.
pub use auditflow_testkit::tls;
pub mod webhook_client;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The `auditflow` binary under test: `$AUDITFLOW_BIN`, or `target/debug/auditflow`.
///
/// # Panics
/// When `target/debug/auditflow` is missing or older than any source file it was built
/// from (as listed in cargo's `target/debug/auditflow.d`): the tests would otherwise pass
/// or fail on code that is no longer there. `scripts/test` builds it first. A binary named
/// by `$AUDITFLOW_BIN` is taken as it is.
pub fn auditflow_bin() -> PathBuf {
    static CHECKED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(path) = std::env::var_os("AUDITFLOW_BIN") {
        return PathBuf::from(path);
    }
    CHECKED
        .get_or_init(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo_root().join("target"));
            let path = target.join("debug/auditflow");
            let built = std::fs::metadata(&path)
                .and_then(|meta| meta.modified())
                .unwrap_or_else(|error| {
                    panic!(
                        "{}: {error}: build it first with `cargo build -p auditflow` (scripts/test does)",
                        path.display()
                    )
                });
            if let Some(source) = newer_source(&target.join("debug/auditflow.d"), built) {
                panic!(
                    "{} is older than {}: rebuild it with `cargo build -p auditflow` (scripts/test does) so that the tests run the code as it is",
                    path.display(),
                    source.display()
                );
            }
            path
        })
        .clone()
}

/// A source file named in cargo's dep-info file `dep_info` that changed after `built`.
fn newer_source(dep_info: &Path, built: std::time::SystemTime) -> Option<PathBuf> {
    let text = std::fs::read_to_string(dep_info).ok()?;
    // `target: dep dep ...`, with spaces in paths escaped by a backslash.
    let (_, deps) = text.lines().next()?.split_once(": ")?;
    let mut sources = Vec::new();
    let mut current = String::new();
    let mut chars = deps.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            ' ' => sources.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    sources.push(current);
    sources
        .into_iter()
        .filter(|source| !source.is_empty())
        .map(PathBuf::from)
        .find(|source| {
            std::fs::metadata(source)
                .and_then(|meta| meta.modified())
                .is_ok_and(|modified| modified > built)
        })
}

/// The repository root (for `pipelines/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A port on 127.0.0.1 that was free a moment ago, and may be taken by the time it is
/// bound again: only for what cannot listen on `127.0.0.1:0` and say where (a broker that
/// must advertise its port before it binds, an address a test binds twice, one where
/// nothing must listen). Listeners of auditflow's own bind `127.0.0.1:0` and are found in
/// the log: [`Auditflow::metrics_address`], [`Auditflow::webhook_address`].
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("bind 127.0.0.1:0")
}

/// A pipeline file in a fresh temporary directory (which also serves as `data_dir`).
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace {
            dir: tempfile::tempdir().expect("create a temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `name` in the workspace and returns its path.
    /// Writes `pipeline.yaml`: a `data_dir` in the workspace, `/metrics` served on
    /// `address` (`127.0.0.1:0` for any free port), then `components` (the `sources:`,
    /// `transforms:` and `sinks:` sections as YAML).
    pub fn pipeline_with_metrics(
        &self,
        address: impl std::fmt::Display,
        components: &str,
    ) -> PathBuf {
        let data_dir = self.path().join("data");
        self.write(
            "pipeline.yaml",
            &format!(
                "data_dir: {}\nmetrics:\n  address: {address}\n{components}",
                data_dir.display()
            ),
        )
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write a workspace file");
        path
    }
}

impl Default for Workspace {
    fn default() -> Workspace {
        Workspace::new()
    }
}

/// A running `auditflow` process.
pub struct Auditflow {
    pub child: Child,
    stderr_log: PathBuf,
}

impl Auditflow {
    /// Starts `auditflow run <pipeline>` with stdin and stdout piped; stderr goes to a file
    /// in `workspace` (see [`Auditflow::stderr`]).
    pub fn run(workspace: &Workspace, pipeline: &Path) -> Auditflow {
        Auditflow::spawn(workspace, &["run".as_ref(), pipeline.as_os_str()], &[])
    }

    /// Starts the binary with any arguments and extra environment (and `--threads
    /// $E2E_THREADS` after `run`'s arguments when that variable is set).
    pub fn spawn(
        workspace: &Workspace,
        args: &[&std::ffi::OsStr],
        env: &[(&str, &str)],
    ) -> Auditflow {
        let stderr_log = workspace
            .path()
            .join(format!("auditflow-{}.stderr", unique()));
        let stderr = std::fs::File::create(&stderr_log).expect("create the stderr log");
        // `E2E_THREADS=8` runs every pipeline of the suite on that many worker threads
        // (and so transforms at that concurrency).
        let threads = std::env::var("E2E_THREADS")
            .ok()
            .filter(|_| args.first().is_some_and(|first| *first == "run"))
            .map(|threads| vec!["--threads".to_owned(), threads])
            .unwrap_or_default();
        let child = Command::new(auditflow_bin())
            .args(args)
            .args(threads)
            .envs(env.iter().copied())
            .env("AUDITFLOW_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start auditflow");
        Auditflow { child, stderr_log }
    }

    pub fn take_stdin(&mut self) -> ChildStdin {
        self.child.stdin.take().expect("stdin is piped")
    }

    /// Reads stdout on a thread, line by line, handing each line to the returned receiver.
    pub fn stdout_lines(&mut self) -> std::sync::mpsc::Receiver<String> {
        let stdout = self.child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::with_capacity(1 << 20, stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.stderr_log) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// The metrics endpoint's address, read from the line `run` logs once it listens, so
    /// that a pipeline can say `metrics.address: 127.0.0.1:0` and no port is guessed.
    ///
    /// # Panics
    /// When no such line is logged within `timeout`.
    pub fn metrics_address(&self, timeout: Duration) -> String {
        logged_address(&self.stderr_log, METRICS_LISTENING, None, timeout)
    }

    /// The address the webhook source `component_id` listens on, read from the line it logs
    /// once bound, so that its `address: 127.0.0.1:0` takes any free port and no port is
    /// guessed (a port found free and bound again later may be taken in between).
    ///
    /// # Panics
    /// When the source logs no such line within `timeout`.
    pub fn webhook_address(&self, component_id: &str, timeout: Duration) -> SocketAddr {
        let address = logged_address(
            &self.stderr_log,
            WEBHOOK_LISTENING,
            Some(component_id),
            timeout,
        );
        address.parse().unwrap_or_else(|error| {
            panic!("webhook {component_id} logged the address {address:?}: {error}")
        })
    }

    pub fn signal(&self, signal: libc::c_int) {
        let status = send_signal(self.child.id(), signal);
        assert!(status, "could not signal auditflow");
    }

    /// Waits for the process to exit, failing the test after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for auditflow") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "auditflow did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Auditflow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `run` logs once the metrics endpoint listens, with the bound `address=`.
pub const METRICS_LISTENING: &str = "serving /metrics, /health and /ready";

/// What a webhook source logs once it listens, with its `component_id=` and bound `address=`.
pub const WEBHOOK_LISTENING: &str = "webhook source listening";

/// The `address=` field of the last line in the log file `stderr` that says `message` (and
/// names `component_id`, when given), waiting up to `timeout` for one: how a test learns
/// which port a listener configured as `127.0.0.1:0` took.
///
/// # Panics
/// When no such line is logged within `timeout`.
pub fn logged_address(
    stderr: &Path,
    message: &str,
    component_id: Option<&str>,
    timeout: Duration,
) -> String {
    let id_field = component_id.map(|id| format!("component_id={id}"));
    let deadline = Instant::now() + timeout;
    loop {
        let log = std::fs::read_to_string(stderr).unwrap_or_default();
        let found = log
            .lines()
            .rev()
            .filter(|line| line.contains(message))
            .filter(|line| {
                id_field
                    .as_deref()
                    .is_none_or(|id| line.split_whitespace().any(|field| field == id))
            })
            .find_map(|line| {
                let value = line
                    .split_whitespace()
                    .find_map(|field| field.strip_prefix("address="))?;
                Some(value.trim_matches('"').to_owned())
            });
        if let Some(address) = found {
            return address;
        }
        assert!(
            Instant::now() < deadline,
            "no {message:?} line{} with an address logged within {timeout:?} in {}:\n{log}",
            component_id
                .map(|id| format!(" for {id}"))
                .unwrap_or_default(),
            stderr.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `kill -SIGNAL pid` (std has no signal API, and the workspace forbids `unsafe`).
fn send_signal(pid: u32, signal: libc::c_int) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed) * 1000 + u64::from(std::process::id() % 1000)
}

/// GETs `http://address/path` with a plain HTTP/1.1 request; returns (status, body).
pub fn http_get(address: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Waits until `GET /ready` on the metrics address answers 200.
pub fn wait_ready(address: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok((200, _)) = http_get(address, "/ready") {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("auditflow at {address} was not ready within {timeout:?}");
}

/// The value of one series in Prometheus text: `name` followed by labels that contain
/// every `key="value"` in `labels`. Sums over matching series.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let matches = labels
            .iter()
            .all(|(key, value)| rest.contains(&format!("{key}=\"{value}\"")));
        if !matches {
            continue;
        }
        let value: f64 = rest.rsplit(' ').next()?.parse().ok()?;
        found = Some(found.unwrap_or(0.0) + value);
    }
    found
}

/// Compares `actual` with the golden file `tests/golden/<name>`, failing the test with a
/// diff-friendly message when they differ or the file is missing.
///
/// A test never rewrites a golden file: the output of a failing comparison is saved to
/// `target/golden-actual/<name>`, and `scripts/update-goldens` (the one way to accept new
/// output) copies those over the goldens after showing the diff.
///
/// # Panics
/// When the output differs from the golden file, the golden file is missing, or
/// `UPDATE_GOLDEN` is set (it rewrote goldens once; a run with it set must not pass).
pub fn assert_golden(name: &str, actual: &str) {
    assert!(
        std::env::var_os("UPDATE_GOLDEN").is_none(),
        "UPDATE_GOLDEN is set, but tests never rewrite golden files: unset it, run the tests, and accept new output with scripts/update-goldens"
    );
    let path = repo_root().join("tests/golden").join(name);
    let expected = std::fs::read_to_string(&path).ok();
    if expected.as_deref() == Some(actual) {
        return;
    }
    let saved = repo_root().join("target/golden-actual").join(name);
    if let Some(parent) = saved.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let _ = std::fs::write(&saved, actual);
    match expected {
        None => panic!(
            "{} is missing; this run printed (saved to {}; scripts/update-goldens accepts it):\n{actual}",
            path.display(),
            saved.display()
        ),
        Some(expected) => {
            assert_eq!(
                actual,
                expected,
                "output differs from {} (saved to {}; scripts/update-goldens accepts it)",
                path.display(),
                saved.display()
            );
        }
    }
}

/// `auditflow <args>` as a command that sees none of the test environment's `AUDITFLOW_*`
/// (or `E2E_*`) variables: only what the test sets reaches the binary.
pub fn clean_command(args: &[&str]) -> Command {
    let mut command = Command::new(auditflow_bin());
    command.args(args);
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("AUDITFLOW_") || text.starts_with("E2E_") {
            command.env_remove(name);
        }
    }
    command
}

/// Runs [`clean_command`] in `dir` with `env`, feeds `input` on stdin and closes it, and
/// waits for the process to end.
pub fn run_to_end(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    input: &[u8],
) -> std::process::Output {
    let mut child = clean_command(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run auditflow");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    std::io::Write::write_all(&mut stdin, input).expect("write auditflow's stdin");
    drop(stdin);
    child.wait_with_output().expect("wait for auditflow")
}

/// A tmux server of the test's own (its own socket), killed when the test ends.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// A server on a socket named after this process and `name`.
    pub fn new(name: &str) -> Tmux {
        Tmux {
            socket: format!("auditflow-{name}-{}", std::process::id()),
        }
    }

    /// Runs `tmux ARGS` on this server; fails the test unless it succeeds; its stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let output = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux is installed (scripts/test installs it)");
        assert!(
            output.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}
