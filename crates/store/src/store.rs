//! [`Store`]: an object store opened at a [`ObjectLocation`], with the few operations a lake
//! and a state directory need: whole-file uploads that are visible only once complete (and
//! whose unfinished multipart uploads a later run can abort), downloads, listing, conditional
//! puts, and the check a run makes before it fetches anything.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use chatlake_core::secret::{Secret, redact};
use futures::stream::{FuturesOrdered, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::{
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::location::{ObjectLocation, StoreKind};
use crate::options::StorageOptions;

/// Files up to this size are uploaded with one PUT; larger ones in parts of this size.
pub const PART_BYTES: usize = 16 << 20;

/// Parts of one upload in flight at once: bounds the memory an upload holds to about
/// `PART_BYTES × (PARTS_IN_FLIGHT + 1)`.
pub const PARTS_IN_FLIGHT: usize = 2;

/// Where a store keeps the journal of its multipart uploads in progress, below its location:
/// an upload is listed here from its start to its completion, so a run killed mid-upload
/// leaves a note the next run aborts it by. No data extension, so no reader's glob sees it.
pub const UPLOADS_DIR: &str = "_chatlake_uploads";

/// Where the start-up check writes its probe objects, below the location.
const PROBE_DIR: &str = "_chatlake_probe";

/// Why an object-store operation failed. Messages name the URL and say what the store answered,
/// with every credential taken out.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{url}: cannot set up the store: {message}")]
    Configure { url: String, message: String },
    #[error("{url}: {action} failed: {message}")]
    Request {
        url: String,
        action: &'static str,
        message: String,
        /// What object_store said, for callers that tell "not found" or "already exists" apart.
        kind: RequestFailure,
    },
    #[error(
        "{url}: the store does not honour conditional writes (a second create-only PUT of `{key}` succeeded); chatlake needs them so that two writers can never both commit. Use a store that supports `If-None-Match` (S3, SeaweedFS, MinIO, R2, GCS, Azure)"
    )]
    NoConditionalPut { url: String, key: String },
    #[error("{path}: {source}")]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The kind of a failed request, as object_store classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFailure {
    NotFound,
    AlreadyExists,
    Precondition,
    Other,
}

impl StoreError {
    pub fn failure(&self) -> Option<RequestFailure> {
        match self {
            StoreError::Request { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// An object store opened at a location. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    multipart: Arc<dyn MultipartStore>,
    location: ObjectLocation,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.location.to_string())
            .finish_non_exhaustive()
    }
}

/// Environment variables whose values are credentials: remembered for
/// [`chatlake_core::secret::redact`], so no error or log line repeats them.
const SECRET_VARIABLES: [&str; 8] = [
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS_JSON",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_CLIENT_SECRET",
];

impl Store {
    /// Opens the store `location` names, configured from the standard environment variables
    /// and then `options`. No request is made (see [`Store::check`]).
    pub fn open(location: &ObjectLocation, options: &StorageOptions) -> Result<Store, StoreError> {
        for name in SECRET_VARIABLES {
            if let Ok(value) = std::env::var(name)
                && !value.is_empty()
            {
                Secret::new(value);
            }
        }
        let url = location.url().as_str();
        let configure = |e: object_store::Error| StoreError::Configure {
            url: url.to_string(),
            message: redact(&e.to_string()).into_owned(),
        };
        let (inner, multipart): (Arc<dyn ObjectStore>, Arc<dyn MultipartStore>) =
            match location.kind() {
                StoreKind::AmazonS3 => {
                    let mut b = AmazonS3Builder::from_env().with_url(url);
                    if let Some(v) = &options.endpoint {
                        b = b.with_endpoint(v);
                    }
                    if let Some(v) = &options.region {
                        b = b.with_region(v);
                    }
                    if let Some(v) = options.allow_http {
                        b = b.with_allow_http(v);
                    }
                    if let Some(v) = &options.access_key_id {
                        b = b.with_access_key_id(v.expose());
                    }
                    if let Some(v) = &options.secret_access_key {
                        b = b.with_secret_access_key(v.expose());
                    }
                    if let Some(v) = &options.session_token {
                        b = b.with_token(v.expose());
                    }
                    if let Some(v) = options.virtual_hosted_style {
                        b = b.with_virtual_hosted_style_request(v);
                    }
                    for (key, value) in &options.options {
                        b = b.with_config(key.parse().map_err(configure)?, value.expose());
                    }
                    let s3 = Arc::new(b.build().map_err(configure)?);
                    (s3.clone(), s3)
                }
                StoreKind::GoogleCloudStorage => {
                    let mut b = GoogleCloudStorageBuilder::from_env().with_url(url);
                    for (key, value) in &options.options {
                        b = b.with_config(key.parse().map_err(configure)?, value.expose());
                    }
                    let gcs = Arc::new(b.build().map_err(configure)?);
                    (gcs.clone(), gcs)
                }
                StoreKind::MicrosoftAzure => {
                    let mut b = MicrosoftAzureBuilder::from_env().with_url(url);
                    if let Some(v) = &options.endpoint {
                        b = b.with_endpoint(v.clone());
                    }
                    if let Some(v) = options.allow_http {
                        b = b.with_allow_http(v);
                    }
                    for (key, value) in &options.options {
                        b = b.with_config(key.parse().map_err(configure)?, value.expose());
                    }
                    let azure = Arc::new(b.build().map_err(configure)?);
                    (azure.clone(), azure)
                }
            };
        Ok(Store {
            inner,
            multipart,
            location: location.clone(),
        })
    }

