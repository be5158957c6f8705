//! Rows to Parquet, encoded on the encoder's threads while the sink reads on.
//!
//! Encoding (dictionary, levels, zstd) is most of a sink's CPU, and each column chunk is encoded
//! on its own: a batch goes to the encoder's threads (one per core, shared by every open file,
//! see [`encoder`]), where two of them take its columns from one queue, biggest first; the sink
//! goes on with the next batch meanwhile. A row group's writers are closed on two lanes balanced
//! by what they hold. The file layout is the one `ArrowWriter` writes: row groups of
//! `max_row_group_row_count` rows, the Arrow schema in the footer.

use std::fs::File;

use arrow::array::Array;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use chatlake_lake::{FileFormat, Filtered, FormatError, FormatWriter};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{
    ArrowColumnWriter, ArrowLeafColumn, ArrowRowGroupWriterFactory, compute_leaves,
};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

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
        Ok(Box::new(FirstBatch::Waiting {
            file,
            schema,
            properties: self.properties.clone(),
        }))
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
        crate::filter::filter_rows(self, input, key_columns, goes, output)
    }
}

/// A file's writer before and after its first batch: the encodings are chosen by looking at it
/// (see [`without_useless_dictionaries`]).
enum FirstBatch {
    Waiting {
        file: File,
        schema: SchemaRef,
        properties: WriterProperties,
    },
    Writing(ParquetWriter),
    /// Only while switching.
    Gone,
}

impl FirstBatch {
    /// The writer, opened with properties adapted to `first` (or as configured without it).
    fn writer(&mut self, first: Option<&RecordBatch>) -> Result<&mut ParquetWriter, FormatError> {
        if let FirstBatch::Waiting { .. } = self {
            let FirstBatch::Waiting {
                file,
                schema,
                properties,
            } = std::mem::replace(self, FirstBatch::Gone)
            else {
                unreachable!("matched above")
            };
            let properties = match first {
                Some(batch) => without_useless_dictionaries(properties, &schema, batch),
                None => properties,
            };
            let properties = delta_encoded_numbers(properties, &schema);
            *self = FirstBatch::Writing(ParquetWriter::open(file, schema, properties)?);
        }
        match self {
            FirstBatch::Writing(w) => Ok(w),
            _ => Err("the Parquet writer failed to open earlier".into()),
        }
    }
}

impl FormatWriter for FirstBatch {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), FormatError> {
        self.writer(Some(batch))?.write(batch)
    }

    fn buffered_bytes(&self) -> usize {
        match self {
            FirstBatch::Writing(w) => w.buffered_bytes(),
            _ => 0,
        }
    }

    fn flush_buffer(&mut self) -> Result<(), FormatError> {
        match self {
            FirstBatch::Writing(w) => w.flush_buffer(),
            _ => Ok(()),
        }
    }

    fn finish(mut self: Box<Self>) -> Result<File, FormatError> {
        self.writer(None)?;
        match *self {
            FirstBatch::Writing(w) => Box::new(w).finish(),
            _ => unreachable!("opened above"),
        }
    }
}

/// Rows sampled per column to judge whether a dictionary pays.
const DICTIONARY_SAMPLE: usize = 1024;

