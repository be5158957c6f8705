//! The deterministic Qlara message dataset, and the rows a history export of a range holds: the
//! single source of truth for what the emulator serves and what end-to-end tests expect.
//!
//! Messages are generated per UTC hour from an RNG seeded with `(seed, hour)`, as for LINE WORKS,
//! so any range is reproducible whatever its bounds.
//!
//! **What an export holds.** An export of `[start, end]` shows every message that was sent, or
//! whose delivery report arrived, in the range, *as it stood at `end`*: a message sent before
//! `end` whose report came later is still `SENT` with no `deliveryDate` (the in-flight version).
//! So consecutive windows hold a message twice when its report crosses their boundary (in flight
//! in the first, final in the second), and keeping the latest version of each message over the
//! windows gives exactly the rows of one export over the whole range ([`export_rows`]).
//!
//! **Selected by send date** ([`Selection::SentInRange`], the `qlara.export_by=send` tunable):
//! what the real export is more likely to do (seed 003 filters by the range, and nothing says a
//! report brings an older message into a later export). An export holds the messages *sent* in
//! the range, as they stand at `end`; a report arriving after `end` never shows in a later
//! window's export, only in an export that covers the message again (a source's `lookback`). A
//! message that ends `ERROR` or `EXPIRED` without a delivery date is also `SENT` until its
//! report (the status changes with no date), so a later export replaces the row only if the
//! canonical `version` ranks the final status above the in-flight one.

use chrono::{DateTime, FixedOffset, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Messages per hour at scale 1.0 (about 240 a day).
const MESSAGES_PER_HOUR: f64 = 10.0;
/// The longest delivery latency the generator draws, in seconds; generation starts this much
/// before a range so that late reports inside it are found.
const MAX_LATENCY_S: i64 = 12 * 3600;

/// The CSV header of an export (contract E5).
pub const HEADER: [&str; 12] = [
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

/// One row of an export, every field as the CSV writes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Row {
    pub message_id: String,
    pub customer_message_id: String,
    /// `SMS`, `RCS` or `WHATSAPP`.
    pub channel: String,
    pub direction: String,
    pub sender: String,
    pub destination: String,
    pub body: String,
    /// `DELIVERED`, `SENT`, `ERROR`, `EXPIRED` or `UNKNOWN`.
    pub status: String,
    /// ISO 8601 with an offset (`+01:00`, `+02:00` or `Z`).
    pub send_date: String,
    /// ISO 8601 with an offset, or empty.
    pub delivery_date: String,
    pub cost: String,
    pub parts: String,
    /// `send_date` as a UTC instant (for tests).
    pub sent_at: DateTime<Utc>,
    /// `delivery_date` as a UTC instant (for tests).
    pub delivered_at: Option<DateTime<Utc>>,
}

impl Row {
    /// The fields in [`HEADER`] order.
    pub fn fields(&self) -> [&str; 12] {
        [
            &self.message_id,
            &self.customer_message_id,
            &self.channel,
            &self.direction,
            &self.sender,
            &self.destination,
            &self.body,
            &self.status,
            &self.send_date,
            &self.delivery_date,
            &self.cost,
            &self.parts,
        ]
    }

    /// The `version` normalize gives the row (its default `qlara_version = "status_rank"`):
    /// epoch ms of `deliveryDate`, else of `sendDate` plus 1 unless the status is `SENT`.
    pub fn version_ms(&self) -> i64 {
        match self.delivered_at {
            Some(d) => d.timestamp_millis(),
            None => self.sent_at.timestamp_millis() + i64::from(self.status != "SENT"),
        }
    }
}

/// A message with its final state.
#[derive(Clone, Debug)]
struct Message {
    hour: i64,
    index: usize,
    at: i64,
    channel: usize,
    sender: usize,
    destination: u64,
    body: usize,
    status: usize,
    send_offset: usize,
    /// When the delivery report arrives, if one does.
    delivered: Option<i64>,
    delivery_offset: usize,
    /// When the final status is known: the report's time, or for a status without one (`ERROR`,
    /// `EXPIRED`, `UNKNOWN` with no `deliveryDate`) when it would have come.
    settled: i64,
}

/// Which messages a history export holds (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Selection {
    /// Messages sent in the range, and older ones whose report arrived in it (the default).
    #[default]
    SentOrReportedInRange,
    /// Only messages sent in the range; an undated final status is `SENT` until it settles.
    SentInRange,
}

