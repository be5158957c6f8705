//! Removing rows through the `Sink` trait with a minimal JSON-lines format whose `filter_file`
//! counts its calls and can be told to fail.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::{ArrayRef, Float64Array, StringArray};
use arrow::datatypes::SchemaRef;
use arrow::json::LineDelimitedWriter;
use arrow::record_batch::RecordBatch;
use chatlake_core::removal::encode_cell;
use chatlake_core::{Batch, Sink};
use serde_json::{Value, json};

use crate::MissingKeyColumn;
use crate::testing::removal::{
    check_missing_key_column, check_null_integer_and_boolean_keys, check_remove_rows, removal,
    removal_by_id, snapshot,
};
use crate::testing::{
    canonical_batch, files_under, message, sample_messages, sink_context, window,
};
use crate::text::{FileOutput, TextCompression, timestamps_as_utc_offset};
use crate::{FileFormat, FileSink, Filtered, FormatError, FormatWriter, LakeOptions};

/// JSON lines; `filter_file` compares keys as the real formats do.
#[derive(Default)]
struct Lines {
    /// Calls of `filter_file`.
    filtered: Arc<AtomicUsize>,
    /// Fail the writing pass after half the kept rows.
    fail_writing: bool,
}

struct LinesWriter(LineDelimitedWriter<FileOutput>);

impl FormatWriter for LinesWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), FormatError> {
        Ok(self.0.write(&timestamps_as_utc_offset(batch)?)?)
    }
    fn finish(mut self: Box<Self>) -> Result<File, FormatError> {
        self.0.finish()?;
        Ok(self.0.into_inner().finish()?)
    }
}

/// A JSON value as key text: strings themselves, other scalars as JSON writes them.
fn cell(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

impl FileFormat for Lines {
    fn extension(&self) -> &str {
        "lines"
    }

    fn create(&self, file: File, _schema: SchemaRef) -> Result<Box<dyn FormatWriter>, FormatError> {
        Ok(Box::new(LinesWriter(LineDelimitedWriter::new(
            FileOutput::new(file, TextCompression::None),
        ))))
    }

    fn filters_rows(&self) -> Result<(), String> {
        Ok(())
    }

    fn filter_file(
        &self,
        input: File,
        key_columns: &[&str],
        goes: &dyn Fn(&[u8]) -> bool,
        output: Option<File>,
    ) -> Result<Filtered, FormatError> {
        self.filtered.fetch_add(1, Ordering::SeqCst);
        let mut out = output.map(|f| FileOutput::new(f, TextCompression::None));
        let (mut kept, mut dropped) = (0, 0);
        // Nulls are left out of lines: a column is missing only if no line has it.
        let mut seen = vec![false; key_columns.len()];
        for line in BufReader::new(input).lines() {
            let line = line?;
            let row: Value = serde_json::from_str(&line)?;
            let mut key = Vec::new();
            for (i, column) in key_columns.iter().enumerate() {
                seen[i] |= row.get(*column).is_some();
                encode_cell(
                    &mut key,
                    cell(row.get(*column)).as_deref().map(str::as_bytes),
                );
            }
            if goes(&key) {
                dropped += 1;
                continue;
            }
            kept += 1;
            if let Some(out) = &mut out {
                if self.fail_writing {
                    return Err("the disk is full".into());
                }
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")?;
            }
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(MissingKeyColumn {
                column: key_columns[i].to_string(),
                available: "…".into(),
            }
            .into());
        }
        Ok(Filtered {
            kept,
            dropped,
            output: out.map(FileOutput::finish).transpose()?,
        })
    }
}

/// Sinks writing `Lines` that share one call counter and failure switch.
fn build(format: Lines) -> impl Fn(&Path, &[&str]) -> Box<dyn Sink> {
    move |root: &Path, partition_by: &[&str]| {
        let format = Lines {
            filtered: format.filtered.clone(),
            fail_writing: format.fail_writing,
        };
        Box::new(FileSink::new(
            format,
            LakeOptions {
                path: root.to_path_buf(),
                partition_by: partition_by.iter().map(|s| s.to_string()).collect(),
                max_rows_per_file: None,
            },
        )) as Box<dyn Sink>
    }
}

fn read_ids(path: &Path) -> Vec<String> {
    BufReader::new(File::open(path).unwrap())
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(&l.unwrap()).unwrap();
            v["message_id"].as_str().unwrap().to_string()
        })
        .collect()
}

fn same_bytes(rewritten: &Path, reference: &Path) {
    assert_eq!(
        std::fs::read_to_string(rewritten).unwrap(),
        std::fs::read_to_string(reference).unwrap(),
        "{}",
        rewritten.display()
    );
}

async fn write(sink: &mut dyn Sink, w: u32, rows: &[Value], cx: &chatlake_core::SinkContext) {
    let w = window("lw", w);
    sink.write(Batch::new(w.clone(), canonical_batch(rows)), cx)
        .await
        .unwrap();
    sink.commit(&w, cx).await.unwrap();
}

