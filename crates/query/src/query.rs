//! `auditflow query`: filter events, then count them by group or list them.
//!
//! Grouping keys are taken from the raw field bytes where they can be (a plain string or
//! number is used as its JSON text, joined with the other keys into one byte string), so
//! counting an event that is already in the map allocates nothing. Listings build their
//! cells only for the events that passed the filter.

use std::collections::HashMap;

use auditflow_core::condition::{Condition, Path};
use auditflow_core::event::RawLookup;
use auditflow_core::Event;
use auditflow_rbac_denial::{Classification, RbacDenial, RbacDenialConfig};
use serde_json::Value;

use crate::input::{scan, Input, InputError, ReadOptions, ScanStats};
use crate::output::Sink;
use crate::time::{TimeField, TimeWindow};

/// Which events a query looks at.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `--where`.
    pub condition: Option<Condition>,
    /// `--since` / `--until` on `--time-field`.
    pub window: TimeWindow,
    /// `--denials`: only events `rbac_denial` would tag (RBAC, authentication, other 403).
    pub denials_only: bool,
}

/// What a query answers.
#[derive(Debug, Clone)]
pub enum Request {
    /// `--group-by`: events counted per distinct combination of the paths' values, most
    /// frequent first, the first `top` only when set.
    Group {
        paths: Vec<Path>,
        top: Option<usize>,
    },
    /// `--select`, or the default columns when `columns` is `None`.
    List { columns: Option<Vec<Path>> },
    /// The matching events themselves, as they were read (`--format ndjson` without
    /// `--select`).
    Events,
}

/// A whole query.
#[derive(Debug, Clone)]
pub struct Query {
    pub filter: Filter,
    pub request: Request,
}

/// The columns of the default listing, as JSON and CSV name them.
pub const DEFAULT_COLUMNS: [&str; 8] = [
    "time", "user", "verb", "resource", "object", "code", "sourceIP", "denial",
];

/// One counted group: its key values (`null` where the path led nowhere) and its count.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub key: Vec<Value>,
    pub count: u64,
}

/// What a run saw, besides what went to the sink.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub scan: ScanStats,
    /// Events that passed the filter.
    pub matched: u64,
}

struct Shared<'a> {
    query: &'a Query,
    classifier: RbacDenial,
}

impl Shared<'_> {
    fn admits(&self, event: &Event) -> bool {
        let filter = &self.query.filter;
        filter.window.admits(event)
            && filter
                .condition
                .as_ref()
                .is_none_or(|condition| condition.matches(event))
            && (!filter.denials_only || self.classifier.classify_event(event).is_some())
    }
}

