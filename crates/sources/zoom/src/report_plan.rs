//! Which months a `zoom_chat_report` source asks for, planned from its ledger.
//!
//! The report serves only the last six months. A scheduled job with a fixed `start` must keep
//! working once that start is older: months the ledger holds are simply not asked for again, and
//! months never loaded that the report no longer serves are reported (a warning, and a line in
//! the run summary), not a failure of the run. Without a `start`, the plan begins at the first
//! month the ledger does not hold, so an outage of more than a month leaves no hole.

use chatlake_core::config::InvalidConfig;
use chatlake_core::state::uncovered;
use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};

use crate::config::{check_report_range, split_months};

/// The months to fetch, and what can no longer be fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReportPlan {
    /// Calendar-month stretches (whole UTC days) within the last six months.
    pub months: Vec<(NaiveDate, NaiveDate)>,
    /// Stretches never loaded that are older than six months: the report refuses them.
    pub lost: Vec<(NaiveDate, NaiveDate)>,
    /// The oldest day the report serves today.
    pub oldest: NaiveDate,
}

impl ReportPlan {
    /// One warning per lost stretch, for `plan`, the log and the run summary.
    pub(crate) fn notes(&self) -> Vec<String> {
        self.lost
            .iter()
            .map(|(from, to)| {
                format!(
                    "{from}..{to} was never loaded and is older than six months: Zoom's chat \
                     report serves only {} on, so it cannot be fetched any more",
                    self.oldest
                )
            })
            .collect()
    }
}

fn first_of_month(d: NaiveDate) -> NaiveDate {
    d.with_day(1).unwrap_or(d)
}

fn day_start(d: NaiveDate) -> DateTime<Utc> {
    d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()
}

fn day_end(d: NaiveDate) -> DateTime<Utc> {
    d.and_hms_opt(23, 59, 59).unwrap_or_default().and_utc()
}

/// The default start: with nothing loaded yet, the first day of last month; otherwise the first
/// month, from the one the ledger starts in, that the ledger does not hold whole.
fn default_start(
    today: NaiveDate,
    end: NaiveDate,
    committed: &[(DateTime<Utc>, DateTime<Utc>)],
) -> NaiveDate {
    let last_month = first_of_month(today)
        .checked_sub_months(Months::new(1))
        .unwrap_or(today);
    let Some(&(first_loaded, _)) = committed.first() else {
        return last_month;
    };
    let mut month = first_of_month(first_loaded.date_naive());
    while month <= end {
        let Some(next) = month.checked_add_months(Months::new(1)) else {
            break;
        };
        let last_day = next.pred_opt().unwrap_or(next);
        if !uncovered(day_start(month), day_end(last_day), committed).is_empty() {
            break;
        }
        month = next;
    }
    month.min(first_of_month(end))
}

