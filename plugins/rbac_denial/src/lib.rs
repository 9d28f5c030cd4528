//! `rbac_denial` transform: tags the events that say someone was refused, and says what
//! they would have needed.
//!
//! # Layout
//! - this file: [`RbacDenialConfig`], the [`RbacDenial`] transform, classification and
//!   the missing RBAC rule.
//! - `tests.rs`: real-shaped denied and allowed events of every verb and scope.
//!
//! # The one design decision
//! Almost every event is an allowed request, so the decision "not a denial" is taken on
//! raw bytes: the status code is read out of the unparsed `responseStatus` field, and only
//! a 401, a 403, or an event with no status at all looks further (for a `"forbid"` in the
//! raw `annotations`). Nothing is parsed or changed for the rest, so they leave as the
//! bytes they came as.
//!
//! Classes: `rbac` (the authorizer said `forbid`, or refused an impersonation, which
//! kube-apiserver records without a decision annotation), `authentication` (401), and
//! `forbidden` (any other 403: admission, PodSecurity, quotas).

use std::collections::HashSet;
use std::sync::Arc;

use auditflow_core::event::RawLookup;
use auditflow_core::{
    Batch, BuildContext, BuildError, Event, Transform, TransformConfig, Validate,
};
use auditflow_metrics::{ComponentMetrics, Metrics};
use memchr::memmem::Finder;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

/// How many distinct `resource` label values one component reports before the rest
/// become `other`.
pub const MAX_RESOURCE_LABELS: usize = 100;

/// Verbs reported as themselves in the `verb` label; any other is `other`.
const KNOWN_VERBS: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "impersonate",
    "bind",
    "escalate",
    "approve",
    "sign",
    "use",
    "post",
    "put",
    "head",
    "options",
];

/// Tags denied requests: `<prefix>denial`, `<prefix>denial-reason`,
/// `<prefix>missing-permission` and `<prefix>denied-user` annotations.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RbacDenialConfig {
    /// Prefix of the annotations this transform adds (`<prefix>denial`, ...).
    #[serde(default = "default_annotation_prefix")]
    pub annotation_prefix: String,
}

fn default_annotation_prefix() -> String {
    "auditflow.io/".to_owned()
}

impl Default for RbacDenialConfig {
    fn default() -> RbacDenialConfig {
        RbacDenialConfig {
            annotation_prefix: default_annotation_prefix(),
        }
    }
}

impl Validate for RbacDenialConfig {}

impl TransformConfig for RbacDenialConfig {
    fn build(&self, cx: BuildContext) -> Result<Box<dyn Transform>, BuildError> {
        Ok(Box::new(RbacDenial::new(cx.metrics, self)))
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialClass {
    /// The authorizer refused it (`authorization.k8s.io/decision: forbid`, or a refused
    /// impersonation).
    Rbac,
    /// The credentials were not accepted (401).
    Authentication,
    /// A 403 from elsewhere: admission (PodSecurity, quotas, PriorityClass), or an old
    /// event without authorization annotations.
    Forbidden,
}

impl DenialClass {
    pub fn as_str(self) -> &'static str {
        match self {
            DenialClass::Rbac => "rbac",
            DenialClass::Authentication => "authentication",
            DenialClass::Forbidden => "forbidden",
        }
    }
}

/// What `rbac_denial` makes of one event, for tools that read audit logs outside a pipeline
/// (`auditflow query`, `auditflow rbac suggest`): the same values the annotations carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    pub class: DenialClass,
    /// `authorization.k8s.io/reason`, when not empty (`rbac` only).
    pub reason: Option<String>,
    /// The rule the request lacked, as the `missing-permission` annotation carries it
    /// (`verb`, `apiGroup`, `resource`, `resourceName`, `namespace` or `scope: cluster`,
    /// or `nonResourceURL`; `rbac` only).
    pub missing_permission: Option<Map<String, Value>>,
    /// Whose permission was missing: the impersonated user under impersonation, the
    /// impersonating one for a refused impersonation (`rbac` only).
    pub denied_user: Option<String>,
}

/// The running `rbac_denial` transform.
#[derive(Clone)]
pub struct RbacDenial {
    /// Denials are counted through it, per denial (their labels are known only then).
    metrics: Arc<ComponentMetrics>,
    denial_key: String,
    reason_key: String,
    missing_key: String,
    user_key: String,
    forbid: Finder<'static>,
    resources: HashSet<String>,
}

/// What a denial amounts to, before it is written into the event.
struct Denial {
    class: DenialClass,
    reason: Option<String>,
    /// The RBAC rule the request lacked (`rbac` only).
    rule: Option<Map<String, Value>>,
    /// Whose permission was missing (`rbac` only).
    user: Option<String>,
    /// Metric labels.
    verb: String,
    resource: Option<String>,
}

