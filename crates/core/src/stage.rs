//! The three stage traits and what the runtime hands them.
//!
//! A component is a config struct (serde + schemars, so `chatlake components` can document it)
//! that builds a stage. Building is pure: it checks the config and computes what it can without
//! I/O, so `validate` and `plan` run offline. The runtime then drives the stage:
//!
//! * a [`Source`] pushes batches and window markers into its [`Output`];
//! * a [`Transform`] turns each batch into zero or more batches, synchronously (CPU work);
//! * a [`Sink`] writes batches and commits a window when its [`Event::WindowDone`] arrives.
//!
//! Channels between stages are bounded, so a slow sink slows its sources down instead of letting
//! memory grow.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use chrono::{DateTime, FixedOffset, Utc};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::config::InvalidConfig;
use crate::dead_letter::DeadLetters;
use crate::event::{Batch, Event, Window, WindowRef};
use crate::metrics::ComponentMetrics;
use crate::schema::CANONICAL_RECORD_TYPE;
use crate::state::SourceState;
use crate::{BoxError, Error, Result, Secret};

/// The record type a stage emits, so the graph can refuse wiring that cannot work (a `dedupe`
/// fed raw LINE WORKS rows, a sink fed two different record types).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DataKind(Cow<'static, str>);

impl DataKind {
    /// Canonical messages (spec section 3), the output of `normalize`.
    pub const CANONICAL: DataKind = DataKind(Cow::Borrowed(CANONICAL_RECORD_TYPE));

    /// Provider records as a source emits them, e.g. `lineworks.message_contents`.
    pub const fn raw(record_type: &'static str) -> DataKind {
        DataKind(Cow::Borrowed(record_type))
    }

    pub fn is_canonical(&self) -> bool {
        self.0 == CANONICAL_RECORD_TYPE
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DataKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_canonical() {
            f.write_str("canonical messages")
        } else {
            write!(f, "raw `{}` records", self.0)
        }
    }
}

/// Where `--emulate` points sources: the emulator's root URL and the credentials it accepts,
/// keyed by provider-specific names (`lineworks.client_id`, ...). Sources that find a profile
/// here use it instead of their configured `base_url`, `token_url` and `auth`.
#[derive(Debug, Clone, Default)]
pub struct EmulatorProfile {
    pub root: String,
    pub credentials: BTreeMap<String, Secret>,
}

impl EmulatorProfile {
    /// A credential the emulator accepts, or an error naming the missing key.
    pub fn credential(&self, key: &str) -> Result<Secret, InvalidConfig> {
        self.credentials
            .get(key)
            .cloned()
            .ok_or_else(|| InvalidConfig::new("auth", format!("the emulator has no `{key}`")))
    }
}

/// What building a component may use. Nothing here does I/O.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The component's name in the pipeline file.
    pub name: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// Set by `run --emulate`.
    pub emulator: Option<EmulatorProfile>,
    /// `--start` from the command line: wins over the file.
    pub start: Option<DateTime<FixedOffset>>,
    /// `--end` from the command line: wins over the file.
    pub end: Option<DateTime<FixedOffset>>,
    /// The run's clock, so `end` defaults and windows are reproducible.
    pub now: DateTime<Utc>,
    /// A source's window ledger from earlier runs (empty for other components, for
    /// `validate`, and after `--full-refresh`): plan only what it does not cover.
    pub state: Arc<SourceState>,
    /// The pipeline's state directory, for components that keep state of their own (dedupe
    /// `across_runs`); they read and write it only while running.
    pub state_dir: std::path::PathBuf,
    /// Keys of every window the ledger lists as committed: state a component wrote for any other
    /// window belongs to a run that stopped before its commit point and must be ignored.
    pub committed: Arc<HashSet<String>>,
    /// The same windows with the run that committed each: state written by one run for a window
    /// that a later run committed again (after a reset) is stale.
    pub committed_by: Arc<std::collections::HashMap<String, String>>,
    /// The `[pipeline]` table's `storage`: the default for a sink's own (spec section 5).
    pub storage: crate::config::StorageOptions,
}

impl Default for BuildContext {
    fn default() -> Self {
        BuildContext {
            name: String::new(),
            pipeline: String::new(),
            emulator: None,
            start: None,
            end: None,
            now: Utc::now(),
            state: Arc::default(),
            state_dir: std::path::PathBuf::new(),
            committed: Arc::default(),
            storage: Default::default(),
            committed_by: Arc::default(),
        }
    }
}

