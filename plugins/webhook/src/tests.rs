use std::io::{Read, Write};
use std::sync::Arc;

use auditflow_core::channel;
use auditflow_core::{BatchStatus, NoTelemetry, Output, Shutdown, SourceContext};
use auditflow_testkit::events::WEBHOOK_EVENT_LIST;
use serde_json::value::RawValue;

use super::*;

fn config(yaml_like: serde_json::Value) -> WebhookConfig {
    serde_json::from_value(yaml_like).expect("valid options")
}

/// The raw bytes of each item of an EventList, as a second, independent parse sees them.
fn items_of(list: &str) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct List<'a> {
        #[serde(borrow)]
        items: Vec<&'a RawValue>,
    }
    let list: List = serde_json::from_str(list).unwrap();
    list.items
        .iter()
        .map(|item| item.get().to_owned())
        .collect()
}

#[test]
fn options_that_cannot_work_are_reported_with_their_field() {
    let fields = |options: serde_json::Value| -> Vec<String> {
        config(options)
            .validate()
            .into_iter()
            .filter_map(|problem| problem.field)
            .collect()
    };
    assert_eq!(fields(serde_json::json!({})), ["tls"]);
    assert!(fields(serde_json::json!({"allow_plaintext": true})).is_empty());
    assert_eq!(
        fields(serde_json::json!({
            "allow_plaintext": true, "path": "audit",
            "auth": {"bearer_tokens": ["ok", "has space"]}
        })),
        ["path", "auth.bearer_tokens[1]"]
    );
    // One of the two token sources, never both.
    let both = serde_json::json!({
        "allow_plaintext": true,
        "auth": {"bearer_tokens": ["a"], "bearer_tokens_file": "/x"}
    });
    assert!(serde_json::from_value::<WebhookConfig>(both).is_err());
    // Tokens never show in debug output.
    let options = config(
        serde_json::json!({"allow_plaintext": true, "auth": {"bearer_tokens": ["hunter2"]}}),
    );
    assert!(!format!("{options:?}").contains("hunter2"));
}

#[test]
fn a_timeout_of_zero_is_a_validate_error() {
    let problems: Vec<(String, String)> = config(serde_json::json!({
        "allow_plaintext": true,
        "accept_timeout_ms": 0,
        "ack_timeout_ms": 0,
        "header_read_timeout_ms": 0,
        "body_read_timeout_ms": 0,
    }))
    .validate()
    .into_iter()
    .map(|problem| (problem.field.unwrap_or_default(), problem.message))
    .collect();
    let expected: Vec<(String, String)> = [
        "accept_timeout_ms",
        "ack_timeout_ms",
        "header_read_timeout_ms",
        "body_read_timeout_ms",
    ]
    .map(|field| {
        (
            field.to_owned(),
            "must be between 1 and 3600000 milliseconds (1 ms to 1 h), found 0".to_owned(),
        )
    })
    .to_vec();
    assert_eq!(problems, expected);
}

#[test]
fn a_timeout_past_one_hour_is_a_validate_error() {
    let hour_ms: u64 = 60 * 60 * 1000;
    let fields = |value: u64| -> Vec<String> {
        config(serde_json::json!({
            "allow_plaintext": true,
            "ack_timeout_ms": value,
            "header_read_timeout_ms": value,
        }))
        .validate()
        .into_iter()
        .filter_map(|problem| problem.field)
        .collect()
    };
    assert!(fields(hour_ms).is_empty());
    assert_eq!(
        fields(hour_ms + 1),
        ["ack_timeout_ms", "header_read_timeout_ms"]
    );
    assert_eq!(
        fields(u64::MAX),
        ["ack_timeout_ms", "header_read_timeout_ms"]
    );
}

fn build_cx() -> BuildContext {
    BuildContext::unobserved("webhook", std::env::temp_dir())
}

#[test]
fn a_busy_address_fails_the_build_naming_the_option() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let options = config(serde_json::json!({
        "allow_plaintext": true,
        "address": taken.local_addr().unwrap().to_string(),
    }));
    let error = options.build(build_cx()).err().expect("the port is taken");
    assert_eq!(error.field.as_deref(), Some("address"));
    assert!(
        error.message.contains("cannot listen on 127.0.0.1:"),
        "{}",
        error.message
    );
}

