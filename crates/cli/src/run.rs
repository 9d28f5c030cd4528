//! `auditflow run`: load, build, start, and shut down on signal.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use auditflow_config::{ConfigError, Registry};
use auditflow_metrics::endpoint::{self, Readiness};
use auditflow_topology::Running;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Stack reserved for each runtime thread (workers and blocking threads).
const WORKER_STACK_BYTES: usize = 64 << 20;

pub fn run(files: &[PathBuf], threads: Option<usize>, registry: &Registry) -> ExitCode {
    let pipeline = match auditflow_config::load(files, registry) {
        Ok(pipeline) => pipeline,
        Err(errors) => return config_failure(&errors),
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    // Events nest up to 10,000 levels (kube-apiserver's limit). Parsing grows its own stack,
    // but dropping, cloning, writing and walking a parsed value recurse: a worker's stack
    // is reserved large enough for that (address space; only touched pages cost memory).
    runtime
        .enable_all()
        .thread_name("auditflow")
        .thread_stack_size(WORKER_STACK_BYTES);
    if let Some(threads) = threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("auditflow: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async move {
        let readiness = Arc::new(Readiness::default());
        if let Some(metrics) = &pipeline.metrics {
            match tokio::net::TcpListener::bind(metrics.address).await {
                Ok(listener) => {
                    // The bound address, so that `127.0.0.1:0` tells where it listens.
                    let address = listener.local_addr().unwrap_or(metrics.address);
                    tracing::info!(%address, "serving /metrics, /health and /ready");
                    tokio::spawn(endpoint::serve(listener, Arc::clone(&readiness)));
                }
                Err(error) => {
                    eprintln!(
                        "auditflow: metrics.address {}: cannot listen: {error}",
                        metrics.address
                    );
                    return ExitCode::from(1);
                }
            }
        }
        // The endpoint answers before the components are built, so `/ready` says `503
        // starting` while a build waits (a checkpoint on a slow disk, certificates).
        // `load` already ran every check that needs nothing but the files, so what fails
        // here needs the machine: a port in use, a directory that cannot be opened. That
        // is a start-up failure (exit 1), not an invalid pipeline (exit 2).
        // (This thread is not a runtime worker, so the endpoint answers meanwhile.)
        let builder = match auditflow_topology::build(&pipeline) {
            Ok(builder) => builder,
            Err(errors) => return start_failure(&errors),
        };
        start_memory_monitor(pipeline.memory_limit_mb);
        let running = builder.start();
        readiness.set_ready(true);
        tracing::info!(components = pipeline.components.len(), "pipeline started");
        supervise(running, pipeline.shutdown_timeout).await
    });
    // Standard input may still be blocked in a read that cannot be cancelled; the pipeline
    // is done, so do not wait for it.
    runtime.shutdown_background();
    code
}

