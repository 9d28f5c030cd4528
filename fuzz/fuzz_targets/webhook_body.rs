//! The webhook source's body decoder (`auditflow_webhook::decode_body`): every
//! `Content-Type` and `Content-Encoding` it is sent, gzip inflation under
//! `max_body_bytes`, and the split of EventLists, events, arrays and NDJSON into events.
//!
//! Input: byte 0 picks the `Content-Type`, byte 1 the `Content-Encoding` (and whether the
//! fuzzer's bytes are gzipped here first, so that both valid and broken gzip are tried),
//! byte 2 `max_body_bytes`; the rest is the body. Checks: no panic; a refusal is a 4xx
//! with a message; an accepted body that had problems has at least one event; every event
//! is one line of valid JSON that reads as serde_json reads it.
#![no_main]

use std::io::Write;

use auditflow_fuzz::check_event;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: &[&[u8]] = &[
    b"application/json",
    b"application/json; charset=utf-8",
    b"APPLICATION/X-NDJSON",
    b"application/x-ndjson",
    b"",
    b"text/plain",
    b"application/json\xff",
];

const ENCODINGS: &[&[u8]] = &[b"gzip", b"x-gzip", b"identity", b" GZIP ", b"br", b""];

fuzz_target!(|data: &[u8]| {
    let [content_type, encoding, max, body @ ..] = data else {
        return;
    };
    let mut headers = HeaderMap::new();
    // One more than the list: no Content-Type at all.
    if let Some(value) = CONTENT_TYPES.get(usize::from(*content_type) % (CONTENT_TYPES.len() + 1)) {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(CONTENT_TYPE, value);
        }
    }
    let encoding_index = usize::from(encoding & 0x7f) % (ENCODINGS.len() + 1);
    if let Some(value) = ENCODINGS.get(encoding_index) {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_bytes(value).unwrap());
    }
    let max_body_bytes = match max % 4 {
        0 => 16,
        1 => 256,
        2 => 4096,
        _ => 1 << 20,
    };
    let compressed;
    let sent: &[u8] = if encoding & 0x80 != 0 {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(body).unwrap();
        compressed = gz.finish().unwrap();
        &compressed
    } else {
        body
    };

    match auditflow_webhook::decode_body(&headers, sent, max_body_bytes) {
        Ok(decoded) => {
            assert!(!decoded.events.is_empty() || decoded.malformed.is_empty());
            for event in &decoded.events {
                check_event(event);
            }
            for malformed in &decoded.malformed {
                assert!(!malformed.reason.is_empty(), "{malformed:?}");
            }
        }
        Err((status, message)) => {
            assert!(status.is_client_error(), "{status} {message}");
            assert!(!message.is_empty(), "{status} without a message");
        }
    }
});
