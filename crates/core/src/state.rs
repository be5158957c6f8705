//! Incremental state: the *window ledger* of each source, under
//! `<state_dir>/<pipeline>/sources/<source>.json`.
//!
//! The ledger is the commit point of a run. A window counts as loaded only once every sink that
//! receives it has committed its files *and* the ledger says so; files of a window the ledger
//! does not list are leftovers of a run that stopped in between, and sinks delete them when they
//! start. So the lake always holds exactly the windows of the ledger, and a source that plans
//! only the ranges the ledger does not cover re-fetches whatever a killed run did not finish.
//! Each file is written whole to a temporary name, fsynced and renamed.
//!
//! Forgetting windows (`state reset`, `run --full-refresh`) never deletes their files: it marks
//! them [`WindowStatus::Reload`]. Sources plan them again; sinks keep their files (they are still
//! the lake's) until the window that replaces them commits: the same window written again
//! replaces its own files, and once committed windows of one scope cover a reloaded window's
//! range ([`StateStore::supersede_reloads`]) its files go. A window that is never loaded again
//! keeps its files.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
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
    /// Committed by an earlier run, and the operator asked to load it again (`state reset`,
    /// `--full-refresh`): sources fetch it again, but its files stay in the lake until windows
    /// that replace them commit.
    Reload,
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
    /// The name this source's window keys carry when it is not `source`: the source was renamed
    /// ([`StateStore::rename_source`]) and goes on under the keys of the windows it loaded
    /// before (see [`Window::key_name`]). Absent for a source never renamed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_from: Option<String>,
    /// Windows a worker of a sharded run (`--shard`) began sending rows of, until they are
    /// committed or failed: files of these, and of no other uncommitted window, are its own
    /// leftovers when it starts again. Workers share the lake, so a worker must not delete what
    /// another is writing right now (see [`crate::shard`]). Empty for runs without `--shard`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub started: std::collections::BTreeSet<String>,
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

    /// Keys of the windows waiting to be loaded again ([`WindowStatus::Reload`]).
    pub fn reloading(&self) -> impl Iterator<Item = (&String, &WindowRecord)> {
        self.windows
            .iter()
            .filter(|(_, w)| w.status == WindowStatus::Reload)
    }

    /// The name this source's window keys begin with.
    pub fn key_name(&self) -> &str {
        self.keys_from.as_deref().unwrap_or(&self.source)
    }

    /// Committed windows, and the first start and last end among them.
    pub fn committed_summary(&self) -> (usize, Option<TimeRange>) {
        let committed: Vec<&WindowRecord> = self
            .windows
            .values()
            .filter(|w| w.status == WindowStatus::Committed)
            .collect();
        let start = committed.iter().filter_map(|w| w.start).min();
        let end = committed.iter().filter_map(|w| w.end).max();
        (committed.len(), start.zip(end))
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

/// The first start and last end of some windows.
pub type TimeRange = (DateTime<FixedOffset>, DateTime<FixedOffset>);

/// Where [`StateStore::forget_source`] keeps the ledgers of retired sources, below the
/// pipeline's state directory.
pub const RETIRED_DIR: &str = "retired";

/// Reads the ledger at `path` (of `source`; empty if there is none).
fn read_ledger(path: &Path, source: &str) -> Result<SourceState> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            Error::component(
                "state",
                UnreadableLedger {
                    path: path.to_path_buf(),
                    source: e,
                },
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SourceState {
            source: source.to_string(),
            ..SourceState::default()
        }),
        Err(e) => Err(Error::io(path, e)),
    }
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
    /// For a worker of a sharded run: the directory holding every worker's `shard-K-of-N`
    /// directory (or copies of their ledgers), whose ledgers sources plan from together.
    peers: Option<PathBuf>,
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
        let dir: PathBuf = pipeline_dir.into();
        // A worker's directory sits beside its peers' (see `crate::shard`).
        let peers = dir
            .file_name()
            .and_then(|n| crate::shard::Shard::from_dir_name(&n.to_string_lossy()))
            .and_then(|_| dir.parent().map(Path::to_path_buf));
        StateStore { dir, peers }
    }

    /// Reads the peers' ledgers from `root` (holding their `shard-K-of-N/sources/`) instead of
    /// beside this store: copies fetched from an object-store state directory.
    pub fn with_peers_in(mut self, root: impl Into<PathBuf>) -> Self {
        if self.shard().is_some() {
            self.peers = Some(root.into());
        }
        self
    }

    /// The worker of a sharded run this store belongs to, if it does.
    pub fn shard(&self) -> Option<crate::shard::Shard> {
        crate::shard::Shard::from_dir_name(&self.dir.file_name()?.to_string_lossy())
    }

    /// The ledger of `source` as sources plan from it: for a worker of a sharded run, the
    /// windows every worker of the same N committed (its own record wins), so that all of them
    /// cut the same windows and each takes its share; otherwise [`StateStore::load`].
    pub fn load_with_peers(&self, source: &str) -> Result<SourceState> {
        let mut state = self.load(source)?;
        let (Some(shard), Some(peers)) = (self.shard(), &self.peers) else {
            return Ok(state);
        };
        for other in 0..shard.count() {
            let Ok(peer) = crate::shard::Shard::new(other, shard.count()) else {
                continue;
            };
            if peer == shard {
                continue;
            }
            let theirs = StateStore {
                dir: peers.join(peer.dir_name()),
                peers: None,
            }
            .load(source)?;
            for (key, record) in theirs.windows {
                state.windows.entry(key).or_insert(record);
            }
            for (key, note) in theirs.checkpoints {
                state.checkpoints.entry(key).or_insert(note);
            }
        }
        Ok(state)
    }

    /// Notes that rows of `window` are about to be sent (see [`SourceState::started`]).
    pub fn start_window(&self, window: &Window) -> Result<()> {
        let mut state = self.load(&window.source)?;
        if state.started.insert(window.key()) {
            self.save(&state)?;
        }
        Ok(())
    }

    /// Windows this store's runs began and did not finish (see [`SourceState::started`]),
    /// without those the lake holds (committed or waiting to be reloaded).
    pub fn started_unfinished(&self) -> Result<HashSet<String>> {
        let lake = self.lake_keys()?.all();
        Ok(self
            .all()?
            .into_values()
            .flat_map(|s| s.started.into_iter())
            .filter(|k| !lake.contains(k))
            .collect())
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

    /// This state directory's identity: a random id made on first use and kept in
    /// `<state_dir>/<pipeline>/identity`. Sinks mark the paths they write with it, so two state
    /// directories (a copied pipeline file, another `state_dir`) never clean up each other's
    /// files. A copy of the directory keeps the id; a deleted and recreated one gets a new id.
    pub fn identity(&self) -> Result<String> {
        // The workers of a sharded run are one state directory to the lake: they share the id
        // of the pipeline's directory.
        let dir = match (self.shard(), self.dir.parent()) {
            (Some(_), Some(parent)) => parent,
            _ => self.dir.as_path(),
        };
        let path = dir.join("identity");
        let read = |path: &Path| match std::fs::read_to_string(path) {
            Ok(id) if !id.trim().is_empty() => Ok(Some(id.trim().to_string())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        };
        if let Some(id) = read(&path)? {
            return Ok(id);
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        // RandomState is seeded from the operating system's randomness: with the time and the
        // process id, two directories never draw the same id.
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(Utc::now().timestamp_nanos_opt().unwrap_or_default() as u128);
            h.write_u32(std::process::id());
            h.finish()
        };
        let id = format!(
            "{:032x}",
            xxhash_rust::xxh3::xxh3_128(
                &[seed.to_le_bytes(), seed.rotate_left(17).to_le_bytes()].concat()
            )
        );
        if self.shard().is_none() {
            durable::write_atomic(&path, id.as_bytes())?;
            durable::sync_dir(dir)?;
            return Ok(id);
        }
        // Written whole under a name of this process, then linked into place: a link fails if
        // the file exists, so of workers starting together exactly one id wins and all read it.
        let tmp = dir.join(format!("identity.{}.tmp", std::process::id()));
        durable::write_atomic(&tmp, id.as_bytes())?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
        durable::sync_dir(dir)?;
        read(&path)?.ok_or_else(|| {
            Error::io(
                &path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, "empty identity file"),
            )
        })
    }

    /// The ledger of `source` (empty if it has none yet).
    pub fn load(&self, source: &str) -> Result<SourceState> {
        read_ledger(&self.path(source), source)
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
        self.ledgers_in(&self.dir.join("sources"))
    }

    /// The ledgers of sources retired with [`StateStore::forget_source`], by source name: they
    /// are planned by no source, and their windows' files stay in the lake.
    pub fn retired(&self) -> Result<BTreeMap<String, SourceState>> {
        self.ledgers_in(&self.dir.join(RETIRED_DIR))
    }

    fn ledgers_in(&self, dir: &Path) -> Result<BTreeMap<String, SourceState>> {
        let mut out = BTreeMap::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(dir, e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(source) = name.strip_suffix(".json") {
                out.insert(source.to_string(), read_ledger(&entry.path(), source)?);
            }
        }
        Ok(out)
    }

    /// Keys of every committed window of every source: what the lake may hold.
    pub fn committed_keys(&self) -> Result<HashSet<String>> {
        Ok(self.committed_runs()?.into_keys().collect())
    }

    /// Every committed window of every source, with the run that committed it. Retired sources'
    /// windows count: their files are still the lake's, and a later replacement of one of their
    /// rows (`dedupe keep = "latest"`) must still find it.
    pub fn committed_runs(&self) -> Result<std::collections::HashMap<String, String>> {
        Ok(self
            .all()?
            .into_values()
            .chain(self.retired()?.into_values())
            .flat_map(|s| {
                s.windows
                    .into_iter()
                    .filter(|(_, w)| w.status == WindowStatus::Committed)
            })
            .map(|(k, w)| (k, w.run_id))
            .collect())
    }

    /// What [`StateStore::reset`] of `source` (or every source) would forget, changing nothing.
    pub fn reset_preview(&self, source: Option<&str>) -> Result<Vec<ResetSource>> {
        let ledgers = match source {
            Some(s) => vec![self.load(s)?],
            None => self.all()?.into_values().collect(),
        };
        Ok(ledgers.iter().map(ResetSource::of).collect())
    }

    /// Forgets `source` (or every source) without touching the lake: committed windows become
    /// [`WindowStatus::Reload`] (sources fetch them again; their files stay until what replaces
    /// them commits), failed windows and open checkpoints are dropped. Returns what was reset,
    /// sources with nothing to forget left out.
    pub fn reset(&self, source: Option<&str>) -> Result<Vec<ResetSource>> {
        let names: Vec<String> = match source {
            Some(s) => vec![s.to_string()],
            None => self.all()?.into_keys().collect(),
        };
        let mut reset = Vec::new();
        for name in names {
            let mut state = self.load(&name)?;
            let what = ResetSource::of(&state);
            if what.is_empty() {
                continue;
            }
            state
                .windows
                .retain(|_, w| w.status != WindowStatus::Failed);
            for w in state.windows.values_mut() {
                w.status = WindowStatus::Reload;
            }
            state.checkpoints.clear();
            self.save(&state)?;
            reset.push(what);
        }
        Ok(reset)
    }

    /// Drops from the ledgers every [`WindowStatus::Reload`] window that committed windows now
    /// replace: the same source, stream and scope (see [`window_scope`]) and a committed range
    /// covering its whole range. Returns their keys: files of those windows may go. A window
    /// without a range (an input file) is replaced only by itself (its key committed again,
    /// which [`StateStore::record`] does). Unsure means kept: a reloaded window whose label does
    /// not follow the `<scope> <range>` shape is covered by nothing but itself.
    pub fn supersede_reloads(&self) -> Result<Vec<String>> {
        let mut superseded = Vec::new();
        for (_, mut state) in self.all()? {
            let covered: Vec<String> = state
                .reloading()
                .filter(|(_, w)| {
                    let (Some(start), Some(end)) = (w.start, w.end) else {
                        return false;
                    };
                    let Some(scope) = window_scope(&w.label) else {
                        return false;
                    };
                    let ranges = state.committed_ranges_where(&w.stream, |c| {
                        window_scope(&c.label) == Some(scope)
                    });
                    uncovered(start.to_utc(), end.to_utc(), &ranges).is_empty()
                })
                .map(|(k, _)| k.clone())
                .collect();
            if covered.is_empty() {
                continue;
            }
            for key in &covered {
                state.windows.remove(key);
            }
            self.save(&state)?;
            superseded.extend(covered);
        }
        Ok(superseded)
    }

    /// Keys of the windows whose files the lake holds: committed, and waiting to be reloaded.
    pub fn lake_keys(&self) -> Result<LakeWindows> {
        let mut lake = LakeWindows::default();
        // A retired source's files stay in the lake: sinks must not take them for leftovers.
        for state in self
            .all()?
            .into_values()
            .chain(self.retired()?.into_values())
        {
            for (key, w) in state.windows {
                match w.status {
                    WindowStatus::Committed => {
                        lake.committed.insert(key);
                    }
                    WindowStatus::Reload => {
                        lake.reloading.insert(key);
                    }
                    WindowStatus::Failed => {}
                }
            }
        }
        Ok(lake)
    }

    /// Records how `window` ended and saves the ledger. A committed window keeps its last
    /// checkpoint. A window whose earlier files are still the lake's stays as it was if this
    /// run's load of it fails: one an earlier run committed and this run loaded again (a changed
    /// file) stays committed, and one waiting to be reloaded ([`WindowStatus::Reload`]) keeps
    /// waiting. A sink drops only the new load's temporary files, and the source loads it again
    /// next time.
    pub fn record(&self, window: &Window, status: WindowStatus, run_id: &str) -> Result<()> {
        let mut state = self.load(&window.source)?;
        let key = window.key();
        let checkpoint = state.checkpoints.remove(&key);
        state.started.remove(&key);
        state.last_run = Some(run_id.to_string());
        let keeps_earlier_files = state
            .windows
            .get(&key)
            .is_some_and(|w| matches!(w.status, WindowStatus::Committed | WindowStatus::Reload));
        if status == WindowStatus::Failed && keeps_earlier_files {
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

/// Why a source's state could not be renamed or forgotten.
#[derive(Debug, thiserror::Error)]
pub enum SourceStateError {
    #[error("there is no state of a source `{0}` (nothing was changed)")]
    NoState(String),
    #[error(
        "source `{new}` already has state of its own ({windows} window(s)): a run loaded it under \
         its new name, so renaming `{old}` onto it could list rows twice. Nothing was changed; \
         see `chatlake state show`"
    )]
    TargetHasState {
        old: String,
        new: String,
        windows: usize,
    },
    #[error(transparent)]
    State(#[from] Error),
}

/// What [`StateStore::rename_source`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenamedSource {
    /// Windows (of any status) the new name took over.
    pub windows: usize,
    /// The name the windows' keys (and so the lake's file names) keep.
    pub key_name: String,
}

/// A ledger of a source the pipeline file does not have (renamed or removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanLedger {
    pub source: String,
    /// Committed windows (their files are in the lake).
    pub committed: usize,
    /// The first start and last end of the committed windows.
    pub range: Option<TimeRange>,
}

