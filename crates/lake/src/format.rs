//! The small traits a file sink implements: how to open a writer, the writer itself, and how to
//! copy a committed file without some of its rows.

use std::fs::File;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

/// Whatever a format writer fails with (arrow, parquet, I/O errors all convert with `?`);
/// [`crate::FileSink`] adds the file's path to the message.
pub type FormatError = Box<dyn std::error::Error + Send + Sync>;

/// A file format: its extension and how to start a file.
pub trait FileFormat: Send + Sync + 'static {
    /// The data extension without the leading dot: `parquet`, `csv`, `csv.gz`, `jsonl.gz`.
    /// Temporary files end in `.<extension>.tmp`, so a glob on the extension never sees them.
    fn extension(&self) -> &str;

    /// Starts writing one file. `schema` is the schema of every batch the writer will get:
    /// the input's columns without the partition columns.
    fn create(&self, file: File, schema: SchemaRef) -> Result<Box<dyn FormatWriter>, FormatError>;

    /// Why [`FileFormat::filter_file`] cannot work on this format's files, if it cannot (a CSV
    /// file without a header row has no column names to find the keys by). Default: it cannot,
    /// so a format that does not implement `filter_file` refuses pipelines that need it.
    fn filters_rows(&self) -> Result<(), String> {
        Err(format!(
            "its {} files cannot be rewritten without some rows",
            self.extension()
        ))
    }

    /// Reads `input`, a file this format wrote, and asks `goes` about every row: it gets the
    /// row's `key_columns` encoded with [`chatlake_core::removal::encode_cell`] (in that order,
    /// each cell as [`chatlake_core::removal::key_cell`] text or null) and answers true if the
    /// row goes. `goes` is pure: it may be asked about a row once per call.
    ///
    /// Without `output` it only counts, reading as little as it can. With `output` it also
    /// writes the rows it keeps there, as [`FileFormat::create`] would have written them (same
    /// columns, compression and options; text formats copy kept rows byte for byte), and hands
    /// the file back finished but not fsynced. [`crate::FileSink`] counts first and writes
    /// only when some but not all rows go, so an untouched file stays untouched.
    ///
    /// A key column missing from the file is an error ([`MissingKeyColumn`]).
    fn filter_file(
        &self,
        input: File,
        key_columns: &[&str],
        goes: &dyn Fn(&[u8]) -> bool,
        output: Option<File>,
    ) -> Result<Filtered, FormatError> {
        let _ = (input, key_columns, goes, output);
        Err(self
            .filters_rows()
            .err()
            .unwrap_or_else(|| "filter_file is not implemented".into())
            .into())
    }
}

/// What [`FileFormat::filter_file`] counted, and the file it wrote.
#[derive(Debug)]
pub struct Filtered {
    /// Rows it keeps.
    pub kept: u64,
    /// Rows `goes` picked.
    pub dropped: u64,
    /// The `output` it was given, holding the kept rows, finished but not fsynced.
    pub output: Option<File>,
}

/// A key column of a removal that a file does not have.
#[derive(Debug, thiserror::Error)]
#[error("the key column `{column}` is not in the file (its columns: {available})")]
pub struct MissingKeyColumn {
    pub column: String,
    /// The file's columns, comma-separated.
    pub available: String,
}

/// Writes the rows of one file.
pub trait FormatWriter: Send {
    /// Writes one batch (never empty).
    fn write(&mut self, batch: &RecordBatch) -> Result<(), FormatError>;

    /// Bytes this writer holds in memory that are not yet in the file (a Parquet writer's
    /// unfinished row group). The sink keeps the sum over its open files under a budget.
    fn buffered_bytes(&self) -> usize {
        0
    }

    /// Writes what is buffered to the file (a Parquet writer ends its row group early). Called
    /// when open files together hold more than the sink's memory budget.
    fn flush_buffer(&mut self) -> Result<(), FormatError> {
        Ok(())
    }

    /// Writes whatever is buffered and any footer, and hands the file back; the caller fsyncs
    /// it and renames it into place.
    fn finish(self: Box<Self>) -> Result<File, FormatError>;
}
