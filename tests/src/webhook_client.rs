//! An HTTPS client that talks to the `webhook` source the way kube-apiserver does: one
//! kept-alive HTTP/1.1 connection per client, TLS with a private CA, optionally a client
//! certificate, and the exact requests kube-apiserver 1.32 sent (`tests/fixtures/webhook`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

/// One request kube-apiserver sent: its request line target, headers and body.
#[derive(Debug, Clone)]
pub struct CapturedRequest {
    /// `/audit?timeout=30s`.
    pub target: String,
    /// Every header but `Content-Length` (set from the body actually sent).
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// The requests in `tests/fixtures/webhook`, in the order they were sent.
pub fn captured_requests() -> Vec<CapturedRequest> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/webhook");
    (1..)
        .map(|n| dir.join(format!("webhook-{n:04}")))
        .take_while(|stem| stem.with_extension("json").exists())
        .map(|stem| {
            let head = std::fs::read_to_string(stem.with_extension("headers")).expect("headers");
            let mut lines = head.lines();
            let request_line = lines.next().expect("a request line");
            let target = request_line.split(' ').nth(1).expect("a target").to_owned();
            let headers = lines
                .filter_map(|line| line.split_once(": "))
                .filter(|(name, _)| !name.eq_ignore_ascii_case("content-length"))
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect();
            let body = Bytes::from(std::fs::read(stem.with_extension("json")).expect("body"));
            CapturedRequest {
                target,
                headers,
                body,
            }
        })
        .collect()
}

/// `body` gzip-compressed, as a client sending `Content-Encoding: gzip` would.
pub fn gzip(body: &[u8]) -> Bytes {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(body).expect("gzip into memory");
    Bytes::from(encoder.finish().expect("gzip into memory"))
}

/// What the server answered.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl Answer {
    /// The `"error"` of a JSON error body.
    pub fn error(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|body| body.get("error")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("not a JSON error body: {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }
}

/// How to reach a webhook source.
#[derive(Clone)]
pub struct WebhookClient {
    address: SocketAddr,
    tls: Option<TlsConnector>,
}

impl WebhookClient {
    /// Over TLS, trusting `ca_pem`, presenting `identity` (certificate and key PEM) when given.
    pub fn https(
        address: SocketAddr,
        ca_pem: &str,
        identity: Option<(&str, &str)>,
    ) -> WebhookClient {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pem_certs(ca_pem) {
            roots.add(cert).expect("a CA certificate");
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                builder.with_client_cert_resolver(Arc::new(Presented::new(cert, key)))
            }
        };
        WebhookClient {
            address,
            tls: Some(TlsConnector::from(Arc::new(config))),
        }
    }

    /// Plain HTTP.
    pub fn plain(address: SocketAddr) -> WebhookClient {
        WebhookClient { address, tls: None }
    }

    /// Opens one connection (TLS handshake included).
    pub async fn connect(&self) -> std::io::Result<Connection> {
        let tcp = tokio::net::TcpStream::connect(self.address).await?;
        tcp.set_nodelay(true)?;
        let sender = match &self.tls {
            None => handshake(tcp).await?,
            Some(tls) => {
                let name = ServerName::try_from("localhost").expect("a DNS name");
                let stream = tls.connect(name, tcp).await?;
                handshake(stream).await?
            }
        };
        Ok(Connection { sender })
    }

    /// How the server refuses this client's TLS handshake: the error chain of the first
    /// failure (the handshake or, under TLS 1.3, the first read after it), such as
    /// `received fatal alert: CertificateRequired`.
    ///
    /// Nothing is sent after the handshake, so the server has no unread request when it
    /// closes, and the alert it sent is read rather than lost to a TCP reset.
    ///
    /// # Panics
    ///
    /// When the client is plain HTTP, when the TCP connection fails, or when the server
    /// serves: it keeps the connection open for [`REFUSAL_DEADLINE`], sends data, or closes
    /// without an alert.
    pub async fn tls_refusal(&self) -> String {
        use tokio::io::AsyncReadExt as _;
        let tls = self
            .tls
            .as_ref()
            .expect("tls_refusal needs an HTTPS client");
        let tcp = tokio::net::TcpStream::connect(self.address)
            .await
            .unwrap_or_else(|error| panic!("connecting to {}: {error}", self.address));
        let name = ServerName::try_from("localhost").expect("a DNS name");
        let mut stream = match tls.connect(name, tcp).await {
            Ok(stream) => stream,
            Err(error) => return error_chain(&error),
        };
        let mut byte = [0_u8; 1];
        match tokio::time::timeout(REFUSAL_DEADLINE, stream.read(&mut byte)).await {
            Err(_) => panic!(
                "the server took the handshake and kept the connection open for {REFUSAL_DEADLINE:?}"
            ),
            Ok(Ok(0)) => panic!("the server took the handshake and closed without an alert"),
            Ok(Ok(_)) => panic!("the server took the handshake and sent data"),
            Ok(Err(error)) => error_chain(&error),
        }
    }
}

