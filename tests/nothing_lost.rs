//! Issue 20, "nothing lost, even by the operator": one test per data-loss, silent-corruption and
//! misuse path a red-team pass found, each through the binary.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Scratch, read_jsonl};

/// A saved-pages pipeline into JSON Lines, every row kept.
fn zoom_files_pipeline(s: &Scratch) -> std::path::PathBuf {
    s.pipeline(
        "zoom.toml",
        r#"
[pipeline]
name = "z"
state_dir = "./state"

[sources.z]
type = "zoom_user_messages"
files = ["pages.jsonl"]

[transforms.canonical]
type = "normalize"
inputs = ["z"]

[sinks.out]
type = "jsonl"
inputs = ["canonical"]
path = "./out"
compression = "none"
"#,
    )
}

/// Item 5: a Zoom `timestamp` far out of range used to wrap round (milliseconds × 1000) into a
/// garbage time written with exit 0; now the row is a dead letter with its reason.
#[test]
fn a_zoom_time_out_of_range_is_a_dead_letter() {
    let s = Scratch::new();
    let page = r#"{"from":"2025-05-01T00:00:00Z","to":"2025-05-02T00:00:00Z","next_page_token":"","user_id":"u1","to_channel":"ch1","messages":[{"id":"ok","message":"fine","sender":"a@x","timestamp":1746093900000},{"id":"huge","message":"wraps","sender":"a@x","timestamp":10000000000000000},{"id":"tiny","message":"wraps too","sender":"a@x","timestamp":-9223372036854775}]}"#;
    std::fs::write(s.path("pages.jsonl"), page).unwrap();
    let p = zoom_files_pipeline(&s);
    s.run(&["run", p.to_str().unwrap()]).expect_code(3);
    let rows = read_jsonl(&s.path("out"));
    let ids: Vec<&str> = rows
        .iter()
        .map(|r| r["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["ok"], "{rows:?}");
    let dead = common::files(&s.path("state/z/dead_letters"), ".dead.json-lines");
    assert_eq!(dead.len(), 1, "one dead-letter file");
    let text = std::fs::read_to_string(&dead[0]).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("out of range"), "{text}");
    assert!(
        text.contains("10000000000000000"),
        "the raw value is kept: {text}"
    );
}

/// Item 8: two components with one name used to panic (exit 101); now exit 2 naming both keys.
#[test]
fn a_component_name_used_twice_is_a_config_error_naming_both() {
    let s = Scratch::new();
    let p = s.pipeline(
        "p.toml",
        r#"
[pipeline]
name = "t"
state_dir = "./state"

[sources.lw]
type = "lineworks_message_contents"
files = ["in/*.csv"]

[transforms.lw]
type = "normalize"
inputs = ["lw"]

[sinks.lake]
type = "parquet"
inputs = ["lw"]
path = "./lake"
"#,
    );
    for command in ["validate", "run", "plan"] {
        let out = s.run(&[command, p.to_str().unwrap()]).expect_code(2);
        let err = out.stderr();
        assert!(
            err.contains("p.toml: transforms.lw:") && err.contains("`sources.lw`"),
            "{command}: {err}"
        );
    }
}

/// Item 8: a YAML mapping with a key twice used to load with the last value; TOML refuses it,
/// and now YAML does too, naming the key, the mapping's path and its line.
#[test]
fn a_duplicate_yaml_key_is_refused() {
    let s = Scratch::new();
    let p = s.pipeline(
        "p.yaml",
        r#"
pipeline:
  name: t
  state_dir: ./state
sources:
  lw:
    type: lineworks_message_contents
    files: ["in/*.csv"]
transforms:
  canonical:
    type: normalize
    inputs: [lw]
sinks:
  lake:
    type: parquet
    inputs: [canonical]
    path: ./lake
    compression: zstd
    compression: none
"#,
    );
    let out = s.run(&["validate", p.to_str().unwrap()]).expect_code(2);
    let err = out.stderr();
    assert!(
        err.contains("p.yaml") && err.contains("duplicate") && err.contains("compression"),
        "{err}"
    );
    assert!(
        err.contains("sinks.lake") && err.contains("line 15"),
        "the mapping's key path and line: {err}"
    );
}

// ---- item 1: files mode follows the ledger ----------------------------------------------------

/// The rows of a JSON Lines lake by `message_id`, each with its text; panics on an id twice.
fn texts_by_id(dir: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for row in read_jsonl(dir) {
        let id = row["message_id"].as_str().unwrap().to_string();
        let text = row["text"].as_str().unwrap_or_default().to_string();
        assert!(out.insert(id.clone(), text).is_none(), "{id} twice");
    }
    out
}

/// What a source sent in the last run of a pipeline.
fn records_out(s: &Scratch, pipeline: &str, source: &str) -> u64 {
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(s.path(&format!("state/{pipeline}/last_run.json"))).unwrap(),
    )
    .unwrap();
    summary["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == source)
        .and_then(|c| c["records_out"].as_u64())
        .unwrap()
}

/// One saved page of user messages: `(id, text, timestamp ms, action_timestamp ms)`.
fn zoom_page(messages: &[(&str, &str, i64, Option<i64>)]) -> String {
    let messages: Vec<serde_json::Value> = messages
        .iter()
        .map(|(id, text, ts, action)| {
            let mut m = serde_json::json!({
                "id": id, "message": text, "sender": "a@x", "timestamp": ts,
            });
            if let Some(action) = action {
                m["status"] = "Edited".into();
                m["action_timestamp"] = (*action).into();
            }
            m
        })
        .collect();
    let page = serde_json::json!({
        "from": "2025-05-01T00:00:00Z", "to": "2025-05-02T00:00:00Z", "next_page_token": "",
        "user_id": "u1", "to_channel": "ch1", "messages": messages,
    });
    format!("{page}\n")
}

/// Item 1: a saved-pages file loaded, then appended to, used to be loaded again with across-runs
/// dedupe dropping the rows already seen, so the window's new files held only the new rows and
/// the lake lost the earlier ones. Now a changed file is loaded again whole, its own earlier rows
/// not counted as seen; an unchanged file is not loaded again.
#[test]
fn a_saved_pages_file_appended_to_keeps_its_earlier_rows() {
    let s = Scratch::new();
    let p = s.pipeline(
        "zoom.toml",
        r#"
[pipeline]
name = "z"
state_dir = "./state"

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
across_runs = true

[sinks.out]
type = "jsonl"
inputs = ["latest"]
path = "./out"
compression = "none"
"#,
    );
    // 1 May 2025, 10:00 UTC and on: every row in one `sent_date`, so the new load writes the
    // same files as the first.
    let t = 1_746_093_600_000_i64;
    let first = zoom_page(&[("m1", "hello", t, None), ("m2", "second", t + 60_000, None)]);
    std::fs::write(s.path("pages.jsonl"), &first).unwrap();
    s.run(&["run", p.to_str().unwrap()]).expect_code(0);
    assert_eq!(texts_by_id(&s.path("out")).len(), 2);

    // Pages saved later are appended: an edit of m1 and two new messages.
    let later = zoom_page(&[
        ("m1", "hello (edited)", t, Some(t + 3_600_000)),
        ("m3", "third", t + 120_000, None),
        ("m4", "fourth", t + 180_000, None),
    ]);
    std::fs::write(s.path("pages.jsonl"), format!("{first}{later}")).unwrap();
    s.run(&["run", p.to_str().unwrap()]).expect_code(0);
    let want: std::collections::BTreeMap<String, String> = [
        ("m1", "hello (edited)"),
        ("m2", "second"),
        ("m3", "third"),
        ("m4", "fourth"),
    ]
    .into_iter()
    .map(|(id, text)| (id.to_string(), text.to_string()))
    .collect();
    assert_eq!(
        texts_by_id(&s.path("out")),
        want,
        "the earlier rows and the new ones"
    );

    // Unchanged, the file is not loaded again.
    s.run(&["run", p.to_str().unwrap()]).expect_code(0);
    assert_eq!(records_out(&s, "z", "z"), 0);
    assert_eq!(texts_by_id(&s.path("out")), want);
}

/// Item 1, the same rule for LINE WORKS files with `keep = "first"`: a file rewritten with one
/// more row is loaded again whole, and a row another file loaded still counts as loaded.
#[test]
fn a_lineworks_file_rewritten_with_one_more_row_loads_every_row_once() {
    let s = Scratch::new();
    let p = s.pipeline(
        "lw.toml",
        r#"
[pipeline]
name = "lw"
state_dir = "./state"

[sources.lw]
type = "lineworks_message_contents"
files = ["in/*.csv"]

[transforms.canonical]
type = "normalize"
inputs = ["lw"]

[transforms.unique]
type = "dedupe"
inputs = ["canonical"]
keep = "first"
across_runs = true

[sinks.out]
type = "jsonl"
inputs = ["unique"]
path = "./out"
compression = "none"
"#,
    );
    let csv = |rows: &[&str]| {
        let mut text = String::from("\u{feff}Date,Sender,Recipient,Message room ID,Message\r\n");
        for (i, row) in rows.iter().enumerate() {
            text.push_str(&format!(
                "2025-02-01 10:0{i}:00,A(a@example.com),B(b@example.com),1,{row}\r\n"
            ));
        }
        text
    };
    std::fs::create_dir_all(s.path("in")).unwrap();
    // b.csv holds a's third row and a row of its own, at the times a's fourth and fifth
    // rows will have: b's copy of r3 is dropped (a loaded it first), r5 is b's.
    std::fs::write(s.path("in/a.csv"), csv(&["r1", "r2", "r3"])).unwrap();
    std::fs::write(
        s.path("in/b.csv"),
        "\u{feff}Date,Sender,Recipient,Message room ID,Message\r\n\
         2025-02-01 10:02:00,A(a@example.com),B(b@example.com),1,r3\r\n\
         2025-02-01 10:04:00,A(a@example.com),B(b@example.com),1,r5\r\n",
    )
    .unwrap();
    s.run(&["run", p.to_str().unwrap()]).expect_code(0);
    let texts = |s: &Scratch| -> Vec<String> {
        let mut t: Vec<String> = texts_by_id(&s.path("out")).into_values().collect();
        t.sort();
        t
    };
    assert_eq!(texts(&s), ["r1", "r2", "r3", "r5"]);

    // a.csv rewritten with r4, and r5 that b loaded already.
    std::fs::write(s.path("in/a.csv"), csv(&["r1", "r2", "r3", "r4", "r5"])).unwrap();
    s.run(&["run", p.to_str().unwrap()]).expect_code(0);
    assert_eq!(texts(&s), ["r1", "r2", "r3", "r4", "r5"], "every row once");
    assert_eq!(
        records_out(&s, "lw", "lw"),
        5,
        "a.csv loaded again, b.csv not"
    );
}

/// A changed input file is loaded again whole, and its window's earlier files are replaced, also
/// those the new load does not overwrite: rows taken out of the file (here every row of one
/// day, in a sink partitioned by day) used to stay in the lake beside the new load's files.
#[test]
fn a_rewritten_file_leaves_no_file_of_its_earlier_self() {
    let s = Scratch::new();
    let p = s.pipeline(
        "lw.toml",
        r#"
[pipeline]
name = "lw"
state_dir = "./state"

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
partition_by = ["sent_date"]
compression = "none"
"#,
    );
    let header = "\u{feff}Date,Sender,Recipient,Message room ID,Message\r\n";
    let row = |day: u32, text: &str| {
        format!("2025-02-0{day} 10:00:00,A(a@example.com),B(b@example.com),1,{text}\r\n")
    };
    std::fs::create_dir_all(s.path("in")).unwrap();
    std::fs::write(
        s.path("in/a.csv"),
        format!("{header}{}{}", row(1, "kept"), row(3, "taken out")),
    )
    .unwrap();
    s.run(&["run", p.to_str().unwrap()]).expect_code(0);
    let texts = |s: &Scratch| -> Vec<String> {
        let mut t: Vec<String> = texts_by_id(&s.path("out")).into_values().collect();
        t.sort();
        t
    };
    assert_eq!(texts(&s), ["kept", "taken out"]);

    std::fs::write(
        s.path("in/a.csv"),
        format!("{header}{}{}", row(1, "kept"), row(2, "added")),
    )
    .unwrap();
    s.run(&["run", p.to_str().unwrap()]).expect_code(0);
    assert_eq!(
        texts(&s),
        ["added", "kept"],
        "the file's rows now, no others"
    );
}

// ---- items 6, 7, 10, 11 -------------------------------------------------------------------

/// A LINE WORKS files-mode pipeline writing the raw rows to JSON Lines, partitioned by
/// `partition_by` (a TOML array's contents).
fn lineworks_files_pipeline(s: &Scratch, partition_by: &str) -> std::path::PathBuf {
    s.pipeline(
        "lw.toml",
        &format!(
            r#"
[pipeline]
name = "lw"
state_dir = "./state"

[sources.lw]
type = "lineworks_message_contents"
files = ["in/*.csv"]

[sinks.out]
type = "jsonl"
inputs = ["lw"]
path = "./out"
compression = "none"
partition_by = [{partition_by}]
"#
        ),
    )
}

/// Item 6: an opening quote never closed used to swallow every following row into one message
/// field, exit 0; now the record is a dead letter naming the line, and the rows it holds are in
/// it, not gone.
#[test]
fn an_unbalanced_quote_in_a_csv_is_a_dead_letter_with_its_line() {
    let s = Scratch::new();
    std::fs::create_dir_all(s.path("in")).unwrap();
    let csv = "Date,Sender,Recipient,Message room ID,Message\n\
               2025-05-01 09:00:00,a@x,b@x,r1,first\n\
               2025-05-01 09:01:00,a@x,b@x,r1,\"a multi-line message\nwith, commas, inside, it\"\n\
               2025-05-01 09:02:00,a@x,b@x,r1,\"broken quote\n\
               2025-05-01 09:03:00,a@x,b@x,r1,swallowed one\n\
               2025-05-01 09:04:00,a@x,b@x,r1,swallowed two\n";
    std::fs::write(s.path("in/export.csv"), csv).unwrap();
    let p = lineworks_files_pipeline(&s, "");
    s.run(&["run", p.to_str().unwrap()]).expect_code(3);
    let rows = read_jsonl(&s.path("out"));
    let messages: Vec<&str> = rows
        .iter()
        .map(|r| r["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        ["first", "a multi-line message\nwith, commas, inside, it"],
        "{rows:?}"
    );
    let dead = common::files(&s.path("state/lw/dead_letters"), ".dead.json-lines");
    assert_eq!(dead.len(), 1, "one dead-letter file");
    let text = std::fs::read_to_string(&dead[0]).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("unbalanced quote on line 5") && text.contains("2 following"),
        "{text}"
    );
    assert!(
        text.contains("swallowed one") && text.contains("swallowed two"),
        "the swallowed rows are kept in the dead letter: {text}"
    );
}

/// Item 7: a partition value longer than a directory name may be used to fail the window with
/// ENAMETOOLONG on every run; now its directory holds a prefix and a hash, the rows hold the
/// whole value as `<column>__full`, and the window commits.
#[test]
fn a_partition_value_too_long_for_a_directory_name_commits() {
    let s = Scratch::new();
    std::fs::create_dir_all(s.path("in")).unwrap();
    let long_room = "r".repeat(400);
    let csv = format!(
        "Date,Sender,Recipient,Message room ID,Message\n\
         2025-05-01 09:00:00,a@x,b@x,{long_room},long\n\
         2025-05-01 09:01:00,a@x,b@x,short,short\n"
    );
    std::fs::write(s.path("in/export.csv"), csv).unwrap();
    let p = lineworks_files_pipeline(&s, r#""room_id""#);
    s.run(&["run", p.to_str().unwrap()]).expect_code(0);
    let mut rows = read_jsonl(&s.path("out"));
    rows.sort_by_key(|r| r["message"].as_str().unwrap().to_string());
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["message"], "long");
    assert_eq!(rows[0]["room_id__full"], long_room.as_str());
    let dir = rows[0]["room_id"].as_str().unwrap();
    assert!(
        dir.len() < 255 && dir.starts_with("rrrr") && dir.contains('~'),
        "{dir}"
    );
    assert_eq!(rows[1]["room_id"], "short");
    assert!(rows[1].get("room_id__full").is_none(), "{:?}", rows[1]);
    // Run again: nothing to do, nothing failed.
    s.run(&["run", p.to_str().unwrap()]).expect_code(0);
}

/// A server on loopback that refuses every request with a 400 whose body echoes the request's
/// line and headers back, as some proxies and providers do; its base URL.
fn echoing_server() -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                request.push(line.trim_end().to_string());
            }
            let token = request
                .iter()
                .find(|l| l.to_ascii_lowercase().starts_with("authorization: bearer "))
                .map(|l| l["authorization: bearer ".len()..].to_string())
                .unwrap_or_default();
            let body = serde_json::json!({
                "code": "INVALID_REQUEST",
                "description": format!("refused: {}", request.join(" | ")),
                "echo": { "access_token": token },
            })
            .to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}/v1.0")
}

