//! A body of JSON events (an HTTP request, a Kafka message) into events, each a slice of
//! the body.
//!
//! Accepted shapes ([`Shape`]): an `EventList` (`audit.k8s.io/v1` or `v1beta1`, items
//! without `kind`/`apiVersion`, as kube-apiserver's webhook backend sends it), a single
//! `Event`, a JSON array of events, or newline-delimited events. The body is parsed once
//! into borrowed items, and every event shares the body's bytes (`Bytes::slice_ref`): no
//! event is copied or re-serialised (unless it spans several lines, which [`Event`]
//! compacts). An item that is not an event is reported with its location (`items[17]`,
//! `[3]`, `line 5`) and skipped, the others go on; a body that is not the expected shape at
//! all is [`Refused`]. Whether a body of nothing but bad items can ever succeed is the
//! caller's call ([`Decoded::require_events`]): the `webhook` source answers 400, the
//! `kafka` source counts every item.
//!
//! Parse errors name the field they happened in (`items[3]: not JSON: ... column 80`), the
//! way `serde_path_to_error` would: the envelope is walked by hand, so the path is tracked
//! without wrapping the parser and only built when something is wrong.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::event::Event;
use crate::framing::Frame;

/// What a body is expected to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One JSON document, whichever it is: an `EventList`, an `Event`, an array of events,
    /// or several objects one after another (read as NDJSON).
    Json,
    /// An `EventList` only (`{"items":[...]}`).
    EventList,
    /// One event only: the whole body is one object.
    Event,
    /// One event per line; blank lines are ignored.
    Ndjson,
}

impl Shape {
    /// What the body should have held, for the message when it holds nothing.
    fn expected(self) -> &'static str {
        match self {
            Shape::Json | Shape::Ndjson => {
                "an EventList, an Event, a JSON array of events or NDJSON"
            }
            Shape::EventList => "an EventList",
            Shape::Event => "an Event",
        }
    }
}

/// The events of a body, and the items that were not events.
#[derive(Debug, Default)]
pub struct Decoded {
    /// The items that are audit events, in the body's order, sharing the body's bytes.
    pub events: Vec<Event>,
    /// The items that are not events, in the body's order; each is counted and may become a
    /// dead letter.
    pub malformed: Vec<Malformed>,
}

impl Decoded {
    /// Refuses a body in which not one item was an event, naming the first problem: for a
    /// receiver whose client should hear that the request can never succeed. An empty
    /// `EventList` is not refused: it holds no problem either.
    pub fn require_events(self) -> Result<Decoded, Refused> {
        // Records that are not audit events (another log category) are no problem of
        // the request's: they are counted, and the request succeeds.
        let problems = self.malformed.iter().filter(|m| m.kind != "not_audit");
        match problems.clone().next() {
            Some(first) if self.events.is_empty() => Err(Refused(match problems.count() {
                1 => first.to_string(),
                n => format!("{first} (and {} more items that are not events)", n - 1),
            })),
            _ => Ok(self),
        }
    }
}

/// An item that is not an event: where it sits, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// `items[17]`, `[3]`, `line 5` or `the body`.
    pub location: String,
    /// Why the item is not an event, in words (`expected an object, found a number`).
    pub reason: String,
    /// The bounded reason it is counted under: `malformed`, `too_deep` or `not_audit`
    /// ([`crate::DecodeError::reason`]).
    pub kind: &'static str,
    /// The item's bytes, sharing the body's (for its dead letter).
    pub raw: Bytes,
    /// Its position among the body's top-level items, from 0; `None` for a line or value
    /// of a stream.
    pub item: Option<usize>,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.reason)
    }
}

/// A body that is not the expected shape: nothing in it can be read as events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

const API_VERSIONS: [&str; 2] = ["audit.k8s.io/v1", "audit.k8s.io/v1beta1"];

/// Whether a decoded object is an `EventList` rather than an event: it has `items`, and a
/// `kind` of `EventList` or none. Audit events never have a top-level `items`.
pub fn is_event_list(event: &Event) -> bool {
    event.raw_field("items").is_some()
        && matches!(event.raw_field("kind"), None | Some(b"\"EventList\""))
}

