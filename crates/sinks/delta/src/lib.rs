//! The `delta` sink: a Delta Lake table, local or in object storage, with one commit per window,
//! exactly once (spec section 5).
//!
//! Data files are Parquet with the `parquet` sink's encoder settings
//! ([`chatlake_sink_parquet::ParquetEncoding`]) and its encoder, written into Hive directories
//! of the partition columns with flat memory (`data_files`). The ledger is the commit point; the Delta commit of a
//! window follows it and is rolled forward after a crash (see `sink`). The table is reached
//! through chatlake's own object store (`crates/store`), so no AWS SDK is linked and commits are
//! conditional puts.

mod config;
mod data_files;
mod error;
mod files;
mod journal;
pub mod maintenance;
mod rewrite;
mod sink;
mod table;

pub use config::DeltaSinkConfig;
pub use error::{Error, Result};
pub use sink::{DeltaSink, TableOptions};

#[cfg(test)]
mod tests;
