//! `https` sink: batched, compressed, retried delivery that acknowledges only what the
//! server accepted.
//!
//! Events are gathered into request batches (by count, bytes before compression, and
//! age), encoded as NDJSON, a JSON array, or an `audit.k8s.io/v1` `EventList`, compressed,
//! and POSTed over HTTP/1.1 or HTTP/2 (ALPN) on kept-alive rustls connections. Up to
//! `request.concurrency` requests are in flight; while every slot is busy the sink takes
//! no input, which is the backpressure that reaches the source.
//!
//! # Layout
//! - this module: the options, the compile step that checks them (every problem at once)
//!   and makes what the sink is built from, and building the sink.
//! - [`tls`]: the `tls` options' files, read and checked once, and the rustls client
//!   configuration made from them.
//! - [`encode`]: request bodies (encoding, then compression).
//! - [`sink`]: batching, the request slots, retries and acknowledgements.
//!
//! # The one design decision
//! A request batch owns the finalizers of every input batch it holds events of (an input
//! batch split across two requests gives each a handle), and resolves them only with the
//! request's fate: `Delivered` after a 2xx, `Rejected` after a 4xx that retrying cannot
//! fix or when `retry_max_duration_secs` runs out. Everything else is retried, so an
//! event is never acknowledged before the server has it.

mod encode;
mod sink;
mod tls;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use auditflow_core::duration::DurationRange;
use auditflow_core::{BuildContext, BuildError, CompileOnce, Sink, SinkConfig, Validate};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Sends events to an HTTP(S) endpoint in batches, compressed, with retries; acknowledges
/// events only after a 2xx answer.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpsConfig {
    /// What `validate` compiled when the pipeline loaded, for `build` to take.
    #[serde(skip)]
    #[schemars(skip)]
    compiled: CompileOnce<Compiled>,
    /// Where to send: `https://host:port/path`. `http://` only with `allow_plaintext: true`.
    pub uri: String,
    /// Allow an `http://` uri: events (and credentials) then travel unencrypted.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// The request method.
    #[serde(default)]
    pub method: Method,
    /// How events are put in the body.
    #[serde(default)]
    pub encoding: Encoding,
    /// How the body is compressed (sent as `Content-Encoding`).
    #[serde(default)]
    pub compression: Compression,
    /// When a request batch is sent.
    #[serde(default)]
    pub batch: BatchOptions,
    /// Timeouts, concurrency and retries.
    #[serde(default)]
    pub request: RequestOptions,
    /// Extra request headers. Values are masked in logs.
    #[serde(default)]
    pub headers: Headers,
    /// Credentials sent with every request (usually `${VAR}` from the environment).
    #[serde(default)]
    pub auth: Option<Auth>,
    /// TLS options (certificate authorities, client certificate).
    #[serde(default)]
    pub tls: TlsOptions,
}

/// The request method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Method {
    #[default]
    #[serde(rename = "POST")]
    Post,
    #[serde(rename = "PUT")]
    Put,
}

/// How events are put in a request body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// One compact JSON event per line (`application/x-ndjson`).
    #[default]
    Ndjson,
    /// One JSON array of events (`application/json`).
    JsonArray,
    /// An `audit.k8s.io/v1` `EventList`, the body kube-apiserver's webhook backend sends.
    EventList,
}

/// How a request body is compressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    #[default]
    Gzip,
    Zstd,
}

/// A request batch is sent as soon as any limit is reached.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchOptions {
    /// Events per request at most.
    #[serde(default = "default_max_events")]
    pub max_events: NonZeroUsize,
    /// Bytes of events per request at most, measured before compression. One larger
    /// event still goes, alone.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: NonZeroUsize,
    /// How long the first event of a request batch waits for more, in milliseconds (1 to
    /// 3600000: 1 ms to 1 h).
    #[serde(default = "default_batch_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_max_events() -> NonZeroUsize {
    NonZeroUsize::new(1000).expect("non-zero")
}

fn default_max_bytes() -> NonZeroUsize {
    NonZeroUsize::new(1024 * 1024).expect("non-zero")
}

fn default_batch_timeout_ms() -> u64 {
    1000
}

