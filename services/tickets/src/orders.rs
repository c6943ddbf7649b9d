//! Purchase and cancellation.
//!
//! Purchase (one checkout: one or several holds of a departure, one order, one charge): (1) an
//! idempotent replay returns the order already placed with the key; (2) the holds are checked
//! (the caller's, active, unexpired) and frozen against expiry, all or none; (3) the price is quoted
//! by the fare rule and charged; a decline puts the hold back; (4) order and tickets are inserted
//! in one transaction with the `booking.events.order.placed` outbox row, where the partial unique
//! index rules out a double sale, and the order is added to the owner's and the operators' lists;
//! (5) the hold ends and its seats show as sold. Every RES event is published before the reply.
//!
//! After the commit (what the issue "committed, then reported as failed" was about): the caller
//! is told success once the order commits, whatever fails afterwards. What must follow a commit
//! (purchase: end the hold, show the seats sold, list the order; cancel: show the seats free,
//! publish the order's change, refund) is pending in the database while `orders.settled_at` is
//! NULL, set in the same transaction; the request does it and sets `settled_at`, and if it fails
//! or its process dies, the settler ([`Orders::settle_pending`]) on any instance does it after
//! [`SETTLE_GRACE_SECS`]. The domain events are outbox rows of the same transaction.
//!
//! List order: an order is inserted on its own, concurrently with others, and then listed: under
//! one lock (`booking:lock:orders`) it takes the next `list_seq` and its `add` events are
//! published, so `list_seq` increases in publish order and index 0 is always the newest order, on
//! every instance. The lists show listed orders only (`list_seq` set). A list read that
//! overlaps a listing (it may hold the order and be answered before the order's `add` reaches the
//! gateway, which would add it twice) is followed by a reset of that list: listing steps a
//! counter before and after (odd while in progress), and a list get reads it before its read and
//! again once its reply is routed ([`Orders::reset_list_if_moved`]).

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

/// Serializes orders' places in the lists with their `add` events (see the module comment).
const ORDERS_LOCK: &str = "booking:lock:orders";
/// Counts steps of listing, under the orders lock: odd while an order is being listed (placed and
/// its `add` events not yet out), even between. See [`Orders::reset_list_if_moved`].
const LISTING: &str = "booking:orders:listing";
/// The orders lock's lease: no listing step stays open longer unless its lister died.
pub const ORDERS_LEASE: std::time::Duration = std::time::Duration::from_secs(10);

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
    /// One hold, or several of one departure in `hold_ids` (one checkout, one order).
    #[serde(default)]
    pub hold_id: Option<String>,
    #[serde(default)]
    pub hold_ids: Option<Vec<String>>,
    pub card_number: String,
    pub idempotency_key: String,
}

impl PurchaseParams {
    /// The holds to buy, sorted: exactly one of `holdId` and `holdIds`, 1 to 8 distinct IDs.
    pub fn holds(&self) -> Result<Vec<String>, BookingError> {
        let mut ids = match (&self.hold_id, &self.hold_ids) {
            (Some(id), None) => vec![id.clone()],
            (None, Some(ids)) => ids.clone(),
            _ => return Err(BookingError::InvalidParams("give holdId or holdIds".into())),
        };
        ids.sort();
        ids.dedup();
        if ids.is_empty() || ids.len() > 8 || ids.len() != self.hold_ids.as_ref().map_or(1, Vec::len) {
            return Err(BookingError::InvalidParams("holdIds must be 1 to 8 distinct hold IDs".into()));
        }
        Ok(ids)
    }

