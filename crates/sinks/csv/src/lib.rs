//! The `csv` sink: CSV files, optionally gzipped, in the lake layout.
//!
//! Spec section 3: nested columns (`attachments`, a list of structs) are written as a JSON
//! string (`[]` when empty), so any List, Struct or Map column round-trips through a JSON
//! parser; timestamps are RFC 3339 in UTC ending in `Z`, with `.fff`, `.ffffff` fractions only
//! when not zero; dates are `YYYY-MM-DD`. A null is an empty field, as CSV has no other way to
//! write one (so a null and an empty string look alike; use JSON Lines or Parquet to tell them
//! apart). Fields are quoted when they hold the delimiter, a quote or a line break; text is
//! otherwise written byte for byte.
//!
//! Rows a later run replaces are taken out record by record, the header and the records kept
//! copied byte for byte (see `filter`); key columns are found by the header, so a sink with
//! `header = false` cannot do it. An empty key field counts as null there (that is how a null
//! is written), so a row whose key is empty text is not found.

mod config;
mod filter;
mod format;

pub use config::CsvSinkConfig;
pub use format::{CsvFormat, nested_as_json};

/// The sink `CsvSinkConfig` builds.
pub type CsvSink = chatlake_lake::FileSink<CsvFormat>;

#[cfg(test)]
mod tests;
