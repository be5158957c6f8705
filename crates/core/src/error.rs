//! The error type shared by the runtime and by components that have nothing more specific to say.

use std::path::PathBuf;

/// Any error a component hands the runtime, kept whole so that [`std::error::Error::source`]
/// walks down to the first cause (a request's I/O error, a file's parse error).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of the core and the runtime. Components keep their own `thiserror` enums and convert
/// into [`Error::Component`] at the trait boundary, keeping the error as its source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more problems in a pipeline file; each names the file and the key path.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigErrors),

    /// A component failed; its error says which request, window or file.
    #[error("{component}: {source}")]
    Component {
        component: String,
        #[source]
        source: BoxError,
    },

    /// A downstream stage stopped taking input (it failed; its own error says why).
    #[error("{component}: downstream stage stopped")]
    DownstreamClosed { component: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}

impl Error {
    /// A component's failure: its error (kept as the source), or a message (`&str`, `String`).
    pub fn component(component: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Component {
            component: component.into(),
            source: source.into(),
        }
    }

    /// An I/O failure on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<crate::durable::FileError> for Error {
    fn from(e: crate::durable::FileError) -> Self {
        Error::Io {
            path: e.path,
            source: e.source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
