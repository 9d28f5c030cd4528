//! The `api` section: the HTTP API of a running instance (`auditflow tap`).

use std::net::SocketAddr;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;

/// Where a running instance serves its API, and what it allows. Off unless the section
/// is there.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to listen on. Anything but a loopback address (`127.0.0.1`, `::1`)
    /// requires `token_file`.
    #[serde(default = "default_address")]
    pub address: SocketAddr,
    /// Serve `/tap`: samples of the events passing any component, which may be before
    /// redaction. Off unless set to `true`.
    #[serde(default)]
    pub tap: bool,
    /// A file holding the bearer token clients must send (`Authorization: Bearer
    /// <token>`); surrounding whitespace is ignored. Required when `address` is not a
    /// loopback address.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

fn default_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8686))
}

impl ApiConfig {
    /// What types cannot say: `(field, message)` for each problem.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if !self.address.ip().is_loopback() && self.token_file.is_none() {
            problems.push((
                "token_file",
                format!(
                    "api.address {} is not a loopback address, so the API requires a bearer token: set api.token_file to a file holding one, or listen on 127.0.0.1",
                    self.address
                ),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> ApiConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn loopback_needs_no_token_and_tap_is_off_by_default() {
        let api = parse(r#"{}"#);
        assert_eq!(api.address.to_string(), "127.0.0.1:8686");
        assert!(!api.tap);
        assert!(api.problems().is_empty());
        assert!(parse(r#"{"address": "[::1]:1"}"#).problems().is_empty());
    }

    #[test]
    fn any_other_address_needs_a_token_file() {
        let problems = parse(r#"{"address": "0.0.0.0:8686"}"#).problems();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "token_file");
        let with_token = parse(r#"{"address": "0.0.0.0:8686", "token_file": "/t"}"#);
        assert!(with_token.problems().is_empty());
    }
}
