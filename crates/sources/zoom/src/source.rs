//! The running Zoom sources: discovery, windows, and the paged fetch of each window.
//!
//! 1. **Discovery** (only for `"all"`): users (`GET /users`, once per status of `user_status`:
//!    active and inactive by default), then each user's channels and 1:1
//!    contacts, or the report's sessions per month. A channel or 1:1 seen through several users
//!    is fetched once. Ids are sorted, so the same config gives the same windows and indexes.
//! 2. **Windows**: one per (user, conversation, date range) or (session, month), fetched
//!    `concurrency` at a time under the account's shared rate budget. A window's batches go out
//!    in order, then its `window_done`; windows of different conversations may interleave.
//! 3. **Paging** ([`chatlake_http::pages`]): `next_page_token` until empty. The next page is requested while the current
//!    one is parsed and sent, so a slow sink does not leave a page token idle for long; a page
//!    token that expired anyway (400 code 300) restarts the window from its first page, and
//!    `dedupe` absorbs the rows sent twice. Discovery lists page the same way: an expired token
//!    lists again from the first page.
//!
//! A conversation, user or session that does not exist or may not be read (3001, 3161, 1001) is
//! skipped with a warning and does not fail the run; any other error after retries fails only
//! its window.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chatlake_core::config::InvalidConfig;
use chatlake_core::state::{SourceState, WindowStatus, uncovered};
use chatlake_core::{Batch, DataKind, PlannedWindow, Source, SourceContext, Window, WindowRef};
use chatlake_http::{ErrorKind, HttpClient, PageEvent, Paging, RequestError, RetryPolicy, pages};
use chatlake_source_kit::FilesMode;
use chatlake_source_kit::windows::reopen_tail;
use chrono::{DateTime, FixedOffset};
use futures::{StreamExt, TryStreamExt};
use reqwest::Method;
use serde::Deserialize;
use url::Url;

use crate::api::{ApiError, Budgets, Credentials, Label, ZoomApi};
use crate::attachments::Attachments;
use crate::config::{ConversationList, UserStatus};
use crate::parse::{CHAT_REPORT, Context, RawBuilder, USER_MESSAGES};
use crate::saved;
use chatlake_core::shard::{Share, ShareTaken, ShareUnit};

/// Rows collected before a batch goes downstream.
const BATCH_ROWS: usize = 4096;
/// Restarts of one window after expired page tokens before it fails.
const MAX_RESTARTS: u32 = 3;
/// Page size of the discovery lists.
const USERS_PAGE: &str = "300";
const LIST_PAGE: &str = "50";

pub(crate) struct UserOptions {
    pub page_size: u32,
    pub include_deleted_and_edited: bool,
    pub exclude_child_messages: bool,
    pub download_file_formats: Option<String>,
    pub search: Option<(String, String)>,
}

pub(crate) struct ReportOptions {
    pub page_size: u32,
    pub include_edited: bool,
    pub include_deleted: bool,
    pub include_bot_messages: bool,
    pub include_reactions: bool,
    pub query_all_modifications: bool,
}

pub(crate) enum Stream {
    UserMessages(UserOptions),
    ChatReport(ReportOptions),
}

pub(crate) enum Conversations {
    All,
    List(ConversationList),
}

pub(crate) struct ApiSettings {
    pub base: Url,
    pub credentials: Credentials,
    pub budgets: Budgets,
    pub retry: RetryPolicy,
    pub request_timeout: Duration,
    pub concurrency: usize,
    pub ranges: Vec<(DateTime<FixedOffset>, DateTime<FixedOffset>)>,
    /// Fetched again before where earlier runs stopped, per target (late edits and deletes).
    pub lookback: Duration,
    /// User messages: the users, or `None` to discover them.
    pub users: Option<Vec<String>>,
    /// The statuses discovery lists users of (`GET /users?status=...`, one listing each).
    pub user_statuses: Vec<UserStatus>,
    pub conversations: Conversations,
    /// Report: `Some(None)` to discover sessions, `Some(Some(ids))` for a list.
    pub sessions: Option<Option<Vec<String>>>,
    /// `download_attachments`: where files go, their size limit and hosts.
    pub attachments: Option<Attachments>,
}

pub(crate) enum Mode {
    Api(Box<ApiSettings>),
    Files(FilesMode),
}

impl Stream {
    /// The provider stream its windows carry.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Stream::UserMessages(_) => "user_messages",
            Stream::ChatReport(_) => "chat_report",
        }
    }
}

/// Files mode of saved pages: one window per file with no range (the pages' times are UTC), a
/// committed file skipped unless it changed (see [`FilesMode`]). One file at a time: a file is
/// already parsed on every core (see [`saved`]).
pub(crate) fn saved_pages(
    patterns: &[String],
    stream: &Stream,
    ledger: Arc<SourceState>,
) -> Result<FilesMode, InvalidConfig> {
    Ok(FilesMode::new(
        patterns,
        stream.name(),
        FixedOffset::east_opt(0).expect("zero is a valid offset"),
        (None, None),
        ledger,
    )?
    .with_windows_at_once(1))
}

