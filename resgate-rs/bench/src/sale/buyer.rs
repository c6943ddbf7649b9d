//! A signed-in buyer: search → open the seat map → hold 1–4 free seats → pay (some cards are
//! declined first) or release → "my tickets" (→ cancel, in the steady state), with think times,
//! until the departure is sold out or the run ends. A failed request is tried again as an app
//! would: with the same idempotency key, a bounded number of times.

use super::client::{Failure, SeatState, Session};
use crate::stats::{ShardedHistogram, now_ns};
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// What a user does, each with its own latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Login,
    Search,
    OpenMap,
    Hold,
    Purchase,
    Release,
    MyTickets,
    Cancel,
}

impl Action {
    pub const ALL: [Action; 8] = [
        Action::Login,
        Action::Search,
        Action::OpenMap,
        Action::Hold,
        Action::Purchase,
        Action::Release,
        Action::MyTickets,
        Action::Cancel,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::Login => "login",
            Action::Search => "search",
            Action::OpenMap => "open_map",
            Action::Hold => "hold",
            Action::Purchase => "purchase",
            Action::Release => "release",
            Action::MyTickets => "my_tickets",
            Action::Cancel => "cancel",
        }
    }
}

/// Approved and declined cards of the test payment provider (docs/API.md).
const CARD_APPROVED: &str = "4242424242424242";
const CARD_DECLINED: &str = "4000000000000002";

/// Codes after which the same request is tried again (same idempotency key).
fn retryable(code: &str) -> bool {
    matches!(
        code,
        "system.timeout"
            | "booking.busy"
            | "system.internalError"
            | "booking.purchaseInProgress"
            | super::client::NO_ANSWER
    )
}
const ATTEMPTS: usize = 4;

/// A departure buyers go for, and the search that lists it.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: i64,
    /// `from=..&to=..&date=..` of `catalog.departures`.
    pub query: String,
}

/// How buyers behave.
#[derive(Debug, Clone)]
pub struct Plan {
    pub departures: Vec<Target>,
    pub think_ms: (u64, u64),
    pub pay_pct: u32,
    pub decline_pct: u32,
    pub cancel_pct: u32,
    /// Stop once the departure's map shows every seat sold (the sale-day run).
    pub until_sold_out: bool,
    /// No new cycle starts after this (tool clock, ns).
    pub end_ns: u64,
}

/// An order a buyer was told was placed.
#[derive(Debug, Clone)]
pub struct ToldOrder {
    pub departure: i64,
    pub seats: Vec<String>,
    pub cancelled: bool,
}

/// What buyers were told, for the audit against PostgreSQL and Redis.
#[derive(Debug, Default)]
pub struct Told {
    /// Every hold reported made.
    pub holds: HashSet<String>,
    /// Holds reported made and not reported released or bought.
    pub open: HashMap<String, i64>,
    pub orders: HashMap<String, ToldOrder>,
}

/// Counters and histograms every buyer records into.
pub struct Shared {
    hist: Vec<ShardedHistogram>,
    pub errors: Mutex<BTreeMap<String, u64>>,
    pub told: Mutex<Told>,
    pub holds: AtomicU64,
    pub releases: AtomicU64,
    pub hold_requests: AtomicU64,
    pub release_requests: AtomicU64,
    pub bookings: AtomicU64,
    pub seats_booked: AtomicU64,
    pub declines: AtomicU64,
    pub cancels: AtomicU64,
    pub cycles: AtomicU64,
    pub closed: AtomicU64,
    /// Tool clock when the last purchase succeeded.
    pub last_booking_ns: AtomicU64,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            hist: Action::ALL.iter().map(|_| ShardedHistogram::new(16)).collect(),
            errors: Mutex::default(),
            told: Mutex::default(),
            holds: AtomicU64::new(0),
            releases: AtomicU64::new(0),
            hold_requests: AtomicU64::new(0),
            release_requests: AtomicU64::new(0),
            bookings: AtomicU64::new(0),
            seats_booked: AtomicU64::new(0),
            declines: AtomicU64::new(0),
            cancels: AtomicU64::new(0),
            cycles: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            last_booking_ns: AtomicU64::new(0),
        }
    }

    pub fn histogram(&self, a: Action) -> &ShardedHistogram {
        &self.hist[a as usize]
    }

    pub fn error(&self, a: Action, code: &str) {
        *self.errors.lock().entry(format!("{} {code}", a.name())).or_default() += 1;
    }
}

/// One buyer's session, its identity and its dice.
pub struct Buyer {
    pub idx: usize,
    pub sub: String,
    pub session: Session,
    rng: SmallRng,
    /// This buyer's open holds (hold ID → departure).
    open: HashMap<String, i64>,
    keys: u64,
}