    pub fn location(&self) -> &ObjectLocation {
        &self.location
    }

    /// The object_store client, for what this type does not wrap (a Delta log store).
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// The key of `relative` below the location.
    pub fn key(&self, relative: &str) -> ObjectPath {
        self.location.key(relative)
    }

    fn failed(&self, action: &'static str, key: &ObjectPath, e: object_store::Error) -> StoreError {
        let kind = match &e {
            object_store::Error::NotFound { .. } => RequestFailure::NotFound,
            object_store::Error::AlreadyExists { .. } => RequestFailure::AlreadyExists,
            object_store::Error::Precondition { .. } => RequestFailure::Precondition,
            _ => RequestFailure::Other,
        };
        StoreError::Request {
            url: self.location.display_key(key),
            action,
            message: redact(&e.to_string()).into_owned(),
            kind,
        }
    }

    /// What a run checks before it fetches anything: the bucket exists and the credentials
    /// may list, write and delete below the location, and the store refuses a second
    /// create-only PUT of one key (conditional writes, which the ledger and the lock rely on).
    pub async fn check(&self) -> Result<(), StoreError> {
        let prefix = self.location.prefix().clone();
        self.inner
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| self.failed("listing", &prefix, e))?;
        let probe = self.key(&format!(
            "{PROBE_DIR}/{}-{}",
            std::process::id(),
            chrono_free_nanos()
        ));
        let create = || PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.inner
            .put_opts(&probe, PutPayload::from_static(b"probe"), create())
            .await
            .map_err(|e| self.failed("a test write", &probe, e))?;
        let second = self
            .inner
            .put_opts(&probe, PutPayload::from_static(b"again"), create())
            .await;
        let deleted = self
            .inner
            .delete(&probe)
            .await
            .map_err(|e| self.failed("deleting a test write", &probe, e));
        match second {
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {}
            Ok(_) => {
                return Err(StoreError::NoConditionalPut {
                    url: self.location.to_string(),
                    key: probe.to_string(),
                });
            }
            Err(e) => return Err(self.failed("a second create-only write", &probe, e)),
        }
        deleted
    }

