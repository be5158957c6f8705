//! Which of the table's data files belong to which window of which writer: every file chatlake
//! adds carries two tags (Delta `add.tags`), its writer (`<pipeline>.<sink>`) and its window
//! key, so a window can be found in the table, replaced and dropped without a side index that
//! could disagree with the log.

use std::collections::{HashMap, HashSet};

use deltalake::kernel::Add;
use deltalake::{DeltaResult, DeltaTable, Path};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

/// The tag naming the writer of a file: `<pipeline>.<sink>`.
pub(crate) const WRITER_TAG: &str = "chatlake.writer";
/// The tag naming the window of a file.
pub(crate) const WINDOW_TAG: &str = "chatlake.window";

/// A data file in the loaded table version.
#[derive(Debug, Clone)]
pub(crate) struct TableFile {
    /// Relative to the table root, as deltalake gives it (percent-decoded).
    pub path: String,
    pub partition_values: HashMap<String, Option<String>>,
    pub tags: Option<HashMap<String, Option<String>>>,
}

impl TableFile {
    /// The object key, relative to the table root.
    pub fn object_path(&self) -> Path {
        // As deltalake's own `object_store_path`: keep what parses, encode the rest.
        Path::parse(&self.path).unwrap_or_else(|_| Path::from(self.path.as_str()))
    }

    /// A path in the same directory as this file.
    pub fn sibling(&self, name: &str) -> String {
        match self.path.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/{name}"),
            None => name.to_string(),
        }
    }
}

/// Tags `add` as a file of `window` written by `writer`.
pub(crate) fn tag(add: &mut Add, writer: &str, window: &str) {
    let tags = add.tags.get_or_insert_with(HashMap::new);
    tags.insert(WRITER_TAG.to_string(), Some(writer.to_string()));
    tags.insert(WINDOW_TAG.to_string(), Some(window.to_string()));
}

/// The files of the loaded table version that `writer` wrote for one of `windows` (all its
/// windows if `windows` is `None`).
pub(crate) fn files_of(
    table: &DeltaTable,
    writer: &str,
    windows: Option<&HashSet<String>>,
) -> DeltaResult<Vec<TableFile>> {
    let Ok(snapshot) = table.snapshot() else {
        // No table yet: no files.
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for file in snapshot.log_data().iter() {
        // `add_action` is the one accessor of a file's tags.
        #[allow(deprecated)]
        let add = file.add_action();
        let Some(tags) = &add.tags else { continue };
        if tags.get(WRITER_TAG).and_then(Option::as_deref) != Some(writer) {
            continue;
        }
        let Some(window) = tags.get(WINDOW_TAG).and_then(Option::as_deref) else {
            continue;
        };
        if windows.is_some_and(|w| !w.contains(window)) {
            continue;
        }
        out.push(TableFile {
            path: add.path.clone(),
            partition_values: add.partition_values.clone(),
            tags: add.tags.clone(),
        });
    }
    Ok(out)
}

/// A new data file's name, as delta-rs names its own: `part-00000-<uuid>-c000.<codec>.parquet`.
pub(crate) fn new_data_file_name(properties: &WriterProperties) -> String {
    let codec = match properties.compression(&ColumnPath::new(Vec::new())) {
        Compression::UNCOMPRESSED => "",
        Compression::SNAPPY => ".snappy",
        Compression::GZIP(_) => ".gz",
        Compression::ZSTD(_) => ".zstd",
        Compression::LZ4 | Compression::LZ4_RAW => ".lz4",
        Compression::BROTLI(_) => ".br",
        Compression::LZO => ".lzo",
    };
    let id: u128 = rand::random();
    let hex = format!("{id:032x}");
    format!(
        "part-00000-{}-{}-{}-{}-{}-c000{codec}.parquet",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
