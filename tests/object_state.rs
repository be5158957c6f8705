//! A `state_dir` in object storage (issue 14 item 3), through the binary against a real S3 server
//! (SeaweedFS on loopback, started by the test; a test that cannot start it fails): incremental
//! runs from a fresh working copy, the run lock (held, taken over, lost), a ledger another writer
//! changed, `state show` / `state reset` / `state rename-source`, and a store that refuses the
//! credentials.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chatlake_store::testing::SeaweedFs;
use chatlake_store::{PutMode, Store};
use common::{BIN, Scratch, read_parquet};

const BUCKET: &str = "state";
const STATE_URL: &str = "s3://state/chatlake/_state";

/// LINE WORKS windows of four days with a three-day lookback, deduplicated across runs: a second
/// run fetches the lookback again and must drop every row the first one loaded, which it can only
/// do with the first run's dedupe keys and ledger from the store.
const DAILY: &str = r#"
[pipeline]
name = "daily"
state_dir = "STATE_DIR"

[sources.lw]
type = "lineworks_message_contents"
auth = { type = "bearer", token = "${LW_TOKEN:-}" }
start = "2025-01-01T00:00:00+09:00"
window_days = 4
lookback = "3d"

[transforms.canonical]
type = "normalize"
inputs = ["lw"]

[transforms.unique]
type = "dedupe"
inputs = ["canonical"]
across_runs = true

[sinks.lake]
type = "parquet"
inputs = ["unique"]
path = "./lake/messages"
partition_by = ["sent_date"]
"#;

/// Six one-day windows served slowly enough to act between two of their commits.
const SLOW: &str = r#"
[pipeline]
name = "slow"
state_dir = "STATE_DIR"

[sources.lw]
type = "lineworks_message_contents"
auth = { type = "bearer", token = "${LW_TOKEN:-}" }
start = "2025-01-01T00:00:00+09:00"
end = "2025-01-06T23:59:59+09:00"
window_days = 1
requests_per_minute = 6000

[transforms.canonical]
type = "normalize"
inputs = ["lw"]

[sinks.lake]
type = "parquet"
inputs = ["canonical"]
path = "./lake/messages"
partition_by = ["sent_date"]
"#;

const SLOW_FAULTS: &str = "lineworks.slow_ms=40,lineworks.rate_limit_per_min=0";

/// A SeaweedFS with the state bucket, and a scratch directory whose runs reach it.
struct World {
    s3: SeaweedFs,
    scratch: Scratch,
}

impl World {
    fn new() -> World {
        let s3 = SeaweedFs::start();
        s3.create_bucket(BUCKET);
        World {
            s3,
            scratch: Scratch::new(),
        }
    }

    fn pipeline(&self, template: &str, state_dir: &str) -> PathBuf {
        self.scratch.pipeline(
            &format!("p{:x}.toml", file_name_hash(template, state_dir)),
            &template.replace("STATE_DIR", state_dir),
        )
    }

