//! Emulator of Zoom Team Chat (contracts E2–E4 of `shared/providers.md`): the Server-to-Server
//! OAuth token endpoint, `GET /v2/chat/users/{userId}/messages` with its discovery helpers
//! (`/v2/users`, `/v2/chat/users/{id}/channels`, `/v2/chat/users/{id}/sessions`), and the chat
//! report (`/v2/report/chat/sessions[/{id}]`).
//!
//! Rate limits are token buckets per label (Medium 20/s, Heavy 10/s by default; a bucket holds
//! one second of requests), answered with `429` and the `X-RateLimit-*` headers. Page tokens are
//! opaque, tied to the exact query and live 15 minutes. All state sits behind one mutex that is
//! never held across an `.await`.

pub mod data;

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{AUTHORIZATION, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Datelike, Months, NaiveDate, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{EmulatorConfig, clock, fires, random_id};
use data::{Conversation, Message, Status};

/// The S2S account id the emulator accepts.
pub const ACCOUNT_ID: &str = "chatlake-zoom-account";
/// The S2S client id the emulator accepts.
pub const CLIENT_ID: &str = "chatlake-zoom-client";
/// The S2S client secret the emulator accepts.
pub const CLIENT_SECRET: &str = "chatlake-zoom-secret";

/// Zoom faults and limits, set with `zoom.<key>=<value>` items of the `--faults` spec. Counter
/// faults fire on the 1st, (1+EVERY)th … API request (token requests not counted), so tests hit
/// them at once and, with EVERY >= 2, the retry right after succeeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoomFaults {
    /// `page_token_expiry=EVERY`: those requests carrying a `next_page_token` answer 400 code
    /// 300 "The next page token is invalid or expired."
    pub page_token_expiry: Option<NonZeroU64>,
    /// `rate_limit=EVERY`: those API requests answer 429 (QPS) with `X-RateLimit-Reset: 1`.
    pub rate_limit: Option<NonZeroU64>,
    /// `daily_limit=EVERY`: those API requests answer 429 (Daily-limit) with `Retry-After` an
    /// ISO time one second ahead.
    pub daily_limit: Option<NonZeroU64>,
    /// `server_error=EVERY`: those API requests answer 500.
    pub server_error: Option<NonZeroU64>,
    /// `token_invalidate=EVERY`: those API requests revoke every issued token and answer 401
    /// code 124 (another process took a new token).
    pub token_invalidate: Option<NonZeroU64>,
    /// `token_invalidate_once=N`: the N-th API request (only) does the same.
    pub token_invalidate_once: Option<NonZeroU64>,
    /// `slow_ms=N`: delay before every answer.
    pub slow: Duration,
    /// `token_ttl_s=N`: access-token lifetime (default 3599).
    pub token_ttl: Duration,
    /// `page_token_ttl_s=N`: page-token lifetime (default 900).
    pub page_token_ttl: Duration,
    /// `medium_per_s=N`, `heavy_per_s=N`: the per-second limits (default 20 and 10; 0 = none).
    pub medium_per_s: u32,
    pub heavy_per_s: u32,
    /// `token_mode=coexist|invalidate_old`: whether a new token revokes older ones.
    pub new_token_invalidates_old: bool,
    /// `paid=false`: the account has no Pro plan; the report answers 400 code 200.
    pub paid: bool,
    /// `list_page_max=N`: the discovery lists (users, channels, sessions, the report's
    /// sessions) hold at most N items a page, whatever `page_size` asks (Zoom may answer with
    /// fewer), so that their paging is exercised by the emulator's small account.
    pub list_page_max: Option<NonZeroU64>,
    /// `edits_by=own_time|original_time`: an edit or delete is in the range of its own time
    /// (default) or, once made, in its original message's range (see [`data::VersionsBy`]).
    pub edits_by: data::VersionsBy,
    /// `files_url=ORIGIN`: the listed `download_url`s point at this origin instead of the
    /// emulator's file host (a test's own listener, to see what a foreign host receives).
    pub files_url: Option<String>,
    /// `file_server_error=EVERY`: those file-host downloads answer 500.
    pub file_server_error: Option<NonZeroU64>,
}

impl Default for ZoomFaults {
    fn default() -> ZoomFaults {
        ZoomFaults {
            page_token_expiry: None,
            rate_limit: None,
            daily_limit: None,
            server_error: None,
            token_invalidate: None,
            token_invalidate_once: None,
            slow: Duration::ZERO,
            token_ttl: Duration::from_secs(3599),
            page_token_ttl: Duration::from_secs(900),
            medium_per_s: 20,
            heavy_per_s: 10,
            new_token_invalidates_old: false,
            paid: true,
            list_page_max: None,
            edits_by: data::VersionsBy::OwnTime,
            files_url: None,
            file_server_error: None,
        }
    }
}

