//! The options of a `type = "parquet"` sink, their checks, and `build`.

use std::path::PathBuf;

use chatlake_core::config::{InvalidConfig, StorageOptions};
use chatlake_core::{BuildContext, Sink, SinkConfig};
use chatlake_lake::{FileSink, LakeOptions};
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::format::ParquetFormat;

/// Writes rows as Parquet files (`*.parquet`) in Hive partitions.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkConfig {
    /// Where the files are written: a local directory (created if missing) or an object-store
    /// URL, `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` or
    /// `abfss://container@account.dfs.core.windows.net/prefix` (`file://` is local). In an
    /// object store each window's files are written to a local spool and uploaded when the
    /// window commits: an object appears whole, and only committed windows stay.
    pub path: PathBuf,

    /// Columns whose values name the partition directories, outermost first, e.g.
    /// `["provider", "sent_date"]` gives `provider=zoom/sent_date=2025-05-01/`. These columns
    /// are left out of the files, as Hive, Spark and PyArrow expect.
    #[serde(default)]
    pub partition_by: Vec<String>,

    /// Compression of the column chunks.
    #[serde(default)]
    pub compression: ParquetCompression,

    /// Compression level: zstd 1 to 22 (default 1), gzip 0 to 9 (default 6). Snappy and none
    /// have no levels.
    #[serde(default)]
    pub compression_level: Option<i32>,

    /// Start a new file after this many rows. Default: one file per window and partition.
    #[serde(default)]
    pub max_rows_per_file: Option<u64>,

    /// Rows per row group, the unit readers skip by statistics and read in parallel. Rows are
    /// buffered in memory until a row group is full.
    #[serde(default = "default_row_group_size")]
    pub row_group_size: usize,

    /// Columns written without a dictionary. Values that rarely repeat (ids, message text,
    /// times to the millisecond) gain nothing from one, and building it costs a hash and a
    /// comparison per value, a fifth of the sink's time in the profile of issue 6. Every other
    /// column gets a dictionary, except a string column whose first rows in a file are nearly all
    /// distinct (at least 90 % of up to 1,024: phone numbers), which that file writes plain.
    #[serde(default = "default_no_dictionary")]
    pub no_dictionary: Vec<String>,

    /// Columns written without min/max statistics. A reader skips a row group or page by them
    /// only when values cluster; random ids, free text and recipients (phone numbers, names)
    /// span nearly the whole range in every row group, so their statistics skip nothing, while
    /// computing them costs two comparisons per value (3 % of the Zoom and Qlara jobs for the
    /// ids and text, 1–4 % of Qlara for the recipients). Times, dates, senders, conversations and
    /// the low-cardinality columns keep theirs.
    #[serde(default = "default_no_statistics")]
    pub no_statistics: Vec<String>,

    /// How to reach the object store of an object-store `path`: `endpoint`, `region`,
    /// `allow_http`, `access_key_id`, `secret_access_key`, `session_token`,
    /// `virtual_hosted_style`, and any other object_store setting in `options`. Unset keys come
    /// from `[pipeline] storage`, then the standard variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
    /// Secrets print `***`.
    #[serde(default)]
    pub storage: StorageOptions,
}

/// `no_statistics` when not given.
pub fn default_no_statistics() -> Vec<String> {
    ["message_id", "text", "reply_to_id", "recipient"]
        .map(String::from)
        .to_vec()
}

/// `no_dictionary` when not given.
pub fn default_no_dictionary() -> Vec<String> {
    [
        "message_id",
        "text",
        "sent_at",
        "delivered_at",
        "version",
        "reply_to_id",
    ]
    .map(String::from)
    .to_vec()
}

/// Compression of the column chunks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParquetCompression {
    /// Zstandard: small files, fast to read; the default.
    #[default]
    Zstd,
    /// Snappy: fastest, larger files.
    Snappy,
    /// gzip: for readers that know nothing newer.
    Gzip,
    /// Uncompressed.
    None,
}

/// 120 Ki rows: DuckDB's row-group size, big enough for good compression, small enough to
/// buffer per open file.
pub const DEFAULT_ROW_GROUP_SIZE: usize = 122_880;

/// `row_group_size` when not given.
pub fn default_row_group_size() -> usize {
    DEFAULT_ROW_GROUP_SIZE
}

