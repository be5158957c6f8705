//! Hive-style partitions: the directory each row belongs in, and splitting a batch by it.
//!
//! Directory names follow Hive and Spark so that DuckDB, PyArrow and Polars read them back:
//! `column=value` per partition column, in `partition_by` order, with characters that are unsafe
//! in a path percent-encoded and null (or empty) values written as
//! [`DEFAULT_PARTITION`].
//!
//! A file system refuses a path segment over 255 bytes (`ENAMETOOLONG`), which would fail the
//! window on every run. A value whose segment would be longer is written as a prefix of its
//! escaped text, `~` and 16 hex digits of a hash of the whole value ([`segment_value`]); the
//! rows of such a directory carry the whole value in a column of their own,
//! `<column>__full` ([`FULL_VALUE_SUFFIX`]), so a reader can take it back
//! (`coalesce(<column>__full, <column>)`, with DuckDB's `union_by_name`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{
    DataType, Date32Type, Int8Type, Int16Type, Int32Type, Int64Type, SchemaRef, UInt8Type,
    UInt16Type, UInt32Type, UInt64Type,
};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};

use crate::error::{Error, Result};

/// The directory name Hive, Spark, PyArrow and DuckDB use for a null partition value.
pub const DEFAULT_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// What a partition column's name gets for the column that holds its whole value in files
/// whose directory holds only a prefix and a hash of it.
pub const FULL_VALUE_SUFFIX: &str = "__full";

/// The longest directory segment (`name=value`) written: most file systems take 255 bytes.
const MAX_SEGMENT_BYTES: usize = 255;
/// `~` and 16 hex digits.
const HASH_SUFFIX_BYTES: usize = 17;

/// The directory value for partition `value` (not null, not empty) of the column whose escaped
/// name is `escaped_name`: the escaped value, or, when `name=value` would be longer than a file
/// system takes, the longest prefix of it that fits (cut between escapes and characters), `~`
/// and the FNV-1a hash of the whole value in hex. `long` says which.
pub(crate) fn segment_value(escaped_name: &str, value: &str) -> (String, bool) {
    let escaped = escape_path_name(value);
    if escaped_name.len() + 1 + escaped.len() <= MAX_SEGMENT_BYTES {
        return (escaped, false);
    }
    let room = MAX_SEGMENT_BYTES.saturating_sub(escaped_name.len() + 1 + HASH_SUFFIX_BYTES);
    let mut cut = 0;
    let mut chars = escaped.char_indices();
    while let Some((at, c)) = chars.next() {
        // An escape is three characters: keep them together.
        let end = if c == '%' { at + 3 } else { at + c.len_utf8() };
        if end > room {
            break;
        }
        cut = end;
        if c == '%' {
            chars.next();
            chars.next();
        }
    }
    // FNV-1a: stable across Rust versions and machines, unlike the standard library's hasher,
    // so every run names the same directory.
    let hash = value.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (format!("{}~{hash:016x}", &escaped[..cut]), true)
}

/// Escapes a column name or value for one path segment as Hive's `FileUtils.escapePathName` and
/// Spark do: control characters and `"#%'*/:=?\{[]^` (plus `<>|`, which Windows refuses) become
/// `%XX`; everything else, including non-ASCII text, is kept. Readers decode it back.
pub fn escape_path_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if needs_escape(c) {
            // Every escaped character is ASCII, so one byte.
            let _ = write!(out, "%{:02X}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    matches!(
        c,
        '\u{0}'
            ..='\u{1F}'
                | '\u{7F}'
                | '"'
                | '#'
                | '%'
                | '\''
                | '*'
                | '/'
                | ':'
                | '='
                | '?'
                | '\\'
                | '{'
                | '['
                | ']'
                | '^'
                | '<'
                | '>'
                | '|'
    )
}

fn supported(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Date32
            | DataType::Boolean
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
    )
}

