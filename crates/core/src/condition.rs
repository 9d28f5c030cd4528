//! The condition language shared by `filter`, `sample` (`exclude`) and `query`:
//! `responseStatus.code >= 400 and annotations."authorization.k8s.io/decision" == "forbid"`.
//!
//! A condition is parsed once, when the pipeline loads (a syntax error names its 1-based
//! column), and then evaluated against each event. Evaluation reads only the top-level
//! fields a condition names ([`Event::get`] parses just that field), then walks into the
//! parsed value, so `requestObject` / `responseObject` are never touched unless named.
//!
//! Semantics, in short (docs/conditions.md has the user's version):
//! - A path that steps into an array applies to every element, and a test on it holds if
//!   it holds for any element (`user.groups == "system:masters"`). A segment of digits
//!   indexes an array instead (`sourceIPs."0"`).
//! - `==` compares like types only: numbers numerically, strings, booleans, `null`; any
//!   other pairing is unequal. `!=` is exactly `not (a == b)`, so it holds for a missing
//!   field too.
//! - `<` `<=` `>` `>=` order numbers numerically and strings by bytes; anything else
//!   (a missing field, a type mismatch) is false.
//! - `exists` holds when the path leads to a value that is not `null`.
//! - `matches` applies an unanchored regex to string values.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Number, Value};

use crate::event::{Event, RawLookup};

/// A condition that failed to parse: where (1-based column, in characters) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct ConditionError {
    /// Where the problem is: the 1-based column, counted in characters of the condition.
    pub column: usize,
    /// What is wrong there, lowercase (`expected a value after ==`).
    pub message: String,
}

/// A parsed condition, ready to evaluate against events.
#[derive(Clone)]
pub struct Condition {
    source: Box<str>,
    expr: Expr,
}

/// A dotted path into an event (`objectRef.resource`, `annotations."auditflow.io/denial"`).
#[derive(Clone, PartialEq, Eq)]
pub struct Path {
    segments: Vec<String>,
}

#[derive(Clone, Debug)]
enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Test(Path, Test),
}

#[derive(Clone, Debug)]
enum Test {
    Compare(Op, Literal),
    In(Vec<Literal>),
    Matches(Regex),
    Exists,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Debug, PartialEq)]
enum Literal {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
}

impl Condition {
    /// Parses a condition.
    pub fn parse(text: &str) -> Result<Condition, ConditionError> {
        let mut parser = Parser::new(text)?;
        let expr = parser.or()?;
        parser.expect_end("`and`, `or` or the end of the condition")?;
        Ok(Condition {
            source: text.into(),
            expr,
        })
    }

    /// Whether the event satisfies the condition.
    pub fn matches(&self, event: &Event) -> bool {
        self.expr.eval(event)
    }

    /// The condition as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl Path {
    /// Parses a path on its own (`auditID`, `objectRef."name"`).
    pub fn parse(text: &str) -> Result<Path, ConditionError> {
        let mut parser = Parser::new(text)?;
        let path = parser.path()?;
        parser.expect_end("`.` or the end of the path")?;
        Ok(path)
    }

    /// The path's segments, unquoted.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// Whether `f` holds for any value the path leads to in `event` (every element when
    /// the path ends at an array).
    pub fn any(&self, event: &Event, mut f: impl FnMut(&Value) -> bool) -> bool {
        let Some(top) = event.get(&self.segments[0]) else {
            return false;
        };
        walk(top, &self.segments[1..], true, &mut f)
    }

    /// The first value the path leads to in `event` (the first element when it ends at an
    /// array), if any.
    pub fn first<'a>(&self, event: &'a Event) -> Option<&'a Value> {
        let top = event.get(&self.segments[0])?;
        let mut found = None;
        walk(top, &self.segments[1..], true, &mut |value| {
            found = Some(value);
            true
        });
        found
    }

    /// Whether the path leads to anything but `null`.
    pub fn exists(&self, event: &Event) -> bool {
        let Some(top) = event.get(&self.segments[0]) else {
            return false;
        };
        walk(top, &self.segments[1..], false, &mut |value| {
            !value.is_null()
        })
    }
}

/// Calls `f` on the values `rest` leads to from `value`, stopping at the first `true`.
fn walk<'a>(
    value: &'a Value,
    rest: &[String],
    expand_leaf: bool,
    f: &mut dyn FnMut(&'a Value) -> bool,
) -> bool {
    let Some((segment, tail)) = rest.split_first() else {
        return match value {
            Value::Array(items) if expand_leaf => items.iter().any(&mut *f),
            value => f(value),
        };
    };
    match value {
        Value::Object(map) => map
            .get(segment.as_str())
            .is_some_and(|next| walk(next, tail, expand_leaf, f)),
        Value::Array(items) => match segment.parse::<usize>() {
            Ok(index) => items
                .get(index)
                .is_some_and(|next| walk(next, tail, expand_leaf, f)),
            // The segment applies to each element: `items.metadata.name`.
            Err(_) => items.iter().any(|item| walk(item, rest, expand_leaf, f)),
        },
        _ => false,
    }
}

