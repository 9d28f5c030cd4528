//! `auditflow policy lint`: what is wrong or costly in a Policy, each finding with its
//! line, a severity and a stable code (docs/audit-policy.md lists them).
//!
//! Errors are what kube-apiserver refuses or silently ignores; warnings are what it accepts
//! but what is rarely meant: rules that can never match, credentials written to the log,
//! volume that buys nothing.

use std::fmt;

use serde::Serialize;

use crate::load::{load, Loaded};
use crate::policy::{resource_matches, GroupResources, Level, Policy, Rule, Stage};

/// How bad a finding is: any error makes `policy lint` exit 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// The kinds of finding. Their codes are stable: scripts and suppressions rely on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Code {
    /// AP100: not YAML (or a key given twice).
    Syntax,
    /// AP101: a key kube-apiserver does not know and silently ignores.
    UnknownKey,
    /// AP102: a value kube-apiserver refuses (level, stage, URL, group, missing field).
    Invalid,
    /// AP201: a rule that earlier rules leave nothing to match.
    Shadowed,
    /// AP202: a level that writes credentials: Request or RequestResponse on secrets and
    /// tokenreviews, RequestResponse on serviceaccounts/token (TokenRequest).
    Credentials,
    /// AP203: no catch-all rule: unmatched requests are not logged at all.
    NoCatchAll,
    /// AP204: the RequestReceived stage is logged, doubling the volume.
    RequestReceived,
    /// AP205: watch requests at RequestResponse.
    WatchRequestResponse,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Syntax => "AP100",
            Code::UnknownKey => "AP101",
            Code::Invalid => "AP102",
            Code::Shadowed => "AP201",
            Code::Credentials => "AP202",
            Code::NoCatchAll => "AP203",
            Code::RequestReceived => "AP204",
            Code::WatchRequestResponse => "AP205",
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            Code::Syntax | Code::UnknownKey | Code::Invalid => Severity::Error,
            _ => Severity::Warning,
        }
    }
}

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// 1-based.
    pub line: usize,
    pub severity: Severity,
    #[serde(serialize_with = "code_str")]
    pub code: Code,
    pub message: String,
}

fn code_str<S: serde::Serializer>(code: &Code, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(code.as_str())
}