impl fmt::Display for OrphanLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the state holds source `{}`, which the pipeline file no longer has: {} window(s) \
             committed",
            self.source, self.committed
        )?;
        if let Some((start, end)) = self.range {
            write!(f, " ({} .. {})", start.to_rfc3339(), end.to_rfc3339())?;
        }
        write!(
            f,
            "; a source renamed from it loads that range again (rows twice): run `chatlake state \
             rename-source PIPELINE {0} NEW_NAME` if it was renamed, or `chatlake state \
             forget-source PIPELINE {0}` if it was removed (its files stay in the lake)",
            self.source
        )
    }
}

/// Two sources whose windows would get the same keys: `source` (in the pipeline file) is the
/// name `ledger`'s windows keep after a rename.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyClash {
    pub source: String,
    pub ledger: String,
}

impl fmt::Display for KeyClash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "source `{0}` would write its windows under the same keys as source `{1}`, which was \
             renamed from `{0}` and keeps its keys: name the new source differently",
            self.source, self.ledger
        )
    }
}

/// How the pipeline file's sources match the ledgers in the state directory.
#[derive(Debug, Clone, Default)]
pub struct LedgerCheck {
    /// Ledgers of sources the file does not have.
    pub orphans: Vec<OrphanLedger>,
    /// Sources that cannot run beside the ledgers (see [`KeyClash`]).
    pub clashes: Vec<KeyClash>,
}

