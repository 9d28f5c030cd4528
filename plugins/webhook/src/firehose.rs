//! `protocol: firehose`: Amazon Data Firehose's HTTP endpoint delivery contract, which is
//! how EKS audit logs reach auditflow from CloudWatch Logs (a subscription filter on
//! `/aws/eks/<cluster>/cluster` into a Firehose stream whose destination is this source).
//!
//! - The request: `{"requestId":…,"timestamp":…,"records":[{"data":"<base64>"}]}`, the
//!   whole body possibly gzip (`Content-Encoding: gzip`, inflated by the server like any
//!   body), the same id in `X-Amz-Firehose-Request-Id`. Each record's data is base64; a
//!   record that is itself gzip (CloudWatch Logs always compresses) is detected by its
//!   magic number and inflated, then read with the source's `decoding`.
//! - The credentials: `X-Amz-Firehose-Access-Key`, compared in constant time with the
//!   digests of `auth.access_keys`; the key is never logged.
//! - The answer: `200 {"requestId":…,"timestamp":<ms>}` once every event of the request
//!   was delivered; any other status carries `{"requestId","timestamp","errorMessage"}`,
//!   and Firehose resends the whole request (so duplicates are possible: `dedupe`).
//!
//! Everything else (body limits, the byte budget, TLS, back-pressure as 503) is the
//! `kube_apiserver` protocol's, shared in `server`.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use auditflow_core::decode::{Decoded, Malformed, Refused, Shape};
use auditflow_core::envelope::{self, Envelope};
use base64::Engine;
use bytes::Bytes;
use hyper::header::HeaderMap;
use hyper::StatusCode;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::server::Reply;
use crate::TokenDigest;

/// The header that carries the request's id, echoed in the answer.
pub(crate) const REQUEST_ID_HEADER: &str = "x-amz-firehose-request-id";
/// The header that carries the access key configured on the Firehose stream.
pub(crate) const ACCESS_KEY_HEADER: &str = "x-amz-firehose-access-key";

/// What a request speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// kube-apiserver's audit webhook backend: `EventList` bodies, bearer tokens.
    #[default]
    KubeApiserver,
    /// Amazon Data Firehose's HTTP endpoint delivery: base64 records, each read with
    /// `decoding` (`cloudwatch_logs` for EKS audit logs), `X-Amz-Firehose-Access-Key`
    /// checked against `auth.access_keys`.
    Firehose,
}

/// How request bodies become events: the protocol's framing around the `decoding`.
#[derive(Debug, Clone)]
pub(crate) struct BodyDecoding {
    pub protocol: Protocol,
    pub envelope: Envelope,
    /// A record inflates to at most this many bytes (`max_body_bytes`).
    pub max_record_bytes: usize,
}

impl BodyDecoding {
    /// The body's events and refused items.
    pub(crate) fn decode(&self, body: &Bytes, shape: Shape) -> Result<Decoded, Refused> {
        match self.protocol {
            Protocol::KubeApiserver => envelope::decode(body, shape, &self.envelope),
            Protocol::Firehose => self.firehose(body),
        }
    }

    fn firehose(&self, body: &Bytes) -> Result<Decoded, Refused> {
        let request: FirehoseRequest = serde_json::from_slice(body).map_err(|error| {
            Refused(format!(
                "not a Firehose request ({{\"requestId\",\"timestamp\",\"records\":[{{\"data\"}}]}}): {error}"
            ))
        })?;
        let mut decoded = Decoded::default();
        for (index, record) in request.records.iter().enumerate() {
            let refused = |reason: String, raw: Bytes| Malformed {
                location: format!("records[{index}]"),
                reason,
                kind: "malformed",
                raw,
                item: Some(index),
            };
            let data = match base64::engine::general_purpose::STANDARD.decode(&*record.data) {
                Ok(data) => Bytes::from(data),
                Err(error) => {
                    let raw = Bytes::copy_from_slice(record.data.as_bytes());
                    decoded
                        .malformed
                        .push(refused(format!("data is not base64: {error}"), raw));
                    continue;
                }
            };
            let data = match envelope::gunzip_if_gzip(data.clone(), self.max_record_bytes) {
                Ok(data) => data,
                Err(error) => {
                    decoded
                        .malformed
                        .push(refused(format!("data is gzip but {error}"), data));
                    continue;
                }
            };
            let before = decoded.malformed.len();
            match envelope::decode_into(&data, Shape::Json, &self.envelope, &mut decoded) {
                Ok(()) => {
                    for malformed in &mut decoded.malformed[before..] {
                        malformed.location = format!("records[{index}]: {}", malformed.location);
                        malformed.item = Some(index);
                    }
                }
                Err(error) => decoded.malformed.push(refused(error.0, data)),
            }
        }
        Ok(decoded)
    }
}

#[derive(Deserialize)]
struct FirehoseRequest<'a> {
    #[serde(borrow)]
    records: Vec<FirehoseRecord<'a>>,
}

#[derive(Deserialize)]
struct FirehoseRecord<'a> {
    #[serde(borrow)]
    data: Cow<'a, str>,
}

