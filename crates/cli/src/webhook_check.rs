//! `auditflow webhook-check --kubeconfig FILE`: what kube-apiserver's webhook client would
//! get from the kubeconfig in `--audit-webhook-config-file`, checked before restarting it.
//!
//! The kubeconfig is read as client-go reads it (current context; paths relative to the
//! file's directory; `*-data` over files; `token` over `tokenFile`), the URL gets client-go's
//! `?timeout=30s`, and one test `EventList` is sent, each step reported in order: DNS,
//! TCP, TLS (with the negotiated protocol), HTTP. The test event carries the annotation
//! [`auditflow_webhook::CHECK_ANNOTATION`], by which a `webhook` source counts it and keeps
//! it out of the pipeline.
//!
//! The kubeconfig is parsed with serde structs over `serde_yaml` (already built for
//! figment): the handful of fields client-go's REST client uses are all this needs, where
//! the `kube` crate's `Kubeconfig` would bring the whole Kubernetes client with it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use auditflow_tls::explain::{explain, rustls_error, Side};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;

/// Options of `webhook-check`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The kubeconfig kube-apiserver reads (`--audit-webhook-config-file`).
    #[arg(long)]
    kubeconfig: PathBuf,
}

/// The step timeouts: client-go's webhook request timeout is 30 s in all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
struct Kubeconfig {
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<User>>,
    #[serde(default)]
    contexts: Vec<Named<Context>>,
    #[serde(default, rename = "current-context")]
    current_context: String,
}

#[derive(Debug, Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    item: Option<T>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    #[serde(default)]
    server: String,
    certificate_authority: Option<PathBuf>,
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
    tls_server_name: Option<String>,
    proxy_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    client_certificate: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_key: Option<PathBuf>,
    client_key_data: Option<String>,
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    username: Option<String>,
    password: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Context {
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    user: String,
}

/// What kube-apiserver would use: resolved from the kubeconfig.
struct Target {
    url: hyper::Uri,
    host: String,
    port: u16,
    https: bool,
    server_name: String,
    roots: Option<rustls::RootCertStore>,
    ca_source: String,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    authorization: Option<String>,
    credentials: Vec<String>,
}

