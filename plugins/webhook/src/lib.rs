//! `webhook` source: the receiver for kube-apiserver's audit webhook backend
//! (`--audit-webhook-config-file`), over HTTPS (optionally mTLS) with bearer tokens.
//!
//! The API server POSTs `audit.k8s.io/v1` `EventList` batches and retries every failure
//! with backoff, so this source answers in the API server's terms: `200` once every event
//! of the request is delivered (with `acknowledgements`), `503` + `Retry-After` when the
//! pipeline cannot take the events in time, and a `4xx` only for requests that can never
//! succeed.
//!
//! # Layout
//! - this module: the options ([`WebhookConfig`]); the compile step behind both `validate`
//!   and `build`, which checks them (every problem at once) and reads certificates and
//!   tokens once; and the build step, which binds the listener (so a busy port fails
//!   `run` at start, naming `address`).
//! - [`server`]: the accept loop, TLS, and the request handler; bodies are split into
//!   events by [`auditflow_core::decode`], which the `kafka` source shares.
//! - `connection`: one connection's life: the idle watch, lingering closes, and the
//!   response body that keeps a refused request's body unread until the answer is out.
//! - [`firehose`]: `protocol: firehose`, Amazon Data Firehose's HTTP endpoint delivery
//!   (EKS audit logs from CloudWatch Logs), and the `decoding` of bodies.
//! - `tls`: the rustls server configuration (ring; mTLS when `client_ca_file` is set).
//!
//! # The one design decision
//! A body is read once into one buffer and parsed once into borrowed items; every event is
//! a slice of that buffer (`Bytes::slice_ref`), so an event leaves exactly as the API
//! server sent it and no event is copied or re-serialised. The buffer is what memory is
//! bounded by: a byte budget (4 × `max_body_bytes`) shared by every request in flight.

mod connection;
mod firehose;
mod server;

pub use server::decode_body;
mod tls;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use auditflow_core::duration::DurationRange;
use auditflow_core::envelope::{Decoding, Envelope, EnvelopeField};
use auditflow_core::{BuildContext, BuildError, CompileOnce, Source, SourceConfig, Validate};
use auditflow_tls::Loaded;
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::firehose::Protocol;

/// Receives kube-apiserver's audit webhook batches (`EventList`) over HTTPS.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// What `validate` compiled when the pipeline loaded, for `build` to take.
    #[serde(skip)]
    #[schemars(skip)]
    compiled: CompileOnce<Loaded<Compiled>>,
    /// Address to listen on (`host:port`).
    #[serde(default = "default_address")]
    pub address: SocketAddr,
    /// URL path the API server posts to (the path of `server:` in its kubeconfig). Other
    /// paths get 404; the query (`?timeout=30s`) is ignored.
    #[serde(default = "default_path")]
    pub path: String,
    /// Server certificate and key, and optionally the CA that client certificates must be
    /// signed by (mTLS). Required unless `allow_plaintext` is true.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Accept plain HTTP. Audit events carry secrets: only for a loopback address or a
    /// mesh that encrypts for you.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Bearer tokens a request must carry (`Authorization: Bearer ...`); without `auth`
    /// no token is asked for.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Largest request body accepted, in bytes, after gzip decompression; larger ones get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Answer 200 only once the sinks have delivered every event of the request (the API
    /// server resends what was not acknowledged). When false, 200 means "taken by the
    /// pipeline".
    #[serde(default = "default_acknowledgements")]
    pub acknowledgements: bool,
    /// How long a request waits for room in the pipeline before it is answered 503 with
    /// `Retry-After`, in milliseconds (1 to 3600000: 1 ms to 1 h, like every timeout here).
    #[serde(default = "default_accept_timeout_ms")]
    pub accept_timeout_ms: u64,
    /// How long a request waits for its events to be delivered (with `acknowledgements`)
    /// before it is answered 503, in milliseconds. Keep it under the API server's own 30 s
    /// request timeout.
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// Connections open at once. Connections over it are closed as soon as they are
    /// accepted (counted in `auditflow_webhook_connections_refused_total`). kube-apiserver
    /// holds one HTTP/2 connection per API server; each connection costs about 26 KiB idle
    /// over TLS, 35 KiB with a request in progress (bodies apart).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// The TLS handshake, and every request head, must arrive within this many
    /// milliseconds; a connection that carries no request for this long (idle keep-alive)
    /// is closed.
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// A request's body must arrive within this many milliseconds of its head, else the
    /// request is answered `408` and its body discarded.
    #[serde(default = "default_body_read_timeout_ms")]
    pub body_read_timeout_ms: u64,
    /// Pass the test event of `auditflow webhook-check` on to the pipeline. By default it
    /// is counted (`auditflow_webhook_checks_total`) and dropped.
    #[serde(default)]
    pub pass_check_events: bool,
    /// What the client speaks: `kube_apiserver` (default: the audit webhook backend) or
    /// `firehose` (Amazon Data Firehose's HTTP endpoint delivery, for EKS audit logs
    /// through CloudWatch Logs; answers `{"requestId","timestamp"}`).
    #[serde(default)]
    pub protocol: Protocol,
    /// How a body (with `firehose`: each record) holds events: `audit` (default),
    /// `azure_diagnostic_records` or `cloudwatch_logs` (what Firehose carries from a
    /// CloudWatch Logs subscription).
    #[serde(default)]
    pub decoding: Decoding,
    /// Envelope fields kept on every event as annotations (`cloudwatch_logs` only):
    /// `logGroup` (`auditflow.io/log-group`), `logStream` (`auditflow.io/log-stream`).
    #[serde(default)]
    pub keep_envelope_fields: Vec<EnvelopeField>,
}

