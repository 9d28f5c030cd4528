//! Reading nested JSON values straight from an event's bytes, without parsing them.
//!
//! [`Event::raw_field`](crate::Event::raw_field) and
//! [`Event::raw_path`](crate::Event::raw_path) hand out the bytes of a value the decoder
//! already validated. A transform that needs several members of one object
//! (`objectRef.resource`, `.namespace`, `.name`, …) walks it once with [`members`] and
//! reads the strings it wants with [`string`], instead of deserialising the object,
//! which would build or check every member it does not want (a `user.extra` map, say).
//!
//! The walk agrees with the parsed value wherever it answers: a later duplicate key wins
//! if the caller keeps the last match, and wherever the bytes cannot settle what
//! serde_json would make of them (a key with escapes, a lone surrogate escape, a number
//! that may be out of range) the walk yields [`Unsure`] and stops; the caller then takes
//! the parsed route ([`Event::get`](crate::Event::get)).
//!
//! The functions expect bytes from an [`Event`](crate::Event); on other, malformed input
//! they yield [`Unsure`] or `None` rather than panicking.

use std::borrow::Cow;

use crate::scan::{ElementWalk, MemberWalk};

/// The bytes cannot settle this read; parse the value instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsure;

/// The members of the object whose bytes are `object` (as found by
/// [`Event::raw_path`](crate::Event::raw_path)), in order: `(key, value)`, the key's bytes
/// between its quotes and the value's raw bytes. `None` when `object` is not an object.
///
/// # Examples
///
/// ```
/// let object = br#"{"resource":"pods","namespace":"default"}"#;
/// let members: Vec<_> = auditflow_core::raw::members(object).unwrap().collect();
/// assert_eq!(members[1], Ok((&b"namespace"[..], &br#""default""#[..])));
/// ```
pub fn members(object: &[u8]) -> Option<Members<'_>> {
    MemberWalk::new(object).map(Members)
}

/// An iterator over an object's members; see [`members`].
pub struct Members<'a>(MemberWalk<'a>);

impl<'a> Iterator for Members<'a> {
    /// A member, or [`Unsure`] (the last item) where the bytes cannot settle it.
    type Item = Result<(&'a [u8], &'a [u8]), Unsure>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.0.next()?.map_err(|()| Unsure))
    }
}

/// The elements of the array whose bytes are `array`, each as its raw bytes. `None` when
/// `array` is not an array.
pub fn elements(array: &[u8]) -> Option<Elements<'_>> {
    ElementWalk::new(array).map(Elements)
}

/// An iterator over an array's elements; see [`elements`].
pub struct Elements<'a>(ElementWalk<'a>);

impl<'a> Iterator for Elements<'a> {
    /// An element, or [`Unsure`] (the last item) where the bytes cannot settle it.
    type Item = Result<&'a [u8], Unsure>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.0.next()?.map_err(|()| Unsure))
    }
}

/// The string whose raw bytes (quotes included) are `value`: borrowed from the bytes when
/// it has no escapes, unescaped (RFC 8259 §7) otherwise. `None` when `value` is not a
/// string, or is one serde_json refuses (a lone surrogate escape).
pub fn string(value: &[u8]) -> Option<Cow<'_, str>> {
    match value {
        // The walk that found `value` already stepped over the string; only a body with no
        // quote or backslash inside is read as is (a quote inside means `value` is not one
        // string after all).
        [b'"', body @ .., b'"'] if memchr::memchr2(b'\\', b'"', body).is_none() => {
            std::str::from_utf8(body).ok().map(Cow::Borrowed)
        }
        [b'"', ..] => serde_json::from_slice::<String>(value).ok().map(Cow::Owned),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(object: &str) -> Vec<Result<(&str, &str), Unsure>> {
        members(object.as_bytes())
            .unwrap()
            .map(|m| {
                m.map(|(k, v)| {
                    (
                        std::str::from_utf8(k).unwrap(),
                        std::str::from_utf8(v).unwrap(),
                    )
                })
            })
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
        assert!(members(b"[1]").is_none());
        assert!(members(br#""{""#).is_none());
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
        let array = br#"[ "a", {"b":[1,2]} ,null ]"#;
        let items: Vec<_> = elements(array).unwrap().collect();
        assert_eq!(
            items,
            [
                Ok(&br#""a""#[..]),
                Ok(&br#"{"b":[1,2]}"#[..]),
                Ok(&b"null"[..])
            ]
        );
        assert_eq!(elements(b"[]").unwrap().count(), 0);
        assert!(elements(b"{}").is_none());
    }

    #[test]
    fn strings_borrow_unless_escaped() {
        assert_eq!(string(br#""pods""#), Some(Cow::Borrowed("pods")));
        let unescaped = string(br#""a\"b\u00e9""#).unwrap();
        assert!(matches!(unescaped, Cow::Owned(_)));
        assert_eq!(unescaped, "a\"bé");
        assert_eq!(string(b"null"), None);
        assert_eq!(string(b"12"), None);
        assert_eq!(string(br#""\ud800""#), None);
        assert_eq!(string(br#""a"x"#), None);
    }
}
