//! The `zoom_user_messages` and `zoom_chat_report` tables, their checks and `build`.
//!
//! Building is pure: URLs, ranges, lists and limits are checked and the date ranges cut into
//! windows, but nothing is fetched, so `validate` and `plan` run offline. The chat report's
//! limits (a month per request, nothing older than six months) are checked here against the
//! run's clock, so a bad range is refused up front rather than by a `400` mid-run.

use std::num::NonZeroU32;
use std::time::Duration;

use chatlake_core::config::{InvalidConfig, StorageOptions};
use chatlake_core::{BuildContext, Secret, Source, SourceConfig};
use chatlake_http::{DownloadHosts, RetryPolicy};
use chatlake_source_kit::options::{
    at_least_one, auth_required, check_retry, emulator_url, longer_than_zero, non_empty,
    non_empty_secret, parse_http_url,
};
use chatlake_source_kit::time::OffsetTime;
use chrono::{DateTime, Datelike, FixedOffset, Months, NaiveDate, SubsecRound, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use url::Url;

use crate::api::{Budgets, Credentials};
use crate::attachments::{Attachments, Place};
use crate::source::{
    ApiSettings, Conversations, Mode, ReportOptions, Stream, UserOptions, ZoomSource, saved_pages,
};

pub const DEFAULT_BASE_URL: &str = "https://api.zoom.us/v2";
pub const DEFAULT_TOKEN_URL: &str = "https://zoom.us/oauth/token";
/// The largest `page_size` of the user-messages endpoint.
pub const MAX_USER_PAGE_SIZE: u32 = 50;
/// The largest `page_size` of the report (assumed, providers.md §3).
pub const MAX_REPORT_PAGE_SIZE: u32 = 100;
/// The ledger's stream name of the chat report's windows.
const REPORT_STREAM: &str = "chat_report";

/// Server-to-Server OAuth credentials of a Zoom app (`account_credentials` grant).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum ZoomAuth {
    /// A Server-to-Server OAuth app: tokens last an hour and are fetched again ahead of expiry.
    #[serde(rename = "zoom_server_to_server")]
    ServerToServer {
        /// The account id of the app.
        account_id: String,
        /// The app's Client ID.
        client_id: String,
        /// The app's Client Secret.
        client_secret: Secret,
        /// The token endpoint.
        #[serde(default = "default_token_url")]
        token_url: String,
    },
}

/// `"all"` or a list of ids.
#[derive(Debug, Clone, Default)]
pub enum AllOr<T> {
    /// `"all"`: discover them.
    #[default]
    All,
    /// These.
    List(T),
}

impl<T: JsonSchema> JsonSchema for AllOr<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("AllOr_{}", T::schema_name()).into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "anyOf": [{"const": "all"}, generator.subschema_for::<T>()],
            "default": "all"
        })
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for AllOr<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw<T> {
            Text(String),
            List(T),
        }
        match Raw::<T>::deserialize(d)? {
            Raw::Text(s) if s == "all" => Ok(AllOr::All),
            Raw::Text(s) => Err(serde::de::Error::custom(format!(
                "expected \"all\" or a list, got {s:?}"
            ))),
            Raw::List(l) => Ok(AllOr::List(l)),
        }
    }
}

/// A user status of `GET /users`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum UserStatus {
    Active,
    Inactive,
    Pending,
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Active => "active",
            UserStatus::Inactive => "inactive",
            UserStatus::Pending => "pending",
        }
    }
}

/// Explicit conversations of each listed user.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversationList {
    /// Channel ids.
    #[serde(default)]
    pub to_channel: Vec<String>,
    /// Contacts of 1:1 chats: email, user id or member id.
    #[serde(default)]
    pub to_contact: Vec<String>,
}

