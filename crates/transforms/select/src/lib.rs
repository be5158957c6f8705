//! `select`: keeps the listed columns, in the listed order, or drops the listed ones.
//!
//! The output shares the input's arrays (an Arrow projection moves `Arc`s, not data), so a
//! `select` in front of a sink costs a few pointer copies per batch. Canonical messages with
//! columns removed are no longer canonical: they become `canonical.projection` records, which
//! sinks take but `dedupe` and `bot_filter` refuse, so put `select` last.

use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use chatlake_core::config::InvalidConfig;
use chatlake_core::schema::{self, CANONICAL_RECORD_TYPE, RECORD_TYPE_KEY};
use chatlake_core::{
    Batch, BuildContext, DataKind, Emitter, Error, Result, Transform, TransformConfig,
    TransformContext,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// The record type of canonical messages with some columns removed.
pub const PROJECTION_RECORD_TYPE: &str = "canonical.projection";

/// Keeps or drops columns. Set exactly one of `columns` and `drop`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectConfig {
    /// Keep only these columns, in this order (e.g. `["message_id", "sent_at", "text"]`). Set
    /// this or `drop`.
    #[serde(default)]
    pub columns: Option<Vec<String>>,

    /// Remove these columns and keep the others in their order (e.g. `["run_id"]`). Set this or
    /// `columns`.
    #[serde(default)]
    pub drop: Option<Vec<String>>,
}

/// Which columns a [`SelectTransform`] keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These, in this order.
    Keep(Vec<String>),
    /// All but these, in input order.
    Drop(Vec<String>),
}

impl Selection {
    fn key(&self) -> &'static str {
        match self {
            Selection::Keep(_) => "columns",
            Selection::Drop(_) => "drop",
        }
    }

    fn names(&self) -> &[String] {
        match self {
            Selection::Keep(n) | Selection::Drop(n) => n,
        }
    }
}

impl SelectConfig {
    /// The selection this config asks for, checked without I/O.
    pub fn selection(self) -> Result<Selection, InvalidConfig> {
        let (key, selection) = match (self.columns, self.drop) {
            (Some(_), Some(_)) => {
                return Err(InvalidConfig::new(
                    "drop",
                    "set `columns` (the columns to keep) or `drop` (the columns to remove), not both",
                ));
            }
            (None, None) => {
                return Err(InvalidConfig::new(
                    "columns",
                    "set `columns` (the columns to keep) or `drop` (the columns to remove)",
                ));
            }
            (Some(c), None) => ("columns", Selection::Keep(c)),
            (None, Some(d)) => ("drop", Selection::Drop(d)),
        };
        let names = selection.names();
        if names.is_empty() {
            return Err(InvalidConfig::new(key, "list at least one column"));
        }
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() {
                return Err(InvalidConfig::new(
                    format!("{key}[{i}]"),
                    "a column name cannot be empty",
                ));
            }
            if names[..i].contains(name) {
                return Err(InvalidConfig::new(
                    format!("{key}[{i}]"),
                    format!("`{name}` is listed twice"),
                ));
            }
        }
        Ok(selection)
    }
}

impl TransformConfig for SelectConfig {
    const TYPE: &'static str = "select";
    const SUMMARY: &'static str =
        "Keeps the listed columns (in that order) or drops the listed ones, without copying data.";
    const EXAMPLE: &'static str = include_str!("example.toml");

    fn build(self, _cx: &BuildContext) -> Result<Box<dyn Transform>, InvalidConfig> {
        Ok(Box::new(SelectTransform::new(self.selection()?)))
    }
}

/// The projection computed for one input schema.
#[derive(Debug)]
struct Projection {
    input: SchemaRef,
    output: SchemaRef,
    indices: Vec<usize>,
    /// The output is the input unchanged: pass batches through.
    identity: bool,
}

/// See the crate docs.
#[derive(Debug)]
pub struct SelectTransform {
    selection: Selection,
    /// Upstream stages share one schema `Arc` across batches, so this is computed once per run.
    last: Option<Projection>,
}

impl SelectTransform {
    pub fn new(selection: Selection) -> Self {
        SelectTransform {
            selection,
            last: None,
        }
    }

