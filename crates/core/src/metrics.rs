//! Per-component counters the runtime and components update, and the run summary built from them.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Live counters of one component; cheap to update from any task.
#[derive(Debug, Default)]
pub struct ComponentMetrics {
    records_in: AtomicU64,
    records_out: AtomicU64,
    files: AtomicU64,
    bytes: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    rate_limited: AtomicU64,
    dead_letters: AtomicU64,
    windows_done: AtomicU64,
    windows_failed: AtomicU64,
    records_removed: AtomicU64,
    failures: Mutex<Vec<String>>,
    skipped: Mutex<Vec<String>>,
}

impl ComponentMetrics {
    pub fn add_records_in(&self, n: u64) {
        self.records_in.fetch_add(n, Relaxed);
    }
    pub fn add_records_out(&self, n: u64) {
        self.records_out.fetch_add(n, Relaxed);
    }
    pub fn add_file(&self, bytes: u64) {
        self.files.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
    }
    /// Bytes read or written that are not whole files (a download).
    pub fn add_bytes(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Relaxed);
    }
    pub fn add_request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }
    pub fn add_retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }
    /// The provider answered `429 Too Many Requests`.
    pub fn add_rate_limited(&self) {
        self.rate_limited.fetch_add(1, Relaxed);
    }
    pub fn add_dead_letter(&self) {
        self.dead_letters.fetch_add(1, Relaxed);
    }
    pub fn add_window_done(&self) {
        self.windows_done.fetch_add(1, Relaxed);
    }
    /// Rows a sink took out of files earlier runs committed (their newer versions replace them).
    pub fn add_records_removed(&self, n: u64) {
        self.records_removed.fetch_add(n, Relaxed);
    }
    pub fn add_window_failed(&self, why: String) {
        self.windows_failed.fetch_add(1, Relaxed);
        if let Ok(mut f) = self.failures.lock() {
            f.push(why);
        }
    }

    /// A resource the provider does not serve (a deleted user, a conversation that is gone) was
    /// skipped: not a failure, but the summary says what and why.
    pub fn add_skipped(&self, what: String) {
        if let Ok(mut s) = self.skipped.lock() {
            s.push(what);
        }
    }

    pub fn records_out(&self) -> u64 {
        self.records_out.load(Relaxed)
    }
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Relaxed)
    }
    pub fn windows_done(&self) -> u64 {
        self.windows_done.load(Relaxed)
    }
    pub fn windows_failed(&self) -> u64 {
        self.windows_failed.load(Relaxed)
    }
    pub fn dead_letters(&self) -> u64 {
        self.dead_letters.load(Relaxed)
    }

    /// A snapshot for the summary.
    pub fn summarize(
        &self,
        name: &str,
        role: &str,
        type_name: &str,
        seconds: f64,
    ) -> ComponentSummary {
        ComponentSummary {
            name: name.to_string(),
            role: role.to_string(),
            type_name: type_name.to_string(),
            records_in: self.records_in.load(Relaxed),
            records_out: self.records_out.load(Relaxed),
            files: self.files.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            requests: self.requests.load(Relaxed),
            retries: self.retries.load(Relaxed),
            rate_limited: self.rate_limited.load(Relaxed),
            dead_letters: self.dead_letters.load(Relaxed),
            windows_done: self.windows_done.load(Relaxed),
            windows_failed: self.windows_failed.load(Relaxed),
            records_removed: self.records_removed.load(Relaxed),
            failures: self.failures.lock().map(|f| f.clone()).unwrap_or_default(),
            skipped: self.skipped.lock().map(|f| f.clone()).unwrap_or_default(),
            seconds,
        }
    }
}

/// One row of the summary table.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentSummary {
    pub name: String,
    /// `source`, `transform` or `sink`.
    pub role: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub records_in: u64,
    pub records_out: u64,
    pub files: u64,
    pub bytes: u64,
    pub requests: u64,
    pub retries: u64,
    /// Sources: answers `429 Too Many Requests` (each is also counted as a retry when retried).
    pub rate_limited: u64,
    pub dead_letters: u64,
    pub windows_done: u64,
    pub windows_failed: u64,
    /// Sinks: rows taken out of files earlier runs committed, replaced by newer versions
    /// (dedupe `keep = "latest"` with `across_runs`).
    pub records_removed: u64,
    pub failures: Vec<String>,
    /// Resources skipped because the provider does not serve them (see `add_skipped`).
    pub skipped: Vec<String>,
    pub seconds: f64,
}

/// How a run ended; maps to the exit code (spec section 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Exit 0.
    Succeeded,
    /// Exit 1: a window failed after retries, or a stage failed.
    Failed,
    /// Exit 3: finished, but records were dead-lettered.
    DeadLettered,
    /// Exit 130: stopped by SIGINT or SIGTERM; windows in flight were abandoned as a crash
    /// leaves them (the next run fetches them again), committed ones stay.
    Interrupted,
}

impl RunStatus {
    pub fn exit_code(self) -> i32 {
        match self {
            RunStatus::Succeeded => 0,
            RunStatus::Failed => 1,
            RunStatus::DeadLettered => 3,
            RunStatus::Interrupted => 130,
        }
    }
}

/// What `run` prints at the end and saves as JSON in the state directory.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub pipeline: String,
    pub run_id: String,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub seconds: f64,
    pub components: Vec<ComponentSummary>,
    /// The first error that stopped a stage, if any.
    pub error: Option<String>,
    pub dead_letters: u64,
    pub dead_letter_file: Option<PathBuf>,
    /// Windows reset for reloading (`state reset`, `--full-refresh`) that no run has loaded
    /// again yet: their earlier files stay in the lake.
    pub windows_to_reload: u64,
}
