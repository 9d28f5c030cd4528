//! The cheap test in front of everything: could these raw JSON bytes hold a secret?
//!
//! It looks at the bytes as they arrived, escapes and all, and must never say "no" for
//! bytes that the detectors would find a secret in once decoded. It may say "yes" too
//! often: that costs a parse, never a leak.
//!
//! How escapes are kept from hiding a marker: every marker and secret shape the built-in
//! detectors look for is made of printable ASCII (letters, digits, `" - . / : @` and the
//! space, and the tab after `Bearer`). A `\uXXXX` escape that decodes to such a character
//! could hide one (`\u0065yJ` is `eyJ`), so any such escape makes the bytes a candidate. The escapes JSON encoders
//! emit on their own (`\u0026` `\u003c` `\u003e` from Go's HTML-safe encoding, control
//! characters, anything beyond ASCII) decode to characters no marker contains, so they
//! are skipped: `requestURI` carries `\u0026` in most real events, and treating it as a
//! candidate would parse a field of nearly every event. `\/` (which no common encoder
//! emits) always makes a candidate, since it can hide `://`. The other short escapes
//! (`\n`, `\t`, `\"`, `\\`) cannot sit inside a marker, and the confirmations below that
//! skip quotes and spaces also skip a backslash and the character after it.
//!
//! Custom patterns cannot be reasoned about that way, so for them any backslash makes a
//! candidate; bytes without one decode to themselves, and an unanchored regex that matches
//! inside a decoded string matches the same bytes in the raw field (`\b` sees the same
//! neighbours: the string's quotes are non-word characters). A pattern with `^`/`$`
//! anchors would not, so such a pattern makes every field with a string a candidate.

use std::borrow::Cow;

use memchr::memmem;
use regex::bytes::{Regex, RegexSet};

use crate::credential::{is_flag, is_secret_value, CredentialNames};
use crate::detector::{Detector, Enabled};
use crate::raw::{self, Kind, Node};

/// The markers and shapes of the enabled detectors, as one literal search plus the
/// checks that confirm a marker hit.
#[derive(Debug, Clone)]
pub(crate) struct Prefilter {
    /// An alternation of literals, which the regex crate runs as one SIMD multi-literal
    /// search (Teddy / Aho-Corasick).
    markers: Option<Regex>,
    /// Each literal (sorted, for a binary search after a hit) and what confirms it.
    confirms: Vec<(Vec<u8>, Confirms)>,
    /// The credential-name rule, to read `env` and `args` lists that a hit points at.
    names: CredentialNames,
    bootstrap_token: bool,
    custom: Option<CustomPrefilter>,
}

/// How a marker hit is confirmed, as a set: a literal that several detectors look for
/// is a candidate when any of their checks says so.
#[derive(Debug, Clone, Copy, Default)]
struct Confirms(u8);

impl Confirms {
    /// Always a candidate.
    const ANY: u8 = 1;
    /// `token` as a key: a colon follows.
    const KEY_COLON: u8 = 2;
    /// `://` with `@` before the authority ends.
    const USERINFO: u8 = 4;
    /// The `"env"` key: its list has an entry whose name says it holds a credential.
    const ENV_LIST: u8 = 8;
    /// The `"args"` or `"command"` key: its list has a credential flag with a value.
    const ARGUMENTS: u8 = 16;
    /// A well-known token prefix: token characters follow.
    const TOKEN_PREFIX: u8 = 32;
    /// `/env`, `/args` or `/command` in a JSON patch path: the path ends there or goes on.
    const PATCH_PATH: u8 = 64;
}

#[derive(Debug, Clone)]
struct CustomPrefilter {
    /// The unanchored custom patterns.
    set: RegexSet,
    /// Some custom pattern is anchored: any string could match it.
    anchored: bool,
}

/// The prefixes of the well-known token formats (`known_tokens`).
const TOKEN_PREFIXES: [&str; 13] = [
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "xox",
    "AKIA",
    "ASIA",
    "AIza",
    "sk_live_",
    "rk_live_",
];

