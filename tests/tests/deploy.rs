//! `deploy/`: what an operator applies to a cluster, checked before it reaches one.
//!
//! - Every Kubernetes object validates, strictly (unknown fields are errors), against the
//!   schemas of Kubernetes 1.29 and 1.34 with `kubernetes-validate` (PyPI; it ships the
//!   schemas, so this runs offline; `scripts/test` installs it).
//! - The objects of other APIs, which it has no schema for, are checked here for the fields
//!   their CRDs require and for what they point at: cert-manager `Issuer`/`Certificate`,
//!   Prometheus Operator `ServiceMonitor`/`PrometheusRule`, kubeadm's
//!   `ClusterConfiguration` (against the static-pod patch), and the audit `Policy`
//!   (`auditflow policy lint`).
//! - Alert expressions and dashboard queries parse as PromQL and name only metrics that
//!   `crates/metrics/src/names.rs` defines, and labels that docs/metrics.md describes.
//! - Every pipeline a ConfigMap carries passes `auditflow validate` with exactly the
//!   environment its Deployment gives it; probes point at the port the pipeline serves
//!   `/health` and `/ready` on; the webhook kubeconfig Secret is what `auditflow
//!   webhook-kubeconfig` writes for the Service it names.
//! - `scripts/image` builds the image offline and `auditflow validate` runs inside it
//!   (podman, or a chroot of the image where podman cannot start containers); the test
//!   says why when the machine allows neither.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use auditflow_e2e::{auditflow_bin, clean_command, repo_root};
use promql_parser::parser::{self, Expr, LabelModifier, VectorSelector};
use serde::Deserialize;
use serde_yaml::Value;

/// Kubernetes versions every manifest must validate against: the oldest kubeadm release
/// still patched when this was written, and a recent one.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.34.0"];

/// Objects of APIs kubernetes-validate has no schema for, and the test that checks them.
const OTHER_APIS: [(&str, &str, &str); 6] = [
    (
        "cert-manager.io/v1",
        "Issuer",
        "cert_manager_objects_are_well_formed",
    ),
    (
        "cert-manager.io/v1",
        "Certificate",
        "cert_manager_objects_are_well_formed",
    ),
    (
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        "service_monitor_scrapes_every_auditflow_service",
    ),
    (
        "monitoring.coreos.com/v1",
        "PrometheusRule",
        "prometheus_rules_are_well_formed",
    ),
    (
        "kubeadm.k8s.io/v1beta4",
        "ClusterConfiguration",
        "sidecar_patch_runs_the_sidecar_pipeline_on_the_audit_log",
    ),
    (
        "audit.k8s.io/v1",
        "Policy",
        "sidecar_patch_runs_the_sidecar_pipeline_on_the_audit_log",
    ),
];

/// YAML files under deploy/ that are not Kubernetes objects: files for a control-plane
/// node, each checked by the named test.
const NODE_FILES: [(&str, &str); 1] = [(
    "deploy/sidecar/collector.yaml",
    "sidecar_patch_runs_the_sidecar_pipeline_on_the_audit_log",
)];

/// Series from outside auditflow that the alerts and the dashboard may use: Prometheus's
/// own `up`, kube-state-metrics' verdict of the readiness probe (the only view of `/ready`
/// failing that outlives the pod), and the kubelet's (cAdvisor) anonymous resident memory
/// of a container, which is what the memory limit is held against (`RssAnon`).
const OTHER_METRICS: [&str; 3] = [
    "up",
    "kube_pod_container_status_ready",
    "container_memory_rss",
];

/// The memory limit's series (docs/pipelines.md#memory-limit): the alerts and the
/// dashboard must both show them, or sources paused for good go unseen.
const MEMORY_LIMIT_METRICS: [&str; 3] = [
    "auditflow_memory_limited",
    "auditflow_memory_limited_total",
    "auditflow_memory_limit_bytes",
];

/// Labels Prometheus (with the Prometheus Operator and kube-state-metrics) puts on scraped
/// series, besides auditflow's own.
const TARGET_LABELS: [&str; 6] = [
    "namespace",
    "pod",
    "service",
    "job",
    "instance",
    "container",
];

// ---------------------------------------------------------------------------------------
// Reading deploy/

/// One YAML document of a file under deploy/.
struct Doc {
    /// Relative to the repository root, for messages.
    file: String,
    value: Value,
}

impl Doc {
    fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or("")
    }

    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }

    fn namespace(&self) -> &str {
        self.value["metadata"]["namespace"].as_str().unwrap_or("")
    }

    /// `Kind/name in file`, for messages.
    fn id(&self) -> String {
        format!("{}/{} in {}", self.kind(), self.name(), self.file)
    }

    /// The string at a dotted path (`spec.issuerRef.name`; numbers index lists).
    fn str_at(&self, path: &str) -> &str {
        at(&self.value, path)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{}: {path}: expected a string", self.id()))
    }
}

fn at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(value, |value, key| match key.parse::<usize>() {
            Ok(index) => value.get(index),
            Err(_) => value.get(key),
        })
}

fn seq(value: &Value) -> &[Value] {
    value.as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

fn yaml_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("read a directory entry").path();
        if path.is_dir() {
            yaml_files(&path, found);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            found.push(path);
        }
    }
}

/// Every YAML file under deploy/, relative to the repository root, sorted.
fn deploy_files() -> Vec<String> {
    let root = repo_root();
    let mut files = Vec::new();
    yaml_files(&root.join("deploy"), &mut files);
    let mut files: Vec<String> = files
        .iter()
        .map(|file| file.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "deploy/ holds no YAML file");
    files
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_root().join(relative))
        .unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn documents(relative: &str) -> Vec<Doc> {
    let text = read(relative);
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap_or_else(|e| panic!("{relative}: {e}")))
        .filter(|value| !value.is_null())
        .map(|value| Doc {
            file: relative.to_owned(),
            value,
        })
        .collect()
}

/// Every Kubernetes object under deploy/ (documents with an `apiVersion`).
fn objects() -> Vec<Doc> {
    deploy_files()
        .iter()
        .flat_map(|file| documents(file))
        .filter(|doc| !doc.api_version().is_empty())
        .collect()
}

fn find<'a>(objects: &'a [Doc], kind: &str, namespace: &str, name: &str) -> Option<&'a Doc> {
    objects
        .iter()
        .find(|doc| doc.kind() == kind && doc.namespace() == namespace && doc.name() == name)
}

fn of_kind<'a>(objects: &'a [Doc], kind: &str) -> Vec<&'a Doc> {
    objects.iter().filter(|doc| doc.kind() == kind).collect()
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"))
}

fn text(output: &Output) -> String {
    format!(
        "exit {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The port of an address such as `0.0.0.0:9598` or `${VAR:-127.0.0.1:9598}`.
fn port_of(address: &str) -> u16 {
    let address = address
        .strip_prefix("${")
        .and_then(|rest| rest.split_once(":-"))
        .map_or(address, |(_, default)| default.trim_end_matches('}'));
    address
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("{address:?}: no port"))
}

/// Names in `${NAME}` references without a default: the variables a pipeline needs.
fn required_variables(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        rest = &rest[start + 2..];
        let Some(end) = rest.find('}') else { break };
        if !rest[..end].contains(":-") {
            names.insert(rest[..end].to_owned());
        }
        rest = &rest[end..];
    }
    names
}