#[test]
fn missing_certificate_and_token_files_fail_the_build_naming_the_option() {
    let options = config(serde_json::json!({
        "tls": {"cert_file": "/nonexistent/tls.crt", "key_file": "/nonexistent/tls.key"},
        "address": "127.0.0.1:0",
    }));
    // A pipeline validates on a machine without its secrets (CI); `run` names the file.
    assert!(options.validate().is_empty());
    let error = options.build(build_cx()).err().unwrap();
    assert_eq!(error.field.as_deref(), Some("tls.cert_file"));

    let dir = tempfile_dir();
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "# only a comment\n\n").unwrap();
    let options = config(serde_json::json!({
        "allow_plaintext": true,
        "address": "127.0.0.1:0",
        "auth": {"bearer_tokens_file": tokens},
    }));
    let error = options.build(build_cx()).err().unwrap();
    assert_eq!(error.field.as_deref(), Some("auth.bearer_tokens_file"));
    assert!(error.message.contains("holds no token"));
}

/// A `bearer_tokens_file` was read only by `build`, which stopped at its first bad line:
/// `auditflow validate` passed a file that `run` refused, and each bad line showed only
/// once the one before it was fixed.
#[test]
fn validate_reports_every_error_not_only_the_first() {
    let tokens = tempfile_dir().join("two-bad-tokens");
    std::fs::write(&tokens, "good\nhas space\n# a comment\ntab\there\n").unwrap();
    let problems: Vec<(String, String)> = config(serde_json::json!({
        "allow_plaintext": true,
        "path": "audit",
        "auth": {"bearer_tokens_file": tokens},
    }))
    .validate()
    .into_iter()
    .map(|problem| (problem.field.unwrap_or_default(), problem.message))
    .collect();
    let bad_line = |line: usize| {
        (
            "auth.bearer_tokens_file".to_owned(),
            format!(
                "{} line {line}: the token contains whitespace or control characters, which a \
                 bearer token cannot",
                tokens.display()
            ),
        )
    };
    assert_eq!(
        problems,
        [
            (
                "path".to_owned(),
                "\"audit\" is not a URL path: it starts with `/` and has no query".to_owned()
            ),
            bad_line(2),
            bad_line(4),
        ]
    );
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("auditflow-webhook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn token_digests_match_only_the_same_token() {
    let token = TokenDigest::of("audit-sink-shared-secret-123");
    assert!(token.matches(&TokenDigest::of("audit-sink-shared-secret-123")));
    assert!(!token.matches(&TokenDigest::of("audit-sink-shared-secret-12")));
    assert!(!token.matches(&TokenDigest::of("")));
}

/// Runs the source in-process on a plain-HTTP port, with a sink played by the test that
/// resolves every batch with `verdict`; returns the raw HTTP response to one POST.
async fn answer_when_the_sink_says(verdict: Option<BatchStatus>, ack_timeout_ms: u64) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let options = config(serde_json::json!({
        "allow_plaintext": true,
        "address": address.to_string(),
        "path": "/audit",
        "ack_timeout_ms": ack_timeout_ms,
    }));
    let source = options.build(build_cx()).unwrap();
    let (tx, mut rx) = channel::channel(2, Arc::new(NoTelemetry));
    let (trigger, shutdown) = Shutdown::new();
    let cx = SourceContext {
        id: "webhook".into(),
        out: Output::new(vec![tx], Arc::new(NoTelemetry)),
        shutdown,
        telemetry: Arc::new(NoTelemetry),
        dead_letter: auditflow_core::DeadLetterOutput::disconnected("webhook"),
    };
    let running = tokio::spawn(source.run(cx));
    let sink = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(batch) = rx.recv().await {
            match verdict {
                Some(status) => batch.resolve(status),
                None => held.push(batch),
            }
        }
    });
    let response = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        let body = WEBHOOK_EVENT_LIST.as_bytes();
        write!(
            stream,
            "POST /audit?timeout=30s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        stream.write_all(body).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    })
    .await
    .unwrap();
    trigger.trigger();
    running.await.unwrap().unwrap();
    sink.await.unwrap();
    response
}

