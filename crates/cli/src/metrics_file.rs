//! `run --metrics-file PATH`: the run's figures in the Prometheus text exposition format
//! (version 0.0.4), for node_exporter's textfile collector or any scraper of a batch job.
//!
//! The figures are the run summary's (the same numbers as the table `run` prints and the run
//! JSON under the state directory) plus, per source, how far its ledger is loaded. Counters
//! (`_total`) count over the run that wrote the file: each run starts them from zero, as a
//! restarted process would, and `chatlake_run_finished_timestamp_seconds` tells runs apart.
//! The file is written whole to a temporary name in the same directory, fsynced and renamed, so
//! a scrape never reads half a file; the temporary name does not end in `.prom`, which the
//! textfile collector ignores.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use chatlake_core::metrics::{ComponentSummary, RunSummary};
use chatlake_core::state::SourceState;
use chrono::{DateTime, Utc};

use crate::exit;

/// How a run ended, as the `outcome` label of `chatlake_run_outcome`. Every value is written
/// (0 or 1), so an alert can test `chatlake_run_outcome{outcome="failed"} == 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failed,
    DeadLetters,
    /// Exit 2: the command line or the pipeline file was refused; nothing ran.
    InvalidPipeline,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Success,
        Outcome::Failed,
        Outcome::DeadLetters,
        Outcome::InvalidPipeline,
    ];

    /// The outcome of an exit code of `run` (see [`crate::exit`]).
    pub fn of_exit_code(code: u8) -> Outcome {
        match code {
            exit::OK => Outcome::Success,
            exit::DEAD_LETTERS => Outcome::DeadLetters,
            exit::BAD_INPUT => Outcome::InvalidPipeline,
            _ => Outcome::Failed,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failed => "failed",
            Outcome::DeadLetters => "dead_letters",
            Outcome::InvalidPipeline => "invalid_pipeline",
        }
    }
}

/// Everything the metrics file says about one `run`, however far it got.
#[derive(Debug)]
pub struct RunReport<'a> {
    /// The pipeline's name, or the file's stem when the file could not be read.
    pub pipeline: &'a str,
    pub exit_code: u8,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// The run summary, when the pipeline got as far as running.
    pub summary: Option<&'a RunSummary>,
    /// The pipeline file's sources, in file order (empty when the file could not be read).
    pub sources: &'a [String],
    /// The ledgers as the run left them, by source.
    pub ledgers: &'a BTreeMap<String, SourceState>,
}