const CHANNELS: [&str; 3] = ["SMS", "RCS", "WHATSAPP"];
const SENDERS: [[&str; 2]; 3] = [
    ["ACME", "+390212345678"],
    ["acme_rbm_agent", "acme_rbm_agent"],
    ["+393331234567", "+4915112345678"],
];
const COST: [&str; 3] = ["0.0450", "0.0300", "0.0520"];
const STATUSES: [&str; 5] = ["DELIVERED", "SENT", "ERROR", "EXPIRED", "UNKNOWN"];
const OFFSETS: [(&str, i32); 3] = [("+01:00", 3600), ("+02:00", 7200), ("Z", 0)];
/// Italian bodies that exercise CSV quoting and Unicode.
const BODIES: [&str; 12] = [
    "Il tuo codice di verifica è 482913.",
    "Gentile cliente, la consegna è prevista per domani, tra le 9:00 e le 13:00.",
    "Promo \"Estate\": sconto del 20%, solo oggi!",
    "Ciao! 👋 Il tuo ordine è stato spedito.",
    "Appuntamento confermato:\nlunedì alle 10:30\nVia Roma 1, Milano",
    "Riga uno\r\nRiga due",
    "  spazi iniziali e finali  ",
    "Grazie per averci scelto 🇮🇹🍕",
    "Fattura n. 2025/001, importo € 1.234,56",
    "OK",
    "\"citazione\" all'inizio",
    "Ricarica effettuata: 10,00 €. Saldo: 15,50 €.",
];

fn mix(seed: u64, hour: i64) -> u64 {
    splitmix64(seed ^ splitmix64(hour as u64 ^ 0x716c_6172_6167_7721))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hour_messages(seed: u64, scale: f64, hour: i64, out: &mut Vec<Message>) {
    let scale = if scale.is_finite() {
        scale.max(0.0)
    } else {
        0.0
    };
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, hour));
    let expected = scale * MESSAGES_PER_HOUR * rng.random_range(0.8..1.2);
    let mut count = expected.floor() as usize;
    if rng.random::<f64>() < expected.fract() {
        count += 1;
    }
    let mut seconds: Vec<i64> = (0..count).map(|_| rng.random_range(0..3600)).collect();
    seconds.sort_unstable();
    for (index, second) in seconds.into_iter().enumerate() {
        let at = hour * 3600 + second;
        let channel = match rng.random_range(0..100) {
            0..55 => 0,
            55..70 => 1,
            _ => 2,
        };
        let status = match rng.random_range(0..100) {
            0..84 => 0,
            84..90 => 1,
            90..95 => 2,
            95..98 => 3,
            _ => 4,
        };
        let latency = match rng.random_range(0..100) {
            0..80 => rng.random_range(1..90),
            80..95 => rng.random_range(60..3600),
            _ => rng.random_range(3600..MAX_LATENCY_S),
        };
        let reported = status == 0 || (matches!(status, 2 | 3) && rng.random_bool(0.5));
        out.push(Message {
            hour,
            index,
            at,
            channel,
            sender: rng.random_range(0..2),
            destination: rng.random_range(0..10_000_000_000u64),
            body: rng.random_range(0..BODIES.len()),
            status,
            send_offset: rng.random_range(0..OFFSETS.len()),
            delivered: reported.then_some(at + latency),
            delivery_offset: rng.random_range(0..OFFSETS.len()),
            settled: at + latency,
        });
    }
}

fn iso(secs: i64, offset: usize) -> String {
    let (suffix, east) = OFFSETS[offset];
    let Some(tz) = FixedOffset::east_opt(east) else {
        return String::new();
    };
    let t = DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .with_timezone(&tz);
    format!("{}{suffix}", t.format("%Y-%m-%dT%H:%M:%S"))
}