/// Holds the process under `memory_limit_mb` (or 90% of its cgroup's limit): sources pause
/// while it is over (see `auditflow_core::memory`).
fn start_memory_monitor(configured_mb: Option<std::num::NonZeroU64>) {
    use auditflow_core::memory;
    let limit_bytes = match configured_mb {
        Some(mb) => {
            let bytes = mb.get().saturating_mul(1 << 20);
            tracing::info!(
                memory_limit_mb = mb.get(),
                "memory limit set by memory_limit_mb"
            );
            bytes
        }
        None => match memory::cgroup_limit() {
            Some((cgroup_bytes, file)) => {
                let bytes = cgroup_bytes / 100 * memory::DEFAULT_CGROUP_PERCENT;
                tracing::info!(
                    memory_limit_mb = bytes >> 20,
                    cgroup_limit_mb = cgroup_bytes >> 20,
                    file = %file.display(),
                    "memory limit: {}% of the cgroup's (set memory_limit_mb to change it)",
                    memory::DEFAULT_CGROUP_PERCENT
                );
                bytes
            }
            None => {
                tracing::info!(
                    "no memory limit: memory_limit_mb is not set and no cgroup limit was found"
                );
                auditflow_metrics::memory_limit_bytes().set(0);
                auditflow_metrics::memory_limited().set(0);
                return;
            }
        },
    };
    auditflow_metrics::memory_limit_bytes().set(i64::try_from(limit_bytes).unwrap_or(i64::MAX));
    auditflow_metrics::memory_limited().set(0);
    auditflow_metrics::memory_limited_total();
    let thresholds = memory::Thresholds::new(limit_bytes);
    let changed = move |limited: bool, used_bytes: u64| {
        auditflow_metrics::memory_limited().set(i64::from(limited));
        if limited {
            auditflow_metrics::memory_limited_total().inc();
            tracing::warn!(
                used_mb = used_bytes >> 20,
                limit_mb = thresholds.limit_bytes >> 20,
                "memory is at the limit: sources pause until it falls under {} MiB",
                thresholds.resume_bytes >> 20
            );
        } else {
            tracing::info!(
                used_mb = used_bytes >> 20,
                "memory fell under the limit: sources resume"
            );
        }
    };
    tokio::spawn(memory::monitor(thresholds, changed, release_free_memory));
}

/// Hands the memory glibc's allocator holds free back to the kernel. Freed blocks stay in
/// its arenas (only the top of each is trimmed), so the resident memory of a process that
/// drained its pipeline can stay where it was; `malloc_trim` returns every free page.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_free_memory() {
    // SAFETY: `malloc_trim` takes no pointer and only walks glibc's own arenas, under
    // their locks; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators (musl's) return freed memory themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

/// Waits for the pipeline to end on its own or for a signal; the first signal drains, the
/// second (or the timeout) stops at once.
async fn supervise(mut running: Running, timeout: std::time::Duration) -> ExitCode {
    let (mut terminate, mut interrupt) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(terminate), Ok(interrupt)) => (terminate, interrupt),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("auditflow: cannot install signal handlers: {error}");
            return ExitCode::from(1);
        }
    };
    let finished = tokio::select! {
        result = running.wait() => Some(result),
        _ = next_signal(&mut terminate, &mut interrupt) => None,
    };
    let result = match finished {
        Some(result) => result,
        None => {
            tracing::info!(
                timeout_secs = timeout.as_secs(),
                "shutting down: sources stopped, draining in-flight events to the sinks"
            );
            running.shutdown();
            let drained = tokio::select! {
                result = running.wait() => Some(result),
                _ = tokio::time::sleep(timeout) => {
                    tracing::error!(
                        timeout_secs = timeout.as_secs(),
                        "shutdown timed out; events not yet acknowledged were not checkpointed and will be read again on restart"
                    );
                    None
                }
                _ = next_signal(&mut terminate, &mut interrupt) => {
                    tracing::warn!("second signal: exiting now without draining");
                    None
                }
            };
            match drained {
                Some(result) => result,
                None => {
                    running.abort();
                    return ExitCode::from(1);
                }
            }
        }
    };
    match result {
        Ok(()) => {
            tracing::info!("pipeline finished");
            ExitCode::SUCCESS
        }
        Err(failures) => {
            for failure in &failures {
                eprintln!("auditflow: {failure}");
            }
            ExitCode::from(1)
        }
    }
}

async fn next_signal(terminate: &mut Signal, interrupt: &mut Signal) {
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}

/// The pipeline is valid but a component could not start: exit 1.
fn start_failure(errors: &[ConfigError]) -> ExitCode {
    for error in errors {
        eprintln!("{error}");
    }
    eprintln!(
        "auditflow: {} component{} could not start; nothing was started",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    ExitCode::from(1)
}

/// The pipeline is invalid: exit 2.
pub fn config_failure(errors: &[ConfigError]) -> ExitCode {
    for error in errors {
        eprintln!("{error}");
    }
    eprintln!(
        "auditflow: the pipeline has {} problem{}; nothing was started",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    ExitCode::from(2)
}
