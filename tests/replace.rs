//! `dedupe keep = "latest"` with `across_runs` through the binary: a message whose newer
//! version arrives after an earlier run loaded it is replaced, in every sink, so that a pipeline
//! run every few hours leaves the lake one clean run over the whole range leaves; and runs
//! killed at any point of that, run again, do too.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{BIN, Scratch, files, read_jsonl, read_parquet, temp_files};

const START: &str = "2025-01-01T00:00:00Z";
const END: &str = "2025-01-02T23:59:59Z";

/// A Qlara export shows each message as it stood at the end of its range: one sent shortly
/// before a run's end whose delivery report came later is loaded `SENT` by that run and
/// `DELIVERED` (a higher `version`) by the next, which must take the first version out of the
/// earlier run's files.
const PIPELINE: &str = r#"
[pipeline]
name = "edits"
state_dir = "./lake/_state"

[sources.sms]
type = "qlara_message_history"
start = "2025-01-01T00:00:00Z"
window_days = 1
poll_interval = "20ms"
requests_per_minute = 2400
retry = { max_attempts = 5, initial_backoff = "10ms", max_backoff = "50ms" }

[transforms.canonical]
type = "normalize"
inputs = ["sms"]

[transforms.latest]
type = "dedupe"
inputs = ["canonical"]
key = ["provider", "message_id"]
keep = "latest"
across_runs = true

[transforms.humans]
type = "bot_filter"
inputs = ["latest"]
mode = "exclude"
"#;

/// The three sinks both pipelines write: Parquet (fed by `lake_input`), JSON Lines and gzipped
/// CSV, each below the `latest` dedupe.
fn with_sinks(pipeline: &str, lake_input: &str) -> String {
    format!(
        r#"{pipeline}
[sinks.lake]
type = "parquet"
inputs = ["{lake_input}"]
path = "./lake/messages"
partition_by = ["provider", "sent_date"]

[sinks.archive]
type = "jsonl"
inputs = ["latest"]
path = "./lake/archive"
partition_by = ["sent_date"]

[sinks.sheet]
type = "csv"
inputs = ["latest"]
path = "./lake/sheet"
compression = "gzip"
"#
    )
}

fn run_to(s: &Scratch, p: &Path, end: &str, faults: &str) -> common::Outcome {
    s.run(&[
        "run",
        "--emulate",
        "--faults",
        faults,
        "--end",
        end,
        p.to_str().unwrap(),
    ])
}

/// Everything a reader of the three sinks sees, order-free, without the `run_id` column.
#[derive(Debug, PartialEq)]
struct Lake {
    parquet: Vec<common::Row>,
    jsonl: Vec<String>,
    csv: Vec<Vec<String>>,
}

fn lake(dir: &Path) -> Lake {
    let mut jsonl: Vec<String> = read_jsonl(&dir.join("lake/archive"))
        .into_iter()
        .map(|mut v| {
            v.as_object_mut().unwrap().remove("run_id");
            v.to_string()
        })
        .collect();
    jsonl.sort();
    let mut csv = Vec::new();
    for path in files(&dir.join("lake/sheet"), ".csv.gz") {
        let gz = flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap());
        let mut reader = csv::Reader::from_reader(gz);
        let headers = reader.headers().unwrap().clone();
        let run_id = headers.iter().position(|h| h == "run_id").unwrap();
        for record in reader.records() {
            let record = record.unwrap();
            csv.push(
                record
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != run_id)
                    .map(|(_, f)| f.to_string())
                    .collect(),
            );
        }
    }
    csv.sort();
    let lake = Lake {
        parquet: read_parquet(&dir.join("lake/messages")),
        jsonl,
        csv,
    };
    for sink in ["messages", "archive", "sheet"] {
        assert!(temp_files(&dir.join("lake").join(sink)).is_empty());
    }
    lake
}

