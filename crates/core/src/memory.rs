//! The process's memory limit (`memory_limit_mb`): a monitor that samples the memory the
//! process holds, and the flag that makes sources pause while it is over the limit.
//!
//! Sources pause the way they do under back-pressure (the file and stdin sources stop
//! reading, the webhook answers `503` with `Retry-After`, Kafka pauses its partitions);
//! what is already in the pipeline drains, memory falls, and they resume.
//!
//! # Why a process-wide flag
//! Memory is one budget for the whole process, and the limit it is held against (the
//! cgroup's) is the process's too; a flag per component would only be copies of this one.
//! Sources ask [`pressure`] for a handle.
//!
//! # What is measured
//! Anonymous resident memory (`RssAnon` in `/proc/self/status`): the heap, stacks and
//! buffers, which the kernel cannot reclaim without swap, so it is what runs a cgroup into
//! its OOM killer. The cgroup's own `memory.current` also counts the page cache of the
//! files the file source reads; the kernel reclaims that under pressure, so counting it
//! would pause sources while nothing is at risk (a sidecar reading a 100 MB log would sit
//! at its limit all the time).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use tokio::sync::watch;

/// How often the monitor samples. At 100 MB/s of input this bounds what can arrive between
/// two samples to about 1 MB; one sample (a read of `/proc/self/status`) costs some tens
/// of microseconds, well under 1% of a core at this rate.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(10);

/// Sources resume once memory falls below this share of the limit (percent). The gap is
/// wider than what handing free memory back to the kernel gives while a destination is
/// down (a few MB), so a stuck pipeline stays paused instead of reading one more batch,
/// going over again, and creeping up on the cgroup's OOM killer.
pub const RESUME_PERCENT: u64 = 80;

/// The default limit, as a share of the cgroup's limit (percent): the rest is for what the
/// process holds outside its anonymous memory (kernel buffers, page tables, mapped code).
pub const DEFAULT_CGROUP_PERCENT: u64 = 90;

/// The most of the limit that [`set_reserve`] keeps free (percent): with records larger
/// than this allows for, sources still run, pausing a quarter below the limit.
pub const MAX_RESERVE_PERCENT: u64 = 25;

/// Bytes below the limit at which sources pause; see [`set_reserve`].
static RESERVE: AtomicU64 = AtomicU64::new(0);

/// Sets how far below the limit sources pause, in bytes: room for what one step of the
/// pipeline adds between two samples. `run` sets it to twice the largest record a source
/// of the pipeline may read (the record, and the copy a sink encodes from it), at start
/// and on each reload. [`Thresholds::new`] caps it at [`MAX_RESERVE_PERCENT`] of the limit.
pub fn set_reserve(bytes: u64) {
    RESERVE.store(bytes, Ordering::Relaxed);
}

/// What [`set_reserve`] last set (0 before).
pub fn reserve() -> u64 {
    RESERVE.load(Ordering::Relaxed)
}

static LIMITED: LazyLock<watch::Sender<bool>> = LazyLock::new(|| watch::Sender::new(false));

/// Whether the process is near its memory limit (sources pause), seen from a source. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MemoryPressure {
    rx: watch::Receiver<bool>,
}

/// The process-wide memory flag.
pub fn pressure() -> MemoryPressure {
    MemoryPressure {
        rx: LIMITED.subscribe(),
    }
}

impl MemoryPressure {
    /// True while sources should not read more.
    pub fn is_limited(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once memory is under the limit (at once when it already is).
    pub async fn relieved(&mut self) {
        // The sender is a static: it is never dropped, so this cannot fail.
        let _ = self.rx.wait_for(|limited| !*limited).await;
    }

    /// Resolves when the flag next changes (raised or cleared).
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Raises or clears the process-wide flag. The monitor calls it; tests may too, to see a
/// source pause.
pub fn set_limited(limited: bool) {
    LIMITED.send_if_modified(|current| std::mem::replace(current, limited) != limited);
}

/// When to raise and when to clear the flag, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// The limit (`memory_limit_mb`), which memory should not pass.
    pub limit_bytes: u64,
    /// Raised at or above this: the limit less the reserve.
    pub pause_bytes: u64,
    /// Cleared below this.
    pub resume_bytes: u64,
}

impl Thresholds {
    /// Raises the flag `reserve_bytes` below `limit_bytes` (at most [`MAX_RESERVE_PERCENT`]
    /// of it below), and clears it below [`RESUME_PERCENT`] of that (each rounded down to a
    /// whole percent).
    pub fn new(limit_bytes: u64, reserve_bytes: u64) -> Thresholds {
        let reserve = reserve_bytes.min(limit_bytes / 100 * MAX_RESERVE_PERCENT);
        let pause_bytes = limit_bytes - reserve;
        Thresholds {
            limit_bytes,
            pause_bytes,
            resume_bytes: pause_bytes / 100 * RESUME_PERCENT,
        }
    }

