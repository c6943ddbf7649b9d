//! Durable domain events: the transactional outbox and its relay to JetStream.
//!
//! Writers call [`record`] inside the PostgreSQL transaction that commits the change, so an event
//! exists exactly when its change committed. [`Relay`] publishes unpublished rows to the
//! `BOOKING_EVENTS` stream with `Nats-Msg-Id` = event ID and marks them published after the
//! stream's ack; a crash between the publish and the mark re-publishes the row, which the
//! stream's duplicate window drops.
//!
//! Order: [`record`] numbers a departure's events (`departureSeq`) on a head row that stays
//! locked until commit, so the events of one departure commit, and take their outbox `seq`, one
//! after the other: committed rows of a departure are always a prefix in `seq` order. One relay
//! at a time (a session-level PostgreSQL advisory lock, freed by PostgreSQL when the holder's
//! connection ends, however the process died) publishes in `seq` order and waits for each ack
//! before the next publish, so the stream holds each departure's events in commit order. The
//! other instances stand by and take over when the lock frees.

use crate::config::EventsConfig;
use crate::error::BookingError;
use async_nats::jetstream;
use deadpool_postgres::{GenericClient, Pool};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The stream of the booking domain events.
pub const STREAM: &str = "BOOKING_EVENTS";
/// Subjects the stream captures.
pub const STREAM_SUBJECTS: &str = "booking.events.>";
/// The `version` field of every event payload; bump it (and the schemas in `docs/events/`) on an
/// incompatible change.
pub const EVENT_VERSION: i64 = 1;

/// Key of the advisory lock whose holder is the one relay publishing.
const RELAY_LOCK: i64 = 0x0062_6f6f_6b6f_7574;
/// Rows published per round trip to PostgreSQL.
const BATCH: i64 = 256;
/// How often a standby tries to take over the relay lock (a dead holder's lock frees at once).
const STANDBY_RETRY: Duration = Duration::from_secs(1);
/// Time the stream has to ack one publish.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("create or update stream {STREAM}: {0}")]
    Stream(#[from] jetstream::context::CreateStreamError),
    #[error("publish: {0}")]
    Publish(String),
}

/// A new event ID (128 random bits, hex).
pub fn new_event_id() -> String {
    format!("e{:032x}", rand::random::<u128>())
}

/// Writes an event of `departure_id` on `subject` in the caller's transaction (or as a statement
/// of its own). Adds `version`, `eventId` and `departureSeq` to `payload`; returns the event ID.
/// Holds the departure's head row lock until the transaction ends.
pub async fn record(
    db: &impl GenericClient,
    departure_id: i64,
    subject: &str,
    payload: serde_json::Value,
) -> Result<String, BookingError> {
    let mut payload = payload;
    let event_id = new_event_id();
    if let Some(m) = payload.as_object_mut() {
        m.insert("version".into(), EVENT_VERSION.into());
        m.insert("eventId".into(), event_id.clone().into());
    }
    db.execute(
        "WITH head AS (
             INSERT INTO outbox_departures (departure_id, last_seq) VALUES ($1, 1)
             ON CONFLICT (departure_id) DO UPDATE SET last_seq = outbox_departures.last_seq + 1
             RETURNING last_seq)
         INSERT INTO outbox (event_id, subject, departure_id, departure_seq, payload)
         SELECT $2, $3, $1, last_seq, jsonb_set($4::text::jsonb, '{departureSeq}', to_jsonb(last_seq)) FROM head",
        &[&departure_id, &event_id, &subject, &payload.to_string()],
    )
    .await?;
    Ok(event_id)
}

/// Creates the stream, or updates it to `cfg` (idempotent; every publishing service calls it on
/// start).
pub async fn ensure_stream(js: &jetstream::Context, cfg: &EventsConfig) -> Result<(), OutboxError> {
    let config = jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec![STREAM_SUBJECTS.into()],
        storage: jetstream::stream::StorageType::File,
        retention: jetstream::stream::RetentionPolicy::Limits,
        max_age: Duration::from_secs(cfg.events_max_age_secs),
        duplicate_window: Duration::from_secs(cfg.events_duplicate_window_secs),
        num_replicas: cfg.events_replicas.max(1),
        description: Some("Booking domain events (transactional outbox)".into()),
        ..Default::default()
    };
    // Two instances starting together may both try to create it: the loser updates.
    match js.create_or_update_stream(config.clone()).await {
        Ok(_) => Ok(()),
        Err(_) => {
            js.create_or_update_stream(config).await?;
            Ok(())
        }
    }
}

/// The relay's metrics (every instance reports them; the one relaying has `leader` 1).
#[derive(Clone, Debug, Default)]
pub struct RelayMetrics {
    pub published: Counter,
    pub pending: Gauge,
    pub oldest_unsent_seconds: Gauge<f64, AtomicU64>,
    pub leader: Gauge,
}

impl RelayMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register("booking_outbox_published", "Outbox events published to JetStream", self.published.clone());
        r.register("booking_outbox_pending", "Outbox events not yet published", self.pending.clone());
        r.register(
            "booking_outbox_oldest_unsent_seconds",
            "Age of the oldest unpublished outbox event (relay lag)",
            self.oldest_unsent_seconds.clone(),
        );
        r.register("booking_outbox_relay_leader", "1 while this instance is the relay", self.leader.clone());
    }
}

/// Wakes the local relay after a commit (others poll).
#[derive(Clone, Debug, Default)]
pub struct Outbox {
    wake: Arc<Notify>,
}

