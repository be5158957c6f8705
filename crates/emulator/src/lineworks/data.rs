//! The deterministic LINE WORKS message dataset: the single source of truth for what the emulator
//! serves and for what end-to-end tests expect.
//!
//! Messages are generated per UTC hour from an RNG seeded with `(seed, hour)`, so any window is
//! reproducible and two overlapping windows agree on the messages they share, whatever their
//! bounds. The server streams hour by hour through [`Generator`] and writes rows straight from
//! the compact [`RawMessage`] (no per-row heap allocation); [`messages_between`] exposes the
//! same messages as owned [`Message`] values for tests.
//!
//! The dataset has messages at every instant, including the future: cutting at "now" would make
//! a window's content depend on when it is asked for.

use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Messages per hour at scale 1.0 (about 1000 a day).
const MESSAGES_PER_HOUR: f64 = 42.0;
/// Share of messages sent by a bot.
const BOT_SHARE: f64 = 0.03;
/// Share of messages followed by an identical second message (a real double post, not a
/// duplicate row: both are genuine messages the deduplication must not merge blindly).
const DOUBLE_POST_SHARE: f64 = 0.002;
/// Room ids are `FIRST_ROOM_ID .. FIRST_ROOM_ID + ROOM_COUNT`.
const FIRST_ROOM_ID: u32 = 10_000;
const ROOM_COUNT: u16 = 50;

/// One message as it appears in the downloaded CSV.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Message {
    /// When the message was sent (whole seconds).
    pub at: DateTime<Utc>,
    /// The CSV `Sender` field, `Name(email)`; bots are `[Bot]Name(email)`.
    pub sender: String,
    /// The CSV `Recipient` field: a user `Name(email)`, or a group room
    /// `room name(roomN@group.example.com)`.
    pub recipient: String,
    /// The CSV `Message room ID` field (decimal digits).
    pub room_id: String,
    /// The CSV `Message` field, exactly (it may hold commas, quotes, CR, LF, emoji, spaces).
    pub text: String,
    /// Whether the sender is a bot (the `[Bot]` prefix of `sender`).
    pub is_bot: bool,
}

/// The messages sent in `start ..= end` (both inclusive, to the second), ascending in time.
///
/// Streams hour by hour, so a window holding millions of messages costs memory for one hour only.
pub fn messages_between(
    seed: u64,
    scale: f64,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> impl Iterator<Item = Message> + Send + 'static {
    let mut generator = Generator::new(seed, scale, start.timestamp(), end.timestamp());
    let mut hour = Vec::new();
    let mut pos = 0;
    std::iter::from_fn(move || {
        while pos == hour.len() {
            if !generator.next_hour(&mut hour) {
                return None;
            }
            pos = 0;
        }
        pos += 1;
        Some(hour[pos - 1].to_message())
    })
}

/// Users: (display name, e-mail). Japanese, Korean and English names; some hold parentheses or
/// quotes so that `Name(email)` parsing and CSV quoting are both exercised.
const USERS: [(&str, &str); 40] = [
    ("佐藤 太郎", "taro.sato@example.com"),
    ("鈴木 花子", "hanako.suzuki@example.com"),
    ("高橋 健一", "kenichi.takahashi@example.com"),
    ("田中 美咲", "misaki.tanaka@example.com"),
    ("伊藤 翔", "sho.ito@example.com"),
    ("渡辺 さくら", "sakura.watanabe@example.com"),
    ("山本 大輔", "daisuke.yamamoto@example.com"),
    ("中村 優子", "yuko.nakamura@example.com"),
    ("小林 蓮", "ren.kobayashi@example.com"),
    ("加藤 陽菜", "hina.kato@example.com"),
    ("吉田 拓也", "takuya.yoshida@example.com"),
    ("山田 花子 (経理)", "hanako.yamada@example.com"),
    ("松本 亮", "ryo.matsumoto@example.com"),
    ("井上 あおい", "aoi.inoue@example.com"),
    ("김민준", "minjun.kim@example.com"),
    ("이서연", "seoyeon.lee@example.com"),
    ("박지훈", "jihoon.park@example.com"),
    ("최수아", "sua.choi@example.com"),
    ("정우진", "woojin.jung@example.com"),
    ("강하은", "haeun.kang@example.com"),
    ("조현우", "hyunwoo.cho@example.com"),
    ("윤지민", "jimin.yoon@example.com"),
    ("장서준", "seojun.jang@example.com"),
    ("임유나", "yuna.lim@example.com"),
    ("한도윤", "doyoon.han@example.com"),
    ("오지아 (인사)", "jia.oh@example.com"),
    ("Alice Johnson", "alice.johnson@example.com"),
    ("Bob Smith", "bob.smith@example.com"),
    ("Chris Park (Sales)", "chris.park@example.com"),
    ("Diana Prince", "diana.prince@example.com"),
    ("Ethan Brown", "ethan.brown@example.com"),
    ("Fiona O'Neil", "fiona.oneil@example.com"),
    ("George Miller", "george.miller@example.com"),
    ("Hannah Lee", "hannah.lee@example.com"),
    ("Ivan Petrov", "ivan.petrov@example.com"),
    ("Julia Roberts-Chen", "julia.chen@example.com"),
    ("Kevin Nguyen", "kevin.nguyen@example.com"),
    ("Laura García", "laura.garcia@example.com"),
    ("Mike \"Mikey\" Davis", "mike.davis@example.com"),
    ("Nina Müller", "nina.mueller@example.com"),
];

