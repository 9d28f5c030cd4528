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
use std::sync::LazyLock;

use aho_corasick::{packed, AhoCorasick, AhoCorasickKind, MatchKind};
use memchr::memmem;
use regex::bytes::RegexSet;

use crate::credential::{is_flag, is_secret_value, CredentialNames};
use crate::detector::{Detector, Enabled};
use crate::raw::{self, Kind, Node};

/// The markers and shapes of the enabled detectors, as one literal search plus the
/// checks that confirm a marker hit.
#[derive(Debug, Clone)]
pub(crate) struct Prefilter {
    /// Every literal of every enabled detector in one SIMD multi-literal search: checks
    /// on what surrounds a literal are made here, after a hit.
    markers: Option<Markers>,
    /// What confirms each literal, by its index in the search.
    confirms: Vec<Confirm>,
    /// The credential-name rule, to read `env` and `args` lists that a hit points at.
    names: CredentialNames,
    /// `env_secret` or `cli_secret` is on: JSON patches of containers are candidates.
    patches: bool,
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

/// The prefixes of the well-known token formats (`known_tokens`).
/// (`github_pat_` and `sk_live_`/`rk_live_` are looked for by their tails.)
const TOKEN_PREFIXES: [&str; 10] = [
    "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "glpat-", "xox", "AKIA", "ASIA", "AIza",
];

/// The literal search. Teddy (the packed searcher) keeps its fast form, eight buckets
/// over 32 bytes a step with AVX2, only up to 32 literals: past that it switches to
/// sixteen buckets over 16 bytes a step, which ran the no-candidate path of the redact
/// bench 1.5-1.9x slower. The literals are kept to fewer than 32 (one literal for a
/// shared head, the byte after it checked on a hit) and the slim form is asked for.
/// Where Teddy is not available (no SSSE3, other targets) an Aho-Corasick automaton
/// with the same leftmost-first semantics runs instead.
#[derive(Debug, Clone)]
enum Markers {
    Packed(packed::Searcher),
    Automaton(AhoCorasick),
}

impl Markers {
    fn new(literals: &[&[u8]]) -> Markers {
        let packed = packed::Config::new()
            .match_kind(packed::MatchKind::LeftmostFirst)
            .only_teddy_fat(Some(false))
            .builder()
            .extend(literals)
            .build();
        match packed {
            Some(searcher) => Markers::Packed(searcher),
            None => Markers::Automaton(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostFirst)
                    .kind(Some(AhoCorasickKind::DFA))
                    .build(literals)
                    .expect("a few short literals fit an automaton"),
            ),
        }
    }

    /// The leftmost literal that starts at or after `at`: its index, start and end.
    fn find_at(&self, haystack: &[u8], at: usize) -> Option<(usize, usize, usize)> {
        let found = match self {
            Markers::Packed(searcher) => {
                searcher.find_in(haystack, aho_corasick::Span::from(at..haystack.len()))?
            }
            Markers::Automaton(automaton) => {
                automaton.find(aho_corasick::Input::new(haystack).range(at..))?
            }
        };
        Some((found.pattern().as_usize(), found.start(), found.end()))
    }
}

/// The order the literals are given to Teddy in. Teddy puts the n-th literal in bucket
/// `7 - n % 8` (literals whose first three bytes share their low nybbles share one), and
/// stops on every position whose first three bytes fall in some bucket's nybble sets: a
/// bucket of unlike literals stops often. This order was found by trying orders against
/// the three-byte windows of the kube-apiserver capture and of the bench's
/// RequestResponse mix (a pod list, a ConfigMap): it stops about 1,000 times where the
/// order the detectors list them in stops 8,300.
const SEARCH_ORDER: [&str; 30] = [
    "_live_",
    "gho_",
    "://",
    "ASIC",
    "PRIVATE KEY",
    "ASIA",
    "xox",
    "ecretAccessKey",
    "glpat-",
    "earer",
    "asic",
    "ECRET_ACCESS_KEY",
    "ghu_",
    "rgs\"",
    "token",
    "ghr_",
    "ghp_",
    "eyJ",
    "env\"",
    "client-key-data",
    "mmand\"",
    "ecret_access_key",
    "\"data\"",
    "AIza",
    "stringData\"",
    "EARER",
    "b_pat_",
    "AKIA",
    "ghs_",
    "last-applied-configuration",
];

/// Where a literal comes in [`SEARCH_ORDER`] (one missing from it, last).
fn search_rank(literal: &[u8]) -> usize {
    SEARCH_ORDER
        .iter()
        .position(|known| known.as_bytes() == literal)
        .unwrap_or(SEARCH_ORDER.len())
}