/// The writer properties for a file starting with `first`: string columns whose first rows
/// are nearly all distinct (≥ 90 % of up to [`DICTIONARY_SAMPLE`]: phone numbers, ids) are
/// written without a dictionary. A dictionary pays only when values repeat; for such a column
/// it grows with the file (Parquet gives up on it only past 1 MiB per row group), is as large
/// as the values, and costs a hash and a compare per value: Qlara's `recipient` took 6 % of its
/// job that way. Columns the configuration already writes plain, and small first batches, are
/// left as configured.
fn without_useless_dictionaries(
    properties: WriterProperties,
    schema: &SchemaRef,
    first: &RecordBatch,
) -> WriterProperties {
    use arrow::array::AsArray;
    use arrow::datatypes::DataType;
    use parquet::schema::types::ColumnPath;
    let mut plain = Vec::new();
    for (field, column) in schema.fields().iter().zip(first.columns()) {
        let path = ColumnPath::from(field.name().as_str());
        let n = column.len().min(DICTIONARY_SAMPLE);
        if n < DICTIONARY_SAMPLE / 4 || !properties.dictionary_enabled(&path) {
            continue;
        }
        let values: Box<dyn Iterator<Item = Option<&[u8]>>> = match field.data_type() {
            DataType::Utf8 => Box::new(
                column
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.map(str::as_bytes)),
            ),
            DataType::LargeUtf8 => Box::new(
                column
                    .as_string::<i64>()
                    .iter()
                    .map(|v| v.map(str::as_bytes)),
            ),
            _ => continue,
        };
        let mut seen = std::collections::HashSet::with_capacity(n);
        for v in values.take(n).flatten() {
            seen.insert(xxhash_rust::xxh3::xxh3_64(v));
        }
        if seen.len() * 10 >= n * 9 {
            plain.push(path);
        }
    }
    if plain.is_empty() {
        return properties;
    }
    let mut builder = properties.into_builder();
    for path in plain {
        builder = builder.set_column_dictionary_enabled(path, false);
    }
    builder.build()
}

/// Integer and time columns written without a dictionary are written as differences between
/// neighbours, bit-packed (`DELTA_BINARY_PACKED`, which every Parquet reader we test with reads)
/// rather than 8 bytes a value: times of messages sent in order differ little. On the Qlara
/// job its files came out 16 % smaller (`sent_at` 4× smaller) and the job ran 2 % faster, as
/// zstd had less to compress.
fn delta_encoded_numbers(properties: WriterProperties, schema: &SchemaRef) -> WriterProperties {
    use arrow::datatypes::DataType;
    use parquet::basic::Encoding;
    use parquet::schema::types::ColumnPath;
    let delta: Vec<ColumnPath> = schema
        .fields()
        .iter()
        .filter(|field| {
            let t = field.data_type();
            t.is_integer()
                || matches!(
                    t,
                    DataType::Date32
                        | DataType::Date64
                        | DataType::Time32(_)
                        | DataType::Time64(_)
                        | DataType::Timestamp(_, _)
                )
        })
        .map(|field| ColumnPath::from(field.name().as_str()))
        .filter(|path| !properties.dictionary_enabled(path))
        .collect();
    if delta.is_empty() {
        return properties;
    }
    let mut builder = properties.into_builder();
    for path in delta {
        builder = builder.set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
    }
    builder.build()
}

struct ParquetWriter {
    file: SerializedFileWriter<File>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    max_rows: usize,
    /// The row group being encoded, while none of its batches is on the encoder's threads.
    group: Option<RowGroup>,
    /// A batch being encoded on the encoder's threads; the row group comes back with the result.
    in_flight: Option<std::sync::mpsc::Receiver<(RowGroup, Result<(), ParquetError>)>>,
    /// Rows of the current row group, the batch in flight included.
    group_rows: usize,
    /// What the row group's writers held when it last came back.
    buffered: usize,
    groups_written: usize,
}

struct RowGroup {
    columns: Vec<ArrowColumnWriter>,
    rows: usize,
}

impl ParquetWriter {
    fn open(
        file: File,
        schema: SchemaRef,
        properties: WriterProperties,
    ) -> Result<Self, FormatError> {
        let max_rows = properties
            .max_row_group_row_count()
            .unwrap_or(usize::MAX)
            .max(1);
        // ArrowWriter converts the schema and stores it in the footer; we take over from there.
        let (file, factory) = ArrowWriter::try_new(file, schema.clone(), Some(properties))?
            .into_serialized_writer()?;
        Ok(ParquetWriter {
            file,
            factory,
            schema,
            max_rows,
            group: None,
            in_flight: None,
            group_rows: 0,
            buffered: 0,
            groups_written: 0,
        })
    }

    /// Waits for the batch in flight, if any, and takes its row group back.
    fn settle(&mut self) -> Result<(), FormatError> {
        if let Some(in_flight) = self.in_flight.take() {
            let (group, result) = in_flight
                .recv()
                .map_err(|_| FormatError::from("the encoding thread stopped"))?;
            self.buffered = group
                .columns
                .iter()
                .map(ArrowColumnWriter::memory_size)
                .sum();
            self.group = Some(group);
            result?;
        }
        Ok(())
    }