    /// Whether the flag is up after a sample of `used_bytes`, given whether it was up.
    pub fn limited(&self, was_limited: bool, used_bytes: u64) -> bool {
        if was_limited {
            used_bytes >= self.resume_bytes
        } else {
            used_bytes >= self.pause_bytes
        }
    }
}

/// Samples the process's memory every [`SAMPLE_INTERVAL`] and raises or clears the flag,
/// with the thresholds for `limit_bytes` and the [`reserve`] at that sample;
/// `changed(limited, used_bytes, thresholds)` hears each change. While the flag is up, `release` is
/// called before each sample: it hands memory the allocator holds free back to the kernel
/// (glibc keeps freed memory in its arenas, so without it the resident memory could stay
/// over the resume threshold after the pipeline drained, and sources would never resume).
///
/// Runs until the process ends (or, should `/proc` become unreadable, clears the flag and
/// returns: sources must not stay paused on a reading that is gone).
pub async fn monitor(
    limit_bytes: u64,
    mut changed: impl FnMut(bool, u64, Thresholds) + Send,
    release: impl Fn() + Send,
) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut limited = false;
    loop {
        tick.tick().await;
        if limited {
            release();
        }
        let used = match resident_anonymous_bytes() {
            Ok(used) => used,
            Err(error) => {
                tracing::error!(%error, "cannot read /proc/self/status: memory_limit_mb is no longer enforced");
                set_limited(false);
                return;
            }
        };
        let thresholds = Thresholds::new(limit_bytes, reserve());
        let now = thresholds.limited(limited, used);
        if now != limited {
            limited = now;
            set_limited(limited);
            changed(limited, used, thresholds);
        }
    }
}

/// The process's anonymous resident memory, in bytes (`RssAnon`).
pub fn resident_anonymous_bytes() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::other("no RssAnon line in /proc/self/status"))
}

/// The memory limit of the process's cgroup in bytes, and the file it came from: the
/// lowest `memory.max` (cgroup v2) or `memory.limit_in_bytes` (v1) on the way from its
/// cgroup up to the root of the mount. `None` when no limit is set or no cgroup memory
/// controller is mounted.
pub fn cgroup_limit() -> Option<(u64, PathBuf)> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroup_limit_in(Path::new("/sys/fs/cgroup"), &membership)
}

