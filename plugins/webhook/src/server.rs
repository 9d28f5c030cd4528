//! The HTTP(S) server: accept loop, TLS, and the request handler.
//!
//! A request is checked in order of cost (credentials, path, method, content type,
//! declared length) before a byte of its body is read; the body is then read within a
//! byte budget shared by every request in flight, decoded once, sent down the pipeline in
//! batches, and answered when its batches are delivered.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use auditflow_core::batch::{MAX_BATCH_BYTES, MAX_BATCH_EVENTS};
use auditflow_core::decode::{Decoded, Shape};
use auditflow_core::duration::deadline;
use auditflow_core::listener::Listener;
use auditflow_core::records::LogLimiter;
use auditflow_core::{
    Batch, BatchNotifier, BatchReceiver, BatchStatus, ComponentError, DeadLetter, DeadLetterOutput,
    Event, Finalizers, Location, Output, Source, SourceContext, Telemetry,
};
use auditflow_metrics::WebhookMetrics;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::connection::{ActiveRequest, Activity, AnswerBody, Lingering};
use crate::firehose::{self, BodyDecoding, Protocol};
use crate::{TokenDigest, CHECK_ANNOTATION};

/// What a 503 asks the client to wait, in seconds.
pub(crate) const RETRY_AFTER_SECS: u64 = 5;
/// Request bodies in flight may hold this many times `max_body_bytes` together.
pub(crate) const BODY_BUDGET_FACTOR: usize = 4;
/// Bodies larger than this are decoded on a blocking thread, off the async workers.
const INLINE_DECODE_BYTES: usize = 1024 * 1024;
/// A connection that ends after a timeout gets this long to close gracefully (HTTP/2
/// `GOAWAY`) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Refusals at accept are logged at most this often (they are all counted).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// A body's buffer starts at most this large, and grows to the declared length once
/// more has arrived.
const EAGER_BODY_BYTES: usize = 64 * 1024;
/// Budget permits are KiB, so that any budget fits tokio's `u32` permit counts.
const PERMIT_BYTES: usize = 1024;

/// The request handler's options, resolved at build time.
pub(crate) struct Settings {
    pub path: String,
    /// Digests of the accepted bearer tokens; `None` asks for no token.
    pub(crate) tokens: Option<Vec<TokenDigest>>,
    pub max_body_bytes: usize,
    pub acknowledgements: bool,
    pub accept_timeout: Duration,
    pub ack_timeout: Duration,
    /// Connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// The TLS handshake, and each request head, must arrive within this; a connection
    /// carrying no request for this long is closed.
    pub header_read_timeout: Duration,
    /// A request's body must arrive within this from its head.
    pub body_read_timeout: Duration,
    /// Pass `webhook-check` test events on to the pipeline instead of dropping them.
    pub pass_check_events: bool,
    /// The protocol, and how its bodies hold events (`decoding`).
    pub decoding: Arc<BodyDecoding>,
}

/// The built source: a bound listener waiting to be served.
pub(crate) struct WebhookSource {
    listener: Listener,
    tls: Option<TlsAcceptor>,
    settings: Settings,
    id: String,
    metrics: WebhookMetrics,
}

impl WebhookSource {
    pub(crate) fn new(
        listener: Listener,
        tls: Option<Arc<rustls::ServerConfig>>,
        settings: Settings,
        id: &str,
        metrics: WebhookMetrics,
    ) -> WebhookSource {
        WebhookSource {
            listener,
            tls: tls.map(TlsAcceptor::from),
            settings,
            id: id.to_owned(),
            metrics,
        }
    }
}

/// What every request handler shares.
struct State {
    settings: Settings,
    id: String,
    out: Output,
    telemetry: Arc<dyn Telemetry>,
    /// The source's own series.
    metrics: WebhookMetrics,
    /// Permits are KiB of request body held in memory.
    budget: Arc<Semaphore>,
    /// Warnings about items that are not events, at a bounded rate per reason.
    warnings: std::sync::Mutex<LogLimiter>,
    /// Where refused bodies and items go, when something reads `<id>.dead_letter`.
    dead_letter: DeadLetterOutput,
}

