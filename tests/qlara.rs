//! Qlara end to end: the real binary against the emulator on loopback (submit → poll →
//! signed URL → CSV), through every fault path, and hand-downloaded exports; the lake is read
//! back and compared with the emulator's own dataset. Every run also checks that the API key
//! never reached a signed download URL.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chatlake_emulator::qlara::data::{Row, export_rows};
use chatlake_emulator::{Emulator, EmulatorConfig};
use chrono::{DateTime, Utc};
use common::{Scratch, read_jsonl, read_parquet, repo, temp_files};

const START: &str = "2025-01-01T00:00:00Z";
const END: &str = "2025-01-06T23:59:59Z";

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn ts(v: &serde_json::Value) -> Option<DateTime<Utc>> {
    v.as_str().map(utc)
}

/// One canonical row as a comparable tuple.
type Key = (
    String,
    String,
    String,
    String,
    String,
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    i64,
);

fn want(rows: &[Row]) -> Vec<Key> {
    let mut v: Vec<Key> = rows
        .iter()
        .map(|r| {
            (
                r.message_id.clone(),
                r.sender.clone(),
                r.destination.clone(),
                r.body.clone(),
                r.status.to_lowercase(),
                r.channel.to_lowercase(),
                r.sent_at,
                r.delivered_at,
                r.version_ms(),
            )
        })
        .collect();
    v.sort();
    v
}

