//! `auditflow query` and `auditflow rbac suggest` through the real binary, over the real
//! kube-apiserver 1.32 capture (`tests/fixtures/query/audit.log`, the webhook bodies in
//! `tests/fixtures/webhook/`) and a file of denials of every kind derived from its one
//! RBAC denial (`tests/fixtures/query/denials.log`, see the README beside it).
//!
//! Goldens live in `tests/golden/query/`; they are compared, never rewritten by the test.
//! Each suggested rule in them was checked by hand against the denials it covers.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use auditflow_e2e::{clean_command, repo_root};

fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

fn capture() -> PathBuf {
    fixture("query/audit.log")
}

fn denials() -> PathBuf {
    fixture("query/denials.log")
}

fn webhook_bodies() -> Vec<PathBuf> {
    (1..=3)
        .map(|n| fixture(&format!("webhook/webhook-000{n}.json")))
        .collect()
}

/// Runs the binary with `args`, `stdin` on standard input, and `COLUMNS` as given (unset
/// otherwise); standard output and error are pipes, as in a script.
fn auditflow(args: &[&str], stdin: Option<&[u8]>, columns: Option<&str>) -> Output {
    let mut command = clean_command(args);
    command
        .env_remove("COLUMNS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(columns) = columns {
        command.env("COLUMNS", columns);
    }
    let mut child = command.spawn().expect("run auditflow");
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Runs and expects success; returns standard output.
fn stdout_of(args: &[&str]) -> String {
    let output = auditflow(args, None, None);
    assert!(
        output.status.success(),
        "auditflow {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn assert_golden(name: &str, actual: &str) {
    let path = repo_root().join("tests/golden/query").join(name);
    let expected =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        expected == actual,
        "output differs from {}:\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

const FORBID: &str = r#"annotations."authorization.k8s.io/decision" == "forbid""#;

#[test]
fn the_captures_forbids_grouped_by_user_match_the_golden_from_the_log_and_the_webhook_bodies() {
    let log = stdout_of(&[
        "query",
        "--where",
        FORBID,
        "--group-by",
        "user.username",
        path_str(&capture()),
    ]);
    assert_golden("capture-forbids-by-user.txt", &log);
    let bodies = webhook_bodies();
    let mut args = vec!["query", "--where", FORBID, "--group-by", "user.username"];
    args.extend(bodies.iter().map(|p| path_str(p)));
    assert_eq!(
        stdout_of(&args),
        log,
        "the webhook backend saw the same denial"
    );
}

#[test]
fn forbids_of_every_kind_grouped_by_user_and_verb_match_the_golden() {
    let table = stdout_of(&[
        "query",
        "--where",
        FORBID,
        "--group-by",
        "user.username,verb",
        path_str(&denials()),
    ]);
    assert_golden("denials-forbids-by-user-verb.txt", &table);
    let top = stdout_of(&[
        "query",
        "--where",
        FORBID,
        "--group-by",
        "user.username",
        "--top",
        "2",
        "--format",
        "csv",
        path_str(&denials()),
    ]);
    // alice's denial appears twice in the file (logged twice): query counts lines.
    assert_eq!(
        top,
        "user.username,count\nalice,7\nsystem:serviceaccount:ci:deployer,4\n"
    );
}

#[test]
fn the_default_listing_of_denials_shows_who_what_and_why() {
    let output = auditflow(
        &["query", "--denials", path_str(&denials())],
        None,
        Some("200"),
    );
    assert!(output.status.success());
    assert_golden(
        "denials-listing.txt",
        &String::from_utf8(output.stdout).unwrap(),
    );
    assert_eq!(
        String::from_utf8(output.stderr).unwrap(),
        "auditflow: 17 events read (0.0 MB), 16 matched\n"
    );
}

#[test]
fn rbac_suggest_over_the_capture_matches_the_golden() {
    let all = stdout_of(&["rbac", "suggest", path_str(&capture())]);
    assert_golden("suggest-capture.yaml", &all);
    // bob is the one denied user: the same answer for him alone, and from the webhook.
    assert_eq!(
        stdout_of(&["rbac", "suggest", "--user", "bob", path_str(&capture())]),
        all
    );
    let bodies = webhook_bodies();
    let mut args = vec!["rbac", "suggest"];
    args.extend(bodies.iter().map(|p| path_str(p)));
    assert_eq!(stdout_of(&args), all);
    // The log and the webhook bodies together hold the denial twice: one auditID, one
    // denial.
    let log = capture();
    args.push(path_str(&log));
    assert_eq!(stdout_of(&args), all);
}

#[test]
fn rbac_suggest_for_each_denied_user_matches_its_golden() {
    for (user, golden) in [
        ("alice", "suggest-alice.yaml"),
        ("jane", "suggest-jane.yaml"),
        ("carol", "suggest-carol.yaml"),
        (
            "system:serviceaccount:ci:deployer",
            "suggest-ci-deployer.yaml",
        ),
    ] {
        let yaml = stdout_of(&["rbac", "suggest", "--user", user, path_str(&denials())]);
        assert_golden(golden, &yaml);
    }
    // bob's only RBAC denial is a refused impersonation: listed only when asked for.
    let output = auditflow(
        &["rbac", "suggest", "--user", "bob", path_str(&denials())],
        None,
        None,
    );
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "# auditflow rbac suggest: no RBAC denial matched; nothing to suggest.\n"
    );
    assert!(String::from_utf8(output.stderr)
        .unwrap()
        .contains("1 refused impersonation left out; add --include-impersonation"));
    let yaml = stdout_of(&[
        "rbac",
        "suggest",
        "--user",
        "bob",
        "--include-impersonation",
        path_str(&denials()),
    ]);
    assert_golden("suggest-bob-impersonation.yaml", &yaml);
}

#[test]
fn rbac_suggest_narrows_to_names_groups_and_namespaces_when_asked() {
    let yaml = stdout_of(&[
        "rbac",
        "suggest",
        "--resource-names",
        "--namespace",
        "prod",
        path_str(&denials()),
    ]);
    assert_golden("suggest-prod-resource-names.yaml", &yaml);
    let yaml = stdout_of(&[
        "rbac",
        "suggest",
        "--group",
        "qa-team",
        path_str(&denials()),
    ]);
    assert_golden("suggest-group-qa-team.yaml", &yaml);
}

#[test]
fn every_suggestion_reads_back_as_kubernetes_objects() {
    let yaml = stdout_of(&[
        "rbac",
        "suggest",
        "--include-impersonation",
        path_str(&denials()),
    ]);
    let documents: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|document| <serde_json::Value as serde::Deserialize>::deserialize(document).unwrap())
        .collect();
    let kinds: Vec<&str> = documents
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Role",
            "RoleBinding",
            "ClusterRole",
            "ClusterRoleBinding"
        ]
    );
    for pair in documents.chunks(2) {
        let (role, binding) = (&pair[0], &pair[1]);
        assert_eq!(role["apiVersion"], "rbac.authorization.k8s.io/v1");
        assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
        assert_eq!(binding["roleRef"]["kind"], role["kind"]);
        assert_eq!(
            binding["metadata"]["namespace"],
            role["metadata"]["namespace"]
        );
        assert!(!role["rules"].as_array().unwrap().is_empty());
    }
    // The denied ServiceAccount is bound as one, in its own namespace.
    let sa = &documents[9]["subjects"][0];
    assert_eq!(sa["kind"], "ServiceAccount");
    assert_eq!(sa["namespace"], "ci");
    assert_eq!(sa["name"], "deployer");
}