#[async_trait]
impl Source for WebhookSource {
    async fn run(self: Box<Self>, mut cx: SourceContext) -> Result<(), ComponentError> {
        let WebhookSource {
            listener,
            tls,
            settings,
            id,
            metrics,
        } = *self;
        let address = listener.local_addr().map_err(|source| ComponentError::Io {
            context: "reading the webhook listener's address".into(),
            source,
        })?;
        // `socket` keeps the socket open, `listener` accepts on it: dropping `listener`
        // stops accepting, and the connections that wait meanwhile are the next
        // instance's when a reload hands the socket over.
        let socket = listener;
        let listener = socket.to_tokio().map_err(|source| ComponentError::Io {
            context: format!("serving the webhook listener on {address}"),
            source,
        })?;
        let drain_timeout = settings
            .accept_timeout
            .saturating_add(settings.ack_timeout)
            .saturating_add(settings.header_read_timeout)
            .saturating_add(crate::connection::LINGER_TIMEOUT);
        let budget_bytes = settings.max_body_bytes.saturating_mul(BODY_BUDGET_FACTOR);
        let slots = Arc::new(Semaphore::new(settings.max_connections));
        let state = Arc::new(State {
            budget: Arc::new(Semaphore::new(permits_for(budget_bytes) as usize)),
            warnings: std::sync::Mutex::new(LogLimiter::default()),
            settings,
            id: id.clone(),
            out: cx.out.clone(),
            telemetry: Arc::clone(&cx.telemetry),
            metrics,
            dead_letter: cx.dead_letter.clone(),
        });
        drop(cx.out);
        drop(cx.dead_letter);
        tracing::info!(
            component_id = %id,
            %address,
            path = %state.settings.path,
            tls = tls.is_some(),
            max_connections = state.settings.max_connections,
            "webhook source listening"
        );
        let open = state.metrics.connections.clone();
        let refused = state.metrics.connections_refused.clone();
        let mut refused_since_log = 0u64;
        let mut last_refusal_log: Option<Instant> = None;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = cx.shutdown.wait() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                            // Closed at once: a slot is memory, and a client that
                            // cannot have one learns it now rather than after a timeout.
                            drop(stream);
                            refused.inc();
                            refused_since_log += 1;
                            if last_refusal_log.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_INTERVAL) {
                                tracing::warn!(
                                    component_id = %id,
                                    refused = refused_since_log,
                                    max_connections = state.settings.max_connections,
                                    "closing new connections at accept: max_connections are open"
                                );
                                refused_since_log = 0;
                                last_refusal_log = Some(Instant::now());
                            }
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let state = Arc::clone(&state);
                        let tls = tls.clone();
                        let stop = stop_rx.clone();
                        let open = open.clone();
                        open.inc();
                        connections.spawn(async move {
                            accept(stream, peer, tls, state, stop).await;
                            open.dec();
                            drop(slot);
                        });
                    }
                    Err(error) => {
                        // Out of file descriptors, usually: wait for connections to close.
                        tracing::warn!(component_id = %id, %error, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(listener);
        drop(socket);
        tracing::info!(
            component_id = %id,
            connections = connections.len(),
            "webhook source stopped accepting; finishing requests in flight"
        );
        stop_tx.send_replace(true);
        // The pipeline's output closes once every handler's copy of `state` is gone.
        drop(state);
        let drained = tokio::time::timeout(drain_timeout, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                component_id = %id,
                connections = connections.len(),
                "requests still in flight after {drain_timeout:?}: closing them unanswered (the API server resends them)"
            );
            connections.shutdown().await;
        }
        Ok(())
    }
}

