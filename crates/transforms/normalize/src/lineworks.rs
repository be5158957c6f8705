//! LINE WORKS message-contents rows → canonical messages.
//!
//! The file carries no message id, so one is derived: the MD5 of the row's five fields and its
//! occurrence number among identical rows of the same window (download). A row repeated in an
//! overlapping window gets the same id (dedupe drops it); two genuinely identical messages in one
//! window get different ids (both survive). This is the identity rule of the reference jobs.

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, StringArray, StringBuilder};
use chatlake_core::{Batch, Emitter, Error, Result, TransformContext, WindowRef};
use chatlake_fingerprint::FingerprintSet;

use crate::columns::{CanonicalColumns, Kept, raw_input, wall_clock_seconds};
use arrow::buffer::{Buffer, OffsetBuffer};
use chrono::FixedOffset;
use hashbrown::HashMap;
use md5::Digest;
use md5_many::Md5Many;

/// The record type the LINE WORKS source emits (see `chatlake-source-lineworks`).
pub const RECORD_TYPE: &str = "lineworks.message_contents";
const COLUMNS: [&str; 5] = ["date", "sender", "recipient", "room_id", "message"];
const SEP: u8 = 0x1F;
const HEX: &[u8; 16] = b"0123456789abcdef";

/// Holds the per-window occurrence counters.
#[derive(Debug, Default)]
pub struct LineworksMapper {
    occurrences: HashMap<String, Occurrences>,
}

/// MD5 of a whole batch's identities at once, 8 or 16 per SIMD instruction (AVX2, AVX-512): one
/// MD5 after another was a fifth of the LINE WORKS job's CPU time. `md5-many` is a young crate
/// and picks its kernel by the CPU it runs on, so once per process it hashes messages of every
/// length from 0 to 300 bytes, in batches of every shape, and is used only if it agrees with
/// `md-5` on all of them; otherwise ids are computed one by one with `md-5` (and it says so).
fn batch_md5() -> Option<Md5Many> {
    static CHECKED: std::sync::LazyLock<Option<Md5Many>> = std::sync::LazyLock::new(|| {
        let engine = Md5Many::new();
        let messages: Vec<Vec<u8>> = (0..=300usize)
            .map(|len| (0..len).map(|i| (i * 31 + len) as u8).collect())
            .collect();
        let agrees = [1usize, 7, 8, 9, 16, 17, 48, 301].iter().all(|&size| {
            messages.chunks(size).all(|chunk| {
                let slices: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
                let mut digests = vec![[0u8; 16]; slices.len()];
                engine.hash_many(&slices, &mut digests);
                slices
                    .iter()
                    .zip(&digests)
                    .all(|(m, d)| <[u8; 16]>::from(md5::Md5::digest(m)) == *d)
            })
        });
        if !agrees {
            tracing::warn!(
                "batched MD5 disagrees with md-5 on this CPU; LINE WORKS ids are computed one by one"
            );
        }
        agrees.then_some(engine)
    });
    *CHECKED
}

/// How often each row (its five fields) has occurred in one window so far. Almost every row
/// occurs once, so a 64-bit fingerprint set (10–15 bytes per row, see
/// [`FingerprintSet`]) says "seen before" and only repeats get a counter. This state lives
/// as long as its window, so it is what a window's size costs here: 1.3M rows ≈ 17 MB, where a
/// map of 128-bit hashes to counts took about 60 MB.
///
/// Two different rows of one window sharing a fingerprint (probability about n²/2⁶⁵ for n rows:
/// 5·10⁻⁸ at 1.3M) would give the later one occurrence 2, and so an id that differs from its copy
/// in an overlapping window: that row would be loaded twice.
#[derive(Debug, Default)]
struct Occurrences {
    seen: FingerprintSet,
    repeats: HashMap<u64, u32>,
}

