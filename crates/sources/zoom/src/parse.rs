//! Zoom response pages → raw Arrow batches.
//!
//! A page is deserialized once into borrowed structs (text without escapes is not copied) and
//! appended straight into Arrow builders. Both sources share one column layout; the record type
//! in the schema metadata says which stream a batch is (`zoom.user_messages` or
//! `zoom.chat_report`), so `normalize` can tell them apart.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, BooleanBuilder, Int64Builder, ListBuilder, StringBuilder, StructBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use chatlake_core::schema::{RECORD_TYPE_KEY, attachment_fields, attachment_item_field};
use serde::{Deserialize, Deserializer};

/// The record type of `zoom_user_messages` batches.
pub const USER_MESSAGES: &str = "zoom.user_messages";
/// The record type of `zoom_chat_report` batches.
pub const CHAT_REPORT: &str = "zoom.chat_report";

fn fields() -> Vec<Field> {
    let text = |name: &str| Field::new(name, DataType::Utf8, true);
    vec![
        text("id"),
        // The channel id, the contact queried, or the report session id.
        text("conversation_id"),
        text("conversation_name"),
        // The listed user (user messages) or null.
        text("user_id"),
        // The report's `receiver`, or the contact of a 1:1.
        text("recipient"),
        text("message"),
        text("message_type"),
        text("sender"),
        // `sender_member_id`, or `send_member_id` when the former is missing.
        text("sender_member_id"),
        text("sender_display_name"),
        text("date_time"),
        Field::new("timestamp", DataType::Int64, true),
        Field::new("action_timestamp", DataType::Int64, true),
        // `Normal`, `Edited`, `Deleted` as the provider says, or which report array it came from.
        text("status"),
        text("reply_main_message_id"),
        Field::new("is_bot", DataType::Boolean, false),
        // The `bot_message` object as JSON text.
        text("bot_message"),
        Field::new("files", DataType::List(attachment_item_field()), false),
        // `reactions` as JSON text.
        text("reactions"),
    ]
}

fn schema_for(record_type: &str) -> SchemaRef {
    let metadata = [(RECORD_TYPE_KEY.to_string(), record_type.to_string())].into();
    Arc::new(Schema::new_with_metadata(fields(), metadata))
}

static USER_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| schema_for(USER_MESSAGES));
static REPORT_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| schema_for(CHAT_REPORT));

/// The raw schema of `record_type` (one of [`USER_MESSAGES`], [`CHAT_REPORT`]).
pub fn raw_schema(record_type: &str) -> SchemaRef {
    if record_type == CHAT_REPORT {
        REPORT_SCHEMA.clone()
    } else {
        USER_SCHEMA.clone()
    }
}

/// A number that may come as a JSON number or a string (`"1568751917976"`).
fn int_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw<'a> {
        Int(i64),
        Float(f64),
        #[serde(borrow)]
        Text(Cow<'a, str>),
    }
    Ok(match Option::<Raw>::deserialize(d)? {
        None => None,
        Some(Raw::Int(n)) => Some(n),
        Some(Raw::Float(f)) => Some(f as i64),
        Some(Raw::Text(s)) => s.trim().parse().ok(),
    })
}

/// One file of a message.
#[derive(Debug, Deserialize)]
pub struct FileItem<'a> {
    #[serde(default, borrow)]
    pub file_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub file_name: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "int_or_string")]
    pub file_size: Option<i64>,
    #[serde(default, borrow)]
    pub download_url: Option<Cow<'a, str>>,
}

/// One message of a page (both endpoints; unknown fields are ignored).
#[derive(Debug, Deserialize)]
pub struct Item<'a> {
    #[serde(default, borrow)]
    pub id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub message: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub message_type: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub sender: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub sender_member_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub send_member_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub sender_display_name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub receiver: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub date_time: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "int_or_string")]
    pub timestamp: Option<i64>,
    #[serde(default, deserialize_with = "int_or_string")]
    pub action_timestamp: Option<i64>,
    #[serde(default, borrow)]
    pub status: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub reply_main_message_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub files: Option<Vec<FileItem<'a>>>,
    // The legacy single-file fields.
    #[serde(default, borrow)]
    pub file_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub file_name: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "int_or_string")]
    pub file_size: Option<i64>,
    #[serde(default, borrow)]
    pub download_url: Option<Cow<'a, str>>,
    #[serde(default)]
    pub bot_message: Option<serde_json::Value>,
    #[serde(default)]
    pub reactions: Option<serde_json::Value>,
}