impl ZoomFaults {
    /// Every key the spec accepts, fully qualified.
    pub const KEYS: [&str; 17] = [
        "zoom.page_token_expiry",
        "zoom.rate_limit",
        "zoom.daily_limit",
        "zoom.server_error",
        "zoom.token_invalidate",
        "zoom.token_invalidate_once",
        "zoom.slow_ms",
        "zoom.token_ttl_s",
        "zoom.page_token_ttl_s",
        "zoom.medium_per_s",
        "zoom.heavy_per_s",
        "zoom.token_mode",
        "zoom.paid",
        "zoom.list_page_max",
        "zoom.edits_by",
        "zoom.files_url",
        "zoom.file_server_error",
    ];

    /// Sets one key (without its `zoom.` prefix) from its spec value.
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
        let per_s = || {
            value
                .parse::<u32>()
                .map_err(|_| "expected a whole number >= 0".to_owned())
        };
        match key {
            "page_token_expiry" => self.page_token_expiry = every()?,
            "rate_limit" => self.rate_limit = every()?,
            "daily_limit" => self.daily_limit = every()?,
            "server_error" => self.server_error = every()?,
            "token_invalidate" => self.token_invalidate = every()?,
            "token_invalidate_once" => self.token_invalidate_once = every()?,
            "list_page_max" => self.list_page_max = every()?,
            "file_server_error" => self.file_server_error = every()?,
            "files_url" => {
                let origin = value.trim_end_matches('/');
                if !origin.starts_with("http://") && !origin.starts_with("https://") {
                    return Err("expected an origin like http://127.0.0.1:PORT".to_owned());
                }
                self.files_url = Some(origin.to_owned());
            }
            "slow_ms" => self.slow = Duration::from_millis(number()?),
            "token_ttl_s" => self.token_ttl = Duration::from_secs(number()?),
            "page_token_ttl_s" => self.page_token_ttl = Duration::from_secs(number()?),
            "medium_per_s" => self.medium_per_s = per_s()?,
            "heavy_per_s" => self.heavy_per_s = per_s()?,
            "token_mode" => {
                self.new_token_invalidates_old = match value {
                    "invalidate_old" => true,
                    "coexist" => false,
                    _ => return Err("expected `coexist` or `invalidate_old`".to_owned()),
                }
            }
            "edits_by" => {
                self.edits_by = match value {
                    "own_time" => data::VersionsBy::OwnTime,
                    "original_time" => data::VersionsBy::OriginalTime,
                    _ => return Err("expected `own_time` or `original_time`".to_owned()),
                }
            }
            "paid" => {
                self.paid = value
                    .parse()
                    .map_err(|_| "expected `true` or `false`".to_owned())?
            }
            _ => {
                return Err(format!(
                    "unknown key; Zoom keys are {}",
                    Self::KEYS.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// Zoom request counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ZoomStats {
    /// Requests to the token endpoint.
    pub token_requests: u64,
    /// API requests on Medium endpoints, answered or not.
    pub medium_requests: u64,
    /// API requests on Heavy endpoints, answered or not.
    pub heavy_requests: u64,
    /// 429 answers because a per-second bucket was empty (our pacing's fault).
    pub rate_limited: u64,
    /// 429 answers injected by the `rate_limit` / `daily_limit` faults.
    pub rate_limit_faults: u64,
    /// 401 answers (bad, expired or revoked tokens).
    pub unauthorized: u64,
    /// 500 answers of the `server_error` fault.
    pub server_errors: u64,
    /// 400 code 300 answers to a page token (expired, foreign or the fault).
    pub page_token_rejections: u64,
    /// Other 400 answers.
    pub bad_requests: u64,
    /// 404 answers (unknown user, channel or session).
    pub not_found: u64,
    /// 200 answers of the message endpoints (user messages and session reports).
    pub pages_served: u64,
    /// Most API requests in flight at once.
    pub max_in_flight: u64,
    /// Requests to the file host (`GET /file/{id}`), answered or not.
    pub file_requests: u64,
    /// Files the file host served whole (200).
    pub files_served: u64,
    /// When the first and the latest API request arrived, in µs since the emulator started:
    /// `(api requests - 1) / (last - first)` is the rate a client sustained.
    pub first_request_us: u64,
    pub last_request_us: u64,
}

/// The credentials the emulator accepts; see [`crate::Emulator::credentials`].
pub(crate) fn credentials() -> Vec<(String, String)> {
    [
        ("zoom.account_id", ACCOUNT_ID),
        ("zoom.client_id", CLIENT_ID),
        ("zoom.client_secret", CLIENT_SECRET),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The Zoom routes, bound to their state.
pub(crate) fn router(zoom: Arc<Zoom>) -> Router {
    Router::new()
        .route("/oauth/token", post(token))
        .route("/v2/users", get(users))
        .route("/v2/chat/users/{user}/messages", get(user_messages))
        .route("/v2/chat/users/{user}/channels", get(user_channels))
        .route("/v2/chat/users/{user}/sessions", get(user_sessions))
        .route("/v2/report/chat/sessions", get(report_sessions))
        .route("/v2/report/chat/sessions/{id}", get(report_messages))
        .with_state(zoom)
}

/// Zoom's file host (`file.zoom.us` on the real service): served on an origin of its own, so
/// that a download always goes to another host than the API, with the same Bearer token.
pub(crate) fn file_router(zoom: Arc<Zoom>) -> Router {
    Router::new()
        .route("/file/{id}", get(file))
        .with_state(zoom)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Label {
    Medium,
    Heavy,
}

/// A token bucket holding one second of requests.
struct Bucket {
    tokens: f64,
    at: Option<Instant>,
}

impl Bucket {
    fn take(&mut self, per_s: u32, now: Instant) -> bool {
        if per_s == 0 {
            return true;
        }
        let cap = f64::from(per_s);
        let tokens = match self.at {
            None => cap,
            Some(at) => (self.tokens + now.duration_since(at).as_secs_f64() * cap).min(cap),
        };
        self.at = Some(now);
        if tokens >= 1.0 {
            self.tokens = tokens - 1.0;
            true
        } else {
            self.tokens = tokens;
            false
        }
    }
}

struct PageToken {
    query: String,
    offset: usize,
    expires: Instant,
}

struct Inner {
    started: Instant,
    tokens: HashMap<String, Instant>,
    page_tokens: HashMap<String, PageToken>,
    medium: Bucket,
    heavy: Bucket,
    api_requests: u64,
    paged_requests: u64,
    in_flight: u64,
    stats: ZoomStats,
}

/// `GET /file/{id}?size=N`: the file's deterministic content ([`data::file_content`]) for a
/// valid Bearer token; 401 code 124 without one, 500 under the `file_server_error` fault.
async fn file(
    State(zoom): State<Arc<Zoom>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let q = parse_query(raw);
    let now = clock::now();
    let size = {
        let mut inner = zoom.lock();
        inner.stats.file_requests += 1;
        let n = inner.stats.file_requests;
        let token = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if inner.tokens.get(token).is_none_or(|exp| *exp <= now) {
            inner.stats.unauthorized += 1;
            return ApiError::new(StatusCode::UNAUTHORIZED, 124, "Invalid access token.")
                .into_response();
        }
        if fires(zoom.faults.file_server_error, n) {
            inner.stats.server_errors += 1;
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                500,
                "Internal server error.",
            )
            .into_response();
        }
        let Some(size) = param(&q, "size").and_then(|s| s.parse::<usize>().ok()) else {
            inner.stats.not_found += 1;
            return ApiError::new(StatusCode::NOT_FOUND, 1001, "File does not exist.")
                .into_response();
        };
        inner.stats.files_served += 1;
        size
    };
    if !zoom.faults.slow.is_zero() {
        tokio::time::sleep(zoom.faults.slow).await;
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        data::file_content(&id, size),
    )
        .into_response()
}

/// Shared state of the Zoom emulator.
pub(crate) struct Zoom {
    seed: u64,
    scale: f64,
    faults: ZoomFaults,
    base_url: String,
    /// The origin the listed `download_url`s point at: the file host, or the `files_url` fault.
    files_url: String,
    state: Mutex<Inner>,
}

/// An error answer `{code, message}` with optional headers.
struct ApiError {
    status: StatusCode,
    code: u32,
    message: String,
    headers: Vec<(HeaderName, String)>,
}

impl ApiError {
    fn new(status: StatusCode, code: u32, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, 300, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            axum::Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response();
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                r.headers_mut().insert(name, v);
            }
        }
        r
    }
}

type Query = Vec<(String, String)>;

fn parse_query(raw: Option<String>) -> Query {
    url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn param<'a>(q: &'a Query, name: &str) -> Option<&'a str> {
    q.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

fn flag(q: &Query, name: &str) -> bool {
    param(q, name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The query minus paging, which a page token is tied to.
fn query_key(path: &str, q: &Query) -> String {
    let mut parts: Vec<String> = q
        .iter()
        .filter(|(k, _)| k != "next_page_token")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    parts.sort();
    format!("{path}?{}", parts.join("&"))
}

fn page_size(q: &Query, default: usize, max: usize) -> Result<usize, ApiError> {
    match param(q, "page_size") {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .map(|n| n.min(max))
            .ok_or_else(|| ApiError::bad(format!("Invalid page_size: {v}"))),
    }
}

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn parse_date_time(name: &str, v: &str) -> Result<i64, ApiError> {
    DateTime::parse_from_rfc3339(v)
        .map(|d| d.timestamp_millis())
        .map_err(|_| ApiError::bad(format!("Invalid {name}: expected yyyy-MM-dd'T'HH:mm:ss'Z'")))
}

fn parse_day(name: &str, v: Option<&str>) -> Result<NaiveDate, ApiError> {
    let v = v.ok_or_else(|| ApiError::bad(format!("{name} is required.")))?;
    NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .map_err(|_| ApiError::bad(format!("Invalid {name}: expected yyyy-mm-dd")))
}

fn day_ms(d: NaiveDate) -> i64 {
    d.and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp_millis())
        .unwrap_or_default()
}

impl Zoom {
    pub(crate) fn new(config: &EmulatorConfig, base_url: String, files_url: String) -> Zoom {
        Zoom {
            seed: config.seed,
            scale: config.scale,
            faults: config.faults.zoom.clone(),
            base_url,
            files_url: config.faults.zoom.files_url.clone().unwrap_or(files_url),
            state: Mutex::new(Inner {
                started: clock::now(),
                tokens: HashMap::new(),
                page_tokens: HashMap::new(),
                medium: Bucket {
                    tokens: 0.0,
                    at: None,
                },
                heavy: Bucket {
                    tokens: 0.0,
                    at: None,
                },
                api_requests: 0,
                paged_requests: 0,
                in_flight: 0,
                stats: ZoomStats::default(),
            }),
        }
    }

    pub(crate) fn stats(&self) -> ZoomStats {
        self.lock().stats.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn token(&self, query: &Query, headers: &HeaderMap) -> Response {
        use base64::Engine as _;
        self.lock().stats.token_requests += 1;
        let oauth_error = |reason: &str, error: &str| {
            (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"reason": reason, "error": error})),
            )
                .into_response()
        };
        let basic = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|v| {
                base64::engine::general_purpose::STANDARD
                    .decode(v.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok());
        if basic.as_deref() != Some(&format!("{CLIENT_ID}:{CLIENT_SECRET}")) {
            return oauth_error("Invalid client_id or client_secret", "invalid_client");
        }
        if param(query, "grant_type") != Some("account_credentials") {
            return oauth_error("Unsupported grant type", "unsupported_grant_type");
        }
        if param(query, "account_id") != Some(ACCOUNT_ID) {
            return oauth_error("Invalid account_id", "invalid_request");
        }
        let now = clock::now();
        let token = random_id();
        let mut inner = self.lock();
        inner.tokens.retain(|_, exp| *exp > now);
        if self.faults.new_token_invalidates_old {
            inner.tokens.clear();
        }
        inner
            .tokens
            .insert(token.clone(), now + self.faults.token_ttl);
        axum::Json(json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": self.faults.token_ttl.as_secs(),
            "scope": "chat_message:read:admin chat_channel:read:admin user:read:admin report_chat:read:admin",
            "api_url": self.base_url,
        }))
        .into_response()
    }

    /// The gate every API request passes, in order: auth, token-revocation fault, the real
    /// rate limit, the 429 faults, the 5xx fault, then the page token.
    fn admit(
        &self,
        label: Label,
        headers: &HeaderMap,
        path: &str,
        q: &Query,
    ) -> Result<usize, ApiError> {
        let now = clock::now();
        let mut inner = self.lock();
        let inner = &mut *inner;
        match label {
            Label::Medium => inner.stats.medium_requests += 1,
            Label::Heavy => inner.stats.heavy_requests += 1,
        }
        let at = now.duration_since(inner.started).as_micros() as u64;
        if inner.stats.medium_requests + inner.stats.heavy_requests == 1 {
            inner.stats.first_request_us = at;
        }
        inner.stats.last_request_us = at;
        let token = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let invalid = |inner: &mut Inner| {
            inner.stats.unauthorized += 1;
            ApiError::new(StatusCode::UNAUTHORIZED, 124, "Invalid access token.")
        };
        if inner.tokens.get(token).is_none_or(|exp| *exp <= now) {
            return Err(invalid(inner));
        }
        inner.api_requests += 1;
        let n = inner.api_requests;
        if fires(self.faults.token_invalidate, n)
            || self
                .faults
                .token_invalidate_once
                .is_some_and(|at| at.get() == n)
        {
            inner.tokens.clear();
            return Err(invalid(inner));
        }
        let (bucket, per_s, name) = match label {
            Label::Medium => (&mut inner.medium, self.faults.medium_per_s, "Medium"),
            Label::Heavy => (&mut inner.heavy, self.faults.heavy_per_s, "Heavy"),
        };
        if !bucket.take(per_s, now) {
            inner.stats.rate_limited += 1;
            return Err(rate_limited(name, per_s, false));
        }
        if fires(self.faults.rate_limit, n) {
            inner.stats.rate_limit_faults += 1;
            return Err(rate_limited(name, per_s, false));
        }
        if fires(self.faults.daily_limit, n) {
            inner.stats.rate_limit_faults += 1;
            return Err(rate_limited(name, per_s, true));
        }
        if fires(self.faults.server_error, n) {
            inner.stats.server_errors += 1;
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                500,
                "Internal server error.",
            ));
        }
        let Some(page_token) = param(q, "next_page_token") else {
            return Ok(0);
        };
        inner.paged_requests += 1;
        let key = query_key(path, q);
        let valid = inner
            .page_tokens
            .get(page_token)
            .filter(|t| t.query == key && t.expires > now)
            .map(|t| t.offset);
        match valid {
            Some(offset) if !fires(self.faults.page_token_expiry, inner.paged_requests) => {
                Ok(offset)
            }
            _ => {
                inner.stats.page_token_rejections += 1;
                Err(ApiError::bad("The next page token is invalid or expired."))
            }
        }
    }

