//! The data files of the windows being written: rows split by partition, encoded by the
//! Parquet sink's encoder (the same settings, its encoding threads), streamed to local files —
//! in the table's directory for a local table, in a spool for one in an object store, uploaded
//! at the window's commit — and described as Delta `add` actions.
//!
//! Memory stays flat as in the file sinks: at most [`MAX_OPEN_FILES`] files are open (the
//! least recently written is finished when another opens; a partition written again later
//! gets a new file), and their buffered row groups are flushed beyond [`MEMORY_BUDGET_BYTES`].
//! deltalake's own writer held every partition file of every open window in memory until the
//! commit (361 MiB at 1M Zoom rows, encoding on one thread).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use arrow::record_batch::RecordBatch;
use chatlake_lake::{DEFAULT_PARTITION, FileFormat, FormatWriter, Partitioner};
use chatlake_sink_parquet::ParquetFormat;
use chatlake_store::{ObjectPath, Store};
use deltalake::kernel::Add;
use futures::StreamExt;
use parquet::file::properties::WriterProperties;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::error::{Error, Result};
use crate::files::new_data_file_name;

/// Files open at once across the windows being written (as the file sinks).
pub(crate) const MAX_OPEN_FILES: usize = chatlake_lake::MAX_OPEN_FILES;

/// Row groups buffered by the open files beyond this are flushed, biggest first (as the file
/// sinks).
pub(crate) const MEMORY_BUDGET_BYTES: usize = chatlake_lake::MEMORY_BUDGET_BYTES;

/// Files uploaded at once at a window's commit (a table in an object store).
const UPLOADS_IN_FLIGHT: usize = 8;

/// Characters kept as they are in an `add` action's path (a URI reference): the rest is
/// percent-encoded, so `%` of a Hive-escaped partition value reaches readers as written.
const PATH_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'=')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.');

/// Where a table's data files are written before they are in the table.
pub(crate) enum FilesAt {
    /// The table's own directory: a file is in place when finished (no reader of the table sees
    /// it until a commit lists it).
    Table(PathBuf),
    /// A spool directory of this process; the files are uploaded to the table's store at the
    /// window's commit.
    Spool { dir: PathBuf, store: Store },
}

/// The data files of every window being written by one sink.
pub(crate) struct DataFiles {
    at: FilesAt,
    format: ParquetFormat,
    properties: WriterProperties,
    partition_by: Vec<String>,
    target_file_size: Option<u64>,
    shown: String,
    partitioner: Option<Partitioner>,
    windows: HashMap<String, WindowFiles>,
    /// A counter of writes, to finish the least recently written file first.
    writes: u64,
}

#[derive(Default)]
struct WindowFiles {
    /// By partition directory (`sent_date=2025-05-01`, `""` unpartitioned).
    open: BTreeMap<String, OpenFile>,
    finished: Vec<DataFile>,
}

struct OpenFile {
    writer: Box<dyn FormatWriter>,
    file: DataFile,
    last_write: u64,
}

/// A finished data file of a window.
#[derive(Debug, Clone)]
struct DataFile {
    /// Where it is on local disk.
    local: PathBuf,
    /// Relative to the table root, as stored (Hive-escaped directory names).
    relative: String,
    partition_values: HashMap<String, Option<String>>,
    rows: u64,
}

impl DataFiles {
    pub(crate) fn new(
        at: FilesAt,
        properties: WriterProperties,
        partition_by: Vec<String>,
        target_file_size: Option<u64>,
        shown: String,
    ) -> Self {
        DataFiles {
            at,
            format: ParquetFormat::new(properties.clone()),
            properties,
            partition_by,
            target_file_size,
            shown,
            partitioner: None,
            windows: HashMap::new(),
            writes: 0,
        }
    }

    fn error(&self, message: impl std::fmt::Display) -> Error {
        Error::Table {
            table: self.shown.clone(),
            message: message.to_string(),
        }
    }

    fn root(&self) -> &Path {
        match &self.at {
            FilesAt::Table(dir) => dir,
            FilesAt::Spool { dir, .. } => dir,
        }
    }

