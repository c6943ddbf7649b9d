//! The resource cache shared by every connection.
//!
//! One entry per resource as the service defines it, loaded once however many clients want it
//! (concurrent loads share one `get`), kept current by the service's events, and evicted
//! `unsubscribe_delay` after its last subscriber leaves — at which point the gateway stops
//! listening for its events. Keys are resource IDs as services see them (`{cid}` replaced).
//!
//! Query resources, as Resgate has them: a `get` reply may carry the normalised query, even for
//! a request without one. The entry is then a query resource (it takes query events, not plain
//! ones) and is also filed under its canonical key `name?normalised`; a later request whose
//! query normalises alike, or that names the canonical key, shares it. A reply without a query
//! files the entry under the plain name. Every key of an entry resolves to it.
//!
//! Invariants:
//! - An entry's NATS event subscription (`event.<name>.*`, one per resource name) exists before
//!   its `get` request is sent, and the reply waits behind a fence on that subscription: events
//!   NATS delivered before the reply are dropped (the reply includes them), those after are
//!   applied. The same holds for the re-fetch of a reset.
//! - Events are applied per resource name in arrival order by one task, and each applied event
//!   bumps the entry's version. A subscriber registers on an entry and takes its snapshot in one
//!   step under the entry lock, so it receives exactly the events after its snapshot.
//! - A query event sends one query request per normalised query of the name, and the name's
//!   further events wait until every reply has been applied.
//! - An entry is deleted only when a service says so (a delete event, or `system.notFound` as a
//!   service's answer). An unanswered re-fetch (no responders, timeout) keeps the cached state
//!   and is retried with backoff while the entry is cached.
//! - An event is encoded once (per client protocol class) and the same bytes are queued to every
//!   subscribed connection.

use crate::diff;
use crate::event::{Delivery, EventKind, Outlet, ResourceEvent};
use crate::metrics::Metrics;
use crate::nats::{Fences, Nats, RequestError, Route, ServiceReply, Subscription, WhenFull};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use res_protocol::json::write_str;
use res_protocol::pattern::ResourcePattern;
use res_protocol::rid::split_query;
use res_protocol::service::{self, QueryResult};
use res_protocol::value::{ResourceData, Value};
use res_protocol::{ResError, code};
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{OnceCell, Semaphore};
use tokio::time::Instant;

/// Who is registered on an entry (one id per connection).
pub type SubscriberId = u64;

/// The first wait before an unanswered re-fetch is tried again; it doubles up to the maximum.
const REFETCH_BACKOFF: Duration = Duration::from_millis(200);
const REFETCH_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A re-fetch whose reply events came before is asked again, this many times at most; then the
/// reply is taken as it is (events that keep coming carry their own state).
const MAX_STALE_REPLIES: u32 = 3;

static NEXT_ENTRY_ID: AtomicU64 = AtomicU64::new(1);

/// A consistent view of a loaded entry, taken when a subscriber registers.
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
    subscribers: HashMap<SubscriberId, Subscriber>,
    deleted: bool,
    /// Events received for the entry, applied or not: a get reply that events came before may
    /// predate them (see `Cache::refetch`).
    events_seen: u64,
}

/// A connection registered on an entry. The slot also says whether the entry's simple events
/// may go straight to the connection's socket: the fan-out reads that here, beside the outlet,
/// instead of in the connection's own state (one cache line fewer per delivery).
struct Subscriber {
    outlet: Arc<dyn Outlet>,
    direct: bool,
}

/// A cached resource.
pub struct Entry {
    pub id: u64,
    pub key: Arc<str>,
    loaded: OnceCell<Result<(), ResError>>,
    /// Set when the service normalised this entry's query to one already cached: that entry
    /// serves both.
    alias: OnceLock<Arc<Entry>>,
    /// Every cache key that resolves to this entry (its own, its canonical one, aliased ones).
    keys: Mutex<Vec<Arc<str>>>,
    /// Its name's event subscription: replies that must not overtake the resource's events
    /// wait behind a fence there.
    route: OnceLock<Route>,
    /// A re-fetch is under way (or waiting to be retried); `refetch_again` asks for one more
    /// when a reset comes meanwhile, since the reply in flight may predate what it announces.
    refetching: AtomicBool,
    refetch_again: AtomicBool,
    /// Cuts a re-fetch's backoff short: a reset came (a service that starts announces itself so).
    refetch_now: tokio::sync::Notify,
    state: Mutex<EntryState>,
}

