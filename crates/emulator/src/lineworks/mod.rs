//! Emulator of the LINE WORKS monitoring message-contents download (contract E1 of
//! `shared/providers.md`): the JWT-bearer token endpoint, the download request that answers a
//! 302 to a one-time file URL, and the streamed CSV file behind that URL.
//!
//! Routes: `POST /oauth2/v2.0/token`, `GET /v1.0/monitoring/message-contents/download` on the
//! API origin, and `GET /files/{id}` on the file host, a second origin ([`file_router`]), as
//! the real `302` leads from `www.worksapis.com` to `apis-storage.worksmobile.com`. All state (tokens, issued URLs, the rate window, fault counters, stats)
//! sits behind one mutex that is never held across an `.await`.

mod csv;
pub mod data;
mod error;
mod params;

use std::collections::HashMap;
use std::convert::Infallible;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{
    AUTHORIZATION, CONTENT_DISPOSITION, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{EmulatorConfig, clock, fires, random_id};
use csv::CsvWriter;
use data::{Generator, RawMessage};
use error::{ApiError, OAuthError};
use params::{BotFilter, DownloadParams};

/// The OAuth client id the emulator accepts.
pub const CLIENT_ID: &str = "chatlake-emulator-client";
/// The OAuth client secret the emulator accepts.
pub const CLIENT_SECRET: &str = "chatlake-emulator-secret";
/// The service account the JWT `sub` must name.
pub const SERVICE_ACCOUNT: &str = "chatlake.serviceaccount@example.com";
/// A static bearer token that never expires and carries `monitoring.read`.
pub const STATIC_TOKEN: &str = "chatlake-emulator-static-token";
/// The caller's domain: every token belongs to it, `domainId` defaults to it.
pub const DOMAIN_ID: i32 = 10_000_001;

/// PUBLIC TEST KEY, for the emulator only: it is committed to the repository so that tests and
/// demos can sign JWT assertions. It protects nothing and must never be used elsewhere.
pub const PRIVATE_KEY_PEM: &str = include_str!("../../keys/test_private_key.pem");
/// The public half of [`PRIVATE_KEY_PEM`], which the token endpoint verifies assertions with.
pub const PUBLIC_KEY_PEM: &str = include_str!("../../keys/test_public_key.pem");

/// The RFC 7523 grant type of the service-account flow.
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The scope the download API needs.
const MONITORING_SCOPE: &str = "monitoring.read";
/// Refresh tokens live 90 days (FACT, providers.md §1 auth).
const REFRESH_TTL: Duration = Duration::from_secs(90 * 86_400);
/// Clock skew tolerated on the assertion's `exp`.
const JWT_LEEWAY_S: i64 = 60;
/// The rate-limit window.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Target size of a file body chunk.
const CHUNK: usize = 64 * 1024;

/// LINE WORKS faults and tunable limits, set with `lineworks.<key>=<value>` items of the
/// `--faults` spec. The counter-based faults fire on the 1st, (1+EVERY)th, (1+2·EVERY)th …
/// event, so tests hit them at once and, with EVERY >= 2, the retry right after succeeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineworksFaults {
    /// `trailer=EVERY`: those file downloads end with the `downloadLogs error` trailer
    /// (counting the `/files` downloads that are served).
    pub trailer: Option<NonZeroU64>,
    /// `rate_limit=EVERY`: those download requests answer 429 with `rateLimit-reset: 1`.
    pub rate_limit: Option<NonZeroU64>,
    /// `server_error=EVERY`: those download requests answer 500 `INTERNAL_SERVER_ERROR`
    /// (counting the requests the `rate_limit` fault let through).
    pub server_error: Option<NonZeroU64>,
    /// `slow_ms=N`: delay before answering each request, and between the hours of a file body.
    pub slow: Duration,
    /// `token_ttl_s=N`: access-token lifetime (default 86400; 0 issues already-expired tokens).
    pub token_ttl: Duration,
    /// `url_ttl_s=N`: lifetime of an issued file URL (default 300; 0 issues expired URLs).
    pub url_ttl: Duration,
    /// `rate_limit_per_min=N`: download requests allowed per minute (default 10; 0 = no limit).
    pub rate_limit_per_min: u32,
    /// `file_auth=open|bearer`: `open` serves file URLs without a bearer token.
    pub file_auth_open: bool,
}

