//! The test file of a pipeline: `PIPELINE.tests.toml` (or `.tests.yaml`) next to the pipeline
//! file, its format, and the checks that need no run (sources and components that exist, fixture
//! globs that match, expected rows that parse). Every problem is reported with the file and the
//! key path, as pipeline files' are.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use chatlake_core::config::{ConfigErrors, PipelineFile, Role, did_you_mean_note, error_key};
use figment::Figment;
use figment::providers::{Format, Toml, Yaml};
use serde::Deserialize;
use serde_json::{Map, Value};

/// A test file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFileSpec {
    /// The tests, run in order.
    tests: Vec<TestSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestSpec {
    /// Names the test in the summary.
    name: String,
    /// Fixture files per source name. Sources not listed are left out of the test, with every
    /// component that only they feed.
    inputs: BTreeMap<String, InputSpec>,
    /// What the run must produce.
    outputs: Vec<OutputSpec>,
    /// Records the run may dead-letter; default 0.
    #[serde(default)]
    dead_letters: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSpec {
    /// Globs, relative to the test file's directory; the source reads them as with `files`.
    files: Vec<String>,
    /// Other options of the source to set for the test (e.g. `utc_offset`).
    #[serde(default)]
    options: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputSpec {
    /// A source, transform or sink; a sink's output is the rows it receives.
    extract_from: String,
    /// A JSON Lines file of the expected rows, relative to the test file's directory.
    #[serde(default)]
    rows: Option<PathBuf>,
    /// The columns `rows` are compared on; default every column of the expected rows.
    #[serde(default)]
    columns: Option<Vec<String>>,
    /// The number of rows.
    #[serde(default)]
    count: Option<u64>,
    /// `column = value` that every row must hold.
    #[serde(default)]
    every_row: Option<Map<String, Value>>,
    /// No row may hold all of these `column = value` at once.
    #[serde(default)]
    no_row: Option<Map<String, Value>>,
}

/// A checked test file, ready to run.
#[derive(Debug)]
pub struct TestFile {
    pub path: PathBuf,
    pub pipeline: PipelineFile,
    pub tests: Vec<Test>,
}

#[derive(Debug)]
pub struct Test {
    pub name: String,
    /// The key path of the test in its file, e.g. `tests[1]`.
    pub key: String,
    pub inputs: BTreeMap<String, Input>,
    pub outputs: Vec<Output>,
    pub dead_letters: u64,
}

#[derive(Debug)]
pub struct Input {
    /// Absolute globs (or relative to the working directory when the test file's path is).
    pub files: Vec<String>,
    pub options: Map<String, Value>,
}

#[derive(Debug)]
pub struct Output {
    pub extract_from: String,
    pub expected: Option<ExpectedRows>,
    pub count: Option<u64>,
    pub every_row: Option<Map<String, Value>>,
    pub no_row: Option<Map<String, Value>>,
}

/// The rows of an expected-rows file and the columns they are compared on.
#[derive(Debug)]
pub struct ExpectedRows {
    /// The path as the test file wrote it (for messages).
    pub name: String,
    pub columns: Vec<String>,
    pub rows: Vec<Map<String, Value>>,
    /// The line of the file each row is on.
    pub lines: Vec<usize>,
}

/// The test file of `arg`: `arg` itself if it is one (`x.tests.toml`), else the one next to the
/// pipeline file. Returns the test file and its pipeline file.
pub fn locate(arg: &Path) -> Result<(PathBuf, PathBuf), String> {
    const EXTS: [&str; 3] = ["toml", "yaml", "yml"];
    let name = arg.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let dir = arg.parent().unwrap_or(Path::new(""));
    if let Some((stem, _)) = EXTS.iter().find_map(|ext| {
        name.strip_suffix(&format!(".tests.{ext}"))
            .map(|s| (s, ext))
    }) {
        let pipeline = EXTS
            .iter()
            .map(|ext| dir.join(format!("{stem}.{ext}")))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                format!(
                    "{}: no pipeline file {stem}.toml, {stem}.yaml or {stem}.yml next to it",
                    arg.display()
                )
            })?;
        if !arg.is_file() {
            return Err(format!("{}: no such test file", arg.display()));
        }
        return Ok((arg.to_path_buf(), pipeline));
    }
    let stem = arg.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    let candidates: Vec<PathBuf> = EXTS
        .iter()
        .map(|ext| dir.join(format!("{stem}.tests.{ext}")))
        .collect();
    match candidates.iter().find(|p| p.is_file()) {
        Some(tests) => Ok((tests.clone(), arg.to_path_buf())),
        None => Err(format!(
            "{}: no tests: write them in {} (see `chatlake test --help`)",
            arg.display(),
            candidates[0].display()
        )),
    }
}

