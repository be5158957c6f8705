//! Request windows and the download URL of each.
//!
//! The API takes at most 31 days per request, with both ends inclusive to the second, so a range
//! is cut into consecutive windows where each starts one second after the previous one ends.

use chatlake_core::Window;
use chatlake_source_kit::windows;
use chrono::{DateTime, FixedOffset};
use url::Url;

use crate::config::{BotMessages, Language};

/// The provider stream every window of this source belongs to.
pub const STREAM: &str = "message_contents";

pub use chatlake_source_kit::time::format_time;

/// Cuts `[start, end]` (inclusive, whole seconds) into windows of at most `days` days (see
/// [`chatlake_source_kit::windows::split`]).
pub fn split(
    source: &str,
    start: DateTime<FixedOffset>,
    end: DateTime<FixedOffset>,
    days: u32,
) -> Vec<Window> {
    windows::split(source, STREAM, start, end, days)
}

/// The windows of `[start, end]` that earlier runs did not commit, `lookback` before the cursor
/// fetched again (see [`chatlake_source_kit::windows::split_uncovered`]).
pub fn split_uncovered(
    source: &str,
    start: DateTime<FixedOffset>,
    end: DateTime<FixedOffset>,
    days: u32,
    ledger: &chatlake_core::state::SourceState,
    lookback: std::time::Duration,
) -> Vec<Window> {
    windows::split_uncovered(source, STREAM, start, end, days, ledger, lookback)
}

/// The query parameters of one download request, in the order the API documents them.
#[derive(Debug, Clone)]
pub struct DownloadQuery {
    pub language: Language,
    pub bot_messages: BotMessages,
    pub domain_id: Option<i32>,
}

impl DownloadQuery {
    /// `endpoint` with the query for `window`. The offset's `+` goes out as `%2B`: a literal `+`
    /// in a query means a space.
    pub fn url(&self, endpoint: &Url, window: &Window) -> Url {
        let mut pairs: Vec<(&str, String)> = Vec::with_capacity(5);
        if let Some(start) = &window.start {
            pairs.push(("startTime", format_time(start)));
        }
        if let Some(end) = &window.end {
            pairs.push(("endTime", format_time(end)));
        }
        pairs.push(("language", self.language.as_str().to_string()));
        pairs.push((
            "botMessageFilterType",
            self.bot_messages.as_str().to_string(),
        ));
        if let Some(domain) = self.domain_id {
            pairs.push(("domainId", domain.to_string()));
        }
        let query = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", encode_query_value(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut url = endpoint.clone();
        url.set_query(Some(&query));
        url
    }
}