/// A response page of either endpoint. Saved pages (`files = [...]`) carry the request context
/// at the top level: `user_id` and `to_channel`/`to_contact`, or `session_id`.
#[derive(Debug, Deserialize)]
pub struct Page<'a> {
    #[serde(default, borrow)]
    pub next_page_token: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub messages: Vec<Item<'a>>,
    #[serde(default, borrow)]
    pub edited_messages: Vec<Item<'a>>,
    #[serde(default, borrow)]
    pub deleted_messages: Vec<Item<'a>>,
    #[serde(default, borrow)]
    pub user_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub to_channel: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub to_contact: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub session_id: Option<Cow<'a, str>>,
}

impl Page<'_> {
    /// The page token of the next page, if there is one.
    pub fn next(&self) -> Option<String> {
        self.next_page_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
    }

    pub fn len(&self) -> usize {
        self.messages.len() + self.edited_messages.len() + self.deleted_messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The request context of a page's rows.
#[derive(Debug, Clone, Default)]
pub struct Context<'a> {
    pub conversation_id: Option<&'a str>,
    pub conversation_name: Option<&'a str>,
    pub user_id: Option<&'a str>,
    /// The contact of a 1:1 (user messages).
    pub recipient: Option<&'a str>,
}

/// Arrow builders for one batch of raw rows.
pub struct RawBuilder {
    record_type: &'static str,
    id: StringBuilder,
    conversation_id: StringBuilder,
    conversation_name: StringBuilder,
    user_id: StringBuilder,
    recipient: StringBuilder,
    message: StringBuilder,
    message_type: StringBuilder,
    sender: StringBuilder,
    sender_member_id: StringBuilder,
    sender_display_name: StringBuilder,
    date_time: StringBuilder,
    timestamp: Int64Builder,
    action_timestamp: Int64Builder,
    status: StringBuilder,
    reply: StringBuilder,
    is_bot: BooleanBuilder,
    bot_message: StringBuilder,
    files: ListBuilder<StructBuilder>,
    reactions: StringBuilder,
    rows: usize,
}

impl RawBuilder {
    pub fn new(record_type: &'static str) -> Self {
        let files = ListBuilder::new(StructBuilder::from_fields(attachment_fields(), 0))
            .with_field(attachment_item_field());
        RawBuilder {
            record_type,
            id: StringBuilder::new(),
            conversation_id: StringBuilder::new(),
            conversation_name: StringBuilder::new(),
            user_id: StringBuilder::new(),
            recipient: StringBuilder::new(),
            message: StringBuilder::new(),
            message_type: StringBuilder::new(),
            sender: StringBuilder::new(),
            sender_member_id: StringBuilder::new(),
            sender_display_name: StringBuilder::new(),
            date_time: StringBuilder::new(),
            timestamp: Int64Builder::new(),
            action_timestamp: Int64Builder::new(),
            status: StringBuilder::new(),
            reply: StringBuilder::new(),
            is_bot: BooleanBuilder::new(),
            bot_message: StringBuilder::new(),
            files,
            reactions: StringBuilder::new(),
            rows: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends every item of `page`: `messages` with their own `status`, then (report)
    /// `edited_messages` and `deleted_messages` with `Edited` / `Deleted`.
    pub fn append_page(&mut self, page: &Page<'_>, cx: &Context<'_>) {
        for item in &page.messages {
            self.append(item, cx, None);
        }
        for item in &page.edited_messages {
            self.append(item, cx, Some("Edited"));
        }
        for item in &page.deleted_messages {
            self.append(item, cx, Some("Deleted"));
        }
    }

    fn append(&mut self, m: &Item<'_>, cx: &Context<'_>, status: Option<&str>) {
        self.id.append_option(m.id.as_deref());
        self.conversation_id.append_option(cx.conversation_id);
        self.conversation_name.append_option(cx.conversation_name);
        self.user_id.append_option(cx.user_id);
        self.recipient
            .append_option(m.receiver.as_deref().or(cx.recipient));
        self.message.append_option(m.message.as_deref());
        self.message_type.append_option(m.message_type.as_deref());
        self.sender.append_option(m.sender.as_deref());
        self.sender_member_id.append_option(
            m.sender_member_id
                .as_deref()
                .or(m.send_member_id.as_deref()),
        );
        self.sender_display_name
            .append_option(m.sender_display_name.as_deref());
        self.date_time.append_option(m.date_time.as_deref());
        self.timestamp.append_option(m.timestamp);
        self.action_timestamp.append_option(m.action_timestamp);
        self.status.append_option(status.or(m.status.as_deref()));
        self.reply.append_option(m.reply_main_message_id.as_deref());
        self.is_bot.append_value(m.bot_message.is_some());
        match &m.bot_message {
            Some(v) => self.bot_message.append_value(v.to_string()),
            None => self.bot_message.append_null(),
        }
        match &m.reactions {
            Some(v) => self.reactions.append_value(v.to_string()),
            None => self.reactions.append_null(),
        }
        let item = self.files.values();
        let mut push =
            |id: Option<&str>, name: Option<&str>, size: Option<i64>, url: Option<&str>| {
                if let Some(b) = item.field_builder::<StringBuilder>(0) {
                    b.append_option(id);
                }
                if let Some(b) = item.field_builder::<StringBuilder>(1) {
                    b.append_option(name);
                }
                if let Some(b) = item.field_builder::<Int64Builder>(2) {
                    b.append_option(size);
                }
                if let Some(b) = item.field_builder::<StringBuilder>(3) {
                    b.append_option(url);
                }
                item.append(true);
            };
        match &m.files {
            Some(files) if !files.is_empty() => {
                for f in files {
                    push(
                        f.file_id.as_deref(),
                        f.file_name.as_deref(),
                        f.file_size,
                        f.download_url.as_deref(),
                    );
                }
            }
            // Older answers carry one file in flat fields.
            _ if m.file_id.is_some() || m.download_url.is_some() => push(
                m.file_id.as_deref(),
                m.file_name.as_deref(),
                m.file_size,
                m.download_url.as_deref(),
            ),
            _ => {}
        }
        self.files.append(true);
        self.rows += 1;
    }

    /// The rows so far as a batch; the builder is empty afterwards.
    pub fn finish(&mut self) -> Result<RecordBatch, arrow::error::ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.conversation_id.finish()),
            Arc::new(self.conversation_name.finish()),
            Arc::new(self.user_id.finish()),
            Arc::new(self.recipient.finish()),
            Arc::new(self.message.finish()),
            Arc::new(self.message_type.finish()),
            Arc::new(self.sender.finish()),
            Arc::new(self.sender_member_id.finish()),
            Arc::new(self.sender_display_name.finish()),
            Arc::new(self.date_time.finish()),
            Arc::new(self.timestamp.finish()),
            Arc::new(self.action_timestamp.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.reply.finish()),
            Arc::new(self.is_bot.finish()),
            Arc::new(self.bot_message.finish()),
            Arc::new(self.files.finish()),
            Arc::new(self.reactions.finish()),
        ];
        self.rows = 0;
        RecordBatch::try_new(raw_schema(self.record_type), columns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};

