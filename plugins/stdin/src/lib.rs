//! `stdin` source: audit events from standard input, until end of input.
//!
//! By default the input is NDJSON (`framing: lines`, one record per line, the fastest:
//! about 2.7 times the throughput of the stream scan); `framing: json_stream` reads JSON
//! values in any layout: events back to back, or pretty-printed as `jq .` writes them. A
//! record holding an `EventList` or an array is unrolled into its items either way. A record that is not an event is counted (`discarded`, reason `malformed`, or
//! `too_deep` past 10,000 levels), logged with its record number at a bounded rate, and
//! skipped; one over `max_line_bytes` is skipped the same way (reason `oversized`) without
//! being held in memory. A leading UTF-8 byte-order mark and NUL padding are skipped
//! (the latter counted as `nul_padding`); blank and whitespace-only lines are skipped
//! uncounted. See `auditflow_core::records`, which the `file` source shares, so a file
//! and a `.gz` of the same bytes give the same events and counts.
//!
//! Refused records go to `<id>.dead_letter` where something reads it, located as
//! `{"file":"-","line":<record number>,"offset":<first byte>}`.
//!
//! Standard input is read once per process: an instance that stops before end of input
//! (a reload changed its options, or renamed it) leaves the input handle, with any read
//! still in flight, and the bytes it read but did not frame to the instance that starts
//! next, so that a reload loses, repeats and reorders nothing. One instance reads at a
//! time: another waits until it stops (two `stdin` sources in one pipeline read one after
//! the other, so the second finds the input at its end).

use async_trait::async_trait;
use auditflow_core::batch::{MAX_BATCH_BYTES, MAX_BATCH_EVENTS};
use auditflow_core::envelope::{Decoding, Envelope, EnvelopeField};
use auditflow_core::framing::{Frame, Framer, Framing};
use auditflow_core::records::RecordDecoder;
use auditflow_core::{
    Batch, BuildContext, BuildError, CompileOnce, ComponentError, Event, Finalizers, Location,
    Source, SourceConfig, SourceContext, Validate,
};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, Stdin};
use tokio::sync::Mutex;

/// Reads audit events from standard input; ends at end of input.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinConfig {
    /// What `validate` compiled when the pipeline loaded, for `build` to take.
    #[serde(skip)]
    #[schemars(skip)]
    compiled: CompileOnce<Envelope>,
    /// Longest record accepted, in bytes; a longer one is skipped and counted as `oversized`.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// How the input is split into events: `lines` (default: one event per line, NDJSON)
    /// or `json_stream` (JSON values in any layout: events back to back, or pretty-printed
    /// over several lines as `jq .` writes them).
    #[serde(default)]
    pub framing: Framing,
    /// How each record holds events: `audit` (default: an event, an `EventList` or an
    /// array), `azure_diagnostic_records` (one `{"records":[...]}` batch per record, as
    /// an Event Hub capture holds them) or `cloudwatch_logs` (one CloudWatch Logs
    /// subscription payload per record).
    #[serde(default)]
    pub decoding: Decoding,
    /// Envelope fields kept on every event as annotations (`cloudwatch_logs` only):
    /// `logGroup` (`auditflow.io/log-group`), `logStream` (`auditflow.io/log-stream`).
    #[serde(default)]
    pub keep_envelope_fields: Vec<EnvelopeField>,
}

fn default_max_line_bytes() -> usize {
    4 * 1024 * 1024
}

impl StdinConfig {
    /// The options checked, every problem at once, and made into the envelope each record
    /// is read with. The one step behind both `validate` and `build`.
    fn compile(&self) -> Result<Envelope, Vec<BuildError>> {
        let mut errors = Vec::new();
        if self.max_line_bytes == 0 {
            errors.push(BuildError::field("max_line_bytes", "must be at least 1"));
        }
        let envelope = Envelope {
            decoding: self.decoding,
            keep: self.keep_envelope_fields.clone(),
        };
        if let Some(problem) = envelope.problem() {
            errors.push(BuildError::field("keep_envelope_fields", problem));
        }
        if errors.is_empty() {
            Ok(envelope)
        } else {
            Err(errors)
        }
    }
}

