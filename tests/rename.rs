//! Renamed and removed sources through the binary: the state of a source the pipeline file no
//! longer has is warned of and listed; `state rename-source` lets the renamed source go on from
//! where the old name stopped (nothing loaded twice, the lake of one clean run); `state
//! forget-source` retires a removed one, asks first, and deletes nothing in the lake.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{Scratch, files, read_jsonl, read_parquet};

/// Qlara (whose default lookback fetches the last day again each run) into a Parquet and a JSON
/// Lines sink, below a `keep = "latest"` dedupe across runs: a later version of a row loaded
/// under the old name must still take it out of the old name's files.
fn pipeline(source: &str) -> String {
    format!(
        r#"
[pipeline]
name = "renamed"
state_dir = "./lake/_state"

[sources.{source}]
type = "qlara_message_history"
start = "2025-01-01T00:00:00Z"
window_days = 1
poll_interval = "20ms"
requests_per_minute = 2400
retry = {{ max_attempts = 5, initial_backoff = "10ms", max_backoff = "50ms" }}

[transforms.canonical]
type = "normalize"
inputs = ["{source}"]

[transforms.latest]
type = "dedupe"
inputs = ["canonical"]
key = ["provider", "message_id"]
keep = "latest"
across_runs = true

[sinks.lake]
type = "parquet"
inputs = ["latest"]
path = "./lake/messages"
partition_by = ["sent_date"]

[sinks.archive]
type = "jsonl"
inputs = ["latest"]
path = "./lake/archive"
"#
    )
}

const ENDS: [&str; 4] = [
    "2025-01-01T11:59:59Z",
    "2025-01-01T23:59:59Z",
    "2025-01-02T11:59:59Z",
    "2025-01-02T23:59:59Z",
];

fn run_to(s: &Scratch, p: &Path, end: &str) -> common::Outcome {
    s.run(&["run", "--emulate", "--end", end, p.to_str().unwrap()])
}

/// What a reader of both sinks sees, order-free, without the `run_id` column.
fn lake(dir: &Path) -> (Vec<common::Row>, Vec<String>) {
    let mut archive: Vec<String> = read_jsonl(&dir.join("lake/archive"))
        .into_iter()
        .map(|mut v| {
            v.as_object_mut().unwrap().remove("run_id");
            v.to_string()
        })
        .collect();
    archive.sort();
    (read_parquet(&dir.join("lake/messages")), archive)
}

fn lake_files(dir: &Path) -> Vec<PathBuf> {
    let mut all = files(&dir.join("lake/messages"), ".parquet");
    all.extend(files(&dir.join("lake/archive"), ".jsonl"));
    all
}

