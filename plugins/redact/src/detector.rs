//! The detectors: their names, which are on, the ones that read inside a string, and how
//! a secret is replaced.

use base64::Engine;
use hmac::{Hmac, Mac};
use regex::Regex;
use sha2::Sha256;

use crate::prefilter::Prefilter;

/// A built-in detector. The discriminant is its index in [`Detector::ALL`] and in the
/// list of detector names (custom patterns follow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detector {
    TokenReview,
    TokenRequest,
    SecretData,
    Jwt,
    Bearer,
    BootstrapToken,
    PrivateKey,
    UrlCredentials,
    /// The `fields` option.
    Fields,
}

impl Detector {
    pub(crate) const ALL: [Detector; 9] = [
        Detector::TokenReview,
        Detector::TokenRequest,
        Detector::SecretData,
        Detector::Jwt,
        Detector::Bearer,
        Detector::BootstrapToken,
        Detector::PrivateKey,
        Detector::UrlCredentials,
        Detector::Fields,
    ];

    /// The name in `detectors`, in the annotation and in the metric label.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Detector::TokenReview => "token_review",
            Detector::TokenRequest => "token_request",
            Detector::SecretData => "secret_data",
            Detector::Jwt => "jwt",
            Detector::Bearer => "bearer",
            Detector::BootstrapToken => "bootstrap_token",
            Detector::PrivateKey => "private_key",
            Detector::UrlCredentials => "url_credentials",
            Detector::Fields => "fields",
        }
    }

    pub(crate) fn id(self) -> usize {
        self as usize
    }
}

/// Which built-in detectors are on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Enabled([bool; 9]);

impl Enabled {
    pub(crate) fn all() -> Enabled {
        Enabled([true; 9])
    }

    #[cfg(test)]
    pub(crate) fn none() -> Enabled {
        Enabled([false; 9])
    }

    pub(crate) fn set(&mut self, detector: Detector, on: bool) {
        self.0[detector.id()] = on;
    }

    pub(crate) fn has(&self, detector: Detector) -> bool {
        self.0[detector.id()]
    }

    pub(crate) fn any(&self, detectors: &[Detector]) -> bool {
        detectors.iter().any(|detector| self.has(*detector))
    }
}

/// Where a secret sits inside a string, and which detector found it.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    detector: usize,
}

/// A custom pattern: its detector id, and the capture group holding the secret (`secret`
/// when the pattern names one, else the whole match).
#[derive(Debug, Clone)]
pub(crate) struct CustomPattern {
    pub(crate) id: usize,
    pub(crate) regex: Regex,
    pub(crate) group: Option<usize>,
}

/// The detectors that look inside string values.
#[derive(Debug, Clone)]
pub(crate) struct TextDetectors {
    prefilter: Prefilter,
    pem: Option<Regex>,
    kubeconfig: Option<Regex>,
    jwt: Option<Regex>,
    bearer: Option<Regex>,
    basic: Option<Regex>,
    bootstrap_token: Option<Regex>,
    url_credentials: Option<Regex>,
    custom: Vec<CustomPattern>,
}

fn regex(on: bool, source: &str) -> Option<Regex> {
    on.then(|| Regex::new(source).expect("built-in detector regexes are valid"))
}

impl TextDetectors {
    pub(crate) fn new(
        enabled: &Enabled,
        prefilter: Prefilter,
        custom: Vec<CustomPattern>,
    ) -> TextDetectors {
        let private_key = enabled.has(Detector::PrivateKey);
        let bearer = enabled.has(Detector::Bearer);
        TextDetectors {
            prefilter,
            // The body of the block; the BEGIN/END lines stay, so a reader still sees
            // what was there. A block cut short is redacted to the end of the string.
            pem: regex(
                private_key,
                r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----([\s\S]*?)(?:-----END[A-Z0-9 ]*PRIVATE KEY-----|\z)",
            ),
            // kubeconfig as YAML (`  token: abc`, `- client-key-data: LS0t`) or as JSON
            // inside a string (`{"token":"abc"}`), also encoded once more (`\n  token:`,
            // `{\"token\":\"abc\"}`).
            kubeconfig: regex(
                private_key,
                r#"(?m)(?:^[ \t]*(?:-[ \t]+)?|\\[nt][ \t]*(?:-[ \t]+)?|["{,][ \t]*)\\?"?(?:client-key-data|token)\\?"?[ \t]*:[ \t]*\\?["']?([^\s"'\\,}]+)"#,
            ),
            jwt: regex(
                enabled.has(Detector::Jwt),
                r"eyJ[A-Za-z0-9_=+/-]+\.[A-Za-z0-9_=+/-]+\.[A-Za-z0-9_=+/-]*",
            ),
            bearer: regex(bearer, r"(?:[Bb]earer|BEARER)[ \t]+([A-Za-z0-9._~+/=-]+)"),
            basic: regex(bearer, r"(?:[Bb]asic|BASIC)[ \t]+([A-Za-z0-9+/]+={0,2})"),
            bootstrap_token: regex(
                enabled.has(Detector::BootstrapToken),
                r"(?-u:\b)[a-z0-9]{6}\.[a-z0-9]{16}(?-u:\b)",
            ),
            // RFC 3986 userinfo: the password ends at `@` and cannot hold `/ ? #`
            // unescaped.
            url_credentials: regex(
                enabled.has(Detector::UrlCredentials),
                r"[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:]*:([^\s/?#@]+)@",
            ),
            custom,
        }
    }

