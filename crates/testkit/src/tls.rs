//! Real HTTPS servers for tests: a private CA, server and client certificates made with
//! rcgen, and a hyper server behind tokio-rustls on `127.0.0.1:0` that records every
//! request and answers as the test scripts it (status, headers, body, or a connection
//! reset), optionally requiring a client certificate.
//!
//! The server runs on a runtime of its own thread, so synchronous end-to-end tests and
//! `#[tokio::test]` tests use it alike.

use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::{oneshot, Notify};

/// A private CA with a server certificate (for `localhost` and `127.0.0.1`) and a client
/// certificate, all as PEM.
pub struct Pki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    /// The client key in SEC1 form (`BEGIN EC PRIVATE KEY`) instead of PKCS#8.
    pub client_key_sec1_pem: String,
    /// A second client certificate, for an RSA key.
    pub client_rsa_cert_pem: String,
    /// That certificate's key in PKCS#1 form (`BEGIN RSA PRIVATE KEY`).
    pub client_rsa_key_pkcs1_pem: String,
    ca_der: CertificateDer<'static>,
    server_cert_der: CertificateDer<'static>,
    server_key_der: Vec<u8>,
    ca: Arc<CertifiedIssuer<'static, KeyPair>>,
}

/// A throw-away RSA key in two forms (see `crates/testkit/fixtures/tls/README.md`): rcgen cannot
/// make RSA keys with ring.
const RSA_PKCS8_PEM: &str = include_str!("../fixtures/tls/rsa-pkcs8.key");
const RSA_PKCS1_PEM: &str = include_str!("../fixtures/tls/rsa-pkcs1.key");

/// The SEC1 `ECPrivateKey` inside a PKCS#8 EC key (its `privateKey` OCTET STRING), as
/// `EC PRIVATE KEY` PEM.
fn sec1_pem(pkcs8: &[u8]) -> String {
    // PrivateKeyInfo ::= SEQUENCE { version INTEGER, algorithm SEQUENCE, privateKey OCTET STRING, ... }
    let (_, info) = der_item(pkcs8, 0x30);
    let (rest, _) = der_item(info, 0x02);
    let (rest, _) = der_item(rest, 0x30);
    let (_, key) = der_item(rest, 0x04);
    let mut pem = String::from("-----BEGIN EC PRIVATE KEY-----\n");
    let text = base64(key);
    for chunk in text.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END EC PRIVATE KEY-----\n");
    pem
}

