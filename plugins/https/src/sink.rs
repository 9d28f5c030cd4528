//! The running sink: batching, request slots, retries and acknowledgements.
//!
//! One loop owns the open request batch and the sealed ones waiting for a slot; each
//! request runs as its own task (in a `JoinSet`) until it is delivered or given up. The
//! loop takes input only while no sealed batch waits for a slot, so a slow or failing
//! server blocks the channel in front of the sink, and through it the source.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use auditflow_core::{
    Batch, BatchStatus, BuildContext, BuildError, ComponentError, DeadLetter, DeadLetterOutput,
    Event, Finalizers, Location, Sink, SinkContext, Telemetry,
};
use auditflow_metrics::SinkRequestMetrics;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rand::Rng;
use rustls::pki_types::ServerName;
use tokio::task::JoinSet;

use crate::{encode, Auth, BatchOptions, Compression, Encoding, HttpsConfig, Method};

/// How much of a refusing server's answer goes into the log.
const LOGGED_BODY_BYTES: usize = 1024;

/// How much of an answer is read at most (the rest is dropped with the connection).
const READ_BODY_BYTES: usize = 64 * 1024;

/// The sink built from [`HttpsConfig`].
pub(crate) struct HttpsSink {
    shared: Arc<Shared>,
    batch: BatchOptions,
    concurrency: usize,
}

/// What every request task needs.
struct Shared {
    /// `sinks.<id>`, the prefix of every message for the operator.
    name: String,
    id: String,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    /// `host:port`, for messages.
    authority: String,
    method: hyper::Method,
    headers: HeaderMap,
    encoding: Encoding,
    compression: Compression,
    timeout: Duration,
    initial_backoff: Duration,
    max_backoff: Duration,
    max_retry_duration: Option<Duration>,
    telemetry: Arc<dyn Telemetry>,
    /// In flight, retried, latency: the sink's own series.
    metrics: SinkRequestMetrics,
}

/// The headers every request carries: content type and encoding, credentials, and the
/// user's own (which may override the first two); or every header that cannot be sent.
pub(crate) fn header_map(config: &HttpsConfig) -> Result<HeaderMap, Vec<BuildError>> {
    let mut headers = HeaderMap::new();
    let mut errors = Vec::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(config.encoding.content_type()),
    );
    if let Some(encoding) = config.compression.content_encoding() {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
    }
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static(concat!("auditflow/", env!("CARGO_PKG_VERSION"))),
    );
    for (name, value) in &config.headers.0 {
        let field = || format!("headers.{name}");
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            errors.push(BuildError::field(
                field(),
                "is not a valid HTTP header name",
            ));
            continue;
        };
        let Ok(mut value) = HeaderValue::from_str(value) else {
            errors.push(BuildError::field(
                field(),
                "has characters an HTTP header value cannot hold",
            ));
            continue;
        };
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    if let Some(auth) = &config.auth {
        let text = match auth {
            Auth::BearerToken(token) => format!("Bearer {}", token.0),
            Auth::Basic { user, password } => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", password.0))
            ),
        };
        match HeaderValue::from_str(&text) {
            Ok(mut value) => {
                value.set_sensitive(true);
                headers.insert(header::AUTHORIZATION, value);
            }
            Err(_) => errors.push(BuildError::field(
                "auth",
                "has characters an HTTP header cannot hold (a newline at the end of a token file?)",
            )),
        }
    }
    if errors.is_empty() {
        Ok(headers)
    } else {
        Err(errors)
    }
}

