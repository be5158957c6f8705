//! The Zoom API client every Zoom source uses: Server-to-Server OAuth tokens, the per-account
//! rate budgets, and one `GET` through the shared request loop, with Zoom's facts in its
//! classifier.
//!
//! * Tokens (`grant_type=account_credentials`, Basic client credentials) are cached and fetched
//!   again ahead of expiry. A `401` code 124 mid-run means another process took a new token and
//!   ours was revoked: the request is repeated once with a fresh token; a second `401` fails.
//! * Zoom limits per account and per rate-limit label, so every Zoom source of the process
//!   shares one [`RateLimiter`] per `(account, label)`. A `429` pauses that whole budget until
//!   `Retry-After` / `X-RateLimit-Reset`.
//! * `5xx`, `429` and transport failures are retried with backoff; other errors are returned for
//!   the caller to classify (a page token that expired, a conversation that does not exist).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatlake_core::Secret;
use chatlake_core::metrics::ComponentMetrics;
use chatlake_http::{
    AccessToken, Attempt, Credential, ErrorKind, Failure, HttpClient, Outcome, RateLimiter,
    RequestError, RequestLoop, RetryObserver, RetryPolicy, TokenCache, TokenResponse,
};
use reqwest::{Method, StatusCode};
use url::Url;

/// Zoom's rate-limit labels that chatlake calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Label {
    Medium,
    Heavy,
}

/// Server-to-Server OAuth credentials.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub account_id: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub token_url: Url,
}

/// The per-second budgets of one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    pub medium_per_second: NonZeroU32,
    pub heavy_per_second: NonZeroU32,
    /// Daily caps (Free: 2,000 Medium; Heavy and Resource-intensive share 30,000 on Pro).
    pub medium_per_day: Option<NonZeroU32>,
    pub heavy_per_day: Option<NonZeroU32>,
}

impl Budgets {
    /// This worker's part of the account's budgets when `workers` run at once (`run --shard`):
    /// each rate and daily cap divided by `workers`, rounded down, at least 1 per second (a
    /// cap that small would stop a worker altogether).
    pub fn divided(self, workers: u32) -> Budgets {
        let part =
            |n: NonZeroU32| NonZeroU32::new(n.get() / workers.max(1)).unwrap_or(NonZeroU32::MIN);
        Budgets {
            medium_per_second: part(self.medium_per_second),
            heavy_per_second: part(self.heavy_per_second),
            medium_per_day: self.medium_per_day.map(part),
            heavy_per_day: self.heavy_per_day.map(part),
        }
    }
}

/// The budget of `(account, label)`, shared by every Zoom source of the process. The first
/// source to ask sets its rate.
fn shared_budget(
    base: &Url,
    account: &str,
    label: Label,
    per_second: NonZeroU32,
    per_day: Option<NonZeroU32>,
) -> Budget {
    static BUDGETS: LazyLock<Mutex<HashMap<String, Budget>>> = LazyLock::new(Default::default);
    let key = format!(
        "{}|{account}|{label:?}",
        base.as_str().trim_end_matches('/')
    );
    BUDGETS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(key)
        .or_insert_with(|| Budget {
            per_second: RateLimiter::per_second(per_second),
            // Never more than the cap in any 24 hours, whenever the provider's day starts.
            per_day: per_day.map(|n| RateLimiter::sliding_window(n, Duration::from_secs(86_400))),
        })
        .clone()
}

/// The budget of one account and label.
#[derive(Debug, Clone)]
struct Budget {
    per_second: RateLimiter,
    per_day: Option<RateLimiter>,
}

impl Budget {
    async fn until_ready(&self) {
        if let Some(day) = &self.per_day {
            day.until_ready().await;
        }
        self.per_second.until_ready().await;
    }
}