impl TestFile {
    /// Reads and checks the test file at `path`, which tests `pipeline`.
    pub fn load(path: &Path, pipeline: &Path) -> Result<TestFile, ConfigErrors> {
        let pipeline = PipelineFile::load(pipeline)?;
        let mut errors = ConfigErrors::default();
        let figment = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Figment::from(Toml::file_exact(path)),
            _ => Figment::from(Yaml::file_exact(path)),
        };
        let root: Value = match figment.extract() {
            Ok(v) => v,
            Err(e) => {
                for e in e {
                    errors.push(path, e.path.join("."), e.kind.to_string());
                }
                return Err(errors);
            }
        };
        let spec: TestFileSpec = match serde_path_to_error::deserialize(root) {
            Ok(spec) => spec,
            Err(e) => {
                let (key, message) = error_key("", &e);
                errors.push(path, key.trim_start_matches('.'), message);
                return Err(errors);
            }
        };
        if spec.tests.is_empty() {
            errors.push(path, "tests", "list at least one test ([[tests]])");
        }
        let base = path.parent().unwrap_or(Path::new(""));
        let mut tests = Vec::new();
        for (i, test) in spec.tests.into_iter().enumerate() {
            let key = format!("tests[{i}]");
            let mut report = |k: String, m: String| errors.push(path, format!("{key}.{k}"), m);
            if let Some(t) = check_test(test, &key, &pipeline, base, &mut report) {
                tests.push(t);
            }
        }
        for (i, t) in tests.iter().enumerate() {
            if tests[..i].iter().any(|u| u.name == t.name) {
                errors.push(
                    path,
                    format!("{}.name", t.key),
                    format!("another test is named `{}`; names must differ", t.name),
                );
            }
        }
        if errors.is_empty() {
            Ok(TestFile {
                path: path.to_path_buf(),
                pipeline,
                tests,
            })
        } else {
            Err(errors)
        }
    }
}

fn names(pipeline: &PipelineFile, roles: &[Role]) -> Vec<String> {
    pipeline
        .components
        .iter()
        .filter(|c| roles.contains(&c.role))
        .map(|c| c.name.clone())
        .collect()
}

/// `unknown source `x`; the pipeline's sources are: a, b; did you mean `a`?`.
fn unknown(what: &str, name: &str, known: &[String]) -> String {
    format!(
        "unknown {what} `{name}`; the pipeline's {what}s are: {}{}",
        known.join(", "),
        did_you_mean_note(name, known.iter().map(String::as_str))
    )
}

fn check_test(
    test: TestSpec,
    key: &str,
    pipeline: &PipelineFile,
    base: &Path,
    report: &mut dyn FnMut(String, String),
) -> Option<Test> {
    let mut problems = 0usize;
    let mut fail = |k: String, m: String| {
        problems += 1;
        report(k, m);
    };
    if test.name.trim().is_empty() {
        fail("name".into(), "must not be empty".into());
    }
    let sources = names(pipeline, &[Role::Source]);
    if test.inputs.is_empty() {
        fail(
            "inputs".into(),
            "name at least one source and its fixture files: [tests.inputs.<source>] files = [...]"
                .into(),
        );
    }
    let mut inputs = BTreeMap::new();
    for (source, input) in test.inputs {
        if !sources.contains(&source) {
            fail(
                format!("inputs.{source}"),
                unknown("source", &source, &sources),
            );
            continue;
        }
        if input.files.is_empty() {
            fail(
                format!("inputs.{source}.files"),
                "list at least one fixture file or glob".into(),
            );
        }
        if input.options.contains_key("files") {
            fail(
                format!("inputs.{source}.options.files"),
                "set the files with `files`, next to `options`".into(),
            );
        }
        let mut files = Vec::new();
        for (j, pattern) in input.files.iter().enumerate() {
            let full = resolve_glob(base, pattern);
            match glob::glob(&full) {
                Err(e) => fail(format!("inputs.{source}.files[{j}]"), e.to_string()),
                Ok(mut matches) => {
                    if !matches.any(|m| m.is_ok_and(|p| p.is_file())) {
                        fail(
                            format!("inputs.{source}.files[{j}]"),
                            format!(
                                "no file matches {pattern:?} (relative to the test file's directory, {})",
                                display_dir(base)
                            ),
                        );
                    }
                }
            }
            files.push(full);
        }
        inputs.insert(
            source,
            Input {
                files,
                options: input.options,
            },
        );
    }
    if test.outputs.is_empty() {
        fail(
            "outputs".into(),
            "name at least one output to check: [[tests.outputs]] extract_from = \"<component>\""
                .into(),
        );
    }
    let components = names(pipeline, &[Role::Source, Role::Transform, Role::Sink]);
    let mut outputs = Vec::new();
    for (j, out) in test.outputs.into_iter().enumerate() {
        let at = |k: &str| format!("outputs[{j}].{k}");
        if !components.contains(&out.extract_from) {
            fail(
                at("extract_from"),
                unknown("component", &out.extract_from, &components),
            );
        }
        if out.rows.is_none()
            && out.count.is_none()
            && out.every_row.is_none()
            && out.no_row.is_none()
        {
            fail(
                format!("outputs[{j}]"),
                "say what to check: `rows`, `count`, `every_row` or `no_row`".into(),
            );
        }
        if out.columns.is_some() && out.rows.is_none() {
            fail(
                at("columns"),
                "`columns` says what `rows` compares: set `rows` too".into(),
            );
        }
        for (k, table) in [("every_row", &out.every_row), ("no_row", &out.no_row)] {
            if table.as_ref().is_some_and(Map::is_empty) {
                fail(at(k), "name at least one `column = value`".into());
            }
        }
        let expected = match &out.rows {
            None => None,
            Some(rows) => match read_expected(&base.join(rows), rows, out.columns) {
                Ok(expected) => Some(expected),
                Err(message) => {
                    fail(at("rows"), message);
                    None
                }
            },
        };
        let cut = left_out(pipeline, |source| inputs.contains_key(source));
        if cut.contains(&out.extract_from) {
            fail(
                at("extract_from"),
                format!(
                    "no source this test gives inputs reaches `{}`: add inputs for one of the sources above it",
                    out.extract_from
                ),
            );
        }
        outputs.push(Output {
            extract_from: out.extract_from,
            expected,
            count: out.count,
            every_row: out.every_row,
            no_row: out.no_row,
        });
    }
    (problems == 0).then(|| Test {
        name: test.name,
        key: key.to_string(),
        inputs,
        outputs,
        dead_letters: test.dead_letters,
    })
}

