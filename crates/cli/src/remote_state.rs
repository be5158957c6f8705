//! A `state_dir` in an object store (`s3://`, `gs://`, `az://`…; spec section 5): the ledger,
//! checkpoints, dedupe history, removal logs, run summaries, dead letters and the run lock of a
//! pipeline live below `<state_dir>/<pipeline>/`, so a worker with no persistent disk (a
//! container, a Kubernetes Job) runs incrementally.
//!
//! Everything that reads and writes state (the ledger, transforms, the runtime, `state show`)
//! works on a *local working copy*, a private directory that the pipeline file's `state_dir`
//! is pointed at. Around it, this module keeps the copy and the store in step:
//!
//! 1. Before anything else, [`Store::check`] proves the store is reachable, writable and honours
//!    create-only writes; a missing bucket or bad credentials stop the run here.
//! 2. The run takes the lock object `<pipeline>/lock.json` ([`RemoteLock`]), then replaces the
//!    working copy with what the store holds below `<pipeline>/`.
//! 3. While the run goes on, every state file made durable (`durable::commit_file`) is uploaded
//!    before the write returns ([`StateSync`]). So the store receives files in the order the local
//!    protocol makes them durable, and that protocol already makes durable whatever a ledger
//!    refers to before the ledger: a window's dedupe keys and the run's dedupe history before
//!    its marker reaches the sinks, a removal log before any window of its run commits, a
//!    checkpoint inside the ledger itself. **The rule: a file the ledger depends on is in the
//!    store before the ledger object that refers to it.**
//! 4. A ledger (`sources/<source>.json`, the commit point) is uploaded with a conditional put:
//!    create-only if the store had none, else only if the store still holds the version this
//!    run read or wrote last. A refusal means another writer committed in between: the write
//!    fails, and with it the run, which commits nothing more. No ledger is uploaded once the
//!    run cannot prove it still holds the lock (its lease ran out unrenewed, or another run
//!    took the lock over).
//! 5. At the end (also of a failed run), what changed without passing through `commit_file`
//!    (dead letters) is uploaded, objects of files the run deleted (applied removal logs,
//!    forgotten ledgers, dedupe history of uncommitted windows) are deleted, and the lock is
//!    released.
//!
//! A worker of a sharded run (`--shard K/N`) does all of this below its own
//! `<pipeline>/shard-K-of-N/` (its own lock object and ledgers), and reads copies of the other
//! workers' ledgers for planning ([`ObjectState::fetch_peer_ledgers`]); see `chatlake_core::shard`.
//!
//! The lock object holds `{run_id, host, pid, started, lease_until}`; it is created create-only,
//! renewed every lease/3 by a conditional update on its version, and deleted at the end. A run
//! that finds it held exits 1 naming the holder, unless the holder is known to be gone (same
//! host, its process no longer exists: taken over at once) or its lease expired (taken over);
//! a takeover is itself a conditional update, so two runs cannot both take over.

use std::collections::HashMap;

use crate::error_line;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use chatlake_core::config::{ConfigError, PipelineFile};
use chatlake_core::durable::{self, StateSync, StateSyncGuard};
use chatlake_store::{
    Location, ObjectLocation, ObjectPath, PutMode, RequestFailure, Store, StoreError, UpdateVersion,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::exit;

/// Seconds a run's lock lasts without renewal (default 60); for tests.
pub const LEASE_VARIABLE: &str = "CHATLAKE_STATE_LEASE_SECS";
/// The directory the working copies of object-store state directories are kept in (default:
/// `chatlake-state` under the system's temporary directory).
pub const CACHE_VARIABLE: &str = "CHATLAKE_STATE_CACHE";

const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// The run lock, below `<state_dir>/<pipeline>/`.
pub const LOCK_OBJECT: &str = "lock.json";
/// The local run lock (see `StateStore::lock`): kept in the working copy, never uploaded.
const LOCAL_LOCK: &str = "run.lock";

/// Why an object-store state directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteStateError {
    #[error("{0}")]
    Config(ConfigError),
    #[error("state_dir: {0}")]
    Store(#[from] StoreError),
    #[error("{}: {source}", path.display())]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: the working copy of the state is not private to this user (mode {mode:o}); remove it, or set {CACHE_VARIABLE} to a directory of your own",
        path.display()
    )]
    NotPrivate { path: PathBuf, mode: u32 },
    #[error("another run of this pipeline is in progress ({holder}; {url}): nothing was done")]
    Held { url: String, holder: String },
    #[error(
        "{url} is not a lock chatlake wrote ({source}); if no run of this pipeline is going on, delete it"
    )]
    UnreadableLock {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "another run changed the ledger of `{pipeline}` ({url}) since this run read it: this run commits nothing more (did two runs of the pipeline overlap?)"
    )]
    LedgerChanged { pipeline: String, url: String },
    #[error(
        "this run no longer holds the lock of `{pipeline}` ({url}): {why}; it commits nothing more"
    )]
    LockLost {
        pipeline: String,
        url: String,
        why: String,
    },
}

