//! Command line and environment (`IDENTITY_*`); flags win over the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use token_validator::ValidatorConfig;

use crate::Settings;

#[derive(Debug, Clone, Parser)]
#[command(name = "identity-auth", version, about = "RES auth service: OIDC access tokens to RES connection tokens")]
pub struct Config {
    /// NATS server URL.
    #[arg(long, env = "IDENTITY_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// NATS credentials file.
    #[arg(long, env = "IDENTITY_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// The public issuer: must equal the tokens' `iss` (e.g. https://id.example.com/realms/booking).
    #[arg(long, env = "IDENTITY_ISSUER_URL")]
    pub issuer_url: String,
    /// Where to fetch discovery when the issuer is reached by an internal name; `iss` is still
    /// checked against the issuer URL.
    #[arg(long, env = "IDENTITY_DISCOVERY_URL")]
    pub discovery_url: Option<String>,
    /// Required member of `aud`.
    #[arg(long, env = "IDENTITY_AUDIENCE", default_value = token_validator::BOOKING_API_AUDIENCE)]
    pub audience: String,
    /// Allowed `azp` (the web client).
    #[arg(long, env = "IDENTITY_CLIENT_ID", default_value = token_validator::BOOKING_WEB_CLIENT)]
    pub client_id: String,
    /// `/metrics` and `/healthz`.
    #[arg(long, env = "IDENTITY_ADMIN_ADDR", default_value = "0.0.0.0:9100")]
    pub admin_addr: SocketAddr,
    /// Clock skew tolerated on exp/nbf/iat; a connection token is cleared at exp plus this.
    #[arg(long, env = "IDENTITY_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub leeway: Duration,
    /// At most one discovery/JWKS fetch per interval (unknown kids trigger a fetch).
    #[arg(long, env = "IDENTITY_JWKS_REFRESH_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub jwks_refresh_interval: Duration,
    /// Timeout of each HTTP request to the issuer.
    #[arg(long, env = "IDENTITY_HTTP_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub http_timeout: Duration,
    /// Cookie holding the access token, read by the header method when there is no
    /// `Authorization: Bearer` header. Off unless set.
    #[arg(long, env = "IDENTITY_COOKIE_NAME")]
    pub cookie_name: Option<String>,
    /// Connections tracked for token expiry; logins beyond are refused.
    #[arg(long, env = "IDENTITY_MAX_SESSIONS", default_value_t = 200_000)]
    pub max_sessions: usize,
    /// Connections tracked per user; a login beyond clears the token of the user's connection
    /// that expires first (RES does not tell services when a connection closes).
    #[arg(long, env = "IDENTITY_MAX_SESSIONS_PER_USER", default_value_t = 50)]
    pub max_sessions_per_user: usize,
}

impl Config {
    pub fn validator_config(&self) -> ValidatorConfig {
        let mut v = ValidatorConfig::new(&self.issuer_url, &self.audience);
        v.allowed_azp = vec![self.client_id.clone()];
        v.discovery_url = self.discovery_url.clone();
        v.leeway = self.leeway;
        v.refresh_min_interval = self.jwks_refresh_interval;
        v.http_timeout = self.http_timeout;
        v
    }

    pub fn settings(&self) -> Settings {
        Settings {
            validator: self.validator_config(),
            cookie_name: self.cookie_name.clone(),
            max_sessions: self.max_sessions,
            max_sessions_per_user: self.max_sessions_per_user,
        }
    }
}

/// `500ms`, `30s`, `5m`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    match unit.trim() {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration unit in {s:?} (ms, s or m)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validator_settings() {
        let c =
            Config::try_parse_from(["identity-auth", "--issuer-url", "https://id.example.com/realms/booking"]).unwrap();
        assert_eq!(c.admin_addr.to_string(), "0.0.0.0:9100");
        let v = c.validator_config();
        assert_eq!(v.audience, "booking-api");
        assert_eq!(v.allowed_azp, ["booking-web"]);
        assert_eq!(v.role_clients, ["booking-api"]);
        assert_eq!(v.leeway, Duration::from_secs(30));
        assert!(Config::try_parse_from(["identity-auth"]).is_err(), "the issuer is required");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("s").is_err());
    }
}
