//! The sink built from its config, driven through the `Sink` trait, read back with the `csv`
//! crate.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array, ListArray, StringArray, StructArray};
use arrow::datatypes::{DataType, Field, Int64Type};
use arrow::record_batch::RecordBatch;
use chatlake_core::schema::canonical;
use chatlake_core::{Batch, Registry, Sink, SinkConfig};
use chatlake_lake::testing::removal::{
    check_missing_key_column, check_null_integer_and_boolean_keys, check_remove_rows, removal_by_id,
};
use chatlake_lake::testing::{
    build_context, canonical_batch, files_under, message, sample_messages, sink_context, window,
    write_interleaved,
};
use serde_json::{Value, json};

use crate::{CsvSinkConfig, nested_as_json};

/// The sink name the tests use.
const SINK: &str = "report";

fn config(options: Value) -> Result<CsvSinkConfig, String> {
    serde_json::from_value(options).map_err(|e| e.to_string())
}

fn read_text(path: &Path) -> String {
    let mut text = String::new();
    let mut file = File::open(path).unwrap();
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(file)
            .read_to_string(&mut text)
            .unwrap();
    } else {
        file.read_to_string(&mut text).unwrap();
    }
    text
}

fn read_csv(path: &Path, delimiter: u8, header: bool) -> (Vec<String>, Vec<Vec<String>>) {
    let text = read_text(path);
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(header)
        .from_reader(text.as_bytes());
    let head = if header {
        reader.headers().unwrap().iter().map(String::from).collect()
    } else {
        Vec::new()
    };
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect();
    (head, rows)
}

fn rfc3339_z(t: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(t)
        .unwrap()
        .with_timezone(&chrono::Utc)
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// The columns a file holds: the canonical ones without the partition columns.
fn columns(partition_by: &[&str]) -> Vec<String> {
    canonical()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| !partition_by.contains(&n.as_str()))
        .collect()
}

/// Checks one CSV record against the JSON row it came from.
fn assert_row(columns: &[String], record: &[String], row: &Value) {
    assert_eq!(record.len(), columns.len());
    for (name, cell) in columns.iter().zip(record) {
        let want = &row[name.as_str()];
        match (name.as_str(), want) {
            (_, Value::Null) => assert_eq!(cell, "", "{name}"),
            ("attachments", _) => {
                let got: Value = serde_json::from_str(cell).unwrap();
                assert_eq!(&got, want, "{name}");
            }
            ("sent_at" | "delivered_at", Value::String(t)) => {
                assert_eq!(cell, &rfc3339_z(t), "{name}")
            }
            (_, Value::String(s)) => assert_eq!(cell, s, "{name}"),
            (_, other) => assert_eq!(cell, &other.to_string(), "{name}"),
        }
    }
}

#[tokio::test]
async fn writes_partitioned_csv_with_json_attachments_and_utc_times() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("csv");
    let mut sink = config(json!({"path": root, "partition_by": ["provider", "sent_date"]}))
        .unwrap()
        .build(&build_context("report"))
        .unwrap();
    let cx = sink_context(SINK, dir.path());
    let rows = write_interleaved(sink.as_mut(), &cx).await;

    let name = &chatlake_lake::testing::data_file_name(SINK, "lw", 0, 0, "csv");
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
    let partition_by = ["provider", "sent_date"];
    let columns = columns(&partition_by);
    let id_column = columns.iter().position(|c| c == "message_id").unwrap();
    let mut seen = 0;
    for f in &files {
        let (head, records) = read_csv(&root.join(f), b',', true);
        assert_eq!(head, columns);
        for record in records {
            let id = &record[id_column];
            let row = rows
                .iter()
                .find(|r| r["message_id"] == id.as_str())
                .unwrap();
            assert_row(&columns, &record, row);
            seen += 1;
        }
    }
    assert_eq!(seen, rows.len());

    // The exact text of the first file: JSON attachments in column order, quoting only where
    // needed, newlines kept inside quotes.
    let text = read_text(&root.join(&files[0]));
    assert!(text.contains(
        r#""[{""file_id"":""f1"",""file_name"":""報告書.pdf"",""file_size"":1024,""download_url"":""https://files.example.com/f1?sig=a%2Fb&x=1"",""stored_at"":null},"#
    ), "{text}");
    assert!(
        text.contains("\"line one\nline two\r\nline three\t  \""),
        "{text}"
    );
    assert!(text.contains(",2025-05-01T09:30:15.250Z,"), "{text}");
    assert!(text.contains(",[],"), "{text}");
}

#[tokio::test]
async fn gzip_tab_delimited_files_roll_and_each_has_a_header() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("csv");
    let mut sink = config(json!({
        "path": root, "compression": "gzip", "delimiter": "\t", "max_rows_per_file": 2
    }))
    .unwrap()
    .build(&build_context("report"))
    .unwrap();
    let cx = sink_context(SINK, dir.path());
    let rows = write_interleaved(sink.as_mut(), &cx).await;
    let files = files_under(&root);
    assert_eq!(
        files,
        (0..3)
            .map(|n| chatlake_lake::testing::data_file_name(SINK, "lw", 0, n, "csv.gz"))
            .collect::<Vec<_>>()
    );
    let columns = columns(&[]);
    let mut all = Vec::new();
    for f in &files {
        let (head, records) = read_csv(&root.join(f), b'\t', true);
        assert_eq!(head, columns);
        all.extend(records);
    }
    assert_eq!(all.len(), rows.len());
    for (record, row) in all.iter().zip(&rows) {
        assert_row(&columns, record, row);
    }
}

