//! The read model: counters per departure and per UTC day, updated by order events exactly once.

use booking_core::BookingError;
use chrono::{DateTime, NaiveDate, Utc};
use deadpool_postgres::Pool;
use serde::Deserialize;

pub const PLACED: &str = "booking.events.order.placed";
pub const CANCELLED: &str = "booking.events.order.cancelled";

/// The fields of `booking.events.order.*` (docs/events/) the read model needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderEvent {
    pub version: i64,
    pub event_id: String,
    pub departure_id: i64,
    pub seats: Vec<String>,
    pub total_cents: i64,
    pub at: DateTime<Utc>,
}

/// What an applied event changed (the resources to refresh).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touched {
    pub departure_id: i64,
    pub day: NaiveDate,
}

pub fn departure_rid(dep: i64) -> String {
    format!("reports.departure.{dep}")
}

pub fn day_rid(day: NaiveDate) -> String {
    format!("reports.day.{}", day.format("%Y-%m-%d"))
}

const COUNTERS: &str = "orders_placed, seats_sold, revenue_cents, cancellations, seats_cancelled, refunds_cents";

/// The six counters in `COUNTERS` order, as the models show them.
fn counters(row: Option<&tokio_postgres::Row>) -> serde_json::Map<String, serde_json::Value> {
    let names = ["ordersPlaced", "seatsSold", "revenueCents", "cancellations", "seatsCancelled", "refundsCents"];
    names.iter().enumerate().map(|(i, n)| ((*n).to_owned(), row.map_or(0, |r| r.get::<_, i64>(i)).into())).collect()
}

#[derive(Clone)]
pub struct ReadModel {
    db: Pool,
}

impl ReadModel {
    pub fn new(db: Pool) -> ReadModel {
        ReadModel { db }
    }

    /// Applies one order event in one transaction with its ID: `None` if it was applied before.
    pub async fn apply(&self, subject: &str, ev: &OrderEvent) -> Result<Option<Touched>, BookingError> {
        let n = ev.seats.len() as i64;
        // (orders_placed, seats_sold, revenue, cancellations, seats_cancelled, refunds)
        let delta: [i64; 6] = match subject {
            PLACED => [1, n, ev.total_cents, 0, 0, 0],
            CANCELLED => [0, 0, 0, 1, n, ev.total_cents],
            other => return Err(BookingError::InvalidParams(format!("not an order event: {other}"))),
        };
        let day = ev.at.date_naive();
        let mut client = self.db.get().await?;
        let tx = client.transaction().await?;
        let fresh = tx
            .execute("INSERT INTO report_events (event_id) VALUES ($1) ON CONFLICT DO NOTHING", &[&ev.event_id])
            .await?;
        if fresh == 0 {
            tx.commit().await?;
            return Ok(None);
        }
        let [a, b, c, d, e, f] = delta;
        let add = "orders_placed = t.orders_placed + EXCLUDED.orders_placed, seats_sold = t.seats_sold + EXCLUDED.seats_sold,
             revenue_cents = t.revenue_cents + EXCLUDED.revenue_cents, cancellations = t.cancellations + EXCLUDED.cancellations,
             seats_cancelled = t.seats_cancelled + EXCLUDED.seats_cancelled, refunds_cents = t.refunds_cents + EXCLUDED.refunds_cents";
        tx.execute(
            &format!(
                "INSERT INTO report_departures AS t (departure_id, {COUNTERS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (departure_id) DO UPDATE SET {add}"
            ),
            &[&ev.departure_id, &a, &b, &c, &d, &e, &f],
        )
        .await?;
        tx.execute(
            &format!(
                "INSERT INTO report_days AS t (day, {COUNTERS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (day) DO UPDATE SET {add}"
            ),
            &[&day, &a, &b, &c, &d, &e, &f],
        )
        .await?;
        tx.commit().await?;
        Ok(Some(Touched { departure_id: ev.departure_id, day }))
    }

    /// `reports.departure.<id>`: the counters, seats occupied now and the departure's capacity.
    pub async fn departure(&self, dep: i64) -> Result<serde_json::Value, BookingError> {
        let client = self.db.get().await?;
        let capacity: i64 = client
            .query_opt(
                "SELECT count(ls.seat_id) FROM departures d JOIN trains t ON t.id = d.train_id
                 LEFT JOIN layout_seats ls ON ls.layout_id = t.layout_id WHERE d.id = $1 GROUP BY d.id",
                &[&dep],
            )
            .await?
            .ok_or(BookingError::NotFound)?
            .get(0);
        let row = client
            .query_opt(&format!("SELECT {COUNTERS} FROM report_departures WHERE departure_id = $1"), &[&dep])
            .await?;
        let mut m = counters(row.as_ref());
        let occupied = m["seatsSold"].as_i64().unwrap_or(0) - m["seatsCancelled"].as_i64().unwrap_or(0);
        m.insert("departureId".into(), dep.into());
        m.insert("seatsOccupied".into(), occupied.into());
        m.insert("capacity".into(), capacity.into());
        Ok(serde_json::Value::Object(m))
    }

    /// `reports.day.<YYYY-MM-DD>`: the counters of sales and cancellations made that UTC day.
    pub async fn day(&self, day: NaiveDate) -> Result<serde_json::Value, BookingError> {
        let client = self.db.get().await?;
        let row = client.query_opt(&format!("SELECT {COUNTERS} FROM report_days WHERE day = $1"), &[&day]).await?;
        let mut m = counters(row.as_ref());
        m.insert("day".into(), day.format("%Y-%m-%d").to_string().into());
        Ok(serde_json::Value::Object(m))
    }
}
