//! The sink built from its config, driven through the `Sink` trait, read back with serde_json.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use chatlake_core::{Batch, Registry, Sink, SinkConfig};
use chatlake_lake::testing::removal::{
    check_missing_key_column, check_null_integer_and_boolean_keys, check_remove_rows, removal_by_id,
};
use chatlake_lake::testing::{
    build_context, canonical_batch, files_under, sample_messages, sink_context, window,
    write_interleaved,
};
use serde_json::{Value, json};

use crate::JsonlSinkConfig;

/// The sink name the tests use.
const SINK: &str = "archive";

fn config(options: Value) -> Result<JsonlSinkConfig, String> {
    serde_json::from_value(options).map_err(|e| e.to_string())
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    let mut text = String::new();
    let mut file = File::open(path).unwrap();
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(file)
            .read_to_string(&mut text)
            .unwrap();
    } else {
        file.read_to_string(&mut text).unwrap();
    }
    assert!(text.ends_with('\n'), "every line ends with a newline");
    BufReader::new(text.as_bytes())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

/// What a canonical row looks like in the files: partition columns removed, timestamps in `Z`.
fn expected(mut row: Value, partition_by: &[&str]) -> Value {
    let object = row.as_object_mut().unwrap();
    for column in partition_by {
        object.remove(*column);
    }
    for column in ["sent_at", "delivered_at"] {
        if let Some(Value::String(t)) = object.get(column) {
            let t = rfc3339_z(t);
            object.insert(column.into(), json!(t));
        }
    }
    row
}

/// An RFC 3339 time as the sink writes it: UTC with `Z`, fractions only when not zero.
fn rfc3339_z(t: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(t)
        .unwrap()
        .with_timezone(&chrono::Utc)
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

#[tokio::test]
async fn writes_partitioned_json_lines_and_commits_only_the_committed_window() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("jsonl");
    let mut sink = config(json!({
        "path": root,
        "partition_by": ["provider", "sent_date"],
    }))
    .unwrap()
    .build(&build_context("archive"))
    .unwrap();
    let cx = sink_context(SINK, dir.path());
    let rows = write_interleaved(sink.as_mut(), &cx).await;

    let name = &chatlake_lake::testing::data_file_name(SINK, "lw", 0, 0, "jsonl");
    let files = files_under(&root);
    assert_eq!(
        files,
        [
            format!("provider=lineworks/sent_date=2025-05-01/{name}"),
            format!("provider=lineworks/sent_date=2025-05-02/{name}"),
            format!("provider=zoom/sent_date=2025-05-01/{name}"),
            format!("provider=zoom/sent_date=2025-05-02/{name}"),
        ]
    );

    let mut got = Vec::new();
    for f in &files {
        got.extend(read_jsonl(&root.join(f)));
    }
    got.sort_by_key(|v| v["message_id"].as_str().unwrap().to_string());
    let mut want: Vec<Value> = rows
        .into_iter()
        .map(|r| expected(r, &["provider", "sent_date"]))
        .collect();
    want.sort_by_key(|v| v["message_id"].as_str().unwrap().to_string());
    assert_eq!(got, want);

    // Spot checks of what the comparison above covers.
    let lw1 = &got[0];
    assert_eq!(lw1["text"], "こんにちは、世界 🌏 \"quoted\", comma; semi");
    assert_eq!(lw1["attachments"][0]["file_name"], "報告書.pdf");
    assert_eq!(lw1["attachments"][0]["file_size"], 1024);
    assert_eq!(lw1["sent_at"], "2025-05-01T00:00:00Z");
    assert_eq!(lw1["recipient"], Value::Null);
    assert!(lw1.as_object().unwrap().contains_key("recipient"));
    let zm1 = got.iter().find(|v| v["message_id"] == "zm-1").unwrap();
    assert_eq!(zm1["sent_at"], "2025-05-01T23:59:59.999999Z");
    assert_eq!(zm1["delivered_at"], "2025-05-02T00:00:00.500Z");
    assert_eq!(zm1["attachments"][0]["file_name"], Value::Null);
    assert_eq!(got[4]["attachments"], json!([]));
}

#[tokio::test]
async fn gzip_writes_jsonl_gz_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("jsonl");
    let mut sink = config(json!({"path": root, "compression": "gzip"}))
        .unwrap()
        .build(&build_context("archive"))
        .unwrap();
    let cx = sink_context(SINK, dir.path());
    let rows = write_interleaved(sink.as_mut(), &cx).await;
    let files = files_under(&root);
    assert_eq!(
        files,
        [chatlake_lake::testing::data_file_name(
            SINK, "lw", 0, 0, "jsonl.gz"
        )]
    );
    let got = read_jsonl(&root.join(&files[0]));
    let want: Vec<Value> = rows.into_iter().map(|r| expected(r, &[])).collect();
    assert_eq!(got, want);
    assert_eq!(got[0]["sent_date"], "2025-05-01");
}