/// Plans the months of `[start, end]` (`start` defaulting as [`default_start`] says) against the
/// ledger's `committed` ranges (sorted and merged). Errors only for a range the report can never
/// serve: `end` before `start`.
pub(crate) fn plan_months(
    start: Option<NaiveDate>,
    end: NaiveDate,
    today: NaiveDate,
    committed: &[(DateTime<Utc>, DateTime<Utc>)],
) -> Result<ReportPlan, InvalidConfig> {
    let start = start.unwrap_or_else(|| default_start(today, end, committed));
    if end < start {
        return Err(InvalidConfig::new(
            "end",
            format!("{end} is before start {start}"),
        ));
    }
    let oldest = today.checked_sub_months(Months::new(6)).unwrap_or(today);
    let mut months = Vec::new();
    let mut lost: Vec<(NaiveDate, NaiveDate)> = Vec::new();
    for (from, to) in split_months(start, end) {
        let mut from = from;
        if from < oldest {
            let gone_to = to.min(oldest.pred_opt().unwrap_or(oldest));
            for (a, b) in uncovered(day_start(from), day_end(gone_to), committed) {
                let (a, b) = (a.date_naive(), b.date_naive());
                match lost.last_mut() {
                    Some(last) if last.1.succ_opt() >= Some(a) => last.1 = last.1.max(b),
                    _ => lost.push((a, b)),
                }
            }
            if to < oldest {
                continue;
            }
            from = oldest;
        }
        check_report_range(from, to, today)
            .map_err(|(key, message)| InvalidConfig::new(key, message))?;
        months.push((from, to));
    }
    Ok(ReportPlan {
        months,
        lost,
        oldest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn loaded(from: &str, to: &str) -> (DateTime<Utc>, DateTime<Utc>) {
        (day_start(day(from)), day_end(day(to)))
    }

    const TODAY: &str = "2026-11-21";

    #[test]
    fn months_already_loaded_are_not_refused_however_old() {
        // A cron job with a fixed start, a year on: everything old is in the ledger.
        let committed = [loaded("2025-11-01", "2026-11-20")];
        let plan =
            plan_months(Some(day("2025-11-01")), day(TODAY), day(TODAY), &committed).unwrap();
        assert!(plan.lost.is_empty(), "{plan:?}");
        assert!(plan.notes().is_empty());
        assert_eq!(plan.oldest, day("2026-05-21"));
        // Only what the report still serves is asked for; the ledger drops what is loaded.
        assert_eq!(
            plan.months.first(),
            Some(&(day("2026-05-21"), day("2026-05-31")))
        );
        assert_eq!(plan.months.last(), Some(&(day("2026-11-01"), day(TODAY))));
        assert_eq!(plan.months.len(), 7);
    }

    #[test]
    fn months_never_loaded_and_too_old_are_reported_not_refused() {
        let committed = [loaded("2026-01-01", "2026-02-28")];
        let plan =
            plan_months(Some(day("2025-12-01")), day(TODAY), day(TODAY), &committed).unwrap();
        assert_eq!(
            plan.lost,
            [
                (day("2025-12-01"), day("2025-12-31")),
                (day("2026-03-01"), day("2026-05-20")),
            ]
        );
        let notes = plan.notes();
        assert_eq!(notes.len(), 2);
        assert!(
            notes[1].starts_with("2026-03-01..2026-05-20 was never loaded"),
            "{}",
            notes[1]
        );
        assert!(notes[1].contains("six months"), "{}", notes[1]);
        assert_eq!(plan.months[0], (day("2026-05-21"), day("2026-05-31")));
        // Nothing at all left to fetch is still no error.
        let plan =
            plan_months(Some(day("2020-01-01")), day("2020-01-31"), day(TODAY), &[]).unwrap();
        assert!(plan.months.is_empty());
        assert_eq!(plan.lost, [(day("2020-01-01"), day("2020-01-31"))]);
    }

    #[test]
    fn the_default_start_continues_from_the_ledger() {
        // Nothing loaded: last month and this month, as before.
        let plan = plan_months(None, day(TODAY), day(TODAY), &[]).unwrap();
        assert_eq!(plan.months[0].0, day("2026-10-01"));
        assert_eq!(plan.months.len(), 2);
        // Loaded through the middle of August, then an outage: the plan goes back to August.
        let committed = [loaded("2026-06-01", "2026-08-14")];
        let plan = plan_months(None, day(TODAY), day(TODAY), &committed).unwrap();
        assert_eq!(plan.months[0], (day("2026-08-01"), day("2026-08-31")));
        assert_eq!(plan.months.len(), 4);
        assert!(plan.lost.is_empty());
        // An outage longer than six months: the part the report no longer serves is reported.
        let committed = [loaded("2025-12-01", "2026-01-10")];
        let plan = plan_months(None, day(TODAY), day(TODAY), &committed).unwrap();
        assert_eq!(plan.lost, [(day("2026-01-11"), day("2026-05-20"))]);
        assert_eq!(plan.months[0].0, day("2026-05-21"));
        // Loaded through today: this month again (the ledger trims what it holds).
        let committed = [loaded("2026-09-01", TODAY)];
        let plan = plan_months(None, day(TODAY), day(TODAY), &committed).unwrap();
        assert_eq!(plan.months, [(day("2026-11-01"), day(TODAY))]);
    }

    #[test]
    fn end_before_start_is_still_an_error() {
        let e =
            plan_months(Some(day("2026-11-10")), day("2026-11-01"), day(TODAY), &[]).unwrap_err();
        assert_eq!(e.key, "end");
    }
}
