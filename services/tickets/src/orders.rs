//! Purchase and cancellation.
//!
//! Purchase: (1) an idempotent replay returns the order already placed with the key; (2) the hold
//! is checked (the caller's, active, unexpired) and frozen against expiry; (3) the price is quoted
//! by the fare rule and charged; a decline puts the hold back; (4) order and tickets are inserted
//! in one transaction, where the partial unique index rules out a double sale, and the order is
//! added to the owner's and the operators' lists; (5) the hold ends and its seats show as sold;
//! (6) `booking.events.order.placed` goes out. Every event is published before the reply.
//!
//! List order: orders are inserted and their `add` events published under one lock
//! (`booking:lock:orders`), so `list_seq` (assigned at insert) increases in publish order and
//! index 0 is always the newest order, on every instance.

use crate::payment::{Charge, PaymentError, PaymentProvider};
use booking_core::BookingError;
use booking_core::auth::Claims;
use booking_core::lock::Locks;
use booking_core::metrics::BookingMetrics;
use booking_core::seatmap::SeatStore;
use chrono::{DateTime, Utc};
use res_service::{Deadline, Value};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub const ORDER_PLACED_SUBJECT: &str = "booking.events.order.placed";
pub const ORDER_CANCELLED_SUBJECT: &str = "booking.events.order.cancelled";
pub const ORDERS_RID: &str = "tickets.orders";
pub const CURRENCY: &str = "EUR";
/// How long a purchase or cancellation may take (payment included): callers are asked to wait
/// this long when it starts.
const CALL_BUDGET: std::time::Duration = std::time::Duration::from_secs(15);

/// Serializes order inserts with their list events (see the module comment).
const ORDERS_LOCK: &str = "booking:lock:orders";

pub fn order_rid(id: &str) -> String {
    format!("tickets.order.{id}")
}

pub fn user_rid(sub: &str) -> String {
    format!("tickets.user.{sub}")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PurchaseParams {
    pub departure_id: i64,
    pub hold_id: String,
    pub card_number: String,
    pub idempotency_key: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Ticket {
    pub id: String,
    pub seat: String,
    pub class: i32,
    pub price_cents: i64,
    pub status: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub id: String,
    pub user_id: String,
    pub departure_id: i64,
    pub hold_id: String,
    pub status: String,
    pub total_cents: i64,
    pub currency: String,
    pub created_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub tickets: Vec<Ticket>,
    #[serde(skip)]
    pub payment_ref: String,
    #[serde(skip)]
    pub idempotency_key: String,
}

impl Order {
    /// The `tickets.order.<id>` model.
    pub fn model(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "userId": self.user_id,
            "departureId": self.departure_id,
            "departure": res_service::reference(&format!("catalog.departure.{}", self.departure_id)),
            "status": self.status,
            "totalCents": self.total_cents,
            "currency": self.currency,
            "createdAt": ts(self.created_at),
            "cancelledAt": self.cancelled_at.map(ts),
            "tickets": res_service::data(&self.tickets),
        })
    }

    /// The call result of purchase and cancel.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "orderId": self.id,
            "rid": order_rid(&self.id),
            "status": self.status,
            "departureId": self.departure_id,
            "totalCents": self.total_cents,
            "currency": self.currency,
            "tickets": self.tickets,
        })
    }
}

/// The domain event for other consumers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderEvent {
    pub order_id: String,
    pub user_id: String,
    pub departure_id: i64,
    pub seats: Vec<String>,
    pub total_cents: i64,
    pub currency: String,
    pub status: String,
    pub at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct Orders {
    pub store: SeatStore,
    pub payments: Arc<dyn PaymentProvider>,
    pub locks: Locks,
    pub metrics: BookingMetrics,
}

/// RFC 3339 in UTC with milliseconds (`2026-11-22T03:50:00.123Z`).
fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn new_id(prefix: char) -> String {
    format!("{prefix}{:024x}", rand::random::<u128>() >> 32)
}

fn is_unique_violation(e: &tokio_postgres::Error, constraint: &str) -> bool {
    e.as_db_error().is_some_and(|d| {
        d.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION && d.constraint() == Some(constraint)
    })
}