#[tokio::test]
async fn the_removal_scenarios_pass() {
    let build = build(Lines::default());
    let dir = tempfile::tempdir().unwrap();
    check_remove_rows(dir.path(), "lake", &build, &read_ids, &same_bytes).await;
    let dir = tempfile::tempdir().unwrap();
    check_null_integer_and_boolean_keys(dir.path(), "lake", &build, &read_ids).await;
    let dir = tempfile::tempdir().unwrap();
    check_missing_key_column(dir.path(), "lake", &build).await;
}

#[tokio::test]
async fn files_no_key_can_be_in_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let cx = sink_context("lake", dir.path());
    let format = Lines::default();
    let filtered = format.filtered.clone();
    let build = build(format);
    let mut sink = build(&root, &["provider", "sent_date"]);
    let mut rows = sample_messages();
    rows.push(message("qlara", "q-1", "2025-05-01T00:00:00Z"));
    write(sink.as_mut(), 0, &rows, &cx).await;
    write(sink.as_mut(), 1, &rows, &cx).await;
    let other_cx = sink_context("other", dir.path());
    write(
        build(&root, &["provider", "sent_date"]).as_mut(),
        0,
        &rows,
        &other_cx,
    )
    .await;

    let removed = sink
        .remove_rows(&removal_by_id(&window("lw", 0), &[("zoom", "zm-1")]), &cx)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    // Counted: the two zoom files of window 0 of this sink; zm-1 was alone in its file, which
    // is deleted, so nothing is written.
    assert_eq!(filtered.load(Ordering::SeqCst), 2);
    let left = files_under(&root);
    assert_eq!(left.len(), 3 * 5 - 1, "{left:#?}");
}

#[tokio::test]
async fn key_columns_that_are_all_partition_columns_remove_whole_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let cx = sink_context("lake", dir.path());
    let mut sink = build(Lines::default())(&root, &["provider", "sent_date"]);
    write(sink.as_mut(), 0, &sample_messages(), &cx).await;
    let keys = removal(
        &window("lw", 0),
        vec![(
            "provider",
            Arc::new(StringArray::from(vec!["zoom"])) as ArrayRef,
        )],
    );
    assert_eq!(sink.remove_rows(&keys, &cx).await.unwrap(), 2);
    assert!(
        files_under(&root)
            .iter()
            .all(|f| f.starts_with("provider=lineworks/")),
        "{:?}",
        files_under(&root)
    );
}

#[tokio::test]
async fn null_and_empty_partition_values_are_matched_with_the_default_partition() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let cx = sink_context("lake", dir.path());
    let mut sink = build(Lines::default())(&root, &["conversation_id"]);
    let mut rows: Vec<Value> = ["a", "b", "c"]
        .iter()
        .map(|id| message("zoom", id, "2025-05-01T00:00:00Z"))
        .collect();
    rows[1]["conversation_id"] = json!(null);
    rows[2]["conversation_id"] = json!("");
    write(sink.as_mut(), 0, &rows, &cx).await;
    let w = window("lw", 0);
    let keys = |conversation: Option<&str>, id: &str| {
        removal(
            &w,
            vec![
                (
                    "conversation_id",
                    Arc::new(StringArray::from(vec![conversation])) as ArrayRef,
                ),
                (
                    "message_id",
                    Arc::new(StringArray::from(vec![id])) as ArrayRef,
                ),
            ],
        )
    };
    let before = snapshot(&root);
    assert_eq!(sink.remove_rows(&keys(None, "a"), &cx).await.unwrap(), 0);
    assert_eq!(
        sink.remove_rows(&keys(Some("room-1"), "b"), &cx)
            .await
            .unwrap(),
        0
    );
    assert_eq!(snapshot(&root), before);
    assert_eq!(sink.remove_rows(&keys(None, "b"), &cx).await.unwrap(), 1);
    assert_eq!(
        sink.remove_rows(&keys(Some(""), "c"), &cx).await.unwrap(),
        1
    );
    assert_eq!(
        files_under(&root),
        [format!(
            "conversation_id=room-1/{}",
            crate::testing::data_file_name("lake", "lw", 0, 0, "lines")
        )]
    );
}

#[tokio::test]
async fn rows_of_a_directory_shortened_from_a_long_value_are_removed_by_that_value() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let cx = sink_context("lake", dir.path());
    let mut sink = build(Lines::default())(&root, &["conversation_id"]);
    let long = "c".repeat(400);
    let mut rows: Vec<Value> = ["a", "b", "c"]
        .iter()
        .map(|id| message("zoom", id, "2025-05-01T00:00:00Z"))
        .collect();
    rows[0]["conversation_id"] = json!(long);
    rows[1]["conversation_id"] = json!(long);
    write(sink.as_mut(), 0, &rows, &cx).await;
    let files = files_under(&root);
    assert_eq!(files.len(), 2, "{files:?}");
    let shortened = files
        .iter()
        .find(|f| f.contains('~'))
        .expect("a shortened directory");
    let line = std::fs::read_to_string(root.join(shortened)).unwrap();
    assert!(
        line.contains(&format!("\"conversation_id__full\":\"{long}\"")),
        "{line}"
    );
    let w = window("lw", 0);
    let keys = removal(
        &w,
        vec![
            (
                "conversation_id",
                Arc::new(StringArray::from(vec![long.as_str()])) as ArrayRef,
            ),
            (
                "message_id",
                Arc::new(StringArray::from(vec!["a"])) as ArrayRef,
            ),
        ],
    );
    assert_eq!(sink.remove_rows(&keys, &cx).await.unwrap(), 1);
    assert_eq!(read_ids(&root.join(shortened)), ["b"]);
}

