//! `chatlake run --shard K/N`: one worker of N that together load what one worker would.
//!
//! The split rule, in one place:
//!
//! * every window goes to worker `xxh3_64(unit) mod N`, where the *unit* is what must stay on
//!   one worker ([`ShareUnit`]): the window itself (its key) by default, a conversation when a
//!   transform below compares windows (dedupe: a message's copies and versions must meet), or
//!   the whole source (LINE WORKS allows one download at a time per domain; a source that
//!   cannot tell where a message's versions are). xxh3 is fixed by its specification, so the
//!   split is the same on every machine, build and run; Rust's own hasher is seeded at random.
//! * a source that keeps all of its windows together runs on worker
//!   `xxh3_64(source name) mod N` ([`Shard::takes_source`]); the others skip it.
//! * each worker keeps its state in `<state_dir>/<pipeline>/shard-K-of-N/` ([`Shard::dir_name`]):
//!   its own ledger, run lock, dedupe history, removal logs and run summaries, so workers never
//!   write each other's files. Sources plan from the ledgers of all N workers together
//!   ([`crate::state::StateStore::load_with_peers`]), so every worker cuts the same windows and
//!   takes its own share of them.
//! * the state of one N is not the state of another: a run whose N differs from the state's
//!   (or that has `--shard` where the state has none, or the reverse) is refused
//!   ([`check_layout`]), as its new split would load windows other workers already loaded.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::event::Window;

/// The environment variable `run` and `plan` read when `--shard` is not given.
pub const SHARD_VARIABLE: &str = "CHATLAKE_SHARD";

/// One worker of N: `index` from 0 to `count - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard {
    index: u32,
    count: u32,
}

/// Why a `K/N` is not a shard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("`{0}` is not K/N (worker K of N, K from 0), like 0/4")]
    Form(String),
    #[error("`{0}`: N must be at least 1")]
    NoWorkers(String),
    #[error("`{given}`: K must be less than N (workers are numbered 0 to {last})")]
    OutOfRange { given: String, last: u32 },
}

