//! `auditflow policy explain`: which rule matches an event, what the transform does with
//! it, and why each earlier rule did not match.

use std::fmt::{self, Write as _};

use auditflow_core::Event;
use serde::Serialize;

use crate::policy::{Level, Mismatch, Policy, Request, Rule, Stages};
use crate::request::{request_of, Needs};
use crate::{outcome, DropReason, Outcome};

/// The explanation for one event.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The event's `auditID`, when it has one.
    pub audit_id: Option<String>,
    /// The matching rule: 1-based number and line; `None` when no rule matched.
    pub rule: Option<RuleRef>,
    /// The level the policy gives the request.
    pub level: Level,
    /// The stages the policy omits for this request.
    pub omit_stages: Stages,
    pub omit_managed_fields: bool,
    /// What the `audit_policy` transform does with the event.
    pub result: String,
    /// Each earlier rule and why it did not match.
    pub not_matched: Vec<NotMatched>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct RuleRef {
    pub number: usize,
    pub line: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct NotMatched {
    pub rule: RuleRef,
    pub reason: String,
}

/// Explains what `policy` does with `event`.
pub fn explain(policy: &Policy, event: &Event) -> Explanation {
    let request = request_of(event, Needs::ALL);
    let decision = policy.evaluate(&request);
    let checked = decision.rule.unwrap_or(policy.rules.len());
    let not_matched = policy.rules[..checked]
        .iter()
        .enumerate()
        .map(|(index, rule)| NotMatched {
            rule: RuleRef {
                number: index + 1,
                line: rule.line,
            },
            reason: match rule.check(&request) {
                Err(mismatch) => describe(rule, &request, &mismatch),
                Ok(()) => unreachable!("an earlier rule matched although a later one was chosen"),
            },
        })
        .collect();
    let result = match outcome(&decision, event) {
        Outcome::Drop(DropReason::LevelNone) => "dropped (level None)".to_owned(),
        Outcome::Drop(DropReason::StageOmitted(stage)) => {
            format!("dropped (stage {} omitted)", stage.as_str())
        }
        Outcome::Keep { lower_to: None } => "kept as it is".to_owned(),
        Outcome::Keep {
            lower_to: Some(level),
        } => {
            let removed = match level {
                Level::Metadata => " (requestObject and responseObject removed)",
                Level::Request => " (responseObject removed)",
                _ => "",
            };
            format!("kept, lowered to {level}{removed}")
        }
    };
    Explanation {
        audit_id: event.get_str("auditID").map(str::to_owned),
        rule: decision.rule.map(|index| RuleRef {
            number: index + 1,
            line: policy.rules[index].line,
        }),
        level: decision.level,
        omit_stages: decision.omit_stages,
        omit_managed_fields: decision.omit_managed_fields,
        result,
        not_matched,
    }
}

fn describe(rule: &Rule, request: &Request<'_>, mismatch: &Mismatch) -> String {
    match mismatch {
        Mismatch::NoUser => "the request has no authenticated user".to_owned(),
        Mismatch::User => format!(
            "user `{}` is not in users {}",
            request.user.as_ref().map_or("", |u| &u.name),
            list(&rule.users)
        ),
        Mismatch::UserGroups => format!(
            "none of the user's groups {} is in userGroups {}",
            list(request.user.as_ref().map_or(&[][..], |u| &u.groups[..])),
            list(&rule.user_groups)
        ),
        Mismatch::Verb => format!(
            "verb `{}` is not in verbs {}",
            request.verb,
            list(&rule.verbs)
        ),
        Mismatch::NotResourceRequest => format!(
            "the rule is for resource requests, and `{}` is a non-resource request",
            request.path
        ),
        Mismatch::NotNonResourceRequest => {
            "the rule is for non-resource URLs, and this is a resource request".to_owned()
        }
        Mismatch::Namespace => format!(
            "namespace `{}` is not in namespaces {}",
            request.resource.as_ref().map_or("", |r| &r.namespace),
            list(&rule.namespaces)
        ),
        Mismatch::Resource => {
            let resource = request.resource.clone().unwrap_or_default();
            let mut what = format!("group `{}` resource `{}", resource.group, resource.resource);
            if !resource.subresource.is_empty() {
                let _ = write!(what, "/{}", resource.subresource);
            }
            what.push('`');
            if !resource.name.is_empty() {
                let _ = write!(what, " name `{}`", resource.name);
            }
            let entries: Vec<String> = rule
                .resources
                .iter()
                .map(|gr| {
                    let mut entry = format!("group `{}`", gr.group);
                    if !gr.resources.is_empty() {
                        let _ = write!(entry, " resources {}", list(&gr.resources));
                    }
                    if !gr.resource_names.is_empty() {
                        let _ = write!(entry, " resourceNames {}", list(&gr.resource_names));
                    }
                    entry
                })
                .collect();
            format!("{what} is not in resources [{}]", entries.join("; "))
        }
        Mismatch::NonResourceUrl => format!(
            "path `{}` is not in nonResourceURLs {}",
            request.path,
            list(&rule.non_resource_urls)
        ),
    }
}

fn list<S: AsRef<str>>(items: &[S]) -> String {
    let items: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    format!("[{}]", items.join(", "))
}

impl fmt::Display for Explanation {
    /// Several lines: the verdict, then one line per earlier rule.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rule {
            Some(rule) => write!(f, "rule {} (line {}) matches", rule.number, rule.line)?,
            None => write!(f, "no rule matches")?,
        }
        let stages: Vec<&str> = self.omit_stages.iter().map(|s| s.as_str()).collect();
        writeln!(
            f,
            ": level {}, omitStages [{}]{}; {}",
            self.level,
            stages.join(", "),
            if self.omit_managed_fields {
                ", omitManagedFields"
            } else {
                ""
            },
            self.result
        )?;
        for earlier in &self.not_matched {
            writeln!(
                f,
                "  rule {} (line {}): {}",
                earlier.rule.number, earlier.rule.line, earlier.reason
            )?;
        }
        Ok(())
    }
}