impl RemoteStateError {
    /// The exit code a command ends with (README: 2 for a bad pipeline file, else 1).
    pub fn exit_code(&self) -> u8 {
        match self {
            RemoteStateError::Config(_) => exit::BAD_INPUT,
            _ => exit::RUN_FAILED,
        }
    }
}

/// Prints `e` for the command run on `pipeline` and returns the exit code to end with.
pub fn report(pipeline: &Path, e: &RemoteStateError) -> u8 {
    match e {
        // A configuration error names the file and key itself.
        RemoteStateError::Config(_) => error_line!("{e}"),
        _ => error_line!("{}: {e}", pipeline.display()),
    }
    e.exit_code()
}

type Result<T, E = RemoteStateError> = std::result::Result<T, E>;

fn local(path: &Path) -> impl FnOnce(std::io::Error) -> RemoteStateError + '_ {
    move |source| RemoteStateError::Local {
        path: path.to_path_buf(),
        source,
    }
}

/// The object-store location of `file`'s `state_dir`, or `None` for a local one; a URL chatlake
/// cannot use is an error at `pipeline.state_dir`. No I/O.
pub fn object_state_dir(file: &PipelineFile) -> Result<Option<ObjectLocation>, ConfigError> {
    let Some(state_dir) = &file.pipeline.state_dir else {
        return Ok(None);
    };
    match Location::parse(&state_dir.to_string_lossy()) {
        Ok(Location::Local(_)) => Ok(None),
        Ok(Location::Object(location)) => Ok(Some(location)),
        Err(e) => Err(file.error("pipeline.state_dir".into(), e.to_string())),
    }
}

/// What `validate` and `plan` build with when the state is in an object store: they make no
/// request, so the pipeline sees an empty scratch state directory.
#[derive(Debug)]
pub struct Offline {
    /// `<state_dir>/<pipeline>`, for messages.
    pub url: String,
    _scratch: tempfile::TempDir,
}

/// Points an object-store `state_dir` of `file` at an empty scratch directory (see [`Offline`]).
pub fn offline(file: &mut PipelineFile) -> Result<Option<Offline>, ConfigError> {
    let Some(location) = object_state_dir(file)? else {
        return Ok(None);
    };
    let scratch = tempfile::Builder::new()
        .prefix("chatlake-state-")
        .tempdir()
        .map_err(|e| {
            file.error(
                String::new(),
                format!("cannot make a scratch directory: {e}"),
            )
        })?;
    file.pipeline.state_dir = Some(scratch.path().to_path_buf());
    Ok(Some(Offline {
        url: location.join(&file.pipeline.name).to_string(),
        _scratch: scratch,
    }))
}

/// A fresh copy of a pipeline's object-store state, for commands that only read it
/// (`state show`); deleted when dropped.
#[derive(Debug)]
pub struct Snapshot {
    state: ObjectState,
    _scratch: tempfile::TempDir,
}

impl Snapshot {
    pub fn url(&self) -> String {
        self.state.url()
    }
}