    /// The payment provider's idempotency key: this attempt's content (user, client key, holds,
    /// card), so a retry of the same attempt (a timeout, a lost reply) is charged at most once,
    /// while another card, even under the same client key, is a new attempt and not answered
    /// with the first card's stored outcome (an invalid number, a decline).
    fn charge_key(&self, user: &str, holds: &[String]) -> String {
        use sha2::Digest;
        let card: String = self.card_number.chars().filter(|c| !c.is_whitespace()).collect();
        let mut h = sha2::Sha256::new();
        for part in [user, self.idempotency_key.as_str(), &holds.join(","), &card] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
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
    /// The first of `hold_ids`.
    pub hold_id: String,
    /// The holds this order bought (sorted).
    pub hold_ids: Vec<String>,
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

/// The domain event for other consumers (`docs/events/`); the outbox adds `version`, `eventId`
/// and `departureSeq`. `at` is the commit's `created_at` (placed) or `cancelled_at` (cancelled).
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

/// Seconds an order may stay unsettled before the settler takes over from its request.
pub const SETTLE_GRACE_SECS: f64 = 5.0;

/// Test hook: where the process aborts right after a commit (`BOOKING_TEST_ABORT_AFTER_COMMIT`),
/// to show that what follows the commit survives the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AbortAfter {
    Purchase,
    Cancel,
}

#[derive(Clone)]
pub struct Orders {
    pub store: SeatStore,
    pub payments: Arc<dyn PaymentProvider>,
    pub locks: Locks,
    pub metrics: BookingMetrics,
    pub abort_after: Option<AbortAfter>,
    pub redis: redis::aio::ConnectionManager,
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
        let hold_ids = client
            .query("SELECT hold_id FROM order_holds WHERE order_id = $1 ORDER BY hold_id", &[&id])
            .await?
            .iter()
            .map(|h| h.get(0))
            .collect();
        Ok(Some(Order {
            id: r.get(0),
            user_id: r.get(1),
            departure_id: r.get(2),
            hold_id: r.get(3),
            hold_ids,
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
            Some(u) => {
                client
                    .query(
                        "SELECT id FROM orders WHERE user_id = $1 AND list_seq IS NOT NULL ORDER BY list_seq DESC",
                        &[&u],
                    )
                    .await?
            }
            None => {
                client.query("SELECT id FROM orders WHERE list_seq IS NOT NULL ORDER BY list_seq DESC", &[]).await?
            }
        };
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn replay(existing: Order, holds: &[String]) -> Result<Order, BookingError> {
        if existing.hold_ids != holds {
            return Err(BookingError::InvalidParams("idempotencyKey was already used for another hold".into()));
        }
        Ok(existing)
    }

    /// Buys the caller's holds (one checkout). The caller is asked to wait [`CALL_BUDGET`]; a purchase that
    /// cannot commit before its deadline is undone (refund, hold back to active): `booking.busy`.
    pub async fn purchase(&self, who: &Claims, p: PurchaseParams, deadline: &Deadline) -> Result<Order, BookingError> {
        if p.idempotency_key.is_empty() || p.idempotency_key.len() > 128 {
            return Err(BookingError::InvalidParams("idempotencyKey must have 1 to 128 characters".into()));
        }
        let hold_ids = p.holds()?;
        if let Some(existing) = self.by_key(&who.sub, &p.idempotency_key).await? {
            return Self::replay(existing, &hold_ids);
        }
        let dep = p.departure_id;
        deadline.extend(CALL_BUDGET).await;
        let holds = match self.store.begin_purchase(dep, &hold_ids, &who.sub, deadline).await {
            Ok(h) => h,
            Err(e @ (BookingError::HoldExpired | BookingError::PurchaseInProgress)) => {
                // A twin request with the same key may have bought the hold meanwhile.
                if let Some(existing) = self.by_key(&who.sub, &p.idempotency_key).await? {
                    return Self::replay(existing, &hold_ids);
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        // Tickets in seat order, as a read of the order lists them.
        let mut seats: Vec<String> = holds.iter().flat_map(|h| h.seats.iter().cloned()).collect();
        seats.sort();
        match self.pay_and_place(who, &p, &hold_ids, &seats, deadline).await {
            Ok((order, listed)) => {
                // Committed: the answer is success whatever follows; what fails here the settler
                // carries out (the order stays unsettled).
                self.metrics.order("placed");
                self.metrics.seats_sold.inc_by(order.tickets.len() as u64);
                let sold: Vec<String> = order.tickets.iter().map(|t| t.seat.clone()).collect();
                let completed = self.store.complete_purchase(dep, &hold_ids, &sold).await;
                if let Err(e) = &completed {
                    tracing::warn!(error = %e, order = %order.id, "completing the hold failed; the settler retries");
                }
                if listed && completed.is_ok() {
                    self.mark_settled(&order).await;
                }
                Ok(order)
            }
            Err(e) => {
                if let Err(abort) = self.store.abort_purchase(dep, &hold_ids).await {
                    tracing::warn!(error = %abort, holds = ?hold_ids, "abort purchase failed; the sweeper settles it");
                }
                Err(e)
            }
        }
    }

    /// Pays and inserts the order; returns it and whether its list `add` events went out.
    async fn pay_and_place(
        &self,
        who: &Claims,
        p: &PurchaseParams,
        hold_ids: &[String],
        seats: &[String],
        deadline: &Deadline,
    ) -> Result<(Order, bool), BookingError> {
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
            idempotency_key: p.charge_key(&who.sub, hold_ids),
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
            hold_id: hold_ids[0].clone(),
            hold_ids: hold_ids.to_vec(),
            status: "placed".into(),
            total_cents: total,
            currency: CURRENCY.into(),
            created_at: Utc::now(),
            cancelled_at: None,
            tickets,
            payment_ref: payment.reference.clone(),
            idempotency_key: p.idempotency_key.clone(),
        };
        if deadline.passed() {
            // Nobody waits for this order any more: do not place it.
            self.refund_unsold(&payment.reference, total).await;
            return Err(BookingError::Busy);
        }
        let inserted = self.insert(&mut order).await;
        if let Err(e) = inserted {
            let twin = matches!(&e, BookingError::Db(db)
                if is_unique_violation(db, "orders_user_id_idempotency_key_key") || is_unique_violation(db, "orders_hold_id_key")
                    || is_unique_violation(db, "order_holds_pkey"));
            if twin {
                // Another request with the same key or hold won; the provider charged once for
                // the key, and that charge belongs to the winner: no refund here.
                return Err(BookingError::PurchaseInProgress);
            }
            if matches!(&e, BookingError::Db(db) if is_unique_violation(db, "tickets_one_active_sale")) {
                self.refund_unsold(&payment.reference, total).await;
                return Err(BookingError::SeatTaken(seats.to_vec()));
            }
            // A failed COMMIT may still have committed (the connection broke after it): answer
            // what the database holds. Unknown (unreachable): no refund, the client retries with
            // its key (no second charge) and learns the outcome.
            return match self.by_key(&who.sub, &p.idempotency_key).await {
                Ok(Some(committed)) if committed.hold_ids == hold_ids => Ok((committed, false)),
                Ok(_) => {
                    self.refund_unsold(&payment.reference, total).await;
                    Err(e)
                }
                Err(unknown) => {
                    tracing::error!(error = %unknown, payment = %payment.reference, "purchase outcome unknown");
                    Err(e)
                }
            };
        }
        let listed = self.place_in_lists(&order).await;
        if let Err(e) = &listed {
            tracing::warn!(error = %e, order = %order.id, "order not listed; the settler lists it");
        }
        Ok((order, listed.is_ok()))
    }

    /// Lists a committed order: gives it the next place (`list_seq`) and publishes its `add` to the
    /// owner's and the operators' lists, under the orders lock. Idempotent: an order listed already
    /// keeps its place and nothing is published.
    async fn place_in_lists(&self, order: &Order) -> Result<(), BookingError> {
        let guard = self.locks.acquire(ORDERS_LOCK, &booking_core::lock::unattended()).await?;
        let ev = self.store.events();
        let user = user_rid(&order.user_id);
        if guard.in_doubt() {
            // The previous holder may have died between placing an order in the lists and
            // publishing it there: every cached order list is fetched again, and a listing step
            // it left open is closed.
            ev.reset(&[ORDERS_RID, "tickets.user.>"], &[]).await?;
            if self.listing_version().await? % 2 == 1 {
                self.step_listing().await?;
            }
        }
        self.step_listing().await?;
        let placed = self
            .store
            .db()
            .get()
            .await?
            .execute(
                "UPDATE orders SET list_seq = nextval(pg_get_serial_sequence('orders', 'list_seq'))
                 WHERE id = $1 AND list_seq IS NULL",
                &[&order.id],
            )
            .await?;
        if placed == 1 {
            let item = Value::reference(&order_rid(&order.id));
            ev.add(&user, 0, &item).await?;
            ev.add(ORDERS_RID, 0, &item).await?;
            ev.flush().await?;
        }
        self.step_listing().await?;
        if !guard.release().await? {
            // The lease expired while held: another holder's adds may have interleaved.
            ev.reset(&[user.as_str(), ORDERS_RID], &[]).await?;
        }
        Ok(())
    }

    async fn step_listing(&self) -> Result<(), BookingError> {
        booking_core::redis_retry::retry_once(&self.redis, |mut c| async move {
            redis::cmd("INCR").arg(LISTING).query_async::<()>(&mut c).await
        })
        .await?;
        Ok(())
    }

    /// Read before a list get reads the list; see [`reset_list_if_moved`](Self::reset_list_if_moved).
    pub async fn listing_version(&self) -> Result<i64, BookingError> {
        let v: Option<i64> = booking_core::redis_retry::retry_once(&self.redis, |mut c| async move {
            redis::cmd("GET").arg(LISTING).query_async(&mut c).await
        })
        .await?;
        Ok(v.unwrap_or(0))
    }

    /// After a list get's reply was routed (`res_service::Request::after_reply`): if a listing
    /// started or ended since `seen`, the reply may hold an order whose `add` the gateway applies
    /// after it (twice in its cache) or lack one whose `add` came first, so `rid` is reset and
    /// fetched again. A listing in progress when the list was read (`seen` odd) is waited for, at
    /// most a lease: resetting at once would re-fetch into the same open step again and again if
    /// its lister died (killed between its steps), and a dead lister's `add` never comes (the next
    /// holder of the orders lock finds it in doubt and resets every list). Returns whether it reset.
    pub async fn reset_list_if_moved(&self, rid: &str, seen: i64) -> Result<bool, BookingError> {
        let give_up = tokio::time::Instant::now() + ORDERS_LEASE;
        let mut now = self.listing_version().await?;
        while now == seen && seen % 2 == 1 && tokio::time::Instant::now() < give_up {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            now = self.listing_version().await?;
        }
        if now == seen {
            return Ok(false);
        }
        self.store.events().reset(&[rid], &[]).await?;
        Ok(true)
    }

    /// Paid but not sold: give the money back.
    async fn refund_unsold(&self, reference: &str, amount: i64) {
        if let Err(e) = self.payments.refund(reference, amount, &format!("unsold:{reference}")).await {
            tracing::error!(error = %e, payment = %reference, "refund of an unsold purchase failed");
        }
    }

    /// Inserts order, tickets and the `order.placed` event in one transaction.
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
        for h in &order.hold_ids {
            tx.execute("INSERT INTO order_holds (hold_id, order_id) VALUES ($1, $2)", &[h, &order.id]).await?;
        }
        for t in &order.tickets {
            tx.execute(
                "INSERT INTO tickets (id, order_id, departure_id, seat_id, class, price_cents, status) VALUES ($1, $2, $3, $4, $5, $6, 'active')",
                &[&t.id, &order.id, &order.departure_id, &t.seat, &t.class, &t.price_cents],
            )
            .await?;
        }
        record_event(&tx, ORDER_PLACED_SUBJECT, order, order.created_at).await?;
        tx.commit().await?;
        self.after_commit(AbortAfter::Purchase);
        Ok(())
    }

    /// The test hook, then a wake-up for the relay.
    fn after_commit(&self, point: AbortAfter) {
        if self.abort_after == Some(point) {
            tracing::error!(?point, "test hook: aborting right after the commit");
            std::process::abort();
        }
        self.store.outbox().committed();
    }

    /// Cancels an order (its owner or an operator): tickets end, seats turn free, money goes back.
    pub async fn cancel(&self, who: &Claims, order_id: &str, deadline: &Deadline) -> Result<Order, BookingError> {
        let mut order = self.load(order_id).await?.ok_or(BookingError::NotFound)?;
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
        let cancelled_at = self
            .store
            .transition(dep, deadline, || async {
                let mut client = self.store.db().get().await?;
                let tx = client.transaction().await?;
                let Some(row) = tx
                    .query_opt(
                        "UPDATE orders SET status = 'cancelled', cancelled_at = now(), settled_at = NULL
                         WHERE id = $1 AND status = 'placed' RETURNING cancelled_at",
                        &[&order_id],
                    )
                    .await?
                else {
                    return Err(BookingError::AlreadyCancelled);
                };
                let at: DateTime<Utc> = row.get(0);
                let seats: Vec<String> = tx
                    .query("UPDATE tickets SET status = 'cancelled' WHERE order_id = $1 AND status = 'active' RETURNING seat_id", &[&order_id])
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let mut gone = order.clone();
                gone.status = "cancelled".into();
                record_event(&tx, ORDER_CANCELLED_SUBJECT, &gone, at).await?;
                tx.commit().await?;
                self.after_commit(AbortAfter::Cancel);
                Ok((at, booking_core::seatmap::Change::seats(seats)))
            })
            .await?;
        // Committed: the answer is success whatever follows; the settler finishes what fails.
        order.status = "cancelled".into();
        order.cancelled_at = Some(cancelled_at);
        for t in &mut order.tickets {
            t.status = "cancelled".into();
        }
        self.metrics.order("cancelled");
        // The UPDATE above succeeded once, so this change is published exactly once.
        let changed = self
            .store
            .events()
            .change_json(
                &order_rid(order_id),
                serde_json::json!({
                    "status": order.status,
                    "cancelledAt": order.cancelled_at.map(ts),
                    "tickets": res_service::data(&order.tickets),
                }),
            )
            .await;
        if let Err(e) = &changed {
            tracing::warn!(error = %e, order = %order.id, "order change not published; the settler resets it");
        }
        let refunded = self.refund(&order).await;
        if changed.is_ok() && refunded {
            self.mark_settled(&order).await;
        }
        Ok(order)
    }

    /// Refunds a cancelled order (at most once: keyed by the order).
    async fn refund(&self, order: &Order) -> bool {
        let key = format!("refund:{}", order.id);
        match self.payments.refund(&order.payment_ref, order.total_cents, &key).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, order = %order.id, "refund failed; the settler retries");
                false
            }
        }
    }

