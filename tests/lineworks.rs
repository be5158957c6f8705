//! LINE WORKS end to end: the real binary against the emulator on loopback, and hand-downloaded
//! files, with the lake read back and compared with the emulator's own dataset.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use chatlake_emulator::lineworks::data::messages_between;
use chatlake_emulator::{Emulator, EmulatorConfig};
use chrono::{DateTime, Utc};
use common::{Scratch, read_jsonl, read_parquet, repo, temp_files};

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// (sent_at µs, text) of every message the emulator serves in the range.
fn expected(seed: u64, scale: f64, start: &str, end: &str, bots: bool) -> Vec<(i64, String)> {
    let mut v: Vec<(i64, String)> = messages_between(seed, scale, utc(start), utc(end))
        .filter(|m| bots || !m.is_bot)
        .map(|m| (m.at.timestamp_micros(), m.text))
        .collect();
    v.sort();
    v
}

#[test]
fn the_demo_with_emulate_loads_every_human_message_once_in_utc() {
    let s = Scratch::new();
    let demo = repo("pipelines/demo.toml");
    let out = s
        .run(&["run", "--emulate", demo.to_str().unwrap()])
        .expect_code(0);
    assert!(out.stdout().contains("succeeded"), "{}", out.stdout());

    let want = expected(
        42,
        1.0,
        "2025-01-01T00:00:00+09:00",
        "2025-03-31T23:59:59+09:00",
        false,
    );
    assert!(
        want.len() > 50_000,
        "the demo should be substantial: {}",
        want.len()
    );
    // The demo also loads Qlara messages (tests/qlara.rs checks those): keep LINE WORKS rows.
    let rows: Vec<common::Row> = read_parquet(&s.path("lake/messages"))
        .into_iter()
        .filter(|r| r.partition.get("provider").map(String::as_str) == Some("lineworks"))
        .collect();
    let mut got: Vec<(i64, String)> = rows
        .iter()
        .map(|r| (r.sent_at_us, r.text.clone().unwrap()))
        .collect();
    got.sort();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "rows differ from the emulator's dataset");

    // Partitions are the UTC date of sent_at and the provider; ids are distinct; no bots.
    for r in &rows {
        let date = DateTime::from_timestamp_micros(r.sent_at_us)
            .unwrap()
            .date_naive()
            .to_string();
        assert_eq!(r.partition.get("sent_date"), Some(&date));
        assert_eq!(
            r.partition.get("provider").map(String::as_str),
            Some("lineworks")
        );
        assert!(!r.is_bot);
        assert_eq!(r.version, r.sent_at_us / 1000);
    }
    let ids: std::collections::HashSet<&str> = rows.iter().map(|r| r.message_id.as_str()).collect();
    assert_eq!(
        ids.len(),
        rows.len(),
        "identical messages keep distinct ids"
    );

    // The archive keeps bots; the CSV export has the same rows as the lake.
    let archive: Vec<serde_json::Value> = read_jsonl(&s.path("lake/archive"))
        .into_iter()
        .filter(|v| v["provider"] == "lineworks")
        .collect();
    let all = expected(
        42,
        1.0,
        "2025-01-01T00:00:00+09:00",
        "2025-03-31T23:59:59+09:00",
        true,
    );
    assert_eq!(archive.len(), all.len());
    assert_eq!(
        archive.iter().filter(|v| v["is_bot"] == true).count(),
        all.len() - want.len()
    );
    let csv_rows: usize = common::files(&s.path("lake/csv"), ".csv")
        .iter()
        .map(|p| {
            let mut r = csv::Reader::from_path(p).unwrap();
            let provider = r.headers().unwrap().iter().position(|h| h == "provider");
            r.records()
                .filter(|rec| provider.is_none_or(|i| &rec.as_ref().unwrap()[i] == "lineworks"))
                .count()
        })
        .sum();
    assert_eq!(csv_rows, want.len());

    assert!(
        temp_files(&s.path("lake")).is_empty(),
        "unfinished files left behind"
    );
    let last: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path("lake/_state/demo/last_run.json")).unwrap())
            .unwrap();
    assert_eq!(last["status"], "succeeded");
}