/// Token caches per account and token URL: tokens of one account may coexist, but sharing one
/// spares the account's token endpoint and avoids revoking each other where they do not.
fn shared_tokens(credentials: &Credentials) -> Arc<TokenCache> {
    static CACHES: LazyLock<Mutex<HashMap<String, Arc<TokenCache>>>> =
        LazyLock::new(Default::default);
    let key = format!(
        "{}|{}|{}",
        credentials.token_url, credentials.account_id, credentials.client_id
    );
    CACHES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(key)
        .or_default()
        .clone()
}

/// An API error after retries, classified for the caller.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 code 300 to a request that carried a page token: restart the window.
    #[error("{0}")]
    PageTokenExpired(RequestError),
    /// The conversation, user or session does not exist or may not be read (3001, 3161, 1001):
    /// skip it.
    #[error("{0}")]
    Resource(RequestError),
    /// A fresh token was refused too.
    #[error(
        "{0}; Zoom refused a freshly fetched access token as well: check the app's scopes and that it is activated"
    )]
    Unauthorized(RequestError),
    #[error("{0}")]
    Other(#[from] RequestError),
}

impl ApiError {
    /// True for an expired page token: the listing starts again from its first page.
    pub fn is_page_token_expired(&self) -> bool {
        matches!(self, ApiError::PageTokenExpired(_))
    }
}

/// The client of one source.
pub struct ZoomApi {
    client: HttpClient,
    pub base: Url,
    credentials: Credentials,
    tokens: Arc<TokenCache>,
    medium: Budget,
    heavy: Budget,
    retry: RetryPolicy,
    metrics: Arc<ComponentMetrics>,
}

impl ZoomApi {
    pub fn new(
        client: HttpClient,
        base: Url,
        credentials: Credentials,
        budgets: Budgets,
        retry: RetryPolicy,
        metrics: Arc<ComponentMetrics>,
    ) -> ZoomApi {
        ZoomApi {
            medium: shared_budget(
                &base,
                &credentials.account_id,
                Label::Medium,
                budgets.medium_per_second,
                budgets.medium_per_day,
            ),
            heavy: shared_budget(
                &base,
                &credentials.account_id,
                Label::Heavy,
                budgets.heavy_per_second,
                budgets.heavy_per_day,
            ),
            tokens: shared_tokens(&credentials),
            client,
            base,
            credentials,
            retry,
            metrics,
        }
    }

    /// `{base}/{segments...}` (each segment percent-encoded) with `query`.
    pub fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    async fn fetch_token(&self) -> Result<AccessToken, RequestError> {
        let c = &self.credentials;
        let mut url = c.token_url.clone();
        url.query_pairs_mut()
            .append_pair("grant_type", "account_credentials")
            .append_pair("account_id", &c.account_id);
        let response = self
            .client
            .post(url.clone())
            .basic_auth(&c.client_id, Some(c.client_secret.expose()))
            .send()
            .await
            .map_err(|e| RequestError::from_reqwest(Method::POST, &url, e))?;
        if response.status() != StatusCode::OK {
            return Err(RequestError::from_response(Method::POST, &url, response).await);
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| RequestError::from_reqwest(Method::POST, &url, e))?;
        serde_json::from_slice::<TokenResponse>(&body)
            .map(TokenResponse::into_access_token)
            .map_err(|e| {
                RequestError::new(
                    Method::POST,
                    &url,
                    ErrorKind::Protocol(format!("the token response is not understood: {e}")),
                )
            })
    }

    /// `GET url` under `label`'s budget; the body of a `200`. Goes through the shared
    /// [`RequestLoop`] with [`classify`]'s Zoom facts.
    pub async fn get(&self, label: Label, url: &Url, window: &str) -> Result<Bytes, ApiError> {
        match self.fetch(label, url, window, u64::MAX).await? {
            Body::Complete(body) => Ok(body),
            Body::TooLarge { limit } => Err(ApiError::Other(RequestError::new(
                Method::GET,
                url,
                ErrorKind::Protocol(format!("the answer is larger than {limit} bytes")),
            ))),
        }
    }