    /// The standard AWS variables of the server, and a working-copy cache of this test's own.
    fn env(&self, cache: &str) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .s3
            .env()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        env.push((
            "CHATLAKE_STATE_CACHE".into(),
            self.scratch.path(cache).display().to_string(),
        ));
        env
    }

    fn run(&self, args: &[&str], cache: &str, extra: &[(&str, &str)]) -> common::Outcome {
        let env = self.env(cache);
        let mut all: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        all.extend_from_slice(extra);
        self.scratch.run_env(args, &all)
    }

    fn spawn(&self, args: &[&str], cache: &str, extra: &[(&str, &str)]) -> std::process::Child {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(self.scratch.dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in self.env(cache) {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
    }

    fn store(&self) -> Store {
        self.s3.store(BUCKET)
    }

    /// `<state_dir>/<pipeline>/<rel>` as the store holds it.
    fn object(&self, pipeline: &str, rel: &str) -> Option<Vec<u8>> {
        let store = self.store();
        let key = store.key(&format!("chatlake/_state/{pipeline}/{rel}"));
        runtime()
            .block_on(store.read(&key))
            .unwrap()
            .map(|(b, _)| b.to_vec())
    }

    fn put(&self, pipeline: &str, rel: &str, bytes: Vec<u8>) {
        let store = self.store();
        let key = store.key(&format!("chatlake/_state/{pipeline}/{rel}"));
        runtime()
            .block_on(store.write(&key, bytes.into(), PutMode::Overwrite))
            .unwrap();
    }

    /// Relative names of every object below `<state_dir>/<pipeline>/`.
    fn objects(&self, pipeline: &str) -> Vec<String> {
        let store = self.store();
        let prefix = format!("chatlake/_state/{pipeline}/");
        let mut names: Vec<String> = runtime()
            .block_on(store.list(&prefix))
            .unwrap()
            .into_iter()
            .map(|m| m.location.as_ref().trim_start_matches(&prefix).to_string())
            .collect();
        names.sort();
        names
    }

    /// Waits until `<pipeline>/<rel>` exists in the store.
    fn wait_for(&self, pipeline: &str, rel: &str, child: &mut std::process::Child) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.object(pipeline, rel).is_none() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the run ended before {rel} appeared"
            );
            assert!(Instant::now() < deadline, "{rel} never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn file_name_hash(a: &str, b: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (a, b).hash(&mut h);
    h.finish()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn stderr_of(child: std::process::Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

/// Records a component of the last run sent on (or dropped, `records_in - records_out`).
fn records(last_run: &serde_json::Value, component: &str) -> (u64, u64) {
    let c = last_run["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == component)
        .unwrap();
    (
        c["records_in"].as_u64().unwrap(),
        c["records_out"].as_u64().unwrap(),
    )
}

fn remove_cache(w: &World, cache: &str) {
    let dir = w.scratch.path(cache);
    assert!(dir.is_dir(), "the run kept its working copy in {cache}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_state_dir_in_s3_runs_incrementally_even_from_a_fresh_working_copy() {
    let w = World::new();
    // What one run with a local state_dir loads.
    let clean = Scratch::new();
    let local = clean.pipeline("daily.toml", &DAILY.replace("STATE_DIR", "./lake/_state"));
    let end = "2025-01-20T23:59:59+09:00";
    clean
        .run(&["run", "--emulate", "--end", end, local.to_str().unwrap()])
        .expect_code(0);
    let want = read_parquet(&clean.path("lake/messages"));
    assert!(want.len() > 5_000, "{}", want.len());

    let p = w.pipeline(DAILY, STATE_URL);
    let p = p.to_str().unwrap();
    w.run(
        &["run", "--emulate", "--end", "2025-01-10T23:59:59+09:00", p],
        "cache",
        &[],
    )
    .expect_code(0);
    let objects = w.objects("daily");
    for expected in ["last_run.json", "sources/lw.json"] {
        assert!(objects.iter().any(|o| o == expected), "{objects:?}");
    }
    assert!(
        objects.iter().any(|o| o.starts_with("dedupe/unique/")),
        "the dedupe keys are state: {objects:?}"
    );
    assert!(
        !objects
            .iter()
            .any(|o| o == "lock.json" || o.ends_with(".tmp")),
        "the lock is released and nothing temporary is kept: {objects:?}"
    );

    // A fresh container: no working copy. The overlapping run loads what one clean run loads.
    remove_cache(&w, "cache");
    let out = w
        .run(&["run", "--emulate", "--end", end, p], "cache", &[])
        .expect_code(0);
    let got = read_parquet(&w.scratch.path("lake/messages"));
    assert_eq!(got.len(), want.len(), "{}", out.stdout());
    assert!(
        got == want,
        "two overlapping runs load what one clean run loads"
    );
    let last = json(&w.object("daily", "last_run.json").unwrap());
    let (unique_in, unique_out) = records(&last, "unique");
    assert!(
        unique_in - unique_out > 1000,
        "the lookback's rows were dropped as loaded by the first run: {unique_in} in, {unique_out} out"
    );

    // Once more, fresh again: nothing new is fetched but the lookback, nothing is added.
    remove_cache(&w, "cache");
    w.run(&["run", "--emulate", "--end", end, p], "cache", &[])
        .expect_code(0);
    assert!(read_parquet(&w.scratch.path("lake/messages")) == want);
    let last = json(&w.object("daily", "last_run.json").unwrap());
    assert_eq!(records(&last, "unique").1, 0, "nothing is loaded twice");
    // With its working copy kept, the same.
    w.run(&["run", "--emulate", "--end", end, p], "cache", &[])
        .expect_code(0);
    assert!(read_parquet(&w.scratch.path("lake/messages")) == want);

    // `state show` reads the store (no working copy needed); `state reset` forgets there too.
    remove_cache(&w, "cache");
    let show = w
        .run(&["state", "show", p], "other-cache", &[])
        .expect_code(0)
        .stdout();
    assert!(
        show.contains("state in s3://state/chatlake/_state/daily")
            && show.contains("window(s) committed, 0 failed"),
        "{show}"
    );
    assert!(
        show.contains("committed through 2025-01-20T14:59:59+00:00"),
        "{show}"
    );
    let shown = w
        .run(&["state", "show", "--json", p], "other-cache", &[])
        .expect_code(0)
        .stdout();
    assert_eq!(
        json(shown.as_bytes())["lw"]["windows"],
        json(&w.object("daily", "sources/lw.json").unwrap())["windows"]
    );
    let reset = w
        .run(
            &["state", "reset", p, "--source", "lw", "--yes"],
            "cache",
            &[],
        )
        .expect_code(0);
    assert!(reset.stdout().contains("reset lw"), "{}", reset.stdout());
    // A reset is not destructive (issue 20): the store's ledger holds the windows as waiting
    // to be loaded again.
    let ledger = json(&w.object("daily", "sources/lw.json").unwrap());
    let windows = ledger["windows"].as_object().unwrap();
    assert!(
        !windows.is_empty() && windows.values().all(|w| w["status"] == "reload"),
        "the store's ledger was reset: {ledger}"
    );
    let show = w
        .run(&["state", "show", p], "other-cache", &[])
        .expect_code(0)
        .stdout();
    assert!(
        show.contains("source `lw`: 0 window(s) committed"),
        "{show}"
    );
    // Loaded again from a fresh copy, once.
    remove_cache(&w, "cache");
    w.run(&["run", "--emulate", "--end", end, p], "cache", &[])
        .expect_code(0);
    assert!(
        read_parquet(&w.scratch.path("lake/messages")) == want,
        "reloaded once, not twice"
    );
    // --full-refresh forgets in the store too, before the sinks start: loaded again, once.
    w.run(
        &["run", "--emulate", "--full-refresh", "--end", end, p],
        "cache",
        &[],
    )
    .expect_code(0);
    assert!(read_parquet(&w.scratch.path("lake/messages")) == want);
    let last = json(&w.object("daily", "last_run.json").unwrap());
    assert!(
        records(&last, "unique").1 > 5_000,
        "everything was loaded again"
    );
}

#[test]
fn a_second_run_fails_naming_the_holder_and_a_killed_runs_lock_is_taken_over_at_once() {
    let w = World::new();
    let p = w.pipeline(SLOW, STATE_URL);
    let p = p.to_str().unwrap();
    let args = ["run", "--emulate", "--faults", SLOW_FAULTS, p];
    let mut first = w.spawn(&args, "cache", &[]);
    w.wait_for("slow", "lock.json", &mut first);
    let lock = json(&w.object("slow", "lock.json").unwrap());
    assert_eq!(lock["pid"], first.id());

    // On this machine, the local lock of the working copy answers first.
    let same = w.run(&args, "cache", &[]).expect_code(1);
    assert!(
        same.stderr()
            .contains("another run of this pipeline is in progress"),
        "{}",
        same.stderr()
    );
    // Another working copy (another machine, as far as the state knows): the lock object.
    let other = w.run(&args, "cache-2", &[]).expect_code(1);
    let err = other.stderr();
    assert!(
        err.contains("another run of this pipeline is in progress")
            && err.contains(&format!("pid {}", first.id()))
            && err.contains("s3://state/chatlake/_state/slow/lock.json"),
        "{err}"
    );
    let reset = w
        .run(&["state", "reset", p, "--yes"], "cache-2", &[])
        .expect_code(1);
    assert!(reset.stderr().contains("in progress"), "{}", reset.stderr());

    assert!(
        first.try_wait().unwrap().is_none(),
        "the first run is still going (else this proves nothing); slow the emulator down"
    );
    first.kill().unwrap(); // SIGKILL: the lock object stays, its lease 60 s ahead
    first.wait().unwrap();
    assert!(w.object("slow", "lock.json").is_some());
    let started = Instant::now();
    let out = w.run(&args, "cache-2", &[]).expect_code(0);
    assert!(
        out.stderr().contains("taking over the lock") && out.stderr().contains("is gone"),
        "{}",
        out.stderr()
    );
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "taken over at once, not after the lease"
    );
    assert!(w.object("slow", "lock.json").is_none(), "released");
    assert!(common::temp_files(&w.scratch.path("lake")).is_empty());
}

fn foreign_lock(lease_until: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "run_id": "20250101T000000Z-abcdef",
        "host": "elsewhere.example",
        "pid": 4242,
        "started": "2025-01-01T00:00:00Z",
        "lease_until": lease_until,
    }))
    .unwrap()
}

#[test]
fn a_foreign_lock_is_taken_over_once_its_lease_expired_and_not_before() {
    let w = World::new();
    let p = w.pipeline(SLOW, STATE_URL);
    let p = p.to_str().unwrap();
    let args = ["run", "--emulate", p];
    w.put(
        "slow",
        "lock.json",
        foreign_lock(chrono::Utc::now() + chrono::Duration::hours(1)),
    );
    let held = w.run(&args, "cache", &[]).expect_code(1);
    assert!(
        held.stderr().contains("elsewhere.example") && held.stderr().contains("pid 4242"),
        "{}",
        held.stderr()
    );
    assert!(
        w.objects("slow").iter().all(|o| o == "lock.json"),
        "nothing was done"
    );

    w.put(
        "slow",
        "lock.json",
        foreign_lock(chrono::Utc::now() - chrono::Duration::seconds(1)),
    );
    let out = w.run(&args, "cache", &[]).expect_code(0);
    assert!(
        out.stderr().contains("its lease expired"),
        "{}",
        out.stderr()
    );
    assert!(w.object("slow", "sources/lw.json").is_some());
    assert!(w.object("slow", "lock.json").is_none());
}

#[test]
fn the_lock_is_renewed_while_a_run_lasts_and_a_run_that_lost_it_commits_nothing_more() {
    let w = World::new();
    let p = w.pipeline(SLOW, STATE_URL);
    let p = p.to_str().unwrap();
    let args = ["run", "--emulate", "--faults", SLOW_FAULTS, p];
    // About six one-second windows: the run outlasts a three-second lease twice.
    let lease = [("CHATLAKE_STATE_LEASE_SECS", "3")];

    // A run longer than its lease: renewed, it commits every window.
    let started = Instant::now();
    let mut run = w.spawn(&args, "cache", &lease);
    w.wait_for("slow", "lock.json", &mut run);
    let first = json(&w.object("slow", "lock.json").unwrap())["lease_until"].clone();
    std::thread::sleep(Duration::from_millis(2500));
    let lock = w
        .object("slow", "lock.json")
        .expect("the run still holds its lock");
    assert_ne!(json(&lock)["lease_until"], first, "renewed");
    let (code, err) = stderr_of(run);
    assert_eq!(code, 0, "{err}");
    assert!(
        started.elapsed() > Duration::from_secs(6),
        "the run outlasted its lease twice (else this proves nothing); slow the emulator down"
    );
    let ledger = json(&w.object("slow", "sources/lw.json").unwrap());
    assert_eq!(ledger["windows"].as_object().unwrap().len(), 6);

    // Another run takes the lock over (its holder looked gone to it): this one stops committing.
    let w = World::new();
    let p = w.pipeline(SLOW, STATE_URL);
    let p = p.to_str().unwrap();
    let args = ["run", "--emulate", "--faults", SLOW_FAULTS, p];
    let mut run = w.spawn(&args, "cache", &lease);
    w.wait_for("slow", "sources/lw.json", &mut run);
    w.put(
        "slow",
        "lock.json",
        foreign_lock(chrono::Utc::now() + chrono::Duration::hours(1)),
    );
    let (code, err) = stderr_of(run);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no longer holds the lock"), "{err}");
    let ledger = json(&w.object("slow", "sources/lw.json").unwrap());
    assert!(
        ledger["windows"].as_object().unwrap().len() < 6,
        "the run did not commit on: {ledger}"
    );
    assert!(
        json(&w.object("slow", "lock.json").unwrap())["host"] == "elsewhere.example",
        "the new holder's lock is left alone"
    );
}

#[test]
fn a_ledger_changed_by_another_writer_stops_the_run_without_committing() {
    let w = World::new();
    let p = w.pipeline(SLOW, STATE_URL);
    let p = p.to_str().unwrap();
    let args = ["run", "--emulate", "--faults", SLOW_FAULTS, p];
    let mut run = w.spawn(&args, "cache", &[]);
    w.wait_for("slow", "sources/lw.json", &mut run);
    // Another writer (a run that believed it held the lock) commits a ledger of its own.
    let mut theirs = json(&w.object("slow", "sources/lw.json").unwrap());
    theirs["last_run"] = "another-writer".into();
    let theirs = serde_json::to_vec_pretty(&theirs).unwrap();
    w.put("slow", "sources/lw.json", theirs.clone());
    let (code, err) = stderr_of(run);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("another run changed the ledger of `slow`")
            && err.contains("s3://state/chatlake/_state/slow/sources/lw.json"),
        "{err}"
    );
    assert_eq!(
        w.object("slow", "sources/lw.json").unwrap(),
        theirs,
        "the run committed nothing over the other writer's ledger"
    );
    assert!(w.object("slow", "lock.json").is_none(), "released");
}

