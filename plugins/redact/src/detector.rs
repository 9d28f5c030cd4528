//! The detectors: their names, which are on, the ones that read inside a string, and how
//! a secret is replaced.

use base64::Engine;
use hmac::{Hmac, Mac};
use regex::Regex;
use sha2::Sha256;

use crate::credential::CredentialNames;
use crate::prefilter::Prefilter;

/// Well-known credential formats, from the vendors' published descriptions (sources in
/// docs/redact.md). Each starts at a word boundary, so that the tail of a longer word
/// is not taken for a prefix; AWS key ids are exactly 20 characters.
const KNOWN_TOKENS: &str = concat!(
    r"(?-u:\b)(?:",
    r"gh[pousr]_[A-Za-z0-9]{36,255}",
    r"|github_pat_[A-Za-z0-9_]{22,255}",
    r"|glpat-[A-Za-z0-9_.-]{20,}",
    r"|xox[abpr]-[A-Za-z0-9-]{10,}",
    r"|(?:AKIA|ASIA)[A-Z0-9]{16}(?-u:\b)",
    r"|AIza[A-Za-z0-9_-]{35}",
    r"|[sr]k_live_[A-Za-z0-9]{16,}",
    r")",
);

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
    EnvSecret,
    CliSecret,
    KnownTokens,
    /// The `fields` option.
    Fields,
}

impl Detector {
    pub(crate) const ALL: [Detector; 12] = [
        Detector::TokenReview,
        Detector::TokenRequest,
        Detector::SecretData,
        Detector::Jwt,
        Detector::Bearer,
        Detector::BootstrapToken,
        Detector::PrivateKey,
        Detector::UrlCredentials,
        Detector::EnvSecret,
        Detector::CliSecret,
        Detector::KnownTokens,
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
            Detector::EnvSecret => "env_secret",
            Detector::CliSecret => "cli_secret",
            Detector::KnownTokens => "known_tokens",
            Detector::Fields => "fields",
        }
    }

    pub(crate) fn id(self) -> usize {
        self as usize
    }
}

/// Which built-in detectors are on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Enabled([bool; 12]);

impl Enabled {
    pub(crate) fn all() -> Enabled {
        Enabled([true; 12])
    }

    #[cfg(test)]
    pub(crate) fn none() -> Enabled {
        Enabled([false; 12])
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) detector: usize,
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
    known_tokens: Option<Regex>,
    /// The AWS secret access key beside a name that says so
    /// (`aws_secret_access_key = ...`).
    aws_secret_key: Option<Regex>,
    /// Whose flags `cli_secret` redacts; `None` when it is off.
    flags: Option<CredentialNames>,
    custom: Vec<CustomPattern>,
}

fn regex(on: bool, source: &str) -> Option<Regex> {
    on.then(|| Regex::new(source).expect("built-in detector regexes are valid"))
}

