//! The request mix of a busy cluster, written as `audit.k8s.io/v1` events.
//!
//! Each call makes one API request: who sent it, what it touched, how it ended. The
//! request is kept in a reusable [`Req`] (a few byte buffers) and written out per stage
//! in kube-apiserver's key order. A request with two stages (a watch: `ResponseStarted`
//! now, `ResponseComplete` when it ends; some requests also log `RequestReceived`) writes
//! the later stage at once into its own buffer and queues it, so every stage of one
//! request shares its `auditID` and arrives in the order a real log has them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cast::{self, Actor, Cast, Resource};
use crate::json::{fill, push_timestamp_micros, push_u64, push_uuid, Arg};
use crate::objects::{self, Cx, Library};
use crate::Profile;

/// Writes audit events for one simulated cluster; the same seed gives the same bytes.
#[derive(Debug)]
pub struct AuditGenerator {
    cast: Cast,
    library: Option<Library>,
    state: State,
    detached: bool,
    /// The reused write buffer of detached events.
    scratch: Vec<u8>,
}

#[derive(Debug)]
struct State {
    rng: StdRng,
    profile: Profile,
    /// The virtual clock, in microseconds since the epoch. Every request moves it on by
    /// 20–380 µs (about 5,000 requests a second), whatever the real rate.
    clock_us: i64,
    /// Requests started so far; deferred stages are due at a request count.
    seq: u64,
    req: Req,
    pending: BinaryHeap<Reverse<Pending>>,
}

/// A later stage, written already, waiting for its turn.
#[derive(Debug)]
struct Pending {
    due: u64,
    /// Breaks ties so that equal-`due` stages leave in the order they were made.
    order: u64,
    bytes: Bytes,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Pending) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Pending) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Pending) -> std::cmp::Ordering {
        (self.due, self.order).cmp(&(other.due, other.order))
    }
}

#[derive(Debug, Clone, Copy, Default)]
enum Who {
    #[default]
    Apiserver,
    ControllerManager,
    Scheduler,
    Controller(usize),
    Node(usize),
    Workload(usize),
    Human(usize),
    Admin,
    Unprivileged(usize),
    /// An unauthenticated caller (`user: {}`).
    Stranger(usize),
}

impl Who {
    fn actor(self, cast: &Cast) -> Option<&Actor> {
        Some(match self {
            Who::Apiserver => &cast.apiserver,
            Who::ControllerManager => &cast.controller_manager,
            Who::Scheduler => &cast.scheduler,
            Who::Controller(i) => &cast.controllers[i],
            Who::Node(i) => &cast.nodes[i],
            Who::Workload(i) => &cast.workloads[i],
            Who::Human(i) => &cast.humans[i],
            Who::Admin => &cast.admin,
            Who::Unprivileged(i) => &cast.unprivileged[i],
            Who::Stranger(_) => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    RequestReceived,
    ResponseStarted,
    ResponseComplete,
}

impl Stage {
    fn as_bytes(self) -> &'static [u8] {
        match self {
            Stage::RequestReceived => b"RequestReceived",
            Stage::ResponseStarted => b"ResponseStarted",
            Stage::ResponseComplete => b"ResponseComplete",
        }
    }
}

/// How a request's stages are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// One `ResponseComplete` event.
    Complete,
    /// One `ResponseStarted` event: how kube-apiserver logs an authentication failure.
    Started,
    /// `ResponseStarted` now, `ResponseComplete` after this many more requests.
    Long(u64),
}

/// The request being written; its buffers are reused from one request to the next.
#[derive(Debug, Default)]
struct Req {
    level: &'static str,
    id: u128,
    uri: Vec<u8>,
    verb: &'static str,
    who: Who,
    object_ref: Vec<u8>,
    status: Vec<u8>,
    request_object: Vec<u8>,
    response_object: Vec<u8>,
    annotations: Vec<u8>,
    received_us: i64,
    done_us: i64,
}

const METADATA: &str = "Metadata";
const REQUEST: &str = "Request";
const REQUEST_RESPONSE: &str = "RequestResponse";

impl AuditGenerator {
    /// A cluster made from `seed`, whose clock starts at `start_us` (microseconds since
    /// the epoch).
    pub fn new(profile: Profile, seed: u64, start_us: i64) -> AuditGenerator {
        let mut rng = StdRng::seed_from_u64(seed);
        let cast = Cast::new(&mut rng);
        let library = (profile == Profile::RequestResponse).then(|| Library::new(&mut rng));
        AuditGenerator {
            cast,
            library,
            detached: false,
            scratch: Vec::new(),
            state: State {
                rng,
                profile,
                clock_us: start_us,
                seq: 0,
                req: Req::default(),
                pending: BinaryHeap::new(),
            },
        }
    }