/// Bots: (display name without the `[Bot]` prefix, e-mail).
const BOTS: [(&str, &str); 3] = [
    ("勤怠Bot", "attendance-bot@example.com"),
    ("Notification Bot", "notify-bot@example.com"),
    ("알림봇", "alert-bot@example.com"),
];

/// Names of group rooms; every third room is a group room.
const GROUP_NAMES: [&str; 8] = [
    "営業チーム",
    "개발팀",
    "Project Phoenix",
    "General, all-hands",
    "経理・総務",
    "Design \"Crit\" Room",
    "마케팅",
    "Support (Tier 2)",
];

/// Message texts. Chosen to exercise every CSV and Unicode edge: commas, quotes (also at the
/// field edges), LF, CRLF, tabs, leading/trailing spaces, multi-codepoint emoji, URLs (stickers).
const TEXTS: [&str; 34] = [
    "おはようございます。",
    "了解しました！",
    "お疲れさまです。本日の会議は15時からです。",
    "資料を共有します、ご確認ください。",
    "안녕하세요!",
    "네, 확인했습니다.",
    "회의는 3시에 시작합니다, 늦지 마세요.",
    "Thanks, see you at 3pm.",
    "Can you review the PR?",
    "Sure — on it.",
    "The price is \"1,000 yen\", tax included.",
    "He said \"ok\"",
    "Line one\nline two",
    "First line\r\nSecond line",
    "  leading and trailing spaces  ",
    "👍",
    "Family photo 👨‍👩‍👧 coming soon",
    "🇯🇵🇰🇷🎉",
    "Agenda:\n1. budget, \"Q3\"\n2. hiring",
    "https://stickers.example.com/sticker/12345.png",
    "価格は1,000円です",
    "ありがとうございます🙏",
    "감사합니다 😊",
    "Ünïcödé façade, naïve café",
    "tab\tseparated",
    "OK",
    "ok",
    "明日の予定は？\n10:00 定例\n14:00 顧客訪問",
    "Lunch?",
    "잠시만요...",
    "\"quoted at start",
    "ends with a quote\"",
    "a,b,c",
    ",leading comma",
];

/// Texts that bots send.
const BOT_TEXTS: [&str; 4] = [
    "出勤打刻を忘れていませんか？",
    "[Reminder] Weekly report is due today, 17:00.",
    "새 공지사항이 등록되었습니다.\nhttps://notice.example.com/123",
    "Build #1234 passed ✅",
];

/// Files sent as `(ファイル) <name>`.
const FILES: [&str; 5] = [
    "report.pdf",
    "見積書_2025.xlsx",
    "meeting notes, final.docx",
    "회의록.hwp",
    "design \"v2\".png",
];

/// How two texts are joined into one message.
const SEPARATORS: [&str; 3] = [" ", "\n", "\r\n"];

/// A sender or recipient, as indexes into the fixed pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Party {
    User(u8),
    Bot(u8),
    /// A group room, by room index.
    Group(u16),
}

