//! Helpers for the tests of file sinks (feature `testing`): canonical batches from JSON rows,
//! windows, a [`SinkContext`] writing dead letters into a temporary directory, and the removal
//! scenarios every format must pass ([`removal`]).

pub mod removal;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use arrow::json::ReaderBuilder;
use arrow::record_batch::RecordBatch;
use chatlake_core::dead_letter::DeadLetters;
use chatlake_core::metrics::ComponentMetrics;
use chatlake_core::schema::canonical;
use chatlake_core::stage::RunInfo;
use chatlake_core::{Batch, BuildContext, Sink, SinkContext, Window, WindowRef};
use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{Value, json};

/// The run id of [`sink_context`].
pub const RUN_ID: &str = "20250601T000000Z-test";

/// Window `index` of source `source`.
pub fn window(source: &str, index: u32) -> WindowRef {
    Arc::new(Window {
        source: source.into(),
        stream: "message_contents".into(),
        index,
        start: None,
        end: None,
        utc_offset: FixedOffset::east_opt(0).expect("zero is a valid offset"),
        label: format!("{source} test window {index}"),
        key_name: None,
    })
}

/// A context for sink `name` of pipeline `test`, run [`RUN_ID`].
pub fn sink_context(name: &str, dead_letter_dir: &Path) -> SinkContext {
    SinkContext {
        name: name.into(),
        metrics: Arc::new(ComponentMetrics::default()),
        dead_letters: DeadLetters::in_dir(dead_letter_dir),
        run: Arc::new(RunInfo {
            pipeline: "test".into(),
            run_id: RUN_ID.into(),
            started_at: Utc::now(),
        }),
        committed: Arc::default(),
        reloading: Arc::default(),
        owner: Arc::new(chatlake_core::stage::StateOwner {
            id: "test-state".into(),
            dir: dead_letter_dir.join("state"),
        }),
        leftovers_only_of: None,
    }
}

/// The name sink `sink` of pipeline `test` gives part `part` of [`window`]`(source, index)`.
pub fn data_file_name(sink: &str, source: &str, index: u32, part: u32, extension: &str) -> String {
    format!(
        "part-test.{sink}.{}.{part:04}.{extension}",
        window(source, index).key()
    )
}

/// What `SinkConfig::build` gets, for sink `name` of pipeline `test`.
pub fn build_context(name: &str) -> BuildContext {
    BuildContext {
        name: name.into(),
        pipeline: "test".into(),
        emulator: None,
        start: None,
        end: None,
        now: Utc::now(),
        ..BuildContext::default()
    }
}

/// Drives `sink` as the runtime does when two windows interleave (fan-in): window `lw` 0 gets
/// [`sample_messages`] in two batches, and window `zoom` 1 gets two other rows in between.
/// Commits `lw` 0, aborts `zoom` 1, finishes, and returns the rows that must be in the files.
pub async fn write_interleaved(sink: &mut dyn Sink, cx: &SinkContext) -> Vec<Value> {
    let (kept, dropped) = (window("lw", 0), window("zoom", 1));
    let rows = sample_messages();
    let other = vec![
        message("zoom", "aborted-1", "2025-05-01T10:00:00Z"),
        message("zoom", "aborted-2", "2025-05-03T10:00:00Z"),
    ];
    let batches = [
        Batch::new(kept.clone(), canonical_batch(&rows[..3])),
        Batch::new(dropped.clone(), canonical_batch(&other)),
        Batch::new(kept.clone(), canonical_batch(&rows[3..])),
    ];
    for batch in batches {
        sink.write(batch, cx).await.expect("write");
    }
    sink.commit(&kept, cx).await.expect("commit");
    sink.abort(&dropped, cx).await.expect("abort");
    sink.finish(cx).await.expect("finish");
    rows
}

/// Every file under `root` but the owner manifest, relative to it with `/` between parts, sorted.
pub fn files_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("_chatlake."))
            {
                // The sink's owner manifest (crate::owner), not a data file.
            } else if let Ok(rel) = path.strip_prefix(root) {
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            }
        }
    }
    out.sort();
    out
}

