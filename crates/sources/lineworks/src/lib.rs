//! LINE WORKS monitoring source, `type = "lineworks_message_contents"`: message contents from
//! `GET /monitoring/message-contents/download` (a CSV behind a `302`), or from CSV files an admin
//! downloaded by hand.
//!
//! It emits raw `lineworks.message_contents` batches ([`raw_schema`]): the five CSV fields as
//! text, byte for byte, with local times in each window's `utc_offset`. `normalize` turns them
//! into canonical messages.
//!
//! Layout: [`config`] (the table, its checks, `build`), [`window`] (range splitting and the
//! request URL), `auth` (service-account JWT and token cache), `download_hosts` (where the
//! token may follow the `302`), [`parse`] (the CSV), and
//! `source` (the fetch loop).

mod auth;
pub mod config;
mod download_hosts;
mod error;
pub mod parse;
mod source;
pub mod window;

pub use config::{BotMessages, Language, LineworksAuth, LineworksSourceConfig};
pub use download_hosts::{DEFAULT_DOWNLOAD_HOST, DownloadHostRefused};
pub use error::{Error, Result};
pub use parse::{RECORD_TYPE, raw_schema};
pub use source::LineworksSource;

use chatlake_core::DataKind;

/// The record type of this source's batches, as a [`DataKind`].
pub fn output_kind() -> DataKind {
    DataKind::raw(RECORD_TYPE)
}
