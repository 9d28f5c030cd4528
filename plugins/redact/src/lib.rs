//! `redact` transform: finds secrets anywhere in an audit event (TokenReview and
//! TokenRequest tokens, Secret data, JWTs, bearer and basic credentials, bootstrap
//! tokens, private keys, passwords in URLs, credentials in containers' `env` and
//! command-line flags, well-known vendor token formats, and the user's own patterns and
//! paths) and replaces them, keeping the event valid JSON with the same structure.
//!
//! # Layout
//! - this module: the options, and the transform that applies them to each event.
//! - [`prefilter`]: the cheap test on raw bytes that keeps almost every event from being
//!   parsed at all, and why JSON escapes cannot sneak a secret past it.
//! - [`detector`]: detector names, the detectors that read inside strings, and what a
//!   secret is replaced with (`[REDACTED]` or a keyed hash).
//! - [`credential`]: names that say they hold a credential (`DB_PASSWORD`,
//!   `--github-token`), and the values of flags so named.
//! - [`raw`]: a borrowed view of a field's JSON bytes, with the byte range of every value.
//! - [`walk`]: the walk over one field that finds secrets by position (a Secret's
//!   `data`, a TokenReview's `spec.token`, an `env` entry, ...) and by shape, as byte
//!   ranges to replace.
//!
//! # The one design decision
//! Work per top-level field, on raw bytes only. An event whose bytes show no marker of
//! any secret is passed on untouched (its bytes are not even parsed); otherwise only the
//! top-level fields that show one are read, and a field that really holds a secret gets
//! the secret's characters spliced out of its bytes, so every other byte of the event
//! (numbers, escapes, spacing, the other annotations) stays as it came.

mod credential;
mod detector;
mod prefilter;
mod raw;
mod walk;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use auditflow_config::types::Pattern;
use auditflow_core::condition::Path;
use auditflow_core::{
    Batch, BuildContext, BuildError, CompileOnce, Event, Telemetry, Transform, TransformConfig,
    Validate,
};
use bytes::Bytes;
use prometheus::IntCounter;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use credential::CredentialNames;
use detector::{CustomPattern, Detector, Enabled, Replacer, TextDetectors, MASK};
use prefilter::Prefilter;
use walk::{Body, Rules};

/// The annotation listing the detectors that fired on an event.
pub const REDACTED_ANNOTATION: &str = "auditflow.io/redacted";

/// Finds secrets in audit events and replaces them.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedactConfig {
    /// What `validate` compiled when the pipeline loaded, for `build` to take.
    #[serde(skip)]
    #[schemars(skip)]
    compiled: CompileOnce<Redactor>,
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
    /// The names that say they hold a credential, for `env_secret` (an `env` entry's
    /// `name`) and `cli_secret` (a flag's name).
    #[serde(default)]
    pub credential_names: CredentialNamesConfig,
}

/// The rule that says a name holds a credential. A name is cut into words at `_`, `-`,
/// `.` and lower-to-upper case changes, and compared without case.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialNamesConfig {
    /// A name whose last word is one of these holds a credential: `DB_PASSWORD`,
    /// `--github-token`, `clientSecret` (but not `TOKEN_TTL` nor `AUTHOR`).
    #[serde(default = "default_last_words")]
    pub last_words: Vec<String>,
    /// A name that ends with one of these (as words) holds a credential:
    /// `api_key` matches `OPENAI_API_KEY`, `--api-key` and `apiKey`.
    #[serde(default = "default_endings")]
    pub endings: Vec<String>,
}

fn default_last_words() -> Vec<String> {
    credential::LAST_WORDS.map(str::to_owned).to_vec()
}

fn default_endings() -> Vec<String> {
    credential::ENDINGS.map(str::to_owned).to_vec()
}

