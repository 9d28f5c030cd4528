//! One audit event, kept as the bytes it arrived as plus an index of its top-level fields.
//!
//! Decoding validates the whole object once and records where each top-level value sits.
//! Reading a field parses just that value (and caches it); changing a field replaces just
//! that value. Writing an untouched event copies its original bytes; writing a changed one
//! stitches the untouched spans around the re-serialised fields, so bytes a transform did
//! not touch leave exactly as they came.

use std::fmt;
use std::sync::OnceLock;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A JSON input that is not one JSON object.
#[derive(Debug, thiserror::Error)]
#[error("not a JSON object: {0}")]
pub struct DecodeError(#[from] serde_json::Error);

/// One event: a JSON object whose top-level fields are parsed on demand.
#[derive(Clone)]
pub struct Event {
    raw: Bytes,
    fields: Vec<Field>,
    modified: bool,
}

#[derive(Clone)]
struct Field {
    key: Key,
    value: Slot,
}

#[derive(Clone)]
enum Key {
    /// The key's characters inside `raw` (a key without escapes, the usual case).
    Span(u32, u32),
    Owned(Box<str>),
}

#[derive(Clone)]
enum Slot {
    /// The value's bytes inside `raw`, parsed on first read. `None` in the cache means
    /// the bytes are valid JSON that `serde_json::Value` cannot hold (a number like
    /// `1e400`): the field reads as absent and is still written out unchanged.
    Span {
        start: u32,
        end: u32,
        parsed: OnceLock<Option<Value>>,
    },
    Owned(Value),
}

impl Event {
    /// Decodes one JSON object. The bytes are kept and shared, not copied.
    ///
    /// An object spread over several lines is re-serialised compactly once, so that every
    /// event can be written as one line.
    pub fn from_bytes(raw: Bytes) -> Result<Event, DecodeError> {
        if memchr::memchr2(b'\n', b'\r', &raw).is_some() {
            let value: Value = serde_json::from_slice(&raw)?;
            if !value.is_object() {
                return Err(DecodeError(de::Error::custom(format!(
                    "expected a JSON object, found {}",
                    json_kind(&value)
                ))));
            }
            let compact = serde_json::to_vec(&value)?;
            return Event::from_bytes(Bytes::from(compact));
        }
        assert!(
            raw.len() < u32::MAX as usize,
            "an event over 4 GiB cannot be indexed"
        );
        let fields = {
            let mut de = serde_json::Deserializer::from_slice(&raw);
            let fields = de.deserialize_map(IndexVisitor { base: &raw })?;
            de.end()?;
            fields
        };
        Ok(Event {
            raw,
            fields,
            modified: false,
        })
    }

    /// Builds an event from an already-parsed object (generators, tests).
    pub fn from_map(map: Map<String, Value>) -> Event {
        let fields = map
            .into_iter()
            .map(|(k, v)| Field {
                key: Key::Owned(k.into_boxed_str()),
                value: Slot::Owned(v),
            })
            .collect();
        Event {
            raw: Bytes::new(),
            fields,
            modified: true,
        }
    }

    /// The bytes the event arrived as. Once a field has changed they are no longer the
    /// event: use [`Event::write_json`] for that.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Whether any field was changed, added or removed since decoding.
    pub fn is_modified(&self) -> bool {
        self.modified
    }

    /// The raw JSON bytes of a top-level field that has not been changed.
    pub fn raw_field(&self, key: &str) -> Option<&[u8]> {
        match &self.field(key)?.value {
            Slot::Span { start, end, .. } => Some(&self.raw[*start as usize..*end as usize]),
            Slot::Owned(_) => None,
        }
    }

    /// A top-level field, parsed on first access.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let field = self.field(key)?;
        self.slot_value(&field.value)
    }

    /// A top-level string field.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// Follows a path of object keys from the top level (`["objectRef", "resource"]`).
    pub fn get_path<'a, I>(&self, path: I) -> Option<&Value>
    where
        I: IntoIterator<Item = &'a str>,
    {
        let mut path = path.into_iter();
        let mut value = self.get(path.next()?)?;
        for key in path {
            value = value.as_object()?.get(key)?;
        }
        Some(value)
    }

    /// A top-level field for changing in place; the event is then written with this field
    /// re-serialised.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        let index = self.position(key)?;
        self.modified = true;
        let raw = &self.raw;
        let slot = &mut self.fields[index].value;
        if let Slot::Span { start, end, parsed } = slot {
            let value = match parsed.take() {
                Some(cached) => cached,
                None => serde_json::from_slice(&raw[*start as usize..*end as usize]).ok(),
            };
            *slot = Slot::Owned(value?);
        }
        match slot {
            Slot::Owned(value) => Some(value),
            Slot::Span { .. } => None,
        }
    }

    /// Sets a top-level field, replacing its value in place or appending it.
    pub fn insert(&mut self, key: &str, value: Value) {
        self.modified = true;
        match self.position(key) {
            Some(index) => self.fields[index].value = Slot::Owned(value),
            None => self.fields.push(Field {
                key: Key::Owned(key.into()),
                value: Slot::Owned(value),
            }),
        }
    }

    /// Removes a top-level field, returning its value if it could be parsed.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let index = self.position(key)?;
        self.modified = true;
        let field = self.fields.remove(index);
        match field.value {
            Slot::Owned(value) => Some(value),
            Slot::Span { start, end, parsed } => parsed.into_inner().flatten().or_else(|| {
                serde_json::from_slice(&self.raw[start as usize..end as usize]).ok()
            }),
        }
    }

    /// The `annotations` object for adding to, created when absent (or not an object).
    pub fn annotations_mut(&mut self) -> &mut Map<String, Value> {
        let is_object = matches!(self.get("annotations"), Some(Value::Object(_)));
        if !is_object {
            self.insert("annotations", Value::Object(Map::new()));
        }
        match self.get_mut("annotations") {
            Some(Value::Object(map)) => map,
            _ => unreachable!("annotations was just made an object"),
        }
    }

    /// Iterates over the top-level keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.fields.iter().map(|field| self.key_str(&field.key))
    }

    /// Parses the whole event.
    pub fn to_value(&self) -> Value {
        let mut map = Map::with_capacity(self.fields.len());
        for field in &self.fields {
            if let Some(value) = self.slot_value(&field.value) {
                map.insert(self.key_str(&field.key).to_owned(), value.clone());
            }
        }
        Value::Object(map)
    }

    /// Appends the event as one line of compact JSON, without the newline.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        if !self.modified {
            out.extend_from_slice(&self.raw);
            return;
        }
        out.push(b'{');
        for (i, field) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match &field.key {
                Key::Span(start, end) => {
                    out.push(b'"');
                    out.extend_from_slice(&self.raw[*start as usize..*end as usize]);
                    out.push(b'"');
                }
                Key::Owned(key) => write_value(out, &Value::String(key.to_string())),
            }
            out.push(b':');
            match &field.value {
                Slot::Span { start, end, .. } => {
                    out.extend_from_slice(&self.raw[*start as usize..*end as usize])
                }
                Slot::Owned(value) => write_value(out, value),
            }
        }
        out.push(b'}');
    }

    /// The event as compact JSON bytes, shared with the event when it is unchanged.
    pub fn to_json_bytes(&self) -> Bytes {
        if !self.modified {
            return self.raw.clone();
        }
        let mut out = Vec::with_capacity(self.raw.len() + 128);
        self.write_json(&mut out);
        Bytes::from(out)
    }

    /// About how many bytes the event takes as JSON, without serialising it.
    pub fn size_hint(&self) -> usize {
        if self.raw.is_empty() {
            // Built from a map: nothing cheap to go by, guess a typical audit event.
            return 1024;
        }
        self.raw.len()
    }

    fn position(&self, key: &str) -> Option<usize> {
        // Last wins, as in every JSON parser that keeps one value per key.
        self.fields
            .iter()
            .rposition(|field| self.key_bytes(&field.key) == key.as_bytes())
    }

    fn field(&self, key: &str) -> Option<&Field> {
        self.position(key).map(|index| &self.fields[index])
    }

    fn key_bytes<'a>(&'a self, key: &'a Key) -> &'a [u8] {
        match key {
            Key::Span(start, end) => &self.raw[*start as usize..*end as usize],
            Key::Owned(key) => key.as_bytes(),
        }
    }

    fn key_str<'a>(&'a self, key: &'a Key) -> &'a str {
        // Span keys were validated as UTF-8 by the decoder.
        std::str::from_utf8(self.key_bytes(key)).unwrap_or_default()
    }

    fn slot_value<'a>(&'a self, slot: &'a Slot) -> Option<&'a Value> {
        match slot {
            Slot::Span { start, end, parsed } => parsed
                .get_or_init(|| {
                    serde_json::from_slice(&self.raw[*start as usize..*end as usize]).ok()
                })
                .as_ref(),
            Slot::Owned(value) => Some(value),
        }
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        self.write_json(&mut out);
        f.write_str(&String::from_utf8_lossy(&out))
    }
}

