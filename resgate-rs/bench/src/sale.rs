//! `sale`: the booking platform under a sale-day crowd, through the gateway, as real signed-in
//! users (tokens from the local OpenID Provider, one user each). Buyers search, open a seat map,
//! hold 1–4 seats, pay (some cards declined first) or release, look at "my tickets" (and, in the
//! steady state, cancel some orders), with think times; watchers only subscribe to seat maps.
//! The departures are found through the gateway's search: ones with every seat free.
//!
//! Reported: bookings/s, holds/s, hold-or-release/s, latency per action, every error by code,
//! the seat-map event latency to watchers (from the service's publish, seen by the tool's own
//! NATS subscription, to the watcher's socket), CPU per booking of each named process, and an
//! audit against PostgreSQL and Redis (no seat sold twice, told ⇔ committed with its tickets,
//! no orphan holds, every view = the truth).

mod audit;
mod buyer;
mod client;
mod tokens;

use crate::report::{Report, per_sec};
use crate::stats::{Latency, Proc, ShardedHistogram, now_ns, tree_cpu_seconds};
use crate::ws::{self, Ws};
use crate::{Ctx, finish_report, secs};
use anyhow::{Context, Result, bail};
use buyer::{Action, Buyer, Plan, Shared, Target};
use clap::Args;
use client::{SeatMap, SeatState, Session, seat_map_of};
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

#[derive(Args, Debug)]
pub struct SaleArgs {
    /// Signed-in buyers (distinct users).
    #[arg(long, default_value_t = 2000)]
    pub buyers: usize,
    /// Anonymous watchers, each subscribed to one seat map (spread over the departures).
    #[arg(long, default_value_t = 10_000)]
    pub watchers: usize,
    /// Departures the buyers and watchers are spread over.
    #[arg(long, default_value_t = 1)]
    pub departures: usize,
    /// Sale day: buyers stop once their departure is sold out (`--duration` is then the bound).
    #[arg(long)]
    pub until_sold_out: bool,
    /// Length of the run in seconds (with `--until-sold-out`: its upper bound).
    #[arg(long, default_value_t = 600.0)]
    pub duration: f64,
    /// Think time between a user's steps, `MIN,MAX` milliseconds (uniform).
    #[arg(long, default_value = "200,1000")]
    pub think_ms: String,
    /// Percent of holds paid for (the others are released).
    #[arg(long, default_value_t = 70)]
    pub pay_pct: u32,
    /// Percent of payments tried first with a card the provider declines.
    #[arg(long, default_value_t = 10)]
    pub decline_pct: u32,
    /// Percent of placed orders cancelled afterwards (keeps a steady state from selling out).
    #[arg(long, default_value_t = 0)]
    pub cancel_pct: u32,
    /// Buyers start spread over this many seconds (0: all at once).
    #[arg(long, default_value_t = 1.0)]
    pub ramp: f64,
    /// The local OpenID Provider (started with `--test-admin`), which mints the users' tokens.
    #[arg(long, default_value = "http://127.0.0.1:8180/realms/booking")]
    pub issuer: String,
    /// PostgreSQL of the booking services, for the audit.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/booking")]
    pub database_url: String,
    /// Redis of the booking services, for the audit.
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,
    /// More gateways (loopback): clients are spread over `--gateway` and these.
    #[arg(long = "also-gateway")]
    pub also_gateways: Vec<SocketAddr>,
    /// A process whose CPU is reported per booking, `NAME=PID` (its descendants count too);
    /// repeatable.
    #[arg(long = "proc")]
    pub procs: Vec<String>,
    /// The tool's own limit on one request, in seconds. Above what services may extend a
    /// request to (purchases: 15 s), so that the gateway's answer, not the tool, ends a request.
    #[arg(long, default_value_t = 20.0)]
    pub request_timeout: f64,
    /// Routes searched for departures with every seat free, `FROM-TO,...` (station IDs).
    #[arg(long, default_value = "AH-MH,MH-AH,BL-MH,MH-BL,KK-BL,BL-KK,FF-DO,DO-FF,BL-AH,AH-BL,FF-RB,RB-FF")]
    pub routes: String,
    /// A file written when the sale opens (buyers signed in, watchers subscribed), for scripts
    /// that act on the platform during the run.
    #[arg(long)]
    pub started_file: Option<std::path::PathBuf>,
    /// How long the views may take to show the truth after the run, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub converge: f64,
}

