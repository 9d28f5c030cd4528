//! The `redact` transform over arbitrary events, through its public face (the config,
//! `build`, `transform`), as a pipeline runs it.
//!
//! Input: byte 0 picks one of three configurations (the defaults; `fields` paths; `mode:
//! hash` with a custom pattern) and whether an annotation holding a bearer token is added
//! upstream first; the rest is the event (inputs that are not an event are skipped).
//! Checks, on every event:
//! - no panic, one event out, and it is valid JSON (one line, an object);
//! - byte-identical outside the redacted spans. Redact does not report its spans, so they
//!   are re-derived from the output: every top-level value (and every annotation) must be
//!   the input's bytes with some stretches replaced by a replacement (`[REDACTED]`,
//!   `hmac-sha256:<16 hex>`), the stretches in order and nothing else changed; where both
//!   parse, the values have the same shape and differ only in strings that now hold a
//!   replacement;
//! - the top-level keys keep their order (a repeated key keeps its first place), and the
//!   only key or annotation added is `auditflow.io/redacted`.
#![no_main]

use std::cell::RefCell;
use std::fmt;

use auditflow_core::{Batch, BuildContext, Event, Transform, TransformConfig};
use auditflow_fuzz::{check_event, is_json_object};
use auditflow_redact::{RedactConfig, REDACTED_ANNOTATION};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{json, Value};

const MASK: &[u8] = b"[REDACTED]";
const HASH_PREFIX: &[u8] = b"hmac-sha256:";

fn configs() -> Vec<Box<dyn Transform>> {
    let configs = [
        json!({}),
        json!({
            "fields": ["requestObject.spec.password", "annotations.\"example.com/key\"",
                       "user.extra", "requestObject.items.\"0\"", "responseStatus.code"]
        }),
        json!({
            "mode": "hash",
            "hash_key": "fuzz",
            "patterns": { "query_password": "password=(?P<secret>[^&\"]+)" },
            "detectors": { "jwt": false }
        }),
    ];
    configs
        .into_iter()
        .map(|options| {
            let config: RedactConfig = serde_json::from_value(options).unwrap();
            config
                .build(BuildContext::unobserved("fuzz", std::env::temp_dir()))
                .unwrap()
        })
        .collect()
}

thread_local! {
    static TRANSFORMS: RefCell<Vec<Box<dyn Transform>>> = RefCell::new(configs());
}

/// Where the next replacement starts in `bytes` at or after `from`, and its length.
fn next_replacement(bytes: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut at = from;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.starts_with(MASK) {
            return Some((at, MASK.len()));
        }
        if rest.starts_with(HASH_PREFIX) {
            let digits = &rest[HASH_PREFIX.len()..];
            if digits.len() >= 16 && digits[..16].iter().all(|b| b"0123456789abcdef".contains(b)) {
                return Some((at, HASH_PREFIX.len() + 16));
            }
        }
        at += 1;
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Whether `after` is `before` with some stretches (in order, not overlapping) replaced
/// by replacements: the pieces of `after` between replacements all appear in `before`, in
/// order, the first at its start and the last at its end.
fn replaced_only(before: &[u8], after: &[u8]) -> bool {
    let mut pieces = Vec::new();
    let mut at = 0;
    while let Some((mut start, len)) = next_replacement(after, at) {
        let mut end = start + len;
        // A whole value replaced (`123` -> `"[REDACTED]"`): the quotes are new too.
        if start > at && after[start - 1] == b'"' && after.get(end) == Some(&b'"') {
            start -= 1;
            end += 1;
        }
        pieces.push(&after[at..start]);
        at = end;
    }
    pieces.push(&after[at..]);
    if pieces.len() == 1 {
        return before == after;
    }
    let (first, rest) = pieces.split_first().unwrap();
    let (last, middle) = rest.split_last().unwrap();
    if !before.starts_with(first) {
        return false;
    }
    let mut position = first.len();
    for piece in middle {
        match find(&before[position..], piece) {
            Some(found) => position += found + piece.len(),
            None => return false,
        }
    }
    before.len() >= position + last.len() && before.ends_with(last)
}

fn holds_replacement(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|text| next_replacement(text.as_bytes(), 0).is_some())
}

/// Same shape, differing only where `after` holds a string with a replacement.
fn same_shape(before: &Value, after: &Value) -> bool {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            b.len() == a.len()
                && b.iter()
                    .zip(a)
                    .all(|((bk, bv), (ak, av))| bk == ak && same_shape(bv, av))
        }
        (Value::Array(b), Value::Array(a)) => {
            b.len() == a.len() && b.iter().zip(a).all(|(bv, av)| same_shape(bv, av))
        }
        (before, after) => before == after || holds_replacement(after),
    }
}

