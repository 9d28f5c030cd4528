//! One audit event, kept as the bytes it arrived as plus an index of its top-level fields.
//!
//! Decoding validates the whole object once and records where each top-level value sits.
//! Reading a field parses just that value (and caches it); changing a field replaces just
//! that value. Writing an untouched event copies its original bytes; writing a changed one
//! stitches the untouched spans around the re-serialised fields, so bytes a transform did
//! not touch leave exactly as they came.
//!
//! The validation and the index come from `scan`, a scanner that never builds a
//! value: decoding is paid on every event and must stay far cheaper than the I/O around it.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::{Map, Value};
use smallvec::SmallVec;

use crate::scan::{self, SyntaxError};

/// A JSON input that is not one JSON object.
#[derive(Debug, thiserror::Error)]
#[error("not a JSON object: {0}")]
pub struct DecodeError(Reason);

#[derive(Debug, thiserror::Error)]
enum Reason {
    /// From the scanner: "expected `:` after the key, found `{` at column 57".
    #[error("{0}")]
    Syntax(SyntaxError),
    /// From serde_json, which reads objects spread over several lines.
    #[error("{0}")]
    Json(serde_json::Error),
    /// A key whose escapes do not make a string (a lone surrogate such as `\ud800`).
    #[error("invalid key: {message} at column {column}")]
    Key { message: String, column: usize },
}

impl DecodeError {
    /// The bounded reason this input is counted under in
    /// `auditflow_component_discarded_events_total`: `too_deep` for objects and arrays
    /// nested deeper than kube-apiserver accepts (10,000 levels), `malformed` otherwise.
    pub fn reason(&self) -> &'static str {
        match &self.0 {
            Reason::Syntax(error) if error.is_too_deep() => "too_deep",
            _ => "malformed",
        }
    }
}

impl From<serde_json::Error> for DecodeError {
    fn from(error: serde_json::Error) -> DecodeError {
        DecodeError(Reason::Json(error))
    }
}

impl From<SyntaxError> for DecodeError {
    fn from(error: SyntaxError) -> DecodeError {
        DecodeError(Reason::Syntax(error))
    }
}

/// One event: a JSON object whose top-level fields are parsed on demand.
///
/// # Layout
/// An event decoded from bytes holds those bytes (shared, not copied) and a small index of
/// its top-level members (byte spans, kept inline: no allocation for an audit event's 14
/// to 18 fields). The well-known audit keys are found through a table, not a scan. Values
/// are parsed only when read as [`Value`]s, into a cache shared by the event's clones; the
/// string and number accessors ([`Event::get_str`], [`Event::str_at`], [`Event::u64_at`])
/// read the bytes and parse nothing. The first change moves the event to a list of fields
/// that point back at the untouched spans, so a changed event still writes the bytes of
/// every field nobody changed.
#[derive(Clone)]
pub struct Event {
    raw: Bytes,
    /// The top-level members as they came, in order (a repeated key appears twice).
    members: SmallVec<[Member; INLINE_MEMBERS]>,
    /// Where each of [`KNOWN_KEYS`] sits in `members`: the last member with that key,
    /// [`ABSENT`] when there is none, or [`UNINDEXED`] when the event has too many members
    /// for a byte (then the members are searched).
    known: [u8; KNOWN_KEYS.len()],
    /// Unescaped keys of the members whose keys hold escapes, by member index (rare:
    /// Kubernetes keys need none). `None` when no key has an escape.
    escaped_keys: EscapedKeys,
    /// Some member's key is not one of [`KNOWN_KEYS`] (or repeats one): only then can a
    /// key outside them be there. Most audit events hold known keys only, so looking for
    /// another (`items`, say) needs no scan.
    other_keys: bool,
    /// Values parsed from the members' bytes, one slot per member, made on the first read
    /// and shared by clones (the bytes they come from are shared and never change).
    parsed: OnceLock<Arc<[OnceLock<Option<Value>>]>>,
    /// The fields once any has changed, in order; `None` while the event is its bytes.
    changed: Option<Vec<Field>>,
}

/// Unescaped keys of the members whose keys hold escapes, by member index.
type EscapedKeys = Option<Box<[(u32, Box<str>)]>>;

/// Members kept inline. kube-apiserver's `Event` has 18 top-level fields.
const INLINE_MEMBERS: usize = 20;

/// The top-level keys of kube-apiserver's `audit.k8s.io/v1` `Event`, looked up without a
/// scan.
const KNOWN_KEYS: [&str; 18] = [
    "kind",
    "apiVersion",
    "level",
    "auditID",
    "stage",
    "requestURI",
    "verb",
    "user",
    "impersonatedUser",
    "sourceIPs",
    "userAgent",
    "objectRef",
    "responseStatus",
    "requestObject",
    "responseObject",
    "requestReceivedTimestamp",
    "stageTimestamp",
    "annotations",
];

const ABSENT: u8 = u8::MAX;
const UNINDEXED: u8 = u8::MAX - 1;

/// The position of `key` in [`KNOWN_KEYS`]: its length and first byte pick the one
/// candidate (two for `response*`), and one comparison confirms it.
fn known_key(key: &[u8]) -> Option<usize> {
    let candidate = match (key.len(), key.first()?) {
        (4, b'k') => 0,
        (4, b'v') => 6,
        (4, b'u') => 7,
        (5, b'l') => 2,
        (5, b's') => 4,
        (7, b'a') => 3,
        (9, b's') => 9,
        (9, b'u') => 10,
        (9, b'o') => 11,
        (10, b'a') => 1,
        (10, b'r') => 5,
        (11, b'a') => 17,
        (13, b'r') => 13,
        (14, b'r') if key[8] == b'S' => 12,
        (14, b'r') => 14,
        (14, b's') => 16,
        (16, b'i') => 8,
        (24, b'r') => 15,
        _ => return None,
    };
    (KNOWN_KEYS[candidate].as_bytes() == key).then_some(candidate)
}

/// One top-level member: where its key (between the quotes, escapes as they came) and its
/// value sit in the event's bytes.
#[derive(Clone, Copy)]
struct Member {
    key_start: u32,
    key_end: u32,
    value_start: u32,
    value_end: u32,
}

impl Member {
    fn key(&self) -> Range<usize> {
        self.key_start as usize..self.key_end as usize
    }

    fn value(&self) -> Range<usize> {
        self.value_start as usize..self.value_end as usize
    }
}

/// A field of a changed event.
#[derive(Clone)]
struct Field {
    key: Key,
    value: Slot,
}

#[derive(Clone)]
enum Key {
    /// The key of `members[i]`, as it came.
    Member(u32),
    Owned(Box<str>),
}

#[derive(Clone)]
enum Slot {
    /// The value of `members[i]`, untouched.
    Member(u32),
    Owned(Value),
    /// New JSON bytes given by a transform that edited part of the value
    /// ([`Event::set_raw_field`]): written verbatim, parsed on first read. `None` in the
    /// cache means valid JSON that `Value` cannot hold (a number like `1e400`).
    Raw {
        bytes: Bytes,
        parsed: OnceLock<Option<Value>>,
    },
}

/// What [`Event::raw_path`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawLookup<'a> {
    /// The final value's JSON bytes.
    Found(&'a [u8]),
    /// Nothing at the path; [`Event::get_path`] finds nothing either.
    Missing,
    /// The bytes cannot answer cheaply: use the parsed value.
    Unavailable,
}

/// Where a top-level field's value is, for reading.
enum Found<'a> {
    /// `members[i]`'s value, untouched.
    Member(usize),
    Owned(&'a Value),
    Raw(&'a Bytes, &'a OnceLock<Option<Value>>),
}