/// The request id of a Firehose request, for the answer; a request without one is no
/// Firehose request.
pub(crate) fn request_id(headers: &HeaderMap) -> Result<String, Reply> {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            Reply::error(
                StatusCode::BAD_REQUEST,
                "missing X-Amz-Firehose-Request-Id: this endpoint speaks Firehose's HTTP endpoint delivery (protocol: firehose)",
            )
        })
}

/// Checks `X-Amz-Firehose-Access-Key` against the keys' digests; every key is compared.
pub(crate) fn authenticate(headers: &HeaderMap, keys: &[TokenDigest]) -> Result<(), Reply> {
    let unauthorized = |message: &str| Reply::error(StatusCode::UNAUTHORIZED, message);
    let presented = headers
        .get(ACCESS_KEY_HEADER)
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| {
            unauthorized("missing X-Amz-Firehose-Access-Key: set the access key of the Firehose stream's HTTP endpoint destination")
        })?;
    let presented = TokenDigest::of(presented);
    let matched = keys
        .iter()
        .fold(false, |matched, key| key.matches(&presented) | matched);
    if matched {
        Ok(())
    } else {
        Err(unauthorized(
            "the access key is not one this receiver accepts (auth.access_keys)",
        ))
    }
}

/// `reply` in the contract's terms: `{"requestId","timestamp"}` for success, with
/// `errorMessage` otherwise; the status and headers (`Retry-After`) stay.
pub(crate) fn answer(mut reply: Reply, request_id: &str) -> Reply {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    let mut body = serde_json::json!({ "requestId": request_id, "timestamp": timestamp });
    if !reply.status.is_success() {
        let message = reply
            .body
            .get("error")
            .and_then(|error| error.as_str())
            .unwrap_or("the request failed");
        body["errorMessage"] = serde_json::Value::from(message);
    }
    reply.body = body;
    reply
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use auditflow_core::envelope::Decoding;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn records_are_base64_then_gzip_then_cloudwatch_payloads() {
        let event = r#"{"auditID":"a","verb":"get","requestURI":"/x?a\u0026b"}"#;
        let payload = format!(
            r#"{{"messageType":"DATA_MESSAGE","logGroup":"/aws/eks/c/cluster","logStream":"kube-apiserver-audit-1","logEvents":[{{"id":"1","timestamp":1,"message":{}}}]}}"#,
            serde_json::to_string(event).unwrap()
        );
        let control = r#"{"messageType":"CONTROL_MESSAGE","logEvents":[{"id":"","timestamp":1,"message":"CWL CONTROL MESSAGE"}]}"#;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let body = format!(
            r#"{{"requestId":"r-1","timestamp":1,"records":[{{"data":"{}"}},{{"data":"{}"}},{{"data":"{}"}},{{"data":"%%"}}]}}"#,
            b64(&gzip(payload.as_bytes())),
            b64(&gzip(control.as_bytes())),
            b64(payload.as_bytes()),
        );
        let decoding = BodyDecoding {
            protocol: Protocol::Firehose,
            envelope: Envelope {
                decoding: Decoding::CloudwatchLogs,
                keep: Vec::new(),
            },
            max_record_bytes: 1 << 20,
        };
        let decoded = decoding.decode(&Bytes::from(body), Shape::Json).unwrap();
        let raws: Vec<&[u8]> = decoded.events.iter().map(|e| e.raw().as_ref()).collect();
        assert_eq!(raws, [event.as_bytes(), event.as_bytes()]);
        assert_eq!(decoded.malformed.len(), 1);
        assert_eq!(decoded.malformed[0].location, "records[3]");
        assert!(decoding
            .decode(&Bytes::from_static(b"{\"items\":[]}"), Shape::Json)
            .is_err());
    }

    #[test]
    fn answers_echo_the_request_id_and_carry_the_error_message() {
        let ok = answer(
            Reply {
                status: StatusCode::OK,
                body: serde_json::json!({"accepted": 1}),
                headers: Vec::new(),
            },
            "r-9",
        );
        assert_eq!(ok.body["requestId"], "r-9");
        assert!(ok.body["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
        assert!(ok.body.get("errorMessage").is_none());
        let busy = answer(
            Reply::error(StatusCode::SERVICE_UNAVAILABLE, "later"),
            "r-9",
        );
        assert_eq!(busy.body["errorMessage"], "later");
        assert_eq!(busy.headers.len(), 1, "Retry-After stays");
    }

    #[test]
    fn access_keys_are_checked() {
        let keys = [TokenDigest::of("k1"), TokenDigest::of("k2")];
        let mut headers = HeaderMap::new();
        assert_eq!(
            authenticate(&headers, &keys).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        headers.insert(ACCESS_KEY_HEADER, "k3".parse().unwrap());
        assert!(authenticate(&headers, &keys).is_err());
        headers.insert(ACCESS_KEY_HEADER, "k2".parse().unwrap());
        assert!(authenticate(&headers, &keys).is_ok());
    }
}
