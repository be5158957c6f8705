//! The request loop every source uses: send, classify the answer, and then retry with backoff,
//! wait as long as the server asked (pausing the shared budget), refresh a refused token once,
//! or fail with the provider's typed error.
//!
//! A provider supplies two things and no loop of its own:
//!
//! * the **attempt**: a closure that makes one try (a token, the budget, the request, maybe a
//!   redirect and a spool) and says what came back: the answer, or a [`Failure`] that keeps the
//!   token it carried;
//! * the **classifier**: a function from that result to an [`Outcome`]. The provider's facts live
//!   there (Zoom's `400` code `300` on a paged request, LINE WORKS' `downloadLogs error` trailer
//!   at the end of a `200`, a token endpoint that refuses the client id); everything else falls
//!   through to [`classify`], the rules every provider shares.
//!
//! This is Vector's `RetryLogic` (`is_retriable_error` + `should_retry_response`) with two
//! outcomes HTTP APIs with short-lived tokens and shared budgets need on top: "refresh the token
//! once" and "pause every caller of the budget".

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use chatlake_core::Secret;
use reqwest::StatusCode;

use crate::{RateLimiter, RequestError, RetryPolicy};

/// A credential that can be refused and replaced: an access-token cache.
#[async_trait]
pub trait Credential: Send + Sync {
    /// A token to send: the cached one, or a fresh one if it is about to expire.
    async fn token(&self) -> Result<Secret, RequestError>;
    /// `token` was refused (`401`): forget it, unless another caller already replaced it, so
    /// the next [`Credential::token`] fetches a new one.
    async fn refused(&self, token: &Secret);
}

/// Why one attempt did not produce an answer.
#[derive(Debug)]
pub enum Failure {
    /// The credential could not be had (the token endpoint failed); no API request was sent.
    Credential(RequestError),
    /// The API request failed; `token` is the credential it carried, to drop after a `401`.
    Request {
        error: RequestError,
        token: Option<Secret>,
    },
}

impl Failure {
    /// A failed API request that carried `token`.
    pub fn request(error: RequestError, token: Option<&Secret>) -> Self {
        Failure::Request {
            error,
            token: token.cloned(),
        }
    }

    pub fn error(&self) -> &RequestError {
        match self {
            Failure::Credential(error) | Failure::Request { error, .. } => error,
        }
    }

    pub fn into_error(self) -> RequestError {
        match self {
            Failure::Credential(error) | Failure::Request { error, .. } => error,
        }
    }

    /// True if the token endpoint failed rather than the API.
    pub fn at_credential(&self) -> bool {
        matches!(self, Failure::Credential(_))
    }
}

/// Where the loop stands, for the classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Tries so far, this one included (a token refresh does not count as a try).
    pub number: u32,
    /// A refused token was already replaced once during this request.
    pub token_refreshed: bool,
}

/// What the loop does with the result of one attempt.
#[derive(Debug)]
pub enum Outcome<T, E> {
    /// Done: hand back the answer.
    Done(T),
    /// Try again after the server's wait, or else exponential backoff with jitter.
    Retry(RequestError),
    /// Rate limited: pause the shared budget for `wait` (every caller of it holds back), then
    /// try again.
    RateLimited { error: RequestError, wait: Duration },
    /// The credential was refused: drop the token, fetch a new one and repeat, once. Does not
    /// count as a try.
    RefreshToken { error: RequestError, token: Secret },
    /// Give up with this error.
    Fail(E),
}

/// The rules every provider shares, for whatever a provider's classifier leaves to them:
///
/// * `401` to a request that carried a token, not yet refreshed → [`Outcome::RefreshToken`];
/// * `429` with a server-given wait → [`Outcome::RateLimited`];
/// * `408`, `429`, `5xx`, transport failures, provider-reported failures → [`Outcome::Retry`];
/// * anything else → [`Outcome::Fail`].
pub fn classify<T, E: From<RequestError>>(
    result: Result<T, Failure>,
    attempt: Attempt,
) -> Outcome<T, E> {
    let failure = match result {
        Ok(answer) => return Outcome::Done(answer),
        Err(failure) => failure,
    };
    match failure {
        Failure::Request {
            error,
            token: Some(token),
        } if error.is_unauthorized() && !attempt.token_refreshed => {
            Outcome::RefreshToken { error, token }
        }
        failure => {
            let error = failure.into_error();
            match error.server_wait() {
                Some(wait) if error.status() == Some(StatusCode::TOO_MANY_REQUESTS) => {
                    Outcome::RateLimited { error, wait }
                }
                _ if error.is_retryable() => Outcome::Retry(error),
                _ => Outcome::Fail(error.into()),
            }
        }
    }
}

