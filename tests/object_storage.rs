//! Issue 14: the Parquet, CSV and JSON Lines sinks writing to object storage, through the
//! binary against a real S3 server (SeaweedFS on loopback, started here; a test that cannot
//! start it fails). The lake in the bucket is downloaded and read with the same readers as a
//! local lake, and compared with the local lake of one clean run, row for row.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chatlake_store::Store;
use chatlake_store::testing::SeaweedFs;
use chrono::{DateTime, Utc};
use common::{BIN, Scratch, files, read_jsonl, read_parquet, temp_files};

const START: &str = "2025-01-01T00:00:00Z";
const END: &str = "2025-01-02T23:59:59Z";

/// A Qlara export with `dedupe keep = "latest"` across runs (see tests/replace.rs): runs that
/// end every few hours replace rows that earlier runs loaded.
const PIPELINE: &str = r#"
[pipeline]
name = "objects"
state_dir = "./lake/_state"

[sources.sms]
type = "qlara_message_history"
start = "2025-01-01T00:00:00Z"
window_days = 1
poll_interval = "20ms"
requests_per_minute = 2400
retry = { max_attempts = 5, initial_backoff = "10ms", max_backoff = "50ms" }

[transforms.canonical]
type = "normalize"
inputs = ["sms"]

[transforms.latest]
type = "dedupe"
inputs = ["canonical"]
key = ["provider", "message_id"]
keep = "latest"
across_runs = true

[transforms.humans]
type = "bot_filter"
inputs = ["latest"]
mode = "exclude"
"#;

/// The pipeline with its three sinks under `base` (`./lake` or `s3://bucket/…`).
fn pipeline(base: &str) -> String {
    format!(
        r#"{PIPELINE}
[sinks.lake]
type = "parquet"
inputs = ["humans"]
path = "{base}/messages"
partition_by = ["provider", "sent_date"]

[sinks.archive]
type = "jsonl"
inputs = ["latest"]
path = "{base}/archive"
partition_by = ["sent_date"]

[sinks.sheet]
type = "csv"
inputs = ["latest"]
path = "{base}/sheet"
compression = "gzip"
"#
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A bucket on a SeaweedFS of its own, and the scratch directory of the runs writing to it.
struct Bucket {
    s3: SeaweedFs,
    store: Store,
    rt: tokio::runtime::Runtime,
    scratch: Scratch,
}

const BUCKET: &str = "lake";

impl Bucket {
    fn new() -> Bucket {
        let s3 = SeaweedFs::start();
        s3.create_bucket(BUCKET);
        let store = s3.store(BUCKET);
        let scratch = Scratch::new();
        std::fs::create_dir(scratch.path("tmp")).unwrap();
        Bucket {
            s3,
            store,
            rt: runtime(),
            scratch,
        }
    }

    /// The standard variables for the server, and a temporary directory of the scratch's own
    /// (where the sinks spool), so a test sees what a run leaves there.
    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.s3.env();
        env.push(("TMPDIR", self.scratch.path("tmp").display().to_string()));
        env
    }

    fn run(&self, args: &[&str]) -> common::Outcome {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.scratch.run_env(args, &env)
    }

    fn run_to(&self, p: &Path, end: &str) -> common::Outcome {
        self.run(&["run", "--emulate", "--end", end, p.to_str().unwrap()])
    }

    /// Every key in the bucket but the start-up probes (see `lake`), sorted.
    fn keys(&self) -> Vec<String> {
        self.objects()
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| !k.contains("/_chatlake_probe/"))
            .collect()
    }

    /// Every key in the bucket with its size, sorted.
    fn objects(&self) -> Vec<(String, u64)> {
        let mut objects: Vec<(String, u64)> = self
            .rt
            .block_on(self.store.list(""))
            .unwrap()
            .into_iter()
            .map(|m| (m.location.to_string(), m.size))
            .collect();
        objects.sort();
        objects
    }

    /// Downloads the bucket into `<scratch>/mirror-N` and reads it as a lake; asserts that it
    /// holds data files only (no unfinished-upload notes, no probes) and that no spool is left.
    fn lake(&self) -> Lake {
        let objects = self.objects();
        // A run killed during its start-up check leaves its probe (no data extension, so no
        // glob sees it), which a start ten minutes later removes: not within this test.
        let objects: Vec<(String, u64)> = objects
            .into_iter()
            .filter(|(key, _)| !key.contains("/_chatlake_probe/"))
            .collect();
        for (key, _) in &objects {
            let data = [".parquet", ".jsonl", ".csv.gz"]
                .iter()
                .any(|ext| key.ends_with(ext));
            assert!(data, "only data files are left in the bucket: {key}");
        }
        let mirror = tempfile::tempdir_in(self.scratch.dir.path()).unwrap();
        for (key, _) in &objects {
            let local = mirror.path().join(key);
            std::fs::create_dir_all(local.parent().unwrap()).unwrap();
            self.rt
                .block_on(self.store.download(&self.store.key(key), &local))
                .unwrap();
        }
        let spools = self.scratch.path("tmp").join(SPOOL_DIR);
        assert!(
            files(&spools, "").is_empty(),
            "no spool file is left: {:?}",
            files(&spools, "")
        );
        lake(&mirror.path().join("chat"))
    }
}