/// Item 10: an error body that echoes the request used to copy the bearer token into stderr
/// and the run summary; now every secret and credential-shaped value is `***` there.
#[test]
fn a_token_echoed_in_an_error_body_is_redacted_everywhere() {
    let s = Scratch::new();
    let token = "lw-echoed-bearer-token-4242";
    let p = s.pipeline(
        "echo.toml",
        &format!(
            r#"
[pipeline]
name = "echo"
state_dir = "./state"

[sources.lw]
type = "lineworks_message_contents"
base_url = "{}"
auth = {{ type = "bearer", token = "${{LW_ECHO_TOKEN}}" }}
start = "2025-01-01T00:00:00+09:00"
end = "2025-01-01T23:59:59+09:00"
retry = {{ max_attempts = 1, initial_backoff = "20ms", max_backoff = "20ms" }}

[sinks.out]
type = "jsonl"
inputs = ["lw"]
path = "./out"
"#,
            echoing_server()
        ),
    );
    let out = s.run_env(&["run", p.to_str().unwrap()], &[("LW_ECHO_TOKEN", token)]);
    assert_eq!(out.code(), 1, "{}\n{}", out.stdout(), out.stderr());
    let mut everything = out.stdout() + &out.stderr();
    for f in common::files(&s.path("state"), "") {
        everything.push_str(&String::from_utf8_lossy(&std::fs::read(f).unwrap()));
    }
    assert!(
        everything.contains("INVALID_REQUEST") && everything.contains("refused: GET"),
        "the provider's words are still there: {everything}"
    );
    assert!(
        !everything.contains(token),
        "the token leaked: {everything}"
    );
    assert!(everything.contains("Bearer ***"), "{everything}");
}

