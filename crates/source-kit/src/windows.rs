//! Cutting a source's range into request windows, and skipping what earlier runs committed.
//!
//! A window is inclusive to the second at both ends and the next one starts one second after it
//! ends, so consecutive windows neither overlap nor leave a gap; each keeps `start`'s offset,
//! which is also the offset the provider writes local times in.

use chatlake_core::Window;
use chatlake_core::state::SourceState;
use chrono::{DateTime, Duration, FixedOffset, SubsecRound, Utc};

use crate::time::format_time;

/// Cuts `[start, end]` (inclusive, whole seconds) into windows of `stream` of at most `days`
/// days, labelled `start..end`.
pub fn split(
    source: &str,
    stream: &str,
    start: DateTime<FixedOffset>,
    end: DateTime<FixedOffset>,
    days: u32,
) -> Vec<Window> {
    let offset = *start.offset();
    let start = start.trunc_subsecs(0);
    let end = end.with_timezone(&offset).trunc_subsecs(0);
    let span = Duration::days(i64::from(days.max(1))) - Duration::seconds(1);
    let mut windows = Vec::new();
    let mut from = start;
    while from <= end {
        let to = (from + span).min(end);
        windows.push(Window {
            source: source.to_string(),
            stream: stream.to_string(),
            index: windows.len() as u32,
            start: Some(from),
            end: Some(to),
            utc_offset: offset,
            label: format!("{}..{}", format_time(&from), format_time(&to)),
            key_name: None,
        });
        from = to + Duration::seconds(1);
    }
    windows
}

/// Takes `lookback` off the end of the last committed stretch (ranges in time order, as
/// `SourceState::committed_ranges` gives them), so that much before the cursor counts as not
/// loaded and is fetched again: what a provider changed there since (an edit, a delivery
/// report) arrives in this run. A stretch shorter than the lookback is dropped whole.
pub fn reopen_tail(
    covered: &mut Vec<(DateTime<Utc>, DateTime<Utc>)>,
    lookback: std::time::Duration,
) {
    if let Some(last) = covered.last_mut() {
        last.1 -= Duration::from_std(lookback).unwrap_or(Duration::MAX);
        if last.1 < last.0 {
            covered.pop();
        }
    }
}

/// The windows of `[start, end]` that earlier runs did not commit (the source's ledger): each
/// uncovered stretch split as [`split`] does, numbered in order. A run killed part-way, or a
/// window that failed, is fetched again; what is committed is not fetched twice. `lookback`
/// fetches that much before the cursor (the end of the last committed stretch) again.
pub fn split_uncovered(
    source: &str,
    stream: &str,
    start: DateTime<FixedOffset>,
    end: DateTime<FixedOffset>,
    days: u32,
    ledger: &SourceState,
    lookback: std::time::Duration,
) -> Vec<Window> {
    let offset = *start.offset();
    let mut covered = ledger.committed_ranges(stream);
    reopen_tail(&mut covered, lookback);
    let mut windows = Vec::new();
    for (from, to) in chatlake_core::state::uncovered(
        start.trunc_subsecs(0).with_timezone(&Utc),
        end.trunc_subsecs(0).with_timezone(&Utc),
        &covered,
    ) {
        for mut w in split(
            source,
            stream,
            from.with_timezone(&offset),
            to.with_timezone(&offset),
            days,
        ) {
            w.index = windows.len() as u32;
            // A renamed source goes on under its windows' earlier keys.
            w.key_name = ledger.keys_from.clone();
            windows.push(w);
        }
    }
    windows
}