/// How a marker hit is confirmed, by what follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Confirm {
    /// Always a candidate.
    Any,
    /// An authentication scheme (`earer`, `asic`): a space follows, or a tab written
    /// `\t`.
    Blank,
    /// A `token` key: a colon follows, maybe after quotes, blanks and escapes
    /// (`"token":`, `\"token\": `, `token: abc`). Not `"path":"token"` (in every pod
    /// with a projected service-account token) nor `/serviceaccounts/x/token"`.
    KeyColon,
    /// `://`: an `@` before the authority ends.
    Userinfo,
    /// `env"` after a quote (the `"env"` key): its list has an entry whose name says
    /// it holds a credential.
    EnvList,
    /// `rgs"` or `mmand"` after `"a` or `"co` (the `"args"` and `"command"` keys): the
    /// list has a credential flag with a value.
    Arguments(&'static str),
    /// A token prefix: ten token characters follow.
    TokenCharacters,
    /// The tail of a token prefix (`b_pat_`, `_live_`, chosen for a rare first three
    /// bytes): its head comes before it and ten token characters follow.
    TokenTail(&'static [&'static str]),
}

impl Prefilter {
    /// The prefilter of the enabled detectors and the custom patterns (`custom`, regex
    /// sources that each compiled alone). Fails when the custom patterns, compiled
    /// together into one set, pass the regex size limit.
    pub(crate) fn new(
        enabled: &Enabled,
        names: &CredentialNames,
        custom: &[&str],
    ) -> Result<Prefilter, regex::Error> {
        // Escapes are looked for apart (`escape_hit`). Most literals here are at least
        // three bytes long and start with a rare trigram, so the multi-literal search
        // (which fingerprints the first bytes) seldom stops on a false candidate:
        // `stringData"` rather than `"stringData"` (`"st` starts `"stage"`).
        let mut literals: Vec<&[u8]> = Vec::new();
        let mut confirms: Vec<Confirm> = Vec::new();
        let mut add = |literal: &'static str, confirm: Confirm| {
            literals.push(literal.as_bytes());
            confirms.push(confirm);
        };
        if enabled.any(&[
            Detector::TokenReview,
            Detector::TokenRequest,
            Detector::PrivateKey,
        ]) {
            add("token", Confirm::KeyColon);
        }
        if enabled.has(Detector::PrivateKey) {
            add("PRIVATE KEY", Confirm::Any);
            add("client-key-data", Confirm::Any);
        }
        if enabled.has(Detector::SecretData) {
            for literal in ["\"data\"", "stringData\"", "last-applied-configuration"] {
                add(literal, Confirm::Any);
            }
        }
        if enabled.has(Detector::Jwt) {
            add("eyJ", Confirm::Any);
        }
        if enabled.has(Detector::Bearer) {
            // The scheme, confirmed by the blank after it (a space, or a tab written
            // `\t`), so that `system:basic-user` is not a candidate.
            for literal in ["earer", "EARER", "asic", "ASIC"] {
                add(literal, Confirm::Blank);
            }
        }
        if enabled.has(Detector::UrlCredentials) {
            add("://", Confirm::Userinfo);
        }
        // `env` and `args`/`command` lists are found by their keys, and a hit is
        // confirmed by reading the list (it is small) with the walk's own rule: the
        // last words of credential names (`auth`, `key`, `token`) are far too common in
        // audit events to be markers themselves. A list inside a string is only read by
        // the walk in `last-applied-configuration`, which is a marker already. JSON
        // patches, which do not carry the names, are candidates by their shape
        // ([`Prefilter::may_patch_containers`]). The literals are the keys' tails: the
        // search fingerprints the first three bytes, and `"en`, `"ar`, `"co` start many
        // keys.
        if enabled.has(Detector::EnvSecret) {
            add("env\"", Confirm::EnvList);
        }
        if enabled.has(Detector::CliSecret) {
            add("rgs\"", Confirm::Arguments("\"a"));
            add("mmand\"", Confirm::Arguments("\"co"));
        }
        if enabled.has(Detector::KnownTokens) {
            for prefix in TOKEN_PREFIXES {
                add(prefix, Confirm::TokenCharacters);
            }
            add("b_pat_", Confirm::TokenTail(&["githu"]));
            add("_live_", Confirm::TokenTail(&["sk", "rk"]));
            // The AWS secret key beside its name, as the name is written in the AWS
            // CLI's files, in environment variables and in JSON.
            for name in ["ecret_access_key", "ECRET_ACCESS_KEY", "ecretAccessKey"] {
                add(name, Confirm::Any);
            }
        }
        // Teddy's order: see `SEARCH_ORDER`.
        let mut order: Vec<usize> = (0..literals.len()).collect();
        order.sort_by_key(|&at| search_rank(literals[at]));
        let literals: Vec<&[u8]> = order.iter().map(|&at| literals[at]).collect();
        let confirms: Vec<Confirm> = order.iter().map(|&at| confirms[at]).collect();
        // With every marker-bearing detector off, nothing is a marker.
        let markers = (!literals.is_empty()).then(|| Markers::new(&literals));

