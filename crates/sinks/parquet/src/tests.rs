//! The sink built from its config, driven through the `Sink` trait, read back with the parquet
//! crate's Arrow reader.

use std::fs::File;
use std::path::Path;

use arrow::array::AsArray;
use arrow::compute::concat_batches;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use chatlake_core::schema::{self, canonical};
use chatlake_core::{Registry, Sink, SinkConfig};
use chatlake_lake::testing::removal::{
    check_missing_key_column, check_null_integer_and_boolean_keys, check_remove_rows,
};
use chatlake_lake::testing::{
    build_context, canonical_batch, files_under, sink_context, write_interleaved,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, LogicalType, TimeUnit};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::properties::EnabledStatistics;
use parquet::schema::types::ColumnPath;
use serde_json::{Value, json};

use crate::{ParquetCompression, ParquetSinkConfig};

/// The sink name the tests use.
const SINK: &str = "lake";

fn config(options: Value) -> Result<ParquetSinkConfig, String> {
    serde_json::from_value(options).map_err(|e| e.to_string())
}

/// Every row of a file, and its footer.
fn read_parquet(path: &Path) -> (RecordBatch, std::sync::Arc<ParquetMetaData>) {
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    let metadata = builder.metadata().clone();
    let schema = builder.schema().clone();
    let batches: Vec<RecordBatch> = builder.build().unwrap().map(|b| b.unwrap()).collect();
    (concat_batches(&schema, &batches).unwrap(), metadata)
}

/// The value of `key=value` in a Hive path.
fn partition_value<'a>(path: &'a str, key: &str) -> &'a str {
    path.split('/')
        .find_map(|seg| seg.strip_prefix(key)?.strip_prefix('='))
        .unwrap()
}

#[tokio::test]
async fn writes_partitioned_parquet_that_reads_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let mut sink = config(json!({"path": root, "partition_by": ["provider", "sent_date"]}))
        .unwrap()
        .build(&build_context("lake"))
        .unwrap();
    let cx = sink_context(SINK, dir.path());
    let rows = write_interleaved(sink.as_mut(), &cx).await;

    let name = &chatlake_lake::testing::data_file_name(SINK, "lw", 0, 0, "parquet");
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
    let canonical = canonical();
    let data_columns: Vec<usize> = (0..canonical.fields().len())
        .filter(|&i| {
            ![schema::PROVIDER, schema::SENT_DATE].contains(&canonical.field(i).name().as_str())
        })
        .collect();

    let mut total = 0;
    for f in &files {
        let (got, metadata) = read_parquet(&root.join(f));
        // The rows of this partition, in the order they were written.
        let provider = partition_value(f, "provider");
        let date = partition_value(f, "sent_date");
        let mine: Vec<Value> = rows
            .iter()
            .filter(|r| {
                r["provider"] == provider && r["sent_at"].as_str().unwrap().starts_with(date)
            })
            .cloned()
            .collect();
        let want = canonical_batch(&mine).project(&data_columns).unwrap();

        // Same columns, types (nested attachments, UTC timestamps) and values, byte for byte;
        // no partition column inside the file.
        assert_eq!(got.schema().fields(), want.schema().fields(), "{f}");
        assert_eq!(got.columns(), want.columns(), "{f}");
        assert!(got.schema().column_with_name(schema::PROVIDER).is_none());
        total += got.num_rows();

        let descr = metadata.file_metadata().schema_descr();
        let sent_at = descr
            .columns()
            .iter()
            .find(|c| c.name() == schema::SENT_AT)
            .unwrap();
        assert_eq!(
            sent_at.logical_type_ref(),
            Some(&LogicalType::timestamp(true, TimeUnit::MICROS))
        );
        for column in metadata.row_group(0).columns() {
            assert!(matches!(column.compression(), Compression::ZSTD(_)));
            // Random ids and free text carry no statistics by default; the rest do.
            let path = column.column_path().string();
            let plain = ["message_id", "text", "reply_to_id", "recipient"].contains(&path.as_str());
            assert_eq!(
                column.statistics().is_none(),
                plain,
                "statistics of {path} in {f}"
            );
        }
    }
    assert_eq!(total, rows.len());

    // Spot checks of what the comparisons above cover.
    let (lw, _) = read_parquet(&root.join(&files[0]));
    let text = lw.column_by_name(schema::TEXT).unwrap().as_string::<i32>();
    assert_eq!(text.value(0), "こんにちは、世界 🌏 \"quoted\", comma; semi");
    assert_eq!(text.value(1), "line one\nline two\r\nline three\t  ");
    let attachments = lw
        .column_by_name(schema::ATTACHMENTS)
        .unwrap()
        .as_list::<i32>();
    assert_eq!(attachments.value_length(0), 2);
    assert_eq!(attachments.value_length(1), 0);
    let first = attachments.value(0);
    let names = first
        .as_struct()
        .column_by_name("file_name")
        .unwrap()
        .as_string::<i32>();
    assert_eq!(names.value(0), "報告書.pdf");
    assert_eq!(
        lw.schema()
            .field_with_name(schema::SENT_AT)
            .unwrap()
            .data_type(),
        &schema::utc_timestamp()
    );
    assert!(matches!(
        lw.schema()
            .field_with_name(schema::ATTACHMENTS)
            .unwrap()
            .data_type(),
        DataType::List(_)
    ));
}

