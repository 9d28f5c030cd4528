//! Real audit events, captured from a kube-apiserver v1.32 with both audit backends on
//! (see `fixtures/`).

use auditflow_core::Event;

/// The log backend's file: one `audit.k8s.io/v1` Event per line (245 events).
pub const AUDIT_LOG: &str = include_str!("../fixtures/kube-apiserver-1.32-audit.log");

/// One `EventList` body exactly as the webhook backend POSTed it (140 items, which
/// carry no `kind`/`apiVersion` of their own).
pub const WEBHOOK_EVENT_LIST: &str =
    include_str!("../fixtures/kube-apiserver-1.32-webhook-eventlist.json");

/// The lines of [`AUDIT_LOG`].
pub fn audit_log_lines() -> impl Iterator<Item = &'static str> {
    AUDIT_LOG.lines().filter(|line| !line.is_empty())
}

/// The events of [`AUDIT_LOG`].
pub fn audit_log_events() -> Vec<Event> {
    audit_log_lines().map(crate::event).collect()
}
