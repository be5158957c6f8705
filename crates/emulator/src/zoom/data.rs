//! The Zoom dataset: a fixed account of users, channels and 1:1 conversations, and the messages
//! of each conversation as a pure function of `(seed, scale, conversation, time)`.
//!
//! Tests compute what a range must contain with the same functions the endpoints serve from
//! ([`conversation_messages`], [`users`], [`conversations`], [`sessions`]).
//!
//! Every conversation has message *slots* `interval` apart; slot `k` holds one message at a
//! jittered time inside the slot. About 5% of messages are edited (a later version with the same
//! id, status `Edited`, a minute later) and 3% deleted (status `Deleted`, empty text, no files,
//! two minutes later); 5% of channel messages come from a bot, about 12% carry files and 10% are
//! replies to the previous message.

/// A user of the emulated account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub email: String,
    pub member_id: String,
    pub display_name: String,
    pub status: UserStatus,
}

/// A user's `status` in `GET /users`, which lists one status at a time (`active` by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStatus {
    Active,
    /// Deactivated: someone who left. Their chats stay readable, and an archive must keep them.
    Inactive,
    /// Invited, not yet joined: no chats.
    Pending,
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Active => "active",
            UserStatus::Inactive => "inactive",
            UserStatus::Pending => "pending",
        }
    }
}

/// Active users (`zu00`..`zu05`); they come first, so their indexes are `0..USER_COUNT`.
pub const USER_COUNT: usize = 6;
/// Deactivated users after them (`zu06`, `zu07`): they share a 1:1 that no active user sees.
pub const INACTIVE_USER_COUNT: usize = 2;
/// Pending users after those (`zu08`).
pub const PENDING_USER_COUNT: usize = 1;

/// Every user of the account, whatever their status (sorted by id).
pub fn users() -> Vec<User> {
    (0..USER_COUNT + INACTIVE_USER_COUNT + PENDING_USER_COUNT)
        .map(user)
        .collect()
}

fn user(i: usize) -> User {
    let status = if i < USER_COUNT {
        UserStatus::Active
    } else if i < USER_COUNT + INACTIVE_USER_COUNT {
        UserStatus::Inactive
    } else {
        UserStatus::Pending
    };
    User {
        id: format!("zu{i:02}"),
        email: format!("user{i:02}@example.com"),
        member_id: format!("mem{i:02}"),
        display_name: format!("User {i:02}"),
        status,
    }
}

/// Looks a user up by id, email or member id.
pub fn find_user(key: &str) -> Option<User> {
    users()
        .into_iter()
        .find(|u| u.id == key || u.email.eq_ignore_ascii_case(key) || u.member_id == key)
}

/// A conversation: a channel with members, or a 1:1 between two users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conversation {
    Channel {
        id: String,
        name: String,
        members: Vec<usize>,
    },
    OneToOne {
        a: usize,
        b: usize,
    },
}

impl Conversation {
    /// Members, as user indexes.
    pub fn members(&self) -> Vec<usize> {
        match self {
            Conversation::Channel { members, .. } => members.clone(),
            Conversation::OneToOne { a, b } => vec![*a, *b],
        }
    }

    /// A stable key: the channel id, or `im-<a>-<b>`.
    pub fn key(&self) -> String {
        match self {
            Conversation::Channel { id, .. } => id.clone(),
            Conversation::OneToOne { a, b } => format!("im-{}-{}", user(*a).id, user(*b).id),
        }
    }

    /// The report's session id of the conversation.
    pub fn session_id(&self) -> String {
        match self {
            Conversation::Channel { id, .. } => format!("sess-{id}"),
            Conversation::OneToOne { .. } => format!("sess-{}", self.key()),
        }
    }

    fn interval_ms(&self, scale: f64) -> i64 {
        let base: f64 = match self {
            Conversation::Channel { .. } => 30.0 * 60_000.0,
            Conversation::OneToOne { .. } => 90.0 * 60_000.0,
        };
        if scale <= 0.0 {
            return 0;
        }
        ((base / scale) as i64).max(1_000)
    }
}

/// Every conversation of the account: three channels and a ring of 1:1s among the active
/// users, and a 1:1 between the two deactivated users, which only their own listings reach.
pub fn conversations() -> Vec<Conversation> {
    let mut all = vec![
        Conversation::Channel {
            id: "ch-general".into(),
            name: "General".into(),
            members: (0..USER_COUNT).collect(),
        },
        Conversation::Channel {
            id: "ch-eng".into(),
            name: "Engineering".into(),
            members: vec![0, 1, 2],
        },
        Conversation::Channel {
            id: "ch-sales".into(),
            name: "Sales".into(),
            members: vec![3, 4, 5],
        },
    ];
    for a in 0..USER_COUNT {
        let b = (a + 1) % USER_COUNT;
        all.push(Conversation::OneToOne {
            a: a.min(b),
            b: a.max(b),
        });
    }
    all.push(Conversation::OneToOne {
        a: USER_COUNT,
        b: USER_COUNT + 1,
    });
    all
}

