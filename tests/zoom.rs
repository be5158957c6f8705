//! Zoom end to end: the real binary with `run --emulate --faults ...` against the built-in
//! emulator, the lake read back and compared with the emulator's own dataset after
//! `dedupe keep = "latest"`.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use chatlake_emulator::zoom::data;
use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use common::{Scratch, read_jsonl, repo, temp_files};

const START: &str = "2026-01-01T00:00:00Z";
const END: &str = "2026-01-02T23:59:59Z";

fn ms(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
}

/// message_id → (version, status, text, is_bot) of the newest version of every message the
/// emulator serves in the range.
fn latest(from_ms: i64, to_ms: i64) -> BTreeMap<String, (i64, String, String, bool)> {
    let mut out: BTreeMap<String, (i64, String, String, bool)> = BTreeMap::new();
    for conv in data::conversations() {
        for m in data::conversation_messages(42, 1.0, &conv, from_ms, to_ms, true) {
            let row = (
                m.timestamp,
                m.status.as_str().to_lowercase(),
                m.text.clone(),
                m.is_bot,
            );
            match out.get(&m.id) {
                Some(have) if have.0 >= row.0 => {}
                _ => {
                    out.insert(m.id.clone(), row);
                }
            }
        }
    }
    out
}

fn pipeline(extra: &str) -> String {
    format!(
        r#"
[pipeline]
name = "zoom_e2e"

[sources.zoom_dm]
type = "zoom_user_messages"
start = "{START}"
end = "{END}"
window_days = 1
page_size = 20
retry = {{ initial_backoff = "10ms", max_backoff = "100ms" }}
{extra}

[transforms.canonical]
type = "normalize"
inputs = ["zoom_dm"]

[transforms.latest]
type = "dedupe"
inputs = ["canonical"]
keep = "latest"

[sinks.out]
type = "jsonl"
inputs = ["latest"]
path = "./lake/zoom"
compression = "none"
"#
    )
}

fn run_faults(faults: &str, extra: &str) -> (Scratch, common::Outcome) {
    let s = Scratch::new();
    let p = s.pipeline("zoom.toml", &pipeline(extra));
    let out = s.run(&["run", "--emulate", "--faults", faults, p.to_str().unwrap()]);
    (s, out)
}

/// The lake holds exactly the newest version of every message, once.
fn assert_exact(s: &Scratch) {
    let rows = read_jsonl(&s.path("lake/zoom"));
    let want = latest(ms(START), ms(END) + 999);
    let mut got = BTreeMap::new();
    for r in &rows {
        let id = r["message_id"].as_str().unwrap().to_string();
        let v = (
            r["version"].as_i64().unwrap(),
            r["status"].as_str().unwrap().to_string(),
            r["text"].as_str().unwrap_or_default().to_string(),
            r["is_bot"].as_bool().unwrap(),
        );
        assert!(got.insert(id.clone(), v).is_none(), "{id} twice");
        assert_eq!(r["provider"], "zoom");
        assert_eq!(r["stream"], "user_messages");
    }
    assert_eq!(got.len(), want.len());
    assert!(got == want, "rows differ from the emulator's dataset");
    let statuses: BTreeSet<&str> = got.values().map(|v| v.1.as_str()).collect();
    assert_eq!(statuses, BTreeSet::from(["deleted", "edited", "normal"]));
    assert!(temp_files(&s.path("lake/zoom")).is_empty());
}