fn got(rows: &[serde_json::Value]) -> Vec<Key> {
    let mut v: Vec<Key> = rows
        .iter()
        .map(|r| {
            assert_eq!(r["provider"], "qlara");
            assert_eq!(r["stream"], "message_history");
            assert_eq!(r["is_bot"], false);
            assert_eq!(r["attachments"], serde_json::json!([]));
            let s = |k: &str| r[k].as_str().unwrap().to_string();
            (
                s("message_id"),
                s("sender_id"),
                s("recipient"),
                s("text"),
                s("status"),
                s("channel"),
                ts(&r["sent_at"]).unwrap(),
                ts(&r["delivered_at"]),
                r["version"].as_i64().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

struct Live {
    scratch: Scratch,
    emulator: Emulator,
}

async fn live(faults: &str) -> Live {
    let config = EmulatorConfig {
        faults: faults.parse().unwrap(),
        ..EmulatorConfig::default()
    };
    let emulator = Emulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), config)
        .await
        .unwrap();
    Live {
        scratch: Scratch::new(),
        emulator,
    }
}

const PIPELINE: &str = r#"
[pipeline]
name = "q"
state_dir = "./state"

[sources.sms]
type = "qlara_message_history"
base_url = "${Q_BASE}"
auth = AUTH
start = "START"
end = "END"
window_days = 2
poll_interval = "20ms"
export_timeout = "TIMEOUT"
max_resubmits = 2
requests_per_minute = 2400              # 40/s: under the emulator's 50/s, and fast
retry = { max_attempts = 5, initial_backoff = "10ms", max_backoff = "50ms" }

[transforms.canonical]
type = "normalize"
inputs = ["sms"]

[transforms.latest]
type = "dedupe"
inputs = ["canonical"]
keep = "latest"

[sinks.out]
type = "jsonl"
inputs = ["latest"]
path = "./out"

[sinks.lake]
type = "parquet"
inputs = ["latest"]
path = "./lake"
partition_by = ["provider", "sent_date"]
"#;

impl Live {
    fn pipeline(&self, timeout: &str, basic: bool) -> String {
        let auth = if basic {
            r#"{ type = "basic", username = "${Q_USER}", password = "${Q_PASSWORD}" }"#
        } else {
            r#"{ type = "api_key", key = "${Q_KEY}" }"#
        };
        PIPELINE
            .replace("AUTH", auth)
            .replace("START", START)
            .replace("END", END)
            .replace("TIMEOUT", timeout)
    }

    /// Runs the pipeline through the binary; returns the outcome and the wall time.
    async fn run(&self, body: &str) -> (common::Outcome, Duration) {
        let p = self.scratch.pipeline("q.toml", body);
        let creds: BTreeMap<String, String> = self.emulator.credentials().into_iter().collect();
        let env = vec![
            (
                "Q_BASE".to_string(),
                format!("{}/api", self.emulator.base_url()),
            ),
            ("Q_KEY".to_string(), creds["qlara.api_key"].clone()),
            ("Q_USER".to_string(), creds["qlara.username"].clone()),
            ("Q_PASSWORD".to_string(), creds["qlara.password"].clone()),
        ];
        let dir = self.scratch.dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            // In the scratch directory itself, so a second run sees the first one's state.
            let mut cmd = std::process::Command::new(common::BIN);
            cmd.args(["run", p.to_str().unwrap()])
                .current_dir(&dir)
                .env("RUST_LOG", "warn")
                .env("NO_COLOR", "1");
            for (k, v) in &env {
                cmd.env(k, v);
            }
            let started = Instant::now();
            let out = common::Outcome(cmd.output().unwrap());
            (out, started.elapsed())
        })
        .await
        .unwrap()
    }

    fn rows(&self) -> Vec<serde_json::Value> {
        read_jsonl(&self.scratch.path("out"))
    }

    /// The lake holds exactly the emulator's messages, latest versions, in both sinks.
    fn assert_exact(&self, out: &common::Outcome) {
        let expected = export_rows(42, 1.0, utc(START), utc(END));
        assert!(expected.len() > 1000, "{}", expected.len());
        let rows = self.rows();
        assert_eq!(rows.len(), expected.len(), "{}", out.stdout());
        assert!(
            got(&rows) == want(&expected),
            "rows differ from the emulator's data"
        );
        let lake = read_parquet(&self.scratch.path("lake"));
        assert_eq!(lake.len(), expected.len());
        for r in &lake {
            let date = DateTime::from_timestamp_micros(r.sent_at_us)
                .unwrap()
                .date_naive()
                .to_string();
            assert_eq!(r.partition.get("sent_date"), Some(&date));
            assert_eq!(r.partition["provider"], "qlara");
        }
        assert!(temp_files(&self.scratch.path("lake")).is_empty());
        self.assert_key_never_sent();
    }

    fn assert_key_never_sent(&self) {
        let stats = self.emulator.stats().qlara;
        assert!(
            stats.signed_url_requests > 0 || stats.files_served == 0,
            "{stats:?}"
        );
        assert_eq!(
            stats.signed_url_requests_with_key, 0,
            "the API key reached a signed URL: {stats:?}"
        );
        assert_eq!(
            stats.limit_exceeded, 0,
            "the request budget held: {stats:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_happy_path_loads_the_latest_version_of_every_message() {
    let live = live("").await;
    let (out, _) = live.run(&live.pipeline("1m", false)).await;
    let out = out.expect_code(0);
    live.assert_exact(&out);
    let stats = live.emulator.stats().qlara;
    assert_eq!(stats.exports_submitted, 3, "{stats:?}");
    assert_eq!(stats.files_served, 3, "{stats:?}");

    // Windows overlapped in content: some messages were in flight in an earlier window, and
    // dedupe kept their delivered version.
    let per_window: usize = [
        ("2025-01-01T00:00:00Z", "2025-01-02T23:59:59Z"),
        ("2025-01-03T00:00:00Z", "2025-01-04T23:59:59Z"),
        ("2025-01-05T00:00:00Z", "2025-01-06T23:59:59Z"),
    ]
    .iter()
    .map(|(a, b)| export_rows(42, 1.0, utc(a), utc(b)).len())
    .sum();
    let whole = export_rows(42, 1.0, utc(START), utc(END)).len();
    assert!(
        per_window > whole,
        "no in-flight versions: {per_window} vs {whole}"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(live.scratch.path("state/q/last_run.json")).unwrap())
            .unwrap();
    assert_eq!(summary["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_and_a_paged_exports_list_work_too() {
    let live = live("qlara.list_shape=page").await;
    let (out, _) = live.run(&live.pipeline("1m", true)).await;
    live.assert_exact(&out.expect_code(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_job_is_polled_until_it_completes() {
    let live = live("qlara.job_polls=4").await;
    let (out, _) = live.run(&live.pipeline("1m", false)).await;
    live.assert_exact(&out.expect_code(0));
    let stats = live.emulator.stats().qlara;
    assert!(stats.list_requests >= 3 * 5, "{stats:?}");
    assert_eq!(stats.exports_submitted, 3, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_is_submitted_again() {
    let live = live("qlara.fail_job=2").await;
    let (out, _) = live.run(&live.pipeline("1m", false)).await;
    live.assert_exact(&out.expect_code(0));
    let stats = live.emulator.stats().qlara;
    assert!(stats.failed_jobs >= 2, "{stats:?}");
    assert_eq!(stats.exports_submitted, 3 + stats.failed_jobs, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_url_is_regenerated() {
    let live = live("qlara.url_expiry=2").await;
    let (out, _) = live.run(&live.pipeline("1m", false)).await;
    live.assert_exact(&out.expect_code(0));
    let stats = live.emulator.stats().qlara;
    assert!(stats.expired_url_requests >= 1, "{stats:?}");
    assert!(stats.regenerations >= 1, "{stats:?}");
    assert_eq!(stats.exports_submitted, 3, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_waits_the_retry_after_the_provider_asked_for() {
    // Only the very first request is limited; its `retryAfter` is 1 s, far above the 10-50 ms
    // backoff of the pipeline, so the run cannot be faster than that second.
    let live = live("qlara.rate_limit=100000,qlara.retry_after_s=1").await;
    let (out, took) = live.run(&live.pipeline("1m", false)).await;
    live.assert_exact(&out.expect_code(0));
    assert_eq!(live.emulator.stats().qlara.rate_limited, 1);
    assert!(took >= Duration::from_secs(1), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried() {
    let live = live("qlara.server_error=3").await;
    let (out, _) = live.run(&live.pipeline("1m", false)).await;
    live.assert_exact(&out.expect_code(0));
    assert!(live.emulator.stats().qlara.server_errors >= 3);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(live.scratch.path("state/q/last_run.json")).unwrap())
            .unwrap();
    let retries: u64 = summary["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["retries"].as_u64())
        .sum();
    assert!(retries >= 3, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_that_never_completes_fails_its_window_and_commits_nothing() {
    let live = live("qlara.job_polls=1000000").await;
    let (out, _) = live.run(&live.pipeline("300ms", false)).await;
    let out = out.expect_code(1);
    let text = format!("{}{}", out.stdout(), out.stderr());
    assert!(text.contains("export_timeout"), "{text}");
    assert!(live.rows().is_empty());
    assert!(common::files(&live.scratch.path("lake"), ".parquet").is_empty());
    assert!(temp_files(&live.scratch.path("lake")).is_empty());
    live.assert_key_never_sent();
}

#[test]
fn hand_downloaded_exports_load_and_keep_the_latest_version() {
    let s = Scratch::new();
    let files = format!(
        "[{:?}]",
        repo("fixtures/qlara/history_*.csv").to_str().unwrap()
    );
    let p = s.pipeline(
        "p.toml",
        &format!(
            "[pipeline]\nname = \"files\"\nstate_dir = \"./state\"\n\n[sources.sms]\ntype = \"qlara_message_history\"\nfiles = {files}\n\n[transforms.canonical]\ntype = \"normalize\"\ninputs = [\"sms\"]\n\n[transforms.latest]\ntype = \"dedupe\"\ninputs = [\"canonical\"]\nkeep = \"latest\"\n\n[sinks.out]\ntype = \"jsonl\"\ninputs = [\"latest\"]\npath = \"./out\"\n"
        ),
    );
    s.run(&["run", p.to_str().unwrap()]).expect_code(0);
    let rows = read_jsonl(&s.path("out"));
    let by_id: HashMap<&str, &serde_json::Value> = rows
        .iter()
        .map(|r| (r["message_id"].as_str().unwrap(), r))
        .collect();
    assert_eq!(rows.len(), 5, "{rows:#?}");
    assert_eq!(by_id.len(), 5);
    let m1 = by_id["msg-0001"];
    assert_eq!(m1["status"], "delivered", "the final version wins");
    assert_eq!(ts(&m1["sent_at"]), Some(utc("2025-01-01T22:59:30Z")));
    assert_eq!(ts(&m1["delivered_at"]), Some(utc("2025-01-01T23:00:10Z")));
    assert_eq!(
        m1["version"].as_i64(),
        Some(utc("2025-01-01T23:00:10Z").timestamp_millis())
    );
    let m2 = by_id["msg-0002"];
    assert_eq!(
        m2["text"],
        "Appuntamento confermato:\nlunedì alle 10:30, Via Roma 1"
    );
    assert_eq!(m2["channel"], "rcs");
    assert_eq!(m2["recipient"], "+393331113333");
    assert_eq!(m2["sender_id"], "acme_rbm_agent");
    assert_eq!(by_id["msg-0003"]["text"], "Promo \"Estate\": -20%");
    assert_eq!(by_id["msg-0003"]["status"], "error");
    assert!(by_id["msg-0003"]["delivered_at"].is_null());
    assert_eq!(by_id["msg-0004"]["channel"], "whatsapp");
    assert_eq!(by_id["msg-0005"]["text"], "  spazi  ", "no trimming");
    assert_eq!(by_id["msg-0005"]["status"], "unknown");
}

#[test]
fn the_demo_loads_qlara_messages_with_their_latest_versions() {
    let s = Scratch::new();
    let demo = repo("pipelines/demo.toml");
    s.run(&["run", "--emulate", demo.to_str().unwrap()])
        .expect_code(0);
    let expected = export_rows(
        42,
        1.0,
        utc("2025-01-01T00:00:00+09:00"),
        utc("2025-03-31T23:59:59+09:00"),
    );
    let mut got: Vec<(String, i64)> = read_parquet(&s.path("lake/messages"))
        .into_iter()
        .filter(|r| r.partition.get("provider").map(String::as_str) == Some("qlara"))
        .map(|r| (r.message_id, r.version))
        .collect();
    got.sort();
    let mut want: Vec<(String, i64)> = expected
        .iter()
        .map(|r| (r.message_id.clone(), r.version_ms()))
        .collect();
    want.sort();
    assert_eq!(got.len(), want.len());
    assert!(got == want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stopped_while_polling_resumes_the_same_export() {
    // Jobs take 3 s. The first run is killed as soon as the export id is in the ledger; the
    // second polls that export instead of submitting another.
    let live = live("qlara.slow_jobs_ms=3000").await;
    let body = live
        .pipeline("1m", false)
        .replace("window_days = 2", "window_days = 6");
    let p = live.scratch.pipeline("q.toml", &body);
    let creds: BTreeMap<String, String> = live.emulator.credentials().into_iter().collect();
    let base = format!("{}/api", live.emulator.base_url());
    let dir = live.scratch.dir.path().to_path_buf();
    let key = creds["qlara.api_key"].clone();
    let ledger = dir.join("state/q/sources/sms.json");
    let (p2, dir2, base2, key2) = (p.clone(), dir.clone(), base.clone(), key.clone());
    let saved = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(common::BIN)
            .args(["run", p2.to_str().unwrap()])
            .current_dir(&dir2)
            .env("Q_BASE", &base2)
            .env("Q_KEY", &key2)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut saved = String::new();
        while Instant::now() < deadline {
            saved = std::fs::read_to_string(&ledger).unwrap_or_default();
            if saved.contains("export_id") {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        saved
    })
    .await
    .unwrap();
    assert!(saved.contains("export_id"), "no checkpoint saved: {saved}");
    assert_eq!(live.emulator.stats().qlara.exports_submitted, 1);
    assert!(read_jsonl(&live.scratch.path("out")).is_empty());

    let (out, _) = live.run(&body).await;
    live.assert_exact(&out.expect_code(0));
    let stats = live.emulator.stats().qlara;
    assert_eq!(
        stats.exports_submitted, 1,
        "the second run resumed: {stats:?}"
    );
    let ledger: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(live.scratch.path("state/q/sources/sms.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        ledger["checkpoints"],
        serde_json::json!({}),
        "closed with its window"
    );
}

#[test]
fn malformed_export_rows_are_dead_lettered_and_the_run_goes_on() {
    let s = Scratch::new();
    let p = s.pipeline(
        "p.toml",
        &format!(
            "[pipeline]\nname = \"bad\"\nstate_dir = \"./state\"\n\n[sources.sms]\ntype = \"qlara_message_history\"\nfiles = [{:?}]\n\n[transforms.canonical]\ntype = \"normalize\"\ninputs = [\"sms\"]\n\n[sinks.out]\ntype = \"jsonl\"\ninputs = [\"canonical\"]\npath = \"./out\"\n",
            repo("fixtures/qlara/malformed.csv").to_str().unwrap()
        ),
    );
    let out = s.run(&["run", p.to_str().unwrap()]).expect_code(3);
    assert!(out.stdout().contains("dead-lettered"), "{}", out.stdout());
    let texts: Vec<String> = read_jsonl(&s.path("out"))
        .iter()
        .map(|r| r["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts.contains(&"first good row".into()) && texts.contains(&"last good row".into()));
    let dead = common::files(&s.path("state/bad/dead_letters"), ".dead.json-lines");
    assert_eq!(dead.len(), 1);
    let letters: Vec<serde_json::Value> = std::fs::read_to_string(&dead[0])
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 3, "{letters:#?}");
    let by = |c: &str| letters.iter().filter(|l| l["component"] == c).count();
    assert_eq!((by("sms"), by("canonical")), (2, 1), "{letters:#?}");
    assert!(
        letters
            .iter()
            .all(|l| l["window"].is_string() && !l["raw"].is_null())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_never_reaches_output_logs_or_state() {
    let live = live("qlara.url_expiry=2,qlara.rate_limit=5,qlara.retry_after_s=0").await;
    let (out, _) = live.run(&live.pipeline("1m", false)).await;
    let out = out.expect_code(0);
    live.assert_exact(&out);
    let key = chatlake_emulator::qlara::API_KEY;
    assert!(!out.stdout().contains(key) && !out.stderr().contains(key));
    for f in common::files(&live.scratch.path("state"), "") {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        assert!(!text.contains(key), "{f:?} holds the API key");
    }
    // A plan names every request but no secret.
    let p = live.scratch.pipeline("q.toml", &live.pipeline("1m", false));
    let base = format!("{}/api", live.emulator.base_url());
    let plan = Scratch::new().run_env(
        &["plan", p.to_str().unwrap()],
        &[("Q_BASE", &base), ("Q_KEY", key)],
    );
    let plan = plan.expect_code(0).stdout();
    assert!(plan.contains("messages/history/export"), "{plan}");
    assert!(!plan.contains(key), "{plan}");
}

/// A scheduled run re-exports the last `lookback` (default 3 days) and a delivery report that
/// came after the first run's export replaces the loaded row: also a status that changed without
/// a delivery date (`SENT` → `EXPIRED`/`ERROR`), whose `version` ranks above the in-flight row.
/// The emulator selects by send date (`qlara.export_by=send`), so a report never reaches the
/// lake through a later window's export: only the lookback brings it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_delivery_reports_replace_the_loaded_row_through_the_default_lookback() {
    use chatlake_emulator::qlara::data::{Selection, export_rows_selecting};
    const SCALE: f64 = 20.0;
    const FIRST_END: &str = "2025-01-05T00:00:00Z";
    const SECOND_END: &str = "2025-01-05T12:00:00Z";
    let config = EmulatorConfig {
        scale: SCALE,
        faults: "qlara.export_by=send".parse().unwrap(),
        ..EmulatorConfig::default()
    };
    let emulator = Emulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), config)
        .await
        .unwrap();
    let live = Live {
        scratch: Scratch::new(),
        emulator,
    };
    let body = |end: &str| {
        live.pipeline("1m", false)
            .replace(&format!("end = \"{END}\""), &format!("end = \"{end}\""))
            // One export per run: each shows its messages as they stand at its end.
            .replace("window_days = 2", "window_days = 7")
            .replace("keep = \"latest\"", "keep = \"latest\"\nacross_runs = true")
    };

    let (out, _) = live.run(&body(FIRST_END)).await;
    out.expect_code(0);
    let first: HashMap<String, serde_json::Value> = live
        .rows()
        .into_iter()
        .map(|r| (r["message_id"].as_str().unwrap().to_string(), r))
        .collect();
    let plan = live
        .scratch
        .run_env(
            &[
                "plan",
                live.scratch
                    .pipeline("q.toml", &body(SECOND_END))
                    .to_str()
                    .unwrap(),
            ],
            &[
                ("Q_BASE", &format!("{}/api", live.emulator.base_url())),
                ("Q_KEY", "unused-by-plan"),
            ],
        )
        .expect_code(0)
        .stdout();
    assert!(
        plan.contains("2025-01-02T00:00:01"),
        "the plan shows the lookback window (3 days before the cursor): {plan}"
    );

    let (out, _) = live.run(&body(SECOND_END)).await;
    let out = out.expect_code(0);
    let expected = export_rows_selecting(
        42,
        SCALE,
        utc(START),
        utc(SECOND_END),
        Selection::SentInRange,
    );
    let rows = live.rows();
    assert_eq!(rows.len(), expected.len(), "{}", out.stdout());
    assert!(
        got(&rows) == want(&expected),
        "two scheduled runs load what one export over the whole range holds"
    );
    let lake = read_parquet(&live.scratch.path("lake"));
    assert_eq!(
        lake.len(),
        expected.len(),
        "the Parquet sink replaced rows too"
    );

    // The changes this test is about happened: rows loaded in flight, final now.
    let now: HashMap<&str, &serde_json::Value> = rows
        .iter()
        .map(|r| (r["message_id"].as_str().unwrap(), r))
        .collect();
    let changed = |status: &str, dated: bool| {
        first
            .iter()
            .filter(|(id, r)| {
                let n = now[id.as_str()];
                r["status"] == "sent"
                    && n["status"] == status
                    && n["delivered_at"].is_null() != dated
            })
            .count()
    };
    assert!(changed("delivered", true) > 0, "a late delivery report");
    assert!(
        changed("expired", false) + changed("error", false) > 0,
        "a late status without a delivery date"
    );
}

/// Issue 16 item 5: `normalize` with `raw = true` keeps each export row whole, so what the
/// canonical columns drop (`cost`, `parts`, `direction`, `customerMessageId`) is in the lake: a
/// last `raw` column, the row's fields keyed by the export's header, byte for byte, through
/// `dedupe`, `bot_filter` and every sink (JSON Lines, Parquet, CSV).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_keeps_every_field_of_the_export_in_every_sink() {
    let live = live("").await;
    let body = live
        .pipeline("1m", false)
        .replace(
            "inputs = [\"sms\"]\n",
            "inputs = [\"sms\"]\nraw = true\n\n[transforms.people]\ntype = \"bot_filter\"\ninputs = [\"latest\"]\nmode = \"exclude\"\n",
        )
        .replace(
            "[sinks.out]\ntype = \"jsonl\"\ninputs = [\"latest\"]",
            "[sinks.out]\ntype = \"jsonl\"\ninputs = [\"people\"]",
        )
        + "\n[sinks.table]\ntype = \"csv\"\ninputs = [\"latest\"]\npath = \"./csv\"\n";
    let (out, _) = live.run(&body).await;
    let out = out.expect_code(0);
    let expected = export_rows(42, 1.0, utc(START), utc(END));
    let rows = live.rows();
    assert_eq!(rows.len(), expected.len(), "{}", out.stdout());
    assert!(
        got(&rows) == want(&expected),
        "the canonical columns did not change"
    );

    // The final version of every message, as the export wrote it.
    let mut final_rows: HashMap<&str, &Row> = HashMap::new();
    for r in &expected {
        final_rows.insert(&r.message_id, r);
    }
    let header = [
        "messageId",
        "customerMessageId",
        "channel",
        "direction",
        "sender",
        "destination",
        "body",
        "status",
        "sendDate",
        "deliveryDate",
        "cost",
        "parts",
    ];
    let check = |message_id: &str, version: i64, raw: &str| {
        let record: serde_json::Value = serde_json::from_str(raw).unwrap();
        let want = final_rows[message_id];
        assert_eq!(want.version_ms(), version);
        let object = record.as_object().unwrap();
        assert_eq!(object.len(), 12, "{raw}");
        for (name, field) in header.iter().zip(want.fields()) {
            assert_eq!(object[*name], field, "{message_id}: `{name}` in {raw}");
        }
    };
    for r in &rows {
        let keys: Vec<&String> = r.as_object().unwrap().keys().collect();
        assert_eq!(
            keys.last().map(|k| k.as_str()),
            Some("raw"),
            "after the canonical ones"
        );
        check(
            r["message_id"].as_str().unwrap(),
            r["version"].as_i64().unwrap(),
            r["raw"].as_str().unwrap(),
        );
    }

    // Parquet keeps it as a Utf8 column after `run_id`.
    let mut parquet_rows = 0;
    for path in common::files(&live.scratch.path("lake"), ".parquet") {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&path).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        for batch in reader {
            use arrow::array::AsArray;
            let b = batch.unwrap();
            let schema = b.schema();
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            assert_eq!(&names[names.len() - 2..], ["run_id", "raw"]);
            let ids = b.column_by_name("message_id").unwrap().as_string::<i32>();
            let versions = b
                .column_by_name("version")
                .unwrap()
                .as_primitive::<arrow::datatypes::Int64Type>();
            let raw = b.column_by_name("raw").unwrap().as_string::<i32>();
            for i in 0..b.num_rows() {
                check(ids.value(i), versions.value(i), raw.value(i));
                parquet_rows += 1;
            }
        }
    }
    assert_eq!(parquet_rows, expected.len());

    // CSV writes it as a last column of JSON text.
    let mut csv_rows = 0;
    for path in common::files(&live.scratch.path("csv"), ".csv") {
        let mut reader = csv::Reader::from_path(&path).unwrap();
        let headers = reader.headers().unwrap().clone();
        assert_eq!(headers.iter().next_back(), Some("raw"));
        let at = |name: &str| headers.iter().position(|h| h == name).unwrap();
        let (id, version, raw) = (at("message_id"), at("version"), at("raw"));
        for record in reader.records() {
            let record = record.unwrap();
            check(&record[id], record[version].parse().unwrap(), &record[raw]);
            csv_rows += 1;
        }
    }
    assert_eq!(csv_rows, expected.len());
    live.assert_key_never_sent();
}

/// Issue 16 item 9: `chatlake components` says what each provider leaves out, as the README
/// does: the Qlara export's API-only messages, LINE WORKS' assumed `zh_*` headers, Zoom's
/// six-month report, expiring file URLs and the user statuses listed; and `normalize` says where
/// what it has no column for goes, and its bot rule.
#[test]
fn components_say_what_each_provider_leaves_out() {
    let out = Scratch::new().run(&["components"]).expect_code(0).stdout();
    let summary = |kind: &str| -> String {
        out.lines()
            .find(|l| l.contains(&format!("`{kind}`: ")))
            .unwrap_or_else(|| panic!("no `{kind}` in {out}"))
            .to_string()
    };
    let has = |kind: &str, words: &[&str]| {
        let line = summary(kind);
        for w in words {
            assert!(line.contains(w), "`{kind}` does not say {w:?}: {line}");
        }
    };
    has(
        "qlara_message_history",
        &[
            "only",
            "sent through the API",
            "seed 003",
            "GET /messages/history",
        ],
    );
    has(
        "lineworks_message_contents",
        &["`zh_CN` and `zh_TW` headers are an assumption"],
    );
    has(
        "zoom_chat_report",
        &["six months back", "`download_url` expires"],
    );
    has(
        "zoom_user_messages",
        &["`download_url` expires", "user_status", "inactive"],
    );
    has("normalize", &["`raw = true`", "Qlara cost", "`{}`"]);
    let json = Scratch::new()
        .run(&["components", "--json"])
        .expect_code(0)
        .stdout();
    let docs: serde_json::Value = serde_json::from_str(&json).unwrap();
    let normalize = docs
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["type"] == "normalize")
        .unwrap();
    let raw = normalize["options"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "raw")
        .unwrap();
    assert_eq!(raw["default"], false);
    assert!(raw["description"].as_str().unwrap().contains("at_items"));
}