#[test]
fn a_bad_state_dir_fails_at_the_start_naming_the_url_and_never_a_secret() {
    let w = World::new();
    let p = w.pipeline(SLOW, STATE_URL);
    let p = p.to_str().unwrap();
    let secret = "Wr0ng-Secret-Value-123";
    let denied = w
        .run(
            &["run", "--emulate", p],
            "cache",
            &[("AWS_SECRET_ACCESS_KEY", secret)],
        )
        .expect_code(1);
    let err = denied.stderr();
    assert!(err.contains("s3://state/chatlake/_state/slow"), "{err}");
    assert!(!err.contains(secret), "{err}");
    assert!(
        !w.scratch.path("lake/messages").exists(),
        "nothing was fetched"
    );

    let missing = w.pipeline(SLOW, "s3://no-such-bucket/_state");
    let out = w
        .run(
            &["run", "--emulate", missing.to_str().unwrap()],
            "cache",
            &[],
        )
        .expect_code(1);
    assert!(
        out.stderr().contains("s3://no-such-bucket/_state/slow"),
        "{}",
        out.stderr()
    );

    // A URL chatlake cannot use is a bad pipeline file, found offline.
    let bad = w.pipeline(SLOW, "ftp://host/_state");
    for command in ["validate", "plan", "run"] {
        let out = w
            .run(&[command, bad.to_str().unwrap()], "cache", &[])
            .expect_code(2);
        assert!(
            out.stderr().contains("pipeline.state_dir") && out.stderr().contains("ftp"),
            "{command}: {}",
            out.stderr()
        );
    }
    // A good one validates and plans without a request (no server needed).
    let out = w.scratch.run(&["validate", "--emulate", p]).expect_code(0);
    assert!(out.stdout().contains("ok"), "{}", out.stdout());
    let plan = w
        .scratch
        .run(&["plan", "--emulate", p])
        .expect_code(0)
        .stdout();
    assert!(
        plan.contains("state: s3://state/chatlake/_state/slow"),
        "{plan}"
    );
}

