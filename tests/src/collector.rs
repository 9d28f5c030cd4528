//! An HTTPS collector for outage tests: a [`TestServer`] that answers `200` while up and
//! `503` while down, and tells which auditIDs it accepted.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::tls::{Pki, PkiFiles, Reply, ServerOptions, TestServer};
use crate::Workspace;

/// An HTTPS collector that can be taken down (it then answers 503) and brought back.
pub struct Collector {
    server: TestServer,
    up: Arc<AtomicBool>,
    files: PkiFiles,
}

impl Collector {
    /// Starts a collector whose CA and certificates are written into `workspace`.
    pub fn start(workspace: &Workspace, up: bool) -> Collector {
        let pki = Pki::new("collector");
        let files = pki.write_to(workspace.path());
        let up = Arc::new(AtomicBool::new(up));
        let flag = Arc::clone(&up);
        let server = TestServer::start(
            &pki,
            ServerOptions::responder(move |_| {
                if flag.load(Ordering::SeqCst) {
                    Reply::ok()
                } else {
                    Reply::status(503)
                }
            }),
        );
        Collector { server, up, files }
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    /// The auditIDs of every event in a request the collector accepted, with repeats.
    pub fn delivered(&self) -> Vec<String> {
        self.server
            .requests()
            .iter()
            .filter(|request| request.reply.code() == Some(200))
            .flat_map(|request| {
                request
                    .body_str()
                    .lines()
                    .filter(|line| !line.is_empty())
                    .map(|line| {
                        let event: serde_json::Value = serde_json::from_str(line).expect("NDJSON");
                        event["auditID"].as_str().expect("an auditID").to_owned()
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Waits until `done(delivered)` holds, failing the test after `timeout`; returns what
    /// was delivered then.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let delivered = self.delivered();
            if done(&delivered) {
                return delivered;
            }
            assert!(
                Instant::now() < deadline,
                "{what} within {timeout:?}: {} events delivered",
                delivered.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The https sink's options, pointed at this collector (ndjson, batches of 200, quick
    /// retries).
    pub fn sink_options(&self) -> String {
        format!(
            r#"    type: https
    uri: {uri}
    encoding: ndjson
    batch: {{ max_events: 200, timeout_ms: 50 }}
    request: {{ retry_initial_backoff_ms: 50, retry_max_backoff_ms: 250 }}
    tls: {{ ca_file: {ca} }}
"#,
            uri = self.server.url("/ingest"),
            ca = self.files.ca.display()
        )
    }
}

/// How many of `delivered` repeat an earlier one.
pub fn duplicates(delivered: &[String]) -> usize {
    delivered.len() - delivered.iter().collect::<BTreeSet<_>>().len()
}
