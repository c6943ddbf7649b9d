//! The gateway's hot paths, set up without NATS for the criterion benchmarks
//! (`benches/hot_paths.rs`).

use crate::cache::Entry;
use crate::event::Outlet;
use crate::inbox::{ConnMsg, ConnTx};
use crate::metrics::Metrics;
use res_protocol::service;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;

pub use crate::ws::{Decoder, Incoming, encode_batch};

/// A loaded model entry, `bench.item.0` = `{"t":0,"seq":0,"name":"bench"}`.
fn loaded_entry() -> Arc<Entry> {
    let get = service::decode_get(br#"{"result":{"model":{"t":0,"seq":0,"name":"bench"}}}"#).expect("valid get");
    Entry::loaded_with("bench.item.0", get.data)
}

/// One entry with `n` subscribed connections, each with its inbox.
pub struct FanOut {
    entry: Arc<Entry>,
    inboxes: Vec<UnboundedReceiver<ConnMsg>>,
    metrics: Metrics,
    seq: u64,
}

impl FanOut {
    pub fn new(n: usize) -> FanOut {
        let entry = loaded_entry();
        let mut inboxes = Vec::with_capacity(n);
        for conn in 0..n {
            // No budget in the way: nothing here consumes the queued bytes.
            let (tx, rx) = ConnTx::new(usize::MAX / 2);
            entry.register(conn as u64, &tx.outlet(), false).expect("loaded");
            inboxes.push(rx);
        }
        let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default());
        FanOut { entry, inboxes, metrics, seq: 0 }
    }

    /// Applies a change event as a service would publish it, then takes it out of every inbox
    /// with its frame, as each connection does. Returns the frame bytes delivered.
    pub fn event(&mut self) -> usize {
        self.seq += 1;
        let payload = format!(r#"{{"values":{{"t":{},"seq":{}}}}}"#, self.seq * 7, self.seq);
        self.entry.apply("change", payload.as_bytes(), &self.metrics);
        let mut bytes = 0;
        for rx in &mut self.inboxes {
            while let Ok(ConnMsg::Event(ev)) = rx.try_recv() {
                bytes += ev.frame(&ev.key, false).len();
            }
        }
        bytes
    }
}

/// A cache hit: a connection registering on a loaded entry and taking its snapshot.
pub struct Lookup {
    entry: Arc<Entry>,
    outlet: Arc<dyn Outlet>,
    _inbox: UnboundedReceiver<ConnMsg>,
}

impl Default for Lookup {
    fn default() -> Lookup {
        let (tx, inbox) = ConnTx::new(usize::MAX / 2);
        Lookup { entry: loaded_entry(), outlet: tx.outlet(), _inbox: inbox }
    }
}

impl Lookup {
    /// Registers, snapshots and leaves again; returns the snapshot's length.
    pub fn hit(&self) -> usize {
        let snap = self.entry.register(1, &self.outlet, false).expect("loaded");
        self.entry.unregister(1);
        snap.json.len()
    }
}
