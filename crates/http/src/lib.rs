//! The HTTP toolkit that keeps provider sources short: one way to build a client, decide where
//! credentials may go, retry with backoff, keep under a rate budget, cache access tokens and say
//! precisely which request failed.
//!
//! Sources do not write request loops: they hand one attempt and a classifier of its result to
//! [`RequestLoop`], and a paged endpoint's fetch to [`pages`]. The pieces:
//!
//! * [`RequestLoop`], [`classify`], [`Outcome`]: the one request loop (retry with backoff, wait
//!   for a rate limit and pause the shared budget, refresh a refused token once, fail), with the
//!   provider's facts in its classifier.
//! * [`pages`]: the one paging loop, a stream of pages that restarts a listing whose cursor
//!   expired.
//! * [`HttpClient`]: reqwest with rustls, chatlake's user agent, timeouts and **no redirects**,
//!   so a source follows a `302` itself and decides with [`CredentialScope`] whether the next host
//!   may see its token.
//! * [`DownloadHosts`]: which other hosts (a provider's file host) may receive the token.
//! * [`RetryPolicy`]: the `retry` table of a source config, and the backoff it implies;
//!   [`server_wait`] reads how long the server asked us to wait.
//! * [`RateLimiter`]: "N requests per period", shared by clones.
//! * [`RequestError`]: which request, which window, which status and provider error code.
//! * [`TokenCache`]: an access token with its expiry, refreshed ahead of time.
//! * [`export`]: submit → poll → download of asynchronous provider exports.

mod client;
mod download_hosts;
mod error;
pub mod export;
mod paging;
mod rate;
mod request;
mod retry;
mod spool;
mod token;

pub use client::{
    CredentialScope, HttpClient, HttpClientBuilder, USER_AGENT, redact_url, resolve_location,
    same_origin,
};
pub use download_hosts::{DownloadHostRefused, DownloadHosts};
pub use error::{ErrorKind, ProviderError, RequestError};
pub use paging::{PageEvent, Paging, pages};
pub use rate::RateLimiter;
pub use request::{
    Attempt, Credential, Failure, NoObserver, Outcome, RequestLoop, RetryObserver, classify,
};
pub use retry::{RetryPolicy, parse_retry_after, server_wait};
pub use spool::spool_body;
pub use token::{
    AccessToken, TokenCache, TokenResponse, deserialize_optional_seconds, deserialize_seconds,
    post_token_form,
};

/// Errors of this crate that are not about one request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request failed; the message names it.
    #[error(transparent)]
    Request(#[from] RequestError),

    /// The HTTP client could not be set up (TLS roots, ...).
    #[error("could not set up the HTTP client: {0}")]
    Client(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
