//! Parsers that run on a blocking thread (CSV straight into Arrow builders) and hand their batches
//! to a source's async output, so parsing uses the other core and a slow sink still holds the
//! parser back. Every file-reading source uses this one bridge.

use arrow::array::{ArrayBuilder, StringArray, StringBuilder};
use arrow::record_batch::RecordBatch;
use tokio::sync::mpsc;

use chatlake_core::dead_letter::DeadLetters;
use chatlake_core::metrics::ComponentMetrics;
use chatlake_core::stage::SourceContext;
use chatlake_core::{Batch, Error, Result, WindowRef};

use crate::csv_input::CsvRecord;

/// Batches a parser may run ahead of the source's output.
const IN_FLIGHT: usize = 2;

/// Where a parser puts what it reads. Returning `Err` stops the parser (downstream is gone, or a
/// dead letter could not be written).
pub trait RowSink {
    fn batch(&mut self, batch: RecordBatch) -> std::result::Result<(), String>;
    /// A row that cannot be represented: `raw` holds its record number and fields.
    fn dead_letter(
        &mut self,
        reason: &str,
        raw: serde_json::Value,
    ) -> std::result::Result<(), String>;
}

/// The [`RowSink`] of [`parse_to_output`]: batches go over a bounded channel to the async side,
/// dead letters straight to the run's dead-letter file.
pub struct ChannelSink {
    tx: mpsc::Sender<RecordBatch>,
    cx_name: String,
    dead_letters: DeadLetters,
    metrics: std::sync::Arc<ComponentMetrics>,
    window: WindowRef,
    dead_letter_error: Option<Error>,
}

impl RowSink for ChannelSink {
    fn batch(&mut self, batch: RecordBatch) -> std::result::Result<(), String> {
        self.tx
            .blocking_send(batch)
            .map_err(|_| "downstream stopped".to_string())
    }

    fn dead_letter(
        &mut self,
        reason: &str,
        raw: serde_json::Value,
    ) -> std::result::Result<(), String> {
        self.dead_letters
            .record(
                &self.cx_name,
                Some(&self.window),
                reason,
                raw,
                &self.metrics,
            )
            .map_err(|e| {
                let message = e.to_string();
                self.dead_letter_error = Some(e);
                message
            })
    }
}

/// Runs `parse` on the blocking pool and sends every batch it produces to `cx.out` as rows of
/// `window`. Returns the parser's own result, or `Err` when the run must stop: downstream
/// closed, a dead letter could not be written, or the parser panicked.
pub async fn parse_to_output<T, E>(
    cx: &SourceContext,
    window: &WindowRef,
    parse: impl FnOnce(&mut ChannelSink) -> std::result::Result<T, E> + Send + 'static,
) -> Result<std::result::Result<T, E>>
where
    T: Send + 'static,
    E: Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<RecordBatch>(IN_FLIGHT);
    let mut sink = ChannelSink {
        tx,
        cx_name: cx.name.clone(),
        dead_letters: cx.dead_letters.clone(),
        metrics: cx.metrics.clone(),
        window: window.clone(),
        dead_letter_error: None,
    };
    let parser = tokio::task::spawn_blocking(move || {
        let result = parse(&mut sink);
        (result, sink.dead_letter_error)
    });
    let mut downstream = None;
    while let Some(data) = rx.recv().await {
        if let Err(e) = cx.out.send(Batch::new(window.clone(), data)).await {
            downstream = Some(e);
            break;
        }
    }
    // Dropping the receiver stops a parser that is still sending.
    drop(rx);
    let (result, dead_letter_error) = parser
        .await
        .map_err(|e| Error::component(&cx.name, format!("the parser panicked: {e}")))?;
    match downstream.or(dead_letter_error) {
        Some(e) => Err(e),
        None => Ok(result),
    }
}

