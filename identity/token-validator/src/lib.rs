//! Validation of OIDC JWT access tokens (Keycloak, or the local `identity/oidc-issuer`).
//!
//! Discovery metadata and the JWKS come from the `openidconnect` crate
//! (`CoreProviderMetadata::discover_async`, `CoreJsonWebKeySet`). Signatures are verified with
//! openidconnect's `JsonWebKey::verify_signature` rather than `jsonwebtoken`: the keys are
//! already `CoreJsonWebKey`s (no JWK re-encoding between two libraries), it is one crypto stack
//! instead of two, and the algorithm allow-list is applied by us to the parsed header before a key
//! is even selected. openidconnect's `IdTokenVerifier` is not used because access tokens follow
//! different rules (see `claims`).
//!
//! ```no_run
//! # async fn demo(token: &str) -> Result<(), token_validator::ValidationError> {
//! use token_validator::{TokenValidator, ValidatorConfig};
//! let validator = TokenValidator::new(ValidatorConfig::booking(
//!     "https://id.example.com/realms/booking",
//! ))?;
//! match validator.validate(token).await {
//!     Ok(principal) => println!("{} {:?}", principal.subject, principal.roles),
//!     Err(err) => println!("{}: {err}", err.res_code()),
//! }
//! # Ok(()) }
//! ```

mod claims;
mod config;
mod error;
mod jws;
mod keys;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Instant, SystemTime};

use openidconnect::{IssuerUrl, JsonWebKey};

pub use crate::claims::Principal;
pub use crate::config::{Algorithm, BOOKING_API_AUDIENCE, BOOKING_WEB_CLIENT, ValidatorConfig};
pub use crate::error::{RES_ACCESS_DENIED, RES_INTERNAL_ERROR, RES_ISSUER_UNAVAILABLE, ValidationError};

use crate::keys::{Fetcher, KeySnapshot};

/// Validates access tokens; cheap to clone and share between tasks (one key cache).
#[derive(Clone)]
pub struct TokenValidator {
    inner: Arc<Inner>,
}

struct Inner {
    config: ValidatorConfig,
    fetcher: Fetcher,
    keys: RwLock<Option<Arc<KeySnapshot>>>,
    /// Serialises fetches: concurrent callers missing the same `kid` wait here and reuse the
    /// result of the one fetch instead of each hitting the issuer.
    refresh: tokio::sync::Mutex<RefreshState>,
    fetches: AtomicU64,
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    last_error: Option<ValidationError>,
}

impl std::fmt::Debug for TokenValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenValidator")
            .field("config", &self.inner.config)
            .field("fetches", &self.fetch_count())
            .finish_non_exhaustive()
    }
}

