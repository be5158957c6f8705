//! The optional `storage` table of a sink or of `[pipeline]` (spec section 5): what the
//! standard variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`) say, set per URL. Secrets print `***`.

use std::collections::BTreeMap;

use chatlake_core::secret::Secret;
use serde::{Deserialize, Serialize};

/// How to reach an object store. Every field is optional: what is not set here comes from the
/// environment, as DuckDB, Polars and the AWS CLI read it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageOptions {
    /// The service's address, for an S3-compatible server (SeaweedFS, MinIO, Ceph, R2):
    /// `http://127.0.0.1:8333`. Default: `AWS_ENDPOINT_URL`, else the provider's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The bucket's region. Default: `AWS_REGION`, else `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Allow a plain-http endpoint. Default: `AWS_ALLOW_HTTP`, else false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_http: Option<bool>,
    /// Default: `AWS_ACCESS_KEY_ID` (then profiles and instance roles, as object_store reads them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<Secret>,
    /// Default: `AWS_SECRET_ACCESS_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<Secret>,
    /// Default: `AWS_SESSION_TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<Secret>,
    /// Address buckets as `bucket.host` instead of `host/bucket`. Default: false (path style,
    /// which every S3-compatible server accepts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_hosted_style: Option<bool>,
    /// Any other setting object_store knows for the URL's store, by its name
    /// (`google_service_account`, `azure_storage_account_name`, `aws_imdsv1_fallback`, …).
    /// Values are treated as secrets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, Secret>,
}

impl StorageOptions {
    /// These options, with what `other` sets where these set nothing (a sink's table over the
    /// pipeline's).
    pub fn or(&self, other: &StorageOptions) -> StorageOptions {
        let mut options = other.options.clone();
        options.extend(self.options.clone());
        StorageOptions {
            endpoint: self.endpoint.clone().or_else(|| other.endpoint.clone()),
            region: self.region.clone().or_else(|| other.region.clone()),
            allow_http: self.allow_http.or(other.allow_http),
            access_key_id: self
                .access_key_id
                .clone()
                .or_else(|| other.access_key_id.clone()),
            secret_access_key: self
                .secret_access_key
                .clone()
                .or_else(|| other.secret_access_key.clone()),
            session_token: self
                .session_token
                .clone()
                .or_else(|| other.session_token.clone()),
            virtual_hosted_style: self.virtual_hosted_style.or(other.virtual_hosted_style),
            options,
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == StorageOptions::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sinks_table_wins_over_the_pipelines() {
        let pipeline = StorageOptions {
            endpoint: Some("http://pipeline".into()),
            region: Some("eu-west-1".into()),
            ..Default::default()
        };
        let sink = StorageOptions {
            endpoint: Some("http://sink".into()),
            ..Default::default()
        };
        let both = sink.or(&pipeline);
        assert_eq!(both.endpoint.as_deref(), Some("http://sink"));
        assert_eq!(both.region.as_deref(), Some("eu-west-1"));
    }

    #[test]
    fn secrets_print_stars() {
        let options: StorageOptions = serde_json::from_str(
            r#"{"access_key_id": "AKIAEXAMPLE", "secret_access_key": "s3cr3t-Value", "options": {"azure_storage_account_key": "k3y-Value"}}"#,
        )
        .unwrap();
        let shown = format!("{options:?} {}", serde_json::to_string(&options).unwrap());
        for secret in ["AKIAEXAMPLE", "s3cr3t-Value", "k3y-Value"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_json::from_str::<StorageOptions>(r#"{"endpont": "x"}"#).unwrap_err();
        assert!(err.to_string().contains("endpont"), "{err}");
    }
}
