//! `floor`: the CPU that any gateway spends per delivered event on this machine, whatever its
//! design, as long as it writes each delivery to its client's socket.
//!
//! The tool plays both ends of N loopback TCP connections. One writer thread is the ideal gateway:
//! for each event it encodes the WebSocket text frame a gateway sends for a `change` event, then
//! writes it to every subscriber's socket (one `write` each, as the gateways do at light load),
//! with no parsing, cache, routing or scheduling at all. The tool's client runtimes read the other
//! ends. The writer thread's own CPU (user and system, from `/proc/thread-self/stat`) per delivery
//! is the floor a real gateway's figure from `fanout` can be compared with. On loopback that floor
//! includes the receiving side's TCP processing, which the kernel runs in the sender's context,
//! for Resgate and resgate-rs alike.

use crate::fanout::{FanoutArgs, events_for};
use crate::report::{Report, cpu_us_per, opt_us, per_sec};
use crate::service::rid;
use crate::stats::{Pacer, Proc, now_ns, this_thread_cpu};
use crate::{Ctx, FD_RESERVE, finish_report, frames, secs};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

#[derive(Debug, Serialize)]
struct FloorOut<'a> {
    clients: usize,
    resources: usize,
    step: &'a FloorStep,
}

/// The measured part. Field names follow `fanout`'s step so that reports line up; the "gateway"
/// here is the writer thread.
#[derive(Debug, Serialize)]
struct FloorStep {
    events: u64,
    delivered: u64,
    deliveries_per_second: f64,
    /// Bytes written that no reader had received when the drain time ended (0: all arrived).
    undelivered_bytes: u64,
    gateway_cpu_us_per_delivery: Option<f64>,
    writer_user_us_per_delivery: Option<f64>,
    writer_system_us_per_delivery: Option<f64>,
    tool_cpu_us_per_delivery: Option<f64>,
}

/// What the writer thread measured.
struct Written {
    bytes: u64,
    deliveries: u64,
    seconds: f64,
    user: f64,
    system: f64,
}

/// The frame a gateway sends a client for a `change` event of `rid` (server frames are unmasked).
fn change_frame(out: &mut Vec<u8>, rid: &str, t_ns: u64, seq: u64) {
    let mut payload = Vec::with_capacity(rid.len() + 80);
    payload.extend_from_slice(b"{\"event\":\"");
    payload.extend_from_slice(rid.as_bytes());
    payload.extend_from_slice(b".change\",\"data\":");
    payload.extend_from_slice(&frames::change_event(t_ns, seq));
    payload.push(b'}');
    out.clear();
    crate::ws::push_frame(out, 0x81, None, &payload); // FIN + text, unmasked as a server sends it
}

/// Writes `warm + measured` events round robin over the resources; measures only the last part.
fn write_events(
    by_resource: &mut [Vec<TcpStream>],
    rids: &[String],
    rate: f64,
    warm: u64,
    measured: u64,
) -> Result<Written> {
    let pacer = Pacer::new(rate, warm + measured);
    let start = Instant::now();
    let mut frame = Vec::with_capacity(128);
    let mut bytes = 0;
    let mut deliveries = 0;
    let mut cpu_start = (0.0, 0.0);
    let mut measured_start = start;
    for k in 0..warm + measured {
        if k == warm {
            cpu_start = this_thread_cpu().context("read /proc/thread-self/stat")?;
            measured_start = Instant::now();
        }
        let due = pacer.due_at(k);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let r = (k % rids.len() as u64) as usize;
        change_frame(&mut frame, &rids[r], now_ns(), k);
        for sock in &mut by_resource[r] {
            sock.write_all(&frame).context("write to a loopback socket")?;
        }
        bytes += (frame.len() * by_resource[r].len()) as u64;
        if k >= warm {
            deliveries += by_resource[r].len() as u64;
        }
    }
    let (user, system) = this_thread_cpu().context("read /proc/thread-self/stat")?;
    Ok(Written {
        bytes,
        deliveries,
        seconds: measured_start.elapsed().as_secs_f64(),
        user: user - cpu_start.0,
        system: system - cpu_start.1,
    })
}

