//! The running source: fetch each window's CSV (or read a hand-downloaded file), parse it on a
//! blocking thread and send its rows.
//!
//! Per window, strictly in order:
//! 1. wait for the domain's download slot (one download at a time per domain, across every
//!    LINE WORKS source of the process) and the request budget;
//! 2. `GET /monitoring/message-contents/download` → `302` → `GET Location` (the token goes along
//!    to the API's own origin and to the hosts of `download_hosts`, LINE WORKS' file host by
//!    default; a redirect anywhere else fails before anything is sent there), streaming the body
//!    into a spool file;
//! 3. release the slot, and look for a `downloadLogs error` trailer at the end of the spool: if
//!    there is one the attempt failed, and the next attempt asks for a **new** download URL
//!    (steps 1–3 are one attempt of [`chatlake_http::RequestLoop`]; [`Fetcher::classify`] holds
//!    LINE WORKS' facts);
//! 4. parse the spool and send its batches, then mark the window done.
//!
//! Spooling keeps memory flat whatever the file size, frees the provider's single download slot
//! as fast as the network allows, and lets the trailer be checked before any row leaves.

use std::collections::HashMap;
use std::fs::File;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, LazyLock, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chatlake_core::{DataKind, PlannedWindow, Secret, Source, SourceContext, Window, WindowRef};
use chatlake_http::{
    Attempt, Credential, ErrorKind, Failure, HttpClient, Outcome, RateLimiter, RequestError,
    RequestLoop, RetryObserver, RetryPolicy, redact_url, resolve_location, spool_body,
};
use chatlake_source_kit::FilesMode;
use reqwest::header::LOCATION;
use reqwest::{Method, StatusCode};
use url::Url;

use crate::auth::{Auth, Authenticator};
use crate::config::Language;
use crate::error::Error;
use crate::parse::{self, ParseError, ParseOptions, ParseOutcome, RECORD_TYPE};
use crate::window::DownloadQuery;
use chatlake_http::{DownloadHostRefused, DownloadHosts};

/// Redirects followed from the download request to the file, at most.
const MAX_REDIRECTS: u32 = 5;

/// The `lineworks_message_contents` source, built from [`crate::LineworksSourceConfig`].
pub struct LineworksSource {
    name: String,
    language: Language,
    batch_size: usize,
    mode: Mode,
    header_warned: Arc<AtomicBool>,
    /// Keep each row whole in a `raw` column ([`Source::keep_raw_records`]).
    keep_raw: bool,
}

pub(crate) enum Mode {
    Api(Box<ApiMode>),
    Files(FilesMode),
}

