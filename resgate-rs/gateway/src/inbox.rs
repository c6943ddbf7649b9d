//! A connection's inbox: what reaches a connection task from the cache, from its own request
//! tasks and from NATS, in one order; and the routes its replies wait behind.
//!
//! Direct delivery: while a connection is idle — its task has handled everything queued and
//! written everything due — an event that needs none of the connection's state (a change, add,
//! remove or custom event adding and removing no references, on an entry the client holds under
//! the entry's own ID and has been sent) is written to the socket by the fan-out loop itself, a
//! `try_write` of the event's shared bytes, instead of queueing it and waking the task. Order:
//! the task gives up idleness (under the direct lock) before it handles or writes anything, and
//! takes it back only with nothing queued; every event goes either to the socket or to the
//! inbox under that lock, and any other message counts as queued from the moment it is sent. So
//! nothing written directly can overtake what was queued before it. A write the socket cannot
//! take whole leaves its rest for the task, which writes it before anything else.

use crate::cache::{Entry, Graph, SubscriberId};
use crate::event::{Outlet, ResourceEvent};
use crate::metrics::Metrics;
use crate::nats::Route;
use parking_lot::Mutex;
use res_protocol::ResError;
use res_protocol::pattern::ResourcePattern;
use res_protocol::service::{Access, CallResult, SystemTokenReset, TokenEvent};
use std::collections::HashMap;
use std::collections::HashSet;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;
use tokio::sync::{Notify, mpsc};

pub type ConnId = SubscriberId;

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
    /// Missing resources finished loading for the blocked operation.
    Unblock(Box<Loaded>),
    /// A direct write left bytes for the task to write.
    Flush,
}

const _: () = assert!(std::mem::size_of::<ConnMsg>() <= 16, "ConnMsg grew: box the new variant's payload");

/// Resources loaded for a blocked operation: the entries by the resource ID they were asked
/// for, and the errors of those that failed.
pub struct Loaded {
    pub pins: HashMap<Arc<str>, Arc<Entry>>,
    pub errors: HashMap<Arc<str>, ResError>,
}

/// State shared between a connection task and those who queue to it.
struct TxShared {
    /// Bytes of queued events (the budget).
    queued: AtomicUsize,
    limit: usize,
    slow: AtomicBool,
    kill: Notify,
    /// Messages sent and not yet taken up by the task.
    pending: AtomicUsize,
    /// The event routes of the cache entries the connection holds, by entry id: a reply to one
    /// of its requests waits behind each (see `Shared::fences_for`).
    held: Mutex<Vec<(u64, Route)>>,
    /// Direct delivery, for plain TCP connections without compression.
    direct: std::sync::OnceLock<Direct>,
}

/// The socket and state of direct delivery (see the module comment).
struct Direct {
    /// Weak: the socket closes when the task lets go of it, however long others hold this.
    socket: std::sync::Weak<tokio::net::TcpStream>,
    legacy: AtomicBool,
    metrics: Arc<Metrics>,
    state: Mutex<DirectState>,
}