const FILES_PIPELINE: &str = r#"
[pipeline]
name = "files"
state_dir = "./state"

[sources.lw]
type = "lineworks_message_contents"
files = FILES

[transforms.canonical]
type = "normalize"
inputs = ["lw"]

[transforms.unique]
type = "dedupe"
inputs = ["canonical"]

[transforms.humans]
type = "bot_filter"
inputs = ["unique"]
mode = "MODE"

[sinks.out]
type = "jsonl"
inputs = ["humans"]
path = "./out"

[sinks.lake]
type = "parquet"
inputs = ["humans"]
path = "./lake"
partition_by = ["sent_date"]
"#;

fn files_pipeline(s: &Scratch, files: &[&str], mode: &str) -> std::path::PathBuf {
    let list: Vec<String> = files
        .iter()
        .map(|f| format!("{:?}", repo(f).to_str().unwrap()))
        .collect();
    s.pipeline(
        "p.toml",
        &FILES_PIPELINE
            .replace("FILES", &format!("[{}]", list.join(", ")))
            .replace("MODE", mode),
    )
}

#[test]
fn a_hand_downloaded_file_loads_byte_exact() {
    let s = Scratch::new();
    let p = files_pipeline(&s, &["fixtures/lineworks/ja_JP_sample.csv"], "include");
    s.run(&["run", p.to_str().unwrap()]).expect_code(0);
    let rows = read_jsonl(&s.path("out"));
    assert_eq!(rows.len(), 7, "{rows:#?}");
    let by_text = |t: &str| rows.iter().filter(|r| r["text"] == t).collect::<Vec<_>>();

    let multi = by_text("첫 줄\r\n二行目\nthird line 👨‍👩‍👧");
    assert_eq!(multi.len(), 1, "CRLF and LF inside a field survive");
    assert_eq!(
        multi[0]["sent_at"], "2025-01-01T14:59:59Z",
        "+09:00 local time becomes UTC"
    );
    assert_eq!(multi[0]["sender_id"], "minsu@example.kr");

    let quoted = by_text("He said \"hi\", then left 👋");
    assert_eq!(quoted[0]["sender_name"], "Chris Park (Sales)");
    assert_eq!(quoted[0]["sender_id"], "chris@example.com");
    assert_eq!(
        quoted[0]["recipient"],
        "営業チーム(room1@group.example.com)"
    );

    let twins = by_text("こんにちは。");
    assert_eq!(
        twins.len(),
        2,
        "two identical messages in one file are two messages"
    );
    assert_ne!(twins[0]["message_id"], twins[1]["message_id"]);
    assert_eq!(twins[0]["sent_at"], "2025-01-01T00:00:00Z");

    assert_eq!(
        by_text("  spaced, with trailing space  ").len(),
        1,
        "no trimming"
    );
    let bot = by_text("(写真) IMG_0001.jpg");
    assert_eq!(bot[0]["is_bot"], true);
    assert_eq!(bot[0]["sender_name"], "勤怠Bot");

    // The Parquet copy holds the same rows in UTC date partitions.
    let lake = read_parquet(&s.path("lake"));
    assert_eq!(lake.len(), 7);
    let dates: BTreeMap<String, usize> = lake.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.partition["sent_date"].clone()).or_default() += 1;
        m
    });
    assert_eq!(
        dates,
        BTreeMap::from([("2025-01-01".into(), 5), ("2025-01-03".into(), 2)])
    );
}

#[test]
fn bot_filter_modes() {
    for (mode, n) in [("exclude", 6), ("only", 1)] {
        let s = Scratch::new();
        let p = files_pipeline(&s, &["fixtures/lineworks/ja_JP_sample.csv"], mode);
        s.run(&["run", p.to_str().unwrap()]).expect_code(0);
        let rows = read_jsonl(&s.path("out"));
        assert_eq!(rows.len(), n, "mode {mode}");
        assert!(rows.iter().all(|r| r["is_bot"] == (mode == "only")));
    }
}

