//! The connection: one supervisor task per client that connects, reads and dispatches, and
//! reconnects; one writer task per live connection that flushes the shared write buffer.

use crate::addr::{ServerAddr, UrlAuth, parse_urls};
use crate::auth::Creds;
use crate::proto::{self, ProtocolError, ServerInfo, ServerOp};
use crate::{ConnectError, Error, Event, Handler, Headers, Options};
use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use rand::Rng as _;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, broadcast, oneshot};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_util::sync::CancellationToken;

/// Unanswered keepalive PINGs after which the connection is declared dead (as nats.go).
const MAX_PINGS_OUT: u32 = 2;
/// nats-server's default `max_control_line`: a longer PUB/SUB line makes it close the
/// connection, failing everyone's traffic, so such a call fails on its own instead.
const MAX_CONTROL_LINE: usize = 4096;
/// Room for the operation name, sizes, sid, spaces and CRLF around the subjects in a line.
const CONTROL_LINE_OVERHEAD: usize = 48;
/// How much the reader asks the socket for at once.
const READ_CHUNK: usize = 64 * 1024;
/// A write buffer that grew past this during a burst is released rather than kept forever.
const KEEP_WRITE_CAPACITY: usize = 4 << 20;
/// How long closing waits for the writer to send what was published before.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect delays grow from this (after an immediate first attempt) ...
const BACKOFF_START: Duration = Duration::from_millis(100);
/// ... and stop growing here.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Anything the connection can run over: TCP or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Stream = Box<dyn Io>;

/// Why a connection (or an attempt to make one) ended.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("server error: {0}")]
    Server(String),
    #[error("unexpected {0} during the handshake")]
    Handshake(&'static str),
    #[error("connection closed by the server")]
    Eof,
    #[error("no PONG to {MAX_PINGS_OUT} PINGs: the connection is dead")]
    Stale,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error("the writer task failed: {0}")]
    Writer(#[from] tokio::task::JoinError),
}

struct Sub {
    subject: String,
    handler: Handler,
}

/// Everything waiting to be written, and the state that must change atomically with it.
struct Outbound {
    buf: BytesMut,
    /// One entry per PING sent or queued, oldest first: a flush waiting for its PONG, or `None`
    /// for a keepalive PING. Servers answer PINGs in order, so each PONG pops the front.
    pongs: VecDeque<Option<oneshot::Sender<()>>>,
    /// How many of the `pongs` PINGs are still in `buf`, i.e. survive a disconnect.
    unsent_pings: usize,
    connected: bool,
    closed: bool,
}

struct Inner {
    /// Lock order: `subs` before `out`, so a subscription is in exactly one of "re-sent on
    /// reconnect" and "SUB queued after it".
    subs: Mutex<HashMap<u64, Sub>>,
    out: Mutex<Outbound>,
    /// Wakes the writer: something was appended to `out.buf`.
    writable: Notify,
    max_payload: AtomicUsize,
    next_sid: AtomicU64,
    events: broadcast::Sender<Event>,
    /// Cancelled when the last [`Client`] is dropped.
    shutdown: CancellationToken,
    reconnect_buffer: usize,
    /// The cluster's client URLs from the latest INFO, added to the servers to reconnect to.
    discovered: Mutex<Vec<String>>,
}

/// Cancels the connection when the last [`Client`] clone goes away. Kept apart from `Inner`,
/// which the supervisor task and subscriptions also hold.
struct Owner(CancellationToken);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A handle to the NATS connection; cheap to clone. The connection closes when the last clone
/// is dropped (after sending what was already published).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    _owner: Arc<Owner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("connected", &self.is_connected()).finish_non_exhaustive()
    }
}

