//! The `parquet` sink: Parquet files in the lake layout.
//!
//! Nested types are kept (`attachments` is a list of structs), UTC timestamps are written as
//! Parquet `TIMESTAMP(MICROS, isAdjustedToUTC = true)`, and the Arrow schema is stored in the
//! footer so Arrow readers get the exact types back. Where the files go, how they are
//! partitioned and committed is [`chatlake_lake`]'s business.

mod config;
mod format;

pub use config::{ParquetCompression, ParquetSinkConfig};
pub use format::ParquetFormat;

/// The sink `ParquetSinkConfig` builds.
pub type ParquetSink = chatlake_lake::FileSink<ParquetFormat>;

#[cfg(test)]
mod tests;
