//! Rows to CSV with arrow-csv, after turning nested columns into JSON text.

use std::fs::File;
use std::sync::Arc;

use arrow::array::{ArrayRef, StringBuilder};
use arrow::csv::writer::{Writer, WriterBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::json::writer::{EncoderOptions, make_encoder};
use arrow::record_batch::RecordBatch;
use chatlake_lake::text::{FileOutput, TextCompression, timestamps_as_utc_offset};
use chatlake_lake::{FileFormat, Filtered, FormatError, FormatWriter};

/// CSV, gzipped or not.
#[derive(Debug, Clone)]
pub struct CsvFormat {
    compression: TextCompression,
    extension: String,
    delimiter: u8,
    header: bool,
}

impl CsvFormat {
    pub fn new(compression: TextCompression, delimiter: u8, header: bool) -> Self {
        CsvFormat {
            compression,
            extension: compression.extension("csv"),
            delimiter,
            header,
        }
    }
}

impl FileFormat for CsvFormat {
    fn extension(&self) -> &str {
        &self.extension
    }

    fn create(&self, file: File, _schema: SchemaRef) -> Result<Box<dyn FormatWriter>, FormatError> {
        let writer = WriterBuilder::new()
            .with_delimiter(self.delimiter)
            .with_header(self.header)
            .build(FileOutput::new(file, self.compression));
        Ok(Box::new(CsvWriter(writer)))
    }

    fn filters_rows(&self) -> Result<(), String> {
        if self.header {
            Ok(())
        } else {
            Err(
                "its files have no header row (`header = false`), so the key columns cannot be \
                 found in them; set `header = true`"
                    .into(),
            )
        }
    }

    fn filter_file(
        &self,
        input: File,
        key_columns: &[&str],
        goes: &dyn Fn(&[u8]) -> bool,
        output: Option<File>,
    ) -> Result<Filtered, FormatError> {
        self.filters_rows()?;
        crate::filter::filter_records(
            input,
            self.compression,
            self.delimiter,
            key_columns,
            goes,
            output,
        )
    }
}

struct CsvWriter(Writer<FileOutput>);

impl FormatWriter for CsvWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), FormatError> {
        let batch = nested_as_json(&timestamps_as_utc_offset(batch)?)?;
        self.0.write(&batch)?;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<File, FormatError> {
        // arrow-csv flushes into the `FileOutput` after every batch.
        Ok(self.0.into_inner().finish()?)
    }
}

/// Replaces every nested column (List, Struct, Map, ...) with a Utf8 column holding each value
/// as compact JSON: a list of structs becomes `[{"file_id":"f1","file_size":3,...}]`, an empty
/// list `[]`, a null stays null. Nulls inside values are written as `null`.
pub fn nested_as_json(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    if !schema.fields().iter().any(|f| f.data_type().is_nested()) {
        return Ok(batch.clone());
    }
    let options = EncoderOptions::default().with_explicit_nulls(true);
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if !field.data_type().is_nested() {
            fields.push(field.clone());
            columns.push(column.clone());
            continue;
        }
        let mut encoder = make_encoder(field, column.as_ref(), &options)?;
        let mut text = StringBuilder::with_capacity(column.len(), column.len() * 64);
        let mut buf = Vec::with_capacity(256);
        for row in 0..column.len() {
            if encoder.is_null(row) {
                text.append_null();
                continue;
            }
            buf.clear();
            encoder.encode(row, &mut buf);
            let json = std::str::from_utf8(&buf)
                .map_err(|e| ArrowError::JsonError(format!("column {}: {e}", field.name())))?;
            text.append_value(json);
        }
        fields.push(Arc::new(Field::new(
            field.name(),
            DataType::Utf8,
            field.is_nullable(),
        )));
        columns.push(Arc::new(text.finish()));
    }
    RecordBatch::try_new(
        Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
        columns,
    )
}