impl Buyer {
    pub fn new(idx: usize, sub: String, session: Session, seed: u64) -> Buyer {
        Buyer { idx, sub, session, rng: SmallRng::seed_from_u64(seed), open: HashMap::new(), keys: 0 }
    }

    fn key(&mut self, what: &str) -> String {
        self.keys += 1;
        format!("{}-{what}-{}", self.sub, self.keys)
    }

    /// One request, timed and counted; `Err` carries the code.
    async fn timed(&mut self, sh: &Shared, a: Action, method: &str, params: Option<&Value>) -> Result<Value, Failure> {
        let sent = now_ns();
        let r = self.session.request(method, params).await;
        if r.as_ref().err().is_none_or(|f| f.code != super::client::NO_ANSWER) {
            sh.histogram(a).record(self.idx, now_ns().saturating_sub(sent) / 1000);
        }
        if let Err(f) = &r {
            sh.error(a, &f.code);
        }
        r
    }

    /// `timed`, tried again on a retryable failure with the same parameters.
    async fn retried(
        &mut self,
        sh: &Shared,
        a: Action,
        method: &str,
        params: Option<&Value>,
    ) -> Result<Value, Failure> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.timed(sh, a, method, params).await {
                Err(f) if retryable(&f.code) && attempt < ATTEMPTS && !self.session.is_closed() => {
                    let pause = self.rng.random_range(100..300);
                    self.session.idle(Duration::from_millis(pause)).await;
                }
                r => return r,
            }
        }
    }

    /// Signs in over the connection with the user's access token.
    pub async fn login(&mut self, sh: &Shared, token: &str) -> Result<(), Failure> {
        let params = json!({ "token": token });
        self.retried(sh, Action::Login, "auth.identity.session.login", Some(&params)).await.map(drop)
    }

    async fn think(&mut self, plan: &Plan) {
        let (lo, hi) = plan.think_ms;
        let ms = if hi > lo { self.rng.random_range(lo..=hi) } else { lo };
        self.session.idle(Duration::from_millis(ms)).await;
    }

    /// Cycles until the run ends (or, on sale day, the departure is sold out); then gives back
    /// every hold still open.
    pub async fn run(mut self, plan: &Plan, sh: &Shared) -> Session {
        let mut current: Option<i64> = None;
        while now_ns() < plan.end_ns && !self.session.is_closed() {
            let target = plan.departures[self.rng.random_range(0..plan.departures.len())].clone();
            if !self.cycle(plan, sh, &target, &mut current).await {
                break;
            }
            sh.cycles.fetch_add(1, Relaxed);
        }
        for (hold, dep) in std::mem::take(&mut self.open) {
            self.release(sh, dep, &hold).await;
        }
        if self.session.is_closed() {
            sh.closed.fetch_add(1, Relaxed);
        }
        self.session
    }

    /// One visit; `false` when this buyer is done (sold out).
    async fn cycle(&mut self, plan: &Plan, sh: &Shared, t: &Target, current: &mut Option<i64>) -> bool {
        if *current != Some(t.id) {
            // A person searches once and then stays on the seat map while it has free seats.
            let _ = self.timed(sh, Action::Search, &format!("get.catalog.departures?{}", t.query), None).await;
            if let Some(old) = current.take() {
                let _ = self.session.close_map(old).await;
            }
            if self.timed_open(sh, t.id).await.is_err() {
                return !self.session.is_closed();
            }
            *current = Some(t.id);
        }
        self.think(plan).await;
        let Some(hold) = self.hold_some(plan, sh, t.id).await else {
            return !(plan.until_sold_out && self.sold_out(t.id));
        };
        self.think(plan).await;
        if self.rng.random_range(0..100) < plan.pay_pct {
            if let Some(order) = self.pay(plan, sh, t.id, &hold).await {
                let _ = self.timed(sh, Action::MyTickets, &format!("get.tickets.user.{}", self.sub), None).await;
                if self.rng.random_range(0..100) < plan.cancel_pct {
                    self.think(plan).await;
                    self.cancel(sh, &order).await;
                }
            }
        } else {
            self.release(sh, t.id, &hold).await;
        }
        self.think(plan).await;
        true
    }

    async fn timed_open(&mut self, sh: &Shared, dep: i64) -> Result<(), Failure> {
        let sent = now_ns();
        let r = self.session.open_map(dep).await;
        sh.histogram(Action::OpenMap).record(self.idx, now_ns().saturating_sub(sent) / 1000);
        if let Err(f) = &r {
            sh.error(Action::OpenMap, &f.code);
        }
        r
    }

    fn sold_out(&self, dep: i64) -> bool {
        self.session.maps.get(&dep).is_some_and(|m| m.values().all(|s| *s == SeatState::Sold))
    }

    /// Holds 1–4 seats the map shows free; `None` if none could be held this time.
    async fn hold_some(&mut self, plan: &Plan, sh: &Shared, dep: i64) -> Option<String> {
        let mut free: Vec<String> = self
            .session
            .maps
            .get(&dep)
            .map(|m| m.iter().filter(|(_, s)| **s == SeatState::Free).map(|(k, _)| k.clone()).collect())
            .unwrap_or_default();
        if free.is_empty() {
            // Held seats may come back: look again after a think time (bounded by the run's end).
            if !self.sold_out(dep) && now_ns() < plan.end_ns {
                self.think(plan).await;
            }
            return None;
        }
        free.sort_unstable();
        let want = self.rng.random_range(1..=4usize).min(free.len());
        // Neighbouring seats, as people book them: a run from a random start.
        let start = self.rng.random_range(0..free.len());
        let seats: Vec<String> = (0..want).map(|k| free[(start + k) % free.len()].clone()).collect();
        let params = json!({ "seats": seats, "idempotencyKey": self.key("hold") });
        let r = self.retried(sh, Action::Hold, &format!("call.seats.departure.{dep}.hold"), Some(&params)).await;
        sh.hold_requests.fetch_add(1, Relaxed);
        let hold = r.ok()?["holdId"].as_str()?.to_owned();
        sh.holds.fetch_add(1, Relaxed);
        {
            let mut told = sh.told.lock();
            told.holds.insert(hold.clone());
            told.open.insert(hold.clone(), dep);
        }
        self.open.insert(hold.clone(), dep);
        Some(hold)
    }

    async fn release(&mut self, sh: &Shared, dep: i64, hold: &str) {
        let params = json!({ "holdId": hold });
        let r = self.retried(sh, Action::Release, &format!("call.seats.departure.{dep}.release"), Some(&params)).await;
        sh.release_requests.fetch_add(1, Relaxed);
        // An expired hold is gone as well; anything else leaves it open (the audit shows it).
        if r.is_ok() || r.as_ref().is_err_and(|f| f.code == "booking.holdExpired") {
            if r.is_ok() {
                sh.releases.fetch_add(1, Relaxed);
            }
            sh.told.lock().open.remove(hold);
            self.open.remove(hold);
        }
    }

    /// Pays for the hold (a declined card first, sometimes); the order ID when placed. A hold
    /// that cannot be paid for is released.
    async fn pay(&mut self, plan: &Plan, sh: &Shared, dep: i64, hold: &str) -> Option<String> {
        let mut card = if self.rng.random_range(0..100) < plan.decline_pct { CARD_DECLINED } else { CARD_APPROVED };
        loop {
            let params = json!({ "departureId": dep, "holdIds": [hold], "cardNumber": card,
                "idempotencyKey": self.key("pay") });
            match self.retried(sh, Action::Purchase, "call.tickets.orders.purchase", Some(&params)).await {
                Ok(order) => {
                    let id = order["orderId"].as_str()?.to_owned();
                    let seats: Vec<String> = order["tickets"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|t| t["seat"].as_str().map(str::to_owned))
                        .collect();
                    sh.bookings.fetch_add(1, Relaxed);
                    sh.seats_booked.fetch_add(seats.len() as u64, Relaxed);
                    sh.last_booking_ns.fetch_max(now_ns(), Relaxed);
                    {
                        let mut told = sh.told.lock();
                        told.open.remove(hold);
                        told.orders.insert(id.clone(), ToldOrder { departure: dep, seats, cancelled: false });
                    }
                    self.open.remove(hold);
                    return Some(id);
                }
                Err(f) if f.code == "booking.paymentDeclined" && card == CARD_DECLINED => {
                    sh.declines.fetch_add(1, Relaxed);
                    // The holds stay; the user types another card.
                    self.think(plan).await;
                    card = CARD_APPROVED;
                }
                Err(f) => {
                    if f.code != "booking.holdExpired" {
                        self.release(sh, dep, hold).await;
                    } else {
                        sh.told.lock().open.remove(hold);
                        self.open.remove(hold);
                    }
                    return None;
                }
            }
        }
    }

    async fn cancel(&mut self, sh: &Shared, order: &str) {
        let r = self.retried(sh, Action::Cancel, &format!("call.tickets.order.{order}.cancel"), None).await;
        // A retry of a cancel that went through the first time says so.
        if r.is_ok() || r.as_ref().is_err_and(|f| f.code == "booking.alreadyCancelled") {
            sh.cancels.fetch_add(1, Relaxed);
            if let Some(o) = sh.told.lock().orders.get_mut(order) {
                o.cancelled = true;
            }
        }
    }
}