    /// Every object below `relative` (`""`: below the location), in no particular order.
    pub async fn list(&self, relative: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let prefix = self.key(relative);
        self.inner
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.failed("listing", &prefix, e))
    }

    /// Reads a whole (small) object, with the version a conditional update of it needs;
    /// `None` if there is none.
    pub async fn read(
        &self,
        key: &ObjectPath,
    ) -> Result<Option<(Bytes, UpdateVersion)>, StoreError> {
        let got = match self.inner.get(key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.failed("reading", key, e)),
        };
        let version = UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        let bytes = got
            .bytes()
            .await
            .map_err(|e| self.failed("reading", key, e))?;
        Ok(Some((bytes, version)))
    }

    /// Writes a whole (small) object with `mode`: `Create` fails with
    /// [`RequestFailure::AlreadyExists`] if it exists, `Update` with
    /// [`RequestFailure::Precondition`] if another writer changed it. Returns the new version.
    pub async fn write(
        &self,
        key: &ObjectPath,
        bytes: Bytes,
        mode: PutMode,
    ) -> Result<UpdateVersion, StoreError> {
        let put = self
            .inner
            .put_opts(
                key,
                PutPayload::from(bytes),
                PutOptions {
                    mode,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| self.failed("writing", key, e))?;
        Ok(UpdateVersion {
            e_tag: put.e_tag,
            version: put.version,
        })
    }

    pub async fn delete(&self, key: &ObjectPath) -> Result<(), StoreError> {
        match self.inner.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed("deleting", key, e)),
        }
    }

    /// Uploads the local file `local` to `key`. The object appears whole when the upload
    /// completes and not before; a file larger than [`PART_BYTES`] goes in parts, at most
    /// [`PARTS_IN_FLIGHT`] at once, journaled under [`UPLOADS_DIR`] until it completes (see
    /// [`Store::abort_unfinished_uploads`]). Returns the bytes uploaded.
    pub async fn upload(&self, local: &Path, key: &ObjectPath) -> Result<u64, StoreError> {
        let local_error = |e| StoreError::Local {
            path: local.to_path_buf(),
            source: e,
        };
        let mut file = tokio::fs::File::open(local).await.map_err(local_error)?;
        let size = file.metadata().await.map_err(local_error)?.len();
        if size <= PART_BYTES as u64 {
            let mut buffer = Vec::with_capacity(size as usize);
            file.read_to_end(&mut buffer).await.map_err(local_error)?;
            self.inner
                .put(key, PutPayload::from(buffer))
                .await
                .map_err(|e| self.failed("uploading", key, e))?;
            return Ok(size);
        }
        let id = self
            .multipart
            .create_multipart(key)
            .await
            .map_err(|e| self.failed("starting a multipart upload", key, e))?;
        let note = self.upload_note(key);
        let noted = serde_json::json!({ "key": key.as_ref(), "upload_id": id });
        if let Err(e) = self
            .write(&note, Bytes::from(noted.to_string()), PutMode::Overwrite)
            .await
        {
            let _ = self.multipart.abort_multipart(key, &id).await;
            return Err(e);
        }
        let result = self.upload_parts(&mut file, key, &id).await;
        match result {
            Ok(parts) => {
                self.multipart
                    .complete_multipart(key, &id, parts)
                    .await
                    .map_err(|e| self.failed("completing a multipart upload", key, e))?;
                self.delete(&note).await?;
                Ok(size)
            }
            Err(e) => {
                if self.multipart.abort_multipart(key, &id).await.is_ok() {
                    let _ = self.delete(&note).await;
                }
                Err(e)
            }
        }
    }

    async fn upload_parts(
        &self,
        file: &mut tokio::fs::File,
        key: &ObjectPath,
        id: &str,
    ) -> Result<Vec<PartId>, StoreError> {
        let id = id.to_string();
        let mut parts = Vec::new();
        let mut in_flight = FuturesOrdered::new();
        let mut index = 0;
        let mut left = file.metadata().await.map_or(PART_BYTES as u64, |m| m.len());
        loop {
            // No more than the file holds: most staged files are far smaller than a part.
            let mut part = Vec::with_capacity(PART_BYTES.min(left as usize));
            let mut eof = false;
            while part.len() < PART_BYTES {
                let read = (&mut *file)
                    .take((PART_BYTES - part.len()) as u64)
                    .read_to_end(&mut part)
                    .await
                    .map_err(|e| StoreError::Local {
                        path: PathBuf::from(key.as_ref()),
                        source: e,
                    })?;
                if read == 0 {
                    eof = true;
                    break;
                }
            }
            left = left.saturating_sub(part.len() as u64);
            if !part.is_empty() {
                let multipart = self.multipart.clone();
                let (key, id) = (key.clone(), id.clone());
                in_flight.push_back(async move {
                    multipart
                        .put_part(&key, &id, index, PutPayload::from(part))
                        .await
                });
                index += 1;
            }
            while in_flight.len() >= PARTS_IN_FLIGHT || (eof && !in_flight.is_empty()) {
                let done = in_flight.next().await.expect("not empty");
                parts.push(done.map_err(|e| self.failed("uploading a part", key, e))?);
            }
            if eof {
                return Ok(parts);
            }
        }
    }

    /// Uploads the local file `local` as the parts of the multipart upload `upload_id` of `key`
    /// ([`Store::start_staged`]) without completing it: no reader sees anything of it until
    /// [`Store::complete_staged`]. The caller journals the upload id before calling this (so a
    /// killed run's upload can be aborted) and the returned [`StagedUpload`] after (so it can be
    /// completed). On failure the upload is aborted (best effort).
    pub async fn stage(
        &self,
        local: &Path,
        key: &ObjectPath,
        upload_id: &str,
    ) -> Result<StagedUpload, StoreError> {
        let local_error = |e| StoreError::Local {
            path: local.to_path_buf(),
            source: e,
        };
        let mut file = tokio::fs::File::open(local).await.map_err(local_error)?;
        let bytes = file.metadata().await.map_err(local_error)?.len();
        let mut uploaded = self.upload_parts(&mut file, key, upload_id).await;
        if let Ok(parts) = &mut uploaded
            && parts.is_empty()
        {
            // An upload needs a part to complete; an empty file is one empty part.
            match self
                .multipart
                .put_part(key, &upload_id.to_string(), 0, PutPayload::default())
                .await
            {
                Ok(part) => parts.push(part),
                Err(e) => uploaded = Err(self.failed("uploading a part", key, e)),
            }
        }
        match uploaded {
            Ok(parts) => Ok(StagedUpload {
                key: key.as_ref().to_string(),
                upload_id: upload_id.to_string(),
                parts: parts.into_iter().map(|p| p.content_id).collect(),
                bytes,
            }),
            Err(e) => {
                let _ = self.abort_staged(key, upload_id).await;
                Err(e)
            }
        }
    }

    /// Starts a multipart upload of `key` (see [`Store::stage`]); returns its id.
    pub async fn start_staged(&self, key: &ObjectPath) -> Result<String, StoreError> {
        self.multipart
            .create_multipart(key)
            .await
            .map_err(|e| self.failed("starting a multipart upload", key, e))
    }

    /// Completes a staged upload: its object appears whole, at once. Idempotent: an upload the
    /// store no longer knows whose object is there was completed before (a run killed between
    /// completing it and forgetting it). Returns false if neither the upload nor the object is
    /// there (something else aborted it).
    pub async fn complete_staged(&self, staged: &StagedUpload) -> Result<bool, StoreError> {
        let key = stored_key(&staged.key);
        let parts = staged
            .parts
            .iter()
            .map(|id| PartId {
                content_id: id.clone(),
            })
            .collect();
        match self
            .multipart
            .complete_multipart(&key, &staged.upload_id, parts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => match self.inner.head(&key).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(self.failed("reading", &key, e)),
            },
            Err(e) => Err(self.failed("completing a multipart upload", &key, e)),
        }
    }

    /// Aborts a staged (or started) upload; one the store no longer knows is gone already.
    pub async fn abort_staged(&self, key: &ObjectPath, upload_id: &str) -> Result<(), StoreError> {
        match self
            .multipart
            .abort_multipart(key, &upload_id.to_string())
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed("aborting a multipart upload", key, e)),
        }
    }

    fn upload_note(&self, key: &ObjectPath) -> ObjectPath {
        let name = key.as_ref().replace('/', "~");
        self.key(&format!("{UPLOADS_DIR}/{name}"))
    }

    /// Aborts the multipart uploads a killed run left unfinished below this location (see
    /// [`UPLOADS_DIR`]); returns how many.
    pub async fn abort_unfinished_uploads(&self) -> Result<usize, StoreError> {
        let mut aborted = 0;
        for note in self.list(UPLOADS_DIR).await? {
            if let Some((bytes, _)) = self.read(&note.location).await?
                && let Ok(noted) = serde_json::from_slice::<serde_json::Value>(&bytes)
                && let (Some(key), Some(id)) = (noted["key"].as_str(), noted["upload_id"].as_str())
            {
                let key = stored_key(key);
                match self.multipart.abort_multipart(&key, &id.to_string()).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => aborted += 1,
                    Err(e) => return Err(self.failed("aborting a multipart upload", &key, e)),
                }
            }
            self.delete(&note.location).await?;
        }
        Ok(aborted)
    }

    /// Downloads `key` into the local file `local` (created or truncated); streamed.
    pub async fn download(&self, key: &ObjectPath, local: &Path) -> Result<u64, StoreError> {
        let local_error = |e| StoreError::Local {
            path: local.to_path_buf(),
            source: e,
        };
        let got = self
            .inner
            .get(key)
            .await
            .map_err(|e| self.failed("downloading", key, e))?;
        let mut stream = got.into_stream();
        let mut file = tokio::fs::File::create(local).await.map_err(local_error)?;
        let mut bytes = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.failed("downloading", key, e))?;
            bytes += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(local_error)?;
        }
        file.flush().await.map_err(local_error)?;
        Ok(bytes)
    }
}

