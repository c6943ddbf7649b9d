//! Receive loops for set-up clients: plain threads, each polling its share of the sockets with
//! mio, instead of one tokio task per client.
//!
//! At a gateway's maximum the tool shares the machine's two cores with it; its one client thread
//! was runnable all the time there (waiting for a core a fifth of it), so the tool, not the
//! gateway, set where the latency bound broke. A task per client costs a task wake-up, a
//! scheduler pass and a readiness registration per message; here a readable socket costs one read
//! and the frame parse. A read that fills less than the room offered drained the socket (TCP
//! returns what is queued), so no read is spent on `WouldBlock`: mio's edge-triggered readiness
//! reports the next arrival.

use crate::ws::{FrameBuf, Next, push_frame};
use anyhow::{Context, Result};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// What a receive loop tells a client's owner.
pub trait Receive: Send + 'static {
    /// A text or binary message's payload.
    fn message(&mut self, payload: &[u8]);
    /// The connection ended before the stop: close frame, end of stream, or a read, write or
    /// framing error.
    fn ended(&mut self);
}

type Adopted = (std::net::TcpStream, Box<dyn Receive>);

const WAKE: Token = Token(usize::MAX);

/// The receive threads.
pub struct Receivers {
    adopter: Adopter,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

/// Hands set-up clients to the receive threads: client `i` goes to thread `i % count`.
#[derive(Clone)]
pub struct Adopter {
    lanes: Arc<[(mpsc::Sender<Adopted>, Arc<Waker>)]>,
}

impl Receivers {
    pub fn start(count: usize) -> Result<Receivers> {
        let stop = Arc::new(AtomicBool::new(false));
        let (mut lanes, mut threads) = (Vec::new(), Vec::new());
        for k in 0..count.max(1) {
            let poll = Poll::new().context("mio poll")?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKE).context("mio waker")?);
            let (adopt, adopted) = mpsc::channel();
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("resbench-recv-{k}"))
                    .spawn(move || Loop { poll, adopted, conns: Vec::new(), free: Vec::new() }.run(&stop))
                    .context("spawn a receive thread")?,
            );
            lanes.push((adopt, waker));
        }
        Ok(Receivers { adopter: Adopter { lanes: lanes.into() }, threads, stop })
    }

    pub fn adopter(&self) -> Adopter {
        self.adopter.clone()
    }

    /// Stops the loops: each sends a close frame on the connections it still holds (without
    /// waiting), and drops them.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for (_, waker) in self.adopter.lanes.iter() {
            let _ = waker.wake();
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

impl Adopter {
    /// Takes over client `i`'s socket, set up and in the WebSocket's open state.
    pub fn adopt(&self, i: usize, stream: tokio::net::TcpStream, client: Box<dyn Receive>) -> Result<()> {
        let stream = stream.into_std().context("take the socket from tokio")?;
        let (adopt, waker) = &self.lanes[i % self.lanes.len()];
        adopt.send((stream, client)).map_err(|_| anyhow::anyhow!("the receive thread has stopped"))?;
        waker.wake().context("wake the receive thread")
    }
}

struct Conn {
    stream: TcpStream,
    frames: FrameBuf,
    client: Box<dyn Receive>,
}

struct Loop {
    poll: Poll,
    adopted: mpsc::Receiver<Adopted>,
    /// Slot `k` is token `k`; `free` lists empty slots.
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
}