/// Runs the check; 0 when a real API server would get a 2xx, 1 when a step fails, 2 when
/// the kubeconfig cannot be used at all.
pub(crate) fn check(args: &Args) -> ExitCode {
    let target = match resolve(&args.kubeconfig) {
        Ok(target) => target,
        Err(message) => {
            println!("kubeconfig: FAILED: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("auditflow webhook-check: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(send(&target)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(()) => ExitCode::from(1),
    }
}

fn resolve(path: &Path) -> Result<Target, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let config: Kubeconfig = serde_yaml::from_str(&text)
        .map_err(|error| format!("{}: not a kubeconfig: {error}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let in_file = |what: &str| format!("{} ({what})", path.display());
    if config.current_context.is_empty() {
        return Err(format!(
            "{}: current-context is not set, and kube-apiserver uses the current context",
            in_file("current-context")
        ));
    }
    let context = find(&config.contexts, &config.current_context).ok_or_else(|| {
        format!(
            "{}: no context named {:?}",
            in_file("contexts"),
            config.current_context
        )
    })?;
    let cluster = find(&config.clusters, &context.cluster).ok_or_else(|| {
        format!(
            "{}: no cluster named {:?}",
            in_file("clusters"),
            context.cluster
        )
    })?;
    let default_user = User::default();
    let user = if context.user.is_empty() {
        &default_user
    } else {
        find(&config.users, &context.user)
            .ok_or_else(|| format!("{}: no user named {:?}", in_file("users"), context.user))?
    };
    println!(
        "kubeconfig: {}: context {:?}, cluster {:?}, user {:?}",
        path.display(),
        config.current_context,
        context.cluster,
        context.user
    );
    if cluster.insecure_skip_tls_verify {
        return Err(
            "insecure-skip-tls-verify is set: webhook-check does not check a server it \
                    would not verify; give certificate-authority instead"
                .into(),
        );
    }
    if let Some(proxy) = &cluster.proxy_url {
        println!("kubeconfig: note: proxy-url {proxy:?} is not used by this check");
    }

    // client-go appends the query to the configured URL.
    let server = cluster.server.trim();
    let with_query = if server.contains('?') {
        format!("{server}&timeout=30s")
    } else {
        format!("{server}?timeout=30s")
    };
    let url: hyper::Uri = with_query
        .parse()
        .map_err(|error| format!("server {server:?} is not a URL: {error}"))?;
    let https = match url.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(format!(
                "server {server:?}: expected https://HOST:PORT/PATH"
            ))
        }
    };
    let host = url
        .host()
        .ok_or_else(|| format!("server {server:?}: the host is missing"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let server_name = cluster
        .tls_server_name
        .clone()
        .unwrap_or_else(|| host.clone());

    let read = |file: &Path, what: &str| -> Result<Vec<u8>, String> {
        let file = dir.join(file);
        std::fs::read(&file)
            .map_err(|error| format!("{what} {}: cannot read: {error}", file.display()))
    };
    let data = |text: &str, what: &str| -> Result<Vec<u8>, String> {
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|error| format!("{what}: not base64: {error}"))
    };

    // The CA: inline data wins over a file, as in client-go; none means the host's roots.
    let (ca_pem, ca_source) = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(inline), _) => (
            Some(data(inline, "certificate-authority-data")?),
            "certificate-authority-data".to_owned(),
        ),
        (None, Some(file)) => (
            Some(read(file, "certificate-authority")?),
            format!("certificate-authority {}", dir.join(file).display()),
        ),
        (None, None) => (None, "the host's trusted roots".to_owned()),
    };
    let roots = match ca_pem {
        None => None,
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| format!("{ca_source}: invalid PEM: {error}"))?;
            if certs.is_empty() {
                return Err(format!("{ca_source}: holds no certificate"));
            }
            for cert in certs {
                roots.add(cert).map_err(|error| {
                    format!("{ca_source}: not a usable CA certificate: {error}")
                })?;
            }
            Some(roots)
        }
    };

    let mut credentials = Vec::new();
    let cert_pem = match (&user.client_certificate_data, &user.client_certificate) {
        (Some(inline), _) => Some((
            data(inline, "client-certificate-data")?,
            "client-certificate-data".to_owned(),
        )),
        (None, Some(file)) => Some((
            read(file, "client-certificate")?,
            format!("client-certificate {}", dir.join(file).display()),
        )),
        (None, None) => None,
    };
    let key_pem = match (&user.client_key_data, &user.client_key) {
        (Some(inline), _) => Some((
            data(inline, "client-key-data")?,
            "client-key-data".to_owned(),
        )),
        (None, Some(file)) => Some((
            read(file, "client-key")?,
            format!("client-key {}", dir.join(file).display()),
        )),
        (None, None) => None,
    };
    let identity = match (cert_pem, key_pem) {
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => return Err(
            "a client certificate needs both client-certificate and client-key (or their -data)"
                .into(),
        ),
        (Some((cert, cert_source)), Some((key, key_source))) => {
            let certs = CertificateDer::pem_slice_iter(&cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| format!("{cert_source}: invalid PEM: {error}"))?;
            if certs.is_empty() {
                return Err(format!("{cert_source}: holds no certificate"));
            }
            let key = PrivateKeyDer::from_pem_slice(&key)
                .map_err(|error| format!("{key_source}: no usable private key: {error}"))?;
            credentials.push(format!("client certificate from {cert_source}"));
            Some((certs, key))
        }
    };
    let token = match (&user.token, &user.token_file) {
        (Some(token), _) if !token.is_empty() => Some((token.clone(), "token".to_owned())),
        (_, Some(file)) => {
            let text = String::from_utf8(read(file, "tokenFile")?)
                .map_err(|_| "tokenFile: not UTF-8".to_owned())?;
            Some((
                text.trim().to_owned(),
                format!("tokenFile {}", dir.join(file).display()),
            ))
        }
        _ => None,
    };
    let basic = match (&user.username, &user.password) {
        (Some(name), password) if !name.is_empty() => {
            Some(format!("{name}:{}", password.as_deref().unwrap_or("")))
        }
        _ => None,
    };
    let authorization = match (token, basic) {
        (Some(_), Some(_)) => {
            return Err(
                "username/password and a bearer token are both set; client-go allows only one"
                    .into(),
            )
        }
        (Some((token, source)), None) => {
            credentials.push(format!("bearer token from {source}"));
            Some(format!("Bearer {token}"))
        }
        (None, Some(pair)) => {
            credentials.push("basic auth (username/password)".to_owned());
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            ))
        }
        (None, None) => None,
    };
    if !https && identity.is_some() {
        return Err(format!("server {server:?} is plain HTTP, so the client certificate cannot be presented: use https://"));
    }
    Ok(Target {
        url,
        host,
        port,
        https,
        server_name,
        roots,
        ca_source,
        identity,
        authorization,
        credentials,
    })
}

fn find<'a, T>(list: &'a [Named<T>], name: &str) -> Option<&'a T> {
    list.iter()
        .find(|entry| entry.name == name)
        .and_then(|entry| entry.item.as_ref())
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