impl Default for CredentialNamesConfig {
    fn default() -> CredentialNamesConfig {
        CredentialNamesConfig {
            last_words: default_last_words(),
            endings: default_endings(),
        }
    }
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
    /// The `value` of a container's `env` entry whose `name` says it holds a credential
    /// (see `credential_names`), in Pods, workload templates, lists, patches and
    /// `last-applied-configuration`. `valueFrom` references are left alone.
    #[serde(default = "on")]
    pub env_secret: bool,
    /// The value of a command-line flag in a container's `command`/`args` whose name
    /// says it holds a credential: `--api-key=x`, `--password` then `x`, and
    /// `sh -c "... --token=x ..."`.
    #[serde(default = "on")]
    pub cli_secret: bool,
    /// Well-known vendor token formats in any string: GitHub (`ghp_`, `github_pat_`, ...),
    /// GitLab (`glpat-`), Slack (`xoxb-`, ...), AWS key ids (`AKIA`, `ASIA`) and secret
    /// keys beside `aws_secret_access_key`, Google API keys (`AIza`), Stripe live keys
    /// (`sk_live_`, `rk_live_`).
    #[serde(default = "on")]
    pub known_tokens: bool,
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
            env_secret: true,
            cli_secret: true,
            known_tokens: true,
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
            (Detector::EnvSecret, self.env_secret),
            (Detector::CliSecret, self.cli_secret),
            (Detector::KnownTokens, self.known_tokens),
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

impl RedactConfig {
    /// The options compiled into what redacts events, or every problem with them, each
    /// naming its field. The one step behind both `validate` and `build`.
    fn compile(&self) -> Result<Redactor, Vec<BuildError>> {
        let mut errors = self.option_errors();
        match Redactor::new(self) {
            Ok(redactor) if errors.is_empty() => return Ok(redactor),
            Ok(_) => {}
            Err(error) => errors.push(error),
        }
        Err(errors)
    }

    /// What is wrong with the options taken one by one.
    fn option_errors(&self) -> Vec<BuildError> {
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
        let lists = [
            ("last_words", &self.credential_names.last_words),
            ("endings", &self.credential_names.endings),
        ];
        for (list, words) in lists {
            for (index, word) in words.iter().enumerate() {
                let valid = word.bytes().any(|byte| byte.is_ascii_alphanumeric())
                    && word
                        .bytes()
                        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
                if !valid {
                    errors.push(BuildError::field(
                        format!("credential_names.{list}[{index}]"),
                        format!(
                            "{word:?} is not a word of a name: use letters and digits, with \
                             `_` or `-` between words (for instance `api_key`)"
                        ),
                    ));
                }
            }
        }
        errors
    }
}

impl Validate for RedactConfig {
    fn validate(&self) -> Vec<BuildError> {
        self.compiled.validate(|| self.compile())
    }
}

impl TransformConfig for RedactConfig {
    fn build(&self, cx: BuildContext) -> Result<Box<dyn Transform>, BuildError> {
        // `validate` has reported every problem when the pipeline loaded; the first is
        // enough here.
        let redactor = self.compiled.take(|| self.compile())?;
        let counters = redactor
            .detector_names
            .iter()
            .map(|name| cx.metrics.redactions(name))
            .collect();
        // At zero from the start, like the engine's own series: a dashboard or an alert
        // on it finds the series before the first error, not a gap.
        cx.telemetry.errored(UNPARSEABLE_FIELD, 0);
        Ok(Box::new(Redact {
            counts: vec![0; redactor.detector_names.len()],
            redactor: Arc::new(redactor),
            counters,
            id: cx.id,
            telemetry: cx.telemetry,
        }))
    }
}

/// The `error_type` of a candidate field too deeply nested to read, replaced whole.
const UNPARSEABLE_FIELD: &str = "unparseable_field";

struct Redact {
    /// Compiled once, shared by the copies that run batches at the same time.
    redactor: Arc<Redactor>,
    /// `auditflow_redactions_total` per detector, resolved once.
    counters: Vec<IntCounter>,
    /// This batch's counts per detector.
    counts: Vec<u64>,
    id: String,
    telemetry: Arc<dyn Telemetry>,
}

impl Transform for Redact {
    fn fork(&self) -> Option<Box<dyn Transform>> {
        Some(Box::new(Redact {
            redactor: Arc::clone(&self.redactor),
            counters: self.counters.clone(),
            counts: vec![0; self.counts.len()],
            id: self.id.clone(),
            telemetry: Arc::clone(&self.telemetry),
        }))
    }

