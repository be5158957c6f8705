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

/// The record type of this source's batches, as a [`DataKind`].
pub fn output_kind() -> DataKind {
    DataKind::raw(RECORD_TYPE)
}
