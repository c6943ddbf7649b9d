//! The NATS client protocol without I/O: parsing what the server sends and encoding what the
//! client sends. Everything here is deterministic so it can be tested byte by byte.

use crate::{Headers, Message};
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::sync::Arc;

/// The longest control line accepted from the server. Servers send short lines except INFO,
/// which grows with the cluster's `connect_urls`; anything past this is garbage, not a line that
/// is still arriving, and would otherwise make the read buffer grow without bound.
const MAX_CONTROL_LINE: usize = 1 << 20;

/// The largest message accepted from the server. NATS caps `max_payload` at 64 MiB; a bigger
/// size field means a corrupt stream, and trusting it would make us buffer forever.
const MAX_MESSAGE: usize = 64 << 20;

/// The first line of a header block.
const HEADER_VERSION: &[u8] = b"NATS/1.0";

/// Why the server's byte stream cannot be understood. The connection is unusable after this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("control line longer than {MAX_CONTROL_LINE} bytes")]
    ControlLineTooLong,
    #[error("line not terminated by CRLF")]
    BareNewline,
    #[error("unknown protocol operation {0:?}")]
    UnknownOp(String),
    #[error("malformed {op} line: {line:?}")]
    Malformed { op: &'static str, line: String },
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE} byte limit")]
    MessageTooLarge(usize),
    #[error("message payload not followed by CRLF")]
    MissingPayloadEnd,
    #[error("malformed message headers: {0}")]
    Headers(&'static str),
    #[error("INFO is not valid JSON: {0}")]
    Info(String),
}

/// The server's INFO, as far as the client uses it.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ServerInfo {
    #[serde(default)]
    pub server_id: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub max_payload: usize,
    #[serde(default)]
    pub tls_required: bool,
    /// Present when the server wants the nonce signed (nkey / JWT authentication).
    #[serde(default)]
    pub nonce: Option<String>,
    /// The client URLs (`host:port`) of every server in the cluster, for reconnecting elsewhere.
    #[serde(default)]
    pub connect_urls: Vec<String>,
    /// Lame duck mode: the server is shutting down and will close this connection soon.
    #[serde(default)]
    pub ldm: bool,
}

/// One operation sent by the server.
#[derive(Debug)]
pub(crate) enum ServerOp {
    Info(Box<ServerInfo>),
    /// A message for subscription `sid`.
    Msg {
        sid: u64,
        message: Message,
    },
    Ping,
    Pong,
    Ok,
    Err(String),
}

/// Parses the next complete operation at the front of `buf`, removing it.
///
/// `Ok(None)` means the operation is not complete yet: read more into `buf` and call again.
/// Nothing is consumed in that case, so the caller can split the stream at any byte.
pub(crate) fn parse(buf: &mut BytesMut) -> Result<Option<ServerOp>, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_CONTROL_LINE {
            return Err(ProtocolError::ControlLineTooLong);
        }
        return Ok(None);
    };
    if nl > MAX_CONTROL_LINE {
        return Err(ProtocolError::ControlLineTooLong);
    }
    if nl == 0 || buf[nl - 1] != b'\r' {
        return Err(ProtocolError::BareNewline);
    }
    let line = &buf[..nl - 1];
    let line_len = nl + 1;
    let (op, rest) = split_op(line);
    let op = match op.to_ascii_uppercase().as_slice() {
        b"MSG" | b"HMSG" => {
            let args = (line.len() - rest.len())..line.len();
            return parse_msg(buf, args, line_len, op.len() == 4);
        }
        b"PING" => ServerOp::Ping,
        b"PONG" => ServerOp::Pong,
        b"+OK" => ServerOp::Ok,
        b"-ERR" => {
            let text = String::from_utf8_lossy(rest);
            let text = text.trim();
            let text = text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')).unwrap_or(text);
            ServerOp::Err(text.to_owned())
        }
        b"INFO" => {
            let info: ServerInfo = serde_json::from_slice(rest).map_err(|e| ProtocolError::Info(e.to_string()))?;
            ServerOp::Info(Box::new(info))
        }
        _ => return Err(ProtocolError::UnknownOp(String::from_utf8_lossy(op).into_owned())),
    };
    let _ = buf.split_to(line_len);
    Ok(Some(op))
}

