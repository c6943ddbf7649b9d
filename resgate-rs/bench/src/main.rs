//! `resbench`: load tool for RES gateways (Resgate and resgate-rs).
//!
//! It plays the RES service on NATS itself, so that only the gateway is measured, and drives
//! WebSocket (and HTTP) clients against the gateway. Every run is bounded in count and time.

mod fanout;
mod floor;
mod frames;
mod http;
mod receivers;
mod report;
mod requests;
mod sale;
mod service;
mod stats;
mod ws;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use report::Report;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "resbench",
    version,
    about = "Load tool for RES gateways (WebSocket + HTTP clients, RES service on NATS)"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// NATS server the gateway uses (the tool plays the service there).
    #[arg(long, global = true, default_value = "nats://127.0.0.1:4222", env = "RESBENCH_NATS")]
    pub nats: String,
    /// Gateway HTTP/WebSocket address (loopback).
    #[arg(long, global = true, default_value = "127.0.0.1:8080", env = "RESBENCH_GATEWAY")]
    pub gateway: SocketAddr,
    /// WebSocket path of the gateway.
    #[arg(long, global = true, default_value = "/")]
    pub ws_path: String,
    /// HTTP API path prefix of the gateway.
    #[arg(long, global = true, default_value = "/api")]
    pub api_path: String,
    /// PID of the gateway, for CPU and RSS accounting from /proc.
    #[arg(long, global = true)]
    pub gateway_pid: Option<u32>,
    /// PID of nats-server, for CPU accounting from /proc (optional).
    #[arg(long, global = true)]
    pub nats_pid: Option<u32>,
    /// Service name: resources are `<service>.item.<i>`.
    #[arg(long, global = true, default_value = "bench")]
    pub service: String,
    /// Client threads of the tool (each a single-threaded runtime owning a share of the clients;
    /// the NATS service and publisher run on one more thread).
    #[arg(long, global = true, default_value_t = 1)]
    pub threads: usize,
    /// First loopback source address of client sockets (127.0.0.<n>); 0 lets the kernel choose.
    #[arg(long, global = true, default_value_t = 2)]
    pub source_first: u8,
    /// Number of loopback source addresses client sockets are spread over.
    #[arg(long, global = true, default_value_t = 8)]
    pub source_count: u8,
    /// Concurrent WebSocket handshakes during the connect phase.
    #[arg(long, global = true, default_value_t = 200)]
    pub connect_parallel: usize,
    /// Time limit of each client's connect + version + subscribe.
    #[arg(long, global = true, default_value_t = 30.0)]
    pub connect_timeout: f64,
    /// Print the result as JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// N clients subscribed over R resources; change events published at a fixed rate.
    Fanout(fanout::FanoutArgs),
    /// Step the event rate up to find the highest rate delivered in full with p99 under a bound.
    Saturate(fanout::SaturateArgs),
    /// N idle subscribed connections: RSS per connection and connect rate.
    Connections(fanout::ConnectionsArgs),
    /// Cached `get` or service `call` round trips, C clients with W requests in flight each.
    Requests(requests::RequestsArgs),
    /// GET of a cached resource through the HTTP API, C keep-alive connections.
    Http(http::HttpArgs),
    /// The booking platform under a sale-day crowd: signed-in buyers (search, seat map, hold,
    /// pay or release, my tickets) and seat-map watchers through the gateway, then an audit
    /// against PostgreSQL and Redis.
    Sale(sale::SaleArgs),
    /// The CPU per delivery of an ideal gateway (one write per delivery, nothing else): no
    /// gateway or NATS involved, the tool writes to its own loopback connections.
    Floor(fanout::FanoutArgs),
}

/// What every scenario gets: the arguments, the gateway and the processes to watch.
pub struct Ctx {
    pub common: Common,
    pub target: ws::Target,
    pub gateway: Option<stats::Proc>,
    pub nats: Option<stats::Proc>,
    pub fd_limit: u64,
    pub warnings: Vec<String>,
    pub shards: ws::Shards,
}

