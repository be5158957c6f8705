//! What each fuzz target does with its input, shared by the targets (`fuzz_targets/`, built by
//! `cargo fuzz` on nightly) and by `tests/fuzz_corpus.rs`, which replays the corpus on stable in
//! the normal `cargo test`. Every function must return for any input, without a panic, and
//! checks what must hold whatever the input.

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arrow::record_batch::RecordBatch;
use chatlake_source_kit::parsed::RowSink;

/// Counts what a parser hands over.
#[derive(Default)]
struct Count {
    rows: u64,
    dead_letters: u64,
}

impl RowSink for Count {
    fn batch(&mut self, batch: RecordBatch) -> Result<(), String> {
        self.rows += batch.num_rows() as u64;
        check_whole_records(&batch);
        Ok(())
    }

    fn dead_letter(&mut self, reason: &str, raw: serde_json::Value) -> Result<(), String> {
        assert!(!reason.is_empty());
        assert!(raw.get("record").is_some(), "{raw}");
        self.dead_letters += 1;
        Ok(())
    }
}

/// A batch's `raw` column, if it has one (records kept whole): one JSON object per row.
fn check_whole_records(batch: &RecordBatch) {
    use arrow::array::{Array, AsArray};
    if let Some(raw) = batch.column_by_name("raw") {
        let raw = raw.as_string::<i32>();
        assert_eq!(raw.len(), batch.num_rows());
        for record in raw.iter().flatten() {
            let parsed: Result<serde_json::Map<String, serde_json::Value>, _> =
                serde_json::from_str(record);
            assert!(parsed.is_ok(), "not a JSON object: {record}");
        }
    }
}

/// A LINE WORKS CSV: the trailer check, then the parse; every record is a row or a dead
/// letter, and a file with a trailer sends no row.
pub fn csv_lineworks(data: &[u8]) {
    use chatlake_source_lineworks::Language;
    use chatlake_source_lineworks::parse::{ParseOptions, find_trailer, parse};
    for keep_raw in [false, true] {
        let options = ParseOptions {
            language: Language::EnUs,
            batch_size: 7,
            origin: "fuzz".into(),
            header_warned: Arc::new(AtomicBool::new(true)),
            keep_raw,
        };
        let mut sink = Count::default();
        if let Ok(outcome) = parse(Cursor::new(data), &options, &mut sink) {
            assert_eq!(outcome.dead_letters, sink.dead_letters);
            if outcome.trailer.is_some() {
                assert_eq!(sink.rows, 0, "rows of a failed download were sent");
            } else {
                assert_eq!(outcome.rows, sink.rows);
            }
        }
    }
    let mut file = tempfile::tempfile().expect("a temporary file");
    std::io::Write::write_all(&mut file, data).expect("written");
    let _ = find_trailer(&mut file);
}

/// A Qlara export CSV, read by header name.
pub fn csv_qlara(data: &[u8]) {
    use chatlake_source_qlara::parse::{SendDateFilter, parse_filtered};
    for keep_raw in [false, true] {
        let mut sink = Count::default();
        let filter = SendDateFilter::default();
        if let Ok(outcome) = parse_filtered(Cursor::new(data), 5, &filter, keep_raw, &mut sink) {
            assert_eq!(outcome.rows, sink.rows);
            assert_eq!(outcome.dead_letters, sink.dead_letters);
        }
    }
}

/// A Zoom page (user messages and chat report), as saved pages hold them; a page that fails
/// keeps none of its rows.
pub fn zoom_page(data: &[u8]) {
    use chatlake_source_zoom::parse::{CHAT_REPORT, RawBuilder, USER_MESSAGES};
    for (record_type, keep_raw) in [
        (USER_MESSAGES, false),
        (CHAT_REPORT, false),
        (USER_MESSAGES, true),
    ] {
        let mut builder = RawBuilder::new(record_type).keeping_raw(keep_raw);
        let ok = builder.append_json(data, None).is_ok();
        let rows = builder.len();
        if !ok {
            assert_eq!(rows, 0, "a failed page kept rows");
        }
        let batch = builder.finish().expect("a batch of what was appended");
        assert_eq!(batch.num_rows(), rows);
        check_whole_records(&batch);
    }
}

/// A Qlara exports-list answer and a 429 body.
pub fn qlara_status(data: &[u8]) {
    let _ = chatlake_source_qlara::export_list_states(data);
    if let Some(wait) = chatlake_source_qlara::retry_after_seconds(data) {
        assert!(wait.is_finite() && wait >= 0.0);
    }
}

/// A pipeline file, as TOML and as YAML.
pub fn pipeline_file(data: &[u8]) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for name in ["p.toml", "p.yaml"] {
        let path = dir.path().join(name);
        std::fs::write(&path, data).expect("written");
        let _ = chatlake_core::config::PipelineFile::load(&path);
    }
}

/// A fuzz target: one input, any outcome but a panic.
pub type Target = fn(&[u8]);

/// Every target by its name (the directory of its corpus).
pub const TARGETS: [(&str, Target); 5] = [
    ("csv_lineworks", csv_lineworks),
    ("csv_qlara", csv_qlara),
    ("zoom_page", zoom_page),
    ("qlara_status", qlara_status),
    ("pipeline_file", pipeline_file),
];