#[tokio::test]
async fn every_codec_writes_readable_files_with_rolling_and_row_groups() {
    for (compression, level) in [
        ("snappy", None),
        ("gzip", Some(9)),
        ("none", None),
        ("zstd", Some(19)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("lake");
        let mut options = json!({
            "path": root, "compression": compression, "max_rows_per_file": 3, "row_group_size": 2
        });
        if let Some(level) = level {
            options["compression_level"] = json!(level);
        }
        let mut sink = config(options)
            .unwrap()
            .build(&build_context("lake"))
            .unwrap();
        let cx = sink_context(SINK, dir.path());
        let rows = write_interleaved(sink.as_mut(), &cx).await;

        let files = files_under(&root);
        assert_eq!(files.len(), 2, "{compression}: 5 rows at 3 a file");
        let (first, metadata) = read_parquet(&root.join(&files[0]));
        assert_eq!(first.num_rows(), 3);
        assert_eq!(
            metadata.num_row_groups(),
            2,
            "{compression}: 3 rows at 2 a group"
        );
        let codec = metadata.row_group(0).column(0).compression();
        let want = match compression {
            "snappy" => matches!(codec, Compression::SNAPPY),
            "gzip" => matches!(codec, Compression::GZIP(_)),
            "none" => matches!(codec, Compression::UNCOMPRESSED),
            _ => matches!(codec, Compression::ZSTD(_)),
        };
        assert!(want, "{compression}: {codec:?}");
        let (second, _) = read_parquet(&root.join(&files[1]));
        assert_eq!(
            concat_batches(&first.schema(), [&first, &second]).unwrap(),
            canonical_batch(&rows),
            "{compression}"
        );
        assert_eq!(
            cx.metrics.summarize("lake", "sink", "parquet", 0.0).files,
            2
        );
    }
}

#[test]
fn config_defaults_and_errors() {
    let c = config(json!({"path": "./lake/messages"})).unwrap();
    assert_eq!(c.compression, ParquetCompression::Zstd);
    assert_eq!(c.compression_level, None);
    assert_eq!(c.row_group_size, 122_880);
    assert!(c.partition_by.is_empty());
    assert_eq!(
        c.no_statistics,
        ["message_id", "text", "reply_to_id", "recipient"]
    );
    // An empty list gives every column its statistics.
    let all = config(json!({"path": "x", "no_statistics": []})).unwrap();
    let props = all.properties().unwrap();
    assert_ne!(
        props.statistics_enabled(&ColumnPath::from("text")),
        EnabledStatistics::None
    );

    let e = config(json!({"path": "x", "compression": "zstdd"})).unwrap_err();
    assert!(
        e.contains("unknown variant `zstdd`, expected one of `zstd`, `snappy`, `gzip`, `none`"),
        "{e}"
    );
    let e = config(json!({"path": "x", "header": true})).unwrap_err();
    assert!(e.contains("unknown field `header`"), "{e}");

    let build = |v: Value| config(v).unwrap().build(&build_context("s")).err().unwrap();
    for (options, key, message) in [
        (
            json!({"compression_level": 23}),
            "compression_level",
            "23 is out of range for zstd: use 1 to 22",
        ),
        (
            json!({"compression_level": 0}),
            "compression_level",
            "out of range for zstd",
        ),
        (
            json!({"compression": "gzip", "compression_level": 10}),
            "compression_level",
            "use 0 to 9",
        ),
        (
            json!({"compression": "gzip", "compression_level": -1}),
            "compression_level",
            "use 0 to 9",
        ),
        (
            json!({"compression": "snappy", "compression_level": 1}),
            "compression_level",
            "snappy has no levels",
        ),
        (json!({"row_group_size": 0}), "row_group_size", "at least 1"),
        (
            json!({"max_rows_per_file": 0}),
            "max_rows_per_file",
            "at least 1",
        ),
        (
            json!({"partition_by": ["provider", "provider"]}),
            "partition_by[1]",
            "listed twice",
        ),
    ] {
        let mut options = options;
        options["path"] = json!("./lake");
        let e = build(options);
        assert_eq!(e.key, key);
        assert!(e.message.contains(message), "{}", e.message);
    }
    assert_eq!(build(json!({"path": ""})).key, "path");
}

#[test]
fn every_option_is_documented_for_chatlake_components() {
    let mut registry = Registry::new();
    registry.register_sink::<ParquetSinkConfig>();
    let docs = registry.docs();
    let doc = docs.iter().find(|d| d.type_name == "parquet").unwrap();
    assert_eq!(doc.summary, ParquetSinkConfig::SUMMARY);
    for o in &doc.options {
        assert!(!o.description.is_empty(), "{} has no description", o.name);
    }
    let option = |name: &str| doc.options.iter().find(|o| o.name == name).unwrap();
    assert_eq!(option("compression").default, Some(json!("zstd")));
    assert_eq!(option("compression").kind, "zstd | snappy | gzip | none");
    assert_eq!(option("row_group_size").default, Some(json!(122_880)));
    assert!(option("path").required);
}

fn build_sink(options: Value) -> impl Fn(&Path, &[&str]) -> Box<dyn Sink> {
    move |root: &Path, partition_by: &[&str]| {
        let mut options = options.clone();
        options["path"] = json!(root);
        options["partition_by"] = json!(partition_by);
        config(options)
            .unwrap()
            .build(&build_context(SINK))
            .unwrap()
    }
}

fn read_ids(path: &Path) -> Vec<String> {
    let (batch, _) = read_parquet(path);
    let ids = batch
        .column_by_name(schema::MESSAGE_ID)
        .unwrap()
        .as_string::<i32>();
    ids.iter().map(|v| v.unwrap().to_string()).collect()
}

/// The rewritten file is what a fresh sink writes for the same rows: same rows and types,
/// same footer (Arrow schema, key-value metadata), row groups, codecs and encodings.
fn same_file(rewritten: &Path, reference: &Path) {
    let (got, got_meta) = read_parquet(rewritten);
    let (want, want_meta) = read_parquet(reference);
    let f = rewritten.display();
    assert_eq!(got, want, "{f}");
    assert_eq!(
        got_meta.file_metadata().key_value_metadata(),
        want_meta.file_metadata().key_value_metadata(),
        "{f}"
    );
    assert_eq!(got_meta.num_row_groups(), want_meta.num_row_groups(), "{f}");
    for (g, w) in got_meta.row_groups().iter().zip(want_meta.row_groups()) {
        assert_eq!(g.num_rows(), w.num_rows(), "{f}");
        for (gc, wc) in g.columns().iter().zip(w.columns()) {
            assert_eq!(gc.column_path(), wc.column_path(), "{f}");
            assert_eq!(gc.compression(), wc.compression(), "{f}");
            assert_eq!(
                gc.encodings().collect::<Vec<_>>(),
                wc.encodings().collect::<Vec<_>>(),
                "{f}"
            );
        }
    }
    // Nothing in the encoding depends on when or how often the file was written.
    assert_eq!(
        std::fs::read(rewritten).unwrap(),
        std::fs::read(reference).unwrap(),
        "{f}"
    );
}

#[tokio::test]
async fn removes_rows_from_committed_files_with_the_sinks_own_writer() {
    for options in [
        json!({}),
        json!({"compression": "gzip", "compression_level": 9, "row_group_size": 1}),
    ] {
        let build = build_sink(options);
        let dir = tempfile::tempdir().unwrap();
        check_remove_rows(dir.path(), SINK, &build, &read_ids, &same_file).await;
        let dir = tempfile::tempdir().unwrap();
        check_null_integer_and_boolean_keys(dir.path(), SINK, &build, &read_ids).await;
        let dir = tempfile::tempdir().unwrap();
        check_missing_key_column(dir.path(), SINK, &build).await;
    }
}

#[test]
fn the_format_removes_rows() {
    let sink = config(json!({"path": "x"}))
        .unwrap()
        .build(&build_context(SINK))
        .unwrap();
    assert!(sink.removes_rows().is_ok());
}

#[test]
fn an_object_store_path_builds_with_a_storage_table_and_says_where_it_writes() {
    let sink = config(json!({
        "path": "s3://acme-lake/chat/messages/",
        "storage": {"endpoint": "http://127.0.0.1:8333", "secret_access_key": "S3cret-Value-1"},
    }))
    .unwrap();
    assert!(!format!("{sink:?}").contains("S3cret-Value-1"), "{sink:?}");
    let built = sink.build(&build_context("lake")).unwrap();
    assert_eq!(
        built.destination().as_deref(),
        Some("s3://acme-lake/chat/messages")
    );
    let local = config(json!({"path": "./lake/messages"}))
        .unwrap()
        .build(&build_context("lake"))
        .unwrap();
    assert_eq!(local.destination().as_deref(), Some("./lake/messages"));
    // A URL chatlake cannot write to is refused at `path`, offline.
    let refused = config(json!({"path": "ftp://host/lake"}))
        .unwrap()
        .build(&build_context("lake"))
        .err()
        .unwrap();
    assert_eq!(refused.key, "path");
    let typo = config(json!({"path": "s3://b/x", "storage": {"endpont": "x"}})).unwrap_err();
    assert!(typo.contains("endpont"), "{typo}");
}