impl Shard {
    pub fn new(index: u32, count: u32) -> Result<Shard, ShardError> {
        format!("{index}/{count}").parse()
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// The name of this worker's state directory below the pipeline's: `shard-K-of-N`.
    pub fn dir_name(&self) -> String {
        format!("shard-{}-of-{}", self.index, self.count)
    }

    /// The worker a unit belongs to among `count` workers.
    pub fn worker_of(unit: &str, count: u32) -> u32 {
        (xxhash_rust::xxh3::xxh3_64(unit.as_bytes()) % u64::from(count.max(1))) as u32
    }

    /// Whether this worker loads the windows of `unit`.
    pub fn takes(&self, unit: &ShareUnit<'_>) -> bool {
        Shard::worker_of(&unit.text(), self.count) == self.index
    }

    /// Whether this worker runs a source whose windows all stay on one worker.
    pub fn takes_source(&self, source: &str) -> bool {
        self.takes(&ShareUnit::Source(source))
    }

    /// The worker among `count` that runs a source whose windows all stay on one worker.
    pub fn worker_of_source(source: &str, count: u32) -> u32 {
        Shard::worker_of(&ShareUnit::Source(source).text(), count)
    }

    /// `shard-K-of-N` back into a shard.
    pub fn from_dir_name(name: &str) -> Option<Shard> {
        let (index, count) = name.strip_prefix("shard-")?.split_once("-of-")?;
        Shard::new(index.parse().ok()?, count.parse().ok()?).ok()
    }
}

impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(s: &str) -> Result<Shard, ShardError> {
        let form = || ShardError::Form(s.to_string());
        let (k, n) = s.trim().split_once('/').ok_or_else(form)?;
        let index: u32 = k.trim().parse().map_err(|_| form())?;
        let count: u32 = n.trim().parse().map_err(|_| form())?;
        if count == 0 {
            return Err(ShardError::NoWorkers(s.to_string()));
        }
        if index >= count {
            return Err(ShardError::OutOfRange {
                given: s.to_string(),
                last: count - 1,
            });
        }
        Ok(Shard { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What a source is asked to do with its windows on a worker (see [`crate::Source::share`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub shard: Shard,
    /// A transform below the source compares rows of different windows (dedupe): all copies
    /// and versions of one message must reach the same worker, so a source splits only by
    /// something that keeps them together (a conversation), or not at all.
    pub keep_copies_together: bool,
}

impl Share {
    /// Whether this worker loads `window`, split by `unit`.
    pub fn takes(&self, unit: &ShareUnit<'_>) -> bool {
        self.shard.takes(unit)
    }

    /// Keeps this worker's windows of `windows`, each split by its own key: for a source whose
    /// windows are independent (nothing below compares them).
    pub fn retain_windows<T>(&self, windows: &mut Vec<T>, window_of: impl Fn(&T) -> &Window) {
        windows.retain(|w| {
            let key = window_of(w).key();
            self.takes(&ShareUnit::Window(&key))
        });
    }
}

/// What stays on one worker: the hash input of the split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareUnit<'a> {
    /// Every window of the source (by its name).
    Source(&'a str),
    /// One window (by its key, [`Window::key`]).
    Window(&'a str),
    /// Windows of one scope of a source, e.g. a conversation over every date range.
    Scope { source: &'a str, scope: String },
}

impl ShareUnit<'_> {
    fn text(&self) -> String {
        match self {
            ShareUnit::Source(s) => format!("source\u{1f}{s}"),
            ShareUnit::Window(k) => format!("window\u{1f}{k}"),
            ShareUnit::Scope { source, scope } => format!("scope\u{1f}{source}\u{1f}{scope}"),
        }
    }
}

/// How a source took its share ([`crate::Source::share`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareTaken {
    /// It kept only this worker's windows.
    Split,
    /// It keeps all of its windows on one worker ([`Shard::takes_source`]): the runtime runs it
    /// there and nowhere else.
    Whole,
}

/// The layout of a pipeline's state directory: ledgers of runs without `--shard`, and the
/// shards whose directories are there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateLayout {
    pub unsharded: bool,
    pub shards: Vec<Shard>,
}

impl StateLayout {
    /// Reads the layout of the pipeline state directory `dir` (`<state_dir>/<pipeline>`).
    pub fn of_dir(dir: &Path) -> std::io::Result<StateLayout> {
        let mut layout = StateLayout::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(layout),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            layout.note(&name, || has_ledger(&entry.path().join("sources")));
        }
        layout.shards.sort_by_key(|s| (s.count, s.index));
        Ok(layout)
    }

    /// Takes note of one entry below the pipeline's state directory: `sources` (a ledger of
    /// runs without `--shard`, if `has_ledger` says it holds one) or `shard-K-of-N`.
    pub fn note(&mut self, first_segment: &str, has_ledger: impl FnOnce() -> bool) {
        if first_segment == "sources" {
            self.unsharded |= has_ledger();
        } else if let Some(shard) = Shard::from_dir_name(first_segment)
            && !self.shards.contains(&shard)
        {
            self.shards.push(shard);
        }
    }

    /// The numbers of workers the shard directories were made for.
    pub fn counts(&self) -> Vec<u32> {
        let mut counts: Vec<u32> = self.shards.iter().map(|s| s.count).collect();
        counts.dedup();
        counts
    }
}

fn has_ledger(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".json"))
    })
}

/// A run whose sharding does not match the state it would continue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutMismatch {
    #[error(
        "the state holds ledgers of workers of {found} (shard-K-of-{found}), and this run is worker \
         {shard}: a new split would load again what those workers loaded. Run every worker with \
         --shard K/{found}, or give this split its own state_dir (and lake)"
    )]
    OtherCount { found: String, shard: Shard },
    #[error(
        "the state holds the ledger of runs without --shard, and this run is worker {0}: shards \
         cannot continue it without loading its windows again. Run without --shard, or give the \
         workers their own state_dir (and lake)"
    )]
    Unsharded(Shard),
    #[error(
        "the state holds ledgers of workers of {0} (shard-K-of-{0}): a run without --shard would \
         load again what they loaded. Run every worker with --shard K/{0}"
    )]
    Sharded(String),
}

