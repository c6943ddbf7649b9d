//! Slow uploads: a client trickling an unfinished WebSocket frame, or an HTTP request body, must
//! not keep its connection (and the buffer it pins) alive past `idleTimeout`.

mod common;

use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the peer closes; how long that took (None: still open after `limit`).
async fn closed_within(s: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> Option<Duration> {
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(started + limit, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn an_unfinished_websocket_frame_does_not_keep_the_connection_alive() {
    let env = TestEnv::start_with(|c| {
        c.idle_timeout = 800;
        c.ping_interval = 200;
    })
    .await;
    let mut s = TcpStream::connect(env.addr()).await.unwrap();
    let handshake = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    s.write_all(handshake.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 1024];
    let n = s.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 101"), "upgrade refused");
    // A masked text frame announcing 120 payload bytes, then one byte every 300 ms.
    s.write_all(&[0x81, 0x80 | 120, 1, 2, 3, 4]).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = async move {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if wr.write_all(b"x").await.is_err() {
                return;
            }
        }
    };
    let (closed, ()) = tokio::join!(closed_within(&mut rd, Duration::from_secs(6)), writer);
    assert!(closed.is_some(), "a frame trickled byte by byte kept the connection open past the idle timeout");
}

#[tokio::test]
async fn a_slow_http_request_body_times_out() {
    let env = TestEnv::start_with(|c| c.idle_timeout = 800).await;
    let mut s = TcpStream::connect(env.addr()).await.unwrap();
    let req = "POST /api/test/model/set HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":";
    s.write_all(req.as_bytes()).await.unwrap();
    let took = closed_within(&mut s, Duration::from_secs(6)).await;
    assert!(took.is_some(), "a request body that never finishes kept the request open");
}