/// A live subscription; dropping it unsubscribes (UNSUB), after which its handler is not called
/// again (except for a call already running on the reader task).
#[derive(Debug)]
pub struct Subscription {
    inner: Arc<Inner>,
    sid: u64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").finish_non_exhaustive()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let inner = &self.inner;
        let mut subs = inner.subs.lock();
        if subs.remove(&self.sid).is_none() {
            return;
        }
        let mut out = inner.out.lock();
        // Queued even while disconnected: its SUB may still be in the buffer, and an UNSUB for
        // a sid the server does not know is ignored.
        if !out.closed {
            proto::encode_unsub(&mut out.buf, self.sid);
            drop(out);
            drop(subs);
            inner.writable.notify_one();
        }
    }
}

impl Client {
    /// Connects to the first reachable server of `opts.url`, retrying with backoff (0, 100 ms,
    /// 200 ms, ... 2 s) for as long as the caller awaits: the gateway may start before NATS.
    /// Errors are configuration errors only (URL, credentials, TLS files).
    ///
    /// The receiver gets [`Event::Connected`] first, then every later connection event.
    pub async fn connect(opts: Options) -> Result<(Client, broadcast::Receiver<Event>), ConnectError> {
        let mut dialer = Dialer::new(&opts)?;
        let (events, events_rx) = broadcast::channel(64);
        let inner = Arc::new(Inner {
            subs: Mutex::new(HashMap::new()),
            out: Mutex::new(Outbound {
                buf: BytesMut::new(),
                pongs: VecDeque::new(),
                unsent_pings: 0,
                connected: false,
                closed: false,
            }),
            writable: Notify::new(),
            max_payload: AtomicUsize::new(0),
            next_sid: AtomicU64::new(1),
            events,
            shutdown: CancellationToken::new(),
            reconnect_buffer: opts.reconnect_buffer,
            discovered: Mutex::new(Vec::new()),
        });
        let conn = dialer.connect_with_backoff().await;
        tracing::info!(server = %conn.server, version = %conn.info.version, "connected to NATS");
        inner.activate(&conn.info);
        let _ = inner.events.send(Event::Connected);
        tokio::spawn(supervise(inner.clone(), dialer, conn));
        let owner = Arc::new(Owner(inner.shutdown.clone()));
        Ok((Client { inner, _owner: owner }, events_rx))
    }

    /// Subscribes `handler` to `subject` (wildcards allowed).
    ///
    /// **Ordering:** one reader task per connection parses the socket and calls the handler of
    /// each message inline, synchronously, before parsing the next one. So handlers of *all*
    /// subscriptions see messages in exactly the order the server sent them, e.g. an event
    /// published just before a reply is handled before the reply. The flip side: a handler must
    /// be quick and must never block (it stalls every subscription); hand work off with
    /// `try_send` into a channel. It may publish, subscribe or drop subscriptions. A panic is
    /// caught and logged, and that message is lost.
    ///
    /// A handler that owns a [`Client`] keeps the connection open until its subscription is
    /// dropped; hold a [`Client`] elsewhere and drop the subscription to close.
    ///
    /// The subscription survives reconnects (it is re-sent) and ends when the returned
    /// [`Subscription`] is dropped.
    pub fn subscribe(&self, subject: &str, handler: Handler) -> Result<Subscription, Error> {
        if !proto::valid_subject(subject, true) {
            return Err(Error::InvalidSubject(subject.to_owned()));
        }
        if subject.len() + CONTROL_LINE_OVERHEAD > MAX_CONTROL_LINE {
            return Err(Error::SubjectTooLong { len: subject.len() });
        }
        let inner = &self.inner;
        let sid = inner.next_sid.fetch_add(1, Ordering::Relaxed);
        let mut subs = inner.subs.lock();
        let mut out = inner.out.lock();
        if out.closed {
            return Err(Error::Closed);
        }
        subs.insert(sid, Sub { subject: subject.to_owned(), handler });
        // While disconnected, the reconnect sends it with every other live subscription.
        if out.connected {
            proto::encode_sub(&mut out.buf, subject, sid);
            drop(out);
            drop(subs);
            inner.writable.notify_one();
        }
        Ok(Subscription { inner: inner.clone(), sid })
    }

