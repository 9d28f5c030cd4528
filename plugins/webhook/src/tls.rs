//! The rustls server configuration from the `tls` options (ring, TLS 1.2 and 1.3, ALPN
//! `h2` and `http/1.1`).

use std::sync::Arc;

use auditflow_core::BuildError;
use auditflow_tls::{read_certs, read_key, root_store};
use rustls::server::WebPkiClientVerifier;

use crate::TlsConfig;

pub(crate) fn server_config(config: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, BuildError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&config.cert_file, "tls.cert_file")?;
    let key = read_key(&config.key_file, "tls.key_file")?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| BuildError::field("tls", error.to_string()))?;
    let builder = match &config.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let roots = root_store(path, "tls.client_ca_file")?;
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