    /// The next events, one JSON object each: at most `max_events`, stopping once about
    /// `max_bytes` are written. `left` is how many events may still be made in all
    /// (`None`: no end); near it, queued later stages are released first so that no
    /// request is left without its last stage.
    pub fn next_events(
        &mut self,
        max_events: usize,
        max_bytes: usize,
        mut left: Option<u64>,
    ) -> Vec<Bytes> {
        enum Slot {
            Span(usize, usize),
            Ready(Bytes),
        }
        let mut buffer = match self.detached {
            true => std::mem::take(&mut self.scratch),
            false => Vec::with_capacity(max_bytes.min(256 * 1024) + 64 * 1024),
        };
        buffer.clear();
        let mut slots = Vec::with_capacity(max_events.min(4096));
        // Bytes of released later stages, which live in their own buffers.
        let mut released = 0;
        while slots.len() < max_events && buffer.len() + released < max_bytes && left != Some(0) {
            let queued = self.state.pending.len() as u64;
            let drain = left.is_some_and(|left| left <= queued);
            let due = self
                .state
                .pending
                .peek()
                .is_some_and(|Reverse(pending)| pending.due <= self.state.seq);
            if drain || due {
                let Reverse(pending) = self.state.pending.pop().expect("a queued stage");
                released += pending.bytes.len();
                slots.push(Slot::Ready(pending.bytes));
            } else {
                let may_defer = left.is_none_or(|left| left >= queued + 2);
                let start = buffer.len();
                self.state
                    .request(&self.cast, self.library.as_ref(), &mut buffer, may_defer);
                slots.push(Slot::Span(start, buffer.len()));
            }
            left = left.map(|left| left - 1);
        }
        if self.detached {
            let events = slots
                .into_iter()
                .map(|slot| match slot {
                    Slot::Span(start, end) => Bytes::copy_from_slice(&buffer[start..end]),
                    Slot::Ready(bytes) => bytes,
                })
                .collect();
            self.scratch = buffer;
            events
        } else {
            let buffer = Bytes::from(buffer);
            slots
                .into_iter()
                .map(|slot| match slot {
                    Slot::Span(start, end) => buffer.slice(start..end),
                    Slot::Ready(bytes) => bytes,
                })
                .collect()
        }
    }

    /// Gives every event its own allocation instead of a slice of its batch's buffer.
    ///
    /// Slices are cheaper (one allocation per batch) but any event kept downstream keeps
    /// its whole batch alive: at a paced rate, where batches are small and a sampled
    /// sidecar keeps one event in ten for a second or so, that would make the memory
    /// figure the generator's rather than the pipeline's.
    pub fn detach_events(mut self, detached: bool) -> AuditGenerator {
        self.detached = detached;
        self
    }
}

/// Scenario weights per 1,000 requests (watches log two events, so denials end up near
/// 2% of events).
const MIX: &[(u16, Scenario)] = &[
    (110, Scenario::NodeLease),
    (40, Scenario::LeaderLease),
    (70, Scenario::ControllerGet),
    (110, Scenario::NodeGet),
    (120, Scenario::List),
    (140, Scenario::Watch),
    (50, Scenario::StatusPatch),
    (45, Scenario::ControllerUpdate),
    (50, Scenario::Create),
    (25, Scenario::HumanWrite),
    (15, Scenario::Delete),
    (40, Scenario::NonResource),
    (24, Scenario::RbacDenial),
    (8, Scenario::Unauthorized),
    (20, Scenario::TokenReview),
    (30, Scenario::TokenRequest),
    (15, Scenario::SecretWrite),
    (3, Scenario::AdmissionDenial),
    (4, Scenario::Exec),
];

#[derive(Debug, Clone, Copy)]
enum Scenario {
    NodeLease,
    LeaderLease,
    ControllerGet,
    NodeGet,
    List,
    Watch,
    StatusPatch,
    ControllerUpdate,
    Create,
    HumanWrite,
    Delete,
    NonResource,
    RbacDenial,
    Unauthorized,
    TokenReview,
    TokenRequest,
    SecretWrite,
    AdmissionDenial,
    Exec,
}

const MIX_TOTAL: u16 = {
    let mut total = 0;
    let mut i = 0;
    while i < MIX.len() {
        total += MIX[i].0;
        i += 1;
    }
    total
};

/// Share of single-stage requests that also log `RequestReceived`.
const REQUEST_RECEIVED_PERCENT: u32 = 3;

impl State {
    fn request(
        &mut self,
        cast: &Cast,
        library: Option<&Library>,
        out: &mut Vec<u8>,
        may_defer: bool,
    ) {
        self.seq += 1;
        self.clock_us += self.rng.random_range(20..=380);
        let mut pick = self.rng.random_range(0..MIX_TOTAL);
        let mut scenario = Scenario::NodeGet;
        for &(weight, candidate) in MIX {
            if pick < weight {
                scenario = candidate;
                break;
            }
            pick -= weight;
        }
        if !may_defer && matches!(scenario, Scenario::Watch | Scenario::Exec) {
            scenario = Scenario::NodeGet;
        }
        let req = &mut self.req;
        req.id = self.rng.random();
        req.received_us = self.clock_us;
        for buffer in [
            &mut req.uri,
            &mut req.object_ref,
            &mut req.status,
            &mut req.request_object,
            &mut req.response_object,
            &mut req.annotations,
        ] {
            buffer.clear();
        }
        let shape = self.scenario(scenario, cast, library);
        let req = &self.req;
        match shape {
            Shape::Complete => {
                if may_defer && self.rng.random_ratio(REQUEST_RECEIVED_PERCENT, 100) {
                    write_event(out, cast, req, Stage::RequestReceived, req.received_us);
                    let delay = self.rng.random_range(1..=3);
                    self.defer(cast, Stage::ResponseComplete, delay);
                } else {
                    write_event(out, cast, req, Stage::ResponseComplete, req.done_us);
                }
            }
            Shape::Started => write_event(out, cast, req, Stage::ResponseStarted, req.done_us),
            Shape::Long(delay) => {
                let started = req.received_us + self.rng.random_range(100..400);
                write_event(out, cast, req, Stage::ResponseStarted, started);
                self.req.done_us = self.clock_us + delay as i64 * 200;
                self.defer(cast, Stage::ResponseComplete, delay);
            }
        }
    }

    /// Writes `stage` of the current request now and queues it for `delay` requests on.
    fn defer(&mut self, cast: &Cast, stage: Stage, delay: u64) {
        let req = &self.req;
        let mut bytes = Vec::with_capacity(
            1024 + req.request_object.len() + req.response_object.len() + req.uri.len(),
        );
        write_event(&mut bytes, cast, req, stage, req.done_us);
        self.pending.push(Reverse(Pending {
            due: self.seq + delay,
            order: self.seq,
            bytes: Bytes::from(bytes),
        }));
    }