/// [`cgroup_limit`] with the cgroup mount root and the `/proc/self/cgroup` text given.
pub fn cgroup_limit_in(root: &Path, membership: &str) -> Option<(u64, PathBuf)> {
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let relative = path.trim_start_matches('/');
        let found = if controllers.is_empty() {
            // cgroup v2: mounted at the root, or at `unified/` beside v1 controllers.
            lowest_limit(&root.join(relative), root, "memory.max").or_else(|| {
                let unified = root.join("unified");
                lowest_limit(&unified.join(relative), &unified, "memory.max")
            })
        } else if controllers.split(',').any(|name| name == "memory") {
            let mount = root.join("memory");
            lowest_limit(&mount.join(relative), &mount, "memory.limit_in_bytes")
        } else {
            None
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// The lowest limit in `file` from `dir` up to `mount`.
fn lowest_limit(dir: &Path, mount: &Path, file: &str) -> Option<(u64, PathBuf)> {
    let mut lowest: Option<(u64, PathBuf)> = None;
    let mut dir = Some(dir);
    while let Some(here) = dir {
        if !here.starts_with(mount) {
            break;
        }
        let path = here.join(file);
        if let Some(limit) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| parse_limit(&text))
        {
            if lowest.as_ref().is_none_or(|(bytes, _)| limit < *bytes) {
                lowest = Some((limit, path));
            }
        }
        dir = here.parent();
    }
    lowest
}

/// A limit file's value: `max` (v2) and v1's "unlimited" (a page-rounded `i64::MAX`) are
/// no limit.
fn parse_limit(text: &str) -> Option<u64> {
    let bytes = text.trim().parse::<u64>().ok()?;
    (bytes < 1 << 62).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_goes_up_at_the_limit_and_down_only_under_the_resume_threshold() {
        let thresholds = Thresholds::new(1000 * 1024, 0);
        assert_eq!(thresholds.pause_bytes, 1000 * 1024);
        assert_eq!(thresholds.resume_bytes, 800 * 1024);
        let mut limited = false;
        let mut seen = Vec::new();
        for used in [500, 999, 1000, 950, 801, 800, 799, 950, 999, 1001] {
            limited = thresholds.limited(limited, used * 1024);
            seen.push(limited);
        }
        assert_eq!(
            seen,
            [false, false, true, true, true, true, false, false, false, true]
        );
    }

    #[test]
    fn the_reserve_moves_both_thresholds_down_and_is_capped_at_a_quarter_of_the_limit() {
        let mib = 1 << 20;
        // A 57.6 MiB limit (90% of 64 MiB) with 4 MiB lines: pause 8 MiB below it.
        let limit = 64 * mib / 100 * 90;
        let thresholds = Thresholds::new(limit, 8 * mib);
        assert_eq!(thresholds.limit_bytes, limit);
        assert_eq!(thresholds.pause_bytes, limit - 8 * mib);
        assert_eq!(thresholds.resume_bytes, (limit - 8 * mib) / 100 * 80);
        assert!(!thresholds.limited(false, limit - 8 * mib - 1));
        assert!(thresholds.limited(false, limit - 8 * mib));
        // 32 MiB webhook bodies: no more than a quarter of the limit is kept free.
        let capped = Thresholds::new(limit, 64 * mib);
        assert_eq!(capped.pause_bytes, limit - limit / 100 * 25);
        // A reserve larger than the whole limit still leaves a limit to pause at.
        assert!(Thresholds::new(mib, u64::MAX).pause_bytes > 0);
    }

    #[test]
    fn this_process_has_anonymous_memory() {
        let before = resident_anonymous_bytes().unwrap();
        let held = vec![1u8; 32 << 20];
        let after = resident_anonymous_bytes().unwrap();
        assert!(after >= before + (30 << 20), "{before} -> {after}");
        drop(held);
    }

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    #[test]
    fn cgroup_v2_takes_the_lowest_memory_max_up_to_the_root() {
        let root = tree(&[
            ("kubepods/memory.max", "max\n"),
            ("kubepods/pod1/memory.max", "134217728\n"),
            ("kubepods/pod1/auditflow/memory.max", "max\n"),
        ]);
        let (bytes, file) = cgroup_limit_in(root.path(), "0::/kubepods/pod1/auditflow\n").unwrap();
        assert_eq!(bytes, 128 << 20);
        assert_eq!(file, root.path().join("kubepods/pod1/memory.max"));
        assert_eq!(cgroup_limit_in(root.path(), "0::/kubepods\n"), None);
    }

    #[test]
    fn cgroup_v1_reads_the_memory_controller_and_ignores_unlimited() {
        let root = tree(&[
            ("memory/memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory/docker/abc/memory.limit_in_bytes", "67108864\n"),
            ("unified/docker/abc/cgroup.procs", ""),
        ]);
        let membership = "9:pids:/docker/abc\n4:memory:/docker/abc\n0::/docker/abc\n";
        let (bytes, _) = cgroup_limit_in(root.path(), membership).unwrap();
        assert_eq!(bytes, 64 << 20);
        assert_eq!(cgroup_limit_in(root.path(), "4:memory:/\n0::/\n"), None);
    }

    #[tokio::test]
    async fn a_source_waits_for_the_flag_to_clear() {
        let mut pressure = pressure();
        assert!(!pressure.is_limited());
        set_limited(true);
        assert!(pressure.is_limited());
        let waiting = tokio::spawn(async move { pressure.relieved().await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        set_limited(false);
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("relieved once the flag clears")
            .unwrap();
    }
}
