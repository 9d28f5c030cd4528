//! `redact` transform: finds secrets anywhere in an audit event (TokenReview and
//! TokenRequest tokens, Secret data, JWTs, bearer and basic credentials, bootstrap
//! tokens, private keys, passwords in URLs, and the user's own patterns and paths) and
//! replaces them, keeping the event valid JSON with the same structure.
//!
//! # Layout
//! - this module: the options, and the transform that applies them to each event.
//! - [`prefilter`]: the cheap test on raw bytes that keeps almost every event from being
//!   parsed at all, and why JSON escapes cannot sneak a secret past it.
//! - [`detector`]: detector names, the detectors that read inside strings, and what a
//!   secret is replaced with (`[REDACTED]` or a keyed hash).
//! - [`walk`]: the walk over one parsed field that finds secrets by position (a Secret's
//!   `data`, a TokenReview's `spec.token`, ...) and by shape, as a list of edits.
//!
//! # The one design decision
//! Work per top-level field, on raw bytes first. An event whose bytes show no marker of
//! any secret is passed on untouched (its bytes are not even parsed); otherwise only the
//! top-level fields that show one are parsed and walked, and only a field that really
//! holds a secret is changed, so every other field keeps its original bytes.

mod detector;
mod prefilter;
mod walk;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use auditflow_config::types::Pattern;
use auditflow_core::condition::Path;
use auditflow_core::{
    Batch, BuildContext, BuildError, Event, Telemetry, Transform, TransformConfig, Validate,
};
use prometheus::IntCounter;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use detector::{CustomPattern, Detector, Enabled, Replacer, TextDetectors, MASK};
use prefilter::Prefilter;
use walk::{Body, Rules};

/// The annotation listing the detectors that fired on an event.
pub const REDACTED_ANNOTATION: &str = "auditflow.io/redacted";

/// Finds secrets in audit events and replaces them.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedactConfig {
    /// The built-in detectors, all on by default; turn one off by name, for instance
    /// `detectors: { bootstrap_token: false }`.
    #[serde(default)]
    pub detectors: DetectorsConfig,
    /// Extra detectors: a name (letters, digits, `_`, `-`) and a regex applied to every
    /// string value. The whole match is replaced, or only its `secret` group when the
    /// regex has one (`password=(?P<secret>[^&]+)`). The name labels the metric and the
    /// annotation.
    #[serde(default)]
    pub patterns: BTreeMap<String, Pattern>,
    /// Paths whose values are always replaced, in the condition language's syntax
    /// (`requestObject.spec.password`, `annotations."example.com/key"`): a segment of
    /// digits indexes an array, any other segment applies to every element; every
    /// string, number and boolean under the path is replaced.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub fields: Vec<Path>,
    /// `mask` replaces a secret with `[REDACTED]`; `hash` with
    /// `hmac-sha256:<16 hex digits>` keyed by `hash_key`, so that the same token can be
    /// followed across events without being readable.
    #[serde(default)]
    pub mode: Mode,
    /// The HMAC key for `mode: hash` (required then). Keep it out of the file:
    /// `hash_key: ${REDACT_HASH_KEY}`.
    #[serde(default)]
    pub hash_key: Option<HashKey>,
}

/// Each built-in detector, on (`true`, the default) or off.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DetectorsConfig {
    /// `spec.token` of `authentication.k8s.io` TokenReview requests and responses.
    #[serde(default = "on")]
    pub token_review: bool,
    /// `status.token` of `serviceaccounts/token` (TokenRequest) responses.
    #[serde(default = "on")]
    pub token_request: bool,
    /// Every value under `data` and `stringData` of Secrets: single Secrets, SecretList
    /// items, patches of Secrets, and Secrets inside `last-applied-configuration`.
    #[serde(default = "on")]
    pub secret_data: bool,
    /// JWTs (`eyJ...`.`...`.`...`) in any string, such as service-account tokens.
    #[serde(default = "on")]
    pub jwt: bool,
    /// `Bearer <token>` and `Basic <base64 of user:password>` in any string.
    #[serde(default = "on")]
    pub bearer: bool,
    /// Kubernetes bootstrap tokens (`abcdef.0123456789abcdef`) in any string.
    #[serde(default = "on")]
    pub bootstrap_token: bool,
    /// PEM private-key blocks, and kubeconfig `client-key-data` / `token` values (as
    /// JSON keys, or as YAML or JSON inside a string).
    #[serde(default = "on")]
    pub private_key: bool,
    /// The password in `scheme://user:password@host`.
    #[serde(default = "on")]
    pub url_credentials: bool,
}

fn on() -> bool {
    true
}

impl Default for DetectorsConfig {
    fn default() -> DetectorsConfig {
        DetectorsConfig {
            token_review: true,
            token_request: true,
            secret_data: true,
            jwt: true,
            bearer: true,
            bootstrap_token: true,
            private_key: true,
            url_credentials: true,
        }
    }
}

