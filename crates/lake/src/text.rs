//! What the text formats (CSV, JSON Lines) share: optional gzip on the way to the file and back,
//! and timestamps written as RFC 3339 ending in `Z`.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Compression of a text file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TextCompression {
    /// Plain text.
    #[default]
    None,
    /// gzip (level 6); the extension gets `.gz`.
    Gzip,
}

impl TextCompression {
    /// The data extension for files of `base` (`csv`) written with this compression (`csv.gz`).
    pub fn extension(self, base: &str) -> String {
        match self {
            TextCompression::None => base.to_string(),
            TextCompression::Gzip => format!("{base}.gz"),
        }
    }
}

/// A buffered file, gzipped or not, that hands the file back once every byte is written.
pub struct FileOutput(Output);

enum Output {
    Plain(BufWriter<File>),
    // Boxed: the encoder's state is large, and one `FileOutput` exists per open file.
    Gzip(Box<GzEncoder<BufWriter<File>>>),
}

impl FileOutput {
    pub fn new(file: File, compression: TextCompression) -> Self {
        let buffered = BufWriter::with_capacity(256 * 1024, file);
        FileOutput(match compression {
            TextCompression::None => Output::Plain(buffered),
            TextCompression::Gzip => {
                Output::Gzip(Box::new(GzEncoder::new(buffered, Compression::default())))
            }
        })
    }

    /// Writes the gzip trailer, flushes the buffer and returns the file (not yet fsynced).
    pub fn finish(self) -> io::Result<File> {
        let buffered = match self.0 {
            Output::Plain(w) => w,
            Output::Gzip(gz) => (*gz).finish()?,
        };
        buffered.into_inner().map_err(|e| e.into_error())
    }
}

impl Write for FileOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.0 {
            Output::Plain(w) => w.write(buf),
            Output::Gzip(w) => w.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut self.0 {
            Output::Plain(w) => w.write_all(buf),
            Output::Gzip(w) => w.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.0 {
            Output::Plain(w) => w.flush(),
            Output::Gzip(w) => w.flush(),
        }
    }
}

/// A buffered reader of a file [`FileOutput`] wrote, gunzipping it if it is gzipped.
pub struct FileInput(Input);

enum Input {
    Plain(BufReader<File>),
    // gzip members one after another read as one stream, as `gzip -d` does.
    Gzip(Box<BufReader<MultiGzDecoder<BufReader<File>>>>),
}

impl FileInput {
    pub fn new(file: File, compression: TextCompression) -> Self {
        const CAPACITY: usize = 256 * 1024;
        FileInput(match compression {
            TextCompression::None => Input::Plain(BufReader::with_capacity(CAPACITY, file)),
            TextCompression::Gzip => Input::Gzip(Box::new(BufReader::with_capacity(
                CAPACITY,
                MultiGzDecoder::new(BufReader::with_capacity(CAPACITY, file)),
            ))),
        })
    }
}

impl Read for FileInput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.0 {
            Input::Plain(r) => r.read(buf),
            Input::Gzip(r) => r.read(buf),
        }
    }
}

impl BufRead for FileInput {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match &mut self.0 {
            Input::Plain(r) => r.fill_buf(),
            Input::Gzip(r) => r.fill_buf(),
        }
    }

    fn consume(&mut self, amount: usize) {
        match &mut self.0 {
            Input::Plain(r) => r.consume(amount),
            Input::Gzip(r) => r.consume(amount),
        }
    }
}

/// Relabels timestamps in the `UTC` zone as `+00:00`, at any depth, without touching values.
///
/// Arrow's text writers print a zoned timestamp as RFC 3339 ending in `Z` when its offset is
/// zero (`2025-01-01T03:04:05Z`, with `.123`, `.123456` fractions only when not zero), but they
/// parse the zone name first, and without arrow's `chrono-tz` feature only offsets parse: `UTC`
/// is refused. `+00:00` is the same instant and prints the same.
pub fn timestamps_as_utc_offset(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    if !schema
        .fields()
        .iter()
        .any(|f| retag(f.data_type()).is_some())
    {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        match retag(field.data_type()) {
            Some(data_type) => {
                columns.push(arrow::compute::cast(column, &data_type)?);
                fields.push(Arc::new(field.as_ref().clone().with_data_type(data_type)));
            }
            None => {
                columns.push(column.clone());
                fields.push(field.clone());
            }
        }
    }
    let schema = Schema::new_with_metadata(fields, schema.metadata().clone());
    RecordBatch::try_new(Arc::new(schema), columns)
}

