//! Dead letters: what a source refused, or what a sink's destination refused for good,
//! kept as one JSON event each on the component's second output, `<id>.dead_letter`.
//!
//! A transform or sink reads it by naming `<id>.dead_letter` in its `inputs` (Vector's
//! `<id>.dropped`). Where nothing reads it, the component behaves as without dead letters:
//! each refusal is counted in `auditflow_component_discarded_events_total{reason}` and
//! warned about at a bounded rate. Where something reads it, the refusal is still counted
//! there, and each dead letter sent is counted in
//! `auditflow_component_dead_letter_events_total`.
//!
//! # Shape
//!
//! ```json
//! {"kind":"DeadLetter","component_id":"apiserver","reason":"malformed",
//!  "error":"expected `,` or `}` at byte 41",
//!  "location":{"file":"/var/log/kubernetes/audit/audit.log","line":17,"offset":20480},
//!  "received_at":"2026-12-01T03:16:24.123456789Z",
//!  "raw":"{\"auditID\":"}
//! ```
//!
//! - `location` is `{"file","line","offset"}` for the `file` and `stdin` sources (`file` is
//!   `-` for standard input; `line` counts records from 1, `offset` is the record's first
//!   byte), `{"peer","item"}` for the `webhook` source (`item` is the position in the
//!   request's `items`, from 0, absent when the whole body was refused), and
//!   `{"topic","partition","offset"}` for the `kafka` source. Sinks give
//!   `{"destination"}` and add `status` (the HTTP status, where there is one) and `reply`
//!   (the destination's answer, cut at 4 KiB).
//! - `raw` is the refused bytes as text. Bytes that are not UTF-8 are given as base64 with
//!   `"raw_encoding":"base64"`. Past `max_dead_letter_bytes` (default 1 MiB) the bytes are
//!   cut (on a character boundary) and `"truncated":true` is added; an `oversized` record,
//!   which the source skipped without holding it, has an empty `raw` and `"truncated":true`.
//! - `received_at` is when auditflow refused it, RFC 3339 in UTC.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;

use crate::batch::Batch;
use crate::channel::{Closed, Output};
use crate::component::Telemetry;
use crate::event::Event;
use crate::finalize::{BatchStatus, Finalizers};

/// The name of the second output: `<id>.dead_letter`.
pub const OUTPUT: &str = "dead_letter";

/// `max_dead_letter_bytes` when not set: 1 MiB of `raw` per dead letter.
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;

/// How much of a destination's reply a dead letter keeps.
pub const MAX_REPLY_BYTES: usize = 4096;

/// The output id that reads component `id`'s dead letters (`apiserver.dead_letter`).
pub fn output_id(id: &str) -> String {
    format!("{id}.{OUTPUT}")
}

/// Splits `apiserver.dead_letter` into `apiserver`; `None` for a plain component id.
pub fn component_of(output_id: &str) -> Option<&str> {
    output_id
        .strip_suffix(OUTPUT)
        .and_then(|rest| rest.strip_suffix('.'))
}

/// Where a refused record was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Location {
    /// A record of a file (or of standard input, `-`).
    File {
        /// The file's path as the source opened it, or `-` for standard input.
        file: String,
        /// The record's number, from 1.
        line: u64,
        /// The byte offset of the record's first byte.
        offset: u64,
    },
    /// A webhook request.
    Peer {
        /// The client's address as `ip:port`.
        peer: String,
        /// The position in the request's `items`, from 0; absent for the whole body.
        #[serde(skip_serializing_if = "Option::is_none")]
        item: Option<usize>,
    },
    /// A Kafka message.
    Kafka {
        /// The topic the message was read from.
        topic: String,
        /// The partition within the topic.
        partition: i32,
        /// The message's offset within the partition.
        offset: i64,
    },
    /// What a sink sent (its URI, topic or path).
    Destination {
        /// The destination's URI, topic or path, as the sink's options name it.
        destination: String,
    },
}

impl fmt::Display for Location {
    /// The short form used in log lines: `audit.log:17`, `10.0.0.3:51234 item 4`,
    /// `audit/2@1017`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File { file, line, .. } if file == "-" => {
                write!(f, "standard input, record {line}")
            }
            Location::File { file, line, .. } => write!(f, "{file}:{line}"),
            Location::Peer { peer, item: None } => f.write_str(peer),
            Location::Peer {
                peer,
                item: Some(item),
            } => write!(f, "{peer} item {item}"),
            Location::Kafka {
                topic,
                partition,
                offset,
            } => write!(f, "{topic}/{partition}@{offset}"),
            Location::Destination { destination } => f.write_str(destination),
        }
    }
}

