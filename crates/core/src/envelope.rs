//! Cloud envelopes around audit events: what managed clusters deliver instead of a plain
//! `EventList`.
//!
//! - [`Decoding::AzureDiagnosticRecords`]: AKS streams its audit log to an Event Hub as
//!   Azure Monitor diagnostic records, `{"records":[{"category":"kube-audit",
//!   "properties":{"log":"<the event as a JSON string>"}}]}`. Records of the categories
//!   `kube-audit` and `kube-audit-admin` hold one event each; other categories
//!   (`kube-apiserver`, `guard`, …) are refused as `not_audit`.
//! - [`Decoding::CloudwatchLogs`]: EKS writes its audit log to CloudWatch Logs, whose
//!   subscriptions deliver `{"messageType":"DATA_MESSAGE","logGroup":…,"logStream":…,
//!   "logEvents":[{"message":"<the event>"}]}`, gzip-compressed or not. `CONTROL_MESSAGE`
//!   payloads (CloudWatch checking that the destination is reachable) hold nothing.
//!
//! Every function here is pure: bytes in, events and refused items out, appended to a
//! [`Decoded`] like [`decode::decode_into`] does, so the sources keep their one refusal
//! path (counted by [`Malformed::kind`], logged, and sent to `<id>.dead_letter`).
//!
//! An event wrapped in a JSON string is the string's unescaped contents, trailing newline
//! removed: the one allocation per event, and only for strings that hold escapes (an
//! event in a string always does, for its quotes). An event given as an object is a slice
//! of the body. Either way the event's bytes are exactly what the API server wrote.

use std::borrow::Cow;
use std::io::Read;

use bytes::Bytes;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::decode::{self, Decoded, Malformed, Refused, Shape};
use crate::event::Event;

/// The reason records that are not audit events are counted under.
pub const NOT_AUDIT: &str = "not_audit";
/// The Azure diagnostic categories that hold Kubernetes audit events.
pub const AUDIT_CATEGORIES: [&str; 2] = ["kube-audit", "kube-audit-admin"];
/// A gzip payload inflates to at most this many bytes; CloudWatch Logs caps a
/// subscription payload far below it.
pub const MAX_INFLATED_BYTES: usize = 256 * 1024 * 1024;
/// The annotation that keeps a CloudWatch log event's `logGroup`.
pub const LOG_GROUP_ANNOTATION: &str = "auditflow.io/log-group";
/// The annotation that keeps a CloudWatch log event's `logStream`.
pub const LOG_STREAM_ANNOTATION: &str = "auditflow.io/log-stream";

/// How a body, message or record holds audit events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decoding {
    /// Audit events as the API server writes them: an `Event`, an `EventList`, a JSON
    /// array of events, or NDJSON.
    #[default]
    Audit,
    /// Azure Monitor diagnostic records (AKS through an Event Hub):
    /// `{"records":[{"category":"kube-audit","properties":{"log":"<event>"}}]}`.
    AzureDiagnosticRecords,
    /// A CloudWatch Logs subscription payload (EKS), gzip-compressed or not:
    /// `{"messageType":"DATA_MESSAGE","logEvents":[{"message":"<event>"}]}`.
    CloudwatchLogs,
}

/// A field of the cloud envelope that can be kept on every event as an annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum EnvelopeField {
    /// CloudWatch's `logGroup` (`/aws/eks/<cluster>/cluster`), kept as the annotation
    /// `auditflow.io/log-group`.
    #[serde(rename = "logGroup")]
    LogGroup,
    /// CloudWatch's `logStream` (`kube-apiserver-audit-<id>`), kept as the annotation
    /// `auditflow.io/log-stream`.
    #[serde(rename = "logStream")]
    LogStream,
}

/// A source's `decoding` and `keep_envelope_fields`, resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// How records hold audit events (the source's `decoding` option); `audit` by default.
    pub decoding: Decoding,
    /// The envelope fields copied onto every event as annotations (`keep_envelope_fields`),
    /// in the order given; empty by default.
    pub keep: Vec<EnvelopeField>,
}

