//! Rows an earlier run loaded that a later run replaces.
//!
//! `dedupe keep = "latest"` with `across_runs` may find, in this run's input, a newer version
//! of a row that an earlier run already committed to the lake (a Zoom message edited after it
//! was loaded). The new version is written with its own window; the old one must leave the
//! earlier window's files, or the lake would hold both. The order keeps the lake equal to what
//! one clean run would have written, whenever the process is killed:
//!
//! 1. Before any of its windows is committed, the transform makes a *removal log* durable:
//!    `<state_dir>/<pipeline>/removals/<run_id>.<transform>.arrows`, one row per replaced row:
//!    the window that replaces it, the earlier window that holds it, and its key columns.
//! 2. The new windows commit as usual (sinks rename their files, then the ledger records them).
//! 3. After the run's last commit, each sink downstream of the transform rewrites the earlier
//!    windows' files without the replaced rows ([`crate::Sink::remove_rows`]: write a temporary
//!    file, fsync, rename over the old one); then the log is deleted.
//! 4. A log left behind (the process died between 2 and 3) is applied when the next run starts,
//!    before anything else. Only rows whose replacing window the ledger lists as committed *by
//!    the run that wrote the log* count: a window that never committed replaced nothing, and the
//!    run that fetches it again writes its own log.
//!
//! Removing is idempotent (a row removed once is not there the second time), so applying a log
//! twice changes nothing. Between 2 and 3 a reader may see both versions for a moment; never
//! neither.
//!
//! Rows are matched by their key columns compared as text ([`key_cell`]): the same in Parquet,
//! CSV and JSON Lines files, and in Hive partition directories.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;

use crate::durable;
use crate::{Error, Result};

/// The column of a removal log naming the window whose rows replace the row.
pub const REPLACED_BY: &str = "_replaced_by";
/// The column of a removal log naming the earlier window that holds the row.
pub const WINDOW: &str = "_window";

/// Rows to take out of the committed files of one window: those whose key columns equal (as
/// [`key_cell`] text) a row of `keys`. `keys` holds only key columns.
#[derive(Debug, Clone)]
pub struct Removal {
    /// The window key ([`crate::Window::key`]) of the files to rewrite.
    pub window: String,
    pub keys: RecordBatch,
}

/// One cell of a key as sinks compare it: its text, `None` for null. Strings are themselves,
/// integers decimal, booleans `true`/`false`; other types cannot be compared across file formats.
pub fn key_cell(
    column: &dyn Array,
    row: usize,
) -> std::result::Result<Option<Cow<'_, str>>, String> {
    if column.is_null(row) {
        return Ok(None);
    }
    use arrow::datatypes::*;
    let text = match column.data_type() {
        DataType::Utf8 => Cow::Borrowed(column.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => Cow::Borrowed(column.as_string::<i64>().value(row)),
        DataType::Utf8View => Cow::Borrowed(column.as_string_view().value(row)),
        DataType::Int64 => Cow::Owned(column.as_primitive::<Int64Type>().value(row).to_string()),
        DataType::Int32 => Cow::Owned(column.as_primitive::<Int32Type>().value(row).to_string()),
        DataType::Int16 => Cow::Owned(column.as_primitive::<Int16Type>().value(row).to_string()),
        DataType::UInt64 => Cow::Owned(column.as_primitive::<UInt64Type>().value(row).to_string()),
        DataType::UInt32 => Cow::Owned(column.as_primitive::<UInt32Type>().value(row).to_string()),
        DataType::Boolean => Cow::Borrowed(if column.as_boolean().value(row) {
            "true"
        } else {
            "false"
        }),
        other => {
            return Err(format!(
                "a {other} column cannot identify rows to replace; use string or integer key columns"
            ));
        }
    };
    Ok(Some(text))
}

/// Appends one key cell to `buf` so that a sequence of cells has one encoding: a null is `0`,
/// a value `1`, its length (u32 LE) and its bytes. Sinks build the same bytes from their files.
pub fn encode_cell(buf: &mut Vec<u8>, cell: Option<&[u8]>) {
    match cell {
        None => buf.push(0),
        Some(bytes) => {
            buf.push(1);
            buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            buf.extend_from_slice(bytes);
        }
    }
}

/// The encoded keys ([`encode_cell`] over `columns`, in order) of every row of `keys`.
pub fn encoded_keys(
    keys: &RecordBatch,
    columns: &[&str],
) -> std::result::Result<Vec<Vec<u8>>, String> {
    let cols: Vec<&ArrayRef> = columns
        .iter()
        .map(|c| {
            keys.column_by_name(c)
                .ok_or_else(|| format!("key column `{c}` is missing from the removal"))
        })
        .collect::<std::result::Result<_, _>>()?;
    let mut out = Vec::with_capacity(keys.num_rows());
    for row in 0..keys.num_rows() {
        let mut buf = Vec::new();
        for col in &cols {
            let cell = key_cell(col.as_ref(), row)?;
            encode_cell(&mut buf, cell.as_deref().map(str::as_bytes));
        }
        out.push(buf);
    }
    Ok(out)
}