    /// Issues the token of the page after `end`, or `""` on the last page.
    fn next_token(&self, path: &str, q: &Query, end: usize, total: usize) -> String {
        if end >= total {
            return String::new();
        }
        let now = clock::now();
        let token = random_id();
        let mut inner = self.lock();
        inner.page_tokens.retain(|_, t| t.expires > now);
        inner.page_tokens.insert(
            token.clone(),
            PageToken {
                query: query_key(path, q),
                offset: end,
                expires: now + self.faults.page_token_ttl,
            },
        );
        token
    }

    fn count(&self, f: impl FnOnce(&mut ZoomStats)) {
        f(&mut self.lock().stats);
    }

    /// Runs one API request: the slow fault, the gate, the handler; counts what it answers.
    async fn serve(
        &self,
        label: Label,
        headers: &HeaderMap,
        path: &str,
        q: &Query,
        handler: impl FnOnce(usize) -> Result<Value, ApiError>,
    ) -> Response {
        {
            let mut inner = self.lock();
            inner.in_flight += 1;
            inner.stats.max_in_flight = inner.stats.max_in_flight.max(inner.in_flight);
        }
        if !self.faults.slow.is_zero() {
            tokio::time::sleep(self.faults.slow).await;
        }
        let result = self.admit(label, headers, path, q).and_then(handler);
        let mut inner = self.lock();
        inner.in_flight -= 1;
        match result {
            Ok(body) => axum::Json(body).into_response(),
            Err(e) => {
                match e.status {
                    StatusCode::NOT_FOUND => inner.stats.not_found += 1,
                    StatusCode::BAD_REQUEST
                        if e.code != 300 || !e.message.contains("page token") =>
                    {
                        inner.stats.bad_requests += 1
                    }
                    _ => {}
                }
                e.into_response()
            }
        }
    }

