//! LINE WORKS monitoring source, `type = "lineworks_message_contents"`: message contents from
//! `GET /monitoring/message-contents/download` (a CSV behind a `302`), or from CSV files an admin
//! downloaded by hand.
//!
//! It emits raw `lineworks.message_contents` batches ([`raw_schema`]): the five CSV fields as
//! text, byte for byte, with local times in each window's `utc_offset`. `normalize` turns them
//! into canonical messages.
//!
//! Layout: [`config`] (the table, its checks, `build`), [`window`] (range splitting and the
//! request URL), `auth` (service-account JWT and token cache), [`parse`] (the CSV), and
//! `source` (the fetch loop).

mod auth;
pub mod config;
mod error;
pub mod parse;
mod source;
pub mod window;

/// Where the token may follow the download's `302`: shared with other sources in chatlake-http.
pub use chatlake_http::DownloadHostRefused;
pub use config::{BotMessages, Language, LineworksAuth, LineworksSourceConfig};
pub use error::{Error, Result};
pub use parse::{RECORD_TYPE, raw_schema};
pub use source::LineworksSource;

/// The default of `download_hosts`: LINE WORKS' file host (providers.md §1, "following the 302").
pub const DEFAULT_DOWNLOAD_HOST: &str = "apis-storage.worksmobile.com";

use chatlake_core::DataKind;

/// The record type of this source's batches, as a [`DataKind`].
pub fn output_kind() -> DataKind {
    DataKind::raw(RECORD_TYPE)
}
