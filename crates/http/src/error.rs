//! [`RequestError`]: what failed, where and why, in words a person can act on, e.g.
//! `GET https://www.worksapis.com/v1.0/monitoring/message-contents/download (window
//! 2025-01-01T00:00:00+09:00..2025-01-31T23:59:59+09:00): HTTP 400 INVALID_PARAMETER: ...`.
//!
//! Never carries a credential: the URL is redacted (no user info, no query), request headers
//! and bodies are not kept, and whatever is copied from a response (an error body, which a
//! provider or a proxy may fill with the request it refused: the `Authorization` header, the
//! signed URL) goes through [`chatlake_core::secret::redact`]: every secret of the process and
//! everything shaped like a credential becomes `***`.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use chatlake_core::secret::redact;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use url::Url;

use crate::client::{error_chain, redact_url};
use crate::retry::server_wait;

/// How much of an error body is read: enough for any JSON error object, small enough that a
/// misbehaving server cannot make us buffer a file.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// How much of a body that is not JSON is quoted in the message.
const QUOTED_TEXT_LIMIT: usize = 300;

/// One request that failed. Boxed inside, so results that carry it stay small.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0)]
pub struct RequestError(Box<Inner>);

#[derive(Debug, thiserror::Error)]
#[error("{method} {url}{}: {kind}", WindowSuffix(.window.as_deref()))]
struct Inner {
    method: Method,
    url: String,
    window: Option<String>,
    kind: ErrorKind,
}

struct WindowSuffix<'a>(Option<&'a str>);

impl fmt::Display for WindowSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(w) => write!(f, " (window {w})"),
            None => Ok(()),
        }
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// The server answered with an error status.
    #[error("HTTP {}{}", .status.as_u16(), .provider)]
    Status {
        status: StatusCode,
        /// The provider's error code and description, when the body has them.
        provider: ProviderError,
        /// How long the server asked us to wait (`Retry-After`, `rateLimit-reset`).
        wait: Option<Duration>,
    },

    /// The request did not complete: connection refused or reset, timeout, truncated body.
    #[error("{0}")]
    Transport(String),

    /// The server answered with success but the content says it failed (LINE WORKS'
    /// `downloadLogs error` trailer). Worth another attempt.
    #[error("{0}")]
    Provider(String),

    /// The answer makes no sense (a `302` without `Location`, an unexpected status). Not retried.
    #[error("{0}")]
    Protocol(String),

    /// A local failure while handling the response (writing the spool file).
    #[error("{0}")]
    Local(String),
}

/// The provider's error code and description from an error body, e.g. LINE WORKS'
/// `{"code":"INVALID_PARAMETER","description":"..."}`, Zoom's `{"code":124,"message":"..."}`,
/// OAuth's `{"error":"invalid_client","error_description":"..."}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderError {
    pub code: Option<String>,
    pub description: Option<String>,
}

impl ProviderError {
    /// Reads the code and description from an error body; a body that is not a JSON error object
    /// is quoted (shortened) as the description.
    pub fn from_body(body: &[u8]) -> Self {
        if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body) {
            let text = |key: &str| match map.get(key) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            let (code, code_from_error) = match text("code") {
                Some(c) => (Some(c), false),
                None => (text("error"), true),
            };
            let description = text("description")
                .or_else(|| text("message"))
                .or_else(|| text("error_description"))
                .or_else(|| if code_from_error { None } else { text("error") });
            return ProviderError { code, description };
        }
        let text = String::from_utf8_lossy(body);
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() {
            return ProviderError::default();
        }
        let mut quoted: String = text.chars().take(QUOTED_TEXT_LIMIT).collect();
        if quoted.len() < text.len() {
            quoted.push('…');
        }
        ProviderError {
            code: None,
            description: Some(quoted),
        }
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(code) = &self.code {
            write!(f, " {code}")?;
        }
        if let Some(description) = &self.description {
            write!(f, ": {description}")?;
        }
        Ok(())
    }
}

impl ErrorKind {
    /// This error with every credential taken out of the text it carries.
    fn redacted(self) -> Self {
        let clean = |text: String| match redact(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(clean) => clean,
        };
        match self {
            ErrorKind::Status {
                status,
                provider,
                wait,
            } => ErrorKind::Status {
                status,
                provider: ProviderError {
                    code: provider.code.map(clean),
                    description: provider.description.map(clean),
                },
                wait,
            },
            ErrorKind::Transport(text) => ErrorKind::Transport(clean(text)),
            ErrorKind::Provider(text) => ErrorKind::Provider(clean(text)),
            ErrorKind::Protocol(text) => ErrorKind::Protocol(clean(text)),
            ErrorKind::Local(text) => ErrorKind::Local(clean(text)),
        }
    }
}

impl RequestError {
    /// An error of `method url`; the text `kind` carries is redacted (see the module docs).
    pub fn new(method: Method, url: &Url, kind: ErrorKind) -> Self {
        RequestError(Box::new(Inner {
            method,
            url: redact_url(url),
            window: None,
            kind: kind.redacted(),
        }))
    }

    /// Names the window the request belongs to.
    pub fn in_window(mut self, label: impl Into<String>) -> Self {
        self.0.window = Some(label.into());
        self
    }

    pub fn method(&self) -> &Method {
        &self.0.method
    }

    /// The URL without user info or query, see [`redact_url`].
    pub fn url(&self) -> &str {
        &self.0.url
    }

    /// The label of the window the request belongs to, if any.
    pub fn window(&self) -> Option<&str> {
        self.0.window.as_deref()
    }

    pub fn kind(&self) -> &ErrorKind {
        &self.0.kind
    }