pub(crate) struct ApiMode {
    pub base_url: Url,
    pub endpoint: Url,
    /// Where the token may follow the download's redirect.
    pub download_hosts: DownloadHosts,
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
                // A fixed count per minute, whole again at its reset: a 429 pauses the budget
                // until then, without a slow-down.
                limiter: RateLimiter::sliding_window(per_minute, Duration::from_secs(60))
                    .with_slow_down(Duration::ZERO),
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
            keep_raw: false,
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
            keep_raw: self.keep_raw,
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
        let result = chatlake_source_kit::parsed::parse_to_output(cx, window, move |sink| {
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

    fn core_error(&self, e: impl Into<chatlake_core::BoxError>) -> chatlake_core::Error {
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

    /// API windows stay on one worker: LINE WORKS serves one download at a time per domain,
    /// so a second worker would only wait (or be refused). Files split by file.
    fn share(&mut self, share: &chatlake_core::shard::Share) -> chatlake_core::shard::ShareTaken {
        match &mut self.mode {
            Mode::Api(_) => chatlake_core::shard::ShareTaken::Whole,
            Mode::Files(files) => files.take_share(share),
        }
    }

    fn windows_loaded_again(&self) -> Vec<String> {
        match &self.mode {
            // A planned window with a committed window's key is that window fetched again
            // whole (a `lookback` reopened it, or a run with the same `end` follows a killed
            // one); the runtime keeps the committed ones.
            Mode::Api(api) => api.windows.iter().map(Window::key).collect(),
            Mode::Files(files) => files.windows_loaded_again(&self.name),
        }
    }

    /// Each row as a JSON object of its fields keyed by the file's header names.
    fn keep_raw_records(&mut self) -> std::result::Result<(), String> {
        self.keep_raw = true;
        Ok(())
    }
}

/// A download that reached its end.
enum Spooled {
    /// The spool file, where it came from, and what its tail says (a `downloadLogs error`
    /// trailer means LINE WORKS failed to generate the file).
    Read {
        file: File,
        url: Url,
        trailer: Result<Option<String>, ParseError>,
    },
    /// The blocking task that reads the tail did not finish (it panicked, or the runtime is
    /// shutting down).
    Unread(tokio::task::JoinError),
    /// The redirect led to a host the token may not go to: nothing was requested from it, and
    /// every window would end the same way.
    Refused(DownloadHostRefused),
}

/// How one download attempt ended without a file.
enum AttemptError {
    /// A request failed: the request loop's rules decide what next.
    Failure(Failure),
    /// The redirect led to a host the token may not go to.
    Refused(DownloadHostRefused),
}

impl From<Failure> for AttemptError {
    fn from(failure: Failure) -> Self {
        AttemptError::Failure(failure)
    }
}

/// A download that produced no file, as the request loop's error: a request that failed after
/// its retries fails only its window.
struct DownloadFailed(WindowError);

impl From<RequestError> for DownloadFailed {
    fn from(error: RequestError) -> Self {
        DownloadFailed(WindowError::Failed(error.into()))
    }
}

/// Counts every repeated download request, a replaced token's included.
struct RetryCounter<'a>(&'a chatlake_core::metrics::ComponentMetrics);

impl RetryObserver for RetryCounter<'_> {
    fn retry(&mut self, _error: &RequestError, _delay: Duration) {
        self.0.add_retry();
    }
    fn token_refreshed(&mut self, _error: &RequestError) {
        self.0.add_retry();
    }
    fn rate_limited(&mut self, _error: &RequestError, _wait: Duration) {
        self.0.add_rate_limited();
    }
}

/// Downloads windows for one API source.
struct Fetcher<'a> {
    api: &'a ApiMode,
    client: HttpClient,
    auth: Authenticator,
    slot: Arc<DomainSlot>,
    cx: &'a SourceContext,
}

#[async_trait]
impl Credential for Fetcher<'_> {
    async fn token(&self) -> Result<Secret, RequestError> {
        self.auth.token(&self.client).await
    }

    async fn refused(&self, token: &Secret) {
        self.auth.refused(token).await;
    }
}

