//! The monitoring CSV: header table, raw schema, and the parser that turns a file into Arrow
//! batches of `lineworks.message_contents` records.
//!
//! The parser reads (records split by [`CsvRecords`]: SIMD, with the csv crate's results) into
//! one reused [`csv::ByteRecord`] and appends the fields straight into Arrow string builders,
//! so a row costs no allocation of its own; it runs on a blocking thread while the async side
//! forwards its batches. Text is kept byte for byte: no trimming, no
//! normalisation of line ends inside quoted fields.
//!
//! File layout (providers.md §1, contract E1): optional UTF-8 BOM, a header row of five columns,
//! RFC 4180 rows with CRLF or LF ends. A file whose generation failed ends with a record
//! `downloadLogs error` followed by one line of message: the *trailer*. No row of such a file may
//! reach the lake, so [`find_trailer`] looks for it before any row is parsed.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use chatlake_core::schema::RECORD_TYPE_KEY;
use chatlake_source_kit::csv_input::{Bom, CsvRecord, CsvRecords, skip_bom};
use chatlake_source_kit::parsed::{check_record, finish_sized, raw_record};

use crate::config::Language;

/// The record type of this source's batches.
pub const RECORD_TYPE: &str = "lineworks.message_contents";

/// The raw columns, in file order.
pub const COLUMNS: [&str; 5] = ["date", "sender", "recipient", "room_id", "message"];

/// The record that starts the trailer of a failed download.
pub const TRAILER_MARKER: &str = "downloadLogs error";

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
/// How far from the end of a file the trailer is looked for before a full check.
const TAIL_BYTES: u64 = 64 * 1024;

fn schema(whole: bool) -> SchemaRef {
    let mut fields: Vec<Field> = COLUMNS
        .iter()
        .map(|c| Field::new(*c, DataType::Utf8, false))
        .collect();
    if whole {
        fields.push(Field::new(RAW_COLUMN, DataType::Utf8, false));
    }
    let metadata = [(RECORD_TYPE_KEY.to_string(), RECORD_TYPE.to_string())].into();
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

static RAW_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| schema(false));
static RAW_SCHEMA_WITH_RECORDS: LazyLock<SchemaRef> = LazyLock::new(|| schema(true));

/// The column that holds each row whole when [`ParseOptions::keep_raw`] asks for it: a JSON
/// object of the row's fields keyed by the file's header names (the `language`'s header when the
/// file has none), each field byte for byte.
pub const RAW_COLUMN: &str = "raw";

/// The schema of the batches this source sends: five non-null `Utf8` columns holding the CSV
/// fields byte for byte, tagged `chatlake.record_type = lineworks.message_contents`. Local times
/// in `date` are in the window's `utc_offset`.
pub fn raw_schema() -> SchemaRef {
    RAW_SCHEMA.clone()
}

/// The header row the provider writes for `language` (contract E1; zh_* still use the English
/// labels).
pub fn expected_header(language: Language) -> [&'static str; 5] {
    match language {
        Language::JaJp => ["日時", "送信者", "受信者", "トークルームID", "トーク"],
        Language::KoKr => ["일시", "보낸 사람", "받는 사람", "대화방 ID", "메시지"],
        Language::EnUs | Language::ZhCn | Language::ZhTw => {
            ["Date", "Sender", "Recipient", "Message room ID", "Message"]
        }
    }
}

/// How to parse.
#[derive(Debug, Clone)]
pub struct ParseOptions {
    pub language: Language,
    pub batch_size: usize,
    /// What the file is, for log lines (a window label or a path).
    pub origin: String,
    /// Set once an unexpected header has been reported, so a run warns once, not per window.
    pub header_warned: Arc<AtomicBool>,
    /// Also keep each row whole in a last column [`RAW_COLUMN`].
    pub keep_raw: bool,
}

/// Where parsed rows go (the bridge every file-reading source shares).
pub use chatlake_source_kit::parsed::RowSink;

/// What a parse found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ParseOutcome {
    pub rows: u64,
    pub dead_letters: u64,
    /// The trailer's message, if the file ended with `downloadLogs error`.
    pub trailer: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("reading the CSV failed: {0}")]
    Io(#[from] io::Error),
    #[error("reading the CSV failed: {0}")]
    Csv(#[from] csv::Error),
    #[error(
        "the file is UTF-16; LINE WORKS writes UTF-8 (save the file as UTF-8 and load it again)"
    )]
    Utf16,
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// The sink refused more input.
    #[error("{0}")]
    Stopped(String),
}

