//! Zoom response pages → raw Arrow batches.
//!
//! A page is parsed once and each message appended straight into Arrow builders: no message
//! structs, and text goes from the input into its column (keys such as `rich_text` and
//! `at_items` are skipped, not decoded), through serde visitors. Both sources share one column
//! layout; the record type in the
//! schema metadata says which stream a batch is (`zoom.user_messages` or `zoom.chat_report`), so
//! `normalize` can tell them apart.
//!
//! A builder made [`RawBuilder::keeping_raw`] also keeps each message whole in a last column
//! `raw`: the message's JSON object as the page had it, byte for byte (what `normalize` with
//! `raw = true` hands on, so that `rich_text`, `at_items`, `reactions`,
//! `reply_main_message_timestamp`, `bot_message` content and any field without a column of its
//! own are not lost). Only then is each message read twice (once as text, once into the columns).

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Int64Builder, ListBuilder, StringBuilder, StructBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use chatlake_core::schema::{RECORD_TYPE_KEY, attachment_fields, attachment_item_field};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
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

fn schema_for(record_type: &str, whole: bool) -> SchemaRef {
    let metadata = [(RECORD_TYPE_KEY.to_string(), record_type.to_string())].into();
    let mut fields = fields();
    if whole {
        // Each message's JSON object, byte for byte (see the module docs).
        fields.push(Field::new(RAW_COLUMN, DataType::Utf8, true));
    }
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

/// The column that holds each message whole when the builder keeps it.
pub const RAW_COLUMN: &str = "raw";

static USER_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| schema_for(USER_MESSAGES, false));
static REPORT_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| schema_for(CHAT_REPORT, false));
static USER_SCHEMA_WHOLE: LazyLock<SchemaRef> = LazyLock::new(|| schema_for(USER_MESSAGES, true));
static REPORT_SCHEMA_WHOLE: LazyLock<SchemaRef> = LazyLock::new(|| schema_for(CHAT_REPORT, true));

/// The raw schema of `record_type` (one of [`USER_MESSAGES`], [`CHAT_REPORT`]).
pub fn raw_schema(record_type: &str) -> SchemaRef {
    if record_type == CHAT_REPORT {
        REPORT_SCHEMA.clone()
    } else {
        USER_SCHEMA.clone()
    }
}

/// [`raw_schema`] with the [`RAW_COLUMN`] after the others.
pub fn raw_schema_with_records(record_type: &str) -> SchemaRef {
    if record_type == CHAT_REPORT {
        REPORT_SCHEMA_WHOLE.clone()
    } else {
        USER_SCHEMA_WHOLE.clone()
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

/// One file of a message.
#[derive(Debug, Deserialize)]
struct FileItem<'a> {
    #[serde(default, borrow, deserialize_with = "opt_text")]
    file_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "opt_text")]
    file_name: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "int_or_string")]
    file_size: Option<i64>,
    #[serde(default, borrow, deserialize_with = "opt_text")]
    download_url: Option<Cow<'a, str>>,
}

/// Text that is borrowed from the input unless it had escapes.
struct CowText;

impl<'de> Visitor<'de> for CowText {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_owned())))
    }
}

fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    d.deserialize_option(CowText)
}

/// A number that may come as a JSON number or a string (`"1568751917976"`); a string that is
/// not a number is no value.
struct IntOrString;

impl<'de> Visitor<'de> for IntOrString {
    type Value = Option<i64>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a number, a string or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        // Beyond i64 the number saturates, as a float cast does.
        Ok(Some(i64::try_from(v).unwrap_or(v as f64 as i64)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(v as i64))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.trim().parse().ok())
    }
}

fn int_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    d.deserialize_option(IntOrString)
}

/// `int_or_string` as a value of a map.
struct Int(Option<i64>);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        int_or_string(d).map(Int)
    }
}

/// `opt_text` as a value of a map.
struct Text<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        opt_text(d).map(Text)
    }
}

/// Appends a string (or null) straight into a column: no copy of the text but the column's own.
struct AppendText<'b>(&'b mut StringBuilder);

impl<'de> DeserializeSeed<'de> for AppendText<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for AppendText<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.0.append_null();
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.append_null();
        Ok(())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.append_value(v);
        Ok(())
    }
}

