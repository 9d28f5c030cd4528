//! Duration options: a whole number in the unit the option's name gives (`timeout_ms`,
//! `rotate_wait_secs`), and the range of values that can work.
//!
//! Every duration that comes from a pipeline file is checked here by its plugin's
//! `validate` before it becomes a [`Duration`]: a timeout of 0 can never be met, and a
//! value of years parks a component for good or overflows the `Instant` it is added to
//! (`Instant::now() + Duration::from_millis(u64::MAX)` panics). The option keeps its
//! plain number in the file; the range is what `validate` enforces.

use std::fmt;
use std::time::{Duration, Instant};

use crate::component::BuildError;

/// Milliseconds in a second.
const SECOND_MS: u64 = 1000;
/// Seconds in a day.
const DAY_SECS: u64 = 24 * 60 * 60;

/// `at + wait`, checked: a sum past what the clock can hold gives `at` plus one day
/// instead (a caller that wakes then looks again), and never a panic. For deadlines made
/// from a config value or from what the network said.
pub fn deadline(at: Instant, wait: Duration) -> Instant {
    at.checked_add(wait)
        .or_else(|| at.checked_add(Duration::from_secs(DAY_SECS)))
        .unwrap_or(at)
}

/// The unit of a duration option, as its name ends (`_ms`, `_secs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    /// `_ms`.
    Milliseconds,
    /// `_secs`.
    Seconds,
}

impl TimeUnit {
    fn to_duration(self, value: u64) -> Duration {
        match self {
            TimeUnit::Milliseconds => Duration::from_millis(value),
            TimeUnit::Seconds => Duration::from_secs(value),
        }
    }

    fn plural(self) -> &'static str {
        match self {
            TimeUnit::Milliseconds => "milliseconds",
            TimeUnit::Seconds => "seconds",
        }
    }
}

/// The values a duration option accepts, both ends included, in the option's unit.
///
/// ```
/// use auditflow_core::duration::DurationRange;
///
/// const TIMEOUT: DurationRange = DurationRange::millis(1, DurationRange::DAY_MS);
/// assert!(TIMEOUT.check("timeout_ms", 30_000).is_ok());
/// let error = TIMEOUT.check("timeout_ms", 0).unwrap_err();
/// assert_eq!(error.field.as_deref(), Some("timeout_ms"));
/// assert_eq!(
///     error.message,
///     "must be between 1 and 86400000 milliseconds (1 ms to 1 day), found 0"
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRange {
    /// The option's unit.
    pub unit: TimeUnit,
    /// The smallest value that works, in `unit`.
    pub min: u64,
    /// The largest value accepted, in `unit`.
    pub max: u64,
}

impl DurationRange {
    /// One day in milliseconds, the usual bound of a timeout or a backoff.
    pub const DAY_MS: u64 = DAY_SECS * SECOND_MS;
    /// One hour in seconds.
    pub const HOUR_SECS: u64 = 60 * 60;
    /// One day in seconds.
    pub const DAY_SECS: u64 = DAY_SECS;

    /// An option in milliseconds (`_ms`), from `min` to `max` milliseconds.
    pub const fn millis(min: u64, max: u64) -> DurationRange {
        DurationRange {
            unit: TimeUnit::Milliseconds,
            min,
            max,
        }
    }

    /// An option in seconds (`_secs`), from `min` to `max` seconds.
    pub const fn secs(min: u64, max: u64) -> DurationRange {
        DurationRange {
            unit: TimeUnit::Seconds,
            min,
            max,
        }
    }

    /// `value` (in the range's unit) as a [`Duration`] when it is in the range.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] on `field` (the option's dotted path inside its component, such
    /// as `request.timeout_ms`) that gives the range and the value found.
    pub fn check(&self, field: &str, value: u64) -> Result<Duration, BuildError> {
        if (self.min..=self.max).contains(&value) {
            return Ok(self.unit.to_duration(value));
        }
        Err(BuildError::field(
            field,
            format!(
                "must be between {} and {} {} ({self}), found {value}",
                self.min,
                self.max,
                self.unit.plural()
            ),
        ))
    }
}

/// The range for people: `1 ms to 1 day`, `0 s to 30 days`.
impl fmt::Display for DurationRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let min = self.unit.to_duration(self.min);
        let max = self.unit.to_duration(self.max);
        write!(f, "{} to {}", Human(min), Human(max))
    }
}

/// A duration in the largest unit that writes it whole: `1 day`, `90 s`, `250 ms`.
struct Human(Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        let units: [(u128, &str, &str); 4] = [
            (u128::from(DAY_SECS * SECOND_MS), "day", "days"),
            (60 * 60 * 1000, "h", "h"),
            (60 * 1000, "min", "min"),
            (1000, "s", "s"),
        ];
        for (size, one, many) in units {
            if millis >= size && millis.is_multiple_of(size) {
                let count = millis / size;
                return write!(f, "{count} {}", if count == 1 { one } else { many });
            }
        }
        match millis {
            0 => write!(f, "0 s"),
            _ => write!(f, "{millis} ms"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_in_range_becomes_its_duration() {
        let range = DurationRange::secs(0, DurationRange::DAY_SECS);
        assert_eq!(range.check("wait_secs", 0), Ok(Duration::ZERO));
        assert_eq!(
            range.check("wait_secs", 86_400),
            Ok(Duration::from_secs(86_400))
        );
        let range = DurationRange::millis(1, DurationRange::DAY_MS);
        assert_eq!(range.check("x_ms", 1), Ok(Duration::from_millis(1)));
    }

    #[test]
    fn a_value_out_of_range_names_the_field_and_the_range() {
        let range = DurationRange::millis(1, DurationRange::DAY_MS);
        let error = range.check("request.timeout_ms", u64::MAX).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("request.timeout_ms"));
        assert_eq!(
            error.message,
            "must be between 1 and 86400000 milliseconds (1 ms to 1 day), found 18446744073709551615"
        );
        let error = DurationRange::secs(1, 30 * DurationRange::DAY_SECS)
            .check("forget_after_secs", 0)
            .unwrap_err();
        assert_eq!(
            error.message,
            "must be between 1 and 2592000 seconds (1 s to 30 days), found 0"
        );
    }

    #[test]
    fn a_deadline_past_the_clock_falls_back_to_a_day() {
        let now = Instant::now();
        assert_eq!(
            deadline(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert_eq!(
            deadline(now, Duration::MAX),
            now + Duration::from_secs(DAY_SECS)
        );
    }

    #[test]
    fn ranges_read_in_the_largest_whole_unit() {
        let text = |range: DurationRange| range.to_string();
        assert_eq!(text(DurationRange::secs(0, 3600)), "0 s to 1 h");
        assert_eq!(text(DurationRange::millis(250, 90_000)), "250 ms to 90 s");
        assert_eq!(text(DurationRange::millis(1, 60_000)), "1 ms to 1 min");
        assert_eq!(text(DurationRange::secs(1, 7 * 86_400)), "1 s to 7 days");
    }
}