/// How long [`WebhookClient::tls_refusal`] waits for the server to refuse.
pub const REFUSAL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

/// `error` and each of its sources, joined by `": "` (an `io::Error` wrapping a TLS error
/// shows the TLS error only among its sources).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let more = next.to_string();
        if !text.ends_with(&more) {
            text += ": ";
            text += &more;
        }
        cause = next.source();
    }
    text
}

async fn handshake<S>(stream: S) -> std::io::Result<http1::SendRequest<RequestBody>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// A request body: whole (with `Content-Length`) or chunked (length unknown up front).
pub enum RequestBody {
    Full(Full<Bytes>),
    Chunked(Vec<Bytes>),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            RequestBody::Full(full) => Pin::new(full).poll_frame(cx),
            RequestBody::Chunked(chunks) => {
                if chunks.is_empty() {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Ok(Frame::data(chunks.remove(0)))))
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Full(full) => full.is_end_stream(),
            RequestBody::Chunked(chunks) => chunks.is_empty(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            RequestBody::Full(full) => full.size_hint(),
            RequestBody::Chunked(_) => hyper::body::SizeHint::default(),
        }
    }
}

/// One kept-alive connection; requests on it go one after another.
pub struct Connection {
    sender: http1::SendRequest<RequestBody>,
}

