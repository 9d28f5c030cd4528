//! Kubernetes objects as request and response bodies: pods, config maps, secrets, nodes,
//! leases, events, lists of them, token reviews and token requests with real-looking
//! service-account JWTs. Each is a template with holes, filled straight into the buffer.

use rand::rngs::StdRng;
use rand::Rng;

use crate::cast::{Cast, Resource};
use crate::json::{fill, push_base64, push_base64url, push_u64, Arg};

/// Pieces rendered once for the `request_response` profile (they are big and never
/// change): the images a node reports, and config text to cut config maps from.
#[derive(Debug)]
pub(crate) struct Library {
    node_images: Vec<u8>,
    /// JSON-escaped YAML, and the offsets just after each of its line breaks (so a cut
    /// never splits an escape).
    config_text: Vec<u8>,
    line_ends: Vec<usize>,
}

const NODE_IMAGES: &[(&str, u64)] = &[
    ("registry.k8s.io/kube-proxy:v1.32.0", 30_900_000),
    ("registry.k8s.io/pause:3.10", 320_368),
    ("registry.k8s.io/coredns/coredns:v1.11.3", 18_562_039),
    (
        "registry.k8s.io/metrics-server/metrics-server:v0.7.2",
        19_494_617,
    ),
    (
        "registry.k8s.io/ingress-nginx/controller:v1.11.3",
        105_543_127,
    ),
    ("quay.io/prometheus/prometheus:v2.54.1", 112_349_542),
    ("quay.io/prometheus/node-exporter:v1.8.2", 12_035_436),
    ("quay.io/prometheus/alertmanager:v0.27.0", 30_910_433),
    ("docker.io/grafana/grafana:11.3.0", 132_844_201),
    (
        "quay.io/jetstack/cert-manager-controller:v1.16.1",
        19_873_112,
    ),
    ("quay.io/argoproj/argocd:v2.13.0", 187_354_002),
    ("docker.io/library/nginx:1.27.2", 72_955_450),
    ("docker.io/library/redis:7.4.1", 45_014_238),
    ("docker.io/library/postgres:16.4", 158_773_190),
    ("docker.io/opensearchproject/opensearch:2.18.0", 812_336_104),
    ("quay.io/strimzi/kafka:0.44.0-kafka-3.8.0", 452_118_660),
    ("docker.io/apache/airflow:2.10.3", 611_980_004),
    ("cr.fluentbit.io/fluent/fluent-bit:3.1.9", 39_001_532),
    ("ghcr.io/example/payments-api:7.2.0", 88_120_553),
    ("ghcr.io/example/checkout:5.0.3", 91_552_013),
    ("ghcr.io/example/search-indexer:1.9.0", 77_018_436),
    ("ghcr.io/example/model-server:0.31.0", 2_331_019_774),
    ("docker.io/calico/node:v3.29.0", 146_239_440),
    ("docker.io/calico/cni:v3.29.0", 94_537_310),
];

impl Library {
    pub(crate) fn new(rng: &mut StdRng) -> Library {
        let mut node_images = Vec::new();
        for (index, (image, size)) in NODE_IMAGES.iter().enumerate() {
            if index > 0 {
                node_images.push(b',');
            }
            let repository = image.rsplit_once(':').map_or(*image, |(repo, _)| repo);
            fill(
                &mut node_images,
                r#"{"names":["`@sha256:`","`"],"sizeBytes":`}"#,
                &[
                    Arg::Str(repository),
                    Arg::Hex(&rng.random::<[u8; 32]>()),
                    Arg::Str(image),
                    Arg::Num(*size),
                ],
            );
        }
        let mut config_text = Vec::new();
        let mut line_ends = Vec::new();
        let mut line = |text: &mut Vec<u8>, piece: &str| {
            text.extend_from_slice(piece.as_bytes());
            text.extend_from_slice(br"\n");
            line_ends.push(text.len());
        };
        line(&mut config_text, "global:");
        line(&mut config_text, "  scrape_interval: 30s");
        line(&mut config_text, "  evaluation_interval: 30s");
        line(&mut config_text, "scrape_configs:");
        let mut job = 0u64;
        while config_text.len() < 48 * 1024 {
            job += 1;
            let port = rng.random_range(8000..10_000u64);
            line(&mut config_text, &format!("  - job_name: service-{job}"));
            line(&mut config_text, "    metrics_path: /metrics");
            line(&mut config_text, "    scheme: https");
            line(&mut config_text, "    kubernetes_sd_configs:");
            line(&mut config_text, "      - role: endpoints");
            line(&mut config_text, "    relabel_configs:");
            line(
                &mut config_text,
                r#"      - source_labels: [__meta_kubernetes_service_label_app]"#,
            );
            line(
                &mut config_text,
                &format!(r#"        regex: \"service-{job}\""#),
            );
            line(&mut config_text, "        action: keep");
            line(&mut config_text, "      - target_label: __address__");
            line(
                &mut config_text,
                &format!(r#"        replacement: \"service-{job}.svc:{port}\""#),
            );
        }
        Library {
            node_images,
            config_text,
            line_ends,
        }
    }

    /// About `len` bytes of the config text, ending at a line break.
    fn config_text(&self, len: usize) -> &[u8] {
        let at = self.line_ends.partition_point(|&end| end <= len).max(1);
        &self.config_text[..self.line_ends[at - 1]]
    }
}

/// What object writers need besides the output buffer.
pub(crate) struct Cx<'a> {
    pub rng: &'a mut StdRng,
    pub cast: &'a Cast,
    pub library: Option<&'a Library>,
    /// The virtual clock, in seconds.
    pub now_secs: i64,
}

impl Cx<'_> {
    fn resource_version(&mut self) -> u64 {
        self.rng.random_range(40_000..4_000_000)
    }
}

