//! `http`: GET of a cached resource through the gateway's HTTP API over C keep-alive HTTP/1.1
//! connections, one request in flight per connection. One WebSocket client stays subscribed to
//! the resource for the whole run so that it stays in the gateway's cache.

use crate::report::{Report, cpu_us_per, opt_us, per_sec};
use crate::service::{Service, api_path, rid};
use crate::stats::{Latency, Proc, ProcUsage, ProcWatch, ShardedHistogram, now_ns};
use crate::{Ctx, finish_report, secs, ws};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::net::TcpStream;

#[derive(Args, Debug)]
pub struct HttpArgs {
    /// Concurrent keep-alive connections (one request in flight each).
    #[arg(long, short = 'c', default_value_t = 50)]
    pub connections: usize,
    /// Measured window, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Unmeasured time before the window, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Time limit of one request, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub request_timeout: f64,
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    bytes: AtomicU64,
    status: Mutex<BTreeMap<u16, u64>>,
    failures: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

struct Job {
    addr: SocketAddr,
    path: String,
    start: u64,
    end: u64,
    timeout: Duration,
}

async fn client(idx: usize, job: Arc<Job>, hist: Arc<ShardedHistogram>, counts: Arc<Counts>) {
    let fail = |e: String| {
        counts.failures.fetch_add(1, Relaxed);
        counts.first_failure.lock().get_or_insert(e);
    };
    let stream = match TcpStream::connect(job.addr).await {
        Ok(s) => s,
        Err(e) => return fail(format!("connect: {e}")),
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
    {
        Ok(x) => x,
        Err(e) => return fail(format!("handshake: {e}")),
    };
    let conn = tokio::spawn(conn);
    let host = job.addr.to_string();
    while now_ns() < job.end {
        let req = Request::get(job.path.as_str())
            .header(hyper::header::HOST, host.as_str())
            .body(Empty::<Bytes>::new())
            .expect("valid request");
        let sent = now_ns();
        let result = tokio::time::timeout(job.timeout, async {
            sender.ready().await?;
            let resp = sender.send_request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body.len()))
        })
        .await;
        let counted = sent >= job.start;
        match result {
            Ok(Ok((status, len))) => {
                if counted {
                    if status == 200 {
                        counts.ok.fetch_add(1, Relaxed);
                        counts.bytes.fetch_add(len as u64, Relaxed);
                        hist.record(idx, now_ns().saturating_sub(sent) / 1000);
                    }
                    *counts.status.lock().entry(status).or_default() += 1;
                }
            }
            Ok(Err(e)) => {
                fail(format!("request: {e}"));
                break;
            }
            Err(_) => {
                fail(format!("request timed out after {:?}", job.timeout));
                break;
            }
        }
    }
    drop(sender);
    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
}

#[derive(Serialize)]
struct HttpOut {
    connections: usize,
    path: String,
    seconds: f64,
    ok: u64,
    ok_per_second: f64,
    status: BTreeMap<u16, u64>,
    failures: u64,
    bytes_per_response: f64,
    latency: Latency,
    gateway: Option<ProcUsage>,
    gateway_cpu_us_per_request: Option<f64>,
    tool_cpu_seconds: f64,
    tool_cpu_us_per_request: Option<f64>,
    service_access_requests: u64,
    service_get_requests: u64,
}

pub async fn run(mut ctx: Ctx, a: HttpArgs) -> Result<(Report, ws::Shards)> {
    let duration = secs(a.duration, "--duration", 3600.0)?;
    let warmup = if a.warmup > 0.0 { secs(a.warmup, "--warmup", 600.0)? } else { Duration::ZERO };
    let timeout = secs(a.request_timeout, "--request-timeout", 600.0)?;
    if a.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let n = ctx.fit_clients(a.connections);
    let service = Service::start(&ctx.common.nats, &ctx.common.service, 1).await?;
    let the_rid = rid(&ctx.common.service, 0);
    let holder = ws::subscribed(&ctx.target, 0, &the_rid).await.context("subscribe the cache holder")?;
    let t0 = now_ns();
    let job = Arc::new(Job {
        addr: ctx.common.gateway,
        path: api_path(&ctx.common.api_path, &the_rid),
        start: t0 + warmup.as_nanos() as u64,
        end: t0 + (warmup + duration).as_nanos() as u64,
        timeout,
    });
    let hist = Arc::new(ShardedHistogram::new(16));
    let counts = Arc::new(Counts::default());
    let tasks: Vec<_> =
        (0..n).map(|i| ctx.shards.handle(i).spawn(client(i, job.clone(), hist.clone(), counts.clone()))).collect();
    tokio::time::sleep(warmup).await;
    let me = Proc::this();
    let tool0 = me.cpu_seconds().unwrap_or(0.0);
    let (access0, get0) = (service.counters.access.load(Relaxed), service.counters.get.load(Relaxed));
    let gw = ctx.gateway.as_ref().and_then(ProcWatch::start);
    tokio::time::sleep(Duration::from_nanos(job.end.saturating_sub(now_ns()))).await;
    let gateway = gw.map(ProcWatch::finish);
    let tool_cpu = me.cpu_seconds().unwrap_or(0.0) - tool0;
    let (access1, get1) = (service.counters.access.load(Relaxed), service.counters.get.load(Relaxed));
    let deadline = tokio::time::Instant::now() + timeout + Duration::from_secs(2);
    for mut t in tasks {
        if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
            t.abort();
        }
    }
    ws::close(holder).await;
    service.shutdown().await;

    let ok = counts.ok.load(Relaxed);
    let status = counts.status.lock().clone();
    let answered: u64 = status.values().sum();
    let out = HttpOut {
        connections: n,
        path: job.path.clone(),
        seconds: duration.as_secs_f64(),
        ok,
        ok_per_second: ok as f64 / duration.as_secs_f64(),
        status: status.clone(),
        failures: counts.failures.load(Relaxed),
        bytes_per_response: counts.bytes.load(Relaxed) as f64 / ok.max(1) as f64,
        latency: Latency::of(&hist.merged()),
        gateway,
        gateway_cpu_us_per_request: gateway.and_then(|g| cpu_us_per(g.cpu_seconds, answered)),
        tool_cpu_seconds: tool_cpu,
        tool_cpu_us_per_request: cpu_us_per(tool_cpu, answered),
        service_access_requests: access1 - access0,
        service_get_requests: get1 - get0,
    };
    let mut r = Report::new("http", &out);
    r.row("connections / path", format!("{} / GET {}", n, out.path));
    r.row("200 OK", format!("{} in {:.1} s ({})", ok, out.seconds, per_sec(out.ok_per_second)));
    r.row("status counts", format!("{:?}", out.status));
    r.row("failures", out.failures.to_string());
    r.row("latency p50/p90/p99/p99.9/max", out.latency.display_ms());
    if let Some(g) = &out.gateway {
        r.row("gateway CPU", format!("{:.2} s, {} per request", g.cpu_seconds, opt_us(out.gateway_cpu_us_per_request)));
    }
    r.row("tool CPU", format!("{:.2} s, {} per request", tool_cpu, opt_us(out.tool_cpu_us_per_request)));
    r.row(
        "service requests in window (access / get)",
        format!("{} / {}", out.service_access_requests, out.service_get_requests),
    );
    if let Some(f) = counts.first_failure.lock().clone() {
        r.warnings.push(format!("{} connections failed; first: {f}", out.failures));
    }
    if ok == 0 {
        r.warnings.push(format!("no 200 response from {}", out.path));
    }
    Ok(finish_report(r, ctx))
}