/// Item 11: state, run summaries and dead letters used to be created with the umask (readable by
/// every user); now the state_dir and everything below it are 0700/0600, and the sink's files
/// keep the umask.
#[cfg(unix)]
#[test]
fn state_and_dead_letters_are_private_and_the_lake_is_not() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let s = Scratch::new();
    std::fs::create_dir_all(s.path("in")).unwrap();
    std::fs::write(
        s.path("in/export.csv"),
        "Date,Sender,Recipient,Message room ID,Message\n\
         2025-05-01 09:00:00,a@x,b@x,r1,kept\n\
         2025-05-01 09:01:00,a@x,b@x,r1\n",
    )
    .unwrap();
    let p = lineworks_files_pipeline(&s, "");
    s.run(&["run", p.to_str().unwrap()]).expect_code(3);
    let state = s.path("state");
    assert_eq!(mode(&state), 0o700);
    let mut dirs = 0;
    let mut files = 0;
    let mut stack = vec![state];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                assert_eq!(mode(&path), 0o700, "{}", path.display());
                dirs += 1;
                stack.push(path);
            } else {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
                files += 1;
            }
        }
    }
    assert!(dirs >= 3 && files >= 4, "{dirs} directories, {files} files");
    assert_eq!(
        common::files(&s.path("state/lw/dead_letters"), ".dead.json-lines").len(),
        1
    );
    // The lake is for readers: its files keep the umask (which grants the owner read and write
    // and never the 0600 of state unless the umask says so).
    let lake = common::files(&s.path("out"), ".jsonl");
    let reference = s.path("reference");
    std::fs::write(&reference, "x").unwrap();
    assert_eq!(mode(&lake[0]), mode(&reference));
}