    /// `GET url` of a file on Zoom's file host, under the Medium budget of the account (Zoom
    /// documents no label for it; Medium is the one chatlake already paces), with the same
    /// retries and token handling as the API. Reading stops as soon as the body passes
    /// `max_bytes`: [`Body::TooLarge`]. The caller checks first that the token may go to `url`'s
    /// host ([`chatlake_http::DownloadHosts`]).
    pub async fn download(
        &self,
        url: &Url,
        window: &str,
        max_bytes: u64,
    ) -> Result<Body, ApiError> {
        self.fetch(Label::Medium, url, window, max_bytes).await
    }

    async fn fetch(
        &self,
        label: Label,
        url: &Url,
        window: &str,
        max_bytes: u64,
    ) -> Result<Body, ApiError> {
        let budget = match label {
            Label::Medium => &self.medium,
            Label::Heavy => &self.heavy,
        };
        let paged = url.query_pairs().any(|(k, _)| k == "next_page_token");
        RequestLoop::new(&self.retry)
            // A 429 is the account's: every request of the label waits.
            .budget(&budget.per_second)
            .credential(self)
            .window(window)
            .run(
                &mut RetryCounter(&self.metrics),
                |result, attempt| classify(result, attempt, paged),
                || async {
                    let token = self
                        .token()
                        .await
                        .map_err(|e| Failure::Credential(e.in_window(window)))?;
                    budget.until_ready().await;
                    self.metrics.add_request();
                    let fail =
                        |e: RequestError| Failure::request(e.in_window(window), Some(&token));
                    let mut response = self
                        .client
                        .get(url.clone())
                        .bearer_auth(token.expose())
                        .send()
                        .await
                        .map_err(|e| fail(RequestError::from_reqwest(Method::GET, url, e)))?;
                    if response.status() != StatusCode::OK {
                        return Err(fail(
                            RequestError::from_response(Method::GET, url, response).await,
                        ));
                    }
                    let too_large = Body::TooLarge { limit: max_bytes };
                    if response.content_length().is_some_and(|n| n > max_bytes) {
                        return Ok(too_large);
                    }
                    let mut body = Vec::new();
                    while let Some(chunk) = response
                        .chunk()
                        .await
                        .map_err(|e| fail(RequestError::from_reqwest(Method::GET, url, e)))?
                    {
                        self.metrics.add_bytes(chunk.len() as u64);
                        // Not one byte more than the limit is kept: a body without a length (or
                        // with a wrong one) stops being read here.
                        if (body.len() + chunk.len()) as u64 > max_bytes {
                            return Ok(too_large);
                        }
                        body.extend_from_slice(&chunk);
                    }
                    Ok(Body::Complete(Bytes::from(body)))
                },
            )
            .await
    }
}

/// The body of a `200`.
#[derive(Debug)]
pub enum Body {
    /// All of it.
    Complete(Bytes),
    /// More than `limit` bytes: reading stopped there and nothing is kept.
    TooLarge { limit: u64 },
}

#[async_trait]
impl Credential for ZoomApi {
    async fn token(&self) -> Result<Secret, RequestError> {
        self.tokens.get_or_refresh(|| self.fetch_token()).await
    }

    async fn refused(&self, token: &Secret) {
        self.tokens.invalidate_if(token).await;
    }
}

/// Counts retries. A replaced token is not counted: Zoom revokes tokens of an account when
/// another process takes one, which is not a failure of the request.
struct RetryCounter<'a>(&'a ComponentMetrics);

impl RetryObserver for RetryCounter<'_> {
    fn retry(&mut self, _error: &RequestError, _delay: Duration) {
        self.0.add_retry();
    }
    fn rate_limited(&mut self, _error: &RequestError, _wait: Duration) {
        self.0.add_rate_limited();
    }
}

