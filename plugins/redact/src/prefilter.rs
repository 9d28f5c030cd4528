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

use memchr::memmem;
use regex::bytes::{Regex, RegexSet};

use crate::detector::{Detector, Enabled};

/// The markers and shapes of the enabled detectors, as one literal search plus the
/// checks that confirm a marker hit.
#[derive(Debug, Clone)]
pub(crate) struct Prefilter {
    /// An alternation of literals, which the regex crate runs as one SIMD multi-literal
    /// search (Teddy / Aho-Corasick).
    markers: Option<Regex>,
    bootstrap_token: bool,
    custom: Option<CustomPrefilter>,
}

#[derive(Debug, Clone)]
struct CustomPrefilter {
    /// The unanchored custom patterns.
    set: RegexSet,
    /// Some custom pattern is anchored: any string could match it.
    anchored: bool,
}

impl Prefilter {
    pub(crate) fn new(enabled: &Enabled, custom: &[&str]) -> Prefilter {
        // Escapes are looked for apart (`escape_hit`). Every literal here is at least
        // three bytes long and starts with a rare trigram, so the multi-literal search
        // (which fingerprints the first bytes) seldom stops on a false candidate:
        // `stringData"` rather than `"stringData"` (`"st` starts `"stage"`).
        let mut literals: Vec<&str> = Vec::new();
        if enabled.any(&[
            Detector::TokenReview,
            Detector::TokenRequest,
            Detector::PrivateKey,
        ]) {
            literals.push("token");
        }
        if enabled.has(Detector::PrivateKey) {
            literals.extend(["PRIVATE KEY", "client-key-data"]);
        }
        if enabled.has(Detector::SecretData) {
            literals.extend(["\"data\"", "stringData\"", "last-applied-configuration"]);
        }
        if enabled.has(Detector::Jwt) {
            literals.push("eyJ");
        }
        if enabled.has(Detector::Bearer) {
            // The scheme and the blank after it (a space, or a tab written `\t`), so
            // that `system:basic-user` is not a candidate.
            literals.extend([
                "earer ", "EARER ", "earer\\t", "EARER\\t", "asic ", "ASIC ", "asic\\t", "ASIC\\t",
            ]);
        }
        if enabled.has(Detector::UrlCredentials) {
            literals.push("://");
        }
        let alternation = literals
            .iter()
            .map(|literal| regex::escape(literal))
            .collect::<Vec<_>>()
            .join("|");
        // With every marker-bearing detector off, nothing is a marker (an empty
        // alternation would match everywhere).
        let markers = (!literals.is_empty())
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
            if confirm(raw, found.as_bytes(), found.end()) {
                return true;
            }
            at = found.end();
        }
        false
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

/// Whether a marker hit is a real candidate, looking at the bytes after it.
fn confirm(raw: &[u8], marker: &[u8], end: usize) -> bool {
    let rest = &raw[end..];
    match marker {
        // A key or a `key:` line: `"token":`, `\"token\": `, `token: abc`. Not
        // `"path":"token"` (in every pod with a projected service-account token) nor
        // `/serviceaccounts/x/token"`.
        b"token" => colon_follows(rest),
        b"://" => authority_has_at(rest),
        _ => true,
    }
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

    fn all() -> Prefilter {
        Prefilter::new(&Enabled::all(), &[])
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
    fn custom_patterns_are_checked_conservatively() {
        let prefilter = Prefilter::new(&Enabled::none(), &["sk_live_[0-9a-z]+"]);
        assert!(prefilter.hit(br#""key sk_live_abc""#));
        assert!(!prefilter.hit(br#""key sk_test_abc""#));
        assert!(prefilter.hit(br#""key sk\u005flive_abc""#));
        let anchored = Prefilter::new(&Enabled::none(), &["^secret$"]);
        assert!(anchored.hit(br#"{"a":"secret"}"#));
        assert!(!anchored.hit(br#"[1,2.5,null]"#));
    }
}