/// Splits `body` into events sharing its bytes.
pub fn decode(body: &Bytes, shape: Shape) -> Result<Decoded, Refused> {
    let mut decoded = Decoded::default();
    decode_into(body, shape, &mut decoded)?;
    Ok(decoded)
}

/// [`decode`], appending to `decoded` (a batch being filled from many small bodies, say,
/// without a vector per body). A refused body appends nothing.
pub fn decode_into(body: &Bytes, shape: Shape, decoded: &mut Decoded) -> Result<(), Refused> {
    // A UTF-8 byte-order mark (some Windows tools write one) is no part of the JSON.
    let body = &match body.strip_prefix(b"\xef\xbb\xbf") {
        Some(rest) => body.slice_ref(rest),
        None => body.clone(),
    };
    let Some(first) = body.iter().position(|b| !b.is_ascii_whitespace()) else {
        return Err(Refused(format!(
            "the body is empty: expected {}",
            shape.expected()
        )));
    };
    match (shape, body[first]) {
        (Shape::Ndjson, _) => lines(body, decoded),
        (Shape::Event, _) => match Event::from_bytes(body.slice_ref(trim(body))) {
            Ok(event) => decoded.events.push(event),
            Err(error) => return Err(Refused(error.to_string())),
        },
        (Shape::Json | Shape::EventList, b'{') => object(body, shape, decoded)?,
        (Shape::Json, b'[') => array(body, decoded)?,
        (Shape::EventList, b'[') => {
            return Err(Refused(
                "expected an EventList, found an array (is the decoding meant to be json?)".into(),
            ))
        }
        (_, other) => {
            return Err(Refused(format!(
                "not JSON: the body starts with {:?}, expected {}",
                char::from(other),
                match shape {
                    Shape::EventList => "an EventList",
                    _ => "an EventList, an Event or an array of events",
                }
            )))
        }
    }
    Ok(())
}

fn object(body: &Bytes, shape: Shape, decoded: &mut Decoded) -> Result<(), Refused> {
    let path = Path::default();
    let mut de = serde_json::Deserializer::from_slice(body);
    // Items may nest as deep as events do (10,000 levels); the scanner checks each one.
    de.disable_recursion_limit();
    let envelope = match de::Deserializer::deserialize_map(&mut de, EnvelopeVisitor { path: &path })
    {
        Ok(envelope) => envelope,
        Err(error) => return Err(Refused(json_error(path.take(), &error))),
    };
    if let Err(error) = de.end() {
        return match shape {
            // More than one document: values one after another (NDJSON, or pretty
            // objects as `jq .` writes them).
            Shape::Json => {
                stream(body, decoded);
                Ok(())
            }
            _ => Err(Refused(format!("not JSON after the EventList: {error}"))),
        };
    }
    if let Some(version) = &envelope.api_version {
        if !API_VERSIONS.contains(&version.as_str()) {
            return Err(Refused(format!(
                "apiVersion: expected {} or {}, found {version:?}",
                API_VERSIONS[0], API_VERSIONS[1]
            )));
        }
    }
    match (shape, envelope.kind.as_deref(), envelope.items) {
        (_, Some("EventList") | None, Some(items)) => items_of(body, &items, "items", decoded),
        (_, Some("EventList"), None) => {}
        (Shape::Json, Some("Event") | None, None) => {
            let raw = body.slice_ref(trim(body));
            match Event::from_bytes(raw.clone()) {
                Ok(event) => decoded.events.push(event),
                Err(error) => decoded.malformed.push(Malformed {
                    location: "the body".into(),
                    reason: error.to_string(),
                    kind: error.reason(),
                    raw,
                    item: None,
                }),
            }
        }
        (Shape::Json, Some(kind), _) => {
            return Err(Refused(format!(
                "kind: expected \"EventList\" or \"Event\", found {kind:?}"
            )))
        }
        (_, None, None) => {
            return Err(Refused(
                "expected an EventList, found an object without `items`".into(),
            ))
        }
        (_, Some(kind), _) => {
            return Err(Refused(format!(
                "kind: expected \"EventList\", found {kind:?}"
            )))
        }
    }
    Ok(())
}