/// Callbacks of the loop, for metrics. Every method has a no-op default.
pub trait RetryObserver: Send {
    /// An attempt is about to start.
    fn attempt(&mut self) {}
    /// An attempt failed and the request is tried again after `delay`.
    fn retry(&mut self, _error: &RequestError, _delay: Duration) {}
    /// A refused token is being replaced and the request repeated.
    fn token_refreshed(&mut self, _error: &RequestError) {}
    /// The provider said the rate limit was exceeded (it asked to wait `wait`); called before
    /// the retry, or before the request fails when no try is left.
    fn rate_limited(&mut self, _error: &RequestError, _wait: Duration) {}
}

/// No callbacks.
#[derive(Debug, Default)]
pub struct NoObserver;
impl RetryObserver for NoObserver {}

/// What one request's loop works with: its retry policy, and optionally the shared budget a
/// rate limit pauses, the credential a `401` refreshes, and the window it belongs to (for logs).
#[derive(Clone, Copy)]
pub struct RequestLoop<'a> {
    retry: &'a RetryPolicy,
    budget: Option<&'a RateLimiter>,
    credential: Option<&'a dyn Credential>,
    component: Option<&'a str>,
    window: Option<&'a str>,
}

impl<'a> RequestLoop<'a> {
    pub fn new(retry: &'a RetryPolicy) -> Self {
        RequestLoop {
            retry,
            budget: None,
            credential: None,
            component: None,
            window: None,
        }
    }

