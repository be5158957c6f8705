//! `chatlake test PIPELINE...`: runs the tests declared next to a pipeline file (as `vector
//! test` does). Each test replaces the inputs of some sources by fixture files (files mode),
//! runs the pipeline in a scratch directory (its own state directory and sink paths, so a test
//! never touches the real lake or state), captures the rows of the components it checks through
//! an extra JSON Lines sink each, and compares them with expected rows and assertions.

mod compare;
mod spec;

use std::path::{Path, PathBuf};

use chatlake_core::config::{ComponentSpec, ConfigErrors, Role};
use chatlake_core::graph::{BuildOptions, Pipeline};
use chatlake_core::metrics::RunStatus;
use chatlake_core::runtime::Run;
use serde_json::{Map, Value};

use crate::exit;
use crate::registry::registry;
use compare::Row;
use spec::{Test, TestFile};

/// Dead letters shown when a test did not expect them.
const DEAD_LETTERS_SHOWN: usize = 5;

/// Runs the tests of every pipeline in `args` (a pipeline file, or its `.tests.toml`): 0 when all
/// pass, 1 when one fails, 2 when a test file (or its pipeline file) is bad; then nothing runs.
pub async fn test(args: &[PathBuf], keep: bool) -> u8 {
    let mut files = Vec::new();
    let mut seen = Vec::new();
    let mut bad = false;
    for arg in args {
        let loaded = spec::locate(arg).map_err(|message| {
            eprintln!("error: {message}");
        });
        let Ok((tests, pipeline)) = loaded else {
            bad = true;
            continue;
        };
        // `pipelines/*.toml` names both `x.toml` and `x.tests.toml`: run their tests once.
        if seen.contains(&tests) {
            continue;
        }
        seen.push(tests.clone());
        match TestFile::load(&tests, &pipeline) {
            Ok(file) => files.push(file),
            Err(errors) => {
                print_errors(&errors);
                bad = true;
            }
        }
    }
    if bad {
        return exit::BAD_INPUT;
    }
    let (mut passed, mut failed) = (0, 0);
    for file in &files {
        for test in &file.tests {
            let label = format!("{}: {}", file.pipeline.path.display(), test.name);
            match run_one(file, test, keep).await {
                Ok(report) if report.failures.is_empty() => {
                    passed += 1;
                    println!("ok   {label} ({})", report.checked);
                }
                Ok(report) => {
                    failed += 1;
                    println!("FAIL {label} ({} {})", file.path.display(), test.key);
                    for failure in &report.failures {
                        println!("  {failure}");
                    }
                }
                Err(errors) => {
                    // The pipeline as the test changes it does not build: the options a test
                    // sets, or a pipeline that `validate` would refuse too.
                    print_errors(&errors);
                    eprintln!(
                        "error: {}: {}: the pipeline does not build for this test (above)",
                        file.path.display(),
                        test.key
                    );
                    bad = true;
                }
            }
        }
    }
    println!(
        "{} test(s): {passed} passed, {failed} failed",
        passed + failed
    );
    if bad {
        exit::BAD_INPUT
    } else if failed > 0 {
        exit::RUN_FAILED
    } else {
        exit::OK
    }
}

/// Whether `path` names a test file (`x.tests.toml`, `.tests.yaml`, `.tests.yml`) rather than a
/// pipeline file, for `validate pipelines/*.toml`.
pub fn is_test_file(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
        [".tests.toml", ".tests.yaml", ".tests.yml"]
            .iter()
            .any(|e| n.ends_with(e))
    })
}

/// `validate` of a test file: checks it as `test` would before running anything, prints `ok`
/// or every error; false when it is bad.
pub fn validate_test_file(path: &Path) -> bool {
    let loaded = spec::locate(path).map_err(|message| eprintln!("error: {message}"));
    let Ok((tests, pipeline)) = loaded else {
        return false;
    };
    match TestFile::load(&tests, &pipeline) {
        Ok(file) => {
            println!(
                "{}: ok ({} test(s) of {})",
                path.display(),
                file.tests.len(),
                pipeline.display()
            );
            true
        }
        Err(errors) => {
            print_errors(&errors);
            false
        }
    }
}

fn print_errors(errors: &ConfigErrors) {
    for e in &errors.0 {
        eprintln!("error: {e}");
    }
}

/// What one test found.
struct Report {
    /// Every mismatch, each a readable paragraph; empty when the test passes.
    failures: Vec<String>,
    /// What was checked, for the summary line: `2 output(s), 13 row(s)`.
    checked: String,
}

/// The name of the capture sink of output `j`: `test_output_<j>`, with leading `_` until no
/// component of the pipeline has it.
fn capture_name(pipeline: &chatlake_core::config::PipelineFile, j: usize) -> String {
    let mut name = format!("test_output_{j}");
    while pipeline.components.iter().any(|c| c.name == name) {
        name.insert(0, '_');
    }
    name
}