impl Default for LineworksFaults {
    fn default() -> LineworksFaults {
        LineworksFaults {
            trailer: None,
            rate_limit: None,
            server_error: None,
            slow: Duration::ZERO,
            token_ttl: Duration::from_secs(86_400),
            url_ttl: Duration::from_secs(300),
            rate_limit_per_min: 10,
            file_auth_open: false,
        }
    }
}

impl LineworksFaults {
    /// Every key the spec accepts, fully qualified.
    pub const KEYS: [&str; 8] = [
        "lineworks.trailer",
        "lineworks.rate_limit",
        "lineworks.server_error",
        "lineworks.slow_ms",
        "lineworks.token_ttl_s",
        "lineworks.url_ttl_s",
        "lineworks.rate_limit_per_min",
        "lineworks.file_auth",
    ];

    /// Sets one key (without its `lineworks.` prefix) from its spec value.
    pub(crate) fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let every = || {
            value
                .parse::<NonZeroU64>()
                .map(Some)
                .map_err(|_| "expected a whole number >= 1".to_owned())
        };
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| "expected a whole number >= 0".to_owned())
        };
        match key {
            "trailer" => self.trailer = every()?,
            "rate_limit" => self.rate_limit = every()?,
            "server_error" => self.server_error = every()?,
            "slow_ms" => self.slow = Duration::from_millis(number()?),
            "token_ttl_s" => self.token_ttl = Duration::from_secs(number()?),
            "url_ttl_s" => self.url_ttl = Duration::from_secs(number()?),
            "rate_limit_per_min" => {
                self.rate_limit_per_min = value
                    .parse()
                    .map_err(|_| "expected a whole number >= 0".to_owned())?;
            }
            "file_auth" => {
                self.file_auth_open = match value {
                    "open" => true,
                    "bearer" => false,
                    _ => return Err("expected `open` or `bearer`".to_owned()),
                }
            }
            _ => {
                return Err(format!(
                    "unknown key; LINE WORKS keys are {}",
                    Self::KEYS.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// LINE WORKS request counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LineworksStats {
    /// Requests to the token endpoint, answered or not.
    pub token_requests: u64,
    /// Requests to the download endpoint, answered or not.
    pub download_requests: u64,
    /// `/files` downloads answered 200 (counted when the body starts).
    pub files_served: u64,
    /// Of those, the ones that end with the `downloadLogs error` trailer.
    pub trailers_served: u64,
    /// Download requests answered 429 for the rate limit (the real one or the fault).
    pub rate_limited: u64,
    /// Download requests answered 500 by the `server_error` fault.
    pub server_errors: u64,
    /// Download requests answered 429 because the previous URL was not fully downloaded.
    pub concurrent_rejections: u64,
    /// Most download requests and file transfers in flight at the same time.
    pub max_concurrent_downloads: u64,
    /// 400 answers (token endpoint and download endpoint).
    pub bad_requests: u64,
    /// 401 and 403 answers (download and file endpoints).
    pub unauthorized: u64,
    /// Requests that reached the file host, answered or not.
    pub file_requests: u64,
    /// Of those, the ones that carried an `Authorization` header (a token sent to the file
    /// host; a client that does not list the host must send none).
    pub file_requests_with_authorization: u64,
}

/// The credentials the emulator accepts; see [`crate::Emulator::credentials`].
pub(crate) fn credentials() -> Vec<(String, String)> {
    [
        ("lineworks.client_id", CLIENT_ID),
        ("lineworks.client_secret", CLIENT_SECRET),
        ("lineworks.service_account", SERVICE_ACCOUNT),
        ("lineworks.private_key", PRIVATE_KEY_PEM),
        ("lineworks.token", STATIC_TOKEN),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect()
}

/// The LINE WORKS API routes, bound to their state.
pub(crate) fn router(lineworks: Arc<Lineworks>) -> Router {
    Router::new()
        .route("/oauth2/v2.0/token", post(token))
        .route("/v1.0/monitoring/message-contents/download", get(download))
        .with_state(lineworks)
}

/// The file host's routes: served on an origin of their own, so that following the `302` always
/// crosses to another host.
pub(crate) fn file_router(lineworks: Arc<Lineworks>) -> Router {
    Router::new()
        .route("/files/{id}", get(file))
        .with_state(lineworks)
}

/// Shared state of the LINE WORKS emulator.
pub(crate) struct Lineworks {
    seed: u64,
    scale: f64,
    faults: LineworksFaults,
    /// The file host's origin, where `Location` points.
    files_url: String,
    public_key: DecodingKey,
    state: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    access_tokens: HashMap<String, Grant>,
    refresh_tokens: HashMap<String, Grant>,
    files: HashMap<String, FileUrl>,
    /// The last issued URL; new download requests wait until it is downloaded or expired.
    outstanding: Option<String>,
    quota: Quota,
    /// Download requests that would have succeeded: the `rate_limit` fault counts these.
    fault_candidates: u64,
    /// Of those, the ones the `rate_limit` fault let through: the `server_error` fault counts
    /// these, so that both faults together still let every window through eventually.
    past_rate_fault: u64,
    /// `/files` downloads served: the `trailer` fault counts these.
    file_downloads: u64,
    in_flight: u64,
    stats: LineworksStats,
}

/// What a token allows until when (`None`: forever).
#[derive(Clone)]
struct Grant {
    scope: String,
    expires: Option<Instant>,
}

impl Grant {
    fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|at| now >= at)
    }

    fn allows_monitoring(&self) -> bool {
        self.scope
            .split([' ', ','])
            .any(|scope| scope == MONITORING_SCOPE)
    }
}

/// An issued file URL.
struct FileUrl {
    params: DownloadParams,
    expires: Instant,
    /// A body is streaming: the URL is claimed, and stays outstanding even past its TTL.
    transferring: bool,
}

impl FileUrl {
    fn blocks_new_downloads(&self, now: Instant) -> bool {
        self.transferring || now < self.expires
    }
}

/// A fixed one-minute window that starts with its first request, as the provider's
/// `rateLimit-reset` ("seconds until reset", at most a minute) suggests.
#[derive(Default)]
struct Quota {
    window_start: Option<Instant>,
    used: u32,
}

impl Quota {
    /// Takes one request from the window, or returns the seconds until it resets.
    fn take(&mut self, limit: u32, now: Instant) -> Result<(), u64> {
        if limit == 0 {
            return Ok(());
        }
        let start = match self.window_start {
            Some(start) if now.duration_since(start) < RATE_WINDOW => start,
            _ => {
                self.used = 0;
                *self.window_start.insert(now)
            }
        };
        if self.used >= limit {
            let left = RATE_WINDOW.saturating_sub(now.duration_since(start));
            return Err(left.as_secs() + u64::from(left.subsec_nanos() > 0));
        }
        self.used += 1;
        Ok(())
    }
}

impl Lineworks {
    pub(crate) fn new(config: &EmulatorConfig, files_url: String) -> std::io::Result<Lineworks> {
        let public_key = DecodingKey::from_rsa_pem(PUBLIC_KEY_PEM.as_bytes())
            .map_err(|err| std::io::Error::other(format!("bad test public key: {err}")))?;
        Ok(Lineworks {
            seed: config.seed,
            scale: config.scale,
            faults: config.faults.lineworks.clone(),
            files_url,
            public_key,
            state: Mutex::new(Inner::default()),
        })
    }

    pub(crate) fn stats(&self) -> LineworksStats {
        self.lock().stats.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking handler cannot leave the counters half-updated in a way that matters.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn slow_down(&self) {
        if !self.faults.slow.is_zero() {
            tokio::time::sleep(self.faults.slow).await;
        }
    }

    // ---- token endpoint -------------------------------------------------------------------

    fn token_response(&self, headers: &HeaderMap, body: &[u8]) -> Result<Response, OAuthError> {
        let form_encoded = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !form_encoded {
            return Err(OAuthError::request(
                "the body must be application/x-www-form-urlencoded",
            ));
        }
        let mut form = HashMap::new();
        for (key, value) in url::form_urlencoded::parse(body) {
            form.entry(key.into_owned()).or_insert(value.into_owned());
        }
        let field = |name: &str| {
            form.get(name)
                .map(String::as_str)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| OAuthError::request(format!("{name} is required")))
        };
        if field("client_id")? != CLIENT_ID || field("client_secret")? != CLIENT_SECRET {
            return Err(OAuthError::client(
                "unknown client_id or wrong client_secret",
            ));
        }
        let scope = match field("grant_type")? {
            JWT_BEARER => {
                let scope = field("scope")?;
                self.verify_assertion(field("assertion")?)?;
                scope.to_owned()
            }
            "refresh_token" => {
                let refresh_token = field("refresh_token")?;
                let now = clock::now();
                let inner = self.lock();
                match inner.refresh_tokens.get(refresh_token) {
                    Some(grant) if !grant.expired(now) => grant.scope.clone(),
                    _ => {
                        return Err(OAuthError::grant("unknown or expired refresh_token"));
                    }
                }
            }
            other => {
                return Err(OAuthError::request(format!(
                    "unsupported grant_type `{other}`"
                )));
            }
        };
        Ok(axum::Json(self.issue_tokens(scope)).into_response())
    }

    fn verify_assertion(&self, assertion: &str) -> Result<(), OAuthError> {
        #[derive(Deserialize)]
        struct Claims {
            iss: String,
            sub: String,
            exp: i64,
        }
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_required_spec_claims(&["iss", "sub", "exp"]);
        // `exp` is checked below against the emulator's clock; LINE WORKS sets no audience.
        validation.validate_exp = false;
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<Claims>(assertion, &self.public_key, &validation)
            .map_err(|err| OAuthError::grant(format!("invalid assertion: {err}")))?
            .claims;
        if claims.iss != CLIENT_ID {
            return Err(OAuthError::grant("assertion iss must be the client_id"));
        }
        if claims.sub != SERVICE_ACCOUNT {
            return Err(OAuthError::grant(
                "assertion sub is not a known service account",
            ));
        }
        if claims.exp + JWT_LEEWAY_S < clock::unix_now() {
            return Err(OAuthError::grant("assertion expired"));
        }
        Ok(())
    }

    fn issue_tokens(&self, scope: String) -> serde_json::Value {
        let now = clock::now();
        let ttl = self.faults.token_ttl;
        let (access_token, refresh_token) = (random_id(), random_id());
        let mut inner = self.lock();
        // Forget expired tokens here, so long benchmark runs do not grow the maps.
        inner.access_tokens.retain(|_, grant| !grant.expired(now));
        inner.refresh_tokens.retain(|_, grant| !grant.expired(now));
        let grant = |ttl| Grant {
            scope: scope.clone(),
            expires: Some(now + ttl),
        };
        inner.access_tokens.insert(access_token.clone(), grant(ttl));
        // The old refresh token stays valid until it expires: whether LINE WORKS revokes it
        // on refresh is not documented, and keeping it is the lenient choice.
        inner
            .refresh_tokens
            .insert(refresh_token.clone(), grant(REFRESH_TTL));
        json!({
            "access_token": access_token,
            "refresh_token": refresh_token,
            "scope": scope,
            "token_type": "Bearer",
            // A string, as LINE WORKS sends it.
            "expires_in": ttl.as_secs().to_string(),
        })
    }

    // ---- download request -----------------------------------------------------------------

    /// Decides a download request in one critical section, in the provider's order: auth,
    /// rate limit, parameters, the previous URL, then the injected faults.
    fn download_response(
        &self,
        headers: &HeaderMap,
        params: Result<DownloadParams, ApiError>,
    ) -> Result<Response, ApiError> {
        let now = clock::now();
        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.stats.download_requests += 1;
        let grant = authorize(inner, headers, now)?;
        if !grant.allows_monitoring() {
            inner.stats.unauthorized += 1;
            return Err(ApiError::forbidden(format!(
                "The token lacks the {MONITORING_SCOPE} scope."
            )));
        }
        let limit = self.faults.rate_limit_per_min;
        if let Err(reset) = inner.quota.take(limit, now) {
            inner.stats.rate_limited += 1;
            return Err(ApiError::rate_limited(limit, reset));
        }
        let params = params.inspect_err(|_| inner.stats.bad_requests += 1)?;
        if let Some(domain) = params.domain_id
            && domain != DOMAIN_ID
        {
            inner.stats.unauthorized += 1;
            return Err(ApiError::forbidden(format!(
                "No access to domain {domain}."
            )));
        }
        let previous = inner
            .outstanding
            .as_ref()
            .and_then(|id| inner.files.get(id));
        if previous.is_some_and(|file| file.blocks_new_downloads(now)) {
            inner.stats.concurrent_rejections += 1;
            return Err(ApiError::too_many(
                "The previous download URL has not been fully downloaded yet.",
            ));
        }
        inner.fault_candidates += 1;
        if fires(self.faults.rate_limit, inner.fault_candidates) {
            inner.stats.rate_limited += 1;
            return Err(ApiError::rate_limited(limit, 1));
        }
        inner.past_rate_fault += 1;
        if fires(self.faults.server_error, inner.past_rate_fault) {
            inner.stats.server_errors += 1;
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_SERVER_ERROR",
                "Internal server error.",
            ));
        }
        inner.files.retain(|_, file| file.blocks_new_downloads(now));
        let id = random_id();
        inner.files.insert(
            id.clone(),
            FileUrl {
                params,
                expires: now + self.faults.url_ttl,
                transferring: false,
            },
        );
        inner.outstanding = Some(id.clone());
        let location = format!("{}/files/{id}", self.files_url);
        tracing::debug!(%location, "LINE WORKS download URL issued.");
        // No rate-limit headers: the provider sends none on its 302 download answers.
        Ok((StatusCode::FOUND, [(LOCATION, location)]).into_response())
    }

    // ---- file download --------------------------------------------------------------------

    /// Claims the URL `id` for a transfer; returns its request and whether to add the trailer.
    fn claim_file(
        &self,
        id: &str,
        headers: &HeaderMap,
    ) -> Result<(DownloadParams, bool), ApiError> {
        let now = clock::now();
        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.stats.file_requests += 1;
        if headers.contains_key(AUTHORIZATION) {
            inner.stats.file_requests_with_authorization += 1;
        }
        if !self.faults.file_auth_open {
            authorize(inner, headers, now)?;
        }
        let not_found = || ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "File not found.");
        let file = inner.files.get_mut(id).ok_or_else(not_found)?;
        if file.transferring {
            // One-time URL: a second GET while the first streams does not get a copy.
            return Err(not_found());
        }
        if now >= file.expires {
            inner.files.remove(id);
            return Err(not_found());
        }
        file.transferring = true;
        let params = file.params;
        inner.file_downloads += 1;
        let trailer = fires(self.faults.trailer, inner.file_downloads);
        inner.stats.files_served += 1;
        inner.stats.trailers_served += u64::from(trailer);
        Ok((params, trailer))
    }
}