impl Prefilter {
    pub(crate) fn new(enabled: &Enabled, names: &CredentialNames, custom: &[&str]) -> Prefilter {
        // Escapes are looked for apart (`escape_hit`). Most literals here are at least
        // three bytes long and start with a rare trigram, so the multi-literal search
        // (which fingerprints the first bytes) seldom stops on a false candidate:
        // `stringData"` rather than `"stringData"` (`"st` starts `"stage"`).
        let mut literals: Vec<(String, u8)> = Vec::new();
        let mut add = |literal: &str, confirm: u8| literals.push((literal.to_owned(), confirm));
        if enabled.any(&[
            Detector::TokenReview,
            Detector::TokenRequest,
            Detector::PrivateKey,
        ]) {
            add("token", Confirms::KEY_COLON);
        }
        if enabled.has(Detector::PrivateKey) {
            add("PRIVATE KEY", Confirms::ANY);
            add("client-key-data", Confirms::ANY);
        }
        if enabled.has(Detector::SecretData) {
            for literal in ["\"data\"", "stringData\"", "last-applied-configuration"] {
                add(literal, Confirms::ANY);
            }
        }
        if enabled.has(Detector::Jwt) {
            add("eyJ", Confirms::ANY);
        }
        if enabled.has(Detector::Bearer) {
            // The scheme and the blank after it (a space, or a tab written `\t`), so
            // that `system:basic-user` is not a candidate.
            for literal in [
                "earer ", "EARER ", "earer\\t", "EARER\\t", "asic ", "ASIC ", "asic\\t", "ASIC\\t",
            ] {
                add(literal, Confirms::ANY);
            }
        }
        if enabled.has(Detector::UrlCredentials) {
            add("://", Confirms::USERINFO);
        }
        // `env` and `args`/`command` lists are found by their keys, and the hit is
        // confirmed by reading the list (it is small) with the walk's own rule: the
        // last words of credential names (`auth`, `key`, `token`) are far too common in
        // audit events to be markers themselves. A list inside a string is only read by
        // the walk in `last-applied-configuration`, which is a marker already.
        if enabled.has(Detector::EnvSecret) {
            add("\"env\"", Confirms::ENV_LIST);
            // A JSON patch of an env value, entry or list, which does not carry the name.
            add("/env", Confirms::PATCH_PATH);
        }
        if enabled.has(Detector::CliSecret) {
            add("\"args\"", Confirms::ARGUMENTS);
            add("\"command\"", Confirms::ARGUMENTS);
            add("/args", Confirms::PATCH_PATH);
            add("/command", Confirms::PATCH_PATH);
        }
        if enabled.has(Detector::KnownTokens) {
            for prefix in TOKEN_PREFIXES {
                add(prefix, Confirms::TOKEN_PREFIX);
            }
            // The AWS secret key beside its name, as the name is written in the AWS
            // CLI's files, in environment variables and in JSON.
            for name in [
                "secret_access_key",
                "SECRET_ACCESS_KEY",
                "SecretAccessKey",
                "secretAccessKey",
            ] {
                add(name, Confirms::ANY);
            }
        }
        literals.sort();
        let mut confirms: Vec<(Vec<u8>, Confirms)> = Vec::with_capacity(literals.len());
        for (literal, confirm) in literals {
            match confirms.last_mut() {
                Some((last, kinds)) if *last == literal.as_bytes() => kinds.0 |= confirm,
                _ => confirms.push((literal.into_bytes(), Confirms(confirm))),
            }
        }
        let alternation = confirms
            .iter()
            .map(|(literal, _)| regex::escape(&String::from_utf8_lossy(literal)))
            .collect::<Vec<_>>()
            .join("|");
        // With every marker-bearing detector off, nothing is a marker (an empty
        // alternation would match everywhere).
        let markers = (!confirms.is_empty())
            .then(|| Regex::new(&alternation).expect("escaped literals form a valid regex"));

        let custom = (!custom.is_empty()).then(|| {
            let (anchored, unanchored): (Vec<&str>, Vec<&str>) =
                custom.iter().partition(|source| is_anchored(source));
            CustomPrefilter {
                set: RegexSet::new(unanchored).expect("patterns were compiled at load"),
                anchored: !anchored.is_empty(),
            }
        });
        Prefilter {
            markers,
            confirms,
            names: names.clone(),
            bootstrap_token: enabled.has(Detector::BootstrapToken),
            custom,
        }
    }

