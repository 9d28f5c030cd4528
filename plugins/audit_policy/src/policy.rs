//! The audit Policy and the request it is matched against, with kube-apiserver's
//! matching rules (`k8s.io/apiserver/pkg/audit/policy/checker.go`).
//!
//! The first rule whose every set selector matches wins; no match is level `None` with
//! the policy's own `omitStages`. A rule that names `namespaces` or `resources` only
//! matches resource requests (its `nonResourceURLs` are then never looked at); one that
//! names `nonResourceURLs` only matches non-resource requests; one that names none of the
//! three matches both. An unset list (or an empty one) matches everything.

use std::borrow::Cow;
use std::fmt;

use serde::Serialize;
use smallvec::SmallVec;

/// How much of a request is logged, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Level {
    None,
    Metadata,
    Request,
    RequestResponse,
}

impl Level {
    pub const ALL: [Level; 4] = [
        Level::None,
        Level::Metadata,
        Level::Request,
        Level::RequestResponse,
    ];

    /// The level as kube-apiserver spells it (case-sensitive).
    pub fn parse(text: &str) -> Option<Level> {
        Level::from_bytes(text.as_bytes())
    }

    /// [`Level::parse`] on the name's bytes.
    pub fn from_bytes(name: &[u8]) -> Option<Level> {
        Level::ALL
            .into_iter()
            .find(|level| level.as_str().as_bytes() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "None",
            Level::Metadata => "Metadata",
            Level::Request => "Request",
            Level::RequestResponse => "RequestResponse",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stage of a request; every stage produces its own event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Stage {
    RequestReceived,
    ResponseStarted,
    ResponseComplete,
    Panic,
}

impl Stage {
    pub const ALL: [Stage; 4] = [
        Stage::RequestReceived,
        Stage::ResponseStarted,
        Stage::ResponseComplete,
        Stage::Panic,
    ];

    /// The stage as kube-apiserver spells it (case-sensitive).
    pub fn parse(text: &str) -> Option<Stage> {
        Stage::from_bytes(text.as_bytes())
    }

    /// [`Stage::parse`] on the name's bytes.
    pub fn from_bytes(name: &[u8]) -> Option<Stage> {
        Stage::ALL
            .into_iter()
            .find(|stage| stage.as_str().as_bytes() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::RequestReceived => "RequestReceived",
            Stage::ResponseStarted => "ResponseStarted",
            Stage::ResponseComplete => "ResponseComplete",
            Stage::Panic => "Panic",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of stages (`omitStages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Stages(u8);

impl Stages {
    pub fn with(self, stage: Stage) -> Stages {
        Stages(self.0 | stage.bit())
    }

    pub fn union(self, other: Stages) -> Stages {
        Stages(self.0 | other.0)
    }

    pub fn contains(self, stage: Stage) -> bool {
        self.0 & stage.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The stages in the set, in request order.
    pub fn iter(self) -> impl Iterator<Item = Stage> {
        Stage::ALL.into_iter().filter(move |s| self.contains(*s))
    }
}

impl FromIterator<Stage> for Stages {
    fn from_iter<I: IntoIterator<Item = Stage>>(iter: I) -> Stages {
        iter.into_iter().fold(Stages::default(), Stages::with)
    }
}

impl Serialize for Stages {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter().map(Stage::as_str))
    }
}

/// An `audit.k8s.io/v1` `Policy`.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub rules: Vec<Rule>,
    /// The policy-wide `omitStages`, joined with every rule's.
    pub omit_stages: Stages,
    /// The policy-wide `omitManagedFields`, unless a rule sets its own.
    pub omit_managed_fields: bool,
}

/// One entry of `rules`.
#[derive(Debug, Clone, Default)]
pub struct Rule {
    /// The line of the rule in the policy file (1-based).
    pub line: usize,
    pub level: Option<Level>,
    pub users: Vec<String>,
    pub user_groups: Vec<String>,
    pub verbs: Vec<String>,
    pub resources: Vec<GroupResources>,
    pub namespaces: Vec<String>,
    pub non_resource_urls: Vec<String>,
    /// The rule's own `omitStages` (the policy's are added when matching).
    pub omit_stages: Stages,
    pub omit_managed_fields: Option<bool>,
}

/// One entry of a rule's `resources`.
#[derive(Debug, Clone, Default)]
pub struct GroupResources {
    pub line: usize,
    /// The API group; `""` is the core group.
    pub group: String,
    /// `pods`, `pods/log`, `pods/*`, `*/scale`, `*`; empty is every resource of the group.
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
}

/// The attributes of the request behind an event, as kube-apiserver's authorizer saw them.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// The authenticated user; `None` for a request that carried none (`user: {}`).
    pub user: Option<User<'a>>,
    pub verb: Cow<'a, str>,
    /// `Some` for a resource request (the event has an `objectRef`).
    pub resource: Option<Resource<'a>>,
    /// The request path, without its query.
    pub path: Cow<'a, str>,
}

#[derive(Debug, Clone, Default)]
pub struct User<'a> {
    pub name: Cow<'a, str>,
    pub groups: Groups<'a>,
}

/// A user's groups: up to four held inline, as most users have (a service account has
/// three), so reading them allocates nothing.
pub type Groups<'a> = SmallVec<[Cow<'a, str>; 4]>;

#[derive(Debug, Clone, Default)]
pub struct Resource<'a> {
    pub group: Cow<'a, str>,
    pub resource: Cow<'a, str>,
    pub subresource: Cow<'a, str>,
    /// `""` for a cluster-scoped resource.
    pub namespace: Cow<'a, str>,
    pub name: Cow<'a, str>,
}

/// What the policy says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The index of the matching rule; `None` when no rule matched.
    pub rule: Option<usize>,
    pub level: Level,
    /// The policy's and the rule's `omitStages` together.
    pub omit_stages: Stages,
    pub omit_managed_fields: bool,
}

/// Why a rule did not match a request: the first selector that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    NoUser,
    User,
    UserGroups,
    Verb,
    NotResourceRequest,
    NotNonResourceRequest,
    Namespace,
    Resource,
    NonResourceUrl,
}

impl Policy {
    /// The decision for `request`: the first matching rule, or `None`.
    pub fn evaluate(&self, request: &Request<'_>) -> Decision {
        self.evaluate_with(request, || request.user.clone())
    }

    /// [`Policy::evaluate`] with the user read only when a rule gets as far as asking
    /// for it: `user` is called at most once, and not at all when every rule is settled
    /// by the verb, the resource or the path first (`request.user` is not looked at).
    /// The decision is the same: a rule matches when all its selectors do, in any order.
    pub fn evaluate_with<'a>(
        &self,
        request: &Request<'a>,
        user: impl FnOnce() -> Option<User<'a>>,
    ) -> Decision {
        let mut read_user = Some(user);
        let mut known: Option<Option<User<'a>>> = None;
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.check_request(request).is_err() {
                continue;
            }
            if rule.selects_user() {
                let user = known.get_or_insert_with(|| match read_user.take() {
                    Some(read) => read(),
                    None => None,
                });
                if rule.check_user(user.as_ref()).is_err() {
                    continue;
                }
            }
            return self.decision(index);
        }
        Decision {
            rule: None,
            level: Level::None,
            omit_stages: self.omit_stages,
            omit_managed_fields: self.omit_managed_fields,
        }
    }

    /// The decision rule `index` makes when it matches.
    pub fn decision(&self, index: usize) -> Decision {
        let rule = &self.rules[index];
        Decision {
            rule: Some(index),
            level: rule.level.unwrap_or(Level::None),
            omit_stages: self.omit_stages.union(rule.omit_stages),
            omit_managed_fields: rule.omit_managed_fields.unwrap_or(self.omit_managed_fields),
        }
    }

    /// Whether any rule looks at the user (so events need their `user` read).
    pub fn reads_user(&self) -> bool {
        self.rules
            .iter()
            .any(|r| !r.users.is_empty() || !r.user_groups.is_empty())
    }

    /// Whether any rule looks at the path (non-resource URLs).
    pub fn reads_path(&self) -> bool {
        self.rules.iter().any(Rule::is_non_resource_rule)
    }
}

impl Rule {
    /// A rule naming namespaces or resources: it only matches resource requests.
    pub fn is_resource_rule(&self) -> bool {
        !self.namespaces.is_empty() || !self.resources.is_empty()
    }

    /// A rule naming non-resource URLs (and no resources): only non-resource requests.
    pub fn is_non_resource_rule(&self) -> bool {
        !self.is_resource_rule() && !self.non_resource_urls.is_empty()
    }

    /// A rule without any selector: it matches every request.
    pub fn is_catch_all(&self) -> bool {
        self.users.is_empty()
            && self.user_groups.is_empty()
            && self.verbs.is_empty()
            && !self.is_resource_rule()
            && self.non_resource_urls.is_empty()
    }

    /// Whether the rule selects on the user (`users` or `userGroups`).
    pub fn selects_user(&self) -> bool {
        !self.users.is_empty() || !self.user_groups.is_empty()
    }

    /// Matches `request`, or says which selector did not, in kube-apiserver's order.
    pub fn check(&self, request: &Request<'_>) -> Result<(), Mismatch> {
        self.check_user(request.user.as_ref())?;
        self.check_request(request)
    }

    /// The `users` and `userGroups` selectors alone.
    pub fn check_user(&self, user: Option<&User<'_>>) -> Result<(), Mismatch> {
        if !self.users.is_empty() {
            let user = user.ok_or(Mismatch::NoUser)?;
            if !contains(&self.users, &user.name) {
                return Err(Mismatch::User);
            }
        }
        if !self.user_groups.is_empty() {
            let user = user.ok_or(Mismatch::NoUser)?;
            if !user.groups.iter().any(|g| contains(&self.user_groups, g)) {
                return Err(Mismatch::UserGroups);
            }
        }
        Ok(())
    }

    /// Every selector but the user's: verbs, then namespaces and resources, or
    /// non-resource URLs.
    pub fn check_request(&self, request: &Request<'_>) -> Result<(), Mismatch> {
        if !self.verbs.is_empty() && !contains(&self.verbs, &request.verb) {
            return Err(Mismatch::Verb);
        }
        if self.is_resource_rule() {
            let resource = request
                .resource
                .as_ref()
                .ok_or(Mismatch::NotResourceRequest)?;
            if !self.namespaces.is_empty() && !contains(&self.namespaces, &resource.namespace) {
                return Err(Mismatch::Namespace);
            }
            if self.resources.is_empty() || self.resources.iter().any(|gr| gr.matches(resource)) {
                return Ok(());
            }
            return Err(Mismatch::Resource);
        }
        if !self.non_resource_urls.is_empty() {
            if request.resource.is_some() {
                return Err(Mismatch::NotNonResourceRequest);
            }
            if self
                .non_resource_urls
                .iter()
                .any(|spec| path_matches(&request.path, spec))
            {
                return Ok(());
            }
            return Err(Mismatch::NonResourceUrl);
        }
        Ok(())
    }
}

impl GroupResources {
    /// Whether this entry selects `resource`: same group, then (unless the entry lists no
    /// resources, which is the whole group) a matching resource pattern and name.
    pub fn matches(&self, resource: &Resource<'_>) -> bool {
        if !same(&self.group, &resource.group) {
            return false;
        }
        if self.resources.is_empty() {
            // The whole group; resourceNames without resources is refused at load.
            return true;
        }
        if !self.resource_names.is_empty() && !contains(&self.resource_names, &resource.name) {
            return false;
        }
        self.resources
            .iter()
            .any(|pattern| resource_matches(pattern, &resource.resource, &resource.subresource))
    }
}

/// `pods` (no subresource), `pods/log` (that subresource), `*` (everything, subresources
/// included), `*/log` (that subresource of anything), `pods/*` (pods and every
/// subresource of pods).
pub fn resource_matches(pattern: &str, resource: &str, subresource: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let combined_matches = if subresource.is_empty() {
        pattern == resource
    } else {
        // pattern == resource + "/" + subresource, without building the string.
        pattern.len() == resource.len() + 1 + subresource.len()
            && pattern.starts_with(resource)
            && pattern.as_bytes()[resource.len()] == b'/'
            && pattern.ends_with(subresource)
    };
    if combined_matches {
        return true;
    }
    if let Some(s) = pattern.strip_prefix("*/") {
        if !subresource.is_empty() && s == subresource {
            return true;
        }
    }
    if let Some(r) = pattern.strip_suffix("/*") {
        if r == resource {
            return true;
        }
    }
    false
}

/// `*` matches every path; `/healthz` that path exactly; `/api*` every path starting with
/// `/api` (every trailing `*` is dropped before comparing).
pub fn path_matches(path: &str, spec: &str) -> bool {
    if spec == "*" || spec == path {
        return true;
    }
    match spec.strip_suffix('*') {
        Some(_) => path.starts_with(spec.trim_end_matches('*')),
        None => false,
    }
}

fn contains(list: &[String], value: &str) -> bool {
    list.iter().any(|item| same(item, value))
}

/// `a == b`, settled without a call to `memcmp` when the lengths or first bytes differ or
/// both are empty (the core group `""`), which is most comparisons a policy makes.
#[inline]
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && (a.is_empty() || (a.as_bytes()[0] == b.as_bytes()[0] && a == b))
}
