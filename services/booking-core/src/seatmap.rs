//! The live seat map of a departure: every seat is free, held or sold.
//!
//! Where the state lives:
//! - sold: PostgreSQL (`tickets`, one active ticket per seat by a partial unique index): the truth.
//! - held: Redis. `booking:held:<dep>` maps seat → hold ID; `booking:hold:<id>` is the hold
//!   (owner, departure, seats, expiry, state `active`|`purchasing`); `booking:holds:expiry` and
//!   `booking:holds:purchasing` are sorted sets by deadline that the sweepers scan;
//!   `booking:user:<sub>:holds` maps each of a user's holds to its seat count (the per-user cap
//!   and `seats.user.<sub>.holds`), kept by the same scripts that take and end holds.
//! - free: everything else.
//!
//! Ordering (the RES rule: events of one resource in order, each change before the reply): every
//! transition of a departure's seats runs under that departure's lock (see [`crate::lock`]),
//! across all instances of seats and tickets. Inside the lock the instance performs the atomic
//! transition (a Lua script, or a PostgreSQL statement), reads the resulting state, publishes the
//! change events, and waits for a round trip to the NATS server on the same connection before
//! unlocking ([`res_service::Events::flush`]): the server has then routed the events, so the next
//! holder's events arrive after them. One instance's transitions of a departure queue for their
//! turn and those made under one lease are published together, once, before any of them replies
//! (group commit, [`SeatStore::transition`]). Each transition is performed, and
//! so published, by exactly one instance: when two sweepers race on an expired hold, the script
//! removes it once and only that instance publishes. Published values are the state read after
//! the transition, so even a replay converges. If a holder finds on unlock that its lease
//! expired (it stalled longer than the lease), its events may have interleaved with another
//! holder's, so it publishes `system.reset` for the departure's resources and the gateway
//! re-fetches them.
//!
//! Durable events: each transition that changed seats records a `booking.events.seats.changed`
//! row (the counts read after it) in the PostgreSQL outbox ([`crate::outbox`]) before its RES
//! events, still under the lock. Holds live in Redis, so that row cannot share a transaction
//! with a hold's change; instead the departure is marked in `booking:seats:unpublished` (a
//! sorted set by time) before the transition and unmarked once its row is recorded and its RES
//! events are out. A mark older than a few seconds means an instance died or failed in between:
//! the sweeper then republishes the whole map and records the counts under the lock. Once a
//! transition has happened its caller is told so, even if what follows fails (the mark stays).
//! Convergence after faults (a map that may be wrong is fetched again): a holder that finds the
//! lock's doubt marker (the previous holder crashed or failed between changing state and
//! publishing, see [`crate::lock`]) resets the departure's resources before its own transition;
//! the sweeper resets every seat map when Redis restarted (writes since its last fsync are gone:
//! the maps must show what survived) and, as a safety net, once every `resync_secs` across all
//! instances. Services reset all their resources when they start.
//!
//! Deadlines: a transition made for a request waits for the lock only until the caller's
//! deadline, then extends it (pre-response) to cover the transition; a hold that still ends up
//! made after the caller gave up is released again before the reply.

use crate::config::HoldConfig;
use crate::error::BookingError;
use crate::lock::{Locks, unattended};
use crate::metrics::BookingMetrics;
use crate::outbox::Outbox;
use crate::redis_retry::retry_once;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use redis::aio::ConnectionManager;
use res_service::{Deadline, Events, Value};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const FREE: &str = "free";
pub const HELD: &str = "held";
pub const SOLD: &str = "sold";

/// NATS subject of the occupancy domain event (consumed by pricing).
pub const SEATS_CHANGED_SUBJECT: &str = "booking.events.seats.changed";

const EXPIRY: &str = "booking:holds:expiry";
/// Departures with a transition whose events may not be recorded and published, by mark time.
const UNPUBLISHED: &str = "booking:seats:unpublished";
/// Age after which the sweeper takes a mark as left behind (transitions take milliseconds).
const UNPUBLISHED_GRACE_MS: i64 = 5_000;
/// Held by the instance whose sweeper makes this period's safety-net reset.
const RESYNC: &str = "booking:resync";
/// Longest wait for a departure's lock (requests wait until their deadline if sooner).
const LOCK_WAIT: Duration = Duration::from_secs(8);
/// What a transition may take once it holds the lock; a caller with less than a fifth of it left
/// is asked to wait this long.
const TRANSITION_BUDGET: Duration = Duration::from_secs(5);
/// When the second reset after a Redis restart goes out.
const SETTLE_RESET: Duration = Duration::from_secs(1);
/// Pattern of every resource the seat store publishes.
const SEATS_RESOURCES: &str = "seats.>";
const PURCHASING: &str = "booking:holds:purchasing";
/// Most transitions published together (see [`SeatStore::transition`]): bounds how long the
/// first member of a batch waits for the others, well inside the lease and the transition budget.
const MAX_BATCH: usize = 32;

/// What the seat store still has under way, read together (one MULTI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    /// Live holds, not being bought.
    pub holds: i64,
    /// Holds whose purchase has not settled.
    pub purchases: i64,
    /// Departures with a transition whose events are not yet recorded and published.
    pub unpublished: i64,
}

/// Reads [`InFlight`]. A transition marks its departure before it ends a hold and unmarks it
/// after its outbox row committed, so all zeros mean nothing will add to the outbox until a
/// client acts again.
pub async fn in_flight(redis: &mut ConnectionManager) -> Result<InFlight, redis::RedisError> {
    let (holds, purchases, unpublished) = redis::pipe()
        .atomic()
        .zcard(EXPIRY)
        .zcard(PURCHASING)
        .zcard(UNPUBLISHED)
        .query_async::<(i64, i64, i64)>(redis)
        .await?;
    Ok(InFlight { holds, purchases, unpublished })
}

fn hold_key(id: &str) -> String {
    format!("booking:hold:{id}")
}

fn held_key(dep: i64) -> String {
    format!("booking:held:{dep}")
}

fn lock_key(dep: i64) -> String {
    format!("booking:lock:departure:{dep}")
}

pub fn seat_map_rid(dep: i64) -> String {
    format!("seats.departure.{dep}")
}

pub fn availability_rid(dep: i64) -> String {
    format!("seats.departure.{dep}.availability")
}

/// Takes all seats or none, within the owner's cap on held seats across all their holds (every
/// departure, every tab, every instance: the count lives here, in one atomic script). Running it
/// again for the same hold (a retry after a lost reply) finds the hold made and succeeds. KEYS:
/// held, hold, expiry, the owner's holds (hold ID → seat count). ARGV: id, owner, dep, expires,
/// cap, seats... Returns `{'ok'}`, `{'taken', seats...}` or `{'cap', seats already held}`. Hold
/// hashes are read by their key (`booking:hold:<id>`) to drop index entries of holds that ended.
const HOLD: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return {'ok'} end
local held = 0
for _, id in ipairs(redis.call('HKEYS', KEYS[4])) do
  if redis.call('EXISTS', 'booking:hold:' .. id) == 1 then
    held = held + tonumber(redis.call('HGET', KEYS[4], id))
  else
    redis.call('HDEL', KEYS[4], id)
  end
