//! Qlara history-export rows → canonical messages (the GW job of `shared/bench/JOBS.md`).
//!
//! `messageId` → `message_id`, `sender` → `sender_id`, `destination` → `recipient`, `body` →
//! `text` (byte for byte), lowercase `channel` and `status` (an unknown status is `unknown`),
//! `sendDate` → `sent_at` and `deliveryDate` (empty allowed) → `delivered_at`, both converted from
//! their own offsets to UTC. A row without a `messageId`, or with a date that does not parse, is a
//! dead letter.
//!
//! **`version`** ([`QlaraVersion`]) orders the exports' views of one message so that
//! `dedupe keep = "latest"` keeps the final one over the in-flight one (`SENT`, no delivery date):
//! the epoch ms of `deliveryDate` when there is one; else of `sendDate`, plus 1 when the status
//! is not `SENT`. The `+ 1` is the status rank: a report that ends a message without a date
//! (`SENT` → `EXPIRED`, `ERROR` or `UNKNOWN`) would otherwise have the in-flight row's version,
//! and the tie would keep the row loaded first. A dated report is never earlier than the send,
//! so it orders after the in-flight row by its time. `qlara_version = "time"` drops the rank
//! (`coalesce(deliveryDate, sendDate)` alone, the GW reference job of `shared/bench/JOBS.md`).

use std::sync::Arc;

use arrow::array::{Array, StringArray, StringBuilder};
use chatlake_core::{Batch, Emitter, Error, Result, TransformContext};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::columns::{CanonicalColumns, Kept, raw_input, utc_opt, wall_clock_seconds};

/// The record type the Qlara source emits (see `chatlake-source-qlara`).
pub const RECORD_TYPE: &str = "qlara.message_history";

const STATUSES: [&str; 5] = ["delivered", "sent", "error", "expired", "unknown"];

/// How a Qlara row's `version` is derived (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QlaraVersion {
    /// Epoch ms of `deliveryDate`, else of `sendDate` plus 1 unless the status is `SENT`: a
    /// status reported later without a date (`SENT` → `EXPIRED`) replaces the in-flight row.
    #[default]
    StatusRank,
    /// Epoch ms of `coalesce(deliveryDate, sendDate)` (the GW reference job's rule): a status
    /// change without a date ties with the in-flight row, and the row loaded first stays.
    Time,
}

/// `2025-01-01T10:00:00+01:00` (also `Z`, fractions, a space for `T`) → µs since the epoch.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Some(micros) = parse_time_fast(s.as_bytes()) {
        return Some(micros);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .or_else(|_| chrono::DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%:z"))
        .or_else(|_| chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%z"))
        .ok()
        .map(|t| t.timestamp_micros())
}

/// The usual shapes, `2025-01-01T10:00:00[.fff](Z|+01:00)`, without chrono's format machinery
/// (two per row; chrono's RFC 3339 parser was 1.3 % of the Qlara job). `None`: let chrono try.
fn parse_time_fast(b: &[u8]) -> Option<i64> {
    let wall = wall_clock_seconds(b)?;
    let mut rest = &b[19..];
    let mut micros = 0i64;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let digits = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        for (i, c) in fraction[..digits].iter().enumerate() {
            if i < 6 {
                micros = micros * 10 + (c - b'0') as i64;
            }
        }
        micros *= 10i64.pow(6u32.saturating_sub(digits as u32));
        rest = &fraction[digits..];
    }
    let offset = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| -> Option<i64> {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| ((a - b'0') * 10 + (b - b'0')) as i64)
            };
            let minutes = two(*h1, *h2)? * 60 + two(*m1, *m2)?;
            if minutes >= 24 * 60 {
                return None;
            }
            if *sign == b'-' {
                -minutes * 60
            } else {
                minutes * 60
            }
        }
        _ => return None,
    };
    Some((wall - offset) * 1_000_000 + micros)
}

/// A canonical status: the lowercase provider status, or `unknown`.
pub fn status(s: &str) -> &'static str {
    let s = s.trim();
    STATUSES
        .iter()
        .find(|v| v.eq_ignore_ascii_case(s))
        .copied()
        .unwrap_or("unknown")
}

