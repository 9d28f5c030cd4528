//! The `kafka` source over the memory limit, in process against a real Kafka-protocol
//! broker (Tansu; see `auditflow_e2e::kafka`): while the process-wide memory flag is up
//! (as the `memory_limit_mb` monitor raises it), the source pauses its partitions and
//! sends at most what it had already fetched (one batch); once the flag clears, every
//! event arrives.
//!
//! The flag is process-wide, as is the log this test reads: nextest runs this test in a
//! process of its own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auditflow_core::batch::MAX_BATCH_EVENTS;
use auditflow_core::channel::{channel, Output};
use auditflow_core::{
    BatchStatus, BuildContext, DeadLetterOutput, NoTelemetry, Shutdown, SourceConfig,
    SourceContext, Telemetry,
};
use auditflow_e2e::kafka::Broker;
use auditflow_e2e::Workspace;

/// What the process logs, kept to be searched.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    /// Keeps the `auditflow_kafka` log of this process, from debug level up.
    fn capture() -> Log {
        let log = Log::default();
        tracing_subscriber::fmt()
            .with_env_filter("auditflow_kafka=debug")
            .with_ansi(false)
            .with_writer(log.clone())
            .init();
        log
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl std::io::Write for Log {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
    type Writer = Log;

    fn make_writer(&'a self) -> Log {
        self.clone()
    }
}

#[test]
fn over_the_memory_limit_the_kafka_source_pauses_and_resumes_without_losing_events() {
    const EVENTS: usize = 5_000;
    let log = Log::capture();
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

    // The group formed (about 20 s with Tansu on a busy machine), the source fetched, and
    // paused its partitions over the limit.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !log
        .text()
        .contains("kafka partitions paused: memory is at its limit")
    {
        let came_out = received.load(Ordering::SeqCst);
        assert!(
            came_out <= MAX_BATCH_EVENTS,
            "{came_out} events came out over the memory limit before the partitions paused"
        );
        assert!(
            Instant::now() < deadline,
            "the source did not pause its partitions within 120 s over the memory limit; \
             {} events came out; log:\n{}",
            received.load(Ordering::SeqCst),
            log.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