impl HttpsSink {
    /// The sink for `config`, from what its compile step made: the parsed `uri`, every
    /// request's `headers`, the TLS client configuration and `tls.server_name`; its id,
    /// telemetry and metrics handle come from `cx`.
    pub(crate) fn new(
        config: &HttpsConfig,
        uri: Uri,
        headers: HeaderMap,
        tls: rustls::ClientConfig,
        server_name: Option<ServerName<'static>>,
        cx: BuildContext,
    ) -> HttpsSink {
        let BuildContext {
            id,
            telemetry,
            metrics,
            ..
        } = cx;
        let metrics = metrics.sink_requests();
        let timeout = config.request.timeout();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        let mut builder = if config.allow_plaintext {
            builder.https_or_http()
        } else {
            builder.https_only()
        };
        if let Some(name) = server_name {
            builder = builder.with_server_name_resolver(FixedServerNameResolver::new(name));
        }
        let connector = builder.enable_http1().enable_http2().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        let authority = match uri.port_u16() {
            Some(_) => uri.authority().map(ToString::to_string).unwrap_or_default(),
            None => format!(
                "{}:{}",
                uri.host().unwrap_or_default(),
                if uri.scheme_str() == Some("http") {
                    80
                } else {
                    443
                }
            ),
        };
        // The sink's own series exist from the start, at zero (`metrics` resolved them),
        // so that a dashboard (or a check) sees `0`, not nothing, before the first request.
        HttpsSink {
            shared: Arc::new(Shared {
                name: format!("sinks.{id}"),
                id,
                client,
                uri,
                authority,
                method: match config.method {
                    Method::Post => hyper::Method::POST,
                    Method::Put => hyper::Method::PUT,
                },
                headers,
                encoding: config.encoding,
                compression: config.compression,
                timeout,
                initial_backoff: Duration::from_millis(config.request.retry_initial_backoff_ms),
                max_backoff: Duration::from_millis(config.request.retry_max_backoff_ms),
                max_retry_duration: config
                    .request
                    .retry_max_duration_secs
                    .map(Duration::from_secs),
                telemetry,
                metrics,
            }),
            batch: config.batch.clone(),
            concurrency: config.request.concurrency.get(),
        }
    }
}

/// Events on their way into one request, with the acknowledgement handles of every input
/// batch they came from.
#[derive(Default)]
struct RequestBatch {
    events: Vec<Event>,
    /// Bytes of the events as JSON, plus one separator each.
    bytes: usize,
    finalizers: Finalizers,
    /// When the batch must go even if not full (set by its first event).
    deadline: Option<tokio::time::Instant>,
}

impl RequestBatch {
    fn is_full(&self, limits: &BatchOptions) -> bool {
        self.events.len() >= limits.max_events.get() || self.bytes >= limits.max_bytes.get()
    }
}

#[async_trait]
impl Sink for HttpsSink {
    async fn run(self: Box<Self>, mut cx: SinkContext) -> Result<(), ComponentError> {
        let mut open = RequestBatch::default();
        let mut sealed: VecDeque<RequestBatch> = VecDeque::new();
        let mut requests = JoinSet::new();
        let mut input_done = false;
        loop {
            while requests.len() < self.concurrency {
                let Some(batch) = sealed.pop_front() else {
                    break;
                };
                requests.spawn(Arc::clone(&self.shared).deliver(batch, cx.dead_letter.clone()));
            }
            if input_done && sealed.is_empty() {
                if !open.events.is_empty() {
                    sealed.push_back(std::mem::take(&mut open));
                    continue;
                }
                // Upstream finished: what is in flight is all that is left.
                while let Some(joined) = requests.join_next().await {
                    self.shared.check_joined(joined);
                }
                return Ok(());
            }
            // A sealed batch waiting for a slot means every slot is busy: take no input
            // (that is the backpressure) and let the open batch wait too.
            let taking = !input_done && sealed.is_empty();
            let deadline = open.deadline.unwrap_or_else(|| far_or(None));
            tokio::select! {
                joined = requests.join_next(), if !requests.is_empty() => {
                    if let Some(joined) = joined {
                        self.shared.check_joined(joined);
                    }
                }
                batch = cx.input.recv(), if taking => match batch {
                    Some(batch) => self.add(batch, &mut open, &mut sealed),
                    None => input_done = true,
                },
                _ = tokio::time::sleep_until(deadline), if open.deadline.is_some() && sealed.is_empty() => {
                    sealed.push_back(std::mem::take(&mut open));
                }
            }
        }
    }
}