impl Connection {
    /// Sends one request; `Host` defaults to `localhost`.
    pub async fn send(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: RequestBody,
    ) -> std::io::Result<Answer> {
        let mut request = hyper::Request::builder().method(method).uri(target);
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("host"))
        {
            request = request.header("Host", "localhost");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(body).map_err(std::io::Error::other)?;
        self.sender.ready().await.map_err(std::io::Error::other)?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(std::io::Error::other)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok(Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// POSTs `body` whole to `target` with `headers`.
    pub async fn post(
        &mut self,
        target: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> std::io::Result<Answer> {
        self.send("POST", target, headers, RequestBody::Full(Full::new(body)))
            .await
    }

    /// Replays a captured request (optionally gzip-compressed, as `Content-Encoding: gzip`).
    pub async fn replay(
        &mut self,
        request: &CapturedRequest,
        compress: bool,
    ) -> std::io::Result<Answer> {
        let mut headers: Vec<(&str, &str)> = request
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let body = if compress {
            headers.push(("Content-Encoding", "gzip"));
            gzip(&request.body)
        } else {
            request.body.clone()
        };
        self.post(&request.target, &headers, body).await
    }
}

/// A client certificate presented as it is, whatever it holds (an X.509 v1 one too),
/// the way Go's client presents the kubeconfig's `client-certificate` without checking it.
#[derive(Debug)]
struct Presented(Arc<rustls::sign::CertifiedKey>);

impl Presented {
    fn new(cert_pem: &str, key_pem: &str) -> Presented {
        let key = rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(rustls_pem_key(key_pem))
            .expect("a usable private key");
        Presented(Arc::new(rustls::sign::CertifiedKey::new(
            rustls_pem_certs(cert_pem),
            key,
        )))
    }
}

impl rustls::client::ResolvesClientCert for Presented {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn rustls_pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

fn rustls_pem_key(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("a PEM private key")
}

/// A client that follows a kubeconfig the way client-go's REST client does, independent
/// of auditflow's own reading of it: the current context's cluster and user, paths
/// relative to the kubeconfig's directory, `*-data` over files, `?timeout=30s` after the
/// server URL, ALPN `h2` then `http/1.1` (HTTP/2 when the server takes it, as Go's
/// transport does), a client certificate and a bearer token when the user carries them.
pub struct KubeconfigClient {
    address: SocketAddr,
    server_name: String,
    path: String,
    tls: TlsConnector,
    token: Option<String>,
}

/// What a [`KubeconfigClient`] got back.
#[derive(Debug, Clone)]
pub struct KubeconfigAnswer {
    pub status: u16,
    /// `HTTP/2.0` or `HTTP/1.1`.
    pub version: String,
    pub body: String,
}

impl KubeconfigClient {
    /// Reads `kubeconfig`; panics on anything client-go would refuse.
    pub fn from_file(kubeconfig: &Path) -> KubeconfigClient {
        use base64::Engine as _;
        let text = std::fs::read_to_string(kubeconfig).expect("read the kubeconfig");
        let config: serde_yaml::Value = serde_yaml::from_str(&text).expect("kubeconfig YAML");
        let dir = kubeconfig.parent().expect("a directory");
        let named = |list: &str, name: &str, key: &str| -> serde_yaml::Value {
            config[list]
                .as_sequence()
                .expect("a list")
                .iter()
                .find(|entry| entry["name"].as_str() == Some(name))
                .map(|entry| entry[key].clone())
                .unwrap_or_else(|| panic!("no {list} entry {name:?}"))
        };
        let current = config["current-context"].as_str().expect("current-context");
        let context = named("contexts", current, "context");
        let cluster = named(
            "clusters",
            context["cluster"].as_str().expect("cluster"),
            "cluster",
        );
        let user = context["user"]
            .as_str()
            .map(|name| named("users", name, "user"))
            .unwrap_or(serde_yaml::Value::Null);
        let bytes = |node: &serde_yaml::Value, key: &str| -> Option<Vec<u8>> {
            if let Some(data) = node[format!("{key}-data").as_str()].as_str() {
                return Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .expect("base64 data"),
                );
            }
            let file = node[key].as_str()?;
            Some(std::fs::read(dir.join(file)).expect("a file the kubeconfig names"))
        };
        let server: hyper::Uri = cluster["server"]
            .as_str()
            .expect("server")
            .parse()
            .expect("a URL");
        assert_eq!(
            server.scheme_str(),
            Some("https"),
            "this client speaks HTTPS"
        );
        let host = server.host().expect("a host").to_owned();
        let port = server.port_u16().unwrap_or(443);
        let address = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
            .expect("resolve the host")
            .next()
            .expect("an address");
        let mut roots = rustls::RootCertStore::empty();
        let ca = bytes(&cluster, "certificate-authority").expect("a CA in the kubeconfig");
        for cert in rustls_pem_certs(std::str::from_utf8(&ca).expect("PEM")) {
            roots.add(cert).expect("a CA certificate");
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
        let cert = bytes(&user, "client-certificate");
        let key = bytes(&user, "client-key");
        let mut config = match (cert, key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(
                    rustls_pem_certs(std::str::from_utf8(&cert).expect("PEM")),
                    rustls_pem_key(std::str::from_utf8(&key).expect("PEM")),
                )
                .expect("a client identity"),
            (None, None) => builder.with_no_client_auth(),
            _ => panic!("client-certificate without client-key, or the reverse"),
        };
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let path = server
            .path_and_query()
            .map_or("/".to_owned(), |path| path.to_string());
        KubeconfigClient {
            address,
            server_name: host,
            path: format!("{path}?timeout=30s"),
            tls: TlsConnector::from(Arc::new(config)),
            token: user["token"].as_str().map(str::to_owned),
        }
    }

    /// POSTs `body` (an `EventList`) on a fresh connection.
    pub async fn post(&self, body: Bytes) -> std::io::Result<KubeconfigAnswer> {
        let tcp = tokio::net::TcpStream::connect(self.address).await?;
        let name = ServerName::try_from(self.server_name.clone()).map_err(std::io::Error::other)?;
        let tls = self.tls.connect(name, tcp).await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let mut request = hyper::Request::builder()
            .method("POST")
            .header("Content-Type", "application/json");
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let response = if h2 {
            let uri = format!("https://{}{}", self.server_name, self.path);
            let request = request
                .uri(uri)
                .body(Full::new(body))
                .map_err(std::io::Error::other)?;
            let (mut sender, connection) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                TokioIo::new(tls),
            )
            .await
            .map_err(std::io::Error::other)?;
            tokio::spawn(connection);
            sender
                .send_request(request)
                .await
                .map_err(std::io::Error::other)?
        } else {
            let request = request
                .uri(self.path.as_str())
                .header("Host", self.server_name.as_str())
                .body(Full::new(body))
                .map_err(std::io::Error::other)?;
            let (mut sender, connection) = http1::handshake(TokioIo::new(tls))
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(connection);
            sender
                .send_request(request)
                .await
                .map_err(std::io::Error::other)?
        };
        let status = response.status().as_u16();
        let version = format!("{:?}", response.version());
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok(KubeconfigAnswer {
            status,
            version,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}
