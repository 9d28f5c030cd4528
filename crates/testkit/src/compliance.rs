//! Checks every plugin passes: the contract between a component and the engine, for
//! sources ([`check_source`]), transforms ([`check_transform`]) and sinks ([`check_sink`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use auditflow_core::channel;
use auditflow_core::{
    Batch, BatchNotifier, BatchStatus, BuildContext, Event, NoTelemetry, Output, Shutdown, Sink,
    SinkContext, Source, SourceContext, Telemetry, Transform, TransformConfig,
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

/// Runs `source` until it has sent at least `events` events, acknowledging every batch as
/// delivered, then triggers shutdown, and checks the contract a source keeps with the
/// engine:
/// - every batch it sends carries an acknowledgement the engine can resolve;
/// - on shutdown it returns `Ok` within `timeout` (drained, final checkpoint written);
/// - it sends nothing after it returned.
///
/// Returns the events received, in order.
///
/// # Panics
/// When the source sends fewer than `events` events within `timeout`, fails, panics or
/// does not return within `timeout` of the shutdown.
pub async fn check_source(source: Box<dyn Source>, events: usize, timeout: Duration) -> Vec<Event> {
    let telemetry: Arc<dyn Telemetry> = Arc::new(NoTelemetry);
    let (tx, mut rx) = channel::channel(2, Arc::clone(&telemetry));
    let (trigger, shutdown) = Shutdown::new();
    let cx = SourceContext {
        id: "compliance".into(),
        out: Output::new(vec![tx], Arc::clone(&telemetry)),
        shutdown,
        telemetry,
        dead_letter: auditflow_core::DeadLetterOutput::disconnected("compliance"),
    };
    let run = tokio::spawn(source.run(cx));
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while received.len() < events {
        let batch = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the source sent {} of {events} events within {timeout:?}",
                    received.len()
                )
            })
            .expect("the source stopped before sending what was asked");
        received.extend(batch.events.iter().cloned());
        batch.resolve(BatchStatus::Delivered);
    }
    trigger.trigger();
    // Whatever it sends while stopping is acknowledged too, as the engine would.
    let drained = async {
        while let Some(batch) = rx.recv().await {
            received.extend(batch.events.iter().cloned());
            batch.resolve(BatchStatus::Delivered);
        }
    };
    tokio::time::timeout(timeout, async {
        let (result, ()) = tokio::join!(run, drained);
        result
            .expect("the source panicked")
            .expect("the source failed on shutdown");
    })
    .await
    .expect("the source did not return after shutdown");
    received
}

/// Runs `transform` over `events` in one batch with an acknowledgement and checks the
/// contract a transform keeps with the engine:
/// - the batch keeps its acknowledgement (a transform that dropped it would leave the
///   source waiting): resolving the output resolves the source's batch, once;
/// - every event out is one JSON object that decodes again;
/// - a copy made by [`Transform::fork`] (how transforms run on several cores) gives
///   byte-identical output on the same input.
///
/// Returns the events out.
///
/// # Panics
/// On any broken rule above.
pub fn check_transform(transform: &mut dyn Transform, events: Vec<Event>) -> Vec<Event> {
    let mut copy = transform.fork();
    let (finalizer, mut receiver) = BatchNotifier::new();
    let mut batch = Batch::with_finalizer(events.clone(), finalizer);
    transform.transform(&mut batch);
    let out: Vec<Event> = batch.events.clone();
    for event in &out {
        let bytes = event.to_json_bytes();
        assert_eq!(bytes.first(), Some(&b'{'), "not an object: {event:?}");
        Event::from_bytes(bytes).expect("an event out does not decode again");
    }
    batch.resolve(BatchStatus::Delivered);
    // Resolving is synchronous: the status is there at once, or the acknowledgement was
    // lost on the way.
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(&mut receiver).poll(&mut cx) {
        Poll::Ready(status) => assert_eq!(
            status,
            BatchStatus::Delivered,
            "the transform dropped the batch's acknowledgement"
        ),
        Poll::Pending => panic!("the transform kept a copy of the batch's acknowledgement"),
    }
    if let Some(copy) = copy.as_mut() {
        let mut again = Batch::new(events);
        copy.transform(&mut again);
        let bytes =
            |events: &[Event]| -> Vec<_> { events.iter().map(Event::to_json_bytes).collect() };
        assert_eq!(
            bytes(&again.events),
            bytes(&out),
            "a forked copy transforms differently"
        );
    }
    out
}

/// [`check_transform`] over the captured audit events ([`crate::events`]), on the
/// transform that `options` (a pipeline file's options for it, as JSON) configure.
///
/// # Panics
/// When `options` do not make a config, the config does not build, or the check fails.
pub fn check_transform_config<C>(options: serde_json::Value) -> Vec<Event>
where
    C: TransformConfig + serde::de::DeserializeOwned,
{
    let config: C = serde_json::from_value(options).expect("the options make a config");
    let mut transform = config
        .build(BuildContext::unobserved("compliance", std::env::temp_dir()))
        .expect("the config builds");
    check_transform(transform.as_mut(), crate::events::audit_log_events())
}
