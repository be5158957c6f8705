//! Errors a user can act on: "did you mean" for a misspelt key, value, component type or input
//! (with the names that exist), and secrets read from files with `${file:PATH}`. Through the
//! binary, as tests/config_errors.rs: exit 2, and every message names the file and the key path.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use chatlake_emulator::{Emulator, EmulatorConfig};
use common::Scratch;

const GOOD: &str = r#"
[pipeline]
name = "t"
state_dir = "./state"

[sources.lw]
type = "lineworks_message_contents"
files = ["in/*.csv"]
language = "ja_JP"

[transforms.canonical]
type = "normalize"
inputs = ["lw"]

[sinks.lake]
type = "parquet"
inputs = ["canonical"]
path = "./lake"
compression = "zstd"
"#;

fn validate_err(s: &Scratch, name: &str, body: &str) -> String {
    let p = s.pipeline(name, body);
    s.run(&["validate", p.to_str().unwrap()])
        .expect_code(2)
        .stderr()
}

#[test]
fn a_misspelt_key_or_value_gets_the_closest_name() {
    let s = Scratch::new();
    let err = validate_err(&s, "p.toml", &GOOD.replace("language =", "langauge ="));
    assert!(
        err.contains("p.toml: sources.lw.langauge: unknown field `langauge`, expected one of `base_url`, `auth`, `language`,")
            && err.contains("; did you mean `language`?"),
        "{err}"
    );
    let err = validate_err(&s, "p.toml", &GOOD.replace("\"zstd\"", "\"zstdd\""));
    assert!(
        err.contains(
            "p.toml: sinks.lake.compression: unknown variant `zstdd`, expected one of `zstd`, `snappy`, `gzip`, `none`; did you mean `zstd`?"
        ),
        "{err}"
    );
    let err = validate_err(&s, "p.toml", &GOOD.replace("[pipeline]", "[pipelin]"));
    assert!(
        err.contains("p.toml: pipelin: unknown key `pipelin`, expected one of pipeline, sources, transforms, sinks; did you mean `pipeline`?"),
        "{err}"
    );
    // Nothing close: no guess, the list stays.
    let err = validate_err(&s, "p.toml", &GOOD.replace("language =", "zzz ="));
    assert!(
        err.contains("sources.lw.zzz: unknown field `zzz`, expected one of")
            && !err.contains("did you mean"),
        "{err}"
    );
}

#[test]
fn an_unknown_component_type_gets_the_closest_registered_one() {
    let s = Scratch::new();
    let err = validate_err(
        &s,
        "p.yaml",
        "pipeline:\n  name: t\nsources:\n  lw:\n    type: lineworks_message_content\n    files: [\"in/*.csv\"]\nsinks:\n  out:\n    type: jsonl\n    inputs: [lw]\n    path: ./out\n",
    );
    assert!(
        err.contains("p.yaml: sources.lw.type: unknown source type `lineworks_message_content`, expected one of lineworks_message_contents,")
            && err.contains("; did you mean `lineworks_message_contents`?"),
        "{err}"
    );
    let err = validate_err(&s, "p.toml", &GOOD.replace("\"parquet\"", "\"Parquett\""));
    assert!(
        err.contains("p.toml: sinks.lake.type: unknown sink type `Parquett`, expected one of csv, delta, jsonl, parquet; did you mean `parquet`?"),
        "{err}"
    );
}

#[test]
fn an_unknown_input_gets_the_closest_name_and_the_list() {
    let s = Scratch::new();
    let err = validate_err(
        &s,
        "p.toml",
        &GOOD.replace("inputs = [\"canonical\"]", "inputs = [\"canonicl\"]"),
    );
    assert!(
        err.contains("p.toml: sinks.lake.inputs[0]: unknown component `canonicl`; sources and transforms are: canonical, lw; did you mean `canonical`?"),
        "{err}"
    );
}

#[test]
fn file_references_read_the_file_and_name_key_and_path_when_they_cannot() {
    let s = Scratch::new();
    // The value is the file's content without its line break.
    std::fs::write(s.path("compression"), "snappy\n").unwrap();
    let body = GOOD.replace("\"zstd\"", "\"${file:compression}\"");
    let p = s.pipeline("p.toml", &body);
    s.run(&["validate", p.to_str().unwrap()]).expect_code(0);
    std::fs::write(s.path("compression"), "snapy\n").unwrap();
    let err = validate_err(&s, "p.toml", &body);
    assert!(
        err.contains(
            "p.toml: sinks.lake.compression: unknown variant `snapy`, expected one of `zstd`, `snappy`, `gzip`, `none`; did you mean `snappy`?"
        ),
        "{err}"
    );

    let missing = s.path("secrets/missing");
    let err = validate_err(
        &s,
        "p.toml",
        &GOOD.replace("\"zstd\"", &format!("\"${{file:{}}}\"", missing.display())),
    );
    assert!(
        err.contains(&format!(
            "p.toml: sinks.lake.compression: cannot read the file of `${{file:{}}}`: ",
            missing.display()
        )),
        "{err}"
    );
    std::fs::write(s.path("empty"), "\n").unwrap();
    let err = validate_err(&s, "p.toml", &GOOD.replace("\"zstd\"", "\"${file:empty}\""));
    assert!(
        err.contains("p.toml: sinks.lake.compression: the file of `${file:empty}` is empty"),
        "{err}"
    );
}

