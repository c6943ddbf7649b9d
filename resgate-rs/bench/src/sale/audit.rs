//! After a run: what buyers were told, and what the live views show, against PostgreSQL (sold
//! seats, orders, tickets) and Redis (held seats): no seat sold twice, success ⇔ committed with
//! its tickets, no hold nobody was told of, every view equal to the truth.

use super::buyer::Told;
use super::client::{SeatMap, SeatState};
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Where the truth is.
#[derive(Debug, Clone)]
pub struct Stores {
    pub database_url: String,
    pub redis_url: String,
}

/// A departure as PostgreSQL and Redis say it is.
#[derive(Debug, Clone, Default)]
pub struct Truth {
    pub map: BTreeMap<String, SeatState>,
    /// Seat → hold ID, from Redis.
    pub held: HashMap<String, String>,
    /// Seats with more than one active ticket.
    pub sold_twice: Vec<String>,
}

impl Truth {
    pub fn count(&self, s: SeatState) -> usize {
        self.map.values().filter(|v| **v == s).count()
    }
}

/// A committed order of a bench user.
struct Committed {
    status: String,
    active_seats: BTreeSet<String>,
    tickets: usize,
}

pub struct Db {
    pg: tokio_postgres::Client,
    redis: redis::aio::MultiplexedConnection,
    _conn: tokio::task::JoinHandle<()>,
}

impl Db {
    pub async fn connect(s: &Stores) -> Result<Db> {
        let (pg, conn) = tokio_postgres::connect(&s.database_url, tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connect to PostgreSQL at {}", s.database_url))?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let redis = redis::Client::open(s.redis_url.as_str())
            .context("Redis URL")?
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("connect to Redis at {}", s.redis_url))?;
        Ok(Db { pg, redis, _conn: conn })
    }

    /// A fresh read of the departure's seats: sold from PostgreSQL, held from Redis.
    pub async fn truth(&mut self, dep: i64) -> Result<Truth> {
        let seats: Vec<String> = self
            .pg
            .query(
                "SELECT ls.seat_id FROM departures d JOIN trains t ON t.id = d.train_id
                   JOIN layout_seats ls ON ls.layout_id = t.layout_id WHERE d.id = $1",
                &[&dep],
            )
            .await
            .context("layout seats")?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let sold: HashMap<String, i64> = self
            .pg
            .query(
                "SELECT seat_id, count(*) FROM tickets WHERE departure_id = $1 AND status = 'active' GROUP BY seat_id",
                &[&dep],
            )
            .await
            .context("sold seats")?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let held: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("booking:held:{dep}"))
            .query_async(&mut self.redis)
            .await
            .context("held seats")?;
        let map = seats
            .into_iter()
            .map(|s| {
                let st = if sold.contains_key(&s) {
                    SeatState::Sold
                } else if held.contains_key(&s) {
                    SeatState::Held
                } else {
                    SeatState::Free
                };
                (s, st)
            })
            .collect();
        let mut sold_twice: Vec<String> = sold.into_iter().filter(|(_, n)| *n > 1).map(|(s, _)| s).collect();
        sold_twice.sort();
        Ok(Truth { map, held, sold_twice })
    }

    async fn committed(&self, deps: &[i64], user_prefix: &str) -> Result<HashMap<String, Committed>> {
        let rows = self
            .pg
            .query(
                "SELECT o.id, o.status, t.seat_id, t.status FROM orders o LEFT JOIN tickets t ON t.order_id = o.id
                  WHERE o.departure_id = ANY($1) AND o.user_id LIKE $2",
                &[&deps, &format!("{user_prefix}%")],
            )
            .await
            .context("orders")?;
        let mut out: HashMap<String, Committed> = HashMap::new();
        for r in rows {
            let c = out.entry(r.get(0)).or_insert_with(|| Committed {
                status: r.get(1),
                active_seats: BTreeSet::new(),
                tickets: 0,
            });
            let (seat, status): (Option<String>, Option<String>) = (r.get(2), r.get(3));
            if let Some(seat) = seat {
                c.tickets += 1;
                if status.as_deref() == Some("active") {
                    c.active_seats.insert(seat);
                }
            }
        }
        Ok(out)
    }
}

/// Differences between a view of a seat map and the truth, as `seat: shown X, truth Y`.
pub fn differences(view: &SeatMap, truth: &BTreeMap<String, SeatState>) -> Vec<String> {
    let mut d: Vec<String> = truth
        .iter()
        .filter(|(k, v)| view.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}: shown {:?}, truth {v:?}", view.get(k)))
        .collect();
    d.extend(view.keys().filter(|k| !truth.contains_key(*k)).map(|k| format!("{k}: shown, not in the layout")));
    d
}

