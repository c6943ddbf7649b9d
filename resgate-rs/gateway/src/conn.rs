//! One WebSocket client connection.
//!
//! Each connection is one task that owns all of the connection's state (no locks): its
//! subscriptions, their cached access, its token. Anything slow (NATS requests, loading
//! resources) runs in short-lived request tasks that report back through the connection's inbox,
//! the same inbox the cache fans events into — so everything the client sees is produced in one
//! order by one task.
//!
//! Subscriptions: a resource is subscribed on the connection while it is reachable, through hard
//! references, from a directly subscribed resource. Reachability is recomputed (mark and sweep)
//! whenever a direct subscription or a reference goes away, which also handles cycles.
//!
//! When producing a frame needs resources that are not loaded yet (a subscribe that raced a
//! change, or a change event adding a reference), the connection loads them and queues every
//! other inbox message meanwhile, so the client never sees an event before the resources it
//! refers to, nor events out of order.

use crate::cache::text;
use crate::cache::{Entry, EventKind, Graph, ResourceEvent};
use crate::server::Shared;
use bytes::Bytes;
use res_protocol::client::{self, Method};
use res_protocol::json::write_str;
use res_protocol::pattern::ResourcePattern;
use res_protocol::rid::replace_cid;
use res_protocol::service::{Access, CallResult, HttpContext, RequestFields, SystemTokenReset, TokenEvent};
use res_protocol::{ProtocolVersion, ResError, code};
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::Instrument;

pub type ConnId = u64;

/// Maximum direct subscriptions of one resource per connection, as in Resgate.
const MAX_DIRECT_SUBSCRIPTIONS: u32 = 256;

/// What reaches a connection task from the rest of the gateway.
///
/// Kept to two words: a connection's inbox allocates its slots in blocks of 32 from the start,
/// so every idle connection holds 32 of these. Larger payloads are boxed.
pub enum ConnMsg {
    Event(Arc<ResourceEvent>),
    Done(Box<Completion>),
    Token(Box<TokenEvent>),
    TokenReset(Arc<SystemTokenReset>),
    AccessReset(Arc<Vec<ResourcePattern>>),
    /// Marks a point in the message order (see `Shared::collect_token`).
    Fence,
    /// Missing resources finished loading for the blocked operation.
    Unblock(Box<Loaded>),
}

const _: () = assert!(std::mem::size_of::<ConnMsg>() <= 16, "ConnMsg grew: box the new variant's payload");

/// Resources loaded for a blocked operation: the entries, and the errors of those that failed.
pub struct Loaded {
    pins: Vec<Arc<Entry>>,
    errors: HashMap<Arc<str>, ResError>,
}

/// State shared between a connection task and those who queue to it.
struct TxShared {
    queued: AtomicUsize,
    limit: usize,
    slow: AtomicBool,
    kill: Notify,
}

/// The sending side of a connection's inbox, with a byte budget for events: a client that
/// cannot keep up is cut off instead of growing the gateway's memory.
#[derive(Clone)]
pub struct ConnTx {
    tx: mpsc::UnboundedSender<ConnMsg>,
    shared: Arc<TxShared>,
}

impl ConnTx {
    pub fn new(limit: usize) -> (ConnTx, mpsc::UnboundedReceiver<ConnMsg>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(TxShared {
            queued: AtomicUsize::new(0),
            limit,
            slow: AtomicBool::new(false),
            kill: Notify::new(),
        });
        (ConnTx { tx, shared }, rx)
    }

    /// Queues an event; `false` when the connection is gone or over its budget.
    pub fn send_event(&self, ev: &Arc<ResourceEvent>) -> bool {
        if self.shared.slow.load(Ordering::Relaxed) {
            return false;
        }
        let cost = ev.cost();
        let queued = self.shared.queued.fetch_add(cost, Ordering::Relaxed) + cost;
        if queued > self.shared.limit {
            if !self.shared.slow.swap(true, Ordering::Relaxed) {
                self.shared.kill.notify_one();
            }
            return false;
        }
        self.tx.send(ConnMsg::Event(ev.clone())).is_ok()
    }

    pub fn send(&self, msg: ConnMsg) -> bool {
        self.tx.send(msg).is_ok()
    }

    fn consumed(&self, cost: usize) {
        self.shared.queued.fetch_sub(cost, Ordering::Relaxed);
    }

    pub async fn killed(&self) {
        self.shared.kill.notified().await;
    }
}

/// How a loaded resource graph is used once the connection gets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Subscribe,
    Get,
    /// The resource of a call/auth/new resource response: subscribed, answered with its rid.
    CallResource,
}