impl RbacDenial {
    /// The transform, counting its denials through `metrics`.
    pub fn new(metrics: Arc<ComponentMetrics>, config: &RbacDenialConfig) -> RbacDenial {
        let prefix = &config.annotation_prefix;
        RbacDenial {
            metrics,
            denial_key: format!("{prefix}denial"),
            reason_key: format!("{prefix}denial-reason"),
            missing_key: format!("{prefix}missing-permission"),
            user_key: format!("{prefix}denied-user"),
            forbid: Finder::new(b"\"forbid\""),
            resources: HashSet::new(),
        }
    }

    /// The transform outside a pipeline (`auditflow query`, `rbac suggest`, benchmarks):
    /// its counts go to a registry of its own that nothing renders.
    pub fn unobserved(config: &RbacDenialConfig) -> RbacDenial {
        let metrics = ComponentMetrics::new(&Metrics::new(), "", "transform", "rbac_denial");
        RbacDenial::new(metrics, config)
    }

    /// Classifies one event without tagging or counting it: `None` when it is no denial.
    /// Takes the same cheap raw-bytes test first as the transform does.
    pub fn classify_event(&self, event: &Event) -> Option<Classification> {
        if !self.may_be_denial(event) {
            return None;
        }
        let denial = self.classify(event)?;
        Some(Classification {
            class: denial.class,
            reason: denial.reason,
            missing_permission: denial.rule,
            denied_user: denial.user,
        })
    }

    /// The cheap test: can this event be a denial at all?
    fn may_be_denial(&self, event: &Event) -> bool {
        // Read from the bytes: `responseStatus` is not parsed for the events that pass.
        let code = event.u64_at(&["responseStatus", "code"]);
        match code {
            Some(401 | 403) => true,
            Some(_) => false,
            // No status (a RequestReceived stage, an odd producer): only an explicit
            // forbid decision makes it a denial.
            None => match event.raw_field("annotations") {
                Some(raw) => self.forbid.find(raw).is_some(),
                None => decision(event) == Some("forbid"),
            },
        }
    }

    fn classify(&self, event: &Event) -> Option<Denial> {
        let code = event.u64_at(&["responseStatus", "code"]);
        let verb = event.get_str("verb").unwrap_or_default();
        if decision(event) == Some("forbid") {
            let reason = event
                .str_at(&["annotations", "authorization.k8s.io/reason"])
                .filter(|reason| !reason.is_empty())
                .map(str::to_owned);
            let (rule, resource) = requested_rule(event, verb);
            // The request was authorized as the impersonated user, when there is one.
            let user = match event.raw_path(&["impersonatedUser", "username"]) {
                RawLookup::Missing => event.str_at(&["user", "username"]),
                _ => event
                    .get_path(["impersonatedUser", "username"])
                    .or_else(|| event.get_path(["user", "username"]))
                    .and_then(Value::as_str),
            }
            .map(str::to_owned);
            return Some(Denial {
                class: DenialClass::Rbac,
                reason,
                rule: Some(rule),
                user,
                verb: verb.to_owned(),
                resource,
            });
        }
        match code {
            Some(403) => {
                if let Some((rule, resource)) = impersonation_rule(event) {
                    // The impersonation filter refuses before the authorization filter
                    // runs, so there is no decision annotation: the message is the record.
                    // The one lacking the permission is the real, impersonating user.
                    let user = event.str_at(&["user", "username"]).map(str::to_owned);
                    return Some(Denial {
                        class: DenialClass::Rbac,
                        reason: None,
                        rule: Some(rule),
                        user,
                        verb: "impersonate".to_owned(),
                        resource: Some(resource),
                    });
                }
                Some(self.plain(DenialClass::Forbidden, event, verb))
            }
            Some(401) => Some(self.plain(DenialClass::Authentication, event, verb)),
            _ => None,
        }
    }

    fn plain(&self, class: DenialClass, event: &Event, verb: &str) -> Denial {
        Denial {
            class,
            reason: None,
            rule: None,
            user: None,
            verb: verb.to_owned(),
            resource: event
                .get("objectRef")
                .and_then(Value::as_object)
                .and_then(resource_of),
        }
    }

    fn tag(&mut self, event: &mut Event, denial: Denial) {
        self.count(&denial);
        event.add_annotation(&self.denial_key, denial.class.as_str());
        if let Some(reason) = denial.reason {
            event.add_annotation(&self.reason_key, &reason);
        }
        if let Some(rule) = denial.rule {
            // Annotations are map[string]string: the rule travels as compact JSON text.
            let rule = Value::Object(rule).to_string();
            event.add_annotation(&self.missing_key, &rule);
        }
        if let Some(user) = denial.user {
            event.add_annotation(&self.user_key, &user);
        }
    }

    fn count(&mut self, denial: &Denial) {
        let verb = if KNOWN_VERBS.contains(&denial.verb.as_str()) {
            denial.verb.as_str()
        } else {
            "other"
        };
        let resource = match &denial.resource {
            None => "nonresource",
            Some(resource) if self.resources.contains(resource) => resource,
            Some(resource) if self.resources.len() < MAX_RESOURCE_LABELS => {
                self.resources.insert(resource.clone());
                resource
            }
            Some(_) => "other",
        };
        self.metrics
            .rbac_denials(denial.class.as_str(), verb, resource)
            .inc();
    }
}