impl Validate for StdinConfig {
    fn validate(&self) -> Vec<BuildError> {
        self.compiled.validate(|| self.compile())
    }
}

impl SourceConfig for StdinConfig {
    fn max_record_bytes(&self) -> Option<(u64, &'static str)> {
        Some((u64::try_from(self.max_line_bytes).ok()?, "max_line_bytes"))
    }

    fn build(&self, _: BuildContext) -> Result<Box<dyn Source>, BuildError> {
        let envelope = self.compiled.take(|| self.compile())?;
        Ok(Box::new(StdinSource {
            max_line_bytes: self.max_line_bytes,
            framing: self.framing,
            envelope,
        }))
    }
}

/// Where an instance that stopped before end of input left the stream.
struct Position {
    /// The bytes read but not yet framed, and their stream offset.
    framer: Framer,
    /// Stream offset just past the last record passed on, and that record's number.
    offset: u64,
    record: u64,
}

/// The standard input of the process, and where in it the last instance that read it
/// stopped: what the next instance goes on with. An instance holds the lock while it
/// reads, so that one added under another id waits for the one a reload removed.
static STDIN: Mutex<Option<(Stdin, Position)>> = Mutex::const_new(None);

/// The `stdin` source: a [`LineSource`] over standard input that goes on where the
/// instance it replaces stopped.
struct StdinSource {
    max_line_bytes: usize,
    framing: Framing,
    envelope: Envelope,
}

#[async_trait]
impl Source for StdinSource {
    async fn run(self: Box<Self>, mut cx: SourceContext) -> Result<(), ComponentError> {
        let mut stdin = tokio::select! {
            stdin = STDIN.lock() => stdin,
            _ = cx.shutdown.wait() => return Ok(()),
        };
        let (reader, from) = match stdin.take() {
            Some((reader, position)) => (reader, Some(position)),
            None => (tokio::io::stdin(), None),
        };
        let source = LineSource {
            reader,
            max_line_bytes: self.max_line_bytes,
            framing: self.framing,
            envelope: self.envelope,
        };
        *stdin = source.read(cx, from).await?;
        Ok(())
    }
}

/// JSON events from any reader (standard input in production).
pub struct LineSource<R> {
    pub reader: R,
    pub max_line_bytes: usize,
    pub framing: Framing,
    /// How each record holds events.
    pub envelope: Envelope,
}

#[async_trait]
impl<R: AsyncRead + Send + Unpin + 'static> Source for LineSource<R> {
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), ComponentError> {
        self.read(cx, None).await.map(drop)
    }
}

impl<R: AsyncRead + Send + Unpin> LineSource<R> {
    /// Reads to end of input (`None`), or until told to stop: then returns the reader and
    /// where it stopped, what was read but not framed included. Starts at the beginning
    /// of the stream, or `from` where a stopped instance left it.
    async fn read(
        mut self,
        mut cx: SourceContext,
        from: Option<Position>,
    ) -> Result<Option<(R, Position)>, ComponentError> {
        let mut decoder = Decoder::new(&cx, self.envelope.clone());
        let mut framer = match from {
            Some(Position {
                framer,
                offset,
                record,
            }) => {
                (decoder.offset, decoder.record) = (offset, record);
                framer.resume_with(self.framing, self.max_line_bytes)
            }
            None => Framer::new(self.framing, self.max_line_bytes, 0),
        };
        let mut memory = auditflow_core::memory::pressure();
        let mut stopped = false;
        loop {
            // The held bytes first: a resumed framer may hold whole records.
            while let Some(frame) = framer.next_frame() {
                decoder.frame(frame, &cx);
                if decoder.is_full() {
                    decoder.flush(&cx).await?;
                }
            }
            decoder.flush(&cx).await?;
            let read = tokio::select! {
                biased;
                _ = cx.shutdown.wait() => {
                    stopped = true;
                    break;
                }
                // Over memory_limit_mb, read nothing more until memory falls.
                _ = memory.relieved(), if memory.is_limited() => continue,
                read = self.reader.read_buf(framer.buffer()), if !memory.is_limited() => read,
            };
            let read = read.map_err(|source| ComponentError::Io {
                context: "reading standard input".into(),
                source,
            })?;
            if read == 0 {
                while let Some(frame) = framer.finish() {
                    decoder.frame(frame, &cx);
                }
                // Whitespace after the last record belongs to no frame; it was read.
                decoder.read_bytes += (framer.offset() - decoder.offset) as usize;
                decoder.flush(&cx).await?;
                break;
            }
        }
        decoder.records.finish();
        let position = Position {
            framer,
            offset: decoder.offset,
            record: decoder.record,
        };
        Ok(stopped.then_some((self.reader, position)))
    }
}

