//! `stdin` source: one JSON event per line from standard input, until end of input.
//!
//! A line that is not a JSON object is counted (`discarded`, reason `malformed`), logged
//! with its line number, and skipped. A line over `max_line_bytes` is skipped the same way
//! (reason `oversized`) without being held in memory.

use async_trait::async_trait;
use auditflow_core::batch::{MAX_BATCH_BYTES, MAX_BATCH_EVENTS};
use auditflow_core::framing::{Frame, LineFramer};
use auditflow_core::{
    Batch, BuildContext, BuildError, ComponentError, Event, Source, SourceConfig, SourceContext,
    Validate,
};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Reads one JSON event per line from standard input; ends at end of input.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinConfig {
    /// Longest line accepted, in bytes; a longer line is skipped and counted as `oversized`.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
}

fn default_max_line_bytes() -> usize {
    4 * 1024 * 1024
}

impl Validate for StdinConfig {
    fn validate(&self) -> Vec<BuildError> {
        if self.max_line_bytes == 0 {
            return vec![BuildError::field("max_line_bytes", "must be at least 1")];
        }
        Vec::new()
    }
}

impl SourceConfig for StdinConfig {
    fn build(&self, _: BuildContext) -> Result<Box<dyn Source>, BuildError> {
        Ok(Box::new(LineSource {
            reader: tokio::io::stdin(),
            max_line_bytes: self.max_line_bytes,
        }))
    }
}

/// Newline-delimited JSON from any reader (standard input in production).
pub struct LineSource<R> {
    pub reader: R,
    pub max_line_bytes: usize,
}

#[async_trait]
impl<R: AsyncRead + Send + Unpin + 'static> Source for LineSource<R> {
    async fn run(mut self: Box<Self>, mut cx: SourceContext) -> Result<(), ComponentError> {
        let mut framer = LineFramer::new(self.max_line_bytes, 0);
        let mut decoder = Decoder::new(&cx);
        loop {
            let read = tokio::select! {
                biased;
                _ = cx.shutdown.wait() => break,
                read = self.reader.read_buf(framer.buffer()) => read,
            };
            let read = read.map_err(|source| ComponentError::Io {
                context: "reading standard input".into(),
                source,
            })?;
            if read == 0 {
                if let Some(frame) = framer.finish() {
                    decoder.frame(frame, &cx);
                }
                decoder.flush(&cx).await?;
                break;
            }
            while let Some(frame) = framer.next_frame() {
                decoder.frame(frame, &cx);
                if decoder.is_full() {
                    decoder.flush(&cx).await?;
                }
            }
            decoder.flush(&cx).await?;
        }
        Ok(())
    }
}

/// Turns frames into batches, counting what it refuses.
struct Decoder {
    events: Vec<Event>,
    bytes: usize,
    /// Lines and bytes read since the last flush, reported once per batch.
    read_lines: usize,
    read_bytes: usize,
    /// Stream offset just past the last frame (the newline of the last line).
    offset: u64,
    line: u64,
    id: String,
}

impl Decoder {
    fn new(cx: &SourceContext) -> Decoder {
        Decoder {
            events: Vec::new(),
            bytes: 0,
            read_lines: 0,
            read_bytes: 0,
            offset: 0,
            line: 0,
            id: cx.id.clone(),
        }
    }

    fn frame(&mut self, frame: Frame, cx: &SourceContext) {
        self.line += 1;
        let end = match &frame {
            Frame::Line { end, .. } | Frame::Oversized { end, .. } => *end,
        };
        self.read_bytes += (end - self.offset) as usize;
        self.offset = end;
        match frame {
            Frame::Line { line, .. } => {
                // A blank line is no event: not counted as one read, nor as discarded.
                if line.iter().all(u8::is_ascii_whitespace) {
                    return;
                }
                self.read_lines += 1;
                let len = line.len();
                match Event::from_bytes(line) {
                    Ok(event) => {
                        self.bytes += len;
                        self.events.push(event);
                    }
                    Err(error) => {
                        cx.telemetry.discarded("malformed", 1);
                        tracing::warn!(
                            component_id = %self.id,
                            line = self.line,
                            %error,
                            "skipping malformed line on standard input"
                        );
                    }
                }
            }
            Frame::Oversized { len, .. } => {
                self.read_lines += 1;
                cx.telemetry.discarded("oversized", 1);
                tracing::warn!(
                    component_id = %self.id,
                    line = self.line,
                    bytes = len,
                    "skipping a line longer than max_line_bytes on standard input"
                );
            }
        }
    }

    fn is_full(&self) -> bool {
        self.events.len() >= MAX_BATCH_EVENTS || self.bytes >= MAX_BATCH_BYTES
    }