    fn transform(&mut self, batch: &mut Batch) {
        for event in &mut batch.events {
            let outcome = self.redactor.redact(event, &mut self.counts);
            if outcome.unparseable > 0 {
                tracing::warn!(
                    component_id = %self.id,
                    fields = outcome.unparseable,
                    "a field that may hold a secret is nested too deep to be read \
                     (over 10,000 levels); the whole field was replaced with [REDACTED]"
                );
                self.telemetry
                    .errored(UNPARSEABLE_FIELD, outcome.unparseable);
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
    /// Candidate fields that could not be read (nested too deep), replaced whole.
    unparseable: usize,
}

/// The options compiled: everything needed to redact an event, without the metrics.
struct Redactor {
    enabled: Enabled,
    text: TextDetectors,
    replacer: Replacer,
    names: CredentialNames,
    fields: Vec<Path>,
    /// Detector names by id: the built-ins, then the custom patterns.
    detector_names: Vec<String>,
}

/// Why the custom patterns could not be compiled together: each compiled alone when the
/// pipeline loaded, but the prefilter's set is the sum of them.
fn patterns_error(error: regex::Error) -> BuildError {
    let message = match error {
        regex::Error::CompiledTooBig(limit) => format!(
            "the patterns together compile past the regex size limit of {} MiB: \
             use fewer or smaller patterns (a large repetition count such as `{{1000}}`, or \
             a Unicode class such as `\\w` repeated, makes a pattern large; `[A-Za-z0-9_]` \
             or a smaller count keeps it small)",
            limit / (1024 * 1024)
        ),
        other => format!("the patterns cannot be compiled together: {other}"),
    };
    BuildError::field("patterns", message)
}

/// What to do with one top-level field.
enum Plan {
    /// Could not be read: replaced whole.
    Unreadable,
    /// Its new bytes, and the detector of each secret replaced in it.
    Rewrite(Vec<u8>, Vec<usize>),
}

impl Redactor {
    /// Compiles the options. Fails when the custom patterns, compiled together for the
    /// prefilter, pass the regex size limit.
    fn new(config: &RedactConfig) -> Result<Redactor, BuildError> {
        let mut enabled = config.detectors.enabled();
        enabled.set(Detector::Fields, !config.fields.is_empty());
        let mut detector_names: Vec<String> = Detector::ALL
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
                id: detector_names.len(),
                regex,
                group,
            });
            detector_names.push(name.clone());
        }
        let names = CredentialNames::new(
            &config.credential_names.last_words,
            &config.credential_names.endings,
        );
        let sources: Vec<&str> = config.patterns.values().map(|p| p.as_str()).collect();
        let prefilter = Prefilter::new(&enabled, &names, &sources).map_err(patterns_error)?;
        let replacer = match (&config.mode, &config.hash_key) {
            (Mode::Hash, Some(key)) => Replacer::hash(key.0.as_bytes()),
            _ => Replacer::Mask,
        };
        Ok(Redactor {
            enabled,
            text: TextDetectors::new(&enabled, prefilter, &names, custom),
            replacer,
            names,
            fields: config.fields.clone(),
            detector_names,
        })
    }

