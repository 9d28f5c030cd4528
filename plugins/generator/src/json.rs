//! Writing JSON pieces straight into a byte buffer: integers, UUIDs, RFC 3339 timestamps
//! with microseconds, base64url. No `fmt` machinery, no allocation.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `n` in decimal.
pub(crate) fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends `n` in decimal, zero-padded to `width` digits.
fn push_padded(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for at in (start..start + width).rev() {
        out[at] = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Appends `bytes` as lowercase hex.
pub(crate) fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    for byte in bytes {
        out.push(HEX[(byte >> 4) as usize]);
        out.push(HEX[(byte & 15) as usize]);
    }
}

/// Appends a version-4 UUID made from 128 random bits (`1b324196-e8ec-4ca7-9161-defb81ba7337`).
pub(crate) fn push_uuid(out: &mut Vec<u8>, bits: u128) {
    let mut bytes = bits.to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    push_hex(out, &bytes[0..4]);
    out.push(b'-');
    push_hex(out, &bytes[4..6]);
    out.push(b'-');
    push_hex(out, &bytes[6..8]);
    out.push(b'-');
    push_hex(out, &bytes[8..10]);
    out.push(b'-');
    push_hex(out, &bytes[10..16]);
}

/// Appends `micros` since the Unix epoch as kube-apiserver writes audit timestamps:
/// `2026-11-23T08:24:13.385382Z` (UTC, always six fractional digits).
pub(crate) fn push_timestamp_micros(out: &mut Vec<u8>, micros: i64) {
    push_datetime(out, micros.div_euclid(1_000_000));
    out.push(b'.');
    push_padded(out, micros.rem_euclid(1_000_000) as u64, 6);
    out.push(b'Z');
}

/// Appends whole seconds since the Unix epoch as `2026-11-23T08:24:13Z` (object metadata).
pub(crate) fn push_timestamp_secs(out: &mut Vec<u8>, secs: i64) {
    push_datetime(out, secs);
    out.push(b'Z');
}

fn push_datetime(out: &mut Vec<u8>, secs: i64) {
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let time = secs.rem_euclid(86_400) as u64;
    push_padded(out, year as u64, 4);
    out.push(b'-');
    push_padded(out, month, 2);
    out.push(b'-');
    push_padded(out, day, 2);
    out.push(b'T');
    push_padded(out, time / 3600, 2);
    out.push(b':');
    push_padded(out, time / 60 % 60, 2);
    out.push(b':');
    push_padded(out, time % 60, 2);
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Appends `bytes` in unpadded base64url (the alphabet of JWT segments).
pub(crate) fn push_base64url(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    out.resize(
        start + base64::encoded_len(bytes.len(), false).unwrap_or(0),
        0,
    );
    let written = URL_SAFE_NO_PAD
        .encode_slice(bytes, &mut out[start..])
        .expect("the buffer was sized for the encoding");
    out.truncate(start + written);
}

/// Appends `bytes` in standard padded base64 (Secret `data` values).
pub(crate) fn push_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    out.resize(
        start + base64::encoded_len(bytes.len(), true).unwrap_or(0),
        0,
    );
    let written = STANDARD
        .encode_slice(bytes, &mut out[start..])
        .expect("the buffer was sized for the encoding");
    out.truncate(start + written);
}

/// One value for a [`fill`] template hole.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    /// Bytes copied as they are (already JSON-escaped).
    Str(&'a str),
    Raw(&'a [u8]),
    Num(u64),
    Uuid(u128),
    /// Whole seconds since the epoch, as object metadata writes them.
    Secs(i64),
    /// Microseconds since the epoch (`MicroTime`).
    Micros(i64),
    Hex(&'a [u8]),
    /// `,"namespace":"<ns>"`, or nothing for a cluster-scoped object.
    Namespace(Option<&'a str>),
}

/// The hole marker in templates: a backtick, which no JSON this crate writes contains.
const HOLE: u8 = b'`';

/// Appends `template` with each backtick replaced by the next of `args`.
pub(crate) fn fill(out: &mut Vec<u8>, template: &str, args: &[Arg<'_>]) {
    let mut rest = template.as_bytes();
    let mut args = args.iter();
    while let Some(at) = memchr::memchr(HOLE, rest) {
        out.extend_from_slice(&rest[..at]);
        match *args.next().expect("a value for every template hole") {
            Arg::Str(s) => out.extend_from_slice(s.as_bytes()),
            Arg::Raw(bytes) => out.extend_from_slice(bytes),
            Arg::Num(n) => push_u64(out, n),
            Arg::Uuid(bits) => push_uuid(out, bits),
            Arg::Secs(secs) => push_timestamp_secs(out, secs),
            Arg::Micros(micros) => push_timestamp_micros(out, micros),
            Arg::Hex(bytes) => push_hex(out, bytes),
            Arg::Namespace(Some(ns)) => {
                out.extend_from_slice(b",\"namespace\":\"");
                out.extend_from_slice(ns.as_bytes());
                out.push(b'"');
            }
            Arg::Namespace(None) => {}
        }
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
    debug_assert!(args.next().is_none(), "more values than template holes");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(write: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        write(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn integers_are_decimal() {
        assert_eq!(text(|o| push_u64(o, 0)), "0");
        assert_eq!(text(|o| push_u64(o, 48931)), "48931");
        assert_eq!(text(|o| push_u64(o, u64::MAX)), u64::MAX.to_string());
    }

    #[test]
    fn timestamps_match_the_api_server_format() {
        // 2026-11-23T08:24:13.385382Z, the first event of the real capture.
        let micros = 1_795_422_253_385_382;
        assert_eq!(
            text(|o| push_timestamp_micros(o, micros)),
            "2026-11-23T08:24:13.385382Z"
        );
        assert_eq!(
            text(|o| push_timestamp_micros(o, 951_782_400_000_001)),
            "2000-02-29T00:00:00.000001Z"
        );
        assert_eq!(text(|o| push_timestamp_secs(o, 0)), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn uuids_are_version_4() {
        let id = text(|o| push_uuid(o, u128::MAX));
        assert_eq!(id, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let id = text(|o| push_uuid(o, 0));
        assert_eq!(id, "00000000-0000-4000-8000-000000000000");
    }

    #[test]
    fn templates_fill_holes_in_order() {
        let out = text(|o| {
            fill(
                o,
                r#"{"name":"`"`,"n":`}"#,
                &[Arg::Str("web"), Arg::Namespace(Some("team-a")), Arg::Num(7)],
            )
        });
        assert_eq!(out, r#"{"name":"web","namespace":"team-a","n":7}"#);
        let out = text(|o| {
            fill(
                o,
                r#"{"name":"`"`}"#,
                &[Arg::Str("n1"), Arg::Namespace(None)],
            )
        });
        assert_eq!(out, r#"{"name":"n1"}"#);
    }

    #[test]
    fn base64_flavours() {
        assert_eq!(
            text(|o| push_base64url(o, b"{\"alg\":\"RS256\"}")),
            "eyJhbGciOiJSUzI1NiJ9"
        );
        assert_eq!(text(|o| push_base64(o, b"legacy_app")), "bGVnYWN5X2FwcA==");
    }
}