/// File descriptors the tool keeps for itself (NATS, stdio, runtime, HTTP holders).
pub const FD_RESERVE: u64 = 128;

impl Ctx {
    /// How many of `wanted` client sockets fit in the fd limit; records a warning when capped.
    pub fn fit_clients(&mut self, wanted: usize) -> usize {
        let fits = usize::try_from(self.fd_limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
        if wanted > fits {
            self.warnings.push(format!(
                "{wanted} clients do not fit in the tool's fd limit {} (hard limit, not raisable here); running {fits}",
                self.fd_limit
            ));
        }
        if let Some(limit) = self.gateway.as_ref().and_then(stats::Proc::nofile_limit)
            && (wanted.min(fits) as u64) + 64 > limit
        {
            self.warnings.push(format!(
                "the gateway's own fd limit is {limit}: expect it to refuse connections beyond that (start it after `ulimit -n $(ulimit -Hn)`)"
            ));
        }
        wanted.min(fits)
    }
}

/// Raises the soft fd limit to the hard one and returns the limit in force.
fn raise_fd_limit() -> Result<u64> {
    let (_, hard) = rlimit::Resource::NOFILE.get().context("getrlimit(NOFILE)")?;
    rlimit::Resource::NOFILE.set(hard, hard).context("setrlimit(NOFILE)")?;
    Ok(rlimit::Resource::NOFILE.get().context("getrlimit(NOFILE)")?.0)
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("resbench: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    if !cli.common.gateway.ip().is_loopback() {
        bail!("--gateway must be a loopback address (got {})", cli.common.gateway);
    }
    let fd_limit = raise_fd_limit()?;
    let sources = if cli.common.source_first == 0 || cli.common.source_count == 0 {
        Vec::new()
    } else {
        ws::loopback_sources(cli.common.source_first, cli.common.source_count)
    };
    let ctx = Ctx {
        target: ws::Target { addr: cli.common.gateway, ws_path: cli.common.ws_path.clone(), sources },
        gateway: cli.common.gateway_pid.map(stats::Proc::pid),
        nats: cli.common.nats_pid.map(stats::Proc::pid),
        fd_limit,
        warnings: Vec::new(),
        shards: ws::Shards::new(cli.common.threads)?,
        common: cli.common,
    };
    if let Some(g) = &ctx.gateway
        && g.cpu_seconds().is_none()
    {
        bail!("cannot read /proc for --gateway-pid {:?}", ctx.common.gateway_pid);
    }
    stats::now_ns(); // start the clock
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    let json = ctx.common.json;
    let (report, shards) = rt.block_on(async move {
        match cli.cmd {
            Cmd::Fanout(a) => fanout::run_fanout(ctx, a).await,
            Cmd::Saturate(a) => fanout::run_saturate(ctx, a).await,
            Cmd::Connections(a) => fanout::run_connections(ctx, a).await,
            Cmd::Requests(a) => requests::run(ctx, a).await,
            Cmd::Http(a) => http::run(ctx, a).await,
            Cmd::Floor(a) => floor::run(ctx, a).await,
            Cmd::Sale(a) => sale::run(ctx, a).await,
        }
    })?;
    shards.shutdown();
    rt.shutdown_timeout(Duration::from_secs(2));
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

/// Validates a bounded duration in seconds.
pub fn secs(v: f64, what: &str, max: f64) -> Result<Duration> {
    if !(v.is_finite() && v > 0.0 && v <= max) {
        bail!("{what} must be in (0, {max}] seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

/// Hands a report back with the run's warnings, and the client runtimes to shut down.
pub fn finish_report(mut r: Report, ctx: Ctx) -> (Report, ws::Shards) {
    r.warnings.extend(ctx.warnings);
    (r, ctx.shards)
}
