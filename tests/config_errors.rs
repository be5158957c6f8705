//! Bad command lines and bad pipeline files: exit code 2, and every message names the file and
//! the key path.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used)]

mod common;

use common::Scratch;

const GOOD: &str = r#"
[pipeline]
name = "t"
state_dir = "./state"

[sources.lw]
type = "lineworks_message_contents"
files = ["in/*.csv"]

[transforms.canonical]
type = "normalize"
inputs = ["lw"]

[sinks.lake]
type = "parquet"
inputs = ["canonical"]
path = "./lake"
compression = "zstd"
"#;

#[test]
fn a_good_file_validates() {
    let s = Scratch::new();
    let p = s.pipeline("p.toml", GOOD);
    let out = s.run(&["validate", p.to_str().unwrap()]).expect_code(0);
    assert!(out.stdout().contains("ok"));
}

#[test]
fn a_bad_enum_value_names_the_file_the_key_and_the_choices() {
    let s = Scratch::new();
    let p = s.pipeline("p.toml", &GOOD.replace("\"zstd\"", "\"zstdd\""));
    let out = s.run(&["validate", p.to_str().unwrap()]).expect_code(2);
    let err = out.stderr();
    assert!(
        err.contains("p.toml: sinks.lake.compression: unknown variant `zstdd`"),
        "{err}"
    );
    assert!(
        err.contains("zstd")
            && err.contains("snappy")
            && err.contains("gzip")
            && err.contains("none"),
        "{err}"
    );
    // `run` refuses the same file before doing anything.
    s.run(&["run", p.to_str().unwrap()]).expect_code(2);
}

#[test]
fn validate_reports_every_error_at_once() {
    let s = Scratch::new();
    let body = GOOD
        .replace("inputs = [\"canonical\"]", "inputs = [\"canonicl\"]")
        .replace(
            "type = \"normalize\"",
            "type = \"normalize\"\nmode = \"fast\"",
        )
        + "\n[sources.extra]\ntype = \"lineworks_message_contents\"\nfiles = [\"x\"]\n";
    let p = s.pipeline("p.toml", &body);
    let err = s
        .run(&["validate", p.to_str().unwrap()])
        .expect_code(2)
        .stderr();
    for want in [
        "sinks.lake.inputs[0]: unknown component `canonicl`",
        "transforms.canonical.mode: unknown field `mode`",
        "sources.extra: `extra` is not used",
    ] {
        assert!(err.contains(want), "missing {want:?} in\n{err}");
    }
}

#[test]
fn wiring_that_cannot_work_is_refused() {
    let s = Scratch::new();
    let body = GOOD.replace("type = \"normalize\"", "type = \"dedupe\"");
    let p = s.pipeline("p.toml", &body);
    let err = s
        .run(&["validate", p.to_str().unwrap()])
        .expect_code(2)
        .stderr();
    assert!(
        err.contains("transforms.canonical.inputs: dedupe needs canonical messages"),
        "{err}"
    );
    assert!(err.contains("normalize"), "{err}");

    let cyclic = GOOD.replace("inputs = [\"lw\"]", "inputs = [\"lw\", \"canonical\"]");
    let p = s.pipeline("c.toml", &cyclic);
    let err = s
        .run(&["validate", p.to_str().unwrap()])
        .expect_code(2)
        .stderr();
    assert!(err.contains("transforms.canonical.inputs"), "{err}");
}

#[test]
fn unset_variables_and_env_overrides_are_named() {
    let s = Scratch::new();
    let body = GOOD.replace("path = \"./lake\"", "path = \"${LAKE_DIR}\"");
    let p = s.pipeline("p.toml", &body);
    let err = s
        .run(&["validate", p.to_str().unwrap()])
        .expect_code(2)
        .stderr();
    assert!(
        err.contains("sinks.lake.path: environment variable LAKE_DIR is not set"),
        "{err}"
    );
    s.run_env(
        &["validate", p.to_str().unwrap()],
        &[("LAKE_DIR", "./elsewhere")],
    )
    .expect_code(0);

    let p = s.pipeline("q.toml", GOOD);
    let err = s
        .run_env(
            &["validate", p.to_str().unwrap()],
            &[("CHATLAKE__SINKS__LAKE__COMPRESSION", "brotli")],
        )
        .expect_code(2)
        .stderr();
    assert!(
        err.contains("sinks.lake.compression: unknown variant `brotli`"),
        "{err}"
    );
    assert!(err.contains("CHATLAKE__SINKS__LAKE__COMPRESSION"), "{err}");
}

#[test]
fn yaml_files_are_checked_the_same_way() {
    let s = Scratch::new();
    let p = s.pipeline(
        "p.yaml",
        "pipeline:\n  name: t\nsources:\n  lw:\n    type: lineworks_message_contents\n    files: [\"in/*.csv\"]\n    langauge: ja_JP\nsinks:\n  out:\n    type: jsonl\n    inputs: [lw]\n    path: ./out\n",
    );
    let err = s
        .run(&["validate", p.to_str().unwrap()])
        .expect_code(2)
        .stderr();
    assert!(
        err.contains("p.yaml: sources.lw.langauge: unknown field `langauge`"),
        "{err}"
    );
}

