//! What the fuzz targets share: the JSON oracle (serde_json, which the project trusts)
//! and the checks every decoded event must pass.

use auditflow_core::Event;
use serde::de::IgnoredAny;
use serde::Deserialize;

/// Whether `bytes` are one JSON text (RFC 8259), at any depth: serde_json's grammar, with
/// no value built (so lone surrogates and numbers out of `f64` range are JSON too).
pub fn is_json(bytes: &[u8]) -> bool {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.disable_recursion_limit();
    IgnoredAny::deserialize(serde_stacker::Deserializer::new(&mut de)).is_ok() && de.end().is_ok()
}

/// Whether `bytes` are one JSON object, starting at the first byte (as every record a
/// decoder reads as an event does).
pub fn is_json_object(bytes: &[u8]) -> bool {
    bytes.first() == Some(&b'{') && is_json(bytes)
}

/// What every event that leaves a decoder must be: one line of valid JSON, an object that
/// decodes again to the same fields, and, where serde_json can build the value, the same
/// value serde_json reads.
pub fn check_event(event: &Event) {
    let bytes = event.to_json_bytes();
    assert!(
        is_json_object(&bytes),
        "an event is not a JSON object: {bytes:?}"
    );
    assert!(
        !bytes.contains(&b'\n'),
        "an event is not one line: {bytes:?}"
    );
    let again = match Event::from_bytes(bytes.clone()) {
        Ok(again) => again,
        Err(error) => panic!("an event's own bytes do not decode ({error}): {bytes:?}"),
    };
    assert!(
        event.keys().eq(again.keys()),
        "decoding an event's bytes again changes its keys: {bytes:?}"
    );
    if let Ok(value) = auditflow_core::event::parse_value(&bytes) {
        assert_eq!(
            value,
            event.to_value(),
            "the event reads differently from what serde_json reads: {bytes:?}"
        );
    }
}

/// Checks `Event::from_bytes` against serde_json on one record: it never accepts what is
/// not a JSON object, and accepts every object serde_json can read (short of the depth
/// limit, which fuzz inputs cannot reach).
pub fn check_decode_agrees(record: &[u8]) {
    let event = Event::from_bytes(bytes::Bytes::copy_from_slice(record));
    let object = is_json_object(record);
    match &event {
        Ok(event) => {
            assert!(object, "accepted what is not a JSON object: {record:?}");
            check_event(event);
        }
        Err(error) => {
            if object && auditflow_core::event::parse_value(record).is_ok() {
                panic!("refused a JSON object ({error}): {record:?}");
            }
        }
    }
}
