//! WebSocket clients speaking the RES client protocol, and the connect phase shared by scenarios.

use crate::frames;
use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub type Ws = WebSocketStream<TcpStream>;

/// Client read buffer (bigger frames still arrive whole, in several reads). tungstenite
/// zero-fills it before every read, so it is kept near the size of a read's worth of frames.
const READ_BUFFER: usize = 1024;

/// Where the gateway is, and how clients reach it.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub ws_path: String,
    /// Local source addresses to spread client sockets over (loopback aliases), so that more
    /// connections fit than one address's ephemeral ports allow.
    pub sources: Vec<IpAddr>,
}

impl Target {
    pub fn ws_url(&self) -> String {
        format!("ws://{}{}", self.addr, self.ws_path)
    }

    fn source(&self, i: usize) -> Option<IpAddr> {
        (!self.sources.is_empty()).then(|| self.sources[i % self.sources.len()])
    }
}

/// `127.0.0.<first>` .. `127.0.0.<first+count-1>`.
pub fn loopback_sources(first: u8, count: u8) -> Vec<IpAddr> {
    (0..count).map(|k| IpAddr::V4(Ipv4Addr::new(127, 0, 0, first.saturating_add(k)))).collect()
}

/// Opens client `i`'s WebSocket.
pub async fn connect(target: &Target, i: usize) -> Result<Ws> {
    let sock = TcpSocket::new_v4().context("socket")?;
    if let Some(src) = target.source(i) {
        sock.bind(SocketAddr::new(src, 0)).with_context(|| format!("bind {src}"))?;
    }
    let stream = sock.connect(target.addr).await.with_context(|| format!("connect {}", target.addr))?;
    stream.set_nodelay(true)?;
    // tungstenite zero-fills its read buffer before every read: the 128 KiB default made that
    // memset most of the tool's CPU. RES frames of these scenarios are well under 1 KiB.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let (ws, _) = tokio_tungstenite::client_async_with_config(target.ws_url(), stream, Some(config))
        .await
        .context("WebSocket handshake")?;
    Ok(ws)
}

/// Sends one request and waits for its response, skipping any other frame. Errors on an error
/// response.
pub async fn roundtrip(ws: &mut Ws, id: u64, frame: String) -> Result<()> {
    ws.send(Message::text(frame)).await.context("send")?;
    while let Some(msg) = ws.next().await {
        if let Message::Text(t) = msg.context("receive")?
            && let Some(r) = frames::parse_response(t.as_bytes())
            && r.id == id
        {
            if let Some(code) = r.error {
                bail!("request {id} failed: {code}");
            }
            return Ok(());
        }
    }
    bail!("connection closed while waiting for response {id}")
}

/// Connects, negotiates the protocol version and subscribes to `rid`.
pub async fn subscribed(target: &Target, i: usize, rid: &str) -> Result<Ws> {
    let mut ws = connect(target, i).await?;
    roundtrip(&mut ws, 1, frames::version_request(1)).await?;
    roundtrip(&mut ws, 2, frames::request(2, &format!("subscribe.{rid}"), None)).await?;
    Ok(ws)
}

/// Client runtimes: one single-threaded tokio runtime per OS thread. A client connects, and then
/// runs, on the runtime of its shard, so its socket's readiness and its task stay on one thread
/// (no work stealing, no cross-thread wakeups: far cheaper per message than a multi-thread pool).
pub struct Shards {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Shards {
    pub fn new(count: usize) -> Result<Shards> {
        let mut s = Shards { handles: Vec::new(), stops: Vec::new(), threads: Vec::new() };
        for k in 0..count.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("client runtime")?;
            let (stop, stopped) = oneshot::channel::<()>();
            s.handles.push(rt.handle().clone());
            s.stops.push(stop);
            s.threads.push(
                std::thread::Builder::new()
                    .name(format!("resbench-clients-{k}"))
                    .spawn(move || {
                        rt.block_on(async {
                            let _ = stopped.await;
                        });
                        rt.shutdown_timeout(Duration::from_secs(1));
                    })
                    .context("spawn client thread")?,
            );
        }
        Ok(s)
    }

    /// The runtime of client `i`.
    pub fn handle(&self, i: usize) -> &Handle {
        &self.handles[i % self.handles.len()]
    }

    /// Stops the runtimes (tasks still running there are dropped) and joins their threads.
    pub fn shutdown(self) {
        for s in self.stops {
            let _ = s.send(());
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The outcome of opening many subscribed clients.
pub struct Opened {
    /// Indices of the clients that connected and subscribed, ascending.
    pub connected: Vec<usize>,
    pub failed: usize,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// The client tasks (connected ones run `run` once `go` turns true).
    pub tasks: Vec<JoinHandle<()>>,
}

/// Opens `n` subscribed clients on their shards (client `i` on `rids[i % rids.len()]`), at most
/// `parallel` handshakes at a time, each bounded by `timeout`. Each connected client then waits
/// for `go` and runs `run(i, ws)` on its shard; a client whose `go` sender is dropped closes.
#[allow(clippy::too_many_arguments)]
pub async fn open_many<F, Fut>(
    shards: &Shards,
    target: &Target,
    n: usize,
    rids: &[String],
    parallel: usize,
    timeout: Duration,
    go: watch::Receiver<bool>,
    run: F,
) -> Opened
where
    F: Fn(usize, Ws) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let start = Instant::now();
    let gate = Arc::new(Semaphore::new(parallel.max(1)));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(usize, Result<(), String>)>();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (target, rid, gate, done, run, mut go) =
            (target.clone(), rids[i % rids.len()].clone(), gate.clone(), done_tx.clone(), run.clone(), go.clone());
        tasks.push(shards.handle(i).spawn(async move {
            let permit = gate.acquire_owned().await.expect("semaphore open");
            let r = tokio::time::timeout(timeout, subscribed(&target, i, &rid))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {timeout:?}")));
            drop(permit);
            match r {
                Ok(ws) => {
                    let _ = done.send((i, Ok(())));
                    drop(done);
                    if go.wait_for(|g| *g).await.is_ok() {
                        run(i, ws).await;
                    } else {
                        close(ws).await;
                    }
                }
                Err(e) => {
                    let _ = done.send((i, Err(format!("{e:#}"))));
                }
            }
        }));
    }
    drop(done_tx);
    let mut connected = Vec::with_capacity(n);
    let (mut failed, mut first_error) = (0, None);
    for _ in 0..n {
        match done_rx.recv().await {
            Some((i, Ok(()))) => connected.push(i),
            Some((i, Err(e))) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("client {i}: {e}"));
            }
            None => {
                failed += 1;
                first_error.get_or_insert_with(|| "client task ended without a result".to_owned());
            }
        }
    }
    connected.sort_unstable();
    Opened { connected, failed, first_error, elapsed: start.elapsed(), tasks }
}

/// Closes a client politely (close frame, bounded wait); the socket drops either way.
pub async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_spread_clients() {
        let t =
            Target { addr: "127.0.0.1:8080".parse().unwrap(), ws_path: "/".into(), sources: loopback_sources(2, 3) };
        assert_eq!(t.ws_url(), "ws://127.0.0.1:8080/");
        assert_eq!(t.source(0), Some("127.0.0.2".parse().unwrap()));
        assert_eq!(t.source(4), Some("127.0.0.3".parse().unwrap()));
        let none = Target { sources: vec![], ..t };
        assert_eq!(none.source(5), None);
    }
}