/// One refusal, before it becomes a dead-letter event.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// The bounded reason, as counted in `discarded_events_total` (`malformed`, `rejected`).
    pub reason: &'static str,
    /// What was wrong, in words.
    pub error: &'a str,
    /// Where the refused record was, written as the dead letter's `location` object.
    pub location: &'a Location,
    /// The HTTP status the destination answered (sinks).
    pub status: Option<u16>,
    /// The destination's reply (sinks); cut at [`MAX_REPLY_BYTES`].
    pub reply: Option<&'a str>,
    /// The refused bytes, as they arrived.
    pub raw: &'a [u8],
    /// Set when the refused record was longer than what the source held of it.
    pub truncated: bool,
}

#[derive(Serialize)]
struct Shape<'a> {
    kind: &'static str,
    component_id: &'a str,
    reason: &'static str,
    error: &'a str,
    location: &'a Location,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply: Option<&'a str>,
    received_at: String,
    raw: std::borrow::Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_encoding: Option<&'static str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

impl DeadLetter<'_> {
    /// The dead-letter event of `component_id`, with at most `max_bytes` of `raw`.
    pub fn to_event(&self, component_id: &str, max_bytes: usize) -> Event {
        let (raw, cut) = match self.raw.len() > max_bytes {
            true => (&self.raw[..max_bytes], true),
            false => (self.raw, false),
        };
        let (raw, raw_encoding, cut) = match std::str::from_utf8(raw) {
            Ok(text) => (text.into(), None, cut),
            // Cut inside a character: drop its first bytes rather than switch to base64.
            Err(error) if cut && error.error_len().is_none() => {
                let text =
                    std::str::from_utf8(&raw[..error.valid_up_to()]).expect("valid up to here");
                (text.into(), None, true)
            }
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(raw).into(),
                Some("base64"),
                cut,
            ),
        };
        let reply = self.reply.map(|reply| {
            let mut end = reply.len().min(MAX_REPLY_BYTES);
            while !reply.is_char_boundary(end) {
                end -= 1;
            }
            &reply[..end]
        });
        let shape = Shape {
            kind: "DeadLetter",
            component_id,
            reason: self.reason,
            error: self.error,
            location: self.location,
            status: self.status,
            reply,
            received_at: jiff::Timestamp::now().to_string(),
            raw,
            raw_encoding,
            truncated: cut || self.truncated,
        };
        let json = serde_json::to_vec(&shape).expect("a dead letter always serialises");
        Event::from_bytes(Bytes::from(json)).expect("a dead letter is an object")
    }
}

/// A component's `<id>.dead_letter` output: connected when something reads it.
///
/// Cloned freely (a source's tasks share it).
#[derive(Clone)]
pub struct DeadLetterOutput {
    component_id: Arc<str>,
    output: Option<Output>,
    max_bytes: usize,
    telemetry: Option<Arc<dyn Telemetry>>,
}