/// Input files with rows that cannot be represented: the run's dead letters and summary end up
/// in the store, and the files' checkpoints (which file was loaded) let a run from a fresh
/// working copy load nothing again.
const FILES: &str = r#"
[pipeline]
name = "files"
state_dir = "STATE_DIR"

[sources.lw]
type = "lineworks_message_contents"
files = ["in/*.csv"]

[transforms.canonical]
type = "normalize"
inputs = ["lw"]

[sinks.out]
type = "jsonl"
inputs = ["canonical"]
path = "./out"
"#;

#[test]
fn dead_letters_summaries_and_file_checkpoints_live_in_the_store() {
    let w = World::new();
    let input = w.scratch.path("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::copy(
        common::repo("fixtures/lineworks/malformed.csv"),
        input.join("malformed.csv"),
    )
    .unwrap();
    let p = w.pipeline(FILES, STATE_URL);
    let p = p.to_str().unwrap();
    w.run(&["run", p], "cache", &[]).expect_code(3);
    let objects = w.objects("files");
    let dead: Vec<&String> = objects
        .iter()
        .filter(|o| o.starts_with("dead_letters/") && o.ends_with(".dead.json-lines"))
        .collect();
    assert_eq!(dead.len(), 1, "{objects:?}");
    let letters = String::from_utf8(w.object("files", dead[0]).unwrap()).unwrap();
    assert_eq!(letters.lines().count(), 3, "{letters}");
    let last = json(&w.object("files", "last_run.json").unwrap());
    assert_eq!(last["status"], "dead_lettered", "{last}");
    assert!(
        objects
            .iter()
            .any(|o| o == &format!("runs/{}.json", last["run_id"].as_str().unwrap())),
        "{objects:?}"
    );
    let ledger = json(&w.object("files", "sources/lw.json").unwrap());
    assert!(
        ledger["windows"]
            .as_object()
            .unwrap()
            .values()
            .all(|w| !w["checkpoint"].is_null()),
        "{ledger}"
    );

    remove_cache(&w, "cache");
    w.run(&["run", p], "cache", &[]).expect_code(0);
    let last = json(&w.object("files", "last_run.json").unwrap());
    assert_eq!(
        records(&last, "lw").1,
        0,
        "the loaded file is not read again"
    );
    assert_eq!(common::read_jsonl(&w.scratch.path("out")).len(), 2);
}