/// `MIN,MAX` milliseconds.
fn parse_think(s: &str) -> Result<(u64, u64)> {
    let (lo, hi) = s.split_once(',').context("--think-ms is MIN,MAX")?;
    let (lo, hi): (u64, u64) = (lo.trim().parse()?, hi.trim().parse()?);
    if lo > hi || hi > 600_000 {
        bail!("--think-ms: MIN <= MAX <= 600000");
    }
    Ok((lo, hi))
}

/// `NAME=PID`.
fn parse_proc(s: &str) -> Result<(String, u32)> {
    let (name, pid) = s.split_once('=').with_context(|| format!("--proc {s}: NAME=PID"))?;
    Ok((name.to_owned(), pid.parse().with_context(|| format!("--proc {s}: PID"))?))
}

/// Each seat's latest published state and when the tool's NATS subscription saw it.
type LatestPublish = HashMap<String, (SeatState, u64)>;

/// When the tool's own NATS subscription saw each seat of each departure take its latest state.
struct EventClock {
    deps: HashMap<i64, Mutex<LatestPublish>>,
}

impl EventClock {
    fn new(deps: &[i64]) -> EventClock {
        EventClock { deps: deps.iter().map(|&d| (d, Mutex::default())).collect() }
    }

    fn record(&self, dep: i64, changes: &[(String, SeatState)], t: u64) {
        if let Some(m) = self.deps.get(&dep) {
            let mut m = m.lock();
            for (seat, st) in changes {
                m.insert(seat.clone(), (*st, t));
            }
        }
    }

    /// When `seat` was published turning `st`, if that is its latest publish. A watcher whose
    /// event is not the latest (the tool's subscription has not seen it yet, or the seat moved
    /// on meanwhile) is not timed rather than timed against another transition.
    fn published(&self, dep: i64, seat: &str, st: SeatState) -> Option<u64> {
        let m = self.deps.get(&dep)?.lock();
        m.get(seat).filter(|(s, _)| *s == st).map(|(_, t)| *t)
    }
}

/// Follows `event.seats.departure.*.change` on NATS, as the gateways get it, on a thread of its
/// own so that its clock is not late behind busy client threads. It runs until the tool exits.
async fn follow_publishes(nats: &str, clock: Arc<EventClock>) -> Result<()> {
    let nats = nats.to_owned();
    let (ready_tx, ready_rx) = oneshot::channel::<Result<()>>();
    let thread = std::thread::Builder::new().name("resbench-publishes".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready_tx.send(Err(e.into()));
                return;
            }
        };
        rt.block_on(async move {
            let subscribed = async {
                let nc = async_nats::connect(&nats).await.with_context(|| format!("connect to NATS at {nats}"))?;
                let sub = nc.subscribe("event.seats.departure.*.change").await.context("subscribe to seat events")?;
                nc.flush().await.context("NATS flush")?;
                Ok::<_, anyhow::Error>((nc, sub))
            };
            let (nc, mut sub) = match subscribed.await {
                Ok(x) => x,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            while let Some(m) = sub.next().await {
                let t = now_ns();
                let Some(dep) = m.subject.as_str().strip_prefix("event.").and_then(client::departure_of_change) else {
                    continue;
                };
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.payload) else { continue };
                let changes: Vec<(String, SeatState)> = v["values"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| Some((k.clone(), SeatState::parse(v.as_str()?)?)))
                    .collect();
                clock.record(dep, &changes, t);
            }
            drop(nc);
        });
    })?;
    ready_rx.await.context("publish follower")??;
    drop(thread);
    Ok(())
}

