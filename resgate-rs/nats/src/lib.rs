//! A small NATS client for the gateway.
//!
//! Why not `async-nats`: it hands each subscription its own channel, read by different tasks, so
//! the order of messages *between* subscriptions is lost. The gateway needs that order (an
//! `event.<rid>.*` published by a service before its reply to `get.<rid>` must be seen before the
//! reply), as Resgate gets it from nats.go reading every subscription through one channel.
//!
//! Here one reader task per connection parses the socket and calls each message's subscription
//! handler inline, in wire order; publishing only appends to a buffer that one writer task
//! flushes per wake-up. See [`Client::subscribe`].

mod addr;
mod auth;
mod client;
mod proto;
mod tls;

pub use client::{Client, Subscription};
pub use proto::ProtocolError;

use bytes::Bytes;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A subscription's message handler, called on the connection's reader task.
pub type Handler = Arc<dyn Fn(Message) + Send + Sync>;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// `nats://`, `tls://` (TLS required) or bare `host:port` URLs, comma-separated for several
    /// servers (tried in turn). `user:pass@` or `token@` in a URL authenticates with it.
    pub url: String,
    /// The connection name shown by the server's monitoring.
    pub name: String,
    /// A `.creds` file (user JWT and nkey seed); the server's nonce is signed with the seed.
    pub creds: Option<PathBuf>,
    /// A client certificate chain and its private key (PEM), for servers that verify clients.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// PEM files with CA certificates trusted in addition to the public web PKI roots.
    pub root_cas: Vec<PathBuf>,
    /// Do not receive our own publications on our subscriptions.
    pub no_echo: bool,
    /// How often the client pings the server; two unanswered pings mean a dead connection.
    pub ping_interval: Duration,
    /// The limit for one connection attempt (TCP, TLS and the CONNECT handshake).
    pub connect_timeout: Duration,
    /// How many bytes of publications and subscriptions are kept while disconnected; past it,
    /// [`Client::publish`] fails with [`Error::BufferFull`].
    pub reconnect_buffer: usize,
}

impl Options {
    /// Options for `url` with the defaults: 2 min pings, 2 s connect timeout, 8 MiB buffer.
    pub fn new(url: impl Into<String>) -> Options {
        Options {
            url: url.into(),
            name: String::new(),
            creds: None,
            client_cert: None,
            root_cas: Vec::new(),
            no_echo: false,
            ping_interval: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(2),
            reconnect_buffer: 8 << 20,
        }
    }
}

/// A message received on a subscription.
#[derive(Debug, Clone)]
pub struct Message {
    pub subject: Arc<str>,
    pub reply: Option<Arc<str>>,
    /// The headers of an HMSG, if it had any besides the status line.
    pub headers: Option<Headers>,
    /// The status code of a status message, e.g. 503 for "no responders" to a request.
    pub status: Option<u16>,
    /// The text after the status code ("No Responders"), if any.
    pub description: Option<String>,
    pub payload: Bytes,
}

/// NATS message headers: an ordered list of name/value pairs where a name may repeat.
/// Names are compared exactly (case-sensitive), as nats-server and nats.go do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Adds a value, keeping earlier values of the same name.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.entries.push((name.into(), value.into()));
    }

    /// Sets the only value of `name`, replacing earlier ones.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        self.entries.retain(|(n, _)| *n != name);
        self.entries.push((name, value.into()));
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Every name/value pair, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// How many name/value pairs there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What happened to the connection, broadcast to every receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The first connection is up.
    Connected,
    /// The connection was lost; the client is reconnecting. Messages may be missed until
    /// [`Event::Reconnected`].
    Disconnected,
    /// Connected again, with CONNECT and every live subscription re-sent.
    Reconnected,
    /// The server sent `-ERR` (e.g. a permissions violation, which keeps the connection).
    ServerError(String),
    /// The server entered lame duck mode and will close the connection soon.
    LameDuck,
}

/// Why [`Client::connect`] gave up. Unreachable servers are not an error: it retries.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid NATS URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid credentials file {path}: {reason}")]
    Credentials { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid subject {0:?}")]
    InvalidSubject(String),
    #[error("subjects of {len} bytes do not fit in a NATS protocol line")]
    SubjectTooLong { len: usize },
    #[error("invalid header: {0}")]
    InvalidHeader(&'static str),
    #[error("message of {size} bytes exceeds the server's max_payload of {max} bytes")]
    PayloadTooLarge { size: usize, max: usize },
    #[error("disconnected from NATS and the {limit} byte reconnect buffer is full")]
    BufferFull { limit: usize },
    #[error("disconnected from NATS")]
    Disconnected,
    #[error("the NATS client is closed")]
    Closed,
}
