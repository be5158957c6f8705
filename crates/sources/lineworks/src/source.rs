//! The running source: fetch each window's CSV (or read a hand-downloaded file), parse it on a
//! blocking thread and send its rows.
//!
//! Per window, strictly in order:
//! 1. wait for the domain's download slot (one download at a time per domain, across every
//!    LINE WORKS source of the process) and the request budget;
//! 2. `GET /monitoring/message-contents/download` → `302` → `GET Location` (the token goes along
//!    only if the file is on the API's own origin), streaming the body into a spool file;
//! 3. release the slot, and look for a `downloadLogs error` trailer at the end of the spool: if
//!    there is one the attempt failed, and the next attempt asks for a **new** download URL;
//! 4. parse the spool and send its batches, then mark the window done.
//!
//! Spooling keeps memory flat whatever the file size, frees the provider's single download slot
//! as fast as the network allows, and lets the trailer be checked before any row leaves.

use std::collections::HashMap;
use std::fs::File;
use std::io::Seek;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, LazyLock, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chatlake_core::{DataKind, PlannedWindow, Secret, Source, SourceContext, Window, WindowRef};
use chatlake_http::{
    CredentialScope, ErrorKind, HttpClient, RateLimiter, RequestError, RetryPolicy, redact_url,
    resolve_location,
};
use chatlake_source_kit::FilesMode;
use reqwest::header::LOCATION;
use reqwest::{Method, StatusCode};
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::auth::{Auth, Authenticator};
use crate::config::Language;
use crate::error::Error;
use crate::parse::{self, ParseError, ParseOptions, ParseOutcome, RECORD_TYPE};
use crate::window::DownloadQuery;

/// Redirects followed from the download request to the file, at most.
const MAX_REDIRECTS: u32 = 5;

/// The `lineworks_message_contents` source, built from [`crate::LineworksSourceConfig`].
pub struct LineworksSource {
    name: String,
    language: Language,
    batch_size: usize,
    mode: Mode,
    header_warned: Arc<AtomicBool>,
}

pub(crate) enum Mode {
    Api(Box<ApiMode>),
    Files(FilesMode),
}

pub(crate) struct ApiMode {
    pub base_url: Url,
    pub endpoint: Url,
    pub auth: Auth,
    pub query: DownloadQuery,
    pub windows: Vec<Window>,
    pub requests_per_minute: NonZeroU32,
    pub retry: RetryPolicy,
    pub request_timeout: Duration,
}

/// How one window went wrong (see [`chatlake_core::stage::WindowError`]).
type WindowError = chatlake_core::stage::WindowError<Error>;

/// The per-domain state shared by every LINE WORKS source of the process: the provider rejects a
/// download request made while another is in progress, and its rate limit is per domain.
struct DomainSlot {
    downloading: tokio::sync::Mutex<()>,
    limiter: RateLimiter,
}

fn domain_slot(base: &Url, domain: Option<i32>, per_minute: NonZeroU32) -> Arc<DomainSlot> {
    static SLOTS: LazyLock<std::sync::Mutex<HashMap<String, Arc<DomainSlot>>>> =
        LazyLock::new(Default::default);
    let key = format!(
        "{}|{}",
        base.as_str().trim_end_matches('/'),
        domain.map_or_else(|| "default".to_string(), |d| d.to_string())
    );
    let mut slots = SLOTS.lock().unwrap_or_else(PoisonError::into_inner);
    slots
        .entry(key)
        .or_insert_with(|| {
            Arc::new(DomainSlot {
                downloading: tokio::sync::Mutex::new(()),
                limiter: RateLimiter::sliding_window(
                    per_minute,
                    std::time::Duration::from_secs(60),
                ),
            })
        })
        .clone()
}

impl LineworksSource {
    pub(crate) fn new(name: String, language: Language, batch_size: usize, mode: Mode) -> Self {
        LineworksSource {
            name,
            language,
            batch_size,
            mode,
            header_warned: Arc::default(),
        }
    }

    /// The API windows (empty with `files`, whose windows are found when the source runs).
    pub fn api_windows(&self) -> &[Window] {
        match &self.mode {
            Mode::Api(api) => &api.windows,
            Mode::Files(_) => &[],
        }
    }

    fn parse_options(&self, origin: String) -> ParseOptions {
        ParseOptions {
            language: self.language,
            batch_size: self.batch_size,
            origin,
            header_warned: self.header_warned.clone(),
        }
    }