async fn send(target: &Target) -> Result<(), ()> {
    println!(
        "request: POST {} ({}; {})",
        target.url,
        if target.credentials.is_empty() {
            "no credentials".to_owned()
        } else {
            target.credentials.join(" and ")
        },
        if target.https {
            format!("trusting {}", target.ca_source)
        } else {
            "plain HTTP".to_owned()
        }
    );

    // DNS
    let started = Instant::now();
    let addresses: Vec<SocketAddr> = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::lookup_host((target.host.as_str(), target.port)),
    )
    .await
    {
        Ok(Ok(addresses)) => addresses.collect(),
        Ok(Err(error)) => return fail("DNS", format!("cannot resolve {:?}: {error}", target.host)),
        Err(_) => {
            return fail(
                "DNS",
                format!("resolving {:?} took over {CONNECT_TIMEOUT:?}", target.host),
            )
        }
    };
    if addresses.is_empty() {
        return fail("DNS", format!("{:?} resolves to no address", target.host));
    }
    let listed: Vec<String> = addresses
        .iter()
        .map(|address| address.ip().to_string())
        .collect();
    println!(
        "DNS: ok: {} -> {} ({} ms)",
        target.host,
        listed.join(", "),
        started.elapsed().as_millis()
    );

    // TCP: every address in turn, as Go's dialer does.
    let started = Instant::now();
    let mut last_error = String::new();
    let mut tcp = None;
    for address in &addresses {
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(stream)) => {
                tcp = Some((stream, *address));
                break;
            }
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
                last_error = format!("{address}: connection refused: nothing listens there; is the auditflow source running, with this port in its address?");
            }
            Ok(Err(error)) => last_error = format!("{address}: {error}"),
            Err(_) => {
                last_error = format!(
                "{address}: no answer within {CONNECT_TIMEOUT:?} (a firewall dropping packets?)"
            )
            }
        }
    }
    let Some((tcp, address)) = tcp else {
        return fail("TCP", last_error);
    };
    let _ = tcp.set_nodelay(true);
    println!(
        "TCP: ok: connected to {address} ({} ms)",
        started.elapsed().as_millis()
    );

    // TLS
    let client_side = Side::Client {
        ca_option: "certificate-authority",
        cert_option: "client-certificate",
    };
    let (io, h2): (Box<dyn Io>, bool) = if target.https {
        let started = Instant::now();
        let config = match client_config(target) {
            Ok(config) => config,
            Err(message) => return fail("TLS", message),
        };
        let name = match ServerName::try_from(target.server_name.clone()) {
            Ok(name) => name,
            Err(error) => {
                return fail(
                    "TLS",
                    format!(
                        "{:?} is not a valid server name: {error}",
                        target.server_name
                    ),
                )
            }
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp)).await {
            Ok(Ok(stream)) => {
                let (_, session) = stream.get_ref();
                let version = session
                    .protocol_version()
                    .map_or("?".to_owned(), |version| format!("{version:?}"));
                let alpn = session
                    .alpn_protocol()
                    .map(|alpn| String::from_utf8_lossy(alpn).into_owned());
                let h2 = alpn.as_deref() == Some("h2");
                let expiry = session
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|cert| leaf_expiry(cert.as_ref()));
                println!(
                    "TLS: ok: {version}, ALPN {}{}{} ({} ms)",
                    alpn.as_deref().unwrap_or("none (HTTP/1.1)"),
                    expiry
                        .map(|at| format!(", server certificate valid until {at}"))
                        .unwrap_or_default(),
                    if target.identity.is_some() {
                        ", client certificate presented"
                    } else {
                        ""
                    },
                    started.elapsed().as_millis()
                );
                (Box::new(stream), h2)
            }
            Ok(Err(error)) => {
                let message = match rustls_error(&error) {
                    Some(rustls @ rustls::Error::AlertReceived(_)) => format!(
                        "{}{}",
                        explain(rustls, client_side),
                        client_certificate_note(target)
                    ),
                    Some(rustls) => explain(rustls, client_side),
                    None => format!("the connection failed during the handshake: {error} (the source closed it: over its max_connections, or not a TLS listener?)"),
                };
                return fail("TLS", message);
            }
            Err(_) => return fail("TLS", format!("no handshake within {CONNECT_TIMEOUT:?}")),
        }
    } else {
        println!("TLS: skipped: the server URL is plain http://");
        (Box::new(tcp), false)
    };

    // HTTP
    let started = Instant::now();
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, request(target, io, h2)).await;
    let (status, body) = match answer {
        Ok(Ok(answer)) => answer,
        Ok(Err(error)) => {
            let message = match rustls_error(error.as_ref()) {
                Some(rustls) => format!(
                    "{}{}",
                    explain(rustls, client_side),
                    client_certificate_note(target)
                ),
                // With TLS 1.3 the server judges the client certificate after the
                // handshake; its alert can be lost to a write that fails first.
                None if target.identity.is_some() => format!(
                    "{}: the source closed the connection right after the handshake, as it \
                     does when it refuses the client certificate in client-certificate (its \
                     log says why){}",
                    chain(error.as_ref()),
                    client_certificate_note(target)
                ),
                None => chain(error.as_ref()),
            };
            return fail("HTTP", message);
        }
        Err(_) => {
            return fail(
                "HTTP",
                format!("no answer within {REQUEST_TIMEOUT:?} (client-go gives up then)"),
            )
        }
    };
    let elapsed = started.elapsed().as_millis();
    let protocol = if h2 { "HTTP/2" } else { "HTTP/1.1" };
    if (200..=299).contains(&status) {
        let recognised = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|body| body.get("checks")?.as_u64())
            .is_some_and(|checks| checks > 0);
        println!(
            "HTTP: ok: {status} over {protocol} ({elapsed} ms): {}{}",
            body.trim(),
            if recognised {
                "; the source recognised the test event and kept it out of its pipeline"
            } else {
                ""
            }
        );
        println!("kube-apiserver with this kubeconfig would get {status}: its audit events will be delivered");
        return Ok(());
    }
    let reason = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|body| body.get("error")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| body.trim().chars().take(300).collect());
    let hint = match status {
        401 => "the source wants a bearer token from its auth: set user token (or tokenFile) in the kubeconfig",
        403 => "the credentials were refused",
        404 => "the path of the kubeconfig's server URL is not the source's path",
        405 => "the source wants POST",
        413 => "raise the source's max_body_bytes or lower --audit-webhook-batch-max-size",
        503 | 429 => "the source is up but its pipeline is not taking events now; the API server would retry",
        _ => "kube-apiserver retries this answer with backoff, then drops the batch",
    };
    fail(
        "HTTP",
        format!("{status} over {protocol} ({elapsed} ms): {reason} ({hint})"),
    )
}