/// Splits a control line into its operation name and the arguments after it.
fn split_op(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|b| b.is_ascii_whitespace()) {
        Some(i) => (&line[..i], trim_start(&line[i..])),
        None => (line, &[]),
    }
}

fn trim_start(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(s.len());
    &s[start..]
}

/// `MSG <subject> <sid> [reply] <size>` or `HMSG <subject> <sid> [reply] <header size> <size>`.
fn parse_msg(
    buf: &mut BytesMut,
    args: std::ops::Range<usize>,
    line_len: usize,
    has_headers: bool,
) -> Result<Option<ServerOp>, ProtocolError> {
    let args = &buf[args];
    let op = if has_headers { "HMSG" } else { "MSG" };
    let malformed = || ProtocolError::Malformed { op, line: String::from_utf8_lossy(args).into_owned() };
    let fields: Vec<&[u8]> = args.split(|b| b.is_ascii_whitespace()).filter(|f| !f.is_empty()).collect();
    let sizes = if has_headers { 2 } else { 1 };
    if fields.len() != 2 + sizes && fields.len() != 3 + sizes {
        return Err(malformed());
    }
    let number = |f: &[u8]| std::str::from_utf8(f).ok().and_then(|s| s.parse::<usize>().ok());
    let sid = number(fields[1]).ok_or_else(malformed)? as u64;
    let total = number(fields[fields.len() - 1]).ok_or_else(malformed)?;
    let header_len = if has_headers { number(fields[fields.len() - 2]).ok_or_else(malformed)? } else { 0 };
    if header_len > total {
        return Err(malformed());
    }
    if total > MAX_MESSAGE {
        return Err(ProtocolError::MessageTooLarge(total));
    }
    let frame_len = line_len + total + 2;
    if buf.len() < frame_len {
        // Make room once for the whole message instead of growing step by step per read.
        buf.reserve(frame_len - buf.len());
        return Ok(None);
    }
    let text = |f: &[u8]| std::str::from_utf8(f).map(Arc::<str>::from).map_err(|_| malformed());
    let subject = text(fields[0])?;
    let reply = if fields.len() - sizes == 3 { Some(text(fields[2])?) } else { None };
    if &buf[line_len + total..frame_len] != b"\r\n" {
        return Err(ProtocolError::MissingPayloadEnd);
    }
    let frame = buf.split_to(frame_len).freeze();
    let (headers, status, description) =
        if has_headers { parse_headers(&frame[line_len..line_len + header_len])? } else { (None, None, None) };
    let payload = frame.slice(line_len + header_len..line_len + total);
    let message = Message { subject, reply, headers, status, description, payload };
    Ok(Some(ServerOp::Msg { sid, message }))
}

type ParsedHeaders = (Option<Headers>, Option<u16>, Option<String>);