impl Party {
    fn write(self, out: &mut Vec<u8>) {
        let (name, email) = match self {
            Party::User(i) => USERS[usize::from(i)],
            Party::Bot(i) => {
                out.extend_from_slice(b"[Bot]");
                BOTS[usize::from(i)]
            }
            Party::Group(room) => {
                out.extend_from_slice(group_name(room).as_bytes());
                out.extend_from_slice(b"(room");
                push_decimal(out, u64::from(room_id(room)), 0);
                out.extend_from_slice(b"@group.example.com)");
                return;
            }
        };
        out.extend_from_slice(name.as_bytes());
        out.push(b'(');
        out.extend_from_slice(email.as_bytes());
        out.push(b')');
    }
}

/// A message text, as indexes into the fixed pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Text {
    One(u8),
    Two(u8, u8, u8),
    Bot(u8),
    Photo(u16),
    File(u8),
}

impl Text {
    fn write(self, out: &mut Vec<u8>) {
        match self {
            Text::One(i) => out.extend_from_slice(TEXTS[usize::from(i)].as_bytes()),
            Text::Two(a, b, sep) => {
                out.extend_from_slice(TEXTS[usize::from(a)].as_bytes());
                out.extend_from_slice(SEPARATORS[usize::from(sep)].as_bytes());
                out.extend_from_slice(TEXTS[usize::from(b)].as_bytes());
            }
            Text::Bot(i) => out.extend_from_slice(BOT_TEXTS[usize::from(i)].as_bytes()),
            Text::Photo(n) => {
                out.extend_from_slice("(写真) IMG_".as_bytes());
                push_decimal(out, u64::from(n), 4);
                out.extend_from_slice(b".jpg");
            }
            Text::File(i) => {
                out.extend_from_slice("(ファイル) ".as_bytes());
                out.extend_from_slice(FILES[usize::from(i)].as_bytes());
            }
        }
    }
}

/// A message in compact form: a few indexes, `Copy`, written field by field into a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RawMessage {
    /// Unix seconds.
    pub(crate) at: i64,
    room: u16,
    sender: Party,
    recipient: Party,
    text: Text,
}

impl RawMessage {
    pub(crate) fn is_bot(&self) -> bool {
        matches!(self.sender, Party::Bot(_))
    }

    pub(crate) fn write_sender(&self, out: &mut Vec<u8>) {
        self.sender.write(out);
    }

    pub(crate) fn write_recipient(&self, out: &mut Vec<u8>) {
        self.recipient.write(out);
    }

    pub(crate) fn write_room_id(&self, out: &mut Vec<u8>) {
        push_decimal(out, u64::from(room_id(self.room)), 0);
    }

    pub(crate) fn write_text(&self, out: &mut Vec<u8>) {
        self.text.write(out);
    }

    fn to_message(self) -> Message {
        // The pools are `&str` and the writers only join them, so the bytes are valid UTF-8.
        let field = |write: fn(&RawMessage, &mut Vec<u8>)| {
            let mut buf = Vec::new();
            write(&self, &mut buf);
            String::from_utf8(buf)
                .unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned())
        };
        Message {
            at: DateTime::from_timestamp(self.at, 0).unwrap_or_default(),
            sender: field(RawMessage::write_sender),
            recipient: field(RawMessage::write_recipient),
            room_id: field(RawMessage::write_room_id),
            text: field(RawMessage::write_text),
            is_bot: self.is_bot(),
        }
    }
}

fn room_id(room: u16) -> u32 {
    FIRST_ROOM_ID + u32::from(room)
}

fn is_group_room(room: u16) -> bool {
    room.is_multiple_of(3)
}

fn group_name(room: u16) -> &'static str {
    GROUP_NAMES[usize::from(room / 3) % GROUP_NAMES.len()]
}

/// The two members of a one-to-one room (fixed, so a room always joins the same two people).
fn pair_members(room: u16) -> (u8, u8) {
    let n = USERS.len() as u16;
    let a = (room * 7) % n;
    let mut b = (room * 13 + 5) % n;
    if a == b {
        b = (b + 1) % n;
    }
    // Both are < 40, so they fit in u8.
    (a as u8, b as u8)
}

/// Walks the hours of a window and generates each hour's messages.
pub(crate) struct Generator {
    seed: u64,
    scale: f64,
    start: i64,
    end: i64,
    next_hour: i64,
    last_hour: i64,
    /// Reused between hours.
    seconds: Vec<u16>,
}