impl TextDetectors {
    pub(crate) fn new(
        enabled: &Enabled,
        prefilter: Prefilter,
        names: &CredentialNames,
        custom: Vec<CustomPattern>,
    ) -> TextDetectors {
        let known_tokens = enabled.has(Detector::KnownTokens);
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
            // The vendors' published formats; docs/redact.md gives the source of each.
            known_tokens: regex(known_tokens, KNOWN_TOKENS),
            aws_secret_key: regex(
                known_tokens,
                r#"(?i)secret_?access_?key\\?["']?[ \t]*[:=][ \t]*\\?["']?([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+]|\z)"#,
            ),
            flags: enabled.has(Detector::CliSecret).then(|| names.clone()),
            custom,
        }
    }

    pub(crate) fn prefilter(&self) -> &Prefilter {
        &self.prefilter
    }

    /// The secrets in a string, in order and without overlaps. `flags`: the string is
    /// an entry of a container's `command`/`args`, where `cli_secret` looks.
    pub(crate) fn spans(&self, text: &str, flags: bool) -> Vec<Span> {
        let mut spans = Vec::new();
        if self.prefilter.text_hit(text) {
            self.built_in_spans(text, &mut spans);
        }
        if let Some(names) = self.flags.as_ref().filter(|_| flags) {
            let mut ranges = Vec::new();
            names.flag_spans(text, &mut ranges);
            spans.extend(ranges.into_iter().map(|range| Span {
                start: range.start,
                end: range.end,
                detector: Detector::CliSecret.id(),
            }));
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
        if spans.len() < 2 {
            return spans;
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
        merged
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
        group_spans(&self.aws_secret_key, Detector::KnownTokens, &|_, _| true);
        for (regex, detector) in [
            (&self.jwt, Detector::Jwt),
            (&self.bootstrap_token, Detector::BootstrapToken),
            (&self.known_tokens, Detector::KnownTokens),
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
    const ORDER: [Detector; 8] = [
        Detector::PrivateKey,
        Detector::Bearer,
        Detector::UrlCredentials,
        Detector::CliSecret,
        Detector::KnownTokens,
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

    #[cfg(test)]
    pub(crate) fn replace(&self, secret: &str) -> String {
        let mut out = String::with_capacity(28);
        self.push(secret, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::{ENDINGS, LAST_WORDS};

    fn detectors() -> TextDetectors {
        let enabled = Enabled::all();
        let names = CredentialNames::new(&LAST_WORDS, &ENDINGS);
        TextDetectors::new(
            &enabled,
            Prefilter::new(&enabled, &names, &[]).unwrap(),
            &names,
            Vec::new(),
        )
    }

    fn redact(detectors: &TextDetectors, text: &str, replacer: &Replacer) -> Option<String> {
        let spans = detectors.spans(text, false);
        if spans.is_empty() {
            return None;
        }
        let mut out = String::new();
        let mut at = 0;
        for span in spans {
            out.push_str(&text[at..span.start]);
            replacer.push(&text[span.start..span.end], &mut out);
            at = span.end;
        }
        out.push_str(&text[at..]);
        Some(out)
    }

    fn redacted(text: &str) -> Option<String> {
        redact(&detectors(), text, &Replacer::Mask)
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
    fn well_known_token_formats_are_found_anywhere() {
        let cases = [
            (
                "token ghp_0123456789abcdefABCDEF0123456789abcd ok",
                "token [REDACTED] ok",
            ),
            (
                "github_pat_11ABCDEFG0123456789abc_defghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVW",
                "[REDACTED]",
            ),
            ("glpat-xxxxxxxxxxxxxxxxxxxx;", "[REDACTED];"),
            (
                "hook xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
                "hook [REDACTED]",
            ),
            ("id=AKIAIOSFODNN7EXAMPLE&x", "id=[REDACTED]&x"),
            ("ASIAY34FZKBOKMUTVV7A", "[REDACTED]"),
            ("key=AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "key=[REDACTED]"),
            ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "[REDACTED]"),
            ("rk_live_51H8abcdefghijklmnopqrstu", "[REDACTED]"),
            (
                "[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
                "[default]\naws_access_key_id = [REDACTED]\naws_secret_access_key = [REDACTED]\n",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(redacted(text).as_deref(), Some(expected), "{text}");
        }
    }

    #[test]
    fn hash_looking_strings_match_no_format() {
        for text in [
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "da39a3ee5e6b4b0d3255bfef95601890afd80709",
            "AKIAIOSFODNN7EXAMPLEAND_MORE",
            "XAKIAIOSFODNN7EXAMPLE",
            "ghp_short",
            "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "k8s.gcr.io/pause@sha256:927d98197ec1141a368550822d18fa1c60bdae27b78b0c004f705f548c07814f",
        ] {
            assert_eq!(redacted(text), None, "{text}");
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
        assert_eq!(redact(&detectors(), &text, &a), None);
    }
}