#[test]
fn a_source_renamed_with_its_state_in_s3_goes_on_from_the_store() {
    let w = World::new();
    let clean = Scratch::new();
    let local = clean.pipeline("daily.toml", &DAILY.replace("STATE_DIR", "./lake/_state"));
    let end = "2025-01-20T23:59:59+09:00";
    clean
        .run(&["run", "--emulate", "--end", end, local.to_str().unwrap()])
        .expect_code(0);
    let want = read_parquet(&clean.path("lake/messages"));

    let p = w.pipeline(DAILY, STATE_URL);
    w.run(
        &[
            "run",
            "--emulate",
            "--end",
            "2025-01-10T23:59:59+09:00",
            p.to_str().unwrap(),
        ],
        "cache",
        &[],
    )
    .expect_code(0);
    // Renamed in the file, then in the state: the store's ledger object moves to the new name.
    let renamed = DAILY
        .replace("[sources.lw]", "[sources.line]")
        .replace(r#"inputs = ["lw"]"#, r#"inputs = ["line"]"#);
    let p = w.pipeline(&renamed, STATE_URL);
    let p = p.to_str().unwrap();
    let shown = w
        .run(&["state", "show", p], "other-cache", &[])
        .expect_code(0);
    assert!(
        shown
            .stdout()
            .contains("state of sources no longer in the pipeline file")
            && shown.stdout().contains("source `lw`: "),
        "{}",
        shown.stdout()
    );
    w.run(&["state", "rename-source", p, "lw", "line"], "cache", &[])
        .expect_code(0);
    let objects = w.objects("daily");
    assert!(
        objects.iter().any(|o| o == "sources/line.json")
            && !objects
                .iter()
                .any(|o| o == "sources/lw.json" || o == "lock.json"),
        "{objects:?}"
    );
    // From a fresh working copy, the renamed source goes on where `lw` stopped.
    remove_cache(&w, "cache");
    let ran = w
        .run(&["run", "--emulate", "--end", end, p], "cache", &[])
        .expect_code(0);
    assert!(!ran.stderr().contains("no longer has"), "{}", ran.stderr());
    let got = read_parquet(&w.scratch.path("lake/messages"));
    assert_eq!(got.len(), want.len());
    assert!(got == want, "nothing is loaded twice");
}