impl PartialEq for Event {
    /// JSON equality of the whole events.
    fn eq(&self, other: &Event) -> bool {
        self.to_value() == other.to_value()
    }
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    // Writing a `Value` into a Vec cannot fail: its keys are strings and its numbers finite.
    serde_json::to_writer(out, value).expect("a serde_json::Value always serialises");
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Walks the top-level object, recording where each key and value sits in `base`.
struct IndexVisitor<'de> {
    base: &'de [u8],
}

impl<'de> Visitor<'de> for IndexVisitor<'de> {
    type Value = Vec<Field>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Field>, A::Error> {
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(20));
        while let Some(key) = map.next_key_seed(KeySeed { base: self.base })? {
            let value: &'de RawValue = map.next_value()?;
            let (start, end) = span_of(self.base, value.get().as_bytes());
            fields.push(Field {
                key,
                value: Slot::Span {
                    start,
                    end,
                    parsed: OnceLock::new(),
                },
            });
        }
        Ok(fields)
    }
}

struct KeySeed<'de> {
    base: &'de [u8],
}

impl<'de> DeserializeSeed<'de> for KeySeed<'de> {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'de> {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Key, E> {
        let (start, end) = span_of(self.base, key.as_bytes());
        Ok(Key::Span(start, end))
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        // The key had escapes and was unescaped into a scratch buffer.
        Ok(Key::Owned(key.into()))
    }
}

