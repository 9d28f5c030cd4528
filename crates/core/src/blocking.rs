//! Work that holds a thread for as long as a disk or a CPU takes (an fsync, a directory
//! listing, decompression), run off the async runtime.
//!
//! A sidecar shares its disk with etcd and the API server: one slow fsync on a runtime
//! worker stalls every task scheduled there. Components hand such work to tokio's
//! blocking pool with [`run`] and await it.

/// Runs `work` on tokio's blocking pool and returns what it returned.
///
/// # Panics
///
/// If `work` panics, the panic resumes in the caller. Outside a tokio runtime.
pub async fn run<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}
