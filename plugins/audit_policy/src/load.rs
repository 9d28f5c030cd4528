//! Reading a Policy file: YAML (or JSON, which is YAML) into a [`Policy`], strictly, with
//! the line of every problem.
//!
//! kube-apiserver decodes the file leniently (unknown keys are dropped without a word),
//! then validates levels, stages, URLs and groups. Here every key is checked against the
//! `audit.k8s.io/v1` schema as well, because an ignored key is a rule that does not do
//! what its author meant: `verbs` inside a `resources` entry silently widens the rule to
//! every verb. Problems are collected, not stopped at: the policy that comes back is the
//! one kube-apiserver would have loaded (unknown keys left out), so that the linter can
//! go on checking it.

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

use crate::lint::{Code, Finding};
use crate::policy::{GroupResources, Level, Policy, Rule, Stage, Stages};

/// The API versions kube-apiserver (1.24 and later) reads a Policy in.
pub const API_VERSIONS: [&str; 2] = ["audit.k8s.io/v1", "audit.k8s.io/v1beta1"];

/// A policy file, read.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// What kube-apiserver would have loaded (unknown keys ignored, bad values left out).
    pub policy: Policy,
    /// Every problem, errors and warnings, in file order.
    pub findings: Vec<Finding>,
    /// The line of the `rules` key (1 when absent).
    pub rules_line: usize,
}

impl Loaded {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(Finding::is_error)
    }
}

/// Reads a policy from its text.
pub fn load(text: &str) -> Loaded {
    let mut loaded = Loaded {
        policy: Policy::default(),
        findings: Vec::new(),
        rules_line: 1,
    };
    let documents = match MarkedYaml::load_from_str(text) {
        Ok(documents) => documents,
        Err(error) => {
            loaded.findings.push(Finding::new(
                error.marker().line().max(1),
                Code::Syntax,
                format!(
                    "not valid YAML at column {}: {}{}",
                    error.marker().col() + 1,
                    error.info(),
                    if error.info().contains("block") {
                        "; check the indentation: a rule's keys sit under its `- level:`, a resources entry's under its `- group:`"
                    } else {
                        ""
                    }
                ),
            ));
            return loaded;
        }
    };
    let Some(document) = documents.first() else {
        loaded.findings.push(Finding::new(
            1,
            Code::Invalid,
            "the file is empty; a Policy needs `apiVersion: audit.k8s.io/v1`, `kind: Policy` and `rules`",
        ));
        return loaded;
    };
    if let Some(second) = documents.get(1) {
        loaded.findings.push(Finding::new(
            line(second),
            Code::Invalid,
            "a second YAML document; kube-apiserver reads one Policy per file",
        ));
    }
    let mut reader = Reader {
        findings: &mut loaded.findings,
    };
    let Some(entries) = reader.mapping(document, "the policy") else {
        return loaded;
    };
    let (mut api_version, mut kind, mut rules) = (None, None, None);
    for (key, value) in entries {
        match key.as_str() {
            "apiVersion" => api_version = Some((line(value), reader.string(value, "apiVersion"))),
            "kind" => kind = Some((line(value), reader.string(value, "kind"))),
            // ObjectMeta: kube-apiserver ignores it.
            "metadata" => {}
            "rules" => {
                loaded.rules_line = key.line;
                rules = Some(value);
            }
            "omitStages" => loaded.policy.omit_stages = reader.stages(value, "omitStages"),
            "omitManagedFields" => {
                loaded.policy.omit_managed_fields =
                    reader.boolean(value, "omitManagedFields").unwrap_or(false)
            }
            other => reader.unknown(&key, other, "the policy", POLICY_KEYS),
        }
    }
    match api_version {
        Some((_, Some(version))) if API_VERSIONS.contains(&version.as_str()) => {}
        Some((line, Some(version))) => reader.invalid(
            line,
            format!(
                "apiVersion `{version}` is not one kube-apiserver reads a Policy in; use `audit.k8s.io/v1`"
            ),
        ),
        Some((_, None)) => {}
        None => reader.invalid(
            1,
            "missing `apiVersion`; kube-apiserver needs `apiVersion: audit.k8s.io/v1`".to_owned(),
        ),
    }
    match kind {
        Some((_, Some(kind))) if kind == "Policy" => {}
        Some((line, Some(kind))) => {
            reader.invalid(line, format!("kind `{kind}` is not `Policy`"));
        }
        Some((_, None)) => {}
        None => reader.invalid(
            1,
            "missing `kind`; kube-apiserver needs `kind: Policy`".to_owned(),
        ),
    }
    match rules {
        None => reader.invalid(
            1,
            "missing `rules`; kube-apiserver refuses a policy with no rules".to_owned(),
        ),
        Some(value) => {
            if let Some(items) = reader.sequence(value, "rules") {
                if items.is_empty() {
                    reader.invalid(
                        line(value),
                        "`rules` is empty; kube-apiserver refuses a policy with no rules"
                            .to_owned(),
                    );
                }
                for (index, item) in items.iter().enumerate() {
                    if let Some(rule) = reader.rule(item, index) {
                        loaded.policy.rules.push(rule);
                    }
                }
            }
        }
    }
    // File order, whatever order the checks ran in (stable: same line keeps its order).
    loaded.findings.sort_by_key(|f| f.line);
    loaded
}

