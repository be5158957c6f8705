//! Emulator of Agile Telecom's Qlara history export (contract E5 of `shared/providers.md`):
//! submit an export, poll the list of exports, fetch a pre-signed download URL (regenerate it
//! when it expired) and download the CSV from that URL, which needs no API key.
//!
//! Routes under `/api/partner-gateway/v1`: `POST /messages/history/export`, `GET /exports`,
//! `GET /exports/{id}`, `POST /exports/{id}`; and the signed URL `GET /signed/{token}`. State sits
//! behind one mutex never held across an `.await`.

pub mod data;

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{EmulatorConfig, clock, fires, random_id};

/// The API key the emulator accepts (`X-Api-Key`).
pub const API_KEY: &str = "chatlake-emulator-qlara-key";
/// The Basic-auth user the emulator accepts.
pub const USERNAME: &str = "chatlake-emulator";
/// The Basic-auth password the emulator accepts.
pub const PASSWORD: &str = "chatlake-emulator-qlara-password";
/// The path prefix of the API.
pub const API_PREFIX: &str = "/api/partner-gateway/v1";
/// Target size of a file body chunk.
const CHUNK: usize = 64 * 1024;

/// Qlara faults and tunables, `qlara.<key>=<value>` items of the `--faults` spec. Counter-based
/// faults fire on the 1st, (1+EVERY)th, (1+2·EVERY)th … event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QlaraFaults {
    /// `job_polls=N`: a job completes only once N list requests have seen it pending (default 0:
    /// it is complete on the first look). A huge N makes jobs that never finish.
    pub job_polls: u64,
    /// `slow_jobs_ms=N`: a job completes no sooner than N ms after it was accepted.
    pub slow_jobs: Duration,
    /// `fail_job=EVERY`: those submitted jobs end `FAILED` instead of `COMPLETED`.
    pub fail_job: Option<NonZeroU64>,
    /// `url_expiry=EVERY`: those issued download URLs are born expired (the file answers 403
    /// and the job turns `EXPIRED`).
    pub url_expiry: Option<NonZeroU64>,
    /// `url_ttl_s=N`: lifetime of a download URL (default 900).
    pub url_ttl: Duration,
    /// `rate_limit=EVERY`: those API requests answer 429 with `retryAfter`.
    pub rate_limit: Option<NonZeroU64>,
    /// `retry_after_s=N`: the `retryAfter` of a 429 (default 1).
    pub retry_after_s: u64,
    /// `server_error=EVERY`: those API requests (of the ones the rate fault let through) answer
    /// 500.
    pub server_error: Option<NonZeroU64>,
    /// `list_shape=array|page`: the exports list as a bare array (default) or `{"content":[...]}`.
    pub list_page: bool,
    /// `rate_limit_per_min=N`: API requests allowed per minute and key (default 1000, the
    /// Production plan; 0 = none).
    pub per_minute: u32,
    /// `rate_limit_per_s=N`: API requests allowed per second and key (default 50; 0 = none).
    pub per_second: u32,
    /// `export_by=activity|send`: an export holds messages sent or reported in its range
    /// (default), or only those sent in it, so a late report shows only when a later export
    /// covers the message again (see [`data::Selection`]).
    pub selection: data::Selection,
}

impl Default for QlaraFaults {
    fn default() -> QlaraFaults {
        QlaraFaults {
            job_polls: 0,
            slow_jobs: Duration::ZERO,
            fail_job: None,
            url_expiry: None,
            url_ttl: Duration::from_secs(900),
            rate_limit: None,
            retry_after_s: 1,
            server_error: None,
            list_page: false,
            per_minute: 1000,
            per_second: 50,
            selection: data::Selection::SentOrReportedInRange,
        }
    }
}

