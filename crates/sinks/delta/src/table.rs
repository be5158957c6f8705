//! The Delta table behind a sink: opened through chatlake's own object store (so `s3://` works
//! without deltalake's AWS SDK, and conditional puts are on), created exactly once however many
//! writers race, and committed with an outer retry that recognises its own earlier commit.
//!
//! Why the outer retry: deltalake retries a commit that lost the race for a version itself, but
//! immediately and a fixed number of times; under four writers it gave up and rows were lost
//! (issue 15's measurements). Here every attempt first reloads the table and looks for the
//! commit's application transaction (`txn`: app id and version): if it is there, an earlier
//! attempt (or an earlier process) committed it and nothing is written twice.

use std::collections::HashSet;
use std::path::Path as FsPath;
use std::sync::{Arc, Once};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use chatlake_core::config::StorageOptions;
use chatlake_store::{Location, Store};
use deltalake::kernel::engine::arrow_conversion::{TryIntoArrow as _, TryIntoKernel as _};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add, Remove, StructType, Transaction};
use deltalake::logstore::{
    LogStore, LogStoreFactory, ObjectStoreRef, StorageConfig, default_logstore, logstore_factories,
};
use deltalake::operations::create::CreateBuilder;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaResult, DeltaTable, DeltaTableBuilder, DeltaTableError};
use url::Url;

use crate::error::{Error, Result};

/// How often a commit is tried before the run gives up (a re-run rolls the window forward).
const COMMIT_ATTEMPTS: u32 = 40;
/// deltalake's own retries inside one attempt: few, since ours reload and back off.
const INNER_RETRIES: usize = 2;
/// The first back-off after a lost race; it doubles up to [`MAX_BACKOFF`], with jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A plain log store for a URL scheme deltalake has no factory for without its cloud features:
/// commits are conditional puts (create-if-absent) on the object store handed over, which S3
/// (and SeaweedFS, MinIO, R2), GCS and Azure honour. No DynamoDB lock is involved.
struct PlainLogStore;

impl LogStoreFactory for PlainLogStore {
    fn with_options(
        &self,
        prefixed: ObjectStoreRef,
        root: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(prefixed, root, location, options))
    }
}

/// Registers [`PlainLogStore`] for every object-store scheme chatlake reads from a `path`.
fn register_log_stores() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for scheme in ["s3", "s3a", "gs", "az", "abfs", "abfss", "azure", "https"] {
            if let Ok(url) = Url::parse(&format!("{scheme}://")) {
                logstore_factories().insert(url, Arc::new(PlainLogStore));
            }
        }
    });
}

/// Opens the table at `location` (loading it if it exists; a missing table stays unloaded
/// until [`ensure_created`]). `shown` names the table in errors.
pub(crate) async fn open(
    location: &Location,
    storage: &StorageOptions,
    shown: &str,
) -> Result<DeltaTable> {
    let delta = |source| Error::Delta {
        table: shown.to_string(),
        source: Box::new(source),
    };
    let mut table = match location {
        Location::Local(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| Error::Table {
                table: shown.to_string(),
                message: format!("cannot create the directory: {e}"),
            })?;
            let url = local_url(dir).map_err(|message| Error::Table {
                table: shown.to_string(),
                message,
            })?;
            DeltaTableBuilder::from_url(url)
                .and_then(|b| b.build())
                .map_err(delta)?
        }
        Location::Object(object) => {
            register_log_stores();
            let store = Store::open(object, storage).map_err(|source| Error::Store {
                table: shown.to_string(),
                source,
            })?;
            // Two writers can never both commit one version only if the store refuses a
            // second create-only PUT; `check` proves it does before anything is written.
            store.check().await.map_err(|source| Error::Store {
                table: shown.to_string(),
                source,
            })?;
            let url = object.url().clone();
            DeltaTableBuilder::from_url(url.clone())
                .map_err(delta)?
                .with_storage_backend(store.object_store().clone(), url)
                .build()
                .map_err(delta)?
        }
    };
    match table.load().await {
        Ok(()) | Err(DeltaTableError::NotATable(_)) => Ok(table),
        Err(e) => Err(delta(e)),
    }
}