    /// Writes `batch` of `window` into its partitions' files.
    pub(crate) fn write(&mut self, window: &str, batch: &RecordBatch) -> Result<()> {
        let partitioner = match &self.partitioner {
            Some(p) => {
                p.check(batch).map_err(|e| self.error(e))?;
                p
            }
            None => {
                let p = Partitioner::new(batch.schema(), &self.partition_by)
                    .map_err(|e| self.error(e))?;
                self.partitioner.insert(p)
            }
        };
        let width = partitioner.data_schema().fields().len();
        let schema = partitioner.data_schema().clone();
        let groups = partitioner.split(batch).map_err(|e| self.error(e))?;
        for (dir, rows) in groups {
            if rows.num_columns() != width {
                return Err(self.error(format!(
                    "a value of a partition column ({}) is too long for a directory name; \
                     a Delta table cannot shorten it as the file sinks do",
                    self.partition_by.join(", ")
                )));
            }
            self.writes += 1;
            let writes = self.writes;
            if !self
                .windows
                .get(window)
                .is_some_and(|w| w.open.contains_key(&dir))
            {
                let file = self.open_file(&dir, &schema)?;
                self.windows
                    .entry(window.to_string())
                    .or_default()
                    .open
                    .insert(dir.clone(), file);
            }
            let files = self.windows.get_mut(window).expect("inserted above");
            let open = files.open.get_mut(&dir).expect("inserted above");
            open.writer.write(&rows).map_err(|source| Error::Table {
                table: self.shown.clone(),
                message: format!("{}: {source}", open.file.local.display()),
            })?;
            open.file.rows += rows.num_rows() as u64;
            open.last_write = writes;
            // What the file holds: its flushed row groups on disk and the one in memory.
            let full = self.target_file_size.is_some_and(|size| {
                let on_disk = fs::metadata(&open.file.local).map_or(0, |m| m.len());
                on_disk + open.writer.buffered_bytes() as u64 >= size
            });
            if full {
                let open = files.open.remove(&dir).expect("written above");
                let file = finish(open, &self.shown)?;
                files.finished.push(file);
            }
        }
        self.keep_open_files_few()?;
        self.keep_within_budget()
    }

    fn open_file(&self, dir: &str, schema: &arrow::datatypes::SchemaRef) -> Result<OpenFile> {
        let name = new_data_file_name(&self.properties);
        let relative = if dir.is_empty() {
            name
        } else {
            format!("{dir}/{name}")
        };
        let local = self.root().join(&relative);
        if let Some(parent) = local.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| self.error(format!("{}: {e}", parent.display())))?;
        }
        let file = File::create_new(&local)
            .map_err(|e| self.error(format!("{}: {e}", local.display())))?;
        let writer = self
            .format
            .create(file, schema.clone())
            .map_err(|e| self.error(format!("{}: {e}", local.display())))?;
        Ok(OpenFile {
            writer,
            file: DataFile {
                local,
                relative,
                partition_values: partition_values(dir, &self.partition_by),
                rows: 0,
            },
            last_write: 0,
        })
    }

    /// Finishes the least recently written files until at most [`MAX_OPEN_FILES`] are open.
    fn keep_open_files_few(&mut self) -> Result<()> {
        loop {
            let open: usize = self.windows.values().map(|w| w.open.len()).sum();
            if open <= MAX_OPEN_FILES {
                return Ok(());
            }
            let oldest = self
                .windows
                .iter()
                .flat_map(|(w, files)| files.open.iter().map(move |(d, f)| (f.last_write, w, d)))
                .min()
                .map(|(_, w, d)| (w.clone(), d.clone()));
            let Some((window, dir)) = oldest else {
                return Ok(());
            };
            let files = self.windows.get_mut(&window).expect("found above");
            let open = files.open.remove(&dir).expect("found above");
            files.finished.push(finish(open, &self.shown)?);
        }
    }

    /// Flushes the open files' buffered row groups, biggest first, until they hold at most half
    /// the budget.
    fn keep_within_budget(&mut self) -> Result<()> {
        let mut open: Vec<(usize, &mut OpenFile)> = self
            .windows
            .values_mut()
            .flat_map(|w| w.open.values_mut())
            .map(|f| (f.writer.buffered_bytes(), f))
            .collect();
        let mut total: usize = open.iter().map(|(b, _)| b).sum();
        if total <= MEMORY_BUDGET_BYTES {
            return Ok(());
        }
        open.sort_by_key(|(b, _)| std::cmp::Reverse(*b));
        for (bytes, file) in open {
            if total <= MEMORY_BUDGET_BYTES / 2 {
                break;
            }
            file.writer.flush_buffer().map_err(|e| Error::Table {
                table: self.shown.clone(),
                message: format!("{}: {e}", file.file.local.display()),
            })?;
            total -= bytes;
        }
        Ok(())
    }

    /// Finishes the window's files, uploads them if the table is in an object store, and
    /// returns their `add` actions (untagged).
    pub(crate) async fn finish_window(&mut self, window: &str) -> Result<Vec<Add>> {
        let Some(mut files) = self.windows.remove(window) else {
            return Ok(Vec::new());
        };
        let shown = self.shown.clone();
        for (_, open) in std::mem::take(&mut files.open) {
            files.finished.push(finish(open, &shown)?);
        }
        let finished = files.finished;
        let mut adds = Vec::with_capacity(finished.len());
        for file in &finished {
            let size = fs::metadata(&file.local)
                .map_err(|e| self.error(format!("{}: {e}", file.local.display())))?
                .len();
            adds.push(add_of(file, size));
        }
        match &self.at {
            FilesAt::Table(_) => {
                // In place already; made durable before the journal names them.
                for file in &finished {
                    File::open(&file.local)
                        .and_then(|f| f.sync_all())
                        .map_err(|e| self.error(format!("{}: {e}", file.local.display())))?;
                }
                let dirs: std::collections::BTreeSet<&Path> =
                    finished.iter().filter_map(|f| f.local.parent()).collect();
                for dir in dirs {
                    chatlake_core::durable::sync_dir(dir)
                        .map_err(|e| self.error(format!("{}: {e}", dir.display())))?;
                }
            }
            FilesAt::Spool { store, .. } => {
                let uploads: Vec<_> = finished
                    .iter()
                    .map(|f| {
                        (
                            f.local.clone(),
                            f.relative.clone(),
                            store.clone(),
                            shown.clone(),
                        )
                    })
                    .collect();
                let uploaded: Vec<Result<()>> = futures::stream::iter(uploads.into_iter().map(
                    |(local, relative, store, shown)| async move {
                        let key: ObjectPath = store.key(&relative);
                        let result =
                            store
                                .upload(&local, &key)
                                .await
                                .map(|_| ())
                                .map_err(|source| Error::Store {
                                    table: shown,
                                    source,
                                });
                        let _ = fs::remove_file(&local);
                        result
                    },
                ))
                .buffered(UPLOADS_IN_FLIGHT)
                .collect()
                .await;
                uploaded.into_iter().collect::<Result<Vec<()>>>()?;
            }
        }
        Ok(adds)
    }

    /// Drops what was written of `window`: its files are deleted (none is in the table).
    pub(crate) fn abort_window(&mut self, window: &str) {
        if let Some(files) = self.windows.remove(window) {
            for (_, open) in files.open {
                drop(open.writer);
                let _ = fs::remove_file(&open.file.local);
            }
            for file in files.finished {
                let _ = fs::remove_file(&file.local);
            }
        }
    }
}

