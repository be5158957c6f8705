//! Rows a later run replaces, taken out of the table: each data file of the earlier window that
//! holds some of them is read back and written again without them, as a new file. The caller
//! commits the old file's remove and the new file's add together, so a reader of any table
//! version sees the row once (time travel to an earlier version still shows the old row).

use std::collections::{HashMap, HashSet};

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use bytes::Bytes;
use chatlake_core::removal::{encode_cell, encoded_keys, key_cell};
use deltalake::kernel::Add;
use deltalake::{DeltaTable, Path};
use object_store::{ObjectStoreExt as _, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};
use crate::files::{TableFile, new_data_file_name};

/// The outcome of taking rows out of some files.
#[derive(Debug, Default)]
pub(crate) struct Rewrite {
    /// Files that held some of the rows: to be removed in the commit.
    pub replaced: HashSet<String>,
    /// Their rewritten versions (files left with no row get none).
    pub adds: Vec<Add>,
    pub rows_removed: u64,
}

/// Rewrites every file of `files` that holds a row whose `key_columns` equal a row of `keys`
/// (compared as [`key_cell`] text; a partition column's value comes from the file's partition
/// values). The new files carry the old ones' partition values and tags.
pub(crate) async fn without_rows(
    table: &DeltaTable,
    files: &[TableFile],
    keys: &RecordBatch,
    properties: &WriterProperties,
    shown: &str,
) -> Result<Rewrite> {
    let columns: Vec<String> = keys
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let column_refs: Vec<&str> = columns.iter().map(String::as_str).collect();
    let goes: HashSet<Vec<u8>> = encoded_keys(keys, &column_refs)
        .map_err(|message| Error::Table {
            table: shown.to_string(),
            message,
        })?
        .into_iter()
        .collect();
    let mut out = Rewrite::default();
    if goes.is_empty() {
        return Ok(out);
    }
    let store = table.object_store();
    let object = |source| Error::Object {
        table: shown.to_string(),
        source,
    };
    for file in files {
        let bytes = store
            .get(&file.object_path())
            .await
            .map_err(object)?
            .bytes()
            .await
            .map_err(object)?;
        let Some((kept, removed)) = filter(bytes, &columns, &file.partition_values, &goes)
            .map_err(|message| Error::Table {
                table: shown.to_string(),
                message: format!("{}: {message}", file.path),
            })?
        else {
            continue;
        };
        out.rows_removed += removed;
        out.replaced.insert(file.path.clone());
        if kept.iter().all(|b| b.num_rows() == 0) {
            continue;
        }
        let schema = kept[0].schema();
        let parquet = |source| Error::Parquet {
            table: shown.to_string(),
            file: file.path.clone(),
            source,
        };
        let mut writer =
            ArrowWriter::try_new(Vec::new(), schema, Some(properties.clone())).map_err(parquet)?;
        for batch in &kept {
            writer.write(batch).map_err(parquet)?;
        }
        let encoded = writer.into_inner().map_err(parquet)?;
        let path = file.sibling(&new_data_file_name(properties));
        let size = encoded.len() as i64;
        store
            .put(&Path::from(path.as_str()), PutPayload::from(encoded))
            .await
            .map_err(object)?;
        out.adds.push(Add {
            path,
            partition_values: file.partition_values.clone(),
            size,
            modification_time: chrono::Utc::now().timestamp_millis(),
            data_change: true,
            stats: None,
            tags: file.tags.clone(),
            deletion_vector: None,
            base_row_id: None,
            default_row_commit_version: None,
            clustering_provider: None,
        });
    }
    Ok(out)
}

/// The batches of a Parquet file without the rows whose key is in `goes`, and how many went;
/// `None` if none did.
fn filter(
    bytes: Bytes,
    columns: &[String],
    partition_values: &HashMap<String, Option<String>>,
    goes: &HashSet<Vec<u8>>,
) -> Result<Option<(Vec<RecordBatch>, u64)>, String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| e.to_string())?;
    let mut kept = Vec::new();
    let mut removed = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        let cells: Vec<Cell<'_>> = columns
            .iter()
            .map(|c| match batch.column_by_name(c) {
                Some(array) => Ok(Cell::Column(array.as_ref())),
                None => partition_values
                    .get(c)
                    .map(|v| Cell::Partition(v.as_deref()))
                    .ok_or_else(|| format!("the file has no key column `{c}`")),
            })
            .collect::<Result<_, _>>()?;
        let mut keep = Vec::with_capacity(batch.num_rows());
        let mut key = Vec::new();
        for row in 0..batch.num_rows() {
            key.clear();
            for cell in &cells {
                match cell {
                    Cell::Column(array) => {
                        let text = key_cell(*array, row)?;
                        encode_cell(&mut key, text.as_deref().map(str::as_bytes));
                    }
                    Cell::Partition(value) => encode_cell(&mut key, value.map(str::as_bytes)),
                }
            }
            let goes = goes.contains(&key);
            removed += u64::from(goes);
            keep.push(!goes);
        }
        kept.push(
            filter_record_batch(&batch, &BooleanArray::from(keep)).map_err(|e| e.to_string())?,
        );
    }
    Ok((removed > 0).then_some((kept, removed)))
}

/// Where one key cell of a row comes from.
enum Cell<'a> {
    Column(&'a dyn Array),
    /// A partition column: one value for the whole file.
    Partition(Option<&'a str>),
}
