//! The pricing service: `pricing.departure.<id>` shows the fares of a departure per class from the
//! rule in [`booking_core::pricing`], and changes live when occupancy or the time band moves them.
//!
//! Consistency: the model a client sees is the last *published* price, kept in Redis
//! (`booking:price:<dep>`). A get returns it (computing and storing it first if there is none);
//! a refresh recomputes from fresh state and publishes only the fields that differ. Gets and
//! refreshes run under the departure's price lock and flush before unlocking, so across instances
//! the events are in order and the gateway's copy always equals the stored price. Refreshes are
//! triggered by `booking.events.seats.changed` (queue group `pricing`) and, for the time bands,
//! by a periodic pass over the stored prices.

use booking_core::BookingError;
use booking_core::config::HoldConfig;
use booking_core::lock::Locks;
use booking_core::metrics::BookingMetrics;
use booking_core::runtime::Deps;
use booking_core::seatmap::{SEATS_CHANGED_SUBJECT, SeatStore, SeatsChanged};
use futures_util::StreamExt;
use prometheus_client::registry::Registry;
use redis::aio::ConnectionManager;
use res_service::{Handler, ResError, Resource, Service};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Configuration of the pricing binary.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "pricing", about = "Live fares (RES service)")]
pub struct Config {
    #[command(flatten)]
    pub common: booking_core::config::CommonConfig,
    /// Seconds between passes that move prices into new time bands.
    #[arg(long, env = "BOOKING_PRICE_REFRESH_SECS", default_value_t = 60)]
    pub price_refresh_secs: u64,
}

pub const CURRENCY: &str = "EUR";

fn price_key(dep: i64) -> String {
    format!("booking:price:{dep}")
}

pub fn price_rid(dep: i64) -> String {
    format!("pricing.departure.{dep}")
}

#[derive(Clone)]
pub struct Pricer {
    store: SeatStore,
    redis: ConnectionManager,
    locks: Locks,
}

impl Pricer {
    pub fn new(deps: &Deps) -> Pricer {
        let events = res_service::Events::new(deps.nats.clone());
        // Read-only use of the seat store: layouts, schedule and counts.
        let store = SeatStore::new(
            deps.db.clone(),
            deps.redis.clone(),
            events,
            HoldConfig::default(),
            BookingMetrics::default(),
        );
        let locks = Locks::new(deps.redis.clone(), Duration::from_secs(10), Duration::from_secs(8));
        Pricer { store, redis: deps.redis.clone(), locks }
    }

    /// The price model from current state.
    async fn compute(&self, dep: i64) -> Result<serde_json::Map<String, serde_json::Value>, BookingError> {
        let info = self.store.departure(dep).await?;
        let c = self.store.snapshot(dep).await?.counts();
        let secs = (info.departs_at - chrono::Utc::now()).num_seconds();
        let q = booking_core::pricing::quote(info.distance_km, c.held + c.sold, c.total, secs);
        let mut m = match serde_json::to_value(q) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        m.insert("departureId".into(), dep.into());
        m.insert("currency".into(), CURRENCY.into());
        Ok(m)
    }

