//! Event fanout scenarios: `fanout` (one rate), `saturate` (stepped rates) and `connections`
//! (idle subscribed connections, checked alive with one event per resource).
//!
//! Loss accounting: event `seq` goes to resource `seq % R` (round robin from the step's first
//! seq); a step expects `events(r) × subscribers(r)` deliveries summed over resources, where
//! subscribers are the clients subscribed when the step starts. A client counts an event once, if
//! its seq belongs to the current step and is above the last seq it saw (else it is a duplicate
//! or a straggler of an earlier step). Whatever has not arrived when the drain time ends is lost.

use crate::receivers::{Receive, Receivers};
use crate::report::{Report, cpu_us_per, mib, opt_us, per_sec};
use crate::service::{Service, rid};
use crate::stats::{Latency, Pacer, Proc, ProcUsage, ProcWatch, ShardedHistogram, now_ns};
use crate::ws::{self, Ws};
use crate::{Ctx, finish_report, frames, secs};
use anyhow::{Result, bail};
use async_nats::Subject;
use clap::Args;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Subscribed WebSocket clients.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub clients: usize,
    /// Resources the clients are spread over (client i subscribes resource i % R).
    #[arg(long, short = 'r', default_value_t = 1)]
    pub resources: usize,
    /// Time allowed after the last publish for deliveries to arrive, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub drain_timeout: f64,
}

#[derive(Args, Debug)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub clients: ClientArgs,
    /// Change events per second (over all resources).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Publishing time of the measured step, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Unmeasured warm-up step at the same rate, in seconds (0 for none).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
}

#[derive(Args, Debug)]
pub struct SaturateArgs {
    #[command(flatten)]
    pub clients: ClientArgs,
    /// Event rate of the first step (events/s over all resources).
    #[arg(long, default_value_t = 10.0)]
    pub start_rate: f64,
    /// Rate multiplier between steps.
    #[arg(long, default_value_t = 1.5)]
    pub factor: f64,
    /// Highest event rate tried.
    #[arg(long, default_value_t = 100_000.0)]
    pub max_rate: f64,
    /// Most stepping-up steps (bounded to 40).
    #[arg(long, default_value_t = 20)]
    pub max_steps: usize,
    /// Bisection steps between the last passing and the first failing rate.
    #[arg(long, default_value_t = 3)]
    pub refine: usize,
    /// Publishing time of each step, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub step_duration: f64,
    /// A step passes when nothing is lost and p99 latency is below this, in milliseconds.
    #[arg(long, default_value_t = 100.0)]
    pub p99_ms: f64,
    /// Tries of a rate before it counts as failed: on a shared 2-core machine one scheduling
    /// stall of another process's making can push a whole step's p99 over the bound.
    #[arg(long, default_value_t = 2)]
    pub attempts: usize,
    /// Unmeasured warm-up step at the start rate, in seconds (0 for none).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
}

