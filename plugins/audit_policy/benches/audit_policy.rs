//! `audit_policy` with a 15-rule policy (kube-apiserver's documented example plus the
//! rules a central tier adds) over Metadata-level events: the real capture (245 events,
//! most of which fall through to the last rules) and 1,000 generated Metadata events.
//! events/s = events per iteration / time per iteration.

use std::sync::Arc;

use auditflow_audit_policy::{load, AuditPolicy};
use auditflow_core::{Batch, NoTelemetry, Transform};
use auditflow_generator::{generated_events, Profile};
use auditflow_testkit::events::audit_log_events;
use cpu_time::ThreadTime;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  nonResourceURLs: ["/healthz*", "/livez*", "/readyz*", /version]
- level: None
  users: [system:kube-proxy]
  verbs: [watch]
  resources:
  - group: ""
    resources: [endpoints, services, services/status]
- level: None
  userGroups: [system:nodes]
  verbs: [get]
  resources:
  - group: ""
    resources: [nodes, nodes/status]
- level: None
  users: [system:kube-controller-manager, system:kube-scheduler, system:serviceaccount:kube-system:endpoint-controller]
  verbs: [get, update]
  namespaces: [kube-system]
  resources:
  - group: ""
    resources: [endpoints]
- level: None
  resources:
  - group: ""
    resources: [configmaps]
    resourceNames: [controller-leader]
- level: None
  resources:
  - group: coordination.k8s.io
    resources: [leases]
  verbs: [get, update]
- level: Metadata
  resources:
  - group: ""
    resources: [secrets, configmaps, serviceaccounts/token]
  - group: authentication.k8s.io
    resources: [tokenreviews]
- level: Metadata
  resources:
  - group: ""
    resources: [pods/log, pods/status, "pods/exec", "pods/portforward"]
- level: RequestResponse
  verbs: [create, update, patch, delete]
  resources:
  - group: ""
    resources: [pods]
- level: Request
  namespaces: [kube-system]
  verbs: [create, update, patch, delete]
- level: Metadata
  verbs: [watch, list]
- level: Request
  resources:
  - group: rbac.authorization.k8s.io
    resources: [roles, rolebindings]
  verbs: [create, update, patch, delete]
- level: Request
  resources:
  - group: ""
  - group: apps
  - group: batch
  verbs: [create, update, patch, delete]
- level: Metadata
  userGroups: [system:authenticated]
- level: Metadata
"#;

fn bench(c: &mut Criterion) {
    let loaded = load(POLICY);
    assert!(!loaded.has_errors(), "{:#?}", loaded.findings);
    assert_eq!(loaded.policy.rules.len(), 15);
    let policy = Arc::new(loaded.policy);
    for (mix, events) in [
        ("capture_metadata", audit_log_events()),
        (
            "generated_metadata",
            generated_events(Profile::Metadata, 1, 1000),
        ),
    ] {
        let mut group = c.benchmark_group(format!("audit_policy/{mix}"));
        group.throughput(Throughput::Elements(events.len() as u64));
        let mut transform = AuditPolicy::new(Arc::clone(&policy), Arc::new(NoTelemetry));
        group.bench_function("15_rules", |b| {
            b.iter_batched(
                || Batch::new(events.clone()),
                |mut batch| {
                    transform.transform(&mut batch);
                    batch
                },
                BatchSize::SmallInput,
            )
        });
        group.finish();
        // The same work timed in CPU time of this thread, transform calls only: the median
        // and the best batch, which stay put on a loaded machine where the total does not.
        let mut per_batch = Vec::new();
        for _ in 0..(200_000 / events.len()).max(1) {
            let mut batch = Batch::new(events.clone());
            let start = ThreadTime::now();
            transform.transform(&mut batch);
            per_batch.push(start.elapsed().as_nanos() as u64);
        }
        per_batch.sort_unstable();
        let rate = |ns: u64| events.len() as f64 / ns.max(1) as f64 * 1e3;
        eprintln!(
            "audit_policy/{mix}/15_rules: {:.2} M events per CPU-second (median of {} batches of {}; best batch {:.2})",
            rate(per_batch[per_batch.len() / 2]),
            per_batch.len(),
            events.len(),
            rate(per_batch[0]),
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