/// The keys of a message; the others (`rich_text`, `at_items`, …) are skipped unread.
#[derive(Clone, Copy)]
pub(crate) enum ItemKey {
    // Appended as they come (the first seven; serde path).
    Id,
    Message,
    MessageType,
    Sender,
    SenderDisplayName,
    DateTime,
    ReplyMainMessageId,
    // Kept until the message ends.
    SenderMemberId,
    SendMemberId,
    Receiver,
    Timestamp,
    ActionTimestamp,
    Status,
    Files,
    FileId,
    FileName,
    FileSize,
    DownloadUrl,
    BotMessage,
    Reactions,
    Other,
}

impl ItemKey {
    const NAMES: [&'static str; 20] = [
        "id",
        "message",
        "message_type",
        "sender",
        "sender_display_name",
        "date_time",
        "reply_main_message_id",
        "sender_member_id",
        "send_member_id",
        "receiver",
        "timestamp",
        "action_timestamp",
        "status",
        "files",
        "file_id",
        "file_name",
        "file_size",
        "download_url",
        "bot_message",
        "reactions",
    ];

    pub(crate) fn of(name: &str) -> ItemKey {
        ItemKey::of_bytes(name.as_bytes())
    }

    pub(crate) fn of_bytes(name: &[u8]) -> ItemKey {
        use ItemKey::*;
        match name {
            b"id" => Id,
            b"message" => Message,
            b"message_type" => MessageType,
            b"sender" => Sender,
            b"sender_display_name" => SenderDisplayName,
            b"date_time" => DateTime,
            b"reply_main_message_id" => ReplyMainMessageId,
            b"sender_member_id" => SenderMemberId,
            b"send_member_id" => SendMemberId,
            b"receiver" => Receiver,
            b"timestamp" => Timestamp,
            b"action_timestamp" => ActionTimestamp,
            b"status" => Status,
            b"files" => Files,
            b"file_id" => FileId,
            b"file_name" => FileName,
            b"file_size" => FileSize,
            b"download_url" => DownloadUrl,
            b"bot_message" => BotMessage,
            b"reactions" => Reactions,
            _ => Other,
        }
    }
}

/// The keys of a page.
enum PageKey {
    NextPageToken,
    Messages,
    EditedMessages,
    DeletedMessages,
    UserId,
    ToChannel,
    ToContact,
    SessionId,
    Other,
}

/// A map key as an [`ItemKey`] or [`PageKey`], without copying it.
struct Key<K>(std::marker::PhantomData<K>);