impl Finding {
    pub fn new(line: usize, code: Code, message: impl Into<String>) -> Finding {
        Finding {
            line,
            severity: code.severity(),
            code,
            message: message.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Finding {
    /// `12: error[AP101]: message`; the caller puts the file in front.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}[{}]: {}",
            self.line,
            self.severity,
            self.code.as_str(),
            self.message
        )
    }
}

/// Every finding for the policy in `text`, sorted by line.
pub fn lint(text: &str) -> Vec<Finding> {
    let Loaded {
        policy,
        mut findings,
        rules_line,
    } = load(text);
    if !findings.iter().any(|f| f.code == Code::Syntax) {
        check(&policy, rules_line, &mut findings);
    }
    findings.sort_by_key(|f| f.line);
    findings
}

/// The checks on a loaded policy (the warnings).
fn check(policy: &Policy, rules_line: usize, findings: &mut Vec<Finding>) {
    let rules = &policy.rules;
    for (j, rule) in rules.iter().enumerate() {
        let number = j + 1;
        if let Some(i) = (0..j).find(|&i| covers(&rules[i], rule)) {
            findings.push(Finding::new(
                rule.line,
                Code::Shadowed,
                format!(
                    "rule {number} can never match: rule {} (line {}) already matches every request it does; move it above rule {} or remove it",
                    i + 1,
                    rules[i].line,
                    i + 1
                ),
            ));
            // Whatever else it says, it never applies.
            continue;
        }
        let level = rule.level.unwrap_or(Level::None);
        if level >= Level::Request {
            let exposed: Vec<&str> = SENSITIVE
                .iter()
                .filter(|s| level >= s.leaks_at)
                .filter(|s| rule_can_match_resource(rule, s) && !caught_before(&rules[..j], s))
                .map(|s| s.label)
                .collect();
            if !exposed.is_empty() {
                findings.push(Finding::new(
                    rule.line,
                    Code::Credentials,
                    format!(
                        "rule {number} logs {} at {level}: their bodies carry credentials (tokens, Secret data), which then sit in every copy of the log; log them at Metadata in a rule above, or add auditflow's `redact` transform before any sink",
                        exposed.join(", ")
                    ),
                ));
            }
        }
        if level == Level::RequestResponse && can_match_watch(rule) {
            findings.push(Finding::new(
                rule.line,
                Code::WatchRequestResponse,
                format!(
                    "rule {number} logs watch requests at RequestResponse: watches are long-running and a response body is never logged for them, so the level only adds cost; add `verbs: [watch]` at Metadata above it, or list the verbs this rule is for"
                ),
            ));
        }
        if level > Level::None
            && !policy
                .omit_stages
                .union(rule.omit_stages)
                .contains(Stage::RequestReceived)
        {
            findings.push(Finding::new(
                rule.line,
                Code::RequestReceived,
                format!(
                    "rule {number} logs the RequestReceived stage: every request it matches is logged twice (RequestReceived and ResponseComplete); add `omitStages: [RequestReceived]` to the policy or the rule"
                ),
            ));
        }
    }
    if !rules.is_empty() && !rules.iter().any(Rule::is_catch_all) {
        findings.push(Finding::new(
            rules_line,
            Code::NoCatchAll,
            "no catch-all rule: requests no rule matches are not logged at all; end with `- level: Metadata`",
        ));
    }
}

/// Whether the rule can match a `watch`: watches are on resources (not subresources, not
/// non-resource URLs), and the `*reviews` resources are create-only.
fn can_match_watch(rule: &Rule) -> bool {
    if !(rule.verbs.is_empty() || rule.verbs.iter().any(|v| v == "watch")) {
        return false;
    }
    if rule.is_non_resource_rule() {
        return false;
    }
    rule.resources.is_empty()
        || rule.resources.iter().any(|gr| {
            gr.resources.is_empty()
                || gr.resources.iter().any(|p| {
                    (p == "*" || p.ends_with("/*") || !p.contains('/')) && !p.ends_with("reviews")
                })
        })
}

/// A resource whose request or response bodies carry credentials.
struct Sensitive {
    group: &'static str,
    resource: &'static str,
    subresource: &'static str,
    label: &'static str,
    /// The lowest level that writes the credential: a TokenReview's request carries the
    /// token, a Secret's request (create, update) its data, but a TokenRequest only
    /// carries the token in its response.
    leaks_at: Level,
}

const SENSITIVE: [Sensitive; 4] = [
    Sensitive {
        group: "",
        resource: "secrets",
        subresource: "",
        label: "secrets",
        leaks_at: Level::Request,
    },
    Sensitive {
        group: "authentication.k8s.io",
        resource: "tokenreviews",
        subresource: "",
        label: "tokenreviews",
        leaks_at: Level::Request,
    },
    Sensitive {
        group: "",
        resource: "serviceaccounts",
        subresource: "token",
        label: "serviceaccounts/token",
        leaks_at: Level::RequestResponse,
    },
    Sensitive {
        group: "authentication.k8s.io",
        resource: "tokenrequests",
        subresource: "",
        label: "tokenrequests",
        leaks_at: Level::RequestResponse,
    },
];

/// Whether some request for `s` can reach this rule's level (users, verbs and namespaces
/// aside: some request has them).
fn rule_can_match_resource(rule: &Rule, s: &Sensitive) -> bool {
    if rule.is_non_resource_rule() {
        return false;
    }
    rule.resources.is_empty()
        || rule.resources.iter().any(|gr| {
            gr.group == s.group
                && (gr.resources.is_empty()
                    || gr
                        .resources
                        .iter()
                        .any(|p| resource_matches(p, s.resource, s.subresource)))
        })
}

/// Whether an earlier rule takes every request for `s`, whoever makes it.
fn caught_before(earlier: &[Rule], s: &Sensitive) -> bool {
    earlier.iter().any(|rule| {
        rule.users.is_empty()
            && rule.user_groups.is_empty()
            && rule.verbs.is_empty()
            && rule.namespaces.is_empty()
            && !rule.is_non_resource_rule()
            && (rule.resources.is_empty()
                || rule.resources.iter().any(|gr| {
                    gr.group == s.group
                        && gr.resource_names.is_empty()
                        && (gr.resources.is_empty()
                            || gr
                                .resources
                                .iter()
                                .any(|p| resource_matches(p, s.resource, s.subresource)))
                }))
    })
}

/// Whether rule `a` matches every request rule `b` matches (so `b`, after `a`, never
/// applies). Conservative: `false` unless it is sure.
pub fn covers(a: &Rule, b: &Rule) -> bool {
    if !(subset(&b.users, &a.users)
        && subset(&b.user_groups, &a.user_groups)
        && subset(&b.verbs, &a.verbs))
    {
        return false;
    }
    if a.is_resource_rule() {
        if !b.is_resource_rule() {
            return false;
        }
        if !subset(&b.namespaces, &a.namespaces) {
            return false;
        }
        if a.resources.is_empty() {
            return true;
        }
        return !b.resources.is_empty()
            && b.resources
                .iter()
                .all(|entry| entry_covered(entry, &a.resources));
    }
    if a.is_non_resource_rule() {
        return b.is_non_resource_rule()
            && b.non_resource_urls
                .iter()
                .all(|url| a.non_resource_urls.iter().any(|spec| url_covers(spec, url)));
    }
    // `a` selects on users, groups and verbs only: every kind of request.
    true
}

/// `b`'s set of values (empty: anything) within `a`'s (empty: anything).
fn subset(b: &[String], a: &[String]) -> bool {
    a.is_empty() || (!b.is_empty() && b.iter().all(|v| a.contains(v)))
}

fn entry_covered(entry: &GroupResources, by: &[GroupResources]) -> bool {
    let same_group = by.iter().filter(|a| a.group == entry.group);
    if entry.resources.is_empty() {
        // The whole group: only a whole-group entry or an unrestricted `*` covers it.
        return same_group.clone().any(|a| {
            a.resources.is_empty()
                || (a.resource_names.is_empty() && a.resources.iter().any(|p| p == "*"))
        });
    }
    entry.resources.iter().all(|pattern| {
        same_group.clone().any(|a| {
            a.resources.is_empty()
                || (subset(&entry.resource_names, &a.resource_names)
                    && a.resources.iter().any(|p| pattern_covers(p, pattern)))
        })
    })
}

/// Whether resource pattern `a` matches everything pattern `b` does.
fn pattern_covers(a: &str, b: &str) -> bool {
    if a == "*" || a == b {
        return true;
    }
    if let Some(sub) = a.strip_prefix("*/") {
        // `*/log` covers `x/log` and `*/log`.
        return b.split_once('/').is_some_and(|(_, s)| s == sub);
    }
    if let Some(resource) = a.strip_suffix("/*") {
        // `pods/*` covers `pods`, `pods/log`, `pods/*`.
        return b == resource || b.split_once('/').is_some_and(|(r, _)| r == resource);
    }
    false
}

/// Whether non-resource URL spec `a` matches every path spec `b` does.
fn url_covers(a: &str, b: &str) -> bool {
    if a == "*" || a == b {
        return true;
    }
    if a.ends_with('*') {
        let prefix = a.trim_end_matches('*');
        return b != "*" && b.trim_end_matches('*').starts_with(prefix);
    }
    false
}