/// A `zoom_user_messages` or `zoom_chat_report` source.
pub struct ZoomSource {
    name: String,
    stream: Stream,
    mode: Mode,
    /// Windows earlier runs committed (the source's ledger): not fetched again.
    ledger: Arc<SourceState>,
    /// What the plan leaves out and why (report months too old to fetch that were never
    /// loaded): shown by `plan`, logged and put in the run summary by `run`.
    notes: Vec<String>,
    /// Keep each message whole in a `raw` column ([`Source::keep_raw_records`]).
    keep_raw: bool,
    /// This worker's share of the windows, for `run --shard` ([`Source::share`]).
    share: Option<Share>,
}

/// What one window fetches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Channel {
        user: String,
        channel: String,
        name: Option<String>,
    },
    Contact {
        user: String,
        contact: String,
    },
    Search {
        user: String,
    },
    Session {
        id: String,
        name: Option<String>,
    },
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Channel { user, channel, .. } => format!("user {user} channel {channel}"),
            Target::Contact { user, contact } => format!("user {user} contact {contact}"),
            Target::Search { user } => format!("user {user} search"),
            Target::Session { id, .. } => format!("session {id}"),
        }
    }

    fn context(&self) -> Context<'_> {
        match self {
            Target::Channel {
                user,
                channel,
                name,
            } => Context {
                conversation_id: Some(channel),
                conversation_name: name.as_deref(),
                user_id: Some(user),
                recipient: None,
            },
            Target::Contact { user, contact } => Context {
                conversation_id: Some(contact),
                conversation_name: None,
                user_id: Some(user),
                recipient: Some(contact),
            },
            Target::Search { user } => Context {
                user_id: Some(user),
                ..Context::default()
            },
            Target::Session { id, name } => Context {
                conversation_id: Some(id),
                conversation_name: name.as_deref(),
                ..Context::default()
            },
        }
    }
}

/// How a window ended, when it did not succeed.
enum WindowError {
    /// The conversation does not exist or may not be read: skipped, not a failure.
    Skipped(RequestError),
    /// This window failed; the others go on.
    Failed(String),
    /// Downstream stopped: stop the source.
    Stop(chatlake_core::Error),
}

impl From<ApiError> for WindowError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Resource(e) => WindowError::Skipped(e),
            other => WindowError::Failed(other.to_string()),
        }
    }
}

fn zoom_time(t: &DateTime<FixedOffset>) -> String {
    t.to_utc().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn zoom_day(t: &DateTime<FixedOffset>) -> String {
    t.to_utc().format("%Y-%m-%d").to_string()
}

#[derive(Deserialize)]
struct UsersPage {
    #[serde(default)]
    next_page_token: Option<String>,
    #[serde(default)]
    users: Vec<ListedUser>,
}

#[derive(Deserialize)]
struct ListedUser {
    id: String,
    #[serde(default)]
    email: Option<String>,
}

#[derive(Deserialize)]
struct ChannelsPage {
    #[serde(default)]
    next_page_token: Option<String>,
    #[serde(default)]
    channels: Vec<ListedChannel>,
}

#[derive(Deserialize)]
struct ListedChannel {
    id: String,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct SessionsPage {
    #[serde(default)]
    next_page_token: Option<String>,
    #[serde(default)]
    sessions: Vec<ListedSession>,
}

#[derive(Deserialize)]
struct ListedSession {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    peer_contact_email: Option<String>,
    #[serde(default)]
    peer_contact_user_id: Option<String>,
}

/// One discovery list: where it is, under which budget, and what to call it in errors and logs.
#[derive(Clone, Copy)]
struct Listing<'a> {
    label: Label,
    /// "the user list": for "… is not understood".
    what: &'static str,
    /// The pseudo-window the requests are logged under.
    window: &'a str,
    /// The path segments under the API base.
    path: &'a [&'a str],
    /// The query of the first page; later pages add their `next_page_token`.
    query: &'a [(&'a str, &'a str)],
}

/// One page of a discovery list: its items and the token of the next page.
struct ListPage<T> {
    next: Option<String>,
    items: Vec<T>,
}

/// One page of a window's messages, parsed: the token of the next page, and the batch that
/// filled up (or the last one).
struct MessagePage {
    next: Option<String>,
    ready: Option<arrow::record_batch::RecordBatch>,
}