impl Entry {
    fn new(key: Arc<str>) -> Entry {
        Entry {
            id: NEXT_ENTRY_ID.fetch_add(1, Ordering::Relaxed),
            keys: Mutex::new(vec![key.clone()]),
            key,
            loaded: OnceCell::new(),
            alias: OnceLock::new(),
            route: OnceLock::new(),
            refetching: AtomicBool::new(false),
            refetch_again: AtomicBool::new(false),
            refetch_now: tokio::sync::Notify::new(),
            state: Mutex::new(EntryState::default()),
        }
    }

    /// A loaded entry outside any cache (the criterion benchmarks).
    pub(crate) fn loaded_with(key: &str, data: ResourceData) -> Arc<Entry> {
        let entry = Arc::new(Entry::new(Arc::from(key)));
        entry.state.lock().data = Some(data);
        entry.loaded.set(Ok(())).expect("new entry");
        entry
    }

    pub fn name(&self) -> &str {
        split_query(&self.key).0
    }

    fn is_ready(&self) -> bool {
        matches!(self.loaded.get(), Some(Ok(())))
    }

    /// The route of the entry's event subscription, once it is being loaded.
    pub fn route(&self) -> Option<&Route> {
        self.route.get()
    }

    /// Registers a subscriber and returns its starting snapshot; `None` if the entry is not
    /// loaded or was deleted. Registering again only takes a new snapshot.
    pub fn register(&self, id: SubscriberId, outlet: &Arc<dyn Outlet>, legacy: bool) -> Option<Snapshot> {
        if !self.is_ready() {
            return None;
        }
        let mut st = self.state.lock();
        if st.deleted {
            return None;
        }
        st.subscribers.entry(id).or_insert_with(|| Subscriber { outlet: outlet.clone(), direct: false });
        Some(snapshot(&mut st, legacy))
    }

    /// Whether this entry's simple events may be written straight to subscriber `id`'s socket:
    /// set when the client holds the entry under its own ID only and has been sent it. Changed
    /// under the entry's lock, so it takes effect between two of the entry's events.
    pub fn set_direct(&self, id: SubscriberId, allowed: bool) {
        if let Some(sub) = self.state.lock().subscribers.get_mut(&id) {
            sub.direct = allowed;
        }
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
    pub(crate) fn unregister(&self, id: SubscriberId) -> bool {
        let mut st = self.state.lock();
        st.subscribers.remove(&id).is_some() && st.subscribers.is_empty()
    }

    fn subscriber_count(&self) -> usize {
        self.state.lock().subscribers.len()
    }

    fn query(&self) -> Option<String> {
        self.state.lock().query.clone()
    }

    /// Applies an event under the lock and queues it to every subscriber. Returns the number of
    /// deliveries.
    pub(crate) fn apply(&self, event_name: &str, payload: &[u8], metrics: &Metrics) -> usize {
        let mut st = self.state.lock();
        st.events_seen += 1;
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
        self.apply_kind(&mut st, kind, metrics)
    }

    /// Applies one event and hands it to every subscriber; returns (and counts) the deliveries.
    fn apply_kind(&self, st: &mut EntryState, kind: EventKind, metrics: &Metrics) -> usize {
        let next = st.version + 1;
        let mut ev = ResourceEvent::new(self.id, self.key.clone(), next, kind);
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
            (EventKind::Delete(_), Some(data)) => {
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
        let direct_ok = ev.needs_no_state();
        let (mut queued, mut written, mut in_part) = (0usize, 0u64, 0u64);
        for sub in st.subscribers.values() {
            match sub.outlet.send_event(&ev, direct_ok && sub.direct) {
                Delivery::Queued => queued += 1,
                Delivery::Written => written += 1,
                Delivery::WrittenInPart => in_part += 1,
                Delivery::Refused => {}
            }
        }
        // Counted once per event, not per delivery: the counters are shared by every thread.
        let direct = written + in_part;
        if direct > 0 {
            metrics.direct_deliveries.inc_by(direct);
        }
        if in_part > 0 {
            metrics.direct_partial_writes.inc_by(in_part);
        }
        let n = queued + direct as usize;
        metrics.event_deliveries.inc_by(n as u64);
        n
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
        "delete" => EventKind::Delete(raw_payload(payload)?),
        "reaccess" => EventKind::Reaccess,
        // Reserved names with no client meaning; `query` is handled by the name task.
        "create" | "patch" | "reset" | "unsubscribe" | "query" => return Ok(None),
        custom => {
            if !res_protocol::is_valid_rid_part(custom) {
                return Ok(None);
            }
            EventKind::Custom { name: custom.to_owned(), payload: raw_payload(payload)? }
        }
    }))
}

