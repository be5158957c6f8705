//! What an arrival-order spill file keeps of each column: columns that hold one value in every
//! row of its batches (a provider's name, the run id, a column a provider never fills) are not
//! written, only remembered, and are rebuilt at the read-back.
//!
//! Spill bytes cost kernel time three times (written, read back, dropped from the page cache
//! when the file is removed): about 15 % of the Qlara benchmark's CPU. A Qlara message carries
//! ~75 of its ~235 bytes in such columns.
//!
//! A file's shape starts from its first batch and only narrows: a later batch in which a
//! remembered column differs starts a new file in which that column is written. So a file is
//! started at most once per column that stops being constant (per schema), whatever the batch
//! sizes.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, ListArray, RecordBatch, RecordBatchOptions, StringArray,
    new_empty_array, new_null_array,
};
use arrow::buffer::{Buffer, OffsetBuffer};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::error::ArrowError;

/// What a file keeps of one column.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Column {
    /// Written, at this position of the file's batches.
    Written(usize),
    /// Null in every row.
    Null,
    /// This text (`Utf8`) in every row.
    Text {
        value: Box<str>,
        /// The value repeated to about 4 KiB, to compare a column in few large pieces.
        pattern: Box<[u8]>,
    },
    /// An empty list (`List`, not null) in every row.
    EmptyList,
}

impl Column {
    /// How `array` would be kept if it were the only batch.
    fn of(array: &dyn Array) -> Option<Column> {
        if array.is_empty() {
            return None;
        }
        let candidate = if array.null_count() == array.len() {
            Column::Null
        } else if let Some(text) = array.as_string_opt::<i32>() {
            if text.null_count() > 0 {
                return None;
            }
            let value = text.value(0);
            let pattern = value.repeat(4096_usize.div_ceil(value.len().max(1)));
            Column::Text {
                value: value.into(),
                pattern: pattern.into_bytes().into(),
            }
        } else if let DataType::List(_) = array.data_type() {
            Column::EmptyList
        } else {
            return None;
        };
        candidate.holds(array).then_some(candidate)
    }

    /// Whether every row of `array` is what this column remembers.
    fn holds(&self, array: &dyn Array) -> bool {
        match self {
            Column::Written(_) => true,
            Column::Null => array.null_count() == array.len(),
            Column::Text { value, pattern } => {
                let Some(text) = array.as_string_opt::<i32>() else {
                    return false;
                };
                if text.null_count() > 0 {
                    return false;
                }
                let offsets = text.value_offsets();
                let (first, last) = (offsets[0] as usize, offsets[offsets.len() - 1] as usize);
                let value = value.as_bytes();
                // Equal lengths first: a column that varies usually fails here at once.
                last - first == value.len() * text.len()
                    && offsets
                        .windows(2)
                        .all(|w| (w[1] - w[0]) as usize == value.len())
                    && (value.is_empty()
                        || text.value_data()[first..last]
                            .chunks(pattern.len())
                            .all(|chunk| chunk == &pattern[..chunk.len()]))
            }
            Column::EmptyList => match array.as_list_opt::<i32>() {
                Some(list) => {
                    let offsets = list.value_offsets();
                    list.null_count() == 0 && offsets[0] == offsets[offsets.len() - 1]
                }
                None => false,
            },
        }
    }

    /// This column, `rows` long, for a field of type `data_type`.
    fn rebuild(&self, data_type: &DataType, rows: usize) -> ArrayRef {
        match self {
            Column::Written(_) => unreachable!("written columns are read"),
            Column::Null => new_null_array(data_type, rows),
            Column::Text { value, .. } => {
                let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(value.len(), rows));
                let values = Buffer::from_vec(value.repeat(rows).into_bytes());
                Arc::new(StringArray::new(offsets, values, None))
            }
            Column::EmptyList => {
                let DataType::List(item) = data_type else {
                    unreachable!("an empty-list column is a list")
                };
                Arc::new(ListArray::new(
                    item.clone(),
                    OffsetBuffer::new_zeroed(rows),
                    new_empty_array(item.data_type()),
                    None,
                ))
            }
        }
    }
}

/// The shape of one arrival-order file: for each column of its batches' schema, written or
/// remembered.
#[derive(Debug)]
pub(crate) struct SpillShape {
    /// The schema of the batches going in and coming back.
    schema: SchemaRef,
    columns: Vec<Column>,
    /// The schema of the file: the written columns.
    written: SchemaRef,
    /// The remembered columns as last rebuilt: sliced for every batch that fits, so rebuilding
    /// costs nothing per row.
    rebuilt: Vec<Option<ArrayRef>>,
}

