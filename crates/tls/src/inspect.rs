//! A server's own certificate and key files, read once and checked before anything
//! listens: what a TLS client would refuse later, found by `auditflow validate`.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::SystemTime;

use auditflow_core::BuildError;
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::explain::utc_from_unix;
use crate::{read_certs, read_key, Loaded};

/// A server certificate (`cert_option`) and its key (`key_option`), read once, for a server
/// listening on `listen`, at time `now`; or every problem with them: the leaf certificate's
/// X.509 version, its validity period, that the key belongs to it, and that its
/// subjectAltNames can cover the listen address. Files that cannot be read give their one
/// error; a file that does not exist is [`Loaded::Absent`], left to the build step, so that
/// a pipeline validates on a machine without its secrets (CI) and `run` still names the
/// missing file.
pub fn load_server_files(
    cert_file: &Path,
    cert_option: &str,
    key_file: &Path,
    key_option: &str,
    listen: SocketAddr,
    now: SystemTime,
) -> Result<Loaded<CertifiedKey>, Vec<BuildError>> {
    let mut problems = Vec::new();
    let certs = match read_certs(cert_file, cert_option) {
        Err(error) if !cert_file.exists() => return Ok(Loaded::Absent(error)),
        Ok(certs) => Some(certs),
        Err(error) => {
            problems.push(error);
            None
        }
    };
    let mut absent = None;
    let key = match read_key(key_file, key_option) {
        Err(error) if !key_file.exists() => {
            absent = Some(error);
            None
        }
        Ok(key) => Some(key),
        Err(error) => {
            problems.push(error);
            None
        }
    };
    let Some(certs) = certs else {
        return Err(problems);
    };
    let path = cert_file.display();
    let leaf = match X509Certificate::from_der(certs[0].as_ref()) {
        Ok((_, leaf)) => leaf,
        Err(error) => {
            problems.push(BuildError::field(
                cert_option,
                format!("{path}: the first certificate is not valid X.509: {error}"),
            ));
            return Err(problems);
        }
    };
    let version = leaf.version().0 + 1;
    if version != 3 {
        problems.push(BuildError::field(
            cert_option,
            format!(
                "{path}: the certificate is X.509 v{version}; TLS clients (kube-apiserver's Go \
                 client, rustls) need v3 with a subjectAltName: reissue it with v3 extensions, \
                 e.g. `subjectAltName=DNS:<host>` and `extendedKeyUsage=serverAuth`"
            ),
        ));
    }
    let now_secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64);
    let not_before = leaf.validity().not_before.timestamp();
    let not_after = leaf.validity().not_after.timestamp();
    if now_secs > not_after {
        problems.push(BuildError::field(
            cert_option,
            format!(
                "{path}: the certificate expired at {}: issue a new one",
                utc_from_unix(not_after.max(0) as u64)
            ),
        ));
    } else if now_secs < not_before {
        problems.push(BuildError::field(
            cert_option,
            format!(
                "{path}: the certificate is not valid before {}: check this host's clock, or \
                 wait",
                utc_from_unix(not_before.max(0) as u64)
            ),
        ));
    }
    // Found before the chain moves into the identity (`leaf` borrows it), reported after
    // the key.
    let uncovered = (version == 3)
        .then(|| san_problem(&leaf, listen.ip()))
        .flatten();
    let mut identity = None;
    if let Some(key) = key {
        let provider = rustls::crypto::ring::default_provider();
        match CertifiedKey::from_der(certs, key, &provider) {
            Ok(certified) => identity = Some(certified),
            Err(error) => problems.push(BuildError::field(
                key_option,
                format!(
                    "{} is not the private key of the certificate in {path} ({error}): give \
                     the key the certificate was issued for",
                    key_file.display()
                ),
            )),
        }
    }
    if let Some(problem) = uncovered {
        problems.push(BuildError::field(cert_option, format!("{path}: {problem}")));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    match (identity, absent) {
        (Some(identity), _) => Ok(Loaded::Read(identity)),
        (None, Some(absent)) => Ok(Loaded::Absent(absent)),
        (None, None) => unreachable!("a key that was read is either matched or a problem"),
    }
}

