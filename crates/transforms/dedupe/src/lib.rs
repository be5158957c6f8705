//! `dedupe`: one row per key.
//!
//! * `keep = "first"` streams: a row passes if its key was not seen before. The key set holds a
//!   64-bit fingerprint per distinct key (the low half of the 128-bit xxh3 of the key bytes) in
//!   one flat table kept between 53% and 80% full: 10 to 15 bytes per key, and no more while it
//!   grows (see [`FingerprintSet`]). Two distinct keys share a fingerprint with
//!   probability about n²/2⁶⁵ over n keys (3·10⁻⁶ at 10 million keys, 3·10⁻⁴ at 100 million);
//!   a collision would drop the later key's first row as if it were a repeat.
//! * `keep = "latest"` keeps the row with the highest `version` per key (the first seen on a tie;
//!   a null version counts as the lowest, `i64::MIN`). A later row can always supersede an earlier one,
//!   so rows are emitted at the end, grouped by their window as they arrived; the runtime holds
//!   window markers back with them. The input is spilled to `<state_dir>/spill/<name>/` as it
//!   arrives, so memory does not grow with it: on disk each row costs its Arrow size (less the
//!   columns that hold one value in every row, which are remembered, not written) plus 32
//!   bytes; in memory the transform keeps, besides 4 MiB of file buffers and a few bytes per
//!   batch, only at the end a winner bitmap (1 bit per input row) and at most four of the 64 key
//!   partitions at a time (32 bytes per row of each, about 1/64 of the input; two threads sort
//!   them). The directory
//!   is removed when the transform finishes (and cleared at the first batch of the next run if
//!   the process was killed). The 128-bit key hash makes a collision practically impossible
//!   (about 10⁻²³ at 10 million keys). See `latest.rs`. The winners are read back and
//!   emitted one spilled batch at a time (`finish_next`), each sent on before the next is read.
//!
//! Key columns may be of any scalar type; a null is distinct from every value.
//!
//! `across_runs = true` (with `keep = "first"`) also drops rows whose key an earlier run
//! loaded, so lookback and overlapping windows never load a row twice. The keys a window adds are
//! written, as they come, to a temporary file that becomes `<state_dir>/dedupe/<name>/<window
//! key>.keys64` (8 bytes per key) when the window ends, before its marker goes on to the sinks;
//! at the next start only the files of windows the ledger lists as committed are read, and the
//! others (a run stopped before its commit point) are deleted. So the remembered keys are
//! exactly those of the rows in the lake. The files of a committed window that a source loads
//! again in this run (a changed input file) are not read, so the window's own earlier rows do not
//! drop their new load, and not deleted either: if the new load fails, they still count. Files
//! of the earlier format (`.keys`, 16 bytes per key) of committed windows are still read: the
//! low 8 bytes of each are its fingerprint.
//!
//! `across_runs = true` with `keep = "latest"` compares the input with the rows earlier runs
//! loaded as well: a row fetched again with the same or an older version is not loaded again,
//! and a newer version replaces the loaded one. Each run writes `<state_dir>/dedupe/<name>/<run
//! id>.latest` (28 bytes per row it emitted: key hash, version, window; see `history.rs`), read
//! back by later runs into the spill's key partitions (so on disk, not in memory) for the
//! windows the ledger lists as committed by that run; `remember` leaves older files unread. A
//! newer version is emitted with its own window, and the earlier window that holds the old one
//! goes with its key columns into the run's removal log, which the runtime has the sinks apply
//! once the new window is committed (see `chatlake_core::removal`).

mod error;
mod history;
mod latest;
mod spill_shape;

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Date32Type, Int32Type, Int64Type, TimestampMicrosecondType};
use chatlake_core::config::InvalidConfig;
use chatlake_core::removal::RemovalLog;
use chatlake_core::{
    Batch, BuildContext, DataKind, Emitter, Error, Result, Transform, TransformConfig,
    TransformContext, WindowRef,
};
pub use chatlake_fingerprint::FingerprintSet;
pub use error::{DedupeError, SpillError};
use history::History;
use latest::{LatestSpill, ReplaceEarlier};
use schemars::JsonSchema;
use serde::Deserialize;