impl Event {
    /// Decodes one JSON object. The bytes are kept and shared, not copied.
    ///
    /// An object spread over several lines (pretty-printed) is made compact once, so that
    /// every event can be written as one line: the whitespace between tokens is removed
    /// and nothing else changes (numbers and escapes keep their spelling). Spaces and tabs
    /// around the object are left out, so an event's bytes always start with `{`.
    ///
    /// # Errors
    /// Anything but one JSON object (RFC 8259), with the position of the problem; see
    /// [`DecodeError::reason`] for the reason it is counted under.
    ///
    /// # Panics
    /// On an input of 4 GiB or more (sources cut lines and bodies far below that).
    pub fn from_bytes(raw: Bytes) -> Result<Event, DecodeError> {
        assert!(
            raw.len() < u32::MAX as usize,
            "an event over 4 GiB cannot be indexed"
        );
        if memchr::memchr2(b'\n', b'\r', &raw).is_some() {
            // Validated where it stands, so that errors point into the input as given.
            index(&raw)?;
            return Event::from_bytes(Bytes::from(minify(&raw)));
        }
        let is_space = |byte: &u8| matches!(byte, b' ' | b'\t');
        if raw.first().is_some_and(is_space) || raw.last().is_some_and(is_space) {
            // Whitespace around the object is not part of the event: an event's bytes
            // always start with `{`, wherever they are written next. Validated where it
            // stands first, so that errors point into the input as given.
            index(&raw)?;
            let start = raw.iter().position(|byte| !is_space(byte)).unwrap_or(0);
            let end = raw
                .iter()
                .rposition(|byte| !is_space(byte))
                .map_or(0, |at| at + 1);
            return Event::from_bytes(raw.slice(start..end));
        }
        let mut event = Event {
            raw,
            members: SmallVec::new(),
            known: [ABSENT; KNOWN_KEYS.len()],
            escaped_keys: None,
            other_keys: false,
            parsed: OnceLock::new(),
            changed: None,
        };
        let Event {
            raw,
            members,
            known,
            escaped_keys,
            ..
        } = &mut event;
        index_into(raw, members, known, escaped_keys)?;
        let known_present = event.known.iter().filter(|at| **at != ABSENT).count();
        event.other_keys = event.members.len() > known_present;
        Ok(event)
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
            members: SmallVec::new(),
            known: [ABSENT; KNOWN_KEYS.len()],
            escaped_keys: None,
            other_keys: false,
            parsed: OnceLock::new(),
            changed: Some(fields),
        }
    }

    /// The bytes the event arrived as. Once a field has changed they are no longer the
    /// event: use [`Event::write_json`] for that.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Whether any field was changed, added or removed since decoding.
    pub fn is_modified(&self) -> bool {
        self.changed.is_some()
    }

    /// The raw JSON bytes of a top-level field that has not been changed (or was given
    /// as bytes through [`Event::set_raw_field`]); `None` when absent or set as a value.
    pub fn raw_field(&self, key: &str) -> Option<&[u8]> {
        match self.find(key)? {
            Found::Member(i) => Some(&self.raw[self.members[i].value()]),
            Found::Raw(bytes, _) => Some(bytes),
            Found::Owned(_) => None,
        }
    }

    /// The raw JSON bytes at a path of object keys (`["responseStatus", "code"]`, or one
    /// top-level key) inside an unchanged top-level field, found without parsing the
    /// field: only the final value is left for the caller to read, however large the
    /// objects around it.
    ///
    /// Agrees with [`Event::get_path`]: duplicate keys read the last one, and a field that
    /// `get` reads as absent (it holds a number out of range) reads as
    /// [`RawLookup::Unavailable`]. Anything the bytes cannot settle cheaply (a changed or
    /// already-parsed field, a key with escapes, an array on the way, a top-level number)
    /// is `Unavailable` too, and the caller takes the parsed route.
    pub fn raw_path<S: AsRef<str>>(&self, path: &[S]) -> RawLookup<'_> {
        let Some((first, rest)) = path.split_first() else {
            return RawLookup::Unavailable;
        };
        let (mut value, parsed) = match self.find(first.as_ref()) {
            None => return RawLookup::Missing,
            Some(Found::Member(i)) => (&self.raw[self.members[i].value()], self.cached(i)),
            Some(Found::Raw(bytes, parsed)) => (&bytes[..], parsed.get()),
            Some(Found::Owned(_)) => return RawLookup::Unavailable,
        };
        if rest.is_empty() {
            // A number may be one `get` reads as absent (out of range): let it decide.
            return match value.first() {
                Some(b'-' | b'0'..=b'9') => RawLookup::Unavailable,
                _ => RawLookup::Found(value),
            };
        }
        if parsed.is_some() {
            // Already parsed: walking the value is cheaper than scanning the bytes.
            return RawLookup::Unavailable;
        }
        for (i, key) in rest.iter().enumerate() {
            match value.first() {
                Some(b'{') => {}
                Some(b'[') => return RawLookup::Unavailable,
                // A scalar has no members; the parsed route finds nothing either, as
                // long as the field parses at all, which the scan of the levels above
                // settled for everything but the top-level value itself.
                _ if i == 0 => return RawLookup::Unavailable,
                _ => return RawLookup::Missing,
            }
            match scan::find_member(value, key.as_ref().as_bytes()) {
                scan::Lookup::Found(range) => value = &value[range],
                scan::Lookup::Missing => return RawLookup::Missing,
                scan::Lookup::Unsure => return RawLookup::Unavailable,
            }
        }
        RawLookup::Found(value)
    }

    /// A top-level field, parsed on first access.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self.find(key)? {
            Found::Member(i) => self.member_value(i),
            Found::Owned(value) => Some(value),
            Found::Raw(bytes, parsed) => parsed.get_or_init(|| parse_value(bytes).ok()).as_ref(),
        }
    }

    /// A top-level string field. A string without escapes is read from the bytes, without
    /// parsing the field.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.str_at(&[key])
    }

    /// The string at a path of object keys (`["objectRef", "resource"]`), as
    /// [`Event::get_path`] finds it; `None` when absent or not a string. A string without
    /// escapes is read from the bytes, without parsing the objects around it.
    pub fn str_at<S: AsRef<str>>(&self, path: &[S]) -> Option<&str> {
        match self.raw_path(path) {
            RawLookup::Found(bytes) => match bytes {
                [b'"', inner @ .., b'"'] if memchr::memchr(b'\\', inner).is_none() => {
                    // The decoder checked the bytes are UTF-8.
                    std::str::from_utf8(inner).ok()
                }
                [b'"', ..] => self.get_path(path.iter().map(AsRef::as_ref))?.as_str(),
                _ => None,
            },
            RawLookup::Missing => None,
            RawLookup::Unavailable => self.get_path(path.iter().map(AsRef::as_ref))?.as_str(),
        }
    }

    /// The non-negative integer at a path of object keys (`["responseStatus", "code"]`),
    /// as [`Event::get_path`] finds it; `None` when absent, not a number, or not an
    /// integer in `u64`'s range. Read from the bytes where the path allows.
    pub fn u64_at<S: AsRef<str>>(&self, path: &[S]) -> Option<u64> {
        match self.raw_path(path) {
            RawLookup::Found(bytes) if bytes.first().is_some_and(u8::is_ascii_digit) => {
                match bytes.iter().all(u8::is_ascii_digit) {
                    // Digits only: an integer (JSON has no leading zeros but `0`).
                    true => std::str::from_utf8(bytes).ok()?.parse().ok(),
                    // `1.0`, `1e3`: what serde_json makes of it.
                    false => self.get_path(path.iter().map(AsRef::as_ref))?.as_u64(),
                }
            }
            RawLookup::Found(_) | RawLookup::Missing => None,
            RawLookup::Unavailable => self.get_path(path.iter().map(AsRef::as_ref))?.as_u64(),
        }
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
        let fields = self
            .changed
            .as_deref()
            .expect("position made the changed form");
        let owned = match &fields[index].value {
            Slot::Owned(_) => None,
            Slot::Member(i) => {
                let i = *i as usize;
                Some(match self.cached(i) {
                    Some(cached) => cached.clone(),
                    None => parse_value(&self.raw[self.members[i].value()]).ok(),
                })
            }
            Slot::Raw { bytes, parsed } => Some(match parsed.get() {
                Some(cached) => cached.clone(),
                None => parse_value(bytes).ok(),
            }),
        };
        let slot = &mut self.fields_mut()[index].value;
        if let Some(value) = owned {
            // A value `Value` cannot hold (`1e400`) reads as absent, and stays as it came.
            *slot = Slot::Owned(value?);
        }
        match slot {
            Slot::Owned(value) => Some(value),
            Slot::Member(_) | Slot::Raw { .. } => None,
        }
    }

    /// Sets a top-level field, replacing its value in place or appending it.
    pub fn insert(&mut self, key: &str, value: Value) {
        self.set(key, Slot::Owned(value));
    }

    /// Removes a top-level field, returning its value if it could be parsed.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let index = self.position(key)?;
        let field = self.fields_mut().remove(index);
        match field.value {
            Slot::Owned(value) => Some(value),
            Slot::Member(i) => {
                let i = i as usize;
                match self.cached(i) {
                    Some(cached) => cached.clone(),
                    None => parse_value(&self.raw[self.members[i].value()]).ok(),
                }
            }
            Slot::Raw { bytes, parsed } => parsed
                .into_inner()
                .flatten()
                .or_else(|| parse_value(&bytes).ok()),
        }
    }

    /// Removes a top-level field without reading it (a request body dropped by a level is
    /// not parsed on the way out). Returns whether it was there.
    pub fn delete(&mut self, key: &str) -> bool {
        let Some(index) = self.position(key) else {
            return false;
        };
        self.fields_mut().remove(index);
        true
    }

    /// Whether the event has a top-level field `key` (whatever its value).
    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    /// Sets a top-level field to `raw`, JSON bytes written out verbatim (replacing the
    /// field in place, or appending it). This is how a transform that edits part of a
    /// value (a secret inside a string) keeps every other byte of it as it came: it
    /// splices the value's [`Event::raw_field`] bytes and gives them back here.
    ///
    /// `raw` must be one valid JSON value: it is not checked (a debug build asserts it),
    /// and invalid bytes would make the event invalid JSON downstream.
    pub fn set_raw_field(&mut self, key: &str, raw: Bytes) {
        debug_assert!(
            serde_json::from_slice::<serde::de::IgnoredAny>(&raw).is_ok(),
            "set_raw_field({key}) given invalid JSON"
        );
        self.set(
            key,
            Slot::Raw {
                bytes: raw,
                parsed: OnceLock::new(),
            },
        );
    }

    /// Adds (or replaces) one annotation, `annotations[key] = value`, without touching
    /// the bytes of the other annotations: the new member is spliced into the object as
    /// it came. `annotations` is created when absent, and replaced by an object holding
    /// only this annotation when it is not an object (kube-apiserver always writes an
    /// object or nothing).
    pub fn add_annotation(&mut self, key: &str, value: &str) {
        let member_value = Value::String(value.to_owned());
        let raw_object = match self.find("annotations") {
            Some(Found::Member(i)) => Some(&self.raw[self.members[i].value()]),
            Some(Found::Raw(bytes, _)) => Some(&bytes[..]),
            Some(Found::Owned(Value::Object(_))) => None,
            Some(Found::Owned(_)) | None => {
                let mut map = Map::new();
                map.insert(key.to_owned(), member_value);
                self.insert("annotations", Value::Object(map));
                return;
            }
        };
        let Some(object) = raw_object else {
            if let Some(Value::Object(map)) = self.get_mut("annotations") {
                map.insert(key.to_owned(), member_value);
            }
            return;
        };
        match splice_member(object, key, &member_value) {
            Some(spliced) => self.set_raw_field("annotations", Bytes::from(spliced)),
            None => {
                // Not an object, or a key whose escapes the byte search cannot settle:
                // go through the parsed value (which reformats the annotations).
                let mut map = match self.get("annotations") {
                    Some(Value::Object(map)) => map.clone(),
                    _ => Map::new(),
                };
                map.insert(key.to_owned(), member_value);
                self.insert("annotations", Value::Object(map));
            }
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
        let (members, fields) = match &self.changed {
            Some(fields) => (&[][..], &fields[..]),
            None => (&self.members[..], &[][..]),
        };
        let members = (0..members.len()).map(|i| self.member_key(i));
        let fields = fields.iter().map(|field| match &field.key {
            Key::Member(i) => self.member_key(*i as usize),
            Key::Owned(key) => key,
        });
        members.chain(fields)
    }

    /// Parses the whole event.
    pub fn to_value(&self) -> Value {
        let mut map = Map::with_capacity(self.members.len());
        for key in self.keys() {
            // A repeated key: the last value, at the first key's place (as serde_json).
            if !map.contains_key(key) {
                if let Some(value) = self.get(key) {
                    map.insert(key.to_owned(), value.clone());
                }
            }
        }
        Value::Object(map)
    }

    /// Appends the event as one line of compact JSON, without the newline.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let Some(fields) = &self.changed else {
            out.extend_from_slice(&self.raw);
            return;
        };
        out.push(b'{');
        for (i, field) in fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match &field.key {
                Key::Member(i) => {
                    out.push(b'"');
                    out.extend_from_slice(&self.raw[self.members[*i as usize].key()]);
                    out.push(b'"');
                }
                Key::Owned(key) => write_value(out, &Value::String(key.to_string())),
            }
            out.push(b':');
            match &field.value {
                Slot::Member(i) => {
                    out.extend_from_slice(&self.raw[self.members[*i as usize].value()])
                }
                Slot::Raw { bytes, .. } => out.extend_from_slice(bytes),
                Slot::Owned(value) => write_value(out, value),
            }
        }
        out.push(b'}');
    }

    /// The event as compact JSON bytes, shared with the event when it is unchanged.
    pub fn to_json_bytes(&self) -> Bytes {
        if self.changed.is_none() {
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

    /// Where `key`'s value is: the last member with that key (as every JSON parser that
    /// keeps one value per key reads it).
    fn find(&self, key: &str) -> Option<Found<'_>> {
        let Some(fields) = &self.changed else {
            return self.member_position(key).map(Found::Member);
        };
        let field = &fields[self.field_position(fields, key)?];
        Some(match &field.value {
            Slot::Member(i) => Found::Member(*i as usize),
            Slot::Owned(value) => Found::Owned(value),
            Slot::Raw { bytes, parsed } => Found::Raw(bytes, parsed),
        })
    }

    fn member_position(&self, key: &str) -> Option<usize> {
        match known_key(key.as_bytes()) {
            Some(known) => match self.known[known] {
                ABSENT => return None,
                UNINDEXED => {}
                position => return Some(usize::from(position)),
            },
            None if !self.other_keys => return None,
            None => {}
        }
        (0..self.members.len()).rposition(|i| self.member_key_is(i, key))
    }

    fn field_position(&self, fields: &[Field], key: &str) -> Option<usize> {
        fields.iter().rposition(|field| match &field.key {
            Key::Member(i) => self.member_key_is(*i as usize, key),
            Key::Owned(owned) => &**owned == key,
        })
    }

    /// The position of `key` among the fields, the event moved to its changed form when
    /// the key is there (an absent key changes nothing).
    fn position(&mut self, key: &str) -> Option<usize> {
        let index = match &self.changed {
            Some(fields) => return self.field_position(fields, key),
            None => self.member_position(key)?,
        };
        // The changed form made from the members has member i as field i.
        self.fields_mut();
        Some(index)
    }

    /// The fields of the changed form (made from the members if the event has none yet).
    fn fields_mut(&mut self) -> &mut Vec<Field> {
        let members = self.members.len();
        self.changed.get_or_insert_with(|| {
            (0..members as u32)
                .map(|i| Field {
                    key: Key::Member(i),
                    value: Slot::Member(i),
                })
                .collect()
        })
    }

    /// Sets `key` to `value`, in place or appended.
    fn set(&mut self, key: &str, value: Slot) {
        match self.position(key) {
            Some(index) => self.fields_mut()[index].value = value,
            None => self.fields_mut().push(Field {
                key: Key::Owned(key.into()),
                value,
            }),
        }
    }

    fn member_key(&self, i: usize) -> &str {
        if let Some(escaped) = &self.escaped_keys {
            if let Ok(at) = escaped.binary_search_by_key(&(i as u32), |(index, _)| *index) {
                return &escaped[at].1;
            }
        }
        // The decoder checked the bytes are UTF-8.
        std::str::from_utf8(&self.raw[self.members[i].key()]).unwrap_or_default()
    }

    /// Whether `members[i]`'s key is `key`, comparing bytes (no UTF-8 check per call).
    fn member_key_is(&self, i: usize, key: &str) -> bool {
        if let Some(escaped) = &self.escaped_keys {
            if let Ok(at) = escaped.binary_search_by_key(&(i as u32), |(index, _)| *index) {
                return &*escaped[at].1 == key;
            }
        }
        &self.raw[self.members[i].key()] == key.as_bytes()
    }

    /// `members[i]`'s value parsed, from the shared cache.
    fn member_value(&self, i: usize) -> Option<&Value> {
        let slots = self.parsed.get_or_init(|| {
            (0..self.members.len())
                .map(|_| OnceLock::new())
                .collect::<Vec<_>>()
                .into()
        });
        slots[i]
            .get_or_init(|| parse_value(&self.raw[self.members[i].value()]).ok())
            .as_ref()
    }

    /// `members[i]`'s parsed value if it was parsed already (`Some(None)`: it does not fit
    /// a `Value`).
    fn cached(&self, i: usize) -> Option<&Option<Value>> {
        self.parsed.get()?.get(i)?.get()
    }
}

