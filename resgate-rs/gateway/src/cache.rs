//! The resource cache shared by every connection.
//!
//! One entry per resource ID (as services see it, `{cid}` replaced), loaded once however many
//! clients want it (concurrent loads share one `get`), kept current by the service's events, and
//! evicted `unsubscribe_delay` after its last subscriber leaves — at which point the gateway stops
//! listening for its events.
//!
//! Invariants:
//! - An entry's NATS event subscription (`event.<name>.*`, one per resource name) exists before
//!   its `get` request is sent, so no event published after the service answered can be missed.
//! - Events are applied per resource name in arrival order (one task per name), and each applied
//!   event bumps the entry's version. A connection registers on an entry and takes its snapshot in
//!   one step under the entry lock, so it receives exactly the events after its snapshot.
//! - An event is encoded once (per client protocol class) and the same bytes are queued to every
//!   subscribed connection.

use crate::conn::{ConnId, ConnTx};
use crate::diff;
use crate::metrics::Metrics;
use crate::nats::{Nats, Route, Subscription};
use bytes::Bytes;
use parking_lot::Mutex;
use res_protocol::json::{write_str, write_u64};
use res_protocol::pattern::ResourcePattern;
use res_protocol::rid::split_query;
use res_protocol::service::{self, QueryResult};
use res_protocol::value::{ResourceData, Value};
use res_protocol::{ResError, code};
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{OnceCell, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A resource event, decoded and applied, ready to be written to clients.
pub struct ResourceEvent {
    pub key: Arc<str>,
    pub version: u64,
    pub kind: EventKind,
    /// Hard references this event adds to / removes from the resource.
    pub added_refs: Vec<Arc<str>>,
    pub removed_refs: Vec<Arc<str>>,
    frames: [OnceLock<Utf8Bytes>; 2],
}

pub enum EventKind {
    Change(Vec<(String, Value)>),
    Add { idx: usize, value: Value },
    Remove { idx: usize },
    Delete,
    Reaccess,
    Custom { name: String, payload: Option<Box<RawValue>> },
}

impl ResourceEvent {
    fn new(key: Arc<str>, version: u64, kind: EventKind) -> ResourceEvent {
        ResourceEvent {
            key,
            version,
            kind,
            added_refs: Vec::new(),
            removed_refs: Vec::new(),
            frames: Default::default(),
        }
    }

    pub fn name(&self) -> &str {
        match &self.kind {
            EventKind::Change(_) => "change",
            EventKind::Add { .. } => "add",
            EventKind::Remove { .. } => "remove",
            EventKind::Delete => "delete",
            EventKind::Reaccess => "reaccess",
            EventKind::Custom { name, .. } => name,
        }
    }

    /// The event's data object without its closing brace (so a resource set can be appended), or
    /// the whole payload for custom events; `None` when the event has no data.
    pub fn write_data(&self, out: &mut Vec<u8>, legacy: bool, open: bool) -> bool {
        match &self.kind {
            EventKind::Change(values) => {
                out.extend_from_slice(b"{\"values\":");
                res_protocol::value::write_model(out, values.iter().map(|(k, v)| (k, v)), legacy);
            }
            EventKind::Add { idx, value } => {
                out.extend_from_slice(b"{\"idx\":");
                write_u64(out, *idx as u64);
                out.extend_from_slice(b",\"value\":");
                value.write_client(out, legacy);
            }
            EventKind::Remove { idx } => {
                out.extend_from_slice(b"{\"idx\":");
                write_u64(out, *idx as u64);
            }
            EventKind::Custom { payload: Some(p), .. } => {
                out.extend_from_slice(p.get().as_bytes());
                return true;
            }
            EventKind::Custom { payload: None, .. } | EventKind::Delete | EventKind::Reaccess => return false,
        }
        if !open {
            out.push(b'}');
        }
        true
    }

    /// The complete client frame for `client_rid`; cached when the rid is the entry's own.
    pub fn frame(&self, client_rid: &str, legacy: bool) -> Utf8Bytes {
        if client_rid == &*self.key {
            return self.frames[legacy as usize].get_or_init(|| self.build_frame(client_rid, legacy)).clone();
        }
        self.build_frame(client_rid, legacy)
    }

    fn build_frame(&self, client_rid: &str, legacy: bool) -> Utf8Bytes {
        let mut data = Vec::new();
        let has = self.write_data(&mut data, legacy, false);
        text(res_protocol::client::event_frame(client_rid, self.name(), has.then_some(&data[..])))
    }

    /// Approximate bytes this event occupies in a client's queue.
    pub fn cost(&self) -> usize {
        self.frames[0].get().map_or(256, |f| f.len() + 64)
    }
}

/// A frame's bytes as WebSocket text. Frames are assembled from UTF-8 parts, so the lossy path
/// never runs; it only keeps a bug from becoming a panic.
pub fn text(frame: Vec<u8>) -> Utf8Bytes {
    match String::from_utf8(frame) {
        Ok(s) => Utf8Bytes::from(s),
        Err(e) => Utf8Bytes::from(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

/// A consistent view of a loaded entry, taken when a connection registers.
pub struct Snapshot {
    pub version: u64,
    pub is_model: bool,
    pub json: Bytes,
    pub refs: Vec<Arc<str>>,
}

#[derive(Default)]
struct EntryState {
    data: Option<ResourceData>,
    /// The normalised query, for query resources (which take only query events).
    query: Option<String>,
    version: u64,
    encoded: [Option<Bytes>; 2],
    subscribers: HashMap<ConnId, ConnTx>,
    deleted: bool,
}

/// A cached resource.
pub struct Entry {
    pub key: Arc<str>,
    loaded: OnceCell<Result<(), ResError>>,
    /// Set when the service normalised this entry's query to one already cached: that entry
    /// serves both.
    alias: std::sync::OnceLock<Arc<Entry>>,
    /// Every cache key that resolves to this entry (its own, plus aliased queries).
    keys: Mutex<Vec<Arc<str>>>,
    state: Mutex<EntryState>,
}

impl Entry {
    fn new(key: Arc<str>) -> Entry {
        Entry {
            keys: Mutex::new(vec![key.clone()]),
            key,
            loaded: OnceCell::new(),
            alias: std::sync::OnceLock::new(),
            state: Mutex::new(EntryState::default()),
        }
    }

    pub fn name(&self) -> &str {
        split_query(&self.key).0
    }

    fn is_ready(&self) -> bool {
        matches!(self.loaded.get(), Some(Ok(())))
    }

    /// Registers a connection and returns its starting snapshot; `None` if the entry is not
    /// loaded or was deleted.
    pub fn register(&self, conn: ConnId, tx: &ConnTx, legacy: bool) -> Option<Snapshot> {
        if !self.is_ready() {
            return None;
        }
        let mut st = self.state.lock();
        if st.deleted {
            return None;
        }
        st.subscribers.insert(conn, tx.clone());
        Some(snapshot(&mut st, legacy))
    }

    /// The hard references of the current data, without encoding it.
    fn references(&self) -> Vec<Arc<str>> {
        let st = self.state.lock();
        st.data.as_ref().map(|d| d.hard_references().map(Arc::from).collect()).unwrap_or_default()
    }

    /// The current data (for the HTTP API encoders).
    pub fn data(&self) -> Option<ResourceData> {
        self.state.lock().data.clone()
    }

    /// Returns whether that was the last subscriber.
    fn unregister(&self, conn: ConnId) -> bool {
        let mut st = self.state.lock();
        st.subscribers.remove(&conn).is_some() && st.subscribers.is_empty()
    }

    fn subscriber_count(&self) -> usize {
        self.state.lock().subscribers.len()
    }

    fn is_query(&self) -> bool {
        self.state.lock().query.is_some()
    }

    /// Applies an event under the lock and queues it to every subscriber. Returns the number of
    /// deliveries.
    fn apply(&self, event_name: &str, payload: &[u8], metrics: &Metrics) -> usize {
        let mut st = self.state.lock();
        // Resgate discards events that arrive before the get response: the response already
        // reflects them. The response is stored in wire order with the events (`Cache::fetch`).
        if st.deleted || st.data.is_none() {
            return 0;
        }
        let kind = match decode_event(event_name, payload, st.data.as_ref()) {
            Ok(Some(kind)) => kind,
            Ok(None) => return 0,
            Err(e) => {
                tracing::warn!(rid = %self.key, event = event_name, error = %e, "dropping invalid event");
                return 0;
            }
        };
        let n = self.apply_kind(&mut st, kind);
        metrics.event_deliveries.inc_by(n as u64);
        n
    }

    fn apply_kind(&self, st: &mut EntryState, kind: EventKind) -> usize {
        let next = st.version + 1;
        let mut ev = ResourceEvent::new(self.key.clone(), next, kind);
        match (&mut ev.kind, st.data.as_mut()) {
            (EventKind::Change(values), Some(ResourceData::Model(model))) => {
                let mut applied = Vec::with_capacity(values.len());
                for (k, v) in values.drain(..) {
                    let old = match &v {
                        Value::Delete => match model.remove(&k) {
                            Some(old) => old,
                            None => continue,
                        },
                        _ => match model.get(&k) {
                            Some(old) if *old == v => continue,
                            _ => match model.insert(k.clone(), v.clone()) {
                                Some(old) => old,
                                None => Value::Delete,
                            },
                        },
                    };
                    if let Some(r) = old.hard_reference() {
                        ev.removed_refs.push(r.into());
                    }
                    if let Some(r) = v.hard_reference() {
                        ev.added_refs.push(r.into());
                    }
                    applied.push((k, v));
                }
                if applied.is_empty() {
                    return 0;
                }
                *values = applied;
            }
            (EventKind::Add { idx, value }, Some(ResourceData::Collection(c))) => {
                if *idx > c.len() {
                    tracing::warn!(rid = %self.key, idx, len = c.len(), "add event index out of range");
                    return 0;
                }
                if let Some(r) = value.hard_reference() {
                    ev.added_refs.push(r.into());
                }
                c.insert(*idx, value.clone());
            }
            (EventKind::Remove { idx }, Some(ResourceData::Collection(c))) => {
                if *idx >= c.len() {
                    tracing::warn!(rid = %self.key, idx, len = c.len(), "remove event index out of range");
                    return 0;
                }
                if let Some(r) = c.remove(*idx).hard_reference() {
                    ev.removed_refs.push(r.into());
                }
            }
            (EventKind::Delete, Some(data)) => {
                ev.removed_refs = data.hard_references().map(Arc::from).collect();
                st.deleted = true;
            }
            (EventKind::Reaccess | EventKind::Custom { .. }, _) => {}
            (kind, _) => {
                tracing::warn!(rid = %self.key, event = ev_name(kind), "event does not fit the resource type; dropped");
                return 0;
            }
        }
        if !matches!(ev.kind, EventKind::Reaccess | EventKind::Custom { .. }) {
            st.version = next;
            st.encoded = [None, None];
        } else {
            ev.version = st.version;
        }
        if !st.subscribers.is_empty() {
            // Encode once here, not in every connection task.
            let _ = ev.frame(&self.key.clone(), false);
        }
        let ev = Arc::new(ev);
        let mut delivered = 0;
        for tx in st.subscribers.values() {
            if tx.send_event(&ev) {
                delivered += 1;
            }
        }
        delivered
    }
}

fn ev_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::Change(_) => "change",
        EventKind::Add { .. } => "add",
        EventKind::Remove { .. } => "remove",
        _ => "other",
    }
}

fn snapshot(st: &mut EntryState, legacy: bool) -> Snapshot {
    let data = st.data.as_ref().expect("ready entries have data");
    let json = st.encoded[legacy as usize]
        .get_or_insert_with(|| {
            let mut out = Vec::with_capacity(128);
            data.write_client(&mut out, legacy);
            Bytes::from(out)
        })
        .clone();
    Snapshot {
        version: st.version,
        is_model: data.is_model(),
        json,
        refs: data.hard_references().map(Arc::from).collect(),
    }
}

/// Decodes a service event into what to apply. `Ok(None)`: nothing for clients (e.g. reserved
/// names the gateway does not forward).
fn decode_event(name: &str, payload: &[u8], data: Option<&ResourceData>) -> Result<Option<EventKind>, ResError> {
    Ok(Some(match name {
        "change" => {
            if !matches!(data, Some(ResourceData::Model(_))) {
                return Err(ResError::internal("change event on a collection"));
            }
            EventKind::Change(service::decode_change_event(payload)?.into_iter().collect())
        }
        "add" => {
            let ev = service::decode_add_event(payload)?;
            EventKind::Add {
                idx: usize::try_from(ev.idx).map_err(|_| ResError::internal("negative idx"))?,
                value: ev.value,
            }
        }
        "remove" => {
            let ev = service::decode_remove_event(payload)?;
            EventKind::Remove { idx: usize::try_from(ev.idx).map_err(|_| ResError::internal("negative idx"))? }
        }
        "delete" => EventKind::Delete,
        "reaccess" => EventKind::Reaccess,
        // Reserved names with no client meaning; `query` is handled by the name task.
        "create" | "patch" | "reset" | "unsubscribe" | "query" => return Ok(None),
        custom => {
            if !res_protocol::is_valid_rid_part(custom) {
                return Ok(None);
            }
            let payload = if payload.is_empty() {
                None
            } else {
                Some(serde_json::from_slice::<Box<RawValue>>(payload).map_err(ResError::internal)?)
            };
            EventKind::Custom { name: custom.to_owned(), payload }
        }
    }))
}

/// The result of loading a resource and everything it references.
pub struct Graph {
    /// Every loaded entry of the graph, keyed by resource ID (keeps them from eviction).
    pub entries: HashMap<Arc<str>, Arc<Entry>>,
    pub errors: HashMap<Arc<str>, ResError>,
}

struct NameSub {
    keys: HashSet<Arc<str>>,
    /// The event subscription's route, for requests whose replies must keep their place among
    /// the events.
    ready: Arc<OnceCell<Result<Route, ResError>>>,
    task: Option<tokio::task::AbortHandle>,
}

struct Inner {
    entries: Mutex<HashMap<Arc<str>, Arc<Entry>>>,
    names: Mutex<HashMap<String, NameSub>>,
    evictions: Mutex<VecDeque<(Instant, Arc<str>)>>,
    nats: Nats,
    metrics: Arc<Metrics>,
    unsubscribe_delay: Duration,
    reference_throttle: usize,
    reset_throttle: usize,
}

/// The shared cache. Cheap to clone.
#[derive(Clone)]
pub struct Cache(Arc<Inner>);

impl Cache {
    pub fn new(
        nats: Nats,
        metrics: Arc<Metrics>,
        unsubscribe_delay: Duration,
        reference_throttle: usize,
        reset_throttle: usize,
    ) -> Cache {
        let cache = Cache(Arc::new(Inner {
            entries: Mutex::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            evictions: Mutex::new(VecDeque::new()),
            nats,
            metrics,
            unsubscribe_delay,
            reference_throttle,
            reset_throttle,
        }));
        tokio::spawn(evictor(Arc::downgrade(&cache.0)));
        cache
    }

    /// A cached, loaded entry, if there is one.
    pub fn get_ready(&self, key: &str) -> Option<Arc<Entry>> {
        self.0.entries.lock().get(key).filter(|e| e.is_ready()).cloned()
    }

    /// Loads one resource (sharing an in-flight load), returning the ready entry.
    pub async fn load(&self, key: &str) -> Result<Arc<Entry>, ResError> {
        let entry = {
            let mut entries = self.0.entries.lock();
            match entries.get(key) {
                Some(e) => e.clone(),
                None => {
                    let e = Arc::new(Entry::new(Arc::from(key)));
                    entries.insert(e.key.clone(), e.clone());
                    self.0.metrics.cache_resources.set(entries.len() as i64);
                    e
                }
            }
        };
        let result = entry.loaded.get_or_init(|| self.fetch(&entry)).await.clone();
        match result {
            Ok(()) => Ok(entry.alias.get().cloned().unwrap_or(entry)),
            Err(e) => {
                self.remove_entry(&entry);
                Err(e)
            }
        }
    }

    async fn fetch(&self, entry: &Arc<Entry>) -> Result<(), ResError> {
        let (name, query) = split_query(&entry.key);
        let route = self.ensure_event_subscription(name, &entry.key).await?;
        // The reply is stored by the event task, between the events NATS delivered before it
        // (discarded) and those after (applied).
        let target = entry.clone();
        let has_query = query.is_some();
        let store = move |reply: Result<Bytes, ResError>| {
            let result = service::decode_get(&reply?)?;
            let mut st = target.state.lock();
            st.query = if has_query { result.query } else { None };
            st.data = Some(result.data);
            Ok(())
        };
        self.0.nats.request_via("get", &format!("get.{name}"), service::get_request(query), &route, store).await?;
        let normalized = entry.state.lock().query.clone();
        if let Some(q) = &normalized {
            // Queries that normalise alike share one entry, as in Resgate. The canonical key starts
            // with NUL, which no resource ID can, so a client asking for the normalised query
            // itself still gets a get request of its own (as with Resgate) before sharing.
            let canonical: Arc<str> = Arc::from(format!("\0{name}?{q}"));
            let mut entries = self.0.entries.lock();
            match entries.get(&canonical) {
                Some(existing) if !Arc::ptr_eq(existing, entry) && existing.is_ready() => {
                    let existing = existing.clone();
                    entries.insert(entry.key.clone(), existing.clone());
                    existing.keys.lock().push(entry.key.clone());
                    let _ = entry.alias.set(existing);
                    return Ok(());
                }
                Some(_) => {}
                None => {
                    entries.insert(canonical.clone(), entry.clone());
                    entry.keys.lock().push(canonical.clone());
                    drop(entries);
                    if let Some(ns) = self.0.names.lock().get_mut(name) {
                        ns.keys.insert(canonical);
                    }
                }
            }
        }
        self.schedule_eviction(entry.key.clone());
        Ok(())
    }

    /// Removes every key that resolves to `entry`.
    fn remove_entry(&self, entry: &Arc<Entry>) {
        let keys = entry.keys.lock().clone();
        let mut entries = self.0.entries.lock();
        let mut removed = Vec::new();
        for k in keys {
            if entries.get(&k).is_some_and(|e| Arc::ptr_eq(e, entry)) {
                entries.remove(&k);
                removed.push(k);
            }
        }
        self.0.metrics.cache_resources.set(entries.len() as i64);
        drop(entries);
        for k in removed {
            self.forget_name_key(entry.name(), &k);
        }
    }

    async fn ensure_event_subscription(&self, name: &str, key: &Arc<str>) -> Result<Route, ResError> {
        let ready = {
            let mut names = self.0.names.lock();
            let sub = names.entry(name.to_owned()).or_insert_with(|| NameSub {
                keys: HashSet::new(),
                ready: Arc::new(OnceCell::new()),
                task: None,
            });
            sub.keys.insert(key.clone());
            sub.ready.clone()
        };
        ready
            .get_or_init(|| async {
                let sub = self
                    .0
                    .nats
                    .subscribe(&format!("event.{name}.*"))
                    .map_err(|e| ResError::internal(format!("subscribing to events: {e}")))?;
                let route = sub.route();
                let task = tokio::spawn(name_events(Arc::downgrade(&self.0), name.to_owned(), sub));
                if let Some(ns) = self.0.names.lock().get_mut(name) {
                    ns.task = Some(task.abort_handle());
                } else {
                    task.abort();
                }
                Ok(route)
            })
            .await
            .clone()
    }

    fn forget_name_key(&self, name: &str, key: &Arc<str>) {
        let mut names = self.0.names.lock();
        if let Some(ns) = names.get_mut(name) {
            ns.keys.remove(key);
            if ns.keys.is_empty() {
                if let Some(t) = ns.task.take() {
                    // Dropping the subscriber in the task unsubscribes from NATS.
                    t.abort();
                }
                names.remove(name);
            }
        }
    }

    /// Loads a resource and, recursively, every resource it references (hard references only).
    /// A failing referenced resource is reported in `errors`; only a failing root fails.
    pub async fn load_graph(&self, key: &str) -> Result<Graph, ResError> {
        let root = self.load(key).await?;
        let mut graph = Graph { entries: HashMap::new(), errors: HashMap::new() };
        graph.entries.insert(root.key.clone(), root.clone());
        let mut frontier: Vec<Arc<str>> = root.references();
        let throttle = (self.0.reference_throttle > 0).then(|| Arc::new(Semaphore::new(self.0.reference_throttle)));
        while !frontier.is_empty() {
            let mut seen = HashSet::new();
            let todo: Vec<Arc<str>> = frontier
                .drain(..)
                .filter(|k| !graph.entries.contains_key(k) && !graph.errors.contains_key(k) && seen.insert(k.clone()))
                .collect();
            let loads = todo.iter().map(|k| {
                let throttle = throttle.clone();
                async move {
                    let _permit = match &throttle {
                        Some(s) => Some(s.acquire().await.expect("semaphore never closed")),
                        None => None,
                    };
                    (k.clone(), self.load(k).await)
                }
            });
            for (k, r) in futures_util::future::join_all(loads).await {
                match r {
                    Ok(e) => {
                        frontier.extend(e.references());
                        graph.entries.insert(k, e);
                    }
                    Err(err) => {
                        graph.errors.insert(k, err);
                    }
                }
            }
        }
        Ok(graph)
    }

    /// Unregisters a connection from an entry, scheduling eviction when it was the last.
    pub fn unregister(&self, entry: &Arc<Entry>, conn: ConnId) {
        if entry.unregister(conn) {
            self.schedule_eviction(entry.key.clone());
        }
    }

    fn schedule_eviction(&self, key: Arc<str>) {
        self.0.evictions.lock().push_back((Instant::now() + self.0.unsubscribe_delay, key));
    }

    pub fn subscription_count(&self) -> usize {
        self.0.entries.lock().values().map(|e| e.subscriber_count()).sum()
    }

    /// Re-fetches every cached resource whose name matches one of `patterns` and turns the
    /// differences into events (system.reset, or after a NATS reconnect).
    pub async fn reset(&self, patterns: &[ResourcePattern]) {
        let targets: Vec<Arc<Entry>> = self
            .0
            .entries
            .lock()
            .values()
            .filter(|e| e.is_ready() && patterns.iter().any(|p| p.matches(e.name())))
            .cloned()
            .collect();
        let mut seen = HashSet::new();
        let targets: Vec<Arc<Entry>> = targets.into_iter().filter(|e| seen.insert(Arc::as_ptr(e) as usize)).collect();
        let throttle =
            Arc::new(Semaphore::new(if self.0.reset_throttle > 0 { self.0.reset_throttle } else { 1 << 20 }));
        let refreshes = targets.into_iter().map(|e| {
            let throttle = throttle.clone();
            async move {
                let _permit = throttle.acquire().await.expect("semaphore never closed");
                self.refresh(&e).await;
            }
        });
        futures_util::future::join_all(refreshes).await;
    }

    async fn refresh(&self, entry: &Arc<Entry>) {
        let (name, raw_query) = split_query(&entry.key);
        // Evicted since the reset listed it: nothing left to refresh.
        let Some(route) = self.event_route(name) else { return };
        // As with the first get, the event task takes the reply in its wire-order place among the
        // resource's events: the diff then neither re-applies an event the reply already holds
        // nor reverts one the service sent after replying.
        let cache = self.clone();
        let target = entry.clone();
        let on_reply = move |reply: Result<Bytes, ResError>| {
            match reply.and_then(|p| service::decode_get(&p)) {
                Ok(r) => cache.replace_data(&target, r.data),
                Err(e) if e.code == code::NOT_FOUND => {
                    let mut st = target.state.lock();
                    target.apply_kind(&mut st, EventKind::Delete);
                    drop(st);
                    cache.remove_entry(&target);
                }
                Err(e) => return Err(e),
            }
            Ok(())
        };
        let subject = format!("get.{name}");
        if let Err(e) =
            self.0.nats.request_via("get", &subject, service::get_request(raw_query), &route, on_reply).await
        {
            tracing::warn!(rid = %entry.key, error = %e, "re-fetch after reset failed");
        }
    }

    /// Where replies go to be handled in order with `name`'s events, if its events are subscribed.
    fn event_route(&self, name: &str) -> Option<Route> {
        self.0.names.lock().get(name)?.ready.get()?.as_ref().ok().cloned()
    }

    /// Replaces an entry's data with a new state, emitting the events between them.
    fn replace_data(&self, entry: &Arc<Entry>, new: ResourceData) {
        let mut st = entry.state.lock();
        let Some(old) = st.data.as_ref() else { return };
        let events = match diff::events(old, &new) {
            Some(events) => events,
            None => {
                tracing::error!(rid = %entry.key, "resource type changed between model and collection; ignored");
                return;
            }
        };
        let mut n = 0;
        for kind in events {
            n += entry.apply_kind(&mut st, kind);
        }
        self.0.metrics.event_deliveries.inc_by(n as u64);
    }
}

/// Receives a resource name's events and applies them, in order.
async fn name_events(cache: std::sync::Weak<Inner>, name: String, mut sub: Subscription) {
    let prefix_len = "event.".len() + name.len() + 1;
    while let Some(msg) = sub.next_message().await {
        let Some(inner) = cache.upgrade() else { return };
        let cache = Cache(inner);
        let Some(event) = msg.subject.get(prefix_len..) else { continue };
        cache.0.metrics.events_received.inc();
        tracing::trace!(subject = %msg.subject, payload = %String::from_utf8_lossy(&msg.payload), "event");
        let keys: Vec<Arc<Entry>> = {
            let names = cache.0.names.lock();
            let entries = cache.0.entries.lock();
            names
                .get(&name)
                .map(|ns| ns.keys.iter().filter_map(|k| entries.get(k).cloned()).collect())
                .unwrap_or_default()
        };
        if event == "query" {
            match serde_json::from_slice::<service::QueryEvent>(&msg.payload) {
                Ok(q) => {
                    for e in keys.iter().filter(|e| e.is_query()) {
                        cache.query_event(e, &q.subject).await;
                    }
                }
                Err(e) => tracing::warn!(resource = %name, error = %e, "invalid query event"),
            }
            continue;
        }
        let mut deleted = Vec::new();
        for e in keys.iter().filter(|e| !e.is_query() || event == "reaccess") {
            e.apply(event, &msg.payload, &cache.0.metrics);
            if event == "delete" {
                deleted.push(e.clone());
            }
        }
        for e in deleted {
            cache.remove_entry(&e);
        }
    }
}

impl Cache {
    async fn query_event(&self, entry: &Arc<Entry>, subject: &str) {
        let Some(query) = entry.state.lock().query.clone() else { return };
        let mut payload = b"{\"query\":".to_vec();
        write_str(&mut payload, &query);
        payload.push(b'}');
        let result =
            self.0.nats.request("query", subject, payload).await.and_then(|p| service::decode_query_response(&p));
        match result {
            Ok(QueryResult::Events(events)) => {
                for ev in events {
                    let payload = ev.data.as_ref().map(|d| d.get().as_bytes()).unwrap_or(b"");
                    if ev.event == "delete" {
                        entry.apply("delete", payload, &self.0.metrics);
                        self.remove_entry(entry);
                        return;
                    }
                    entry.apply(&ev.event, payload, &self.0.metrics);
                }
            }
            Ok(QueryResult::Data(data)) => self.replace_data(entry, data),
            Err(e) if e.code == code::NOT_FOUND => {
                entry.apply("delete", b"", &self.0.metrics);
                self.remove_entry(entry);
            }
            Err(e) => tracing::warn!(rid = %entry.key, error = %e, "query request failed"),
        }
    }
}

/// Evicts entries `unsubscribe_delay` after they lost their last subscriber, unless something
/// still holds them (a request in flight) — those are checked again later.
async fn evictor(cache: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = cache.upgrade() else { return };
        let now = Instant::now();
        let due: Vec<Arc<str>> = {
            let mut q = inner.evictions.lock();
            let mut due = Vec::new();
            while q.front().is_some_and(|(t, _)| *t <= now) {
                due.push(q.pop_front().expect("front exists").1);
            }
            due
        };
        if due.is_empty() {
            continue;
        }
        let cache = Cache(inner);
        let mut requeue = Vec::new();
        for key in due {
            let entries = cache.0.entries.lock();
            let Some(e) = entries.get(&key) else { continue };
            if e.subscriber_count() > 0 {
                continue;
            }
            // The map holds one reference per key; anything beyond is a request or a connection.
            let map_refs = e.keys.lock().len();
            if Arc::strong_count(e) > map_refs {
                requeue.push(key);
                continue;
            }
            let e = e.clone();
            drop(entries);
            tracing::debug!(rid = %key, "evicted from cache");
            cache.remove_entry(&e);
        }
        for key in requeue {
            cache.schedule_eviction(key);
        }
    }
}

#[doc(hidden)]
pub mod bench;
