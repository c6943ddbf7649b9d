//! `identity-auth`: the RES auth service that turns OIDC access tokens into RES connection
//! tokens.
//!
//! Resource [`RID`] (`identity.session`), auth methods:
//!
//! - `auth.identity.session.login` `{"token": "<access token>"}`: validates the token
//!   (`token-validator`), publishes `conn.<cid>.token` with the [`ConnToken`] and `tid` = subject,
//!   then replies with the same object. On failure the connection token is left alone.
//! - `auth.identity.session.logout`: clears the connection token. Also the `subject` to give
//!   `system.tokenReset` to log a user (`tid` = `sub`) out of every connection.
//! - `auth.identity.session.header`: for the gateway's `headerAuth` (HTTP API requests); reads
//!   `Authorization: Bearer <token>` (or the configured cookie) from the request's HTTP context.
//!   The token lives for one request: no expiry is tracked.
//! - `auth.identity.session.wsheader`: the same for `wsHeaderAuth` (WebSocket upgrades); the
//!   token's expiry is tracked like a login's. (Resgate marks both kinds `isHttp`; only the
//!   method tells them apart, a client's `Upgrade` header does not.)
//!
//! A token set on a WebSocket connection is cleared again when the access token expires
//! ([`expiry`]), so a long-lived socket cannot outlive its token; the client keeps its session by
//! calling `login` again with a refreshed token, which replaces the token and its expiry.

pub mod config;
pub mod expiry;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use res_protocol::service::Header;
use res_service::{CallResponse, Handler, Request, ResError, Running, Service, code};
use serde::{Deserialize, Serialize};
use token_validator::{Principal, TokenValidator, ValidationError, ValidatorConfig};
use tokio_util::sync::CancellationToken;

use crate::expiry::ExpirySchedule;

/// The RES service name (first part of the resource IDs).
pub const SERVICE: &str = "identity";
/// The resource the auth methods live on. res-service routes only resources below the service
/// name, so this cannot be the bare `identity`.
pub const RID: &str = "identity.session";
/// The headerAuth value for the gateway (`--headauth`).
pub const HEADER_AUTH: &str = "identity.session.header";
/// The wsHeaderAuth value for the gateway (`--wsheadauth`).
pub const WS_HEADER_AUTH: &str = "identity.session.wsheader";

/// NATS header naming the instance that published a token event, so each instance can tell its
/// own events from a newer login handled by another instance.
const INSTANCE_HEADER: &str = "Identity-Auth-Instance";
/// NATS header on token events whose expiry the publisher schedules (WebSocket connections).
const TRACK_HEADER: &str = "Identity-Auth-Track";

/// The connection token: what every RES service sees in `token` of access and call requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnToken {
    pub sub: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub preferred_username: Option<String>,
    /// Realm roles plus the `booking-api` client roles, sorted.
    pub roles: Vec<String>,
    /// Unix seconds; services may refuse a token past this themselves (defence in depth).
    pub exp: u64,
}

