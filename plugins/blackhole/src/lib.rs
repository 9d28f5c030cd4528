//! `blackhole` sink: counts events and drops them, acknowledging at once. For benchmarks
//! and for measuring everything in front of a sink.

use async_trait::async_trait;
use auditflow_core::{
    BatchStatus, BuildContext, BuildError, ComponentError, Sink, SinkConfig, SinkContext, Validate,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// Counts and drops every event.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlackholeConfig {}

impl Validate for BlackholeConfig {}

impl SinkConfig for BlackholeConfig {
    fn build(&self, _: BuildContext) -> Result<Box<dyn Sink>, BuildError> {
        Ok(Box::new(Blackhole))
    }
}

struct Blackhole;

#[async_trait]
impl Sink for Blackhole {
    async fn run(self: Box<Self>, mut cx: SinkContext) -> Result<(), ComponentError> {
        while let Some(batch) = cx.input.recv().await {
            cx.telemetry.sent(batch.len(), batch.size_hint());
            batch.resolve(BatchStatus::Delivered);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn acknowledges_every_batch_delivered() {
        let sink = BlackholeConfig {}
            .build(BuildContext::unobserved("b", "/nonexistent"))
            .unwrap();
        let events = auditflow_testkit::events::audit_log_events();
        let batches = events.chunks(100).map(<[_]>::to_vec).collect();
        let statuses =
            auditflow_testkit::compliance::check_sink(sink, batches, Duration::from_secs(5)).await;
        assert_eq!(statuses, vec![BatchStatus::Delivered; 3]);
    }
}