/// Splits the capture into a rotated set (two backups, one gzipped, and the live file).
fn rotated_set(dir: &Path) -> (Vec<PathBuf>, Vec<String>) {
    let text = std::fs::read_to_string(capture()).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let part = |range: std::ops::Range<usize>| lines[range].join("\n") + "\n";
    let oldest = dir.join("audit-2026-11-23T08-24-13.900.log");
    let middle = dir.join("audit-2026-11-23T08-24-14.500.log.gz");
    let live = dir.join("audit.log");
    std::fs::write(&oldest, part(0..80)).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(part(80..160).as_bytes()).unwrap();
    std::fs::write(&middle, gz.finish().unwrap()).unwrap();
    std::fs::write(&live, part(160..lines.len())).unwrap();
    // Given out of order, as a shell glob or a hand would.
    (vec![live, oldest, middle], lines)
}

fn field<'a>(line: &'a serde_json::Value, key: &str) -> &'a str {
    line[key].as_str().unwrap_or_default()
}

#[test]
fn time_windows_select_across_a_rotated_set_read_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let (files, lines) = rotated_set(dir.path());
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Bounds from the capture itself: the window holds events of all three files.
    let since = field(&events[60], "requestReceivedTimestamp").to_owned();
    let until = field(&events[200], "requestReceivedTimestamp").to_owned();
    // The oracle: RFC 3339 UTC times with six digits order as text.
    let expected: Vec<&str> = events
        .iter()
        .filter(|e| {
            let t = field(e, "requestReceivedTimestamp");
            t >= since.as_str() && t < until.as_str()
        })
        .map(|e| field(e, "auditID"))
        .collect();
    assert!(
        expected.len() > 100,
        "the window spans the files: {}",
        expected.len()
    );
    let mut args = vec![
        "query", "--since", &since, "--until", &until, "--select", "auditID", "--format", "csv",
    ];
    args.extend(files.iter().map(|p| path_str(p)));
    let csv = stdout_of(&args);
    let got: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(got, expected);

    // The same window on stageTimestamp selects by that field instead.
    let expected_stage: Vec<&str> = events
        .iter()
        .filter(|e| {
            let t = field(e, "stageTimestamp");
            t >= since.as_str() && t < until.as_str()
        })
        .map(|e| field(e, "auditID"))
        .collect();
    let mut args = vec![
        "query",
        "--since",
        &since,
        "--until",
        &until,
        "--time-field",
        "stageTimestamp",
        "--select",
        "auditID",
        "--format",
        "csv",
    ];
    args.extend(files.iter().map(|p| path_str(p)));
    let csv = stdout_of(&args);
    assert_eq!(csv.lines().skip(1).collect::<Vec<_>>(), expected_stage);

    // Without a window, every event of the set, in the capture's order.
    let mut args = vec!["query", "--select", "auditID", "--format", "csv"];
    args.extend(files.iter().map(|p| path_str(p)));
    let all = stdout_of(&args);
    let everything: Vec<&str> = events.iter().map(|e| field(e, "auditID")).collect();
    assert_eq!(all.lines().skip(1).collect::<Vec<_>>(), everything);
}

