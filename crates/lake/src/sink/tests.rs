//! The lake layout driven through the `Sink` trait with a tiny JSON-lines format.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use arrow::datatypes::SchemaRef;
use arrow::json::LineDelimitedWriter;
use arrow::record_batch::RecordBatch;
use chatlake_core::{Batch, Sink};
use serde_json::{Value, json};

use super::*;
use crate::testing::{
    canonical_batch, files_under, message, sample_messages, sink_context, window,
};
use crate::text::{FileOutput, TextCompression, timestamps_as_utc_offset};
use crate::{FileFormat, FormatError, FormatWriter};

struct Lines;

struct LinesWriter(LineDelimitedWriter<FileOutput>);

impl FileFormat for Lines {
    fn extension(&self) -> &str {
        "lines"
    }
    fn create(&self, file: File, _schema: SchemaRef) -> Result<Box<dyn FormatWriter>, FormatError> {
        Ok(Box::new(LinesWriter(LineDelimitedWriter::new(
            FileOutput::new(file, TextCompression::None),
        ))))
    }
}

impl FormatWriter for LinesWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), FormatError> {
        Ok(self.0.write(&timestamps_as_utc_offset(batch)?)?)
    }
    fn finish(mut self: Box<Self>) -> Result<File, FormatError> {
        self.0.finish()?;
        Ok(self.0.into_inner().finish()?)
    }
}

fn sink(path: &Path, partition_by: &[&str], max_rows: Option<u64>) -> FileSink<Lines> {
    FileSink::new(
        Lines,
        LakeOptions {
            path: path.to_path_buf(),
            partition_by: partition_by.iter().map(|s| s.to_string()).collect(),
            max_rows_per_file: max_rows,
        },
    )
}

fn files(root: &Path) -> Vec<String> {
    files_under(root)
}

fn read_lines(path: &Path) -> Vec<Value> {
    BufReader::new(File::open(path).unwrap())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

/// The name the sink `lake` of pipeline `test` gives part `part` of test window `lw-w00003`.
fn name(window: &str, part: u32) -> String {
    let (source, index) = window.rsplit_once("-w").unwrap();
    let w = crate::testing::window(source, index.parse().unwrap());
    format!("part-test.lake.{}.{part:04}.lines", w.key())
}

#[tokio::test]
async fn commits_one_window_and_aborts_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let cx = sink_context("lake", dir.path());
    let mut s = sink(&root, &["provider", "sent_date"], None);
    let (w0, w1) = (window("lw", 0), window("zoom", 3));
    let rows = sample_messages();

    // Interleaved: w0, w1, w0.
    s.write(Batch::new(w0.clone(), canonical_batch(&rows[..2])), &cx)
        .await
        .unwrap();
    s.write(Batch::new(w1.clone(), canonical_batch(&rows[2..4])), &cx)
        .await
        .unwrap();
    s.write(Batch::new(w0.clone(), canonical_batch(&rows[4..])), &cx)
        .await
        .unwrap();
    // Nothing is visible before the commit.
    assert!(files(&root).iter().all(|f| f.ends_with(".lines.tmp")));

    s.commit(&w0, &cx).await.unwrap();
    s.abort(&w1, &cx).await.unwrap();
    s.finish(&cx).await.unwrap();

    let w0_0 = name("lw-w00000", 0);
    assert_eq!(
        files(&root),
        vec![
            format!("provider=lineworks/sent_date=2025-05-01/{w0_0}"),
            format!("provider=lineworks/sent_date=2025-05-02/{w0_0}"),
        ]
    );
    let first = read_lines(&root.join(format!("provider=lineworks/sent_date=2025-05-01/{w0_0}")));
    assert_eq!(first.len(), 2);
    assert_eq!(first[0]["message_id"], "lw-1");
    assert_eq!(first[1]["message_id"], "lw-2");
    assert_eq!(first[1]["text"], rows[1]["text"]);
    assert_eq!(first[1]["sent_at"], "2025-05-01T09:30:15.250Z");
    // Partition columns live in the path only.
    assert!(first[0].get("provider").is_none() && first[0].get("sent_date").is_none());

    let m = cx.metrics.summarize("lake", "sink", "lines", 0.0);
    assert_eq!(m.files, 2);
    let on_disk: u64 = files(&root)
        .iter()
        .map(|f| std::fs::metadata(root.join(f)).unwrap().len())
        .sum();
    assert_eq!(m.bytes, on_disk);
}

