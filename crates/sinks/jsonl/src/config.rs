//! The options of a `type = "jsonl"` sink, their checks, and `build`.

use std::path::PathBuf;

use chatlake_core::config::{InvalidConfig, StorageOptions};
use chatlake_core::{BuildContext, Sink, SinkConfig};
use chatlake_lake::text::TextCompression;
use chatlake_lake::{FileSink, LakeOptions};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::format::JsonlFormat;

/// Writes rows as JSON Lines files (`*.jsonl`, or `*.jsonl.gz`) in Hive partitions.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonlSinkConfig {
    /// Where the files are written: a local directory (created if missing) or an object-store
    /// URL, `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` or
    /// `abfss://container@account.dfs.core.windows.net/prefix` (`file://` is local). In an
    /// object store each window's files are written to a local spool and uploaded when the
    /// window commits: an object appears whole, and only committed windows stay.
    pub path: PathBuf,

    /// Columns whose values name the partition directories, outermost first, e.g.
    /// `["provider", "sent_date"]` gives `provider=zoom/sent_date=2025-05-01/`. These columns
    /// are left out of the files.
    #[serde(default)]
    pub partition_by: Vec<String>,

    /// `none` writes `.jsonl`; `gzip` writes `.jsonl.gz`.
    #[serde(default)]
    pub compression: TextCompression,

    /// Start a new file after this many rows. Default: one file per window and partition.
    #[serde(default)]
    pub max_rows_per_file: Option<u64>,

    /// How to reach the object store of an object-store `path`: `endpoint`, `region`,
    /// `allow_http`, `access_key_id`, `secret_access_key`, `session_token`,
    /// `virtual_hosted_style`, and any other object_store setting in `options`. Unset keys come
    /// from `[pipeline] storage`, then the standard variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
    /// Secrets print `***`.
    #[serde(default)]
    pub storage: StorageOptions,
}

impl SinkConfig for JsonlSinkConfig {
    const TYPE: &'static str = "jsonl";
    const SUMMARY: &'static str =
        "JSON Lines files, one object per row, optionally gzipped, in Hive partitions";
    const EXAMPLE: &'static str = include_str!("example.toml");

    fn build(self, cx: &BuildContext) -> Result<Box<dyn Sink>, InvalidConfig> {
        let options = LakeOptions {
            path: self.path,
            partition_by: self.partition_by,
            max_rows_per_file: self.max_rows_per_file,
        };
        options.validate()?;
        Ok(Box::new(
            FileSink::new(JsonlFormat::new(self.compression), options)
                .with_storage(self.storage.or(&cx.storage)),
        ))
    }
}