end
if held + #ARGV - 5 > tonumber(ARGV[5]) then return {'cap', tostring(held)} end
local taken = {'taken'}
for i = 6, #ARGV do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then table.insert(taken, ARGV[i]) end
end
if #taken > 1 then return taken end
local seats = {}
for i = 6, #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[1])
  table.insert(seats, ARGV[i])
end
redis.call('HSET', KEYS[2], 'owner', ARGV[2], 'dep', ARGV[3], 'seats', table.concat(seats, ','), 'expires', ARGV[4], 'state', 'active')
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], #seats)
return {'ok'}";

/// Ends a hold (release by its owner, expiry, or completed purchase) and frees its seats in the
/// held map and the owner's holds. KEYS: hold, expiry, purchasing, held. ARGV: id, owner ('' =
/// anyone), dep, mode (`release` | `expire` | `complete`), now. Returns `{'ok', seats, owner}`.
const END: &str = r"
local h = redis.call('HMGET', KEYS[1], 'owner', 'dep', 'seats', 'expires', 'state')
if not h[1] or h[2] ~= ARGV[3] then return {'gone'} end
local mode = ARGV[4]
if mode == 'release' then
  if ARGV[2] ~= '' and h[1] ~= ARGV[2] then return {'notyours'} end
  if h[5] ~= 'active' then return {'purchasing'} end
elseif mode == 'expire' then
  if h[5] ~= 'active' or tonumber(h[4]) > tonumber(ARGV[5]) then return {'alive'} end
end
-- 'complete': the sale is committed, so the hold ends whatever its state (a sweeper may have
-- reopened it after the purchase deadline).
for seat in string.gmatch(h[3], '[^,]+') do
  if redis.call('HGET', KEYS[4], seat) == ARGV[1] then redis.call('HDEL', KEYS[4], seat) end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', 'booking:user:' .. h[1] .. ':holds', ARGV[1])
return {'ok', h[3], h[1]}";

/// Marks active, unexpired holds of `owner` on `dep` as being purchased, all or none: they no
/// longer expire (the purchase sweeper settles them after the purchase deadline). KEYS: expiry,
/// purchasing. ARGV: owner, dep, now, deadline, attempt (unique per purchase: a retry of the same
/// attempt after a lost reply succeeds again), ids... Returns `{'ok', seats, expires}` per hold
/// in `ids` order, or the first refusal.
const BEGIN: &str = r"
local out = {'ok'}
for i = 6, #ARGV do
  local h = redis.call('HMGET', 'booking:hold:' .. ARGV[i], 'owner', 'dep', 'seats', 'expires', 'state', 'attempt')
  if not h[1] or h[2] ~= ARGV[2] then return {'gone'} end
  if h[1] ~= ARGV[1] then return {'notyours'} end
  if not (h[5] == 'purchasing' and h[6] == ARGV[5]) then
    if h[5] ~= 'active' then return {'purchasing'} end
    if tonumber(h[4]) <= tonumber(ARGV[3]) then return {'expired'} end
  end
  table.insert(out, h[3])
  table.insert(out, h[4])
end
for i = 6, #ARGV do
  redis.call('HSET', 'booking:hold:' .. ARGV[i], 'state', 'purchasing', 'attempt', ARGV[5])
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[i])
end
return out";

/// Puts a hold being purchased back to active with its original expiry. KEYS: hold, expiry,
/// purchasing. ARGV: id.
const ABORT: &str = r"
local h = redis.call('HMGET', KEYS[1], 'state', 'expires')
if h[1] ~= 'purchasing' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'active')
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[2], h[2], ARGV[1])
return 1";

/// One seat of a departure's layout.
#[derive(Debug, Clone, Serialize)]
pub struct Seat {
    pub id: String,
    pub car: i32,
    pub row: i32,
    pub letter: String,
    pub class: i32,
    /// `window`, `aisle`, `table` (see [`seat_features`]).
    pub features: Vec<&'static str>,
}

/// What a seat offers, from its place in the car: the outermost letters sit at the window, those
/// next to the aisle (after the first letter with 3 across, the middle with 4) at the aisle, and
/// the two middle rows face each other across a table.
pub fn seat_features(letters: &[String], rows: i32, row: i32, letter: &str) -> Vec<&'static str> {
    let Some(i) = letters.iter().position(|l| l == letter) else { return Vec::new() };
    let n = letters.len();
    let aisle_after = if n == 3 { 1 } else { n.div_ceil(2) };
    let mut out = Vec::new();
    if i == 0 || i + 1 == n {
        out.push("window");
    }
    if i + 1 == aisle_after || i == aisle_after {
        out.push("aisle");
    }
    let mid = (rows + 1) / 2;
    if row == mid || row == mid + 1 {
        out.push("table");
    }
    out
}

/// What the store needs to know about a departure (static once seeded).
#[derive(Debug, Clone)]
pub struct DepartureInfo {
    pub id: i64,
    pub departs_at: DateTime<Utc>,
    pub distance_km: i64,
    pub seats: Vec<Seat>,
    seat_ids: HashSet<String>,
}

impl DepartureInfo {
    pub fn class_of(&self, seat: &str) -> Option<i32> {
        self.seats.iter().find(|s| s.id == seat).map(|s| s.class)
    }
}

/// Seat counts of a departure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub total: i64,
    pub free: i64,
    pub held: i64,
    pub sold: i64,
}

/// The state of every seat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatMap {
    pub states: BTreeMap<String, &'static str>,
}

impl SeatMap {
    pub fn counts(&self) -> Counts {
        let n = |s: &str| self.states.values().filter(|v| **v == s).count() as i64;
        Counts { total: self.states.len() as i64, free: n(FREE), held: n(HELD), sold: n(SOLD) }
    }
}

/// A hold as clients see it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Hold {
    pub hold_id: String,
    pub departure_id: i64,
    pub owner: String,
    pub seats: Vec<String>,
    /// Unix milliseconds.
    pub expires_at: i64,
    /// `active`, or `purchasing` while a payment for it runs.
    pub state: String,
}

pub fn user_holds_rid(owner: &str) -> String {
    format!("seats.user.{owner}.holds")
}

pub fn departure_holds_rid(dep: i64) -> String {
    format!("seats.departure.{dep}.holds")
}

fn user_holds_key(owner: &str) -> String {
    format!("booking:user:{owner}:holds")
}

/// Versions of what readers read: a departure's seat states, a user's holds. Each publish of a
/// change bumps its version after the change and before its events, under the lock that orders
/// those events, so a reader that saw the same version before reading and after its reply was
/// routed knows no event overtook its reply (see [`SeatStore::reset_departure_if_changed`]).
fn departure_version_key(dep: i64) -> String {
    format!("booking:seats:version:{dep}")
}