/// Why the metrics file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MetricsFileError {
    #[error("{}: the directory does not exist", path.display())]
    NoDirectory { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Checks before the run that the file can be written where asked, so a typo in the path fails
/// at once instead of after a long run.
pub fn check_path(path: &Path) -> Result<(), MetricsFileError> {
    let dir = parent_dir(path);
    if dir.is_dir() {
        Ok(())
    } else {
        Err(MetricsFileError::NoDirectory {
            path: path.to_path_buf(),
        })
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `report` to `path` atomically: a temporary file in the same directory, fsync, rename,
/// fsync of the directory.
pub fn write(path: &Path, report: &RunReport<'_>) -> Result<(), MetricsFileError> {
    let text = render(report);
    let io = |source| MetricsFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "metrics".into());
    // A dot in front and no `.prom` at the end: the textfile collector skips it.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename is durable once the directory is.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// The exposition text of `report`.
pub fn render(report: &RunReport<'_>) -> String {
    exposition_text(&families(report))
}

/// The run's figures as metric families: what the file holds, and what the OTLP export sends
/// (crate::otlp).
pub fn families(report: &RunReport<'_>) -> Vec<Family> {
    let mut out = Exposition::default();
    let pipeline = report.pipeline;
    let run = |value: f64| (vec![("pipeline", pipeline.to_string())], value);

    let outcome = Outcome::of_exit_code(report.exit_code);
    out.family(
        "chatlake_run_outcome",
        Kind::Gauge,
        "How the last run ended: 1 for its outcome, 0 for the others.",
        Outcome::ALL.iter().map(|o| {
            (
                vec![
                    ("pipeline", pipeline.to_string()),
                    ("outcome", o.label().to_string()),
                ],
                if *o == outcome { 1.0 } else { 0.0 },
            )
        }),
    );
    out.family(
        "chatlake_run_exit_code",
        Kind::Gauge,
        "Exit code of the last run: 0 success, 1 failed, 2 bad command line or pipeline file, 3 dead letters.",
        [run(f64::from(report.exit_code))],
    );
    let seconds = report.summary.map(|s| s.seconds).unwrap_or_else(|| {
        (report.finished_at - report.started_at).num_milliseconds() as f64 / 1000.0
    });
    out.family(
        "chatlake_run_duration_seconds",
        Kind::Gauge,
        "Wall time of the last run.",
        [run(seconds)],
    );
    out.family(
        "chatlake_run_started_timestamp_seconds",
        Kind::Gauge,
        "When the last run started, as a Unix time.",
        [run(unix_seconds(report.started_at))],
    );
    out.family(
        "chatlake_run_finished_timestamp_seconds",
        Kind::Gauge,
        "When the last run finished, as a Unix time.",
        [run(unix_seconds(report.finished_at))],
    );
    out.family(
        "chatlake_run_dead_letters_total",
        Kind::Counter,
        "Records of the last run written to the dead-letter file.",
        [run(report.summary.map_or(0, |s| s.dead_letters) as f64)],
    );

    // Freshness comes from the ledger, not from this run: it stays right when a run fails early.
    out.family(
        "chatlake_source_loaded_through_timestamp_seconds",
        Kind::Gauge,
        "End of the latest window committed to the lake, as a Unix time (what `state show` prints as committed through).",
        report.sources.iter().filter_map(|source| {
            let ledger = report.ledgers.get(source)?;
            let mut streams: Vec<&str> =
                ledger.windows.values().map(|w| w.stream.as_str()).collect();
            streams.sort_unstable();
            streams.dedup();
            let through = streams.iter().filter_map(|s| ledger.cursor(s)).max()?;
            Some((component(pipeline, source), unix_seconds(through)))
        }),
    );

    let components: &[ComponentSummary] =
        report.summary.map_or(&[][..], |s| s.components.as_slice());
    let of_role = |role: &'static str| components.iter().filter(move |c| c.role == role);
    let per = |role: &'static str, figure: fn(&ComponentSummary) -> u64| {
        of_role(role)
            .map(move |c| (component(pipeline, &c.name), figure(c) as f64))
            .collect::<Vec<_>>()
    };
    let families: [CounterFamily; 16] = [
        (
            "source",
            "chatlake_source_windows_committed_total",
            "Windows the source fetched and every sink committed in the last run.",
            |c| c.windows_done,
        ),
        (
            "source",
            "chatlake_source_windows_failed_total",
            "Windows that failed after retries in the last run (nothing of them is in the lake).",
            |c| c.windows_failed,
        ),
        (
            "source",
            "chatlake_source_records_total",
            "Records the source emitted in the last run.",
            |c| c.records_out,
        ),
        (
            "source",
            "chatlake_source_dead_letters_total",
            "Records the source dead-lettered in the last run.",
            |c| c.dead_letters,
        ),
        (
            "source",
            "chatlake_source_requests_total",
            "HTTP requests the source sent in the last run.",
            |c| c.requests,
        ),
        (
            "source",
            "chatlake_source_rate_limited_total",
            "Answers 429 Too Many Requests the source received in the last run.",
            |c| c.rate_limited,
        ),
        (
            "source",
            "chatlake_source_retries_total",
            "Requests or downloads the source retried in the last run.",
            |c| c.retries,
        ),
        (
            "source",
            "chatlake_source_received_bytes_total",
            "Bytes the source downloaded or read in the last run.",
            |c| c.bytes,
        ),
        (
            "transform",
            "chatlake_transform_records_in_total",
            "Records the transform received in the last run.",
            |c| c.records_in,
        ),
        (
            "transform",
            "chatlake_transform_records_out_total",
            "Records the transform emitted in the last run.",
            |c| c.records_out,
        ),
        (
            "transform",
            "chatlake_transform_dead_letters_total",
            "Records the transform dead-lettered in the last run.",
            |c| c.dead_letters,
        ),
        (
            "sink",
            "chatlake_sink_records_total",
            "Records the sink received in the last run.",
            |c| c.records_in,
        ),
        (
            "sink",
            "chatlake_sink_written_bytes_total",
            "Bytes of files the sink wrote in the last run.",
            |c| c.bytes,
        ),
        (
            "sink",
            "chatlake_sink_files_total",
            "Files the sink wrote in the last run.",
            |c| c.files,
        ),
        (
            "sink",
            "chatlake_sink_records_removed_total",
            "Rows of earlier runs the sink took out of its files in the last run (replaced by newer versions).",
            |c| c.records_removed,
        ),
        (
            "sink",
            "chatlake_sink_dead_letters_total",
            "Records the sink dead-lettered in the last run.",
            |c| c.dead_letters,
        ),
    ];
    for (role, name, help, figure) in families {
        out.family(name, Kind::Counter, help, per(role, figure));
    }
    out.families
}

/// A per-component counter: the role it is written for, its name, its help and the summary
/// figure it reports.
type CounterFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ComponentSummary) -> u64,
);

fn component(pipeline: &str, name: &str) -> Vec<(&'static str, String)> {
    vec![
        ("pipeline", pipeline.to_string()),
        ("component", name.to_string()),
    ]
}