    /// Publishes a message. It never waits: the message is appended to the write buffer that the
    /// writer task sends (in order with subscriptions and other publications); use
    /// [`Client::flush`] to know it reached the server.
    ///
    /// While disconnected, messages are kept (up to [`Options::reconnect_buffer`] bytes) and
    /// sent after reconnecting.
    pub fn publish(
        &self,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&Headers>,
        payload: Bytes,
    ) -> Result<(), Error> {
        if !proto::valid_subject(subject, false) {
            return Err(Error::InvalidSubject(subject.to_owned()));
        }
        if let Some(reply) = reply.filter(|r| !proto::valid_subject(r, false)) {
            return Err(Error::InvalidSubject(reply.to_owned()));
        }
        let len = subject.len() + reply.map_or(0, str::len);
        if len + CONTROL_LINE_OVERHEAD > MAX_CONTROL_LINE {
            return Err(Error::SubjectTooLong { len });
        }
        let headers = headers.map(proto::encode_headers).transpose().map_err(Error::InvalidHeader)?;
        let size = payload.len() + headers.as_ref().map_or(0, Bytes::len);
        let max = self.max_payload();
        if size > max {
            return Err(Error::PayloadTooLarge { size, max });
        }
        let inner = &self.inner;
        let mut out = inner.out.lock();
        if out.closed {
            return Err(Error::Closed);
        }
        if !out.connected && out.buf.len() + size > inner.reconnect_buffer {
            return Err(Error::BufferFull { limit: inner.reconnect_buffer });
        }
        proto::encode_pub(&mut out.buf, subject, reply, headers.as_deref(), &payload);
        drop(out);
        inner.writable.notify_one();
        Ok(())
    }

    /// A unique subject under `_INBOX.` for replies.
    pub fn new_inbox(&self) -> String {
        let id: String = rand::rng().sample_iter(rand::distr::Alphanumeric).take(22).map(char::from).collect();
        format!("_INBOX.{id}")
    }

    /// Waits until everything published (and subscribed) before has reached the server, by a
    /// PING/PONG round trip. Fails if the connection is or gets lost before the PONG.
    pub async fn flush(&self) -> Result<(), Error> {
        let inner = &self.inner;
        let pong = {
            let mut out = inner.out.lock();
            if out.closed {
                return Err(Error::Closed);
            }
            if !out.connected {
                return Err(Error::Disconnected);
            }
            let (tx, rx) = oneshot::channel();
            out.queue_ping(Some(tx));
            rx
        };
        inner.writable.notify_one();
        pong.await.map_err(|_| if inner.out.lock().closed { Error::Closed } else { Error::Disconnected })
    }

    /// The largest message (payload plus headers) the server accepts.
    pub fn max_payload(&self) -> usize {
        self.inner.max_payload.load(Ordering::Relaxed)
    }

    /// Whether the connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.inner.out.lock().connected
    }
}

impl Outbound {
    fn queue_ping(&mut self, waiter: Option<oneshot::Sender<()>>) {
        self.buf.put_slice(b"PING\r\n");
        self.pongs.push_back(waiter);
        self.unsent_pings += 1;
    }
}

impl Inner {
    /// A connection is up: re-send every live subscription ahead of whatever was buffered
    /// while disconnected (a request buffered then needs its reply subscription first).
    ///
    /// A SUB still in the buffer from before the loss is then sent twice; nats-server ignores a
    /// SUB for a sid it already has, so that costs nothing.
    fn activate(&self, info: &ServerInfo) {
        self.update_info(info);
        let subs = self.subs.lock();
        let mut out = self.out.lock();
        let mut buf = BytesMut::with_capacity(subs.len() * 48 + out.buf.len());
        let mut sids: Vec<u64> = subs.keys().copied().collect();
        sids.sort_unstable();
        for sid in sids {
            proto::encode_sub(&mut buf, &subs[&sid].subject, sid);
        }
        buf.put_slice(&out.buf);
        out.buf = buf;
        out.connected = true;
        drop(out);
        drop(subs);
        self.writable.notify_one();
    }

