//! Rows to JSON Lines with arrow-json.

use std::fs::File;

use arrow::datatypes::SchemaRef;
use arrow::json::writer::{LineDelimited, Writer, WriterBuilder};
use arrow::record_batch::RecordBatch;
use chatlake_lake::text::{FileOutput, TextCompression, timestamps_as_utc_offset};
use chatlake_lake::{FileFormat, Filtered, FormatError, FormatWriter};

/// JSON Lines, gzipped or not.
#[derive(Debug, Clone)]
pub struct JsonlFormat {
    compression: TextCompression,
    extension: String,
}

impl JsonlFormat {
    pub fn new(compression: TextCompression) -> Self {
        JsonlFormat {
            compression,
            extension: compression.extension("jsonl"),
        }
    }
}

impl FileFormat for JsonlFormat {
    fn extension(&self) -> &str {
        &self.extension
    }

    fn create(&self, file: File, _schema: SchemaRef) -> Result<Box<dyn FormatWriter>, FormatError> {
        // Explicit nulls: every line has every key, so readers that infer a schema from the
        // first lines see every column.
        let writer = WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, LineDelimited>(FileOutput::new(file, self.compression));
        Ok(Box::new(JsonlWriter(writer)))
    }

    fn filters_rows(&self) -> Result<(), String> {
        Ok(())
    }

    fn filter_file(
        &self,
        input: File,
        key_columns: &[&str],
        goes: &dyn Fn(&[u8]) -> bool,
        output: Option<File>,
    ) -> Result<Filtered, FormatError> {
        crate::filter::filter_lines(input, self.compression, key_columns, goes, output)
    }
}

struct JsonlWriter(Writer<FileOutput, LineDelimited>);

impl FormatWriter for JsonlWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), FormatError> {
        self.0.write(&timestamps_as_utc_offset(batch)?)?;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<File, FormatError> {
        self.0.finish()?;
        Ok(self.0.into_inner().finish()?)
    }
}