/// Which row of a key survives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    /// The first row seen; streams in constant memory per key.
    #[default]
    First,
    /// The row with the highest `version`; spills rows to disk until the input ends.
    Latest,
}

/// Keeps one row per key.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// Columns that identify a record.
    #[serde(default = "default_key")]
    pub key: Vec<String>,
    /// `first` or `latest` (highest `version` column).
    #[serde(default)]
    pub keep: Keep,
    /// The column `keep = "latest"` compares (Int64).
    #[serde(default = "default_version")]
    pub version_column: String,
    /// Also compare with what earlier runs loaded. `keep = "first"`: drop rows whose key an
    /// earlier run loaded (keys kept under the state directory, 8 bytes each, and held in memory
    /// while the run goes). `keep = "latest"`: drop rows an earlier run loaded with the same or a
    /// newer version, and replace the loaded row with a newer version (28 bytes per loaded row
    /// on disk, read back into the spill, not memory; the sinks below must be able to take rows
    /// out of their files: Parquet, JSON Lines and CSV with a header can).
    #[serde(default)]
    pub across_runs: bool,
    /// With `across_runs`: load only the keys of windows loaded within this long before the run
    /// (e.g. `"30d"`), so memory is bounded by that period's volume instead of growing with
    /// every run. A row a source's `lookback` fetches again was first loaded at most `lookback`
    /// ago, so a `remember` at least as long as the longest lookback drops every such repeat;
    /// hand-loaded files that overlap files loaded earlier need it to cover the time between the
    /// two loads. Older key files stay on disk. Default: every key any earlier run loaded.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub remember: Option<std::time::Duration>,
}

fn default_key() -> Vec<String> {
    vec!["provider".into(), "message_id".into()]
}

fn default_version() -> String {
    "version".into()
}

impl TransformConfig for DedupeConfig {
    const TYPE: &'static str = "dedupe";
    const SUMMARY: &'static str =
        "Keeps one row per key: the first seen, or the latest by `version`.";
    const EXAMPLE: &'static str = include_str!("example.toml");

    fn build(self, cx: &BuildContext) -> Result<Box<dyn Transform>, InvalidConfig> {
        if self.key.is_empty() {
            return Err(InvalidConfig::new("key", "name at least one column"));
        }
        if let Some(dup) = self
            .key
            .iter()
            .enumerate()
            .find(|(i, k)| self.key[..*i].contains(k))
        {
            return Err(InvalidConfig::new(
                "key",
                format!("column `{}` is listed twice", dup.1),
            ));
        }
        if self.remember.is_some() && !self.across_runs {
            return Err(InvalidConfig::new(
                "remember",
                "applies to the keys of earlier runs: set across_runs = true, or remove it",
            ));
        }
        let since = self
            .remember
            .map(|d| std::time::SystemTime::from(cx.now) - d);
        let across = (self.across_runs && self.keep == Keep::First).then(|| AcrossRuns {
            dir: cx.state_dir.join("dedupe").join(&cx.name),
            committed: cx.committed.clone(),
            loaded_again: Default::default(),
            since,
            loaded: false,
            added: HashMap::new(),
        });
        let latest = (self.keep == Keep::Latest).then(|| {
            let spill = LatestSpill::new(&cx.state_dir, &cx.name);
            if !self.across_runs {
                return spill;
            }
            spill.replacing_earlier(ReplaceEarlier::new(
                History {
                    dir: cx.state_dir.join("dedupe").join(&cx.name),
                    committed_by: cx.committed_by.clone(),
                    since,
                    loaded_again: Default::default(),
                },
                RemovalLog::new(&cx.state_dir),
                &cx.name,
                &self.key,
            ))
        });
        Ok(Box::new(DedupeTransform {
            config: self,
            seen: FingerprintSet::new(),
            latest,
            key_buf: Vec::with_capacity(128),
            across,
        }))
    }
}

/// See the crate docs.
pub struct DedupeTransform {
    config: DedupeConfig,
    /// `keep = "first"`: fingerprints of the keys seen.
    seen: FingerprintSet,
    /// `keep = "latest"`: the input on disk, until the end.
    latest: Option<LatestSpill>,
    key_buf: Vec<u8>,
    across: Option<AcrossRuns>,
}

