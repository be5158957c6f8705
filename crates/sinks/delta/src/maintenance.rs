//! Table maintenance a Delta writer is expected to offer (`chatlake lake vacuum`).
//!
//! Checkpoints need no command: every commit runs deltalake's post-commit hook, which writes a
//! checkpoint each `delta.checkpointInterval` versions (100 by default), so a reader replays at
//! most that many JSON commits.
//!
//! Compaction (`OPTIMIZE`) is not offered: deltalake 1.1.2 has it only with its `datafusion`
//! feature, which this build leaves out, and a compacted file would hold rows of many windows,
//! while reloads, `drop_windows` and keep-latest replacement find a window's rows by its files
//! (their `chatlake.window` tag).

use std::time::Duration;

use chatlake_core::config::StorageOptions;
use chatlake_store::Location;
use deltalake::ObjectStore as _;
use deltalake::operations::vacuum::VacuumMode;
use futures::TryStreamExt as _;

use crate::config::DeltaSinkConfig;
use crate::error::{Error, Result};
use crate::table;

/// What a vacuum deleted (or would delete, on a dry run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vacuumed {
    pub files: Vec<String>,
    pub dry_run: bool,
}

/// Deletes the data files of the table of `config` that no table version younger than
/// `retention` needs: files removed from the table (replaced rows, dropped or reloaded windows)
/// and files that no version ever listed (written by a run killed before its commit). Files
/// younger than `retention` stay, so a writer still working on a window keeps its files, and a
/// reader can still travel back that far. `storage` is the pipeline's `[pipeline] storage`.
pub async fn vacuum(
    config: &DeltaSinkConfig,
    storage: &StorageOptions,
    retention: Duration,
    dry_run: bool,
) -> Result<Vacuumed> {
    let shown = config.path.display().to_string();
    let location = Location::parse(&config.path.to_string_lossy()).map_err(|e| Error::Table {
        table: shown.clone(),
        message: e.to_string(),
    })?;
    let table = table::open(&location, &config.storage.or(storage), &shown).await?;
    if table.version().is_none() {
        return Err(Error::Table {
            table: shown,
            message: "there is no Delta table here yet".into(),
        });
    }
    // A window the ledger committed and no run has published yet has its data files in the
    // table directory, listed by no version: a full vacuum would take them for a killed run's
    // leftovers once older than the retention, and the window's rows would be lost when its
    // journal is rolled forward. The next run publishes them; vacuum only after it.
    let pending: Vec<String> = table
        .object_store()
        .list(Some(&deltalake::Path::from(crate::journal::JOURNAL_DIR)))
        .try_collect::<Vec<_>>()
        .await
        .map_err(|source| Error::Object {
            table: shown.clone(),
            source,
        })?
        .into_iter()
        .map(|meta| meta.location.to_string())
        .filter(|key| key.ends_with(".json"))
        .collect();
    if !pending.is_empty() {
        return Err(Error::Table {
            table: shown,
            message: format!(
                "{} window(s) are written and not yet in the table (e.g. {}): a run was \
                 stopped between its ledger and its Delta commit, or one is running now; run \
                 the pipeline again (its start commits them), then vacuum",
                pending.len(),
                pending[0]
            ),
        });
    }
    let retention = chrono::Duration::from_std(retention).map_err(|e| Error::Table {
        table: shown.clone(),
        message: format!("retention out of range: {e}"),
    })?;
    let (_, metrics) = table
        .vacuum()
        .with_mode(VacuumMode::Full)
        .with_retention_period(retention)
        // A retention below the table's own (7 days by default) is the user's explicit choice.
        .with_enforce_retention_duration(false)
        .with_dry_run(dry_run)
        .await
        .map_err(|source| Error::Delta {
            table: shown,
            source: Box::new(source),
        })?;
    Ok(Vacuumed {
        files: metrics.files_deleted,
        dry_run: metrics.dry_run,
    })
}
