//! The running source: per window, run the export (submit → poll → signed URL → spool) with
//! [`chatlake_http::export::run_export`], parse the spool on a blocking thread and send its rows;
//! or read hand-downloaded files, one window each.
//!
//! **Checkpoints.** The export id of each window is recorded the moment the provider accepts the
//! job ([`ExportCheckpoint`], readable through [`QlaraSource::checkpoints`] and reported to an
//! [`QlaraSource::on_export_accepted`] hook). A run given those ids back
//! ([`QlaraSource::with_known_exports`]) polls the same jobs instead of submitting new ones; an id
//! the provider no longer knows is replaced by a fresh submit. The state layer persists them.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chatlake_core::metrics::ComponentMetrics;
use chatlake_core::{DataKind, PlannedWindow, Secret, Source, SourceContext, Window, WindowRef};
use chatlake_http::export::{ExportError, ExportHooks, ExportSettings, run_export};
use chatlake_http::{HttpClient, RateLimiter, RequestError};
use chatlake_source_kit::FilesMode;
use serde_json::json;
use url::Url;

use crate::api::{WindowExport, api_root};
use crate::config::format_time;
use crate::error::Error;
use crate::parse::{self, ParseError, RECORD_TYPE};

/// The provider stream every window of this source belongs to.
pub const STREAM: &str = "message_history";

/// The export job of one window, recorded as soon as the provider accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportCheckpoint {
    /// [`Window::key`] of the window: stable across runs for the same range.
    pub window_key: String,
    /// The window's label (its range), for people.
    pub window_label: String,
    /// The provider's export id.
    pub export_id: String,
}

impl ExportCheckpoint {
    /// The value kept in the source's ledger (`SourceState::checkpoints`, keyed by
    /// `window_key`) while the window is open; [`crate::config::known_exports`] reads it back.
    pub fn to_state_value(&self) -> serde_json::Value {
        json!({"export_id": self.export_id, "window": self.window_label})
    }
}

type AcceptedHook = Arc<dyn Fn(&ExportCheckpoint) + Send + Sync>;

/// The `qlara_message_history` source, built from [`crate::QlaraSourceConfig`].
pub struct QlaraSource {
    name: String,
    batch_size: usize,
    mode: Mode,
    known_exports: HashMap<String, String>,
    checkpoints: Arc<Mutex<Vec<ExportCheckpoint>>>,
    on_accepted: Option<AcceptedHook>,
    /// Keep each row whole in a `raw` column ([`Source::keep_raw_records`]).
    keep_raw: bool,
}

pub(crate) enum Mode {
    Api(Box<ApiMode>),
    Files(FilesMode),
}

/// How requests authenticate.
#[derive(Debug, Clone)]
pub(crate) enum Credentials {
    ApiKey(Secret),
    Basic { username: String, password: Secret },
}

pub(crate) struct ApiMode {
    pub base_url: Url,
    pub credentials: Credentials,
    pub windows: Vec<Window>,
    pub sender: Option<String>,
    pub recipient: Option<String>,
    pub export: ExportSettings,
    pub request_timeout: Duration,
    pub requests_per_minute: std::num::NonZeroU32,
}

impl Credentials {
    /// Who the provider's rate limit counts: the API key or the user (hashed, never kept).
    fn budget_key(&self, base: &Url) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        match self {
            Credentials::ApiKey(key) => key.expose().hash(&mut h),
            Credentials::Basic { username, .. } => username.hash(&mut h),
        }
        format!(
            "{}|{:016x}",
            base.as_str().trim_end_matches('/'),
            h.finish()
        )
    }
}

/// The request budget of one API key, shared by every Qlara source of the process: the
/// provider limits per key, so one source's 429 holds back every source of that key.
fn key_budget(key: String, per_minute: std::num::NonZeroU32) -> RateLimiter {
    static BUDGETS: std::sync::LazyLock<Mutex<HashMap<String, RateLimiter>>> =
        std::sync::LazyLock::new(Default::default);
    BUDGETS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(key)
        .or_insert_with(|| {
            // Whole again at the provider's reset: a 429 pauses the budget, without a slow-down.
            RateLimiter::per_minute(per_minute).with_slow_down(Duration::ZERO)
        })
        .clone()
}

/// How one window went wrong (see [`chatlake_core::stage::WindowError`]).
type WindowError = chatlake_core::stage::WindowError<Error>;

impl ApiMode {
    fn submit_body(&self, window: &Window) -> serde_json::Value {
        let mut body = json!({
            "startDateTime": window.start.as_ref().map(format_time),
            "endDateTime": window.end.as_ref().map(format_time),
        });
        if let Some(s) = &self.sender {
            body["sender"] = json!(s);
        }
        if let Some(r) = &self.recipient {
            body["recipient"] = json!(r);
        }
        body
    }
}

