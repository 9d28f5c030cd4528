//! A borrowed view of one JSON value's bytes: the tree of its objects, arrays and
//! strings, each with the byte range it occupies, and nothing decoded that is not asked
//! for.
//!
//! The walk finds secrets in this view and records byte ranges to replace, so a
//! redacted field is the original bytes with only the secrets' characters spliced out:
//! numbers keep their digits (`123456789012345678901234567890`, `1.50`), strings keep
//! their escapes (`\u0026`), and duplicate keys all stay visible to the detectors.
//!
//! The bytes come from the event decoder, which validated them, or from serde_json; the
//! parser still refuses anything it does not understand (the caller then replaces the
//! whole field) rather than trusting that.

use std::borrow::Cow;

/// How deep the view goes: as deep as the event decoder accepts (10,000 levels, the
/// limit kube-apiserver's own decoder has), so that a secret nested anywhere in an
/// accepted event is redacted in place. The walk recurses; the pipeline's runtime threads
/// reserve stacks for that depth (`auditflow run`). A field nested deeper (only a
/// transform upstream could make one) is refused, and the caller replaces it whole.
pub(crate) const MAX_DEPTH: usize = 10_000;

/// One JSON value inside a field's bytes.
#[derive(Debug)]
pub(crate) struct Node<'a> {
    /// Where the value's bytes start in the field (a string's opening quote).
    pub(crate) start: usize,
    /// Where they end (after a string's closing quote).
    pub(crate) end: usize,
    pub(crate) kind: Kind<'a>,
}

#[derive(Debug)]
pub(crate) enum Kind<'a> {
    /// The bytes between the quotes, escapes as written.
    Str(&'a [u8]),
    /// A number, `true` or `false`: its bytes as written.
    Scalar(&'a [u8]),
    Null,
    Array(Vec<Node<'a>>),
    /// Every member in order, repeated keys included.
    Object(Vec<(Cow<'a, str>, Node<'a>)>),
}

impl<'a> Node<'a> {
    /// The string's text, decoded (`None` when it is not a string).
    pub(crate) fn text(&self) -> Option<Cow<'a, str>> {
        match self.kind {
            Kind::Str(raw) => decode(raw),
            _ => None,
        }
    }

    /// The last member named `key` (the one JSON parsers keep), when this is an object.
    pub(crate) fn member(&self, key: &str) -> Option<&Node<'a>> {
        match &self.kind {
            Kind::Object(members) => members
                .iter()
                .rev()
                .find(|(name, _)| name == key)
                .map(|(_, node)| node),
            _ => None,
        }
    }

    /// The last member named `key`, decoded, when it is a string.
    pub(crate) fn member_text(&self, key: &str) -> Option<Cow<'a, str>> {
        self.member(key)?.text()
    }
}

/// Parses one JSON value spanning all of `bytes` (surrounding whitespace allowed).
pub(crate) fn parse(bytes: &[u8]) -> Option<Node<'_>> {
    let mut parser = Parser { bytes, at: 0 };
    parser.skip_whitespace();
    let node = parser.value(0)?;
    parser.skip_whitespace();
    (parser.at == bytes.len()).then_some(node)
}

/// Parses the JSON value at the start of `bytes` (whitespace first allowed), ignoring
/// what follows it.
pub(crate) fn parse_prefix(bytes: &[u8]) -> Option<Node<'_>> {
    let mut parser = Parser { bytes, at: 0 };
    parser.skip_whitespace();
    parser.value(0)
}

struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        self.skip_whitespace();
        if self.bytes.get(self.at) == Some(&byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Option<Node<'a>> {
        let start = self.at;
        let kind = match *self.bytes.get(self.at)? {
            b'"' => Kind::Str(self.string()?),
            b'{' if depth < MAX_DEPTH => Kind::Object(self.object(depth + 1)?),
            b'[' if depth < MAX_DEPTH => Kind::Array(self.array(depth + 1)?),
            b'n' => {
                self.literal(b"null")?;
                Kind::Null
            }
            b't' => Kind::Scalar(self.literal(b"true")?),
            b'f' => Kind::Scalar(self.literal(b"false")?),
            b'-' | b'0'..=b'9' => {
                let end = self.bytes[start..]
                    .iter()
                    .position(|byte| {
                        !matches!(byte, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                    })
                    .map_or(self.bytes.len(), |length| start + length);
                self.at = end;
                Kind::Scalar(&self.bytes[start..end])
            }
            _ => return None,
        };
        Some(Node {
            start,
            end: self.at,
            kind,
        })
    }

    fn literal(&mut self, word: &[u8]) -> Option<&'a [u8]> {
        let found = self.bytes.get(self.at..self.at + word.len())?;
        (found == word).then(|| {
            self.at += word.len();
            found
        })
    }

    /// At an opening quote: the bytes up to the closing one, which it steps past.
    fn string(&mut self) -> Option<&'a [u8]> {
        let start = self.at + 1;
        let mut at = start;
        // A quote ends the string unless an odd run of backslashes stands before it:
        // this stops once per quote, not once per escape (a ConfigMap's multi-line
        // data holds thousands of `\n`).
        loop {
            let found = at + memchr::memchr(b'"', &self.bytes[at..])?;
            let backslashes = self.bytes[start..found]
                .iter()
                .rev()
                .take_while(|byte| **byte == b'\\')
                .count();
            if backslashes % 2 == 1 {
                at = found + 1;
                continue;
            }
            self.at = found + 1;
            return Some(&self.bytes[start..found]);
        }
    }

    fn object(&mut self, depth: usize) -> Option<Vec<(Cow<'a, str>, Node<'a>)>> {
        self.at += 1;
        let mut members = Vec::new();
        if self.eat(b'}') {
            return Some(members);
        }
        loop {
            self.skip_whitespace();
            if self.bytes.get(self.at) != Some(&b'"') {
                return None;
            }
            let key = decode(self.string()?)?;
            if !self.eat(b':') {
                return None;
            }
            self.skip_whitespace();
            members.push((key, self.value(depth)?));
            if self.eat(b',') {
                continue;
            }
            return self.eat(b'}').then_some(members);
        }
    }

    fn array(&mut self, depth: usize) -> Option<Vec<Node<'a>>> {
        self.at += 1;
        let mut items = Vec::new();
        if self.eat(b']') {
            return Some(items);
        }
        loop {
            self.skip_whitespace();
            items.push(self.value(depth)?);
            if self.eat(b',') {
                continue;
            }
            return self.eat(b']').then_some(items);
        }
    }
}

/// The text of a string's bytes (between the quotes). Borrowed when there is no escape.
pub(crate) fn decode(raw: &[u8]) -> Option<Cow<'_, str>> {
    if memchr::memchr(b'\\', raw).is_none() {
        return std::str::from_utf8(raw).ok().map(Cow::Borrowed);
    }
    Some(Cow::Owned(unescape(raw, None)?))
}

/// The text of a string's bytes, and for each byte of the text (and one past its end)
/// the offset in `raw` of the character or escape it came from: a range of the text
/// that starts and ends on character boundaries maps to the bytes written for it.
///
/// A lone surrogate escape (`\ud800`, which no text can hold) reads as U+FFFD.
pub(crate) fn decode_mapped(raw: &[u8]) -> Option<(String, Vec<usize>)> {
    let mut map = Vec::with_capacity(raw.len() + 1);
    let text = unescape(raw, Some(&mut map))?;
    Some((text, map))
}