impl Occurrences {
    /// The occurrence numbers (1, 2, ...) of rows with these fingerprints, in order.
    fn next_many(&mut self, fps: &[u64]) -> Vec<u32> {
        let mut numbers = Vec::with_capacity(fps.len());
        self.seen
            .insert_many(fps, |new| numbers.push(if new { 1 } else { 0 }));
        for (number, fp) in numbers.iter_mut().zip(fps) {
            if *number == 0 {
                let count = self.repeats.entry(*fp).or_insert(1);
                *count += 1;
                *number = *count;
            }
        }
        numbers
    }
}

impl LineworksMapper {
    pub fn forget(&mut self, window: &WindowRef) {
        self.occurrences.remove(&window.key());
    }

    pub fn map(
        &mut self,
        batch: Batch,
        out: &mut Emitter,
        cx: &TransformContext,
        raw: bool,
    ) -> Result<()> {
        let data = &batch.data;
        let raw = raw_input(data, raw, cx)?;
        let col = |name: &str| -> Result<&StringArray> {
            data.column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| {
                    Error::component(
                        &cx.name,
                        format!("LINE WORKS batch has no Utf8 column `{name}`"),
                    )
                })
        };
        let [date, sender, recipient, room, message] = COLUMNS.map(col);
        let (date, sender, recipient, room, message) =
            (date?, sender?, recipient?, room?, message?);
        let n = data.num_rows();
        let offset = batch.window.utc_offset;
        let occurrences = self.occurrences.entry(batch.window.key()).or_default();

        let mut keep = Vec::with_capacity(n);
        let mut sent_at = Vec::with_capacity(n);
        let mut sender_id = StringBuilder::with_capacity(n, n * 24);
        let mut sender_name = StringBuilder::with_capacity(n, n * 16);
        let mut is_bot = Vec::with_capacity(n);
        // Every kept row's identity `date␟sender␟recipient␟room␟message␟occ`, one after another.
        let mut identities = Vec::with_capacity(n * 160);
        let mut identity_ends = Vec::with_capacity(n);
        let mut fingerprints = Vec::with_capacity(n);

        for i in 0..n {
            let d = date.value(i);
            let Some(micros) = parse_local_time(d, offset) else {
                let raw = serde_json::json!({
                    "date": d, "sender": sender.value(i), "recipient": recipient.value(i),
                    "room_id": room.value(i), "message": message.value(i),
                });
                cx.dead_letters.record(
                    &cx.name,
                    Some(&batch.window),
                    &format!("time {d:?} does not parse"),
                    raw,
                    &cx.metrics,
                )?;
                keep.push(false);
                continue;
            };
            keep.push(true);
            sent_at.push(micros);

            let s = sender.value(i);
            let (bot, id, name) = split_sender(s);
            is_bot.push(bot);
            sender_id.append_option(id);
            sender_name.append_value(name);

            let start = identities.len();
            for (j, field) in [d, s, recipient.value(i), room.value(i), message.value(i)]
                .iter()
                .enumerate()
            {
                if j > 0 {
                    identities.push(SEP);
                }
                identities.extend_from_slice(field.as_bytes());
            }
            fingerprints.push(xxhash_rust::xxh3::xxh3_64(&identities[start..]));
            // Occurrence 1 for now: nearly every row is the first of its kind in its window.
            identities.extend_from_slice(&[SEP, b'1']);
            identity_ends.push(identities.len());
        }
        // Occurrence number of each row among identical rows of its window.
        let numbers = occurrences.next_many(&fingerprints);
        if numbers.iter().any(|&n| n != 1) {
            identities = with_occurrences(&identities, &mut identity_ends, &numbers);
        }
        let ids = message_ids(&identities, &identity_ends);

        // Text columns pass through without a copy unless rows were dead-lettered.
        let kept = Kept::new(keep);
        let version = sent_at.iter().map(|us| us / 1000).collect();
        let canonical = CanonicalColumns {
            provider: "lineworks",
            stream: "message_contents",
            message_id: Arc::new(ids),
            conversation_id: Some(kept.pass(room)?),
            conversation_name: None,
            sender_id: Arc::new(sender_id.finish()),
            sender_name: Some(Arc::new(sender_name.finish())),
            recipient: Some(kept.pass(recipient)?),
            sent_at,
            text: kept.pass(message)?,
            is_bot: Some(Arc::new(BooleanArray::from(is_bot))),
            status: None,
            channel: None,
            reply_to_id: None,
            attachments: None,
            delivered_at: None,
            version,
            raw: raw.map(|r| kept.pass(r)).transpose()?,
        };
        out.emit(batch.window.clone(), canonical.into_batch(&cx.run.run_id)?);
        Ok(())
    }
}