#[test]
fn config_defaults_and_errors() {
    let c = config(json!({"path": "./lake/jsonl"})).unwrap();
    assert!(c.partition_by.is_empty());
    assert_eq!(c.compression, chatlake_lake::text::TextCompression::None);
    assert_eq!(c.max_rows_per_file, None);

    let e = config(json!({"path": "x", "compression": "zip"})).unwrap_err();
    assert!(
        e.contains("unknown variant `zip`, expected `none` or `gzip`"),
        "{e}"
    );
    let e = config(json!({"path": "x", "delimiter": ","})).unwrap_err();
    assert!(e.contains("unknown field `delimiter`"), "{e}");
    assert!(
        config(json!({}))
            .unwrap_err()
            .contains("missing field `path`")
    );

    let build = |v: Value| config(v).unwrap().build(&build_context("s")).err().unwrap();
    assert_eq!(build(json!({"path": ""})).key, "path");
    assert_eq!(
        build(json!({"path": "x", "max_rows_per_file": 0})).key,
        "max_rows_per_file"
    );
}

#[test]
fn every_option_is_documented_for_chatlake_components() {
    let mut registry = Registry::new();
    registry.register_sink::<JsonlSinkConfig>();
    let docs = registry.docs();
    let doc = docs.iter().find(|d| d.type_name == "jsonl").unwrap();
    assert_eq!(doc.summary, JsonlSinkConfig::SUMMARY);
    let names: Vec<&str> = doc.options.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "path",
            "partition_by",
            "compression",
            "max_rows_per_file",
            "storage"
        ]
    );
    for o in &doc.options {
        assert!(!o.description.is_empty(), "{} has no description", o.name);
    }
    let compression = &doc.options[2];
    assert_eq!(compression.default, Some(json!("none")));
    assert!(compression.kind.contains("gzip"), "{}", compression.kind);
    assert!(doc.options[0].required);
}

fn build_sink(compression: &'static str) -> impl Fn(&Path, &[&str]) -> Box<dyn Sink> {
    move |root: &Path, partition_by: &[&str]| {
        config(json!({"path": root, "partition_by": partition_by, "compression": compression}))
            .unwrap()
            .build(&build_context(SINK))
            .unwrap()
    }
}

fn read_ids(path: &Path) -> Vec<String> {
    read_jsonl(path)
        .iter()
        .map(|v| v["message_id"].as_str().unwrap().to_string())
        .collect()
}

/// The rewritten file holds the lines a fresh sink writes for the same rows, byte for byte
/// (gzipped with the same settings, so the compressed bytes are the same too).
fn same_bytes(rewritten: &Path, reference: &Path) {
    assert_eq!(
        std::fs::read(rewritten).unwrap(),
        std::fs::read(reference).unwrap(),
        "{}",
        rewritten.display()
    );
}

#[tokio::test]
async fn removes_rows_from_committed_files_keeping_other_lines_byte_for_byte() {
    for compression in ["none", "gzip"] {
        let build = build_sink(compression);
        let dir = tempfile::tempdir().unwrap();
        check_remove_rows(dir.path(), SINK, &build, &read_ids, &same_bytes).await;
        let dir = tempfile::tempdir().unwrap();
        check_null_integer_and_boolean_keys(dir.path(), SINK, &build, &read_ids).await;
        let dir = tempfile::tempdir().unwrap();
        check_missing_key_column(dir.path(), SINK, &build).await;
    }
}

#[tokio::test]
async fn escaped_key_text_is_compared_unescaped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("jsonl");
    let mut sink = build_sink("none")(&root, &[]);
    let cx = sink_context(SINK, dir.path());
    let odd = "a\"b\\c\n日本 😀\u{1}";
    let mut rows = sample_messages();
    rows[0]["message_id"] = json!(odd);
    let w = window("lw", 0);
    sink.write(Batch::new(w.clone(), canonical_batch(&rows)), &cx)
        .await
        .unwrap();
    sink.commit(&w, &cx).await.unwrap();
    let removed = sink
        .remove_rows(&removal_by_id(&w, &[("lineworks", odd)]), &cx)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    let file = root.join(chatlake_lake::testing::data_file_name(
        SINK, "lw", 0, 0, "jsonl",
    ));
    assert_eq!(read_ids(&file), ["lw-2", "zm-1", "zm-2", "lw-3"]);
}

#[test]
fn the_format_removes_rows() {
    let sink = config(json!({"path": "x"}))
        .unwrap()
        .build(&build_context(SINK))
        .unwrap();
    assert!(sink.removes_rows().is_ok());
}