/// Turns frames into batches; [`RecordDecoder`] counts what it refuses.
struct Decoder {
    events: Vec<Event>,
    bytes: usize,
    /// Records and bytes read since the last flush, reported once per batch.
    read_records: usize,
    read_bytes: usize,
    /// Stream offset just past the last frame.
    offset: u64,
    record: u64,
    records: RecordDecoder,
}

impl Decoder {
    fn new(cx: &SourceContext, envelope: Envelope) -> Decoder {
        Decoder {
            events: Vec::new(),
            bytes: 0,
            read_records: 0,
            read_bytes: 0,
            offset: 0,
            record: 0,
            records: RecordDecoder::new(cx.id.clone())
                .with_dead_letters(&cx.dead_letter)
                .with_envelope(envelope),
        }
    }

    fn frame(&mut self, frame: Frame, cx: &SourceContext) {
        let end = match &frame {
            Frame::Line { end, .. } | Frame::Oversized { end, .. } | Frame::Padding { end, .. } => {
                *end
            }
        };
        self.read_bytes += (end - self.offset) as usize;
        self.bytes += (end - self.offset) as usize;
        let start = std::mem::replace(&mut self.offset, end);
        if !matches!(frame, Frame::Padding { .. }) {
            self.record += 1;
        }
        let record = self.record;
        let read = self
            .records
            .decode(frame, cx.telemetry.as_ref(), &mut self.events, || {
                Location::File {
                    file: "-".into(),
                    line: record,
                    offset: start,
                }
            });
        self.read_records += read.records;
    }

    fn is_full(&self) -> bool {
        self.events.len() >= MAX_BATCH_EVENTS || self.bytes >= MAX_BATCH_BYTES
    }