impl ConnToken {
    pub fn from_principal(p: &Principal) -> ConnToken {
        ConnToken {
            sub: p.subject.clone(),
            name: p.name.clone(),
            email: p.email.clone(),
            preferred_username: p.preferred_username.clone(),
            roles: p.roles.iter().cloned().collect(),
            exp: p.expires_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        }
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// What the service needs besides NATS.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Issuer, audience, azp, leeway... The leeway also delays the expiry clear, so a token
    /// accepted within the skew is not cleared the moment it is set.
    pub validator: ValidatorConfig,
    /// Cookie read by the `header` method when there is no `Authorization: Bearer`.
    pub cookie_name: Option<String>,
    /// At most this many connections tracked for expiry; logins beyond are refused.
    pub max_sessions: usize,
    /// At most this many tracked connections per user; a login beyond clears the token of the
    /// user's connection that expires first.
    pub max_sessions_per_user: usize,
}

impl Settings {
    pub fn new(validator: ValidatorConfig) -> Settings {
        Settings { validator, cookie_name: None, max_sessions: 200_000, max_sessions_per_user: 50 }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    result: &'static str,
}

/// Scrape-time metrics read from the validator and the schedule.
#[derive(Debug)]
struct StateCollector {
    validator: TokenValidator,
    schedule: Arc<ExpirySchedule>,
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let refreshes = ConstCounter::new(self.validator.fetch_count());
        let e = encoder.encode_descriptor(
            "identity_jwks_refresh",
            "Issuer discovery/JWKS fetch attempts by the token validator (successful or not)",
            None,
            refreshes.metric_type(),
        )?;
        refreshes.encode(e)?;
        let tracked = ConstGauge::new(self.schedule.len() as i64);
        let e = encoder.encode_descriptor(
            "identity_auth_tracked_connections",
            "Connections whose token has a scheduled expiry",
            None,
            tracked.metric_type(),
        )?;
        tracked.encode(e)
    }
}

/// Outcome label for `identity_auth_requests_total`.
fn result_label(e: &ValidationError) -> &'static str {
    match e {
        ValidationError::Expired => "expired",
        e if e.is_token_rejected() => "invalid",
        _ => "error",
    }
}

struct Auth {
    validator: TokenValidator,
    schedule: Arc<ExpirySchedule>,
    client: async_nats::Client,
    instance: String,
    grace: Duration,
    cookie_name: Option<String>,
    requests: Family<RequestLabels, Counter>,
}