/// Why no client could reach `listen` by a name the certificate lists, if none could.
fn san_problem(leaf: &X509Certificate<'_>, listen: IpAddr) -> Option<String> {
    let names: Vec<GeneralName<'_>> = match leaf.subject_alternative_name() {
        Ok(Some(san)) => san.value.general_names.clone(),
        Ok(None) => Vec::new(),
        Err(error) => return Some(format!("its subjectAltName cannot be read: {error}")),
    };
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for name in &names {
        match name {
            GeneralName::DNSName(name) => dns.push((*name).to_owned()),
            GeneralName::IPAddress(bytes) => {
                if let Some(ip) = ip_from_bytes(bytes) {
                    ips.push(ip);
                }
            }
            _ => {}
        }
    }
    if dns.is_empty() && ips.is_empty() {
        return Some(
            "the certificate has no subjectAltName (DNS or IP): Go clients such as \
             kube-apiserver ignore the Common Name and refuse it; reissue it with \
             `subjectAltName=DNS:<host>` or `IP:<address>`"
                .to_owned(),
        );
    }
    // A wildcard address is reached by whatever name resolves to the host; a DNS name may
    // resolve to a specific one. Only a specific address with no DNS name to reach it by is
    // certainly not covered.
    if listen.is_unspecified() || !dns.is_empty() || ips.contains(&listen) {
        return None;
    }
    let listed: Vec<String> = ips.iter().map(ToString::to_string).collect();
    Some(format!(
        "the source listens on {listen}, but the certificate names only {}: a client that \
         connects to https://{listen} refuses it; add `IP:{listen}` (or a DNS name) to its \
         subjectAltName",
        listed.join(", ")
    ))
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};
    use std::time::Duration;

    fn write(dir: &Path, name: &str, contents: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn listen(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_good_certificate_has_no_problem_and_a_bad_one_each_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(3600)).into();
        let cert = params.self_signed(&key).unwrap();
        let cert_file = write(dir.path(), "cert.pem", &cert.pem());
        let key_file = write(dir.path(), "key.pem", &key.serialize_pem());
        let load = |cert: &Path, key: &Path, address: &str, at: SystemTime| {
            load_server_files(
                cert,
                "tls.cert_file",
                key,
                "tls.key_file",
                listen(address),
                at,
            )
        };
        let check = |cert: &Path, key: &Path, address: &str, at: SystemTime| {
            load(cert, key, address, at)
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|problem| format!("{}: {}", problem.field.unwrap(), problem.message))
                .collect::<Vec<_>>()
        };
        assert!(check(&cert_file, &key_file, "127.0.0.1:8443", now).is_empty());
        assert!(check(&cert_file, &key_file, "0.0.0.0:8443", now).is_empty());
        assert!(matches!(
            load(&cert_file, &key_file, "127.0.0.1:8443", now),
            Ok(Loaded::Read(_))
        ));
        // Files that are not there are the build step's to report.
        let absent = dir.path().join("absent.pem");
        for (cert, key) in [(&absent, &key_file), (&cert_file, &absent)] {
            match load(cert, key, "127.0.0.1:8443", now) {
                Ok(Loaded::Absent(error)) => assert!(
                    error
                        .message
                        .starts_with(&format!("cannot read {}: ", absent.display())),
                    "{error:?}"
                ),
                _ => panic!("{} is absent", absent.display()),
            }
        }

        let later = now + Duration::from_secs(7200);
        let expired = check(&cert_file, &key_file, "127.0.0.1:8443", later);
        assert_eq!(expired.len(), 1, "{expired:?}");
        assert!(
            expired[0].starts_with("tls.cert_file: ")
                && expired[0].contains("the certificate expired at "),
            "{expired:?}"
        );

        let earlier = now - Duration::from_secs(7200);
        let early = check(&cert_file, &key_file, "127.0.0.1:8443", earlier);
        assert!(early[0].contains("is not valid before"), "{early:?}");

        let other_key = write(
            dir.path(),
            "other.pem",
            &KeyPair::generate().unwrap().serialize_pem(),
        );
        let mismatch = check(&cert_file, &other_key, "127.0.0.1:8443", now);
        assert_eq!(mismatch.len(), 1, "{mismatch:?}");
        assert!(
            mismatch[0].starts_with(&format!(
                "tls.key_file: {} is not the private key of the certificate in",
                other_key.display()
            )),
            "{mismatch:?}"
        );

        let ip_only = CertificateParams::new(vec!["10.0.0.5".into()]).unwrap();
        let ip_only = write(
            dir.path(),
            "ip.pem",
            &ip_only.self_signed(&key).unwrap().pem(),
        );
        let uncovered = check(&ip_only, &key_file, "127.0.0.1:8443", now);
        assert_eq!(uncovered.len(), 1, "{uncovered:?}");
        assert!(
            uncovered[0].contains("listens on 127.0.0.1, but the certificate names only 10.0.0.5"),
            "{uncovered:?}"
        );
    }
}