fn user_holds_version_key(owner: &str) -> String {
    format!("booking:user:{owner}:holds:version")
}

/// The occupancy event for other consumers (pricing); the outbox adds `version`, `eventId` and
/// `departureSeq`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeatsChanged {
    pub departure_id: i64,
    pub total: i64,
    pub free: i64,
    pub held: i64,
    pub sold: i64,
    pub at: DateTime<Utc>,
}

/// What one transition changed, published when its batch closes.
#[derive(Debug, Default)]
pub struct Change {
    seats: BTreeSet<String>,
    /// Users whose hold lists changed in a way their pages must learn before the seat events
    /// (a new hold, a purchase starting or failing); lists of ended holds are published by the
    /// caller after the transition.
    owners: BTreeSet<String>,
    /// The departure's hold list (operators) changed.
    holds: bool,
}

impl Change {
    /// Seats whose state changed: their state after the transition is published.
    pub fn seats(seats: impl IntoIterator<Item = String>) -> Change {
        Change { seats: seats.into_iter().collect(), ..Change::default() }
    }

    fn owner(mut self, owner: &str) -> Change {
        self.owners.insert(owner.to_owned());
        self
    }

    fn departure_holds(mut self) -> Change {
        self.holds = true;
        self
    }

    fn absorb(&mut self, other: Change) {
        self.seats.extend(other.seats);
        self.owners.extend(other.owners);
        self.holds |= other.holds;
    }

    fn is_empty(&self) -> bool {
        self.seats.is_empty() && self.owners.is_empty() && !self.holds
    }
}

/// Transitions of one departure made by this instance under one lease, not yet published.
struct Batch {
    guard: crate::lock::LockGuard,
    change: Change,
    /// Each member's signal that the batch's events are out (dropped: they may not be).
    members: Vec<tokio::sync::oneshot::Sender<()>>,
}

struct Scripts {
    hold: redis::Script,
    end: redis::Script,
    begin: redis::Script,
    abort: redis::Script,
}

#[derive(Clone)]
pub struct SeatStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Pool,
    redis: ConnectionManager,
    events: Events,
    outbox: Outbox,
    locks: Locks,
    cfg: HoldConfig,
    metrics: BookingMetrics,
    departures: Mutex<HashMap<i64, Arc<DepartureInfo>>>,
    /// Per departure: this instance's queue of transitions and the batch open, if any.
    turns: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<Option<Batch>>>>>,
    scripts: Scripts,
}

/// Fills in each seat's features from its car's letters and rows.
fn with_features(mut seats: Vec<Seat>) -> Vec<Seat> {
    let mut cars: BTreeMap<i32, (Vec<String>, i32)> = BTreeMap::new();
    for s in &seats {
        let car = cars.entry(s.car).or_default();
        if !car.0.contains(&s.letter) {
            car.0.push(s.letter.clone());
        }
        car.1 = car.1.max(s.row);
    }
    for car in cars.values_mut() {
        car.0.sort();
    }
    for s in &mut seats {
        let (letters, rows) = &cars[&s.car];
        s.features = seat_features(letters, *rows, s.row, &s.letter);
    }
    seats
}

