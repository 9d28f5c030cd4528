//! A strict JSON scanner that finds the top-level members of an object without building
//! anything.
//!
//! [`index_object`] checks that an input is exactly one JSON object (RFC 8259: whitespace
//! around it, nothing else) and reports where each top-level key and value sits. It is
//! the decoder's hot path: every event is decoded once per pipeline, but most of its bytes
//! (`requestObject`, `responseObject`) are only ever copied, so they are validated here
//! and never parsed.
//!
//! The input is checked as UTF-8 once, up front, with `str::from_utf8` (which runs through
//! ASCII a word at a time); after that only structure matters and the scanner looks at
//! bytes. String bodies, the bulk of an audit event, are skipped eight bytes at a time.
//! Nested values are walked with a loop and a bit stack (one bit per open object or
//! array), so the scan neither recurses nor allocates. The shape of the code is tuned to
//! what the compiler makes of it: the string scan is inlined (a call costs as much as a
//! short key), and the top-level loop and the nested-value loop are separate functions so
//! that neither spills the other's state out of registers. About 15,000 instructions for a
//! 1.8 KB audit event, against 26,000 in serde_json's validating skip.
//!
//! It accepts exactly what serde_json's `RawValue` skipping accepted, including lone
//! surrogates in `\u` escapes of values (serde_json skips them too; its `Value` parser
//! later turns them into errors or U+FFFD; keys are unescaped by serde_json, which refuses
//! them there as before), with one deliberate difference: nesting is limited to
//! [`MAX_DEPTH`] levels, kube-apiserver's own limit, so that every event it can log is
//! accepted and anything deeper is refused as `too_deep` before anything parses it.

use std::fmt;
use std::ops::Range;

/// How deep objects and arrays may nest, the top-level object included: 10,000, as deep
/// as kube-apiserver's JSON decoder goes (`k8s.io/apimachinery`'s limit), so every event
/// it logs is accepted. Values are parsed with serde_json's recursion limit lifted and
/// its stack grown on demand (see `crate::event::parse_value`).
pub(crate) const MAX_DEPTH: usize = 10_000;

/// One member of the top-level object, as byte ranges of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    /// The key's bytes between its quotes, escapes not resolved.
    pub key: Range<usize>,
    /// Whether the key contains a `\` escape, so that its bytes are not its text.
    pub key_escaped: bool,
    /// The value's bytes, from its first character to its last.
    pub value: Range<usize>,
}

/// Why an input is not one JSON object, and where that became clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    /// Byte offset into the input.
    pub offset: usize,
    problem: Problem,
    /// The character at `offset`, `None` at the end of the input.
    found: Option<char>,
    /// For input over several lines: the 1-based line and column of `offset`.
    line_and_column: Option<(usize, usize)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Problem {
    InvalidUtf8,
    ExpectedObject,
    ExpectedKey,
    ExpectedColon,
    ExpectedValue,
    ExpectedObjectCommaOrEnd,
    ExpectedArrayCommaOrEnd,
    UnterminatedString,
    ControlCharacter,
    InvalidEscape,
    InvalidUnicodeEscape,
    LeadingZero,
    ExpectedDigit,
    ExpectedTrue,
    ExpectedFalse,
    ExpectedNull,
    TooDeep,
    TrailingCharacters,
}

impl SyntaxError {
    /// Whether the input nests deeper than [`MAX_DEPTH`] (and is otherwise unread).
    pub(crate) fn is_too_deep(&self) -> bool {
        self.problem == Problem::TooDeep
    }
}

/// Checks that `input` is one JSON object and calls `member` for each of its top-level
/// members, in order (duplicate keys included).
pub(crate) fn index_object(
    input: &[u8],
    mut member: impl FnMut(Member),
) -> Result<(), SyntaxError> {
    if let Err(error) = std::str::from_utf8(input) {
        return Err(SyntaxError {
            offset: error.valid_up_to(),
            problem: Problem::InvalidUtf8,
            found: None,
            line_and_column: None,
        });
    }
    let mut scan = Scanner { input, pos: 0 };
    scan.object(&mut member).map_err(|problem| {
        // The scanner stops where the problem is; the input is valid UTF-8 and that is
        // where a token or character starts, and lossy decoding only guards against a slip.
        let rest = &input[scan.pos.min(input.len())..];
        let found = String::from_utf8_lossy(&rest[..rest.len().min(4)])
            .chars()
            .next();
        let before = &input[..scan.pos.min(input.len())];
        let line_and_column = memchr::memrchr(b'\n', before).map(|newline| {
            let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
            (line, scan.pos - newline)
        });
        SyntaxError {
            offset: scan.pos,
            problem,
            found,
            line_and_column,
        }
    })
}

