//! Splitting a byte stream into newline-delimited records, without copying them.
//!
//! Bytes are read straight into the framer's buffer; each complete line is split off as a
//! [`Bytes`] that shares that buffer. A line longer than `max_line_bytes` is not kept in
//! memory: it is skipped to its newline and reported as [`Frame::Oversized`], so the
//! reader resynchronises on the next line.

use bytes::{Bytes, BytesMut};

/// How much room to make before each read.
const READ_CHUNK: usize = 256 * 1024;

/// One record out of the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A line without its `\n` (and without a `\r` before it). `end` is the stream
    /// offset just past the newline.
    Line { line: Bytes, end: u64 },
    /// A line longer than the limit, skipped whole. `start` is where it began, `len` its
    /// length without the newline.
    Oversized { start: u64, len: u64, end: u64 },
}

/// Newline framing over a stream that is fed by reading into [`LineFramer::buffer`].
#[derive(Debug)]
pub struct LineFramer {
    buf: BytesMut,
    max_line_bytes: usize,
    /// Stream offset of `buf[0]`.
    offset: u64,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    /// Inside an oversized line: (its start offset, bytes dropped so far).
    skipping: Option<(u64, u64)>,
}

impl LineFramer {
    /// A framer for a stream read from `offset` on.
    pub fn new(max_line_bytes: usize, offset: u64) -> LineFramer {
        LineFramer {
            buf: BytesMut::new(),
            max_line_bytes,
            offset,
            scanned: 0,
            skipping: None,
        }
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
    /// line still buffered, if any).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes held for a line whose newline has not arrived yet.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }

    /// The next complete record, if the buffer holds one.
    pub fn next_frame(&mut self) -> Option<Frame> {
        match memchr::memchr(b'\n', &self.buf[self.scanned..]) {
            Some(found) => {
                let newline = self.scanned + found;
                self.scanned = 0;
                if let Some((start, dropped)) = self.skipping.take() {
                    let _ = self.buf.split_to(newline + 1);
                    self.offset += newline as u64 + 1;
                    return Some(Frame::Oversized {
                        start,
                        len: dropped + newline as u64,
                        end: self.offset,
                    });
                }
                if newline > self.max_line_bytes {
                    let start = self.offset;
                    let _ = self.buf.split_to(newline + 1);
                    self.offset += newline as u64 + 1;
                    return Some(Frame::Oversized {
                        start,
                        len: newline as u64,
                        end: self.offset,
                    });
                }
                let mut line = self.buf.split_to(newline + 1).freeze();
                self.offset += newline as u64 + 1;
                line.truncate(newline);
                if line.last() == Some(&b'\r') {
                    line.truncate(newline - 1);
                }
                Some(Frame::Line {
                    line,
                    end: self.offset,
                })
            }
            None => {
                self.scanned = self.buf.len();
                let held = self.buf.len();
                if held > self.max_line_bytes || (self.skipping.is_some() && held > 0) {
                    // Too long already: drop what we have and keep skipping.
                    let (start, dropped) = self.skipping.unwrap_or((self.offset, 0));
                    self.skipping = Some((start, dropped + held as u64));
                    self.offset += held as u64;
                    self.buf.clear();
                    self.scanned = 0;
                }
                None
            }
        }
    }

    /// At the end of the stream: the last line if it had no newline.
    pub fn finish(&mut self) -> Option<Frame> {
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
        if self.buf.is_empty() {
            return None;
        }
        let mut line = self.buf.split().freeze();
        self.offset += line.len() as u64;
        self.scanned = 0;
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        if line.len() > self.max_line_bytes {
            return Some(Frame::Oversized {
                start: self.offset - line.len() as u64,
                len: line.len() as u64,
                end: self.offset,
            });
        }
        Some(Frame::Line {
            line,
            end: self.offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(framer: &mut LineFramer) -> Vec<Frame> {
        std::iter::from_fn(|| framer.next_frame()).collect()
    }

    fn line(text: &str, end: u64) -> Frame {
        Frame::Line {
            line: Bytes::copy_from_slice(text.as_bytes()),
            end,
        }
    }

    #[test]
    fn a_partial_line_waits_for_its_newline() {
        let mut framer = LineFramer::new(100, 0);
        framer.extend(b"{\"a\":1}\n{\"b\"");
        assert_eq!(frames(&mut framer), vec![line("{\"a\":1}", 8)]);
        assert_eq!(framer.offset(), 8);
        framer.extend(b":2}\r\n");
        assert_eq!(frames(&mut framer), vec![line("{\"b\":2}", 17)]);
        assert_eq!(framer.finish(), None);
    }

    #[test]
    fn an_oversized_line_is_skipped_and_the_next_one_kept() {
        let mut framer = LineFramer::new(4, 10);
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
        let mut framer = LineFramer::new(100, 0);
        framer.extend(b"a\nb");
        assert_eq!(frames(&mut framer), vec![line("a", 2)]);
        assert_eq!(framer.finish(), Some(line("b", 3)));
    }
}
