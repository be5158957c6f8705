//! What flows between stages: batches of rows tagged with the window they came from, and the
//! markers that close a window.
//!
//! A *window* is the unit a source fetches and a sink commits: one LINE WORKS download, one file
//! given by hand, one Zoom conversation over a date range. Every batch of a window travels before
//! that window's [`Event::WindowDone`], on every path through the graph.

use std::fmt;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use chrono::{DateTime, FixedOffset};
use serde::Serialize;

/// One request window (or one input file) of one source.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Window {
    /// The source component that fetches it.
    pub source: String,
    /// The provider stream, e.g. `message_contents`.
    pub stream: String,
    /// Position among the source's windows of this run, from 0.
    pub index: u32,
    /// Start of the requested range, inclusive, in the offset it was requested in.
    pub start: Option<DateTime<FixedOffset>>,
    /// End of the requested range, inclusive.
    pub end: Option<DateTime<FixedOffset>>,
    /// The UTC offset the provider writes local times in for this window.
    #[serde(serialize_with = "offset_string")]
    pub utc_offset: FixedOffset,
    /// What a person reads in logs and errors: the range, or the file path. A window of a
    /// range is labelled `<scope> <range>` (the scope names the user, conversation or session;
    /// none for a source with one stream of ranges) with no space in the range: windows of one
    /// scope replace each other after a reset ([`crate::state::window_scope`]).
    pub label: String,
    /// The name this window's key carries when it is not `source`: a source renamed with
    /// `chatlake state rename-source` goes on under the keys its windows had before (its
    /// ledger's [`crate::state::SourceState::keys_from`]), so the lake files, dedupe history
    /// and removal logs that name those keys stay this source's, and a window fetched again
    /// (a lookback, a changed file) replaces its own files instead of adding a second copy.
    /// `None` for a source that was never renamed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
}

fn offset_string<S: serde::Serializer>(o: &FixedOffset, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(o)
}

/// Windows are shared by every batch of the window.
pub type WindowRef = Arc<Window>;

impl Window {
    /// A stable, file-name-safe key: `<source>-<16 hex digits>`, a hash of the stream, the
    /// range and the label (which names the file, user or conversation). The same window of a
    /// later run has the same key, so its files get the same names and the ledger knows it.
    /// A renamed source's windows keep the name they were first loaded under
    /// ([`Window::key_name`]).
    pub fn key(&self) -> String {
        let mut identity = Vec::with_capacity(128);
        for part in [
            self.stream.as_str(),
            &self.start.map(|t| t.to_rfc3339()).unwrap_or_default(),
            &self.end.map(|t| t.to_rfc3339()).unwrap_or_default(),
            self.label.as_str(),
        ] {
            identity.extend_from_slice(part.as_bytes());
            identity.push(0x1F);
        }
        format!(
            "{}-{:016x}",
            self.key_name.as_deref().unwrap_or(&self.source),
            xxhash_rust::xxh3::xxh3_64(&identity)
        )
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} window {} [{}]", self.source, self.index, self.label)
    }
}

/// Rows of one window.
#[derive(Debug, Clone)]
pub struct Batch {
    pub window: WindowRef,
    pub data: RecordBatch,
}

impl Batch {
    pub fn new(window: WindowRef, data: RecordBatch) -> Self {
        Batch { window, data }
    }

    pub fn num_rows(&self) -> usize {
        self.data.num_rows()
    }
}

/// The message passed over the channels between stages.
#[derive(Debug, Clone)]
pub enum Event {
    Batch(Batch),
    /// Every batch of this window has been sent: downstream may commit it.
    WindowDone(WindowRef),
    /// The window failed after retries: downstream discards what it holds of it, commits nothing.
    WindowFailed(WindowRef),
}