impl SpillShape {
    /// The narrowest shape for `batch`: every column that holds one value is remembered.
    pub(crate) fn of(batch: &RecordBatch) -> SpillShape {
        let kept = batch
            .columns()
            .iter()
            .map(|c| Column::of(c.as_ref()))
            .collect::<Vec<_>>();
        Self::from_kept(batch.schema(), kept)
    }

    /// Whether `batch` fits a file of this shape as it is: same schema, and every remembered
    /// column holds its value.
    pub(crate) fn fits(&self, batch: &RecordBatch) -> bool {
        self.schema == batch.schema()
            && self
                .columns
                .iter()
                .zip(batch.columns())
                .all(|(kept, array)| kept.holds(array.as_ref()))
    }

    /// For `batch`, of this shape's schema: this shape with every column `batch` breaks written.
    pub(crate) fn narrowed(&self, batch: &RecordBatch) -> SpillShape {
        let kept = self
            .columns
            .iter()
            .zip(batch.columns())
            .map(|(kept, array)| match kept {
                Column::Written(_) => None,
                kept => kept.holds(array.as_ref()).then(|| kept.clone()),
            })
            .collect();
        Self::from_kept(self.schema.clone(), kept)
    }

    fn from_kept(schema: SchemaRef, kept: Vec<Option<Column>>) -> SpillShape {
        let mut fields = Vec::new();
        let columns = kept
            .into_iter()
            .zip(schema.fields())
            .map(|(kept, field)| {
                kept.unwrap_or_else(|| {
                    fields.push(field.clone());
                    Column::Written(fields.len() - 1)
                })
            })
            .collect();
        let written = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
        SpillShape {
            rebuilt: vec![None; schema.fields().len()],
            schema,
            columns,
            written,
        }
    }

    /// The schema of the batches going in and coming back.
    pub(crate) fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The schema of the file.
    pub(crate) fn written_schema(&self) -> &SchemaRef {
        &self.written
    }

    /// What is written of `batch` (which [`fits`](Self::fits)).
    pub(crate) fn strip(&self, batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
        let columns = self
            .columns
            .iter()
            .zip(batch.columns())
            .filter(|(kept, _)| matches!(kept, Column::Written(_)))
            .map(|(_, array)| array.clone())
            .collect();
        RecordBatch::try_new_with_options(
            self.written.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )
    }

    /// The batch that went in, from what was written of it (or of some of its rows).
    pub(crate) fn restore(&mut self, written: &RecordBatch) -> Result<RecordBatch, ArrowError> {
        let rows = written.num_rows();
        let columns = self
            .columns
            .iter()
            .zip(self.schema.fields())
            .zip(&mut self.rebuilt)
            .map(|((kept, field), rebuilt)| match kept {
                Column::Written(i) => written.column(*i).clone(),
                kept => {
                    let have = rebuilt.as_ref().map_or(0, |a| a.len());
                    if have < rows {
                        // Room for batches up to twice as large, so a growing size rebuilds
                        // rarely.
                        *rebuilt = Some(kept.rebuild(field.data_type(), rows.max(2 * have)));
                    }
                    rebuilt.as_ref().expect("rebuilt above").slice(0, rows)
                }
            })
            .collect();
        RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BooleanArray, Int64Array, ListBuilder, StringBuilder};
    use arrow::datatypes::Field;

    const EMPTY: Option<&[&str]> = Some(&[]);