/// `chatlake_lake::SPOOL_DIR`: the sinks' spools, below the temporary directory.
const SPOOL_DIR: &str = "chatlake-spool";

/// Everything a reader of the three sinks sees, order-free, without the `run_id` column.
#[derive(Debug, PartialEq)]
struct Lake {
    parquet: Vec<common::Row>,
    jsonl: Vec<String>,
    csv: Vec<Vec<String>>,
}

/// Reads the lake under `dir` (`messages`, `archive`, `sheet`).
fn lake(dir: &Path) -> Lake {
    let mut jsonl: Vec<String> = read_jsonl(&dir.join("archive"))
        .into_iter()
        .map(|mut v| {
            v.as_object_mut().unwrap().remove("run_id");
            v.to_string()
        })
        .collect();
    jsonl.sort();
    let mut csv = Vec::new();
    for path in files(&dir.join("sheet"), ".csv.gz") {
        let gz = flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap());
        let mut reader = csv::Reader::from_reader(gz);
        let headers = reader.headers().unwrap().clone();
        let run_id = headers.iter().position(|h| h == "run_id").unwrap();
        for record in reader.records() {
            let record = record.unwrap();
            csv.push(
                record
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != run_id)
                    .map(|(_, f)| f.to_string())
                    .collect(),
            );
        }
    }
    csv.sort();
    for sink in ["messages", "archive", "sheet"] {
        assert!(temp_files(&dir.join(sink)).is_empty());
    }
    Lake {
        parquet: read_parquet(&dir.join("messages")),
        jsonl,
        csv,
    }
}

/// The lake of one clean run over the whole range, on local disk.
fn clean_local_lake() -> Lake {
    let clean = Scratch::new();
    let p = clean.pipeline("objects.toml", &pipeline("./lake"));
    clean
        .run(&["run", "--emulate", "--end", END, p.to_str().unwrap()])
        .expect_code(0);
    let want = lake(&clean.path("lake"));
    assert!(!want.parquet.is_empty() && !want.jsonl.is_empty() && !want.csv.is_empty());
    want
}

