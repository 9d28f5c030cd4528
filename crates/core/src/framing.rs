//! Splitting a byte stream into records, without copying them.
//!
//! Bytes are read straight into the framer's buffer; each complete record is split off as
//! a [`Bytes`] that shares that buffer. Two framings ([`Framing`]):
//!
//! - **lines**: one record per line, as kube-apiserver's log backend writes them (NDJSON);
//! - **json_stream**: one record per top-level JSON value, however it is laid out: NDJSON,
//!   objects one after another on one line, or pretty-printed objects over many lines (as
//!   `jq .` writes them).
//!
//! Both share what a crash can leave in a file:
//! - **NUL padding.** A power loss can leave a run of `\0` bytes (preallocated blocks)
//!   before the lines written after the restart, with no newline in between. A NUL byte
//!   can never be part of JSON text, so a NUL run ends the record before it (a torn line,
//!   or a whole event that lost its newline) and is reported as [`Frame::Padding`]; the
//!   next record starts after it. Padding is never held in memory, however long.
//! - **Oversized records.** A record longer than `max_bytes` is not kept in memory: it is
//!   skipped to its end and reported as [`Frame::Oversized`], so the reader resynchronises
//!   on the next record.
//!
//! In a JSON stream, a torn value (a crash mid-write) would swallow the values after it,
//! so a line that starts with `{` in its first column while a value is open ends that value
//! there: pretty printers indent nested objects, so only a new top-level value starts at
//! column 1.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

/// How much room to make before each read.
const READ_CHUNK: usize = 256 * 1024;

/// How a source splits its input into records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// One JSON event per line (NDJSON), as kube-apiserver's log backend writes them.
    #[default]
    Lines,
    /// JSON values one after another, in any layout: NDJSON, objects back to back, or
    /// pretty-printed objects over several lines.
    JsonStream,
}

/// One record out of the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A record: a line without its `\n` (and without a `\r` before it), or one JSON value.
    /// `end` is the stream offset just past it (past the newline, for a line).
    Line {
        /// The record's bytes, sharing the read buffer's.
        line: Bytes,
        /// The stream offset just past the record and its newline, if it had one.
        end: u64,
    },
    /// A record longer than the limit, skipped whole. `start` is where it began, `len` its
    /// length without the newline.
    Oversized {
        /// The stream offset of the record's first byte.
        start: u64,
        /// The record's length in bytes, without its newline.
        len: u64,
        /// The stream offset just past the record and its newline, if it had one.
        end: u64,
    },
    /// A run of `len` NUL bytes ending at `end`: padding a crash left, skipped.
    Padding {
        /// How many NUL bytes were skipped.
        len: u64,
        /// The stream offset just past the last of them.
        end: u64,
    },
}

/// Record framing over a stream that is fed by reading into [`Framer::buffer`].
#[derive(Debug)]
pub struct Framer {
    framing: Framing,
    buf: BytesMut,
    max_bytes: usize,
    /// Stream offset of `buf[0]`.
    offset: u64,
    /// Bytes of `buf` already examined.
    scanned: usize,
    /// Inside an oversized record: (its start offset, bytes dropped so far).
    skipping: Option<(u64, u64)>,
    /// Inside a JSON value (json_stream only).
    value: ValueState,
    /// At the very start of the stream, where a UTF-8 byte-order mark is skipped.
    at_start: bool,
    /// NUL bytes dropped so far in a run whose end has not arrived yet: a run is reported
    /// once, when it ends, however many reads it spans.
    padding: u64,
}

/// Where a JSON-stream scan is inside the current value.
#[derive(Debug, Default, Clone, Copy)]
struct ValueState {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// In a record that does not start a JSON value: it is one line, however the reads
    /// cut it.
    in_line: bool,
}

impl Framer {
    /// A framer for a stream read from `offset` on.
    pub fn new(framing: Framing, max_bytes: usize, offset: u64) -> Framer {
        Framer {
            framing,
            buf: BytesMut::new(),
            max_bytes,
            offset,
            scanned: 0,
            skipping: None,
            value: ValueState::default(),
            at_start: offset == 0,
            padding: 0,
        }
    }