fn text(c: &StringArray, i: usize) -> Option<&str> {
    (!c.is_null(i)).then(|| c.value(i))
}

/// Maps one batch.
pub fn map(
    batch: Batch,
    out: &mut Emitter,
    cx: &TransformContext,
    version_rule: QlaraVersion,
    raw: bool,
) -> Result<()> {
    let data = &batch.data;
    let raw = raw_input(data, raw, cx)?;
    let col = |name: &str| -> Result<&StringArray> {
        data.column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| {
                Error::component(&cx.name, format!("Qlara batch has no Utf8 column `{name}`"))
            })
    };
    let id = col("messageId")?;
    let channel = col("channel")?;
    let sender = col("sender")?;
    let destination = col("destination")?;
    let body = col("body")?;
    let status_col = col("status")?;
    let send = col("sendDate")?;
    let delivery = col("deliveryDate")?;
    let n = data.num_rows();

    let mut keep = Vec::with_capacity(n);
    let mut sent_at = Vec::with_capacity(n);
    let mut delivered_at: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut version = Vec::with_capacity(n);
    let ranked = version_rule == QlaraVersion::StatusRank;
    let mut channels = StringBuilder::with_capacity(n, n * 4);
    let mut statuses = StringBuilder::with_capacity(n, n * 8);
    let mut lowered = String::new();
    for i in 0..n {
        let sent = text(send, i).and_then(parse_time);
        let delivered = match text(delivery, i).map(str::trim) {
            None | Some("") => Ok(None),
            Some(d) => parse_time(d).map(Some).ok_or(d),
        };
        let reason = match (text(id, i), sent, &delivered) {
            (None | Some(""), _, _) => Some("the row has no messageId".to_string()),
            (_, None, _) => Some(format!(
                "sendDate {:?} does not parse",
                text(send, i).unwrap_or("")
            )),
            (_, _, Err(d)) => Some(format!("deliveryDate {d:?} does not parse")),
            _ => None,
        };
        if let Some(reason) = reason {
            let raw = serde_json::json!({
                "messageId": text(id, i), "channel": text(channel, i), "sender": text(sender, i),
                "destination": text(destination, i), "body": text(body, i),
                "status": text(status_col, i), "sendDate": text(send, i),
                "deliveryDate": text(delivery, i),
            });
            cx.dead_letters
                .record(&cx.name, Some(&batch.window), &reason, raw, &cx.metrics)?;
            keep.push(false);
            continue;
        }
        keep.push(true);
        let sent = sent.unwrap_or_default();
        let delivered = delivered.unwrap_or_default();
        sent_at.push(sent);
        delivered_at.push(delivered);
        let c = text(channel, i).map_or("", str::trim);
        if c.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered.clear();
            lowered.push_str(c);
            lowered.make_ascii_lowercase();
            channels.append_value(&lowered);
        } else {
            channels.append_value(c);
        }
        let canonical_status = status(text(status_col, i).unwrap_or(""));
        statuses.append_value(canonical_status);
        version.push(match delivered {
            Some(d) => d / 1000,
            None => sent / 1000 + i64::from(ranked && canonical_status != "sent"),
        });
    }

    let kept = Kept::new(keep);
    let canonical = CanonicalColumns {
        provider: "qlara",
        stream: "message_history",
        message_id: kept.pass(id)?,
        conversation_id: None,
        conversation_name: None,
        sender_id: kept.pass(sender)?,
        sender_name: None,
        recipient: Some(kept.pass(destination)?),
        sent_at,
        text: kept.pass(body)?,
        is_bot: None,
        status: Some(Arc::new(statuses.finish())),
        channel: Some(Arc::new(channels.finish())),
        reply_to_id: None,
        attachments: None,
        delivered_at: Some(utc_opt(delivered_at)),
        version,
        raw: raw.map(|r| kept.pass(r)).transpose()?,
    };
    out.emit(batch.window.clone(), canonical.into_batch(&cx.run.run_id)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::context;
    use arrow::array::{Date32Array, TimestampMicrosecondArray};
    use arrow::array::{Int64Array, RecordBatch};
    use chatlake_core::schema;
    use chatlake_core::{Transform, Window, WindowRef};
    use chrono::{FixedOffset, TimeZone, Utc};

    const COLUMNS: [&str; 12] = [
        "messageId",
        "customerMessageId",
        "channel",
        "direction",
        "sender",
        "destination",
        "body",
        "status",
        "sendDate",
        "deliveryDate",
        "cost",
        "parts",
    ];

    fn raw_batch(rows: &[[&str; 12]]) -> RecordBatch {
        crate::testing::text_batch(&COLUMNS, RECORD_TYPE, true, rows)
    }

    fn window() -> WindowRef {
        Arc::new(Window {
            source: "sms".into(),
            stream: "message_history".into(),
            index: 0,
            start: None,
            end: None,
            utc_offset: FixedOffset::east_opt(3600).unwrap(),
            label: "w0".into(),
            key_name: None,
        })
    }

    fn us(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .unwrap()
            .timestamp_micros()
    }

    #[test]
    fn the_fast_time_path_agrees_with_chrono() {
        let chrono = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.timestamp_micros())
        };
        for s in [
            "2025-01-01T10:00:00+01:00",
            "2025-01-01T10:00:00Z",
            "2024-02-29T23:59:59-09:30",
            "2025-06-30T00:00:00.5Z",
            "2025-06-30T00:00:00.123456789+14:00",
            "1969-12-31T23:59:59.999999Z",
        ] {
            assert_eq!(parse_time_fast(s.as_bytes()), chrono(s), "{s}");
        }
        // Not the usual shape: left to chrono (which may still read it), never misread.
        for s in [
            "2025-13-01T00:00:00Z",
            "2025-01-01T10:00:00+0100",
            "2025-01-01T10:00:00",
            "2025-01-01T10:00:00.Z",
            "2025-01-01T10:00:00+24:00",
            "2025-01-01T10:00:00 +01:00",
        ] {
            assert_eq!(parse_time_fast(s.as_bytes()), None, "{s}");
        }
        assert_eq!(status(" Delivered "), "delivered");
        assert_eq!(status("weird"), "unknown");
    }

    #[test]
    fn times_statuses_and_channels() {
        assert_eq!(
            parse_time("2025-01-01T00:30:00+01:00"),
            Some(us(2024, 12, 31, 23, 30, 0))
        );
        assert_eq!(
            parse_time("2025-01-01T00:30:00Z"),
            Some(us(2025, 1, 1, 0, 30, 0))
        );
        assert_eq!(
            parse_time("2025-01-01T00:30:00"),
            None,
            "an offset is required"
        );
        assert_eq!(status("DELIVERED"), "delivered");
        assert_eq!(status("Expired"), "expired");
        assert_eq!(status("ACCEPTED"), "unknown");
    }

    #[test]
    fn maps_rows_and_dead_letters_bad_dates() {
        let dir = std::env::temp_dir().join(format!("chatlake-nq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cx = context(&dir);
        let mut t = crate::NormalizeTransform::default();
        let good = [
            "m1",
            "c1",
            "WHATSAPP",
            "OUTBOUND",
            "+393331234567",
            "+39333",
            "Ciao, \"tu\"\r\n👋",
            "DELIVERED",
            "2025-01-01T00:30:00+01:00",
            "2025-01-01T01:00:05+02:00",
            "0.05",
            "1",
        ];
        let in_flight = [
            "m2",
            "c2",
            " sms ",
            "OUTBOUND",
            "ACME",
            "+49",
            "x",
            "SENT",
            "2025-01-01T10:00:00Z",
            "",
            "0.04",
            "1",
        ];
        let mut bad_send = in_flight;
        bad_send[8] = "yesterday";
        let mut bad_delivery = in_flight;
        bad_delivery[9] = "later";
        let mut no_id = in_flight;
        no_id[0] = "";
        let mut out = Emitter::default();
        t.transform(
            Batch::new(
                window(),
                raw_batch(&[good, bad_send, in_flight, bad_delivery, no_id]),
            ),
            &mut out,
            &cx,
        )
        .unwrap();
        let b: Vec<Batch> = out.drain().collect();
        let b = &b[0].data;
        assert_eq!(b.schema(), schema::canonical());
        assert_eq!(b.num_rows(), 2);
        assert_eq!(cx.metrics.dead_letters(), 3);
        let s = |name: &str, i: usize| {
            let c = b
                .column_by_name(name)
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            (!c.is_null(i)).then(|| c.value(i).to_string())
        };
        assert_eq!(s("message_id", 0).as_deref(), Some("m1"));
        assert_eq!(s("provider", 0).as_deref(), Some("qlara"));
        assert_eq!(s("channel", 0).as_deref(), Some("whatsapp"));
        assert_eq!(s("channel", 1).as_deref(), Some("sms"));
        assert_eq!(s("status", 1).as_deref(), Some("sent"));
        assert_eq!(s("recipient", 1).as_deref(), Some("+49"));
        assert_eq!(s("sender_id", 1).as_deref(), Some("ACME"));
        assert_eq!(s("text", 0).as_deref(), Some("Ciao, \"tu\"\r\n👋"));
        let ts = |name: &str| {
            b.column_by_name(name)
                .unwrap()
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap()
                .clone()
        };
        assert_eq!(ts("sent_at").value(0), us(2024, 12, 31, 23, 30, 0));
        assert_eq!(ts("delivered_at").value(0), us(2024, 12, 31, 23, 0, 5));
        assert!(ts("delivered_at").is_null(1));
        let v = b
            .column_by_name("version")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(v.value(0), us(2024, 12, 31, 23, 0, 5) / 1000);
        assert_eq!(v.value(1), us(2025, 1, 1, 10, 0, 0) / 1000);
        let dates = b
            .column_by_name("sent_date")
            .unwrap()
            .as_any()
            .downcast_ref::<Date32Array>()
            .unwrap();
        assert_eq!(
            dates.value(0),
            us(2024, 12, 31, 0, 0, 0).div_euclid(86_400_000_000) as i32
        );
    }

    fn versions(rule: QlaraVersion, rows: &[[&str; 12]]) -> Vec<i64> {
        let dir = std::env::temp_dir().join(format!("chatlake-nqv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cx = context(&dir);
        let mut out = Emitter::default();
        map(
            Batch::new(window(), raw_batch(rows)),
            &mut out,
            &cx,
            rule,
            false,
        )
        .unwrap();
        let b: Vec<Batch> = out.drain().collect();
        b[0].data
            .column_by_name("version")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .values()
            .to_vec()
    }

    #[test]
    fn a_status_reported_without_a_date_outranks_the_in_flight_row() {
        let row = |status, delivery| {
            [
                "m1",
                "c1",
                "SMS",
                "OUTBOUND",
                "ACME",
                "+39",
                "x",
                status,
                "2025-01-01T10:00:00Z",
                delivery,
                "0.04",
                "1",
            ]
        };
        let sent = us(2025, 1, 1, 10, 0, 0) / 1000;
        let delivered = us(2025, 1, 1, 10, 0, 30) / 1000;
        let rows = [
            row("SENT", ""),
            row("EXPIRED", ""),
            row("ERROR", ""),
            row("UNKNOWN", ""),
            row("DELIVERED", "2025-01-01T10:00:30Z"),
            row("EXPIRED", "2025-01-01T10:00:30Z"),
        ];
        let ranked = versions(QlaraVersion::StatusRank, &rows);
        assert_eq!(
            ranked,
            [sent, sent + 1, sent + 1, sent + 1, delivered, delivered]
        );
        assert!(
            ranked[1..].iter().all(|v| *v > ranked[0]),
            "every report orders after the in-flight row"
        );
        // The reference job's rule: the undated report ties with the in-flight row.
        assert_eq!(
            versions(QlaraVersion::Time, &rows),
            [sent, sent, sent, sent, delivered, delivered]
        );
    }
}
