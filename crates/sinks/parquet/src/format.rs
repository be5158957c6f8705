//! Rows to Parquet, the columns of each batch encoded on two threads.
//!
//! Encoding (dictionary, levels, zstd) is most of a sink's CPU, and each column chunk is encoded
//! on its own, so a batch's columns go into one queue, biggest first, that this thread and a
//! scoped second thread take from; a row group's writers are closed on two lanes balanced by what
//! they hold. The file layout is the one `ArrowWriter` writes: row groups of
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
        let max_rows = self
            .properties
            .max_row_group_row_count()
            .unwrap_or(usize::MAX)
            .max(1);
        // ArrowWriter converts the schema and stores it in the footer; we take over from there.
        let (file, factory) =
            ArrowWriter::try_new(file, schema.clone(), Some(self.properties.clone()))?
                .into_serialized_writer()?;
        Ok(Box::new(ParquetWriter {
            file,
            factory,
            schema,
            max_rows,
            group: None,
            groups_written: 0,
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

struct ParquetWriter {
    file: SerializedFileWriter<File>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    max_rows: usize,
    /// The row group being encoded.
    group: Option<RowGroup>,
    groups_written: usize,
}

struct RowGroup {
    columns: Vec<ArrowColumnWriter>,
    rows: usize,
}

impl ParquetWriter {
    /// Encodes `batch` (which fits in the current row group) into the group's column writers.
    fn encode(&mut self, batch: &RecordBatch) -> Result<(), FormatError> {
        if self.group.is_none() {
            self.group = Some(RowGroup {
                columns: self.factory.create_column_writers(self.groups_written)?,
                rows: 0,
            });
        }
        let group = self.group.as_mut().expect("just made");
        // Leaves in file order, each with the size of the Arrow column it comes from.
        let mut leaves: Vec<(ArrowLeafColumn, usize)> = Vec::with_capacity(group.columns.len());
        for (field, array) in self.schema.fields().iter().zip(batch.columns()) {
            let size = array.get_array_memory_size();
            let parts = compute_leaves(field, array)?;
            let share = size / parts.len().max(1);
            leaves.extend(parts.into_iter().map(|leaf| (leaf, share)));
        }
        // Two threads take columns from one queue, biggest first, so a column that is slow for
        // its size (a dictionary to build) does not leave the other thread idle.
        let mut work: Vec<(usize, &mut ArrowColumnWriter, &ArrowLeafColumn)> = group
            .columns
            .iter_mut()
            .zip(&leaves)
            .map(|(writer, (leaf, size))| (*size, writer, leaf))
            .collect();
        work.sort_by_key(|(size, _, _)| std::cmp::Reverse(*size));
        let queue: Vec<std::sync::Mutex<Option<(&mut ArrowColumnWriter, &ArrowLeafColumn)>>> = work
            .into_iter()
            .map(|(_, writer, leaf)| std::sync::Mutex::new(Some((writer, leaf))))
            .collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let drain = || -> Result<(), parquet::errors::ParquetError> {
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
        std::thread::scope(|scope| {
            let other = (queue.len() > 1).then(|| scope.spawn(drain));
            let here = drain();
            let there = other.map_or(Ok(()), |h| h.join().expect("encoding thread panicked"));
            here.and(there)
        })?;
        group.rows += batch.num_rows();
        Ok(())
    }

    /// Finishes the current row group (its last pages are compressed on two threads too) and
    /// appends it to the file.
    fn close_group(&mut self) -> Result<(), FormatError> {
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
        let (mut chunks, rest) = std::thread::scope(|scope| {
            let other = scope.spawn(move || close(second));
            let here = close(writers);
            let there = other.join().expect("encoding thread panicked");
            here.and_then(|a| there.map(|b| (a, b)))
        })?;
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
            let room = self.max_rows - self.group.as_ref().map_or(0, |g| g.rows);
            let take = room.min(batch.num_rows() - offset);
            self.encode(&batch.slice(offset, take))?;
            offset += take;
            if self.group.as_ref().is_some_and(|g| g.rows >= self.max_rows) {
                self.close_group()?;
            }
        }
        Ok(())
    }

    fn buffered_bytes(&self) -> usize {
        self.group.as_ref().map_or(0, |g| {
            g.columns.iter().map(ArrowColumnWriter::memory_size).sum()
        })
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
