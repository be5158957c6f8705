//! `files = [globs]`: a source that loads files downloaded by hand instead of calling its API.
//! The globs are checked when the source is built; the files are found when it plans or runs,
//! one window per file in path order, and a file an earlier run committed is not loaded again.
//! The source supplies only how to read one file.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use chatlake_core::config::InvalidConfig;
use chatlake_core::files::FilesError;
use chatlake_core::stage::WindowError;
use chatlake_core::state::SourceState;
use chatlake_core::{PlannedWindow, SourceContext, Window, WindowRef};
use chrono::{DateTime, FixedOffset};

/// A source's files mode: the globs and what each file's window carries.
#[derive(Debug, Clone)]
pub struct FilesMode {
    pub patterns: Vec<String>,
    /// The provider stream of every window.
    pub stream: &'static str,
    /// The offset the files' local times are written in.
    pub utc_offset: FixedOffset,
    /// The range the windows carry (`start`/`end` of the table, if set).
    pub start: Option<DateTime<FixedOffset>>,
    pub end: Option<DateTime<FixedOffset>>,
    /// Files an earlier run committed (by window key) are not loaded again.
    pub ledger: Arc<SourceState>,
}

impl FilesMode {
    /// Checks the globs (no disk: at least one, each a valid pattern).
    pub fn new(
        patterns: &[String],
        stream: &'static str,
        utc_offset: FixedOffset,
        range: (Option<DateTime<FixedOffset>>, Option<DateTime<FixedOffset>>),
        ledger: Arc<SourceState>,
    ) -> Result<Self, InvalidConfig> {
        chatlake_core::files::check_patterns(patterns)?;
        Ok(FilesMode {
            patterns: patterns.to_vec(),
            stream,
            utc_offset,
            start: range.0,
            end: range.1,
            ledger,
        })
    }

    /// One window per file the globs match, in path order, without those already committed.
    pub fn windows(&self, source: &str) -> Result<Vec<(Window, PathBuf)>, FilesError> {
        let paths = chatlake_core::files::expand(&self.patterns)?;
        Ok(paths
            .into_iter()
            .enumerate()
            .map(|(i, path)| {
                let window = Window {
                    source: source.to_string(),
                    stream: self.stream.to_string(),
                    index: i as u32,
                    start: self.start,
                    end: self.end,
                    utc_offset: self.utc_offset,
                    label: path.display().to_string(),
                };
                (window, path)
            })
            .filter(|(window, _)| !self.ledger.is_committed(&window.key()))
            .collect())
    }

    /// What `chatlake plan` shows: `read <path>` per window.
    pub fn plan(&self, source: &str) -> chatlake_core::Result<Vec<PlannedWindow>> {
        Ok(self
            .windows(source)
            .map_err(|e| chatlake_core::Error::component(source, e))?
            .into_iter()
            .map(|(window, path)| PlannedWindow {
                window,
                request: format!("read {}", path.display()),
            })
            .collect())
    }

    /// Loads every window with `load` (several files at once, see
    /// [`SourceContext::windows_at_once`]) and ends each the way its load went.
    pub async fn run<E, F, Fut>(
        &self,
        source: &str,
        cx: &SourceContext,
        load: F,
    ) -> Result<(), WindowError<E>>
    where
        E: fmt::Display + Sync,
        F: Fn(WindowRef, PathBuf) -> Fut,
        Fut: Future<Output = Result<(), WindowError<E>>>,
    {
        let inputs = self
            .windows(source)
            .map_err(|e| WindowError::Stop(chatlake_core::Error::component(source, e)))?;
        let load = &load;
        chatlake_core::files::load_concurrently(
            inputs,
            cx.windows_at_once,
            |(window, path)| async move {
                let window = Arc::new(window);
                let result = load(window.clone(), path).await;
                cx.out.finish_window(window, result).await
            },
        )
        .await
    }
}