    pub(crate) fn prefilter(&self) -> &Prefilter {
        &self.prefilter
    }

    /// The string with every secret in it replaced, and the detectors that found them
    /// (one entry per secret); `None` when there is none.
    pub(crate) fn redact(&self, text: &str, replacer: &Replacer) -> Option<(String, Vec<usize>)> {
        let mut spans = Vec::new();
        if self.prefilter.text_hit(text) {
            self.built_in_spans(text, &mut spans);
        }
        for pattern in &self.custom {
            match pattern.group {
                Some(group) => {
                    spans.extend(pattern.regex.captures_iter(text).filter_map(|captures| {
                        let found = captures.get(group)?;
                        Some(Span {
                            start: found.start(),
                            end: found.end(),
                            detector: pattern.id,
                        })
                    }))
                }
                None => spans.extend(pattern.regex.find_iter(text).map(|found| Span {
                    start: found.start(),
                    end: found.end(),
                    detector: pattern.id,
                })),
            }
        }
        spans.retain(|span| span.end > span.start);
        if spans.is_empty() {
            return None;
        }
        // Overlapping finds merge into one replacement (their union, so no part of
        // either survives), credited to the one that starts first; on a tie, to the
        // detector that knows the context (`Bearer <a JWT>` is a bearer credential).
        spans.sort_by_key(|span| (span.start, precedence(span.detector)));
        let mut merged: Vec<Span> = Vec::with_capacity(spans.len());
        for span in spans {
            match merged.last_mut() {
                Some(last) if span.start < last.end => last.end = last.end.max(span.end),
                _ => merged.push(span),
            }
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for span in &merged {
            out.push_str(&text[at..span.start]);
            replacer.push(&text[span.start..span.end], &mut out);
            at = span.end;
        }
        out.push_str(&text[at..]);
        Some((out, merged.iter().map(|span| span.detector).collect()))
    }

    fn built_in_spans(&self, text: &str, spans: &mut Vec<Span>) {
        let mut group_spans =
            |regex: &Option<Regex>, detector: Detector, keep: &dyn Fn(&str, &str) -> bool| {
                let Some(regex) = regex else { return };
                for captures in regex.captures_iter(text) {
                    let (Some(whole), Some(secret)) = (captures.get(0), captures.get(1)) else {
                        continue;
                    };
                    if keep(secret.as_str(), &text[whole.end()..]) {
                        spans.push(Span {
                            start: secret.start(),
                            end: secret.end(),
                            detector: detector.id(),
                        });
                    }
                }
            };
        group_spans(&self.pem, Detector::PrivateKey, &|secret, _| {
            !secret.trim().is_empty()
        });
        group_spans(&self.kubeconfig, Detector::PrivateKey, &|_, _| true);
        group_spans(&self.bearer, Detector::Bearer, &looks_like_bearer_token);
        group_spans(&self.basic, Detector::Bearer, &|secret, _| {
            looks_like_basic_credentials(secret)
        });
        group_spans(&self.url_credentials, Detector::UrlCredentials, &|_, _| {
            true
        });
        for (regex, detector) in [
            (&self.jwt, Detector::Jwt),
            (&self.bootstrap_token, Detector::BootstrapToken),
        ] {
            if let Some(regex) = regex {
                spans.extend(regex.find_iter(text).map(|found| Span {
                    start: found.start(),
                    end: found.end(),
                    detector: detector.id(),
                }));
            }
        }
    }
}

/// Which detector a secret found by several is credited to (lower first); custom
/// patterns come last.
fn precedence(detector: usize) -> usize {
    const ORDER: [Detector; 6] = [
        Detector::PrivateKey,
        Detector::Bearer,
        Detector::UrlCredentials,
        Detector::Jwt,
        Detector::BootstrapToken,
        Detector::Fields,
    ];
    ORDER
        .iter()
        .position(|known| known.id() == detector)
        .unwrap_or(ORDER.len() + detector)
}

/// `Bearer <token>`, but not `Bearer realm="..."` nor prose (`a Bearer authentication`):
/// at least 6 characters with a digit or punctuation, or 16 letters. A value this
/// transform already hashed (`Bearer hmac-sha256:...`) is left alone.
fn looks_like_bearer_token(token: &str, after: &str) -> bool {
    if token == "hmac-sha256" && after.starts_with(':') {
        return false;
    }
    // An auth-param (`Bearer realm="kubernetes"`), not a token.
    if token.ends_with('=') && after.starts_with('"') {
        return false;
    }
    token.len() >= 16 || (token.len() >= 6 && token.bytes().any(|byte| !byte.is_ascii_alphabetic()))
}

/// `Basic <base64>` whose payload decodes to `user:password`, so that `basic auth` in a
/// message is not taken for a credential.
fn looks_like_basic_credentials(encoded: &str) -> bool {
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
    ];
    let decodes_to_pair = |text: &str| {
        engines.iter().any(|engine| {
            engine
                .decode(text)
                .is_ok_and(|decoded| decoded.contains(&b':'))
        })
    };
    // Also when glued to a following word (`dXNlcjpwYXNzx`): the whole run goes.
    let whole_quads = &encoded[..encoded.len() - encoded.len() % 4];
    decodes_to_pair(encoded) || decodes_to_pair(whole_quads)
}