impl Generator {
    /// A generator for `start ..= end` (Unix seconds, both inclusive).
    pub(crate) fn new(seed: u64, scale: f64, start: i64, end: i64) -> Generator {
        let scale = if scale.is_finite() {
            scale.max(0.0)
        } else {
            0.0
        };
        Generator {
            seed,
            scale,
            start,
            end,
            next_hour: start.div_euclid(3600),
            // An empty window (end < start) yields no hour at all.
            last_hour: if end < start {
                i64::MIN
            } else {
                end.div_euclid(3600)
            },
            seconds: Vec::new(),
        }
    }

    /// Replaces the contents of `out` with the window's messages of the next hour (possibly
    /// none). Returns `false`, leaving `out` empty, once every hour of the window has been done.
    pub(crate) fn next_hour(&mut self, out: &mut Vec<RawMessage>) -> bool {
        out.clear();
        if self.next_hour > self.last_hour {
            return false;
        }
        let hour = self.next_hour;
        self.next_hour += 1;
        self.generate_hour(hour, out);
        true
    }

    /// Generates all messages of `hour` and keeps those inside the window. Every message of the
    /// hour draws from the RNG even when it is filtered out, so the draws never depend on the
    /// window's bounds.
    fn generate_hour(&mut self, hour: i64, out: &mut Vec<RawMessage>) {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(self.seed, hour));
        // About `scale × 42` messages, ±20% per hour; the fractional part is rounded randomly so
        // that small scales (e.g. 0.01) still average out right.
        let expected = self.scale * MESSAGES_PER_HOUR * rng.random_range(0.8..1.2);
        let mut count = expected.floor() as usize;
        if rng.random::<f64>() < expected.fract() {
            count += 1;
        }
        self.seconds.clear();
        self.seconds
            .extend((0..count).map(|_| rng.random_range(0..3600u16)));
        self.seconds.sort_unstable();
        let base = hour * 3600;
        for &second in &self.seconds {
            let message = random_message(&mut rng, base + i64::from(second));
            let double_post = rng.random_bool(DOUBLE_POST_SHARE);
            if (self.start..=self.end).contains(&message.at) {
                out.push(message);
                if double_post {
                    out.push(message);
                }
            }
        }
    }
}

fn random_message(rng: &mut ChaCha8Rng, at: i64) -> RawMessage {
    let room = rng.random_range(0..ROOM_COUNT);
    let is_bot = rng.random_bool(BOT_SHARE);
    let (sender, recipient) = if is_group_room(room) {
        let sender = if is_bot {
            Party::Bot(rng.random_range(0..BOTS.len() as u8))
        } else {
            Party::User(rng.random_range(0..USERS.len() as u8))
        };
        (sender, Party::Group(room))
    } else {
        let (a, b) = pair_members(room);
        let (from, to) = if rng.random_bool(0.5) { (a, b) } else { (b, a) };
        if is_bot {
            // A bot writes into the one-to-one room of its user.
            (
                Party::Bot(rng.random_range(0..BOTS.len() as u8)),
                Party::User(to),
            )
        } else {
            (Party::User(from), Party::User(to))
        }
    };
    let text = if is_bot {
        Text::Bot(rng.random_range(0..BOT_TEXTS.len() as u8))
    } else {
        let texts = TEXTS.len() as u8;
        match rng.random_range(0..1000u16) {
            0..40 => Text::Photo(rng.random_range(1..10_000)),
            40..70 => Text::File(rng.random_range(0..FILES.len() as u8)),
            70..250 => Text::Two(
                rng.random_range(0..texts),
                rng.random_range(0..texts),
                rng.random_range(0..SEPARATORS.len() as u8),
            ),
            _ => Text::One(rng.random_range(0..texts)),
        }
    };
    RawMessage {
        at,
        room,
        sender,
        recipient,
        text,
    }
}

