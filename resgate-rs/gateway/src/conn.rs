//! One WebSocket client connection.
//!
//! Each connection is one task that owns all of the connection's state (no locks): its
//! subscriptions, their cached access, its token. Anything slow (NATS requests, loading
//! resources) runs in short-lived request tasks that report back through the connection's inbox,
//! the same inbox the cache fans events into — so everything the client sees is produced in one
//! order by one task.
//!
//! Subscriptions are keyed by resource ID as the client knows it — its own spelling for direct
//! subscriptions, the data's for references — as Resgate keys them: two spellings of one query
//! resource are two subscriptions on the same cache entry, each sent and evented under its own
//! ID. A resource is subscribed while it is reachable, through hard references, from a directly
//! subscribed one. Reachability is recomputed (mark and sweep) whenever a direct subscription
//! or a reference goes away, which also handles cycles.
//!
//! When producing a frame needs resources that are not loaded yet (a subscribe that raced a
//! change, or a change event adding a reference), the connection loads them and queues every
//! other inbox message meanwhile, so the client never sees an event before the resources it
//! refers to, nor events out of order.
//!
//! Replies to calls and auths reach the inbox only after the events NATS delivered before them
//! for every resource the connection holds, and after its token events (`Shared::call_ordered`):
//! the connection registers its hold on an entry before registering on the entry itself.

use crate::cache::{Entry, Graph};
use crate::event::{EventKind, Outlet, ResourceEvent, text};
use crate::inbox::{Completion, ConnId, ConnMsg, ConnTx, Loaded, Mode};
use crate::shared::Shared;
use bytes::Bytes;
use res_protocol::client::{self, Method};
use res_protocol::json::write_str;
use res_protocol::rid::replace_cid;
use res_protocol::service::{Access, CallResult, HttpContext, RequestFields, SystemTokenReset, TokenEvent};
use res_protocol::{ProtocolVersion, ResError, code};
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::Instrument;

/// Maximum direct subscriptions of one resource per connection, as in Resgate.
const MAX_DIRECT_SUBSCRIPTIONS: u32 = 256;

struct Sub {
    entry: Arc<Entry>,
    direct: u32,
    refs: Vec<Arc<str>>,
    version: u64,
    access: Option<Access>,
    /// Snapshot not yet written to the client.
    unsent: Option<(bool, Bytes)>,
}

/// Resources loaded for an operation, by the resource ID they were asked for.
type Pins = HashMap<Arc<str>, Arc<Entry>>;
/// Resources that failed to load, by resource ID.
type Errors = HashMap<Arc<str>, ResError>;

/// What to write once every resource reachable from `roots` is attached.
enum Pending {
    Reply {
        id: u64,
        mode: Mode,
        rid: Arc<str>,
        access: Option<Access>,
        errors: HashMap<Arc<str>, ResError>,
        pins: HashMap<Arc<str>, Arc<Entry>>,
        started: Instant,
        label: &'static str,
        /// Subscribes/gets of the same resource ID made meanwhile, answered right after.
        followers: Vec<Follower>,
    },
    /// An event adding references, for each subscription of its entry that takes it.
    Event {
        ev: Arc<ResourceEvent>,
        rids: Vec<Arc<str>>,
        errors: HashMap<Arc<str>, ResError>,
        pins: HashMap<Arc<str>, Arc<Entry>>,
    },
}

impl Pending {
    fn roots(&self) -> Vec<Arc<str>> {
        match self {
            Pending::Reply { rid, .. } => vec![rid.clone()],
            Pending::Event { ev, .. } => ev.added_refs.clone(),
        }
    }

    fn parts(&mut self) -> (&mut Errors, &mut Pins) {
        match self {
            Pending::Reply { errors, pins, .. } | Pending::Event { errors, pins, .. } => (errors, pins),
        }
    }
}

/// A call waiting for its resource's access check.
struct PendingCall {
    id: u64,
    method: String,
    params: Option<Box<RawValue>>,
    is_new: bool,
    started: Instant,
    span: tracing::Span,
}

