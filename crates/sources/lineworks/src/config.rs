//! The `lineworks_message_contents` source table, its checks and `build`.
//!
//! Building is pure: it checks the options, parses URLs, offsets and an inline private key, and
//! cuts the windows, but reads no file and opens no connection, so `chatlake validate` and
//! `chatlake plan` run offline.

use std::path::PathBuf;
use std::time::Duration;

use chatlake_core::config::InvalidConfig;
use chatlake_core::stage::EmulatorProfile;
use chatlake_core::{BuildContext, Secret, Source, SourceConfig};
use chatlake_http::RetryPolicy;
use chatlake_source_kit::FilesMode;
use chatlake_source_kit::options::{
    at_least_one, auth_required, check_retry, emulator_url, longer_than_zero, non_empty,
    non_empty_secret, parse_http_url,
};
use chatlake_source_kit::time::OffsetTime;
use chrono::FixedOffset;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::DEFAULT_DOWNLOAD_HOST;
use crate::auth::{Auth, ServiceAccount, SigningKey};
use crate::source::{ApiMode, LineworksSource, Mode};
use crate::window::{self, DownloadQuery, STREAM};
use chatlake_http::DownloadHosts;

pub const DEFAULT_BASE_URL: &str = "https://www.worksapis.com/v1.0";
pub const DEFAULT_TOKEN_URL: &str = "https://auth.worksmobile.com/oauth2/v2.0/token";
/// The longest range one request may cover (providers.md §1).
pub const MAX_WINDOW_DAYS: u32 = 31;

/// Pulls message contents from the LINE WORKS monitoring API
/// (`GET /monitoring/message-contents/download`), or from CSV files downloaded by hand.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LineworksSourceConfig {
    /// API root including the version path. `--emulate` replaces it with the emulator's.
    #[serde(default = "default_base_url")]
    pub base_url: String,

    /// How to authenticate: `{type = "lineworks_service_account", ...}` (a JWT signed with the
    /// app's private key, exchanged for an access token) or `{type = "bearer", token = "..."}`.
    /// Required unless `files` is set.
    #[serde(default)]
    pub auth: Option<LineworksAuth>,

    /// Language of the CSV header and of localised texts.
    #[serde(default)]
    pub language: Language,

    /// Which messages of bots the provider includes (`botMessageFilterType`).
    #[serde(default)]
    pub bot_messages: BotMessages,

    /// The domain to read; default: the domain of the credentials.
    #[serde(default)]
    pub domain_id: Option<i32>,

    /// Start of the range, inclusive, RFC 3339 with an offset (`2025-01-01T00:00:00+09:00`).
    /// Its offset is the one the provider writes local times in. Required unless `files` is set
    /// (then an optional filter). `--start` overrides it.
    pub start: Option<OffsetTime>,

    /// End of the range, inclusive; default now (in start's offset). `--end` overrides it.
    pub end: Option<OffsetTime>,

    /// Days per request window, 1 to 31 (the API's limit). Each window is one download and
    /// one commit.
    #[serde(default = "default_window_days")]
    pub window_days: u32,

    /// Load these CSV files (globs, relative to the working directory) instead of calling the
    /// API: files downloaded by hand from the admin console. No credentials needed; each file is
    /// one window, in path order, and every row is emitted (start/end filter later, in
    /// `normalize`).
    #[serde(default)]
    pub files: Option<Vec<String>>,

    /// With `files`: the UTC offset the files' local times are written in.
    #[serde(default = "default_utc_offset")]
    pub utc_offset: String,

    /// Request budget for the monitoring API; the provider allows 10 a minute for
    /// `monitoring.read` on every plan.
    #[serde(default = "default_requests_per_minute")]
    pub requests_per_minute: u32,

    /// How failed downloads are retried (429, 5xx, dropped connections, a file that ends with
    /// `downloadLogs error`).
    #[serde(default)]
    pub retry: RetryPolicy,

    /// Rows per batch handed downstream.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,

    /// How long one request may take, the whole file download included.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,

    /// Fetch this much again before where earlier runs stopped (late-arriving messages).
    /// Default 0s: message contents do not change once written. Pair a lookback with
    /// `dedupe across_runs = true`, which drops the rows that were loaded already.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lookback: Duration,

    /// Hosts besides the API's own that may receive the access token when the download's `302`
    /// leads to them: LINE WORKS serves the file from its file host, which wants the same
    /// Bearer token. `host` (the scheme's default port) or `host:port`; the token goes only
    /// over https (http only to loopback). A redirect to any other host fails the window, and
    /// that host gets nothing. `--emulate` adds the emulator's file host.
    #[serde(default = "default_download_hosts")]
    pub download_hosts: Vec<String>,
}

