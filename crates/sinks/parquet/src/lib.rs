//! The `parquet` sink: Parquet files in the lake layout.
//!
//! Nested types are kept (`attachments` is a list of structs), UTC timestamps are written as
//! Parquet `TIMESTAMP(MICROS, isAdjustedToUTC = true)`, and the Arrow schema is stored in the
//! footer so Arrow readers get the exact types back. Where the files go, how they are
//! partitioned and committed is [`chatlake_lake`]'s business.
//!
//! Rows a later run replaces are taken out by reading a file back with the Arrow reader and
//! writing the rows kept with the sink's own writer and properties (see `filter`).

mod config;
mod filter;
mod format;

pub use config::{
    DEFAULT_ROW_GROUP_SIZE, ParquetCompression, ParquetEncoding, ParquetSinkConfig,
    default_no_dictionary, default_no_statistics, default_row_group_size,
};
pub use format::ParquetFormat;

/// The sink `ParquetSinkConfig` builds.
pub type ParquetSink = chatlake_lake::FileSink<ParquetFormat>;

#[cfg(test)]
mod tests;