impl DetectorsConfig {
    fn enabled(&self) -> Enabled {
        let mut enabled = Enabled::all();
        for (detector, on) in [
            (Detector::TokenReview, self.token_review),
            (Detector::TokenRequest, self.token_request),
            (Detector::SecretData, self.secret_data),
            (Detector::Jwt, self.jwt),
            (Detector::Bearer, self.bearer),
            (Detector::BootstrapToken, self.bootstrap_token),
            (Detector::PrivateKey, self.private_key),
            (Detector::UrlCredentials, self.url_credentials),
        ] {
            enabled.set(detector, on);
        }
        enabled
    }
}

/// What a secret is replaced with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `[REDACTED]`.
    #[default]
    Mask,
    /// `hmac-sha256:<first 16 hex digits>` of the secret, keyed by `hash_key`.
    Hash,
}

/// A key that never shows in logs or `Debug` output.
#[derive(Clone, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct HashKey(String);

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey(<hidden>)")
    }
}

impl Validate for RedactConfig {
    fn validate(&self) -> Vec<BuildError> {
        let mut errors = Vec::new();
        match (self.mode, &self.hash_key) {
            (Mode::Hash, None) => errors.push(BuildError::field(
                "hash_key",
                "mode: hash needs a hash_key (for instance hash_key: ${REDACT_HASH_KEY})",
            )),
            (Mode::Hash, Some(key)) if key.0.is_empty() => errors.push(BuildError::field(
                "hash_key",
                "the hash key is empty (is the environment variable set?)",
            )),
            (Mode::Mask, Some(_)) => errors.push(BuildError::field(
                "hash_key",
                "hash_key is only used with mode: hash; set mode: hash or remove it",
            )),
            _ => {}
        }
        for name in self.patterns.keys() {
            let valid_chars = name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
            if name.is_empty() || !valid_chars {
                errors.push(BuildError::field(
                    format!("patterns.{name}"),
                    "a pattern name is letters, digits, `_` and `-` (it labels a metric)",
                ));
            } else if Detector::ALL.iter().any(|detector| detector.name() == name) {
                errors.push(BuildError::field(
                    format!("patterns.{name}"),
                    "this name is a built-in detector's; choose another",
                ));
            }
        }
        errors
    }
}

impl TransformConfig for RedactConfig {
    fn build(&self, cx: BuildContext) -> Result<Box<dyn Transform>, BuildError> {
        if let Some(error) = self.validate().into_iter().next() {
            return Err(error);
        }
        let redactor = Redactor::new(self);
        let counters = redactor
            .names
            .iter()
            .map(|name| auditflow_metrics::redactions_total().with_label_values(&[&cx.id, name]))
            .collect();
        Ok(Box::new(Redact {
            counts: vec![0; redactor.names.len()],
            redactor,
            counters,
            id: cx.id,
            telemetry: cx.telemetry,
        }))
    }
}

struct Redact {
    redactor: Redactor,
    /// `auditflow_redactions_total` per detector, resolved once.
    counters: Vec<IntCounter>,
    /// This batch's counts per detector.
    counts: Vec<u64>,
    id: String,
    telemetry: Arc<dyn Telemetry>,
}

impl Transform for Redact {
    fn transform(&mut self, batch: &mut Batch) {
        for event in &mut batch.events {
            let outcome = self.redactor.redact(event, &mut self.counts);
            if outcome.unparseable > 0 {
                tracing::warn!(
                    component_id = %self.id,
                    fields = outcome.unparseable,
                    "a field that may hold a secret could not be parsed (a number out of \
                     range?); the whole field was replaced with [REDACTED]"
                );
                self.telemetry
                    .errored("unparseable_field", outcome.unparseable);
            }
        }
        for (counter, count) in self.counters.iter().zip(&mut self.counts) {
            if *count > 0 {
                counter.inc_by(std::mem::take(count));
            }
        }
    }
}

/// What happened to one event.
#[derive(Debug, Default)]
struct Outcome {
    /// Candidate fields that could not be parsed, replaced whole.
    unparseable: usize,
}

/// The options compiled: everything needed to redact an event, without the metrics.
struct Redactor {
    enabled: Enabled,
    text: TextDetectors,
    replacer: Replacer,
    fields: Vec<Path>,
    /// Detector names by id: the built-ins, then the custom patterns.
    names: Vec<String>,
}

impl Redactor {
    fn new(config: &RedactConfig) -> Redactor {
        let mut enabled = config.detectors.enabled();
        enabled.set(Detector::Fields, !config.fields.is_empty());
        let mut names: Vec<String> = Detector::ALL
            .iter()
            .map(|detector| detector.name().to_owned())
            .collect();
        let mut custom = Vec::new();
        for (name, pattern) in &config.patterns {
            let regex = pattern.as_regex().clone();
            let group = regex
                .capture_names()
                .position(|group| group == Some("secret"));
            custom.push(CustomPattern {
                id: names.len(),
                regex,
                group,
            });
            names.push(name.clone());
        }
        let sources: Vec<&str> = config.patterns.values().map(|p| p.as_str()).collect();
        let prefilter = Prefilter::new(&enabled, &sources);
        let replacer = match (&config.mode, &config.hash_key) {
            (Mode::Hash, Some(key)) => Replacer::hash(key.0.as_bytes()),
            _ => Replacer::Mask,
        };
        Redactor {
            enabled,
            text: TextDetectors::new(&enabled, prefilter, custom),
            replacer,
            fields: config.fields.clone(),
            names,
        }
    }