/// An object's members in order, each value's bytes as they are.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Members<'de>, M::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(entry);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

fn members(bytes: &[u8]) -> Option<Vec<(String, &RawValue)>> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.disable_recursion_limit();
    let members = <Members as serde::Deserialize>::deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(members.0)
}

fn check_value(key: &str, before: &[u8], after: &[u8]) {
    assert!(
        replaced_only(before, after),
        "{key} changed outside a redacted span:\n before {:?}\n after  {:?}",
        String::from_utf8_lossy(before),
        String::from_utf8_lossy(after)
    );
    let parse = auditflow_core::event::parse_value;
    if let (Ok(b), Ok(a)) = (parse(before), parse(after)) {
        assert!(same_shape(&b, &a), "{key} changed shape: {b} -> {a}");
    }
}

fn check_annotations(before: Option<&[u8]>, after: &[u8]) {
    let Some(after_members) = members(after) else {
        let before = before.expect("annotations appeared and are not an object");
        check_value("annotations", before, after);
        return;
    };
    let added: Vec<_> = after_members
        .iter()
        .filter(|(key, _)| key == REDACTED_ANNOTATION)
        .collect();
    assert!(
        added.len() <= 1,
        "{REDACTED_ANNOTATION} twice: {after_members:?}"
    );
    for (_, value) in &added {
        let names: Value = serde_json::from_str(value.get()).unwrap();
        assert!(names.is_string(), "{REDACTED_ANNOTATION} is {names}");
    }
    let after_members: Vec<_> = after_members
        .iter()
        .filter(|(key, _)| key != REDACTED_ANNOTATION)
        .collect();
    match before.and_then(members) {
        Some(before_members) => {
            let before_members: Vec<_> = before_members
                .iter()
                .filter(|(key, _)| key != REDACTED_ANNOTATION)
                .collect();
            assert_eq!(
                before_members
                    .iter()
                    .map(|(key, _)| key)
                    .collect::<Vec<_>>(),
                after_members.iter().map(|(key, _)| key).collect::<Vec<_>>(),
                "the annotations changed"
            );
            for ((key, b), (_, a)) in before_members.iter().zip(&after_members) {
                check_value(
                    &format!("annotations.{key}"),
                    b.get().as_bytes(),
                    a.get().as_bytes(),
                );
            }
        }
        None => assert!(
            after_members.is_empty(),
            "annotations that were not an object became {after_members:?}"
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, json @ ..] = data else {
        return;
    };
    let Ok(mut event) = Event::from_bytes(Bytes::copy_from_slice(json)) else {
        return;
    };
    if mode & 0x80 != 0 {
        event.add_annotation("example.com/upstream", "Bearer abcdefghijklmnop1234");
    }
    let before = event.clone();
    let mut batch = Batch::new(vec![event]);
    TRANSFORMS.with(|transforms| {
        let mut transforms = transforms.borrow_mut();
        let index = usize::from(mode & 0x7f) % transforms.len();
        transforms[index].transform(&mut batch);
    });
    assert_eq!(batch.events.len(), 1, "redact does not drop or add events");
    let redacted = &batch.events[0];
    check_event(redacted);
    let before_bytes = before.to_json_bytes();
    let after_bytes = redacted.to_json_bytes();
    if before_bytes == after_bytes {
        return;
    }
    assert!(is_json_object(&after_bytes));
    let after = Event::from_bytes(after_bytes.clone()).unwrap();

    // Keys: the input's, a repeated one in its first place, and perhaps `annotations`.
    let mut expected: Vec<&str> = Vec::new();
    for key in before.keys() {
        if !expected.contains(&key) {
            expected.push(key);
        }
    }
    let keys: Vec<&str> = after.keys().collect();
    if keys.len() == expected.len() + 1 {
        assert_eq!(
            keys.last(),
            Some(&"annotations"),
            "a key was added: {keys:?}"
        );
        assert!(!expected.contains(&"annotations"));
        assert_eq!(&keys[..expected.len()], &expected[..], "the keys moved");
    } else {
        assert_eq!(keys, expected, "the keys changed");
    }

    for key in &keys {
        let after_value = after.raw_field(key).unwrap();
        let before_value = before.raw_field(key).map(<[u8]>::to_vec).or_else(|| {
            before
                .get(key)
                .map(|value| serde_json::to_vec(value).unwrap())
        });
        if *key == "annotations" {
            check_annotations(before_value.as_deref(), after_value);
        } else {
            let before_value = before_value.unwrap_or_else(|| panic!("{key} appeared"));
            check_value(key, &before_value, after_value);
        }
    }
});