/// What a secret becomes.
#[derive(Clone)]
pub(crate) enum Replacer {
    /// `[REDACTED]`.
    Mask,
    /// `hmac-sha256:<first 16 hex digits>`, keyed, so equal secrets correlate without
    /// being readable or guessable from a dictionary.
    Hash(Hmac<Sha256>),
}

pub(crate) const MASK: &str = "[REDACTED]";

impl Replacer {
    pub(crate) fn hash(key: &[u8]) -> Replacer {
        Replacer::Hash(Hmac::new_from_slice(key).expect("HMAC takes keys of any length"))
    }

    /// Appends the replacement of `secret` to `out`.
    pub(crate) fn push(&self, secret: &str, out: &mut String) {
        match self {
            Replacer::Mask => out.push_str(MASK),
            Replacer::Hash(keyed) => {
                let mut mac = keyed.clone();
                mac.update(secret.as_bytes());
                let digest = mac.finalize().into_bytes();
                out.push_str("hmac-sha256:");
                for byte in &digest[..8] {
                    out.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
                    out.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
                }
            }
        }
    }

    pub(crate) fn replace(&self, secret: &str) -> String {
        let mut out = String::with_capacity(28);
        self.push(secret, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detectors() -> TextDetectors {
        let enabled = Enabled::all();
        TextDetectors::new(&enabled, Prefilter::new(&enabled, &[]), Vec::new())
    }

    fn redacted(text: &str) -> Option<String> {
        detectors()
            .redact(text, &Replacer::Mask)
            .map(|(text, _)| text)
    }

    #[test]
    fn only_the_secret_part_of_a_string_is_replaced() {
        let cases = [
            (
                "Authorization: Bearer abc123def456",
                "Authorization: Bearer [REDACTED]",
            ),
            ("Basic dXNlcjpwYXNz", "Basic [REDACTED]"),
            (
                "join --token abcdef.0123456789abcdef now",
                "join --token [REDACTED] now",
            ),
            (
                "redis://:hunter2@cache:6379/0",
                "redis://:[REDACTED]@cache:6379/0",
            ),
            (
                "https://bob:s3cr%40t@git.example.com/x",
                "https://bob:[REDACTED]@git.example.com/x",
            ),
            (
                "t=eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln;",
                "t=[REDACTED];",
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----\n",
                "-----BEGIN RSA PRIVATE KEY-----[REDACTED]-----END RSA PRIVATE KEY-----\n",
            ),
            (
                "users:\n- name: a\n  user:\n    token: s3cr3t\n",
                "users:\n- name: a\n  user:\n    token: [REDACTED]\n",
            ),
            (
                "{\"client-key-data\":\"LS0tLS1\"}",
                "{\"client-key-data\":\"[REDACTED]\"}",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(redacted(text).as_deref(), Some(expected), "{text}");
        }
    }

    #[test]
    fn strings_without_secrets_are_left_alone() {
        for text in [
            "Bearer realm=\"kubernetes\"",
            "a Bearer authentication scheme",
            "basic auth is disabled",
            "https://example.com/a@b",
            "kube-apiserver/v1.32.0 (linux/amd64) kubernetes/cd13ec4",
            "2026-11-23T08:24:13.385382Z",
            "Bearer [REDACTED]",
            "{\"path\":\"token\"}",
        ] {
            assert_eq!(redacted(text), None, "{text}");
        }
    }

    #[test]
    fn hashing_is_keyed_and_stable() {
        let a = Replacer::hash(b"k1");
        assert_eq!(a.replace("tok"), a.replace("tok"));
        assert_ne!(a.replace("tok"), Replacer::hash(b"k2").replace("tok"));
        let hashed = a.replace("tok");
        assert!(hashed.starts_with("hmac-sha256:"));
        assert_eq!(hashed.len(), "hmac-sha256:".len() + 16);
        let text = format!("Bearer {hashed}");
        assert_eq!(detectors().redact(&text, &a), None);
    }
}