#[tokio::test]
async fn rolls_files_at_max_rows_and_keeps_them_temporary_until_commit() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("out");
    let cx = sink_context("lake", dir.path());
    let mut s = sink(&root, &[], Some(2));
    let w = window("lw", 7);
    let rows: Vec<Value> = (0..5)
        .map(|i| message("zoom", &format!("m{i}"), "2025-05-01T00:00:00Z"))
        .collect();
    s.write(Batch::new(w.clone(), canonical_batch(&rows[..3])), &cx)
        .await
        .unwrap();
    s.write(Batch::new(w.clone(), canonical_batch(&rows[3..])), &cx)
        .await
        .unwrap();
    let names: Vec<String> = (0..3).map(|p| name("lw-w00007", p)).collect();
    assert_eq!(
        files(&root),
        names.iter().map(|n| format!("{n}.tmp")).collect::<Vec<_>>()
    );
    s.commit(&w, &cx).await.unwrap();
    assert_eq!(files(&root), names);
    let counts: Vec<usize> = names
        .iter()
        .map(|n| read_lines(&root.join(n)).len())
        .collect();
    assert_eq!(counts, [2, 2, 1]);
    let ids: Vec<Value> = names
        .iter()
        .flat_map(|n| read_lines(&root.join(n)))
        .map(|v| v["message_id"].clone())
        .collect();
    assert_eq!(
        ids,
        (0..5).map(|i| json!(format!("m{i}"))).collect::<Vec<_>>()
    );
    // Without partitions every column stays in the file.
    assert_eq!(read_lines(&root.join(&names[0]))[0]["provider"], "zoom");
}

#[tokio::test]
async fn removes_its_own_stale_temporary_files_on_the_first_write() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let nested = root.join("provider=zoom/sent_date=2025-05-01");
    std::fs::create_dir_all(&nested).unwrap();
    let ours_tmp = format!("{}.tmp", name("lw-w00007", 0));
    for f in [
        ours_tmp.as_str(),
        "part-test.other.lw-0000000000000000.0000.lines.tmp",
        "part-otherpipeline.lake.lw-0000000000000000.0000.lines.tmp",
        "part-test.lake.lw-0000000000000000.0000.csv.tmp",
        "notes.lines.tmp",
    ] {
        std::fs::write(nested.join(f), "x").unwrap();
    }

    let cx = sink_context("lake", dir.path());
    let mut s = sink(&root, &["provider"], None);
    let w = window("lw", 0);
    s.write(
        Batch::new(w.clone(), canonical_batch(&sample_messages()[..1])),
        &cx,
    )
    .await
    .unwrap();
    s.commit(&w, &cx).await.unwrap();
    assert_eq!(
        files(&root),
        vec![
            format!("provider=lineworks/{}", name("lw-w00000", 0)),
            "provider=zoom/sent_date=2025-05-01/notes.lines.tmp".to_string(),
            "provider=zoom/sent_date=2025-05-01/part-otherpipeline.lake.lw-0000000000000000.0000.lines.tmp".to_string(),
            "provider=zoom/sent_date=2025-05-01/part-test.lake.lw-0000000000000000.0000.csv.tmp".to_string(),
            "provider=zoom/sent_date=2025-05-01/part-test.other.lw-0000000000000000.0000.lines.tmp".to_string(),
        ],
        "only this sink's temporary files of its format go"
    );
}

#[tokio::test]
async fn start_removes_files_of_windows_the_ledger_does_not_list() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let d = root.join("sent_date=2025-05-01");
    std::fs::create_dir_all(&d).unwrap();
    let (kept, dropped) = (name("lw-w00001", 0), name("lw-w00002", 3));
    let other_sink = name("lw-w00002", 0).replace("part-test.lake.", "part-test.archive.");
    for f in [&kept, &dropped, &other_sink] {
        std::fs::write(d.join(f), "{}\n").unwrap();
    }
    let mut cx = sink_context("lake", dir.path());
    cx.committed = std::sync::Arc::new([window("lw", 1).key()].into_iter().collect());
    let mut s = sink(&root, &["sent_date"], None);
    s.start(&cx).await.unwrap();
    let mut want = vec![
        format!("sent_date=2025-05-01/{kept}"),
        format!("sent_date=2025-05-01/{other_sink}"),
    ];
    want.sort();
    assert_eq!(files(&root), want);
}

