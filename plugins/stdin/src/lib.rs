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
            line: 0,
            id: cx.id.clone(),
        }
    }

    fn frame(&mut self, frame: Frame, cx: &SourceContext) {
        self.line += 1;
        match frame {
            Frame::Line { line, .. } => {
                self.read_lines += 1;
                self.read_bytes += line.len() + 1;
                if line.iter().all(u8::is_ascii_whitespace) {
                    return;
                }
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
                self.read_bytes += len as usize + 1;
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
        if self.read_lines > 0 {
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
