//! Zoom Team Chat sources:
//!
//! * `zoom_user_messages`: `GET /chat/users/{userId}/messages` per user, conversation (channel
//!   or 1:1 contact) and date range, with discovery of users and conversations;
//! * `zoom_chat_report`: `GET /report/chat/sessions/{sessionId}` per session and calendar month,
//!   with `messages`, `edited_messages` and `deleted_messages` as records of their own.
//!
//! Both emit raw batches ([`raw_schema`]) that `normalize` maps to canonical messages, and both
//! can read saved response pages (`files = [...]`) instead of calling the API.
//!
//! Layout: [`config`] (the tables, their checks, `build`), `api` (tokens, the shared rate
//! budgets, one `GET` with retries), [`parse`] (pages → Arrow), `saved` (files of saved pages, parsed on parallel blocking
//! threads), `report_plan` (the report's months, planned from the ledger), `source` (discovery,
//! windows, paging), `attachments` (`download_attachments`: files saved by content).

mod api;
mod attachments;
pub mod config;
pub mod parse;
mod report_plan;
mod saved;
mod source;

pub use config::{UserStatus, ZoomAuth, ZoomChatReportConfig, ZoomUserMessagesConfig};
pub use parse::{CHAT_REPORT, USER_MESSAGES, raw_schema};
pub use source::ZoomSource;