/// A worker of a sharded run shares the lake with workers writing right now: it removes the
/// leftovers of its own unfinished windows only, never another window's uncommitted files.
#[tokio::test]
async fn a_worker_removes_only_its_own_unfinished_windows_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let d = root.join("sent_date=2025-05-01");
    std::fs::create_dir_all(&d).unwrap();
    let committed = name("lw-w00001", 0);
    let (own, own_tmp) = (
        name("lw-w00002", 0),
        format!("{}.tmp", name("lw-w00002", 1)),
    );
    let (theirs, theirs_tmp) = (
        name("lw-w00003", 0),
        format!("{}.tmp", name("lw-w00003", 1)),
    );
    for f in [&committed, &own, &own_tmp, &theirs, &theirs_tmp] {
        std::fs::write(d.join(f), "{}\n").unwrap();
    }
    let mut cx = sink_context("lake", dir.path());
    cx.committed = std::sync::Arc::new([window("lw", 1).key()].into_iter().collect());
    cx.leftovers_only_of = Some(std::sync::Arc::new(
        [window("lw", 2).key()].into_iter().collect(),
    ));
    let mut s = sink(&root, &["sent_date"], None);
    s.start(&cx).await.unwrap();
    let mut want: Vec<String> = [&committed, &theirs, &theirs_tmp]
        .iter()
        .map(|f| format!("sent_date=2025-05-01/{f}"))
        .collect();
    want.sort();
    assert_eq!(files(&root), want);
}

#[tokio::test]
async fn a_reloaded_window_keeps_its_files_until_committed_again_which_replaces_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let w = window("lw", 1);
    // Loaded earlier in two partitions and two parts; then reset.
    for (d, part) in [
        ("sent_date=2025-05-01", 0),
        ("sent_date=2025-05-01", 1),
        ("sent_date=2025-05-02", 0),
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
        std::fs::write(root.join(d).join(name("lw-w00001", part)), "{\"old\":1}\n").unwrap();
    }
    let mut cx = sink_context("lake", dir.path());
    cx.committed = std::sync::Arc::new([w.key()].into_iter().collect());
    cx.reloading = cx.committed.clone();
    let mut s = sink(&root, &["sent_date"], None);
    s.start(&cx).await.unwrap();
    assert_eq!(
        files(&root).len(),
        3,
        "start keeps a reloading window's files"
    );
    // Written again: one row, one partition. The files of the same name are replaced, the rest go.
    s.write(
        Batch::new(
            w.clone(),
            canonical_batch(&[message("lw", "new", "2025-05-01T00:00:00Z")]),
        ),
        &cx,
    )
    .await
    .unwrap();
    assert_eq!(
        files(&root).len(),
        4,
        "until the commit, the old files stay"
    );
    s.commit(&w, &cx).await.unwrap();
    let left = files(&root);
    assert_eq!(
        left,
        vec![format!("sent_date=2025-05-01/{}", name("lw-w00001", 0))]
    );
    let rows = read_lines(&root.join(&left[0]));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["message_id"], "new");
}

#[tokio::test]
async fn drop_windows_deletes_only_those_windows_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let cx = sink_context("lake", dir.path());
    let mut s = sink(&root, &[], None);
    for i in [1, 2] {
        let w = window("lw", i);
        s.write(
            Batch::new(
                w.clone(),
                canonical_batch(&[message("lw", "m", "2025-05-01T00:00:00Z")]),
            ),
            &cx,
        )
        .await
        .unwrap();
        s.commit(&w, &cx).await.unwrap();
    }
    let gone: HashSet<String> = [window("lw", 1).key()].into_iter().collect();
    assert_eq!(s.drop_windows(&gone, &cx).await.unwrap(), 1);
    assert_eq!(files(&root), vec![name("lw-w00002", 0)]);
}

#[tokio::test]
async fn a_path_claimed_by_another_state_directory_is_refused_before_anything_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let cx = sink_context("lake", dir.path());
    let mut s = sink(&root, &[], None);
    s.start(&cx).await.unwrap();
    let w = window("lw", 1);
    s.write(
        Batch::new(
            w.clone(),
            canonical_batch(&[message("lw", "m", "2025-05-01T00:00:00Z")]),
        ),
        &cx,
    )
    .await
    .unwrap();
    s.commit(&w, &cx).await.unwrap();
    assert!(
        root.join(crate::owner::manifest_name("test", "lake"))
            .is_file()
    );

    // The same pipeline and sink with another state directory (and an empty ledger).
    let mut other = sink_context("lake", dir.path());
    other.owner = std::sync::Arc::new(chatlake_core::stage::StateOwner {
        id: "another".into(),
        dir: dir.path().join("elsewhere"),
    });
    let err = sink(&root, &[], None)
        .start(&other)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("elsewhere") && err.contains("test-state"),
        "{err}"
    );
    assert_eq!(
        files(&root),
        vec![name("lw-w00001", 0)],
        "nothing was deleted"
    );
    // Another sink name of the same pipeline is another owner file: it may share the path.
    sink(&root, &[], None)
        .start(&sink_context("archive", dir.path()))
        .await
        .unwrap();
    // The owner starts again.
    let mut again = sink_context("lake", dir.path());
    again.committed = std::sync::Arc::new([w.key()].into_iter().collect());
    sink(&root, &[], None).start(&again).await.unwrap();
    assert_eq!(files(&root), vec![name("lw-w00001", 0)]);
}