/// Parses a header block: `NATS/1.0[ <status>[ <description>]]\r\n(<name>: <value>\r\n)*\r\n`.
fn parse_headers(block: &[u8]) -> Result<ParsedHeaders, ProtocolError> {
    let text = std::str::from_utf8(block).map_err(|_| ProtocolError::Headers("not UTF-8"))?;
    let text = text.strip_suffix("\r\n\r\n").ok_or(ProtocolError::Headers("block not terminated by CRLFCRLF"))?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let rest = first.strip_prefix("NATS/1.0").ok_or(ProtocolError::Headers("missing NATS/1.0 version line"))?;
    let (status, description) = match rest {
        "" => (None, None),
        _ => {
            let status_line = rest.strip_prefix(' ').ok_or(ProtocolError::Headers("garbage after NATS/1.0"))?.trim();
            let (code, desc) = status_line.split_once(' ').unwrap_or((status_line, ""));
            if code.is_empty() {
                (None, None)
            } else {
                let code = (code.len() == 3)
                    .then(|| code.parse::<u16>().ok())
                    .flatten()
                    .ok_or(ProtocolError::Headers("status is not 3 digits"))?;
                let desc = desc.trim();
                (Some(code), (!desc.is_empty()).then(|| desc.to_owned()))
            }
        }
    };
    let mut headers = Headers::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(ProtocolError::Headers("header line without ':'"))?;
        if name.is_empty() || name.contains(|c: char| c.is_ascii_whitespace()) {
            return Err(ProtocolError::Headers("invalid header name"));
        }
        headers.append(name, value.trim());
    }
    Ok(((!headers.is_empty()).then_some(headers), status, description))
}

/// What the client sends in CONNECT.
#[derive(Debug, Serialize)]
pub(crate) struct Connect<'a> {
    pub verbose: bool,
    pub pedantic: bool,
    pub tls_required: bool,
    pub name: &'a str,
    pub lang: &'static str,
    pub version: &'static str,
    pub protocol: u8,
    pub echo: bool,
    pub headers: bool,
    pub no_responders: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

/// Appends `CONNECT {...}\r\nPING\r\n`: the PONG confirms the server accepted the CONNECT.
pub(crate) fn encode_connect(buf: &mut BytesMut, connect: &Connect<'_>) {
    buf.put_slice(b"CONNECT ");
    // Serializing plain strings and booleans cannot fail.
    buf.put_slice(&serde_json::to_vec(connect).unwrap_or_default());
    buf.put_slice(b"\r\nPING\r\n");
}

/// Appends a PUB (or HPUB when `headers` is given, already encoded by [`encode_headers`]).
pub(crate) fn encode_pub(
    buf: &mut BytesMut,
    subject: &str,
    reply: Option<&str>,
    headers: Option<&[u8]>,
    payload: &[u8],
) {
    buf.reserve(subject.len() + reply.map_or(0, str::len) + headers.map_or(0, <[u8]>::len) + payload.len() + 32);
    buf.put_slice(if headers.is_some() { b"HPUB " } else { b"PUB " });
    buf.put_slice(subject.as_bytes());
    buf.put_u8(b' ');
    if let Some(reply) = reply {
        buf.put_slice(reply.as_bytes());
        buf.put_u8(b' ');
    }
    let header_len = headers.map_or(0, <[u8]>::len);
    // Writing into a BytesMut cannot fail.
    if headers.is_some() {
        let _ = write!(buf, "{header_len} ");
    }
    let _ = write!(buf, "{}\r\n", header_len + payload.len());
    if let Some(h) = headers {
        buf.put_slice(h);
    }
    buf.put_slice(payload);
    buf.put_slice(b"\r\n");
}

/// Appends `SUB <subject> <sid>`.
pub(crate) fn encode_sub(buf: &mut BytesMut, subject: &str, sid: u64) {
    let _ = write!(buf, "SUB {subject} {sid}\r\n");
}

/// Appends `UNSUB <sid>`.
pub(crate) fn encode_unsub(buf: &mut BytesMut, sid: u64) {
    let _ = write!(buf, "UNSUB {sid}\r\n");
}

/// Encodes a header block for HPUB, or says why the headers cannot go on the wire.
pub(crate) fn encode_headers(headers: &Headers) -> Result<Bytes, &'static str> {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_slice(HEADER_VERSION);
    buf.put_slice(b"\r\n");
    for (name, value) in headers.iter() {
        if name.is_empty() || name.bytes().any(|b| b == b':' || b.is_ascii_whitespace() || b.is_ascii_control()) {
            return Err("header name is empty or has ':', whitespace or control characters");
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err("header value has CR or LF");
        }
        buf.put_slice(name.as_bytes());
        buf.put_slice(b": ");
        buf.put_slice(value.as_bytes());
        buf.put_slice(b"\r\n");
    }
    buf.put_slice(b"\r\n");
    Ok(buf.freeze())
}

