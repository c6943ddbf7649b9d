//! A connection's inbox: what reaches a connection task from the cache, from its own request
//! tasks and from NATS, in one order; and the routes its replies wait behind.
//!
//! Direct delivery: while a connection is idle — its task has handled everything queued and
//! written everything due — an event that needs none of the connection's state (a change, add,
//! remove or custom event adding and removing no references, on an entry the client holds under
//! the entry's own ID and has been sent) is written to the socket by the fan-out loop itself, a
//! non-blocking `send` of the event's shared bytes, instead of queueing it and waking the task.
//! Order: the task gives up idleness (under the direct lock) before it handles or writes
//! anything, and takes it back only with nothing queued; every event goes either to the socket
//! or to the inbox under that lock, and any other message counts as queued from the moment it is
//! sent. So nothing written directly can overtake what was queued before it. A write the socket
//! cannot take whole leaves its rest for the task, which writes it before anything else.
//!
//! Whether an entry's events may go direct is the entry's business (its subscriber slot, changed
//! under the entry's lock); idleness, the socket and the rest are the connection's (the direct
//! lock). The fan-out reads the first beside the outlet it already holds and the second in one
//! cache line: at a thousand subscribers per event, each pointer followed is a cache miss.

use crate::cache::{Entry, Graph, SubscriberId};
use crate::event::{Delivery, Outlet, ResourceEvent};
use crate::nats::Route;
use parking_lot::Mutex;
use res_protocol::ResError;
use res_protocol::pattern::ResourcePattern;
use res_protocol::service::{Access, CallResult, SystemTokenReset, TokenEvent};
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;
use tokio::net::TcpStream;
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

/// State shared between a connection task and those who queue to it. What the fan-out reads for
/// a direct delivery comes first and fits one cache line (`repr(C)` keeps the order).
#[repr(C, align(64))]
struct TxShared {
    /// Messages sent and not yet taken up by the task.
    pending: AtomicUsize,
    direct: Mutex<Direct>,
    tx: mpsc::UnboundedSender<ConnMsg>,
    /// Bytes of queued events (the budget).
    queued: AtomicUsize,
    limit: usize,
    slow: AtomicBool,
    kill: Notify,
    /// The event routes of the cache entries the connection holds, by entry id: a reply to one
    /// of its requests waits behind each (see `Shared::fences_for`).
    held: Mutex<Vec<(u64, Route)>>,
}

/// Direct delivery's side of a connection (see the module comment).
#[derive(Default)]
struct Direct {
    /// Plain TCP connections without compression, until the connection closes. Held strongly:
    /// the task lets go of it (`close_direct`) before the socket may close, so a write here
    /// never reaches a closed or reused descriptor.
    socket: Option<Arc<TcpStream>>,
    /// The task has nothing queued or unwritten: events may go straight to the socket.
    idle: bool,
    /// The client's protocol class (its events are encoded differently).
    legacy: bool,
    /// What a direct write left unwritten; the task writes it first.
    rest: Vec<u8>,
}

/// The sending side of a connection's inbox, with a byte budget for events: a client that
/// cannot keep up is cut off instead of growing the gateway's memory.
#[derive(Clone)]
pub struct ConnTx(Arc<TxShared>);

impl ConnTx {
    pub fn new(limit: usize) -> (ConnTx, mpsc::UnboundedReceiver<ConnMsg>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(TxShared {
            pending: AtomicUsize::new(0),
            direct: Mutex::new(Direct::default()),
            tx,
            queued: AtomicUsize::new(0),
            limit,
            slow: AtomicBool::new(false),
            kill: Notify::new(),
            held: Mutex::new(Vec::new()),
        });
        (ConnTx(shared), rx)
    }

    /// Where the cache sends this connection's events.
    pub fn outlet(&self) -> Arc<dyn Outlet> {
        self.0.clone()
    }

    pub fn send(&self, msg: ConnMsg) -> bool {
        self.0.send(msg)
    }

    /// The task took a message from the inbox.
    pub fn taken(&self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }

    /// Turns direct delivery on, writing to `socket` (plain TCP, no compression). The returned
    /// guard turns it off again when dropped, however the connection's task ends.
    pub fn enable_direct(&self, socket: &Arc<TcpStream>, legacy: bool) -> DirectOff {
        let mut d = self.0.direct.lock();
        d.socket = Some(socket.clone());
        d.legacy = legacy;
        DirectOff(self.clone())
    }