/// A position in the input. Its methods return a bare [`Problem`] and leave `pos` where
/// the problem is, which keeps results in registers on the hot path.
struct Scanner<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    /// Scans the whole input: the top-level object here, each value in [`Scanner::value`].
    fn object(&mut self, member: &mut impl FnMut(Member)) -> Result<(), Problem> {
        self.skip_whitespace();
        self.expect(b'{', Problem::ExpectedObject)?;
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return self.end();
        }
        loop {
            self.expect(b'"', Problem::ExpectedKey)?;
            let key_start = self.pos;
            let key_escaped = self.string()?;
            let key = key_start..self.pos - 1;
            self.skip_whitespace();
            self.expect(b':', Problem::ExpectedColon)?;
            self.skip_whitespace();
            let value_start = self.pos;
            self.value()?;
            member(Member {
                key,
                key_escaped,
                value: value_start..self.pos,
            });
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_whitespace();
                }
                Some(b'}') => {
                    self.pos += 1;
                    return self.end();
                }
                _ => return Err(Problem::ExpectedObjectCommaOrEnd),
            }
        }
    }

    /// Skips the value at `pos` (whitespace already skipped), a member of the top-level
    /// object. Out of line, so that neither loop holds the other's state in registers.
    #[inline(never)]
    fn value(&mut self) -> Result<(), Problem> {
        // The containers open inside this value: `depth` of them, the innermost in bit 0
        // of `objects` (1 for an object, 0 for an array). Past 128 levels the full word is
        // pushed on `spill` (which allocates only then) and a fresh one started.
        let mut objects: u128 = 0;
        let mut spill: Vec<u128> = Vec::new();
        let mut depth = 0usize;
        loop {
            // A value starts at `pos`.
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    self.string()?;
                }
                Some(open @ (b'{' | b'[')) => {
                    if depth + 1 == MAX_DEPTH {
                        return Err(Problem::TooDeep);
                    }
                    self.pos += 1;
                    self.skip_whitespace();
                    let is_object = open == b'{';
                    let close = if is_object { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        // Empty: a complete value, handled below like any other.
                        self.pos += 1;
                    } else {
                        if depth > 0 && depth.is_multiple_of(128) {
                            spill.push(objects);
                            objects = 0;
                        }
                        depth += 1;
                        objects = objects << 1 | u128::from(is_object);
                        if is_object {
                            self.member_key()?;
                        }
                        continue;
                    }
                }
                Some(b't') => self.literal(b"true", Problem::ExpectedTrue)?,
                Some(b'f') => self.literal(b"false", Problem::ExpectedFalse)?,
                Some(b'n') => self.literal(b"null", Problem::ExpectedNull)?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                _ => return Err(Problem::ExpectedValue),
            }
            // A value ended: go on to the next element, or close the containers it ends.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                self.skip_whitespace();
                let in_object = objects & 1 == 1;
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        self.skip_whitespace();
                        if in_object {
                            self.member_key()?;
                        }
                        break;
                    }
                    Some(b'}') if in_object => self.pos += 1,
                    Some(b']') if !in_object => self.pos += 1,
                    _ if in_object => return Err(Problem::ExpectedObjectCommaOrEnd),
                    _ => return Err(Problem::ExpectedArrayCommaOrEnd),
                }
                depth -= 1;
                objects >>= 1;
                if depth > 0 && depth.is_multiple_of(128) {
                    objects = spill.pop().unwrap_or_default();
                }
            }
        }
    }

    /// Skips `"key":` inside a nested object and the whitespace after it.
    #[inline(always)]
    fn member_key(&mut self) -> Result<(), Problem> {
        self.expect(b'"', Problem::ExpectedKey)?;
        self.string()?;
        self.skip_whitespace();
        self.expect(b':', Problem::ExpectedColon)?;
        self.skip_whitespace();
        Ok(())
    }

    /// Checks that only whitespace follows the top-level object.
    fn end(&mut self) -> Result<(), Problem> {
        self.skip_whitespace();
        if self.pos != self.input.len() {
            return Err(Problem::TrailingCharacters);
        }
        Ok(())
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    #[inline]
    fn expect(&mut self, byte: u8, problem: Problem) -> Result<(), Problem> {
        if self.peek() != Some(byte) {
            return Err(problem);
        }
        self.pos += 1;
        Ok(())
    }

    #[inline]
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Skips a string whose opening quote is just before `pos`, up to and including its
    /// closing quote. Returns whether it contains escapes.
    #[inline(always)]
    fn string(&mut self) -> Result<bool, Problem> {
        let opening = self.pos - 1;
        let mut escaped = false;
        loop {
            self.pos = skip_ordinary(self.input, self.pos);
            // At a special byte, or within eight bytes of the end.
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.escape()?;
                }
                Some(0x00..=0x1f) => return Err(Problem::ControlCharacter),
                Some(_) => self.pos += 1,
                None => {
                    self.pos = opening;
                    return Err(Problem::UnterminatedString);
                }
            }
        }
    }

    /// Skips the escape sequence whose backslash is at `pos`.
    fn escape(&mut self) -> Result<(), Problem> {
        match self.input.get(self.pos + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.pos += 2;
                Ok(())
            }
            Some(b'u') => match self.input.get(self.pos + 2..self.pos + 6) {
                Some(hex) if hex.iter().all(u8::is_ascii_hexdigit) => {
                    self.pos += 6;
                    Ok(())
                }
                _ => Err(Problem::InvalidUnicodeEscape),
            },
            _ => {
                self.pos += 1;
                Err(Problem::InvalidEscape)
            }
        }
    }

    fn literal(&mut self, word: &[u8], problem: Problem) -> Result<(), Problem> {
        let end = self.pos + word.len();
        if self.input.get(self.pos..end) != Some(word) {
            return Err(problem);
        }
        self.pos = end;
        Ok(())
    }

    /// Skips a number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Result<(), Problem> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err(Problem::LeadingZero);
                }
            }
            Some(b'1'..=b'9') => self.digits()?,
            _ => return Err(Problem::ExpectedDigit),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.digits()?;
        }
        Ok(())
    }

    /// Skips one or more digits.
    fn digits(&mut self) -> Result<(), Problem> {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(Problem::ExpectedDigit);
        }
        Ok(())
    }
}