/// Completes the TLS handshake (within `header_read_timeout`), then serves the connection.
async fn accept(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    stop: watch::Receiver<bool>,
) {
    let stream = Lingering::new(stream);
    let bytes_read = stream.bytes_read();
    let Some(tls) = tls else {
        return serve(stream, None, bytes_read, peer, state, stop).await;
    };
    match tokio::time::timeout(state.settings.header_read_timeout, tls.accept(stream)).await {
        Ok(Ok(stream)) => {
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            serve(stream, Some(h2), bytes_read, peer, state, stop).await;
        }
        Ok(Err(error)) => {
            state.metrics.tls_failures.inc();
            let reason = match auditflow_tls::explain::rustls_error(&error) {
                Some(error) => auditflow_tls::explain::explain(
                    error,
                    auditflow_tls::explain::Side::Server {
                        cert_option: "tls.cert_file",
                        client_ca_option: "tls.client_ca_file",
                    },
                ),
                None => format!("the connection failed during the handshake: {error}"),
            };
            tracing::warn!(component_id = %state.id, %peer, %error, "TLS handshake failed: {reason}");
        }
        Err(_) => {
            state.timed_out("handshake");
            tracing::debug!(component_id = %state.id, %peer, "TLS handshake timed out");
        }
    }
}

/// Serves one connection (HTTP/1.1 or HTTP/2: as negotiated through ALPN when `h2` is
/// known, else by the client's first bytes) until it closes, carries no request for
/// `header_read_timeout`, or shutdown asks it to finish its requests and close.
async fn serve<S>(
    stream: S,
    h2: Option<bool>,
    bytes_read: Arc<std::sync::atomic::AtomicU64>,
    peer: SocketAddr,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The idle watch below bounds request heads; hyper's own timer would close the same
    // connections without saying why.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    let builder = match h2 {
        Some(true) => builder.http2_only(),
        Some(false) => builder.http1_only(),
        None => builder,
    };
    let activity = Activity::new();
    let service = {
        let state = Arc::clone(&state);
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |request| {
            let state = Arc::clone(&state);
            let active = activity.begin();
            async move { Ok::<_, Infallible>(state.handle(request, peer, active).await) }
        })
    };
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let timeout = state.settings.header_read_timeout;
    let mut read_at_idle = (
        Instant::now(),
        bytes_read.load(std::sync::atomic::Ordering::Relaxed),
    );
    let result = loop {
        let check_at = match activity.idle_since() {
            Some(since) => {
                if since > read_at_idle.0 {
                    read_at_idle = (since, bytes_read.load(std::sync::atomic::Ordering::Relaxed));
                }
                deadline(since, timeout)
            }
            None => deadline(Instant::now(), timeout),
        };
        tokio::select! {
            result = connection.as_mut() => break result,
            _ = async { let _ = stop.wait_for(|stop| *stop).await; } => {
                connection.as_mut().graceful_shutdown();
                break connection.await;
            }
            _ = tokio::time::sleep_until(check_at.into()) => {
                let Some(since) = activity.idle_since() else { continue };
                if since.elapsed() < timeout {
                    continue;
                }
                // Nothing read since the last answer: an idle keep-alive connection.
                // Something read but no request: a head that trickles in.
                let idle = bytes_read.load(std::sync::atomic::Ordering::Relaxed) == read_at_idle.1;
                state.timed_out(if idle { "idle" } else { "header" });
                tracing::debug!(component_id = %state.id, %peer, idle, "closing a connection that carried no request for header_read_timeout_ms");
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(CLOSE_GRACE, connection.as_mut()).await;
                return;
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "webhook connection ended with an error");
    }
}

/// An answer: status, message, and whether the client should retry later.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) body: serde_json::Value,
    pub(crate) headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Reply {
    pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Reply {
        let mut reply = Reply {
            status,
            body: serde_json::json!({ "error": message.into() }),
            headers: Vec::new(),
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            reply
                .headers
                .push((header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS)));
        }
        reply
    }

    fn with_header(mut self, name: header::HeaderName, value: &'static str) -> Reply {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }

    fn into_response(self, request: Incoming, active: ActiveRequest) -> Response<AnswerBody> {
        let body = Bytes::from(self.body.to_string());
        let mut response = Response::new(AnswerBody::new(body, request, active));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response
    }
}