impl Message {
    /// The row as an export taken at `as_of` shows it; with `undated_late`, a final status
    /// without a date is also in flight until it settles.
    fn row(&self, as_of: i64, undated_late: bool) -> Row {
        let reported = self.delivered.filter(|d| *d <= as_of);
        let in_flight = (self.delivered.is_some() && reported.is_none())
            || (undated_late && self.status != 1 && self.settled > as_of);
        let channel = CHANNELS[self.channel];
        let body = BODIES[self.body];
        let parts = if self.channel == 0 {
            let per = if body.is_ascii() { 153 } else { 67 };
            body.chars().count().div_ceil(per).max(1)
        } else {
            1
        };
        let id = splitmix64((self.hour as u64).wrapping_mul(1_000_003) ^ self.index as u64);
        let n = self.hour * 1000 + self.index as i64;
        let destination = if self.destination.is_multiple_of(3) {
            format!("+49{:010}", self.destination)
        } else {
            format!("+39{:010}", self.destination)
        };
        Row {
            message_id: format!(
                "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                id >> 32,
                (id >> 16) & 0xffff,
                id & 0xfff,
                (n as u64) & 0xfff,
                (n as u64) & 0xffff_ffff_ffff
            ),
            customer_message_id: format!("cust-{n}"),
            channel: channel.to_string(),
            direction: "OUTBOUND".to_string(),
            sender: SENDERS[self.channel][self.sender].to_string(),
            destination,
            body: body.to_string(),
            status: if in_flight {
                "SENT"
            } else {
                STATUSES[self.status]
            }
            .to_string(),
            send_date: iso(self.at, self.send_offset),
            delivery_date: reported.map_or_else(String::new, |d| iso(d, self.delivery_offset)),
            cost: COST[self.channel].to_string(),
            parts: parts.to_string(),
            sent_at: DateTime::from_timestamp(self.at, 0).unwrap_or_default(),
            delivered_at: reported.and_then(|d| DateTime::from_timestamp(d, 0)),
        }
    }
}

/// Walks the hours of an export and yields its rows an hour at a time, so the server streams a
/// window of any size with the memory of one hour.
pub struct ExportRows {
    seed: u64,
    scale: f64,
    start: i64,
    end: i64,
    sender: Option<String>,
    recipient: Option<String>,
    next_hour: i64,
    last_hour: i64,
    buf: Vec<Message>,
    selection: Selection,
}

impl ExportRows {
    /// The rows of a history export of `start ..= end` (Unix seconds), optionally filtered by
    /// exact `sender` and `destination`. See the module docs for what "as of end" means.
    pub fn new(
        seed: u64,
        scale: f64,
        start: i64,
        end: i64,
        sender: Option<String>,
        recipient: Option<String>,
    ) -> ExportRows {
        ExportRows {
            seed,
            scale,
            start,
            end,
            sender,
            recipient,
            next_hour: (start - MAX_LATENCY_S).div_euclid(3600),
            last_hour: if end < start {
                i64::MIN
            } else {
                end.div_euclid(3600)
            },
            buf: Vec::new(),
            selection: Selection::default(),
        }
    }

    /// Which messages the export holds (default [`Selection::SentOrReportedInRange`]).
    pub fn selecting(mut self, selection: Selection) -> ExportRows {
        self.selection = selection;
        self
    }

    /// Appends the rows of the next hour (possibly none) to `out`; `false` once every hour is
    /// done.
    pub fn next_hour(&mut self, out: &mut Vec<Row>) -> bool {
        if self.next_hour > self.last_hour {
            return false;
        }
        let hour = self.next_hour;
        self.next_hour += 1;
        self.buf.clear();
        hour_messages(self.seed, self.scale, hour, &mut self.buf);
        let (start, end) = (self.start, self.end);
        for m in &self.buf {
            let sent_in = (start..=end).contains(&m.at);
            let by_send = self.selection == Selection::SentInRange;
            let reported_in = !by_send && m.delivered.is_some_and(|d| (start..=end).contains(&d));
            if !(sent_in || (reported_in && m.at <= end)) {
                continue;
            }
            let row = m.row(end, by_send);
            if self.sender.as_ref().is_some_and(|s| *s != row.sender)
                || self
                    .recipient
                    .as_ref()
                    .is_some_and(|r| *r != row.destination)
            {
                continue;
            }
            out.push(row);
        }
        true
    }
}

/// Every row of a history export of `start ..= end` (Unix seconds), in send order; see
/// [`ExportRows`].
pub fn export_rows_secs(
    seed: u64,
    scale: f64,
    start: i64,
    end: i64,
    sender: Option<&str>,
    recipient: Option<&str>,
) -> Vec<Row> {
    let mut rows = ExportRows::new(
        seed,
        scale,
        start,
        end,
        sender.map(str::to_owned),
        recipient.map(str::to_owned),
    );
    let mut out = Vec::new();
    while rows.next_hour(&mut out) {}
    out
}

