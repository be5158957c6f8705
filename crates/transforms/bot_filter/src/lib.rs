//! `bot_filter`: keeps, drops or keeps only bot messages (the canonical `is_bot` column).

use arrow::array::AsArray;
use arrow::compute::{filter_record_batch, not};
use chatlake_core::config::InvalidConfig;
use chatlake_core::schema::IS_BOT;
use chatlake_core::{
    Batch, BuildContext, DataKind, Emitter, Error, Result, Transform, TransformConfig,
    TransformContext,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// What happens to bot messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BotMode {
    /// Keep every message.
    Include,
    /// Drop bot messages.
    #[default]
    Exclude,
    /// Keep only bot messages.
    Only,
}

/// Filters messages by `is_bot`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BotFilterConfig {
    /// `include`, `exclude` (default) or `only`.
    #[serde(default)]
    pub mode: BotMode,
}

impl TransformConfig for BotFilterConfig {
    const TYPE: &'static str = "bot_filter";
    const SUMMARY: &'static str = "Keeps, drops or keeps only bot messages.";
    const EXAMPLE: &'static str = include_str!("example.toml");

    fn build(self, _cx: &BuildContext) -> Result<Box<dyn Transform>, InvalidConfig> {
        Ok(Box::new(BotFilterTransform { mode: self.mode }))
    }
}

/// See the crate docs.
#[derive(Debug)]
pub struct BotFilterTransform {
    mode: BotMode,
}

impl Transform for BotFilterTransform {
    fn output_kind(&self, input: &DataKind) -> Result<DataKind, String> {
        if input.is_canonical() {
            Ok(input.clone())
        } else {
            Err(format!(
                "bot_filter needs canonical messages, but gets {input}; put a normalize transform in front"
            ))
        }
    }

    fn transform(&mut self, batch: Batch, out: &mut Emitter, cx: &TransformContext) -> Result<()> {
        if self.mode == BotMode::Include {
            out.push(batch);
            return Ok(());
        }
        let is_bot = batch
            .data
            .column_by_name(IS_BOT)
            .and_then(|c| c.as_boolean_opt())
            .ok_or_else(|| Error::component(&cx.name, "input has no Boolean `is_bot` column"))?;
        let keep = match self.mode {
            BotMode::Only => is_bot.clone(),
            _ => not(is_bot)?,
        };
        match keep.true_count() {
            0 => {}
            n if n == batch.num_rows() => out.push(batch),
            _ => out.emit(
                batch.window.clone(),
                filter_record_batch(&batch.data, &keep)?,
            ),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{BooleanArray, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use chatlake_core::Window;
    use chatlake_core::dead_letter::DeadLetters;
    use chatlake_core::stage::RunInfo;

    use super::*;

    fn run(mode: BotMode, flags: &[bool]) -> Vec<bool> {
        let schema = Arc::new(Schema::new(vec![Field::new(
            IS_BOT,
            DataType::Boolean,
            false,
        )]));
        let data = RecordBatch::try_new(schema, vec![Arc::new(BooleanArray::from(flags.to_vec()))])
            .unwrap();
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
        let cx = TransformContext {
            name: "humans".into(),
            metrics: Arc::default(),
            dead_letters: DeadLetters::in_dir(&std::env::temp_dir()),
            run: Arc::new(RunInfo {
                pipeline: "p".into(),
                run_id: "r".into(),
                started_at: chrono::Utc::now(),
            }),
        };
        let mut out = Emitter::default();
        BotFilterTransform { mode }
            .transform(Batch::new(window, data), &mut out, &cx)
            .unwrap();
        out.drain()
            .flat_map(|b| {
                b.data
                    .column(0)
                    .as_boolean()
                    .iter()
                    .map(|v| v.unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn modes() {
        let flags = [true, false, false, true];
        assert_eq!(run(BotMode::Include, &flags), flags);
        assert_eq!(run(BotMode::Exclude, &flags), [false, false]);
        assert_eq!(run(BotMode::Only, &flags), [true, true]);
        assert!(run(BotMode::Only, &[false]).is_empty());
    }

    #[test]
    fn mode_names_are_checked() {
        let e = serde_json::from_value::<BotFilterConfig>(serde_json::json!({"mode": "some"}))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("expected one of `include`, `exclude`, `only`"),
            "{e}"
        );
    }
}