/// Where `part`, a sub-slice of `base`, sits inside it.
fn span_of(base: &[u8], part: &[u8]) -> (u32, u32) {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    debug_assert!(start + part.len() <= base.len());
    (start as u32, (start + part.len()) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(text: &str) -> Event {
        Event::from_bytes(Bytes::copy_from_slice(text.as_bytes())).unwrap()
    }

    fn written(event: &Event) -> String {
        let mut out = Vec::new();
        event.write_json(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn untouched_event_is_written_byte_for_byte() {
        let text = r#"{"kind":"Event","requestURI":"/api?a=1\u0026b=2","annotations":{"x":"12µs"},"n":1.50}"#;
        let event = event(text);
        assert_eq!(event.get_str("kind"), Some("Event"));
        assert_eq!(written(&event), text);
    }

    #[test]
    fn changing_one_field_keeps_the_others_bytes() {
        let text = r#"{"verb":"get","requestURI":"/x?a\u0026b","annotations":{"a":"b"},"responseObject":{"big": [1, 2]}}"#;
        let mut event = event(text);
        event
            .annotations_mut()
            .insert("auditflow.io/denial".into(), json!("rbac"));
        assert_eq!(
            written(&event),
            r#"{"verb":"get","requestURI":"/x?a\u0026b","annotations":{"a":"b","auditflow.io/denial":"rbac"},"responseObject":{"big": [1, 2]}}"#
        );
    }

    #[test]
    fn annotations_are_created_when_absent() {
        let mut event = event(r#"{"verb":"get"}"#);
        event.annotations_mut().insert("k".into(), json!("v"));
        assert_eq!(written(&event), r#"{"verb":"get","annotations":{"k":"v"}}"#);
    }

    #[test]
    fn escaped_keys_round_trip() {
        let mut event = event(r#"{"a\"b":1,"c":2}"#);
        assert_eq!(event.get("a\"b"), Some(&json!(1)));
        event.insert("c", json!(3));
        assert_eq!(written(&event), r#"{"a\"b":1,"c":3}"#);
    }

    #[test]
    fn nested_paths_are_followed() {
        let event = event(r#"{"objectRef":{"resource":"secrets","namespace":"kube-system"}}"#);
        assert_eq!(
            event.get_path(["objectRef", "resource"]),
            Some(&json!("secrets"))
        );
        assert_eq!(event.get_path(["objectRef", "name"]), None);
    }

    #[test]
    fn multi_line_objects_are_made_compact() {
        let event = event("{\n  \"verb\": \"get\",\n  \"n\": [1,\n 2]\n}");
        assert_eq!(written(&event), r#"{"verb":"get","n":[1,2]}"#);
    }

    #[test]
    fn anything_but_an_object_is_refused() {
        for text in ["[1,2]", "\"x\"", "{\"a\":", "{} {}", "", "nul"] {
            let error = Event::from_bytes(Bytes::copy_from_slice(text.as_bytes()));
            assert!(error.is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn out_of_range_numbers_pass_through_untouched() {
        let text = r#"{"n":1e400,"verb":"get"}"#;
        let mut event = event(text);
        assert_eq!(event.get("n"), None);
        event.insert("verb", json!("list"));
        assert_eq!(written(&event), r#"{"n":1e400,"verb":"list"}"#);
    }

    #[test]
    fn removing_a_field_drops_it_from_the_output() {
        let mut event = event(r#"{"a":1,"b":{"c":2},"d":3}"#);
        assert_eq!(event.remove("b"), Some(json!({"c": 2})));
        assert_eq!(written(&event), r#"{"a":1,"d":3}"#);
    }
}
