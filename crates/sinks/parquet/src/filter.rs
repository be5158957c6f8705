//! Taking rows out of a Parquet file ([`chatlake_lake::FileFormat::filter_file`]): counting
//! decodes only the key columns; writing decodes every column with the Arrow reader (the Arrow
//! schema is in the footer, so the types come back exactly) and encodes the rows kept with the
//! sink's own writer and properties, so the file is what the sink writes for those rows.

use std::fs::File;

use arrow::array::{Array, ArrayRef, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::record_batch::RecordBatch;
use chatlake_core::removal::{encode_cell, key_cell};
use chatlake_lake::{FileFormat, Filtered, FormatError, MissingKeyColumn};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::ParquetFormat;

/// Rows decoded at a time.
const BATCH_ROWS: usize = 8192;

/// Counts the rows of `input` whose key `goes` picks, and writes the others to `output`
/// (when given).
pub(crate) fn filter_rows(
    format: &ParquetFormat,
    input: File,
    key_columns: &[&str],
    goes: &dyn Fn(&[u8]) -> bool,
    output: Option<File>,
) -> Result<Filtered, FormatError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(input)?.with_batch_size(BATCH_ROWS);
    let schema = builder.schema().clone();
    let indices = key_columns
        .iter()
        .map(|column| {
            schema.index_of(column).map_err(|_| MissingKeyColumn {
                column: column.to_string(),
                available: schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        })
        .collect::<Result<Vec<usize>, _>>()?;
    let (mut kept, mut dropped) = (0, 0);
    let Some(output) = output else {
        if key_columns.is_empty() {
            // Every row has the same (empty) key.
            let rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
            return Ok(if goes(&[]) {
                Filtered {
                    kept: 0,
                    dropped: rows,
                    output: None,
                }
            } else {
                Filtered {
                    kept: rows,
                    dropped: 0,
                    output: None,
                }
            });
        }
        let projection = ProjectionMask::roots(builder.parquet_schema(), indices.iter().copied());
        for batch in builder.with_projection(projection).build()? {
            let keep = keep_mask(&batch?, key_columns, goes)?;
            kept += keep.true_count() as u64;
            dropped += keep.false_count() as u64;
        }
        return Ok(Filtered {
            kept,
            dropped,
            output: None,
        });
    };
    let mut writer = format.create(output, schema)?;
    for batch in builder.build()? {
        let batch = batch?;
        let keep = keep_mask(&batch, key_columns, goes)?;
        kept += keep.true_count() as u64;
        dropped += keep.false_count() as u64;
        let rows = filter_record_batch(&batch, &keep)?;
        if rows.num_rows() > 0 {
            writer.write(&rows)?;
        }
    }
    Ok(Filtered {
        kept,
        dropped,
        output: Some(writer.finish()?),
    })
}

/// True for each row of `batch` that stays.
fn keep_mask(
    batch: &RecordBatch,
    key_columns: &[&str],
    goes: &dyn Fn(&[u8]) -> bool,
) -> Result<BooleanArray, FormatError> {
    let columns: Vec<(&str, &ArrayRef)> = key_columns
        .iter()
        .map(|c| {
            batch
                .column_by_name(c)
                .map(|column| (*c, column))
                .ok_or_else(|| format!("the key column `{c}` was not decoded"))
        })
        .collect::<Result<_, _>>()?;
    let mut keep = Vec::with_capacity(batch.num_rows());
    let mut key = Vec::new();
    for row in 0..batch.num_rows() {
        key.clear();
        for (name, column) in &columns {
            let cell = key_cell(column.as_ref() as &dyn Array, row)
                .map_err(|e| format!("the key column `{name}`: {e}"))?;
            encode_cell(&mut key, cell.as_deref().map(str::as_bytes));
        }
        keep.push(!goes(&key));
    }
    Ok(BooleanArray::from(keep))
}