/// Percent-encodes a query value, leaving the characters RFC 3986 allows unescaped in a query
/// (so times read `2025-05-01T00:00:00%2B09:00`, as in the API's own example).
fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod ledger_tests {
    use super::*;
    use chatlake_core::state::{SourceState, WindowRecord, WindowStatus};

    #[test]
    fn committed_windows_are_not_planned_again() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap();
        let all = split(
            "lw",
            t("2025-01-01T00:00:00+09:00"),
            t("2025-03-31T23:59:59+09:00"),
            31,
        );
        assert_eq!(all.len(), 3);
        let mut ledger = SourceState::default();
        for (w, status) in [
            (&all[0], WindowStatus::Committed),
            (&all[1], WindowStatus::Failed),
        ] {
            ledger.windows.insert(
                w.key(),
                WindowRecord {
                    stream: w.stream.clone(),
                    label: w.label.clone(),
                    start: w.start,
                    end: w.end,
                    status,
                    run_id: "r1".into(),
                    at: chrono::Utc::now(),
                    checkpoint: None,
                },
            );
        }
        let rest = split_uncovered(
            "lw",
            t("2025-01-01T00:00:00+09:00"),
            t("2025-03-31T23:59:59+09:00"),
            31,
            &ledger,
            std::time::Duration::ZERO,
        );
        // The failed window and the one never reached come back, with the same keys as before.
        assert_eq!(
            rest.iter().map(Window::key).collect::<Vec<_>>(),
            vec![all[1].key(), all[2].key()]
        );
        assert_eq!(rest[0].start.unwrap().offset().local_minus_utc(), 9 * 3600);

        // A lookback of two days starts the next window two days before the cursor.
        let back = split_uncovered(
            "lw",
            t("2025-01-01T00:00:00+09:00"),
            t("2025-03-31T23:59:59+09:00"),
            31,
            &ledger,
            std::time::Duration::from_secs(2 * 86_400),
        );
        assert_eq!(back[0].start, Some(t("2025-01-30T00:00:00+09:00")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn t(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    #[test]
    fn splits_into_inclusive_windows_of_at_most_31_days() {
        let w = split(
            "lw",
            t("2025-01-01T00:00:00+09:00"),
            t("2025-03-31T23:59:59+09:00"),
            31,
        );
        let labels: Vec<&str> = w.iter().map(|w| w.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "2025-01-01T00:00:00+09:00..2025-01-31T23:59:59+09:00",
                "2025-02-01T00:00:00+09:00..2025-03-03T23:59:59+09:00",
                "2025-03-04T00:00:00+09:00..2025-03-31T23:59:59+09:00",
            ]
        );
        for (i, win) in w.iter().enumerate() {
            assert_eq!(win.index, i as u32);
            assert_eq!(win.source, "lw");
            assert_eq!(win.stream, "message_contents");
            assert_eq!(win.utc_offset, FixedOffset::east_opt(9 * 3600).unwrap());
            let span = win.end.unwrap() - win.start.unwrap();
            assert!(span < Duration::days(31), "{span}");
        }
        // Consecutive: each window starts one second after the previous one ends.
        for pair in w.windows(2) {
            assert_eq!(
                pair[1].start.unwrap() - pair[0].end.unwrap(),
                Duration::seconds(1)
            );
        }
    }

    #[test]
    fn keeps_the_start_offset_and_whole_seconds() {
        // `end` in another offset is expressed in start's.
        let w = split(
            "lw",
            t("2025-05-01T00:00:00.750-03:00"),
            t("2025-05-02T12:00:00Z"),
            1,
        );
        assert_eq!(w.len(), 2);
        assert_eq!(
            w[0].label,
            "2025-05-01T00:00:00-03:00..2025-05-01T23:59:59-03:00"
        );
        assert_eq!(
            w[1].label,
            "2025-05-02T00:00:00-03:00..2025-05-02T09:00:00-03:00"
        );
        assert_eq!(w[1].utc_offset, FixedOffset::west_opt(3 * 3600).unwrap());
        // UTC is written +00:00, not Z.
        let u = split(
            "lw",
            t("2025-05-01T00:00:00Z"),
            t("2025-05-01T00:00:01Z"),
            31,
        );
        assert_eq!(
            u[0].label,
            "2025-05-01T00:00:00+00:00..2025-05-01T00:00:01+00:00"
        );
    }

    #[test]
    fn an_exact_multiple_leaves_no_empty_window() {
        let w = split(
            "lw",
            t("2025-01-01T00:00:00+09:00"),
            t("2025-01-02T23:59:59+09:00"),
            1,
        );
        assert_eq!(w.len(), 2);
        let one = split(
            "lw",
            t("2025-01-01T00:00:00+09:00"),
            t("2025-01-01T00:00:00+09:00"),
            31,
        );
        assert_eq!(one.len(), 1);
        assert!(
            split(
                "lw",
                t("2025-01-02T00:00:00Z"),
                t("2025-01-01T00:00:00Z"),
                31
            )
            .is_empty()
        );
    }

    #[test]
    fn query_sends_plus_as_percent_2b() {
        let endpoint =
            Url::parse("https://www.worksapis.com/v1.0/monitoring/message-contents/download")
                .unwrap();
        let w = &split(
            "lw",
            t("2025-05-01T00:00:00+09:00"),
            t("2025-05-31T23:59:59+09:00"),
            31,
        )[0];
        let q = DownloadQuery {
            language: Language::JaJp,
            bot_messages: BotMessages::Exclude,
            domain_id: Some(10000001),
        };
        let url = q.url(&endpoint, w);
        assert_eq!(
            url.as_str(),
            "https://www.worksapis.com/v1.0/monitoring/message-contents/download\
             ?startTime=2025-05-01T00:00:00%2B09:00&endTime=2025-05-31T23:59:59%2B09:00\
             &language=ja_JP&botMessageFilterType=exclude&domainId=10000001"
        );
        // Decoded once, the server sees the `+` again.
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(pairs[0].1, "2025-05-01T00:00:00+09:00");
        let neg = DownloadQuery {
            language: Language::EnUs,
            bot_messages: BotMessages::Include,
            domain_id: None,
        };
        let w = &split(
            "lw",
            t("2025-05-01T00:00:00-05:00"),
            t("2025-05-01T01:00:00-05:00"),
            31,
        )[0];
        assert!(neg.url(&endpoint, w).as_str().ends_with(
            "startTime=2025-05-01T00:00:00-05:00&endTime=2025-05-01T01:00:00-05:00\
             &language=en_US&botMessageFilterType=include"
        ));
        assert_eq!(encode_query_value("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
