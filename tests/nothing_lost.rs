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

/// Item 4: when one sink failed to write a window that another sink had already committed, the
/// committed files stayed visible until the next run's start removed them. Now the run removes
/// them before it ends: the lake holds exactly the ledger's windows after a failed run too.
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
partition_by = ["provider"]
compression = "none"
"#
        ),
    );
    // The second sink cannot create its partition directory: a write error mid-window, as a
    // full disk would give.
    std::fs::create_dir_all(s.path("second")).unwrap();
    std::fs::write(s.path("second/provider=lineworks"), "in the way").unwrap();
    s.run(&["run", p.to_str().unwrap()]).expect_code(1);
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

    // Once the disk is fixed, the next run loads it.
    std::fs::remove_file(s.path("second/provider=lineworks")).unwrap();
    s.run(&["run", p.to_str().unwrap()]).expect_code(0);
    assert_eq!(read_jsonl(&s.path("first")).len(), 7);
    assert_eq!(read_jsonl(&s.path("second")).len(), 7);
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