    /// Records that what follows the order's last commit is done.
    async fn mark_settled(&self, order: &Order) {
        let done = async {
            self.store
                .db()
                .get()
                .await?
                .execute(
                    "UPDATE orders SET settled_at = now() WHERE id = $1 AND status = $2 AND settled_at IS NULL",
                    &[&order.id, &order.status],
                )
                .await?;
            Ok::<_, BookingError>(())
        };
        if let Err(e) = done.await {
            tracing::warn!(error = %e, order = %order.id, "marking the order settled failed; the settler redoes it");
        }
    }

    /// One pass of the settler: carries out what follows the commit of orders left unsettled for
    /// [`SETTLE_GRACE_SECS`] (their request failed or its process died): the hold ends, the seats'
    /// state, the order and the lists are republished, a cancelled order is refunded. Every step
    /// is idempotent, so instances racing on one order do no harm. Returns the orders settled.
    pub async fn settle_pending(&self) -> Result<usize, BookingError> {
        let ids: Vec<String> = self
            .store
            .db()
            .get()
            .await?
            .query(
                "SELECT id FROM orders WHERE settled_at IS NULL
                   AND COALESCE(cancelled_at, created_at) < now() - make_interval(secs => $1)
                 ORDER BY created_at LIMIT 50",
                &[&SETTLE_GRACE_SECS],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut settled = 0;
        for id in ids {
            let Some(order) = self.load(&id).await? else { continue };
            tracing::warn!(order = %order.id, status = %order.status, "settling an order its request left unsettled");
            let dep = order.departure_id;
            let sold: Vec<String> = order.tickets.iter().map(|t| t.seat.clone()).collect();
            self.store.complete_purchase(dep, &order.hold_ids, &sold).await?;
            if order.status == "cancelled" {
                self.store.republish(dep, order.tickets.iter().map(|t| t.seat.clone()).collect()).await?;
                if !self.refund(&order).await {
                    continue;
                }
            }
            self.place_in_lists(&order).await?;
            let (order_res, user) = (order_rid(&order.id), user_rid(&order.user_id));
            self.store.events().reset(&[order_res.as_str(), user.as_str(), ORDERS_RID], &[]).await?;
            self.mark_settled(&order).await;
            settled += 1;
        }
        Ok(settled)
    }

    /// Runs the settler until `cancel` fires.
    pub async fn run_settler(self, cancel: tokio_util::sync::CancellationToken) {
        let every = std::time::Duration::from_millis(self.store.config().sweep_interval_ms.max(10));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.settle_pending().await {
                tracing::warn!(error = %e, "settling orders failed");
            }
        }
    }
}

/// Writes the order's domain event in the order's transaction.
async fn record_event(
    tx: &deadpool_postgres::Transaction<'_>,
    subject: &str,
    order: &Order,
    at: DateTime<Utc>,
) -> Result<(), BookingError> {
    let ev = OrderEvent {
        order_id: order.id.clone(),
        user_id: order.user_id.clone(),
        departure_id: order.departure_id,
        seats: order.tickets.iter().map(|t| t.seat.clone()).collect(),
        total_cents: order.total_cents,
        currency: order.currency.clone(),
        status: order.status.clone(),
        at,
    };
    let payload = serde_json::to_value(&ev).map_err(res_service::EventError::Encode)?;
    booking_core::outbox::record(tx, order.departure_id, subject, payload).await?;
    Ok(())
}
