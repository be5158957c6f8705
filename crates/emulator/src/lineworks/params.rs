//! The query parameters of the download request: parsed and validated in one place, with the
//! strict `YYYY-MM-DDThh:mm:ssTZD` time format of the API.

use std::collections::HashSet;

use chrono::{DateTime, NaiveDateTime};

use super::csv::Language;
use super::error::ApiError;

/// The longest window one request may ask for.
const MAX_RANGE_S: i64 = 31 * 86_400;

/// The `botMessageFilterType` parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BotFilter {
    Include,
    Exclude,
    Only,
}

impl BotFilter {
    pub(super) fn keeps(self, is_bot: bool) -> bool {
        match self {
            BotFilter::Include => true,
            BotFilter::Exclude => !is_bot,
            BotFilter::Only => is_bot,
        }
    }
}

/// A validated download request.
#[derive(Clone, Copy, Debug)]
pub(super) struct DownloadParams {
    /// Unix seconds, inclusive.
    pub(super) start: i64,
    /// Unix seconds, inclusive.
    pub(super) end: i64,
    /// Offset of `startTime`, used for every datetime in the file.
    pub(super) offset_secs: i32,
    pub(super) language: Language,
    pub(super) bots: BotFilter,
    pub(super) domain_id: Option<i32>,
}

impl DownloadParams {
    /// Parses the raw query, percent-decoding it exactly once: `%2B` becomes `+`, while a
    /// literal `+` becomes a space and so fails the time format, as with the real API.
    pub(super) fn parse(query: &str) -> Result<DownloadParams, ApiError> {
        const NAMES: [&str; 6] = [
            "startTime",
            "endTime",
            "language",
            "botMessageFilterType",
            "domainId",
            "rogerMessageFilterType",
        ];
        let mut values: [Option<String>; 6] = Default::default();
        let mut seen = HashSet::new();
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let Some(index) = NAMES.iter().position(|name| *name == key) else {
                continue; // Unknown parameters are ignored, as most APIs do.
            };
            if !seen.insert(index) {
                return Err(ApiError::invalid(format!("{key} is given more than once.")));
            }
            values[index] = Some(value.into_owned()).filter(|v| !v.is_empty());
        }
        let [start, end, language, bots, domain_id, roger] = values;
        let start = start.ok_or_else(|| ApiError::missing("startTime"))?;
        let end = end.ok_or_else(|| ApiError::missing("endTime"))?;
        let (start, offset_secs) = parse_time("startTime", &start)?;
        let (end, _) = parse_time("endTime", &end)?;
        if end < start {
            return Err(ApiError::invalid("endTime must not be before startTime."));
        }
        if end - start > MAX_RANGE_S {
            return Err(ApiError::invalid(
                "The range from startTime to endTime must be at most 31 days.",
            ));
        }
        let language = match language {
            None => Language::EnUs,
            Some(value) => Language::parse(&value).ok_or_else(|| {
                ApiError::invalid("language must be one of ko_KR, ja_JP, zh_CN, zh_TW, en_US.")
            })?,
        };
        let filter = |name: &str, value: Option<String>| match value.as_deref() {
            None | Some("include") => Ok(BotFilter::Include),
            Some("exclude") => Ok(BotFilter::Exclude),
            Some("only") => Ok(BotFilter::Only),
            Some(_) => Err(ApiError::invalid(format!(
                "{name} must be one of include, exclude, only."
            ))),
        };
        let bots = filter("botMessageFilterType", bots)?;
        // Accepted and validated; the dataset holds no Roger (push-to-talk) messages.
        filter("rogerMessageFilterType", roger)?;
        let domain_id = domain_id
            .map(|value| value.parse::<i32>())
            .transpose()
            .map_err(|_| ApiError::invalid("domainId must be an int32."))?;
        Ok(DownloadParams {
            start,
            end,
            offset_secs,
            language,
            bots,
            domain_id,
        })
    }

    /// `message-contents_<start>_<end>.csv`, both in the offset of `startTime`.
    pub(super) fn filename(&self) -> String {
        let local = |at: i64| {
            DateTime::from_timestamp(at + i64::from(self.offset_secs), 0)
                .map(|t| t.format("%Y%m%d%H%M%S").to_string())
                .unwrap_or_default()
        };
        format!(
            "message-contents_{}_{}.csv",
            local(self.start),
            local(self.end)
        )
    }
}

/// Parses `YYYY-MM-DDThh:mm:ssTZD` (TZD is `Z` or `±hh:mm`) strictly, into Unix seconds and
/// the offset in seconds.
fn parse_time(name: &str, value: &str) -> Result<(i64, i32), ApiError> {
    let invalid = |hint: &str| {
        ApiError::invalid(format!(
            "{name} must be YYYY-MM-DDThh:mm:ssTZD, e.g. 2025-05-01T00:00:00+09:00{hint}."
        ))
    };
    let (local, zone) = value.split_at_checked(19).ok_or_else(|| invalid(""))?;
    let shape_ok = local.bytes().enumerate().all(|(i, b)| match i {
        4 | 7 => b == b'-',
        10 => b == b'T',
        13 | 16 => b == b':',
        _ => b.is_ascii_digit(),
    });
    let local = NaiveDateTime::parse_from_str(local, "%Y-%m-%dT%H:%M:%S")
        .ok()
        .filter(|_| shape_ok)
        .ok_or_else(|| invalid(""))?;
    let offset_secs = match zone.as_bytes() {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2]
            if [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit()) =>
        {
            let digits = |a: &u8, b: &u8| i32::from(a - b'0') * 10 + i32::from(b - b'0');
            let (hours, minutes) = (digits(h1, h2), digits(m1, m2));
            if hours > 23 || minutes > 59 {
                return Err(invalid(""));
            }
            let secs = hours * 3600 + minutes * 60;
            if *sign == b'-' { -secs } else { secs }
        }
        [b' ', ..] => {
            return Err(invalid(
                " (a literal '+' in a query string means a space: send it as %2B)",
            ));
        }
        _ => return Err(invalid("")),
    };
    Ok((
        local.and_utc().timestamp() - i64::from(offset_secs),
        offset_secs,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_strictly() {
        assert_eq!(
            parse_time("t", "2025-05-01T00:00:00+09:00").unwrap(),
            (1_746_025_200, 32_400)
        );
        assert_eq!(
            parse_time("t", "2025-04-30T15:00:00Z").unwrap(),
            (1_746_025_200, 0)
        );
        assert_eq!(
            parse_time("t", "2025-04-30T11:30:00-03:30").unwrap(),
            (1_746_025_200, -12_600)
        );
        for bad in [
            "2025-05-01T00:00:00 09:00",
            "2025-05-01 00:00:00+09:00",
            "2025-05-01T00:00:00",
            "2025-5-01T00:00:00+09:00",
            "2025-05-01T00:00:00+0900",
            "2025-02-30T00:00:00Z",
            "2025-05-01T00:00:00.000Z",
            "2025-05-01T00:00:00+24:00",
            "+2025-05-01T00:00:00Z",
            "",
        ] {
            assert!(parse_time("t", bad).is_err(), "{bad}");
        }
        let err = parse_time("startTime", "2025-05-01T00:00:00 09:00").unwrap_err();
        assert!(err.description.contains("%2B"), "{}", err.description);
    }

    #[test]
    fn filename_uses_the_start_offset() {
        let params = DownloadParams::parse(
            "startTime=2025-05-01T00:00:00%2B09:00&endTime=2025-05-31T14:59:59Z",
        )
        .unwrap();
        assert_eq!(
            params.filename(),
            "message-contents_20250501000000_20250531235959.csv"
        );
    }
}
