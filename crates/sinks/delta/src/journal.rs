//! The journal of a window written but not yet in the table: which data files its `commit`
//! wrote, under which transaction version. It is how a window the ledger recorded reaches the
//! table after the process died before publishing it (`start` rolls it forward), and how files
//! of a window the ledger never recorded are found and deleted.
//!
//! One small JSON object per window, `<table>/_chatlake/<pipeline>.<sink>/<window key>.json`,
//! written whole (an object put; a rename on a local disk) before `commit` returns. Readers of
//! the table never see it: a directory starting with `_` is no part of a Delta table, and
//! vacuum leaves it alone.

use deltalake::kernel::Add;
use deltalake::{DeltaTable, ObjectStore as _, Path};
use futures::TryStreamExt;
use object_store::{ObjectStoreExt as _, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The directory of journals, relative to the table root.
pub(crate) const JOURNAL_DIR: &str = "_chatlake";

/// A window's data files, written and durable, waiting for their Delta commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Journal {
    pub window: String,
    /// The run that wrote the files (whose removal log names the rows this window replaces).
    pub run_id: String,
    /// The version of the window's `txn` when it is committed.
    pub version: i64,
    pub adds: Vec<Add>,
}

/// The journals of one sink of one pipeline in one table.
#[derive(Debug, Clone)]
pub(crate) struct Journals {
    dir: Path,
    shown: String,
}

impl Journals {
    pub fn new(writer: &str, shown: &str) -> Self {
        Journals {
            dir: Path::from_iter([JOURNAL_DIR, writer]),
            shown: shown.to_string(),
        }
    }

    fn path(&self, window: &str) -> Path {
        self.dir.clone().join(format!("{window}.json"))
    }

    fn object_error(&self, source: object_store::Error) -> Error {
        Error::Object {
            table: self.shown.clone(),
            source,
        }
    }

    pub async fn write(&self, table: &DeltaTable, journal: &Journal) -> Result<()> {
        let bytes = serde_json::to_vec(journal).map_err(|source| Error::Journal {
            table: self.shown.clone(),
            window: journal.window.clone(),
            source,
        })?;
        table
            .object_store()
            .put(&self.path(&journal.window), PutPayload::from(bytes))
            .await
            .map_err(|e| self.object_error(e))?;
        Ok(())
    }

    /// The window's journal, if it has one.
    pub async fn read(&self, table: &DeltaTable, window: &str) -> Result<Option<Journal>> {
        let got = match table.object_store().get(&self.path(window)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.object_error(e)),
        };
        let bytes = got.bytes().await.map_err(|e| self.object_error(e))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| Error::Journal {
                table: self.shown.clone(),
                window: window.to_string(),
                source,
            })
    }

    /// Every window that has a journal.
    pub async fn windows(&self, table: &DeltaTable) -> Result<Vec<String>> {
        let listed: Vec<_> = table
            .object_store()
            .list(Some(&self.dir))
            .try_collect()
            .await
            .map_err(|e| self.object_error(e))?;
        Ok(listed
            .into_iter()
            .filter_map(|meta| {
                meta.location
                    .filename()
                    .and_then(|name| name.strip_suffix(".json"))
                    .map(str::to_string)
            })
            .collect())
    }

    pub async fn delete(&self, table: &DeltaTable, window: &str) -> Result<()> {
        match table.object_store().delete(&self.path(window)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.object_error(e)),
        }
    }
}
