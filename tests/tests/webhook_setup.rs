//! Wiring kube-apiserver to the `webhook` source cannot go wrong silently: every credential
//! combination `webhook-kubeconfig` writes passes `webhook-check` and delivers through a
//! client that follows the kubeconfig; each failure `webhook-check` can meet has its own
//! message; each bad client certificate is refused with its TLS alert and named in the
//! source's log; and `validate` checks the source's own certificate files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use auditflow_e2e::tls::{CertFault, Pki, PkiFiles};
use auditflow_e2e::webhook_client::{error_chain, KubeconfigClient, WebhookClient};
use auditflow_e2e::{auditflow_bin, free_port, http_get, metric, wait_ready, Auditflow, Workspace};
use bytes::Bytes;

const TOKEN: &str = "setup-token-0123456789";
const CHECK_ANNOTATION: &str = "auditflow.io/webhook-check";

fn auditflow(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(auditflow_bin())
        .args(args)
        .env_remove("AUDITFLOW_WEBHOOK_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("run auditflow")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `sources` into `stdout`, the metrics endpoint on any free port; returns the process
/// and the metrics address it logged.
fn start(workspace: &Workspace, sources: &str, inputs: &str) -> (Auditflow, String) {
    let pipeline = workspace.write(
        "pipeline.yaml",
        &format!(
            "data_dir: {data}\nmetrics:\n  address: 127.0.0.1:0\nsources:\n{sources}\
             sinks:\n  out:\n    type: stdout\n    inputs: [{inputs}]\n",
            data = workspace.path().join("data").display(),
        ),
    );
    let auditflow = Auditflow::run(workspace, &pipeline);
    let metrics = auditflow.metrics_address(Duration::from_secs(20));
    wait_ready(&metrics, Duration::from_secs(20));
    (auditflow, metrics)
}

/// The port the webhook source `id` of `auditflow` listens on (read from its log).
fn port_of(auditflow: &Auditflow, id: &str) -> u16 {
    auditflow
        .webhook_address(id, Duration::from_secs(20))
        .port()
}

/// A webhook source `id` on 127.0.0.1, any free port (see [`port_of`]).
fn webhook_source(id: &str, files: &PkiFiles, mtls: bool, token: bool) -> String {
    let mut source = format!(
        "  {id}:\n    type: webhook\n    address: 127.0.0.1:0\n    path: /audit\n\
         \x20   tls:\n      cert_file: {}\n      key_file: {}\n",
        files.server_cert.display(),
        files.server_key.display()
    );
    if mtls {
        source += &format!("      client_ca_file: {}\n", files.ca.display());
    }
    if token {
        source += &format!("    auth:\n      bearer_tokens: [\"{TOKEN}\"]\n");
    }
    source
}

/// `auditflow webhook-kubeconfig` with `args`, the token in the environment, written to
/// `name`; returns its path and what the command said on stderr.
fn kubeconfig(workspace: &Workspace, name: &str, args: &[&str]) -> (PathBuf, String) {
    let mut all = vec!["webhook-kubeconfig"];
    all.extend_from_slice(args);
    let output = auditflow(&all, &[("AUDITFLOW_WEBHOOK_TOKEN", TOKEN)]);
    assert!(output.status.success(), "{}", text(&output));
    let path = workspace.write(name, &String::from_utf8_lossy(&output.stdout));
    (path, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// The same kubeconfig with every file it names inlined as `*-data`.
fn inline(workspace: &Workspace, file: &Path, name: &str) -> PathBuf {
    use base64::Engine as _;
    let mut config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let inline_in = |node: &mut serde_yaml::Value, key: &str| {
        let Some(map) = node.as_mapping_mut() else {
            return;
        };
        if let Some(path) = map.remove(key) {
            let bytes = std::fs::read(path.as_str().unwrap()).unwrap();
            map.insert(
                format!("{key}-data").into(),
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .into(),
            );
        }
    };
    inline_in(
        &mut config["clusters"][0]["cluster"],
        "certificate-authority",
    );
    inline_in(&mut config["users"][0]["user"], "client-certificate");
    inline_in(&mut config["users"][0]["user"], "client-key");
    let text = serde_yaml::to_string(&config).unwrap();
    assert!(!text.contains(".pem"), "every file inlined: {text}");
    workspace.write(name, &text)
}

fn check(kubeconfig: &Path) -> (bool, String) {
    let output = auditflow(
        &[
            "webhook-check",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ],
        &[],
    );
    (output.status.success(), text(&output))
}

/// The step lines of a `webhook-check` run, in order.
fn steps(report: &str) -> Vec<&str> {
    report
        .lines()
        .filter(|line| {
            ["DNS:", "TCP:", "TLS:", "HTTP:"]
                .iter()
                .any(|step| line.starts_with(step))
        })
        .collect()
}

fn event_list(audit_id: &str) -> (Bytes, String) {
    let item = format!(
        "{{\"level\":\"Metadata\",\"auditID\":\"{audit_id}\",\"stage\":\"ResponseComplete\",\
         \"requestURI\":\"/api/v1/namespaces/default/pods\",\"verb\":\"list\",\
         \"user\":{{\"username\":\"alice\"}},\"responseStatus\":{{\"code\":200}}}}"
    );
    let list = format!(
        "{{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"metadata\":{{}},\"items\":[{item}]}}"
    );
    (Bytes::from(list), item)
}

fn next_line(lines: &Receiver<String>) -> String {
    lines
        .recv_timeout(Duration::from_secs(20))
        .expect("a line on stdout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_credential_combination_passes_webhook_check_and_delivers() {
    let workspace = Workspace::new();
    let pki = Pki::new("setup");
    let files = pki.write_to(workspace.path());
    let sources = format!(
        "{}{}{}",
        webhook_source("token", &files, false, true),
        webhook_source("mtls", &files, true, false),
        webhook_source("both", &files, true, true),
    );
    let (mut auditflow, metrics) = start(&workspace, &sources, "token, mtls, both");
    let ports = ["token", "mtls", "both"].map(|id| port_of(&auditflow, id));
    let lines = auditflow.stdout_lines();
    let ca = files.ca.to_str().unwrap();
    let cert = files.client_cert.to_str().unwrap();
    let key = files.client_key.to_str().unwrap();

    let combinations: [(&str, u16, Vec<&str>); 3] = [
        ("token", ports[0], vec![]),
        (
            "mtls",
            ports[1],
            vec!["--client-cert", cert, "--client-key", key],
        ),
        (
            "both",
            ports[2],
            vec![
                "--client-cert",
                cert,
                "--client-key",
                key,
                "--token-from-env",
            ],
        ),
    ];
    for (id, port, extra) in &combinations {
        let server = format!("https://localhost:{port}/audit");
        let mut args = vec!["--server", server.as_str(), "--ca-file", ca];
        args.extend_from_slice(extra);
        let (file, said) = kubeconfig(&workspace, &format!("{id}.yaml"), &args);
        let written = std::fs::read_to_string(&file).unwrap();
        assert_eq!(written.contains("token:"), *id != "mtls", "{id}: {written}");
        assert_eq!(
            written.contains("client-certificate:"),
            *id != "token",
            "{id}"
        );
        if *id == "mtls" {
            // The variable was set, and was left out, saying how to put it in.
            assert!(said.contains("--token-from-env"), "{said}");
        }
        let inlined = inline(&workspace, &file, &format!("{id}-inline.yaml"));
        for (how, kubeconfig) in [("files", &file), ("inline", &inlined)] {
            let (passed, report) = check(kubeconfig);
            assert!(passed, "{id} ({how}): webhook-check failed:\n{report}");
            let steps = steps(&report);
            assert_eq!(steps.len(), 4, "{report}");
            assert!(steps[0].starts_with("DNS: ok: localhost -> "), "{report}");
            assert!(steps[1].starts_with("TCP: ok: connected to "), "{report}");
            assert!(
                steps[2].starts_with("TLS: ok: TLSv1_3, ALPN h2"),
                "{report}"
            );
            assert!(
                steps[3].starts_with("HTTP: ok: 200 over HTTP/2")
                    && steps[3].contains("the source recognised the test event"),
                "{report}"
            );

            // A client that follows the kubeconfig delivers an EventList.
            let audit_id = format!("{id}-{how}");
            let (list, item) = event_list(&audit_id);
            let answer = KubeconfigClient::from_file(kubeconfig)
                .post(list)
                .await
                .expect("an answer");
            assert_eq!(answer.status, 200, "{id} ({how}): {}", answer.body);
            assert_eq!(answer.version, "HTTP/2.0");
            // The check event never reached the pipeline: the next line is this one.
            assert_eq!(next_line(&lines), item, "{id} ({how})");
        }
    }
    let text = {
        let (status, body) = http_get(&metrics, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200);
        body
    };
    for (id, _, _) in &combinations {
        assert_eq!(
            metric(
                &text,
                "auditflow_webhook_checks_total",
                &[("component_id", id)]
            ),
            Some(2.0),
            "{id}"
        );
    }
    auditflow.signal(libc::SIGTERM);
    assert!(auditflow.wait_timeout(Duration::from_secs(20)).success());
    let rest: Vec<String> = lines.try_iter().collect();
    assert!(
        rest.iter().all(|line| !line.contains(CHECK_ANNOTATION)),
        "{rest:?}"
    );
}

#[test]
fn pass_check_events_lets_the_test_event_through() {
    let workspace = Workspace::new();
    let pki = Pki::new("pass");
    let files = pki.write_to(workspace.path());
    let source = webhook_source("api", &files, false, true) + "    pass_check_events: true\n";
    let (mut auditflow, _metrics) = start(&workspace, &source, "api");
    let port = port_of(&auditflow, "api");
    let lines = auditflow.stdout_lines();
    let server = format!("https://localhost:{port}/audit");
    let (file, _) = kubeconfig(
        &workspace,
        "k.yaml",
        &["--server", &server, "--ca-file", files.ca.to_str().unwrap()],
    );
    let (passed, report) = check(&file);
    assert!(passed, "{report}");
    let line = next_line(&lines);
    assert!(line.contains(CHECK_ANNOTATION), "{line}");
}

#[test]
fn webhook_check_names_each_failure_and_exits_non_zero() {
    let workspace = Workspace::new();
    let pki = Pki::new("failures");
    let files = pki.write_to(workspace.path());
    // The certificate names localhost and 127.0.0.1; 127.0.0.2 is loopback too, but not
    // named.
    let sources = webhook_source("api", &files, false, true)
        + &webhook_source("other", &files, false, false).replace("127.0.0.1:", "127.0.0.2:");
    let (receiver, _metrics) = start(&workspace, &sources, "api, other");
    let (token_port, mismatch_port) = (port_of(&receiver, "api"), port_of(&receiver, "other"));
    let ca = files.ca.to_str().unwrap();
    let other_ca = workspace.write("other-ca.pem", &Pki::new("stranger").ca_pem);
    // Nothing listens there: a port is needed that no listener holds, which only a bind
    // and a close can find.
    let unused_port = free_port();
    // A server whose certificate has expired: auditflow itself would not start with one
    // (validate refuses it), so Python's HTTPS server stands in for a receiver whose
    // certificate expired while it ran.
    let (expired_cert, expired_key) = pki.server_identity(&["localhost"], CertFault::Expired);
    let expired_cert = workspace.write("expired.pem", &expired_cert);
    let expired_key = workspace.write("expired.key", &expired_key);
    let mut expired_server = Command::new("python3")
        .arg("-c")
        .arg(
            "import http.server, ssl, sys\n\
             port, cert, key = sys.argv[1:]\n\
             context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
             context.load_cert_chain(cert, key)\n\
             server = http.server.HTTPServer(('127.0.0.1', int(port)), http.server.BaseHTTPRequestHandler)\n\
             server.socket = context.wrap_socket(server.socket, server_side=True)\n\
             print('ready', server.server_address[1], flush=True)\n\
             server.serve_forever()\n",
        )
        .arg("0")
        .arg(&expired_cert)
        .arg(&expired_key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start python3");
    // It listens on any free port and says which.
    let expired_port: u16 = {
        use std::io::BufRead;
        let stdout = expired_server.stdout.take().expect("piped");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the server says it is ready");
        line.trim()
            .strip_prefix("ready ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("the server said {line:?}, not `ready PORT`"))
    };

    // (what, [server, CA], with the token, what webhook-check must say)
    let cases: Vec<(&str, Vec<String>, bool, &str)> = vec![
        (
            "no token for a source that wants one",
            vec![format!("https://localhost:{token_port}/audit"), ca.to_owned()],
            false,
            "HTTP: FAILED: 401 over HTTP/2",
        ),
        (
            "a path the source does not serve",
            vec![format!("https://localhost:{token_port}/wrong"), ca.to_owned()],
            true,
            "HTTP: FAILED: 404 over HTTP/2",
        ),
        (
            "nothing listening",
            vec![format!("https://127.0.0.1:{unused_port}/audit"), ca.to_owned()],
            true,
            "TCP: FAILED: 127.0.0.1:",
        ),
        (
            "a CA that did not sign the source's certificate",
            vec![
                format!("https://localhost:{token_port}/audit"),
                other_ca.to_str().unwrap().to_owned(),
            ],
            true,
            "TLS: FAILED: the server certificate is not signed by a CA in certificate-authority (wrong CA)",
        ),
        (
            "an expired server certificate",
            vec![format!("https://localhost:{expired_port}/audit"), ca.to_owned()],
            false,
            "TLS: FAILED: the server certificate expired at ",
        ),
        (
            "a host the certificate does not name",
            vec![format!("https://127.0.0.2:{mismatch_port}/audit"), ca.to_owned()],
            false,
            "(name mismatch)",
        ),
    ];
    for (what, args, token, expected) in cases {
        let file = workspace.path().join("case.yaml");
        let env: &[(&str, &str)] = if token {
            &[("AUDITFLOW_WEBHOOK_TOKEN", TOKEN)]
        } else {
            &[]
        };
        let output = auditflow(
            &[
                "webhook-kubeconfig",
                "--server",
                &args[0],
                "--ca-file",
                &args[1],
            ],
            env,
        );
        assert!(output.status.success(), "{}", text(&output));
        std::fs::write(&file, &output.stdout).unwrap();
        let output = auditflow(
            &["webhook-check", "--kubeconfig", file.to_str().unwrap()],
            &[],
        );
        let report = text(&output);
        assert_eq!(output.status.code(), Some(1), "{what}:\n{report}");
        assert!(
            report.contains(expected),
            "{what}: no {expected:?} in\n{report}"
        );
        assert!(
            report.contains("kube-apiserver with this kubeconfig would not deliver"),
            "{report}"
        );
    }
    let _ = expired_server.kill();
    let _ = expired_server.wait();
}

/// Waits for `needle` in the process's log.
fn wait_for_log(auditflow: &Auditflow, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !auditflow.stderr().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "the log never said {needle:?}:\n{}",
            auditflow.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_client_certificate_is_named_in_the_log() {
    let workspace = Workspace::new();
    let pki = Pki::new("mtls");
    let files = pki.write_to(workspace.path());
    let (source, metrics) = start(
        &workspace,
        &webhook_source("api", &files, true, false),
        "api",
    );
    let address = source.webhook_address("api", Duration::from_secs(20));
    let port = address.port();
    let stranger = Pki::new("stranger");
    let cases = [
        (
            pki.client_identity(CertFault::V1),
            "the client certificate is X.509 v1; reissue it with v3 extensions, e.g. `extendedKeyUsage=clientAuth`",
            "CertificateUnknown",
        ),
        (
            pki.client_identity(CertFault::Expired),
            "the client certificate expired at ",
            "CertificateExpired",
        ),
        (
            pki.client_identity(CertFault::NotYetValid),
            "the client certificate is not valid before ",
            // TLS has no alert of its own for "not yet valid".
            "CertificateExpired",
        ),
        (
            stranger.client_identity(CertFault::None),
            "the client certificate is not signed by a CA in tls.client_ca_file (wrong CA)",
            "UnknownCA",
        ),
        (
            pki.client_identity(CertFault::WrongKeyUsage),
            "the client certificate is not issued for this use (wrong key usage): reissue it with extendedKeyUsage=clientAuth",
            "UnsupportedCertificate",
        ),
    ];
    // Each refusal is the handshake's own alert, read by a client that sends nothing
    // after the handshake: no request reaches the source (see the counts at the end).
    for ((cert, key), message, alert) in &cases {
        let client = WebhookClient::https(address, &pki.ca_pem, Some((cert, key)));
        let refusal = client.tls_refusal().await;
        assert!(
            refusal.contains(&format!("received fatal alert: {alert}")),
            "{message}: {refusal}"
        );
        wait_for_log(&source, message);
    }
    // webhook-check with a v1 client certificate in the kubeconfig: TLS 1.3 learns of the
    // refusal on its first read, and says where to look.
    let ((cert, key), _, _) = &cases[0];
    let cert_file = workspace.write("v1.pem", cert);
    let key_file = workspace.write("v1.key", key);
    let server = format!("https://localhost:{port}/audit");
    let output = auditflow(
        &[
            "webhook-kubeconfig",
            "--server",
            &server,
            "--ca-file",
            files.ca.to_str().unwrap(),
            "--client-cert",
            cert_file.to_str().unwrap(),
            "--client-key",
            key_file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(output.status.success(), "{}", text(&output));
    let kubeconfig = workspace.write("v1.yaml", &String::from_utf8_lossy(&output.stdout));
    let (passed, report) = check(&kubeconfig);
    assert!(!passed, "{report}");
    assert!(
        report.contains("HTTP: FAILED: ")
            && report.contains("refuse")
            && report.contains("the client certificate is X.509 v1; reissue it with v3 extensions"),
        "{report}"
    );
    // A client that does not trust the source's certificate.
    let distrustful = WebhookClient::https(
        address,
        &stranger.ca_pem,
        Some((&pki.client_cert_pem, &pki.client_key_pem)),
    );
    let distrust = match distrustful.connect().await {
        Ok(_) => panic!("a client trusting another CA connected"),
        Err(error) => error_chain(&error),
    };
    assert!(
        distrust.contains("invalid peer certificate: UnknownIssuer"),
        "{distrust}"
    );
    wait_for_log(
        &source,
        "the client does not trust tls.cert_file (alert unknown_ca, wrong CA)",
    );
    let (status, body) = http_get(&metrics, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        metric(&body, "auditflow_webhook_tls_failures_total", &[]),
        Some(cases.len() as f64 + 2.0)
    );
    assert_eq!(
        metric(
            &body,
            "auditflow_component_received_events_total",
            &[("component_id", "api")]
        ),
        Some(0.0),
        "an event arrived through a refused handshake"
    );
}

#[test]
fn validate_checks_the_sources_own_certificate_files() {
    let workspace = Workspace::new();
    let pki = Pki::new("validate");
    let files = pki.write_to(workspace.path());
    let validate = |cert: &Path, key: &Path| -> (bool, String) {
        let pipeline = workspace.write(
            "pipeline.yaml",
            &format!(
                "sources:\n  api:\n    type: webhook\n    address: 127.0.0.1:0\n\
                 \x20   tls:\n      cert_file: {}\n      key_file: {}\n\
                 sinks:\n  out:\n    type: stdout\n    inputs: [api]\n",
                cert.display(),
                key.display()
            ),
        );
        let output = auditflow(&["validate", pipeline.to_str().unwrap()], &[]);
        (output.status.success(), text(&output))
    };
    let (valid, report) = validate(&files.server_cert, &files.server_key);
    assert!(valid, "{report}");

    let write = |name: &str, (cert, key): (String, String)| {
        (
            workspace.write(&format!("{name}.pem"), &cert),
            workspace.write(&format!("{name}.key"), &key),
        )
    };
    let (expired, expired_key) = write(
        "expired",
        pki.server_identity(&["localhost", "127.0.0.1"], CertFault::Expired),
    );
    let (v1, v1_key) = write("v1", pki.server_identity(&["localhost"], CertFault::V1));
    let (elsewhere, elsewhere_key) = write(
        "elsewhere",
        pki.server_identity(&["10.0.0.5"], CertFault::None),
    );
    let cases = [
        (
            &expired,
            &expired_key,
            "sources.api.tls.cert_file: ",
            "the certificate expired at ",
        ),
        (
            &v1,
            &v1_key,
            "sources.api.tls.cert_file: ",
            "the certificate is X.509 v1",
        ),
        (
            &files.server_cert,
            &files.client_key,
            "sources.api.tls.key_file: ",
            "is not the private key of the certificate in",
        ),
        (
            &elsewhere,
            &elsewhere_key,
            "sources.api.tls.cert_file: ",
            "listens on 127.0.0.1, but the certificate names only 10.0.0.5",
        ),
    ];
    for (cert, key, field, message) in cases {
        let (valid, report) = validate(cert, key);
        assert!(!valid, "{message}: {report}");
        assert!(
            report
                .lines()
                .any(|line| line.contains(field) && line.contains(message)),
            "no {field}...{message} in\n{report}"
        );
    }
}
