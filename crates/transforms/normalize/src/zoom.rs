//! Zoom user-message and chat-report rows → canonical messages.
//!
//! Edited and deleted versions are records of their own: `sent_at` is the version's own
//! `timestamp` (ms; `date_time` when it is missing), `version` is `action_timestamp` where
//! present, else that timestamp, so `dedupe keep = "latest"` returns the newest state. `status`
//! is the lowercase provider status (`normal` when absent), `is_bot` says a `bot_message` was
//! present, `files` become `attachments` as they are. A row without an id or without a usable
//! time is dead-lettered.
//!
//! **Bots.** A `bot_message` object makes a bot's message, also an empty `{}`: the seeds show `{}`
//! only in seed 001's Postman sample, where every value is a placeholder, never on a person's
//! message, and the shared reference job (`shared/bench/JOBS.md`) counts `{}` a bot. No other
//! field is consulted. The content itself has no canonical column: with `raw = true` it stays in
//! `raw`, as do mentions (`at_items`), which the schema has no place for either; a bot's
//! `external_sender_email` becomes `sender_id` when there is no `sender`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, StringArray, StringBuilder};
use chatlake_core::schema;
use chatlake_core::{Batch, Emitter, Error, Result, TransformContext};
use chrono::DateTime;

use crate::columns::{CanonicalColumns, Kept, raw_input};

/// The record type of `zoom_user_messages` (see `chatlake-source-zoom`).
pub const USER_MESSAGES: &str = "zoom.user_messages";
/// The record type of `zoom_chat_report`.
pub const CHAT_REPORT: &str = "zoom.chat_report";

/// The instants a row's time may take, in milliseconds: years 0001 to 9999 UTC, what RFC 3339
/// (JSON Lines, CSV) can write. Checked before the microseconds are computed, so a far-off
/// `timestamp` is a dead letter instead of wrapping round into a nonsense time.
const WRITABLE_MS: std::ops::RangeInclusive<i64> = -62_135_596_800_000..=253_402_300_799_999;