/// The removal logs of one pipeline, under `<state_dir>/<pipeline>/removals/`.
#[derive(Debug, Clone)]
pub struct RemovalLog {
    dir: PathBuf,
}

/// A removal log on disk.
#[derive(Debug, Clone)]
pub struct RemovalFile {
    pub path: PathBuf,
    /// The run that wrote it.
    pub run_id: String,
    /// The transform that wrote it: its removals go to the sinks downstream of it.
    pub transform: String,
}

impl RemovalLog {
    pub fn new(pipeline_dir: &Path) -> Self {
        RemovalLog {
            dir: pipeline_dir.join("removals"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every complete log, oldest run first; temporary files of a log that was being written
    /// when a run died are deleted (that run committed none of the windows it names). Call it
    /// only under the pipeline's run lock, before the run's own transforms start writing logs.
    pub fn pending(&self) -> Result<Vec<RemovalFile>> {
        self.scan(true)
    }

    /// Every complete log, oldest run first, touching nothing (for `state show`).
    pub fn logs(&self) -> Result<Vec<RemovalFile>> {
        self.scan(false)
    }

    fn scan(&self, delete_unfinished: bool) -> Result<Vec<RemovalFile>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&self.dir, e)),
        };
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| Error::io(&self.dir, e))?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.ends_with(".tmp") {
                if delete_unfinished {
                    std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                }
                continue;
            }
            let Some((run_id, transform)) = name
                .strip_suffix(".arrows")
                .and_then(|stem| stem.split_once('.'))
            else {
                continue;
            };
            files.push(RemovalFile {
                run_id: run_id.to_string(),
                transform: transform.to_string(),
                path,
            });
        }
        files.sort_by(|a, b| a.run_id.cmp(&b.run_id).then(a.transform.cmp(&b.transform)));
        Ok(files)
    }

    /// A log for `transform` in run `run_id`, created at the first [`RemovalWriter::append`].
    pub fn writer(&self, run_id: &str, transform: &str) -> RemovalWriter {
        let path = self.dir.join(format!("{run_id}.{transform}.arrows"));
        RemovalWriter {
            tmp: path.with_extension("arrows.tmp"),
            path,
            writer: None,
            rows: 0,
        }
    }
}

/// Writes one removal log; nothing is on disk under its final name before [`RemovalWriter::commit`].
pub struct RemovalWriter {
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<(StreamWriter<BufWriter<File>>, SchemaRef)>,
    rows: usize,
}

impl RemovalWriter {
    /// Records that the rows of `window` whose keys are the rows of `keys` are replaced by rows
    /// of `replaced_by`. Every call must pass the same key columns.
    pub fn append(&mut self, replaced_by: &str, window: &str, keys: &RecordBatch) -> Result<()> {
        if keys.num_rows() == 0 {
            return Ok(());
        }
        let n = keys.num_rows();
        let mut fields = vec![
            Field::new(REPLACED_BY, DataType::Utf8, false),
            Field::new(WINDOW, DataType::Utf8, false),
        ];
        fields.extend(keys.schema().fields().iter().map(|f| f.as_ref().clone()));
        let schema = Arc::new(Schema::new(fields));
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![replaced_by; n])),
            Arc::new(StringArray::from(vec![window; n])),
        ];
        columns.extend(keys.columns().iter().cloned());
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        if self.writer.is_none() {
            let dir = self.path.parent().expect("logs live in a directory");
            durable::create_private_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let file =
                durable::create_private_file(&self.tmp).map_err(|e| Error::io(&self.tmp, e))?;
            let writer = StreamWriter::try_new(BufWriter::new(file), &schema)?;
            self.writer = Some((writer, schema.clone()));
        }
        let (writer, expected) = self.writer.as_mut().expect("opened above");
        if *expected != schema {
            return Err(Error::component(
                "removals",
                format!(
                    "{}: the key columns changed between rows",
                    self.path.display()
                ),
            ));
        }
        writer.write(&batch)?;
        self.rows += n;
        Ok(())
    }

    /// Rows appended so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Makes the log durable under its final name (finish, fsync, rename, fsync the directory).
    /// A log with no rows writes nothing.
    pub fn commit(mut self) -> Result<()> {
        let Some((mut writer, _)) = self.writer.take() else {
            return Ok(());
        };
        writer.finish()?;
        let file = writer
            .into_inner()?
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        durable::commit_file(file, &self.tmp, &self.path)?;
        Ok(durable::sync_dir(
            self.path.parent().expect("logs live in a directory"),
        )?)
    }
}

