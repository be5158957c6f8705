//! Column builders every provider mapping needs: the rows kept after dead-lettering, constant
//! and empty columns, UTC timestamps and their dates, and [`CanonicalColumns`], which assembles
//! a canonical batch from what a provider has.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Int64Array, ListArray, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::buffer::OffsetBuffer;
use arrow::compute::filter;
use chatlake_core::schema::{self, attachment_item_field};
use chatlake_core::{Error, Result, TransformContext};

/// The columns of one canonical batch (spec section 3) that come from the provider's rows, in
/// schema order. `None` is a column the provider does not have: [`CanonicalColumns::into_batch`]
/// fills it with its canonical default (null, `false`, `normal`, `chat`, no attachments).
pub(crate) struct CanonicalColumns<'a> {
    pub provider: &'a str,
    pub stream: &'a str,
    pub message_id: ArrayRef,
    pub conversation_id: Option<ArrayRef>,
    pub conversation_name: Option<ArrayRef>,
    pub sender_id: ArrayRef,
    pub sender_name: Option<ArrayRef>,
    pub recipient: Option<ArrayRef>,
    /// Microseconds since the epoch; also gives `sent_date`. Its length is the batch's rows.
    pub sent_at: Vec<i64>,
    pub text: ArrayRef,
    pub is_bot: Option<ArrayRef>,
    pub status: Option<ArrayRef>,
    pub channel: Option<ArrayRef>,
    pub reply_to_id: Option<ArrayRef>,
    pub attachments: Option<ArrayRef>,
    pub delivered_at: Option<ArrayRef>,
    pub version: Vec<i64>,
    /// The provider's records whole (`raw = true`), after the canonical columns.
    pub raw: Option<ArrayRef>,
}

impl CanonicalColumns<'_> {
    /// The canonical batch, every row stamped with `run_id`.
    pub(crate) fn into_batch(self, run_id: &str) -> Result<RecordBatch> {
        let rows = self.sent_at.len();
        let dates = utc_dates(&self.sent_at);
        let mut columns: Vec<ArrayRef> = vec![
            constant(self.provider, rows),
            constant(self.stream, rows),
            self.message_id,
            self.conversation_id.unwrap_or_else(|| no_text(rows)),
            self.conversation_name.unwrap_or_else(|| no_text(rows)),
            self.sender_id,
            self.sender_name.unwrap_or_else(|| no_text(rows)),
            self.recipient.unwrap_or_else(|| no_text(rows)),
            utc(self.sent_at),
            dates,
            self.text,
            self.is_bot
                .unwrap_or_else(|| Arc::new(BooleanArray::from(vec![false; rows]))),
            self.status.unwrap_or_else(|| constant("normal", rows)),
            self.channel.unwrap_or_else(|| constant("chat", rows)),
            self.reply_to_id.unwrap_or_else(|| no_text(rows)),
            self.attachments.unwrap_or_else(|| no_attachments(rows)),
            self.delivered_at.unwrap_or_else(|| no_time(rows)),
            Arc::new(Int64Array::from(self.version)),
            constant(run_id, rows),
        ];
        let schema = match self.raw {
            Some(raw) => {
                columns.push(raw);
                schema::canonical_with_raw()
            }
            None => schema::canonical(),
        };
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

/// The input's `raw` column (the records whole, which a source adds once
/// `Source::keep_raw_records` asked for them) when `wanted`; `None` when not wanted.
pub(crate) fn raw_input<'a>(
    data: &'a RecordBatch,
    wanted: bool,
    cx: &TransformContext,
) -> Result<Option<&'a StringArray>> {
    if !wanted {
        return Ok(None);
    }
    data.column_by_name(schema::RAW)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .map(Some)
        .ok_or_else(|| {
            Error::component(
                &cx.name,
                "`raw = true`, but the provider records carry no Utf8 `raw` column (a `select` \
                 between the source and normalize must keep it)",
            )
        })
}

/// Which input rows became output rows (the others were dead-lettered).
pub(crate) struct Kept {
    mask: BooleanArray,
    all: bool,
}

impl Kept {
    pub(crate) fn new(keep: Vec<bool>) -> Self {
        let all = keep.iter().all(|k| *k);
        Kept {
            mask: BooleanArray::from(keep),
            all,
        }
    }

    /// An input column as an output column: shared without a copy unless rows were dropped.
    pub(crate) fn pass(&self, column: &dyn Array) -> Result<ArrayRef> {
        if self.all {
            Ok(arrow::array::make_array(column.to_data()))
        } else {
            Ok(filter(column, &self.mask)?)
        }
    }
}