/// `0x0101_0101_0101_0101`: one in every byte of a word.
const ONES: u64 = u64::MAX / 255;

/// Steps over the ordinary string bytes from `pos` eight at a time: returns the position
/// of the first `"`, `\\` or control character, or one within eight bytes of the end.
///
/// Inlined: most strings are shorter than 16 bytes, and a call costs as much as the scan.
#[inline(always)]
fn skip_ordinary(input: &[u8], pos: usize) -> usize {
    let mut rest = &input[pos..];
    while let Some((chunk, tail)) = rest.split_first_chunk::<8>() {
        let special = special_bytes(u64::from_le_bytes(*chunk));
        if special != 0 {
            // Little-endian: the lowest marked byte is the first in memory.
            return input.len() - rest.len() + special.trailing_zeros() as usize / 8;
        }
        rest = tail;
    }
    input.len() - rest.len()
}

/// Sets the high bit of every byte of `word` that is `"`, `\` or below 0x20, exactly up to
/// and including the first such byte (bytes after it may be marked spuriously).
///
/// `(x - 0x01..) & !x & 0x80..` marks the zero bytes of `x` (Mycroft): a byte borrows
/// from the next only when it is itself marked, so the lowest mark is exact. XOR with a
/// repeated byte turns "equals c" into "is zero"; subtracting 0x20 instead of 0x01 marks
/// "below 0x20".
fn special_bytes(word: u64) -> u64 {
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let is_quote = quote.wrapping_sub(ONES) & !quote;
    let is_backslash = backslash.wrapping_sub(ONES) & !backslash;
    let is_control = word.wrapping_sub(ONES * 0x20) & !word;
    (is_quote | is_backslash | is_control) & (ONES << 7)
}

