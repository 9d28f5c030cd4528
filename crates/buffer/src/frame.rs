//! How one record sits in a segment file, and how damaged records are found and skipped.
//!
//! ```text
//! | len: u32 LE | crc: u32 LE | written_at_ms: u64 LE | payload: len bytes |
//! ```
//!
//! `crc` is CRC-32 (IEEE) over `written_at_ms` and the payload. A record whose length
//! runs past the end of its segment, or whose checksum does not match, is damaged; the
//! scanner then looks for the next offset where a whole record with a matching checksum
//! starts (a false match needs a 32-bit checksum collision) and carries on from there.

/// Bytes before the payload.
pub const HEADER_BYTES: usize = 16;

/// The largest payload a record may have. A header claiming more is damaged.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024 * 1024;

/// Appends one record to `out`: `write_payload` writes the payload after the header, and
/// the header is filled in afterwards, so the payload is written exactly once.
pub fn push(out: &mut Vec<u8>, written_at_ms: u64, write_payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&written_at_ms.to_le_bytes());
    write_payload(out);
    let len = (out.len() - start - HEADER_BYTES) as u32;
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One record found in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Offset of the record's header in the scanned buffer.
    pub at: usize,
    /// The payload's range in the scanned buffer.
    pub payload: (usize, usize),
    /// When the record was written, in milliseconds since the Unix epoch (from its header).
    pub written_at_ms: u64,
}

/// What [`next`] saw at an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// A whole, intact record.
    Record(Found),
    /// The buffer ends inside a record that may still be whole on disk: read more.
    Incomplete,
    /// A damaged record: a checksum mismatch, an impossible length, or a record cut by the
    /// end of the segment (`at_end` says the buffer reaches the segment's end).
    Damaged,
}

/// Reads the record at `at` in `buf`. `at_end` says `buf` reaches the end of the segment,
/// so that a record cut short there is damaged rather than incomplete.
///
/// # Panics
/// When `at` is past the end of `buf`.
pub fn next(buf: &[u8], at: usize, at_end: bool) -> Scan {
    let rest = &buf[at..];
    if rest.len() < HEADER_BYTES {
        return if at_end {
            Scan::Damaged
        } else {
            Scan::Incomplete
        };
    }
    let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_PAYLOAD_BYTES {
        return Scan::Damaged;
    }
    if rest.len() < HEADER_BYTES + len {
        return if at_end {
            Scan::Damaged
        } else {
            Scan::Incomplete
        };
    }
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    if crc32fast::hash(&rest[8..HEADER_BYTES + len]) != crc {
        return Scan::Damaged;
    }
    let written_at_ms = u64::from_le_bytes(rest[8..16].try_into().expect("8 bytes"));
    Scan::Record(Found {
        at,
        payload: (at + HEADER_BYTES, at + HEADER_BYTES + len),
        written_at_ms,
    })
}

/// The first offset after `damaged` where an intact record starts, or `None` if no intact
/// record follows in `buf` (which must reach the end of the segment).
pub fn resync(buf: &[u8], damaged: usize) -> Option<usize> {
    (damaged + 1..buf.len().saturating_sub(HEADER_BYTES - 1))
        .find(|&at| matches!(next(buf, at, true), Scan::Record(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(payloads: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, payload) in payloads.iter().enumerate() {
            push(&mut out, 1000 + i as u64, |buf| {
                buf.extend_from_slice(payload.as_bytes())
            });
        }
        out
    }

    fn payloads(buf: &[u8]) -> (Vec<String>, usize) {
        let (mut found, mut damaged, mut at) = (Vec::new(), 0, 0);
        while at < buf.len() {
            match next(buf, at, true) {
                Scan::Record(record) => {
                    let (start, end) = record.payload;
                    found.push(String::from_utf8_lossy(&buf[start..end]).into_owned());
                    at = end;
                }
                Scan::Incomplete => unreachable!("the whole segment is given"),
                Scan::Damaged => {
                    damaged += 1;
                    at = resync(buf, at).unwrap_or(buf.len());
                }
            }
        }
        (found, damaged)
    }

    #[test]
    fn records_read_back_in_order_with_their_times() {
        let buf = records(&[r#"{"a":1}"#, "", r#"{"b":2}"#]);
        assert_eq!(
            payloads(&buf),
            (vec![r#"{"a":1}"#.into(), "".into(), r#"{"b":2}"#.into()], 0)
        );
        let Scan::Record(second) = next(&buf, HEADER_BYTES + 7, true) else {
            panic!("a record starts after the first");
        };
        assert_eq!(second.written_at_ms, 1001);
    }

    #[test]
    fn a_torn_last_record_is_damaged_at_the_end_and_incomplete_before_it() {
        let buf = records(&["one", "two"]);
        let torn = &buf[..buf.len() - 2];
        assert_eq!(next(torn, HEADER_BYTES + 3, false), Scan::Incomplete);
        assert_eq!(payloads(torn), (vec!["one".into()], 1));
        // A header cut in the middle too.
        assert_eq!(
            payloads(&buf[..HEADER_BYTES + 3 + 5]),
            (vec!["one".into()], 1)
        );
    }

    #[test]
    fn a_flipped_byte_damages_one_record_and_the_rest_are_found() {
        for flip in [2, 6, 12, HEADER_BYTES + 1] {
            let mut buf = records(&["first", "second", "third"]);
            let second = HEADER_BYTES + 5;
            buf[second + flip] ^= 0x40;
            assert_eq!(
                payloads(&buf),
                (vec!["first".into(), "third".into()], 1),
                "byte {flip} of the second record flipped"
            );
        }
    }
}
