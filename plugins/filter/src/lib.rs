//! `filter` transform: keeps the events that match a condition and discards the rest.
//!
//! # Layout
//! One file: [`FilterConfig`], the [`Filter`] it builds, and the tests.
//!
//! # The one design decision
//! The condition is compiled when the pipeline loads (a syntax error names the column)
//! and evaluated on the event's lazily parsed top-level fields, so a condition on `verb`
//! parses `verb` and nothing else. Discarded events count as `discarded{reason="filtered"}`
//! and as delivered: the source's acknowledgement does not wait for them.

use std::sync::Arc;

use auditflow_core::condition::Condition;
use auditflow_core::{
    Batch, BuildContext, BuildError, Telemetry, Transform, TransformConfig, Validate,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// Keeps the events that match `condition`; the others are discarded (reason `filtered`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// The events to keep, in the condition language (docs/conditions.md), for instance
    /// `verb != "watch" and not user.username matches "^system:"`.
    #[schemars(with = "String")]
    pub condition: Condition,
}

impl Validate for FilterConfig {}

impl TransformConfig for FilterConfig {
    fn build(&self, cx: BuildContext) -> Result<Box<dyn Transform>, BuildError> {
        Ok(Box::new(Filter {
            condition: self.condition.clone(),
            telemetry: cx.telemetry,
        }))
    }
}

/// The running `filter` transform.
#[derive(Clone)]
pub struct Filter {
    condition: Condition,
    telemetry: Arc<dyn Telemetry>,
}

impl Filter {
    pub fn new(condition: Condition, telemetry: Arc<dyn Telemetry>) -> Filter {
        Filter {
            condition,
            telemetry,
        }
    }
}

impl Transform for Filter {
    fn fork(&self) -> Option<Box<dyn Transform>> {
        Some(Box::new(self.clone()))
    }

    fn transform(&mut self, batch: &mut Batch) {
        let before = batch.events.len();
        batch.events.retain(|event| self.condition.matches(event));
        let discarded = before - batch.events.len();
        if discarded > 0 {
            self.telemetry.discarded("filtered", discarded);
        }
    }
}

#[cfg(test)]
mod tests {
    use auditflow_core::Event;
    use auditflow_metrics::{ComponentMetrics, Metrics};
    use auditflow_testkit::events::audit_log_events;
    use auditflow_testkit::run_transform;

    use super::*;

    /// The line of the real discarded-events series of filter `f`, as served.
    fn discarded_line(events: usize) -> String {
        format!(
            "auditflow_component_discarded_events_total{{component_id=\"f\",\
             component_kind=\"transform\",component_type=\"filter\",reason=\"filtered\"}} {events}"
        )
    }

    fn rendered(metrics: &Metrics) -> String {
        String::from_utf8(metrics.render()).unwrap()
    }

    /// A filter `f` on `condition`, counting into a registry of its own: every test may
    /// use the same id.
    fn filter(condition: &str) -> (Filter, Metrics) {
        let metrics = Metrics::new();
        let telemetry = ComponentMetrics::new(&metrics, "f", "transform", "filter");
        let filter = Filter::new(Condition::parse(condition).unwrap(), telemetry);
        (filter, metrics)
    }

    fn audit_ids(events: &[Event]) -> Vec<&str> {
        events
            .iter()
            .map(|e| e.get_str("auditID").unwrap())
            .collect()
    }

    #[test]
    fn keeps_matching_events_in_order_and_counts_the_rest() {
        let (mut filter, metrics) =
            filter(r#"verb in ["list", "update"] and responseStatus.code < 400"#);
        let events = audit_log_events();
        let expected: Vec<Event> = events
            .iter()
            .filter(|e| {
                matches!(e.get_str("verb"), Some("list" | "update"))
                    && e.get_path(["responseStatus", "code"])
                        .and_then(|c| c.as_u64())
                        < Some(400)
            })
            .cloned()
            .collect();
        assert_eq!(
            expected.len(),
            36,
            "35 allowed lists and one update in the capture"
        );
        let kept = run_transform(&mut filter, events.clone());
        assert_eq!(audit_ids(&kept), audit_ids(&expected));
        // Kept events leave byte for byte as they came.
        for event in &kept {
            assert!(!event.is_modified());
        }
        assert_eq!(
            rendered(&metrics)
                .lines()
                .find(|l| l.contains("reason=\"filtered\"")),
            Some(discarded_line(events.len() - 36).as_str())
        );
    }

    #[test]
    fn keeps_the_one_rbac_denial_of_the_capture() {
        let (mut filter, _) = filter(r#"annotations."authorization.k8s.io/decision" == "forbid""#);
        let kept = run_transform(&mut filter, audit_log_events());
        assert_eq!(audit_ids(&kept), ["332b4024-e672-4823-9bfa-80a2ddf4aa1e"]);
    }

    #[test]
    fn a_batch_that_all_matches_reports_no_discard() {
        let (mut filter, metrics) = filter("auditID exists");
        let events = audit_log_events();
        let kept = run_transform(&mut filter, events.clone());
        assert_eq!(kept.len(), events.len());
        assert!(!rendered(&metrics).lines().any(|l| l.contains("reason=")));
    }

    #[test]
    fn group_membership_matches_any_element() {
        let (mut filter, _) =
            filter(r#"user.groups == "system:masters" and user.username != "system:apiserver""#);
        let kept = run_transform(&mut filter, audit_log_events());
        assert!(!kept.is_empty());
        for event in &kept {
            assert_eq!(event.get_path(["user", "username"]).unwrap(), "admin");
        }
    }

    #[test]
    fn config_errors_name_the_option_and_column() {
        let registry =
            auditflow_config::Registry::new(vec![auditflow_config::Plugin::transform::<
                FilterConfig,
            >("filter", "")]);
        let plugin = registry
            .find(auditflow_core::ComponentKind::Transform, "filter")
            .unwrap();
        let error = plugin
            .parse(serde_json::json!({"condition": "verb == \"get\" and"}))
            .err()
            .unwrap();
        assert_eq!(error.path, "condition");
        assert_eq!(
            error.message,
            "column 18: expected a field path such as `objectRef.resource`, found the end of the condition"
        );
        let error = plugin.parse(serde_json::json!({})).err().unwrap();
        assert!(
            error.message.contains("missing field `condition`"),
            "{}",
            error.message
        );
    }

    #[test]
    fn keeps_the_engine_contract() {
        // Acknowledgements kept, every event out an object, a forked copy the same.
        let out = auditflow_testkit::compliance::check_transform_config::<crate::FilterConfig>(
            serde_json::json!({"condition": "verb != \"watch\""}),
        );
        assert!(!out.is_empty());
    }
}