impl std::error::Error for SyntaxError {}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let found = Found(self.found);
        match self.problem {
            Problem::InvalidUtf8 => write!(f, "invalid UTF-8")?,
            Problem::ExpectedObject => {
                f.write_str("expected a JSON object, found ")?;
                match self.found {
                    Some('[') => f.write_str("an array")?,
                    Some('"') => f.write_str("a string")?,
                    Some('-' | '0'..='9') => f.write_str("a number")?,
                    Some('t' | 'f') => f.write_str("a boolean")?,
                    Some('n') => f.write_str("null")?,
                    _ => write!(f, "{found}")?,
                }
            }
            Problem::ExpectedKey => write!(f, "expected a key string, found {found}")?,
            Problem::ExpectedColon => write!(f, "expected `:` after the key, found {found}")?,
            Problem::ExpectedValue => write!(f, "expected a value, found {found}")?,
            Problem::ExpectedObjectCommaOrEnd => write!(f, "expected `,` or `}}`, found {found}")?,
            Problem::ExpectedArrayCommaOrEnd => write!(f, "expected `,` or `]`, found {found}")?,
            Problem::UnterminatedString => write!(f, "unterminated string starting")?,
            Problem::ControlCharacter => {
                write!(f, "unescaped control character {found} in a string")?
            }
            Problem::InvalidEscape => write!(
                f,
                "invalid escape: expected one of `\"\\/bfnrtu` after `\\`, found {found}"
            )?,
            Problem::InvalidUnicodeEscape => {
                write!(f, "invalid escape: `\\u` must be followed by 4 hex digits")?
            }
            Problem::LeadingZero => write!(f, "invalid number: leading zero")?,
            Problem::ExpectedDigit => write!(f, "invalid number: expected a digit, found {found}")?,
            Problem::ExpectedTrue => write!(f, "expected `true`")?,
            Problem::ExpectedFalse => write!(f, "expected `false`")?,
            Problem::ExpectedNull => write!(f, "expected `null`")?,
            Problem::TooDeep => write!(f, "objects and arrays nested deeper than {MAX_DEPTH}")?,
            Problem::TrailingCharacters => write!(f, "unexpected {found} after the object")?,
        }
        match self.line_and_column {
            Some((line, column)) => write!(f, " at line {line} column {column}"),
            None => write!(f, " at column {}", self.offset + 1),
        }
    }
}

/// A character as an error message shows it.
struct Found(Option<char>);

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("the end of the input"),
            // Control characters and the byte order mark would print as nothing.
            Some(c) if c.is_control() || c == '\u{feff}' => write!(f, "U+{:04X}", u32::from(c)),
            Some(c) => write!(f, "`{c}`"),
        }
    }
}

/// What [`find_member`] found in an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The value of the last member with the key (last wins, as in serde_json's `Map`).
    Found(Range<usize>),
    /// No member has the key.
    Missing,
    /// The bytes cannot answer for the parsed value: a key has escapes (it might unescape
    /// to the one sought), or the object holds something serde_json refuses to parse as a
    /// `Value` (a lone surrogate escape, a number out of range), which makes the whole
    /// value unreadable. The caller parses instead.
    Unsure,
}

/// Finds the member `key` (no escapes) of the object that starts at `object[0]` (leading
/// whitespace allowed), input that [`index_object`] already validated. Nothing is
/// re-validated; malformed input reads as [`Lookup::Unsure`] rather than panicking.
///
/// Every member is stepped over, so that a later duplicate wins and anything unparseable
/// anywhere in the object is noticed, but nothing is built.
pub(crate) fn find_member(object: &[u8], key: &[u8]) -> Lookup {
    find_member_inner(object, key).unwrap_or(Lookup::Unsure)
}

fn find_member_inner(input: &[u8], key: &[u8]) -> Option<Lookup> {
    let mut pos = skip_blank(input, 0);
    if *input.get(pos)? != b'{' {
        return None;
    }
    let mut found = Lookup::Missing;
    pos = skip_blank(input, pos + 1);
    if *input.get(pos)? == b'}' {
        return Some(found);
    }
    loop {
        if *input.get(pos)? != b'"' {
            return None;
        }
        let key_start = pos + 1;
        let (key_end, escaped) = skip_string(input, key_start)?;
        if escaped {
            return Some(Lookup::Unsure);
        }
        pos = skip_blank(input, key_end);
        if *input.get(pos)? != b':' {
            return None;
        }
        let value_start = skip_blank(input, pos + 1);
        let value_end = skip_value(input, value_start)?;
        if &input[key_start..key_end - 1] == key {
            found = Lookup::Found(value_start..value_end);
        }
        pos = skip_blank(input, value_end);
        match *input.get(pos)? {
            b',' => pos = skip_blank(input, pos + 1),
            b'}' => return Some(found),
            _ => return None,
        }
    }
}