/// A LINE WORKS pipeline against the emulator: four days in two windows into JSON Lines.
const RELOAD: &str = r#"
[pipeline]
name = "reload"
state_dir = "./state"

[sources.lw]
type = "lineworks_message_contents"
auth = { type = "bearer", token = "${LW_TOKEN:-}" }
start = "2025-01-01T00:00:00+09:00"
end = "2025-01-04T23:59:59+09:00"
window_days = DAYS
requests_per_minute = 6000
retry = { max_attempts = 1 }

[transforms.canonical]
type = "normalize"
inputs = ["lw"]

[sinks.lake]
type = "jsonl"
inputs = ["canonical"]
path = "./lake"
partition_by = ["sent_date"]
compression = "none"
"#;

/// The lake's rows as (message id, text), sorted: what a reader sees.
fn lake_ids(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = read_jsonl(dir)
        .iter()
        .map(|r| {
            (
                r["message_id"].as_str().unwrap_or_default().to_string(),
                r["text"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// The statuses in a source's ledger.
fn ledger_statuses(path: &std::path::Path) -> Vec<String> {
    let ledger: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    ledger["windows"]
        .as_object()
        .unwrap()
        .values()
        .map(|w| w["status"].as_str().unwrap().to_string())
        .collect()
}

/// Item 2: `state reset` and `--full-refresh` used to forget the ledger, so every sink deleted
/// the pipeline's files when the next run started, and a refetch that then failed left the lake
/// empty. Now the windows wait to be reloaded and keep their files until replaced; a reset asks
/// first (or wants --yes), lists what it forgets, and --dry-run changes nothing.
#[test]
fn a_reset_or_full_refresh_whose_refetch_fails_keeps_the_lake() {
    let s = Scratch::new();
    let p = s.pipeline("p.toml", &RELOAD.replace("DAYS", "2"));
    let p = p.to_str().unwrap();
    let ledger = s.path("state/reload/sources/lw.json");
    s.run(&["run", "--emulate", p]).expect_code(0);
    let loaded = lake_ids(&s.path("lake"));
    assert!(loaded.len() > 1_000, "{}", loaded.len());

    // Not on a terminal and no --yes: refused, nothing forgotten.
    let refused = s.run(&["state", "reset", p]).expect_code(2);
    assert!(refused.stderr().contains("--yes"), "{}", refused.stderr());
    let listed = s
        .run(&["state", "reset", p, "--dry-run"])
        .expect_code(0)
        .stdout();
    assert!(
        listed.contains("source `lw`: 2 window(s) to load again"),
        "{listed}"
    );
    assert_eq!(ledger_statuses(&ledger), ["committed", "committed"]);

    s.run(&["state", "reset", p, "--yes"]).expect_code(0);
    assert_eq!(ledger_statuses(&ledger), ["reload", "reload"]);
    // The provider is down: every window fails. The archive stays.
    let failed = s
        .run(&[
            "run",
            "--emulate",
            "--faults",
            "lineworks.server_error=1",
            p,
        ])
        .expect_code(1);
    assert_eq!(
        lake_ids(&s.path("lake")),
        loaded,
        "the failed refetch kept the lake"
    );
    assert!(
        failed
            .stdout()
            .contains("2 window(s) reset for reloading were not loaded again"),
        "{}",
        failed.stdout()
    );

    // Loaded again in windows of another size: the new windows replace the old ones' files.
    let p4 = s.pipeline("p.toml", &RELOAD.replace("DAYS", "4"));
    let p4 = p4.to_str().unwrap();
    s.run(&["run", "--emulate", p4]).expect_code(0);
    assert_eq!(
        lake_ids(&s.path("lake")),
        loaded,
        "reloaded once, not twice"
    );
    assert_eq!(ledger_statuses(&ledger), ["committed"]);

    // --full-refresh that fails keeps the lake too; one that succeeds replaces it.
    s.run(&[
        "run",
        "--emulate",
        "--full-refresh",
        "--faults",
        "lineworks.server_error=1",
        p4,
    ])
    .expect_code(1);
    assert_eq!(lake_ids(&s.path("lake")), loaded);
    s.run(&["run", "--emulate", "--full-refresh", p4])
        .expect_code(0);
    assert_eq!(lake_ids(&s.path("lake")), loaded);
    assert_eq!(ledger_statuses(&ledger), ["committed"]);
}

/// Item 2: files a sink deletes when it starts (of windows the ledger does not list) used to be
/// reported as a count at INFO; now at WARN, with the count and a sample of their names.
#[test]
fn files_deleted_at_start_are_logged_at_warn_with_their_names() {
    let s = Scratch::new();
    let fixture = format!(
        "{:?}",
        common::repo("fixtures/lineworks/ja_JP_sample.csv")
            .to_str()
            .unwrap()
    );
    let p = s.pipeline(
        "p.toml",
        &SHARED
            .replace("STATE", "./state")
            .replace("FILES", &fixture),
    );
    s.run(&["run", p.to_str().unwrap()]).expect_code(0);
    let kept = common::files(&s.path("shared"), ".jsonl");
    assert_eq!(kept.len(), 1);
    // A file of a window the ledger does not list, as a run killed before its commit point
    // leaves one.
    let stray = "part-shared.lake.lw-00000000deadbeef.0000.jsonl";
    std::fs::copy(&kept[0], s.path("shared").join(stray)).unwrap();
    let out = s.run(&["run", p.to_str().unwrap()]).expect_code(0);
    let line = out
        .stderr()
        .lines()
        .find(|l| l.contains(stray))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        line.contains("WARN") && line.contains("uncommitted=1"),
        "{}",
        out.stderr()
    );
    assert_eq!(common::files(&s.path("shared"), ".jsonl"), kept);
}

/// A LINE WORKS files pipeline named `shared` into `./shared`, its state in `STATE`.
const SHARED: &str = r#"
[pipeline]
name = "shared"
state_dir = "STATE"

[sources.lw]
type = "lineworks_message_contents"
files = [FILES]

[transforms.canonical]
type = "normalize"
inputs = ["lw"]

[sinks.lake]
type = "jsonl"
inputs = ["canonical"]
path = "./shared"
compression = "none"
"#;

/// Item 3: a second pipeline of the same name with another state directory and the same sink
/// path used to delete the first one's files when it started (they are not in its ledger). Now
/// the path is claimed by the first state directory and the second refuses to start, naming
/// both; `validate` refuses paths that would lose or mix data.
#[test]
fn a_sink_path_of_another_state_directory_is_refused() {
    let s = Scratch::new();
    let fixture = |f: &str| format!("{:?}", common::repo(f).to_str().unwrap());
    let first = s.pipeline(
        "first.toml",
        &SHARED
            .replace("STATE", "./state_a")
            .replace("FILES", &fixture("fixtures/lineworks/ja_JP_sample.csv")),
    );
    let second = s.pipeline(
        "second.toml",
        &SHARED
            .replace("STATE", "./state_b")
            .replace("FILES", &fixture("fixtures/lineworks/malformed.csv")),
    );
    s.run(&["run", first.to_str().unwrap()]).expect_code(0);
    let rows = lake_ids(&s.path("shared"));
    assert_eq!(rows.len(), 7);

    let refused = s.run(&["run", second.to_str().unwrap()]).expect_code(1);
    let out = refused.stdout() + &refused.stderr();
    assert!(
        out.contains("state_a") && out.contains("state_b") && out.contains("pipeline `shared`"),
        "the error names both owners: {out}"
    );
    assert_eq!(
        lake_ids(&s.path("shared")),
        rows,
        "the first pipeline's files stay"
    );
    // The owner runs on.
    s.run(&["run", first.to_str().unwrap()]).expect_code(0);
    assert_eq!(lake_ids(&s.path("shared")), rows);

    // validate: the root, the home directory, the state directory, a parent of a visible state
    // directory, and two sinks of one format on one path are refused with the key path.
    let bad = |name: &str, state: &str, path: &str, extra: &str| {
        s.pipeline(
            name,
            &format!(
                "[pipeline]\nname = \"v\"\nstate_dir = \"{state}\"\n\n[sources.lw]\ntype = \"lineworks_message_contents\"\nfiles = [\"in/*.csv\"]\n\n[sinks.lake]\ntype = \"parquet\"\ninputs = [\"lw\"]\npath = \"{path}\"\n{extra}"
            ),
        )
    };
    let home = s.path("home");
    std::fs::create_dir_all(&home).unwrap();
    for (name, state, path, extra) in [
        ("root.toml", "./state", "/", ""),
        ("home.toml", "./state", home.to_str().unwrap(), ""),
        ("state.toml", "./state", "./state", ""),
        ("parent.toml", "./data/state", "./data", ""),
        (
            "twice.toml",
            "./state",
            "./out",
            "\n[sinks.copy]\ntype = \"parquet\"\ninputs = [\"lw\"]\npath = \"./out/\"\n",
        ),
    ] {
        let p = bad(name, state, path, extra);
        let out = s
            .run_env(
                &["validate", p.to_str().unwrap()],
                &[("HOME", home.to_str().unwrap())],
            )
            .expect_code(2);
        let key = if name == "twice.toml" {
            "sinks.copy.path"
        } else {
            "sinks.lake.path"
        };
        assert!(
            out.stderr().contains(&format!("{name}: {key}:")),
            "{name}: {}",
            out.stderr()
        );
    }
    // Two formats on one path are fine (their globs differ).
    let p = bad(
        "formats.toml",
        "./state",
        "./out",
        "\n[sinks.copy]\ntype = \"jsonl\"\ninputs = [\"lw\"]\npath = \"./out\"\n",
    );
    s.run(&["validate", p.to_str().unwrap()]).expect_code(0);
}

/// Item 4: when one sink failed to commit a window that another sink had already committed,
/// the committed files stayed visible until the next run's start removed them (the ledger lists
/// the window as failed). Now the run removes them before it ends: the lake holds exactly the
/// ledger's windows after a failed run too.
#[test]
fn a_window_that_failed_in_one_sink_leaves_no_files_in_another() {
    let s = Scratch::new();
    let fixture = common::repo("fixtures/lineworks/ja_JP_sample.csv");
    let p = s.pipeline(
        "p.toml",
        &format!(
            r#"
[pipeline]
name = "two"
state_dir = "./state"

[sources.lw]
type = "lineworks_message_contents"
files = [{fixture:?}]

[transforms.canonical]
type = "normalize"
inputs = ["lw"]

[sinks.first]
type = "jsonl"
inputs = ["canonical"]
path = "./first"
compression = "none"

[sinks.second]
type = "jsonl"
inputs = ["canonical"]
path = "./second"
compression = "none"
"#
        ),
    );
    // A first run learns the name the second sink gives the window's file (names do not change
    // between runs); then everything is forgotten.
    s.run(&["run", p.to_str().unwrap()]).expect_code(0);
    let name = common::files(&s.path("second"), ".jsonl")[0]
        .file_name()
        .unwrap()
        .to_owned();
    for dir in ["state", "first", "second"] {
        std::fs::remove_dir_all(s.path(dir)).unwrap();
    }
    // A directory where the second sink renames its file: its commit fails after it wrote the
    // window whole, while the first sink commits (a write error at the last moment, as a full
    // disk or a failing fsync would give).
    let in_the_way = s.path("second").join(&name);
    std::fs::create_dir_all(&in_the_way).unwrap();
    let failed = s.run(&["run", p.to_str().unwrap()]).expect_code(1);
    let out = failed.stdout() + &failed.stderr();
    assert!(
        out.contains(name.to_str().unwrap()),
        "the rename failed: {out}"
    );
    let visible: Vec<_> = common::files(&s.path("first"), ".jsonl")
        .into_iter()
        .chain(common::files(&s.path("second"), ".jsonl"))
        .chain(common::temp_files(&s.path("first")))
        .chain(common::temp_files(&s.path("second")))
        .collect();
    assert!(
        visible.is_empty(),
        "no file of the failed window is visible: {visible:?}"
    );

    // Once the way is clear, the next run loads it.
    std::fs::remove_dir(&in_the_way).unwrap();
    s.run(&["run", p.to_str().unwrap()]).expect_code(0);
    assert_eq!(read_jsonl(&s.path("first")).len(), 7);
    assert_eq!(read_jsonl(&s.path("second")).len(), 7);
}

/// Item 4, the other half: a sink whose write fails mid-window (a full disk; here a partition
/// directory it cannot create after it had written others) leaves none of the window's
/// temporary files (`part-….jsonl.tmp`, which a `*.jsonl*` glob reads) when the run ends, now
/// that a failed sink is kept to the end of the run to drop windows the ledger does not list
/// (its writer deletes them when it is dropped).
#[test]
fn a_write_error_mid_window_leaves_no_temporary_files() {
    let s = Scratch::new();
    let fixture = common::repo("fixtures/lineworks/ja_JP_sample.csv");
    let p = s.pipeline(
        "p.toml",
        &format!(
            r#"
[pipeline]
name = "full"
state_dir = "./state"

[sources.lw]
type = "lineworks_message_contents"
files = [{fixture:?}]

[transforms.canonical]
type = "normalize"
inputs = ["lw"]

[sinks.out]
type = "jsonl"
inputs = ["canonical"]
path = "./out"
partition_by = ["sent_date"]
compression = "none"
"#
        ),
    );
    // The fixture's rows fall on 2025-01-01, -02 and -03: the last day's directory cannot be
    // made, so the error comes after the first days' files were opened and written.
    std::fs::create_dir_all(s.path("out")).unwrap();
    std::fs::write(s.path("out/sent_date=2025-01-03"), "in the way").unwrap();
    s.run(&["run", p.to_str().unwrap()]).expect_code(1);
    let left: Vec<_> = common::files(&s.path("out"), ".jsonl")
        .into_iter()
        .chain(common::temp_files(&s.path("out")))
        .collect();
    assert!(
        left.is_empty(),
        "no file of the failed window is left: {left:?}"
    );
    std::fs::remove_file(s.path("out/sent_date=2025-01-03")).unwrap();
    s.run(&["run", p.to_str().unwrap()]).expect_code(0);
    assert_eq!(read_jsonl(&s.path("out")).len(), 7);
}

/// Item 9: dead letters used to be written as `<state_dir>/<pipeline>/dead_letters/<run>.jsonl`,
/// so with the state directory inside the lake (the default `./lake/_state`) a reader's glob
/// `lake/**/*.jsonl` read rejected provider rows as data. Now their name matches no data glob,
/// and `validate` warns about a sink path that holds the state directory.
#[test]
fn dead_letters_stay_out_of_data_globs() {
    let s = Scratch::new();
    let fixture = common::repo("fixtures/lineworks/malformed.csv");
    let body = |path: &str| {
        format!(
            r#"
[pipeline]
name = "dl"
state_dir = "./lake/_state"

[sources.lw]
type = "lineworks_message_contents"
files = [{fixture:?}]

[transforms.canonical]
type = "normalize"
inputs = ["lw"]

[sinks.out]
type = "jsonl"
inputs = ["canonical"]
path = "{path}"
compression = "none"
"#
        )
    };
    let p = s.pipeline("p.toml", &body("./lake/out"));
    s.run(&["run", p.to_str().unwrap()]).expect_code(3);
    let dead = common::files(&s.path("lake/_state/dl/dead_letters"), ".dead.json-lines");
    assert_eq!(dead.len(), 1, "the dead letters are kept");
    // What the globs `lake/**/*.jsonl` and `lake/**/*.jsonl*` select: data only.
    let globbed: Vec<_> = common::files(&s.path("lake"), "")
        .into_iter()
        .filter(|f| {
            let name = f.file_name().unwrap().to_string_lossy();
            name.ends_with(".jsonl") || name.contains(".jsonl")
        })
        .collect();
    assert!(!globbed.is_empty());
    assert!(
        globbed.iter().all(|f| f.starts_with(s.path("lake/out"))),
        "{globbed:?}"
    );
    assert_eq!(lake_ids(&s.path("lake")).len(), 2, "only the good rows");

    let p = s.pipeline("wide.toml", &body("./lake"));
    let out = s.run(&["validate", p.to_str().unwrap()]).expect_code(0);
    assert!(
        out.stderr().contains("warning:") && out.stderr().contains("sinks.out.path"),
        "{}",
        out.stderr()
    );
}