const QLARA: &str = r#"
[pipeline]
name = "q"
state_dir = "./state"

[sources.sms]
type = "qlara_message_history"
base_url = "${Q_BASE}"
auth = { type = "api_key", key = "${file:secrets/qlara_key}" }
start = "2025-01-01T00:00:00+01:00"
end = "2025-01-02T23:59:59+01:00"
poll_interval = "20ms"
requests_per_minute = 2400
retry = { max_attempts = 2, initial_backoff = "10ms", max_backoff = "20ms" }

[transforms.canonical]
type = "normalize"
inputs = ["sms"]

[sinks.out]
type = "jsonl"
inputs = ["canonical"]
path = "./out"
"#;

/// A key read from a file is used as the key and stays a secret: it reaches no output or state,
/// right or wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_from_a_file_is_used_and_never_shown() {
    let emulator = Emulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        EmulatorConfig::default(),
    )
    .await
    .unwrap();
    let creds: BTreeMap<String, String> = emulator.credentials().into_iter().collect();
    let key = creds["qlara.api_key"].clone();
    let base = format!("{}/api", emulator.base_url());
    let s = Scratch::new();
    std::fs::create_dir_all(s.path("secrets")).unwrap();
    let p = s.pipeline("q.toml", QLARA);
    let run = |secret: &str| {
        std::fs::write(s.path("secrets/qlara_key"), format!("{secret}\n")).unwrap();
        let (p, base, dir) = (p.clone(), base.clone(), s.dir.path().to_path_buf());
        tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(common::BIN);
            cmd.args(["run", p.to_str().unwrap()])
                .current_dir(&dir)
                .env("RUST_LOG", "warn")
                .env("NO_COLOR", "1")
                .env("Q_BASE", base);
            common::Outcome(cmd.output().unwrap())
        })
    };
    let out = run(&key).await.unwrap().expect_code(0);
    assert!(!common::read_jsonl(&s.path("out")).is_empty());
    assert!(!out.stdout().contains(&key) && !out.stderr().contains(&key));
    for f in common::files(&s.path("state"), "") {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        assert!(!text.contains(&key), "{f:?} holds the API key");
    }

    // With the state gone the windows are fetched again, now with a key the emulator refuses.
    std::fs::remove_dir_all(s.path("state")).unwrap();
    let wrong = "not-the-key-0123456789";
    let out = run(wrong).await.unwrap().expect_code(1);
    let shown = out.stdout() + &out.stderr();
    assert!(!shown.contains(wrong), "{shown}");
    let plan = s
        .run_env(&["plan", p.to_str().unwrap()], &[("Q_BASE", &base)])
        .expect_code(0)
        .stdout();
    assert!(!plan.contains(wrong), "{plan}");
}

#[test]
fn a_variable_that_expanded_to_nothing_is_named_where_its_value_fails() {
    let s = Scratch::new();
    let body = GOOD.replace(
        "path = \"./lake\"",
        "path = \"${CHATLAKE_TEST_UNSET_LAKE_PATH:-}\"",
    );
    let err = validate_err(&s, "p.toml", &body);
    assert!(
        err.contains("p.toml: sinks.lake.path:")
            && err.contains(
                "(`${CHATLAKE_TEST_UNSET_LAKE_PATH:-}` expanded to nothing: CHATLAKE_TEST_UNSET_LAKE_PATH is not set or empty)"
            ),
        "{err}"
    );
    // Where the empty value is valid, the debug log still names the variable.
    let body = GOOD.replace(
        "language = \"ja_JP\"",
        "language = \"ja_JP${CHATLAKE_TEST_UNSET_SUFFIX:-}\"",
    );
    let p = s.pipeline("q.toml", &body);
    let out = s
        .run_env(&["validate", p.to_str().unwrap()], &[("RUST_LOG", "debug")])
        .expect_code(0);
    assert!(
        out.stderr()
            .contains("`${CHATLAKE_TEST_UNSET_SUFFIX:-}` expanded to nothing"),
        "{}",
        out.stderr()
    );
}

#[test]
fn validate_warns_of_a_files_glob_that_matches_nothing() {
    let s = Scratch::new();
    let p = s.pipeline("p.toml", GOOD);
    let out = s.run(&["validate", p.to_str().unwrap()]).expect_code(0);
    assert!(
        out.stderr()
            .contains("p.toml: sources.lw: a run would fail at its start:")
            && out.stderr().contains("no file matches \"in/*.csv\""),
        "{}",
        out.stderr()
    );
    // A file that matches: no warning.
    std::fs::create_dir_all(s.path("in")).unwrap();
    std::fs::write(s.path("in/a.csv"), "x\n").unwrap();
    let out = s.run(&["validate", p.to_str().unwrap()]).expect_code(0);
    assert!(!out.stderr().contains("would fail"), "{}", out.stderr());
}
