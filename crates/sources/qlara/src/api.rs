//! The Qlara export requests of one window, as a [`chatlake_http::export::ExportApi`]:
//! `POST /messages/history/export`, `GET /exports` (paged, until the job is found),
//! `GET /exports/{id}`, `POST /exports/{id}`, and the download from the pre-signed URL. Each goes
//! through [`chatlake_http::RequestLoop`] (retries, the key's budget paused after a `429`).
//!
//! The API key (or Basic credentials) goes on the four API requests only. The download URL is
//! pre-signed and usually on another host: it gets **no** credentials, whatever its origin.

use std::fs::File;
use std::sync::Arc;

use async_trait::async_trait;
use chatlake_core::metrics::ComponentMetrics;
use chatlake_http::export::JobState;
use chatlake_http::{
    ErrorKind, HttpClient, PageEvent, Paging, RequestError, RequestLoop, RetryPolicy, pages,
    spool_body,
};
use futures::{StreamExt, TryStreamExt};
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use url::Url;

use crate::source::Credentials;

/// Jobs asked for per page of `GET /exports`.
const LIST_PAGE_SIZE: usize = 100;
/// Pages of `GET /exports` looked through for a job before it counts as unknown.
const LIST_MAX_PAGES: usize = 50;
/// How much of an error body is read.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// The export of one window.
pub(crate) struct WindowExport<'a> {
    pub client: &'a HttpClient,
    /// `{base_url}/partner-gateway/v1`.
    pub api: Url,
    pub credentials: &'a Credentials,
    /// The body of the submit request.
    pub body: Value,
    /// The source's name, for logs.
    pub component: &'a str,
    pub window: &'a str,
    pub metrics: Arc<ComponentMetrics>,
    /// The key's request budget (API requests only; downloads do not count).
    pub budget: &'a chatlake_http::RateLimiter,
}

/// `{base}/partner-gateway/v1`, whether or not `base` ends in `/`.
pub(crate) fn api_root(base: &Url) -> Url {
    let mut url = base.clone();
    url.set_path(&format!(
        "{}/partner-gateway/v1",
        base.path().trim_end_matches('/')
    ));
    url.set_query(None);
    url
}

fn join(root: &Url, path: &str) -> Url {
    let mut url = root.clone();
    url.set_path(&format!("{}/{path}", root.path().trim_end_matches('/')));
    url
}

/// An error answer, with a Qlara `retryAfter` body field turned into a server wait when no
/// header gave one.
async fn error_from(method: Method, url: &Url, mut response: reqwest::Response) -> RequestError {
    let status = response.status();
    let mut headers = response.headers().clone();
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    if status == StatusCode::TOO_MANY_REQUESTS
        && !headers.contains_key(RETRY_AFTER)
        && let Some(wait) = retry_after_from_body(&body)
        && let Ok(v) = HeaderValue::from_str(&wait.to_string())
    {
        headers.insert(RETRY_AFTER, v);
    }
    RequestError::from_status(method, url, status, &body, &headers, chrono::Utc::now())
}

/// `retryAfter` (seconds) of a Qlara 429 body.
pub(crate) fn retry_after_from_body(body: &[u8]) -> Option<f64> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let wait = v.get("retryAfter")?;
    let secs = wait
        .as_f64()
        .or_else(|| wait.as_str().and_then(|s| s.trim().parse().ok()))?;
    (secs.is_finite() && secs >= 0.0).then_some(secs)
}

/// The job entries of an exports-list answer: a bare array, or `{"content": [...]}`.
pub(crate) fn list_entries(body: &Value) -> Option<&Vec<Value>> {
    match body {
        Value::Array(items) => Some(items),
        Value::Object(map) => ["content", "exports", "items", "data"]
            .iter()
            .find_map(|k| map.get(*k).and_then(Value::as_array)),
        _ => None,
    }
}

/// What one list entry says about its job.
pub(crate) fn entry_state(entry: &Value) -> JobState {
    let status = entry
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_ascii_uppercase();
    let available = entry
        .get("isAvailableForDownload")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    match status.as_str() {
        "COMPLETED" if available => JobState::Ready,
        "FAILED" | "ERROR" => JobState::Failed(status),
        "EXPIRED" => JobState::Expired,
        _ => JobState::Pending,
    }
}

fn entry_id(entry: &Value) -> Option<&str> {
    entry
        .get("exportId")
        .or_else(|| entry.get("id"))
        .and_then(Value::as_str)
}

impl WindowExport<'_> {
    fn authed(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.credentials {
            Credentials::ApiKey(key) => request.header("X-Api-Key", key.expose()),
            Credentials::Basic { username, password } => {
                request.basic_auth(username, Some(password.expose()))
            }
        }
    }

    /// Sends an API request and returns the JSON of a successful answer.
    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Value, RequestError> {
        self.budget.until_ready().await;
        let mut request = self
            .authed(self.client.reqwest().request(method.clone(), url.clone()))
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            request = request.json(body);
        }
        let fail = |e: RequestError| e.in_window(self.window);
        let response = request
            .send()
            .await
            .map_err(|e| fail(RequestError::from_reqwest(method.clone(), &url, e)))?;
        if !response.status().is_success() {
            return Err(fail(error_from(method, &url, response).await));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| fail(RequestError::from_reqwest(method.clone(), &url, e)))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            fail(RequestError::new(
                method,
                &url,
                ErrorKind::Protocol(format!("the answer is not JSON: {e}")),
            ))
        })
    }

    fn protocol(&self, method: Method, url: &Url, message: String) -> RequestError {
        RequestError::new(method, url, ErrorKind::Protocol(message)).in_window(self.window)
    }
}