/// A subscribe/get waiting for the one in flight for the same resource ID.
struct Follower {
    id: u64,
    mode: Mode,
    started: Instant,
}

/// Everything a connection knows, owned by its task.
pub struct Conn {
    pub id: ConnId,
    pub cid: Arc<str>,
    shared: Arc<Shared>,
    tx: ConnTx,
    /// Where the cache queues this connection's events (its inbox).
    outlet: Arc<dyn Outlet>,
    version: ProtocolVersion,
    token: Option<Arc<RawValue>>,
    tid: Option<String>,
    http: Arc<HttpContext>,
    /// Subscriptions by resource ID as the client knows it.
    subs: HashMap<Arc<str>, Sub>,
    /// The subscriptions on each held cache entry, by entry id: the entry's events go to each.
    by_entry: HashMap<u64, Arc<[Arc<str>]>>,
    /// Resource IDs with a subscribe/get in flight, and the subscribes/gets of the same ID that
    /// came after it: they share its access check and load, and are answered right after it,
    /// in request order (as Resgate's per-subscription callbacks are).
    in_flight: HashMap<Arc<str>, Vec<Follower>>,
    /// Resource IDs with an access check in flight for calls, and the calls waiting for it.
    access_waiting: HashMap<Arc<str>, Vec<PendingCall>>,
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
            outlet: tx.outlet(),
            tx,
            version: ProtocolVersion::LEGACY_DEFAULT,
            token: None,
            tid: None,
            http: Arc::new(http),
            subs: HashMap::new(),
            by_entry: HashMap::new(),
            in_flight: HashMap::new(),
            access_waiting: HashMap::new(),
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
                    self.tx.set_legacy(self.legacy());
                }
                let mut res = b"{\"protocol\":".to_vec();
                write_str(&mut res, &ProtocolVersion::CURRENT.to_string());
                res.push(b'}');
                self.push(client::result_frame(id, &res));
            }
            Err(e) => self.reply_error(id, &e),
        }
    }

    /// The resource ID as services see it (`{cid}` replaced): the cache key.
    fn key_of(&self, rid: &str) -> Arc<str> {
        Arc::from(replace_cid(rid, &self.cid).as_ref())
    }

    fn request_fields<'a>(&'a self, query: Option<&'a str>, params: Option<&'a RawValue>) -> RequestFields<'a> {
        RequestFields { cid: &self.cid, token: self.token.as_deref(), query, params, is_http: false }
    }

    fn resource_request(&mut self, id: u64, rid: &str, mode: Mode, started: Instant) {
        let rid: Arc<str> = Arc::from(rid);
        if mode == Mode::Subscribe && self.subs.get(&rid).is_some_and(|s| s.direct >= MAX_DIRECT_SUBSCRIPTIONS) {
            return self.reply_error(id, &ResError::subscription_limit_exceeded());
        }
        let cached = self.subs.get(&rid).and_then(|s| s.access.clone());
        if mode == Mode::Get && self.blocked.is_none() && cached.as_ref().is_some_and(|a| a.get) {
            // A get of a resource this connection already holds, with read access cached: the
            // answer comes from the connection's own state (the resources it has not sent yet),
            // so it is written here, without a request task and a round trip through the inbox.
            let p = Pending::Reply {
                id,
                mode,
                rid,
                access: None,
                errors: HashMap::new(),
                pins: HashMap::new(),
                started,
                label: "get",
                followers: Vec::new(),
            };
            return self.run_pending(p);
        }
        if let Some(followers) = self.in_flight.get_mut(&rid) {
            followers.push(Follower { id, mode, started });
            return;
        }
        self.in_flight.insert(rid.clone(), Vec::new());
        let access_payload = cached.is_none().then(|| self.access_payload(&rid));
        self.spawn_resource(id, mode, rid, access_payload, cached, started, mode_label(mode));
    }

    fn access_payload(&self, rid: &str) -> Vec<u8> {
        let key = self.key_of(rid);
        let (_, query) = res_protocol::rid::split_query(&key);
        self.request_fields(query, None).encode()
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_resource(
        &self,
        id: u64,
        mode: Mode,
        rid: Arc<str>,
        access_payload: Option<Vec<u8>>,
        cached: Option<Access>,
        started: Instant,
        label: &'static str,
    ) {
        let shared = self.shared.clone();
        let tx = self.tx.clone();
        let key = self.key_of(&rid);
        tokio::spawn(
            async move {
                let access = async {
                    match access_payload {
                        Some(p) => Some(shared.access(&key, p).await),
                        None => cached.map(Ok),
                    }
                };
                let (access, graph) = tokio::join!(access, shared.cache.load_graph(&key));
                tx.send(ConnMsg::Done(Box::new(Completion::Resource { id, mode, rid, access, graph, started, label })));
            }
            .in_current_span(),
        );
    }

    fn unsubscribe(&mut self, id: u64, rid: &str, params: Option<&RawValue>, started: Instant) {
        let count = match client::unsubscribe_count(params) {
            Ok(c) => c,
            Err(e) => return self.reply_error(id, &e),
        };
        match self.subs.get_mut(rid) {
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
        let rid: Arc<str> = Arc::from(rid);
        let key = self.key_of(&rid);
        let (name, _) = res_protocol::rid::split_query(&key);
        if !self.shared.nats.subject_fits("call.".len() + name.len() + 1 + method.len()) {
            // Checked before the access request, which has a shorter subject.
            return self.reply_error(id, &ResError::subject_too_long());
        }
        let call = PendingCall {
            id,
            method: method.to_owned(),
            params: params.map(ToOwned::to_owned),
            is_new,
            started,
            span: tracing::Span::current(),
        };
        if let Some(waiting) = self.access_waiting.get_mut(&rid) {
            return waiting.push(call);
        }
        match self.subs.get(&rid).and_then(|s| s.access.clone()) {
            Some(access) => self.send_call(&rid, Ok(&access), call),
            None => {
                self.access_waiting.insert(rid.clone(), vec![call]);
                let payload = self.access_payload(&rid);
                let shared = self.shared.clone();
                let tx = self.tx.clone();
                tokio::spawn(
                    async move {
                        let result = shared.access(&key, payload).await;
                        tx.send(ConnMsg::Done(Box::new(Completion::CallAccess { rid, result })));
                    }
                    .in_current_span(),
                );
            }
        }
    }

    /// The access check the calls on `rid` waited for: they go out in the order they came.
    fn call_access(&mut self, rid: Arc<str>, result: Result<Access, ResError>) {
        let calls = self.access_waiting.remove(&rid).unwrap_or_default();
        if let (Ok(a), Some(sub)) = (&result, self.subs.get_mut(&rid)) {
            sub.access = Some(a.clone());
        }
        for call in calls {
            self.send_call(&rid, result.as_ref(), call);
        }
    }

    /// Publishes a call the access allows (from the connection task, so calls reach the
    /// service in the order the client made them), or answers the denial.
    fn send_call(&mut self, rid: &Arc<str>, access: Result<&Access, &ResError>, call: PendingCall) {
        let PendingCall { id, method, params, is_new, started, span } = call;
        let denied = match access {
            Ok(a) if a.can_call(&method) => None,
            Ok(_) => Some(ResError::access_denied()),
            Err(e) => Some(e.clone()),
        };
        if let Some(e) = denied {
            self.observe("call", started);
            return self.reply_error(id, &e);
        }
        let key = self.key_of(rid);
        let (name, query) = res_protocol::rid::split_query(&key);
        let subject = format!("call.{name}.{method}");
        let payload = self.request_fields(query, params.as_deref()).encode();
        let tx = self.tx.clone();
        // In the client request's trace, whenever the access check let it go.
        let _in_request = span.enter();
        let reply = self.shared.call_ordered(&subject, payload, Some(&self.tx), &key, move |(result, _)| {
            let c = Completion::Call { id, result, is_new, started, label: "call" };
            tx.send(ConnMsg::Done(Box::new(c)));
        });
        tokio::spawn(reply.in_current_span());
    }

    fn auth(&mut self, id: u64, rid: &str, method: &str, params: Option<&RawValue>, started: Instant) {
        let rid: Arc<str> = Arc::from(rid);
        let key = self.key_of(&rid);
        let (name, query) = res_protocol::rid::split_query(&key);
        let subject = format!("auth.{name}.{method}");
        if !self.shared.nats.subject_fits(subject.len()) {
            return self.reply_error(id, &ResError::subject_too_long());
        }
        let payload = self.request_fields(query, params).encode_with(Some(&self.http));
        let tx = self.tx.clone();
        let reply = self.shared.call_ordered(&subject, payload, Some(&self.tx), &key, move |(result, _)| {
            let c = Completion::Call { id, result, is_new: false, started, label: "auth" };
            tx.send(ConnMsg::Done(Box::new(c)));
        });
        tokio::spawn(reply.in_current_span());
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
                let rids: Vec<Arc<str>> = self
                    .subs
                    .iter()
                    .filter(|(_, s)| patterns.iter().any(|p| p.matches(s.entry.name())))
                    .map(|(k, _)| k.clone())
                    .collect();
                for rid in rids {
                    self.reaccess(&rid);
                }
            }
            // The rest of a direct write is written at the start of the turn.
            ConnMsg::Unblock(_) | ConnMsg::Flush => {}
        }
    }

    fn completion(&mut self, c: Completion) {
        match c {
            Completion::Resource { id, mode, rid, access, graph, started, label } => {
                let followers = match mode {
                    Mode::CallResource => Vec::new(),
                    _ => self.in_flight.remove(&rid).unwrap_or_default(),
                };
                let access = match access {
                    Some(Ok(a)) if a.get => Some(a),
                    Some(Ok(_)) => {
                        return self.resource_failed(
                            id,
                            mode,
                            &rid,
                            ResError::access_denied(),
                            started,
                            label,
                            followers,
                        );
                    }
                    Some(Err(e)) => return self.resource_failed(id, mode, &rid, e, started, label, followers),
                    None => None,
                };
                let graph = match graph {
                    Ok(g) => g,
                    Err(e) => return self.resource_failed(id, mode, &rid, e, started, label, followers),
                };
                let Graph { entries: pins, errors } = graph;
                self.run_pending(Pending::Reply { id, mode, rid, access, errors, pins, started, label, followers });
            }
            Completion::CallAccess { rid, result } => self.call_access(rid, result),
            Completion::Call { id, result, is_new, started, label } => {
                self.call_result(id, result, is_new, started, label);
            }
            Completion::Access { rid, result } => {
                let Some(sub) = self.subs.get_mut(&rid) else { return };
                match result {
                    Ok(a) if a.get => sub.access = Some(a),
                    Ok(_) => self.revoke(&rid, ResError::access_denied()),
                    Err(e) if e.code == code::ACCESS_DENIED || e.code == code::NOT_FOUND => self.revoke(&rid, e),
                    Err(e) => tracing::debug!(%rid, error = %e, "access re-check failed; keeping subscription"),
                }
            }
        }
    }

    /// A subscribe/get (and those that followed it) fails; a call's resource response still
    /// succeeds, with the resource's error in `errors`.
    #[allow(clippy::too_many_arguments)]
    fn resource_failed(
        &mut self,
        id: u64,
        mode: Mode,
        rid: &str,
        err: ResError,
        started: Instant,
        label: &'static str,
        followers: Vec<Follower>,
    ) {
        self.resource_denied(id, mode, rid, err.clone(), started, label);
        for f in followers {
            self.resource_denied(f.id, f.mode, rid, err.clone(), f.started, mode_label(f.mode));
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
                let rid: Arc<str> = Arc::from(rid.as_str());
                let cached = self.subs.get(&rid).and_then(|s| s.access.clone());
                let access_payload = cached.is_none().then(|| self.access_payload(&rid));
                self.spawn_resource(id, Mode::CallResource, rid, access_payload, cached, started, label);
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
            let mut pins = HashMap::new();
            let mut errors = HashMap::new();
            for key in missing {
                match cache.load_graph(&key).await {
                    Ok(g) => {
                        pins.extend(g.entries);
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

    /// Subscribes (indirectly, for now) every unattached resource reachable from `roots`.
    /// Returns the cache keys of those that are not loaded.
    fn attach(
        &mut self,
        roots: &[Arc<str>],
        errors: &HashMap<Arc<str>, ResError>,
        pins: &HashMap<Arc<str>, Arc<Entry>>,
    ) -> Vec<Arc<str>> {
        let mut missing = Vec::new();
        let mut visited = HashSet::new();
        let mut stack: Vec<Arc<str>> = roots.to_vec();
        let legacy = self.legacy();
        while let Some(rid) = stack.pop() {
            if errors.contains_key(&rid) || !visited.insert(rid.clone()) {
                continue;
            }
            if let Some(sub) = self.subs.get(&rid) {
                stack.extend(sub.refs.iter().cloned());
                continue;
            }
            let key = self.key_of(&rid);
            let entry = pins.get(&key).cloned().or_else(|| self.shared.cache.get_ready(&key));
            let Some(entry) = entry else {
                missing.push(key);
                continue;
            };
            let held = self.by_entry.contains_key(&entry.id);
            if !held {
                self.tx.hold(&entry);
            }
            match entry.register(self.id, &self.outlet, legacy) {
                Some(snap) => {
                    stack.extend(snap.refs.iter().cloned());
                    let rids = self.by_entry.remove(&entry.id);
                    let rids: Vec<Arc<str>> =
                        rids.iter().flat_map(|r| r.iter().cloned()).chain([rid.clone()]).collect();
                    if rids.len() > 1 {
                        // Each subscription takes the event under its own ID: the task writes it.
                        entry.set_direct(self.id, false);
                    }
                    self.by_entry.insert(entry.id, rids.into());
                    let sub = Sub {
                        entry,
                        direct: 0,
                        refs: snap.refs,
                        version: snap.version,
                        access: None,
                        unsent: Some((snap.is_model, snap.json)),
                    };
                    self.subs.insert(rid, sub);
                }
                None => {
                    if !held {
                        self.tx.let_go(entry.id);
                    }
                    missing.push(key);
                }
            }
        }
        missing
    }

    /// Drops a subscription, and the connection's registration on its entry with the last one.
    fn remove_sub(&mut self, rid: &Arc<str>) {
        let Some(sub) = self.subs.remove(rid) else { return };
        let id = sub.entry.id;
        sub.entry.set_direct(self.id, false);
        let rest: Vec<Arc<str>> =
            self.by_entry.remove(&id).iter().flat_map(|r| r.iter()).filter(|r| *r != rid).cloned().collect();
        if rest.is_empty() {
            self.tx.let_go(id);
            self.shared.cache.unregister(&sub.entry, self.id);
        } else {
            self.by_entry.insert(id, rest.into());
        }
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
        while let Some(rid) = stack.pop() {
            if !visited.insert(rid.clone()) {
                continue;
            }
            if let Some(e) = errors.get(&rid) {
                if !self.subs.contains_key(&rid) {
                    errs.push((rid, e.to_json()));
                }
                continue;
            }
            let Some(sub) = self.subs.get_mut(&rid) else { continue };
            if let Some((is_model, json)) = sub.unsent.take() {
                stack.extend(sub.refs.iter().cloned());
                if *sub.entry.key == *rid && self.by_entry.get(&sub.entry.id).is_some_and(|r| r.len() == 1) {
                    // Sent under the entry's own ID, the only subscription on it: its simple
                    // events can go straight to the socket once the task is idle.
                    sub.entry.set_direct(self.id, true);
                }
                if is_model { &mut models } else { &mut collections }.push((rid, json));
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
            Pending::Reply { id, mode, rid, access, errors, pins: _, started, label, followers } => {
                if let Some(sub) = self.subs.get_mut(&rid) {
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
                    write_str(&mut res, &rid);
                    let mut set = Vec::new();
                    let wrote = self.write_resource_set(&mut set, std::slice::from_ref(&rid), &errors);
                    if wrote {
                        res.push(b',');
                        res.extend_from_slice(&set);
                    }
                    wrote
                } else {
                    self.write_resource_set(&mut res, std::slice::from_ref(&rid), &errors)
                };
                res.push(b'}');
                self.observe(label, started);
                self.push(client::result_frame(id, &res));
                // The followers find the resources sent already: as in Resgate, a subscribe adds
                // a direct subscription and both answer with no resources.
                for f in followers {
                    if f.mode == Mode::Subscribe
                        && let Some(sub) = self.subs.get_mut(&rid)
                    {
                        sub.direct += 1;
                    }
                    self.observe(mode_label(f.mode), f.started);
                    self.push(client::result_frame(f.id, b"{}"));
                }
                // Resources a get attached are written in its reply; with none written, the get
                // attached nothing, and there is nothing for a sweep to drop.
                if mode == Mode::Get && wrote {
                    self.collect_garbage();
                }
            }
            Pending::Event { ev, rids, errors, pins: _ } => {
                let legacy = self.legacy();
                for rid in rids {
                    if !self.subs.contains_key(&rid) {
                        continue;
                    }
                    // The resources the event adds go with the first frame that needs them.
                    let mut set = Vec::new();
                    if self.write_resource_set(&mut set, &ev.added_refs, &errors) {
                        let mut data = Vec::with_capacity(set.len() + 128);
                        ev.write_data(&mut data, legacy, true);
                        data.push(b',');
                        data.extend_from_slice(&set);
                        data.push(b'}');
                        self.push(client::event_frame(&rid, ev.name(), Some(&data)));
                    } else {
                        self.out.push(ev.frame(&rid, legacy));
                    }
                }
                if !ev.removed_refs.is_empty() {
                    self.collect_garbage();
                }
            }
        }
    }

    // === Events ===

    fn event(&mut self, ev: Arc<ResourceEvent>) {
        let Some(rids) = self.by_entry.get(&ev.entry_id).cloned() else { return };
        match &ev.kind {
            EventKind::Custom { .. } => {
                let legacy = self.legacy();
                for rid in rids.iter() {
                    self.out.push(ev.frame(rid, legacy));
                }
            }
            EventKind::Reaccess => {
                for rid in rids.iter() {
                    self.reaccess(rid);
                }
            }
            // The usual case, one subscription on the entry: no list to build.
            _ if rids.len() == 1 => {
                if self.take_event(&rids[0], &ev) {
                    self.deliver_event(ev, &rids);
                }
            }
            _ => {
                let taking: Vec<Arc<str>> = rids.iter().filter(|rid| self.take_event(rid, &ev)).cloned().collect();
                if !taking.is_empty() {
                    self.deliver_event(ev, &taking);
                }
            }
        }
    }

    /// Applies an event to one subscription's state; `false` when its snapshot already had it.
    fn take_event(&mut self, rid: &Arc<str>, ev: &ResourceEvent) -> bool {
        let Some(sub) = self.subs.get_mut(rid) else { return false };
        if ev.version <= sub.version {
            return false;
        }
        sub.version = ev.version;
        for r in &ev.removed_refs {
            if let Some(i) = sub.refs.iter().position(|x| x == r) {
                sub.refs.swap_remove(i);
            }
        }
        sub.refs.extend(ev.added_refs.iter().cloned());
        true
    }

    /// Writes an applied event for the subscriptions that took it.
    fn deliver_event(&mut self, ev: Arc<ResourceEvent>, rids: &[Arc<str>]) {
        if matches!(ev.kind, EventKind::Delete(_)) {
            let legacy = self.legacy();
            for rid in rids {
                let direct = self.subs.get(rid).map_or(0, |s| s.direct);
                self.out.push(ev.frame(rid, legacy));
                if direct > 0 {
                    self.push_unsubscribe_event(rid, &ResError::deleted());
                }
                self.remove_sub(rid);
            }
            self.collect_garbage();
            return;
        }
        if ev.added_refs.is_empty() {
            let legacy = self.legacy();
            for rid in rids {
                self.out.push(ev.frame(rid, legacy));
            }
            if !ev.removed_refs.is_empty() {
                self.collect_garbage();
            }
            return;
        }
        let rids = rids.to_vec();
        self.run_pending(Pending::Event { ev, rids, errors: HashMap::new(), pins: HashMap::new() });
    }

    fn push_unsubscribe_event(&mut self, rid: &str, reason: &ResError) {
        let mut data = b"{\"reason\":".to_vec();
        data.extend_from_slice(&reason.to_json());
        data.push(b'}');
        self.push(client::event_frame(rid, "unsubscribe", Some(&data)));
    }

    /// Access for a resource may have changed: forget it, and re-check direct subscriptions.
    fn reaccess(&mut self, rid: &Arc<str>) {
        let Some(sub) = self.subs.get_mut(rid) else { return };
        sub.access = None;
        if sub.direct == 0 {
            return;
        }
        let payload = self.access_payload(rid);
        let shared = self.shared.clone();
        let tx = self.tx.clone();
        let rid = rid.clone();
        let key = self.key_of(&rid);
        tokio::spawn(async move {
            let result = shared.access(&key, payload).await;
            tx.send(ConnMsg::Done(Box::new(Completion::Access { rid, result })));
        });
    }

    /// Access was denied: the client loses its direct subscription.
    fn revoke(&mut self, rid: &Arc<str>, reason: ResError) {
        let Some(sub) = self.subs.get_mut(rid) else { return };
        if sub.direct == 0 {
            return;
        }
        sub.direct = 0;
        self.push_unsubscribe_event(rid, &reason);
        self.collect_garbage();
    }

    fn token_event(&mut self, ev: TokenEvent) {
        let had_token = self.token.is_some();
        self.tid = ev.tid.clone();
        self.token = ev.into_token().map(Arc::from);
        // Cached access was granted to the old token. Like Resgate, subscriptions are only
        // re-checked when the old token was not null; the cache is cleared either way so that
        // calls after a login are checked with the new token.
        let rids: Vec<Arc<str>> = self.subs.keys().cloned().collect();
        for rid in rids {
            if had_token {
                self.reaccess(&rid);
            } else if let Some(s) = self.subs.get_mut(&rid) {
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
            // Only the token event it causes matters; the reply is not waited for in order.
            if let Err(e) = shared.nats.request("auth", &subject, payload).await {
                tracing::debug!(subject, error = %e, "token reset auth request failed");
            }
        });
    }

    /// Drops every subscription no longer reachable from a direct one.
    fn collect_garbage(&mut self) {
        let mut reachable: HashSet<Arc<str>> = HashSet::new();
        let mut stack: Vec<Arc<str>> = self.subs.iter().filter(|(_, s)| s.direct > 0).map(|(k, _)| k.clone()).collect();
        while let Some(rid) = stack.pop() {
            if reachable.contains(&rid) {
                continue;
            }
            if let Some(s) = self.subs.get(&rid) {
                stack.extend(s.refs.iter().cloned());
                reachable.insert(rid);
            }
        }
        if reachable.len() == self.subs.len() {
            return;
        }
        let gone: Vec<Arc<str>> = self.subs.keys().filter(|k| !reachable.contains(*k)).cloned().collect();
        for rid in gone {
            self.remove_sub(&rid);
        }
    }

    /// Nothing of the connection's own waits: no operation blocked on loading, nothing queued
    /// behind it.
    pub fn is_settled(&self) -> bool {
        self.blocked.is_none() && self.queue.is_empty()
    }

    /// Leaves every cached resource (the connection is closing).
    pub fn dispose(&mut self) {
        self.tx.close_direct();
        self.by_entry.clear();
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