/// A source's `start`/`end` after the command line had its say (see [`BuildContext::range`]).
#[derive(Debug, Clone, Copy)]
pub struct ConfiguredRange {
    pub start: Option<DateTime<FixedOffset>>,
    pub end: Option<DateTime<FixedOffset>>,
    /// How errors name the start: `start`, or `start (from --start)`.
    pub start_key: &'static str,
}

impl ConfiguredRange {
    /// The range an API source fetches: `start` is required (`example` shows the form, with the
    /// provider's usual offset), `end` defaults to now.
    pub fn for_api(
        &self,
        now: DateTime<Utc>,
        example: &str,
    ) -> Result<(DateTime<FixedOffset>, DateTime<FixedOffset>), InvalidConfig> {
        use chrono::SubsecRound;
        let Some(start) = self.start else {
            return Err(InvalidConfig::new(
                "start",
                format!(
                    "required unless `files` is set: an RFC 3339 time with an offset, like \
                     {example}"
                ),
            ));
        };
        let end = match self.end {
            Some(e) => e,
            None => {
                let now = now.with_timezone(start.offset()).trunc_subsecs(0);
                if now <= start {
                    return Err(InvalidConfig::new(
                        "end",
                        format!(
                            "defaults to now ({}), which is not after {} {}",
                            now.to_rfc3339(),
                            self.start_key,
                            start.to_rfc3339()
                        ),
                    ));
                }
                now
            }
        };
        Ok((start, end))
    }
}

impl BuildContext {
    /// A source's `start` and `end` with `--start`/`--end` winning over the file; `end` must be
    /// after `start` (the error names where each came from).
    pub fn range(
        &self,
        start: Option<DateTime<FixedOffset>>,
        end: Option<DateTime<FixedOffset>>,
    ) -> Result<ConfiguredRange, InvalidConfig> {
        let (start, start_key) = match (self.start, start) {
            (Some(s), _) => (Some(s), "start (from --start)"),
            (None, s) => (s, "start"),
        };
        let (end, end_key) = match (self.end, end) {
            (Some(e), _) => (Some(e), "end (from --end)"),
            (None, e) => (e, "end"),
        };
        if let (Some(s), Some(e)) = (start, end)
            && e <= s
        {
            return Err(InvalidConfig::new(
                "end",
                format!(
                    "{end_key} {} must be after {start_key} {}",
                    e.to_rfc3339(),
                    s.to_rfc3339()
                ),
            ));
        }
        Ok(ConfiguredRange {
            start,
            end,
            start_key,
        })
    }
}

/// Facts about the run every stage may read.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub pipeline: String,
    pub run_id: String,
    pub started_at: DateTime<Utc>,
}

/// One window a source would fetch, for `chatlake plan`.
#[derive(Debug, Clone)]
pub struct PlannedWindow {
    pub window: Window,
    /// The request (or file) it stands for, as a person reads it; never carries secrets.
    pub request: String,
}

/// Sends a stage's output to every consumer (fan-out: each gets every event).
#[derive(Clone)]
pub struct Output {
    component: String,
    senders: Vec<mpsc::Sender<Event>>,
    metrics: Arc<ComponentMetrics>,
    ledger: Option<mpsc::UnboundedSender<crate::state::LedgerEvent>>,
    /// Windows whose start is in the ledger already, when starts are recorded (a worker of a
    /// sharded run: see [`crate::state::SourceState::started`]).
    started: Option<Arc<std::sync::Mutex<HashSet<String>>>>,
}

impl Output {
    pub(crate) fn new(
        component: String,
        senders: Vec<mpsc::Sender<Event>>,
        metrics: Arc<ComponentMetrics>,
    ) -> Self {
        Output {
            component,
            senders,
            metrics,
            ledger: None,
            started: None,
        }
    }

    pub(crate) fn with_ledger(
        mut self,
        ledger: mpsc::UnboundedSender<crate::state::LedgerEvent>,
    ) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Records in the ledger that a window's rows are about to go out, before the first of them
    /// does (see [`crate::state::SourceState::started`]).
    pub(crate) fn recording_starts(mut self) -> Self {
        self.started = Some(Arc::default());
        self
    }