impl Loop {
    fn run(mut self, stop: &AtomicBool) {
        let mut events = Events::with_capacity(1024);
        while !stop.load(Ordering::Acquire) {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                eprintln!("resbench: receive loop stopped: {e}");
                break;
            }
            for ev in &events {
                match ev.token() {
                    WAKE => self.adopt_new(),
                    Token(k) => {
                        if !self.serve(k, ev.is_writable()) {
                            self.end(k);
                        }
                    }
                }
            }
        }
        for conn in self.conns.iter_mut().flatten() {
            let mut close = Vec::with_capacity(6);
            push_frame(&mut close, 0x88, Some(rand::random()), &[]);
            let _ = conn.stream.write(&close);
        }
    }

    fn adopt_new(&mut self) {
        while let Ok((stream, mut client)) = self.adopted.try_recv() {
            let mut stream = TcpStream::from_std(stream);
            let k = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            if self.poll.registry().register(&mut stream, Token(k), Interest::READABLE).is_err() {
                client.ended();
                self.free.push(k);
                continue;
            }
            // Registering a socket that already holds bytes reports it readable at once.
            self.conns[k] = Some(Conn { stream, frames: FrameBuf::default(), client });
        }
    }

    /// Reads what is there and hands out its messages; false when the connection has ended.
    fn serve(&mut self, k: usize, writable: bool) -> bool {
        let Some(conn) = self.conns[k].as_mut() else { return true };
        if writable && !conn.flush(self.poll.registry(), k) {
            return false;
        }
        loop {
            let room = conn.frames.room();
            let offered = room.len();
            match conn.stream.read(room) {
                Ok(0) => return false,
                Ok(got) => {
                    conn.frames.filled(got);
                    if !conn.hand_out() {
                        return false;
                    }
                    if !conn.frames.unsent().is_empty() && !conn.flush(self.poll.registry(), k) {
                        return false;
                    }
                    if got < offered {
                        return true;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    fn end(&mut self, k: usize) {
        if let Some(mut conn) = self.conns[k].take() {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            conn.client.ended();
            self.free.push(k);
        }
    }
}

impl Conn {
    /// Hands the client every whole message buffered; false at a close frame or broken framing.
    fn hand_out(&mut self) -> bool {
        loop {
            match self.frames.next() {
                Ok(Next::Message(payload)) => self.client.message(payload),
                Ok(Next::More) => return true,
                Ok(Next::Closed) | Err(_) => return false,
            }
        }
    }

    /// Writes the parser's unsent frames, asking for writability while some are left; false on
    /// a write error.
    fn flush(&mut self, registry: &mio::Registry, k: usize) -> bool {
        let out = self.frames.unsent();
        while !out.is_empty() {
            match self.stream.write(out) {
                Ok(0) => return false,
                Ok(n) => {
                    out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        let interest = if out.is_empty() { Interest::READABLE } else { Interest::READABLE | Interest::WRITABLE };
        registry.reregister(&mut self.stream, Token(k), interest).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::tests::server_frame;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Debug, PartialEq)]
    enum Got {
        Message(Vec<u8>),
        Ended,
    }

    struct Tell(mpsc::Sender<Got>);

    impl Receive for Tell {
        fn message(&mut self, payload: &[u8]) {
            let _ = self.0.send(Got::Message(payload.to_vec()));
        }
        fn ended(&mut self) {
            let _ = self.0.send(Got::Ended);
        }
    }

    /// A client socket adopted by `receivers` as client `i`, and the server's end of it.
    async fn adopted(receivers: &Receivers, i: usize) -> (mpsc::Receiver<Got>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (tx, rx) = mpsc::channel();
        receivers.adopter().adopt(i, client, Box::new(Tell(tx))).unwrap();
        (rx, server)
    }

    fn next(rx: &mpsc::Receiver<Got>) -> Got {
        rx.recv_timeout(Duration::from_secs(10)).expect("the receive loop reported nothing in 10 s")
    }

    #[tokio::test]
    async fn the_loop_delivers_answers_pings_reports_the_end_and_closes_at_stop() {
        let receivers = Receivers::start(2).unwrap();
        let (rx0, mut server0) = adopted(&receivers, 0).await;
        let (rx1, mut server1) = adopted(&receivers, 1).await;

        // Messages split over writes, some bigger than a read's room; a ping between them.
        let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut wire = server_frame(true, 1, b"first", None);
        wire.extend(server_frame(true, 9, b"ping?", None));
        wire.extend(server_frame(true, 2, &big, None));
        for part in wire.chunks(7000) {
            server0.write_all(part).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(next(&rx0), Got::Message(b"first".to_vec()));
        assert_eq!(next(&rx0), Got::Message(big));
        let mut pong = [0u8; 11];
        server0.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong[..2], &[0x8A, 0x80 | 5]);

        // End of stream ends client 0 only.
        drop(server0);
        assert_eq!(next(&rx0), Got::Ended);
        server1.write_all(&server_frame(true, 1, b"still here", None)).await.unwrap();
        assert_eq!(next(&rx1), Got::Message(b"still here".to_vec()));

        // The stop closes what is left with a close frame, and reports no end.
        tokio::task::spawn_blocking(move || receivers.stop()).await.unwrap();
        let mut rest = Vec::new();
        server1.read_to_end(&mut rest).await.unwrap();
        assert_eq!(&rest[..2], &[0x88, 0x80]);
        assert!(rx1.try_recv().is_err());
    }

    #[tokio::test]
    async fn broken_framing_ends_the_client() {
        let receivers = Receivers::start(1).unwrap();
        let (rx, mut server) = adopted(&receivers, 0).await;
        server.write_all(&server_frame(true, 3, b"x", None)).await.unwrap();
        assert_eq!(next(&rx), Got::Ended);
        // The loop closed the socket.
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        tokio::task::spawn_blocking(move || receivers.stop()).await.unwrap();
    }
}
