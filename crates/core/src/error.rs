//! The error type shared by the runtime and by components that have nothing more specific to say.

use std::path::PathBuf;

/// Errors of the core and the runtime. Components keep their own `thiserror` enums and convert
/// into [`Error::Component`] at the trait boundary, keeping their message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more problems in a pipeline file; each names the file and the key path.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigErrors),

    /// A component failed; the message says which request, window or file.
    #[error("{component}: {message}")]
    Component { component: String, message: String },

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
    /// A component's failure, with its message.
    pub fn component(component: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::Component {
            component: component.into(),
            message: message.to_string(),
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

pub type Result<T, E = Error> = std::result::Result<T, E>;
