//! The rustls client configuration built from the `tls` options.
//!
//! The crypto provider is named explicitly (ring) rather than taken from the process
//! default, so that another crate enabling a second provider cannot make this panic.

use std::sync::Arc;

use auditflow_core::BuildError;
use auditflow_tls::{read_certs, read_key, root_store};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::TlsOptions;

/// Checks the options and files without loading the system's certificate authorities
/// (for `auditflow validate`).
pub fn check(options: &TlsOptions) -> Vec<BuildError> {
    let mut errors = Vec::new();
    if let Some(path) = &options.ca_file {
        if let Err(error) = read_certs(path, "tls.ca_file") {
            errors.push(error);
        }
    }
    match (&options.cert_file, &options.key_file) {
        (Some(cert), Some(key)) => {
            if let Err(error) = read_certs(cert, "tls.cert_file") {
                errors.push(error);
            }
            if let Err(error) = read_key(key, "tls.key_file") {
                errors.push(error);
            }
        }
        (Some(_), None) => errors.push(BuildError::field(
            "tls.key_file",
            "is missing: tls.cert_file needs the private key of that certificate",
        )),
        (None, Some(_)) => errors.push(BuildError::field(
            "tls.cert_file",
            "is missing: tls.key_file is set, but not the certificate it belongs to",
        )),
        (None, None) => {}
    }
    if let Some(name) = &options.server_name {
        if ServerName::try_from(name.as_str()).is_err() {
            errors.push(BuildError::field(
                "tls.server_name",
                format!("{name:?} is not a DNS name or IP address"),
            ));
        }
    }
    errors
}

/// The client configuration for `options` (ALPN is set by the connector).
pub fn client_config(options: &TlsOptions) -> Result<ClientConfig, BuildError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| BuildError::new(format!("TLS setup failed: {error}")))?;
    let builder = if options.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            }))
    } else {
        builder.with_root_certificates(roots(options)?)
    };
    match (&options.cert_file, &options.key_file) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(
                read_certs(cert, "tls.cert_file")?,
                read_key(key, "tls.key_file")?,
            )
            .map_err(|error| {
                BuildError::field(
                    "tls.key_file",
                    format!(
                        "{}: does not go with tls.cert_file {}: {error}",
                        key.display(),
                        cert.display()
                    ),
                )
            }),
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn roots(options: &TlsOptions) -> Result<RootCertStore, BuildError> {
    if let Some(path) = &options.ca_file {
        return root_store(path, "tls.ca_file");
    }
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        let reasons: Vec<String> = native.errors.iter().map(ToString::to_string).collect();
        return Err(BuildError::field(
            "tls.ca_file",
            format!(
                "is unset and no system certificate authorities were found ({}); set tls.ca_file to the collector's CA",
                if reasons.is_empty() { "none installed".to_owned() } else { reasons.join("; ") }
            ),
        ));
    }
    Ok(roots)
}

/// `insecure_skip_verify`: any certificate is accepted, but the handshake signatures are
/// still checked so that the connection at least talks to the key holder it was offered.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