impl QlaraSource {
    pub(crate) fn new(name: String, batch_size: usize, mode: Mode) -> Self {
        QlaraSource {
            name,
            batch_size,
            mode,
            known_exports: HashMap::new(),
            checkpoints: Arc::default(),
            on_accepted: None,
            keep_raw: false,
        }
    }

    /// Export ids from an earlier run, by [`Window::key`]: those windows poll their job instead of
    /// submitting a new one.
    pub fn with_known_exports(mut self, known: HashMap<String, String>) -> Self {
        self.known_exports = known;
        self
    }

    /// Called with each window's checkpoint the moment its export is accepted (also after a
    /// resubmit, with the new id).
    pub fn on_export_accepted(
        mut self,
        hook: impl Fn(&ExportCheckpoint) + Send + Sync + 'static,
    ) -> Self {
        self.on_accepted = Some(Arc::new(hook));
        self
    }

    /// The checkpoints recorded so far (shared: it fills while the source runs).
    pub fn checkpoints(&self) -> Arc<Mutex<Vec<ExportCheckpoint>>> {
        self.checkpoints.clone()
    }

    /// The API windows (empty with `files`, whose windows are found when the source runs).
    pub fn api_windows(&self) -> &[Window] {
        match &self.mode {
            Mode::Api(api) => &api.windows,
            Mode::Files(_) => &[],
        }
    }

    /// The poll interval in effect (API mode).
    pub fn poll_interval(&self) -> Option<Duration> {
        match &self.mode {
            Mode::Api(api) => Some(api.export.poll_interval),
            Mode::Files(_) => None,
        }
    }

    async fn run_api(&self, api: &ApiMode, cx: &SourceContext) -> Result<(), WindowError> {
        let client = HttpClient::builder()
            .request_timeout(api.request_timeout)
            .build()
            .map_err(|e| WindowError::Stop(self.core_error(e)))?;
        let root = api_root(&api.base_url);
        let budget = key_budget(
            api.credentials.budget_key(&api.base_url),
            api.requests_per_minute,
        );
        for window in &api.windows {
            let window = Arc::new(window.clone());
            let export = WindowExport {
                client: &client,
                api: root.clone(),
                credentials: &api.credentials,
                body: api.submit_body(&window),
                component: &self.name,
                window: &window.label,
                metrics: cx.metrics.clone(),
                budget: &budget,
            };
            let key = window.key();
            let known = self.known_exports.get(&key).cloned();
            if let Some(id) = &known {
                tracing::info!(component = %self.name, window = %window.label, export_id = %id, "resuming a known export");
            }
            let mut hooks = Hooks {
                source: self,
                window: &window,
                metrics: &cx.metrics,
                out: &cx.out,
            };
            let result = match run_export(&export, &api.export, known, &mut hooks).await {
                Ok(file) => {
                    let origin = format!("export of window {}", window.label);
                    self.send_file(cx, &window, file, origin).await
                }
                Err(ExportError::Request(e)) if e.is_unauthorized() => {
                    Err(WindowError::Fatal(Error::Request(e)))
                }
                // The ledger cannot take the export id: stop rather than lose track of jobs.
                Err(e @ ExportError::Hook { .. }) => Err(WindowError::Stop(self.core_error(e))),
                Err(e) => Err(WindowError::Failed(Error::Export {
                    window: window.label.clone(),
                    source: e,
                })),
            };
            cx.out.finish_window(window, result).await?;
        }
        Ok(())
    }

    fn record_checkpoint(&self, window: &Window, export_id: &str) -> ExportCheckpoint {
        let checkpoint = ExportCheckpoint {
            window_key: window.key(),
            window_label: window.label.clone(),
            export_id: export_id.to_string(),
        };
        tracing::info!(component = %self.name, window = %window.label, %export_id, "export accepted");
        if let Some(hook) = &self.on_accepted {
            hook(&checkpoint);
        }
        let mut all = self
            .checkpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        all.retain(|c| c.window_key != checkpoint.window_key);
        all.push(checkpoint.clone());
        checkpoint
    }