/// The annotation that marks the test event `auditflow webhook-check` sends.
pub const CHECK_ANNOTATION: &str = "auditflow.io/webhook-check";

/// Certificate files, PEM.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server certificate chain (the API server checks it against
    /// `certificate-authority` in its kubeconfig).
    pub cert_file: PathBuf,
    /// The server certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// When set, every client must present a certificate signed by one of these CAs
    /// (the kubeconfig's `client-certificate`).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// Where the accepted bearer tokens come from: one or the other.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    /// The tokens themselves (use `${VAR}` to keep them out of the file).
    BearerTokens(Vec<Token>),
    /// A file with one token per line; blank lines and lines starting with `#` are skipped.
    BearerTokensFile(PathBuf),
    /// `protocol: firehose` only: the access keys a request may carry in
    /// `X-Amz-Firehose-Access-Key` (the destination's access key; use `${VAR}`).
    AccessKeys(Vec<Token>),
}

/// A secret that never shows in logs or `Debug` output.
#[derive(Clone, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Token(pub String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

fn default_address() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8443))
}

fn default_path() -> String {
    "/".to_owned()
}

fn default_max_body_bytes() -> usize {
    32 * 1024 * 1024
}

fn default_acknowledgements() -> bool {
    true
}

/// Every timeout: the API server gives up on a request after 30 s, so an hour is far
/// past anything useful.
const TIMEOUT_MS: DurationRange = DurationRange::millis(1, DurationRange::HOUR_SECS * 1000);

fn default_accept_timeout_ms() -> u64 {
    5000
}

fn default_ack_timeout_ms() -> u64 {
    25_000
}

fn default_max_connections() -> usize {
    256
}

fn default_header_read_timeout_ms() -> u64 {
    10_000
}

fn default_body_read_timeout_ms() -> u64 {
    30_000
}