type Failure = (&'static str, ResError);

impl Auth {
    fn count(&self, method: &'static str, result: &'static str) {
        self.requests.get_or_create(&RequestLabels { method, result }).inc();
    }

    async fn finish(&self, method: &'static str, r: Result<CallResponse, Failure>) -> Result<CallResponse, ResError> {
        match r {
            Ok(v) => {
                self.count(method, "ok");
                Ok(v)
            }
            Err((label, e)) => {
                self.count(method, label);
                Err(e)
            }
        }
    }

    fn deadline(&self, exp: u64) -> tokio::time::Instant {
        let at = UNIX_EPOCH + Duration::from_secs(exp) + self.grace;
        tokio::time::Instant::now() + at.duration_since(SystemTime::now()).unwrap_or_default()
    }

    /// Publishes `conn.<cid>.token`. Sent on the client the reply also goes out on, so the
    /// gateway applies the token before it sees the reply.
    async fn publish_token(&self, cid: &str, token: Option<&ConnToken>, track: bool) -> Result<(), ResError> {
        let body = match token {
            Some(t) => serde_json::json!({ "token": t, "tid": t.sub }),
            None => serde_json::json!({ "token": null }),
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(INSTANCE_HEADER, self.instance.as_str());
        if track {
            headers.insert(TRACK_HEADER, "1");
        }
        let payload = serde_json::to_vec(&body).map_err(ResError::internal)?;
        self.client
            .publish_with_headers(format!("conn.{cid}.token"), headers, payload.into())
            .await
            .map_err(ResError::internal)
    }

    async fn validate(&self, cid: &str, token: &str) -> Result<ConnToken, Failure> {
        match self.validator.validate(token).await {
            Ok(p) => Ok(ConnToken::from_principal(&p)),
            Err(e) => {
                if e.is_token_rejected() {
                    tracing::info!(cid, reason = %e.detail(), "token refused");
                } else {
                    tracing::warn!(cid, error = %e, detail = %e.detail(), "token validation failed");
                }
                Err((result_label(&e), ResError::new(e.res_code(), e.to_string())))
            }
        }
    }

    /// Sets the validated token on the connection, scheduling its expiry when `track`.
    async fn set_token(&self, cid: &str, token: &ConnToken, track: bool) -> Result<(), Failure> {
        // Published before scheduling: a deadline already due must not fire a clear that the
        // gateway would apply before this token.
        self.publish_token(cid, Some(token), track).await.map_err(|e| ("error", e))?;
        if !track {
            // An untracked token replaces a tracked one: its old deadline no longer applies.
            self.schedule.cancel(cid);
            return Ok(());
        }
        match self.schedule.schedule(cid, &token.sub, self.deadline(token.exp)) {
            Ok(None) => {}
            Ok(Some(evicted)) => {
                tracing::info!(cid = %evicted, sub = %token.sub, "too many connections of one user; clearing the oldest");
                if let Err(e) = self.publish_token(&evicted, None, false).await {
                    tracing::warn!(cid = %evicted, error = %e, "clearing an evicted connection's token failed");
                }
            }
            Err(_) => {
                tracing::error!(cid, tracked = self.schedule.len(), "expiry schedule full; refusing login");
                let _ = self.publish_token(cid, None, false).await;
                return Err(("error", ResError::new(code::INTERNAL_ERROR, "too many sessions")));
            }
        }
        Ok(())
    }

    async fn login(&self, req: &Request) -> Result<CallResponse, Failure> {
        #[derive(Deserialize)]
        struct Params {
            token: String,
        }
        let cid = valid_cid(req.cid()).map_err(|e| ("invalid", e))?;
        let params: Params = req.params().map_err(|e| ("invalid", e))?;
        let token = self.validate(cid, &params.token).await?;
        self.set_token(cid, &token, true).await?;
        tracing::info!(cid, sub = %token.sub, exp = token.exp, "login");
        CallResponse::result(&token).map_err(|e| ("error", e))
    }

    async fn logout(&self, req: &Request) -> Result<CallResponse, Failure> {
        let cid = valid_cid(req.cid()).map_err(|e| ("invalid", e))?;
        self.publish_token(cid, None, false).await.map_err(|e| ("error", e))?;
        self.schedule.cancel(cid);
        tracing::info!(cid, "logout");
        Ok(CallResponse::null())
    }

    /// headerAuth (`track` false: one HTTP request) or wsHeaderAuth (`track` true).
    async fn header(&self, req: &Request, track: bool) -> Result<CallResponse, Failure> {
        let cid = valid_cid(req.cid()).map_err(|e| ("invalid", e))?;
        let header = &req.http().header;
        let Some(raw) = bearer_token(header, self.cookie_name.as_deref()) else {
            // No meta status: the gateway goes on without a token, as with Resgate.
            return Err(("none", ResError::new(code::ACCESS_DENIED, "no bearer token")));
        };
        let token = self.validate(cid, &raw).await?;
        self.set_token(cid, &token, track).await?;
        // Let the server ack the token event before the reply goes out. NATS already orders the
        // two, but resgate-rs routes token events and replies through different tasks and reads
        // the HTTP request's token right after the reply; the extra round trip gives the token
        // event a head start (mitigation only, see the README).
        let _ = self.client.flush().await;
        tracing::debug!(cid, sub = %token.sub, track, "header auth");
        CallResponse::result(&token).map_err(|e| ("error", e))
    }

    async fn expire(&self, cid: String) {
        tracing::info!(cid, "connection token expired; clearing it");
        if let Err(e) = self.publish_token(&cid, None, false).await {
            tracing::warn!(cid, error = %e, "publishing token expiry failed");
        }
    }

    /// Keeps the schedule in line with token events of other publishers: a newer login handled by
    /// another instance replaces (or takes over) the expiry, anything else cancels ours.
    fn observe(&self, msg: &async_nats::Message) {
        let mut parts = msg.subject.as_str().split('.');
        let (Some("conn"), Some(cid), Some("token"), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let header = |name: &str| msg.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
        let from = header(INSTANCE_HEADER);
        if from.as_deref() == Some(self.instance.as_str()) {
            return;
        }
        #[derive(Deserialize)]
        struct Event {
            token: Option<ConnToken>,
        }
        let tracked_exp = match (&from, header(TRACK_HEADER)) {
            (Some(_), Some(_)) => {
                serde_json::from_slice::<Event>(&msg.payload).ok().and_then(|e| e.token).map(|t| (t.sub, t.exp))
            }
            _ => None,
        };
        match tracked_exp {
            Some((sub, exp)) => {
                // The instance that set the token clears any connection it evicted.
                if self.schedule.schedule(cid, &sub, self.deadline(exp)).is_err() {
                    tracing::warn!(cid, "expiry schedule full; not tracking a token set by another instance");
                }
            }
            None => {
                self.schedule.cancel(cid);
            }
        }
    }
}

/// A connection ID must be one NATS subject token, or `conn.<cid>.token` could address others.
fn valid_cid(cid: &str) -> Result<&str, ResError> {
    let ok = !cid.is_empty() && cid.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>'));
    if ok { Ok(cid) } else { Err(ResError::invalid_request()) }
}

/// The access token from `Authorization: Bearer <token>` (scheme case-insensitive), else from
/// the cookie `cookie_name`.
pub fn bearer_token(header: &Header, cookie_name: Option<&str>) -> Option<String> {
    let from_auth = header.get("Authorization").into_iter().flatten().find_map(|v| {
        let (scheme, rest) = v.trim().split_once(' ')?;
        let t = rest.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !t.is_empty()).then(|| t.to_owned())
    });
    from_auth.or_else(|| {
        let name = cookie_name?;
        header.get("Cookie").into_iter().flatten().flat_map(|v| v.split(';')).find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            let v = v.trim().trim_matches('"');
            (k.trim() == name && !v.is_empty()).then(|| v.to_owned())
        })
    })
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("token validator: {0} ({detail})", detail = .0.detail())]
    Validator(ValidationError),
    #[error("RES service: {0}")]
    Service(res_service::StartError),
    #[error("subscribe to token events: {0}")]
    Subscribe(async_nats::SubscribeError),
}

