//! The `auditflow` binary: `run`, `validate`, `graph`, `plugins`, `webhook-kubeconfig`,
//! `webhook-check`, `policy`, `query`, `rbac`, `test`, `tap` and `top`.
//!
//! # Layout
//! - [`registry`]: the one list of plugins.
//! - [`run`]: runs a pipeline until signalled or until every source ended; reloads it.
//! - [`watch`]: `run --watch`, which notices changes to the pipeline files.
//! - [`describe`]: `validate`, `graph` and `plugins`, which only read pipelines.
//! - [`kubeconfig`] and [`webhook_check`]: write and check kube-apiserver's webhook
//!   kubeconfig.
//! - [`policy`]: `policy lint` and `policy explain`, for kube-apiserver audit Policy files.
//! - [`query`] and [`rbac`]: questions asked of audit log files (`auditflow-query`).
//! - [`unit_test`]: `test`, the unit tests in pipeline files' `tests:` sections.
//! - [`api`]: the HTTP API a running instance serves (`api:`), and [`tap`], its client.
//! - [`top`]: a terminal view of a running instance's `/metrics`.
//!
//! Exit codes: 0 ok; 1 the pipeline could not start or did not stop cleanly (a port in
//! use, a drain timeout, a second signal); 2 the command line or the pipeline is invalid
//! (`run` and `validate` alike). Logs go to standard error; standard output carries only
//! data (`stdout` sink, `graph`, `plugins`).

mod api;
mod describe;
mod kubeconfig;
mod policy;
mod query;
mod rbac;
mod registry;
mod run;
mod tap;
mod top;
mod unit_test;
mod watch;
mod webhook_check;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// A stream-processing pipeline for Kubernetes audit logs.
#[derive(Debug, Parser)]
#[command(name = "auditflow", version, about)]
struct Cli {
    /// Log filter: a level (`error`, `warn`, `info`, `debug`, `trace`) or directives
    /// (`info,auditflow_file=debug`).
    #[arg(long, global = true, default_value = "info", env = "AUDITFLOW_LOG")]
    log_level: String,
    /// How logs are written to standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline until SIGTERM/SIGINT, or until every source has ended; SIGHUP
    /// reloads the pipeline files.
    Run {
        /// Pipeline files (YAML, TOML or JSON), merged in order.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Worker threads (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
        /// Reload the pipeline files when they change (as on SIGHUP).
        #[arg(long)]
        watch: bool,
    },
    /// Check pipeline files and list every problem; exit 0 when valid, 2 when not.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run the unit tests in the pipeline's `tests:` sections (transforms only: no source
    /// or sink starts); exit 0 when all pass, 1 when any fails, 2 when the pipeline or a
    /// test is invalid.
    Test {
        /// Pipeline files (YAML, TOML or JSON), merged in order as `run` merges them.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the pipeline graph in Graphviz DOT.
    Graph {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List every component type with its options.
    Plugins {
        /// Only this type.
        name: Option<String>,
    },
    /// Print the kubeconfig kube-apiserver needs (`--audit-webhook-config-file`) to send
    /// its audit events to a `webhook` source.
    WebhookKubeconfig(kubeconfig::Args),
    /// Check a webhook kubeconfig as kube-apiserver would use it: DNS, TCP, TLS and one
    /// test EventList; exit 0 only when the API server would get 200.
    WebhookCheck(webhook_check::Args),
    /// Check kube-apiserver audit Policy files (`lint`), or apply one to events (`explain`).
    #[command(subcommand)]
    Policy(policy::Command),
    /// Filter, count and list audit events from files or standard input.
    Query(query::Args),
    /// RBAC from audit logs.
    Rbac {
        #[command(subcommand)]
        command: rbac::Command,
    },
    /// Print a sample of the events passing components of a running instance (its
    /// pipeline needs `api: {tap: true}`).
    Tap(tap::Args),
    /// A terminal view of a running instance's components, from its `/metrics`; `q` exits.
    Top(top::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = init_logging(&cli.log_level, cli.log_format) {
        eprintln!("auditflow: --log-level {:?}: {error}", cli.log_level);
        return ExitCode::from(2);
    }
    let registry = registry::registry();
    match cli.command {
        Command::Run {
            files,
            threads,
            watch,
        } => run::run(&files, threads, watch, &registry),
        Command::Validate { files } => describe::validate(&files, &registry),
        Command::Test { files } => unit_test::test(&files, &registry),
        Command::Graph { files } => describe::graph(&files, &registry),
        Command::Plugins { name } => describe::plugins(name.as_deref(), &registry),
        Command::WebhookKubeconfig(args) => kubeconfig::print(&args),
        Command::WebhookCheck(args) => webhook_check::check(&args),
        Command::Policy(command) => policy::run(command),
        Command::Query(args) => query::run(&args),
        Command::Rbac { command } => rbac::run(&command),
        Command::Tap(args) => tap::run(&args),
        Command::Top(args) => top::run(&args),
    }
}

fn init_logging(filter: &str, format: LogFormat) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}
