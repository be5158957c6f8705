//! The sink built from its config and driven through the `Sink` trait on a local table, read
//! back with deltalake (the log) and the parquet crate (the data files).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use chatlake_core::removal::Removal;
use chatlake_core::{Batch, Sink, SinkConfig, SinkContext};
use chatlake_lake::testing::{build_context, canonical_batch, message, sink_context, window};
use deltalake::kernel::Action;
use deltalake::{DeltaTable, DeltaTableBuilder};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::json;
use url::Url;

use crate::{DeltaSink, DeltaSinkConfig};

fn build(path: &Path, sink: &str) -> DeltaSink {
    let config: DeltaSinkConfig = serde_json::from_value(json!({
        "path": path,
        "partition_by": ["provider", "sent_date"],
    }))
    .unwrap();
    config.into_sink(&build_context(sink)).unwrap()
}

async fn load(path: &Path, version: Option<u64>) -> DeltaTable {
    let url = Url::from_directory_path(std::fs::canonicalize(path).unwrap()).unwrap();
    let mut builder = DeltaTableBuilder::from_url(url).unwrap();
    if let Some(v) = version {
        builder = builder.with_version(v);
    }
    builder.load().await.unwrap()
}

/// message_id → text of every row of the table version, and how many rows there were.
async fn rows(path: &Path, version: Option<u64>) -> (BTreeMap<String, String>, usize) {
    let table = load(path, version).await;
    let mut out = BTreeMap::new();
    let mut n = 0;
    for uri in table.get_file_uris().unwrap() {
        let file = file_of(&uri);
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let ids = batch
                .column_by_name("message_id")
                .unwrap()
                .as_string::<i32>();
            let text = batch.column_by_name("text").unwrap().as_string::<i32>();
            for i in 0..batch.num_rows() {
                n += 1;
                out.insert(ids.value(i).to_string(), text.value(i).to_string());
            }
        }
    }
    (out, n)
}

/// How many protocol and metaData actions the log holds over all its versions.
fn protocol_and_metadata(path: &Path) -> (usize, usize) {
    let (mut protocols, mut metadata) = (0, 0);
    for entry in std::fs::read_dir(path.join("_delta_log")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "json") {
            for line in std::fs::read_to_string(&p).unwrap().lines() {
                let action: Action = serde_json::from_str(line).unwrap();
                match action {
                    Action::Protocol(_) => protocols += 1,
                    Action::Metadata(_) => metadata += 1,
                    _ => {}
                }
            }
        }
    }
    (protocols, metadata)
}

/// The context of a later run whose ledger lists `windows` (struct update from the shared
/// helper, so fields the core adds need no change here).
fn with_committed(name: &str, dir: &Path, windows: &[&str]) -> SinkContext {
    SinkContext {
        committed: Arc::new(windows.iter().map(|w| w.to_string()).collect()),
        ..sink_context(name, dir)
    }
}

fn msg(id: &str, text: &str) -> serde_json::Value {
    let mut m = message("zoom", id, "2025-05-01T10:00:00Z");
    m["text"] = json!(text);
    m
}

#[test]
fn example_config_builds() {
    // The example is the sink's table as a user writes it; `type` and `inputs` are the core's.
    let mut table: toml::Table = toml::from_str(DeltaSinkConfig::EXAMPLE).unwrap();
    assert_eq!(table.remove("type").unwrap().as_str(), Some("delta"));
    table.remove("inputs");
    let config: DeltaSinkConfig = table.try_into().unwrap();
    assert!(config.build(&build_context("table")).is_ok());
    let bad: DeltaSinkConfig =
        serde_json::from_value(json!({"path": "x", "partition_by": ["a", "a"]})).unwrap();
    assert_eq!(
        bad.build(&build_context("t")).err().unwrap().key,
        "partition_by[1]"
    );
}

#[tokio::test]
async fn a_window_is_one_commit_after_publish_and_invisible_before() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let cx = sink_context("table", dir.path());
    let mut sink = build(&path, "table");
    sink.start(&cx).await.unwrap();
    let w = window("zoom", 0);
    let batch = canonical_batch(&[msg("a", "1"), msg("b", "2")]);
    sink.write(Batch::new(w.clone(), batch), &cx).await.unwrap();
    sink.commit(&w, &cx).await.unwrap();
    // Committed (the ledger's turn), not yet published: the table is empty.
    assert_eq!(rows(&path, None).await.1, 0);
    sink.publish(&w, &cx).await.unwrap();
    let (got, n) = rows(&path, None).await;
    assert_eq!(n, 2);
    assert_eq!(got["a"], "1");
    // Version 0 creates the table, version 1 is the window.
    assert_eq!(load(&path, None).await.version(), Some(1));
    // Publishing again (a replay) adds nothing.
    sink.publish(&w, &cx).await.unwrap();
    assert_eq!(load(&path, None).await.version(), Some(1));
    assert_eq!(protocol_and_metadata(&path), (1, 1));
}