/// The ends of runs every six hours through the range.
fn ends() -> Vec<String> {
    let start: DateTime<Utc> = START.parse().unwrap();
    let end: DateTime<Utc> = END.parse().unwrap();
    let mut out = Vec::new();
    let mut t = start + chrono::Duration::hours(6) - chrono::Duration::seconds(1);
    while t < end {
        out.push(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        t += chrono::Duration::hours(6);
    }
    out.push(END.to_string());
    out
}

/// Rows the sinks took out of earlier files, over every run saved in the state directory.
fn removed(dir: &Path) -> u64 {
    files(&dir.join("lake/_state/objects/runs"), ".json")
        .iter()
        .map(|p| {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            v["components"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["records_removed"].as_u64().unwrap_or(0))
                .sum::<u64>()
        })
        .sum()
}

fn s3_pipeline(b: &Bucket) -> std::path::PathBuf {
    b.scratch
        .pipeline("objects.toml", &pipeline(&format!("s3://{BUCKET}/chat")))
}

#[test]
fn an_s3_lake_holds_the_rows_of_a_local_one_and_a_second_run_adds_nothing() {
    let want = clean_local_lake();
    let b = Bucket::new();
    let p = s3_pipeline(&b);

    let plan = b
        .run(&["plan", "--emulate", p.to_str().unwrap()])
        .expect_code(0);
    assert!(
        plan.stdout()
            .contains(&format!("writes to s3://{BUCKET}/chat/messages")),
        "{}",
        plan.stdout()
    );

    b.run_to(&p, END).expect_code(0);
    let objects = b.objects();
    let keys = b.keys();
    assert!(
        objects
            .iter()
            .any(|(k, _)| k.starts_with("chat/messages/provider=qlara/sent_date=")),
        "Hive partitions below the prefix: {objects:?}"
    );
    let got = b.lake();
    assert_eq!(got.parquet.len(), want.parquet.len());
    assert_eq!(got.jsonl.len(), want.jsonl.len());
    assert_eq!(got.csv.len(), want.csv.len());
    assert!(got == want, "the S3 lake is the local lake, row for row");

    // A second run adds nothing: the lookback fetches the last days again and rewrites their
    // objects with the same rows (same keys, same lake).
    b.run_to(&p, END).expect_code(0);
    assert_eq!(b.keys(), keys);
    assert!(b.lake() == want);
}

#[test]
fn runs_every_few_hours_replace_rows_in_earlier_runs_objects() {
    let want = clean_local_lake();
    let b = Bucket::new();
    let p = s3_pipeline(&b);
    for end in ends() {
        b.run_to(&p, &end).expect_code(0);
    }
    let removed = removed(b.scratch.dir.path());
    assert!(
        removed >= 9,
        "the runs replaced rows in earlier objects: {removed}"
    );
    let got = b.lake();
    assert_eq!(got.parquet.len(), want.parquet.len());
    assert!(got == want, "the runs leave the lake of one clean run");
}

/// Runs the pipeline to `end` as a child and kills it with SIGKILL the moment `ready` first
/// holds (or lets it finish). Returns whether it was killed.
fn kill_when(b: &Bucket, p: &Path, end: &str, ready: impl FnMut() -> bool) -> bool {
    kill_when_env(b, p, end, &[], ready)
}

/// [`kill_when`] with more environment variables (`CHATLAKE_SHARD`).
fn kill_when_env(
    b: &Bucket,
    p: &Path,
    end: &str,
    extra: &[(&str, String)],
    ready: impl FnMut() -> bool,
) -> bool {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "run",
        "--emulate",
        "--faults",
        "qlara.slow_jobs_ms=30",
        "--end",
        end,
        p.to_str().unwrap(),
    ])
    .current_dir(b.scratch.dir.path())
    .env("RUST_LOG", "warn")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    for (k, v) in b.env() {
        cmd.env(k, v);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    common::kill_when(cmd.spawn().unwrap(), Duration::from_millis(1), ready)
}

#[test]
fn runs_killed_at_any_moment_end_with_the_lake_of_one_run() {
    let want = clean_local_lake();
    let b = Bucket::new();
    let p = s3_pipeline(&b);
    let removals = b.scratch.path("lake/_state/objects/removals");
    let mut killed = 0;
    for (i, end) in ends().iter().enumerate() {
        let before = b.objects().len();
        let was_killed = match i % 4 {
            // Right after a window's first object is uploaded (its other objects and the
            // other sinks' may be on their way; the ledger does not list it yet).
            0 => kill_when(&b, &p, end, || b.objects().len() > before),
            // While it fetches, before anything is uploaded.
            1 => {
                let started = Instant::now();
                kill_when(&b, &p, end, || {
                    started.elapsed() > Duration::from_millis(150)
                })
            }
            // The moment a removal log is durable: the sinks are about to rewrite objects of
            // earlier runs.
            2 => kill_when(&b, &p, end, || {
                removals.read_dir().is_ok_and(|d| {
                    d.flatten()
                        .any(|e| e.path().extension().is_some_and(|x| x == "arrows"))
                })
            }),
            // A while into the run: windows are committing.
            _ => {
                let started = Instant::now();
                kill_when(&b, &p, end, || {
                    started.elapsed() > Duration::from_millis(400)
                })
            }
        };
        killed += usize::from(was_killed);
        b.run_to(&p, end).expect_code(0);
    }
    eprintln!("runs killed: {killed} of {}", ends().len());
    assert!(killed >= 3, "most runs were killed mid-way: {killed}");
    let got = b.lake();
    assert_eq!(got.parquet.len(), want.parquet.len());
    assert_eq!(got.jsonl.len(), want.jsonl.len());
    assert_eq!(got.csv.len(), want.csv.len());
    assert!(
        got == want,
        "killed runs, run again, leave the lake of one clean run"
    );
    // And once more: nothing is added (the lookback fetches the last days again and rewrites
    // their objects with the same rows: same keys, same lake).
    let keys = b.keys();
    b.run_to(&p, END).expect_code(0);
    assert_eq!(b.keys(), keys);
    assert!(b.lake() == want);
}