impl Store {
    /// Like [`Store::abort_unfinished_uploads`], but only the uploads of keys `owned` accepts:
    /// writers sharing one location (sinks of two pipelines writing one prefix) each abort
    /// their own leftovers and never an upload another writer has in flight. Returns how many.
    pub async fn abort_unfinished_uploads_of(
        &self,
        owned: impl Fn(&ObjectPath) -> bool,
    ) -> Result<usize, StoreError> {
        let mut aborted = 0;
        for note in self.list(UPLOADS_DIR).await? {
            let Some((bytes, _)) = self.read(&note.location).await? else {
                continue;
            };
            let noted = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
            let upload = noted.as_ref().and_then(|n| {
                Some((
                    stored_key(n["key"].as_str()?),
                    n["upload_id"].as_str()?.to_string(),
                ))
            });
            match upload {
                Some((key, id)) if owned(&key) => {
                    match self.multipart.abort_multipart(&key, &id).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => aborted += 1,
                        Err(e) => return Err(self.failed("aborting a multipart upload", &key, e)),
                    }
                }
                // Another writer's upload: not ours to abort.
                Some(_) => continue,
                // A note no upload can be read from is of no use to anyone.
                None => {}
            }
            self.delete(&note.location).await?;
        }
        Ok(aborted)
    }
}