    /// Whether `raw` (JSON bytes, or a decoded string) could hold a secret.
    pub(crate) fn hit(&self, raw: &[u8]) -> bool {
        self.marker_hit(raw)
            || (self.bootstrap_token && has_bootstrap_shape(raw))
            || self.custom.as_ref().is_some_and(|custom| custom.hit(raw))
    }

    /// Whether a decoded string could hold a built-in secret (custom patterns are run on
    /// every string of a candidate field instead).
    pub(crate) fn text_hit(&self, text: &str) -> bool {
        let bytes = text.as_bytes();
        self.marker_hit(bytes) || (self.bootstrap_token && has_bootstrap_shape(bytes))
    }

    fn marker_hit(&self, raw: &[u8]) -> bool {
        if escape_hit(raw) {
            return true;
        }
        let Some(markers) = &self.markers else {
            return false;
        };
        let mut at = 0;
        while let Some(found) = markers.find_at(raw, at) {
            if self.confirm(raw, found.start(), found.end()) {
                return true;
            }
            // Not past the end: another literal may start inside this one.
            at = found.start() + 1;
        }
        false
    }

    /// Whether a marker hit is a real candidate, looking at the bytes around it.
    fn confirm(&self, raw: &[u8], start: usize, end: usize) -> bool {
        let literal = &raw[start..end];
        let Ok(index) = self
            .confirms
            .binary_search_by(|(known, _)| known.as_slice().cmp(literal))
        else {
            return true;
        };
        let kinds = self.confirms[index].1 .0;
        let has = |kind: u8| kinds & kind != 0;
        let rest = &raw[end..];
        has(Confirms::ANY)
            // A key or a `key:` line: `"token":`, `\"token\": `, `token: abc`. Not
            // `"path":"token"` (in every pod with a projected service-account token)
            // nor `/serviceaccounts/x/token"`.
            || (has(Confirms::KEY_COLON) && colon_follows(rest))
            || (has(Confirms::USERINFO) && authority_has_at(rest))
            || (has(Confirms::ENV_LIST) && self.env_list_is_candidate(rest))
            || (has(Confirms::ARGUMENTS) && self.arguments_are_candidate(rest))
            || (has(Confirms::TOKEN_PREFIX) && token_characters_follow(rest))
            || (has(Confirms::PATCH_PATH)
                && matches!(rest.first(), Some(b'/' | b'"' | b'\\') | None))
    }
}

impl Prefilter {
    /// After `"env"`: a list with an entry whose `name` says it holds a credential and
    /// whose `value` could be one. Bytes that do not read as a list say yes.
    fn env_list_is_candidate(&self, rest: &[u8]) -> bool {
        let list = match member_value(rest) {
            Member::Value(list) => list,
            Member::Unreadable => return true,
            Member::NotAKey => return false,
        };
        let Kind::Array(entries) = &list.kind else {
            return false;
        };
        entries.iter().any(|entry| {
            entry
                .member_text("name")
                .is_some_and(|name| self.names.matches(&name))
                && entry
                    .member("value")
                    .and_then(Node::text)
                    .is_some_and(|value| is_secret_value(&value))
        })
    }

    /// After `"args"` or `"command"`: a list with a credential flag that has a value.
    fn arguments_are_candidate(&self, rest: &[u8]) -> bool {
        let list = match member_value(rest) {
            Member::Value(list) => list,
            Member::Unreadable => return true,
            Member::NotAKey => return false,
        };
        let Kind::Array(items) = &list.kind else {
            return false;
        };
        let texts: Vec<Option<Cow<'_, str>>> = items.iter().map(Node::text).collect();
        let mut spans = Vec::new();
        texts.iter().enumerate().any(|(at, text)| {
            let Some(text) = text else { return false };
            self.names.flag_spans(text, &mut spans);
            let value_follows = || {
                matches!(texts.get(at + 1), Some(Some(next)) if !is_flag(next) && is_secret_value(next))
            };
            !spans.is_empty() || (self.names.is_bare_flag(text) && value_follows())
        })
    }
}

/// What follows a quoted word that may be a key.
enum Member<'a> {
    /// Not a key (no `:` follows): a value, or text.
    NotAKey,
    /// A key whose value does not read as JSON here (cut short, nested too deep).
    Unreadable,
    Value(Node<'a>),
}