/// The ends of runs every six hours through the range.
fn ends() -> Vec<String> {
    let start: DateTime<Utc> = START.parse().unwrap();
    let end: DateTime<Utc> = END.parse().unwrap();
    let mut out = Vec::new();
    let mut t = start + chrono::Duration::hours(6) - chrono::Duration::seconds(1);
    while t < end {
        out.push(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        t += chrono::Duration::hours(6);
    }
    out.push(END.to_string());
    out
}

/// Rows the sinks took out of earlier files, over every run saved in the state directory.
fn removed(dir: &Path, pipeline: &str) -> u64 {
    files(
        &dir.join("lake/_state").join(pipeline).join("runs"),
        ".json",
    )
    .iter()
    .map(|p| {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        v["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["records_removed"].as_u64().unwrap_or(0))
            .sum::<u64>()
    })
    .sum()
}

fn clean_lake() -> Lake {
    let clean = Scratch::new();
    let p = clean.pipeline("edits.toml", &with_sinks(PIPELINE, "humans"));
    run_to(&clean, &p, END, "").expect_code(0);
    assert_eq!(
        removed(clean.dir.path(), "edits"),
        0,
        "one run replaces nothing"
    );
    lake(clean.dir.path())
}

#[test]
fn runs_every_few_hours_replace_earlier_versions_and_end_with_the_lake_of_one_run() {
    let want = clean_lake();

    let s = Scratch::new();
    let p = s.pipeline("edits.toml", &with_sinks(PIPELINE, "humans"));
    for end in ends() {
        run_to(&s, &p, &end, "").expect_code(0);
    }
    let removed = removed(s.dir.path(), "edits");
    eprintln!("rows removed over the runs: {removed}");
    // Reports that came after a run's end, in each of the three sinks.
    assert!(removed >= 9, "the runs replaced rows: {removed}");
    let got = lake(s.dir.path());
    assert_eq!(got.parquet.len(), want.parquet.len());
    assert_eq!(got.jsonl.len(), want.jsonl.len());
    assert_eq!(got.csv.len(), want.csv.len());
    assert!(got == want, "the runs leave the lake of one clean run");
    assert!(
        !s.path("lake/_state/edits/removals")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some()),
        "every removal log was applied and deleted"
    );

    // Running again adds and removes nothing.
    run_to(&s, &p, END, "").expect_code(0);
    assert!(lake(s.dir.path()) == want);
}

#[test]
fn a_run_repeating_the_last_runs_end_fetches_its_windows_again_and_replaces_them() {
    // With a lookback, a second run to the same end fetches the same windows again (same
    // keys). Their rows must not be dropped as "loaded before" by their own earlier load, or
    // the ledger would name the second run for files the first one wrote, and a later newer
    // version could no longer take the first one's rows out.
    let want = clean_lake();
    let s = Scratch::new();
    let p = s.pipeline("edits.toml", &with_sinks(PIPELINE, "humans"));
    let first = &ends()[1];
    run_to(&s, &p, first, "").expect_code(0);
    run_to(&s, &p, first, "").expect_code(0);
    run_to(&s, &p, END, "").expect_code(0);
    assert!(
        lake(s.dir.path()) == want,
        "a repeated run, then a later one, leave the lake of one clean run"
    );
}

/// Runs the pipeline to `end` as a child and kills it with SIGKILL `after` the moment `ready`
/// first holds (or when it exits).
fn kill_when(s: &Scratch, p: &Path, end: &str, ready: impl Fn() -> bool, after: Duration) -> bool {
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--emulate",
            "--faults",
            "qlara.slow_jobs_ms=30",
            "--end",
            end,
            p.to_str().unwrap(),
        ])
        .current_dir(s.dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut killed = false;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if ready() {
            std::thread::sleep(after);
            killed = child.kill().is_ok();
            let _ = child.wait();
            break;
        }
        assert!(Instant::now() < deadline, "the run did not finish");
        std::thread::sleep(Duration::from_micros(200));
    }
    killed
}

#[test]
fn runs_killed_while_replacing_rows_end_with_the_lake_of_one_run() {
    let want = clean_lake();
    let s = Scratch::new();
    let p = s.pipeline("edits.toml", &with_sinks(PIPELINE, "humans"));
    let removals = s.path("lake/_state/edits/removals");
    let log_written = || {
        removals.read_dir().is_ok_and(|d| {
            d.flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "arrows"))
        })
    };
    let mut caught_with_log = 0;
    for (i, end) in ends().iter().enumerate() {
        // Every other run is killed: the moment its removal log is durable (its windows are
        // committing), a little later (the sinks are rewriting earlier files), or while it
        // fetches; then run again.
        match i % 4 {
            1 => {
                kill_when(&s, &p, end, log_written, Duration::ZERO);
                if log_written() {
                    caught_with_log += 1;
                    let shown = s
                        .run(&["state", "show", p.to_str().unwrap()])
                        .expect_code(0);
                    assert!(
                        shown.stdout().contains("removal log(s) not yet applied"),
                        "{}",
                        shown.stdout()
                    );
                }
            }
            3 => {
                kill_when(
                    &s,
                    &p,
                    end,
                    log_written,
                    Duration::from_millis(5 * i as u64),
                );
            }
            2 => {
                let started = Instant::now();
                kill_when(
                    &s,
                    &p,
                    end,
                    || started.elapsed() > Duration::from_millis(150),
                    Duration::ZERO,
                );
            }
            _ => {}
        }
        run_to(&s, &p, end, "").expect_code(0);
    }
    assert!(
        caught_with_log > 0,
        "at least one run was killed with its removal log not yet applied"
    );
    let got = lake(s.dir.path());
    if got != want {
        eprintln!(
            "parquet {} vs {}, jsonl {} vs {}, csv {} vs {}",
            got.parquet.len(),
            want.parquet.len(),
            got.jsonl.len(),
            want.jsonl.len(),
            got.csv.len(),
            want.csv.len()
        );
        for r in &got.jsonl {
            if !want.jsonl.contains(r) {
                eprintln!("EXTRA {r}");
            }
        }
        for r in &want.jsonl {
            if !got.jsonl.contains(r) {
                eprintln!("MISSING {r}");
            }
        }
    }
    assert!(
        got == want,
        "killed runs, run again, leave the lake of one clean run"
    );
}

