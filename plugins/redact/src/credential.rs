//! Names that say they hold a credential (`DB_PASSWORD`, `--github-token`, `apiKey`),
//! and the values of command-line flags so named (`env_secret` and `cli_secret`).
//!
//! A name is cut into words at `_`, `-`, `.`, blanks and lower-to-upper case changes,
//! and compared without case: `AWS_SECRET_ACCESS_KEY` is `aws secret access key`,
//! `clientSecret` is `client secret`. It names a credential when its last word is one of
//! the configured last words, or when its words end with one of the configured endings.
//! Judging by the last word is what keeps `TOKEN_TTL`, `TOKENIZER_MODE`, `AUTHOR` and
//! `--token-ttl` out.

use std::ops::Range;

/// The default last words.
pub(crate) const LAST_WORDS: [&str; 7] = [
    "password",
    "passwd",
    "secret",
    "token",
    "credential",
    "credentials",
    "auth",
];

/// The default endings.
pub(crate) const ENDINGS: [&str; 5] = [
    "api_key",
    "apikey",
    "access_key",
    "private_key",
    "secret_key",
];

/// The compiled rule.
#[derive(Debug, Clone)]
pub(crate) struct CredentialNames {
    last_words: Vec<String>,
    /// Each ending as its words.
    endings: Vec<Vec<String>>,
}

impl CredentialNames {
    pub(crate) fn new<S: AsRef<str>>(last_words: &[S], endings: &[S]) -> CredentialNames {
        CredentialNames {
            last_words: last_words
                .iter()
                .flat_map(|word| words(word.as_ref()))
                .collect(),
            endings: endings
                .iter()
                .map(|ending| words(ending.as_ref()))
                .filter(|words| !words.is_empty())
                .collect(),
        }
    }

    /// Whether `name` says it holds a credential.
    pub(crate) fn matches(&self, name: &str) -> bool {
        let words = words(name);
        let Some(last) = words.last() else {
            return false;
        };
        self.last_words.iter().any(|word| word == last)
            || self.endings.iter().any(|ending| words.ends_with(ending))
    }

    /// The spans of credential values in one `command`/`args` entry: the value of a
    /// credential flag written `--name=value` (the rest of the entry), and, in a shell
    /// string (`sh -c "... --password=x ..."`), of `--name=value` and `--name value`
    /// words, inside their quotes when quoted.
    pub(crate) fn flag_spans(&self, entry: &str, spans: &mut Vec<Range<usize>>) {
        // One argument: everything after `=` is the value, blanks included.
        if let Some((flag, _)) = entry.split_once('=') {
            if flag.starts_with('-') && !flag.contains(char::is_whitespace) {
                let value = flag.len() + 1..entry.len();
                if let Some(name) = flag_name(flag) {
                    if self.matches(name) && is_secret_value(&entry[value.clone()]) {
                        spans.push(value);
                    }
                }
                return;
            }
        }
        if !entry.contains(char::is_whitespace) {
            return;
        }
        // A shell string: the same, word by word.
        let words = shell_words(entry);
        let mut words_iter = words.iter().peekable();
        while let Some(word) = words_iter.next() {
            let text = &entry[word.clone()];
            match text.split_once('=') {
                Some((flag, _)) => {
                    if let Some(name) = flag_name(flag) {
                        if self.matches(name) {
                            let value = unquote(entry, word.start + flag.len() + 1..word.end);
                            if is_secret_value(&entry[value.clone()]) {
                                spans.push(value);
                            }
                        }
                    }
                }
                None => {
                    let Some(name) = flag_name(text) else {
                        continue;
                    };
                    if !self.matches(name) {
                        continue;
                    }
                    if let Some(next) = words_iter.peek() {
                        let value = unquote(entry, (*next).clone());
                        let value_text = &entry[value.clone()];
                        if !is_flag(value_text) && is_secret_value(value_text) {
                            spans.push(value);
                            words_iter.next();
                        }
                    }
                }
            }
        }
    }

    /// Whether an argument is a credential flag waiting for its value in the next
    /// argument (`--password`, then `x`).
    pub(crate) fn is_bare_flag(&self, entry: &str) -> bool {
        !entry.contains('=') && flag_name(entry).is_some_and(|name| self.matches(name))
    }
}