/// One canonical message with every column set; `sent_at` is RFC 3339. Change fields with
/// `m["text"] = json!(...)`.
pub fn message(provider: &str, id: &str, sent_at: &str) -> Value {
    let at = DateTime::parse_from_rfc3339(sent_at)
        .expect("an RFC 3339 time")
        .with_timezone(&Utc);
    json!({
        "provider": provider,
        "stream": "message_contents",
        "message_id": id,
        "conversation_id": "room-1",
        "conversation_name": "General",
        "sender_id": "alice@example.com",
        "sender_name": "Alice",
        "recipient": null,
        "sent_at": at.to_rfc3339(),
        "sent_date": at.date_naive().to_string(),
        "text": format!("message {id}"),
        "is_bot": false,
        "status": "normal",
        "channel": "chat",
        "reply_to_id": null,
        "attachments": [],
        "delivered_at": null,
        "version": at.timestamp_millis(),
        "run_id": RUN_ID,
    })
}

/// One attachment as [`message`] takes it.
pub fn attachment(id: &str, name: &str, size: i64) -> Value {
    json!({
        "file_id": id,
        "file_name": name,
        "file_size": size,
        "download_url": format!("https://files.example.com/{id}?sig=a%2Fb&x=1"),
        "stored_at": null,
    })
}

/// Messages that exercise the formats: CJK, emoji, quotes, delimiters, newlines, leading and
/// trailing spaces, nulls, empty and non-empty attachment lists, two providers and two days.
pub fn sample_messages() -> Vec<Value> {
    let mut rows = vec![
        message("lineworks", "lw-1", "2025-05-01T00:00:00Z"),
        message("lineworks", "lw-2", "2025-05-01T09:30:15.250Z"),
        message("zoom", "zm-1", "2025-05-01T23:59:59.999999Z"),
        message("zoom", "zm-2", "2025-05-02T03:04:05Z"),
        message("lineworks", "lw-3", "2025-05-02T12:00:00Z"),
    ];
    rows[0]["text"] = json!("こんにちは、世界 🌏 \"quoted\", comma; semi");
    rows[0]["attachments"] = json!([
        attachment("f1", "報告書.pdf", 1024),
        attachment("f2", "photo \"1\".png", 0),
    ]);
    rows[1]["text"] = json!("line one\nline two\r\nline three\t  ");
    rows[1]["conversation_name"] = json!(null);
    rows[1]["is_bot"] = json!(true);
    rows[1]["sender_name"] = json!("[Bot] 通知");
    rows[2]["text"] = json!(null);
    rows[2]["status"] = json!("deleted");
    rows[2]["delivered_at"] = json!("2025-05-02T00:00:00.5Z");
    rows[2]["attachments"] = json!([{
        "file_id": "f3", "file_name": null, "file_size": null, "download_url": null,
        "stored_at": null
    }]);
    rows[3]["text"] = json!("  leading and trailing  ");
    rows[3]["reply_to_id"] = json!("zm-1");
    rows[4]["text"] = json!("");
    rows
}

/// A canonical batch of `rows` (JSON objects with every canonical column).
pub fn canonical_batch(rows: &[Value]) -> RecordBatch {
    // Arrow's JSON reader parses a timestamp's zone name, which needs its `chrono-tz` feature
    // for `UTC`; decode with `+00:00` and relabel to the canonical type.
    let schema = canonical();
    let decode_schema = Arc::new(Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Timestamp(unit, Some(_)) => Field::new(
                    f.name(),
                    DataType::Timestamp(*unit, Some("+00:00".into())),
                    f.is_nullable(),
                ),
                _ => f.as_ref().clone(),
            })
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    ));
    let mut decoder = ReaderBuilder::new(decode_schema)
        .build_decoder()
        .expect("a decoder for the canonical schema");
    decoder
        .serialize(rows)
        .expect("rows match the canonical schema");
    let decoded = decoder
        .flush()
        .expect("rows decode")
        .expect("at least one row");
    let columns = decoded
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| arrow::compute::cast(c, f.data_type()).expect("timestamps relabel"))
        .collect();
    RecordBatch::try_new(schema, columns).expect("a canonical batch")
}