/// If `file`'s `state_dir` is in an object store, downloads the pipeline's state into a
/// scratch directory the file's `state_dir` then names; takes no lock.
pub async fn snapshot(file: &mut PipelineFile) -> Result<Option<Snapshot>> {
    if object_state_dir(file)
        .map_err(RemoteStateError::Config)?
        .is_none()
    {
        return Ok(None);
    }
    let scratch = tempfile::Builder::new()
        .prefix("chatlake-state-")
        .tempdir()
        .map_err(local(&std::env::temp_dir()))?;
    let Some(state) = ObjectState::open_unchecked(file, Some(scratch.path()))? else {
        return Ok(None);
    };
    state.download().await?;
    Ok(Some(Snapshot {
        state,
        _scratch: scratch,
    }))
}

/// A pipeline's state in an object store, with its local working copy.
#[derive(Clone)]
pub struct ObjectState {
    shared: Arc<Shared>,
}

struct Shared {
    pipeline: String,
    /// At `<state_dir>/<pipeline>` (`<state_dir>/<pipeline>/shard-K-of-N` for a worker of a
    /// sharded run).
    store: Store,
    /// For a worker of a sharded run: `<state_dir>/<pipeline>`, where the other workers' state is.
    peers: Option<Store>,
    /// The working copy of `<state_dir>/<pipeline>`.
    dir: PathBuf,
    /// What the store holds of each file, as far as this run knows, by its relative path.
    known: Mutex<HashMap<String, Known>>,
}

#[derive(Debug, Clone, Default)]
struct Known {
    /// The ledger's version the next conditional put expects.
    version: Option<UpdateVersion>,
    /// The local file's size and modification time when it last matched the store.
    stamp: Option<(u64, SystemTime)>,
}

impl std::fmt::Debug for ObjectState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectState")
            .field("url", &self.url())
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

impl ObjectState {
    /// If `file`'s `state_dir` is in an object store: opens and checks the store (one clear
    /// error for a missing bucket, bad credentials or a store without conditional writes) and
    /// points the file's `state_dir` at the working copy: `working_root` if given, else a
    /// private directory of this machine kept per state_dir URL (see [`CACHE_VARIABLE`]).
    pub async fn open(
        file: &mut PipelineFile,
        working_root: Option<&Path>,
    ) -> Result<Option<ObjectState>> {
        let state = Self::open_unchecked(file, working_root)?;
        if let Some(state) = &state {
            state.shared.store.check().await?;
        }
        Ok(state)
    }

    /// [`ObjectState::open`] without the check, for commands that only read (whose user may
    /// not be allowed to write).
    fn open_unchecked(
        file: &mut PipelineFile,
        working_root: Option<&Path>,
    ) -> Result<Option<ObjectState>> {
        let Some(root) = object_state_dir(file).map_err(RemoteStateError::Config)? else {
            return Ok(None);
        };
        // A worker of a sharded run keeps its state (and lock object) below its own
        // `shard-K-of-N/`, and reads the others' ledgers from the pipeline's prefix.
        let shared_location = root.join(&file.pipeline.name);
        let (location, peers) = match file.worker() {
            Some(shard) => (
                shared_location.join(&shard.dir_name()),
                Some(Store::open(&shared_location, &file.pipeline.storage)?),
            ),
            None => (shared_location, None),
        };
        let store = Store::open(&location, &file.pipeline.storage)?;
        let working_root = match working_root {
            Some(dir) => dir.to_path_buf(),
            None => working_copy_root(&root)?,
        };
        file.pipeline.state_dir = Some(working_root);
        let dir = file.pipeline_state_dir();
        Ok(Some(ObjectState {
            shared: Arc::new(Shared {
                pipeline: file.pipeline.name.clone(),
                store,
                peers,
                dir,
                known: Mutex::default(),
            }),
        }))
    }

    /// `<state_dir>/<pipeline>`.
    pub fn url(&self) -> String {
        self.shared.store.location().to_string()
    }

