//! Reloading a running pipeline (`SIGHUP`, `run --watch`) through the real binary: a
//! filter's condition changed twice under 1,000 events/s from a webhook client loses
//! nothing and shows the new behaviour at once, on the same kept-alive connection; an
//! invalid change leaves the old pipeline running and says what is wrong; a file source
//! that did not change keeps its position when only a transform behind it changed; a
//! webhook source rebuilt on the same address keeps its socket, so that a client sending
//! throughout is never refused and loses nothing; a changed policy file is read again; a
//! changed stdin source goes on reading where the old one stopped; a source whose new
//! port is taken keeps its old options until a later reload.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditflow_e2e::audit_lines::{audit_id, audit_line};
use auditflow_e2e::webhook_client::WebhookClient;
use auditflow_e2e::{clean_command, free_port, http_get, metric, wait_ready, Auditflow, Workspace};
use bytes::Bytes;

const RELOADS: &str = "auditflow_reloads_total";
const DEADLINE: Duration = Duration::from_secs(60);

/// A condition on the last digit of an `auditID` (`audit_id(i)` ends in `i`'s last digit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    Even,
    Odd,
    Fives,
}

impl Keep {
    fn condition(self) -> &'static str {
        match self {
            Keep::Even => r#"auditID matches "[02468]$""#,
            Keep::Odd => r#"auditID matches "[13579]$""#,
            Keep::Fives => r#"auditID matches "[05]$""#,
        }
    }

    fn keeps(self, i: usize) -> bool {
        match self {
            Keep::Even => i.is_multiple_of(2),
            Keep::Odd => i % 2 == 1,
            Keep::Fives => i.is_multiple_of(5),
        }
    }
}

fn scrape(metrics: &str) -> String {
    let (status, body) = http_get(metrics, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    body
}

/// Waits until `auditflow_reloads_total{result}` reaches `count`.
fn wait_reloads(auditflow: &Auditflow, metrics: &str, result: &str, count: f64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let value = metric(&scrape(metrics), RELOADS, &[("result", result)]);
        if value == Some(count) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{RELOADS}{{result={result:?}}} is {value:?}, not {count}, after {DEADLINE:?}; stderr:\n{}",
            auditflow.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `hash` label of every `auditflow_config_hash` series.
fn config_hashes(metrics: &str) -> Vec<String> {
    scrape(metrics)
        .lines()
        .filter_map(|line| line.strip_prefix("auditflow_config_hash{hash=\""))
        .filter_map(|rest| rest.split('"').next().map(str::to_owned))
        .collect()
}

/// Rewrites `path` as an editor does: a new file renamed over the old one.
fn rewrite(path: &Path, contents: &str) {
    let temporary = path.with_extension("yaml.new");
    std::fs::write(&temporary, contents).expect("write the new pipeline");
    std::fs::rename(&temporary, path).expect("rename it over the old one");
}

/// The `auditID` of every line of the files `out*` in `dir`, in order, with how many times
/// each came.
fn arrived_ids(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
            event["auditID"].as_str().expect("an auditID").to_owned()
        })
        .collect()
}

/// One request of the load: which events, when it went, when it was acknowledged.
struct Sent {
    first: usize,
    count: usize,
    started: Instant,
    answered: Instant,
}

impl Sent {
    /// The request of `count` events from `first`, sent at `started`, answered now.
    fn answered_now(first: usize, count: usize, started: Instant) -> Sent {
        Sent {
            first,
            count,
            started,
            answered: Instant::now(),
        }
    }
}

/// An `EventList` of the lines `range` of [`audit_line`].
fn event_list(range: std::ops::Range<usize>) -> Bytes {
    let items: Vec<String> = range.map(audit_line).collect();
    Bytes::from(format!(
        r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{}]}}"#,
        items.join(",")
    ))
}

/// A plain-HTTP client of the webhook source at `address`, with one connection open.
async fn plain_connection(
    address: SocketAddr,
) -> (WebhookClient, auditflow_e2e::webhook_client::Connection) {
    let client = WebhookClient::plain(address);
    let connection = client
        .connect()
        .await
        .expect("connect to the webhook source");
    (client, connection)
}

/// What the test and its load clients share: how many requests were answered so far, and
/// whether to stop. The test waits for answers to be counted, never for time to pass.
#[derive(Default)]
struct LoadControl {
    answered: AtomicUsize,
    stop: AtomicBool,
}

