//! The CSV layout of a LINE WORKS message-contents download (contract E1): UTF-8 with a BOM, CRLF
//! record ends, RFC 4180 quoting, a five-column header per language, datetimes in the offset of
//! the request's `startTime`, and the optional `downloadLogs error` trailer.
//!
//! Rows are written straight into a caller-owned byte buffer (hand-rolled rather than the `csv`
//! crate) so that a multi-million-row download costs no allocation per row.

use chrono::{DateTime, NaiveDate};

use super::data::{RawMessage, push_decimal};

/// The `language` query parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Language {
    JaJp,
    EnUs,
    KoKr,
    ZhCn,
    ZhTw,
}

impl Language {
    /// Parses the exact spelling the API documents (`ja_JP`, not `ja-jp`).
    pub(crate) fn parse(value: &str) -> Option<Language> {
        Some(match value {
            "ja_JP" => Language::JaJp,
            "en_US" => Language::EnUs,
            "ko_KR" => Language::KoKr,
            "zh_CN" => Language::ZhCn,
            "zh_TW" => Language::ZhTw,
            _ => return None,
        })
    }

    /// The header row, without the record end. Chinese uses the English labels until the real
    /// ones are known (contract E1).
    pub(crate) fn header(self) -> &'static str {
        match self {
            Language::JaJp => "日時,送信者,受信者,トークルームID,トーク",
            Language::KoKr => "일시,보낸 사람,받는 사람,대화방 ID,메시지",
            Language::EnUs | Language::ZhCn | Language::ZhTw => {
                "Date,Sender,Recipient,Message room ID,Message"
            }
        }
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";
const CRLF: &[u8] = b"\r\n";

/// The marker line of a file whose generation failed, and the message line that follows it.
pub(crate) const TRAILER_MARKER: &str = "downloadLogs error";
pub(crate) const TRAILER_MESSAGE: &str = "Internal error while generating the file.";

/// Writes the rows of one download.
pub(crate) struct CsvWriter {
    /// Offset of the request's `startTime`, applied to every datetime.
    offset_secs: i64,
    /// The local day of `date`, cached because consecutive rows nearly always share it.
    day: Option<i64>,
    /// `yyyy-MM-dd ` of `day`.
    date: Vec<u8>,
    /// Reused to build a field before it is quoted.
    field: Vec<u8>,
}

impl CsvWriter {
    pub(crate) fn new(offset_secs: i32) -> CsvWriter {
        CsvWriter {
            offset_secs: i64::from(offset_secs),
            day: None,
            date: Vec::with_capacity(16),
            field: Vec::with_capacity(256),
        }
    }

    /// The BOM and the header row.
    pub(crate) fn write_preamble(out: &mut Vec<u8>, language: Language) {
        out.extend_from_slice(BOM);
        out.extend_from_slice(language.header().as_bytes());
        out.extend_from_slice(CRLF);
    }

    /// The `downloadLogs error` marker and its message, each on its own line.
    pub(crate) fn write_trailer(out: &mut Vec<u8>) {
        out.extend_from_slice(TRAILER_MARKER.as_bytes());
        out.extend_from_slice(CRLF);
        out.extend_from_slice(TRAILER_MESSAGE.as_bytes());
        out.extend_from_slice(CRLF);
    }

    /// One record: datetime, sender, recipient, room id, text.
    pub(crate) fn write_row(&mut self, out: &mut Vec<u8>, message: &RawMessage) {
        self.write_datetime(out, message.at);
        out.push(b',');
        self.write_field(out, RawMessage::write_sender, message);
        out.push(b',');
        self.write_field(out, RawMessage::write_recipient, message);
        out.push(b',');
        // Digits only: never needs quoting.
        message.write_room_id(out);
        out.push(b',');
        self.write_field(out, RawMessage::write_text, message);
        out.extend_from_slice(CRLF);
    }

    fn write_field(
        &mut self,
        out: &mut Vec<u8>,
        write: fn(&RawMessage, &mut Vec<u8>),
        message: &RawMessage,
    ) {
        self.field.clear();
        write(message, &mut self.field);
        write_quoted(out, &self.field);
    }

