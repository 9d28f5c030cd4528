//! `auditflow run`: load, build, start, reload on `SIGHUP` (or on change with
//! `--watch`), and shut down on signal.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use auditflow_config::{ConfigError, Pipeline, Registry};
use auditflow_metrics::endpoint::{self, Readiness};
use auditflow_metrics::Metrics;
use auditflow_topology::Running;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::watch::FileWatch;

/// Stack reserved for each runtime thread (workers and blocking threads).
const WORKER_STACK_BYTES: usize = 64 << 20;

pub(crate) fn run(
    files: &[PathBuf],
    threads: Option<usize>,
    watch: bool,
    registry: &Registry,
) -> ExitCode {
    let pipeline = match auditflow_config::load(files, registry) {
        Ok(pipeline) => Arc::new(pipeline),
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
        // Installed first: `SIGHUP`'s default action ends the process, and a reload asked
        // for as soon as `/ready` says 200 must not.
        let mut signals = match Signals::install() {
            Ok(signals) => signals,
            Err(error) => {
                eprintln!("auditflow: cannot install signal handlers: {error}");
                return ExitCode::from(1);
            }
        };
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
        let api = match &pipeline.api {
            Some(config) => match crate::api::listen(config) {
                Ok(listening) => Some(listening),
                Err(message) => {
                    eprintln!("auditflow: {message}");
                    return ExitCode::from(1);
                }
            },
            None => None,
        };
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
        start_memory_monitor(&pipeline);
        let taps = builder.taps();
        let mut running = builder.start();
        running.set_pipeline(Arc::clone(&pipeline));
        if let Some(listening) = api {
            if let Err(error) = listening.spawn(taps) {
                eprintln!("auditflow: cannot start the api: {error}");
                return ExitCode::from(1);
            }
        }
        readiness.set_ready(true);
        let reloads = Reloads::new(files, registry, &pipeline);
        tracing::info!(
            components = pipeline.components.len(),
            config_hash = %running.publish_config_hash().unwrap_or_default(),
            "pipeline started"
        );
        let watch = match watch.then(|| FileWatch::start(files)).transpose() {
            Ok(watch) => watch,
            Err(error) => {
                eprintln!("auditflow: --watch: {error}");
                running.shutdown();
                let _ = running.wait().await;
                return ExitCode::from(1);
            }
        };
        supervise(running, &mut signals, reloads, watch).await
    });
    // Let the runtime's threads end before the process does: one still running while
    // `exit` tears the C library down can crash it (a segfault in `pthread_detach` was
    // seen). Standard input may still be blocked in a read that cannot be cancelled, so
    // the wait is bounded.
    runtime.shutdown_timeout(BLOCKING_THREADS_GRACE);
    code
}