impl State {
    /// Answers one request. A refused body is never read further: the answer goes out
    /// first, and the connection layer discards the rest (see `connection`).
    async fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        active: ActiveRequest,
    ) -> Response<AnswerBody> {
        let started = Instant::now();
        let (head, mut body) = request.into_parts();
        let (Ok(reply) | Err(reply)) = self.respond(&head, &mut body, peer).await;
        let request_id = match self.settings.decoding.protocol {
            Protocol::KubeApiserver => None,
            Protocol::Firehose => Some(
                head.headers
                    .get(firehose::REQUEST_ID_HEADER)
                    .and_then(|id| id.to_str().ok())
                    .unwrap_or(""),
            ),
        };
        let code = reply.status.as_str().to_owned();
        self.metrics.answered(code.as_str());
        self.metrics
            .request_duration
            .observe(started.elapsed().as_secs_f64());
        if reply.status.is_client_error() {
            let error = reply
                .body
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("");
            tracing::warn!(component_id = %self.id, %peer, status = %code, error, request_id, "refused a webhook request");
        } else if reply.status.is_server_error() {
            let error = reply
                .body
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("");
            tracing::debug!(component_id = %self.id, %peer, status = %code, error, request_id, "webhook request not accepted now");
        }
        if let Some(request_id) = request_id {
            // Firehose sends a request per buffer interval (60 s by default): few enough
            // to log each one with its id, which is what its own error logs name.
            tracing::info!(component_id = %self.id, %peer, request_id, status = %code, "answered a firehose request");
        }
        let reply = match request_id {
            Some(request_id) => firehose::answer(reply, request_id),
            None => reply,
        };
        reply.into_response(body, active)
    }

    fn timed_out(&self, phase: &str) {
        self.metrics.timed_out(phase);
    }

    /// The checks, cheapest first, then the body. `Err` is an early answer.
    async fn respond(
        &self,
        request: &Parts,
        body: &mut Incoming,
        peer: SocketAddr,
    ) -> Result<Reply, Reply> {
        if self.settings.decoding.protocol == Protocol::Firehose {
            firehose::request_id(&request.headers)?;
        }
        self.authenticate(&request.headers)?;
        if request.uri.path() != self.settings.path {
            return Err(Reply::error(
                StatusCode::NOT_FOUND,
                format!(
                    "no webhook at {:?}: POST audit events to {:?}",
                    request.uri.path(),
                    self.settings.path
                ),
            ));
        }
        if request.method != Method::POST {
            return Err(Reply::error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "method {} is not allowed: POST audit events",
                    request.method
                ),
            )
            .with_header(header::ALLOW, "POST"));
        }
        let shape = content_type(&request.headers)?;
        let gzip = content_encoding(&request.headers)?;
        let declared = self.declared_length(&request.headers)?;

        if auditflow_core::memory::pressure().is_limited() {
            return Err(Reply::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "auditflow is at its memory limit (memory_limit_mb): retry later",
            ));
        }
        // Hold budget for the body before reading it; this is what bounds memory.
        let initial = declared.unwrap_or(self.settings.max_body_bytes);
        let mut permit = self.reserve(permits_for(initial), Instant::now()).await?;
        let body_timeout = self.settings.body_read_timeout;
        let body = tokio::time::timeout(
            body_timeout,
            self.read_body(body, declared, gzip, &mut permit),
        )
        .await
        .map_err(|_| {
            self.timed_out("body");
            // The rest of the body may still come: the connection cannot carry another
            // request, so it is closed after the answer (RFC 9110 §15.5.9).
            Reply::error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within body_read_timeout_ms ({} ms)",
                    body_timeout.as_millis()
                ),
            )
            .with_header(header::CONNECTION, "close")
        })??;

        let body_len = body.len();
        let decoded = if body_len > INLINE_DECODE_BYTES {
            {
                let body = body.clone();
                let decoding = Arc::clone(&self.settings.decoding);
                tokio::task::spawn_blocking(move || decoding.decode(&body, shape))
            }
            .await
            .map_err(|error| {
                Reply::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("decoding the body failed: {error}"),
                )
            })?
        } else {
            self.settings.decoding.decode(&body, shape)
        };
        let decoded = match decoded.and_then(Decoded::require_events) {
            Ok(decoded) => decoded,
            Err(refused) => {
                self.telemetry.received(0, body_len);
                // The client hears 400 either way; with dead letters, only once the body
                // is kept (or 503 and a retry, if it could not be).
                let letter = self.dead_letter.letter(&DeadLetter {
                    reason: "malformed",
                    error: &refused.0,
                    location: &Location::Peer {
                        peer: peer.to_string(),
                        item: None,
                    },
                    status: None,
                    reply: None,
                    raw: &body,
                    truncated: false,
                });
                if let Some(letter) = letter {
                    self.deliver(Vec::new(), vec![letter]).await?;
                }
                return Err(Reply::error(StatusCode::BAD_REQUEST, refused.0));
            }
        };
        let (mut events, malformed) = (decoded.events, decoded.malformed);
        self.telemetry
            .received(events.len() + malformed.len(), body_len);
        let checks = self.take_checks(&body, &mut events);
        if !malformed.is_empty() {
            let mut warnings = self.warnings.lock().unwrap_or_else(|e| e.into_inner());
            for item in &malformed {
                self.telemetry.discarded(item.kind, 1);
                if let Some(suppressed) = warnings.allow(item.kind) {
                    if suppressed > 0 {
                        tracing::warn!(component_id = %self.id, reason = item.kind, suppressed,
                            "suppressed {suppressed} similar warnings in the last minute (all are counted in auditflow_component_discarded_events_total)");
                    }
                    tracing::warn!(component_id = %self.id, item = %item.location, reason = item.kind,
                        error = %item.reason, "skipping an item that is not an audit event");
                }
            }
        }
        let letters: Vec<Event> = match self.dead_letter.is_connected() {
            true => {
                let peer = peer.to_string();
                malformed
                    .iter()
                    .filter_map(|item| {
                        self.dead_letter.letter(&DeadLetter {
                            reason: item.kind,
                            error: &item.to_string(),
                            location: &Location::Peer {
                                peer: peer.clone(),
                                item: item.item,
                            },
                            status: None,
                            reply: None,
                            raw: &item.raw,
                            truncated: false,
                        })
                    })
                    .collect()
            }
            false => Vec::new(),
        };
        let accepted = events.len();
        self.deliver(events, letters).await?;
        drop(permit);
        let mut answer = serde_json::json!({ "accepted": accepted, "malformed": malformed.len() });
        if checks > 0 {
            answer["checks"] = serde_json::Value::from(checks);
        }
        Ok(Reply {
            status: StatusCode::OK,
            body: answer,
            headers: Vec::new(),
        })
    }

    /// Counts the `webhook-check` test events among `events` and, unless
    /// `pass_check_events`, takes them out. The body is searched once for the marker, so
    /// ordinary requests pay one `memmem` and no parse.
    fn take_checks(&self, body: &[u8], events: &mut Vec<Event>) -> usize {
        if memchr::memmem::find(body, CHECK_ANNOTATION.as_bytes()).is_none() {
            return 0;
        }
        let is_check = |event: &Event| event.get_path(["annotations", CHECK_ANNOTATION]).is_some();
        let checks = events.iter().filter(|event| is_check(event)).count();
        if checks == 0 {
            return 0;
        }
        self.metrics.checks.inc_by(checks as u64);
        tracing::info!(component_id = %self.id, checks, passed_on = self.settings.pass_check_events, "received a test event from auditflow webhook-check");
        if !self.settings.pass_check_events {
            events.retain(|event| !is_check(event));
            self.telemetry.discarded("webhook_check", checks);
        }
        checks
    }

    fn authenticate(&self, headers: &HeaderMap) -> Result<(), Reply> {
        let Some(tokens) = &self.settings.tokens else {
            return Ok(());
        };
        if self.settings.decoding.protocol == Protocol::Firehose {
            return firehose::authenticate(headers, tokens);
        }
        let unauthorized = |message: &str| {
            Reply::error(StatusCode::UNAUTHORIZED, message)
                .with_header(header::WWW_AUTHENTICATE, "Bearer realm=\"auditflow\"")
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized(
                "missing credentials: send `Authorization: Bearer <token>` (the kubeconfig's `token:`)",
            ));
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or_else(|| unauthorized("the Authorization header is not `Bearer <token>`"))?;
        let presented = TokenDigest::of(presented);
        // Every token is compared, so the time taken does not say which one nearly matched.
        let matched = tokens
            .iter()
            .fold(false, |matched, token| token.matches(&presented) | matched);
        if matched {
            Ok(())
        } else {
            Err(unauthorized(
                "the bearer token is not one this receiver accepts (auth)",
            ))
        }
    }

    fn declared_length(&self, headers: &HeaderMap) -> Result<Option<usize>, Reply> {
        let Some(value) = headers.get(header::CONTENT_LENGTH) else {
            return Ok(None);
        };
        let length: u64 = value
            .to_str()
            .ok()
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| {
                Reply::error(StatusCode::BAD_REQUEST, "Content-Length is not a number")
            })?;
        if length > self.settings.max_body_bytes as u64 {
            return Err(self.too_large(&format!("the body is {length} bytes")));
        }
        Ok(Some(length as usize))
    }

    fn too_large(&self, what: &str) -> Reply {
        Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{what}, over max_body_bytes ({}): lower --audit-webhook-batch-max-size or raise max_body_bytes",
                self.settings.max_body_bytes
            ),
        )
    }

    /// Waits (up to `accept_timeout` from `since`) for `permits` KiB of body budget.
    async fn reserve(&self, permits: u32, since: Instant) -> Result<OwnedSemaphorePermit, Reply> {
        let remaining = self.settings.accept_timeout.saturating_sub(since.elapsed());
        let acquire = Arc::clone(&self.budget).acquire_many_owned(permits);
        match tokio::time::timeout(remaining, acquire).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Reply::error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "too many request bodies in flight (budget {} × max_body_bytes): retry later",
                    BODY_BUDGET_FACTOR
                ),
            )),
        }
    }

    /// Reads the body, decompressing as it arrives, never past `max_body_bytes` and never
    /// past the budget held in `permit` (grown as needed).
    async fn read_body(
        &self,
        body: &mut Incoming,
        declared: Option<usize>,
        gzip: bool,
        permit: &mut OwnedSemaphorePermit,
    ) -> Result<Bytes, Reply> {
        let max = self.settings.max_body_bytes;
        let started = Instant::now();
        // Allocated when bytes arrive, not when a length is declared: a client that
        // declares 100 KB and trickles costs what it sent.
        let mut plain: Vec<u8> = Vec::new();
        let mut inflater = gzip.then(|| {
            flate2::write::MultiGzDecoder::new(Capped {
                buf: Vec::new(),
                max,
                exceeded: false,
            })
        });
        let mut received = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| {
                Reply::error(
                    StatusCode::BAD_REQUEST,
                    format!("reading the body failed: {error}"),
                )
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            received += data.len();
            if received > max {
                return Err(self.too_large(&format!("the body is over {received} bytes")));
            }
            let held = match &mut inflater {
                None => {
                    if plain.capacity() == 0 {
                        plain.reserve_exact(
                            declared.unwrap_or(0).min(EAGER_BODY_BYTES).max(data.len()),
                        );
                    } else if plain.capacity() - plain.len() < data.len() {
                        // Past the first bytes: the rest of the declared length at once.
                        let rest =
                            declared.map_or(0, |declared| declared.saturating_sub(plain.len()));
                        plain.reserve_exact(rest.max(data.len()));
                    }
                    plain.extend_from_slice(&data);
                    plain.capacity()
                }
                Some(inflater) => {
                    if let Err(error) = std::io::Write::write_all(inflater, &data) {
                        return Err(self.inflate_error(inflater.get_ref(), error));
                    }
                    inflater.get_ref().buf.capacity()
                }
            };
            let needed = permits_for(held);
            if needed > permit.num_permits() as u32 {
                let more = self
                    .reserve(needed - permit.num_permits() as u32, started)
                    .await?;
                permit.merge(more);
            }
        }
        match inflater {
            None => Ok(Bytes::from(plain)),
            Some(mut inflater) => {
                if let Err(error) = inflater.try_finish() {
                    return Err(self.inflate_error(inflater.get_ref(), error));
                }
                let capped = inflater.finish().map_err(|error| {
                    Reply::error(
                        StatusCode::BAD_REQUEST,
                        format!("the body is not valid gzip: {error}"),
                    )
                })?;
                Ok(Bytes::from(capped.buf))
            }
        }
    }

    fn inflate_error(&self, capped: &Capped, error: std::io::Error) -> Reply {
        if capped.exceeded {
            self.too_large("the body decompresses to more bytes than allowed")
        } else {
            Reply::error(
                StatusCode::BAD_REQUEST,
                format!("the body is not valid gzip: {error}"),
            )
        }
    }

    /// Sends the events in batches and, with acknowledgements, waits for their delivery.
    /// Waits up to `accept_timeout` for an output to take a batch; `503` (retry later)
    /// when it did not (`late` says which output) or the pipeline is stopping.
    async fn taken_in_time(
        &self,
        send: impl std::future::Future<Output = Result<(), auditflow_core::channel::Closed>>,
        late: &str,
    ) -> Result<(), Reply> {
        match tokio::time::timeout(self.settings.accept_timeout, send).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_closed)) => Err(Reply::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the pipeline is shutting down: retry later",
            )),
            Err(_) => Err(Reply::error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{late} within accept_timeout_ms ({} ms): retry later",
                    self.settings.accept_timeout.as_millis()
                ),
            )),
        }
    }

    async fn deliver(&self, mut events: Vec<Event>, letters: Vec<Event>) -> Result<(), Reply> {
        let mut receivers: Vec<BatchReceiver> = Vec::new();
        if !letters.is_empty() {
            let finalizers = if self.settings.acknowledgements {
                let (finalizer, receiver) = BatchNotifier::new();
                receivers.push(receiver);
                Finalizers::from(finalizer)
            } else {
                Finalizers::new()
            };
            let sent = self.dead_letter.send(letters, finalizers);
            self.taken_in_time(
                sent,
                "the dead-letter output did not take the refused items",
            )
            .await?;
        }
        while !events.is_empty() {
            let chunk = take_chunk(&mut events);
            let batch = if self.settings.acknowledgements {
                let (finalizer, receiver) = BatchNotifier::new();
                receivers.push(receiver);
                Batch::with_finalizer(chunk, finalizer)
            } else {
                Batch::new(chunk)
            };
            self.taken_in_time(self.out.send(batch), "the pipeline did not take the events")
                .await?;
        }
        let verdict = tokio::time::timeout(self.settings.ack_timeout, async {
            let mut worst = BatchStatus::Delivered;
            for receiver in receivers {
                worst = worst.max(receiver.await);
            }
            worst
        })
        .await;
        match verdict {
            Ok(BatchStatus::Delivered) => Ok(()),
            Ok(BatchStatus::Rejected) => Err(Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "a sink rejected the events for good: they were not delivered",
            )),
            Ok(BatchStatus::Errored) => Err(Reply::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the events were lost on the way to a sink: retry later",
            )),
            Err(_) => Err(Reply::error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the events were not delivered within ack_timeout_ms ({} ms): retry later",
                    self.settings.ack_timeout.as_millis()
                ),
            )),
        }
    }
}