impl Transform for RbacDenial {
    fn fork(&self) -> Option<Box<dyn Transform>> {
        Some(Box::new(self.clone()))
    }

    fn transform(&mut self, batch: &mut Batch) {
        for event in &mut batch.events {
            if !self.may_be_denial(event) {
                continue;
            }
            if let Some(denial) = self.classify(event) {
                self.tag(event, denial);
            }
        }
    }
}

fn decision(event: &Event) -> Option<&str> {
    event.str_at(&["annotations", "authorization.k8s.io/decision"])
}

/// `resource` or `resource/subresource`, as RBAC rules name them (`pods/log`).
fn resource_of(object_ref: &Map<String, Value>) -> Option<String> {
    let resource = object_ref
        .get("resource")?
        .as_str()
        .filter(|r| !r.is_empty())?;
    Some(match non_empty(object_ref, "subresource") {
        Some(subresource) => format!("{resource}/{subresource}"),
        None => resource.to_owned(),
    })
}

fn non_empty<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    object.get(key)?.as_str().filter(|value| !value.is_empty())
}

/// The rule the request itself needed: its verb on its resource, or on its URL path for a
/// non-resource request. Returns the resource too, for the metric.
fn requested_rule(event: &Event, verb: &str) -> (Map<String, Value>, Option<String>) {
    let mut rule = Map::new();
    rule.insert("verb".into(), verb.into());
    let object_ref = event.get("objectRef").and_then(Value::as_object);
    let resource = object_ref.and_then(resource_of);
    match (object_ref, &resource) {
        (Some(object_ref), Some(resource)) => {
            let group = non_empty(object_ref, "apiGroup").unwrap_or_default();
            rule.insert("apiGroup".into(), group.into());
            rule.insert("resource".into(), resource.as_str().into());
            if let Some(name) = non_empty(object_ref, "name") {
                rule.insert("resourceName".into(), name.into());
            }
            scope(&mut rule, non_empty(object_ref, "namespace"));
        }
        _ => {
            let uri = event.get_str("requestURI").unwrap_or_default();
            let path = uri.split_once('?').map_or(uri, |(path, _)| path);
            rule.insert("nonResourceURL".into(), path.into());
        }
    }
    (rule, resource)
}

/// `"namespace": "ns"` for a namespaced request (a Role in that namespace, or a
/// ClusterRole bound there, grants it); `"scope": "cluster"` for a cluster-scoped one
/// (only a ClusterRoleBinding grants it).
fn scope(rule: &mut Map<String, Value>, namespace: Option<&str>) {
    match namespace {
        Some(namespace) => rule.insert("namespace".into(), namespace.into()),
        None => rule.insert("scope".into(), "cluster".into()),
    };
}

/// A refused impersonation, read from kube-apiserver's message:
/// `users "jane" is forbidden: User "bob" cannot impersonate resource "users" in API group
/// "" at the cluster scope` (or `in the namespace "ci"` for service accounts).
fn impersonation_rule(event: &Event) -> Option<(Map<String, Value>, String)> {
    let message = event.get_path(["responseStatus", "message"])?.as_str()?;
    const MARK: &str = " cannot impersonate resource ";
    let at = message.find(MARK)?;
    let (resource, rest) = go_quoted(&message[at + MARK.len()..])?;
    let (group, rest) = go_quoted(rest.strip_prefix(" in API group ")?)?;
    let namespace = match rest.strip_prefix(" in the namespace ") {
        Some(rest) => Some(go_quoted(rest)?.0),
        None => {
            rest.strip_prefix(" at the cluster scope")?;
            None
        }
    };
    // `users "jane" is forbidden: ...`; `users is forbidden: ...` when there is no name.
    let base = resource.split('/').next().unwrap_or_default();
    let name = message
        .strip_prefix(base)
        .and_then(|rest| rest.strip_prefix(' '))
        .and_then(go_quoted)
        .filter(|(_, rest)| rest.starts_with(" is forbidden: "))
        .map(|(name, _)| name);
    let mut rule = Map::new();
    rule.insert("verb".into(), "impersonate".into());
    rule.insert("apiGroup".into(), group.into());
    rule.insert("resource".into(), resource.as_str().into());
    if let Some(name) = name {
        rule.insert("resourceName".into(), name.into());
    }
    scope(&mut rule, namespace.as_deref());
    Some((rule, resource))
}

/// A Go `%q` string at the start of `text`, unquoted, and what follows it.
fn go_quoted(text: &str) -> Option<(String, &str)> {
    let mut chars = text.strip_prefix('"')?.char_indices();
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &text[1 + i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                escaped => out.push(escaped),
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests;
