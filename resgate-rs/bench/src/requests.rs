//! `requests`: C clients, each subscribed to one resource, keep W `get` (answered from the
//! gateway's cache) or `call` (forwarded to the service) requests in flight for a measured window.
//! Only requests sent inside the window count; the clients stop sending at its end and wait for
//! the answers still due, up to the drain time.

use crate::report::{Report, cpu_us_per, opt_us, per_sec};
use crate::service::{Service, rid};
use crate::stats::{Latency, Proc, ProcUsage, ProcWatch, ShardedHistogram, now_ns};
use crate::ws::{self, Ws};
use crate::{Ctx, finish_report, frames, secs};
use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use futures_util::{FutureExt, SinkExt, StreamExt};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, Copy, ValueEnum, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// `get.<rid>`: served from the gateway's cache.
    Get,
    /// `call.<rid>.ping`: a round trip through NATS to the service.
    Call,
}

#[derive(Args, Debug)]
pub struct RequestsArgs {
    #[arg(long, value_enum, default_value_t = Op::Get)]
    pub op: Op,
    /// WebSocket clients.
    #[arg(long, short = 'c', default_value_t = 50)]
    pub clients: usize,
    /// Requests in flight per client.
    #[arg(long, short = 'w', default_value_t = 8)]
    pub window: usize,
    /// Resources the clients are spread over.
    #[arg(long, short = 'r', default_value_t = 10)]
    pub resources: usize,
    /// Measured window, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Unmeasured time before the window, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Time allowed after the window for outstanding answers (Resgate times requests out after 3 s).
    #[arg(long, default_value_t = 6.0)]
    pub drain_timeout: f64,
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    unanswered: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    closed: AtomicU64,
}

/// The measured window on the tool clock, ns.
#[derive(Clone, Copy)]
struct Window {
    start: u64,
    end: u64,
    drain_end: u64,
}

impl Window {
    fn counts(&self, sent_ns: u64) -> bool {
        sent_ns >= self.start && sent_ns < self.end
    }
}

/// One connection's request pump settings.
struct Pump {
    idx: usize,
    method: String,
    params: Option<&'static str>,
    window: usize,
    w: Window,
    hist: Arc<ShardedHistogram>,
    counts: Arc<Counts>,
}

