//! Property: `redact` changes only the secrets' characters. Random valid events (nesting,
//! big and odd numbers, every kind of escape, non-ASCII text, odd whitespace) with
//! secrets planted in them, some written with escapes, come out as valid JSON that is
//! the input byte for byte with each planted secret replaced by `[REDACTED]`, plus the
//! `auditflow.io/redacted` annotation; without a planted secret they come out unchanged.

use auditflow_core::{BuildContext, Transform, TransformConfig};
use auditflow_redact::RedactConfig;
use auditflow_testkit::{event, run_transform};
use proptest::prelude::*;
use serde::de::IgnoredAny;
use serde_json::json;

/// One piece of the event's JSON text: bytes that must come out unchanged, or the bytes
/// of a planted secret that must come out as `[REDACTED]`.
#[derive(Debug, Clone)]
enum Part {
    Kept(String),
    Secret(String),
}

/// A value to write, with secrets planted in some of its strings.
#[derive(Debug, Clone)]
enum Gen {
    /// A number, `true`, `false` or `null`, as written.
    Scalar(&'static str),
    Str(Vec<Piece>),
    Array(Vec<Gen>, &'static str),
    Object(Vec<(String, Gen)>, &'static str),
    /// `{"env":[{"name":"DB_PASSWORD","value":"<secret>"}]}`.
    Env(Secret),
    /// `{"args":["--api-key=<secret>","--port=8080"]}`.
    Args(Secret),
}

/// Part of a string: text that holds no secret, or a planted secret with the text that
/// makes it one.
#[derive(Debug, Clone)]
enum Piece {
    Text(Vec<(char, Escape)>),
    Planted(Planted, Secret),
}

#[derive(Debug, Clone, Copy)]
enum Planted {
    /// ` Bearer <secret> `.
    Bearer,
    /// ` <JWT> `.
    Jwt,
    /// ` AKIA<16> `.
    AwsKeyId,
    /// ` ghp_<36> `.
    GitHub,
}

/// The characters of a secret and how each is written.
#[derive(Debug, Clone)]
struct Secret(Vec<(char, Escape)>);

#[derive(Debug, Clone, Copy)]
enum Escape {
    /// As it is (when JSON allows).
    No,
    /// `\u00XX` (or a surrogate pair).
    Unicode,
    /// `\n`, `\t`, `\"`, `\\`, `\/` where one exists.
    Short,
}

fn escape() -> impl Strategy<Value = Escape> {
    prop_oneof![6 => Just(Escape::No), 1 => Just(Escape::Unicode), 1 => Just(Escape::Short)]
}

/// Text that no detector takes for a secret: no `a`, `e`, `o` (every marker word has one
/// of them), no `:`, `-`, `_`, `.`, no upper case.
fn plain_char() -> impl Strategy<Value = char> {
    prop_oneof![
        prop::sample::select(
            "bcdfghijklmnpqrstuvwxyz0123456789 "
                .chars()
                .collect::<Vec<_>>()
        ),
        prop::sample::select(vec![
            '&', '<', '>', '"', '\\', '/', '\n', '\t', '\u{1}', 'é', 'µ', '😀', '語'
        ]),
    ]
}

fn text() -> impl Strategy<Value = Vec<(char, Escape)>> {
    prop::collection::vec((plain_char(), escape()), 0..12)
}

fn secret_of(chars: &'static str, length: usize) -> impl Strategy<Value = Secret> {
    let chars: Vec<char> = chars.chars().collect();
    prop::collection::vec((prop::sample::select(chars), escape()), length).prop_map(Secret)
}

const ALNUM: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn planted() -> impl Strategy<Value = Piece> {
    prop_oneof![
        secret_of(ALNUM, 20).prop_map(|secret| Piece::Planted(Planted::Bearer, secret)),
        (secret_of(ALNUM, 12), secret_of(ALNUM, 12)).prop_map(|(a, b)| {
            // eyJ<a>.<b>.sig
            let mut chars: Vec<(char, Escape)> = "eyJ".chars().map(|c| (c, Escape::No)).collect();
            chars.extend(a.0);
            chars.push(('.', Escape::No));
            chars.extend(b.0);
            chars.extend(".c2ln".chars().map(|c| (c, Escape::Unicode)));
            Piece::Planted(Planted::Jwt, Secret(chars))
        }),
        secret_of("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
            .prop_map(|secret| Piece::Planted(Planted::AwsKeyId, secret)),
        secret_of(ALNUM, 36).prop_map(|secret| Piece::Planted(Planted::GitHub, secret)),
    ]
}

fn string() -> impl Strategy<Value = Gen> {
    prop::collection::vec(
        prop_oneof![4 => text().prop_map(Piece::Text), 1 => planted()],
        0..4,
    )
    .prop_map(Gen::Str)
}

fn scalar() -> impl Strategy<Value = Gen> {
    prop::sample::select(vec![
        "123456789012345678901234567890",
        "1.50",
        "-0.0E+2",
        "1e400",
        "0",
        "-12",
        "true",
        "false",
        "null",
    ])
    .prop_map(Gen::Scalar)
}

fn whitespace() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", " ", "\t", "  ", " \t "])
}

/// Keys no position-based detector looks for (`data`, `token`, `env`, `kind`, ... are
/// lower case).
fn key() -> impl Strategy<Value = String> {
    "[A-Z0-9]{1,6}"
}

fn value() -> impl Strategy<Value = Gen> {
    let leaf = prop_oneof![
        3 => string(),
        2 => scalar(),
        1 => secret_of(ALNUM, 14).prop_map(Gen::Env),
        1 => secret_of(ALNUM, 14).prop_map(Gen::Args),
    ];
    leaf.prop_recursive(5, 48, 5, |inner| {
        prop_oneof![
            (prop::collection::vec(inner.clone(), 0..5), whitespace())
                .prop_map(|(items, ws)| Gen::Array(items, ws)),
            (prop::collection::vec((key(), inner), 0..5), whitespace())
                .prop_map(|(members, ws)| Gen::Object(members, ws)),
        ]
    })
}

fn push_char(c: char, escape: Escape, out: &mut String) {
    let short = match c {
        '"' => Some("\\\""),
        '\\' => Some("\\\\"),
        '\n' => Some("\\n"),
        '\t' => Some("\\t"),
        '/' => Some("\\/"),
        _ => None,
    };
    let must_escape = matches!(c, '"' | '\\') || (c as u32) < 0x20;
    match (escape, short) {
        (Escape::Short, Some(short)) => out.push_str(short),
        (Escape::No, _) if !must_escape => out.push(c),
        (Escape::No, Some(short)) if must_escape => out.push_str(short),
        _ => {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
}

fn push_chars(chars: &[(char, Escape)], out: &mut String) {
    for &(c, escape) in chars {
        push_char(c, escape, out);
    }
}

struct Writer {
    parts: Vec<Part>,
    kept: String,
}

impl Writer {
    fn kept(&mut self, text: &str) {
        self.kept.push_str(text);
    }

    fn secret(&mut self, secret: &Secret) {
        self.parts.push(Part::Kept(std::mem::take(&mut self.kept)));
        let mut written = String::new();
        push_chars(&secret.0, &mut written);
        self.parts.push(Part::Secret(written));
    }

    fn value(&mut self, value: &Gen) {
        match value {
            Gen::Scalar(text) => self.kept(text),
            Gen::Str(pieces) => {
                self.kept("\"");
                for piece in pieces {
                    match piece {
                        Piece::Text(chars) => {
                            let mut written = String::new();
                            push_chars(chars, &mut written);
                            self.kept(&written);
                        }
                        Piece::Planted(kind, secret) => {
                            let (before, prefix) = match kind {
                                Planted::Bearer => (" Bearer ", ""),
                                Planted::Jwt => (" ", ""),
                                Planted::AwsKeyId => (" ", "AKIA"),
                                Planted::GitHub => (" ", "ghp_"),
                            };
                            self.kept(before);
                            let mut whole =
                                Secret(prefix.chars().map(|c| (c, Escape::No)).collect::<Vec<_>>());
                            whole.0.extend(secret.0.iter().copied());
                            self.secret(&whole);
                            self.kept(" ");
                        }
                    }
                }
                self.kept("\"");
            }
            Gen::Array(items, ws) => {
                self.kept("[");
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.kept(",");
                    }
                    self.kept(ws);
                    self.value(item);
                    self.kept(ws);
                }
                self.kept("]");
            }
            Gen::Object(members, ws) => {
                self.kept("{");
                for (i, (key, member)) in members.iter().enumerate() {
                    if i > 0 {
                        self.kept(",");
                    }
                    self.kept(&format!("{ws}\"{key}\"{ws}:{ws}"));
                    self.value(member);
                }
                self.kept(ws);
                self.kept("}");
            }
            Gen::Env(secret) => {
                self.kept(r#"{"env":[{"name":"LOG_LEVEL","value":"debug"},{"name":"DB_PASSWORD","value":""#);
                self.secret(secret);
                self.kept(r#""}]}"#);
            }
            Gen::Args(secret) => {
                self.kept(r#"{"args":["--api-key="#);
                self.secret(secret);
                self.kept(r#"","--port=8080"]}"#);
            }
        }
    }
}

fn event_parts(request: &Gen, response: &Gen) -> Vec<Part> {
    let mut writer = Writer {
        parts: Vec::new(),
        kept: String::new(),
    };
    writer.kept(r#"{"auditID":"p","verb":"create","requestObject":"#);
    writer.value(request);
    writer.kept(r#","responseObject":"#);
    writer.value(response);
    writer.kept("}");
    let kept = std::mem::take(&mut writer.kept);
    writer.parts.push(Part::Kept(kept));
    writer.parts
}

fn redact() -> Box<dyn Transform> {
    serde_json::from_value::<RedactConfig>(json!({}))
        .unwrap()
        .build(BuildContext::unobserved("fidelity", "/nonexistent"))
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn only_the_planted_secrets_change(request in value(), response in value()) {
        let parts = event_parts(&request, &response);
        let input: String = parts
            .iter()
            .map(|part| match part {
                Part::Kept(text) | Part::Secret(text) => text.as_str(),
            })
            .collect();
        let planted = parts.iter().any(|part| matches!(part, Part::Secret(_)));
        let mut expected: String = parts
            .iter()
            .map(|part| match part {
                Part::Kept(text) => text.as_str(),
                Part::Secret(_) => "[REDACTED]",
            })
            .collect();

        let mut transform = redact();
        let out = run_transform(transform.as_mut(), vec![event(&input)]);
        let out = String::from_utf8(out[0].to_json_bytes().to_vec()).unwrap();
        // `IgnoredAny` reads `1e400`, which `Value` cannot hold.
        prop_assert!(serde_json::from_str::<IgnoredAny>(&out).is_ok(), "not JSON: {}", out);
        if planted {
            // The annotation goes last, as the event had none.
            expected.pop();
            let annotation = r#","annotations":{"auditflow.io/redacted":""#;
            prop_assert!(
                out.starts_with(&format!("{expected}{annotation}")) && out.ends_with("\"}}"),
                "input:    {}\nexpected: {}...\noutput:   {}", input, expected, out
            );
        } else {
            prop_assert_eq!(&out, &input);
        }
    }
}