fn is_utc(tz: &str) -> bool {
    ["UTC", "Etc/UTC", "Z", "GMT", "Etc/GMT"]
        .iter()
        .any(|name| tz.eq_ignore_ascii_case(name))
}

/// The type with UTC timestamps relabelled, or `None` if nothing changes.
fn retag(data_type: &DataType) -> Option<DataType> {
    let field = |f: &FieldRef| -> Option<FieldRef> {
        retag(f.data_type()).map(|t| Arc::new(f.as_ref().clone().with_data_type(t)))
    };
    match data_type {
        DataType::Timestamp(unit, Some(tz)) if is_utc(tz) => {
            Some(DataType::Timestamp(*unit, Some("+00:00".into())))
        }
        DataType::List(f) => field(f).map(DataType::List),
        DataType::LargeList(f) => field(f).map(DataType::LargeList),
        DataType::Struct(fields) => {
            if !fields.iter().any(|f| retag(f.data_type()).is_some()) {
                return None;
            }
            let fields: Vec<Field> = fields
                .iter()
                .map(|f| {
                    let t = retag(f.data_type()).unwrap_or_else(|| f.data_type().clone());
                    f.as_ref().clone().with_data_type(t)
                })
                .collect();
            Some(DataType::Struct(Fields::from(fields)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, ListArray, StructArray, TimestampMicrosecondArray};
    use arrow::datatypes::{Int32Type, TimeUnit};
    use arrow::util::display::{ArrayFormatter, FormatOptions};

    fn ts(values: Vec<i64>) -> TimestampMicrosecondArray {
        TimestampMicrosecondArray::from(values).with_timezone("UTC")
    }

    #[test]
    fn utc_timestamps_print_as_rfc3339_with_z() {
        let column = Arc::new(ts(vec![
            1_735_700_645_000_000, // 2025-01-01T03:04:05Z
            1_735_700_645_120_000,
            1_735_700_645_123_456,
        ])) as ArrayRef;
        let batch = RecordBatch::try_from_iter([("t", column)]).unwrap();
        let fixed = timestamps_as_utc_offset(&batch).unwrap();
        assert_eq!(
            fixed.schema().field(0).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
        );
        let f = ArrayFormatter::try_new(fixed.column(0), &FormatOptions::default()).unwrap();
        let got: Vec<String> = (0..3).map(|i| f.value(i).to_string()).collect();
        assert_eq!(
            got,
            [
                "2025-01-01T03:04:05Z",
                "2025-01-01T03:04:05.120Z",
                "2025-01-01T03:04:05.123456Z"
            ]
        );
    }

    #[test]
    fn relabels_nested_timestamps_and_leaves_other_batches_alone() {
        let inner = Arc::new(ts(vec![0, 1])) as ArrayRef;
        let item = Field::new("at", inner.data_type().clone(), true);
        let structs = StructArray::from(vec![(Arc::new(item), inner)]);
        let list = ListArray::new(
            Arc::new(Field::new("item", structs.data_type().clone(), true)),
            arrow::buffer::OffsetBuffer::from_lengths([2]),
            Arc::new(structs),
            None,
        );
        let batch = RecordBatch::try_from_iter([("l", Arc::new(list) as ArrayRef)]).unwrap();
        let fixed = timestamps_as_utc_offset(&batch).unwrap();
        let DataType::List(item) = fixed.schema().field(0).data_type().clone() else {
            panic!("a list")
        };
        let DataType::Struct(fields) = item.data_type() else {
            panic!("a struct")
        };
        assert_eq!(
            fields[0].data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
        );
        assert_eq!(fixed.column(0).as_list::<i32>().value(0).len(), 2);

        let plain = RecordBatch::try_from_iter([(
            "n",
            Arc::new(arrow::array::PrimitiveArray::<Int32Type>::from(vec![1])) as ArrayRef,
        )])
        .unwrap();
        assert_eq!(timestamps_as_utc_offset(&plain).unwrap(), plain);
    }

    #[test]
    fn gzip_output_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gz");
        let mut out = FileOutput::new(File::create(&path).unwrap(), TextCompression::Gzip);
        out.write_all("日本語\n".as_bytes()).unwrap();
        out.finish().unwrap().sync_all().unwrap();
        let mut text = String::new();
        FileInput::new(File::open(&path).unwrap(), TextCompression::Gzip)
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "日本語\n");
        assert_eq!(TextCompression::Gzip.extension("csv"), "csv.gz");
        assert_eq!(TextCompression::None.extension("jsonl"), "jsonl");
    }
}