impl WebhookConfig {
    /// The options compiled into what the source is built from (certificates, keys and
    /// tokens read once, the TLS configuration made), or every problem with them, each
    /// naming its field. The one step behind both `validate` and `build`; the listener,
    /// whose port belongs to the machine, is left to `build`, and so are files this
    /// machine does not have ([`Loaded::Absent`]).
    fn compile(&self) -> Result<Loaded<Compiled>, Vec<BuildError>> {
        let mut problems = self.option_problems();
        let mut absent = None;
        // What a TLS client would refuse later is found here, before anything starts.
        let tls = self.tls.as_ref().and_then(|tls| {
            Loaded::note(tls::compile(tls, self.address), &mut problems, &mut absent)
        });
        let tokens = match &self.auth {
            None => None,
            Some(AuthConfig::BearerTokens(tokens)) => {
                Some(tokens.iter().map(|t| TokenDigest::of(&t.0)).collect())
            }
            Some(AuthConfig::BearerTokensFile(path)) => {
                Loaded::note(read_tokens_file(path), &mut problems, &mut absent)
            }
            Some(AuthConfig::AccessKeys(keys)) => {
                Some(keys.iter().map(|k| TokenDigest::of(&k.0)).collect())
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        if let Some(absent) = absent {
            return Ok(Loaded::Absent(absent));
        }
        Ok(Loaded::Read(Compiled {
            tls,
            settings: server::Settings {
                path: self.path.clone(),
                tokens,
                max_body_bytes: self.max_body_bytes,
                acknowledgements: self.acknowledgements,
                accept_timeout: Duration::from_millis(self.accept_timeout_ms),
                ack_timeout: Duration::from_millis(self.ack_timeout_ms),
                max_connections: self.max_connections,
                header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
                body_read_timeout: Duration::from_millis(self.body_read_timeout_ms),
                pass_check_events: self.pass_check_events,
                decoding: std::sync::Arc::new(firehose::BodyDecoding {
                    protocol: self.protocol,
                    envelope: self.envelope(),
                    max_record_bytes: self.max_body_bytes,
                }),
            },
        }))
    }

    /// What is wrong with the options taken one by one, before any file is read.
    fn option_problems(&self) -> Vec<BuildError> {
        let mut problems = Vec::new();
        match (&self.tls, self.allow_plaintext) {
            (None, false) => problems.push(BuildError::field(
                "tls",
                "no TLS configured: set tls.cert_file and tls.key_file (audit events carry \
                 secrets), or allow_plaintext: true to accept plain HTTP",
            )),
            (Some(_), true) => problems.push(BuildError::field(
                "allow_plaintext",
                "tls is set, so plain HTTP is never accepted: remove allow_plaintext",
            )),
            _ => {}
        }
        if !self.path.starts_with('/') || self.path.contains('?') {
            problems.push(BuildError::field(
                "path",
                format!(
                    "{:?} is not a URL path: it starts with `/` and has no query",
                    self.path
                ),
            ));
        }
        if self.max_body_bytes == 0 {
            problems.push(BuildError::field("max_body_bytes", "must be at least 1"));
        }
        if self.max_connections == 0 {
            problems.push(BuildError::field("max_connections", "must be at least 1"));
        }
        let timeouts = [
            ("accept_timeout_ms", self.accept_timeout_ms),
            ("ack_timeout_ms", self.ack_timeout_ms),
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
        ];
        for (field, value) in timeouts {
            problems.extend(TIMEOUT_MS.check(field, value).err());
        }
        if let Some(problem) = self.envelope().problem() {
            problems.push(BuildError::field("keep_envelope_fields", problem));
        }
        match (&self.auth, self.protocol) {
            (Some(AuthConfig::AccessKeys(keys)), Protocol::Firehose)
                if keys.is_empty() || keys.iter().any(|key| key.0.is_empty()) =>
            {
                problems.push(BuildError::field(
                    "auth.access_keys",
                    "list at least one access key, none of them empty, or remove auth",
                ))
            }
            (Some(AuthConfig::AccessKeys(_)), Protocol::Firehose) => {}
            (Some(AuthConfig::AccessKeys(_)), Protocol::KubeApiserver) => {
                problems.push(BuildError::field(
                    "auth.access_keys",
                    "only protocol: firehose sends access keys; kube-apiserver sends bearer tokens (auth.bearer_tokens)",
                ))
            }
            (Some(_), Protocol::Firehose) => problems.push(BuildError::field(
                "auth",
                "Firehose sends its access key in X-Amz-Firehose-Access-Key, not a bearer token: use auth.access_keys",
            )),
            _ => {}
        }
        if let Some(AuthConfig::BearerTokens(tokens)) = &self.auth {
            if tokens.is_empty() {
                problems.push(BuildError::field(
                    "auth.bearer_tokens",
                    "is empty: list at least one token, or remove auth",
                ));
            }
            for (index, token) in tokens.iter().enumerate() {
                if let Some(problem) = token_problem(&token.0) {
                    problems.push(BuildError::field(
                        format!("auth.bearer_tokens[{index}]"),
                        problem,
                    ));
                }
            }
        }
        problems
    }
}

/// The options compiled: everything the source is built from but its listener.
struct Compiled {
    /// `None` with `allow_plaintext`.
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    settings: server::Settings,
}

impl Validate for WebhookConfig {
    fn validate(&self) -> Vec<BuildError> {
        self.compiled.validate(|| self.compile())
    }
}

/// Why a token could never match an `Authorization` header, if it could not.
fn token_problem(token: &str) -> Option<&'static str> {
    if token.is_empty() {
        Some("is empty")
    } else if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("contains whitespace or control characters, which a bearer token cannot")
    } else {
        None
    }
}