    /// Takes the run lock, replaces the working copy with the store's state and starts
    /// uploading what the run makes durable. End it with [`Session::finish`].
    pub async fn begin(&self, run_id: &str) -> Result<Session> {
        let lock = RemoteLock::take(&self.shared, run_id).await?;
        let downloaded = match self.download().await {
            Ok(n) => n,
            Err(e) => {
                lock.release(&self.shared).await;
                return Err(e);
            }
        };
        tracing::info!(
            state = %self.url(),
            working_copy = %self.shared.dir.display(),
            objects = downloaded,
            "state fetched from the object store"
        );
        let sync = Arc::new(Uploader {
            shared: self.shared.clone(),
            lock: lock.state.clone(),
            runtime: tokio::runtime::Handle::current(),
        });
        let guard = durable::install_state_sync(&self.shared.dir, sync);
        Ok(Session {
            state: self.clone(),
            lock,
            guard: Some(guard),
        })
    }

    /// Replaces the working copy (but the local lock) with every object below
    /// `<state_dir>/<pipeline>/`; returns how many.
    pub async fn download(&self) -> Result<usize> {
        let shared = &self.shared;
        let dir = &shared.dir;
        durable::create_private_dir_all(dir).map_err(local(dir))?;
        for entry in std::fs::read_dir(dir).map_err(local(dir))? {
            let entry = entry.map_err(local(dir))?;
            if entry.file_name() == LOCAL_LOCK {
                continue;
            }
            let path = entry.path();
            let removed = if entry.file_type().map_err(local(&path))?.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(local(&path))?;
        }
        let mut known = HashMap::new();
        let prefix = shared.store.location().prefix().as_ref().to_string();
        for meta in shared.store.list("").await? {
            let Some(rel) = relative_key(&prefix, meta.location.as_ref()) else {
                continue;
            };
            if !is_synced(&rel) {
                continue;
            }
            let path = dir.join(&rel);
            if let Some(parent) = path.parent() {
                durable::create_private_dir_all(parent).map_err(local(parent))?;
            }
            let mut entry = Known::default();
            if is_ledger(&rel) {
                // Read whole with the version its conditional update must name.
                let Some((bytes, version)) = shared.store.read(&meta.location).await? else {
                    continue;
                };
                write_private(&path, &bytes)?;
                entry.version = Some(version);
            } else {
                shared.store.download(&meta.location, &path).await?;
                make_private(&path)?;
            }
            entry.stamp = stamp(&path);
            known.insert(rel, entry);
        }
        let count = known.len();
        *shared.known.lock().unwrap_or_else(|e| e.into_inner()) = known;
        Ok(count)
    }
}

impl ObjectState {
    /// For a worker of a sharded run: copies of the other workers' ledgers
    /// (`shard-J-of-N/sources/*.json`), read only, in a scratch directory that
    /// [`chatlake_core::state::StateStore::with_peers_in`] takes. Sources plan from them
    /// together with this worker's own.
    pub async fn fetch_peer_ledgers(&self) -> Result<tempfile::TempDir> {
        let scratch = tempfile::Builder::new()
            .prefix("chatlake-peers-")
            .tempdir()
            .map_err(local(&std::env::temp_dir()))?;
        let Some(peers) = &self.shared.peers else {
            return Ok(scratch);
        };
        let own = self
            .shared
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let prefix = peers.location().prefix().as_ref().to_string();
        for meta in peers.list("").await? {
            let Some(rel) = relative_key(&prefix, meta.location.as_ref()) else {
                continue;
            };
            let mut parts = rel.splitn(2, '/');
            let (Some(shard_dir), Some(below)) = (parts.next(), parts.next()) else {
                continue;
            };
            if chatlake_core::shard::Shard::from_dir_name(shard_dir).is_none()
                || Some(shard_dir) == own.as_deref()
                || !is_ledger(below)
            {
                continue;
            }
            let path = scratch.path().join(&rel);
            if let Some(parent) = path.parent() {
                durable::create_private_dir_all(parent).map_err(local(parent))?;
            }
            peers.download(&meta.location, &path).await?;
        }
        Ok(scratch)
    }
}