    /// `yyyy-MM-dd HH:mm:ss` in the writer's offset.
    fn write_datetime(&mut self, out: &mut Vec<u8>, at: i64) {
        let local = at + self.offset_secs;
        let day = local.div_euclid(86_400);
        if self.day != Some(day) {
            self.day = Some(day);
            self.date.clear();
            // Once per day, so the `fmt` machinery is affordable here; it also copes with any
            // year, while the time of day below is hand-written for speed.
            let date = DateTime::from_timestamp(day * 86_400, 0)
                .map(|t| t.date_naive())
                .unwrap_or(NaiveDate::MIN);
            self.date
                .extend_from_slice(date.format("%Y-%m-%d ").to_string().as_bytes());
        }
        out.extend_from_slice(&self.date);
        let second_of_day = local.rem_euclid(86_400) as u64;
        push_decimal(out, second_of_day / 3600, 2);
        out.push(b':');
        push_decimal(out, second_of_day / 60 % 60, 2);
        out.push(b':');
        push_decimal(out, second_of_day % 60, 2);
    }
}

/// RFC 4180: a field holding a comma, quote, CR or LF is quoted, and its quotes are doubled.
/// Spaces are data and are kept as they are.
fn write_quoted(out: &mut Vec<u8>, field: &[u8]) {
    if !field
        .iter()
        .any(|&b| matches!(b, b',' | b'"' | b'\r' | b'\n'))
    {
        out.extend_from_slice(field);
        return;
    }
    out.push(b'"');
    for part in field.split_inclusive(|&b| b == b'"') {
        out.extend_from_slice(part);
        if part.last() == Some(&b'"') {
            out.push(b'"');
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lineworks::data::Generator;

    #[test]
    fn quoting_follows_rfc_4180() {
        let cases: [(&str, &str); 6] = [
            ("plain text", "plain text"),
            ("  spaces kept  ", "  spaces kept  "),
            ("a,b", "\"a,b\""),
            ("say \"hi\"", "\"say \"\"hi\"\"\""),
            ("\"", "\"\"\"\""),
            ("one\r\ntwo\nthree", "\"one\r\ntwo\nthree\""),
        ];
        for (field, expected) in cases {
            let mut out = Vec::new();
            write_quoted(&mut out, field.as_bytes());
            assert_eq!(String::from_utf8(out).unwrap(), expected, "field {field:?}");
        }
    }

    #[test]
    fn datetime_uses_the_offset_and_crosses_days() {
        let mut out = Vec::new();
        let mut jst = CsvWriter::new(9 * 3600);
        // 2025-04-30T15:00:00Z is midnight in Tokyo.
        jst.write_datetime(&mut out, 1_746_025_200);
        out.push(b'|');
        jst.write_datetime(&mut out, 1_746_025_199);
        out.push(b'|');
        let mut west = CsvWriter::new(-(3 * 3600 + 30 * 60));
        west.write_datetime(&mut out, 1_746_025_200);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2025-05-01 00:00:00|2025-04-30 23:59:59|2025-04-30 11:30:00"
        );
    }

    #[test]
    fn rows_parse_back_with_the_csv_crate() {
        let mut generator = Generator::new(42, 1.0, 1_746_025_200, 1_746_025_200 + 2 * 86_400);
        let mut writer = CsvWriter::new(9 * 3600);
        let mut out = Vec::new();
        CsvWriter::write_preamble(&mut out, Language::JaJp);
        let mut hour = Vec::new();
        let mut messages = Vec::new();
        while generator.next_hour(&mut hour) {
            for m in &hour {
                writer.write_row(&mut out, m);
            }
            messages.extend_from_slice(&hour);
        }
        CsvWriter::write_trailer(&mut out);
        assert!(out.starts_with(BOM));
        let mut reader = ::csv::ReaderBuilder::new()
            .flexible(true)
            .from_reader(&out[BOM.len()..]);
        assert_eq!(
            reader.headers().unwrap().iter().collect::<Vec<_>>(),
            ["日時", "送信者", "受信者", "トークルームID", "トーク"]
        );
        let records: Vec<_> = reader.records().map(Result::unwrap).collect();
        assert_eq!(records.len(), messages.len() + 2);
        for (record, m) in records.iter().zip(&messages) {
            let mut text = Vec::new();
            m.write_text(&mut text);
            assert_eq!(record[4].as_bytes(), &text[..]);
            assert_eq!(record.len(), 5);
        }
        let tail: Vec<_> = records[messages.len()..]
            .iter()
            .map(|r| r.iter().collect::<Vec<_>>().join(","))
            .collect();
        assert_eq!(tail, [TRAILER_MARKER, TRAILER_MESSAGE]);
    }

    /// Generation + CSV writing speed, the emulator's hot path. Meaningful only optimised, e.g.
    /// `cargo test -p chatlake-emulator --lib --config 'profile.dev.package.chatlake-emulator.opt-level=3'
    /// -- --ignored --nocapture throughput` (about 5 M rows/s on one core).
    #[test]
    #[ignore = "a benchmark; run optimised"]
    fn throughput() {
        let start = std::time::Instant::now();
        // About 2 M messages: 2000 days at scale 1.
        let mut generator = Generator::new(42, 1.0, 1_600_000_000, 1_600_000_000 + 2000 * 86_400);
        let mut writer = CsvWriter::new(9 * 3600);
        let (mut out, mut hour) = (Vec::with_capacity(1 << 17), Vec::new());
        let (mut rows, mut bytes) = (0usize, 0usize);
        while generator.next_hour(&mut hour) {
            for m in &hour {
                writer.write_row(&mut out, m);
            }
            rows += hour.len();
            if out.len() >= 1 << 16 {
                bytes += out.len();
                out.clear();
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{rows} rows, {} MB in {secs:.2} s: {:.2} M rows/s",
            bytes >> 20,
            rows as f64 / secs / 1e6
        );
    }
}
