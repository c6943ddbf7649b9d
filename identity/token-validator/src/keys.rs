//! Fetching the issuer's discovery document and JWKS with openidconnect, and picking keys.

use std::time::{Duration, Instant};

use openidconnect::core::{CoreJsonWebKey, CoreJsonWebKeySet, CoreProviderMetadata};
use openidconnect::http::header::ACCEPT;
use openidconnect::http::{HeaderValue, Method, StatusCode};
use openidconnect::reqwest;
use openidconnect::url::Url;
use openidconnect::{
    AsyncHttpClient, DiscoveryError, HttpClientError, IssuerUrl, JsonWebKey, JsonWebKeyAlgorithm, JsonWebKeySetUrl,
    JsonWebKeyUse, JwsSigningAlgorithm,
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
            Some(kid) => keys.filter(|k| k.key_id().is_some_and(|id| id.as_str() == kid)).collect(),
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
        DiscoveryError::Request(e) => ValidationError::IssuerUnavailable { detail: format!("{what}: {}", chain(&e)) },
        // Non-200 answers are usually an issuer that is starting or being redeployed.
        DiscoveryError::Response(status, _, msg) if status != StatusCode::OK => {
            ValidationError::IssuerUnavailable { detail: format!("{what}: {msg}") }
        }
        other => ValidationError::IssuerMisconfigured { detail: format!("{what}: {}", chain(&other)) },
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
        Ok(Self { http, issuer, discovery_base, overall_timeout: http_timeout * 2 + Duration::from_millis(500) })
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
        tokio::time::timeout(self.overall_timeout, work).await.unwrap_or_else(|_| {
            Err(ValidationError::IssuerUnavailable {
                detail: format!("no answer from {} in {:?}", self.issuer.as_str(), self.overall_timeout),
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
                    .map_err(|e| map_fetch_error(&format!("discovery {}", self.issuer.as_str()), e));
            }
            Some(base) => self.discover_via(base).await?,
        };
        let uri = metadata.jwks_uri().clone();
        let keys = self.jwks(&uri).await?;
        Ok((uri, keys))
    }

    /// Discovery from an internal URL while still requiring the public issuer in the document,
    /// the Keycloak setup with `KC_HOSTNAME_BACKCHANNEL_DYNAMIC=true`.
    async fn discover_via(&self, base: &IssuerUrl) -> Result<CoreProviderMetadata, ValidationError> {
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
        let response = self.http.call(request).await.map_err(|e| map_fetch_error(&what, DiscoveryError::Request(e)))?;
        if response.status() != StatusCode::OK {
            return Err(ValidationError::IssuerUnavailable {
                detail: format!("{what}: HTTP status code {}", response.status()),
            });
        }
        let metadata: CoreProviderMetadata = serde_json::from_slice(response.body())
            .map_err(|e| ValidationError::IssuerMisconfigured { detail: format!("{what}: {e}") })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    // Shaped like Keycloak 26's realm discovery document: long algorithm lists including values
    // openidconnect has no variant for ("RSA1_5", "none", "query.jwt", CIBA grant types...).
    const KEYCLOAK_DISCOVERY: &str = r#"{
      "issuer": "https://id.example.com/realms/booking",
      "authorization_endpoint": "https://id.example.com/realms/booking/protocol/openid-connect/auth",
      "token_endpoint": "https://id.example.com/realms/booking/protocol/openid-connect/token",
      "userinfo_endpoint": "https://id.example.com/realms/booking/protocol/openid-connect/userinfo",
      "end_session_endpoint": "https://id.example.com/realms/booking/protocol/openid-connect/logout",
      "jwks_uri": "https://id.example.com/realms/booking/protocol/openid-connect/certs",
      "check_session_iframe": "https://id.example.com/realms/booking/protocol/openid-connect/login-status-iframe.html",
      "frontchannel_logout_supported": true,
      "grant_types_supported": ["authorization_code", "implicit", "refresh_token", "password",
        "client_credentials", "urn:openid:params:grant-type:ciba",
        "urn:ietf:params:oauth:grant-type:device_code"],
      "acr_values_supported": ["0", "1"],
      "response_types_supported": ["code", "none", "id_token", "token", "id_token token",
        "code id_token", "code token", "code id_token token"],
      "subject_types_supported": ["public", "pairwise"],
      "id_token_signing_alg_values_supported": ["PS384", "RS384", "EdDSA", "ES384", "HS256",
        "HS512", "ES256", "RS256", "HS384", "ES512", "PS256", "PS512", "RS512"],
      "id_token_encryption_alg_values_supported": ["ECDH-ES+A256KW", "RSA-OAEP", "RSA-OAEP-256",
        "RSA1_5", "ECDH-ES"],
      "id_token_encryption_enc_values_supported": ["A256GCM", "A128CBC-HS256"],
      "userinfo_signing_alg_values_supported": ["RS256", "ES512", "none"],
      "request_object_signing_alg_values_supported": ["RS256", "none"],
      "response_modes_supported": ["query", "fragment", "form_post", "query.jwt", "fragment.jwt",
        "form_post.jwt", "jwt"],
      "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic",
        "client_secret_post", "tls_client_auth", "client_secret_jwt"],
      "claims_supported": ["aud", "sub", "iss", "auth_time", "name", "given_name",
        "family_name", "preferred_username", "email", "acr"],
      "claim_types_supported": ["normal"],
      "claims_parameter_supported": true,
      "scopes_supported": ["openid", "basic", "email", "web-origins", "profile", "acr",
        "offline_access", "roles"],
      "request_parameter_supported": true,
      "request_uri_parameter_supported": true,
      "require_request_uri_registration": true,
      "code_challenge_methods_supported": ["plain", "S256"],
      "tls_client_certificate_bound_access_tokens": true,
      "mtls_endpoint_aliases": { "token_endpoint": "https://id.example.com/realms/booking/protocol/openid-connect/token" },
      "authorization_response_iss_parameter_supported": true
    }"#;

    // Keycloak publishes a signing key and an encryption key side by side.
    const KEYCLOAK_JWKS: &str = r#"{"keys": [
      {"kid": "enc-1", "kty": "RSA", "alg": "RSA-OAEP", "use": "enc", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"},
      {"kid": "sig-1", "kty": "RSA", "alg": "RS256", "use": "sig", "n": "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ", "e": "AQAB"},
      {"kid": "odd-1", "kty": "weird"}
    ]}"#;

    #[test]
    fn parses_keycloak_shaped_discovery_document() {
        let meta: CoreProviderMetadata = serde_json::from_str(KEYCLOAK_DISCOVERY).unwrap();
        assert_eq!(meta.issuer().as_str(), "https://id.example.com/realms/booking");
        assert_eq!(meta.jwks_uri().as_str(), "https://id.example.com/realms/booking/protocol/openid-connect/certs");
    }

    #[test]
    fn keycloak_jwks_signing_key_is_selected_and_encryption_key_ignored() {
        let keys: CoreJsonWebKeySet = serde_json::from_str(KEYCLOAK_JWKS).unwrap();
        let snapshot = KeySnapshot {
            generation: 1,
            jwks_uri: JsonWebKeySetUrl::new("https://id.example.com/certs".into()).unwrap(),
            keys,
            fetched_at: Instant::now(),
        };
        let by_kid = snapshot.candidates(Some("sig-1"), Algorithm::Rs256);
        assert_eq!(by_kid.len(), 1);
        assert!(snapshot.candidates(Some("nope"), Algorithm::Rs256).is_empty());
        // Without kid only compatible signing keys are candidates: not the RSA-OAEP key, and not
        // the RS256 key for an ES256 token.
        let no_kid = snapshot.candidates(None, Algorithm::Rs256);
        assert_eq!(no_kid.len(), 1);
        assert_eq!(no_kid[0].key_id().unwrap().as_str(), "sig-1");
        assert!(snapshot.candidates(None, Algorithm::Es256).is_empty());
        assert!(snapshot.candidates(None, Algorithm::Ps256).is_empty());
    }
}