fn split_seats(csv: &str) -> Vec<String> {
    csv.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl SeatStore {
    pub fn new(
        db: Pool,
        redis: ConnectionManager,
        events: Events,
        cfg: HoldConfig,
        metrics: BookingMetrics,
    ) -> SeatStore {
        // The lease outlives any sane critical section. Requests wait for it only until their
        // caller's deadline (booking.busy after).
        let locks = Locks::new(redis.clone(), Duration::from_secs(10), LOCK_WAIT);
        SeatStore {
            inner: Arc::new(Inner {
                db,
                redis,
                events,
                outbox: Outbox::default(),
                locks,
                cfg,
                metrics,
                departures: Mutex::default(),
                turns: Mutex::default(),
                scripts: Scripts {
                    hold: redis::Script::new(HOLD),
                    end: redis::Script::new(END),
                    begin: redis::Script::new(BEGIN),
                    abort: redis::Script::new(ABORT),
                },
            }),
        }
    }

    pub fn db(&self) -> &Pool {
        &self.inner.db
    }

    pub fn events(&self) -> &Events {
        &self.inner.events
    }

    /// Wakes this instance's outbox relay after a commit.
    pub fn outbox(&self) -> &Outbox {
        &self.inner.outbox
    }

    pub fn config(&self) -> &HoldConfig {
        &self.inner.cfg
    }

    pub fn metrics(&self) -> &BookingMetrics {
        &self.inner.metrics
    }

    /// The departure's layout and schedule (cached: it never changes once seeded).
    pub async fn departure(&self, dep: i64) -> Result<Arc<DepartureInfo>, BookingError> {
        if let Some(d) = self.inner.departures.lock().expect("cache").get(&dep) {
            return Ok(d.clone());
        }
        let client = self.inner.db.get().await?;
        let row = client
            .query_opt("SELECT departs_at, distance_km, t.layout_id FROM departures d JOIN trains t ON t.id = d.train_id WHERE d.id = $1", &[&dep])
            .await?
            .ok_or(BookingError::NotFound)?;
        let layout: String = row.get(2);
        let seats: Vec<Seat> = client
            .query(
                "SELECT seat_id, car, seat_row, letter, class FROM layout_seats WHERE layout_id = $1 ORDER BY car, seat_row, letter",
                &[&layout],
            )
            .await?
            .iter()
            .map(|r| Seat { id: r.get(0), car: r.get(1), row: r.get(2), letter: r.get(3), class: r.get(4), features: vec![] })
            .collect();
        let seats = with_features(seats);
        let info = Arc::new(DepartureInfo {
            id: dep,
            departs_at: row.get(0),
            distance_km: i64::from(row.get::<_, i32>(1)),
            seat_ids: seats.iter().map(|s| s.id.clone()).collect(),
            seats,
        });
        self.inner.departures.lock().expect("cache").insert(dep, info.clone());
        Ok(info)
    }

    /// The current state of every seat.
    pub async fn snapshot(&self, dep: i64) -> Result<SeatMap, BookingError> {
        let info = self.departure(dep).await?;
        let held: HashMap<String, String> = retry_once(&self.inner.redis, |mut c| async move {
            redis::cmd("HGETALL").arg(held_key(dep)).query_async(&mut c).await
        })
        .await?;
        // PostgreSQL last: a purchase completing between the two reads shows as sold.
        let sold: HashSet<String> = self.sold_seats(dep).await?;
        let states = info
            .seats
            .iter()
            .map(|s| {
                let st = if sold.contains(&s.id) {
                    SOLD
                } else if held.contains_key(&s.id) {
                    HELD
                } else {
                    FREE
                };
                (s.id.clone(), st)
            })
            .collect();
        Ok(SeatMap { states })
    }

    async fn sold_seats(&self, dep: i64) -> Result<HashSet<String>, BookingError> {
        let client = self.inner.db.get().await?;
        // Prepared once per connection: one round trip instead of two, on the locked path.
        let stmt =
            client.prepare_cached("SELECT seat_id FROM tickets WHERE departure_id = $1 AND status = 'active'").await?;
        let rows = client.query(&stmt, &[&dep]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Of `seats`, those sold now, in their order.
    async fn sold_among(&self, dep: i64, seats: &[String]) -> Result<Vec<String>, BookingError> {
        let client = self.inner.db.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT seat_id FROM tickets WHERE departure_id = $1 AND status = 'active' AND seat_id = ANY($2)",
            )
            .await?;
        let sold: HashSet<String> = client.query(&stmt, &[&dep, &seats]).await?.iter().map(|r| r.get(0)).collect();
        Ok(seats.iter().filter(|s| sold.contains(*s)).cloned().collect())
    }

    /// Of `seats`, those another hold than `hold_id` holds or that are sold, as Redis and
    /// PostgreSQL say now, without the departure's lock: what the check under the lock would
    /// refuse a moment earlier.
    async fn taken_by_others(&self, dep: i64, hold_id: &str, seats: &[String]) -> Result<Vec<String>, BookingError> {
        let holders: Vec<Option<String>> = retry_once(&self.inner.redis, |mut c| async move {
            redis::cmd("HMGET").arg(held_key(dep)).arg(seats).query_async(&mut c).await
        })
        .await?;
        let held: Vec<String> = seats
            .iter()
            .zip(&holders)
            .filter(|(_, h)| h.as_deref().is_some_and(|h| h != hold_id))
            .map(|(s, _)| s.clone())
            .collect();
        if !held.is_empty() {
            return Ok(held);
        }
        self.sold_among(dep, seats).await
    }

    /// Runs `f` under the departure's lock; `f` performs one transition and returns what it
    /// changed, whose new state is then recorded and published before the caller returns. The
    /// lock is waited for until `deadline`; once held, the deadline is extended to cover the
    /// transition, or, if that is impossible and it has passed, the transition does not start. A
    /// refusal (`f` fails with a booking error) changed nothing; once `f` succeeded the result is
    /// `Ok` whatever follows (the caller is told what happened), and a failure to record or
    /// publish leaves the departure marked for the sweeper and the lock's doubt marker for the
    /// next holder.
    ///
    /// Group commit: this instance's transitions of one departure take turns (FIFO), and the
    /// turns that follow each other while the Redis lease is held form one batch: each runs its
    /// own `f`, then waits until the batch is closed — by the first of its members whose turn
    /// comes round again, or by the member that fills it — with one publish for all of them (one
    /// version bump, one snapshot, one outbox row, one event per resource) and one release. Every
    /// member's reply still follows the events of its change, and the next batch's events follow
    /// this one's.
    pub async fn transition<T, F, Fut>(&self, dep: i64, deadline: &Deadline, f: F) -> Result<T, BookingError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(T, Change), BookingError>>,
    {
        let out = self.take_turn(dep, deadline, f).await;
        let mut map = self.inner.turns.lock().expect("turns map");
        // Only the map holds it: nobody waits, and no batch is open.
        if map.get(&dep).is_some_and(|t| Arc::strong_count(t) == 1) {
            map.remove(&dep);
        }
        out
    }

    async fn take_turn<T, F, Fut>(&self, dep: i64, deadline: &Deadline, f: F) -> Result<T, BookingError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(T, Change), BookingError>>,
    {
        let turns = self.inner.turns.lock().expect("turns map").entry(dep).or_default().clone();
        let wait = LOCK_WAIT.min(deadline.remaining());
        let mut turn = tokio::time::timeout(wait, turns.clone().lock_owned()).await.map_err(|_| BookingError::Busy)?;
        if turn.is_none() {
            *turn = Some(self.open_batch(dep, deadline).await?);
        }
        if deadline.remaining() < TRANSITION_BUDGET / 5 {
            deadline.extend(TRANSITION_BUDGET).await;
        }
        if deadline.passed() {
            self.leave(dep, &mut turn).await;
            return Err(BookingError::Busy);
        }
        let (out, change) = match f().await {
            Ok(done) => done,
            Err(e) if !e.is_fault() => {
                self.leave(dep, &mut turn).await;
                return Err(e);
            }
            // The transition may be half done: the batch ends unpublished, its mark stays and
            // the lease's drop leaves the doubt marker; members already in it are told of their
            // change (it happened), as after a failed publish.
            Err(e) => {
                turn.take();
                return Err(e);
            }
        };
        let batch = turn.as_mut().expect("a batch is open during a turn");
        batch.change.absorb(change);
        let (told, mut closed) = tokio::sync::oneshot::channel();
        batch.members.push(told);
        if batch.members.len() >= MAX_BATCH {
            self.close(dep, &mut turn).await;
            return Ok(out);
        }
        drop(turn);
        tokio::select! {
            biased;
            _ = &mut closed => {}
            mut turn = turns.lock_owned() => {
                // Empty: nobody closed this member's batch while it queued, so the open batch is
                // still its own (a batch opens only after the previous one closed or broke).
                if matches!(closed.try_recv(), Err(tokio::sync::oneshot::error::TryRecvError::Empty)) {
                    self.close(dep, &mut turn).await;
                }
            }
        }
        Ok(out)
    }

    async fn open_batch(&self, dep: i64, deadline: &Deadline) -> Result<Batch, BookingError> {
        let guard = self.inner.locks.acquire(&lock_key(dep), deadline).await?;
        // NX: an older mark (a previous holder's unpublished change) keeps its age for the sweeper.
        retry_once(&self.inner.redis, |mut c| async move {
            redis::cmd("ZADD").arg(UNPUBLISHED).arg("NX").arg(now_ms()).arg(dep).query_async::<()>(&mut c).await
        })
        .await?;
        Ok(Batch { guard, change: Change::default(), members: Vec::new() })
    }

    /// Ends a turn that changed nothing: a batch without members is closed (nobody else would),
    /// which in doubt still republishes — its clean release drops the doubt marker and the mark,
    /// and nothing else would ever publish what the previous holder changed.
    async fn leave(&self, dep: i64, turn: &mut Option<Batch>) {
        if turn.as_ref().is_some_and(|b| b.members.is_empty()) {
            self.close(dep, turn).await;
        }
    }

    /// Publishes the batch's changes, releases the lease and tells the members.
    async fn close(&self, dep: i64, turn: &mut Option<Batch>) {
        let Some(Batch { guard, change, members }) = turn.take() else { return };
        self.inner.metrics.transition_batches.observe(members.len() as f64);
        let mut published = if change.is_empty() && !guard.in_doubt() {
            Ok(())
        } else {
            self.publish(dep, change, guard.in_doubt()).await
        };
        if published.is_ok() && guard.in_doubt() {
            // After this batch's own events, so the gateways' re-fetch cannot be answered with a
            // state from before it (and arrive after them).
            published = self.reset_departure(dep).await;
        }
        if let Err(e) = published {
            tracing::warn!(departure = dep, error = %e, "seat change not published; the sweeper republishes");
            return;
        }
        self.unmark(dep).await;
        match guard.release().await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(departure = dep, "departure lease expired while held; resetting its resources");
                if let Err(e) = self.reset_departure(dep).await {
                    tracing::warn!(departure = dep, error = %e, "reset failed");
                }
            }
            Err(e) => tracing::warn!(departure = dep, error = %e, "releasing the departure lock failed"),
        }
        for told in members {
            let _ = told.send(());
        }
    }

    async fn unmark(&self, dep: i64) {
        let r = retry_once(&self.inner.redis, |mut c| async move {
            redis::cmd("ZREM").arg(UNPUBLISHED).arg(dep).query_async::<()>(&mut c).await
        })
        .await;
        if let Err(e) = r {
            tracing::warn!(departure = dep, error = %e, "unmarking a published departure failed");
        }
    }

    /// Makes the gateways fetch the departure's map, counts and holds again.
    async fn reset_departure(&self, dep: i64) -> Result<(), BookingError> {
        let rids = [seat_map_rid(dep), availability_rid(dep), departure_holds_rid(dep)];
        self.inner.events.reset(&rids.each_ref().map(String::as_str), &[]).await?;
        Ok(())
    }

    /// Publishes a batch's changes, in the order pages need: the owners' hold lists, then (after
    /// the version bump that covers them) the departure's hold list and its seats and counts, the
    /// counts also recorded in the outbox. In doubt the counts are published even if no seat
    /// changed here (the previous holder's change may be unpublished).
    async fn publish(&self, dep: i64, change: Change, in_doubt: bool) -> Result<(), BookingError> {
        futures_util::future::join_all(change.owners.iter().map(|owner| self.user_holds_changed(owner))).await;
        self.bump(departure_version_key(dep)).await?;
        if change.holds {
            self.departure_holds_changed(dep).await;
        }
        let ev = &self.inner.events;
        if !change.seats.is_empty() || in_doubt {
            let map = self.snapshot(dep).await?;
            let c = map.counts();
            let changed = SeatsChanged {
                departure_id: dep,
                total: c.total,
                free: c.free,
                held: c.held,
                sold: c.sold,
                at: Utc::now(),
            };
            let payload = serde_json::to_value(&changed).map_err(res_service::EventError::Encode)?;
            crate::outbox::record(&self.inner.db.get().await?, dep, SEATS_CHANGED_SUBJECT, payload).await?;
            self.inner.outbox.committed();
            let values: res_protocol::value::Model = change
                .seats
                .into_iter()
                .filter_map(|s| map.states.get(&s).map(|st| (s, Value::primitive(&format!("\"{st}\"")))))
                .collect();
            if !values.is_empty() {
                ev.change(&seat_map_rid(dep), &values).await?;
            }
            ev.change_json(&availability_rid(dep), c).await?;
        }
        ev.flush().await?;
        Ok(())
    }

    /// Republishes, under the lock, departures whose mark is older than the grace period: an
    /// instance died or failed between a transition and its events.
    async fn republish_unpublished(&self) -> Result<(), BookingError> {
        let cutoff = now_ms() - UNPUBLISHED_GRACE_MS;
        let deps: Vec<i64> = retry_once(&self.inner.redis, |mut c| async move {
            redis::cmd("ZRANGEBYSCORE")
                .arg(UNPUBLISHED)
                .arg("-inf")
                .arg(cutoff)
                .arg("LIMIT")
                .arg(0)
                .arg(20)
                .query_async(&mut c)
                .await
        })
        .await?;
        for dep in deps {
            tracing::warn!(departure = dep, "republishing a seat map whose change may not have been published");
            let seats = match self.departure(dep).await {
                Ok(info) => info.seats.iter().map(|s| s.id.clone()).collect(),
                Err(BookingError::NotFound) => {
                    self.unmark(dep).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.republish(dep, seats).await?;
        }
        Ok(())
    }

    /// Records and publishes the current state of `seats` (idempotent: for recovery after a
    /// crash or failure left it open whether their change was published).
    pub async fn republish(&self, dep: i64, seats: Vec<String>) -> Result<(), BookingError> {
        self.transition(dep, &unattended(), || async { Ok(((), Change::seats(seats))) }).await
    }

    /// Holds `seats` for `owner`: all or none, within the owner's cap on held seats. A hold that
    /// could only be made after `deadline`
    /// (the caller has stopped waiting for it) is released again: `booking.busy`.
    ///
    /// With an idempotency key the hold ID is derived from owner, departure and key, so a retry
    /// (the reply was lost) finds the hold made the first time instead of making another.
    pub async fn hold(
        &self,
        dep: i64,
        owner: &str,
        seats: Vec<String>,
        key: Option<&str>,
        deadline: &Deadline,
    ) -> Result<Hold, BookingError> {
        let info = self.departure(dep).await?;
        let max = self.inner.cfg.max_seats_per_hold;
        if seats.is_empty() {
            return Err(BookingError::InvalidParams("seats must not be empty".into()));
        }
        if seats.len() > max {
            return Err(BookingError::TooManySeats(max));
        }
        let unique: HashSet<&String> = seats.iter().collect();
        if unique.len() != seats.len() {
            return Err(BookingError::InvalidParams("a seat is listed twice".into()));
        }
        if let Some(bad) = seats.iter().find(|s| !info.seat_ids.contains(*s)) {
            return Err(BookingError::UnknownSeat(bad.clone()));
        }
        if info.departs_at <= Utc::now() {
            return Err(BookingError::Departed);
        }
        let hold_id = match key {
            Some(k) => {
                use sha2::Digest;
                let digest = sha2::Sha256::digest(format!("{owner}\n{dep}\n{k}"));
                format!("h{}", digest[..12].iter().map(|b| format!("{b:02x}")).collect::<String>())
            }
            None => format!("h{:024x}", rand::random::<u128>() >> 32),
        };
        let expires_at = now_ms() + (self.inner.cfg.hold_ttl_secs * 1000) as i64;
        let hold = Hold {
            hold_id: hold_id.clone(),
            departure_id: dep,
            owner: owner.to_owned(),
            seats: seats.clone(),
            expires_at,
            state: "active".into(),
        };
        let cap = self.inner.cfg.max_held_seats_per_user;
        // Seats someone else holds or bought are refused before queueing for the departure's
        // lock: on a sale day most holds race for taken seats, and each refusal would otherwise
        // hold the lock (and every other transition of the departure) for several round trips.
        // The check under the lock is still the one that decides.
        let taken = self.taken_by_others(dep, &hold_id, &seats).await?;
        if !taken.is_empty() {
            return Err(BookingError::SeatTaken(taken));
        }
        let made = self
            .transition(dep, deadline, || async {
                let taken = self.sold_among(dep, &seats).await?;
                if !taken.is_empty() {
                    return Err(BookingError::SeatTaken(taken));
                }
                let mut inv = self.inner.scripts.hold.prepare_invoke();
                inv.key(held_key(dep)).key(hold_key(&hold_id)).key(EXPIRY).key(user_holds_key(owner));
                inv.arg(&hold_id).arg(owner).arg(dep).arg(expires_at).arg(cap);
                for s in &seats {
                    inv.arg(s);
                }
                let inv = &inv;
                let r: Vec<String> =
                    match retry_once(&self.inner.redis, |mut c| async move { inv.invoke_async(&mut c).await }).await {
                        Ok(r) => r,
                        Err(e) => {
                            // The script may have run with its reply lost: the hold could exist with
                            // nobody told of it. Take it back still under the lock, so the next
                            // holder (told by the doubt marker) resets the map after the undo.
                            match self.end(dep, &hold_id, "", "release").await {
                                Ok(_) | Err(BookingError::HoldExpired) => {}
                                Err(undo) => {
                                    tracing::warn!(error = %undo, hold = %hold_id, "undoing a failed hold failed")
                                }
                            }
                            return Err(e.into());
                        }
                    };
                match r.first().map(String::as_str) {
                    Some("ok") => {}
                    Some("cap") => {
                        let held = r.get(1).and_then(|n| n.parse().ok()).unwrap_or(0);
                        return Err(BookingError::TooManyHeld { cap, held });
                    }
                    _ => return Err(BookingError::SeatTaken(r[1..].to_vec())),
                }
                Ok((hold, Change::seats(seats.clone()).owner(owner).departure_holds()))
            })
            .await;
        let out = match made {
            Ok(h) => h,
            Err(e) => {
                if e.is_fault() {
                    // A hold taken back above, if any, leaves the owner's list.
                    self.user_holds_changed(owner).await;
                }
                return Err(e);
            }
        };
        self.inner.metrics.holds_created.inc();
        if deadline.passed() {
            tracing::warn!(departure = dep, hold = %out.hold_id, "hold made after its caller gave up; releasing it");
            self.release(dep, &out.hold_id, None, &unattended()).await?;
            return Err(BookingError::Busy);
        }
        Ok(out)
    }

    /// Ends a hold; returns its seats and owner. The caller's change includes the departure's
    /// hold list.
    async fn end(
        &self,
        dep: i64,
        hold_id: &str,
        owner: &str,
        mode: &str,
    ) -> Result<(Vec<String>, String), BookingError> {
        let r: Vec<String> = retry_once(&self.inner.redis, |mut c| async move {
            self.inner
                .scripts
                .end
                .key(hold_key(hold_id))
                .key(EXPIRY)
                .key(PURCHASING)
                .key(held_key(dep))
                .arg(hold_id)
                .arg(owner)
                .arg(dep)
                .arg(mode)
                .arg(now_ms())
                .invoke_async(&mut c)
                .await
        })
        .await?;
        match r.first().map(String::as_str) {
            Some("ok") => {
                let seats = r.get(1).map(|s| split_seats(s)).unwrap_or_default();
                let owner = r.get(2).cloned().unwrap_or_default();
                Ok((seats, owner))
            }
            Some("notyours") => Err(BookingError::NotYourHold),
            Some("purchasing") => Err(BookingError::PurchaseInProgress),
            _ => Err(BookingError::HoldExpired),
        }
    }

    /// Releases a hold. `owner` `None`: any hold (operators).
    pub async fn release(
        &self,
        dep: i64,
        hold_id: &str,
        owner: Option<&str>,
        deadline: &Deadline,
    ) -> Result<Vec<String>, BookingError> {
        let (seats, owner) = self
            .transition(dep, deadline, || async {
                let (seats, owner) = self.end(dep, hold_id, owner.unwrap_or(""), "release").await?;
                Ok(((seats.clone(), owner), Change::seats(seats).departure_holds()))
            })
            .await?;
        self.user_holds_changed(&owner).await;
        self.inner.metrics.holds_released.inc();
        Ok(seats)
    }

    /// Starts purchasing holds of one departure together (one order): checks they are the
    /// caller's, active and unexpired, and stops their expiry until
    /// [`complete_purchase`](Self::complete_purchase) or [`abort_purchase`](Self::abort_purchase);
    /// all or none. Returns the holds.
    pub async fn begin_purchase(
        &self,
        dep: i64,
        hold_ids: &[String],
        owner: &str,
        deadline: &Deadline,
    ) -> Result<Vec<Hold>, BookingError> {
        let settle_at = now_ms() + (self.inner.cfg.purchase_timeout_secs * 1000) as i64;
        let attempt = format!("{:032x}", rand::random::<u128>());
        self.transition(dep, deadline, || async {
            let mut inv = self.inner.scripts.begin.prepare_invoke();
            inv.key(EXPIRY).key(PURCHASING).arg(owner).arg(dep).arg(now_ms()).arg(settle_at).arg(&attempt);
            for id in hold_ids {
                inv.arg(id);
            }
            let inv = &inv;
            let r: Vec<String> =
                retry_once(&self.inner.redis, |mut c| async move { inv.invoke_async(&mut c).await }).await?;
            match r.first().map(String::as_str) {
                Some("ok") => {
                    let holds = hold_ids
                        .iter()
                        .zip(r[1..].chunks(2))
                        .map(|(id, h)| Hold {
                            hold_id: id.clone(),
                            departure_id: dep,
                            owner: owner.to_owned(),
                            seats: split_seats(&h[0]),
                            expires_at: h.get(1).and_then(|e| e.parse().ok()).unwrap_or(0),
                            state: "purchasing".into(),
                        })
                        .collect();
                    Ok((holds, Change::default().owner(owner).departure_holds()))
                }
                Some("notyours") => Err(BookingError::NotYourHold),
                Some("purchasing") => Err(BookingError::PurchaseInProgress),
                _ => Err(BookingError::HoldExpired),
            }
        })
        .await
    }

    /// Puts holds being purchased back to active after a failed payment (they expire as before).
    pub async fn abort_purchase(&self, dep: i64, hold_ids: &[String]) -> Result<(), BookingError> {
        self.transition(dep, &unattended(), || async {
            let mut change = Change::default().departure_holds();
            for id in hold_ids {
                let owner: Option<String> = retry_once(&self.inner.redis, |mut c| async move {
                    let _: i64 = self
                        .inner
                        .scripts
                        .abort
                        .key(hold_key(id))
                        .key(EXPIRY)
                        .key(PURCHASING)
                        .arg(id)
                        .invoke_async(&mut c)
                        .await?;
                    redis::cmd("HGET").arg(hold_key(id)).arg("owner").query_async(&mut c).await
                })
                .await?;
                if let Some(owner) = owner {
                    change = change.owner(&owner);
                }
            }
            Ok(((), change))
        })
        .await
    }

    /// Ends purchased holds once their tickets (`seats`) are committed: the seats now show as
    /// sold. They are published even if a hold is gone already (settled by a sweeper, or lost
    /// with a Redis crash): the map must show the sale either way.
    pub async fn complete_purchase(&self, dep: i64, hold_ids: &[String], seats: &[String]) -> Result<(), BookingError> {
        let owners = self
            .transition(dep, &unattended(), || async {
                let mut owners = HashSet::new();
                for id in hold_ids {
                    match self.end(dep, id, "", "complete").await {
                        Ok((_, owner)) => {
                            owners.insert(owner);
                        }
                        Err(BookingError::HoldExpired) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok((owners, Change::seats(seats.iter().cloned()).departure_holds()))
            })
            .await?;
        for owner in owners {
            self.user_holds_changed(&owner).await;
        }
        Ok(())
    }

    /// The holds of a user, soonest expiry first (`seats.user.<sub>.holds`).
    pub async fn user_holds(&self, owner: &str) -> Result<Vec<Hold>, BookingError> {
        let key = user_holds_key(owner);
        let ids: Vec<String> = retry_once(&self.inner.redis, |mut c| {
            let key = key.clone();
            async move { redis::cmd("HKEYS").arg(key).query_async(&mut c).await }
        })
        .await?;
        self.load_holds(ids).await
    }

    /// The holds on a departure, soonest expiry first (`seats.departure.<id>.holds`, operators).
    pub async fn departure_holds(&self, dep: i64) -> Result<Vec<Hold>, BookingError> {
        let ids: Vec<String> = retry_once(&self.inner.redis, |mut c| async move {
            redis::cmd("HVALS").arg(held_key(dep)).query_async(&mut c).await
        })
        .await?;
        let unique: std::collections::BTreeSet<String> = ids.into_iter().collect();
        self.load_holds(unique.into_iter().collect()).await
    }

    async fn load_holds(&self, ids: Vec<String>) -> Result<Vec<Hold>, BookingError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HMGET").arg(hold_key(id)).arg("owner").arg("dep").arg("seats").arg("expires").arg("state");
        }
        let pipe = &pipe;
        let rows: Vec<Vec<Option<String>>> =
            retry_once(&self.inner.redis, |mut c| async move { pipe.query_async(&mut c).await }).await?;
        let mut holds: Vec<Hold> = ids
            .into_iter()
            .zip(rows)
            .filter_map(|(id, r)| {
                let [owner, dep, seats, expires, state] = <[Option<String>; 5]>::try_from(r).ok()?;
                Some(Hold {
                    hold_id: id,
                    departure_id: dep?.parse().ok()?,
                    owner: owner?,
                    seats: split_seats(&seats?),
                    expires_at: expires?.parse().ok()?,
                    state: state?,
                })
            })
            .collect();
        holds.sort_by(|a, b| (a.expires_at, &a.hold_id).cmp(&(b.expires_at, &b.hold_id)));
        Ok(holds)
    }

    /// Publishes the user's holds. Called before the seat events of a new hold and after those
    /// of an ended one, so a page never sees its own seat as someone else's. The list spans
    /// departures, so it is read and published under a per-user lock (taken inside departure
    /// locks only, never the other way round): each value published is newer than the last. A
    /// failure is logged: the change itself stands, and the gateway re-reads the list after a
    /// NATS outage.
    async fn user_holds_changed(&self, owner: &str) {
        let done = async {
            let guard = self.inner.locks.acquire(&format!("booking:lock:user:{owner}"), &unattended()).await?;
            self.bump(user_holds_version_key(owner)).await?;
            let mine = self.user_holds(owner).await?;
            let ev = &self.inner.events;
            let rid = user_holds_rid(owner);
            ev.change_json(&rid, serde_json::json!({ "holds": res_service::data(&mine) })).await?;
            ev.flush().await?;
            if !guard.release().await? {
                ev.reset(&[rid.as_str()], &[]).await?;
            }
            Ok::<_, BookingError>(())
        };
        if let Err(e) = done.await {
            tracing::warn!(owner, error = %e, "the user's holds were not published");
        }
    }

    async fn bump(&self, key: String) -> Result<(), BookingError> {
        retry_once(&self.inner.redis, |mut c| {
            let key = key.clone();
            async move { redis::cmd("INCR").arg(key).query_async::<()>(&mut c).await }
        })
        .await?;
        Ok(())
    }

    async fn version(&self, key: String) -> Result<i64, BookingError> {
        let v: Option<i64> = retry_once(&self.inner.redis, |mut c| {
            let key = key.clone();
            async move { redis::cmd("GET").arg(key).query_async(&mut c).await }
        })
        .await?;
        Ok(v.unwrap_or(0))
    }

    /// Read before the departure's seat map or counts are read for a get; see
    /// [`reset_departure_if_changed`](Self::reset_departure_if_changed).
    pub async fn departure_version(&self, dep: i64) -> Result<i64, BookingError> {
        self.version(departure_version_key(dep)).await
    }

    /// After a get's reply was routed (`res_service::Request::after_reply`): if a transition
    /// changed the departure since `seen`, its events may have reached the gateways before the
    /// reply, which was read earlier and would undo them in their caches; a reset makes them read
    /// the map, counts and holds again. Returns whether it reset.
    pub async fn reset_departure_if_changed(&self, dep: i64, seen: i64) -> Result<bool, BookingError> {
        let rids = [seat_map_rid(dep), availability_rid(dep), departure_holds_rid(dep)];
        self.reset_if_changed(departure_version_key(dep), seen, &rids).await
    }

    /// Read before a user's holds are read for a get; see
    /// [`reset_user_holds_if_changed`](Self::reset_user_holds_if_changed).
    pub async fn user_holds_version(&self, owner: &str) -> Result<i64, BookingError> {
        self.version(user_holds_version_key(owner)).await
    }

    /// As [`reset_departure_if_changed`](Self::reset_departure_if_changed), for a user's holds.
    pub async fn reset_user_holds_if_changed(&self, owner: &str, seen: i64) -> Result<bool, BookingError> {
        self.reset_if_changed(user_holds_version_key(owner), seen, &[user_holds_rid(owner)]).await
    }

    async fn reset_if_changed(&self, key: String, seen: i64, rids: &[String]) -> Result<bool, BookingError> {
        if self.version(key).await? == seen {
            return Ok(false);
        }
        let rids: Vec<&str> = rids.iter().map(String::as_str).collect();
        self.inner.events.reset(&rids, &[]).await?;
        Ok(true)
    }

    /// Publishes the departure's holds (operators); inside its transition, after the version
    /// bump that covers it, so in order.
    async fn departure_holds_changed(&self, dep: i64) {
        let done = async {
            let all = self.departure_holds(dep).await?;
            let value = serde_json::json!({ "holds": res_service::data(&all) });
            self.inner.events.change_json(&departure_holds_rid(dep), value).await?;
            Ok::<_, BookingError>(())
        };
        if let Err(e) = done.await {
            tracing::warn!(departure = dep, error = %e, "the departure's holds were not published");
        }
    }

    /// One sweep: frees expired holds and settles purchases past their deadline. Returns the
    /// number of holds expired by this instance.
    pub async fn sweep(&self) -> Result<usize, BookingError> {
        self.republish_unpublished().await?;
        let now = now_ms();
        let due = self.due(EXPIRY, now, 200).await?;
        let mut expired = 0;
        for id in due {
            let Some(dep) = self.hold_departure(&id).await? else { continue };
            let freed = self
                .transition(dep, &unattended(), || async {
                    match self.end(dep, &id, "", "expire").await {
                        Ok((seats, owner)) => Ok((Some(owner), Change::seats(seats).departure_holds())),
                        // Another instance expired it first, or it was released or bought.
                        Err(BookingError::HoldExpired | BookingError::PurchaseInProgress) => {
                            Ok((None, Change::default()))
                        }
                        Err(e) => Err(e),
                    }
                })
                .await?;
            if let Some(owner) = freed {
                self.user_holds_changed(&owner).await;
                expired += 1;
                self.inner.metrics.holds_expired.inc();
            }
        }
        for id in self.due(PURCHASING, now, 50).await? {
            let Some(dep) = self.hold_departure(&id).await? else { continue };
            let sold: Vec<String> = self
                .inner
                .db
                .get()
                .await?
                .query(
                    "SELECT t.seat_id FROM order_holds h JOIN tickets t ON t.order_id = h.order_id WHERE h.hold_id = $1",
                    &[&id],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            tracing::warn!(hold = %id, departure = dep, sold = !sold.is_empty(), "settling a purchase past its deadline");
            let ids = [id];
            if sold.is_empty() {
                self.abort_purchase(dep, &ids).await?;
            } else {
                self.complete_purchase(dep, &ids, &sold).await?;
            }
        }
        let work = retry_once(&self.inner.redis, |mut c| async move { in_flight(&mut c).await }).await?;
        self.inner.metrics.active_holds.set(work.holds + work.purchases);
        Ok(expired)
    }

    /// Holds of the sorted set `set` due at `now`, at most `limit`.
    async fn due(&self, set: &str, now: i64, limit: usize) -> Result<Vec<String>, BookingError> {
        Ok(retry_once(&self.inner.redis, |mut c| async move {
            redis::cmd("ZRANGEBYSCORE")
                .arg(set)
                .arg("-inf")
                .arg(now)
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query_async(&mut c)
                .await
        })
        .await?)
    }

    /// The departure of a hold; drops index entries of holds that no longer exist.
    async fn hold_departure(&self, id: &str) -> Result<Option<i64>, BookingError> {
        let dep: Option<i64> = retry_once(&self.inner.redis, |mut c| async move {
            redis::cmd("HGET").arg(hold_key(id)).arg("dep").query_async(&mut c).await
        })
        .await?;
        if dep.is_none() {
            let () = retry_once(&self.inner.redis, |mut c| async move {
                redis::pipe().zrem(EXPIRY, id).ignore().zrem(PURCHASING, id).ignore().query_async(&mut c).await
            })
            .await?;
        }
        Ok(dep)
    }

    /// Resets every seat map when Redis is not the server it was (`run_id` changed: it restarted
    /// and lost what it had not yet written to disk), and once per `resync_secs` across all
    /// instances (the first sweeper to take that period's key). Returns the current `run_id`.
    async fn reconcile(&self, known_run_id: Option<&str>) -> Result<String, BookingError> {
        let info: String =
            retry_once(
                &self.inner.redis,
                |mut c| async move { redis::cmd("INFO").arg("server").query_async(&mut c).await },
            )
            .await?;
        let run_id =
            info.lines().find_map(|l| l.strip_prefix("run_id:")).map(|v| v.trim().to_owned()).unwrap_or_default();
        let restarted = known_run_id.is_some_and(|known| known != run_id);
        let period = self.inner.cfg.resync_secs;
        let periodic = period > 0 && {
            let token = format!("{:016x}", rand::random::<u64>());
            let taken: Option<String> = retry_once(&self.inner.redis, |mut c| {
                let token = token.clone();
                async move {
                    redis::cmd("SET").arg(RESYNC).arg(token).arg("NX").arg("EX").arg(period).query_async(&mut c).await
                }
            })
            .await?;
            taken.is_some()
        };
        if restarted || periodic {
            if restarted {
                tracing::warn!("Redis restarted (new run_id); resetting every seat map");
            }
            self.inner.events.reset(&[SEATS_RESOURCES], &[]).await?;
        }
        if restarted {
            // A re-fetch answered while a transition of the same map was under way can arrive
            // after that transition's events and undo them in the gateway; once the transitions
            // in flight across the restart are done, a second reset settles it.
            let events = self.inner.events.clone();
            tokio::spawn(async move {
                tokio::time::sleep(SETTLE_RESET).await;
                if let Err(e) = events.reset(&[SEATS_RESOURCES], &[]).await {
                    tracing::warn!(error = %e, "second reset after the Redis restart failed");
                }
            });
        }
        Ok(run_id)
    }

    /// Runs the sweeper until `cancel` fires.
    pub async fn run_sweeper(self, cancel: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.inner.cfg.sweep_interval_ms.max(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut run_id = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.reconcile(run_id.as_deref()).await {
                Ok(id) => run_id = Some(id),
                Err(e) => tracing::warn!(error = %e, "seat map reconciliation failed"),
            }
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "hold sweep failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::seat_features;

    #[test]
    fn features_follow_the_place_in_the_car() {
        let four: Vec<String> = "ABCD".chars().map(String::from).collect();
        let three: Vec<String> = "ABC".chars().map(String::from).collect();
        assert_eq!(seat_features(&four, 14, 1, "A"), ["window"]);
        assert_eq!(seat_features(&four, 14, 1, "B"), ["aisle"]);
        assert_eq!(seat_features(&four, 14, 7, "C"), ["aisle", "table"]);
        assert_eq!(seat_features(&four, 14, 8, "D"), ["window", "table"]);
        assert!(seat_features(&four, 14, 9, "D").len() == 1);
        // Three across is A | B C: A sits alone, by the window and the aisle.
        assert_eq!(seat_features(&three, 10, 1, "A"), ["window", "aisle"]);
        assert_eq!(seat_features(&three, 10, 5, "B"), ["aisle", "table"]);
        assert_eq!(seat_features(&three, 10, 2, "C"), ["window"]);
        assert!(seat_features(&three, 10, 2, "Z").is_empty());
    }
}
