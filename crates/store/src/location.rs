//! Where a sink's files or a pipeline's state live: a local directory or a place in an object
//! store, read from what a user writes in `path` or `state_dir`.

use std::fmt;
use std::path::PathBuf;

use object_store::ObjectStoreScheme;
use object_store::path::Path as ObjectPath;
use url::Url;

/// A place for files: a local directory, or a prefix in an object store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A plain path or a `file://` URL.
    Local(PathBuf),
    /// `s3://`, `s3a://`, `gs://`, `az://`, `abfs(s)://`, `azure://` and the providers' https forms.
    Object(ObjectLocation),
}

/// A prefix in an object store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectLocation {
    /// The URL as given, without a trailing slash.
    url: Url,
    kind: StoreKind,
    /// The key prefix inside the bucket or container (`""` for its root).
    prefix: ObjectPath,
}

/// The kind of object store a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    AmazonS3,
    GoogleCloudStorage,
    MicrosoftAzure,
}

impl StoreKind {
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::AmazonS3 => "S3",
            StoreKind::GoogleCloudStorage => "Google Cloud Storage",
            StoreKind::MicrosoftAzure => "Azure Blob Storage",
        }
    }
}

/// Why a `path` or `state_dir` is not a place chatlake can write to.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocationError {
    #[error("must name a directory or an object-store URL")]
    Empty,
    #[error("`{0}` is not a valid URL: {1}")]
    Url(String, String),
    #[error(
        "`{0}`: the scheme `{1}` is not supported; give a local path or an s3://, gs://, az://, abfss:// or file:// URL"
    )]
    Scheme(String, String),
    #[error("`{0}` names no bucket or container")]
    NoBucket(String),
    #[error("`{0}` holds credentials; give them in the environment or the `storage` table")]
    Credentials(String),
    #[error("`{0}`: {1}")]
    Key(String, String),
}

impl Location {
    /// Reads `text` without touching the disk or the network: a URL with a scheme chatlake
    /// knows becomes [`Location::Object`], `file://` and anything without `://` a local path.
    pub fn parse(text: &str) -> Result<Location, LocationError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(LocationError::Empty);
        }
        if !text.contains("://") {
            return Ok(Location::Local(PathBuf::from(text)));
        }
        let trimmed = text.trim_end_matches('/');
        let url =
            Url::parse(trimmed).map_err(|e| LocationError::Url(text.to_string(), e.to_string()))?;
        if !url.username().is_empty() && url.scheme() != "abfs" && url.scheme() != "abfss"
            || url.password().is_some()
        {
            return Err(LocationError::Credentials(redacted(&url)));
        }
        if url.query().is_some() {
            // A query is where a SAS token or a presigned signature would go.
            return Err(LocationError::Credentials(redacted(&url)));
        }
        if url.scheme() == "file" {
            let path = url
                .to_file_path()
                .map_err(|()| LocationError::Url(text.to_string(), "not a local path".into()))?;
            return Ok(Location::Local(path));
        }
        let (scheme, prefix) = ObjectStoreScheme::parse(&url)
            .map_err(|_| LocationError::Scheme(text.to_string(), url.scheme().to_string()))?;
        let kind = match scheme {
            ObjectStoreScheme::AmazonS3 => StoreKind::AmazonS3,
            ObjectStoreScheme::GoogleCloudStorage => StoreKind::GoogleCloudStorage,
            ObjectStoreScheme::MicrosoftAzure => StoreKind::MicrosoftAzure,
            _ => {
                return Err(LocationError::Scheme(
                    text.to_string(),
                    url.scheme().to_string(),
                ));
            }
        };
        if url.host_str().is_none_or(str::is_empty) {
            return Err(LocationError::NoBucket(text.to_string()));
        }
        let prefix = ObjectPath::parse(prefix)
            .map_err(|e| LocationError::Key(text.to_string(), e.to_string()))?;
        Ok(Location::Object(ObjectLocation { url, kind, prefix }))
    }

    /// Whether this is a place in an object store.
    pub fn is_object(&self) -> bool {
        matches!(self, Location::Object(_))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::Object(object) => object.fmt(f),
        }
    }
}

impl ObjectLocation {
    /// The URL as the user wrote it (no credentials can be in it: [`Location::parse`] refuses them).
    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    /// The key prefix inside the bucket (`""` for the bucket's root).
    pub fn prefix(&self) -> &ObjectPath {
        &self.prefix
    }