/// `object` (a valid JSON object's bytes) with the member `key` set to `value`: the
/// existing member's value replaced in place, or the member appended before the closing
/// brace. `None` when `object` is not an object or holds escaped keys the byte search
/// cannot compare.
fn splice_member(object: &[u8], key: &str, value: &Value) -> Option<Vec<u8>> {
    let mut encoded = Vec::with_capacity(value.as_str().map_or(16, |s| s.len() + 2));
    write_value(&mut encoded, value);
    if !key.contains(['"', '\\']) && !key.chars().any(char::is_control) {
        match scan::find_member(object, key.as_bytes()) {
            scan::Lookup::Found(range) => {
                let mut out = Vec::with_capacity(object.len() + encoded.len());
                out.extend_from_slice(&object[..range.start]);
                out.extend_from_slice(&encoded);
                out.extend_from_slice(&object[range.end..]);
                return Some(out);
            }
            scan::Lookup::Missing => {}
            scan::Lookup::Unsure => return None,
        }
    } else {
        return None;
    }
    let close = object.iter().rposition(|&b| b == b'}')?;
    let has_members = object[..close]
        .iter()
        .rev()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b != b'{');
    let mut out = Vec::with_capacity(object.len() + key.len() + encoded.len() + 4);
    out.extend_from_slice(&object[..close]);
    if has_members {
        out.push(b',');
    }
    write_value(&mut out, &Value::String(key.to_owned()));
    out.push(b':');
    out.extend_from_slice(&encoded);
    out.extend_from_slice(&object[close..]);
    Some(out)
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

