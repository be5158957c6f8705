//! Taking rows out of a sink's committed files ([`chatlake_core::Sink::remove_rows`] for
//! [`crate::FileSink`]): find the window's files, skip those no key can be in, and replace each
//! of the others by a copy without the rows, or delete it when no row is left.
//!
//! Key columns in `partition_by` are not in the files: they are compared with the file's
//! directory (`provider=zoom`), so a key only removes rows of files in its own partition, and
//! files of other partitions are not read. The other key columns are compared row by row by the
//! format ([`FileFormat::filter_file`]).
//!
//! Each file is replaced the way a window's files are committed: the copy is written to `<name>.tmp` (which
//! the sink's startup cleanup removes if the process dies first), fsynced and renamed over the
//! original, then the directory is fsynced. A kill at any point leaves the old file or the new
//! one. Rows already gone are not found again, so removing twice changes nothing.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use chatlake_core::durable::{commit_file, sync_dir};
use chatlake_core::removal::{Removal, encode_cell, key_cell};

use crate::error::{Error, Result};
use crate::format::{FileFormat, Filtered};
use crate::layout::{LakeOptions, for_each_file, window_key_of};
use crate::partition::{DEFAULT_PARTITION, escape_path_name, segment_value};

/// What one removal did to a window's files.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Removed {
    /// Files replaced by a copy without some rows.
    pub rewritten: usize,
    /// Files deleted because no row was left.
    pub deleted: usize,
    pub rows: u64,
}