impl Expr {
    fn eval(&self, event: &Event) -> bool {
        match self {
            Expr::Or(parts) => parts.iter().any(|part| part.eval(event)),
            Expr::And(parts) => parts.iter().all(|part| part.eval(event)),
            Expr::Not(inner) => !inner.eval(event),
            // A nested path in an unchanged field is found in the field's bytes and only
            // the value at its end is read: `responseStatus.code` on every event must not
            // build the whole `responseStatus`.
            Expr::Test(path, test) => match event.raw_path(&path.segments) {
                // A whole top-level object or array: parsed once and cached by the event,
                // cheaper than reading its bytes for every test that looks at it.
                RawLookup::Found([b'{' | b'[', ..]) if path.segments.len() == 1 => {
                    test.eval_parsed(path, event)
                }
                RawLookup::Found(raw) => test
                    .eval_raw(raw)
                    .unwrap_or_else(|| test.eval_parsed(path, event)),
                RawLookup::Missing => test.eval_missing(),
                RawLookup::Unavailable => test.eval_parsed(path, event),
            },
        }
    }
}

impl Test {
    /// The test on the values `path` leads to, through the parsed top-level field.
    fn eval_parsed(&self, path: &Path, event: &Event) -> bool {
        match self {
            Test::Exists => path.exists(event),
            test => test.eval_any(&mut |f| path.any(event, f)),
        }
    }

    /// The test when the path leads nowhere: only `!=` holds.
    fn eval_missing(&self) -> bool {
        matches!(self, Test::Compare(Op::Ne, _))
    }

    /// The test on the JSON bytes the path leads to; `None` when serde_json would not
    /// read them (they are then read the parsed way, which decides).
    fn eval_raw(&self, raw: &[u8]) -> Option<bool> {
        if let Test::Exists = self {
            // As in `Path::exists`: the value itself, an array not looked into.
            return Some(raw != b"null");
        }
        if let [b'"', body @ .., b'"'] = raw {
            if !body.contains(&b'\\') {
                // No escapes: the bytes are the string, no need to build it.
                return Some(self.eval_str(std::str::from_utf8(body).ok()?));
            }
        }
        let value: Value = serde_json::from_slice(raw).ok()?;
        Some(self.eval_any(&mut |f| walk(&value, &[], true, f)))
    }

    /// The test on one string value.
    fn eval_str(&self, value: &str) -> bool {
        match self {
            Test::Compare(Op::Eq, literal) => literal.as_str() == Some(value),
            Test::Compare(Op::Ne, literal) => literal.as_str() != Some(value),
            Test::Compare(op, literal) => op.accepts(literal.as_str().map(|l| value.cmp(l))),
            Test::In(literals) => literals.iter().any(|l| l.as_str() == Some(value)),
            Test::Matches(regex) => regex.is_match(value),
            Test::Exists => true,
        }
    }

    /// The test given `any`, which says whether a predicate holds for any of the values
    /// the path leads to. Not for `exists`, which does not look into arrays.
    fn eval_any(&self, any: &mut AnyValue<'_>) -> bool {
        match self {
            Test::Compare(Op::Eq, literal) => any(&mut |v| literal.equals(v)),
            Test::Compare(Op::Ne, literal) => !any(&mut |v| literal.equals(v)),
            Test::Compare(op, literal) => any(&mut |v| op.accepts(literal.order(v))),
            Test::In(literals) => any(&mut |v| literals.iter().any(|l| l.equals(v))),
            Test::Matches(regex) => any(&mut |v| v.as_str().is_some_and(|s| regex.is_match(s))),
            Test::Exists => unreachable!("`exists` is evaluated on its own"),
        }
    }
}

/// Whether a predicate holds for any of the values a path leads to.
type AnyValue<'a> = dyn FnMut(&mut dyn FnMut(&Value) -> bool) -> bool + 'a;

impl Op {
    /// Whether an ordering test holds, given how the value orders against the literal.
    fn accepts(self, ordering: Option<Ordering>) -> bool {
        ordering.is_some_and(|ordering| match self {
            Op::Lt => ordering == Ordering::Less,
            Op::Le => ordering != Ordering::Greater,
            Op::Gt => ordering == Ordering::Greater,
            Op::Ge => ordering != Ordering::Less,
            Op::Eq => ordering == Ordering::Equal,
            Op::Ne => ordering != Ordering::Equal,
        })
    }
}

impl Literal {
    fn as_str(&self) -> Option<&str> {
        match self {
            Literal::String(text) => Some(text),
            _ => None,
        }
    }

