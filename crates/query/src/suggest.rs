//! `auditflow rbac suggest`: the least RBAC that would have allowed the denied requests.
//!
//! Denials are what `rbac_denial` classifies as `rbac` (a `forbid` decision, or a refused
//! impersonation), each read as the permission it lacked: a verb on a resource (with its
//! subresource, and its object's name) in a namespace or at cluster scope, or a verb on a
//! non-resource URL. A request logged twice (two stages, or log and webhook both given)
//! counts once, by `auditID`.
//!
//! # The one design decision
//! An RBAC rule grants the cross product of its verbs, resources and names. Putting every
//! verb and resource of an API group into one rule would grant pairs nobody was denied
//! (denied `get pods` and `list secrets`, granted `list pods` too). So resources of one
//! API group are merged into one rule only when they were denied the same verbs (and,
//! with `--resource-names`, on the same names): the rules grant exactly the denied
//! permissions, each covered by one rule, and nothing else.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;

use auditflow_core::Event;
use auditflow_rbac_denial::{DenialClass, RbacDenial, RbacDenialConfig};
use serde_json::{Map, Value};

use crate::input::{scan, Input, InputError, ReadOptions, ScanStats};
use crate::time::TimeWindow;

/// Who is granted what a role holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    User(String),
    Group(String),
    /// Recognised from `system:serviceaccount:NAMESPACE:NAME`.
    ServiceAccount {
        namespace: String,
        name: String,
    },
}

impl Subject {
    /// The subject a username stands for.
    pub fn from_username(username: &str) -> Subject {
        if let Some(rest) = username.strip_prefix("system:serviceaccount:") {
            if let Some((namespace, name)) = rest.split_once(':') {
                if !namespace.is_empty() && !name.is_empty() && !name.contains(':') {
                    return Subject::ServiceAccount {
                        namespace: namespace.to_owned(),
                        name: name.to_owned(),
                    };
                }
            }
        }
        Subject::User(username.to_owned())
    }

    fn kind(&self) -> &'static str {
        match self {
            Subject::User(_) => "User",
            Subject::Group(_) => "Group",
            Subject::ServiceAccount { .. } => "ServiceAccount",
        }
    }

    /// How the subject reads in role names and comments.
    fn describe(&self) -> String {
        match self {
            Subject::User(name) | Subject::Group(name) => format!("{} {name:?}", self.kind()),
            Subject::ServiceAccount { namespace, name } => {
                format!("ServiceAccount {namespace:?}/{name:?}")
            }
        }
    }

    fn slug(&self) -> String {
        let raw = match self {
            Subject::User(name) => format!("user:{name}"),
            Subject::Group(name) => format!("group:{name}"),
            Subject::ServiceAccount { namespace, name } => {
                format!("serviceaccount:{namespace}:{name}")
            }
        };
        // RBAC names are path segments: no `/` or `%`.
        raw.replace(['/', '%'], "-")
    }
}

/// Where a permission applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Cluster-scoped resources, every namespace at once, and non-resource URLs: a
    /// ClusterRole with a ClusterRoleBinding.
    Cluster,
    /// A Role and RoleBinding in this namespace.
    Namespace(String),
}

/// What one denied request lacked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    Resource {
        scope: Scope,
        /// `""` for the core group.
        api_group: String,
        /// With its subresource: `pods/log`.
        resource: String,
        verb: String,
        /// The object's name, when the request named one.
        name: Option<String>,
    },
    NonResource {
        url: String,
        verb: String,
    },
}

impl Permission {
    fn scope(&self) -> Scope {
        match self {
            Permission::Resource { scope, .. } => scope.clone(),
            Permission::NonResource { .. } => Scope::Cluster,
        }
    }

    fn is_impersonation(&self) -> bool {
        matches!(self, Permission::Resource { verb, .. } if verb == "impersonate")
    }

    /// Reads the rule `rbac_denial` puts in its `missing-permission` annotation.
    pub fn from_missing(rule: &Map<String, Value>) -> Option<Permission> {
        let text = |key: &str| rule.get(key).and_then(Value::as_str).map(str::to_owned);
        let verb = text("verb").filter(|v| !v.is_empty())?;
        if let Some(url) = text("nonResourceURL") {
            return Some(Permission::NonResource { url, verb });
        }
        let scope = match text("namespace") {
            Some(namespace) => Scope::Namespace(namespace),
            None => Scope::Cluster,
        };
        Some(Permission::Resource {
            scope,
            api_group: text("apiGroup").unwrap_or_default(),
            resource: text("resource")?,
            verb,
            name: text("resourceName"),
        })
    }
}