/// A value found by [`MemberWalk`] or [`ElementWalk`]: where it is in the input, and
/// whether it is a string written without escapes (its body is then the bytes between
/// the quotes, as they are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Walked {
    pub range: Range<usize>,
    pub plain_string: bool,
}

/// Steps over the validated value at `pos`: where it ends, and whether it is a string
/// without escapes. `None` where serde_json may refuse it (see [`skip_value`]).
fn step_value(input: &[u8], pos: usize) -> Option<Walked> {
    if input.get(pos) == Some(&b'"') {
        let (end, escaped) = skip_string(input, pos + 1)?;
        return Some(Walked {
            range: pos..end,
            plain_string: !escaped,
        });
    }
    Some(Walked {
        range: pos..skip_value(input, pos)?,
        plain_string: false,
    })
}

/// Walks the members of a validated object one at a time, the way [`find_member`] steps
/// over them: the key's range between its quotes, and the value. `Err(())` (and the end
/// of the walk) where the bytes cannot answer for the parsed value: a key with escapes,
/// or a value serde_json may refuse (see [`Lookup::Unsure`]).
pub(crate) struct MemberWalk<'a> {
    input: &'a [u8],
    /// Where the next key's opening quote is; `None` once the walk is over.
    pos: Option<usize>,
}

impl<'a> MemberWalk<'a> {
    /// `None` unless `input` (leading whitespace allowed) starts an object.
    pub(crate) fn new(input: &'a [u8]) -> Option<MemberWalk<'a>> {
        let pos = skip_blank(input, 0);
        if *input.get(pos)? != b'{' {
            return None;
        }
        let pos = skip_blank(input, pos + 1);
        let pos = (*input.get(pos)? != b'}').then_some(pos);
        Some(MemberWalk { input, pos })
    }

    fn step(&mut self, pos: usize) -> Option<(Range<usize>, Walked, Option<usize>)> {
        let input = self.input;
        if *input.get(pos)? != b'"' {
            return None;
        }
        let key_start = pos + 1;
        let (key_end, escaped) = skip_string(input, key_start)?;
        if escaped {
            return None;
        }
        let pos = skip_blank(input, key_end);
        if *input.get(pos)? != b':' {
            return None;
        }
        let value = step_value(input, skip_blank(input, pos + 1))?;
        let pos = skip_blank(input, value.range.end);
        let next = match *input.get(pos)? {
            b',' => Some(skip_blank(input, pos + 1)),
            b'}' => None,
            _ => return None,
        };
        Some((key_start..key_end - 1, value, next))
    }
}

impl Iterator for MemberWalk<'_> {
    type Item = Result<(Range<usize>, Walked), ()>;

    fn next(&mut self) -> Option<Self::Item> {
        let pos = self.pos.take()?;
        match self.step(pos) {
            Some((key, value, next)) => {
                self.pos = next;
                Some(Ok((key, value)))
            }
            None => Some(Err(())),
        }
    }
}

/// Walks the elements of a validated array: each element, or `Err(())` (and the end of
/// the walk) for one serde_json may refuse.
pub(crate) struct ElementWalk<'a> {
    input: &'a [u8],
    pos: Option<usize>,
}

impl<'a> ElementWalk<'a> {
    /// `None` unless `input` (leading whitespace allowed) starts an array.
    pub(crate) fn new(input: &'a [u8]) -> Option<ElementWalk<'a>> {
        let pos = skip_blank(input, 0);
        if *input.get(pos)? != b'[' {
            return None;
        }
        let pos = skip_blank(input, pos + 1);
        let pos = (*input.get(pos)? != b']').then_some(pos);
        Some(ElementWalk { input, pos })
    }

    fn step(&self, pos: usize) -> Option<(Walked, Option<usize>)> {
        let input = self.input;
        let value = step_value(input, pos)?;
        let after = skip_blank(input, value.range.end);
        let next = match *input.get(after)? {
            b',' => Some(skip_blank(input, after + 1)),
            b']' => None,
            _ => return None,
        };
        Some((value, next))
    }
}

impl Iterator for ElementWalk<'_> {
    type Item = Result<Walked, ()>;

