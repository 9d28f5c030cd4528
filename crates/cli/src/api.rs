//! The HTTP API of a running instance (the pipeline's `api` section): `GET /tap` streams
//! samples of the events passing components, as NDJSON over a chunked response, for
//! `auditflow tap`.
//!
//! `GET /tap?component=ID[&component=ID...][&port=outputs_of|inputs_of][&rate=N]`
//! answers `200` and one line per event,
//! `{"component_id":"…","port":"outputs_of","event":{…}}`, until the client goes away;
//! `403` when `api.tap` is off, `404` for an unknown component, `400` for a side the
//! component does not have, `401` without the bearer token `api.token_file` holds. Every
//! refusal is one line of text saying why.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use auditflow_config::ApiConfig;
use auditflow_core::tap::{Port, Subscription, TapError, Taps};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Events a second one tap gets unless it asks for fewer (`rate`), and the most it may ask.
pub(crate) const DEFAULT_EVENTS_PER_SEC: u32 = 100;
pub(crate) const MAX_EVENTS_PER_SEC: u32 = 10_000;

/// What the API serves.
pub(crate) struct Api {
    pub taps: Taps,
    /// `api.tap`.
    pub tap: bool,
    /// The bearer token from `api.token_file`, if set.
    pub token: Option<String>,
}

/// The API's socket, bound before the pipeline starts (a port in use fails the start),
/// served once it runs.
pub(crate) struct Listening {
    listener: std::net::TcpListener,
    tap: bool,
    token: Option<String>,
}

/// Reads `api.token_file` and binds `api.address`; the message names the field.
pub(crate) fn listen(config: &ApiConfig) -> Result<Listening, String> {
    let token = match &config.token_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(token) if !token.trim().is_empty() => Some(token.trim().to_owned()),
            Ok(_) => {
                return Err(format!(
                    "api.token_file {}: the file is empty; write the bearer token in it",
                    path.display()
                ))
            }
            Err(error) => {
                return Err(format!(
                    "api.token_file {}: cannot read it: {error}",
                    path.display()
                ))
            }
        },
        None => None,
    };
    let cannot_listen =
        |error: std::io::Error| format!("api.address {}: cannot listen: {error}", config.address);
    let listener = std::net::TcpListener::bind(config.address).map_err(cannot_listen)?;
    listener.set_nonblocking(true).map_err(cannot_listen)?;
    // The bound address, so that `127.0.0.1:0` tells where it listens.
    let address = listener.local_addr().unwrap_or(config.address);
    tracing::info!(%address, tap = config.tap, "serving the api");
    Ok(Listening {
        listener,
        tap: config.tap,
        token,
    })
}

impl Listening {
    /// Serves the API on a thread and runtime of its own, so that a pipeline keeping every
    /// worker busy (one worker thread, a source that never waits) does not hold a tap's
    /// events back. The thread ends with the process.
    pub(crate) fn spawn(self, taps: Taps) -> std::io::Result<()> {
        let api = Arc::new(Api {
            taps,
            tap: self.tap,
            token: self.token,
        });
        let listener = self.listener;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("auditflow-api".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => serve(listener, api).await,
                        Err(error) => tracing::error!(%error, "the api cannot serve its socket"),
                    }
                })
            })?;
        Ok(())
    }
}

type ApiBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// Serves the API on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, api: Arc<Api>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "api could not accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let api = Arc::clone(&api);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let api = Arc::clone(&api);
                async move { Ok::<_, Infallible>(answer(&request, &api)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%error, "api connection ended with an error");
            }
        });
    }
}

fn answer(request: &Request<Incoming>, api: &Api) -> Response<ApiBody> {
    if let Some(token) = &api.token {
        let sent = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        if !sent.is_some_and(|sent| same_secret(sent.trim().as_bytes(), token.as_bytes())) {
            return text(
                StatusCode::UNAUTHORIZED,
                "this API requires the bearer token of the instance's api.token_file (auditflow tap --token-file, or AUDITFLOW_API_TOKEN)".into(),
            );
        }
    }
    if request.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served here".into(),
        );
    }
    match request.uri().path() {
        "/health" => text(StatusCode::OK, "ok".into()),
        "/tap" if !api.tap => text(
            StatusCode::FORBIDDEN,
            "tap is disabled on this instance: set `tap: true` in its pipeline's api section (events may be seen before redaction)".into(),
        ),
        "/tap" => tap(request.uri().query().unwrap_or_default(), &api.taps),
        _ => text(StatusCode::NOT_FOUND, "not found: try /tap or /health".into()),
    }
}

fn tap(query: &str, taps: &Taps) -> Response<ApiBody> {
    let mut ids = Vec::new();
    let mut port = None;
    let mut rate = DEFAULT_EVENTS_PER_SEC;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (key, value) {
            ("component", id) => ids.push(id.to_owned()),
            ("port", "outputs_of") => port = Some(Port::OutputsOf),
            ("port", "inputs_of") => port = Some(Port::InputsOf),
            ("rate", n) if n.parse::<u32>().is_ok_and(|n| n > 0) => {
                rate = n.parse::<u32>().unwrap_or(rate).min(MAX_EVENTS_PER_SEC)
            }
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter `{pair}`: expected component=ID, port=outputs_of|inputs_of, rate=N"),
                )
            }
        }
    }
    match taps.subscribe(&ids, port, rate) {
        Ok(subscription) => {
            let mut response = Response::new(TapBody { subscription }.boxed_unsync());
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
            response
        }
        Err(error @ TapError::UnknownComponent { .. }) => {
            text(StatusCode::NOT_FOUND, error.to_string())
        }
        Err(error) => text(StatusCode::BAD_REQUEST, error.to_string()),
    }
}

/// The tapped events as NDJSON lines, written as they come; dropping it (the client left)
/// unsubscribes.
struct TapBody {
    subscription: Subscription,
}

impl Body for TapBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let first = match self.subscription.poll_next(cx) {
            Poll::Ready(Some(first)) => first,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        // Whatever else is queued goes in the same chunk.
        let mut out = Vec::with_capacity(first.event.len() + 64);
        let mut next = Some(first);
        while let Some(tapped) = next {
            out.extend_from_slice(b"{\"component_id\":\"");
            out.extend_from_slice(tapped.component_id.as_bytes());
            out.extend_from_slice(b"\",\"port\":\"");
            out.extend_from_slice(tapped.port.as_str().as_bytes());
            out.extend_from_slice(b"\",\"event\":");
            out.extend_from_slice(&tapped.event);
            out.extend_from_slice(b"}\n");
            next = match out.len() < 1 << 20 {
                true => self.subscription.try_next(),
                false => None,
            };
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
    }
}

/// Compares in time that does not depend on where the first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(status: StatusCode, body: String) -> Response<ApiBody> {
    let mut response = Response::new(Full::new(Bytes::from(body + "\n")).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