#[test]
fn a_missing_bucket_or_a_wrong_secret_fails_at_the_start_naming_the_sink_and_url() {
    let b = Bucket::new();
    let missing = b
        .scratch
        .pipeline("missing.toml", &pipeline("s3://no-such-bucket/chat"));
    let out = b.run_to(&missing, END).expect_code(1);
    let said = format!("{}\n{}", out.stdout(), out.stderr());
    eprintln!("a missing bucket: {said}");
    // The first sink to start names itself and its URL, and says what the store answered.
    let named = [
        ("lake", "messages"),
        ("archive", "archive"),
        ("sheet", "sheet"),
    ]
    .iter()
    .any(|(sink, dir)| said.contains(&format!("{sink}: s3://no-such-bucket/chat/{dir}/")));
    assert!(named, "names the sink and its URL: {said}");
    assert!(
        said.contains("NoSuchBucket"),
        "says what the store answered: {said}"
    );

    let p = s3_pipeline(&b);
    let secret = "Wr0ng-Secret-Value";
    let mut env = b.env();
    env.retain(|(k, _)| *k != "AWS_SECRET_ACCESS_KEY");
    env.push(("AWS_SECRET_ACCESS_KEY", secret.to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = b
        .scratch
        .run_env(
            &["run", "--emulate", "--end", END, p.to_str().unwrap()],
            &env,
        )
        .expect_code(1);
    let said = format!("{}\n{}", out.stdout(), out.stderr());
    eprintln!("a wrong secret: {said}");
    let named = [
        ("lake", "messages"),
        ("archive", "archive"),
        ("sheet", "sheet"),
    ]
    .iter()
    .any(|(sink, dir)| said.contains(&format!("{sink}: s3://{BUCKET}/chat/{dir}/")));
    assert!(named, "names the sink and its URL: {said}");
    assert!(!said.contains(secret), "no secret is printed: {said}");
    assert!(b.objects().is_empty(), "nothing was written");
}

#[test]
fn validate_checks_object_store_urls_offline() {
    let s = Scratch::new();
    let good = s.pipeline("good.toml", &pipeline("s3://acme-lake/chat"));
    s.run(&["validate", "--emulate", good.to_str().unwrap()])
        .expect_code(0);
    let bad = s.pipeline(
        "bad.toml",
        &pipeline("s3://acme-lake/chat").replace(
            "path = \"s3://acme-lake/chat/messages\"",
            "path = \"ftp://acme-lake/chat/messages\"",
        ),
    );
    let out = s
        .run(&["validate", "--emulate", bad.to_str().unwrap()])
        .expect_code(2);
    assert!(
        out.stderr().contains("sinks.lake.path") && out.stderr().contains("ftp"),
        "{}",
        out.stderr()
    );
    let leaked = s.pipeline(
        "leaked.toml",
        &pipeline("s3://AKIA:Hunter2-Secret@acme-lake/chat"),
    );
    let out = s
        .run(&["validate", "--emulate", leaked.to_str().unwrap()])
        .expect_code(2);
    assert!(out.stderr().contains("sinks.lake.path"), "{}", out.stderr());
    assert!(!out.stderr().contains("Hunter2-Secret"), "{}", out.stderr());
}

#[test]
fn the_pipeline_storage_table_reaches_every_sink_and_wins_over_the_environment() {
    let b = Bucket::new();
    let endpoint = b.s3.endpoint();
    let table = format!(
        "storage = {{ endpoint = \"{endpoint}\", region = \"us-east-1\", allow_http = true, \
         access_key_id = \"{}\", secret_access_key = \"{}\" }}",
        chatlake_store::testing::ACCESS_KEY,
        chatlake_store::testing::SECRET_KEY
    );
    let body = pipeline(&format!("s3://{BUCKET}/chat")).replace(
        "state_dir = \"./lake/_state\"",
        &format!("state_dir = \"./lake/_state\"\n{table}"),
    );
    let p = b.scratch.pipeline("objects.toml", &body);
    // The environment points elsewhere with a wrong secret: only the table can reach the bucket.
    let env = [
        ("AWS_ACCESS_KEY_ID", "someone-else"),
        ("AWS_SECRET_ACCESS_KEY", "Wr0ng-Secret-Value"),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ("AWS_ALLOW_HTTP", "false"),
    ];
    let tmp = b.scratch.path("tmp").display().to_string();
    let mut env = env.to_vec();
    env.push(("TMPDIR", tmp.as_str()));
    let out = b
        .scratch
        .run_env(
            &[
                "run",
                "--emulate",
                "--end",
                START_PLUS_A_DAY,
                p.to_str().unwrap(),
            ],
            &env,
        )
        .expect_code(0);
    assert!(!out.stdout().contains(chatlake_store::testing::SECRET_KEY));
    let keys: Vec<String> = b.objects().into_iter().map(|(k, _)| k).collect();
    for dir in ["messages", "archive", "sheet"] {
        assert!(
            keys.iter().any(|k| k.starts_with(&format!("chat/{dir}/"))),
            "{dir}: {keys:?}"
        );
    }
}

/// The end of the first day's run, for tests that need one run's objects and no more.
const START_PLUS_A_DAY: &str = "2025-01-01T23:59:59Z";

#[test]
fn a_reset_keeps_the_objects_through_a_failed_refetch_and_the_reload_replaces_them() {
    let want = clean_local_lake();
    let b = Bucket::new();
    let p = s3_pipeline(&b);
    b.run_to(&p, END).expect_code(0);
    let loaded = b.objects();

    b.run(&["state", "reset", "--yes", p.to_str().unwrap()])
        .expect_code(0);
    // The provider fails every request: nothing can be fetched again.
    b.run(&[
        "run",
        "--emulate",
        "--faults",
        "qlara.server_error=1",
        "--end",
        END,
        p.to_str().unwrap(),
    ])
    .expect_code(1);
    assert_eq!(b.objects(), loaded, "a failed refetch deletes no object");
    assert!(b.lake() == want);

    // The reload that works replaces every object of the windows, leaving one copy of each row.
    b.run_to(&p, END).expect_code(0);
    assert!(b.lake() == want, "one clean run's lake after the reload");
}

/// A Qlara export, a window a day, into two sinks in the bucket with nothing held back (no
/// `keep = "latest"`), so windows commit one by one all through the run, each once both sinks
/// have committed it.
const STREAMING: &str = r#"
[pipeline]
name = "sampled"
state_dir = "./lake/_state"

[sources.sms]
type = "qlara_message_history"
start = "2025-01-01T00:00:00Z"
window_days = 1
poll_interval = "20ms"
requests_per_minute = 2400
retry = { max_attempts = 5, initial_backoff = "10ms", max_backoff = "50ms" }

[transforms.canonical]
type = "normalize"
inputs = ["sms"]

[sinks.lake]
type = "parquet"
inputs = ["canonical"]
path = "s3://lake/chat/messages"
partition_by = ["provider", "sent_date"]

[sinks.archive]
type = "jsonl"
inputs = ["canonical"]
path = "s3://lake/chat/archive"
partition_by = ["sent_date"]
"#;

/// Keys of the windows a source's ledger lists as committed (none before its first commit).
fn committed_windows(ledger: &Path) -> std::collections::HashSet<String> {
    let Ok(bytes) = std::fs::read(ledger) else {
        return Default::default();
    };
    // The ledger is replaced atomically (rename), so a read sees a whole version.
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["windows"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, w)| w["status"] == "committed")
        .map(|(k, _)| k.clone())
        .collect()
}

/// The window key in the name of a data file or journal of `pipeline`'s sinks `sinks`.
fn window_of<'k>(key: &'k str, pipeline: &str, sinks: &[&str]) -> Option<&'k str> {
    let name = key.rsplit('/').next()?;
    let rest = sinks
        .iter()
        .find_map(|s| name.strip_prefix(&format!("part-{pipeline}.{s}.")))?;
    if let Some(journal) = rest.strip_suffix(".json") {
        return Some(journal);
    }
    // Window keys (`<source>-<hex>`) hold no dot; the part number and extension follow one.
    let (window, _part_and_extension) = rest.split_once('.')?;
    Some(window)
}