    /// The input columns to keep, in output order, or the first listed column that is missing.
    fn indices(&self, input: &Schema) -> Result<Vec<usize>, String> {
        let missing = |name: &str| {
            let have: Vec<&str> = input.fields().iter().map(|f| f.name().as_str()).collect();
            format!(
                "column `{name}` (listed in `{}`) is not in the input; its columns are: {}",
                self.selection.key(),
                have.join(", ")
            )
        };
        match &self.selection {
            Selection::Keep(names) => names
                .iter()
                .map(|n| input.index_of(n).map_err(|_| missing(n)))
                .collect(),
            Selection::Drop(names) => {
                if let Some(n) = names.iter().find(|n| input.index_of(n).is_err()) {
                    return Err(missing(n));
                }
                let kept: Vec<usize> = (0..input.fields().len())
                    .filter(|&i| !names.contains(input.field(i).name()))
                    .collect();
                if kept.is_empty() {
                    return Err("`drop` removes every column of the input".into());
                }
                Ok(kept)
            }
        }
    }

    fn projection(&mut self, input: &SchemaRef) -> Result<&Projection, String> {
        let hit = self
            .last
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(&p.input, input) || p.input == *input);
        if !hit {
            let indices = self.indices(input)?;
            let mut output = input.project(&indices).map_err(|e| e.to_string())?;
            if schema::record_type(input) == Some(CANONICAL_RECORD_TYPE)
                && removes_more_than_raw(input, &output)
            {
                output
                    .metadata
                    .insert(RECORD_TYPE_KEY.into(), PROJECTION_RECORD_TYPE.into());
            }
            let identity = indices.iter().copied().eq(0..input.fields().len());
            self.last = Some(Projection {
                input: input.clone(),
                output: Arc::new(output),
                indices,
                identity,
            });
        }
        Ok(self.last.as_ref().expect("set above"))
    }
}

impl Transform for SelectTransform {
    fn output_kind(&self, input: &DataKind) -> Result<DataKind, String> {
        if !input.is_canonical() {
            // Raw records have no fixed schema here; a missing column is reported per batch.
            return Ok(input.clone());
        }
        // `raw` is there only when `normalize` was asked for it (`raw = true`); a selection
        // that names it is checked against messages that have it, and a batch without it is
        // refused when it comes.
        let canonical = if self.selection.names().iter().any(|n| n == schema::RAW) {
            schema::canonical_with_raw()
        } else {
            schema::canonical()
        };
        let indices = self
            .indices(&canonical)
            .map_err(|e| e.replace("the input", "canonical messages"))?;
        let output = canonical.project(&indices).map_err(|e| e.to_string())?;
        if !removes_more_than_raw(&canonical, &output) {
            Ok(input.clone())
        } else {
            Ok(DataKind::raw(PROJECTION_RECORD_TYPE))
        }
    }

    fn transform(&mut self, batch: Batch, out: &mut Emitter, cx: &TransformContext) -> Result<()> {
        let p = self
            .projection(batch.data.schema_ref())
            .map_err(|e| Error::component(&cx.name, format!("select: {e}")))?;
        if p.identity {
            out.push(batch);
            return Ok(());
        }
        let columns = p
            .indices
            .iter()
            .map(|&i| batch.data.column(i).clone())
            .collect();
        let data = RecordBatch::try_new(p.output.clone(), columns)?;
        out.emit(batch.window, data);
        Ok(())
    }
}