impl Drop for RemovalWriter {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl RemovalFile {
    /// The removals of this log whose replacing window the ledger lists as committed by the run
    /// that wrote it (`committed_by`: window key → run id), one per earlier window, in the order
    /// the windows first appear.
    pub fn read(&self, committed_by: &HashMap<String, String>) -> Result<Vec<Removal>> {
        let file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let reader = StreamReader::try_new(BufReader::new(file), None)?;
        let schema = reader.schema();
        let key_indices: Vec<usize> = (2..schema.fields().len()).collect();
        let mut by_window: indexmap::IndexMap<String, Vec<RecordBatch>> = Default::default();
        for batch in reader {
            let batch = batch?;
            let replaced_by = batch.column(0).as_string::<i32>();
            let keep: arrow::array::BooleanArray = (0..batch.num_rows())
                .map(|i| {
                    Some(
                        committed_by.get(replaced_by.value(i)).map(String::as_str)
                            == Some(&self.run_id),
                    )
                })
                .collect();
            let batch = filter_record_batch(&batch, &keep)?;
            let windows = batch.column(1).as_string::<i32>();
            let keys = batch.project(&key_indices)?;
            // Each window's rows of this batch, taken together.
            let mut rows: indexmap::IndexMap<&str, Vec<u32>> = Default::default();
            for i in 0..batch.num_rows() {
                rows.entry(windows.value(i)).or_default().push(i as u32);
            }
            for (window, rows) in rows {
                let taken = arrow::compute::take_record_batch(
                    &keys,
                    &arrow::array::UInt32Array::from(rows),
                )?;
                by_window.entry(window.to_string()).or_default().push(taken);
            }
        }
        let key_schema = Arc::new(schema.project(&key_indices)?);
        by_window
            .into_iter()
            .map(|(window, parts)| {
                Ok(Removal {
                    window,
                    keys: concat_batches(&key_schema, &parts)?,
                })
            })
            .collect()
    }

    /// Deletes the log (every sink it concerns has applied it).
    pub fn delete(&self) -> Result<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&self.path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    fn keys(ids: &[&str]) -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                "provider",
                Arc::new(StringArray::from(vec!["zoom"; ids.len()])) as ArrayRef,
            ),
            (
                "message_id",
                Arc::new(StringArray::from(ids.to_vec())) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    #[test]
    fn a_log_counts_only_rows_whose_replacing_window_its_run_committed() {
        let dir = crate::config::tests::tempdir();
        let log = RemovalLog::new(&dir);
        let mut w = log.writer("r2", "unique");
        w.append("new-a", "old-1", &keys(&["m1", "m2"])).unwrap();
        w.append("new-b", "old-2", &keys(&["m3"])).unwrap();
        w.append("new-a", "old-2", &keys(&["m4"])).unwrap();
        assert!(
            !log.dir().join("r2.unique.arrows").exists(),
            "nothing under the final name before the commit"
        );
        w.commit().unwrap();

        let files = log.pending().unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(
            (files[0].run_id.as_str(), files[0].transform.as_str()),
            ("r2", "unique")
        );
        // new-b never committed; new-a was committed by r2.
        let committed = HashMap::from([
            ("new-a".to_string(), "r2".to_string()),
            ("old-1".to_string(), "r1".to_string()),
        ]);
        let removals = files[0].read(&committed).unwrap();
        let got: Vec<(String, Vec<Vec<u8>>)> = removals
            .iter()
            .map(|r| {
                (
                    r.window.clone(),
                    encoded_keys(&r.keys, &["message_id"]).unwrap(),
                )
            })
            .collect();
        let enc = |s: &str| {
            let mut b = Vec::new();
            encode_cell(&mut b, Some(s.as_bytes()));
            b
        };
        assert_eq!(
            got,
            vec![
                ("old-1".to_string(), vec![enc("m1"), enc("m2")]),
                ("old-2".to_string(), vec![enc("m4")]),
            ]
        );
        // The same window committed by another run (fetched again later) replaced nothing.
        let other = HashMap::from([("new-a".to_string(), "r3".to_string())]);
        assert!(files[0].read(&other).unwrap().is_empty());
        files[0].delete().unwrap();
        assert!(log.pending().unwrap().is_empty());
    }

    #[test]
    fn an_unfinished_log_is_deleted_and_never_applied() {
        let dir = crate::config::tests::tempdir();
        let log = RemovalLog::new(&dir);
        let mut w = log.writer("r2", "unique");
        w.append("new-a", "old-1", &keys(&["m1"])).unwrap();
        std::mem::forget(w); // killed before the commit
        assert!(log.dir().join("r2.unique.arrows.tmp").exists());
        assert!(log.pending().unwrap().is_empty());
        assert!(!log.dir().join("r2.unique.arrows.tmp").exists());
    }

    #[test]
    fn key_cells_are_text_and_null_is_not_empty() {
        let ints = Int64Array::from(vec![Some(42), None]);
        assert_eq!(key_cell(&ints, 0).unwrap().as_deref(), Some("42"));
        assert_eq!(key_cell(&ints, 1).unwrap(), None);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        encode_cell(&mut a, None);
        encode_cell(&mut b, Some(b""));
        assert_ne!(a, b);
        let floats = arrow::array::Float64Array::from(vec![1.5]);
        assert!(
            key_cell(&floats, 0)
                .unwrap_err()
                .contains("cannot identify")
        );
    }
}
