//! Checks every plugin passes: the contract between a component and the engine.

use std::sync::Arc;
use std::time::Duration;

use auditflow_core::channel;
use auditflow_core::{
    Batch, BatchNotifier, BatchStatus, Event, NoTelemetry, Sink, SinkContext, Telemetry,
};

/// Feeds `batches` to `sink`, closes its input, and checks that the sink returns within
/// `timeout` having resolved every batch (none left `Errored` by being dropped).
/// Returns each batch's status, in input order.
pub async fn check_sink(
    sink: Box<dyn Sink>,
    batches: Vec<Vec<Event>>,
    timeout: Duration,
) -> Vec<BatchStatus> {
    let telemetry: Arc<dyn Telemetry> = Arc::new(NoTelemetry);
    let (tx, rx) = channel::channel(batches.len().max(1), Arc::clone(&telemetry));
    let cx = SinkContext {
        id: "compliance".into(),
        input: rx,
        telemetry,
        dead_letter: auditflow_core::DeadLetterOutput::disconnected("compliance"),
    };
    let run = tokio::spawn(sink.run(cx));
    let mut receivers = Vec::new();
    for events in batches {
        let (finalizer, receiver) = BatchNotifier::new();
        tx.send(Batch::with_finalizer(events, finalizer))
            .await
            .expect("the sink stopped before its input ended");
        receivers.push(receiver);
    }
    drop(tx);
    tokio::time::timeout(timeout, run)
        .await
        .expect("the sink did not return after its input ended")
        .expect("the sink panicked")
        .expect("the sink failed");
    let mut statuses = Vec::new();
    for receiver in receivers {
        let status = tokio::time::timeout(Duration::from_secs(1), receiver)
            .await
            .expect("a batch was never resolved although the sink returned");
        assert_ne!(
            status,
            BatchStatus::Errored,
            "the sink dropped a batch without resolving it"
        );
        statuses.push(status);
    }
    statuses
}