    async fn record_start(&self, window: &WindowRef) -> Result<()> {
        let (Some(started), Some(ledger)) = (&self.started, &self.ledger) else {
            return Ok(());
        };
        let key = window.key();
        if started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&key)
        {
            return Ok(());
        }
        let (ack, done) = tokio::sync::oneshot::channel();
        ledger
            .send(crate::state::LedgerEvent::Started {
                window: window.clone(),
                ack,
            })
            .map_err(|_| Error::component(&self.component, "the ledger is closed"))?;
        done.await
            .map_err(|_| Error::component(&self.component, "the ledger stopped"))??;
        started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key);
        Ok(())
    }

    /// Saves a note about an open window in the source's ledger (a Qlara export id), durably,
    /// before returning: a run stopped now finds it in `BuildContext::state.checkpoints` under
    /// the window's key next time. The note goes when the window is committed or failed. Without
    /// a ledger (a stage tested on its own) it is a no-op.
    pub async fn save_checkpoint(
        &self,
        window: &WindowRef,
        value: serde_json::Value,
    ) -> Result<()> {
        let Some(ledger) = &self.ledger else {
            return Ok(());
        };
        let (ack, done) = tokio::sync::oneshot::channel();
        ledger
            .send(crate::state::LedgerEvent::Checkpoint {
                window: window.clone(),
                value,
                ack,
            })
            .map_err(|_| Error::component(&self.component, "the ledger is closed"))?;
        done.await
            .map_err(|_| Error::component(&self.component, "the ledger stopped"))?
    }

    /// An output connected to nothing but the given channel; for tests of a single stage.
    pub fn for_test(component: &str, sender: mpsc::Sender<Event>) -> Self {
        Output::new(component.into(), vec![sender], Arc::default())
    }

    async fn send_event(&self, event: Event) -> Result<()> {
        // Waiting on each consumer in turn is the backpressure: the slowest consumer sets the pace.
        for sender in &self.senders {
            sender
                .send(event.clone())
                .await
                .map_err(|_| Error::DownstreamClosed {
                    component: self.component.clone(),
                })?;
        }
        Ok(())
    }

    /// Sends one batch of a window.
    pub async fn send(&self, batch: Batch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.record_start(&batch.window).await?;
        self.metrics.add_records_out(batch.num_rows() as u64);
        self.send_event(Event::Batch(batch)).await
    }

    /// Every batch of `window` has been sent.
    pub async fn window_done(&self, window: WindowRef) -> Result<()> {
        self.metrics.add_window_done();
        self.send_event(Event::WindowDone(window)).await
    }

    /// `window` failed after retries; downstream drops what it holds of it.
    pub async fn window_failed(
        &self,
        window: WindowRef,
        error: &(dyn fmt::Display + Sync),
    ) -> Result<()> {
        tracing::error!(component = %self.component, window = %window, "window failed: {error}");
        self.metrics.add_window_failed(format!("{window}: {error}"));
        self.send_event(Event::WindowFailed(window)).await
    }

    pub(crate) async fn forward(&self, event: Event) -> Result<()> {
        match event {
            Event::Batch(b) => self.send(b).await,
            other => self.send_event(other).await,
        }
    }
}

/// How fetching one window went wrong, for a source's window loop; `E` is the source's own error.
#[derive(Debug)]
pub enum WindowError<E> {
    /// This window failed; the run goes on with the next one.
    Failed(E),
    /// This window failed, and every further one would fail the same way (credentials refused).
    Fatal(E),
    /// Downstream stopped, or dead letters cannot be written: stop the source.
    Stop(Error),
}

impl<E: Into<BoxError>> WindowError<E> {
    /// The error a source's `run` returns when its window loop ends this way (the source's own
    /// error kept as the cause).
    pub fn into_run_error(self, component: &str) -> Error {
        match self {
            WindowError::Stop(e) => e,
            WindowError::Failed(e) | WindowError::Fatal(e) => Error::component(component, e),
        }
    }
}

