//! `files = [globs]`: every source can load files downloaded by hand instead of calling the API
//! (spec section 2). This is the one place that turns the globs into files.

use std::path::PathBuf;

use chatlake_core::config::InvalidConfig;

/// Why the `files` globs did not give files to read.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("files[{index}]: {message}")]
    BadPattern { index: usize, message: String },

    #[error("{path}: {message}")]
    Unreadable { path: String, message: String },

    /// A pattern that matches nothing is an error: a typo must not load an empty lake quietly.
    #[error("files[{index}]: no file matches {pattern:?} (relative paths start in {cwd})")]
    NoMatch {
        index: usize,
        pattern: String,
        cwd: String,
    },
}

/// The checks of a source's `files` option that need no disk: at least one pattern, each a glob.
pub fn check_patterns(patterns: &[String]) -> Result<(), InvalidConfig> {
    if patterns.is_empty() {
        return Err(InvalidConfig::new(
            "files",
            "list at least one file or glob (or drop `files` to call the API)",
        ));
    }
    for (i, p) in patterns.iter().enumerate() {
        glob::Pattern::new(p)
            .map_err(|e| InvalidConfig::new(format!("files[{i}]"), format!("{e}")))?;
    }
    Ok(())
}

/// The files the globs match, sorted by path and each once. Every pattern must match a file.
pub fn expand(patterns: &[String]) -> Result<Vec<PathBuf>, FilesError> {
    let mut paths = Vec::new();
    for (index, pattern) in patterns.iter().enumerate() {
        let matches = glob::glob(pattern).map_err(|e| FilesError::BadPattern {
            index,
            message: e.to_string(),
        })?;
        let before = paths.len();
        for entry in matches {
            let path = entry.map_err(|e| FilesError::Unreadable {
                path: e.path().display().to_string(),
                message: e.error().to_string(),
            })?;
            if path.is_file() {
                paths.push(path);
            }
        }
        if paths.len() == before {
            return Err(FilesError::NoMatch {
                index,
                pattern: pattern.clone(),
                cwd: std::env::current_dir()
                    .map(|d| d.display().to_string())
                    .unwrap_or_else(|_| "the working directory".into()),
            });
        }
    }
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// Runs `load` for every item, `at_once` at a time (parsers run on blocking threads, so files
/// are read on several cores; see [`chatlake_core::runtime::fetch_windows_at_once`]), and stops at the
/// first error. Used by sources that read one window per file: the windows are independent.
pub async fn load_concurrently<T, E, F, Fut>(
    items: Vec<T>,
    at_once: usize,
    load: F,
) -> Result<(), E>
where
    F: FnMut(T) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    use futures::StreamExt;
    let mut running =
        futures::stream::iter(items.into_iter().map(load)).buffer_unordered(at_once.max(1));
    while let Some(result) = running.next().await {
        result?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_expand_sorted_once_and_a_miss_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        for f in ["b.csv", "a.csv", "c.txt"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let d = dir.display();
        let got = expand(&[format!("{d}/*.csv"), format!("{d}/a.csv")]).unwrap();
        assert_eq!(got, vec![dir.join("a.csv"), dir.join("b.csv")]);
        let err = expand(&[format!("{d}/*.csv"), format!("{d}/*.json")]).unwrap_err();
        assert!(
            err.to_string().starts_with("files[1]: no file matches"),
            "{err}"
        );
        assert!(matches!(
            expand(&["[".into()]),
            Err(FilesError::BadPattern { index: 0, .. })
        ));
    }
}