#[test]
fn gzip_input_and_standard_input_read_like_the_plain_file() {
    let dir = tempfile::tempdir().unwrap();
    let plain = std::fs::read(capture()).unwrap();
    let gz_path = dir.path().join("capture.log.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain).unwrap();
    std::fs::write(&gz_path, gz.finish().unwrap()).unwrap();
    let args = |input: &str| -> Vec<String> {
        [
            "query",
            "--group-by",
            "verb,responseStatus.code",
            "--format",
            "json",
            input,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    let run = |input: &str, stdin: Option<&[u8]>| {
        let args = args(input);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = auditflow(&refs, stdin, None);
        assert!(output.status.success());
        (
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    };
    let (from_file, _) = run(path_str(&capture()), None);
    let (from_gz, gz_stderr) = run(path_str(&gz_path), None);
    let (from_stdin, _) = run("-", Some(&plain));
    assert_eq!(from_gz, from_file);
    assert_eq!(from_stdin, from_file);
    assert!(
        gz_stderr.starts_with("auditflow: 245 events read"),
        "{gz_stderr}"
    );
    let groups: serde_json::Value = serde_json::from_str(&from_file).unwrap();
    let total: u64 = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 245);
    assert_eq!(groups[0]["verb"], "get");
}

#[test]
fn malformed_lines_are_counted_and_named_but_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut text = std::fs::read_to_string(capture()).unwrap();
    text.push_str("{\"kind\":\"Event\",\"verb\":\n");
    text.push_str("not json at all\n");
    text.push_str(
        std::fs::read_to_string(denials())
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    );
    std::fs::write(&path, text).unwrap();
    let output = auditflow(
        &["query", "--group-by", "kind", path_str(&path)],
        None,
        None,
    );
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "KIND   COUNT\nEvent  246\n"
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("2 malformed lines skipped"), "{stderr}");
    assert!(
        stderr.contains("audit.log line 246: not a JSON object"),
        "{stderr}"
    );
    assert!(
        stderr.contains("audit.log line 247: not a JSON object"),
        "{stderr}"
    );
}

#[test]
fn tables_fit_the_width_and_pipes_get_no_colour_or_progress_bar() {
    let output = auditflow(
        &["query", "--where", "verb == \"list\"", path_str(&capture())],
        None,
        Some("72"),
    );
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stdout.lines().count() > 36, "every match listed:\n{stdout}");
    for line in stdout.lines() {
        assert!(line.chars().count() <= 72, "too wide: {line:?}");
    }
    assert!(
        !stdout.contains('\x1b') && !stderr.contains('\x1b'),
        "escape codes on a pipe"
    );
    assert!(
        !stderr.contains('\r'),
        "a progress bar drawn on a pipe: {stderr:?}"
    );
    // Without COLUMNS on a pipe, rows are never wrapped: one line per event.
    let unwrapped = stdout_of(&["query", "--where", "verb == \"list\"", path_str(&capture())]);
    assert_eq!(unwrapped.lines().count(), 37);
}