    async fn run_api(&self, api: &ApiMode, cx: &SourceContext) -> Result<(), WindowError> {
        let client = HttpClient::builder()
            .request_timeout(api.request_timeout)
            .build()
            .map_err(|e| WindowError::Stop(self.core_error(e)))?;
        let auth = Authenticator::start(&api.auth)
            .await
            .map_err(|e| WindowError::Stop(self.core_error(e)))?;
        let fetcher = Fetcher {
            api,
            client,
            auth,
            slot: domain_slot(&api.base_url, api.query.domain_id, api.requests_per_minute),
            scope: CredentialScope::new(&api.base_url),
            cx,
        };
        for window in &api.windows {
            let window = Arc::new(window.clone());
            let result = match fetcher.download(&window).await {
                Ok((file, url)) => {
                    let origin = format!("GET {} (window {})", redact_url(&url), window.label);
                    self.send_file(cx, &window, file, origin).await.and_then(
                        |outcome| match outcome.trailer {
                            None => Ok(()),
                            // Only if the tail check missed it; rows went out, so no retry.
                            Some(message) => Err(WindowError::Failed(Error::Request(
                                RequestError::new(Method::GET, &url, trailer_error(&message))
                                    .in_window(&window.label),
                            ))),
                        },
                    )
                }
                Err(e) => Err(e),
            };
            cx.out.finish_window(window, result).await?;
        }
        Ok(())
    }

    async fn run_files(&self, files: &FilesMode, cx: &SourceContext) -> Result<(), WindowError> {
        files
            .run(&self.name, cx, |window, path| async move {
                self.load_file(cx, &window, path).await
            })
            .await
    }

    async fn load_file(
        &self,
        cx: &SourceContext,
        window: &WindowRef,
        path: PathBuf,
    ) -> Result<(), WindowError> {
        let origin = path.display().to_string();
        let file_error = |message: String| {
            WindowError::Failed(Error::File {
                origin: origin.clone(),
                message,
            })
        };
        let opened = tokio::task::spawn_blocking(move || {
            let mut file = File::open(&path)?;
            let len = file.metadata()?.len();
            let trailer = parse::find_trailer(&mut file).map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>((file, len, trailer))
        })
        .await
        .map_err(|e| WindowError::Stop(self.core_error(e)))?;
        let (file, len, trailer) = opened.map_err(|e| file_error(e.to_string()))?;
        cx.metrics.add_file(len);
        if let Some(message) = trailer {
            return Err(file_error(format!(
                "the file ends with `downloadLogs error` ({message}): LINE WORKS failed to \
                 generate it; download it again"
            )));
        }
        let outcome = self.send_file(cx, window, file, origin.clone()).await?;
        match outcome.trailer {
            Some(message) => Err(file_error(format!(
                "`downloadLogs error` inside the file ({message}): download it again"
            ))),
            None => Ok(()),
        }
    }

    /// Parses `file` on a blocking thread and sends its batches as they come.
    async fn send_file(
        &self,
        cx: &SourceContext,
        window: &WindowRef,
        file: File,
        origin: String,
    ) -> Result<ParseOutcome, WindowError> {
        let options = self.parse_options(origin.clone());
        let result = chatlake_core::parsed::parse_to_output(cx, window, move |sink| {
            parse::parse(file, &options, sink)
        })
        .await
        .map_err(WindowError::Stop)?;
        match result {
            Ok(outcome) => {
                tracing::info!(
                    component = %self.name,
                    window = %window.label,
                    rows = outcome.rows,
                    dead_letters = outcome.dead_letters,
                    "window read"
                );
                Ok(outcome)
            }
            Err(e @ ParseError::Stopped(_)) => Err(WindowError::Stop(self.core_error(e))),
            Err(e) => Err(WindowError::Failed(Error::File {
                origin,
                message: e.to_string(),
            })),
        }
    }

    fn core_error(&self, e: impl std::fmt::Display) -> chatlake_core::Error {
        chatlake_core::Error::component(&self.name, e)
    }
}

fn trailer_error(message: &str) -> ErrorKind {
    ErrorKind::Provider(format!(
        "the file ends with `downloadLogs error`: {message}"
    ))
}

#[async_trait]
impl Source for LineworksSource {
    fn output_kind(&self) -> DataKind {
        DataKind::raw(RECORD_TYPE)
    }

