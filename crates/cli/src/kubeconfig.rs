//! `auditflow webhook-kubeconfig`: prints the kubeconfig file kube-apiserver reads from
//! `--audit-webhook-config-file` to reach a `webhook` source.
//!
//! Certificate files are referenced by absolute path (`certificate-authority`,
//! `client-certificate`, `client-key`) rather than embedded, so that rotating them on
//! disk needs no new kubeconfig.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Options of `webhook-kubeconfig`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The webhook source's URL as the API server reaches it: `https://HOST:PORT/PATH`
    /// (PATH is the source's `path`).
    #[arg(long)]
    server: String,
    /// The CA that signed the source's `tls.cert_file`; without it the API server uses
    /// its host's trusted roots.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Client certificate for mTLS (signed by the source's `tls.client_ca_file`).
    #[arg(long, requires = "client_key", conflicts_with = "token")]
    client_cert: Option<PathBuf>,
    /// The client certificate's private key.
    #[arg(long, requires = "client_cert", conflicts_with = "token")]
    client_key: Option<PathBuf>,
    /// A bearer token the source accepts (`auth`). Prefer the environment variable: a
    /// command line is visible to every user of the machine.
    #[arg(long, env = "AUDITFLOW_WEBHOOK_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Prints the kubeconfig to standard output; usage errors exit 2.
pub fn print(args: &Args) -> ExitCode {
    match render(args) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("auditflow webhook-kubeconfig: {message}");
            ExitCode::from(2)
        }
    }
}

fn render(args: &Args) -> Result<String, String> {
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
    if let Some(token) = &args.token {
        if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("--token is empty or contains whitespace".into());
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
    if let Some(token) = &args.token {
        user += &format!("    token: {}\n", quote(token));
    }
    let user = if user.is_empty() {
        "  user: {}\n".to_owned()
    } else {
        format!("  user:\n{user}")
    };
    Ok(format!(
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
        }
    }

    #[test]
    fn token_kubeconfig_has_the_shape_kube_apiserver_reads() {
        let mut args = args("https://audit.example:8443/audit");
        args.ca_file = Some("/etc/auditflow/ca.crt".into());
        args.token = Some("s3cret".into());
        let text = render(&args).unwrap();
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
        let text = render(&args).unwrap();
        let cwd = std::env::current_dir().unwrap();
        let expected = cwd.join("client.crt");
        assert!(text.contains(&format!("client-certificate: \"{}\"", expected.display())));
        assert!(!text.contains("token:"));
    }

    #[test]
    fn a_server_without_scheme_or_with_a_query_is_refused() {
        assert!(render(&args("audit.example:8443")).is_err());
        assert!(render(&args("https://audit.example/audit?timeout=30s")).is_err());
        assert!(render(&args("https:///audit")).is_err());
    }
}
