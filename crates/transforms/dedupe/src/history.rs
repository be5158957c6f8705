//! What earlier runs of a `keep = "latest"` dedupe with `across_runs` loaded: per run, one file
//! `<state_dir>/dedupe/<name>/<run_id>.latest` of (128-bit key hash, version, window) for every
//! row it emitted. The next run reads them back as *prior* rows that compete with its input (a
//! prior row wins a tie, so a row fetched again unchanged is not loaded twice), and learns which
//! window holds the row a newer version replaces.
//!
//! A record counts only if the ledger lists its window as committed *by the run that wrote the
//! file*: a window that never committed loaded nothing, and one committed again by a later run
//! (after `state reset`) has that run's records. A file none of whose windows count is deleted.
//!
//! Layout: `CLLATEST`, the number of windows (u32 LE), each window key (u16 LE length, bytes),
//! then 28-byte records: hash (u128 LE), version (i64 LE), window index (u32 LE). Written to a
//! temporary name, fsynced and renamed before any of the run's windows can commit.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use chatlake_core::durable;

use crate::error::{Context, SpillError};

const MAGIC: &[u8; 8] = b"CLLATEST";
const EXT: &str = "latest";
const RECORD: usize = 28;

/// The history files of one transform.
pub(crate) struct History {
    pub(crate) dir: PathBuf,
    /// Window key → the run that committed it.
    pub(crate) committed_by: Arc<HashMap<String, String>>,
    /// `remember`: files last written before this are left unread.
    pub(crate) since: Option<SystemTime>,
    /// Committed windows this run loads again (see `Transform::windows_loaded_again`).
    pub(crate) loaded_again: Arc<HashSet<String>>,
}

impl History {
    /// Calls `f(hash, version, window)` for every record that counts; `window` indexes the
    /// returned table of window keys.
    pub(crate) fn load(
        &self,
        mut f: impl FnMut(u128, i64, u32) -> Result<(), SpillError>,
    ) -> Result<Vec<String>, SpillError> {
        let mut table: Vec<String> = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(table),
            Err(e) => return Err(e).reading(&self.dir),
        };
        let mut paths: Vec<PathBuf> = entries
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .reading(&self.dir)?;
        paths.sort();
        let mut forgotten = 0usize;
        for path in paths {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.ends_with(&format!(".{EXT}.tmp")) {
                // A run that died before its commit point: it committed none of its windows.
                std::fs::remove_file(&path).writing(&path)?;
                continue;
            }
            let Some(run_id) = name.strip_suffix(&format!(".{EXT}")) else {
                continue;
            };
            let file = File::open(&path).reading(&path)?;
            if let Some(since) = self.since
                && file.metadata().and_then(|m| m.modified()).reading(&path)? < since
            {
                forgotten += 1;
                continue;
            }
            let mut reader = BufReader::with_capacity(64 * 1024, file);
            let windows = read_header(&mut reader).reading(&path)?;
            // This file's window index → the table's, for windows that count.
            let mut map: Vec<Option<u32>> = Vec::with_capacity(windows.len());
            let mut keep = false;
            for w in windows {
                let committed = self.committed_by.get(&w).map(String::as_str) == Some(run_id);
                keep |= committed;
                let counts = committed && !self.loaded_again.contains(&w);
                map.push(counts.then(|| {
                    table.push(w);
                    (table.len() - 1) as u32
                }));
            }
            if !keep {
                drop(reader);
                std::fs::remove_file(&path).writing(&path)?;
                continue;
            }
            let mut buf = [0u8; RECORD];
            loop {
                match reader.read_exact(&mut buf) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e).reading(&path),
                }
                let hash = u128::from_le_bytes(buf[..16].try_into().expect("16 bytes"));
                let version = i64::from_le_bytes(buf[16..24].try_into().expect("8 bytes"));
                let w = u32::from_le_bytes(buf[24..].try_into().expect("4 bytes"));
                let Some(Some(w)) = map.get(w as usize) else {
                    continue;
                };
                f(hash, version, *w)?;
            }
        }
        if forgotten > 0 {
            tracing::info!(
                dir = %self.dir.display(),
                runs = forgotten,
                "rows loaded before `remember` reaches back are not compared"
            );
        }
        Ok(table)
    }

    /// Starts this run's file for rows of `windows`.
    pub(crate) fn writer(
        &self,
        run_id: &str,
        windows: &[String],
    ) -> Result<HistoryWriter, SpillError> {
        durable::create_private_dir_all(&self.dir).writing(&self.dir)?;
        let path = self.dir.join(format!("{run_id}.{EXT}"));
        let tmp = self.dir.join(format!("{run_id}.{EXT}.tmp"));
        let file = durable::create_private_file(&tmp).writing(&tmp)?;
        let mut out = BufWriter::with_capacity(64 * 1024, file);
        write_header(&mut out, windows).writing(&tmp)?;
        Ok(HistoryWriter {
            path,
            tmp,
            out,
            records: 0,
        })
    }
}

fn write_header(out: &mut impl Write, windows: &[String]) -> std::io::Result<()> {
    out.write_all(MAGIC)?;
    out.write_all(&(windows.len() as u32).to_le_bytes())?;
    for w in windows {
        out.write_all(&(w.len() as u16).to_le_bytes())?;
        out.write_all(w.as_bytes())?;
    }
    Ok(())
}

fn read_header(r: &mut impl Read) -> std::io::Result<Vec<String>> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid("not a dedupe history file"));
    }
    let mut n = [0u8; 4];
    r.read_exact(&mut n)?;
    let mut windows = Vec::new();
    for _ in 0..u32::from_le_bytes(n) {
        let mut len = [0u8; 2];
        r.read_exact(&mut len)?;
        let mut key = vec![0u8; u16::from_le_bytes(len) as usize];
        r.read_exact(&mut key)?;
        windows.push(String::from_utf8(key).map_err(|_| invalid("a window key is not UTF-8"))?);
    }
    Ok(windows)
}

/// This run's history file, open until [`HistoryWriter::commit`].
pub(crate) struct HistoryWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    records: u64,
}

impl HistoryWriter {
    pub(crate) fn push(&mut self, hash: u128, version: i64, window: u32) -> Result<(), SpillError> {
        let mut buf = [0u8; RECORD];
        buf[..16].copy_from_slice(&hash.to_le_bytes());
        buf[16..24].copy_from_slice(&version.to_le_bytes());
        buf[24..].copy_from_slice(&window.to_le_bytes());
        self.records += 1;
        self.out.write_all(&buf).writing(&self.tmp)
    }

    /// Flush, fsync, rename into place, fsync the directory; a run that emitted nothing (all of
    /// its input was loaded before) leaves no file.
    pub(crate) fn commit(self) -> Result<(), SpillError> {
        if self.records == 0 {
            drop(self.out);
            return std::fs::remove_file(&self.tmp).writing(&self.tmp);
        }
        let file = self
            .out
            .into_inner()
            .map_err(|e| e.into_error())
            .writing(&self.tmp)?;
        durable::commit_file(file, &self.tmp, &self.path)?;
        Ok(durable::sync_dir(
            self.path.parent().unwrap_or(Path::new(".")),
        )?)
    }
}