/// Whether `output` lacks a column of `input` other than `raw`: canonical messages without
/// `normalize`'s optional `raw` column (or with their columns reordered) are still canonical.
fn removes_more_than_raw(input: &Schema, output: &Schema) -> bool {
    input
        .fields()
        .iter()
        .any(|f| f.name() != schema::RAW && output.index_of(f.name()).is_err())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, ArrayRef, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};
    use chatlake_core::Window;
    use chatlake_core::dead_letter::DeadLetters;
    use chatlake_core::stage::RunInfo;
    use serde_json::json;

    use super::*;

    fn config(v: serde_json::Value) -> Result<Selection, String> {
        serde_json::from_value::<SelectConfig>(v)
            .map_err(|e| e.to_string())?
            .selection()
            .map_err(|e| e.to_string())
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Three columns `a` (Utf8), `b` (Int64), `c` (Utf8) tagged with `record_type`.
    fn batch(record_type: &str) -> Batch {
        let schema = Arc::new(Schema::new_with_metadata(
            vec![
                Field::new("a", DataType::Utf8, false),
                Field::new("b", DataType::Int64, false),
                Field::new("c", DataType::Utf8, true),
            ],
            [(RECORD_TYPE_KEY.to_string(), record_type.to_string())].into(),
        ));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec!["x", "y"])),
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(StringArray::from(vec![Some("p"), None])),
        ];
        let window = Arc::new(Window {
            source: "s".into(),
            stream: "x".into(),
            index: 0,
            start: None,
            end: None,
            utc_offset: chrono::FixedOffset::east_opt(0).unwrap(),
            label: "w".into(),
            key_name: None,
        });
        Batch::new(window, RecordBatch::try_new(schema, columns).unwrap())
    }

    /// [`batch`] of canonical messages with a last `raw` column.
    fn batch_with_raw() -> Batch {
        let b = batch(CANONICAL_RECORD_TYPE);
        let mut fields: Vec<Field> = b
            .data
            .schema()
            .fields()
            .iter()
            .map(|f| (**f).clone())
            .collect();
        fields.push(Field::new(schema::RAW, DataType::Utf8, true));
        let schema = Arc::new(Schema::new_with_metadata(
            fields,
            b.data.schema().metadata().clone(),
        ));
        let mut columns = b.data.columns().to_vec();
        columns.push(Arc::new(StringArray::from(vec!["{}", "{}"])));
        Batch::new(b.window, RecordBatch::try_new(schema, columns).unwrap())
    }

    fn context() -> TransformContext {
        TransformContext {
            name: "columns".into(),
            metrics: Arc::default(),
            dead_letters: DeadLetters::in_dir(&std::env::temp_dir()),
            run: Arc::new(RunInfo {
                pipeline: "p".into(),
                run_id: "r".into(),
                started_at: chrono::Utc::now(),
            }),
        }
    }

    fn run(selection: Selection, input: Batch) -> Result<Vec<Batch>> {
        let mut t = SelectTransform::new(selection);
        let mut out = Emitter::default();
        t.transform(input, &mut out, &context())?;
        Ok(out.drain().collect())
    }

    fn column_names(b: &Batch) -> Vec<String> {
        b.data
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    #[test]
    fn config_takes_exactly_one_non_empty_list() {
        assert_eq!(
            config(json!({"columns": ["b", "a"]})),
            Ok(Selection::Keep(names(&["b", "a"])))
        );
        assert_eq!(
            config(json!({"drop": ["run_id"]})),
            Ok(Selection::Drop(names(&["run_id"])))
        );
        let both = config(json!({"columns": ["a"], "drop": ["b"]})).unwrap_err();
        assert!(
            both.starts_with("drop: ") && both.contains("not both"),
            "{both}"
        );
        let neither = config(json!({})).unwrap_err();
        assert!(neither.starts_with("columns: set `columns`"), "{neither}");
        let empty = config(json!({"drop": []})).unwrap_err();
        assert_eq!(empty, "drop: list at least one column");
        let twice = config(json!({"columns": ["a", "b", "a"]})).unwrap_err();
        assert_eq!(twice, "columns[2]: `a` is listed twice");
        let blank = config(json!({"columns": [""]})).unwrap_err();
        assert_eq!(blank, "columns[0]: a column name cannot be empty");
        let unknown = config(json!({"columns": ["a"], "keep": ["b"]})).unwrap_err();
        assert!(unknown.contains("unknown field `keep`"), "{unknown}");
    }

    #[test]
    fn keeps_listed_columns_in_order_without_copying() {
        let input = batch("some.raw");
        let a = input.data.column(0).clone();
        let b = input.data.column(1).clone();
        let out = run(Selection::Keep(names(&["b", "a"])), input).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(column_names(&out[0]), ["b", "a"]);
        assert!(Arc::ptr_eq(out[0].data.column(0), &b));
        assert!(Arc::ptr_eq(out[0].data.column(1), &a));
        assert_eq!(out[0].num_rows(), 2);
        // A raw record type stays what it was: normalize still recognises the rows.
        assert_eq!(
            schema::record_type(out[0].data.schema_ref()),
            Some("some.raw")
        );
    }

    #[test]
    fn drops_listed_columns_and_keeps_the_order_of_the_rest() {
        let out = run(Selection::Drop(names(&["b"])), batch("some.raw")).unwrap();
        assert_eq!(column_names(&out[0]), ["a", "c"]);
        assert_eq!(out[0].data.column(1).null_count(), 1);
    }

    #[test]
    fn canonical_rows_with_columns_removed_become_projections() {
        let out = run(Selection::Drop(names(&["c"])), batch(CANONICAL_RECORD_TYPE)).unwrap();
        assert_eq!(
            schema::record_type(out[0].data.schema_ref()),
            Some(PROJECTION_RECORD_TYPE)
        );
        // Without `raw` (normalize's optional last column): still canonical.
        let out = run(Selection::Drop(names(&["raw"])), batch_with_raw()).unwrap();
        assert_eq!(
            schema::record_type(out[0].data.schema_ref()),
            Some(CANONICAL_RECORD_TYPE)
        );
        // Every column, reordered: still canonical.
        let out = run(
            Selection::Keep(names(&["c", "b", "a"])),
            batch(CANONICAL_RECORD_TYPE),
        )
        .unwrap();
        assert_eq!(
            schema::record_type(out[0].data.schema_ref()),
            Some(CANONICAL_RECORD_TYPE)
        );
    }

    #[test]
    fn selecting_everything_in_order_passes_the_batch_through() {
        let input = batch(CANONICAL_RECORD_TYPE);
        let schema = input.data.schema();
        let out = run(Selection::Keep(names(&["a", "b", "c"])), input).unwrap();
        assert!(Arc::ptr_eq(&out[0].data.schema(), &schema));
    }

    #[test]
    fn a_missing_column_names_the_column_and_the_transform() {
        let e = run(Selection::Keep(names(&["a", "zz"])), batch("some.raw"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "columns: select: column `zz` (listed in `columns`) is not in the input; \
             its columns are: a, b, c"
        );
        let e = run(Selection::Drop(names(&["nope"])), batch("some.raw"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("column `nope` (listed in `drop`)"), "{e}");
        let e = run(Selection::Drop(names(&["a", "b", "c"])), batch("some.raw"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("removes every column"), "{e}");
    }

    #[test]
    fn a_new_schema_is_projected_again() {
        let mut t = SelectTransform::new(Selection::Keep(names(&["c"])));
        let mut out = Emitter::default();
        t.transform(batch("one"), &mut out, &context()).unwrap();
        t.transform(batch("two"), &mut out, &context()).unwrap();
        let types: Vec<_> = out
            .drain()
            .map(|b| schema::record_type(b.data.schema_ref()).map(str::to_string))
            .collect();
        assert_eq!(types, [Some("one".into()), Some("two".into())]);
    }

    #[test]
    fn output_kind_follows_the_input_and_checks_canonical_names() {
        let keep = |v: &[&str]| SelectTransform::new(Selection::Keep(names(v)));
        let canonical = DataKind::CANONICAL;
        assert_eq!(
            keep(&["message_id", "text"]).output_kind(&canonical),
            Ok(DataKind::raw(PROJECTION_RECORD_TYPE))
        );
        let every: Vec<String> = schema::canonical()
            .fields()
            .iter()
            .rev()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            SelectTransform::new(Selection::Keep(every)).output_kind(&canonical),
            Ok(canonical.clone())
        );
        let raw = DataKind::raw("lineworks.message_contents");
        assert_eq!(keep(&["anything"]).output_kind(&raw), Ok(raw.clone()));
        // `normalize`'s optional `raw` column: listed, or dropped, the rest stays canonical.
        let with_raw: Vec<String> = schema::canonical_with_raw()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            SelectTransform::new(Selection::Keep(with_raw)).output_kind(&canonical),
            Ok(canonical.clone())
        );
        let drop_raw = SelectTransform::new(Selection::Drop(names(&[schema::RAW])));
        assert_eq!(drop_raw.output_kind(&canonical), Ok(canonical.clone()));
        assert_eq!(
            keep(&["message_id", schema::RAW]).output_kind(&canonical),
            Ok(DataKind::raw(PROJECTION_RECORD_TYPE))
        );
        let e = keep(&["message_id", "txt"])
            .output_kind(&canonical)
            .unwrap_err();
        assert!(
            e.starts_with("column `txt` (listed in `columns`) is not in canonical messages"),
            "{e}"
        );
    }
}