fn workspace_version() -> String {
    read("Cargo.toml")
        .lines()
        .find_map(|line| line.strip_prefix("version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("version in the root Cargo.toml")
        .to_owned()
}

// ---------------------------------------------------------------------------------------
// Kubernetes schemas

/// `kubernetes-validate`, as installed by `scripts/test` (its script, or the module).
fn kubernetes_validate() -> Command {
    let script = Command::new("kubernetes-validate")
        .arg("--version")
        .output();
    if script.is_ok_and(|output| output.status.success()) {
        return Command::new("kubernetes-validate");
    }
    let module = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--version"])
        .output();
    if module.is_ok_and(|output| output.status.success()) {
        let mut command = Command::new("python3");
        command.args(["-m", "kubernetes_validate"]);
        return command;
    }
    panic!(
        "kubernetes-validate is not installed: `python3 -m pip install kubernetes-validate` \
         (scripts/test installs it)"
    );
}

fn validate_schemas(files: &[String]) -> Output {
    let mut command = kubernetes_validate();
    command.arg("--strict");
    for version in KUBERNETES_VERSIONS {
        command.args(["-k", version]);
    }
    command.args(files).current_dir(repo_root());
    run(&mut command)
}

#[test]
fn manifests_validate_against_kubernetes_schemas() {
    let mut manifests = Vec::new();
    let mut kubernetes_objects = 0;
    for file in deploy_files() {
        let docs = documents(&file);
        if docs.iter().all(|doc| doc.api_version().is_empty()) {
            assert!(
                NODE_FILES.iter().any(|(node_file, _)| *node_file == file),
                "{file} is neither a Kubernetes object nor a node file this test knows; \
                 add it to NODE_FILES with the test that checks it"
            );
            continue;
        }
        for doc in &docs {
            assert!(
                !doc.api_version().is_empty() && !doc.kind().is_empty(),
                "{file}: a document without apiVersion and kind next to objects"
            );
            let other = OTHER_APIS
                .iter()
                .any(|(api, kind, _)| *api == doc.api_version() && *kind == doc.kind());
            if !other {
                kubernetes_objects += 1;
            }
        }
        manifests.push(file);
    }

    let output = validate_schemas(&manifests);
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut passed = 0;
    let mut problems = Vec::new();
    for line in report.lines() {
        if line.starts_with("INFO ") && line.contains(" passed for resource ") {
            passed += 1;
        } else if let Some(warning) = line.strip_prefix("WARN ") {
            // `WARN file Couldn't find schema for kind K with api version A for ...`
            let known = OTHER_APIS.iter().any(|(api, kind, _)| {
                warning.contains(&format!("for kind {kind} with api version {api} "))
            });
            if !known {
                problems.push(line.to_owned());
            }
        } else if !line.trim().is_empty() {
            problems.push(line.to_owned());
        }
    }
    assert!(
        output.status.success() && problems.is_empty(),
        "manifests do not validate:\n{}\n{}",
        problems.join("\n"),
        text(&output)
    );
    assert_eq!(
        passed,
        kubernetes_objects * KUBERNETES_VERSIONS.len(),
        "every Kubernetes object validated once per version:\n{report}"
    );
}

/// The validator rejects what kubectl would: without this, a validator that passed
/// everything would pass the test above.
#[test]
fn kubernetes_validate_rejects_a_misspelt_field() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    let deployment =
        read("deploy/aggregator/deployment.yaml").replace("readinessProbe:", "readynessProbe:");
    std::fs::write(&broken, deployment).unwrap();
    let output = validate_schemas(&[broken.display().to_string()]);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("readynessProbe"),
        "{}",
        text(&output)
    );
}

#[test]
fn images_are_this_version() {
    let expected = format!(":{}", workspace_version());
    let mut images = Vec::new();
    for doc in objects() {
        let spec = if doc.kind() == "Pod" {
            &doc.value["spec"]
        } else {
            &doc.value["spec"]["template"]["spec"]
        };
        for container in seq(&spec["containers"]) {
            let image = container["image"].as_str().unwrap_or("");
            assert!(
                image.ends_with(&expected),
                "{}: image {image} is not {expected}",
                doc.id()
            );
            images.push(image.to_owned());
        }
    }
    assert_eq!(
        images.len(),
        3,
        "the sidecar, webhook and aggregator containers: {images:?}"
    );
}

/// Whether every `key: value` of `selector` is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_mapping()
        .is_some_and(|selector| !selector.is_empty())
        && selector
            .as_mapping()
            .unwrap()
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
}