/// One RBAC denial: whose, and what it lacked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Denied {
    pub subject: Subject,
    pub permission: Permission,
}

/// Which denials to suggest for.
#[derive(Debug, Clone, Default)]
pub struct SuggestOptions {
    /// Only the denials of this user (the impersonated user's, under impersonation).
    pub user: Option<String>,
    /// Only the denials of members of this group, and bind the roles to the group.
    pub group: Option<String>,
    /// Only the denials in this namespace.
    pub namespace: Option<String>,
    pub window: TimeWindow,
    /// Narrow rules to the object names seen.
    pub resource_names: bool,
    /// Suggest roles for refused impersonations too.
    pub include_impersonation: bool,
}

/// The denials found, and what was left out.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    /// One per denied request (by `auditID`), in input order.
    pub denials: Vec<Denied>,
    /// Refused impersonations left out (no `--include-impersonation`).
    pub skipped_impersonations: u64,
    pub scan: ScanStats,
}

/// Reads the RBAC denials that `options` selects from `inputs`.
pub fn collect(
    inputs: &[Input],
    options: &SuggestOptions,
    read: &ReadOptions,
    progress: &mut dyn FnMut(&ScanStats),
) -> Result<Collected, InputError> {
    let classifier = RbacDenial::unobserved(&RbacDenialConfig::default());
    let mut found: Vec<(Option<String>, Denied)> = Vec::new();
    let scan = scan(
        inputs,
        read,
        Vec::new,
        |partial: &mut Vec<(Option<String>, Denied)>, event| {
            if let Some(denied) = denial(&classifier, options, event) {
                partial.push((event.get_str("auditID").map(str::to_owned), denied));
            }
        },
        |partial| found.extend(partial),
        progress,
    )?;
    let mut seen = HashSet::new();
    let mut collected = Collected {
        scan,
        ..Collected::default()
    };
    for (audit_id, denied) in found {
        if let Some(audit_id) = audit_id {
            if !seen.insert(audit_id) {
                continue;
            }
        }
        if denied.permission.is_impersonation() && !options.include_impersonation {
            collected.skipped_impersonations += 1;
            continue;
        }
        collected.denials.push(denied);
    }
    Ok(collected)
}

/// The denial in `event`, if it is an RBAC denial `options` selects.
fn denial(classifier: &RbacDenial, options: &SuggestOptions, event: &Event) -> Option<Denied> {
    let classification = classifier.classify_event(event)?;
    if classification.class != DenialClass::Rbac || !options.window.admits(event) {
        return None;
    }
    let user = classification.denied_user?;
    let permission = Permission::from_missing(classification.missing_permission.as_ref()?)?;
    if options.user.as_ref().is_some_and(|wanted| *wanted != user) {
        return None;
    }
    if let Some(namespace) = &options.namespace {
        if permission.scope() != Scope::Namespace(namespace.clone()) {
            return None;
        }
    }
    let subject = match &options.group {
        Some(group) => {
            // The groups of whoever's permissions were checked.
            let impersonated = event
                .get_path(["impersonatedUser", "username"])
                .and_then(Value::as_str)
                == Some(user.as_str());
            let holder = if impersonated {
                "impersonatedUser"
            } else {
                "user"
            };
            let member = event
                .get_path([holder, "groups"])
                .and_then(Value::as_array)
                .is_some_and(|groups| groups.iter().any(|g| g.as_str() == Some(group)));
            if !member {
                return None;
            }
            Subject::Group(group.clone())
        }
        None => Subject::from_username(&user),
    };
    Some(Denied {
        subject,
        permission,
    })
}

/// One suggested rule: the cross product of its verbs and resources (or URLs), limited
/// to its names when it has any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// One group; empty for a non-resource rule.
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
    pub verbs: Vec<String>,
    /// How many denials this rule covers.
    pub denials: u64,
}

impl Rule {
    /// Whether the rule grants `permission` (its scope is the role's business).
    pub fn covers(&self, permission: &Permission) -> bool {
        match permission {
            Permission::Resource {
                api_group,
                resource,
                verb,
                name,
                ..
            } => {
                self.api_groups.contains(api_group)
                    && self.resources.contains(resource)
                    && self.verbs.contains(verb)
                    && (self.resource_names.is_empty()
                        || name
                            .as_ref()
                            .is_some_and(|n| self.resource_names.contains(n)))
            }
            Permission::NonResource { url, verb } => {
                self.non_resource_urls.contains(url) && self.verbs.contains(verb)
            }
        }
    }
}

/// A suggested Role (namespace scope) or ClusterRole, with its binding to `subject`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub subject: Subject,
    pub scope: Scope,
    /// Holds only `impersonate` rules (listed apart).
    pub impersonation: bool,
    pub rules: Vec<Rule>,
}