const POLICY_KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "rules",
    "omitStages",
    "omitManagedFields",
];
const RULE_KEYS: &[&str] = &[
    "level",
    "users",
    "userGroups",
    "verbs",
    "resources",
    "namespaces",
    "nonResourceURLs",
    "omitStages",
    "omitManagedFields",
];
const GROUP_RESOURCES_KEYS: &[&str] = &["group", "resources", "resourceNames"];

/// A mapping key with its line.
struct Key {
    text: String,
    line: usize,
}

impl Key {
    fn as_str(&self) -> &str {
        &self.text
    }
}

struct Reader<'f> {
    findings: &'f mut Vec<Finding>,
}

impl Reader<'_> {
    fn invalid(&mut self, line: usize, message: String) {
        self.findings
            .push(Finding::new(line, Code::Invalid, message));
    }

    fn unknown(&mut self, key: &Key, text: &str, place: &str, valid: &[&str]) {
        let hint = match (place, text) {
            (_, "verbs" | "namespaces" | "users" | "userGroups")
                if valid == GROUP_RESOURCES_KEYS =>
            {
                format!(
                    "; `{text}` belongs to the rule, one level up: here it is ignored and the rule matches every {}",
                    match text {
                        "verbs" => "verb",
                        "namespaces" => "namespace",
                        _ => "user",
                    }
                )
            }
            _ => format!("; valid keys: {}", valid.join(", ")),
        };
        self.findings.push(Finding::new(
            key.line,
            Code::UnknownKey,
            format!("unknown key `{text}` in {place}, which kube-apiserver silently ignores{hint}"),
        ));
    }

    /// The entries of a mapping, keys as strings; anything else is reported.
    fn mapping<'n, 'i>(
        &mut self,
        node: &'n MarkedYaml<'i>,
        place: &str,
    ) -> Option<Vec<(Key, &'n MarkedYaml<'i>)>> {
        match &node.data {
            YamlData::Mapping(map) => {
                let mut entries = Vec::with_capacity(map.len());
                for (key, value) in map {
                    match scalar_text(key) {
                        Some(text) => entries.push((
                            Key {
                                text,
                                line: line(key),
                            },
                            value,
                        )),
                        None => self.invalid(line(key), format!("{place}: a key must be a string")),
                    }
                }
                Some(entries)
            }
            YamlData::Tagged(_, inner) => self.mapping(inner, place),
            _ => {
                self.invalid(
                    line(node),
                    format!("{place} must be a mapping, found {}", describe(node)),
                );
                None
            }
        }
    }

    fn sequence<'n, 'i>(
        &mut self,
        node: &'n MarkedYaml<'i>,
        field: &str,
    ) -> Option<&'n [MarkedYaml<'i>]> {
        match &node.data {
            YamlData::Sequence(items) => Some(items),
            YamlData::Value(Scalar::Null) => Some(&[]),
            YamlData::Tagged(_, inner) => self.sequence(inner, field),
            _ => {
                self.invalid(
                    line(node),
                    format!("`{field}` must be a list, found {}", describe(node)),
                );
                None
            }
        }
    }

    /// A string; null reads as `""`, as in kube-apiserver.
    fn string(&mut self, node: &MarkedYaml<'_>, field: &str) -> Option<String> {
        match &node.data {
            YamlData::Value(Scalar::String(text)) => Some(text.to_string()),
            YamlData::Value(Scalar::Null) => Some(String::new()),
            YamlData::Tagged(_, inner) => self.string(inner, field),
            _ => {
                self.invalid(
                    line(node),
                    format!(
                        "`{field}` must be a string, found {}; quote it",
                        describe(node)
                    ),
                );
                None
            }
        }
    }

    fn strings(&mut self, node: &MarkedYaml<'_>, field: &str) -> Vec<String> {
        let Some(items) = self.sequence(node, field) else {
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|item| self.string(item, field))
            .collect()
    }

    fn boolean(&mut self, node: &MarkedYaml<'_>, field: &str) -> Option<bool> {
        match &node.data {
            YamlData::Value(Scalar::Boolean(value)) => Some(*value),
            YamlData::Tagged(_, inner) => self.boolean(inner, field),
            _ => {
                self.invalid(
                    line(node),
                    format!("`{field}` must be true or false, found {}", describe(node)),
                );
                None
            }
        }
    }

    fn stages(&mut self, node: &MarkedYaml<'_>, field: &str) -> Stages {
        let Some(items) = self.sequence(node, field) else {
            return Stages::default();
        };
        let mut stages = Stages::default();
        for item in items {
            let Some(text) = self.string(item, field) else {
                continue;
            };
            match Stage::parse(&text) {
                Some(stage) => stages = stages.with(stage),
                None => self.invalid(
                    line(item),
                    format!(
                        "`{field}`: unknown stage `{text}`; the stages are RequestReceived, ResponseStarted, ResponseComplete, Panic"
                    ),
                ),
            }
        }
        stages
    }

    fn rule(&mut self, node: &MarkedYaml<'_>, index: usize) -> Option<Rule> {
        let place = format!("rule {}", index + 1);
        let entries = self.mapping(node, &place)?;
        let mut rule = Rule {
            line: line(node),
            ..Rule::default()
        };
        let mut level_seen = false;
        for (key, value) in entries {
            match key.as_str() {
                "level" => {
                    level_seen = true;
                    if let Some(text) = self.string(value, "level") {
                        rule.level = Level::parse(&text);
                        if rule.level.is_none() {
                            self.invalid(
                                line(value),
                                format!(
                                    "{place}: unknown level `{text}`; the levels are None, Metadata, Request, RequestResponse"
                                ),
                            );
                        }
                    }
                }
                "users" => rule.users = self.strings(value, "users"),
                "userGroups" => rule.user_groups = self.strings(value, "userGroups"),
                "verbs" => rule.verbs = self.strings(value, "verbs"),
                "namespaces" => rule.namespaces = self.strings(value, "namespaces"),
                "nonResourceURLs" => {
                    rule.non_resource_urls = self.strings(value, "nonResourceURLs");
                    self.check_urls(value, &rule.non_resource_urls, &place);
                }
                "omitStages" => rule.omit_stages = self.stages(value, "omitStages"),
                "omitManagedFields" => {
                    rule.omit_managed_fields = self.boolean(value, "omitManagedFields")
                }
                "resources" => {
                    if let Some(items) = self.sequence(value, "resources") {
                        for item in items {
                            if let Some(entry) = self.group_resources(item, &place) {
                                rule.resources.push(entry);
                            }
                        }
                    }
                }
                other => self.unknown(&key, other, &place, RULE_KEYS),
            }
        }
        if !level_seen {
            self.invalid(
                rule.line,
                format!("{place}: missing `level` (None, Metadata, Request or RequestResponse)"),
            );
        }
        if !rule.non_resource_urls.is_empty() && rule.is_resource_rule() {
            self.invalid(
                rule.line,
                format!(
                    "{place}: a rule cannot name both `nonResourceURLs` and `resources`/`namespaces`; split it in two"
                ),
            );
        }
        Some(rule)
    }

    fn check_urls(&mut self, node: &MarkedYaml<'_>, urls: &[String], place: &str) {
        for url in urls {
            if url == "*" {
                continue;
            }
            if !url.starts_with('/') {
                self.invalid(
                    line(node),
                    format!("{place}: non-resource URL `{url}` must begin with `/`"),
                );
            }
            if url.len() > 1 && url[..url.len() - 1].contains('*') {
                self.invalid(
                    line(node),
                    format!("{place}: non-resource URL `{url}`: `*` is only allowed as the last character"),
                );
            }
        }
    }

    fn group_resources(&mut self, node: &MarkedYaml<'_>, place: &str) -> Option<GroupResources> {
        let entries = self.mapping(node, &format!("{place}: a `resources` entry"))?;
        let mut entry = GroupResources {
            line: line(node),
            ..GroupResources::default()
        };
        for (key, value) in entries {
            match key.as_str() {
                "group" => {
                    entry.group = self.string(value, "group").unwrap_or_default();
                    if let Some(problem) = group_problem(&entry.group) {
                        self.invalid(
                            line(value),
                            format!("{place}: group `{}` {problem}", entry.group),
                        );
                    }
                }
                "resources" => entry.resources = self.strings(value, "resources"),
                "resourceNames" => entry.resource_names = self.strings(value, "resourceNames"),
                other => self.unknown(&key, other, "a `resources` entry", GROUP_RESOURCES_KEYS),
            }
        }
        if !entry.resource_names.is_empty() && entry.resources.is_empty() {
            self.invalid(
                entry.line,
                format!("{place}: `resourceNames` needs at least one entry in `resources`"),
            );
        }
        Some(entry)
    }
}