    /// Encodes `batch` (which fits in the current row group) into the group's column writers:
    /// hands it to the encoder's threads and returns, so that the sink reads and splits the next
    /// batch meanwhile. The next batch of this file waits for this one (a column's pages are in
    /// order); batches of other files do not.
    fn encode(&mut self, batch: &RecordBatch) -> Result<(), FormatError> {
        self.settle()?;
        let mut group = match self.group.take() {
            Some(group) => group,
            None => RowGroup {
                columns: self.factory.create_column_writers(self.groups_written)?,
                rows: 0,
            },
        };
        // Leaves in file order, each with the size of the Arrow column it comes from.
        let mut leaves: Vec<(ArrowLeafColumn, usize)> = Vec::with_capacity(group.columns.len());
        for (field, array) in self.schema.fields().iter().zip(batch.columns()) {
            let size = array.get_array_memory_size();
            let parts = compute_leaves(field, array)?;
            let share = size / parts.len().max(1);
            leaves.extend(parts.into_iter().map(|leaf| (leaf, share)));
        }
        let rows = batch.num_rows();
        self.group_rows += rows;
        match encoder() {
            Some(encoder) => {
                let (done, in_flight) = std::sync::mpsc::sync_channel(1);
                encoder.spawn(move || {
                    let result = encode_columns(&mut group.columns, &leaves);
                    group.rows += rows;
                    // Nobody waits if the file was given up meanwhile.
                    let _ = done.send((group, result));
                });
                self.in_flight = Some(in_flight);
            }
            None => {
                let result = encode_columns(&mut group.columns, &leaves);
                group.rows += rows;
                self.group = Some(group);
                result?;
            }
        }
        Ok(())
    }

    /// Finishes the current row group (its last pages are compressed on two threads too) and
    /// appends it to the file.
    fn close_group(&mut self) -> Result<(), FormatError> {
        self.settle()?;
        self.group_rows = 0;
        self.buffered = 0;
        let Some(group) = self.group.take() else {
            return Ok(());
        };
        // What is left to compress is about what each writer holds.
        let sizes: Vec<usize> = group
            .columns
            .iter()
            .map(ArrowColumnWriter::memory_size)
            .collect();
        let lanes = split_in_two(&sizes);
        let mut writers = Vec::new();
        let mut second = Vec::new();
        for (i, (writer, lane)) in group.columns.into_iter().zip(lanes).enumerate() {
            if lane {
                second.push((i, writer));
            } else {
                writers.push((i, writer));
            }
        }
        let close = |ws: Vec<(usize, ArrowColumnWriter)>| {
            ws.into_iter()
                .map(|(i, w)| w.close().map(|chunk| (i, chunk)))
                .collect::<Result<Vec<_>, _>>()
        };
        let (here, there) = match encoder() {
            Some(encoder) => {
                let mut there = Ok(Vec::new());
                let here = encoder.in_place_scope(|scope| {
                    scope.spawn(|_| there = close(second));
                    close(writers)
                });
                (here, there)
            }
            None => (close(writers), close(second)),
        };
        let (mut chunks, rest) = (here?, there?);
        // Column chunks go into the row group in schema order.
        chunks.extend(rest);
        chunks.sort_unstable_by_key(|(i, _)| *i);
        let chunks = chunks.into_iter().map(|(_, chunk)| chunk);
        let mut row_group = self.file.next_row_group()?;
        for chunk in chunks {
            chunk.append_to_row_group(&mut row_group)?;
        }
        row_group.close()?;
        self.groups_written += 1;
        Ok(())
    }
}

