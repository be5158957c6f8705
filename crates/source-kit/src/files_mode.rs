//! `files = [globs]`: a source that loads files downloaded by hand instead of calling its API.
//! The globs are checked when the source is built; the files are found when it plans or runs,
//! one window per file in path order, and a file an earlier run committed is not loaded again.
//! The source supplies only how to read one file.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use crate::files::FilesError;
use chatlake_core::config::InvalidConfig;
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
        crate::files::check_patterns(patterns)?;
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
        let paths = crate::files::expand(&self.patterns)?;
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
        crate::files::load_concurrently(inputs, cx.windows_at_once, |(window, path)| async move {
            let window = Arc::new(window);
            let result = load(window.clone(), path).await;
            cx.out.finish_window(window, result).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatlake_core::state::{WindowRecord, WindowStatus};

    fn files_mode(dir: &std::path::Path, ledger: SourceState) -> FilesMode {
        let start = DateTime::parse_from_rfc3339("2025-01-01T00:00:00+09:00").ok();
        FilesMode::new(
            &[format!("{}/*.csv", dir.display())],
            "message_contents",
            FixedOffset::east_opt(9 * 3600).expect("+09:00 is an offset"),
            (start, None),
            Arc::new(ledger),
        )
        .expect("a valid glob")
    }

    #[test]
    fn one_window_per_file_in_path_order_without_committed_ones() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for name in ["b.csv", "a.csv", "c.csv", "notes.txt"] {
            std::fs::write(dir.path().join(name), "x").expect("written");
        }
        let all = files_mode(dir.path(), SourceState::default())
            .windows("lw")
            .expect("files match");
        let labels: Vec<String> = all.iter().map(|(w, _)| w.label.clone()).collect();
        let path = |name: &str| dir.path().join(name).display().to_string();
        assert_eq!(labels, [path("a.csv"), path("b.csv"), path("c.csv")]);
        for (i, (window, file)) in all.iter().enumerate() {
            assert_eq!(window.index, i as u32);
            assert_eq!(window.source, "lw");
            assert_eq!(window.stream, "message_contents");
            assert_eq!(window.utc_offset.local_minus_utc(), 9 * 3600);
            assert!(window.start.is_some() && window.end.is_none());
            assert_eq!(window.label, file.display().to_string());
        }

        // A later run leaves out the file an earlier one committed, and keeps the others' keys.
        let mut ledger = SourceState::default();
        let (b, _) = &all[1];
        ledger.windows.insert(
            b.key(),
            WindowRecord {
                stream: b.stream.clone(),
                label: b.label.clone(),
                start: b.start,
                end: b.end,
                status: WindowStatus::Committed,
                run_id: "r1".into(),
                at: chrono::Utc::now(),
            },
        );
        let mode = files_mode(dir.path(), ledger);
        let rest: Vec<String> = mode
            .windows("lw")
            .expect("files match")
            .iter()
            .map(|(w, _)| w.key())
            .collect();
        assert_eq!(rest, [all[0].0.key(), all[2].0.key()]);
        let plan = mode.plan("lw").expect("files match");
        assert_eq!(plan[1].request, format!("read {}", path("c.csv")));
    }

    #[test]
    fn globs_are_checked_when_built_and_a_miss_when_planned() {
        let none = FilesMode::new(
            &[],
            "s",
            FixedOffset::east_opt(0).expect("UTC"),
            (None, None),
            Arc::default(),
        );
        assert_eq!(none.expect_err("no pattern").key, "files");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let err = files_mode(dir.path(), SourceState::default())
            .plan("lw")
            .expect_err("nothing matches");
        assert!(err.to_string().contains("no file matches"), "{err}");
    }
}