/// The `number`-th record of a CSV file (the header is record 1) as a dead letter's raw value.
/// The record number locates the row; csv's line and byte positions drift on CRLF files, so
/// they are not given.
pub fn raw_record(record: CsvRecord<'_>, number: u64) -> serde_json::Value {
    serde_json::json!({
        "record": number,
        "fields": record.iter().map(String::from_utf8_lossy).collect::<Vec<_>>(),
    })
}

/// `record` as text if it has `width` fields, each valid UTF-8, none of them swallowing rows
/// after an unbalanced quote (see [`swallowed_rows`]; `row_start` as there); else why not
/// (fields named by `name_of`, from their position), for the dead-letter file.
pub fn check_record<'r>(
    record: CsvRecord<'r>,
    width: usize,
    name_of: &dyn Fn(usize) -> &'static str,
    row_start: &dyn Fn(&[u8]) -> bool,
) -> std::result::Result<Utf8Fields<'r>, String> {
    if record.len() != width {
        return Err(format!("expected {width} fields, found {}", record.len()));
    }
    if let Some((field, rows)) = swallowed_rows(record, width, row_start) {
        let line = record
            .line()
            .map_or_else(|e| format!("? ({e})"), |line| line.to_string());
        return Err(format!(
            "an unbalanced quote on line {line}: field `{}` runs on over {rows} following \
             line(s) shaped like rows, which are kept in this record; fix the quote and load \
             the file again",
            name_of(field)
        ));
    }
    utf8_fields(record).map_err(|i| format!("field `{}` is not valid UTF-8", name_of(i)))
}

/// Whether a field of `record` swallowed the rows after it: an opening quote never closed
/// (or closed by a quote of a later row) makes the `csv` readers take every following line into
/// the field, so a file reads as one long row and the rows after it vanish. A quoted message
/// may hold line ends, and commas; a line inside a field holding a row's worth of separators
/// (`width - 1`) and starting as a row starts (`row_start`, e.g. with a date) is taken for a
/// row. `Some((field, lines))`: the first such field and how many of its lines look like rows.
/// Only records with a quoted field are looked at, and only their fields with a line end.
pub fn swallowed_rows(
    record: CsvRecord<'_>,
    width: usize,
    row_start: &dyn Fn(&[u8]) -> bool,
) -> Option<(usize, usize)> {
    if !record.may_span_lines() || width < 2 {
        return None;
    }
    record.iter().enumerate().find_map(|(i, field)| {
        let first_end = memchr::memchr(b'\n', field)?;
        let rows = field[first_end + 1..]
            .split(|b| *b == b'\n')
            .filter(|line| row_start(line) && memchr::memchr_iter(b',', line).count() >= width - 1)
            .count();
        (rows > 0).then_some((i, rows))
    })
}

/// Any line: for providers whose rows do not start in a recognisable way.
pub fn any_line(_: &[u8]) -> bool {
    true
}

/// The fields of `record` as text, checked in one pass over the bytes they lie in instead of
/// one check per field; `Err(i)`: field `i` is not valid UTF-8.
pub fn utf8_fields(record: CsvRecord<'_>) -> std::result::Result<Utf8Fields<'_>, usize> {
    let first_bad = || {
        record
            .iter()
            .position(|f| simdutf8::basic::from_utf8(f).is_err())
            .unwrap_or(0)
    };
    // Valid as a whole and every field starting and ending on a character boundary means every
    // field is valid on its own (a sequence split across two fields side by side would fail
    // `get`).
    let text = simdutf8::basic::from_utf8(record.as_slice()).map_err(|_| first_bad())?;
    for i in 0..record.len() {
        let range = record.range(i).expect("i < len");
        if text.get(range).is_none() {
            return Err(first_bad());
        }
    }
    Ok(Utf8Fields { record, text })
}

/// A CSV row whole, for a source asked to keep its records (`Source::keep_raw_records`): a JSON
/// object of the row's fields keyed by the file's header names, in file order, every field the
/// text the file had (nothing trimmed), written into `out` (cleared first). A duplicated header
/// name is written twice, as the file has it.
pub fn row_as_json(header: &[String], fields: &Utf8Fields<'_>, out: &mut String) {
    out.clear();
    out.push('{');
    for (i, name) in header.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(out, name);
        out.push(':');
        push_json_string(out, fields.get(i).unwrap_or_default());
    }
    out.push('}');
}

