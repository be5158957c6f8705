//! Access tokens: a cache that refreshes ahead of expiry, the shape of OAuth token responses,
//! and a form POST to a token endpoint.
//!
//! A token is refreshed a margin before it expires, not when a request bounces: a long download
//! or a 429 retry loop must not start with a token that dies half-way (providers.md §5).

use std::future::Future;
use std::time::Duration;

use chatlake_core::Secret;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Deserializer};
use tokio::sync::Mutex;
use tokio::time::Instant;
use url::Url;

use crate::client::HttpClient;
use crate::error::{ErrorKind, RequestError};

/// The refresh margin for tokens that live long enough: 5 minutes before expiry.
const DEFAULT_MARGIN: Duration = Duration::from_secs(5 * 60);
/// What a token endpoint that omits `expires_in` is assumed to give: the shortest lifetime
/// either provider documents.
const ASSUMED_LIFETIME: Duration = Duration::from_secs(3600);
/// A token endpoint answers at once or not at all; the client's own timeout is sized for
/// downloads.
const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A freshly fetched token and how long it lives from now.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: Secret,
    pub expires_in: Duration,
}

#[derive(Debug)]
struct Cached {
    token: Secret,
    refresh_at: Instant,
}

/// Holds one access token and refreshes it before it expires. Concurrent callers wait for one
/// refresh instead of each fetching their own (some providers revoke the old token when a new one
/// is issued).
#[derive(Debug, Default)]
pub struct TokenCache {
    slot: Mutex<Option<Cached>>,
    margin: Option<Duration>,
}

impl TokenCache {
    /// A cache with the default margin: 5 minutes, or 10% of the lifetime for tokens that live
    /// less than 50 minutes.
    pub fn new() -> Self {
        TokenCache::default()
    }

    /// A cache that refreshes `margin` before expiry (capped at half the lifetime).
    pub fn with_margin(margin: Duration) -> Self {
        TokenCache {
            slot: Mutex::default(),
            margin: Some(margin),
        }
    }

    /// How long before expiry a token of `lifetime` is refreshed.
    pub fn margin_for(&self, lifetime: Duration) -> Duration {
        match self.margin {
            Some(m) => m.min(lifetime / 2),
            None => DEFAULT_MARGIN.min(lifetime / 10),
        }
    }

    /// The cached token, or a fresh one from `fetch` if there is none or it is about to expire.
    pub async fn get_or_refresh<F, Fut, E>(&self, fetch: F) -> Result<Secret, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<AccessToken, E>>,
    {
        self.get_or_refresh_at(Instant::now, fetch).await
    }

    async fn get_or_refresh_at<F, Fut, E>(
        &self,
        now: impl Fn() -> Instant,
        fetch: F,
    ) -> Result<Secret, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<AccessToken, E>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some(cached) = slot.as_ref()
            && now() < cached.refresh_at
        {
            return Ok(cached.token.clone());
        }
        // Measured from before the request, so the lifetime is never overestimated.
        let requested_at = now();
        let fresh = fetch().await?;
        let keep = fresh.expires_in - self.margin_for(fresh.expires_in);
        tracing::debug!(
            lifetime_s = fresh.expires_in.as_secs(),
            refresh_in_s = keep.as_secs(),
            "fetched an access token"
        );
        *slot = Some(Cached {
            token: fresh.token.clone(),
            refresh_at: requested_at + keep,
        });
        Ok(fresh.token)
    }

    /// Forgets the token (after a `401`), so the next call fetches a new one.
    pub async fn invalidate(&self) {
        *self.slot.lock().await = None;
    }

    /// Forgets the token only if it is still `token`: after a `401`, a token another caller has
    /// already replaced is kept.
    pub async fn invalidate_if(&self, token: &Secret) {
        let mut slot = self.slot.lock().await;
        if slot.as_ref().is_some_and(|c| &c.token == token) {
            *slot = None;
        }
    }
}

