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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use auditflow_testkit::compliance::check_sink;
    use auditflow_testkit::events::{audit_log_events, audit_log_lines};
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn writes_each_event_as_the_line_it_arrived_as_and_acknowledges() {
        let (writer, mut reader) = tokio::io::duplex(64 * 1024);
        let collect = tokio::spawn(async move {
            let mut out = String::new();
            reader.read_to_string(&mut out).await.unwrap();
            out
        });
        let sink = Box::new(LineSink {
            writer,
            what: "a test pipe",
        });
        let batches = audit_log_events().chunks(100).map(<[_]>::to_vec).collect();
        let statuses = check_sink(sink, batches, Duration::from_secs(10)).await;
        assert_eq!(statuses, vec![BatchStatus::Delivered; 3]);
        let expected: String = audit_log_lines().map(|line| format!("{line}\n")).collect();
        assert_eq!(collect.await.unwrap(), expected);
    }

    #[tokio::test]
    async fn a_failed_write_is_an_error_and_never_acknowledged_delivered() {
        let (writer, reader) = tokio::io::duplex(1024);
        drop(reader);
        let sink = Box::new(LineSink {
            writer,
            what: "a closed pipe",
        });
        let (tx, rx) =
            auditflow_core::channel::channel(1, std::sync::Arc::new(auditflow_core::NoTelemetry));
        let (finalizer, receiver) = auditflow_core::BatchNotifier::new();
        let batch = auditflow_core::Batch::with_finalizer(audit_log_events(), finalizer);
        tx.send(batch).await.unwrap();
        drop(tx);
        let cx = SinkContext {
            id: "out".into(),
            input: rx,
            telemetry: std::sync::Arc::new(auditflow_core::NoTelemetry),
            dead_letter: auditflow_core::DeadLetterOutput::disconnected("out"),
        };
        let error = sink
            .run(cx)
            .await
            .expect_err("writing to a closed pipe fails");
        assert!(
            error.to_string().starts_with("writing to a closed pipe: "),
            "{error}"
        );
        assert_eq!(receiver.await, BatchStatus::Errored);
    }
}