impl HttpsSink {
    /// Moves an input batch's events into request batches, sealing each that fills up.
    fn add(&self, mut batch: Batch, open: &mut RequestBatch, sealed: &mut VecDeque<RequestBatch>) {
        let finalizers = batch.take_finalizers();
        let events = std::mem::take(&mut batch.events);
        if events.is_empty() {
            finalizers.resolve(BatchStatus::Delivered);
            return;
        }
        let limits = &self.batch;
        // Whether `open` holds events of this input batch (and so needs its handles).
        let mut holds_this = false;
        for event in events {
            let size = event.size_hint() + 1;
            if !open.events.is_empty()
                && (open.events.len() >= limits.max_events.get()
                    || open.bytes + size > limits.max_bytes.get())
            {
                if holds_this {
                    open.finalizers.merge(finalizers.clone());
                }
                sealed.push_back(std::mem::take(open));
            }
            if open.events.is_empty() {
                // Checked: `timeout_ms` comes from the config and may be huge.
                open.deadline = Some(far_or(
                    tokio::time::Instant::now()
                        .checked_add(Duration::from_millis(limits.timeout_ms)),
                ));
            }
            open.bytes += size;
            open.events.push(event);
            holds_this = true;
        }
        open.finalizers.merge(finalizers);
        if open.is_full(limits) {
            sealed.push_back(std::mem::take(open));
        }
    }
}

/// What one attempt came to.
enum Attempt {
    Delivered,
    /// Retrying cannot help: a 4xx other than 408 and 429 (or a 1xx/3xx).
    Refused {
        status: StatusCode,
        body: Bytes,
    },
    /// Worth another try, after `retry_after` if the server said so.
    Failed {
        problem: String,
        retry_after: Option<Duration>,
        /// A TLS failure: a configuration problem more often than a passing one.
        tls: bool,
    },
}

/// Why a request was given up.
enum GaveUp {
    /// The destination's status and reply (lossy UTF-8, cut at 4 KiB).
    Refused {
        status: StatusCode,
        reply: String,
    },
    OutOfTime {
        last_error: String,
    },
}

impl Shared {
    /// Sends one request batch until it is delivered or given up, and resolves its
    /// finalizers accordingly.
    ///
    /// Events given up go to `dead_letter` when something reads it (they are then kept
    /// until the request ends), and the source is acknowledged once they are delivered
    /// there.
    async fn deliver(self: Arc<Self>, batch: RequestBatch, dead_letter: DeadLetterOutput) {
        let inflight = self.metrics.inflight.clone();
        inflight.inc();
        let count = batch.events.len();
        let RequestBatch {
            events,
            bytes,
            finalizers,
            ..
        } = batch;
        // Compressing up to `batch.max_bytes` (1 MiB by default) is CPU work of several
        // milliseconds: it runs on a blocking thread, not on the runtime's workers.
        // `spawn_blocking` rather than `block_in_place`: it works on any runtime (the
        // latter panics on a `current_thread` one) and leaves the worker to the other
        // requests in flight instead of moving them to another thread.
        let (encoding, compression) = (self.encoding, self.compression);
        let ((body, plain_bytes), events) = match compression {
            Compression::None => (encode::body(&events, encoding, compression, bytes), events),
            _ => match tokio::task::spawn_blocking(move || {
                (encode::body(&events, encoding, compression, bytes), events)
            })
            .await
            {
                Ok(encoded) => encoded,
                Err(error) => {
                    tracing::error!(component_id = %self.id, %error,
                        "{}: encoding a request of {count} events failed; they are not delivered", self.name);
                    self.telemetry.errored("encoding", count);
                    finalizers.resolve(BatchStatus::Errored);
                    inflight.dec();
                    return;
                }
            },
        };
        // The body holds everything now; the events' memory can go, unless they may
        // become dead letters.
        let events = match dead_letter.is_connected() {
            true => events,
            false => {
                drop(events);
                Vec::new()
            }
        };
        match self.send(body, count).await {
            Ok(()) => {
                self.telemetry.sent(count, plain_bytes);
                finalizers.resolve(BatchStatus::Delivered);
            }
            Err(reason) => {
                let (error_type, status, reply) = match &reason {
                    GaveUp::Refused { status, reply } => {
                        ("rejected", Some(status.as_u16()), Some(reply.as_str()))
                    }
                    GaveUp::OutOfTime { .. } => ("retries_exhausted", None, None),
                };
                self.telemetry.errored(error_type, count);
                self.telemetry.discarded(error_type, count);
                if !dead_letter.is_connected() {
                    finalizers.resolve(BatchStatus::Rejected);
                    inflight.dec();
                    return;
                }
                let error = match &reason {
                    GaveUp::Refused { status, .. } => {
                        format!("{} refused the request with {status}", self.authority)
                    }
                    GaveUp::OutOfTime { last_error } => format!(
                        "gave up after request.retry_max_duration_secs; last error: {last_error}"
                    ),
                };
                let location = Location::Destination {
                    destination: self.uri.to_string(),
                };
                let letters = events
                    .iter()
                    .filter_map(|event| {
                        // As sent: after the transforms (redaction included).
                        let json = event.to_json_bytes();
                        dead_letter.letter(&DeadLetter {
                            reason: error_type,
                            error: &error,
                            location: &location,
                            status,
                            reply,
                            raw: &json,
                            truncated: false,
                        })
                    })
                    .collect();
                // The sink's input is this task's caller: waiting here is back-pressure.
                if dead_letter.send(letters, finalizers).await.is_err() {
                    tracing::error!(component_id = %self.id, events = count,
                        "{}: the dead-letter output closed before {count} refused events reached it; they are lost", self.name);
                }
            }
        }
        inflight.dec();
    }

