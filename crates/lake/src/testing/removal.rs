//! The removal scenarios every file format must pass ([`chatlake_core::Sink::remove_rows`]):
//! the lake layout is checked here once, the format's own reading by the closures each sink
//! crate passes in.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use arrow::array::{ArrayRef, BooleanArray, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;
use chatlake_core::removal::Removal;
use chatlake_core::{Batch, Sink, SinkContext, WindowRef};
use chrono::DateTime;
use serde_json::{Value, json};

use super::{canonical_batch, files_under, message, sample_messages, sink_context, window};

/// Builds a sink of the format under test writing under `root`, partitioned by `partition_by`.
pub type BuildSink<'a> = &'a dyn Fn(&Path, &[&str]) -> Box<dyn Sink>;

/// Reads a data file of the format: the `message_id` of each row, in file order.
pub type ReadIds<'a> = &'a dyn Fn(&Path) -> Vec<String>;

/// Asserts that a rewritten file (first) is what the sink writes for the same rows (second).
pub type SameFile<'a> = &'a dyn Fn(&Path, &Path);

/// Every file under `root` (relative, `/`-separated) with its bytes and modification time.
pub fn snapshot(root: &Path) -> BTreeMap<String, (Vec<u8>, SystemTime)> {
    files_under(root)
        .into_iter()
        .map(|f| {
            let path = root.join(&f);
            let bytes = std::fs::read(&path).expect("a readable file");
            let modified = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .expect("a modification time");
            (f, (bytes, modified))
        })
        .collect()
}

/// A removal of `window`'s rows whose key columns equal a row of `columns`.
pub fn removal(window: &WindowRef, columns: Vec<(&str, ArrayRef)>) -> Removal {
    Removal {
        window: window.key(),
        keys: RecordBatch::try_from_iter(columns).expect("key columns of one length"),
    }
}

/// A removal keyed by `(provider, message_id)`.
pub fn removal_by_id(window: &WindowRef, keys: &[(&str, &str)]) -> Removal {
    let providers: Vec<&str> = keys.iter().map(|k| k.0).collect();
    let ids: Vec<&str> = keys.iter().map(|k| k.1).collect();
    removal(
        window,
        vec![
            (
                "provider",
                Arc::new(StringArray::from(providers)) as ArrayRef,
            ),
            ("message_id", Arc::new(StringArray::from(ids)) as ArrayRef),
        ],
    )
}

async fn write_window(sink: &mut dyn Sink, w: &WindowRef, rows: &[Value], cx: &SinkContext) {
    sink.write(Batch::new(w.clone(), canonical_batch(rows)), cx)
        .await
        .expect("write");
    sink.commit(w, cx).await.expect("commit");
}

/// The path of the one file of window `w` in `dir` (a relative partition directory).
fn file_of(files: &[String], dir: &str, w: &WindowRef) -> String {
    let wanted = format!("{dir}/part-test.");
    files
        .iter()
        .find(|f| f.starts_with(&wanted) && f.contains(&format!(".{}.", w.key())))
        .unwrap_or_else(|| panic!("no file of {} in {dir}: {files:?}", w.key()))
        .clone()
}

/// Window A (`lw` 0) holds [`sample_messages`], window B (`lw` 1) newer versions of `lw-1` and
/// `zm-2` in the same partitions, both partitioned by provider and date. Removing
/// `(lineworks, lw-1)`, `(zoom, zm-2)` (the only row of its file) and `(zoom, zm-404)` (not
/// there) from A must rewrite one file, delete one, leave every other file as it was (bytes and
/// modification time), write what a fresh sink writes for the rows left, and change nothing the
/// second time; a key whose provider is another partition's removes nothing.
pub async fn check_remove_rows(
    dir: &Path,
    sink_name: &str,
    build: BuildSink<'_>,
    read_ids: ReadIds<'_>,
    same_file: SameFile<'_>,
) {
    let root = dir.join("lake");
    let cx = sink_context(sink_name, dir);
    let partition_by = ["provider", "sent_date"];
    let (a, b) = (window("lw", 0), window("lw", 1));
    let rows_a = sample_messages();
    let mut rows_b = vec![
        message("lineworks", "lw-1", "2025-05-01T00:00:00Z"),
        message("zoom", "zm-2", "2025-05-02T03:04:05Z"),
    ];
    for row in &mut rows_b {
        row["text"] = json!("edited");
    }
    let mut writer = build(&root, &partition_by);
    write_window(writer.as_mut(), &a, &rows_a, &cx).await;
    write_window(writer.as_mut(), &b, &rows_b, &cx).await;
    let before = snapshot(&root);
    let names: Vec<String> = before.keys().cloned().collect();
    let lw_1 = file_of(&names, "provider=lineworks/sent_date=2025-05-01", &a);
    let zm_2 = file_of(&names, "provider=zoom/sent_date=2025-05-02", &a);

    // A fresh sink, as the runtime applies a log an earlier run left before anything is written.
    let mut fresh = build(&root, &partition_by);
    fresh.removes_rows().expect("the format removes rows");
    let keys = removal_by_id(
        &a,
        &[("lineworks", "lw-1"), ("zoom", "zm-2"), ("zoom", "zm-404")],
    );
    let removed = fresh.remove_rows(&keys, &cx).await.expect("remove_rows");
    assert_eq!(removed, 2);

    let after = snapshot(&root);
    let mut want_names = names.clone();
    want_names.retain(|f| f != &zm_2);
    assert_eq!(
        after.keys().cloned().collect::<Vec<_>>(),
        want_names,
        "the file whose only row went is deleted, and no temporary file is left"
    );
    for (f, state) in &after {
        if f == &lw_1 {
            assert_ne!(state.0, before[f].0, "{f} is rewritten");
        } else {
            assert_eq!(state, &before[f], "{f} is untouched, window B's included");
        }
    }
    let ids = |f: &str| read_ids(&root.join(f));
    assert_eq!(ids(&lw_1), ["lw-2"]);
    let b_files: Vec<&String> = after.keys().filter(|f| f.contains(&b.key())).collect();
    assert_eq!(b_files.len(), 2);
    for f in b_files {
        assert_eq!(ids(f).len(), 1, "{f}");
    }

    // What a sink writes for the rows left is what the rewrite left.
    let reference = dir.join("reference");
    let left: Vec<Value> = rows_a
        .iter()
        .filter(|r| !["lw-1", "zm-2"].contains(&r["message_id"].as_str().unwrap_or_default()))
        .cloned()
        .collect();
    let mut sink = build(&reference, &partition_by);
    write_window(sink.as_mut(), &a, &left, &cx).await;
    let a_files: Vec<String> = after
        .keys()
        .filter(|f| f.contains(&a.key()))
        .cloned()
        .collect();
    assert_eq!(files_under(&reference), a_files);
    for f in &a_files {
        same_file(&root.join(f), &reference.join(f));
    }

    // Idempotent, also through the sink that wrote the files, after its finish.
    writer.finish(&cx).await.expect("finish");
    assert_eq!(writer.remove_rows(&keys, &cx).await.expect("again"), 0);
    assert_eq!(snapshot(&root), after);

    // Provider is a partition column: it is compared with the directory, so these keys, whose
    // ids are in the other provider's files, remove nothing.
    let elsewhere = removal_by_id(&a, &[("zoom", "lw-2"), ("lineworks", "zm-1")]);
    assert_eq!(fresh.remove_rows(&elsewhere, &cx).await.expect("remove"), 0);
    assert_eq!(snapshot(&root), after);
}