impl StateStore {
    fn retired_path(&self, source: &str) -> PathBuf {
        self.dir.join(RETIRED_DIR).join(format!("{source}.json"))
    }

    /// Compares the ledgers with the pipeline file's `sources`: ledgers no source has (a
    /// renamed or removed source, whose range a renamed one would load again), and sources
    /// whose windows would share keys with a renamed source's.
    pub fn check_sources<'a>(
        &self,
        sources: impl IntoIterator<Item = &'a str>,
    ) -> Result<LedgerCheck> {
        let sources: Vec<&str> = sources.into_iter().collect();
        let ledgers = self.all()?;
        let mut check = LedgerCheck::default();
        for (name, ledger) in &ledgers {
            if !sources.contains(&name.as_str()) {
                let (committed, range) = ledger.committed_summary();
                check.orphans.push(OrphanLedger {
                    source: name.clone(),
                    committed,
                    range,
                });
            }
        }
        for source in &sources {
            let own = ledgers.get(*source).map_or(*source, SourceState::key_name);
            for (name, ledger) in &ledgers {
                if name != source && ledger.key_name() == own {
                    check.clashes.push(KeyClash {
                        source: source.to_string(),
                        ledger: name.clone(),
                    });
                }
            }
        }
        Ok(check)
    }

    /// Gives source `old`'s ledger to `new` (a source renamed in the pipeline file): `new`
    /// goes on from where `old` stopped. The windows keep their keys (`keys_from`), which the
    /// lake's file names, dedupe history and removal logs carry, so nothing is renamed in the
    /// lake and a window `new` fetches again replaces `old`'s files of it.
    ///
    /// Safe against a kill: the new ledger is made durable before the old one is deleted; a
    /// kill in between leaves both with the same windows (the lake keeps the same files), and
    /// running the rename again finishes it.
    pub fn rename_source(
        &self,
        old: &str,
        new: &str,
    ) -> std::result::Result<RenamedSource, SourceStateError> {
        let old_path = self.path(old);
        if !old_path.exists() {
            return Err(SourceStateError::NoState(old.to_string()));
        }
        let from = self.load(old)?;
        let key_name = from.key_name().to_string();
        let existing = self.load(new)?;
        let finishing = existing.keys_from.as_deref().unwrap_or(new) == key_name
            && from
                .windows
                .keys()
                .all(|k| existing.windows.contains_key(k));
        let has_own_state = !(existing.windows.is_empty() && existing.checkpoints.is_empty());
        if !finishing && has_own_state {
            return Err(SourceStateError::TargetHasState {
                old: old.to_string(),
                new: new.to_string(),
                windows: existing.windows.len(),
            });
        }
        if !finishing {
            let mut renamed = from.clone();
            renamed.source = new.to_string();
            // Renamed back to the name its keys carry: no alias is needed.
            renamed.keys_from = (key_name != new).then(|| key_name.clone());
            self.save(&renamed)?;
        }
        self.remove_ledger(&old_path)?;
        Ok(RenamedSource {
            windows: from.windows.len(),
            key_name,
        })
    }

    /// Retires source `name` (removed from the pipeline file): its ledger moves to
    /// `<pipeline>/retired/`, so no source plans from it and nothing warns of it, while its
    /// committed windows' files stay in the lake (sinks keep them as the lake's; nothing is
    /// deleted). Failed windows and open checkpoints are dropped: nothing of them is in the
    /// lake. Returns the ledger as it was.
    ///
    /// Safe against a kill: the retired copy is made durable before the ledger is deleted; a
    /// kill in between leaves both listing the same windows, and forgetting again finishes.
    pub fn forget_source(&self, name: &str) -> std::result::Result<SourceState, SourceStateError> {
        let path = self.path(name);
        if !path.exists() {
            return Err(SourceStateError::NoState(name.to_string()));
        }
        let state = self.load(name)?;
        let retired_path = self.retired_path(name);
        let mut retired = read_ledger(&retired_path, name)?;
        // A source forgotten before, added again and forgotten again: both loads' files stay.
        retired.windows.extend(
            state
                .windows
                .iter()
                .filter(|(_, w)| w.status != WindowStatus::Failed)
                .map(|(k, w)| (k.clone(), w.clone())),
        );
        retired.checkpoints.clear();
        retired.last_run = state.last_run.clone().or(retired.last_run);
        retired.keys_from = state.keys_from.clone();
        let dir = self.dir.join(RETIRED_DIR);
        durable::create_private_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let json = serde_json::to_vec_pretty(&retired).map_err(|e| Error::component("state", e))?;
        durable::write_atomic(&retired_path, &json).map_err(Error::from)?;
        durable::sync_dir(&dir).map_err(Error::from)?;
        self.remove_ledger(&path)?;
        Ok(state)
    }

    fn remove_ledger(&self, path: &Path) -> Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(path, e)),
        }
        let dir = path.parent().expect("ledger files live in a directory");
        Ok(durable::sync_dir(dir)?)
    }
}