/// An OAuth 2.0 token response. Unknown fields are ignored; `expires_in` may be a number or a
/// string (LINE WORKS sends `"86400"`).
#[derive(Debug, Clone, Deserialize)]
pub struct TokenResponse {
    pub access_token: Secret,
    #[serde(default)]
    pub token_type: Option<String>,
    #[serde(default, deserialize_with = "deserialize_optional_seconds")]
    pub expires_in: Option<Duration>,
    #[serde(default)]
    pub refresh_token: Option<Secret>,
    #[serde(default)]
    pub scope: Option<String>,
}

impl TokenResponse {
    /// The token and its lifetime (an hour when the endpoint does not say).
    pub fn into_access_token(self) -> AccessToken {
        AccessToken {
            token: self.access_token,
            expires_in: self.expires_in.unwrap_or(ASSUMED_LIFETIME),
        }
    }
}

/// Posts a form to a token endpoint and reads the token response. The form (which carries
/// secrets) never appears in errors; an error body's `error`/`error_description` does.
pub async fn post_token_form(
    client: &HttpClient,
    token_url: &Url,
    form: &[(&str, &str)],
) -> Result<TokenResponse, RequestError> {
    let response = client
        .post(token_url.clone())
        .timeout(TOKEN_REQUEST_TIMEOUT)
        .form(form)
        .send()
        .await
        .map_err(|e| RequestError::from_reqwest(Method::POST, token_url, e))?;
    let status = response.status();
    if status != StatusCode::OK {
        return Err(RequestError::from_response(Method::POST, token_url, response).await);
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| RequestError::from_reqwest(Method::POST, token_url, e))?;
    serde_json::from_slice::<TokenResponse>(&body).map_err(|e| {
        // serde_json's message quotes no input beyond the position, so no token leaks here.
        RequestError::new(
            Method::POST,
            token_url,
            ErrorKind::Protocol(format!("the token response is not understood: {e}")),
        )
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Unsigned(u64),
    Float(f64),
    Text(String),
}

fn seconds_from<E: serde::de::Error>(value: NumberOrString) -> Result<Duration, E> {
    let seconds = match value {
        NumberOrString::Unsigned(n) => return Ok(Duration::from_secs(n)),
        NumberOrString::Float(f) => f,
        NumberOrString::Text(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| E::custom(format!("expected a number of seconds, got {s:?}")))?,
    };
    if seconds.is_finite() && seconds >= 0.0 {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(E::custom(format!(
            "expected a non-negative number of seconds, got {seconds}"
        )))
    }
}

/// Serde helper: a number of seconds written as a number (`3599`) or a string (`"86400"`).
pub fn deserialize_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    seconds_from(NumberOrString::deserialize(d)?)
}

/// Serde helper: like [`deserialize_seconds`], for an optional field (`null` → `None`).
pub fn deserialize_optional_seconds<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    Option::<NumberOrString>::deserialize(d)?
        .map(seconds_from)
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn expires_in_is_a_number_or_a_string() {
        let parse = |json: &str| serde_json::from_str::<TokenResponse>(json).map(|t| t.expires_in);
        assert_eq!(
            parse(r#"{"access_token":"a","expires_in":"86400"}"#).unwrap(),
            Some(secs(86400))
        );
        assert_eq!(
            parse(r#"{"access_token":"a","expires_in":3599}"#).unwrap(),
            Some(secs(3599))
        );
        assert_eq!(
            parse(r#"{"access_token":"a","expires_in":" 60 "}"#).unwrap(),
            Some(secs(60))
        );
        assert_eq!(
            parse(r#"{"access_token":"a","expires_in":1.5}"#).unwrap(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse(r#"{"access_token":"a","expires_in":null}"#).unwrap(),
            None
        );
        assert_eq!(parse(r#"{"access_token":"a"}"#).unwrap(), None);
        assert!(parse(r#"{"access_token":"a","expires_in":"soon"}"#).is_err());
        assert!(parse(r#"{"access_token":"a","expires_in":-5}"#).is_err());

        #[derive(Deserialize)]
        struct Required {
            #[serde(deserialize_with = "deserialize_seconds")]
            ttl: Duration,
        }
        let r: Required = serde_json::from_str(r#"{"ttl":"15"}"#).unwrap();
        assert_eq!(r.ttl, secs(15));
    }

    #[test]
    fn token_response_reads_the_lineworks_shape_and_hides_the_token() {
        let t: TokenResponse = serde_json::from_str(
            r#"{"access_token":"kr1.abc","refresh_token":"kr1.def","scope":"monitoring.read",
                "token_type":"Bearer","expires_in":"86400","extra":1}"#,
        )
        .unwrap();
        assert_eq!(t.scope.as_deref(), Some("monitoring.read"));
        assert!(!format!("{t:?}").contains("kr1."));
        let a = t.into_access_token();
        assert_eq!(a.token.expose(), "kr1.abc");
        assert_eq!(a.expires_in, secs(86400));
    }

    #[test]
    fn margin_is_five_minutes_or_a_tenth_of_short_lifetimes() {
        let c = TokenCache::new();
        assert_eq!(c.margin_for(secs(86400)), secs(300));
        assert_eq!(c.margin_for(secs(3600)), secs(300));
        assert_eq!(c.margin_for(secs(600)), secs(60));
        assert_eq!(c.margin_for(secs(2)), Duration::from_millis(200));
        let c = TokenCache::with_margin(secs(60));
        assert_eq!(c.margin_for(secs(3600)), secs(60));
        assert_eq!(c.margin_for(secs(10)), secs(5));
    }

    fn fetcher(
        calls: &AtomicU32,
        expires_in: Duration,
    ) -> impl FnOnce() -> std::future::Ready<Result<AccessToken, String>> + '_ {
        move || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            std::future::ready(Ok(AccessToken {
                token: Secret::new(format!("t{n}")),
                expires_in,
            }))
        }
    }

    #[tokio::test]
    async fn caches_until_the_margin_then_refreshes() {
        let cache = TokenCache::new();
        let calls = AtomicU32::new(0);
        let t0 = Instant::now();
        let at = |s: u64| move || t0 + secs(s);

        let tok = cache
            .get_or_refresh_at(at(0), fetcher(&calls, secs(3600)))
            .await
            .unwrap();
        assert_eq!(tok.expose(), "t1");
        // Still fresh 3299 s later...
        let tok = cache
            .get_or_refresh_at(at(3299), fetcher(&calls, secs(3600)))
            .await
            .unwrap();
        assert_eq!(tok.expose(), "t1");
        // ...but refreshed inside the 5-minute margin.
        let tok = cache
            .get_or_refresh_at(at(3300), fetcher(&calls, secs(3600)))
            .await
            .unwrap();
        assert_eq!(tok.expose(), "t2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn invalidation_forces_a_new_token() {
        let cache = TokenCache::new();
        let calls = AtomicU32::new(0);
        let t1 = cache
            .get_or_refresh(fetcher(&calls, secs(3600)))
            .await
            .unwrap();
        // A stale 401 for a token that was already replaced keeps the new one.
        cache.invalidate_if(&Secret::new("other")).await;
        let same = cache
            .get_or_refresh(fetcher(&calls, secs(3600)))
            .await
            .unwrap();
        assert_eq!(same, t1);
        cache.invalidate_if(&t1).await;
        let t2 = cache
            .get_or_refresh(fetcher(&calls, secs(3600)))
            .await
            .unwrap();
        assert_eq!(t2.expose(), "t2");
        cache.invalidate().await;
        let t3 = cache
            .get_or_refresh(fetcher(&calls, secs(3600)))
            .await
            .unwrap();
        assert_eq!(t3.expose(), "t3");
    }

    #[tokio::test]
    async fn a_failed_fetch_caches_nothing() {
        let cache = TokenCache::new();
        let err = cache
            .get_or_refresh(|| std::future::ready(Err::<AccessToken, _>("down")))
            .await
            .unwrap_err();
        assert_eq!(err, "down");
        let calls = AtomicU32::new(0);
        let t = cache
            .get_or_refresh(fetcher(&calls, secs(60)))
            .await
            .unwrap();
        assert_eq!(t.expose(), "t1");
    }
}