/// How long the end of `run` waits for the runtime's blocking threads (a read of standard
/// input that cannot be cancelled is the one that may take it all).
const BLOCKING_THREADS_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Holds the process under `memory_limit_mb` (or 90% of its cgroup's limit): sources pause
/// while it is over (see `auditflow_core::memory`).
fn start_memory_monitor(pipeline: &Pipeline) {
    use auditflow_core::memory;
    let reserve = set_memory_reserve(pipeline);
    let limit_bytes = match pipeline.memory_limit_mb {
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
                Metrics::global().memory_limit_bytes().set(0);
                Metrics::global().memory_limited().set(0);
                return;
            }
        },
    };
    Metrics::global()
        .memory_limit_bytes()
        .set(i64::try_from(limit_bytes).unwrap_or(i64::MAX));
    Metrics::global().memory_limited().set(0);
    Metrics::global().memory_limited_total();
    let thresholds = memory::Thresholds::new(limit_bytes, memory::reserve());
    match reserve {
        Some((_, component, field)) => tracing::info!(
            pause_mb = thresholds.pause_bytes >> 20,
            resume_mb = thresholds.resume_bytes >> 20,
            "sources pause at {} MiB, {} MiB below the limit: room for twice the largest \
             record a source reads ({component}.{field})",
            thresholds.pause_bytes >> 20,
            (thresholds.limit_bytes - thresholds.pause_bytes) >> 20,
        ),
        None => tracing::info!(
            pause_mb = thresholds.pause_bytes >> 20,
            resume_mb = thresholds.resume_bytes >> 20,
            "sources pause at the limit"
        ),
    }
    let changed = move |limited: bool, used_bytes: u64, thresholds: memory::Thresholds| {
        Metrics::global().memory_limited().set(i64::from(limited));
        if limited {
            Metrics::global().memory_limited_total().inc();
            tracing::warn!(
                used_mb = used_bytes >> 20,
                limit_mb = thresholds.limit_bytes >> 20,
                pause_mb = thresholds.pause_bytes >> 20,
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
    tokio::spawn(memory::monitor(limit_bytes, changed, release_free_memory));
}

/// Sets the memory reserve (see [`auditflow_core::memory::set_reserve`]) to twice the
/// largest record a source of `pipeline` may read, and returns it with the source and the
/// option that bound it; `None` when no source bounds its records.
fn set_memory_reserve(pipeline: &Pipeline) -> Option<(u64, String, &'static str)> {
    let largest = pipeline
        .components
        .iter()
        .filter_map(|component| match &component.config {
            auditflow_config::AnyConfig::Source(config) => config
                .max_record_bytes()
                .map(|(bytes, option)| (bytes, component.id.clone(), option)),
            _ => None,
        })
        .max_by_key(|(bytes, _, _)| *bytes);
    let reserve = largest
        .as_ref()
        .map_or(0, |(bytes, _, _)| bytes.saturating_mul(2));
    auditflow_core::memory::set_reserve(reserve);
    largest.map(|(_, id, option)| (reserve, id, option))
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
/// second (or the timeout) stops at once. `SIGHUP`, or a change of the files under
/// `--watch`, reloads them.
async fn supervise(
    mut running: Running,
    signals: &mut Signals,
    mut reloads: Reloads<'_>,
    mut watch: Option<FileWatch>,
) -> ExitCode {
    let Signals {
        terminate,
        interrupt,
        hangup,
    } = signals;
    let finished = loop {
        // `wait` is cancel-safe: a reload drops it and the next turn goes on waiting.
        tokio::select! {
            result = running.wait() => break Some(result),
            _ = next_signal(terminate, interrupt) => break None,
            _ = hangup.recv() => {
                if let Some(watch) = &mut watch {
                    watch.mark_loaded();
                }
                reloads.reload(&mut running, "SIGHUP");
            }
            _ = async { watch.as_mut().expect("checked").changed().await }, if watch.is_some() => {
                reloads.reload(&mut running, "a pipeline file changed");
            }
        }
    };
    let timeout = reloads.current.shutdown_timeout;
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
                _ = next_signal(terminate, interrupt) => {
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

/// The signals `run` answers: `SIGTERM` and `SIGINT` drain and stop, `SIGHUP` reloads.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }
}

/// Reloads the pipeline files into the running pipeline, and counts it.
struct Reloads<'a> {
    files: &'a [PathBuf],
    registry: &'a Registry,
    /// The pipeline running now.
    current: Arc<Pipeline>,
}

impl<'a> Reloads<'a> {
    fn new(files: &'a [PathBuf], registry: &'a Registry, pipeline: &Arc<Pipeline>) -> Reloads<'a> {
        // Both results show from start-up, at 0.
        for result in ["ok", "failed"] {
            Metrics::global().reloads_total(result);
        }
        Reloads {
            files,
            registry,
            current: Arc::clone(pipeline),
        }
    }

    /// Loads and checks the files, then moves the running pipeline to them. Any problem
    /// leaves the running pipeline as it was: every problem is printed (as `validate`
    /// prints them) and the reload counts as failed.
    fn reload(&mut self, running: &mut Running, reason: &str) {
        tracing::info!(reason, "reloading the pipeline files");
        let pipeline = match auditflow_config::load(self.files, self.registry) {
            Ok(pipeline) => Arc::new(pipeline),
            Err(errors) => return failed(running, &errors, "the pipeline files have"),
        };
        if let (Some(old), Some(new)) = (&self.current.metrics, &pipeline.metrics) {
            if old.address != new.address {
                tracing::warn!(
                    old = %old.address,
                    new = %new.address,
                    "metrics.address changed: the endpoint stays where it is until a restart"
                );
            }
        }
        let summary = match running.reload(Arc::clone(&pipeline)) {
            Ok(summary) => summary,
            Err(errors) => {
                return failed(running, &errors, "building the changed components found")
            }
        };
        set_memory_reserve(&pipeline);
        Metrics::global().reloads_total("ok").inc();
        let hash = running.publish_config_hash().unwrap_or_default();
        self.current = pipeline;
        tracing::info!(
            added = ?summary.added,
            changed = ?summary.changed,
            removed = ?summary.removed,
            unchanged = summary.unchanged.len(),
            config_hash = %hash,
            "pipeline reloaded"
        );
    }
}

/// Prints a failed reload's problems and counts it.
fn failed(running: &Running, errors: &[ConfigError], what: &str) {
    for error in errors {
        eprintln!("{error}");
    }
    Metrics::global().reloads_total("failed").inc();
    tracing::error!(
        config_hash = %running.config_hash().unwrap_or_default(),
        "reload failed: {what} {} problem{}; the running pipeline is unchanged",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
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
pub(crate) fn config_failure(errors: &[ConfigError]) -> ExitCode {
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
