//! The tasks between a sink's channel and the sink: *intake* frames batches, appends them
//! to the queue, fsyncs at most every `fsync_interval`, then acknowledges the sources;
//! *delivery* reads durable records back into batches for the sink and releases each
//! span once the sink acknowledged it.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use auditflow_core::batch::{MAX_BATCH_BYTES, MAX_BATCH_EVENTS};
use auditflow_core::blocking::run as blocking;
use auditflow_core::channel::{self, Receiver, Sender};
use auditflow_core::finalize::Finalizers;
use auditflow_core::{
    Batch, BatchNotifier, BatchStatus, ComponentError, Event, NoTelemetry, Telemetry,
};
use auditflow_metrics::DiskBufferMetrics;
use tokio::task::JoinSet;

use crate::frame::{self, HEADER_BYTES};
use crate::queue::{self, Queue, Read, Reader, Stats, Writer};

/// Batches waiting between the buffer's delivery task and the sink.
const SINK_CHANNEL_BATCHES: usize = 2;
/// How long to wait before retrying a failed write or fsync when no space was freed.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// What a full buffer does with the next batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Wait for space: the sink's input fills and back-pressure reaches the sources.
    Block,
    /// Drop the batch, counted as discarded with reason `buffer_full`.
    DropNewest,
}

/// A disk buffer's settings.
#[derive(Debug, Clone)]
pub struct DiskBufferOptions {
    /// The buffer's own directory (`<data_dir>/<sink id>/buffer`).
    pub dir: PathBuf,
    /// The most bytes the buffer's segment files may hold together (`buffer.max_bytes`);
    /// past it, `when_full` decides.
    pub max_bytes: u64,
    /// What a batch that does not fit does: wait, or be dropped (`buffer.when_full`).
    pub when_full: WhenFull,
    /// Longest wait between a batch's write and its fsync (fsyncs are grouped).
    pub fsync_interval: Duration,
    /// The buffer's series, from its sink's metrics handle.
    pub metrics: DiskBufferMetrics,
}

/// Puts a disk buffer in front of a sink: returns the receiver the sink reads from, and
/// the task to run (it ends once `input` has ended and everything was delivered, or fails
/// if the buffer cannot be opened).
///
/// `telemetry` is the sink's: the buffer counts what it takes in (`received`), what it
/// drops (`buffer_full`), and keeps `auditflow_buffer_events` at the events waiting in the
/// channel plus those not yet released from disk.
pub fn start(
    component_id: &str,
    options: DiskBufferOptions,
    input: Receiver,
    telemetry: Arc<dyn Telemetry>,
) -> (
    Receiver,
    impl Future<Output = Result<(), ComponentError>> + Send + 'static,
) {
    // The sink's own channel counts nothing: the events were counted on the way in.
    let (out, sink_input) = channel::channel(SINK_CHANNEL_BATCHES, Arc::new(NoTelemetry));
    let id = component_id.to_owned();
    let run = async move {
        let gauges = options.metrics.clone();
        gauges.max_bytes.set(options.max_bytes as i64);
        let dir = options.dir.clone();
        let queue_options = queue::Options::with_max_bytes(options.max_bytes);
        let opened = blocking(move || queue::open(&dir, queue_options)).await;
        let (queue, writer, reader, recovered) = opened.map_err(|source| ComponentError::Io {
            context: format!(
                "opening the disk buffer at {} (check that the directory is writable, or remove it to start empty)",
                options.dir.display()
            ),
            source,
        })?;
        if recovered.records > 0 {
            tracing::info!(component_id = %id, events = recovered.records, bytes = recovered.bytes,
                dir = %options.dir.display(), "replaying what the disk buffer held before the restart");
        }
        telemetry.buffer_changed(recovered.records as i64);
        let stats = tokio::spawn(update_gauges(queue.clone(), gauges.clone()));
        let intake = Intake {
            id: id.clone(),
            queue: queue.clone(),
            writer: Some(writer),
            options,
            telemetry: Arc::clone(&telemetry),
            unsynced: Finalizers::new(),
            dirty: false,
            last_sync: Instant::now(),
            trouble: None,
        };
        let delivered = tokio::spawn(deliver(
            id.clone(),
            queue.clone(),
            reader,
            out,
            Arc::clone(&telemetry),
            gauges.clone(),
        ));
        let taken = intake.run(input).await;
        let delivered = match delivered.await {
            Ok(result) => result,
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        };
        stats.abort();
        show(&gauges, &queue.stats());
        let ledger = queue.clone();
        if let Err(error) = blocking(move || ledger.sync_ledger()).await {
            tracing::warn!(component_id = %id, error = %error, "cannot fsync the disk buffer ledger; a restart may deliver some events again");
        }
        taken.and(delivered)
    };
    (sink_input, run)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// Why writing is held up; logged once when it starts and once when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trouble {
    Full,
    WriteFailed,
}