/// The records of `input` (from its current position) with the provider's dialect, past any
/// UTF-8 BOM.
fn csv_reader<R: Read + Seek>(mut input: R) -> Result<CsvRecords<R>, ParseError> {
    if skip_bom(&mut input)? == Bom::Utf16 {
        return Err(ParseError::Utf16);
    }
    Ok(CsvRecords::new(input)?)
}

fn is_marker(record: CsvRecord<'_>) -> bool {
    record.len() == 1 && record.get(0) == Some(TRAILER_MARKER.as_bytes())
}

/// The trailer's message: the records after the marker, as text.
fn read_trailer_message<R: Read + Seek>(reader: &mut CsvRecords<R>) -> Result<String, ParseError> {
    let mut lines = Vec::new();
    let mut record = csv::ByteRecord::new();
    while reader.read_byte_record(&mut record)? {
        let fields: Vec<_> = record.iter().map(String::from_utf8_lossy).collect();
        lines.push(fields.join(","));
    }
    let message = lines.join("\n").trim().to_string();
    Ok(if message.is_empty() {
        "(no message)".to_string()
    } else {
        message
    })
}

/// Looks for a trailer without parsing rows: first in the last 64 KiB (cheap, and enough to
/// clear every file that has none), then, if a line there reads `downloadLogs error`, with a
/// full CSV pass (so text that merely contains such a line inside a quoted message is not taken
/// for one). Leaves the file rewound.
pub fn find_trailer(file: &mut File) -> Result<Option<String>, ParseError> {
    let len = file.seek(SeekFrom::End(0))?;
    let from = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(from))?;
    let mut tail = Vec::with_capacity((len - from) as usize);
    file.by_ref().take(TAIL_BYTES).read_to_end(&mut tail)?;
    file.rewind()?;
    let candidate = tail.split(|b| *b == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = line.strip_prefix(UTF8_BOM).unwrap_or(line);
        line == TRAILER_MARKER.as_bytes()
    });
    if !candidate {
        return Ok(None);
    }
    let mut reader = csv_reader(&mut *file)?;
    let mut marker = false;
    reader.for_each_record(|record| {
        marker = is_marker(record);
        Ok::<_, csv::Error>(if marker {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    })?;
    let found = if marker {
        Some(read_trailer_message(&mut reader)?)
    } else {
        None
    };
    drop(reader);
    file.rewind()?;
    Ok(found)
}

struct Columns {
    builders: [StringBuilder; 5],
    /// Each row whole, when kept.
    raw: Option<StringBuilder>,
    rows: usize,
    capacity: usize,
}

impl Columns {
    fn new(capacity: usize, keep_raw: bool) -> Self {
        let b =
            |bytes_per_row: usize| StringBuilder::with_capacity(capacity, capacity * bytes_per_row);
        Columns {
            builders: [b(20), b(48), b(48), b(16), b(96)],
            raw: keep_raw.then(|| b(320)),
            rows: 0,
            capacity,
        }
    }

    fn push(&mut self, fields: &[&str; 5]) {
        for (builder, field) in self.builders.iter_mut().zip(fields) {
            builder.append_value(field);
        }
        self.rows += 1;
    }

    fn is_full(&self) -> bool {
        self.rows >= self.capacity
    }

    fn finish(&mut self) -> Result<Option<RecordBatch>, ParseError> {
        if self.rows == 0 {
            return Ok(None);
        }
        self.rows = 0;
        let mut columns: Vec<ArrayRef> = self
            .builders
            .iter_mut()
            .map(|b| Arc::new(finish_sized(b)) as ArrayRef)
            .collect();
        let schema = match &mut self.raw {
            Some(raw) => {
                columns.push(Arc::new(finish_sized(raw)));
                RAW_SCHEMA_WITH_RECORDS.clone()
            }
            None => raw_schema(),
        };
        Ok(Some(RecordBatch::try_new(schema, columns)?))
    }
}

/// What the first record of a file is.
enum FirstRecord {
    Header,
    Data,
}

fn classify_first(record: CsvRecord<'_>, options: &ParseOptions) -> FirstRecord {
    let fields: Vec<&[u8]> = record.iter().collect();
    let matches = |header: [&str; 5]| {
        fields.len() == 5 && fields.iter().zip(header).all(|(f, h)| *f == h.as_bytes())
    };
    if matches(expected_header(options.language)) {
        return FirstRecord::Header;
    }
    let warn = !options.header_warned.swap(true, Ordering::Relaxed);
    if let Some(other) = Language::ALL
        .into_iter()
        .find(|l| matches(expected_header(*l)))
    {
        if warn {
            tracing::warn!(
                file = %options.origin,
                expected = options.language.as_str(),
                found = other.as_str(),
                "the CSV header is in another language than `language`; reading columns by position"
            );
        }
        return FirstRecord::Header;
    }
    let shown: Vec<_> = fields.iter().map(|f| String::from_utf8_lossy(f)).collect();
    // A file saved without its header starts with a date: keep that row.
    if looks_like_date(fields.first().copied().unwrap_or_default()) {
        if warn {
            tracing::warn!(file = %options.origin, "the CSV has no header row; reading columns by position");
        }
        return FirstRecord::Data;
    }
    if warn {
        tracing::warn!(
            file = %options.origin,
            header = %shown.join(","),
            expected = %expected_header(options.language).join(","),
            "unexpected CSV header; reading columns by position"
        );
    }
    FirstRecord::Header
}

/// `yyyy-` followed by a digit: how every date the provider writes begins.
fn looks_like_date(field: &[u8]) -> bool {
    field.len() >= 6
        && field[..4].iter().all(u8::is_ascii_digit)
        && field[4] == b'-'
        && field[5].is_ascii_digit()
}

/// Parses a whole file into `sink`. Stops at a trailer (the outcome says so; rows before it have
/// been sent, so callers check with [`find_trailer`] first).
pub fn parse<R: Read + Seek>(
    input: R,
    options: &ParseOptions,
    sink: &mut dyn RowSink,
) -> Result<ParseOutcome, ParseError> {
    let mut reader = csv_reader(input)?;
    let mut columns = Columns::new(options.batch_size.max(1), options.keep_raw);
    let mut outcome = ParseOutcome::default();
    let mut number: u64 = 0;
    let mut trailer = false;
    // The names `raw` keys a row's fields by: the file's header, else the language's.
    let mut header: Vec<String> = expected_header(options.language).map(String::from).to_vec();
    let mut json = String::new();
    reader.for_each_record(|record| {
        number += 1;
        if is_marker(record) {
            trailer = true;
            return Ok(ControlFlow::Break(()));
        }
        if number == 1 && matches!(classify_first(record, options), FirstRecord::Header) {
            if options.keep_raw {
                header = record
                    .iter()
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect();
            }
            return Ok(ControlFlow::Continue(()));
        }
        let text = match check_record(record, COLUMNS.len(), &|i| COLUMNS[i], &looks_like_date) {
            Ok(text) => text,
            Err(reason) => {
                outcome.dead_letters += 1;
                sink.dead_letter(&reason, raw_record(record, number))
                    .map_err(ParseError::Stopped)?;
                return Ok(ControlFlow::Continue(()));
            }
        };
        columns.push(&std::array::from_fn(|i| text.get(i).unwrap_or_default()));
        if let Some(raw) = &mut columns.raw {
            chatlake_source_kit::parsed::row_as_json(&header, &text, &mut json);
            raw.append_value(&json);
        }
        outcome.rows += 1;
        if columns.is_full()
            && let Some(batch) = columns.finish()?
        {
            sink.batch(batch).map_err(ParseError::Stopped)?;
        }
        Ok::<_, ParseError>(ControlFlow::Continue(()))
    })?;
    if trailer {
        outcome.trailer = Some(read_trailer_message(&mut reader)?);
        // Rows of a failed file must not reach the lake: drop what is held.
        return Ok(outcome);
    }
    if let Some(batch) = columns.finish()? {
        sink.batch(batch).map_err(ParseError::Stopped)?;
    }
    Ok(outcome)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use std::io::Write;

    #[derive(Default)]
    pub(crate) struct Collect {
        pub batches: Vec<RecordBatch>,
        pub dead: Vec<(String, serde_json::Value)>,
    }

    impl RowSink for Collect {
        fn batch(&mut self, batch: RecordBatch) -> Result<(), String> {
            self.batches.push(batch);
            Ok(())
        }
        fn dead_letter(&mut self, reason: &str, raw: serde_json::Value) -> Result<(), String> {
            self.dead.push((reason.to_string(), raw));
            Ok(())
        }
    }

    impl Collect {
        pub fn rows(&self) -> Vec<[String; 5]> {
            let mut out = Vec::new();
            for b in &self.batches {
                for r in 0..b.num_rows() {
                    out.push(std::array::from_fn(|c| {
                        b.column(c).as_string::<i32>().value(r).to_string()
                    }));
                }
            }
            out
        }
    }

    fn options(language: Language, batch_size: usize) -> ParseOptions {
        ParseOptions {
            language,
            batch_size,
            origin: "test".into(),
            header_warned: Arc::default(),
            keep_raw: false,
        }
    }

    fn run(bytes: &[u8], language: Language) -> (ParseOutcome, Collect) {
        let mut sink = Collect::default();
        let outcome = parse(
            std::io::Cursor::new(bytes),
            &options(language, 8192),
            &mut sink,
        )
        .unwrap();
        (outcome, sink)
    }

    const JA: &str = "日時,送信者,受信者,トークルームID,トーク";

    #[test]
    fn schema_is_five_utf8_columns_tagged_with_the_record_type() {
        let s = raw_schema();
        assert_eq!(s.fields().len(), 5);
        assert!(
            s.fields()
                .iter()
                .all(|f| f.data_type() == &DataType::Utf8 && !f.is_nullable())
        );
        assert_eq!(chatlake_core::schema::record_type(&s), Some(RECORD_TYPE));
        let names: Vec<_> = s.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, COLUMNS);
    }

    /// Kept whole, a row is a JSON object of its fields keyed by the file's header (in its
    /// language), byte for byte; a file without a header keys them by the language's header.
    #[test]
    fn rows_kept_whole_are_keyed_by_the_files_header() {
        let parse_whole = |text: &str| {
            let mut sink = Collect::default();
            let options = ParseOptions {
                keep_raw: true,
                ..options(Language::EnUs, 8192)
            };
            parse(std::io::Cursor::new(text.as_bytes()), &options, &mut sink).unwrap();
            let b = &sink.batches[0];
            let raw = b.column_by_name(RAW_COLUMN).unwrap().as_string::<i32>();
            (0..raw.len())
                .map(|i| serde_json::from_str::<serde_json::Value>(raw.value(i)).unwrap())
                .collect::<Vec<_>>()
        };
        let row = "2025-01-01 09:00:00,[Bot]Alert(bot@x),太郎(taro@x),r1,\" line\r\nend \"";
        let ja = parse_whole(&format!("\u{feff}{JA}\r\n{row}\r\n"));
        assert_eq!(
            ja,
            [
                serde_json::json!({"日時": "2025-01-01 09:00:00", "送信者": "[Bot]Alert(bot@x)",
                "受信者": "太郎(taro@x)", "トークルームID": "r1", "トーク": " line\r\nend "})
            ]
        );
        let headerless = parse_whole(&format!("{row}\r\n"));
        assert_eq!(headerless[0]["Sender"], "[Bot]Alert(bot@x)");
        let (_, plain) = run(format!("{JA}\r\n{row}\r\n").as_bytes(), Language::JaJp);
        assert!(plain.batches[0].column_by_name(RAW_COLUMN).is_none());
    }

    #[test]
    fn header_table() {
        assert_eq!(expected_header(Language::JaJp).join(","), JA);
        assert_eq!(
            expected_header(Language::EnUs).join(","),
            "Date,Sender,Recipient,Message room ID,Message"
        );
        assert_eq!(
            expected_header(Language::KoKr).join(","),
            "일시,보낸 사람,받는 사람,대화방 ID,메시지"
        );
        assert_eq!(
            expected_header(Language::ZhCn),
            expected_header(Language::EnUs)
        );
        assert_eq!(
            expected_header(Language::ZhTw),
            expected_header(Language::EnUs)
        );
    }

    #[test]
    fn with_or_without_bom_and_with_crlf_or_lf() {
        let body = "2025-01-01 09:00:00,太郎(taro@x.jp),次郎(jiro@x.jp),21228435,こんにちは。";
        for bom in ["\u{feff}", ""] {
            for eol in ["\r\n", "\n"] {
                let text = format!("{bom}{JA}{eol}{body}{eol}{body}{eol}");
                let (o, s) = run(text.as_bytes(), Language::JaJp);
                assert_eq!(o.rows, 2, "bom={bom:?} eol={eol:?}");
                assert!(s.dead.is_empty());
                assert_eq!(s.rows()[0][0], "2025-01-01 09:00:00");
                assert_eq!(s.rows()[1][4], "こんにちは。");
            }
        }
        // No final line end, and a BOM right before a quoted field.
        let (o, s) = run(
            "\u{feff}\"Date\",Sender,Recipient,Message room ID,Message\r\n2025-01-01 00:00:00,a,b,1,x"
                .as_bytes(),
            Language::EnUs,
        );
        assert_eq!(o.rows, 1);
        assert_eq!(s.rows()[0][4], "x");
    }

    #[test]
    fn quoted_fields_are_byte_exact() {
        let text = format!(
            "{JA}\r\n\
             2025-01-01 09:00:00,\"[Bot]通知\",\"山田, 花子(h@x.jp)\",1,\"say \"\"hi\"\", then\r\nnext line\nand LF\"\r\n\
             2025-01-01 09:00:01,a,b,2,  padded  \r\n\
             2025-01-01 09:00:02,a,b,3,\"😀 絵文字 👨‍👩‍👧 café\"\r\n\
             2025-01-01 09:00:03,a,b,4,\r\n"
        );
        let (o, s) = run(text.as_bytes(), Language::JaJp);
        assert_eq!(o.rows, 4);
        let rows = s.rows();
        assert_eq!(rows[0][1], "[Bot]通知");
        assert_eq!(rows[0][2], "山田, 花子(h@x.jp)");
        assert_eq!(rows[0][4], "say \"hi\", then\r\nnext line\nand LF");
        assert_eq!(rows[1][4], "  padded  ", "no trimming");
        assert_eq!(rows[2][4], "😀 絵文字 👨‍👩‍👧 café");
        assert_eq!(
            rows[3][4], "",
            "an empty message is an empty string, not null"
        );
        assert_eq!(s.batches[0].column(4).null_count(), 0);
    }

    #[test]
    fn wrong_field_counts_and_bad_utf8_are_dead_lettered_and_parsing_goes_on() {
        let mut text = format!("{JA}\r\n").into_bytes();
        text.extend_from_slice(b"2025-01-01 09:00:00,a,b,1,ok\r\n");
        text.extend_from_slice(b"2025-01-01 09:00:01,a,b,1\r\n");
        text.extend_from_slice(b"2025-01-01 09:00:02,a,b,1,x,extra\r\n");
        text.extend_from_slice(b"2025-01-01 09:00:03,a,b,1,\xFF\xFEbad\r\n");
        text.extend_from_slice(b"2025-01-01 09:00:04,a,b,1,ok again\r\n");
        let (o, s) = run(&text, Language::JaJp);
        assert_eq!(o.rows, 2);
        assert_eq!(o.dead_letters, 3);
        assert_eq!(s.rows()[1][4], "ok again");
        assert_eq!(s.dead[0].0, "expected 5 fields, found 4");
        assert_eq!(s.dead[0].1["record"], 3);
        assert_eq!(s.dead[0].1["fields"][3], "1");
        assert_eq!(s.dead[1].0, "expected 5 fields, found 6");
        assert_eq!(s.dead[2].0, "field `message` is not valid UTF-8");
        assert_eq!(s.dead[2].1["fields"][4], "\u{fffd}\u{fffd}bad");
    }

    #[test]
    fn batches_are_cut_at_batch_size() {
        let mut text = String::from("Date,Sender,Recipient,Message room ID,Message\n");
        for i in 0..10 {
            text.push_str(&format!("2025-01-01 00:00:{i:02},a,b,1,m{i}\n"));
        }
        let mut sink = Collect::default();
        let o = parse(
            std::io::Cursor::new(text.as_bytes()),
            &options(Language::EnUs, 4),
            &mut sink,
        )
        .unwrap();
        assert_eq!(o.rows, 10);
        let sizes: Vec<_> = sink.batches.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(sizes, [4, 4, 2]);
        assert_eq!(sink.rows()[9][4], "m9");
    }

    #[test]
    fn unknown_or_foreign_headers_still_parse_by_position() {
        let opts = options(Language::EnUs, 100);
        // A ja_JP header on an en_US source.
        let mut s = Collect::default();
        let o = parse(
            std::io::Cursor::new(format!("{JA}\n2025-01-01 00:00:00,a,b,1,x\n").as_bytes()),
            &opts,
            &mut s,
        )
        .unwrap();
        assert_eq!(o.rows, 1);
        assert!(opts.header_warned.load(Ordering::Relaxed));
        // An unknown header is skipped.
        let (o, _) = run(
            b"When,Who,To,Room,Text\n2025-01-01 00:00:00,a,b,1,x\n",
            Language::EnUs,
        );
        assert_eq!(o.rows, 1);
        // No header at all: the first row is data.
        let (o, s) = run(
            b"2025-01-01 00:00:00,a,b,1,x\n2025-01-01 00:00:01,a,b,1,y\n",
            Language::EnUs,
        );
        assert_eq!(o.rows, 2);
        assert_eq!(s.rows()[0][4], "x");
        // Header only: no rows, no batches.
        let (o, s) = run(format!("\u{feff}{JA}\r\n").as_bytes(), Language::JaJp);
        assert_eq!(o.rows, 0);
        assert!(s.batches.is_empty());
        let (o, _) = run(b"", Language::JaJp);
        assert_eq!(o, ParseOutcome::default());
    }

    #[test]
    fn utf16_files_are_refused_with_advice() {
        let mut sink = Collect::default();
        let e = parse(
            std::io::Cursor::new(&b"\xFF\xFEa\0"[..]),
            &options(Language::EnUs, 10),
            &mut sink,
        )
        .unwrap_err();
        assert!(e.to_string().contains("UTF-16"));
    }

    fn spool(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f.rewind().unwrap();
        f
    }

    #[test]
    fn trailer_is_found_before_any_row_is_sent() {
        let text = format!(
            "\u{feff}{JA}\r\n2025-01-01 09:00:00,a,b,1,x\r\ndownloadLogs error\r\nFailed to generate the file. (code 5001)\r\n"
        );
        let mut f = spool(text.as_bytes());
        assert_eq!(
            find_trailer(&mut f).unwrap().as_deref(),
            Some("Failed to generate the file. (code 5001)")
        );
        // Rewound: a parse afterwards sees the whole file, and stops at the trailer too.
        let mut sink = Collect::default();
        let o = parse(&mut f, &options(Language::JaJp, 1), &mut sink).unwrap();
        assert_eq!(
            o.trailer.as_deref(),
            Some("Failed to generate the file. (code 5001)")
        );
        assert_eq!(o.rows, 1);

        // LF ends, a message with commas, and no final line end.
        let mut f = spool(
            b"Date,Sender,Recipient,Message room ID,Message\ndownloadLogs error\nerror, try later",
        );
        assert_eq!(
            find_trailer(&mut f).unwrap().as_deref(),
            Some("error, try later")
        );
        // A trailer right at the start (an empty range that failed).
        let mut f = spool(b"downloadLogs error\r\n");
        assert_eq!(
            find_trailer(&mut f).unwrap().as_deref(),
            Some("(no message)")
        );
    }

    #[test]
    fn a_quoted_line_that_reads_like_the_marker_is_not_a_trailer() {
        let text = format!(
            "{JA}\r\n2025-01-01 09:00:00,a,b,1,\"look:\r\ndownloadLogs error\r\nis just text\"\r\n"
        );
        let mut f = spool(text.as_bytes());
        assert_eq!(find_trailer(&mut f).unwrap(), None);
        let mut sink = Collect::default();
        let o = parse(&mut f, &options(Language::JaJp, 10), &mut sink).unwrap();
        assert_eq!(o.rows, 1);
        assert_eq!(
            sink.rows()[0][4],
            "look:\r\ndownloadLogs error\r\nis just text"
        );
        // A message that mentions it in the middle of a line is no candidate at all.
        let mut f = spool(b"Date,Sender,Recipient,Message room ID,Message\n2025-01-01 00:00:00,a,b,1,downloadLogs error here\n");
        assert_eq!(find_trailer(&mut f).unwrap(), None);
    }

    #[test]
    fn a_big_file_without_trailer_is_cleared_from_its_tail() {
        let mut text = format!("{JA}\r\n");
        for i in 0..5000 {
            text.push_str(&format!(
                "2025-01-01 09:00:00,a,b,{i},\"{}\"\r\n",
                "x".repeat(40)
            ));
        }
        let mut f = spool(text.as_bytes());
        assert!(f.metadata().unwrap().len() > TAIL_BYTES);
        assert_eq!(find_trailer(&mut f).unwrap(), None);
        text.push_str("downloadLogs error\r\nboom\r\n");
        let mut f = spool(text.as_bytes());
        assert_eq!(find_trailer(&mut f).unwrap().as_deref(), Some("boom"));
    }
}