impl Output {
    /// Ends `window` the way `result` says: its marker on success, a failure marker otherwise;
    /// `Err` when the source must stop (a fatal window stops the remaining ones too).
    pub async fn finish_window<E: fmt::Display + Sync>(
        &self,
        window: WindowRef,
        result: std::result::Result<(), WindowError<E>>,
    ) -> std::result::Result<(), WindowError<E>> {
        let sent = match result {
            Ok(()) => self.window_done(window).await,
            Err(WindowError::Failed(e)) => self.window_failed(window, &e).await,
            Err(WindowError::Fatal(e)) => {
                self.window_failed(window, &e)
                    .await
                    .map_err(WindowError::Stop)?;
                return Err(WindowError::Stop(Error::component(
                    &self.component,
                    format!("{e}; the remaining windows are not tried"),
                )));
            }
            Err(stop @ WindowError::Stop(_)) => return Err(stop),
        };
        sent.map_err(WindowError::Stop)
    }
}

/// What a running source gets.
pub struct SourceContext {
    pub name: String,
    pub out: Output,
    pub metrics: Arc<ComponentMetrics>,
    pub dead_letters: DeadLetters,
    pub run: Arc<RunInfo>,
    /// How many windows (files) to fetch side by side ([`crate::runtime::fetch_windows_at_once`]).
    pub windows_at_once: usize,
}

/// A provider source: fetches its windows in order and sends their rows.
#[async_trait]
pub trait Source: Send {
    /// The record type of the batches it sends.
    fn output_kind(&self) -> DataKind;

    /// The windows it would fetch, without touching the network.
    fn plan(&self) -> Result<Vec<PlannedWindow>>;

    /// What the plan leaves out that a person should know about, one warning each (a Zoom report
    /// month too old to fetch that was never loaded). `chatlake plan` prints them; a source that
    /// has any reports them in its run too (`ComponentMetrics::add_skipped`). None by default.
    fn plan_notes(&self) -> Vec<String> {
        Vec::new()
    }

    /// Whether [`Source::plan`] lists every window this run fetches: false where windows are
    /// found at run time (conversations discovered through the API), so a progress bar shows no
    /// total it does not know. True by default.
    fn plan_is_complete(&self) -> bool {
        true
    }

    /// Fetches every window. For each one: send its batches, then `window_done` — or
    /// `window_failed` if it still fails after retries (the run goes on with the next window).
    /// Return an error only for a failure that makes every further window pointless.
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<()>;

    /// Keys of windows earlier runs committed that this run will load again, whole (a file of
    /// `files = [...]` that changed since it was loaded), known before the run starts. The
    /// runtime passes them to every transform ([`Transform::windows_loaded_again`]) so that what
    /// earlier runs remembered of those windows does not drop their own rows; the sinks replace
    /// the windows' files when they commit again. Default: none.
    fn windows_loaded_again(&self) -> Vec<String> {
        Vec::new()
    }

    /// Called while the graph is built when a transform below wants each provider record whole
    /// ([`Transform::wants_raw_records`], `normalize` with `raw = true`): from then on every
    /// batch carries a Utf8 column `raw` with the record as the provider gave it (a CSV row as a
    /// JSON object of its fields keyed by the file's header names, a JSON message as its own
    /// text). Only then, so a pipeline that does not ask pays nothing for it. `Err` says why
    /// this source cannot (the default).
    fn keep_raw_records(&mut self) -> std::result::Result<(), String> {
        Err("this source cannot hand over its records whole".into())
    }

    /// Keeps only this worker's share of the windows, for `run --shard K/N` (see
    /// [`crate::shard`]): what it keeps from [`Source::plan`] on, and at run time of what it
    /// finds then (conversations discovered through the API). Split with
    /// [`crate::shard::Share::takes`] by a unit that keeps together what
    /// [`Share::keep_copies_together`](crate::shard::Share) asks for, and divide a rate budget
    /// that is per account among the workers. The default keeps every window together: the
    /// runtime runs the source on one worker ([`crate::shard::Shard::takes_source`]) and not
    /// on the others.
    fn share(&mut self, _share: &crate::shard::Share) -> crate::shard::ShareTaken {
        crate::shard::ShareTaken::Whole
    }
}

/// Collects what a transform emits for one input event.
#[derive(Debug, Default)]
pub struct Emitter {
    batches: Vec<Batch>,
}

impl Emitter {
    /// Emits rows of `window`. Empty batches are dropped.
    pub fn emit(&mut self, window: WindowRef, data: RecordBatch) {
        if data.num_rows() > 0 {
            self.batches.push(Batch::new(window, data));
        }
    }