impl fmt::Debug for DeadLetterOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterOutput")
            .field("component_id", &self.component_id)
            .field("connected", &self.output.is_some())
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl DeadLetterOutput {
    /// An output nothing reads: [`DeadLetterOutput::letter`] gives `None`.
    pub fn disconnected(component_id: &str) -> DeadLetterOutput {
        DeadLetterOutput {
            component_id: component_id.into(),
            output: None,
            max_bytes: DEFAULT_MAX_BYTES,
            telemetry: None,
        }
    }

    /// An output sending to `output` (built with the topology's targets), counting on the
    /// component's `telemetry`, keeping at most `max_bytes` of each `raw`.
    pub fn new(
        component_id: &str,
        output: Output,
        max_bytes: usize,
        telemetry: Arc<dyn Telemetry>,
    ) -> DeadLetterOutput {
        DeadLetterOutput {
            component_id: component_id.into(),
            output: Some(output),
            max_bytes,
            telemetry: Some(telemetry),
        }
    }

    /// Whether something reads `<id>.dead_letter`.
    pub fn is_connected(&self) -> bool {
        self.output.is_some()
    }

    /// The dead-letter event for `letter`, or `None` when nothing reads the output (then
    /// nothing is built).
    pub fn letter(&self, letter: &DeadLetter<'_>) -> Option<Event> {
        self.output.as_ref()?;
        Some(letter.to_event(&self.component_id, self.max_bytes))
    }

    /// Sends dead letters downstream, carrying `finalizers` (the refused data's own, so
    /// that its source is acknowledged once the dead letters are delivered). Waits for room
    /// like any output. Disconnected, or with no letters, the finalizers are resolved as
    /// `Delivered`: the refusal was counted and logged, which is all there is to do.
    pub async fn send(&self, letters: Vec<Event>, finalizers: Finalizers) -> Result<(), Closed> {
        let Some(output) = self.output.as_ref().filter(|_| !letters.is_empty()) else {
            finalizers.resolve(BatchStatus::Delivered);
            return Ok(());
        };
        if let Some(telemetry) = &self.telemetry {
            telemetry.dead_lettered(letters.len());
        }
        output
            .send(Batch::with_finalizers(letters, finalizers))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter<'a>(raw: &'a [u8], location: &'a Location) -> DeadLetter<'a> {
        DeadLetter {
            reason: "malformed",
            error: "expected a value",
            location,
            status: None,
            reply: None,
            raw,
            truncated: false,
        }
    }

    fn json(event: &Event) -> serde_json::Value {
        serde_json::from_slice(event.raw()).unwrap()
    }

    #[test]
    fn a_dead_letter_keeps_the_raw_text_and_where_it_was() {
        let location = Location::File {
            file: "/var/log/audit.log".into(),
            line: 17,
            offset: 2048,
        };
        let event = letter(b"{\"auditID\":\n", &location).to_event("tail", DEFAULT_MAX_BYTES);
        let value = json(&event);
        assert_eq!(value["kind"], "DeadLetter");
        assert_eq!(value["component_id"], "tail");
        assert_eq!(value["reason"], "malformed");
        assert_eq!(value["raw"], "{\"auditID\":\n");
        assert_eq!(
            value["location"],
            serde_json::json!({"file": "/var/log/audit.log", "line": 17, "offset": 2048})
        );
        assert!(value.get("truncated").is_none());
        assert!(value.get("raw_encoding").is_none());
        let at: jiff::Timestamp = value["received_at"].as_str().unwrap().parse().unwrap();
        assert!(jiff::Timestamp::now().duration_since(at).as_secs() < 60);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_base64() {
        let location = Location::Peer {
            peer: "10.0.0.3:5123".into(),
            item: None,
        };
        let value = json(&letter(b"\xff\xfe{}", &location).to_event("hook", 100));
        assert_eq!(value["raw_encoding"], "base64");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value["raw"].as_str().unwrap())
            .unwrap();
        assert_eq!(decoded, b"\xff\xfe{}");
        assert_eq!(
            value["location"],
            serde_json::json!({"peer": "10.0.0.3:5123"})
        );
    }

    #[test]
    fn long_raw_text_is_cut_on_a_character_boundary() {
        let location = Location::Destination {
            destination: "https://collector/ingest".into(),
        };
        // 'é' is two bytes: a cut at 5 falls inside the third one.
        let value = json(&letter("éééé".as_bytes(), &location).to_event("out", 5));
        assert_eq!(value["raw"], "éé");
        assert_eq!(value["truncated"], true);
        assert!(value.get("raw_encoding").is_none());
    }

    #[test]
    fn output_ids_name_their_component() {
        assert_eq!(output_id("apiserver"), "apiserver.dead_letter");
        assert_eq!(component_of("apiserver.dead_letter"), Some("apiserver"));
        assert_eq!(component_of("apiserver"), None);
        assert_eq!(component_of("dead_letter"), None);
    }

    #[tokio::test]
    async fn a_disconnected_output_builds_nothing_and_acknowledges() {
        let output = DeadLetterOutput::disconnected("tail");
        let location = Location::Destination {
            destination: "x".into(),
        };
        assert!(output.letter(&letter(b"x", &location)).is_none());
        let (finalizer, receiver) = crate::BatchNotifier::new();
        output
            .send(Vec::new(), Finalizers::from(finalizer))
            .await
            .unwrap();
        assert_eq!(receiver.await, BatchStatus::Delivered);
    }
}
