//! The history-export CSV: raw schema, and the parser that turns a file into Arrow batches of
//! `qlara.message_history` records.
//!
//! Columns are found **by header name** (contract E5: `messageId, customerMessageId, channel,
//! direction, sender, destination, body, status, sendDate, deliveryDate, cost, parts`), so a file
//! with columns in another order, or with extra columns, reads the same. Names match without
//! regard to case or surrounding spaces. A column the header lacks is null in every row;
//! `messageId` and `sendDate` are required. RFC 4180, UTF-8; a BOM is tolerated.
//!
//! The parser takes each record's fields where they lie in the reader's buffer (records split by
//! [`CsvRecords`]: SIMD, with the csv crate's results) and appends them straight into Arrow
//! string builders. Text is kept byte for byte. A row with the wrong number of fields or a field that is
//! not UTF-8 is a dead letter; parsing goes on.

use std::io::{self, Read, Seek};
use std::ops::ControlFlow;
use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use chatlake_core::schema::RECORD_TYPE_KEY;
use chatlake_source_kit::csv_input::{CsvRecords, skip_bom};
use chatlake_source_kit::parsed::{any_line, check_record, finish_sized, raw_record};

/// The record type of this source's batches.
pub const RECORD_TYPE: &str = "qlara.message_history";

/// The raw columns: the export's header names, in contract order.
pub const COLUMNS: [&str; 12] = [
    "messageId",
    "customerMessageId",
    "channel",
    "direction",
    "sender",
    "destination",
    "body",
    "status",
    "sendDate",
    "deliveryDate",
    "cost",
    "parts",
];

/// The position of `sendDate` in [`COLUMNS`].
const SEND_DATE: usize = 8;

/// Columns a file must have.
const REQUIRED: [&str; 2] = ["messageId", "sendDate"];

fn schema(whole: bool) -> SchemaRef {
    let mut fields: Vec<Field> = COLUMNS
        .iter()
        .map(|c| Field::new(*c, DataType::Utf8, true))
        .collect();
    if whole {
        fields.push(Field::new(RAW_COLUMN, DataType::Utf8, false));
    }
    let metadata = [(RECORD_TYPE_KEY.to_string(), RECORD_TYPE.to_string())].into();
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

static RAW_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| schema(false));
static RAW_SCHEMA_WITH_RECORDS: LazyLock<SchemaRef> = LazyLock::new(|| schema(true));

/// The column that holds each row whole when the parse is asked to keep it: a JSON object of
/// every field of the row (columns this schema does not read included) keyed by the file's
/// header names as the file spells them, each field byte for byte.
pub const RAW_COLUMN: &str = "raw";

/// The schema of the batches this source sends: the twelve export columns as nullable `Utf8`
/// (null only when the file has no such column), tagged
/// `chatlake.record_type = qlara.message_history`.
pub fn raw_schema() -> SchemaRef {
    RAW_SCHEMA.clone()
}

/// Where parsed rows go (the bridge every file-reading source shares).
pub use chatlake_source_kit::parsed::RowSink;