fn unix_seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One metric: its name (Prometheus style, counters ending in `_total`), kind, help and samples
/// (labels, value).
#[derive(Debug, Clone)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

/// Collects metric families one at a time.
#[derive(Debug, Default)]
struct Exposition {
    families: Vec<Family>,
}

impl Exposition {
    /// A family without samples is left out entirely: a `TYPE` line with no sample tells a
    /// scraper nothing.
    fn family(
        &mut self,
        name: &'static str,
        kind: Kind,
        help: &'static str,
        samples: impl IntoIterator<Item = (Vec<(&'static str, String)>, f64)>,
    ) {
        let samples: Vec<_> = samples.into_iter().collect();
        if samples.is_empty() {
            return;
        }
        self.families.push(Family {
            name,
            kind,
            help,
            samples,
        });
    }
}

/// `# HELP`, `# TYPE` and the samples of each family, in the text exposition format.
fn exposition_text(families: &[Family]) -> String {
    let mut text = String::new();
    for f in families {
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        // Writing to a String cannot fail.
        let _ = writeln!(text, "# HELP {} {}", f.name, escape_help(f.help));
        let _ = writeln!(text, "# TYPE {} {kind}", f.name);
        for (labels, value) in &f.samples {
            let labels = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect::<Vec<_>>()
                .join(",");
            let _ = writeln!(text, "{}{{{labels}}} {}", f.name, format_value(*value));
        }
    }
    text
}

/// HELP text escapes `\` and line feeds.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Label values escape `\`, `"` and line feeds.
fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Go's float formatting as Prometheus reads it: integers without a fraction, `NaN`, `+Inf`.
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_help("a\\b\nc \"q\""), "a\\\\b\\nc \"q\"");
    }

    #[test]
    fn values_are_written_as_prometheus_reads_them() {
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(1_767_225_600.5), "1767225600.5");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
    }

    #[test]
    fn a_run_refused_before_it_started_still_reports_its_outcome_and_freshness() {
        let t = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .expect("valid time")
        };
        let mut ledgers = BTreeMap::new();
        let ledger: SourceState = serde_json::from_value(serde_json::json!({
            "source": "lw",
            "windows": {
                "k1": {"stream": "message_contents", "label": "January", "start": "2025-01-01T00:00:00+09:00",
                       "end": "2025-01-31T23:59:59+09:00", "status": "committed", "run_id": "r1",
                       "at": "2025-02-01T00:00:00Z"},
                "k2": {"stream": "message_contents", "label": "February", "start": "2025-02-01T00:00:00+09:00",
                       "end": "2025-02-28T23:59:59+09:00", "status": "failed", "run_id": "r1",
                       "at": "2025-03-01T00:00:00Z"}
            }
        }))
        .expect("a ledger");
        ledgers.insert("lw".to_string(), ledger);
        let sources = vec!["lw".to_string(), "never_ran".to_string()];
        let text = render(&RunReport {
            pipeline: "p\"q",
            exit_code: exit::RUN_FAILED,
            started_at: t("2025-03-01T00:00:00Z"),
            finished_at: t("2025-03-01T00:00:01.5Z"),
            summary: None,
            sources: &sources,
            ledgers: &ledgers,
        });
        assert!(text.contains("chatlake_run_outcome{pipeline=\"p\\\"q\",outcome=\"failed\"} 1\n"));
        assert!(text.contains("chatlake_run_outcome{pipeline=\"p\\\"q\",outcome=\"success\"} 0\n"));
        assert!(text.contains("chatlake_run_exit_code{pipeline=\"p\\\"q\"} 1\n"));
        assert!(text.contains("chatlake_run_duration_seconds{pipeline=\"p\\\"q\"} 1.5\n"));
        // The committed January window, not the failed February one; no line for a source
        // without a ledger.
        let through = t("2025-01-31T14:59:59Z").timestamp();
        assert!(text.contains(&format!(
            "chatlake_source_loaded_through_timestamp_seconds{{pipeline=\"p\\\"q\",component=\"lw\"}} {through}\n"
        )));
        assert!(!text.contains("never_ran"));
        // No summary, so no per-component counters and no TYPE line without samples.
        assert!(!text.contains("chatlake_sink_"));
    }

    #[test]
    fn the_file_is_replaced_whole_and_no_temporary_file_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chatlake.prom");
        std::fs::write(&path, "old").expect("write");
        let now = Utc::now();
        let report = RunReport {
            pipeline: "p",
            exit_code: exit::OK,
            started_at: now,
            finished_at: now,
            summary: None,
            sources: &[],
            ledgers: &BTreeMap::new(),
        };
        write(&path, &report).expect("written");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            render(&report)
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("chatlake.prom")]);
        assert!(matches!(
            check_path(&dir.path().join("missing/chatlake.prom")),
            Err(MetricsFileError::NoDirectory { .. })
        ));
    }
}