    /// The bucket or container (for Azure `abfss://container@account…`, the container).
    pub fn bucket(&self) -> &str {
        match self.url.scheme() {
            "abfs" | "abfss" if !self.url.username().is_empty() => self.url.username(),
            _ => self.url.host_str().unwrap_or_default(),
        }
    }

    /// The key of `relative` (a `/`-separated path) under this prefix.
    pub fn key(&self, relative: &str) -> ObjectPath {
        let mut key = self.prefix.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            key = key.clone().join(part);
        }
        key
    }

    /// A location `relative` below this one (`state_dir` → the pipeline's state).
    pub fn join(&self, relative: &str) -> ObjectLocation {
        let mut url = self.url.clone();
        let path = format!(
            "{}/{}",
            url.path().trim_end_matches('/'),
            relative.trim_matches('/')
        );
        url.set_path(&path);
        ObjectLocation {
            url,
            kind: self.kind,
            prefix: self.key(relative),
        }
    }

    /// `s3://bucket/prefix/relative`, for messages.
    pub fn display_key(&self, key: &ObjectPath) -> String {
        let mut url = self.url.clone();
        let base = self.url.path().trim_end_matches('/');
        let below = key
            .as_ref()
            .strip_prefix(self.prefix.as_ref())
            .unwrap_or(key.as_ref())
            .trim_start_matches('/');
        url.set_path(&format!("{base}/{below}"));
        url.to_string()
    }
}

impl fmt::Display for ObjectLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url.as_str())
    }
}

fn redacted(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_password(None);
    let _ = url.set_username("");
    url.set_query(None);
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(text: &str) -> ObjectLocation {
        match Location::parse(text).unwrap() {
            Location::Object(o) => o,
            other => panic!("{text} → {other:?}"),
        }
    }

    #[test]
    fn plain_paths_and_file_urls_are_local() {
        assert_eq!(
            Location::parse("./lake").unwrap(),
            Location::Local("./lake".into())
        );
        assert_eq!(
            Location::parse("file:///tmp/lake/").unwrap(),
            Location::Local("/tmp/lake".into())
        );
    }

    #[test]
    fn object_urls_name_their_store_bucket_and_prefix() {
        let s3 = object("s3://acme-lake/chat/messages/");
        assert_eq!(s3.kind(), StoreKind::AmazonS3);
        assert_eq!(s3.bucket(), "acme-lake");
        assert_eq!(s3.prefix().as_ref(), "chat/messages");
        assert_eq!(
            s3.key("provider=zoom/part-1.parquet").as_ref(),
            "chat/messages/provider=zoom/part-1.parquet"
        );
        assert_eq!(
            s3.display_key(&s3.key("a/b")),
            "s3://acme-lake/chat/messages/a/b"
        );
        assert_eq!(object("s3://bucket").prefix().as_ref(), "");
        assert_eq!(object("gs://b/p").kind(), StoreKind::GoogleCloudStorage);
        assert_eq!(object("az://container/p").kind(), StoreKind::MicrosoftAzure);
        let abfss = object("abfss://lake@account.dfs.core.windows.net/chat");
        assert_eq!(abfss.kind(), StoreKind::MicrosoftAzure);
        assert_eq!(abfss.bucket(), "lake");
    }

    #[test]
    fn join_goes_below_the_prefix() {
        let state = object("s3://bucket/chatlake/_state").join("demo");
        assert_eq!(state.prefix().as_ref(), "chatlake/_state/demo");
        assert_eq!(state.to_string(), "s3://bucket/chatlake/_state/demo");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        assert_eq!(Location::parse("  "), Err(LocationError::Empty));
        assert!(matches!(
            Location::parse("ftp://host/x"),
            Err(LocationError::Scheme(_, s)) if s == "ftp"
        ));
        let leak = Location::parse("s3://key:hunter2@bucket/x").unwrap_err();
        assert!(matches!(leak, LocationError::Credentials(_)));
        assert!(!leak.to_string().contains("hunter2"), "{leak}");
        let sas = Location::parse("az://c/p?sig=abc").unwrap_err();
        assert!(!sas.to_string().contains("abc"), "{sas}");
    }
}
