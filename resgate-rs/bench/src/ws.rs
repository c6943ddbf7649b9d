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

/// Largest message a [`FrameBuf`] accepts: far above any frame of the tool's scenarios.
const MAX_MESSAGE: usize = 16 << 20;

/// What [`FrameBuf::next`] found in the buffered bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<'a> {
    /// A text or binary message's payload (fragments joined).
    Message(&'a [u8]),
    /// The buffer holds no whole message: read into [`FrameBuf::room`] and call again.
    More,
    /// The server sent a close frame.
    Closed,
}

/// The receiving side of a client once it is set up, without tungstenite and without I/O: the
/// caller reads into [`FrameBuf::room`], reports the bytes with [`FrameBuf::filled`] and takes
/// messages with [`FrameBuf::next`] until it says [`Next::More`].
///
/// At a gateway's maximum the tool's readers share the machine's two cores with the gateway, so
/// every microsecond they spend per delivery is taken from the gateway under test, and more so
/// from the faster one. This parser works in place in one buffer that is never cleared, and does
/// only what a client must: queues a pong for each ping ([`FrameBuf::unsent`]), joins
/// fragments, and stops at a close frame.
pub struct FrameBuf {
    buf: Vec<u8>,
    /// Unparsed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Unparsed bytes the next frame needs before it can be parsed.
    need: usize,
    /// A fragmented message: being joined while `joining`, else the one returned last.
    joined: Vec<u8>,
    joining: bool,
    /// The message returned last, to drop from the buffer on the next call.
    consumed: usize,
    /// Frames to send (pongs).
    out: Vec<u8>,
}

/// Free space a read is offered beyond what the next frame needs.
const READ_ROOM: usize = 4096;

/// One frame's header, once its bytes are in the buffer.
struct Header {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    header_len: usize,
    payload_len: usize,
}

fn parse_header(b: &[u8]) -> std::io::Result<Option<Header>> {
    if b.len() < 2 {
        return Ok(None);
    }
    let (fin, opcode, masked, len7) = (b[0] & 0x80 != 0, b[0] & 0x0F, b[1] & 0x80 != 0, b[1] & 0x7F);
    let (ext, payload_len) = match len7 {
        126 if b.len() >= 4 => (2, u16::from_be_bytes([b[2], b[3]]) as u64),
        127 if b.len() >= 10 => (8, u64::from_be_bytes(b[2..10].try_into().expect("8 bytes"))),
        126 | 127 => return Ok(None),
        n => (0, n as u64),
    };
    let header_len = 2 + ext + if masked { 4 } else { 0 };
    if b.len() < header_len {
        return Ok(None);
    }
    if payload_len > MAX_MESSAGE as u64 {
        return Err(invalid(format!("frame of {payload_len} bytes")));
    }
    let mask = masked.then(|| b[header_len - 4..header_len].try_into().expect("4 bytes"));
    Ok(Some(Header { fin, opcode, mask, header_len, payload_len: payload_len as usize }))
}

fn invalid(why: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
}