/// The shards (and ledgers of runs without `--shard`) an object-store state directory holds,
/// read from the keys below `<state_dir>/<pipeline>/`; see [`chatlake_core::shard::check_layout`].
pub async fn shard_layout(file: &PipelineFile) -> Result<chatlake_core::shard::StateLayout> {
    let mut layout = chatlake_core::shard::StateLayout::default();
    let Some(root) = object_state_dir(file).map_err(RemoteStateError::Config)? else {
        return Ok(layout);
    };
    let location = root.join(&file.pipeline.name);
    let store = Store::open(&location, &file.pipeline.storage)?;
    let prefix = store.location().prefix().as_ref().to_string();
    for meta in store.list("").await? {
        let Some(rel) = relative_key(&prefix, meta.location.as_ref()) else {
            continue;
        };
        let first = rel.split('/').next().unwrap_or_default();
        layout.note(first, || is_ledger(&rel));
    }
    Ok(layout)
}

/// A run (or `state reset`) holding the lock of an object-store state directory.
pub struct Session {
    state: ObjectState,
    lock: RemoteLock,
    guard: Option<StateSyncGuard>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Brings the store in step with the working copy now: uploads what changed, deletes the
    /// objects of files that are gone (after `state reset` or `--full-refresh`, before sinks
    /// start).
    pub async fn push(&self) -> Result<()> {
        self.state.shared.push(&self.lock.state).await
    }

    /// Pushes what is left (see [`Session::push`]) and releases the lock.
    pub async fn finish(mut self) -> Result<()> {
        drop(self.guard.take());
        let pushed = self.push().await;
        self.lock.release(&self.state.shared).await;
        pushed
    }
}

impl Shared {
    fn relative(&self, path: &Path) -> Option<String> {
        let rel = path.strip_prefix(&self.dir).ok()?;
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        (!parts.is_empty()).then(|| parts.join("/"))
    }

    /// Uploads the working copy's `rel`: a ledger conditionally, anything else whole.
    async fn upload(&self, rel: &str, lock: &LockState) -> Result<()> {
        let key = self.store.key(rel);
        let url = self.store.location().display_key(&key);
        if let Err(why) = lock.held() {
            return Err(RemoteStateError::LockLost {
                pipeline: self.pipeline.clone(),
                url: self
                    .store
                    .location()
                    .display_key(&self.store.key(LOCK_OBJECT)),
                why,
            });
        }
        let path = self.dir.join(rel);
        let before = stamp(&path);
        if is_ledger(rel) {
            let bytes = std::fs::read(&path).map_err(local(&path))?;
            let expected = self.known().get(rel).and_then(|k| k.version.clone());
            let mode = match expected {
                Some(version) => PutMode::Update(version),
                None => PutMode::Create,
            };
            let version = match self.store.write(&key, Bytes::from(bytes), mode).await {
                Ok(version) => version,
                Err(e)
                    if matches!(
                        e.failure(),
                        Some(RequestFailure::Precondition | RequestFailure::AlreadyExists)
                    ) =>
                {
                    return Err(RemoteStateError::LedgerChanged {
                        pipeline: self.pipeline.clone(),
                        url,
                    });
                }
                Err(e) => return Err(e.into()),
            };
            self.known().insert(
                rel.to_string(),
                Known {
                    version: Some(version),
                    stamp: before,
                },
            );
        } else {
            self.store.upload(&path, &key).await?;
            self.known().entry(rel.to_string()).or_default().stamp = before;
        }
        tracing::debug!(object = %url, "state uploaded");
        Ok(())
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn push(&self, lock: &LockState) -> Result<()> {
        let mut changed = Vec::new();
        let mut present = std::collections::HashSet::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(local(&dir)(e)),
            };
            for entry in entries {
                let path = entry.map_err(local(&dir))?.path();
                let Some(rel) = self.relative(&path) else {
                    continue;
                };
                if !is_synced(&rel) {
                    continue;
                }
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let now = stamp(&path);
                if self.known().get(&rel).and_then(|k| k.stamp) != now {
                    changed.push(rel.clone());
                }
                present.insert(rel);
            }
        }
        // Ledgers last: what they refer to goes first (see the module's rule).
        changed.sort_by_key(|rel| (is_ledger(rel), rel.clone()));
        for rel in changed {
            self.upload(&rel, lock).await?;
        }
        let gone: Vec<String> = self
            .known()
            .keys()
            .filter(|rel| !present.contains(*rel))
            .cloned()
            .collect();
        if !gone.is_empty()
            && let Err(why) = lock.held()
        {
            return Err(RemoteStateError::LockLost {
                pipeline: self.pipeline.clone(),
                url: self
                    .store
                    .location()
                    .display_key(&self.store.key(LOCK_OBJECT)),
                why,
            });
        }
        for rel in gone {
            self.store.delete(&self.store.key(&rel)).await?;
            self.known().remove(&rel);
        }
        Ok(())
    }
}

