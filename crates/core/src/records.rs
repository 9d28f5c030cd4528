//! From framed records to events: the one place where the stream sources (`stdin`,
//! `file`, plain and gzip) decide what a record is, count what they refuse, and warn about
//! it without flooding the log.
//!
//! A record holds one event, or a whole `EventList` or JSON array of events (a webhook body
//! saved to a file), which is unrolled into its items exactly as the webhook source does.
//! What is refused is counted in `auditflow_component_discarded_events_total` under a
//! bounded reason:
//!
//! | reason | what |
//! |---|---|
//! | `malformed` | not JSON, or JSON that is not an event |
//! | `too_deep` | nested deeper than 10,000 levels (kube-apiserver's own limit) |
//! | `oversized` | longer than `max_line_bytes`; skipped without being held |
//! | `nul_padding` | a run of NUL bytes a crash left; counted once per run (its bytes are in the log line) |
//!
//! Warnings go through a [`LogLimiter`]: at most [`WARNINGS_PER_MINUTE`] per component and
//! reason, then one line saying how many were suppressed. The metrics count every one.
//!
//! With a connected `<id>.dead_letter` output ([`RecordDecoder::with_dead_letters`]), each
//! refused record (not NUL padding) also becomes a dead letter holding its bytes, which the
//! source takes with [`RecordDecoder::take_dead_letters`] and sends with the batch's
//! acknowledgement.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::component::Telemetry;
use crate::dead_letter::{DeadLetter, DeadLetterOutput, Location};
use crate::decode::{self, Decoded};
use crate::envelope::{self, Decoding, Envelope};
use crate::event::Event;
use crate::framing::Frame;

/// Warnings logged per component and reason within a minute before the rest are
/// suppressed (and summarised).
pub const WARNINGS_PER_MINUTE: u32 = 10;
const WINDOW: Duration = Duration::from_secs(60);

/// Rate-limits warnings per reason: [`WARNINGS_PER_MINUTE`] in each minute, then silence,
/// then a summary of how many were suppressed when the next minute's first one is logged
/// (or at [`LogLimiter::flush`]).
#[derive(Debug, Default)]
pub struct LogLimiter {
    windows: Vec<(&'static str, Window)>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// Whether a warning for `reason` may be logged now. `Some(n)`: log it, after saying
    /// that `n` earlier ones were suppressed when `n > 0`; `None`: suppress it.
    pub fn allow(&mut self, reason: &'static str) -> Option<u64> {
        let now = Instant::now();
        let index = match self.windows.iter().position(|(r, _)| *r == reason) {
            Some(index) => index,
            None => {
                self.windows.push((
                    reason,
                    Window {
                        start: now,
                        logged: 0,
                        suppressed: 0,
                    },
                ));
                self.windows.len() - 1
            }
        };
        let window = &mut self.windows[index].1;
        if now.duration_since(window.start) >= WINDOW {
            let suppressed = window.suppressed;
            *window = Window {
                start: now,
                logged: 1,
                suppressed: 0,
            };
            return Some(suppressed);
        }
        if window.logged < WARNINGS_PER_MINUTE {
            window.logged += 1;
            return Some(0);
        }
        window.suppressed += 1;
        None
    }

    /// The suppressed counts not yet reported, per reason, cleared (for a summary when
    /// the component stops).
    pub fn flush(&mut self) -> Vec<(&'static str, u64)> {
        self.windows
            .iter_mut()
            .filter(|(_, window)| window.suppressed > 0)
            .map(|(reason, window)| (*reason, std::mem::take(&mut window.suppressed)))
            .collect()
    }
}

/// What one frame came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Read {
    /// Records that were meant to be events: events decoded plus items refused. Blank
    /// lines and padding are not records.
    pub records: usize,
    /// Events appended.
    pub events: usize,
}