/// The conversations user `u` (an index) is in.
pub fn conversations_of(u: usize) -> Vec<Conversation> {
    conversations()
        .into_iter()
        .filter(|c| c.members().contains(&u))
        .collect()
}

/// A report session: a conversation and its session id.
pub fn sessions() -> Vec<(String, Conversation)> {
    let mut s: Vec<_> = conversations()
        .into_iter()
        .map(|c| (c.session_id(), c))
        .collect();
    s.sort_by(|a, b| a.0.cmp(&b.0));
    s
}

/// Status of one message version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Normal,
    Edited,
    Deleted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Normal => "Normal",
            Status::Edited => "Edited",
            Status::Deleted => "Deleted",
        }
    }
}

/// One file of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub file_id: String,
    pub file_name: String,
    pub file_size: i64,
}

impl File {
    /// Where the file host serves it: `{files_url}/file/{file_id}?size={file_size}`. The size
    /// rides in the URL so the file host needs no index of every message's files.
    pub fn download_url(&self, files_url: &str) -> String {
        format!("{files_url}/file/{}?size={}", self.file_id, self.file_size)
    }
}

/// The content the file host serves for `file_id`: `size` bytes, the same on every run.
pub fn file_content(file_id: &str, size: usize) -> Vec<u8> {
    let mut state = hash_str(file_id);
    let mut content = Vec::with_capacity(size);
    while content.len() < size {
        state = mix(state);
        let take = (size - content.len()).min(8);
        content.extend_from_slice(&state.to_le_bytes()[..take]);
    }
    content
}

/// One version of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    pub conversation: String,
    pub sender: usize,
    /// True for bot messages (sent in channels by the account's bot, on behalf of `sender`).
    pub is_bot: bool,
    pub text: String,
    /// Epoch ms of this version.
    pub timestamp: i64,
    pub status: Status,
    pub reply_to: Option<String>,
    pub files: Vec<File>,
}

impl Message {
    pub fn sender(&self) -> User {
        user(self.sender)
    }
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn slot_hash(seed: u64, conv: &str, k: i64) -> u64 {
    mix(mix(seed ^ hash_str(conv)) ^ (k as u64))
}

fn message_id(h: u64) -> String {
    let g = mix(h ^ 0xA5A5);
    format!(
        "{:08X}-{:04X}-{:04X}-{:04X}-{:012X}",
        (h >> 32) as u32,
        (h >> 16) as u16,
        h as u16,
        (g >> 48) as u16,
        g & 0xFFFF_FFFF_FFFF
    )
}

const WORDS: [&str; 12] = [
    "hello",
    "ship it",
    "review",
    "lunch?",
    "déploiement",
    "会議",
    "ok",
    "see PR #42",
    "👍",
    "tomorrow",
    "line one\nline two",
    "  spaced  ",
];

/// The original message of slot `k`, and its later version if it was edited or deleted.
fn slot(seed: u64, scale: f64, conv: &Conversation, k: i64) -> Option<(Message, Option<Message>)> {
    let interval = conv.interval_ms(scale);
    if interval == 0 {
        return None;
    }
    let key = conv.key();
    let h = slot_hash(seed, &key, k);
    let members = conv.members();
    let sender = members[(h % members.len() as u64) as usize];
    let pick = (h >> 8) % 100;
    let is_bot = matches!(conv, Conversation::Channel { .. }) && pick < 5;
    let timestamp = k * interval + ((h >> 16) % (interval as u64 / 2).max(1)) as i64;
    let w = WORDS[((h >> 24) % WORDS.len() as u64) as usize];
    let text = format!("{w} #{k}");
    let id = message_id(h);
    let files = match (h >> 32) % 100 {
        0..=9 => 1,
        10..=11 => 2,
        _ => 0,
    };
    let files = (0..files)
        .map(|f| File {
            file_id: format!("f-{:x}-{f}", h & 0xFFFF_FFFF),
            file_name: format!("file{k}_{f}.png"),
            file_size: ((h >> 40) % 100_000) as i64 + 1,
        })
        .collect::<Vec<_>>();
    let reply_to =
        ((h >> 48).is_multiple_of(10) && k > 0).then(|| message_id(slot_hash(seed, &key, k - 1)));
    let original = Message {
        id,
        conversation: key,
        sender,
        is_bot,
        text,
        timestamp,
        status: Status::Normal,
        reply_to,
        files,
    };
    let change = (h >> 56) % 100;
    let later = match change {
        0..=4 => Some(Message {
            text: format!("{} (edited)", original.text),
            timestamp: original.timestamp + 60_000,
            status: Status::Edited,
            ..original.clone()
        }),
        5..=7 => Some(Message {
            text: String::new(),
            files: Vec::new(),
            timestamp: original.timestamp + 120_000,
            status: Status::Deleted,
            ..original.clone()
        }),
        _ => None,
    };
    Some((original, later))
}

/// Which range a later version (an edit or a delete) belongs to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VersionsBy {
    /// Its own timestamp (the default): an edit shows in the range of the time it was made.
    #[default]
    OwnTime,
    /// Its original message's timestamp, once made (own timestamp ≤ the range's end): an edit
    /// shows only when the original's range is read again after it, as a source's `lookback`
    /// does. What the real API does is not documented; this is the case that needs a lookback.
    OriginalTime,
}