impl Fetcher<'_> {
    /// Downloads `window` into a spool file with no trailer, through the shared request loop:
    /// every attempt asks for a **new** download URL.
    async fn download(&self, window: &Window) -> Result<(File, Url), WindowError> {
        RequestLoop::new(&self.api.retry)
            // The limit is per domain: a 429 holds every source of it back, not just this one.
            .budget(&self.slot.limiter)
            .credential(self)
            .component(&self.cx.name)
            .window(&window.label)
            .run(
                &mut RetryCounter(&self.cx.metrics),
                |result, attempt| self.classify(window, result, attempt),
                || async {
                    let downloaded = {
                        let _downloading = self.slot.downloading.lock().await;
                        self.download_once(window).await
                    };
                    match downloaded {
                        // The trailer is checked after the slot is released: the download is
                        // complete.
                        Ok((file, url)) => Ok(read_tail(file, url).await),
                        Err(AttemptError::Failure(failure)) => Err(failure),
                        Err(AttemptError::Refused(refused)) => Ok(Spooled::Refused(refused)),
                    }
                },
            )
            .await
            .map_err(|DownloadFailed(e)| e)
    }

    /// What LINE WORKS' answers mean, on top of the shared rules ([`chatlake_http::classify`]):
    /// a `200` whose file ends with a `downloadLogs error` trailer is a failed attempt; a `401`
    /// to a static token, or a token endpoint that refuses the client (wrong id, secret, key or
    /// scope), fails every window alike.
    fn classify(
        &self,
        window: &Window,
        result: Result<Spooled, Failure>,
        attempt: Attempt,
    ) -> Outcome<(File, Url), DownloadFailed> {
        let fatal =
            |error: RequestError| Outcome::Fail(DownloadFailed(WindowError::Fatal(error.into())));
        let failure = match result {
            Ok(Spooled::Unread(e)) => {
                return Outcome::Fail(DownloadFailed(WindowError::Stop(
                    chatlake_core::Error::component(&self.cx.name, e),
                )));
            }
            Ok(Spooled::Refused(refused)) => {
                return Outcome::Fail(DownloadFailed(WindowError::Fatal(Error::DownloadHost {
                    window: window.label.clone(),
                    refused,
                })));
            }
            Ok(Spooled::Read { file, url, trailer }) => {
                let kind = match trailer {
                    Ok(None) => return Outcome::Done((file, url)),
                    Ok(Some(message)) => trailer_error(&message),
                    Err(e) => ErrorKind::Local(format!("reading the spool file: {e}")),
                };
                Failure::request(
                    RequestError::new(Method::GET, &url, kind).in_window(&window.label),
                    None,
                )
            }
            Err(failure) => failure,
        };
        let error = failure.error();
        if error.is_unauthorized() && !self.auth.can_refresh() {
            return fatal(failure.into_error());
        }
        if failure.at_credential()
            && !error.is_retryable()
            && error.status().is_some_and(|s| s.is_client_error())
        {
            return fatal(failure.into_error());
        }
        chatlake_http::classify(Err(failure), attempt)
    }

    /// One attempt: a token, the download request, the redirect(s), the file into a spool.
    async fn download_once(&self, window: &Window) -> Result<(File, Url), AttemptError> {
        self.slot.limiter.until_ready().await;
        let mut token = self.fresh_token(window).await?;
        let fail = |error: RequestError, token: &Secret| {
            AttemptError::Failure(Failure::request(
                error.in_window(&window.label),
                Some(token),
            ))
        };

        let mut url = self.api.query.url(&self.api.endpoint, window);
        let mut response = self
            .get(&url, Some(&token))
            .await
            .map_err(|e| fail(e, &token))?;
        let mut redirects = 0;
        let mut file_token_refreshed = false;
        while response.status() != StatusCode::OK {
            let status = response.status();
            let on_file_url = redirects > 0;
            if on_file_url
                && status == StatusCode::UNAUTHORIZED
                && self.api.download_hosts.token_may_go_to(&url).is_ok()
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
                response = self
                    .get(&url, Some(&token))
                    .await
                    .map_err(|e| fail(e, &token))?;
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
            // The token goes only to the API's origin and the listed file hosts; any other host
            // is not even asked.
            if let Err(refused) = self.api.download_hosts.token_may_go_to(&url) {
                return Err(AttemptError::Refused(refused));
            }
            response = self
                .get(&url, Some(&token))
                .await
                .map_err(|e| fail(e, &token))?;
        }
        let mut bytes = 0u64;
        let file = spool_body(&url, response, |chunk| {
            bytes += chunk as u64;
            self.cx.metrics.add_bytes(chunk as u64);
        })
        .await
        .map_err(|e| fail(e, &token))?;
        tracing::debug!(component = %self.cx.name, bytes, "download spooled");
        Ok((file, url))
    }

    /// One counted `GET`, with `token` as its bearer if given.
    async fn get(
        &self,
        url: &Url,
        token: Option<&Secret>,
    ) -> Result<reqwest::Response, RequestError> {
        let mut request = self.client.get(url.clone());
        if let Some(token) = token {
            request = request.bearer_auth(token.expose());
        }
        self.cx.metrics.add_request();
        request
            .send()
            .await
            .map_err(|e| RequestError::from_reqwest(Method::GET, url, e))
    }

    async fn fresh_token(&self, window: &Window) -> Result<Secret, Failure> {
        self.auth
            .token(&self.client)
            .await
            .map_err(|e| Failure::Credential(e.in_window(&window.label)))
    }
}

/// Looks for a `downloadLogs error` trailer at the end of `file`, on a blocking thread.
async fn read_tail(file: File, url: Url) -> Spooled {
    let mut file = file;
    match tokio::task::spawn_blocking(move || {
        let trailer = parse::find_trailer(&mut file);
        (file, trailer)
    })
    .await
    {
        Ok((file, trailer)) => Spooled::Read { file, url, trailer },
        Err(e) => Spooled::Unread(e),
    }
}