/// Uploads state files as `durable::commit_file` makes them durable (see the module docs).
struct Uploader {
    shared: Arc<Shared>,
    lock: Arc<LockState>,
    runtime: tokio::runtime::Handle,
}

impl StateSync for Uploader {
    fn written(&self, path: &Path) -> Result<(), chatlake_core::BoxError> {
        let Some(rel) = self.shared.relative(path).filter(|rel| is_synced(rel)) else {
            return Ok(());
        };
        // Called from async tasks, blocking threads and plain threads alike; the write it
        // follows must not return before the store has the file.
        let upload = self.shared.upload(&rel, &self.lock);
        tokio::task::block_in_place(|| self.runtime.block_on(upload)).map_err(Into::into)
    }
}

/// Files of the working copy that are not state to keep: the local lock, temporary files of
/// writes in progress, dedupe's spill, the store's own probes and journals, the lock object.
fn is_synced(rel: &str) -> bool {
    let first = rel.split('/').next().unwrap_or_default();
    !(rel == LOCAL_LOCK
        || rel == LOCK_OBJECT
        || first == "spill"
        || first.starts_with("_chatlake")
        || rel.ends_with(".tmp"))
}

/// A source's window ledger, the commit point: uploaded only by conditional puts.
fn is_ledger(rel: &str) -> bool {
    rel.strip_prefix("sources/")
        .is_some_and(|name| name.ends_with(".json") && !name.contains('/'))
}

fn relative_key(prefix: &str, key: &str) -> Option<String> {
    let rel = if prefix.is_empty() {
        key
    } else {
        key.strip_prefix(prefix)?.strip_prefix('/')?
    };
    (!rel.is_empty()).then(|| rel.to_string())
}

fn stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut file = durable::create_private_file(path).map_err(local(path))?;
    file.write_all(bytes).map_err(local(path))
}

fn make_private(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(local(path))?;
    }
    Ok(())
}

/// `<cache>/<hash of the state_dir URL>`: one working copy per state directory on this machine,
/// private to the user (state holds message text).
fn working_copy_root(state_dir: &ObjectLocation) -> Result<PathBuf> {
    let cache = std::env::var_os(CACHE_VARIABLE)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("chatlake-state"));
    let root = cache.join(format!(
        "{:016x}",
        xxhash_rust::xxh3::xxh3_64(state_dir.to_string().as_bytes())
    ));
    for dir in [&cache, &root] {
        durable::create_private_dir_all(dir).map_err(local(dir))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir)
                .map_err(local(dir))?
                .permissions()
                .mode()
                & 0o777;
            // In a shared temporary directory another user could have made it first.
            if mode & 0o077 != 0 {
                return Err(RemoteStateError::NotPrivate {
                    path: dir.clone(),
                    mode,
                });
            }
        }
    }
    Ok(root)
}

/// What the lock object says.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LockNote {
    run_id: String,
    host: String,
    pid: u32,
    started: DateTime<Utc>,
    lease_until: DateTime<Utc>,
}

