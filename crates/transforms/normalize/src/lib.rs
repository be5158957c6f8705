//! `normalize`: provider records → the canonical message schema (spec section 3).
//!
//! Each provider's mapping is a module of its own; the transform picks one per batch by the
//! record type in the batch's schema metadata, so one `normalize` can take every source at once.
//!
//! With `raw = true` it asks the sources above it (through the graph,
//! `Transform::wants_raw_records` → `Source::keep_raw_records`) to hand over each record whole,
//! and passes that text on as a last column `raw` after the canonical ones (`schema::RAW`): what
//! the canonical schema has no column for — Zoom mentions (`at_items`), `rich_text`,
//! `reactions`, `reply_main_message_timestamp`, a bot's `bot_message` content, Qlara `cost`,
//! `parts`, `direction`, `customerMessageId` — is kept there rather than lost.

mod columns;
mod lineworks;
mod qlara;
#[cfg(test)]
mod testing;
mod zoom;

use chatlake_core::config::InvalidConfig;
use chatlake_core::schema::record_type;
use chatlake_core::{
    Batch, BuildContext, DataKind, Emitter, Result, Transform, TransformConfig, TransformContext,
    WindowRef,
};
use schemars::JsonSchema;
use serde::Deserialize;

pub use qlara::QlaraVersion;

/// Maps provider records to canonical messages.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NormalizeConfig {
    /// How a Qlara row's `version` is derived. `status_rank` (default): the epoch ms of
    /// `deliveryDate`, else of `sendDate` plus 1 unless the status is `SENT`, so a status
    /// reported later without a date (`SENT` → `EXPIRED` or `ERROR`) replaces the in-flight row
    /// under `dedupe keep = "latest"`. `time`: the epoch ms of `coalesce(deliveryDate,
    /// sendDate)` alone (the GW reference job of `shared/bench/JOBS.md`), where such a change
    /// ties with the in-flight row and the row loaded first stays.
    #[serde(default)]
    pub qlara_version: QlaraVersion,
    /// Adds a last column `raw` (Utf8, after the canonical columns) holding each provider record
    /// as JSON text, so nothing the provider gave is lost: a LINE WORKS or Qlara CSV row as an
    /// object of its fields keyed by the file's header names, every field the text the file had
    /// (extra columns included); a Zoom message as the JSON object the API (or a saved page) had
    /// it, byte for byte: `rich_text`, `at_items` (mentions), `reactions`,
    /// `reply_main_message_timestamp`, `bot_message` content, `interactive_cards` and any field
    /// the canonical schema has no column for. The sources above are told to keep their records
    /// whole, which costs them a copy of each record; without `raw` they do not.
    #[serde(default)]
    pub raw: bool,
}

impl TransformConfig for NormalizeConfig {
    const TYPE: &'static str = "normalize";
    const SUMMARY: &'static str = "Maps provider records to the canonical message schema (UTC times, ids, bots); `raw = true` \
         keeps each provider record whole as JSON in a last `raw` column (mentions, reactions, \
         rich text, bot content, Qlara cost/parts/direction/customerMessageId: what the \
         canonical columns have no place for). Zoom `is_bot`: a message with a `bot_message` \
         object, also an empty `{}` (the seeds never show `{}` on a person's message; the \
         reference job counts it a bot).";
    const EXAMPLE: &'static str = include_str!("example.toml");

    fn build(self, _cx: &BuildContext) -> Result<Box<dyn Transform>, InvalidConfig> {
        Ok(Box::new(NormalizeTransform {
            qlara_version: self.qlara_version,
            raw: self.raw,
            ..NormalizeTransform::default()
        }))
    }
}

/// The record types `normalize` knows.
pub const KNOWN_RECORD_TYPES: &[&str] = &[
    lineworks::RECORD_TYPE,
    qlara::RECORD_TYPE,
    zoom::USER_MESSAGES,
    zoom::CHAT_REPORT,
];

/// See the crate docs.
#[derive(Debug, Default)]
pub struct NormalizeTransform {
    lineworks: lineworks::LineworksMapper,
    qlara_version: QlaraVersion,
    /// Carry the provider's records whole in a `raw` column.
    raw: bool,
}

impl Transform for NormalizeTransform {
    fn output_kind(&self, input: &DataKind) -> Result<DataKind, String> {
        if input.is_canonical() {
            return Err(
                "normalize reads provider records, but its input is already canonical messages"
                    .into(),
            );
        }
        if KNOWN_RECORD_TYPES.contains(&input.as_str()) {
            Ok(DataKind::CANONICAL)
        } else {
            Err(format!(
                "normalize does not know raw `{}` records; it knows {}",
                input.as_str(),
                KNOWN_RECORD_TYPES.join(", ")
            ))
        }
    }

    fn transform(&mut self, batch: Batch, out: &mut Emitter, cx: &TransformContext) -> Result<()> {
        match record_type(batch.data.schema_ref()) {
            Some(lineworks::RECORD_TYPE) => self.lineworks.map(batch, out, cx, self.raw),
            Some(qlara::RECORD_TYPE) => qlara::map(batch, out, cx, self.qlara_version, self.raw),
            Some(zoom::USER_MESSAGES | zoom::CHAT_REPORT) => zoom::map(batch, out, cx, self.raw),
            other => Err(chatlake_core::Error::component(
                &cx.name,
                format!("cannot normalize records of type {other:?}"),
            )),
        }
    }

    fn window_done(
        &mut self,
        window: &WindowRef,
        _out: &mut Emitter,
        _cx: &TransformContext,
    ) -> Result<()> {
        self.lineworks.forget(window);
        Ok(())
    }

    fn window_failed(&mut self, window: &WindowRef, _cx: &TransformContext) -> Result<()> {
        self.lineworks.forget(window);
        Ok(())
    }

    /// Its only state (LINE WORKS occurrence counts) is per window, so windows can be mapped on
    /// several cores at once.
    fn replicate(&self) -> Option<Box<dyn Transform>> {
        Some(Box::new(NormalizeTransform {
            qlara_version: self.qlara_version,
            raw: self.raw,
            ..NormalizeTransform::default()
        }))
    }

    fn wants_raw_records(&self) -> bool {
        self.raw
    }
}