    async fn flush(&mut self, cx: &SourceContext) -> Result<(), ComponentError> {
        if self.read_lines > 0 || self.read_bytes > 0 {
            cx.telemetry.received(self.read_lines, self.read_bytes);
            (self.read_lines, self.read_bytes) = (0, 0);
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
    use std::sync::{Arc, Mutex};

    use auditflow_core::channel;
    use auditflow_core::{NoTelemetry, Output, Shutdown, Telemetry};

    /// Counts what the source reports.
    #[derive(Default)]
    struct Counts {
        received: Mutex<(usize, usize)>,
        discarded: Mutex<Vec<(&'static str, usize)>>,
    }

    impl Telemetry for Counts {
        fn received(&self, events: usize, bytes: usize) {
            let mut received = self.received.lock().unwrap();
            received.0 += events;
            received.1 += bytes;
        }
        fn sent(&self, _: usize, _: usize) {}
        fn discarded(&self, reason: &'static str, events: usize) {
            self.discarded.lock().unwrap().push((reason, events));
        }
        fn errored(&self, _: &'static str, _: usize) {}
        fn buffer_changed(&self, _: i64) {}
    }

    /// Runs a source over `reader` to its end (or until `stop` fires); returns the batches.
    async fn run<R: AsyncRead + Send + Unpin + 'static>(
        reader: R,
        max_line_bytes: usize,
        counts: Arc<Counts>,
        stop: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> Vec<Vec<Event>> {
        let (tx, mut rx) = channel::channel(64, Arc::new(NoTelemetry));
        let (trigger, shutdown) = Shutdown::new();
        let cx = SourceContext {
            id: "in".into(),
            out: Output::new(vec![tx], Arc::new(NoTelemetry)),
            shutdown,
            telemetry: counts,
        };
        let source = Box::new(LineSource {
            reader,
            max_line_bytes,
        });
        let task = tokio::spawn(source.run(cx));
        if let Some(stop) = stop {
            let _ = stop.await;
            trigger.trigger();
        }
        let mut batches = Vec::new();
        while let Some(batch) = rx.recv().await {
            batches.push(batch.events.clone());
        }
        task.await.unwrap().expect("the source ends cleanly");
        drop(trigger);
        batches
    }

    fn text(events: &[Event]) -> Vec<String> {
        events.iter().map(|event| format!("{event:?}")).collect()
    }

    #[tokio::test]
    async fn bad_lines_are_counted_and_skipped_without_losing_their_neighbours() {
        let long = format!("{{\"pad\":\"{}\"}}", "x".repeat(200));
        let input = format!("{{\"n\":1}}\n  \nnot json\n{long}\n[1,2]\n{{\"n\":2}}\r\n{{\"n\":3}}");
        let counts = Arc::new(Counts::default());
        let reader = std::io::Cursor::new(input.clone().into_bytes());
        let batches = run(reader, 100, Arc::clone(&counts), None).await;
        let events: Vec<Event> = batches.concat();
        assert_eq!(text(&events), [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#]);
        let mut discarded = counts.discarded.lock().unwrap().clone();
        discarded.sort();
        assert_eq!(
            discarded,
            [("malformed", 1), ("malformed", 1), ("oversized", 1)]
        );
        // Six lines that could be events (not the blank one); every byte read.
        assert_eq!(*counts.received.lock().unwrap(), (6, input.len()));
    }

    #[tokio::test]
    async fn batches_hold_at_most_max_batch_events() {
        let input: String = (0..2500).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        let counts = Arc::new(Counts::default());
        let batches = run(std::io::Cursor::new(input.into_bytes()), 1024, counts, None).await;
        assert!(batches.iter().all(|batch| batch.len() <= MAX_BATCH_EVENTS));
        let events = batches.concat();
        assert_eq!(events.len(), 2500);
        assert_eq!(text(&events[2499..]), [r#"{"n":2499}"#]);
    }

    #[tokio::test]
    async fn shutdown_stops_reading_an_open_input_and_keeps_what_was_read() {
        let (mut writer, reader) = tokio::io::duplex(1024);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let counts = Arc::new(Counts::default());
        let feed = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            writer
                .write_all(b"{\"n\":1}\n{\"n\":2}\n{\"partial\"")
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            stop_tx.send(()).unwrap();
            writer // kept open: the source must stop on shutdown, not on end of input
        });
        let batches = run(reader, 1024, Arc::clone(&counts), Some(stop_rx)).await;
        assert_eq!(text(&batches.concat()), [r#"{"n":1}"#, r#"{"n":2}"#]);
        drop(feed.await.unwrap());
    }
}