/// `kind`/`apiVersion` written at the start of a typed object, or nothing for list items.
fn type_meta(out: &mut Vec<u8>, typed: bool, kind: &str, api_version: &str) {
    if typed {
        fill(
            out,
            r#""kind":"`","apiVersion":"`","#,
            &[Arg::Str(kind), Arg::Str(api_version)],
        );
    }
}

fn api_version(resource: &Resource) -> String {
    if resource.group.is_empty() {
        resource.version.to_owned()
    } else {
        format!("{}/{}", resource.group, resource.version)
    }
}

/// A whole object of `resource` named `name`, as a get, update or create returns it.
pub(crate) fn object(
    out: &mut Vec<u8>,
    cx: &mut Cx,
    resource: &Resource,
    ns: Option<&str>,
    name: &str,
    typed: bool,
) {
    match resource.name {
        "pods" => {
            let index = cx.rng.random_range(0..cx.cast.pods.len());
            pod_object(out, cx, index, typed);
        }
        "configmaps" => config_map(out, cx, ns.unwrap_or("default"), name, typed),
        "secrets" => secret(out, cx, ns.unwrap_or("default"), name, true, typed),
        "nodes" => {
            let index = cx.rng.random_range(0..cx.cast.node_names.len());
            node(out, cx, index, typed);
        }
        "leases" => lease(out, cx, ns.unwrap_or("kube-node-lease"), name, typed),
        _ => generic(out, cx, resource, ns, name, typed),
    }
}

/// A `<Kind>List` of about 2–50 KB.
pub(crate) fn list(out: &mut Vec<u8>, cx: &mut Cx, resource: &Resource, ns: Option<&str>) {
    let version = api_version(resource);
    let rv = cx.resource_version();
    fill(
        out,
        r#"{"kind":"`List","apiVersion":"`","metadata":{"resourceVersion":"`"},"items":["#,
        &[Arg::Str(resource.kind), Arg::Str(&version), Arg::Num(rv)],
    );
    // Items until the list reaches a size drawn from 2–50 KB (one item at least).
    let target = cx.rng.random_range(2 * 1024..50 * 1024);
    let start = out.len();
    let mut item = 0;
    while item == 0 || out.len() - start < target {
        if item > 0 {
            out.push(b',');
        }
        let name = format!("{}-{item}", resource.name.trim_end_matches('s'));
        object(out, cx, resource, ns, &name, false);
        item += 1;
    }
    out.extend_from_slice(b"]}");
}