impl Envelope {
    /// What is wrong with the combination, for `validate` (field `keep_envelope_fields`).
    pub fn problem(&self) -> Option<String> {
        (!self.keep.is_empty() && self.decoding != Decoding::CloudwatchLogs).then(|| {
            format!(
                "only the cloudwatch_logs decoding has envelope fields to keep (decoding is {}): remove keep_envelope_fields or set decoding: cloudwatch_logs",
                self.decoding.name()
            )
        })
    }
}

impl Decoding {
    /// The name as written in pipeline files.
    pub fn name(self) -> &'static str {
        match self {
            Decoding::Audit => "audit",
            Decoding::AzureDiagnosticRecords => "azure_diagnostic_records",
            Decoding::CloudwatchLogs => "cloudwatch_logs",
        }
    }
}

/// Splits `body` into events, appending to `decoded`: with [`Decoding::Audit`] exactly as
/// [`decode::decode_into`] does for `shape`; otherwise `shape` is not looked at. A refused
/// body appends nothing.
pub fn decode_into(
    body: &Bytes,
    shape: Shape,
    envelope: &Envelope,
    decoded: &mut Decoded,
) -> Result<(), Refused> {
    match envelope.decoding {
        Decoding::Audit => decode::decode_into(body, shape, decoded),
        Decoding::AzureDiagnosticRecords => azure_records(body, decoded),
        Decoding::CloudwatchLogs => cloudwatch_logs(body, &envelope.keep, decoded),
    }
}

/// [`decode_into`] into a new [`Decoded`].
pub fn decode(body: &Bytes, shape: Shape, envelope: &Envelope) -> Result<Decoded, Refused> {
    let mut decoded = Decoded::default();
    decode_into(body, shape, envelope, &mut decoded)?;
    Ok(decoded)
}

/// Whether `bytes` start with gzip's magic number.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// `bytes` inflated when they are gzip (every member), as they are otherwise; never more
/// than `max` bytes.
///
/// # Errors
/// When the bytes are not valid gzip, or inflate to more than `max` bytes (the message
/// says which).
pub fn gunzip_if_gzip(bytes: Bytes, max: usize) -> Result<Bytes, String> {
    if !is_gzip(&bytes) {
        return Ok(bytes);
    }
    let mut inflated = Vec::with_capacity(bytes.len().saturating_mul(4).min(max));
    let read = flate2::read::MultiGzDecoder::new(&bytes[..])
        .take((max as u64).saturating_add(1))
        .read_to_end(&mut inflated);
    match read {
        Err(error) => Err(format!("not valid gzip: {error}")),
        Ok(_) if inflated.len() > max => Err(format!("inflates to more than {max} bytes")),
        Ok(_) => Ok(Bytes::from(inflated)),
    }
}

#[derive(Deserialize)]
struct AzureBody<'a> {
    #[serde(borrow)]
    records: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct AzureRecord<'a> {
    #[serde(borrow, default)]
    category: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    properties: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct AzureProperties<'a> {
    #[serde(borrow, default)]
    log: Option<&'a RawValue>,
}