/// Zoom Team Chat messages per user and conversation
/// (`GET /chat/users/{userId}/messages`), or saved response pages.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ZoomUserMessagesConfig {
    /// API root including the version path. `--emulate` replaces it with the emulator's.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Credentials; required unless `files` is set.
    #[serde(default)]
    pub auth: Option<ZoomAuth>,
    /// `"all"` (discovered with `GET /users`) or a list of user ids or emails.
    #[serde(default)]
    pub users: AllOr<Vec<String>>,
    /// With `users = "all"`: the statuses to discover, one `GET /users?status=...` listing
    /// each. Zoom lists only active users unless asked; `inactive` users (deactivated: people
    /// who left) keep their chats, which an archive must keep too. `pending` users (invited,
    /// not joined) have none.
    #[serde(default = "default_user_status")]
    pub user_status: Vec<UserStatus>,
    /// `"all"` (each user's channels and 1:1 contacts, from `/chat/users/{id}/channels` and
    /// `/chat/users/{id}/sessions`) or `{ to_channel = [...], to_contact = [...] }`.
    #[serde(default)]
    pub conversations: AllOr<ConversationList>,
    /// Start of the range, RFC 3339 (`2025-05-01T00:00:00Z`). Required unless `files` is set.
    pub start: Option<OffsetTime>,
    /// End of the range, inclusive; default now.
    pub end: Option<OffsetTime>,
    /// Days per window (one window per user, conversation and stretch of days).
    #[serde(default = "default_window_days")]
    pub window_days: u32,
    /// Messages per page, 1 to 50.
    #[serde(default = "default_user_page_size")]
    pub page_size: u32,
    /// Ask for edited and deleted versions too (`include_deleted_and_edited_message`); each
    /// version becomes a record of its own.
    #[serde(default = "default_true")]
    pub include_deleted_and_edited: bool,
    /// Leave out replies in threads (`exclude_child_message`).
    #[serde(default)]
    pub exclude_child_messages: bool,
    /// `download_file_formats`, e.g. `audio/mp4`.
    #[serde(default)]
    pub download_file_formats: Option<String>,
    /// `message` or `file`: search instead of listing (then no edited/deleted versions).
    #[serde(default)]
    pub search_type: Option<String>,
    /// The search text, at most 256 characters.
    #[serde(default)]
    pub search_key: Option<String>,
    /// The account's Medium limit per second (Pro: 20), shared by every Zoom source of the
    /// account in this process.
    #[serde(default = "default_medium")]
    pub requests_per_second: u32,
    /// The account's Heavy limit per second (Pro: 10).
    #[serde(default = "default_heavy")]
    pub heavy_requests_per_second: u32,
    /// A daily cap on Medium requests (Free accounts: 2,000); none by default.
    #[serde(default)]
    pub daily_requests: Option<u32>,
    /// A daily cap on Heavy requests (Pro: 30,000, shared with Resource-intensive APIs).
    #[serde(default)]
    pub heavy_daily_requests: Option<u32>,
    /// Windows fetched at once (different users/conversations), within the budget.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How failed requests are retried (429, 5xx, dropped connections).
    #[serde(default)]
    pub retry: RetryPolicy,
    /// How long one request may take.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// Fetch this much again before where earlier runs stopped, per conversation, so a scheduled
    /// run sees messages edited or deleted after their window was loaded (with
    /// `include_deleted_and_edited`). Default 1d, an assumption: Zoom documents no limit on how
    /// long a message can be edited or deleted (account settings may allow it at any time), so
    /// this catches what changes within a day of the last run; raise it for more. Pair it with
    /// `dedupe keep = "latest"` and `across_runs = true`, which replaces a loaded message by its
    /// newer version and loads an unchanged one once. `0s` turns it off.
    #[serde(default = "default_lookback", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lookback: Duration,
    /// Download each file of a message and save it once, by its content, under
    /// `attachments_path` (`<sha256[..2]>/<sha256>.<ext>`); the row's attachment gets the place
    /// in `stored_at`. Zoom's `download_url`s expire: an archive that keeps only the URL loses
    /// the file. Off by default. Downloads use this source's retries and rate budget, and the
    /// token goes only to the API's host and the hosts of `download_hosts`.
    #[serde(default)]
    pub download_attachments: bool,
    /// Where downloaded files go: a local directory or an object-store URL (`s3://bucket/prefix`,
    /// `gs://`, `az://`). Required with `download_attachments`.
    #[serde(default)]
    pub attachments_path: Option<String>,
    /// How to reach the object store of `attachments_path` (as a sink's `storage` table).
    #[serde(default)]
    pub attachments_storage: StorageOptions,
    /// A file larger than this (as listed, or once reading passes it) is not downloaded: a
    /// warning, counted in the run summary, and the row keeps its URL without `stored_at`.
    /// Default 104857600 (100 MiB); a file is held in memory while it is hashed.
    #[serde(default = "default_max_attachment_bytes")]
    pub max_attachment_bytes: u64,
    /// The hosts besides the API's that may receive the access token for a file download
    /// (`host` or `host:port`, https only, http only on loopback). Default: Zoom's file host,
    /// `file.zoom.us`. A file elsewhere is not downloaded (a warning, counted).
    #[serde(default = "default_download_hosts")]
    pub download_hosts: Vec<String>,
    /// Load saved response pages (JSON Lines, one page per line with `user_id` and
    /// `to_channel`/`to_contact` added at the top level) instead of calling the API.
    #[serde(default)]
    pub files: Option<Vec<String>>,
}

