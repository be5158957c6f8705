//! `download_attachments`: each file of a message saved once, by its content, before the rows
//! that name it go downstream.
//!
//! * **Where**: `<attachments_path>/<sha256[..2]>/<sha256><.ext>`, the SHA-256 of the content
//!   and the extension of the file's name; `attachments_path` is a local directory or an
//!   object-store URL. The row's attachment gets that place in `stored_at`.
//! * **Complete before it is named**: locally a temporary file in the target directory, synced,
//!   then renamed; on object storage one `PUT` of the whole file (create-only: an object that
//!   exists already holds the same content). A batch goes downstream only once all its files are
//!   in place, so a committed row never points at a missing file.
//! * **Once**: Zoom's file ids are immutable, so `<attachments_path>/by-file-id/<sha256(id)>`
//!   records which content a file id had, written after the content. A later run (or row) with
//!   the same file id finds it there and downloads nothing; without it the file is downloaded,
//!   hashed, and not written again if its content is already stored.
//! * **Limits**: a file larger than `max_attachment_bytes` (as listed, or once reading passes
//!   the limit) is not stored: a warning, counted in the run summary, and the row keeps its URL
//!   with no `stored_at`. So does a file on a host the token may not go to, and one Zoom no
//!   longer serves.
//! * **Etiquette**: downloads go through the Zoom client's request loop ([`ZoomApi::download`]):
//!   its retries, the account's rate budget, its token, sent only to the API's origin and the
//!   hosts of `download_hosts`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use arrow::array::{Array, ArrayRef, AsArray, ListArray, StringArray, StructArray};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use chatlake_core::metrics::ComponentMetrics;
use chatlake_core::schema::ATTACHMENT_STORED_AT;
use chatlake_http::DownloadHosts;
use chatlake_store::{ObjectLocation, PutMode, RequestFailure, Store, StoreError};
use sha2::{Digest, Sha256};
use url::Url;

use crate::api::{ApiError, Body, ZoomApi};

/// The folder of the file-id index under `attachments_path`.
const BY_FILE_ID: &str = "by-file-id";

/// Why a batch's files could not be stored: its window fails (and is fetched again next run).
#[derive(Debug, thiserror::Error)]
pub enum AttachmentError {
    #[error("downloading attachment {file_id}: {source}")]
    Download {
        file_id: String,
        #[source]
        source: ApiError,
    },
    #[error("storing attachment {file_id}: {source}")]
    Store {
        file_id: String,
        #[source]
        source: StoreError,
    },
    #[error("storing attachment {file_id} at {}: {source}", .path.display())]
    Local {
        file_id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the batch's `files` column: {0}")]
    Column(String),
}

/// Where files go.
pub(crate) enum Place {
    Local(PathBuf),
    Object(Box<(ObjectLocation, Store)>),
}

/// The download settings of one source.
pub(crate) struct Attachments {
    pub place: Place,
    pub max_bytes: u64,
    pub hosts: DownloadHosts,
    /// File id → `stored_at`, for files stored (or found) this run.
    seen: Mutex<HashMap<String, Arc<str>>>,
}

/// What became of one file.
enum Outcome {
    Stored(Arc<str>),
    /// Not stored; the row keeps its URL. The reason goes in the warning and the summary.
    Skipped(String),
}

impl Attachments {
    pub(crate) fn new(place: Place, max_bytes: u64, hosts: DownloadHosts) -> Attachments {
        Attachments {
            place,
            max_bytes,
            hosts,
            seen: Mutex::default(),
        }
    }