/// Splits one DER item with `tag` off the front of `der`: (what follows, its contents).
fn der_item(der: &[u8], tag: u8) -> (&[u8], &[u8]) {
    assert_eq!(der[0], tag, "unexpected DER tag");
    let (len, header) = match der[1] {
        short if short < 0x80 => (usize::from(short), 2),
        0x81 => (usize::from(der[2]), 3),
        0x82 => ((usize::from(der[2]) << 8) | usize::from(der[3]), 4),
        other => panic!("unexpected DER length {other:#x}"),
    };
    (&der[header + len..], &der[header..header + len])
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, byte)| n | (u32::from(*byte) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Where [`Pki::write_to`] put the PEM files.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    /// A fresh CA named `name`, and the certificates it signed.
    pub fn new(name: &str) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("self-sign the CA");

        let leaf_for = |key: KeyPair,
                        names: Vec<String>,
                        common_name: &str,
                        usage: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(names).expect("leaf params");
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca).expect("sign a leaf");
            (cert, key)
        };
        let leaf = |names: Vec<String>, common_name: &str, usage: ExtendedKeyUsagePurpose| {
            leaf_for(
                KeyPair::generate().expect("leaf key"),
                names,
                common_name,
                usage,
            )
        };
        let (server_cert, server_key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            vec!["auditflow-client".into()],
            "auditflow-client",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let (client_rsa_cert, _) = leaf_for(
            KeyPair::from_pem(RSA_PKCS8_PEM).expect("the RSA fixture key"),
            vec!["auditflow-rsa-client".into()],
            "auditflow-rsa-client",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Pki {
            client_key_sec1_pem: sec1_pem(&client_key.serialize_der()),
            client_rsa_cert_pem: client_rsa_cert.pem(),
            client_rsa_key_pkcs1_pem: RSA_PKCS1_PEM.to_owned(),
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            server_cert_der: server_cert.der().clone(),
            server_key_der: server_key.serialize_der(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
            ca: Arc::new(ca),
        }
    }

    /// A client certificate and key (PEM) signed by this CA, broken as `fault` says.
    pub fn client_identity(&self, fault: CertFault) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["auditflow-client".to_owned()]).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, "auditflow-client");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        fault.apply(&mut params);
        if matches!(fault, CertFault::WrongKeyUsage) {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        self.sign(params, fault)
    }

    /// A server certificate and key (PEM) for `names`, signed by this CA, broken as `fault`
    /// says.
    pub fn server_identity(&self, names: &[&str], fault: CertFault) -> (String, String) {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        fault.apply(&mut params);
        self.sign(params, fault)
    }

    fn sign(&self, params: CertificateParams, fault: CertFault) -> (String, String) {
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("sign a leaf");
        let der = if matches!(fault, CertFault::V1) {
            x509_v1(cert.der(), self.ca.key())
        } else {
            cert.der().to_vec()
        };
        (pem("CERTIFICATE", &der), key.serialize_pem())
    }

    /// Writes every PEM into `dir` (`ca.pem`, `server.pem`, `server.key`, `client.pem`,
    /// `client.key`).
    pub fn write_to(&self, dir: &Path) -> PkiFiles {
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write a PEM file");
            path
        };
        PkiFiles {
            ca: write("ca.pem", &self.ca_pem),
            server_cert: write("server.pem", &self.server_cert_pem),
            server_key: write("server.key", &self.server_key_pem),
            client_cert: write("client.pem", &self.client_cert_pem),
            client_key: write("client.key", &self.client_key_pem),
        }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// 0 for the first request the server got.
    pub index: usize,
    /// When the request (head and body) had arrived.
    pub at: Instant,
    pub method: String,
    /// Path and query.
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Header names in lowercase, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body after undoing `Content-Encoding` (gzip, zstd); as it came when that
    /// failed (see `decode_error`).
    pub body: Vec<u8>,
    /// Why the body could not be decoded.
    pub decode_error: Option<String>,
    /// The body's length on the wire.
    pub wire_len: usize,
    /// Whether the TLS client presented a certificate.
    pub client_cert: bool,
    /// How the server answered.
    pub reply: Reply,
}

impl Recorded {
    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    }

    pub fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).expect("the body is UTF-8")
    }
}

/// How the server answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status {
        code: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Drop the connection without answering (TCP reset: `SO_LINGER` 0).
    Reset,
    /// Never answer, keeping the connection open (a server that hangs).
    Hang,
}

impl Reply {
    /// The status code, or `None` for a reset.
    pub fn code(&self) -> Option<u16> {
        match self {
            Reply::Status { code, .. } => Some(*code),
            Reply::Reset | Reply::Hang => None,
        }
    }

    pub fn ok() -> Reply {
        Reply::status(200)
    }

