//! The rustls server configuration from the `tls` options (ring, TLS 1.2 and 1.3, ALPN
//! `h2` and `http/1.1`), made once when the pipeline loads from files read once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use auditflow_core::BuildError;
use auditflow_tls::inspect::load_server_files;
use auditflow_tls::{root_store, Loaded};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::sign::SingleCertAndKey;

use crate::TlsConfig;

/// The server configuration for a source listening on `listen`, or every problem with the
/// files (see [`load_server_files`] for what is checked), each naming its option.
pub(crate) fn compile(
    config: &TlsConfig,
    listen: SocketAddr,
) -> Result<Loaded<Arc<ServerConfig>>, Vec<BuildError>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut problems = Vec::new();
    let mut absent = None;
    let identity = Loaded::note(
        load_server_files(
            &config.cert_file,
            "tls.cert_file",
            &config.key_file,
            "tls.key_file",
            listen,
            SystemTime::now(),
        ),
        &mut problems,
        &mut absent,
    );
    let verifier = match &config.client_ca_file {
        None => None,
        Some(path) => match root_store(path, "tls.client_ca_file") {
            Err(error) if !path.exists() => {
                absent.get_or_insert(error);
                None
            }
            Err(error) => {
                problems.push(error);
                None
            }
            Ok(roots) => {
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|error| {
                        problems.push(BuildError::field(
                            "tls.client_ca_file",
                            format!("{}: {error}", path.display()),
                        ))
                    })
                    .ok()
            }
        },
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let identity = match (identity, absent) {
        (_, Some(absent)) => return Ok(Loaded::Absent(absent)),
        (Some(identity), None) => identity,
        (None, None) => unreachable!("the certificate is read, absent, or a problem"),
    };
    let builder = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| vec![BuildError::field("tls", error.to_string())])?;
    let builder = match verifier {
        None => builder.with_no_client_auth(),
        Some(verifier) => builder.with_client_cert_verifier(verifier),
    };
    let mut server = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(identity)));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Loaded::Read(Arc::new(server)))
}