fn more(token: &Option<String>) -> Option<String> {
    token
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

fn protocol(url: &Url, what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::Other(RequestError::new(
        Method::GET,
        url,
        ErrorKind::Protocol(format!("{what} is not understood: {e}")),
    ))
}

impl ZoomSource {
    pub(crate) fn new(name: String, stream: Stream, mode: Mode) -> Self {
        ZoomSource {
            name,
            stream,
            mode,
            ledger: Arc::default(),
            notes: Vec::new(),
            keep_raw: false,
            share: None,
        }
    }

    /// Warnings about what the plan leaves out; see [`Source::plan_notes`].
    pub(crate) fn with_notes(mut self, notes: Vec<String>) -> Self {
        self.notes = notes;
        self
    }

    /// What the ledger lists as committed, per user/conversation or session, is not planned
    /// again.
    pub(crate) fn with_ledger(mut self, ledger: Arc<SourceState>) -> Self {
        self.ledger = ledger;
        self
    }

    fn record_type(&self) -> &'static str {
        match self.stream {
            Stream::UserMessages(_) => USER_MESSAGES,
            Stream::ChatReport(_) => CHAT_REPORT,
        }
    }

    fn stream_name(&self) -> &'static str {
        self.stream.name()
    }

    /// Date ranges (API mode), for tests of the build.
    pub fn planned_ranges(&self) -> usize {
        match &self.mode {
            Mode::Api(api) => api.ranges.len(),
            Mode::Files(_) => 0,
        }
    }

    fn window(
        &self,
        index: usize,
        label: String,
        range: Option<&(DateTime<FixedOffset>, DateTime<FixedOffset>)>,
    ) -> Window {
        Window {
            source: self.name.clone(),
            stream: self.stream_name().to_string(),
            index: index as u32,
            start: range.map(|r| r.0),
            end: range.map(|r| r.1),
            utc_offset: FixedOffset::east_opt(0).expect("zero is a valid offset"),
            label,
            // A renamed source goes on under its windows' earlier keys.
            key_name: self.ledger.keys_from.clone(),
        }
    }

    fn range_label(&self, range: &(DateTime<FixedOffset>, DateTime<FixedOffset>)) -> String {
        match self.stream {
            Stream::UserMessages(_) => format!("{}..{}", zoom_time(&range.0), zoom_time(&range.1)),
            Stream::ChatReport(_) => format!("{}..{}", zoom_day(&range.0), zoom_day(&range.1)),
        }
    }

    /// Windows of `targets × ranges`, numbered in a fixed order: range, then target.
    fn windows(
        &self,
        api: &ApiSettings,
        targets: &BTreeMap<usize, Vec<Target>>,
    ) -> Vec<(Window, Target)> {
        let mut out = Vec::new();
        for (r, range) in api.ranges.iter().enumerate() {
            for t in targets
                .get(&r)
                .or_else(|| targets.get(&usize::MAX))
                .into_iter()
                .flatten()
            {
                // Only what earlier runs did not commit for this user/conversation or session:
                // a closed stretch is not fetched twice, the open end continues where the last
                // run stopped.
                let scope = format!("{} ", t.describe());
                let mut covered = self
                    .ledger
                    .committed_ranges_where(self.stream_name(), |w| w.label.starts_with(&scope));
                reopen_tail(&mut covered, api.lookback);
                for (from, to) in uncovered(range.0.to_utc(), range.1.to_utc(), &covered) {
                    let part = (from.fixed_offset(), to.fixed_offset());
                    let label = format!("{} {}", t.describe(), self.range_label(&part));
                    out.push((self.window(out.len(), label, Some(&part)), t.clone()));
                }
            }
        }
        if let Some(share) = &self.share {
            out.retain(|(window, target)| {
                let key = window.key();
                share.takes(&self.share_unit(share, &key, target))
            });
        }
        out
    }

    /// What stays on one worker with `run --shard`: each window (user × conversation × range)
    /// on its own, unless a transform below compares windows. Then a conversation's windows
    /// stay together over every range and every user who sees it: a channel message is in the
    /// windows of each member, a 1:1 message in both people's, and an edit in a later range.
    fn share_unit<'a>(&'a self, share: &Share, key: &'a str, target: &Target) -> ShareUnit<'a> {
        if !share.keep_copies_together {
            return ShareUnit::Window(key);
        }
        let scope = match target {
            Target::Channel { channel, .. } => format!("channel {channel}"),
            Target::Contact { user, contact } => {
                let (a, b) = if user <= contact {
                    (user, contact)
                } else {
                    (contact, user)
                };
                format!("contact {a} {b}")
            }
            Target::Session { id, .. } => format!("session {id}"),
            // A user's search results span conversations that other users' results hold too.
            Target::Search { .. } => return ShareUnit::Source(&self.name),
        };
        ShareUnit::Scope {
            source: &self.name,
            scope,
        }
    }

    /// Committed windows this run fetches again whole (a `lookback` reopened them, or a run
    /// with the same `end` follows a killed one), known without the network: conversations and
    /// sessions are discovered at run time, but every committed one is in the ledger, so the
    /// windows [`Self::windows`] will give each of them are computed from its ledger scope.
    fn windows_fetched_again(&self, api: &ApiSettings) -> Vec<String> {
        let stream = self.stream_name();
        let scopes: std::collections::BTreeSet<String> = self
            .ledger
            .windows
            .values()
            .filter(|w| w.stream == stream && w.status == WindowStatus::Committed)
            .filter_map(|w| {
                let range = (w.start?, w.end?);
                let suffix = format!(" {}", self.range_label(&range));
                w.label.strip_suffix(&suffix).map(str::to_string)
            })
            .collect();
        let mut keys = Vec::new();
        for scope in scopes {
            let prefix = format!("{scope} ");
            let mut covered = self
                .ledger
                .committed_ranges_where(stream, |w| w.label.starts_with(&prefix));
            reopen_tail(&mut covered, api.lookback);
            for range in &api.ranges {
                for (from, to) in uncovered(range.0.to_utc(), range.1.to_utc(), &covered) {
                    let part = (from.fixed_offset(), to.fixed_offset());
                    let label = format!("{prefix}{}", self.range_label(&part));
                    let key = self.window(0, label, Some(&part)).key();
                    if self.ledger.is_committed(&key) {
                        keys.push(key);
                    }
                }
            }
        }
        keys
    }

    /// Targets known without the network (explicit lists), or `None` if discovery is needed.
    fn listed_targets(&self, api: &ApiSettings) -> Option<Vec<Target>> {
        match &self.stream {
            Stream::ChatReport(_) => match &api.sessions {
                Some(Some(ids)) => Some(
                    ids.iter()
                        .map(|id| Target::Session {
                            id: id.clone(),
                            name: None,
                        })
                        .collect(),
                ),
                _ => None,
            },
            Stream::UserMessages(o) => {
                let users = api.users.as_ref()?;
                let Conversations::List(list) = &api.conversations else {
                    return None;
                };
                let mut targets = Vec::new();
                for user in users {
                    for channel in &list.to_channel {
                        targets.push(Target::Channel {
                            user: user.clone(),
                            channel: channel.clone(),
                            name: None,
                        });
                    }
                    for contact in &list.to_contact {
                        targets.push(Target::Contact {
                            user: user.clone(),
                            contact: contact.clone(),
                        });
                    }
                    if o.search.is_some()
                        && list.to_channel.is_empty()
                        && list.to_contact.is_empty()
                    {
                        targets.push(Target::Search { user: user.clone() });
                    }
                }
                Some(targets)
            }
        }
    }

    // ---- discovery ------------------------------------------------------------------------

    /// The users of every status asked for: Zoom lists one status at a time, and only active
    /// users unless asked, while people who left (`inactive`) keep chats an archive needs.
    async fn list_users(
        &self,
        api: &ZoomApi,
        statuses: &[UserStatus],
    ) -> Result<Vec<ListedUser>, ApiError> {
        let mut all = Vec::new();
        for status in statuses {
            let window = format!("discovery of {} users", status.as_str());
            let users = Listing {
                label: Label::Medium,
                what: "the user list",
                window: &window,
                path: &["users"],
                query: &[("status", status.as_str()), ("page_size", USERS_PAGE)],
            };
            let listed = self
                .list_all(api, users, |page: UsersPage| {
                    (page.next_page_token, page.users)
                })
                .await?;
            tracing::info!(component = %self.name, status = status.as_str(), users = listed.len(), "Zoom users listed.");
            all.extend(listed);
        }
        Ok(all)
    }

    /// A user's channels and 1:1 contacts.
    async fn user_conversations(
        &self,
        api: &ZoomApi,
        user: &str,
    ) -> Result<(Vec<ListedChannel>, Vec<ListedSession>), ApiError> {
        let window = format!("discovery of user {user}");
        let channels = Listing {
            label: Label::Medium,
            what: "the channel list",
            window: &window,
            path: &["chat", "users", user, "channels"],
            query: &[("page_size", LIST_PAGE)],
        };
        let channels = self
            .list_all(api, channels, |page: ChannelsPage| {
                (page.next_page_token, page.channels)
            })
            .await?;
        let contacts = Listing {
            label: Label::Medium,
            what: "the session list",
            window: &window,
            path: &["chat", "users", user, "sessions"],
            query: &[("type", "1:1"), ("page_size", LIST_PAGE)],
        };
        let contacts = self
            .list_all(api, contacts, |page: SessionsPage| {
                (page.next_page_token, page.sessions)
            })
            .await?;
        Ok((channels, contacts))
    }

    /// Every item of a paged discovery list. A page token that expires half-way lists again
    /// from the first page, as a window's messages do.
    async fn list_all<P, T>(
        &self,
        api: &ZoomApi,
        listing: Listing<'_>,
        items: impl Fn(P) -> (Option<String>, Vec<T>),
    ) -> Result<Vec<T>, ApiError>
    where
        P: serde::de::DeserializeOwned,
    {
        let items = &items;
        let fetch = |token: Option<String>| {
            let mut query = listing.query.to_vec();
            query.extend(token.as_deref().map(|t| ("next_page_token", t)));
            let url = api.url(listing.path, &query);
            async move {
                let body = api.get(listing.label, &url, listing.window).await?;
                let page: P =
                    serde_json::from_slice(&body).map_err(|e| protocol(&url, listing.what, e))?;
                let (next, items) = items(page);
                Ok(ListPage {
                    next: more(&next),
                    items,
                })
            }
        };
        let pages = pages(
            Paging {
                max_restarts: MAX_RESTARTS,
            },
            fetch,
            |page: &ListPage<T>| page.next.clone(),
            ApiError::is_page_token_expired,
        );
        let mut pages = std::pin::pin!(pages);
        let mut all = Vec::new();
        while let Some(event) = pages.try_next().await? {
            match event {
                PageEvent::Page(page) => all.extend(page.items),
                PageEvent::Restarted { restart, error } => {
                    all.clear();
                    tracing::warn!(component = %self.name, window = listing.window, restart, "A page token expired ({error}); listing {} again from its first page.", listing.what);
                }
            }
        }
        Ok(all)
    }

    /// Discovers the targets of user messages. A channel or 1:1 reached through several users
    /// is fetched once, through the first user in id order.
    async fn discover_user_targets(
        &self,
        api: &ZoomApi,
        settings: &ApiSettings,
        skipped: &AtomicU64,
        metrics: &chatlake_core::metrics::ComponentMetrics,
    ) -> Result<Vec<Target>, ApiError> {
        let (users, ids_by_email): (Vec<String>, HashMap<String, String>) = match &settings.users {
            Some(list) => (list.clone(), HashMap::new()),
            None => {
                let listed = self.list_users(api, &settings.user_statuses).await?;
                let map = listed
                    .iter()
                    .filter_map(|u| {
                        u.email
                            .as_ref()
                            .map(|e| (e.to_ascii_lowercase(), u.id.clone()))
                    })
                    .collect();
                let mut ids: Vec<String> = listed.into_iter().map(|u| u.id).collect();
                ids.sort();
                ids.dedup();
                (ids, map)
            }
        };
        if let Conversations::List(_) = settings.conversations {
            return Ok(self
                .listed_targets(&ApiSettings::users_only(settings, users))
                .unwrap_or_default());
        }
        let found: Vec<_> = futures::stream::iter(users.clone())
            .map(|u| async move {
                let result = self.user_conversations(api, &u).await;
                (u, result)
            })
            .buffered(settings.concurrency)
            .collect()
            .await;
        let mut seen_channels = BTreeSet::new();
        let mut seen_pairs = BTreeSet::new();
        let mut targets = Vec::new();
        for (user, result) in found {
            let (mut channels, mut contacts) = match result {
                Ok(c) => c,
                Err(ApiError::Resource(e)) => {
                    skipped.fetch_add(1, Ordering::Relaxed);
                    metrics.add_skipped(format!("user {user}: {e}"));
                    tracing::warn!(component = %self.name, user = %user, "Skipping a user Zoom does not serve: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            channels.sort_by(|a, b| a.id.cmp(&b.id));
            for c in channels {
                if seen_channels.insert(c.id.clone()) {
                    targets.push(Target::Channel {
                        user: user.clone(),
                        channel: c.id,
                        name: c.name,
                    });
                }
            }
            contacts.sort_by(|a, b| a.peer_contact_email.cmp(&b.peer_contact_email));
            for s in contacts {
                let Some(contact) = s
                    .peer_contact_email
                    .clone()
                    .or(s.peer_contact_user_id.clone())
                    .or(s.id.clone())
                else {
                    continue;
                };
                let other = s
                    .peer_contact_user_id
                    .clone()
                    .or_else(|| ids_by_email.get(&contact.to_ascii_lowercase()).cloned())
                    .unwrap_or_else(|| contact.clone());
                let pair = if user <= other {
                    (user.clone(), other)
                } else {
                    (other, user.clone())
                };
                if seen_pairs.insert(pair) {
                    let _ = s.name;
                    targets.push(Target::Contact {
                        user: user.clone(),
                        contact,
                    });
                }
            }
        }
        Ok(targets)
    }

    async fn discover_sessions(
        &self,
        api: &ZoomApi,
        range: &(DateTime<FixedOffset>, DateTime<FixedOffset>),
    ) -> Result<Vec<Target>, ApiError> {
        let (from, to) = (zoom_day(&range.0), zoom_day(&range.1));
        let window = format!("discovery of sessions {from}..{to}");
        let sessions = Listing {
            label: Label::Heavy,
            what: "the session report",
            window: &window,
            path: &["report", "chat", "sessions"],
            query: &[
                ("from", from.as_str()),
                ("to", to.as_str()),
                ("page_size", USERS_PAGE),
            ],
        };
        let sessions = self
            .list_all(api, sessions, |page: SessionsPage| {
                (page.next_page_token, page.sessions)
            })
            .await?;
        let mut out: Vec<Target> = sessions
            .into_iter()
            .filter_map(|s| {
                Some(Target::Session {
                    id: s.id?,
                    name: s.name,
                })
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Every window of the run, discovering what the config leaves to `"all"`.
    async fn discover(
        &self,
        api: &ZoomApi,
        settings: &ApiSettings,
        skipped: &AtomicU64,
        metrics: &chatlake_core::metrics::ComponentMetrics,
    ) -> Result<Vec<(Window, Target)>, ApiError> {
        let mut targets = BTreeMap::new();
        if let Some(listed) = self.listed_targets(settings) {
            targets.insert(usize::MAX, listed);
        } else if let Stream::ChatReport(_) = self.stream {
            for (i, range) in settings.ranges.iter().enumerate() {
                targets.insert(i, self.discover_sessions(api, range).await?);
            }
        } else {
            targets.insert(
                usize::MAX,
                self.discover_user_targets(api, settings, skipped, metrics)
                    .await?,
            );
        }
        Ok(self.windows(settings, &targets))
    }

    // ---- one window -----------------------------------------------------------------------

    fn page_url(
        &self,
        api: &ZoomApi,
        target: &Target,
        window: &Window,
        token: Option<&str>,
    ) -> Url {
        let (start, end) = (
            window.start.unwrap_or_default(),
            window.end.unwrap_or_default(),
        );
        let mut q: Vec<(&str, String)> = Vec::new();
        let url_for = |segments: &[&str], q: &Vec<(&str, String)>| {
            let pairs: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
            api.url(segments, &pairs)
        };
        match (&self.stream, target) {
            (Stream::ChatReport(o), Target::Session { id, .. }) => {
                q.push(("from", zoom_day(&start)));
                q.push(("to", zoom_day(&end)));
                q.push(("page_size", o.page_size.to_string()));
                let fields: Vec<&str> = [
                    (o.include_edited, "edited_messages"),
                    (o.include_deleted, "deleted_messages"),
                ]
                .into_iter()
                .filter_map(|(on, f)| on.then_some(f))
                .collect();
                if !fields.is_empty() {
                    q.push(("include_fields", fields.join(",")));
                }
                q.push(("include_bot_message", o.include_bot_messages.to_string()));
                if o.include_reactions {
                    q.push(("include_reactions", "true".into()));
                }
                if o.query_all_modifications {
                    q.push(("query_all_modifications", "true".into()));
                }
                if let Some(t) = token {
                    q.push(("next_page_token", t.into()));
                }
                url_for(&["report", "chat", "sessions", id], &q)
            }
            (Stream::UserMessages(o), _) => {
                let user = match target {
                    Target::Channel { user, channel, .. } => {
                        q.push(("to_channel", channel.clone()));
                        user
                    }
                    Target::Contact { user, contact } => {
                        q.push(("to_contact", contact.clone()));
                        user
                    }
                    Target::Search { user } => user,
                    Target::Session { id, .. } => id,
                };
                q.push(("from", zoom_time(&start)));
                q.push(("to", zoom_time(&end)));
                q.push(("page_size", o.page_size.to_string()));
                if o.include_deleted_and_edited {
                    q.push(("include_deleted_and_edited_message", "true".into()));
                }
                if o.exclude_child_messages {
                    q.push(("exclude_child_message", "true".into()));
                }
                if let Some(f) = &o.download_file_formats {
                    q.push(("download_file_formats", f.clone()));
                }
                if let Some((t, k)) = &o.search {
                    q.push(("search_type", t.clone()));
                    q.push(("search_key", k.clone()));
                }
                if let Some(t) = token {
                    q.push(("next_page_token", t.into()));
                }
                url_for(&["chat", "users", user, "messages"], &q)
            }
            (Stream::ChatReport(_), _) => url_for(&["report", "chat", "sessions"], &q),
        }
    }

    /// Fetches a window's pages and sends its rows in batches. The next page is fetched (and
    /// parsed) while the current batch goes downstream; a page token that expired restarts the
    /// window from its first page, with the rows not yet sent dropped.
    async fn run_window(
        &self,
        api: &ZoomApi,
        attachments: Option<&Attachments>,
        target: &Target,
        window: &WindowRef,
        cx: &SourceContext,
    ) -> Result<(), WindowError> {
        // Parsed into by the page fetch, which owns it while a batch is being sent.
        let new_builder = || RawBuilder::new(self.record_type()).keeping_raw(self.keep_raw);
        let builder = Mutex::new(new_builder());
        let fetch = |token: Option<String>| {
            let url = self.page_url(api, target, window, token.as_deref());
            let builder = &builder;
            async move {
                let body = api.get(Label::Medium, &url, &window.label).await?;
                let mut builder = builder.lock().unwrap_or_else(PoisonError::into_inner);
                if token.is_none() {
                    // The first page, perhaps again after a restart: nothing before it counts.
                    *builder = new_builder();
                }
                let next = builder
                    .append_json(&body, Some(&target.context()))
                    .map_err(|e| protocol(&url, "the page", e))?;
                let ready = if builder.len() >= BATCH_ROWS || next.is_none() {
                    Some(builder.finish().map_err(|e| {
                        ApiError::Other(RequestError::new(
                            Method::GET,
                            &url,
                            ErrorKind::Local(format!("building a batch: {e}")),
                        ))
                    })?)
                } else {
                    None
                };
                Ok::<_, ApiError>(MessagePage { next, ready })
            }
        };
        let pages = pages(
            Paging {
                max_restarts: MAX_RESTARTS,
            },
            fetch,
            |page: &MessagePage| page.next.clone(),
            ApiError::is_page_token_expired,
        );
        let mut pages = std::pin::pin!(pages);
        let mut event = pages.next().await;
        loop {
            let ready = match event {
                None => return Ok(()),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(PageEvent::Restarted { restart, error })) => {
                    tracing::warn!(component = %self.name, window = %window.label, restart, "A page token expired ({error}); fetching the window again from its first page.");
                    event = pages.next().await;
                    continue;
                }
                Some(Ok(PageEvent::Page(page))) => page.ready,
            };
            let send = async {
                let Some(mut data) = ready else {
                    return Ok(());
                };
                // Every file a row names is complete in its place before the row goes out.
                if let Some(attachments) = attachments {
                    data = attachments
                        .store_files(api, data, &window.label, &cx.metrics, &self.name)
                        .await
                        .map_err(|e| WindowError::Failed(e.to_string()))?;
                }
                cx.out
                    .send(Batch::new(window.clone(), data))
                    .await
                    .map_err(WindowError::Stop)
            };
            // The next page is on its way while this one goes downstream.
            let (sent, next) = tokio::join!(send, pages.next());
            sent?;
            event = next;
        }
    }

    async fn finish_window(
        &self,
        cx: &SourceContext,
        window: WindowRef,
        result: Result<(), WindowError>,
        skipped: &AtomicU64,
    ) -> Result<(), chatlake_core::Error> {
        match result {
            Ok(()) => cx.out.window_done(window).await,
            Err(WindowError::Skipped(e)) => {
                skipped.fetch_add(1, Ordering::Relaxed);
                cx.metrics.add_skipped(format!("{}: {e}", window.label));
                tracing::warn!(component = %self.name, window = %window.label, "Skipping a conversation Zoom does not serve: {e}");
                cx.out.window_done(window).await
            }
            Err(WindowError::Failed(e)) => cx.out.window_failed(window, &e).await,
            Err(WindowError::Stop(e)) => Err(e),
        }
    }

    async fn run_api(
        &self,
        settings: &ApiSettings,
        cx: &SourceContext,
    ) -> chatlake_core::Result<()> {
        let client = HttpClient::builder()
            .request_timeout(settings.request_timeout)
            .build()
            .map_err(|e| self.core_error(e))?;
        let api = ZoomApi::new(
            client,
            settings.base.clone(),
            settings.credentials.clone(),
            settings.budgets,
            settings.retry.clone(),
            cx.metrics.clone(),
        );
        let skipped = AtomicU64::new(0);
        for note in &self.notes {
            // Not a failure: those days are gone from the provider. The summary says so.
            tracing::warn!(component = %self.name, "Not fetched: {note}");
            cx.metrics.add_skipped(note.clone());
        }
        let windows = self
            .discover(&api, settings, &skipped, &cx.metrics)
            .await
            .map_err(|e| self.core_error(format!("discovery failed: {e}")))?;
        tracing::info!(component = %self.name, windows = windows.len(), "Zoom windows planned.");
        let api = &api;
        let skipped_ref = &skipped;
        let mut results = futures::stream::iter(windows)
            .map(|(window, target)| async move {
                let window = Arc::new(window);
                let result = self
                    .run_window(api, settings.attachments.as_ref(), &target, &window, cx)
                    .await;
                self.finish_window(cx, window, result, skipped_ref).await
            })
            .buffer_unordered(settings.concurrency);
        while let Some(result) = results.next().await {
            result?;
        }
        let skipped = skipped.load(Ordering::Relaxed);
        if skipped > 0 {
            tracing::warn!(component = %self.name, skipped, "Zoom conversations skipped (not found or not allowed); see the warnings above.");
        }
        Ok(())
    }

    // ---- saved pages ----------------------------------------------------------------------

    /// Reads a file of saved pages: split at line boundaries into parts parsed concurrently on
    /// blocking threads, all sending into `window`.
    async fn load_file(
        &self,
        path: PathBuf,
        window: &WindowRef,
        cx: &SourceContext,
    ) -> Result<(), WindowError> {
        let failed = |e: std::io::Error| WindowError::Failed(format!("{}: {e}", path.display()));
        let parts = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || saved::split_lines(&path))
                .await
                .map_err(|e| failed(std::io::Error::other(e)))?
                .map_err(failed)?
        };
        let (record_type, keep_raw) = (self.record_type(), self.keep_raw);
        let results = futures::future::join_all(parts.into_iter().map(|part| {
            let path = path.clone();
            chatlake_source_kit::parsed::parse_to_output(cx, window, move |sink| {
                saved::read_pages(&path, part, record_type, keep_raw, sink)
            })
        }))
        .await;
        let mut bytes = 0;
        for result in results {
            match result.map_err(WindowError::Stop)? {
                Ok(read) => bytes += read,
                Err(saved::ReadError::Io(e)) => return Err(failed(e)),
                Err(saved::ReadError::Stopped(e)) => {
                    return Err(WindowError::Stop(self.core_error(e)));
                }
            }
        }
        cx.metrics.add_file(bytes);
        Ok(())
    }

    fn core_error(&self, e: impl Into<chatlake_core::BoxError>) -> chatlake_core::Error {
        chatlake_core::Error::component(&self.name, e)
    }
}

impl ApiSettings {
    /// A view of `settings` with an explicit user list, for [`ZoomSource::listed_targets`].
    fn users_only(settings: &ApiSettings, users: Vec<String>) -> ApiSettings {
        ApiSettings {
            base: settings.base.clone(),
            credentials: settings.credentials.clone(),
            budgets: settings.budgets,
            retry: settings.retry.clone(),
            request_timeout: settings.request_timeout,
            concurrency: settings.concurrency,
            ranges: Vec::new(),
            lookback: settings.lookback,
            users: Some(users),
            user_statuses: settings.user_statuses.clone(),
            conversations: match &settings.conversations {
                Conversations::All => Conversations::All,
                Conversations::List(l) => Conversations::List(l.clone()),
            },
            sessions: None,
            // Only for listing targets: nothing is downloaded through this view.
            attachments: None,
        }
    }
}

#[async_trait]
impl Source for ZoomSource {
    fn output_kind(&self) -> DataKind {
        DataKind::raw(self.record_type())
    }

    fn plan_notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    fn plan(&self) -> chatlake_core::Result<Vec<PlannedWindow>> {
        match &self.mode {
            Mode::Files(files) => files.plan(&self.name),
            Mode::Api(settings) => match self.listed_targets(settings) {
                Some(targets) => {
                    let targets = BTreeMap::from([(usize::MAX, targets)]);
                    let api_base = &settings.base;
                    Ok(self
                        .windows(settings, &targets)
                        .into_iter()
                        .map(|(window, target)| PlannedWindow {
                            request: format!(
                                "GET {} {}",
                                api_base.as_str().trim_end_matches('/'),
                                target.describe()
                            ),
                            window,
                        })
                        .collect())
                }
                None => Ok(settings
                    .ranges
                    .iter()
                    .enumerate()
                    .map(|(i, range)| {
                        let label = format!(
                            "{} (every conversation discovered at run time)",
                            self.range_label(range)
                        );
                        PlannedWindow {
                            request: format!(
                                "discover, then GET each conversation's pages from {}",
                                settings.base
                            ),
                            window: self.window(i, label, Some(range)),
                        }
                    })
                    .collect()),
            },
        }
    }

    async fn run(self: Box<Self>, cx: SourceContext) -> chatlake_core::Result<()> {
        match &self.mode {
            Mode::Api(settings) => self.run_api(settings, &cx).await,
            Mode::Files(files) => {
                let (source, cx) = (&*self, &cx);
                files
                    .run(&self.name, cx, |window, path| async move {
                        use chatlake_core::stage::WindowError as Ended;
                        source
                            .load_file(path, &window, cx)
                            .await
                            .map_err(|e| match e {
                                WindowError::Failed(e) => Ended::Failed(e),
                                WindowError::Skipped(e) => Ended::Failed(e.to_string()),
                                WindowError::Stop(e) => Ended::Stop(e),
                            })
                    })
                    .await
                    .map_err(|e| e.into_run_error(&self.name))
            }
        }
    }

    fn plan_is_complete(&self) -> bool {
        match &self.mode {
            Mode::Files(_) => true,
            Mode::Api(settings) => self.listed_targets(settings).is_some(),
        }
    }

    fn windows_loaded_again(&self) -> Vec<String> {
        match &self.mode {
            Mode::Api(api) => self.windows_fetched_again(api),
            Mode::Files(files) => files.windows_loaded_again(&self.name),
        }
    }

    /// API windows split by [`ZoomSource::share_unit`] (conversations are found at run time and
    /// split then); the account's rate budgets and daily caps are divided among the workers, as
    /// Zoom counts them per account, not per process. Saved pages split by file.
    fn share(&mut self, share: &Share) -> ShareTaken {
        match &mut self.mode {
            Mode::Files(files) => files.take_share(share),
            Mode::Api(settings) => {
                settings.budgets = settings.budgets.divided(share.shard.count());
                self.share = Some(*share);
                ShareTaken::Split
            }
        }
    }

    /// Each message's JSON object as the page had it, in a last column `raw` (API pages and
    /// saved pages alike).
    fn keep_raw_records(&mut self) -> std::result::Result<(), String> {
        self.keep_raw = true;
        Ok(())
    }
}