    fn equals(&self, value: &Value) -> bool {
        match (self, value) {
            (Literal::Null, Value::Null) => true,
            (Literal::Bool(a), Value::Bool(b)) => a == b,
            (Literal::Number(a), Value::Number(b)) => {
                compare_numbers(b, a) == Some(Ordering::Equal)
            }
            (Literal::String(a), Value::String(b)) => a == b,
            _ => false,
        }
    }

    /// How `value` orders against this literal, when both are numbers or both strings.
    fn order(&self, value: &Value) -> Option<Ordering> {
        match (self, value) {
            (Literal::Number(a), Value::Number(b)) => compare_numbers(b, a),
            (Literal::String(a), Value::String(b)) => Some(b.as_str().cmp(a.as_str())),
            _ => None,
        }
    }
}

/// Numeric order, exact for integers (no rounding through `f64` for large ones).
fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    if let (Some(a), Some(b)) = (a.as_i64(), b.as_i64()) {
        return Some(a.cmp(&b));
    }
    if let (Some(a), Some(b)) = (a.as_u64(), b.as_u64()) {
        return Some(a.cmp(&b));
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

impl FromStr for Condition {
    type Err = ConditionError;

    fn from_str(text: &str) -> Result<Condition, ConditionError> {
        Condition::parse(text)
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Condition {
    /// From a string; a syntax error reads `column 12: expected ...`, which the config
    /// loader prefixes with the file, component id and option.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Condition, D::Error> {
        let text = String::deserialize(deserializer)?;
        Condition::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Condition {
    /// As written, so that defaults show in schemas and configs round-trip.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl FromStr for Path {
    type Err = ConditionError;

    fn from_str(text: &str) -> Result<Path, ConditionError> {
        Path::parse(text)
    }
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            if is_plain_segment(segment) {
                f.write_str(segment)?;
            } else {
                write!(f, "{}", Value::String(segment.clone()))?;
            }
        }
        Ok(())
    }
}

impl Serialize for Path {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Path {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Path, D::Error> {
        let text = String::deserialize(deserializer)?;
        Path::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_continue(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn is_plain_segment(segment: &str) -> bool {
    let mut chars = segment.chars();
    chars.next().is_some_and(is_ident_start)
        && chars.all(is_ident_continue)
        && !KEYWORDS.contains(&segment)
}

const KEYWORDS: &[&str] = &[
    "and", "or", "not", "in", "matches", "exists", "true", "false", "null",
];

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Number(Number),
    Op(Op),
    Dot,
    Comma,
    LParen,
    RParen,
    LBracket,
    RBracket,
    End,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Ident(name) => write!(f, "`{name}`"),
            Token::Str(text) => write!(f, "the string {}", Value::String(text.clone())),
            Token::Number(number) => write!(f, "the number {number}"),
            Token::Op(op) => write!(f, "`{}`", op.as_str()),
            Token::Dot => f.write_str("`.`"),
            Token::Comma => f.write_str("`,`"),
            Token::LParen => f.write_str("`(`"),
            Token::RParen => f.write_str("`)`"),
            Token::LBracket => f.write_str("`[`"),
            Token::RBracket => f.write_str("`]`"),
            Token::End => f.write_str("the end of the condition"),
        }
    }
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

/// Splits the text into tokens, each with its 1-based column.
fn tokenize(text: &str) -> Result<Vec<(Token, usize)>, ConditionError> {
    let chars: Vec<char> = text.chars().collect();
    let error = |column: usize, message: String| ConditionError { column, message };
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let two = |second: char| chars.get(i + 1) == Some(&second);
        let (token, width) = match c {
            '.' => (Token::Dot, 1),
            ',' => (Token::Comma, 1),
            '(' => (Token::LParen, 1),
            ')' => (Token::RParen, 1),
            '[' => (Token::LBracket, 1),
            ']' => (Token::RBracket, 1),
            '=' if two('=') => (Token::Op(Op::Eq), 2),
            '!' if two('=') => (Token::Op(Op::Ne), 2),
            '<' if two('=') => (Token::Op(Op::Le), 2),
            '>' if two('=') => (Token::Op(Op::Ge), 2),
            '<' => (Token::Op(Op::Lt), 1),
            '>' => (Token::Op(Op::Gt), 1),
            '=' => return Err(error(column, "unexpected `=`: use `==` to compare".into())),
            '!' => return Err(error(column, "unexpected `!`: use `!=` or `not`".into())),
            '"' | '\'' => {
                let (text, width) = lex_string(&chars[i..], column)?;
                (Token::Str(text), width)
            }
            '-' | '0'..='9' => {
                let width = chars[i..]
                    .iter()
                    .enumerate()
                    .take_while(|(n, c)| {
                        c.is_ascii_digit()
                            || matches!(c, '.' | 'e' | 'E' | '+')
                            || (**c == '-' && (*n == 0 || matches!(chars[i + n - 1], 'e' | 'E')))
                    })
                    .count();
                let literal: String = chars[i..i + width].iter().collect();
                let number = Number::from_str(&literal)
                    .map_err(|_| error(column, format!("invalid number `{literal}`")))?;
                (Token::Number(number), width)
            }
            c if is_ident_start(c) => {
                let width = chars[i..]
                    .iter()
                    .take_while(|c| is_ident_continue(**c))
                    .count();
                (Token::Ident(chars[i..i + width].iter().collect()), width)
            }
            c => {
                let hint = if c == '/' || c == ':' {
                    ": quote path segments that contain it, as in annotations.\"authorization.k8s.io/decision\""
                } else {
                    ""
                };
                return Err(error(column, format!("unexpected character `{c}`{hint}")));
            }
        };
        tokens.push((token, column));
        i += width;
    }
    tokens.push((Token::End, chars.len() + 1));
    Ok(tokens)
}

/// A quoted string starting at `chars[0]`: its unescaped text and its width in characters.
fn lex_string(chars: &[char], column: usize) -> Result<(String, usize), ConditionError> {
    let quote = chars[0];
    let mut text = String::new();
    let mut i = 1;
    loop {
        let Some(&c) = chars.get(i) else {
            return Err(ConditionError {
                column,
                message: "unterminated string: add the closing quote".into(),
            });
        };
        i += 1;
        if c == quote {
            return Ok((text, i));
        }
        if c != '\\' {
            text.push(c);
            continue;
        }
        let escape_column = column + i - 1;
        let escaped = chars.get(i).copied();
        i += 1;
        text.push(match escaped {
            Some('"') => '"',
            Some('\'') => '\'',
            Some('\\') => '\\',
            Some('/') => '/',
            Some('n') => '\n',
            Some('t') => '\t',
            Some('r') => '\r',
            Some('u') => {
                let hex: String = chars.get(i..i + 4).unwrap_or_default().iter().collect();
                let decoded = u32::from_str_radix(&hex, 16)
                    .ok()
                    .filter(|_| hex.len() == 4)
                    .and_then(char::from_u32);
                i += 4;
                decoded.ok_or_else(|| ConditionError {
                    column: escape_column,
                    message: "invalid `\\u` escape: expected four hex digits of a character".into(),
                })?
            }
            other => {
                return Err(ConditionError {
                    column: escape_column,
                    message: match other {
                        Some(c) => format!("unknown escape `\\{c}`"),
                        None => "unterminated string: add the closing quote".into(),
                    },
                })
            }
        });
    }
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    next: usize,
}

impl Parser {
    fn new(text: &str) -> Result<Parser, ConditionError> {
        Ok(Parser {
            tokens: tokenize(text)?,
            next: 0,
        })
    }

    fn peek(&self) -> &Token {
        &self.tokens[self.next].0
    }

    fn column(&self) -> usize {
        self.tokens[self.next].1
    }

    fn bump(&mut self) -> (Token, usize) {
        let token = self.tokens[self.next].clone();
        if token.0 != Token::End {
            self.next += 1;
        }
        token
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(self.peek(), Token::Ident(name) if name == keyword)
    }

    fn unexpected(&self, expected: &str) -> ConditionError {
        ConditionError {
            column: self.column(),
            message: format!("expected {expected}, found {}", self.peek()),
        }
    }

    fn expect_end(&self, expected: &str) -> Result<(), ConditionError> {
        match self.peek() {
            Token::End => Ok(()),
            _ => Err(self.unexpected(expected)),
        }
    }

    fn or(&mut self) -> Result<Expr, ConditionError> {
        let mut parts = vec![self.and()?];
        while self.is_keyword("or") {
            self.bump();
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Expr::Or(parts)
        })
    }

    fn and(&mut self) -> Result<Expr, ConditionError> {
        let mut parts = vec![self.unary()?];
        while self.is_keyword("and") {
            self.bump();
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Expr::And(parts)
        })
    }

    fn unary(&mut self) -> Result<Expr, ConditionError> {
        if self.is_keyword("not") {
            self.bump();
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if *self.peek() == Token::LParen {
            let open = self.column();
            self.bump();
            let inner = self.or()?;
            if *self.peek() != Token::RParen {
                let mut error = self.unexpected("`and`, `or` or `)`");
                error.message += &format!(" (the `(` at column {open} is not closed)");
                return Err(error);
            }
            self.bump();
            return Ok(inner);
        }
        let path = self.path()?;
        let test = self.test(&path)?;
        Ok(Expr::Test(path, test))
    }

    fn path(&mut self) -> Result<Path, ConditionError> {
        let mut segments = vec![self.segment(true)?];
        while *self.peek() == Token::Dot {
            self.bump();
            segments.push(self.segment(false)?);
        }
        Ok(Path { segments })
    }

    fn segment(&mut self, first: bool) -> Result<String, ConditionError> {
        match self.peek() {
            // A keyword cannot start a path (`not`, `true`), but may follow a dot.
            Token::Ident(name) if !first || !KEYWORDS.contains(&name.as_str()) => {
                let name = name.clone();
                self.bump();
                Ok(name)
            }
            Token::Str(text) => {
                let text = text.clone();
                self.bump();
                Ok(text)
            }
            _ if first => Err(self.unexpected("a field path such as `objectRef.resource`")),
            _ => Err(self.unexpected("a field name after `.`")),
        }
    }

    fn test(&mut self, path: &Path) -> Result<Test, ConditionError> {
        let (token, column) = self.bump();
        match token {
            Token::Op(op) => Ok(Test::Compare(op, self.literal()?)),
            Token::Ident(keyword) if keyword == "exists" => Ok(Test::Exists),
            Token::Ident(keyword) if keyword == "in" => {
                if *self.peek() != Token::LBracket {
                    return Err(self.unexpected("`[` to open the list after `in`"));
                }
                self.bump();
                let mut literals = Vec::new();
                while *self.peek() != Token::RBracket {
                    literals.push(self.literal()?);
                    match self.peek() {
                        Token::Comma => {
                            self.bump();
                        }
                        Token::RBracket => {}
                        _ => return Err(self.unexpected("`,` or `]`")),
                    }
                }
                self.bump();
                Ok(Test::In(literals))
            }
            Token::Ident(keyword) if keyword == "matches" => {
                let column = self.column();
                match self.bump().0 {
                    Token::Str(pattern) => {
                        Regex::new(&pattern)
                            .map(Test::Matches)
                            .map_err(|e| ConditionError {
                                column,
                                message: format!("invalid regex: {e}"),
                            })
                    }
                    _ => {
                        self.next -= 1;
                        Err(self.unexpected("a quoted regex after `matches`"))
                    }
                }
            }
            token => Err(ConditionError {
                column,
                message: format!(
                    "expected `==`, `!=`, `<`, `<=`, `>`, `>=`, `in`, `matches` or `exists` \
                     after the path `{path}`, found {token}"
                ),
            }),
        }
    }

    fn literal(&mut self) -> Result<Literal, ConditionError> {
        let literal = match self.peek() {
            Token::Str(text) => Literal::String(text.clone()),
            Token::Number(number) => Literal::Number(number.clone()),
            Token::Ident(name) if name == "true" => Literal::Bool(true),
            Token::Ident(name) if name == "false" => Literal::Bool(false),
            Token::Ident(name) if name == "null" => Literal::Null,
            Token::Ident(name) => {
                return Err(ConditionError {
                    column: self.column(),
                    message: format!(
                        "expected a value (a quoted string, a number, true, false or null), \
                         found `{name}`: quote strings, as in \"{name}\""
                    ),
                })
            }
            _ => {
                return Err(
                    self.unexpected("a value (a quoted string, a number, true, false or null)")
                )
            }
        };
        self.bump();
        Ok(literal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(text: &str) -> Event {
        Event::from_bytes(bytes::Bytes::copy_from_slice(text.as_bytes())).unwrap()
    }

    fn error(text: &str) -> String {
        Condition::parse(text).unwrap_err().to_string()
    }

    const DENIED: &str = r#"{"kind":"Event","level":"Metadata","auditID":"332b4024-e672-4823-9bfa-80a2ddf4aa1e","stage":"ResponseComplete","requestURI":"/api/v1/secrets?limit=500","verb":"list","user":{"username":"bob","uid":"uid-1002","groups":["qa-team","system:authenticated"]},"sourceIPs":["127.0.0.1"],"objectRef":{"resource":"secrets","apiVersion":"v1"},"responseStatus":{"metadata":{},"status":"Failure","reason":"Forbidden","code":403},"annotations":{"authorization.k8s.io/decision":"forbid","authorization.k8s.io/reason":""}}"#;

    fn holds(condition: &str) -> bool {
        Condition::parse(condition)
            .unwrap_or_else(|e| panic!("{condition}: {e}"))
            .matches(&event(DENIED))
    }

    #[test]
    fn comparisons_on_nested_and_quoted_paths() {
        assert!(holds(
            r#"annotations."authorization.k8s.io/decision" == "forbid""#
        ));
        assert!(holds(
            r#"objectRef.resource == "secrets" and verb == "list""#
        ));
        assert!(holds("responseStatus.code >= 400"));
        assert!(holds("responseStatus.code == 403.0"));
        assert!(!holds("responseStatus.code < 403"));
        assert!(holds(
            "responseStatus.code <= 403 and responseStatus.code > -1"
        ));
        assert!(holds(r#"verb < "watch" and verb > "get""#));
        assert!(holds(r#"verb in ["create", "list",]"#));
        assert!(!holds(r#"verb in []"#));
        assert!(holds(r#"requestURI matches "^/api/v1/secrets\\?""#));
        assert!(holds(r#"'objectRef'.'resource' == 'secrets'"#));
    }

    #[test]
    fn arrays_match_when_any_element_does() {
        assert!(holds(r#"user.groups == "qa-team""#));
        assert!(holds(r#"user.groups matches "^system:""#));
        assert!(!holds(r#"user.groups == "system:masters""#));
        assert!(holds(r#"user.groups != "system:masters""#));
        assert!(holds(r#"sourceIPs."0" == "127.0.0.1""#));
        assert!(!holds(r#"sourceIPs."1" exists"#));
    }

    #[test]
    fn missing_fields_and_type_mismatches() {
        assert!(!holds("objectRef.namespace exists"));
        assert!(holds("not objectRef.namespace exists"));
        assert!(holds(r#"objectRef.namespace != "kube-system""#));
        assert!(!holds(r#"responseStatus.code == "403""#));
        assert!(!holds(r#"responseStatus.code > "400""#));
        assert!(!holds("verb > 3"));
        assert!(holds("responseStatus.metadata exists"));
        assert!(!holds("impersonatedUser exists"));
        assert!(!holds("stage == null"));
        assert!(event(r#"{"a":null}"#).get("a").is_some());
        let null = Condition::parse("a == null and not a exists").unwrap();
        assert!(null.matches(&event(r#"{"a":null}"#)));
    }

    #[test]
    fn precedence_and_parentheses() {
        // `and` binds tighter than `or`; `not` tighter than both.
        assert!(holds(r#"verb == "get" and verb == "x" or verb == "list""#));
        assert!(!holds(
            r#"verb == "get" and (verb == "x" or verb == "list")"#
        ));
        assert!(!holds(r#"not verb == "list" or verb == "get""#));
        assert!(holds(r#"not (verb == "get" or verb == "watch")"#));
        assert!(holds(r#"not not verb exists"#));
    }

    #[test]
    fn large_integers_compare_exactly() {
        let e = event(r#"{"n":9007199254740993}"#);
        assert!(Condition::parse("n > 9007199254740992")
            .unwrap()
            .matches(&e));
        assert!(!Condition::parse("n == 9007199254740992")
            .unwrap()
            .matches(&e));
    }

    #[test]
    fn string_escapes() {
        let e = event(r#"{"m":"a \"b\"\n\u00b5s"}"#);
        assert!(Condition::parse(r#"m == "a \"b\"\n\u00b5s""#)
            .unwrap()
            .matches(&e));
        assert!(Condition::parse("m == 'a \"b\"\\nµs'").unwrap().matches(&e));
    }

    #[test]
    fn errors_name_the_column() {
        assert_eq!(
            error(r#"verb = "get""#),
            "column 6: unexpected `=`: use `==` to compare"
        );
        assert_eq!(
            error(r#"verb == get"#),
            "column 9: expected a value (a quoted string, a number, true, false or null), \
             found `get`: quote strings, as in \"get\""
        );
        assert_eq!(
            error(r#"objectRef.resource "pods""#),
            "column 20: expected `==`, `!=`, `<`, `<=`, `>`, `>=`, `in`, `matches` or \
             `exists` after the path `objectRef.resource`, found the string \"pods\""
        );
        assert_eq!(
            error(r#"(verb == "get""#),
            "column 15: expected `and`, `or` or `)`, found the end of the condition \
             (the `(` at column 1 is not closed)"
        );
        assert_eq!(
            error(r#"verb == "get" verb"#),
            "column 15: expected `and`, `or` or the end of the condition, found `verb`"
        );
        assert_eq!(
            error(r#"verb == "get"#),
            "column 9: unterminated string: add the closing quote"
        );
        assert_eq!(
            error(r#"annotations.authorization.k8s.io/decision exists"#),
            "column 33: unexpected character `/`: quote path segments that contain it, as in \
             annotations.\"authorization.k8s.io/decision\""
        );
        assert!(error(r#"verb matches "(""#).starts_with("column 14: invalid regex: "));
        assert_eq!(
            error(r#"verb in "get""#),
            "column 9: expected `[` to open the list after `in`, found the string \"get\""
        );
        assert_eq!(error(""), "column 1: expected a field path such as `objectRef.resource`, found the end of the condition");
        assert_eq!(error("verb == \"a\\q\""), "column 11: unknown escape `\\q`");
        // Columns count characters, not bytes.
        assert_eq!(
            error("m == \"µs\" x"),
            "column 11: expected `and`, `or` or the end of the condition, found `x`"
        );
    }

    #[test]
    fn conditions_deserialize_from_strings() {
        let condition: Condition =
            serde_json::from_value(Value::String(r#"verb == "list""#.into())).unwrap();
        assert!(condition.matches(&event(DENIED)));
        let error = serde_json::from_value::<Condition>(Value::String("verb ==".into()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "column 8: expected a value (a quoted string, a number, true, false or null), \
             found the end of the condition"
        );
    }

    #[test]
    fn paths_parse_and_print() {
        let path = Path::parse(r#"annotations."auditflow.io/denial""#).unwrap();
        assert_eq!(path.segments(), ["annotations", "auditflow.io/denial"]);
        assert_eq!(path.to_string(), r#"annotations."auditflow.io/denial""#);
        assert_eq!(
            Path::parse("auditID ==").unwrap_err().to_string(),
            "column 9: expected `.` or the end of the path, found `==`"
        );
        let e = event(DENIED);
        assert_eq!(
            Path::parse("user.groups").unwrap().first(&e),
            Some(&Value::String("qa-team".into()))
        );
    }

    /// The condition evaluated the way it was before the raw route: every test through
    /// the parsed top-level field.
    fn parsed_only(expr: &Expr, event: &Event) -> bool {
        match expr {
            Expr::Or(parts) => parts.iter().any(|part| parsed_only(part, event)),
            Expr::And(parts) => parts.iter().all(|part| parsed_only(part, event)),
            Expr::Not(inner) => !parsed_only(inner, event),
            Expr::Test(path, test) => test.eval_parsed(path, event),
        }
    }

    const PATHS: &[&str] = &[
        "a.b",
        "a.c",
        "a.b.c",
        "a.x",
        r#"a."0""#,
        r#"a."b""#,
        "a.b.d.e",
        "responseStatus.code",
        "responseStatus.metadata",
        "responseStatus.status",
        r#"annotations."auditflow.io/denial""#,
        r#"annotations."authorization.k8s.io/decision""#,
        "user.username",
        "user.groups",
        "user.extra",
        "objectRef.resource",
        "objectRef.namespace",
        "requestObject.metadata.name",
        "requestObject.spec",
        "responseObject.kind",
        "verb.x",
    ];

    const TESTS: &[&str] = &[
        "== 1",
        "== 2",
        "!= 1",
        ">= 2",
        "< 400",
        ">= 400",
        "== 403.0",
        r#"== "x""#,
        r#"!= "x""#,
        r#"> "m""#,
        r#"<= "m""#,
        r#"== "x\"y""#,
        r#"in [1, "x", null, true, "forbid"]"#,
        r#"matches "^s""#,
        r#"matches "o""#,
        "exists",
        "== null",
        "!= null",
        "== true",
    ];

    /// Asserts that the raw route and the parsed route agree on every path and test,
    /// on `event` as it is and with its top-level fields already parsed.
    fn assert_routes_agree(event: &Event) {
        for path in PATHS {
            for test in TESTS {
                let text = format!("{path} {test}");
                let condition = Condition::parse(&text).unwrap();
                let fresh = event.clone();
                let raw = condition.matches(&fresh);
                let parsed = parsed_only(&condition.expr, &event.clone());
                assert_eq!(raw, parsed, "`{text}` on {event:?}");
                // Once parsed (the top-level field cached), the answer is the same.
                assert_eq!(
                    condition.matches(&fresh),
                    raw,
                    "`{text}` cached on {event:?}"
                );
            }
        }
    }

    const TRICKY: &[&str] = &[
        r#"{"a":{"b":1,"c":"x"}}"#,
        r#"{"a":{"b":1,"b":2}}"#,
        r#"{"a":{"b":2,"b":1}}"#,
        r#"{"a":{"b":1},"a":{"c":"x"}}"#,
        r#"{"a":{"\u0062":2}}"#,
        r#"{"a":{"b":1,"\u0062":2}}"#,
        r#"{"a":{"b\"":2,"b":1}}"#,
        r#"{"a":{"b":1,"c":1e400}}"#,
        r#"{"a":{"b":1,"c":{"d":[1e400]}}}"#,
        r#"{"a":{"b":1,"c":2e2}}"#,
        r#"{"a":{"b":1,"c":"\ud800"}}"#,
        r#"{"a":{"b":1,"c":"\ud83d\ude00"}}"#,
        r#"{"a":{"b":"x\"y"}}"#,
        r#"{"a":{"b":"s\u00b5"}}"#,
        r#"{"a":{"b":"sun"}}"#,
        r#"{"a":{"b":"µs"}}"#,
        r#"{"a":{"b":null,"c":true}}"#,
        r#"{"a":{"b":[1,"x",null],"c":[]}}"#,
        r#"{"a":{"b":[],"c":{}}}"#,
        r#"{"a":{"b":{"c":"x","d":{"e":1}}}}"#,
        r#"{"a":{"b":{"c":null}}}"#,
        r#"{"a":[{"b":1},{"b":2}]}"#,
        r#"{"a":{"0":"x"}}"#,
        r#"{"a":["x"]}"#,
        r#"{"a":5}"#,
        r#"{"a":"str"}"#,
        r#"{"a":null}"#,
        r#"{"a":{}}"#,
        r#"{"a":1e400}"#,
        r#"{ "a" : { "b" : 1 , "c" : [ 1 , { "d" : "x" } ] } , "verb" : "get" }"#,
        r#"{"a":{"b":-0.5,"c":12345678901234567890123}}"#,
        r#"{"a":{"b":9007199254740993}}"#,
        r#"{"\u0061":{"b":1}}"#,
    ];

    #[test]
    fn raw_and_parsed_routes_agree_on_tricky_objects() {
        for text in TRICKY {
            assert_routes_agree(&event(text));
        }
    }

    #[test]
    fn raw_and_parsed_routes_agree_on_captured_and_edited_events() {
        let mut found = 0;
        // The testkit's events are of the other build of this crate: decode them here.
        for captured in auditflow_testkit::events::audit_log_events() {
            let event = Event::from_bytes(captured.raw().clone()).unwrap();
            assert_routes_agree(&event);
            if let RawLookup::Found(_) = event.raw_path(&["responseStatus", "code"]) {
                found += 1;
            }
            let text = String::from_utf8(event.raw().to_vec()).unwrap();
            let edits = [
                // A duplicate wins over the original.
                text.replace(r#""code":"#, r#""code":404,"code":"#),
                text.replace(r#""code":"#, r#""code":"x","code":"#),
                text.replace(r#""code":"#, r#""cod\u0065":1,"code":"#),
                // An escaped key that means the sought one: the parsed route decides.
                text.replace(
                    r#""annotations":{"#,
                    r#""annotations":{"auditflow.io\/denial":"x","#,
                ),
                text.replace(r#""annotations":{"#, r#""annotations":{"z":1e400,"#),
                text.replace(
                    r#""responseStatus":{"#,
                    r#""responseStatus":{"s":"\udc00","#,
                ),
            ];
            for edited in edits {
                assert_routes_agree(&super::tests::event(&edited));
            }
            // A changed field takes the parsed route.
            let mut changed = event.clone();
            changed
                .annotations_mut()
                .insert("auditflow.io/denial".into(), "x".into());
            assert_routes_agree(&changed);
        }
        // The raw route is the one taken on the captured events.
        assert!(found > 200, "{found}");
    }

    #[test]
    fn the_raw_route_finds_nested_members_without_parsing() {
        let e = event(r#"{"a":{"b":{"c":"x"},"b":{"c":[1]}},"d":[{"e":1}]}"#);
        assert_eq!(
            e.raw_path(&["a", "b", "c"]),
            RawLookup::Found(b"[1]".as_slice())
        );
        assert_eq!(e.raw_path(&["a", "x"]), RawLookup::Missing);
        assert_eq!(e.raw_path(&["z", "x"]), RawLookup::Missing);
        assert_eq!(e.raw_path(&["d", "e"]), RawLookup::Unavailable);
        assert_eq!(
            e.raw_path(&["a"]),
            RawLookup::Found(br#"{"b":{"c":"x"},"b":{"c":[1]}}"#.as_slice())
        );
        let numbers = event(r#"{"n":1e400,"m":1}"#);
        assert_eq!(numbers.raw_path(&["n"]), RawLookup::Unavailable);
        assert_eq!(numbers.raw_path(&["m"]), RawLookup::Unavailable);
        let escaped = event(r#"{"a":{"\u0062":1}}"#);
        assert_eq!(escaped.raw_path(&["a", "b"]), RawLookup::Unavailable);
        // Reading the field caches it; the parsed value is then the cheaper route.
        e.get("a");
        assert_eq!(e.raw_path(&["a", "x"]), RawLookup::Unavailable);
    }

    proptest::proptest! {
        #[test]
        fn raw_and_parsed_routes_agree_on_random_objects(text in object(3)) {
            assert_routes_agree(&event(&format!(r#"{{"a":{text},"verb":{text}}}"#)));
        }
    }

    /// JSON objects over a few keys (escaped, duplicated) and awkward values.
    fn object(depth: u32) -> proptest::strategy::BoxedStrategy<String> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just("1".to_owned()),
            Just("2".to_owned()),
            Just("403".to_owned()),
            Just("1e400".to_owned()),
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just(r#""x""#.to_owned()),
            Just(r#""x\"y""#.to_owned()),
            Just(r#""sun""#.to_owned()),
            Just(r#""\ud800""#.to_owned()),
            Just(r#"[1,"x"]"#.to_owned()),
            Just("[]".to_owned()),
            Just("{}".to_owned()),
        ];
        let key = prop_oneof![
            Just("b"),
            Just("c"),
            Just("d"),
            Just("0"),
            Just(r#"\u0062"#),
            Just(r#"b\""#),
        ];
        if depth == 0 {
            return leaf.boxed();
        }
        let value = prop_oneof![leaf, object(depth - 1)];
        let members = proptest::collection::vec((key, value), 0..5).prop_map(|members| {
            let members: Vec<String> = members
                .into_iter()
                .map(|(k, v)| format!(r#""{k}":{v}"#))
                .collect();
            format!("{{{}}}", members.join(","))
        });
        prop_oneof![members.clone(), members.prop_map(|m| format!("[{m}]"))].boxed()
    }
}
