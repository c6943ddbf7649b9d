//! The server side of WebSocket framing (RFC 6455) on an upgraded connection.
//!
//! The gateway holds many mostly idle connections, so a connection holds no buffer while it
//! waits: reads go into a per-thread scratch buffer and only the bytes of an unfinished frame are
//! kept (usually none); writes encode a batch of frames into one buffer, written with one
//! syscall and freed once written. A general-purpose WebSocket library keeps a read buffer per
//! connection for its lifetime (and zero-fills it before every read), and writes frame by frame.
//!
//! The one extension is permessage-deflate (RFC 7692), when the gateway runs with
//! `wsCompression` and the client offers it. As Resgate (gorilla/websocket) does, it is agreed
//! without context takeover in both directions, so each message is compressed on its own: the
//! compressor and decompressor are per thread and reset per message, and a connection keeps no
//! compression state (a deflate window per connection would cost more than the whole connection
//! does now).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
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
    // Raw deflate (no zlib header), reset for every message. Level 1, gorilla's default.
    static DEFLATER: RefCell<(Compress, Vec<u8>)> = RefCell::new((Compress::new(Compression::fast(), false), Vec::new()));
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// The `Sec-WebSocket-Extensions` answer when permessage-deflate is agreed.
pub const DEFLATE_RESPONSE: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// Messages shorter than this go out uncompressed (RSV1 clear): deflate makes them longer.
const MIN_COMPRESSED: usize = 64;

/// The four bytes a sync flush ends with, which permessage-deflate leaves out of each message.
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Whether a client's `Sec-WebSocket-Extensions` offers permessage-deflate in a form the gateway
/// can agree to: any offer, unless it limits the server's window below the 32 KiB the
/// compressor uses, or has a parameter RFC 7692 does not define.
pub fn accepts_deflate(offers: &str) -> bool {
    offers.split(',').any(|offer| {
        let mut parts = offer.split(';').map(str::trim);
        parts.next() == Some("permessage-deflate")
            && parts.all(|param| {
                let (name, value) = param.split_once('=').map_or((param, None), |(n, v)| (n.trim(), Some(v.trim())));
                match name {
                    "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
                    // The client's window only bounds what the client sends; any size inflates.
                    "client_max_window_bits" => true,
                    "server_max_window_bits" => value.map(|v| v.trim_matches('"')) == Some("15"),
                    _ => false,
                }
            })
    })
}

/// Deflates `payload` as one permessage-deflate message and hands `with` the result (without
/// the sync tail), still in the per-thread buffer.
fn deflated<R>(payload: &[u8], with: impl FnOnce(&[u8]) -> R) -> R {
    DEFLATER.with_borrow_mut(|(c, buf)| {
        c.reset();
        buf.clear();
        let mut input = payload;
        loop {
            buf.reserve(input.len() / 2 + 64);
            let before = c.total_in();
            c.compress_vec(input, buf, FlushCompress::Sync).expect("deflating into memory cannot fail");
            input = &input[(c.total_in() - before) as usize..];
            // A sync flush is complete once a call leaves output space unused.
            if input.is_empty() && buf.len() < buf.capacity() {
                break;
            }
        }
        debug_assert!(buf.ends_with(&SYNC_TAIL));
        with(&buf[..buf.len().saturating_sub(SYNC_TAIL.len())])
    })
}