/// The words of a name, lower case.
fn words(name: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut previous_lower = false;
    for c in name.chars() {
        if !c.is_alphanumeric() {
            if !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            previous_lower = false;
            continue;
        }
        if c.is_uppercase() && previous_lower && !word.is_empty() {
            words.push(std::mem::take(&mut word));
        }
        previous_lower = c.is_lowercase() || c.is_ascii_digit();
        word.extend(c.to_lowercase());
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// `--name` or `-name` (a letter after the dashes): the name.
fn flag_name(word: &str) -> Option<&str> {
    let name = word.strip_prefix("--").or_else(|| word.strip_prefix('-'))?;
    name.starts_with(|c: char| c.is_ascii_alphabetic())
        .then_some(name)
        .filter(|name| {
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        })
}

/// Another flag rather than a value: `--port`, `-v`.
pub(crate) fn is_flag(value: &str) -> bool {
    let mut chars = value.chars();
    chars.next() == Some('-')
        && chars
            .next()
            .is_some_and(|c| c == '-' || c.is_ascii_alphabetic())
}

/// A value worth hiding: not empty, not a boolean (`--anonymous-auth=false`).
pub(crate) fn is_secret_value(value: &str) -> bool {
    !value.is_empty() && !value.eq_ignore_ascii_case("true") && !value.eq_ignore_ascii_case("false")
}

/// The words of a shell string, split at unquoted blanks, as byte ranges.
fn shell_words(text: &str) -> Vec<Range<usize>> {
    let mut words = Vec::new();
    let mut start = None;
    let mut quote = None;
    for (at, c) in text.char_indices() {
        match quote {
            Some(open) if c == open => quote = None,
            Some(_) => {}
            None if c.is_whitespace() => {
                if let Some(start) = start.take() {
                    words.push(start..at);
                }
            }
            None => {
                start.get_or_insert(at);
                if c == '"' || c == '\'' {
                    quote = Some(c);
                }
            }
        }
    }
    if let Some(start) = start {
        words.push(start..text.len());
    }
    words
}

/// A value inside its quotes (`'a b'`, `"x"`), or without the shell operators glued to
/// its end (`x;`, `x&&`, `x)`).
fn unquote(text: &str, range: Range<usize>) -> Range<usize> {
    let value = &text[range.clone()];
    for quote in ['"', '\''] {
        if value.len() >= 2 && value.starts_with(quote) {
            if let Some(close) = value[1..].find(quote) {
                return range.start + 1..range.start + 1 + close;
            }
        }
    }
    let kept = value.trim_end_matches([';', '&', '|', ')', '`']);
    range.start..range.start + kept.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> CredentialNames {
        CredentialNames::new(&LAST_WORDS, &ENDINGS)
    }

    #[test]
    fn names_are_judged_by_their_last_word_or_ending() {
        let names = defaults();
        for yes in [
            "DB_PASSWORD",
            "GITHUB_TOKEN",
            "AWS_SECRET_ACCESS_KEY",
            "OPENAI_API_KEY",
            "STRIPE_APIKEY",
            "clientSecret",
            "db-passwd",
            "GOOGLE_CREDENTIALS",
            "REGISTRY_AUTH",
            "token",
            "github-token",
            "SSH_PRIVATE_KEY",
        ] {
            assert!(names.matches(yes), "{yes}");
        }
        for no in [
            "AUTHOR",
            "TOKEN_TTL",
            "TOKENIZER_MODE",
            "token-ttl",
            "LOG_LEVEL",
            "AWS_ACCESS_KEY_ID",
            "PASSWORD_FILE",
            "KEY",
            "",
        ] {
            assert!(!names.matches(no), "{no}");
        }
    }

    fn flagged(entry: &str) -> Vec<&str> {
        let mut spans = Vec::new();
        defaults().flag_spans(entry, &mut spans);
        spans.into_iter().map(|span| &entry[span]).collect()
    }

    #[test]
    fn flag_values_are_found_in_arguments_and_shell_strings() {
        assert_eq!(flagged("--api-key=sk_live_x"), ["sk_live_x"]);
        assert_eq!(flagged("--password=a b"), ["a b"]);
        assert_eq!(flagged("--token-ttl=3600"), Vec::<&str>::new());
        assert_eq!(flagged("--port=8080"), Vec::<&str>::new());
        assert_eq!(flagged("--anonymous-auth=false"), Vec::<&str>::new());
        assert_eq!(
            flagged("exec app --db-password=s3cr3t --port 80 && echo ok"),
            ["s3cr3t"]
        );
        assert_eq!(
            flagged("app --password 'a b' --client-secret \"c d\" --token x;"),
            ["a b", "c d", "x"]
        );
        assert_eq!(flagged("app --token --verbose"), Vec::<&str>::new());
        assert_eq!(flagged("app --token-ttl 3600 --github-token=ghx"), ["ghx"]);
        assert!(defaults().is_bare_flag("--github-token"));
        assert!(!defaults().is_bare_flag("--token-ttl"));
        assert!(!defaults().is_bare_flag("--token=x"));
        assert!(!defaults().is_bare_flag("token"));
    }
}