/// The audit's findings; every list should be empty and every count zero.
#[derive(Debug, Default, Serialize)]
pub struct Findings {
    pub departures: Vec<DepartureCounts>,
    /// `departure/seat` with more than one active ticket.
    pub sold_twice: Vec<String>,
    /// Orders buyers were told were placed that PostgreSQL does not have (or has cancelled when
    /// they were not told so, or the reverse).
    pub told_not_committed: Vec<String>,
    /// Orders of bench users in PostgreSQL that no buyer was told of.
    pub committed_not_told: Vec<String>,
    /// Told orders whose active tickets are not exactly the seats told.
    pub tickets_wrong: Vec<String>,
    /// Sold seats that no told (and not cancelled) order holds: not accounted for.
    pub sold_unaccounted: Vec<String>,
    /// Holds in Redis that no buyer was told of.
    pub orphan_holds: Vec<String>,
    /// Holds buyers were told of and did not end (the run stopped mid-flow) still in Redis.
    pub open_holds_left: usize,
    /// Views (a watcher's copy, a fresh read through the gateway) that differ from the truth.
    pub views_wrong: Vec<String>,
    /// Every departure sold out (sale day).
    pub sold_out: bool,
}

impl Findings {
    pub fn clean(&self) -> bool {
        self.sold_twice.is_empty()
            && self.told_not_committed.is_empty()
            && self.committed_not_told.is_empty()
            && self.tickets_wrong.is_empty()
            && self.sold_unaccounted.is_empty()
            && self.orphan_holds.is_empty()
            && self.views_wrong.is_empty()
    }
}

#[derive(Debug, Default, Serialize)]
pub struct DepartureCounts {
    pub id: i64,
    pub total: usize,
    pub free: usize,
    pub held: usize,
    pub sold: usize,
}

/// Compares what buyers were told with PostgreSQL and Redis.
pub async fn check_told(db: &mut Db, deps: &[i64], user_prefix: &str, told: &Told) -> Result<Findings> {
    let mut f = Findings { sold_out: true, ..Findings::default() };
    let committed = db.committed(deps, user_prefix).await?;
    let mut accounted: BTreeSet<(i64, String)> = BTreeSet::new();
    for (id, o) in &told.orders {
        match committed.get(id) {
            None => f.told_not_committed.push(format!("{id}: not in PostgreSQL")),
            Some(c) => {
                let want = if o.cancelled { "cancelled" } else { "placed" };
                if c.status != want {
                    f.told_not_committed.push(format!("{id}: told {want}, committed {}", c.status));
                }
                let told_seats: BTreeSet<String> = o.seats.iter().cloned().collect();
                let expect_active = if o.cancelled { BTreeSet::new() } else { told_seats.clone() };
                if c.active_seats != expect_active || c.tickets != told_seats.len() {
                    f.tickets_wrong.push(format!(
                        "{id}: told {told_seats:?}, tickets {} with active {:?}",
                        c.tickets, c.active_seats
                    ));
                }
                if !o.cancelled {
                    accounted.extend(told_seats.into_iter().map(|s| (o.departure, s)));
                }
            }
        }
    }
    f.committed_not_told = committed.keys().filter(|id| !told.orders.contains_key(*id)).cloned().collect();
    for &dep in deps {
        let t = db.truth(dep).await?;
        f.sold_twice.extend(t.sold_twice.iter().map(|s| format!("{dep}/{s}")));
        f.sold_unaccounted.extend(
            t.map
                .iter()
                .filter(|(s, st)| **st == SeatState::Sold && !accounted.contains(&(dep, (*s).clone())))
                .map(|(s, _)| format!("{dep}/{s}")),
        );
        let in_redis: BTreeSet<&String> = t.held.values().collect();
        f.orphan_holds.extend(in_redis.iter().filter(|h| !told.holds.contains(**h)).map(|h| format!("{dep}/{h}")));
        f.open_holds_left += in_redis.iter().filter(|h| told.open.contains_key(**h)).count();
        let c = DepartureCounts {
            id: dep,
            total: t.map.len(),
            free: t.count(SeatState::Free),
            held: t.count(SeatState::Held),
            sold: t.count(SeatState::Sold),
        };
        f.sold_out &= c.sold == c.total;
        f.departures.push(c);
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_differences() {
        let truth: BTreeMap<String, SeatState> =
            [("a".to_owned(), SeatState::Sold), ("b".to_owned(), SeatState::Free)].into();
        let mut view: SeatMap = [("a".to_owned(), SeatState::Sold), ("b".to_owned(), SeatState::Free)].into();
        assert!(differences(&view, &truth).is_empty());
        view.insert("b".into(), SeatState::Held);
        view.insert("c".into(), SeatState::Free);
        let d = differences(&view, &truth);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].starts_with("b: shown Some(Held)"));
        view.remove("a");
        assert_eq!(differences(&view, &truth).len(), 3);
    }
}