struct Intake {
    id: String,
    queue: Queue,
    /// Taken while a blocking call has it.
    writer: Option<Writer>,
    options: DiskBufferOptions,
    telemetry: Arc<dyn Telemetry>,
    /// Acknowledgements of batches appended but not yet fsynced.
    unsynced: Finalizers,
    /// Whether anything was appended since the last fsync (batches from sources that do
    /// not wait for acknowledgements carry no finalizer).
    dirty: bool,
    last_sync: Instant,
    trouble: Option<Trouble>,
}

impl Intake {
    async fn run(mut self, mut input: Receiver) -> Result<(), ComponentError> {
        loop {
            let sync_at = self
                .dirty
                .then(|| self.last_sync + self.options.fsync_interval);
            tokio::select! {
                batch = input.recv() => match batch {
                    Some(batch) => self.take(batch).await,
                    None => break,
                },
                _ = sleep_until(sync_at), if sync_at.is_some() => self.sync().await,
            }
        }
        self.sync().await;
        if let Some(writer) = self.writer.take() {
            writer.close();
        }
        Ok(())
    }

    async fn take(&mut self, mut batch: Batch) {
        let records = batch.len();
        let mut frames = Vec::with_capacity(batch.size_hint() + records * HEADER_BYTES);
        let written_at_ms = now_ms();
        for event in &batch.events {
            frame::push(&mut frames, written_at_ms, |out| event.write_json(out));
        }
        let finalizers = batch.take_finalizers();
        drop(batch);

        while !self.queue.has_room(frames.len() as u64) {
            // What is waiting for an fsync becomes deliverable, so space can free up.
            self.sync().await;
            if self.options.when_full == WhenFull::DropNewest {
                self.telemetry.discarded("buffer_full", records);
                finalizers.resolve(BatchStatus::Delivered);
                return;
            }
            self.set_trouble(Some(Trouble::Full), None);
            self.wait_for_space().await;
        }

        let frames = Arc::new(frames);
        loop {
            let mut writer = self
                .writer
                .take()
                .expect("the writer is back between calls");
            let shared = Arc::clone(&frames);
            let (writer, appended) = blocking(move || {
                let appended = writer.append(&shared, records as u64);
                (writer, appended)
            })
            .await;
            self.writer = Some(writer);
            match appended {
                Ok(()) => break,
                Err(error) => {
                    self.telemetry.errored("io", 1);
                    self.set_trouble(Some(Trouble::WriteFailed), Some(&error));
                    self.sync().await;
                    self.wait_for_space().await;
                }
            }
        }
        self.set_trouble(None, None);
        self.telemetry.buffer_changed(records as i64);
        self.unsynced.merge(finalizers);
        self.dirty = true;
    }

    /// Waits until a release frees space (or a retry interval), then lets go of the
    /// segment being written if everything in it was released, so that it can be deleted.
    async fn wait_for_space(&mut self) {
        tokio::select! {
            _ = self.queue.space_freed() => {}
            _ = tokio::time::sleep(RETRY_INTERVAL) => {}
        }
        let mut writer = self
            .writer
            .take()
            .expect("the writer is back between calls");
        let (writer, rolled) = blocking(move || {
            let rolled = writer.roll_if_released();
            (writer, rolled)
        })
        .await;
        self.writer = Some(writer);
        if let Err(error) = rolled {
            tracing::debug!(component_id = %self.id, error = %error, "cannot start a new disk buffer segment yet");
        }
    }

    /// fsyncs, then acknowledges every batch appended since the last fsync. Retries until
    /// the fsync succeeds: an acknowledgement promises the events are on disk.
    async fn sync(&mut self) {
        if !self.dirty {
            return;
        }
        loop {
            let mut writer = self
                .writer
                .take()
                .expect("the writer is back between calls");
            let (writer, synced) = blocking(move || {
                let synced = writer.sync();
                (writer, synced)
            })
            .await;
            self.writer = Some(writer);
            match synced {
                Ok(()) => break,
                Err(error) => {
                    self.telemetry.errored("io", 1);
                    self.set_trouble(Some(Trouble::WriteFailed), Some(&error));
                    tokio::time::sleep(RETRY_INTERVAL).await;
                }
            }
        }
        self.last_sync = Instant::now();
        self.dirty = false;
        std::mem::take(&mut self.unsynced).resolve(BatchStatus::Delivered);
    }