/// Zoom chat message reports per session and calendar month
/// (`GET /report/chat/sessions/{sessionId}`), or saved response pages.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ZoomChatReportConfig {
    /// API root including the version path. `--emulate` replaces it with the emulator's.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Credentials; required unless `files` is set.
    #[serde(default)]
    pub auth: Option<ZoomAuth>,
    /// `"all"` (from `GET /report/chat/sessions`, per month) or a list of session ids.
    #[serde(default)]
    pub sessions: AllOr<Vec<String>>,
    /// First day, `2025-06-01` (UTC; an RFC 3339 time counts from its UTC date). The report
    /// serves the last six months: older months the ledger holds are not fetched again, older
    /// months never loaded are reported as a warning (and in the run summary), not an error.
    /// Default: the first month the ledger does not hold (from the month it starts in), or the
    /// first day of last month when nothing is loaded yet.
    #[serde(default, deserialize_with = "deserialize_day")]
    #[schemars(with = "Option<String>")]
    pub start: Option<NaiveDate>,
    /// Last day, inclusive; default today (UTC).
    #[serde(default, deserialize_with = "deserialize_day")]
    #[schemars(with = "Option<String>")]
    pub end: Option<NaiveDate>,
    /// Ask for edited versions (`include_fields=edited_messages`).
    #[serde(default = "default_true")]
    pub include_edited: bool,
    /// Ask for deleted versions (`include_fields=deleted_messages`).
    #[serde(default = "default_true")]
    pub include_deleted: bool,
    /// `include_bot_message`: without it bot messages cannot be told apart.
    #[serde(default = "default_true")]
    pub include_bot_messages: bool,
    /// `include_reactions`.
    #[serde(default)]
    pub include_reactions: bool,
    /// `query_all_modifications`: select by modification time instead of send time.
    #[serde(default)]
    pub query_all_modifications: bool,
    /// Messages per page, 1 to 100.
    #[serde(default = "default_report_page_size")]
    pub page_size: u32,
    /// The account's Medium limit per second (Pro: 20).
    #[serde(default = "default_medium")]
    pub requests_per_second: u32,
    /// The account's Heavy limit per second (Pro: 10); the session list is Heavy.
    #[serde(default = "default_heavy")]
    pub heavy_requests_per_second: u32,
    /// A daily cap on Medium requests (Free accounts: 2,000); none by default.
    #[serde(default)]
    pub daily_requests: Option<u32>,
    /// A daily cap on Heavy requests (Pro: 30,000, shared with Resource-intensive APIs).
    #[serde(default)]
    pub heavy_daily_requests: Option<u32>,
    /// Windows fetched at once, within the budget.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How failed requests are retried.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// How long one request may take.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// Fetch this much again before where earlier runs stopped, per session, so a scheduled run
    /// sees edits and deletes (`edited_messages`, `deleted_messages`) made after a window was
    /// loaded. Default 1d, an assumption (Zoom documents no limit on how long a message can be
    /// edited or deleted); a lookback reaching into an earlier month fetches that month's
    /// report again from the lookback's start. Pair it with `dedupe keep = "latest"` and
    /// `across_runs = true`. `0s` turns it off.
    #[serde(default = "default_lookback", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lookback: Duration,
    /// Download each file of a message and save it once, by its content, under
    /// `attachments_path` (`<sha256[..2]>/<sha256>.<ext>`); the row's attachment gets the place
    /// in `stored_at`. Zoom's `download_url`s expire: an archive that keeps only the URL loses
    /// the file. Off by default. Downloads use this source's retries and rate budget, and the
    /// token goes only to the API's host and the hosts of `download_hosts`.
    #[serde(default)]
    pub download_attachments: bool,
    /// Where downloaded files go: a local directory or an object-store URL (`s3://bucket/prefix`,
    /// `gs://`, `az://`). Required with `download_attachments`.
    #[serde(default)]
    pub attachments_path: Option<String>,
    /// How to reach the object store of `attachments_path` (as a sink's `storage` table).
    #[serde(default)]
    pub attachments_storage: StorageOptions,
    /// A file larger than this (as listed, or once reading passes it) is not downloaded: a
    /// warning, counted in the run summary, and the row keeps its URL without `stored_at`.
    /// Default 104857600 (100 MiB); a file is held in memory while it is hashed.
    #[serde(default = "default_max_attachment_bytes")]
    pub max_attachment_bytes: u64,
    /// The hosts besides the API's that may receive the access token for a file download
    /// (`host` or `host:port`, https only, http only on loopback). Default: Zoom's file host,
    /// `file.zoom.us`. A file elsewhere is not downloaded (a warning, counted).
    #[serde(default = "default_download_hosts")]
    pub download_hosts: Vec<String>,
    /// Load saved report pages (JSON Lines, one page per line with `session_id` added).
    #[serde(default)]
    pub files: Option<Vec<String>>,
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.into()
}
fn default_token_url() -> String {
    DEFAULT_TOKEN_URL.into()
}
/// Zoom's file host, where `download_url`s point (providers.md §3).
pub const DEFAULT_DOWNLOAD_HOST: &str = "file.zoom.us";

