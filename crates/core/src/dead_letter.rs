//! The dead-letter file: records that cannot be represented faithfully, one JSON line each with
//! the component, the window, the reason and the raw record. The run goes on without them.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::event::Window;
use crate::metrics::ComponentMetrics;
use crate::{Error, Result};

/// The extension of dead-letter files, `<state_dir>/<pipeline>/dead_letters/<run_id>.dead.json-lines`:
/// JSON Lines, named so that no data glob (`*.jsonl`, `*.jsonl*`, `*.json`) picks rejected
/// provider rows up with the lake's when the state directory sits inside the lake.
pub const EXTENSION: &str = "dead.json-lines";

/// A shared handle to the run's dead-letter file; created on the first record.
#[derive(Clone, Debug)]
pub struct DeadLetters {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    file: Option<BufWriter<File>>,
    count: u64,
}

impl DeadLetters {
    /// Dead letters of this run will go to `path` (created when the first one arrives).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DeadLetters {
            inner: Arc::new(Mutex::new(Inner {
                path: path.into(),
                file: None,
                count: 0,
            })),
        }
    }

    /// Writes one dead letter and counts it on `metrics`.
    pub fn record(
        &self,
        component: &str,
        window: Option<&Window>,
        reason: &str,
        raw: serde_json::Value,
        metrics: &ComponentMetrics,
    ) -> Result<()> {
        tracing::warn!(
            component,
            window = window.map(|w| w.label.as_str()),
            reason,
            "dead-lettered a record"
        );
        metrics.add_dead_letter();
        let line = json!({
            "component": component,
            "window": window.map(|w| w.label.as_str()),
            "window_key": window.map(Window::key),
            "reason": reason,
            "raw": raw,
        });
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| Error::component(component, "dead-letter lock poisoned"))?;
        inner.count += 1;
        let path = inner.path.clone();
        if inner.file.is_none() {
            if let Some(dir) = path.parent() {
                crate::durable::create_private_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            let file = crate::durable::private_file_options()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            inner.file = Some(BufWriter::new(file));
        }
        let file = inner.file.as_mut().expect("opened above");
        serde_json::to_writer(&mut *file, &line).map_err(|e| Error::io(&path, e.into()))?;
        file.write_all(b"\n").map_err(|e| Error::io(&path, e))
    }

    /// How many records were dead-lettered so far.
    pub fn count(&self) -> u64 {
        self.inner.lock().map(|i| i.count).unwrap_or(0)
    }

    /// The file, if anything was written to it.
    pub fn path_if_written(&self) -> Option<PathBuf> {
        let inner = self.inner.lock().ok()?;
        (inner.count > 0).then(|| inner.path.clone())
    }

    /// Flushes and fsyncs the file.
    pub fn flush(&self) -> Result<()> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| Error::component("dead letters", "lock poisoned"))?;
        let path = inner.path.clone();
        if let Some(file) = inner.file.as_mut() {
            file.flush().map_err(|e| Error::io(&path, e))?;
            file.get_ref().sync_all().map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }

    pub fn path(&self) -> PathBuf {
        self.inner
            .lock()
            .map(|i| i.path.clone())
            .unwrap_or_default()
    }
}

impl DeadLetters {
    /// A handle writing under `dir` (for tests of single stages).
    pub fn in_dir(dir: &Path) -> Self {
        DeadLetters::new(dir.join(format!("dead_letters.{EXTENSION}")))
    }
}
