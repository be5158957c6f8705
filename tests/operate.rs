//! Operating chatlake from a scheduler: `run --metrics-file` against the emulator, read back as a
//! Prometheus scraper reads it and compared with the run JSON; and the tooling a user installs
//! (`schema`, shell completions, the man page).

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};

use chrono::DateTime;
use common::{Outcome, Scratch};
use serde_json::Value;

/// Three monthly LINE WORKS windows into Parquet and CSV; every second download answers 429.
const PIPELINE: &str = r#"
[pipeline]
name = "ops_metrics"

[sources.lw]
type = "lineworks_message_contents"
auth = { type = "lineworks_service_account", client_id = "x", client_secret = "x", service_account = "x", private_key_file = "x" }
start = "2025-01-01T00:00:00+09:00"
end = "2025-03-31T23:59:59+09:00"
retry = { max_attempts = 3, initial_backoff = "10ms", max_backoff = "20ms" }

[transforms.canonical]
type = "normalize"
inputs = ["lw"]

[sinks.lake]
type = "parquet"
inputs = ["canonical"]
path = "./lake/messages"
partition_by = ["provider", "sent_date"]

[sinks.report]
type = "csv"
inputs = ["canonical"]
path = "./lake/csv"
"#;

/// One sample: its metric name and labels.
type Series = (String, BTreeMap<String, String>);

/// A metrics file read as Prometheus reads the text format, checking every line on the way.
#[derive(Debug, Default)]
struct Exposition {
    /// `# TYPE` by family.
    types: HashMap<String, String>,
    helps: HashMap<String, String>,
    samples: HashMap<Series, f64>,
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    is_metric_name(s) && !s.contains(':')
}

/// `k="v",k2="v2"` with the format's escapes (`\\`, `\"`, `\n`).
fn parse_labels(mut s: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !s.is_empty() {
        let (name, rest) = s.split_once("=\"").expect("label=\"value\"");
        assert!(is_label_name(name), "bad label name {name:?}");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().expect("unterminated label value") {
                (i, '"') => break i,
                (_, '\\') => match chars.next().expect("escape").1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => panic!("bad escape \\{c}"),
                },
                (_, c) => value.push(c),
            }
        };
        assert!(
            labels.insert(name.to_string(), value).is_none(),
            "label {name} twice"
        );
        s = &rest[end + 1..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
    labels
}

fn parse_exposition(text: &str) -> Exposition {
    assert!(text.ends_with('\n'), "the last line ends with a line feed");
    let mut e = Exposition::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("# HELP name text");
            assert!(is_metric_name(name), "{line}");
            assert!(!help.is_empty(), "{line}");
            assert!(
                e.helps.insert(name.into(), help.into()).is_none(),
                "HELP twice: {line}"
            );
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(is_metric_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(e.helps.contains_key(name), "HELP before TYPE: {line}");
            assert!(
                e.types.insert(name.into(), kind.into()).is_none(),
                "TYPE twice: {line}"
            );
        } else {
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let (series, value) = line.rsplit_once(' ').expect("name{labels} value");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (
                    name,
                    parse_labels(labels.strip_suffix('}').expect("closing brace")),
                ),
                None => (series, BTreeMap::new()),
            };
            assert!(is_metric_name(name), "{line}");
            let kind = e
                .types
                .get(name)
                .unwrap_or_else(|| panic!("sample before its TYPE: {line}"));
            assert!(name.starts_with("chatlake_"), "chatlake_ prefix: {line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "a counter ends in _total: {line}");
            } else {
                assert!(
                    !name.ends_with("_total"),
                    "only counters end in _total: {line}"
                );
            }
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
            };
            assert!(
                e.samples.insert((name.into(), labels), value).is_none(),
                "series twice: {line}"
            );
        }
    }
    e
}

impl Exposition {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let series: Series = (
            name.to_string(),
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        *self
            .samples
            .get(&series)
            .unwrap_or_else(|| panic!("no sample {series:?}"))
    }

    fn component(&self, name: &str, component: &str) -> f64 {
        self.get(
            name,
            &[("pipeline", "ops_metrics"), ("component", component)],
        )
    }
}

