//! Applied resource events as the cache hands them to connections, and the outlet they go
//! through. Below both the cache and the connections: neither imports the other for this.

use res_protocol::json::write_u64;
use res_protocol::value::Value;
use serde_json::value::RawValue;
use std::sync::{Arc, OnceLock};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Where a cache entry's events go: one outlet per subscribed connection.
pub trait Outlet: Send + Sync {
    /// Hands an event over. `direct`: the entry's subscriber slot says this receiver may take
    /// the entry's events straight to its socket (see `inbox`), so the outlet may write it there
    /// instead of queueing it.
    fn send_event(&self, ev: &Arc<ResourceEvent>, direct: bool) -> Delivery;
}

/// What became of one event handed to an outlet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for the receiver's task.
    Queued,
    /// Written whole to the receiver's socket.
    Written,
    /// Written in part to the socket; the receiver's task writes the rest.
    WrittenInPart,
    /// Not taken: the receiver is gone or over its budget.
    Refused,
}

/// A resource event, decoded and applied, ready to be written to clients.
pub struct ResourceEvent {
    /// The cache entry it was applied to (entries are told apart by id, not by key).
    pub entry_id: u64,
    pub key: Arc<str>,
    pub version: u64,
    pub kind: EventKind,
    /// Hard references this event adds to / removes from the resource.
    pub added_refs: Vec<Arc<str>>,
    pub removed_refs: Vec<Arc<str>>,
    frames: [OnceLock<Utf8Bytes>; 2],
    /// The frame under `key` with its WebSocket header, for connections written to directly.
    wire: [OnceLock<Vec<u8>>; 2],
}

pub enum EventKind {
    Change(Vec<(String, Value)>),
    Add {
        idx: usize,
        value: Value,
    },
    Remove {
        idx: usize,
    },
    /// With the service's payload, passed on as the event's data (as Resgate does).
    Delete(Option<Box<RawValue>>),
    Reaccess,
    Custom {
        name: String,
        payload: Option<Box<RawValue>>,
    },
}

impl ResourceEvent {
    pub fn new(entry_id: u64, key: Arc<str>, version: u64, kind: EventKind) -> ResourceEvent {
        ResourceEvent {
            entry_id,
            key,
            version,
            kind,
            added_refs: Vec::new(),
            removed_refs: Vec::new(),
            frames: Default::default(),
            wire: Default::default(),
        }
    }

    /// Whether a subscriber can take the event without its connection's state being updated:
    /// no references come or go, the resource stays.
    pub fn needs_no_state(&self) -> bool {
        matches!(
            self.kind,
            EventKind::Change(_) | EventKind::Add { .. } | EventKind::Remove { .. } | EventKind::Custom { .. }
        ) && self.added_refs.is_empty()
            && self.removed_refs.is_empty()
    }

    pub fn name(&self) -> &str {
        match &self.kind {
            EventKind::Change(_) => "change",
            EventKind::Add { .. } => "add",
            EventKind::Remove { .. } => "remove",
            EventKind::Delete(_) => "delete",
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
            EventKind::Delete(Some(p)) => {
                out.extend_from_slice(p.get().as_bytes());
                return true;
            }
            // Resgate encodes the missing payload as `"data":null`.
            EventKind::Custom { payload: None, .. } | EventKind::Delete(None) => {
                out.extend_from_slice(b"null");
                return true;
            }
            EventKind::Reaccess => return false,
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

    /// The frame under the entry's own key as a whole unmasked WebSocket text frame, built once
    /// per event: a direct delivery is then one `send` of one buffer (a `writev` of header and
    /// payload goes through the VFS layer and cost measurably more per delivery).
    pub fn wire_frame(&self, legacy: bool) -> &[u8] {
        self.wire[legacy as usize].get_or_init(|| {
            let payload = self.frame(&self.key, legacy);
            let (header, hlen) = crate::ws::text_header(payload.len());
            let mut wire = Vec::with_capacity(hlen + payload.len());
            wire.extend_from_slice(&header[..hlen]);
            wire.extend_from_slice(payload.as_bytes());
            wire
        })
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