fn parse<'a, T: Deserialize<'a>>(raw: &'a [u8]) -> Result<T, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    // Events inside may nest as deep as events do; the event scanner checks each one.
    de.disable_recursion_limit();
    let value = T::deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

fn azure_records(body: &Bytes, decoded: &mut Decoded) -> Result<(), Refused> {
    let parsed: AzureBody = parse(body).map_err(|error| {
        Refused(format!(
            "not Azure diagnostic records ({{\"records\":[...]}}): {error}"
        ))
    })?;
    let Some(records) = parsed.records else {
        return Err(Refused(
            "not Azure diagnostic records: the object has no `records` array".into(),
        ));
    };
    decoded.events.reserve(records.len());
    for (index, record) in records.iter().enumerate() {
        let raw = body.slice_ref(record.get().as_bytes());
        let refuse = |decoded: &mut Decoded, kind: &'static str, reason: String| {
            decoded.malformed.push(Malformed {
                location: format!("records[{index}]"),
                reason,
                kind,
                raw: raw.clone(),
                item: Some(index),
            });
        };
        let record: AzureRecord = match parse(&raw) {
            Ok(record) => record,
            Err(error) => {
                refuse(
                    decoded,
                    "malformed",
                    format!("not a diagnostic record: {error}"),
                );
                continue;
            }
        };
        match record.category.as_deref() {
            Some(category) if AUDIT_CATEGORIES.contains(&category) => {}
            Some(category) => {
                refuse(
                    decoded,
                    NOT_AUDIT,
                    format!("category {category:?} is not kube-audit or kube-audit-admin"),
                );
                continue;
            }
            None => {
                refuse(decoded, NOT_AUDIT, "the record has no category".into());
                continue;
            }
        }
        let log = record
            .properties
            .map(|properties| parse::<AzureProperties>(properties.get().as_bytes()))
            .transpose();
        let log = match log {
            Ok(Some(AzureProperties { log: Some(log) })) => log,
            Ok(_) => {
                refuse(
                    decoded,
                    "malformed",
                    "the audit record has no properties.log".into(),
                );
                continue;
            }
            Err(error) => {
                refuse(decoded, "malformed", format!("properties: {error}"));
                continue;
            }
        };
        match wrapped_event(body, log) {
            Ok(event) => decoded.events.push(event),
            Err((kind, reason)) => refuse(decoded, kind, format!("properties.log: {reason}")),
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CloudwatchPayload<'a> {
    #[serde(borrow, default)]
    message_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    log_group: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    log_stream: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    log_events: Option<Vec<CloudwatchEvent<'a>>>,
}

#[derive(Deserialize)]
struct CloudwatchEvent<'a> {
    #[serde(borrow)]
    message: &'a RawValue,
}

fn cloudwatch_logs(
    body: &Bytes,
    keep: &[EnvelopeField],
    decoded: &mut Decoded,
) -> Result<(), Refused> {
    let body = &gunzip_if_gzip(body.clone(), MAX_INFLATED_BYTES)
        .map_err(|error| Refused(format!("the CloudWatch Logs payload is gzip but {error}")))?;
    let payload: CloudwatchPayload = parse(body).map_err(|error| {
        Refused(format!(
            "not a CloudWatch Logs subscription payload: {error}"
        ))
    })?;
    match payload.message_type.as_deref() {
        Some("DATA_MESSAGE") => {}
        // CloudWatch checking that the destination answers: nothing to deliver.
        Some("CONTROL_MESSAGE") => return Ok(()),
        Some(other) => {
            return Err(Refused(format!(
                "messageType: expected \"DATA_MESSAGE\" or \"CONTROL_MESSAGE\", found {other:?}"
            )))
        }
        None => {
            return Err(Refused(
                "not a CloudWatch Logs subscription payload: no messageType".into(),
            ))
        }
    }
    let log_events = payload.log_events.unwrap_or_default();
    decoded.events.reserve(log_events.len());
    for (index, log_event) in log_events.iter().enumerate() {
        let raw = log_event.message.get().as_bytes();
        match wrapped_event(body, log_event.message) {
            Ok(mut event) => {
                for field in keep {
                    let (key, value) = match field {
                        EnvelopeField::LogGroup => (LOG_GROUP_ANNOTATION, &payload.log_group),
                        EnvelopeField::LogStream => (LOG_STREAM_ANNOTATION, &payload.log_stream),
                    };
                    if let Some(value) = value {
                        event.add_annotation(key, value);
                    }
                }
                decoded.events.push(event);
            }
            Err((kind, reason)) => decoded.malformed.push(Malformed {
                location: format!("logEvents[{index}]"),
                reason: format!("message: {reason}"),
                kind,
                raw: body.slice_ref(raw),
                item: Some(index),
            }),
        }
    }
    Ok(())
}

/// The event in `value`, a JSON string holding it (unescaped, trailing newline removed)
/// or the object itself (a slice of `body`). A string that does not start an object is
/// a plain log line (klog, the authenticator): `not_audit`.
fn wrapped_event(body: &Bytes, value: &RawValue) -> Result<Event, (&'static str, String)> {
    let raw = value.get().as_bytes();
    let bytes = match raw.first() {
        Some(b'{') => body.slice_ref(raw),
        Some(b'"') => {
            let text: Cow<str> = serde_json::from_str(value.get())
                .map_err(|error| ("malformed", format!("not a JSON string: {error}")))?;
            let trimmed = text.trim_end_matches(['\n', '\r']);
            if !trimmed.trim_start().starts_with('{') {
                return Err((NOT_AUDIT, "a log line, not an audit event".into()));
            }
            match text {
                // No escapes: the string's own bytes in the body.
                Cow::Borrowed(text) => body.slice_ref(trimmed_str(text).as_bytes()),
                Cow::Owned(mut text) => {
                    let len = trimmed_str(&text).len();
                    text.truncate(len);
                    Bytes::from(text)
                }
            }
        }
        _ => {
            return Err((
                "malformed",
                "expected an audit event as a JSON string or object".into(),
            ))
        }
    };
    Event::from_bytes(bytes).map_err(|error| (error.reason(), error.to_string()))
}

fn trimmed_str(text: &str) -> &str {
    text.trim_end_matches(['\n', '\r'])
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const EVENT_A: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a","requestURI":"/api/v1/pods?a=1\u0026b=2","verb":"list","annotations":{"x":"12µs"}}"#;
    const EVENT_B: &str = r#"{"kind":"Event","auditID":"b","verb":"get","n":1.50}"#;

    fn string(text: &str) -> String {
        serde_json::to_string(text).unwrap()
    }

    fn envelope(decoding: Decoding) -> Envelope {
        Envelope {
            decoding,
            keep: Vec::new(),
        }
    }

    #[test]
    fn azure_records_yield_the_log_strings_byte_for_byte_and_refuse_other_categories() {
        let body = format!(
            r#"{{"records":[
              {{"category":"kube-audit","time":"t","properties":{{"log":{},"stream":"stdout","pod":"kube-apiserver-1"}}}},
              {{"category":"kube-apiserver","properties":{{"log":"I1201 started"}}}},
              {{"category":"kube-audit-admin","properties":{{"log":{}}}}},
              {{"category":"guard","properties":{{"log":"ok"}}}},
              {{"category":"kube-audit","properties":{{}}}}
            ]}}"#,
            string(&format!("{EVENT_A}\n")),
            EVENT_B
        );
        let body = Bytes::from(body);
        let decoded = decode(
            &body,
            Shape::Json,
            &envelope(Decoding::AzureDiagnosticRecords),
        )
        .unwrap();
        let raws: Vec<&[u8]> = decoded.events.iter().map(|e| e.raw().as_ref()).collect();
        assert_eq!(raws, [EVENT_A.as_bytes(), EVENT_B.as_bytes()]);
        // The object is the body's own bytes, not a copy.
        assert!(body
            .as_ptr_range()
            .contains(&decoded.events[1].raw().as_ptr()));
        let refused: Vec<(&str, &str)> = decoded
            .malformed
            .iter()
            .map(|m| (m.location.as_str(), m.kind))
            .collect();
        assert_eq!(
            refused,
            [
                ("records[1]", NOT_AUDIT),
                ("records[3]", NOT_AUDIT),
                ("records[4]", "malformed")
            ]
        );
        assert!(decoded.malformed[0]
            .raw
            .starts_with(b"{\"category\":\"kube-apiserver\""));
        assert_eq!(decoded.malformed[1].item, Some(3));
    }

    #[test]
    fn bodies_that_are_not_diagnostic_records_are_refused() {
        let azure = envelope(Decoding::AzureDiagnosticRecords);
        for body in [r#"{"items":[]}"#, "nope", r#"{"records":{}}"#] {
            assert!(
                decode(&Bytes::from(body), Shape::Json, &azure).is_err(),
                "{body}"
            );
        }
        let decoded = decode(
            &Bytes::from_static(
                br#"{"records":[{"category":"kube-audit","properties":{"log":"{\"auditID\":"}}]}"#,
            ),
            Shape::Json,
            &azure,
        )
        .unwrap();
        assert_eq!(decoded.malformed[0].kind, "malformed");
        assert!(decoded.malformed[0].reason.starts_with("properties.log: "));
    }

    fn cloudwatch(message_type: &str, messages: &[String]) -> String {
        format!(
            r#"{{"messageType":"{message_type}","owner":"123456789012","logGroup":"/aws/eks/prod/cluster","logStream":"kube-apiserver-audit-0a1b","subscriptionFilters":["all"],"logEvents":[{}]}}"#,
            messages
                .iter()
                .enumerate()
                .map(|(i, m)| format!(r#"{{"id":"{i}","timestamp":1700000000000,"message":{m}}}"#))
                .collect::<Vec<_>>()
                .join(",")
        )
    }

    fn gzip(bytes: &[u8]) -> Bytes {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        Bytes::from(encoder.finish().unwrap())
    }

    /// `usize::MAX` means no limit: it once overflowed `max + 1`, which panicked in a
    /// debug build and inflated nothing in a release build.
    #[test]
    fn gzip_inflates_whole_with_no_limit_and_refuses_past_a_limit() {
        let body = gzip(EVENT_A.as_bytes());
        let inflated = gunzip_if_gzip(body.clone(), usize::MAX).unwrap();
        assert_eq!(inflated, EVENT_A.as_bytes());
        let refused = gunzip_if_gzip(body, EVENT_A.len() - 1).unwrap_err();
        assert!(refused.contains("inflates to more than"), "{refused}");
    }

    #[test]
    fn cloudwatch_payloads_plain_or_gzip_yield_each_message() {
        let payload = cloudwatch(
            "DATA_MESSAGE",
            &[
                string(EVENT_A),
                string(EVENT_B),
                string("I1201 10:00:00 klog line"),
            ],
        );
        let logs = envelope(Decoding::CloudwatchLogs);
        for body in [Bytes::from(payload.clone()), gzip(payload.as_bytes())] {
            let decoded = decode(&body, Shape::Json, &logs).unwrap();
            let raws: Vec<&[u8]> = decoded.events.iter().map(|e| e.raw().as_ref()).collect();
            assert_eq!(raws, [EVENT_A.as_bytes(), EVENT_B.as_bytes()]);
            assert_eq!(decoded.malformed.len(), 1);
            assert_eq!(decoded.malformed[0].kind, NOT_AUDIT);
            assert_eq!(decoded.malformed[0].location, "logEvents[2]");
        }
    }

    #[test]
    fn control_messages_hold_nothing_and_other_message_types_are_refused() {
        let logs = envelope(Decoding::CloudwatchLogs);
        let control = cloudwatch(
            "CONTROL_MESSAGE",
            &[string(
                "CWL CONTROL MESSAGE: Checking health of destination Firehose.",
            )],
        );
        let decoded = decode(&gzip(control.as_bytes()), Shape::Json, &logs).unwrap();
        assert!(decoded.events.is_empty() && decoded.malformed.is_empty());
        assert!(
            decode(&Bytes::from(cloudwatch("OTHER", &[])), Shape::Json, &logs)
                .unwrap_err()
                .0
                .starts_with("messageType")
        );
        assert!(decode(&Bytes::from_static(b"\x1f\x8bnot gzip"), Shape::Json, &logs).is_err());
    }

    #[test]
    fn kept_envelope_fields_become_annotations() {
        let logs = Envelope {
            decoding: Decoding::CloudwatchLogs,
            keep: vec![EnvelopeField::LogGroup, EnvelopeField::LogStream],
        };
        let decoded = decode(
            &Bytes::from(cloudwatch("DATA_MESSAGE", &[string(EVENT_A)])),
            Shape::Json,
            &logs,
        )
        .unwrap();
        let event = &decoded.events[0];
        assert_eq!(
            event.get_path(["annotations", LOG_GROUP_ANNOTATION]),
            Some(&serde_json::Value::from("/aws/eks/prod/cluster"))
        );
        assert_eq!(
            event.get_path(["annotations", LOG_STREAM_ANNOTATION]),
            Some(&serde_json::Value::from("kube-apiserver-audit-0a1b"))
        );
        assert_eq!(event.get_str("auditID"), Some("a"));
        assert!(Envelope {
            decoding: Decoding::Audit,
            keep: vec![EnvelopeField::LogGroup]
        }
        .problem()
        .is_some());
    }

    #[test]
    fn audit_decoding_is_the_plain_decoder() {
        let body = Bytes::from(format!("{EVENT_A}\n{EVENT_B}\n"));
        let decoded = decode(&body, Shape::Json, &envelope(Decoding::Audit)).unwrap();
        assert_eq!(decoded.events.len(), 2);
    }
}