    fn user_of(&self, key: &str) -> Result<(usize, data::User), ApiError> {
        if key == "me" {
            return Err(ApiError::bad(
                "`me` is not allowed for an account-level (Server-to-Server) app.",
            ));
        }
        data::users()
            .into_iter()
            .enumerate()
            .find(|(_, u)| u.id == key || u.email.eq_ignore_ascii_case(key))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    1001,
                    format!("User does not exist: {key}."),
                )
            })
    }

    fn messages_page(&self, user: &str, q: &Query, offset: usize) -> Result<Value, ApiError> {
        let (ui, _) = self.user_of(user)?;
        let search = param(q, "search_type").is_some() || param(q, "search_key").is_some();
        let versions = flag(q, "include_deleted_and_edited_message");
        if search && versions {
            return Err(ApiError::bad(
                "search_type/search_key cannot be combined with include_deleted_and_edited_message.",
            ));
        }
        let conv = match (param(q, "to_channel"), param(q, "to_contact")) {
            (Some(ch), _) => Some(
                data::conversations_of(ui)
                    .into_iter()
                    .find(|c| matches!(c, Conversation::Channel { id, .. } if id == ch))
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::NOT_FOUND,
                            3001,
                            format!("Channel does not exist: {ch}."),
                        )
                    })?,
            ),
            (None, Some(contact)) => {
                let other = data::find_user(contact).ok_or_else(|| {
                    ApiError::new(
                        StatusCode::NOT_FOUND,
                        1001,
                        format!("User does not exist: {contact}."),
                    )
                })?;
                data::conversations_of(ui).into_iter().find(|c| {
                    matches!(c, Conversation::OneToOne { a, b }
                        if data::users()[*a].id == other.id && *b == ui
                        || data::users()[*b].id == other.id && *a == ui)
                })
            }
            (None, None) if search => None,
            (None, None) => {
                return Err(ApiError::bad("to_contact or to_channel is required."));
            }
        };
        let (from, to, date) = match (param(q, "date"), param(q, "from")) {
            (Some(d), _) => {
                let day = parse_day("date", Some(d))?;
                (
                    day_ms(day),
                    day_ms(day) + 86_400_000 - 1,
                    Some(d.to_owned()),
                )
            }
            (None, Some(f)) => {
                let from = parse_date_time("from", f)?;
                // `to` has whole seconds and is inclusive to the end of its second (A).
                let to = match param(q, "to") {
                    Some(t) => parse_date_time("to", t)? + 999,
                    None => Utc::now().timestamp_millis(),
                };
                (from, to, None)
            }
            (None, None) => {
                let today = Utc::now().date_naive();
                (day_ms(today), day_ms(today) + 86_400_000 - 1, None)
            }
        };
        let size = page_size(q, 10, 50)?;
        let mut all = match &conv {
            Some(c) => data::conversation_messages_by(
                self.seed,
                self.scale,
                c,
                from,
                to,
                versions,
                self.faults.edits_by,
            ),
            None => Vec::new(),
        };
        if search && let Some(key) = param(q, "search_key") {
            all.retain(|m| m.text.contains(key));
        }
        let end = (offset + size).min(all.len());
        let items: Vec<Value> = all[offset.min(end)..end]
            .iter()
            .map(|m| user_message_json(m, versions, &self.files_url))
            .collect();
        let path = format!("/v2/chat/users/{user}/messages");
        let next = self.next_token(&path, q, end, all.len());
        self.count(|s| s.pages_served += 1);
        Ok(json!({
            "date": date.unwrap_or_else(|| rfc3339(from)[..10].to_owned()),
            "from": rfc3339(from),
            "to": rfc3339(to),
            "page_size": size,
            "next_page_token": next,
            "messages": items,
        }))
    }

    #[allow(clippy::too_many_arguments)]
    fn list_page<T: Serialize>(
        &self,
        path: &str,
        q: &Query,
        offset: usize,
        all: Vec<T>,
        field: &str,
        default: usize,
        max: usize,
    ) -> Result<Value, ApiError> {
        let mut size = page_size(q, default, max)?;
        if let Some(cap) = self.faults.list_page_max {
            size = size.min(usize::try_from(cap.get()).unwrap_or(usize::MAX));
        }
        let end = (offset + size).min(all.len());
        let next = self.next_token(path, q, end, all.len());
        let mut page = json!({
            "page_size": size,
            "total_records": all.len(),
            "next_page_token": next,
        });
        page[field] = serde_json::to_value(&all[offset.min(end)..end])
            .map_err(|e| ApiError::bad(e.to_string()))?;
        Ok(page)
    }

    /// `from`/`to` of the report: whole UTC days, at most one calendar month, within six months.
    fn report_range(&self, q: &Query) -> Result<(NaiveDate, NaiveDate), ApiError> {
        if !self.faults.paid {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                200,
                "Only available for paid account.",
            ));
        }
        let from = parse_day("from", param(q, "from"))?;
        let to = parse_day("to", param(q, "to"))?;
        let today = Utc::now().date_naive();
        if to < from {
            return Err(ApiError::bad("to must not be before from."));
        }
        if from
            .checked_add_months(Months::new(1))
            .is_none_or(|limit| to >= limit)
        {
            return Err(ApiError::bad("The date range must be within one month."));
        }
        let oldest = today
            .checked_sub_months(Months::new(6))
            .unwrap_or(today)
            .with_day(1)
            .unwrap_or(today);
        if from < oldest {
            return Err(ApiError::bad(
                "The date range must be within the last six months.",
            ));
        }
        Ok((from, to))
    }

    fn report_page(&self, id: &str, q: &Query, offset: usize) -> Result<Value, ApiError> {
        let (from, to) = self.report_range(q)?;
        let (_, conv) = data::sessions()
            .into_iter()
            .find(|(s, _)| s == id)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    3001,
                    format!("Session does not exist: {id}."),
                )
            })?;
        let fields = param(q, "include_fields").unwrap_or_default().to_owned();
        let edited = fields.split(',').any(|f| f.trim() == "edited_messages");
        let deleted = fields.split(',').any(|f| f.trim() == "deleted_messages");
        let bots = flag(q, "include_bot_message");
        let reactions = flag(q, "include_reactions");
        let size = page_size(q, 30, 100)?;
        let from_ms = day_ms(from);
        let to_ms = day_ms(to) + 86_400_000 - 1;
        // `query_all_modifications` filters by the version's own time, which is also the
        // timestamp of every version here, so both filters select the same versions.
        let all: Vec<Message> = data::conversation_messages_by(
            self.seed,
            self.scale,
            &conv,
            from_ms,
            to_ms,
            true,
            self.faults.edits_by,
        )
        .into_iter()
        .filter(|m| match m.status {
            Status::Normal => true,
            Status::Edited => edited,
            Status::Deleted => deleted,
        })
        .collect();
        let end = (offset + size).min(all.len());
        let mut page = json!({
            "from": from.to_string(),
            "to": to.to_string(),
            "page_size": size,
            "next_page_token": self.next_token(&format!("/v2/report/chat/sessions/{id}"), q, end, all.len()),
            "messages": [],
        });
        let mut messages = Vec::new();
        let mut edits = Vec::new();
        let mut deletes = Vec::new();
        for m in &all[offset.min(end)..end] {
            let item = report_message_json(m, &conv, bots, reactions, &self.files_url);
            match m.status {
                Status::Normal => messages.push(item),
                Status::Edited => edits.push(item),
                Status::Deleted => deletes.push(item),
            }
        }
        page["messages"] = Value::Array(messages);
        if edited {
            page["edited_messages"] = Value::Array(edits);
        }
        if deleted {
            page["deleted_messages"] = Value::Array(deletes);
        }
        self.count(|s| s.pages_served += 1);
        Ok(page)
    }
}