/// A request task's outcome.
pub enum Completion {
    /// Access (if it had to be asked) and the resource graph.
    Resource {
        id: u64,
        mode: Mode,
        client_rid: Arc<str>,
        key: Arc<str>,
        access: Option<Result<Access, ResError>>,
        graph: Result<Graph, ResError>,
        started: Instant,
        label: &'static str,
    },
    /// A call, auth or new request answered by the service.
    Call {
        id: u64,
        key: Arc<str>,
        access: Option<Result<Access, ResError>>,
        result: Result<CallResult, ResError>,
        is_new: bool,
        started: Instant,
        label: &'static str,
    },
    /// A re-done access check (after reaccess or a token change).
    Access { key: Arc<str>, result: Result<Access, ResError> },
}

struct Sub {
    entry: Arc<Entry>,
    client_rid: Arc<str>,
    direct: u32,
    refs: Vec<Arc<str>>,
    version: u64,
    access: Option<Access>,
    /// Snapshot not yet written to the client.
    unsent: Option<(bool, Bytes)>,
}

/// What to write once every resource reachable from `roots` is attached.
enum Pending {
    Reply {
        id: u64,
        mode: Mode,
        client_rid: Arc<str>,
        key: Arc<str>,
        access: Option<Access>,
        errors: HashMap<Arc<str>, ResError>,
        pins: Vec<Arc<Entry>>,
        started: Instant,
        label: &'static str,
    },
    Event {
        ev: Arc<ResourceEvent>,
        errors: HashMap<Arc<str>, ResError>,
        pins: Vec<Arc<Entry>>,
    },
}

impl Pending {
    fn roots(&self) -> Vec<Arc<str>> {
        match self {
            Pending::Reply { key, .. } => vec![key.clone()],
            Pending::Event { ev, .. } => ev.added_refs.clone(),
        }
    }

    fn parts(&mut self) -> (&mut HashMap<Arc<str>, ResError>, &mut Vec<Arc<Entry>>) {
        match self {
            Pending::Reply { errors, pins, .. } | Pending::Event { errors, pins, .. } => (errors, pins),
        }
    }
}

/// Everything a connection knows, owned by its task.
pub struct Conn {
    pub id: ConnId,
    pub cid: Arc<str>,
    shared: Arc<Shared>,
    tx: ConnTx,
    version: ProtocolVersion,
    token: Option<Arc<RawValue>>,
    tid: Option<String>,
    http: Arc<HttpContext>,
    subs: HashMap<Arc<str>, Sub>,
    /// Resource IDs the cache resolved to another entry's ID (query resources whose queries
    /// normalise to the same one): requested ID → the entry's ID, which keys `subs`.
    aliases: HashMap<Arc<str>, Arc<str>>,
    blocked: Option<Pending>,
    queue: VecDeque<ConnMsg>,
    /// Frames to write.
    pub out: Vec<Utf8Bytes>,
}

impl Conn {
    pub fn new(id: ConnId, cid: Arc<str>, shared: Arc<Shared>, tx: ConnTx, http: HttpContext) -> Conn {
        Conn {
            id,
            cid,
            shared,
            tx,
            version: ProtocolVersion::LEGACY_DEFAULT,
            token: None,
            tid: None,
            http: Arc::new(http),
            subs: HashMap::new(),
            aliases: HashMap::new(),
            blocked: None,
            queue: VecDeque::new(),
            out: Vec::new(),
        }
    }

    /// Sets the token obtained by wsHeaderAuth before the connection started.
    pub fn set_initial_token(&mut self, ev: TokenEvent) {
        self.tid = ev.tid.clone();
        self.token = ev.into_token().map(Arc::from);
    }

    fn legacy(&self) -> bool {
        self.version.is_legacy_values()
    }

    fn push(&mut self, frame: Vec<u8>) {
        self.out.push(text(frame));
    }

    fn reply_error(&mut self, id: u64, err: &ResError) {
        self.push(client::error_frame(Some(id), err));
    }

    fn observe(&self, label: &'static str, started: Instant) {
        self.shared.metrics.observe_request(label, started.elapsed().as_secs_f64());
    }

    // === Requests ===