async fn run_one(file: &TestFile, test: &Test, keep: bool) -> Result<Report, ConfigErrors> {
    let scratch = match tempfile::Builder::new().prefix("chatlake-test-").tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            return Ok(Report {
                failures: vec![format!("cannot make a scratch directory: {e}")],
                checked: String::new(),
            });
        }
    };
    let root = scratch.path().to_path_buf();
    let mut pipeline = file.pipeline.clone();
    pipeline.pipeline.state_dir = Some(root.join("state"));

    let cut = spec::left_out(&pipeline, |source| test.inputs.contains_key(source));
    pipeline.components.retain(|c| !cut.contains(&c.name));
    for component in &mut pipeline.components {
        component.inputs.retain(|i| !cut.contains(i));
        // Options are a table and every source kept has inputs: the loaded files say so.
        let Some(options) = component.options.as_object_mut() else {
            continue;
        };
        match component.role {
            Role::Source => {
                let Some(input) = test.inputs.get(&component.name) else {
                    continue;
                };
                for (k, v) in &input.options {
                    options.insert(k.clone(), v.clone());
                }
                options.insert("files".into(), Value::from(input.files.clone()));
            }
            Role::Sink => {
                let path = root.join("sinks").join(&component.name);
                options.insert("path".into(), Value::from(path.display().to_string()));
            }
            Role::Transform => {}
        }
    }
    let mut captures = Vec::new();
    for (j, output) in test.outputs.iter().enumerate() {
        // A sink's output is what it receives: the capture reads what the sink reads. (Outputs
        // name components this test keeps: checked when the test file loaded.)
        let inputs = match pipeline
            .components
            .iter()
            .find(|c| c.name == output.extract_from)
        {
            Some(sink) if sink.role == Role::Sink => sink.inputs.clone(),
            _ => vec![output.extract_from.clone()],
        };
        let dir = root.join("outputs").join(j.to_string());
        let mut options = Map::new();
        options.insert("path".into(), Value::from(dir.display().to_string()));
        let capture = ComponentSpec {
            role: Role::Sink,
            name: capture_name(&pipeline, j),
            type_name: "jsonl".into(),
            inputs,
            options: Value::Object(options),
        };
        pipeline.components.push(capture);
        captures.push(dir);
    }

    let built = Pipeline::build(
        pipeline,
        &registry(),
        &BuildOptions {
            use_state: true,
            ..Default::default()
        },
    )
    .map_err(|mut errors| {
        for e in &mut errors.0 {
            e.message.push_str(&format!(
                " (as test `{}` of {} sets it up)",
                test.name,
                file.path.display()
            ));
        }
        errors
    })?;
    let summary = Run::new(built, crate::commands::run_id(chrono::Utc::now()))
        .execute()
        .await;

    let mut failures = Vec::new();
    if summary.status == RunStatus::Failed {
        let mut text = format!(
            "the run failed: {}",
            summary.error.as_deref().unwrap_or("a window failed")
        );
        for c in &summary.components {
            for why in &c.failures {
                text.push_str(&format!("\n    {}: {why}", c.name));
            }
        }
        failures.push(text);
    } else {
        if summary.dead_letters != test.dead_letters {
            failures.push(dead_letters(
                test.dead_letters,
                summary.dead_letters,
                summary.dead_letter_file.as_deref(),
            ));
        }
        let mut rows_checked = 0;
        for (output, dir) in test.outputs.iter().zip(&captures) {
            match read_rows(dir) {
                Ok(rows) => {
                    rows_checked += rows.len();
                    failures.extend(compare::check(output, &rows));
                }
                Err(e) => failures.push(format!(
                    "`{}`: cannot read its captured rows: {e}",
                    output.extract_from
                )),
            }
        }
        if failures.is_empty() {
            let checked = format!("{} output(s), {rows_checked} row(s)", test.outputs.len());
            return Ok(finish(scratch, keep, failures, checked));
        }
    }
    Ok(finish(scratch, keep, failures, String::new()))
}

/// Removes the scratch directory, or keeps it (`--keep`) and says where it is.
fn finish(
    scratch: tempfile::TempDir,
    keep: bool,
    mut failures: Vec<String>,
    mut checked: String,
) -> Report {
    if keep {
        let path = scratch.keep();
        let note = format!("scratch directory kept: {}", path.display());
        if failures.is_empty() {
            checked.push_str(&format!("; {note}"));
        } else {
            failures.push(note);
        }
    }
    Report { failures, checked }
}

/// Expected and actual dead letters, with the first reasons from the dead-letter file.
fn dead_letters(expected: u64, got: u64, file: Option<&Path>) -> String {
    let mut text = format!(
        "dead letters: expected {expected}, got {got} (set `dead_letters = {got}` on the test if they are meant)"
    );
    let letters = file
        .and_then(|f| std::fs::read_to_string(f).ok())
        .unwrap_or_default();
    for line in letters.lines().take(DEAD_LETTERS_SHOWN) {
        let Ok(letter) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        text.push_str(&format!(
            "\n    {}: {}",
            letter["component"].as_str().unwrap_or("?"),
            letter["reason"].as_str().unwrap_or("?")
        ));
    }
    text
}

/// Every row the capture sink under `dir` wrote.
fn read_rows(dir: &Path) -> std::io::Result<Vec<Row>> {
    let mut rows = Vec::new();
    if !dir.exists() {
        // No row reached the sink: it wrote no file.
        return Ok(rows);
    }
    let mut stack = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "jsonl") {
                files.push(path);
            }
        }
    }
    files.sort();
    for path in files {
        for line in std::fs::read_to_string(&path)?.lines() {
            let row: Value = serde_json::from_str(line)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            if let Value::Object(row) = row {
                rows.push(row);
            }
        }
    }
    Ok(rows)
}