/// [`export_rows_secs`] with chrono times: what one export of the range holds, and so also what
/// keeping the latest version of each message over consecutive windows of the range yields.
pub fn export_rows(seed: u64, scale: f64, start: DateTime<Utc>, end: DateTime<Utc>) -> Vec<Row> {
    export_rows_secs(seed, scale, start.timestamp(), end.timestamp(), None, None)
}

/// What one export of `start ..= end` holds under `selection`.
pub fn export_rows_selecting(
    seed: u64,
    scale: f64,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    selection: Selection,
) -> Vec<Row> {
    let mut rows = ExportRows::new(seed, scale, start.timestamp(), end.timestamp(), None, None)
        .selecting(selection);
    let mut out = Vec::new();
    while rows.next_hour(&mut out) {}
    out
}

/// Appends one CSV record (RFC 4180: quoted when needed, LF record end).
pub fn write_record(out: &mut Vec<u8>, fields: &[&str]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if f.contains([',', '"', '\r', '\n']) || f.starts_with(' ') || f.ends_with(' ') {
            out.push(b'"');
            out.extend_from_slice(f.replace('"', "\"\"").as_bytes());
            out.push(b'"');
        } else {
            out.extend_from_slice(f.as_bytes());
        }
    }
    out.push(b'\n');
}

/// The whole CSV file of an export.
pub fn export_csv(rows: &[Row]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + rows.len() * 200);
    write_record(&mut out, &HEADER);
    for r in rows {
        write_record(&mut out, &r.fields());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn t(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp()
    }

    #[test]
    fn deterministic_and_about_240_a_day() {
        let (a, b) = (t("2025-01-01T00:00:00Z"), t("2025-01-10T23:59:59Z"));
        let x = export_rows_secs(42, 1.0, a, b, None, None);
        assert_eq!(x, export_rows_secs(42, 1.0, a, b, None, None));
        let per_day = x.len() as f64 / 10.0;
        assert!((200.0..290.0).contains(&per_day), "{per_day}");
        let ids: std::collections::HashSet<_> = x.iter().map(|r| &r.message_id).collect();
        assert_eq!(ids.len(), x.len(), "ids are unique");
        assert!(x.iter().any(|r| r.delivery_date.is_empty()));
        assert!(x.iter().any(|r| r.send_date.ends_with('Z')));
        assert!(x.iter().any(|r| r.body.contains('\n')));
    }

    #[test]
    fn latest_over_windows_is_one_export_of_the_whole_range() {
        let (a, b) = (t("2025-01-01T00:00:00Z"), t("2025-01-06T23:59:59Z"));
        let whole = export_rows_secs(7, 1.0, a, b, None, None);
        let mut latest: HashMap<String, Row> = HashMap::new();
        let mut in_flight = 0;
        let mut from = a;
        while from <= b {
            let to = (from + 86_400 - 1).min(b);
            for r in export_rows_secs(7, 1.0, from, to, None, None) {
                match latest.get(&r.message_id) {
                    Some(old) if old.version_ms() >= r.version_ms() => {}
                    Some(_) => {
                        in_flight += 1;
                        latest.insert(r.message_id.clone(), r);
                    }
                    None => {
                        latest.insert(r.message_id.clone(), r);
                    }
                }
            }
            from = to + 1;
        }
        assert!(in_flight > 0, "some reports cross a window boundary");
        let mut got: Vec<Row> = latest.into_values().collect();
        got.sort_by_key(|r| (r.sent_at, r.message_id.clone()));
        let mut want = whole;
        want.sort_by_key(|r| (r.sent_at, r.message_id.clone()));
        assert_eq!(got, want);
    }

    #[test]
    fn filters_and_csv() {
        let (a, b) = (t("2025-01-01T00:00:00Z"), t("2025-01-01T23:59:59Z"));
        let all = export_rows_secs(1, 1.0, a, b, None, None);
        let acme = export_rows_secs(1, 1.0, a, b, Some("ACME"), None);
        assert!(!acme.is_empty() && acme.len() < all.len());
        assert!(acme.iter().all(|r| r.sender == "ACME"));
        let csv = export_csv(&all[..3]);
        let text = String::from_utf8(csv).unwrap();
        assert!(text.starts_with("messageId,customerMessageId,channel,"));
    }
}