/// What the schemas cannot see and the API server or the controllers would: a Deployment
/// whose selector misses its own pods is refused; a Service, PodDisruptionBudget or
/// HorizontalPodAutoscaler that points at nothing is accepted and does nothing.
#[test]
fn selectors_and_references_reach_the_pods() {
    let objects = objects();
    let deployments = of_kind(&objects, "Deployment");
    for deployment in &deployments {
        let pod_labels = &deployment.value["spec"]["template"]["metadata"]["labels"];
        assert!(
            selects(
                &deployment.value["spec"]["selector"]["matchLabels"],
                pod_labels
            ),
            "{}: spec.selector does not select its own template",
            deployment.id()
        );
    }
    let pods_of = |namespace: &str, selector: &Value| -> Vec<String> {
        deployments
            .iter()
            .filter(|deployment| deployment.namespace() == namespace)
            .filter(|deployment| {
                selects(
                    selector,
                    &deployment.value["spec"]["template"]["metadata"]["labels"],
                )
            })
            .map(|deployment| deployment.name().to_owned())
            .collect()
    };
    for service in of_kind(&objects, "Service") {
        let selected = pods_of(service.namespace(), &service.value["spec"]["selector"]);
        assert_eq!(selected.len(), 1, "{} selects {selected:?}", service.id());
    }
    for budget in of_kind(&objects, "PodDisruptionBudget") {
        let selected = pods_of(
            budget.namespace(),
            &budget.value["spec"]["selector"]["matchLabels"],
        );
        assert_eq!(selected.len(), 1, "{} selects {selected:?}", budget.id());
    }
    for autoscaler in of_kind(&objects, "HorizontalPodAutoscaler") {
        let target = autoscaler.str_at("spec.scaleTargetRef.name");
        assert_eq!(autoscaler.str_at("spec.scaleTargetRef.kind"), "Deployment");
        assert!(
            find(&objects, "Deployment", autoscaler.namespace(), target).is_some(),
            "{}: Deployment {target} is not in deploy/",
            autoscaler.id()
        );
        for metric in seq(&autoscaler.value["spec"]["metrics"]) {
            let name = metric["external"]["metric"]["name"].as_str().unwrap_or("");
            assert!(
                exported_metrics().contains(name),
                "{}: external metric {name:?} is not one auditflow exports",
                autoscaler.id()
            );
        }
    }
    // Every namespaced object lives in a namespace deploy/ creates, or in kube-system.
    let namespaces: BTreeSet<&str> = of_kind(&objects, "Namespace")
        .iter()
        .map(|namespace| namespace.name())
        .chain(["kube-system"])
        .collect();
    for doc in &objects {
        let namespaced = !doc.namespace().is_empty();
        assert!(
            !namespaced || namespaces.contains(doc.namespace()),
            "{}: namespace {} is created nowhere",
            doc.id(),
            doc.namespace()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Deployments, their ConfigMaps, Secrets and probes

/// The pipeline a container runs: its ConfigMap's files written to `dir`, the path of the
/// one named by `run` in its args, and the environment the container gets.
struct ContainerPipeline {
    config_map: String,
    path: PathBuf,
    text: String,
    env: Vec<(String, String)>,
}

fn container_pipeline(
    objects: &[Doc],
    deployment: &Doc,
    container: &Value,
    dir: &Path,
) -> ContainerPipeline {
    let id = deployment.id();
    let pod = &deployment.value["spec"]["template"]["spec"];
    let args: Vec<&str> = seq(&container["args"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let run_at = args
        .iter()
        .position(|arg| *arg == "run")
        .unwrap_or_else(|| panic!("{id}: args {args:?} do not `run` a pipeline"));
    let files = &args[run_at + 1..];
    assert_eq!(
        files.len(),
        1,
        "{id}: one pipeline file expected, got {files:?}"
    );
    let file = Path::new(files[0]);

    // The volume mounted at the file's directory must be a ConfigMap of deploy/ that has
    // the file as a key.
    let mount = seq(&container["volumeMounts"])
        .iter()
        .find(|mount| Some(Path::new(mount["mountPath"].as_str().unwrap_or(""))) == file.parent())
        .unwrap_or_else(|| {
            panic!(
                "{id}: nothing is mounted at {}",
                file.parent().unwrap().display()
            )
        });
    let volume_name = mount["name"].as_str().unwrap();
    let volume = seq(&pod["volumes"])
        .iter()
        .find(|volume| volume["name"].as_str() == Some(volume_name))
        .unwrap_or_else(|| panic!("{id}: volume {volume_name} is mounted but not defined"));
    let config_map_name = volume["configMap"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("{id}: volume {volume_name} is not a ConfigMap"));
    let config_map = find(
        objects,
        "ConfigMap",
        deployment.namespace(),
        config_map_name,
    )
    .unwrap_or_else(|| panic!("{id}: ConfigMap {config_map_name} is not in deploy/"));
    let key = file.file_name().unwrap().to_str().unwrap();
    let text = config_map.value["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("{}: no key {key}, which {id} runs", config_map.id()))
        .to_owned();

    // The environment: literal values as they are, values from Secrets checked to exist.
    let mut env = Vec::new();
    for variable in seq(&container["env"]) {
        let name = variable["name"].as_str().unwrap().to_owned();
        if let Some(value) = variable["value"].as_str() {
            env.push((name, value.to_owned()));
        } else if let Some(reference) = variable
            .get("valueFrom")
            .and_then(|from| from.get("secretKeyRef"))
        {
            let secret_name = reference["name"].as_str().unwrap();
            let secret_key = reference["key"].as_str().unwrap();
            let secret = find(objects, "Secret", deployment.namespace(), secret_name)
                .unwrap_or_else(|| {
                    panic!("{id}: env {name}: Secret {secret_name} is not in deploy/")
                });
            let value = secret.value["stringData"][secret_key]
                .as_str()
                .unwrap_or_else(|| {
                    panic!("{id}: env {name}: {} has no key {secret_key}", secret.id())
                });
            env.push((name, value.to_owned()));
        } else {
            panic!("{id}: env {name} has neither a value nor a secretKeyRef");
        }
    }

    let path = dir.join(format!("{}-{key}", deployment.name()));
    std::fs::write(&path, &text).unwrap();
    ContainerPipeline {
        config_map: config_map.id(),
        path,
        text,
        env,
    }
}

/// The pipeline's `metrics.address` port.
fn metrics_port(pipeline: &str, id: &str) -> u16 {
    let value: Value = serde_yaml::from_str(pipeline).unwrap_or_else(|e| panic!("{id}: {e}"));
    let address = value["metrics"]["address"].as_str().unwrap_or_else(|| {
        panic!("{id}: the pipeline sets no metrics.address, so /health and /ready are not served")
    });
    port_of(address)
}

/// A probe's port as a number (a named port resolved through the container's ports).
fn probe_port(container: &Value, probe: &Value) -> u16 {
    let port = &probe["httpGet"]["port"];
    if let Some(number) = port.as_u64() {
        return u16::try_from(number).unwrap();
    }
    let name = port.as_str().unwrap();
    seq(&container["ports"])
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|n| u16::try_from(n).ok())
        .unwrap_or_else(|| panic!("probe port {name} is not a port of the container"))
}

/// Liveness and startup on `/health`, readiness on `/ready`, all at the metrics port.
fn assert_probes(id: &str, container: &Value, metrics_port: u16) {
    for (probe, path) in [
        ("startupProbe", "/health"),
        ("livenessProbe", "/health"),
        ("readinessProbe", "/ready"),
    ] {
        let value = &container[probe];
        assert_eq!(
            value["httpGet"]["path"].as_str(),
            Some(path),
            "{id}: {probe} path"
        );
        assert_eq!(
            probe_port(container, value),
            metrics_port,
            "{id}: {probe} port is not the pipeline's metrics port"
        );
    }
}

#[test]
fn every_configmap_pipeline_validates_with_its_deployments_environment() {
    let objects = objects();
    let dir = tempfile::tempdir().unwrap();
    let mut used_config_maps = BTreeSet::new();
    let deployments = of_kind(&objects, "Deployment");
    assert_eq!(
        deployments.len(),
        2,
        "the webhook and aggregator Deployments"
    );
    for deployment in deployments {
        let id = deployment.id();
        for container in seq(&deployment.value["spec"]["template"]["spec"]["containers"]) {
            let pipeline = container_pipeline(&objects, deployment, container, dir.path());
            let given: BTreeSet<String> =
                pipeline.env.iter().map(|(name, _)| name.clone()).collect();
            let missing: Vec<_> = required_variables(&pipeline.text)
                .difference(&given)
                .cloned()
                .collect();
            assert!(
                missing.is_empty(),
                "{id}: the pipeline needs {missing:?}, which the container's env does not set"
            );

            let output = run(clean_command(&["validate"])
                .arg(&pipeline.path)
                .envs(pipeline.env.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
            assert!(
                output.status.success(),
                "{id}: its pipeline does not validate:\n{}",
                text(&output)
            );

            assert_probes(&id, container, metrics_port(&pipeline.text, &id));
            used_config_maps.insert(pipeline.config_map);
        }
        // Every Secret volume is a Secret of deploy/ or one cert-manager writes.
        for volume in seq(&deployment.value["spec"]["template"]["spec"]["volumes"]) {
            if let Some(secret) = volume["secret"]["secretName"].as_str() {
                let defined = find(&objects, "Secret", deployment.namespace(), secret).is_some()
                    || of_kind(&objects, "Certificate")
                        .iter()
                        .any(|certificate| certificate.str_at("spec.secretName") == secret);
                assert!(
                    defined,
                    "{id}: Secret {secret} is neither in deploy/ nor written by a Certificate"
                );
            }
        }
    }
    let config_maps = of_kind(&objects, "ConfigMap");
    assert_eq!(
        used_config_maps.len(),
        config_maps.len(),
        "a ConfigMap in deploy/ that no Deployment runs: {:?}",
        config_maps.iter().map(|doc| doc.id()).collect::<Vec<_>>()
    );
}

#[test]
fn sidecar_patch_runs_the_sidecar_pipeline_on_the_audit_log() {
    let patch = documents("deploy/sidecar/patches/kube-apiserver+strategic.yaml");
    let [patch] = patch.as_slice() else {
        panic!("the patch is one document")
    };
    assert_eq!(
        (patch.kind(), patch.name(), patch.namespace()),
        ("Pod", "kube-apiserver", "kube-system")
    );
    let kubeadm = documents("deploy/sidecar/kubeadm-config.yaml");
    let [kubeadm] = kubeadm.as_slice() else {
        panic!("kubeadm-config.yaml is one document")
    };
    assert_eq!(
        (kubeadm.api_version(), kubeadm.kind()),
        ("kubeadm.k8s.io/v1beta4", "ClusterConfiguration")
    );

    // The API server flags the seeds set (policy, log path, rotation), as kubeadm writes them.
    let flags: BTreeMap<&str, &str> = seq(&kubeadm.value["apiServer"]["extraArgs"])
        .iter()
        .map(|arg| {
            (
                arg["name"].as_str().unwrap(),
                arg["value"].as_str().unwrap(),
            )
        })
        .collect();
    for flag in [
        "audit-policy-file",
        "audit-log-path",
        "audit-log-maxsize",
        "audit-log-maxbackup",
    ] {
        assert!(
            flags.contains_key(flag),
            "kubeadm-config.yaml: --{flag} is not set"
        );
    }
    let extra_volumes: BTreeMap<&str, &Value> = seq(&kubeadm.value["apiServer"]["extraVolumes"])
        .iter()
        .map(|volume| (volume["name"].as_str().unwrap(), volume))
        .collect();
    let log_dir = Path::new(flags["audit-log-path"]).parent().unwrap();
    let log_volume = extra_volumes
        .values()
        .find(|volume| Path::new(volume["mountPath"].as_str().unwrap()) == log_dir)
        .unwrap_or_else(|| {
            panic!(
                "kubeadm-config.yaml: no extraVolume mounts {}",
                log_dir.display()
            )
        });
    assert!(
        extra_volumes
            .values()
            .any(|volume| volume["mountPath"].as_str() == Some(flags["audit-policy-file"])),
        "kubeadm-config.yaml: no extraVolume mounts the policy file"
    );

    let containers = seq(&patch.value["spec"]["containers"]);
    let [container] = containers else {
        panic!("the patch adds one container")
    };
    assert_eq!(container["name"].as_str(), Some("auditflow"));
    let patch_volumes: BTreeMap<&str, &Value> = seq(&patch.value["spec"]["volumes"])
        .iter()
        .map(|volume| (volume["name"].as_str().unwrap(), volume))
        .collect();
    let mounts: BTreeMap<&str, &str> = seq(&container["volumeMounts"])
        .iter()
        .map(|mount| {
            (
                mount["mountPath"].as_str().unwrap(),
                mount["name"].as_str().unwrap(),
            )
        })
        .collect();
    for name in mounts.values() {
        assert!(
            patch_volumes.contains_key(name) || extra_volumes.contains_key(name),
            "the patch mounts volume {name}, which neither it nor kubeadm-config.yaml defines"
        );
    }
    // The container sees the audit log where kube-apiserver writes it.
    assert_eq!(
        mounts.get(log_dir.to_str().unwrap()).copied(),
        log_volume["name"].as_str(),
        "the audit log directory is not mounted into the auditflow container"
    );

    // `run` FILES: pipelines/sidecar.yaml and collector.yaml, from the node's
    // /etc/kubernetes/auditflow (docs/deploy.md copies them there).
    let args: Vec<&str> = seq(&container["args"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let files = &args[args
        .iter()
        .position(|arg| *arg == "run")
        .expect("args run a pipeline")
        + 1..];
    let config_volume = patch_volumes[mounts["/etc/auditflow"]];
    assert_eq!(
        config_volume["hostPath"]["path"].as_str(),
        Some("/etc/kubernetes/auditflow")
    );
    assert_eq!(
        files,
        [
            "/etc/auditflow/sidecar.yaml",
            "/etc/auditflow/collector.yaml"
        ]
    );
    let repository_files = ["pipelines/sidecar.yaml", "deploy/sidecar/collector.yaml"];
    let env: Vec<(&str, &str)> = seq(&container["env"])
        .iter()
        .map(|variable| {
            (
                variable["name"].as_str().unwrap(),
                variable["value"].as_str().unwrap(),
            )
        })
        .collect();
    let output = run(clean_command(&["validate"])
        .args(repository_files)
        .envs(env.iter().copied())
        .current_dir(repo_root()));
    assert!(
        output.status.success(),
        "the sidecar's pipeline does not validate:\n{}",
        text(&output)
    );

    // The file source reads the directory the patch mounts.
    let pipeline: Value = serde_yaml::from_str(&read("pipelines/sidecar.yaml")).unwrap();
    for include in seq(&pipeline["sources"]["apiserver"]["include"]) {
        let include = Path::new(include.as_str().unwrap());
        assert_eq!(
            include.parent(),
            Some(log_dir),
            "pipelines/sidecar.yaml reads {}",
            include.display()
        );
    }
    // Probes on the metrics port the container's environment sets (loopback of the node).
    let address = env
        .iter()
        .find(|(name, _)| *name == "AUDITFLOW_METRICS_ADDRESS")
        .map(|(_, value)| *value)
        .expect("the patch sets AUDITFLOW_METRICS_ADDRESS");
    assert_probes("the sidecar patch", container, port_of(address));
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_eq!(
            container[probe]["httpGet"]["host"].as_str(),
            address.rsplit_once(':').map(|(host, _)| host),
            "{probe} host: kube-apiserver's pod is on the host network"
        );
    }

    // The audit Policy the API server loads passes auditflow's own lint.
    let output = run(
        clean_command(&["policy", "lint", "deploy/sidecar/audit-policy.yaml"])
            .current_dir(repo_root()),
    );
    assert!(
        output.status.success(),
        "audit-policy.yaml:\n{}",
        text(&output)
    );
}

#[test]
fn webhook_kubeconfig_secret_is_what_webhook_kubeconfig_writes_for_the_service() {
    let objects = objects();
    let secret = find(
        &objects,
        "Secret",
        "kube-system",
        "auditflow-audit-webhook-kubeconfig",
    )
    .expect("deploy/webhook: the kubeconfig Secret");
    let stored = secret.value["stringData"]["audit-webhook.yaml"]
        .as_str()
        .expect("the Secret's key audit-webhook.yaml");
    let kubeconfig: Value = serde_yaml::from_str(stored).unwrap();
    let server = kubeconfig["clusters"][0]["cluster"]["server"]
        .as_str()
        .unwrap();
    let ca_file = kubeconfig["clusters"][0]["cluster"]["certificate-authority"]
        .as_str()
        .unwrap();
    let token = kubeconfig["users"][0]["user"]["token"].as_str().unwrap();

    // The token is one the webhook source accepts.
    let tokens = find(&objects, "Secret", "auditflow", "auditflow-webhook-tokens")
        .expect("the tokens Secret");
    let accepted: Vec<&str> = tokens
        .str_at("stringData.tokens")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    assert_eq!(
        accepted,
        [token],
        "the kubeconfig's token is not the one the webhook accepts"
    );

    // Byte for byte what `auditflow webhook-kubeconfig` writes.
    let output = run(clean_command(&[
        "webhook-kubeconfig",
        "--server",
        server,
        "--ca-file",
        ca_file,
    ])
    .env("AUDITFLOW_WEBHOOK_TOKEN", token));
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        stored,
        "regenerate the Secret with the command in its comment"
    );

    // https://<Service ClusterIP>:<Service port>/<the webhook source's path>
    let rest = server.strip_prefix("https://").expect("an https:// server");
    let (authority, path) = rest.split_once('/').expect("a path");
    let (host, port) = authority.rsplit_once(':').expect("a port");
    let service =
        find(&objects, "Service", "auditflow", "auditflow-webhook").expect("the webhook Service");
    assert_eq!(
        Some(host),
        service.value["spec"]["clusterIP"].as_str(),
        "the server is not the Service's fixed ClusterIP"
    );
    let service_port = seq(&service.value["spec"]["ports"])
        .iter()
        .find(|p| p["port"].as_u64().map(|n| n.to_string()).as_deref() == Some(port))
        .unwrap_or_else(|| panic!("the Service has no port {port}"));
    let deployment = find(&objects, "Deployment", "auditflow", "auditflow-webhook")
        .expect("the webhook Deployment");
    let config_map = find(&objects, "ConfigMap", "auditflow", "auditflow-webhook")
        .expect("the webhook ConfigMap");
    let pipeline: Value =
        serde_yaml::from_str(config_map.value["data"]["pipeline.yaml"].as_str().unwrap()).unwrap();
    let source = &pipeline["sources"]["apiserver"];
    assert_eq!(source["type"].as_str(), Some("webhook"));
    assert_eq!(
        source["path"].as_str().map(|p| p.trim_start_matches('/')),
        Some(path),
        "the URL path is not the source's path"
    );
    let container = &deployment.value["spec"]["template"]["spec"]["containers"][0];
    let target = service_port["targetPort"]
        .as_str()
        .expect("a named targetPort");
    let container_port = seq(&container["ports"])
        .iter()
        .find(|p| p["name"].as_str() == Some(target))
        .and_then(|p| p["containerPort"].as_u64())
        .expect("the Service's targetPort is a port of the container");
    assert_eq!(
        container_port,
        u64::from(port_of(source["address"].as_str().unwrap())),
        "the webhook listens elsewhere"
    );

    // The serving certificate names the address the API server dials.
    let certificate = find(&objects, "Certificate", "auditflow", "auditflow-webhook")
        .expect("the webhook Certificate");
    assert!(
        seq(&certificate.value["spec"]["ipAddresses"])
            .iter()
            .any(|ip| ip.as_str() == Some(host)),
        "{}: ipAddresses lacks {host}",
        certificate.id()
    );
}

// ---------------------------------------------------------------------------------------
// cert-manager and the Prometheus Operator: the fields their CRDs require

fn assert_keys(id: &str, value: &Value, allowed: &[&str], required: &[&str]) {
    let mapping = value
        .as_mapping()
        .unwrap_or_else(|| panic!("{id}: expected a mapping"));
    for key in mapping.keys() {
        let key = key.as_str().unwrap_or("");
        assert!(
            allowed.contains(&key),
            "{id}: unknown field {key:?} (allowed: {allowed:?})"
        );
    }
    for key in required {
        assert!(
            mapping.contains_key(*key),
            "{id}: required field {key:?} is missing"
        );
    }
}

/// A Go duration as cert-manager parses it: `2160h`, `90m`, `1h30m`.
fn is_go_duration(text: &str) -> bool {
    let mut rest = text;
    let mut any = false;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let Some(unit) = ["h", "ms", "m", "s"]
            .iter()
            .find(|unit| rest.starts_with(**unit))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
        any = true;
    }
    any
}

#[test]
fn cert_manager_objects_are_well_formed() {
    let objects = objects();
    let issuers = of_kind(&objects, "Issuer");
    let certificates = of_kind(&objects, "Certificate");
    assert!(!issuers.is_empty() && !certificates.is_empty());
    for issuer in &issuers {
        let id = issuer.id();
        assert_eq!(issuer.api_version(), "cert-manager.io/v1");
        let spec = &issuer.value["spec"];
        assert_keys(
            &id,
            spec,
            &["selfSigned", "ca", "acme", "vault", "venafi"],
            &[],
        );
        assert_eq!(
            spec.as_mapping().unwrap().len(),
            1,
            "{id}: exactly one issuer type"
        );
        if let Some(ca) = spec.get("ca") {
            assert_keys(
                &id,
                ca,
                &["secretName", "crlDistributionPoints", "ocspServers"],
                &["secretName"],
            );
            let secret = ca["secretName"].as_str().unwrap();
            assert!(
                certificates
                    .iter()
                    .any(|c| c.str_at("spec.secretName") == secret
                        && c.value["spec"]["isCA"].as_bool() == Some(true)
                        && c.namespace() == issuer.namespace()),
                "{id}: no CA Certificate writes Secret {secret}"
            );
        }
    }
    const USAGES: [&str; 17] = [
        "signing",
        "digital signature",
        "content commitment",
        "key encipherment",
        "key agreement",
        "data encipherment",
        "cert sign",
        "crl sign",
        "encipher only",
        "decipher only",
        "any",
        "server auth",
        "client auth",
        "code signing",
        "email protection",
        "s/mime",
        "timestamping",
    ];
    for certificate in &certificates {
        let id = certificate.id();
        assert_eq!(certificate.api_version(), "cert-manager.io/v1");
        let spec = &certificate.value["spec"];
        assert_keys(
            &id,
            spec,
            &[
                "secretName",
                "issuerRef",
                "commonName",
                "dnsNames",
                "ipAddresses",
                "uris",
                "emailAddresses",
                "duration",
                "renewBefore",
                "usages",
                "privateKey",
                "isCA",
                "subject",
                "secretTemplate",
                "revisionHistoryLimit",
            ],
            &["secretName", "issuerRef"],
        );
        assert_keys(
            &id,
            &spec["issuerRef"],
            &["name", "kind", "group"],
            &["name"],
        );
        let issuer_name = certificate.str_at("spec.issuerRef.name");
        if spec["issuerRef"]["kind"].as_str().unwrap_or("Issuer") == "Issuer" {
            assert!(
                find(&objects, "Issuer", certificate.namespace(), issuer_name).is_some(),
                "{id}: Issuer {issuer_name} is not in deploy/"
            );
        }
        assert!(
            ["commonName", "dnsNames", "ipAddresses"]
                .iter()
                .any(|key| spec.get(*key).is_some()),
            "{id}: names no subject"
        );
        for key in ["duration", "renewBefore"] {
            if let Some(value) = spec.get(key) {
                assert!(
                    is_go_duration(value.as_str().unwrap_or("")),
                    "{id}: {key} {value:?} is not a Go duration"
                );
            }
        }
        for usage in seq(&spec["usages"]) {
            assert!(
                USAGES.contains(&usage.as_str().unwrap_or("")),
                "{id}: unknown usage {usage:?}"
            );
        }
        if let Some(key) = spec.get("privateKey") {
            assert_keys(
                &id,
                key,
                &["algorithm", "size", "encoding", "rotationPolicy"],
                &[],
            );
            assert!(
                matches!(key["algorithm"].as_str(), Some("RSA" | "ECDSA" | "Ed25519")),
                "{id}: privateKey.algorithm"
            );
        }
    }
}

#[test]
fn service_monitor_scrapes_every_auditflow_service() {
    let objects = objects();
    let monitors = of_kind(&objects, "ServiceMonitor");
    let [monitor] = monitors.as_slice() else {
        panic!("one ServiceMonitor")
    };
    let id = monitor.id();
    assert_eq!(monitor.api_version(), "monitoring.coreos.com/v1");
    let spec = &monitor.value["spec"];
    assert_keys(
        &id,
        spec,
        &[
            "selector",
            "namespaceSelector",
            "endpoints",
            "jobLabel",
            "targetLabels",
            "podTargetLabels",
        ],
        &["selector", "endpoints"],
    );
    let match_labels = spec["selector"]["matchLabels"]
        .as_mapping()
        .expect("selector.matchLabels");
    let namespaces: Vec<&str> = seq(&spec["namespaceSelector"]["matchNames"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let selected: Vec<&Doc> = of_kind(&objects, "Service")
        .into_iter()
        .filter(|service| namespaces.is_empty() || namespaces.contains(&service.namespace()))
        .filter(|service| {
            match_labels
                .iter()
                .all(|(key, value)| service.value["metadata"]["labels"].get(key) == Some(value))
        })
        .collect();
    // Both Services in the auditflow namespace: the webhook receivers and the aggregators.
    assert_eq!(
        selected.len(),
        2,
        "{id} selects {:?}",
        selected.iter().map(|s| s.id()).collect::<Vec<_>>()
    );
    for endpoint in seq(&spec["endpoints"]) {
        assert_keys(
            &id,
            endpoint,
            &[
                "port",
                "path",
                "interval",
                "scrapeTimeout",
                "scheme",
                "relabelings",
                "metricRelabelings",
                "honorLabels",
            ],
            &["port"],
        );
        assert_eq!(endpoint["path"].as_str().unwrap_or("/metrics"), "/metrics");
        let port = endpoint["port"].as_str().unwrap();
        for service in &selected {
            let service_port = seq(&service.value["spec"]["ports"])
                .iter()
                .find(|p| p["name"].as_str() == Some(port))
                .unwrap_or_else(|| panic!("{}: no port named {port} for {id}", service.id()));
            // ... which reaches the port the pods' pipeline serves /metrics on (checked
            // against the pipeline by every_configmap_pipeline_validates_...).
            assert_eq!(
                service_port["targetPort"].as_str(),
                Some("metrics"),
                "{}",
                service.id()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// PromQL: alerts and dashboard

/// Metric names `crates/metrics/src/names.rs` defines.
fn exported_metrics() -> BTreeSet<String> {
    let names: BTreeSet<String> = read("crates/metrics/src/names.rs")
        .lines()
        .filter(|line| line.trim_start().starts_with("pub const"))
        .filter_map(|line| line.split('"').nth(1))
        .map(str::to_owned)
        .collect();
    assert!(names.len() > 20, "names.rs: {names:?}");
    names
}

/// Label names docs/metrics.md describes (every `word` in backticks), and the target
/// labels Prometheus adds.
fn known_labels() -> BTreeSet<String> {
    let doc = read("docs/metrics.md");
    let mut labels: BTreeSet<String> = doc
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|word| !word.is_empty() && word.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .map(str::to_owned)
        .collect();
    labels.extend(TARGET_LABELS.iter().map(|label| (*label).to_owned()));
    labels.insert("le".to_owned());
    labels
}

/// Metric and label names one PromQL expression uses.
#[derive(Default, Debug)]
struct Names {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

fn collect_names(expr: &Expr, names: &mut Names) {
    fn selector(vs: &VectorSelector, names: &mut Names) {
        if let Some(name) = &vs.name {
            names.metrics.insert(name.clone());
        }
        for matcher in vs
            .matchers
            .matchers
            .iter()
            .chain(vs.matchers.or_matchers.iter().flatten())
        {
            if matcher.name == "__name__" {
                names.metrics.insert(matcher.value.clone());
            } else {
                names.labels.insert(matcher.name.clone());
            }
        }
    }
    match expr {
        Expr::Aggregate(aggregate) => {
            if let Some(LabelModifier::Include(labels) | LabelModifier::Exclude(labels)) =
                &aggregate.modifier
            {
                names.labels.extend(labels.labels.iter().cloned());
            }
            collect_names(&aggregate.expr, names);
            if let Some(param) = &aggregate.param {
                collect_names(param, names);
            }
        }
        Expr::Unary(unary) => collect_names(&unary.expr, names),
        Expr::Binary(binary) => {
            if let Some(modifier) = &binary.modifier {
                if let Some(LabelModifier::Include(labels) | LabelModifier::Exclude(labels)) =
                    &modifier.matching
                {
                    names.labels.extend(labels.labels.iter().cloned());
                }
            }
            collect_names(&binary.lhs, names);
            collect_names(&binary.rhs, names);
        }
        Expr::Paren(paren) => collect_names(&paren.expr, names),
        Expr::Subquery(subquery) => collect_names(&subquery.expr, names),
        Expr::VectorSelector(vs) => selector(vs, names),
        Expr::MatrixSelector(ms) => selector(&ms.vs, names),
        Expr::Call(call) => {
            for arg in &call.args.args {
                collect_names(arg, names);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Parses `query` (a Grafana query once its variables are replaced) and returns the names
/// that neither auditflow exports nor [`OTHER_METRICS`] allows, and unknown labels.
fn unknown_names(
    query: &str,
    metrics: &BTreeSet<String>,
    labels: &BTreeSet<String>,
) -> Result<Vec<String>, String> {
    let expr = parser::parse(query).map_err(|e| format!("does not parse: {e}"))?;
    let mut names = Names::default();
    collect_names(&expr, &mut names);
    let exported = |name: &str| {
        metrics.contains(name)
            || OTHER_METRICS.contains(&name)
            || ["_bucket", "_count", "_sum"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|base| metrics.contains(base))
            })
    };
    let mut unknown: Vec<String> = names
        .metrics
        .iter()
        .filter(|name| !exported(name))
        .map(|name| format!("metric {name}"))
        .collect();
    unknown.extend(
        names
            .labels
            .iter()
            .filter(|label| !labels.contains(*label))
            .map(|label| format!("label {label}")),
    );
    Ok(unknown)
}

#[test]
fn unknown_names_finds_what_does_not_exist() {
    let metrics = exported_metrics();
    let labels = known_labels();
    let check = |query: &str| unknown_names(query, &metrics, &labels);
    assert_eq!(
        check("sum by (component_id) (rate(auditflow_component_errors_total[5m]))").unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        check("sum by (reasons) (rate(auditflow_component_dropped_total{component_kind=\"sink\"}[5m]))").unwrap(),
        ["metric auditflow_component_dropped_total", "label reasons"]
    );
    assert_eq!(
        check("histogram_quantile(0.9, rate(auditflow_sink_request_duration_seconds_bucket[5m]))")
            .unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        check("{__name__=\"auditflow_nope\"}").unwrap(),
        ["metric auditflow_nope"]
    );
    assert!(check("sum(rate(auditflow_component_errors_total[5m])").is_err());
}

#[test]
fn prometheus_rules_are_well_formed() {
    let objects = objects();
    let metrics = exported_metrics();
    let labels = known_labels();
    let rules_objects = of_kind(&objects, "PrometheusRule");
    let [rules] = rules_objects.as_slice() else {
        panic!("one PrometheusRule")
    };
    let id = rules.id();
    assert_eq!(rules.api_version(), "monitoring.coreos.com/v1");
    assert_keys(&id, &rules.value["spec"], &["groups"], &["groups"]);
    let mut group_names = BTreeSet::new();
    let mut alert_names = BTreeSet::new();
    let mut used = BTreeSet::new();
    let mut problems = Vec::new();
    for group in seq(&rules.value["spec"]["groups"]) {
        assert_keys(
            &id,
            group,
            &[
                "name",
                "rules",
                "interval",
                "limit",
                "partial_response_strategy",
            ],
            &["name", "rules"],
        );
        assert!(
            group_names.insert(group["name"].as_str().unwrap()),
            "{id}: group names repeat"
        );
        for rule in seq(&group["rules"]) {
            let alert = rule["alert"]
                .as_str()
                .unwrap_or_else(|| panic!("{id}: a rule without `alert`"));
            let at = format!("{id}: {alert}");
            assert_keys(
                &at,
                rule,
                &[
                    "alert",
                    "expr",
                    "for",
                    "keep_firing_for",
                    "labels",
                    "annotations",
                ],
                &["alert", "expr", "labels", "annotations"],
            );
            assert!(alert_names.insert(alert), "{at}: the name repeats");
            assert!(
                matches!(
                    rule["labels"]["severity"].as_str(),
                    Some("critical" | "warning" | "info")
                ),
                "{at}: labels.severity"
            );
            for annotation in ["summary", "description"] {
                assert!(
                    rule["annotations"][annotation]
                        .as_str()
                        .is_some_and(|s| !s.is_empty()),
                    "{at}: annotations.{annotation}"
                );
            }
            if let Some(duration) = rule.get("for") {
                let duration = duration.as_str().unwrap_or("");
                assert!(
                    duration.len() > 1
                        && duration[..duration.len() - 1]
                            .chars()
                            .all(|c| c.is_ascii_digit())
                        && "smhdwy".contains(&duration[duration.len() - 1..]),
                    "{at}: for {duration:?}"
                );
            }
            let expr = rule["expr"].as_str().unwrap();
            match unknown_names(expr, &metrics, &labels) {
                Ok(unknown) if unknown.is_empty() => {}
                Ok(unknown) => problems.push(format!("{at}: {unknown:?}")),
                Err(error) => problems.push(format!("{at}: {error}")),
            }
            let mut names = Names::default();
            collect_names(
                &parser::parse(expr).unwrap_or_else(|e| panic!("{at}: {e}")),
                &mut names,
            );
            used.extend(names.metrics);
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // What an operator must hear about: events lost or discarded, sink errors, Kafka lag,
    // buffers filling up, /ready failing.
    for needed in [
        "auditflow_file_lost_bytes_total",
        "auditflow_component_discarded_events_total",
        "auditflow_component_errors_total",
        "auditflow_kafka_consumer_lag",
        "auditflow_buffer_bytes",
        "auditflow_buffer_events",
        "kube_pod_container_status_ready",
    ]
    .into_iter()
    .chain(MEMORY_LIMIT_METRICS)
    {
        assert!(used.contains(needed), "{id}: no alert uses {needed}");
    }
}

/// A dashboard query with Grafana's variables replaced by values PromQL accepts.
fn without_grafana_variables(query: &str) -> String {
    let mut query = query
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m");
    for variable in ["datasource", "namespace", "pod", "component"] {
        query = query
            .replace(&format!("${{{variable}}}"), ".*")
            .replace(&format!("${variable}"), ".*");
    }
    assert!(
        !query.contains('$'),
        "an unknown Grafana variable in {query}"
    );
    query
}

#[test]
fn grafana_dashboard_queries_exported_metrics() {
    let text = read("deploy/grafana/auditflow.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).expect("deploy/grafana/auditflow.json is JSON");
    let metrics = exported_metrics();
    let labels = known_labels();
    let mut problems = Vec::new();
    let mut ids = BTreeSet::new();
    let mut queried = BTreeSet::new();
    let mut check = |at: String, query: &str| {
        let query = without_grafana_variables(query);
        match unknown_names(&query, &metrics, &labels) {
            Ok(unknown) if unknown.is_empty() => {}
            Ok(unknown) => problems.push(format!("{at}: {unknown:?}")),
            Err(error) => problems.push(format!("{at}: {error}: {query}")),
        }
        if let Ok(expr) = parser::parse(&query) {
            let mut names = Names::default();
            collect_names(&expr, &mut names);
            queried.extend(names.metrics);
        }
    };
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut placed: Vec<(&str, [u64; 4])> = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("");
        assert!(
            ids.insert(panel["id"].as_u64().expect("a panel id")),
            "panel id repeats: {title}"
        );
        let [h, w, x, y] = ["h", "w", "x", "y"].map(|key| {
            panel["gridPos"][key]
                .as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{key}"))
        });
        assert!(x + w <= 24, "{title}: wider than Grafana's 24 columns");
        // Grafana moves an overlapping panel down, out of the row it was meant for.
        for (other, [ox, oy, ow, oh]) in &placed {
            assert!(
                x >= ox + ow || *ox >= x + w || y >= oy + oh || *oy >= y + h,
                "panel {title:?} overlaps {other:?}"
            );
        }
        placed.push((title, [x, y, w, h]));
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"]
            .as_array()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| panic!("{title}: no query"));
        for target in targets {
            check(
                format!("panel {title:?}"),
                target["expr"].as_str().expect("expr"),
            );
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
    {
        if variable["type"] != "query" {
            continue;
        }
        // label_values(SELECTOR, LABEL)
        let query = variable["definition"].as_str().unwrap();
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .and_then(|rest| rest.rsplit_once(','))
            .unwrap_or_else(|| panic!("variable query {query}"));
        assert!(
            labels.contains(inner.1.trim()),
            "variable {query}: label {}",
            inner.1.trim()
        );
        check(format!("variable {}", variable["name"]), inner.0);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    for needed in MEMORY_LIMIT_METRICS {
        assert!(
            queried.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
    // Built from docs/metrics.md: the engine's series for every component are all there.
    for engine in metrics
        .iter()
        .filter(|name| name.starts_with("auditflow_component_"))
    {
        assert!(
            queried.contains(engine),
            "the dashboard does not show {engine}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The image

/// Why this machine cannot build or run the image, if it cannot.
fn image_tools_missing() -> Option<String> {
    for tool in ["buildah", "podman"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Some(format!(
                "{tool} is not installed (Debian: apt-get install buildah podman)"
            ));
        }
    }
    let probe = Command::new("buildah")
        .args(["from", "scratch"])
        .output()
        .expect("run buildah");
    if !probe.status.success() {
        return Some(format!(
            "buildah cannot create a container here: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    let container = String::from_utf8_lossy(&probe.stdout).trim().to_owned();
    let _ = Command::new("buildah").args(["rm", &container]).output();
    None
}

/// Runs `auditflow ARGS` in `image`: podman with its default runtime, then runc (crun
/// cannot run in some cgroup setups), then `buildah run --isolation chroot`, which runs
/// the binary in the image's file system without a container runtime. The low limits
/// keep the runtimes from raising rlimits a sandbox may forbid.
fn run_in_image(image: &str, args: &[&str]) -> Result<(String, Output), String> {
    let mut refusals = Vec::new();
    let podman = |runtime: Option<&str>| {
        let mut command = Command::new("podman");
        if let Some(runtime) = runtime {
            command.args(["--runtime", runtime]);
        }
        command
            .args([
                "run",
                "--rm",
                "--network",
                "none",
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
                image,
            ])
            .args(args);
        run(&mut command)
    };
    for runtime in [None, Some("runc")] {
        if runtime.is_some_and(|runtime| Command::new(runtime).arg("--version").output().is_err()) {
            continue;
        }
        let output = podman(runtime);
        let stderr = String::from_utf8_lossy(&output.stderr);
        // podman's own failures (exit 125-127, "OCI runtime" errors) say nothing about the image.
        let refused = matches!(output.status.code(), Some(125..=127))
            && (stderr.contains("OCI") || stderr.contains("runtime"));
        if !refused {
            return Ok((
                format!("podman run (runtime {})", runtime.unwrap_or("default")),
                output,
            ));
        }
        refusals.push(format!(
            "podman --runtime {}: {}",
            runtime.unwrap_or("default"),
            stderr.trim()
        ));
    }
    let from = run(Command::new("buildah").args(["from", image]));
    if !from.status.success() {
        refusals.push(format!(
            "buildah from: {}",
            String::from_utf8_lossy(&from.stderr).trim()
        ));
        return Err(refusals.join("\n"));
    }
    let container = String::from_utf8_lossy(&from.stdout).trim().to_owned();
    let output = run(Command::new("buildah")
        .args([
            "run",
            "--isolation",
            "chroot",
            &container,
            "--",
            "/usr/local/bin/auditflow",
        ])
        .args(args));
    let _ = Command::new("buildah").args(["rm", &container]).output();
    if matches!(output.status.code(), Some(125..=127)) {
        refusals.push(format!(
            "buildah run --isolation chroot: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
        return Err(refusals.join("\n"));
    }
    println!("podman could not start a container on this machine; ran in a chroot of the image instead:\n{}", refusals.join("\n"));
    Ok(("buildah run --isolation chroot".to_owned(), output))
}

/// Removes the test's image when the test ends, whatever its outcome.
struct TestImage(String);

impl Drop for TestImage {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rmi", "--force", &self.0])
            .output();
    }
}

#[test]
fn image_built_offline_runs_validate_on_the_bundled_pipelines() {
    if let Some(reason) = image_tools_missing() {
        println!("SKIPPED image_built_offline_runs_validate_on_the_bundled_pipelines: {reason}");
        return;
    }
    let tag = format!(
        "localhost/auditflow-e2e:{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let image = TestImage(tag.clone());
    // The binary the rest of the suite tests (scripts/image alone builds --release).
    let binary = auditflow_bin();
    let built = run(Command::new(repo_root().join("scripts/image"))
        .arg("--binary")
        .arg(&binary)
        .args(["--tag", &tag]));
    assert!(
        built.status.success(),
        "scripts/image failed:\n{}",
        text(&built)
    );
    assert_eq!(String::from_utf8_lossy(&built.stdout).trim(), tag);

    // Non-root, with the layout deploy/Dockerfile gives.
    let inspect = run(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{.Config.User}} {{json .Config.Entrypoint}}",
        &tag,
    ]));
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        "65532:65532 [\"/usr/local/bin/auditflow\"]",
        "{}",
        text(&inspect)
    );
    let created = run(Command::new("podman").args(["create", &tag]));
    assert!(created.status.success(), "{}", text(&created));
    let container = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    let copied = run(Command::new("podman").args([
        "cp",
        &format!("{container}:/etc/ssl/certs/ca-certificates.crt"),
        "-",
    ]));
    let _ = Command::new("podman").args(["rm", &container]).output();
    assert!(
        copied.status.success(),
        "the image has no CA bundle: {}",
        text(&copied)
    );
    let host_bundle = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap();
    assert!(
        copied
            .stdout
            .windows(host_bundle.len().min(4096))
            .any(|w| w == &host_bundle[..host_bundle.len().min(4096)]),
        "the image's CA bundle is not the machine's"
    );

    // `validate` of each bundled example inside the image (one at a time: files given
    // together merge into one pipeline): the binary starts with the libraries the image
    // carries, and the examples are where docs/deploy.md says.
    let mut pipelines: Vec<String> = std::fs::read_dir(repo_root().join("pipelines"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    pipelines.sort();
    assert!(pipelines.len() >= 5, "pipelines/: {pipelines:?}");
    // A pipeline that needs secrets from the environment (`${NAME}` without a default) is
    // validated by tests/tests/pipelines.rs with them set; the image runs without them.
    let needs_secrets = |name: &str| {
        let text = std::fs::read_to_string(repo_root().join("pipelines").join(name)).unwrap();
        text.split("${").skip(1).any(|rest| {
            rest.split('}')
                .next()
                .is_some_and(|inner| !inner.contains(":-"))
        })
    };
    let (secret, pipelines): (Vec<String>, Vec<String>) =
        pipelines.into_iter().partition(|name| needs_secrets(name));
    println!("not run in the image (they need secrets from the environment): {secret:?}");
    assert!(
        pipelines.len() >= 5,
        "pipelines/ without secrets: {pipelines:?}"
    );
    for name in &pipelines {
        let path = format!("/usr/share/auditflow/pipelines/{name}");
        let (how, output) = match run_in_image(&tag, &["validate", &path]) {
            Ok(ran) => ran,
            Err(reasons) => {
                println!("SKIPPED running the image (it was built and inspected): this machine starts no container:\n{reasons}");
                return;
            }
        };
        println!("{how}: auditflow validate {path}: exit 0");
        assert!(
            output.status.success(),
            "{how}: auditflow validate {path} in the image:\n{}",
            text(&output)
        );
        assert!(
            String::from_utf8_lossy(&output.stdout).starts_with("valid: "),
            "{how}: {}",
            text(&output)
        );
    }
    // And a broken pipeline is refused inside, as outside: the binary really ran.
    let (how, output) = run_in_image(
        &tag,
        &[
            "validate",
            "/usr/share/auditflow/pipelines/samples/audit.log",
        ],
    )
    .expect("ran once already");
    assert_eq!(output.status.code(), Some(2), "{how}: {}", text(&output));
    drop(image);
}