    /// A transport failure from reqwest; its URL (which may carry a query) is dropped.
    pub fn from_reqwest(method: Method, url: &Url, e: reqwest::Error) -> Self {
        let e = e.without_url();
        RequestError::new(method, url, ErrorKind::Transport(error_chain(&e)))
    }

    /// An error status: reads (a bounded prefix of) the body for the provider's error code and
    /// the headers for a server-given wait.
    pub async fn from_response(method: Method, url: &Url, mut response: reqwest::Response) -> Self {
        let status = response.status();
        let wait = server_wait(response.headers(), Utc::now());
        let mut body = Vec::new();
        while body.len() < ERROR_BODY_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
        body.truncate(ERROR_BODY_LIMIT);
        RequestError::new(
            method,
            url,
            ErrorKind::Status {
                status,
                provider: ProviderError::from_body(&body),
                wait,
            },
        )
    }

    /// An error status with a known body, for callers that read it themselves.
    pub fn from_status(
        method: Method,
        url: &Url,
        status: StatusCode,
        body: &[u8],
        headers: &reqwest::header::HeaderMap,
        now: DateTime<Utc>,
    ) -> Self {
        RequestError::new(
            method,
            url,
            ErrorKind::Status {
                status,
                provider: ProviderError::from_body(body),
                wait: server_wait(headers, now),
            },
        )
    }

    /// The HTTP status, if the server answered with an error status.
    pub fn status(&self) -> Option<StatusCode> {
        match &self.0.kind {
            ErrorKind::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The provider's error code, if the body had one.
    pub fn code(&self) -> Option<&str> {
        match &self.0.kind {
            ErrorKind::Status { provider, .. } => provider.code.as_deref(),
            _ => None,
        }
    }

    /// How long the server asked us to wait before trying again.
    pub fn server_wait(&self) -> Option<Duration> {
        match &self.0.kind {
            ErrorKind::Status { wait, .. } => *wait,
            _ => None,
        }
    }

    /// `401`: the credential was refused; a fresh token may help once.
    pub fn is_unauthorized(&self) -> bool {
        self.status() == Some(StatusCode::UNAUTHORIZED)
    }

    /// Worth another attempt after a pause: `408`, `429`, `5xx`, transport failures and
    /// provider-reported failures. Other `4xx` will fail the same way again.
    pub fn is_retryable(&self) -> bool {
        match &self.0.kind {
            ErrorKind::Status { status, .. } => {
                *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || status.is_server_error()
            }
            ErrorKind::Transport(_) | ErrorKind::Provider(_) => true,
            ErrorKind::Protocol(_) | ErrorKind::Local(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> Url {
        Url::parse(
            "https://www.worksapis.com/v1.0/monitoring/message-contents/download?startTime=2025-01-01T00:00:00%2B09:00",
        )
        .unwrap()
    }

    #[test]
    fn names_request_window_status_and_provider_code() {
        let e = RequestError::from_status(
            Method::GET,
            &url(),
            StatusCode::BAD_REQUEST,
            br#"{"code":"INVALID_PARAMETER","description":"endTime is invalid."}"#,
            &Default::default(),
            Utc::now(),
        )
        .in_window("2025-01-01T00:00:00+09:00..2025-01-31T23:59:59+09:00");
        assert_eq!(
            e.to_string(),
            "GET https://www.worksapis.com/v1.0/monitoring/message-contents/download \
             (window 2025-01-01T00:00:00+09:00..2025-01-31T23:59:59+09:00): \
             HTTP 400 INVALID_PARAMETER: endTime is invalid."
        );
        assert!(!e.is_retryable());
        assert_eq!(e.code(), Some("INVALID_PARAMETER"));
    }

    #[test]
    fn reads_the_error_bodies_of_every_provider() {
        let zoom = ProviderError::from_body(br#"{"code":124,"message":"Invalid access token."}"#);
        assert_eq!(zoom.code.as_deref(), Some("124"));
        assert_eq!(zoom.description.as_deref(), Some("Invalid access token."));
        let oauth = ProviderError::from_body(
            br#"{"error":"invalid_client","error_description":"bad secret"}"#,
        );
        assert_eq!(oauth.to_string(), " invalid_client: bad secret");
        let spring = ProviderError::from_body(
            br#"{"timestamp":"x","status":401,"error":"Unauthorized","message":"no key","path":"/a"}"#,
        );
        assert_eq!(spring.to_string(), " Unauthorized: no key");
        let html = ProviderError::from_body(b"<html>\n  <body>Bad   gateway</body></html>");
        assert_eq!(
            html.description.as_deref(),
            Some("<html> <body>Bad gateway</body></html>")
        );
        let long = ProviderError::from_body("x".repeat(1000).as_bytes());
        assert!(long.description.unwrap().chars().count() <= QUOTED_TEXT_LIMIT + 1);
        assert_eq!(ProviderError::from_body(b""), ProviderError::default());
    }

    #[test]
    fn classifies_what_is_worth_retrying() {
        let status = |s: u16| {
            RequestError::from_status(
                Method::GET,
                &url(),
                StatusCode::from_u16(s).unwrap(),
                b"",
                &Default::default(),
                Utc::now(),
            )
        };
        assert!(status(429).is_retryable());
        assert!(status(500).is_retryable());
        assert!(status(503).is_retryable());
        assert!(!status(400).is_retryable());
        assert!(!status(403).is_retryable());
        assert!(!status(401).is_retryable());
        assert!(status(401).is_unauthorized());
        assert_eq!(
            status(502).to_string(),
            format!("GET {}: HTTP 502", redact_url(&url()))
        );
        let t = RequestError::new(Method::GET, &url(), ErrorKind::Transport("reset".into()));
        assert!(t.is_retryable());
        assert!(!t.to_string().contains("startTime"), "no query in errors");
    }
}
