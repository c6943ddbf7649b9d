//! Access tokens for many distinct users from the local OpenID Provider (`identity/oidc-issuer`
//! started with `--test-admin`): `POST <issuer>/__test/token` signs the same JWT the code flow
//! issues, for the realm user `alice` (role customer) with its own `sub` per bench user.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// The issuer's address and path (`http://127.0.0.1:8180/realms/booking`).
#[derive(Debug, Clone)]
pub struct Issuer {
    addr: SocketAddr,
    path: String,
}

impl Issuer {
    pub fn parse(url: &str) -> Result<Issuer> {
        let rest = url.strip_prefix("http://").context("--issuer must be an http:// URL")?;
        let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
        let addr: SocketAddr = host.parse().with_context(|| format!("--issuer host {host} must be IP:port"))?;
        if !addr.ip().is_loopback() {
            bail!("--issuer must be on loopback (got {addr})");
        }
        Ok(Issuer { addr, path: format!("/{}", path.trim_end_matches('/')) })
    }
}

/// One keep-alive connection minting tokens one after the other.
async fn mint_some(issuer: &Issuer, subs: Vec<String>, ttl_secs: u64) -> Result<Vec<(String, String)>> {
    let stream = TcpStream::connect(issuer.addr).await.with_context(|| format!("connect {}", issuer.addr))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await.context("handshake")?;
    let conn = tokio::spawn(conn);
    let mut out = Vec::with_capacity(subs.len());
    let host = issuer.addr.to_string();
    for sub in subs {
        let body = serde_json::json!({ "username": "alice", "sub": sub, "ttl": ttl_secs,
            "extra": { "preferred_username": sub, "name": sub } });
        let req = Request::post(format!("{}/__test/token", issuer.path))
            .header(hyper::header::HOST, host.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .context("token request")?;
        let resp = sender.send_request(req).await.context("token request")?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.context("token response")?.to_bytes();
        if !status.is_success() {
            bail!(
                "the issuer refused to mint a token ({status}): {}; is it started with --test-admin (OIDC_TEST_ADMIN=1)?",
                String::from_utf8_lossy(&bytes)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&bytes).context("token response JSON")?;
        let token = v["access_token"].as_str().context("no access_token in the issuer's answer")?;
        out.push((sub, token.to_owned()));
    }
    conn.abort();
    Ok(out)
}

/// Tokens for `subs`, over `parallel` connections; in the order of `subs`.
pub async fn mint(issuer: &Issuer, subs: &[String], ttl_secs: u64, parallel: usize) -> Result<Vec<String>> {
    let chunk = subs.len().div_ceil(parallel.max(1)).max(1);
    let jobs = subs.chunks(chunk).map(|c| mint_some(issuer, c.to_vec(), ttl_secs));
    let mut all = std::collections::HashMap::with_capacity(subs.len());
    let mut results = futures_util::stream::iter(jobs).buffer_unordered(parallel.max(1));
    while let Some(r) = results.next().await {
        all.extend(r?);
    }
    subs.iter().map(|s| all.remove(s).context("a token is missing")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_urls() {
        let i = Issuer::parse("http://127.0.0.1:8180/realms/booking/").unwrap();
        assert_eq!(i.addr.port(), 8180);
        assert_eq!(i.path, "/realms/booking");
        assert!(Issuer::parse("https://127.0.0.1:1/x").is_err());
        assert!(Issuer::parse("http://10.0.0.1:1/x").is_err());
    }
}