/// An event payload passed on as it is: `None` when empty.
fn raw_payload(payload: &[u8]) -> Result<Option<Box<RawValue>>, ResError> {
    match payload.is_empty() {
        true => Ok(None),
        false => serde_json::from_slice::<Box<RawValue>>(payload).map(Some).map_err(ResError::internal),
    }
}

/// The result of loading a resource and everything it references.
pub struct Graph {
    /// Every loaded entry of the graph, by the resource ID it was asked for (references as the
    /// data spells them). Holding them keeps them from eviction.
    pub entries: HashMap<Arc<str>, Arc<Entry>>,
    pub errors: HashMap<Arc<str>, ResError>,
}

struct NameSub {
    /// Every cache key of this name.
    keys: HashSet<Arc<str>>,
    /// The event subscription's route, for replies that must keep their place among the events.
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

    /// The route of `name`'s event subscription, if its events are subscribed.
    pub fn route_of_name(&self, name: &str) -> Option<Route> {
        self.0.names.lock().get(name)?.ready.get()?.as_ref().ok().cloned()
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
        let _ = entry.route.set(route.clone());
        // The reply is stored by the event task, between the events NATS delivered before it
        // (discarded) and those after (applied).
        let target = entry.clone();
        let stored = Arc::new(Mutex::new(Err(ResError::internal("get reply not stored"))));
        let outcome = stored.clone();
        let store = move |reply: ServiceReply| {
            let result = reply.map_err(ResError::from).and_then(|p| service::decode_get(&p)).map(|r| {
                let mut st = target.state.lock();
                st.query = r.query;
                st.data = Some(r.data);
                st.events_seen > 0
            });
            *outcome.lock() = result;
        };
        self.0
            .nats
            .request_ordered(
                "get",
                &format!("get.{name}"),
                service::get_request(query),
                move |_| Fences { primary: Some(route), others: Vec::new() },
                WhenFull::Fail,
                store,
            )
            .await?;
        let events_came_first = std::mem::replace(&mut *stored.lock(), Ok(false))?;
        self.file_under_canonical_key(entry, name);
        self.schedule_eviction(entry.key.clone());
        if events_came_first {
            // The reply may predate events the service published before it (a service whose
            // get and change race): fetch once more to be sure the cache holds the truth.
            let (cache, entry) = (self.clone(), entry.clone());
            tokio::spawn(async move { cache.refetch(&entry).await });
        }
        Ok(())
    }