/// The lowercase hex MD5 of each identity: `ends[i]` is where identity `i` ends in
/// `identities` (and `i + 1` starts).
fn message_ids(identities: &[u8], ends: &[usize]) -> StringArray {
    message_ids_with(batch_md5(), identities, ends)
}

/// [`message_ids`] with `engine`, or one by one with `md-5` without one.
fn message_ids_with(engine: Option<Md5Many>, identities: &[u8], ends: &[usize]) -> StringArray {
    let mut slices = Vec::with_capacity(ends.len());
    let mut start = 0;
    for &end in ends {
        slices.push(&identities[start..end]);
        start = end;
    }
    let mut digests = vec![[0u8; 16]; slices.len()];
    match engine {
        Some(engine) => engine.hash_many(&slices, &mut digests),
        None => {
            for (digest, identity) in digests.iter_mut().zip(&slices) {
                *digest = md5::Md5::digest(identity).into();
            }
        }
    }
    let mut hex = Vec::with_capacity(digests.len() * 32);
    for digest in &digests {
        for b in digest {
            hex.push(HEX[(b >> 4) as usize]);
            hex.push(HEX[(b & 15) as usize]);
        }
    }
    let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(32, digests.len()));
    StringArray::try_new(offsets, Buffer::from_vec(hex), None)
        .expect("32 hex digits per id are valid UTF-8")
}

/// `identities`, each ending in occurrence 1, rewritten with the occurrence `numbers`; `ends`
/// is updated to the new positions.
fn with_occurrences(identities: &[u8], ends: &mut [usize], numbers: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(identities.len() + numbers.len());
    let mut start = 0;
    for (end, &number) in ends.iter_mut().zip(numbers) {
        // Everything up to the placeholder digit `1`.
        out.extend_from_slice(&identities[start..*end - 1]);
        let mut itoa = [0u8; 10];
        out.extend_from_slice(decimal(number, &mut itoa));
        start = *end;
        *end = out.len();
    }
    out
}

fn decimal(mut v: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}

/// Splits `[Bot]Name(email)` by the reference rule `^(?:\[Bot\])?(.*)\(([^()]*)\)$`: the email
/// is the text in the last parentheses; a value that does not match keeps its whole text as the
/// name and has no id.
pub fn split_sender(value: &str) -> (bool, Option<&str>, &str) {
    let bot = value.starts_with("[Bot]");
    let rest = if bot { &value[5..] } else { value };
    if let Some(inner) = rest.strip_suffix(')')
        && let Some(open) = inner.rfind('(')
    {
        let email = &inner[open + 1..];
        if !email.contains(')') {
            return (bot, Some(email), &inner[..open]);
        }
    }
    (bot, None, value)
}

