//! Incremental loads through the binary: the window ledger, re-runs that add nothing, failed
//! windows filled in later, and runs killed with SIGKILL at several points that end, once run
//! again, with exactly the lake of one clean run.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Scratch, read_jsonl, read_parquet, repo, temp_files};

/// Six one-day windows served slowly enough to kill a run inside them.
const SLOW: &str = r#"
[pipeline]
name = "slow"
state_dir = "./lake/_state"

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

[transforms.unique]
type = "dedupe"
inputs = ["canonical"]

[sinks.lake]
type = "parquet"
inputs = ["unique"]
path = "./lake/messages"
partition_by = ["sent_date"]

[sinks.archive]
type = "jsonl"
inputs = ["unique"]
path = "./lake/archive"
max_rows_per_file = 300
"#;

const FAULTS: &str = "lineworks.slow_ms=15,lineworks.rate_limit_per_min=0";

fn run_slow(s: &Scratch, p: &Path) -> common::Outcome {
    s.run(&["run", "--emulate", "--faults", FAULTS, p.to_str().unwrap()])
}

/// The slow run as a child process, to kill or to run beside.
fn spawn_slow(s: &Scratch, p: &Path) -> std::process::Child {
    Command::new(BIN)
        .args(["run", "--emulate", "--faults", FAULTS, p.to_str().unwrap()])
        .current_dir(s.dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Everything a reader of the lake sees, order-free.
fn lake_rows(dir: &Path) -> (Vec<common::Row>, Vec<String>) {
    let parquet = read_parquet(&dir.join("lake/messages"));
    let mut archive: Vec<String> = read_jsonl(&dir.join("lake/archive"))
        .into_iter()
        .map(|mut v| {
            v.as_object_mut().unwrap().remove("run_id");
            v.to_string()
        })
        .collect();
    archive.sort();
    (parquet, archive)
}

#[test]
fn runs_killed_at_any_moment_end_with_the_lake_of_one_clean_run() {
    let clean = Scratch::new();
    let p = clean.pipeline("slow.toml", SLOW);
    let started = Instant::now();
    run_slow(&clean, &p).expect_code(0);
    let clean_secs = started.elapsed().as_secs_f64();
    let want = lake_rows(clean.dir.path());
    assert!(
        want.0.len() > 5_000 && want.0.len() == want.1.len(),
        "{}",
        want.0.len()
    );

    let s = Scratch::new();
    let p = s.pipeline("slow.toml", SLOW);
    // Kill points spread over the run: early, inside windows, near the end.
    let mut killed = 0;
    for fraction in [0.15, 0.35, 0.55, 0.8] {
        let mut child = spawn_slow(&s, &p);
        std::thread::sleep(Duration::from_secs_f64(clean_secs * fraction));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        child.wait().unwrap();
        // The ledger is the commit point: whatever it lists is already in every sink.
        assert_ledger_windows_are_in_the_lake(s.dir.path());
    }
    assert!(
        killed >= 2,
        "the kills landed after the runs had finished; slow the emulator down"
    );
    run_slow(&s, &p).expect_code(0);
    let got = lake_rows(s.dir.path());
    assert_eq!(
        got.0.len(),
        want.0.len(),
        "Parquet rows: none lost, none doubled"
    );
    assert!(got.0 == want.0, "Parquet rows differ from the clean run's");
    assert!(
        got.1 == want.1,
        "JSON Lines rows differ from the clean run's"
    );
    assert!(temp_files(&s.path("lake")).is_empty());
}

fn assert_ledger_windows_are_in_the_lake(dir: &Path) {
    let Ok(bytes) = std::fs::read(dir.join("lake/_state/slow/sources/lw.json")) else {
        return;
    };
    let ledger: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let names: Vec<String> = common::files(&dir.join("lake"), "")
        .iter()
        .filter(|p| !p.to_string_lossy().ends_with(".tmp"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for (key, w) in ledger["windows"].as_object().unwrap() {
        if w["status"] == "committed" {
            for sink in ["lake", "archive"] {
                let prefix = format!("part-slow.{sink}.{key}.");
                assert!(
                    names.iter().any(|n| n.starts_with(&prefix)),
                    "ledger lists {key}, but {sink} has no file of it"
                );
            }
        }
    }
}

/// The demo's LINE WORKS rows and files: its range is fixed, while the Zoom chat report must stay
/// within the last six months and so ends at "now" (a later run rightly finds newer messages).
fn lineworks_lake(s: &Scratch) -> (Vec<std::path::PathBuf>, Vec<common::Row>) {
    let dir = s.path("lake/messages/provider=lineworks");
    (common::files(&dir, ""), read_parquet(&dir))
}

/// Records the `lw` source sent in the last run.
fn lw_records(s: &Scratch) -> u64 {
    let last: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path("lake/_state/demo/last_run.json")).unwrap())
            .unwrap();
    last["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "lw")
        .unwrap()["records_out"]
        .as_u64()
        .unwrap()
}

#[test]
fn running_twice_adds_nothing_the_second_time() {
    let s = Scratch::new();
    let demo = repo("pipelines/demo.toml");
    s.run(&["run", "--emulate", demo.to_str().unwrap()])
        .expect_code(0);
    let before = lineworks_lake(&s);
    assert!(lw_records(&s) > 50_000);

    s.run(&["run", "--emulate", demo.to_str().unwrap()])
        .expect_code(0);
    assert_eq!(lw_records(&s), 0, "nothing of LINE WORKS is fetched again");
    let after = lineworks_lake(&s);
    assert_eq!(after.0, before.0, "the same files");
    assert!(after.1 == before.1, "the same rows");

    let plan = s
        .run(&["plan", "--emulate", demo.to_str().unwrap()])
        .expect_code(0)
        .stdout();
    assert!(
        plan.contains("source `lw`: 0 window(s) to fetch")
            && plan.contains("3 window(s) committed"),
        "{plan}"
    );
    let show = s
        .run(&["state", "show", demo.to_str().unwrap()])
        .expect_code(0)
        .stdout();
    assert!(
        show.contains("source `lw`: 3 window(s) committed, 0 failed"),
        "{show}"
    );
    assert!(
        show.contains("committed through 2025-03-31T14:59:59+00:00"),
        "{show}"
    );
}

#[test]
fn state_reset_and_full_refresh_load_again_without_doubling() {
    let s = Scratch::new();
    let demo = repo("pipelines/demo.toml");
    s.run(&["run", "--emulate", demo.to_str().unwrap()])
        .expect_code(0);
    let rows = lineworks_lake(&s).1;

    let out = s
        .run(&[
            "state",
            "reset",
            demo.to_str().unwrap(),
            "--source",
            "lw",
            "--yes",
        ])
        .expect_code(0);
    assert!(out.stdout().contains("reset lw"), "{}", out.stdout());
    s.run(&[
        "state",
        "reset",
        demo.to_str().unwrap(),
        "--source",
        "nope",
        "--yes",
    ])
    .expect_code(2);
    s.run(&["run", "--emulate", demo.to_str().unwrap()])
        .expect_code(0);
    assert!(lw_records(&s) > 50_000, "reloaded");
    assert!(lineworks_lake(&s).1 == rows, "reloaded once, not twice");

    s.run(&["run", "--emulate", "--full-refresh", demo.to_str().unwrap()])
        .expect_code(0);
    assert!(lw_records(&s) > 50_000, "reloaded");
    assert!(lineworks_lake(&s).1 == rows);
}

#[test]
fn a_window_that_failed_is_filled_in_by_the_next_run() {
    let s = Scratch::new();
    let dir = s.path("in");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        repo("fixtures/lineworks/ja_JP_sample.csv"),
        dir.join("a.csv"),
    )
    .unwrap();
    std::fs::copy(
        repo("fixtures/lineworks/partial_with_trailer.csv"),
        dir.join("b.csv"),
    )
    .unwrap();
    let p = s.pipeline(
        "p.toml",
        "[pipeline]\nname = \"files\"\nstate_dir = \"./state\"\n\n[sources.lw]\ntype = \"lineworks_message_contents\"\nfiles = [\"in/*.csv\"]\n\n[transforms.canonical]\ntype = \"normalize\"\ninputs = [\"lw\"]\n\n[sinks.out]\ntype = \"jsonl\"\ninputs = [\"canonical\"]\npath = \"./out\"\n",
    );
    s.run(&["run", p.to_str().unwrap()]).expect_code(1);
    assert_eq!(
        read_jsonl(&s.path("out")).len(),
        7,
        "a.csv committed, b.csv not"
    );
    let show = s
        .run(&["state", "show", p.to_str().unwrap()])
        .expect_code(0)
        .stdout();
    assert!(
        show.contains("1 window(s) committed, 1 failed") && show.contains("b.csv"),
        "{show}"
    );

    // The provider's file is fixed (downloaded again); the next run loads just that one.
    std::fs::write(
        dir.join("b.csv"),
        "\u{feff}Date,Sender,Recipient,Message room ID,Message\r\n2025-02-01 10:00:00,A(a@example.com),B(b@example.com),1,row before the fault\r\n",
    )
    .unwrap();
    let out = s.run(&["run", p.to_str().unwrap()]).expect_code(0);
    assert!(
        out.stdout().contains("(1 source records"),
        "only b.csv is read: {}",
        out.stdout()
    );
    let rows = read_jsonl(&s.path("out"));
    assert_eq!(rows.len(), 8);
    assert_eq!(
        rows.iter()
            .filter(|r| r["text"] == "row before the fault")
            .count(),
        1
    );
}

const LOOKBACK: &str = r#"
[pipeline]
name = "daily"
state_dir = "./lake/_state"

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

#[test]
fn lookback_refetches_but_across_runs_dedupe_loads_nothing_twice() {
    let clean = Scratch::new();
    let p = clean.pipeline("daily.toml", LOOKBACK);
    clean
        .run(&[
            "run",
            "--emulate",
            "--end",
            "2025-01-20T23:59:59+09:00",
            p.to_str().unwrap(),
        ])
        .expect_code(0);
    let want = read_parquet(&clean.path("lake/messages"));

    let s = Scratch::new();
    let p = s.pipeline("daily.toml", LOOKBACK);
    s.run(&[
        "run",
        "--emulate",
        "--end",
        "2025-01-10T23:59:59+09:00",
        p.to_str().unwrap(),
    ])
    .expect_code(0);
    let out = s
        .run(&[
            "run",
            "--emulate",
            "--end",
            "2025-01-20T23:59:59+09:00",
            p.to_str().unwrap(),
        ])
        .expect_code(0);
    let plan = s
        .run(&[
            "plan",
            "--emulate",
            "--end",
            "2025-01-20T23:59:59+09:00",
            p.to_str().unwrap(),
        ])
        .stdout();
    assert!(
        plan.contains("2025-01-18T00:00:00+09:00"),
        "the lookback shows in the plan: {plan}"
    );
    let got = read_parquet(&s.path("lake/messages"));
    assert_eq!(got.len(), want.len(), "{}", out.stdout());
    assert!(
        got == want,
        "two overlapping runs load what one clean run loads"
    );
    // The second run did fetch the three days again: its source sent more rows than it added.
    let canonical_in: u64 = serde_json::from_slice::<serde_json::Value>(
        &std::fs::read(s.path("lake/_state/daily/last_run.json")).unwrap(),
    )
    .unwrap()["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == "unique")
        .map(|c| c["records_in"].as_u64().unwrap() - c["records_out"].as_u64().unwrap())
        .sum();
    assert!(
        canonical_in > 1000,
        "about three days of rows were dropped as already loaded: {canonical_in}"
    );
}

/// Runs of one pipeline never overlap (a cron job that outlasts its interval): a second run or a
/// `state reset` while one runs does nothing and exits 1, naming the holder; the lock goes with
/// the process, even one killed with SIGKILL.
#[test]
fn a_second_run_of_a_pipeline_waits_for_no_one_and_changes_nothing() {
    let s = Scratch::new();
    let p = s.pipeline("slow.toml", SLOW);
    let mut first = spawn_slow(&s, &p);
    // The lock file says who holds it once the first run has started.
    let lock = s.path("lake/_state/slow/run.lock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&lock)
        .unwrap_or_default()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the first run never took the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = run_slow(&s, &p).expect_code(1);
    assert!(
        second
            .stderr()
            .contains("another run of this pipeline is in progress")
            && second.stderr().contains(&format!("pid {}", first.id())),
        "{}",
        second.stderr()
    );
    let reset = s
        .run(&["state", "reset", p.to_str().unwrap(), "--yes"])
        .expect_code(1);
    assert!(reset.stderr().contains("in progress"), "{}", reset.stderr());
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first run is still going (else this test proves nothing); slow the emulator down"
    );
    first.kill().unwrap(); // SIGKILL: the lock goes with the process
    first.wait().unwrap();
    run_slow(&s, &p).expect_code(0);
    assert_ledger_windows_are_in_the_lake(s.dir.path());
}
