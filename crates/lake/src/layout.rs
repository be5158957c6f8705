//! Where a file sink's files are: the options that place them ([`LakeOptions`]), the one place
//! that names them ([`file_name`]) and reads a window back from a name, and the walk over a
//! sink's directory. The sink (writing, committing) and the row removal (rewriting committed
//! files) both build on this module, and neither on the other's internals.

use std::fs;
use std::path::{Path, PathBuf};

use chatlake_core::Window;
use chatlake_core::config::InvalidConfig;
use chatlake_store::{Location, LocationError};

use crate::error::{Error, Result};

/// Where and how a file sink lays out its files. Sink configs carry these three fields
/// themselves (so `deny_unknown_fields` keeps working) and build this from them; how to reach
/// an object store is handed over apart ([`crate::FileSink::with_storage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeOptions {
    /// The root of the sink's files as the user wrote it: a local directory, or an object-store
    /// URL (`s3://bucket/prefix`, `gs://…`, `az://…`, `file://…`); see [`LakeOptions::location`].
    pub path: PathBuf,
    /// Columns whose values name the Hive directories, outermost first; they are left out of
    /// the files.
    pub partition_by: Vec<String>,
    /// Start a new file after this many rows; `None` for one file per window and partition.
    pub max_rows_per_file: Option<u64>,
}

impl LakeOptions {
    /// The checks a sink's `build` makes without touching the disk. Keys are the config's
    /// (`path`, `partition_by[1]`, `max_rows_per_file`).
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.path.to_string_lossy().trim().is_empty() {
            return Err(InvalidConfig::new("path", "must name a directory"));
        }
        self.location()
            .map_err(|e| InvalidConfig::new("path", e.to_string()))?;
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
        if self.max_rows_per_file == Some(0) {
            return Err(InvalidConfig::new(
                "max_rows_per_file",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// Where the files go, read from [`LakeOptions::path`] without touching the disk or the
    /// network: a local directory, or a prefix in an object store.
    pub fn location(&self) -> Result<Location, LocationError> {
        Location::parse(&self.path.to_string_lossy())
    }
}

/// Everything the name of a data file may depend on.
#[derive(Debug, Clone, Copy)]
pub struct FileKey<'a> {
    pub pipeline: &'a str,
    /// The sink's name in the pipeline file.
    pub sink: &'a str,
    pub run_id: &'a str,
    pub window: &'a Window,
    /// The partition directory relative to the sink's path, `""` without partitions.
    pub partition: &'a str,
    /// Counts the files of one window and partition, from 0.
    pub part: u32,
    /// [`FileFormat::extension`].
    pub extension: &'a str,
}

/// The one place that names data files:
/// `part-<pipeline>.<sink>.<window key>.<part:04>.<extension>`, the temporary file being this
/// name plus `.tmp`. Nothing in it changes between runs: a window written again (after a run was
/// killed) gets the same names and replaces its own files. Pipeline and sink names hold no dots
/// (core checks), so the prefix `part-<pipeline>.<sink>.` names this sink's files and no other's.
pub fn file_name(key: &FileKey<'_>) -> String {
    format!(
        "{}{}.{:04}.{}",
        file_prefix(key.pipeline, key.sink),
        key.window.key(),
        key.part,
        key.extension
    )
}

/// The start of every file name of one sink of one pipeline.
pub fn file_prefix(pipeline: &str, sink: &str) -> String {
    format!("part-{pipeline}.{sink}.")
}

/// The window key in a data file name of this sink, if it is one (`None` for other files).
pub(crate) fn window_key_of<'n>(name: &'n str, prefix: &str, extension: &str) -> Option<&'n str> {
    let rest = name
        .strip_prefix(prefix)?
        .strip_suffix(extension)?
        .strip_suffix('.')?;
    let (window, part) = rest.rsplit_once('.')?;
    part.bytes().all(|b| b.is_ascii_digit()).then_some(window)
}

/// Calls `f` with the path and name of every regular file under `root` (a missing `root` has
/// none). Symbolic links are not followed, so a link cannot lead the walk elsewhere.
pub(crate) fn for_each_file(
    root: &Path,
    mut f: impl FnMut(PathBuf, &str) -> Result<()>,
) -> Result<()> {
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let kind = entry.file_type().map_err(|e| Error::io(entry.path(), e))?;
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() {
                let name = entry.file_name();
                f(entry.path(), &name.to_string_lossy())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::testing::window;

    #[test]
    fn options_are_checked_without_io() {
        let ok = LakeOptions {
            path: PathBuf::from("./lake/messages"),
            partition_by: vec!["provider".into(), "sent_date".into()],
            max_rows_per_file: Some(1),
        };
        assert!(ok.validate().is_ok());
        let check = |o: LakeOptions| o.validate().unwrap_err().key;
        assert_eq!(
            check(LakeOptions {
                path: PathBuf::new(),
                ..ok.clone()
            }),
            "path"
        );
        // Object-store URLs are places too; a URL chatlake cannot write to is refused.
        let s3 = LakeOptions {
            path: PathBuf::from("s3://bucket/x"),
            ..ok.clone()
        };
        assert!(s3.validate().is_ok());
        assert!(s3.location().unwrap().is_object());
        assert_eq!(
            check(LakeOptions {
                path: PathBuf::from("ftp://host/x"),
                ..ok.clone()
            }),
            "path"
        );
        assert_eq!(
            check(LakeOptions {
                path: PathBuf::from("s3://key:secret@bucket/x"),
                ..ok.clone()
            }),
            "path"
        );
        assert_eq!(
            check(LakeOptions {
                partition_by: vec!["provider".into(), "provider".into()],
                ..ok.clone()
            }),
            "partition_by[1]"
        );
        assert_eq!(
            check(LakeOptions {
                max_rows_per_file: Some(0),
                ..ok.clone()
            }),
            "max_rows_per_file"
        );
    }

    #[test]
    fn names_files_in_one_place() {
        let w = window("zoom_dm", 12);
        let key = FileKey {
            pipeline: "p",
            sink: "lake",
            run_id: "20250601T000000Z-ab12",
            window: &w,
            partition: "provider=zoom",
            part: 3,
            extension: "parquet",
        };
        assert_eq!(
            file_name(&key),
            format!("part-p.lake.{}.0003.parquet", w.key())
        );
        assert_eq!(
            window_key_of(&file_name(&key), "part-p.lake.", "parquet"),
            Some(w.key().as_str())
        );
        assert_eq!(
            window_key_of("part-p.lake.x.00a1.parquet", "part-p.lake.", "parquet"),
            None
        );
        assert_eq!(
            window_key_of("part-p.lakehouse.x.0001.parquet", "part-p.lake.", "parquet"),
            None
        );
    }
}
