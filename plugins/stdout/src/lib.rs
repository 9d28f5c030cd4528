//! `stdout` sink: one compact JSON event per line on standard output.
//!
//! A batch is written with one `write_all` of whole lines and acknowledged only after the
//! write (and flush) succeeded. Events nobody changed are written as the bytes they
//! arrived as.

use async_trait::async_trait;
use auditflow_core::{
    BatchStatus, BuildContext, BuildError, ComponentError, Sink, SinkConfig, SinkContext, Validate,
};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Writes one compact JSON event per line to standard output.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {}

impl Validate for StdoutConfig {}

impl SinkConfig for StdoutConfig {
    fn build(&self, _: BuildContext) -> Result<Box<dyn Sink>, BuildError> {
        Ok(Box::new(LineSink {
            writer: tokio::io::stdout(),
            what: "standard output",
        }))
    }
}

/// Newline-delimited JSON to any writer (standard output in production).
pub struct LineSink<W> {
    pub writer: W,
    /// Names the destination in error messages.
    pub what: &'static str,
}

#[async_trait]
impl<W: AsyncWrite + Send + Unpin + 'static> Sink for LineSink<W> {
    async fn run(mut self: Box<Self>, mut cx: SinkContext) -> Result<(), ComponentError> {
        let mut buffer = Vec::with_capacity(1024 * 1024);
        while let Some(batch) = cx.input.recv().await {
            buffer.clear();
            for event in &batch.events {
                event.write_json(&mut buffer);
                buffer.push(b'\n');
            }
            let written = async {
                self.writer.write_all(&buffer).await?;
                self.writer.flush().await
            };
            if let Err(source) = written.await {
                cx.telemetry.errored("io", 1);
                batch.resolve(BatchStatus::Errored);
                return Err(ComponentError::Io {
                    context: format!("writing to {}", self.what),
                    source,
                });
            }
            cx.telemetry.sent(batch.len(), buffer.len());
            batch.resolve(BatchStatus::Delivered);
        }
        Ok(())
    }
}