#[tokio::test]
async fn the_answer_follows_the_sinks_verdict() {
    let delivered = answer_when_the_sink_says(Some(BatchStatus::Delivered), 5000).await;
    assert!(delivered.starts_with("HTTP/1.1 200"), "{delivered}");
    let expected = items_of(WEBHOOK_EVENT_LIST).len();
    assert!(
        delivered.contains(&format!("\"accepted\":{expected}")),
        "{delivered}"
    );

    let rejected = answer_when_the_sink_says(Some(BatchStatus::Rejected), 5000).await;
    assert!(rejected.starts_with("HTTP/1.1 500"), "{rejected}");
    assert!(
        rejected.contains("a sink rejected the events"),
        "{rejected}"
    );

    let errored = answer_when_the_sink_says(Some(BatchStatus::Errored), 5000).await;
    assert!(errored.starts_with("HTTP/1.1 503"), "{errored}");
    assert!(
        errored.to_ascii_lowercase().contains("retry-after: 5"),
        "{errored}"
    );

    let unanswered = answer_when_the_sink_says(None, 300).await;
    assert!(unanswered.starts_with("HTTP/1.1 503"), "{unanswered}");
    assert!(
        unanswered.contains("ack_timeout_ms (300 ms)"),
        "{unanswered}"
    );
}

#[test]
fn a_whole_body_decodes_as_a_post_would_take_it() {
    use hyper::header::{HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
    use hyper::StatusCode;

    let headers = |content_type: &'static str, encoding: &'static str| {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if !encoding.is_empty() {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static(encoding));
        }
        headers
    };
    let list = WEBHOOK_EVENT_LIST.as_bytes();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(list).unwrap();
    let gzipped = gz.finish().unwrap();

    let plain = server::decode_body(&headers("application/json", ""), list, 1 << 20).unwrap();
    let inflated =
        server::decode_body(&headers("application/json", "gzip"), &gzipped, 1 << 20).unwrap();
    let raw = |decoded: &auditflow_core::decode::Decoded| -> Vec<String> {
        decoded
            .events
            .iter()
            .map(|event| String::from_utf8(event.raw().to_vec()).unwrap())
            .collect()
    };
    assert_eq!(raw(&plain), items_of(WEBHOOK_EVENT_LIST));
    assert_eq!(raw(&inflated), raw(&plain));

    let ndjson = b"{\"auditID\":\"a\"}\n\n{\"auditID\":\"b\"}\n";
    let decoded =
        server::decode_body(&headers("application/x-ndjson", "identity"), ndjson, 1024).unwrap();
    assert_eq!(decoded.events.len(), 2);

    let refused = |headers: HeaderMap, body: &[u8], max: usize| {
        server::decode_body(&headers, body, max).unwrap_err()
    };
    let (status, message) = refused(headers("text/plain", ""), list, 1 << 20);
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{message}");
    let (status, message) = refused(headers("application/json", "br"), list, 1 << 20);
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{message}");
    let (status, message) = refused(headers("application/json", "gzip"), &gzipped, 100);
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{message}");
    assert!(message.contains("max_body_bytes (100)"), "{message}");
    let (status, message) = refused(headers("application/json", "gzip"), list, 1 << 20);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
    assert!(message.contains("not valid gzip"), "{message}");
    let (status, message) = refused(headers("application/json", ""), b"[7]", 1 << 20);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
}

/// (The flag is process-wide: nextest runs each test in a process of its own.)
#[tokio::test]
async fn over_the_memory_limit_requests_are_answered_503_with_retry_after() {
    auditflow_core::memory::set_limited(true);
    let limited = answer_when_the_sink_says(Some(BatchStatus::Delivered), 5000).await;
    assert!(limited.starts_with("HTTP/1.1 503"), "{limited}");
    assert!(
        limited.to_ascii_lowercase().contains("retry-after: 5"),
        "{limited}"
    );
    assert!(limited.contains("memory limit"), "{limited}");

    auditflow_core::memory::set_limited(false);
    let delivered = answer_when_the_sink_says(Some(BatchStatus::Delivered), 5000).await;
    assert!(delivered.starts_with("HTTP/1.1 200"), "{delivered}");
}