/// The scope of a window's label, `<scope> <range>`: what a source keeps a cursor for (a Zoom
/// user and conversation, a report session); `""` for a label that is only a range. Windows of
/// one source, stream and scope hold the rows of their ranges and nothing else. `None` when the
/// label does not end in a range `<time>..<time>` (RFC 3339 times or dates): an input file's
/// path, whose window only the same file replaces.
pub fn window_scope(label: &str) -> Option<&str> {
    let (scope, range) = label.rsplit_once(' ').unwrap_or(("", label));
    let (from, to) = range.split_once("..")?;
    let is_time = |t: &str| {
        DateTime::parse_from_rfc3339(t).is_ok()
            || chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d").is_ok()
    };
    (is_time(from) && is_time(to)).then_some(scope)
}

/// The windows whose files a pipeline's sinks hold (see [`StateStore::lake_keys`]).
#[derive(Debug, Clone, Default)]
pub struct LakeWindows {
    pub committed: HashSet<String>,
    /// Waiting to be loaded again; their files stay until replaced.
    pub reloading: HashSet<String>,
}

impl LakeWindows {
    /// Every window whose files belong in the lake.
    pub fn all(&self) -> HashSet<String> {
        self.committed.union(&self.reloading).cloned().collect()
    }
}

/// What a reset forgets of one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetSource {
    pub source: String,
    /// Committed (or already reloading) windows that will be loaded again; their files stay.
    pub reload: usize,
    /// Failed windows forgotten.
    pub failed: usize,
    /// Open checkpoints (a Qlara export id) forgotten.
    pub checkpoints: usize,
    /// The first start and last end of the windows to reload.
    pub range: Option<(DateTime<FixedOffset>, DateTime<FixedOffset>)>,
}

