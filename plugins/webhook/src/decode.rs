//! A request body into events, each a slice of the body.
//!
//! Accepted shapes: an `EventList` (`audit.k8s.io/v1` or `v1beta1`, items without
//! `kind`/`apiVersion`, as kube-apiserver sends it), a single `Event`, a JSON array of
//! events, or newline-delimited events (`application/x-ndjson`, or several objects in an
//! `application/json` body). The body is parsed once into borrowed items; an item that is
//! not an object is reported with its location and skipped, the others go on. A body with
//! nothing but such items is refused with the first problem.

use std::borrow::Cow;

use auditflow_core::Event;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

/// How the client said the body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json` (or no `Content-Type`): one JSON document, or several objects.
    Json,
    /// `application/x-ndjson`: one event per line.
    Ndjson,
}

/// The events of a body, and the items that were not events.
#[derive(Debug, Default)]
pub struct Decoded {
    pub events: Vec<Event>,
    pub malformed: Vec<Malformed>,
}

/// An item that is not an event: where it sits, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// `items[17]`, `[3]` or `line 5`.
    pub location: String,
    pub reason: String,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.reason)
    }
}

/// A body that holds no event at all: the request can never succeed (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The top-level fields that decide the shape; every other field is skipped unparsed.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "apiVersion")]
    api_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    items: Option<Vec<&'a RawValue>>,
}

const API_VERSIONS: [&str; 2] = ["audit.k8s.io/v1", "audit.k8s.io/v1beta1"];

/// Splits `body` into events sharing its bytes.
pub fn decode(body: &Bytes, format: Format) -> Result<Decoded, Refused> {
    let Some(first) = body.iter().position(|b| !b.is_ascii_whitespace()) else {
        return Err(Refused(
            "the body is empty: expected an EventList, an Event, a JSON array of events or \
             NDJSON"
                .into(),
        ));
    };
    let decoded = match (format, body[first]) {
        (Format::Ndjson, _) => lines(body),
        (Format::Json, b'[') => array(body)?,
        (Format::Json, b'{') => object(body)?,
        (Format::Json, other) => {
            return Err(Refused(format!(
                "not JSON: the body starts with {:?}, expected an EventList, an Event or an \
                 array of events",
                char::from(other)
            )))
        }
    };
    if decoded.events.is_empty() {
        if let Some(first) = decoded.malformed.first() {
            return Err(Refused(match decoded.malformed.len() {
                1 => first.to_string(),
                n => format!("{first} (and {} more items that are not events)", n - 1),
            }));
        }
    }
    Ok(decoded)
}

fn object(body: &Bytes) -> Result<Decoded, Refused> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let envelope: Envelope = match serde_path_to_error::deserialize(&mut de) {
        Ok(envelope) => envelope,
        Err(error) => return Err(Refused(json_error(error.path(), error.inner()))),
    };
    if de.end().is_err() {
        // More than one document: objects one after another, as NDJSON.
        return Ok(lines(body));
    }
    if let Some(version) = &envelope.api_version {
        if !API_VERSIONS.contains(&version.as_ref()) {
            return Err(Refused(format!(
                "apiVersion: expected {} or {}, found {version:?}",
                API_VERSIONS[0], API_VERSIONS[1]
            )));
        }
    }
    match (envelope.kind.as_deref(), envelope.items) {
        (Some("EventList") | None, Some(items)) => Ok(items_of(body, &items, "items")),
        (Some("EventList"), None) => Ok(Decoded::default()),
        (Some("Event") | None, None) => {
            let mut decoded = Decoded::default();
            push_event(&mut decoded, body.slice_ref(trim(body)), || {
                "the body".into()
            });
            Ok(decoded)
        }
        (Some(kind), _) => Err(Refused(format!(
            "kind: expected \"EventList\" or \"Event\", found {kind:?}"
        ))),
    }
}

fn array(body: &Bytes) -> Result<Decoded, Refused> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let items: Vec<&RawValue> = serde_path_to_error::deserialize(&mut de)
        .map_err(|error| Refused(json_error(error.path(), error.inner())))?;
    de.end()
        .map_err(|error| Refused(format!("not JSON after the array: {error}")))?;
    Ok(items_of(body, &items, ""))
}

fn items_of(body: &Bytes, items: &[&RawValue], field: &str) -> Decoded {
    let mut decoded = Decoded {
        events: Vec::with_capacity(items.len()),
        malformed: Vec::new(),
    };
    for (index, item) in items.iter().enumerate() {
        let raw = item.get().as_bytes();
        let location = || format!("{field}[{index}]");
        if raw.first() != Some(&b'{') {
            decoded.malformed.push(Malformed {
                location: location(),
                reason: format!("expected an object, found {}", json_kind(raw)),
            });
            continue;
        }
        push_event(&mut decoded, body.slice_ref(raw), location);
    }
    decoded
}

fn lines(body: &Bytes) -> Decoded {
    let mut decoded = Decoded::default();
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len()));
    for (index, end) in ends.enumerate() {
        let number = index + 1;
        let line = &body[start..end];
        start = end + 1;
        let line = trim(line);
        if line.is_empty() {
            continue;
        }
        push_event(&mut decoded, body.slice_ref(line), || {
            format!("line {number}")
        });
    }
    decoded
}

fn push_event(decoded: &mut Decoded, raw: Bytes, location: impl FnOnce() -> String) {
    match Event::from_bytes(raw) {
        Ok(event) => decoded.events.push(event),
        Err(error) => decoded.malformed.push(Malformed {
            location: location(),
            reason: error.to_string(),
        }),
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace());
    match (start, end) {
        (Some(start), Some(end)) => &bytes[start..=end],
        _ => &bytes[..0],
    }
}

fn json_kind(raw: &[u8]) -> &'static str {
    match raw.first() {
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// `items[3].kind: invalid type ... at line 1 column 80`, or just the parser's message
/// when the error is not inside a field.
fn json_error(path: &serde_path_to_error::Path, error: &serde_json::Error) -> String {
    let what = if error.is_syntax() || error.is_eof() {
        "not JSON: "
    } else {
        ""
    };
    let path = path.to_string();
    if path == "." || path.is_empty() {
        format!("{what}{error}")
    } else {
        format!("{path}: {what}{error}")
    }
}