fn fail(step: &str, message: String) -> Result<(), ()> {
    println!("{step}: FAILED: {message}");
    println!("kube-apiserver with this kubeconfig would not deliver its audit events");
    Err(())
}

fn client_config(target: &Target) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?;
    let roots = match &target.roots {
        Some(roots) => roots.clone(),
        None => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            roots
        }
    };
    let builder = builder.with_root_certificates(roots);
    let mut config = match &target.identity {
        None => builder.with_no_client_auth(),
        Some((certs, key)) => {
            // Presented as it is, the way Go presents the kubeconfig's certificate: rustls's
            // own check would refuse, here, what the source is to judge (an X.509 v1
            // certificate, for one). Only a key of another certificate is stopped here.
            let key = rustls::crypto::ring::default_provider()
                .key_provider
                .load_private_key(key.clone_key())
                .map_err(|error| format!("client-key: not a usable private key: {error}"))?;
            let certified = rustls::sign::CertifiedKey::new(certs.clone(), key);
            if let Err(rustls::Error::InconsistentKeys(_)) = certified.keys_match() {
                return Err(
                    "client-key is not the private key of client-certificate: give the key \
                     the certificate was issued for"
                        .to_owned(),
                );
            }
            builder.with_client_cert_resolver(Arc::new(Presented(Arc::new(certified))))
        }
    };
    // What Go's HTTP transport offers.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The kubeconfig's client certificate, presented whatever it holds.
#[derive(Debug)]
struct Presented(Arc<rustls::sign::CertifiedKey>);

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