/// Turns frames into events for one component, counting and warning about what it refuses.
#[derive(Debug)]
pub struct RecordDecoder {
    component_id: String,
    limiter: LogLimiter,
    scratch: Decoded,
    dead_letter: Option<DeadLetterOutput>,
    letters: Vec<Event>,
    /// How a record holds events (`decoding`): audit events, or a cloud envelope.
    envelope: Envelope,
}

impl RecordDecoder {
    /// A decoder for component `component_id` (named in its warnings and dead letters) that
    /// reads audit events, with no dead-letter output until one is given.
    pub fn new(component_id: impl Into<String>) -> RecordDecoder {
        RecordDecoder {
            component_id: component_id.into(),
            limiter: LogLimiter::default(),
            scratch: Decoded::default(),
            dead_letter: None,
            letters: Vec::new(),
            envelope: Envelope::default(),
        }
    }

    /// Makes a dead letter of each refused record when `output` is connected.
    pub fn with_dead_letters(mut self, output: &DeadLetterOutput) -> RecordDecoder {
        self.dead_letter = Some(output.clone()).filter(DeadLetterOutput::is_connected);
        self
    }

    /// Reads each record as `envelope` says (a cloud envelope per record, say, one
    /// Azure diagnostic-records batch per line); refused items go where refused records go.
    pub fn with_envelope(mut self, envelope: Envelope) -> RecordDecoder {
        self.envelope = envelope;
        self
    }