impl Default for BatchOptions {
    fn default() -> BatchOptions {
        BatchOptions {
            max_events: default_max_events(),
            max_bytes: default_max_bytes(),
            timeout_ms: default_batch_timeout_ms(),
        }
    }
}

/// Timeouts, concurrency and retries.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestOptions {
    /// One attempt's time limit (connecting, sending, and reading the answer), in
    /// milliseconds (1 to 86400000: 1 ms to 1 day).
    #[serde(default = "default_request_timeout_ms")]
    pub timeout_ms: u64,
    /// Requests in flight at most (including those waiting to retry).
    #[serde(default = "default_concurrency")]
    pub concurrency: NonZeroUsize,
    /// The first retry waits up to this long (full jitter), in milliseconds (1 to 86400000:
    /// 1 ms to 1 day); each further retry doubles the bound.
    #[serde(default = "default_initial_backoff_ms")]
    pub retry_initial_backoff_ms: u64,
    /// The bound on one retry's wait, in milliseconds (from `retry_initial_backoff_ms` to
    /// 86400000: 1 day); a server's `Retry-After` is honoured up to this long.
    #[serde(default = "default_max_backoff_ms")]
    pub retry_max_backoff_ms: u64,
    /// Give a request up (its events are rejected and counted) after retrying this long,
    /// in seconds (1 to 2592000: 1 s to 30 days). Unset: retry for ever, keeping the
    /// sources blocked meanwhile.
    #[serde(default)]
    pub retry_max_duration_secs: Option<u64>,
}

/// `batch.timeout_ms`: the first event of a request waits an hour at most (its source's
/// acknowledgement waits with it).
const BATCH_TIMEOUT_MS: DurationRange = DurationRange::millis(1, DurationRange::HOUR_SECS * 1000);
/// `request.timeout_ms`: one attempt, up to a day.
const REQUEST_TIMEOUT_MS: DurationRange = DurationRange::millis(1, DurationRange::DAY_MS);
/// `request.retry_initial_backoff_ms` and `request.retry_max_backoff_ms`: up to a day.
const BACKOFF_MS: DurationRange = DurationRange::millis(1, DurationRange::DAY_MS);
/// `request.retry_max_duration_secs`: up to 30 days (unset: for ever).
const RETRY_MAX_DURATION_SECS: DurationRange = DurationRange::secs(1, 30 * DurationRange::DAY_SECS);

fn default_request_timeout_ms() -> u64 {
    30_000
}

fn default_concurrency() -> NonZeroUsize {
    NonZeroUsize::new(4).expect("non-zero")
}

fn default_initial_backoff_ms() -> u64 {
    500
}

fn default_max_backoff_ms() -> u64 {
    30_000
}

impl Default for RequestOptions {
    fn default() -> RequestOptions {
        RequestOptions {
            timeout_ms: default_request_timeout_ms(),
            concurrency: default_concurrency(),
            retry_initial_backoff_ms: default_initial_backoff_ms(),
            retry_max_backoff_ms: default_max_backoff_ms(),
            retry_max_duration_secs: None,
        }
    }
}

/// Extra request headers, name to value. Values may hold credentials, so `Debug` shows
/// only the names.
#[derive(Clone, Default, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Headers(pub BTreeMap<String, String>);

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|name| (name, Masked)))
            .finish()
    }
}

/// Credentials sent with every request.
#[derive(Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// `Authorization: Bearer <token>`.
    BearerToken(Secret),
    /// `Authorization: Basic ...`.
    Basic {
        /// The user name.
        user: String,
        /// The password.
        password: Secret,
    },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::BearerToken(_) => f.debug_tuple("BearerToken").field(&Masked).finish(),
            Auth::Basic { user, .. } => f
                .debug_struct("Basic")
                .field("user", user)
                .field("password", &Masked)
                .finish(),
        }
    }
}

/// A credential: never shown by `Debug`.
#[derive(Clone, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Masked.fmt(f)
    }
}

struct Masked;

impl fmt::Debug for Masked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// TLS options. Without `ca_file`, the system's certificate authorities are trusted.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsOptions {
    /// PEM file of the certificate authorities to trust (instead of the system's).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (chain) to present; needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name the server certificate must carry, when it is not the uri's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Accept any server certificate. Only for tests: anyone in the path can read and
    /// change the events. Logged loudly at start.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