impl Outbox {
    /// Call after committing a transaction that recorded events.
    pub fn committed(&self) {
        self.wake.notify_one();
    }

    pub fn relay(&self, db: Pool, nats: async_nats::Client, cfg: &EventsConfig, metrics: RelayMetrics) -> Relay {
        let mut js = jetstream::new(nats);
        js.set_timeout(ACK_TIMEOUT);
        Relay {
            db,
            js,
            wake: self.wake.clone(),
            poll: Duration::from_millis(cfg.outbox_poll_ms.max(1)),
            keep: Duration::from_secs(cfg.outbox_keep_hours * 3600),
            metrics,
        }
    }
}

/// Deletes the rows published more than `keep` ago; returns how many.
pub async fn purge_published(db: &impl tokio_postgres::GenericClient, keep: Duration) -> Result<u64, OutboxError> {
    // Seconds as float8: `make_interval(hours => …)` takes an int4, which an f64 or i64
    // parameter cannot be serialized as.
    let keep_secs = keep.as_secs_f64();
    Ok(db.execute("DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)", &[&keep_secs]).await?)
}

/// Publishes the outbox to JetStream while it holds the relay lock.
pub struct Relay {
    db: Pool,
    js: jetstream::Context,
    wake: Arc<Notify>,
    poll: Duration,
    /// How long published rows stay (for inspection) before they are purged.
    keep: Duration,
    metrics: RelayMetrics,
}

/// A session of its own: the advisory lock lives exactly as long as this connection.
type Session = deadpool_postgres::ClientWrapper;

impl Relay {
    /// Relays until `cancel` fires. Errors end the PostgreSQL session (freeing the lock) and are
    /// retried after a pause.
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            let err = tokio::select! {
                _ = cancel.cancelled() => break,
                Err(e) = self.lead() => e,
            };
            self.metrics.leader.set(0);
            tracing::warn!(error = %err, "outbox relay failed; retrying");
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        self.metrics.leader.set(0);
    }

    async fn lead(&self) -> Result<std::convert::Infallible, OutboxError> {
        let session: Session = deadpool_postgres::Object::take(self.db.get().await?);
        let mut observed = Instant::now() - Duration::from_secs(60);
        loop {
            let got: bool = session.query_one("SELECT pg_try_advisory_lock($1)", &[&RELAY_LOCK]).await?.get(0);
            if got {
                break;
            }
            self.observe(&session, &mut observed).await?;
            tokio::time::sleep(STANDBY_RETRY).await;
        }
        tracing::info!("outbox relay: this instance publishes");
        self.metrics.leader.set(1);
        let mut backoff = Duration::from_millis(50);
        let mut purged = Instant::now();
        loop {
            let rows = session
                .query(
                    "SELECT seq, event_id, subject, payload::text FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT $1",
                    &[&BATCH],
                )
                .await?;
            if rows.is_empty() {
                self.observe(&session, &mut observed).await?;
                if purged.elapsed() > Duration::from_secs(60) {
                    purged = Instant::now();
                    purge_published(&*session, self.keep).await?;
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(self.poll) => {}
                }
                continue;
            }
            let mut done: Vec<i64> = Vec::with_capacity(rows.len());
            let mut failure = None;
            for row in &rows {
                let (event_id, subject, payload): (String, String, String) = (row.get(1), row.get(2), row.get(3));
                // One publish in flight: a failed one is retried before anything after it goes out.
                match self.publish(subject, &event_id, payload).await {
                    Ok(()) => done.push(row.get(0)),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if !done.is_empty() {
                session.execute("UPDATE outbox SET published_at = now() WHERE seq = ANY($1)", &[&done]).await?;
                self.metrics.published.inc_by(done.len() as u64);
            }
            match failure {
                None => backoff = Duration::from_millis(50),
                Some(e) => {
                    tracing::warn!(error = %e, "outbox relay: publish failed; retrying");
                    self.observe(&session, &mut observed).await?;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    async fn publish(&self, subject: String, event_id: &str, payload: String) -> Result<(), OutboxError> {
        let msg = jetstream::message::PublishMessage::build().payload(payload.into()).message_id(event_id);
        let ack = self.js.send_publish(subject, msg).await.map_err(|e| OutboxError::Publish(e.to_string()))?;
        ack.await.map_err(|e| OutboxError::Publish(e.to_string()))?;
        Ok(())
    }

    /// Updates the lag gauges, at most once a second.
    async fn observe(&self, session: &Session, last: &mut Instant) -> Result<(), OutboxError> {
        if last.elapsed() < Duration::from_secs(1) {
            return Ok(());
        }
        *last = Instant::now();
        let row = session
            .query_one(
                "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0)
                 FROM outbox WHERE published_at IS NULL",
                &[],
            )
            .await?;
        self.metrics.pending.set(row.get(0));
        self.metrics.oldest_unsent_seconds.set(row.get(1));
        Ok(())
    }
}

/// Makes sure the stream exists as configured, registers the relay metrics and runs the relay of
/// `outbox` until `cancel` fires.
pub async fn start_relay(
    deps: &crate::runtime::Deps,
    outbox: &Outbox,
    registry: &mut Registry,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, OutboxError> {
    ensure_stream(&jetstream::new(deps.nats.clone()), &deps.events).await?;
    let metrics = RelayMetrics::default();
    metrics.register(registry);
    let relay = outbox.relay(deps.db.clone(), deps.nats.clone(), &deps.events, metrics);
    Ok(tokio::spawn(relay.run(cancel)))
}
