//! The object-store lake against a real S3 server (SeaweedFS on loopback), driven through the
//! `Sink` trait with a tiny JSON-lines format; and its pure pieces (keys, spools) without one.
//!
//! Each test uses a sink name of its own: the spool directory is named by pipeline, sink and
//! pid, and the tests of this binary share a pid.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::json::LineDelimitedWriter;
use arrow::record_batch::RecordBatch;
use chatlake_core::removal::encode_cell;
use chatlake_core::{Batch, Sink, SinkContext};
use chatlake_store::testing::SeaweedFs;
use chatlake_store::{Location, PutMode};
use serde_json::Value;

use super::*;
use crate::testing::removal::removal_by_id;
use crate::testing::{canonical_batch, message, sink_context, window};
use crate::text::{FileOutput, TextCompression, timestamps_as_utc_offset};
use crate::{FileSink, Filtered, FormatError, FormatWriter, LakeOptions};

/// JSON lines that can be filtered by string key columns.
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
    fn filters_rows(&self) -> Result<(), String> {
        Ok(())
    }
    fn filter_file(
        &self,
        input: File,
        key_columns: &[&str],
        goes: &dyn Fn(&[u8]) -> bool,
        mut output: Option<File>,
    ) -> Result<Filtered, FormatError> {
        let (mut kept, mut dropped) = (0, 0);
        for line in BufReader::new(input).lines() {
            let line = line?;
            let row: Value = serde_json::from_str(&line)?;
            let mut key = Vec::new();
            for column in key_columns {
                encode_cell(&mut key, row[*column].as_str().map(str::as_bytes));
            }
            if goes(&key) {
                dropped += 1;
            } else {
                kept += 1;
                if let Some(out) = output.as_mut() {
                    writeln!(out, "{line}")?;
                }
            }
        }
        Ok(Filtered {
            kept,
            dropped,
            output,
        })
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

fn object(url: &str) -> ObjectLocation {
    match Location::parse(url).unwrap() {
        Location::Object(o) => o,
        other => panic!("{other:?}"),
    }
}

fn sink(url: &str, s3: &SeaweedFs) -> FileSink<Lines> {
    FileSink::new(
        Lines,
        LakeOptions {
            path: url.into(),
            partition_by: vec!["provider".into(), "sent_date".into()],
            max_rows_per_file: None,
        },
    )
    .with_storage(s3.storage_options())
}

fn committed(cx: SinkContext, windows: &[&str]) -> SinkContext {
    SinkContext {
        committed: Arc::new(windows.iter().map(|w| w.to_string()).collect()),
        ..cx
    }
}

/// The keys below `bucket`, sorted.
async fn keys(store: &Store) -> Vec<String> {
    let mut keys: Vec<String> = store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .collect();
    keys.sort();
    keys
}

/// The `message_id` of every row of the object `key`.
async fn ids(store: &Store, key: &str) -> Vec<String> {
    let (bytes, _) = store
        .read(&ObjectPath::parse(key).unwrap())
        .await
        .unwrap()
        .unwrap();
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["message_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn spool_of(sink: &str) -> PathBuf {
    std::env::temp_dir()
        .join(SPOOL_DIR)
        .join(format!("test-{sink}-{}", std::process::id()))
}

#[test]
fn keys_keep_hive_escapes_and_give_back_partition_directories() {
    let spool = tempfile::tempdir().unwrap();
    let lake = |url: &str| ObjectLake {
        store: Store::open(&object(url), &Default::default()).unwrap(),
        spool: Spool {
            dir: spool.path().to_path_buf(),
        },
        prefix: "part-p.s.".into(),
        extension: "lines".into(),
        staged: Default::default(),
    };
    let file = spool
        .path()
        .join("provider=zoom/sent_date=a%3Ab~0123/part-p.s.w.0000.lines");
    let nested = lake("s3://bucket/chat/messages");
    let key = nested.key_of(&file).unwrap();
    assert_eq!(
        key.as_ref(),
        "chat/messages/provider=zoom/sent_date=a%3Ab~0123/part-p.s.w.0000.lines"
    );
    assert_eq!(
        nested.directory_segments(&key),
        [
            ("provider".to_string(), "zoom".to_string()),
            ("sent_date".to_string(), "a%3Ab~0123".to_string())
        ]
    );
    let root = lake("s3://bucket");
    let key = root
        .key_of(&spool.path().join("part-p.s.w.0000.lines"))
        .unwrap();
    assert_eq!(key.as_ref(), "part-p.s.w.0000.lines");
    assert!(root.directory_segments(&key).is_empty());
    assert!(root.key_of(Path::new("/elsewhere/part.lines")).is_err());
}

#[test]
fn spools_of_processes_that_are_gone_are_removed() {
    let root = tempfile::tempdir().unwrap();
    // Above any pid_max (2^22): no such process.
    let gone = root.path().join("demo-lake-4000000123");
    let running = root.path().join("demo-lake-1");
    let mine = root
        .path()
        .join(format!("demo-lake-{}", std::process::id()));
    let other = root.path().join("notes");
    for dir in [&gone, &running, &mine, &other] {
        std::fs::create_dir_all(dir.join("provider=zoom")).unwrap();
    }
    remove_dead_spools(root.path());
    assert!(!gone.exists());
    assert!(running.exists() && mine.exists() && other.exists());
}

#[test]
fn a_window_reaches_the_store_only_at_its_commit_and_an_uncommitted_ones_objects_go() {
    let s3 = SeaweedFs::start();
    s3.create_bucket("lake");
    runtime().block_on(uploads_at_commit(&s3));
}

async fn uploads_at_commit(s3: &SeaweedFs) {
    let store = s3.store("lake");
    let dir = tempfile::tempdir().unwrap();
    let cx = sink_context("upload", dir.path());
    let url = "s3://lake/chat";
    let (w0, w1) = (window("lw", 0), window("zoom", 3));

    // Objects of other sinks and pipelines, and a user's file, under the same prefix.
    let foreign = [
        format!("chat/part-test.other.{}.0000.lines", w0.key()),
        format!("chat/part-elsewhere.upload.{}.0000.lines", w0.key()),
        "chat/README.txt".to_string(),
    ];
    for key in &foreign {
        store
            .write(
                &ObjectPath::parse(key).unwrap(),
                "x".into(),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
    }

    let mut s = sink(url, s3);
    s.start(&cx).await.unwrap();
    assert_eq!(s.destination().as_deref(), Some(url));
    let spool = spool_of("upload");
    assert!(spool.is_dir(), "the spool is made at the start");
    let rows0 = [
        message("lineworks", "lw-1", "2025-05-01T00:00:00Z"),
        message("lineworks", "lw-2", "2025-05-02T00:00:00Z"),
    ];
    s.write(Batch::new(w0.clone(), canonical_batch(&rows0)), &cx)
        .await
        .unwrap();
    s.write(
        Batch::new(
            w1.clone(),
            canonical_batch(&[message("zoom", "zm-1", "2025-05-01T00:00:00Z")]),
        ),
        &cx,
    )
    .await
    .unwrap();
    assert_eq!(
        keys(&store).await.len(),
        foreign.len(),
        "nothing before the commit"
    );

    s.commit(&w0, &cx).await.unwrap();
    let journal = format!("chat/{STAGED_DIR}/part-test.upload.{}.json", w0.key());
    let mut staged: Vec<String> = foreign.to_vec();
    staged.push(journal.clone());
    staged.sort();
    assert_eq!(
        keys(&store).await,
        staged,
        "a committed window is staged, invisible, until it is published"
    );
    s.publish(&w0, &cx).await.unwrap();
    let w0_keys = [
        format!(
            "chat/provider=lineworks/sent_date=2025-05-01/part-test.upload.{}.0000.lines",
            w0.key()
        ),
        format!(
            "chat/provider=lineworks/sent_date=2025-05-02/part-test.upload.{}.0000.lines",
            w0.key()
        ),
    ];
    let mut want: Vec<String> = foreign.iter().cloned().chain(w0_keys.clone()).collect();
    want.sort();
    assert_eq!(keys(&store).await, want);
    assert_eq!(ids(&store, &w0_keys[0]).await, ["lw-1"]);
    assert!(cx.metrics.bytes() > 0);
    s.abort(&w1, &cx).await.unwrap();
    assert_eq!(
        keys(&store).await,
        want,
        "an aborted window uploads nothing"
    );
    assert!(
        crate::testing::files_under(&spool).is_empty(),
        "uploaded and aborted files leave the spool"
    );
    s.finish(&cx).await.unwrap();
    drop(s);
    assert!(!spool.exists(), "the spool goes with the sink");

    // The next run's ledger does not list w0 (killed before its commit point): its objects go,
    // and nothing of another sink, pipeline or user.
    let mut again = sink(url, s3);
    again
        .start(&committed(sink_context("upload", dir.path()), &[]))
        .await
        .unwrap();
    let mut want: Vec<String> = foreign.to_vec();
    want.sort();
    assert_eq!(keys(&store).await, want);
    drop(again);

    // With w0 committed, a start keeps its objects.
    let mut s = sink(url, s3);
    s.start(&cx).await.unwrap();
    s.write(Batch::new(w0.clone(), canonical_batch(&rows0)), &cx)
        .await
        .unwrap();
    s.commit(&w0, &cx).await.unwrap();
    // Killed after the ledger listed w0, before its publish; w1 staged, never listed.
    s.write(
        Batch::new(
            w1.clone(),
            canonical_batch(&[message("zoom", "zm-1", "2025-05-01T00:00:00Z")]),
        ),
        &cx,
    )
    .await
    .unwrap();
    s.commit(&w1, &cx).await.unwrap();
    drop(s);
    assert!(
        keys(&store)
            .await
            .iter()
            .all(|k| !k.ends_with(".lines") || foreign.contains(k))
    );
    let mut kept = sink(url, s3);
    kept.start(&committed(sink_context("upload", dir.path()), &[&w0.key()]))
        .await
        .unwrap();
    // The next start publishes w0 (roll forward) and aborts w1's uploads; no journal is left.
    let mut want: Vec<String> = foreign.iter().cloned().chain(w0_keys.clone()).collect();
    want.sort();
    assert_eq!(keys(&store).await, want);
    assert_eq!(ids(&store, &w0_keys[0]).await, ["lw-1"]);
}

#[test]
fn rows_are_taken_out_of_committed_objects_once() {
    let s3 = SeaweedFs::start();
    s3.create_bucket("lake");
    runtime().block_on(removes_rows(&s3));
}

async fn removes_rows(s3: &SeaweedFs) {
    let store = s3.store("lake");
    let dir = tempfile::tempdir().unwrap();
    let cx = sink_context("replace", dir.path());
    let url = "s3://lake/replace";
    let w0 = window("lw", 0);
    let mut s = sink(url, s3);
    s.start(&cx).await.unwrap();
    let rows = [
        message("lineworks", "lw-1", "2025-05-01T00:00:00Z"),
        message("lineworks", "lw-2", "2025-05-01T01:00:00Z"),
        message("zoom", "zm-1", "2025-05-01T02:00:00Z"),
    ];
    s.write(Batch::new(w0.clone(), canonical_batch(&rows)), &cx)
        .await
        .unwrap();
    s.commit(&w0, &cx).await.unwrap();
    s.publish(&w0, &cx).await.unwrap();
    drop(s);
    let lw = format!(
        "replace/provider=lineworks/sent_date=2025-05-01/part-test.replace.{}.0000.lines",
        w0.key()
    );
    let zm = format!(
        "replace/provider=zoom/sent_date=2025-05-01/part-test.replace.{}.0000.lines",
        w0.key()
    );
    assert_eq!(keys(&store).await, [lw.clone(), zm.clone()]);

    // A later run, before its first write: one row of one object, every row of the other;
    // a key of the wrong provider removes nothing.
    let removal = removal_by_id(
        &w0,
        &[("lineworks", "lw-2"), ("zoom", "zm-1"), ("zoom", "lw-1")],
    );
    let mut later = sink(url, s3);
    later
        .start(&committed(
            sink_context("replace", dir.path()),
            &[&w0.key()],
        ))
        .await
        .unwrap();
    assert_eq!(later.remove_rows(&removal, &cx).await.unwrap(), 2);
    assert_eq!(
        keys(&store).await,
        std::slice::from_ref(&lw),
        "an object with no row left is deleted"
    );
    assert_eq!(ids(&store, &lw).await, ["lw-1"]);
    // Twice changes nothing.
    assert_eq!(later.remove_rows(&removal, &cx).await.unwrap(), 0);
    assert_eq!(ids(&store, &lw).await, ["lw-1"]);
    assert!(crate::testing::files_under(&spool_of("replace")).is_empty());
    drop(later);

    // Without a `start` (a sink used on its own) the store is opened for the removal.
    let mut alone = sink(url, s3);
    let removal = removal_by_id(&w0, &[("lineworks", "lw-1")]);
    assert_eq!(alone.remove_rows(&removal, &cx).await.unwrap(), 1);
    assert!(keys(&store).await.is_empty());
}

#[test]
fn a_missing_bucket_or_a_wrong_secret_fails_the_start_naming_the_url() {
    let s3 = SeaweedFs::start();
    s3.create_bucket("lake");
    runtime().block_on(refuses_a_bad_store(&s3));
}

async fn refuses_a_bad_store(s3: &SeaweedFs) {
    let dir = tempfile::tempdir().unwrap();
    let cx = sink_context("refused", dir.path());
    let mut missing = sink("s3://no-such-bucket/chat", s3);
    let err = missing.start(&cx).await.unwrap_err().to_string();
    assert!(err.contains("refused"), "names the sink: {err}");
    assert!(
        err.contains("s3://no-such-bucket/chat"),
        "names the URL: {err}"
    );

    let wrong = StorageOptions {
        secret_access_key: Some(chatlake_core::secret::Secret::new("Wr0ng-Secret-Value")),
        ..s3.storage_options()
    };
    let mut denied = FileSink::new(
        Lines,
        LakeOptions {
            path: "s3://lake/chat".into(),
            partition_by: vec![],
            max_rows_per_file: None,
        },
    )
    .with_storage(wrong);
    let err = denied.start(&cx).await.unwrap_err().to_string();
    assert!(err.contains("s3://lake/chat"), "{err}");
    assert!(!err.contains("Wr0ng-Secret-Value"), "{err}");
    assert!(
        !spool_of("refused").exists(),
        "no spool for a store that refused"
    );
}
