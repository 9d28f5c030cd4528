//! TLS handshake failures in words an operator acts on.
//!
//! rustls reports what went wrong precisely ([`rustls::Error`]), but in the terms of the
//! TLS specification. These functions turn each case into what to do, from the point of
//! view of the side that logs it: a server whose client presented a bad certificate (or
//! refused the server's), or a client that refused the server's certificate (or whose own
//! was refused).

use std::fmt::Write as _;

use rustls::pki_types::UnixTime;
use rustls::{AlertDescription, CertificateError, Error};

/// Which end of the connection is describing the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A server checking client certificates against its client CA option (named here,
    /// e.g. `tls.client_ca_file`) and presenting its own certificate option (e.g.
    /// `tls.cert_file`).
    Server {
        /// The option that names the server's certificate.
        cert_option: &'static str,
        /// The option that names the CAs client certificates must be signed by.
        client_ca_option: &'static str,
    },
    /// A client that checks the server's certificate against its CA (named here, e.g.
    /// the kubeconfig's `certificate-authority`) and presents its own certificate.
    Client {
        /// What names the CA the client trusts.
        ca_option: &'static str,
        /// What names the client's certificate.
        cert_option: &'static str,
    },
}

/// The rustls error inside an I/O error from tokio-rustls or hyper, if there is one.
pub fn rustls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<Error>() {
            return Some(found);
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(found) = inner.downcast_ref::<Error>() {
                    return Some(found);
                }
            }
        }
        current = error.source();
    }
    None
}

/// What failed and what to do about it, for one rustls error seen from `side`.
pub fn explain(error: &Error, side: Side) -> String {
    match (error, side) {
        (
            Error::InvalidCertificate(cert),
            Side::Server {
                client_ca_option, ..
            },
        ) => explain_certificate(
            cert,
            "the client certificate",
            client_ca_option,
            "clientAuth",
        ),
        (Error::InvalidCertificate(cert), Side::Client { ca_option, .. }) => {
            explain_certificate(cert, "the server certificate", ca_option, "serverAuth")
        }
        (
            Error::NoCertificatesPresented,
            Side::Server {
                client_ca_option, ..
            },
        ) => format!(
            "the client presented no certificate, and {client_ca_option} requires one: set \
             client-certificate and client-key in the kubeconfig"
        ),
        (Error::NoCertificatesPresented, Side::Client { .. }) => {
            "the server presented no certificate".to_owned()
        }
        (Error::AlertReceived(alert), Side::Server { cert_option, .. }) => {
            explain_alert_from_client(*alert, cert_option)
        }
        (Error::AlertReceived(alert), Side::Client { cert_option, .. }) => {
            explain_alert_from_server(*alert, cert_option)
        }
        (Error::InvalidMessage(_) | Error::InappropriateMessage { .. }, Side::Server { .. }) => {
            format!(
                "the client did not speak TLS ({error}): a plain-HTTP client? The kubeconfig's \
                 server URL must start with https://"
            )
        }
        (Error::InvalidMessage(_) | Error::InappropriateMessage { .. }, Side::Client { .. }) => {
            format!(
                "the server did not answer in TLS ({error}): is it a plain-HTTP listener \
                 (allow_plaintext)? Then use http:// in the server URL"
            )
        }
        (Error::PeerIncompatible(why), _) => format!(
            "the two ends have no TLS version, cipher suite or signature scheme in common \
             ({why:?}): auditflow speaks TLS 1.2 and 1.3"
        ),
        (Error::InconsistentKeys(_), Side::Server { cert_option, .. })
        | (Error::InconsistentKeys(_), Side::Client { cert_option, .. }) => format!(
            "the private key does not belong to the certificate in {cert_option}: give the key \
             the certificate was issued for"
        ),
        _ => format!("TLS failed: {error}"),
    }
}