fn default_download_hosts() -> Vec<String> {
    vec![DEFAULT_DOWNLOAD_HOST.to_owned()]
}
fn default_max_attachment_bytes() -> u64 {
    100 * 1024 * 1024
}
fn default_true() -> bool {
    true
}
fn default_user_status() -> Vec<UserStatus> {
    vec![UserStatus::Active, UserStatus::Inactive]
}
fn default_window_days() -> u32 {
    30
}
fn default_user_page_size() -> u32 {
    MAX_USER_PAGE_SIZE
}
fn default_report_page_size() -> u32 {
    MAX_REPORT_PAGE_SIZE
}
fn default_medium() -> u32 {
    20
}
fn default_heavy() -> u32 {
    10
}
fn default_concurrency() -> usize {
    8
}
/// How far back a run fetches again by default (see `lookback`).
pub const DEFAULT_LOOKBACK: Duration = Duration::from_secs(86_400);

fn default_lookback() -> Duration {
    DEFAULT_LOOKBACK
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}

/// A day, `2025-06-01`, or the UTC date of an RFC 3339 time.
fn deserialize_day<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NaiveDate>, D::Error> {
    let Some(s) = chatlake_source_kit::time::deserialize_time_text(d)? else {
        return Ok(None);
    };
    let s = s.trim();
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .or_else(|| {
            DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.with_timezone(&Utc).date_naive())
        })
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(format!("expected a date like 2025-06-01, got {s:?}"))
        })
}

fn utc() -> FixedOffset {
    FixedOffset::east_opt(0).expect("zero is a valid offset")
}

/// The table's attachment keys, checked.
struct AttachmentKeys<'a> {
    download: bool,
    path: &'a Option<String>,
    storage: &'a StorageOptions,
    max_bytes: u64,
    hosts: &'a [String],
}

impl AttachmentKeys<'_> {
    /// `None` unless `download_attachments`; the store is opened (no I/O) here so a bad URL
    /// or storage table is a config error.
    fn check(&self, base: &Url, cx: &BuildContext) -> Result<Option<Attachments>, InvalidConfig> {
        if !self.download {
            return Ok(None);
        }
        let Some(path) = self.path.as_deref() else {
            return Err(InvalidConfig::new(
                "attachments_path",
                "required with `download_attachments`: a local directory or an object-store URL",
            ));
        };
        if self.max_bytes == 0 {
            return Err(InvalidConfig::new(
                "max_attachment_bytes",
                "must be at least 1",
            ));
        }
        let place = match chatlake_store::Location::parse(path)
            .map_err(|e| InvalidConfig::new("attachments_path", e.to_string()))?
        {
            chatlake_store::Location::Local(dir) => Place::Local(dir),
            chatlake_store::Location::Object(location) => {
                let store = chatlake_store::Store::open(&location, self.storage)
                    .map_err(|e| InvalidConfig::new("attachments_storage", e.to_string()))?;
                Place::Object(Box::new((location, store)))
            }
        };
        let mut hosts = DownloadHosts::new("Zoom", base, self.hosts)?;
        if let Some(profile) = &cx.emulator {
            hosts = hosts.also(profile.credential("zoom.download_host")?.expose())?;
        }
        Ok(Some(Attachments::new(place, self.max_bytes, hosts)))
    }
}

/// Saved pages come without an access token to download their files with.
fn no_downloads_from_files(download_attachments: bool) -> Result<(), InvalidConfig> {
    if download_attachments {
        return Err(InvalidConfig::new(
            "download_attachments",
            "needs the API (saved pages come without an access token to download with); remove \
             `files` or `download_attachments`",
        ));
    }
    Ok(())
}

/// Base URL and credentials: the emulator's under `--emulate`, else the table's.
fn api_settings(
    base_url: &str,
    auth: &Option<ZoomAuth>,
    cx: &BuildContext,
) -> Result<(Url, Credentials), InvalidConfig> {
    if let Some(profile) = &cx.emulator {
        return Ok((
            emulator_url(profile, "base_url", "/v2")?,
            Credentials {
                account_id: profile.credential("zoom.account_id")?.expose().to_owned(),
                client_id: profile.credential("zoom.client_id")?.expose().to_owned(),
                client_secret: profile.credential("zoom.client_secret")?,
                token_url: emulator_url(profile, "auth.token_url", "/oauth/token")?,
            },
        ));
    }
    let base = parse_http_url("base_url", base_url)?;
    let Some(ZoomAuth::ServerToServer {
        account_id,
        client_id,
        client_secret,
        token_url,
    }) = auth
    else {
        return Err(auth_required(
            "{ type = \"zoom_server_to_server\", account_id, client_id, client_secret }",
        ));
    };
    non_empty("auth.account_id", account_id)?;
    non_empty("auth.client_id", client_id)?;
    non_empty_secret("auth.client_secret", client_secret)?;
    Ok((
        base,
        Credentials {
            account_id: account_id.trim().to_owned(),
            client_id: client_id.trim().to_owned(),
            client_secret: client_secret.clone(),
            token_url: parse_http_url("auth.token_url", token_url)?,
        },
    ))
}

