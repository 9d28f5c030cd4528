//! Finding the secrets in one parsed top-level field, as a list of edits.
//!
//! The walk reads the value and records what to change (a path and a new value) instead
//! of changing it: a candidate field without a secret is then never taken out of the
//! event, so its original bytes are written unchanged.

use auditflow_core::condition::Path;
use serde_json::{Map, Value};

use crate::detector::{Detector, Enabled, Replacer, TextDetectors};

/// The annotation kubectl stores the applied manifest in (a JSON string).
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// One step into a JSON value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

#[derive(Debug, Clone, Copy)]
enum SegRef<'a> {
    Key(&'a str),
    Index(usize),
}

/// A change to one value (always a leaf: a string, number or boolean).
#[derive(Debug, Clone)]
pub(crate) struct Edit {
    pub(crate) path: Vec<Seg>,
    pub(crate) value: Value,
    /// The detector of each secret replaced.
    pub(crate) hits: Vec<usize>,
    /// The whole value was replaced (rather than a part of a string).
    whole: bool,
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
}

/// Walks one top-level field and returns its edits, deduplicated.
pub(crate) fn edits(rules: &Rules<'_>, value: &Value, body: Body, fields: &[&Path]) -> Vec<Edit> {
    let mut walker = Walker {
        rules,
        path: Vec::new(),
        edits: Vec::new(),
    };
    walker.value(value, Ctx::Body(body));
    for field in fields {
        walker.field(value, &field.segments()[1..]);
    }
    let mut edits = walker.edits;
    // One leaf can be found twice (a `fields` path over a string a detector also
    // matched): the whole replacement wins.
    edits.sort_by(|a, b| a.path.cmp(&b.path).then(b.whole.cmp(&a.whole)));
    edits.dedup_by(|later, kept| later.path == kept.path);
    edits
}

/// Applies edits to the value they were found in.
pub(crate) fn apply(value: &mut Value, edits: Vec<Edit>) {
    for edit in edits {
        let mut target = &mut *value;
        for seg in &edit.path {
            let next = match (target, seg) {
                (Value::Object(map), Seg::Key(key)) => map.get_mut(key.as_str()),
                (Value::Array(items), Seg::Index(index)) => items.get_mut(*index),
                _ => None,
            };
            match next {
                Some(next) => target = next,
                None => unreachable!("edit paths come from walking this value"),
            }
        }
        *target = edit.value;
    }
}

struct Walker<'r, 'a> {
    rules: &'r Rules<'r>,
    path: Vec<SegRef<'a>>,
    edits: Vec<Edit>,
}