/// What Zoom's answers mean, on top of the shared rules ([`chatlake_http::classify`]):
///
/// * the token endpoint failing is final (the credentials are wrong or Zoom is down; the
///   request loop of the window's next request tries again);
/// * `401` (code 124, the token was revoked) once more after a fresh token is
///   [`ApiError::Unauthorized`];
/// * `400` code 300 to a request with a page token: [`ApiError::PageTokenExpired`];
/// * `404` code 3001/1001, `400` code 3161/1001: [`ApiError::Resource`], skipped by the caller;
/// * `429`: the account's budget pauses for `Retry-After`/`X-RateLimit-Reset`, one second if
///   Zoom gives neither.
fn classify<T>(result: Result<T, Failure>, attempt: Attempt, paged: bool) -> Outcome<T, ApiError> {
    let failure = match result {
        Err(Failure::Credential(error)) => return Outcome::Fail(ApiError::Other(error)),
        Err(failure) => failure,
        ok => return chatlake_http::classify(ok, attempt),
    };
    let error = failure.error();
    let code = error.code().unwrap_or_default();
    match error.status() {
        Some(StatusCode::UNAUTHORIZED) if attempt.token_refreshed => {
            Outcome::Fail(ApiError::Unauthorized(failure.into_error()))
        }
        Some(StatusCode::BAD_REQUEST) if code == "300" && paged => {
            Outcome::Fail(ApiError::PageTokenExpired(failure.into_error()))
        }
        Some(StatusCode::NOT_FOUND) if code == "3001" || code == "1001" => {
            Outcome::Fail(ApiError::Resource(failure.into_error()))
        }
        Some(StatusCode::BAD_REQUEST) if code == "3161" || code == "1001" => {
            Outcome::Fail(ApiError::Resource(failure.into_error()))
        }
        Some(StatusCode::TOO_MANY_REQUESTS) => {
            let wait = error.server_wait().unwrap_or(Duration::from_secs(1));
            Outcome::RateLimited {
                error: failure.into_error(),
                wait,
            }
        }
        _ => chatlake_http::classify(Err(failure), attempt),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(v: u32) -> NonZeroU32 {
        NonZeroU32::new(v).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_daily_cap_holds_requests_until_a_day_has_passed() {
        let base = Url::parse("http://daily.example/v2").unwrap();
        let budget = shared_budget(&base, "acct", Label::Heavy, n(1000), Some(n(2)));
        let start = tokio::time::Instant::now();
        budget.until_ready().await;
        budget.until_ready().await;
        assert!(start.elapsed() < Duration::from_secs(1));
        budget.until_ready().await;
        assert!(start.elapsed() >= Duration::from_secs(86_400));
    }

    #[test]
    fn sources_of_one_account_share_a_budget() {
        let base = Url::parse("http://shared.example/v2").unwrap();
        let a = shared_budget(&base, "acct", Label::Medium, n(20), None);
        let b = shared_budget(&base, "acct", Label::Medium, n(5), None);
        assert_eq!(
            a.per_second.quota().0,
            b.per_second.quota().0,
            "the first sets the rate"
        );
        let other = shared_budget(&base, "other", Label::Medium, n(5), None);
        assert_eq!(other.per_second.quota().0, n(5));
    }

    #[test]
    fn unauthorized_twice_says_what_to_check() {
        let url = Url::parse("http://x.example/v2/users").unwrap();
        let e = ApiError::Unauthorized(RequestError::new(
            Method::GET,
            &url,
            ErrorKind::Protocol("HTTP 401 124".into()),
        ));
        assert!(e.to_string().contains("freshly fetched access token"));
    }

    #[test]
    fn workers_share_the_accounts_budgets() {
        let n = |v| NonZeroU32::new(v).unwrap();
        let budgets = Budgets {
            medium_per_second: n(20),
            heavy_per_second: n(3),
            medium_per_day: Some(n(2_000)),
            heavy_per_day: None,
        };
        assert_eq!(
            budgets.divided(4),
            Budgets {
                medium_per_second: n(5),
                // Never below one request a second: a worker must still make progress.
                heavy_per_second: n(1),
                medium_per_day: Some(n(500)),
                heavy_per_day: None,
            }
        );
        assert_eq!(budgets.divided(1), budgets);
    }
}