#[allow(clippy::too_many_arguments)]
fn common_checks(
    page_size: u32,
    max_page: u32,
    requests_per_second: u32,
    heavy: u32,
    concurrency: usize,
    retry: &RetryPolicy,
    timeout: Duration,
    files: &Option<Vec<String>>,
) -> Result<(Budgets, Option<Vec<String>>), InvalidConfig> {
    if !(1..=max_page).contains(&page_size) {
        return Err(InvalidConfig::new(
            "page_size",
            format!("must be 1 to {max_page} (the API's limit), got {page_size}"),
        ));
    }
    let medium_per_second = at_least_one("requests_per_second", requests_per_second)?;
    let heavy_per_second = at_least_one("heavy_requests_per_second", heavy)?;
    if concurrency == 0 {
        return Err(InvalidConfig::new("concurrency", "must be at least 1"));
    }
    longer_than_zero("request_timeout", timeout)?;
    check_retry(retry)?;
    if let Some(patterns) = files {
        chatlake_source_kit::files::check_patterns(patterns)?;
    }
    Ok((
        Budgets {
            medium_per_second,
            heavy_per_second,
            medium_per_day: None,
            heavy_per_day: None,
        },
        files.clone(),
    ))
}

fn daily_cap(key: &str, cap: Option<u32>) -> Result<Option<NonZeroU32>, InvalidConfig> {
    cap.map(|n| at_least_one(key, n)).transpose()
}

/// Cuts `[start, end]` into stretches of at most `days` days, inclusive to the second.
pub fn split_days(
    start: DateTime<FixedOffset>,
    end: DateTime<FixedOffset>,
    days: u32,
) -> Vec<(DateTime<FixedOffset>, DateTime<FixedOffset>)> {
    let start = start.with_timezone(&utc()).trunc_subsecs(0);
    let end = end.with_timezone(&utc()).trunc_subsecs(0);
    let span = chrono::Duration::days(i64::from(days.max(1))) - chrono::Duration::seconds(1);
    let mut out = Vec::new();
    let mut from = start;
    while from <= end {
        let to = (from + span).min(end);
        out.push((from, to));
        from = to + chrono::Duration::seconds(1);
    }
    out
}

/// Calendar-month stretches of `[start, end]` (whole UTC days).
pub fn split_months(start: NaiveDate, end: NaiveDate) -> Vec<(NaiveDate, NaiveDate)> {
    let mut out = Vec::new();
    let mut from = start;
    while from <= end {
        let next_month = from
            .with_day(1)
            .and_then(|d| d.checked_add_months(Months::new(1)))
            .unwrap_or(NaiveDate::MAX);
        let to = next_month.pred_opt().unwrap_or(next_month).min(end);
        out.push((from, to));
        match to.succ_opt() {
            Some(d) => from = d,
            None => break,
        }
    }
    out
}

/// The report's rule for one request: `to` not before `from`, at most one month, and `from`
/// not older than six months before `today`. On error: the key and a message.
pub fn check_report_range(
    from: NaiveDate,
    to: NaiveDate,
    today: NaiveDate,
) -> Result<(), (&'static str, String)> {
    let oldest = today.checked_sub_months(Months::new(6)).unwrap_or(today);
    if from < oldest {
        return Err((
            "start",
            format!(
                "{from} is more than six months ago: the chat report only covers the last six months (from {oldest} today)"
            ),
        ));
    }
    if to < from {
        return Err(("end", format!("{to} is before start {from}")));
    }
    if from
        .checked_add_months(Months::new(1))
        .is_none_or(|limit| to >= limit)
    {
        return Err((
            "end",
            format!("the window {from}..{to} is longer than one month, the report's limit"),
        ));
    }
    Ok(())
}