#[derive(Default)]
struct WatchCounts {
    events: AtomicU64,
    unmatched: AtomicU64,
    closed: AtomicU64,
}

/// A watcher: reads its seat map's events until told to stop, timing each against its publish.
async fn watch_map(
    i: usize,
    mut ws: Ws,
    clock: Arc<EventClock>,
    hist: Arc<ShardedHistogram>,
    counts: Arc<WatchCounts>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let msg = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            m = ws.next() => m,
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                let now = now_ns();
                let Some((dep, changes)) = client::seat_changes(t.as_bytes()) else { continue };
                counts.events.fetch_add(1, Relaxed);
                let Some((seat, st)) = changes.first() else { continue };
                match clock.published(dep, seat, *st) {
                    None => {
                        counts.unmatched.fetch_add(1, Relaxed);
                    }
                    Some(t0) => hist.record(i, now.saturating_sub(t0) / 1000),
                }
            }
            Some(Ok(_)) => {}
            _ => {
                counts.closed.fetch_add(1, Relaxed);
                return;
            }
        }
    }
    ws::close(ws).await;
}

/// An anonymous client per departure that keeps a full copy of its seat map, for the audit.
struct Auditor {
    dep: i64,
    ask: mpsc::UnboundedSender<oneshot::Sender<SeatMap>>,
}

impl Auditor {
    async fn start(target: &ws::Target, dep: i64, timeout: Duration, stop: watch::Receiver<bool>) -> Result<Auditor> {
        let ws = ws::connect(target, 0).await?;
        let mut s = Session::open(ws, timeout).await.map_err(|f| anyhow::anyhow!("auditor: {}", f.code))?;
        s.open_map(dep).await.map_err(|f| anyhow::anyhow!("auditor subscribe: {}", f.code))?;
        let (ask, mut asks) = mpsc::unbounded_channel::<oneshot::Sender<SeatMap>>();
        tokio::spawn(async move {
            while !*stop.borrow() && !s.is_closed() {
                s.idle(Duration::from_millis(50)).await;
                while let Ok(reply) = asks.try_recv() {
                    let _ = reply.send(s.maps.get(&dep).cloned().unwrap_or_default());
                }
            }
            s.close().await;
        });
        Ok(Auditor { dep, ask })
    }

    async fn view(&self) -> SeatMap {
        let (tx, rx) = oneshot::channel();
        if self.ask.send(tx).is_err() {
            return SeatMap::new();
        }
        rx.await.unwrap_or_default()
    }
}

/// Departures with every seat free, found through the gateway's search.
async fn find_departures(s: &mut Session, routes: &str, wanted: usize) -> Result<Vec<Target>> {
    let routes: Vec<(&str, &str)> = routes.split(',').filter_map(|r| r.trim().split_once('-')).collect();
    if routes.is_empty() {
        bail!("--routes: FROM-TO,...");
    }
    let mut found = Vec::new();
    let today = today_days();
    for day in 1..=28 {
        let date = date_after(today, day);
        for (from, to) in &routes {
            let query = format!("date={date}&from={from}&to={to}");
            let r = s
                .request(&format!("get.catalog.departures?{query}"), None)
                .await
                .map_err(|f| anyhow::anyhow!("search {query}: {}", f.code))?;
            let models = r["models"].as_object().cloned().unwrap_or_default();
            let mut ids: Vec<i64> = models
                .iter()
                .filter_map(|(rid, m)| {
                    let id = rid.strip_prefix("seats.departure.")?.strip_suffix(".availability")?.parse().ok()?;
                    (m["free"].as_i64()? == m["total"].as_i64()? && m["total"].as_i64()? > 0).then_some(id)
                })
                .collect();
            ids.sort_unstable();
            for id in ids {
                if found.len() < wanted && !found.iter().any(|t: &Target| t.id == id) {
                    found.push(Target { id, query: query.clone() });
                }
            }
            if found.len() >= wanted {
                return Ok(found);
            }
        }
    }
    bail!("found only {} departures with every seat free (wanted {wanted}) on --routes {routes:?}", found.len())
}