#[test]
fn the_same_file_twice_in_one_run_is_loaded_once() {
    // Two windows with byte-identical rows (an overlap) dedupe to one copy, and the identical
    // twins inside one file still count twice.
    let s = Scratch::new();
    let dir = s.path("in");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["a.csv", "b.csv"] {
        std::fs::copy(repo("fixtures/lineworks/ja_JP_sample.csv"), dir.join(name)).unwrap();
    }
    let p = s.pipeline(
        "p.toml",
        &FILES_PIPELINE
            .replace("FILES", "[\"in/*.csv\"]")
            .replace("MODE", "include"),
    );
    s.run(&["run", p.to_str().unwrap()]).expect_code(0);
    assert_eq!(read_jsonl(&s.path("out")).len(), 7);
}

#[test]
fn malformed_rows_are_dead_lettered_and_the_run_goes_on() {
    let s = Scratch::new();
    let p = files_pipeline(&s, &["fixtures/lineworks/malformed.csv"], "include");
    let out = s.run(&["run", p.to_str().unwrap()]).expect_code(3);
    assert!(out.stdout().contains("dead-lettered"), "{}", out.stdout());
    let rows = read_jsonl(&s.path("out"));
    let texts: Vec<&str> = rows.iter().map(|r| r["text"].as_str().unwrap()).collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts.contains(&"first good row") && texts.contains(&"last good row"));

    let dead = common::files(&s.path("state/files/dead_letters"), ".dead.json-lines");
    assert_eq!(dead.len(), 1);
    let letters: Vec<serde_json::Value> = std::fs::read_to_string(&dead[0])
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 3, "{letters:#?}");
    for l in &letters {
        assert!(l["reason"].as_str().is_some_and(|r| !r.is_empty()));
        assert!(l["component"].is_string() && !l["raw"].is_null() && l["window"].is_string());
    }
    assert!(
        letters.iter().any(|l| l["component"] == "canonical"),
        "the bad date is normalize's"
    );
}

#[test]
fn a_file_ending_in_the_trailer_commits_nothing_and_fails_the_run() {
    let s = Scratch::new();
    let p = files_pipeline(
        &s,
        &[
            "fixtures/lineworks/partial_with_trailer.csv",
            "fixtures/lineworks/ja_JP_sample.csv",
        ],
        "include",
    );
    let out = s.run(&["run", p.to_str().unwrap()]).expect_code(1);
    assert!(
        out.stdout().contains("downloadLogs error") || out.stdout().contains("Internal error"),
        "{}",
        out.stdout()
    );
    let rows = read_jsonl(&s.path("out"));
    assert_eq!(rows.len(), 7, "the good file is committed");
    assert!(
        rows.iter().all(|r| r["text"] != "row before the fault"),
        "nothing of the partial file"
    );
    assert!(temp_files(&s.path("out")).is_empty() && temp_files(&s.path("lake")).is_empty());
}

/// A pipeline against an emulator started by the test, with the emulator's credentials given the
/// way a user gives real ones (env variables and a key file).
struct Live {
    scratch: Scratch,
    emulator: Emulator,
    env: Vec<(String, String)>,
}

async fn live(faults: &str) -> Live {
    let config = EmulatorConfig {
        faults: faults.parse().unwrap(),
        ..EmulatorConfig::default()
    };
    let emulator = Emulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), config)
        .await
        .unwrap();
    let scratch = Scratch::new();
    let creds: BTreeMap<String, String> = emulator.credentials().into_iter().collect();
    let key = scratch.path("key.pem");
    std::fs::write(&key, &creds["lineworks.private_key"]).unwrap();
    let env = vec![
        ("LW_BASE".into(), format!("{}/v1.0", emulator.base_url())),
        (
            "LW_TOKEN_URL".into(),
            format!("{}/oauth2/v2.0/token", emulator.base_url()),
        ),
        ("LW_CLIENT_ID".into(), creds["lineworks.client_id"].clone()),
        (
            "LW_CLIENT_SECRET".into(),
            creds["lineworks.client_secret"].clone(),
        ),
        (
            "LW_SERVICE_ACCOUNT".into(),
            creds["lineworks.service_account"].clone(),
        ),
        ("LW_PRIVATE_KEY_FILE".into(), key.to_str().unwrap().into()),
        // The emulator's file host, another origin than its API: the token may go there.
        ("LW_FILE_HOST".into(), emulator.lineworks_download_host()),
    ];
    Live {
        scratch,
        emulator,
        env,
    }
}

