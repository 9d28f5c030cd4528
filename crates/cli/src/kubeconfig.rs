//! `auditflow webhook-kubeconfig`: prints the kubeconfig file kube-apiserver reads from
//! `--audit-webhook-config-file` to reach a `webhook` source.
//!
//! Certificate files are referenced by absolute path (`certificate-authority`,
//! `client-certificate`, `client-key`) rather than embedded, so that rotating them on
//! disk needs no new kubeconfig.
//!
//! A user may carry a client certificate and a token at once (a source with both
//! `tls.client_ca_file` and `auth`). `$AUDITFLOW_WEBHOOK_TOKEN` is a convenience for the
//! token-only case, so it is taken on its own only when no client certificate was asked
//! for; next to `--client-cert` it is taken only with `--token-from-env`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Options of `webhook-kubeconfig`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The webhook source's URL as the API server reaches it: `https://HOST:PORT/PATH`
    /// (PATH is the source's `path`).
    #[arg(long)]
    server: String,
    /// The CA that signed the source's `tls.cert_file`; without it the API server uses
    /// its host's trusted roots.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Client certificate for mTLS (signed by the source's `tls.client_ca_file`).
    #[arg(long, requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// The client certificate's private key.
    #[arg(long, requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// A bearer token the source accepts (`auth`); may go with --client-cert. Prefer
    /// $AUDITFLOW_WEBHOOK_TOKEN: a command line is visible to every user of the machine.
    /// The variable is read when neither --token nor --client-cert is given, or with
    /// --token-from-env.
    #[arg(long)]
    token: Option<String>,
    /// Also put the token from $AUDITFLOW_WEBHOOK_TOKEN in the kubeconfig next to
    /// --client-cert, for a source that requires both a client certificate
    /// (`tls.client_ca_file`) and a token (`auth`).
    #[arg(long, conflicts_with = "token")]
    token_from_env: bool,
}

/// The environment variable that can hold the token.
pub(crate) const TOKEN_ENV: &str = "AUDITFLOW_WEBHOOK_TOKEN";

/// Prints the kubeconfig to standard output; usage errors exit 2.
pub(crate) fn print(args: &Args) -> ExitCode {
    let env_token = std::env::var(TOKEN_ENV).ok();
    match render(args, env_token.as_deref()) {
        Ok((text, notes)) => {
            for note in notes {
                eprintln!("auditflow webhook-kubeconfig: note: {note}");
            }
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("auditflow webhook-kubeconfig: {message}");
            ExitCode::from(2)
        }
    }
}

/// Which token goes in the kubeconfig, and notes for the user about the choice.
fn choose_token<'a>(
    args: &'a Args,
    env_token: Option<&'a str>,
) -> Result<(Option<&'a str>, Vec<String>), String> {
    let mut notes = Vec::new();
    let env_token = env_token.filter(|token| !token.is_empty());
    let token = match (&args.token, args.token_from_env, args.client_cert.is_some()) {
        (Some(token), _, _) => Some(token.as_str()),
        (None, true, _) => Some(
            env_token
                .ok_or_else(|| format!("--token-from-env: ${TOKEN_ENV} is not set or empty"))?,
        ),
        (None, false, false) => env_token,
        (None, false, true) => {
            if env_token.is_some() {
                notes.push(format!(
                    "${TOKEN_ENV} is set but not used next to --client-cert; add                      --token-from-env if the source also requires a token (auth)"
                ));
            }
            None
        }
    };
    Ok((token, notes))
}