impl QlaraFaults {
    /// Every key the spec accepts, fully qualified.
    pub const KEYS: [&str; 12] = [
        "qlara.job_polls",
        "qlara.slow_jobs_ms",
        "qlara.fail_job",
        "qlara.url_expiry",
        "qlara.url_ttl_s",
        "qlara.rate_limit",
        "qlara.retry_after_s",
        "qlara.server_error",
        "qlara.list_shape",
        "qlara.rate_limit_per_min",
        "qlara.rate_limit_per_s",
        "qlara.export_by",
    ];

    /// Sets one key (without its `qlara.` prefix) from its spec value.
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
        let limit = || {
            value
                .parse::<u32>()
                .map_err(|_| "expected a whole number >= 0".to_owned())
        };
        match key {
            "job_polls" => self.job_polls = number()?,
            "slow_jobs_ms" => self.slow_jobs = Duration::from_millis(number()?),
            "fail_job" => self.fail_job = every()?,
            "url_expiry" => self.url_expiry = every()?,
            "url_ttl_s" => self.url_ttl = Duration::from_secs(number()?),
            "rate_limit" => self.rate_limit = every()?,
            "retry_after_s" => self.retry_after_s = number()?,
            "server_error" => self.server_error = every()?,
            "rate_limit_per_min" => self.per_minute = limit()?,
            "rate_limit_per_s" => self.per_second = limit()?,
            "export_by" => {
                self.selection = match value {
                    "activity" => data::Selection::SentOrReportedInRange,
                    "send" => data::Selection::SentInRange,
                    _ => return Err("expected `activity` or `send`".to_owned()),
                }
            }
            "list_shape" => {
                self.list_page = match value {
                    "page" => true,
                    "array" => false,
                    _ => return Err("expected `array` or `page`".to_owned()),
                }
            }
            _ => {
                return Err(format!(
                    "unknown key; Qlara keys are {}",
                    Self::KEYS.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// Qlara request counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QlaraStats {
    /// `POST /messages/history/export` answered 202.
    pub exports_submitted: u64,
    /// `GET /exports` requests answered 200.
    pub list_requests: u64,
    /// `GET /exports/{id}` answered 200 (download URLs issued).
    pub urls_issued: u64,
    /// `POST /exports/{id}` answered 202.
    pub regenerations: u64,
    /// Jobs that ended `FAILED`.
    pub failed_jobs: u64,
    /// Requests to signed URLs, answered or not.
    pub signed_url_requests: u64,
    /// Of those, the ones that carried an API key or an `Authorization` header (must be 0).
    pub signed_url_requests_with_key: u64,
    /// Signed URLs answered 403 because they had expired.
    pub expired_url_requests: u64,
    /// Files served.
    pub files_served: u64,
    /// 429 answers of the `rate_limit` fault.
    pub rate_limited: u64,
    /// 429 answers because the key went over its real per-second or per-minute limit
    /// (chatlake's request budget keeps this at 0).
    pub limit_exceeded: u64,
    /// 500 answers of the `server_error` fault.
    pub server_errors: u64,
    /// 401 answers.
    pub unauthorized: u64,
    /// 400 answers.
    pub bad_requests: u64,
}

/// The credentials the emulator accepts; see [`crate::Emulator::credentials`].
pub(crate) fn credentials() -> Vec<(String, String)> {
    [
        ("qlara.api_key", API_KEY),
        ("qlara.username", USERNAME),
        ("qlara.password", PASSWORD),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The Qlara routes, bound to their state.
pub(crate) fn router(qlara: Arc<Qlara>) -> Router {
    Router::new()
        .route(
            &format!("{API_PREFIX}/messages/history/export"),
            axum::routing::post(submit),
        )
        .route(&format!("{API_PREFIX}/exports"), get(list))
        .route(
            &format!("{API_PREFIX}/exports/{{id}}"),
            get(link).post(regenerate),
        )
        .route("/signed/{token}", get(signed))
        .with_state(qlara)
}

/// Shared state of the Qlara emulator.
pub(crate) struct Qlara {
    seed: u64,
    scale: f64,
    faults: QlaraFaults,
    base_url: String,
    state: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    jobs: Vec<Job>,
    urls: HashMap<String, SignedUrl>,
    requests: u64,
    past_rate_fault: u64,
    submitted: u64,
    issued: u64,
    /// Fixed windows of the real limits: (window start, requests in it).
    second: Option<(Instant, u32)>,
    minute: Option<(Instant, u32)>,
    stats: QlaraStats,
}

/// Takes a request from a fixed window of `len`, or returns the seconds until it resets.
fn take(
    window: &mut Option<(Instant, u32)>,
    limit: u32,
    len: Duration,
    now: Instant,
) -> Result<(), u64> {
    if limit == 0 {
        return Ok(());
    }
    if window.is_none_or(|(start, _)| now.duration_since(start) >= len) {
        *window = Some((now, 0));
    }
    let Some((start, used)) = window.as_mut() else {
        return Ok(());
    };
    let start = *start;
    if *used >= limit {
        let left = len.saturating_sub(now.duration_since(start));
        return Err(left.as_secs() + u64::from(left.subsec_nanos() > 0));
    }
    *used += 1;
    Ok(())
}

fn too_many(wait: u64) -> Response {
    let body = json!({
        "status": 429,
        "error": "Too Many Requests",
        "message": format!("Rate limit exceeded. Please retry after {wait} seconds."),
        "retryAfter": wait,
    });
    let mut r = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    let h = r.headers_mut();
    h.insert(
        HeaderName::from_static("x-ratelimit-limit"),
        HeaderValue::from(1000u32),
    );
    h.insert(
        HeaderName::from_static("x-ratelimit-remaining"),
        HeaderValue::from(0u32),
    );
    h.insert(RETRY_AFTER, HeaderValue::from(wait));
    r
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum JobStatus {
    Pending,
    Completed,
    Failed,
    Expired,
}

impl JobStatus {
    fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "PENDING",
            JobStatus::Completed => "COMPLETED",
            JobStatus::Failed => "FAILED",
            JobStatus::Expired => "EXPIRED",
        }
    }
}

struct Job {
    id: String,
    seq: u64,
    start: i64,
    end: i64,
    sender: Option<String>,
    recipient: Option<String>,
    status: JobStatus,
    will_fail: bool,
    polls_seen: u64,
    accepted: Instant,
    created_at: String,
    completed_at: Option<String>,
    /// The current signed URL's token.
    url: Option<String>,
}

struct SignedUrl {
    job: String,
    expires: Instant,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExportRequest {
    start_date_time: Option<String>,
    end_date_time: Option<String>,
    #[serde(default)]
    sender: Option<String>,
    #[serde(default)]
    recipient: Option<String>,
}

#[derive(Deserialize)]
struct ListQuery {
    page: Option<usize>,
    limit: Option<usize>,
}

/// A Spring-style error answer.
fn error(status: StatusCode, message: &str, path: &str) -> Response {
    let body = json!({
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "status": status.as_u16(),
        "error": status.canonical_reason().unwrap_or(""),
        "message": message,
        "path": path,
    });
    (status, axum::Json(body)).into_response()
}

fn now_iso() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

impl Qlara {
    pub(crate) fn new(config: &EmulatorConfig, base_url: String) -> Qlara {
        Qlara {
            seed: config.seed,
            scale: config.scale,
            faults: config.faults.qlara.clone(),
            base_url,
            state: Mutex::new(Inner::default()),
        }
    }

    pub(crate) fn stats(&self) -> QlaraStats {
        self.lock().stats.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Auth and the injected 429/500, in that order, for every API request. The refusal is the
    /// whole answer; it is built once per refused request, so its size does not matter.
    #[allow(clippy::result_large_err)]
    fn gate(&self, inner: &mut Inner, headers: &HeaderMap, path: &str) -> Result<(), Response> {
        if !authorized(headers) {
            inner.stats.unauthorized += 1;
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "Missing or invalid API key",
                path,
            ));
        }
        let now = clock::now();
        let second = take(
            &mut inner.second,
            self.faults.per_second,
            Duration::from_secs(1),
            now,
        );
        let minute = take(
            &mut inner.minute,
            self.faults.per_minute,
            Duration::from_secs(60),
            now,
        );
        if let Err(wait) = second.and(minute) {
            inner.stats.limit_exceeded += 1;
            return Err(too_many(wait.max(1)));
        }
        inner.requests += 1;
        if fires(self.faults.rate_limit, inner.requests) {
            inner.stats.rate_limited += 1;
            return Err(too_many(self.faults.retry_after_s));
        }
        inner.past_rate_fault += 1;
        if fires(self.faults.server_error, inner.past_rate_fault) {
            inner.stats.server_errors += 1;
            return Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Unexpected server error",
                path,
            ));
        }
        Ok(())
    }

    /// Moves jobs along: pending ones complete or fail, completed ones whose URL expired turn
    /// `EXPIRED`. `polled` counts a list request as a look at every pending job.
    fn advance(&self, inner: &mut Inner, polled: bool) {
        let now = clock::now();
        let Inner {
            jobs, urls, stats, ..
        } = inner;
        for job in jobs.iter_mut() {
            match job.status {
                JobStatus::Pending => {
                    let ready = job.polls_seen >= self.faults.job_polls
                        && now.duration_since(job.accepted) >= self.faults.slow_jobs;
                    if polled {
                        job.polls_seen += 1;
                    }
                    if ready {
                        job.completed_at = Some(now_iso());
                        if job.will_fail {
                            job.status = JobStatus::Failed;
                            stats.failed_jobs += 1;
                        } else {
                            job.status = JobStatus::Completed;
                        }
                    }
                }
                JobStatus::Completed => {
                    let expired = job
                        .url
                        .as_ref()
                        .and_then(|t| urls.get(t))
                        .is_some_and(|u| now >= u.expires);
                    if expired {
                        job.status = JobStatus::Expired;
                    }
                }
                _ => {}
            }
        }
    }

    fn submit(&self, headers: &HeaderMap, body: &[u8]) -> Response {
        let path = format!("{API_PREFIX}/messages/history/export");
        let mut inner = self.lock();
        let inner = &mut *inner;
        if let Err(r) = self.gate(inner, headers, &path) {
            return r;
        }
        let mut bad = |m: &str| {
            inner.stats.bad_requests += 1;
            error(StatusCode::BAD_REQUEST, m, &path)
        };
        let Ok(req) = serde_json::from_slice::<ExportRequest>(body) else {
            return bad("Malformed JSON request body");
        };
        let time = |v: &Option<String>| {
            v.as_deref()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.timestamp())
        };
        let (Some(start), Some(end)) = (time(&req.start_date_time), time(&req.end_date_time))
        else {
            return bad(
                "startDateTime and endDateTime are required ISO-8601 OffsetDateTime values",
            );
        };
        inner.submitted += 1;
        let id = uuid_like(self.seed, inner.submitted);
        inner.jobs.push(Job {
            id: id.clone(),
            seq: inner.submitted,
            start,
            end,
            sender: req.sender.filter(|s| !s.is_empty()),
            recipient: req.recipient.filter(|s| !s.is_empty()),
            status: JobStatus::Pending,
            will_fail: fires(self.faults.fail_job, inner.submitted),
            polls_seen: 0,
            accepted: clock::now(),
            created_at: now_iso(),
            completed_at: None,
            url: None,
        });
        inner.stats.exports_submitted += 1;
        (
            StatusCode::ACCEPTED,
            axum::Json(json!({"exportId": id, "status": "PENDING"})),
        )
            .into_response()
    }

    fn list(&self, headers: &HeaderMap, q: &ListQuery) -> Response {
        let path = format!("{API_PREFIX}/exports");
        let mut inner = self.lock();
        let inner = &mut *inner;
        if let Err(r) = self.gate(inner, headers, &path) {
            return r;
        }
        self.advance(inner, true);
        inner.stats.list_requests += 1;
        let limit = q.limit.unwrap_or(10).clamp(1, 1000);
        let page = q.page.unwrap_or(0);
        let mut jobs: Vec<&Job> = inner.jobs.iter().collect();
        jobs.sort_by_key(|j| std::cmp::Reverse(j.seq));
        let items: Vec<serde_json::Value> = jobs
            .iter()
            .skip(page.saturating_mul(limit))
            .take(limit)
            .map(|j| {
                json!({
                    "exportId": j.id,
                    "type": "MESSAGE_HISTORY",
                    "status": j.status.as_str(),
                    "isAvailableForDownload": j.status == JobStatus::Completed,
                    "createdAt": j.created_at,
                    "completedAt": j.completed_at,
                })
            })
            .collect();
        if self.faults.list_page {
            let total = jobs.len();
            axum::Json(json!({
                "content": items,
                "page": page,
                "size": limit,
                "totalElements": total,
                "totalPages": total.div_ceil(limit),
            }))
            .into_response()
        } else {
            axum::Json(items).into_response()
        }
    }

    fn link(&self, headers: &HeaderMap, id: &str) -> Response {
        let path = format!("{API_PREFIX}/exports/{id}");
        let mut inner = self.lock();
        let inner = &mut *inner;
        if let Err(r) = self.gate(inner, headers, &path) {
            return r;
        }
        self.advance(inner, false);
        let Some(pos) = inner.jobs.iter().position(|j| j.id == id) else {
            return error(StatusCode::NOT_FOUND, "Export not found", &path);
        };
        match inner.jobs[pos].status {
            JobStatus::Completed => {}
            JobStatus::Expired => {
                inner.stats.bad_requests += 1;
                return error(
                    StatusCode::BAD_REQUEST,
                    "The export has expired; regenerate it",
                    &path,
                );
            }
            _ => {
                inner.stats.bad_requests += 1;
                return error(StatusCode::BAD_REQUEST, "The export is not ready", &path);
            }
        }
        inner.issued += 1;
        let born_expired = fires(self.faults.url_expiry, inner.issued);
        let now = clock::now();
        let expires = if born_expired {
            now
        } else {
            now + self.faults.url_ttl
        };
        let token = random_id();
        inner.urls.insert(
            token.clone(),
            SignedUrl {
                job: id.to_string(),
                expires,
            },
        );
        inner.jobs[pos].url = Some(token.clone());
        inner.stats.urls_issued += 1;
        let expires_at = chrono::Utc::now()
            + chrono::Duration::from_std(expires.duration_since(now)).unwrap_or_default();
        axum::Json(json!({
            "exportId": id,
            "downloadUrl": format!("{}/signed/{token}?X-Signature={}", self.base_url, random_id()),
            "expiresAt": expires_at.to_rfc3339(),
        }))
        .into_response()
    }

    fn regenerate(&self, headers: &HeaderMap, id: &str) -> Response {
        let path = format!("{API_PREFIX}/exports/{id}");
        let mut inner = self.lock();
        let inner = &mut *inner;
        if let Err(r) = self.gate(inner, headers, &path) {
            return r;
        }
        let Some(job) = inner.jobs.iter_mut().find(|j| j.id == id) else {
            return error(StatusCode::NOT_FOUND, "Export not found", &path);
        };
        if let Some(t) = job.url.take() {
            inner.urls.remove(&t);
        }
        job.status = JobStatus::Pending;
        job.will_fail = false;
        job.polls_seen = 0;
        job.accepted = clock::now();
        job.completed_at = None;
        inner.stats.regenerations += 1;
        (
            StatusCode::ACCEPTED,
            axum::Json(json!({"exportId": id, "status": "PENDING"})),
        )
            .into_response()
    }

    fn signed(&self, headers: &HeaderMap, token: &str) -> Response {
        let path = format!("/signed/{token}");
        let (start, end, sender, recipient) = {
            let mut inner = self.lock();
            let inner = &mut *inner;
            inner.stats.signed_url_requests += 1;
            let carries_key = headers.keys().any(|k| {
                let k = k.as_str();
                k.eq_ignore_ascii_case("x-api-key") || k == AUTHORIZATION.as_str()
            });
            if carries_key {
                inner.stats.signed_url_requests_with_key += 1;
            }
            let Some(url) = inner.urls.get(token) else {
                return error(StatusCode::FORBIDDEN, "Request has expired", &path);
            };
            if clock::now() >= url.expires {
                inner.stats.expired_url_requests += 1;
                let job = url.job.clone();
                if let Some(j) = inner.jobs.iter_mut().find(|j| j.id == job)
                    && j.status == JobStatus::Completed
                {
                    j.status = JobStatus::Expired;
                }
                return error(StatusCode::FORBIDDEN, "Request has expired", &path);
            }
            let job_id = url.job.clone();
            let Some(job) = inner.jobs.iter().find(|j| j.id == job_id) else {
                return error(StatusCode::FORBIDDEN, "Request has expired", &path);
            };
            let found = (
                job.start,
                job.end,
                job.sender.clone(),
                job.recipient.clone(),
            );
            inner.stats.files_served += 1;
            found
        };
        // Streamed an hour at a time in chunks of about 64 KiB: memory stays flat.
        let mut header = Vec::new();
        data::write_record(&mut header, &data::HEADER);
        let state = (
            data::ExportRows::new(self.seed, self.scale, start, end, sender, recipient)
                .selecting(self.faults.selection),
            header,
            Vec::new(),
            false,
        );
        let stream =
            futures::stream::unfold(state, |(mut rows, mut buf, mut hour, done)| async move {
                if done {
                    return None;
                }
                loop {
                    hour.clear();
                    if !rows.next_hour(&mut hour) {
                        // Never an empty chunk: it could read as the end of a chunked body.
                        if buf.is_empty() {
                            return None;
                        }
                        let chunk = std::mem::take(&mut buf);
                        return Some((
                            Ok::<_, std::convert::Infallible>(Bytes::from(chunk)),
                            (rows, Vec::new(), hour, true),
                        ));
                    }
                    for r in &hour {
                        data::write_record(&mut buf, &r.fields());
                    }
                    if buf.len() >= CHUNK {
                        let chunk = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK + 4096));
                        return Some((Ok(Bytes::from(chunk)), (rows, buf, hour, false)));
                    }
                }
            });
        (
            [(CONTENT_TYPE, "text/csv; charset=UTF-8")],
            axum::body::Body::from_stream(stream),
        )
            .into_response()
    }
}

/// `X-Api-Key` (any case) or Basic with the emulator's user.
fn authorized(headers: &HeaderMap) -> bool {
    if headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|k| k == API_KEY)
    {
        return true;
    }
    use base64::Engine as _;
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .is_some_and(|d| d == format!("{USERNAME}:{PASSWORD}").as_bytes())
}

/// A deterministic UUID-shaped export id.
fn uuid_like(seed: u64, n: u64) -> String {
    let a = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ n.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        n & 0xfff,
        n
    )
}

// ---- handlers -------------------------------------------------------------------------------

async fn submit(State(q): State<Arc<Qlara>>, headers: HeaderMap, body: Bytes) -> Response {
    q.submit(&headers, &body)
}

async fn list(
    State(q): State<Arc<Qlara>>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    q.list(&headers, &query)
}

async fn link(State(q): State<Arc<Qlara>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    q.link(&headers, &id)
}

async fn regenerate(
    State(q): State<Arc<Qlara>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    q.regenerate(&headers, &id)
}

async fn signed(
    State(q): State<Arc<Qlara>>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    q.signed(&headers, &token)
}