pub(crate) fn pod_object(out: &mut Vec<u8>, cx: &mut Cx, index: usize, typed: bool) {
    let pod = &cx.cast.pods[index];
    let node = cx.cast.node_names[pod.node].as_str();
    let node_ip = format!("10.0.1.{}", 11 + pod.node);
    let created = cx.now_secs - cx.rng.random_range(600..2_000_000);
    let started = created + cx.rng.random_range(2..20);
    let rv = cx.resource_version();
    let owner: u128 = cx.rng.random();
    let volume = &pod.name[pod.name.len() - 5..];
    out.push(b'{');
    type_meta(out, typed, "Pod", "v1");
    fill(
        out,
        concat!(
            r#""metadata":{"name":"`","generateName":"`-","namespace":"`","uid":"`","resourceVersion":"`","creationTimestamp":"`","labels":{"app":"`","pod-template-hash":"`"},"#,
            r#""ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"`","uid":"`","controller":true,"blockOwnerDeletion":true}],"#,
            r#""managedFields":[{"manager":"kube-controller-manager","operation":"Update","apiVersion":"v1","time":"`","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:generateName":{},"f:labels":{".":{},"f:app":{},"f:pod-template-hash":{}},"f:ownerReferences":{".":{},"k:{\"uid\":\"`\"}":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"`\"}":{".":{},"f:env":{".":{},"k:{\"name\":\"LOG_LEVEL\"}":{".":{},"f:name":{},"f:value":{}},"k:{\"name\":\"POD_NAME\"}":{".":{},"f:name":{},"f:valueFrom":{".":{},"f:fieldRef":{}}}},"f:image":{},"f:imagePullPolicy":{},"f:livenessProbe":{".":{},"f:failureThreshold":{},"f:httpGet":{".":{},"f:path":{},"f:port":{},"f:scheme":{}},"f:periodSeconds":{},"f:successThreshold":{},"f:timeoutSeconds":{}},"f:name":{},"f:ports":{".":{},"k:{\"containerPort\":8080,\"protocol\":\"TCP\"}":{".":{},"f:containerPort":{},"f:name":{},"f:protocol":{}}},"f:resources":{".":{},"f:limits":{".":{},"f:memory":{}},"f:requests":{".":{},"f:cpu":{},"f:memory":{}}},"f:terminationMessagePath":{},"f:terminationMessagePolicy":{}}},"f:dnsPolicy":{},"f:enableServiceLinks":{},"f:restartPolicy":{},"f:schedulerName":{},"f:securityContext":{},"f:terminationGracePeriodSeconds":{}}}},"#,
            r#"{"manager":"kubelet","operation":"Update","apiVersion":"v1","time":"`","fieldsType":"FieldsV1","fieldsV1":{"f:status":{"f:conditions":{"k:{\"type\":\"ContainersReady\"}":{".":{},"f:lastProbeTime":{},"f:lastTransitionTime":{},"f:status":{},"f:type":{}},"k:{\"type\":\"Initialized\"}":{".":{},"f:lastProbeTime":{},"f:lastTransitionTime":{},"f:status":{},"f:type":{}},"k:{\"type\":\"PodReadyToStartContainers\"}":{".":{},"f:lastProbeTime":{},"f:lastTransitionTime":{},"f:status":{},"f:type":{}},"k:{\"type\":\"Ready\"}":{".":{},"f:lastProbeTime":{},"f:lastTransitionTime":{},"f:status":{},"f:type":{}}},"f:containerStatuses":{},"f:hostIP":{},"f:hostIPs":{},"f:phase":{},"f:podIP":{},"f:podIPs":{".":{},"k:{\"ip\":\"`\"}":{".":{},"f:ip":{}}},"f:startTime":{}}},"subresource":"status"}]},"#,
            r#""spec":{"volumes":[{"name":"kube-api-access-`","projected":{"sources":[{"serviceAccountToken":{"expirationSeconds":3607,"path":"token"}},{"configMap":{"name":"kube-root-ca.crt","items":[{"key":"ca.crt","path":"ca.crt"}]}},{"downwardAPI":{"items":[{"path":"namespace","fieldRef":{"apiVersion":"v1","fieldPath":"metadata.namespace"}}]}}],"defaultMode":420}}],"#,
            r#""containers":[{"name":"`","image":"`","ports":[{"name":"http","containerPort":8080,"protocol":"TCP"}],"env":[{"name":"POD_NAME","valueFrom":{"fieldRef":{"apiVersion":"v1","fieldPath":"metadata.name"}}},{"name":"LOG_LEVEL","value":"info"}],"resources":{"limits":{"memory":"512Mi"},"requests":{"cpu":"250m","memory":"256Mi"}},"volumeMounts":[{"name":"kube-api-access-`","readOnly":true,"mountPath":"/var/run/secrets/kubernetes.io/serviceaccount"}],"livenessProbe":{"httpGet":{"path":"/healthz","port":8080,"scheme":"HTTP"},"timeoutSeconds":1,"periodSeconds":10,"successThreshold":1,"failureThreshold":3},"terminationMessagePath":"/dev/termination-log","terminationMessagePolicy":"File","imagePullPolicy":"IfNotPresent"}],"#,
            r#""restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","serviceAccountName":"default","serviceAccount":"default","nodeName":"`","securityContext":{},"schedulerName":"default-scheduler","tolerations":[{"key":"node.kubernetes.io/not-ready","operator":"Exists","effect":"NoExecute","tolerationSeconds":300},{"key":"node.kubernetes.io/unreachable","operator":"Exists","effect":"NoExecute","tolerationSeconds":300}],"priority":0,"enableServiceLinks":true,"preemptionPolicy":"PreemptLowerPriority"},"#,
            r#""status":{"phase":"Running","conditions":[{"type":"PodReadyToStartContainers","status":"True","lastProbeTime":null,"lastTransitionTime":"`"},{"type":"Initialized","status":"True","lastProbeTime":null,"lastTransitionTime":"`"},{"type":"Ready","status":"True","lastProbeTime":null,"lastTransitionTime":"`"},{"type":"ContainersReady","status":"True","lastProbeTime":null,"lastTransitionTime":"`"},{"type":"PodScheduled","status":"True","lastProbeTime":null,"lastTransitionTime":"`"}],"#,
            r#""hostIP":"`","hostIPs":[{"ip":"`"}],"podIP":"`","podIPs":[{"ip":"`"}],"startTime":"`","containerStatuses":[{"name":"`","state":{"running":{"startedAt":"`"}},"lastState":{},"ready":true,"restartCount":`,"image":"`","imageID":"`@sha256:`","containerID":"containerd://`","started":true}],"qosClass":"Burstable"}}"#,
        ),
        &[
            Arg::Str(&pod.name),
            Arg::Str(&pod.replicaset),
            Arg::Str(pod.namespace),
            Arg::Uuid(pod.uid),
            Arg::Num(rv),
            Arg::Secs(created),
            Arg::Str(pod.app),
            Arg::Str(&pod.replicaset[pod.app.len() + 1..]),
            Arg::Str(&pod.replicaset),
            Arg::Uuid(owner),
            Arg::Secs(created),
            Arg::Uuid(owner),
            Arg::Str(pod.app),
            Arg::Secs(started),
            Arg::Str(&pod.ip),
            Arg::Str(volume),
            Arg::Str(pod.app),
            Arg::Str(pod.image),
            Arg::Str(volume),
            Arg::Str(node),
            Arg::Secs(started),
            Arg::Secs(started),
            Arg::Secs(started),
            Arg::Secs(started),
            Arg::Secs(created),
            Arg::Str(&node_ip),
            Arg::Str(&node_ip),
            Arg::Str(&pod.ip),
            Arg::Str(&pod.ip),
            Arg::Secs(created),
            Arg::Str(pod.app),
            Arg::Secs(started),
            Arg::Num(cx.rng.random_range(0..3)),
            Arg::Str(pod.image),
            Arg::Str(
                pod.image
                    .rsplit_once(':')
                    .map_or(pod.image, |(repo, _)| repo),
            ),
            Arg::Hex(&cx.rng.random::<[u8; 32]>()),
            Arg::Hex(&cx.rng.random::<[u8; 32]>()),
        ],
    );
}

