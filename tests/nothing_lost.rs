//! Issue 20, "nothing lost, even by the operator": one test per data-loss, silent-corruption and
//! misuse path a red-team pass found, each through the binary.

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
    let dead = common::files(&s.path("state/z/dead_letters"), ".jsonl");
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
