//! The `qlara_message_history` source table, its checks and `build`.
//!
//! Building is pure: it checks the options, parses the URL, cuts the windows and compiles the
//! globs, but reads no file and opens no connection, so `chatlake validate` and `chatlake plan`
//! run offline.

use std::collections::HashMap;
use std::time::Duration;

use chatlake_core::config::InvalidConfig;
use chatlake_core::state::SourceState;
use chatlake_core::{BuildContext, Secret, Source, SourceConfig, Window};
use chatlake_http::RetryPolicy;
use chatlake_source_kit::options::{
    at_least_one, auth_required, check_retry, emulator_url, longer_than_zero, non_empty,
    non_empty_secret, parse_http_url,
};
use chatlake_source_kit::time::OffsetTime;
use chatlake_source_kit::{FilesMode, windows};
use chrono::{DateTime, FixedOffset};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::source::{ApiMode, Credentials, Mode, QlaraSource, STREAM};

pub const DEFAULT_BASE_URL: &str = "https://lora-api.agiletelecom.com/api";
/// The poll interval under `--emulate`, at most: the emulator's jobs finish at once, and a demo
/// should not wait 5 s per window.
pub const EMULATOR_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Pulls the SMS/RCS/WhatsApp message history of a Qlara (Agile Telecom) account through the
/// asynchronous CSV export, or from export CSVs downloaded by hand.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QlaraSourceConfig {
    /// API root (`…/api`); requests go to `{base_url}/partner-gateway/v1/...`. `--emulate`
    /// replaces it with the emulator's.
    #[serde(default = "default_base_url")]
    pub base_url: String,

    /// How to authenticate: `{type = "api_key", key = "..."}` (the `X-Api-Key` header) or
    /// `{type = "basic", username = "...", password = "..."}`. Sent only to the API host, never
    /// to a download URL. Required unless `files` is set.
    #[serde(default)]
    pub auth: Option<QlaraAuth>,

    /// Start of the range, inclusive, RFC 3339 with an offset (`2025-01-01T00:00:00+01:00`).
    /// Required unless `files` is set. `--start` overrides it.
    pub start: Option<OffsetTime>,

    /// End of the range, inclusive; default now (in start's offset). `--end` overrides it.
    pub end: Option<OffsetTime>,

    /// Days per export window (1 to 366). Each window is one export job and one commit.
    #[serde(default = "default_window_days")]
    pub window_days: u32,

    /// Pause between two polls of the exports list (jittered by ±20 %). Under `--emulate` it is
    /// at most 200 ms.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,

    /// How long a window's export may take to become downloadable; after that the window fails
    /// (nothing of it is committed) and the run exits 1.
    #[serde(default = "default_export_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub export_timeout: Duration,

    /// How many times an export the provider reports `FAILED` is submitted again.
    #[serde(default = "default_max_resubmits")]
    pub max_resubmits: u32,

    /// How many times an expired download link is regenerated (`POST /exports/{id}`).
    #[serde(default = "default_max_regenerations")]
    pub max_regenerations: u32,

    /// Only messages from this sender (the export's `sender` filter).
    #[serde(default)]
    pub sender: Option<String>,

    /// Only messages to this recipient number (the export's `recipient` filter).
    #[serde(default)]
    pub recipient: Option<String>,

    /// Load these export CSVs (globs, relative to the working directory) instead of calling the
    /// API: exports downloaded by hand. No credentials needed; each file is one window, in path
    /// order; `start`/`end`, if set, keep only rows whose `sendDate` is in the range.
    #[serde(default)]
    pub files: Option<Vec<String>>,

    /// Request budget of the API key, shared by every Qlara source of the process that uses it:
    /// requests are spaced evenly (1000 a minute is 60 ms apart, under the burst limit too).
    /// Production keys allow 1000 a minute, trial keys 100. Downloads do not count.
    #[serde(default = "default_requests_per_minute")]
    pub requests_per_minute: u32,

    /// How failed requests are retried (429 honouring `retryAfter`, 5xx, dropped connections).
    #[serde(default)]
    pub retry: RetryPolicy,

    /// Rows per batch handed downstream.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,

    /// How long one request may take, the whole file download included.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,

    /// Export this much again before where earlier runs stopped, so a scheduled run sees the
    /// delivery reports (`SENT` → `DELIVERED`, `EXPIRED`, `ERROR`) that came after the export
    /// that showed a message in flight. Default 3d: a report can take up to the message's
    /// validity period (2–3 days is usual for SMS; an assumption, the docs give no maximum).
    /// Pair it with `dedupe keep = "latest"` and `across_runs = true`, which replaces a loaded
    /// row by its newer version and loads an unchanged row once. `0s` turns it off.
    #[serde(default = "default_lookback", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lookback: Duration,
}