pub(crate) fn config_map(out: &mut Vec<u8>, cx: &mut Cx, ns: &str, name: &str, typed: bool) {
    let len = cx.rng.random_range(600..16_000);
    let text = cx.library.map_or(&b"log_level: info\\n"[..], |library| {
        library.config_text(len)
    });
    let rv = cx.resource_version();
    let created = cx.now_secs - cx.rng.random_range(600..20_000_000);
    out.push(b'{');
    type_meta(out, typed, "ConfigMap", "v1");
    fill(
        out,
        r#""metadata":{"name":"`","namespace":"`","uid":"`","resourceVersion":"`","creationTimestamp":"`","labels":{"app.kubernetes.io/managed-by":"Helm","app.kubernetes.io/name":"`"},"annotations":{"meta.helm.sh/release-name":"`","meta.helm.sh/release-namespace":"`"},"managedFields":[{"manager":"helm","operation":"Update","apiVersion":"v1","time":"`","fieldsType":"FieldsV1","fieldsV1":{"f:data":{".":{},"f:config.yaml":{}},"f:metadata":{"f:annotations":{".":{},"f:meta.helm.sh/release-name":{},"f:meta.helm.sh/release-namespace":{}},"f:labels":{".":{},"f:app.kubernetes.io/managed-by":{},"f:app.kubernetes.io/name":{}}}}}]},"data":{"config.yaml":"`"}}"#,
        &[
            Arg::Str(name),
            Arg::Str(ns),
            Arg::Uuid(cx.rng.random()),
            Arg::Num(rv),
            Arg::Secs(created),
            Arg::Str(name),
            Arg::Str(name),
            Arg::Str(ns),
            Arg::Secs(created),
            Arg::Raw(text),
        ],
    );
}

