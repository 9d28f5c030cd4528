//! `--since` / `--until`: a time window on one of the event's timestamps.
//!
//! A bound is an RFC 3339 time (`2026-11-23T08:00:00Z`, `2026-11-23T09:00:00+01:00`) or a
//! duration back from now (`2h`, `90m`, `1h30m`, `2 days`), parsed by jiff. The event's
//! timestamp is read from the raw field bytes: no `Value` is built per event.

use std::fmt;
use std::str::FromStr;

use auditflow_core::Event;
use jiff::{SignedDuration, Timestamp};

/// Which timestamp the window applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeField {
    /// When the API server received the request (the default).
    #[default]
    RequestReceived,
    /// When the event's stage was reached.
    Stage,
}

impl TimeField {
    /// The event field it reads.
    pub fn key(self) -> &'static str {
        match self {
            TimeField::RequestReceived => "requestReceivedTimestamp",
            TimeField::Stage => "stageTimestamp",
        }
    }
}

impl FromStr for TimeField {
    type Err = String;

    fn from_str(text: &str) -> Result<TimeField, String> {
        match text {
            "requestReceivedTimestamp" => Ok(TimeField::RequestReceived),
            "stageTimestamp" => Ok(TimeField::Stage),
            other => Err(format!(
                "unknown time field {other:?}: expected requestReceivedTimestamp or stageTimestamp"
            )),
        }
    }
}

impl fmt::Display for TimeField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// A `--since`/`--until` value that is neither an RFC 3339 time nor a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is neither an RFC 3339 time (2026-11-23T08:00:00Z) nor a duration (2h, 90m, 1h30m): {why}")]
pub struct BoundError {
    pub text: String,
    pub why: String,
}

/// Parses a bound: an RFC 3339 time, or a duration before `now`.
pub fn parse_bound(text: &str, now: Timestamp) -> Result<Timestamp, BoundError> {
    let text = text.trim();
    if let Ok(time) = text.parse::<Timestamp>() {
        return Ok(time);
    }
    let duration = text.parse::<SignedDuration>().or_else(|_| {
        // `2 days`, `1 week`: a day counts as 24 hours here.
        text.parse::<jiff::Span>()
            .and_then(|span| span.to_duration(jiff::SpanRelativeTo::days_are_24_hours()))
    });
    match duration {
        Ok(duration) if duration.is_negative() => Err(BoundError {
            text: text.to_owned(),
            why: "a duration back from now cannot be negative".to_owned(),
        }),
        Ok(duration) => now.checked_sub(duration).map_err(|error| BoundError {
            text: text.to_owned(),
            why: error.to_string(),
        }),
        Err(error) => Err(BoundError {
            text: text.to_owned(),
            why: error.to_string(),
        }),
    }
}

/// The window: `since` inclusive, `until` exclusive. An event without the timestamp (or
/// with one that does not parse) is outside any window that has a bound.
#[derive(Debug, Clone, Default)]
pub struct TimeWindow {
    pub field: TimeField,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

impl TimeWindow {
    /// Whether the window has a bound at all.
    pub fn is_bounded(&self) -> bool {
        self.since.is_some() || self.until.is_some()
    }

    /// Whether the event falls inside.
    pub fn admits(&self, event: &Event) -> bool {
        if !self.is_bounded() {
            return true;
        }
        let Some(time) = timestamp(event, self.field) else {
            return false;
        };
        self.since.is_none_or(|since| time >= since) && self.until.is_none_or(|until| time < until)
    }
}

/// The event's timestamp, parsed from the raw field bytes.
pub fn timestamp(event: &Event, field: TimeField) -> Option<Timestamp> {
    match event.raw_field(field.key()) {
        Some(raw) => {
            let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
            // RFC 3339 text never needs escapes; one that has them is not a time.
            std::str::from_utf8(inner).ok()?.parse().ok()
        }
        None => event.get_str(field.key())?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn now() -> Timestamp {
        "2026-11-23T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn bounds_are_times_or_durations_back_from_now() {
        let at = |text: &str| parse_bound(text, now()).unwrap().to_string();
        assert_eq!(at("2026-11-23T08:00:00Z"), "2026-11-23T08:00:00Z");
        assert_eq!(at("2026-11-23T09:00:00+01:00"), "2026-11-23T08:00:00Z");
        assert_eq!(at("2h"), "2026-11-23T08:00:00Z");
        assert_eq!(at("90m"), "2026-11-23T08:30:00Z");
        assert_eq!(at("1h30m"), "2026-11-23T08:30:00Z");
        assert_eq!(at("2 days"), "2026-11-21T10:00:00Z");
        let error = parse_bound("yesterday", now()).unwrap_err();
        assert!(
            error.to_string().starts_with("\"yesterday\" is neither"),
            "{error}"
        );
    }

    #[test]
    fn the_window_includes_since_and_excludes_until() {
        let event = |time: &str| {
            Event::from_bytes(Bytes::from(format!(
                "{{\"requestReceivedTimestamp\":\"{time}\",\"stageTimestamp\":\"2026-11-23T09:30:00.000001Z\"}}"
            )))
            .unwrap()
        };
        let window = TimeWindow {
            field: TimeField::RequestReceived,
            since: Some("2026-11-23T08:00:00Z".parse().unwrap()),
            until: Some("2026-11-23T09:00:00Z".parse().unwrap()),
        };
        assert!(window.admits(&event("2026-11-23T08:00:00.000000Z")));
        assert!(window.admits(&event("2026-11-23T08:59:59.999999Z")));
        assert!(!window.admits(&event("2026-11-23T09:00:00.000000Z")));
        assert!(!window.admits(&event("2026-11-23T07:59:59.999999Z")));
        assert!(!window.admits(&Event::from_bytes(Bytes::from_static(b"{}")).unwrap()));
        let stage = TimeWindow {
            field: TimeField::Stage,
            ..window
        };
        assert!(!stage.admits(&event("2026-11-23T08:30:00Z")));
        assert!(
            TimeWindow::default().admits(&Event::from_bytes(Bytes::from_static(b"{}")).unwrap())
        );
    }
}