/// What a parse found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ParseOutcome {
    pub rows: u64,
    pub dead_letters: u64,
    /// Rows outside the `start`/`end` filter.
    pub filtered: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("reading the CSV failed: {0}")]
    Io(#[from] io::Error),
    #[error("reading the CSV failed: {0}")]
    Csv(#[from] csv::Error),
    #[error("the CSV header lacks the `{0}` column (found: {1})")]
    MissingColumn(&'static str, String),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// The sink refused more input.
    #[error("{0}")]
    Stopped(String),
}

struct Columns {
    builders: Vec<StringBuilder>,
    /// Each row whole, when kept.
    raw: Option<StringBuilder>,
    rows: usize,
    capacity: usize,
}

impl Columns {
    fn new(capacity: usize, keep_raw: bool) -> Self {
        Columns {
            builders: (0..COLUMNS.len())
                .map(|_| StringBuilder::with_capacity(capacity, capacity * 24))
                .collect(),
            raw: keep_raw.then(|| StringBuilder::with_capacity(capacity, capacity * 400)),
            rows: 0,
            capacity,
        }
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

/// Parses a whole export into `sink`, batches of at most `batch_size` rows.
pub fn parse<R: Read + Seek>(
    input: R,
    batch_size: usize,
    sink: &mut dyn RowSink,
) -> Result<ParseOutcome, ParseError> {
    parse_filtered(input, batch_size, &SendDateFilter::default(), false, sink)
}

/// Keeps rows whose `sendDate` lies in `[start, end]` (either bound optional): `start`/`end` of a
/// `files` source. A `sendDate` that does not parse passes (normalize dead-letters it).
#[derive(Debug, Clone, Default)]
pub struct SendDateFilter {
    pub start: Option<chrono::DateTime<chrono::FixedOffset>>,
    pub end: Option<chrono::DateTime<chrono::FixedOffset>>,
}

impl SendDateFilter {
    fn is_empty(&self) -> bool {
        self.start.is_none() && self.end.is_none()
    }

    fn keeps(&self, send_date: Option<&str>) -> bool {
        let Some(t) = send_date.and_then(|s| chrono::DateTime::parse_from_rfc3339(s.trim()).ok())
        else {
            return true;
        };
        self.start.is_none_or(|s| t >= s) && self.end.is_none_or(|e| t <= e)
    }
}

/// [`parse`], keeping only the rows `filter` keeps; `ParseOutcome::filtered` counts the others.
/// `keep_raw` adds each row whole as a last column [`RAW_COLUMN`].
pub fn parse_filtered<R: Read + Seek>(
    input: R,
    batch_size: usize,
    filter: &SendDateFilter,
    keep_raw: bool,
    sink: &mut dyn RowSink,
) -> Result<ParseOutcome, ParseError> {
    let mut input = input;
    skip_bom(&mut input)?;
    let mut reader = CsvRecords::new(input)?;
    let mut record = csv::ByteRecord::new();
    let mut outcome = ParseOutcome::default();
    if !reader.read_byte_record(&mut record)? {
        return Ok(outcome);
    }
    let width = record.len();
    // For each raw column, its position in the file.
    let mut position: [Option<usize>; 12] = [None; 12];
    for (i, name) in record.iter().enumerate() {
        let name = String::from_utf8_lossy(name);
        let name = name.trim();
        if let Some(c) = COLUMNS.iter().position(|c| c.eq_ignore_ascii_case(name))
            && position[c].is_none()
        {
            position[c] = Some(i);
        }
    }
    for required in REQUIRED {
        let c = COLUMNS.iter().position(|c| *c == required).unwrap_or(0);
        if position[c].is_none() {
            let found: Vec<_> = record.iter().map(String::from_utf8_lossy).collect();
            return Err(ParseError::MissingColumn(required, found.join(",")));
        }
    }
    let mut columns = Columns::new(batch_size.max(1), keep_raw);
    // The names `raw` keys a row's fields by: every header name as the file writes it.
    let header: Vec<String> = if keep_raw {
        record
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect()
    } else {
        Vec::new()
    };
    let mut json = String::new();
    let mut number: u64 = 1;
    reader.for_each_record(|record| {
        number += 1;
        // A field in a column we do not read is named by what it is not: none of ours.
        let name_of = |p: usize| {
            position
                .iter()
                .position(|q| *q == Some(p))
                .map_or("(a column not read)", |c| COLUMNS[c])
        };
        let text = match check_record(record, width, &name_of, &any_line) {
            Ok(text) => text,
            Err(reason) => {
                outcome.dead_letters += 1;
                sink.dead_letter(&reason, raw_record(record, number))
                    .map_err(ParseError::Stopped)?;
                return Ok(ControlFlow::Continue(()));
            }
        };
        let fields: [Option<&str>; 12] =
            std::array::from_fn(|c| position[c].and_then(|p| text.get(p)));
        if !filter.is_empty() && !filter.keeps(fields[SEND_DATE]) {
            outcome.filtered += 1;
            return Ok(ControlFlow::Continue(()));
        }
        for (builder, field) in columns.builders.iter_mut().zip(fields) {
            builder.append_option(field);
        }
        if let Some(raw) = &mut columns.raw {
            chatlake_source_kit::parsed::row_as_json(&header, &text, &mut json);
            raw.append_value(&json);
        }
        columns.rows += 1;
        outcome.rows += 1;
        if columns.rows >= columns.capacity
            && let Some(batch) = columns.finish()?
        {
            sink.batch(batch).map_err(ParseError::Stopped)?;
        }
        Ok::<_, ParseError>(ControlFlow::Continue(()))
    })?;
    if let Some(batch) = columns.finish()? {
        sink.batch(batch).map_err(ParseError::Stopped)?;
    }
    Ok(outcome)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};

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
        fn column(&self, name: &str) -> Vec<Option<String>> {
            let mut out = Vec::new();
            for b in &self.batches {
                let c = b.column_by_name(name).unwrap().as_string::<i32>();
                for i in 0..c.len() {
                    out.push((!c.is_null(i)).then(|| c.value(i).to_string()));
                }
            }
            out
        }
    }

    fn run(bytes: &[u8], batch_size: usize) -> (ParseOutcome, Collect) {
        let mut sink = Collect::default();
        let outcome = parse(std::io::Cursor::new(bytes), batch_size, &mut sink).unwrap();
        (outcome, sink)
    }

    const HEADER: &str = "messageId,customerMessageId,channel,direction,sender,destination,body,status,sendDate,deliveryDate,cost,parts";

    /// Kept whole, a row is every field the file has (an extra column, a header spelt another
    /// way, `cost`, `parts`, `direction`, `customerMessageId`) keyed by the file's own header
    /// names, byte for byte; without it the batch has no such column.
    #[test]
    fn rows_kept_whole_hold_every_field_by_the_files_header() {
        let text = "MessageID,customerMessageId,channel,direction,sender,destination,body,status,\
                    sendDate,deliveryDate,cost,parts,campaign\n\
                    m1,c-1,SMS,OUTBOUND,ACME,+39 1,\" two\nlines \"\"q\"\" \",SENT,\
                    2025-01-01T10:00:00+01:00,,0.045,2,spring\n";
        let mut sink = Collect::default();
        let filter = SendDateFilter::default();
        parse_filtered(std::io::Cursor::new(text), 10, &filter, true, &mut sink).unwrap();
        let raw = sink.column(RAW_COLUMN);
        let record: serde_json::Value = serde_json::from_str(raw[0].as_deref().unwrap()).unwrap();
        assert_eq!(
            record,
            serde_json::json!({
                "MessageID": "m1", "customerMessageId": "c-1", "channel": "SMS",
                "direction": "OUTBOUND", "sender": "ACME", "destination": "+39 1",
                "body": " two\nlines \"q\" ", "status": "SENT",
                "sendDate": "2025-01-01T10:00:00+01:00", "deliveryDate": "", "cost": "0.045",
                "parts": "2", "campaign": "spring",
            })
        );
        assert_eq!(sink.column("messageId"), [Some("m1".to_string())]);
        let (_, plain) = run(text.as_bytes(), 10);
        assert!(plain.batches[0].column_by_name(RAW_COLUMN).is_none());
    }

    #[test]
    fn schema_is_tagged_with_the_record_type() {
        assert_eq!(COLUMNS[SEND_DATE], "sendDate");
        let s = raw_schema();
        assert_eq!(s.fields().len(), 12);
        assert_eq!(chatlake_core::schema::record_type(&s), Some(RECORD_TYPE));
    }

    #[test]
    fn reads_by_header_name_byte_exact_with_or_without_bom() {
        let row = "m1,c1,SMS,OUTBOUND,ACME,+39333,\"Ciao, \"\"mondo\"\"\r\nriga 2 🇮🇹\",DELIVERED,2025-01-01T10:00:00+01:00,,0.0450,1";
        for bom in ["", "\u{feff}"] {
            let text = format!("{bom}{HEADER}\n{row}\n");
            let (o, s) = run(text.as_bytes(), 10);
            assert_eq!(o.rows, 1);
            assert_eq!(
                s.column("body")[0].as_deref(),
                Some("Ciao, \"mondo\"\r\nriga 2 🇮🇹")
            );
            assert_eq!(s.column("deliveryDate")[0].as_deref(), Some(""));
            assert_eq!(s.column("messageId")[0].as_deref(), Some("m1"));
        }
        // Another order, an extra column, a missing optional column.
        let (o, s) = run(
            b"sendDate,extra, MESSAGEID ,body\n2025-01-01T00:00:00Z,x,m2,hi\n",
            10,
        );
        assert_eq!(o.rows, 1);
        assert_eq!(s.column("messageId")[0].as_deref(), Some("m2"));
        assert_eq!(s.column("body")[0].as_deref(), Some("hi"));
        assert_eq!(s.column("channel")[0], None);
    }

    #[test]
    fn bad_rows_are_dead_lettered_and_parsing_goes_on() {
        let mut text = format!("{HEADER}\n").into_bytes();
        text.extend_from_slice(b"m1,c,SMS,OUTBOUND,A,B,ok,SENT,2025-01-01T00:00:00Z,,0,1\n");
        text.extend_from_slice(b"m2,c,SMS,OUTBOUND,A,B,short\n");
        text.extend_from_slice(b"m3,c,SMS,OUTBOUND,A,B,\xFF\xFE,SENT,2025-01-01T00:00:00Z,,0,1\n");
        text.extend_from_slice(b"m4,c,SMS,OUTBOUND,A,B,ok,SENT,2025-01-01T00:00:00Z,,0,1\n");
        let (o, s) = run(&text, 1);
        assert_eq!(o.rows, 2);
        assert_eq!(o.dead_letters, 2);
        assert_eq!(s.batches.len(), 2);
        assert_eq!(s.dead[0].0, "expected 12 fields, found 7");
        assert_eq!(s.dead[0].1["record"], 3);
        assert_eq!(s.dead[1].0, "field `body` is not valid UTF-8");
    }

    #[test]
    fn start_and_end_filter_on_send_date() {
        let text = format!(
            "{HEADER}\n\
             a,c,SMS,O,A,B,x,SENT,2025-01-01T00:59:59+01:00,,0,1\n\
             b,c,SMS,O,A,B,x,SENT,2025-01-01T00:00:00Z,,0,1\n\
             c,c,SMS,O,A,B,x,SENT,2025-01-02T00:00:00Z,,0,1\n\
             d,c,SMS,O,A,B,x,SENT,not a date,,0,1\n"
        );
        let t = |s: &str| Some(chrono::DateTime::parse_from_rfc3339(s).unwrap());
        let filter = SendDateFilter {
            start: t("2025-01-01T00:00:00Z"),
            end: t("2025-01-01T23:59:59Z"),
        };
        let mut sink = Collect::default();
        let o = parse_filtered(
            std::io::Cursor::new(text.as_bytes()),
            10,
            &filter,
            false,
            &mut sink,
        )
        .unwrap();
        assert_eq!((o.rows, o.filtered), (2, 2));
        let ids: Vec<_> = sink.column("messageId").into_iter().flatten().collect();
        assert_eq!(ids, ["b", "d"]);
    }

    #[test]
    fn a_header_without_message_id_is_refused_and_empty_files_are_empty() {
        let mut sink = Collect::default();
        let e = parse(
            std::io::Cursor::new(&b"id,sendDate\n1,x\n"[..]),
            10,
            &mut sink,
        )
        .unwrap_err();
        assert!(e.to_string().contains("`messageId`"), "{e}");
        let (o, s) = run(b"", 10);
        assert_eq!(o, ParseOutcome::default());
        assert!(s.batches.is_empty());
        let (o, _) = run(format!("{HEADER}\n").as_bytes(), 10);
        assert_eq!(o.rows, 0);
    }
}