    pub fn status(code: u16) -> Reply {
        Reply::Status {
            code,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        if let Reply::Status { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
    }

    pub fn body(mut self, text: &str) -> Reply {
        if let Reply::Status { body, .. } = &mut self {
            *body = text.into();
        }
        self
    }
}

/// Decides the reply to each request (given the request, already recorded).
pub type Responder = Box<dyn FnMut(&Recorded) -> Reply + Send>;

/// How to start a [`TestServer`].
#[derive(Default)]
pub struct ServerOptions {
    /// Require a client certificate signed by the server's own CA.
    pub require_client_cert: bool,
    /// Answers; `200` to everything when `None`.
    pub responder: Option<Responder>,
    /// Offer only `http/1.1` by ALPN (no `h2`).
    pub http1_only: bool,
}

impl ServerOptions {
    /// Answers with `replies` in order, then `200` to everything after.
    pub fn replies(replies: Vec<Reply>) -> ServerOptions {
        let mut replies = replies.into_iter();
        ServerOptions {
            responder: Some(Box::new(move |_| replies.next().unwrap_or_else(Reply::ok))),
            ..ServerOptions::default()
        }
    }

    pub fn responder(responder: impl FnMut(&Recorded) -> Reply + Send + 'static) -> ServerOptions {
        ServerOptions {
            responder: Some(Box::new(responder)),
            ..ServerOptions::default()
        }
    }

    pub fn require_client_cert(mut self) -> ServerOptions {
        self.require_client_cert = true;
        self
    }

    pub fn http1_only(mut self) -> ServerOptions {
        self.http1_only = true;
        self
    }
}

struct State {
    requests: Mutex<Vec<Recorded>>,
    responder: Mutex<Responder>,
    /// TLS handshakes that failed, with rustls's reason.
    handshake_errors: Mutex<Vec<String>>,
}

/// An HTTPS server on `127.0.0.1:0`, stopped when dropped.
pub struct TestServer {
    pub address: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server presenting `pki`'s server certificate.
    pub fn start(pki: &Pki, options: ServerOptions) -> TestServer {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("TLS versions");
        let builder = if options.require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(pki.ca_der.clone()).expect("add the CA");
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key_der.clone()));
        let mut config = builder
            .with_single_cert(vec![pki.server_cert_der.clone()], key)
            .expect("server certificate");
        config.alpn_protocols = if options.http1_only {
            vec![b"http/1.1".to_vec()]
        } else {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let state = Arc::new(State {
            requests: Mutex::new(Vec::new()),
            responder: Mutex::new(
                options
                    .responder
                    .unwrap_or_else(|| Box::new(|_| Reply::ok())),
            ),
            handshake_errors: Mutex::new(Vec::new()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel();
        let thread = {
            let state = Arc::clone(&state);
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .expect("test server runtime");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    tokio::select! {
                        _ = stopped => {}
                        _ = accept_loop(listener, acceptor, state) => {}
                    }
                });
                runtime.shutdown_background();
            })
        };
        TestServer {
            address,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `https://127.0.0.1:PORT/path`
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.address)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Reasons of failed TLS handshakes so far.
    pub fn handshake_errors(&self) -> Vec<String> {
        self.state.handshake_errors.lock().unwrap().clone()
    }

    /// Blocks until `done(requests)` holds, failing the test after `timeout`.
    pub fn wait_until(&self, timeout: Duration, done: impl Fn(&[Recorded]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.state.requests.lock().unwrap()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the test server did not get what was expected within {timeout:?}; it got {} requests",
                self.state.requests.lock().unwrap().len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        // A second handle on the socket, to turn a scripted reset into a real RST (zero
        // linger) after the connection is dropped, without touching graceful closes.
        let Ok((tcp, handle)) = tcp
            .into_std()
            .and_then(|std| Ok((std.try_clone()?, std)))
            .and_then(|(std, handle)| Ok((tokio::net::TcpStream::from_std(std)?, handle)))
        else {
            continue;
        };
        let acceptor = acceptor.clone();
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(error) => {
                    state
                        .handshake_errors
                        .lock()
                        .unwrap()
                        .push(error.to_string());
                    return;
                }
            };
            let client_cert = tls.get_ref().1.peer_certificates().is_some();
            let reset = Arc::new(Notify::new());
            let service = {
                let state = Arc::clone(&state);
                let reset = Arc::clone(&reset);
                service_fn(move |request| {
                    let state = Arc::clone(&state);
                    let reset = Arc::clone(&reset);
                    async move { answer(request, client_cert, &state, &reset).await }
                })
            };
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            let reset = tokio::select! {
                _ = connection => false,
                _ = reset.notified() => true,
            };
            if reset {
                if let Ok(handle) = tokio::net::TcpStream::from_std(handle) {
                    let _ = handle.set_zero_linger();
                }
            }
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    client_cert: bool,
    state: &State,
    reset: &Notify,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (head, body) = request.into_parts();
    let wire = body
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = head
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let encoding = head
        .headers
        .get("content-encoding")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let (body, decode_error) = match decode(encoding, &wire) {
        Ok(body) => (body, None),
        Err(error) => (wire.to_vec(), Some(error)),
    };
    let reply = {
        let mut requests = state.requests.lock().unwrap();
        let recorded = Recorded {
            index: requests.len(),
            at: Instant::now(),
            method: head.method.to_string(),
            path: head
                .uri
                .path_and_query()
                .map(|path| path.to_string())
                .unwrap_or_default(),
            version: format!("{:?}", head.version),
            headers,
            body,
            decode_error,
            wire_len: wire.len(),
            client_cert,
            reply: Reply::ok(),
        };
        let reply = (state.responder.lock().unwrap())(&recorded);
        requests.push(Recorded {
            reply: reply.clone(),
            ..recorded
        });
        reply
    };
    match reply {
        Reply::Status {
            code,
            headers,
            body,
        } => {
            let mut response = Response::builder().status(code);
            for (name, value) in headers {
                response = response.header(name, value);
            }
            Ok(response
                .body(Full::new(Bytes::from(body)))
                .expect("a valid scripted response"))
        }
        Reply::Reset => {
            reset.notify_one();
            std::future::pending().await
        }
        Reply::Hang => std::future::pending().await,
    }
}

fn decode(encoding: &str, wire: &[u8]) -> Result<Vec<u8>, String> {
    match encoding {
        "" | "identity" => Ok(wire.to_vec()),
        "gzip" => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(wire)
                .read_to_end(&mut out)
                .map_err(|error| format!("invalid gzip: {error}"))?;
            Ok(out)
        }
        "zstd" => zstd::decode_all(wire).map_err(|error| format!("invalid zstd: {error}")),
        other => Err(format!("unknown Content-Encoding {other:?}")),
    }
}

/// How a certificate made by [`Pki::client_identity`] or [`Pki::server_identity`] is
/// broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertFault {
    None,
    /// Valid until a day ago.
    Expired,
    /// Valid from tomorrow.
    NotYetValid,
    /// For the other end's purpose (`serverAuth` on a client certificate).
    WrongKeyUsage,
    /// X.509 version 1: no extensions at all, as `openssl x509 -req` makes without an
    /// extensions file.
    V1,
}