impl ZoomUserMessagesConfig {
    /// Checks every option and computes the date stretches; no I/O.
    pub fn check(self, cx: &BuildContext) -> Result<ZoomSource, InvalidConfig> {
        let (budgets, files) = common_checks(
            self.page_size,
            MAX_USER_PAGE_SIZE,
            self.requests_per_second,
            self.heavy_requests_per_second,
            self.concurrency,
            &self.retry,
            self.request_timeout,
            &self.files,
        )?;
        let mut budgets = budgets;
        budgets.medium_per_day = daily_cap("daily_requests", self.daily_requests)?;
        budgets.heavy_per_day = daily_cap("heavy_daily_requests", self.heavy_daily_requests)?;
        if !(1..=366).contains(&self.window_days) {
            return Err(InvalidConfig::new("window_days", "must be 1 to 366"));
        }
        let searching = self.search_type.is_some() || self.search_key.is_some();
        if searching {
            match (&self.search_type, &self.search_key) {
                (Some(t), Some(k)) => {
                    if !matches!(t.as_str(), "message" | "file") {
                        return Err(InvalidConfig::new(
                            "search_type",
                            format!("expected `message` or `file`, got {t:?}"),
                        ));
                    }
                    if k.is_empty() || k.chars().count() > 256 {
                        return Err(InvalidConfig::new(
                            "search_key",
                            "must be 1 to 256 characters",
                        ));
                    }
                }
                (None, _) => {
                    return Err(InvalidConfig::new(
                        "search_type",
                        "required with `search_key`",
                    ));
                }
                (_, None) => {
                    return Err(InvalidConfig::new(
                        "search_key",
                        "required with `search_type`",
                    ));
                }
            }
        }
        let options = UserOptions {
            page_size: self.page_size,
            // Search cannot return edited or deleted versions (seed 001).
            include_deleted_and_edited: self.include_deleted_and_edited && !searching,
            exclude_child_messages: self.exclude_child_messages,
            download_file_formats: self.download_file_formats.clone(),
            search: self.search_type.clone().zip(self.search_key.clone()),
        };
        if let Some(patterns) = files {
            no_downloads_from_files(self.download_attachments)?;
            let stream = Stream::UserMessages(options);
            let files = saved_pages(&patterns, &stream, cx.state.clone())?;
            return Ok(ZoomSource::new(cx.name.clone(), stream, Mode::Files(files)));
        }
        // `--start`/`--end` win over the file; `end` defaults to now.
        let (start, end) = cx
            .range(self.start.map(Into::into), self.end.map(Into::into))?
            .for_api(cx.now, "2025-05-01T00:00:00Z")?;
        if self.user_status.is_empty() {
            return Err(InvalidConfig::new(
                "user_status",
                "list at least one of active, inactive, pending",
            ));
        }
        let mut user_statuses = self.user_status.clone();
        user_statuses.sort();
        user_statuses.dedup();
        let users = match self.users {
            AllOr::All => None,
            AllOr::List(l) if l.is_empty() => {
                return Err(InvalidConfig::new(
                    "users",
                    "list at least one user, or \"all\"",
                ));
            }
            AllOr::List(mut l) => {
                l.sort();
                l.dedup();
                Some(l)
            }
        };
        let conversations = match self.conversations {
            AllOr::All => Conversations::All,
            AllOr::List(mut l) => {
                if l.to_channel.is_empty() && l.to_contact.is_empty() && !searching {
                    return Err(InvalidConfig::new(
                        "conversations",
                        "list at least one `to_channel` or `to_contact`, or \"all\"",
                    ));
                }
                l.to_channel.sort();
                l.to_channel.dedup();
                l.to_contact.sort();
                l.to_contact.dedup();
                Conversations::List(l)
            }
        };
        let (base, credentials) = api_settings(&self.base_url, &self.auth, cx)?;
        let attachments = AttachmentKeys {
            download: self.download_attachments,
            path: &self.attachments_path,
            storage: &self.attachments_storage,
            max_bytes: self.max_attachment_bytes,
            hosts: &self.download_hosts,
        }
        .check(&base, cx)?;
        Ok(ZoomSource::new(
            cx.name.clone(),
            Stream::UserMessages(options),
            Mode::Api(Box::new(ApiSettings {
                base,
                credentials,
                budgets,
                retry: self.retry,
                request_timeout: self.request_timeout,
                concurrency: self.concurrency,
                ranges: split_days(start, end, self.window_days),
                lookback: self.lookback,
                attachments,
                users,
                user_statuses,
                conversations,
                sessions: None,
            })),
        ))
    }
}

