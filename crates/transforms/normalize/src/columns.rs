//! Column builders every provider mapping needs: the rows kept after dead-lettering, constant
//! and empty columns, UTC timestamps and their dates.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, ListArray, StringArray, TimestampMicrosecondArray,
};
use arrow::buffer::OffsetBuffer;
use arrow::compute::filter;
use chatlake_core::Result;
use chatlake_core::schema::attachment_item_field;

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
    Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
        value, rows,
    )))
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
    let local = chrono::NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?
        .and_hms_opt(num(11..13)?, num(14..16)?, num(17..19)?)?;
    Some(local.and_utc().timestamp())
}
