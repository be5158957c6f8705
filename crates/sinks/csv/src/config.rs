//! The options of a `type = "csv"` sink, their checks, and `build`.

use std::path::PathBuf;

use chatlake_core::config::{InvalidConfig, StorageOptions};
use chatlake_core::{BuildContext, Sink, SinkConfig};
use chatlake_lake::text::TextCompression;
use chatlake_lake::{FileSink, LakeOptions};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::format::CsvFormat;

/// Writes rows as CSV files (`*.csv`, or `*.csv.gz`) in Hive partitions.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CsvSinkConfig {
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

    /// `none` writes `.csv`; `gzip` writes `.csv.gz`.
    #[serde(default)]
    pub compression: TextCompression,

    /// Start a new file after this many rows (each file has its own header). Default: one file
    /// per window and partition.
    #[serde(default)]
    pub max_rows_per_file: Option<u64>,

    /// The field separator: one ASCII character, such as `,`, `;`, `|` or a tab (`"\t"`).
    #[serde(default = "default_delimiter")]
    pub delimiter: String,

    /// Write the column names as the first line of every file. Needed below a transform that
    /// replaces rows earlier runs loaded (dedupe `keep = "latest"` with `across_runs`): the
    /// replaced rows are found in the files by their key columns' names.
    #[serde(default = "default_header")]
    pub header: bool,

    /// How to reach the object store of an object-store `path`: `endpoint`, `region`,
    /// `allow_http`, `access_key_id`, `secret_access_key`, `session_token`,
    /// `virtual_hosted_style`, and any other object_store setting in `options`. Unset keys come
    /// from `[pipeline] storage`, then the standard variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
    /// Secrets print `***`.
    #[serde(default)]
    pub storage: StorageOptions,
}

fn default_delimiter() -> String {
    ",".into()
}

fn default_header() -> bool {
    true
}

impl CsvSinkConfig {
    /// The delimiter as a byte, or why it cannot be one.
    fn delimiter_byte(&self) -> Result<u8, InvalidConfig> {
        let mut chars = self.delimiter.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) if c.is_ascii() && !matches!(c, '"' | '\n' | '\r') => Ok(c as u8),
            _ => Err(InvalidConfig::new(
                "delimiter",
                format!(
                    "{:?} is not one ASCII character other than a quote or a line break; \
                     use e.g. \",\", \";\", \"|\" or \"\\t\"",
                    self.delimiter
                ),
            )),
        }
    }
}

impl SinkConfig for CsvSinkConfig {
    const TYPE: &'static str = "csv";
    const SUMMARY: &'static str =
        "CSV files with a header, nested columns as JSON, optionally gzipped, in Hive partitions";
    const EXAMPLE: &'static str = include_str!("example.toml");

    fn build(self, cx: &BuildContext) -> Result<Box<dyn Sink>, InvalidConfig> {
        let delimiter = self.delimiter_byte()?;
        let options = LakeOptions {
            path: self.path,
            partition_by: self.partition_by,
            max_rows_per_file: self.max_rows_per_file,
        };
        options.validate()?;
        Ok(Box::new(
            FileSink::new(
                CsvFormat::new(self.compression, delimiter, self.header),
                options,
            )
            .with_storage(self.storage.or(&cx.storage)),
        ))
    }
}