impl ZoomChatReportConfig {
    /// Checks every option and cuts the range into calendar months; no I/O.
    pub fn check(self, cx: &BuildContext) -> Result<ZoomSource, InvalidConfig> {
        let (budgets, files) = common_checks(
            self.page_size,
            MAX_REPORT_PAGE_SIZE,
            self.requests_per_second,
            self.heavy_requests_per_second,
            self.concurrency,
            &self.retry,
            self.request_timeout,
            &self.files,
        )?;
        let mut budgets = budgets;
        budgets.medium_per_day = daily_cap("daily_requests", self.daily_requests)?;
        budgets.heavy_per_day = daily_cap("heavy_daily_requests", self.heavy_daily_requests)?;
        let options = ReportOptions {
            page_size: self.page_size,
            include_edited: self.include_edited,
            include_deleted: self.include_deleted,
            include_bot_messages: self.include_bot_messages,
            include_reactions: self.include_reactions,
            query_all_modifications: self.query_all_modifications,
        };
        if let Some(patterns) = files {
            no_downloads_from_files(self.download_attachments)?;
            let stream = Stream::ChatReport(options);
            let files = saved_pages(&patterns, &stream, cx.state.clone())?;
            return Ok(ZoomSource::new(cx.name.clone(), stream, Mode::Files(files)));
        }
        let today = cx.now.date_naive();
        let start = cx
            .start
            .map(|t| t.with_timezone(&Utc).date_naive())
            .or(self.start);
        let end = cx
            .end
            .map(|t| t.with_timezone(&Utc).date_naive())
            .or(self.end)
            .unwrap_or(today);
        // Planned from the ledger: months it holds are not asked for (nor refused when they
        // have grown older than six months), the default start is the first month it lacks.
        let plan = crate::report_plan::plan_months(
            start,
            end,
            today,
            &cx.state.committed_ranges(REPORT_STREAM),
        )?;
        let notes = plan.notes();
        let months = plan.months;
        let sessions = match self.sessions {
            AllOr::All => None,
            AllOr::List(l) if l.is_empty() => {
                return Err(InvalidConfig::new(
                    "sessions",
                    "list at least one session, or \"all\"",
                ));
            }
            AllOr::List(mut l) => {
                l.sort();
                l.dedup();
                Some(l)
            }
        };
        let (base, credentials) = api_settings(&self.base_url, &self.auth, cx)?;
        let attachments = AttachmentKeys {
            download: self.download_attachments,
            path: &self.attachments_path,
            storage: &self.attachments_storage,
            max_bytes: self.max_attachment_bytes,
            hosts: &self.download_hosts,
        }
        .check(&base, cx)?;
        let now = cx.now.trunc_subsecs(0).fixed_offset();
        let day = |d: NaiveDate, end: bool| {
            let t = if end {
                d.and_hms_opt(23, 59, 59)
            } else {
                d.and_hms_opt(0, 0, 0)
            };
            t.unwrap_or_default().and_utc().fixed_offset()
        };
        Ok(ZoomSource::new(
            cx.name.clone(),
            Stream::ChatReport(options),
            Mode::Api(Box::new(ApiSettings {
                base,
                credentials,
                budgets,
                retry: self.retry,
                request_timeout: self.request_timeout,
                concurrency: self.concurrency,
                ranges: months
                    .into_iter()
                    // A window never claims hours that have not happened yet: the ledger
                    // records its end, and the next run continues from there.
                    .map(|(f, t)| (day(f, false), day(t, true).min(now)))
                    .collect(),
                lookback: self.lookback,
                attachments,
                users: None,
                user_statuses: Vec::new(),
                conversations: Conversations::All,
                sessions: Some(sessions),
            })),
        )
        .with_notes(notes))
    }
}

impl SourceConfig for ZoomUserMessagesConfig {
    const TYPE: &'static str = "zoom_user_messages";
    const SUMMARY: &'static str = "Zoom Team Chat messages per user and conversation, or saved \
         response pages. What it leaves out: a file's `download_url` expires, and the row keeps the \
         URL, not the file, unless `download_attachments` saves it; `users = \"all\"` lists only the statuses of `user_status` (active and \
         inactive by default; `pending` only when listed); an edit or delete made after a range \
         was read arrives only through `lookback`.";
    const EXAMPLE: &'static str = include_str!("example_user_messages.toml");

    fn build(self, cx: &BuildContext) -> Result<Box<dyn Source>, InvalidConfig> {
        Ok(Box::new(self.check(cx)?.with_ledger(cx.state.clone())))
    }
}

impl SourceConfig for ZoomChatReportConfig {
    const TYPE: &'static str = "zoom_chat_report";
    const SUMMARY: &'static str = "Zoom chat message reports per session and calendar month (edited \
         and deleted included). What it leaves out: Zoom serves the report six months back only, \
         one month per request, so a month older than that which was never loaded cannot be \
         fetched any more (a warning, not a failure); a file's `download_url` expires, and the row \
         keeps the URL, not the file, unless `download_attachments` saves it; an edit or delete made after a range was read arrives only \
         through `lookback`.";
    const EXAMPLE: &'static str = include_str!("example_chat_report.toml");

