//! The rustls server configuration from the `tls` options (ring, TLS 1.2 and 1.3, ALPN
//! `h2` and `http/1.1`).

use std::path::Path;
use std::sync::Arc;

use auditflow_core::BuildError;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::TlsConfig;

pub(crate) fn server_config(config: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, BuildError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&config.cert_file, "tls.cert_file")?;
    let key = read_key(&config.key_file)?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| BuildError::field("tls", error.to_string()))?;
    let builder = match &config.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(path, "tls.client_ca_file")? {
                roots.add(cert).map_err(|error| {
                    BuildError::field(
                        "tls.client_ca_file",
                        format!("{}: not a usable CA certificate: {error}", path.display()),
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|error| {
                    BuildError::field("tls.client_ca_file", format!("{}: {error}", path.display()))
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_single_cert(certs, key).map_err(|error| {
        BuildError::field(
            "tls.key_file",
            format!(
                "{} does not go with {}: {error}",
                config.key_file.display(),
                config.cert_file.display()
            ),
        )
    })?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

fn read_certs(path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>, BuildError> {
    let pem = read(path, field)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            BuildError::field(field, format!("{}: invalid PEM: {error}", path.display()))
        })?;
    if certs.is_empty() {
        return Err(BuildError::field(
            field,
            format!(
                "{} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, BuildError> {
    const FIELD: &str = "tls.key_file";
    let pem = read(path, FIELD)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|error| {
            BuildError::field(FIELD, format!("{}: invalid PEM: {error}", path.display()))
        })?
        .ok_or_else(|| {
            BuildError::field(
                FIELD,
                format!(
                    "{} holds no private key (expected a PEM `PRIVATE KEY` block)",
                    path.display()
                ),
            )
        })
}

fn read(path: &Path, field: &str) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|error| {
        BuildError::field(field, format!("cannot read {}: {error}", path.display()))
    })
}