fn explain_certificate(
    error: &CertificateError,
    whose: &str,
    ca_option: &str,
    purpose: &str,
) -> String {
    match error {
        CertificateError::ExpiredContext { time, not_after } => format!(
            "{whose} expired at {} (now {}): issue a new one",
            utc(*not_after),
            utc(*time)
        ),
        CertificateError::Expired => format!("{whose} has expired: issue a new one"),
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "{whose} is not valid before {} (now {}): check the clocks of both hosts, or wait",
            utc(*not_before),
            utc(*time)
        ),
        CertificateError::NotValidYet => {
            format!("{whose} is not valid yet: check the clocks of both hosts, or wait")
        }
        CertificateError::UnknownIssuer => format!(
            "{whose} is not signed by a CA in {ca_option} (wrong CA): sign it with that CA, or \
             put the CA that signed it in {ca_option}"
        ),
        CertificateError::BadSignature => format!(
            "{whose}'s signature does not verify against its issuer in {ca_option}: it was \
             signed by a different key than that CA's"
        ),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            let mut text = format!(
                "{whose} is not issued for this use (wrong key usage): reissue it with \
                 extendedKeyUsage={purpose}"
            );
            if let CertificateError::InvalidPurposeContext { presented, .. } = error {
                let _ = write!(text, " (it has {presented:?})");
            }
            text
        }
        CertificateError::NotValidForName => format!(
            "{whose} does not name the host in the server URL (name mismatch): reissue it \
             with a subjectAltName for that host"
        ),
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => format!(
            "{whose} is for {} but the server URL names {expected:?} (name mismatch): reissue \
             it with a subjectAltName for {expected:?}, or use a name it lists in the URL",
            if presented.is_empty() {
                "no name at all (no subjectAltName)".to_owned()
            } else {
                presented.join(", ")
            }
        ),
        CertificateError::BadEncoding => {
            format!("{whose} is not a valid X.509 certificate (bad DER encoding)")
        }
        CertificateError::Revoked => format!("{whose} has been revoked"),
        CertificateError::UnhandledCriticalExtension => format!(
            "{whose} has a critical extension this verifier does not understand: reissue it \
             without it"
        ),
        CertificateError::Other(other) => match other.0.downcast_ref::<webpki::Error>() {
            Some(webpki::Error::UnsupportedCertVersion) => format!(
                "{whose} is X.509 v1; reissue it with v3 extensions, e.g. \
                 `extendedKeyUsage={purpose}` (openssl x509 -req ... -extfile with \
                 `extendedKeyUsage={purpose}`)"
            ),
            Some(webpki::Error::CaUsedAsEndEntity) => format!(
                "{whose} is a CA certificate (basicConstraints CA:TRUE), not an end-entity one: \
                 issue a leaf certificate signed by that CA"
            ),
            Some(webpki::Error::EndEntityUsedAsCa) => format!(
                "{whose}'s issuer in {ca_option} is not a CA certificate (basicConstraints \
                 CA:FALSE)"
            ),
            Some(other) => format!("{whose} was refused: {other:?}"),
            None => format!("{whose} was refused: {}", other.0),
        },
        other => format!("{whose} was refused: {other:?}"),
    }
}

/// The client refused our certificate, or gave up.
fn explain_alert_from_client(alert: AlertDescription, cert_option: &str) -> String {
    match alert {
        AlertDescription::UnknownCA => format!(
            "the client does not trust {cert_option} (alert unknown_ca, wrong CA): the \
             kubeconfig's certificate-authority must be the CA that signed {cert_option}"
        ),
        AlertDescription::CertificateExpired => format!(
            "the client says {cert_option} has expired (alert certificate_expired): renew it"
        ),
        AlertDescription::BadCertificate | AlertDescription::CertificateUnknown => format!(
            "the client refused {cert_option} (alert {alert:?}): the kubeconfig's \
             certificate-authority did not sign it, it has expired, or it does not name the \
             host of the kubeconfig's server URL"
        ),
        AlertDescription::UnsupportedCertificate => format!(
            "the client cannot use {cert_option} (alert unsupported_certificate): reissue it \
             as X.509 v3 with extendedKeyUsage=serverAuth"
        ),
        AlertDescription::HandshakeFailure | AlertDescription::ProtocolVersion => {
            format!("the client found no TLS version or cipher suite in common (alert {alert:?})")
        }
        other => format!("the client ended the handshake (alert {other:?})"),
    }
}

/// The server refused our certificate, or gave up.
fn explain_alert_from_server(alert: AlertDescription, cert_option: &str) -> String {
    match alert {
        AlertDescription::CertificateRequired => format!(
            "the server requires a client certificate (alert certificate_required): set \
             {cert_option}"
        ),
        AlertDescription::UnknownCA
        | AlertDescription::BadCertificate
        | AlertDescription::CertificateUnknown
        | AlertDescription::CertificateExpired
        | AlertDescription::UnsupportedCertificate
        | AlertDescription::DecryptError => format!(
            "the server refused the client certificate in {cert_option} (alert {alert:?}): \
             its log says why (not signed by tls.client_ca_file, expired, X.509 v1, or not \
             for clientAuth)"
        ),
        AlertDescription::HandshakeFailure | AlertDescription::ProtocolVersion => {
            format!("the server found no TLS version or cipher suite in common (alert {alert:?})")
        }
        other => format!("the server ended the handshake (alert {other:?})"),
    }
}

/// `2026-12-01T00:00:00Z`.
pub fn utc(time: UnixTime) -> String {
    let secs = time.as_secs();
    utc_from_unix(secs)
}

/// An RFC 3339 UTC timestamp for seconds since the epoch.
pub fn utc_from_unix(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: Side = Side::Server {
        cert_option: "tls.cert_file",
        client_ca_option: "tls.client_ca_file",
    };

    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(utc_from_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_from_unix(1_798_761_600), "2027-01-01T00:00:00Z");
        assert_eq!(utc_from_unix(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn a_v1_client_certificate_is_named_as_such() {
        let error = Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
            std::sync::Arc::new(webpki::Error::UnsupportedCertVersion),
        )));
        let text = explain(&error, SERVER);
        assert!(text.starts_with("the client certificate is X.509 v1; reissue it with v3 extensions, e.g. `extendedKeyUsage=clientAuth`"), "{text}");
    }

    #[test]
    fn a_wrapped_rustls_error_is_found() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let found = rustls_error(&io).expect("inside the io error");
        assert!(explain(found, SERVER).contains("not signed by a CA in tls.client_ca_file"));
    }
}
