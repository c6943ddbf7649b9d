//! The durable pull consumer `reports` on `BOOKING_EVENTS`: applies each order event to the read
//! model, then acks it. An event is acked only after its transaction committed, so a crash
//! redelivers it, and the event ID committed with the effect makes the redelivery a no-op:
//! exactly-once effect over at-least-once delivery. Instances share the consumer (each message goes
//! to one of them at a time); the counters are sums, so the order they apply events in does not
//! matter, and the live resources are refreshed with `system.reset` (the gateway re-reads the
//! committed state), which no interleaving of instances can leave stale.

use crate::model::{OrderEvent, ReadModel, day_rid, departure_rid};
use async_nats::jetstream::{self, AckKind, consumer::pull};
use booking_core::BookingError;
use booking_core::outbox::STREAM;
use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The durable consumer's name.
pub const CONSUMER: &str = "reports";
const FILTER: &str = "booking.events.order.>";

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("jetstream: {0}")]
    JetStream(String),
    #[error(transparent)]
    Booking(#[from] BookingError),
}

fn js_err(e: impl std::fmt::Display) -> ConsumerError {
    ConsumerError::JetStream(e.to_string())
}

#[derive(Clone, Debug, Default)]
pub struct ConsumerMetrics {
    pub applied: Counter,
    pub duplicates: Counter,
    pub rejected: Counter,
    pub pending: Gauge,
    pub ack_pending: Gauge,
}

impl ConsumerMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register("reports_events_applied", "Order events applied to the read model", self.applied.clone());
        r.register(
            "reports_events_duplicate",
            "Redelivered order events found already applied",
            self.duplicates.clone(),
        );
        r.register(
            "reports_events_rejected",
            "Events that are not valid order events (terminated)",
            self.rejected.clone(),
        );
        r.register(
            "reports_consumer_pending",
            "Events in the stream not yet delivered to the consumer",
            self.pending.clone(),
        );
        r.register("reports_consumer_ack_pending", "Events delivered and not yet acked", self.ack_pending.clone());
    }
}

pub struct Consumer {
    pub model: ReadModel,
    pub js: jetstream::Context,
    pub events: res_service::Events,
    pub ack_wait: Duration,
    pub metrics: ConsumerMetrics,
}

impl Consumer {
    /// Consumes until `cancel` fires; failures are retried after a pause.
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            let err = tokio::select! {
                _ = cancel.cancelled() => return,
                Err(e) = self.consume() => e,
            };
            tracing::warn!(error = %err, "reports consumer failed; retrying");
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn consumer(&self) -> Result<jetstream::consumer::PullConsumer, ConsumerError> {
        let stream = self.js.get_stream(STREAM).await.map_err(js_err)?;
        let config = pull::Config {
            durable_name: Some(CONSUMER.into()),
            filter_subject: FILTER.into(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            max_ack_pending: 1000,
            ..Default::default()
        };
        stream.get_or_create_consumer(CONSUMER, config).await.map_err(js_err)
    }

    async fn consume(&self) -> Result<std::convert::Infallible, ConsumerError> {
        let consumer = self.consumer().await?;
        let mut messages = consumer.messages().await.map_err(js_err)?;
        let mut info = consumer.clone();
        let mut observe = tokio::time::interval(Duration::from_secs(2));
        loop {
            let msg = tokio::select! {
                m = messages.next() => m,
                _ = observe.tick() => {
                    if let Ok(i) = info.info().await {
                        self.metrics.pending.set(i.num_pending as i64);
                        self.metrics.ack_pending.set(i.num_ack_pending as i64);
                    }
                    continue;
                }
            };
            let msg = msg.ok_or_else(|| js_err("message stream ended"))?.map_err(js_err)?;
            let subject = msg.subject.to_string();
            let applied = match serde_json::from_slice::<OrderEvent>(&msg.payload) {
                Ok(ev) if ev.version == booking_core::outbox::EVENT_VERSION => self.model.apply(&subject, &ev).await,
                Ok(ev) => Err(BookingError::InvalidParams(format!("unknown version {}", ev.version))),
                Err(e) => Err(BookingError::InvalidParams(e.to_string())),
            };
            match applied {
                Err(BookingError::InvalidParams(why)) => {
                    // Redelivering it would fail the same way: take it out, loudly.
                    tracing::error!(%subject, %why, "not an order event this version understands; terminating it");
                    self.metrics.rejected.inc();
                    msg.ack_with(AckKind::Term).await.map_err(js_err)?;
                    continue;
                }
                Err(e) => return Err(e.into()),
                Ok(Some(t)) => {
                    self.metrics.applied.inc();
                    let (d, day) = (departure_rid(t.departure_id), day_rid(t.day));
                    if let Err(e) = self.events.reset(&[d.as_str(), day.as_str()], &[]).await {
                        tracing::warn!(error = %e, "reset of report resources failed");
                    }
                }
                Ok(None) => {
                    self.metrics.duplicates.inc();
                }
            }
            msg.ack().await.map_err(js_err)?;
        }
    }
}