fn rate_limited(category: &str, per_s: u32, daily: bool) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        429,
        if daily {
            "You have reached the maximum daily rate limit for this API. Refer to the response header for details on when you can make another request."
        } else {
            "You have reached the maximum per-second rate limit for this API. Try again later."
        },
    );
    e.headers.push((
        HeaderName::from_static("x-ratelimit-category"),
        category.to_owned(),
    ));
    e.headers.push((
        HeaderName::from_static("x-ratelimit-type"),
        if daily { "Daily-limit" } else { "QPS" }.to_owned(),
    ));
    e.headers.push((
        HeaderName::from_static("x-ratelimit-limit"),
        per_s.to_string(),
    ));
    e.headers.push((
        HeaderName::from_static("x-ratelimit-remaining"),
        "0".to_owned(),
    ));
    if daily {
        let at = Utc::now() + chrono::Duration::seconds(1);
        e.headers
            .push((RETRY_AFTER, at.to_rfc3339_opts(SecondsFormat::Secs, true)));
    } else {
        e.headers
            .push((HeaderName::from_static("x-ratelimit-reset"), "1".to_owned()));
    }
    e
}

fn files_json(m: &Message, files_url: &str) -> Value {
    Value::Array(
        m.files
            .iter()
            .map(|f| {
                json!({"file_id": f.file_id, "file_name": f.file_name,
                       "file_size": f.file_size, "download_url": f.download_url(files_url)})
            })
            .collect(),
    )
}