    /// Takes in what an INFO (at connect or later, as servers join the cluster) tells us.
    fn update_info(&self, info: &ServerInfo) {
        // Every INFO carries max_payload; zero would only mean a server that did not say.
        if info.max_payload > 0 {
            self.max_payload.store(info.max_payload, Ordering::Relaxed);
        }
        if !info.connect_urls.is_empty() {
            self.discovered.lock().clone_from(&info.connect_urls);
        }
    }

    /// The connection is gone: flushes whose PING went out with it fail; PINGs still in the
    /// buffer go out on the next connection and keep their waiters.
    fn deactivate(&self) {
        let mut out = self.out.lock();
        out.connected = false;
        let sent = out.pongs.len().saturating_sub(out.unsent_pings);
        out.pongs.drain(..sent);
    }

    /// The client is closed for good: drop handlers (they may hold clients) and waiters.
    fn close(&self) {
        let mut subs = self.subs.lock();
        let mut out = self.out.lock();
        out.closed = true;
        out.connected = false;
        out.pongs.clear();
        out.buf = BytesMut::new();
        drop(out);
        subs.clear();
    }

    /// Handles one operation from the server; an error ends the connection.
    fn handle(&self, op: ServerOp, pings_out: &mut u32) -> Result<(), ConnError> {
        match op {
            ServerOp::Msg { sid, message } => {
                // Clone the handler out so it runs without the lock: it may (un)subscribe.
                let handler = self.subs.lock().get(&sid).map(|s| s.handler.clone());
                match handler {
                    // A panicking handler must not take the reader, and with it every other
                    // subscription, down with it.
                    Some(handler) => {
                        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(message))).is_err() {
                            tracing::error!(sid, "a NATS subscription handler panicked; message dropped");
                        }
                    }
                    None => tracing::trace!(sid, subject = %message.subject, "message for an ended subscription"),
                }
            }
            ServerOp::Ping => {
                self.out.lock().buf.put_slice(b"PONG\r\n");
                self.writable.notify_one();
            }
            ServerOp::Pong => {
                *pings_out = 0;
                if let Some(Some(waiter)) = self.out.lock().pongs.pop_front() {
                    let _ = waiter.send(());
                }
            }
            ServerOp::Ok => {}
            ServerOp::Err(e) => {
                let _ = self.events.send(Event::ServerError(e.clone()));
                // The server keeps the connection after a permissions violation; after any
                // other -ERR it closes it, so reconnect rather than wait for the EOF.
                if e.to_ascii_lowercase().contains("permissions violation") {
                    tracing::warn!(error = %e, "NATS server error");
                } else {
                    return Err(ConnError::Server(e));
                }
            }
            ServerOp::Info(info) => {
                self.update_info(&info);
                if info.ldm {
                    tracing::warn!(server_id = %info.server_id, "NATS server entered lame duck mode");
                    let _ = self.events.send(Event::LameDuck);
                }
            }
        }
        Ok(())
    }
}

/// A connection that completed the CONNECT handshake.
struct Established {
    stream: Stream,
    /// Bytes read past the handshake's PONG.
    buf: BytesMut,
    info: ServerInfo,
    /// `host:port`, for logs.
    server: String,
}

/// Makes connections: the settings of every attempt and the rotation through the servers.
struct Dialer {
    servers: Vec<ServerAddr>,
    next: usize,
    name: String,
    creds: Option<Creds>,
    tls: Arc<ClientConfig>,
    no_echo: bool,
    ping_interval: Duration,
    connect_timeout: Duration,
}

impl Dialer {
    fn new(opts: &Options) -> Result<Dialer, ConnectError> {
        Ok(Dialer {
            servers: parse_urls(&opts.url)?,
            next: 0,
            name: opts.name.clone(),
            creds: opts.creds.as_deref().map(Creds::load).transpose()?,
            tls: crate::tls::client_config(opts)?,
            no_echo: opts.no_echo,
            ping_interval: opts.ping_interval,
            connect_timeout: opts.connect_timeout,
        })
    }

