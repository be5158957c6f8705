//! The errors of dedupe. Each names the column or file it is about and keeps its cause, so the
//! run's error (a [`chatlake_core::Error::Component`]) can be followed down to the I/O error.

use std::path::{Path, PathBuf};

use arrow::datatypes::DataType;
use chatlake_core::BoxError;

/// Why dedupe failed.
#[derive(Debug, thiserror::Error)]
pub enum DedupeError {
    #[error("key column `{0}` is not in the input")]
    MissingKeyColumn(String),

    #[error("cannot use a {0} column as a dedupe key")]
    KeyType(DataType),

    #[error("version column `{0}` is missing or not Int64")]
    VersionColumn(String),

    /// Reading or writing the key files of `keep = "first"` with `across_runs`; `action` says
    /// which ("reading", "writing keys to", "forgetting keys in").
    #[error("{action} {}: {source}", dir.display())]
    KeyFiles {
        action: &'static str,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The spill of `keep = "latest"`.
    #[error(transparent)]
    Spill(#[from] SpillError),
}

/// An I/O or Arrow error on a spill or history file of `keep = "latest"`, with the file.
#[derive(Debug)]
pub struct SpillError {
    path: PathBuf,
    reading: bool,
    source: BoxError,
}

impl std::fmt::Display for SpillError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.reading {
            "reading back"
        } else {
            "spilling to"
        };
        write!(f, "{what} {}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for SpillError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

pub(crate) fn spill_error(path: &Path, reading: bool, source: impl Into<BoxError>) -> SpillError {
    SpillError {
        path: path.to_path_buf(),
        reading,
        source: source.into(),
    }
}

impl From<chatlake_core::durable::FileError> for SpillError {
    /// A durable write (fsync, rename) failed.
    fn from(e: chatlake_core::durable::FileError) -> Self {
        spill_error(&e.path, false, e.source)
    }
}

/// Names the file an error is about.
pub(crate) trait Context<T> {
    fn writing(self, path: &Path) -> Result<T, SpillError>;
    fn reading(self, path: &Path) -> Result<T, SpillError>;
}

impl<T, E: Into<BoxError>> Context<T> for Result<T, E> {
    fn writing(self, path: &Path) -> Result<T, SpillError> {
        self.map_err(|e| spill_error(path, false, e))
    }
    fn reading(self, path: &Path) -> Result<T, SpillError> {
        self.map_err(|e| spill_error(path, true, e))
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_spill_error_keeps_its_cause_and_its_message() {
        let io = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left");
        let e: Result<(), _> = Err(io);
        let spill = e.writing(Path::new("/tmp/spill/part-07")).unwrap_err();
        assert_eq!(
            spill.to_string(),
            "spilling to /tmp/spill/part-07: no space left"
        );
        let cause = spill.source().expect("the I/O error is kept");
        assert_eq!(
            cause
                .downcast_ref::<std::io::Error>()
                .map(std::io::Error::kind),
            Some(std::io::ErrorKind::StorageFull)
        );
        let core = chatlake_core::Error::component("dedupe", DedupeError::from(spill));
        assert_eq!(
            core.to_string(),
            "dedupe: spilling to /tmp/spill/part-07: no space left"
        );
        let mut chain = 0;
        let mut next = core.source();
        while let Some(e) = next {
            chain += 1;
            next = e.source();
        }
        // Component → DedupeError (transparent: the spill error's source) → io::Error.
        assert_eq!(chain, 2);
    }
}