#[test]
fn bad_command_lines_and_missing_files_exit_2() {
    let s = Scratch::new();
    s.run(&["run"]).expect_code(2);
    s.run(&["frobnicate"]).expect_code(2);
    s.run(&["run", "--start", "last tuesday", "x.toml"])
        .expect_code(2);
    let err = s.run(&["validate", "missing.toml"]).expect_code(2).stderr();
    assert!(err.contains("missing.toml: no such pipeline file"), "{err}");
}

#[test]
fn components_lists_every_type_with_options() {
    let s = Scratch::new();
    let out = s.run(&["components"]).expect_code(0).stdout();
    for t in [
        "lineworks_message_contents",
        "qlara_message_history",
        "zoom_user_messages",
        "zoom_chat_report",
        "normalize",
        "dedupe",
        "bot_filter",
        "parquet",
        "csv",
        "jsonl",
    ] {
        assert!(out.contains(&format!("`{t}`")), "{t} missing from\n{out}");
    }
    assert!(out.contains("compression"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&s.run(&["components", "--json"]).expect_code(0).stdout()).unwrap();
    // Other providers' sources join the list as they land: at least the types above.
    assert!(json.as_array().unwrap().len() >= 8, "{json}");
}

#[test]
fn select_names_are_checked_against_canonical_columns() {
    let s = Scratch::new();
    let with_select = |select: &str| {
        GOOD.replace("inputs = [\"canonical\"]", "inputs = [\"columns\"]")
            + &format!(
                "\n[transforms.columns]\ntype = \"select\"\ninputs = [\"canonical\"]\n{select}\n"
            )
    };
    let p = s.pipeline(
        "ok.toml",
        &with_select("columns = [\"message_id\", \"sent_at\", \"text\"]"),
    );
    s.run(&["validate", p.to_str().unwrap()]).expect_code(0);

    let p = s.pipeline(
        "typo.toml",
        &with_select("columns = [\"message_id\", \"sent_att\"]"),
    );
    let err = s
        .run(&["validate", p.to_str().unwrap()])
        .expect_code(2)
        .stderr();
    assert!(
        err.contains(
            "transforms.columns.inputs: column `sent_att` (listed in `columns`) is not in canonical messages"
        ),
        "{err}"
    );

    let p = s.pipeline(
        "both.toml",
        &with_select("columns = [\"text\"]\ndrop = [\"run_id\"]"),
    );
    let err = s
        .run(&["validate", p.to_str().unwrap()])
        .expect_code(2)
        .stderr();
    assert!(
        err.contains("transforms.columns.drop: set `columns`"),
        "{err}"
    );

    // A projection is not canonical any more: dedupe refuses it.
    let body = with_select("drop = [\"run_id\"]")
        + "\n[transforms.unique]\ntype = \"dedupe\"\ninputs = [\"columns\"]\n";
    let body = body.replace(
        "inputs = [\"columns\"]\npath",
        "inputs = [\"unique\"]\npath",
    );
    let p = s.pipeline("order.toml", &body);
    let err = s
        .run(&["validate", p.to_str().unwrap()])
        .expect_code(2)
        .stderr();
    assert!(
        err.contains("transforms.unique.inputs: dedupe needs canonical messages")
            && err.contains("canonical.projection"),
        "{err}"
    );
    let out = s.run(&["components"]).expect_code(0).stdout();
    assert!(out.contains("`select`"), "{out}");
}

#[test]
fn a_sink_that_cannot_take_rows_out_is_refused_below_a_dedupe_that_replaces_rows() {
    let s = Scratch::new();
    let body = GOOD.replace(
        "[sinks.lake]\ntype = \"parquet\"\ninputs = [\"canonical\"]",
        "[transforms.latest]\ntype = \"dedupe\"\ninputs = [\"canonical\"]\nkeep = \"latest\"\nacross_runs = true\n\n\
         [sinks.sheet]\ntype = \"csv\"\ninputs = [\"latest\"]\npath = \"./sheet\"\nheader = false\n\n\
         [sinks.lake]\ntype = \"parquet\"\ninputs = [\"latest\"]",
    );
    let p = s.pipeline("p.toml", &body);
    let out = s.run(&["validate", p.to_str().unwrap()]).expect_code(2);
    let err = out.stderr();
    assert!(
        err.contains("p.toml: sinks.sheet.inputs: `latest` replaces rows that earlier runs loaded"),
        "{err}"
    );
    assert!(err.contains("header = true"), "{err}");
    assert!(!err.contains("sinks.lake"), "Parquet can: {err}");
    // With a header the same pipeline is fine.
    let p = s.pipeline("p.toml", &body.replace("header = false", "header = true"));
    s.run(&["validate", p.to_str().unwrap()]).expect_code(0);
}