    /// `batch` with `stored_at` filled in for each file of its `files` column that is now
    /// stored. Returns only once every file is complete in its final place.
    pub(crate) async fn store_files(
        &self,
        api: &ZoomApi,
        batch: RecordBatch,
        window: &str,
        metrics: &ComponentMetrics,
        component: &str,
    ) -> Result<RecordBatch, AttachmentError> {
        let column = |e: &dyn std::fmt::Display| AttachmentError::Column(e.to_string());
        let index = batch.schema().index_of("files").map_err(|e| column(&e))?;
        let list = batch
            .column(index)
            .as_list_opt::<i32>()
            .ok_or_else(|| column(&"not a list"))?;
        let items = list
            .values()
            .as_struct_opt()
            .ok_or_else(|| column(&"not a list of structs"))?;
        let text = |name: &str| {
            items
                .column_by_name(name)
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| column(&format!("no text field `{name}`")))
        };
        let (ids, names, urls) = (text("file_id")?, text("file_name")?, text("download_url")?);
        let sizes = items
            .column_by_name("file_size")
            .and_then(|c| c.as_primitive_opt::<arrow::datatypes::Int64Type>())
            .ok_or_else(|| column(&"no integer field `file_size`"))?;
        let mut stored_at: Vec<Option<Arc<str>>> = Vec::with_capacity(items.len());
        for i in 0..items.len() {
            if items.is_null(i) || urls.is_null(i) {
                stored_at.push(None);
                continue;
            }
            let file_id = if ids.is_valid(i) { ids.value(i) } else { "" };
            let name = names.is_valid(i).then(|| names.value(i));
            let size = sizes.is_valid(i).then(|| sizes.value(i));
            match self
                .store_one(api, file_id, name, size, urls.value(i), window)
                .await?
            {
                Outcome::Stored(at) => stored_at.push(Some(at)),
                Outcome::Skipped(why) => {
                    tracing::warn!(component, window, file_id, "Attachment not stored: {why}.");
                    metrics.add_skipped(format!("{window}: attachment {file_id}: {why}"));
                    stored_at.push(None);
                }
            }
        }
        let stored_at: ArrayRef = Arc::new(StringArray::from_iter(
            stored_at.iter().map(|s| s.as_deref()),
        ));
        let (fields, mut columns, nulls) = items.clone().into_parts();
        let at = fields
            .find(ATTACHMENT_STORED_AT)
            .map(|(at, _)| at)
            .ok_or_else(|| column(&format!("no field `{ATTACHMENT_STORED_AT}`")))?;
        columns[at] = stored_at;
        let items = StructArray::try_new(fields, columns, nulls).map_err(|e| column(&e))?;
        let (field, offsets, _, nulls) = list.clone().into_parts();
        let list =
            ListArray::try_new(field, offsets, Arc::new(items), nulls).map_err(|e| column(&e))?;
        let mut columns = batch.columns().to_vec();
        columns[index] = Arc::new(list);
        RecordBatch::try_new(batch.schema(), columns).map_err(|e| column(&e))
    }

    async fn store_one(
        &self,
        api: &ZoomApi,
        file_id: &str,
        name: Option<&str>,
        size: Option<i64>,
        url: &str,
        window: &str,
    ) -> Result<Outcome, AttachmentError> {
        let seen = |id: &str| {
            self.seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(id)
                .cloned()
        };
        if let Some(at) = seen(file_id).filter(|_| !file_id.is_empty()) {
            return Ok(Outcome::Stored(at));
        }
        let Ok(url) = Url::parse(url) else {
            return Ok(Outcome::Skipped("its download_url is not a URL".into()));
        };
        if let Err(refused) = self.hosts.token_may_go_to(&url) {
            return Ok(Outcome::Skipped(refused.to_string()));
        }
        let limit = self.max_bytes;
        if size.is_some_and(|size| size > 0 && size as u64 > limit) {
            return Ok(Outcome::Skipped(format!(
                "{} bytes as listed, more than max_attachment_bytes ({limit})",
                size.unwrap_or_default()
            )));
        }
        let download_error = |source| AttachmentError::Download {
            file_id: file_id.to_owned(),
            source,
        };
        if !file_id.is_empty()
            && let Some(relative) = self.indexed(file_id).await?
        {
            let at = self.remember(file_id, &relative);
            return Ok(Outcome::Stored(at));
        }
        let content = match api.download(&url, window, limit).await {
            Ok(Body::Complete(content)) => content,
            Ok(Body::TooLarge { limit }) => {
                return Ok(Outcome::Skipped(format!(
                    "larger than max_attachment_bytes ({limit}); reading stopped there"
                )));
            }
            Err(ApiError::Resource(e)) => {
                return Ok(Outcome::Skipped(format!("Zoom no longer serves it ({e})")));
            }
            Err(e) => return Err(download_error(e)),
        };
        let hash = hex(&Sha256::digest(&content));
        let relative = format!("{}/{hash}{}", &hash[..2], extension(name));
        self.put(file_id, &relative, content).await?;
        if !file_id.is_empty() {
            self.put_index(file_id, &relative).await?;
        }
        Ok(Outcome::Stored(self.remember(file_id, &relative)))
    }

    fn remember(&self, file_id: &str, relative: &str) -> Arc<str> {
        let at: Arc<str> = match &self.place {
            Place::Local(root) => root.join(relative).display().to_string(),
            Place::Object(object) => object.0.join(relative).to_string(),
        }
        .into();
        if !file_id.is_empty() {
            self.seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(file_id.to_owned(), at.clone());
        }
        at
    }