impl Orders {
    pub async fn load(&self, id: &str) -> Result<Option<Order>, BookingError> {
        let client = self.store.db().get().await?;
        let Some(r) = client
            .query_opt(
                "SELECT id, user_id, departure_id, hold_id, status, total_cents, currency, created_at, cancelled_at,
                        payment_ref, idempotency_key
                 FROM orders WHERE id = $1",
                &[&id],
            )
            .await?
        else {
            return Ok(None);
        };
        let tickets = client
            .query(
                "SELECT id, seat_id, class, price_cents, status FROM tickets WHERE order_id = $1 ORDER BY seat_id",
                &[&id],
            )
            .await?
            .iter()
            .map(|t| Ticket { id: t.get(0), seat: t.get(1), class: t.get(2), price_cents: t.get(3), status: t.get(4) })
            .collect();
        Ok(Some(Order {
            id: r.get(0),
            user_id: r.get(1),
            departure_id: r.get(2),
            hold_id: r.get(3),
            status: r.get(4),
            total_cents: r.get(5),
            currency: r.get(6),
            created_at: r.get(7),
            cancelled_at: r.get(8),
            payment_ref: r.get(9),
            idempotency_key: r.get(10),
            tickets,
        }))
    }

    async fn by_key(&self, user: &str, key: &str) -> Result<Option<Order>, BookingError> {
        let client = self.store.db().get().await?;
        let id: Option<String> = client
            .query_opt("SELECT id FROM orders WHERE user_id = $1 AND idempotency_key = $2", &[&user, &key])
            .await?
            .map(|r| r.get(0));
        match id {
            Some(id) => self.load(&id).await,
            None => Ok(None),
        }
    }