    /// Redacts one event in place, adding each secret's detector to `counts`.
    fn redact(&self, event: &mut Event, counts: &mut [u64]) -> Outcome {
        let mut outcome = Outcome::default();
        // The common case: one scan over the bytes as they arrived.
        if !event.is_modified()
            && self.fields.is_empty()
            && !self.text.prefilter().hit(event.raw())
            && !self.may_be_secret_body(event)
        {
            return outcome;
        }

        let rules = Rules {
            enabled: &self.enabled,
            text: &self.text,
            replacer: &self.replacer,
        };
        let mut body: Option<Body> = None;
        let mut planned: Vec<(String, Option<Vec<walk::Edit>>)> = Vec::new();
        for key in event.keys() {
            if planned.iter().any(|(done, _)| done == key) {
                continue;
            }
            let is_body = key == "requestObject" || key == "responseObject";
            let fields: Vec<&Path> = self
                .fields
                .iter()
                .filter(|path| path.segments()[0] == key)
                .collect();
            let candidate = match event.raw_field(key) {
                // Changed upstream: already parsed, nothing to save.
                None => true,
                Some(raw) => {
                    !fields.is_empty()
                        || self.text.prefilter().hit(raw)
                        || (is_body && self.may_be_secret_body(event))
                }
            };
            if !candidate {
                continue;
            }
            let Some(value) = event.get(key) else {
                planned.push((key.to_owned(), None));
                continue;
            };
            let body = match is_body {
                true => *body.get_or_insert_with(|| self.body_of(event)),
                false => Body::Plain,
            };
            let edits = walk::edits(&rules, value, body, &fields);
            if !edits.is_empty() {
                planned.push((key.to_owned(), Some(edits)));
            }
        }
        if planned.is_empty() {
            return outcome;
        }

        let mut fired = vec![false; self.names.len()];
        for (key, edits) in planned {
            let Some(edits) = edits else {
                outcome.unparseable += 1;
                replace_field(event, &key, Value::String(MASK.to_owned()));
                continue;
            };
            for &hit in edits.iter().flat_map(|edit| &edit.hits) {
                counts[hit] += 1;
                fired[hit] = true;
            }
            if event.keys().filter(|other| *other == key).count() > 1 {
                // A repeated key: every copy goes, the redacted last one (the one JSON
                // parsers keep) comes back.
                let mut value = event.get(&key).cloned().unwrap_or(Value::Null);
                walk::apply(&mut value, edits);
                replace_field(event, &key, value);
            } else if let Some(value) = event.get_mut(&key) {
                walk::apply(value, edits);
            }
        }
        self.annotate(event, &fired);
        outcome
    }

    /// Whether the event could carry a Secret in a body without any marker in it (a JSON
    /// patch: `[{"op":"replace","path":"/data/x","value":"..."}]`).
    fn may_be_secret_body(&self, event: &Event) -> bool {
        self.enabled.has(Detector::SecretData)
            && event
                .raw_field("objectRef")
                .is_none_or(prefilter::may_name_secrets)
            && (event.raw_field("requestObject").is_some()
                || event.raw_field("responseObject").is_some())
    }

    /// What `objectRef` says the bodies are.
    fn body_of(&self, event: &Event) -> Body {
        let field = |name| {
            event
                .get_path(["objectRef", name])
                .and_then(Value::as_str)
                .unwrap_or("")
        };
        match (field("resource"), field("subresource"), field("apiGroup")) {
            ("secrets", "", "") => Body::Secret,
            ("tokenreviews", "", "authentication.k8s.io") => Body::TokenReview,
            ("serviceaccounts", "token", "") => Body::TokenRequest,
            _ => Body::Plain,
        }
    }

    /// Adds the detectors that fired to `auditflow.io/redacted`, merged with what an
    /// earlier `redact` put there, sorted.
    fn annotate(&self, event: &mut Event, fired: &[bool]) {
        if !fired.contains(&true) {
            return;
        }
        let annotations = event.annotations_mut();
        let mut names: Vec<&str> = self
            .names
            .iter()
            .zip(fired)
            .filter(|(_, fired)| **fired)
            .map(|(name, _)| name.as_str())
            .collect();
        let earlier = annotations
            .get(REDACTED_ANNOTATION)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_default();
        names.extend(earlier.split(',').filter(|name| !name.is_empty()));
        names.sort_unstable();
        names.dedup();
        let value = names.join(",");
        annotations.insert(REDACTED_ANNOTATION.to_owned(), Value::String(value));
    }
}

/// Replaces every copy of a top-level field with one value.
fn replace_field(event: &mut Event, key: &str, value: Value) {
    while event.keys().any(|other| other == key) {
        event.remove(key);
    }
    event.insert(key, value);
}

#[cfg(test)]
mod tests;