fn run_json(s: &Scratch) -> Value {
    let path = s.path("lake/_state/ops_metrics/last_run.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn summary_of<'a>(run: &'a Value, component: &str) -> &'a Value {
    run["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == component)
        .unwrap_or_else(|| panic!("{component} in the run JSON"))
}

fn run_with_metrics(s: &Scratch, pipeline: &str, faults: &str) -> (Outcome, Exposition) {
    let p = s.pipeline("p.toml", pipeline);
    let out = s.run(&[
        "run",
        "--emulate",
        "--faults",
        faults,
        "--metrics-file",
        "metrics/chatlake.prom",
        p.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(s.path("metrics/chatlake.prom")).unwrap_or_else(|e| {
        panic!(
            "no metrics file ({e})\n--- stdout\n{}\n--- stderr\n{}",
            out.stdout(),
            out.stderr()
        )
    });
    let leftovers: Vec<_> = std::fs::read_dir(s.path("metrics"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary file stays: {leftovers:?}");
    (out, parse_exposition(&text))
}

#[test]
fn the_metrics_file_holds_the_figures_of_the_run_json() {
    let s = Scratch::new();
    std::fs::create_dir(s.path("metrics")).unwrap();
    let (out, m) = run_with_metrics(&s, PIPELINE, "lineworks.rate_limit=2");
    out.expect_code(0);
    let run = run_json(&s);
    assert_eq!(run["status"], "succeeded");

    let run_labels = [("pipeline", "ops_metrics")];
    for (outcome, want) in [
        ("success", 1.0),
        ("failed", 0.0),
        ("dead_letters", 0.0),
        ("invalid_pipeline", 0.0),
    ] {
        assert_eq!(
            m.get(
                "chatlake_run_outcome",
                &[("pipeline", "ops_metrics"), ("outcome", outcome)]
            ),
            want,
            "{outcome}"
        );
    }
    assert_eq!(m.get("chatlake_run_exit_code", &run_labels), 0.0);
    // serde_json reads floats to within one unit in the last place; the exposition parser
    // (Rust's) exactly.
    let duration = m.get("chatlake_run_duration_seconds", &run_labels);
    let seconds = run["seconds"].as_f64().unwrap();
    assert!((duration - seconds).abs() < 1e-9, "{duration} vs {seconds}");
    assert!(seconds > 0.0);
    let finished = DateTime::parse_from_rfc3339(run["finished_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        m.get("chatlake_run_finished_timestamp_seconds", &run_labels),
        finished.timestamp_millis() as f64 / 1000.0
    );
    assert_eq!(m.types["chatlake_run_outcome"], "gauge");
    assert_eq!(m.types["chatlake_source_records_total"], "counter");

    let lw = summary_of(&run, "lw");
    for (metric, field) in [
        ("chatlake_source_windows_committed_total", "windows_done"),
        ("chatlake_source_windows_failed_total", "windows_failed"),
        ("chatlake_source_records_total", "records_out"),
        ("chatlake_source_dead_letters_total", "dead_letters"),
        ("chatlake_source_requests_total", "requests"),
        ("chatlake_source_rate_limited_total", "rate_limited"),
        ("chatlake_source_retries_total", "retries"),
    ] {
        assert_eq!(
            m.component(metric, "lw"),
            lw[field].as_u64().unwrap() as f64,
            "{metric}"
        );
    }
    assert_eq!(
        m.component("chatlake_source_windows_committed_total", "lw"),
        3.0
    );
    assert!(m.component("chatlake_source_records_total", "lw") > 50_000.0);
    // Every second download answered 429, and each was retried.
    assert!(m.component("chatlake_source_rate_limited_total", "lw") >= 1.0);
    assert!(
        m.component("chatlake_source_retries_total", "lw")
            >= m.component("chatlake_source_rate_limited_total", "lw")
    );
    // Freshness: the end of the last committed window, March 31st 23:59:59 in Tokyo.
    assert_eq!(
        m.component("chatlake_source_loaded_through_timestamp_seconds", "lw"),
        DateTime::parse_from_rfc3339("2025-03-31T23:59:59+09:00")
            .unwrap()
            .timestamp() as f64
    );

    for sink in ["lake", "report"] {
        let c = summary_of(&run, sink);
        for (metric, field) in [
            ("chatlake_sink_records_total", "records_in"),
            ("chatlake_sink_written_bytes_total", "bytes"),
            ("chatlake_sink_files_total", "files"),
        ] {
            assert_eq!(
                m.component(metric, sink),
                c[field].as_u64().unwrap() as f64,
                "{metric} {sink}"
            );
        }
        assert!(m.component("chatlake_sink_files_total", sink) > 0.0);
    }
    assert_eq!(
        m.component("chatlake_sink_records_total", "lake"),
        m.component("chatlake_source_records_total", "lw")
    );
}

#[test]
fn a_failed_run_writes_its_metrics_too() {
    let s = Scratch::new();
    std::fs::create_dir(s.path("metrics")).unwrap();
    // Every download answers 500: each window fails after its three tries.
    let (out, m) = run_with_metrics(&s, PIPELINE, "lineworks.server_error=1");
    out.expect_code(1);
    let run = run_json(&s);
    assert_eq!(run["status"], "failed");
    let failed = [("pipeline", "ops_metrics"), ("outcome", "failed")];
    assert_eq!(m.get("chatlake_run_outcome", &failed), 1.0);
    assert_eq!(
        m.get("chatlake_run_exit_code", &[("pipeline", "ops_metrics")]),
        1.0
    );
    assert_eq!(
        m.component("chatlake_source_windows_failed_total", "lw"),
        summary_of(&run, "lw")["windows_failed"].as_u64().unwrap() as f64
    );
    assert!(m.component("chatlake_source_windows_failed_total", "lw") >= 1.0);
    assert_eq!(
        m.component("chatlake_source_windows_committed_total", "lw"),
        0.0
    );
    // Nothing was ever loaded, so there is no freshness to report.
    assert!(
        !m.samples
            .keys()
            .any(|(name, _)| name == "chatlake_source_loaded_through_timestamp_seconds")
    );

    // A pipeline file the loader refuses: exit 2, and the file says so under the file's stem.
    let (out, m) = run_with_metrics(&s, "[pipeline]\nname = \"x\"\nbogus = 1\n", "");
    out.expect_code(2);
    assert_eq!(
        m.get(
            "chatlake_run_outcome",
            &[("pipeline", "p"), ("outcome", "invalid_pipeline")]
        ),
        1.0
    );
}

#[test]
fn a_metrics_file_in_a_missing_directory_is_refused_before_the_run() {
    let s = Scratch::new();
    let p = s.pipeline("p.toml", PIPELINE);
    let out = s
        .run(&[
            "run",
            "--emulate",
            "--metrics-file",
            "nowhere/chatlake.prom",
            p.to_str().unwrap(),
        ])
        .expect_code(2);
    assert!(
        out.stderr().contains("nowhere/chatlake.prom"),
        "{}",
        out.stderr()
    );
    assert!(!s.path("lake").exists(), "nothing ran");
}

#[test]
fn completions_name_every_subcommand() {
    let s = Scratch::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = s.run(&["completions", shell]).expect_code(0);
        let script = out.stdout();
        for sub in [
            "run",
            "validate",
            "plan",
            "components",
            "state",
            "schema",
            "completions",
            "man",
            "emulate",
        ] {
            assert!(script.contains(sub), "{shell} completions lack {sub}");
        }
        // fish spells long options `-l metrics-file`.
        assert!(script.contains("metrics-file"), "{shell}: run's options");
    }
    s.run(&["completions", "tcsh"]).expect_code(2);
}

#[test]
fn the_man_page_documents_every_subcommand() {
    let s = Scratch::new();
    let out = s.run(&["man"]).expect_code(0);
    let page = out.stdout();
    assert!(page.contains(".TH chatlake 1"), "roff: {page}");
    let subcommands = [
        "run",
        "validate",
        "plan",
        "components",
        "state",
        "schema",
        "completions",
        "man",
        "emulate",
    ];
    for sub in subcommands {
        assert!(
            page.contains(&format!("chatlake\\-{sub}(1)")),
            "man page lacks {sub}"
        );
    }
    assert!(
        page.contains("Exit codes"),
        "the exit codes are in the man page"
    );

    // --dir writes the pages the SUBCOMMANDS section refers to.
    s.run(&["man", "--dir", "man1"]).expect_code(0);
    for sub in subcommands {
        let sub_page = std::fs::read_to_string(s.path(&format!("man1/chatlake-{sub}.1"))).unwrap();
        assert!(
            sub_page.contains(&format!(".TH chatlake-{sub} 1")),
            "{sub_page}"
        );
    }
    let run_page = std::fs::read_to_string(s.path("man1/chatlake-run.1")).unwrap();
    assert!(run_page.contains("metrics\\-file"), "{run_page}");
    let main_page = std::fs::read_to_string(s.path("man1/chatlake.1")).unwrap();
    assert!(main_page.contains("chatlake\\-run(1)"), "{main_page}");
}

#[test]
fn schema_prints_a_draft_7_schema_with_every_component_type() {
    let s = Scratch::new();
    let out = s.run(&["schema"]).expect_code(0);
    let schema: Value = serde_json::from_str(&out.stdout()).unwrap();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    let components = s.run(&["components", "--json"]).expect_code(0);
    let components: Value = serde_json::from_str(&components.stdout()).unwrap();
    for c in components.as_array().unwrap() {
        let def = &schema["definitions"][format!(
            "{}.{}",
            c["role"].as_str().unwrap(),
            c["type"].as_str().unwrap()
        )];
        assert_eq!(def["properties"]["type"]["const"], c["type"]);
        // Every option `components` documents is in the schema, with its description.
        for o in c["options"].as_array().unwrap() {
            let name = o["name"].as_str().unwrap();
            assert!(
                def["properties"].get(name).is_some(),
                "{} {name}",
                c["type"]
            );
        }
    }
}

/// Six daily Qlara exports, each taking a while, into Parquet.
const SLOW_QLARA: &str = r#"
[pipeline]
name = "stoppable"
state_dir = "./state"

[sources.sms]
type = "qlara_message_history"
start = "2025-01-01T00:00:00Z"
end = "2025-01-06T23:59:59Z"
window_days = 1
poll_interval = "20ms"
requests_per_minute = 2400

[transforms.canonical]
type = "normalize"
inputs = ["sms"]

[sinks.lake]
type = "parquet"
inputs = ["canonical"]
path = "./lake"
partition_by = ["sent_date"]
"#;

fn sorted_rows(dir: &std::path::Path) -> Vec<common::Row> {
    let mut rows = common::read_parquet(dir);
    rows.sort();
    rows
}

#[test]
fn sigterm_stops_a_run_at_once_records_it_interrupted_and_the_next_run_completes_the_lake() {
    let clean = Scratch::new();
    let p = clean.pipeline("p.toml", SLOW_QLARA);
    clean
        .run(&[
            "run",
            "--emulate",
            "--faults",
            "qlara.slow_jobs_ms=150",
            p.to_str().unwrap(),
        ])
        .expect_code(0);
    let want = sorted_rows(&clean.path("lake"));
    assert!(!want.is_empty());

    let s = Scratch::new();
    let p = s.pipeline("p.toml", SLOW_QLARA);
    let mut child = std::process::Command::new(common::BIN)
        .args([
            "run",
            "--emulate",
            "--faults",
            "qlara.slow_jobs_ms=150",
            p.to_str().unwrap(),
        ])
        .current_dir(s.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ledger = s.path("state/stoppable/sources/sms.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_to_string(&ledger).is_ok_and(|l| l.contains("\"committed\"")) {
        assert!(std::time::Instant::now() < deadline, "no window committed");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the signal"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let sent = std::time::Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        sent.elapsed() < std::time::Duration::from_secs(5),
        "stopped at once: {:?}",
        sent.elapsed()
    );
    let last: Value =
        serde_json::from_slice(&std::fs::read(s.path("state/stoppable/last_run.json")).unwrap())
            .unwrap();
    assert_eq!(last["status"], "interrupted", "{last}");
    assert!(
        last["error"].as_str().unwrap().contains("SIGTERM"),
        "{last}"
    );
    let shown = s
        .run(&["state", "show", p.to_str().unwrap()])
        .expect_code(0)
        .stdout();
    assert!(shown.contains("interrupted"), "{shown}");
    assert!(
        sorted_rows(&s.path("lake")).len() < want.len(),
        "the run was stopped before its end"
    );

    // Crash-equivalent: the next run fetches what was in flight and the lake is a clean run's.
    s.run(&[
        "run",
        "--emulate",
        "--faults",
        "qlara.slow_jobs_ms=150",
        p.to_str().unwrap(),
    ])
    .expect_code(0);
    assert_eq!(sorted_rows(&s.path("lake")), want);
    assert!(common::temp_files(&s.path("lake")).is_empty());
}

#[test]
fn json_logs_are_json_lines_to_the_last_which_holds_the_summary() {
    let s = Scratch::new();
    let p = s.pipeline("p.toml", &SLOW_QLARA.replace("2025-01-06", "2025-01-02"));
    // Info level, and no NO_COLOR: a pipe alone must keep colour codes out.
    let out = s
        .run_env(
            &[
                "--log-format",
                "json",
                "run",
                "--emulate",
                p.to_str().unwrap(),
            ],
            &[("RUST_LOG", "info"), ("NO_COLOR", "")],
        )
        .expect_code(0);
    let lines: Vec<Value> = out
        .stderr()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["fields"]["message"], "run finished", "{last}");
    let summary: Value = serde_json::from_str(last["fields"]["summary"].as_str().unwrap()).unwrap();
    assert_eq!(summary["status"], "succeeded");
    assert!(
        !out.stderr().contains('\u{1b}'),
        "no colour codes into a pipe"
    );

    // Errors too.
    let out = s
        .run(&["--log-format", "json", "run", "missing.toml"])
        .expect_code(2);
    for line in out.stderr().lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(v["level"], "ERROR", "{v}");
    }
}

#[test]
fn on_a_terminal_a_bar_counts_planned_windows_with_an_eta_and_log_lines_stay_whole() {
    let s = Scratch::new();
    let p = s.pipeline("p.toml", SLOW_QLARA);
    // `script` gives the run a pseudo-terminal, as a person's shell would.
    let command = format!(
        "RUST_LOG=info NO_COLOR=1 {} run --emulate --faults qlara.slow_jobs_ms=150 {}",
        common::BIN,
        p.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(s.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(
        screen.contains("/6 windows"),
        "the plan's 6 windows are the total: {screen}"
    );
    assert!(screen.contains("ETA"), "{screen}");
    // Every log line arrives whole: the bar is cleared before it and drawn again after.
    // Every log line is still on the screen at the end, whole: the bar is cleared before each
    // and drawn again after it, never over it. A terminal tall enough that nothing scrolls off.
    let size = |n| std::num::NonZero::new(n).unwrap();
    // 80 columns: what indicatif assumes of a pseudo-terminal that reports no size.
    let mut terminal = vt100::Parser::new(size(2000), size(80), 0);
    terminal.process(&out.stdout);
    let shown = terminal.screen().contents();
    // (80 columns wrap a log line: count them by their start.)
    let logged = shown.matches("INFO committed window sink=lake").count();
    assert_eq!(logged, 6, "{shown}");
    assert!(
        !shown.contains("ETA"),
        "the bar is cleared at the end: {shown}"
    );
}

/// A minimal OTLP/HTTP receiver: answers every POST 200 and hands over (path, body).
fn otlp_receiver() -> (String, std::sync::mpsc::Receiver<(String, Vec<u8>)>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            loop {
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                    break;
                }
                let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
                let mut length = 0;
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    let header = header.trim_end();
                    if header.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = header.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        length = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let _ = tx.send((path, body));
                let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                if stream.write_all(answer.as_bytes()).is_err() {
                    break;
                }
            }
        }
    });
    (url, rx)
}

#[test]
fn with_an_otlp_endpoint_the_runs_metrics_go_to_the_collector() {
    let (url, received) = otlp_receiver();
    let s = Scratch::new();
    let p = s.pipeline("p.toml", &SLOW_QLARA.replace("2025-01-06", "2025-01-02"));
    s.run_env(
        &["run", "--emulate", p.to_str().unwrap()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ],
    )
    .expect_code(0);
    let (path, body) = received
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the run sent its metrics");
    assert_eq!(path, "/v1/metrics");
    let request: Value = serde_json::from_slice(&body).unwrap();
    let resource = &request["resourceMetrics"][0];
    let service = resource["resource"]["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == "service.name")
        .unwrap();
    assert_eq!(service["value"]["stringValue"], "chatlake");
    let metrics: HashMap<String, Value> = resource["scopeMetrics"][0]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_string(), m.clone()))
        .collect();
    // The figures of the metrics file, counters without `_total`.
    let last: Value =
        serde_json::from_slice(&std::fs::read(s.path("state/stoppable/last_run.json")).unwrap())
            .unwrap();
    let records = &metrics["chatlake_source_records"]["sum"]["dataPoints"][0];
    assert_eq!(
        records["asDouble"].as_f64(),
        last["components"][0]["records_out"].as_f64(),
        "{records}"
    );
    let mut attributes: Vec<String> = records["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{}={}",
                a["key"].as_str().unwrap(),
                a["value"]["stringValue"].as_str().unwrap()
            )
        })
        .collect();
    attributes.sort();
    assert_eq!(attributes, ["component=sms", "pipeline=stoppable"]);
    let exit = &metrics["chatlake_run_exit_code"]["gauge"]["dataPoints"][0];
    assert_eq!(exit["asDouble"], 0.0);
    assert!(metrics.contains_key("chatlake_source_loaded_through_timestamp_seconds"));
}