#[derive(Default)]
struct DirectState {
    /// The task has nothing queued or unwritten: events may go straight to the socket.
    idle: bool,
    /// What a direct write left unwritten; the task writes it first.
    rest: Vec<u8>,
    /// Entries whose events may go straight to the socket: held under their own ID only, and
    /// sent to the client.
    entries: HashSet<u64>,
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
            pending: AtomicUsize::new(0),
            held: Mutex::new(Vec::new()),
            direct: std::sync::OnceLock::new(),
        });
        (ConnTx { tx, shared }, rx)
    }

    pub fn send(&self, msg: ConnMsg) -> bool {
        self.shared.pending.fetch_add(1, Ordering::AcqRel);
        self.tx.send(msg).is_ok()
    }

    /// The task took a message from the inbox.
    pub fn taken(&self) {
        self.shared.pending.fetch_sub(1, Ordering::AcqRel);
    }

    /// Turns direct delivery on, writing to `socket` (plain TCP, no compression).
    pub fn enable_direct(&self, socket: &Arc<tokio::net::TcpStream>, legacy: bool, metrics: Arc<Metrics>) {
        let direct = Direct {
            socket: Arc::downgrade(socket),
            legacy: AtomicBool::new(legacy),
            metrics,
            state: Mutex::new(DirectState::default()),
        };
        let _ = self.shared.direct.set(direct);
    }

    /// The client's protocol class changed (its events are encoded differently).
    pub fn set_legacy(&self, legacy: bool) {
        if let Some(d) = self.shared.direct.get() {
            d.legacy.store(legacy, Ordering::Release);
        }
    }

    /// Events of `entry_id` may (or may no longer) be written directly.
    pub fn set_direct(&self, entry_id: u64, allowed: bool) {
        if let Some(d) = self.shared.direct.get() {
            let mut st = d.state.lock();
            if allowed {
                st.entries.insert(entry_id);
            } else {
                st.entries.remove(&entry_id);
            }
        }
    }

    /// The task starts a turn: no direct writes until it ends; returns what a direct write left
    /// unwritten, to be written before anything else.
    pub fn begin_turn(&self) -> Vec<u8> {
        match self.shared.direct.get() {
            Some(d) => {
                let mut st = d.state.lock();
                st.idle = false;
                std::mem::take(&mut st.rest)
            }
            None => Vec::new(),
        }
    }

    /// The task ends a turn with everything written; `settled` when it has nothing of its own
    /// pending (no blocked operation, no internal queue). Idle again if nothing was sent meanwhile.
    pub fn end_turn(&self, settled: bool) {
        if let Some(d) = self.shared.direct.get() {
            let mut st = d.state.lock();
            st.idle = settled && st.rest.is_empty() && self.shared.pending.load(Ordering::Acquire) == 0;
        }
    }

    /// The connection is closing: no more direct writes.
    pub fn close_direct(&self) {
        if let Some(d) = self.shared.direct.get() {
            let mut st = d.state.lock();
            st.idle = false;
            st.entries.clear();
        }
    }

    fn queue_event(&self, ev: &Arc<ResourceEvent>) -> bool {
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
        self.send(ConnMsg::Event(ev.clone()))
    }

    /// Gives back the budget an event took once the connection has handled it.
    pub fn consumed(&self, cost: usize) {
        self.shared.queued.fetch_sub(cost, Ordering::Relaxed);
    }

    pub async fn killed(&self) {
        self.shared.kill.notified().await;
    }

    /// The connection now holds `entry`: replies wait behind its events. Called before the
    /// connection registers on the entry, so no event it receives can be overtaken.
    pub fn hold(&self, entry: &Entry) {
        if let Some(route) = entry.route() {
            self.shared.held.lock().push((entry.id, route.clone()));
        }
    }

    /// The connection no longer holds the entry with this id.
    pub fn let_go(&self, entry_id: u64) {
        let mut held = self.shared.held.lock();
        if let Some(i) = held.iter().position(|(id, _)| *id == entry_id) {
            held.swap_remove(i);
        }
    }

    /// The routes of every entry the connection holds.
    pub fn held_routes(&self, into: &mut Vec<Route>) {
        into.extend(self.shared.held.lock().iter().map(|(_, r)| r.clone()));
    }
}

impl Outlet for ConnTx {
    fn send_event(&self, ev: &Arc<ResourceEvent>) -> bool {
        let Some(d) = self.shared.direct.get().filter(|_| ev.needs_no_state()) else {
            return self.queue_event(ev);
        };
        let mut st = d.state.lock();
        if !(st.idle && self.shared.pending.load(Ordering::Acquire) == 0 && st.entries.contains(&ev.entry_id)) {
            // Queued under the lock: the task takes idleness back only with nothing queued.
            return self.queue_event(ev);
        }
        let wire = ev.wire_frame(d.legacy.load(Ordering::Acquire));
        let Some(socket) = d.socket.upgrade() else { return false };
        let written = match socket.try_write(wire) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            // Broken: the task finds out on its next read or write; this event is moot.
            Err(_) => return false,
        };
        d.metrics.direct_deliveries.inc();
        if written == wire.len() {
            return true;
        }
        d.metrics.direct_partial_writes.inc();
        st.rest.extend_from_slice(&wire[written..]);
        st.idle = false;
        drop(st);
        self.send(ConnMsg::Flush)
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
        rid: Arc<str>,
        access: Option<Result<Access, ResError>>,
        graph: Result<Graph, ResError>,
        started: Instant,
        label: &'static str,
    },
    /// The access check calls on `rid` waited for.
    CallAccess { rid: Arc<str>, result: Result<Access, ResError> },
    /// A call, auth or new request answered by the service.
    Call { id: u64, result: Result<CallResult, ResError>, is_new: bool, started: Instant, label: &'static str },
    /// A re-done access check (after reaccess or a token change).
    Access { rid: Arc<str>, result: Result<Access, ResError> },
}