    pub fn push(&mut self, batch: Batch) {
        if batch.num_rows() > 0 {
            self.batches.push(batch);
        }
    }

    pub fn drain(&mut self) -> std::vec::Drain<'_, Batch> {
        self.batches.drain(..)
    }
}

/// What a running transform gets.
#[derive(Clone)]
pub struct TransformContext {
    pub name: String,
    pub metrics: Arc<ComponentMetrics>,
    pub dead_letters: DeadLetters,
    pub run: Arc<RunInfo>,
}

/// A synchronous batch-to-batches step. The runtime forwards window markers after calling the
/// matching hook, so a transform that keeps no per-window state implements only `transform`.
pub trait Transform: Send {
    /// The record type it emits for `input`, or why it cannot take `input`.
    fn output_kind(&self, input: &DataKind) -> Result<DataKind, String>;

    /// Transforms one batch.
    fn transform(&mut self, batch: Batch, out: &mut Emitter, cx: &TransformContext) -> Result<()>;

    /// Every batch of `window` has arrived.
    fn window_done(
        &mut self,
        _window: &WindowRef,
        _out: &mut Emitter,
        _cx: &TransformContext,
    ) -> Result<()> {
        Ok(())
    }

    /// `window` failed upstream: forget what is held of it.
    fn window_failed(&mut self, _window: &WindowRef, _cx: &TransformContext) -> Result<()> {
        Ok(())
    }

    /// Input is exhausted: emit whatever was held back.
    fn finish(&mut self, _out: &mut Emitter, _cx: &TransformContext) -> Result<()> {
        Ok(())
    }

    /// Called after `finish`, again and again while it returns `true`, each time after the
    /// runtime has sent on what was emitted: a transform that held (or spilled) many rows hands
    /// them out in parts, so they need not all be in memory at once.
    fn finish_next(&mut self, _out: &mut Emitter, _cx: &TransformContext) -> Result<bool> {
        Ok(false)
    }

    /// True if rows are held until `finish` (dedupe `keep = "latest"`); the runtime then holds
    /// window markers back too, so a window is never committed before its rows.
    fn holds_rows_until_finish(&self) -> bool {
        false
    }

    /// True if it may replace rows that earlier runs committed (dedupe `keep = "latest"` with
    /// `across_runs`): it writes a removal log (see [`crate::removal`]) and every sink
    /// downstream of it must be able to [`Sink::remove_rows`]; the pipeline check says so.
    fn replaces_rows_of_earlier_runs(&self) -> bool {
        false
    }

    /// A fresh instance to run beside this one on another core. Only for transforms whose state
    /// is per window (or none): the runtime gives each window to one instance, which sees all of
    /// that window's batches and its marker in order. `None` (the default) runs one instance.
    fn replicate(&self) -> Option<Box<dyn Transform>> {
        None
    }

    /// Called once before any input with the committed windows that sources load again in this
    /// run ([`Source::windows_loaded_again`]). What the transform keeps of them from earlier runs
    /// (dedupe `across_runs`) stands for rows this run replaces: it must not count it against
    /// their new load, but keep it, since it counts again if the new load does not commit.
    /// Default: it keeps nothing of earlier runs.
    fn windows_loaded_again(&mut self, _keys: &Arc<HashSet<String>>) {}

    /// True if it needs the provider's records whole (`normalize` with `raw = true`): the graph
    /// then asks every source above it to [`Source::keep_raw_records`]. Default: false.
    fn wants_raw_records(&self) -> bool {
        false
    }

    /// True if what it emits for one window depends on rows of other windows (dedupe drops a
    /// row another window holds too): with `run --shard`, sources above it split their windows
    /// only so that a message's copies and versions reach one worker (see
    /// [`crate::shard::Share::keep_copies_together`]). Default: false.
    fn compares_windows(&self) -> bool {
        false
    }
}

