//! Errors of the LINE WORKS source. Each says what failed and where: the request and window, the
//! file, or the key file. None carries a credential.

use std::path::PathBuf;

use chatlake_http::RequestError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API or file request failed (after retries, if it was worth retrying).
    #[error(transparent)]
    Request(#[from] RequestError),

    /// The download's `302` led to a host the token may not go to; nothing was sent there.
    #[error("{window}: {refused}")]
    DownloadHost {
        window: String,
        #[source]
        refused: crate::DownloadHostRefused,
    },

    /// The service account's private key file could not be used.
    #[error("auth.private_key_file {}: {message}", .path.display())]
    Key { path: PathBuf, message: String },

    /// A CSV file (downloaded by hand, or the spool of a download) could not be read.
    #[error("{origin}: {message}")]
    File { origin: String, message: String },

    /// The `files` globs gave no files to read.
    #[error(transparent)]
    Files(#[from] chatlake_source_kit::files::FilesError),

    #[error(transparent)]
    Http(#[from] chatlake_http::Error),

    #[error(transparent)]
    Core(#[from] chatlake_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