/// The value of `row` as Hive writes it in a directory name, before escaping; `None` for null.
fn value_text(array: &dyn Array, row: usize) -> Option<String> {
    if array.is_null(row) {
        return None;
    }
    let text = match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value(row).to_string(),
        DataType::LargeUtf8 => array.as_string::<i64>().value(row).to_string(),
        DataType::Utf8View => array.as_string_view().value(row).to_string(),
        DataType::Date32 => array
            .as_primitive::<Date32Type>()
            .value_as_date(row)?
            .format("%Y-%m-%d")
            .to_string(),
        DataType::Boolean => array.as_boolean().value(row).to_string(),
        DataType::Int8 => array.as_primitive::<Int8Type>().value(row).to_string(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(row).to_string(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row).to_string(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).to_string(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(row).to_string(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(row).to_string(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(row).to_string(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(row).to_string(),
        // Refused when the partitioner was built.
        _ => return None,
    };
    Some(text)
}

/// Splits batches of one schema by the values of the partition columns (the file sinks' Hive
/// directories; the delta sink's partitions).
pub struct Partitioner {
    schema: SchemaRef,
    names: Vec<String>,
    partition_columns: Vec<usize>,
    data_columns: Vec<usize>,
    data_schema: SchemaRef,
    /// Turns the partition values of a row into comparable bytes; `None` without partitions.
    rows: Option<RowConverter>,
}

impl Partitioner {
    /// Checks `partition_by` against the schema of the first batch.
    pub fn new(schema: SchemaRef, partition_by: &[String]) -> Result<Self> {
        let mut partition_columns = Vec::with_capacity(partition_by.len());
        let mut names = Vec::with_capacity(partition_by.len());
        for column in partition_by {
            let index = schema
                .index_of(column)
                .map_err(|_| Error::UnknownPartitionColumn {
                    column: column.clone(),
                    available: schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            let data_type = schema.field(index).data_type();
            if !supported(data_type) {
                return Err(Error::PartitionType {
                    column: column.clone(),
                    data_type: data_type.clone(),
                });
            }
            partition_columns.push(index);
            names.push(escape_path_name(column));
        }
        let data_columns: Vec<usize> = (0..schema.fields().len())
            .filter(|i| !partition_columns.contains(i))
            .collect();
        if data_columns.is_empty() {
            return Err(Error::NothingToWrite);
        }
        let data_schema = Arc::new(schema.project(&data_columns)?);
        let rows = if partition_columns.is_empty() {
            None
        } else {
            Some(RowConverter::new(
                partition_columns
                    .iter()
                    .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                    .collect(),
            )?)
        };
        Ok(Partitioner {
            schema,
            names,
            partition_columns,
            data_columns,
            data_schema,
            rows,
        })
    }

    /// The schema of the rows written to files: the input's without the partition columns.
    pub fn data_schema(&self) -> &SchemaRef {
        &self.data_schema
    }

    /// Refuses a batch whose columns differ from the first batch's (metadata may differ).
    pub fn check(&self, batch: &RecordBatch) -> Result<()> {
        let schema = batch.schema();
        if Arc::ptr_eq(&schema, &self.schema) || schema.fields() == self.schema.fields() {
            return Ok(());
        }
        let list = |s: &SchemaRef| {
            s.fields()
                .iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(Error::SchemaChanged {
            expected: list(&self.schema),
            found: list(&schema),
        })
    }

    /// The rows of `batch` grouped by partition, without the partition columns, each with its
    /// directory relative to the sink's path (`""` without partitions). Groups come in the order
    /// their first row appears, and rows keep their order within a group.
    pub fn split(&self, batch: &RecordBatch) -> Result<Vec<(String, RecordBatch)>> {
        let data = batch.project(&self.data_columns)?;
        let Some(converter) = &self.rows else {
            return Ok(vec![(String::new(), data)]);
        };
        let keys: Vec<ArrayRef> = self
            .partition_columns
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let rows = converter.convert_columns(&keys)?;

        // A hash lookup on the encoded partition values only where they change from one row
        // to the next (rows mostly come in runs of one date); directory names are built once
        // per group, not per row.
        let mut group_of: HashMap<&[u8], usize> = HashMap::new();
        let mut groups: Vec<(usize, Vec<u32>)> = Vec::new();
        let mut previous: Option<(&[u8], usize)> = None;
        for row in 0..batch.num_rows() {
            let key = rows.row(row).data();
            let g = match previous {
                Some((last, g)) if last == key => g,
                _ => {
                    let next = groups.len();
                    let g = *group_of.entry(key).or_insert(next);
                    if g == next {
                        if next == 1 {
                            // Row numbers are kept only once there are two groups.
                            groups[0].1.extend(0..row as u32);
                        }
                        groups.push((row, Vec::new()));
                    }
                    g
                }
            };
            previous = Some((key, g));
            if groups.len() > 1 {
                groups[g].1.push(row as u32);
            }
        }

        if groups.len() == 1 {
            let (first, _) = groups[0];
            let (dir, long) = self.directory(&keys, first);
            return Ok(vec![(dir, self.with_full_values(batch, data, &long)?)]);
        }
        groups
            .into_iter()
            .map(|(first, indices)| {
                let (dir, long) = self.directory(&keys, first);
                let data = self.with_full_values(batch, data.clone(), &long)?;
                // A group in one run (a batch that crosses a day boundary) is a slice of the
                // batch, not a copy: copying was 2 % of the Qlara job.
                let run = indices.len();
                let part = if indices
                    .last()
                    .is_some_and(|&l| l as usize + 1 - first == run)
                {
                    data.slice(first, run)
                } else {
                    take_record_batch(&data, &UInt32Array::from(indices))?
                };
                Ok((dir, part))
            })
            .collect()
    }

    /// `data` (the rows of `batch` without partition columns) with, for each partition column
    /// in `long` (positions in `partition_by`), its whole value as `<column>__full`: the
    /// directory holds only a prefix and a hash of it (see the module docs).
    fn with_full_values(
        &self,
        batch: &RecordBatch,
        data: RecordBatch,
        long: &[usize],
    ) -> Result<RecordBatch> {
        if long.is_empty() {
            return Ok(data);
        }
        let mut fields: Vec<_> = data.schema().fields().iter().cloned().collect();
        let mut columns = data.columns().to_vec();
        for &i in long {
            let column = self.partition_columns[i];
            let field = self.schema.field(column);
            fields.push(Arc::new(arrow::datatypes::Field::new(
                format!("{}{FULL_VALUE_SUFFIX}", field.name()),
                field.data_type().clone(),
                true,
            )));
            columns.push(batch.column(column).clone());
        }
        let schema = Arc::new(arrow::datatypes::Schema::new_with_metadata(
            fields,
            data.schema().metadata().clone(),
        ));
        Ok(RecordBatch::try_new(schema, columns)?)
    }

    /// `a=x/b=y` for the partition values of `row`, and which partition columns (positions in
    /// `partition_by`) hold a value too long for a directory name, written shortened.
    fn directory(&self, keys: &[ArrayRef], row: usize) -> (String, Vec<usize>) {
        let mut long = Vec::new();
        let mut dir = String::new();
        for (i, (name, column)) in self.names.iter().zip(keys).enumerate() {
            if !dir.is_empty() {
                dir.push('/');
            }
            dir.push_str(name);
            dir.push('=');
            match value_text(column.as_ref(), row) {
                // Hive and Spark write empty strings as the default partition too: a directory
                // named `col=` reads back as null or fails, depending on the reader.
                Some(v) if !v.is_empty() => {
                    let (value, shortened) = segment_value(name, &v);
                    dir.push_str(&value);
                    if shortened {
                        long.push(i);
                    }
                }
                _ => dir.push_str(DEFAULT_PARTITION),
            }
        }
        (dir, long)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BooleanArray, Date32Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    #[test]
    fn escapes_like_hive() {
        assert_eq!(escape_path_name("zoom"), "zoom");
        assert_eq!(escape_path_name("a/b=c:d%e"), "a%2Fb%3Dc%3Ad%25e");
        assert_eq!(escape_path_name("tab\there\nnl"), "tab%09here%0Anl");
        assert_eq!(
            escape_path_name("q?*\"'#[]{}^\\<>|"),
            "q%3F%2A%22%27%23%5B%5D%7B}%5E%5C%3C%3E%7C"
        );
        assert_eq!(escape_path_name("日本語 😀"), "日本語 😀");
        assert_eq!(escape_path_name(".."), "..");
    }

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("p", DataType::Utf8, true),
            Field::new("d", DataType::Date32, false),
            Field::new("b", DataType::Boolean, false),
            Field::new("n", DataType::Int64, false),
            Field::new("x", DataType::Utf8, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![
                    Some("zoom"),
                    Some("a/b"),
                    None,
                    Some("zoom"),
                    Some(""),
                ])),
                // 2025-05-01 is day 20209 since the epoch.
                Arc::new(Date32Array::from(vec![20209, 20209, 20209, 20210, 20209])),
                Arc::new(BooleanArray::from(vec![true, true, true, true, false])),
                Arc::new(Int64Array::from(vec![-1, 2, 3, -1, 5])),
                Arc::new(StringArray::from(vec!["r0", "r1", "r2", "r3", "r4"])),
            ],
        )
        .unwrap()
    }

    fn column_x(b: &RecordBatch) -> Vec<String> {
        b.column_by_name("x")
            .unwrap()
            .as_string::<i32>()
            .iter()
            .map(|v| v.unwrap().to_string())
            .collect()
    }

    #[test]
    fn splits_by_every_partition_value_and_drops_the_columns() {
        let b = batch();
        let cols: Vec<String> = ["p", "d", "b", "n"].map(String::from).to_vec();
        let p = Partitioner::new(b.schema(), &cols).unwrap();
        assert_eq!(p.data_schema().fields().len(), 1);
        let parts = p.split(&b).unwrap();
        let got: Vec<(String, Vec<String>)> = parts
            .iter()
            .map(|(d, b)| (d.clone(), column_x(b)))
            .collect();
        assert_eq!(
            got,
            vec![
                ("p=zoom/d=2025-05-01/b=true/n=-1".into(), vec!["r0".into()]),
                ("p=a%2Fb/d=2025-05-01/b=true/n=2".into(), vec!["r1".into()]),
                (
                    "p=__HIVE_DEFAULT_PARTITION__/d=2025-05-01/b=true/n=3".into(),
                    vec!["r2".into()]
                ),
                ("p=zoom/d=2025-05-02/b=true/n=-1".into(), vec!["r3".into()]),
                (
                    "p=__HIVE_DEFAULT_PARTITION__/d=2025-05-01/b=false/n=5".into(),
                    vec!["r4".into()]
                ),
            ]
        );
    }

    #[test]
    fn runs_that_come_back_join_their_group_in_row_order() {
        use arrow::array::StringArray;
        let keys = ["a", "a", "b", "b", "a", "c", "c", "b"];
        let b = RecordBatch::try_from_iter([
            ("k", Arc::new(StringArray::from(keys.to_vec())) as ArrayRef),
            (
                "x",
                Arc::new(StringArray::from_iter_values(
                    (0..keys.len()).map(|i| format!("r{i}")),
                )) as ArrayRef,
            ),
        ])
        .unwrap();
        let p = Partitioner::new(b.schema(), &["k".to_string()]).unwrap();
        let got: Vec<(String, Vec<String>)> = p
            .split(&b)
            .unwrap()
            .iter()
            .map(|(d, b)| (d.clone(), column_x(b)))
            .collect();
        let want =
            |d: &str, rows: &[&str]| (d.to_string(), rows.iter().map(|r| r.to_string()).collect());
        assert_eq!(
            got,
            vec![
                want("k=a", &["r0", "r1", "r4"]),
                want("k=b", &["r2", "r3", "r7"]),
                want("k=c", &["r5", "r6"]),
            ]
        );
        // A group in one run is a slice of the batch; one that comes back is copied.
        use arrow::array::AsArray;
        let parts = p.split(&b).unwrap();
        let values = |b: &RecordBatch| {
            b.column_by_name("x")
                .unwrap()
                .as_string::<i32>()
                .values()
                .as_ptr()
        };
        assert_ne!(values(&parts[0].1), values(&b));
        assert_eq!(values(&parts[2].1), values(&b));
        // One run only: the batch itself, no copy.
        let one = b.slice(0, 2);
        let parts = p.split(&one).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(column_x(&parts[0].1), ["r0", "r1"]);
    }

    #[test]
    fn groups_rows_and_keeps_their_order() {
        let b = batch();
        let p = Partitioner::new(b.schema(), &["b".to_string()]).unwrap();
        let parts = p.split(&b).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].0, "b=true");
        assert_eq!(column_x(&parts[0].1), ["r0", "r1", "r2", "r3"]);
        assert_eq!(parts[1].0, "b=false");
        assert_eq!(parts[0].1.num_columns(), 4);
    }

    #[test]
    fn a_value_too_long_for_a_directory_name_is_shortened_with_a_hash() {
        let (short, long) = segment_value("room", "abc");
        assert_eq!((short.as_str(), long), ("abc", false));
        let value = "é/".repeat(200);
        let (segment, long) = segment_value("room", &value);
        assert!(long);
        assert!("room=".len() + segment.len() <= 255, "{}", segment.len());
        let (prefix, hash) = segment.rsplit_once('~').unwrap();
        assert_eq!(hash.len(), 16);
        // Cut between escapes and characters: a prefix of the whole escaped value.
        assert!(escape_path_name(&value).starts_with(prefix), "{prefix}");
        assert!(prefix.ends_with("%2F") || prefix.ends_with('é'), "{prefix}");
        // Stable, and distinct for values that share the prefix.
        assert_eq!(segment_value("room", &value).0, segment);
        let other = format!("{value}x");
        assert_ne!(segment_value("room", &other).0, segment);
        assert!(!segment_value("room", &"x".repeat(250)).1);
        assert!(segment_value("room", &"x".repeat(251)).1);
    }

    #[test]
    fn rows_of_a_shortened_directory_keep_the_whole_value() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("p", DataType::Utf8, true),
            Field::new("x", DataType::Utf8, false),
        ]));
        let long = "v".repeat(300);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![
                    Some(long.as_str()),
                    Some("short"),
                    Some(long.as_str()),
                ])),
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
            ],
        )
        .unwrap();
        let p = Partitioner::new(schema, &["p".to_string()]).unwrap();
        let parts = p.split(&batch).unwrap();
        assert_eq!(parts.len(), 2);
        let (dir, rows) = &parts[0];
        assert!(
            dir.starts_with("p=vvv") && dir.contains('~') && dir.len() <= 255,
            "{dir}"
        );
        assert_eq!(column_x(rows), ["a", "c"]);
        let full = rows.column_by_name("p__full").unwrap().as_string::<i32>();
        assert_eq!(
            full.iter().flatten().collect::<Vec<_>>(),
            [long.as_str(), long.as_str()]
        );
        let (dir, rows) = &parts[1];
        assert_eq!(dir, "p=short");
        assert_eq!(rows.num_columns(), 1);
        // One group only: the same columns.
        let one = batch.slice(0, 1);
        let parts = p.split(&one).unwrap();
        assert_eq!(parts[0].1.num_columns(), 2);
    }

    #[test]
    fn no_partitions_is_one_group_with_every_column() {
        let b = batch();
        let p = Partitioner::new(b.schema(), &[]).unwrap();
        let parts = p.split(&b).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].0, "");
        assert_eq!(parts[0].1, b);
    }

    #[test]
    fn refuses_unknown_and_unsupported_columns() {
        let b = batch();
        let e = Partitioner::new(b.schema(), &["nope".to_string()])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("`nope`") && e.contains("columns: p, d, b, n, x"),
            "{e}"
        );
        let all: Vec<String> = ["p", "d", "b", "n", "x"].map(String::from).to_vec();
        assert!(matches!(
            Partitioner::new(b.schema(), &all),
            Err(Error::NothingToWrite)
        ));
        let schema = Arc::new(Schema::new(vec![
            Field::new("f", DataType::Float64, false),
            Field::new("x", DataType::Utf8, false),
        ]));
        let e = Partitioner::new(schema, &["f".to_string()]).err().unwrap();
        assert!(e.to_string().contains("has type Float64"), "{e}");
    }

    #[test]
    fn refuses_a_batch_with_other_columns() {
        let b = batch();
        let p = Partitioner::new(b.schema(), &[]).unwrap();
        assert!(p.check(&b).is_ok());
        let other = b.project(&[0, 1]).unwrap();
        assert!(matches!(p.check(&other), Err(Error::SchemaChanged { .. })));
    }
}
