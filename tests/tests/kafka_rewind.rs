//! The `kafka` source, in process, against a real Kafka-protocol broker (Tansu; see
//! `auditflow_e2e::kafka`): a batch finalised without a verdict (`Errored`) is read again
//! from its first message without a restart, nothing is lost, and the committed offsets
//! still reach the end of every partition.
//!
//! The source runs in this process so that the sink in front of it can be one that loses
//! the acknowledgement of the first batch it gets (it drops the batch's finalizers, as a
//! crashed sink or a timed-out shutdown does) and delivers everything after.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auditflow_core::channel::{channel, Output};
use auditflow_core::{
    BatchStatus, BuildContext, DeadLetterOutput, NoTelemetry, Shutdown, SourceConfig,
    SourceContext, Telemetry,
};
use auditflow_e2e::kafka::{line_index, Broker};
use auditflow_e2e::Workspace;

#[test]
fn an_errored_batch_is_read_again_without_a_restart_and_nothing_is_lost() {
    const EVENTS: usize = 6_000;
    let Some(broker) = Broker::start() else {
        return;
    };
    let topic = broker.topic_with_audit_lines("rewind", 2, EVENTS);
    let ends = broker.log_ends(&topic, EVENTS);

    let config: auditflow_kafka::KafkaSourceConfig = serde_json::from_value(serde_json::json!({
        "bootstrap_servers": broker.bootstrap_servers,
        "topics": [topic],
        "group_id": "rewind",
        "commit_interval_ms": 200,
        "librdkafka_options": {
            "session.timeout.ms": "6000",
            "heartbeat.interval.ms": "1000",
        },
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

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let (trigger, shutdown) = Shutdown::new();
    // A small channel: the source reads ahead of the sink by a few batches only.
    let (sender, mut input) = channel(2, Arc::clone(&telemetry));
    let running = runtime.spawn(source.run(SourceContext {
        id: "in".into(),
        out: Output::new(vec![sender], Arc::clone(&telemetry)),
        shutdown,
        telemetry,
        dead_letter: DeadLetterOutput::disconnected("in"),
    }));

    // The sink: loses the first batch's acknowledgement, delivers every other batch, and
    // keeps delivering until the source stops (what is read again must get through for the
    // commits to reach the end).
    let seen = Arc::new(Mutex::new(Seen {
        deliveries: vec![0; EVENTS],
        ..Seen::default()
    }));
    let sink = runtime.spawn({
        let seen = Arc::clone(&seen);
        async move {
            while let Some(mut batch) = input.recv().await {
                let indexes: Vec<usize> = batch
                    .events
                    .iter()
                    .map(|event| line_index(std::str::from_utf8(event.raw()).expect("UTF-8")))
                    .collect();
                let lose = seen.lock().unwrap().record(indexes);
                if lose {
                    drop(batch.take_finalizers());
                } else {
                    batch.resolve(BatchStatus::Delivered);
                }
            }
        }
    });

    let deadline = Instant::now() + Duration::from_secs(180);
    while seen.lock().unwrap().distinct < EVENTS {
        assert!(
            Instant::now() < deadline,
            "{} of {EVENTS} events delivered within 180 s",
            seen.lock().unwrap().distinct
        );
        assert!(!running.is_finished(), "the source stopped");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The commits go on past the lost batch, to the end of every partition, while the
    // source keeps running.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let committed = broker.committed("rewind", &topic);
        if committed == ends {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "committed {committed:?}, log ends {ends:?}"
        );
        assert!(!running.is_finished(), "the source stopped");
        std::thread::sleep(Duration::from_millis(200));
    }

    trigger.trigger();
    runtime.block_on(async {
        let stopped = tokio::time::timeout(Duration::from_secs(60), async {
            let (source, sink) = tokio::join!(running, sink);
            sink.expect("the sink task");
            source
        })
        .await
        .expect("the source stops within 60 s");
        stopped
            .expect("the source task")
            .expect("the source stops cleanly");
    });

    let seen = seen.lock().unwrap();
    assert!(!seen.lost.is_empty(), "the first batch held events");
    let before_reread = seen.before_reread.expect("the lost batch was read again");
    let total: u32 = seen.deliveries.iter().sum();
    let duplicates = total as usize - EVENTS;
    eprintln!(
        "lost batch: {} events; {} batches; {before_reread} events delivered before it came again; {duplicates} duplicates",
        seen.lost.len(),
        seen.batches,
    );
    // Every event arrived; what comes twice is at most what was in flight behind the lost
    // batch when the source sought back (its partitions' batches delivered meanwhile).
    for (i, count) in seen.deliveries.iter().enumerate() {
        assert!(*count >= 1, "event {i} lost");
        assert!(*count <= 2, "event {i} delivered {count} times");
    }
    assert!(
        duplicates <= before_reread,
        "{duplicates} duplicates, but only {before_reread} events were in flight behind the lost batch"
    );
}

/// What the sink got.
#[derive(Default)]
struct Seen {
    /// How many times each event was delivered.
    deliveries: Vec<u32>,
    /// Events delivered at least once.
    distinct: usize,
    /// The events of the batch whose acknowledgement was lost.
    lost: Vec<usize>,
    batches: usize,
    delivered_since_loss: usize,
    /// Events delivered between the lost batch and the first of its events coming again:
    /// everything in flight behind it when the source sought back.
    before_reread: Option<usize>,
}

impl Seen {
    /// Records a batch; returns whether to lose its acknowledgement (the first batch's).
    fn record(&mut self, indexes: Vec<usize>) -> bool {
        self.batches += 1;
        if self.batches == 1 {
            self.lost = indexes;
            return true;
        }
        if self.before_reread.is_none() && indexes.contains(&self.lost[0]) {
            self.before_reread = Some(self.delivered_since_loss);
        }
        for &i in &indexes {
            self.distinct += usize::from(self.deliveries[i] == 0);
            self.deliveries[i] += 1;
        }
        self.delivered_since_loss += indexes.len();
        false
    }
}
