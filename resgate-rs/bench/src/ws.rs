//! WebSocket clients speaking the RES client protocol, and the connect phase shared by scenarios.

use crate::frames;
use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

pub type Ws = WebSocketStream<TcpStream>;

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
    let (ws, _) = tokio_tungstenite::client_async(target.ws_url(), stream).await.context("WebSocket handshake")?;
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

/// The outcome of opening many subscribed clients.
pub struct Opened {
    pub clients: Vec<(usize, Ws)>,
    pub failed: usize,
    pub first_error: Option<String>,
    pub elapsed: Duration,
}

/// Opens `n` subscribed clients (client `i` on `rids[i % rids.len()]`), at most `parallel` handshakes
/// at a time, each bounded by `timeout`.
pub async fn open_many(target: &Target, n: usize, rids: &[String], parallel: usize, timeout: Duration) -> Opened {
    let start = Instant::now();
    let gate = Arc::new(Semaphore::new(parallel.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let (target, rid, gate) = (target.clone(), rids[i % rids.len()].clone(), gate.clone());
        set.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore open");
            let r = tokio::time::timeout(timeout, subscribed(&target, i, &rid)).await;
            (i, r.unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {timeout:?}"))))
        });
    }
    let mut clients = Vec::with_capacity(n);
    let (mut failed, mut first_error) = (0, None);
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, Ok(ws))) => clients.push((i, ws)),
            Ok((i, Err(e))) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("client {i}: {e:#}"));
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("task: {e}"));
            }
        }
    }
    clients.sort_by_key(|(i, _)| *i);
    Opened { clients, failed, first_error, elapsed: start.elapsed() }
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