    /// The content's relative name recorded for `file_id`, if that content is in place.
    async fn indexed(&self, file_id: &str) -> Result<Option<String>, AttachmentError> {
        let index = index_name(file_id);
        match &self.place {
            Place::Local(root) => {
                let path = root.join(&index);
                let relative = match tokio::fs::read_to_string(&path).await {
                    Ok(text) => text.trim().to_owned(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(source) => return Err(local(file_id, path, source)),
                };
                let present = tokio::fs::try_exists(root.join(&relative))
                    .await
                    .map_err(|source| local(file_id, root.join(&relative), source))?;
                Ok(present.then_some(relative))
            }
            Place::Object(object) => {
                let store = &object.1;
                let Some((text, _)) = store
                    .read(&store.key(&index))
                    .await
                    .map_err(|source| store_error(file_id, source))?
                else {
                    return Ok(None);
                };
                let relative = String::from_utf8_lossy(&text).trim().to_owned();
                let present = store
                    .read(&store.key(&relative))
                    .await
                    .map_err(|source| store_error(file_id, source))?
                    .is_some();
                Ok(present.then_some(relative))
            }
        }
    }

    /// Writes `content` at `relative` unless it is there already (same name, same content).
    async fn put(
        &self,
        file_id: &str,
        relative: &str,
        content: Bytes,
    ) -> Result<(), AttachmentError> {
        match &self.place {
            Place::Local(root) => {
                let path = root.join(relative);
                let id = file_id.to_owned();
                tokio::task::spawn_blocking(move || write_local(&path, &content, false))
                    .await
                    .map_err(|e| local(&id, root.join(relative), std::io::Error::other(e)))?
                    .map_err(|(path, source)| local(file_id, path, source))
            }
            Place::Object(object) => {
                let store = &object.1;
                match store
                    .write(&store.key(relative), content, PutMode::Create)
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e) if e.failure() == Some(RequestFailure::AlreadyExists) => Ok(()),
                    Err(source) => Err(store_error(file_id, source)),
                }
            }
        }
    }

    /// Records that `file_id` has the content at `relative`; written after the content.
    async fn put_index(&self, file_id: &str, relative: &str) -> Result<(), AttachmentError> {
        let index = index_name(file_id);
        let text = Bytes::from(format!("{relative}\n"));
        match &self.place {
            Place::Local(root) => {
                let path = root.join(&index);
                let id = file_id.to_owned();
                tokio::task::spawn_blocking(move || write_local(&path, &text, true))
                    .await
                    .map_err(|e| local(&id, root.join(&index), std::io::Error::other(e)))?
                    .map_err(|(path, source)| local(file_id, path, source))
            }
            Place::Object(object) => {
                let store = &object.1;
                store
                    .write(&store.key(&index), text, PutMode::Overwrite)
                    .await
                    .map(|_| ())
                    .map_err(|source| store_error(file_id, source))
            }
        }
    }
}

/// Writes `content` to a temporary file beside `path`, syncs it and renames it to `path`, so
/// `path` is either absent or complete. An existing `path` is kept unless `replace`.
fn write_local(
    path: &Path,
    content: &[u8],
    replace: bool,
) -> Result<(), (PathBuf, std::io::Error)> {
    if !replace && path.exists() {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let at = |e| (dir.to_path_buf(), e);
    std::fs::create_dir_all(dir).map_err(at)?;
    let mut temp = tempfile::Builder::new()
        .prefix(".chatlake-")
        .tempfile_in(dir)
        .map_err(at)?;
    temp.write_all(content).map_err(at)?;
    temp.as_file().sync_all().map_err(at)?;
    temp.persist(path)
        .map_err(|e| (path.to_path_buf(), e.error))?;
    Ok(())
}

fn local(file_id: &str, path: PathBuf, source: std::io::Error) -> AttachmentError {
    AttachmentError::Local {
        file_id: file_id.to_owned(),
        path,
        source,
    }
}

fn store_error(file_id: &str, source: StoreError) -> AttachmentError {
    AttachmentError::Store {
        file_id: file_id.to_owned(),
        source,
    }
}

/// `by-file-id/<sha256(file id)>`: any id becomes a safe name.
fn index_name(file_id: &str) -> String {
    format!("{BY_FILE_ID}/{}", hex(&Sha256::digest(file_id.as_bytes())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `.png` for `photo.PNG`: the name's extension in lower case, if it is a short run of letters
/// and digits (nothing that could change the path).
fn extension(name: Option<&str>) -> String {
    let Some(ext) = name
        .and_then(|n| n.rsplit_once('.'))
        .map(|(_, ext)| ext)
        .filter(|ext| {
            !ext.is_empty() && ext.len() <= 16 && ext.chars().all(|c| c.is_ascii_alphanumeric())
        })
    else {
        return String::new();
    };
    format!(".{}", ext.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_are_short_and_safe() {
        assert_eq!(extension(Some("photo.PNG")), ".png");
        assert_eq!(extension(Some("a.tar.gz")), ".gz");
        assert_eq!(extension(Some("noext")), "");
        assert_eq!(extension(Some("x./../etc")), "");
        assert_eq!(extension(Some("x.")), "");
        assert_eq!(extension(None), "");
    }

    #[test]
    fn a_local_write_is_complete_and_keeps_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ab/abcd.png");
        write_local(&path, b"first", false).unwrap();
        write_local(&path, b"second", false).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        write_local(&path, b"second", true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("ab"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["abcd.png"], "no temporary file is left");
    }
}