impl<'a> Walker<'_, 'a> {
    fn value(&mut self, value: &'a Value, ctx: Ctx) {
        match value {
            Value::String(text) => self.text(text),
            Value::Array(items) => {
                let patch = matches!(ctx, Ctx::Body(Body::Secret));
                for (index, item) in items.iter().enumerate() {
                    self.path.push(SegRef::Index(index));
                    match item {
                        Value::Object(op) if patch && patches_secret_data(op) => {
                            self.json_patch_op(op)
                        }
                        item => self.value(item, Ctx::Plain),
                    }
                    self.path.pop();
                }
            }
            Value::Object(map) => self.object(map, ctx),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    fn object(&mut self, map: &'a Map<String, Value>, ctx: Ctx) {
        let role = self.role(map, ctx);
        let enabled = self.rules.enabled;
        for (key, child) in map {
            self.path.push(SegRef::Key(key));
            match (role, key.as_str()) {
                (Role::Secret, "data" | "stringData") => self.leaves(child, Detector::SecretData),
                (Role::SecretList, "items") => match child {
                    Value::Array(items) => {
                        for (index, item) in items.iter().enumerate() {
                            self.path.push(SegRef::Index(index));
                            self.value(item, Ctx::SecretItem);
                            self.path.pop();
                        }
                    }
                    child => self.value(child, Ctx::Plain),
                },
                (Role::TokenReview, "spec") => {
                    self.value(child, Ctx::TokenOf(Detector::TokenReview))
                }
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
                (_, LAST_APPLIED) => match child {
                    Value::String(text) => self.embedded(text),
                    child => self.value(child, Ctx::Plain),
                },
                _ => self.value(child, Ctx::Plain),
            }
            self.path.pop();
        }
    }

    fn role(&self, map: &Map<String, Value>, ctx: Ctx) -> Role {
        let kind = map.get("kind").and_then(Value::as_str);
        let api_version = map.get("apiVersion").and_then(Value::as_str);
        let core = matches!(api_version, None | Some("v1"));
        let authentication =
            api_version.is_none_or(|version| version.starts_with("authentication.k8s.io/"));
        let role = match (ctx, kind) {
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

    /// A JSON patch operation on a Secret's `data`/`stringData`: its `value` is secret.
    fn json_patch_op(&mut self, op: &'a Map<String, Value>) {
        for (key, child) in op {
            self.path.push(SegRef::Key(key));
            if key == "value" {
                self.leaves(child, Detector::SecretData);
            } else {
                self.value(child, Ctx::Plain);
            }
            self.path.pop();
        }
    }

    /// Every scalar under `value` is a secret.
    fn leaves(&mut self, value: &'a Value, detector: Detector) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    self.path.push(SegRef::Key(key));
                    self.leaves(child, detector);
                    self.path.pop();
                }
            }
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    self.path.push(SegRef::Index(index));
                    self.leaves(item, detector);
                    self.path.pop();
                }
            }
            Value::String(text) if text.is_empty() => {}
            Value::Null => {}
            value => self.whole(value, detector),
        }
    }

    fn whole(&mut self, value: &Value, detector: Detector) {
        let replacement = match value {
            Value::String(text) => self.rules.replacer.replace(text),
            other => self.rules.replacer.replace(&other.to_string()),
        };
        self.push_edit(Value::String(replacement), vec![detector.id()], true);
    }

    fn text(&mut self, text: &str) {
        if let Some((redacted, hits)) = self.rules.text.redact(text, self.rules.replacer) {
            self.push_edit(Value::String(redacted), hits, false);
        }
    }

    /// A `last-applied-configuration` annotation: a whole manifest as a JSON string. It
    /// is parsed, walked like any object, and written back (compact, keeping kubectl's
    /// trailing newline) only when something in it changed.
    fn embedded(&mut self, text: &str) {
        let Ok(mut inner) = serde_json::from_str::<Value>(text) else {
            return self.text(text);
        };
        if !inner.is_object() && !inner.is_array() {
            return self.text(text);
        }
        let edits = edits(self.rules, &inner, Body::Plain, &[]);
        if edits.is_empty() {
            return;
        }
        let hits = edits
            .iter()
            .flat_map(|edit| edit.hits.iter().copied())
            .collect();
        apply(&mut inner, edits);
        let mut rewritten = inner.to_string();
        if text.ends_with('\n') {
            rewritten.push('\n');
        }
        self.push_edit(Value::String(rewritten), hits, false);
    }

    /// A `fields` path (after its top-level key), with the condition language's
    /// semantics: a segment of digits indexes an array, any other segment applies to
    /// every element.
    fn field(&mut self, value: &'a Value, rest: &[String]) {
        let Some((segment, tail)) = rest.split_first() else {
            return self.leaves(value, Detector::Fields);
        };
        match value {
            Value::Object(map) => {
                if let Some((key, child)) = map.get_key_value(segment.as_str()) {
                    self.path.push(SegRef::Key(key));
                    self.field(child, tail);
                    self.path.pop();
                }
            }
            Value::Array(items) => match segment.parse::<usize>() {
                Ok(index) => {
                    if let Some(item) = items.get(index) {
                        self.path.push(SegRef::Index(index));
                        self.field(item, tail);
                        self.path.pop();
                    }
                }
                Err(_) => {
                    for (index, item) in items.iter().enumerate() {
                        self.path.push(SegRef::Index(index));
                        self.field(item, rest);
                        self.path.pop();
                    }
                }
            },
            _ => {}
        }
    }

    fn push_edit(&mut self, value: Value, hits: Vec<usize>, whole: bool) {
        let path = self
            .path
            .iter()
            .map(|seg| match seg {
                SegRef::Key(key) => Seg::Key((*key).to_owned()),
                SegRef::Index(index) => Seg::Index(*index),
            })
            .collect();
        self.edits.push(Edit {
            path,
            value,
            hits,
            whole,
        });
    }
}

fn is_secret_string(value: &Value) -> bool {
    matches!(value, Value::String(text) if !text.is_empty())
}

/// `{"op":"replace","path":"/data/password","value":"..."}` and the like.
fn patches_secret_data(op: &Map<String, Value>) -> bool {
    let Some(Value::String(path)) = op.get("path") else {
        return false;
    };
    ["/data", "/stringData"].iter().any(|prefix| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}