/// Checks the bearer token: exactly `Bearer <token>`, known and unexpired. Counts a failure.
fn authorize(inner: &mut Inner, headers: &HeaderMap, now: Instant) -> Result<Grant, ApiError> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|token| !token.is_empty() && !token.starts_with(' '));
    let grant = match token {
        Some(STATIC_TOKEN) => Some(Grant {
            scope: format!("{MONITORING_SCOPE} audit.read"),
            expires: None,
        }),
        Some(token) => match inner.access_tokens.get(token) {
            Some(grant) if grant.expired(now) => {
                inner.access_tokens.remove(token);
                None
            }
            grant => grant.cloned(),
        },
        None => None,
    };
    grant.ok_or_else(|| {
        inner.stats.unauthorized += 1;
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "Authentication failed.",
        )
        .with_header(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        )
    })
}

// ---- handlers -------------------------------------------------------------------------------

async fn token(State(lw): State<Arc<Lineworks>>, headers: HeaderMap, body: Bytes) -> Response {
    lw.slow_down().await;
    lw.lock().stats.token_requests += 1;
    lw.token_response(&headers, &body).unwrap_or_else(|err| {
        lw.lock().stats.bad_requests += 1;
        tracing::debug!(error = err.error, description = %err.description, "LINE WORKS token refused.");
        err.into_response()
    })
}