#[test]
fn a_reader_sampling_the_bucket_mid_run_sees_only_whole_objects_of_committed_windows() {
    let b = Bucket::new();
    let p = b.scratch.pipeline("sampled.toml", STREAMING);
    let ledger = b.scratch.path("lake/_state/sampled/sources/sms.json");
    let mut cmd = Command::new(BIN);
    cmd.args([
        "run",
        "--emulate",
        "--faults",
        "qlara.slow_jobs_ms=20",
        "--end",
        "2025-01-25T23:59:59Z",
        p.to_str().unwrap(),
    ])
    .current_dir(b.scratch.dir.path())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    for (k, v) in b.env() {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut checked: std::collections::HashSet<(String, u64)> = Default::default();
    let (mut samples, mut seen_mid_run) = (0, 0);
    let mut violations = Vec::new();
    let status = loop {
        let done = child.try_wait().unwrap();
        // What a glob sees at this moment: `**/*.parquet` and `**/*.jsonl`.
        let visible: Vec<(String, u64)> = b
            .objects()
            .into_iter()
            .filter(|(k, _)| k.ends_with(".parquet") || k.ends_with(".jsonl"))
            .collect();
        // Read after the listing: every window committed when the listing was made is here.
        let committed = committed_windows(&ledger);
        samples += 1;
        for (key, size) in &visible {
            let window = window_of(key, "sampled", &["lake", "archive"])
                .unwrap_or_else(|| panic!("not a data file of the run: {key}"));
            if !committed.contains(window) {
                violations.push(format!("{key}: its window is not in the ledger"));
            }
            if checked.insert((key.clone(), *size)) {
                if done.is_none() {
                    seen_mid_run += 1;
                }
                // Whole: it reads to its end as its format.
                let (bytes, _) =
                    b.rt.block_on(b.store.read(&b.store.key(key)))
                        .unwrap()
                        .unwrap();
                assert_eq!(bytes.len() as u64, *size, "{key}");
                if key.ends_with(".parquet") {
                    let reader =
                        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                            bytes,
                        )
                        .unwrap_or_else(|e| panic!("{key} is not a whole Parquet file: {e}"))
                        .build()
                        .unwrap();
                    for batch in reader {
                        batch.unwrap_or_else(|e| panic!("{key}: {e}"));
                    }
                } else {
                    let text = std::str::from_utf8(&bytes).unwrap();
                    assert!(text.ends_with('\n'), "{key} ends with a whole line");
                    for line in text.lines() {
                        serde_json::from_str::<serde_json::Value>(line)
                            .unwrap_or_else(|e| panic!("{key}: {e}"));
                    }
                }
            }
        }
        if let Some(status) = done {
            break status;
        }
        if !violations.is_empty() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "after {samples} samples: {:?}",
                violations.iter().take(5).collect::<Vec<_>>()
            );
        }
    };
    assert!(status.success(), "the run succeeds");
    eprintln!("samples: {samples}, objects seen while the run went on: {seen_mid_run}");
    assert!(
        samples >= 20,
        "the bucket was sampled all through the run: {samples}"
    );
    assert!(
        seen_mid_run > 0,
        "objects appeared while the run went on, not only at its end"
    );
    // At its end: every window's objects, and nothing staged left.
    let committed = committed_windows(&ledger);
    assert_eq!(committed.len(), 25);
    assert!(b.keys().iter().all(|k| !k.contains("/_chatlake_staged/")));
}