impl Store {
    /// Deletes the probe objects of [`Store::check`] older than `age` that a run killed during
    /// its check left below the location; returns how many. A check lasts as long as its four
    /// requests, so an `age` well beyond the store's retry timeout never takes a probe from
    /// under a check in progress (of this or another writer sharing the location).
    pub async fn remove_stale_probes(&self, age: std::time::Duration) -> Result<usize, StoreError> {
        let Some(before) = chrono::Utc::now()
            .checked_sub_signed(chrono::TimeDelta::from_std(age).unwrap_or(chrono::TimeDelta::MAX))
        else {
            return Ok(0);
        };
        let mut removed = 0;
        for probe in self.list(PROBE_DIR).await? {
            if probe.last_modified < before {
                self.delete(&probe.location).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// A multipart upload whose parts are all in the store but that is not completed, so no reader
/// sees it ([`Store::stage`]); what a journal keeps to complete it later.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StagedUpload {
    /// The object's key, as stored (its raw text).
    pub key: String,
    pub upload_id: String,
    /// The parts' ids (ETags), in order.
    pub parts: Vec<String>,
    /// The file's size.
    pub bytes: u64,
}

impl StagedUpload {
    /// The object's key.
    pub fn object_key(&self) -> ObjectPath {
        stored_key(&self.key)
    }
}

/// A key as a note holds it (its raw text). `ObjectPath::from` would percent-encode a `%` or
/// `~` in it (Hive-escaped partition values, shortened long ones) and name another key.
fn stored_key(raw: &str) -> ObjectPath {
    ObjectPath::parse(raw).unwrap_or_else(|_| ObjectPath::from(raw))
}

/// Nanoseconds since the epoch, to make probe keys unique across runs.
fn chrono_free_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}