impl Drop for DataFiles {
    /// A sink dropped with windows still being written (its run failed) removes their files.
    fn drop(&mut self) {
        let windows: Vec<String> = self.windows.keys().cloned().collect();
        for window in windows {
            self.abort_window(&window);
        }
    }
}

/// Finishes an open file's encoding (its last row group and footer).
fn finish(open: OpenFile, shown: &str) -> Result<DataFile> {
    let OpenFile { writer, file, .. } = open;
    writer.finish().map_err(|e| Error::Table {
        table: shown.to_string(),
        message: format!("{}: {e}", file.local.display()),
    })?;
    Ok(file)
}

/// The partition values of a Hive directory `a=x/b=y` written by the partitioner: its values
/// unescaped, the default partition as null.
fn partition_values(dir: &str, partition_by: &[String]) -> HashMap<String, Option<String>> {
    let mut values = HashMap::with_capacity(partition_by.len());
    for (column, segment) in partition_by.iter().zip(dir.split('/')) {
        let escaped = segment.split_once('=').map_or("", |(_, v)| v);
        let value = (escaped != DEFAULT_PARTITION)
            .then(|| percent_decode_str(escaped).decode_utf8_lossy().into_owned());
        values.insert(column.clone(), value);
    }
    values
}

/// The `add` action of a finished data file: its statistics say how many rows it holds.
fn add_of(file: &DataFile, size: u64) -> Add {
    Add {
        path: utf8_percent_encode(&file.relative, PATH_KEEP).to_string(),
        partition_values: file.partition_values.clone(),
        size: size as i64,
        modification_time: chrono::Utc::now().timestamp_millis(),
        data_change: true,
        stats: Some(format!("{{\"numRecords\":{}}}", file.rows)),
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
        clustering_provider: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_values_are_the_directories_unescaped() {
        let by = vec!["provider".to_string(), "sent_date".to_string()];
        let values = partition_values(
            "provider=a%2Fb%3Dc/sent_date=__HIVE_DEFAULT_PARTITION__",
            &by,
        );
        assert_eq!(values["provider"].as_deref(), Some("a/b=c"));
        assert_eq!(values["sent_date"], None);
        assert!(partition_values("", &[]).is_empty());
    }

    #[test]
    fn add_paths_keep_hive_escapes_as_written() {
        let file = DataFile {
            local: PathBuf::from("/x"),
            relative: "provider=a%2Fb/part-1.zstd.parquet".into(),
            partition_values: HashMap::new(),
            rows: 7,
        };
        let add = add_of(&file, 10);
        assert_eq!(add.path, "provider=a%252Fb/part-1.zstd.parquet");
        assert_eq!(add.stats.as_deref(), Some("{\"numRecords\":7}"));
    }
}