    fn build(self, cx: &BuildContext) -> Result<Box<dyn Source>, InvalidConfig> {
        Ok(Box::new(self.check(cx)?.with_ledger(cx.state.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn cx() -> BuildContext {
        BuildContext {
            name: "zoom".into(),
            now: Utc.with_ymd_and_hms(2026, 11, 21, 6, 0, 0).unwrap(),
            ..BuildContext::default()
        }
    }

    fn auth() -> serde_json::Value {
        json!({"type": "zoom_server_to_server", "account_id": "a", "client_id": "c", "client_secret": "s"})
    }

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn months_are_calendar_months() {
        assert_eq!(
            split_months(day("2026-06-15"), day("2026-08-02")),
            vec![
                (day("2026-06-15"), day("2026-06-30")),
                (day("2026-07-01"), day("2026-07-31")),
                (day("2026-08-01"), day("2026-08-02")),
            ]
        );
    }

    #[test]
    fn report_ranges_follow_the_api_rules() {
        let today = day("2026-11-21");
        assert!(check_report_range(day("2026-06-01"), day("2026-06-30"), today).is_ok());
        assert_eq!(
            check_report_range(day("2026-05-01"), day("2026-05-31"), today)
                .unwrap_err()
                .0,
            "start"
        );
        assert_eq!(
            check_report_range(day("2026-07-01"), day("2026-08-01"), today)
                .unwrap_err()
                .0,
            "end"
        );
    }

    #[test]
    fn a_report_start_older_than_six_months_is_a_warning_not_an_error() {
        // Nothing loaded (as `validate` sees it): the months the report no longer serves are
        // noted, the rest is planned.
        let c: ZoomChatReportConfig =
            serde_json::from_value(json!({"auth": auth(), "start": "2026-01-01"})).unwrap();
        let s = c.check(&cx()).unwrap();
        assert_eq!(s.planned_ranges(), 7, "2026-05-21 through this month");
        let notes = chatlake_core::Source::plan_notes(&s);
        assert_eq!(notes.len(), 1);
        assert!(notes[0].starts_with("2026-01-01..2026-05-20"), "{notes:?}");
        assert!(notes[0].contains("six months"), "{notes:?}");
        let c: ZoomChatReportConfig = serde_json::from_value(json!({"auth": auth()})).unwrap();
        let s = c.check(&cx()).unwrap();
        assert_eq!(s.planned_ranges(), 2, "last month and this month");
        assert!(chatlake_core::Source::plan_notes(&s).is_empty());
    }

    #[test]
    fn user_message_options_are_checked() {
        let base = json!({"auth": auth(), "start": "2026-11-01T00:00:00Z"});
        let with = |k: &str, v: serde_json::Value| {
            let mut b = base.clone();
            b[k] = v;
            serde_json::from_value::<ZoomUserMessagesConfig>(b)
        };
        assert_eq!(
            with("page_size", json!(51))
                .unwrap()
                .check(&cx())
                .err()
                .unwrap()
                .key,
            "page_size"
        );
        assert!(with("users", json!("some")).is_err());
        assert!(with("user_status", json!(["retired"])).is_err());
        assert_eq!(
            with("user_status", json!([]))
                .unwrap()
                .check(&cx())
                .err()
                .unwrap()
                .key,
            "user_status"
        );
        let defaults: ZoomUserMessagesConfig = serde_json::from_value(base.clone()).unwrap();
        assert_eq!(
            defaults.user_status,
            [UserStatus::Active, UserStatus::Inactive],
            "people who left are archived by default"
        );
        assert!(with("nope", json!(1)).is_err(), "unknown keys are refused");
        let s = with("users", json!(["b", "a", "a"]))
            .unwrap()
            .check(&cx())
            .unwrap();
        assert_eq!(s.planned_ranges(), 1);
        let err = serde_json::from_value::<ZoomUserMessagesConfig>(
            json!({"start": "2026-11-01T00:00:00Z"}),
        )
        .unwrap()
        .check(&cx())
        .err()
        .unwrap();
        assert_eq!(err.key, "auth");
    }

    #[test]
    fn attachment_options_are_checked() {
        let key = |extra: serde_json::Value| {
            let mut b = json!({"auth": auth(), "start": "2026-11-01T00:00:00Z"});
            for (k, v) in extra.as_object().unwrap() {
                b[k] = v.clone();
            }
            serde_json::from_value::<ZoomUserMessagesConfig>(b)
                .unwrap()
                .check(&cx())
                .err()
                .map(|e| e.key)
        };
        assert_eq!(key(json!({})), None, "off by default");
        assert_eq!(
            key(json!({"download_attachments": true})).as_deref(),
            Some("attachments_path")
        );
        let on = json!({"download_attachments": true, "attachments_path": "./files"});
        assert_eq!(key(on.clone()), None);
        let mut zero = on.clone();
        zero["max_attachment_bytes"] = json!(0);
        assert_eq!(key(zero).as_deref(), Some("max_attachment_bytes"));
        let mut bad_host = on.clone();
        bad_host["download_hosts"] = json!(["file.zoom.us", "https://x"]);
        assert_eq!(key(bad_host).as_deref(), Some("download_hosts[1]"));
        let mut bad_url = on.clone();
        bad_url["attachments_path"] = json!("ftp://x/y");
        assert_eq!(key(bad_url).as_deref(), Some("attachments_path"));
        let mut s3 = on.clone();
        s3["attachments_path"] = json!("s3://bucket/files");
        assert_eq!(key(s3), None, "opening a store does no I/O");
        let mut saved = on;
        saved["files"] = json!(["pages/*.jsonl"]);
        assert_eq!(key(saved).as_deref(), Some("download_attachments"));
    }

    #[test]
    fn days_split_inclusively() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap();
        let r = split_days(t("2026-01-01T00:00:00Z"), t("2026-01-10T12:00:00Z"), 7);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].1, t("2026-01-07T23:59:59Z"));
        assert_eq!(r[1].0, t("2026-01-08T00:00:00Z"));
    }
}