impl LockNote {
    fn holder(&self) -> String {
        format!(
            "run {}, pid {} on host {} since {}, lease until {}",
            self.run_id,
            self.pid,
            self.host,
            self.started
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.lease_until
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }
}

/// The lock object of a run, renewed in the background until released.
struct RemoteLock {
    state: Arc<LockState>,
    renewal: tokio::task::JoinHandle<()>,
}

struct LockState {
    key: ObjectPath,
    lease: Duration,
    note: Mutex<LockNote>,
    version: Mutex<UpdateVersion>,
    /// Until when this run may act as the holder: its last successful write plus most of
    /// the lease (the rest is slack for clocks that disagree).
    valid_until: Mutex<Instant>,
    /// Why this run no longer holds the lock, once it knows.
    lost: Mutex<Option<String>>,
}

impl LockState {
    fn held(&self) -> std::result::Result<(), String> {
        if let Some(why) = self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(why);
        }
        let until = *self.valid_until.lock().unwrap_or_else(|e| e.into_inner());
        if Instant::now() >= until {
            return Err("its lease ran out before it could renew it".into());
        }
        Ok(())
    }

    fn wrote(&self, version: UpdateVersion, at: Instant) {
        *self.version.lock().unwrap_or_else(|e| e.into_inner()) = version;
        *self.valid_until.lock().unwrap_or_else(|e| e.into_inner()) = at + self.lease * 9 / 10;
    }
}

fn lease() -> Duration {
    std::env::var(LEASE_VARIABLE)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s > 0.0 && s.is_finite())
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_LEASE)
}

