//! Qlara source, `type = "qlara_message_history"`: the SMS/RCS/WhatsApp message history of an
//! Agile Telecom Qlara account, from the asynchronous CSV export
//! (`POST /partner-gateway/v1/messages/history/export`, polled to completion, downloaded from a
//! pre-signed URL), or from export CSVs downloaded by hand.
//!
//! It emits raw `qlara.message_history` batches ([`raw_schema`]): the export's twelve columns as
//! text, byte for byte. `normalize` turns them into canonical messages.
//!
//! Layout: [`config`] (the table, its checks, `build`), [`parse`] (the CSV, by header name),
//! `api` (the export requests, driven by `chatlake_http::export`), and `source` (windows,
//! checkpoints, files).

mod api;
pub mod config;
mod error;
pub mod parse;
mod source;

pub use config::{QlaraAuth, QlaraSourceConfig};
pub use error::{Error, Result};
pub use parse::{RECORD_TYPE, raw_schema};
pub use source::{ExportCheckpoint, QlaraSource};

use chatlake_core::DataKind;

/// What each job of an exports-list answer (`GET …/exports`) says about its state, as the
/// source reads it (`None`: no list in it). For the fuzz targets and their corpus replay
/// (`fuzz/`), which drive the parsers without the network.
#[doc(hidden)]
pub fn export_list_states(body: &[u8]) -> Option<Vec<chatlake_http::export::JobState>> {
    let body: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(
        api::list_entries(&body)?
            .iter()
            .map(api::entry_state)
            .collect(),
    )
}

/// The wait a 429 body asks for (`retryAfter`, seconds), as the source reads it. For the fuzz
/// targets, as [`export_list_states`].
#[doc(hidden)]
pub fn retry_after_seconds(body: &[u8]) -> Option<f64> {
    api::retry_after_from_body(body)
}

/// The record type of this source's batches, as a [`DataKind`].
pub fn output_kind() -> DataKind {
    DataKind::raw(RECORD_TYPE)
}