/// `text` as a JSON string (RFC 8259 escapes: quote, backslash, control characters).
fn push_json_string(out: &mut String, text: &str) {
    use std::fmt::Write;
    out.push('"');
    let mut rest = text;
    while let Some(at) = rest.find(|c: char| c == '"' || c == '\\' || c < ' ') {
        out.push_str(&rest[..at]);
        let c = rest[at..].chars().next().unwrap_or_default();
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            other => {
                let _ = write!(out, "\\u{:04x}", other as u32);
            }
        }
        rest = &rest[at + c.len_utf8()..];
    }
    out.push_str(rest);
    out.push('"');
}

/// A record whose fields are known to be valid UTF-8; see [`utf8_fields`].
#[derive(Clone, Copy)]
pub struct Utf8Fields<'r> {
    record: CsvRecord<'r>,
    text: &'r str,
}

impl<'r> Utf8Fields<'r> {
    /// Field `i`, if the record has it.
    pub fn get(&self, i: usize) -> Option<&'r str> {
        self.record.range(i).and_then(|r| self.text.get(r))
    }
}

/// Finishes `builder` and leaves it sized for a batch like the one it held: `finish` leaves
/// empty buffers, which the next batch would grow by doubling (a reallocation and a copy of
/// everything so far each time: 1 % of the LINE WORKS job's time).
pub fn finish_sized(builder: &mut StringBuilder) -> StringArray {
    let rows = builder.len();
    let bytes = builder.values_slice().len();
    let array = builder.finish();
    *builder = StringBuilder::with_capacity(rows, bytes + bytes / 8);
    array
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The next batch starts with room for what the last one held, so it never reallocates
    /// when it holds the same, and the finished array is the values appended.
    #[test]
    fn a_finished_builder_is_sized_for_the_next_batch_like_the_last() {
        use arrow::array::Array;
        let mut builder = StringBuilder::new();
        for i in 0..1000 {
            builder.append_value(format!("value {i:04}"));
        }
        let array = finish_sized(&mut builder);
        assert_eq!(array.len(), 1000);
        assert_eq!(array.value(999), "value 0999");
        assert!(builder.is_empty());
        assert!(builder.values_slice().is_empty());
        let before = builder.values_slice().as_ptr();
        for i in 0..1000 {
            builder.append_value(format!("value {i:04}"));
        }
        assert_eq!(
            builder.values_slice().as_ptr(),
            before,
            "grew instead of fitting"
        );
    }

    /// Every field comes back from the JSON byte for byte, keyed by its header name, in order.
    #[test]
    fn a_row_as_json_keeps_every_field_as_the_file_had_it() {
        let csv = "a,b \"q\",c\r\n x ,\"line\nbreak \"\"quoted\"\" \\ \t\u{1}\",日本\r\n";
        let mut reader =
            crate::csv_input::CsvRecords::new(std::io::Cursor::new(csv.as_bytes())).unwrap();
        let mut header = Vec::new();
        let mut json = String::new();
        reader
            .for_each_record(|record| {
                let fields = utf8_fields(record).unwrap();
                if header.is_empty() {
                    header = (0..record.len())
                        .map(|i| fields.get(i).unwrap().to_string())
                        .collect();
                } else {
                    row_as_json(&header, &fields, &mut json);
                }
                Ok::<_, csv::Error>(std::ops::ControlFlow::Continue(()))
            })
            .unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        let object = parsed.as_object().unwrap();
        assert_eq!(object.len(), 3);
        let at = |key: &str| json.find(&format!("{}:", serde_json::to_string(key).unwrap()));
        assert!(
            at("a") < at("b \"q\"") && at("b \"q\"") < at("c"),
            "file order: {json}"
        );
        assert_eq!(object["a"], " x ", "nothing trimmed");
        assert_eq!(object["b \"q\""], "line\nbreak \"quoted\" \\ \t\u{1}");
        assert_eq!(object["c"], "日本");
    }

    /// What `utf8_fields` says of the first record of `csv`, fields as text.
    fn checked(csv: &[u8]) -> std::result::Result<Vec<Option<String>>, usize> {
        let mut reader = crate::csv_input::CsvRecords::new(std::io::Cursor::new(csv)).unwrap();
        let mut result = None;
        reader
            .for_each_record(|record| {
                result = Some(utf8_fields(record).map(|fields| {
                    (0..=record.len())
                        .map(|i| fields.get(i).map(String::from))
                        .collect()
                }));
                Ok::<_, csv::Error>(std::ops::ControlFlow::Break(()))
            })
            .unwrap();
        result.unwrap()
    }

    /// What `check_record` says of every record of `csv` (5 fields, rows start with `2`).
    fn checked_records(csv: &[u8]) -> Vec<std::result::Result<String, String>> {
        let mut reader = crate::csv_input::CsvRecords::new(std::io::Cursor::new(csv)).unwrap();
        let mut out = Vec::new();
        let name_of = |_: usize| "field";
        let row_start = |line: &[u8]| line.first() == Some(&b'2');
        reader
            .for_each_record(|record| {
                out.push(
                    check_record(record, 5, &name_of, &row_start)
                        .map(|f| f.get(4).unwrap().to_string()),
                );
                Ok::<_, csv::Error>(std::ops::ControlFlow::Continue(()))
            })
            .unwrap();
        out
    }

    #[test]
    fn a_quote_that_swallows_the_rows_after_it_is_refused_with_its_line() {
        let csv = b"2025,a,b,r,one\n\
                    2025,a,b,r,\"two\nlines, with, some, commas, here\"\n\
                    2025,a,b,r,\"open\n\
                    2025,a,b,r,three\n\
                    2025,a,b,r,\"four\"\n\
                    2025,a,b,r,five\n";
        let got = checked_records(csv);
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0], Ok("one".into()));
        assert_eq!(got[1], Ok("two\nlines, with, some, commas, here".into()));
        let reason = got[2].as_ref().unwrap_err();
        assert!(
            reason.starts_with("an unbalanced quote on line 4: field `field` runs on over 2 "),
            "{reason}"
        );
        assert_eq!(got[3], Ok("five".into()));
        // Never closed: everything after it is in the one record.
        let got = checked_records(b"2025,a,b,r,\"open\n2025,a,b,r,x\n2025,a,b,r,y\n2025,a,b,r,z\n");
        assert_eq!(got.len(), 1);
        assert!(
            got[0].as_ref().unwrap_err().contains("over 3 following"),
            "{got:?}"
        );
    }

    #[test]
    fn fields_are_checked_as_a_whole_and_each_on_its_own() {
        let text = |f: &[&str]| f.iter().map(|f| Some(f.to_string())).collect::<Vec<_>>();
        // Fields where they lie in the record, and fields copied to unescape them.
        let mut fields = text(&["太郎", "", "a,b"]);
        fields.push(None);
        assert_eq!(checked("太郎,,\"a,b\"\n".as_bytes()), Ok(fields.clone()));
        fields[2] = Some("a,\"b".into());
        assert_eq!(checked("太郎,,\"a,\"\"b\"\n".as_bytes()), Ok(fields));
        assert_eq!(checked(b"ok,\xff,x\n"), Err(1));
        assert_eq!(checked(b"ok,\"\"\"\",\"\xff\""), Err(2));
        // "é" split across two fields: valid when joined side by side (as copied fields are),
        // invalid in each field.
        assert_eq!(checked(b"\"a\xc3\",\"\xa9\"\"b\"\n"), Err(0));
        assert_eq!(checked(b"a\xc3,\xa9b\n"), Err(0));
    }
}