/// Credentials for the monitoring API (scope `monitoring.read`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum LineworksAuth {
    /// A service account: chatlake signs a JWT (RS256) with the app's private key and exchanges
    /// it for an access token, refreshed before it expires.
    #[serde(rename = "lineworks_service_account")]
    ServiceAccount {
        /// The app's Client ID.
        client_id: String,
        /// The app's Client Secret.
        client_secret: Secret,
        /// The service account id (`xxxxx.serviceaccount@example.com`).
        service_account: String,
        /// Path of the app's private key (PEM). Set this or `private_key`.
        #[serde(default)]
        private_key_file: Option<PathBuf>,
        /// The private key itself (PEM text), e.g. from an environment variable. Set this or
        /// `private_key_file`.
        #[serde(default)]
        private_key: Option<Secret>,
        /// The token endpoint.
        #[serde(default = "default_token_url")]
        token_url: String,
        /// Scopes to request, space-separated.
        #[serde(default = "default_scope")]
        scope: String,
    },
    /// An access token obtained elsewhere; it is not refreshed.
    #[serde(rename = "bearer")]
    Bearer {
        /// The access token.
        token: Secret,
    },
}

/// The `language` of the download.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Language {
    #[default]
    #[serde(rename = "en_US")]
    EnUs,
    #[serde(rename = "ja_JP")]
    JaJp,
    #[serde(rename = "ko_KR")]
    KoKr,
    #[serde(rename = "zh_CN")]
    ZhCn,
    #[serde(rename = "zh_TW")]
    ZhTw,
}

impl Language {
    pub const ALL: [Language; 5] = [
        Language::EnUs,
        Language::JaJp,
        Language::KoKr,
        Language::ZhCn,
        Language::ZhTw,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Language::EnUs => "en_US",
            Language::JaJp => "ja_JP",
            Language::KoKr => "ko_KR",
            Language::ZhCn => "zh_CN",
            Language::ZhTw => "zh_TW",
        }
    }
}

/// The `botMessageFilterType` of the download.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BotMessages {
    #[default]
    Include,
    Exclude,
    Only,
}