    fn next(&mut self) -> Option<Self::Item> {
        let pos = self.pos.take()?;
        match self.step(pos) {
            Some((value, next)) => {
                self.pos = next;
                Some(Ok(value))
            }
            None => Some(Err(())),
        }
    }
}

fn skip_blank(input: &[u8], mut pos: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = input.get(pos) {
        pos += 1;
    }
    pos
}

/// Steps over a validated string whose opening quote is just before `pos`: the position
/// after its closing quote and whether it has escapes. `None` for a lone surrogate escape
/// (serde_json refuses to parse it) or a missing closing quote.
fn skip_string(input: &[u8], mut pos: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        pos = skip_ordinary(input, pos);
        match *input.get(pos)? {
            b'"' => return Some((pos + 1, escaped)),
            b'\\' => {
                escaped = true;
                if input.get(pos + 1) == Some(&b'u')
                    && matches!(input.get(pos + 2), Some(b'd' | b'D'))
                    && matches!(
                        input.get(pos + 3),
                        Some(b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F')
                    )
                {
                    // A surrogate: serde_json accepts only a well-formed pair; leave
                    // the call to it.
                    return None;
                }
                pos += 2;
            }
            _ => pos += 1,
        }
    }
}

/// Steps over a validated value starting at `pos`, returning where it ends. `None` for
/// what serde_json may refuse as a `Value` (see [`skip_string`], [`skip_number`]).
fn skip_value(input: &[u8], mut pos: usize) -> Option<usize> {
    let mut depth = 0usize;
    loop {
        match *input.get(pos)? {
            b'"' => pos = skip_string(input, pos + 1)?.0,
            b'{' | b'[' => {
                depth += 1;
                pos += 1;
                continue;
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                pos += 1;
            }
            b'-' | b'0'..=b'9' => pos = skip_number(input, pos)?,
            b't' | b'n' => pos += 4,
            b'f' => pos += 5,
            _ => {
                // Separators and whitespace inside a container.
                if depth == 0 {
                    return None;
                }
                pos += 1;
                continue;
            }
        }
        if depth == 0 {
            return Some(pos);
        }
    }
}

