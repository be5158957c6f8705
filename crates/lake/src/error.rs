//! Errors of the lake layer; every one names the file or the column it is about.

use std::path::PathBuf;

use arrow::datatypes::DataType;

use crate::format::FormatError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A durable write (fsync, rename) failed; says the same as [`Error::Io`].
    #[error(transparent)]
    Durable(#[from] chatlake_core::durable::FileError),

    /// The format writer failed to encode or write rows.
    #[error("writing {}: {source}", path.display())]
    Write { path: PathBuf, source: FormatError },

    /// `partition_by` names a column the input does not have.
    #[error(
        "partition_by names `{column}`, which is not a column of the input (columns: {available})"
    )]
    UnknownPartitionColumn { column: String, available: String },

    /// A partition column whose values cannot name a directory.
    #[error(
        "partition column `{column}` has type {data_type}; partition by a string, date, integer or boolean column"
    )]
    PartitionType { column: String, data_type: DataType },

    /// Every column would be moved into the path, leaving nothing to write.
    #[error("every column is a partition column; leave at least one column out of partition_by")]
    NothingToWrite,

    /// A batch whose columns differ from the first batch's.
    #[error("a batch has columns ({found}) that differ from the first batch's ({expected})")]
    SchemaChanged { expected: String, found: String },

    /// Reading a committed file, or writing it again without some rows, failed.
    #[error("removing rows from {}: {source}", path.display())]
    Remove { path: PathBuf, source: FormatError },

    /// The keys of rows to remove cannot be compared with the files.
    #[error("the keys of the rows to remove: {0}")]
    RemovalKeys(String),

    /// The sink's path is written by another state directory (see [`crate::owner`]).
    #[error(
        "{} says this path is written by pipeline `{pipeline}` with its state in {} (id {}), \
         but this run's state is in {}: two state directories writing one path would delete \
         each other's files, so nothing was done. Give this sink another path; or, if that state \
         directory is gone for good (deleted or recreated) and this one takes over, delete the \
         manifest (files of windows this run's ledger does not list are then removed)",
        manifest.display(),
        theirs.state_dir.display(),
        theirs.state_id,
        ours.display()
    )]
    OwnedElsewhere {
        manifest: PathBuf,
        pipeline: String,
        theirs: crate::owner::Owner,
        ours: PathBuf,
    },

    /// `path` is not a place chatlake can write to (checked by `validate` too).
    #[error("path: {0}")]
    Location(#[from] chatlake_store::LocationError),

    /// An object-store request failed; says the URL and what the store answered.
    #[error(transparent)]
    Store(#[from] chatlake_store::StoreError),

    /// A file in the spool directory that cannot be named as an object key.
    #[error("{}: cannot be uploaded as an object: {message}", path.display())]
    ObjectKey { path: PathBuf, message: String },

    /// Splitting a batch by partition failed.
    #[error("splitting a batch by partition: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
