//! The server side of WebSocket framing (RFC 6455) on an upgraded connection.
//!
//! The gateway holds many mostly idle connections, so a connection holds no buffer while it
//! waits: reads go into a per-thread scratch buffer and only the bytes of an unfinished frame are
//! kept (usually none); writes encode a batch of frames into one buffer, written with one
//! syscall and freed once written. A general-purpose WebSocket library keeps a read buffer per
//! connection for its lifetime (and zero-fills it before every read), and writes frame by frame.
//! No extensions are negotiated (the upgrade answers without any), so RSV bits are errors.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Close codes the gateway sends.
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_AWAY: u16 = 1001;
pub const CLOSE_PROTOCOL: u16 = 1002;
pub const CLOSE_INVALID_PAYLOAD: u16 = 1007;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_AGAIN: u16 = 1013;

/// Bytes one read takes at most; a bigger frame arrives over several reads.
const SCRATCH: usize = 16 * 1024;

thread_local! {
    static READ_SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH]);
}

/// A message (or control frame) from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    Text(&'a [u8]),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong,
    /// The close code the client gave, if any.
    Close(Option<u16>),
}

/// Why a connection's input cannot go on; each maps to the close code to answer with.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// A frame or message over the size limit.
    TooBig(usize),
    /// A framing violation.
    Protocol(&'static str),
}

impl ReadError {
    pub fn close_code(&self) -> u16 {
        match self {
            ReadError::TooBig(_) => CLOSE_TOO_BIG,
            ReadError::Protocol(_) => CLOSE_PROTOCOL,
        }
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::TooBig(n) => write!(f, "message of {n} bytes over the limit"),
            ReadError::Protocol(what) => write!(f, "protocol error: {what}"),
        }
    }
}

/// Parses client frames out of received bytes.
pub struct Decoder {
    /// Received bytes not yet consumed: at most one unfinished frame, after `parse`.
    buf: Vec<u8>,
    /// The opcode and payload so far of a fragmented message.
    fragments: Option<(u8, Vec<u8>)>,
    max_message: usize,
}

