//! Getting an access token: a service account's JWT bearer grant (RFC 7523), or a token given
//! as is.
//!
//! The service account signs a short JWT (RS256, `iss` = client id, `sub` = service account)
//! with the app's private key and posts it to the token endpoint with the client secret. The
//! token is cached and refreshed before it expires ([`TokenCache`]); a `401` from the API drops it
//! so the next attempt fetches a new one.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chatlake_core::Secret;
use chatlake_http::{HttpClient, RequestError, TokenCache, post_token_form};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use url::Url;

use crate::error::Error;

/// How long the JWT assertion is valid; the token endpoint only needs it for the exchange.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// An RSA private key ready to sign with. Its `Debug` prints `***`.
#[derive(Clone)]
pub struct SigningKey(EncodingKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

impl SigningKey {
    /// Reads a PEM private key (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`) and proves it
    /// can sign, so a bad key fails at `validate` rather than on the first request. The error
    /// never quotes the key.
    pub fn from_pem(pem: &[u8]) -> Result<SigningKey, String> {
        let describe = |e: jsonwebtoken::errors::Error| {
            format!("not a usable RSA private key in PEM form ({:?})", e.kind())
        };
        let key = EncodingKey::from_rsa_pem(pem).map_err(describe)?;
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &serde_json::json!({}), &key)
            .map_err(describe)?;
        Ok(SigningKey(key))
    }
}

/// Where the service account's private key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Given inline (already parsed at build time).
    Inline(SigningKey),
    /// A PEM file, read when the source starts.
    File(PathBuf),
}

/// A LINE WORKS service account.
#[derive(Debug, Clone)]
pub struct ServiceAccount {
    pub client_id: String,
    pub client_secret: Secret,
    pub service_account: String,
    pub key: KeySource,
    pub token_url: Url,
    pub scope: String,
}

/// How the source authenticates, as configured.
#[derive(Debug, Clone)]
pub enum Auth {
    ServiceAccount(ServiceAccount),
    Bearer(Secret),
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    iat: u64,
    exp: u64,
}

/// Hands out access tokens while the source runs.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per running source, never moved in a loop"
)]
pub enum Authenticator {
    ServiceAccount {
        account: ServiceAccount,
        key: SigningKey,
        cache: TokenCache,
    },
    Bearer(Secret),
}

impl Authenticator {
    /// Loads what `auth` needs (reads the private key file).
    pub async fn start(auth: &Auth) -> Result<Authenticator, Error> {
        match auth {
            Auth::Bearer(token) => Ok(Authenticator::Bearer(token.clone())),
            Auth::ServiceAccount(account) => {
                let key = match &account.key {
                    KeySource::Inline(key) => key.clone(),
                    KeySource::File(path) => {
                        let pem = tokio::fs::read(path).await.map_err(|e| Error::Key {
                            path: path.clone(),
                            message: e.to_string(),
                        })?;
                        SigningKey::from_pem(&pem).map_err(|message| Error::Key {
                            path: path.clone(),
                            message,
                        })?
                    }
                };
                Ok(Authenticator::ServiceAccount {
                    account: account.clone(),
                    key,
                    cache: TokenCache::new(),
                })
            }
        }
    }

    /// True if a refused token can be replaced by a fresh one.
    pub fn can_refresh(&self) -> bool {
        matches!(self, Authenticator::ServiceAccount { .. })
    }

    /// A valid access token, fetching a new one if the cached one is about to expire.
    pub async fn token(&self, client: &HttpClient) -> Result<Secret, RequestError> {
        match self {
            Authenticator::Bearer(token) => Ok(token.clone()),
            Authenticator::ServiceAccount {
                account,
                key,
                cache,
            } => {
                cache
                    .get_or_refresh(|| async {
                        let assertion = sign_assertion(account, key)?;
                        let form = [
                            ("assertion", assertion.as_str()),
                            ("grant_type", JWT_BEARER_GRANT),
                            ("client_id", account.client_id.as_str()),
                            ("client_secret", account.client_secret.expose()),
                            ("scope", account.scope.as_str()),
                        ];
                        let response = post_token_form(client, &account.token_url, &form).await?;
                        Ok(response.into_access_token())
                    })
                    .await
            }
        }
    }

    /// Drops `token` after the API refused it, so the next call fetches a new one.
    pub async fn refused(&self, token: &Secret) {
        if let Authenticator::ServiceAccount { cache, .. } = self {
            cache.invalidate_if(token).await;
        }
    }
}

fn sign_assertion(account: &ServiceAccount, key: &SigningKey) -> Result<String, RequestError> {
    let iat = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = Claims {
        iss: &account.client_id,
        sub: &account.service_account,
        iat,
        exp: iat + ASSERTION_LIFETIME.as_secs(),
    };
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key.0).map_err(|e| {
        RequestError::new(
            reqwest::Method::POST,
            &account.token_url,
            chatlake_http::ErrorKind::Local(format!("could not sign the JWT assertion: {e}")),
        )
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    /// The emulator's public test key pair (it protects nothing).
    pub(crate) const TEST_KEY: &str = chatlake_emulator::lineworks::PRIVATE_KEY_PEM;
    const TEST_PUBLIC_KEY: &str = chatlake_emulator::lineworks::PUBLIC_KEY_PEM;

    fn account(key: KeySource) -> ServiceAccount {
        ServiceAccount {
            client_id: "client-1".into(),
            client_secret: Secret::new("s3cret"),
            service_account: "svc@example.com".into(),
            key,
            token_url: Url::parse("https://auth.worksmobile.com/oauth2/v2.0/token").unwrap(),
            scope: "monitoring.read".into(),
        }
    }

    #[test]
    fn assertion_is_rs256_with_the_documented_claims() {
        let key = SigningKey::from_pem(TEST_KEY.as_bytes()).unwrap();
        assert_eq!(format!("{key:?}"), "SigningKey(***)");
        let jwt = sign_assertion(&account(KeySource::Inline(key.clone())), &key).unwrap();
        let mut v = Validation::new(Algorithm::RS256);
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        v.set_issuer(&["client-1"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &jwt,
            &DecodingKey::from_rsa_pem(TEST_PUBLIC_KEY.as_bytes()).unwrap(),
            &v,
        )
        .unwrap();
        assert_eq!(data.header.alg, Algorithm::RS256);
        assert_eq!(data.claims["sub"], "svc@example.com");
        let iat = data.claims["iat"].as_u64().unwrap();
        assert_eq!(data.claims["exp"].as_u64().unwrap(), iat + 3600);
    }

    #[test]
    fn bad_keys_are_refused_without_quoting_them() {
        let e = SigningKey::from_pem(
            b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
        )
        .unwrap_err();
        assert!(!e.contains("c2VjcmV0"), "{e}");
        assert!(SigningKey::from_pem(b"hello").is_err());
    }

    #[tokio::test]
    async fn a_missing_key_file_names_the_file() {
        let auth = Auth::ServiceAccount(account(KeySource::File("/nonexistent/key.pem".into())));
        let e = Authenticator::start(&auth).await.unwrap_err().to_string();
        assert!(e.contains("/nonexistent/key.pem"), "{e}");
        let bearer = Authenticator::start(&Auth::Bearer(Secret::new("t")))
            .await
            .unwrap();
        assert!(!bearer.can_refresh());
    }
}
