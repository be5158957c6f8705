//! The checks every source table repeats: URLs, credentials that must not be empty, limits of at
//! least one, timeouts longer than zero, the retry table, and the emulator's URLs under
//! `--emulate`. Each error names its key, as `validate` reports it.

use std::num::NonZeroU32;
use std::time::Duration;

use chatlake_core::Secret;
use chatlake_core::config::InvalidConfig;
use chatlake_core::stage::EmulatorProfile;
use chatlake_http::RetryPolicy;
use url::Url;

/// `s` as an `http://` or `https://` URL with a host.
pub fn parse_http_url(key: &str, s: &str) -> Result<Url, InvalidConfig> {
    let url = Url::parse(s.trim())
        .map_err(|e| InvalidConfig::new(key, format!("not a URL ({e}): {s:?}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(InvalidConfig::new(
            key,
            format!("expected an http:// or https:// URL, got {s:?}"),
        ));
    }
    Ok(url)
}

/// `path` (e.g. `/v1.0`) under the emulator's root, for the option `key` it replaces.
pub fn emulator_url(
    profile: &EmulatorProfile,
    key: &str,
    path: &str,
) -> Result<Url, InvalidConfig> {
    let root = profile.root.trim_end_matches('/');
    parse_http_url(key, &format!("{root}{path}"))
}

/// The error of a source without `auth` in API mode; `forms` shows what to write.
pub fn auth_required(forms: &str) -> InvalidConfig {
    InvalidConfig::new("auth", format!("required unless `files` is set: {forms}"))
}

/// Text that is not blank.
pub fn non_empty(key: &str, value: &str) -> Result<(), InvalidConfig> {
    if value.trim().is_empty() {
        Err(InvalidConfig::new(key, "must not be empty"))
    } else {
        Ok(())
    }
}

/// A secret that is not empty (taken as written: a secret may start or end with a blank).
pub fn non_empty_secret(key: &str, value: &Secret) -> Result<(), InvalidConfig> {
    if value.is_empty() {
        Err(InvalidConfig::new(key, "must not be empty"))
    } else {
        Ok(())
    }
}

/// A count or limit of at least one.
pub fn at_least_one(key: &str, n: u32) -> Result<NonZeroU32, InvalidConfig> {
    NonZeroU32::new(n).ok_or_else(|| InvalidConfig::new(key, "must be at least 1"))
}

/// A timeout or interval longer than zero.
pub fn longer_than_zero(key: &str, d: Duration) -> Result<(), InvalidConfig> {
    if d.is_zero() {
        Err(InvalidConfig::new(key, "must be longer than 0s"))
    } else {
        Ok(())
    }
}

/// The `retry` table, its errors under `retry.<key>`.
pub fn check_retry(retry: &RetryPolicy) -> Result<(), InvalidConfig> {
    retry
        .check()
        .map_err(|(key, msg)| InvalidConfig::new(format!("retry.{key}"), msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_with_a_host() {
        assert!(parse_http_url("base_url", " https://api.example.com/v2 ").is_ok());
        for bad in ["ftp://x", "not a url", "http://"] {
            let e = parse_http_url("base_url", bad).unwrap_err();
            assert_eq!(e.key, "base_url", "{bad}");
        }
        let profile = EmulatorProfile {
            root: "http://127.0.0.1:4000/".into(),
            ..EmulatorProfile::default()
        };
        assert_eq!(
            emulator_url(&profile, "base_url", "/v2").unwrap().as_str(),
            "http://127.0.0.1:4000/v2"
        );
    }

    #[test]
    fn each_check_names_its_key() {
        assert_eq!(
            non_empty("auth.client_id", " ").unwrap_err().key,
            "auth.client_id"
        );
        assert!(non_empty("auth.client_id", "c").is_ok());
        assert_eq!(
            non_empty_secret("auth.token", &Secret::new(""))
                .unwrap_err()
                .key,
            "auth.token"
        );
        assert_eq!(
            at_least_one("concurrency", 0).unwrap_err().key,
            "concurrency"
        );
        assert_eq!(at_least_one("concurrency", 3).unwrap().get(), 3);
        assert_eq!(
            longer_than_zero("request_timeout", Duration::ZERO)
                .unwrap_err()
                .key,
            "request_timeout"
        );
        let retry = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        assert_eq!(check_retry(&retry).unwrap_err().key, "retry.max_attempts");
        assert_eq!(
            auth_required("a `bearer` table").message,
            "required unless `files` is set: a `bearer` table"
        );
    }
}
