//! `auditflow rbac suggest`: the least Roles, ClusterRoles and bindings that would have
//! allowed the RBAC denials in audit logs, as YAML for `kubectl apply -f`.

use std::collections::BTreeSet;
use std::process::ExitCode;

use auditflow_query::suggest::{collect, suggest, to_yaml, Scope, SuggestOptions};
use auditflow_query::ReadOptions;

use crate::query::{report, Inputs, Progress};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Print the least RBAC (Roles, ClusterRoles and their bindings) that would have
    /// allowed the denied requests, as YAML for `kubectl apply -f`.
    Suggest(SuggestArgs),
}

/// Options of `rbac suggest`.
#[derive(Debug, clap::Args)]
pub(crate) struct SuggestArgs {
    #[command(flatten)]
    inputs: Inputs,
    /// Only this user's denials (under impersonation, the impersonated user's).
    #[arg(long)]
    user: Option<String>,
    /// Only denials of this group's members; the roles are bound to the group.
    #[arg(long)]
    group: Option<String>,
    /// Only denials in this namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Narrow rules to the object names that were denied (`resourceNames`).
    #[arg(long)]
    resource_names: bool,
    /// Also suggest rules for refused impersonations, listed apart.
    #[arg(long)]
    include_impersonation: bool,
}

/// Runs `rbac suggest`; exits 2 on a usage error, 1 when an input cannot be read.
pub(crate) fn run(command: &Command) -> ExitCode {
    let Command::Suggest(args) = command;
    let window = match args.inputs.window() {
        Ok(window) => window,
        Err(message) => {
            eprintln!("auditflow rbac suggest: {message}");
            return ExitCode::from(2);
        }
    };
    let options = SuggestOptions {
        user: args.user.clone(),
        group: args.group.clone(),
        namespace: args.namespace.clone(),
        window,
        resource_names: args.resource_names,
        include_impersonation: args.include_impersonation,
    };
    args.inputs.configure_threads();
    let inputs = args.inputs.inputs();
    let mut progress = Progress::new(&inputs);
    let collected = collect(&inputs, &options, &ReadOptions::default(), &mut |stats| {
        progress.update(stats)
    });
    progress.finish();
    let collected = match collected {
        Ok(collected) => collected,
        Err(error) => {
            eprintln!("auditflow rbac suggest: {error}");
            return ExitCode::FAILURE;
        }
    };
    let roles = suggest(&collected.denials, options.resource_names);
    let subjects: BTreeSet<_> = roles.iter().map(|role| &role.subject).collect();
    let cluster = roles.iter().filter(|r| r.scope == Scope::Cluster).count();
    let failed = report(
        &collected.scan,
        &format!(
            "{} RBAC denial{} of {} subject{}: {cluster} ClusterRole{}, {} Role{}",
            collected.denials.len(),
            plural(collected.denials.len()),
            subjects.len(),
            plural(subjects.len()),
            plural(cluster),
            roles.len() - cluster,
            plural(roles.len() - cluster),
        ),
    );
    if collected.skipped_impersonations > 0 {
        eprintln!(
            "auditflow: {} refused impersonation{} left out; add --include-impersonation to see the rules",
            collected.skipped_impersonations,
            plural(collected.skipped_impersonations as usize)
        );
    }
    if roles.is_empty() {
        println!("# auditflow rbac suggest: no RBAC denial matched; nothing to suggest.");
    } else {
        print!("{}", to_yaml(&roles));
    }
    if failed {
        ExitCode::FAILURE
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
