//! Finding the secrets in one top-level field's bytes, as byte ranges to replace.
//!
//! The walk reads a [`raw`] view of the field and records edits (a byte range and what
//! to write there) instead of changing anything: a candidate field without a secret is
//! then never touched, and a field with one is its own bytes with only the secrets'
//! characters spliced out. A secret inside a string with escapes is mapped back to the
//! escapes it was written with; a manifest inside `last-applied-configuration` is
//! walked as JSON and its edits mapped back through the string's escapes the same way.

use std::ops::Range;

use auditflow_core::condition::Path;

use crate::credential::{is_flag, is_secret_value, CredentialNames};
use crate::detector::{Detector, Enabled, Replacer, TextDetectors};
use crate::raw::{self, Kind, Node};

/// The annotation kubectl stores the applied manifest in (a JSON string).
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// One replacement: the bytes at `range` become `with`.
#[derive(Debug, Clone)]
pub(crate) struct Edit {
    pub(crate) range: Range<usize>,
    pub(crate) with: String,
    /// The detector of each secret replaced.
    pub(crate) hits: Vec<usize>,
}

/// What the event's `objectRef` says a request or response body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    Plain,
    /// `secrets` (a Secret, a SecretList, or a patch of a Secret).
    Secret,
    /// `authentication.k8s.io` `tokenreviews`.
    TokenReview,
    /// `serviceaccounts/token`.
    TokenRequest,
}

/// What the walk knows about the value it enters.
#[derive(Debug, Clone, Copy)]
enum Ctx {
    Plain,
    Body(Body),
    /// An item of a SecretList.
    SecretItem,
    /// An object whose `token` belongs to this detector (`spec` of a TokenReview).
    TokenOf(Detector),
}

/// What an object is, for the detectors that work by position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Plain,
    Secret,
    SecretList,
    TokenReview,
    TokenRequest,
    TokenOf(Detector),
}

/// The read-only part of the redactor the walk needs.
pub(crate) struct Rules<'r> {
    pub(crate) enabled: &'r Enabled,
    pub(crate) text: &'r TextDetectors,
    pub(crate) replacer: &'r Replacer,
    pub(crate) names: &'r CredentialNames,
}

/// Walks one top-level field's bytes and returns its edits, sorted and without
/// overlaps; `None` when the bytes cannot be read (nested deeper than
/// [`raw::MAX_DEPTH`]).
pub(crate) fn edits(
    rules: &Rules<'_>,
    bytes: &[u8],
    body: Body,
    fields: &[&Path],
) -> Option<Vec<Edit>> {
    let node = raw::parse(bytes)?;
    let mut walker = Walker {
        rules,
        edits: Vec::new(),
    };
    walker.value(&node, Ctx::Body(body));
    for field in fields {
        walker.field(&node, &field.segments()[1..]);
    }
    Some(settle(walker.edits))
}

/// Sorts edits and drops those inside another (a `fields` path over a string that a
/// detector also matched: the whole replacement wins).
fn settle(mut edits: Vec<Edit>) -> Vec<Edit> {
    edits.sort_by(|a, b| {
        (a.range.start, std::cmp::Reverse(a.range.end))
            .cmp(&(b.range.start, std::cmp::Reverse(b.range.end)))
    });
    let mut kept: Vec<Edit> = Vec::with_capacity(edits.len());
    for edit in edits {
        match kept.last_mut() {
            Some(last) if edit.range.start < last.range.end => {
                // Edits are whole values or parts of one string: one inside another,
                // never across. Should that change, no byte of either survives.
                debug_assert!(edit.range.end <= last.range.end, "{last:?} {edit:?}");
                last.range.end = last.range.end.max(edit.range.end);
            }
            _ => kept.push(edit),
        }
    }
    kept
}

/// `bytes` with the edits (sorted, without overlaps) applied.
pub(crate) fn apply(bytes: &[u8], edits: &[Edit]) -> Vec<u8> {
    let grown: usize = edits.iter().map(|edit| edit.with.len()).sum();
    let mut out = Vec::with_capacity(bytes.len() + grown);
    let mut at = 0;
    for edit in edits {
        out.extend_from_slice(&bytes[at..edit.range.start]);
        out.extend_from_slice(edit.with.as_bytes());
        at = edit.range.end;
    }
    out.extend_from_slice(&bytes[at..]);
    out
}

