//! The `tls` options' files, read and checked once when the pipeline loads, and the
//! rustls client configuration made from them.
//!
//! The crypto provider is named explicitly (ring) rather than taken from the process
//! default, so that another crate enabling a second provider cannot make this panic.

use std::sync::Arc;

use auditflow_core::BuildError;
use auditflow_tls::{read_certs, read_key, root_store};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::TlsOptions;

/// The `tls` options with their files read and checked, once: everything the client
/// configuration is made of except the system's certificate authorities, which belong to
/// the machine rather than to the pipeline and are loaded by [`ClientTls::into_config`].
pub(crate) struct ClientTls {
    provider: Arc<CryptoProvider>,
    /// The authorities of `ca_file`; `None` trusts the system's.
    roots: Option<RootCertStore>,
    /// The client certificate with its private key, known to belong together.
    client_auth: Option<CertifiedKey>,
    insecure_skip_verify: bool,
    /// `server_name`, when the server certificate is checked for another name than the
    /// uri's host.
    pub server_name: Option<ServerName<'static>>,
}

/// Reads the files the options name and checks them, or every problem with them, each
/// naming its option.
pub(crate) fn compile(options: &TlsOptions) -> Result<ClientTls, Vec<BuildError>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut errors = Vec::new();
    let roots = match &options.ca_file {
        Some(path) => root_store(path, "tls.ca_file")
            .map_err(|error| errors.push(error))
            .ok(),
        None => None,
    };
    let client_auth = match (&options.cert_file, &options.key_file) {
        (Some(cert), Some(key)) => {
            let certs = read_certs(cert, "tls.cert_file").map_err(|error| errors.push(error));
            let key_der = read_key(key, "tls.key_file").map_err(|error| errors.push(error));
            match (certs, key_der) {
                (Ok(certs), Ok(key_der)) => CertifiedKey::from_der(certs, key_der, &provider)
                    .map_err(|error| {
                        errors.push(BuildError::field(
                            "tls.key_file",
                            format!(
                                "{}: does not go with tls.cert_file {}: {error}",
                                key.display(),
                                cert.display()
                            ),
                        ))
                    })
                    .ok(),
                _ => None,
            }
        }
        (Some(_), None) => {
            errors.push(BuildError::field(
                "tls.key_file",
                "is missing: tls.cert_file needs the private key of that certificate",
            ));
            None
        }
        (None, Some(_)) => {
            errors.push(BuildError::field(
                "tls.cert_file",
                "is missing: tls.key_file is set, but not the certificate it belongs to",
            ));
            None
        }
        (None, None) => None,
    };
    let server_name = match &options.server_name {
        Some(name) => ServerName::try_from(name.clone())
            .map_err(|_| {
                errors.push(BuildError::field(
                    "tls.server_name",
                    format!("{name:?} is not a DNS name or IP address"),
                ))
            })
            .ok(),
        None => None,
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ClientTls {
        provider,
        roots,
        client_auth,
        insecure_skip_verify: options.insecure_skip_verify,
        server_name,
    })
}

impl ClientTls {
    /// The client configuration (ALPN is set by the connector). Loads the system's
    /// certificate authorities when no `ca_file` is given, and fails when there are none.
    pub(crate) fn into_config(self) -> Result<ClientConfig, BuildError> {
        let builder = ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|error| BuildError::new(format!("TLS setup failed: {error}")))?;
        let builder = if self.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate {
                    algorithms: self.provider.signature_verification_algorithms,
                }))
        } else {
            builder.with_root_certificates(match self.roots {
                Some(roots) => roots,
                None => system_roots()?,
            })
        };
        Ok(match self.client_auth {
            Some(certified) => {
                builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)))
            }
            None => builder.with_no_client_auth(),
        })
    }
}

fn system_roots() -> Result<RootCertStore, BuildError> {
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
