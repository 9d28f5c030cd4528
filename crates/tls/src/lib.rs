//! Loading the PEM files named by a plugin's `tls` options: certificate chains, private
//! keys, and the certificate authorities to trust.
//!
//! # Layout
//! - [`read_certs`]: a certificate chain (or a CA bundle) from a PEM file.
//! - [`read_key`]: the first private key (PKCS#8, PKCS#1 or SEC1) from a PEM file.
//! - [`root_store`]: a [`RootCertStore`] holding every certificate of a CA file.
//! - [`Loaded`]: what was read, or the error for a file this machine does not have.
//! - [`explain`]: rustls handshake errors in words an operator acts on.
//! - [`inspect`]: checks of a server's certificate and key files for `validate`.
//!
//! # The one design decision
//! Every function takes the option that named the file (`tls.ca_file`) and fails with a
//! [`BuildError`] on that field whose message starts with the path, so that an operator
//! sees which option and which file to fix; the plugins' rustls configurations (client
//! and server differ too much to share) are built from these pieces.

pub mod explain;
pub mod inspect;

use std::path::Path;

use auditflow_core::BuildError;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// Every certificate in the PEM file at `path`, in file order (leaf first for a chain);
/// none is an error.
pub fn read_certs(path: &Path, option: &str) -> Result<Vec<CertificateDer<'static>>, BuildError> {
    let pem = read(path, option)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid_pem(path, option, error))?;
    if certs.is_empty() {
        return Err(BuildError::field(
            option,
            format!(
                "{} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

/// The first private key in the PEM file at `path`; none is an error.
pub fn read_key(path: &Path, option: &str) -> Result<PrivateKeyDer<'static>, BuildError> {
    let pem = read(path, option)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|error| invalid_pem(path, option, error))?
        .ok_or_else(|| {
            BuildError::field(
                option,
                format!(
                    "{} holds no private key (expected a PEM `PRIVATE KEY` block)",
                    path.display()
                ),
            )
        })
}

/// A root store trusting every certificate in the CA file at `path`.
pub fn root_store(path: &Path, option: &str) -> Result<RootCertStore, BuildError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path, option)? {
        roots.add(cert).map_err(|error| {
            BuildError::field(
                option,
                format!("{}: not a usable CA certificate: {error}", path.display()),
            )
        })?;
    }
    Ok(roots)
}

/// A file a plugin's options name, read when the pipeline loads.
pub enum Loaded<T> {
    /// What the file holds, read and checked.
    Read(T),
    /// The file is not on this machine. `auditflow validate` passes over it, so that a
    /// pipeline validates where its secrets are not (CI); `run` fails with this error,
    /// which names the option and the file.
    Absent(BuildError),
}

impl<T> Loaded<T> {
    /// What reading gave, for a compile step that goes on to the next file: the value, or
    /// `None` with the reason noted, the problems in `problems` and an absent file's error
    /// in `absent` (the first one only, as `run` reports one).
    pub fn note(
        found: Result<Loaded<T>, Vec<BuildError>>,
        problems: &mut Vec<BuildError>,
        absent: &mut Option<BuildError>,
    ) -> Option<T> {
        match found {
            Ok(Loaded::Read(value)) => Some(value),
            Ok(Loaded::Absent(error)) => {
                absent.get_or_insert(error);
                None
            }
            Err(found) => {
                problems.extend(found);
                None
            }
        }
    }
}

fn read(path: &Path, option: &str) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|error| {
        BuildError::field(option, format!("cannot read {}: {error}", path.display()))
    })
}

fn invalid_pem(path: &Path, option: &str, error: std::io::Error) -> BuildError {
    BuildError::field(option, format!("{}: invalid PEM: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, contents: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn reads_a_chain_a_key_and_a_ca_store() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(["ca.test".to_owned()]).unwrap();
        let leaf = rcgen::generate_simple_self_signed(["leaf.test".to_owned()]).unwrap();
        let chain = format!("{}{}", leaf.cert.pem(), ca.cert.pem());
        let chain = write(dir.path(), "chain.pem", &chain);
        let key = write(dir.path(), "key.pem", &leaf.signing_key.serialize_pem());
        let ca_file = write(dir.path(), "ca.pem", &ca.cert.pem());

        let certs = read_certs(&chain, "tls.cert_file").unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0].as_ref(), leaf.cert.der().as_ref());
        assert_eq!(certs[1].as_ref(), ca.cert.der().as_ref());
        let read = read_key(&key, "tls.key_file").unwrap();
        assert_eq!(
            read.secret_der(),
            leaf.signing_key.serialize_der().as_slice()
        );
        assert_eq!(root_store(&ca_file, "tls.ca_file").unwrap().len(), 1);
    }

    #[test]
    fn errors_name_the_option_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = read_certs(&missing, "tls.ca_file").unwrap_err();
        assert_eq!(error.field.as_deref(), Some("tls.ca_file"));
        assert!(
            error
                .message
                .starts_with(&format!("cannot read {}: ", missing.display())),
            "{}",
            error.message
        );

        let key = rcgen::KeyPair::generate().unwrap();
        let key_only = write(dir.path(), "key.pem", &key.serialize_pem());
        let error = read_certs(&key_only, "tls.cert_file").unwrap_err();
        assert_eq!(error.field.as_deref(), Some("tls.cert_file"));
        assert_eq!(
            error.message,
            format!(
                "{} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)",
                key_only.display()
            )
        );

        let cert = rcgen::generate_simple_self_signed(["x.test".to_owned()]).unwrap();
        let cert_only = write(dir.path(), "cert.pem", &cert.cert.pem());
        let error = read_key(&cert_only, "tls.key_file").unwrap_err();
        assert_eq!(error.field.as_deref(), Some("tls.key_file"));
        assert_eq!(
            error.message,
            format!(
                "{} holds no private key (expected a PEM `PRIVATE KEY` block)",
                cert_only.display()
            )
        );

        let broken = write(
            dir.path(),
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        );
        let error = root_store(&broken, "tls.client_ca_file").unwrap_err();
        assert_eq!(error.field.as_deref(), Some("tls.client_ca_file"));
        assert!(
            error
                .message
                .starts_with(&format!("{}: invalid PEM: ", broken.display())),
            "{}",
            error.message
        );
    }
}