#[tokio::test]
async fn escapes_partition_values_and_writes_nulls_to_the_default_partition() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let cx = sink_context("lake", dir.path());
    let mut s = sink(&root, &["conversation_id"], None);
    let mut rows = vec![
        message("zoom", "a", "2025-05-01T00:00:00Z"),
        message("zoom", "b", "2025-05-01T00:00:00Z"),
        message("zoom", "c", "2025-05-01T00:00:00Z"),
    ];
    rows[0]["conversation_id"] = json!("team/a=b:c%d 日本");
    rows[1]["conversation_id"] = json!(null);
    rows[2]["conversation_id"] = json!("..");
    let w = window("zoom", 0);
    s.write(Batch::new(w.clone(), canonical_batch(&rows)), &cx)
        .await
        .unwrap();
    s.commit(&w, &cx).await.unwrap();
    let n = name("zoom-w00000", 0);
    assert_eq!(
        files(&root),
        vec![
            format!("conversation_id=../{n}"),
            format!("conversation_id=__HIVE_DEFAULT_PARTITION__/{n}"),
            format!("conversation_id=team%2Fa%3Db%3Ac%25d 日本/{n}"),
        ]
    );
}

#[tokio::test]
async fn an_unknown_partition_column_fails_the_first_write_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let cx = sink_context("archive", dir.path());
    let mut s = sink(&root, &["provider", "sent_day"], None);
    let e = s
        .write(
            Batch::new(window("lw", 0), canonical_batch(&sample_messages())),
            &cx,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("archive: partition_by names `sent_day`, which is not a column"),
        "{e}"
    );
    assert!(e.contains("sent_date"), "{e}");
}

#[tokio::test]
async fn commit_without_rows_is_a_no_op_and_finish_commits_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let cx = sink_context("lake", dir.path());
    let mut s = sink(&root, &[], None);
    s.commit(&window("lw", 9), &cx).await.unwrap();
    s.abort(&window("lw", 8), &cx).await.unwrap();
    assert!(!root.exists());

    let w = window("lw", 1);
    s.write(
        Batch::new(w.clone(), canonical_batch(&sample_messages())),
        &cx,
    )
    .await
    .unwrap();
    s.finish(&cx).await.unwrap();
    assert_eq!(files(&root), vec![name("lw-w00001", 0)]);
    assert_eq!(read_lines(&root.join(name("lw-w00001", 0))).len(), 5);
}

#[tokio::test]
async fn a_dropped_sink_removes_its_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let cx = sink_context("lake", dir.path());
    let mut s = sink(&root, &["provider"], Some(1));
    s.write(
        Batch::new(window("lw", 0), canonical_batch(&sample_messages())),
        &cx,
    )
    .await
    .unwrap();
    assert_eq!(files(&root).len(), 5);
    drop(s);
    assert!(files(&root).is_empty());
}

#[tokio::test]
async fn a_batch_with_other_columns_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cx = sink_context("lake", dir.path());
    let mut s = sink(&dir.path().join("lake"), &[], None);
    let batch = canonical_batch(&sample_messages());
    s.write(Batch::new(window("lw", 0), batch.clone()), &cx)
        .await
        .unwrap();
    let narrower = batch.project(&[0, 1, 2]).unwrap();
    let e = s
        .write(Batch::new(window("lw", 0), narrower), &cx)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("differ from the first batch"), "{e}");
}

/// A format that holds every row in memory until flushed, and tracks the total held by all of
/// its writers, like Parquet's unfinished row groups.
struct Buffering {
    held: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    max_held: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    flushes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

struct BufferingWriter {
    file: File,
    buf: Vec<u8>,
    held: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    max_held: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    flushes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FileFormat for Buffering {
    fn extension(&self) -> &str {
        "buf"
    }
    fn create(&self, file: File, _schema: SchemaRef) -> Result<Box<dyn FormatWriter>, FormatError> {
        Ok(Box::new(BufferingWriter {
            file,
            buf: Vec::new(),
            held: self.held.clone(),
            max_held: self.max_held.clone(),
            flushes: self.flushes.clone(),
        }))
    }
}

impl FormatWriter for BufferingWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), FormatError> {
        let mut w = LineDelimitedWriter::new(Vec::new());
        w.write(&timestamps_as_utc_offset(batch)?)?;
        w.finish()?;
        let bytes = w.into_inner();
        let now = self.held.fetch_add(bytes.len(), Ordering::SeqCst) + bytes.len();
        self.max_held.fetch_max(now, Ordering::SeqCst);
        self.buf.extend_from_slice(&bytes);
        Ok(())
    }
    fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }
    fn flush_buffer(&mut self) -> Result<(), FormatError> {
        use std::io::Write;
        self.file.write_all(&self.buf)?;
        self.held.fetch_sub(self.buf.len(), Ordering::SeqCst);
        self.buf.clear();
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn finish(mut self: Box<Self>) -> Result<File, FormatError> {
        self.flush_buffer()?;
        Ok(self.file)
    }
}