#[tokio::test]
async fn a_partition_column_missing_from_the_directories_is_compared_inside_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let cx = sink_context("lake", dir.path());
    let build = build(Lines::default());
    // Written before `provider` was a partition column: it is inside the file.
    write(build(&root, &[]).as_mut(), 0, &sample_messages(), &cx).await;
    let mut sink = build(&root, &["provider"]);
    let keys = removal_by_id(&window("lw", 0), &[("zoom", "zm-1"), ("zoom", "lw-1")]);
    assert_eq!(sink.remove_rows(&keys, &cx).await.unwrap(), 1);
    let file = root.join(crate::testing::data_file_name("lake", "lw", 0, 0, "lines"));
    assert_eq!(read_ids(&file), ["lw-1", "lw-2", "zm-2", "lw-3"]);
}

#[tokio::test]
async fn a_failed_rewrite_leaves_the_file_as_it_was_and_no_temporary_copy() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let cx = sink_context("lake", dir.path());
    let build = build(Lines {
        fail_writing: true,
        ..Lines::default()
    });
    let mut sink = build(&root, &["provider"]);
    write(sink.as_mut(), 0, &sample_messages(), &cx).await;
    let before = snapshot(&root);
    let e = sink
        .remove_rows(&removal_by_id(&window("lw", 0), &[("zoom", "zm-1")]), &cx)
        .await
        .unwrap_err()
        .to_string();
    let file = root.join(format!(
        "provider=zoom/{}",
        crate::testing::data_file_name("lake", "lw", 0, 0, "lines")
    ));
    assert!(
        e.starts_with(&format!(
            "lake: removing rows from {}: the disk is full",
            file.display()
        )),
        "{e}"
    );
    assert_eq!(snapshot(&root), before);
}

#[tokio::test]
async fn a_temporary_copy_a_killed_run_left_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let cx = sink_context("lake", dir.path());
    let mut sink = build(Lines::default())(&root, &["provider"]);
    write(sink.as_mut(), 0, &sample_messages(), &cx).await;
    let file = root.join(format!(
        "provider=zoom/{}",
        crate::testing::data_file_name("lake", "lw", 0, 0, "lines")
    ));
    let tmp = format!("{}.tmp", file.display());
    std::fs::write(&tmp, "half a copy").unwrap();
    let removed = sink
        .remove_rows(&removal_by_id(&window("lw", 0), &[("zoom", "zm-1")]), &cx)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert!(!Path::new(&tmp).exists());
    assert_eq!(read_ids(&file), ["zm-2"]);
}

#[tokio::test]
async fn keys_of_a_type_no_format_compares_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let cx = sink_context("lake", dir.path());
    let mut sink = build(Lines::default())(&root, &[]);
    write(sink.as_mut(), 0, &sample_messages(), &cx).await;
    let keys = removal(
        &window("lw", 0),
        vec![("score", Arc::new(Float64Array::from(vec![1.5])) as ArrayRef)],
    );
    let e = sink.remove_rows(&keys, &cx).await.unwrap_err().to_string();
    assert!(
        e.starts_with("lake: the keys of the rows to remove: a Float64 column cannot identify"),
        "{e}"
    );
}

/// A format that never implemented `filter_file`.
struct WriteOnly;

impl FileFormat for WriteOnly {
    fn extension(&self) -> &str {
        "wo"
    }
    fn create(
        &self,
        _file: File,
        _schema: SchemaRef,
    ) -> Result<Box<dyn FormatWriter>, FormatError> {
        Err("not used".into())
    }
}

#[tokio::test]
async fn a_format_without_filter_file_refuses_to_remove_rows() {
    let dir = tempfile::tempdir().unwrap();
    let options = LakeOptions {
        path: dir.path().to_path_buf(),
        partition_by: vec![],
        max_rows_per_file: None,
    };
    let mut sink = FileSink::new(WriteOnly, options.clone());
    let why = sink.removes_rows().unwrap_err();
    assert!(why.contains("wo files cannot be rewritten"), "{why}");
    std::fs::write(
        dir.path()
            .join(crate::testing::data_file_name("lake", "lw", 0, 0, "wo")),
        "x",
    )
    .unwrap();
    let cx = sink_context("lake", dir.path());
    let e = sink
        .remove_rows(&removal_by_id(&window("lw", 0), &[("zoom", "x")]), &cx)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cannot be rewritten"), "{e}");
    assert!(
        FileSink::new(Lines::default(), options)
            .removes_rows()
            .is_ok()
    );
}
