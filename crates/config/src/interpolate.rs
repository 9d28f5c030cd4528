//! `${VAR}` and `${VAR:-default}` replacement, done on a file's text before it is parsed,
//! so that secrets stay in the environment. `$$` stands for a literal `$`.

use std::sync::LazyLock;

use regex::{Captures, Regex};

static REFERENCE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}").expect("valid regex")
});

/// A reference to a variable that is not set and has no default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingVariable {
    /// The variable's name, as between `${` and `}` (or `:-`).
    pub name: String,
    /// 1-based line of the reference.
    pub line: usize,
}

/// Replaces every reference in `text` using `lookup`. As in a shell, `${VAR:-default}`
/// uses the default when the variable is unset or empty.
pub fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<MissingVariable>> {
    let mut missing = Vec::new();
    let replaced = REFERENCE.replace_all(text, |captures: &Captures| {
        let Some(name) = captures.get(1) else {
            return "$".to_owned();
        };
        match (lookup(name.as_str()), captures.get(2)) {
            (Some(value), Some(_)) if !value.is_empty() => value,
            (Some(value), None) => value,
            (_, Some(default)) => default.as_str().to_owned(),
            (None, None) => {
                missing.push(MissingVariable {
                    name: name.as_str().to_owned(),
                    line: text[..name.start()].matches('\n').count() + 1,
                });
                String::new()
            }
        }
    });
    if missing.is_empty() {
        Ok(replaced.into_owned())
    } else {
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_set_variables_and_defaults() {
        let text = "a: ${TOKEN}\nb: ${UNSET:-fallback}\nc: ${EMPTY:-used}\nd: ${EMPTY}\ne: $$HOME";
        assert_eq!(
            interpolate(text, env).unwrap(),
            "a: s3cret\nb: fallback\nc: used\nd: \ne: $HOME"
        );
    }

    #[test]
    fn reports_every_missing_variable_with_its_line() {
        let error = interpolate("a: 1\nb: ${ONE}\nc: ${TWO}", env).unwrap_err();
        assert_eq!(
            error,
            vec![
                MissingVariable {
                    name: "ONE".into(),
                    line: 2
                },
                MissingVariable {
                    name: "TWO".into(),
                    line: 3
                },
            ]
        );
    }
}