/// The next batch's worth of events off the front of `events`.
fn take_chunk(events: &mut Vec<Event>) -> Vec<Event> {
    let mut bytes = 0;
    let mut count = 0;
    for event in events.iter() {
        if count == MAX_BATCH_EVENTS || (count > 0 && bytes + event.size_hint() > MAX_BATCH_BYTES) {
            break;
        }
        bytes += event.size_hint();
        count += 1;
    }
    if count == events.len() {
        return std::mem::take(events);
    }
    let rest = events.split_off(count);
    std::mem::replace(events, rest)
}

/// Budget permits (KiB, rounded up) for `bytes`.
fn permits_for(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(PERMIT_BYTES)).unwrap_or(u32::MAX)
}

/// `Content-Type`: JSON (or none at all) or NDJSON; anything else can never succeed.
fn content_type(headers: &HeaderMap) -> Result<Shape, Reply> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(Shape::Json);
    };
    let media = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    if media.eq_ignore_ascii_case("application/json") || media.is_empty() {
        Ok(Shape::Json)
    } else if media.eq_ignore_ascii_case("application/x-ndjson") {
        Ok(Shape::Ndjson)
    } else {
        Err(Reply::error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type {media:?} is not supported: send application/json or application/x-ndjson"
            ),
        ))
    }
}

