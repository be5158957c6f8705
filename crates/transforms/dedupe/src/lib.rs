//! `dedupe`: one row per key.
//!
//! * `keep = "first"` streams: a row passes if its key was not seen before. Memory is one
//!   128-bit key hash per distinct key (16 bytes in a hashbrown table, about 18–36 bytes per key
//!   with the table's spare capacity; see the README). 128 bits make a collision, which would
//!   drop a row, practically impossible (about 10⁻²³ at 10 million keys).
//! * `keep = "latest"` keeps the row with the highest `version` per key (the first seen on a tie).
//!   A later row can always supersede an earlier one, so rows are held until the input ends and
//!   then emitted, grouped by their window; the runtime holds window markers back with them.
//!
//! Key columns may be of any scalar type; a null is distinct from every value.
//!
//! `across_runs = true` (with `keep = "first"`) also drops rows whose key an earlier run
//! loaded, so lookback and overlapping windows never load a row twice. The keys a window adds are
//! written to `<state_dir>/dedupe/<name>/<window key>.keys` (16 bytes per key) when the window
//! ends, before its marker goes on to the sinks; at the next start only the files of windows the
//! ledger lists as committed are read, and the others (a run stopped before its commit point)
//! are deleted. So the remembered keys are exactly those of the rows in the lake.

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Date32Type, Int32Type, Int64Type, TimestampMicrosecondType};
use chatlake_core::config::InvalidConfig;
use chatlake_core::{
    Batch, BuildContext, DataKind, Emitter, Error, Result, Transform, TransformConfig,
    TransformContext, WindowRef,
};
use hashbrown::{HashMap, HashSet};
use schemars::JsonSchema;
use serde::Deserialize;

/// Which row of a key survives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    /// The first row seen; streams in constant memory per key.
    #[default]
    First,
    /// The row with the highest `version`; holds rows until the input ends.
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
    /// Also drop rows whose key an earlier run loaded (`keep = "first"` only). The keys are kept
    /// under the state directory, 16 bytes each, and held in memory while the run goes.
    #[serde(default)]
    pub across_runs: bool,
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
        if self.across_runs && self.keep == Keep::Latest {
            return Err(InvalidConfig::new(
                "across_runs",
                "works with keep = \"first\" only: replacing a row an earlier run wrote would mean rewriting its file",
            ));
        }
        let across = self.across_runs.then(|| AcrossRuns {
            dir: cx.state_dir.join("dedupe").join(&cx.name),
            committed: cx.committed.clone(),
            loaded: false,
            added: HashMap::new(),
        });
        Ok(Box::new(DedupeTransform {
            config: self,
            seen: HashSet::new(),
            held: Vec::new(),
            key_buf: Vec::with_capacity(128),
            across,
        }))
    }
}

/// See the crate docs.
pub struct DedupeTransform {
    config: DedupeConfig,
    /// `keep = "first"`: hashes of the keys seen.
    seen: HashSet<u128>,
    /// `keep = "latest"`: every batch with its row key hashes, until the end.
    held: Vec<(Batch, Vec<u128>)>,
    key_buf: Vec<u8>,
    across: Option<AcrossRuns>,
}

/// The key files of `across_runs`.
struct AcrossRuns {
    dir: std::path::PathBuf,
    committed: std::sync::Arc<std::collections::HashSet<String>>,
    loaded: bool,
    /// Keys each open window added, written when it ends.
    added: HashMap<String, Vec<u128>>,
}

impl AcrossRuns {
    /// Reads the keys of committed windows into `seen`; deletes the files of any other window.
    fn load(&mut self, seen: &mut HashSet<u128>) -> std::io::Result<()> {
        self.loaded = true;
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match name.strip_suffix(".keys") {
                Some(window) if self.committed.contains(window) => {
                    let bytes = std::fs::read(&path)?;
                    seen.extend(
                        bytes
                            .chunks_exact(16)
                            .map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes"))),
                    );
                }
                _ => std::fs::remove_file(&path)?,
            }
        }
        Ok(())
    }

    /// Writes the keys `window` added (temporary file, fsync, rename).
    fn save(&mut self, window: &str) -> std::io::Result<()> {
        let Some(keys) = self.added.remove(window) else {
            return Ok(());
        };
        std::fs::create_dir_all(&self.dir)?;
        let mut bytes = Vec::with_capacity(keys.len() * 16);
        for k in keys {
            bytes.extend_from_slice(&k.to_le_bytes());
        }
        let path = self.dir.join(format!("{window}.keys"));
        let tmp = self.dir.join(format!("{window}.keys.tmp"));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)
    }
}