#[async_trait]
impl chatlake_http::export::ExportApi for WindowExport<'_> {
    type Download = File;

    async fn submit(&self) -> Result<String, RequestError> {
        let url = join(&self.api, "messages/history/export");
        let answer = self
            .call(Method::POST, url.clone(), Some(&self.body))
            .await?;
        match answer.get("exportId").or_else(|| answer.get("id")) {
            Some(Value::String(id)) if !id.is_empty() => Ok(id.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            _ => Err(self.protocol(
                Method::POST,
                &url,
                format!("202 without an exportId: {answer}"),
            )),
        }
    }

    async fn poll(&self, id: &str) -> Result<JobState, RequestError> {
        let base = join(&self.api, "exports");
        // Numbered pages: a page shorter than asked for is the last.
        let listing = pages(
            Paging { max_restarts: 0 },
            |page: Option<usize>| {
                let page = page.unwrap_or(0);
                let mut url = base.clone();
                url.query_pairs_mut()
                    .append_pair("page", &page.to_string())
                    .append_pair("limit", &LIST_PAGE_SIZE.to_string());
                async move {
                    let answer = self.call(Method::GET, url.clone(), None).await?;
                    match list_entries(&answer) {
                        Some(entries) => Ok((page, entries.clone())),
                        None => Err(self.protocol(
                            Method::GET,
                            &url,
                            "the exports list is neither an array nor {\"content\": [...]}".into(),
                        )),
                    }
                }
            },
            |(page, entries): &(usize, Vec<Value>)| {
                (entries.len() >= LIST_PAGE_SIZE).then_some(page + 1)
            },
            |_: &RequestError| false,
        )
        .take(LIST_MAX_PAGES);
        let mut listing = std::pin::pin!(listing);
        while let Some(event) = listing.try_next().await? {
            if let PageEvent::Page((_, entries)) = event
                && let Some(entry) = entries.iter().find(|e| entry_id(e) == Some(id))
            {
                return Ok(entry_state(entry));
            }
        }
        Ok(JobState::Unknown)
    }

    async fn download_url(&self, id: &str) -> Result<Url, RequestError> {
        let url = join(&self.api, &format!("exports/{id}"));
        let answer = self.call(Method::GET, url.clone(), None).await?;
        let Some(link) = answer.get("downloadUrl").and_then(Value::as_str) else {
            return Err(self.protocol(Method::GET, &url, "no downloadUrl in the answer".into()));
        };
        url.join(link.trim())
            .map_err(|e| self.protocol(Method::GET, &url, format!("a bad downloadUrl ({e})")))
    }

    async fn regenerate(&self, id: &str) -> Result<(), RequestError> {
        let url = join(&self.api, &format!("exports/{id}"));
        self.call(Method::POST, url, None).await.map(|_| ())
    }

    async fn download(&self, url: &Url) -> Result<File, RequestError> {
        // Pre-signed: no credentials, on purpose, whatever host it is on.
        let fail = |e: RequestError| e.in_window(self.window);
        let response = self
            .client
            .reqwest()
            .request(Method::GET, url.clone())
            .headers(HeaderMap::new())
            .send()
            .await
            .map_err(|e| fail(RequestError::from_reqwest(Method::GET, url, e)))?;
        if !response.status().is_success() {
            return Err(fail(error_from(Method::GET, url, response).await));
        }
        spool_body(url, response, |bytes| self.metrics.add_bytes(bytes as u64))
            .await
            .map_err(fail)
    }

    fn request_loop<'a>(&'a self, retry: &'a RetryPolicy) -> RequestLoop<'a> {
        // The key's limit: one window's 429 holds back every request of the key.
        RequestLoop::new(retry)
            .budget(self.budget)
            .component(self.component)
            .window(self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_both_list_shapes_and_every_state() {
        let arr = json!([{"exportId": "a", "status": "PENDING", "isAvailableForDownload": false}]);
        assert_eq!(list_entries(&arr).unwrap().len(), 1);
        let page = json!({"content": [{"exportId": "a"}, {"exportId": "b"}], "page": 0});
        assert_eq!(list_entries(&page).unwrap().len(), 2);
        assert!(list_entries(&json!("x")).is_none());
        let st = |s: &str, a: bool| entry_state(&json!({"status": s, "isAvailableForDownload": a}));
        assert_eq!(st("COMPLETED", true), JobState::Ready);
        assert_eq!(st("COMPLETED", false), JobState::Pending);
        assert_eq!(st("PENDING", false), JobState::Pending);
        assert_eq!(st("EXPIRED", false), JobState::Expired);
        assert_eq!(st("FAILED", false), JobState::Failed("FAILED".into()));
        assert_eq!(st("IN_PROGRESS", false), JobState::Pending);
    }

    #[test]
    fn retry_after_comes_from_the_body() {
        let body = br#"{"status":429,"error":"Too Many Requests","message":"Rate limit exceeded. Please retry after 12 seconds.","retryAfter":12}"#;
        assert_eq!(retry_after_from_body(body), Some(12.0));
        assert_eq!(retry_after_from_body(br#"{"retryAfter":"3"}"#), Some(3.0));
        assert_eq!(retry_after_from_body(b"nope"), None);
        assert_eq!(retry_after_from_body(br#"{"retryAfter":-1}"#), None);
    }

    #[test]
    fn api_paths() {
        let root = api_root(&Url::parse("https://lora-api.agiletelecom.com/api/").unwrap());
        assert_eq!(
            root.as_str(),
            "https://lora-api.agiletelecom.com/api/partner-gateway/v1"
        );
        assert_eq!(
            join(&root, "exports/x").as_str(),
            "https://lora-api.agiletelecom.com/api/partner-gateway/v1/exports/x"
        );
    }
}