impl LoadControl {
    /// Waits until `more` requests beyond those answered so far are answered.
    async fn wait_answered(&self, more: usize) {
        let target = self.answered.load(Ordering::SeqCst) + more;
        let deadline = Instant::now() + DEADLINE;
        while self.answered.load(Ordering::SeqCst) < target {
            assert!(
                Instant::now() < deadline,
                "{} of {target} requests answered after {DEADLINE:?}",
                self.answered.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Posts `EventList`s of `per_request` events every `every`, on one kept-alive connection,
/// until `control` says stop; every answer must be 200 (each request is acknowledged only
/// once its events are written or filtered), and is counted in `control`. Events are
/// numbered from `first`. Returns what was sent.
async fn load(
    address: SocketAddr,
    first: usize,
    per_request: usize,
    every: Duration,
    control: Arc<LoadControl>,
) -> Vec<Sent> {
    let (_client, mut connection) = plain_connection(address).await;
    let mut sent = Vec::new();
    let mut next = first;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while !control.stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let body = event_list(next..next + per_request);
        let started = Instant::now();
        let answer = connection
            .post(
                "/audit?timeout=30s",
                &[("Content-Type", "application/json")],
                body,
            )
            .await
            .expect("the kept-alive connection to the webhook source still answers");
        assert_eq!(answer.status, 200, "request from {next}: {}", answer.body);
        sent.push(Sent::answered_now(next, per_request, started));
        control.answered.fetch_add(1, Ordering::SeqCst);
        next += per_request;
    }
    sent
}

/// A webhook source `api` on `webhook` -> filter `keep` -> file sink `out`; the metrics
/// endpoint on any free port (the same words in every version of the file, so that a
/// reload leaves it as it is).
fn webhook_pipeline(workspace: &Workspace, webhook: SocketAddr, keep: Keep) -> String {
    format!(
        "data_dir: {data}\n\
         metrics:\n  address: 127.0.0.1:0\n\
         sources:\n  api:\n    type: webhook\n    address: {webhook}\n    path: /audit\n    allow_plaintext: true\n\
         transforms:\n  keep:\n    type: filter\n    inputs: [api]\n    condition: '{condition}'\n\
         sinks:\n  out:\n    type: file\n    inputs: [keep]\n    path: {out}\n",
        data = workspace.path().join("data").display(),
        condition = keep.condition(),
        out = workspace.path().join("out.log").display(),
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Hangup,
    Watch,
}

/// The issue's test: the filter's condition changes twice under load, by `trigger`.
async fn reload_under_load(trigger: Trigger) {
    let workspace = Workspace::new();
    // Any free port, in every version of the file: the source is not rebuilt.
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let pipeline = workspace.write(
        "pipeline.yaml",
        &webhook_pipeline(&workspace, any_port, Keep::Even),
    );
    let mut args = vec!["run".as_ref(), pipeline.as_os_str()];
    if trigger == Trigger::Watch {
        args.push("--watch".as_ref());
    }
    let mut auditflow = Auditflow::spawn(&workspace, &args, &[]);
    let metrics = auditflow.metrics_address(DEADLINE);
    wait_ready(&metrics, DEADLINE);
    let webhook = auditflow.webhook_address("api", DEADLINE);
    let hash_before = config_hashes(&metrics);
    assert_eq!(hash_before.len(), 1, "one auditflow_config_hash series");

    // 1,000 events/s: 4 clients (as the API server's several connections), each 25
    // events every 100 ms, each acknowledged before that client sends the next.
    let control = Arc::new(LoadControl::default());
    let senders: Vec<_> = (0..4)
        .map(|client| {
            let every = Duration::from_millis(100);
            tokio::spawn(load(
                webhook,
                client * 1_000_000,
                25,
                every,
                Arc::clone(&control),
            ))
        })
        .collect();
    // About 1.5 s of load between changes, counted in answers rather than timed, so that
    // a slow machine stretches the test instead of failing it.
    const REQUESTS_BETWEEN_CHANGES: usize = 60;

    // (the moment the change was asked for, the moment the reload was seen done, the
    // condition in force after it)
    let mut reloads: Vec<(Instant, Instant, Keep)> = Vec::new();
    for (n, keep) in [Keep::Odd, Keep::Fives].into_iter().enumerate() {
        control.wait_answered(REQUESTS_BETWEEN_CHANGES).await;
        let asked = Instant::now();
        rewrite(&pipeline, &webhook_pipeline(&workspace, any_port, keep));
        if trigger == Trigger::Hangup {
            auditflow.signal(libc::SIGHUP);
        }
        let (auditflow_ref, metrics_ref) = (&auditflow, metrics.clone());
        let count = (n + 1) as f64;
        tokio::task::block_in_place(|| wait_reloads(auditflow_ref, &metrics_ref, "ok", count));
        reloads.push((asked, Instant::now(), keep));
    }
    control.wait_answered(REQUESTS_BETWEEN_CHANGES).await;
    control.stop();
    let mut sent = Vec::new();
    for sender in senders {
        sent.extend(sender.await.expect("the load ran to the end"));
    }

    let text = scrape(&metrics);
    assert_eq!(metric(&text, RELOADS, &[("result", "ok")]), Some(2.0));
    assert_eq!(metric(&text, RELOADS, &[("result", "failed")]), Some(0.0));
    let hash_after = config_hashes(&metrics);
    assert_eq!(hash_after.len(), 1, "the old hash series is removed");
    assert_ne!(hash_after, hash_before);

    auditflow.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| auditflow.wait_timeout(DEADLINE));
    assert!(
        status.success(),
        "exit {status:?}; stderr:\n{}",
        auditflow.stderr()
    );
    let stderr = auditflow.stderr();
    assert!(
        stderr.contains("pipeline reloaded") && stderr.contains("changed=[\"keep\"]"),
        "the reload says what it rebuilt; stderr:\n{stderr}"
    );

    // Every request was acknowledged, so each of its events is in the file or was
    // filtered by the condition in force when the filter saw it: the one before the
    // change if acknowledged before it was asked for, the new one if sent after it was
    // seen done, one or the other (for the whole request) in between.
    let ids = arrived_ids(&workspace.path().join("out.log"));
    let mut times: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &ids {
        *times.entry(id.as_str()).or_default() += 1;
    }
    let duplicates: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicates.is_empty(), "duplicates: {duplicates:?}");
    let arrived: HashSet<&str> = times.keys().copied().collect();
    let events: usize = sent.iter().map(|request| request.count).sum();
    let mut expected = 0;
    let mut seen_after = [0usize; 2];
    for request in &sent {
        let mut candidates = Vec::new();
        let mut before = Keep::Even;
        for (n, (asked, done, keep)) in reloads.iter().enumerate() {
            if request.answered < *asked {
                break;
            }
            if request.started > *done {
                before = *keep;
                seen_after[n] += 1;
                continue;
            }
            candidates.push(*keep);
        }
        candidates.push(before);
        let range = request.first..request.first + request.count;
        let got: Vec<bool> = range
            .clone()
            .map(|i| arrived.contains(audit_id(i).as_str()))
            .collect();
        let matching = candidates
            .iter()
            .find(|keep| range.clone().map(|i| keep.keeps(i)).eq(got.iter().copied()));
        let Some(keep) = matching else {
            panic!(
                "request from {} ({} events): arrived {got:?}, which no condition in force ({candidates:?}) gives",
                request.first, request.count
            );
        };
        expected += range.filter(|i| keep.keeps(*i)).count();
    }
    assert_eq!(
        ids.len(),
        expected,
        "every kept event arrived, and nothing else"
    );
    // The new behaviour was visible right after each reload, under load.
    assert!(
        seen_after.iter().all(|n| *n > 10),
        "requests sent after each reload: {seen_after:?}"
    );
    let begun = sent
        .iter()
        .map(|request| request.started)
        .min()
        .expect("requests");
    let ended = sent
        .iter()
        .map(|request| request.answered)
        .max()
        .expect("requests");
    let seconds = ended.duration_since(begun).as_secs_f64();
    eprintln!(
        "{events} events in {} requests over {seconds:.1} s ({:.0} events/s); {} written",
        sent.len(),
        events as f64 / seconds,
        ids.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_changed_twice_by_sighup_under_load_loses_nothing() {
    reload_under_load(Trigger::Hangup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_changed_twice_under_watch_loses_nothing() {
    reload_under_load(Trigger::Watch).await;
}

/// A file source `tail` reading `audit.log` -> filter `keep` -> file sink `out`; the
/// metrics endpoint on any free port.
fn file_pipeline(workspace: &Workspace, condition: &str) -> String {
    format!(
        "data_dir: {data}\n\
         metrics:\n  address: 127.0.0.1:0\n\
         sources:\n  tail:\n    type: file\n    include: [{log}]\n\
         transforms:\n  keep:\n    type: filter\n    inputs: [tail]\n    condition: '{condition}'\n\
         sinks:\n  out:\n    type: file\n    inputs: [keep]\n    path: {out}\n",
        data = workspace.path().join("data").display(),
        log = workspace.path().join("audit.log").display(),
        out = workspace.path().join("out.log").display(),
    )
}

fn append_lines(path: &Path, lines: std::ops::Range<usize>) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open audit.log");
    for i in lines {
        writeln!(file, "{}", audit_line(i)).expect("append a line");
    }
}

/// Waits until `out.log` holds `count` lines.
fn wait_lines(auditflow: &Auditflow, out: &Path, count: usize) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let ids = arrived_ids(out);
        if ids.len() >= count {
            return ids;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} lines in {} after {DEADLINE:?}; stderr:\n{}",
            ids.len(),
            out.display(),
            auditflow.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_file_pipeline(workspace: &Workspace, condition: &str) -> (Auditflow, PathBuf, String) {
    let pipeline = workspace.write("pipeline.yaml", &file_pipeline(workspace, condition));
    let auditflow = Auditflow::run(workspace, &pipeline);
    let metrics = auditflow.metrics_address(DEADLINE);
    wait_ready(&metrics, DEADLINE);
    (auditflow, pipeline, metrics)
}

#[test]
fn an_unchanged_file_source_keeps_its_position_when_a_transform_behind_it_changes() {
    let workspace = Workspace::new();
    let log = workspace.path().join("audit.log");
    let out = workspace.path().join("out.log");
    append_lines(&log, 0..500);
    let (mut auditflow, pipeline, metrics) =
        start_file_pipeline(&workspace, Keep::Even.condition());
    let first = wait_lines(&auditflow, &out, 250);
    let hash_before = config_hashes(&metrics);

    rewrite(&pipeline, &file_pipeline(&workspace, Keep::Odd.condition()));
    auditflow.signal(libc::SIGHUP);
    wait_reloads(&auditflow, &metrics, "ok", 1.0);
    append_lines(&log, 500..1000);
    let ids = wait_lines(&auditflow, &out, 500);
    let hash_after = config_hashes(&metrics);
    assert_eq!(hash_after.len(), 1, "the old hash series is removed");
    assert_ne!(hash_after, hash_before);
    auditflow.signal(libc::SIGTERM);
    assert!(auditflow.wait_timeout(DEADLINE).success());

    // Before: the even lines of the first 500; after: the odd lines of the next 500, and
    // the first 500 not read again (the odd ones among them would show up).
    let expected: Vec<String> = (0..500)
        .filter(|i| Keep::Even.keeps(*i))
        .chain((500..1000).filter(|i| Keep::Odd.keeps(*i)))
        .map(audit_id)
        .collect();
    assert_eq!(first.len(), 250);
    assert_eq!(ids, expected);
    let stderr = auditflow.stderr();
    assert!(
        stderr.contains("changed=[\"keep\"]") && stderr.contains("unchanged=2"),
        "only the filter was rebuilt; stderr:\n{stderr}"
    );
}

#[test]
fn a_changed_policy_file_is_read_again_by_sighup_though_the_pipeline_file_is_unchanged() {
    let workspace = Workspace::new();
    let log = workspace.path().join("audit.log");
    let out = workspace.path().join("out.log");
    let policy = workspace.write(
        "policy.yaml",
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n",
    );
    let pipeline = workspace.write(
        "pipeline.yaml",
        &file_pipeline(&workspace, "true").replace(
            "    type: filter\n    inputs: [tail]\n    condition: 'true'\n",
            &format!(
                "    type: audit_policy\n    inputs: [tail]\n    policy_file: {}\n",
                policy.display()
            ),
        ),
    );
    assert!(std::fs::read_to_string(&pipeline)
        .unwrap()
        .contains("audit_policy"));
    append_lines(&log, 0..200);
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let metrics = auditflow.metrics_address(DEADLINE);
    wait_ready(&metrics, DEADLINE);
    wait_lines(&auditflow, &out, 200);
    let hash_before = config_hashes(&metrics);

    // Only the policy changes: `get` requests are no longer logged.
    rewrite(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n  verbs: [get]\n- level: Metadata\n",
    );
    auditflow.signal(libc::SIGHUP);
    wait_reloads(&auditflow, &metrics, "ok", 1.0);
    let verb = |i: usize| -> String {
        let event: serde_json::Value = serde_json::from_str(&audit_line(i)).unwrap();
        event["verb"].as_str().unwrap().to_owned()
    };
    let kept_after: Vec<usize> = (200..600).filter(|i| verb(*i) != "get").collect();
    assert!(kept_after.len() < 400, "the capture has get requests");
    append_lines(&log, 200..600);
    let ids = wait_lines(&auditflow, &out, 200 + kept_after.len());
    assert_ne!(
        config_hashes(&metrics),
        hash_before,
        "the hash covers the policy"
    );
    auditflow.signal(libc::SIGTERM);
    assert!(auditflow.wait_timeout(DEADLINE).success());

    let expected: Vec<String> = (0..200).chain(kept_after).map(audit_id).collect();
    assert_eq!(ids, expected);
    let stderr = auditflow.stderr();
    assert!(
        stderr.contains("changed=[\"keep\"]") && stderr.contains("unchanged=2"),
        "only the transform naming the policy was rebuilt; stderr:\n{stderr}"
    );
}

#[test]
fn an_invalid_change_keeps_the_old_pipeline_running_and_says_what_is_wrong() {
    let workspace = Workspace::new();
    let log = workspace.path().join("audit.log");
    let out = workspace.path().join("out.log");
    append_lines(&log, 0..100);
    let (mut auditflow, pipeline, metrics) =
        start_file_pipeline(&workspace, Keep::Even.condition());
    wait_lines(&auditflow, &out, 50);
    let hash_before = config_hashes(&metrics);

    // Two problems: a condition that does not parse, and an option the sink does not have.
    let broken = file_pipeline(&workspace, r#"auditID matches "[13579]$" and"#)
        .replace("    path: ", "    max_bytez: 5\n    path: ");
    rewrite(&pipeline, &broken);
    let validate = clean_command(&["validate", &pipeline.display().to_string()])
        .output()
        .expect("run auditflow validate");
    assert_eq!(validate.status.code(), Some(2));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&validate.stdout),
        String::from_utf8_lossy(&validate.stderr)
    );
    let problems: Vec<String> = report
        .lines()
        .filter(|line| line.starts_with(&pipeline.display().to_string()))
        .map(str::to_owned)
        .collect();
    assert_eq!(problems.len(), 2, "validate finds both: {problems:?}");

    auditflow.signal(libc::SIGHUP);
    wait_reloads(&auditflow, &metrics, "failed", 1.0);
    let stderr = auditflow.stderr();
    for problem in &problems {
        assert!(
            stderr.contains(problem.as_str()),
            "the log names {problem:?}; stderr:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("the running pipeline is unchanged"),
        "{stderr}"
    );

    // The old pipeline still runs, with the old condition.
    append_lines(&log, 100..200);
    let ids = wait_lines(&auditflow, &out, 100);
    let expected: Vec<String> = (0..200)
        .filter(|i| Keep::Even.keeps(*i))
        .map(audit_id)
        .collect();
    assert_eq!(ids, expected);
    let text = scrape(&metrics);
    assert_eq!(metric(&text, RELOADS, &[("result", "ok")]), Some(0.0));
    assert_eq!(config_hashes(&metrics), hash_before);
    auditflow.signal(libc::SIGTERM);
    assert!(auditflow.wait_timeout(DEADLINE).success());
}

/// `tail` (file source, with `extra` options) -> `keep` (even lines) -> one file sink per
/// `(id, file)` in `sinks`, each behind a disk buffer (so a replaced sink hands its buffer
/// over to its successor). The metrics endpoint is on any free port.
fn sinks_pipeline(workspace: &Workspace, extra: &str, sinks: &[(&str, &str)]) -> String {
    let mut text = format!(
        "data_dir: {data}\n\
         metrics:\n  address: 127.0.0.1:0\n\
         sources:\n  tail:\n    type: file\n    include: [{log}]\n{extra}\
         transforms:\n  keep:\n    type: filter\n    inputs: [tail]\n    condition: '{condition}'\n\
         sinks:\n",
        data = workspace.path().join("data").display(),
        log = workspace.path().join("audit.log").display(),
        condition = Keep::Even.condition(),
    );
    for (id, file) in sinks {
        text.push_str(&format!(
            "  {id}:\n    type: file\n    inputs: [keep]\n    path: {}\n\
             \x20   buffer:\n      type: disk\n      max_bytes: 16777216\n",
            workspace.path().join(file).display()
        ));
    }
    text
}

#[test]
fn changed_added_and_removed_sinks_and_a_changed_file_source_lose_and_repeat_nothing() {
    let workspace = Workspace::new();
    let log = workspace.path().join("audit.log");
    let path = |name: &str| workspace.path().join(name);
    let even = |range: std::ops::Range<usize>| -> Vec<String> {
        range
            .filter(|i| Keep::Even.keeps(*i))
            .map(audit_id)
            .collect()
    };
    append_lines(&log, 0..200);
    let pipeline = workspace.write(
        "pipeline.yaml",
        &sinks_pipeline(&workspace, "", &[("out", "a.log")]),
    );
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let metrics = auditflow.metrics_address(DEADLINE);
    wait_ready(&metrics, DEADLINE);
    wait_lines(&auditflow, &path("a.log"), 100);

    // `out` now writes b.log; `copy` is added.
    rewrite(
        &pipeline,
        &sinks_pipeline(&workspace, "", &[("out", "b.log"), ("copy", "copy.log")]),
    );
    auditflow.signal(libc::SIGHUP);
    wait_reloads(&auditflow, &metrics, "ok", 1.0);
    append_lines(&log, 200..400);
    wait_lines(&auditflow, &path("b.log"), 100);
    wait_lines(&auditflow, &path("copy.log"), 100);

    // The source changes (it restarts from its checkpoint); `copy` is removed.
    rewrite(
        &pipeline,
        &sinks_pipeline(
            &workspace,
            "    glob_interval_ms: 200\n",
            &[("out", "b.log")],
        ),
    );
    auditflow.signal(libc::SIGHUP);
    wait_reloads(&auditflow, &metrics, "ok", 2.0);
    append_lines(&log, 400..600);
    wait_lines(&auditflow, &path("b.log"), 200);
    auditflow.signal(libc::SIGTERM);
    assert!(auditflow.wait_timeout(DEADLINE).success());

    assert_eq!(arrived_ids(&path("a.log")), even(0..200));
    assert_eq!(
        arrived_ids(&path("b.log")),
        even(200..600),
        "nothing lost, nothing twice"
    );
    assert_eq!(arrived_ids(&path("copy.log")), even(200..400));
    let stderr = auditflow.stderr();
    assert!(
        stderr.contains("added=[\"copy\"] changed=[\"out\"] removed=[]")
            && stderr.contains("added=[] changed=[\"tail\"] removed=[\"copy\"]"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_source_rebuilt_on_the_same_address_answers_again() {
    let workspace = Workspace::new();
    // A port named in the file, the same before and after the reload: the point is to bind
    // it again, so the test picks one that was free rather than `127.0.0.1:0`.
    let webhook = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let pipeline_with = |max_body_bytes: usize| {
        webhook_pipeline(&workspace, webhook, Keep::Even).replace(
            "    allow_plaintext: true\n",
            &format!("    allow_plaintext: true\n    max_body_bytes: {max_body_bytes}\n"),
        )
    };
    let pipeline = workspace.write("pipeline.yaml", &pipeline_with(1 << 20));
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let metrics = auditflow.metrics_address(DEADLINE);
    wait_ready(&metrics, DEADLINE);
    let control = Arc::new(LoadControl::default());
    let before = tokio::spawn(load(
        webhook,
        0,
        10,
        Duration::from_millis(20),
        Arc::clone(&control),
    ));
    control.wait_answered(25).await;
    control.stop();
    let before = before.await.expect("the first client ran");

    rewrite(&pipeline, &pipeline_with(2 << 20));
    auditflow.signal(libc::SIGHUP);
    let (auditflow_ref, metrics_ref) = (&auditflow, metrics.clone());
    tokio::task::block_in_place(|| wait_reloads(auditflow_ref, &metrics_ref, "ok", 1.0));
    // The new instance takes the old one's socket over once that one stopped.
    let control = Arc::new(LoadControl::default());
    let deadline = Instant::now() + DEADLINE;
    while tokio::net::TcpStream::connect(webhook).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {webhook} again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = tokio::spawn(load(
        webhook,
        100_000,
        10,
        Duration::from_millis(20),
        Arc::clone(&control),
    ));
    control.wait_answered(25).await;
    control.stop();
    let after = after.await.expect("the second client ran");
    auditflow.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| auditflow.wait_timeout(DEADLINE));
    assert!(status.success(), "{}", auditflow.stderr());

    let expected: Vec<String> = before
        .iter()
        .chain(&after)
        .flat_map(|request| request.first..request.first + request.count)
        .filter(|i| Keep::Even.keeps(*i))
        .map(audit_id)
        .collect();
    assert!(!after.is_empty());
    assert_eq!(arrived_ids(&workspace.path().join("out.log")), expected);
    assert!(auditflow.stderr().contains("changed=[\"api\"]"));
}

/// The addresses the webhook source logged it listens on, one per instance started.
fn webhook_listening(auditflow: &Auditflow) -> Vec<SocketAddr> {
    auditflow
        .stderr()
        .lines()
        .filter(|line| line.contains("webhook source listening"))
        .filter_map(|line| {
            let (_, rest) = line.split_once("address=")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// Posts `per_request` events at a time on one kept-alive connection, with the bearer
/// token, until `control` says stop, counting the answers in it. A connection the server closes (an instance that stops
/// drains its connections as at shutdown) is opened again and the unanswered request sent
/// again; a refused connect fails the test. Returns what was acknowledged and how many
/// times the connection was opened again.
async fn send_across_reloads(
    address: SocketAddr,
    per_request: usize,
    control: Arc<LoadControl>,
) -> (Vec<Sent>, usize) {
    let (client, mut connection) = plain_connection(address).await;
    let mut sent = Vec::new();
    let mut reconnects = 0;
    let mut next = 0;
    while !control.stop.load(Ordering::SeqCst) {
        let body = event_list(next..next + per_request);
        let started = Instant::now();
        let headers = [
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer s3cret-token"),
        ];
        match connection.post("/audit?timeout=30s", &headers, body).await {
            Ok(answer) => {
                assert_eq!(answer.status, 200, "request from {next}: {}", answer.body);
                sent.push(Sent::answered_now(next, per_request, started));
                control.answered.fetch_add(1, Ordering::SeqCst);
                next += per_request;
            }
            Err(_) => {
                reconnects += 1;
                connection = client.connect().await.unwrap_or_else(|error| {
                    panic!("connecting to {address} again after {next} events: {error}")
                });
            }
        }
    }
    (sent, reconnects)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_source_rebuilt_on_the_same_address_keeps_its_socket_and_refuses_nothing() {
    let workspace = Workspace::new();
    let metrics = format!("127.0.0.1:{}", free_port());
    let out = workspace.path().join("out.log");
    let pipeline_with = |tokens_file: &Path| {
        format!(
            "data_dir: {data}\n\
             metrics:\n  address: {metrics}\n\
             sources:\n  api:\n    type: webhook\n    address: 127.0.0.1:0\n    path: /audit\n    allow_plaintext: true\n\
             \x20   auth:\n      bearer_tokens_file: {tokens}\n\
             sinks:\n  out:\n    type: file\n    inputs: [api]\n    path: {out}\n",
            data = workspace.path().join("data").display(),
            tokens = tokens_file.display(),
            out = out.display(),
        )
    };
    let first_tokens = workspace.write("tokens", "s3cret-token\n");
    let rotated_tokens = workspace.write("tokens-rotated", "s3cret-token\nnext-token\n");
    let pipeline = workspace.write("pipeline.yaml", &pipeline_with(&first_tokens));
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    wait_ready(&metrics, DEADLINE);
    let listening = webhook_listening(&auditflow);
    assert_eq!(listening.len(), 1, "{}", auditflow.stderr());
    let address = listening[0];

    let control = Arc::new(LoadControl::default());
    let client = tokio::spawn(send_across_reloads(address, 10, Arc::clone(&control)));
    control.wait_answered(50).await;

    // The tokens file moves: the source is rebuilt, on the same address.
    rewrite(&pipeline, &pipeline_with(&rotated_tokens));
    auditflow.signal(libc::SIGHUP);
    let (auditflow_ref, metrics_ref) = (&auditflow, metrics.clone());
    tokio::task::block_in_place(|| wait_reloads(auditflow_ref, &metrics_ref, "ok", 1.0));
    let deadline = Instant::now() + DEADLINE;
    while webhook_listening(&auditflow).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the rebuilt webhook source never listened; stderr:\n{}",
            auditflow.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    control.wait_answered(50).await;
    control.stop();
    let (sent, reconnects) = client.await.expect("the client ran to the end");

    auditflow.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| auditflow.wait_timeout(DEADLINE));
    let stderr = auditflow.stderr();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("changed=[\"api\"]"), "{stderr}");
    assert_eq!(
        webhook_listening(&auditflow),
        [address, address],
        "the new instance listens on the socket of the old one (port 0 kept its port)"
    );

    // Every acknowledged event was written; an event twice only where a request was sent
    // again after its connection closed unanswered.
    let ids = arrived_ids(&out);
    let arrived: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let acknowledged_ids: Vec<String> = sent
        .iter()
        .flat_map(|request| request.first..request.first + request.count)
        .map(audit_id)
        .collect();
    let lost: Vec<&String> = acknowledged_ids
        .iter()
        .filter(|id| !arrived.contains(id.as_str()))
        .collect();
    assert!(lost.is_empty(), "lost {} events: {lost:?}", lost.len());
    assert!(
        ids.len() <= acknowledged_ids.len() + reconnects * 10,
        "{} written for {} acknowledged and {reconnects} requests sent again",
        ids.len(),
        acknowledged_ids.len()
    );
    eprintln!(
        "{} events acknowledged in {} requests, {} written, the connection opened again {reconnects} times",
        acknowledged_ids.len(),
        sent.len(),
        ids.len()
    );
}

/// `id` (stdin, `max_line_bytes` as given) -> file sink `out`; its dead letters -> file
/// sink `refused`. The metrics endpoint on any free port.
fn stdin_pipeline(workspace: &Workspace, id: &str, max_line_bytes: usize) -> String {
    format!(
        "data_dir: {data}\n\
         metrics:\n  address: 127.0.0.1:0\n\
         sources:\n  {id}:\n    type: stdin\n    max_line_bytes: {max_line_bytes}\n\
         sinks:\n  out:\n    type: file\n    inputs: [{id}]\n    path: {out}\n\
         \x20 refused:\n    type: file\n    inputs: [{id}.dead_letter]\n    path: {refused}\n",
        data = workspace.path().join("data").display(),
        out = workspace.path().join("out.log").display(),
        refused = workspace.path().join("refused.log").display(),
    )
}

/// An event line of about `bytes` bytes with `auditID` `id`.
fn big_line(id: &str, bytes: usize) -> String {
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"{id}","pad":"{}"}}"#,
        "x".repeat(bytes)
    )
}

/// Waits until `path` holds `count` complete lines (a line being written is not one).
fn wait_complete_lines(auditflow: &Auditflow, path: &Path, count: usize) -> usize {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let bytes = std::fs::read(path).unwrap_or_default();
        let lines = bytes.iter().filter(|&&byte| byte == b'\n').count();
        if lines >= count {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{lines} of {count} lines in {} after {DEADLINE:?}; stderr:\n{}",
            path.display(),
            auditflow.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the writer of the stdin test wrote: numbered lines, and bytes.
struct Written {
    stdin: std::process::ChildStdin,
    lines: usize,
    bytes: usize,
}

/// Writes [`audit_line`]s from 0 to `stdin` until `stop`, each cut in two writes (so that
/// the source often holds half a record), with `big` after line 99. As fast as the pipe
/// takes them: the reader sets the pace.
fn write_until(stdin: std::process::ChildStdin, big: String, stop: Arc<AtomicBool>) -> Written {
    use std::io::Write;
    let mut written = Written {
        stdin,
        lines: 0,
        bytes: 0,
    };
    while !stop.load(Ordering::SeqCst) {
        let mut line = audit_line(written.lines) + "\n";
        if written.lines == 100 {
            line = format!("{big}\n{line}");
        }
        let (head, tail) = line.as_bytes().split_at(line.len() / 2);
        for part in [head, tail] {
            written.stdin.write_all(part).expect("write to stdin");
            written.stdin.flush().expect("flush stdin");
        }
        written.bytes += line.len();
        written.lines += 1;
    }
    written
}

/// Issue 20: a reload that changed the stdin source's options lost what the old instance
/// had read (its partial record, and the read in flight on standard input). The new
/// instance goes on with both: every line arrives once, in order, and the new
/// `max_line_bytes` refuses a long line only after the reload.
#[test]
fn a_changed_stdin_source_goes_on_reading_where_the_old_one_stopped() {
    let stderr = reload_stdin_source("in");
    assert!(stderr.contains("changed=[\"in\"]"), "{stderr}");
}

/// The same when the reload renames the source: the one added waits for the one removed
/// to stop, and goes on where it stopped.
#[test]
fn a_renamed_stdin_source_goes_on_reading_where_the_old_one_stopped() {
    let stderr = reload_stdin_source("input");
    assert!(
        stderr.contains("added=[\"input\"] changed=[\"out\", \"refused\"] removed=[\"in\"]"),
        "{stderr}"
    );
}

/// Pipes lines into `in` continuously; mid-stream, a reload lowers its `max_line_bytes`
/// (and names it `new_id`); then the input ends. Returns the process's stderr.
fn reload_stdin_source(new_id: &str) -> String {
    let workspace = Workspace::new();
    let out = workspace.path().join("out.log");
    let pipeline = workspace.write("pipeline.yaml", &stdin_pipeline(&workspace, "in", 4 << 20));
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let metrics = auditflow.metrics_address(DEADLINE);
    wait_ready(&metrics, DEADLINE);

    // 20,000 bytes: accepted before the reload, over the limit after it.
    let (big_before, big_after) = (
        big_line("big-before", 20_000),
        big_line("big-after", 20_000),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stdin, big, stop) = (
            auditflow.take_stdin(),
            big_before.clone(),
            Arc::clone(&stop),
        );
        std::thread::spawn(move || write_until(stdin, big, stop))
    };
    wait_complete_lines(&auditflow, &out, 2_000);

    rewrite(&pipeline, &stdin_pipeline(&workspace, new_id, 8_192));
    auditflow.signal(libc::SIGHUP);
    wait_reloads(&auditflow, &metrics, "ok", 1.0);
    let at_reload = wait_complete_lines(&auditflow, &out, 0);
    wait_complete_lines(&auditflow, &out, at_reload + 2_000);
    stop.store(true, Ordering::SeqCst);
    let mut written = writer.join().expect("the writer ran");

    {
        use std::io::Write;
        let tail: String = (written.lines..written.lines + 10)
            .map(|i| audit_line(i) + "\n")
            .collect();
        write!(written.stdin, "{big_after}\n{tail}").expect("write the tail");
    }
    drop(written.stdin);
    let status = auditflow.wait_timeout(DEADLINE);
    let stderr = auditflow.stderr();
    assert!(status.success(), "{stderr}");

    let ids = arrived_ids(&out);
    let expected: Vec<String> = (0..100)
        .map(audit_id)
        .chain(["big-before".to_owned()])
        .chain((100..written.lines + 10).map(audit_id))
        .collect();
    if ids != expected {
        let arrived: HashSet<&String> = ids.iter().collect();
        let missing: Vec<&String> = expected.iter().filter(|id| !arrived.contains(id)).collect();
        let first_difference = ids.iter().zip(&expected).position(|(a, b)| a != b);
        panic!(
            "{} lines arrived for {} written: {} missing (first {:?}), first out of place at {first_difference:?}",
            ids.len(),
            expected.len(),
            missing.len(),
            missing.first()
        );
    }

    // The long line after the reload is refused, as the record that followed every line
    // written before it, at the byte it started at: the count goes on across the reload.
    let refused = std::fs::read_to_string(workspace.path().join("refused.log")).unwrap();
    let letters: Vec<serde_json::Value> = refused
        .lines()
        .map(|line| serde_json::from_str(line).expect("a dead letter"))
        .collect();
    assert_eq!(letters.len(), 1, "{refused}");
    assert_eq!(letters[0]["reason"], "oversized");
    assert_eq!(
        letters[0]["location"],
        serde_json::json!({
            "file": "-",
            "line": written.lines + 2,
            "offset": written.bytes,
        })
    );
    assert_eq!(letters[0]["component_id"], new_id);
    stderr
}

/// Posts the events `range` to the webhook source at `address` on a new connection,
/// waiting until something listens there; every answer must be 200.
async fn post_events(address: SocketAddr, range: std::ops::Range<usize>) {
    let deadline = Instant::now() + DEADLINE;
    while tokio::net::TcpStream::connect(address).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {address}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_client, mut connection) = plain_connection(address).await;
    let answer = connection
        .post(
            "/audit",
            &[("Content-Type", "application/json")],
            event_list(range.clone()),
        )
        .await
        .unwrap_or_else(|error| panic!("posting {range:?} to {address}: {error}"));
    assert_eq!(
        answer.status, 200,
        "{range:?} to {address}: {}",
        answer.body
    );
}

/// A reload that moves a webhook source to a port another process holds: the source
/// starts again on its old socket with its old options, the log says so, the reload counts
/// as failed; once the port is free, a reload of the same files moves it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_whose_new_port_is_taken_keeps_its_old_options_until_a_later_reload() {
    let workspace = Workspace::new();
    let pipeline_on = |address: &str| {
        format!(
            "data_dir: {data}\n\
             metrics:\n  address: 127.0.0.1:0\n\
             sources:\n  api:\n    type: webhook\n    address: {address}\n    path: /audit\n    allow_plaintext: true\n\
             sinks:\n  out:\n    type: file\n    inputs: [api]\n    path: {out}\n",
            data = workspace.path().join("data").display(),
            out = workspace.path().join("out.log").display(),
        )
    };
    let pipeline = workspace.write("pipeline.yaml", &pipeline_on("127.0.0.1:0"));
    let mut auditflow = Auditflow::run(&workspace, &pipeline);
    let metrics = auditflow.metrics_address(DEADLINE);
    wait_ready(&metrics, DEADLINE);
    let old = auditflow.webhook_address("api", DEADLINE);
    let hash_before = config_hashes(&metrics);
    assert_eq!(hash_before.len(), 1, "one auditflow_config_hash series");
    post_events(old, 0..10).await;

    // Another process listens on the new address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let new = taken.local_addr().expect("its address");
    rewrite(&pipeline, &pipeline_on(&new.to_string()));
    auditflow.signal(libc::SIGHUP);
    let (auditflow_ref, metrics_ref) = (&auditflow, metrics.clone());
    tokio::task::block_in_place(|| wait_reloads(auditflow_ref, &metrics_ref, "failed", 1.0));
    let stderr = auditflow.stderr();
    let fell_back = stderr
        .lines()
        .find(|line| line.contains("the reloaded source cannot start"))
        .unwrap_or_else(|| panic!("no fallback logged; stderr:\n{stderr}"));
    assert!(
        fell_back.contains("component_id=api")
            && fell_back.contains(&format!("cannot listen on {new}"))
            && fell_back.contains("starting it again with its previous options"),
        "{fell_back}"
    );
    let deadline = Instant::now() + DEADLINE;
    while webhook_listening(&auditflow).len() < 2 {
        assert!(Instant::now() < deadline, "{}", auditflow.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(webhook_listening(&auditflow), [old, old], "the old socket");
    post_events(old, 10..20).await;
    let text = scrape(&metrics);
    assert_eq!(metric(&text, RELOADS, &[("result", "ok")]), Some(1.0));
    assert_eq!(metric(&text, RELOADS, &[("result", "failed")]), Some(1.0));
    assert_eq!(
        config_hashes(&metrics),
        hash_before,
        "the hash is that of what runs: the files changed nothing but the source that fell back"
    );

    // The port is free: the same files, reloaded again, move the source there.
    drop(taken);
    auditflow.signal(libc::SIGHUP);
    let (auditflow_ref, metrics_ref) = (&auditflow, metrics.clone());
    tokio::task::block_in_place(|| wait_reloads(auditflow_ref, &metrics_ref, "ok", 2.0));
    let deadline = Instant::now() + DEADLINE;
    while webhook_listening(&auditflow).len() < 3 {
        assert!(Instant::now() < deadline, "{}", auditflow.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(webhook_listening(&auditflow), [old, old, new]);
    post_events(new, 20..30).await;
    let text = scrape(&metrics);
    assert_eq!(metric(&text, RELOADS, &[("result", "failed")]), Some(1.0));
    let hash_after = config_hashes(&metrics);
    assert_eq!(hash_after.len(), 1, "one auditflow_config_hash series");
    assert_ne!(
        hash_after, hash_before,
        "the new options run: the files' hash"
    );
    assert!(
        tokio::net::TcpStream::connect(old).await.is_err(),
        "the old socket closed"
    );
    auditflow.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| auditflow.wait_timeout(DEADLINE));
    let stderr = auditflow.stderr();
    assert!(status.success(), "{stderr}");
    let expected: Vec<String> = (0..30).map(audit_id).collect();
    assert_eq!(arrived_ids(&workspace.path().join("out.log")), expected);
}