/// This machine's name, as the lock object records it.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Whether process `pid` of this machine is known to be gone (never true where that cannot
/// be known: the lease decides there).
fn process_is_gone(pid: u32) -> bool {
    if !cfg!(target_os = "linux") {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie is gone too: it runs no more, its parent just has not reaped it.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| matches!(state, 'Z' | 'X')),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

impl RemoteLock {
    async fn take(shared: &Arc<Shared>, run_id: &str) -> Result<RemoteLock> {
        let store = &shared.store;
        let key = store.key(LOCK_OBJECT);
        let url = store.location().display_key(&key);
        let lease = lease();
        let host = host_name();
        let started = Utc::now();
        let note = |now: DateTime<Utc>| LockNote {
            run_id: run_id.to_string(),
            host: host.clone(),
            pid: std::process::id(),
            started,
            lease_until: now + chrono::Duration::from_std(lease).unwrap_or_default(),
        };
        // A few rounds: each lost race means another run took or freed the lock meanwhile.
        for _ in 0..5 {
            let at = Instant::now();
            let mode = match store.read(&key).await? {
                None => PutMode::Create,
                Some((bytes, version)) => {
                    let held: LockNote = serde_json::from_slice(&bytes).map_err(|source| {
                        RemoteStateError::UnreadableLock {
                            url: url.clone(),
                            source,
                        }
                    })?;
                    let why = if held.host == host && process_is_gone(held.pid) {
                        format!("its process {} on this host is gone", held.pid)
                    } else if held.lease_until < Utc::now() {
                        format!("its lease expired at {}", held.lease_until.to_rfc3339())
                    } else {
                        return Err(RemoteStateError::Held {
                            url,
                            holder: held.holder(),
                        });
                    };
                    tracing::warn!(lock = %url, holder = %held.holder(), "taking over the lock: {why}");
                    PutMode::Update(version)
                }
            };
            let mine = note(Utc::now());
            let body = Bytes::from(serde_json::to_vec_pretty(&mine).expect("a lock note"));
            match store.write(&key, body, mode).await {
                Ok(version) => {
                    let state = Arc::new(LockState {
                        key,
                        lease,
                        note: Mutex::new(mine),
                        version: Mutex::new(version.clone()),
                        valid_until: Mutex::new(at),
                        lost: Mutex::default(),
                    });
                    state.wrote(version, at);
                    let renewal = tokio::spawn(renew(store.clone(), state.clone(), url));
                    return Ok(RemoteLock { state, renewal });
                }
                Err(e)
                    if matches!(
                        e.failure(),
                        Some(RequestFailure::AlreadyExists | RequestFailure::Precondition)
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let holder = match store.read(&key).await? {
            Some((bytes, _)) => serde_json::from_slice::<LockNote>(&bytes)
                .map(|n| n.holder())
                .unwrap_or_else(|_| "an unknown holder".into()),
            None => "runs that keep taking and freeing it".into(),
        };
        Err(RemoteStateError::Held { url, holder })
    }

    /// Stops renewing and deletes the lock object, if this run still holds it.
    async fn release(self, shared: &Shared) {
        self.renewal.abort();
        let _ = self.renewal.await;
        if self
            .state
            .lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return;
        }
        let store = &shared.store;
        let ours = self
            .state
            .note
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .run_id
            .clone();
        match store.read(&self.state.key).await {
            Ok(Some((bytes, _)))
                if serde_json::from_slice::<LockNote>(&bytes).is_ok_and(|n| n.run_id == ours) =>
            {
                if let Err(e) = store.delete(&self.state.key).await {
                    tracing::warn!(error = %e, "cannot release the state lock; it expires with its lease");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot release the state lock; it expires with its lease")
            }
        }
    }
}

/// Renews the lock every lease/3 until aborted or until it finds another run took it.
async fn renew(store: Store, state: Arc<LockState>, url: String) {
    loop {
        tokio::time::sleep(state.lease / 3).await;
        let at = Instant::now();
        let note = {
            let mut note = state.note.lock().unwrap_or_else(|e| e.into_inner());
            note.lease_until =
                Utc::now() + chrono::Duration::from_std(state.lease).unwrap_or_default();
            note.clone()
        };
        let version = state
            .version
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let body = Bytes::from(serde_json::to_vec_pretty(&note).expect("a lock note"));
        match store
            .write(&state.key, body, PutMode::Update(version))
            .await
        {
            Ok(version) => state.wrote(version, at),
            Err(e)
                if matches!(
                    e.failure(),
                    Some(
                        RequestFailure::Precondition
                            | RequestFailure::NotFound
                            | RequestFailure::AlreadyExists
                    )
                ) =>
            {
                let why = format!("another run took the lock over ({url} changed)");
                tracing::error!(lock = %url, "{why}: this run commits nothing more");
                *state.lost.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the state lock; trying again")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_state_to_keep_is_synced_and_only_ledgers_are_conditional() {
        for kept in [
            "sources/lw.json",
            "last_run.json",
            "runs/r1.json",
            "dead_letters/r1.jsonl",
            "removals/r1.unique.arrows",
            "dedupe/unique/r1.latest",
        ] {
            assert!(is_synced(kept), "{kept}");
        }
        for skipped in [
            "run.lock",
            "lock.json",
            "spill/unique/0.arrows",
            "sources/lw.json.tmp",
            "_chatlake_probe/1-2",
            "_chatlake_uploads/x",
        ] {
            assert!(!is_synced(skipped), "{skipped}");
        }
        assert!(is_ledger("sources/lw.json"));
        assert!(!is_ledger("runs/r1.json") && !is_ledger("sources/x/y.json"));
    }

    #[test]
    fn keys_are_taken_relative_to_the_pipelines_prefix() {
        assert_eq!(
            relative_key("state/demo", "state/demo/sources/lw.json").as_deref(),
            Some("sources/lw.json")
        );
        assert_eq!(relative_key("state/demo", "state/demos/x"), None);
        assert_eq!(relative_key("", "a/b").as_deref(), Some("a/b"));
    }

    #[test]
    fn a_process_that_is_not_there_is_gone_and_this_one_is_not() {
        assert!(!process_is_gone(std::process::id()));
        if cfg!(target_os = "linux") {
            // Above the kernel's largest pid (2^22).
            assert!(process_is_gone(4_194_305));
        }
    }

    #[test]
    fn a_bad_state_dir_url_is_an_error_at_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "[pipeline]\nname = \"p\"\nstate_dir = \"ftp://host/x\"\n\n[sources.a]\ntype = \"x\"\n",
        )
        .unwrap();
        let file = PipelineFile::load(&path).unwrap();
        let err = object_state_dir(&file).unwrap_err();
        assert_eq!(err.key, "pipeline.state_dir");
        assert!(err.message.contains("ftp"), "{}", err.message);
    }
}
