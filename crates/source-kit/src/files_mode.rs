//! `files = [globs]`: a source that loads files downloaded by hand instead of calling its API.
//! The globs are checked when the source is built; the files are found when it plans or runs,
//! one window per file in path order. The source supplies only how to read one file.
//!
//! **A committed file is skipped unless it changed; a changed file is loaded again whole.** A
//! file's identity is its length and modification time in nanoseconds (the "quick check" rsync
//! uses to decide a file needs no transfer), saved as the window's checkpoint before its rows go
//! out and kept in the ledger when the window commits. A committed file whose identity differs
//! is loaded again under the same window key, so the sinks replace that window's files, and the
//! source names it before the run starts ([`FilesMode::windows_loaded_again`]) so that
//! across-runs dedupe does not count the window's own earlier rows as loaded (rows other windows
//! loaded still count). A file committed before identities were kept counts as unchanged.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::UNIX_EPOCH;

use crate::files::FilesError;
use chatlake_core::config::InvalidConfig;
use chatlake_core::shard::{Share, ShareTaken};
use chatlake_core::stage::WindowError;
use chatlake_core::state::SourceState;
use chatlake_core::{PlannedWindow, SourceContext, Window, WindowRef};
use chrono::{DateTime, FixedOffset};

/// What tells a file from its earlier self: length and modification time (nanoseconds since
/// the Unix epoch, negative before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    pub len: u64,
    pub modified_ns: i128,
}