/// Builds the validator and loads the issuer's keys now, so a wrong issuer shows at start. An
/// unreachable issuer is only logged: it may start after us, and keys load on first use.
pub async fn validator(config: ValidatorConfig) -> Result<TokenValidator, ValidationError> {
    match TokenValidator::discover(config.clone()).await {
        Ok(v) => Ok(v),
        Err(e @ ValidationError::IssuerUnavailable { .. }) => {
            tracing::warn!(error = %e, detail = %e.detail(), "issuer unreachable at start; keys load on first login");
            TokenValidator::new(config)
        }
        Err(e) => Err(e),
    }
}

/// A running identity-auth service.
pub struct IdentityAuth {
    running: Running,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    schedule: Arc<ExpirySchedule>,
    validator: TokenValidator,
}

impl std::fmt::Debug for IdentityAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityAuth").field("schedule", &self.schedule).finish_non_exhaustive()
    }
}

impl IdentityAuth {
    /// Starts serving on `client`; metrics go to `registry`.
    pub async fn start(
        client: async_nats::Client,
        settings: Settings,
        registry: &mut Registry,
    ) -> Result<IdentityAuth, StartError> {
        let grace = settings.validator.leeway;
        let validator = validator(settings.validator).await.map_err(StartError::Validator)?;
        let schedule = Arc::new(ExpirySchedule::new(settings.max_sessions, settings.max_sessions_per_user));
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "identity_auth_requests",
            "Auth requests by method (login, logout, header, wsheader) and result (ok, invalid, expired, error, none)",
            requests.clone(),
        );
        registry
            .register_collector(Box::new(StateCollector { validator: validator.clone(), schedule: schedule.clone() }));
        let auth = Arc::new(Auth {
            validator: validator.clone(),
            schedule: schedule.clone(),
            client: client.clone(),
            instance: format!("{:016x}", rand::random::<u64>()),
            grace,
            cookie_name: settings.cookie_name,
            requests,
        });