    /// Handles one text frame from the client.
    pub fn handle_frame(&mut self, frame: &[u8]) {
        let (id, req) = match client::decode_request(frame) {
            Ok(r) => r,
            Err(client::FrameError::MissingId) => {
                // Resgate ignores requests without an id: there is nothing to answer to.
                tracing::debug!(cid = %self.cid, "request without id ignored");
                return;
            }
            Err(e) => {
                // Resgate drops unparseable frames silently; we tell the client why (no id to
                // answer to, so the error frame has none) and keep the connection.
                tracing::debug!(cid = %self.cid, error = %e, "malformed frame");
                let err = ResError::new(code::INVALID_REQUEST, format!("Invalid request: {e}"));
                self.push(client::error_frame(None, &err));
                return;
            }
        };
        let started = Instant::now();
        let method = match Method::parse(req.method()) {
            Ok(m) => m,
            Err(e) => return self.reply_error(id, &e),
        };
        if method != Method::Version {
            self.shared.metrics.count_ws_request(method.label());
        }
        tracing::trace!(cid = %self.cid, id, method = req.method(), "request");
        // Each request is a trace of its own (a connection lives for hours); the tasks it spawns
        // for NATS calls run in it, so the services' spans join it through the message headers.
        let span = if res_telemetry::traces_exported() {
            tracing::info_span!(parent: None, "ws.request", cid = %self.cid, id, method = req.method())
        } else {
            tracing::Span::none()
        };
        let _in_request = span.enter();
        match method {
            Method::Version => self.version_request(id, req.params),
            Method::Subscribe(rid) => self.resource_request(id, rid, Mode::Subscribe, started),
            Method::Get(rid) => self.resource_request(id, rid, Mode::Get, started),
            Method::Unsubscribe(rid) => self.unsubscribe(id, rid, req.params, started),
            Method::Call { rid, method } => self.call(id, rid, method, req.params, false, started),
            Method::New(rid) => self.call(id, rid, "new", req.params, true, started),
            Method::Auth { rid, method } => self.auth(id, rid, method, req.params, started),
        }
    }

    fn version_request(&mut self, id: u64, params: Option<&RawValue>) {
        let result = client::version_param(params).and_then(|p| match p {
            Some(p) => ProtocolVersion::parse_client(&p).map(Some),
            None => Ok(None),
        });
        match result {
            Ok(v) => {
                if let Some(v) = v {
                    self.version = v;
                }
                let mut res = b"{\"protocol\":".to_vec();
                write_str(&mut res, &ProtocolVersion::CURRENT.to_string());
                res.push(b'}');
                self.push(client::result_frame(id, &res));
            }
            Err(e) => self.reply_error(id, &e),
        }
    }

    fn key_of(&self, rid: &str) -> Arc<str> {
        self.resolve(&Arc::from(replace_cid(rid, &self.cid).as_ref()))
    }

    fn resolve(&self, key: &Arc<str>) -> Arc<str> {
        self.aliases.get(key).cloned().unwrap_or_else(|| key.clone())
    }