    fn batch(provider: &[Option<&str>], ids: &[i64], lists: &[Option<&[&str]>]) -> RecordBatch {
        let mut list = ListBuilder::new(StringBuilder::new());
        for l in lists {
            match l {
                Some(items) => {
                    for i in *items {
                        list.values().append_value(i);
                    }
                    list.append(true);
                }
                None => list.append(false),
            }
        }
        let nothing: Vec<Option<&str>> = vec![None; ids.len()];
        let flags = BooleanArray::from(vec![false; ids.len()]);
        let schema = Schema::new(vec![
            Field::new("provider", DataType::Utf8, true),
            Field::new("id", DataType::Int64, false),
            Field::new("nothing", DataType::Utf8, true),
            Field::new("flag", DataType::Boolean, false),
            Field::new(
                "items",
                DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
                true,
            ),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(provider.to_vec())),
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(StringArray::from(nothing)),
                Arc::new(flags),
                Arc::new(list.finish()),
            ],
        )
        .unwrap()
    }

    fn written_names(shape: &SpillShape) -> Vec<String> {
        let fields = shape.written_schema().fields();
        fields.iter().map(|f| f.name().clone()).collect()
    }

    #[test]
    fn constant_columns_are_remembered_and_come_back_equal() {
        let b = batch(&[Some("qlara"); 3], &[1, 2, 3], &[EMPTY; 3]);
        let mut shape = SpillShape::of(&b);
        // Booleans and numbers are written whatever they hold.
        assert_eq!(written_names(&shape), ["id", "flag"]);
        let written = shape.strip(&b).unwrap();
        assert_eq!(written.num_columns(), 2);
        assert_eq!(shape.restore(&written).unwrap(), b);
        // A part of the rows (the read-back filters before it restores).
        let part = shape.restore(&written.slice(1, 1)).unwrap();
        assert_eq!(part, b.slice(1, 1));
    }

    #[test]
    fn a_column_that_changes_is_written_from_then_on() {
        let first = batch(&[Some("qlara"); 2], &[1, 2], &[EMPTY; 2]);
        let mut shape = SpillShape::of(&first);
        for (changed, b) in [
            (
                "provider",
                batch(&[Some("qlara"), Some("zoom")], &[3, 4], &[EMPTY; 2]),
            ),
            (
                "provider",
                batch(&[Some("qlarA"), Some("qlarA")], &[3, 4], &[EMPTY; 2]),
            ),
            (
                "provider",
                batch(&[Some("qlara"), None], &[3, 4], &[EMPTY; 2]),
            ),
            (
                "provider",
                batch(&[Some("ql"), Some("araql")], &[3, 4], &[EMPTY; 2]),
            ),
            (
                "items",
                batch(&[Some("qlara"); 2], &[3, 4], &[EMPTY, Some(&["a"][..])]),
            ),
            ("items", batch(&[Some("qlara"); 2], &[3, 4], &[EMPTY, None])),
        ] {
            assert!(!shape.fits(&b), "{changed}");
            let mut narrowed = shape.narrowed(&b);
            // In the schema's order.
            let mut expected = vec!["id", "flag"];
            match changed {
                "provider" => expected.insert(0, changed),
                _ => expected.push(changed),
            }
            assert_eq!(written_names(&narrowed), expected);
            assert!(narrowed.fits(&b));
            assert_eq!(narrowed.restore(&narrowed.strip(&b).unwrap()).unwrap(), b);
        }
        let same = batch(&[Some("qlara"); 4], &[5, 6, 7, 8], &[EMPTY; 4]);
        assert!(shape.fits(&same));
        assert_eq!(shape.restore(&shape.strip(&same).unwrap()).unwrap(), same);
    }

    #[test]
    fn long_columns_are_compared_whole_and_rebuilt_for_any_batch_size() {
        let n = 3000; // 15,000 bytes of "qlara": several pieces of the pattern.
        let ids: Vec<i64> = (0..n as i64).collect();
        let b = batch(&vec![Some("qlara"); n], &ids, &vec![EMPTY; n]);
        let mut shape = SpillShape::of(&b.slice(0, 1));
        assert!(shape.fits(&b));
        for at in [0, 818, 819, n - 1] {
            let mut late = vec![Some("qlara"); n];
            late[at] = Some("qlarb");
            assert!(!shape.fits(&batch(&late, &ids, &vec![EMPTY; n])), "{at}");
        }
        for rows in [1, n, 2, n - 1] {
            let part = b.slice(n - rows, rows);
            let written = shape.strip(&part).unwrap();
            assert_eq!(shape.restore(&written).unwrap(), part, "{rows} rows");
        }
    }

    #[test]
    fn all_null_and_empty_text_columns_and_batches_with_nothing_written() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Utf8, true),
            Field::new("b", DataType::Utf8, false),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![None::<&str>; 3])),
                Arc::new(StringArray::from(vec![""; 3])),
            ],
        )
        .unwrap();
        let mut shape = SpillShape::of(&b);
        let written = shape.strip(&b).unwrap();
        assert_eq!((written.num_columns(), written.num_rows()), (0, 3));
        assert_eq!(shape.restore(&written).unwrap(), b);
        let other = RecordBatch::try_new(
            b.schema(),
            vec![
                Arc::new(StringArray::from(vec![None::<&str>; 2])),
                Arc::new(StringArray::from(vec!["", "x"])),
            ],
        )
        .unwrap();
        assert!(!shape.fits(&other));
        // Another schema never fits.
        let c = batch(&[Some("x")], &[1], &[EMPTY]);
        assert!(!shape.fits(&c));
    }
}
