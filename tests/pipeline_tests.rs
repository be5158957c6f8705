//! `chatlake test`: the shipped pipelines' tests pass without touching the working directory's
//! lake; a test whose expectation is wrong fails with a readable diff (exit 1); a bad test file
//! is refused with its file and key path (exit 2) before anything runs.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Scratch, repo};

#[test]
fn the_shipped_pipelines_tests_pass_in_a_scratch_directory() {
    let s = Scratch::new();
    let pipelines: Vec<String> = std::fs::read_dir(repo("pipelines"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.ends_with(".toml") && !name.ends_with(".tests.toml")
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(pipelines.len() >= 7, "{pipelines:?}");
    let mut args = vec!["test"];
    args.extend(pipelines.iter().map(String::as_str));
    let out = s.run(&args).expect_code(0).stdout();
    for p in &pipelines {
        assert!(
            out.contains(&format!("ok   {p}: ")),
            "no test of {p} in\n{out}"
        );
    }
    assert!(!out.contains("FAIL"), "{out}");
    let summary = out.lines().last().unwrap();
    assert!(summary.ends_with("passed, 0 failed"), "{out}");
    // The pipelines write to ./lake and keep their state in ./lake/_state: a test never does.
    assert!(
        !s.path("lake").exists(),
        "a test wrote into the working directory"
    );
    assert_eq!(std::fs::read_dir(s.dir.path()).unwrap().count(), 0);
}

#[test]
fn validate_checks_the_test_files_among_the_pipelines() {
    let s = Scratch::new();
    let mut files: Vec<String> = std::fs::read_dir(repo("pipelines"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".toml"))
        .collect();
    files.sort();
    let mut args = vec!["validate", "--emulate"];
    args.extend(files.iter().map(String::as_str));
    let out = s.run(&args).expect_code(0).stdout();
    let qlara_tests = repo("pipelines/qlara.tests.toml");
    assert!(
        out.contains(&format!(
            "{}: ok (3 test(s) of {})",
            qlara_tests.display(),
            repo("pipelines/qlara.toml").display()
        )),
        "{out}"
    );

    let p = s.pipeline("p.toml", PIPELINE);
    let t = s.pipeline("p.tests.toml", "[[tests]]\nname = \"x\"\n");
    let out = s.run(&["validate", p.to_str().unwrap(), t.to_str().unwrap()]);
    let err = out.expect_code(2).stderr();
    assert!(
        err.contains("p.tests.toml: tests[0]: missing field `inputs`"),
        "{err}"
    );
}

const PIPELINE: &str = r#"
[pipeline]
name = "t"
state_dir = "./state"

[sources.lw]
type = "lineworks_message_contents"
files = ["in/*.csv"]

[transforms.canonical]
type = "normalize"
inputs = ["lw"]

[transforms.humans]
type = "bot_filter"
inputs = ["canonical"]

[sinks.lake]
type = "parquet"
inputs = ["humans"]
path = "./lake"
"#;

/// A pipeline `p.toml` in the scratch directory, with `tests` as `p.tests.toml` and the golden
/// rows of the sample file, less the bot's, with one text changed, as `want.jsonl`.
fn setup(s: &Scratch, tests: &str) -> String {
    let p = s.pipeline("p.toml", PIPELINE);
    s.pipeline("p.tests.toml", tests);
    let golden =
        std::fs::read_to_string(repo("fixtures/lineworks/ja_JP_sample.expected.jsonl")).unwrap();
    let want: Vec<&str> = golden
        .lines()
        .filter(|l| l.contains(r#""is_bot":false"#))
        .collect();
    std::fs::write(s.path("want.jsonl"), want.join("\n")).unwrap();
    let mut wrong = want.join("\n").replacen("He said", "She said", 1);
    wrong.push_str("\n{\"message_id\":\"not-there\",\"text\":\"ghost\"}\n");
    std::fs::write(s.path("wrong.jsonl"), wrong).unwrap();
    p.display().to_string()
}

fn tests_file(rows: &str, extra: &str) -> String {
    format!(
        r#"
[[tests]]
name = "sample"

[tests.inputs.lw]
files = ["{}"]

[[tests.outputs]]
extract_from = "lake"
rows = "{rows}"
{extra}
"#,
        repo("fixtures/lineworks/ja_JP_sample.csv").display()
    )
}

#[test]
fn a_passing_test_prints_one_line_and_exits_0() {
    let s = Scratch::new();
    let p = setup(&s, &tests_file("want.jsonl", "count = 6"));
    let out = s.run(&["test", &p]).expect_code(0).stdout();
    assert!(
        out.contains(&format!("ok   {p}: sample (1 output(s), 6 row(s))")),
        "{out}"
    );
    assert!(out.contains("1 test(s): 1 passed, 0 failed"), "{out}");
    // The pipeline's ./lake and ./state are not where the test ran.
    assert!(!s.path("lake").exists() && !s.path("state").exists());
    // The test file itself may be named too.
    s.run(&["test", s.path("p.tests.toml").to_str().unwrap()])
        .expect_code(0);
}

#[test]
fn a_failing_test_shows_the_diff_and_exits_1() {
    let s = Scratch::new();
    let p = setup(
        &s,
        &tests_file(
            "wrong.jsonl",
            "count = 7\nevery_row = { sender_id = \"taro@example.jp\" }\nno_row = { is_bot = false }",
        ),
    );
    let out = s.run(&["test", &p]).expect_code(1).stdout();
    for want in [
        format!("FAIL {p}: sample"),
        "`lake`: count: expected 7 rows, got 6".into(),
        "`lake`: rows of wrong.jsonl: 5 of 7 expected rows found (1 differ, 1 missing".into(),
        r#"differs: expected row 2 (message_id = "5e3622214bd986f4760b19b52b57936f"): `text`: expected "She said \"hi\", then left 👋", got "He said \"hi\", then left 👋""#.into(),
        r#"missing: expected row 7: {"message_id":"not-there","text":"ghost"}"#.into(),
        "`lake`: every_row { sender_id = \"taro@example.jp\" }: 4 of 6 rows do not".into(),
        "`sender_id` is \"chris@example.com\"".into(),
        "`lake`: no_row { is_bot = false }: 6 of 6 rows do".into(),
        "1 test(s): 0 passed, 1 failed".into(),
    ] {
        assert!(out.contains(&want), "missing {want:?} in\n{out}");
    }
}

#[test]
fn an_unexpected_dead_letter_fails_the_test_with_its_reason() {
    let s = Scratch::new();
    let p = s.pipeline("p.toml", PIPELINE);
    s.pipeline(
        "p.tests.toml",
        &format!(
            "[[tests]]\nname = \"malformed\"\n[tests.inputs.lw]\nfiles = [\"{}\"]\n[[tests.outputs]]\nextract_from = \"canonical\"\ncount = 2\n",
            repo("fixtures/lineworks/malformed.csv").display()
        ),
    );
    let out = s
        .run(&["test", p.to_str().unwrap()])
        .expect_code(1)
        .stdout();
    assert!(
        out.contains("dead letters: expected 0, got 3 (set `dead_letters = 3` on the test"),
        "{out}"
    );
    assert!(out.contains("    lw: "), "the reasons are shown: {out}");
}

#[test]
fn a_bad_test_file_names_the_file_and_the_key_and_exits_2() {
    let s = Scratch::new();
    let p = setup(
        &s,
        r#"
[[tests]]
name = "typos"

[tests.inputs.lww]
files = ["in/*.csv"]

[[tests.outputs]]
extract_from = "lake"
count = 1
"#,
    );
    let out = s.run(&["test", &p]).expect_code(2);
    let err = out.stderr();
    assert!(
        err.contains("p.tests.toml: tests[0].inputs.lww: unknown source `lww`; the pipeline's sources are: lw; did you mean `lw`?"),
        "{err}"
    );
    assert!(out.stdout().is_empty(), "nothing ran: {}", out.stdout());

    s.pipeline(
        "p.tests.toml",
        r#"
[[tests]]
name = "more typos"

[tests.inputs.lw]
files = ["nothing/*.csv"]

[[tests.outputs]]
extract_form = "lake"
"#,
    );
    let err = s.run(&["test", &p]).expect_code(2).stderr();
    assert!(
        err.contains("p.tests.toml: tests[0].outputs[0].extract_form: unknown field `extract_form`, expected one of `extract_from`, `rows`, `columns`, `count`, `every_row`, `no_row`; did you mean `extract_from`?"),
        "{err}"
    );

    s.pipeline(
        "p.tests.toml",
        r#"
[[tests]]
name = "nothing to find"

[tests.inputs.lw]
files = ["nothing/*.csv"]

[[tests.outputs]]
extract_from = "humnas"
columns = ["text"]
"#,
    );
    let err = s.run(&["test", &p]).expect_code(2).stderr();
    for want in [
        "p.tests.toml: tests[0].inputs.lw.files[0]: no file matches \"nothing/*.csv\"",
        "p.tests.toml: tests[0].outputs[0].extract_from: unknown component `humnas`; the pipeline's components are: lw, canonical, humans, lake; did you mean `humans`?",
        "p.tests.toml: tests[0].outputs[0]: say what to check",
        "p.tests.toml: tests[0].outputs[0].columns: `columns` says what `rows` compares",
    ] {
        assert!(err.contains(want), "missing {want:?} in\n{err}");
    }

    // No test file at all.
    let lone = s.pipeline("lone.toml", PIPELINE);
    let err = s
        .run(&["test", lone.to_str().unwrap()])
        .expect_code(2)
        .stderr();
    assert!(err.contains("lone.toml: no tests: write them in"), "{err}");
    assert!(err.contains("lone.tests.toml"), "{err}");
}