fn bot_json(m: &Message) -> Value {
    json!({"is_markdown_support": false, "source": "chatlake-bot",
           "content": {"head": {"text": "Bot"}, "body": [{"type": "message", "text": m.text}]}})
}

fn user_message_json(m: &Message, versions: bool, files_url: &str) -> Value {
    let sender = m.sender();
    let mut v = json!({
        "id": m.id,
        "message": m.text,
        "message_type": if m.files.is_empty() { "plain_text_message" } else { "file_and_text" },
        "sender": sender.email,
        "sender_member_id": sender.member_id,
        "send_member_id": sender.member_id,
        "sender_display_name": sender.display_name,
        "date_time": rfc3339(m.timestamp),
        "timestamp": m.timestamp,
        "files": files_json(m, files_url),
        "rich_text": [],
        "at_items": [],
    });
    if versions {
        v["status"] = json!(m.status.as_str());
    }
    if let Some(r) = &m.reply_to {
        v["reply_main_message_id"] = json!(r);
        v["reply_main_message_timestamp"] = json!(m.timestamp - 1);
    }
    if let Some(f) = m.files.first() {
        // The legacy single-file fields mirror the first file.
        v["file_id"] = json!(f.file_id);
        v["file_name"] = json!(f.file_name);
        v["file_size"] = json!(f.file_size);
        v["download_url"] = json!(f.download_url(files_url));
    }
    if m.is_bot {
        v["bot_message"] = bot_json(m);
    }
    v
}