/// Checks a subject (or reply subject): dot-separated non-empty tokens without whitespace or
/// control characters, so it cannot break the protocol line it goes into. Wildcard tokens
/// (`*`, a final `>`) are only allowed when `wildcards` is set (subscriptions).
pub(crate) fn valid_subject(subject: &str, wildcards: bool) -> bool {
    if subject.is_empty() || subject.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return false;
    }
    let mut tokens = subject.split('.').peekable();
    while let Some(token) = tokens.next() {
        let is_last = tokens.peek().is_none();
        let ok = match token {
            "" => false,
            "*" => wildcards,
            ">" => wildcards && is_last,
            // `*` and `>` inside a longer token are literal characters, not wildcards.
            _ => true,
        };
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Result<Vec<ServerOp>, ProtocolError> {
        let mut buf = BytesMut::from(bytes);
        let mut ops = Vec::new();
        while let Some(op) = parse(&mut buf)? {
            ops.push(op);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        Ok(ops)
    }

    /// Feeds `bytes` one byte at a time, parsing after each, like the slowest possible socket.
    fn parse_bytewise(bytes: &[u8]) -> Result<Vec<ServerOp>, ProtocolError> {
        let mut buf = BytesMut::new();
        let mut ops = Vec::new();
        for &b in bytes {
            buf.put_u8(b);
            while let Some(op) = parse(&mut buf)? {
                ops.push(op);
            }
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        Ok(ops)
    }

    fn msg(op: &ServerOp) -> (u64, &Message) {
        match op {
            ServerOp::Msg { sid, message } => (*sid, message),
            other => panic!("expected MSG, got {other:?}"),
        }
    }

    const STREAM: &[u8] =
        b"INFO {\"server_id\":\"S1\",\"max_payload\":1048576,\"proto\":1,\"nonce\":\"abc\",\"tls_required\":true}\r\n\
        PING\r\nPONG\r\n+OK\r\n-ERR 'Permissions Violation for Publish to \"x\"'\r\n\
        MSG foo.bar 9 5\r\nhello\r\n\
        MSG foo.bar 10 _INBOX.abc.1 0\r\n\r\n\
        HMSG a.b 3 _INBOX.x.2 26 31\r\nNATS/1.0\r\nK: v1\r\nK: v2\r\n\r\nhello\r\n\
        HMSG _INBOX.x.3 4 30 30\r\nNATS/1.0 503 No Responders\r\n\r\n\r\n\
        msg lower 1 4\r\na\r\nb\r\n";

    fn check_stream(ops: &[ServerOp]) {
        assert_eq!(ops.len(), 10);
        match &ops[0] {
            ServerOp::Info(info) => {
                assert_eq!(info.server_id, "S1");
                assert_eq!(info.max_payload, 1_048_576);
                assert_eq!(info.nonce.as_deref(), Some("abc"));
                assert!(info.tls_required);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(ops[1], ServerOp::Ping));
        assert!(matches!(ops[2], ServerOp::Pong));
        assert!(matches!(ops[3], ServerOp::Ok));
        match &ops[4] {
            ServerOp::Err(e) => assert_eq!(e, "Permissions Violation for Publish to \"x\""),
            other => panic!("{other:?}"),
        }
        let (sid, m) = msg(&ops[5]);
        assert_eq!((sid, &*m.subject, m.reply.as_deref(), &m.payload[..]), (9, "foo.bar", None, &b"hello"[..]));
        assert!(m.headers.is_none() && m.status.is_none());
        let (sid, m) = msg(&ops[6]);
        assert_eq!((sid, m.reply.as_deref(), m.payload.len()), (10, Some("_INBOX.abc.1"), 0));
        let (sid, m) = msg(&ops[7]);
        assert_eq!(
            (sid, &*m.subject, m.reply.as_deref(), &m.payload[..]),
            (3, "a.b", Some("_INBOX.x.2"), &b"hello"[..])
        );
        let h = m.headers.as_ref().expect("headers");
        assert_eq!(h.get_all("K").collect::<Vec<_>>(), ["v1", "v2"]);
        assert_eq!(m.status, None);
        let (sid, m) = msg(&ops[8]);
        assert_eq!((sid, m.status, m.description.as_deref()), (4, Some(503), Some("No Responders")));
        assert!(m.payload.is_empty() && m.headers.is_none());
        let (_, m) = msg(&ops[9]);
        // The payload may contain CRLF; only the size delimits it.
        assert_eq!(&m.payload[..], b"a\r\nb");
    }

    #[test]
    fn parses_every_operation() {
        check_stream(&parse_all(STREAM).unwrap());
    }

    #[test]
    fn parses_the_same_when_split_at_every_byte() {
        check_stream(&parse_bytewise(STREAM).unwrap());
    }

    #[test]
    fn parses_the_same_when_split_at_any_single_point() {
        for cut in 0..=STREAM.len() {
            let mut buf = BytesMut::from(&STREAM[..cut]);
            let mut ops = Vec::new();
            while let Some(op) = parse(&mut buf).unwrap() {
                ops.push(op);
            }
            buf.put_slice(&STREAM[cut..]);
            while let Some(op) = parse(&mut buf).unwrap() {
                ops.push(op);
            }
            check_stream(&ops);
        }
    }

    #[test]
    fn parses_a_big_payload_in_pieces() {
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = format!("MSG big 1 {}\r\n", payload.len()).into_bytes();
        wire.extend_from_slice(&payload);
        wire.extend_from_slice(b"\r\nPING\r\n");
        let mut buf = BytesMut::new();
        let mut ops = Vec::new();
        for chunk in wire.chunks(65_536) {
            buf.put_slice(chunk);
            while let Some(op) = parse(&mut buf).unwrap() {
                ops.push(op);
            }
        }
        assert_eq!(ops.len(), 2);
        assert_eq!(msg(&ops[0]).1.payload, payload);
        assert!(matches!(ops[1], ServerOp::Ping));
    }

    #[test]
    fn status_without_description_and_headers_with_status() {
        let ops = parse_all(
            b"HMSG s 1 16 16\r\nNATS/1.0 408\r\n\r\n\r\nHMSG s 1 27 29\r\nNATS/1.0 100 Idle\r\nA: b\r\n\r\nxy\r\n",
        )
        .unwrap();
        let (_, m) = msg(&ops[0]);
        assert_eq!((m.status, m.description.as_deref()), (Some(408), None));
        let (_, m) = msg(&ops[1]);
        assert_eq!((m.status, m.description.as_deref()), (Some(100), Some("Idle")));
        assert_eq!(m.headers.as_ref().and_then(|h| h.get("A")), Some("b"));
        assert_eq!(&m.payload[..], b"xy");
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let cases: &[&[u8]] = &[
            b"FOO\r\n",
            b"PING\n",
            b"\n",
            b"MSG\r\n",
            b"MSG a\r\n",
            b"MSG a b 1\r\nx\r\n",
            b"MSG a 1 x\r\n",
            b"MSG a 1 -1\r\n",
            b"MSG a 1 b c 1\r\n",
            b"MSG a 1 3\r\nabcde",
            b"MSG a 1 99999999999\r\n",
            b"MSG a 1 99999999999999999999999\r\n",
            b"HMSG a 1 5\r\n",
            b"HMSG a 1 6 5\r\n",
            b"HMSG a 1 4 4\r\nNATS\r\n",
            b"HMSG a 1 10 10\r\nHTTP/1.0\r\n\r\n",
            b"HMSG a 1 16 16\r\nNATS/1.0 5x3\r\n\r\n\r\n",
            b"HMSG a 1 21 21\r\nNATS/1.0\r\nnocolon\r\n\r\n\r\n",
            b"HMSG a 1 13 13\r\nNATS/1.0X\r\n\r\n\r\n",
            b"INFO {\r\n",
            b"MSG \xff 1 0\r\n\r\n",
        ];
        for case in cases {
            assert!(parse_all(case).is_err(), "accepted {:?}", String::from_utf8_lossy(case));
        }
        let endless = vec![b'x'; MAX_CONTROL_LINE + 2];
        assert_eq!(parse(&mut BytesMut::from(&endless[..])).unwrap_err(), ProtocolError::ControlLineTooLong);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A deterministic pseudo-random byte soup biased towards protocol characters.
        let alphabet = b"MSGHPINOKERF-+ 0123456789\r\n.abc/:";
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut buf = BytesMut::new();
            for _ in 0..64 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                buf.put_u8(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            while let Ok(Some(_)) = parse(&mut buf) {}
        }
    }

    #[test]
    fn encodes_pub_hpub_sub_unsub() {
        let mut buf = BytesMut::new();
        encode_pub(&mut buf, "a.b", None, None, b"hi");
        encode_pub(&mut buf, "a.b", Some("r.1"), None, b"");
        let mut h = Headers::new();
        h.append("K", "v");
        let hb = encode_headers(&h).unwrap();
        assert_eq!(&hb[..], b"NATS/1.0\r\nK: v\r\n\r\n");
        encode_pub(&mut buf, "a.b", Some("r.2"), Some(&hb), b"xyz");
        encode_sub(&mut buf, "a.*", 7);
        encode_unsub(&mut buf, 7);
        assert_eq!(
            &buf[..],
            &b"PUB a.b 2\r\nhi\r\nPUB a.b r.1 0\r\n\r\nHPUB a.b r.2 18 21\r\nNATS/1.0\r\nK: v\r\n\r\nxyz\r\nSUB a.* 7\r\nUNSUB 7\r\n"[..]
        );
    }

    #[test]
    fn encoded_headers_parse_back() {
        let mut h = Headers::new();
        h.append("traceparent", "00-abc-def-01");
        h.append("X", "1");
        h.append("X", "2");
        let hb = encode_headers(&h).unwrap();
        let mut buf = BytesMut::new();
        encode_pub(&mut buf, "s", None, Some(&hb), b"p");
        // A server turns HPUB into HMSG by adding the sid.
        let wire = String::from_utf8(buf.to_vec()).unwrap().replacen("HPUB s", "HMSG s 1", 1);
        let ops = parse_all(wire.as_bytes()).unwrap();
        assert_eq!(msg(&ops[0]).1.headers.as_ref(), Some(&h));
    }

    #[test]
    fn rejects_headers_that_would_break_the_block() {
        for (name, value) in [("a b", "v"), ("a:b", "v"), ("", "v"), ("k", "v\r\nx: y"), ("k", "v\n")] {
            let mut h = Headers::new();
            h.append(name, value);
            assert!(encode_headers(&h).is_err(), "{name:?}: {value:?}");
        }
    }

    #[test]
    fn validates_subjects() {
        for s in ["a", "a.b", "_INBOX.x.1", "event.a-b.c_d", "$SYS.x"] {
            assert!(valid_subject(s, false), "{s}");
            assert!(valid_subject(s, true), "{s}");
        }
        for s in ["a.*", "a.>", "*.b", "*"] {
            assert!(!valid_subject(s, false), "{s}");
            assert!(valid_subject(s, true), "{s}");
        }
        for s in ["", ".", "a.", ".a", "a..b", "a b", "a\r\nPUB x 1", "a\tb", "a.>.b"] {
            assert!(!valid_subject(s, true), "{s:?}");
        }
    }
}
