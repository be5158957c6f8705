//! Issue 15 item 3: `chatlake run --shard K/N`. N workers, each its own process with its own
//! emulator, started together on one state_dir and one lake, leave the lake row for row equal
//! to one worker's run; a worker killed mid-run and run again alone completes the job; a wrong
//! `--shard` is exit 2; a change of N is refused.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chatlake_store::testing::SeaweedFs;
use common::{BIN, Scratch, files, read_jsonl, read_parquet, temp_files};

const WORKERS: u32 = 4;

/// Zoom file URLs at a fixed origin: each worker's emulator serves its files on a port of its
/// own, which would make the rows' `download_url` differ between processes.
const FILES: &str = "zoom.files_url=https://file.zoom.example";

/// Three sources split three ways: LINE WORKS stays on one worker (one download at a time per
/// domain); Qlara, with nothing below comparing windows, splits by window (a day each); Zoom,
/// below a keep-latest dedupe across runs, splits by conversation.
fn pipeline(base: &str, state_dir: &str) -> String {
    format!(
        r#"
[pipeline]
name = "workers"
state_dir = "{state_dir}"

[sources.lw]
type = "lineworks_message_contents"
auth = {{ type = "bearer", token = "x" }}
start = "2025-01-01T00:00:00+09:00"
end = "2025-02-28T23:59:59+09:00"

[sources.sms]
type = "qlara_message_history"
auth = {{ type = "api_key", key = "x" }}
start = "2025-01-01T00:00:00Z"
end = "2025-01-12T23:59:59Z"
window_days = 1
poll_interval = "20ms"
requests_per_minute = 2400
retry = {{ max_attempts = 5, initial_backoff = "10ms", max_backoff = "50ms" }}

[sources.zoom_dm]
type = "zoom_user_messages"
users = "all"
conversations = "all"
start = "2025-01-06T00:00:00Z"
end = "2025-01-07T23:59:59Z"
window_days = 1

[transforms.lw_rows]
type = "normalize"
inputs = ["lw"]

[transforms.sms_rows]
type = "normalize"
inputs = ["sms"]

[transforms.zoom_rows]
type = "normalize"
inputs = ["zoom_dm"]

[transforms.zoom_latest]
type = "dedupe"
inputs = ["zoom_rows"]
key = ["provider", "message_id"]
keep = "latest"
across_runs = true

[sinks.lake]
type = "parquet"
inputs = ["lw_rows", "sms_rows", "zoom_latest"]
path = "{base}/messages"
partition_by = ["provider", "sent_date"]

[sinks.archive]
type = "jsonl"
inputs = ["lw_rows", "sms_rows", "zoom_latest"]
path = "{base}/archive"
partition_by = ["provider"]
"#
    )
}

/// What a reader of both sinks sees, order-free, without the `run_id` column.
#[derive(Debug, PartialEq)]
struct Lake {
    parquet: Vec<common::Row>,
    jsonl: Vec<String>,
}

fn lake(dir: &Path) -> Lake {
    for sink in ["messages", "archive"] {
        assert!(temp_files(&dir.join(sink)).is_empty(), "no unfinished file");
    }
    read_lake(dir)
}

/// What a reader sees, also while files are unfinished (a killed worker's `.tmp` files, which
/// no reader's glob matches).
fn read_lake(dir: &Path) -> Lake {
    let mut jsonl: Vec<String> = read_jsonl(&dir.join("archive"))
        .into_iter()
        .map(|mut v| {
            v.as_object_mut().unwrap().remove("run_id");
            v.to_string()
        })
        .collect();
    jsonl.sort();
    Lake {
        parquet: read_parquet(&dir.join("messages")),
        jsonl,
    }
}

/// The lake of one worker's run (no `--shard`), on local disk.
fn one_worker() -> Lake {
    let one = Scratch::new();
    let p = one.pipeline("workers.toml", &pipeline("./lake", "./lake/_state"));
    one.run(&["run", "--emulate", "--faults", FILES, p.to_str().unwrap()])
        .expect_code(0);
    let want = lake(&one.path("lake"));
    let providers: std::collections::BTreeSet<&str> = want
        .parquet
        .iter()
        .filter_map(|r| r.partition.get("provider").map(String::as_str))
        .collect();
    assert_eq!(providers.len(), 3, "every source loads rows: {providers:?}");
    want
}