    async fn flush(&mut self, cx: &SourceContext) -> Result<(), ComponentError> {
        if self.read_records > 0 || self.read_bytes > 0 {
            cx.telemetry.received(self.read_records, self.read_bytes);
            (self.read_records, self.read_bytes) = (0, 0);
        }
        let letters = self.records.take_dead_letters();
        if !letters.is_empty() {
            cx.dead_letter.send(letters, Finalizers::new()).await?;
        }
        if self.events.is_empty() {
            return Ok(());
        }
        self.bytes = 0;
        let events = std::mem::take(&mut self.events);
        cx.out.send(Batch::new(events)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use auditflow_core::channel;
    use auditflow_core::{NoTelemetry, Output, Shutdown};
    use auditflow_testkit::RecordingTelemetry;

    /// Only `validate` ran the checks: `build`, called on its own, made a source with
    /// `max_line_bytes: 0`, which no record fits.
    #[test]
    fn validate_reports_every_error_not_only_the_first() {
        let config = StdinConfig {
            max_line_bytes: 0,
            framing: Framing::default(),
            decoding: Decoding::Audit,
            keep_envelope_fields: vec![EnvelopeField::LogGroup],
            compiled: CompileOnce::default(),
        };
        let fields: Vec<_> = config
            .validate()
            .into_iter()
            .filter_map(|e| e.field)
            .collect();
        assert_eq!(fields, ["max_line_bytes", "keep_envelope_fields"]);
        let built = config.build(BuildContext::unobserved("in", std::env::temp_dir()));
        let error = built.err().expect("the options are refused");
        assert_eq!(error.field.as_deref(), Some("max_line_bytes"));
    }

    /// Runs a source over `reader` to its end (or, with `stop_after`, until that many
    /// events came out, then shuts it down); returns the batches.
    async fn run<R: AsyncRead + Send + Unpin + 'static>(
        reader: R,
        max_line_bytes: usize,
        framing: Framing,
        counts: Arc<RecordingTelemetry>,
        stop_after: Option<usize>,
    ) -> Vec<Vec<Event>> {
        let (tx, mut rx) = channel::channel(64, Arc::new(NoTelemetry));
        let (trigger, shutdown) = Shutdown::new();
        let cx = SourceContext {
            id: "in".into(),
            out: Output::new(vec![tx], Arc::new(NoTelemetry)),
            shutdown,
            telemetry: counts,
            dead_letter: auditflow_core::DeadLetterOutput::disconnected("in"),
        };
        let source = Box::new(LineSource {
            reader,
            max_line_bytes,
            framing,
            envelope: Default::default(),
        });
        let task = tokio::spawn(source.run(cx));
        let mut batches = Vec::new();
        let mut events = 0;
        while let Some(batch) = rx.recv().await {
            events += batch.events.len();
            batches.push(batch.events.clone());
            if stop_after.is_some_and(|stop| events >= stop) {
                trigger.trigger();
            }
        }
        task.await.unwrap().expect("the source ends cleanly");
        drop(trigger);
        batches
    }

    fn text(events: &[Event]) -> Vec<String> {
        events.iter().map(|event| format!("{event:?}")).collect()
    }

    #[tokio::test]
    async fn bad_records_are_counted_and_skipped_without_losing_their_neighbours() {
        let long = format!("{{\"pad\":\"{}\"}}", "x".repeat(200));
        let input = format!(
            "\u{feff}{{\"n\":1}}\n  \nnot json\n{long}\n[1,2]\n{{\"n\":2}}\r\n\0\0\0{{\"n\":3}}"
        );
        for framing in [Framing::JsonStream, Framing::Lines] {
            let counts = Arc::new(RecordingTelemetry::default());
            let reader = std::io::Cursor::new(input.clone().into_bytes());
            let batches = run(reader, 100, framing, Arc::clone(&counts), None).await;
            let events: Vec<Event> = batches.concat();
            assert_eq!(text(&events), [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#]);
            let mut discarded = counts.recorded().discarded;
            discarded.sort();
            assert_eq!(
                discarded,
                [
                    ("malformed", 1),
                    ("malformed", 1),
                    ("malformed", 1),
                    ("nul_padding", 1),
                    ("oversized", 1)
                ],
                "{framing:?}"
            );
            // Seven records that could be events (not the blank line, not the padding:
            // the array holds two); every byte read.
            assert_eq!(counts.recorded().received, (7, input.len()));
        }
    }

    #[tokio::test]
    async fn pretty_printed_events_one_after_another_are_read_as_they_are() {
        let input = "{\n  \"n\": 1.50,\n  \"u\": \"a\\u0026b\"\n}\n{\n  \"n\": 2\n}{\"n\":3}";
        let counts = Arc::new(RecordingTelemetry::default());
        let reader = std::io::Cursor::new(input.as_bytes().to_vec());
        let batches = run(reader, 1024, Framing::JsonStream, counts, None).await;
        assert_eq!(
            text(&batches.concat()),
            [r#"{"n":1.50,"u":"a\u0026b"}"#, r#"{"n":2}"#, r#"{"n":3}"#]
        );
    }

    #[tokio::test]
    async fn batches_hold_at_most_max_batch_events() {
        let input: String = (0..2500).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        let counts = Arc::new(RecordingTelemetry::default());
        let batches = run(
            std::io::Cursor::new(input.into_bytes()),
            1024,
            Framing::Lines,
            counts,
            None,
        )
        .await;
        assert!(batches.iter().all(|batch| batch.len() <= MAX_BATCH_EVENTS));
        let events = batches.concat();
        assert_eq!(events.len(), 2500);
        assert_eq!(text(&events[2499..]), [r#"{"n":2499}"#]);
    }

    #[tokio::test]
    async fn shutdown_stops_reading_an_open_input_and_keeps_what_was_read() {
        let (mut writer, reader) = tokio::io::duplex(1024);
        use tokio::io::AsyncWriteExt;
        writer
            .write_all(b"{\"n\":1}\n{\"n\":2}\n{\"partial\"")
            .await
            .unwrap();
        // The writer stays open: the source must stop on shutdown (triggered once both
        // events came out), not on end of input.
        let counts = Arc::new(RecordingTelemetry::default());
        let batches = run(reader, 1024, Framing::JsonStream, counts, Some(2)).await;
        assert_eq!(text(&batches.concat()), [r#"{"n":1}"#, r#"{"n":2}"#]);
        drop(writer);
    }

    /// A reload replaces the source while input keeps coming: the instance built with the
    /// new options goes on with the reader and the partial record the old one held, and
    /// the new `max_line_bytes` applies from there.
    #[tokio::test]
    async fn a_stopped_source_hands_its_input_and_partial_record_to_the_next() {
        use tokio::io::AsyncWriteExt;
        let counts = Arc::new(RecordingTelemetry::default());
        let context = || {
            let (tx, rx) = channel::channel(64, Arc::new(NoTelemetry));
            let (trigger, shutdown) = Shutdown::new();
            let cx = SourceContext {
                id: "in".into(),
                out: Output::new(vec![tx], Arc::new(NoTelemetry)),
                shutdown,
                telemetry: Arc::clone(&counts) as Arc<dyn auditflow_core::Telemetry>,
                dead_letter: auditflow_core::DeadLetterOutput::disconnected("in"),
            };
            (cx, rx, trigger)
        };
        let (mut writer, reader) = tokio::io::duplex(1024);
        let before = b"{\"long\":\"xxxxxxxxxxxxxxxxxxxx\"}\n{\"n\":2}\n{\"par";
        writer.write_all(before).await.unwrap();
        let (cx, mut rx, trigger) = context();
        let first = LineSource {
            reader,
            max_line_bytes: 1024,
            framing: Framing::Lines,
            envelope: Default::default(),
        };
        let first = tokio::spawn(first.read(cx, None));
        let mut events = Vec::new();
        while events.len() < 2 {
            events.extend(rx.recv().await.expect("two events").events.clone());
        }
        trigger.trigger();
        let (reader, position) = first
            .await
            .unwrap()
            .unwrap()
            .expect("stopped before end of input: the input is left");
        assert_eq!(
            position.framer.pending_bytes(),
            5,
            "the partial record is held"
        );

        let (cx, mut rx, _trigger) = context();
        let second = LineSource {
            reader,
            max_line_bytes: 16,
            framing: Framing::Lines,
            envelope: Default::default(),
        };
        let second = tokio::spawn(second.read(cx, Some(position)));
        let after = b"tial\":3}\n{\"long\":\"xxxxxxxxxxxxxxxxxxxx\"}\n{\"n\":5}\n";
        writer.write_all(after).await.unwrap();
        drop(writer);
        while let Some(batch) = rx.recv().await {
            events.extend(batch.events.clone());
        }
        assert!(second.await.unwrap().unwrap().is_none(), "read to the end");
        assert_eq!(
            text(&events),
            [
                r#"{"long":"xxxxxxxxxxxxxxxxxxxx"}"#,
                r#"{"n":2}"#,
                r#"{"partial":3}"#,
                r#"{"n":5}"#
            ],
            "nothing lost or repeated, in order; the long record refused only after"
        );
        assert_eq!(counts.discarded_events("oversized"), 1);
        assert_eq!(
            counts.recorded().received,
            (5, before.len() + after.len()),
            "every byte counted once"
        );
    }

    /// (The flag is process-wide: nextest runs each test in a process of its own.)
    #[tokio::test]
    async fn over_the_memory_limit_nothing_is_read_until_memory_falls() {
        auditflow_core::memory::set_limited(true);
        let reader = std::io::Cursor::new(b"{\"n\":1}\n{\"n\":2}\n".to_vec());
        let counts = Arc::new(RecordingTelemetry::default());
        let running = tokio::spawn(run(reader, 1024, Framing::JsonStream, counts, None));
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !running.is_finished(),
            "the source read while over the limit"
        );
        auditflow_core::memory::set_limited(false);
        let batches = tokio::time::timeout(std::time::Duration::from_secs(10), running)
            .await
            .expect("the source reads once memory falls")
            .unwrap();
        assert_eq!(text(&batches.concat()), [r#"{"n":1}"#, r#"{"n":2}"#]);
    }
}
