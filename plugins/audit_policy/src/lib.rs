//! `audit_policy` transform: applies a kube-apiserver audit Policy to events, exactly as
//! kube-apiserver would have applied it to the requests behind them; and the logic of
//! `auditflow policy lint` and `auditflow policy explain`.
//!
//! # Layout
//! - [`policy`]: the Policy, the request attributes, and kube-apiserver's matching.
//! - [`request`]: the request attributes read from an event.
//! - [`load`]: the policy file read strictly, every problem with its line (saphyr).
//! - [`lint`]: findings with stable codes.
//! - [`explain`]: which rule matches an event and why the earlier ones did not.
//! - this file: [`AuditPolicyConfig`] and the [`AuditPolicy`] transform.
//!
//! # The one design decision
//! The transform only ever lowers: it drops what the policy would not have logged (level
//! `None`, omitted stages) and removes the bodies a lower level would not have carried,
//! but never adds what was not logged. An event already at or below the policy's level
//! leaves byte for byte as it came, so applying the policy an API server already used
//! changes nothing.

pub mod explain;
pub mod lint;
pub mod load;
pub mod policy;
pub mod request;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use auditflow_core::{
    Batch, BuildContext, BuildError, Event, Telemetry, Transform, TransformConfig, Validate,
};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

pub use crate::lint::{lint, Code, Finding, Severity};
pub use crate::load::{load, Loaded};
pub use crate::policy::{Decision, Level, Policy, Stage, Stages};
use crate::request::{request_of, user_of, Needs};

/// Applies an `audit.k8s.io/v1` Policy (v1beta1 accepted) to events: drops what it would
/// not have logged and removes the bodies its level would not have carried.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditPolicyConfig {
    /// Path to the Policy file (YAML or JSON), relative to the working directory. Read and
    /// checked strictly when the pipeline loads: unknown keys and invalid values are
    /// errors with their line. A reload (`SIGHUP`) reads a changed file again.
    #[schemars(with = "String")]
    pub policy_file: PolicyFile,
}

/// A policy file, loaded and checked when the pipeline file is read.
#[derive(Clone)]
pub struct PolicyFile {
    path: PathBuf,
    policy: Arc<Policy>,
}

impl PolicyFile {
    /// Reads and checks the policy at `path`; the error lists every problem as
    /// `path:line: message`.
    pub fn read(path: &Path) -> Result<PolicyFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read policy file {}: {error}", path.display()))?;
        let loaded = load(&text);
        let errors: Vec<String> = loaded
            .findings
            .iter()
            .filter(|f| f.is_error())
            .map(|f| format!("{}:{}: {}", path.display(), f.line, f.message))
            .collect();
        if !errors.is_empty() {
            return Err(format!(
                "invalid audit policy ({} problem{}; `auditflow policy lint {}` shows them all): {}",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" },
                path.display(),
                errors.join("; ")
            ));
        }
        Ok(PolicyFile {
            path: path.to_owned(),
            policy: Arc::new(loaded.policy),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }
}

impl fmt::Debug for PolicyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PolicyFile({}, {} rules)",
            self.path.display(),
            self.policy.rules.len()
        )
    }
}

impl<'de> Deserialize<'de> for PolicyFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PolicyFile, D::Error> {
        let path = PathBuf::deserialize(deserializer)?;
        PolicyFile::read(&path).map_err(serde::de::Error::custom)
    }
}

impl Validate for AuditPolicyConfig {}

impl TransformConfig for AuditPolicyConfig {
    fn build(&self, cx: BuildContext) -> Result<Box<dyn Transform>, BuildError> {
        Ok(Box::new(AuditPolicy::new(
            Arc::clone(self.policy_file.policy()),
            cx.telemetry,
        )))
    }
}

/// The running `audit_policy` transform.
#[derive(Clone)]
pub struct AuditPolicy {
    policy: Arc<Policy>,
    needs: Needs,
    telemetry: Arc<dyn Telemetry>,
}

impl AuditPolicy {
    pub fn new(policy: Arc<Policy>, telemetry: Arc<dyn Telemetry>) -> AuditPolicy {
        let needs = Needs {
            user: policy.reads_user(),
            path: policy.reads_path(),
        };
        AuditPolicy {
            policy,
            needs,
            telemetry,
        }
    }
}