/// Maps one raw Zoom batch.
pub fn map(batch: Batch, out: &mut Emitter, cx: &TransformContext, raw: bool) -> Result<()> {
    let data = &batch.data;
    let raw = raw_input(data, raw, cx)?;
    let stream = match schema::record_type(data.schema_ref()) {
        Some(CHAT_REPORT) => "chat_report",
        _ => "user_messages",
    };
    let missing = |name: &str| {
        Error::component(
            &cx.name,
            format!("Zoom batch has no column `{name}` of the expected type"),
        )
    };
    let text = |name: &str| -> Result<&StringArray> {
        data.column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| missing(name))
    };
    let int = |name: &str| -> Result<&Int64Array> {
        data.column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .ok_or_else(|| missing(name))
    };
    let id = text("id")?;
    let date_time = text("date_time")?;
    let timestamp = int("timestamp")?;
    let action = int("action_timestamp")?;
    let status_in = text("status")?;
    let sender_member = text("sender_member_id")?;
    let sender_email = text("sender")?;
    let is_bot = data
        .column_by_name("is_bot")
        .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
        .ok_or_else(|| missing("is_bot"))?;
    let files = data
        .column_by_name("files")
        .ok_or_else(|| missing("files"))?;
    let n = data.num_rows();

    let mut keep = Vec::with_capacity(n);
    let mut sent_at = Vec::with_capacity(n);
    let mut version = Vec::with_capacity(n);
    let mut status = StringBuilder::with_capacity(n, n * 7);
    let mut lowered = String::new();
    let bot_message = text("bot_message")?;
    // `sender_id` is the e-mail (spec section 3), so that one person has one id across
    // providers: `sender`, else the bot's `external_sender_email`, else the member id. Where
    // every row has `sender`, the column passes through as it is.
    let mut sender =
        (sender_email.null_count() > 0).then(|| StringBuilder::with_capacity(n, n * 24));
    for i in 0..n {
        let ms = if timestamp.is_valid(i) {
            Some(timestamp.value(i))
        } else if date_time.is_valid(i) {
            DateTime::parse_from_rfc3339(date_time.value(i))
                .ok()
                .map(|t| t.timestamp_millis())
        } else {
            None
        };
        let problem = match (id.is_valid(i) && !id.value(i).is_empty(), ms) {
            (false, _) => Some("a message without an id"),
            (true, None) => Some("a message without a usable timestamp or date_time"),
            (true, Some(ms)) if !WRITABLE_MS.contains(&ms) => {
                Some("a timestamp out of range (years 0001 to 9999)")
            }
            _ => None,
        };
        if let Some(reason) = problem {
            let raw = serde_json::json!({
                "id": id.is_valid(i).then(|| id.value(i)),
                "date_time": date_time.is_valid(i).then(|| date_time.value(i)),
                "timestamp": timestamp.is_valid(i).then(|| timestamp.value(i)),
                "sender": sender_email.is_valid(i).then(|| sender_email.value(i)),
            });
            cx.dead_letters
                .record(&cx.name, Some(&batch.window), reason, raw, &cx.metrics)?;
            keep.push(false);
            continue;
        }
        let ms = ms.unwrap_or_default();
        keep.push(true);
        sent_at.push(ms * 1000);
        version.push(if action.is_valid(i) {
            action.value(i)
        } else {
            ms
        });
        status.append_value(match status_in.is_valid(i).then(|| status_in.value(i)) {
            None | Some("Normal") => "normal",
            Some("Edited") => "edited",
            Some("Deleted") => "deleted",
            Some(other) => {
                lowered.clear();
                lowered.push_str(other);
                lowered.make_ascii_lowercase();
                &lowered
            }
        });
        if let Some(sender) = &mut sender {
            if sender_email.is_valid(i) {
                sender.append_value(sender_email.value(i));
            } else if let Some(email) = bot_message
                .is_valid(i)
                .then(|| external_sender_email(bot_message.value(i)))
                .flatten()
            {
                sender.append_value(email);
            } else {
                sender.append_option(sender_member.is_valid(i).then(|| sender_member.value(i)));
            }
        }
    }

    let kept = Kept::new(keep);
    let col = |name: &str| -> Result<ArrayRef> {
        kept.pass(
            data.column_by_name(name)
                .ok_or_else(|| missing(name))?
                .as_ref(),
        )
    };
    let canonical = CanonicalColumns {
        provider: "zoom",
        stream,
        message_id: col("id")?,
        conversation_id: Some(col("conversation_id")?),
        conversation_name: Some(col("conversation_name")?),
        sender_id: match &mut sender {
            Some(sender) => Arc::new(sender.finish()),
            None => kept.pass(sender_email)?,
        },
        sender_name: Some(col("sender_display_name")?),
        recipient: Some(col("recipient")?),
        sent_at,
        text: col("message")?,
        is_bot: Some(kept.pass(is_bot)?),
        status: Some(Arc::new(status.finish())),
        channel: None,
        reply_to_id: Some(col("reply_main_message_id")?),
        attachments: Some(kept.pass(files.as_ref())?),
        delivered_at: None,
        version,
        raw: raw.map(|r| kept.pass(r)).transpose()?,
    };
    out.emit(batch.window.clone(), canonical.into_batch(&cx.run.run_id)?);
    Ok(())
}