/// The value after a key's closing quote: `: [...]`.
fn member_value(rest: &[u8]) -> Member<'_> {
    let at = rest
        .iter()
        .position(|byte| !matches!(byte, b' ' | b'\t' | b'\n' | b'\r'));
    match at {
        Some(at) if rest[at] == b':' => match raw::parse_prefix(&rest[at + 1..]) {
            Some(value) => Member::Value(value),
            None => Member::Unreadable,
        },
        _ => Member::NotAKey,
    }
}

impl CustomPrefilter {
    fn hit(&self, raw: &[u8]) -> bool {
        if memchr::memchr(b'\\', raw).is_some() {
            return true;
        }
        (self.anchored && memchr::memchr(b'"', raw).is_some()) || self.set.is_match(raw)
    }
}

/// After a token prefix: at least ten token characters.
fn token_characters_follow(rest: &[u8]) -> bool {
    rest.len() >= 10
        && rest[..10]
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-'))
}

/// A `\uXXXX` escape of a risky character, or `\/`.
fn escape_hit(raw: &[u8]) -> bool {
    memchr::memchr_iter(b'\\', raw).any(|at| match raw.get(at + 1) {
        Some(b'u') => unicode_escape_is_risky(&raw[at + 2..]),
        Some(b'/') => true,
        _ => false,
    })
}

fn unicode_escape_is_risky(rest: &[u8]) -> bool {
    let Some(hex) = rest.get(..4) else {
        return false;
    };
    let Some(code) = std::str::from_utf8(hex)
        .ok()
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
    else {
        return false;
    };
    // A tab is risky too: it can stand between `Bearer` and its token.
    code == 0x09 || ((0x20..0x7f).contains(&code) && !matches!(code, 0x26 | 0x3c | 0x3e))
}

fn colon_follows(rest: &[u8]) -> bool {
    let mut i = 0;
    while i < rest.len() {
        match rest[i] {
            b':' => return true,
            b'"' | b'\'' | b' ' => i += 1,
            b'\\' => i += 2,
            _ => return false,
        }
    }
    false
}

/// After `scheme://`: is there an `@` before the authority ends? A backslash (an escape
/// that could hide one) counts as yes.
fn authority_has_at(rest: &[u8]) -> bool {
    for &byte in rest {
        match byte {
            b'@' | b'\\' => return true,
            b'/' | b'?' | b'#' | b'"' | b' ' => return false,
            byte if byte < 0x20 => return false,
            _ => {}
        }
    }
    false
}

/// `[a-z0-9]{6}\.[a-z0-9]{16}` anywhere (without the word boundaries the detector adds:
/// in raw bytes the character before may be the tail of an escape such as `\n`).
pub(crate) fn has_bootstrap_shape(raw: &[u8]) -> bool {
    let lower_alnum = |byte: &u8| byte.is_ascii_lowercase() || byte.is_ascii_digit();
    memchr::memchr_iter(b'.', raw).any(|dot| {
        dot >= 6
            && raw.len() > dot + 16
            && raw[dot + 1..dot + 17].iter().all(lower_alnum)
            && raw[dot - 6..dot].iter().all(lower_alnum)
    })
}

/// Whether `objectRef` bytes could name the `secrets` resource.
pub(crate) fn may_name_secrets(object_ref: &[u8]) -> bool {
    memmem::find(object_ref, b"secrets").is_some() || memchr::memchr(b'\\', object_ref).is_some()
}

