//! Incremental state: the *window ledger* of each source, under
//! `<state_dir>/<pipeline>/sources/<source>.json`.
//!
//! The ledger is the commit point of a run. A window counts as loaded only once every sink that
//! receives it has committed its files *and* the ledger says so; files of a window the ledger
//! does not list are leftovers of a run that stopped in between, and sinks delete them when they
//! start. So the lake always holds exactly the windows of the ledger, and a source that plans
//! only the ranges the ledger does not cover re-fetches whatever a killed run did not finish.
//! Each file is written whole to a temporary name, fsynced and renamed.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, FixedOffset, Utc};
use serde::{Deserialize, Serialize};

use crate::durable;
use crate::event::Window;
use crate::{Error, Result};

/// How a window ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowStatus {
    /// Every sink committed it; its rows are in the lake.
    Committed,
    /// It failed after retries; nothing of it is in the lake. The next run fetches it again.
    Failed,
}

/// One window in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowRecord {
    pub stream: String,
    pub label: String,
    pub start: Option<DateTime<FixedOffset>>,
    pub end: Option<DateTime<FixedOffset>>,
    pub status: WindowStatus,
    pub run_id: String,
    pub at: DateTime<Utc>,
    /// The window's last checkpoint when it committed (a loaded file's identity, see
    /// `chatlake_source_kit::files_mode`); ledgers written before it was kept have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<serde_json::Value>,
}

/// The ledger of one source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceState {
    pub source: String,
    /// By window key ([`Window::key`]).
    #[serde(default)]
    pub windows: BTreeMap<String, WindowRecord>,
    /// Provider-specific notes a source keeps per window while it is open (a Qlara export id).
    #[serde(default)]
    pub checkpoints: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub last_run: Option<String>,
}

impl SourceState {
    pub fn is_committed(&self, window_key: &str) -> bool {
        self.windows
            .get(window_key)
            .is_some_and(|w| w.status == WindowStatus::Committed)
    }

    /// Committed `[start, end]` ranges of `stream` (both ends inclusive), merged and sorted.
    pub fn committed_ranges(&self, stream: &str) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        self.committed_ranges_where(stream, |_| true)
    }

    /// Like [`SourceState::committed_ranges`], for the windows `scope` accepts: a source that
    /// keeps a cursor per user or conversation selects that scope's windows (by their label).
    pub fn committed_ranges_where(
        &self,
        stream: &str,
        scope: impl Fn(&WindowRecord) -> bool,
    ) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        let mut ranges: Vec<(DateTime<Utc>, DateTime<Utc>)> = self
            .windows
            .values()
            .filter(|w| w.status == WindowStatus::Committed && w.stream == stream && scope(w))
            .filter_map(|w| Some((w.start?.with_timezone(&Utc), w.end?.with_timezone(&Utc))))
            .collect();
        ranges.sort();
        let mut merged: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::new();
        for (s, e) in ranges {
            match merged.last_mut() {
                Some(last) if s <= last.1 + Duration::seconds(1) => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        merged
    }

    /// The end of the latest committed window of `stream`.
    pub fn cursor(&self, stream: &str) -> Option<DateTime<Utc>> {
        self.committed_ranges(stream).last().map(|r| r.1)
    }
}

/// The parts of `[start, end]` (inclusive, to the second) that `covered` does not cover, in
/// order. `covered` must be sorted and merged ([`SourceState::committed_ranges`]).
pub fn uncovered(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    covered: &[(DateTime<Utc>, DateTime<Utc>)],
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut gaps = Vec::new();
    let mut from = start;
    for &(s, e) in covered {
        if from > end {
            break;
        }
        if e < from {
            continue;
        }
        if s > from {
            gaps.push((from, (s - Duration::seconds(1)).min(end)));
        }
        from = from.max(e + Duration::seconds(1));
    }
    if from <= end {
        gaps.push((from, end));
    }
    gaps
}

/// A ledger file that is not a ledger (edited by hand, or written by another version).
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct UnreadableLedger {
    pub path: PathBuf,
    #[source]
    pub source: serde_json::Error,
}

/// Reads and writes the ledgers of one pipeline.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

/// Holds a pipeline's run lock until dropped (see [`StateStore::lock`]).
#[derive(Debug)]
pub struct PipelineLock {
    _file: std::fs::File,
}

/// Why a pipeline's lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another run of this pipeline is in progress ({holder}; {path} is locked): nothing was done"
    )]
    Held { path: PathBuf, holder: String },
    #[error("cannot take the pipeline's lock: {0}")]
    Io(Error),
}

