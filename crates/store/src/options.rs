//! The optional `storage` table of a sink or of `[pipeline]` (spec section 5); defined with the
//! pipeline file in [`chatlake_core::config`], re-exported here.

pub use chatlake_core::config::StorageOptions;

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