        // Subscribed before serving, so no token event of a login we answer is missed.
        let mut events = client.subscribe("conn.*.token").await.map_err(StartError::Subscribe)?;
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        {
            let (auth, stop) = (auth.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        m = events.next() => match m {
                            Some(m) => auth.observe(&m),
                            None => break,
                        },
                    }
                }
            }));
        }
        {
            let (auth, stop) = (auth.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let a = auth.clone();
                auth.schedule
                    .run(stop, move |cid| {
                        let a = a.clone();
                        async move { a.expire(cid).await }
                    })
                    .await;
            }));
        }

        let method = |name: &'static str| {
            let auth = auth.clone();
            move |req: Request| {
                let auth = auth.clone();
                async move {
                    let r = match name {
                        "login" => auth.login(&req).await,
                        "logout" => auth.logout(&req).await,
                        "wsheader" => auth.header(&req, true).await,
                        _ => auth.header(&req, false).await,
                    };
                    auth.finish(name, r).await
                }
            }
        };
        let svc = Service::new(SERVICE).with_metrics(registry).handle(
            RID,
            Handler::new()
                .auth("login", method("login"))
                .auth("logout", method("logout"))
                .auth("header", method("header"))
                .auth("wsheader", method("wsheader")),
        );
        let running = svc.start(client).await.map_err(StartError::Service)?;
        tracing::info!(rid = RID, header_auth = HEADER_AUTH, "identity-auth serving");
        Ok(IdentityAuth { running, stop, tasks, schedule, validator })
    }

    /// Connections with a scheduled token expiry.
    pub fn tracked_connections(&self) -> usize {
        self.schedule.len()
    }

    pub fn validator(&self) -> &TokenValidator {
        &self.validator
    }

    /// Stops taking requests, finishes those in flight, then stops the expiry timer. Expiries of
    /// this instance are lost with it (other instances keep theirs); see the README.
    pub async fn shutdown(self) {
        self.running.shutdown().await;
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pairs: &[(&str, &str)]) -> Header {
        let mut h = Header::new();
        for (k, v) in pairs {
            h.entry((*k).to_owned()).or_default().push((*v).to_owned());
        }
        h
    }

    #[test]
    fn bearer_from_authorization_or_cookie() {
        assert_eq!(bearer_token(&header(&[("Authorization", "Bearer abc")]), None).as_deref(), Some("abc"));
        assert_eq!(bearer_token(&header(&[("Authorization", "bearer  abc ")]), None).as_deref(), Some("abc"));
        assert_eq!(bearer_token(&header(&[("Authorization", "Basic dXNlcg==")]), None), None);
        assert_eq!(bearer_token(&header(&[("Authorization", "Bearer ")]), None), None);
        assert_eq!(bearer_token(&header(&[]), Some("at")), None);
        let cookies = header(&[("Cookie", "a=1; at=tok; b=2")]);
        assert_eq!(bearer_token(&cookies, Some("at")).as_deref(), Some("tok"));
        assert_eq!(bearer_token(&cookies, None), None, "cookies only when configured");
        let both = header(&[("Authorization", "Bearer hdr"), ("Cookie", "at=tok")]);
        assert_eq!(bearer_token(&both, Some("at")).as_deref(), Some("hdr"), "the header wins");
    }

    #[test]
    fn connection_ids_must_be_one_subject_token() {
        assert!(valid_cid("c3f1a9").is_ok());
        for bad in ["", "a.b", "*", ">", "a b", "a\tb"] {
            assert!(valid_cid(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn token_shape() {
        let p = Principal {
            subject: "u1".into(),
            name: Some("Alice".into()),
            email: None,
            preferred_username: Some("alice".into()),
            roles: ["operator".to_owned(), "customer".to_owned()].into(),
            expires_at: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            token_id: Some("j".into()),
            session_id: None,
        };
        let t = serde_json::to_value(ConnToken::from_principal(&p)).unwrap();
        assert_eq!(
            t,
            serde_json::json!({"sub": "u1", "name": "Alice", "email": null, "preferred_username": "alice",
                "roles": ["customer", "operator"], "exp": 1_800_000_000u64})
        );
    }
}