/// Runs `query` over `inputs`, writing its answer to `sink` (listings as they come, in
/// input order; groups at the end). `progress` is called now and then with the stats so
/// far.
pub fn run(
    query: &Query,
    inputs: &[Input],
    options: &ReadOptions,
    sink: &mut dyn Sink,
    progress: &mut dyn FnMut(&ScanStats),
) -> Result<Summary, InputError> {
    let shared = Shared {
        query,
        classifier: RbacDenial::unobserved(&RbacDenialConfig::default()),
    };
    let mut matched = 0u64;
    let scan_stats = match &query.request {
        Request::Group { paths, top } => {
            let mut groups: HashMap<Vec<u8>, u64> = HashMap::new();
            let stats = scan(
                inputs,
                options,
                || (HashMap::<Vec<u8>, u64>::new(), Vec::new(), 0u64),
                |(partial, key, n), event| {
                    if !shared.admits(event) {
                        return;
                    }
                    *n += 1;
                    key.clear();
                    group_key(paths, event, key);
                    match partial.get_mut(key.as_slice()) {
                        Some(count) => *count += 1,
                        None => {
                            partial.insert(key.clone(), 1);
                        }
                    }
                },
                |(partial, _, n)| {
                    matched += n;
                    if groups.is_empty() {
                        groups = partial;
                        return;
                    }
                    for (key, count) in partial {
                        *groups.entry(key).or_insert(0) += count;
                    }
                },
                progress,
            )?;
            let headers: Vec<String> = paths
                .iter()
                .map(ToString::to_string)
                .chain(std::iter::once("count".to_owned()))
                .collect();
            sink.header(&headers);
            for group in sorted_groups(groups, paths.len(), *top) {
                let mut cells = group.key;
                cells.push(Value::from(group.count));
                sink.row(&cells);
            }
            stats
        }
        Request::List { columns } => {
            let headers: Vec<String> = match columns {
                Some(paths) => paths.iter().map(ToString::to_string).collect(),
                None => DEFAULT_COLUMNS.iter().map(|c| (*c).to_owned()).collect(),
            };
            sink.header(&headers);
            let time_field = query.filter.window.field;
            scan(
                inputs,
                options,
                Vec::<Vec<Value>>::new,
                |rows, event| {
                    if !shared.admits(event) {
                        return;
                    }
                    rows.push(match columns {
                        Some(paths) => paths
                            .iter()
                            .map(|path| path.first(event).cloned().unwrap_or(Value::Null))
                            .collect(),
                        None => default_row(event, time_field, &shared.classifier),
                    });
                },
                |rows| {
                    matched += rows.len() as u64;
                    for row in rows {
                        sink.row(&row);
                    }
                },
                progress,
            )?
        }
        Request::Events => scan(
            inputs,
            options,
            Vec::<u8>::new,
            |out, event| {
                if shared.admits(event) {
                    event.write_json(out);
                    out.push(b'\n');
                }
            },
            |out| {
                matched += memchr::memchr_iter(b'\n', &out).count() as u64;
                sink.events(&out);
            },
            progress,
        )?,
    };
    sink.finish();
    Ok(Summary {
        scan: scan_stats,
        matched,
    })
}

/// Appends the key of `event` under `paths`: each value's JSON text, `\0` between them
/// (a byte JSON text never holds raw), nothing for a path that leads nowhere.
fn group_key(paths: &[Path], event: &Event, key: &mut Vec<u8>) {
    for (i, path) in paths.iter().enumerate() {
        if i > 0 {
            key.push(0);
        }
        let segments = path.segments();
        let raw = if segments.len() == 1 {
            match event.raw_field(&segments[0]) {
                Some(raw) => RawLookup::Found(raw),
                None => RawLookup::Missing,
            }
        } else {
            event.raw_path(segments)
        };
        match raw {
            // A plain value whose bytes are already its canonical JSON text.
            RawLookup::Found(raw)
                if !matches!(raw.first(), Some(b'[' | b'{'))
                    && memchr::memchr(b'\\', raw).is_none() =>
            {
                key.extend_from_slice(raw)
            }
            RawLookup::Missing => {}
            _ => {
                if let Some(value) = path.first(event) {
                    serde_json::to_writer(&mut *key, value).expect("a Value always serialises");
                }
            }
        }
    }
}

/// The groups, most frequent first (ties by key, for a stable answer), keys parsed back.
fn sorted_groups(groups: HashMap<Vec<u8>, u64>, width: usize, top: Option<usize>) -> Vec<Group> {
    let mut groups: Vec<(Vec<u8>, u64)> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if let Some(top) = top {
        groups.truncate(top);
    }
    groups
        .into_iter()
        .map(|(key, count)| {
            let mut values: Vec<Value> = key
                .split(|b| *b == 0)
                .map(|part| {
                    if part.is_empty() {
                        Value::Null
                    } else {
                        serde_json::from_slice(part).unwrap_or(Value::Null)
                    }
                })
                .collect();
            values.resize(width, Value::Null);
            Group { key: values, count }
        })
        .collect()
}

