//! The `kafka` source over the memory limit, in process against a real Kafka-protocol
//! broker (Tansu; see `auditflow_e2e::kafka`): while the process-wide memory flag is up
//! (as the `memory_limit_mb` monitor raises it), the source pauses its partitions and
//! sends at most what it had already fetched (one batch); once the flag clears, every
//! event arrives.
//!
//! The flag is process-wide: nextest runs this test in a process of its own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditflow_core::batch::MAX_BATCH_EVENTS;
use auditflow_core::channel::{channel, Output};
use auditflow_core::{
    BatchStatus, BuildContext, DeadLetterOutput, NoTelemetry, Shutdown, SourceConfig,
    SourceContext, Telemetry,
};
use auditflow_e2e::kafka::Broker;
use auditflow_e2e::Workspace;

#[test]
fn over_the_memory_limit_the_kafka_source_pauses_and_resumes_without_losing_events() {
    const EVENTS: usize = 5_000;
    let Some(broker) = Broker::start() else {
        return;
    };
    let topic = broker.topic_with_audit_lines("memory", 2, EVENTS);
    let config: auditflow_kafka::KafkaSourceConfig = serde_json::from_value(serde_json::json!({
        "bootstrap_servers": broker.bootstrap_servers,
        "topics": [topic],
        "group_id": "memory",
    }))
    .expect("a kafka source config");
    let workspace = Workspace::new();
    let telemetry: Arc<dyn Telemetry> = Arc::new(NoTelemetry);
    let source = config
        .build(BuildContext {
            telemetry: Arc::clone(&telemetry),
            ..BuildContext::unobserved("in", workspace.path().join("in"))
        })
        .expect("build the kafka source");

    auditflow_core::memory::set_limited(true);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let (trigger, shutdown) = Shutdown::new();
    let (sender, mut input) = channel(2, Arc::clone(&telemetry));
    let running = runtime.spawn(source.run(SourceContext {
        id: "in".into(),
        out: Output::new(vec![sender], Arc::clone(&telemetry)),
        shutdown,
        telemetry,
        dead_letter: DeadLetterOutput::disconnected("in"),
    }));
    let received = Arc::new(AtomicUsize::new(0));
    let sink = runtime.spawn({
        let received = Arc::clone(&received);
        async move {
            while let Some(batch) = input.recv().await {
                received.fetch_add(batch.len(), Ordering::SeqCst);
                batch.resolve(BatchStatus::Delivered);
            }
        }
    });

    // Long enough for the group to form and fetch (a few seconds with Tansu).
    std::thread::sleep(Duration::from_secs(8));
    let while_limited = received.load(Ordering::SeqCst);
    assert!(
        while_limited <= MAX_BATCH_EVENTS,
        "{while_limited} events came out while over the memory limit"
    );

    auditflow_core::memory::set_limited(false);
    let deadline = Instant::now() + Duration::from_secs(120);
    while received.load(Ordering::SeqCst) < EVENTS {
        assert!(
            Instant::now() < deadline,
            "{} of {EVENTS} events arrived within 120 s of the flag clearing",
            received.load(Ordering::SeqCst)
        );
        assert!(!running.is_finished(), "the source stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
    trigger.trigger();
    runtime.block_on(async {
        running
            .await
            .expect("the source task")
            .expect("the source ends cleanly");
        sink.await.expect("the sink task");
    });
}