fn array(body: &Bytes, decoded: &mut Decoded) -> Result<(), Refused> {
    let path = Path::default();
    let mut de = serde_json::Deserializer::from_slice(body);
    de.disable_recursion_limit();
    let items = de::Deserializer::deserialize_seq(
        &mut de,
        ItemsVisitor {
            field: "",
            path: &path,
        },
    )
    .map_err(|error| Refused(json_error(path.take(), &error)))?;
    de.end()
        .map_err(|error| Refused(format!("not JSON after the array: {error}")))?;
    items_of(body, &items, "", decoded);
    Ok(())
}

fn items_of(body: &Bytes, items: &[&RawValue], field: &str, decoded: &mut Decoded) {
    decoded.events.reserve(items.len());
    for (index, item) in items.iter().enumerate() {
        let raw = item.get().as_bytes();
        let location = || format!("{field}[{index}]");
        if raw.first() != Some(&b'{') {
            decoded.malformed.push(Malformed {
                location: location(),
                reason: format!("expected an object, found {}", json_kind(raw)),
                kind: "malformed",
                raw: body.slice_ref(raw),
                item: Some(index),
            });
            continue;
        }
        match Event::from_bytes(body.slice_ref(raw)) {
            Ok(event) => decoded.events.push(event),
            Err(error) => decoded.malformed.push(Malformed {
                location: location(),
                reason: error.to_string(),
                kind: error.reason(),
                raw: body.slice_ref(raw),
                item: Some(index),
            }),
        }
    }
}

fn lines(body: &Bytes, decoded: &mut Decoded) {
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
        push_record(decoded, body.slice_ref(line), || format!("line {number}"));
    }
}

/// Values one after another, in any layout. Each is located by the line it starts on.
fn stream(body: &Bytes, decoded: &mut Decoded) {
    let (mut counted_to, mut line) = (0, 1);
    let mut line_at = |start: usize| {
        line += memchr::memchr_iter(b'\n', &body[counted_to..start]).count();
        counted_to = start;
        line
    };
    for frame in crate::framing::json_values(body) {
        match frame {
            Frame::Line { line: record, .. } => {
                let start = record.as_ptr() as usize - body.as_ptr() as usize;
                let number = line_at(start);
                push_record(decoded, record, || format!("line {number}"));
            }
            Frame::Padding { len, end } => decoded.malformed.push(Malformed {
                location: format!("line {}", line_at((end - len) as usize)),
                reason: format!("{len} NUL bytes"),
                kind: "malformed",
                raw: body.slice((end - len) as usize..end as usize),
                item: None,
            }),
            Frame::Oversized { .. } => unreachable!("json_values has no size limit"),
        }
    }
}