const LIVE_SOURCE: &str = r#"
[sources.NAME]
type = "lineworks_message_contents"
base_url = "${LW_BASE}"
download_hosts = ["${LW_FILE_HOST}"]
auth = { type = "lineworks_service_account", client_id = "${LW_CLIENT_ID}", client_secret = "${LW_CLIENT_SECRET}", service_account = "${LW_SERVICE_ACCOUNT}", private_key_file = "${LW_PRIVATE_KEY_FILE}", token_url = "${LW_TOKEN_URL}" }
start = "START"
end = "END"
window_days = DAYS
requests_per_minute = 6000
retry = { max_attempts = ATTEMPTS, initial_backoff = "20ms", max_backoff = "200ms" }
"#;

fn live_source(name: &str, start: &str, end: &str, days: u32, attempts: u32) -> String {
    LIVE_SOURCE
        .replace("NAME", name)
        .replace("START", start)
        .replace("END", end)
        .replace("DAYS", &days.to_string())
        .replace("ATTEMPTS", &attempts.to_string())
}

impl Live {
    async fn run(&self, body: &str) -> common::Outcome {
        let p = self.scratch.pipeline("live.toml", body);
        let env = self.env.clone();
        let dir = self.scratch.dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let s = Scratch {
                dir: tempfile::TempDir::new_in(&dir).unwrap(),
            };
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let out = s.run_env(&["run", p.to_str().unwrap()], &env);
            // Keep the lake where the test reads it.
            let lake = s.path("lake");
            if lake.exists() {
                std::fs::rename(&lake, dir.join("lake")).unwrap();
            }
            out
        })
        .await
        .unwrap()
    }
}