#[tokio::test]
async fn start_rolls_forward_ledgered_windows_and_deletes_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let cx = sink_context("table", dir.path());
    let mut sink = build(&path, "table");
    sink.start(&cx).await.unwrap();
    let (kept, lost) = (window("zoom", 0), window("zoom", 1));
    for (w, id) in [(&kept, "kept"), (&lost, "lost")] {
        let batch = canonical_batch(&[msg(id, id)]);
        sink.write(Batch::new(w.clone(), batch), &cx).await.unwrap();
        sink.commit(w, &cx).await.unwrap();
    }
    let files_before = data_files(&path);
    assert_eq!(files_before.len(), 2);
    // Killed here: the ledger recorded `kept` only. The next run's start rolls it forward and
    // deletes the files of `lost`.
    drop(sink);
    let cx2 = with_committed("table", dir.path(), &[&kept.key()]);
    let mut sink = build(&path, "table");
    sink.start(&cx2).await.unwrap();
    let (got, n) = rows(&path, None).await;
    assert_eq!(n, 1);
    assert!(got.contains_key("kept"));
    assert_eq!(data_files(&path).len(), 1);
    // A third start finds nothing to do.
    let version = load(&path, None).await.version();
    let mut sink = build(&path, "table");
    sink.start(&cx2).await.unwrap();
    assert_eq!(load(&path, None).await.version(), version);
}

fn data_files(path: &Path) -> Vec<String> {
    chatlake_lake::testing::files_under(path)
        .into_iter()
        .filter(|f| f.ends_with(".parquet") && !f.starts_with("_"))
        .collect()
}

#[tokio::test]
async fn a_reloaded_window_replaces_its_rows_in_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let cx = sink_context("table", dir.path());
    let w = window("zoom", 0);
    for (run, rows) in [
        (0, vec![msg("a", "old"), msg("b", "old")]),
        (1, vec![msg("a", "new")]),
    ] {
        let mut sink = build(&path, "table");
        sink.start(&cx).await.unwrap();
        sink.write(Batch::new(w.clone(), canonical_batch(&rows)), &cx)
            .await
            .unwrap();
        sink.commit(&w, &cx).await.unwrap();
        sink.publish(&w, &cx).await.unwrap();
        assert_eq!(load(&path, None).await.version(), Some(run + 1));
    }
    let (latest, n) = rows(&path, None).await;
    assert_eq!((n, latest["a"].as_str()), (1, "new"));
    let (earlier, n) = rows(&path, Some(1)).await;
    assert_eq!((n, earlier["a"].as_str()), (2, "old"));
}

fn keys(ids: &[&str]) -> RecordBatch {
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "message_id",
            DataType::Utf8,
            false,
        )])),
        vec![Arc::new(StringArray::from(ids.to_vec()))],
    )
    .unwrap()
}

#[tokio::test]
async fn remove_rows_rewrites_files_in_one_commit_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let cx = sink_context("table", dir.path());
    let mut sink = build(&path, "table");
    sink.start(&cx).await.unwrap();
    let w = window("zoom", 0);
    let batch = canonical_batch(&[msg("a", "1"), msg("b", "2"), msg("c", "3")]);
    sink.write(Batch::new(w.clone(), batch), &cx).await.unwrap();
    sink.commit(&w, &cx).await.unwrap();
    sink.publish(&w, &cx).await.unwrap();
    let removal = Removal {
        window: w.key(),
        keys: keys(&["b", "zz"]),
    };
    assert_eq!(sink.remove_rows(&removal, &cx).await.unwrap(), 1);
    let (got, n) = rows(&path, None).await;
    assert_eq!(n, 2);
    assert!(!got.contains_key("b"));
    let version = load(&path, None).await.version();
    assert_eq!(sink.remove_rows(&removal, &cx).await.unwrap(), 0);
    assert_eq!(load(&path, None).await.version(), version);
    // The earlier version still has the row (time travel).
    assert!(rows(&path, Some(1)).await.0.contains_key("b"));
}