/// One record of a stream: an event, or an EventList or array whose items are unrolled
/// (their locations prefixed with the record's).
fn push_record(decoded: &mut Decoded, raw: Bytes, location: impl Fn() -> String) {
    if raw.first() != Some(&b'[') {
        match Event::from_bytes(raw.clone()) {
            Ok(event) if !is_event_list(&event) => {
                decoded.events.push(event);
                return;
            }
            Ok(_) => {}
            Err(error) => {
                decoded.malformed.push(Malformed {
                    location: location(),
                    reason: error.to_string(),
                    kind: error.reason(),
                    raw,
                    item: None,
                });
                return;
            }
        }
    }
    let before = decoded.malformed.len();
    match decode_into(&raw, Shape::Json, decoded) {
        Ok(()) => {
            for malformed in &mut decoded.malformed[before..] {
                malformed.location = format!("{}: {}", location(), malformed.location);
            }
        }
        Err(refused) => decoded.malformed.push(Malformed {
            location: location(),
            reason: refused.0,
            kind: "malformed",
            raw,
            item: None,
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

/// `items[3]: not JSON: ... at line 1 column 80`, or just the parser's message when the
/// error is not inside a field.
fn json_error(path: Option<String>, error: &serde_json::Error) -> String {
    let what = if error.is_syntax() || error.is_eof() {
        "not JSON: "
    } else {
        ""
    };
    match path {
        Some(path) => format!("{path}: {what}{error}"),
        None => format!("{what}{error}"),
    }
}

/// Where the parser stopped: the innermost field named, kept by the first (innermost)
/// level that sees the error; none when the error is not inside a field.
#[derive(Default)]
struct Path(Cell<Option<String>>);

impl Path {
    fn mark<E>(&self, error: E, at: impl FnOnce() -> String) -> E {
        let path = self.0.take().unwrap_or_else(at);
        self.0.set(Some(path));
        error
    }

    fn take(&self) -> Option<String> {
        self.0.take()
    }
}

/// The top-level fields that decide the shape; every other field is skipped unparsed.
struct Envelope<'de> {
    kind: Option<String>,
    api_version: Option<String>,
    items: Option<Vec<&'de RawValue>>,
}

struct EnvelopeVisitor<'p> {
    path: &'p Path,
}

impl<'de> Visitor<'de> for EnvelopeVisitor<'_> {
    type Value = Envelope<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("struct Envelope")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope<'de>, A::Error> {
        let path = self.path;
        let (mut kind, mut api_version, mut items) = (None, None, None);
        // A key that could not be read has no name yet.
        while let Some(key) = map
            .next_key::<Key<'de>>()
            .map_err(|error| path.mark(error, || "?".into()))?
        {
            match key.0.as_ref() {
                "kind" => field(&mut map, &mut kind, "kind", PhantomData, path)?,
                "apiVersion" => field(&mut map, &mut api_version, "apiVersion", PhantomData, path)?,
                "items" => field(&mut map, &mut items, "items", OptionalItems { path }, path)?,
                name => {
                    map.next_value_seed(Named {
                        seed: PhantomData::<IgnoredAny>,
                        at: || name.to_owned(),
                        path,
                    })?;
                }
            }
        }
        Ok(Envelope {
            kind: kind.flatten(),
            api_version: api_version.flatten(),
            items: items.flatten(),
        })
    }
}

/// Reads the value of a field the envelope keeps; a field given twice is an error.
fn field<'de, A, S>(
    map: &mut A,
    slot: &mut Option<S::Value>,
    name: &'static str,
    seed: S,
    path: &Path,
) -> Result<(), A::Error>
where
    A: MapAccess<'de>,
    S: DeserializeSeed<'de>,
{
    if slot.is_some() {
        return Err(de::Error::duplicate_field(name));
    }
    let at = || name.to_owned();
    *slot = Some(map.next_value_seed(Named { seed, at, path })?);
    Ok(())
}

/// A key, borrowed from the body unless it holds escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("field identifier")
            }
            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(key.into()))
            }
            fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(key.to_owned().into()))
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// A value whose errors are marked with where it sits (named only when one happens).
struct Named<'p, S, F> {
    seed: S,
    at: F,
    path: &'p Path,
}

impl<'de, S, F> DeserializeSeed<'de> for Named<'_, S, F>
where
    S: DeserializeSeed<'de>,
    F: FnOnce() -> String,
{
    type Value = S::Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.seed
            .deserialize(deserializer)
            .map_err(|error| self.path.mark(error, self.at))
    }
}

/// `items`, which may be `null`.
struct OptionalItems<'p> {
    path: &'p Path,
}

impl<'de> DeserializeSeed<'de> for OptionalItems<'_> {
    type Value = Option<Vec<&'de RawValue>>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for OptionalItems<'_> {
    type Value = Option<Vec<&'de RawValue>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("option")
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer
            .deserialize_seq(ItemsVisitor {
                field: "items",
                path: self.path,
            })
            .map(Some)
    }
}

/// The raw items of an array; an error inside one is marked `field[index]`.
struct ItemsVisitor<'p> {
    field: &'static str,
    path: &'p Path,
}

