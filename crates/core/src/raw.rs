//! Reading nested JSON values straight from an event's bytes, without parsing them.
//!
//! [`Event::raw_field`](crate::Event::raw_field) and
//! [`Event::raw_path`](crate::Event::raw_path) hand out the bytes of a value the decoder
//! already validated. A transform that needs several members of one object
//! (`objectRef.resource`, `.namespace`, `.name`, …) checks the object's bytes as UTF-8
//! once, walks it with [`members`] and reads the strings it wants with
//! [`Value::string`], instead of deserialising the object, which would build or check
//! every member it does not want (a `user.extra` map, say). A string written without
//! escapes is borrowed as it is: the walk that stepped over it already knows.
//!
//! The walk agrees with the parsed value wherever it answers: a later duplicate key wins
//! if the caller keeps the last match, and wherever the bytes cannot settle what
//! serde_json would make of them (a key with escapes, a lone surrogate escape, a number
//! that may be out of range) the walk yields [`Unsure`] and stops; the caller then takes
//! the parsed route ([`Event::get`](crate::Event::get)).
//!
//! The functions expect text from an [`Event`](crate::Event); on other, malformed input
//! they yield [`Unsure`] or `None` rather than panicking.

use std::borrow::Cow;

use crate::scan::{ElementWalk, MemberWalk, Walked};

/// The bytes cannot settle this read; parse the value instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsure;

/// A value found in an object or array: its JSON text, and whether it is a string written
/// without escapes (known from the walk that stepped over it, so reading it costs nothing
/// more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Value<'a> {
    raw: &'a str,
    plain_string: bool,
}

impl<'a> Value<'a> {
    fn found(text: &'a str, found: Walked) -> Option<Value<'a>> {
        Some(Value {
            raw: text.get(found.range)?,
            plain_string: found.plain_string,
        })
    }

    /// The value's JSON text as it is in the event (`"pods"`, `null`, `{…}`).
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// Whether the value is `null`.
    pub fn is_null(&self) -> bool {
        self.raw == "null"
    }

    /// The string the value holds: borrowed when it is written without escapes,
    /// unescaped (RFC 8259 §7) otherwise. `None` when the value is not a string, or is one
    /// serde_json refuses (a lone surrogate escape).
    pub fn string(&self) -> Option<Cow<'a, str>> {
        if self.plain_string {
            return self.raw.get(1..self.raw.len() - 1).map(Cow::Borrowed);
        }
        match self.raw.as_bytes().first() {
            Some(b'"') => serde_json::from_str::<String>(self.raw)
                .ok()
                .map(Cow::Owned),
            _ => None,
        }
    }
}

/// The members of the object whose JSON text is `object` (for instance
/// [`Event::raw_path`](crate::Event::raw_path)'s bytes, checked as UTF-8 once), in order:
/// `(key, value)`, the key's text between its quotes. `None` when `object` is not an
/// object.
///
/// # Examples
///
/// ```
/// let object = r#"{"resource":"pods","namespace":null}"#;
/// let members: Vec<_> = auditflow_core::raw::members(object).unwrap().map(Result::unwrap).collect();
/// assert_eq!(members[0].0, "resource");
/// assert_eq!(members[0].1.string().as_deref(), Some("pods"));
/// assert!(members[1].1.is_null());
/// ```
pub fn members(object: &str) -> Option<Members<'_>> {
    Some(Members {
        text: object,
        walk: MemberWalk::new(object.as_bytes())?,
    })
}

/// An iterator over an object's members; see [`members`].
pub struct Members<'a> {
    text: &'a str,
    walk: MemberWalk<'a>,
}

impl<'a> Iterator for Members<'a> {
    /// A member, or [`Unsure`] (the last item) where the text cannot settle it.
    type Item = Result<(&'a str, Value<'a>), Unsure>;

    fn next(&mut self) -> Option<Self::Item> {
        let member =
            self.walk.next()?.ok().and_then(|(key, value)| {
                Some((self.text.get(key)?, Value::found(self.text, value)?))
            });
        Some(member.ok_or(Unsure))
    }
}

/// The elements of the array whose JSON text is `array`. `None` when `array` is not an
/// array.
pub fn elements(array: &str) -> Option<Elements<'_>> {
    Some(Elements {
        text: array,
        walk: ElementWalk::new(array.as_bytes())?,
    })
}

/// An iterator over an array's elements; see [`elements`].
pub struct Elements<'a> {
    text: &'a str,
    walk: ElementWalk<'a>,
}

impl<'a> Iterator for Elements<'a> {
    /// An element, or [`Unsure`] (the last item) where the text cannot settle it.
    type Item = Result<Value<'a>, Unsure>;

    fn next(&mut self) -> Option<Self::Item> {
        let element = self
            .walk
            .next()?
            .ok()
            .and_then(|found| Value::found(self.text, found));
        Some(element.ok_or(Unsure))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(object: &str) -> Vec<Result<(&str, &str), Unsure>> {
        members(object)
            .unwrap()
            .map(|m| m.map(|(k, v)| (k, v.raw())))
            .collect()
    }

    #[test]
    fn members_come_in_order_with_nested_values_whole() {
        assert_eq!(
            all(r#" { "a" : 1 , "b":{"c":[1,{"d":"}"}]},"e":null,"a":"x"} "#),
            [
                Ok(("a", "1")),
                Ok(("b", r#"{"c":[1,{"d":"}"}]}"#)),
                Ok(("e", "null")),
                Ok(("a", r#""x""#)),
            ]
        );
        assert_eq!(all("{}"), []);
        assert!(members("[1]").is_none());
        assert!(members(r#""{""#).is_none());
    }

    #[test]
    fn a_key_with_escapes_or_a_lone_surrogate_is_unsure_and_ends_the_walk() {
        assert_eq!(
            all(r#"{"a":1,"b\u0061":2,"c":3}"#),
            [Ok(("a", "1")), Err(Unsure)]
        );
        assert_eq!(all(r#"{"a":"\ud800","c":3}"#), [Err(Unsure)]);
        assert_eq!(all(r#"{"a":1e400}"#), [Err(Unsure)]);
    }

    #[test]
    fn elements_come_in_order() {
        let items: Vec<&str> = elements(r#"[ "a", {"b":[1,2]} ,null ]"#)
            .unwrap()
            .map(|e| e.unwrap().raw())
            .collect();
        assert_eq!(items, [r#""a""#, r#"{"b":[1,2]}"#, "null"]);
        assert_eq!(elements("[]").unwrap().count(), 0);
        assert!(elements("{}").is_none());
    }

    #[test]
    fn strings_borrow_unless_escaped() {
        let values: Vec<Value<'_>> = elements(r#"["pods","a\"b\u00e9",null,12,"é"]"#)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(values[0].string(), Some(Cow::Borrowed("pods")));
        let unescaped = values[1].string().unwrap();
        assert!(matches!(unescaped, Cow::Owned(_)));
        assert_eq!(unescaped, "a\"bé");
        assert_eq!(values[2].string(), None);
        assert!(values[2].is_null());
        assert_eq!(values[3].string(), None);
        assert_eq!(values[4].string(), Some(Cow::Borrowed("é")));
    }
}