impl WebhookConfig {
    fn envelope(&self) -> Envelope {
        Envelope {
            decoding: self.decoding,
            keep: self.keep_envelope_fields.clone(),
        }
    }
}

impl SourceConfig for WebhookConfig {
    fn max_record_bytes(&self) -> Option<(u64, &'static str)> {
        Some((u64::try_from(self.max_body_bytes).ok()?, "max_body_bytes"))
    }

    fn build(&self, cx: BuildContext) -> Result<Box<dyn Source>, BuildError> {
        let Compiled { tls, settings } = match self.compiled.take(|| self.compile())? {
            Loaded::Read(compiled) => compiled,
            Loaded::Absent(error) => return Err(error),
        };
        // Bound here, not in `run`, so that a busy port fails `auditflow run` at start
        // with the option's name rather than later as a runtime failure. Rebuilt by a
        // reload on the same address, it takes the previous instance's socket over.
        let listener = auditflow_core::listener::bind(&cx.id, self.address).map_err(|error| {
            BuildError::field(
                "address",
                format!(
                    "cannot listen on {}: {error} (another process holds the port, or \
                     binding it needs privileges)",
                    self.address
                ),
            )
        })?;
        Ok(Box::new(server::WebhookSource::new(
            listener,
            tls,
            settings,
            &cx.id,
            cx.metrics.webhook(),
        )))
    }
}

/// A SHA-256 of a token: comparing digests of equal length in constant time hides both
/// the token's bytes and its length from a timing attacker.
#[derive(Clone, Copy)]
pub(crate) struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub(crate) fn of(token: &str) -> TokenDigest {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }

    /// Constant time: every byte is compared, whatever differs first.
    pub(crate) fn matches(&self, other: &TokenDigest) -> bool {
        let difference = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(difference) == 0
    }
}

/// The tokens of a `bearer_tokens_file`, or every line that holds no usable token.
fn read_tokens_file(path: &std::path::Path) -> Result<Loaded<Vec<TokenDigest>>, Vec<BuildError>> {
    const FIELD: &str = "auth.bearer_tokens_file";
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => {
            let error =
                BuildError::field(FIELD, format!("cannot read {}: {error}", path.display()));
            return if path.exists() {
                Err(vec![error])
            } else {
                Ok(Loaded::Absent(error))
            };
        }
    };
    let mut tokens = Vec::new();
    let mut problems = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let token = line.trim();
        if token.is_empty() || token.starts_with('#') {
            continue;
        }
        match token_problem(token) {
            Some(problem) => problems.push(BuildError::field(
                FIELD,
                format!("{} line {}: the token {problem}", path.display(), index + 1),
            )),
            None => tokens.push(TokenDigest::of(token)),
        }
    }
    if tokens.is_empty() && problems.is_empty() {
        problems.push(BuildError::field(
            FIELD,
            format!(
                "{} holds no token (one per line): every request would be refused",
                path.display()
            ),
        ));
    }
    if problems.is_empty() {
        Ok(Loaded::Read(tokens))
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests;