    /// This framer with other options, for the instance a reload builds in place of the one
    /// that read the stream so far: it keeps the bytes held, where they start, a record
    /// being skipped as oversized and a NUL run not yet reported. The held bytes are
    /// scanned again when `framing` differs (the scan state belongs to the old framing);
    /// `max_bytes` applies from the record being held on.
    pub fn resume_with(self, framing: Framing, max_bytes: usize) -> Framer {
        let rescan = framing != self.framing;
        Framer {
            framing,
            max_bytes,
            scanned: if rescan { 0 } else { self.scanned },
            value: if rescan {
                ValueState::default()
            } else {
                self.value
            },
            ..self
        }
    }

    /// Line framing ([`Framing::Lines`]).
    pub fn lines(max_bytes: usize, offset: u64) -> Framer {
        Framer::new(Framing::Lines, max_bytes, offset)
    }

    /// The buffer to read into (`AsyncReadExt::read_buf` / `Read` into its spare room),
    /// with room reserved for one more chunk.
    pub fn buffer(&mut self) -> &mut BytesMut {
        self.buf.reserve(READ_CHUNK);
        &mut self.buf
    }

    /// Appends bytes that were read elsewhere.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Stream offset up to which every byte has been framed (the start of the partial
    /// record still buffered, if any).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes held for a record whose end has not arrived yet.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }

    /// The next complete record, if the buffer holds one.
    pub fn next_frame(&mut self) -> Option<Frame> {
        if self.at_start {
            // A UTF-8 byte-order mark (some Windows tools write one) is no part of the JSON.
            const BOM: &[u8] = b"\xef\xbb\xbf";
            if self.buf.len() < BOM.len() && BOM.starts_with(&self.buf) {
                return None;
            }
            self.at_start = false;
            if self.buf.starts_with(BOM) {
                let _ = self.buf.split_to(BOM.len());
                self.offset += BOM.len() as u64;
            }
        }
        if self.scanned == 0 && self.skipping.is_none() {
            if let Some(padding) = self.skip_padding() {
                return Some(padding);
            }
        }
        match self.framing {
            Framing::Lines => self.next_line(),
            Framing::JsonStream => self.next_value(),
        }
    }

    /// At the end of the stream: the last record if it had no end.
    pub fn finish(&mut self) -> Option<Frame> {
        if let Some(frame) = self.next_frame() {
            return Some(frame);
        }
        if self.padding > 0 {
            return Some(Frame::Padding {
                len: std::mem::take(&mut self.padding),
                end: self.offset,
            });
        }
        self.at_start = false;
        self.value = ValueState::default();
        self.scanned = 0;
        if let Some((start, dropped)) = self.skipping.take() {
            let len = dropped + self.buf.len() as u64;
            self.offset += self.buf.len() as u64;
            self.buf.clear();
            return Some(Frame::Oversized {
                start,
                len,
                end: self.offset,
            });
        }
        if self.buf.iter().all(u8::is_ascii_whitespace) {
            self.offset += self.buf.len() as u64;
            self.buf.clear();
            return None;
        }
        let len = self.buf.len();
        Some(self.cut(len, len))
    }

    /// A run of NUL bytes at the start of the buffer, dropped (all of it that is here) and
    /// reported once something else follows it.
    fn skip_padding(&mut self) -> Option<Frame> {
        let run = self.buf.iter().take_while(|&&b| b == 0).count();
        if run > 0 {
            let _ = self.buf.split_to(run);
            self.offset += run as u64;
            self.padding += run as u64;
        }
        if self.padding == 0 || self.buf.is_empty() {
            // The run may go on in the next read.
            return None;
        }
        Some(Frame::Padding {
            len: std::mem::take(&mut self.padding),
            end: self.offset,
        })
    }

    fn next_line(&mut self) -> Option<Frame> {
        match memchr::memchr2(b'\n', 0, &self.buf[self.scanned..]) {
            Some(found) => {
                let at = self.scanned + found;
                let consumed = if self.buf[at] == b'\n' { at + 1 } else { at };
                Some(self.cut(at, consumed))
            }
            None => {
                self.scanned = self.buf.len();
                self.drop_if_oversized();
                None
            }
        }
    }