struct Walker<'r> {
    rules: &'r Rules<'r>,
    edits: Vec<Edit>,
}

impl Walker<'_> {
    fn value(&mut self, node: &Node<'_>, ctx: Ctx) {
        match &node.kind {
            Kind::Str(_) => self.text(node, false),
            Kind::Array(items) => {
                let body = match ctx {
                    Ctx::Body(body) => Some(body),
                    _ => None,
                };
                for item in items {
                    match body {
                        Some(body) if is_patch_op(item) => self.json_patch_op(item, body),
                        _ => self.value(item, Ctx::Plain),
                    }
                }
            }
            Kind::Object(members) => {
                let role = self.role(node, ctx);
                for (key, child) in members {
                    self.member(role, key, child);
                }
            }
            Kind::Scalar(_) | Kind::Null => {}
        }
    }

    fn member(&mut self, role: Role, key: &str, child: &Node<'_>) {
        let enabled = self.rules.enabled;
        match (role, key) {
            (Role::Secret, "data" | "stringData") => self.leaves(child, Detector::SecretData),
            (Role::SecretList, "items") => match &child.kind {
                Kind::Array(items) => {
                    for item in items {
                        self.value(item, Ctx::SecretItem);
                    }
                }
                _ => self.value(child, Ctx::Plain),
            },
            (Role::TokenReview, "spec") => self.value(child, Ctx::TokenOf(Detector::TokenReview)),
            (Role::TokenRequest, "status") => {
                self.value(child, Ctx::TokenOf(Detector::TokenRequest))
            }
            (Role::TokenOf(detector), "token") if is_secret_string(child) => {
                self.whole(child, detector)
            }
            (_, "token" | "client-key-data")
                if enabled.has(Detector::PrivateKey) && is_secret_string(child) =>
            {
                self.whole(child, Detector::PrivateKey)
            }
            (_, LAST_APPLIED) if matches!(child.kind, Kind::Str(_)) => self.embedded(child),
            (_, "env") if enabled.has(Detector::EnvSecret) => self.env_list(child),
            (_, "command" | "args") => self.arguments(child),
            _ => self.value(child, Ctx::Plain),
        }
    }

    fn role(&self, node: &Node<'_>, ctx: Ctx) -> Role {
        let kind = node.member_text("kind");
        let api_version = node.member_text("apiVersion");
        let core = matches!(api_version.as_deref(), None | Some("v1"));
        let authentication = api_version
            .as_deref()
            .is_none_or(|version| version.starts_with("authentication.k8s.io/"));
        let role = match (ctx, kind.as_deref()) {
            (Ctx::TokenOf(detector), _) => Role::TokenOf(detector),
            (Ctx::SecretItem | Ctx::Body(Body::Secret), None) => Role::Secret,
            (Ctx::Body(Body::TokenReview), None) => Role::TokenReview,
            (Ctx::Body(Body::TokenRequest), None) => Role::TokenRequest,
            (_, Some("Secret")) if core => Role::Secret,
            (_, Some("SecretList")) if core => Role::SecretList,
            (_, Some("TokenReview")) if authentication => Role::TokenReview,
            (_, Some("TokenRequest")) if authentication => Role::TokenRequest,
            _ => Role::Plain,
        };
        let on = |detector| self.rules.enabled.has(detector);
        match role {
            Role::Secret | Role::SecretList if !on(Detector::SecretData) => Role::Plain,
            Role::TokenReview | Role::TokenOf(Detector::TokenReview)
                if !on(Detector::TokenReview) =>
            {
                Role::Plain
            }
            Role::TokenRequest | Role::TokenOf(Detector::TokenRequest)
                if !on(Detector::TokenRequest) =>
            {
                Role::Plain
            }
            role => role,
        }
    }

    /// An operation of a JSON patch (`{"op":"replace","path":"/data/x","value":"..."}`):
    /// its `path` says what its `value` is.
    fn json_patch_op(&mut self, op: &Node<'_>, body: Body) {
        let Kind::Object(members) = &op.kind else {
            return self.value(op, Ctx::Plain);
        };
        let path = op.member_text("path").unwrap_or_default();
        let target = patch_target(&path, body, self.rules.enabled);
        for (key, child) in members {
            match (key.as_ref(), target) {
                ("value", PatchTarget::SecretData) => self.leaves(child, Detector::SecretData),
                ("value", PatchTarget::EnvValue) => self.env_value(child),
                ("value", PatchTarget::EnvEntry) if matches!(child.kind, Kind::Object(_)) => {
                    self.env_entry(child)
                }
                ("value", PatchTarget::EnvList) => self.env_list(child),
                ("value", PatchTarget::Arguments) => self.arguments(child),
                ("value", PatchTarget::Argument) if matches!(child.kind, Kind::Str(_)) => {
                    self.text(child, true)
                }
                _ => self.value(child, Ctx::Plain),
            }
        }
    }

    /// A container's `env`: each entry whose `name` says it holds a credential has its
    /// `value` replaced (`valueFrom` holds no secret, and is walked like anything else).
    fn env_list(&mut self, node: &Node<'_>) {
        match &node.kind {
            Kind::Array(items) => {
                for item in items {
                    match item.kind {
                        Kind::Object(_) => self.env_entry(item),
                        _ => self.value(item, Ctx::Plain),
                    }
                }
            }
            _ => self.value(node, Ctx::Plain),
        }
    }

    fn env_entry(&mut self, entry: &Node<'_>) {
        let Kind::Object(members) = &entry.kind else {
            return;
        };
        let credential = entry
            .member_text("name")
            .is_some_and(|name| self.rules.names.matches(&name));
        for (key, child) in members {
            if key == "value" && credential {
                self.env_value(child);
            } else {
                self.value(child, Ctx::Plain);
            }
        }
    }

    /// The value of a credential's env entry: replaced whole, unless it cannot be a
    /// secret (empty, `true`, `false`).
    fn env_value(&mut self, node: &Node<'_>) {
        match node.text() {
            Some(text) if is_secret_value(&text) => self.whole(node, Detector::EnvSecret),
            _ => self.value(node, Ctx::Plain),
        }
    }

    /// A container's `command` or `args`: flags are read along the list, so that the
    /// value of `--password` is the next entry.
    fn arguments(&mut self, node: &Node<'_>) {
        let Kind::Array(items) = &node.kind else {
            return self.value(node, Ctx::Plain);
        };
        let flags = self.rules.enabled.has(Detector::CliSecret);
        let mut awaiting_value = false;
        for item in items {
            let Some(text) = item.text() else {
                self.value(item, Ctx::Plain);
                awaiting_value = false;
                continue;
            };
            if awaiting_value && !is_flag(&text) && is_secret_value(&text) {
                self.whole(item, Detector::CliSecret);
                awaiting_value = false;
                continue;
            }
            self.text(item, flags);
            awaiting_value = flags && self.rules.names.is_bare_flag(&text);
        }
    }

    /// Every scalar under `node` is a secret.
    fn leaves(&mut self, node: &Node<'_>, detector: Detector) {
        match &node.kind {
            Kind::Object(members) => {
                for (_, child) in members {
                    self.leaves(child, detector);
                }
            }
            Kind::Array(items) => {
                for item in items {
                    self.leaves(item, detector);
                }
            }
            Kind::Str([]) => {}
            Kind::Null => {}
            Kind::Str(_) | Kind::Scalar(_) => self.whole(node, detector),
        }
    }

    /// Replaces a whole scalar with the replacement of its text, as a string.
    fn whole(&mut self, node: &Node<'_>, detector: Detector) {
        let secret = match &node.kind {
            Kind::Str(_) => node.text().unwrap_or_default(),
            Kind::Scalar(bytes) => String::from_utf8_lossy(bytes),
            _ => return,
        };
        let mut with = String::with_capacity(30);
        with.push('"');
        self.rules.replacer.push(&secret, &mut with);
        with.push('"');
        self.edits.push(Edit {
            range: node.start..node.end,
            with,
            hits: vec![detector.id()],
        });
    }

    /// The secrets inside a string, each mapped back to the bytes it was written as.
    fn text(&mut self, node: &Node<'_>, flags: bool) {
        let (Kind::Str(raw), Some(text)) = (&node.kind, node.text()) else {
            return;
        };
        let spans = self.rules.text.spans(&text, flags);
        if spans.is_empty() {
            return;
        }
        let inside = node.start + 1;
        let map = match memchr::memchr(b'\\', raw) {
            None => None,
            Some(_) => match raw::decode_mapped(raw) {
                Some((_, map)) => Some(map),
                None => return,
            },
        };
        let at = |offset: usize| inside + map.as_ref().map_or(offset, |map| map[offset]);
        for span in spans {
            let mut with = String::with_capacity(28);
            self.rules
                .replacer
                .push(&text[span.start..span.end], &mut with);
            self.edits.push(Edit {
                range: at(span.start)..at(span.end),
                with,
                hits: vec![span.detector],
            });
        }
    }

    /// A `last-applied-configuration` annotation: a whole manifest as a JSON string. It
    /// is walked like any object, and each of its edits is written back into the
    /// string with the string's escaping.
    fn embedded(&mut self, node: &Node<'_>) {
        let Kind::Str(raw) = &node.kind else {
            return;
        };
        let Some((text, map)) = raw::decode_mapped(raw) else {
            return;
        };
        let inner = match raw::parse(text.as_bytes()) {
            Some(
                inner @ Node {
                    kind: Kind::Object(_) | Kind::Array(_),
                    ..
                },
            ) => inner,
            _ => return self.text(node, false),
        };
        let mut walker = Walker {
            rules: self.rules,
            edits: Vec::new(),
        };
        walker.value(&inner, Ctx::Body(Body::Plain));
        let inside = node.start + 1;
        for edit in settle(walker.edits) {
            let mut with = String::with_capacity(edit.with.len() + 4);
            raw::push_escaped(&edit.with, &mut with);
            self.edits.push(Edit {
                range: inside + map[edit.range.start]..inside + map[edit.range.end],
                with,
                hits: edit.hits,
            });
        }
    }

    /// A `fields` path (after its top-level key), with the condition language's
    /// semantics: a segment of digits indexes an array, any other segment applies to
    /// every element. Every copy of a repeated key is followed.
    fn field(&mut self, node: &Node<'_>, rest: &[String]) {
        let Some((segment, tail)) = rest.split_first() else {
            return self.leaves(node, Detector::Fields);
        };
        match &node.kind {
            Kind::Object(members) => {
                for (_, child) in members.iter().filter(|(key, _)| key == segment) {
                    self.field(child, tail);
                }
            }
            Kind::Array(items) => match segment.parse::<usize>() {
                Ok(index) => {
                    if let Some(item) = items.get(index) {
                        self.field(item, tail);
                    }
                }
                Err(_) => {
                    for item in items {
                        self.field(item, rest);
                    }
                }
            },
            _ => {}
        }
    }
}