#[test]
fn a_run_killed_after_a_window_is_in_the_ledger_but_before_its_publish_is_rolled_forward() {
    let want = clean_local_lake();
    let ledger_of = |b: &Bucket| b.scratch.path("lake/_state/objects/sources/sms.json");
    let sinks = ["lake", "archive", "sheet"];
    // Journals of windows the ledger lists: committed, not yet published.
    let unpublished = |b: &Bucket| -> Vec<String> {
        let committed = committed_windows(&ledger_of(b));
        b.keys()
            .into_iter()
            .filter(|k| k.contains("/_chatlake_staged/"))
            .filter(|k| window_of(k, "objects", &sinks).is_some_and(|w| committed.contains(w)))
            .collect()
    };
    // The moment is short (a publish follows its ledger entry at once): try a few runs.
    for attempt in 1..=8 {
        let b = Bucket::new();
        let p = s3_pipeline(&b);
        let killed = kill_when(&b, &p, END, || !unpublished(&b).is_empty());
        let left = unpublished(&b);
        if !killed || left.is_empty() {
            eprintln!("attempt {attempt}: the kill missed the moment");
            continue;
        }
        eprintln!(
            "attempt {attempt}: killed with {} windows unpublished",
            left.len()
        );
        b.run_to(&p, END).expect_code(0);
        // `lake` asserts that only data files are left: no journal, no upload note.
        let got = b.lake();
        assert_eq!(got.parquet.len(), want.parquet.len());
        assert_eq!(got.jsonl.len(), want.jsonl.len());
        assert_eq!(got.csv.len(), want.csv.len());
        assert!(got == want, "the re-run leaves the lake of one clean run");
        return;
    }
    panic!("no attempt was killed between a window's ledger entry and its publish");
}