/// Parses one JSON value of any depth the decoder accepts (up to 10,000 levels):
/// serde_json's recursion limit of 128 is lifted, and its stack grown on the heap as it
/// goes (serde_stacker), so no input can overflow the calling thread's stack while parsing.
///
/// # Errors
/// What serde_json refuses: invalid JSON, trailing characters, a lone surrogate escape, a
/// number out of `f64` range.
pub fn parse_value(bytes: &[u8]) -> serde_json::Result<Value> {
    use serde::Deserialize;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.disable_recursion_limit();
    let value = Value::deserialize(serde_stacker::Deserializer::new(&mut de))?;
    de.end()?;
    Ok(value)
}

/// `raw` (valid JSON) without the whitespace between its tokens. Strings are copied as
/// they are, escapes and all.
fn minify(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut in_string = false;
    let mut escaped = false;
    for &byte in raw {
        if in_string {
            out.push(byte);
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if !matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
            in_string = byte == b'"';
            out.push(byte);
        }
    }
    out
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    // Writing a `Value` into a Vec cannot fail: its keys are strings and its numbers finite.
    serde_json::to_writer(out, value).expect("a serde_json::Value always serialises");
}

/// What [`index`] makes of an event's bytes: [`Event`]'s index fields.
struct Index {
    members: SmallVec<[Member; INLINE_MEMBERS]>,
    known: [u8; KNOWN_KEYS.len()],
    escaped_keys: EscapedKeys,
}

/// Validates `raw` as one JSON object and indexes its top-level fields into the empty
/// `members`, `known` (all [`ABSENT`]) and `escaped_keys` (`None`), in place: an
/// [`Event`]'s own fields, so that the index is written once and never moved.
fn index_into(
    raw: &[u8],
    members: &mut SmallVec<[Member; INLINE_MEMBERS]>,
    known: &mut [u8; KNOWN_KEYS.len()],
    escaped_keys: &mut EscapedKeys,
) -> Result<(), DecodeError> {
    let mut escaped = Vec::new();
    let mut bad_key = None;
    scan::index_object(raw, |member| {
        let position = members.len();
        let known_position = u8::try_from(position).map_or(UNINDEXED, |p| p.min(UNINDEXED));
        if member.key_escaped {
            match unescape_key(raw, member.key.clone()) {
                Ok(key) => {
                    if let Some(at) = known_key(key.as_bytes()) {
                        known[at] = known_position;
                    }
                    escaped.push((position as u32, key));
                }
                Err(error) => {
                    bad_key.get_or_insert(error);
                    return;
                }
            }
        } else if let Some(at) = known_key(&raw[member.key.clone()]) {
            known[at] = known_position;
        }
        members.push(Member {
            key_start: member.key.start as u32,
            key_end: member.key.end as u32,
            value_start: member.value.start as u32,
            value_end: member.value.end as u32,
        });
    })?;
    if let Some(error) = bad_key {
        return Err(error);
    }
    if members.len() > usize::from(UNINDEXED) {
        // Positions past a byte: the known keys are searched like any other.
        known.iter_mut().for_each(|position| {
            if *position != ABSENT {
                *position = UNINDEXED;
            }
        });
    }
    if !escaped.is_empty() {
        *escaped_keys = Some(escaped.into_boxed_slice());
    }
    Ok(())
}

