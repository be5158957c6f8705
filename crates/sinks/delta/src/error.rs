//! The delta sink's errors: each keeps its cause and says which table it concerns.

use chatlake_store::StoreError;
use deltalake::DeltaTableError;

/// What went wrong writing a Delta table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{table}: {source}")]
    Delta {
        table: String,
        // Boxed: deltalake's error is large, and every Result of this crate carries its size.
        #[source]
        source: Box<DeltaTableError>,
    },
    #[error("{table}: {source}")]
    Store {
        table: String,
        #[source]
        source: StoreError,
    },
    #[error("{table}: {source}")]
    Object {
        table: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{table}: the journal of window {window} is unreadable: {source}")]
    Journal {
        table: String,
        window: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{table}: {file}: {source}")]
    Parquet {
        table: String,
        file: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{table}: {source}")]
    Arrow {
        table: String,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("{table}: {message}")]
    Table { table: String, message: String },
    #[error(
        "{table}: the commit of window {window} did not go through after {attempts} attempts (other writers kept winning); run again to roll it forward"
    )]
    Contended {
        table: String,
        window: String,
        attempts: u32,
        #[source]
        source: Box<DeltaTableError>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
