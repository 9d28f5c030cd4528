//! `audit_policy` with a 15-rule policy (kube-apiserver's documented example plus the
//! rules a central tier adds) over Metadata-level events: the real capture (245 events,
//! most of which fall through to the last rules) and 1,000 generated Metadata events.
//! events/s = events per iteration / time per iteration.

use std::sync::Arc;

use auditflow_audit_policy::{load, AuditPolicy};
use auditflow_core::{Batch, NoTelemetry, Transform};
use auditflow_generator::{generated_events, Profile};
use auditflow_testkit::events::audit_log_events;
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
        // The same work timed in CPU time of this thread, transform calls only.
        let (mut cpu, mut processed) = (0u64, 0u64);
        for _ in 0..(200_000 / events.len()).max(1) {
            let mut batch = Batch::new(events.clone());
            let Some(start) = thread_cpu_ns() else {
                return;
            };
            transform.transform(&mut batch);
            cpu += thread_cpu_ns().unwrap_or(start) - start;
            processed += events.len() as u64;
        }
        eprintln!(
            "audit_policy/{mix}/15_rules: {:.2} M events per CPU-second ({processed} events in {:.3} CPU-s)",
            processed as f64 / cpu as f64 * 1e3,
            cpu as f64 / 1e9
        );
    }
}

/// Nanoseconds this thread has run on a CPU (Linux `schedstat`): figures per CPU-second
/// that hold on a machine shared with other work, where wall-clock time does not.
fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

criterion_group!(benches, bench);
criterion_main!(benches);