impl<'de, K: From<&'de str> + From<String>> DeserializeSeed<'de> for Key<K> {
    type Value = K;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<K, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<'de, K: From<&'de str> + From<String>> Visitor<'de> for Key<K> {
    type Value = K;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a field name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<K, E> {
        Ok(K::from(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<K, E> {
        // Only a key with escapes gets here.
        Ok(K::from(v.to_owned()))
    }
}

impl From<&str> for ItemKey {
    fn from(name: &str) -> Self {
        ItemKey::of(name)
    }
}

impl From<String> for ItemKey {
    fn from(name: String) -> Self {
        ItemKey::of(&name)
    }
}

impl From<&str> for PageKey {
    fn from(name: &str) -> Self {
        match name {
            "next_page_token" => PageKey::NextPageToken,
            "messages" => PageKey::Messages,
            "edited_messages" => PageKey::EditedMessages,
            "deleted_messages" => PageKey::DeletedMessages,
            "user_id" => PageKey::UserId,
            "to_channel" => PageKey::ToChannel,
            "to_contact" => PageKey::ToContact,
            "session_id" => PageKey::SessionId,
            _ => PageKey::Other,
        }
    }
}

impl From<String> for PageKey {
    fn from(name: String) -> Self {
        PageKey::from(name.as_str())
    }
}

fn duplicate<E: de::Error>(seen: &mut u32, bit: usize, name: &'static str) -> Result<(), E> {
    if *seen & (1 << bit) != 0 {
        return Err(E::duplicate_field(name));
    }
    *seen |= 1 << bit;
    Ok(())
}

/// Text of a page-level key, or an error when the key came twice.
fn page_text<'de, A: MapAccess<'de>>(
    map: &mut A,
    slot: &mut Option<Option<Cow<'de, str>>>,
    name: &'static str,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::duplicate_field(name));
    }
    *slot = Some(map.next_value::<Text>()?.0);
    Ok(())
}

/// Parses one page (a JSON object) and appends its rows.
struct PageSeed<'b, 'c> {
    builder: &'b mut RawBuilder,
    /// `None`: a saved page, whose context is in its own top-level keys.
    cx: Option<&'b Context<'c>>,
}

impl<'de> DeserializeSeed<'de> for PageSeed<'_, '_> {
    /// The next page token, if not empty.
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PageSeed<'_, '_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a Zoom response page (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let b = self.builder;
        let first = b.rows;
        let mut token = None;
        let mut user_id = None;
        let mut to_channel = None;
        let mut to_contact = None;
        let mut session_id = None;
        let mut arrays = 0u32;
        // Rows of this page with a `receiver` of their own (report rows).
        let mut receivers: Vec<(usize, Cow<'de, str>)> = Vec::new();
        while let Some(key) = map.next_key_seed(Key::<PageKey>(std::marker::PhantomData))? {
            let (bit, name, status) = match key {
                PageKey::Messages => (0, "messages", None),
                PageKey::EditedMessages => (1, "edited_messages", Some("Edited")),
                PageKey::DeletedMessages => (2, "deleted_messages", Some("Deleted")),
                PageKey::NextPageToken => {
                    page_text(&mut map, &mut token, "next_page_token")?;
                    continue;
                }
                PageKey::UserId => {
                    page_text(&mut map, &mut user_id, "user_id")?;
                    continue;
                }
                PageKey::ToChannel => {
                    page_text(&mut map, &mut to_channel, "to_channel")?;
                    continue;
                }
                PageKey::ToContact => {
                    page_text(&mut map, &mut to_contact, "to_contact")?;
                    continue;
                }
                PageKey::SessionId => {
                    page_text(&mut map, &mut session_id, "session_id")?;
                    continue;
                }
                PageKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            duplicate(&mut arrays, bit, name)?;
            map.next_value_seed(Items {
                builder: &mut *b,
                status,
                first,
                receivers: &mut receivers,
            })?;
        }
        let flat = |v: Option<Option<Cow<'de, str>>>| v.flatten();
        let (user_id, to_channel, to_contact, session_id) = (
            flat(user_id),
            flat(to_channel),
            flat(to_contact),
            flat(session_id),
        );
        let saved;
        let cx = match self.cx {
            Some(cx) => cx,
            None => {
                let contact = to_contact.as_deref();
                saved = Context {
                    conversation_id: to_channel.as_deref().or(contact).or(session_id.as_deref()),
                    conversation_name: None,
                    user_id: user_id.as_deref(),
                    recipient: contact,
                };
                &saved
            }
        };
        b.append_context(first, cx, &receivers);
        Ok(flat(token).filter(|t| !t.is_empty()).map(Cow::into_owned))
    }
}

/// The rows of one array of a page (`messages`, `edited_messages`, `deleted_messages`).
struct Items<'b, 'r, 'de> {
    builder: &'b mut RawBuilder,
    /// The status of every row of the array (report), or `None` for their own.
    status: Option<&'static str>,
    /// The page's first row.
    first: usize,
    receivers: &'r mut Vec<(usize, Cow<'de, str>)>,
}

impl<'de> DeserializeSeed<'de> for Items<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Items<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of messages")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            let row = self.builder.rows - self.first;
            let item = ItemSeed {
                builder: &mut *self.builder,
                status: self.status,
            };
            let appended = if item.builder.raw.is_some() {
                // The message's own text first, then its columns from that text.
                match seq.next_element::<&'de serde_json::value::RawValue>()? {
                    None => None,
                    Some(whole) => {
                        let mut reader = serde_json::Deserializer::from_str(whole.get());
                        let receiver = item.deserialize(&mut reader).map_err(de::Error::custom)?;
                        if let Some(raw) = &mut self.builder.raw {
                            raw.append_value(whole.get());
                        }
                        Some(receiver)
                    }
                }
            } else {
                seq.next_element_seed(item)?
            };
            match appended {
                Some(Some(receiver)) => self.receivers.push((row, receiver)),
                Some(None) => {}
                None => return Ok(()),
            }
        }
    }
}