    fn request_fields<'a>(&'a self, query: Option<&'a str>, params: Option<&'a RawValue>) -> RequestFields<'a> {
        RequestFields { cid: &self.cid, token: self.token.as_deref(), query, params, is_http: false }
    }

    fn resource_request(&mut self, id: u64, rid: &str, mode: Mode, started: Instant) {
        let key = self.key_of(rid);
        if mode == Mode::Subscribe && self.subs.get(&key).is_some_and(|s| s.direct >= MAX_DIRECT_SUBSCRIPTIONS) {
            return self.reply_error(id, &ResError::subscription_limit_exceeded());
        }
        let cached = self.subs.get(&key).and_then(|s| s.access.clone());
        if mode == Mode::Get && self.blocked.is_none() && cached.as_ref().is_some_and(|a| a.get) {
            // A get of a resource this connection already holds, with read access cached: the
            // answer comes from the connection's own state (the resources it has not sent yet),
            // so it is written here, without a request task and a round trip through the inbox.
            let errors = HashMap::new();
            let p = Pending::Reply {
                id,
                mode,
                client_rid: Arc::from(rid),
                key,
                access: None,
                errors,
                pins: Vec::new(),
                started,
                label: "get",
            };
            return self.run_pending(p);
        }
        let access_payload = cached.is_none().then(|| self.access_payload(&key));
        self.spawn_resource(id, mode, Arc::from(rid), key, access_payload, cached, started, mode_label(mode));
    }

    fn access_payload(&self, key: &str) -> Vec<u8> {
        let (_, query) = res_protocol::rid::split_query(key);
        self.request_fields(query, None).encode()
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_resource(
        &self,
        id: u64,
        mode: Mode,
        client_rid: Arc<str>,
        key: Arc<str>,
        access_payload: Option<Vec<u8>>,
        cached: Option<Access>,
        started: Instant,
        label: &'static str,
    ) {
        let shared = self.shared.clone();
        let tx = self.tx.clone();
        tokio::spawn(
            async move {
                let access = async {
                    match access_payload {
                        Some(p) => Some(shared.access(&key, p).await),
                        None => cached.map(Ok),
                    }
                };
                let (access, graph) = tokio::join!(access, shared.cache.load_graph(&key));
                tx.send(ConnMsg::Done(Box::new(Completion::Resource {
                    id,
                    mode,
                    client_rid,
                    key,
                    access,
                    graph,
                    started,
                    label,
                })));
            }
            .in_current_span(),
        );
    }

    fn unsubscribe(&mut self, id: u64, rid: &str, params: Option<&RawValue>, started: Instant) {
        let count = match client::unsubscribe_count(params) {
            Ok(c) => c,
            Err(e) => return self.reply_error(id, &e),
        };
        let key = self.key_of(rid);
        match self.subs.get_mut(&key) {
            Some(sub) if sub.direct >= count => {
                sub.direct -= count;
                if sub.direct == 0 {
                    self.collect_garbage();
                }
                self.push(client::empty_result_frame(id));
            }
            _ => self.reply_error(id, &ResError::no_subscription()),
        }
        self.observe("unsubscribe", started);
    }

    fn call(&mut self, id: u64, rid: &str, method: &str, params: Option<&RawValue>, is_new: bool, started: Instant) {
        let key = self.key_of(rid);
        let (name, query) = res_protocol::rid::split_query(&key);
        let cached = self.subs.get(&key).and_then(|s| s.access.clone());
        let access_payload = cached.is_none().then(|| self.access_payload(&key));
        let subject = format!("call.{name}.{method}");
        if !self.shared.nats.subject_fits(subject.len()) {
            // Checked before the access request, which has a shorter subject.
            return self.reply_error(id, &ResError::subject_too_long());
        }
        let payload = self.request_fields(query, params).encode();
        let shared = self.shared.clone();
        let tx = self.tx.clone();
        let method = method.to_owned();
        tokio::spawn(
            async move {
                let access = match access_payload {
                    Some(p) => Some(shared.access(&key, p).await),
                    None => cached.map(Ok),
                };
                let allowed = match &access {
                    Some(Ok(a)) if a.can_call(&method) => Ok(()),
                    Some(Err(e)) => Err(e.clone()),
                    _ => Err(ResError::access_denied()),
                };
                let result = match allowed {
                    Ok(()) => shared.call(&subject, payload).await,
                    Err(e) => Err(e),
                };
                shared.after_conn_events(
                    &tx,
                    ConnMsg::Done(Box::new(Completion::Call {
                        id,
                        key,
                        access,
                        result,
                        is_new,
                        started,
                        label: "call",
                    })),
                );
            }
            .in_current_span(),
        );
    }

    fn auth(&mut self, id: u64, rid: &str, method: &str, params: Option<&RawValue>, started: Instant) {
        let key = self.key_of(rid);
        let (name, query) = res_protocol::rid::split_query(&key);
        let subject = format!("auth.{name}.{method}");
        if !self.shared.nats.subject_fits(subject.len()) {
            return self.reply_error(id, &ResError::subject_too_long());
        }
        let payload = self.request_fields(query, params).encode_with(Some(&self.http));
        let shared = self.shared.clone();
        let tx = self.tx.clone();
        tokio::spawn(
            async move {
                let result = shared.call(&subject, payload).await;
                // Behind any token event the service sent before replying (see `after_conn_events`).
                shared.after_conn_events(
                    &tx,
                    ConnMsg::Done(Box::new(Completion::Call {
                        id,
                        key,
                        access: None,
                        result,
                        is_new: false,
                        started,
                        label: "auth",
                    })),
                );
            }
            .in_current_span(),
        );
    }

    // === Inbox ===

    /// Handles one inbox message, or queues it while an operation waits for resources.
    pub fn handle_msg(&mut self, msg: ConnMsg) {
        if let ConnMsg::Event(ev) = &msg {
            self.tx.consumed(ev.cost());
        }
        if self.blocked.is_some() {
            match msg {
                ConnMsg::Unblock(loaded) => {
                    let Loaded { pins, errors } = *loaded;
                    let mut p = self.blocked.take().expect("blocked");
                    let (e, pn) = p.parts();
                    e.extend(errors);
                    pn.extend(pins);
                    self.run_pending(p);
                    while self.blocked.is_none() {
                        match self.queue.pop_front() {
                            Some(m) => self.dispatch(m),
                            None => break,
                        }
                    }
                }
                other => self.queue.push_back(other),
            }
            return;
        }
        self.dispatch(msg);
    }

    fn dispatch(&mut self, msg: ConnMsg) {
        match msg {
            ConnMsg::Event(ev) => self.event(ev),
            ConnMsg::Done(c) => self.completion(*c),
            ConnMsg::Token(t) => self.token_event(*t),
            ConnMsg::TokenReset(r) => self.token_reset(&r),
            ConnMsg::AccessReset(patterns) => {
                let keys: Vec<Arc<str>> = self
                    .subs
                    .iter()
                    .filter(|(_, s)| patterns.iter().any(|p| p.matches(s.entry.name())))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in keys {
                    self.reaccess(&k);
                }
            }
            ConnMsg::Unblock(_) | ConnMsg::Fence => {}
        }
    }

    fn completion(&mut self, c: Completion) {
        match c {
            Completion::Resource { id, mode, client_rid, key, access, graph, started, label } => {
                let access = match access {
                    Some(Ok(a)) if a.get => Some(a),
                    Some(Ok(_)) => {
                        return self.resource_denied(id, mode, &client_rid, ResError::access_denied(), started, label);
                    }
                    Some(Err(e)) => return self.resource_denied(id, mode, &client_rid, e, started, label),
                    None => None,
                };
                let graph = match graph {
                    Ok(g) => g,
                    Err(e) => {
                        if mode == Mode::CallResource {
                            return self.resource_denied(id, mode, &client_rid, e, started, label);
                        }
                        self.observe(label, started);
                        return self.reply_error(id, &e);
                    }
                };
                let pins = graph.entries.into_values().collect();
                self.run_pending(Pending::Reply {
                    id,
                    mode,
                    client_rid,
                    key,
                    access,
                    errors: graph.errors,
                    pins,
                    started,
                    label,
                });
            }
            Completion::Call { id, key, access, result, is_new, started, label } => {
                if let (Some(Ok(a)), Some(sub)) = (access, self.subs.get_mut(&key)) {
                    sub.access = Some(a);
                }
                self.call_result(id, result, is_new, started, label);
            }
            Completion::Access { key, result } => {
                let Some(sub) = self.subs.get_mut(&key) else { return };
                match result {
                    Ok(a) if a.get => sub.access = Some(a),
                    Ok(_) => self.revoke(&key, ResError::access_denied()),
                    Err(e) if e.code == code::ACCESS_DENIED || e.code == code::NOT_FOUND => self.revoke(&key, e),
                    Err(e) => tracing::debug!(rid = %key, error = %e, "access re-check failed; keeping subscription"),
                }
            }
        }
    }

    /// A subscribe/get without read access fails; a call's resource response still succeeds,
    /// with the resource's error in `errors`.
    fn resource_denied(
        &mut self,
        id: u64,
        mode: Mode,
        client_rid: &str,
        err: ResError,
        started: Instant,
        label: &'static str,
    ) {
        self.observe(label, started);
        if mode != Mode::CallResource {
            return self.reply_error(id, &err);
        }
        let mut res = b"{\"rid\":".to_vec();
        write_str(&mut res, client_rid);
        res.extend_from_slice(b",\"errors\":{");
        write_str(&mut res, client_rid);
        res.push(b':');
        res.extend_from_slice(&err.to_json());
        res.extend_from_slice(b"}}");
        self.push(client::result_frame(id, &res));
    }

    fn call_result(
        &mut self,
        id: u64,
        result: Result<CallResult, ResError>,
        is_new: bool,
        started: Instant,
        label: &'static str,
    ) {
        let result = match result {
            Err(e) => {
                self.observe(label, started);
                return self.reply_error(id, &e);
            }
            Ok(CallResult::Payload(p)) if is_new => match legacy_new_rid(&p) {
                // Before protocol 1.2.0 a new call answered {"rid": ...} as its result.
                Some(rid) => CallResult::Resource(rid),
                None => {
                    self.observe(label, started);
                    return self.reply_error(id, &ResError::internal("invalid service response"));
                }
            },
            Ok(r) => r,
        };
        match result {
            CallResult::Payload(p) => {
                self.observe(label, started);
                if self.version.is_legacy_call() {
                    self.push(client::result_frame(id, p.get().as_bytes()));
                } else {
                    let mut res = b"{\"payload\":".to_vec();
                    res.extend_from_slice(p.get().as_bytes());
                    res.push(b'}');
                    self.push(client::result_frame(id, &res));
                }
            }
            CallResult::Resource(rid) => {
                if self.version.is_legacy_call() && !is_new {
                    // Legacy clients get the rid only, without a subscription.
                    self.observe(label, started);
                    let mut res = b"{\"rid\":".to_vec();
                    write_str(&mut res, &rid);
                    res.push(b'}');
                    return self.push(client::result_frame(id, &res));
                }
                let key = self.resolve(&Arc::from(rid.as_str()));
                let cached = self.subs.get(&key).and_then(|s| s.access.clone());
                let access_payload = cached.is_none().then(|| self.access_payload(&key));
                self.spawn_resource(id, Mode::CallResource, key.clone(), key, access_payload, cached, started, label);
            }
        }
    }

    // === Attaching resources and writing them ===

    /// Attaches everything reachable from the pending operation's roots, then writes its frame;
    /// or, when resources are missing, starts loading them and blocks.
    fn run_pending(&mut self, mut p: Pending) {
        let roots = p.roots();
        let (errors, pins) = p.parts();
        let missing = self.attach(&roots, errors, pins);
        if !missing.is_empty() {
            self.block(p, missing);
            return;
        }
        self.emit(p);
    }

    fn block(&mut self, p: Pending, missing: Vec<Arc<str>>) {
        self.blocked = Some(p);
        let cache = self.shared.cache.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let mut pins = Vec::new();
            let mut errors = HashMap::new();
            for key in missing {
                match cache.load_graph(&key).await {
                    Ok(g) => {
                        pins.extend(g.entries.into_values());
                        errors.extend(g.errors);
                    }
                    Err(e) => {
                        errors.insert(key, e);
                    }
                }
            }
            tx.send(ConnMsg::Unblock(Box::new(Loaded { pins, errors })));
        });
    }

    /// Registers this connection on every unattached resource reachable from `roots`. Returns
    /// the resources that are not loaded.
    fn attach(
        &mut self,
        roots: &[Arc<str>],
        errors: &HashMap<Arc<str>, ResError>,
        pins: &[Arc<Entry>],
    ) -> Vec<Arc<str>> {
        let mut missing = Vec::new();
        let mut visited = HashSet::new();
        let mut stack: Vec<Arc<str>> = roots.to_vec();
        let legacy = self.legacy();
        while let Some(k) = stack.pop() {
            if errors.contains_key(&k) {
                continue;
            }
            let k = self.resolve(&k);
            if !visited.insert(k.clone()) {
                continue;
            }
            if let Some(sub) = self.subs.get(&k) {
                stack.extend(sub.refs.iter().cloned());
                continue;
            }
            let entry = pins.iter().find(|e| e.key == k).cloned().or_else(|| self.shared.cache.get_ready(&k));
            let Some(entry) = entry else {
                missing.push(k);
                continue;
            };
            if entry.key != k {
                self.aliases.insert(k.clone(), entry.key.clone());
                if self.subs.contains_key(&entry.key) {
                    continue;
                }
            }
            match entry.register(self.id, &self.tx, legacy) {
                Some(snap) => {
                    stack.extend(snap.refs.iter().cloned());
                    self.subs.insert(
                        entry.key.clone(),
                        Sub {
                            entry,
                            client_rid: k,
                            direct: 0,
                            refs: snap.refs,
                            version: snap.version,
                            access: None,
                            unsent: Some((snap.is_model, snap.json)),
                        },
                    );
                }
                None => missing.push(k),
            }
        }
        missing
    }

    /// Writes `"models":{..},"collections":{..},"errors":{..}` (each only when not empty) for
    /// the unsent resources reachable from `roots`; returns whether anything was written.
    fn write_resource_set(
        &mut self,
        out: &mut Vec<u8>,
        roots: &[Arc<str>],
        errors: &HashMap<Arc<str>, ResError>,
    ) -> bool {
        let mut models = Vec::new();
        let mut collections = Vec::new();
        let mut errs = Vec::new();
        let mut visited = HashSet::new();
        let mut stack: Vec<Arc<str>> = roots.to_vec();
        while let Some(k) = stack.pop() {
            let k = if errors.contains_key(&k) { k } else { self.resolve(&k) };
            if !visited.insert(k.clone()) {
                continue;
            }
            if let Some(e) = errors.get(&k) {
                if !self.subs.contains_key(&k) {
                    errs.push((k, e.to_json()));
                }
                continue;
            }
            let Some(sub) = self.subs.get_mut(&k) else { continue };
            if let Some((is_model, json)) = sub.unsent.take() {
                if is_model { &mut models } else { &mut collections }.push((sub.client_rid.clone(), json));
                stack.extend(sub.refs.iter().cloned());
            }
        }
        let mut wrote = false;
        for (name, items) in [("models", models), ("collections", collections)] {
            if items.is_empty() {
                continue;
            }
            write_section(out, name, &mut wrote, items.iter().map(|(k, v)| (&**k, &v[..])));
        }
        if !errs.is_empty() {
            write_section(out, "errors", &mut wrote, errs.iter().map(|(k, v)| (&**k, &v[..])));
        }
        wrote
    }

    fn emit(&mut self, p: Pending) {
        match p {
            Pending::Reply { id, mode, client_rid, key, access, errors, pins: _, started, label } => {
                let key = self.resolve(&key);
                if let Some(sub) = self.subs.get_mut(&key) {
                    // A {cid}-tagged subscription keeps the rid the client used.
                    if sub.unsent.is_some() {
                        sub.client_rid = client_rid.clone();
                    }
                    if mode != Mode::Get {
                        sub.direct += 1;
                    }
                    if access.is_some() {
                        sub.access = access;
                    }
                }
                let mut res = Vec::with_capacity(256);
                res.push(b'{');
                let wrote = if mode == Mode::CallResource {
                    res.extend_from_slice(b"\"rid\":");
                    write_str(&mut res, &client_rid);
                    let mut set = Vec::new();
                    let wrote = self.write_resource_set(&mut set, std::slice::from_ref(&key), &errors);
                    if wrote {
                        res.push(b',');
                        res.extend_from_slice(&set);
                    }
                    wrote
                } else {
                    self.write_resource_set(&mut res, std::slice::from_ref(&key), &errors)
                };
                res.push(b'}');
                self.observe(label, started);
                self.push(client::result_frame(id, &res));
                // Resources a get attached are written in its reply; with none written, the get
                // attached nothing, and there is nothing for a sweep to drop.
                if mode == Mode::Get && wrote {
                    self.collect_garbage();
                }
            }
            Pending::Event { ev, errors, pins: _ } => {
                let Some(sub) = self.subs.get(&ev.key) else { return };
                let client_rid = sub.client_rid.clone();
                let legacy = self.legacy();
                let mut set = Vec::new();
                let has_set = self.write_resource_set(&mut set, &ev.added_refs, &errors);
                if has_set {
                    let mut data = Vec::with_capacity(set.len() + 128);
                    ev.write_data(&mut data, legacy, true);
                    data.push(b',');
                    data.extend_from_slice(&set);
                    data.push(b'}');
                    self.push(client::event_frame(&client_rid, ev.name(), Some(&data)));
                } else {
                    self.out.push(ev.frame(&client_rid, legacy));
                }
                if !ev.removed_refs.is_empty() {
                    self.collect_garbage();
                }
            }
        }
    }

    // === Events ===

    fn event(&mut self, ev: Arc<ResourceEvent>) {
        let Some(sub) = self.subs.get_mut(&ev.key) else { return };
        match &ev.kind {
            EventKind::Custom { .. } => {
                let frame = ev.frame(&sub.client_rid, self.version.is_legacy_values());
                self.out.push(frame);
                return;
            }
            EventKind::Reaccess => {
                let key = ev.key.clone();
                return self.reaccess(&key);
            }
            _ => {}
        }
        if ev.version <= sub.version {
            return;
        }
        sub.version = ev.version;
        if matches!(ev.kind, EventKind::Delete) {
            let client_rid = sub.client_rid.clone();
            let direct = sub.direct;
            self.push(client::event_frame(&client_rid, "delete", None));
            if direct > 0 {
                self.push_unsubscribe_event(&client_rid, &ResError::deleted());
            }
            if let Some(sub) = self.subs.remove(&ev.key) {
                self.shared.cache.unregister(&sub.entry, self.id);
            }
            self.collect_garbage();
            return;
        }
        for r in &ev.removed_refs {
            if let Some(i) = sub.refs.iter().position(|x| x == r) {
                sub.refs.swap_remove(i);
            }
        }
        sub.refs.extend(ev.added_refs.iter().cloned());
        if ev.added_refs.is_empty() {
            let frame = ev.frame(&sub.client_rid, self.version.is_legacy_values());
            self.out.push(frame);
            if !ev.removed_refs.is_empty() {
                self.collect_garbage();
            }
            return;
        }
        self.run_pending(Pending::Event { ev, errors: HashMap::new(), pins: Vec::new() });
    }

    fn push_unsubscribe_event(&mut self, client_rid: &str, reason: &ResError) {
        let mut data = b"{\"reason\":".to_vec();
        data.extend_from_slice(&reason.to_json());
        data.push(b'}');
        self.push(client::event_frame(client_rid, "unsubscribe", Some(&data)));
    }

    /// Access for a resource may have changed: forget it, and re-check direct subscriptions.
    fn reaccess(&mut self, key: &Arc<str>) {
        let Some(sub) = self.subs.get_mut(key) else { return };
        sub.access = None;
        if sub.direct == 0 {
            return;
        }
        let payload = self.access_payload(key);
        let shared = self.shared.clone();
        let tx = self.tx.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let result = shared.access(&key, payload).await;
            tx.send(ConnMsg::Done(Box::new(Completion::Access { key, result })));
        });
    }

    /// Access was denied: the client loses its direct subscription.
    fn revoke(&mut self, key: &Arc<str>, reason: ResError) {
        let Some(sub) = self.subs.get_mut(key) else { return };
        if sub.direct == 0 {
            return;
        }
        sub.direct = 0;
        let client_rid = sub.client_rid.clone();
        self.push_unsubscribe_event(&client_rid, &reason);
        self.collect_garbage();
    }

    fn token_event(&mut self, ev: TokenEvent) {
        let had_token = self.token.is_some();
        self.tid = ev.tid.clone();
        self.token = ev.into_token().map(Arc::from);
        // Cached access was granted to the old token. Like Resgate, subscriptions are only
        // re-checked when the old token was not null; the cache is cleared either way so that
        // calls after a login are checked with the new token.
        let keys: Vec<Arc<str>> = self.subs.keys().cloned().collect();
        for k in keys {
            if had_token {
                self.reaccess(&k);
            } else if let Some(s) = self.subs.get_mut(&k) {
                s.access = None;
            }
        }
    }

    fn token_reset(&mut self, reset: &SystemTokenReset) {
        let Some(tid) = &self.tid else { return };
        if !reset.tids.iter().any(|t| t == tid) {
            return;
        }
        if reset.subject.is_empty() {
            tracing::error!("system.tokenReset without subject");
            return;
        }
        let payload = self.request_fields(None, None).encode_with(Some(&self.http));
        let shared = self.shared.clone();
        let subject = reset.subject.clone();
        tokio::spawn(async move {
            if let Err(e) = shared.call(&subject, payload).await {
                tracing::debug!(subject, error = %e, "token reset auth request failed");
            }
        });
    }

    /// Drops every subscription no longer reachable from a direct one.
    fn collect_garbage(&mut self) {
        let mut reachable: HashSet<Arc<str>> = HashSet::new();
        let mut stack: Vec<Arc<str>> = self.subs.iter().filter(|(_, s)| s.direct > 0).map(|(k, _)| k.clone()).collect();
        while let Some(k) = stack.pop() {
            let k = self.resolve(&k);
            if reachable.contains(&k) {
                continue;
            }
            if let Some(s) = self.subs.get(&k) {
                stack.extend(s.refs.iter().cloned());
                reachable.insert(k);
            }
        }
        if reachable.len() == self.subs.len() {
            return;
        }
        self.aliases.retain(|_, target| reachable.contains(target));
        let gone: Vec<Arc<str>> = self.subs.keys().filter(|k| !reachable.contains(*k)).cloned().collect();
        for k in gone {
            if let Some(sub) = self.subs.remove(&k) {
                self.shared.cache.unregister(&sub.entry, self.id);
            }
        }
    }

    /// Leaves every cached resource (the connection is closing).
    pub fn dispose(&mut self) {
        for (_, sub) in self.subs.drain() {
            self.shared.cache.unregister(&sub.entry, self.id);
        }
    }
}

fn write_section<'a>(
    out: &mut Vec<u8>,
    name: &str,
    wrote: &mut bool,
    items: impl Iterator<Item = (&'a str, &'a [u8])>,
) {
    if *wrote {
        out.push(b',');
    }
    *wrote = true;
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":{");
    for (i, (k, v)) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        out.extend_from_slice(v);
    }
    out.push(b'}');
}

fn mode_label(mode: Mode) -> &'static str {
    match mode {
        Mode::Subscribe => "subscribe",
        Mode::Get => "get",
        Mode::CallResource => "call",
    }
}

/// A legacy `new` result: exactly `{"rid": "<valid rid>"}`.
fn legacy_new_rid(p: &RawValue) -> Option<String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct R {
        rid: String,
    }
    serde_json::from_str::<R>(p.get()).ok().map(|r| r.rid).filter(|r| res_protocol::is_valid_rid(r))
}