    fn next_value(&mut self) -> Option<Frame> {
        if self.value.in_line {
            return self.next_stray_line();
        }
        if self.skipping.is_none() && self.scanned == 0 {
            // Between values: whitespace belongs to no record.
            let blank = self
                .buf
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .count();
            if blank > 0 {
                let _ = self.buf.split_to(blank);
                self.offset += blank as u64;
            }
            match self.buf.first() {
                None => return None,
                Some(0) => return self.skip_padding(),
                Some(b'{' | b'[') => {}
                // Not a value that can hold events: one line of it is one bad record.
                Some(_) => {
                    self.value.in_line = true;
                    return self.next_stray_line();
                }
            }
        }
        let mut state = self.value;
        let mut at = self.scanned;
        // NUL bytes are rare: find the first once, and scan only up to it.
        let end = memchr::memchr(0, &self.buf[at..]).map_or(self.buf.len(), |nul| at + nul);
        while at < self.buf.len() {
            if at == end {
                // A crash cut the value short: it ends here.
                self.value = ValueState::default();
                return Some(self.cut(at, at));
            }
            if state.in_string && !state.escaped {
                // Most of an event is string content: jump to what can end or escape it.
                match memchr::memchr3(b'"', b'\\', b'\n', &self.buf[at..end]) {
                    Some(skip) => at += skip,
                    None => {
                        at = end;
                        continue;
                    }
                }
            }
            let byte = self.buf[at];
            if state.in_string {
                if byte == b'\n' {
                    // JSON strings hold no raw newline: the value was cut short here.
                    self.value = ValueState::default();
                    return Some(self.cut(at, at + 1));
                }
                match (state.escaped, byte) {
                    (true, _) => state.escaped = false,
                    (false, b'\\') => state.escaped = true,
                    (false, b'"') => state.in_string = false,
                    _ => {}
                }
            } else {
                match byte {
                    b'"' => state.in_string = true,
                    b'{' | b'[' => state.depth += 1,
                    b'}' | b']' => {
                        state.depth = state.depth.saturating_sub(1);
                        if state.depth == 0 {
                            self.value = ValueState::default();
                            // The line end right after a value goes with it (NDJSON).
                            let mut consumed = at + 1;
                            match (self.buf.get(consumed), self.buf.get(consumed + 1)) {
                                (Some(b'\n'), _) => consumed += 1,
                                (Some(b'\r'), Some(b'\n')) => consumed += 2,
                                _ => {}
                            }
                            return Some(self.cut(at + 1, consumed));
                        }
                    }
                    b'\n' => match self.buf.get(at + 1) {
                        // A new top-level object: the open value was torn.
                        Some(b'{') if self.skipping.is_some() || at > 0 => {
                            self.value = ValueState::default();
                            return Some(self.cut(at, at + 1));
                        }
                        Some(_) => {}
                        // Wait for the next byte to decide.
                        None => break,
                    },
                    _ => {}
                }
            }
            at += 1;
        }
        self.value = state;
        self.scanned = at;
        self.drop_if_oversized();
        None
    }

    /// In a JSON stream, a line that is not a JSON value, to its end.
    fn next_stray_line(&mut self) -> Option<Frame> {
        let frame = self.next_line();
        if frame.is_some() {
            self.value.in_line = false;
        }
        frame
    }

    /// Past `max_bytes` without an end: drop what is held and keep skipping.
    fn drop_if_oversized(&mut self) {
        // A `\r` last may be the start of the `\r\n` that `cut` leaves out of the record:
        // it stays held until the next byte says.
        let kept = usize::from(self.scanned > 0 && self.buf[self.scanned - 1] == b'\r');
        let held = self.scanned - kept;
        if held > self.max_bytes || (self.skipping.is_some() && held > 0) {
            let (start, dropped) = self.skipping.unwrap_or((self.offset, 0));
            self.skipping = Some((start, dropped + held as u64));
            let _ = self.buf.split_to(held);
            self.offset += held as u64;
            self.scanned = kept;
        }
    }