/// Appends one frame: `first` holds FIN and the opcode; `mask` masks the payload (clients must
/// mask what they send, servers must not).
pub fn push_frame(out: &mut Vec<u8>, first: u8, mask: Option<[u8; 4]>, payload: &[u8]) {
    let masked = if mask.is_some() { 0x80 } else { 0 };
    out.push(first);
    match payload.len() {
        n @ 0..=125 => out.push(masked | n as u8),
        n @ 126..=0xFFFF => {
            out.push(masked | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(masked | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
    let at = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[at..], key);
    }
}

/// Masks or unmasks (the same operation) a frame's payload.
fn apply_mask(bytes: &mut [u8], key: [u8; 4]) {
    bytes.iter_mut().enumerate().for_each(|(i, b)| *b ^= key[i % 4]);
}

impl Default for FrameBuf {
    fn default() -> FrameBuf {
        FrameBuf {
            buf: vec![0; READ_ROOM],
            start: 0,
            end: 0,
            need: 1,
            joined: Vec::new(),
            joining: false,
            consumed: 0,
            out: Vec::new(),
        }
    }
}

impl FrameBuf {
    /// Where the next read goes: room for at least the next frame and [`READ_ROOM`] more.
    pub fn room(&mut self) -> &mut [u8] {
        self.start += std::mem::take(&mut self.consumed);
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        let want = self.need.max(self.end + READ_ROOM);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Counts `n` bytes read into [`FrameBuf::room`].
    pub fn filled(&mut self, n: usize) {
        self.end += n;
    }

    /// Frames queued to send (pongs): the caller writes them and drains what it wrote.
    pub fn unsent(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// The next message in the buffered bytes; an error on framing a server must not send.
    pub fn next(&mut self) -> std::io::Result<Next<'_>> {
        self.start += std::mem::take(&mut self.consumed);
        if !self.joining {
            self.joined.clear();
        }
        loop {
            let unparsed = self.end - self.start;
            let Some(h) = parse_header(&self.buf[self.start..self.end])? else {
                self.need = unparsed + 1;
                return Ok(Next::More);
            };
            let frame_len = h.header_len + h.payload_len;
            if unparsed < frame_len {
                self.need = frame_len;
                return Ok(Next::More);
            }
            let at = self.start + h.header_len;
            let payload = at..at + h.payload_len;
            if let Some(key) = h.mask {
                apply_mask(&mut self.buf[payload.clone()], key);
            }
            match (h.opcode, self.joining) {
                (0x8, _) => return Ok(Next::Closed),
                (0x9, _) => {
                    push_frame(&mut self.out, 0x8A, Some(rand::random()), &self.buf[payload]);
                    self.start += frame_len;
                }
                (0xA, _) => self.start += frame_len,
                (0x1 | 0x2, false) if h.fin => {
                    self.consumed = frame_len;
                    return Ok(Next::Message(&self.buf[payload]));
                }
                (0x1 | 0x2, false) | (0x0, true) => {
                    if self.joined.len() + h.payload_len > MAX_MESSAGE {
                        return Err(invalid("fragmented message too large".into()));
                    }
                    self.joined.extend_from_slice(&self.buf[payload]);
                    self.start += frame_len;
                    self.joining = !h.fin;
                    if h.fin {
                        return Ok(Next::Message(&self.joined));
                    }
                }
                (0x0, false) => return Err(invalid("a continuation frame with no message to continue".into())),
                (0x1 | 0x2, true) => return Err(invalid("a new message inside a fragmented one".into())),
                (op, _) => return Err(invalid(format!("unknown frame opcode {op}"))),
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A server frame (unmasked unless `mask` is given).
    pub(crate) fn server_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = Vec::new();
        push_frame(&mut out, if fin { 0x80 } else { 0 } | opcode, mask, payload);
        out
    }

    /// The messages a parser gave, and whether a close frame ended them.
    type Fed = (Vec<Vec<u8>>, bool);

    /// Feeds `wire` to a fresh parser in reads of at most `chunk` bytes (and at most the room
    /// offered); the messages, and whether a close frame ended them.
    fn feed(wire: &[u8], chunk: usize) -> (FrameBuf, std::io::Result<Fed>) {
        let mut fb = FrameBuf::default();
        let mut got = Vec::new();
        let r = (|| {
            let mut rest = wire;
            while !rest.is_empty() {
                let room = fb.room();
                let n = rest.len().min(chunk).min(room.len());
                room[..n].copy_from_slice(&rest[..n]);
                fb.filled(n);
                rest = &rest[n..];
                loop {
                    match fb.next()? {
                        Next::Message(m) => got.push(m.to_vec()),
                        Next::More => break,
                        Next::Closed => return Ok((got, true)),
                    }
                }
            }
            Ok((got, false))
        })();
        (fb, r)
    }

    #[test]
    fn messages_come_out_whole_whatever_the_reads_split() {
        let sizes = [0usize, 1, 125, 126, 4000, 4096, 65535, 65536, 200_000];
        let messages: Vec<Vec<u8>> = sizes.iter().map(|&n| (0..n).map(|i| (i * 7 + n) as u8).collect()).collect();
        let mut wire = Vec::new();
        for (k, m) in messages.iter().enumerate() {
            let mask = (k % 2 == 1).then_some([1, 2, 3, 4]);
            wire.extend(server_frame(true, if k % 3 == 0 { 2 } else { 1 }, m, mask));
        }
        for chunk in [1usize, 3, 1000, 4096, wire.len()] {
            let (_, r) = feed(&wire, chunk);
            let (got, closed) = r.unwrap();
            assert!(got == messages && !closed, "chunks of {chunk}");
        }
    }

    #[test]
    fn fragments_are_joined_pings_answered_and_a_close_ends() {
        let mut wire = server_frame(false, 1, b"hel", None);
        wire.extend(server_frame(true, 9, b"are you there", None));
        wire.extend(server_frame(false, 0, b"lo ", None));
        wire.extend(server_frame(true, 0, b"world", None));
        wire.extend(server_frame(true, 1, b"next", None));
        wire.extend(server_frame(true, 8, &[3, 232], None));
        wire.extend(server_frame(true, 1, b"after the close", None));
        for chunk in [1, wire.len()] {
            let (mut fb, r) = feed(&wire, chunk);
            assert_eq!(r.unwrap(), (vec![b"hello world".to_vec(), b"next".to_vec()], true));
            // The pong: masked, echoing the ping's payload.
            let out = std::mem::take(fb.unsent());
            assert_eq!((out[0], out[1], out.len()), (0x8A, 0x80 | 13, 19));
            let mut pong = out[6..].to_vec();
            apply_mask(&mut pong, out[2..6].try_into().unwrap());
            assert_eq!(pong, b"are you there");
            assert!(fb.unsent().is_empty());
        }
    }

    #[test]
    fn broken_framing_is_refused() {
        let cases: [(&str, Vec<u8>); 4] = [
            ("continuation with nothing open", server_frame(true, 0, b"x", None)),
            ("new message inside a fragmented one", {
                let mut w = server_frame(false, 1, b"a", None);
                w.extend(server_frame(true, 1, b"b", None));
                w
            }),
            ("unknown opcode", server_frame(true, 3, b"x", None)),
            ("oversized frame", vec![0x81, 127, 0, 0, 0, 0, 0x10, 0, 0, 0]),
        ];
        for (what, wire) in cases {
            let e = feed(&wire, wire.len()).1.expect_err(what);
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{what}");
        }
    }

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