impl Transform for AuditPolicy {
    fn fork(&self) -> Option<Box<dyn Transform>> {
        Some(Box::new(self.clone()))
    }

    fn transform(&mut self, batch: &mut Batch) {
        let before = batch.events.len();
        batch.events.retain_mut(|event| {
            // The user is read only if a rule gets as far as asking (most are settled by
            // the verb and resource first).
            let decision = {
                let request = request_of(
                    event,
                    Needs {
                        user: false,
                        ..self.needs
                    },
                );
                match self.needs.user {
                    true => self.policy.evaluate_with(&request, || user_of(event)),
                    false => self.policy.evaluate(&request),
                }
            };
            match outcome(&decision, event) {
                Outcome::Drop(_) => false,
                Outcome::Keep { lower_to } => {
                    apply(&decision, lower_to, event);
                    true
                }
            }
        });
        let dropped = before - batch.events.len();
        if dropped > 0 {
            self.telemetry.discarded("filtered", dropped);
        }
    }
}

/// What the transform does with an event, given the policy's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Drop(DropReason),
    /// Kept; `lower_to` is the level it is lowered to, if it is above the decision's.
    Keep {
        lower_to: Option<Level>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The decision's level is `None`.
    LevelNone,
    /// The event's stage is in the decision's `omitStages`.
    StageOmitted(Stage),
}

/// Decides, reading only `level` and `stage`.
pub fn outcome(decision: &Decision, event: &Event) -> Outcome {
    if decision.level == Level::None {
        return Outcome::Drop(DropReason::LevelNone);
    }
    if let Some(stage) = known(event, "stage", Stage::from_bytes) {
        if decision.omit_stages.contains(stage) {
            return Outcome::Drop(DropReason::StageOmitted(stage));
        }
    }
    let lower_to = match known(event, "level", Level::from_bytes) {
        Some(level) if level <= decision.level => None,
        // Above the decision, or unknown: trimmed to the decision's level.
        _ => Some(decision.level),
    };
    Outcome::Keep { lower_to }
}

/// A top-level field holding one of a few known names (`stage`, `level`), matched on its
/// bytes: a string without escapes is compared as it is, without converting it to `str`;
/// anything else goes through [`Event::get_str`].
fn known<T>(event: &Event, key: &str, from_bytes: fn(&[u8]) -> Option<T>) -> Option<T> {
    match event.raw_field(key) {
        Some([b'"', name @ .., b'"']) if memchr::memchr2(b'\\', b'"', name).is_none() => {
            from_bytes(name)
        }
        _ => event
            .get_str(key)
            .and_then(|name| from_bytes(name.as_bytes())),
    }
}

/// Lowers `event` to `lower_to` and strips managed fields where the decision says so.
fn apply(decision: &Decision, lower_to: Option<Level>, event: &mut Event) {
    if let Some(level) = lower_to {
        let known_level = known(event, "level", Level::from_bytes).is_some();
        if level < Level::RequestResponse {
            event.delete("responseObject");
        }
        if level < Level::Request {
            event.delete("requestObject");
        }
        if known_level {
            event.insert("level", Value::String(level.as_str().to_owned()));
        }
    }
    if decision.omit_managed_fields {
        for key in ["requestObject", "responseObject"] {
            strip_managed_fields(event, key);
        }
    }
}

/// Removes `metadata.managedFields` from the object at `key`, and from each of its
/// `items` when it is a list, as kube-apiserver does with `omitManagedFields`. The field
/// is only parsed when its bytes mention `managedFields`.
fn strip_managed_fields(event: &mut Event, key: &str) {
    let mentions = match event.raw_field(key) {
        Some(raw) => memchr::memmem::find(raw, b"\"managedFields\"").is_some(),
        None => event.contains_key(key),
    };
    if !mentions {
        return;
    }
    let Some(Value::Object(object)) = event.get_mut(key) else {
        return;
    };
    if let Some(Value::Object(metadata)) = object.get_mut("metadata") {
        metadata.remove("managedFields");
    }
    if let Some(Value::Array(items)) = object.get_mut("items") {
        for item in items {
            if let Some(Value::Object(metadata)) = item.get_mut("metadata") {
                metadata.remove("managedFields");
            }
        }
    }
}

#[cfg(test)]
mod tests;
