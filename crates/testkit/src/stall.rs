//! Whether a component's blocking work leaves the async runtime free.
//!
//! A test starts a [`StallWatch`] on the runtime the component runs on (a `current_thread`
//! runtime: blocking work there stops every task), under a key that the component's
//! blocking section can recognise (a directory, a marker in a body). The component calls
//! [`inside_blocking_section`] from that section, behind `#[cfg(test)]`; the call waits
//! until the watch's ticker task has ticked twice more. Off the runtime, that is at once.
//! On the runtime's thread the ticker cannot run: the wait gives up after
//! [`STALL_DEADLINE`] and counts a stall. No wall clock is asserted: a stall is a ticker
//! that could not move at all while the section ran.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// How long a blocking section waits for the ticker before it counts a stall.
pub const STALL_DEADLINE: Duration = Duration::from_secs(20);

/// How often the ticker ticks while it can.
const TICK: Duration = Duration::from_millis(1);

/// The watches of this process, by key (tests in one process run at the same time).
static WATCHES: Mutex<Vec<(String, Arc<Counts>)>> = Mutex::new(Vec::new());

#[derive(Default)]
struct Counts {
    ticks: AtomicU64,
    sections: AtomicUsize,
    stalls: AtomicUsize,
}

/// A ticker on the test's runtime, and what the blocking sections under its key saw.
/// Dropping it stops the ticker and forgets the key.
pub struct StallWatch {
    key: String,
    counts: Arc<Counts>,
    ticker: JoinHandle<()>,
}

impl StallWatch {
    /// Starts the ticker on the current runtime; blocking sections whose check accepts
    /// `key` wait for it.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start(key: impl Into<String>) -> StallWatch {
        let key = key.into();
        let counts = Arc::new(Counts::default());
        let ticking = Arc::clone(&counts);
        let ticker = tokio::spawn(async move {
            loop {
                ticking.ticks.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(TICK).await;
            }
        });
        lock().push((key.clone(), Arc::clone(&counts)));
        StallWatch {
            key,
            counts,
            ticker,
        }
    }

    /// Blocking sections entered under this key so far.
    pub fn sections(&self) -> usize {
        self.counts.sections.load(Ordering::SeqCst)
    }

    /// Blocking sections during which the runtime could not run the ticker.
    pub fn stalls(&self) -> usize {
        self.counts.stalls.load(Ordering::SeqCst)
    }

    /// Asserts that at least one blocking section ran under this key, and that the
    /// runtime kept running the ticker through every one. `what` names the section in
    /// the failure message (`checkpoint fsyncs`).
    ///
    /// # Panics
    ///
    /// When either does not hold.
    pub fn assert_runtime_kept_running(&self, what: &str) {
        let sections = self.sections();
        assert!(sections > 0, "no {what} ran: nothing was watched");
        assert_eq!(
            self.stalls(),
            0,
            "the runtime stood still during {what} ({sections} watched)"
        );
    }
}

impl Drop for StallWatch {
    fn drop(&mut self) {
        self.ticker.abort();
        lock().retain(|(key, counts)| key != &self.key || !Arc::ptr_eq(counts, &self.counts));
    }
}

/// Called by a component from inside a blocking section, behind `#[cfg(test)]`: for each
/// watch whose key `matches` accepts, waits until its ticker ticks twice (or
/// [`STALL_DEADLINE`] passes, a stall). Returns at once when no watch matches.
pub fn inside_blocking_section(matches: impl Fn(&str) -> bool) {
    let watching: Vec<Arc<Counts>> = lock()
        .iter()
        .filter(|(key, _)| matches(key))
        .map(|(_, counts)| Arc::clone(counts))
        .collect();
    for counts in watching {
        counts.sections.fetch_add(1, Ordering::SeqCst);
        if counts.stalls.load(Ordering::SeqCst) > 0 {
            // One stall fails the test; waiting out the deadline again only delays it.
            continue;
        }
        let from = counts.ticks.load(Ordering::SeqCst);
        let deadline = Instant::now() + STALL_DEADLINE;
        while counts.ticks.load(Ordering::SeqCst) < from + 2 {
            if Instant::now() >= deadline {
                counts.stalls.fetch_add(1, Ordering::SeqCst);
                break;
            }
            std::thread::sleep(TICK);
        }
    }
}

fn lock() -> std::sync::MutexGuard<'static, Vec<(String, Arc<Counts>)>> {
    // A test that panicked while holding the lock leaves the list usable.
    WATCHES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
