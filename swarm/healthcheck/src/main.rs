//! `healthcheck URL` — a std-only HTTP/1.1 probe for Docker `HEALTHCHECK` in images without a
//! shell or curl (distroless). It sends `GET` to a plain `http://host:port/path` URL, waits at
//! most two seconds for connect, write and read, and exits 0 on a 2xx status, 1 otherwise.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_URL: &str = "http://127.0.0.1:9100/healthz";

/// Host (with port) and path of a plain `http://` URL.
#[derive(Debug, PartialEq, Eq)]
struct Target<'a> {
    authority: &'a str,
    path: &'a str,
}

fn parse_url(url: &str) -> Result<Target<'_>, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("only http:// URLs are supported: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, "/"),
    };
    if authority.is_empty() || !authority.contains(':') {
        return Err(format!("URL needs an explicit host:port: {url}"));
    }
    Ok(Target { authority, path })
}

/// Status code from the first response line, e.g. `HTTP/1.1 200 OK` gives 200.
fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

fn probe(target: &Target<'_>) -> Result<u16, String> {
    let addr = target
        .authority
        .to_socket_addrs()
        .map_err(|err| format!("resolve {}: {err}", target.authority))?
        .next()
        .ok_or_else(|| format!("no address for {}", target.authority))?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|err| format!("connect {addr}: {err}"))?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(|err| err.to_string())?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(|err| err.to_string())?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: healthcheck\r\nConnection: close\r\n\r\n",
        target.path, target.authority
    );
    stream.write_all(request.as_bytes()).map_err(|err| format!("write: {err}"))?;
    // The status line fits well within 512 bytes; the body is not needed.
    let mut head = [0_u8; 512];
    let mut filled = 0;
    while filled < head.len() && !head[..filled].contains(&b'\n') {
        match stream.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) => return Err(format!("read: {err}")),
        }
    }
    let text = String::from_utf8_lossy(&head[..filled]);
    let line = text.lines().next().unwrap_or_default();
    parse_status_line(line).ok_or_else(|| format!("malformed status line: {line:?}"))
}

fn main() -> ExitCode {
    let url = std::env::args().nth(1).unwrap_or_else(|| DEFAULT_URL.to_owned());
    let result = parse_url(&url).and_then(|target| probe(&target));
    match result {
        Ok(status) if (200..300).contains(&status) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("healthcheck: {url} answered {status}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("healthcheck: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    #[test]
    fn status_line_gives_code() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status_line("HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(parse_status_line("HTTP/1.1 204"), Some(204));
    }

    #[test]
    fn malformed_status_line_is_rejected() {
        assert_eq!(parse_status_line(""), None);
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line("HTTP/2 200"), None);
        assert_eq!(parse_status_line("HTTP/1.1 20 OK"), None);
        assert_eq!(parse_status_line("HTTP/1.1 abc OK"), None);
    }

    #[test]
    fn url_splits_into_authority_and_path() {
        let target = parse_url("http://127.0.0.1:9100/healthz").unwrap();
        assert_eq!(target, Target { authority: "127.0.0.1:9100", path: "/healthz" });
        let bare = parse_url("http://localhost:8000").unwrap();
        assert_eq!(bare, Target { authority: "localhost:8000", path: "/" });
    }

    #[test]
    fn url_without_port_or_http_scheme_is_rejected() {
        assert!(parse_url("https://127.0.0.1:9100/healthz").is_err());
        assert!(parse_url("http://127.0.0.1/healthz").is_err());
        assert!(parse_url("http:///healthz").is_err());
    }

    fn serve_once(response: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0_u8; 1024];
            let _ = conn.read(&mut buf);
            conn.write_all(response.as_bytes()).unwrap();
        });
        format!("{addr}")
    }

    #[test]
    fn probe_reads_status_from_a_real_socket() {
        let authority = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let target = Target { authority: &authority, path: "/healthz" };
        assert_eq!(probe(&target), Ok(200));

        let authority = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let target = Target { authority: &authority, path: "/healthz" };
        assert_eq!(probe(&target), Ok(503));
    }

    #[test]
    fn probe_fails_when_nothing_listens() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        drop(listener);
        let target = Target { authority: &authority, path: "/" };
        assert!(probe(&target).is_err());
    }
}