/// The default listing's cells: time, user (and whom they impersonated), verb, resource
/// or URI, namespace/name, code, first source IP, and the denial as `rbac_denial` tags it.
fn default_row(event: &Event, time_field: TimeField, classifier: &RbacDenial) -> Vec<Value> {
    let text = |path: [&str; 2]| event.get_path(path).and_then(Value::as_str);
    let string = |s: Option<String>| s.map_or(Value::Null, Value::String);
    let time = event.get_str(time_field.key()).map(str::to_owned);
    let user =
        text(["user", "username"]).map(|user| match text(["impersonatedUser", "username"]) {
            Some(as_user) => format!("{user} (as {as_user})"),
            None => user.to_owned(),
        });
    let verb = event.get_str("verb").map(str::to_owned);
    let object_ref = event.get("objectRef").and_then(Value::as_object);
    let field = |key: &str| {
        object_ref
            .and_then(|o| o.get(key))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let resource = match field("resource") {
        Some(resource) => {
            let mut text = resource.to_owned();
            if let Some(group) = field("apiGroup") {
                text.push('.');
                text.push_str(group);
            }
            if let Some(subresource) = field("subresource") {
                text.push('/');
                text.push_str(subresource);
            }
            Some(text)
        }
        None => event.get_str("requestURI").map(str::to_owned),
    };
    let object = match (field("namespace"), field("name")) {
        (Some(namespace), Some(name)) => Some(format!("{namespace}/{name}")),
        (Some(namespace), None) => Some(format!("{namespace}/")),
        (None, Some(name)) => Some(name.to_owned()),
        (None, None) => None,
    };
    let code = event
        .get_path(["responseStatus", "code"])
        .cloned()
        .unwrap_or(Value::Null);
    let source = event
        .get("sourceIPs")
        .and_then(|ips| ips.get(0))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let denial = classifier.classify_event(event).map(|c| denial_text(&c));
    vec![
        string(time),
        string(user),
        string(verb),
        string(resource),
        string(object),
        code,
        string(source),
        string(denial),
    ]
}

/// `rbac`, `rbac: <reason>`, `authentication` or `forbidden`.
pub fn denial_text(classification: &Classification) -> String {
    match &classification.reason {
        Some(reason) => format!("{}: {reason}", classification.class.as_str()),
        None => classification.class.as_str().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn event(json: &str) -> Event {
        Event::from_bytes(Bytes::from(json.to_owned())).unwrap()
    }

    fn key(paths: &[&str], json: &str) -> Vec<u8> {
        let paths: Vec<Path> = paths.iter().map(|p| Path::parse(p).unwrap()).collect();
        let mut out = Vec::new();
        group_key(&paths, &event(json), &mut out);
        out
    }

    #[test]
    fn group_keys_are_the_values_json_text_whichever_route_reads_them() {
        let json = r#"{"verb":"list","user":{"username":"bob","groups":["dev","system:authenticated"]},"requestURI":"/api?a=1\u0026b=2","responseStatus":{"code":403}}"#;
        assert_eq!(key(&["verb"], json), b"\"list\"");
        assert_eq!(
            key(&["user.username", "responseStatus.code"], json),
            b"\"bob\"\x00403"
        );
        // Through an array: its first element, as `Path::first` reads it.
        assert_eq!(key(&["user.groups"], json), b"\"dev\"");
        // An escape is read through the parsed value, so the same text groups together.
        assert_eq!(key(&["requestURI"], json), b"\"/api?a=1&b=2\"");
        assert_eq!(key(&["objectRef.namespace", "verb"], json), b"\x00\"list\"");
    }

    #[test]
    fn groups_sort_by_count_then_key_and_top_keeps_the_first() {
        let mut groups = HashMap::new();
        groups.insert(b"\"b\"".to_vec(), 2);
        groups.insert(b"\"a\"".to_vec(), 2);
        groups.insert(b"\"c\"".to_vec(), 5);
        groups.insert(Vec::new(), 1);
        let sorted = sorted_groups(groups.clone(), 1, None);
        let keys: Vec<Value> = sorted.iter().map(|g| g.key[0].clone()).collect();
        assert_eq!(
            keys,
            vec![
                Value::from("c"),
                Value::from("a"),
                Value::from("b"),
                Value::Null
            ]
        );
        assert_eq!(sorted_groups(groups, 1, Some(2)).len(), 2);
    }
}