fn local_url(dir: &FsPath) -> Result<Url, String> {
    let absolute = std::fs::canonicalize(dir).map_err(|e| format!("cannot resolve: {e}"))?;
    Url::from_directory_path(&absolute)
        .map_err(|()| format!("{} is not an absolute path", absolute.display()))
}

/// Creates the table with `schema` and `partition_by` unless it exists. Exactly one writer
/// creates it: version 0 is a create-only put, and a writer that loses that race does not
/// retry as version 1 (deltalake would, committing a second protocol and metaData); it loads
/// the winner's table instead.
pub(crate) async fn ensure_created(
    table: &mut DeltaTable,
    schema: &SchemaRef,
    partition_by: &[String],
    shown: &str,
) -> Result<()> {
    let delta = |source| Error::Delta {
        table: shown.to_string(),
        source: Box::new(source),
    };
    if table.version().is_none() {
        let columns: StructType = schema
            .as_ref()
            .try_into_kernel()
            .map_err(|e| Error::Table {
                table: shown.to_string(),
                message: format!("its rows cannot be a Delta table: {e}"),
            })?;
        let created = CreateBuilder::new()
            .with_log_store(table.log_store())
            .with_columns(columns.fields().cloned())
            .with_partition_columns(partition_by.to_vec())
            .with_save_mode(SaveMode::Ignore)
            .with_commit_properties(CommitProperties::default().with_max_retries(0))
            .await;
        match created {
            Ok(_) => {}
            Err(e) if lost_race(&e) => {
                tracing::debug!(table = %shown, "another writer created the table first");
            }
            Err(e) => return Err(delta(e)),
        }
        table.update_state().await.map_err(delta)?;
    }
    let existing = table
        .snapshot()
        .map_err(delta)?
        .metadata()
        .partition_columns();
    if existing.to_vec() != partition_by {
        return Err(Error::Table {
            table: shown.to_string(),
            message: format!(
                "the table is partitioned by {existing:?}, the sink by {partition_by:?}; make `partition_by` match the table"
            ),
        });
    }
    Ok(())
}

/// The loaded table's columns as Arrow types them.
pub(crate) fn arrow_schema(table: &DeltaTable, shown: &str) -> Result<SchemaRef> {
    let delta = |source| Error::Delta {
        table: shown.to_string(),
        source: Box::new(source),
    };
    let snapshot = table.snapshot().map_err(delta)?;
    let schema: arrow::datatypes::Schema =
        snapshot
            .schema()
            .as_ref()
            .try_into_arrow()
            .map_err(|e| Error::Table {
                table: shown.to_string(),
                message: format!("its schema has no Arrow form: {e}"),
            })?;
    Ok(std::sync::Arc::new(schema))
}

/// True for the errors of a commit that lost the race for its version to another writer.
fn lost_race(e: &DeltaTableError) -> bool {
    matches!(
        e,
        DeltaTableError::VersionAlreadyExists(_)
            | DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(_)
                    | TransactionError::MaxCommitAttempts(_)
                    | TransactionError::VersionAlreadyExists(_),
            }
    )
}

/// One window's commit: the files it adds, the table's files it replaces, and the application
/// transaction that makes it recognisable.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    /// `chatlake/<pipeline>.<sink>/<window key>`, or a maintenance id.
    pub app_id: String,
    /// Greater than every earlier commit's version of `app_id`.
    pub version: i64,
    pub adds: Vec<Add>,
    /// Paths (relative to the table) to remove if the table still has them.
    pub removes: HashSet<String>,
    /// Paths of `removes` that must still be in the table: an add rewritten from one of them
    /// would bring its rows back if it were gone.
    pub must_remove: HashSet<String>,
    pub operation: Operation,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Operation {
    /// A window's rows arrive (maybe replacing some).
    Append,
    /// Rows or windows leave.
    Delete,
}

