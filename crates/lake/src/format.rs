//! The two small traits a file sink implements: how to open a writer, and the writer itself.

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
