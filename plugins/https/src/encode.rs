//! Request bodies: events written as NDJSON, a JSON array or an `EventList`, then
//! compressed.
//!
//! Events are written with [`Event::write_json`], so an event no transform changed goes
//! out as the exact bytes it arrived as; nothing is parsed again here.

use std::io::Write;

use auditflow_core::Event;
use bytes::Bytes;

use crate::{Compression, Encoding};

/// What comes before the items of an `EventList` (the webhook backend's body).
const EVENT_LIST_HEAD: &[u8] =
    br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":["#;

impl Encoding {
    /// The `Content-Type` of a body in this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Ndjson => "application/x-ndjson",
            Encoding::JsonArray | Encoding::EventList => "application/json",
        }
    }

    /// Appends `events`, encoded, to `out`.
    pub fn write(self, events: &[Event], out: &mut Vec<u8>) {
        match self {
            Encoding::Ndjson => {
                for event in events {
                    event.write_json(out);
                    out.push(b'\n');
                }
            }
            Encoding::JsonArray => write_array(events, b"[", b"]", out),
            Encoding::EventList => write_array(events, EVENT_LIST_HEAD, b"]}", out),
        }
    }
}

fn write_array(events: &[Event], head: &[u8], tail: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(head);
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        event.write_json(out);
    }
    out.extend_from_slice(tail);
}

impl Compression {
    /// The `Content-Encoding` header value, if any.
    pub fn content_encoding(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some("gzip"),
            Compression::Zstd => Some("zstd"),
        }
    }

    /// Compresses `body` (which is returned as is for `none`).
    pub fn compress(self, body: Vec<u8>) -> Bytes {
        #[cfg(test)]
        if self != Compression::None {
            auditflow_testkit::stall::inside_blocking_section(|key| {
                body.windows(key.len())
                    .any(|window| window == key.as_bytes())
            });
        }
        match self {
            Compression::None => Bytes::from(body),
            Compression::Gzip => {
                // Audit JSON compresses about tenfold.
                let mut encoder = flate2::write::GzEncoder::new(
                    Vec::with_capacity(body.len() / 8),
                    flate2::Compression::fast(),
                );
                encoder
                    .write_all(&body)
                    .expect("writing to a Vec cannot fail");
                Bytes::from(encoder.finish().expect("writing to a Vec cannot fail"))
            }
            Compression::Zstd => Bytes::from(
                zstd::bulk::compress(&body, zstd::DEFAULT_COMPRESSION_LEVEL)
                    .expect("zstd compresses any input into a Vec"),
            ),
        }
    }
}

/// Encodes and compresses one request body; returns (body, bytes before compression).
pub(crate) fn body(
    events: &[Event],
    encoding: Encoding,
    compression: Compression,
    size_hint: usize,
) -> (Bytes, usize) {
    let mut out = Vec::with_capacity(size_hint + EVENT_LIST_HEAD.len() + 2);
    encoding.write(events, &mut out);
    let plain = out.len();
    (compression.compress(out), plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use auditflow_testkit::event;

    #[test]
    fn an_event_list_holds_the_events_as_they_came() {
        let events = vec![event(r#"{"a":1, "b":"x"}"#), event(r#"{"c":[1,2]}"#)];
        let mut out = Vec::new();
        Encoding::EventList.write(&events, &mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":[{"a":1, "b":"x"},{"c":[1,2]}]}"#
        );
    }

    #[test]
    fn an_empty_array_is_valid_json() {
        let mut out = Vec::new();
        Encoding::JsonArray.write(&[], &mut out);
        assert_eq!(out, b"[]");
    }

    #[test]
    fn ndjson_ends_every_event_with_a_newline() {
        let events = vec![event(r#"{"a":1}"#), event(r#"{"b":2}"#)];
        let mut out = Vec::new();
        Encoding::Ndjson.write(&events, &mut out);
        assert_eq!(out, b"{\"a\":1}\n{\"b\":2}\n");
    }
}