    async fn run_files(&self, files: &FilesMode, cx: &SourceContext) -> Result<(), WindowError> {
        files
            .run(&self.name, cx, |window, path| async move {
                let origin = path.display().to_string();
                let opened = tokio::task::spawn_blocking(move || {
                    let file = File::open(&path)?;
                    let len = file.metadata()?.len();
                    Ok::<_, std::io::Error>((file, len))
                })
                .await
                .map_err(|e| WindowError::Stop(self.core_error(e)))?;
                match opened {
                    Ok((file, len)) => {
                        cx.metrics.add_file(len);
                        self.send_file(cx, &window, file, origin).await
                    }
                    Err(e) => Err(WindowError::Failed(Error::File {
                        origin,
                        message: e.to_string(),
                    })),
                }
            })
            .await
    }

    /// Parses `file` on a blocking thread and sends its batches as they come.
    async fn send_file(
        &self,
        cx: &SourceContext,
        window: &WindowRef,
        file: File,
        origin: String,
    ) -> Result<(), WindowError> {
        let (batch_size, keep_raw) = (self.batch_size, self.keep_raw);
        // Exports hold exactly their window; hand-downloaded files are filtered by start/end.
        let filter = match &self.mode {
            Mode::Files(files) => parse::SendDateFilter {
                start: files.start,
                end: files.end,
            },
            Mode::Api(_) => parse::SendDateFilter::default(),
        };
        let result = chatlake_source_kit::parsed::parse_to_output(cx, window, move |sink| {
            parse::parse_filtered(file, batch_size, &filter, keep_raw, sink)
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
                    filtered = outcome.filtered,
                    "window read"
                );
                Ok(())
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

/// Metrics and checkpoints of one window's export.
struct Hooks<'a> {
    source: &'a QlaraSource,
    window: &'a WindowRef,
    metrics: &'a ComponentMetrics,
    out: &'a chatlake_core::stage::Output,
}

#[async_trait]
impl ExportHooks for Hooks<'_> {
    /// Records the checkpoint and saves it in the source's ledger, durably, before polling: a run
    /// stopped from here on resumes this export.
    async fn accepted(&mut self, export_id: &str) -> Result<(), String> {
        let checkpoint = self.source.record_checkpoint(self.window, export_id);
        self.out
            .save_checkpoint(self.window, checkpoint.to_state_value())
            .await
            .map_err(|e| e.to_string())
    }

    /// The request loop logs the retry and pauses the key's budget after a `429`.
    fn retry(&mut self, _error: &RequestError, _delay: Duration) {
        self.metrics.add_retry();
    }

    fn rate_limited(&mut self, _error: &RequestError, _wait: Duration) {
        self.metrics.add_rate_limited();
    }

    fn request(&mut self) {
        self.metrics.add_request();
    }
}

#[async_trait]
impl Source for QlaraSource {
    fn output_kind(&self) -> DataKind {
        DataKind::raw(RECORD_TYPE)
    }

    fn plan(&self) -> chatlake_core::Result<Vec<PlannedWindow>> {
        match &self.mode {
            Mode::Api(api) => {
                let endpoint = format!("{}/messages/history/export", api_root(&api.base_url));
                Ok(api
                    .windows
                    .iter()
                    .map(|w| {
                        let mut request = format!(
                            "POST {endpoint} startDateTime={} endDateTime={}",
                            w.start.as_ref().map(format_time).unwrap_or_default(),
                            w.end.as_ref().map(format_time).unwrap_or_default(),
                        );
                        if let Some(s) = &api.sender {
                            request.push_str(&format!(" sender={s}"));
                        }
                        if let Some(r) = &api.recipient {
                            request.push_str(&format!(" recipient={r}"));
                        }
                        if let Some(id) = self.known_exports.get(&w.key()) {
                            request = format!("poll export {id} (from an earlier run)");
                        }
                        PlannedWindow {
                            window: w.clone(),
                            request,
                        }
                    })
                    .collect())
            }
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

    /// Windows are independent exports, split by window, unless a transform below compares
    /// windows: a late delivery report arrives in a later window's export as a newer version of
    /// a message an earlier window holds, and only one worker seeing both keeps the latest, so
    /// then every window stays on one worker. Files split by file (or stay together likewise).
    fn share(&mut self, share: &chatlake_core::shard::Share) -> chatlake_core::shard::ShareTaken {
        match &mut self.mode {
            Mode::Api(_) if share.keep_copies_together => chatlake_core::shard::ShareTaken::Whole,
            Mode::Api(api) => {
                share.retain_windows(&mut api.windows, |w| w);
                chatlake_core::shard::ShareTaken::Split
            }
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

    /// Each row as a JSON object of every field keyed by the file's header names (`cost`,
    /// `parts`, `direction`, `customerMessageId` and any column the export adds).
    fn keep_raw_records(&mut self) -> std::result::Result<(), String> {
        self.keep_raw = true;
        Ok(())
    }
}