    /// Fills `self.req` for one request of `scenario`.
    fn scenario(&mut self, scenario: Scenario, cast: &Cast, library: Option<&Library>) -> Shape {
        let rng = &mut self.rng;
        match scenario {
            Scenario::NodeLease => {
                let node = rng.random_range(0..cast.nodes.len());
                let name = cast.node_names[node].as_str();
                let update = rng.random_ratio(85, 100);
                let verb = if update { "update" } else { "get" };
                self.begin(METADATA, verb, Who::Node(node));
                self.target(
                    &cast::LEASES,
                    Some("kube-node-lease"),
                    Some(name),
                    None,
                    update,
                );
                self.query(b"?timeout=10s");
                self.bodies(
                    cast,
                    library,
                    verb,
                    &cast::LEASES,
                    Some("kube-node-lease"),
                    name,
                );
                self.ok(200, cast, 800..6_000)
            }
            Scenario::LeaderLease => {
                let (who, name) = if rng.random_bool(0.5) {
                    (Who::ControllerManager, "kube-controller-manager")
                } else {
                    (Who::Scheduler, "kube-scheduler")
                };
                let update = rng.random_bool(0.5);
                let verb = if update { "update" } else { "get" };
                self.begin(METADATA, verb, who);
                self.target(&cast::LEASES, Some("kube-system"), Some(name), None, update);
                self.query(b"?timeout=5s");
                self.bodies(
                    cast,
                    library,
                    verb,
                    &cast::LEASES,
                    Some("kube-system"),
                    name,
                );
                self.ok(200, cast, 800..6_000)
            }
            Scenario::ControllerGet => {
                let who = Who::Controller(rng.random_range(0..cast.controllers.len()));
                let resource = self.namespaced_resource();
                let pod = self.pod(cast);
                let (ns, name) = (pod.namespace, pod.app);
                self.begin(METADATA, "get", who);
                self.target(&resource, Some(ns), Some(name), None, false);
                if self.rng.random_ratio(8, 100) {
                    self.not_found(&resource, name, cast)
                } else {
                    self.bodies(cast, library, "get", &resource, Some(ns), name);
                    self.ok(200, cast, 300..3_000)
                }
            }
            Scenario::NodeGet => {
                let pod = self.pod(cast);
                let node = pod.node;
                let choice = self.rng.random_range(0..5);
                let (resource, ns, name) = match choice {
                    0 => (cast::PODS, Some(pod.namespace), pod.name.as_str()),
                    1 => (cast::SECRETS, Some(pod.namespace), pod.app),
                    2 => (cast::CONFIGMAPS, Some(pod.namespace), "kube-root-ca.crt"),
                    3 => (cast::SERVICEACCOUNTS, Some(pod.namespace), "default"),
                    _ => (cast::NODES, None, cast.node_names[node].as_str()),
                };
                self.begin(METADATA, "get", Who::Node(node));
                self.target(&resource, ns, Some(name), None, false);
                self.bodies(cast, library, "get", &resource, ns, name);
                self.ok(200, cast, 300..3_000)
            }
            Scenario::List => {
                let who = match rng.random_range(0..10) {
                    0..=4 => Who::Controller(rng.random_range(0..cast.controllers.len())),
                    5..=6 => Who::Workload(rng.random_range(0..cast.workloads.len())),
                    7 => Who::Apiserver,
                    8 => Who::Human(rng.random_range(0..cast.humans.len())),
                    _ => Who::Admin,
                };
                let resource = cast::WATCHED[rng.random_range(0..cast::WATCHED.len())];
                let ns = (resource.namespaced && rng.random_bool(0.3))
                    .then(|| cast::NAMESPACES[rng.random_range(0..cast::NAMESPACES.len())]);
                self.begin(METADATA, "list", who);
                self.target(&resource, ns, None, None, false);
                if matches!(who, Who::Human(_) | Who::Admin) {
                    self.query(b"?limit=500");
                } else {
                    self.query(b"?limit=500\\u0026resourceVersion=0");
                }
                if self.wants_response_body() {
                    let now_secs = self.clock_us / 1_000_000;
                    let cx = &mut Cx {
                        rng: &mut self.rng,
                        cast,
                        library,
                        now_secs,
                    };
                    objects::list(&mut self.req.response_object, cx, &resource, ns);
                }
                self.ok(200, cast, 1_000..40_000)
            }
            Scenario::Watch => {
                let who = match rng.random_range(0..10) {
                    0..=3 => Who::Controller(rng.random_range(0..cast.controllers.len())),
                    4 => Who::ControllerManager,
                    5 => Who::Scheduler,
                    6..=7 => Who::Node(rng.random_range(0..cast.nodes.len())),
                    _ => Who::Workload(rng.random_range(0..cast.workloads.len())),
                };
                let resource = cast::WATCHED[rng.random_range(0..cast::WATCHED.len())];
                let timeout = rng.random_range(300..600u64);
                let rv = rng.random_range(40_000..4_000_000u64);
                self.begin(METADATA, "watch", who);
                self.target(&resource, None, None, None, false);
                let uri = &mut self.req.uri;
                uri.extend_from_slice(b"?allowWatchBookmarks=true\\u0026resourceVersion=");
                push_u64(uri, rv);
                uri.extend_from_slice(b"\\u0026timeout=");
                push_u64(uri, timeout / 60);
                uri.push(b'm');
                push_u64(uri, timeout % 60);
                uri.extend_from_slice(b"s\\u0026timeoutSeconds=");
                push_u64(uri, timeout);
                uri.extend_from_slice(b"\\u0026watch=true");
                self.ok(200, cast, 100..400);
                Shape::Long(self.rng.random_range(200..3_000))
            }
            Scenario::StatusPatch => {
                let pod_index = rng.random_range(0..cast.pods.len());
                let pod = &cast.pods[pod_index];
                let node = pod.node;
                let on_node = rng.random_bool(0.6);
                self.begin(REQUEST, "patch", Who::Node(node));
                let now_secs = self.clock_us / 1_000_000;
                let cx = &mut Cx {
                    rng: &mut self.rng,
                    cast,
                    library,
                    now_secs,
                };
                let req = &mut self.req;
                if on_node {
                    target(
                        req,
                        &cast::NODES,
                        None,
                        Some(&cast.node_names[node]),
                        Some("status"),
                        None,
                    );
                    req.uri.extend_from_slice(b"?timeout=10s");
                    objects::status_patch(&mut req.request_object, cx, None);
                    if self.profile == Profile::RequestResponse {
                        objects::node(&mut req.response_object, cx, node, true);
                    }
                } else {
                    target(
                        req,
                        &cast::PODS,
                        Some(pod.namespace),
                        Some(&pod.name),
                        Some("status"),
                        None,
                    );
                    objects::status_patch(&mut req.request_object, cx, Some(pod.uid));
                    if self.profile == Profile::RequestResponse {
                        objects::pod_object(&mut req.response_object, cx, pod_index, true);
                    }
                }
                self.ok(200, cast, 2_000..9_000)
            }
            Scenario::ControllerUpdate => {
                let resource = [
                    cast::ENDPOINTSLICES,
                    cast::REPLICASETS,
                    cast::DEPLOYMENTS,
                    cast::CONFIGMAPS,
                ][rng.random_range(0..4)];
                let controller = rng.random_range(0..cast.controllers.len());
                let pod = self.pod(cast);
                let (ns, name) = (pod.namespace, pod.replicaset.as_str());
                self.begin(METADATA, "update", Who::Controller(controller));
                let status = (resource.name != "configmaps" && resource.name != "endpointslices")
                    .then_some("status");
                self.target(&resource, Some(ns), Some(name), status, true);
                if self.rng.random_ratio(5, 100) {
                    self.conflict(&resource, name, cast)
                } else {
                    self.bodies(cast, library, "update", &resource, Some(ns), name);
                    self.ok(200, cast, 2_000..9_000)
                }
            }
            Scenario::Create => self.create(cast, library),
            Scenario::HumanWrite => {
                let who = if rng.random_bool(0.3) {
                    Who::Admin
                } else {
                    Who::Human(rng.random_range(0..cast.humans.len()))
                };
                let resource = [cast::DEPLOYMENTS, cast::CONFIGMAPS, cast::SERVICEACCOUNTS]
                    [rng.random_range(0..3)];
                let pod = self.pod(cast);
                let (ns, name) = (pod.namespace, pod.app);
                let verb = ["patch", "update", "create"][self.rng.random_range(0..3)];
                let level = if verb == "patch" { REQUEST } else { METADATA };
                self.begin(level, verb, who);
                let stored = verb != "create";
                self.target(&resource, Some(ns), stored.then_some(name), None, false);
                self.query(if verb == "patch" {
                    b"?fieldManager=kubectl-patch"
                } else {
                    b"?fieldManager=kubectl-client-side-apply\\u0026fieldValidation=Strict"
                });
                if verb == "patch" {
                    let now_secs = self.clock_us / 1_000_000;
                    let cx = &mut Cx {
                        rng: &mut self.rng,
                        cast,
                        library,
                        now_secs,
                    };
                    objects::user_patch(&mut self.req.request_object, cx);
                    if self.profile == Profile::RequestResponse {
                        objects::object(
                            &mut self.req.response_object,
                            cx,
                            &resource,
                            Some(ns),
                            name,
                            true,
                        );
                    }
                } else {
                    self.bodies(cast, library, verb, &resource, Some(ns), name);
                }
                self.ok(
                    if verb == "create" { 201 } else { 200 },
                    cast,
                    3_000..15_000,
                )
            }
            Scenario::Delete => {
                let pod_index = rng.random_range(0..cast.pods.len());
                let by_controller = rng.random_bool(0.7);
                let pod = &cast.pods[pod_index];
                let (resource, who, name) = if by_controller {
                    let who = Who::Controller(rng.random_range(0..cast.controllers.len()));
                    (cast::PODS, who, pod.name.as_str())
                } else {
                    let who = Who::Human(rng.random_range(0..cast.humans.len()));
                    (cast::CONFIGMAPS, who, pod.app)
                };
                self.begin(METADATA, "delete", who);
                self.target(&resource, Some(pod.namespace), Some(name), None, false);
                if self.profile == Profile::RequestResponse {
                    let now_secs = self.clock_us / 1_000_000;
                    let cx = &mut Cx {
                        rng: &mut self.rng,
                        cast,
                        library,
                        now_secs,
                    };
                    self.req
                        .request_object
                        .extend_from_slice(objects::DELETE_OPTIONS);
                    if by_controller {
                        objects::pod_object(&mut self.req.response_object, cx, pod_index, true);
                    } else {
                        objects::delete_status(&mut self.req.response_object, cx, &resource, name);
                    }
                }
                self.ok(200, cast, 2_000..12_000)
            }
            Scenario::NonResource => {
                let (who, path): (Who, &[u8]) = match rng.random_range(0..10) {
                    0..=3 => (Who::Apiserver, b"/readyz"),
                    4..=5 => (Who::Apiserver, b"/livez"),
                    6 => (Who::Apiserver, b"/healthz"),
                    7..=8 => (Who::Workload(0), b"/metrics"),
                    _ => (
                        Who::Human(rng.random_range(0..cast.humans.len())),
                        b"/version?timeout=32s",
                    ),
                };
                let failing = path == b"/readyz" && rng.random_ratio(2, 100);
                self.begin(METADATA, "get", who);
                self.req.uri.extend_from_slice(path);
                self.ok(if failing { 500 } else { 200 }, cast, 200..2_000)
            }
            Scenario::RbacDenial => self.rbac_denial(cast),
            Scenario::Unauthorized => {
                let stranger = rng.random_range(0..cast.strangers.len());
                let (resource, ns) = if rng.random_bool(0.5) {
                    (cast::SECRETS, Some("kube-system"))
                } else {
                    (cast::PODS, None)
                };
                self.begin(METADATA, "list", Who::Stranger(stranger));
                self.target(&resource, ns, None, None, false);
                self.req.status.extend_from_slice(
                    br#"{"metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#,
                );
                self.req.done_us = self.req.received_us + self.rng.random_range(50..400);
                Shape::Started
            }
            Scenario::TokenReview => {
                let who = if rng.random_bool(0.6) {
                    Who::Node(rng.random_range(0..cast.nodes.len()))
                } else {
                    Who::Workload(rng.random_range(0..cast.workloads.len()))
                };
                let pod_index = rng.random_range(0..cast.pods.len());
                self.begin(REQUEST_RESPONSE, "create", who);
                self.target(&cast::TOKENREVIEWS, None, None, None, false);
                let now_secs = self.clock_us / 1_000_000;
                let cx = &mut Cx {
                    rng: &mut self.rng,
                    cast,
                    library,
                    now_secs,
                };
                let req = &mut self.req;
                objects::token_review(
                    &mut req.request_object,
                    &mut req.response_object,
                    cx,
                    pod_index,
                );
                self.ok(201, cast, 500..3_000)
            }
            Scenario::TokenRequest => {
                let pod_index = rng.random_range(0..cast.pods.len());
                let pod = &cast.pods[pod_index];
                self.begin(REQUEST_RESPONSE, "create", Who::Node(pod.node));
                self.target(
                    &cast::SERVICEACCOUNTS,
                    Some(pod.namespace),
                    Some(pod.app),
                    Some("token"),
                    false,
                );
                let now_secs = self.clock_us / 1_000_000;
                let cx = &mut Cx {
                    rng: &mut self.rng,
                    cast,
                    library,
                    now_secs,
                };
                let req = &mut self.req;
                objects::token_request(
                    &mut req.request_object,
                    &mut req.response_object,
                    cx,
                    pod_index,
                );
                self.ok(201, cast, 1_000..5_000)
            }
            Scenario::SecretWrite => {
                let who = match rng.random_range(0..4) {
                    0 => Who::Admin,
                    1 => Who::Human(0),
                    2 => Who::Workload(3),
                    _ => Who::Controller(13),
                };
                let ns = if rng.random_bool(0.4) {
                    cast::LEAKY_NAMESPACE
                } else {
                    cast::NAMESPACES[rng.random_range(0..cast::NAMESPACES.len())]
                };
                let verb = ["create", "update", "patch"][rng.random_range(0..3)];
                let leaky = ns == cast::LEAKY_NAMESPACE;
                let pod = self.pod(cast);
                let name = format!("{}-credentials", pod.app);
                self.begin(if leaky { REQUEST_RESPONSE } else { METADATA }, verb, who);
                let stored = verb != "create";
                self.target(
                    &cast::SECRETS,
                    Some(ns),
                    stored.then_some(name.as_str()),
                    None,
                    false,
                );
                self.query(b"?fieldManager=kubectl-client-side-apply\\u0026fieldValidation=Strict");
                if leaky || self.profile == Profile::RequestResponse {
                    let now_secs = self.clock_us / 1_000_000;
                    let cx = &mut Cx {
                        rng: &mut self.rng,
                        cast,
                        library,
                        now_secs,
                    };
                    objects::secret(&mut self.req.request_object, cx, ns, &name, false, true);
                    objects::secret(&mut self.req.response_object, cx, ns, &name, true, true);
                }
                self.ok(if stored { 200 } else { 201 }, cast, 3_000..9_000)
            }
            Scenario::AdmissionDenial => {
                let human = rng.random_range(0..cast.humans.len());
                let ns = ["team-a", "team-b", "payments"][rng.random_range(0..3)];
                let name = "debug-shell";
                self.begin(REQUEST_RESPONSE, "create", Who::Human(human));
                self.target(&cast::PODS, Some(ns), None, None, false);
                self.query(b"?fieldManager=kubectl-run");
                // The object name only shows in the objectRef once decoded.
                self.req.object_ref.clear();
                fill(
                    &mut self.req.object_ref,
                    r#"{"resource":"pods","namespace":"`","name":"`","apiVersion":"v1"}"#,
                    &[Arg::Str(ns), Arg::Str(name)],
                );
                objects::privileged_pod(&mut self.req.request_object, name, ns);
                let message = r#"pods \"debug-shell\" is forbidden: violates PodSecurity \"restricted:latest\": privileged (container \"debug-shell\" must not set securityContext.privileged=true), allowPrivilegeEscalation != false (container \"debug-shell\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"debug-shell\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"debug-shell\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"debug-shell\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"#;
                fill(
                    &mut self.req.status,
                    r#"{"metadata":{},"status":"Failure","message":"`","reason":"Forbidden","details":{"name":"`","kind":"pods"},"code":403}"#,
                    &[Arg::Str(message), Arg::Str(name)],
                );
                self.req
                    .response_object
                    .extend_from_slice(br#"{"kind":"Status","apiVersion":"v1","#);
                self.req
                    .response_object
                    .extend_from_slice(&self.req.status[1..]);
                self.allow(cast);
                let annotations = &mut self.req.annotations;
                annotations.pop();
                annotations.extend_from_slice(
                    br#","pod-security.kubernetes.io/enforce-policy":"restricted:latest"}"#,
                );
                self.req.done_us = self.req.received_us + self.rng.random_range(2_000..6_000);
                Shape::Complete
            }
            Scenario::Exec => {
                let human = rng.random_range(0..cast.humans.len());
                let pod = self.pod(cast);
                let (ns, name, container) = (pod.namespace, pod.name.as_str(), pod.app);
                self.begin(REQUEST, "get", Who::Human(human));
                self.target(&cast::PODS, Some(ns), Some(name), Some("exec"), false);
                fill(
                    &mut self.req.uri,
                    "?command=sh\\u0026container=`\\u0026stdin=true\\u0026stdout=true\\u0026tty=true",
                    &[Arg::Str(container)],
                );
                self.ok(101, cast, 1_000..4_000);
                Shape::Long(self.rng.random_range(5..60))
            }
        }
    }

    fn create(&mut self, cast: &Cast, library: Option<&Library>) -> Shape {
        let pod_index = self.rng.random_range(0..cast.pods.len());
        let pod = &cast.pods[pod_index];
        let now_secs = self.clock_us / 1_000_000;
        match self.rng.random_range(0..4) {
            0 | 1 => {
                self.begin(REQUEST, "create", Who::Node(pod.node));
                self.target(&cast::EVENTS, Some(pod.namespace), None, None, false);
                let cx = &mut Cx {
                    rng: &mut self.rng,
                    cast,
                    library,
                    now_secs,
                };
                objects::event(&mut self.req.request_object, cx, pod_index);
                if self.profile == Profile::RequestResponse {
                    objects::event(&mut self.req.response_object, cx, pod_index);
                }
            }
            2 => {
                self.begin(METADATA, "create", Who::Controller(0));
                self.target(&cast::PODS, Some(pod.namespace), None, None, false);
                if self.profile == Profile::RequestResponse {
                    let cx = &mut Cx {
                        rng: &mut self.rng,
                        cast,
                        library,
                        now_secs,
                    };
                    objects::pod_object(&mut self.req.request_object, cx, pod_index, true);
                    objects::pod_object(&mut self.req.response_object, cx, pod_index, true);
                }
            }
            _ => {
                self.begin(REQUEST, "create", Who::Scheduler);
                self.target(
                    &cast::PODS,
                    Some(pod.namespace),
                    Some(&pod.name),
                    Some("binding"),
                    false,
                );
                fill(
                    &mut self.req.request_object,
                    r#"{"kind":"Binding","apiVersion":"v1","metadata":{"name":"`","namespace":"`","uid":"`","creationTimestamp":null},"target":{"kind":"Node","name":"`"}}"#,
                    &[
                        Arg::Str(&pod.name),
                        Arg::Str(pod.namespace),
                        Arg::Uuid(pod.uid),
                        Arg::Str(&cast.node_names[pod.node]),
                    ],
                );
                if self.profile == Profile::RequestResponse {
                    self.req.response_object.extend_from_slice(
                        br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success","code":201}"#,
                    );
                }
            }
        }
        self.ok(201, cast, 2_000..12_000)
    }

    fn rbac_denial(&mut self, cast: &Cast) -> Shape {
        let actor = self.rng.random_range(0..cast.unprivileged.len());
        let (resource, sub, verb) = [
            (cast::SECRETS, None, "list"),
            (cast::SECRETS, None, "get"),
            (cast::PODS, Some("exec"), "create"),
            (cast::PODS, Some("log"), "get"),
            (cast::NODES, None, "list"),
            (cast::CONFIGMAPS, None, "list"),
            (cast::DEPLOYMENTS, None, "delete"),
            (
                Resource {
                    name: "rolebindings",
                    group: "rbac.authorization.k8s.io",
                    version: "v1",
                    kind: "RoleBinding",
                    namespaced: true,
                },
                None,
                "create",
            ),
        ][self.rng.random_range(0..8)];
        let pod = self.pod(cast);
        let ns = resource.namespaced.then_some(pod.namespace);
        let name = match (verb, sub) {
            ("get" | "delete", _) | (_, Some(_)) => Some(pod.app),
            _ => None,
        };
        let level = if sub == Some("exec") {
            REQUEST
        } else {
            METADATA
        };
        self.begin(level, verb, Who::Unprivileged(actor));
        self.target(&resource, ns, name, sub, false);
        let user = &cast.unprivileged[actor].name;
        let status = &mut self.req.status;
        status.extend_from_slice(br#"{"metadata":{},"status":"Failure","message":""#);
        status.extend_from_slice(resource.name.as_bytes());
        if let Some(name) = name {
            fill(status, r#" \"`\""#, &[Arg::Str(name)]);
        }
        fill(
            status,
            r#" is forbidden: User \"`\" cannot ` resource \"`"#,
            &[Arg::Str(user), Arg::Str(verb), Arg::Str(resource.name)],
        );
        if let Some(sub) = sub {
            status.push(b'/');
            status.extend_from_slice(sub.as_bytes());
        }
        fill(
            status,
            r#"\" in API group \"`\""#,
            &[Arg::Str(resource.group)],
        );
        match ns {
            Some(ns) => fill(status, r#" in the namespace \"`\""#, &[Arg::Str(ns)]),
            None => status.extend_from_slice(b" at the cluster scope"),
        }
        status.extend_from_slice(br#"","reason":"Forbidden","details":{"#);
        if let Some(name) = name {
            fill(status, r#""name":"`","#, &[Arg::Str(name)]);
        }
        fill(
            status,
            r#""kind":"`"},"code":403}"#,
            &[Arg::Str(resource.name)],
        );
        self.req.annotations.extend_from_slice(
            br#"{"authorization.k8s.io/decision":"forbid","authorization.k8s.io/reason":""}"#,
        );
        self.req.done_us = self.req.received_us + self.rng.random_range(200..1_500);
        Shape::Complete
    }

    fn begin(&mut self, level: &'static str, verb: &'static str, who: Who) {
        self.req.level = match self.profile {
            Profile::Metadata => level,
            Profile::RequestResponse => REQUEST_RESPONSE,
        };
        self.req.verb = verb;
        self.req.who = who;
    }

    fn target(
        &mut self,
        resource: &Resource,
        ns: Option<&str>,
        name: Option<&str>,
        sub: Option<&str>,
        stored: bool,
    ) {
        let stored = stored.then(|| (self.rng.random(), self.rng.random_range(40_000..4_000_000)));
        target(&mut self.req, resource, ns, name, sub, stored);
    }

    fn query(&mut self, query: &[u8]) {
        self.req.uri.extend_from_slice(query);
    }

    fn namespaced_resource(&mut self) -> Resource {
        loop {
            let resource = cast::WATCHED[self.rng.random_range(0..cast::WATCHED.len())];
            if resource.namespaced {
                return resource;
            }
        }
    }

    fn pod<'c>(&mut self, cast: &'c Cast) -> &'c cast::Pod {
        &cast.pods[self.rng.random_range(0..cast.pods.len())]
    }

    fn wants_response_body(&self) -> bool {
        self.profile == Profile::RequestResponse
    }

    /// Request and response bodies as the level asks: the object sent (create, update)
    /// and the object returned.
    fn bodies(
        &mut self,
        cast: &Cast,
        library: Option<&Library>,
        verb: &str,
        resource: &Resource,
        ns: Option<&str>,
        name: &str,
    ) {
        if self.profile != Profile::RequestResponse {
            return;
        }
        let now_secs = self.clock_us / 1_000_000;
        let cx = &mut Cx {
            rng: &mut self.rng,
            cast,
            library,
            now_secs,
        };
        if verb != "get" {
            objects::object(&mut self.req.request_object, cx, resource, ns, name, true);
        }
        objects::object(&mut self.req.response_object, cx, resource, ns, name, true);
    }

    /// A success with `code`, allowed by the authorizer, done after `latency_us`.
    fn ok(&mut self, code: u64, cast: &Cast, latency_us: std::ops::Range<i64>) -> Shape {
        let status = &mut self.req.status;
        status.extend_from_slice(br#"{"metadata":{},"code":"#);
        push_u64(status, code);
        status.push(b'}');
        self.allow(cast);
        self.req.done_us = self.req.received_us + self.rng.random_range(latency_us);
        Shape::Complete
    }

    fn not_found(&mut self, resource: &Resource, name: &str, cast: &Cast) -> Shape {
        fill(
            &mut self.req.status,
            r#"{"metadata":{},"status":"Failure","message":"` \"`\" not found","reason":"NotFound","details":{"name":"`","kind":"`"},"code":404}"#,
            &[
                Arg::Str(resource.name),
                Arg::Str(name),
                Arg::Str(name),
                Arg::Str(resource.name),
            ],
        );
        self.allow(cast);
        self.req.done_us = self.req.received_us + self.rng.random_range(300..2_000);
        Shape::Complete
    }

    fn conflict(&mut self, resource: &Resource, name: &str, cast: &Cast) -> Shape {
        let qualified = if resource.group.is_empty() {
            resource.name.to_owned()
        } else {
            format!("{}.{}", resource.name, resource.group)
        };
        fill(
            &mut self.req.status,
            r#"{"metadata":{},"status":"Failure","message":"Operation cannot be fulfilled on ` \"`\": the object has been modified; please apply your changes to the latest version and try again","reason":"Conflict","details":{"name":"`","group":"`","kind":"`"},"code":409}"#,
            &[
                Arg::Str(&qualified),
                Arg::Str(name),
                Arg::Str(name),
                Arg::Str(resource.group),
                Arg::Str(resource.name),
            ],
        );
        self.allow(cast);
        self.req.done_us = self.req.received_us + self.rng.random_range(2_000..8_000);
        Shape::Complete
    }

    /// `authorization.k8s.io/*` annotations of an allowed request; a few slow requests
    /// also carry the `apiserver.latency.k8s.io/*` breakdown (with its `µs`).
    fn allow(&mut self, cast: &Cast) {
        let reason = self
            .req
            .who
            .actor(cast)
            .map_or("", |actor| actor.allow_reason.as_str());
        let annotations = &mut self.req.annotations;
        annotations.push(b'{');
        if self.rng.random_ratio(4, 100) {
            let total_ms = self.rng.random_range(500..3_000u64);
            let (etcd, decode, serialize) = (
                self.rng.random_range(300_000..2_000_000u64),
                self.rng.random_range(5_000..90_000u64),
                self.rng.random_range(5_000..90_000u64),
            );
            let micros = |out: &mut Vec<u8>, nanos: u64| {
                push_u64(out, nanos / 1000);
                out.push(b'.');
                let frac = nanos % 1000;
                out.extend_from_slice(&[
                    b'0' + (frac / 100) as u8,
                    b'0' + (frac / 10 % 10) as u8,
                    b'0' + (frac % 10) as u8,
                ]);
                out.extend_from_slice("µs".as_bytes());
            };
            annotations.extend_from_slice(br#""apiserver.latency.k8s.io/apf-queue-wait":""#);
            push_u64(annotations, total_ms - 1);
            annotations
                .extend_from_slice(br#".4ms","apiserver.latency.k8s.io/decode-response-object":""#);
            micros(annotations, decode);
            annotations.extend_from_slice(br#"","apiserver.latency.k8s.io/etcd":""#);
            micros(annotations, etcd);
            annotations
                .extend_from_slice(br#"","apiserver.latency.k8s.io/serialize-response-object":""#);
            micros(annotations, serialize);
            annotations.extend_from_slice(br#"","apiserver.latency.k8s.io/total":""#);
            push_u64(annotations, total_ms);
            annotations.extend_from_slice(br#".9ms","#);
        }
        annotations.extend_from_slice(
            br#""authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":""#,
        );
        annotations.extend_from_slice(reason.as_bytes());
        annotations.extend_from_slice(b"\"}");
    }
}

/// Writes the request URI path and the `objectRef` for `resource`.
fn target(
    req: &mut Req,
    resource: &Resource,
    ns: Option<&str>,
    name: Option<&str>,
    sub: Option<&str>,
    stored: Option<(u128, u64)>,
) {
    let uri = &mut req.uri;
    if resource.group.is_empty() {
        uri.extend_from_slice(b"/api/");
    } else {
        fill(uri, "/apis/`/", &[Arg::Str(resource.group)]);
    }
    uri.extend_from_slice(resource.version.as_bytes());
    if let Some(ns) = ns {
        fill(uri, "/namespaces/`", &[Arg::Str(ns)]);
    }
    fill(uri, "/`", &[Arg::Str(resource.name)]);
    for part in [name, sub].into_iter().flatten() {
        uri.push(b'/');
        uri.extend_from_slice(part.as_bytes());
    }

    let object_ref = &mut req.object_ref;
    fill(
        object_ref,
        r#"{"resource":"`"`"#,
        &[Arg::Str(resource.name), Arg::Namespace(ns)],
    );
    if let Some(name) = name {
        fill(object_ref, r#","name":"`""#, &[Arg::Str(name)]);
    }
    if let Some((uid, _)) = stored {
        fill(object_ref, r#","uid":"`""#, &[Arg::Uuid(uid)]);
    }
    if !resource.group.is_empty() {
        fill(
            object_ref,
            r#","apiGroup":"`""#,
            &[Arg::Str(resource.group)],
        );
    }
    fill(
        object_ref,
        r#","apiVersion":"`""#,
        &[Arg::Str(resource.version)],
    );
    if let Some((_, rv)) = stored {
        fill(object_ref, r#","resourceVersion":"`""#, &[Arg::Num(rv)]);
    }
    if let Some(sub) = sub {
        fill(object_ref, r#","subresource":"`""#, &[Arg::Str(sub)]);
    }
    object_ref.push(b'}');
}

/// Writes one stage of `req` as kube-apiserver's log backend does, keys in its order.
fn write_event(out: &mut Vec<u8>, cast: &Cast, req: &Req, stage: Stage, stage_us: i64) {
    out.extend_from_slice(br#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":""#);
    out.extend_from_slice(req.level.as_bytes());
    out.extend_from_slice(br#"","auditID":""#);
    push_uuid(out, req.id);
    out.extend_from_slice(br#"","stage":""#);
    out.extend_from_slice(stage.as_bytes());
    out.extend_from_slice(br#"","requestURI":""#);
    out.extend_from_slice(&req.uri);
    out.extend_from_slice(br#"","verb":""#);
    out.extend_from_slice(req.verb.as_bytes());
    out.extend_from_slice(br#"","user":"#);
    let (ip, agent) = match (req.who.actor(cast), req.who) {
        (Some(actor), _) => {
            out.extend_from_slice(&actor.user);
            (actor.source_ip.as_str(), actor.user_agent.as_str())
        }
        (None, Who::Stranger(i)) => {
            out.extend_from_slice(b"{}");
            (cast.strangers[i].0.as_str(), cast.strangers[i].1)
        }
        (None, _) => unreachable!("only strangers have no actor"),
    };
    out.extend_from_slice(br#","sourceIPs":[""#);
    out.extend_from_slice(ip.as_bytes());
    out.extend_from_slice(br#""],"userAgent":""#);
    out.extend_from_slice(agent.as_bytes());
    out.push(b'"');
    if !req.object_ref.is_empty() {
        out.extend_from_slice(br#","objectRef":"#);
        out.extend_from_slice(&req.object_ref);
    }
    let responded = stage != Stage::RequestReceived;
    if responded {
        out.extend_from_slice(br#","responseStatus":"#);
        out.extend_from_slice(&req.status);
        if !req.request_object.is_empty() {
            out.extend_from_slice(br#","requestObject":"#);
            out.extend_from_slice(&req.request_object);
        }
    }
    if stage == Stage::ResponseComplete && !req.response_object.is_empty() {
        out.extend_from_slice(br#","responseObject":"#);
        out.extend_from_slice(&req.response_object);
    }
    out.extend_from_slice(br#","requestReceivedTimestamp":""#);
    push_timestamp_micros(out, req.received_us);
    out.extend_from_slice(br#"","stageTimestamp":""#);
    push_timestamp_micros(out, stage_us);
    out.push(b'"');
    if responded && !req.annotations.is_empty() {
        out.extend_from_slice(br#","annotations":"#);
        out.extend_from_slice(&req.annotations);
    }
    out.push(b'}');
}