/// One message: appended as it is read; returns its `receiver`, which goes with the page's
/// context.
struct ItemSeed<'b> {
    builder: &'b mut RawBuilder,
    status: Option<&'static str>,
}

impl<'de> DeserializeSeed<'de> for ItemSeed<'_> {
    type Value = Option<Cow<'de, str>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ItemSeed<'_> {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a message (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let b = self.builder;
        let mut seen = 0u32;
        let mut sender_member_id = None;
        let mut send_member_id = None;
        let mut receiver = None;
        let mut timestamp = None;
        let mut action_timestamp = None;
        let mut status = None;
        let mut files: Option<Vec<FileItem<'de>>> = None;
        let (mut file_id, mut file_name, mut file_size, mut download_url) =
            (None, None, None, None);
        let mut bot_message: Option<serde_json::Value> = None;
        let mut reactions: Option<serde_json::Value> = None;
        while let Some(key) = map.next_key_seed(Key::<ItemKey>(std::marker::PhantomData))? {
            use ItemKey::*;
            if let Other = key {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            duplicate(&mut seen, key as usize, ItemKey::NAMES[key as usize])?;
            let column = match key {
                Id => &mut b.id,
                Message => &mut b.message,
                MessageType => &mut b.message_type,
                Sender => &mut b.sender,
                SenderDisplayName => &mut b.sender_display_name,
                DateTime => &mut b.date_time,
                ReplyMainMessageId => &mut b.reply,
                SenderMemberId => {
                    sender_member_id = map.next_value::<Text>()?.0;
                    continue;
                }
                SendMemberId => {
                    send_member_id = map.next_value::<Text>()?.0;
                    continue;
                }
                Receiver => {
                    receiver = map.next_value::<Text>()?.0;
                    continue;
                }
                Timestamp => {
                    timestamp = map.next_value::<Int>()?.0;
                    continue;
                }
                ActionTimestamp => {
                    action_timestamp = map.next_value::<Int>()?.0;
                    continue;
                }
                Status => {
                    status = map.next_value::<Text>()?.0;
                    continue;
                }
                Files => {
                    files = map.next_value()?;
                    continue;
                }
                FileId => {
                    file_id = map.next_value::<Text>()?.0;
                    continue;
                }
                FileName => {
                    file_name = map.next_value::<Text>()?.0;
                    continue;
                }
                FileSize => {
                    file_size = map.next_value::<Int>()?.0;
                    continue;
                }
                DownloadUrl => {
                    download_url = map.next_value::<Text>()?.0;
                    continue;
                }
                BotMessage => {
                    bot_message = map.next_value()?;
                    continue;
                }
                Reactions => {
                    reactions = map.next_value()?;
                    continue;
                }
                Other => unreachable!("skipped above"),
            };
            map.next_value_seed(AppendText(column))?;
        }
        // The message is complete: every column gets its value now.
        for (bit, column) in [
            &mut b.id,
            &mut b.message,
            &mut b.message_type,
            &mut b.sender,
            &mut b.sender_display_name,
            &mut b.date_time,
            &mut b.reply,
        ]
        .into_iter()
        .enumerate()
        {
            if seen & (1 << bit) == 0 {
                column.append_null();
            }
        }
        b.sender_member_id
            .append_option(sender_member_id.as_deref().or(send_member_id.as_deref()));
        b.timestamp.append_option(timestamp);
        b.action_timestamp.append_option(action_timestamp);
        b.status.append_option(self.status.or(status.as_deref()));
        // A bot is a message with a `bot_message`, also an empty `{}`. The seeds show `{}` only
        // in the API reference's sample (seed 001), the placeholder of an untyped object, next to
        // placeholder values of every other field: nothing there says Zoom puts `{}` on people's
        // messages, and the shared Zoom reference job (`shared/bench/JOBS.md`) has bots whose
        // `bot_message` is `{}` with a sender, member id and files like a person's. So the
        // object's presence decides, whatever the other fields hold.
        b.is_bot.append_value(bot_message.is_some());
        match &bot_message {
            Some(v) => b.bot_message.append_value(v.to_string()),
            None => b.bot_message.append_null(),
        }
        match &reactions {
            Some(v) => b.reactions.append_value(v.to_string()),
            None => b.reactions.append_null(),
        }
        match &files {
            Some(files) if !files.is_empty() => {
                for f in files {
                    b.push_file(
                        f.file_id.as_deref(),
                        f.file_name.as_deref(),
                        f.file_size,
                        f.download_url.as_deref(),
                    );
                }
            }
            // Older answers carry one file in flat fields.
            _ if file_id.is_some() || download_url.is_some() => b.push_file(
                file_id.as_deref(),
                file_name.as_deref(),
                file_size,
                download_url.as_deref(),
            ),
            _ => {}
        }
        b.files.append(true);
        b.rows += 1;
        Ok(receiver)
    }
}

/// Arrow builders for one batch of raw rows.
pub struct RawBuilder {
    record_type: &'static str,
    pub(crate) id: StringBuilder,
    pub(crate) conversation_id: StringBuilder,
    pub(crate) conversation_name: StringBuilder,
    pub(crate) user_id: StringBuilder,
    pub(crate) recipient: StringBuilder,
    pub(crate) message: StringBuilder,
    pub(crate) message_type: StringBuilder,
    pub(crate) sender: StringBuilder,
    pub(crate) sender_member_id: StringBuilder,
    pub(crate) sender_display_name: StringBuilder,
    pub(crate) date_time: StringBuilder,
    pub(crate) timestamp: Int64Builder,
    pub(crate) action_timestamp: Int64Builder,
    pub(crate) status: StringBuilder,
    pub(crate) reply: StringBuilder,
    pub(crate) is_bot: BooleanBuilder,
    pub(crate) bot_message: StringBuilder,
    pub(crate) files: ListBuilder<StructBuilder>,
    pub(crate) reactions: StringBuilder,
    /// Each message whole, when kept ([`RawBuilder::keeping_raw`]).
    pub(crate) raw: Option<StringBuilder>,
    pub(crate) rows: usize,
    /// Rows kept from before a page that failed half-way (see [`RawBuilder::append_json`]).
    carried: Vec<RecordBatch>,
    carried_rows: usize,
}

fn files_builder() -> ListBuilder<StructBuilder> {
    ListBuilder::new(StructBuilder::from_fields(attachment_fields(), 0))
        .with_field(attachment_item_field())
}

impl RawBuilder {
    pub fn new(record_type: &'static str) -> Self {
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
            files: files_builder(),
            reactions: StringBuilder::new(),
            raw: None,
            rows: 0,
            carried: Vec::new(),
            carried_rows: 0,
        }
    }

    /// Also keeps each message whole in a last column [`RAW_COLUMN`] (when `whole`).
    pub fn keeping_raw(mut self, whole: bool) -> Self {
        self.raw = whole.then(StringBuilder::new);
        self
    }

    /// The schema of the batches it makes.
    pub fn schema(&self) -> SchemaRef {
        if self.raw.is_some() {
            raw_schema_with_records(self.record_type)
        } else {
            raw_schema(self.record_type)
        }
    }

    pub fn len(&self) -> usize {
        self.rows + self.carried_rows
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parses one response page (`json`, one JSON object) and appends every item: `messages`
    /// with their own `status`, `edited_messages` and `deleted_messages` (report) with `Edited`
    /// / `Deleted`, in the order the page has them. `cx` is the request's context; `None` takes
    /// it from the page's own top-level keys (saved pages: `user_id` and `to_channel`,
    /// `to_contact` or `session_id`). Returns the next page token, if there is one.
    ///
    /// On an error no row of the page is kept; the rows before it are.
    pub fn append_json(
        &mut self,
        json: &[u8],
        cx: Option<&Context<'_>>,
    ) -> Result<Option<String>, serde_json::Error> {
        let first = self.rows;
        // One UTF-8 check of the whole page is cheaper than one per string; invalid text is
        // parsed as bytes, for serde_json's error with its position.
        let parsed = match simdutf8::basic::from_utf8(json) {
            Ok(text) => self.parse_page(&mut serde_json::Deserializer::from_str(text), cx),
            Err(_) => self.parse_page(&mut serde_json::Deserializer::from_slice(json), cx),
        };
        if parsed.is_err() {
            self.keep_rows(first);
        }
        parsed
    }

    fn parse_page<'de, R: serde_json::de::Read<'de>>(
        &mut self,
        de: &mut serde_json::Deserializer<R>,
        cx: Option<&Context<'_>>,
    ) -> Result<Option<String>, serde_json::Error> {
        let next = PageSeed { builder: self, cx }.deserialize(&mut *de)?;
        de.end()?;
        Ok(next)
    }

    /// Drops the rows from `rows` on, which may be incomplete: the columns are finished and
    /// cut, and the cut batch goes out with the next [`RawBuilder::finish`].
    fn keep_rows(&mut self, rows: usize) {
        let columns: Vec<ArrayRef> = self
            .finish_columns()
            .into_iter()
            .map(|c| c.slice(0, rows.min(c.len())))
            .collect();
        self.rows = 0;
        if rows > 0
            && let Ok(batch) = RecordBatch::try_new(self.schema(), columns)
        {
            self.carried.push(batch);
            self.carried_rows += rows;
        }
    }

    /// The page's context in every row of the page (from row `first` on), a row's own
    /// `receiver` before the context's recipient.
    pub(crate) fn append_context(
        &mut self,
        first: usize,
        cx: &Context<'_>,
        receivers: &[(usize, Cow<'_, str>)],
    ) {
        let n = self.rows - first;
        let mut own = receivers.iter().peekable();
        for row in 0..n {
            self.conversation_id.append_option(cx.conversation_id);
            self.conversation_name.append_option(cx.conversation_name);
            self.user_id.append_option(cx.user_id);
            match own.next_if(|(r, _)| *r == row) {
                Some((_, receiver)) => self.recipient.append_value(receiver),
                None => self.recipient.append_option(cx.recipient),
            }
        }
    }

    pub(crate) fn push_file(
        &mut self,
        id: Option<&str>,
        name: Option<&str>,
        size: Option<i64>,
        url: Option<&str>,
    ) {
        let item = self.files.values();
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
        // `stored_at`: filled in by the attachment download, if it is on, before rows go out.
        if let Some(b) = item.field_builder::<StringBuilder>(4) {
            b.append_null();
        }
        item.append(true);
    }

    /// Every column finished; the builders start again with room for as much as they held.
    fn finish_columns(&mut self) -> Vec<ArrayRef> {
        fn text(b: &mut StringBuilder) -> ArrayRef {
            Arc::new(chatlake_source_kit::parsed::finish_sized(b))
        }
        fn int(b: &mut Int64Builder) -> ArrayRef {
            let rows = b.len();
            let array = b.finish();
            *b = Int64Builder::with_capacity(rows);
            Arc::new(array)
        }
        let mut columns: Vec<ArrayRef> = vec![
            text(&mut self.id),
            text(&mut self.conversation_id),
            text(&mut self.conversation_name),
            text(&mut self.user_id),
            text(&mut self.recipient),
            text(&mut self.message),
            text(&mut self.message_type),
            text(&mut self.sender),
            text(&mut self.sender_member_id),
            text(&mut self.sender_display_name),
            text(&mut self.date_time),
            int(&mut self.timestamp),
            int(&mut self.action_timestamp),
            text(&mut self.status),
            text(&mut self.reply),
            Arc::new(self.is_bot.finish()),
            text(&mut self.bot_message),
            Arc::new(self.files.finish()),
            text(&mut self.reactions),
        ];
        if let Some(raw) = &mut self.raw {
            columns.push(text(raw));
        }
        columns
    }

    /// The rows so far as a batch; the builder is empty afterwards.
    pub fn finish(&mut self) -> Result<RecordBatch, arrow::error::ArrowError> {
        let columns = self.finish_columns();
        self.rows = 0;
        let batch = RecordBatch::try_new(self.schema(), columns)?;
        if self.carried.is_empty() {
            return Ok(batch);
        }
        self.carried.push(batch);
        self.carried_rows = 0;
        let carried = std::mem::take(&mut self.carried);
        arrow::compute::concat_batches(&self.schema(), &carried)
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
        let mut b = RawBuilder::new(CHAT_REPORT);
        let cx = Context {
            conversation_id: Some("s1"),
            ..Context::default()
        };
        assert_eq!(b.append_json(body, Some(&cx)).unwrap(), None);
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