impl<'de> Visitor<'de> for ItemsVisitor<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        let field = self.field;
        loop {
            let index = items.len();
            let item = seq.next_element_seed(Named {
                seed: PhantomData::<&'de RawValue>,
                at: || format!("{field}[{index}]"),
                path: self.path,
            })?;
            let Some(item) = item else { break };
            items.push(item);
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use auditflow_testkit::events::WEBHOOK_EVENT_LIST;

    use super::*;

    fn audit_ids(body: &str, shape: Shape) -> (Vec<String>, Vec<Malformed>) {
        let decoded = decode(&Bytes::from(body.to_owned()), shape).unwrap();
        let ids = decoded
            .events
            .iter()
            .map(|event| event.get_str("auditID").unwrap_or("-").to_owned())
            .collect();
        (ids, decoded.malformed)
    }

    /// What a receiver answers: the refusal, including a body of nothing but bad items.
    fn refused(body: &str, shape: Shape) -> String {
        decode(&Bytes::from(body.to_owned()), shape)
            .and_then(Decoded::require_events)
            .unwrap_err()
            .0
    }

    #[test]
    fn an_event_list_from_kube_apiserver_becomes_its_items_byte_for_byte() {
        let body = Bytes::from_static(WEBHOOK_EVENT_LIST.as_bytes());
        let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let expected = list["items"].as_array().unwrap();
        assert!(expected.len() > 10);
        for shape in [Shape::Json, Shape::EventList] {
            let decoded = decode(&body, shape).unwrap();
            assert_eq!(decoded.events.len(), expected.len());
            assert!(decoded.malformed.is_empty());
            let mut end = body.as_ptr();
            for (event, item) in decoded.events.iter().zip(expected) {
                // A whole JSON value equal to the item, and a slice of the body after the
                // previous one: the item's own bytes, not a copy.
                let raw = event.raw().as_ptr_range();
                assert!(body.as_ptr_range().contains(&raw.start) && raw.start >= end);
                end = raw.end;
                let value: serde_json::Value = serde_json::from_slice(event.raw()).unwrap();
                assert_eq!(&value, item);
                assert_eq!(event.raw().first(), Some(&b'{'));
                assert_eq!(event.raw().last(), Some(&b'}'));
            }
        }
    }

    #[test]
    fn v1beta1_lists_single_events_arrays_and_ndjson_are_accepted() {
        let a = r#"{"auditID":"a","verb":"get"}"#;
        let b = r#"{"auditID":"b","verb":"list"}"#;
        let cases = [
            (
                format!(
                    r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1beta1","items":[{a},{b}]}}"#
                ),
                Shape::Json,
                2,
            ),
            (
                r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"a","verb":"get"}"#
                    .to_owned(),
                Shape::Json,
                1,
            ),
            (format!(" [{a}, {b}] \n"), Shape::Json, 2),
            (format!("{a}\n\n{b}\r\n"), Shape::Ndjson, 2),
            (format!("{a}\n{b}\n"), Shape::Json, 2),
            (format!(r#"{{"items":[{a},{b}]}}"#), Shape::EventList, 2),
            (format!("{a}\n"), Shape::Event, 1),
        ];
        for (body, shape, count) in cases {
            let decoded = decode(&Bytes::from(body.clone()), shape).unwrap();
            assert_eq!(decoded.events.len(), count, "{body}");
            assert!(decoded.malformed.is_empty(), "{body}");
        }
    }

    #[test]
    fn ndjson_lines_holding_a_list_or_an_array_are_unrolled() {
        let body = "{\"auditID\":\"a\"}\n\
            {\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"items\":[{\"auditID\":\"b\"},3]}\n\
            [{\"auditID\":\"c\"},{\"auditID\":\"d\"}]\n";
        for shape in [Shape::Ndjson, Shape::Json] {
            let (ids, malformed) = audit_ids(body, shape);
            assert_eq!(ids, ["a", "b", "c", "d"], "{shape:?}");
            assert_eq!(malformed.len(), 1);
            assert!(
                malformed[0].location.ends_with(": items[1]"),
                "{malformed:?}"
            );
        }
    }

    #[test]
    fn pretty_printed_events_one_after_another_are_a_stream() {
        let body = "{\n  \"auditID\": \"a\",\n  \"n\": 1.50\n}\n{\n  \"auditID\": \"b\"\n}{\"auditID\":\"c\"}";
        let decoded = decode(&Bytes::from(body), Shape::Json).unwrap();
        let written: Vec<String> = decoded
            .events
            .iter()
            .map(|e| String::from_utf8(e.to_json_bytes().to_vec()).unwrap())
            .collect();
        assert_eq!(
            written,
            [
                r#"{"auditID":"a","n":1.50}"#,
                r#"{"auditID":"b"}"#,
                r#"{"auditID":"c"}"#
            ]
        );
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        for shape in [Shape::Json, Shape::Event, Shape::Ndjson, Shape::EventList] {
            let body = if shape == Shape::EventList {
                "\u{feff}{\"items\":[{\"auditID\":\"a\"}]}"
            } else {
                "\u{feff}{\"auditID\":\"a\"}"
            };
            assert_eq!(audit_ids(body, shape).0, ["a"], "{shape:?}");
        }
    }

    #[test]
    fn items_nested_10_000_levels_deep_are_events_and_deeper_are_too_deep() {
        let item = |levels: usize| {
            format!(
                r#"{{"auditID":"x","o":{}{}}}"#,
                "[".repeat(levels - 1),
                "]".repeat(levels - 1)
            )
        };
        let body = format!(r#"{{"items":[{},{}]}}"#, item(10_000), item(10_001));
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || {
                let decoded = decode(&Bytes::from(body), Shape::EventList).unwrap();
                assert_eq!(decoded.events.len(), 1);
                assert_eq!(decoded.malformed.len(), 1);
                assert_eq!(decoded.malformed[0].kind, "too_deep");
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn items_that_are_not_objects_are_skipped_with_their_index() {
        let body = r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"auditID":"a"},17,{"auditID":"b"},"x"]}"#;
        for shape in [Shape::Json, Shape::EventList] {
            let (ids, malformed) = audit_ids(body, shape);
            assert_eq!(ids, ["a", "b"]);
            assert_eq!(
                malformed,
                vec![
                    Malformed {
                        location: "items[1]".into(),
                        reason: "expected an object, found a number".into(),
                        kind: "malformed",
                        raw: Bytes::from_static(b"17"),
                        item: Some(1),
                    },
                    Malformed {
                        location: "items[3]".into(),
                        reason: "expected an object, found a string".into(),
                        kind: "malformed",
                        raw: Bytes::from_static(b"\"x\""),
                        item: Some(3),
                    },
                ]
            );
        }
        let (ids, malformed) = audit_ids(r#"[{"auditID":"a"},null]"#, Shape::Json);
        assert_eq!(ids, ["a"]);
        assert_eq!(
            malformed[0].to_string(),
            "[1]: expected an object, found null"
        );
    }

    #[test]
    fn bodies_without_any_event_are_refused_saying_where() {
        assert_eq!(
            refused(r#"{"kind":"EventList","items":[1]}"#, Shape::Json),
            "items[0]: expected an object, found a number"
        );
        assert_eq!(
            refused(r#"{"kind":"EventList","items":[1,null,2]}"#, Shape::Json),
            "items[0]: expected an object, found a number (and 2 more items that are not events)"
        );
        assert_eq!(
            refused(r#"{"kind":"Pod","apiVersion":"v1"}"#, Shape::Json),
            "apiVersion: expected audit.k8s.io/v1 or audit.k8s.io/v1beta1, found \"v1\""
        );
        assert_eq!(
            refused(r#"{"kind":"Pod"}"#, Shape::Json),
            "kind: expected \"EventList\" or \"Event\", found \"Pod\""
        );
        assert!(refused(r#"{"kind":"EventList","items":{}}"#, Shape::Json).starts_with("items: "));
        let syntax = refused(r#"{"kind":"EventList","items":[{"a":}]}"#, Shape::Json);
        assert!(
            syntax.starts_with("items[0]: not JSON") && syntax.contains("column"),
            "{syntax}"
        );
        assert!(refused("hello", Shape::Json).starts_with("not JSON"));
        assert!(refused("  \n", Shape::Json).starts_with("the body is empty"));
        assert!(refused("nope\n", Shape::Ndjson).starts_with("line 1: "));
        // One good line is enough for the others to go on.
        let (ids, malformed) = audit_ids("{\"auditID\":\"a\"}\nnope\n", Shape::Ndjson);
        assert_eq!(ids, ["a"]);
        assert_eq!(malformed[0].location, "line 2");
    }

    #[test]
    fn an_event_list_only_shape_refuses_everything_else() {
        assert_eq!(
            refused(r#"{"kind":"Event","auditID":"a"}"#, Shape::EventList),
            "kind: expected \"EventList\", found \"Event\""
        );
        assert_eq!(
            refused(r#"{"auditID":"a"}"#, Shape::EventList),
            "expected an EventList, found an object without `items`"
        );
        assert!(refused(r#"[{"auditID":"a"}]"#, Shape::EventList).contains("found an array"));
        assert!(refused("nope", Shape::EventList).starts_with("not JSON"));
        assert!(refused(r#"{"items":[]} {"items":[]}"#, Shape::EventList)
            .starts_with("not JSON after the EventList"));
        // An empty list is not a problem: it just holds no event.
        let decoded = decode(&Bytes::from_static(br#"{"items":[]}"#), Shape::EventList).unwrap();
        assert!(decoded.events.is_empty() && decoded.malformed.is_empty());
    }

    #[test]
    fn an_event_only_shape_is_one_object_per_body() {
        let (ids, malformed) = audit_ids(r#"{"auditID":"a","verb":"get"}"#, Shape::Event);
        assert_eq!(ids, ["a"]);
        assert!(malformed.is_empty());
        // No envelope is looked at: the body is the event, whatever its `kind`.
        assert_eq!(
            audit_ids(r#"{"kind":"Pod","auditID":"p"}"#, Shape::Event).0,
            ["p"]
        );
        assert!(refused("[1,2]", Shape::Event).contains("object"));
        assert!(refused("{\"a\":1}\n{\"b\":2}", Shape::Event).contains("after the object"));
        assert_eq!(
            refused(" \n", Shape::Event),
            "the body is empty: expected an Event"
        );
    }

    #[test]
    fn trailing_whitespace_stays_out_of_the_event() {
        let body = Bytes::from_static(b"{\"auditID\":\"a\"}\r\n");
        let decoded = decode(&body, Shape::Event).unwrap();
        assert_eq!(decoded.events[0].raw().as_ref(), b"{\"auditID\":\"a\"}");
        assert!(body
            .as_ptr_range()
            .contains(&decoded.events[0].raw().as_ptr()));
    }

    #[test]
    fn decode_into_appends_and_a_refused_body_appends_nothing() {
        let mut decoded = Decoded::default();
        decode_into(
            &Bytes::from_static(b"{\"auditID\":\"a\"}"),
            Shape::Event,
            &mut decoded,
        )
        .unwrap();
        decode_into(
            &Bytes::from_static(b"{\"auditID\":\"b\"}\n7\n"),
            Shape::Ndjson,
            &mut decoded,
        )
        .unwrap();
        let refused = decode_into(
            &Bytes::from_static(br#"{"kind":"Pod","items":[{"auditID":"c"}]}"#),
            Shape::EventList,
            &mut decoded,
        );
        assert!(refused.is_err());
        let ids: Vec<_> = decoded
            .events
            .iter()
            .map(|e| e.get_str("auditID"))
            .collect();
        assert_eq!(ids, [Some("a"), Some("b")]);
        assert_eq!(decoded.malformed.len(), 1);
        assert_eq!(decoded.malformed[0].location, "line 2");
    }
}