impl DedupeTransform {
    /// One 128-bit hash per row over the key columns.
    fn hash_keys(&mut self, batch: &RecordBatch, cx: &TransformContext) -> Result<Vec<u128>> {
        let mut columns = Vec::with_capacity(self.config.key.len());
        for name in &self.config.key {
            let col = batch.column_by_name(name).ok_or_else(|| {
                Error::component(&cx.name, format!("key column `{name}` is not in the input"))
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
fn append_key(buf: &mut Vec<u8>, col: &ArrayRef, row: usize) -> Result<(), String> {
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
        other => return Err(format!("cannot use a {other} column as a dedupe key")),
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

    fn holds_rows_until_finish(&self) -> bool {
        self.config.keep == Keep::Latest
    }

    fn transform(&mut self, batch: Batch, out: &mut Emitter, cx: &TransformContext) -> Result<()> {
        let hashes = self.hash_keys(&batch.data, cx)?;
        match self.config.keep {
            Keep::First => {
                if let Some(across) = self.across.as_mut()
                    && !across.loaded
                {
                    across.load(&mut self.seen).map_err(|e| {
                        Error::component(&cx.name, format!("reading {}: {e}", across.dir.display()))
                    })?;
                }
                let mask: BooleanArray =
                    hashes.iter().map(|h| Some(self.seen.insert(*h))).collect();
                if let Some(across) = self.across.as_mut() {
                    let added = across.added.entry(batch.window.key()).or_default();
                    added.extend(
                        hashes
                            .iter()
                            .zip(mask.values().iter())
                            .filter(|(_, new)| *new)
                            .map(|(h, _)| *h),
                    );
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
                if batch
                    .data
                    .column_by_name(&self.config.version_column)
                    .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                    .is_none()
                {
                    return Err(Error::component(
                        &cx.name,
                        format!(
                            "version column `{}` is missing or not Int64",
                            self.config.version_column
                        ),
                    ));
                }
                self.held.push((batch, hashes));
            }
        }
        Ok(())
    }

    fn window_failed(&mut self, window: &WindowRef, _cx: &TransformContext) -> Result<()> {
        // Rows of a failed window must not win over rows that will be committed, nor keep their
        // keys from rows of later windows.
        self.held.retain(|(b, _)| b.window.key() != window.key());
        if let Some(across) = self.across.as_mut()
            && let Some(keys) = across.added.remove(&window.key())
        {
            for k in keys {
                self.seen.remove(&k);
            }
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
            across.save(&window.key()).map_err(|e| {
                Error::component(
                    &cx.name,
                    format!("writing keys to {}: {e}", across.dir.display()),
                )
            })?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter, _cx: &TransformContext) -> Result<()> {
        if self.config.keep != Keep::Latest {
            return Ok(());
        }
        // Pass 1: the winning (version, batch, row) per key. Pass 2: one filter per batch.
        let mut best: HashMap<u128, (i64, u32, u32)> = HashMap::new();
        for (b, (batch, hashes)) in self.held.iter().enumerate() {
            let versions = batch
                .data
                .column_by_name(&self.config.version_column)
                .expect("checked in transform");
            let versions = versions.as_primitive::<Int64Type>();
            for (row, h) in hashes.iter().enumerate() {
                let v = if versions.is_null(row) {
                    i64::MIN
                } else {
                    versions.value(row)
                };
                best.entry(*h)
                    .and_modify(|e| {
                        if v > e.0 {
                            *e = (v, b as u32, row as u32);
                        }
                    })
                    .or_insert((v, b as u32, row as u32));
            }
        }
        let mut winners: Vec<Vec<bool>> = self
            .held
            .iter()
            .map(|(b, _)| vec![false; b.num_rows()])
            .collect();
        for (_, b, row) in best.into_values() {
            winners[b as usize][row as usize] = true;
        }
        for ((batch, _), mask) in self.held.drain(..).zip(winners) {
            let mask = BooleanArray::from(mask);
            let data = filter_record_batch(&batch.data, &mask)?;
            out.emit(batch.window, data);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