/// The text of a string's bytes, filling `map` (see [`decode_mapped`]) when given one.
fn unescape(raw: &[u8], mut map: Option<&mut Vec<usize>>) -> Option<String> {
    // Checked once as a whole: escapes are ASCII, so every run between them starts and
    // ends on a character boundary and is valid text too.
    let whole = std::str::from_utf8(raw).ok()?;
    let mut text = String::with_capacity(raw.len());
    let mut at = 0;
    while at < raw.len() {
        let start = at;
        if raw[at] != b'\\' {
            // A run of plain bytes up to the next escape, copied as it is.
            let end = memchr::memchr(b'\\', &raw[at..]).map_or(raw.len(), |found| at + found);
            text.push_str(&whole[at..end]);
            if let Some(map) = map.as_deref_mut() {
                map.extend(at..end);
            }
            at = end;
            continue;
        }
        let decoded = match *raw.get(at + 1)? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let high = hex4(raw.get(at + 2..at + 6)?)?;
                at += 6;
                let code =
                    if (0xd800..0xdc00).contains(&high) && raw.get(at..at + 2) == Some(b"\\u") {
                        match raw.get(at + 2..at + 6).and_then(hex4) {
                            Some(low) if (0xdc00..0xe000).contains(&low) => {
                                at += 6;
                                0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00)
                            }
                            _ => 0xfffd,
                        }
                    } else {
                        high
                    };
                let decoded = char::from_u32(code).unwrap_or('\u{fffd}');
                text.push(decoded);
                if let Some(map) = map.as_deref_mut() {
                    map.extend(std::iter::repeat_n(start, decoded.len_utf8()));
                }
                continue;
            }
            _ => return None,
        };
        at += 2;
        text.push(decoded);
        if let Some(map) = map.as_deref_mut() {
            map.push(start);
        }
    }
    if let Some(map) = map {
        map.push(raw.len());
    }
    Some(text)
}

fn hex4(hex: &[u8]) -> Option<u32> {
    std::str::from_utf8(hex)
        .ok()
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
}

/// Appends `text` as the inside of a JSON string (no quotes), escaping what must be.
pub(crate) fn push_escaped(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_keeps_ranges_and_repeated_keys() {
        let bytes = br#" {"a": [1.50, "x\u0026y", null], "a": true, "b": {}} "#;
        let node = parse(bytes).unwrap();
        let Kind::Object(members) = &node.kind else {
            panic!("{node:?}")
        };
        assert_eq!(members.len(), 3);
        let Kind::Array(items) = &members[0].1.kind else {
            panic!()
        };
        assert_eq!(&bytes[items[0].start..items[0].end], b"1.50");
        assert_eq!(&bytes[items[1].start..items[1].end], br#""x\u0026y""#);
        assert_eq!(items[1].text().unwrap(), "x&y");
        assert!(matches!(
            node.member("a").unwrap().kind,
            Kind::Scalar(b"true")
        ));
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [&b"{"[..], b"[1,]", b"{\"a\" 1}", b"\"x", b"nul", b"{} x"] {
            assert!(parse(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
        // On a stack as large as the runtime's threads have.
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(|| {
                let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
                assert!(parse(deep.as_bytes()).is_none());
                let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
                assert!(parse(ok.as_bytes()).is_some());
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn a_string_ends_at_the_first_quote_after_an_even_run_of_backslashes() {
        // `"a\\\\"` ends after two escaped backslashes; `\"` and `\\\"` are quotes inside.
        let bytes = br#"["a\\\\", "b\"c\\\"d", "e\n\n\\", "\\"]"#;
        let node = parse(bytes).unwrap();
        let Kind::Array(items) = &node.kind else {
            panic!("{node:?}")
        };
        let texts: Vec<_> = items.iter().map(|item| item.text().unwrap()).collect();
        assert_eq!(texts, ["a\\\\", "b\"c\\\"d", "e\n\n\\", "\\"]);
        assert!(parse(br#"["x\"]"#).is_none());
        assert!(parse(br#""x\\\""#).is_none());
    }

    #[test]
    fn text_that_is_not_utf8_does_not_decode() {
        assert!(decode(b"a\xff").is_none());
        assert!(decode(b"a\\n\xff").is_none());
        assert!(decode_mapped(b"\xe2\x82\\n").is_none());
        assert_eq!(
            decode("\u{e9}t\\u00e9\\n".as_bytes()).unwrap(),
            "\u{e9}t\u{e9}\n"
        );
    }

    #[test]
    fn decoding_maps_text_back_to_the_escapes() {
        let raw = br#"a\u0026\"\ud83d\ude00\ud800z"#;
        let (text, map) = decode_mapped(raw).unwrap();
        assert_eq!(text, "a&\"\u{1f600}\u{fffd}z");
        let z = text.find('z').unwrap();
        assert_eq!(raw[map[z]], b'z');
        let quote = text.find('"').unwrap();
        assert_eq!(&raw[map[quote]..map[quote + 1]], br#"\""#);
        assert_eq!(map[text.len()], raw.len());
    }
}