#[test]
fn selected_columns_come_out_as_csv_and_ndjson() {
    let args = |format: &'static str| {
        vec![
            "query",
            "--where",
            "responseStatus.code == 500",
            "--select",
            "requestURI,user.username,responseStatus.code",
            "--format",
            format,
        ]
    };
    let mut csv_args = args("csv");
    let capture = capture();
    csv_args.push(path_str(&capture));
    let csv = stdout_of(&csv_args);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("requestURI,user.username,responseStatus.code")
    );
    assert_eq!(lines.clone().count(), 12);
    assert!(lines.all(|line| line.ends_with(",500")), "{csv}");
    let mut ndjson_args = args("ndjson");
    ndjson_args.push(path_str(&capture));
    let ndjson = stdout_of(&ndjson_args);
    let first: serde_json::Value = serde_json::from_str(ndjson.lines().next().unwrap()).unwrap();
    assert_eq!(first["responseStatus.code"], 500);
    // Without --select, ndjson is the matching events themselves, byte for byte.
    let events = stdout_of(&[
        "query",
        "--where",
        FORBID,
        "--format",
        "ndjson",
        path_str(&capture),
    ]);
    let original = std::fs::read_to_string(&capture).unwrap();
    let line = original.lines().find(|l| l.contains("\"forbid\"")).unwrap();
    assert_eq!(events, format!("{line}\n"));
}

#[test]
fn usage_errors_exit_2_and_point_at_the_problem() {
    let output = auditflow(
        &["query", "--where", "verb == ", path_str(&capture())],
        None,
        None,
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with("auditflow query: --where: column 9: expected a value"),
        "{stderr}"
    );
    assert!(stderr.contains("\n  verb == \n          ^\n"), "{stderr:?}");

    let output = auditflow(
        &["query", "--since", "yesterday", path_str(&capture())],
        None,
        None,
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8(output.stderr)
        .unwrap()
        .contains("--since: \"yesterday\" is neither an RFC 3339 time"));

    let output = auditflow(&["query", "/nonexistent/audit.log"], None, None);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8(output.stderr)
        .unwrap()
        .starts_with("auditflow query: /nonexistent/audit.log: No such file or directory"));
}

/// On a terminal, a query over standard input (size unknown) draws a spinner with bytes
/// and events per second on standard error while it reads, and clears it before the
/// result. Driven in tmux, with the input coming through a named pipe that the test keeps
/// open until the bar has been seen.
#[test]
fn a_terminal_gets_a_progress_bar_while_the_input_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("input");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.expect("mkfifo runs").success());
    let exit_file = dir.path().join("query.exit");
    let tmux = auditflow_e2e::Tmux::new("query");
    let command = format!(
        "{} query --group-by verb - < {}; echo exit=$? > {}; sleep 600",
        auditflow_e2e::auditflow_bin().display(),
        fifo.display(),
        exit_file.display()
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "query",
        "-x",
        "120",
        "-y",
        "30",
        &command,
    ]);

    // The query blocks opening the pipe until the test opens it for writing.
    let mut input = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let capture = std::fs::read(capture()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut rounds = 0;
    let bar = loop {
        input.write_all(&capture).unwrap();
        rounds += 1;
        let screen = tmux.run(&["capture-pane", "-p", "-t", "query"]);
        if let Some(line) = screen.lines().find(|line| line.contains("events/s")) {
            break line.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no progress bar after {rounds} copies of the capture; last screen:\n{screen}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // `{bytes} {bytes_per_sec} N events, R events/s`.
    assert!(bar.contains("B/s"), "bytes per second: {bar:?}");
    assert!(bar.contains(" events, "), "events read: {bar:?}");
    drop(input);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let exit = loop {
        if let Ok(text) = std::fs::read_to_string(&exit_file) {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the query did not end once its input closed"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(exit.trim(), "exit=0");
    let screen = tmux.run(&["capture-pane", "-p", "-t", "query"]);
    assert!(
        !screen.contains("events/s"),
        "the bar was not cleared:\n{screen}"
    );
    // Every copy of the capture's `list` events counted once, in the result table.
    let lists = capture.split(|&b| b == b'\n').filter(|line| {
        std::str::from_utf8(line).is_ok_and(|line| line.contains("\"verb\":\"list\""))
    });
    let expected = lists.count() * rounds;
    let counted = screen
        .lines()
        .find_map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            (cells.first() == Some(&"list")).then(|| cells[1].parse::<usize>().ok())?
        })
        .unwrap_or_else(|| panic!("no `list` row:\n{screen}"));
    assert_eq!(counted, expected, "{screen}");
}