impl BotMessages {
    pub fn as_str(self) -> &'static str {
        match self {
            BotMessages::Include => "include",
            BotMessages::Exclude => "exclude",
            BotMessages::Only => "only",
        }
    }
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.into()
}
fn default_token_url() -> String {
    DEFAULT_TOKEN_URL.into()
}
fn default_scope() -> String {
    "monitoring.read".into()
}
fn default_window_days() -> u32 {
    MAX_WINDOW_DAYS
}
fn default_utc_offset() -> String {
    "+09:00".into()
}
fn default_requests_per_minute() -> u32 {
    10
}
fn default_batch_size() -> usize {
    8192
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_download_hosts() -> Vec<String> {
    vec![DEFAULT_DOWNLOAD_HOST.to_owned()]
}

/// `+09:00`, `-05:30`, `+0900`, `Z` or `UTC`.
pub fn parse_utc_offset(s: &str) -> Option<FixedOffset> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("z") || s.eq_ignore_ascii_case("utc") {
        return FixedOffset::east_opt(0);
    }
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = match rest.split_once(':') {
        Some((h, m)) => (h, m),
        None if rest.len() == 4 => rest.split_at(2),
        None => (rest, "0"),
    };
    if h.is_empty() || h.len() > 2 || m.is_empty() || m.len() > 2 {
        return None;
    }
    let h: i32 = h.parse().ok()?;
    let m: i32 = m.parse().ok()?;
    if h > 23 || m > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

/// `{base}/monitoring/message-contents/download`, whether or not `base` ends in `/`.
fn download_endpoint(base: &Url) -> Url {
    let mut url = base.clone();
    let path = format!(
        "{}/monitoring/message-contents/download",
        base.path().trim_end_matches('/')
    );
    url.set_path(&path);
    url.set_query(None);
    url
}

impl LineworksSourceConfig {
    /// The service account the emulator accepts, with its URLs.
    fn emulator_auth(profile: &EmulatorProfile) -> Result<(Url, Auth), InvalidConfig> {
        let base = emulator_url(profile, "base_url", "/v1.0")?;
        let token_url = emulator_url(profile, "auth.token_url", "/oauth2/v2.0/token")?;
        let pem = profile.credential("lineworks.private_key")?;
        let key = SigningKey::from_pem(pem.expose().as_bytes())
            .map_err(|e| InvalidConfig::new("auth", format!("the emulator's private key: {e}")))?;
        let auth = Auth::ServiceAccount(ServiceAccount {
            client_id: profile
                .credential("lineworks.client_id")?
                .expose()
                .to_string(),
            client_secret: profile.credential("lineworks.client_secret")?,
            service_account: profile
                .credential("lineworks.service_account")?
                .expose()
                .to_string(),
            key: crate::auth::KeySource::Inline(key),
            token_url,
            scope: default_scope(),
        });
        Ok((base, auth))
    }

    fn configured_auth(&self) -> Result<Auth, InvalidConfig> {
        let Some(auth) = &self.auth else {
            return Err(auth_required(
                "a `lineworks_service_account` or `bearer` table",
            ));
        };
        match auth {
            LineworksAuth::Bearer { token } => {
                non_empty_secret("auth.token", token)?;
                Ok(Auth::Bearer(token.clone()))
            }
            LineworksAuth::ServiceAccount {
                client_id,
                client_secret,
                service_account,
                private_key_file,
                private_key,
                token_url,
                scope,
            } => {
                non_empty("auth.client_id", client_id)?;
                non_empty_secret("auth.client_secret", client_secret)?;
                non_empty("auth.service_account", service_account)?;
                non_empty("auth.scope", scope)?;
                let token_url = parse_http_url("auth.token_url", token_url)?;
                let key = match (private_key_file, private_key) {
                    (Some(_), Some(_)) => {
                        return Err(InvalidConfig::new(
                            "auth.private_key",
                            "set only one of `private_key_file` and `private_key`",
                        ));
                    }
                    (None, None) => {
                        return Err(InvalidConfig::new(
                            "auth.private_key_file",
                            "set `private_key_file` (a PEM file) or `private_key` (the PEM text)",
                        ));
                    }
                    (Some(path), None) => {
                        if path.as_os_str().is_empty() {
                            return Err(InvalidConfig::new(
                                "auth.private_key_file",
                                "must not be empty",
                            ));
                        }
                        crate::auth::KeySource::File(path.clone())
                    }
                    (None, Some(pem)) => {
                        let key = SigningKey::from_pem(pem.expose().as_bytes())
                            .map_err(|e| InvalidConfig::new("auth.private_key", e.to_string()))?;
                        crate::auth::KeySource::Inline(key)
                    }
                };
                Ok(Auth::ServiceAccount(ServiceAccount {
                    client_id: client_id.trim().to_string(),
                    client_secret: client_secret.clone(),
                    service_account: service_account.trim().to_string(),
                    key,
                    token_url,
                    scope: scope.trim().to_string(),
                }))
            }
        }
    }

    /// Checks every option and computes the source's windows; no I/O.
    pub fn check(self, cx: &BuildContext) -> Result<LineworksSource, InvalidConfig> {
        if !(1..=MAX_WINDOW_DAYS).contains(&self.window_days) {
            return Err(InvalidConfig::new(
                "window_days",
                format!(
                    "must be 1 to {MAX_WINDOW_DAYS} (the API's limit), got {}",
                    self.window_days
                ),
            ));
        }
        let requests_per_minute = at_least_one("requests_per_minute", self.requests_per_minute)?;
        if self.batch_size == 0 {
            return Err(InvalidConfig::new("batch_size", "must be at least 1"));
        }
        longer_than_zero("request_timeout", self.request_timeout)?;
        check_retry(&self.retry)?;
        let utc_offset = parse_utc_offset(&self.utc_offset).ok_or_else(|| {
            InvalidConfig::new(
                "utc_offset",
                format!(
                    "expected an offset like +09:00 or -05:30, got {:?}",
                    self.utc_offset
                ),
            )
        })?;
        let mut base_url = parse_http_url("base_url", &self.base_url)?;

        // The command line wins over the file.
        let range = cx.range(self.start.map(Into::into), self.end.map(Into::into))?;
        let (start, end) = (range.start, range.end);

        let mode = if let Some(patterns) = &self.files {
            Mode::Files(FilesMode::new(
                patterns,
                STREAM,
                utc_offset,
                (start, end),
                cx.state.clone(),
            )?)
        } else {
            let (start, end) = range.for_api(cx.now, "2025-01-01T00:00:00+09:00")?;
            let (auth, download_host) = match &cx.emulator {
                Some(profile) => {
                    let (base, auth) = Self::emulator_auth(profile)?;
                    base_url = base;
                    let host = profile.credential("lineworks.download_host")?;
                    (auth, Some(host))
                }
                None => (self.configured_auth()?, None),
            };
            let mut download_hosts =
                DownloadHosts::new("LINE WORKS", &base_url, &self.download_hosts)?;
            if let Some(host) = download_host {
                download_hosts = download_hosts.also(host.expose())?;
            }
            Mode::Api(Box::new(ApiMode {
                endpoint: download_endpoint(&base_url),
                base_url,
                download_hosts,
                auth,
                query: DownloadQuery {
                    language: self.language,
                    bot_messages: self.bot_messages,
                    domain_id: self.domain_id,
                },
                windows: window::split_uncovered(
                    &cx.name,
                    start,
                    end,
                    self.window_days,
                    &cx.state,
                    self.lookback,
                ),
                requests_per_minute,
                retry: self.retry.clone(),
                request_timeout: self.request_timeout,
            }))
        };
        Ok(LineworksSource::new(
            cx.name.clone(),
            self.language,
            self.batch_size,
            mode,
        ))
    }
}

impl SourceConfig for LineworksSourceConfig {
    const TYPE: &'static str = "lineworks_message_contents";
    const SUMMARY: &'static str = "LINE WORKS message contents (monitoring CSV download), or CSV files \
         downloaded by hand. What it leaves out or assumes: the `zh_CN` and `zh_TW` headers are an \
         assumption (the `en_US` labels; columns are read by position and an unknown header is a \
         warning, not an error); an attachment is a line of text (`(写真) <file>`), not the file; \
         the download carries no message id (`normalize` derives one from the row).";
    const EXAMPLE: &'static str = include_str!("example.toml");

    fn build(self, cx: &BuildContext) -> Result<Box<dyn Source>, InvalidConfig> {
        Ok(Box::new(self.check(cx)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    pub(crate) fn cx() -> BuildContext {
        BuildContext {
            name: "lw".into(),
            pipeline: "p".into(),
            emulator: None,
            start: None,
            end: None,
            now: Utc.with_ymd_and_hms(2025, 3, 15, 3, 0, 0).unwrap(),
            ..BuildContext::default()
        }
    }

    fn parse(v: serde_json::Value) -> Result<LineworksSourceConfig, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    fn build(v: serde_json::Value) -> Result<LineworksSource, InvalidConfig> {
        build_with(v, &cx())
    }

    fn build_with(
        v: serde_json::Value,
        cx: &BuildContext,
    ) -> Result<LineworksSource, InvalidConfig> {
        parse(v).unwrap().check(cx)
    }

    fn err(v: serde_json::Value) -> (String, String) {
        let e = build(v).err().expect("should fail");
        (e.key, e.message)
    }

    fn bearer() -> serde_json::Value {
        json!({"type": "bearer", "token": "tok"})
    }

    #[test]
    fn defaults() {
        let c = parse(json!({})).unwrap();
        assert_eq!(c.base_url, DEFAULT_BASE_URL);
        assert_eq!(c.language, Language::EnUs);
        assert_eq!(c.bot_messages, BotMessages::Include);
        assert_eq!(c.window_days, 31);
        assert_eq!(c.utc_offset, "+09:00");
        assert_eq!(c.requests_per_minute, 10);
        assert_eq!(c.batch_size, 8192);
        assert_eq!(c.request_timeout, Duration::from_secs(600));
        assert_eq!(c.retry, RetryPolicy::default());
        assert_eq!(c.download_hosts, ["apis-storage.worksmobile.com"]);
    }

    #[test]
    fn parses_the_spec_example() {
        let c = parse(json!({
            "auth": {"type": "lineworks_service_account", "client_id": "cid",
                     "client_secret": "cs", "service_account": "sa@x", "private_key_file": "k.pem"},
            "language": "ja_JP", "bot_messages": "include", "domain_id": 10000001,
            "start": "2025-01-01T00:00:00+09:00", "end": "2025-03-31T23:59:59+09:00",
            "retry": {"max_attempts": 3, "initial_backoff": "500ms"},
            "request_timeout": "2m"
        }))
        .unwrap();
        let s = c.check(&cx()).unwrap();
        let plan = chatlake_core::Source::plan(&s).unwrap();
        assert_eq!(plan.len(), 3);
        assert!(plan[0].request.starts_with(
            "GET https://www.worksapis.com/v1.0/monitoring/message-contents/download?\
             startTime=2025-01-01T00:00:00%2B09:00&endTime=2025-01-31T23:59:59%2B09:00&language=ja_JP"
        ), "{}", plan[0].request);
        let Some(LineworksAuth::ServiceAccount {
            token_url, scope, ..
        }) = parse(json!({
            "auth": {"type": "lineworks_service_account", "client_id": "c", "client_secret": "s",
                     "service_account": "a", "private_key_file": "k"}}))
        .unwrap()
        .auth
        else {
            panic!()
        };
        assert_eq!(token_url, DEFAULT_TOKEN_URL);
        assert_eq!(scope, "monitoring.read");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(
            parse(json!({"langauge": "ja_JP"}))
                .unwrap_err()
                .contains("unknown field `langauge`")
        );
        assert!(
            parse(json!({"language": "ja"}))
                .unwrap_err()
                .contains("unknown variant `ja`")
        );
        assert!(parse(json!({"bot_messages": "none"})).is_err());
        assert!(
            parse(json!({"auth": {"type": "bearer", "token": "t", "extra": 1}}))
                .unwrap_err()
                .contains("unknown field `extra`")
        );
        assert!(parse(json!({"auth": {"type": "oauth"}})).is_err());
        let e = parse(json!({"start": "2025-01-01 00:00:00"})).unwrap_err();
        assert!(e.contains("RFC 3339 time with an offset"), "{e}");
        // TOML's unquoted datetime arrives as a private table.
        let c = parse(json!({"start": {"$__toml_private_datetime": "2025-01-01T00:00:00+09:00"}}))
            .unwrap();
        assert_eq!(c.start.unwrap().to_rfc3339(), "2025-01-01T00:00:00+09:00");
    }

    #[test]
    fn validation_errors_name_their_key() {
        let base = || json!({"auth": bearer(), "start": "2025-01-01T00:00:00+09:00"});
        let with = |k: &str, v: serde_json::Value| {
            let mut b = base();
            b[k] = v;
            b
        };
        assert!(build(base()).is_ok());
        assert_eq!(err(json!({"auth": bearer()})).0, "start");
        assert_eq!(err(json!({"start": "2025-01-01T00:00:00+09:00"})).0, "auth");
        let (k, m) = err(with("end", json!("2024-12-31T00:00:00+09:00")));
        assert_eq!(k, "end");
        assert!(m.contains("must be after start"), "{m}");
        assert_eq!(
            err(with("end", json!("2025-01-01T00:00:00+09:00"))).0,
            "end"
        );
        assert_eq!(err(with("window_days", json!(32))).0, "window_days");
        assert_eq!(err(with("window_days", json!(0))).0, "window_days");
        assert_eq!(
            err(with("requests_per_minute", json!(0))).0,
            "requests_per_minute"
        );
        assert_eq!(err(with("batch_size", json!(0))).0, "batch_size");
        assert_eq!(
            err(with("request_timeout", json!("0s"))).0,
            "request_timeout"
        );
        assert_eq!(err(with("utc_offset", json!("JST"))).0, "utc_offset");
        assert_eq!(err(with("base_url", json!("ftp://x"))).0, "base_url");
        assert_eq!(err(with("base_url", json!("not a url"))).0, "base_url");
        assert_eq!(
            err(with("retry", json!({"max_attempts": 0}))).0,
            "retry.max_attempts"
        );
        assert_eq!(
            err(with(
                "retry",
                json!({"initial_backoff": "2m", "max_backoff": "1m"})
            ))
            .0,
            "retry.initial_backoff"
        );
        assert_eq!(
            err(with("auth", json!({"type": "bearer", "token": ""}))).0,
            "auth.token"
        );
        let sa = |extra: serde_json::Value| {
            let mut a = json!({"type": "lineworks_service_account", "client_id": "c",
                               "client_secret": "s", "service_account": "a"});
            for (k, v) in extra.as_object().unwrap() {
                a[k] = v.clone();
            }
            with("auth", a)
        };
        let (k, m) = err(sa(json!({})));
        assert_eq!(k, "auth.private_key_file");
        assert!(m.contains("`private_key`"), "{m}");
        assert_eq!(
            err(sa(
                json!({"private_key_file": "k.pem", "private_key": "-----BEGIN"})
            ))
            .0,
            "auth.private_key"
        );
        let (k, m) = err(sa(json!({"private_key": "not a key"})));
        assert_eq!(k, "auth.private_key");
        assert!(!m.contains("not a key"), "never echo key material: {m}");
        assert_eq!(
            err(sa(json!({"private_key_file": "k", "client_id": " "}))).0,
            "auth.client_id"
        );
        assert_eq!(
            err(sa(json!({"private_key_file": "k", "token_url": "nope"}))).0,
            "auth.token_url"
        );
        assert!(
            build(sa(json!({"private_key_file": "k.pem"}))).is_ok(),
            "no I/O in build"
        );
    }

    #[test]
    fn end_defaults_to_now_in_the_start_offset() {
        let s = build(json!({"auth": bearer(), "start": "2025-03-01T00:00:00+09:00"})).unwrap();
        let w = s.api_windows();
        assert_eq!(w.len(), 1);
        // now = 2025-03-15T03:00:00Z = 12:00 at +09:00.
        assert_eq!(
            w[0].label,
            "2025-03-01T00:00:00+09:00..2025-03-15T12:00:00+09:00"
        );
        let (k, m) = err(json!({"auth": bearer(), "start": "2025-04-01T00:00:00+09:00"}));
        assert_eq!(k, "end");
        assert!(m.contains("defaults to now"), "{m}");
    }

    #[test]
    fn command_line_range_wins_over_the_file() {
        let mut c = cx();
        c.start = Some(DateTime::parse_from_rfc3339("2025-02-01T00:00:00+09:00").unwrap());
        c.end = Some(DateTime::parse_from_rfc3339("2025-02-02T00:00:00+09:00").unwrap());
        let s = build_with(
            json!({"auth": bearer(), "start": "2020-01-01T00:00:00Z", "end": "2020-12-31T00:00:00Z"}),
            &c,
        )
        .unwrap();
        let w = s.api_windows();
        assert_eq!(w.len(), 1);
        assert_eq!(
            w[0].label,
            "2025-02-01T00:00:00+09:00..2025-02-02T00:00:00+09:00"
        );
        c.end = Some(DateTime::parse_from_rfc3339("2025-01-01T00:00:00+09:00").unwrap());
        let e = build_with(json!({"auth": bearer()}), &c).err().unwrap();
        assert_eq!(e.key, "end");
        assert!(e.message.contains("--end"), "{}", e.message);
    }

    #[test]
    fn files_need_no_credentials_or_range() {
        let s = build(json!({"files": ["exports/*.csv"], "utc_offset": "-05:00"})).unwrap();
        assert!(
            s.api_windows().is_empty(),
            "file windows are found at run time"
        );
        assert_eq!(err(json!({"files": []})).0, "files");
        assert_eq!(
            err(json!({"files": ["ok/*.csv", "bad/[.csv"]})).0,
            "files[1]"
        );
        assert_eq!(
            err(json!({"files": ["a.csv"], "start": "2025-02-01T00:00:00Z", "end": "2025-01-01T00:00:00Z"})).0,
            "end"
        );
    }

    #[test]
    fn emulator_profile_replaces_urls_and_auth() {
        let mut c = cx();
        c.emulator = Some(EmulatorProfile {
            root: "http://127.0.0.1:4000".into(),
            credentials: [
                ("lineworks.client_id", "cid"),
                ("lineworks.client_secret", "cs"),
                ("lineworks.service_account", "sa"),
                ("lineworks.private_key", crate::auth::tests::TEST_KEY),
                ("lineworks.download_host", "127.0.0.1:4001"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), Secret::new(v)))
            .collect(),
        });
        let s = build_with(json!({"start": "2025-01-01T00:00:00+09:00"}), &c).unwrap();
        let plan = chatlake_core::Source::plan(&s).unwrap();
        assert!(
            plan[0].request.starts_with(
                "GET http://127.0.0.1:4000/v1.0/monitoring/message-contents/download?"
            ),
            "{}",
            plan[0].request
        );
        c.emulator
            .as_mut()
            .unwrap()
            .credentials
            .remove("lineworks.client_secret");
        let e = build_with(json!({"start": "2025-01-01T00:00:00+09:00"}), &c)
            .err()
            .unwrap();
        assert_eq!(e.key, "auth");
        assert!(e.message.contains("lineworks.client_secret"));
    }

    #[test]
    fn offsets() {
        let h = |s: &str| parse_utc_offset(s).map(|o| o.local_minus_utc());
        assert_eq!(h("+09:00"), Some(9 * 3600));
        assert_eq!(h("-05:30"), Some(-(5 * 3600 + 30 * 60)));
        assert_eq!(h("+0900"), Some(9 * 3600));
        assert_eq!(h("+9"), Some(9 * 3600));
        assert_eq!(h("Z"), Some(0));
        assert_eq!(h("UTC"), Some(0));
        assert_eq!(h("09:00"), None);
        assert_eq!(h("+24:00"), None);
        assert_eq!(h("+09:60"), None);
        assert_eq!(h("+"), None);
    }

    #[test]
    fn schema_documents_every_option() {
        let schema = serde_json::to_value(schemars::schema_for!(LineworksSourceConfig)).unwrap();
        let props = schema["properties"].as_object().unwrap();
        for (name, p) in props {
            let has_doc = p.get("description").is_some()
                || p.get("$ref").is_some()
                || p.get("anyOf").is_some();
            assert!(has_doc, "{name} has no description: {p}");
        }
        assert_eq!(props["request_timeout"]["default"], "10m");
        assert_eq!(props["language"]["default"], "en_US");
        assert_eq!(props["window_days"]["default"], 31);
    }
}
