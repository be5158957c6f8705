//! The HTTP client every source uses, and the rule for where credentials may go.
//!
//! Redirects are off: providers answer a download request with a `302` whose target may live on
//! another host (a storage bucket, a CDN), and a client that follows it on its own would carry
//! the `Authorization` header along. Sources follow the `Location` themselves and ask a
//! [`CredentialScope`] whether the new URL may see their token.

use std::time::Duration;

use url::{Origin, Url};

use crate::{Error, Result};

/// `chatlake/<version>`, sent on every request.
pub const USER_AGENT: &str = concat!("chatlake/", env!("CARGO_PKG_VERSION"));

/// A reqwest client with chatlake's settings. Cloning is cheap and shares the connection pool.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
}

/// Settings of an [`HttpClient`].
#[derive(Debug, Clone)]
pub struct HttpClientBuilder {
    connect_timeout: Duration,
    request_timeout: Duration,
    user_agent: String,
}

impl Default for HttpClientBuilder {
    fn default() -> Self {
        HttpClientBuilder {
            connect_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            user_agent: USER_AGENT.to_string(),
        }
    }
}

impl HttpClientBuilder {
    /// How long to wait for a TCP and TLS connection (default 30 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one request may take in all, body included (default 60 s). A download of a big
    /// file needs more: set it from the source's `request_timeout`.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Replaces the `chatlake/<version>` user agent.
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    pub fn build(self) -> Result<HttpClient> {
        let inner = reqwest::Client::builder()
            .user_agent(self.user_agent)
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Client(error_chain(&e)))?;
        Ok(HttpClient { inner })
    }
}

impl HttpClient {
    pub fn builder() -> HttpClientBuilder {
        HttpClientBuilder::default()
    }

    /// The underlying reqwest client, to build requests with.
    pub fn reqwest(&self) -> &reqwest::Client {
        &self.inner
    }

    /// Starts a GET request.
    pub fn get(&self, url: Url) -> reqwest::RequestBuilder {
        self.inner.get(url)
    }

    /// Starts a POST request.
    pub fn post(&self, url: Url) -> reqwest::RequestBuilder {
        self.inner.post(url)
    }
}

/// True if `a` and `b` have the same scheme, host and port (default ports filled in). URLs with
/// opaque origins (`data:`, `file:`) are never the same origin as anything.
pub fn same_origin(a: &Url, b: &Url) -> bool {
    let origin = a.origin();
    origin.is_tuple() && origin == b.origin()
}

/// Where a credential may be sent: only to the origin (scheme, host and port) of the API it
/// belongs to, never across a redirect to another host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialScope {
    origin: Origin,
}

impl CredentialScope {
    /// Credentials of the API at `base` (e.g. `https://www.worksapis.com/v1.0`).
    pub fn new(base: &Url) -> Self {
        CredentialScope {
            origin: base.origin(),
        }
    }

    /// True if credentials may be sent to `url`.
    pub fn allows(&self, url: &Url) -> bool {
        self.origin.is_tuple() && self.origin == url.origin()
    }
}

/// The URL a `Location` header points to, resolved against the URL that answered.
pub fn resolve_location(current: &Url, location: &str) -> Result<Url, url::ParseError> {
    current.join(location.trim())
}

/// `url` as it may appear in errors and logs: no user info, no query (pre-signed URLs carry
/// their signature there), no fragment.
pub fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    // Both fail only for URLs that cannot have credentials (`data:`), which is fine to ignore.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// An error with its causes, `: `-separated. reqwest's own `Display` stops at the outermost
/// layer ("error sending request"), which does not say what went wrong.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.ends_with(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn credentials_go_only_to_their_own_origin() {
        let scope = CredentialScope::new(&url("https://www.worksapis.com/v1.0"));
        assert!(scope.allows(&url("https://www.worksapis.com/files/abc?sig=1")));
        // The default port is the same origin.
        assert!(scope.allows(&url("https://www.worksapis.com:443/x")));
        assert!(!scope.allows(&url("http://www.worksapis.com/x")), "scheme");
        assert!(
            !scope.allows(&url("https://apis-storage.worksmobile.com/x")),
            "host"
        );
        assert!(
            !scope.allows(&url("https://www.worksapis.com:8443/x")),
            "port"
        );
        assert!(
            !scope.allows(&url("https://www.worksapis.com.evil.example/x")),
            "suffix"
        );

        let local = CredentialScope::new(&url("http://127.0.0.1:4000/v1.0"));
        assert!(local.allows(&url("http://127.0.0.1:4000/files/1")));
        assert!(!local.allows(&url("http://127.0.0.1:4001/files/1")));
        assert!(!local.allows(&url("http://localhost:4000/files/1")));

        assert!(!same_origin(
            &url("data:text/plain,x"),
            &url("data:text/plain,x")
        ));
        assert!(same_origin(
            &url("HTTPS://WWW.worksapis.com/a"),
            &url("https://www.worksapis.com/b")
        ));
    }

    #[test]
    fn locations_resolve_against_the_answering_url() {
        let here = url("http://127.0.0.1:4000/v1.0/monitoring/message-contents/download?x=1");
        assert_eq!(
            resolve_location(&here, "/files/abc").unwrap().as_str(),
            "http://127.0.0.1:4000/files/abc"
        );
        assert_eq!(
            resolve_location(&here, "https://cdn.example/f?sig=2")
                .unwrap()
                .as_str(),
            "https://cdn.example/f?sig=2"
        );
    }

    #[test]
    fn redacted_urls_lose_user_info_and_query() {
        let u = url("https://user:pw@cdn.example/files/1?X-Amz-Signature=abc#frag");
        assert_eq!(redact_url(&u), "https://cdn.example/files/1");
    }

    #[test]
    fn client_builds_without_following_redirects() {
        let c = HttpClient::builder()
            .request_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let _ = c.get(url("http://127.0.0.1:1/"));
        assert!(USER_AGENT.starts_with("chatlake/"));
    }
}
