use proptest::prelude::*;

use super::*;

fn resource(
    scope: Option<&str>,
    group: &str,
    resource: &str,
    verb: &str,
    name: Option<&str>,
) -> Permission {
    Permission::Resource {
        scope: scope.map_or(Scope::Cluster, |ns| Scope::Namespace(ns.to_owned())),
        api_group: group.to_owned(),
        resource: resource.to_owned(),
        verb: verb.to_owned(),
        name: name.map(str::to_owned),
    }
}

fn denied(user: &str, permission: Permission) -> Denied {
    Denied {
        subject: Subject::from_username(user),
        permission,
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn service_accounts_are_recognised_from_their_username() {
    assert_eq!(
        Subject::from_username("system:serviceaccount:ci:deployer"),
        Subject::ServiceAccount {
            namespace: "ci".into(),
            name: "deployer".into()
        }
    );
    assert_eq!(Subject::from_username("bob"), Subject::User("bob".into()));
    assert_eq!(
        Subject::from_username("system:serviceaccount:ci"),
        Subject::User("system:serviceaccount:ci".into())
    );
}

#[test]
fn resources_merge_only_where_they_were_denied_the_same_verbs() {
    let denials = vec![
        denied(
            "bob",
            resource(Some("dev"), "", "pods", "get", Some("web-1")),
        ),
        denied("bob", resource(Some("dev"), "", "pods", "list", None)),
        denied(
            "bob",
            resource(Some("dev"), "", "secrets", "get", Some("db")),
        ),
        denied("bob", resource(Some("dev"), "", "secrets", "list", None)),
        denied(
            "bob",
            resource(Some("dev"), "", "configmaps", "get", Some("x")),
        ),
        denied(
            "bob",
            resource(Some("dev"), "", "pods/log", "get", Some("web-1")),
        ),
        denied(
            "bob",
            resource(Some("dev"), "apps", "deployments", "patch", Some("web")),
        ),
    ];
    let roles = suggest(&denials, false);
    assert_eq!(roles.len(), 1);
    type Shape = (Vec<String>, Vec<String>, Vec<String>, u64);
    let rules: Vec<Shape> = roles[0]
        .rules
        .iter()
        .map(|r| {
            (
                r.api_groups.clone(),
                r.resources.clone(),
                r.verbs.clone(),
                r.denials,
            )
        })
        .collect();
    assert_eq!(
        rules,
        vec![
            (
                strings(&[""]),
                strings(&["configmaps", "pods/log"]),
                strings(&["get"]),
                2
            ),
            (
                strings(&[""]),
                strings(&["pods", "secrets"]),
                strings(&["get", "list"]),
                4
            ),
            (
                strings(&["apps"]),
                strings(&["deployments"]),
                strings(&["patch"]),
                1
            ),
        ]
    );
    assert_eq!(roles[0].scope, Scope::Namespace("dev".into()));
}

#[test]
fn resource_names_narrow_rules_but_never_below_a_request_without_a_name() {
    let denials = vec![
        denied(
            "bob",
            resource(Some("dev"), "", "secrets", "get", Some("db")),
        ),
        denied(
            "bob",
            resource(Some("dev"), "", "secrets", "get", Some("api")),
        ),
        denied(
            "bob",
            resource(Some("dev"), "", "secrets", "delete", Some("db")),
        ),
        denied("bob", resource(Some("dev"), "", "secrets", "list", None)),
    ];
    let roles = suggest(&denials, true);
    let rules: Vec<(Vec<String>, Vec<String>)> = roles[0]
        .rules
        .iter()
        .map(|r| (r.verbs.clone(), r.resource_names.clone()))
        .collect();
    assert_eq!(
        rules,
        vec![
            (strings(&["delete"]), strings(&["db"])),
            (strings(&["get"]), strings(&["api", "db"])),
            (strings(&["list"]), vec![]),
        ]
    );
}

#[test]
fn scopes_and_subjects_get_roles_of_their_own() {
    let denials = vec![
        denied(
            "system:serviceaccount:ci:deployer",
            resource(Some("prod"), "apps", "deployments", "patch", Some("web")),
        ),
        denied(
            "system:serviceaccount:ci:deployer",
            resource(None, "", "nodes", "list", None),
        ),
        denied(
            "bob",
            Permission::NonResource {
                url: "/metrics".into(),
                verb: "get".into(),
            },
        ),
        denied("bob", resource(None, "", "secrets", "list", None)),
    ];
    let roles = suggest(&denials, false);
    let shape: Vec<(Subject, Scope, usize)> = roles
        .iter()
        .map(|r| (r.subject.clone(), r.scope.clone(), r.rules.len()))
        .collect();
    let sa = Subject::ServiceAccount {
        namespace: "ci".into(),
        name: "deployer".into(),
    };
    assert_eq!(
        shape,
        vec![
            (Subject::User("bob".into()), Scope::Cluster, 2),
            (sa.clone(), Scope::Cluster, 1),
            (sa, Scope::Namespace("prod".into()), 1),
        ]
    );
    assert_eq!(roles[0].rules[1].non_resource_urls, strings(&["/metrics"]));
}

#[test]
fn impersonation_is_apart_and_keeps_its_names() {
    let denials = vec![
        denied(
            "bob",
            resource(None, "", "users", "impersonate", Some("jane")),
        ),
        denied("bob", resource(Some("dev"), "", "pods", "get", Some("x"))),
    ];
    let roles = suggest(&denials, false);
    assert_eq!(roles.len(), 2);
    assert!(!roles[0].impersonation);
    assert!(roles[1].impersonation);
    assert_eq!(roles[1].rules[0].resource_names, strings(&["jane"]));
    assert_eq!(
        roles[1].name(),
        "auditflow:suggested-impersonation:user:bob"
    );
    let yaml = to_yaml(&roles);
    assert!(yaml.contains("# Refused impersonations"));
    assert!(yaml.find("kind: Role\n").unwrap() < yaml.find("# Refused impersonations").unwrap());
}

#[test]
fn the_yaml_reads_back_as_the_roles_and_bindings() {
    let denials = vec![
        denied(
            "system:serviceaccount:ci:deployer",
            resource(Some("prod"), "apps", "deployments", "patch", Some("web")),
        ),
        denied(
            "https://issuer.example/#\"odd\" user",
            resource(None, "", "nodes", "list", None),
        ),
    ];
    let yaml = to_yaml(&suggest(&denials, true));
    let documents: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|doc| <serde_json::Value as serde::Deserialize>::deserialize(doc).unwrap())
        .collect();
    assert_eq!(documents.len(), 4, "{yaml}");
    assert_eq!(documents[0]["kind"], "ClusterRole");
    assert_eq!(
        documents[0]["metadata"]["name"],
        "auditflow:suggested:user:https:--issuer.example-#\"odd\" user"
    );
    assert_eq!(
        documents[1]["subjects"][0]["name"],
        "https://issuer.example/#\"odd\" user"
    );
    assert_eq!(documents[2]["kind"], "Role");
    assert_eq!(documents[2]["metadata"]["namespace"], "prod");
    assert_eq!(documents[2]["rules"][0]["resourceNames"][0], "web");
    assert_eq!(documents[3]["roleRef"]["kind"], "Role");
    assert_eq!(documents[3]["subjects"][0]["kind"], "ServiceAccount");
    assert_eq!(documents[3]["subjects"][0]["namespace"], "ci");
    assert!(documents[3]["subjects"][0].get("apiGroup").is_none());
}

fn permission() -> impl Strategy<Value = Permission> {
    let scope = prop_oneof![Just(None), Just(Some("dev")), Just(Some("prod"))];
    let group = prop::sample::select(vec!["", "apps", "batch"]);
    let resource =
        prop::sample::select(vec!["pods", "pods/log", "secrets", "deployments", "nodes"]);
    let verb = prop::sample::select(vec!["get", "list", "watch", "create", "patch", "delete"]);
    let name = prop_oneof![
        Just(None),
        Just(Some("a")),
        Just(Some("b")),
        Just(Some("c"))
    ];
    prop_oneof![
        8 => (scope, group, resource, verb, name)
            .prop_map(|(s, g, r, v, n)| self::resource(s, g, r, v, n)),
        1 => (prop::sample::select(vec!["/metrics", "/healthz", "/logs/x"]), prop::sample::select(vec!["get", "post"]))
            .prop_map(|(url, verb)| Permission::NonResource { url: url.into(), verb: verb.into() }),
        1 => (prop::sample::select(vec!["users", "groups", "serviceaccounts"]), prop::sample::select(vec!["jane", "ops"]))
            .prop_map(|(r, n)| self::resource(None, "", r, "impersonate", Some(n))),
    ]
}

fn subject() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["bob", "alice", "system:serviceaccount:ci:deployer"])
}