/// What a running sink gets.
pub struct SinkContext {
    pub name: String,
    pub metrics: Arc<ComponentMetrics>,
    pub dead_letters: DeadLetters,
    pub run: Arc<RunInfo>,
    /// Keys of the windows whose files belong in the lake when the run started: committed, or
    /// waiting to be loaded again. Files of any other window are leftovers of an interrupted
    /// run: [`Sink::start`] removes them.
    pub committed: Arc<HashSet<String>>,
    /// The windows of `committed` this run may load again: waiting to be reloaded (`state
    /// reset`, `--full-refresh`) or loaded again by their source (a changed input file). Their
    /// files stay until the window is committed again, which replaces them (also files the new
    /// commit does not overwrite).
    pub reloading: Arc<HashSet<String>>,
    /// The state directory this run's ledger is in: a sink marks its path as written by it and
    /// refuses a path another state directory writes (see [`Sink::start`]).
    pub owner: Arc<StateOwner>,
    /// For a worker of a sharded run (`--shard`), which share the lake with the other workers:
    /// the only windows whose uncommitted files [`Sink::start`] may remove (this worker's
    /// windows that an earlier run of it began and did not finish). Files of other uncommitted
    /// windows may be another worker's, being written right now. `None`: one worker, which
    /// removes every uncommitted window's files.
    pub leftovers_only_of: Option<Arc<HashSet<String>>>,
}

/// A pipeline's state directory, as the owner of the paths its sinks write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateOwner {
    /// [`crate::state::StateStore::identity`].
    pub id: String,
    /// `<state_dir>/<pipeline>`, for messages.
    pub dir: std::path::PathBuf,
}

/// Where a file sink writes, for the pipeline checks (no two sinks of one format on one path;
/// no sink over the state directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkLocation {
    /// The root directory, as the pipeline file gives it.
    pub path: std::path::PathBuf,
    /// The files' extension, which readers' globs select (`parquet`, `jsonl.gz`).
    pub extension: String,
}

/// What is left of a window's commit after [`Sink::begin_commit`]: the runtime runs it on a
/// task of its own while the sink writes on.
pub type CommitRest = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;

/// A destination. The runtime guarantees, per input path: batches of a window arrive before its
/// `commit`; a window is committed or aborted at most once; a committed window is published
/// once the ledger lists it; `finish` comes last. Batches of
/// different windows may interleave (fan-in).
#[async_trait]
pub trait Sink: Send {
    /// Why it cannot take `kind`, if it cannot. Default: takes anything.
    fn accepts(&self, _kind: &DataKind) -> Result<(), String> {
        Ok(())
    }

    /// Where it writes files, if it does (a file sink's root and extension).
    fn location(&self) -> Option<SinkLocation> {
        None
    }

    /// Where it writes, for `plan`: a directory or an object-store URL. Default: not said.
    fn destination(&self) -> Option<String> {
        None
    }

    /// Called once before any input: refuse a path another state directory writes, then remove
    /// what an interrupted run left (files of windows not in `cx.committed`, temporary files)
    /// and publish what it left staged of windows in `cx.committed` (see [`Sink::publish`]).
    /// Default: nothing to clean.
    async fn start(&mut self, _cx: &SinkContext) -> Result<()> {
        Ok(())
    }

    /// Writes one batch; it need not be visible until `commit`.
    async fn write(&mut self, batch: Batch, cx: &SinkContext) -> Result<()>;

    /// Makes every row of `window` durable (a local lake also renames its files into place).
    /// A sink whose store cannot hide a finished object from readers (object storage) stages
    /// the window here, under names no reader sees, and makes it visible in [`Sink::publish`].
    async fn commit(&mut self, _window: &WindowRef, _cx: &SinkContext) -> Result<()> {
        Ok(())
    }

    /// [`Sink::commit`] in two steps, for a sink whose commit waits on the network (uploads to
    /// an object store): does here what must be done before the sink's next write (finish the
    /// window's files) and returns the rest (sending them), which the runtime awaits while the
    /// sink goes on with other windows' rows. The window is committed — the ledger may list it
    /// — only once the rest has succeeded; if the rest fails, the run fails and the ledger never
    /// lists the window. [`Sink::publish`] comes after the rest, never during it. Default: the
    /// whole of `commit`, nothing left.
    async fn begin_commit(
        &mut self,
        window: &WindowRef,
        cx: &SinkContext,
    ) -> Result<Option<CommitRest>> {
        self.commit(window, cx).await.map(|()| None)
    }