    /// Files a freshly loaded entry under the key its reply makes canonical (`name` for plain
    /// resources, `name?normalised` for query resources), or aliases it to the entry already
    /// there: as in Resgate, queries that normalise alike share one resource.
    fn file_under_canonical_key(&self, entry: &Arc<Entry>, name: &str) {
        let normalized = entry.query();
        let canonical: Arc<str> = match &normalized {
            Some(q) => Arc::from(format!("{name}?{q}")),
            None => Arc::from(name),
        };
        let mut entries = self.0.entries.lock();
        match entries.get(&canonical) {
            Some(existing) if Arc::ptr_eq(existing, entry) => {}
            Some(existing)
                if existing.is_ready() && !existing.state.lock().deleted && existing.query() == normalized =>
            {
                let existing = existing.clone();
                entries.insert(entry.key.clone(), existing.clone());
                let mut keys = existing.keys.lock();
                if !keys.contains(&entry.key) {
                    keys.push(entry.key.clone());
                }
                drop(keys);
                let _ = entry.alias.set(existing);
            }
            // Free, or held by an entry still loading (it aliases to this one when it is done),
            // or by one of another kind (this reply is the newer truth).
            _ => {
                entries.insert(canonical.clone(), entry.clone());
                let mut keys = entry.keys.lock();
                if !keys.contains(&canonical) {
                    keys.push(canonical.clone());
                }
                drop(keys);
                drop(entries);
                if let Some(ns) = self.0.names.lock().get_mut(name) {
                    ns.keys.insert(canonical);
                }
            }
        }
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

    /// The distinct entries cached under `name`'s keys.
    fn entries_of(&self, name: &str) -> Vec<Arc<Entry>> {
        let names = self.0.names.lock();
        let entries = self.0.entries.lock();
        let mut seen = HashSet::new();
        names
            .get(name)
            .map(|ns| ns.keys.iter().filter_map(|k| entries.get(k)).filter(|e| seen.insert(e.id)).cloned().collect())
            .unwrap_or_default()
    }

    /// Loads a resource and, recursively, every resource it references (hard references only).
    /// A failing referenced resource is reported in `errors`; only a failing root fails.
    pub async fn load_graph(&self, key: &str) -> Result<Graph, ResError> {
        let root = self.load(key).await?;
        let mut graph = Graph { entries: HashMap::new(), errors: HashMap::new() };
        let mut frontier: Vec<Arc<str>> = root.references();
        graph.entries.insert(Arc::from(key), root);
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

    /// Unregisters a subscriber from an entry, scheduling eviction when it was the last.
    pub fn unregister(&self, entry: &Arc<Entry>, id: SubscriberId) {
        if entry.unregister(id) {
            self.schedule_eviction(entry.key.clone());
        }
    }

    fn schedule_eviction(&self, key: Arc<str>) {
        self.0.evictions.lock().push_back((Instant::now() + self.0.unsubscribe_delay, key));
    }

    pub fn subscription_count(&self) -> usize {
        let entries = self.0.entries.lock();
        let mut seen = HashSet::new();
        entries.values().filter(|e| seen.insert(e.id)).map(|e| e.subscriber_count()).sum()
    }

    /// Re-fetches every cached resource whose name matches one of `patterns` and turns the
    /// differences into events (system.reset, or after a NATS reconnect).
    pub async fn reset(&self, patterns: &[ResourcePattern]) {
        let targets: Vec<Arc<Entry>> = {
            let entries = self.0.entries.lock();
            let mut seen = HashSet::new();
            entries
                .values()
                .filter(|e| e.is_ready() && patterns.iter().any(|p| p.matches(e.name())) && seen.insert(e.id))
                .cloned()
                .collect()
        };
        let throttle =
            Arc::new(Semaphore::new(if self.0.reset_throttle > 0 { self.0.reset_throttle } else { 1 << 20 }));
        let refreshes = targets.into_iter().map(|e| {
            let throttle = throttle.clone();
            async move {
                let _permit = throttle.acquire().await.expect("semaphore never closed");
                self.refetch(&e).await;
            }
        });
        futures_util::future::join_all(refreshes).await;
    }

    /// Re-fetches an entry until a service answers, backing off while none does.
    async fn refetch(&self, entry: &Arc<Entry>) {
        if entry.refetching.swap(true, Ordering::AcqRel) {
            entry.refetch_again.store(true, Ordering::Release);
            entry.refetch_now.notify_one();
            return;
        }
        let mut backoff = REFETCH_BACKOFF;
        let mut stale = 0;
        loop {
            entry.refetch_again.store(false, Ordering::Release);
            match self.refetch_once(entry, stale < MAX_STALE_REPLIES).await {
                Refetch::Done if !entry.refetch_again.load(Ordering::Acquire) => break,
                Refetch::Done | Refetch::Gone => {}
                Refetch::Stale => stale += 1,
                Refetch::Unanswered(e) => {
                    self.0.metrics.cache_refetch_retries.inc();
                    tracing::warn!(rid = %entry.key, error = %e, retry_in = ?backoff, "re-fetch unanswered; keeping the cached state");
                    // Until the next try, or a reset (the service announcing it is back).
                    let _ = tokio::time::timeout(backoff, entry.refetch_now.notified()).await;
                    backoff = (backoff * 2).min(REFETCH_BACKOFF_MAX);
                }
            }
            if !self.is_cached(entry) {
                break;
            }
        }
        entry.refetching.store(false, Ordering::Release);
    }

    fn is_cached(&self, entry: &Arc<Entry>) -> bool {
        self.0.entries.lock().values().any(|e| Arc::ptr_eq(e, entry))
    }

    /// One re-fetch. With `distrust_stale`, a reply that events came before (they were applied
    /// while it was under way) is not diffed: it may predate them, and a diff would revert them.
    async fn refetch_once(&self, entry: &Arc<Entry>, distrust_stale: bool) -> Refetch {
        // Evicted or deleted since: nothing left to refresh.
        let Some(route) = entry.route().cloned().filter(|_| self.is_cached(entry)) else { return Refetch::Gone };
        // With the normalised query the service gave, not the client's spelling.
        let query = entry.query();
        // As with the first get, the reply is taken in its wire-order place among the
        // resource's events: the diff then neither re-applies an event the reply already holds
        // nor reverts one the service sent after replying.
        let cache = self.clone();
        let target = entry.clone();
        let unanswered = Arc::new(Mutex::new(None));
        let outcome = unanswered.clone();
        let seen_before = entry.state.lock().events_seen;
        let on_reply = move |reply: ServiceReply| match classify(reply, service::decode_get) {
            Answer::Data(_) if distrust_stale && target.state.lock().events_seen != seen_before => {
                *outcome.lock() = Some(Refetch::Stale);
            }
            Answer::Data(r) => cache.replace_data(&target, r.data),
            Answer::Deleted => cache.delete(&target),
            Answer::Unanswered(e) => *outcome.lock() = Some(Refetch::Unanswered(e)),
            Answer::Failed(e) => tracing::warn!(rid = %target.key, error = %e, "re-fetch after reset failed"),
        };
        let subject = format!("get.{}", entry.name());
        let sent = self
            .0
            .nats
            .request_ordered(
                "get",
                &subject,
                service::get_request(query.as_deref()),
                move |_| Fences { primary: Some(route), others: Vec::new() },
                WhenFull::Fail,
                on_reply,
            )
            .await;
        match sent {
            Err(e) => Refetch::Unanswered(e),
            Ok(()) => unanswered.lock().take().unwrap_or(Refetch::Done),
        }
    }

    /// A service said the resource no longer exists: tell its subscribers and forget it.
    fn delete(&self, entry: &Arc<Entry>) {
        {
            let mut st = entry.state.lock();
            if !st.deleted && st.data.is_some() {
                entry.apply_kind(&mut st, EventKind::Delete(None), &self.0.metrics);
            }
        }
        self.remove_entry(entry);
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
        for kind in events {
            entry.apply_kind(&mut st, kind, &self.0.metrics);
        }
    }

    /// A query event: one query request per normalised query of the name's query resources, in
    /// parallel; each reply is applied as it comes, and the caller (the name's event task)
    /// handles no other event until all are.
    async fn query_event(&self, entries: &[Arc<Entry>], subject: &str) {
        let mut by_query: HashMap<String, Vec<Arc<Entry>>> = HashMap::new();
        for e in entries {
            let st = e.state.lock();
            // Entries still loading take the change through their get reply.
            if let (Some(q), Some(_), false) = (&st.query, &st.data, st.deleted) {
                by_query.entry(q.clone()).or_default().push(e.clone());
            }
        }
        let mut requests: futures_util::stream::FuturesUnordered<_> = by_query
            .into_iter()
            .map(|(query, targets)| async move {
                let mut payload = b"{\"query\":".to_vec();
                write_str(&mut payload, &query);
                payload.push(b'}');
                (targets, self.0.nats.request("query", subject, payload).await)
            })
            .collect();
        while let Some((targets, reply)) = requests.next().await {
            for entry in targets {
                self.apply_query_reply(&entry, reply.clone());
            }
        }
    }

    fn apply_query_reply(&self, entry: &Arc<Entry>, reply: ServiceReply) {
        match classify(reply, service::decode_query_response) {
            Answer::Data(QueryResult::Events(events)) => {
                for ev in events {
                    let payload = ev.data.as_ref().map(|d| d.get().as_bytes()).unwrap_or(b"");
                    if ev.event == "delete" {
                        return self.delete(entry);
                    }
                    entry.apply(&ev.event, payload, &self.0.metrics);
                }
            }
            Answer::Data(QueryResult::Data(data)) => self.replace_data(entry, data),
            Answer::Deleted => self.delete(entry),
            Answer::Unanswered(e) => self.refetch_later(entry, &e),
            Answer::Failed(e) => self.refetch_later(entry, &e),
        }
    }

    /// The change a query event announced is unknown: re-fetch the state instead (Resgate only
    /// logs, leaving the resource stale until the next reset).
    fn refetch_later(&self, entry: &Arc<Entry>, error: &dyn std::fmt::Display) {
        tracing::warn!(rid = %entry.key, %error, "query request failed; re-fetching the resource");
        let cache = self.clone();
        let entry = entry.clone();
        tokio::spawn(async move { cache.refetch(&entry).await });
    }
}

enum Refetch {
    Done,
    /// Evicted or deleted meanwhile.
    Gone,
    Unanswered(RequestError),
    /// Events came while the reply was under way: asked again.
    Stale,
}

/// How a service answered a request about a resource it had served before.
enum Answer<T> {
    Data(T),
    /// The service said `system.notFound`.
    Deleted,
    /// No service answered (none listening, or none in time): an outage, not a verdict.
    Unanswered(RequestError),
    Failed(ResError),
}

fn classify<T>(reply: ServiceReply, decode: impl FnOnce(&[u8]) -> Result<T, ResError>) -> Answer<T> {
    match reply {
        Err(RequestError::Res(e)) if e.code == code::TIMEOUT => Answer::Unanswered(RequestError::Res(e)),
        Err(RequestError::Res(e)) => Answer::Failed(e),
        Err(e @ RequestError::NoResponders) => Answer::Unanswered(e),
        Ok(payload) => match decode(&payload) {
            Ok(t) => Answer::Data(t),
            Err(e) if e.code == code::NOT_FOUND => Answer::Deleted,
            Err(e) => Answer::Failed(e),
        },
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
        let targets = cache.entries_of(&name);
        if event == "query" {
            match serde_json::from_slice::<service::QueryEvent>(&msg.payload) {
                Ok(q) => cache.query_event(&targets, &q.subject).await,
                Err(e) => tracing::warn!(resource = %name, error = %e, "invalid query event"),
            }
            continue;
        }
        // Plain events go to the plain resource, not to query resources (a resource fetched
        // without a query that the service answered as a query resource included); `reaccess`
        // goes to every one: Resgate skips query resources there, leaving their access unchecked.
        for e in targets.iter().filter(|e| event == "reaccess" || e.query().is_none()) {
            e.apply(event, &msg.payload, &cache.0.metrics);
            if event == "delete" && e.state.lock().deleted {
                cache.remove_entry(e);
            }
        }
    }
}

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