/// Encodes a batch's columns into `columns` on two threads: they take columns from one queue,
/// biggest first, so a column that is slow for its size (a dictionary to build) does not leave
/// the other thread idle. Runs on the encoder's threads (see [`encoder`]).
fn encode_columns(
    columns: &mut [ArrowColumnWriter],
    leaves: &[(ArrowLeafColumn, usize)],
) -> Result<(), ParquetError> {
    let mut work: Vec<(usize, &mut ArrowColumnWriter, &ArrowLeafColumn)> = columns
        .iter_mut()
        .zip(leaves)
        .map(|(writer, (leaf, size))| (*size, writer, leaf))
        .collect();
    work.sort_by_key(|(size, _, _)| std::cmp::Reverse(*size));
    let queue: Vec<std::sync::Mutex<Option<(&mut ArrowColumnWriter, &ArrowLeafColumn)>>> = work
        .into_iter()
        .map(|(_, writer, leaf)| std::sync::Mutex::new(Some((writer, leaf))))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let drain = || -> Result<(), ParquetError> {
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(slot) = queue.get(i) else {
                return Ok(());
            };
            let taken = slot.lock().expect("not poisoned").take();
            if let Some((writer, leaf)) = taken {
                writer.write(leaf)?;
            }
        }
    };
    let mut there = Ok(());
    let here = rayon::scope(|scope| {
        if queue.len() > 1 {
            scope.spawn(|_| there = drain());
        }
        drain()
    });
    here.and(there)
}

/// The encoder's threads, one per core, shared by every open file and started once. The sink
/// hands each batch to them and goes on (reading and splitting the next batch is the sink's
/// share): with the sink's own thread encoding half of every batch, it was the thread the
/// second phase of `keep = "latest"` waited for. A thread started per batch, as before that,
/// also cost a stack mapped and unmapped each time under the memory-map lock that the other
/// threads' page faults wait for. Without them (no thread could be started) everything is
/// encoded on the calling thread.
fn encoder() -> Option<&'static rayon::ThreadPool> {
    static ENCODER: std::sync::LazyLock<Option<rayon::ThreadPool>> =
        std::sync::LazyLock::new(|| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(chatlake_core::runtime::cores())
                .thread_name(|i| format!("chatlake-parquet-{i}"))
                // A job that panics drops its result channel: the file's writer reports "the
                // encoding thread stopped" and its window fails, instead of rayon aborting the
                // process.
                .panic_handler(|_| {})
                .build()
                .ok()
        });
    ENCODER.as_ref()
}

/// Which lane each column goes to (false: this thread, true: the other), by size: the largest
/// first, each to the lighter lane.
fn split_in_two(sizes: &[usize]) -> Vec<bool> {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|i| std::cmp::Reverse(sizes[*i]));
    let mut lane = vec![false; sizes.len()];
    let (mut here, mut there) = (0usize, 0usize);
    for i in order {
        if there < here {
            lane[i] = true;
            there += sizes[i];
        } else {
            here += sizes[i];
        }
    }
    lane
}

impl FormatWriter for ParquetWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), FormatError> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let room = self.max_rows - self.group_rows;
            let take = room.min(batch.num_rows() - offset);
            self.encode(&batch.slice(offset, take))?;
            offset += take;
            if self.group_rows >= self.max_rows {
                self.close_group()?;
            }
        }
        Ok(())
    }

    fn buffered_bytes(&self) -> usize {
        match &self.group {
            Some(group) => group
                .columns
                .iter()
                .map(ArrowColumnWriter::memory_size)
                .sum(),
            // A batch in flight: what the writers held before it.
            None => self.buffered,
        }
    }

    fn flush_buffer(&mut self) -> Result<(), FormatError> {
        self.close_group()
    }

    fn finish(mut self: Box<Self>) -> Result<File, FormatError> {
        self.close_group()?;
        // Writes the footer.
        Ok(self.file.into_inner()?)
    }
}

#[cfg(test)]
mod lanes {
    use super::*;

    #[test]
    fn columns_are_split_by_size() {
        // 100 | 60 + 50 → 100 + 10 | 110
        assert_eq!(
            split_in_two(&[100, 60, 50, 10]),
            vec![false, true, true, false]
        );
        assert_eq!(split_in_two(&[]), Vec::<bool>::new());
    }
}