/// Seed of one hour's RNG: splitmix64 finalisers over the seed and the hour, so neighbouring
/// hours and neighbouring seeds get unrelated streams.
fn mix(seed: u64, hour: i64) -> u64 {
    splitmix64(seed ^ splitmix64(hour as u64 ^ 0x6c69_6e65_776f_726b))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Appends `n` in decimal, zero-padded to `width` digits, without going through `fmt`.
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(std::iter::repeat_n(b'0', width.saturating_sub(len)));
    out.extend(digits[..len].iter().rev());
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn same_window_same_messages() {
        let (start, end) = (utc(2025, 5, 1, 0, 0, 0), utc(2025, 5, 3, 0, 0, 0));
        let a: Vec<_> = messages_between(42, 1.0, start, end).collect();
        let b: Vec<_> = messages_between(42, 1.0, start, end).collect();
        assert_eq!(a, b);
        let other_seed: Vec<_> = messages_between(43, 1.0, start, end).collect();
        assert_ne!(a, other_seed);
    }

    #[test]
    fn overlapping_windows_agree() {
        let whole: Vec<_> = messages_between(
            7,
            1.0,
            utc(2025, 5, 1, 0, 0, 0),
            utc(2025, 5, 2, 23, 59, 59),
        )
        .collect();
        // Bounds that cut through hours on purpose.
        let (start, end) = (utc(2025, 5, 1, 10, 17, 23), utc(2025, 5, 2, 3, 44, 1));
        let part: Vec<_> = messages_between(7, 1.0, start, end).collect();
        let expected: Vec<_> = whole
            .iter()
            .filter(|m| m.at >= start && m.at <= end)
            .cloned()
            .collect();
        assert!(!part.is_empty());
        assert_eq!(part, expected);
    }

    #[test]
    fn bounds_are_inclusive_to_the_second() {
        let all: Vec<_> =
            messages_between(1, 1.0, utc(2025, 1, 1, 0, 0, 0), utc(2025, 1, 1, 2, 0, 0)).collect();
        let first = all[0].at;
        let last = all[all.len() - 1].at;
        let same: Vec<_> = messages_between(1, 1.0, first, last).collect();
        assert_eq!(same, all);
        let one_second = messages_between(1, 1.0, first, first).count();
        assert!(one_second >= 1);
    }

    #[test]
    fn ascending_and_about_a_thousand_a_day() {
        let messages: Vec<_> = messages_between(
            42,
            1.0,
            utc(2025, 3, 1, 0, 0, 0),
            utc(2025, 3, 30, 23, 59, 59),
        )
        .collect();
        assert!(messages.windows(2).all(|w| w[0].at <= w[1].at));
        let per_day = messages.len() as f64 / 30.0;
        assert!((900.0..1100.0).contains(&per_day), "{per_day} a day");
        let bots = messages.iter().filter(|m| m.is_bot).count() as f64;
        let share = bots / messages.len() as f64;
        assert!((0.02..0.04).contains(&share), "bot share {share}");
        assert!(
            messages
                .iter()
                .all(|m| m.is_bot == m.sender.starts_with("[Bot]"))
        );
        let doubles = messages.windows(2).filter(|w| w[0] == w[1]).count();
        assert!(doubles > 10, "{doubles} double posts");
        for needle in ["\r\n", "\n", "\"", ",", "👨‍👩‍👧", "(写真) IMG_", "(ファイル) "]
        {
            assert!(
                messages.iter().any(|m| m.text.contains(needle)),
                "no text with {needle:?}"
            );
        }
        assert!(messages.iter().any(|m| m.text.starts_with(' ')));
        assert!(
            messages
                .iter()
                .any(|m| m.sender.contains("Chris Park (Sales)"))
        );
        assert!(
            messages
                .iter()
                .any(|m| m.recipient.ends_with("@group.example.com)"))
        );
        assert!(messages.iter().all(|m| m.room_id.parse::<u32>().is_ok()));
    }

    #[test]
    fn scale_changes_the_volume() {
        let (start, end) = (utc(2025, 3, 1, 0, 0, 0), utc(2025, 3, 10, 23, 59, 59));
        let tenth = messages_between(42, 0.1, start, end).count() as f64;
        let double = messages_between(42, 2.0, start, end).count() as f64;
        assert!((800.0..1200.0).contains(&tenth), "{tenth}");
        assert!((18_000.0..22_000.0).contains(&double), "{double}");
        assert_eq!(messages_between(42, 0.0, start, end).count(), 0);
        assert_eq!(messages_between(42, f64::NAN, start, end).count(), 0);
    }

    #[test]
    fn empty_when_end_before_start() {
        let t = utc(2025, 3, 1, 0, 0, 0);
        assert_eq!(
            messages_between(42, 1.0, t, t - chrono::Duration::seconds(1)).count(),
            0
        );
    }

    #[test]
    fn decimal_padding() {
        let mut out = Vec::new();
        push_decimal(&mut out, 7, 4);
        push_decimal(&mut out, 0, 0);
        push_decimal(&mut out, 123_456, 2);
        assert_eq!(out, b"00070123456");
    }
}