fn report_message_json(
    m: &Message,
    conv: &Conversation,
    bots: bool,
    reactions: bool,
    files_url: &str,
) -> Value {
    let sender = m.sender();
    let receiver = match conv {
        Conversation::Channel { id, .. } => id.clone(),
        Conversation::OneToOne { a, b } => {
            let other = if *a == m.sender { *b } else { *a };
            data::users()[other].email.clone()
        }
    };
    let mut v = json!({
        "id": m.id,
        "message": m.text,
        "sender": sender.email,
        "sender_member_id": sender.member_id,
        "sender_display_name": sender.display_name,
        "receiver": receiver,
        "is_sender_external": false,
        "date_time": rfc3339(m.timestamp),
        "timestamp": m.timestamp,
        "files": files_json(m, files_url),
        "rich_text": [],
    });
    if m.status != Status::Normal {
        v["action_timestamp"] = json!(m.timestamp);
    }
    if let Some(r) = &m.reply_to {
        v["reply_main_message_id"] = json!(r);
        // A string, as in the old sample.
        v["reply_main_message_timestamp"] = json!((m.timestamp - 1).to_string());
    }
    if m.status == Status::Normal {
        if bots && m.is_bot {
            v["bot_message"] = bot_json(m);
        }
        if reactions && m.id.ends_with('0') {
            v["reactions"] = json!([{"emoji": "👍", "total_count": 1, "user_ids": ["zu00"], "member_ids": ["mem00"]}]);
        }
    }
    v
}

// ---- handlers ---------------------------------------------------------------------------------

async fn token(
    State(zoom): State<Arc<Zoom>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    _body: Bytes,
) -> Response {
    if !zoom.faults.slow.is_zero() {
        tokio::time::sleep(zoom.faults.slow).await;
    }
    zoom.token(&parse_query(raw), &headers)
}

async fn users(
    State(zoom): State<Arc<Zoom>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let q = parse_query(raw);
    let path = "/v2/users";
    zoom.serve(Label::Medium, &headers, path, &q, |offset| {
        // One status per listing, `active` unless asked (Zoom's `status` parameter).
        let status = match param(&q, "status").unwrap_or("active") {
            "active" => data::UserStatus::Active,
            "inactive" => data::UserStatus::Inactive,
            "pending" => data::UserStatus::Pending,
            other => {
                return Err(ApiError::bad(format!(
                    "Invalid field: status `{other}`; expected active, inactive or pending."
                )));
            }
        };
        let all: Vec<Value> = data::users()
            .iter()
            .filter(|u| u.status == status)
            .map(|u| json!({"id": u.id, "email": u.email, "display_name": u.display_name, "status": u.status.as_str(), "type": 2}))
            .collect();
        zoom.list_page(path, &q, offset, all, "users", 30, 300)
    })
    .await
}