/// zstd's level when none is given: 1, as the parquet crate and Arrow C++ (PyArrow) default to.
/// On the three reference jobs of issue 6 it wrote files as small as level 3 did (LINE WORKS
/// 21.3 against 21.5 MB, Qlara 18.7 against 18.7, Zoom 35.4 against 35.9) in 10–15 % less time:
/// the pages are already dictionary- or plain-encoded columns that level 3 gains little on.
const DEFAULT_ZSTD_LEVEL: i32 = 1;

impl ParquetSinkConfig {
    /// Writer properties, checked without I/O.
    pub fn properties(&self) -> Result<WriterProperties, InvalidConfig> {
        ParquetEncoding {
            compression: self.compression,
            compression_level: self.compression_level,
            row_group_size: self.row_group_size,
            no_dictionary: &self.no_dictionary,
            no_statistics: &self.no_statistics,
        }
        .properties()
    }
}

/// How Parquet files are encoded: the settings every sink that writes Parquet takes with the
/// same keys, defaults and checks (the `parquet` sink, and the `delta` sink, whose data files
/// are Parquet). Config keys are the field names.
#[derive(Debug, Clone, Copy)]
pub struct ParquetEncoding<'a> {
    pub compression: ParquetCompression,
    pub compression_level: Option<i32>,
    pub row_group_size: usize,
    pub no_dictionary: &'a [String],
    pub no_statistics: &'a [String],
}

impl ParquetEncoding<'_> {
    /// The codec with its level, or why the level does not fit it.
    fn codec(&self) -> Result<Compression, InvalidConfig> {
        let bad = |range: &str| {
            InvalidConfig::new(
                "compression_level",
                format!(
                    "{} is out of range for {}: use {range}",
                    self.compression_level.unwrap_or_default(),
                    self.compression.name()
                ),
            )
        };
        match (self.compression, self.compression_level) {
            (ParquetCompression::Zstd, level) => {
                ZstdLevel::try_new(level.unwrap_or(DEFAULT_ZSTD_LEVEL))
                    .map(Compression::ZSTD)
                    .map_err(|_| bad("1 to 22"))
            }
            (ParquetCompression::Gzip, None) => Ok(Compression::GZIP(GzipLevel::default())),
            (ParquetCompression::Gzip, Some(level)) => u32::try_from(level)
                .ok()
                .and_then(|l| GzipLevel::try_new(l).ok())
                .map(Compression::GZIP)
                .ok_or_else(|| bad("0 to 9")),
            (ParquetCompression::Snappy, None) => Ok(Compression::SNAPPY),
            (ParquetCompression::None, None) => Ok(Compression::UNCOMPRESSED),
            (other @ (ParquetCompression::Snappy | ParquetCompression::None), Some(_)) => {
                Err(InvalidConfig::new(
                    "compression_level",
                    format!("{} has no levels; remove compression_level", other.name()),
                ))
            }
        }
    }

    /// Writer properties, checked without I/O.
    pub fn properties(&self) -> Result<WriterProperties, InvalidConfig> {
        if self.row_group_size == 0 {
            return Err(InvalidConfig::new("row_group_size", "must be at least 1"));
        }
        let mut builder = WriterProperties::builder()
            .set_compression(self.codec()?)
            .set_max_row_group_row_count(Some(self.row_group_size));
        for column in self.no_dictionary {
            builder =
                builder.set_column_dictionary_enabled(ColumnPath::from(column.as_str()), false);
        }
        for column in self.no_statistics {
            builder = builder.set_column_statistics_enabled(
                ColumnPath::from(column.as_str()),
                EnabledStatistics::None,
            );
        }
        Ok(builder.build())
    }
}

impl ParquetCompression {
    fn name(self) -> &'static str {
        match self {
            ParquetCompression::Zstd => "zstd",
            ParquetCompression::Snappy => "snappy",
            ParquetCompression::Gzip => "gzip",
            ParquetCompression::None => "none",
        }
    }
}

impl SinkConfig for ParquetSinkConfig {
    const TYPE: &'static str = "parquet";
    const SUMMARY: &'static str =
        "Parquet files with nested types kept, zstd-compressed by default, in Hive partitions";
    const EXAMPLE: &'static str = include_str!("example.toml");

    fn build(self, cx: &BuildContext) -> Result<Box<dyn Sink>, InvalidConfig> {
        let properties = self.properties()?;
        let options = LakeOptions {
            path: self.path,
            partition_by: self.partition_by,
            max_rows_per_file: self.max_rows_per_file,
        };
        options.validate()?;
        Ok(Box::new(
            FileSink::new(ParquetFormat::new(properties), options)
                .with_storage(self.storage.or(&cx.storage)),
        ))
    }
}