fn display_dir(dir: &Path) -> String {
    if dir.as_os_str().is_empty() {
        ".".into()
    } else {
        dir.display().to_string()
    }
}

/// A glob of the test file, relative to its directory (which may hold glob characters itself).
fn resolve_glob(base: &Path, pattern: &str) -> String {
    if Path::new(pattern).is_absolute() || base.as_os_str().is_empty() {
        return pattern.to_string();
    }
    let dir = glob::Pattern::escape(&base.display().to_string());
    format!("{dir}/{pattern}")
}

/// The rows of a JSON Lines file of expected rows, and the columns to compare: `columns`, or
/// every key of the rows in the order first seen.
fn read_expected(
    path: &Path,
    name: &Path,
    columns: Option<Vec<String>>,
) -> Result<ExpectedRows, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut rows = Vec::new();
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(row)) => {
                rows.push(row);
                lines.push(n + 1);
            }
            Ok(_) => {
                return Err(format!(
                    "{} line {}: a row is a JSON object",
                    path.display(),
                    n + 1
                ));
            }
            Err(e) => return Err(format!("{} line {}: {e}", path.display(), n + 1)),
        }
    }
    let columns = match columns {
        Some(columns) if columns.is_empty() => {
            return Err("`columns` lists no column".into());
        }
        Some(columns) => columns,
        None => {
            let mut seen: Vec<String> = Vec::new();
            for row in &rows {
                for k in row.keys() {
                    if !seen.contains(k) {
                        seen.push(k.clone());
                    }
                }
            }
            if seen.is_empty() && !rows.is_empty() {
                return Err(format!(
                    "{}: the rows have no columns; set `columns`",
                    path.display()
                ));
            }
            seen
        }
    };
    Ok(ExpectedRows {
        name: name.display().to_string(),
        columns,
        rows,
        lines,
    })
}

/// The components a test leaves out of its run: the sources it gives no inputs (they would call
/// their API), and every transform or sink that only left-out components feed.
pub fn left_out(pipeline: &PipelineFile, given: impl Fn(&str) -> bool) -> HashSet<String> {
    let mut cut: HashSet<String> = pipeline
        .components
        .iter()
        .filter(|c| c.role == Role::Source && !given(&c.name))
        .map(|c| c.name.clone())
        .collect();
    // Components come in file order, not dependency order: repeat until nothing changes.
    loop {
        let before = cut.len();
        for c in &pipeline.components {
            if c.role != Role::Source
                && !cut.contains(&c.name)
                && c.inputs.iter().all(|i| cut.contains(i))
            {
                cut.insert(c.name.clone());
            }
        }
        if cut.len() == before {
            return cut;
        }
    }
}