impl CertFault {
    fn apply(self, params: &mut CertificateParams) {
        let day = Duration::from_secs(86_400);
        let now = std::time::SystemTime::now();
        match self {
            CertFault::Expired => {
                params.not_before = (now - 30 * day).into();
                params.not_after = (now - day).into();
            }
            CertFault::NotYetValid => {
                params.not_before = (now + day).into();
                params.not_after = (now + 30 * day).into();
            }
            _ => {
                params.not_before = (now - day).into();
                params.not_after = (now + 30 * day).into();
            }
        }
    }
}

/// `der` (an rcgen certificate) rewritten as X.509 v1: the TBS without its version field
/// and its extensions, signed again by `issuer`. rcgen only writes v3, so this is how the
/// tests make what `openssl x509 -req` without `-extfile` makes.
pub fn x509_v1(der: &[u8], issuer: &KeyPair) -> Vec<u8> {
    use rcgen::SigningKey as _;
    let (certificate, _) = der_element(der);
    let certificate = der_contents(certificate);
    let (tbs, rest) = der_element(certificate);
    let (signature_algorithm, _) = der_element(rest);
    let mut fields = Vec::new();
    let mut remaining = der_contents(tbs);
    while !remaining.is_empty() {
        let (field, rest) = der_element(remaining);
        // [0] version and [3] extensions go; v1 has neither.
        if field[0] != 0xA0 && field[0] != 0xA3 {
            fields.extend_from_slice(field);
        }
        remaining = rest;
    }
    let tbs = der_wrap(0x30, &fields);
    let signature = issuer.sign(&tbs).expect("sign the v1 TBS");
    let mut bits = vec![0u8];
    bits.extend_from_slice(&signature);
    let mut body = tbs;
    body.extend_from_slice(signature_algorithm);
    body.extend_from_slice(&der_wrap(0x03, &bits));
    der_wrap(0x30, &body)
}

/// The first DER element of `input` (tag, length and contents), and what follows it.
fn der_element(input: &[u8]) -> (&[u8], &[u8]) {
    let (header, length) = der_length(input);
    input.split_at(header + length)
}

fn der_contents(element: &[u8]) -> &[u8] {
    let (header, length) = der_length(element);
    &element[header..header + length]
}

/// (header bytes, content length) of the element at the start of `input`.
fn der_length(input: &[u8]) -> (usize, usize) {
    let first = input[1] as usize;
    if first < 0x80 {
        return (2, first);
    }
    let count = first & 0x7f;
    let length = input[2..2 + count]
        .iter()
        .fold(0usize, |length, byte| (length << 8) | *byte as usize);
    (2 + count, length)
}

fn der_wrap(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let length = contents.len();
    if length < 0x80 {
        out.push(length as u8);
    } else {
        let bytes: Vec<u8> = length
            .to_be_bytes()
            .into_iter()
            .skip_while(|byte| *byte == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(contents);
    out
}

/// A PEM block.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
