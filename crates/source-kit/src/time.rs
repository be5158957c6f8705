//! Times in source tables: `start`/`end` as RFC 3339 with an offset, and the one text form
//! windows and provider requests write them in.

use std::borrow::Cow;

use chrono::{DateTime, FixedOffset};
use schemars::JsonSchema;
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

/// A `start` or `end` option: an RFC 3339 time with an offset, written as a string or as a TOML
/// datetime. Documented as a string; reads as the time it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetTime(pub DateTime<FixedOffset>);

impl<'de> Deserialize<'de> for OffsetTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (RawTime::Text(s) | RawTime::Toml { value: s }) = RawTime::deserialize(d)?;
        DateTime::parse_from_rfc3339(s.trim())
            .map(OffsetTime)
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "expected an RFC 3339 time with an offset, like 2025-01-01T00:00:00+09:00 or \
                     2025-01-01T00:00:00Z, got {s:?}"
                ))
            })
    }
}

impl JsonSchema for OffsetTime {
    fn schema_name() -> Cow<'static, str> {
        "OffsetTime".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        String::json_schema(generator)
    }
}

impl std::ops::Deref for OffsetTime {
    type Target = DateTime<FixedOffset>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl From<OffsetTime> for DateTime<FixedOffset> {
    fn from(t: OffsetTime) -> Self {
        t.0
    }
}

/// `YYYY-MM-DDThh:mm:ss+09:00`: how window labels (and the LINE WORKS and Qlara APIs) write a
/// time. Always a numeric offset (`+00:00`, never `Z`).
pub fn format_time(t: &DateTime<FixedOffset>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize, JsonSchema)]
    struct Table {
        /// The start.
        start: Option<OffsetTime>,
    }

    fn start(v: serde_json::Value) -> Result<Option<String>, String> {
        serde_json::from_value::<Table>(v)
            .map(|t| t.start.map(|s| s.to_rfc3339()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn takes_text_and_toml_datetimes_and_names_the_form_on_error() {
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
    fn is_documented_as_an_optional_string() {
        let schema = serde_json::to_value(schemars::schema_for!(Table)).unwrap();
        let start = &schema["properties"]["start"];
        assert_eq!(start["type"], json!(["string", "null"]), "{start}");
        assert_eq!(start["description"], "The start.");
    }

    #[test]
    fn formats_with_a_numeric_offset() {
        let t = DateTime::parse_from_rfc3339("2025-05-01T00:00:00.5Z").unwrap();
        assert_eq!(format_time(&t), "2025-05-01T00:00:00+00:00");
    }
}