/// The `external_sender_email` of a `bot_message` object (JSON text), if it holds a non-empty one.
fn external_sender_email(bot_message: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(bot_message).ok()?;
    let email = value.get("external_sender_email")?.as_str()?;
    (!email.is_empty()).then(|| email.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::context;
    use arrow::array::{AsArray, ListArray};
    use arrow::datatypes::TimestampMicrosecondType;
    use chatlake_core::{Window, WindowRef};
    use chatlake_source_zoom::parse::{Context, RawBuilder};

    fn window() -> WindowRef {
        Arc::new(Window {
            source: "zoom".into(),
            stream: "chat_report".into(),
            index: 0,
            start: None,
            end: None,
            utc_offset: chrono::FixedOffset::east_opt(0).unwrap(),
            label: "w".into(),
            key_name: None,
        })
    }

    #[test]
    fn report_versions_map_to_their_own_records() {
        let body = br#"{"messages":[
            {"id":"a","message":"hi","sender":"x@e","sender_member_id":"m1","sender_display_name":"X",
             "receiver":"y@e","timestamp":1000,"reply_main_message_id":"z","bot_message":{},
             "files":[{"file_id":"f","file_name":"n","file_size":3,"download_url":"u"}]},
            {"message":"no id","timestamp":1}],
            "edited_messages":[{"id":"a","message":"hi!","timestamp":5000,"action_timestamp":6000}],
            "deleted_messages":[{"id":"b","message":"","date_time":"2025-01-01T00:00:01Z"}]}"#;
        let mut b = RawBuilder::new(CHAT_REPORT);
        let cx = Context {
            conversation_id: Some("s1"),
            ..Context::default()
        };
        b.append_json(body, Some(&cx)).unwrap();
        let dir = std::env::temp_dir().join(format!("zoom-normalize-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cx = context(&dir);
        let mut out = Emitter::default();
        map(
            Batch::new(window(), b.finish().unwrap()),
            &mut out,
            &cx,
            false,
        )
        .unwrap();
        let batches: Vec<Batch> = out.drain().collect();
        assert_eq!(batches.len(), 1);
        let d = &batches[0].data;
        assert_eq!(d.num_rows(), 3, "the row without an id is dead-lettered");
        assert_eq!(cx.dead_letters.count(), 1);
        let text = |c: &str| d.column_by_name(c).unwrap().as_string::<i32>().clone();
        let int = |c: &str| {
            d.column_by_name(c)
                .unwrap()
                .as_primitive::<arrow::datatypes::Int64Type>()
                .clone()
        };
        assert_eq!(text("provider").value(0), "zoom");
        assert_eq!(text("stream").value(0), "chat_report");
        assert_eq!(text("conversation_id").value(0), "s1");
        assert_eq!(
            text("sender_id").value(0),
            "x@e",
            "the e-mail, not the member id"
        );
        assert_eq!(text("recipient").value(0), "y@e");
        assert_eq!(text("reply_to_id").value(0), "z");
        let status = text("status");
        let status: Vec<&str> = (0..3).map(|i| status.value(i)).collect();
        assert_eq!(status, ["normal", "edited", "deleted"]);
        assert_eq!(
            int("version").values().to_vec(),
            [1000, 6000, 1_735_689_601_000]
        );
        let sent = d
            .column_by_name("sent_at")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>();
        assert_eq!(sent.value(1), 5_000_000, "its own timestamp");
        assert!(d.column_by_name("is_bot").unwrap().as_boolean().value(0));
        let files = d
            .column_by_name("attachments")
            .unwrap()
            .as_any()
            .downcast_ref::<ListArray>()
            .unwrap();
        assert_eq!(files.value_length(0), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn sender_id_is_the_email_then_the_bots_email_then_the_member_id() {
        let body = br#"{"messages":[
            {"id":"a","sender":"x@e","sender_member_id":"m1","timestamp":1000},
            {"id":"b","sender_member_id":"m2","timestamp":1000,
             "bot_message":{"external_sender_email":"bot@e","content":{}}},
            {"id":"c","send_member_id":"m3","timestamp":1000,"bot_message":{}},
            {"id":"d","timestamp":1000}]}"#;
        let mut b = RawBuilder::new(CHAT_REPORT);
        b.append_json(body, Some(&Context::default())).unwrap();
        let dir = std::env::temp_dir().join(format!("zoom-sender-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cx = context(&dir);
        let mut out = Emitter::default();
        map(
            Batch::new(window(), b.finish().unwrap()),
            &mut out,
            &cx,
            false,
        )
        .unwrap();
        let batches: Vec<Batch> = out.drain().collect();
        let sender = batches[0]
            .data
            .column_by_name("sender_id")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let got: Vec<Option<&str>> = sender.iter().collect();
        assert_eq!(got, [Some("x@e"), Some("bot@e"), Some("m3"), None]);
    }

    /// With `raw`, each row carries its message's JSON object byte for byte, after the canonical
    /// columns: mentions, rich text, reactions, the reply's timestamp and the bot's content, which
    /// no canonical column holds. A dead-lettered row's record goes with it.
    #[test]
    fn raw_keeps_each_message_as_the_page_had_it() {
        let first = r#"{"id":"a","message":"hi @B","sender":"x@e","timestamp":1000,
             "rich_text":[{"start_position":0,"end_position":2,"format_type":"Bold"}],
             "at_items":[{"at_contact":"b@e","at_type":1,"start_position":3,"end_position":5}],
             "reactions":[{"emoji":"U+1F44D","total_count":1}],
             "reply_main_message_timestamp":"1568751917976", "future_field" : 1.50}"#;
        let bot = r#"{"id":"b","timestamp":2000,"bot_message":{"content":{"head":{"text":"é"}}}}"#;
        let body = format!(
            r#"{{"messages":[{first}, {{"timestamp":3}} ,{bot}],"edited_messages":[{bot}]}}"#
        );
        let mut b = RawBuilder::new(CHAT_REPORT).keeping_raw(true);
        b.append_json(body.as_bytes(), Some(&Context::default()))
            .unwrap();
        let dir = std::env::temp_dir().join(format!("zoom-raw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cx = context(&dir);
        let mut out = Emitter::default();
        map(
            Batch::new(window(), b.finish().unwrap()),
            &mut out,
            &cx,
            true,
        )
        .unwrap();
        let batches: Vec<Batch> = out.drain().collect();
        let d = &batches[0].data;
        assert_eq!(d.schema(), schema::canonical_with_raw());
        let raw = d.column_by_name(schema::RAW).unwrap().as_string::<i32>();
        let got: Vec<&str> = raw.iter().map(|v| v.unwrap()).collect();
        assert_eq!(
            got,
            [first, bot, bot],
            "the row without an id is a dead letter"
        );
        assert_eq!(cx.dead_letters.count(), 1);

        // Without `raw` the canonical schema alone, also when the input carries the records.
        let mut b = RawBuilder::new(CHAT_REPORT).keeping_raw(true);
        b.append_json(body.as_bytes(), Some(&Context::default()))
            .unwrap();
        let mut out = Emitter::default();
        map(
            Batch::new(window(), b.finish().unwrap()),
            &mut out,
            &cx,
            false,
        )
        .unwrap();
        let batches: Vec<Batch> = out.drain().collect();
        assert_eq!(batches[0].data.schema(), schema::canonical());

        // `raw` wanted but not handed over: a clear error, not a silent loss.
        let mut b = RawBuilder::new(CHAT_REPORT);
        b.append_json(body.as_bytes(), Some(&Context::default()))
            .unwrap();
        let mut out = Emitter::default();
        let e = map(
            Batch::new(window(), b.finish().unwrap()),
            &mut out,
            &cx,
            true,
        )
        .unwrap_err();
        assert!(e.to_string().contains("no Utf8 `raw` column"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_timestamp_out_of_range_is_a_dead_letter_not_a_wrapped_time() {
        let body = br#"{"messages":[
            {"id":"a","timestamp":9223372036854775807},
            {"id":"b","timestamp":-9223372036854775808},
            {"id":"c","timestamp":253402300800000},
            {"id":"d","timestamp":253402300799999},
            {"id":"e","timestamp":-62135596800000}]}"#;
        let mut b = RawBuilder::new(CHAT_REPORT);
        b.append_json(body, Some(&Context::default())).unwrap();
        let dir = std::env::temp_dir().join(format!("zoom-range-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cx = context(&dir);
        let mut out = Emitter::default();
        map(
            Batch::new(window(), b.finish().unwrap()),
            &mut out,
            &cx,
            false,
        )
        .unwrap();
        let batches: Vec<Batch> = out.drain().collect();
        let ids = batches[0]
            .data
            .column_by_name("message_id")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let ids: Vec<&str> = ids.iter().map(|v| v.unwrap()).collect();
        assert_eq!(
            ids,
            ["d", "e"],
            "the first and last writable instants are kept"
        );
        assert_eq!(cx.dead_letters.count(), 3);
    }
}