/// The fingerprint `keep = "first"` keeps of a 128-bit key hash: its low half.
fn fingerprint(hash: u128) -> u64 {
    hash as u64
}

/// The key files of `across_runs`.
struct AcrossRuns {
    dir: PathBuf,
    committed: std::sync::Arc<std::collections::HashSet<String>>,
    /// Committed windows this run loads again: their keys do not count, but their files stay
    /// (they count again if the new load does not commit).
    loaded_again: std::sync::Arc<std::collections::HashSet<String>>,
    /// `remember`: key files last written before this are left unread.
    since: Option<std::time::SystemTime>,
    loaded: bool,
    /// The temporary key file of each open window: the fingerprints it added, written as they
    /// come so that an open window costs no memory per key.
    added: HashMap<String, KeyFile>,
}

struct KeyFile {
    tmp: PathBuf,
    writer: BufWriter<std::fs::File>,
}

/// Key files: 8-byte little-endian fingerprints.
const KEYS_EXT: &str = "keys64";
/// The earlier format: 16-byte little-endian 128-bit hashes, whose low half is the fingerprint.
const LEGACY_KEYS_EXT: &str = "keys";

impl AcrossRuns {
    /// Reads the keys of committed windows into `seen`; deletes the files of any other window.
    fn load(&mut self, seen: &mut FingerprintSet) -> std::io::Result<()> {
        self.loaded = true;
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut forgotten = 0usize;
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let (window, width) = match name.rsplit_once('.') {
                Some((w, KEYS_EXT)) => (w, 8),
                Some((w, LEGACY_KEYS_EXT)) => (w, 16),
                _ => ("", 0),
            };
            if width > 0 && self.loaded_again.contains(window) {
                continue;
            }
            if width > 0 && self.committed.contains(window) {
                // The file's modification time is when its window was loaded (written, then
                // renamed into place at the window's end).
                if let Some(since) = self.since
                    && entry.metadata()?.modified()? < since
                {
                    forgotten += 1;
                    continue;
                }
                for_each_key(&path, width, |fp| {
                    seen.insert(fp);
                })?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        if forgotten > 0 {
            tracing::info!(
                dir = %self.dir.display(),
                windows = forgotten,
                "keys of windows loaded before `remember` reaches back are not loaded"
            );
        }
        Ok(())
    }

    /// The run's error for a failed `action` on the key files.
    fn error(&self, cx: &TransformContext, action: &'static str, e: std::io::Error) -> Error {
        Error::component(
            &cx.name,
            DedupeError::KeyFiles {
                action,
                dir: self.dir.clone(),
                source: e,
            },
        )
    }

    /// The temporary key file of `window`, created at its first batch.
    fn key_file(&mut self, window: String) -> std::io::Result<&mut BufWriter<std::fs::File>> {
        use std::collections::hash_map::Entry;
        match self.added.entry(window) {
            Entry::Occupied(e) => Ok(&mut e.into_mut().writer),
            Entry::Vacant(e) => {
                chatlake_core::durable::create_private_dir_all(&self.dir)?;
                let tmp = self.dir.join(format!("{}.{KEYS_EXT}.tmp", e.key()));
                let file = chatlake_core::durable::create_private_file(&tmp)?;
                let writer = BufWriter::with_capacity(16 * 1024, file);
                Ok(&mut e.insert(KeyFile { tmp, writer }).writer)
            }
        }
    }

    /// Makes the keys `window` added durable under its final name (flush, fsync, rename).
    fn save(&mut self, window: &str) -> std::io::Result<()> {
        let Some(KeyFile { tmp, writer }) = self.added.remove(window) else {
            return Ok(());
        };
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        // The error names the directory already (see `AcrossRuns::error`).
        chatlake_core::durable::commit_file(
            file,
            &tmp,
            &self.dir.join(format!("{window}.{KEYS_EXT}")),
        )
        .map_err(|e| e.source)
    }

    /// Forgets the keys `window` added: removes them from `seen` and deletes its file.
    fn forget(&mut self, window: &str, seen: &mut FingerprintSet) -> std::io::Result<()> {
        let Some(KeyFile { tmp, writer }) = self.added.remove(window) else {
            return Ok(());
        };
        drop(writer.into_inner().map_err(|e| e.into_error())?);
        for_each_key(&tmp, 8, |fp| {
            seen.remove(fp);
        })?;
        std::fs::remove_file(&tmp)
    }
}

/// The run's error for a failed spill of `keep = "latest"`.
fn spill_failed(cx: &TransformContext, e: SpillError) -> Error {
    Error::component(&cx.name, DedupeError::Spill(e))
}

/// Calls `f` with the fingerprint of each `width`-byte key (8, or 16 for the earlier format) in
/// the file at `path`.
fn for_each_key(path: &Path, width: usize, mut f: impl FnMut(u64)) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    let count = file.metadata()?.len() / width as u64;
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut key = [0u8; 16];
    for _ in 0..count {
        reader.read_exact(&mut key[..width])?;
        let low: [u8; 8] = key[..8].try_into().expect("8 bytes");
        f(u64::from_le_bytes(low));
    }
    Ok(())
}