#[tokio::test]
async fn header_false_writes_rows_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("csv");
    let mut sink = config(json!({"path": root, "header": false, "delimiter": ";"}))
        .unwrap()
        .build(&build_context("report"))
        .unwrap();
    let cx = sink_context(SINK, dir.path());
    let rows = write_interleaved(sink.as_mut(), &cx).await;
    let files = files_under(&root);
    let (_, records) = read_csv(&root.join(&files[0]), b';', false);
    assert_eq!(records.len(), rows.len());
    assert_eq!(records[0][0], "lineworks");
}

#[test]
fn nested_columns_become_json_text() {
    let structs = StructArray::from(vec![
        (
            Arc::new(Field::new("a", DataType::Utf8, true)),
            Arc::new(StringArray::from(vec![Some("x\"y"), None])) as _,
        ),
        (
            Arc::new(Field::new("n", DataType::Int64, true)),
            Arc::new(Int64Array::from(vec![1, 2])) as _,
        ),
    ]);
    let list =
        ListArray::from_iter_primitive::<Int64Type, _, _>(vec![Some(vec![Some(1), None]), None]);
    let batch = RecordBatch::try_from_iter([
        ("s", Arc::new(structs) as _),
        ("l", Arc::new(list) as _),
        ("k", Arc::new(StringArray::from(vec!["p", "q"])) as _),
    ])
    .unwrap();
    let out = nested_as_json(&batch).unwrap();
    assert!(
        out.schema()
            .fields()
            .iter()
            .all(|f| f.data_type() == &DataType::Utf8)
    );
    let s = out.column(0).as_string::<i32>();
    assert_eq!(s.value(0), r#"{"a":"x\"y","n":1}"#);
    assert_eq!(s.value(1), r#"{"a":null,"n":2}"#);
    let l = out.column(1).as_string::<i32>();
    assert_eq!(l.value(0), "[1,null]");
    assert!(l.is_null(1));
    assert_eq!(out.column(2).as_ref(), batch.column(2).as_ref());
}

#[test]
fn config_defaults_and_errors() {
    let c = config(json!({"path": "./exports"})).unwrap();
    assert_eq!(c.delimiter, ",");
    assert!(c.header);
    assert_eq!(c.compression, chatlake_lake::text::TextCompression::None);

    let e = config(json!({"path": "x", "compression": "zstd"})).unwrap_err();
    assert!(
        e.contains("unknown variant `zstd`, expected `none` or `gzip`"),
        "{e}"
    );
    let e = config(json!({"path": "x", "row_group_size": 1})).unwrap_err();
    assert!(e.contains("unknown field `row_group_size`"), "{e}");

    let build = |v: Value| config(v).unwrap().build(&build_context("s")).err().unwrap();
    for bad in ["", ";;", "\"", "\n", "、"] {
        let e = build(json!({"path": "x", "delimiter": bad}));
        assert_eq!(e.key, "delimiter", "{bad:?}");
    }
    assert_eq!(build(json!({"path": " "})).key, "path");
    assert_eq!(
        build(json!({"path": "x", "partition_by": ["a", ""]})).key,
        "partition_by[1]"
    );
}

#[test]
fn every_option_is_documented_for_chatlake_components() {
    let mut registry = Registry::new();
    registry.register_sink::<CsvSinkConfig>();
    let docs = registry.docs();
    let doc = docs.iter().find(|d| d.type_name == "csv").unwrap();
    assert_eq!(doc.summary, CsvSinkConfig::SUMMARY);
    for o in &doc.options {
        assert!(!o.description.is_empty(), "{} has no description", o.name);
    }
    let default = |name: &str| {
        doc.options
            .iter()
            .find(|o| o.name == name)
            .unwrap()
            .default
            .clone()
    };
    assert_eq!(default("delimiter"), Some(json!(",")));
    assert_eq!(default("header"), Some(json!(true)));
    assert_eq!(default("compression"), Some(json!("none")));
}

fn build_sink(
    compression: &'static str,
    delimiter: &'static str,
) -> impl Fn(&Path, &[&str]) -> Box<dyn Sink> {
    move |root: &Path, partition_by: &[&str]| {
        config(json!({
            "path": root, "partition_by": partition_by,
            "compression": compression, "delimiter": delimiter
        }))
        .unwrap()
        .build(&build_context(SINK))
        .unwrap()
    }
}

fn read_ids(delimiter: u8) -> impl Fn(&Path) -> Vec<String> {
    move |path: &Path| {
        let (head, records) = read_csv(path, delimiter, true);
        let id = head.iter().position(|c| c == "message_id").unwrap();
        records.into_iter().map(|r| r[id].clone()).collect()
    }
}

/// The rewritten file holds the header and records a fresh sink writes for the same rows, byte
/// for byte. Gzipped files are compared unzipped: the sink flushes the encoder after each batch
/// it writes, so where the compressed blocks end differs.
fn same_bytes(rewritten: &Path, reference: &Path) {
    if rewritten.extension().is_some_and(|e| e == "gz") {
        assert_eq!(
            read_text(rewritten),
            read_text(reference),
            "{}",
            rewritten.display()
        );
    } else {
        assert_eq!(
            std::fs::read(rewritten).unwrap(),
            std::fs::read(reference).unwrap(),
            "{}",
            rewritten.display()
        );
    }
}

#[tokio::test]
async fn removes_rows_from_committed_files_keeping_other_records_byte_for_byte() {
    for (compression, delimiter) in [("none", ","), ("gzip", "\t")] {
        let build = build_sink(compression, delimiter);
        let read_ids = read_ids(delimiter.as_bytes()[0]);
        let dir = tempfile::tempdir().unwrap();
        check_remove_rows(dir.path(), SINK, &build, &read_ids, &same_bytes).await;
        let dir = tempfile::tempdir().unwrap();
        check_null_integer_and_boolean_keys(dir.path(), SINK, &build, &read_ids).await;
        let dir = tempfile::tempdir().unwrap();
        check_missing_key_column(dir.path(), SINK, &build).await;
    }
}

#[tokio::test]
async fn records_with_quotes_and_line_breaks_are_kept_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let cx = sink_context(SINK, dir.path());
    let build = build_sink("none", ",");
    let w = window("lw", 0);
    // Quotes, delimiters, `\n` and `\r\n` inside quoted fields, in the key of a removed row too.
    let odd = "lw-2, \"two\"\r\n";
    let mut rows = sample_messages();
    rows[1]["message_id"] = json!(odd);
    let write = |root: std::path::PathBuf, rows: Vec<Value>| {
        let mut sink = build(&root, &[]);
        let (w, cx) = (&w, &cx);
        async move {
            sink.write(Batch::new(w.clone(), canonical_batch(&rows)), cx)
                .await
                .unwrap();
            sink.commit(w, cx).await.unwrap();
            sink
        }
    };
    let root = dir.path().join("csv");
    let mut sink = write(root.clone(), rows.clone()).await;
    let keys = removal_by_id(&w, &[("lineworks", odd), ("zoom", "zm-2")]);
    assert_eq!(sink.remove_rows(&keys, &cx).await.unwrap(), 2);

    let name = chatlake_lake::testing::data_file_name(SINK, "lw", 0, 0, "csv");
    assert_eq!(read_ids(b',')(&root.join(&name)), ["lw-1", "zm-1", "lw-3"]);
    rows.retain(|r| r["message_id"] != odd && r["message_id"] != "zm-2");
    let reference = dir.path().join("reference");
    write(reference.clone(), rows).await;
    same_bytes(&root.join(&name), &reference.join(&name));
}

#[test]
fn without_a_header_rows_cannot_be_removed() {
    let build = |header: bool| {
        config(json!({"path": "x", "header": header}))
            .unwrap()
            .build(&build_context(SINK))
            .unwrap()
    };
    assert!(build(true).removes_rows().is_ok());
    let why = build(false).removes_rows().unwrap_err();
    assert!(why.contains("header = true"), "{why}");
}

#[tokio::test]
async fn files_larger_than_the_read_buffers_are_streamed_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cx = sink_context(SINK, dir.path());
    let w = window("lw", 0);
    let rows: Vec<Value> = (0..3000)
        .map(|i| {
            let mut row = message("zoom", &format!("m{i}"), "2025-05-01T00:00:00Z");
            row["text"] = json!(format!(
                "row {i}, \"quoted\"\nand long: {}",
                "x".repeat(i % 300)
            ));
            row
        })
        .collect();
    let gone: Vec<String> = (0..3000).step_by(7).map(|i| format!("m{i}")).collect();
    let keys: Vec<(&str, &str)> = gone.iter().map(|id| ("zoom", id.as_str())).collect();
    let left: Vec<Value> = rows
        .iter()
        .filter(|r| !gone.iter().any(|g| r["message_id"] == g.as_str()))
        .cloned()
        .collect();
    let name = chatlake_lake::testing::data_file_name(SINK, "lw", 0, 0, "csv.gz");
    let mut lakes = Vec::new();
    for (lake, rows) in [("csv", &rows), ("reference", &left)] {
        let root = dir.path().join(lake);
        let mut sink = build_sink("gzip", ",")(&root, &[]);
        sink.write(Batch::new(w.clone(), canonical_batch(rows)), &cx)
            .await
            .unwrap();
        sink.commit(&w, &cx).await.unwrap();
        lakes.push((root, sink));
    }
    let (root, sink) = &mut lakes[0];
    assert!(read_text(&root.join(&name)).len() > 512 * 1024);
    let removed = sink
        .remove_rows(&removal_by_id(&w, &keys), &cx)
        .await
        .unwrap();
    assert_eq!(removed, gone.len() as u64);
    same_bytes(&root.join(&name), &lakes[1].0.join(&name));
}