    async fn send(&self, body: Bytes, count: usize) -> Result<(), GaveUp> {
        let started = Instant::now();
        let mut retries: u32 = 0;
        loop {
            let (problem, retry_after, tls) = match self.attempt(body.clone()).await {
                Attempt::Delivered => {
                    if retries > 0 {
                        tracing::info!(
                            component_id = %self.id,
                            retries,
                            events = count,
                            "{}: delivered to {} after {retries} retries",
                            self.name,
                            self.authority
                        );
                    }
                    return Ok(());
                }
                Attempt::Refused { status, body } => {
                    let shown = String::from_utf8_lossy(&body[..body.len().min(LOGGED_BODY_BYTES)]);
                    tracing::error!(
                        component_id = %self.id,
                        status = status.as_u16(),
                        events = count,
                        "{}: {} refused a request of {count} events with {status}; the events are dropped (retrying would be refused again); the server said: {shown}",
                        self.name,
                        self.authority
                    );
                    let end = body.len().min(auditflow_core::dead_letter::MAX_REPLY_BYTES);
                    return Err(GaveUp::Refused {
                        status,
                        reply: String::from_utf8_lossy(&body[..end]).into_owned(),
                    });
                }
                Attempt::Failed {
                    problem,
                    retry_after,
                    tls,
                } => (problem, retry_after, tls),
            };
            // A server's `Retry-After` can say anything (`18446744073709551615`); it is
            // honoured only up to `retry_max_backoff_ms`, so no answer can park the sink.
            let wait = retry_after
                .map(|asked| asked.min(self.max_backoff))
                .unwrap_or_else(|| self.backoff(retries));
            if let Some(limit) = self.max_retry_duration {
                if started.elapsed().saturating_add(wait) > limit {
                    tracing::error!(
                        component_id = %self.id,
                        events = count,
                        error = %problem,
                        "{}: giving up a request of {count} events after {retries} retries in {:.1} s (request.retry_max_duration_secs = {}); the events are dropped; last error: {problem}",
                        self.name,
                        started.elapsed().as_secs_f64(),
                        limit.as_secs()
                    );
                    return Err(GaveUp::OutOfTime {
                        last_error: problem,
                    });
                }
            }
            if tls {
                tracing::error!(
                    component_id = %self.id,
                    retry_in_ms = wait.as_millis() as u64,
                    "{problem}"
                );
            } else {
                tracing::warn!(
                    component_id = %self.id,
                    retry_in_ms = wait.as_millis() as u64,
                    retries,
                    "{problem}; retrying"
                );
            }
            self.metrics.retries.inc();
            tokio::time::sleep(wait).await;
            retries = retries.saturating_add(1);
        }
    }