/// `Content-Encoding`: none, `identity` or `gzip`.
fn content_encoding(headers: &HeaderMap) -> Result<bool, Reply> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(false);
    };
    let encoding = value.to_str().unwrap_or("").trim();
    if encoding.eq_ignore_ascii_case("gzip") || encoding.eq_ignore_ascii_case("x-gzip") {
        Ok(true)
    } else if encoding.eq_ignore_ascii_case("identity") || encoding.is_empty() {
        Ok(false)
    } else {
        Err(Reply::error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding {encoding:?} is not supported: send gzip or no encoding"),
        ))
    }
}

/// The decompressed body, refusing to grow past `max`.
struct Capped {
    buf: Vec<u8>,
    max: usize,
    exceeded: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.max {
            self.exceeded = true;
            return Err(std::io::Error::other(
                "decompressed body over max_body_bytes",
            ));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A request body that arrived whole into its events, as a POST to the webhook takes it:
/// the `Content-Type` (JSON, none, or NDJSON) and `Content-Encoding` (none, `identity`,
/// `gzip`) checks, gzip inflated to at most `max_body_bytes`, the byte-order mark skipped,
/// then the split into events by [`auditflow_core::decode`]. The server runs the same steps
/// while the body streams in; this one is for callers that hold the body already (the
/// fuzz targets, tools).
///
/// # Errors
/// The status and message a client would get: 415 for an unsupported `Content-Type` or
/// `Content-Encoding`, 413 when the body inflates past `max_body_bytes`, 400 when it is
/// not valid gzip or holds no event. The size of `body` itself is not checked.
pub fn decode_body(
    headers: &HeaderMap,
    body: &[u8],
    max_body_bytes: usize,
) -> Result<Decoded, (StatusCode, String)> {
    let refusal = |reply: Reply| {
        let message = reply.body["error"].as_str().unwrap_or_default().to_owned();
        (reply.status, message)
    };
    let shape = content_type(headers).map_err(refusal)?;
    let body = if content_encoding(headers).map_err(refusal)? {
        let mut inflater = flate2::write::MultiGzDecoder::new(Capped {
            buf: Vec::new(),
            max: max_body_bytes,
            exceeded: false,
        });
        let inflated =
            std::io::Write::write_all(&mut inflater, body).and_then(|()| inflater.try_finish());
        if let Err(error) = inflated {
            return Err(if inflater.get_ref().exceeded {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body decompresses to more bytes than allowed, over max_body_bytes ({max_body_bytes})"),
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    format!("the body is not valid gzip: {error}"),
                )
            });
        }
        match inflater.finish() {
            Ok(capped) => Bytes::from(capped.buf),
            Err(error) => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("the body is not valid gzip: {error}"),
                ))
            }
        }
    } else {
        Bytes::copy_from_slice(body)
    };
    auditflow_core::decode::decode(&body, shape)
        .and_then(Decoded::require_events)
        .map_err(|refused| (StatusCode::BAD_REQUEST, refused.0))
}