    /// The dead letters made since the last call, in the order of the records.
    pub fn take_dead_letters(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.letters)
    }

    /// Decodes `frame`, appending its events to `events` and counting refusals on
    /// `telemetry`. `location` names where the record sits (file, record number and first
    /// byte) for the warnings and dead letters; it is only called when one is made.
    pub fn decode(
        &mut self,
        frame: Frame,
        telemetry: &dyn Telemetry,
        events: &mut Vec<Event>,
        location: impl Fn() -> Location,
    ) -> Read {
        match frame {
            Frame::Line { line, .. } => self.record(line, telemetry, events, &location),
            Frame::Oversized { start, len, .. } => {
                telemetry.discarded("oversized", 1);
                if let Some(suppressed) = self.limiter.allow("oversized") {
                    self.summarise("oversized", suppressed);
                    tracing::warn!(component_id = %self.component_id, location = %location(),
                        offset = start, bytes = len,
                        "skipping a record longer than max_line_bytes");
                }
                if let Some(output) = &self.dead_letter {
                    let error = format!("a record of {len} bytes, longer than max_line_bytes");
                    self.letters.extend(output.letter(&DeadLetter {
                        reason: "oversized",
                        error: &error,
                        location: &location(),
                        status: None,
                        reply: None,
                        raw: b"",
                        truncated: true,
                    }));
                }
                Read {
                    records: 1,
                    events: 0,
                }
            }
            Frame::Padding { len, end } => {
                telemetry.discarded("nul_padding", 1);
                if let Some(suppressed) = self.limiter.allow("nul_padding") {
                    self.summarise("nul_padding", suppressed);
                    tracing::warn!(component_id = %self.component_id, location = %location(),
                        offset = end - len, bytes = len,
                        "skipping a run of NUL bytes (padding left by a crash)");
                }
                Read::default()
            }
        }
    }

    /// Logs the summaries of what was suppressed and not yet reported (at the end).
    pub fn finish(&mut self) {
        for (reason, suppressed) in self.limiter.flush() {
            self.summarise(reason, suppressed);
        }
    }

    fn record(
        &mut self,
        line: Bytes,
        telemetry: &dyn Telemetry,
        events: &mut Vec<Event>,
        location: &impl Fn() -> Location,
    ) -> Read {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Read::default();
        }
        let before = events.len();
        // The common case, one event, without a detour.
        if line.first() == Some(&b'{') && self.envelope.decoding == Decoding::Audit {
            match Event::from_bytes(line.clone()) {
                Ok(event) if !decode::is_event_list(&event) => {
                    events.push(event);
                    return Read {
                        records: 1,
                        events: 1,
                    };
                }
                Ok(_) => {}
                Err(error) => {
                    let reason = error.reason();
                    self.refused(reason, &error.to_string(), &line, telemetry, location);
                    return Read {
                        records: 1,
                        events: 0,
                    };
                }
            }
        }
        // An EventList or an array on one record: its items, as the webhook takes them.
        std::mem::swap(&mut self.scratch.events, events);
        let result = envelope::decode_into(
            &line,
            decode::Shape::Json,
            &self.envelope,
            &mut self.scratch,
        );
        std::mem::swap(&mut self.scratch.events, events);
        let mut records = events.len() - before;
        match result {
            Ok(()) => {
                for malformed in std::mem::take(&mut self.scratch.malformed) {
                    records += 1;
                    let message = malformed.to_string();
                    self.refused(
                        malformed.kind,
                        &message,
                        &malformed.raw,
                        telemetry,
                        location,
                    );
                }
            }
            Err(refused) => {
                records += 1;
                self.refused("malformed", &refused.0, &line, telemetry, location);
            }
        }
        Read {
            records,
            events: events.len() - before,
        }
    }

    fn refused(
        &mut self,
        reason: &'static str,
        error: &str,
        raw: &[u8],
        telemetry: &dyn Telemetry,
        location: &impl Fn() -> Location,
    ) {
        telemetry.discarded(reason, 1);
        if let Some(suppressed) = self.limiter.allow(reason) {
            self.summarise(reason, suppressed);
            tracing::warn!(component_id = %self.component_id, location = %location(), reason,
                %error, "skipping a record that is not an audit event");
        }
        if let Some(output) = &self.dead_letter {
            self.letters.extend(output.letter(&DeadLetter {
                reason,
                error,
                location: &location(),
                status: None,
                reply: None,
                raw,
                truncated: false,
            }));
        }
    }

    fn summarise(&self, reason: &'static str, suppressed: u64) {
        if suppressed > 0 {
            tracing::warn!(component_id = %self.component_id, reason, suppressed,
                "suppressed {suppressed} similar warnings in the last minute (all are counted in auditflow_component_discarded_events_total)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::{Framer, Framing};
    use crate::NoTelemetry;

    #[test]
    fn the_limiter_logs_ten_a_minute_per_reason_then_suppresses() {
        let mut limiter = LogLimiter::default();
        let allowed = (0..25)
            .filter(|_| limiter.allow("malformed").is_some())
            .count();
        assert_eq!(allowed, WARNINGS_PER_MINUTE as usize);
        assert_eq!(limiter.allow("oversized"), Some(0), "reasons are apart");
        assert_eq!(limiter.flush(), vec![("malformed", 15)]);
        assert_eq!(limiter.flush(), vec![]);
    }

    #[test]
    fn records_holding_lists_and_arrays_are_unrolled() {
        let mut decoder = RecordDecoder::new("in");
        let mut framer = Framer::new(Framing::Lines, 1 << 20, 0);
        framer.extend(
            b"{\"auditID\":\"a\"}\n\
              {\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"items\":[{\"auditID\":\"b\"},{\"auditID\":\"c\"}]}\n\
              [{\"auditID\":\"d\"},7]\n\
              \n\
              {\"auditID\":\n",
        );
        let mut events = Vec::new();
        let mut records = 0;
        while let Some(frame) = framer.next_frame() {
            records += decoder
                .decode(frame, &NoTelemetry, &mut events, || Location::File {
                    file: "here".into(),
                    line: 1,
                    offset: 0,
                })
                .records;
        }
        let ids: Vec<&str> = events.iter().filter_map(|e| e.get_str("auditID")).collect();
        assert_eq!(ids, ["a", "b", "c", "d"]);
        assert_eq!(records, 6, "4 events, the 7 and the torn line");
    }
}