/// Per-connection request pump: keeps `window` requests in flight until the window ends.
async fn pump(mut ws: Ws, p: Pump) {
    let Pump { idx, method, params, window, w, hist, counts } = p;
    let mut inflight: HashMap<u64, u64> = HashMap::with_capacity(window * 2);
    let mut next_id = 100u64;
    loop {
        let now = now_ns();
        if now < w.end && inflight.len() < window {
            while inflight.len() < window {
                let frame = frames::request(next_id, &method, params);
                if ws.feed(Message::text(frame)).await.is_err() {
                    counts.closed.fetch_add(1, Relaxed);
                    return;
                }
                inflight.insert(next_id, now_ns());
                next_id += 1;
            }
            if ws.flush().await.is_err() {
                counts.closed.fetch_add(1, Relaxed);
                return;
            }
        }
        if inflight.is_empty() {
            break;
        }
        let wait = Duration::from_nanos(w.drain_end.saturating_sub(now_ns()));
        let first = match tokio::time::timeout(wait, ws.next()).await {
            Err(_) => break,
            Ok(m) => m,
        };
        // Take every response already received before refilling the window: one write (and
        // one wakeup of the gateway) per batch of answers, not per answer, so the tool stays
        // cheaper per request than the gateway it measures.
        let mut next = Some(first);
        let mut closed = false;
        while let Some(msg) = next.take() {
            match msg {
                Some(Ok(Message::Text(t))) => {
                    if let Some(r) = frames::parse_response(t.as_bytes())
                        && let Some(sent) = inflight.remove(&r.id)
                        && w.counts(sent)
                    {
                        match r.error {
                            None => {
                                counts.ok.fetch_add(1, Relaxed);
                                hist.record(idx, now_ns().saturating_sub(sent) / 1000);
                            }
                            Some(code) => *counts.errors.lock().entry(code).or_default() += 1,
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    closed = true;
                    break;
                }
            }
            next = ws.next().now_or_never();
        }
        if closed {
            counts.closed.fetch_add(1, Relaxed);
            break;
        }
    }
    let missing = inflight.values().filter(|&&s| w.counts(s)).count() as u64;
    counts.unanswered.fetch_add(missing, Relaxed);
    ws::close(ws).await;
}

#[derive(Serialize)]
struct RequestsOut {
    op: Op,
    clients: usize,
    window: usize,
    resources: usize,
    seconds: f64,
    ok: u64,
    ok_per_second: f64,
    errors: BTreeMap<String, u64>,
    unanswered: u64,
    clients_closed: u64,
    latency: Latency,
    gateway: Option<ProcUsage>,
    gateway_cpu_us_per_request: Option<f64>,
    tool_cpu_seconds: f64,
    tool_cpu_us_per_request: Option<f64>,
    service_answered: BTreeMap<&'static str, u64>,
}

pub async fn run(mut ctx: Ctx, a: RequestsArgs) -> Result<(Report, ws::Shards)> {
    let duration = secs(a.duration, "--duration", 3600.0)?;
    let drain = secs(a.drain_timeout, "--drain-timeout", 600.0)?;
    let warmup = if a.warmup > 0.0 { secs(a.warmup, "--warmup", 600.0)? } else { Duration::ZERO };
    if a.clients == 0 || a.window == 0 || a.resources == 0 || a.window > 10_000 {
        bail!("--clients, --resources must be >= 1 and --window in 1..=10000");
    }
    let n = ctx.fit_clients(a.clients);
    let service = Service::start(&ctx.common.nats, &ctx.common.service, a.resources).await?;
    let rids: Vec<String> = (0..a.resources).map(|i| rid(&ctx.common.service, i)).collect();
    let timeout = secs(ctx.common.connect_timeout, "--connect-timeout", 600.0)?;
    let hist = Arc::new(ShardedHistogram::new(16));
    let counts = Arc::new(Counts::default());
    let window: Arc<OnceLock<Window>> = Arc::new(OnceLock::new());
    let (go, go_rx) = watch::channel(false);
    let run = {
        let (hist, counts, window, rids) = (hist.clone(), counts.clone(), window.clone(), rids.clone());
        let (op, per_client) = (a.op, a.window);
        move |i: usize, ws: Ws| {
            let (method, params) = match op {
                Op::Get => (format!("get.{}", rids[i % rids.len()]), None),
                Op::Call => (format!("call.{}.ping", rids[i % rids.len()]), Some("{}")),
            };
            let w = *window.get().expect("window set before go");
            pump(ws, Pump { idx: i, method, params, window: per_client, w, hist: hist.clone(), counts: counts.clone() })
        }
    };
    let opened =
        ws::open_many(&ctx.shards, &ctx.target, n, &rids, ctx.common.connect_parallel, timeout, go_rx, run).await;
    if let Some(e) = &opened.first_error {
        ctx.warnings.push(format!("{} of {n} clients failed to connect; first: {e}", opened.failed));
    }
    let connected = opened.connected.len();
    if connected == 0 {
        service.shutdown().await;
        bail!("no client connected to {}", ctx.target.ws_url());
    }
    let t0 = now_ns();
    let w = Window {
        start: t0 + warmup.as_nanos() as u64,
        end: t0 + (warmup + duration).as_nanos() as u64,
        drain_end: t0 + (warmup + duration + drain).as_nanos() as u64,
    };
    window.set(w).map_err(|_| anyhow::anyhow!("window set twice"))?;
    let _ = go.send(true);
    // Measure the gateway and the tool over the window only.
    tokio::time::sleep(warmup).await;
    let me = Proc::this();
    let tool0 = me.cpu_seconds().unwrap_or(0.0);
    let gw = ctx.gateway.as_ref().and_then(ProcWatch::start);
    tokio::time::sleep(Duration::from_nanos(w.end.saturating_sub(now_ns()))).await;
    let gateway = gw.map(ProcWatch::finish);
    let tool_cpu = me.cpu_seconds().unwrap_or(0.0) - tool0;
    let deadline = tokio::time::Instant::now() + drain + Duration::from_secs(5);
    let mut aborted = 0;
    for mut t in opened.tasks {
        if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
            t.abort();
            aborted += 1;
        }
    }
    if aborted > 0 {
        ctx.warnings.push(format!("{aborted} clients did not finish within the drain time; aborted"));
    }
    let counters = service.counters.clone();
    service.shutdown().await;

    let ok = counts.ok.load(Relaxed);
    let errors = counts.errors.lock().clone();
    let answered = ok + errors.values().sum::<u64>();
    let out = RequestsOut {
        op: a.op,
        clients: connected,
        window: a.window,
        resources: a.resources,
        seconds: duration.as_secs_f64(),
        ok,
        ok_per_second: ok as f64 / duration.as_secs_f64(),
        errors: errors.clone(),
        unanswered: counts.unanswered.load(Relaxed),
        clients_closed: counts.closed.load(Relaxed),
        latency: Latency::of(&hist.merged()),
        gateway,
        gateway_cpu_us_per_request: gateway.and_then(|g| cpu_us_per(g.cpu_seconds, answered)),
        tool_cpu_seconds: tool_cpu,
        tool_cpu_us_per_request: cpu_us_per(tool_cpu, answered),
        service_answered: [
            ("access", counters.access.load(Relaxed)),
            ("get", counters.get.load(Relaxed)),
            ("call", counters.call.load(Relaxed)),
            ("unknown", counters.unknown.load(Relaxed)),
        ]
        .into(),
    };
    let mut r = Report::new("requests", &out);
    r.row("op / clients / window / resources", format!("{:?} / {} / {} / {}", a.op, connected, a.window, a.resources));
    r.row("ok", format!("{} in {:.1} s ({})", ok, out.seconds, per_sec(out.ok_per_second)));
    let errs: Vec<String> = errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    r.row(
        "errors",
        if errs.is_empty() {
            "0".into()
        } else {
            format!("{} ({:.3}%)", errs.join(", "), 100.0 * (answered - ok) as f64 / answered.max(1) as f64)
        },
    );
    r.row("unanswered at drain end", out.unanswered.to_string());
    r.row("latency p50/p90/p99/p99.9/max", out.latency.display_ms());
    if let Some(g) = &out.gateway {
        r.row("gateway CPU", format!("{:.2} s, {} per request", g.cpu_seconds, opt_us(out.gateway_cpu_us_per_request)));
    }
    r.row("tool CPU", format!("{:.2} s, {} per request", tool_cpu, opt_us(out.tool_cpu_us_per_request)));
    r.row("service answered (access/get/call)", {
        let s = &out.service_answered;
        format!("{} / {} / {}", s["access"], s["get"], s["call"])
    });
    if out.clients_closed > 0 {
        r.warnings.push(format!("{} clients were disconnected", out.clients_closed));
    }
    if let (Some(g), Some(t)) = (out.gateway_cpu_us_per_request, out.tool_cpu_us_per_request)
        && t >= g
    {
        r.warnings.push(format!("the tool spent more CPU per request ({t:.2} µs) than the gateway ({g:.2} µs)"));
    }
    Ok(finish_report(r, ctx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_membership() {
        let w = Window { start: 100, end: 200, drain_end: 300 };
        assert!(!w.counts(99));
        assert!(w.counts(100));
        assert!(w.counts(199));
        assert!(!w.counts(200));
    }
}