/// kube-apiserver's check on a group: a lowercase DNS subdomain (so `apps/v1` is refused:
/// the version does not belong there).
fn group_problem(group: &str) -> Option<&'static str> {
    if group.is_empty() {
        return None;
    }
    if group.contains('/') {
        return Some("must not include a version: write the group alone (`apps`, not `apps/v1`)");
    }
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if group.len() > 253 || !group.split('.').all(valid_label) {
        return Some("is not a lowercase DNS subdomain (letters, digits, `-` and `.`)");
    }
    None
}

fn line(node: &MarkedYaml<'_>) -> usize {
    node.span.start.line().max(1)
}

fn scalar_text(node: &MarkedYaml<'_>) -> Option<String> {
    match &node.data {
        YamlData::Value(Scalar::String(text)) => Some(text.to_string()),
        YamlData::Value(Scalar::Boolean(value)) => Some(value.to_string()),
        YamlData::Value(Scalar::Integer(value)) => Some(value.to_string()),
        _ => None,
    }
}

fn describe(node: &MarkedYaml<'_>) -> String {
    match &node.data {
        YamlData::Value(Scalar::String(text)) => format!("the string `{text}`"),
        YamlData::Value(Scalar::Null) => "nothing".to_owned(),
        YamlData::Value(Scalar::Boolean(value)) => format!("the boolean `{value}`"),
        YamlData::Value(Scalar::Integer(value)) => format!("the number `{value}`"),
        YamlData::Value(Scalar::FloatingPoint(value)) => format!("the number `{value}`"),
        YamlData::Sequence(_) => "a list".to_owned(),
        YamlData::Mapping(_) => "a mapping".to_owned(),
        YamlData::Alias(_) => "an alias (anchors are not supported)".to_owned(),
        _ => "a value of another kind".to_owned(),
    }
}