#[test]
fn a_renamed_source_goes_on_from_where_its_old_name_stopped() {
    let clean = Scratch::new();
    let p = clean.pipeline("renamed.toml", &pipeline("texts"));
    run_to(&clean, &p, ENDS[3]).expect_code(0);
    let want = lake(clean.dir.path());
    assert!(!want.0.is_empty());

    let s = Scratch::new();
    let p = s.pipeline("renamed.toml", &pipeline("sms"));
    run_to(&s, &p, ENDS[0]).expect_code(0);
    run_to(&s, &p, ENDS[1]).expect_code(0);

    // Renamed in the file only: validate and state show name the old source's state.
    s.pipeline("renamed.toml", &pipeline("texts"));
    let path = p.to_str().unwrap();
    let validated = s.run(&["validate", "--emulate", path]).expect_code(0);
    assert!(
        validated
            .stderr()
            .contains("the state holds source `sms`, which the pipeline file no longer has")
            && validated.stderr().contains("rename-source"),
        "{}",
        validated.stderr()
    );
    let shown = s.run(&["state", "show", path]).expect_code(0);
    assert!(
        shown
            .stdout()
            .contains("state of sources no longer in the pipeline file")
            && shown.stdout().contains("source `sms`: "),
        "{}",
        shown.stdout()
    );

    // Only onto a source of the file, and only from one it no longer has.
    s.run(&["state", "rename-source", path, "sms", "nope"])
        .expect_code(2);
    s.run(&["state", "rename-source", path, "texts", "sms"])
        .expect_code(2);
    let renamed = s
        .run(&["state", "rename-source", path, "sms", "texts"])
        .expect_code(0);
    assert!(
        renamed
            .stdout()
            .contains("source `texts` took over the state of `sms`"),
        "{}",
        renamed.stdout()
    );
    assert!(!s.path("lake/_state/renamed/sources/sms.json").exists());
    let shown = s.run(&["state", "show", path]).expect_code(0);
    assert!(
        !shown.stdout().contains("no longer in the pipeline file")
            && shown.stdout().contains("renamed from `sms`"),
        "{}",
        shown.stdout()
    );

    // The renamed source goes on: each later run, with its lookback, replaces its windows'
    // files (named after `sms`) and adds no second copy.
    for end in &ENDS[2..] {
        let ran = run_to(&s, &p, end).expect_code(0);
        assert!(!ran.stderr().contains("no longer has"), "{}", ran.stderr());
    }
    let got = lake(s.dir.path());
    let mut ids: Vec<&str> = got.0.iter().map(|r| r.message_id.as_str()).collect();
    ids.sort();
    let loaded = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), loaded, "no row is loaded twice");
    assert_eq!(got.0.len(), want.0.len());
    assert!(got == want, "the lake is the lake of one clean run");
    assert!(
        lake_files(s.dir.path())
            .iter()
            .all(|f| f.to_string_lossy().contains(".sms-")),
        "the renamed source's files keep the keys of its first name"
    );
    // Running again adds nothing.
    run_to(&s, &p, ENDS[3]).expect_code(0);
    assert!(lake(s.dir.path()) == want);
}

#[test]
fn a_removed_sources_state_is_warned_of_and_forgotten_only_when_confirmed() {
    let s = Scratch::new();
    let p = s.pipeline("renamed.toml", &pipeline("sms"));
    run_to(&s, &p, ENDS[3]).expect_code(0);
    let before = lake_files(s.dir.path());
    assert!(!before.is_empty());
    let ledger = s.path("lake/_state/renamed/sources/sms.json");

    // The source was replaced by another in the file: a run warns before it loads anything.
    s.pipeline("renamed.toml", &pipeline("texts"));
    let path = p.to_str().unwrap();
    let ran = s.run(&["validate", "--emulate", path]).expect_code(0);
    assert!(
        ran.stderr().contains("source `sms`") && ran.stderr().contains("window(s) committed"),
        "{}",
        ran.stderr()
    );

    // Forgetting asks first: without a terminal it needs --yes; --dry-run only lists.
    let refused = s
        .run(&["state", "forget-source", path, "sms"])
        .expect_code(2);
    assert!(refused.stderr().contains("--yes"), "{}", refused.stderr());
    assert!(ledger.exists());
    let listed = s
        .run(&["state", "forget-source", path, "sms", "--dry-run"])
        .expect_code(0);
    assert!(
        listed.stdout().contains("would forget source `sms`")
            && listed.stdout().contains("Nothing is deleted from the lake"),
        "{}",
        listed.stdout()
    );
    assert!(ledger.exists());
    // A source still in the file is not forgotten (reset is for that).
    s.run(&["state", "forget-source", path, "texts", "--yes"])
        .expect_code(2);
    s.run(&["state", "forget-source", path, "sms", "--yes"])
        .expect_code(0);
    assert!(!ledger.exists());
    let shown = s.run(&["state", "show", path]).expect_code(0);
    assert!(
        shown.stdout().contains("retired sources")
            && shown.stdout().contains("source `sms`: ")
            && !shown.stdout().contains("no longer in the pipeline file"),
        "{}",
        shown.stdout()
    );

    // No warning any more, and the next run keeps every file the forgotten source loaded.
    let ran = run_to(&s, &p, ENDS[3]).expect_code(0);
    assert!(!ran.stderr().contains("no longer has"), "{}", ran.stderr());
    let after = lake_files(s.dir.path());
    for file in &before {
        assert!(after.contains(file), "{} was deleted", file.display());
    }
}
