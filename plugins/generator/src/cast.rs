//! The simulated cluster: who calls the API server (users, nodes, controllers), which
//! resources exist, which workloads run where. Built once from the seed, then only read,
//! so every event reuses pre-rendered JSON pieces instead of formatting them again.

use rand::rngs::StdRng;
use rand::Rng;

use crate::json::{push_hex, push_uuid};

/// An API resource as it appears in `objectRef` and request URIs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resource {
    pub name: &'static str,
    /// `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

const fn res(
    name: &'static str,
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> Resource {
    Resource {
        name,
        group,
        version,
        kind,
        namespaced,
    }
}

pub(crate) const PODS: Resource = res("pods", "", "v1", "Pod", true);
pub(crate) const CONFIGMAPS: Resource = res("configmaps", "", "v1", "ConfigMap", true);
pub(crate) const SECRETS: Resource = res("secrets", "", "v1", "Secret", true);
pub(crate) const NODES: Resource = res("nodes", "", "v1", "Node", false);
pub(crate) const EVENTS: Resource = res("events", "", "v1", "Event", true);
pub(crate) const SERVICEACCOUNTS: Resource =
    res("serviceaccounts", "", "v1", "ServiceAccount", true);
pub(crate) const LEASES: Resource = res("leases", "coordination.k8s.io", "v1", "Lease", true);
pub(crate) const DEPLOYMENTS: Resource = res("deployments", "apps", "v1", "Deployment", true);
pub(crate) const REPLICASETS: Resource = res("replicasets", "apps", "v1", "ReplicaSet", true);
pub(crate) const ENDPOINTSLICES: Resource = res(
    "endpointslices",
    "discovery.k8s.io",
    "v1",
    "EndpointSlice",
    true,
);
pub(crate) const TOKENREVIEWS: Resource = res(
    "tokenreviews",
    "authentication.k8s.io",
    "v1",
    "TokenReview",
    false,
);

/// What controllers and informers list and watch, roughly by how often.
pub(crate) const WATCHED: &[Resource] = &[
    PODS,
    PODS,
    PODS,
    CONFIGMAPS,
    CONFIGMAPS,
    SECRETS,
    NODES,
    NODES,
    SERVICEACCOUNTS,
    LEASES,
    DEPLOYMENTS,
    REPLICASETS,
    ENDPOINTSLICES,
    ENDPOINTSLICES,
    res("services", "", "v1", "Service", true),
    res("endpoints", "", "v1", "Endpoints", true),
    res("namespaces", "", "v1", "Namespace", false),
    res(
        "persistentvolumeclaims",
        "",
        "v1",
        "PersistentVolumeClaim",
        true,
    ),
    res("persistentvolumes", "", "v1", "PersistentVolume", false),
    res("limitranges", "", "v1", "LimitRange", true),
    res("resourcequotas", "", "v1", "ResourceQuota", true),
    res("daemonsets", "apps", "v1", "DaemonSet", true),
    res("statefulsets", "apps", "v1", "StatefulSet", true),
    res("jobs", "batch", "v1", "Job", true),
    res("cronjobs", "batch", "v1", "CronJob", true),
    res("ingresses", "networking.k8s.io", "v1", "Ingress", true),
    res(
        "networkpolicies",
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        true,
    ),
    res(
        "horizontalpodautoscalers",
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        true,
    ),
    res(
        "poddisruptionbudgets",
        "policy",
        "v1",
        "PodDisruptionBudget",
        true,
    ),
    res("roles", "rbac.authorization.k8s.io", "v1", "Role", true),
    res(
        "rolebindings",
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        true,
    ),
    res(
        "clusterroles",
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        false,
    ),
    res(
        "clusterrolebindings",
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        false,
    ),
    res(
        "customresourcedefinitions",
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        false,
    ),
    res(
        "storageclasses",
        "storage.k8s.io",
        "v1",
        "StorageClass",
        false,
    ),
    res(
        "priorityclasses",
        "scheduling.k8s.io",
        "v1",
        "PriorityClass",
        false,
    ),
];

pub(crate) const NAMESPACES: &[&str] = &[
    "default",
    "kube-system",
    "monitoring",
    "ingress-nginx",
    "cert-manager",
    "argocd",
    "team-a",
    "team-b",
    "payments",
    "checkout",
    "search",
    "legacy-app",
    "data-platform",
    "ml-serving",
    "logging",
];

/// The namespace whose Secrets a (misconfigured) policy logs with full bodies.
pub(crate) const LEAKY_NAMESPACE: &str = "legacy-app";

const APPS: &[(&str, &str, &str)] = &[
    (
        "kube-system",
        "coredns",
        "registry.k8s.io/coredns/coredns:v1.11.3",
    ),
    (
        "kube-system",
        "metrics-server",
        "registry.k8s.io/metrics-server/metrics-server:v0.7.2",
    ),
    (
        "monitoring",
        "prometheus-k8s",
        "quay.io/prometheus/prometheus:v2.54.1",
    ),
    ("monitoring", "grafana", "docker.io/grafana/grafana:11.3.0"),
    (
        "monitoring",
        "alertmanager-main",
        "quay.io/prometheus/alertmanager:v0.27.0",
    ),
    (
        "ingress-nginx",
        "ingress-nginx-controller",
        "registry.k8s.io/ingress-nginx/controller:v1.11.3",
    ),
    (
        "cert-manager",
        "cert-manager",
        "quay.io/jetstack/cert-manager-controller:v1.16.1",
    ),
    (
        "cert-manager",
        "cert-manager-webhook",
        "quay.io/jetstack/cert-manager-webhook:v1.16.1",
    ),
    ("argocd", "argocd-server", "quay.io/argoproj/argocd:v2.13.0"),
    (
        "argocd",
        "argocd-repo-server",
        "quay.io/argoproj/argocd:v2.13.0",
    ),
    ("team-a", "web", "docker.io/library/nginx:1.27.2"),
    ("team-a", "api", "ghcr.io/example/team-a-api:3.14.1"),
    ("team-b", "frontend", "ghcr.io/example/frontend:2024.11.2"),
    ("team-b", "backend", "ghcr.io/example/backend:2024.11.2"),
    (
        "payments",
        "payments-api",
        "ghcr.io/example/payments-api:7.2.0",
    ),
    (
        "payments",
        "ledger-worker",
        "ghcr.io/example/ledger-worker:7.2.0",
    ),
    ("checkout", "checkout-svc", "ghcr.io/example/checkout:5.0.3"),
    ("checkout", "redis", "docker.io/library/redis:7.4.1"),
    (
        "search",
        "search-indexer",
        "ghcr.io/example/search-indexer:1.9.0",
    ),
    (
        "search",
        "opensearch",
        "docker.io/opensearchproject/opensearch:2.18.0",
    ),
    (
        "legacy-app",
        "legacy-app",
        "ghcr.io/example/legacy-app:0.9.7",
    ),
    ("legacy-app", "postgres", "docker.io/library/postgres:16.4"),
    (
        "data-platform",
        "kafka-connect",
        "quay.io/strimzi/kafka:0.44.0-kafka-3.8.0",
    ),
    (
        "data-platform",
        "airflow-scheduler",
        "docker.io/apache/airflow:2.10.3",
    ),
    (
        "ml-serving",
        "model-server",
        "ghcr.io/example/model-server:0.31.0",
    ),
    (
        "logging",
        "fluent-bit",
        "cr.fluentbit.io/fluent/fluent-bit:3.1.9",
    ),
];

const CONTROLLERS: &[&str] = &[
    "replicaset-controller",
    "deployment-controller",
    "endpointslice-controller",
    "endpoint-controller",
    "namespace-controller",
    "generic-garbage-collector",
    "daemon-set-controller",
    "statefulset-controller",
    "job-controller",
    "cronjob-controller",
    "node-controller",
    "horizontal-pod-autoscaler",
    "resourcequota-controller",
    "service-account-controller",
    "disruption-controller",
    "pvc-protection-controller",
];

/// (namespace, service account, user agent) of in-cluster clients.
const WORKLOAD_CLIENTS: &[(&str, &str, &str)] = &[
    ("monitoring", "prometheus-k8s", "Prometheus/2.54.1"),
    (
        "monitoring",
        "kube-state-metrics",
        "kube-state-metrics/v2.13.0 (linux/amd64) kube-state-metrics/7f31ad3",
    ),
    (
        "argocd",
        "argocd-application-controller",
        "argocd-application-controller/v2.13.0 (linux/amd64) kubernetes/abd5bed",
    ),
    (
        "cert-manager",
        "cert-manager",
        "cert-manager-controller/v1.16.1 (linux/amd64) cert-manager/a3e1d0e",
    ),
    (
        "ingress-nginx",
        "ingress-nginx",
        "nginx-ingress-controller/v1.11.3 (linux/amd64) ingress-nginx/4bb5d1a",
    ),
    (
        "kube-system",
        "coredns",
        "coredns/1.11.3 (linux/amd64) kubernetes/cd13ec4",
    ),
    ("logging", "fluent-bit", "fluent-bit/3.1.9"),
];

/// (username, uid, group) of people using kubectl.
const HUMANS: &[(&str, &str, &str)] = &[
    ("alice", "uid-1001", "dev-team"),
    ("bob", "uid-1002", "qa-team"),
    ("carol", "uid-1003", "dev-team"),
    ("dave", "uid-1004", "data-team"),
    ("oidc:erin@example.com", "uid-1005", "oidc:sre"),
];

const KUBECTL: &str = "kubectl/v1.32.0 (linux/amd64) kubernetes/cd13ec4";
const KUBE_VERSION: &str = "v1.32.0 (linux/amd64) kubernetes/cd13ec4";

/// One client of the API server, with its JSON pieces rendered once.
#[derive(Debug)]
pub(crate) struct Actor {
    /// The username, as it appears inside messages.
    pub name: String,
    /// The whole `user` object.
    pub user: Vec<u8>,
    pub source_ip: String,
    pub user_agent: String,
    /// The `authorization.k8s.io/reason` of an allowed request (already JSON-escaped).
    pub allow_reason: String,
}

/// A pod of a workload.
#[derive(Debug)]
pub(crate) struct Pod {
    pub namespace: &'static str,
    pub app: &'static str,
    pub image: &'static str,
    pub name: String,
    pub uid: u128,
    pub replicaset: String,
    pub node: usize,
    pub ip: String,
}

#[derive(Debug)]
pub(crate) struct Cast {
    pub apiserver: Actor,
    pub controller_manager: Actor,
    pub scheduler: Actor,
    pub controllers: Vec<Actor>,
    pub nodes: Vec<Actor>,
    pub node_names: Vec<String>,
    pub node_uids: Vec<u128>,
    pub workloads: Vec<Actor>,
    pub humans: Vec<Actor>,
    pub admin: Actor,
    /// Clients without the permissions they try to use (RBAC denials).
    pub unprivileged: Vec<Actor>,
    /// (source IP, user agent) of unauthenticated callers (401s).
    pub strangers: Vec<(String, &'static str)>,
    pub pods: Vec<Pod>,
    /// The key id in every service-account JWT header (base64url of the header JSON).
    pub jwt_header: Vec<u8>,
}

const NODE_COUNT: usize = 24;

impl Cast {
    pub(crate) fn new(rng: &mut StdRng) -> Cast {
        let credential = |rng: &mut StdRng| {
            let mut digest = Vec::with_capacity(64);
            push_hex(&mut digest, &rng.random::<[u8; 32]>());
            String::from_utf8(digest).expect("hex is ASCII")
        };
        let uuid = |rng: &mut StdRng| {
            let mut out = Vec::with_capacity(36);
            push_uuid(&mut out, rng.random());
            String::from_utf8(out).expect("a UUID is ASCII")
        };
        let system_user = |name: &str, credential: &str, agent: &str, ip: &str, reason: &str| {
            Actor {
            name: name.to_owned(),
            user: format!(
                r#"{{"username":"{name}","groups":["system:authenticated"],"extra":{{"authentication.kubernetes.io/credential-id":["X509SHA256={credential}"]}}}}"#
            )
            .into_bytes(),
            source_ip: ip.to_owned(),
            user_agent: agent.to_owned(),
            allow_reason: reason.to_owned(),
        }
        };
        let rbac_user_reason = |name: &str| {
            format!(
                r#"RBAC: allowed by ClusterRoleBinding \"{name}\" of ClusterRole \"{name}\" to User \"{name}\""#
            )
        };

        let apiserver_uid = uuid(rng);
        let apiserver = Actor {
            name: "system:apiserver".into(),
            user: format!(
                r#"{{"username":"system:apiserver","uid":"{apiserver_uid}","groups":["system:authenticated","system:masters"]}}"#
            )
            .into_bytes(),
            source_ip: "127.0.0.1".into(),
            user_agent: format!("kube-apiserver/{KUBE_VERSION}"),
            allow_reason: String::new(),
        };
        let kcm_credential = credential(rng);
        let controller_manager = system_user(
            "system:kube-controller-manager",
            &kcm_credential,
            &format!("kube-controller-manager/{KUBE_VERSION}/shared-informers"),
            "10.0.0.10",
            &rbac_user_reason("system:kube-controller-manager"),
        );
        let scheduler = system_user(
            "system:kube-scheduler",
            &credential(rng),
            &format!("kube-scheduler/{KUBE_VERSION}/scheduler"),
            "10.0.0.10",
            &rbac_user_reason("system:kube-scheduler"),
        );
        let controllers = CONTROLLERS
            .iter()
            .map(|controller| {
                let name = format!("system:serviceaccount:kube-system:{controller}");
                let (uid, jti) = (uuid(rng), uuid(rng));
                Actor {
                    user: format!(
                        r#"{{"username":"{name}","uid":"{uid}","groups":["system:serviceaccounts","system:serviceaccounts:kube-system","system:authenticated"],"extra":{{"authentication.kubernetes.io/credential-id":["JTI={jti}"]}}}}"#
                    )
                    .into_bytes(),
                    source_ip: "10.0.0.10".into(),
                    user_agent: format!("kube-controller-manager/{KUBE_VERSION}/{name}"),
                    allow_reason: format!(
                        r#"RBAC: allowed by ClusterRoleBinding \"system:controller:{controller}\" of ClusterRole \"system:controller:{controller}\" to ServiceAccount \"{controller}/kube-system\""#
                    ),
                    name,
                }
            })
            .collect();
        let node_names: Vec<String> = (1..=NODE_COUNT).map(|n| format!("worker-{n}")).collect();
        let node_uids = (0..NODE_COUNT).map(|_| rng.random()).collect();
        let nodes = node_names
            .iter()
            .enumerate()
            .map(|(index, node)| {
                let name = format!("system:node:{node}");
                let credential = credential(rng);
                Actor {
                    user: format!(
                        r#"{{"username":"{name}","groups":["system:nodes","system:authenticated"],"extra":{{"authentication.kubernetes.io/credential-id":["X509SHA256={credential}"]}}}}"#
                    )
                    .into_bytes(),
                    source_ip: format!("10.0.1.{}", 11 + index),
                    user_agent: format!("kubelet/{KUBE_VERSION}"),
                    allow_reason: String::new(),
                    name,
                }
            })
            .collect();
        let workload_actor = |rng: &mut StdRng, namespace: &str, account: &str, agent: &str| {
            let name = format!("system:serviceaccount:{namespace}:{account}");
            let (uid, jti, node_uid, pod_uid) = (uuid(rng), uuid(rng), uuid(rng), uuid(rng));
            let node = rng.random_range(1..=NODE_COUNT);
            let pod = format!("{account}-{}", rng.random_range(0..3));
            Actor {
                user: format!(
                    r#"{{"username":"{name}","uid":"{uid}","groups":["system:serviceaccounts","system:serviceaccounts:{namespace}","system:authenticated"],"extra":{{"authentication.kubernetes.io/credential-id":["JTI={jti}"],"authentication.kubernetes.io/node-name":["worker-{node}"],"authentication.kubernetes.io/node-uid":["{node_uid}"],"authentication.kubernetes.io/pod-name":["{pod}"],"authentication.kubernetes.io/pod-uid":["{pod_uid}"]}}}}"#
                )
                .into_bytes(),
                source_ip: format!("10.244.{}.{}", rng.random_range(0..NODE_COUNT), rng.random_range(2..250)),
                user_agent: agent.to_owned(),
                allow_reason: format!(
                    r#"RBAC: allowed by ClusterRoleBinding \"{account}\" of ClusterRole \"{account}\" to ServiceAccount \"{account}/{namespace}\""#
                ),
                name,
            }
        };
        let workloads = WORKLOAD_CLIENTS
            .iter()
            .map(|(namespace, account, agent)| workload_actor(rng, namespace, account, agent))
            .collect();
        let human = |rng: &mut StdRng, (name, uid, group): (&str, &str, &str)| {
            Actor {
            name: name.to_owned(),
            user: format!(
                r#"{{"username":"{name}","uid":"{uid}","groups":["{group}","system:authenticated"]}}"#
            )
            .into_bytes(),
            source_ip: format!("192.168.10.{}", rng.random_range(20..60)),
            user_agent: KUBECTL.into(),
            allow_reason: format!(
                r#"RBAC: allowed by RoleBinding \"{name}-edit/team-a\" of ClusterRole \"edit\" to User \"{name}\""#
            ),
        }
        };
        let humans: Vec<Actor> = HUMANS.iter().map(|&h| human(rng, h)).collect();
        let admin_credential = credential(rng);
        let admin = Actor {
            name: "kubernetes-admin".into(),
            user: format!(
                r#"{{"username":"kubernetes-admin","groups":["kubeadm:cluster-admins","system:authenticated"],"extra":{{"authentication.kubernetes.io/credential-id":["X509SHA256={admin_credential}"]}}}}"#
            )
            .into_bytes(),
            source_ip: "192.168.10.5".into(),
            user_agent: KUBECTL.into(),
            allow_reason: r#"RBAC: allowed by ClusterRoleBinding \"kubeadm:cluster-admins\" of ClusterRole \"cluster-admin\" to Group \"kubeadm:cluster-admins\""#.into(),
        };
        let mut unprivileged: Vec<Actor> = HUMANS[1..4].iter().map(|&h| human(rng, h)).collect();
        unprivileged.push(workload_actor(
            rng,
            "team-a",
            "default",
            "python-requests/2.31.0",
        ));
        unprivileged.push(workload_actor(
            rng,
            "ml-serving",
            "model-server",
            "Go-http-client/2.0",
        ));
        unprivileged.push(workload_actor(
            rng,
            "team-b",
            "ci-runner",
            "kubectl/v1.31.2 (linux/amd64) kubernetes/5864a46",
        ));
        let strangers = [
            "python-requests/2.31.0",
            "curl/8.5.0",
            "Go-http-client/1.1",
            "Mozilla/5.0 zgrab/0.x",
        ]
        .iter()
        .map(|&agent| {
            let ip = format!("203.0.113.{}", rng.random_range(2..250));
            (ip, agent)
        })
        .collect();

        let mut pods = Vec::new();
        for &(namespace, app, image) in APPS {
            let hash = random_name(rng, 10);
            let replicas = rng.random_range(2..=5);
            for _ in 0..replicas {
                let suffix = random_name(rng, 5);
                pods.push(Pod {
                    namespace,
                    app,
                    image,
                    name: format!("{app}-{hash}-{suffix}"),
                    uid: rng.random(),
                    replicaset: format!("{app}-{hash}"),
                    node: rng.random_range(0..NODE_COUNT),
                    ip: format!(
                        "10.244.{}.{}",
                        rng.random_range(0..NODE_COUNT),
                        rng.random_range(2..250)
                    ),
                });
            }
        }

        let kid = {
            let mut kid = Vec::new();
            crate::json::push_base64url(&mut kid, &rng.random::<[u8; 32]>());
            String::from_utf8(kid).expect("base64 is ASCII")
        };
        let mut jwt_header = Vec::new();
        crate::json::push_base64url(
            &mut jwt_header,
            format!(r#"{{"alg":"RS256","kid":"{kid}"}}"#).as_bytes(),
        );

        Cast {
            apiserver,
            controller_manager,
            scheduler,
            controllers,
            nodes,
            node_names,
            node_uids,
            workloads,
            humans,
            admin,
            unprivileged,
            strangers,
            pods,
            jwt_header,
        }
    }
}

/// A name suffix in the alphabet Kubernetes uses for generated names (`x7k2p`).
fn random_name(rng: &mut StdRng, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}