/// Refuses a run that would continue state written with another split (see the module docs).
/// `--shard 0/1` is a run without `--shard`.
pub fn check_layout(layout: &StateLayout, shard: Option<Shard>) -> Result<(), LayoutMismatch> {
    let counts = layout.counts();
    let found = || {
        counts
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" and ")
    };
    match shard.filter(|s| s.count > 1) {
        Some(shard) => {
            if counts.iter().any(|n| *n != shard.count) {
                return Err(LayoutMismatch::OtherCount {
                    found: found(),
                    shard,
                });
            }
            if layout.unsharded {
                return Err(LayoutMismatch::Unsharded(shard));
            }
            Ok(())
        }
        None if !counts.is_empty() => Err(LayoutMismatch::Sharded(found())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_bad_ones_say_why() {
        assert_eq!("2/4".parse::<Shard>().unwrap(), Shard::new(2, 4).unwrap());
        assert_eq!(" 0/1 ".parse::<Shard>().unwrap().to_string(), "0/1");
        assert!(matches!(
            "4/4".parse::<Shard>(),
            Err(ShardError::OutOfRange { last: 3, .. })
        ));
        assert!(matches!(
            "0/0".parse::<Shard>(),
            Err(ShardError::NoWorkers(_))
        ));
        for bad in ["", "1", "a/4", "1/b", "-1/4", "1/4/2"] {
            assert!(
                matches!(bad.parse::<Shard>(), Err(ShardError::Form(_))),
                "{bad}"
            );
        }
        let s = Shard::new(3, 8).unwrap();
        assert_eq!(s.dir_name(), "shard-3-of-8");
        assert_eq!(Shard::from_dir_name("shard-3-of-8"), Some(s));
        assert_eq!(Shard::from_dir_name("shard-8-of-8"), None);
        assert_eq!(Shard::from_dir_name("sources"), None);
    }

    /// The split must never change: workers of one job may run different builds, and a worker
    /// re-run tomorrow must take the windows it was given today. These are xxh3's values.
    #[test]
    fn the_split_is_stable() {
        let worker = |unit: ShareUnit<'_>| Shard::worker_of(&unit.text(), 4);
        let assigned: Vec<u32> = [
            "zoom-0a1b2c3d4e5f6071",
            "zoom-1111111111111111",
            "qlara-00000000000000ff",
            "qlara-abcdefabcdefabcd",
            "lineworks-0123456789abcdef",
            "files-fedcba9876543210",
        ]
        .into_iter()
        .map(|k| worker(ShareUnit::Window(k)))
        .collect();
        assert_eq!(assigned, EXPECTED_WINDOWS);
        assert_eq!(
            [
                worker(ShareUnit::Source("lw")),
                worker(ShareUnit::Source("zoom_users")),
                worker(ShareUnit::Scope {
                    source: "zoom_users",
                    scope: "channel c1".into()
                }),
            ],
            EXPECTED_OTHERS
        );
        // Every worker's share together is every window, once.
        let keys: Vec<String> = (0..200).map(|i| format!("src-{i:016x}")).collect();
        let mut taken = vec![0; keys.len()];
        for k in 0..4 {
            let shard = Shard::new(k, 4).unwrap();
            for (i, key) in keys.iter().enumerate() {
                if shard.takes(&ShareUnit::Window(key)) {
                    taken[i] += 1;
                }
            }
        }
        assert!(taken.iter().all(|n| *n == 1));
    }

    const EXPECTED_WINDOWS: [u32; 6] = [0, 2, 0, 0, 2, 1];
    const EXPECTED_OTHERS: [u32; 3] = [3, 1, 2];

    #[test]
    fn a_run_with_another_split_than_the_state_is_refused() {
        let s = |k, n| Shard::new(k, n).unwrap();
        let empty = StateLayout::default();
        assert!(check_layout(&empty, Some(s(1, 4))).is_ok());
        assert!(check_layout(&empty, None).is_ok());
        let four = StateLayout {
            unsharded: false,
            shards: vec![s(0, 4), s(2, 4)],
        };
        assert!(check_layout(&four, Some(s(3, 4))).is_ok());
        assert!(matches!(
            check_layout(&four, Some(s(0, 3))),
            Err(LayoutMismatch::OtherCount { .. })
        ));
        assert!(matches!(
            check_layout(&four, None),
            Err(LayoutMismatch::Sharded(_))
        ));
        assert!(matches!(
            check_layout(&four, Some(s(0, 1))),
            Err(LayoutMismatch::Sharded(_))
        ));
        let single = StateLayout {
            unsharded: true,
            shards: vec![],
        };
        assert!(check_layout(&single, None).is_ok());
        assert!(check_layout(&single, Some(s(0, 1))).is_ok());
        assert!(matches!(
            check_layout(&single, Some(s(0, 2))),
            Err(LayoutMismatch::Unsharded(_))
        ));
        let message = check_layout(&four, Some(s(0, 3))).unwrap_err().to_string();
        assert!(message.contains("--shard K/4"), "{message}");
    }
}