    /// The client's protocol class changed (its events are encoded differently).
    pub fn set_legacy(&self, legacy: bool) {
        self.0.direct.lock().legacy = legacy;
    }

    /// The task starts a turn: no direct writes until it ends; returns what a direct write left
    /// unwritten, to be written before anything else.
    pub fn begin_turn(&self) -> Vec<u8> {
        let mut d = self.0.direct.lock();
        d.idle = false;
        std::mem::take(&mut d.rest)
    }

    /// The task ends a turn with everything written; `settled` when it has nothing of its own
    /// pending (no blocked operation, no internal queue). Idle again if nothing was sent meanwhile.
    pub fn end_turn(&self, settled: bool) {
        let mut d = self.0.direct.lock();
        d.idle = d.socket.is_some() && settled && d.rest.is_empty() && self.0.pending.load(Ordering::Acquire) == 0;
    }

    /// The connection is closing: no more direct writes, and the socket is the task's alone.
    pub fn close_direct(&self) {
        let mut d = self.0.direct.lock();
        d.idle = false;
        d.socket = None;
    }

    /// Gives back the budget an event took once the connection has handled it.
    pub fn consumed(&self, cost: usize) {
        self.0.queued.fetch_sub(cost, Ordering::Relaxed);
    }

    pub async fn killed(&self) {
        self.0.kill.notified().await;
    }

    /// The connection now holds `entry`: replies wait behind its events. Called before the
    /// connection registers on the entry, so no event it receives can be overtaken.
    pub fn hold(&self, entry: &Entry) {
        if let Some(route) = entry.route() {
            self.0.held.lock().push((entry.id, route.clone()));
        }
    }

    /// The connection no longer holds the entry with this id.
    pub fn let_go(&self, entry_id: u64) {
        let mut held = self.0.held.lock();
        if let Some(i) = held.iter().position(|(id, _)| *id == entry_id) {
            held.swap_remove(i);
        }
    }

    /// The routes of every entry the connection holds.
    pub fn held_routes(&self, into: &mut Vec<Route>) {
        into.extend(self.0.held.lock().iter().map(|(_, r)| r.clone()));
    }
}

/// Turns a connection's direct delivery off when dropped (see `ConnTx::enable_direct`).
pub struct DirectOff(ConnTx);

impl Drop for DirectOff {
    fn drop(&mut self) {
        self.0.close_direct();
    }
}

impl TxShared {
    fn send(&self, msg: ConnMsg) -> bool {
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.tx.send(msg).is_ok()
    }

    fn queue_event(&self, ev: &Arc<ResourceEvent>) -> Delivery {
        if self.slow.load(Ordering::Relaxed) {
            return Delivery::Refused;
        }
        let cost = ev.cost();
        let queued = self.queued.fetch_add(cost, Ordering::Relaxed) + cost;
        if queued > self.limit {
            if !self.slow.swap(true, Ordering::Relaxed) {
                self.kill.notify_one();
            }
            return Delivery::Refused;
        }
        if self.send(ConnMsg::Event(ev.clone())) { Delivery::Queued } else { Delivery::Refused }
    }
}

/// A peer that has gone must be an error, not a SIGPIPE: the binary ignores the signal, but a
/// host embedding the gateway need not (std's own socket writes pass the same flag).
#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: i32 = libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: i32 = 0;

impl Outlet for TxShared {
    fn send_event(&self, ev: &Arc<ResourceEvent>, direct: bool) -> Delivery {
        if !direct {
            return self.queue_event(ev);
        }
        let mut d = self.direct.lock();
        let (wire, sent) = match &d.socket {
            Some(socket) if d.idle && self.pending.load(Ordering::Acquire) == 0 => {
                // Straight to the descriptor: tokio's readiness is the task's to keep, and a
                // write that would block only hands the rest to the task.
                let wire = ev.wire_frame(d.legacy);
                (wire, socket2::SockRef::from(&**socket).send_with_flags(wire, SEND_FLAGS))
            }
            // Queued under the lock: the task takes idleness back only with nothing queued.
            _ => return self.queue_event(ev),
        };
        let written = match sent {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => 0,
            // Broken: the task finds out on its next read or write; this event is moot.
            Err(_) => return Delivery::Refused,
        };
        if written == wire.len() {
            return Delivery::Written;
        }
        d.rest.extend_from_slice(&wire[written..]);
        d.idle = false;
        drop(d);
        if self.send(ConnMsg::Flush) { Delivery::WrittenInPart } else { Delivery::Refused }
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