impl TokenValidator {
    /// Checks the configuration; does no I/O. Keys are fetched on first use.
    pub fn new(config: ValidatorConfig) -> Result<Self, ValidationError> {
        let issuer = IssuerUrl::new(config.issuer.clone())
            .map_err(|e| ValidationError::Config(format!("issuer {:?}: {e}", config.issuer)))?;
        let discovery_base = config
            .discovery_url
            .clone()
            .map(|u| {
                IssuerUrl::new(u.clone()).map_err(|e| ValidationError::Config(format!("discovery_url {u:?}: {e}")))
            })
            .transpose()?;
        if config.audience.is_empty() {
            return Err(ValidationError::Config("audience must not be empty".into()));
        }
        if config.algorithms.is_empty() {
            return Err(ValidationError::Config("no signature algorithm allowed".into()));
        }
        if config.http_timeout.is_zero() {
            return Err(ValidationError::Config("http_timeout must be positive".into()));
        }
        let fetcher = Fetcher::new(issuer, discovery_base, config.http_timeout)?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                fetcher,
                keys: RwLock::new(None),
                refresh: tokio::sync::Mutex::new(RefreshState::default()),
                fetches: AtomicU64::new(0),
            }),
        })
    }

    /// Like [`TokenValidator::new`], then fetches discovery and keys now, so a service can fail
    /// fast (or log loudly) at start when the issuer is unreachable.
    pub async fn discover(config: ValidatorConfig) -> Result<Self, ValidationError> {
        let validator = Self::new(config)?;
        validator.refresh_after(0).await?;
        Ok(validator)
    }

    /// The configuration in use.
    pub fn config(&self) -> &ValidatorConfig {
        &self.inner.config
    }

    /// How many times discovery or the JWKS was fetched (attempts, successful or not).
    pub fn fetch_count(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// Validates a compact-JWS access token and returns its principal.
    pub async fn validate(&self, token: &str) -> Result<Principal, ValidationError> {
        let cfg = &self.inner.config;
        let jws = jws::parse(token, &cfg.algorithms)?;
        let mut snapshot = self.current_keys().await?;
        if snapshot.candidates(jws.kid.as_deref(), jws.alg).is_empty() {
            // Unknown kid: the issuer may have rotated keys. One shared, rate-limited refetch.
            snapshot = self.refresh_after(snapshot.generation).await?;
        }
        let candidates = snapshot.candidates(jws.kid.as_deref(), jws.alg);
        if candidates.is_empty() {
            return Err(ValidationError::UnknownKey { kid: jws.kid });
        }
        let alg = jws.alg.to_core();
        let verified =
            candidates.iter().any(|key| key.verify_signature(&alg, jws.signing_input, &jws.signature).is_ok());
        if !verified {
            return Err(ValidationError::InvalidSignature);
        }
        let claims = claims::AccessTokenClaims::from_json(&jws.payload)?;
        claims::check(claims, cfg, SystemTime::now())
    }

    fn snapshot(&self) -> Option<Arc<KeySnapshot>> {
        self.inner.keys.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    async fn current_keys(&self) -> Result<Arc<KeySnapshot>, ValidationError> {
        match self.snapshot() {
            Some(s) if s.fetched_at.elapsed() < self.inner.config.jwks_max_age => Ok(s),
            // Stale keys: try to refresh, but an unreachable issuer must not turn valid tokens
            // into failures while the cached keys are still the best knowledge we have.
            Some(s) => match self.refresh_after(s.generation).await {
                Ok(fresh) => Ok(fresh),
                // refresh_after already warned once per attempt; don't repeat it per token.
                Err(err) => {
                    tracing::debug!(error = %err, "keeping cached keys after failed refresh");
                    Ok(s)
                }
            },
            None => self.refresh_after(0).await,
        }
    }

    /// Fetches keys unless another caller already did since generation `seen`, or the last
    /// attempt is younger than `refresh_min_interval` (then the previous outcome is returned).
    async fn refresh_after(&self, seen: u64) -> Result<Arc<KeySnapshot>, ValidationError> {
        let cfg = &self.inner.config;
        let mut state = self.inner.refresh.lock().await;
        let current = self.snapshot();
        if let Some(cur) = &current
            && cur.generation != seen
        {
            return Ok(Arc::clone(cur));
        }
        if let Some(at) = state.last_attempt
            && at.elapsed() < cfg.refresh_min_interval
        {
            return match (&state.last_error, current) {
                (Some(err), _) => Err(err.clone()),
                (None, Some(cur)) => Ok(cur),
                (None, None) => Err(ValidationError::IssuerUnavailable { detail: "no keys loaded yet".into() }),
            };
        }
        state.last_attempt = Some(Instant::now());
        self.inner.fetches.fetch_add(1, Ordering::Relaxed);
        let known_uri = current.as_ref().map(|c| &c.jwks_uri);
        match self.inner.fetcher.fetch(known_uri).await {
            Ok((jwks_uri, keys)) => {
                let snapshot = Arc::new(KeySnapshot {
                    generation: current.as_ref().map_or(1, |c| c.generation + 1),
                    jwks_uri,
                    keys,
                    fetched_at: Instant::now(),
                });
                tracing::info!(
                    issuer = %cfg.issuer,
                    keys = snapshot.keys.keys().len(),
                    generation = snapshot.generation,
                    "loaded issuer signing keys"
                );
                *self.inner.keys.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&snapshot));
                state.last_error = None;
                Ok(snapshot)
            }
            Err(err) => {
                tracing::warn!(issuer = %cfg.issuer, error = %err, detail = %err.detail(), "fetching issuer keys failed");
                state.last_error = Some(err.clone());
                Err(err)
            }
        }
    }
}