/// `value` in every row.
pub(crate) fn constant(value: &str, rows: usize) -> ArrayRef {
    // Both buffers at once rather than a value at a time (1 % of the Qlara job).
    let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(value.len(), rows));
    let values = arrow::buffer::Buffer::from_vec(value.repeat(rows).into_bytes());
    Arc::new(StringArray::new(offsets, values, None))
}

/// A text column with no values.
pub(crate) fn no_text(rows: usize) -> ArrayRef {
    arrow::array::new_null_array(&arrow::datatypes::DataType::Utf8, rows)
}

/// `attachments` with an empty list in every row (the column is never null).
pub(crate) fn no_attachments(rows: usize) -> ArrayRef {
    Arc::new(ListArray::new(
        attachment_item_field(),
        OffsetBuffer::new_zeroed(rows),
        arrow::array::new_empty_array(attachment_item_field().data_type()),
        None,
    ))
}

/// Microseconds since the epoch as a UTC timestamp column.
pub(crate) fn utc(micros: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(micros).with_timezone("UTC"))
}

/// Optional microseconds since the epoch as a UTC timestamp column.
pub(crate) fn utc_opt(micros: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(micros).with_timezone("UTC"))
}

/// A UTC timestamp column with no values.
pub(crate) fn no_time(rows: usize) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::new_null(rows).with_timezone("UTC"))
}

/// The UTC date of each timestamp (`sent_date`).
pub(crate) fn utc_dates(micros: &[i64]) -> ArrayRef {
    Arc::new(Date32Array::from_iter_values(
        micros.iter().map(|us| us.div_euclid(86_400_000_000) as i32),
    ))
}

/// `yyyy-MM-dd HH:mm:ss` (or with `T`) at the start of `b` → seconds since the epoch of that
/// wall-clock time read as UTC. The fast path of the time parsers: a fixed layout read digit by
/// digit instead of through a format string.
pub(crate) fn wall_clock_seconds(b: &[u8]) -> Option<i64> {
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b' ' || b[10] == b'T')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |v, &c| {
            c.is_ascii_digit().then(|| v * 10 + (c - b'0') as u32)
        })
    };
    let (year, month, day) = (num(0..4)? as i64, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let seconds = (hour * 3600 + minute * 60 + second) as i64;
    Some(days_from_civil(year, month, day) * 86_400 + seconds)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a valid proleptic Gregorian date (H. Hinnant's `days_from_civil`):
/// arithmetic only, where chrono's date constructor was 1 % of the Qlara job.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let m = month as i64;
    let day_of_year = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod wall_clock_tests {
    use super::*;

    /// The same seconds as chrono for every day of four centuries' worth of years around the
    /// data (leap rules of 1900, 2000, 2100 included), and the same refusals.
    #[test]
    fn wall_clock_seconds_agree_with_chrono() {
        let chrono_seconds = |text: &str| {
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
                .ok()
                .map(|t| t.and_utc().timestamp())
        };
        for year in (1890..=2110).step_by(1) {
            for month in 1..=12 {
                for day in [1, 15, 28, 29, 30, 31] {
                    let text = format!("{year:04}-{month:02}-{day:02} 23:59:58");
                    assert_eq!(
                        wall_clock_seconds(text.as_bytes()),
                        chrono_seconds(&text),
                        "{text}"
                    );
                }
            }
        }
        for bad in [
            "2025-13-01 00:00:00",
            "2025-00-10 00:00:00",
            "2025-01-00 00:00:00",
            "2023-02-29 00:00:00",
            "2025-04-31 00:00:00",
            "2025-01-01 24:00:00",
            "2025-01-01 00:60:00",
            "2025-01-01 00:00:60",
            "2025-01-01 0a:00:00",
            "2025/01/01 00:00:00",
        ] {
            assert_eq!(wall_clock_seconds(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(wall_clock_seconds(b"1970-01-01T00:00:00"), Some(0));
        assert_eq!(
            wall_clock_seconds(b"2000-02-29 12:00:00"),
            Some(951_825_600)
        );
    }

    #[test]
    fn constant_columns_equal_those_built_a_value_at_a_time() {
        for value in ["", "qlara", "message_history"] {
            for rows in [0, 1, 7] {
                let built = StringArray::from_iter_values(std::iter::repeat_n(value, rows));
                let ours = constant(value, rows);
                assert_eq!(ours.as_any().downcast_ref::<StringArray>(), Some(&built));
            }
        }
    }
}