        // Each pattern compiled alone when the pipeline loaded, but the set is their sum:
        // it can still pass the size limit.
        let custom = match custom.is_empty() {
            true => None,
            false => {
                let (anchored, unanchored): (Vec<&str>, Vec<&str>) =
                    custom.iter().partition(|source| is_anchored(source));
                Some(CustomPrefilter {
                    set: RegexSet::new(unanchored)?,
                    anchored: !anchored.is_empty(),
                })
            }
        };
        Ok(Prefilter {
            markers,
            confirms,
            names: names.clone(),
            patches: enabled.any(&[Detector::EnvSecret, Detector::CliSecret]),
            bootstrap_token: enabled.has(Detector::BootstrapToken),
            custom,
        })
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
        // A hit that is not confirmed resumes the search one byte after its start, so
        // that no literal starting inside it is missed (no two literals can match at
        // the same place).
        let mut at = 0;
        while let Some((index, start, end)) = markers.find_at(raw, at) {
            if self.confirm(self.confirms[index], raw, start, end) {
                return true;
            }
            at = start + 1;
        }
        false
    }

    /// Whether a marker hit is a real candidate, looking at the bytes around it.
    fn confirm(&self, confirm: Confirm, raw: &[u8], start: usize, end: usize) -> bool {
        let (before, rest) = (&raw[..start], &raw[end..]);
        let token_characters = || {
            rest.len() >= 10
                && rest[..10]
                    .iter()
                    .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-'))
        };
        match confirm {
            Confirm::Any => true,
            Confirm::Blank => rest.starts_with(b" ") || rest.starts_with(b"\\t"),
            Confirm::KeyColon => colon_follows(rest),
            Confirm::Userinfo => authority_has_at(rest),
            Confirm::EnvList => before.ends_with(b"\"") && self.env_list_is_candidate(rest),
            Confirm::Arguments(head) => {
                before.ends_with(head.as_bytes()) && self.arguments_are_candidate(rest)
            }
            Confirm::TokenCharacters => token_characters(),
            Confirm::TokenTail(heads) => {
                heads.iter().any(|head| before.ends_with(head.as_bytes())) && token_characters()
            }
        }
    }

    /// Whether a request body is a JSON patch (`[{"op":...}]`) that `env_secret` or
    /// `cli_secret` could find something in: it does not carry the names that the
    /// markers look for.
    pub(crate) fn may_patch_containers(&self, request_object: &[u8]) -> bool {
        self.patches
            && request_object
                .iter()
                .find(|byte| !byte.is_ascii_whitespace())
                .is_some_and(|byte| *byte == b'[')
            && [&b"/env"[..], b"/args", b"/command"]
                .iter()
                .any(|path| memmem::find(request_object, path).is_some())
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

/// The two escapes [`escape_hit`] looks for, as two-byte searches that stop only where
/// both bytes stand together.
static UNICODE_ESCAPE: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\\u"));
static SLASH_ESCAPE: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\\/"));

/// How many other escapes [`escape_hit`] steps over one by one before it switches to
/// the two-byte searches.
const SHORT_ESCAPES_ONE_BY_ONE: usize = 16;

/// A `\uXXXX` escape of a risky character, or `\/`. (A backslash that is itself
/// escaped, `\\u0065`, counts too: a candidate too many, never one too few.)
///
/// Most bytes hold a few escapes at most, and stepping from backslash to backslash
/// settles them in one pass. A multi-line string holds thousands (`\n` in a
/// ConfigMap's data): past a few, the rest is left to two searches for `\u` and `\/`,
/// which do not stop on the others.
fn escape_hit(raw: &[u8]) -> bool {
    let mut short = 0;
    for at in memchr::memchr_iter(b'\\', raw) {
        match raw.get(at + 1) {
            Some(b'u') => {
                if unicode_escape_is_risky(&raw[at + 2..]) {
                    return true;
                }
            }
            Some(b'/') => return true,
            _ => {
                short += 1;
                if short == SHORT_ESCAPES_ONE_BY_ONE {
                    let rest = &raw[at..];
                    return UNICODE_ESCAPE
                        .find_iter(rest)
                        .any(|at| unicode_escape_is_risky(&rest[at + 2..]))
                        || SLASH_ESCAPE.find(rest).is_some();
                }
            }
        }
    }
    false
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
        Prefilter::new(&Enabled::all(), &names(), &[]).unwrap()
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
    fn a_hiding_escape_after_many_short_ones_is_found() {
        let prefilter = all();
        let lines = "key: value\\n".repeat(SHORT_ESCAPES_ONE_BY_ONE * 4);
        assert!(!prefilter.hit(format!(r#"{{"a":"{lines}"}}"#).as_bytes()));
        for hiding in [r"\u0065yJhbGciOiJ", r"https:\/\/h", r"\\u0065yJ"] {
            let raw = format!(r#"{{"a":"{lines}{hiding}"}}"#);
            assert!(prefilter.hit(raw.as_bytes()), "{hiding}");
        }
        // Go's escapes among them are still no candidates.
        let go = format!(r#"{{"a":"{lines}a\u0026b\u003c"}}"#);
        assert!(!prefilter.hit(go.as_bytes()));
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
            br#""github_pat_11ABCDEFG0123456789abc""#,
            br#""rk_live_0123456789abcdef""#,
            br#""key=AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY""#,
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
            br#"{"kenv":[{"name":"DB_PASSWORD","value":"x"}],"cargs":["--token=x"]}"#,
        ] {
            assert!(!prefilter.hit(miss), "{}", String::from_utf8_lossy(miss));
        }
    }

    #[test]
    fn schemes_are_confirmed_by_the_blank_after_them() {
        let prefilter = all();
        assert!(prefilter.hit(br#""Bearer abc""#));
        assert!(prefilter.hit(br#""BEARER abc""#));
        assert!(prefilter.hit(br#""Basic\tabc""#));
        assert!(prefilter.hit(br#""basic abc""#));
        assert!(!prefilter.hit(br#""system:basic-user""#));
        assert!(!prefilter.hit(br#""Bearer""#));
        assert!(!prefilter.hit(br#""basic\nabc""#));
    }

    #[test]
    fn a_marker_that_starts_inside_an_unconfirmed_one_is_found() {
        let prefilter = all();
        // `asic` is not followed by a blank, but `client-key-data` starts on its `c`.
        assert!(prefilter.hit(br#""asiclient-key-data""#));
        // `token` with no colon, then `eyJ` right after it.
        assert!(prefilter.hit(br#""tokeneyJ""#));
    }

    #[test]
    fn the_literal_search_stays_in_teddys_fast_form() {
        // More than 32 literals make Teddy take its slower (fat) form.
        let prefilter = all();
        assert!(
            prefilter.confirms.len() <= 32,
            "{}",
            prefilter.confirms.len()
        );
        // Every literal has its place in the order tuned for Teddy's buckets.
        assert_eq!(prefilter.confirms.len(), SEARCH_ORDER.len());
        let mut ranks: Vec<usize> = SEARCH_ORDER
            .iter()
            .map(|l| search_rank(l.as_bytes()))
            .collect();
        ranks.dedup();
        assert_eq!(ranks, (0..SEARCH_ORDER.len()).collect::<Vec<_>>());
        // Teddy needs SSSE3, which every x86-64 machine this runs on has.
        let packed = matches!(prefilter.markers, Some(Markers::Packed(_)));
        assert!(packed || !cfg!(target_arch = "x86_64"));
    }

    #[test]
    fn json_patches_of_containers_are_candidates_by_their_shape() {
        let prefilter = all();
        assert!(prefilter.may_patch_containers(
            br#" [{"op":"replace","path":"/spec/containers/0/env/0/value","value":"x"}]"#
        ));
        assert!(prefilter.may_patch_containers(br#"[{"op":"add","path":"/spec/args/-"}]"#));
        assert!(!prefilter.may_patch_containers(br#"[{"op":"add","path":"/spec/replicas"}]"#));
        assert!(!prefilter.may_patch_containers(br#"{"spec":{"path":"/env"}}"#));
    }

    #[test]
    fn custom_patterns_are_checked_conservatively() {
        let prefilter = Prefilter::new(&Enabled::none(), &names(), &["sk_live_[0-9a-z]+"]).unwrap();
        assert!(prefilter.hit(br#""key sk_live_abc""#));
        assert!(!prefilter.hit(br#""key sk_test_abc""#));
        assert!(prefilter.hit(br#""key sk\u005flive_abc""#));
        let anchored = Prefilter::new(&Enabled::none(), &names(), &["^secret$"]).unwrap();
        assert!(anchored.hit(br#"{"a":"secret"}"#));
        assert!(!anchored.hit(br#"[1,2.5,null]"#));
    }
}