    fn plan(&self) -> chatlake_core::Result<Vec<PlannedWindow>> {
        match &self.mode {
            Mode::Api(api) => Ok(api
                .windows
                .iter()
                .map(|w| PlannedWindow {
                    window: w.clone(),
                    request: format!("GET {}", api.query.url(&api.endpoint, w)),
                })
                .collect()),
            Mode::Files(files) => files.plan(&self.name),
        }
    }

    async fn run(self: Box<Self>, cx: SourceContext) -> chatlake_core::Result<()> {
        let result = match &self.mode {
            Mode::Api(api) => self.run_api(api, &cx).await,
            Mode::Files(files) => self.run_files(files, &cx).await,
        };
        result.map_err(|e| e.into_run_error(&self.name))
    }
}

/// One failed attempt, with what the retry loop needs to decide.
struct AttemptError {
    error: RequestError,
    /// The token the attempt used, to drop it after a `401`.
    token: Option<Secret>,
    /// The token endpoint failed (not the API).
    at_token_endpoint: bool,
}

/// Downloads windows for one API source.
struct Fetcher<'a> {
    api: &'a ApiMode,
    client: HttpClient,
    auth: Authenticator,
    slot: Arc<DomainSlot>,
    scope: CredentialScope,
    cx: &'a SourceContext,
}