/// Whether a pattern uses `^`/`$`-style anchors, which do not survive the move from a
/// decoded string to raw JSON bytes. Unparseable patterns count as anchored.
fn is_anchored(source: &str) -> bool {
    regex_syntax::parse(source).map_or(true, |hir| hir.properties().look_set().contains_anchor())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::{ENDINGS, LAST_WORDS};

    fn names() -> CredentialNames {
        CredentialNames::new(&LAST_WORDS, &ENDINGS)
    }

    fn all() -> Prefilter {
        Prefilter::new(&Enabled::all(), &names(), &[])
    }

    #[test]
    fn metadata_events_from_the_capture_are_not_candidates() {
        let prefilter = all();
        let events = auditflow_testkit::events::audit_log_lines();
        let hits = events.filter(|line| prefilter.hit(line.as_bytes())).count();
        // The capture's RequestResponse pod events carry no secret either.
        assert_eq!(hits, 0);
    }

    #[test]
    fn go_escapes_are_not_candidates_but_hiding_escapes_are() {
        let prefilter = all();
        assert!(!prefilter.hit(br#""/api/v1/pods?limit=500\u0026watch=1\u003c\u003e""#));
        assert!(prefilter.hit(br#""\u0065yJhbGciOiJ""#));
        assert!(prefilter.hit(br#""https:\/\/u:p@h""#));
        assert!(prefilter.hit(br#"{"\u0064ata":{}}"#));
    }

    #[test]
    fn marker_confirmations() {
        let prefilter = all();
        assert!(!prefilter.hit(br#"{"path":"token"}"#));
        assert!(!prefilter.hit(br#""/api/v1/namespaces/a/serviceaccounts/b/token""#));
        assert!(prefilter.hit(br#"{"token" : "x"}"#));
        assert!(prefilter.hit(br#""users:\n- user:\n    token: abc""#));
        assert!(prefilter.hit(br#""{\"token\":\"abc\"}""#));
        assert!(!prefilter.hit(br#""see https://example.com/x@y""#));
        assert!(prefilter.hit(br#""https://user:pw@example.com""#));
        assert!(prefilter.hit(br#""x abcdef.0123456789abcdef""#));
        assert!(!prefilter.hit(br#""13.385382Z audit.k8s.io v1.32.0""#));
    }

    #[test]
    fn env_lists_argument_lists_and_token_prefixes_are_candidates() {
        let prefilter = all();
        for hit in [
            &br#"{"env":[{"name":"DB_PASSWORD","value":"x"}]}"#[..],
            br#"{"env": [ {"value":"x","name" : "db_passwd"} ] }"#,
            br#"{"x":"{\"env\":[{\"name\":\"TOKEN\",\"value\":\"x\"}],\"kubectl.kubernetes.io/last-applied-configuration\":1}"}"#,
            br#"{"args":["--api-key=x"]}"#,
            br#"{"env":[{"name":"GITHUB_TOKEN","value":"x"}]}"#,
            br#"{"args":["sh","-c","run --password x"]}"#,
            br#"{"command" : ["run", "--clientSecret=x"]}"#,
            br#"{"args":["--token","x"]}"#,
            br#""aws_secret_access_key = x""#,
            br#""ghp_0123456789abcdef""#,
            br#""AKIAIOSFODNN7EXAMPLE""#,
            br#"{"op":"replace","path":"/spec/containers/0/env/0/value","value":"x"}"#,
            br#"{"op":"add","path":"/spec/containers/0/env","value":[]}"#,
        ] {
            assert!(prefilter.hit(hit), "{}", String::from_utf8_lossy(hit));
        }
        for miss in [
            &br#"{"env":[{"name":"AUTHOR","value":"x"},{"name":"TOKEN_TTL","value":"x"}]}"#[..],
            br#"{"env":[{"name":"DB_PASSWORD","valueFrom":{"secretKeyRef":{"name":"x"}}}]}"#,
            br#"{"env":[{"name":"REGISTRY_AUTH","value":"false"}]}"#,
            br#"{"path":"token"}"#,
            br#"{"automountServiceAccountToken":true,"serviceAccountName":"x"}"#,
            br#"{"secretName":"x","key":"tls.key"}"#,
            br#"{"args":["--token-ttl=3600","--authorization-mode=Node","--anonymous-auth=false"]}"#,
            br#"{"command":["--token"]}"#,
            br#""authorization.k8s.io/decision""#,
            br#""ghp_short""#,
            br#""/api/v1/namespaces/a/envoy""#,
            br#"{"env":"x","args":1,"command":{}}"#,
        ] {
            assert!(!prefilter.hit(miss), "{}", String::from_utf8_lossy(miss));
        }
    }

    #[test]
    fn custom_patterns_are_checked_conservatively() {
        let prefilter = Prefilter::new(&Enabled::none(), &names(), &["sk_live_[0-9a-z]+"]);
        assert!(prefilter.hit(br#""key sk_live_abc""#));
        assert!(!prefilter.hit(br#""key sk_test_abc""#));
        assert!(prefilter.hit(br#""key sk\u005flive_abc""#));
        let anchored = Prefilter::new(&Enabled::none(), &names(), &["^secret$"]);
        assert!(anchored.hit(br#"{"a":"secret"}"#));
        assert!(!anchored.hit(br#"[1,2.5,null]"#));
    }
}