impl DedupeTransform {
    /// One 128-bit hash per row over the key columns.
    fn hash_keys(&mut self, batch: &RecordBatch, cx: &TransformContext) -> Result<Vec<u128>> {
        let mut columns = Vec::with_capacity(self.config.key.len());
        for name in &self.config.key {
            let col = batch.column_by_name(name).ok_or_else(|| {
                Error::component(&cx.name, DedupeError::MissingKeyColumn(name.clone()))
            })?;
            columns.push(col.clone());
        }
        let mut hashes = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            self.key_buf.clear();
            for col in &columns {
                append_key(&mut self.key_buf, col, row)
                    .map_err(|e| Error::component(&cx.name, e))?;
            }
            hashes.push(xxhash_rust::xxh3::xxh3_128(&self.key_buf));
        }
        Ok(hashes)
    }
}

/// Appends one cell to the key bytes, length-prefixed so that ("ab","c") ≠ ("a","bc").
fn append_key(buf: &mut Vec<u8>, col: &ArrayRef, row: usize) -> Result<(), DedupeError> {
    if col.is_null(row) {
        buf.push(0);
        return Ok(());
    }
    buf.push(1);
    let bytes: &[u8];
    let scratch;
    match col.data_type() {
        DataType::Utf8 => bytes = col.as_string::<i32>().value(row).as_bytes(),
        DataType::LargeUtf8 => bytes = col.as_string::<i64>().value(row).as_bytes(),
        DataType::Int64 => {
            scratch = col.as_primitive::<Int64Type>().value(row).to_le_bytes();
            bytes = &scratch;
        }
        DataType::Int32 => {
            scratch = (col.as_primitive::<Int32Type>().value(row) as i64).to_le_bytes();
            bytes = &scratch;
        }
        DataType::Date32 => {
            scratch = (col.as_primitive::<Date32Type>().value(row) as i64).to_le_bytes();
            bytes = &scratch;
        }
        DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, _) => {
            scratch = col
                .as_primitive::<TimestampMicrosecondType>()
                .value(row)
                .to_le_bytes();
            bytes = &scratch;
        }
        DataType::Boolean => {
            scratch = (col.as_boolean().value(row) as i64).to_le_bytes();
            bytes = &scratch;
        }
        other => return Err(DedupeError::KeyType(other.clone())),
    }
    buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buf.extend_from_slice(bytes);
    Ok(())
}

impl Transform for DedupeTransform {
    fn output_kind(&self, input: &DataKind) -> Result<DataKind, String> {
        if input.is_canonical() {
            Ok(input.clone())
        } else {
            Err(format!(
                "dedupe needs canonical messages, but gets {input}; put a normalize transform in front"
            ))
        }
    }

    /// A row is dropped because another window held it too (or an older version of it).
    fn compares_windows(&self) -> bool {
        true
    }

    fn holds_rows_until_finish(&self) -> bool {
        self.config.keep == Keep::Latest
    }

