//! Server URLs: `nats://`, `tls://` or bare `host[:port]`, with optional `user:pass@` or
//! `token@`, comma-separated for a list of servers.

use crate::ConnectError;

/// Credentials taken from a URL's user info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UrlAuth {
    UserPass { user: String, pass: String },
    Token(String),
}

/// One server to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerAddr {
    pub host: String,
    pub port: u16,
    /// `tls://`: TLS even if the server does not require it.
    pub tls: bool,
    pub auth: Option<UrlAuth>,
}

impl ServerAddr {
    /// `host:port` for connecting and logs, never with credentials.
    pub fn display(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Parses a comma-separated list of server URLs.
pub(crate) fn parse_urls(urls: &str) -> Result<Vec<ServerAddr>, ConnectError> {
    let addrs =
        urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(parse_url).collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err(ConnectError::InvalidUrl { url: urls.to_owned(), reason: "no server URL" });
    }
    Ok(addrs)
}

fn parse_url(url: &str) -> Result<ServerAddr, ConnectError> {
    let invalid = |reason| ConnectError::InvalidUrl { url: redact(url), reason };
    let (tls, rest) = match url.split_once("://") {
        Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
            "nats" => (false, rest),
            "tls" => (true, rest),
            _ => return Err(invalid("the scheme must be nats:// or tls://")),
        },
        None => (false, url),
    };
    let rest = rest.split(['/', '?']).next().unwrap_or_default();
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let auth = match userinfo {
        None | Some("") => None,
        Some(u) => Some(match u.split_once(':') {
            Some((user, pass)) => UrlAuth::UserPass { user: decode(user), pass: decode(pass) },
            None => UrlAuth::Token(decode(u)),
        }),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| invalid("unterminated [IPv6] host"))?;
        (host, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    let port = match port {
        None => 4222,
        Some(p) => p.parse().map_err(|_| invalid("the port is not a number from 0 to 65535"))?,
    };
    Ok(ServerAddr { host: host.to_owned(), port, tls, auth })
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// The URL without its user info, for error messages that may end up in logs.
fn redact(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((before, after)) => {
            let scheme = before.split_once("://").map_or(String::new(), |(s, _)| format!("{s}://"));
            format!("{scheme}***@{after}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(url: &str) -> ServerAddr {
        let mut v = parse_urls(url).unwrap();
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    #[test]
    fn parses_schemes_ports_and_hosts() {
        assert_eq!(
            one("nats://127.0.0.1:4223"),
            ServerAddr { host: "127.0.0.1".into(), port: 4223, tls: false, auth: None }
        );
        assert_eq!(one("localhost"), ServerAddr { host: "localhost".into(), port: 4222, tls: false, auth: None });
        assert_eq!(
            one("tls://nats.example:443/"),
            ServerAddr { host: "nats.example".into(), port: 443, tls: true, auth: None }
        );
        assert_eq!(one("NATS://[::1]:5"), ServerAddr { host: "::1".into(), port: 5, tls: false, auth: None });
        assert_eq!(one("nats://[::1]").display(), "[::1]:4222");
    }

    #[test]
    fn parses_credentials() {
        assert_eq!(one("nats://u:p%40ss@h").auth, Some(UrlAuth::UserPass { user: "u".into(), pass: "p@ss".into() }));
        assert_eq!(one("nats://s3cret@h:1").auth, Some(UrlAuth::Token("s3cret".into())));
    }

    #[test]
    fn parses_lists() {
        let v = parse_urls("nats://a:1, tls://b:2 ,c").unwrap();
        assert_eq!(v.iter().map(ServerAddr::display).collect::<Vec<_>>(), ["a:1", "b:2", "c:4222"]);
        assert!(v[1].tls);
    }

    #[test]
    fn rejects_bad_urls_without_leaking_passwords() {
        for url in ["", " , ", "http://h:1", "nats://:4222", "nats://h:port", "nats://h:70000", "nats://[::1"] {
            assert!(parse_urls(url).is_err(), "{url:?}");
        }
        let err = parse_urls("http://user:hunter2@h").unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