    /// Logs the start and the end of an episode of trouble, once each.
    fn set_trouble(&mut self, trouble: Option<Trouble>, error: Option<&std::io::Error>) {
        if self.trouble == trouble {
            return;
        }
        let dir = self.options.dir.display();
        match (trouble, error) {
            (Some(Trouble::Full), _) => tracing::warn!(component_id = %self.id, dir = %dir,
                max_bytes = self.options.max_bytes,
                "disk buffer full: holding the sink's input until the destination catches up (raise buffer.max_bytes to hold more)"),
            (Some(Trouble::WriteFailed), Some(error)) => {
                tracing::error!(component_id = %self.id, dir = %dir, error = %error,
                "cannot write to the disk buffer: holding the sink's input and retrying (free space on that file system); what was written is kept")
            }
            (Some(Trouble::WriteFailed), None) => {}
            (None, _) => {
                tracing::info!(component_id = %self.id, dir = %dir, "disk buffer is taking events again")
            }
        }
        self.trouble = trouble;
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

async fn deliver(
    id: String,
    queue: Queue,
    mut reader: Reader,
    out: Sender,
    telemetry: Arc<dyn Telemetry>,
    gauges: DiskBufferMetrics,
) -> Result<(), ComponentError> {
    let mut acks = JoinSet::new();
    let result = loop {
        while acks.try_join_next().is_some() {}
        let (back, read) = blocking(move || {
            let read = reader.read(MAX_BATCH_EVENTS, MAX_BATCH_BYTES);
            (reader, read)
        })
        .await;
        reader = back;
        let (span, records, damaged) = match read {
            Ok(Read::Span {
                id,
                records,
                damaged,
            }) => (id, records, damaged),
            Ok(Read::Empty { finished: true }) => break Ok(()),
            Ok(Read::Empty { finished: false }) => {
                queue.durable_grew().await;
                continue;
            }
            Err(source) => {
                break Err(ComponentError::Io {
                    context: format!("reading the disk buffer at {}", queue.dir().display()),
                    source,
                })
            }
        };
        for damage in &damaged {
            gauges.corrupt.inc();
            tracing::error!(component_id = %id, file = %damage.file.display(), offset = damage.offset,
                "skipped a damaged record in the disk buffer (cut short by a crash, or changed on disk); the records after it are delivered");
        }
        let mut events = Vec::with_capacity(records.len());
        for record in records {
            match Event::from_bytes(record.payload) {
                Ok(event) => events.push(event),
                Err(error) => {
                    gauges.corrupt.inc();
                    tracing::error!(component_id = %id, dir = %queue.dir().display(), error = %error,
                        "skipped a disk buffer record that is not an event");
                }
            }
        }
        let release = {
            let queue = queue.clone();
            let telemetry = Arc::clone(&telemetry);
            let id = id.clone();
            move || match queue.release(span) {
                Ok(released) => telemetry.buffer_changed(-(released.records as i64)),
                Err(error) => tracing::warn!(component_id = %id, error = %error,
                    "cannot write the disk buffer ledger; a restart may deliver some events again"),
            }
        };
        if events.is_empty() {
            blocking(release).await;
            continue;
        }
        let (finalizer, delivered) = BatchNotifier::new();
        if out
            .send(Batch::with_finalizer(events, finalizer))
            .await
            .is_err()
        {
            break Err(ComponentError::Closed);
        }
        acks.spawn(async move {
            // Errored: the sink stopped without a verdict; the span stays for a restart.
            if delivered.await != BatchStatus::Errored {
                blocking(release).await;
            }
        });
    };
    drop(out);
    while acks.join_next().await.is_some() {}
    result
}

async fn update_gauges(queue: Queue, gauges: DiskBufferMetrics) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        show(&gauges, &queue.stats());
    }
}

/// Sets the buffer's gauges from the queue's figures.
fn show(gauges: &DiskBufferMetrics, stats: &Stats) {
    gauges.bytes.set(stats.unreleased_bytes as i64);
    let age_ms = stats
        .oldest_written_at_ms
        .map_or(0, |written| now_ms().saturating_sub(written));
    gauges.oldest_age_seconds.set((age_ms / 1000) as i64);
}
