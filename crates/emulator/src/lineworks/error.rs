//! Error answers: the API's `{"code","description"}` body and the token endpoint's RFC 6749
//! `{"error","error_description"}` body.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An API error answer: `{"code","description"}` plus any extra headers.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    code: &'static str,
    pub(super) description: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub(super) fn new(
        status: StatusCode,
        code: &'static str,
        description: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            description: description.into(),
            headers: Vec::new(),
        }
    }

    pub(super) fn with_header(mut self, name: HeaderName, value: HeaderValue) -> ApiError {
        self.headers.push((name, value));
        self
    }

    pub(super) fn invalid(description: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "INVALID_PARAMETER", description)
    }

    pub(super) fn missing(name: &str) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "MISSING_PARAMETER",
            format!("{name} is required."),
        )
    }

    pub(super) fn forbidden(description: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "FORBIDDEN", description)
    }

    pub(super) fn too_many(description: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TOO_MANY_REQUESTS",
            description,
        )
    }

    /// The rate-limit answer. Header names go out lower-case (`ratelimit-limit`): HTTP header
    /// names are case-insensitive and clients must match them so (providers.md §1).
    pub(super) fn rate_limited(limit: u32, reset_secs: u64) -> ApiError {
        let header = |name: &'static str, value: u64| {
            (HeaderName::from_static(name), HeaderValue::from(value))
        };
        let mut err = ApiError::too_many("API rate limit exceeded");
        err.headers = vec![
            header("ratelimit-limit", u64::from(limit)),
            header("ratelimit-remaining", 0),
            header("ratelimit-reset", reset_secs),
        ];
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        tracing::debug!(status = self.status.as_u16(), code = self.code, description = %self.description, "LINE WORKS request refused.");
        let body = axum::Json(json!({"code": self.code, "description": self.description}));
        let mut response = (self.status, body).into_response();
        response.headers_mut().extend(self.headers);
        response
    }
}

/// A token-endpoint error: 400 `{"error","error_description"}` (RFC 6749 §5.2).
#[derive(Debug)]
pub(super) struct OAuthError {
    pub(super) error: &'static str,
    pub(super) description: String,
}

impl OAuthError {
    pub(super) fn request(description: impl Into<String>) -> OAuthError {
        OAuthError {
            error: "invalid_request",
            description: description.into(),
        }
    }

    pub(super) fn client(description: impl Into<String>) -> OAuthError {
        OAuthError {
            error: "invalid_client",
            description: description.into(),
        }
    }

    pub(super) fn grant(description: impl Into<String>) -> OAuthError {
        OAuthError {
            error: "invalid_grant",
            description: description.into(),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.error, "error_description": self.description});
        (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
    }
}