    /// The budget an [`Outcome::RateLimited`] pauses (see [`RateLimiter::rate_limited`]).
    pub fn budget(mut self, budget: &'a RateLimiter) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The credential an [`Outcome::RefreshToken`] refreshes.
    pub fn credential(mut self, credential: &'a dyn Credential) -> Self {
        self.credential = Some(credential);
        self
    }

    /// Names the component in the loop's logs.
    pub fn component(mut self, name: &'a str) -> Self {
        self.component = Some(name);
        self
    }

    /// Names the window in the loop's logs.
    pub fn window(mut self, label: &'a str) -> Self {
        self.window = Some(label);
        self
    }

    /// Calls `attempt` until `classifier` says it is done or failed, or the policy runs out of
    /// tries (then the last error, converted to `E`).
    pub async fn run<T, U, E, F, Fut, C>(
        &self,
        observer: &mut dyn RetryObserver,
        mut classifier: C,
        mut attempt: F,
    ) -> Result<U, E>
    where
        E: From<RequestError>,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
        C: FnMut(Result<T, Failure>, Attempt) -> Outcome<U, E>,
    {
        let (component, window) = (
            self.component.unwrap_or_default(),
            self.window.unwrap_or_default(),
        );
        let mut state = Attempt {
            number: 0,
            token_refreshed: false,
        };
        loop {
            state.number += 1;
            observer.attempt();
            let result = attempt().await;
            let (error, wait) = match classifier(result, state) {
                Outcome::Done(answer) => return Ok(answer),
                Outcome::Fail(e) => return Err(e),
                Outcome::RefreshToken { error, token } => {
                    if let Some(credential) = self.credential {
                        credential.refused(&token).await;
                    }
                    state.token_refreshed = true;
                    state.number -= 1;
                    observer.token_refreshed(&error);
                    tracing::warn!(
                        component, window, %error,
                        "the access token was refused; fetching a new one"
                    );
                    continue;
                }
                Outcome::Retry(error) => {
                    let wait = error.server_wait();
                    (error, wait)
                }
                Outcome::RateLimited { error, wait } => {
                    observer.rate_limited(&error, wait);
                    if self.retry.may_retry(state.number)
                        && let Some(budget) = self.budget
                    {
                        // The limit is shared: hold every caller of the budget back, not just
                        // this one.
                        budget.rate_limited(wait);
                    }
                    (error, Some(wait))
                }
            };
            if !self.retry.may_retry(state.number) {
                return Err(error.into());
            }
            let delay = self.retry.delay(state.number, wait);
            observer.retry(&error, delay);
            tracing::warn!(
                component,
                window,
                attempt = state.number,
                max_attempts = self.retry.max_attempts,
                delay_ms = delay.as_millis() as u64,
                %error,
                "request failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use reqwest::Method;
    use reqwest::header::{HeaderMap, HeaderValue};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};
    use url::Url;

    fn url() -> Url {
        Url::parse("http://127.0.0.1:1/x").unwrap()
    }

    fn status(code: u16, wait: Option<&str>) -> RequestError {
        let mut headers = HeaderMap::new();
        if let Some(wait) = wait {
            headers.insert("retry-after", HeaderValue::from_str(wait).unwrap());
        }
        RequestError::from_status(
            Method::GET,
            &url(),
            StatusCode::from_u16(code).unwrap(),
            b"",
            &headers,
            chrono::Utc::now(),
        )
    }

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        }
    }

    #[derive(Default)]
    struct Counts {
        attempts: u32,
        retries: u32,
        refreshes: u32,
    }
    impl RetryObserver for Counts {
        fn attempt(&mut self) {
            self.attempts += 1;
        }
        fn retry(&mut self, _e: &RequestError, _d: Duration) {
            self.retries += 1;
        }
        fn token_refreshed(&mut self, _e: &RequestError) {
            self.refreshes += 1;
        }
    }

    /// A credential that hands out `t1`, `t2`, … and records what was refused.
    #[derive(Default)]
    struct Tokens {
        issued: AtomicU32,
        refused: Mutex<Vec<String>>,
    }
    #[async_trait]
    impl Credential for Tokens {
        async fn token(&self) -> Result<Secret, RequestError> {
            let refused = self.refused.lock().unwrap().len() as u32;
            self.issued.fetch_max(refused + 1, Ordering::SeqCst);
            Ok(Secret::new(format!("t{}", refused + 1)))
        }
        async fn refused(&self, token: &Secret) {
            self.refused
                .lock()
                .unwrap()
                .push(token.expose().to_string());
        }
    }

    /// Runs a scripted request: each attempt pops the next status (200 = success).
    async fn scripted(
        lp: RequestLoop<'_>,
        tokens: Option<&Tokens>,
        script: &[(u16, Option<&str>)],
        observer: &mut Counts,
    ) -> Result<String, RequestError> {
        let script = Mutex::new(script.iter().rev().cloned().collect::<Vec<_>>());
        lp.run(observer, classify, || async {
            let token = match tokens {
                Some(t) => Some(t.token().await.map_err(Failure::Credential)?),
                None => None,
            };
            let (code, wait) = script.lock().unwrap().pop().unwrap_or((200, None));
            if code == 200 {
                return Ok(token.map_or("ok".into(), |t| t.expose().to_string()));
            }
            Err(Failure::request(status(code, wait), token.as_ref()))
        })
        .await
    }

    #[tokio::test]
    async fn retries_what_is_worth_it_until_the_policy_runs_out() {
        let retry = policy(3);
        let lp = RequestLoop::new(&retry);
        let mut seen = Counts::default();
        let out = scripted(lp, None, &[(500, None), (429, None)], &mut seen).await;
        assert_eq!(out.unwrap(), "ok");
        assert_eq!((seen.attempts, seen.retries), (3, 2));

        let mut seen = Counts::default();
        let e = scripted(
            lp,
            None,
            &[(503, None), (503, None), (503, None)],
            &mut seen,
        )
        .await
        .unwrap_err();
        assert_eq!(e.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!((seen.attempts, seen.retries), (3, 2));

        let mut seen = Counts::default();
        let e = scripted(lp, None, &[(404, None)], &mut seen)
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(StatusCode::NOT_FOUND));
        assert_eq!(
            (seen.attempts, seen.retries),
            (1, 0),
            "a 404 is not retried"
        );
    }

    #[tokio::test]
    async fn a_refused_token_is_replaced_once_and_does_not_count_as_a_try() {
        let retry = policy(1);
        let tokens = Tokens::default();
        let lp = RequestLoop::new(&retry).credential(&tokens);
        let mut seen = Counts::default();
        let out = scripted(lp, Some(&tokens), &[(401, None)], &mut seen).await;
        assert_eq!(out.unwrap(), "t2", "repeated with a fresh token");
        assert_eq!(*tokens.refused.lock().unwrap(), ["t1"]);
        assert_eq!((seen.refreshes, seen.retries), (1, 0));

        let tokens = Tokens::default();
        let lp = RequestLoop::new(&retry).credential(&tokens);
        let mut seen = Counts::default();
        let e = scripted(lp, Some(&tokens), &[(401, None), (401, None)], &mut seen)
            .await
            .unwrap_err();
        assert!(e.is_unauthorized());
        assert_eq!(seen.refreshes, 1, "only once");

        // Without a token (an API key) a 401 is final at once.
        let mut seen = Counts::default();
        let e = scripted(
            RequestLoop::new(&policy(5)),
            None,
            &[(401, None)],
            &mut seen,
        )
        .await
        .unwrap_err();
        assert!(e.is_unauthorized());
        assert_eq!(seen.attempts, 1);
    }

    #[tokio::test]
    async fn a_429_with_a_wait_pauses_the_shared_budget() {
        let retry = policy(2);
        let budget = RateLimiter::per_second(std::num::NonZeroU32::new(1000).unwrap());
        let other = budget.clone();
        let lp = RequestLoop::new(&retry).budget(&budget);
        let start = std::time::Instant::now();
        let mut seen = Counts::default();
        let out = scripted(lp, None, &[(429, Some("0.2"))], &mut seen).await;
        assert_eq!(out.unwrap(), "ok");
        assert!(
            start.elapsed() >= Duration::from_millis(190),
            "the server's wait"
        );
        assert_eq!(seen.retries, 1);
        // Another caller of the budget was held back too (and now runs at half rate).
        let start = std::time::Instant::now();
        other.until_ready().await;
        assert!(start.elapsed() < Duration::from_millis(150));

        // Out of tries: the 429 is the error, and nobody else is paused for nothing.
        let lp = RequestLoop::new(&retry).budget(&budget);
        let e = scripted(
            lp,
            None,
            &[(429, Some("0")), (429, Some("30"))],
            &mut Counts::default(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.status(), Some(StatusCode::TOO_MANY_REQUESTS));
        let start = std::time::Instant::now();
        other.until_ready().await;
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_provider_classifier_turns_an_ok_answer_into_a_retry_and_its_own_errors() {
        #[derive(Debug, thiserror::Error)]
        enum ProviderError {
            #[error("gone: {0}")]
            Gone(RequestError),
            #[error(transparent)]
            Other(#[from] RequestError),
        }
        let retry = policy(3);
        let bodies = Mutex::new(vec!["fine", "error at the end"]);
        let out: Result<&str, ProviderError> = RequestLoop::new(&retry)
            .run(
                &mut NoObserver,
                |result: Result<&str, Failure>, attempt| match result {
                    Ok(body) if body.ends_with("error at the end") => Outcome::Retry(
                        RequestError::new(Method::GET, &url(), ErrorKind::Provider(body.into())),
                    ),
                    Err(f) if f.error().status() == Some(StatusCode::GONE) => {
                        Outcome::Fail(ProviderError::Gone(f.into_error()))
                    }
                    other => classify(other, attempt),
                },
                || async { Ok(bodies.lock().unwrap().pop().unwrap()) },
            )
            .await;
        assert_eq!(out.unwrap(), "fine");

        let out: Result<(), ProviderError> = RequestLoop::new(&retry)
            .run(
                &mut NoObserver,
                |result: Result<(), Failure>, attempt| match result {
                    Err(f) if f.error().status() == Some(StatusCode::GONE) => {
                        Outcome::Fail(ProviderError::Gone(f.into_error()))
                    }
                    other => classify(other, attempt),
                },
                || async { Err(Failure::request(status(410, None), None)) },
            )
            .await;
        assert!(matches!(out, Err(ProviderError::Gone(_))));
    }
}