/// Takes `fanout`'s arguments, so that a floor and the fanout it bounds are set up alike.
pub async fn run(ctx: Ctx, a: FanoutArgs) -> Result<(Report, crate::ws::Shards)> {
    let duration = secs(a.duration, "--duration", 3600.0)?;
    let drain = secs(a.clients.drain_timeout, "--drain-timeout", 600.0)?;
    if !(a.rate > 0.0 && a.rate <= 1_000_000.0) {
        bail!("--rate must be in (0, 1e6]");
    }
    let (clients, resources) = (a.clients.clients, a.clients.resources);
    if resources == 0 || clients == 0 {
        bail!("--clients and --resources must be positive");
    }
    let mut ctx = ctx;
    // Both ends of every connection are the tool's: two descriptors each.
    let fits = usize::try_from(ctx.fd_limit.saturating_sub(FD_RESERVE) / 2).unwrap_or(usize::MAX);
    let n = clients.min(fits);
    if n < clients {
        ctx.warnings.push(format!(
            "{} connections need {} descriptors, over the fd limit {}: running {n}",
            clients,
            2 * clients,
            ctx.fd_limit
        ));
    }
    let warm = if a.warmup > 0.0 { events_for(a.rate, secs(a.warmup, "--warmup", 600.0)?) } else { 0 };
    let measured = events_for(a.rate, duration);

    let listener = TcpListener::bind("127.0.0.1:0").context("bind a loopback listener")?;
    let addr = listener.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let mut by_resource: Vec<Vec<TcpStream>> = (0..resources).map(|_| Vec::new()).collect();
    for i in 0..n {
        let client = TcpStream::connect(addr).with_context(|| format!("connect {i} of {n}"))?;
        let (server, _) = listener.accept().context("accept")?;
        server.set_nodelay(true)?;
        client.set_nonblocking(true)?;
        by_resource[i % resources].push(server);
        let received = received.clone();
        ctx.shards.handle(i).spawn(async move {
            let Ok(mut sock) = tokio::net::TcpStream::from_std(client) else { return };
            let mut buf = [0u8; 1024];
            while let Ok(got @ 1..) = sock.read(&mut buf).await {
                received.fetch_add(got as u64, Relaxed);
            }
        });
    }

    let rids: Vec<String> = (0..resources).map(|r| rid(&ctx.common.service, r)).collect();
    let me = Proc::this();
    let tool_cpu0 = me.cpu_seconds().unwrap_or(0.0);
    let writer = std::thread::Builder::new()
        .name("resbench-floor-writer".into())
        .spawn(move || write_events(&mut by_resource, &rids, a.rate, warm, measured).map(|w| (w, by_resource)))
        .context("spawn the writer thread")?;
    let (written, sockets) = tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))??;
    let drain_end = Instant::now() + drain;
    while received.load(Relaxed) < written.bytes && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let tool_cpu = me.cpu_seconds().unwrap_or(0.0) - tool_cpu0;
    drop(sockets); // readers see end of file and finish
    let undelivered = written.bytes.saturating_sub(received.load(Relaxed));

    let d = written.deliveries;
    let writer_cpu = written.user + written.system;
    let step = FloorStep {
        events: measured,
        delivered: if undelivered == 0 { d } else { 0 },
        deliveries_per_second: d as f64 / written.seconds.max(1e-9),
        undelivered_bytes: undelivered,
        gateway_cpu_us_per_delivery: cpu_us_per(writer_cpu, d),
        writer_user_us_per_delivery: cpu_us_per(written.user, d),
        writer_system_us_per_delivery: cpu_us_per(written.system, d),
        // The process's CPU also covers the warm-up's reads: a slight overestimate.
        tool_cpu_us_per_delivery: cpu_us_per((tool_cpu - writer_cpu).max(0.0), d),
    };
    if undelivered > 0 {
        ctx.warnings.push(format!("{undelivered} bytes had not arrived when the drain time ended"));
    }
    let mut r = Report::new("floor", &FloorOut { clients: n, resources, step: &step });
    r.row("connections / resources", format!("{n} / {resources}"));
    r.row("events written (measured)", format!("{measured} at {}", per_sec(measured as f64 / written.seconds)));
    r.row("deliveries", format!("{d} ({})", per_sec(step.deliveries_per_second)));
    r.row("undelivered bytes", undelivered.to_string());
    r.row(
        "writer CPU per delivery",
        format!(
            "{} (user {}, system {})",
            opt_us(step.gateway_cpu_us_per_delivery),
            opt_us(step.writer_user_us_per_delivery),
            opt_us(step.writer_system_us_per_delivery)
        ),
    );
    r.row("tool readers CPU per delivery", opt_us(step.tool_cpu_us_per_delivery));
    Ok(finish_report(r, ctx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_what_a_gateway_sends() {
        let mut out = Vec::new();
        change_frame(&mut out, "bench.item.3", 17, 42);
        let payload = br#"{"event":"bench.item.3.change","data":{"values":{"t":17,"seq":42}}}"#;
        assert_eq!(out[0], 0x81);
        assert_eq!(out[1] as usize, payload.len());
        assert_eq!(&out[2..], payload);
        let stamp = frames::parse_change_stamp(&out[2..]).expect("the tool's own scanner reads it");
        assert_eq!((stamp.t_ns, stamp.seq), (17, 42));
        change_frame(&mut out, &"x".repeat(200), 1, 1);
        assert_eq!(out[1], 126);
        assert_eq!(u16::from_be_bytes([out[2], out[3]]) as usize, out.len() - 4);
    }
}