/// Steps over a validated number. `None` for one with an exponent or over 100 characters:
/// those may be out of `f64`'s range, which serde_json refuses; the caller parses.
fn skip_number(input: &[u8], pos: usize) -> Option<usize> {
    let len = input[pos..]
        .iter()
        .take_while(|b| matches!(b, b'-' | b'+' | b'.' | b'0'..=b'9' | b'e' | b'E'))
        .count();
    let number = &input[pos..pos + len];
    if len > 100 || number.iter().any(|b| matches!(b, b'e' | b'E')) {
        return None;
    }
    Some(pos + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(input: &str) -> Result<Vec<(&str, bool, &str)>, String> {
        let mut out = Vec::new();
        index_object(input.as_bytes(), |member| {
            out.push((
                &input[member.key.clone()],
                member.key_escaped,
                &input[member.value.clone()],
            ))
        })
        .map_err(|error| error.to_string())?;
        Ok(out)
    }

    fn error(input: &[u8]) -> String {
        index_object(input, |_| {}).unwrap_err().to_string()
    }

    #[test]
    fn members_are_reported_in_order_with_their_spans() {
        assert_eq!(
            members(" {\"a\" : [1, {\"b\":null}] ,\"c\\n\":\"x\\\"y\",\"a\":-0.5e+3}\t"),
            Ok(vec![
                ("a", false, "[1, {\"b\":null}]"),
                ("c\\n", true, "\"x\\\"y\""),
                ("a", false, "-0.5e+3"),
            ])
        );
        assert_eq!(members("{}"), Ok(vec![]));
        assert_eq!(members("{\"a\":{}}"), Ok(vec![("a", false, "{}")]));
        assert_eq!(members("{\"\":[ ]}"), Ok(vec![("", false, "[ ]")]));
    }

    #[test]
    fn errors_say_what_was_expected_and_where() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"",
                "expected a JSON object, found the end of the input at column 1",
            ),
            (b"[1]", "expected a JSON object, found an array at column 1"),
            (
                b"\xef\xbb\xbf{}",
                "expected a JSON object, found U+FEFF at column 1",
            ),
            (
                b"{\"verb\" \"get\"}",
                "expected `:` after the key, found `\"` at column 9",
            ),
            (
                b"{\"a\":1,}",
                "expected a key string, found `}` at column 8",
            ),
            (b"{\"a\":[1,]}", "expected a value, found `]` at column 9"),
            (b"{\"a\":[1}", "expected `,` or `]`, found `}` at column 8"),
            (
                b"{\"a\":1",
                "expected `,` or `}`, found the end of the input at column 7",
            ),
            (b"{\"a\":\"x", "unterminated string starting at column 6"),
            (
                b"{\"a\":\"x\ty\"}",
                "unescaped control character U+0009 in a string at column 8",
            ),
            (
                b"{\"a\":\"\\x\"}",
                "invalid escape: expected one of `\"\\/bfnrtu` after `\\`, found `x` at column 8",
            ),
            (
                b"{\"a\":\"\\u12g4\"}",
                "invalid escape: `\\u` must be followed by 4 hex digits at column 7",
            ),
            (b"{\"a\":01}", "invalid number: leading zero at column 7"),
            (
                b"{\"a\":1.}",
                "invalid number: expected a digit, found `}` at column 8",
            ),
            (
                b"{\"a\":-}",
                "invalid number: expected a digit, found `}` at column 7",
            ),
            (b"{\"a\":tru}", "expected `true` at column 6"),
            (b"{} x", "unexpected `x` after the object at column 4"),
            (b"{\"a\":\"\xff\"}", "invalid UTF-8 at column 7"),
        ];
        for (input, message) in cases {
            assert_eq!(error(input), *message, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn nesting_is_limited_to_10_000_levels_counting_the_top_object() {
        let nested = |levels: usize| {
            format!(
                "{{\"a\":{}{}}}",
                "[".repeat(levels - 1),
                "]".repeat(levels - 1)
            )
        };
        assert!(index_object(nested(MAX_DEPTH).as_bytes(), |_| {}).is_ok());
        assert_eq!(
            error(nested(MAX_DEPTH + 1).as_bytes()),
            "objects and arrays nested deeper than 10000 at column 10005"
        );
    }

    #[test]
    fn mixed_nesting_past_the_first_word_of_the_bit_stack_is_tracked() {
        // 300 levels of alternating objects and arrays: the bit stack spills twice.
        let mut text = String::from("{\"a\":");
        for level in 0..300 {
            text.push_str(if level % 2 == 0 { "{\"k\":" } else { "[1," });
        }
        text.push_str("true");
        for level in (0..300).rev() {
            text.push(if level % 2 == 0 { '}' } else { ']' });
        }
        text.push('}');
        assert!(index_object(text.as_bytes(), |_| {}).is_ok());
        // The wrong closer at any level, the spilled ones included, is an error.
        for wrong in [1, 150, 299] {
            let mut bad = text.clone().into_bytes();
            let position = bad.len() - 1 - (300 - wrong);
            bad[position] = if bad[position] == b'}' { b']' } else { b'}' };
            assert!(index_object(&bad, |_| {}).is_err(), "level {wrong}");
        }
    }

    #[test]
    fn the_word_test_finds_the_first_special_byte() {
        let is_special = |byte: u8| byte == b'"' || byte == b'\\' || byte < 0x20;
        let first_special = |bytes: [u8; 8]| {
            let marks = special_bytes(u64::from_le_bytes(bytes));
            (marks != 0).then(|| marks.trailing_zeros() as usize / 8)
        };
        // Every byte value at every position, among ordinary bytes on both sides of the
        // thresholds, then followed by more special bytes (which must not move the answer).
        for filler in [b'a', b' ', b'!', b'#', b'[', b']', 0x7f, 0x80, 0xa0, 0xff] {
            for byte in 0..=255u8 {
                for at in 0..8 {
                    let mut bytes = [filler; 8];
                    bytes[at] = byte;
                    let expected = is_special(byte).then_some(at);
                    assert_eq!(
                        first_special(bytes),
                        expected,
                        "{byte:#x} at {at} in {filler:#x}"
                    );
                    for (i, later) in bytes.iter_mut().enumerate().skip(at + 1) {
                        *later = [b'"', b'\\', 0x00, 0x1f, 0x01][i % 5];
                    }
                    let expected = if is_special(byte) {
                        Some(at)
                    } else {
                        (at < 7).then_some(at + 1)
                    };
                    assert_eq!(
                        first_special(bytes),
                        expected,
                        "{byte:#x} at {at}, specials after"
                    );
                }
            }
        }
    }
}