async fn download(
    State(lw): State<Arc<Lineworks>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let _in_flight = InFlight::enter(&lw);
    lw.slow_down().await;
    let params = DownloadParams::parse(query.as_deref().unwrap_or(""));
    lw.download_response(&headers, params)
        .unwrap_or_else(IntoResponse::into_response)
}

async fn file(
    State(lw): State<Arc<Lineworks>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let in_flight = InFlight::enter(&lw);
    lw.slow_down().await;
    let (params, trailer) = match lw.claim_file(&id, &headers) {
        Ok(claimed) => claimed,
        Err(err) => return err.into_response(),
    };
    let filename = params.filename();
    let mut buf = Vec::with_capacity(CHUNK + 4096);
    CsvWriter::write_preamble(&mut buf, params.language);
    let body = FileBody {
        generator: Generator::new(lw.seed, lw.scale, params.start, params.end),
        hour: Vec::new(),
        writer: CsvWriter::new(params.offset_secs),
        buf,
        bots: params.bots,
        trailer,
        slow: lw.faults.slow,
        hours_done: 0,
        finished: false,
        transfer: Transfer {
            lineworks: lw.clone(),
            id,
            done: false,
            _in_flight: in_flight,
        },
    };
    let stream = futures::stream::unfold(body, FileBody::next_chunk);
    (
        [
            (CONTENT_TYPE, "text/csv; charset=UTF-8".to_owned()),
            (
                CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

// ---- file body ------------------------------------------------------------------------------

/// The state of one streamed file: generates and writes an hour at a time and hands out
/// chunks of about [`CHUNK`] bytes, so memory stays flat whatever the window holds.
struct FileBody {
    generator: Generator,
    /// Reused for every hour.
    hour: Vec<RawMessage>,
    writer: CsvWriter,
    buf: Vec<u8>,
    bots: BotFilter,
    trailer: bool,
    slow: Duration,
    hours_done: u64,
    /// The last chunk is out; the next poll ends the stream.
    finished: bool,
    transfer: Transfer,
}

impl FileBody {
    async fn next_chunk(mut self) -> Option<(Result<Bytes, Infallible>, FileBody)> {
        if self.finished {
            // The whole body has been handed to the connection: only now is the URL used up.
            self.transfer.finish();
            return None;
        }
        loop {
            if !self.generator.next_hour(&mut self.hour) {
                if self.trailer {
                    CsvWriter::write_trailer(&mut self.buf);
                }
                if self.buf.is_empty() {
                    // Never yield an empty chunk: it could read as the end of a chunked body.
                    self.transfer.finish();
                    return None;
                }
                self.finished = true;
                let chunk = std::mem::take(&mut self.buf);
                return Some((Ok(Bytes::from(chunk)), self));
            }
            if !self.slow.is_zero() && self.hours_done > 0 {
                tokio::time::sleep(self.slow).await;
            }
            self.hours_done += 1;
            for message in &self.hour {
                if self.bots.keeps(message.is_bot()) {
                    self.writer.write_row(&mut self.buf, message);
                }
            }
            // With `slow_ms`, every hour is its own chunk so that the delay is visible on the
            // wire; otherwise hours are batched into chunks of about 64 KiB.
            if self.buf.len() >= CHUNK || (!self.slow.is_zero() && !self.buf.is_empty()) {
                let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK + 4096));
                return Some((Ok(Bytes::from(chunk)), self));
            }
        }
    }
}

/// Ties a transfer to its URL: finishing uses the URL up, dropping it unfinished (the client
/// went away) releases the claim so the URL can be fetched again until it expires.
struct Transfer {
    lineworks: Arc<Lineworks>,
    id: String,
    done: bool,
    _in_flight: InFlight,
}

impl Transfer {
    fn finish(&mut self) {
        self.done = true;
        let mut inner = self.lineworks.lock();
        inner.files.remove(&self.id);
        if inner.outstanding.as_deref() == Some(self.id.as_str()) {
            inner.outstanding = None;
        }
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        if !self.done {
            tracing::debug!(id = %self.id, "LINE WORKS file transfer aborted.");
            if let Some(file) = self.lineworks.lock().files.get_mut(&self.id) {
                file.transferring = false;
            }
        }
    }
}

/// Counts a download request or file transfer as in flight while it lives.
struct InFlight(Arc<Lineworks>);

impl InFlight {
    fn enter(lineworks: &Arc<Lineworks>) -> InFlight {
        let mut inner = lineworks.lock();
        inner.in_flight += 1;
        inner.stats.max_concurrent_downloads =
            inner.stats.max_concurrent_downloads.max(inner.in_flight);
        InFlight(lineworks.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_is_a_fixed_minute() {
        let mut quota = Quota::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            quota.take(3, t0).unwrap();
        }
        assert_eq!(quota.take(3, t0 + Duration::from_millis(500)), Err(60));
        assert_eq!(quota.take(3, t0 + Duration::from_secs(59)), Err(1));
        assert_eq!(quota.take(3, t0 + Duration::from_secs(60)), Ok(()));
        assert!((0..1000).all(|_| quota.take(0, t0).is_ok()));
    }
}
