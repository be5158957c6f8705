//! The options of a `type = "delta"` sink, their checks, and `build`.

use std::path::PathBuf;

use chatlake_core::config::{InvalidConfig, StorageOptions};
use chatlake_core::{BuildContext, Sink, SinkConfig};
use chatlake_sink_parquet::{
    ParquetCompression, ParquetEncoding, default_no_dictionary, default_no_statistics,
    default_row_group_size,
};
use chatlake_store::Location;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::sink::{DeltaSink, TableOptions};

/// Writes rows into a Delta Lake table: Parquet data files and a transaction log, one commit
/// per window.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeltaSinkConfig {
    /// The table's root: a local directory (created if missing) or an object-store URL,
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` (`file://` is
    /// local). The table is created by the first window written to it, exactly once however
    /// many workers race to create it.
    pub path: PathBuf,

    /// Partition columns, outermost first: the table's `partitionColumns`, and the Hive
    /// directories of its data files (`provider=zoom/sent_date=2025-05-01/`). Fixed when the
    /// table is created; a different list for an existing table is refused.
    #[serde(default)]
    pub partition_by: Vec<String>,

    /// Compression of the data files' column chunks, as for the `parquet` sink.
    #[serde(default)]
    pub compression: ParquetCompression,

    /// Compression level, as for the `parquet` sink: zstd 1 to 22 (default 1), gzip 0 to 9.
    #[serde(default)]
    pub compression_level: Option<i32>,

    /// Rows per row group, as for the `parquet` sink.
    #[serde(default = "default_row_group_size")]
    pub row_group_size: usize,

    /// Columns written without a dictionary, as for the `parquet` sink (same default).
    #[serde(default = "default_no_dictionary")]
    pub no_dictionary: Vec<String>,

    /// Columns written without min/max statistics, as for the `parquet` sink (same default).
    #[serde(default = "default_no_statistics")]
    pub no_statistics: Vec<String>,

    /// Start a new data file once one reaches about this many bytes (encoded). Default: one
    /// file per window and partition.
    #[serde(default)]
    pub target_file_size: Option<u64>,

    /// How to reach the object store of an object-store `path`, as for the `parquet` sink.
    /// Secrets print `***`.
    #[serde(default)]
    pub storage: StorageOptions,
}

impl SinkConfig for DeltaSinkConfig {
    const TYPE: &'static str = "delta";
    const SUMMARY: &'static str =
        "A Delta Lake table (local or in object storage): one commit per window, exactly once";
    const EXAMPLE: &'static str = include_str!("example.toml");

    fn build(self, cx: &BuildContext) -> Result<Box<dyn Sink>, InvalidConfig> {
        Ok(Box::new(self.into_sink(cx)?))
    }
}

impl DeltaSinkConfig {
    /// The sink, checked without I/O.
    pub fn into_sink(self, cx: &BuildContext) -> Result<DeltaSink, InvalidConfig> {
        let properties = ParquetEncoding {
            compression: self.compression,
            compression_level: self.compression_level,
            row_group_size: self.row_group_size,
            no_dictionary: &self.no_dictionary,
            no_statistics: &self.no_statistics,
        }
        .properties()?;
        let text = self.path.to_string_lossy();
        if text.trim().is_empty() {
            return Err(InvalidConfig::new("path", "must name a directory"));
        }
        let location =
            Location::parse(&text).map_err(|e| InvalidConfig::new("path", e.to_string()))?;
        for (i, column) in self.partition_by.iter().enumerate() {
            let key = format!("partition_by[{i}]");
            if column.is_empty() {
                return Err(InvalidConfig::new(key, "must name a column"));
            }
            if self.partition_by[..i].contains(column) {
                return Err(InvalidConfig::new(
                    key,
                    format!("`{column}` is listed twice"),
                ));
            }
        }
        if self.target_file_size == Some(0) {
            return Err(InvalidConfig::new("target_file_size", "must be at least 1"));
        }
        Ok(DeltaSink::new(TableOptions {
            path: self.path,
            location,
            partition_by: self.partition_by,
            properties,
            target_file_size: self.target_file_size,
            storage: self.storage.or(&cx.storage),
            pipeline: cx.pipeline.clone(),
            sink: cx.name.clone(),
        }))
    }
}
