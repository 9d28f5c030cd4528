//! The condition language (`filter`, `sample`'s `exclude`, `query`): the parser, and the
//! evaluation of what it accepts.
//!
//! Input: a condition, then optionally a NUL byte and an event. Checks:
//! - no panic; a syntax error names a column inside the text (or just past it);
//! - `not (c)` parses whenever `c` does, and matches exactly the events `c` does not;
//! - evaluating on the event's bytes (the raw fast path) agrees with evaluating on the
//!   same event built from its parsed value (the slow path).
#![no_main]

use auditflow_core::condition::Condition;
use auditflow_core::Event;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

const EVENTS: &[&str] = &[
    r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/default/secrets/x","verb":"get","user":{"username":"alice","groups":["system:masters","system:authenticated"]},"sourceIPs":["10.0.0.1"],"objectRef":{"resource":"secrets","namespace":"default","name":"x","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":403},"annotations":{"authorization.k8s.io/decision":"forbid","authorization.k8s.io/reason":""}}"#,
    r#"{"auditID":"b","verb":"list","responseStatus":{"code":200.0},"user":{"username":"bob","extra":{"a":[1,2,null]}},"n":1e400,"s":"\u00e9\ud83d\ude00","x":null,"t":true}"#,
    r#"{"auditID":"c","verb":"patch","verb":"create","objectRef":{"name":"a","name":"b"},"annotations":{}}"#,
    r#"{}"#,
];

fuzz_target!(|data: &[u8]| {
    let (text, event) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], Some(&data[nul + 1..])),
        None => (data, None),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let condition = match Condition::parse(text) {
        Ok(condition) => condition,
        Err(error) => {
            let chars = text.chars().count();
            assert!(
                error.column >= 1 && error.column <= chars + 1,
                "column {} outside a condition of {chars} characters: {error}",
                error.column
            );
            assert!(!error.message.is_empty());
            return;
        }
    };
    assert_eq!(condition.as_str(), text);
    let negated = match Condition::parse(&format!("not ({text})")) {
        Ok(negated) => negated,
        Err(error) => panic!("`{text}` parses but `not ({text})` does not: {error}"),
    };

    let mut events: Vec<Event> = EVENTS
        .iter()
        .map(|json| Event::from_bytes(Bytes::from_static(json.as_bytes())).unwrap())
        .collect();
    if let Some(Ok(event)) = event.map(|json| Event::from_bytes(Bytes::copy_from_slice(json))) {
        events.push(event);
    }
    for event in &events {
        let matched = condition.matches(event);
        assert_eq!(
            negated.matches(event),
            !matched,
            "`not ({text})` does not negate `{text}` on {event:?}"
        );
        // The same event with no bytes behind it: every path goes through the parsed value.
        let Some(object) = event.to_value().as_object().cloned() else {
            continue;
        };
        let parsed = Event::from_map(object);
        assert_eq!(
            condition.matches(&parsed),
            matched,
            "`{text}` reads the event's bytes differently from its parsed value: {event:?}"
        );
    }
});