/// A Secret as `kubectl apply` sends it: base64 `data` (one value a base64 service-account
/// JWT) and the whole object again in `last-applied-configuration`.
pub(crate) fn secret(
    out: &mut Vec<u8>,
    cx: &mut Cx,
    ns: &str,
    name: &str,
    stored: bool,
    typed: bool,
) {
    let mut token = Vec::with_capacity(1024);
    let pod_index = cx.rng.random_range(0..cx.cast.pods.len());
    jwt(&mut token, cx, pod_index);
    let mut api_token = Vec::with_capacity(1400);
    push_base64(&mut api_token, &token);
    let mut password = Vec::with_capacity(32);
    push_base64(&mut password, &cx.rng.random::<[u8; 18]>());
    let mut user = Vec::new();
    push_base64(&mut user, name.replace('-', "_").as_bytes());
    let data_args = [Arg::Raw(&api_token), Arg::Raw(&password), Arg::Raw(&user)];
    let mut applied = Vec::with_capacity(2048);
    fill(
        &mut applied,
        r#"{\"apiVersion\":\"v1\",\"data\":{\"API_TOKEN\":\"`\",\"DB_PASSWORD\":\"`\",\"DB_USER\":\"`\"},\"kind\":\"Secret\",\"metadata\":{\"annotations\":{},\"name\":\"`\",\"namespace\":\"`\"},\"type\":\"Opaque\"}\n"#,
        &[
            data_args[0],
            data_args[1],
            data_args[2],
            Arg::Str(name),
            Arg::Str(ns),
        ],
    );
    out.push(b'{');
    type_meta(out, typed, "Secret", "v1");
    fill(
        out,
        r#""metadata":{"name":"`","namespace":"`""#,
        &[Arg::Str(name), Arg::Str(ns)],
    );
    if stored {
        let rv = cx.resource_version();
        fill(
            out,
            r#","uid":"`","resourceVersion":"`","creationTimestamp":"`""#,
            &[
                Arg::Uuid(cx.rng.random()),
                Arg::Num(rv),
                Arg::Secs(cx.now_secs),
            ],
        );
    } else {
        out.extend_from_slice(br#","creationTimestamp":null"#);
    }
    fill(
        out,
        r#","annotations":{"kubectl.kubernetes.io/last-applied-configuration":"`"}},"data":{"API_TOKEN":"`","DB_PASSWORD":"`","DB_USER":"`"},"type":"Opaque"}"#,
        &[Arg::Raw(&applied), data_args[0], data_args[1], data_args[2]],
    );
}

pub(crate) fn node(out: &mut Vec<u8>, cx: &mut Cx, index: usize, typed: bool) {
    let name = cx.cast.node_names[index].as_str();
    let ip = format!("10.0.1.{}", 11 + index);
    let heartbeat = cx.now_secs - cx.rng.random_range(0..40);
    let created = cx.now_secs - 9_000_000 - index as i64 * 3600;
    let rv = cx.resource_version();
    let zone = ["a", "b", "c"][index % 3];
    let images = cx.library.map_or(&b""[..], |library| &library.node_images);
    out.push(b'{');
    type_meta(out, typed, "Node", "v1");
    fill(
        out,
        concat!(
            r#""metadata":{"name":"`","uid":"`","resourceVersion":"`","creationTimestamp":"`","labels":{"beta.kubernetes.io/arch":"amd64","beta.kubernetes.io/os":"linux","kubernetes.io/arch":"amd64","kubernetes.io/hostname":"`","kubernetes.io/os":"linux","node.kubernetes.io/instance-type":"m6i.2xlarge","topology.kubernetes.io/region":"eu-west-1","topology.kubernetes.io/zone":"eu-west-1`"},"annotations":{"node.alpha.kubernetes.io/ttl":"0","volumes.kubernetes.io/controller-managed-attach-detach":"true"}},"#,
            r#""spec":{"podCIDR":"10.244.`.0/24","podCIDRs":["10.244.`.0/24"],"providerID":"aws:///eu-west-1`/i-0`"},"#,
            r#""status":{"capacity":{"cpu":"8","ephemeral-storage":"104845292Ki","hugepages-1Gi":"0","hugepages-2Mi":"0","memory":"32386544Ki","pods":"110"},"allocatable":{"cpu":"7910m","ephemeral-storage":"95551679124","hugepages-1Gi":"0","hugepages-2Mi":"0","memory":"31369712Ki","pods":"110"},"#,
            r#""conditions":[{"type":"MemoryPressure","status":"False","lastHeartbeatTime":"`","lastTransitionTime":"`","reason":"KubeletHasSufficientMemory","message":"kubelet has sufficient memory available"},{"type":"DiskPressure","status":"False","lastHeartbeatTime":"`","lastTransitionTime":"`","reason":"KubeletHasNoDiskPressure","message":"kubelet has no disk pressure"},{"type":"PIDPressure","status":"False","lastHeartbeatTime":"`","lastTransitionTime":"`","reason":"KubeletHasSufficientPID","message":"kubelet has sufficient PID available"},{"type":"Ready","status":"True","lastHeartbeatTime":"`","lastTransitionTime":"`","reason":"KubeletReady","message":"kubelet is posting ready status"}],"#,
            r#""addresses":[{"type":"InternalIP","address":"`"},{"type":"Hostname","address":"`"}],"daemonEndpoints":{"kubeletEndpoint":{"Port":10250}},"nodeInfo":{"machineID":"`","systemUUID":"`","bootID":"`","kernelVersion":"6.1.112-124.190.amzn2023.x86_64","osImage":"Amazon Linux 2023.6.20241111","containerRuntimeVersion":"containerd://1.7.23","kubeletVersion":"v1.32.0","kubeProxyVersion":"v1.32.0","operatingSystem":"linux","architecture":"amd64"},"images":[`]}}"#,
        ),
        &[
            Arg::Str(name),
            Arg::Uuid(cx.cast.node_uids[index]),
            Arg::Num(rv),
            Arg::Secs(created),
            Arg::Str(name),
            Arg::Str(zone),
            Arg::Num(index as u64),
            Arg::Num(index as u64),
            Arg::Str(zone),
            Arg::Hex(&cx.cast.node_uids[index].to_be_bytes()[..8]),
            Arg::Secs(heartbeat),
            Arg::Secs(created),
            Arg::Secs(heartbeat),
            Arg::Secs(created),
            Arg::Secs(heartbeat),
            Arg::Secs(created),
            Arg::Secs(heartbeat),
            Arg::Secs(created),
            Arg::Str(&ip),
            Arg::Str(name),
            Arg::Hex(&cx.cast.node_uids[index].to_le_bytes()),
            Arg::Uuid(cx.cast.node_uids[index].rotate_left(17)),
            Arg::Uuid(cx.rng.random()),
            Arg::Raw(images),
        ],
    );
}

pub(crate) fn lease(out: &mut Vec<u8>, cx: &mut Cx, ns: &str, name: &str, typed: bool) {
    let rv = cx.resource_version();
    let renew = cx.now_secs * 1_000_000 + cx.rng.random_range(0..1_000_000);
    out.push(b'{');
    type_meta(out, typed, "Lease", "coordination.k8s.io/v1");
    fill(
        out,
        r#""metadata":{"name":"`","namespace":"`","uid":"`","resourceVersion":"`","creationTimestamp":"`","managedFields":[{"manager":"kubelet","operation":"Update","apiVersion":"coordination.k8s.io/v1","time":"`","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:ownerReferences":{".":{},"k:{\"uid\":\"`\"}":{}}},"f:spec":{"f:holderIdentity":{},"f:leaseDurationSeconds":{},"f:renewTime":{}}}}]},"spec":{"holderIdentity":"`","leaseDurationSeconds":40,"renewTime":"`"}}"#,
        &[
            Arg::Str(name),
            Arg::Str(ns),
            Arg::Uuid(cx.rng.random()),
            Arg::Num(rv),
            Arg::Secs(cx.now_secs - 9_000_000),
            Arg::Secs(cx.now_secs),
            Arg::Uuid(cx.rng.random()),
            Arg::Str(name),
            Arg::Micros(renew),
        ],
    );
}

/// A core `Event` a kubelet reports about one of its pods.
pub(crate) fn event(out: &mut Vec<u8>, cx: &mut Cx, pod_index: usize) {
    let pod = &cx.cast.pods[pod_index];
    let node = cx.cast.node_names[pod.node].as_str();
    let id: u64 = cx.rng.random();
    let mut name = Vec::with_capacity(64);
    name.extend_from_slice(pod.name.as_bytes());
    name.push(b'.');
    crate::json::push_hex(&mut name, &id.to_be_bytes());
    let (reason, kind, message) = [
        (
            "Pulled",
            "Normal",
            "Container image \\\"`\\\" already present on machine",
        ),
        ("Started", "Normal", "Started container `"),
        (
            "Unhealthy",
            "Warning",
            "Readiness probe failed: Get \\\"http://`:8080/healthz\\\": context deadline exceeded",
        ),
        (
            "BackOff",
            "Warning",
            "Back-off restarting failed container ` in pod `",
        ),
    ][cx.rng.random_range(0..4)];
    let mut text = Vec::with_capacity(128);
    match reason {
        "Pulled" => fill(&mut text, message, &[Arg::Str(pod.image)]),
        "Started" => fill(&mut text, message, &[Arg::Str(pod.app)]),
        "Unhealthy" => fill(&mut text, message, &[Arg::Str(&pod.ip)]),
        _ => fill(
            &mut text,
            message,
            &[Arg::Str(pod.app), Arg::Str(&pod.name)],
        ),
    }
    fill(
        out,
        r#"{"kind":"Event","apiVersion":"v1","metadata":{"name":"`","namespace":"`","creationTimestamp":null},"involvedObject":{"kind":"Pod","namespace":"`","name":"`","uid":"`","apiVersion":"v1","resourceVersion":"`","fieldPath":"spec.containers{`}"},"reason":"`","message":"`","source":{"component":"kubelet","host":"`"},"firstTimestamp":"`","lastTimestamp":"`","count":1,"type":"`","eventTime":null,"reportingComponent":"kubelet","reportingInstance":"`"}"#,
        &[
            Arg::Raw(&name),
            Arg::Str(pod.namespace),
            Arg::Str(pod.namespace),
            Arg::Str(&pod.name),
            Arg::Uuid(pod.uid),
            Arg::Num(cx.rng.random_range(40_000..4_000_000)),
            Arg::Str(pod.app),
            Arg::Str(reason),
            Arg::Raw(&text),
            Arg::Str(node),
            Arg::Secs(cx.now_secs),
            Arg::Secs(cx.now_secs),
            Arg::Str(kind),
            Arg::Str(node),
        ],
    );
}

/// Any other object: Helm-managed metadata and a small spec.
fn generic(
    out: &mut Vec<u8>,
    cx: &mut Cx,
    resource: &Resource,
    ns: Option<&str>,
    name: &str,
    typed: bool,
) {
    let version = api_version(resource);
    let rv = cx.resource_version();
    let created = cx.now_secs - cx.rng.random_range(600..20_000_000);
    let release = ns.unwrap_or("platform");
    out.push(b'{');
    type_meta(out, typed, resource.kind, &version);
    fill(
        out,
        r#""metadata":{"name":"`"`,"uid":"`","resourceVersion":"`","generation":`,"creationTimestamp":"`","labels":{"app.kubernetes.io/instance":"`","app.kubernetes.io/managed-by":"Helm","app.kubernetes.io/name":"`","helm.sh/chart":"`-1.4.2"},"annotations":{"meta.helm.sh/release-name":"`","meta.helm.sh/release-namespace":"`"},"managedFields":[{"manager":"helm","operation":"Update","apiVersion":"`","time":"`","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:annotations":{".":{},"f:meta.helm.sh/release-name":{},"f:meta.helm.sh/release-namespace":{}},"f:labels":{".":{},"f:app.kubernetes.io/instance":{},"f:app.kubernetes.io/managed-by":{},"f:app.kubernetes.io/name":{},"f:helm.sh/chart":{}}},"f:spec":{}}}]},"spec":{"selector":{"matchLabels":{"app.kubernetes.io/instance":"`","app.kubernetes.io/name":"`"}},"replicas":`,"template":{"metadata":{"labels":{"app.kubernetes.io/instance":"`","app.kubernetes.io/name":"`"}},"spec":{"serviceAccountName":"`","containers":[{"name":"`","image":"ghcr.io/example/`:1.4.2","resources":{"requests":{"cpu":"100m","memory":"128Mi"}}}]}}},"status":{"observedGeneration":`}}"#,
        &[
            Arg::Str(name),
            Arg::Namespace(ns),
            Arg::Uuid(cx.rng.random()),
            Arg::Num(rv),
            Arg::Num(cx.rng.random_range(1..40)),
            Arg::Secs(created),
            Arg::Str(release),
            Arg::Str(name),
            Arg::Str(name),
            Arg::Str(release),
            Arg::Str(release),
            Arg::Str(&version),
            Arg::Secs(created),
            Arg::Str(release),
            Arg::Str(name),
            Arg::Num(cx.rng.random_range(1..6)),
            Arg::Str(release),
            Arg::Str(name),
            Arg::Str(name),
            Arg::Str(name),
            Arg::Str(name),
            Arg::Num(cx.rng.random_range(1..40)),
        ],
    );
}

/// A signed-looking service-account token for the pod at `pod_index`: the header of
/// this cluster, real claims, and 256 random bytes of "signature".
pub(crate) fn jwt(out: &mut Vec<u8>, cx: &mut Cx, pod_index: usize) {
    let pod = &cx.cast.pods[pod_index];
    let iat = cx.now_secs;
    let mut claims = Vec::with_capacity(640);
    fill(
        &mut claims,
        r#"{"aud":["https://kubernetes.default.svc.cluster.local"],"exp":`,"iat":`,"iss":"https://kubernetes.default.svc.cluster.local","jti":"`","kubernetes.io":{"namespace":"`","node":{"name":"`","uid":"`"},"pod":{"name":"`","uid":"`"},"serviceaccount":{"name":"`","uid":"`"},"warnafter":`},"nbf":`,"sub":"system:serviceaccount:`:`"}"#,
        &[
            Arg::Num((iat + 31_536_000) as u64),
            Arg::Num(iat as u64),
            Arg::Uuid(cx.rng.random()),
            Arg::Str(pod.namespace),
            Arg::Str(&cx.cast.node_names[pod.node]),
            Arg::Uuid(cx.cast.node_uids[pod.node]),
            Arg::Str(&pod.name),
            Arg::Uuid(pod.uid),
            Arg::Str(pod.app),
            Arg::Uuid(pod.uid.rotate_left(64)),
            Arg::Num((iat + 3607) as u64),
            Arg::Num(iat as u64),
            Arg::Str(pod.namespace),
            Arg::Str(pod.app),
        ],
    );
    out.extend_from_slice(&cx.cast.jwt_header);
    out.push(b'.');
    push_base64url(out, &claims);
    out.push(b'.');
    let mut signature = [0u8; 256];
    cx.rng.fill(&mut signature[..]);
    push_base64url(out, &signature);
}

/// The request and response of a TokenReview a kubelet or webhook makes for `pod_index`'s token.
pub(crate) fn token_review(
    request: &mut Vec<u8>,
    response: &mut Vec<u8>,
    cx: &mut Cx,
    pod_index: usize,
) {
    let mut token = Vec::with_capacity(1024);
    jwt(&mut token, cx, pod_index);
    let pod = &cx.cast.pods[pod_index];
    let head = r#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","metadata":{"creationTimestamp":null},"spec":{"token":"`"},"status":"#;
    fill(request, head, &[Arg::Raw(&token)]);
    request.extend_from_slice(br#"{"user":{}}}"#);
    fill(response, head, &[Arg::Raw(&token)]);
    fill(
        response,
        r#"{"authenticated":true,"user":{"username":"system:serviceaccount:`:`","uid":"`","groups":["system:serviceaccounts","system:serviceaccounts:`","system:authenticated"],"extra":{"authentication.kubernetes.io/credential-id":["JTI=`"],"authentication.kubernetes.io/node-name":["`"],"authentication.kubernetes.io/node-uid":["`"],"authentication.kubernetes.io/pod-name":["`"],"authentication.kubernetes.io/pod-uid":["`"]}},"audiences":["https://kubernetes.default.svc.cluster.local"]}}"#,
        &[
            Arg::Str(pod.namespace),
            Arg::Str(pod.app),
            Arg::Uuid(pod.uid.rotate_left(64)),
            Arg::Str(pod.namespace),
            Arg::Uuid(cx.rng.random()),
            Arg::Str(&cx.cast.node_names[pod.node]),
            Arg::Uuid(cx.cast.node_uids[pod.node]),
            Arg::Str(&pod.name),
            Arg::Uuid(pod.uid),
        ],
    );
}

/// The request and response of a TokenRequest a kubelet makes for a pod's service account.
pub(crate) fn token_request(
    request: &mut Vec<u8>,
    response: &mut Vec<u8>,
    cx: &mut Cx,
    pod_index: usize,
) {
    let mut token = Vec::with_capacity(1024);
    jwt(&mut token, cx, pod_index);
    let pod = &cx.cast.pods[pod_index];
    let bound = r#"{"kind":"Pod","apiVersion":"v1","name":"`","uid":"`"}}"#;
    request.extend_from_slice(
        br#"{"kind":"TokenRequest","apiVersion":"authentication.k8s.io/v1","metadata":{"creationTimestamp":null},"spec":{"audiences":null,"expirationSeconds":3607,"boundObjectRef":"#,
    );
    fill(request, bound, &[Arg::Str(&pod.name), Arg::Uuid(pod.uid)]);
    request.extend_from_slice(br#","status":{"token":"","expirationTimestamp":null}}"#);
    fill(
        response,
        r#"{"kind":"TokenRequest","apiVersion":"authentication.k8s.io/v1","metadata":{"name":"`","namespace":"`","creationTimestamp":null},"spec":{"audiences":["https://kubernetes.default.svc.cluster.local"],"expirationSeconds":3607,"boundObjectRef":"#,
        &[Arg::Str(pod.app), Arg::Str(pod.namespace)],
    );
    fill(response, bound, &[Arg::Str(&pod.name), Arg::Uuid(pod.uid)]);
    fill(
        response,
        r#","status":{"token":"`","expirationTimestamp":"`"}}"#,
        &[Arg::Raw(&token), Arg::Secs(cx.now_secs + 3607)],
    );
}

/// A strategic-merge patch of a node's or pod's status, as kubelets send them.
pub(crate) fn status_patch(out: &mut Vec<u8>, cx: &mut Cx, pod_uid: Option<u128>) {
    let now = cx.now_secs;
    match pod_uid {
        None => fill(
            out,
            r#"{"status":{"$setElementOrder/conditions":[{"type":"MemoryPressure"},{"type":"DiskPressure"},{"type":"PIDPressure"},{"type":"Ready"}],"conditions":[{"lastHeartbeatTime":"`","type":"MemoryPressure"},{"lastHeartbeatTime":"`","type":"DiskPressure"},{"lastHeartbeatTime":"`","type":"PIDPressure"},{"lastHeartbeatTime":"`","type":"Ready"}]}}"#,
            &[
                Arg::Secs(now),
                Arg::Secs(now),
                Arg::Secs(now),
                Arg::Secs(now),
            ],
        ),
        Some(uid) => fill(
            out,
            r#"{"metadata":{"uid":"`"},"status":{"$setElementOrder/conditions":[{"type":"PodReadyToStartContainers"},{"type":"Initialized"},{"type":"Ready"},{"type":"ContainersReady"},{"type":"PodScheduled"}],"conditions":[{"lastTransitionTime":"`","status":"True","type":"Ready"},{"lastTransitionTime":"`","status":"True","type":"ContainersReady"}]}}"#,
            &[Arg::Uuid(uid), Arg::Secs(now), Arg::Secs(now)],
        ),
    }
}

/// A `kubectl patch`/`annotate` body.
pub(crate) fn user_patch(out: &mut Vec<u8>, cx: &mut Cx) {
    match cx.rng.random_range(0..3) {
        0 => {
            out.extend_from_slice(br#"{"spec":{"replicas":"#);
            push_u64(out, cx.rng.random_range(1..10));
            out.extend_from_slice(b"}}");
        }
        1 => {
            out.extend_from_slice(br#"{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":""#);
            crate::json::push_timestamp_secs(out, cx.now_secs);
            out.extend_from_slice(br#""}}}}}"#);
        }
        _ => {
            out.extend_from_slice(br#"{"metadata":{"annotations":{"prometheus.io/port":"9113","prometheus.io/scrape":"true"}}}"#)
        }
    }
}

pub(crate) const DELETE_OPTIONS: &[u8] =
    br#"{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Background"}"#;

/// The `Status` a successful delete returns.
pub(crate) fn delete_status(out: &mut Vec<u8>, cx: &mut Cx, resource: &Resource, name: &str) {
    fill(
        out,
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success","details":{"name":"`","kind":"`","uid":"`"}}"#,
        &[
            Arg::Str(name),
            Arg::Str(resource.name),
            Arg::Uuid(cx.rng.random()),
        ],
    );
}

/// A pod that PodSecurity admission will reject.
pub(crate) fn privileged_pod(out: &mut Vec<u8>, name: &str, ns: &str) {
    fill(
        out,
        r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"`","namespace":"`","creationTimestamp":null,"labels":{"run":"`"}},"spec":{"containers":[{"name":"`","image":"busybox:1.36","args":["sh"],"resources":{},"terminationMessagePath":"/dev/termination-log","terminationMessagePolicy":"File","imagePullPolicy":"IfNotPresent","securityContext":{"privileged":true},"stdin":true,"stdinOnce":true,"tty":true}],"restartPolicy":"Never","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","securityContext":{},"schedulerName":"default-scheduler","enableServiceLinks":true},"status":{}}"#,
        &[Arg::Str(name), Arg::Str(ns), Arg::Str(name), Arg::Str(name)],
    );
}