    /// Redacts one event in place, adding each secret's detector to `counts`.
    fn redact(&self, event: &mut Event, counts: &mut [u64]) -> Outcome {
        let mut outcome = Outcome::default();
        // The common case: one scan over the bytes as they arrived.
        if !event.is_modified()
            && self.fields.is_empty()
            && !self.text.prefilter().hit(event.raw())
            && !self.may_be_secret_body(event)
            && !self.may_be_container_patch(event)
        {
            return outcome;
        }

        let rules = Rules {
            enabled: &self.enabled,
            text: &self.text,
            replacer: &self.replacer,
            names: &self.names,
        };
        let mut body: Option<Body> = None;
        let mut planned: Vec<(String, Plan)> = Vec::new();
        // Read once: each key's text is checked as UTF-8 when read.
        let keys: Vec<&str> = event.keys().collect();
        for (at, &key) in keys.iter().enumerate() {
            if keys[..at].contains(&key) {
                continue;
            }
            let repeated = keys[at + 1..].contains(&key);
            let is_body = key == "requestObject" || key == "responseObject";
            let fields: Vec<&Path> = self
                .fields
                .iter()
                .filter(|path| path.segments()[0] == key)
                .collect();
            // A field changed upstream is read from the bytes it will be written as.
            let serialised;
            let bytes = match event.raw_field(key) {
                Some(bytes) => bytes,
                None => {
                    serialised = event
                        .get(key)
                        .and_then(|value| serde_json::to_vec(value).ok())
                        .unwrap_or_default();
                    &serialised[..]
                }
            };
            let candidate = event.raw_field(key).is_none()
                || repeated
                || !fields.is_empty()
                || self.text.prefilter().hit(bytes)
                || (is_body && self.may_be_secret_body(event))
                || (key == "requestObject" && self.may_be_container_patch(event));
            if !candidate {
                continue;
            }
            let body = match is_body {
                true => *body.get_or_insert_with(|| self.body_of(event)),
                false => Body::Plain,
            };
            match walk::edits(&rules, bytes, body, &fields) {
                None => planned.push((key.to_owned(), Plan::Unreadable)),
                Some(edits) if edits.is_empty() && !repeated => {}
                Some(edits) => {
                    let hits = edits.iter().flat_map(|edit| edit.hits.iter().copied());
                    let hits = hits.collect();
                    let rewritten = walk::apply(bytes, &edits);
                    planned.push((key.to_owned(), Plan::Rewrite(rewritten, hits)));
                }
            }
        }
        if planned.is_empty() {
            return outcome;
        }

        let mut fired = vec![false; self.detector_names.len()];
        for (key, plan) in planned {
            // A repeated key: one copy stays, in the first one's place, holding the
            // last one's value (the one JSON parsers keep): an earlier copy may hold a
            // secret that no parser shows.
            while event.keys().filter(|other| *other == key).count() > 1 {
                event.remove(&key);
            }
            match plan {
                Plan::Unreadable => {
                    outcome.unparseable += 1;
                    event.insert(&key, Value::String(MASK.to_owned()));
                }
                Plan::Rewrite(bytes, hits) => {
                    for hit in hits {
                        counts[hit] += 1;
                        fired[hit] = true;
                    }
                    event.set_raw_field(&key, Bytes::from(bytes));
                }
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

    /// Whether the request is a JSON patch that could set a container's `env` or
    /// `args` (`[{"op":"replace","path":"/spec/.../env/0/value","value":"..."}]`),
    /// which does not carry the entry's name.
    fn may_be_container_patch(&self, event: &Event) -> bool {
        event
            .raw_field("requestObject")
            .is_some_and(|body| self.text.prefilter().may_patch_containers(body))
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
    /// earlier `redact` put there, sorted. The other annotations keep their bytes.
    fn annotate(&self, event: &mut Event, fired: &[bool]) {
        if !fired.contains(&true) {
            return;
        }
        let mut names: Vec<&str> = self
            .detector_names
            .iter()
            .zip(fired)
            .filter(|(_, fired)| **fired)
            .map(|(name, _)| name.as_str())
            .collect();
        let earlier = event
            .get_path(["annotations", REDACTED_ANNOTATION])
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_default();
        names.extend(earlier.split(',').filter(|name| !name.is_empty()));
        names.sort_unstable();
        names.dedup();
        event.add_annotation(REDACTED_ANNOTATION, &names.join(","));
    }
}

#[cfg(test)]
mod tests;