impl FileIdentity {
    /// The identity of the file at `path` now.
    pub fn of(path: &Path) -> Result<FileIdentity, FilesError> {
        let unreadable = |e: std::io::Error| FilesError::Unreadable {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let meta = std::fs::metadata(path).map_err(unreadable)?;
        let modified = meta.modified().map_err(unreadable)?;
        let modified_ns = match modified.duration_since(UNIX_EPOCH) {
            Ok(after) => after.as_nanos() as i128,
            Err(before) => -(before.duration().as_nanos() as i128),
        };
        Ok(FileIdentity {
            len: meta.len(),
            modified_ns,
        })
    }

    /// As a window checkpoint (a JSON object; the nanoseconds as a string, since JSON numbers
    /// do not hold every `i128`).
    fn to_checkpoint(self) -> serde_json::Value {
        serde_json::json!({ "file": { "len": self.len, "modified_ns": self.modified_ns.to_string() } })
    }

    /// The identity a checkpoint holds, if it holds one.
    fn from_checkpoint(value: &serde_json::Value) -> Option<FileIdentity> {
        let file = value.get("file")?;
        Some(FileIdentity {
            len: file.get("len")?.as_u64()?,
            modified_ns: file.get("modified_ns")?.as_str()?.parse().ok()?,
        })
    }
}

/// One file to load.
#[derive(Debug, Clone)]
pub struct FileWindow {
    pub window: Window,
    pub path: PathBuf,
    pub identity: FileIdentity,
    /// An earlier run committed this window, and the file changed since.
    pub loaded_again: bool,
}

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
    /// Files an earlier run committed (by window key) are not loaded again unless they changed.
    pub ledger: Arc<SourceState>,
    /// Files loaded side by side; `None`: as the runtime says ([`SourceContext::windows_at_once`]).
    pub windows_at_once: Option<usize>,
    /// The files found the first time they were looked for: what `windows_loaded_again` names
    /// before the run is what the run loads, even if a file changes in between.
    found: OnceLock<Vec<FileWindow>>,
    /// This worker's share of the files, for `run --shard` ([`FilesMode::take_share`]).
    share: Option<Share>,
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
            windows_at_once: None,
            found: OnceLock::new(),
            share: None,
        })
    }

    /// Loads `n` files at a time whatever the runtime suggests (a source that spreads one file
    /// over every core loads one at a time).
    pub fn with_windows_at_once(mut self, n: usize) -> Self {
        self.windows_at_once = Some(n.max(1));
        self
    }

    /// Loads only this worker's files (`run --shard`, see [`chatlake_core::Source::share`]):
    /// split by file, each file's window its own unit. When a transform below compares windows
    /// (dedupe), one file may hold a later version of a message another file holds, so the
    /// files stay together on one worker.
    pub fn take_share(&mut self, share: &Share) -> ShareTaken {
        if share.keep_copies_together {
            return ShareTaken::Whole;
        }
        self.share = Some(*share);
        ShareTaken::Split
    }

    /// One window per file the globs match, in path order, without the committed ones that did
    /// not change.
    pub fn windows(&self, source: &str) -> Result<Vec<FileWindow>, FilesError> {
        if let Some(found) = self.found.get() {
            return Ok(found.clone());
        }
        let paths = crate::files::expand(&self.patterns)?;
        let mut found = Vec::with_capacity(paths.len());
        for (i, path) in paths.into_iter().enumerate() {
            let window = Window {
                source: source.to_string(),
                stream: self.stream.to_string(),
                index: i as u32,
                start: self.start,
                end: self.end,
                utc_offset: self.utc_offset,
                label: path.display().to_string(),
                key_name: self.ledger.keys_from.clone(),
            };
            let identity = FileIdentity::of(&path)?;
            let key = window.key();
            let loaded_again = match self.ledger.windows.get(&key) {
                Some(record) if self.ledger.is_committed(&key) => {
                    // No identity recorded (a ledger of an earlier version): unchanged.
                    let Some(before) = record
                        .checkpoint
                        .as_ref()
                        .and_then(FileIdentity::from_checkpoint)
                    else {
                        continue;
                    };
                    if before == identity {
                        continue;
                    }
                    tracing::info!(
                        source,
                        file = %path.display(),
                        "the file changed since it was loaded; loading it again whole"
                    );
                    true
                }
                _ => false,
            };
            found.push(FileWindow {
                window,
                path,
                identity,
                loaded_again,
            });
        }
        if let Some(share) = &self.share {
            share.retain_windows(&mut found, |f| &f.window);
        }
        Ok(self.found.get_or_init(|| found).clone())
    }

    /// The committed windows this run loads again: files that changed since they were loaded
    /// (see [`chatlake_core::Source::windows_loaded_again`]). A glob that fails here fails the
    /// run later, with its error.
    pub fn windows_loaded_again(&self, source: &str) -> Vec<String> {
        self.windows(source)
            .map(|found| {
                found
                    .into_iter()
                    .filter(|f| f.loaded_again)
                    .map(|f| f.window.key())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What `chatlake plan` shows: `read <path>` per window.
    pub fn plan(&self, source: &str) -> chatlake_core::Result<Vec<PlannedWindow>> {
        Ok(self
            .windows(source)
            .map_err(|e| chatlake_core::Error::component(source, e))?
            .into_iter()
            .map(|f| PlannedWindow {
                request: if f.loaded_again {
                    format!(
                        "read {} again (changed since it was loaded)",
                        f.path.display()
                    )
                } else {
                    format!("read {}", f.path.display())
                },
                window: f.window,
            })
            .collect())
    }

    /// Loads every window with `load` (several files at once, see
    /// [`SourceContext::windows_at_once`]) and ends each the way its load went. Each file's
    /// identity is saved as its window's checkpoint before its rows go out.
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
        let at_once = self.windows_at_once.unwrap_or(cx.windows_at_once);
        crate::files::load_concurrently(inputs, at_once, |file| async move {
            let window = Arc::new(file.window);
            cx.out
                .save_checkpoint(&window, file.identity.to_checkpoint())
                .await
                .map_err(WindowError::Stop)?;
            let result = load(window.clone(), file.path).await;
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
    fn one_window_per_file_in_path_order_without_committed_unchanged_ones() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for name in ["b.csv", "a.csv", "c.csv", "notes.txt"] {
            std::fs::write(dir.path().join(name), "x").expect("written");
        }
        let all = files_mode(dir.path(), SourceState::default())
            .windows("lw")
            .expect("files match");
        let labels: Vec<String> = all.iter().map(|f| f.window.label.clone()).collect();
        let path = |name: &str| dir.path().join(name).display().to_string();
        assert_eq!(labels, [path("a.csv"), path("b.csv"), path("c.csv")]);
        for (i, f) in all.iter().enumerate() {
            let window = &f.window;
            assert_eq!(window.index, i as u32);
            assert_eq!(window.source, "lw");
            assert_eq!(window.stream, "message_contents");
            assert_eq!(window.utc_offset.local_minus_utc(), 9 * 3600);
            assert!(window.start.is_some() && window.end.is_none());
            assert_eq!(window.label, f.path.display().to_string());
            assert_eq!(f.identity.len, 1);
            assert!(!f.loaded_again);
        }

        // A later run leaves out what an earlier one committed: b with its identity, c without
        // one (a ledger written before identities were kept).
        let committed = |f: &FileWindow, checkpoint: Option<serde_json::Value>| WindowRecord {
            stream: f.window.stream.clone(),
            label: f.window.label.clone(),
            start: f.window.start,
            end: f.window.end,
            status: WindowStatus::Committed,
            run_id: "r1".into(),
            at: chrono::Utc::now(),
            checkpoint,
        };
        let mut ledger = SourceState::default();
        for (f, checkpoint) in [
            (&all[1], Some(all[1].identity.to_checkpoint())),
            (&all[2], None),
        ] {
            ledger
                .windows
                .insert(f.window.key(), committed(f, checkpoint));
        }
        let ledger = Arc::new(ledger);
        let mode = files_mode(dir.path(), (*ledger).clone());
        let rest: Vec<String> = mode
            .windows("lw")
            .expect("files match")
            .iter()
            .map(|f| f.window.key())
            .collect();
        assert_eq!(rest, [all[0].window.key()]);
        assert!(mode.windows_loaded_again("lw").is_empty());

        // b grows: it is loaded again whole, under the same key, and named before the run.
        std::fs::write(dir.path().join("b.csv"), "xy").expect("written");
        let mode = files_mode(dir.path(), (*ledger).clone());
        let again = mode.windows("lw").expect("files match");
        assert_eq!(again.len(), 2);
        assert!(again[1].loaded_again && again[1].identity.len == 2);
        assert_eq!(again[1].window.key(), all[1].window.key());
        assert_eq!(mode.windows_loaded_again("lw"), [all[1].window.key()]);
        let plan = mode.plan("lw").expect("files match");
        assert_eq!(plan[0].request, format!("read {}", path("a.csv")));
        assert_eq!(
            plan[1].request,
            format!("read {} again (changed since it was loaded)", path("b.csv"))
        );
        // What was found is what the run loads, even if a file changes meanwhile.
        std::fs::write(dir.path().join("b.csv"), "x").expect("written");
        assert_eq!(mode.windows_loaded_again("lw"), [all[1].window.key()]);
        let checkpoint = again[1].identity.to_checkpoint();
        assert_eq!(
            FileIdentity::from_checkpoint(&checkpoint),
            Some(again[1].identity)
        );
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
