//! Fetching the issuer's discovery document and JWKS with openidconnect, and picking keys.

use std::time::{Duration, Instant};

use openidconnect::core::{CoreJsonWebKey, CoreJsonWebKeySet, CoreProviderMetadata};
use openidconnect::http::header::ACCEPT;
use openidconnect::http::{HeaderValue, Method, StatusCode};
use openidconnect::reqwest;
use openidconnect::url::Url;
use openidconnect::{
    AsyncHttpClient, DiscoveryError, HttpClientError, IssuerUrl, JsonWebKey, JsonWebKeyAlgorithm,
    JsonWebKeySetUrl, JsonWebKeyUse, JwsSigningAlgorithm,
};

use crate::config::Algorithm;
use crate::error::{ValidationError, chain};

/// One fetched key set. `generation` increases with every successful fetch, so callers that
/// waited for a refresh can tell whether someone else already did it.
#[derive(Debug)]
pub(crate) struct KeySnapshot {
    pub generation: u64,
    pub jwks_uri: JsonWebKeySetUrl,
    pub keys: CoreJsonWebKeySet,
    pub fetched_at: Instant,
}

impl KeySnapshot {
    /// Keys to try for a token: the one named by `kid`, or, without `kid`, every key whose type,
    /// use and declared `alg` fit the token's algorithm.
    pub fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<&CoreJsonWebKey> {
        let keys = self.keys.keys().iter();
        match kid {
            Some(kid) => keys
                .filter(|k| k.key_id().is_some_and(|id| id.as_str() == kid))
                .collect(),
            None => keys.filter(|k| compatible(k, alg)).collect(),
        }
    }
}

fn compatible(key: &CoreJsonWebKey, alg: Algorithm) -> bool {
    let core = alg.to_core();
    key.key_use().is_none_or(|u| u.allows_signature())
        && core.key_type().as_ref() == Some(key.key_type())
        && match key.signing_alg() {
            JsonWebKeyAlgorithm::Unspecified => true,
            JsonWebKeyAlgorithm::Algorithm(a) => *a == core,
            JsonWebKeyAlgorithm::Unsupported => false,
        }
}

type FetchError = DiscoveryError<HttpClientError<reqwest::Error>>;

fn map_fetch_error(what: &str, err: FetchError) -> ValidationError {
    match err {
        DiscoveryError::Request(e) => ValidationError::IssuerUnavailable {
            detail: format!("{what}: {}", chain(&e)),
        },
        // Non-200 answers are usually an issuer that is starting or being redeployed.
        DiscoveryError::Response(status, _, msg) if status != StatusCode::OK => {
            ValidationError::IssuerUnavailable {
                detail: format!("{what}: {msg}"),
            }
        }
        other => ValidationError::IssuerMisconfigured {
            detail: format!("{what}: {}", chain(&other)),
        },
    }
}

pub(crate) struct Fetcher {
    http: reqwest::Client,
    issuer: IssuerUrl,
    /// Set when discovery is read from another base URL than the public issuer.
    discovery_base: Option<IssuerUrl>,
    /// Bound for a whole refresh (discovery + JWKS), on top of reqwest's per-request timeout.
    overall_timeout: Duration,
}

impl Fetcher {
    pub fn new(
        issuer: IssuerUrl,
        discovery_base: Option<IssuerUrl>,
        http_timeout: Duration,
    ) -> Result<Self, ValidationError> {
        // No redirects: the issuer's URLs are configuration, and following redirects from an
        // HTTP response is an SSRF vector (openidconnect's docs recommend disabling them).
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(http_timeout)
            .timeout(http_timeout)
            .build()
            .map_err(|e| ValidationError::Config(format!("http client: {}", chain(&e))))?;
        Ok(Self {
            http,
            issuer,
            discovery_base,
            overall_timeout: http_timeout * 2 + Duration::from_millis(500),
        })
    }

    /// Discovery + JWKS, or only the JWKS when its URL is already known.
    pub async fn fetch(
        &self,
        known_jwks_uri: Option<&JsonWebKeySetUrl>,
    ) -> Result<(JsonWebKeySetUrl, CoreJsonWebKeySet), ValidationError> {
        let work = async {
            match known_jwks_uri {
                Some(uri) => Ok((uri.clone(), self.jwks(uri).await?)),
                None => self.discover().await,
            }
        };
        tokio::time::timeout(self.overall_timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(ValidationError::IssuerUnavailable {
                    detail: format!(
                        "no answer from {} in {:?}",
                        self.issuer.as_str(),
                        self.overall_timeout
                    ),
                })
            })
    }

    async fn jwks(&self, uri: &JsonWebKeySetUrl) -> Result<CoreJsonWebKeySet, ValidationError> {
        CoreJsonWebKeySet::fetch_async(uri, &self.http)
            .await
            .map_err(|e| map_fetch_error(&format!("jwks {}", uri.as_str()), e))
    }

    async fn discover(&self) -> Result<(JsonWebKeySetUrl, CoreJsonWebKeySet), ValidationError> {
        let metadata = match &self.discovery_base {
            // openidconnect's discovery also checks that the document names this issuer and
            // fetches the JWKS.
            None => {
                return CoreProviderMetadata::discover_async(self.issuer.clone(), &self.http)
                    .await
                    .map(|m| (m.jwks_uri().clone(), m.jwks().clone()))
                    .map_err(|e| {
                        map_fetch_error(&format!("discovery {}", self.issuer.as_str()), e)
                    });
            }
            Some(base) => self.discover_via(base).await?,
        };
        let uri = metadata.jwks_uri().clone();
        let keys = self.jwks(&uri).await?;
        Ok((uri, keys))
    }

    /// Discovery from an internal URL while still requiring the public issuer in the document,
    /// the Keycloak setup with `KC_HOSTNAME_BACKCHANNEL_DYNAMIC=true`.
    async fn discover_via(
        &self,
        base: &IssuerUrl,
    ) -> Result<CoreProviderMetadata, ValidationError> {
        let url: Url = base
            .join(".well-known/openid-configuration")
            .map_err(|e| ValidationError::Config(format!("discovery url: {e}")))?;
        let what = format!("discovery {url}");
        let request = openidconnect::http::Request::builder()
            .uri(url.as_str())
            .method(Method::GET)
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .body(Vec::new())
            .map_err(|e| ValidationError::Config(format!("{what}: {e}")))?;
        let response = self
            .http
            .call(request)
            .await
            .map_err(|e| map_fetch_error(&what, DiscoveryError::Request(e)))?;
        if response.status() != StatusCode::OK {
            return Err(ValidationError::IssuerUnavailable {
                detail: format!("{what}: HTTP status code {}", response.status()),
            });
        }
        let metadata: CoreProviderMetadata =
            serde_json::from_slice(response.body()).map_err(|e| {
                ValidationError::IssuerMisconfigured {
                    detail: format!("{what}: {e}"),
                }
            })?;
        if metadata.issuer() != &self.issuer {
            return Err(ValidationError::IssuerMisconfigured {
                detail: format!(
                    "{what}: document names issuer {} but {} is configured",
                    metadata.issuer().as_str(),
                    self.issuer.as_str()
                ),
            });
        }
        Ok(metadata)
    }
}