    fn replaces_rows_of_earlier_runs(&self) -> bool {
        self.config.keep == Keep::Latest && self.config.across_runs
    }

    fn windows_loaded_again(&mut self, keys: &std::sync::Arc<std::collections::HashSet<String>>) {
        if let Some(across) = self.across.as_mut() {
            across.loaded_again = keys.clone();
        }
        if let Some(history) = self.latest.as_mut().and_then(LatestSpill::history) {
            history.loaded_again = keys.clone();
        }
    }

    fn transform(&mut self, batch: Batch, out: &mut Emitter, cx: &TransformContext) -> Result<()> {
        let hashes = self.hash_keys(&batch.data, cx)?;
        match self.config.keep {
            Keep::First => {
                if let Some(across) = self.across.as_mut()
                    && !across.loaded
                {
                    across
                        .load(&mut self.seen)
                        .map_err(|e| across.error(cx, "reading", e))?;
                }
                let fingerprints: Vec<u64> = hashes.iter().map(|h| fingerprint(*h)).collect();
                let mut new = Vec::with_capacity(fingerprints.len());
                self.seen
                    .insert_many(&fingerprints, |is_new| new.push(is_new));
                let mask = BooleanArray::from(new);
                if let Some(across) = self.across.as_mut() {
                    let window = batch.window.key();
                    let write = |across: &mut AcrossRuns| -> std::io::Result<()> {
                        let file = across.key_file(window)?;
                        for (h, new) in hashes.iter().zip(mask.values().iter()) {
                            if new {
                                file.write_all(&fingerprint(*h).to_le_bytes())?;
                            }
                        }
                        Ok(())
                    };
                    write(across).map_err(|e| across.error(cx, "writing keys to", e))?;
                }
                if mask.true_count() == mask.len() {
                    out.push(batch);
                } else {
                    out.emit(
                        batch.window.clone(),
                        filter_record_batch(&batch.data, &mask)?,
                    );
                }
            }
            Keep::Latest => {
                let Some(versions) = batch
                    .data
                    .column_by_name(&self.config.version_column)
                    .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                else {
                    return Err(Error::component(
                        &cx.name,
                        DedupeError::VersionColumn(self.config.version_column.clone()),
                    ));
                };
                let spill = self.latest.as_mut().expect("built for keep = latest");
                spill
                    .push(&batch.window, &batch.data, &hashes, versions)
                    .map_err(|e| spill_failed(cx, e))?;
            }
        }
        Ok(())
    }

    fn window_failed(&mut self, window: &WindowRef, cx: &TransformContext) -> Result<()> {
        // Rows of a failed window must not win over rows that will be committed, nor keep their
        // keys from rows of later windows.
        if let Some(spill) = self.latest.as_mut() {
            spill.window_failed(window);
        }
        if let Some(across) = self.across.as_mut() {
            across
                .forget(&window.key(), &mut self.seen)
                .map_err(|e| across.error(cx, "forgetting keys in", e))?;
        }
        Ok(())
    }

    fn window_done(
        &mut self,
        window: &WindowRef,
        _out: &mut Emitter,
        cx: &TransformContext,
    ) -> Result<()> {
        // Written before the marker goes on to the sinks: the ledger, written after them, is
        // what makes this file count at the next start.
        if let Some(across) = self.across.as_mut() {
            across
                .save(&window.key())
                .map_err(|e| across.error(cx, "writing keys to", e))?;
        }
        Ok(())
    }

    fn finish(&mut self, _out: &mut Emitter, cx: &TransformContext) -> Result<()> {
        if let Some(spill) = self.latest.as_mut() {
            spill
                .finish(&cx.run.run_id)
                .map_err(|e| spill_failed(cx, e))?;
        }
        Ok(())
    }

    /// The winners of `keep = "latest"`, one batch at a time, so they are never all in memory.
    fn finish_next(&mut self, out: &mut Emitter, cx: &TransformContext) -> Result<bool> {
        match self.latest.as_mut() {
            Some(spill) => spill.emit_next(out).map_err(|e| spill_failed(cx, e)),
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests;