impl ResetSource {
    fn of(state: &SourceState) -> ResetSource {
        let reload: Vec<&WindowRecord> = state
            .windows
            .values()
            .filter(|w| w.status != WindowStatus::Failed)
            .collect();
        let start = reload.iter().filter_map(|w| w.start).min();
        let end = reload.iter().filter_map(|w| w.end).max();
        ResetSource {
            source: state.source.clone(),
            reload: reload.len(),
            failed: state.windows.len() - reload.len(),
            checkpoints: state.checkpoints.len(),
            range: start.zip(end),
        }
    }

    /// Nothing to forget.
    pub fn is_empty(&self) -> bool {
        self.reload == 0 && self.failed == 0 && self.checkpoints == 0
    }
}

/// What the run's single ledger writer is asked to do (one writer, so no update is lost).
#[derive(Debug)]
pub enum LedgerEvent {
    /// A sink committed (or dropped) a window.
    Sink {
        /// The sink's name: it publishes the window once the ledger lists it.
        sink: String,
        window: crate::WindowRef,
        committed: bool,
    },
    /// A source is about to send the first rows of a window (a worker of a sharded run only);
    /// `ack` answers once the ledger says so durably.
    Started {
        window: crate::WindowRef,
        ack: tokio::sync::oneshot::Sender<Result<()>>,
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
            key_name: None,
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
        let reset = store.reset(Some("lw")).unwrap();
        assert_eq!((reset[0].reload, reset[0].failed), (2, 1));
        // Reset forgets nothing of the lake: the committed windows wait to be loaded again.
        let s = store.load("lw").unwrap();
        assert_eq!(s.reloading().count(), 2);
        assert!(s.committed_ranges("message_contents").is_empty());
        let lake = store.lake_keys().unwrap();
        assert!(lake.committed.is_empty() && lake.reloading.len() == 2);
        // A reloaded window failing again stays reloading; committed again, it is committed.
        store.record(&a, WindowStatus::Failed, "r2").unwrap();
        assert_eq!(
            store.load("lw").unwrap().windows[&a.key()].status,
            WindowStatus::Reload
        );
        store.record(&a, WindowStatus::Committed, "r2").unwrap();
        assert!(
            store.supersede_reloads().unwrap().is_empty(),
            "b is not covered"
        );
        // One window over both ranges replaces b (a committed again replaced itself).
        let ab = w(9, "2025-01-01T00:00:00+09:00", "2025-02-15T23:59:59+09:00");
        store.record(&ab, WindowStatus::Committed, "r2").unwrap();
        assert_eq!(store.supersede_reloads().unwrap(), vec![b.key()]);
        assert_eq!(store.load("lw").unwrap().reloading().count(), 0);
    }