/// Every (verb, resource, name) a rule grants, as the permissions it stands for; `None`
/// for a name means any name.
fn granted(rule: &Rule) -> Vec<(String, String, String, Option<String>)> {
    let mut out = Vec::new();
    let names: Vec<Option<String>> = if rule.resource_names.is_empty() {
        vec![None]
    } else {
        rule.resource_names.iter().cloned().map(Some).collect()
    };
    for verb in &rule.verbs {
        for group in &rule.api_groups {
            for resource in &rule.resources {
                for name in &names {
                    out.push((verb.clone(), group.clone(), resource.clone(), name.clone()));
                }
            }
        }
        for url in &rule.non_resource_urls {
            out.push((verb.clone(), "<url>".into(), url.clone(), None));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn every_denial_is_covered_by_exactly_one_rule_and_nothing_more_is_granted(
        denials in prop::collection::vec((subject(), permission()), 1..40),
        resource_names in any::<bool>(),
    ) {
        let denials: Vec<Denied> = denials.into_iter().map(|(s, p)| denied(s, p)).collect();
        let roles = suggest(&denials, resource_names);
        // Covered, by one rule of one role: the subject's, in the denial's scope.
        for denial in &denials {
            let covering: usize = roles
                .iter()
                .filter(|role| role.subject == denial.subject && role.scope == denial.permission.scope())
                .flat_map(|role| &role.rules)
                .filter(|rule| rule.covers(&denial.permission))
                .count();
            prop_assert_eq!(covering, 1, "{:?} in {:?}", denial, roles);
        }
        // Nothing broader: every grant is a denial of that subject and scope; a grant for
        // any name only where names are not kept, or a request named no object.
        for role in &roles {
            let theirs: Vec<&Permission> = denials
                .iter()
                .filter(|d| d.subject == role.subject && d.permission.scope() == role.scope)
                .filter(|d| d.permission.is_impersonation() == role.impersonation)
                .map(|d| &d.permission)
                .collect();
            prop_assert!(!role.rules.is_empty());
            let counted: u64 = role.rules.iter().map(|r| r.denials).sum();
            prop_assert_eq!(counted, theirs.len() as u64);
            for rule in &role.rules {
                for (verb, group, target, name) in granted(rule) {
                    let matching: Vec<&&Permission> = theirs
                        .iter()
                        .filter(|p| match p {
                            Permission::Resource { api_group, resource, verb: v, .. } => {
                                *v == verb && *api_group == group && *resource == target
                            }
                            Permission::NonResource { url, verb: v } => {
                                group == "<url>" && *url == target && *v == verb
                            }
                        })
                        .collect();
                    prop_assert!(!matching.is_empty(), "{:?} grants {} {} {} unasked", rule, verb, group, target);
                    let keeps_names = resource_names || verb == "impersonate";
                    match &name {
                        Some(name) => {
                            let named = matching.iter().any(|p| matches!(p,
                                Permission::Resource { name: Some(n), .. } if n == name));
                            prop_assert!(named, "{:?} grants name {} unasked", rule, name);
                        }
                        None if keeps_names && group != "<url>" => prop_assert!(
                            matching.iter().any(|p| matches!(p, Permission::Resource { name: None, .. })),
                            "{:?} grants every name of {} {} though each request named one", rule, verb, target
                        ),
                        None => {}
                    }
                }
            }
        }
    }
}