    /// Splits off a record of `len` bytes, consuming `consumed` (the record plus its
    /// newline, if any), as a line or, past the limit or after skipping, as oversized.
    fn cut(&mut self, len: usize, consumed: usize) -> Frame {
        self.scanned = 0;
        let start = self.offset;
        let mut record = self.buf.split_to(consumed).freeze();
        self.offset += consumed as u64;
        record.truncate(len);
        if record.last() == Some(&b'\r') {
            record.truncate(len - 1);
        }
        if let Some((start, dropped)) = self.skipping.take() {
            return Frame::Oversized {
                start,
                len: dropped + record.len() as u64,
                end: self.offset,
            };
        }
        if record.len() > self.max_bytes {
            return Frame::Oversized {
                start,
                len: record.len() as u64,
                end: self.offset,
            };
        }
        Frame::Line {
            line: record,
            end: self.offset,
        }
    }
}

/// Splits a whole body (a JSON stream that is all here) into its top-level values, sharing
/// the body's bytes, and the padding between them, as [`Framing::JsonStream`] would.
pub fn json_values(body: &Bytes) -> impl Iterator<Item = Frame> + '_ {
    let mut framer = Framer::new(Framing::JsonStream, usize::MAX, 0);
    framer.buf = BytesMut::from(&body[..]);
    let mut finished = false;
    let mut previous_end = 0usize;
    std::iter::from_fn(move || {
        if let Some(frame) = framer.next_frame() {
            return Some(frame);
        }
        if finished {
            return None;
        }
        finished = true;
        framer.finish()
    })
    .map(move |frame| match frame {
        // The record starts after the whitespace that follows the previous one (and after
        // a byte-order mark at the very start, the only place the framer skips one).
        Frame::Line { line, end } => {
            let mut start = previous_end;
            if start == 0 && body.starts_with(b"\xef\xbb\xbf") {
                start = 3;
            }
            start += body[start..]
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .count();
            debug_assert_eq!(body.get(start..start + line.len()), Some(&line[..]));
            previous_end = end as usize;
            Frame::Line {
                line: body.slice(start..start + line.len()),
                end,
            }
        }
        Frame::Oversized { start, len, end } => {
            previous_end = end as usize;
            Frame::Oversized { start, len, end }
        }
        Frame::Padding { len, end } => {
            previous_end = end as usize;
            Frame::Padding { len, end }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(framer: &mut Framer) -> Vec<Frame> {
        std::iter::from_fn(|| framer.next_frame()).collect()
    }

    fn all(framing: Framing, max: usize, input: &[u8]) -> Vec<Frame> {
        let mut framer = Framer::new(framing, max, 0);
        framer.extend(input);
        let mut out = frames(&mut framer);
        out.extend(framer.finish());
        out
    }

    fn line(text: &str, end: u64) -> Frame {
        Frame::Line {
            line: Bytes::copy_from_slice(text.as_bytes()),
            end,
        }
    }

    #[test]
    fn a_partial_line_waits_for_its_newline() {
        let mut framer = Framer::lines(100, 0);
        framer.extend(b"{\"a\":1}\n{\"b\"");
        assert_eq!(frames(&mut framer), vec![line("{\"a\":1}", 8)]);
        assert_eq!(framer.offset(), 8);
        framer.extend(b":2}\r\n");
        assert_eq!(frames(&mut framer), vec![line("{\"b\":2}", 17)]);
        assert_eq!(framer.finish(), None);
    }

    #[test]
    fn an_oversized_line_is_skipped_and_the_next_one_kept() {
        let mut framer = Framer::lines(4, 10);
        framer.extend(b"ok\n0123456");
        assert_eq!(frames(&mut framer), vec![line("ok", 13)]);
        framer.extend(b"789");
        assert_eq!(frames(&mut framer), vec![]);
        assert!(framer.pending_bytes() == 0, "an oversized line is not held");
        framer.extend(b"\nnext\n");
        assert_eq!(
            frames(&mut framer),
            vec![
                Frame::Oversized {
                    start: 13,
                    len: 10,
                    end: 24
                },
                line("next", 29)
            ]
        );
    }

    #[test]
    fn the_last_line_without_newline_comes_out_at_the_end() {
        let mut framer = Framer::lines(100, 0);
        framer.extend(b"a\nb");
        assert_eq!(frames(&mut framer), vec![line("a", 2)]);
        assert_eq!(framer.finish(), Some(line("b", 3)));
    }

    #[test]
    fn nul_padding_ends_the_line_before_it_and_is_reported() {
        for framing in [Framing::Lines, Framing::JsonStream] {
            let mut input = b"{\"a\":1}\n{\"b\":2}".to_vec();
            input.extend([0; 5]);
            input.extend(b"{\"c\":3}\n");
            assert_eq!(
                all(framing, 100, &input),
                vec![
                    line("{\"a\":1}", 8),
                    line("{\"b\":2}", 15),
                    Frame::Padding { len: 5, end: 20 },
                    line("{\"c\":3}", 28),
                ],
                "{framing:?}"
            );
        }
    }

    #[test]
    fn padding_longer_than_the_limit_is_never_held() {
        let mut framer = Framer::lines(16, 0);
        framer.extend(b"{\"a\":1}\n");
        framer.extend(&[0; 1000]);
        assert_eq!(frames(&mut framer), vec![line("{\"a\":1}", 8)]);
        assert_eq!(framer.pending_bytes(), 0);
        assert_eq!(framer.offset(), 1008);
        framer.extend(b"{\"b\":2}\n");
        assert_eq!(
            frames(&mut framer),
            vec![
                Frame::Padding {
                    len: 1000,
                    end: 1008
                },
                line("{\"b\":2}", 1016)
            ]
        );
    }

    /// Each input framed whole and one byte at a time.
    fn framed_both_ways(framing: Framing, max_bytes: usize, input: &[u8]) -> Vec<Frame> {
        let whole = all(framing, max_bytes, input);
        let mut framer = Framer::new(framing, max_bytes, 0);
        let mut bytewise = Vec::new();
        for byte in input {
            framer.extend(std::slice::from_ref(byte));
            bytewise.extend(frames(&mut framer));
        }
        bytewise.extend(std::iter::from_fn(|| framer.finish()));
        assert_eq!(
            whole,
            bytewise,
            "{framing:?} {:?}",
            String::from_utf8_lossy(input)
        );
        whole
    }

    #[test]
    fn a_stray_line_in_a_json_stream_is_one_record_whatever_the_reads() {
        // What is left of a pretty-printed event torn by a crash: lines that start no
        // value, one of them holding a closing brace.
        let input = b"  \"resource\": \"leases\",\n    \"namespace\": \"x\"\n  }\n{\"a\":1}";
        assert_eq!(
            framed_both_ways(Framing::JsonStream, 1000, input),
            vec![
                line("\"resource\": \"leases\",", 24),
                line("\"namespace\": \"x\"", 45),
                line("}", 49),
                line("{\"a\":1}", 56),
            ]
        );
    }

    #[test]
    fn a_line_of_max_bytes_ending_in_crlf_is_kept_whatever_the_reads() {
        assert_eq!(
            framed_both_ways(Framing::Lines, 7, b"{\"a\":1}\r\n{\"b\":22}\r\n"),
            vec![
                line("{\"a\":1}", 9),
                Frame::Oversized {
                    start: 9,
                    len: 8,
                    end: 19
                },
            ]
        );
    }

    #[test]
    fn a_byte_order_mark_after_a_value_is_part_of_the_next_record() {
        // It panicked: the mark was taken for blank space, and the record cut past the end.
        let body = Bytes::from_static(b"\xef\xbb\xbf {}\xef\xbb\xbf{\"a\":1}");
        let records: Vec<Bytes> = json_values(&body)
            .map(|frame| match frame {
                Frame::Line { line, .. } => line,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(records, [&b"{}"[..], &b"\xef\xbb\xbf{\"a\":1}"[..]]);
    }

    #[test]
    fn a_nul_run_over_many_reads_is_reported_once() {
        for framing in [Framing::Lines, Framing::JsonStream] {
            let mut input = b"{\"a\":1}\n".to_vec();
            input.extend([0; 8192]);
            input.extend(b"{\"b\":2}\n");
            input.extend([0; 3000]);
            let mut framer = Framer::new(framing, 100, 0);
            let mut got = Vec::new();
            for chunk in input.chunks(1000) {
                framer.extend(chunk);
                got.extend(frames(&mut framer));
            }
            got.extend(std::iter::from_fn(|| framer.finish()));
            assert_eq!(
                got,
                vec![
                    line("{\"a\":1}", 8),
                    Frame::Padding {
                        len: 8192,
                        end: 8200
                    },
                    line("{\"b\":2}", 8208),
                    Frame::Padding {
                        len: 3000,
                        end: 11208
                    },
                ],
                "{framing:?}"
            );
        }
    }

    #[test]
    fn a_json_stream_splits_pretty_and_back_to_back_values() {
        let input =
            b"{\n  \"a\": \"}{\",\n  \"b\": [1, {\"c\": 2}]\n}\n{\"d\":1}{\"e\":\"\\\"}\"}  [1]\n";
        let records: Vec<String> = all(Framing::JsonStream, 1000, input)
            .into_iter()
            .map(|frame| match frame {
                Frame::Line { line, .. } => String::from_utf8(line.to_vec()).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            records,
            [
                "{\n  \"a\": \"}{\",\n  \"b\": [1, {\"c\": 2}]\n}",
                "{\"d\":1}",
                "{\"e\":\"\\\"}\"}",
                "[1]"
            ]
        );
    }

    #[test]
    fn a_json_stream_value_split_across_reads_waits_for_its_end() {
        let mut framer = Framer::new(Framing::JsonStream, 1000, 0);
        framer.extend(b"{\"a\":\n");
        assert_eq!(frames(&mut framer), vec![]);
        framer.extend(b"  {\"b\":1}}\n{");
        assert_eq!(frames(&mut framer), vec![line("{\"a\":\n  {\"b\":1}}", 17)]);
        framer.extend(b"}");
        assert_eq!(frames(&mut framer), vec![line("{}", 19)]);
    }

    #[test]
    fn a_torn_value_ends_where_the_next_top_level_object_starts() {
        let records = all(
            Framing::JsonStream,
            1000,
            b"{\"a\":[1,\n{\"b\":2}\nnot json\n{\"c\":3}",
        );
        assert_eq!(
            records,
            vec![
                line("{\"a\":[1,", 9),
                line("{\"b\":2}", 17),
                line("not json", 26),
                line("{\"c\":3}", 33),
            ]
        );
    }

    #[test]
    fn a_value_torn_inside_a_string_ends_at_the_newline() {
        let records = all(Framing::JsonStream, 1000, b"{\"a\":\"cut\n  {\"b\":2}\n");
        assert_eq!(
            records,
            vec![line("{\"a\":\"cut", 10), line("{\"b\":2}", 20)]
        );
    }

    #[test]
    fn an_oversized_json_value_is_skipped_to_its_end() {
        let records = all(
            Framing::JsonStream,
            8,
            b"{\"a\":\"0123456789\",\"b\":{}}\n{\"c\":3}",
        );
        assert_eq!(
            records,
            vec![
                Frame::Oversized {
                    start: 0,
                    len: 25,
                    end: 26
                },
                line("{\"c\":3}", 33),
            ]
        );
    }

    #[test]
    fn json_values_share_the_body_and_skip_a_byte_order_mark() {
        let body = Bytes::from_static(b"\xef\xbb\xbf{\"a\":1}\n {\"b\":\n2}");
        let values: Vec<Frame> = json_values(&body).collect();
        assert_eq!(values, vec![line("{\"a\":1}", 11), line("{\"b\":\n2}", 20)]);
        for framing in [Framing::Lines, Framing::JsonStream] {
            let mut framer = Framer::new(framing, 100, 0);
            framer.extend(b"\xef\xbb");
            assert_eq!(frames(&mut framer), vec![]);
            framer.extend(b"\xbf{}\n");
            assert_eq!(frames(&mut framer), vec![line("{}", 6)]);
        }
    }
}