    async fn stored(&self, dep: i64) -> Result<Option<serde_json::Map<String, serde_json::Value>>, BookingError> {
        let raw: Option<String> = redis::cmd("GET").arg(price_key(dep)).query_async(&mut self.redis.clone()).await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    async fn store(&self, dep: i64, m: &serde_json::Map<String, serde_json::Value>) -> Result<(), BookingError> {
        let raw = serde_json::to_string(m).map_err(res_service::EventError::Encode)?;
        let _: () = redis::cmd("SET").arg(price_key(dep)).arg(raw).query_async(&mut self.redis.clone()).await?;
        Ok(())
    }

    /// The last published price (what the gateway holds).
    pub async fn get(&self, dep: i64) -> Result<serde_json::Map<String, serde_json::Value>, BookingError> {
        if let Some(m) = self.stored(dep).await? {
            return Ok(m);
        }
        let guard = self.locks.acquire(&format!("booking:lock:price:{dep}"), &booking_core::lock::unattended()).await?;
        let m = match self.stored(dep).await? {
            Some(m) => m,
            None => {
                let m = self.compute(dep).await?;
                self.store(dep, &m).await?;
                m
            }
        };
        guard.release().await?;
        Ok(m)
    }

    /// Recomputes; publishes and stores what changed. Returns whether anything did.
    pub async fn refresh(&self, dep: i64) -> Result<bool, BookingError> {
        let guard = self.locks.acquire(&format!("booking:lock:price:{dep}"), &booking_core::lock::unattended()).await?;
        if guard.in_doubt() {
            // The previous holder may have stored a price it never published.
            self.store.events().reset(&[price_rid(dep).as_str()], &[]).await?;
        }
        // Nobody has read this price yet: nothing to keep current.
        let Some(old) = self.stored(dep).await? else {
            guard.release().await?;
            return Ok(false);
        };
        let new = self.compute(dep).await?;
        let changed: serde_json::Map<String, serde_json::Value> =
            new.iter().filter(|(k, v)| old.get(*k) != Some(*v)).map(|(k, v)| (k.clone(), v.clone())).collect();
        if !changed.is_empty() {
            let ev = self.store.events();
            ev.change_json(&price_rid(dep), &changed).await?;
            self.store(dep, &new).await?;
            ev.flush().await?;
        }
        if !guard.release().await? {
            self.store.events().reset(&[price_rid(dep).as_str()], &[]).await?;
        }
        Ok(!changed.is_empty())
    }

    /// Refreshes every stored price (time bands move without any seat event).
    pub async fn refresh_all(&self) -> Result<usize, BookingError> {
        let mut conn = self.redis.clone();
        let mut cursor: u64 = 0;
        let mut n = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("booking:price:*")
                .arg("COUNT")
                .arg(200)
                .query_async(&mut conn)
                .await?;
            for k in keys {
                if let Some(dep) = k.rsplit(':').next().and_then(|d| d.parse().ok())
                    && self.refresh(dep).await?
                {
                    n += 1;
                }
            }
            if next == 0 {
                return Ok(n);
            }
            cursor = next;
        }
    }
}

pub fn service(pricer: Pricer) -> Service {
    Service::new("pricing").handle(
        "pricing.departure.$id",
        Handler::new().access(|_| async { Ok::<_, ResError>(res_service::access(true, "")) }).get(move |req| {
            let pricer = pricer.clone();
            async move {
                let dep: i64 = req.path_as("id")?;
                Resource::model(pricer.get(dep).await?)
            }
        }),
    )
}

/// A running pricing service: RES handlers, the occupancy consumer and the time-band refresher.
pub struct Running {
    service: res_service::Running,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        self.service.shutdown().await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("subscribe to occupancy events: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error(transparent)]
    Start(#[from] res_service::StartError),
}

pub async fn start(
    deps: Deps,
    refresh_every: Duration,
    max_concurrency: usize,
    registry: &mut Registry,
) -> Result<Running, StartError> {
    let pricer = Pricer::new(&deps);
    let cancel = CancellationToken::new();
    let mut changes = deps.nats.queue_subscribe(SEATS_CHANGED_SUBJECT, "pricing".to_owned()).await?;
    let (p, c) = (pricer.clone(), cancel.clone());
    let consumer = tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = c.cancelled() => return,
                m = changes.next() => match m { Some(m) => m, None => return },
            };
            let Ok(ev) = serde_json::from_slice::<SeatsChanged>(&msg.payload) else { continue };
            if let Err(e) = p.refresh(ev.departure_id).await {
                tracing::warn!(departure = ev.departure_id, error = %e, "price refresh failed");
            }
        }
    });
    let (p, c) = (pricer.clone(), cancel.clone());
    let refresher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(refresh_every.max(Duration::from_millis(100)));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = c.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = p.refresh_all().await {
                tracing::warn!(error = %e, "periodic price refresh failed");
            }
        }
    });
    let service = service(pricer).max_concurrency(max_concurrency).with_metrics(registry).start(deps.nats).await?;
    Ok(Running { service, cancel, tasks: vec![consumer, refresher] })
}