/// `yyyy-MM-dd HH:mm:ss` in `offset` (the file's local time), or ISO 8601 with its own offset,
/// → microseconds since the epoch, UTC.
pub fn parse_local_time(s: &str, offset: FixedOffset) -> Option<i64> {
    if s.len() == 19 {
        let secs = wall_clock_seconds(s.as_bytes())? - offset.local_minus_utc() as i64;
        return Some(secs * 1_000_000);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .or_else(|_| chrono::DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%:z"))
        .ok()
        .map(|t| t.timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::context;
    use arrow::array::RecordBatch;
    use arrow::array::TimestampMicrosecondArray;
    use chatlake_core::metrics::ComponentMetrics;
    use chatlake_core::schema;
    use chatlake_core::{Transform, Window};
    use chrono::TimeZone;

    fn jst() -> FixedOffset {
        FixedOffset::east_opt(9 * 3600).unwrap()
    }

    #[test]
    fn local_time_becomes_utc() {
        let us = parse_local_time("2025-01-01 08:59:59", jst()).unwrap();
        assert_eq!(
            us,
            chrono::Utc
                .with_ymd_and_hms(2024, 12, 31, 23, 59, 59)
                .unwrap()
                .timestamp_micros()
        );
        let iso = parse_local_time("2025-01-01T09:00:00+09:00", jst()).unwrap();
        assert_eq!(
            iso,
            chrono::Utc
                .with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
                .unwrap()
                .timestamp_micros()
        );
        assert!(parse_local_time("2025-13-01 00:00:00", jst()).is_none());
        assert!(parse_local_time("yesterday", jst()).is_none());
    }

    #[test]
    fn sender_split_follows_the_reference_rule() {
        assert_eq!(
            split_sender("太郎(taro@x.jp)"),
            (false, Some("taro@x.jp"), "太郎")
        );
        assert_eq!(
            split_sender("[Bot]Notifier(bot@x.jp)"),
            (true, Some("bot@x.jp"), "Notifier")
        );
        assert_eq!(
            split_sender("Chris Park (Sales)(u1@x.jp)"),
            (false, Some("u1@x.jp"), "Chris Park (Sales)")
        );
        assert_eq!(split_sender("no email"), (false, None, "no email"));
        assert_eq!(split_sender("odd(a)b)"), (false, None, "odd(a)b)"));
    }

    fn raw_batch(rows: &[[&str; 5]]) -> RecordBatch {
        crate::testing::text_batch(&COLUMNS, RECORD_TYPE, false, rows)
    }

    fn window(index: u32) -> WindowRef {
        Arc::new(Window {
            source: "lw".into(),
            stream: "message_contents".into(),
            index,
            start: None,
            end: None,
            utc_offset: jst(),
            label: format!("w{index}"),
            key_name: None,
        })
    }

    #[test]
    fn maps_rows_and_derives_ids_that_keep_identical_messages_apart() {
        let dir = tempfile_dir();
        let cx = context(&dir);
        let mut t = crate::NormalizeTransform::default();
        let row = [
            "2025-01-01 09:00:00",
            "[Bot]Bell(b@x)",
            "太郎(t@x)",
            "42",
            "hi, \"there\"\r\n👨‍👩‍👧",
        ];
        let mut out = Emitter::default();
        t.transform(
            Batch::new(
                window(0),
                raw_batch(&[row, row, ["bad date", "a(b)", "c", "1", "x"]]),
            ),
            &mut out,
            &cx,
        )
        .unwrap();
        let batches: Vec<Batch> = out.drain().collect();
        assert_eq!(batches.len(), 1);
        let b = &batches[0].data;
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.schema(), schema::canonical());
        let ids = b
            .column_by_name("message_id")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_ne!(
            ids.value(0),
            ids.value(1),
            "identical messages in one window stay apart"
        );
        let text = b
            .column_by_name("text")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(text.value(0), "hi, \"there\"\r\n👨‍👩‍👧");
        let sent = b
            .column_by_name("sent_at")
            .unwrap()
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(
            sent.value(0),
            chrono::Utc
                .with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
                .unwrap()
                .timestamp_micros()
        );
        let bots = b
            .column_by_name("is_bot")
            .unwrap()
            .as_any()
            .downcast_ref::<BooleanArray>()
            .unwrap();
        assert!(bots.value(0));
        assert_eq!(cx.metrics.dead_letters(), 1);

        // The same row in an overlapping window (another download) gets the same first id.
        let mut out2 = Emitter::default();
        t.transform(Batch::new(window(1), raw_batch(&[row])), &mut out2, &cx)
            .unwrap();
        let b2: Vec<Batch> = out2.drain().collect();
        let ids2 = b2[0]
            .data
            .column_by_name("message_id")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(ids2.value(0), ids.value(0));

        // The id is the reference MD5 of the fields and the occurrence number.
        let mut key = Vec::new();
        for (j, f) in row.iter().enumerate() {
            if j > 0 {
                key.push(SEP);
            }
            key.extend_from_slice(f.as_bytes());
        }
        key.extend_from_slice(&[SEP, b'1']);
        use md5::Digest;
        assert_eq!(ids.value(0), format!("{:x}", md5::Md5::digest(&key)));
    }

    /// Occurrence numbers count on across the batches of a window, past one digit, with other
    /// rows in between, and start again in another window.
    #[test]
    fn occurrence_numbers_count_across_batches_and_past_nine() {
        use md5::Digest;
        let dir = tempfile_dir();
        let cx = context(&dir);
        let mut t = crate::NormalizeTransform::default();
        let row = ["2025-01-01 09:00:00", "a(a@x)", "b(b@x)", "7", "same"];
        let other = ["2025-01-01 09:00:01", "a(a@x)", "b(b@x)", "7", "other"];
        let id_of = |fields: [&str; 5], occ: u32| {
            let key = format!("{}\u{1f}{occ}", fields.join("\u{1f}"));
            format!("{:x}", md5::Md5::digest(key.as_bytes()))
        };
        let ids = |t: &mut crate::NormalizeTransform, w: u32, rows: &[[&str; 5]]| {
            let mut out = Emitter::default();
            t.transform(Batch::new(window(w), raw_batch(rows)), &mut out, &cx)
                .unwrap();
            let batches: Vec<Batch> = out.drain().collect();
            let ids = batches[0].data.column_by_name("message_id").unwrap();
            let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
            ids.iter()
                .map(|v| v.unwrap().to_string())
                .collect::<Vec<_>>()
        };
        let first = ids(&mut t, 0, &[row, other, row, row, row, row, row, row]);
        let second = ids(&mut t, 0, &[row, row, row, row, other]);
        let expected: Vec<String> = [(row, 1), (other, 1), (row, 2), (row, 3), (row, 4)]
            .into_iter()
            .chain([(row, 5), (row, 6), (row, 7)])
            .chain([(row, 8), (row, 9), (row, 10), (row, 11), (other, 2)])
            .map(|(fields, occ)| id_of(fields, occ))
            .collect();
        assert_eq!([first, second].concat(), expected);
        assert_eq!(ids(&mut t, 1, &[row]), vec![id_of(row, 1)]);
    }

    /// The batched MD5 (SIMD lanes, lengths mixed within a batch, batches of every size) gives
    /// the reference digest of every identity.
    #[test]
    fn batched_ids_are_the_reference_md5_of_each_identity() {
        assert!(
            batch_md5().is_some(),
            "the batched MD5 passes its check on this CPU"
        );
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for batch in [0usize, 1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 47, 49, 100, 1000] {
            let mut identities = Vec::new();
            let mut ends = Vec::new();
            for row in 0..batch {
                // Lengths around every block boundary (55/56 and 64 bytes decide the padding),
                // skewed batches, and long messages.
                let len = match next() % 4 {
                    0 => (next() % 130) as usize,
                    1 => 50 + (next() % 20) as usize + 64 * (next() % 4) as usize,
                    2 => 140 + row % 120,
                    _ => (next() % 3000) as usize,
                };
                identities.extend((0..len).map(|_| (next() & 0xff) as u8));
                ends.push(identities.len());
            }
            let ids = message_ids(&identities, &ends);
            assert_eq!(ids.len(), batch);
            // The one-by-one path (a CPU where the batched MD5 fails its check) gives the same.
            assert_eq!(message_ids_with(None, &identities, &ends), ids);
            let mut start = 0;
            for (i, &end) in ends.iter().enumerate() {
                let expected = format!("{:x}", md5::Md5::digest(&identities[start..end]));
                assert_eq!(
                    ids.value(i),
                    expected,
                    "row {i} of {batch}, {} bytes",
                    end - start
                );
                start = end;
            }
        }
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "chatlake-normalize-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[allow(dead_code)]
    fn _metrics_is_default(_: ComponentMetrics) {}
}
