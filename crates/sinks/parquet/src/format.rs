//! Rows to Parquet with the parquet crate's Arrow writer.

use std::fs::File;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use chatlake_lake::{FileFormat, FormatError, FormatWriter};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

/// Parquet with the given writer properties (compression, row-group size).
#[derive(Debug, Clone)]
pub struct ParquetFormat {
    properties: WriterProperties,
}

impl ParquetFormat {
    pub fn new(properties: WriterProperties) -> Self {
        ParquetFormat { properties }
    }
}

impl FileFormat for ParquetFormat {
    fn extension(&self) -> &str {
        "parquet"
    }

    fn create(&self, file: File, schema: SchemaRef) -> Result<Box<dyn FormatWriter>, FormatError> {
        let writer = ArrowWriter::try_new(file, schema, Some(self.properties.clone()))?;
        Ok(Box::new(ParquetWriter(writer)))
    }
}

struct ParquetWriter(ArrowWriter<File>);

impl FormatWriter for ParquetWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), FormatError> {
        self.0.write(batch)?;
        Ok(())
    }

    fn buffered_bytes(&self) -> usize {
        self.0.in_progress_size()
    }

    fn flush_buffer(&mut self) -> Result<(), FormatError> {
        self.0.flush()?;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<File, FormatError> {
        // Flushes the last row group and writes the footer.
        Ok(self.0.into_inner()?)
    }
}