/// Key columns inside the files compared as text: a null key matches only a null (not an empty
/// string), integers compare as decimal text and booleans as `true`/`false`.
pub async fn check_null_integer_and_boolean_keys(
    dir: &Path,
    sink_name: &str,
    build: BuildSink<'_>,
    read_ids: ReadIds<'_>,
) {
    let root = dir.join("lake");
    let cx = sink_context(sink_name, dir);
    let a = window("lw", 0);
    let rows = sample_messages();
    let mut sink = build(&root, &["provider"]);
    write_window(sink.as_mut(), &a, &rows, &cx).await;
    let names = files_under(&root);
    let zoom = file_of(&names, "provider=zoom", &a);
    let lineworks = file_of(&names, "provider=lineworks", &a);
    let provider = |p: &str| Arc::new(StringArray::from(vec![p])) as ArrayRef;

    // zm-1 has no reply_to_id, zm-2 replies to zm-1.
    let reply_to = |v: Option<&str>| {
        removal(
            &a,
            vec![
                ("provider", provider("zoom")),
                (
                    "reply_to_id",
                    Arc::new(StringArray::from(vec![v])) as ArrayRef,
                ),
            ],
        )
    };
    let empty = sink
        .remove_rows(&reply_to(Some("")), &cx)
        .await
        .expect("remove");
    assert_eq!(empty, 0, "an empty string is not null");
    let null = sink
        .remove_rows(&reply_to(None), &cx)
        .await
        .expect("remove");
    assert_eq!(null, 1);
    assert_eq!(read_ids(&root.join(&zoom)), ["zm-2"]);

    let version = |id: &str| {
        let row = rows.iter().find(|r| r["message_id"] == id).expect("a row");
        DateTime::parse_from_rfc3339(row["sent_at"].as_str().expect("a time"))
            .expect("RFC 3339")
            .timestamp_millis()
    };
    let by_version = removal(
        &a,
        vec![
            ("provider", provider("lineworks")),
            (
                "version",
                Arc::new(Int64Array::from(vec![version("lw-3")])) as ArrayRef,
            ),
        ],
    );
    assert_eq!(sink.remove_rows(&by_version, &cx).await.expect("remove"), 1);
    let by_bot = removal(
        &a,
        vec![
            ("provider", provider("lineworks")),
            (
                "is_bot",
                Arc::new(BooleanArray::from(vec![true])) as ArrayRef,
            ),
        ],
    );
    assert_eq!(sink.remove_rows(&by_bot, &cx).await.expect("remove"), 1);
    assert_eq!(read_ids(&root.join(&lineworks)), ["lw-1"]);
}

/// A key column that is neither a partition column nor in the files fails, naming both the
/// column and the file.
pub async fn check_missing_key_column(dir: &Path, sink_name: &str, build: BuildSink<'_>) {
    let root = dir.join("lake");
    let cx = sink_context(sink_name, dir);
    let a = window("lw", 0);
    let mut sink = build(&root, &["provider"]);
    write_window(sink.as_mut(), &a, &sample_messages(), &cx).await;
    let keys = removal(
        &a,
        vec![
            (
                "provider",
                Arc::new(StringArray::from(vec!["zoom"])) as ArrayRef,
            ),
            (
                "thread_id",
                Arc::new(StringArray::from(vec!["t1"])) as ArrayRef,
            ),
        ],
    );
    let e = sink
        .remove_rows(&keys, &cx)
        .await
        .expect_err("a missing key column")
        .to_string();
    let zoom = file_of(&files_under(&root), "provider=zoom", &a);
    assert!(e.contains("`thread_id`"), "{e}");
    assert!(e.contains(&root.join(&zoom).display().to_string()), "{e}");
}