/// What is wrong with the client certificate as this side can see it (version, validity),
/// to go with a refusal from the server.
fn client_certificate_note(target: &Target) -> String {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Some((certs, _)) = &target.identity else {
        return String::new();
    };
    let Ok((_, cert)) = X509Certificate::from_der(certs[0].as_ref()) else {
        return String::new();
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64);
    if cert.version().0 != 2 {
        format!(
            "; the client certificate is X.509 v{}; reissue it with v3 extensions, e.g. \
             `extendedKeyUsage=clientAuth`",
            cert.version().0 + 1
        )
    } else if now > cert.validity().not_after.timestamp() {
        format!(
            "; the client certificate expired at {}",
            auditflow_tls::explain::utc_from_unix(
                cert.validity().not_after.timestamp().max(0) as u64
            )
        )
    } else if now < cert.validity().not_before.timestamp() {
        "; the client certificate is not valid yet".to_owned()
    } else {
        String::new()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error and its causes, `a: b: c`.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    if text == error.to_string() {
        text = format!("{text} ({error:?})");
    }
    text
}

/// The connection task's error when it has one, else the request's.
async fn connection_error(
    connection: tokio::task::JoinHandle<Result<(), hyper::Error>>,
    request_error: hyper::Error,
) -> BoxError {
    match tokio::time::timeout(Duration::from_secs(1), connection).await {
        Ok(Ok(Err(error))) => Box::new(error),
        _ => Box::new(request_error),
    }
}

async fn request(target: &Target, io: Box<dyn Io>, h2: bool) -> Result<(u16, String), BoxError> {
    let body = Bytes::from(test_event_list());
    let path = target
        .url
        .path_and_query()
        .map_or("/".to_owned(), ToString::to_string);
    let mut request = hyper::Request::builder()
        .method("POST")
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, */*")
        .header(
            "User-Agent",
            concat!("auditflow-webhook-check/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(authorization) = &target.authorization {
        request = request.header("Authorization", authorization);
    }
    let response = if h2 {
        let request = request.uri(target.url.clone()).body(Full::new(body))?;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
        let connection = tokio::spawn(connection);
        match sender.send_request(request).await {
            Ok(response) => response,
            // The connection's own error says why (a TLS alert, a reset), not the request's.
            Err(error) => return Err(connection_error(connection, error).await),
        }
    } else {
        let authority = target
            .url
            .authority()
            .map_or(target.host.clone(), ToString::to_string);
        let request = request
            .uri(path)
            .header("Host", authority)
            .body(Full::new(body))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        let connection = tokio::spawn(connection);
        match sender.send_request(request).await {
            Ok(response) => response,
            Err(error) => return Err(connection_error(connection, error).await),
        }
    };
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One `EventList` holding one harmless event, marked as a test.
fn test_event_list() -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let stamp = format!(
        "{}.{:06}Z",
        auditflow_tls::explain::utc_from_unix(now.as_secs()).trim_end_matches('Z'),
        now.subsec_micros()
    );
    let id = format!(
        "{:032x}",
        now.as_nanos() ^ (u128::from(std::process::id()) << 64)
    );
    let audit_id = format!(
        "{}-{}-{}-{}-{}",
        &id[0..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..32]
    );
    let mut annotations = BTreeMap::new();
    annotations.insert(auditflow_webhook::CHECK_ANNOTATION, "true");
    serde_json::json!({
        "kind": "EventList",
        "apiVersion": "audit.k8s.io/v1",
        "metadata": {},
        "items": [{
            "level": "Metadata",
            "auditID": audit_id,
            "stage": "ResponseComplete",
            "requestURI": "/auditflow/webhook-check",
            "verb": "get",
            "user": {"username": "system:auditflow:webhook-check"},
            "sourceIPs": ["127.0.0.1"],
            "userAgent": concat!("auditflow-webhook-check/", env!("CARGO_PKG_VERSION")),
            "responseStatus": {"metadata": {}, "code": 200},
            "requestReceivedTimestamp": stamp,
            "stageTimestamp": stamp,
            "annotations": annotations,
        }]
    })
    .to_string()
}

/// The leaf certificate's notAfter, as an RFC 3339 time.
fn leaf_expiry(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let not_after = cert.validity().not_after.timestamp();
    Some(auditflow_tls::explain::utc_from_unix(
        u64::try_from(not_after).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_event_carries_the_marker_and_is_an_event_list() {
        let list: serde_json::Value = serde_json::from_str(&test_event_list()).unwrap();
        assert_eq!(list["kind"], "EventList");
        let item = &list["items"][0];
        assert_eq!(
            item["annotations"][auditflow_webhook::CHECK_ANNOTATION],
            "true"
        );
        assert_eq!(item["auditID"].as_str().unwrap().len(), 36);
    }

    #[test]
    fn paths_resolve_against_the_kubeconfig_and_the_url_gets_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kubeconfig");
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://audit.example:8443/audit\n\
             contexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n\
             users:\n- name: u\n  user:\n    tokenFile: token.txt\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("token.txt"), "s3cret\n").unwrap();
        let target = resolve(&file).unwrap_or_else(|message| panic!("{message}"));
        assert_eq!(
            target.url.to_string(),
            "https://audit.example:8443/audit?timeout=30s"
        );
        assert_eq!((target.host.as_str(), target.port), ("audit.example", 8443));
        assert_eq!(target.authorization.as_deref(), Some("Bearer s3cret"));
        assert!(target.roots.is_none());
    }
}
