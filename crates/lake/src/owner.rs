//! Who writes a sink's path: a small manifest in the sink's root,
//! `_chatlake.<pipeline>.<sink>.owner`, naming the state directory whose ledger decides which of
//! the sink's files are legitimate.
//!
//! A sink deletes, when it starts, its files of windows its ledger does not list. Two state
//! directories writing the same files (a copy of a pipeline file with another `state_dir`, the
//! same file run from another working directory) would each delete the other's windows, so the
//! first to write a path claims it and any other refuses to start. The manifest's name starts
//! with `_` and ends in `.owner`, so no reader's glob of data files (`*.parquet`, `*.jsonl*`,
//! `*.csv*`) matches it and Hive readers skip it; it is one file per pipeline and sink, as
//! pipelines of other names share a path safely (their file names differ).

use std::fs;
use std::path::{Path, PathBuf};

use chatlake_core::durable::sync_dir;
use chatlake_core::stage::StateOwner;

use crate::error::{Error, Result};

/// The manifest's file name for sink `sink` of `pipeline`.
pub fn manifest_name(pipeline: &str, sink: &str) -> String {
    format!("_chatlake.{pipeline}.{sink}.owner")
}

/// Claims `root` for `owner` (writing the manifest if there is none), or fails with
/// [`Error::OwnedElsewhere`] when another state directory owns it.
pub(crate) fn claim(root: &Path, pipeline: &str, sink: &str, owner: &StateOwner) -> Result<()> {
    let path = root.join(manifest_name(pipeline, sink));
    if let Some(found) = read(&path)? {
        return check(&path, found, pipeline, owner);
    }
    fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    let state_dir = std::path::absolute(&owner.dir).unwrap_or_else(|_| owner.dir.clone());
    let text = format!(
        "chatlake sink owner\npipeline={pipeline}\nsink={sink}\nstate_id={}\nstate_dir={}\n",
        owner.id,
        state_dir.display()
    );
    // Written whole under a name of this process, then linked into place: a link fails if the
    // manifest exists, so of two runs claiming at once exactly one wins and the other reads it.
    let tmp = root.join(format!(
        "{}.{}.tmp",
        manifest_name(pipeline, sink),
        std::process::id()
    ));
    chatlake_core::durable::write_atomic(&tmp, text.as_bytes())?;
    let linked = fs::hard_link(&tmp, &path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(root)?;
            tracing::info!(path = %root.display(), sink, "claimed the sink's path for this state directory");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match read(&path)? {
            Some(found) => check(&path, found, pipeline, owner),
            None => Err(Error::io(&path, e)),
        },
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// The owner a manifest names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub state_id: String,
    pub state_dir: PathBuf,
}

fn read(path: &Path) -> Result<Option<Owner>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    };
    match field("state_id") {
        Some(state_id) if !state_id.is_empty() => Ok(Some(Owner {
            state_id,
            state_dir: PathBuf::from(field("state_dir").unwrap_or_default()),
        })),
        _ => Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a chatlake owner manifest (no state_id line); remove it if no pipeline writes here",
            ),
        )),
    }
}

fn check(path: &Path, found: Owner, pipeline: &str, owner: &StateOwner) -> Result<()> {
    if found.state_id == owner.id {
        return Ok(());
    }
    Err(Error::OwnedElsewhere {
        manifest: path.to_path_buf(),
        pipeline: pipeline.to_string(),
        theirs: found,
        ours: std::path::absolute(&owner.dir).unwrap_or_else(|_| owner.dir.clone()),
    })
}