/// Starts worker `k` of `n` as a child process.
fn spawn(scratch: &Scratch, p: &Path, k: u32, n: u32, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--emulate", "--faults", FILES, p.to_str().unwrap()])
        .current_dir(scratch.dir.path())
        .env("RUST_LOG", "warn")
        .env("CHATLAKE_SHARD", format!("{k}/{n}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd.spawn().unwrap()
}

/// Starts `n` workers at once and waits for all of them; each must exit 0.
fn run_workers(scratch: &Scratch, p: &Path, n: u32, env: &[(&str, String)]) {
    let children: Vec<Child> = (0..n).map(|k| spawn(scratch, p, k, n, env)).collect();
    for (k, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "worker {k}/{n}: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn four_workers_started_together_leave_the_lake_of_one() {
    let want = one_worker();
    let s = Scratch::new();
    let p = s.pipeline("workers.toml", &pipeline("./lake", "./lake/_state"));
    run_workers(&s, &p, WORKERS, &[]);
    let got = lake(&s.path("lake"));
    assert_eq!(got.parquet.len(), want.parquet.len());
    assert!(got == want, "four workers load what one does, row for row");

    // Each worker has its own ledger; together they list every window once.
    let state = s.path("lake/_state/workers");
    let mut shares = Vec::new();
    for k in 0..WORKERS {
        let ledgers = files(
            &state.join(format!("shard-{k}-of-{WORKERS}/sources")),
            ".json",
        );
        let windows: usize = ledgers
            .iter()
            .map(|l| {
                let v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(l).unwrap()).unwrap();
                v["windows"].as_object().unwrap().len()
            })
            .sum();
        shares.push(windows);
    }
    assert!(
        shares.iter().filter(|n| **n > 0).count() >= 2,
        "the windows are spread over the workers: {shares:?}"
    );

    // A second round of the same workers adds nothing.
    run_workers(&s, &p, WORKERS, &[]);
    assert!(lake(&s.path("lake")) == want, "a second round adds nothing");

    // `state show` lists the workers; a run with another N, or without --shard, is refused.
    let show = s
        .run(&["state", "show", p.to_str().unwrap()])
        .expect_code(0);
    for k in 0..WORKERS {
        assert!(
            show.stdout().contains(&format!("worker {k}/{WORKERS}")),
            "{}",
            show.stdout()
        );
    }
    let other_n = s
        .run_env(
            &["run", "--emulate", p.to_str().unwrap()],
            &[("CHATLAKE_SHARD", "0/3")],
        )
        .expect_code(2);
    assert!(
        other_n.stderr().contains("--shard K/4"),
        "{}",
        other_n.stderr()
    );
    let unsharded = s
        .run(&["run", "--emulate", p.to_str().unwrap()])
        .expect_code(2);
    assert!(
        unsharded.stderr().contains("--shard K/4"),
        "{}",
        unsharded.stderr()
    );
    assert!(lake(&s.path("lake")) == want, "refused runs change nothing");
}

#[test]
fn a_worker_killed_mid_run_and_run_again_alone_completes_the_job() {
    let want = one_worker();
    let s = Scratch::new();
    let p = s.pipeline("workers.toml", &pipeline("./lake", "./lake/_state"));
    // Workers 1..N finish; worker 0 is killed once it has committed something (or has files
    // in flight), with slow Qlara jobs so that it is still running then.
    let others: Vec<Child> = (1..WORKERS)
        .map(|k| spawn(&s, &p, k, WORKERS, &[]))
        .collect();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "run",
        "--emulate",
        "--faults",
        &format!("qlara.slow_jobs_ms=200,{FILES}"),
        p.to_str().unwrap(),
    ])
    .current_dir(s.dir.path())
    .env("RUST_LOG", "warn")
    .env("CHATLAKE_SHARD", format!("0/{WORKERS}"))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut worker0 = cmd.spawn().unwrap();
    let ledger_dir = s.path(&format!("lake/_state/workers/shard-0-of-{WORKERS}/sources"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let killed = loop {
        if worker0.try_wait().unwrap().is_some() {
            break false;
        }
        let started = files(&ledger_dir, ".json")
            .iter()
            .any(|l| std::fs::read_to_string(l).is_ok_and(|t| t.contains("\"started\"")));
        if started {
            worker0.kill().unwrap();
            let _ = worker0.wait();
            break true;
        }
        assert!(Instant::now() < deadline, "worker 0 did not finish");
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(killed, "worker 0 was killed mid-run");
    for (k, child) in others.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "worker {}: {}",
            k + 1,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        read_lake(&s.path("lake")) != want,
        "the killed worker's share is missing"
    );
    s.run_env(
        &["run", "--emulate", "--faults", FILES, p.to_str().unwrap()],
        &[("CHATLAKE_SHARD", "0/4")],
    )
    .expect_code(0);
    assert!(
        lake(&s.path("lake")) == want,
        "worker 0 run again completes the job"
    );
}

#[test]
fn a_wrong_shard_is_exit_2_and_plan_shows_a_workers_share() {
    let s = Scratch::new();
    let p = s.pipeline("workers.toml", &pipeline("./lake", "./lake/_state"));
    let path = p.to_str().unwrap();
    for bad in ["4/4", "0/0", "1", "a/b", "-1/2"] {
        let flag = format!("--shard={bad}");
        let out = s.run(&["run", "--emulate", &flag, path]).expect_code(2);
        assert!(out.stderr().contains("--shard"), "{bad}: {}", out.stderr());
        s.run_env(&["plan", "--emulate", path], &[("CHATLAKE_SHARD", bad)])
            .expect_code(2);
    }
    assert!(!s.path("lake").exists(), "a refused run writes nothing");

    // Every Qlara window is in exactly one worker's plan; LINE WORKS in one worker's only.
    let whole = s.run(&["plan", "--emulate", path]).expect_code(0).stdout();
    assert!(
        !whole.contains("for all workers") && !whole.contains("--shard"),
        "plan without --shard is unchanged: {whole}"
    );
    let sms_windows = |plan: &str| -> Vec<String> {
        plan.lines()
            .skip_while(|l| !l.starts_with("source `sms`"))
            .skip(1)
            .take_while(|l| !l.starts_with("source `"))
            .filter(|l| l.trim_start().starts_with('['))
            .map(|l| l.split_once(']').unwrap().1.trim().to_string())
            .collect()
    };
    let mut all: Vec<String> = Vec::new();
    let mut lineworks_on = Vec::new();
    for k in 0..WORKERS {
        let plan = s
            .run(&[
                "plan",
                "--emulate",
                "--shard",
                &format!("{k}/{WORKERS}"),
                path,
            ])
            .expect_code(0)
            .stdout();
        assert!(plan.contains(&format!("worker {k}/{WORKERS}")), "{plan}");
        assert!(plan.contains("for all workers"), "{plan}");
        all.extend(sms_windows(&plan));
        if !plan.contains("every window of `lw` is loaded by worker") {
            lineworks_on.push(k);
        }
    }
    let mut want = sms_windows(&whole);
    want.sort();
    all.sort();
    assert_eq!(all.len(), 12, "{all:?}");
    assert_eq!(all, want, "the workers' shares are every window once");
    assert_eq!(
        lineworks_on.len(),
        1,
        "LINE WORKS is on one worker: {lineworks_on:?}"
    );
}

#[test]
fn four_workers_on_seaweedfs_leave_the_lake_of_one() {
    let want = one_worker();
    let s3 = SeaweedFs::start();
    s3.create_bucket("lake");
    let s = Scratch::new();
    std::fs::create_dir(s.path("tmp")).unwrap();
    let p = s.pipeline(
        "workers.toml",
        &pipeline("s3://lake/chat", "s3://lake/state"),
    );
    let mut env = s3.env();
    env.push(("TMPDIR", s.path("tmp").display().to_string()));
    env.push((
        "CHATLAKE_STATE_CACHE",
        s.path("cache").display().to_string(),
    ));
    run_workers(&s, &p, WORKERS, &env);

    let store = s3.store("lake");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let keys: Vec<String> = rt
        .block_on(store.list(""))
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .collect();
    for k in 0..WORKERS {
        assert!(
            keys.iter()
                .any(|key| key.starts_with(&format!("state/workers/shard-{k}-of-{WORKERS}/"))),
            "worker {k} keeps its state in its own prefix: {keys:?}"
        );
    }
    assert!(
        !keys.iter().any(|k| k == "state/workers/lock.json"),
        "no worker holds a shared lock after the run"
    );
    let mirror = s.path("mirror");
    for key in keys.iter().filter(|k| k.starts_with("chat/")) {
        let local = mirror.join(key);
        std::fs::create_dir_all(local.parent().unwrap()).unwrap();
        rt.block_on(store.download(&store.key(key), &local))
            .unwrap();
    }
    let got = lake(&mirror.join("chat"));
    assert_eq!(got.parquet.len(), want.parquet.len());
    assert!(
        got == want,
        "four workers on S3 load what one does, row for row"
    );
}
