//! Errors of the Qlara source. Each says what failed and where (the request and window, the
//! export id, or the file). None carries a credential.

use chatlake_http::RequestError;
use chatlake_http::export::ExportError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API or download request failed (after retries, if it was worth retrying).
    #[error(transparent)]
    Request(#[from] RequestError),

    /// The export of a window did not produce its file (failed, timed out, link kept expiring).
    #[error("window {window}: {source}")]
    Export {
        window: String,
        #[source]
        source: ExportError,
    },

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