    /// Makes visible what [`Sink::commit`] staged of `window`. Called once the ledger records
    /// `window` as committed (never for a window the ledger does not list), soon after, before
    /// [`Sink::finish`]. A failure fails the run, but the window stays committed: the next run's
    /// [`Sink::start`] must publish what is still staged of the windows in `cx.committed`. So it
    /// must be idempotent. Default: nothing to do (`commit` made the window visible).
    async fn publish(&mut self, _window: &WindowRef, _cx: &SinkContext) -> Result<()> {
        Ok(())
    }

    /// Drops what is held of `window` uncommitted.
    async fn abort(&mut self, _window: &WindowRef, _cx: &SinkContext) -> Result<()> {
        Ok(())
    }

    /// No more input: commit what is left (rows that arrived outside any window's commit).
    async fn finish(&mut self, _cx: &SinkContext) -> Result<()> {
        Ok(())
    }

    /// Deletes its committed files of the windows `keys` (windows a later window replaced, or
    /// that some sinks committed but the ledger never listed); returns how many files went.
    /// Called after the ledger no longer lists them, after `finish` (or after a failure).
    async fn drop_windows(&mut self, _keys: &HashSet<String>, _cx: &SinkContext) -> Result<u64> {
        Ok(0)
    }

    /// Why it cannot [`Sink::remove_rows`], if it cannot. Checked when a transform upstream
    /// replaces rows of earlier runs. Default: it cannot.
    fn removes_rows(&self) -> std::result::Result<(), String> {
        Err("it cannot take rows out of files earlier runs committed".into())
    }

    /// Takes out of its committed files of `removal.window` every row whose key columns equal a
    /// row of `removal.keys` (compared as [`crate::removal::key_cell`] text), each file replaced
    /// atomically; returns the rows removed. Idempotent: rows already gone are not looked for
    /// again. Called after the windows that replace them are in the ledger (see
    /// [`crate::removal`]), after `finish` or before the first `write`.
    async fn remove_rows(
        &mut self,
        removal: &crate::removal::Removal,
        _cx: &SinkContext,
    ) -> Result<u64> {
        let _ = removal;
        Err(Error::component(
            "sink",
            "this sink cannot take rows out of files earlier runs committed",
        ))
    }
}

/// Config of a source type; `TYPE` is its `type = "..."` in pipeline files.
pub trait SourceConfig: DeserializeOwned + schemars::JsonSchema + 'static {
    const TYPE: &'static str;
    /// One line for `chatlake components`.
    const SUMMARY: &'static str;
    /// A table of this type as a user writes it (TOML, the body of `[sources.<name>]`), shown by
    /// `chatlake components`. Inputs named `canonical` carry canonical messages, any other
    /// input raw records of a source. The CLI's tests parse it from TOML and from YAML and build
    /// it as `validate` does, so it cannot drift; the empty default fails them.
    const EXAMPLE: &'static str = "";
    fn build(self, cx: &BuildContext) -> Result<Box<dyn Source>, InvalidConfig>;
}

/// Config of a transform type.
pub trait TransformConfig: DeserializeOwned + schemars::JsonSchema + 'static {
    const TYPE: &'static str;
    const SUMMARY: &'static str;
    /// A table of this type as a user writes it (TOML, the body of `[transforms.<name>]`), shown by
    /// `chatlake components`. Inputs named `canonical` carry canonical messages, any other
    /// input raw records of a source. The CLI's tests parse it from TOML and from YAML and build
    /// it as `validate` does, so it cannot drift; the empty default fails them.
    const EXAMPLE: &'static str = "";
    fn build(self, cx: &BuildContext) -> Result<Box<dyn Transform>, InvalidConfig>;
}

/// Config of a sink type.
pub trait SinkConfig: DeserializeOwned + schemars::JsonSchema + 'static {
    const TYPE: &'static str;
    const SUMMARY: &'static str;
    /// A table of this type as a user writes it (TOML, the body of `[sinks.<name>]`), shown by
    /// `chatlake components`. Inputs named `canonical` carry canonical messages, any other
    /// input raw records of a source. The CLI's tests parse it from TOML and from YAML and build
    /// it as `validate` does, so it cannot drift; the empty default fails them.
    const EXAMPLE: &'static str = "";
    fn build(self, cx: &BuildContext) -> Result<Box<dyn Sink>, InvalidConfig>;
}