use std::sync::atomic::Ordering;

#[tokio::test]
async fn open_files_are_flushed_to_stay_within_the_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (held, max_held, flushes) = (Default::default(), Default::default(), Default::default());
    let format = Buffering {
        held,
        max_held: std::sync::Arc::clone(&max_held),
        flushes: std::sync::Arc::clone(&flushes),
    };
    let budget = 16 * 1024;
    let mut sink = FileSink::new(
        format,
        LakeOptions {
            path: dir.path().to_path_buf(),
            partition_by: vec!["sent_date".into()],
            max_rows_per_file: None,
        },
    )
    .with_memory_budget(budget);
    let cx = sink_context("lake", dir.path());
    let w = window("lw", 0);
    let mut rows = 0;
    let mut biggest_batch = 0;
    for _ in 0..40 {
        let batch = canonical_batch(&sample_messages());
        rows += batch.num_rows();
        let mut probe = LineDelimitedWriter::new(Vec::new());
        probe
            .write(&timestamps_as_utc_offset(&batch).unwrap())
            .unwrap();
        probe.finish().unwrap();
        biggest_batch = biggest_batch.max(probe.into_inner().len());
        sink.write(Batch::new(w.clone(), batch), &cx).await.unwrap();
    }
    sink.commit(&w, &cx).await.unwrap();
    assert!(
        flushes.load(Ordering::SeqCst) > 0,
        "the budget was never reached"
    );
    let max = max_held.load(Ordering::SeqCst);
    assert!(
        max <= budget + biggest_batch,
        "held {max} bytes with a budget of {budget}"
    );
    // Flushing early loses nothing.
    let written: usize = files_under(dir.path())
        .iter()
        .map(|f| read_lines(&dir.path().join(f)).len())
        .sum();
    assert_eq!(written, rows);
}

#[tokio::test]
async fn at_most_max_open_files_stay_open_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    // One row per message, spread over many dates: every row of a batch opens a partition.
    let mut sink = sink(dir.path(), &["sent_date"], None);
    let cx = sink_context("lake", dir.path());
    let w = window("lw", 0);
    let messages: Vec<_> = (0..(3 * MAX_OPEN_FILES as i64))
        .map(|d| {
            let day =
                chrono::NaiveDate::from_ymd_opt(2025, 1, 1).unwrap() + chrono::Days::new(d as u64);
            message("lineworks", &format!("m{d}"), &format!("{day}T12:00:00Z"))
        })
        .collect();
    for _ in 0..2 {
        sink.write(Batch::new(w.clone(), canonical_batch(&messages)), &cx)
            .await
            .unwrap();
        let state = sink.state.as_ref().unwrap();
        let open = state
            .windows
            .values()
            .flat_map(|w| w.partitions.values())
            .filter(|p| p.open.is_some())
            .count();
        assert!(open <= MAX_OPEN_FILES, "{open} files open");
    }
    // Another window whose evicted files are still being finished in the background when it
    // is aborted: nothing of it stays, temporary or not.
    let aborted = window("lw", 1);
    sink.write(Batch::new(aborted.clone(), canonical_batch(&messages)), &cx)
        .await
        .unwrap();
    sink.abort(&aborted, &cx).await.unwrap();
    sink.commit(&w, &cx).await.unwrap();
    let files = files_under(dir.path());
    assert!(files.iter().all(|f| !f.ends_with(".tmp")), "{files:?}");
    // File names carry their window's key: one window's files only.
    let windows: std::collections::BTreeSet<&str> = files
        .iter()
        .map(|f| f.rsplit('/').next().unwrap().split('.').nth(2).unwrap())
        .collect();
    assert_eq!(windows.len(), 1, "{files:?}");
    let written: usize = files
        .iter()
        .map(|f| read_lines(&dir.path().join(f)).len())
        .sum();
    assert_eq!(written, 2 * messages.len());
}