fn live_pipeline(sources: &[String]) -> String {
    let names: Vec<String> = sources
        .iter()
        .map(|s| {
            s.lines()
                .find_map(|l| {
                    l.strip_prefix("[sources.")
                        .map(|n| format!("{:?}", n.trim_end_matches(']')))
                })
                .unwrap()
        })
        .collect();
    format!(
        "[pipeline]\nname = \"live\"\nstate_dir = \"./lake/_state\"\n{}\n[transforms.canonical]\ntype = \"normalize\"\ninputs = [{}]\n\n[transforms.unique]\ntype = \"dedupe\"\ninputs = [\"canonical\"]\n\n[sinks.lake]\ntype = \"parquet\"\ninputs = [\"unique\"]\npath = \"./lake/messages\"\npartition_by = [\"sent_date\"]\n",
        sources.join("\n"),
        names.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_retried_and_lose_nothing_and_downloads_never_overlap() {
    let live = live("lineworks.trailer=2,lineworks.rate_limit=3,lineworks.server_error=5,lineworks.rate_limit_per_min=0").await;
    let body = live_pipeline(&[
        live_source(
            "tokyo",
            "2025-01-01T00:00:00+09:00",
            "2025-01-20T23:59:59+09:00",
            5,
            6,
        ),
        live_source(
            "seoul",
            "2025-01-21T00:00:00+09:00",
            "2025-02-05T23:59:59+09:00",
            4,
            6,
        ),
    ]);
    let out = live.run(&body).await.expect_code(0);
    let stats = live.emulator.stats().lineworks;
    assert!(stats.trailers_served > 0, "{stats:?}");
    assert!(
        stats.rate_limited > 0 && stats.server_errors > 0,
        "{stats:?}"
    );
    assert_eq!(stats.concurrent_rejections, 0, "{stats:?}");
    assert_eq!(stats.max_concurrent_downloads, 1, "{stats:?}");
    // Every file came from the other origin, with the token.
    assert!(stats.files_served > 0, "{stats:?}");
    assert_eq!(
        stats.file_requests_with_authorization, stats.file_requests,
        "{stats:?}"
    );

    let want = expected(
        42,
        1.0,
        "2025-01-01T00:00:00+09:00",
        "2025-02-05T23:59:59+09:00",
        true,
    );
    let mut got: Vec<(i64, String)> = read_parquet(&live.scratch.path("lake/messages"))
        .into_iter()
        .map(|r| (r.sent_at_us, r.text.unwrap()))
        .collect();
    got.sort();
    assert_eq!(got.len(), want.len(), "{}", out.stdout());
    assert!(got == want);
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(live.scratch.path("lake/_state/live/last_run.json")).unwrap(),
    )
    .unwrap();
    let retries: u64 = summary["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["retries"].as_u64().unwrap())
        .sum();
    assert!(retries > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_that_keeps_failing_fails_the_run_and_commits_nothing_of_it() {
    let live = live("lineworks.server_error=1,lineworks.rate_limit_per_min=0").await;
    let body = live_pipeline(&[live_source(
        "lw",
        "2025-01-01T00:00:00+09:00",
        "2025-01-02T23:59:59+09:00",
        1,
        2,
    )]);
    let out = live.run(&body).await.expect_code(1);
    let text = out.stdout() + &out.stderr();
    assert!(text.contains("500"), "the status is named: {text}");
    assert!(
        text.contains("2025-01-01T00:00:00+09:00"),
        "the window is named: {text}"
    );
    assert!(common::files(&live.scratch.path("lake/messages"), ".parquet").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_host_not_listed_never_gets_the_token_and_fails_the_run_clearly() {
    let live = live("lineworks.rate_limit_per_min=0").await;
    // The default `download_hosts` lists only LINE WORKS' real file host, not the emulator's.
    let body = live_pipeline(&[live_source(
        "lw",
        "2025-01-01T00:00:00+09:00",
        "2025-01-03T23:59:59+09:00",
        1,
        3,
    )
    .replace("download_hosts = [\"${LW_FILE_HOST}\"]\n", "")]);
    let out = live.run(&body).await.expect_code(1);
    let text = out.stdout() + &out.stderr();
    let host = live.emulator.lineworks_download_host();
    assert!(
        text.contains(&format!("`{host}`")),
        "the host is named: {text}"
    );
    assert!(
        text.contains("`download_hosts`"),
        "the key is named: {text}"
    );
    assert!(
        text.contains("2025-01-01T00:00:00+09:00"),
        "the window is named: {text}"
    );
    let stats = live.emulator.stats().lineworks;
    assert_eq!(
        stats.download_requests, 1,
        "the first window stops the source"
    );
    assert_eq!(
        stats.file_requests, 0,
        "nothing is sent to the unlisted host"
    );
    assert_eq!(stats.file_requests_with_authorization, 0);
    assert!(common::files(&live.scratch.path("lake/messages"), ".parquet").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_output_logs_or_state() {
    let live = live("lineworks.rate_limit_per_min=0").await;
    let secret = live
        .env
        .iter()
        .find(|(k, _)| k == "LW_CLIENT_SECRET")
        .unwrap()
        .1
        .clone();
    // A wrong bearer token fails with 401; neither it nor the client secret may show up anywhere.
    let bearer = "sekrit-bearer-token-do-not-print";
    let body = live_pipeline(&[live_source(
        "lw",
        "2025-01-01T00:00:00+09:00",
        "2025-01-01T23:59:59+09:00",
        1,
        2,
    )
    .replace(
        "auth = { type = \"lineworks_service_account\"",
        &format!("auth = {{ type = \"bearer\", token = \"{bearer}\" }}\n# "),
    )]);
    let out = live.run(&body).await;
    assert_eq!(out.code(), 1, "{}\n{}", out.stdout(), out.stderr());
    let mut everything = out.stdout() + &out.stderr();
    for f in common::files(&live.scratch.path("lake"), "") {
        everything.push_str(&String::from_utf8_lossy(&std::fs::read(f).unwrap()));
    }
    assert!(!everything.contains(bearer), "the bearer token leaked");
    assert!(!everything.contains(&secret), "the client secret leaked");
    assert!(everything.contains("401"), "{everything}");
}

#[test]
fn plan_shows_every_window_without_the_network() {
    let s = Scratch::new();
    let out = s
        .run(&[
            "plan",
            "--emulate",
            repo("pipelines/demo.toml").to_str().unwrap(),
        ])
        .expect_code(0)
        .stdout();
    assert!(out.contains("3 window(s) to fetch"), "{out}");
    assert!(
        out.contains("startTime=2025-01-01T00%3A00%3A00%2B09%3A00")
            || out.contains("2025-01-01T00:00:00%2B09:00"),
        "{out}"
    );
    assert!(out.contains("2025-03-31T23:59:59+09:00"), "{out}");
}

/// The canonical rows of the fixture, as the JSON Lines sink writes them, against a golden file
/// reviewed by hand (`UPDATE_GOLDEN=1 cargo test --test lineworks golden` rewrites it).
#[test]
fn golden_canonical_rows_of_the_sample_file() {
    let s = Scratch::new();
    let p = files_pipeline(&s, &["fixtures/lineworks/ja_JP_sample.csv"], "include");
    s.run(&["run", p.to_str().unwrap()]).expect_code(0);
    let files = common::files(&s.path("out"), ".jsonl");
    assert_eq!(files.len(), 1);
    let mut got = String::new();
    for line in std::fs::read_to_string(&files[0]).unwrap().lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["run_id"].as_str().is_some_and(|r| !r.is_empty()));
        v.as_object_mut().unwrap().remove("run_id");
        got.push_str(&serde_json::to_string(&v).unwrap());
        got.push('\n');
    }
    let golden = repo("fixtures/lineworks/ja_JP_sample.expected.jsonl");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &got).unwrap();
    }
    let want = std::fs::read_to_string(&golden).expect("golden file (UPDATE_GOLDEN=1 writes it)");
    assert_eq!(got, want);
}

/// Writes `files` window CSVs of `rows` rows each (en_US header, CRLF), consecutive files sharing
/// their last/first `overlap` rows byte for byte. Three rows share each second, and the last two
/// of each three are identical messages (distinct messages that must both survive); `rows` and
/// `overlap` are multiples of 3, so windows split between seconds, as time windows do.
fn overlapping_files(s: &Scratch, files: usize, rows: usize, overlap: usize) -> Vec<String> {
    assert!(rows.is_multiple_of(3) && overlap.is_multiple_of(3));
    let text_of = |n: usize| if n % 3 == 2 { n - 1 } else { n };
    let row = |n: usize| {
        let second = n / 3;
        format!(
            "2025-02-{:02} {:02}:{:02}:{:02},User {}(u{}@x.jp),Room(r@x.jp),{},\"msg {} {}\"\r\n",
            1 + second / 86_400 % 28,
            second / 3600 % 24,
            second / 60 % 60,
            second % 60,
            second % 7,
            second % 7,
            100 + second % 5,
            text_of(n),
            if text_of(n) % 11 == 0 {
                "with, comma"
            } else {
                "plain"
            },
        )
    };
    (0..files)
        .map(|f| {
            let first = f * (rows - overlap);
            let mut body =
                String::from("\u{feff}Date,Sender,Recipient,Message room ID,Message\r\n");
            for n in first..first + rows {
                body.push_str(&row(n));
            }
            let path = s.path(&format!("in/window-{f}.csv"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, body).unwrap();
            path.to_str().unwrap().to_string()
        })
        .collect()
}

/// Several windows at once (files read side by side, `normalize` on several instances) load the
/// same rows as one window at a time. CI machines may have 2 cores, where one window at a time is
/// the default, so the test asks for 8 cores' worth with `CHATLAKE_THREADS`.
#[test]
fn windows_side_by_side_load_what_one_at_a_time_loads() {
    let lake = |threads: &str| {
        let s = Scratch::new();
        let files = overlapping_files(&s, 6, 30_000, 3_000);
        let list: Vec<String> = files.iter().map(|f| format!("{f:?}")).collect();
        let p = s.pipeline(
            "p.toml",
            &FILES_PIPELINE
                .replace("FILES", &format!("[{}]", list.join(", ")))
                .replace("MODE", "include"),
        );
        s.run_env(
            &["run", p.to_str().unwrap()],
            &[("CHATLAKE_THREADS", threads)],
        )
        .expect_code(0);
        let mut rows: Vec<(String, i64, String)> = read_parquet(&s.path("lake"))
            .into_iter()
            .map(|r| (r.message_id, r.sent_at_us, r.text.unwrap_or_default()))
            .collect();
        rows.sort();
        assert!(temp_files(&s.path("lake")).is_empty());
        rows
    };
    let one = lake("1");
    // 6 files × 30k rows, 5 overlaps of 3k rows: 165k messages, the identical twins included.
    assert_eq!(one.len(), 6 * 30_000 - 5 * 3_000);
    let mut same: std::collections::HashMap<(i64, &str), usize> = Default::default();
    for r in &one {
        *same.entry((r.1, r.2.as_str())).or_default() += 1;
    }
    assert_eq!(
        same.values().filter(|n| **n == 2).count(),
        165_000 / 3,
        "twins survive"
    );
    let ids: std::collections::HashSet<&str> = one.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(ids.len(), one.len(), "ids are distinct");
    assert!(
        lake("8") == one,
        "side by side loads other rows than one at a time"
    );
}

/// Issue 16 item 5: with `normalize` `raw = true` each row carries the CSV row whole, its fields
/// keyed by the file's header (here `ko_KR`, as the emulator writes it), byte for byte: the
/// sender as `Name(email)` or `[Bot]Name(email)`, the local time as written.
#[test]
fn raw_keeps_each_row_keyed_by_the_files_header() {
    let s = Scratch::new();
    let p = s.pipeline(
        "lw.toml",
        r#"
[pipeline]
name = "lw_raw"

[sources.lw]
type = "lineworks_message_contents"
auth = { type = "lineworks_service_account", client_id = "", client_secret = "", service_account = "", private_key_file = "" }
language = "ko_KR"
start = "2025-01-01T00:00:00+09:00"
end = "2025-01-02T23:59:59+09:00"

[transforms.canonical]
type = "normalize"
inputs = ["lw"]
raw = true

[sinks.out]
type = "jsonl"
inputs = ["canonical"]
path = "./out"
compression = "none"
"#,
    );
    s.run(&["run", "--emulate", p.to_str().unwrap()])
        .expect_code(0);
    let rows = read_jsonl(&s.path("out"));
    let want = expected(
        42,
        1.0,
        "2025-01-01T00:00:00+09:00",
        "2025-01-02T23:59:59+09:00",
        true,
    );
    assert_eq!(rows.len(), want.len());
    let mut bots = 0;
    for r in &rows {
        let raw = r["raw"].as_str().unwrap();
        let row: serde_json::Value = serde_json::from_str(raw).unwrap();
        let keys: Vec<&String> = row.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 5, "{raw}");
        assert_eq!(row["메시지"], r["text"], "{raw}");
        assert_eq!(row["대화방 ID"], r["conversation_id"], "{raw}");
        assert_eq!(row["받는 사람"], r["recipient"], "{raw}");
        let sender = row["보낸 사람"].as_str().unwrap();
        assert!(
            sender.ends_with(&format!("({})", r["sender_id"].as_str().unwrap())),
            "{raw}"
        );
        if r["is_bot"] == true {
            assert!(sender.starts_with("[Bot]"), "{raw}");
            bots += 1;
        }
        let local = row["일시"].as_str().unwrap();
        let at = chrono::NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M:%S").unwrap();
        let utc_at = at.and_utc() - chrono::Duration::hours(9);
        assert_eq!(utc(r["sent_at"].as_str().unwrap()), utc_at, "{raw}");
    }
    assert!(bots > 0);
}