fn is_secret_string(node: &Node<'_>) -> bool {
    matches!(node.kind, Kind::Str(raw) if !raw.is_empty())
}

/// `{"op": ..., "path": ...}`.
fn is_patch_op(node: &Node<'_>) -> bool {
    node.member_text("op").is_some() && node.member_text("path").is_some()
}

/// What the `value` of a JSON patch operation is, by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatchTarget {
    Plain,
    /// Under a Secret's `data`/`stringData`.
    SecretData,
    /// `.../env/0/value`: the entry's name is not in the patch, so the value is taken
    /// for a credential.
    EnvValue,
    /// `.../env/0` or `.../env/-`: one entry.
    EnvEntry,
    /// `.../env`: the list.
    EnvList,
    /// `.../command` or `.../args`: the list.
    Arguments,
    /// `.../args/0`: one entry.
    Argument,
}

fn patch_target(path: &str, body: Body, enabled: &Enabled) -> PatchTarget {
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    if body == Body::Secret && (under("/data") || under("/stringData")) {
        return PatchTarget::SecretData;
    }
    let segments: Vec<&str> = path.rsplit('/').take(3).collect();
    let is_index = |segment: &str| {
        segment == "-" || (!segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()))
    };
    let env = enabled.has(Detector::EnvSecret);
    match segments.as_slice() {
        ["value", index, "env"] if env && is_index(index) => PatchTarget::EnvValue,
        [index, "env", ..] if env && is_index(index) => PatchTarget::EnvEntry,
        ["env", ..] if env => PatchTarget::EnvList,
        ["command" | "args", ..] => PatchTarget::Arguments,
        [index, "command" | "args", ..] if is_index(index) => PatchTarget::Argument,
        _ => PatchTarget::Plain,
    }
}