#[tokio::test]
async fn drop_windows_removes_their_files_from_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let cx = sink_context("table", dir.path());
    let mut sink = build(&path, "table");
    sink.start(&cx).await.unwrap();
    let (a, b) = (window("zoom", 0), window("zoom", 1));
    for (w, id) in [(&a, "a"), (&b, "b")] {
        sink.write(Batch::new(w.clone(), canonical_batch(&[msg(id, id)])), &cx)
            .await
            .unwrap();
        sink.commit(w, &cx).await.unwrap();
        sink.publish(w, &cx).await.unwrap();
    }
    let dropped = sink
        .drop_windows(&HashSet::from([a.key()]), &cx)
        .await
        .unwrap();
    assert_eq!(dropped, 1);
    let (got, _) = rows(&path, None).await;
    assert_eq!(got.keys().collect::<Vec<_>>(), ["b"]);
    assert_eq!(
        sink.drop_windows(&HashSet::from([a.key()]), &cx)
            .await
            .unwrap(),
        0
    );
}

/// Four writers (sinks of four pipelines) commit windows to one table at once: every row is
/// in it once and the table was created once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_commit_every_window_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let mut tasks = Vec::new();
    for writer in 0..4 {
        let path = path.clone();
        let state = dir.path().join(format!("w{writer}"));
        tasks.push(tokio::spawn(async move {
            let cx = sink_context(&format!("t{writer}"), &state);
            let mut sink = build(&path, &format!("t{writer}"));
            sink.start(&cx).await.unwrap();
            for i in 0..5 {
                let w = window("zoom", i);
                let id = format!("w{writer}-{i}");
                sink.write(
                    Batch::new(w.clone(), canonical_batch(&[msg(&id, &id)])),
                    &cx,
                )
                .await
                .unwrap();
                sink.commit(&w, &cx).await.unwrap();
                sink.publish(&w, &cx).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (got, n) = rows(&path, None).await;
    assert_eq!((n, got.len()), (20, 20));
    assert_eq!(protocol_and_metadata(&path), (1, 1));
    assert_eq!(load(&path, None).await.version(), Some(20));
}

/// A file of `get_file_uris`: a `file://` URL or a plain path, depending on the table's URL.
fn file_of(uri: &str) -> std::path::PathBuf {
    match url::Url::parse(uri) {
        Ok(url) if url.scheme() == "file" => url.to_file_path().unwrap(),
        _ => std::path::PathBuf::from(uri),
    }
}

#[tokio::test]
async fn windows_spanning_many_partitions_keep_few_files_open_and_lose_no_row() {
    // Three windows written interleaved, each over twelve days (more partitions than files may
    // be open), one of them aborted: the files of the other two hold every row once.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let cx = sink_context("table", dir.path());
    let config: DeltaSinkConfig = serde_json::from_value(json!({
        "path": path,
        "partition_by": ["sent_date"],
        "target_file_size": 1,
    }))
    .unwrap();
    let mut sink = config.into_sink(&build_context("table")).unwrap();
    sink.start(&cx).await.unwrap();
    let windows: Vec<_> = (0..3).map(|i| window("zoom", i)).collect();
    let mut want = BTreeMap::new();
    for round in 0..2 {
        for (w, window) in windows.iter().enumerate() {
            let rows: Vec<serde_json::Value> = (0..12)
                .map(|day| {
                    let id = format!("w{w}-r{round}-d{day}");
                    let mut m = message("zoom", &id, &format!("2025-05-{:02}T10:00:00Z", day + 1));
                    m["text"] = json!(id);
                    if w != 1 {
                        want.insert(id.clone(), id);
                    }
                    m
                })
                .collect();
            sink.write(Batch::new(window.clone(), canonical_batch(&rows)), &cx)
                .await
                .unwrap();
        }
    }
    // Files of the aborted window are deleted; the others' wait for their commit.
    sink.abort(&windows[1], &cx).await.unwrap();
    for w in [&windows[0], &windows[2]] {
        sink.commit(w, &cx).await.unwrap();
        sink.publish(w, &cx).await.unwrap();
    }
    let (got, n) = rows(&path, None).await;
    assert_eq!(n, want.len());
    assert_eq!(got, want);
    // `target_file_size = 1`: every batch's rows of a day start a new file (2 per window and
    // day), and nothing else is in the table's directories.
    let table = load(&path, None).await;
    assert_eq!(table.get_file_uris().unwrap().count(), 2 * 2 * 12);
    assert_eq!(data_files(&path).len(), 2 * 2 * 12);
    for uri in table.get_file_uris().unwrap() {
        assert!(uri.contains("sent_date=2025-05-"), "{uri}");
    }
}