impl Role {
    /// The role's (and its binding's) name.
    pub fn name(&self) -> String {
        let purpose = if self.impersonation {
            "suggested-impersonation"
        } else {
            "suggested"
        };
        format!("auditflow:{purpose}:{}", self.subject.slug())
    }
}

/// Names per verb of one resource: `None` for any name.
type Names = Option<BTreeSet<String>>;

/// Verb -> (names, denials) of one resource.
type ByVerb<'a> = BTreeMap<&'a str, (Names, u64)>;

/// A set of strings and how many denials it covers.
type Covered<'a> = (BTreeSet<&'a str>, u64);

/// The least roles that grant every denial in `denials` and nothing else: one per subject
/// and scope (impersonation apart), sorted. Without `resource_names`, rules name no
/// objects, except `impersonate` rules, which always keep the names they were refused
/// (impersonating anyone is far more than impersonating one user).
pub fn suggest(denials: &[Denied], resource_names: bool) -> Vec<Role> {
    type Key = (bool, Subject, Scope);
    let mut grouped: BTreeMap<Key, Vec<&Permission>> = BTreeMap::new();
    for denied in denials {
        let key = (
            denied.permission.is_impersonation(),
            denied.subject.clone(),
            denied.permission.scope(),
        );
        grouped.entry(key).or_default().push(&denied.permission);
    }
    grouped
        .into_iter()
        .map(|((impersonation, subject, scope), permissions)| Role {
            rules: rules(&permissions, resource_names || impersonation),
            subject,
            scope,
            impersonation,
        })
        .collect()
}