/// A worker of a sharded run (`--shard`) killed after a window is in its ledger but before the
/// window's publish: its next run alone publishes it (a worker settles its own staged windows,
/// never another worker's), and the lake ends equal to one clean unsharded run's.
#[test]
fn a_sharded_worker_killed_before_its_publish_publishes_at_its_next_start() {
    let want = clean_local_lake();
    let sinks = ["lake", "archive", "sheet"];
    let shard = |k: u32| ("CHATLAKE_SHARD", format!("{k}/2"));
    let unpublished = |b: &Bucket, k: u32| -> Vec<String> {
        let ledger = b.scratch.path(&format!(
            "lake/_state/objects/shard-{k}-of-2/sources/sms.json"
        ));
        let committed = committed_windows(&ledger);
        b.keys()
            .into_iter()
            .filter(|key| key.contains("/_chatlake_staged/"))
            .filter(|key| window_of(key, "objects", &sinks).is_some_and(|w| committed.contains(w)))
            .collect()
    };
    for attempt in 1..=8 {
        let b = Bucket::new();
        // Without a lookback, which would load the killed run's last windows again (and so
        // replace their staged objects) instead of leaving them to the start's roll-forward.
        let p = b.scratch.pipeline(
            "objects.toml",
            &pipeline(&format!("s3://{BUCKET}/chat"))
                .replace("window_days = 1\n", "window_days = 1\nlookback = \"0s\"\n"),
        );
        // The Qlara source (below a dedupe across runs) is whole on one of the two workers.
        let Some(k) = (0..2).find(|&k| {
            kill_when_env(&b, &p, END, &[shard(k)], || !unpublished(&b, k).is_empty())
                && !unpublished(&b, k).is_empty()
        }) else {
            eprintln!("attempt {attempt}: the kill missed the moment");
            continue;
        };
        eprintln!(
            "attempt {attempt}: worker {k} killed with {} windows unpublished",
            unpublished(&b, k).len()
        );
        let run_worker = |k: u32| {
            let mut env = b.env();
            env.push(shard(k));
            let env: Vec<(&str, &str)> = env.iter().map(|(a, v)| (*a, v.as_str())).collect();
            b.scratch
                .run_env(
                    &["run", "--emulate", "--end", END, p.to_str().unwrap()],
                    &env,
                )
                .expect_code(0);
        };
        // The killed worker alone first: it must publish its own committed windows.
        run_worker(k);
        assert!(
            unpublished(&b, k).is_empty(),
            "worker {k}'s next start published its committed windows"
        );
        run_worker(1 - k);
        let got = b.lake();
        assert_eq!(got.parquet.len(), want.parquet.len());
        assert!(got == want, "the workers leave the lake of one clean run");
        return;
    }
    panic!("no attempt was killed between a window's ledger entry and its publish");
}