/// Runs a step at `rate` up to `attempts` times, until one passes; the last try is returned.
#[allow(clippy::too_many_arguments)]
async fn try_rate(
    rig: &mut Rig,
    ctx: &Ctx,
    rate: f64,
    events: u64,
    drain: Duration,
    p99_ms: f64,
    attempts: usize,
    label: &str,
) -> Result<StepResult> {
    let mut k = 1;
    loop {
        let s = rig.step(ctx, rate, events, drain).await?;
        let pass = s.passes(p99_ms);
        eprintln!(
            "saturate{label}: {:>10.1} ev/s -> {:>10} deliveries/s, lost {}, p99 {:.2} ms: {} (try {k} of {attempts})",
            rate,
            s.deliveries_per_second.round(),
            s.lost,
            s.latency.p99_us as f64 / 1000.0,
            if pass { "pass" } else { "FAIL" }
        );
        if pass || k >= attempts {
            return Ok(s);
        }
        k += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[derive(Args, Debug)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    pub clients: ClientArgs,
    /// Seconds to wait after the last connection before reading the gateway's RSS.
    #[arg(long, default_value_t = 3.0)]
    pub settle: f64,
}

/// One client's counts. Neighbouring clients run on different client threads: a cache line
/// each keeps those threads from contending for one.
#[derive(Default)]
#[repr(align(64))]
struct ClientCount {
    received: AtomicU64,
    duplicate: AtomicU64,
    stale: AtomicU64,
    last_recv_ns: AtomicU64,
}

struct Shared {
    hist: ShardedHistogram,
    counts: Vec<ClientCount>,
    /// First seq of the current step.
    seq_lo: AtomicU64,
    closed: AtomicU64,
}

impl Shared {
    fn delivered(&self) -> u64 {
        self.counts.iter().map(|c| c.received.load(Relaxed)).sum()
    }
}

/// Subscribed clients, the service, and the receive tasks: connected once, stepped many times.
struct Rig {
    service: Service,
    subjects: Vec<Subject>,
    /// Subscribers per resource, of the clients that connected.
    subs: Vec<u64>,
    shared: Arc<Shared>,
    receivers: Receivers,
    _go: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    next_seq: u64,
    connected: usize,
    connect: ConnectResult,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectResult {
    pub requested: usize,
    pub connected: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub per_second: f64,
    pub gateway: Option<ProcUsage>,
    pub gateway_rss_before_bytes: Option<u64>,
}

/// One measured step.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub target_rate: f64,
    pub events: u64,
    pub publish_seconds: f64,
    pub achieved_rate: f64,
    /// How far the publisher fell behind its schedule at worst, in ms.
    pub publish_max_lag_ms: f64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub stale: u64,
    pub clients_closed: u64,
    pub deliveries_per_second: f64,
    pub drain_seconds: f64,
    pub latency: Latency,
    pub gateway: Option<ProcUsage>,
    pub gateway_cpu_us_per_delivery: Option<f64>,
    pub nats_cpu_seconds: Option<f64>,
    pub tool_cpu_seconds: f64,
    pub tool_cpu_us_per_delivery: Option<f64>,
}

impl StepResult {
    fn passes(&self, p99_ms: f64) -> bool {
        self.lost == 0 && self.delivered > 0 && (self.latency.p99_us as f64) < p99_ms * 1000.0
    }
}

/// One client's receiving side: counts what its receive thread hands it.
struct Counter {
    idx: usize,
    shared: Arc<Shared>,
    last_seq: u64,
}

impl Receive for Counter {
    fn message(&mut self, payload: &[u8]) {
        let Some(s) = frames::parse_change_stamp(payload) else { return };
        let now = now_ns();
        let c = &self.shared.counts[self.idx];
        if s.seq < self.shared.seq_lo.load(Relaxed) {
            c.stale.fetch_add(1, Relaxed);
        } else if s.seq <= self.last_seq {
            c.duplicate.fetch_add(1, Relaxed);
        } else {
            self.last_seq = s.seq;
            self.shared.hist.record(self.idx, now.saturating_sub(s.t_ns) / 1000);
            c.received.fetch_add(1, Relaxed);
            c.last_recv_ns.store(now, Relaxed);
        }
    }

    fn ended(&mut self) {
        self.shared.closed.fetch_add(1, Relaxed);
    }
}

impl Rig {
    async fn start(ctx: &mut Ctx, a: &ClientArgs) -> Result<Rig> {
        if a.resources == 0 || a.clients == 0 {
            bail!("--clients and --resources must be at least 1");
        }
        let n = ctx.fit_clients(a.clients);
        let service = Service::start(&ctx.common.nats, &ctx.common.service, a.resources).await?;
        let rids: Vec<String> = (0..a.resources).map(|i| rid(&ctx.common.service, i)).collect();
        let rss_before = ctx.gateway.as_ref().and_then(Proc::rss_bytes);
        let watch_gw = ctx.gateway.as_ref().and_then(ProcWatch::start);
        let timeout = secs(ctx.common.connect_timeout, "--connect-timeout", 600.0)?;
        let shared = Arc::new(Shared {
            hist: ShardedHistogram::new(32),
            counts: (0..n).map(|_| ClientCount::default()).collect(),
            seq_lo: AtomicU64::new(1),
            closed: AtomicU64::new(0),
        });
        let receivers = Receivers::start(ctx.common.threads)?;
        let (go, go_rx) = watch::channel(false);
        let run = {
            let (shared, adopter) = (shared.clone(), receivers.adopter());
            move |i: usize, w: Ws| {
                let (shared, adopter) = (shared.clone(), adopter.clone());
                async move {
                    let counter = Counter { idx: i, shared: shared.clone(), last_seq: 0 };
                    // tungstenite may hold bytes it read but has not parsed: a client is handed
                    // over after its subscribe response, before any event is published.
                    if let Err(e) = adopter.adopt(i, w.into_inner(), Box::new(counter)) {
                        eprintln!("resbench: client {i}: {e:#}");
                        shared.closed.fetch_add(1, Relaxed);
                    }
                }
            }
        };
        let opened =
            ws::open_many(&ctx.shards, &ctx.target, n, &rids, ctx.common.connect_parallel, timeout, go_rx, run).await;
        let connected = opened.connected.len();
        let connect = ConnectResult {
            requested: a.clients,
            connected,
            failed: opened.failed,
            first_error: opened.first_error.clone(),
            seconds: opened.elapsed.as_secs_f64(),
            per_second: connected as f64 / opened.elapsed.as_secs_f64().max(1e-9),
            gateway: watch_gw.map(ProcWatch::finish),
            gateway_rss_before_bytes: rss_before,
        };
        if let Some(e) = &opened.first_error {
            ctx.warnings.push(format!("{} of {n} clients failed to connect; first: {e}", opened.failed));
        }
        if connected == 0 {
            receivers.stop();
            service.shutdown().await;
            bail!("no client connected to {}", ctx.target.ws_url());
        }
        let mut subs = vec![0u64; a.resources];
        for i in &opened.connected {
            subs[i % a.resources] += 1;
        }
        let _ = go.send(true);
        Ok(Rig {
            subjects: Service::event_subjects(&ctx.common.service, a.resources),
            service,
            subs,
            shared,
            receivers,
            _go: go,
            tasks: opened.tasks,
            next_seq: 1,
            connected,
            connect,
        })
    }

    /// Publishes `events` change events at `rate`, waits for deliveries, and accounts for them.
    async fn step(&mut self, ctx: &Ctx, rate: f64, events: u64, drain: Duration) -> Result<StepResult> {
        let sh = &self.shared;
        let seq0 = self.next_seq;
        self.next_seq += events;
        sh.seq_lo.store(seq0, Relaxed);
        sh.hist.reset();
        for c in &sh.counts {
            c.received.store(0, Relaxed);
            c.duplicate.store(0, Relaxed);
            c.stale.store(0, Relaxed);
        }
        let closed_before = sh.closed.load(Relaxed);
        let me = Proc::this();
        let tool_cpu0 = me.cpu_seconds().unwrap_or(0.0);
        let nats_cpu0 = ctx.nats.as_ref().and_then(Proc::cpu_seconds);
        let gw = ctx.gateway.as_ref().and_then(ProcWatch::start);

        // Publish on schedule.
        let pacer = Pacer::new(rate, events);
        let r = self.subjects.len() as u64;
        let mut per_resource = vec![0u64; self.subjects.len()];
        let start = Instant::now();
        let first_ns = now_ns();
        let (mut sent, mut max_lag) = (0u64, Duration::ZERO);
        while sent < events {
            let due = pacer.due(start.elapsed());
            while sent < due {
                let seq = seq0 + sent;
                let res = ((seq - seq0) % r) as usize;
                let payload = frames::change_event(now_ns(), seq);
                self.service.events.publish(self.subjects[res].clone(), payload.into()).await?;
                per_resource[res] += 1;
                sent += 1;
            }
            max_lag = max_lag.max(start.elapsed().saturating_sub(pacer.due_at(sent - 1)));
            if sent < events {
                tokio::time::sleep_until((start + pacer.due_at(sent)).into()).await;
            }
        }
        self.service.events.flush().await?;
        let publish_seconds = start.elapsed().as_secs_f64();

        // Drain.
        let expected: u64 = per_resource.iter().zip(&self.subs).map(|(e, s)| e * s).sum();
        let drain_start = Instant::now();
        while sh.delivered() < expected && drain_start.elapsed() < drain {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let drain_seconds = drain_start.elapsed().as_secs_f64();
        let delivered = sh.delivered();
        let gateway = gw.map(ProcWatch::finish);
        let tool_cpu = me.cpu_seconds().unwrap_or(0.0) - tool_cpu0;
        let last = sh.counts.iter().map(|c| c.last_recv_ns.load(Relaxed)).max().unwrap_or(0);
        let span = last.saturating_sub(first_ns) as f64 / 1e9;
        Ok(StepResult {
            target_rate: rate,
            events,
            publish_seconds,
            achieved_rate: events as f64 / publish_seconds.max(1e-9),
            publish_max_lag_ms: max_lag.as_secs_f64() * 1000.0,
            expected,
            delivered,
            lost: expected.saturating_sub(delivered),
            duplicates: sh.counts.iter().map(|c| c.duplicate.load(Relaxed)).sum(),
            stale: sh.counts.iter().map(|c| c.stale.load(Relaxed)).sum(),
            clients_closed: sh.closed.load(Relaxed) - closed_before,
            deliveries_per_second: if span > 0.0 { delivered as f64 / span } else { 0.0 },
            drain_seconds,
            latency: Latency::of(&sh.hist.merged()),
            gateway_cpu_us_per_delivery: gateway.and_then(|g| cpu_us_per(g.cpu_seconds, delivered)),
            gateway,
            nats_cpu_seconds: nats_cpu0.and_then(|c0| Some(ctx.nats.as_ref()?.cpu_seconds()? - c0)),
            tool_cpu_seconds: tool_cpu,
            tool_cpu_us_per_delivery: cpu_us_per(tool_cpu, delivered),
        })
    }

    async fn shutdown(mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for t in &mut self.tasks {
            if tokio::time::timeout_at(deadline, &mut *t).await.is_err() {
                t.abort();
            }
        }
        let receivers = self.receivers;
        let _ = tokio::task::spawn_blocking(move || receivers.stop()).await;
        self.service.shutdown().await;
    }
}

fn step_rows(r: &mut Report, s: &StepResult) {
    r.row(
        "events published",
        format!("{} at {} (target {})", s.events, per_sec(s.achieved_rate), per_sec(s.target_rate)),
    );
    r.row("publisher max lag", format!("{:.1} ms", s.publish_max_lag_ms));
    r.row("deliveries expected", s.expected.to_string());
    r.row("delivered", format!("{} ({})", s.delivered, per_sec(s.deliveries_per_second)));
    r.row(
        "lost / duplicate / stale",
        format!(
            "{} ({:.4}%) / {} / {}",
            s.lost,
            100.0 * s.lost as f64 / s.expected.max(1) as f64,
            s.duplicates,
            s.stale
        ),
    );
    r.row("latency p50/p90/p99/p99.9/max", s.latency.display_ms());
    r.row("drain", format!("{:.2} s", s.drain_seconds));
    if let Some(g) = &s.gateway {
        r.row("gateway CPU", format!("{:.2} s, {} per delivery", g.cpu_seconds, opt_us(s.gateway_cpu_us_per_delivery)));
        r.row("gateway RSS peak / end", format!("{} / {}", mib(g.peak_rss_bytes), mib(g.rss_end_bytes)));
    } else {
        r.row("gateway CPU", "n/a (no --gateway-pid)");
    }
    if let Some(n) = s.nats_cpu_seconds {
        r.row("nats-server CPU", format!("{n:.2} s"));
    }
    r.row("tool CPU", format!("{:.2} s, {} per delivery", s.tool_cpu_seconds, opt_us(s.tool_cpu_us_per_delivery)));
    if s.clients_closed > 0 {
        r.row("clients closed by gateway", s.clients_closed.to_string());
    }
}

fn tool_vs_gateway(r: &mut Report, s: &StepResult) {
    if let (Some(g), Some(t)) = (s.gateway_cpu_us_per_delivery, s.tool_cpu_us_per_delivery)
        && t >= g
    {
        r.warnings.push(format!(
            "the tool spent more CPU per delivery ({t:.2} µs) than the gateway ({g:.2} µs): the tool may be the bottleneck"
        ));
    }
}

/// Events a step of `duration` publishes at `rate` (at least one).
pub fn events_for(rate: f64, duration: Duration) -> u64 {
    ((rate * duration.as_secs_f64()).round() as u64).max(1)
}

#[derive(Serialize)]
struct FanoutOut<'a> {
    clients: usize,
    resources: usize,
    connect: &'a ConnectResult,
    step: &'a StepResult,
}

pub async fn run_fanout(mut ctx: Ctx, a: FanoutArgs) -> Result<(Report, ws::Shards)> {
    let duration = secs(a.duration, "--duration", 3600.0)?;
    let drain = secs(a.clients.drain_timeout, "--drain-timeout", 600.0)?;
    if !(a.rate > 0.0 && a.rate <= 10_000_000.0) {
        bail!("--rate must be in (0, 1e7]");
    }
    let mut rig = Rig::start(&mut ctx, &a.clients).await?;
    if a.warmup > 0.0 {
        let w = secs(a.warmup, "--warmup", 600.0)?;
        rig.step(&ctx, a.rate, events_for(a.rate, w), drain).await?;
    }
    let s = rig.step(&ctx, a.rate, events_for(a.rate, duration), drain).await;
    let connect = rig.connect.clone();
    let connected = rig.connected;
    rig.shutdown().await;
    let s = s?;
    let mut r = Report::new(
        "fanout",
        &FanoutOut { clients: connected, resources: a.clients.resources, connect: &connect, step: &s },
    );
    r.row("clients / resources", format!("{} / {}", connected, a.clients.resources));
    r.row("connect", format!("{:.2} s ({})", connect.seconds, per_sec(connect.per_second)));
    step_rows(&mut r, &s);
    tool_vs_gateway(&mut r, &s);
    Ok(finish_report(r, ctx))
}

#[derive(Serialize)]
struct SaturateOut<'a> {
    clients: usize,
    resources: usize,
    p99_bound_ms: f64,
    best: Option<&'a StepResult>,
    steps: &'a [StepResult],
}

pub async fn run_saturate(mut ctx: Ctx, a: SaturateArgs) -> Result<(Report, ws::Shards)> {
    let step_time = secs(a.step_duration, "--step-duration", 600.0)?;
    let drain = secs(a.clients.drain_timeout, "--drain-timeout", 600.0)?;
    if !(a.start_rate > 0.0 && a.factor > 1.0 && a.max_rate >= a.start_rate && a.max_rate <= 10_000_000.0) {
        bail!("need 0 < --start-rate <= --max-rate <= 1e7 and --factor > 1");
    }
    let max_steps = a.max_steps.clamp(1, 40);
    let attempts = a.attempts.clamp(1, 5);
    let mut rig = Rig::start(&mut ctx, &a.clients).await?;
    let mut steps: Vec<StepResult> = Vec::new();
    let (mut best, mut fail): (Option<usize>, Option<f64>) = (None, None);
    let mut rate = a.start_rate;
    let mut outcome: Result<()> = Ok(());
    if a.warmup > 0.0 {
        let warmup = secs(a.warmup, "--warmup", 600.0)?;
        outcome = rig.step(&ctx, rate, events_for(rate, warmup), drain).await.map(drop);
    }
    for _ in 0..max_steps {
        if outcome.is_err() {
            break;
        }
        match try_rate(&mut rig, &ctx, rate, events_for(rate, step_time), drain, a.p99_ms, attempts, "").await {
            Ok(s) => {
                let pass = s.passes(a.p99_ms);
                steps.push(s);
                if pass {
                    best = Some(steps.len() - 1);
                } else {
                    fail = Some(rate);
                    break;
                }
            }
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
        if rate >= a.max_rate {
            break;
        }
        rate = (rate * a.factor).min(a.max_rate);
        // Let the gateway's queues empty between steps.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Bisect between the best passing and the first failing rate.
    if outcome.is_ok()
        && let (Some(mut lo_i), Some(mut hi)) = (best, fail)
    {
        for _ in 0..a.refine.min(10) {
            let mid = (steps[lo_i].target_rate + hi) / 2.0;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let events = events_for(mid, step_time);
            match try_rate(&mut rig, &ctx, mid, events, drain, a.p99_ms, attempts, " (refine)").await {
                Ok(s) => {
                    let pass = s.passes(a.p99_ms);
                    steps.push(s);
                    if pass {
                        lo_i = steps.len() - 1;
                    } else {
                        hi = mid;
                    }
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        best = Some(lo_i);
    }
    let connected = rig.connected;
    rig.shutdown().await;
    outcome?;
    let best_step = best.map(|i| &steps[i]);
    let mut r = Report::new(
        "saturate",
        &SaturateOut {
            clients: connected,
            resources: a.clients.resources,
            p99_bound_ms: a.p99_ms,
            best: best_step,
            steps: &steps,
        },
    );
    r.row("clients / resources", format!("{} / {}", connected, a.clients.resources));
    r.row("pass criterion", format!("no loss, p99 < {} ms", a.p99_ms));
    for s in &steps {
        r.row(
            format!("step {:.0} ev/s", s.target_rate),
            format!(
                "{} deliveries, lost {}, p99 {:.2} ms, gw {}/delivery, tool {}/delivery: {}",
                per_sec(s.deliveries_per_second),
                s.lost,
                s.latency.p99_us as f64 / 1000.0,
                opt_us(s.gateway_cpu_us_per_delivery),
                opt_us(s.tool_cpu_us_per_delivery),
                if s.passes(a.p99_ms) { "pass" } else { "FAIL" }
            ),
        );
    }
    match best_step {
        Some(s) => {
            r.row("BEST", format!("{:.0} events/s = {} deliveries", s.target_rate, per_sec(s.deliveries_per_second)));
            step_rows(&mut r, s);
            tool_vs_gateway(&mut r, s);
        }
        None => {
            r.row("BEST", "no step passed");
        }
    }
    if fail.is_none() && best.is_some() {
        r.warnings.push("the highest rate tried still passed: raise --max-rate or --max-steps".into());
    }
    Ok(finish_report(r, ctx))
}

#[derive(Serialize)]
struct ConnectionsOut<'a> {
    resources: usize,
    connect: &'a ConnectResult,
    gateway_rss_after_bytes: Option<u64>,
    gateway_rss_per_connection_bytes: Option<f64>,
    gateway_cpu_us_per_connection: Option<f64>,
    tool_rss_bytes: Option<u64>,
    alive_check: &'a StepResult,
}

pub async fn run_connections(mut ctx: Ctx, a: ConnectionsArgs) -> Result<(Report, ws::Shards)> {
    let settle = secs(a.settle, "--settle", 600.0)?;
    let drain = secs(a.clients.drain_timeout, "--drain-timeout", 600.0)?;
    let mut rig = Rig::start(&mut ctx, &a.clients).await?;
    tokio::time::sleep(settle).await;
    let rss_after = ctx.gateway.as_ref().and_then(Proc::rss_bytes);
    let tool_rss = Proc::this().rss_bytes();
    // Every connection must still be subscribed: one event per resource reaches every client.
    let alive = rig.step(&ctx, 1000.0, a.clients.resources as u64, drain).await;
    let connect = rig.connect.clone();
    rig.shutdown().await;
    let alive = alive?;
    let per_conn = match (connect.gateway_rss_before_bytes, rss_after) {
        (Some(b), Some(a)) if connect.connected > 0 => Some((a as f64 - b as f64) / connect.connected as f64),
        _ => None,
    };
    let cpu_per_conn = connect.gateway.and_then(|g| cpu_us_per(g.cpu_seconds, connect.connected as u64));
    let mut r = Report::new(
        "connections",
        &ConnectionsOut {
            resources: a.clients.resources,
            connect: &connect,
            gateway_rss_after_bytes: rss_after,
            gateway_rss_per_connection_bytes: per_conn,
            gateway_cpu_us_per_connection: cpu_per_conn,
            tool_rss_bytes: tool_rss,
            alive_check: &alive,
        },
    );
    r.row("connections requested / open", format!("{} / {}", connect.requested, connect.connected));
    r.row("failed", connect.failed.to_string());
    r.row("connect time", format!("{:.2} s ({} subscribed connections)", connect.seconds, per_sec(connect.per_second)));
    match (connect.gateway_rss_before_bytes, rss_after, per_conn) {
        (Some(b), Some(a), Some(p)) => {
            r.row("gateway RSS before / after", format!("{} / {}", mib(b), mib(a)));
            r.row("gateway RSS per connection", format!("{:.1} KiB", p / 1024.0));
        }
        _ => {
            r.row("gateway RSS", "n/a (no --gateway-pid)");
        }
    }
    r.row("gateway CPU per connection", opt_us(cpu_per_conn));
    if let Some(t) = tool_rss {
        r.row("tool RSS", mib(t));
    }
    r.row(
        "alive check",
        format!("{} of {} connections received their event (lost {})", alive.delivered, alive.expected, alive.lost),
    );
    if alive.lost > 0 {
        r.warnings.push(format!("{} open connections did not receive the alive-check event", alive.lost));
    }
    Ok(finish_report(r, ctx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(lost: u64, delivered: u64, p99_us: u64) -> StepResult {
        StepResult {
            target_rate: 1.0,
            events: 1,
            publish_seconds: 1.0,
            achieved_rate: 1.0,
            publish_max_lag_ms: 0.0,
            expected: lost + delivered,
            delivered,
            lost,
            duplicates: 0,
            stale: 0,
            clients_closed: 0,
            deliveries_per_second: 0.0,
            drain_seconds: 0.0,
            latency: Latency { count: delivered, p99_us, ..Latency::default() },
            gateway: None,
            gateway_cpu_us_per_delivery: None,
            nats_cpu_seconds: None,
            tool_cpu_seconds: 0.0,
            tool_cpu_us_per_delivery: None,
        }
    }

    #[test]
    fn pass_criterion() {
        assert!(step(0, 10, 99_999).passes(100.0));
        assert!(!step(0, 10, 100_000).passes(100.0));
        assert!(!step(1, 10, 10).passes(100.0));
        assert!(!step(0, 0, 0).passes(100.0));
    }

    #[test]
    fn event_counts() {
        assert_eq!(events_for(1000.0, Duration::from_secs(5)), 5000);
        assert_eq!(events_for(0.1, Duration::from_secs(1)), 1);
    }
}