    /// Adds the cluster's other servers (`host:port` from INFO `connect_urls`) to the rotation,
    /// with the TLS choice and URL credentials of the first configured server.
    fn add_discovered(&mut self, urls: &[String]) {
        let template = self.servers[0].clone();
        for url in urls {
            let Ok(found) = parse_urls(url) else {
                tracing::debug!(%url, "ignoring an unparsable connect_url");
                continue;
            };
            for addr in found {
                if !self.servers.iter().any(|s| s.host == addr.host && s.port == addr.port) {
                    tracing::debug!(server = %addr.display(), "discovered a NATS server");
                    self.servers.push(ServerAddr { tls: template.tls, auth: template.auth.clone(), ..addr });
                }
            }
        }
    }

    /// Tries the servers in turn with growing delays until one accepts; the caller bounds it
    /// by dropping the future.
    async fn connect_with_backoff(&mut self) -> Established {
        let mut delay = Duration::ZERO;
        loop {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).clamp(BACKOFF_START, BACKOFF_MAX);
            let addr = self.servers[self.next % self.servers.len()].clone();
            self.next = self.next.wrapping_add(1);
            let attempt = tokio::time::timeout(self.connect_timeout, self.attempt(&addr)).await;
            match attempt.unwrap_or(Err(ConnError::Timeout(self.connect_timeout))) {
                Ok(conn) => return conn,
                Err(error) => {
                    tracing::warn!(server = %addr.display(), %error, ?delay, "connecting to NATS failed; retrying")
                }
            }
        }
    }

    /// One connection attempt: INFO, TLS if wanted, CONNECT + PING, and the PONG that says the
    /// server accepted us (or the -ERR that says why not).
    async fn attempt(&self, addr: &ServerAddr) -> Result<Established, ConnError> {
        let tcp = TcpStream::connect((addr.host.as_str(), addr.port)).await?;
        tcp.set_nodelay(true)?;
        let mut tcp: Stream = Box::new(tcp);
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let ServerOp::Info(info) = read_op(&mut tcp, &mut buf).await? else {
            return Err(ConnError::Handshake("operation before INFO"));
        };
        let mut info = *info;
        let tls = addr.tls || info.tls_required;
        let mut stream: Stream = if tls {
            let name = ServerName::try_from(addr.host.clone()).map_err(|_| ConnError::ServerName(addr.host.clone()))?;
            Box::new(TlsConnector::from(self.tls.clone()).connect(name, tcp).await?)
        } else {
            tcp
        };
        let (user, pass, auth_token) = match &addr.auth {
            Some(UrlAuth::UserPass { user, pass }) => (Some(user.as_str()), Some(pass.as_str()), None),
            Some(UrlAuth::Token(token)) => (None, None, Some(token.as_str())),
            None => (None, None, None),
        };
        let connect = proto::Connect {
            verbose: false,
            pedantic: false,
            tls_required: tls,
            name: &self.name,
            lang: "rust",
            version: env!("CARGO_PKG_VERSION"),
            protocol: 1,
            echo: !self.no_echo,
            headers: true,
            no_responders: true,
            user,
            pass,
            auth_token,
            jwt: self.creds.as_ref().map(|c| c.jwt.as_str()),
            sig: self.creds.as_ref().zip(info.nonce.as_deref()).map(|(c, nonce)| c.sign(nonce)),
        };
        let mut out = BytesMut::new();
        proto::encode_connect(&mut out, &connect);
        stream.write_all(&out).await?;
        stream.flush().await?;
        loop {
            match read_op(&mut stream, &mut buf).await? {
                ServerOp::Pong => break,
                ServerOp::Ok => {}
                ServerOp::Err(e) => return Err(ConnError::Server(e)),
                ServerOp::Ping => stream.write_all(b"PONG\r\n").await?,
                ServerOp::Info(newer) => info = *newer,
                ServerOp::Msg { .. } => return Err(ConnError::Handshake("message")),
            }
        }
        Ok(Established { stream, buf, info, server: addr.display() })
    }
}

