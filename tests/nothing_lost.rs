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