/// Credentials for the Qlara Platform API.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum QlaraAuth {
    /// An API key, sent as the `X-Api-Key` header.
    #[serde(rename = "api_key")]
    ApiKey {
        /// The API key.
        key: Secret,
    },
    /// HTTP Basic authentication.
    #[serde(rename = "basic")]
    Basic {
        /// The account's user name.
        username: String,
        /// The account's password.
        password: Secret,
    },
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.into()
}
fn default_window_days() -> u32 {
    31
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_export_timeout() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_max_resubmits() -> u32 {
    3
}
fn default_max_regenerations() -> u32 {
    3
}
fn default_requests_per_minute() -> u32 {
    1000
}
fn default_batch_size() -> usize {
    8192
}
fn default_lookback() -> Duration {
    DEFAULT_LOOKBACK
}

/// How far back a run exports again by default: the longest usual validity of an SMS.
pub const DEFAULT_LOOKBACK: Duration = Duration::from_secs(3 * 86_400);

fn default_request_timeout() -> Duration {
    Duration::from_secs(600)
}

pub use chatlake_source_kit::time::format_time;

/// Cuts `[start, end]` (inclusive, whole seconds) into windows of at most `days` days, each
/// starting one second after the previous one ends.
pub fn split(
    source: &str,
    start: DateTime<FixedOffset>,
    end: DateTime<FixedOffset>,
    days: u32,
) -> Vec<Window> {
    windows::split(source, STREAM, start, end, days)
}

/// Export ids an earlier run recorded for windows it did not finish, by window key. A checkpoint
/// is `{"export_id": "..."}` (what [`crate::ExportCheckpoint`] holds) or the bare id.
pub fn known_exports(ledger: &SourceState) -> HashMap<String, String> {
    ledger
        .checkpoints
        .iter()
        .filter_map(|(key, v)| {
            let id = v
                .get("export_id")
                .and_then(|id| id.as_str())
                .or_else(|| v.as_str())?;
            (!id.is_empty()).then(|| (key.clone(), id.to_string()))
        })
        .collect()
}

impl QlaraSourceConfig {
    fn configured_auth(&self) -> Result<Credentials, InvalidConfig> {
        match &self.auth {
            None => Err(auth_required(
                "`{type = \"api_key\", key = \"...\"}` or \
                 `{type = \"basic\", username = \"...\", password = \"...\"}`",
            )),
            Some(QlaraAuth::ApiKey { key }) => {
                non_empty("auth.key", key.expose())?;
                Ok(Credentials::ApiKey(key.clone()))
            }
            Some(QlaraAuth::Basic { username, password }) => {
                non_empty("auth.username", username)?;
                non_empty_secret("auth.password", password)?;
                Ok(Credentials::Basic {
                    username: username.clone(),
                    password: password.clone(),
                })
            }
        }
    }

    /// Checks every option and computes the source's windows; no I/O.
    pub fn check(self, cx: &BuildContext) -> Result<QlaraSource, InvalidConfig> {
        if !(1..=366).contains(&self.window_days) {
            return Err(InvalidConfig::new(
                "window_days",
                format!("must be 1 to 366, got {}", self.window_days),
            ));
        }
        if self.batch_size == 0 {
            return Err(InvalidConfig::new("batch_size", "must be at least 1"));
        }
        let requests_per_minute = at_least_one("requests_per_minute", self.requests_per_minute)?;
        for (key, d) in [
            ("poll_interval", self.poll_interval),
            ("export_timeout", self.export_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            longer_than_zero(key, d)?;
        }
        check_retry(&self.retry)?;
        for (key, v) in [("sender", &self.sender), ("recipient", &self.recipient)] {
            if v.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(InvalidConfig::new(
                    key,
                    "must not be empty (or leave it out)",
                ));
            }
        }
        let mut base_url = parse_http_url("base_url", &self.base_url)?;

        let range = cx.range(self.start.map(Into::into), self.end.map(Into::into))?;
        let (start, end) = (range.start, range.end);

        let mode = if let Some(patterns) = &self.files {
            // Export CSVs write their own offsets; a window's offset is only start's, if set.
            let utc_offset = start
                .map(|s| *s.offset())
                .unwrap_or_else(|| FixedOffset::east_opt(0).expect("UTC is an offset"));
            Mode::Files(FilesMode::new(
                patterns,
                STREAM,
                utc_offset,
                (start, end),
                cx.state.clone(),
            )?)
        } else {
            let (start, end) = range.for_api(cx.now, "2025-01-01T00:00:00+01:00")?;
            let mut poll_interval = self.poll_interval;
            let credentials = match &cx.emulator {
                Some(profile) => {
                    base_url = emulator_url(profile, "base_url", "/api")?;
                    poll_interval = poll_interval.min(EMULATOR_POLL_INTERVAL);
                    Credentials::ApiKey(profile.credential("qlara.api_key")?)
                }
                None => self.configured_auth()?,
            };
            Mode::Api(Box::new(ApiMode {
                base_url,
                credentials,
                windows: windows::split_uncovered(
                    &cx.name,
                    STREAM,
                    start,
                    end,
                    self.window_days,
                    &cx.state,
                    self.lookback,
                ),
                sender: self.sender.clone(),
                recipient: self.recipient.clone(),
                export: chatlake_http::export::ExportSettings {
                    poll_interval,
                    export_timeout: self.export_timeout,
                    max_resubmits: self.max_resubmits,
                    max_regenerations: self.max_regenerations,
                    retry: self.retry.clone(),
                },
                request_timeout: self.request_timeout,
                requests_per_minute,
            }))
        };
        Ok(QlaraSource::new(cx.name.clone(), self.batch_size, mode)
            .with_known_exports(known_exports(&cx.state)))
    }
}

impl SourceConfig for QlaraSourceConfig {
    const TYPE: &'static str = "qlara_message_history";
    const SUMMARY: &'static str = "Qlara (Agile Telecom) SMS/RCS/WhatsApp history via the async CSV \
         export, or export CSVs downloaded by hand. What it leaves out: the export holds only \
         messages sent through the API (seed 003), not those sent from Qlara's campaign tools or \
         web console; a delivery report that comes after a range was exported reaches the lake \
         only through `lookback`; the paginated `GET /messages/history` is not offered (its item \
         fields, order, page limit and coverage are not documented well enough to archive from).";
    const EXAMPLE: &'static str = include_str!("example.toml");

    fn build(self, cx: &BuildContext) -> Result<Box<dyn Source>, InvalidConfig> {
        Ok(Box::new(self.check(cx)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatlake_core::stage::EmulatorProfile;
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    fn cx() -> BuildContext {
        BuildContext {
            name: "sms".into(),
            pipeline: "p".into(),
            emulator: None,
            start: None,
            end: None,
            now: Utc.with_ymd_and_hms(2025, 3, 15, 3, 0, 0).unwrap(),
            ..BuildContext::default()
        }
    }

    fn parse(v: serde_json::Value) -> Result<QlaraSourceConfig, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    fn build_with(v: serde_json::Value, cx: &BuildContext) -> Result<QlaraSource, InvalidConfig> {
        parse(v).unwrap().check(cx)
    }

    fn err(v: serde_json::Value) -> (String, String) {
        let e = build_with(v, &cx()).err().expect("should fail");
        (e.key, e.message)
    }

    fn key() -> serde_json::Value {
        json!({"type": "api_key", "key": "k"})
    }

    #[test]
    fn defaults() {
        let c = parse(json!({})).unwrap();
        assert_eq!(c.base_url, DEFAULT_BASE_URL);
        assert_eq!(c.window_days, 31);
        assert_eq!(c.poll_interval, Duration::from_secs(5));
        assert_eq!(c.export_timeout, Duration::from_secs(1800));
        assert_eq!(c.max_resubmits, 3);
        assert_eq!(c.batch_size, 8192);
        assert_eq!(c.retry, RetryPolicy::default());
    }

    #[test]
    fn parses_the_spec_example_and_plans_windows() {
        let c = parse(json!({
            "auth": key(), "start": "2025-01-01T00:00:00+01:00", "end": "2025-03-01T00:00:00+01:00",
            "poll_interval": "5s", "export_timeout": "30m", "sender": "ACME"
        }))
        .unwrap();
        let s = c.check(&cx()).unwrap();
        let plan = chatlake_core::Source::plan(&s).unwrap();
        assert_eq!(plan.len(), 2);
        assert!(plan[0].request.starts_with(
            "POST https://lora-api.agiletelecom.com/api/partner-gateway/v1/messages/history/export"
        ), "{}", plan[0].request);
        assert!(
            plan[0].request.contains("2025-01-31T23:59:59+01:00"),
            "{}",
            plan[0].request
        );
        assert!(
            plan[0].request.contains("sender=ACME"),
            "{}",
            plan[0].request
        );
        assert!(!plan[0].request.contains("\"k\""), "no key in plans");
        assert_eq!(
            plan[1].window.label,
            "2025-02-01T00:00:00+01:00..2025-03-01T00:00:00+01:00"
        );
        let c = parse(
            json!({"auth": {"type": "basic", "username": "u", "password": "p"},
                             "start": "2025-01-01T00:00:00Z"}),
        )
        .unwrap();
        assert!(c.check(&cx()).is_ok());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(
            parse(json!({"pol_interval": "5s"}))
                .unwrap_err()
                .contains("unknown field")
        );
        assert!(parse(json!({"auth": {"type": "api_key", "key": "k", "x": 1}})).is_err());
        assert!(parse(json!({"auth": {"type": "token"}})).is_err());
        assert!(parse(json!({"poll_interval": "often"})).is_err());
        let e = parse(json!({"start": "2025-01-01"})).unwrap_err();
        assert!(e.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn validation_errors_name_their_key() {
        let base = || json!({"auth": key(), "start": "2025-01-01T00:00:00+01:00"});
        let with = |k: &str, v: serde_json::Value| {
            let mut b = base();
            b[k] = v;
            b
        };
        assert!(build_with(base(), &cx()).is_ok());
        assert_eq!(err(json!({"auth": key()})).0, "start");
        assert_eq!(err(json!({"start": "2025-01-01T00:00:00Z"})).0, "auth");
        assert_eq!(err(with("end", json!("2024-01-01T00:00:00Z"))).0, "end");
        assert_eq!(err(with("window_days", json!(0))).0, "window_days");
        assert_eq!(err(with("poll_interval", json!("0s"))).0, "poll_interval");
        assert_eq!(err(with("export_timeout", json!("0s"))).0, "export_timeout");
        assert_eq!(err(with("batch_size", json!(0))).0, "batch_size");
        assert_eq!(
            err(with("requests_per_minute", json!(0))).0,
            "requests_per_minute"
        );
        assert_eq!(err(with("sender", json!(" "))).0, "sender");
        assert_eq!(err(with("base_url", json!("ftp://x"))).0, "base_url");
        assert_eq!(
            err(with("auth", json!({"type": "api_key", "key": ""}))).0,
            "auth.key"
        );
        assert_eq!(
            err(with(
                "auth",
                json!({"type": "basic", "username": "", "password": "p"})
            ))
            .0,
            "auth.username"
        );
        assert_eq!(
            err(with("retry", json!({"max_attempts": 0}))).0,
            "retry.max_attempts"
        );
        assert_eq!(err(json!({"files": []})).0, "files");
        assert_eq!(err(json!({"files": ["a/[.csv"]})).0, "files[0]");
        assert!(build_with(json!({"files": ["x/*.csv"]}), &cx()).is_ok());
    }

    #[test]
    fn emulator_profile_replaces_url_key_and_caps_the_poll_interval() {
        let mut c = cx();
        c.emulator = Some(EmulatorProfile {
            root: "http://127.0.0.1:4000".into(),
            credentials: [("qlara.api_key".to_string(), Secret::new("emu"))].into(),
        });
        let s = build_with(json!({"start": "2025-01-01T00:00:00Z"}), &c).unwrap();
        let plan = chatlake_core::Source::plan(&s).unwrap();
        assert!(
            plan[0]
                .request
                .starts_with("POST http://127.0.0.1:4000/api/partner-gateway/v1/")
        );
        assert_eq!(s.poll_interval(), Some(EMULATOR_POLL_INTERVAL));
        c.emulator.as_mut().unwrap().credentials.clear();
        let e = build_with(json!({"start": "2025-01-01T00:00:00Z"}), &c)
            .err()
            .unwrap();
        assert!(e.message.contains("qlara.api_key"));
    }

    #[test]
    fn windows_are_inclusive_and_consecutive() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap();
        let w = split(
            "q",
            t("2025-01-01T00:00:00+01:00"),
            t("2025-01-03T12:00:00+01:00"),
            1,
        );
        assert_eq!(w.len(), 3);
        assert_eq!(
            w[0].label,
            "2025-01-01T00:00:00+01:00..2025-01-01T23:59:59+01:00"
        );
        assert_eq!(
            w[2].label,
            "2025-01-03T00:00:00+01:00..2025-01-03T12:00:00+01:00"
        );
    }

    #[test]
    fn the_ledger_skips_committed_windows_and_resumes_known_exports() {
        use chatlake_core::state::{WindowRecord, WindowStatus};
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap();
        let all = split(
            "sms",
            t("2025-01-01T00:00:00Z"),
            t("2025-01-03T23:59:59Z"),
            1,
        );
        let mut ledger = SourceState::default();
        ledger.windows.insert(
            all[0].key(),
            WindowRecord {
                stream: STREAM.into(),
                label: all[0].label.clone(),
                start: all[0].start,
                end: all[0].end,
                status: WindowStatus::Committed,
                run_id: "r1".into(),
                at: Utc::now(),
                checkpoint: None,
            },
        );
        ledger
            .checkpoints
            .insert(all[1].key(), json!({"export_id": "exp-1"}));
        let c = BuildContext {
            state: std::sync::Arc::new(ledger),
            ..cx()
        };
        let s = build_with(
            // Without a lookback, which would reopen the committed window.
            json!({"auth": key(), "start": "2025-01-01T00:00:00Z", "end": "2025-01-03T23:59:59Z",
                   "window_days": 1, "lookback": "0s"}),
            &c,
        )
        .unwrap();
        let keys: Vec<String> = s.api_windows().iter().map(Window::key).collect();
        assert_eq!(keys, [all[1].key(), all[2].key()]);
        let plan = chatlake_core::Source::plan(&s).unwrap();
        assert!(plan[0].request.contains("exp-1"), "{}", plan[0].request);
        assert!(plan[1].request.starts_with("POST "));
    }

    #[test]
    fn schema_documents_every_option() {
        let schema = serde_json::to_value(schemars::schema_for!(QlaraSourceConfig)).unwrap();
        for (name, p) in schema["properties"].as_object().unwrap() {
            let has_doc = p.get("description").is_some()
                || p.get("$ref").is_some()
                || p.get("anyOf").is_some();
            assert!(has_doc, "{name} has no description: {p}");
        }
        assert_eq!(schema["properties"]["poll_interval"]["default"], "5s");
        assert_eq!(schema["properties"]["export_timeout"]["default"], "30m");
    }
}