impl HttpsConfig {
    /// The options compiled into what the sink is built from (the uri parsed, the headers
    /// made, the TLS files read), or every problem with them, each naming its field. The
    /// one step behind both `validate` and `build`.
    fn compile(&self) -> Result<Compiled, Vec<BuildError>> {
        let mut errors = Vec::new();
        let uri = self.parse_uri().map_err(|error| errors.push(error)).ok();
        let headers = sink::header_map(self)
            .map_err(|problems| errors.extend(problems))
            .ok();
        let request = &self.request;
        let durations = [
            ("batch.timeout_ms", BATCH_TIMEOUT_MS, self.batch.timeout_ms),
            ("request.timeout_ms", REQUEST_TIMEOUT_MS, request.timeout_ms),
            (
                "request.retry_initial_backoff_ms",
                BACKOFF_MS,
                request.retry_initial_backoff_ms,
            ),
            (
                "request.retry_max_backoff_ms",
                BACKOFF_MS,
                request.retry_max_backoff_ms,
            ),
        ];
        for (field, range, value) in durations {
            errors.extend(range.check(field, value).err());
        }
        if let Some(secs) = request.retry_max_duration_secs {
            let field = "request.retry_max_duration_secs";
            if let Err(mut error) = RETRY_MAX_DURATION_SECS.check(field, secs) {
                error.message.push_str("; leave it unset to retry for ever");
                errors.push(error);
            }
        }
        if self.request.retry_max_backoff_ms < self.request.retry_initial_backoff_ms {
            errors.push(BuildError::field(
                "request.retry_max_backoff_ms",
                format!(
                    "is {} but must not be below request.retry_initial_backoff_ms ({})",
                    self.request.retry_max_backoff_ms, self.request.retry_initial_backoff_ms
                ),
            ));
        }
        let tls = tls::compile(&self.tls)
            .map_err(|problems| errors.extend(problems))
            .ok();
        match (uri, headers, tls) {
            (Some(uri), Some(headers), Some(tls)) if errors.is_empty() => {
                Ok(Compiled { uri, headers, tls })
            }
            _ => Err(errors),
        }
    }

    fn parse_uri(&self) -> Result<hyper::Uri, BuildError> {
        let uri: hyper::Uri = self
            .uri
            .parse()
            .map_err(|error| BuildError::field("uri", format!("invalid URL: {error}")))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if self.allow_plaintext => {}
            Some("http") => {
                return Err(BuildError::field(
                    "uri",
                    "is http://, which sends events unencrypted; use https:// or set allow_plaintext: true",
                ))
            }
            _ => {
                return Err(BuildError::field(
                    "uri",
                    format!("{:?} must start with https://", self.uri),
                ))
            }
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(BuildError::field("uri", "has no host"));
        }
        Ok(uri)
    }
}

/// The options compiled: what the sink is built from, but for the system's certificate
/// authorities (the machine's, loaded by `build`) and the metrics.
struct Compiled {
    uri: hyper::Uri,
    /// Every request's headers: content type and encoding, credentials, the user's own.
    headers: hyper::HeaderMap,
    tls: tls::ClientTls,
}

impl Validate for HttpsConfig {
    fn validate(&self) -> Vec<BuildError> {
        self.compiled.validate(|| self.compile())
    }
}

impl SinkConfig for HttpsConfig {
    fn build(&self, cx: BuildContext) -> Result<Box<dyn Sink>, BuildError> {
        let Compiled { uri, headers, tls } = self.compiled.take(|| self.compile())?;
        let server_name = tls.server_name.clone();
        let tls = tls.into_config()?;
        if self.tls.insecure_skip_verify {
            tracing::warn!(
                component_id = %cx.id,
                uri = %self.uri,
                "tls.insecure_skip_verify is on: the server's certificate is NOT checked, anyone in the network path can read and change these audit events; never use this in production"
            );
        }
        Ok(Box::new(sink::HttpsSink::new(
            self,
            uri,
            headers,
            tls,
            server_name,
            cx,
        )))
    }
}

impl RequestOptions {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}