/// Reads until one whole operation is parsed.
async fn read_op(stream: &mut Stream, buf: &mut BytesMut) -> Result<ServerOp, ConnError> {
    loop {
        if let Some(op) = proto::parse(buf)? {
            return Ok(op);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(ConnError::Eof);
        }
    }
}

/// The client's life: serve the connection, reconnect when it breaks, until closed.
async fn supervise(inner: Arc<Inner>, mut dialer: Dialer, mut conn: Established) {
    loop {
        let server = conn.server.clone();
        let result = serve(&inner, dialer.ping_interval, conn).await;
        inner.deactivate();
        let error = match result {
            Ok(()) => break,
            Err(e) => e,
        };
        tracing::warn!(%server, %error, "lost the NATS connection; reconnecting");
        dialer.add_discovered(&inner.discovered.lock());
        let _ = inner.events.send(Event::Disconnected);
        conn = tokio::select! {
            c = dialer.connect_with_backoff() => c,
            () = inner.shutdown.cancelled() => break,
        };
        tracing::info!(server = %conn.server, "reconnected to NATS");
        inner.activate(&conn.info);
        let _ = inner.events.send(Event::Reconnected);
    }
    inner.close();
}

/// Reads, dispatches and keeps one connection alive until it fails (`Err`) or the client is
/// closed (`Ok`).
async fn serve(inner: &Arc<Inner>, ping_interval: Duration, conn: Established) -> Result<(), ConnError> {
    let Established { stream, mut buf, .. } = conn;
    let (mut reader, writer) = tokio::io::split(stream);
    let mut writer = tokio::spawn(write_loop(inner.clone(), writer));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pings_out = 0;
    let result = 'conn: loop {
        loop {
            match proto::parse(&mut buf) {
                Ok(Some(op)) => {
                    if let Err(e) = inner.handle(op, &mut pings_out) {
                        break 'conn Err(e);
                    }
                }
                Ok(None) => break,
                Err(e) => break 'conn Err(e.into()),
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            () = inner.shutdown.cancelled() => break Ok(()),
            read = reader.read_buf(&mut buf) => match read {
                Ok(0) => break Err(ConnError::Eof),
                Ok(_) => {}
                Err(e) => break Err(e.into()),
            },
            _ = ping.tick() => {
                if pings_out >= MAX_PINGS_OUT {
                    break Err(ConnError::Stale);
                }
                pings_out += 1;
                inner.out.lock().queue_ping(None);
                inner.writable.notify_one();
            }
            written = &mut writer => break Err(match written {
                Ok(Ok(())) => ConnError::Eof,
                Ok(Err(e)) => e,
                Err(e) => e.into(),
            }),
        }
    };
    match result {
        // Closing: the writer sends what is buffered, then shuts the socket down.
        Ok(()) => {
            let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, &mut writer).await;
            writer.abort();
        }
        Err(_) => writer.abort(),
    }
    result
}

/// Sends the whole write buffer per wake-up: one syscall for many messages under load.
async fn write_loop(inner: Arc<Inner>, mut writer: WriteHalf<Stream>) -> Result<(), ConnError> {
    let mut chunk = BytesMut::new();
    loop {
        let closing = tokio::select! {
            () = inner.writable.notified() => false,
            () = inner.shutdown.cancelled() => true,
        };
        {
            let mut out = inner.out.lock();
            std::mem::swap(&mut out.buf, &mut chunk);
            out.unsent_pings = 0;
        }
        if !chunk.is_empty() {
            writer.write_all(&chunk).await?;
            writer.flush().await?;
            chunk.clear();
            if chunk.capacity() > KEEP_WRITE_CAPACITY {
                chunk = BytesMut::new();
            }
        }
        if closing {
            let _ = writer.shutdown().await;
            return Ok(());
        }
    }
}
