//! The stream sources' decoder: `Framer` (lines or a JSON stream, NUL padding, byte-order
//! marks, oversized records) and `RecordDecoder` (records into events, EventLists and
//! arrays unrolled).
//!
//! Input: byte 0 picks the framing and `max_bytes`, byte 1 the size of the reads; the rest
//! is the stream. Checks:
//! - the frames do not depend on how the stream is cut into reads;
//! - offsets only grow, and at the end every byte is framed and nothing is held;
//! - every event is one line of valid JSON that decodes again to the same fields, and
//!   reads as serde_json reads it;
//! - `Event::from_bytes` accepts exactly the JSON objects (serde_json as the oracle).
#![no_main]

use auditflow_core::framing::{Frame, Framer, Framing};
use auditflow_core::records::RecordDecoder;
use auditflow_core::NoTelemetry;
use auditflow_fuzz::{check_decode_agrees, check_event};
use libfuzzer_sys::fuzz_target;

fn frames(framing: Framing, max_bytes: usize, input: &[u8], read: usize) -> Vec<Frame> {
    let mut framer = Framer::new(framing, max_bytes, 0);
    let mut frames = Vec::new();
    for chunk in input.chunks(read) {
        framer.extend(chunk);
        while let Some(frame) = framer.next_frame() {
            frames.push(frame);
        }
    }
    while let Some(frame) = framer.finish() {
        frames.push(frame);
    }
    assert_eq!(framer.pending_bytes(), 0, "bytes held after the end");
    assert_eq!(
        framer.offset(),
        input.len() as u64,
        "the offset at the end is not the stream's length"
    );
    frames
}

fn without_ends(frames: &[Frame]) -> Vec<Frame> {
    frames
        .iter()
        .map(|frame| match frame {
            Frame::Line { line, .. } => Frame::Line {
                line: line.clone(),
                end: 0,
            },
            Frame::Oversized { start, len, .. } => Frame::Oversized {
                start: *start,
                len: *len,
                end: 0,
            },
            Frame::Padding { len, .. } => Frame::Padding { len: *len, end: 0 },
        })
        .collect()
}

fn end(frame: &Frame) -> u64 {
    match frame {
        Frame::Line { end, .. } | Frame::Oversized { end, .. } | Frame::Padding { end, .. } => *end,
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, read, input @ ..] = data else {
        return;
    };
    let framing = if mode & 1 == 0 {
        Framing::Lines
    } else {
        Framing::JsonStream
    };
    let max_bytes = match (mode >> 1) & 3 {
        0 => 8,
        1 => 64,
        2 => 1024,
        _ => 1 << 30,
    };
    let read = usize::from(*read % 32) + 1;

    let whole = frames(framing, max_bytes, input, input.len().max(1));
    let chunked = frames(framing, max_bytes, input, read);
    if framing == Framing::Lines {
        assert_eq!(whole, chunked, "the frames depend on the size of the reads");
    } else {
        // A value's trailing newline goes with it only when it is already read, so the
        // ends may differ; the records may not.
        assert_eq!(
            without_ends(&whole),
            without_ends(&chunked),
            "the records depend on the size of the reads"
        );
    }

    let mut previous = 0;
    for frame in &whole {
        let end = end(frame);
        assert!(
            end >= previous && end <= input.len() as u64,
            "offsets go back: {whole:?}"
        );
        previous = end;
        match frame {
            Frame::Line { line, .. } => {
                assert!(
                    line.len() <= max_bytes,
                    "a record over max_bytes: {frame:?}"
                );
                assert!(!line.contains(&0), "a record holds a NUL byte: {frame:?}");
                if line.first() == Some(&b'{') {
                    check_decode_agrees(line);
                }
            }
            Frame::Oversized { start, len, end } => {
                assert!(*len > max_bytes as u64 && start + len <= *end, "{frame:?}");
            }
            Frame::Padding { len, end } => {
                assert!(*len > 0 && *len <= *end, "{frame:?}");
                let start = (end - len) as usize;
                assert!(
                    input[start..*end as usize].iter().all(|&b| b == 0),
                    "{frame:?}"
                );
            }
        }
    }

    let mut decoder = RecordDecoder::new("fuzz");
    let mut events = Vec::new();
    let mut records = 0;
    for frame in whole {
        let read = decoder.decode(frame, &NoTelemetry, &mut events, || {
            auditflow_core::Location::File {
                file: "fuzz".into(),
                line: 0,
                offset: 0,
            }
        });
        assert!(read.events <= read.records, "{read:?}");
        records += read.records;
    }
    decoder.finish();
    assert!(events.len() <= records);
    for event in &events {
        check_event(event);
    }
});
