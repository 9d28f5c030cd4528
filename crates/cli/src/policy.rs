//! `auditflow policy lint` and `auditflow policy explain`: kube-apiserver audit Policy
//! files checked, and applied to given events. The logic lives in the `audit_policy`
//! plugin crate; this is the command line around it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use auditflow_audit_policy::explain::explain;
use auditflow_audit_policy::{lint, Finding, PolicyFile};
use auditflow_core::decode::{decode, Shape};
use clap::{Subcommand, ValueEnum};

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Check audit Policy files: every finding with file:line, severity and a stable code.
    /// Exit 1 when any file has an error, 0 with warnings only, 2 when a file cannot be read.
    Lint {
        /// Policy files (`audit.k8s.io/v1` Policy, YAML or JSON).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// How findings are printed.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Say which rule of a Policy matches each event (its number and line), the resulting
    /// level and stages, what the `audit_policy` transform does with it, and why each
    /// earlier rule did not match. Exit 2 when the policy is invalid or an input is not
    /// events.
    Explain {
        /// The Policy file.
        policy: PathBuf,
        /// Files of events (an Event, an EventList, a JSON array or one event per line);
        /// `-` reads standard input.
        #[arg(required = true)]
        events: Vec<PathBuf>,
        /// How explanations are printed (`json`: one object per line).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    Text,
    Json,
}

pub(crate) fn run(command: Command) -> ExitCode {
    match command {
        Command::Lint { files, format } => lint_files(&files, format),
        Command::Explain {
            policy,
            events,
            format,
        } => explain_events(&policy, &events, format),
    }
}

fn lint_files(files: &[PathBuf], format: Format) -> ExitCode {
    let mut unreadable = false;
    let mut all: Vec<(&Path, Finding)> = Vec::new();
    for file in files {
        match std::fs::read_to_string(file) {
            Ok(text) => all.extend(lint(&text).into_iter().map(|f| (file.as_path(), f))),
            Err(error) => {
                eprintln!("auditflow: cannot read {}: {error}", file.display());
                unreadable = true;
            }
        }
    }
    let errors = all.iter().filter(|(_, f)| f.is_error()).count();
    let warnings = all.len() - errors;
    let mut out = std::io::stdout().lock();
    let written = match format {
        Format::Text => {
            let mut text = String::new();
            for (file, finding) in &all {
                text.push_str(&format!("{}:{finding}\n", file.display()));
            }
            text.push_str(&format!(
                "{errors} error{}, {warnings} warning{}\n",
                plural(errors),
                plural(warnings)
            ));
            out.write_all(text.as_bytes())
        }
        Format::Json => {
            let findings: Vec<serde_json::Value> = all
                .iter()
                .map(|(file, finding)| {
                    let mut value = serde_json::to_value(finding).expect("findings serialise");
                    value["file"] = file.display().to_string().into();
                    value
                })
                .collect();
            let mut text = serde_json::to_string_pretty(&findings).expect("findings serialise");
            text.push('\n');
            out.write_all(text.as_bytes())
        }
    };
    if let Err(error) = written.and_then(|()| out.flush()) {
        eprintln!("auditflow: writing to standard output: {error}");
        return ExitCode::from(1);
    }
    if unreadable {
        ExitCode::from(2)
    } else if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn explain_events(policy: &Path, inputs: &[PathBuf], format: Format) -> ExitCode {
    let policy = match PolicyFile::read(policy) {
        Ok(policy) => policy,
        Err(error) => {
            eprintln!("auditflow: {error}");
            return ExitCode::from(2);
        }
    };
    let mut failed = false;
    let mut out = std::io::stdout().lock();
    for input in inputs {
        let (name, body) = if input.as_os_str() == "-" {
            let mut body = Vec::new();
            if let Err(error) = std::io::stdin().read_to_end(&mut body) {
                eprintln!("auditflow: reading standard input: {error}");
                failed = true;
                continue;
            }
            ("-".to_owned(), body)
        } else {
            match std::fs::read(input) {
                Ok(body) => (input.display().to_string(), body),
                Err(error) => {
                    eprintln!("auditflow: cannot read {}: {error}", input.display());
                    failed = true;
                    continue;
                }
            }
        };
        let decoded = match decode(&bytes::Bytes::from(body), Shape::Json) {
            Ok(decoded) => decoded,
            Err(refused) => {
                eprintln!("auditflow: {name}: {refused}");
                failed = true;
                continue;
            }
        };
        for malformed in &decoded.malformed {
            eprintln!("auditflow: {name}: {malformed}");
            failed = true;
        }
        for (index, event) in decoded.events.iter().enumerate() {
            let explanation = explain(policy.policy(), event);
            let number = index + 1;
            let text = match format {
                Format::Text => format!(
                    "{name}: event {number}{}: {explanation}",
                    explanation
                        .audit_id
                        .as_deref()
                        .map(|id| format!(" ({id})"))
                        .unwrap_or_default()
                ),
                Format::Json => {
                    let mut value =
                        serde_json::to_value(&explanation).expect("explanations serialise");
                    value["source"] = name.clone().into();
                    value["event"] = number.into();
                    format!("{value}\n")
                }
            };
            if let Err(error) = out.write_all(text.as_bytes()) {
                eprintln!("auditflow: writing to standard output: {error}");
                return ExitCode::from(1);
            }
        }
    }
    if let Err(error) = out.flush() {
        eprintln!("auditflow: writing to standard output: {error}");
        return ExitCode::from(1);
    }
    if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
