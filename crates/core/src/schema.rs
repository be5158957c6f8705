//! The canonical message schema (spec section 3): one definition used by `normalize`, the
//! transforms that need named columns, the sinks and the tests.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

pub const PROVIDER: &str = "provider";
pub const STREAM: &str = "stream";
pub const MESSAGE_ID: &str = "message_id";
pub const CONVERSATION_ID: &str = "conversation_id";
pub const CONVERSATION_NAME: &str = "conversation_name";
pub const SENDER_ID: &str = "sender_id";
pub const SENDER_NAME: &str = "sender_name";
pub const RECIPIENT: &str = "recipient";
pub const SENT_AT: &str = "sent_at";
pub const SENT_DATE: &str = "sent_date";
pub const TEXT: &str = "text";
pub const IS_BOT: &str = "is_bot";
pub const STATUS: &str = "status";
pub const CHANNEL: &str = "channel";
pub const REPLY_TO_ID: &str = "reply_to_id";
pub const ATTACHMENTS: &str = "attachments";
pub const DELIVERED_AT: &str = "delivered_at";
pub const VERSION: &str = "version";
pub const RUN_ID: &str = "run_id";
/// The optional last column `normalize` adds with `raw = true`: the provider's record as JSON
/// text. Not part of the canonical columns (spec section 3), which it follows.
pub const RAW: &str = "raw";

/// Schema metadata key naming the record type a batch holds; see [`crate::DataKind`].
pub const RECORD_TYPE_KEY: &str = "chatlake.record_type";
/// The record type of canonical messages.
pub const CANONICAL_RECORD_TYPE: &str = "canonical.message";

/// Timestamps are microseconds in UTC everywhere in the lake.
pub fn utc_timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The field of an attachment that says where chatlake stored the file's content.
pub const ATTACHMENT_STORED_AT: &str = "stored_at";

/// The fields of one attachment. `stored_at` is where a source that downloads attachments
/// (Zoom's `download_attachments`) saved the file, content-addressed: a local path or an
/// object-store URL; null when the file was not downloaded.
pub fn attachment_fields() -> Fields {
    Fields::from(vec![
        Field::new("file_id", DataType::Utf8, true),
        Field::new("file_name", DataType::Utf8, true),
        Field::new("file_size", DataType::Int64, true),
        Field::new("download_url", DataType::Utf8, true),
        Field::new(ATTACHMENT_STORED_AT, DataType::Utf8, true),
    ])
}

/// The list item field of `attachments`.
pub fn attachment_item_field() -> Arc<Field> {
    Arc::new(Field::new(
        "item",
        DataType::Struct(attachment_fields()),
        true,
    ))
}

fn canonical_fields() -> Vec<Field> {
    vec![
        Field::new(PROVIDER, DataType::Utf8, false),
        Field::new(STREAM, DataType::Utf8, false),
        Field::new(MESSAGE_ID, DataType::Utf8, false),
        Field::new(CONVERSATION_ID, DataType::Utf8, true),
        Field::new(CONVERSATION_NAME, DataType::Utf8, true),
        Field::new(SENDER_ID, DataType::Utf8, true),
        Field::new(SENDER_NAME, DataType::Utf8, true),
        Field::new(RECIPIENT, DataType::Utf8, true),
        Field::new(SENT_AT, utc_timestamp(), false),
        Field::new(SENT_DATE, DataType::Date32, false),
        Field::new(TEXT, DataType::Utf8, true),
        Field::new(IS_BOT, DataType::Boolean, false),
        Field::new(STATUS, DataType::Utf8, false),
        Field::new(CHANNEL, DataType::Utf8, false),
        Field::new(REPLY_TO_ID, DataType::Utf8, true),
        Field::new(ATTACHMENTS, DataType::List(attachment_item_field()), false),
        Field::new(DELIVERED_AT, utc_timestamp(), true),
        Field::new(VERSION, DataType::Int64, false),
        Field::new(RUN_ID, DataType::Utf8, false),
    ]
}

fn canonical_schema(fields: Vec<Field>) -> SchemaRef {
    let metadata = [(
        RECORD_TYPE_KEY.to_string(),
        CANONICAL_RECORD_TYPE.to_string(),
    )]
    .into();
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

static CANONICAL: LazyLock<SchemaRef> = LazyLock::new(|| canonical_schema(canonical_fields()));

static CANONICAL_WITH_RAW: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = canonical_fields();
    // Nullable although `normalize` fills every row: a reader unifying files written with and
    // without it (or a sink filling it for rows that never had one) needs no special case.
    fields.push(Field::new(RAW, DataType::Utf8, true));
    canonical_schema(fields)
});

/// The canonical message schema, shared (cloning the `Arc` is free).
pub fn canonical() -> SchemaRef {
    CANONICAL.clone()
}

/// The canonical schema with [`RAW`] after its columns (`normalize` with `raw = true`). The
/// record type is still canonical messages: every stage that takes canonical messages finds its
/// columns by name, so the extra column travels through `dedupe`, `bot_filter` and every sink.
pub fn canonical_with_raw() -> SchemaRef {
    CANONICAL_WITH_RAW.clone()
}

/// The record type named in a schema's metadata, if any.
pub fn record_type(schema: &Schema) -> Option<&str> {
    schema.metadata().get(RECORD_TYPE_KEY).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_schema_matches_the_spec() {
        let s = canonical();
        assert_eq!(s.fields().len(), 19);
        assert_eq!(
            s.field_with_name(SENT_AT).unwrap().data_type(),
            &utc_timestamp()
        );
        assert!(!s.field_with_name(ATTACHMENTS).unwrap().is_nullable());
        assert_eq!(record_type(&s), Some(CANONICAL_RECORD_TYPE));
    }

    #[test]
    fn raw_comes_after_the_canonical_columns() {
        let with_raw = canonical_with_raw();
        let canonical = canonical();
        assert_eq!(with_raw.fields().len(), canonical.fields().len() + 1);
        assert_eq!(&with_raw.fields()[..19], &canonical.fields()[..]);
        let raw = with_raw.field(19);
        assert_eq!(
            (raw.name().as_str(), raw.data_type()),
            (RAW, &DataType::Utf8)
        );
        assert_eq!(record_type(&with_raw), Some(CANONICAL_RECORD_TYPE));
    }
}