/// One saved Zoom page (the user-messages endpoint's answer plus `user_id`/`to_contact`).
fn zoom_page(messages: &[(usize, &str, i64)]) -> String {
    let messages: Vec<serde_json::Value> = messages
        .iter()
        .map(|(i, status, ms)| {
            let at = DateTime::<Utc>::from_timestamp_millis(*ms).unwrap();
            serde_json::json!({
                "id": format!("ZM-{i:04}"),
                "message": if *status == "Deleted" { String::new() } else { format!("message {i} ({status})") },
                "sender": "user01@example.com",
                "sender_member_id": "mem01",
                "sender_display_name": "User 01",
                "date_time": at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                "timestamp": ms,
                "status": status,
                "files": [],
            })
        })
        .collect();
    serde_json::json!({
        "user_id": "user01@example.com",
        "to_contact": "user02@example.com",
        "page_size": 50,
        "next_page_token": "",
        "messages": messages,
    })
    .to_string()
        + "\n"
}

const ZOOM_FILES: &str = r#"
[pipeline]
name = "zoom_edits"
state_dir = "./lake/_state"

[sources.saved]
type = "zoom_user_messages"
files = FILES

[transforms.canonical]
type = "normalize"
inputs = ["saved"]

[transforms.latest]
type = "dedupe"
inputs = ["canonical"]
key = ["provider", "stream", "message_id"]
keep = "latest"
across_runs = true
"#;

/// Two days of saved pages: the first file has 30 messages of 1 May; the second, fetched a day
/// later, edits ten of them and deletes one (versions of 2 May, so another `sent_date`
/// partition), repeats five unchanged, and adds ten new ones.
fn write_zoom_files(s: &Scratch) {
    let day1 = DateTime::parse_from_rfc3339("2025-05-01T08:00:00Z")
        .unwrap()
        .timestamp_millis();
    let day2 = day1 + 86_400_000;
    let first: Vec<(usize, &str, i64)> = (0..30)
        .map(|i| (i, "Normal", day1 + i as i64 * 60_000))
        .collect();
    let mut second: Vec<(usize, &str, i64)> = (0..10)
        .map(|i| (i, "Edited", day2 + i as i64 * 60_000))
        .collect();
    second.push((12, "Deleted", day2 + 3_600_000));
    second.extend((20..25).map(|i| (i, "Normal", day1 + i as i64 * 60_000)));
    second.extend((30..40).map(|i| (i, "Normal", day2 + i as i64 * 60_000)));
    std::fs::write(s.path("a.jsonl"), zoom_page(&first)).unwrap();
    std::fs::write(s.path("b.jsonl"), zoom_page(&second)).unwrap();
}

fn zoom_pipeline(s: &Scratch, files: &[&str]) -> std::path::PathBuf {
    let list = format!(
        "[{}]",
        files
            .iter()
            .map(|f| format!("\"{f}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    s.pipeline(
        "zoom.toml",
        &with_sinks(&ZOOM_FILES.replace("FILES", &list), "latest"),
    )
}

#[test]
fn zoom_edits_saved_a_day_later_replace_the_loaded_messages() {
    let clean = Scratch::new();
    write_zoom_files(&clean);
    let p = zoom_pipeline(&clean, &["a.jsonl", "b.jsonl"]);
    clean.run(&["run", p.to_str().unwrap()]).expect_code(0);
    let want = lake(clean.dir.path());
    assert_eq!(want.parquet.len(), 40);

    let s = Scratch::new();
    write_zoom_files(&s);
    let p = zoom_pipeline(&s, &["a.jsonl"]);
    s.run(&["run", p.to_str().unwrap()]).expect_code(0);
    assert_eq!(lake(s.dir.path()).parquet.len(), 30);
    let p = zoom_pipeline(&s, &["a.jsonl", "b.jsonl"]);
    let out = s.run(&["run", p.to_str().unwrap()]).expect_code(0);
    assert!(
        out.stdout()
            .contains("lake: 11 row(s) of earlier runs replaced by newer versions"),
        "{}",
        out.stdout()
    );
    let got = lake(s.dir.path());
    assert!(
        got == want,
        "the second run leaves the lake of one run over both files"
    );
    let edited = got
        .parquet
        .iter()
        .filter(|r| r.text.as_deref().is_some_and(|t| t.ends_with("(Edited)")))
        .count();
    assert_eq!(edited, 10);
    // Eleven rows of the first file replaced, in each of the three sinks; every 1 May file of
    // the first run was rewritten in place, and none of the second run's doubles them.
    assert_eq!(removed(s.dir.path(), "zoom_edits"), 33);
}