fn render(args: &Args, env_token: Option<&str>) -> Result<(String, Vec<String>), String> {
    let (token, notes) = choose_token(args, env_token)?;
    let server = args.server.trim();
    let Some(rest) = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))
    else {
        return Err(format!(
            "--server {server:?}: expected https://HOST:PORT/PATH"
        ));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("--server {server:?}: the host is missing"));
    }
    if server.contains('?') || server.contains('#') {
        return Err(format!(
            "--server {server:?}: leave out the query; the API server adds ?timeout=30s itself"
        ));
    }
    if server.starts_with("http://") && (args.ca_file.is_some() || args.client_cert.is_some()) {
        return Err(format!(
            "--server {server:?} is plain HTTP, so --ca-file and --client-cert would be ignored: use https://"
        ));
    }
    if let Some(token) = token {
        if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the token is empty or contains whitespace".into());
        }
    }

    let mut cluster = format!("    server: {}\n", quote(server));
    if let Some(ca) = &args.ca_file {
        cluster += &format!("    certificate-authority: {}\n", quote_path(ca)?);
    }
    let mut user = String::new();
    if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
        user += &format!("    client-certificate: {}\n", quote_path(cert)?);
        user += &format!("    client-key: {}\n", quote_path(key)?);
    }
    if let Some(token) = token {
        user += &format!("    token: {}\n", quote(token));
    }
    let user = if user.is_empty() {
        "  user: {}\n".to_owned()
    } else {
        format!("  user:\n{user}")
    };
    Ok((
        format!(
            "# kube-apiserver --audit-webhook-config-file=<this file>
apiVersion: v1
kind: Config
clusters:
- name: auditflow
  cluster:
{cluster}contexts:
- name: default
  context:
    cluster: auditflow
    user: kube-apiserver
current-context: default
users:
- name: kube-apiserver
{user}"
        ),
        notes,
    ))
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn quote(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// An absolute path: the API server resolves relative ones against the kubeconfig's own
/// directory, not the directory this command ran in.
fn quote_path(path: &Path) -> Result<String, String> {
    let absolute = std::path::absolute(path)
        .map_err(|error| format!("{}: cannot make the path absolute: {error}", path.display()))?;
    let text = absolute
        .to_str()
        .ok_or_else(|| format!("{}: the path is not UTF-8", path.display()))?;
    Ok(quote(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(server: &str) -> Args {
        Args {
            server: server.into(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            token: None,
            token_from_env: false,
        }
    }

    fn user_of(text: &str) -> &str {
        text.split_once("- name: kube-apiserver\n").unwrap().1
    }

    #[test]
    fn a_user_carries_a_client_certificate_and_a_token_at_once() {
        let mut both = args("https://audit.example:8443/audit");
        both.client_cert = Some("/pki/client.crt".into());
        both.client_key = Some("/pki/client.key".into());
        both.token = Some("s3cret".into());
        let (text, notes) = render(&both, None).unwrap();
        assert_eq!(
            user_of(&text),
            "  user:\n    client-certificate: \"/pki/client.crt\"\n    client-key: \"/pki/client.key\"\n    token: \"s3cret\"\n"
        );
        assert!(notes.is_empty());

        // The same with the token from the environment, asked for explicitly.
        both.token = None;
        both.token_from_env = true;
        let (from_env, _) = render(&both, Some("s3cret")).unwrap();
        assert_eq!(from_env, text);
        assert!(render(&both, None)
            .unwrap_err()
            .contains("AUDITFLOW_WEBHOOK_TOKEN is not set"));
    }

    #[test]
    fn the_environment_token_is_taken_alone_only_when_nothing_else_was_asked_for() {
        // Token only: from the environment.
        let (text, _) = render(&args("https://a.example/"), Some("envtoken")).unwrap();
        assert_eq!(user_of(&text), "  user:\n    token: \"envtoken\"\n");

        // A client certificate: the variable merely being set changes nothing, and says so.
        let mut mtls = args("https://a.example/");
        mtls.client_cert = Some("/pki/client.crt".into());
        mtls.client_key = Some("/pki/client.key".into());
        let (text, notes) = render(&mtls, Some("envtoken")).unwrap();
        assert!(!text.contains("token:"), "{text}");
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("--token-from-env"), "{notes:?}");

        // An explicit --token wins over the environment.
        let mut explicit = args("https://a.example/");
        explicit.token = Some("cli".into());
        let (text, _) = render(&explicit, Some("envtoken")).unwrap();
        assert!(text.contains("token: \"cli\""));

        // Nothing at all: a kubeconfig without credentials.
        let (text, _) = render(&args("https://a.example/"), None).unwrap();
        assert!(text.ends_with("  user: {}\n"), "{text}");
    }

    #[test]
    fn token_kubeconfig_has_the_shape_kube_apiserver_reads() {
        let mut args = args("https://audit.example:8443/audit");
        args.ca_file = Some("/etc/auditflow/ca.crt".into());
        args.token = Some("s3cret".into());
        let text = render(&args, None).unwrap().0;
        assert!(text.contains("    server: \"https://audit.example:8443/audit\"\n"));
        assert!(text.contains("    certificate-authority: \"/etc/auditflow/ca.crt\"\n"));
        assert!(text.contains("  user:\n    token: \"s3cret\"\n"));
        assert!(text.contains("current-context: default\n"));
    }

    #[test]
    fn relative_certificate_paths_become_absolute() {
        let mut args = args("https://10.0.0.5:8443/");
        args.client_cert = Some("client.crt".into());
        args.client_key = Some("client.key".into());
        let text = render(&args, None).unwrap().0;
        let cwd = std::env::current_dir().unwrap();
        let expected = cwd.join("client.crt");
        assert!(text.contains(&format!("client-certificate: \"{}\"", expected.display())));
        assert!(!text.contains("token:"));
    }

    #[test]
    fn a_server_without_scheme_or_with_a_query_is_refused() {
        assert!(render(&args("audit.example:8443"), None).is_err());
        assert!(render(&args("https://audit.example/audit?timeout=30s"), None).is_err());
        assert!(render(&args("https:///audit"), None).is_err());
    }
}
