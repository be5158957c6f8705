//! Times in source tables: `start`/`end` as RFC 3339 with an offset, and the one text form
//! windows and provider requests write them in.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Deserializer};

/// A time value as TOML, YAML or JSON hand it over: a string, or TOML's unquoted datetime, which
/// reaches serde as toml's private one-key table.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawTime {
    Text(String),
    Toml {
        #[serde(rename = "$__toml_private_datetime")]
        value: String,
    },
}

/// The text of an optional time option, whether quoted or a TOML datetime; for options with a
/// form of their own (a date, say).
pub fn deserialize_time_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<RawTime>::deserialize(d)?.map(|(RawTime::Text(s) | RawTime::Toml { value: s })| s))
}

/// `deserialize_with` for an optional `start`/`end`: an RFC 3339 time with an offset.
pub fn deserialize_time<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<DateTime<FixedOffset>>, D::Error> {
    let Some(s) = deserialize_time_text(d)? else {
        return Ok(None);
    };
    DateTime::parse_from_rfc3339(s.trim())
        .map(Some)
        .map_err(|_| {
            serde::de::Error::custom(format!(
                "expected an RFC 3339 time with an offset, like 2025-01-01T00:00:00+09:00 or \
                 2025-01-01T00:00:00Z, got {s:?}"
            ))
        })
}

/// `YYYY-MM-DDThh:mm:ss+09:00`: how window labels (and the LINE WORKS and Qlara APIs) write a
/// time. Always a numeric offset (`+00:00`, never `Z`).
pub fn format_time(t: &DateTime<FixedOffset>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Table {
        #[serde(default, deserialize_with = "deserialize_time")]
        start: Option<DateTime<FixedOffset>>,
    }

    fn start(v: serde_json::Value) -> Result<Option<String>, String> {
        serde_json::from_value::<Table>(v)
            .map(|t| t.start.map(|s| s.to_rfc3339()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn takes_text_and_toml_datetimes_and_names_the_form_on_error() {
        use serde_json::json;
        assert_eq!(
            start(json!({"start": " 2025-01-01T00:00:00+09:00 "})),
            Ok(Some("2025-01-01T00:00:00+09:00".into()))
        );
        assert_eq!(
            start(json!({"start": {"$__toml_private_datetime": "2025-01-01T00:00:00Z"}})),
            Ok(Some("2025-01-01T00:00:00+00:00".into()))
        );
        assert_eq!(start(json!({})), Ok(None));
        let e = start(json!({"start": "2025-01-01 00:00:00"})).unwrap_err();
        assert!(e.contains("RFC 3339 time with an offset"), "{e}");
    }

    #[test]
    fn formats_with_a_numeric_offset() {
        let t = DateTime::parse_from_rfc3339("2025-05-01T00:00:00.5Z").unwrap();
        assert_eq!(format_time(&t), "2025-05-01T00:00:00+00:00");
    }
}