/// Validates `raw` as one JSON object and indexes its top-level fields.
fn index(raw: &[u8]) -> Result<Index, DecodeError> {
    let mut index = Index {
        members: SmallVec::new(),
        known: [ABSENT; KNOWN_KEYS.len()],
        escaped_keys: None,
    };
    index_into(
        raw,
        &mut index.members,
        &mut index.known,
        &mut index.escaped_keys,
    )?;
    Ok(index)
}

/// A key with escapes, unescaped by serde_json (rare: Kubernetes keys need none).
fn unescape_key(raw: &[u8], key: Range<usize>) -> Result<Box<str>, DecodeError> {
    // The scanner found the key between quotes, so the quotes are there to take along.
    let quoted = &raw[key.start - 1..key.end + 1];
    match serde_json::from_slice::<String>(quoted) {
        Ok(key) => Ok(key.into_boxed_str()),
        Err(error) => {
            // serde_json counts from the key's quote; count from the event's start.
            let text = error.to_string();
            let message = text.split(" at line ").next().unwrap_or_default();
            Err(DecodeError(Reason::Key {
                message: message.to_owned(),
                column: key.start - 1 + error.column(),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
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
    fn every_known_key_is_found_by_its_table() {
        for (position, key) in KNOWN_KEYS.iter().enumerate() {
            assert_eq!(known_key(key.as_bytes()), Some(position), "{key}");
        }
        for other in [
            "",
            "kin",
            "Kind",
            "verbs",
            "usr",
            "annotation",
            "requestURl",
        ] {
            assert_eq!(known_key(other.as_bytes()), None, "{other}");
        }
    }

    #[test]
    fn known_and_other_keys_read_the_last_of_a_repeated_key() {
        let e = event(r#"{"verb":"get","x":1,"verb":"list","x":2,"a\u0062":3,"ab":4}"#);
        assert_eq!(e.get_str("verb"), Some("list"));
        assert_eq!(e.get("x"), Some(&json!(2)));
        assert_eq!(e.get("ab"), Some(&json!(4)));
        assert_eq!(
            e.keys().collect::<Vec<_>>(),
            ["verb", "x", "verb", "x", "ab", "ab"]
        );
        assert_eq!(e.get("level"), None);
        // An escaped spelling of a known key is the key.
        let escaped = event(r#"{"verb":"get","v\u0065rb":"watch"}"#);
        assert_eq!(escaped.get_str("verb"), Some("watch"));
    }

    #[test]
    fn events_with_more_members_than_the_table_holds_are_searched() {
        let mut text = String::from("{");
        for i in 0..300 {
            text.push_str(&format!("\"k{i}\":{i},"));
        }
        text.push_str("\"verb\":\"get\",\"level\":\"Metadata\"}");
        let e = event(&text);
        assert_eq!(e.get_str("verb"), Some("get"));
        assert_eq!(e.get_str("level"), Some("Metadata"));
        assert_eq!(e.get("k299"), Some(&json!(299)));
        assert_eq!(e.get("stage"), None);
    }

    #[test]
    fn strings_and_codes_are_read_from_the_bytes() {
        let e = event(
            r#"{"verb":"get","requestURI":"/a?b\u0026c","objectRef":{"resource":"pods","name":"x\"y"},"responseStatus":{"code":403,"metadata":{}},"n":1.5,"big":18446744073709551616}"#,
        );
        assert_eq!(e.get_str("verb"), Some("get"));
        assert_eq!(e.str_at(&["objectRef", "resource"]), Some("pods"));
        assert_eq!(e.str_at(&["objectRef", "none"]), None);
        assert_eq!(e.str_at(&["responseStatus", "code"]), None);
        assert_eq!(e.u64_at(&["responseStatus", "code"]), Some(403));
        // Nothing was parsed on the way.
        assert!(e.parsed.get().is_none());
        // Escapes take the parsed route.
        assert_eq!(e.get_str("requestURI"), Some("/a?b&c"));
        assert_eq!(e.str_at(&["objectRef", "name"]), Some("x\"y"));
        assert_eq!(e.u64_at(&["n"]), None);
        assert_eq!(e.u64_at(&["big"]), None);
        assert_eq!(e.u64_at(&["verb"]), None);
        // The same answers from a changed event.
        let mut changed = e.clone();
        changed.insert("level", json!("Metadata"));
        assert_eq!(changed.str_at(&["objectRef", "resource"]), Some("pods"));
        assert_eq!(changed.u64_at(&["responseStatus", "code"]), Some(403));
        assert_eq!(changed.get_str("requestURI"), Some("/a?b&c"));
    }

    #[test]
    fn clones_share_what_was_parsed() {
        let e = event(r#"{"user":{"username":"admin","groups":["a"]},"verb":"get"}"#);
        assert_eq!(e.get_path(["user", "username"]), Some(&json!("admin")));
        let copy = e.clone();
        let parsed = |e: &Event| {
            e.cached(0)
                .and_then(Option::as_ref)
                .map(|v| v as *const Value)
        };
        assert!(parsed(&copy).is_some());
        assert_eq!(parsed(&copy), parsed(&e));
        // Changing the copy leaves the original as it was.
        let mut copy = copy;
        copy.get_mut("user").unwrap()["username"] = json!("other");
        assert_eq!(e.get_path(["user", "username"]), Some(&json!("admin")));
        assert_eq!(copy.get_path(["user", "username"]), Some(&json!("other")));
        assert!(!e.is_modified());
        assert_eq!(
            written(&copy),
            r#"{"user":{"username":"other","groups":["a"]},"verb":"get"}"#
        );
    }

    #[test]
    fn looking_for_an_absent_field_changes_nothing() {
        let mut e = event(r#"{"verb":"get"}"#);
        assert_eq!(e.remove("level"), None);
        assert!(e.get_mut("stage").is_none());
        assert!(!e.is_modified());
        assert!(!e.delete("level"));
        assert!(!e.is_modified());
        assert!(e.contains_key("verb") && !e.contains_key("level"));
        assert_eq!(e.remove("verb"), Some(json!("get")));
        assert!(e.is_modified());
        assert_eq!(written(&e), "{}");
        let mut e = event(r#"{"verb":"get","requestObject":{"big":[1,2,3]},"x":1e400}"#);
        assert!(e.delete("requestObject") && e.delete("x"));
        assert!(!e.contains_key("requestObject"));
        assert_eq!(written(&e), r#"{"verb":"get"}"#);
    }

    #[test]
    fn whitespace_around_the_object_is_left_out() {
        let text = "\t\t {\"auditID\":\"c\", \"verb\":\"patch\"} \t";
        let mut event = event(text);
        assert_eq!(written(&event), "{\"auditID\":\"c\", \"verb\":\"patch\"}");
        assert_eq!(event.get_str("verb"), Some("patch"));
        event.add_annotation("a", "b");
        assert!(written(&event).starts_with("{\"auditID\":\"c\""));
        assert!(Event::from_bytes(Bytes::from_static(b"  \t ")).is_err());
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
    fn adding_an_annotation_keeps_the_other_annotations_bytes() {
        let text = r#"{"verb":"get","annotations":{"a":"x\u0026y","n":"12µs" },"z":1.50}"#;
        let mut event = event(text);
        event.add_annotation("auditflow.io/denial", "rbac");
        assert_eq!(
            written(&event),
            r#"{"verb":"get","annotations":{"a":"x\u0026y","n":"12µs" ,"auditflow.io/denial":"rbac"},"z":1.50}"#
        );
        // Replacing one keeps its neighbours too, and reads back parsed.
        event.add_annotation("a", "new\"quote");
        assert_eq!(
            written(&event),
            r#"{"verb":"get","annotations":{"a":"new\"quote","n":"12µs" ,"auditflow.io/denial":"rbac"},"z":1.50}"#
        );
        assert_eq!(
            event.get_path(["annotations", "a"]),
            Some(&json!("new\"quote"))
        );
    }

    #[test]
    fn annotations_are_added_to_empty_absent_and_odd_objects() {
        for (text, expected) in [
            (r#"{"annotations":{}}"#, r#"{"annotations":{"k":"v"}}"#),
            (r#"{"annotations":{ }}"#, r#"{"annotations":{ "k":"v"}}"#),
            (
                r#"{"verb":"get"}"#,
                r#"{"verb":"get","annotations":{"k":"v"}}"#,
            ),
            (r#"{"annotations":null}"#, r#"{"annotations":{"k":"v"}}"#),
            (r#"{"annotations":"x"}"#, r#"{"annotations":{"k":"v"}}"#),
        ] {
            let mut event = event(text);
            event.add_annotation("k", "v");
            assert_eq!(written(&event), expected, "from {text}");
        }
    }

    #[test]
    fn raw_fields_are_written_verbatim_and_read_parsed() {
        let mut event = event(r#"{"verb":"get","requestObject":{"n":1}}"#);
        event.set_raw_field(
            "requestObject",
            Bytes::from_static(br#"{"n":123456789012345678901234567890,"m":1.50,"u":"a\u0026b"}"#),
        );
        assert_eq!(
            written(&event),
            r#"{"verb":"get","requestObject":{"n":123456789012345678901234567890,"m":1.50,"u":"a\u0026b"}}"#
        );
        assert_eq!(
            event.raw_path(&["requestObject", "m"]),
            RawLookup::Found(b"1.50")
        );
        assert_eq!(event.get_path(["requestObject", "u"]), Some(&json!("a&b")));
        event.set_raw_field("extra", Bytes::from_static(b"[1]"));
        assert_eq!(event.raw_field("extra"), Some(&b"[1]"[..]));
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
    fn keys_outside_the_audit_ones_are_found_however_they_are_written() {
        // Known keys only: another key is absent without a scan, and still absent.
        let only_known = event(r#"{"kind":"Event","verb":"get","verb":"list"}"#);
        assert_eq!(only_known.raw_field("items"), None);
        assert_eq!(only_known.get_str("verb"), Some("list"));
        let list = event(r#"{"kind":"EventList","items":[1],"items":[2]}"#);
        assert_eq!(list.raw_field("items"), Some(&b"[2]"[..]));
        let escaped = event(r#"{"kind":"EventList","items":[3]}"#);
        assert_eq!(escaped.raw_field("items"), Some(&b"[3]"[..]));
        let escaped_known = event(r#"{"verb":"get"}"#);
        assert_eq!(escaped_known.get_str("verb"), Some("get"));
        assert_eq!(escaped_known.raw_field("items"), None);
        // A repeated known key makes room for others.
        let repeated = event(r#"{"verb":"a","verb":"b","x":1}"#);
        assert_eq!(repeated.get("x"), Some(&json!(1)));
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

    #[test]
    fn decode_errors_say_where() {
        let error = |text: &[u8]| Event::from_bytes(Bytes::copy_from_slice(text)).unwrap_err();
        assert_eq!(
            error(br#"{"verb":"get","user" {}}"#).to_string(),
            "not a JSON object: expected `:` after the key, found `{` at column 22"
        );
        assert_eq!(
            error(br#"["get"]"#).to_string(),
            "not a JSON object: expected a JSON object, found an array at column 1"
        );
        assert_eq!(
            error(br#"{"a":1,"\ud800":2}"#).to_string(),
            "not a JSON object: invalid key: unexpected end of hex escape at column 15"
        );
        // Objects over several lines: the position as a line and a column.
        assert_eq!(
            error(b"{\n\"a\":\n}").to_string(),
            "not a JSON object: expected a value, found `}` at line 3 column 1"
        );
    }

    #[test]
    fn nesting_10_000_levels_deep_is_decoded_read_and_written_and_deeper_is_too_deep() {
        let nested = |levels: usize| {
            let inner = "[".repeat(levels - 1) + "\"secret\"" + &"]".repeat(levels - 1);
            format!(r#"{{"verb":"get","deep":{inner}}}"#)
        };
        // On a thread with a small stack, as a guard: parsing grows its stack itself.
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let text = nested(10_000);
                let mut deepest = event(&text);
                let mut value = deepest.get("deep").expect("9,999 levels parse as a Value");
                let mut levels = 0;
                while let Value::Array(items) = value {
                    value = &items[0];
                    levels += 1;
                }
                assert_eq!((levels, value), (9_999, &json!("secret")));
                deepest.add_annotation("k", "v");
                assert!(written(&deepest).contains(&"]".repeat(9_999)));
                std::mem::forget(deepest); // dropping the parsed value recurses
            })
            .unwrap()
            .join()
            .unwrap();
        let error = Event::from_bytes(Bytes::from(nested(10_001))).unwrap_err();
        assert_eq!(error.reason(), "too_deep");
        assert_eq!(
            error.to_string(),
            "not a JSON object: objects and arrays nested deeper than 10000 at column 10021"
        );
        let malformed = Event::from_bytes(Bytes::from_static(b"{\"a\":}")).unwrap_err();
        assert_eq!(malformed.reason(), "malformed");
    }

    #[test]
    fn pretty_printed_objects_keep_their_numbers_and_escapes() {
        let event =
            event("{\n  \"n\": 1.50,\n  \"u\": \"a\\u0026 b\\\"\",\r\n  \"l\": [ 1 , {} ]\n}\n");
        assert_eq!(
            written(&event),
            r#"{"n":1.50,"u":"a\u0026 b\"","l":[1,{}]}"#
        );
    }

    /// The serde_json-based indexer that decoded events before [`crate::scan`], kept as the
    /// reference the scanner must agree with.
    mod oracle {
        use std::fmt;

        use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
        use serde_json::value::RawValue;

        use crate::scan::MAX_DEPTH;

        /// A key as its byte span, or unescaped when it has escapes; a value as its span.
        pub(super) type Index = Vec<(Result<(u32, u32), String>, (u32, u32))>;

        /// The index serde_json makes of `raw`, or `None` where it refuses it. Nesting
        /// deeper than `MAX_DEPTH` counts as refused: serde_json skips such values but
        /// cannot parse them (see `crate::scan`).
        pub(super) fn index(raw: &[u8]) -> Option<Index> {
            let mut de = serde_json::Deserializer::from_slice(raw);
            de.disable_recursion_limit();
            let fields = de.deserialize_map(IndexVisitor { base: raw }).ok()?;
            de.end().ok()?;
            (depth(raw) <= MAX_DEPTH).then_some(fields)
        }

        /// How deep objects and arrays nest in valid JSON.
        fn depth(raw: &[u8]) -> usize {
            let (mut depth, mut deepest) = (0, 0);
            let (mut in_string, mut escaped) = (false, false);
            for &byte in raw {
                match byte {
                    _ if escaped => escaped = false,
                    b'\\' if in_string => escaped = true,
                    b'"' => in_string = !in_string,
                    b'{' | b'[' if !in_string => {
                        depth += 1;
                        deepest = deepest.max(depth);
                    }
                    b'}' | b']' if !in_string => depth -= 1,
                    _ => {}
                }
            }
            deepest
        }

        struct IndexVisitor<'de> {
            base: &'de [u8],
        }

        impl<'de> Visitor<'de> for IndexVisitor<'de> {
            type Value = Index;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Index, A::Error> {
                let mut fields = Vec::new();
                while let Some(key) = map.next_key_seed(KeySeed { base: self.base })? {
                    let value: &'de RawValue = map.next_value()?;
                    fields.push((key, span_of(self.base, value.get().as_bytes())));
                }
                Ok(fields)
            }
        }

        struct KeySeed<'de> {
            base: &'de [u8],
        }

        impl<'de> DeserializeSeed<'de> for KeySeed<'de> {
            type Value = Result<(u32, u32), String>;

            fn deserialize<D: Deserializer<'de>>(
                self,
                deserializer: D,
            ) -> Result<Self::Value, D::Error> {
                deserializer.deserialize_str(self)
            }
        }

        impl<'de> Visitor<'de> for KeySeed<'de> {
            type Value = Result<(u32, u32), String>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }

            fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Self::Value, E> {
                Ok(Ok(span_of(self.base, key.as_bytes())))
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
                Ok(Err(key.to_owned()))
            }
        }

        fn span_of(base: &[u8], part: &[u8]) -> (u32, u32) {
            let start = part.as_ptr() as usize - base.as_ptr() as usize;
            (start as u32, (start + part.len()) as u32)
        }
    }

    /// What [`index`] made of `raw`, in the oracle's terms.
    fn scanned(raw: &[u8]) -> Option<oracle::Index> {
        let index = index(raw).ok()?;
        let escaped = index.escaped_keys.unwrap_or_default();
        let project = |(i, member): (usize, &Member)| {
            let key = match escaped.iter().find(|(at, _)| *at as usize == i) {
                Some((_, key)) => Err(key.to_string()),
                None => Ok((member.key_start, member.key_end)),
            };
            (key, (member.value_start, member.value_end))
        };
        Some(index.members.iter().enumerate().map(project).collect())
    }

    fn agrees_with_serde_json(raw: &[u8]) -> Result<(), TestCaseError> {
        let expected = oracle::index(raw);
        prop_assert_eq!(
            scanned(raw),
            expected,
            "input: {:?}",
            String::from_utf8_lossy(raw)
        );
        Ok(())
    }

    #[test]
    fn edge_cases_agree_with_serde_json() {
        let deep = |levels: usize, open: &str, leaf: &str, close: &str| {
            let (open, close) = (open.repeat(levels - 1), close.repeat(levels - 1));
            format!("{{\"a\":{open}{leaf}{close}}}")
        };
        let accepted: Vec<Vec<u8>> = vec![
            b"{}".to_vec(),
            b"{\"a\":{}}".to_vec(),
            b" \t{\"a\" : [ ] , \"b\":{ } }\r\n".to_vec(),
            b"{\"\":\"\",\"a\":1,\"a\":2}".to_vec(),
            br#"{"a":"\"\\\/\b\f\n\r\t\u00e9\uD83D\uDE00"}"#.to_vec(),
            br#"{"a":"\ud800","b":"\udc00x"}"#.to_vec(),
            br#"{"k\u00e9y":1,"\uD83D\uDE00":2,"a\"b":3}"#.to_vec(),
            b"{\"a\":\"\x7f \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"}".to_vec(),
            br#"{"a":-0,"b":0.5,"c":1E-7,"d":0e0,"e":-12.50e+3,"f":1e400}"#.to_vec(),
            br#"{"a":true,"b":false,"c":null,"d":[true,false,null]}"#.to_vec(),
            deep(128, "[", "", "]").into_bytes(),
            deep(128, "{\"a\":", "1", "}").into_bytes(),
            // Two levels a step: 1 + 63 * 2 + 1.
            deep(64, "[{\"a\":", "[]", "}]").into_bytes(),
        ];
        let refused: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b" ".to_vec(),
            b"[]".to_vec(),
            b"\"x\"".to_vec(),
            b"1".to_vec(),
            b"null".to_vec(),
            b"\xef\xbb\xbf{}".to_vec(),
            b"{} x".to_vec(),
            b"{}{}".to_vec(),
            b"{}]".to_vec(),
            b"{".to_vec(),
            b"{\"a\"".to_vec(),
            b"{\"a\":".to_vec(),
            br#"{"a":"\"}"#.to_vec(),
            br#"{"a":"\"#.to_vec(),
            br#"{"a":"\q"}"#.to_vec(),
            br#"{"a":"\u12"}"#.to_vec(),
            br#"{"a":"\u12G4"}"#.to_vec(),
            br#"{"a":"\U0041"}"#.to_vec(),
            br#"{"\ud800":1}"#.to_vec(),
            br#"{"\udc00\ud800":1}"#.to_vec(),
            b"{\"a\":01}".to_vec(),
            b"{\"a\":-01}".to_vec(),
            b"{\"a\":00}".to_vec(),
            b"{\"a\":-}".to_vec(),
            b"{\"a\":1.}".to_vec(),
            b"{\"a\":1.e5}".to_vec(),
            b"{\"a\":1e}".to_vec(),
            b"{\"a\":1e+}".to_vec(),
            b"{\"a\":.5}".to_vec(),
            b"{\"a\":+1}".to_vec(),
            b"{\"a\":1x}".to_vec(),
            b"{\"a\":0x10}".to_vec(),
            b"{\"a\":\"\x00\"}".to_vec(),
            b"{\"a\":\"\x01\"}".to_vec(),
            b"{\"a\":\"\x1f\"}".to_vec(),
            b"{\"a\":\"\t\"}".to_vec(),
            b"{\"a\x0a\":1}".to_vec(),
            b"{\"a\":\"\xff\"}".to_vec(),
            b"{\"a\":\"\xc0\x80\"}".to_vec(),
            b"{\"a\":\"\xed\xa0\x80\"}".to_vec(),
            b"{\"a\":\"\xe2\x82\"}".to_vec(),
            b"{\"a\":1}\xff".to_vec(),
            b"{\"a\":1,}".to_vec(),
            b"{\"a\":[1,]}".to_vec(),
            b"{\"a\":{\"b\":1,}}".to_vec(),
            b"{,}".to_vec(),
            b"{\"a\" 1}".to_vec(),
            b"{\"a\":}".to_vec(),
            b"{\"a\":1 \"b\":2}".to_vec(),
            b"{\"a\":[1 2]}".to_vec(),
            b"{\"a\":[1}".to_vec(),
            b"{\"a\":{\"b\":1]}".to_vec(),
            b"{\"a\":[]]}".to_vec(),
            b"{\"a\":1]".to_vec(),
            b"{\"a\":{\"b\"]}".to_vec(),
            b"{1:2}".to_vec(),
            b"{'a':1}".to_vec(),
            b"{\"a\":tru}".to_vec(),
            b"{\"a\":nul}".to_vec(),
            b"{\"a\":True}".to_vec(),
            b"{\"a\":truee}".to_vec(),
            b"{\"a\":1}\x0c".to_vec(),
            b"\x0c{}".to_vec(),
        ];
        // Deeper than serde_json's default limit: accepted up to kube-apiserver's 10,000.
        let deep_accepted = [
            deep(129, "[", "", "]").into_bytes(),
            deep(129, "{\"a\":", "1", "}").into_bytes(),
            deep(300, "[", "", "]").into_bytes(),
            deep(64, "[{\"a\":", "[[]]", "}]").into_bytes(),
        ];
        for raw in &deep_accepted {
            assert!(index(raw).is_ok());
            agrees_with_serde_json(raw).unwrap();
        }
        for raw in [
            deep(10_001, "[", "", "]").into_bytes(),
            deep(5_001, "[{\"a\":", "[[]]", "}]").into_bytes(),
        ] {
            let error = Event::from_bytes(Bytes::from(raw)).unwrap_err();
            assert_eq!(error.reason(), "too_deep");
        }
        for raw in &accepted {
            assert!(
                index(raw).is_ok(),
                "refused {:?}",
                String::from_utf8_lossy(raw)
            );
            agrees_with_serde_json(raw).unwrap();
        }
        for raw in &refused {
            assert!(
                index(raw).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(raw)
            );
            agrees_with_serde_json(raw).unwrap();
        }
    }

    #[test]
    fn every_captured_event_agrees_with_serde_json() {
        let lines: Vec<&str> = auditflow_testkit::events::audit_log_lines().collect();
        assert_eq!(lines.len(), 245);
        for line in lines {
            assert!(index(line.as_bytes()).is_ok());
            agrees_with_serde_json(line.as_bytes()).unwrap();
        }
    }

    /// A JSON string's text, quotes included: serialised by serde_json, or written by hand
    /// with every kind of escape (lone surrogates and bad escapes among them).
    fn json_string() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>().prop_map(|text| serde_json::to_string(&text).unwrap()),
            "[a-z]{0,12}".prop_map(|text| format!("\"{text}\"")),
            r#"([a-zé€😀 ~]|\\[\\"/bfnrt]|\\u[0-9a-fA-F]{4}|\\u[dD][89abAB][0-9a-fA-F]{2}|\\[a-z])*"#
                .prop_map(|text| format!("\"{text}\"")),
        ]
    }

    /// A number's text, valid or nearly so.
    fn json_number() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|n| serde_json::to_string(&n).unwrap()),
            r"[-+]?(0|[1-9][0-9]{0,3}|0[0-9]|\.)?(\.[0-9]{0,2})?([eE][-+]?[0-9]{0,2})?",
        ]
    }

    /// A JSON value's text, with random whitespace between tokens.
    fn json_text() -> impl Strategy<Value = String> {
        let space = prop::sample::select(vec!["", "", "", " ", "\t", "\n  ", "\r\n"]);
        let leaf = prop_oneof![
            json_string(),
            json_number(),
            prop::sample::select(vec!["true", "false", "null"]).prop_map(str::to_owned),
        ];
        leaf.prop_recursive(8, 64, 6, move |inner| {
            let member = (space.clone(), json_string(), space.clone(), inner.clone())
                .prop_map(|(s1, key, s2, value)| format!("{s1}{key}{s2}:{s1}{value}{s2}"));
            prop_oneof![
                prop::collection::vec((space.clone(), inner), 0..6).prop_map(|items| {
                    let items: Vec<String> = items
                        .into_iter()
                        .map(|(s, v)| format!("{s}{v}{s}"))
                        .collect();
                    format!("[{}]", items.join(","))
                }),
                prop::collection::vec(member, 0..6)
                    .prop_map(|members| format!("{{{}}}", members.join(","))),
            ]
        })
    }

    /// An object's text: either hand-assembled (duplicate keys, odd escapes and numbers,
    /// whitespace) or a random `serde_json::Value` serialised compactly and pretty.
    fn json_object() -> impl Strategy<Value = String> {
        let value = any::<u8>()
            .prop_map(|_| ())
            .prop_flat_map(|()| json_value());
        prop_oneof![
            prop::collection::vec((json_string(), json_text()), 0..8).prop_map(|members| {
                let members: Vec<String> = members
                    .into_iter()
                    .map(|(k, v)| format!("{k}:{v}"))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
            value
                .clone()
                .prop_map(|map| serde_json::to_string(&map).unwrap()),
            value.prop_map(|map| serde_json::to_string_pretty(&map).unwrap()),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ];
        let value = leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::vec((any::<String>(), inner), 0..8)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        });
        prop::collection::vec((any::<String>(), value), 0..8)
            .prop_map(|members| Value::Object(members.into_iter().collect()))
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Replace(prop::sample::Index, u8),
        Insert(prop::sample::Index, u8),
        Delete(prop::sample::Index),
        Truncate(prop::sample::Index),
        /// Replaces one of the bytes that give JSON its structure with another.
        Restructure(prop::sample::Index, u8),
    }

    const STRUCTURE: &[u8] = b"{}[]:,\"\\";

    fn mutation() -> impl Strategy<Value = Mutation> {
        // Bytes that matter to JSON more often than chance would pick them.
        let byte = prop_oneof![
            any::<u8>(),
            prop::sample::select(
                b"{}[]:,\"\\/ \t\n0123456789-+.eEtfnu\x00\x1f\x7f\x80\xc3\xff".to_vec()
            ),
        ];
        prop_oneof![
            (any::<prop::sample::Index>(), byte.clone())
                .prop_map(|(at, b)| Mutation::Replace(at, b)),
            (any::<prop::sample::Index>(), byte).prop_map(|(at, b)| Mutation::Insert(at, b)),
            any::<prop::sample::Index>().prop_map(Mutation::Delete),
            any::<prop::sample::Index>().prop_map(Mutation::Truncate),
            (
                any::<prop::sample::Index>(),
                prop::sample::select(STRUCTURE)
            )
                .prop_map(|(at, b)| Mutation::Restructure(at, b)),
        ]
    }

    fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
        for mutation in mutations {
            if bytes.is_empty() {
                break;
            }
            match mutation {
                Mutation::Replace(at, byte) => {
                    let at = at.index(bytes.len());
                    bytes[at] = *byte;
                }
                Mutation::Insert(at, byte) => bytes.insert(at.index(bytes.len() + 1), *byte),
                Mutation::Delete(at) => {
                    bytes.remove(at.index(bytes.len()));
                }
                Mutation::Truncate(at) => bytes.truncate(at.index(bytes.len())),
                Mutation::Restructure(at, byte) => {
                    let structure: Vec<usize> = (0..bytes.len())
                        .filter(|&i| STRUCTURE.contains(&bytes[i]))
                        .collect();
                    if !structure.is_empty() {
                        bytes[structure[at.index(structure.len())]] = *byte;
                    }
                }
            }
        }
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_objects_agree_with_serde_json(text in json_object()) {
            agrees_with_serde_json(text.as_bytes())?;
        }

        #[test]
        fn random_values_are_refused_at_the_top_like_serde_json(text in json_text()) {
            agrees_with_serde_json(text.as_bytes())?;
        }

        #[test]
        fn mutated_objects_agree_with_serde_json(
            text in json_object(),
            mutations in prop::collection::vec(mutation(), 1..4),
        ) {
            agrees_with_serde_json(&mutate(text.into_bytes(), &mutations))?;
        }

        #[test]
        fn mutated_captured_events_agree_with_serde_json(
            line in prop::sample::select(auditflow_testkit::events::audit_log_lines().collect::<Vec<_>>()),
            mutations in prop::collection::vec(mutation(), 1..4),
        ) {
            agrees_with_serde_json(&mutate(line.as_bytes().to_vec(), &mutations))?;
        }
    }
}