/// Takes the rows `removal` names out of the files of `removal.window` under `options.path`
/// whose names start with `prefix` (this sink's files).
pub(crate) fn remove_rows(
    format: &dyn FileFormat,
    options: &LakeOptions,
    prefix: &str,
    removal: &Removal,
) -> Result<Removed> {
    let mut removed = Removed::default();
    if removal.keys.num_rows() == 0 {
        return Ok(removed);
    }
    let keys = Keys::new(removal, &options.partition_by)?;
    let root = options.path.as_path();
    let mut touched_dirs = BTreeSet::new();
    for path in window_files(root, prefix, format.extension(), &removal.window)? {
        let directory = directory_segments(root, &path);
        let (columns, wanted) = keys.for_directory(&directory);
        if wanted.is_empty() {
            continue;
        }
        let goes = |key: &[u8]| wanted.contains(key);
        let counted = filter(format, &path, &columns, &goes, None)?;
        if counted.dropped == 0 {
            continue;
        }
        if counted.kept == 0 {
            fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            removed.deleted += 1;
            removed.rows += counted.dropped;
        } else {
            removed.rows += rewrite(format, &path, &columns, &goes)?;
            removed.rewritten += 1;
        }
        if let Some(dir) = path.parent() {
            touched_dirs.insert(dir.to_path_buf());
        }
    }
    // The renames and deletions are durable only once their directories are.
    for dir in &touched_dirs {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// Replaces `path` by a copy without the rows `goes` picks; returns how many went.
fn rewrite(
    format: &dyn FileFormat,
    path: &Path,
    columns: &[&str],
    goes: &dyn Fn(&[u8]) -> bool,
) -> Result<u64> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // Truncates a copy a killed run left half written.
    let output = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let written = filter(format, path, columns, goes, Some(output)).and_then(|filtered| {
        let file = filtered.output.ok_or_else(|| Error::Remove {
            path: path.to_path_buf(),
            source: "the format did not hand the rewritten file back".into(),
        })?;
        commit_file(file, &tmp, path)?;
        Ok(filtered.dropped)
    });
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn filter(
    format: &dyn FileFormat,
    path: &Path,
    columns: &[&str],
    goes: &dyn Fn(&[u8]) -> bool,
    output: Option<File>,
) -> Result<Filtered> {
    let input = File::open(path).map_err(|e| Error::io(path, e))?;
    format
        .filter_file(input, columns, goes, output)
        .map_err(|source| Error::Remove {
            path: path.to_path_buf(),
            source,
        })
}

/// The committed data files of `window` under `root` whose names start with `prefix`, sorted;
/// temporary files and files of other windows are left out.
fn window_files(root: &Path, prefix: &str, extension: &str, window: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for_each_file(root, |path, name| {
        if window_key_of(name, prefix, extension) == Some(window) {
            files.push(path);
        }
        Ok(())
    })?;
    files.sort();
    Ok(files)
}

/// The `name=value` segments of the directory of `path` below `root`, as they are on disk
/// (escaped).
fn directory_segments(root: &Path, path: &Path) -> Vec<(String, String)> {
    let Some(dir) = path.parent().and_then(|d| d.strip_prefix(root).ok()) else {
        return Vec::new();
    };
    dir.components()
        .filter_map(|c| {
            let segment = c.as_os_str().to_string_lossy();
            let (name, value) = segment.split_once('=')?;
            Some((name.to_string(), value.to_string()))
        })
        .collect()
}

/// The directory segment value the sink writes for a partition value of the column whose
/// escaped name is `escaped_name`, as [`crate::partition`] does: escaped (a value too long for
/// a directory name shortened with a hash), null and empty text as [`DEFAULT_PARTITION`].
fn directory_value(escaped_name: &str, cell: Option<&str>) -> String {
    match cell {
        Some(v) if !v.is_empty() => segment_value(escaped_name, v).0,
        _ => DEFAULT_PARTITION.to_string(),
    }
}

/// A removal's key rows as text, with the key columns that name directories set apart.
pub(crate) struct Keys {
    columns: Vec<String>,
    /// Per key column, its escaped name if it is a partition column.
    partition_names: Vec<Option<String>>,
    /// Per key row, its cells ([`key_cell`] text, `None` for null).
    rows: Vec<Vec<Option<String>>>,
    /// Key rows by the directory values of their partition key columns (in column order).
    by_directory: HashMap<Vec<String>, Vec<usize>>,
}

impl Keys {
    pub(crate) fn new(removal: &Removal, partition_by: &[String]) -> Result<Self> {
        let schema = removal.keys.schema();
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let partition_names: Vec<Option<String>> = columns
            .iter()
            .map(|c| partition_by.contains(c).then(|| escape_path_name(c)))
            .collect();
        let mut rows = Vec::with_capacity(removal.keys.num_rows());
        for row in 0..removal.keys.num_rows() {
            let cells = removal
                .keys
                .columns()
                .iter()
                .map(|column| {
                    key_cell(column.as_ref(), row)
                        .map(|cell| cell.map(|c| c.into_owned()))
                        .map_err(Error::RemovalKeys)
                })
                .collect::<Result<Vec<_>>>()?;
            rows.push(cells);
        }
        let mut by_directory: HashMap<Vec<String>, Vec<usize>> = HashMap::new();
        for (i, cells) in rows.iter().enumerate() {
            let values = cells
                .iter()
                .zip(&partition_names)
                .filter_map(|(cell, p)| Some(directory_value(p.as_deref()?, cell.as_deref())))
                .collect();
            by_directory.entry(values).or_default().push(i);
        }
        Ok(Keys {
            columns,
            partition_names,
            rows,
            by_directory,
        })
    }

    /// For a file in `directory`: the key columns to compare inside it, and the encoded keys
    /// ([`encode_cell`] over those columns) of the rows to drop. Empty keys: nothing there.
    pub(crate) fn for_directory(
        &self,
        directory: &[(String, String)],
    ) -> (Vec<&str>, HashSet<Vec<u8>>) {
        // A partition key column whose segment the directory lacks (a file written before the
        // column was in `partition_by`) is compared inside the file instead.
        let in_directory: Vec<Option<&str>> = self
            .partition_names
            .iter()
            .map(|name| {
                let name = name.as_deref()?;
                directory
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str())
            })
            .collect();
        let in_file: Vec<usize> = (0..self.columns.len())
            .filter(|&j| in_directory[j].is_none())
            .collect();
        let every_partition_column_in_directory = self
            .partition_names
            .iter()
            .zip(&in_directory)
            .all(|(name, value)| name.is_none() || value.is_some());
        let candidates: Vec<usize> = if every_partition_column_in_directory {
            let values: Vec<String> = in_directory
                .iter()
                .flatten()
                .map(|v| v.to_string())
                .collect();
            self.by_directory.get(&values).cloned().unwrap_or_default()
        } else {
            (0..self.rows.len())
                .filter(|&i| {
                    in_directory.iter().enumerate().all(|(j, value)| {
                        value.is_none_or(|v| {
                            let name = self.partition_names[j].as_deref().unwrap_or_default();
                            directory_value(name, self.rows[i][j].as_deref()) == v
                        })
                    })
                })
                .collect()
        };
        let wanted = candidates
            .into_iter()
            .map(|i| {
                let mut key = Vec::new();
                for &j in &in_file {
                    encode_cell(&mut key, self.rows[i][j].as_deref().map(str::as_bytes));
                }
                key
            })
            .collect();
        let columns = in_file.iter().map(|&j| self.columns[j].as_str()).collect();
        (columns, wanted)
    }
}

#[cfg(test)]
mod tests;