/// Days since 1970-01-01, today (UTC).
fn today_days() -> i64 {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    (secs / 86_400) as i64
}

/// `YYYY-MM-DD` of `days` after day number `today` (civil calendar, proleptic Gregorian).
fn date_after(today: i64, days: i64) -> String {
    let z = today + days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[derive(Serialize)]
struct ProcOut {
    pid: u32,
    cpu_seconds: f64,
    cpu_ms_per_booking: Option<f64>,
}

#[derive(Serialize)]
struct SaleOut {
    mode: &'static str,
    buyers: usize,
    buyers_signed_in: usize,
    watchers: usize,
    gateways: usize,
    departures: Vec<i64>,
    seats: usize,
    seconds: f64,
    sold_out_after_seconds: Option<f64>,
    bookings: u64,
    bookings_per_second: f64,
    seats_booked: u64,
    holds: u64,
    holds_per_second: f64,
    releases: u64,
    hold_or_release_requests: u64,
    hold_or_release_per_second: f64,
    declined_then_paid_or_released: u64,
    cancels: u64,
    cycles: u64,
    actions: BTreeMap<&'static str, Latency>,
    errors: BTreeMap<String, u64>,
    timeouts: u64,
    buyers_disconnected: u64,
    watcher_events: u64,
    watcher_event_latency: Latency,
    watcher_events_unmatched: u64,
    watchers_disconnected: u64,
    processes: BTreeMap<String, ProcOut>,
    tool_cpu_seconds: f64,
    audit: audit::Findings,
    audit_clean: bool,
}

pub async fn run(mut ctx: Ctx, a: SaleArgs) -> Result<(Report, ws::Shards)> {
    let duration = secs(a.duration, "--duration", 24.0 * 3600.0)?;
    let timeout = secs(a.request_timeout, "--request-timeout", 600.0)?;
    let connect_timeout = secs(ctx.common.connect_timeout, "--connect-timeout", 600.0)?;
    let converge = secs(a.converge, "--converge", 600.0)?;
    let think_ms = parse_think(&a.think_ms)?;
    let procs: Vec<(String, u32)> = a.procs.iter().map(|p| parse_proc(p)).collect::<Result<_>>()?;
    if a.buyers == 0 || a.departures == 0 || a.pay_pct > 100 || a.decline_pct > 100 || a.cancel_pct > 100 {
        bail!("--buyers and --departures must be >= 1, percentages <= 100");
    }
    if let Some(g) = a.also_gateways.iter().find(|g| !g.ip().is_loopback()) {
        bail!("--also-gateway must be a loopback address (got {g})");
    }
    let issuer = tokens::Issuer::parse(&a.issuer)?;
    let stores = audit::Stores { database_url: a.database_url.clone(), redis_url: a.redis_url.clone() };
    let mut db = audit::Db::connect(&stores).await?;
    let targets: Vec<ws::Target> = std::iter::once(ctx.target.addr)
        .chain(a.also_gateways.iter().copied())
        .map(|addr| ws::Target { addr, ..ctx.target.clone() })
        .collect();
    let target_of = |i: usize| targets[i % targets.len()].clone();
    let wanted = ctx.fit_clients(a.buyers + a.watchers + a.departures + 2);
    let (n_buyers, n_watchers) = if wanted < a.buyers + a.watchers + a.departures + 2 {
        let b = a.buyers.min(wanted / 2);
        (b, wanted.saturating_sub(b + a.departures + 2))
    } else {
        (a.buyers, a.watchers)
    };

    // The departures, through the gateway's search.
    let mut finder = Session::open(ws::connect(&targets[0], 0).await?, timeout)
        .await
        .map_err(|f| anyhow::anyhow!("first connection: {}", f.code))?;
    let departures = find_departures(&mut finder, &a.routes, a.departures).await?;
    let dep_ids: Vec<i64> = departures.iter().map(|t| t.id).collect();
    let mut seats = 0;
    for &d in &dep_ids {
        finder.open_map(d).await.map_err(|f| anyhow::anyhow!("seat map {d}: {}", f.code))?;
        seats += finder.maps[&d].len();
    }
    finder.close().await;

    // Users and their tokens.
    let run_tag = format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis());
    let user_prefix = format!("bench-{run_tag}-");
    let subs: Vec<String> = (0..n_buyers).map(|i| format!("{user_prefix}{i}")).collect();
    let ttl = (duration.as_secs() + 3600).max(3600);
    let minted = tokens::mint(&issuer, &subs, ttl, 8).await?;

    // Watchers and auditors first: they see the sale from its first hold.
    let clock = Arc::new(EventClock::new(&dep_ids));
    follow_publishes(&ctx.common.nats, clock.clone()).await?;
    let (stop, stop_rx) = watch::channel(false);
    let mut auditors = Vec::new();
    for (k, &d) in dep_ids.iter().enumerate() {
        auditors.push(Auditor::start(&target_of(k), d, timeout, stop_rx.clone()).await?);
    }
    let watch_hist = Arc::new(ShardedHistogram::new(16));
    let watch_counts = Arc::new(WatchCounts::default());
    let map_rids: Vec<String> = dep_ids.iter().map(|d| client::seat_map_rid(*d)).collect();
    let (watch_go, watch_go_rx) = watch::channel(false);
    let mut watcher_tasks = Vec::new();
    let mut watchers_connected = 0;
    // The watchers are split evenly over the gateways, each share over every seat map.
    for (g, target) in targets.iter().enumerate() {
        let count = (n_watchers + targets.len() - 1 - g) / targets.len();
        if count == 0 {
            continue;
        }
        let run = {
            let (clock, hist, counts, stop) =
                (clock.clone(), watch_hist.clone(), watch_counts.clone(), stop_rx.clone());
            move |i: usize, ws: Ws| watch_map(i, ws, clock.clone(), hist.clone(), counts.clone(), stop.clone())
        };
        let opened = ws::open_many(
            &ctx.shards,
            target,
            count,
            &map_rids,
            ctx.common.connect_parallel,
            connect_timeout,
            watch_go_rx.clone(),
            run,
        )
        .await;
        if let Some(e) = &opened.first_error {
            ctx.warnings.push(format!("{} of {count} watchers failed to connect; first: {e}", opened.failed));
        }
        watchers_connected += opened.connected.len();
        watcher_tasks.extend(opened.tasks);
    }
    let _ = watch_go.send(true);

    // Buyers: connect and sign in, then wait for the sale to open.
    let sh = Arc::new(Shared::new());
    let (go, go_rx) = watch::channel(false);
    let plan_cell: Arc<std::sync::OnceLock<Plan>> = Arc::new(std::sync::OnceLock::new());
    let gate = Arc::new(Semaphore::new(ctx.common.connect_parallel.max(1)));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let mut buyer_tasks = Vec::with_capacity(n_buyers);
    let ramp_ns = (a.ramp.max(0.0) * 1e9) as u64;
    for (i, (sub, token)) in subs.iter().cloned().zip(minted).enumerate() {
        let (target, gate, ready, sh, plan, mut go) =
            (target_of(i), gate.clone(), ready_tx.clone(), sh.clone(), plan_cell.clone(), go_rx.clone());
        buyer_tasks.push(ctx.shards.handle(i).spawn(async move {
            let permit = gate.acquire_owned().await.expect("semaphore open");
            let opened = tokio::time::timeout(connect_timeout, async {
                let ws = ws::connect(&target, i).await.map_err(|e| format!("{e:#}"))?;
                let s = Session::open(ws, timeout).await.map_err(|f| f.code)?;
                let mut b = Buyer::new(i, sub, s, i as u64);
                b.login(&sh, &token).await.map_err(|f| format!("login: {}", f.code))?;
                Ok::<Buyer, String>(b)
            })
            .await
            .unwrap_or_else(|_| Err("connect and sign-in timed out".into()));
            drop(permit);
            let b = match opened {
                Ok(b) => b,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let _ = ready.send(Ok(()));
            drop(ready);
            if go.wait_for(|g| *g).await.is_err() {
                return b.session.close().await;
            }
            let plan = plan.get().expect("plan set before go");
            if ramp_ns > 0 {
                let delay = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) % ramp_ns;
                tokio::time::sleep(Duration::from_nanos(delay)).await;
            }
            b.run(plan, &sh).await.close().await;
        }));
    }
    drop(ready_tx);
    let (mut signed_in, mut first_error) = (0, None);
    while let Some(r) = ready_rx.recv().await {
        match r {
            Ok(()) => signed_in += 1,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        ctx.warnings
            .push(format!("{} of {n_buyers} buyers failed to connect or sign in; first: {e}", n_buyers - signed_in));
    }
    if signed_in == 0 {
        bail!("no buyer signed in through {}", ctx.target.ws_url());
    }

    // The sale opens.
    let t0 = now_ns();
    let plan = Plan {
        departures,
        think_ms,
        pay_pct: a.pay_pct,
        decline_pct: a.decline_pct,
        cancel_pct: a.cancel_pct,
        until_sold_out: a.until_sold_out,
        end_ns: t0 + duration.as_nanos() as u64,
    };
    plan_cell.set(plan).map_err(|_| anyhow::anyhow!("plan set twice"))?;
    let me = Proc::this();
    let tool0 = me.cpu_seconds().unwrap_or(0.0);
    let cpu0: Vec<Option<f64>> = procs.iter().map(|(_, pid)| tree_cpu_seconds(*pid)).collect();
    let _ = go.send(true);
    if let Some(f) = &a.started_file {
        std::fs::write(f, "started\n").with_context(|| format!("write {}", f.display()))?;
    }
    // Buyers finish their cycle after the end: allow the longest one (a few requests, their
    // retries and think times).
    let grace = Duration::from_millis(think_ms.1 * 6) + timeout * 6;
    let deadline = tokio::time::Instant::now() + duration + grace;
    let mut aborted = 0;
    for mut t in buyer_tasks {
        if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
            t.abort();
            aborted += 1;
        }
    }
    let t1 = now_ns();
    let cpu1: Vec<Option<f64>> = procs.iter().map(|(_, pid)| tree_cpu_seconds(*pid)).collect();
    let tool_cpu = me.cpu_seconds().unwrap_or(0.0) - tool0;
    if aborted > 0 {
        ctx.warnings.push(format!("{aborted} buyers did not finish within the run plus {grace:?}; aborted"));
    }
    let seconds = (t1 - t0) as f64 / 1e9;

    // The audit: the views must show the truth within `converge`.
    let told = std::mem::take(&mut *sh.told.lock());
    let mut findings = audit::check_told(&mut db, &dep_ids, &user_prefix, &told).await?;
    let until = tokio::time::Instant::now() + converge;
    loop {
        let mut wrong = Vec::new();
        for (k, au) in auditors.iter().enumerate() {
            let truth = db.truth(au.dep).await?.map;
            let d = audit::differences(&au.view().await, &truth);
            if !d.is_empty() {
                wrong.push(format!("watcher of {}: {} seats differ, e.g. {}", au.dep, d.len(), d[0]));
            }
            let fresh = fresh_view(&target_of(k), au.dep, timeout).await?;
            let d = audit::differences(&fresh, &truth);
            if !d.is_empty() {
                wrong.push(format!("fresh get of {}: {} seats differ, e.g. {}", au.dep, d.len(), d[0]));
            }
        }
        if wrong.is_empty() || tokio::time::Instant::now() >= until {
            findings.views_wrong = wrong;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop.send(true);
    for t in watcher_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }

    let bookings = sh.bookings.load(Relaxed);
    let holds = sh.holds.load(Relaxed);
    let releases = sh.releases.load(Relaxed);
    let hr_requests = sh.hold_requests.load(Relaxed) + sh.release_requests.load(Relaxed);
    let errors = sh.errors.lock().clone();
    let timeouts = errors
        .iter()
        .filter(|(k, _)| k.ends_with(" system.timeout") || k.ends_with(client::NO_ANSWER))
        .map(|(_, v)| v)
        .sum();
    let last = sh.last_booking_ns.load(Relaxed);
    let processes = procs
        .iter()
        .zip(cpu0.iter().zip(&cpu1))
        .filter_map(|((name, pid), (c0, c1))| {
            let cpu = (c1.as_ref()? - c0.as_ref()?).max(0.0);
            let per = (bookings > 0).then(|| cpu * 1000.0 / bookings as f64);
            Some((name.clone(), ProcOut { pid: *pid, cpu_seconds: cpu, cpu_ms_per_booking: per }))
        })
        .collect();
    let out = SaleOut {
        mode: if a.until_sold_out { "sale day" } else { "steady" },
        buyers: n_buyers,
        buyers_signed_in: signed_in,
        watchers: watchers_connected,
        gateways: targets.len(),
        departures: dep_ids.clone(),
        seats,
        seconds,
        sold_out_after_seconds: (a.until_sold_out && findings.sold_out && last > t0).then(|| (last - t0) as f64 / 1e9),
        bookings,
        bookings_per_second: bookings as f64 / seconds,
        seats_booked: sh.seats_booked.load(Relaxed),
        holds,
        holds_per_second: holds as f64 / seconds,
        releases,
        hold_or_release_requests: hr_requests,
        hold_or_release_per_second: hr_requests as f64 / seconds,
        declined_then_paid_or_released: sh.declines.load(Relaxed),
        cancels: sh.cancels.load(Relaxed),
        cycles: sh.cycles.load(Relaxed),
        actions: Action::ALL.iter().map(|a| (a.name(), Latency::of(&sh.histogram(*a).merged()))).collect(),
        errors,
        timeouts,
        buyers_disconnected: sh.closed.load(Relaxed),
        watcher_events: watch_counts.events.load(Relaxed),
        watcher_event_latency: Latency::of(&watch_hist.merged()),
        watcher_events_unmatched: watch_counts.unmatched.load(Relaxed),
        watchers_disconnected: watch_counts.closed.load(Relaxed),
        processes,
        tool_cpu_seconds: tool_cpu,
        audit_clean: findings.clean(),
        audit: findings,
    };
    Ok(finish_report(render(&out), ctx))
}

/// The seat map as a new anonymous client gets it through the gateway now.
async fn fresh_view(target: &ws::Target, dep: i64, timeout: Duration) -> Result<SeatMap> {
    let mut s = Session::open(ws::connect(target, 1).await?, timeout)
        .await
        .map_err(|f| anyhow::anyhow!("audit connection: {}", f.code))?;
    let rid = client::seat_map_rid(dep);
    let r = s.request(&format!("get.{rid}"), None).await.map_err(|f| anyhow::anyhow!("get {rid}: {}", f.code))?;
    s.close().await;
    Ok(seat_map_of(&r["models"][&rid]))
}

fn render(out: &SaleOut) -> Report {
    let mut r = Report::new("sale", out);
    r.row(
        "mode / buyers / watchers / gateways",
        format!("{} / {} signed in / {} / {}", out.mode, out.buyers_signed_in, out.watchers, out.gateways),
    );
    r.row("departures / seats", format!("{:?} / {}", out.departures, out.seats));
    r.row(
        "run",
        format!(
            "{:.1} s{}",
            out.seconds,
            out.sold_out_after_seconds.map_or(String::new(), |s| format!(", sold out after {s:.1} s"))
        ),
    );
    r.row("bookings", format!("{} ({}), {} seats", out.bookings, per_sec(out.bookings_per_second), out.seats_booked));
    r.row("holds / releases", format!("{} ({}) / {}", out.holds, per_sec(out.holds_per_second), out.releases));
    r.row(
        "hold-or-release requests",
        format!("{} ({})", out.hold_or_release_requests, per_sec(out.hold_or_release_per_second)),
    );
    r.row(
        "declined, then paid or released / cancels",
        format!("{} / {}", out.declined_then_paid_or_released, out.cancels),
    );
    for (name, l) in &out.actions {
        r.row(format!("{name} p50/p90/p99/p99.9/max"), l.display_ms());
    }
    let errs: Vec<String> = out.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    r.row("errors", if errs.is_empty() { "0".into() } else { errs.join(", ") });
    r.row("timeouts", out.timeouts.to_string());
    r.row("watcher events / unmatched", format!("{} / {}", out.watcher_events, out.watcher_events_unmatched));
    r.row("watcher event latency", out.watcher_event_latency.display_ms());
    for (name, p) in &out.processes {
        r.row(
            format!("CPU {name}"),
            format!(
                "{:.2} s, {}",
                p.cpu_seconds,
                p.cpu_ms_per_booking.map_or("n/a".into(), |v| format!("{v:.2} ms per booking"))
            ),
        );
    }
    r.row("tool CPU", format!("{:.2} s", out.tool_cpu_seconds));
    let f = &out.audit;
    r.row("audit", if out.audit_clean { "clean".into() } else { "FAILED (see the JSON's audit)".to_owned() });
    r.row(
        "sold twice / told≠committed / committed untold / tickets wrong",
        format!(
            "{} / {} / {} / {}",
            f.sold_twice.len(),
            f.told_not_committed.len(),
            f.committed_not_told.len(),
            f.tickets_wrong.len()
        ),
    );
    r.row(
        "sold unaccounted / orphan holds / open holds left / views wrong",
        format!(
            "{} / {} / {} / {}",
            f.sold_unaccounted.len(),
            f.orphan_holds.len(),
            f.open_holds_left,
            f.views_wrong.len()
        ),
    );
    r.row("sold out", f.sold_out.to_string());
    if out.buyers_disconnected > 0 || out.watchers_disconnected > 0 {
        r.warnings.push(format!(
            "{} buyers and {} watchers were disconnected",
            out.buyers_disconnected, out.watchers_disconnected
        ));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_and_dates() {
        assert_eq!(parse_think("50,500").unwrap(), (50, 500));
        assert!(parse_think("5").is_err());
        assert!(parse_think("9,1").is_err());
        assert_eq!(parse_proc("gateway=12").unwrap(), ("gateway".into(), 12));
        assert!(parse_proc("gateway").is_err());
        assert_eq!(date_after(0, 0), "1970-01-01");
        assert_eq!(date_after(20_454, 0), "2026-01-01");
        assert_eq!(date_after(20_454, 59), "2026-03-01");
        assert_eq!(date_after(11_016, 0), "2000-02-29");
    }

    #[test]
    fn event_clock_keeps_the_latest_publish() {
        let c = EventClock::new(&[1]);
        c.record(1, &[("a".into(), SeatState::Held)], 10);
        c.record(1, &[("a".into(), SeatState::Held)], 20);
        c.record(2, &[("a".into(), SeatState::Held)], 30);
        assert_eq!(c.published(1, "a", SeatState::Held), Some(20));
        assert_eq!(c.published(1, "a", SeatState::Free), None);
        assert_eq!(c.published(2, "a", SeatState::Held), None);
        c.record(1, &[("a".into(), SeatState::Sold)], 40);
        assert_eq!(
            c.published(1, "a", SeatState::Held),
            None,
            "a late watcher is not timed against another transition"
        );
    }
}