impl Fetcher<'_> {
    /// Downloads `window` into a spool file with no trailer, retrying as the policy allows.
    async fn download(&self, window: &Window) -> Result<(File, Url), WindowError> {
        let retry = &self.api.retry;
        let mut attempts = 0u32;
        let mut refreshed_token = false;
        loop {
            attempts += 1;
            let attempt = {
                let _downloading = self.slot.downloading.lock().await;
                self.download_once(window).await
            };
            // The trailer is checked after the slot is released: the download is complete.
            let attempt = match attempt {
                Ok((file, url)) => self.check_trailer(window, file, url).await?,
                Err(e) => Err(e),
            };
            let failed = match attempt {
                Ok(done) => return Ok(done),
                Err(e) => e,
            };
            let error = failed.error;
            if error.is_unauthorized() {
                if !self.auth.can_refresh() {
                    return Err(WindowError::Fatal(error.into()));
                }
                if !refreshed_token && !failed.at_token_endpoint {
                    refreshed_token = true;
                    if let Some(token) = &failed.token {
                        self.auth.refused(token).await;
                    }
                    self.cx.metrics.add_retry();
                    tracing::warn!(
                        component = %self.cx.name, window = %window.label, %error,
                        "access token refused; fetching a new one"
                    );
                    attempts -= 1;
                    continue;
                }
            }
            if failed.at_token_endpoint
                && !error.is_retryable()
                && error.status().is_some_and(|s| s.is_client_error())
            {
                // Wrong client id, secret, key or scope: no window can succeed.
                return Err(WindowError::Fatal(error.into()));
            }
            if !error.is_retryable() || !retry.may_retry(attempts) {
                return Err(WindowError::Failed(error.into()));
            }
            let wait = error.server_wait();
            if let Some(wait) = wait
                && error.status() == Some(StatusCode::TOO_MANY_REQUESTS)
            {
                // The limit is per domain: hold every source of it back, not just this one.
                self.slot.limiter.pause_for(wait);
            }
            let delay = retry.delay(attempts, wait);
            self.cx.metrics.add_retry();
            tracing::warn!(
                component = %self.cx.name,
                window = %window.label,
                attempt = attempts,
                max_attempts = retry.max_attempts,
                delay_ms = delay.as_millis() as u64,
                %error,
                "download failed; retrying with a new download URL"
            );
            tokio::time::sleep(delay).await;
        }
    }

    async fn check_trailer(
        &self,
        window: &Window,
        file: File,
        url: Url,
    ) -> Result<Result<(File, Url), AttemptError>, WindowError> {
        let (file, found) = tokio::task::spawn_blocking(move || {
            let mut file = file;
            let found = parse::find_trailer(&mut file);
            (file, found)
        })
        .await
        .map_err(|e| WindowError::Stop(chatlake_core::Error::component(&self.cx.name, e)))?;
        let kind = match found {
            Ok(None) => return Ok(Ok((file, url))),
            Ok(Some(message)) => trailer_error(&message),
            Err(e) => ErrorKind::Local(format!("reading the spool file: {e}")),
        };
        Ok(Err(AttemptError {
            error: RequestError::new(Method::GET, &url, kind).in_window(&window.label),
            token: None,
            at_token_endpoint: false,
        }))
    }

    /// One attempt: a token, the download request, the redirect(s), the file into a spool.
    async fn download_once(&self, window: &Window) -> Result<(File, Url), AttemptError> {
        self.slot.limiter.until_ready().await;
        let mut token = self.fresh_token(window).await?;
        let fail = |error: RequestError, token: &Secret| AttemptError {
            error: error.in_window(&window.label),
            token: Some(token.clone()),
            at_token_endpoint: false,
        };

        let mut url = self.api.query.url(&self.api.endpoint, window);
        self.cx.metrics.add_request();
        let mut response = self
            .client
            .get(url.clone())
            .bearer_auth(token.expose())
            .send()
            .await
            .map_err(|e| fail(RequestError::from_reqwest(Method::GET, &url, e), &token))?;
        let mut redirects = 0;
        let mut file_token_refreshed = false;
        while response.status() != StatusCode::OK {
            let status = response.status();
            let on_file_url = redirects > 0;
            if on_file_url
                && status == StatusCode::UNAUTHORIZED
                && self.scope.allows(&url)
                && self.auth.can_refresh()
                && !file_token_refreshed
            {
                // The token expired between the download request and the file. The URL is
                // still ours (a new one would be refused while it is outstanding): fetch the
                // same URL again with a new token.
                file_token_refreshed = true;
                drop(response);
                self.auth.refused(&token).await;
                token = self.fresh_token(window).await?;
                self.cx.metrics.add_retry();
                self.cx.metrics.add_request();
                response = self
                    .client
                    .get(url.clone())
                    .bearer_auth(token.expose())
                    .send()
                    .await
                    .map_err(|e| fail(RequestError::from_reqwest(Method::GET, &url, e), &token))?;
                continue;
            }
            if !status.is_redirection() {
                let error = RequestError::from_response(Method::GET, &url, response).await;
                return Err(fail(error, &token));
            }
            redirects += 1;
            let protocol = |message: String| {
                fail(
                    RequestError::new(Method::GET, &url, ErrorKind::Protocol(message)),
                    &token,
                )
            };
            if redirects > MAX_REDIRECTS {
                return Err(protocol(format!("more than {MAX_REDIRECTS} redirects")));
            }
            let Some(location) = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
            else {
                return Err(protocol(format!("HTTP {status} without a Location header")));
            };
            let next = resolve_location(&url, location)
                .map_err(|e| protocol(format!("HTTP {status} with a bad Location ({e})")))?;
            drop(response);
            url = next;
            let mut request = self.client.get(url.clone());
            // Credentials go only to the API's own origin, never across a redirect to another.
            if self.scope.allows(&url) {
                request = request.bearer_auth(token.expose());
            }
            self.cx.metrics.add_request();
            response = request
                .send()
                .await
                .map_err(|e| fail(RequestError::from_reqwest(Method::GET, &url, e), &token))?;
        }
        let file = self
            .spool(&url, response)
            .await
            .map_err(|e| fail(e, &token))?;
        Ok((file, url))
    }

    async fn fresh_token(&self, window: &Window) -> Result<Secret, AttemptError> {
        self.auth
            .token(&self.client)
            .await
            .map_err(|e| AttemptError {
                error: e.in_window(&window.label),
                token: None,
                at_token_endpoint: true,
            })
    }

    /// Streams the body into an anonymous temporary file, chunk by chunk.
    async fn spool(
        &self,
        url: &Url,
        mut response: reqwest::Response,
    ) -> Result<File, RequestError> {
        let local = |e: std::io::Error| {
            RequestError::new(
                Method::GET,
                url,
                ErrorKind::Local(format!(
                    "writing the spool file in {}: {e}",
                    std::env::temp_dir().display()
                )),
            )
        };
        let file = tempfile::tempfile().map_err(local)?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(file));
        let mut bytes = 0u64;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| RequestError::from_reqwest(Method::GET, url, e))?
        {
            out.write_all(&chunk).await.map_err(local)?;
            bytes += chunk.len() as u64;
            self.cx.metrics.add_bytes(chunk.len() as u64);
        }
        out.flush().await.map_err(local)?;
        let mut file = out.into_inner().into_std().await;
        file.rewind().map_err(local)?;
        tracing::debug!(component = %self.cx.name, bytes, "download spooled");
        Ok(file)
    }
}