/// What [`commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Committed {
    /// A new table version.
    Version(u64),
    /// The table already had this change (an earlier attempt or process committed it).
    Already,
}

/// The version of `app_id`'s last commit in the loaded table.
pub(crate) async fn txn_version(table: &DeltaTable, app_id: &str) -> DeltaResult<Option<i64>> {
    table
        .snapshot()?
        .transaction_version(table.log_store().as_ref(), app_id)
        .await
}

/// Commits `change` exactly once: reloads the table, skips it if the table has its `txn`,
/// else commits; a lost race backs off and tries again.
pub(crate) async fn commit(
    table: &mut DeltaTable,
    change: &Change,
    partition_by: &[String],
    shown: &str,
    window: &str,
) -> Result<Committed> {
    let delta = |source| Error::Delta {
        table: shown.to_string(),
        source: Box::new(source),
    };
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 0;
    loop {
        attempt += 1;
        table.update_state().await.map_err(delta)?;
        if txn_version(table, &change.app_id)
            .await
            .map_err(delta)?
            .is_some_and(|v| v >= change.version)
        {
            return Ok(Committed::Already);
        }
        let removes = removes_of(table, change).map_err(|message| Error::Table {
            table: shown.to_string(),
            message,
        })?;
        if change.adds.is_empty() && removes.is_empty() {
            return Ok(Committed::Already);
        }
        let mut actions: Vec<Action> = removes.into_iter().map(Action::Remove).collect();
        actions.extend(change.adds.iter().cloned().map(Action::Add));
        let operation = match change.operation {
            Operation::Append => DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: (!partition_by.is_empty()).then(|| partition_by.to_vec()),
                predicate: None,
            },
            Operation::Delete => DeltaOperation::Delete { predicate: None },
        };
        let snapshot = table.snapshot().map_err(delta)?;
        let result = CommitBuilder::from(
            CommitProperties::default()
                .with_max_retries(INNER_RETRIES)
                .with_application_transaction(Transaction::new_with_last_update(
                    &change.app_id,
                    change.version,
                    Some(chrono::Utc::now().timestamp_millis()),
                )),
        )
        .with_actions(actions)
        .build(Some(snapshot), table.log_store(), operation)
        .await;
        match result {
            Ok(done) => return Ok(Committed::Version(done.version())),
            Err(e) if lost_race(&e) && attempt < COMMIT_ATTEMPTS => {
                tracing::debug!(table = %shown, window, attempt, error = %e, "lost a commit race; trying again");
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) if lost_race(&e) => {
                return Err(Error::Contended {
                    table: shown.to_string(),
                    window: window.to_string(),
                    attempts: attempt,
                    source: Box::new(e),
                });
            }
            Err(e) => return Err(delta(e)),
        }
    }
}

/// The remove actions of `change` for the files the loaded table still has.
fn removes_of(table: &DeltaTable, change: &Change) -> Result<Vec<Remove>, String> {
    if change.removes.is_empty() {
        return Ok(Vec::new());
    }
    let snapshot = table.snapshot().map_err(|e| e.to_string())?;
    let mut removes = Vec::new();
    for file in snapshot.log_data().iter() {
        if change.removes.contains(file.path().as_ref()) {
            removes.push(file.remove_action(true));
        }
    }
    for path in &change.must_remove {
        if !removes.iter().any(|r| &r.path == path) {
            return Err(format!(
                "{path} left the table while its rows were being rewritten (another writer removed it); run again"
            ));
        }
    }
    Ok(removes)
}

/// `base` plus up to half of it again, so racing writers spread out.
fn jitter(base: Duration) -> Duration {
    let extra = rand::random_range(0..=base.as_millis() as u64 / 2);
    base + Duration::from_millis(extra)
}