/// Every message version of `conv` whose own timestamp lies in `from_ms..=to_ms`, newest first.
/// With `versions = false`, only the original messages.
pub fn conversation_messages(
    seed: u64,
    scale: f64,
    conv: &Conversation,
    from_ms: i64,
    to_ms: i64,
    versions: bool,
) -> Vec<Message> {
    conversation_messages_by(
        seed,
        scale,
        conv,
        from_ms,
        to_ms,
        versions,
        VersionsBy::OwnTime,
    )
}

/// [`conversation_messages`], with later versions placed by `by`.
pub fn conversation_messages_by(
    seed: u64,
    scale: f64,
    conv: &Conversation,
    from_ms: i64,
    to_ms: i64,
    versions: bool,
    by: VersionsBy,
) -> Vec<Message> {
    let interval = conv.interval_ms(scale);
    if interval == 0 || to_ms < from_ms {
        return Vec::new();
    }
    let mut out = Vec::new();
    // Later versions come at most two minutes after their slot's message.
    let first = (from_ms - 120_000).div_euclid(interval) - 1;
    let last = to_ms.div_euclid(interval) + 1;
    for k in first..=last {
        let Some((original, later)) = slot(seed, scale, conv, k) else {
            continue;
        };
        let original_in = (from_ms..=to_ms).contains(&original.timestamp);
        if versions && let Some(v) = later {
            let in_range = match by {
                VersionsBy::OwnTime => (from_ms..=to_ms).contains(&v.timestamp),
                VersionsBy::OriginalTime => original_in && v.timestamp <= to_ms,
            };
            if in_range {
                out.push(v);
            }
        }
        if original_in {
            out.push(original);
        }
    }
    out.sort_by(|a, b| b.timestamp.cmp(&a.timestamp).then(a.id.cmp(&b.id)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_deterministic_and_has_every_kind_of_message() {
        let conv = &conversations()[0];
        let day = 86_400_000;
        let a = conversation_messages(7, 1.0, conv, 0, 30 * day, true);
        let b = conversation_messages(7, 1.0, conv, 0, 30 * day, true);
        assert_eq!(a, b);
        assert!(a.windows(2).all(|w| w[0].timestamp >= w[1].timestamp));
        assert!(a.iter().any(|m| m.status == Status::Edited));
        assert!(a.iter().any(|m| m.status == Status::Deleted));
        assert!(a.iter().any(|m| m.is_bot));
        assert!(a.iter().any(|m| !m.files.is_empty()));
        assert!(a.iter().any(|m| m.reply_to.is_some()));
        // About 48 a day in a channel at scale 1.
        let originals = a.iter().filter(|m| m.status == Status::Normal).count();
        assert!((1300..1600).contains(&originals), "{originals}");
        // Ranges split anywhere give the same messages.
        let mut parts = conversation_messages(7, 1.0, conv, 0, 10 * day - 1, true);
        parts.extend(conversation_messages(
            7,
            1.0,
            conv,
            10 * day,
            30 * day,
            true,
        ));
        let mut whole = a.clone();
        whole.sort_by(|x, y| (x.timestamp, &x.id).cmp(&(y.timestamp, &y.id)));
        parts.sort_by(|x, y| (x.timestamp, &x.id).cmp(&(y.timestamp, &y.id)));
        assert_eq!(whole, parts);
    }

    #[test]
    fn account_layout() {
        assert_eq!(
            users().len(),
            USER_COUNT + INACTIVE_USER_COUNT + PENDING_USER_COUNT
        );
        let active = users()
            .iter()
            .filter(|u| u.status == UserStatus::Active)
            .count();
        assert_eq!(active, USER_COUNT);
        assert_eq!(find_user("user01@example.com").unwrap().id, "zu01");
        assert_eq!(find_user("zu06").unwrap().status, UserStatus::Inactive);
        assert_eq!(find_user("zu08").unwrap().status, UserStatus::Pending);
        assert_eq!(conversations_of(0).len(), 2 + 2);
        // Three channels, the ring of active 1:1s, and the deactivated users' 1:1.
        assert_eq!(sessions().len(), 3 + USER_COUNT + 1);
        // Only the deactivated users reach their 1:1.
        let left = conversations_of(USER_COUNT);
        assert_eq!(left.len(), 1);
        assert!(left[0].members().iter().all(|&m| m >= USER_COUNT));
        assert!(conversations_of(USER_COUNT + 2).is_empty(), "pending: none");
    }
}