#[cfg(test)]
mod dictionaries {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, StringArray};
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::schema::types::ColumnPath;

    use super::*;

    fn batch(rows: usize) -> RecordBatch {
        let unique: ArrayRef = Arc::new(StringArray::from_iter_values(
            (0..rows).map(|i| format!("+8190{i:08}")),
        ));
        let repeated: ArrayRef = Arc::new(StringArray::from_iter_values(
            (0..rows).map(|i| format!("user{}", i % 300)),
        ));
        RecordBatch::try_from_iter([("recipient", unique), ("sender_id", repeated)]).unwrap()
    }

    /// `batch` written through the format into a temporary file, and a reader of it.
    fn written(
        name: &str,
        properties: WriterProperties,
        batch: &RecordBatch,
    ) -> (std::path::PathBuf, SerializedFileReader<File>) {
        let path =
            std::env::temp_dir().join(format!("chatlake-{name}-{}.parquet", std::process::id()));
        let format = ParquetFormat::new(properties);
        let mut w = format
            .create(File::create(&path).unwrap(), batch.schema())
            .unwrap();
        w.write(batch).unwrap();
        w.finish().unwrap();
        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        (path, reader)
    }

    #[test]
    fn nearly_unique_string_columns_are_written_without_a_dictionary() {
        let b = batch(4000);
        let props = without_useless_dictionaries(WriterProperties::default(), &b.schema(), &b);
        assert!(!props.dictionary_enabled(&ColumnPath::from("recipient")));
        assert!(props.dictionary_enabled(&ColumnPath::from("sender_id")));

        // A small first batch says too little: left as configured.
        let small = batch(100);
        let props =
            without_useless_dictionaries(WriterProperties::default(), &small.schema(), &small);
        assert!(props.dictionary_enabled(&ColumnPath::from("recipient")));

        // Through the format: the file's `recipient` chunk has no dictionary page.
        let (path, reader) = written("dict", WriterProperties::default(), &b);
        let group = reader.metadata().row_group(0);
        assert!(
            group.column(0).dictionary_page_offset().is_none(),
            "recipient is plain"
        );
        assert!(
            group.column(1).dictionary_page_offset().is_some(),
            "sender_id keeps its dictionary"
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn numbers_and_times_without_a_dictionary_are_delta_encoded_and_read_back() {
        use arrow::array::{Int64Array, TimestampMicrosecondArray};
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        use parquet::basic::Encoding;
        let rows = 5000;
        let sent: Vec<i64> = (0..rows)
            .map(|i| 1_746_057_600_000_000 + i * 1_337)
            .collect();
        let b = RecordBatch::try_from_iter([
            (
                "sent_at",
                Arc::new(TimestampMicrosecondArray::from(sent).with_timezone("UTC")) as ArrayRef,
            ),
            (
                "version",
                Arc::new(Int64Array::from_iter(
                    (0..rows).map(|i| (i % 7 != 0).then_some(-i)),
                )),
            ),
            (
                "count",
                Arc::new(Int64Array::from_iter_values((0..rows).map(|i| i % 3))),
            ),
            (
                "recipient",
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("+39{i}")),
                )),
            ),
        ])
        .unwrap();
        let properties = WriterProperties::builder()
            .set_column_dictionary_enabled(ColumnPath::from("sent_at"), false)
            .set_column_dictionary_enabled(ColumnPath::from("version"), false)
            .set_column_dictionary_enabled(ColumnPath::from("recipient"), false)
            .build();
        let (path, reader) = written("delta", properties, &b);
        let group = reader.metadata().row_group(0);
        let delta = |c: usize| {
            group
                .column(c)
                .encodings()
                .any(|e| e == Encoding::DELTA_BINARY_PACKED)
        };
        assert!(delta(0), "sent_at");
        assert!(delta(1), "version");
        assert!(!delta(2), "count keeps its dictionary");
        assert!(!delta(3), "text is never delta-encoded");
        let read: Vec<RecordBatch> =
            ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
                .unwrap()
                .build()
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        assert_eq!(
            arrow::compute::concat_batches(&b.schema(), &read).unwrap(),
            b
        );
        std::fs::remove_file(&path).unwrap();
    }
}
