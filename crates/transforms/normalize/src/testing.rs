//! What the mapping tests of every provider share.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use chatlake_core::TransformContext;
use chatlake_core::dead_letter::DeadLetters;
use chatlake_core::schema::RECORD_TYPE_KEY;
use chatlake_core::stage::RunInfo;

/// A transform context whose dead letters go to `dir`.
pub(crate) fn context(dir: &std::path::Path) -> TransformContext {
    TransformContext {
        name: "canonical".into(),
        metrics: Arc::default(),
        dead_letters: DeadLetters::in_dir(dir),
        run: Arc::new(RunInfo {
            pipeline: "p".into(),
            run_id: "r1".into(),
            started_at: chrono::Utc::now(),
        }),
    }
}

/// A raw batch of `record_type` with one Utf8 column per name and the given rows.
pub(crate) fn text_batch<const N: usize>(
    names: &[&str; N],
    record_type: &str,
    nullable: bool,
    rows: &[[&str; N]],
) -> RecordBatch {
    let schema = Arc::new(Schema::new_with_metadata(
        names
            .iter()
            .map(|c| Field::new(*c, DataType::Utf8, nullable))
            .collect::<Vec<_>>(),
        [(RECORD_TYPE_KEY.to_string(), record_type.to_string())].into(),
    ));
    let cols: Vec<ArrayRef> = (0..N)
        .map(|c| Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r[c]))) as ArrayRef)
        .collect();
    RecordBatch::try_new(schema, cols).unwrap()
}