impl StateStore {
    /// The store under `<state_dir>/<pipeline>`; nothing is created until the first save.
    pub fn new(pipeline_dir: impl Into<PathBuf>) -> Self {
        StateStore {
            dir: pipeline_dir.into(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, source: &str) -> PathBuf {
        self.dir.join("sources").join(format!("{source}.json"))
    }

    /// Takes the pipeline's lock (`<state_dir>/<pipeline>/run.lock`) for as long as the returned
    /// guard lives, or says who holds it. Runs of one pipeline must not overlap: a second run
    /// would plan from a ledger the first is still writing, and its sinks would delete the first
    /// run's unfinished files at start. The lock is the operating system's (released if the
    /// process dies, even by SIGKILL), so a stale file never blocks the next run.
    pub fn lock(&self) -> std::result::Result<PipelineLock, LockError> {
        use std::io::{Read, Seek, Write};
        let path = self.dir.join("run.lock");
        let io = |e: std::io::Error| LockError::Io(Error::io(&path, e));
        // The state_dir and the pipeline's directory are private (see `durable`).
        if let Some(state_dir) = self.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            durable::create_private_dir_all(state_dir).map_err(io)?;
        }
        durable::create_private_dir_all(&self.dir).map_err(io)?;
        let mut file = durable::private_file_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(LockError::Held {
                    path,
                    holder: holder.trim().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        // Who holds it, for the message another run prints.
        let note = format!(
            "pid {} since {}",
            std::process::id(),
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(note.as_bytes()).map_err(io)?;
        Ok(PipelineLock { _file: file })
    }

    /// The ledger of `source` (empty if it has none yet).
    pub fn load(&self, source: &str) -> Result<SourceState> {
        let path = self.path(source);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| Error::component("state", UnreadableLedger { path, source })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SourceState {
                source: source.to_string(),
                ..SourceState::default()
            }),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Writes the ledger of `state.source` atomically (temporary file, fsync, rename, fsync dir).
    pub fn save(&self, state: &SourceState) -> Result<()> {
        let path = self.path(&state.source);
        let dir = path.parent().expect("ledger files live in a directory");
        durable::create_private_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let json = serde_json::to_vec_pretty(state).map_err(|e| Error::component("state", e))?;
        durable::write_atomic(&path, &json)?;
        Ok(durable::sync_dir(dir)?)
    }

    /// Every ledger of the pipeline, by source name.
    pub fn all(&self) -> Result<BTreeMap<String, SourceState>> {
        let dir = self.dir.join("sources");
        let mut out = BTreeMap::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(dir, e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(source) = name.strip_suffix(".json") {
                out.insert(source.to_string(), self.load(source)?);
            }
        }
        Ok(out)
    }

    /// Keys of every committed window of every source: what the lake may hold.
    pub fn committed_keys(&self) -> Result<HashSet<String>> {
        Ok(self.committed_runs()?.into_keys().collect())
    }

    /// Every committed window of every source, with the run that committed it.
    pub fn committed_runs(&self) -> Result<std::collections::HashMap<String, String>> {
        Ok(self
            .all()?
            .into_values()
            .flat_map(|s| {
                s.windows
                    .into_iter()
                    .filter(|(_, w)| w.status == WindowStatus::Committed)
            })
            .map(|(k, w)| (k, w.run_id))
            .collect())
    }

    /// Forgets `source` (or every source): its windows will be fetched again, and sinks delete
    /// their files on the next run's start. Returns the sources reset.
    pub fn reset(&self, source: Option<&str>) -> Result<Vec<String>> {
        let names: Vec<String> = match source {
            Some(s) => vec![s.to_string()],
            None => self.all()?.into_keys().collect(),
        };
        let mut reset = Vec::new();
        for name in names {
            let path = self.path(&name);
            match std::fs::remove_file(&path) {
                Ok(()) => reset.push(name),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        Ok(reset)
    }

    /// Records how `window` ended and saves the ledger. A committed window keeps its last
    /// checkpoint. A window that an earlier run committed and this run loaded again (a changed
    /// file) stays committed as it was if the new load fails: its earlier files are still in the
    /// lake (a sink drops only the new load's temporary files), and the source loads it again
    /// next time.
    pub fn record(&self, window: &Window, status: WindowStatus, run_id: &str) -> Result<()> {
        let mut state = self.load(&window.source)?;
        let key = window.key();
        let checkpoint = state.checkpoints.remove(&key);
        state.last_run = Some(run_id.to_string());
        if status == WindowStatus::Failed && state.is_committed(&key) {
            return self.save(&state);
        }
        state.windows.insert(
            key,
            WindowRecord {
                stream: window.stream.clone(),
                label: window.label.clone(),
                start: window.start,
                end: window.end,
                status,
                run_id: run_id.to_string(),
                at: Utc::now(),
                checkpoint: checkpoint.filter(|_| status == WindowStatus::Committed),
            },
        );
        self.save(&state)
    }
}

/// What the run's single ledger writer is asked to do (one writer, so no update is lost).
#[derive(Debug)]
pub enum LedgerEvent {
    /// A sink committed (or dropped) a window.
    Sink {
        window: crate::WindowRef,
        committed: bool,
    },
    /// A source saves a note about an open window; `ack` answers once it is durable.
    Checkpoint {
        window: crate::WindowRef,
        value: serde_json::Value,
        ack: tokio::sync::oneshot::Sender<Result<()>>,
    },
}

impl StateStore {
    /// Saves a note about the open `window` (see [`crate::stage::Output::save_checkpoint`]).
    pub fn checkpoint(&self, window: &Window, value: serde_json::Value) -> Result<()> {
        let mut state = self.load(&window.source)?;
        state.checkpoints.insert(window.key(), value);
        self.save(&state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn gaps_are_what_the_ledger_does_not_cover() {
        let covered = vec![
            (t("2025-01-01T00:00:00Z"), t("2025-01-31T23:59:59Z")),
            (t("2025-03-01T00:00:00Z"), t("2025-03-10T23:59:59Z")),
        ];
        assert_eq!(
            uncovered(
                t("2025-01-01T00:00:00Z"),
                t("2025-03-31T23:59:59Z"),
                &covered
            ),
            vec![
                (t("2025-02-01T00:00:00Z"), t("2025-02-28T23:59:59Z")),
                (t("2025-03-11T00:00:00Z"), t("2025-03-31T23:59:59Z")),
            ]
        );
        assert!(
            uncovered(
                t("2025-01-05T00:00:00Z"),
                t("2025-01-06T00:00:00Z"),
                &covered
            )
            .is_empty()
        );
        assert_eq!(
            uncovered(
                t("2024-12-31T00:00:00Z"),
                t("2025-01-02T00:00:00Z"),
                &covered
            ),
            vec![(t("2024-12-31T00:00:00Z"), t("2024-12-31T23:59:59Z"))]
        );
        assert_eq!(
            uncovered(
                t("2025-04-01T00:00:00Z"),
                t("2025-04-02T00:00:00Z"),
                &covered
            )
            .len(),
            1
        );
    }

    #[test]
    fn the_ledger_round_trips_and_merges_adjacent_windows() {
        let dir = crate::config::tests::tempdir();
        let store = StateStore::new(&dir);
        let offset = FixedOffset::east_opt(9 * 3600).unwrap();
        let w = |i: u32, s: &str, e: &str| Window {
            source: "lw".into(),
            stream: "message_contents".into(),
            index: i,
            start: Some(DateTime::parse_from_rfc3339(s).unwrap()),
            end: Some(DateTime::parse_from_rfc3339(e).unwrap()),
            utc_offset: offset,
            label: format!("{s}..{e}"),
        };
        let a = w(0, "2025-01-01T00:00:00+09:00", "2025-01-31T23:59:59+09:00");
        let b = w(1, "2025-02-01T00:00:00+09:00", "2025-02-10T23:59:59+09:00");
        let c = w(2, "2025-02-11T00:00:00+09:00", "2025-02-20T23:59:59+09:00");
        store.record(&a, WindowStatus::Committed, "r1").unwrap();
        store.record(&b, WindowStatus::Committed, "r1").unwrap();
        store.record(&c, WindowStatus::Failed, "r1").unwrap();
        let s = store.load("lw").unwrap();
        assert!(s.is_committed(&a.key()) && !s.is_committed(&c.key()));
        assert_eq!(
            s.committed_ranges("message_contents").len(),
            1,
            "adjacent windows merge"
        );
        assert_eq!(
            s.cursor("message_contents"),
            Some(t("2025-02-10T14:59:59Z"))
        );
        assert_eq!(store.committed_keys().unwrap().len(), 2);
        // A committed window keeps its last checkpoint; loaded again and failed, it stays as
        // it was committed.
        store.checkpoint(&a, serde_json::json!({"len": 1})).unwrap();
        store.record(&a, WindowStatus::Committed, "r2").unwrap();
        store.checkpoint(&a, serde_json::json!({"len": 2})).unwrap();
        store.record(&a, WindowStatus::Failed, "r3").unwrap();
        let s = store.load("lw").unwrap();
        let record = &s.windows[&a.key()];
        assert_eq!(record.status, WindowStatus::Committed);
        assert_eq!(
            (record.run_id.as_str(), &record.checkpoint),
            ("r2", &Some(serde_json::json!({"len": 1})))
        );
        assert!(s.checkpoints.is_empty());
        assert_eq!(store.reset(Some("lw")).unwrap(), vec!["lw".to_string()]);
        assert!(store.load("lw").unwrap().windows.is_empty());
    }
}