    #[test]
    fn a_worker_plans_from_every_workers_ledger_and_knows_its_unfinished_windows() {
        let dir = crate::config::tests::tempdir();
        let worker = |k| StateStore::new(dir.join(format!("shard-{k}-of-3")));
        let w = |i: u32, label: &str| Window {
            source: "q".into(),
            stream: "messages".into(),
            index: i,
            start: Some(DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z").unwrap()),
            end: Some(DateTime::parse_from_rfc3339("2025-01-01T23:59:59Z").unwrap()),
            utc_offset: FixedOffset::east_opt(0).unwrap(),
            label: label.into(),
            key_name: None,
        };
        let (mine, theirs, open) = (w(0, "a"), w(1, "b"), w(2, "c"));
        assert_eq!(worker(0).shard().map(|s| s.to_string()), Some("0/3".into()));
        worker(0)
            .record(&mine, WindowStatus::Committed, "r0")
            .unwrap();
        worker(1)
            .record(&theirs, WindowStatus::Committed, "r1")
            .unwrap();
        worker(0).start_window(&open).unwrap();
        let planned = worker(0).load_with_peers("q").unwrap();
        assert!(planned.is_committed(&mine.key()) && planned.is_committed(&theirs.key()));
        // What the worker itself commits and cleans is its own.
        assert_eq!(worker(0).committed_keys().unwrap().len(), 1);
        assert_eq!(
            worker(0).started_unfinished().unwrap(),
            HashSet::from([open.key()])
        );
        worker(0).record(&open, WindowStatus::Failed, "r0").unwrap();
        assert!(worker(0).started_unfinished().unwrap().is_empty());
        // One state directory to the lake: every worker has the pipeline's identity.
        assert_eq!(worker(0).identity().unwrap(), worker(2).identity().unwrap());
        assert_eq!(
            worker(1).identity().unwrap(),
            std::fs::read_to_string(dir.join("identity")).unwrap()
        );
        // A store of a run without --shard reads only its own ledger.
        assert!(
            StateStore::new(&dir)
                .load_with_peers("q")
                .unwrap()
                .windows
                .is_empty()
        );
    }

    #[test]
    fn a_reloaded_window_is_replaced_only_within_its_scope() {
        let dir = crate::config::tests::tempdir();
        let store = StateStore::new(&dir);
        let w = |label: &str| Window {
            source: "z".into(),
            stream: "user_messages".into(),
            index: 0,
            start: Some(DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z").unwrap()),
            end: Some(DateTime::parse_from_rfc3339("2025-01-31T23:59:59Z").unwrap()),
            utc_offset: FixedOffset::east_opt(0).unwrap(),
            label: label.into(),
            key_name: None,
        };
        let one = w("user u1 channel c1 2025-01-01..2025-01-31");
        store.record(&one, WindowStatus::Committed, "r1").unwrap();
        store.reset(None).unwrap();
        let other = w("user u1 channel c10 2025-01-01..2025-01-31");
        store.record(&other, WindowStatus::Committed, "r2").unwrap();
        assert!(store.supersede_reloads().unwrap().is_empty());
        assert_eq!(window_scope(&one.label), Some("user u1 channel c1"));
        assert_eq!(window_scope("2025-01-01..2025-01-31"), Some(""));
        assert_eq!(
            window_scope("2025-01-01T00:00:00+09:00..2025-01-31T23:59:59+09:00"),
            Some("")
        );
        // An input file's path is no range, even with dots or spaces in it.
        assert_eq!(window_scope("../in/a.csv"), None);
        assert_eq!(window_scope("/data/my exports/a..b.csv"), None);
        assert!(store.identity().unwrap() == store.identity().unwrap());
        assert_ne!(
            store.identity().unwrap(),
            StateStore::new(dir.join("other")).identity().unwrap()
        );
    }

    #[test]
    fn a_renamed_source_keeps_its_keys_and_a_removed_one_keeps_its_files() {
        let dir = crate::config::tests::tempdir();
        let store = StateStore::new(&dir);
        let w = |source: &str, keys: Option<&str>, day: u32| Window {
            source: source.into(),
            stream: "message_contents".into(),
            index: 0,
            start: Some(
                DateTime::parse_from_rfc3339(&format!("2025-01-{day:02}T00:00:00Z")).unwrap(),
            ),
            end: Some(
                DateTime::parse_from_rfc3339(&format!("2025-01-{day:02}T23:59:59Z")).unwrap(),
            ),
            utc_offset: FixedOffset::east_opt(0).unwrap(),
            label: format!("2025-01-{day:02}..2025-01-{day:02}"),
            key_name: keys.map(str::to_string),
        };
        store
            .record(&w("old", None, 1), WindowStatus::Committed, "r1")
            .unwrap();
        store
            .record(&w("old", None, 2), WindowStatus::Failed, "r1")
            .unwrap();
        let check = store.check_sources(["new"]).unwrap();
        assert_eq!(
            (check.orphans[0].source.as_str(), check.orphans[0].committed),
            ("old", 1)
        );
        assert!(check.clashes.is_empty());

        // A kill after the new ledger was written and before the old one went: both list the
        // same windows, and renaming again finishes.
        let mut half = store.load("old").unwrap();
        half.source = "new".into();
        half.keys_from = Some("old".into());
        store.save(&half).unwrap();
        let renamed = store.rename_source("old", "new").unwrap();
        assert_eq!((renamed.windows, renamed.key_name.as_str()), (2, "old"));
        assert!(store.all().unwrap().keys().eq(["new"]));
        let ledger = store.load("new").unwrap();
        assert_eq!(ledger.key_name(), "old");
        // The same window of the renamed source has the key it had: its files are the same.
        let again = w("new", ledger.keys_from.as_deref(), 1);
        assert!(ledger.is_committed(&again.key()));
        assert_eq!(again.key(), w("old", None, 1).key());
        assert!(matches!(
            store.rename_source("old", "new"),
            Err(SourceStateError::NoState(_))
        ));
        // A new source under the old name would write the same keys.
        let check = store.check_sources(["new", "old"]).unwrap();
        assert_eq!(check.clashes.len(), 1);
        assert!(check.orphans.is_empty());
        // Onto a source with state of its own, nothing changes.
        store
            .record(&w("other", None, 3), WindowStatus::Committed, "r2")
            .unwrap();
        assert!(matches!(
            store.rename_source("new", "other"),
            Err(SourceStateError::TargetHasState { windows: 1, .. })
        ));
        // Renamed back, no alias is left.
        store.rename_source("new", "old").unwrap();
        assert_eq!(store.load("old").unwrap().keys_from, None);

        // Forgotten: no longer a ledger, its committed windows still the lake's.
        let forgot = store.forget_source("old").unwrap();
        assert_eq!(forgot.windows.len(), 2);
        assert!(!store.all().unwrap().contains_key("old"));
        let retired = store.retired().unwrap();
        assert_eq!(
            retired["old"].windows.len(),
            1,
            "the failed window is dropped"
        );
        let lake = store.lake_keys().unwrap();
        assert!(lake.committed.contains(&w("old", None, 1).key()));
        assert!(
            store
                .committed_runs()
                .unwrap()
                .contains_key(&w("old", None, 1).key())
        );
        assert!(store.check_sources(["other"]).unwrap().orphans.is_empty());
    }
}