    #[test]
    fn pages_of_both_endpoints_become_rows() {
        let body = br#"{"next_page_token":"","messages":[
            {"id":"a","message":"hi \u00e9","send_member_id":"m1","timestamp":1568751921626,
             "date_time":"2019-09-17T20:25:21Z","status":"Edited","bot_message":{},
             "files":[{"file_id":"f","file_name":"x.png","file_size":"12","download_url":"u"}]},
            {"id":"b","sender_member_id":"m2","send_member_id":"m3","timestamp":"5",
             "file_id":"legacy","download_url":"v"}],
            "deleted_messages":[{"id":"c","message":"","timestamp":7,"action_timestamp":9}]}"#;
        let page: Page = serde_json::from_slice(body).unwrap();
        assert_eq!(page.next(), None);
        let mut b = RawBuilder::new(CHAT_REPORT);
        b.append_page(
            &page,
            &Context {
                conversation_id: Some("s1"),
                ..Context::default()
            },
        );
        let batch = b.finish().unwrap();
        assert_eq!(batch.num_rows(), 3);
        let text = |c: &str| batch.column_by_name(c).unwrap().as_string::<i32>().clone();
        assert_eq!(text("message").value(0), "hi é");
        assert_eq!(text("sender_member_id").value(0), "m1");
        assert_eq!(text("sender_member_id").value(1), "m2");
        assert_eq!(text("status").value(2), "Deleted");
        assert!(text("status").is_null(1));
        let ts = batch.column_by_name("timestamp").unwrap();
        assert_eq!(ts.as_primitive::<arrow::datatypes::Int64Type>().value(1), 5);
        let bots = batch.column_by_name("is_bot").unwrap().as_boolean().clone();
        assert!(bots.value(0) && !bots.value(1));
        let files = batch
            .column_by_name("files")
            .unwrap()
            .as_list::<i32>()
            .clone();
        assert_eq!(files.value_length(0), 1);
        assert_eq!(files.value_length(1), 1, "legacy single file");
        assert_eq!(files.value_length(2), 0);
        assert_eq!(
            chatlake_core::schema::record_type(batch.schema_ref()),
            Some(CHAT_REPORT)
        );
    }
}