    /// Full jitter: a uniform wait between zero and the exponential bound, so that many
    /// senders failing together do not retry together.
    fn backoff(&self, retries: u32) -> Duration {
        let bound = self
            .initial_backoff
            .saturating_mul(1u32 << retries.min(20))
            .min(self.max_backoff);
        let millis = bound.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }

    async fn attempt(&self, body: Bytes) -> Attempt {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        let started = Instant::now();
        let exchange = async {
            let response = self.client.request(request).await?;
            let (head, body) = response.into_parts();
            // Reading the whole (small) answer lets the connection be reused.
            let body = Limited::new(body, READ_BODY_BYTES)
                .collect()
                .await
                .map(|collected| collected.to_bytes())
                .unwrap_or_default();
            Ok::<_, hyper_util::client::legacy::Error>((head, body))
        };
        let result = tokio::time::timeout(self.timeout, exchange).await;
        let class = match &result {
            Ok(Ok((head, _))) => status_class(head.status),
            _ => "error",
        };
        self.metrics.observe(class, started.elapsed().as_secs_f64());
        let (head, body) = match result {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => return self.failure(&error),
            Err(_) => {
                return Attempt::Failed {
                    problem: format!(
                        "{}: no answer from {} within {} ms (request.timeout_ms)",
                        self.name,
                        self.authority,
                        self.timeout.as_millis()
                    ),
                    retry_after: None,
                    tls: false,
                }
            }
        };
        let status = head.status;
        if status.is_success() {
            return Attempt::Delivered;
        }
        if status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error()
        {
            return Attempt::Failed {
                problem: format!("{}: {} answered {status}", self.name, self.authority),
                retry_after: retry_after(&head.headers),
                tls: false,
            };
        }
        Attempt::Refused { status, body }
    }

    /// Describes a failed exchange for the operator; a TLS failure says what to check.
    fn failure(&self, error: &hyper_util::client::legacy::Error) -> Attempt {
        if let Some(tls) = find_tls_error(error) {
            let hint = match tls {
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. },
                ) => "check the uri's host, or set tls.server_name to a name the certificate carries",
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Expired
                    | rustls::CertificateError::ExpiredContext { .. }
                    | rustls::CertificateError::NotValidYet
                    | rustls::CertificateError::NotValidYetContext { .. },
                ) => "check the server's certificate dates and this machine's clock",
                rustls::Error::InvalidCertificate(_) => "check tls.ca_file",
                rustls::Error::AlertReceived(_) | rustls::Error::NoCertificatesPresented => {
                    "the server may require a client certificate: check tls.cert_file and tls.key_file"
                }
                _ => "check the tls options",
            };
            return Attempt::Failed {
                problem: format!(
                    "{}: TLS handshake with {} failed: {tls}; {hint}",
                    self.name, self.authority
                ),
                retry_after: None,
                tls: true,
            };
        }
        let what = if error.is_connect() {
            "cannot connect to"
        } else {
            "request failed at"
        };
        Attempt::Failed {
            problem: format!(
                "{}: {what} {}: {}",
                self.name,
                self.authority,
                error_chain(error)
            ),
            retry_after: None,
            tls: false,
        }
    }

    fn check_joined(&self, joined: Result<(), tokio::task::JoinError>) {
        if let Err(error) = joined {
            // Its finalizers were dropped unresolved, so its events count as Errored and
            // the source offers them again.
            tracing::error!(component_id = %self.id, error = %error, "{}: a request task failed", self.name);
        }
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// `at`, or an hour from now when there is none (an addition that overflowed): a deadline
/// that is never reached while anything else can happen.
fn far_or(at: Option<tokio::time::Instant>) -> tokio::time::Instant {
    at.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600))
}

/// `Retry-After` as seconds or as an HTTP date, unbounded (the caller bounds it).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The rustls error somewhere in `error`'s causes. An `io::Error`'s `source()` skips the
/// error it wraps (and hyper-rustls wraps tokio-rustls's `io::Error` in another), so those
/// are opened explicitly.
fn find_tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        current = match error.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    None
}

/// `error: cause: cause`, without repeating a message a wrapper already carries.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(cause) = current {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        current = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        let later = SystemTime::now() + Duration::from_secs(30);
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(28) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }
}