    /// Order IDs of a user (`None`: everybody's), newest first.
    pub async fn list(&self, user: Option<&str>) -> Result<Vec<String>, BookingError> {
        let client = self.store.db().get().await?;
        let rows = match user {
            Some(u) => client.query("SELECT id FROM orders WHERE user_id = $1 ORDER BY list_seq DESC", &[&u]).await?,
            None => client.query("SELECT id FROM orders ORDER BY list_seq DESC", &[]).await?,
        };
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn replay(existing: Order, p: &PurchaseParams) -> Result<Order, BookingError> {
        if existing.hold_id != p.hold_id {
            return Err(BookingError::InvalidParams("idempotencyKey was already used for another hold".into()));
        }
        Ok(existing)
    }

    /// Buys the caller's hold. The caller is asked to wait [`CALL_BUDGET`]; a purchase that
    /// cannot commit before its deadline is undone (refund, hold back to active): `booking.busy`.
    pub async fn purchase(&self, who: &Claims, p: PurchaseParams, deadline: &Deadline) -> Result<Order, BookingError> {
        if p.idempotency_key.is_empty() || p.idempotency_key.len() > 128 {
            return Err(BookingError::InvalidParams("idempotencyKey must have 1 to 128 characters".into()));
        }
        if let Some(existing) = self.by_key(&who.sub, &p.idempotency_key).await? {
            return Self::replay(existing, &p);
        }
        let dep = p.departure_id;
        deadline.extend(CALL_BUDGET).await;
        let hold = match self.store.begin_purchase(dep, &p.hold_id, &who.sub, deadline).await {
            Ok(h) => h,
            Err(e @ (BookingError::HoldExpired | BookingError::PurchaseInProgress)) => {
                // A twin request with the same key may have bought the hold meanwhile.
                if let Some(existing) = self.by_key(&who.sub, &p.idempotency_key).await? {
                    return Self::replay(existing, &p);
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        match self.pay_and_place(who, &p, &hold.seats, deadline).await {
            Ok(order) => {
                let sold: Vec<String> = order.tickets.iter().map(|t| t.seat.clone()).collect();
                self.store.complete_purchase(dep, &hold.hold_id, &sold).await?;
                self.metrics.order("placed");
                self.metrics.seats_sold.inc_by(order.tickets.len() as u64);
                self.publish_domain(ORDER_PLACED_SUBJECT, &order).await?;
                Ok(order)
            }
            Err(e) => {
                if let Err(abort) = self.store.abort_purchase(dep, &hold.hold_id).await {
                    tracing::warn!(error = %abort, hold = %hold.hold_id, "abort purchase failed; the sweeper settles it");
                }
                Err(e)
            }
        }
    }

    async fn pay_and_place(
        &self,
        who: &Claims,
        p: &PurchaseParams,
        seats: &[String],
        deadline: &Deadline,
    ) -> Result<Order, BookingError> {
        let dep = p.departure_id;
        let info = self.store.departure(dep).await?;
        let counts = self.store.snapshot(dep).await?.counts();
        let secs = (info.departs_at - Utc::now()).num_seconds();
        let quote = booking_core::pricing::quote(info.distance_km, counts.held + counts.sold, counts.total, secs);
        let order_id = new_id('o');
        let tickets: Vec<Ticket> = seats
            .iter()
            .map(|s| {
                let class = info.class_of(s).unwrap_or(2);
                Ticket {
                    id: new_id('t'),
                    seat: s.clone(),
                    class,
                    price_cents: quote.for_class(class),
                    status: "active".into(),
                }
            })
            .collect();
        let total: i64 = tickets.iter().map(|t| t.price_cents).sum();
        let charge = Charge {
            amount_cents: total,
            currency: CURRENCY.into(),
            card_number: p.card_number.clone(),
            idempotency_key: format!("{}:{}", who.sub, p.idempotency_key),
            description: format!("departure {dep}, seats {}", seats.join(" ")),
        };
        let payment = match self.payments.charge(charge).await {
            Ok(pay) => pay,
            Err(e) => {
                self.metrics.payment_failures.inc();
                self.metrics.order("declined");
                return Err(match e {
                    PaymentError::Declined(reason) => BookingError::PaymentDeclined(reason),
                    PaymentError::InvalidCard => BookingError::InvalidParams("invalid card number".into()),
                    PaymentError::Unavailable(m) => BookingError::Payment(m),
                });
            }
        };
        let mut order = Order {
            id: order_id,
            user_id: who.sub.clone(),
            departure_id: dep,
            hold_id: p.hold_id.clone(),
            status: "placed".into(),
            total_cents: total,
            currency: CURRENCY.into(),
            created_at: Utc::now(),
            cancelled_at: None,
            tickets,
            payment_ref: payment.reference.clone(),
            idempotency_key: p.idempotency_key.clone(),
        };
        let guard = match self.locks.acquire(ORDERS_LOCK, deadline).await {
            // Nobody waits for this order any more: do not place it.
            Ok(g) if deadline.passed() => {
                g.release().await?;
                self.refund_unsold(&payment.reference, total).await;
                return Err(BookingError::Busy);
            }
            Ok(g) => g,
            Err(e) => {
                self.refund_unsold(&payment.reference, total).await;
                return Err(e);
            }
        };
        if guard.in_doubt() {
            // The previous holder may have died between inserting an order and adding it to the
            // lists: every cached order list is fetched again.
            self.store.events().reset(&[ORDERS_RID, "tickets.user.>"], &[]).await?;
        }
        let inserted = self.insert(&mut order).await;
        if let Err(e) = inserted {
            drop(guard);
            let twin = matches!(&e, BookingError::Db(db)
                if is_unique_violation(db, "orders_user_id_idempotency_key_key") || is_unique_violation(db, "orders_hold_id_key"));
            if twin {
                // Another request with the same key or hold won; the provider charged once for
                // the key, and that charge belongs to the winner: no refund here.
                return Err(BookingError::PurchaseInProgress);
            }
            self.refund_unsold(&payment.reference, total).await;
            if matches!(&e, BookingError::Db(db) if is_unique_violation(db, "tickets_one_active_sale")) {
                return Err(BookingError::SeatTaken(seats.to_vec()));
            }
            return Err(e);
        }
        let ev = self.store.events();
        let item = Value::reference(&order_rid(&order.id));
        ev.add(&user_rid(&who.sub), 0, &item).await?;
        ev.add(ORDERS_RID, 0, &item).await?;
        ev.flush().await?;
        if !guard.release().await? {
            let user = user_rid(&who.sub);
            ev.reset(&[user.as_str(), ORDERS_RID], &[]).await?;
        }
        Ok(order)
    }

    /// Paid but not sold: give the money back.
    async fn refund_unsold(&self, reference: &str, amount: i64) {
        if let Err(e) = self.payments.refund(reference, amount).await {
            tracing::error!(error = %e, payment = %reference, "refund of an unsold purchase failed");
        }
    }

    async fn insert(&self, order: &mut Order) -> Result<(), BookingError> {
        let mut client = self.store.db().get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_one(
                "INSERT INTO orders (id, user_id, departure_id, hold_id, status, total_cents, currency, payment_ref, idempotency_key)
                 VALUES ($1, $2, $3, $4, 'placed', $5, $6, $7, $8) RETURNING created_at",
                &[
                    &order.id,
                    &order.user_id,
                    &order.departure_id,
                    &order.hold_id,
                    &order.total_cents,
                    &order.currency,
                    &order.payment_ref,
                    &order.idempotency_key,
                ],
            )
            .await?;
        order.created_at = row.get(0);
        for t in &order.tickets {
            tx.execute(
                "INSERT INTO tickets (id, order_id, departure_id, seat_id, class, price_cents, status) VALUES ($1, $2, $3, $4, $5, $6, 'active')",
                &[&t.id, &order.id, &order.departure_id, &t.seat, &t.class, &t.price_cents],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Cancels an order (its owner or an operator): tickets end, seats turn free, money goes back.
    pub async fn cancel(&self, who: &Claims, order_id: &str, deadline: &Deadline) -> Result<Order, BookingError> {
        let order = self.load(order_id).await?.ok_or(BookingError::NotFound)?;
        if order.user_id != who.sub && !who.is_operator() {
            return Err(BookingError::AccessDenied);
        }
        if order.status == "cancelled" {
            return Err(BookingError::AlreadyCancelled);
        }
        let dep = order.departure_id;
        if self.store.departure(dep).await?.departs_at <= Utc::now() {
            return Err(BookingError::Departed);
        }
        deadline.extend(CALL_BUDGET).await;
        // Under the departure lock: a seat turns free in the database and on the map together,
        // so nobody can hold it in between and see the free event arrive after their hold.
        self.store
            .transition(dep, deadline, || async {
                let mut client = self.store.db().get().await?;
                let tx = client.transaction().await?;
                let n = tx
                    .execute("UPDATE orders SET status = 'cancelled', cancelled_at = now() WHERE id = $1 AND status = 'placed'", &[&order_id])
                    .await?;
                if n == 0 {
                    return Err(BookingError::AlreadyCancelled);
                }
                let seats: Vec<String> = tx
                    .query("UPDATE tickets SET status = 'cancelled' WHERE order_id = $1 AND status = 'active' RETURNING seat_id", &[&order_id])
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                tx.commit().await?;
                Ok(((), seats))
            })
            .await?;
        let order = self.load(order_id).await?.ok_or(BookingError::NotFound)?;
        // The UPDATE above succeeded once, so this change is published exactly once.
        let ev = self.store.events();
        ev.change_json(
            &order_rid(order_id),
            serde_json::json!({
                "status": order.status,
                "cancelledAt": order.cancelled_at.map(ts),
                "tickets": res_service::data(&order.tickets),
            }),
        )
        .await?;
        if let Err(e) = self.payments.refund(&order.payment_ref, order.total_cents).await {
            // The cancellation stands; the refund is retried by finance from the event.
            tracing::error!(error = %e, order = %order.id, "refund failed");
        }
        self.metrics.order("cancelled");
        self.publish_domain(ORDER_CANCELLED_SUBJECT, &order).await?;
        Ok(order)
    }

    async fn publish_domain(&self, subject: &'static str, order: &Order) -> Result<(), BookingError> {
        let ev = OrderEvent {
            order_id: order.id.clone(),
            user_id: order.user_id.clone(),
            departure_id: order.departure_id,
            seats: order.tickets.iter().map(|t| t.seat.clone()).collect(),
            total_cents: order.total_cents,
            currency: order.currency.clone(),
            status: order.status.clone(),
            at: Utc::now(),
        };
        let payload = serde_json::to_vec(&ev).map_err(res_service::EventError::Encode)?;
        self.store
            .events()
            .client()
            .publish(subject, payload.into())
            .await
            .map_err(|e| BookingError::Events(res_service::EventError::Publish(e)))?;
        Ok(())
    }
}