async fn user_messages(
    State(zoom): State<Arc<Zoom>>,
    Path(user): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let q = parse_query(raw);
    let path = format!("/v2/chat/users/{user}/messages");
    zoom.serve(Label::Medium, &headers, &path, &q, |offset| {
        zoom.messages_page(&user, &q, offset)
    })
    .await
}

async fn user_channels(
    State(zoom): State<Arc<Zoom>>,
    Path(user): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let q = parse_query(raw);
    let path = format!("/v2/chat/users/{user}/channels");
    zoom.serve(Label::Medium, &headers, &path, &q, |offset| {
        let (ui, _) = zoom.user_of(&user)?;
        let all: Vec<Value> = data::conversations_of(ui)
            .into_iter()
            .filter_map(|c| match c {
                Conversation::Channel { id, name, .. } => Some(json!({"id": id, "jid": format!("{id}@conference.xmpp.zoom.us"), "name": name, "type": 3})),
                Conversation::OneToOne { .. } => None,
            })
            .collect();
        zoom.list_page(&path, &q, offset, all, "channels", 10, 50)
    })
    .await
}

async fn user_sessions(
    State(zoom): State<Arc<Zoom>>,
    Path(user): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let q = parse_query(raw);
    let path = format!("/v2/chat/users/{user}/sessions");
    zoom.serve(Label::Medium, &headers, &path, &q, |offset| {
        let (ui, _) = zoom.user_of(&user)?;
        let want = param(&q, "type");
        let users = data::users();
        let all: Vec<Value> = data::conversations_of(ui)
            .into_iter()
            .filter_map(|c| match c {
                Conversation::Channel { id, name, .. } if want != Some("1:1") => Some(json!({
                    "channel_id": id, "name": name, "type": "groupchat",
                    "last_message_sent_time": "2025-01-01T00:00:00Z"})),
                Conversation::OneToOne { a, b } if want != Some("groupchat") => {
                    let other = &users[if a == ui { b } else { a }];
                    Some(json!({"name": other.display_name, "type": "1:1",
                        "peer_contact_email": other.email, "peer_contact_user_id": other.id,
                        "peer_contact_member_id": other.member_id,
                        "last_message_sent_time": "2025-01-01T00:00:00Z"}))
                }
                _ => None,
            })
            .collect();
        zoom.list_page(&path, &q, offset, all, "sessions", 10, 50)
    })
    .await
}

async fn report_sessions(
    State(zoom): State<Arc<Zoom>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let q = parse_query(raw);
    let path = "/v2/report/chat/sessions";
    zoom.serve(Label::Heavy, &headers, path, &q, |offset| {
        let (from, to) = zoom.report_range(&q)?;
        let users = data::users();
        let all: Vec<Value> = data::sessions()
            .into_iter()
            .map(|(id, c)| {
                let emails: Vec<&str> = c.members().iter().map(|m| users[*m].email.as_str()).collect();
                match &c {
                    Conversation::Channel { id: ch, name, .. } => json!({"id": id, "name": name, "type": "Group",
                        "channel_id": ch, "member_emails": emails, "status": "active",
                        "has_external_member": false, "last_message_sent_time": "2025-01-01T00:00:00.000Z"}),
                    Conversation::OneToOne { .. } => json!({"id": id, "name": c.key(), "type": "1:1",
                        "member_emails": emails, "status": "active",
                        "has_external_member": false, "last_message_sent_time": "2025-01-01T00:00:00.000Z"}),
                }
            })
            .collect();
        let mut page = zoom.list_page(path, &q, offset, all, "sessions", 30, 300)?;
        page["from"] = json!(from.to_string());
        page["to"] = json!(to.to_string());
        Ok(page)
    })
    .await
}

async fn report_messages(
    State(zoom): State<Arc<Zoom>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let q = parse_query(raw);
    let path = format!("/v2/report/chat/sessions/{id}");
    zoom.serve(Label::Medium, &headers, &path, &q, |offset| {
        zoom.report_page(&id, &q, offset)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_one_second_of_requests_then_the_rate() {
        let mut b = Bucket {
            tokens: 0.0,
            at: None,
        };
        let t0 = Instant::now();
        assert!((0..20).all(|_| b.take(20, t0)));
        assert!(!b.take(20, t0));
        assert!(b.take(20, t0 + Duration::from_millis(50)));
        assert!(!b.take(20, t0 + Duration::from_millis(60)));
        assert!(b.take(0, t0));
    }

    #[test]
    fn faults_parse() {
        let mut f = ZoomFaults::default();
        f.set("page_token_expiry", "3").unwrap();
        f.set("token_mode", "invalidate_old").unwrap();
        f.set("paid", "false").unwrap();
        f.set("list_page_max", "2").unwrap();
        assert_eq!(f.list_page_max.map(NonZeroU64::get), Some(2));
        assert_eq!(f.page_token_expiry.map(NonZeroU64::get), Some(3));
        assert!(f.new_token_invalidates_old && !f.paid);
        assert!(f.set("nope", "1").unwrap_err().contains("zoom.rate_limit"));
        assert!(f.set("rate_limit", "0").is_err());
    }
}