impl Decoder {
    pub fn new(max_message: usize) -> Decoder {
        Decoder { buf: Vec::new(), fragments: None, max_message }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Hands every complete message to `each`, which returns whether to go on. Bytes of an
    /// unfinished frame stay for the next call; when none stay, the buffer is released.
    pub fn parse(&mut self, mut each: impl FnMut(Incoming<'_>) -> bool) -> Result<(), ReadError> {
        let mut at = 0;
        let result = loop {
            match self.next_frame(at) {
                Ok(None) => break Ok(()),
                Ok(Some((next, go_on))) => {
                    let (fin, opcode, start) = go_on;
                    at = next;
                    let payload_range = start..next;
                    if !self.deliver(fin, opcode, payload_range, &mut each)? {
                        break Ok(());
                    }
                }
                Err(e) => break Err(e),
            }
        };
        if at >= self.buf.len() {
            // Idle connections keep no buffer.
            self.buf = Vec::new();
        } else if at > 0 {
            self.buf.drain(..at);
        }
        result
    }

    /// Unmasks the frame at `at` if it is complete: `Some((end, (fin, opcode, payload start)))`.
    #[allow(clippy::type_complexity)]
    fn next_frame(&mut self, at: usize) -> Result<Option<(usize, (bool, u8, usize))>, ReadError> {
        let b = &self.buf[at..];
        if b.len() < 2 {
            return Ok(None);
        }
        let (fin, rsv, opcode) = (b[0] & 0x80 != 0, b[0] & 0x70, b[0] & 0x0F);
        let (masked, len7) = (b[1] & 0x80 != 0, b[1] & 0x7F);
        if rsv != 0 {
            return Err(ReadError::Protocol("reserved bits set"));
        }
        if !masked {
            return Err(ReadError::Protocol("client frame not masked"));
        }
        let (len, header) = match len7 {
            126 if b.len() < 4 => return Ok(None),
            126 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() < 10 => return Ok(None),
            127 => (u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")), 10),
            n => (u64::from(n), 2),
        };
        if opcode >= OP_CLOSE && (len > 125 || !fin) {
            return Err(ReadError::Protocol("control frame fragmented or over 125 bytes"));
        }
        let so_far = self.fragments.as_ref().map_or(0, |(_, p)| p.len() as u64);
        if len + so_far > self.max_message as u64 {
            // Refused on the header, before buffering a payload this size.
            return Err(ReadError::TooBig(usize::try_from(len + so_far).unwrap_or(usize::MAX)));
        }
        let len = len as usize;
        let start = header + 4;
        if b.len() < start + len {
            return Ok(None);
        }
        let mask: [u8; 4] = b[header..start].try_into().expect("4 bytes");
        let payload = &mut self.buf[at + start..at + start + len];
        unmask(payload, mask);
        Ok(Some((at + start + len, (fin, opcode, at + start))))
    }

    fn deliver(
        &mut self,
        fin: bool,
        opcode: u8,
        range: std::ops::Range<usize>,
        each: &mut impl FnMut(Incoming<'_>) -> bool,
    ) -> Result<bool, ReadError> {
        let payload = &self.buf[range];
        match opcode {
            OP_TEXT | OP_BINARY if self.fragments.is_some() => {
                Err(ReadError::Protocol("new message inside a fragmented one"))
            }
            OP_TEXT if fin => Ok(each(Incoming::Text(payload))),
            OP_BINARY if fin => Ok(each(Incoming::Binary(payload))),
            OP_TEXT | OP_BINARY => {
                self.fragments = Some((opcode, payload.to_vec()));
                Ok(true)
            }
            OP_CONTINUATION => {
                let Some((_, so_far)) = self.fragments.as_mut() else {
                    return Err(ReadError::Protocol("continuation without a message"));
                };
                so_far.extend_from_slice(payload);
                if !fin {
                    return Ok(true);
                }
                let (op, message) = self.fragments.take().expect("checked above");
                Ok(each(if op == OP_TEXT { Incoming::Text(&message) } else { Incoming::Binary(&message) }))
            }
            OP_PING => Ok(each(Incoming::Ping(payload))),
            OP_PONG => Ok(each(Incoming::Pong)),
            OP_CLOSE => match payload.len() {
                0 => Ok(each(Incoming::Close(None))),
                1 => Err(ReadError::Protocol("close payload of one byte")),
                _ => Ok(each(Incoming::Close(Some(u16::from_be_bytes([payload[0], payload[1]]))))),
            },
            _ => Err(ReadError::Protocol("unknown opcode")),
        }
    }
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// Appends one unmasked, unfragmented server frame.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Everything due on a connection, in one buffer: the encoded control frames (taken), the
/// text frames (drained) and a ping.
pub fn encode_batch(control: &mut Vec<u8>, frames: &mut Vec<Utf8Bytes>, ping: bool) -> Vec<u8> {
    let len: usize = frames.iter().map(|f| f.len() + 10).sum::<usize>() + control.len() + 2;
    let mut batch = Vec::with_capacity(len);
    batch.append(control);
    for f in frames.drain(..) {
        encode_frame(&mut batch, OP_TEXT, f.as_bytes());
    }
    if ping {
        encode_frame(&mut batch, OP_PING, &[]);
    }
    batch
}

/// A close frame's payload: the code and a reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// One upgraded connection: its socket and the frame decoder.
pub struct WsStream<S> {
    io: S,
    pub decoder: Decoder,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// `read_buf`: bytes the HTTP server read past the upgrade request.
    pub fn new(io: S, max_message: usize, read_buf: &[u8]) -> WsStream<S> {
        let mut decoder = Decoder::new(max_message);
        decoder.extend(read_buf);
        WsStream { io, decoder }
    }

    /// Waits for bytes from the client and adds them to the decoder; `Ok(0)` at end of stream.
    /// Cancel-safe: bytes are taken only in the poll that returns them.
    pub fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        READ_SCRATCH.with_borrow_mut(|scratch| {
            let mut rb = ReadBuf::new(scratch);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
            self.decoder.extend(rb.filled());
            Poll::Ready(Ok(rb.filled().len()))
        })
    }

    pub async fn read(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read(cx)).await
    }

    /// Writes `bytes` (whole encoded frames) and flushes.
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with a fixed key.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn parse_all(d: &mut Decoder) -> Result<Vec<String>, ReadError> {
        let mut got = Vec::new();
        d.parse(|m| {
            got.push(match m {
                Incoming::Text(t) => format!("text:{}", String::from_utf8_lossy(t)),
                Incoming::Binary(b) => format!("binary:{}", b.len()),
                Incoming::Ping(p) => format!("ping:{}", String::from_utf8_lossy(p)),
                Incoming::Pong => "pong".into(),
                Incoming::Close(c) => format!("close:{c:?}"),
            });
            true
        })?;
        Ok(got)
    }

    #[test]
    fn frames_split_anywhere_decode_alike() {
        let mut bytes = client_frame(true, OP_TEXT, br#"{"id":1,"method":"version"}"#);
        bytes.extend(client_frame(true, OP_PING, b"hi"));
        bytes.extend(client_frame(true, OP_TEXT, &vec![b'x'; 300]));
        bytes.extend(client_frame(true, OP_CLOSE, &close_payload(1000, "bye")));
        for split in 0..bytes.len() {
            let mut d = Decoder::new(1 << 20);
            d.extend(&bytes[..split]);
            let mut got = parse_all(&mut d).unwrap();
            d.extend(&bytes[split..]);
            got.extend(parse_all(&mut d).unwrap());
            assert_eq!(got.len(), 4, "split at {split}: {got:?}");
            assert_eq!(got[0], r#"text:{"id":1,"method":"version"}"#);
            assert_eq!(got[1], "ping:hi");
            assert_eq!(got[2], format!("text:{}", "x".repeat(300)));
            assert_eq!(got[3], "close:Some(1000)");
            assert_eq!(d.buf.capacity(), 0, "nothing left over, nothing held");
        }
    }

    #[test]
    fn fragments_join_around_control_frames() {
        let mut d = Decoder::new(1 << 20);
        d.extend(&client_frame(false, OP_TEXT, b"ab"));
        d.extend(&client_frame(true, OP_PING, b""));
        d.extend(&client_frame(false, OP_CONTINUATION, b"cd"));
        d.extend(&client_frame(true, OP_CONTINUATION, b"ef"));
        assert_eq!(parse_all(&mut d).unwrap(), ["ping:", "text:abcdef"]);
    }

    #[test]
    fn violations_are_refused() {
        let refuse = |bytes: Vec<u8>, max: usize| {
            let mut d = Decoder::new(max);
            d.extend(&bytes);
            parse_all(&mut d).unwrap_err()
        };
        let mut unmasked = client_frame(true, OP_TEXT, b"x");
        unmasked[1] &= 0x7F;
        assert_eq!(refuse(unmasked, 100), ReadError::Protocol("client frame not masked"));
        assert_eq!(refuse(client_frame(true, OP_TEXT, &[b'a'; 101]), 100), ReadError::TooBig(101));
        // Refused from the header alone: the 64 KiB payload never arrives.
        let header = client_frame(true, OP_BINARY, &vec![0; 65536])[..14].to_vec();
        assert_eq!(refuse(header, 1000).close_code(), CLOSE_TOO_BIG);
        let mut two = client_frame(false, OP_TEXT, &[b'a'; 60]);
        two.extend(client_frame(true, OP_CONTINUATION, &[b'a'; 60]));
        assert_eq!(refuse(two, 100), ReadError::TooBig(120));
        assert_eq!(refuse(client_frame(true, OP_CONTINUATION, b"x"), 100).close_code(), CLOSE_PROTOCOL);
        assert_eq!(refuse(client_frame(false, OP_PING, b""), 100).close_code(), CLOSE_PROTOCOL);
        assert_eq!(refuse(client_frame(true, 0x3, b""), 100).close_code(), CLOSE_PROTOCOL);
        let mut rsv = client_frame(true, OP_TEXT, b"x");
        rsv[0] |= 0x40;
        assert_eq!(refuse(rsv, 100).close_code(), CLOSE_PROTOCOL);
    }

    #[test]
    fn server_frames_use_the_shortest_length() {
        for (len, header) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let mut out = Vec::new();
            encode_frame(&mut out, OP_TEXT, &vec![b'a'; len]);
            assert_eq!(out.len(), header + len);
            assert_eq!(out[0], 0x81);
        }
    }
}
