//! A connection's inbox: what reaches a connection task from the cache, from its own request
//! tasks and from NATS, in one order; and the routes its replies wait behind.

use crate::cache::{Entry, Graph, SubscriberId};
use crate::event::{Outlet, ResourceEvent};
use crate::nats::Route;
use parking_lot::Mutex;
use res_protocol::ResError;
use res_protocol::pattern::ResourcePattern;
use res_protocol::service::{Access, CallResult, SystemTokenReset, TokenEvent};
use std::collections::HashMap;
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
    queued: AtomicUsize,
    limit: usize,
    slow: AtomicBool,
    kill: Notify,
    /// The event routes of the cache entries the connection holds, by entry id: a reply to one
    /// of its requests waits behind each (see `Shared::fences_for`).
    held: Mutex<Vec<(u64, Route)>>,
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
            held: Mutex::new(Vec::new()),
        });
        (ConnTx { tx, shared }, rx)
    }

    pub fn send(&self, msg: ConnMsg) -> bool {
        self.tx.send(msg).is_ok()
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
