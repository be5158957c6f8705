//! The `jsonl` sink: JSON Lines files, optionally gzipped, in the lake layout.
//!
//! One JSON object per row and per line, with every column present (nulls are written as
//! `null`, so each line has the same keys), nested values as JSON (attachments are an array of
//! objects), timestamps as RFC 3339 strings ending in `Z` and dates as `YYYY-MM-DD`. Where the
//! files go, how they are partitioned and committed is [`chatlake_lake`]'s business.
//!
//! Rows a later run replaces are taken out line by line, the lines kept copied byte for byte
//! (see `filter`).

mod config;
mod filter;
mod format;

pub use config::JsonlSinkConfig;
pub use format::JsonlFormat;

/// The sink `JsonlSinkConfig` builds.
pub type JsonlSink = chatlake_lake::FileSink<JsonlFormat>;

#[cfg(test)]
mod tests;