/// Inflates one permessage-deflate message, refusing output beyond `max` bytes (a small
/// compressed frame can expand a thousandfold).
fn inflate(payload: &[u8], max: usize) -> Result<Vec<u8>, ReadError> {
    INFLATER.with_borrow_mut(|d| {
        d.reset(false);
        let mut out: Vec<u8> = Vec::with_capacity(payload.len().saturating_mul(4).clamp(64, max.saturating_add(1)));
        for chunk in [payload, &SYNC_TAIL[..]] {
            let mut input = chunk;
            loop {
                if out.len() == out.capacity() {
                    if out.len() > max {
                        return Err(ReadError::TooBig(out.len()));
                    }
                    // Room for at most one byte over the limit: enough to tell it was crossed.
                    out.reserve_exact(out.len().max(64).min(max + 1 - out.len()));
                }
                let (before_in, before_out) = (d.total_in(), out.len());
                let status = d
                    .decompress_vec(input, &mut out, FlushDecompress::Sync)
                    .map_err(|_| ReadError::Protocol("invalid compressed data"))?;
                input = &input[(d.total_in() - before_in) as usize..];
                if out.len() > max {
                    return Err(ReadError::TooBig(out.len()));
                }
                if status == Status::StreamEnd || (input.is_empty() && out.len() < out.capacity()) {
                    break;
                }
                // With room to write, a call that takes no input and gives no output never will.
                if d.total_in() == before_in && out.len() == before_out && out.len() < out.capacity() {
                    return Err(ReadError::Protocol("invalid compressed data"));
                }
            }
        }
        Ok(out)
    })
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

    /// The reason sent in the close frame.
    pub fn close_reason(&self) -> &'static str {
        match self {
            ReadError::TooBig(_) => "message too large",
            ReadError::Protocol(_) => "protocol error",
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

/// A fragmented message being received.
struct Fragments {
    opcode: u8,
    compressed: bool,
    payload: Vec<u8>,
}

/// Parses client frames out of received bytes.
pub struct Decoder {
    /// Received bytes not yet consumed: at most one unfinished frame, after `parse`.
    buf: Vec<u8>,
    fragments: Option<Fragments>,
    max_message: usize,
    /// permessage-deflate agreed: RSV1 marks a compressed message.
    deflate: bool,
}

impl Decoder {
    pub fn new(max_message: usize, deflate: bool) -> Decoder {
        Decoder { buf: Vec::new(), fragments: None, max_message, deflate }
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
                    let (fin, rsv1, opcode, start) = go_on;
                    at = next;
                    let payload_range = start..next;
                    if !self.deliver(fin, rsv1, opcode, payload_range, &mut each)? {
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

    /// Unmasks the frame at `at` if it is complete:
    /// `Some((end, (fin, rsv1, opcode, payload start)))`.
    #[allow(clippy::type_complexity)]
    fn next_frame(&mut self, at: usize) -> Result<Option<(usize, (bool, bool, u8, usize))>, ReadError> {
        let b = &self.buf[at..];
        if b.len() < 2 {
            return Ok(None);
        }
        let (fin, rsv, opcode) = (b[0] & 0x80 != 0, b[0] & 0x70, b[0] & 0x0F);
        let (masked, len7) = (b[1] & 0x80 != 0, b[1] & 0x7F);
        // RSV1 is permessage-deflate's, and only on a message's first frame.
        let rsv1 = rsv == 0x40 && self.deflate && matches!(opcode, OP_TEXT | OP_BINARY);
        if rsv != 0 && !rsv1 {
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
        let so_far = self.fragments.as_ref().map_or(0, |f| f.payload.len() as u64);
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
        Ok(Some((at + start + len, (fin, rsv1, opcode, at + start))))
    }

    fn deliver(
        &mut self,
        fin: bool,
        compressed: bool,
        opcode: u8,
        range: std::ops::Range<usize>,
        each: &mut impl FnMut(Incoming<'_>) -> bool,
    ) -> Result<bool, ReadError> {
        let payload = &self.buf[range];
        match opcode {
            OP_TEXT | OP_BINARY if self.fragments.is_some() => {
                Err(ReadError::Protocol("new message inside a fragmented one"))
            }
            OP_TEXT | OP_BINARY if fin => complete(opcode, compressed, payload, self.max_message, each),
            OP_TEXT | OP_BINARY => {
                self.fragments = Some(Fragments { opcode, compressed, payload: payload.to_vec() });
                Ok(true)
            }
            OP_CONTINUATION => {
                let Some(f) = self.fragments.as_mut() else {
                    return Err(ReadError::Protocol("continuation without a message"));
                };
                f.payload.extend_from_slice(payload);
                if !fin {
                    return Ok(true);
                }
                let f = self.fragments.take().expect("checked above");
                complete(f.opcode, f.compressed, &f.payload, self.max_message, each)
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

/// Hands a whole data message to `each`, inflated first if it came compressed.
fn complete(
    opcode: u8,
    compressed: bool,
    payload: &[u8],
    max: usize,
    each: &mut impl FnMut(Incoming<'_>) -> bool,
) -> Result<bool, ReadError> {
    let inflated;
    let message = if compressed {
        inflated = inflate(payload, max)?;
        &inflated[..]
    } else {
        payload
    };
    Ok(each(if opcode == OP_TEXT { Incoming::Text(message) } else { Incoming::Binary(message) }))
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
    encode_header(out, 0x80 | opcode, payload.len());
    out.extend_from_slice(payload);
}

/// Appends a text frame, deflated (RSV1 set) when `deflate` and the payload is worth it.
fn encode_text(out: &mut Vec<u8>, payload: &[u8], deflate: bool) {
    if !deflate || payload.len() < MIN_COMPRESSED {
        return encode_frame(out, OP_TEXT, payload);
    }
    deflated(payload, |z| {
        encode_header(out, 0x80 | 0x40 | OP_TEXT, z.len());
        out.extend_from_slice(z);
    });
}

/// The header of an unfragmented, unmasked, uncompressed text frame of `len` bytes (server to
/// client), on the stack.
pub fn text_header(len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | OP_TEXT;
    let n = match len {
        n if n < 126 => {
            h[1] = n as u8;
            2
        }
        n if n <= 0xFFFF => {
            h[1] = 126;
            h[2..4].copy_from_slice(&(n as u16).to_be_bytes());
            4
        }
        n => {
            h[1] = 127;
            h[2..10].copy_from_slice(&(n as u64).to_be_bytes());
            10
        }
    };
    (h, n)
}

fn encode_header(out: &mut Vec<u8>, first_byte: u8, len: usize) {
    out.push(first_byte);
    match len {
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
}

/// Everything due on a connection, in one buffer: the encoded control frames (taken), the
/// text frames (drained; deflated when agreed) and a ping.
pub fn encode_batch(control: &mut Vec<u8>, frames: &mut Vec<Utf8Bytes>, ping: bool, deflate: bool) -> Vec<u8> {
    let len: usize = frames.iter().map(|f| f.len() + 10).sum::<usize>() + control.len() + 2;
    let mut batch = Vec::with_capacity(len);
    batch.append(control);
    for f in frames.drain(..) {
        encode_text(&mut batch, f.as_bytes(), deflate);
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
/// A TCP socket the connection task reads and writes through a shared reference, so that the
/// fan-out can write events to it directly while the task is idle (see `inbox`).
pub struct SharedTcp(pub Arc<tokio::net::TcpStream>);

impl AsyncRead for SharedTcp {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale: polling again registers for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The socket closes when the task drops it.
        Poll::Ready(Ok(()))
    }
}

pub struct WsStream<S> {
    io: S,
    pub decoder: Decoder,
    /// permessage-deflate agreed at the upgrade.
    pub deflate: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// `read_buf`: bytes the HTTP server read past the upgrade request.
    pub fn new(io: S, max_message: usize, deflate: bool, read_buf: &[u8]) -> WsStream<S> {
        let mut decoder = Decoder::new(max_message, deflate);
        decoder.extend(read_buf);
        WsStream { io, decoder, deflate }
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
            let mut d = Decoder::new(1 << 20, false);
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
        let mut d = Decoder::new(1 << 20, false);
        d.extend(&client_frame(false, OP_TEXT, b"ab"));
        d.extend(&client_frame(true, OP_PING, b""));
        d.extend(&client_frame(false, OP_CONTINUATION, b"cd"));
        d.extend(&client_frame(true, OP_CONTINUATION, b"ef"));
        assert_eq!(parse_all(&mut d).unwrap(), ["ping:", "text:abcdef"]);
    }

    #[test]
    fn violations_are_refused() {
        let refuse = |bytes: Vec<u8>, max: usize| {
            let mut d = Decoder::new(max, false);
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

    /// A client message deflated by flate2's streaming encoder (sync flush, tail removed), as a
    /// client implementation would produce it, independent of the gateway's own deflate path.
    fn client_deflated(payload: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), Compression::best());
        e.write_all(payload).unwrap();
        e.flush().unwrap();
        let out = e.get_ref();
        assert!(out.ends_with(&SYNC_TAIL));
        out[..out.len() - SYNC_TAIL.len()].to_vec()
    }

    fn with_rsv1(mut frame: Vec<u8>) -> Vec<u8> {
        frame[0] |= 0x40;
        frame
    }

    /// Parses one server frame: (first byte, payload).
    fn server_frame(b: &[u8]) -> (u8, &[u8]) {
        let (len, at) = match b[1] {
            126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        assert_eq!(b.len(), at + len, "one whole frame");
        (b[0], &b[at..])
    }

    #[test]
    fn deflate_offers_are_read_as_rfc_7692_says() {
        assert!(accepts_deflate("permessage-deflate"));
        assert!(accepts_deflate("permessage-deflate; client_max_window_bits")); // ws, Chromium
        assert!(accepts_deflate("x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=10"));
        assert!(accepts_deflate("permessage-deflate; server_no_context_takeover; client_no_context_takeover"));
        assert!(accepts_deflate("permessage-deflate; server_max_window_bits=10, permessage-deflate"));
        assert!(accepts_deflate("permessage-deflate;server_max_window_bits=\"15\""));
        assert!(!accepts_deflate("permessage-deflate; server_max_window_bits=10"));
        assert!(!accepts_deflate("permessage-deflate; server_no_context_takeover=1"));
        assert!(!accepts_deflate("permessage-deflate; unknown_param"));
        assert!(!accepts_deflate("x-webkit-deflate-frame"));
        assert!(!accepts_deflate(""));
    }

    #[test]
    fn deflated_messages_are_inflated_whole_or_fragmented() {
        let text = format!(r#"{{"id":7,"method":"call.a.b","params":{{"pad":"{}"}}}}"#, "ab".repeat(500));
        let deflated = client_deflated(text.as_bytes());
        assert!(deflated.len() < text.len() / 4, "repetitive text compresses");
        let mut d = Decoder::new(1 << 20, true);
        d.extend(&with_rsv1(client_frame(true, OP_TEXT, &deflated)));
        // An uncompressed message on the same connection is fine too (RSV1 is per message).
        d.extend(&client_frame(true, OP_TEXT, b"plain"));
        // Fragmented: RSV1 on the first frame only, a ping in between.
        let (a, b) = deflated.split_at(deflated.len() / 2);
        d.extend(&with_rsv1(client_frame(false, OP_TEXT, a)));
        d.extend(&client_frame(true, OP_PING, b""));
        d.extend(&client_frame(true, OP_CONTINUATION, b));
        assert_eq!(
            parse_all(&mut d).unwrap(),
            [format!("text:{text}"), "text:plain".into(), "ping:".into(), format!("text:{text}")]
        );
    }

    #[test]
    fn deflate_violations_and_bombs_are_refused() {
        let refuse = |bytes: Vec<u8>, max: usize| {
            let mut d = Decoder::new(max, true);
            d.extend(&bytes);
            parse_all(&mut d).unwrap_err()
        };
        let deflated = client_deflated(b"hello hello hello hello");
        // RSV1 on a continuation or a control frame, and RSV2/RSV3, stay violations.
        let mut cont = client_frame(false, OP_TEXT, &deflated[..2]);
        cont.extend(with_rsv1(client_frame(true, OP_CONTINUATION, &deflated[2..])));
        assert_eq!(refuse(cont, 1000).close_code(), CLOSE_PROTOCOL);
        assert_eq!(refuse(with_rsv1(client_frame(true, OP_PING, b"")), 1000).close_code(), CLOSE_PROTOCOL);
        let mut rsv2 = client_frame(true, OP_TEXT, &deflated);
        rsv2[0] |= 0x20;
        assert_eq!(refuse(rsv2, 1000).close_code(), CLOSE_PROTOCOL);
        assert_eq!(
            refuse(with_rsv1(client_frame(true, OP_TEXT, b"\xff\xff not deflate")), 1000).close_code(),
            CLOSE_PROTOCOL
        );
        // 10 MB of zeros deflate to about 10 KB: refused once past the limit, not inflated whole.
        let bomb = client_deflated(&vec![0u8; 10 << 20]);
        assert!(bomb.len() < 64 << 10);
        assert_eq!(refuse(with_rsv1(client_frame(true, OP_TEXT, &bomb)), 1 << 20), ReadError::TooBig((1 << 20) + 1));
        // Exactly at the limit is fine.
        let mut d = Decoder::new(1000, true);
        d.extend(&with_rsv1(client_frame(true, OP_BINARY, &client_deflated(&[7u8; 1000]))));
        assert_eq!(parse_all(&mut d).unwrap(), ["binary:1000"]);
    }

    #[test]
    fn server_frames_are_deflated_when_agreed_and_worth_it() {
        let long = format!(r#"{{"event":"seat.map.change","data":{{"values":{{"row":"{}"}}}}}}"#, "free ".repeat(200));
        let mut frames = vec![Utf8Bytes::from(long.clone()), Utf8Bytes::from_static(r#"{"id":1,"result":null}"#)];
        let batch = encode_batch(&mut Vec::new(), &mut frames, false, true);
        // Split the batch: the first frame is compressed, the short one is not.
        let (short_at, _) = batch.windows(2).enumerate().rev().find(|(_, w)| w[0] == 0x81).unwrap();
        let (first, payload) = server_frame(&batch[..short_at]);
        assert_eq!(first, 0xC1, "FIN + RSV1 + text");
        assert!(payload.len() < long.len() / 4);
        let mut inflated = Vec::new();
        let whole = [payload, &SYNC_TAIL[..]].concat();
        let mut z = flate2::read::DeflateDecoder::new(whole.as_slice());
        let _ = std::io::Read::read_to_end(&mut z, &mut inflated);
        assert_eq!(inflated, long.as_bytes(), "an independent inflater reads it");
        assert_eq!(server_frame(&batch[short_at..]), (0x81, &br#"{"id":1,"result":null}"#[..]));
        // Every length form of the header: the payload moves up to the real header size.
        for n in [100, 2_000, 200_000] {
            let text: String = (0..n).map(|i| char::from(b'a' + (i * 7 % 26) as u8)).collect();
            let mut out = Vec::new();
            encode_text(&mut out, text.as_bytes(), true);
            let (first, payload) = server_frame(&out);
            assert_eq!(first, 0xC1);
            assert_eq!(inflate(payload, 1 << 20).unwrap(), text.as_bytes());
        }
    }

    proptest::proptest! {
        /// Whatever arrives, split anywhere, with or without deflate agreed: errors, never panics.
        #[test]
        fn arbitrary_input_never_panics(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
            split in 0usize..2048,
            deflate in proptest::prelude::any::<bool>(),
        ) {
            let mut d = Decoder::new(4096, deflate);
            let split = split.min(bytes.len());
            d.extend(&bytes[..split]);
            if parse_all(&mut d).is_ok() {
                d.extend(&bytes[split..]);
                let _ = parse_all(&mut d);
            }
        }

        /// Arbitrary bytes as a compressed message: inflated, or refused, never a panic.
        #[test]
        fn arbitrary_compressed_payloads_never_panic(
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024),
        ) {
            let mut d = Decoder::new(4096, true);
            d.extend(&with_rsv1(client_frame(true, OP_TEXT, &payload)));
            let _ = parse_all(&mut d);
        }
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
