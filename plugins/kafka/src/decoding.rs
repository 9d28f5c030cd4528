//! Message payloads into events.
//!
//! The payload is copied once out of librdkafka's buffer into `Bytes`; every event of an
//! `event_list` or `ndjson` message is then a slice of that copy, not another copy.

use auditflow_core::Event;
use bytes::Bytes;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::value::RawValue;

/// How a message's payload holds events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decoding {
    /// One JSON event per message (what the `kafka` sink writes).
    #[default]
    Json,
    /// A Kubernetes `EventList` (`{"items":[...]}`), as the webhook backend sends it.
    EventList,
    /// Newline-delimited JSON events; blank lines are ignored.
    Ndjson,
}

/// Parts of a payload that were not events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// How many events (or whole messages) were refused.
    pub count: usize,
    /// The first problem, for the log.
    pub error: String,
}

impl Malformed {
    fn one(error: impl ToString) -> Malformed {
        Malformed {
            count: 1,
            error: error.to_string(),
        }
    }
}

#[derive(Deserialize)]
struct EventList<'a> {
    #[serde(borrow)]
    items: Vec<&'a RawValue>,
}

impl Decoding {
    /// Appends the payload's events to `out`; what could not be decoded is reported.
    pub fn decode(self, payload: Option<&[u8]>, out: &mut Vec<Event>) -> Option<Malformed> {
        let Some(payload) = payload.filter(|payload| !payload.is_empty()) else {
            return Some(Malformed::one("the message has no payload"));
        };
        let payload = Bytes::copy_from_slice(payload);
        match self {
            Decoding::Json => match Event::from_bytes(payload) {
                Ok(event) => {
                    out.push(event);
                    None
                }
                Err(error) => Some(Malformed::one(error)),
            },
            Decoding::EventList => {
                let list: EventList<'_> = match serde_json::from_slice(&payload) {
                    Ok(list) => list,
                    Err(error) => {
                        return Some(Malformed::one(format!("not an EventList: {error}")))
                    }
                };
                let mut malformed: Option<Malformed> = None;
                for (index, item) in list.items.iter().enumerate() {
                    let bytes = payload.slice_ref(item.get().as_bytes());
                    match Event::from_bytes(bytes) {
                        Ok(event) => out.push(event),
                        Err(error) => note(&mut malformed, || format!("items[{index}]: {error}")),
                    }
                }
                malformed
            }
            Decoding::Ndjson => {
                let mut malformed: Option<Malformed> = None;
                let mut start = 0;
                let mut line_number = 0;
                while start < payload.len() {
                    let end = memchr::memchr(b'\n', &payload[start..])
                        .map_or(payload.len(), |newline| start + newline);
                    line_number += 1;
                    let line = payload.slice(start..end);
                    start = end + 1;
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match Event::from_bytes(line) {
                        Ok(event) => out.push(event),
                        Err(error) => {
                            note(&mut malformed, || format!("line {line_number}: {error}"))
                        }
                    }
                }
                malformed
            }
        }
    }
}

fn note(malformed: &mut Option<Malformed>, error: impl FnOnce() -> String) {
    match malformed {
        Some(malformed) => malformed.count += 1,
        None => *malformed = Some(Malformed::one(error())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(decoding: Decoding, payload: &str) -> (Vec<String>, Option<Malformed>) {
        let mut events = Vec::new();
        let malformed = decoding.decode(Some(payload.as_bytes()), &mut events);
        let ids = events
            .iter()
            .map(|event| event.get_str("auditID").unwrap_or("-").to_owned())
            .collect();
        (ids, malformed)
    }

    #[test]
    fn json_is_one_event_per_message() {
        let (ids, malformed) = decode(Decoding::Json, r#"{"auditID":"a","verb":"get"}"#);
        assert_eq!(ids, ["a"]);
        assert_eq!(malformed, None);
        let (ids, malformed) = decode(Decoding::Json, "[1,2]");
        assert!(ids.is_empty());
        assert_eq!(malformed.map(|m| m.count), Some(1));
    }

    #[test]
    fn event_list_items_are_slices_of_the_message() {
        let payload = auditflow_testkit::events::WEBHOOK_EVENT_LIST;
        let mut events = Vec::new();
        assert_eq!(
            Decoding::EventList.decode(Some(payload.as_bytes()), &mut events),
            None
        );
        assert!(!events.is_empty());
        let value: serde_json::Value = serde_json::from_str(payload).unwrap();
        for (event, item) in events.iter().zip(value["items"].as_array().unwrap()) {
            assert_eq!(&event.to_value(), item);
        }
    }

    #[test]
    fn event_list_counts_items_that_are_not_objects() {
        let (ids, malformed) = decode(
            Decoding::EventList,
            r#"{"kind":"EventList","items":[{"auditID":"a"},7,"x",{"auditID":"b"}]}"#,
        );
        assert_eq!(ids, ["a", "b"]);
        let malformed = malformed.unwrap();
        assert_eq!(malformed.count, 2);
        assert!(
            malformed.error.starts_with("items[1]"),
            "{}",
            malformed.error
        );
    }

    #[test]
    fn ndjson_skips_blank_and_bad_lines() {
        let (ids, malformed) = decode(
            Decoding::Ndjson,
            "{\"auditID\":\"a\"}\n\n{oops\n{\"auditID\":\"b\"}",
        );
        assert_eq!(ids, ["a", "b"]);
        let malformed = malformed.unwrap();
        assert_eq!(malformed.count, 1);
        assert!(malformed.error.starts_with("line 3"), "{}", malformed.error);
    }

    #[test]
    fn an_empty_message_is_malformed() {
        let mut events = Vec::new();
        assert!(Decoding::Json.decode(None, &mut events).is_some());
        assert!(Decoding::Ndjson.decode(Some(b""), &mut events).is_some());
    }
}