#[test]
fn user_messages_without_faults_land_exactly() {
    let (s, out) = run_faults("", "");
    out.expect_code(0);
    assert_exact(&s);
    let rows = read_jsonl(&s.path("lake/zoom"));
    let r = rows
        .iter()
        .find(|r| r["attachments"].as_array().is_some_and(|a| !a.is_empty()))
        .unwrap();
    assert!(r["attachments"][0]["file_id"].is_string());
    assert!(r["sent_at"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn expired_page_tokens_restart_windows_without_duplicates() {
    let (s, out) = run_faults("zoom.page_token_expiry=6", "");
    out.expect_code(0);
    assert_exact(&s);
}

#[test]
fn rate_limit_answers_with_headers_are_waited_out() {
    let (s, out) = run_faults("zoom.rate_limit=7,zoom.daily_limit=11", "");
    let out = out.expect_code(0);
    assert_exact(&s);
    assert!(out.stderr().contains("429"), "{}", out.stderr());
}

#[test]
fn a_token_revoked_once_is_replaced() {
    let (s, out) = run_faults("zoom.token_invalidate_once=2", "");
    out.expect_code(0);
    assert_exact(&s);
}

#[test]
fn a_token_refused_twice_fails_the_run_with_a_clear_message() {
    let (_s, out) = run_faults(
        "zoom.token_invalidate=1",
        r#"users = ["zu00"]
conversations = { to_channel = ["ch-eng"] }"#,
    );
    let out = out.expect_code(1);
    let all = format!("{}{}", out.stdout(), out.stderr());
    assert!(all.contains("freshly fetched access token"), "{all}");
    assert!(!all.contains(chatlake_emulator::zoom::CLIENT_SECRET));
}

#[test]
fn server_errors_and_slow_answers_lose_nothing() {
    // Every 7th request fails. Not every 5th: requests are paced by the account's budget in
    // turn, and with five windows in flight a window's retry came back exactly five requests
    // later, so one window met the fault on all five attempts (a resonance of the emulator's
    // periodic schedule, which real server errors do not have).
    let (s, out) = run_faults("zoom.server_error=7,zoom.slow_ms=30", "");
    out.expect_code(0);
    assert_exact(&s);
}

/// A report pipeline of one 1:1 session into JSON Lines; `start` is a line of TOML or empty.
fn report_pipeline(start: &str) -> String {
    format!(
        r#"
[pipeline]
name = "r"

[sources.rep]
type = "zoom_chat_report"
auth = {{ type = "zoom_server_to_server", account_id = "a", client_id = "c", client_secret = "s" }}
sessions = ["sess-im-zu00-zu01"]
{start}

[transforms.canonical]
type = "normalize"
inputs = ["rep"]

[transforms.latest]
type = "dedupe"
inputs = ["canonical"]
keep = "latest"

[sinks.out]
type = "jsonl"
inputs = ["latest"]
path = "./lake/out"
compression = "none"
"#
    )
}

/// Writes the ledger of source `rep` of pipeline `r` as earlier runs would have left it: the
/// session's report committed over each `[from, to]` (whole UTC days).
fn write_report_ledger(s: &Scratch, loaded: &[(NaiveDate, NaiveDate)]) {
    let mut windows = serde_json::Map::new();
    for (i, (from, to)) in loaded.iter().enumerate() {
        windows.insert(
            format!("rep-{i:016x}"),
            serde_json::json!({
                "stream": "chat_report",
                "label": format!("session sess-im-zu00-zu01 {from}..{to}"),
                "start": format!("{from}T00:00:00+00:00"),
                "end": format!("{to}T23:59:59+00:00"),
                "status": "committed",
                "run_id": "an-earlier-run",
                "at": "2026-01-01T00:00:00Z",
            }),
        );
    }
    let ledger = serde_json::json!({
        "source": "rep", "windows": windows, "checkpoints": {}, "last_run": "an-earlier-run",
    });
    let dir = s.path("lake/_state/r/sources");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rep.json"), serde_json::to_vec(&ledger).unwrap()).unwrap();
}

/// message_id → version of the newest version of every message of the 1:1 in `[from, to]`.
fn report_rows_between(from: NaiveDate, to: NaiveDate) -> BTreeMap<String, i64> {
    let (_, conv) = data::sessions()
        .into_iter()
        .find(|(id, _)| id == "sess-im-zu00-zu01")
        .unwrap();
    let from = from
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis();
    let to = to
        .and_hms_opt(23, 59, 59)
        .unwrap()
        .and_utc()
        .timestamp_millis()
        + 999;
    let mut want = BTreeMap::new();
    for m in data::conversation_messages(42, 1.0, &conv, from, to, true) {
        let v = want.entry(m.id.clone()).or_insert(0);
        *v = m.timestamp.max(*v);
    }
    want
}

fn lake_versions(s: &Scratch) -> BTreeMap<String, i64> {
    read_jsonl(&s.path("lake/out"))
        .iter()
        .map(|r| {
            (
                r["message_id"].as_str().unwrap().to_string(),
                r["version"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_scheduled_report_keeps_running_after_six_months_and_reports_what_is_gone() {
    // A cron job set up eight months ago with a fixed start: earlier runs loaded its first
    // month, then nothing until today (an outage).
    let today = Utc::now().date_naive();
    let first = today.with_day(1).unwrap();
    let start = first.checked_sub_months(Months::new(8)).unwrap();
    let start_end = start
        .checked_add_months(Months::new(1))
        .unwrap()
        .pred_opt()
        .unwrap();
    let oldest = today.checked_sub_months(Months::new(6)).unwrap();
    let s = Scratch::new();
    let p = s.pipeline(
        "report.toml",
        &report_pipeline(&format!("start = \"{start}\"")),
    );
    write_report_ledger(&s, &[(start, start_end)]);

    // `validate` (which reads no ledger) no longer refuses the old start.
    s.run(&["validate", p.to_str().unwrap()]).expect_code(0);
    // `plan` names what can no longer be fetched, and plans from the oldest day Zoom serves.
    let gone = format!(
        "{}..{}",
        start_end.succ_opt().unwrap(),
        oldest.pred_opt().unwrap()
    );
    let out = s
        .run(&["plan", "--emulate", p.to_str().unwrap()])
        .expect_code(0);
    let plan = out.stdout();
    assert!(
        plan.contains(&format!("warning: not fetched: {gone} was never loaded")),
        "{plan}"
    );
    assert!(
        plan.contains(&format!("sess-im-zu00-zu01 {oldest}..")),
        "{plan}"
    );
    assert!(
        !plan.contains(&format!("sess-im-zu00-zu01 {start}..")),
        "{plan}"
    );

    // The run loads everything Zoom still serves, warns, and succeeds.
    let out = s
        .run(&["run", "--emulate", p.to_str().unwrap()])
        .expect_code(0);
    let stdout = out.stdout();
    assert!(
        stdout.contains(&format!("skipped by rep: {gone} was never loaded")),
        "{stdout}"
    );
    assert!(out.stderr().contains("six months"), "{}", out.stderr());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path("lake/_state/r/last_run.json")).unwrap())
            .unwrap();
    let rep = summary["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "rep")
        .unwrap();
    assert_eq!(rep["skipped"].as_array().unwrap().len(), 1, "{rep}");
    assert_eq!(rep["windows_failed"], 0);
    assert_eq!(lake_versions(&s), report_rows_between(oldest, today));

    // Run again: the months just loaded are in the ledger too; nothing fails, nothing doubles.
    s.run(&["run", "--emulate", p.to_str().unwrap()])
        .expect_code(0);
    assert_eq!(lake_versions(&s), report_rows_between(oldest, today));
}

#[test]
fn a_report_with_every_old_month_loaded_warns_about_nothing() {
    let today = Utc::now().date_naive();
    let first = today.with_day(1).unwrap();
    let start = first.checked_sub_months(Months::new(8)).unwrap();
    let oldest = today.checked_sub_months(Months::new(6)).unwrap();
    let s = Scratch::new();
    let p = s.pipeline(
        "report.toml",
        &report_pipeline(&format!("start = \"{start}\"")),
    );
    write_report_ledger(&s, &[(start, oldest.pred_opt().unwrap())]);
    let out = s
        .run(&["plan", "--emulate", p.to_str().unwrap()])
        .expect_code(0);
    assert!(!out.stdout().contains("warning"), "{}", out.stdout());
    let out = s
        .run(&["run", "--emulate", p.to_str().unwrap()])
        .expect_code(0);
    assert!(!out.stdout().contains("skipped by rep"), "{}", out.stdout());
}

#[test]
fn the_default_report_start_fills_an_outage_from_the_ledger() {
    // Loaded through the month four months ago; then the job did not run for months.
    let today = Utc::now().date_naive();
    let first = today.with_day(1).unwrap();
    let loaded = first.checked_sub_months(Months::new(4)).unwrap();
    let loaded_end = loaded
        .checked_add_months(Months::new(1))
        .unwrap()
        .pred_opt()
        .unwrap();
    let resume = loaded_end.succ_opt().unwrap();
    let s = Scratch::new();
    let p = s.pipeline("report.toml", &report_pipeline(""));
    write_report_ledger(&s, &[(loaded, loaded_end)]);
    let out = s
        .run(&["plan", "--emulate", p.to_str().unwrap()])
        .expect_code(0);
    let plan = out.stdout();
    // Not "last month": the first month the ledger lacks, and every one after it.
    assert!(
        plan.contains("source `rep`: 4 window(s) to fetch"),
        "{plan}"
    );
    assert!(
        plan.contains(&format!("sess-im-zu00-zu01 {resume}..")),
        "{plan}"
    );
    assert!(
        !plan.contains(&format!("sess-im-zu00-zu01 {loaded}..")),
        "{plan}"
    );
    s.run(&["run", "--emulate", p.to_str().unwrap()])
        .expect_code(0);
    assert_eq!(lake_versions(&s), report_rows_between(resume, today));
}

#[test]
fn chat_reports_of_this_month_keep_the_newest_version() {
    let s = Scratch::new();
    let today = Utc::now().date_naive();
    let first = today.with_day(1).unwrap();
    let p = s.pipeline(
        "report.toml",
        &format!(
            r#"
[pipeline]
name = "r"

[sources.rep]
type = "zoom_chat_report"
sessions = ["sess-ch-eng", "sess-im-zu00-zu01"]
start = "{first}"
end = "{today}"

[transforms.canonical]
type = "normalize"
inputs = ["rep"]

[transforms.latest]
type = "dedupe"
inputs = ["canonical"]
keep = "latest"

[sinks.out]
type = "jsonl"
inputs = ["latest"]
path = "./lake"
compression = "none"
"#
        ),
    );
    s.run(&["run", "--emulate", p.to_str().unwrap()])
        .expect_code(0);
    let from = first
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis();
    let to = today
        .and_hms_opt(23, 59, 59)
        .unwrap()
        .and_utc()
        .timestamp_millis()
        + 999;
    let mut want = BTreeMap::new();
    for (id, conv) in data::sessions() {
        if id != "sess-ch-eng" && id != "sess-im-zu00-zu01" {
            continue;
        }
        for m in data::conversation_messages(42, 1.0, &conv, from, to, true) {
            let e = want.entry(m.id.clone()).or_insert((0, String::new()));
            if m.timestamp > e.0 {
                *e = (m.timestamp, m.status.as_str().to_lowercase());
            }
        }
    }
    let rows = read_jsonl(&s.path("lake"));
    let got: BTreeMap<String, (i64, String)> = rows
        .iter()
        .map(|r| {
            assert_eq!(r["stream"], "chat_report");
            (
                r["message_id"].as_str().unwrap().to_string(),
                (
                    r["version"].as_i64().unwrap(),
                    r["status"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    assert_eq!(got.len(), rows.len(), "one row per message");
    assert_eq!(got, want);
}

#[test]
fn the_zoom_pipeline_plans_and_validates() {
    let s = Scratch::new();
    let p = repo("pipelines/zoom.toml");
    s.run(&["validate", "--emulate", p.to_str().unwrap()])
        .expect_code(0);
    let out = s
        .run(&["plan", "--emulate", p.to_str().unwrap()])
        .expect_code(0);
    assert!(out.stdout().contains("zoom_report"), "{}", out.stdout());
}

#[test]
fn saved_pages_load_with_the_reference_mapping() {
    let s = Scratch::new();
    let pages = [
        r#"{"date":"2025-05-02","from":"2025-05-01T00:00:00Z","to":"2025-05-02T00:00:00Z","page_size":2,"next_page_token":"x","user_id":"u1","to_channel":"ch1","messages":[{"id":"m1","message":"edited text","sender":"a@x","sender_member_id":"mem-a","send_member_id":"mem-a","sender_display_name":"A","date_time":"2025-05-01T10:05:00Z","timestamp":1746093900000,"status":"Edited","files":[]},{"id":"m2","message":"bot","send_member_id":"mem-b","date_time":"2025-05-01T10:01:00Z","timestamp":1746093660000,"status":"Normal","bot_message":{}}]}"#,
        r#"{"date":"2025-05-02","from":"2025-05-01T00:00:00Z","to":"2025-05-02T00:00:00Z","page_size":2,"next_page_token":"","user_id":"u1","to_channel":"ch1","messages":[{"id":"m1","message":"original  ","send_member_id":"mem-a","sender_display_name":"A","date_time":"2025-05-01T10:00:00Z","timestamp":1746093600000,"files":[{"file_id":"f1","file_name":"a.png","file_size":12,"download_url":"https://x/f1"}],"reply_main_message_id":"m0"}]}"#,
    ];
    std::fs::write(s.path("pages.jsonl"), pages.join("\n")).unwrap();
    let p = s.pipeline(
        "files.toml",
        r#"
[pipeline]
name = "zf"

[sources.z]
type = "zoom_user_messages"
files = ["pages.jsonl"]

[transforms.canonical]
type = "normalize"
inputs = ["z"]

[transforms.latest]
type = "dedupe"
inputs = ["canonical"]
keep = "latest"

[transforms.humans]
type = "bot_filter"
inputs = ["latest"]
mode = "exclude"

[sinks.out]
type = "jsonl"
inputs = ["humans"]
path = "./out"
compression = "none"
"#,
    );
    s.run(&["run", p.to_str().unwrap()]).expect_code(0);
    let rows = read_jsonl(&s.path("out"));
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(r["message_id"], "m1");
    assert_eq!(r["conversation_id"], "ch1");
    assert_eq!(r["sender_id"], "a@x", "the e-mail (spec section 3)");
    assert_eq!(r["text"], "edited text");
    assert_eq!(r["status"], "edited");
    assert_eq!(r["version"], 1746093900000i64);
    assert_eq!(r["channel"], "chat");
    assert_eq!(r["attachments"].as_array().unwrap().len(), 0);
}

#[test]
fn a_second_run_skips_the_windows_the_first_committed() {
    let s = Scratch::new();
    // Without a lookback: the default reads the last day again (see the test below).
    let p = s.pipeline("zoom.toml", &pipeline("lookback = \"0s\""));
    let args = ["run", "--emulate", p.to_str().unwrap()];
    let first = s.run(&args).expect_code(0);
    assert!(
        !first.stdout().contains("(0 source records"),
        "{}",
        first.stdout()
    );
    let second = s.run(&args).expect_code(0);
    assert!(
        second.stdout().contains("(0 source records"),
        "{}",
        second.stdout()
    );
    assert_exact(&s);
}

#[test]
fn conversations_zoom_does_not_serve_are_skipped_and_reported_without_failing_the_run() {
    let (s, out) = run_faults(
        "zoom.slow_ms=0",
        r#"users = ["user01@example.com"]
conversations = { to_channel = ["ch-general", "ch-ghost"] }"#,
    );
    let out = out.expect_code(0);
    let stdout = out.stdout();
    assert!(
        stdout.contains("skipped by zoom_dm:") && stdout.contains("ch-ghost"),
        "{stdout}"
    );
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(s.path("lake/_state/zoom_e2e/last_run.json")).unwrap(),
    )
    .unwrap();
    let skipped = summary["components"][0]["skipped"].as_array().unwrap();
    assert!(
        !skipped.is_empty()
            && skipped
                .iter()
                .all(|v| v.as_str().unwrap().contains("ch-ghost")),
        "{skipped:?}"
    );
    assert!(
        !read_jsonl(&s.path("lake/zoom")).is_empty(),
        "ch-general still loads"
    );
}

#[test]
fn people_who_left_are_archived_unless_user_status_leaves_them_out() {
    let left = data::conversations()
        .into_iter()
        .find(|c| c.key() == "im-zu06-zu07")
        .unwrap();
    let theirs: BTreeSet<String> =
        data::conversation_messages(42, 1.0, &left, ms(START), ms(END) + 999, true)
            .into_iter()
            .map(|m| m.id)
            .collect();
    assert!(!theirs.is_empty());
    let ids = |s: &Scratch| -> BTreeSet<String> {
        read_jsonl(&s.path("lake/zoom"))
            .iter()
            .map(|r| r["message_id"].as_str().unwrap().to_string())
            .collect()
    };

    // By default discovery lists inactive users too: their 1:1 is in the lake.
    let (s, out) = run_faults("", "");
    out.expect_code(0);
    assert!(ids(&s).is_superset(&theirs));

    // `user_status = ["active"]` leaves deactivated users out, as Zoom's default listing does.
    let (s, out) = run_faults("", r#"user_status = ["active"]"#);
    out.expect_code(0);
    assert!(ids(&s).is_disjoint(&theirs));
}

/// An edit made after its message's window was loaded reaches the lake through the default
/// lookback (1 day): the emulator places edits in their original message's range once made
/// (`zoom.edits_by=original_time`), so no later window's request returns them; only reading the
/// original's range again does, and `dedupe keep = "latest"` with `across_runs` replaces the row.
#[test]
fn an_edit_after_its_window_was_loaded_replaces_the_row_through_the_default_lookback() {
    const FAULTS: &str = "zoom.edits_by=original_time";
    // A channel message edited (a minute later) well inside the range: the first run ends
    // between the message and its edit.
    let (conv, edited) = data::conversations()
        .into_iter()
        .filter(|c| matches!(c, data::Conversation::Channel { .. }))
        .find_map(|c| {
            let from = ms(START) + 30 * 3_600_000;
            let to = ms(END) - 6 * 3_600_000;
            let edit = data::conversation_messages(42, 1.0, &c, from, to, true)
                .into_iter()
                .find(|m| m.status == data::Status::Edited)?;
            Some((c, edit))
        })
        .unwrap();
    let original_ms = edited.timestamp - 60_000;
    let first_end =
        DateTime::from_timestamp_millis(original_ms.div_euclid(1000) * 1000 + 30_000).unwrap();
    let first_end = first_end.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let user = data::users()[conv.members()[0]].id.clone();
    let body = pipeline(&format!(
        "users = [\"{user}\"]\nconversations = {{ to_channel = [\"{}\"] }}",
        conv.key()
    ))
    .replace("window_days = 1", "window_days = 7")
    .replace("keep = \"latest\"", "keep = \"latest\"\nacross_runs = true");
    let s = Scratch::new();
    let p = s.pipeline("zoom.toml", &body);
    let p = p.to_str().unwrap();
    let row_of = |s: &Scratch| {
        read_jsonl(&s.path("lake/zoom"))
            .into_iter()
            .filter(|r| r["message_id"] == edited.id.as_str())
            .map(|r| r["status"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };

    s.run(&[
        "run",
        "--emulate",
        "--faults",
        FAULTS,
        "--end",
        &first_end,
        p,
    ])
    .expect_code(0);
    assert_eq!(
        row_of(&s),
        ["normal"],
        "the first run saw the message before its edit"
    );

    let plan = s
        .run(&["plan", "--emulate", "--end", END, p])
        .expect_code(0)
        .stdout();
    let reopened = DateTime::parse_from_rfc3339(&first_end).unwrap() - chrono::Duration::days(1)
        + chrono::Duration::seconds(1);
    let reopened = reopened.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    assert!(
        plan.contains(&format!("{reopened}..")),
        "the plan shows the lookback window from {reopened}: {plan}"
    );

    let out = s
        .run(&["run", "--emulate", "--faults", FAULTS, "--end", END, p])
        .expect_code(0);
    assert_eq!(
        row_of(&s),
        ["edited"],
        "one row, the edit: {}",
        out.stdout()
    );

    // The whole lake is what one request over the range returns as of its end.
    let mut want: BTreeMap<String, (i64, String, String)> = BTreeMap::new();
    for m in data::conversation_messages_by(
        42,
        1.0,
        &conv,
        ms(START),
        ms(END) + 999,
        true,
        data::VersionsBy::OriginalTime,
    ) {
        let row = (
            m.timestamp,
            m.status.as_str().to_lowercase(),
            m.text.clone(),
        );
        if want.get(&m.id).is_none_or(|have| have.0 < row.0) {
            want.insert(m.id.clone(), row);
        }
    }
    let mut got = BTreeMap::new();
    for r in read_jsonl(&s.path("lake/zoom")) {
        let id = r["message_id"].as_str().unwrap().to_string();
        let v = (
            r["version"].as_i64().unwrap(),
            r["status"].as_str().unwrap().to_string(),
            r["text"].as_str().unwrap_or_default().to_string(),
        );
        assert!(got.insert(id.clone(), v).is_none(), "{id} twice");
    }
    assert_eq!(got.len(), want.len());
    assert!(got == want, "rows differ from the emulator's dataset");
}

/// Issue 16 item 5: with `raw = true` every row carries its message whole, the JSON object the
/// API answered with: `rich_text`, `at_items` (mentions), `reply_main_message_timestamp`, the bot's
/// `bot_message` content, none of which has a canonical column. The canonical columns are those
/// of a run without it.
#[test]
fn raw_keeps_each_message_as_the_api_gave_it() {
    let s = Scratch::new();
    let body = pipeline("").replace(
        "inputs = [\"zoom_dm\"]\n",
        "inputs = [\"zoom_dm\"]\nraw = true\n",
    );
    let p = s.pipeline("zoom.toml", &body);
    s.run(&["run", "--emulate", p.to_str().unwrap()])
        .expect_code(0);
    assert_exact(&s);
    let rows = read_jsonl(&s.path("lake/zoom"));
    let (mut replies, mut bots) = (0, 0);
    for r in &rows {
        let keys: Vec<&String> = r.as_object().unwrap().keys().collect();
        assert_eq!(keys.last().map(|k| k.as_str()), Some("raw"));
        let raw = r["raw"].as_str().unwrap();
        let m: serde_json::Value = serde_json::from_str(raw).unwrap();
        assert_eq!(m["id"], r["message_id"], "{raw}");
        assert_eq!(
            m["timestamp"].as_i64(),
            r["version"].as_i64(),
            "the same version"
        );
        assert_eq!(m["message"], r["text"]);
        assert!(
            m["rich_text"].is_array() && m["at_items"].is_array(),
            "{raw}"
        );
        if !r["reply_to_id"].is_null() {
            assert_eq!(m["reply_main_message_id"], r["reply_to_id"]);
            assert!(m["reply_main_message_timestamp"].is_i64(), "{raw}");
            replies += 1;
        }
        if r["is_bot"] == true {
            assert!(m["bot_message"]["content"].is_object(), "{raw}");
            bots += 1;
        }
    }
    assert!(replies > 0 && bots > 0, "{replies} replies, {bots} bots");
}

/// Saved pages keep their messages byte for byte too, and a `bot_message: {}` counts as a bot
/// (the reference job's rule: the seeds show `{}` only as a sample's placeholder).
#[test]
fn raw_keeps_saved_messages_byte_for_byte() {
    let s = Scratch::new();
    let human = r#"{"id":"m1", "message":"hi @B","sender":"a@x","timestamp":1746093900000,"at_items":[{"at_contact":"b@x","at_type":1,"start_position":3,"end_position":5}],"reactions":[{"emoji":"\ud83d\udc4d","total_count":1}],"unknown":1.50}"#;
    let bot = r#"{"id":"m2","message":"bot","send_member_id":"mem-b","timestamp":1746093660000,"bot_message":{}}"#;
    let page = format!(
        r#"{{"next_page_token":"","user_id":"u1","to_channel":"ch1","messages":[{human},{bot}]}}"#
    );
    std::fs::write(s.path("pages.jsonl"), page).unwrap();
    let p = s.pipeline(
        "files.toml",
        r#"
[pipeline]
name = "zf"

[sources.z]
type = "zoom_user_messages"
files = ["pages.jsonl"]

[transforms.canonical]
type = "normalize"
inputs = ["z"]
raw = true

[sinks.out]
type = "jsonl"
inputs = ["canonical"]
path = "./out"
compression = "none"
"#,
    );
    s.run(&["run", p.to_str().unwrap()]).expect_code(0);
    let mut rows = read_jsonl(&s.path("out"));
    rows.sort_by_key(|r| r["message_id"].as_str().unwrap().to_string());
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["raw"], human);
    assert_eq!(rows[0]["is_bot"], false);
    assert_eq!(rows[1]["raw"], bot);
    assert_eq!(rows[1]["is_bot"], true);
}

// ---- download_attachments ----------------------------------------------------------------

/// An emulator started by the test (its counters are what the tests read), with `faults`.
async fn attachment_emulator(faults: &str) -> chatlake_emulator::Emulator {
    let config = chatlake_emulator::EmulatorConfig {
        faults: faults.parse().unwrap(),
        ..chatlake_emulator::EmulatorConfig::default()
    };
    chatlake_emulator::Emulator::start(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), config)
        .await
        .unwrap()
}

/// A pipeline downloading the attachments of the test's range from `em` into `files`, its
/// state and lake under `run` (so a second run with another `run` fetches every window again).
fn attachment_pipeline(
    em: &chatlake_emulator::Emulator,
    files: &std::path::Path,
    run: &str,
    extra: &str,
) -> String {
    let creds: BTreeMap<String, String> = em.credentials().into_iter().collect();
    format!(
        r#"
[pipeline]
name = "zoom_files"
state_dir = "./{run}/_state"

[sources.zoom_dm]
type = "zoom_user_messages"
base_url = "{base}/v2"
auth = {{ type = "zoom_server_to_server", account_id = "{account}", client_id = "{client}", client_secret = "{secret}", token_url = "{base}/oauth/token" }}
start = "{START}"
end = "{END}"
window_days = 1
page_size = 20
retry = {{ initial_backoff = "10ms", max_backoff = "100ms" }}
download_attachments = true
attachments_path = "{files}"
{extra}

[transforms.canonical]
type = "normalize"
inputs = ["zoom_dm"]

[sinks.out]
type = "jsonl"
inputs = ["canonical"]
path = "./{run}/lake"
compression = "none"
"#,
        base = em.base_url(),
        account = creds["zoom.account_id"],
        client = creds["zoom.client_id"],
        secret = creds["zoom.client_secret"],
        files = files.display(),
    )
}

/// Runs the binary from async code (the emulator serves on the runtime's other threads).
fn run_blocking(s: &Scratch, pipeline: &std::path::Path) -> common::Outcome {
    tokio::task::block_in_place(|| s.run(&["run", pipeline.to_str().unwrap()]))
}

/// Every attachment of `rows`: (file_id, file_size, download_url, stored_at).
fn attachments_of(rows: &[serde_json::Value]) -> Vec<(String, i64, String, Option<String>)> {
    rows.iter()
        .flat_map(|r| r["attachments"].as_array().cloned().unwrap_or_default())
        .map(|a| {
            (
                a["file_id"].as_str().unwrap().to_owned(),
                a["file_size"].as_i64().unwrap(),
                a["download_url"].as_str().unwrap().to_owned(),
                a["stored_at"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_are_stored_once_by_content_and_rows_point_to_them() {
    let em = attachment_emulator("zoom.file_server_error=3").await;
    let s = Scratch::new();
    let files = s.path("files");
    // One window at a time: the fault counts every file request, so with concurrent windows a
    // file's retries could all land on failing counts; one at a time, the retry right after a
    // 500 succeeds.
    let hosts = format!(
        "download_hosts = [\"{}\"]\nconcurrency = 1",
        em.zoom_download_host()
    );
    let p = s.pipeline("a.toml", &attachment_pipeline(&em, &files, "first", &hosts));
    run_blocking(&s, &p).expect_code(0);
    let rows = read_jsonl(&s.path("first/lake"));
    let all = attachments_of(&rows);
    assert!(all.len() >= 3, "the range has files: {}", all.len());
    let mut ids = BTreeSet::new();
    for (file_id, size, url, stored_at) in &all {
        let stored_at = stored_at
            .as_deref()
            .unwrap_or_else(|| panic!("{file_id} not stored"));
        let want = data::file_content(file_id, *size as usize);
        let hash = sha256_hex(&want);
        assert_eq!(
            std::path::Path::new(stored_at),
            files.join(&hash[..2]).join(format!("{hash}.png")),
            "content-addressed"
        );
        assert_eq!(std::fs::read(stored_at).unwrap(), want, "{file_id}'s bytes");
        assert!(
            url.starts_with(&em.zoom_files_url()),
            "the row keeps its URL"
        );
        ids.insert(file_id.clone());
    }
    let stats = em.stats().zoom;
    assert_eq!(
        stats.files_served as usize,
        ids.len(),
        "each file downloaded once"
    );
    assert!(stats.server_errors > 0, "the file host's 500s were retried");
    assert!(temp_files(&files).is_empty());

    // Another run that fetches every window again (fresh state) downloads nothing.
    let p = s.pipeline(
        "b.toml",
        &attachment_pipeline(&em, &files, "second", &hosts),
    );
    run_blocking(&s, &p).expect_code(0);
    assert_eq!(
        em.stats().zoom.file_requests,
        stats.file_requests,
        "no request to the file host on the second run"
    );
    let again = attachments_of(&read_jsonl(&s.path("second/lake")));
    assert_eq!(
        again.iter().map(|a| &a.3).collect::<BTreeSet<_>>(),
        all.iter().map(|a| &a.3).collect::<BTreeSet<_>>(),
        "the second run's rows point to the same files"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_the_size_limit_is_not_downloaded_and_is_counted() {
    let em = attachment_emulator("").await;
    let s = Scratch::new();
    let files = s.path("files");
    let limit = 50_000;
    let extra = format!(
        "download_hosts = [\"{}\"]\nmax_attachment_bytes = {limit}",
        em.zoom_download_host()
    );
    let p = s.pipeline("a.toml", &attachment_pipeline(&em, &files, "run", &extra));
    let out = run_blocking(&s, &p).expect_code(0);
    let all = attachments_of(&read_jsonl(&s.path("run/lake")));
    let (large, small): (Vec<_>, Vec<_>) = all.iter().partition(|a| a.1 > limit);
    assert!(
        !large.is_empty() && !small.is_empty(),
        "both kinds in the range"
    );
    assert!(
        large.iter().all(|a| a.3.is_none()),
        "no stored_at over the limit"
    );
    assert!(small.iter().all(|a| a.3.is_some()));
    let served = em.stats().zoom.files_served as usize;
    assert_eq!(
        served,
        small.iter().map(|a| &a.0).collect::<BTreeSet<_>>().len(),
        "nothing over the limit was downloaded"
    );
    let all_output = format!("{}{}", out.stdout(), out.stderr());
    assert!(
        all_output.contains("max_attachment_bytes"),
        "warned and counted: {all_output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_file_host_never_receives_the_token() {
    use std::io::{BufRead, BufReader, Write};
    // A foreign host on loopback that records the headers of whatever reaches it.
    let foreign = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", foreign.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen_by_host = seen.clone();
    std::thread::spawn(move || {
        for stream in foreign.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                seen_by_host.lock().unwrap().push(line.clone());
                line.clear();
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx");
        }
    });
    let em = attachment_emulator(&format!("zoom.files_url={origin}")).await;
    let s = Scratch::new();
    let files = s.path("files");
    // Only the emulator's own file host is listed; the files are on the foreign host.
    let hosts = format!("download_hosts = [\"{}\"]", em.zoom_download_host());
    let p = s.pipeline("a.toml", &attachment_pipeline(&em, &files, "run", &hosts));
    let out = run_blocking(&s, &p).expect_code(0);
    let all = attachments_of(&read_jsonl(&s.path("run/lake")));
    assert!(!all.is_empty());
    assert!(
        all.iter()
            .all(|a| a.2.starts_with(&origin) && a.3.is_none())
    );
    let headers = seen.lock().unwrap().clone();
    assert!(
        !headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("authorization")),
        "{headers:?}"
    );
    assert!(
        headers.is_empty(),
        "nothing was requested there: {headers:?}"
    );
    let all_output = format!("{}{}", out.stdout(), out.stderr());
    assert!(all_output.contains("`download_hosts`"), "{all_output}");
    assert!(!files.exists() || temp_files(&files).is_empty());
}

#[test]
fn attachments_go_to_object_storage_whole_and_rows_name_their_objects() {
    use chatlake_store::testing::SeaweedFs;
    let s3 = SeaweedFs::start();
    s3.create_bucket("files");
    let s = Scratch::new();
    let extra =
        "users = [\"zu00\"]\ndownload_attachments = true\nattachments_path = \"s3://files/zoom\"";
    let p = s.pipeline("zoom.toml", &pipeline(extra));
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    s.run_env(&["run", "--emulate", p.to_str().unwrap()], &env)
        .expect_code(0);
    let all = attachments_of(&read_jsonl(&s.path("lake/zoom")));
    assert!(!all.is_empty());
    let store = s3.store("files");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (file_id, size, _, stored_at) in &all {
        let stored_at = stored_at.as_deref().unwrap();
        let relative = stored_at.strip_prefix("s3://files/").unwrap();
        let want = data::file_content(file_id, *size as usize);
        let hash = sha256_hex(&want);
        assert_eq!(relative, format!("zoom/{}/{hash}.png", &hash[..2]));
        let (got, _) = rt
            .block_on(store.read(&store.key(relative)))
            .unwrap()
            .unwrap();
        assert_eq!(got.as_ref(), want.as_slice(), "{file_id}'s object");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_longer_than_the_limit_stops_being_read_there() {
    use std::io::{BufRead, BufReader, Write};
    // A listed file host that answers more than any listed size, with no length announced, so
    // only reading can tell the file is too large.
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", host.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in host.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
            let _ = stream.write_all(&vec![b'x'; 300_000]);
        }
    });
    let em = attachment_emulator(&format!("zoom.files_url={origin}")).await;
    let s = Scratch::new();
    let files = s.path("files");
    let extra = format!(
        "download_hosts = [\"{}\"]\nmax_attachment_bytes = 100001",
        origin.trim_start_matches("http://")
    );
    let p = s.pipeline("a.toml", &attachment_pipeline(&em, &files, "run", &extra));
    let out = run_blocking(&s, &p).expect_code(0);
    let all = attachments_of(&read_jsonl(&s.path("run/lake")));
    assert!(!all.is_empty());
    assert!(all.iter().all(|a| a.1 <= 100_001 && a.3.is_none()));
    let all_output = format!("{}{}", out.stdout(), out.stderr());
    assert!(all_output.contains("reading stopped"), "{all_output}");
    assert!(!files.exists() || temp_files(&files).is_empty());
}