fn rules(permissions: &[&Permission], keep_names: bool) -> Vec<Rule> {
    // api group -> resource -> verb -> (names, denials)
    let mut resources: BTreeMap<&str, BTreeMap<&str, ByVerb>> = BTreeMap::new();
    // url -> verb -> denials
    let mut urls: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for permission in permissions {
        match permission {
            Permission::Resource {
                api_group,
                resource,
                verb,
                name,
                ..
            } => {
                let entry = resources
                    .entry(api_group)
                    .or_default()
                    .entry(resource)
                    .or_default()
                    .entry(verb)
                    .or_insert_with(|| (Some(BTreeSet::new()), 0));
                entry.1 += 1;
                match (name, &mut entry.0) {
                    (Some(name), Some(names)) if keep_names => {
                        names.insert(name.clone());
                    }
                    _ => entry.0 = None,
                }
            }
            Permission::NonResource { url, verb } => {
                *urls.entry(url).or_default().entry(verb).or_insert(0) += 1;
            }
        }
    }
    let mut rules = Vec::new();
    for (api_group, by_resource) in resources {
        // (verbs, names) -> (resources, denials): resources merged only where the cross
        // product stays exactly what was denied.
        let mut merged: BTreeMap<(BTreeSet<&str>, Names), Covered> = BTreeMap::new();
        for (resource, by_verb) in by_resource {
            let mut per_names: BTreeMap<Names, Covered> = BTreeMap::new();
            for (verb, (names, count)) in by_verb {
                let entry = per_names.entry(names).or_default();
                entry.0.insert(verb);
                entry.1 += count;
            }
            for (names, (verbs, count)) in per_names {
                let entry = merged.entry((verbs, names)).or_default();
                entry.0.insert(resource);
                entry.1 += count;
            }
        }
        for ((verbs, names), (resources, count)) in merged {
            rules.push(Rule {
                api_groups: vec![api_group.to_owned()],
                resources: resources.into_iter().map(str::to_owned).collect(),
                resource_names: names.unwrap_or_default().into_iter().collect(),
                non_resource_urls: Vec::new(),
                verbs: verbs.into_iter().map(str::to_owned).collect(),
                denials: count,
            });
        }
    }
    let mut merged_urls: BTreeMap<BTreeSet<&str>, Covered> = BTreeMap::new();
    for (url, by_verb) in urls {
        let count: u64 = by_verb.values().sum();
        let entry = merged_urls
            .entry(by_verb.into_keys().collect())
            .or_default();
        entry.0.insert(url);
        entry.1 += count;
    }
    for (verbs, (urls, count)) in merged_urls {
        rules.push(Rule {
            api_groups: Vec::new(),
            resources: Vec::new(),
            resource_names: Vec::new(),
            non_resource_urls: urls.into_iter().map(str::to_owned).collect(),
            verbs: verbs.into_iter().map(str::to_owned).collect(),
            denials: count,
        });
    }
    // Resource rules by group, resources, verbs, names; non-resource rules last.
    rules.sort_by(|a, b| {
        let key = |r: &Rule| {
            (
                !r.non_resource_urls.is_empty(),
                r.api_groups.clone(),
                r.resources.clone(),
                r.verbs.clone(),
                r.resource_names.clone(),
                r.non_resource_urls.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    rules
}

const RBAC_API: &str = "rbac.authorization.k8s.io";

/// The roles as YAML documents for `kubectl apply -f`: each Role or ClusterRole followed
/// by its binding, the roles for access first and those for impersonation after, every
/// string double-quoted (JSON string syntax, which YAML reads the same).
pub fn to_yaml(roles: &[Role]) -> String {
    let q = |text: &str| Value::from(text).to_string();
    let list = |items: &[String]| {
        let quoted: Vec<String> = items.iter().map(|item| q(item)).collect();
        format!("[{}]", quoted.join(", "))
    };
    let mut out = String::new();
    let total: u64 = roles
        .iter()
        .flat_map(|role| &role.rules)
        .map(|rule| rule.denials)
        .sum();
    let _ = writeln!(
        out,
        "# Suggested by `auditflow rbac suggest` from {total} RBAC denial{}. Review before applying.",
        plural(total)
    );
    let mut impersonation_header = false;
    for role in roles {
        if role.impersonation && !impersonation_header {
            impersonation_header = true;
            out.push_str(
                "\n# Refused impersonations (--include-impersonation): these let the subject act as\n\
                 # someone else. Grant them only if that is intended.\n",
            );
        }
        let name = role.name();
        let (kind, binding_kind, namespace) = match &role.scope {
            Scope::Cluster => ("ClusterRole", "ClusterRoleBinding", None),
            Scope::Namespace(namespace) => ("Role", "RoleBinding", Some(namespace.as_str())),
        };
        let denials: u64 = role.rules.iter().map(|rule| rule.denials).sum();
        let _ = writeln!(out, "---");
        let _ = writeln!(
            out,
            "# {}: {denials} denial{} {}",
            role.subject.describe(),
            plural(denials),
            match namespace {
                Some(namespace) => format!("in namespace {namespace:?}"),
                None => "at cluster scope".to_owned(),
            }
        );
        let _ = writeln!(out, "apiVersion: {RBAC_API}/v1");
        let _ = writeln!(out, "kind: {kind}");
        let _ = writeln!(out, "metadata:");
        let _ = writeln!(out, "  name: {}", q(&name));
        if let Some(namespace) = namespace {
            let _ = writeln!(out, "  namespace: {}", q(namespace));
        }
        let _ = writeln!(out, "rules:");
        for rule in &role.rules {
            let _ = writeln!(
                out,
                "  # covers {} denial{}",
                rule.denials,
                plural(rule.denials)
            );
            if rule.non_resource_urls.is_empty() {
                let _ = writeln!(out, "  - apiGroups: {}", list(&rule.api_groups));
                let _ = writeln!(out, "    resources: {}", list(&rule.resources));
                if !rule.resource_names.is_empty() {
                    let _ = writeln!(out, "    resourceNames: {}", list(&rule.resource_names));
                }
            } else {
                let _ = writeln!(
                    out,
                    "  - nonResourceURLs: {}",
                    list(&rule.non_resource_urls)
                );
            }
            let _ = writeln!(out, "    verbs: {}", list(&rule.verbs));
        }
        let _ = writeln!(out, "---");
        let _ = writeln!(out, "apiVersion: {RBAC_API}/v1");
        let _ = writeln!(out, "kind: {binding_kind}");
        let _ = writeln!(out, "metadata:");
        let _ = writeln!(out, "  name: {}", q(&name));
        if let Some(namespace) = namespace {
            let _ = writeln!(out, "  namespace: {}", q(namespace));
        }
        let _ = writeln!(out, "roleRef:");
        let _ = writeln!(out, "  apiGroup: {RBAC_API}");
        let _ = writeln!(out, "  kind: {kind}");
        let _ = writeln!(out, "  name: {}", q(&name));
        let _ = writeln!(out, "subjects:");
        let _ = writeln!(out, "  - kind: {}", role.subject.kind());
        match &role.subject {
            Subject::User(name) | Subject::Group(name) => {
                let _ = writeln!(out, "    apiGroup: {RBAC_API}");
                let _ = writeln!(out, "    name: {}", q(name));
            }
            Subject::ServiceAccount { namespace, name } => {
                let _ = writeln!(out, "    name: {}", q(name));
                let _ = writeln!(out, "    namespace: {}", q(namespace));
            }
        }
    }
    out
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests;
