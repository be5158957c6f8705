//! Issue 15: the `delta` sink through the binary, on a local path and on a real S3 server
//! (SeaweedFS on loopback). The table is read back with deltalake itself (its log, at the
//! latest and at earlier versions) and its data files with the same reader as the Parquet lake
//! beside it, which it must equal row for row; runs killed with SIGKILL at several moments and
//! run again leave one protocol and metaData and no row twice.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chatlake_store::Store;
use chatlake_store::testing::SeaweedFs;
use chrono::{DateTime, Utc};
use common::{BIN, Row, Scratch, read_parquet, read_parquet_file};
use deltalake::DeltaTableBuilder;
use deltalake::kernel::Action;

const START: &str = "2025-01-01T00:00:00Z";
const END: &str = "2025-01-02T23:59:59Z";
const BUCKET: &str = "lake";

/// A Qlara export with `dedupe keep = "latest"` across runs (as tests/replace.rs): runs that
/// end every few hours replace rows that earlier runs loaded. The Parquet lake is the reference.
fn pipeline(table: &str) -> String {
    format!(
        r#"
[pipeline]
name = "tables"
state_dir = "./lake/_state"

[sources.sms]
type = "qlara_message_history"
start = "{START}"
window_days = 1
poll_interval = "20ms"
requests_per_minute = 2400
retry = {{ max_attempts = 5, initial_backoff = "10ms", max_backoff = "50ms" }}

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

[sinks.lake]
type = "parquet"
inputs = ["humans"]
path = "./lake/messages"
partition_by = ["provider", "sent_date"]

[sinks.table]
type = "delta"
inputs = ["humans"]
path = "{table}"
partition_by = ["provider", "sent_date"]
"#
    )
}

/// The rows of the local Delta table at `root` as of `version` (the latest if `None`): the
/// files its log lists, read as the Parquet lake is read.
fn read_delta(root: &Path, version: Option<u64>) -> Vec<Row> {
    let rt = runtime();
    let url = url::Url::from_directory_path(std::fs::canonicalize(root).unwrap()).unwrap();
    let table = rt.block_on(async {
        let mut b = DeltaTableBuilder::from_url(url).unwrap();
        if let Some(v) = version {
            b = b.with_version(v);
        }
        b.load().await.unwrap()
    });
    let mut rows = Vec::new();
    for uri in table.get_file_uris().unwrap() {
        let path = file_of(&uri);
        rows.extend(read_parquet_file(root, &path));
    }
    rows.sort();
    rows
}

/// The table's latest version.
fn version(root: &Path) -> u64 {
    let rt = runtime();
    let url = url::Url::from_directory_path(std::fs::canonicalize(root).unwrap()).unwrap();
    rt.block_on(async {
        DeltaTableBuilder::from_url(url)
            .unwrap()
            .load()
            .await
            .unwrap()
    })
    .version()
    .unwrap()
}

/// How many protocol and metaData actions the log holds over all its commits.
fn protocol_and_metadata(root: &Path) -> (usize, usize) {
    let (mut protocols, mut metadata) = (0, 0);
    for entry in std::fs::read_dir(root.join("_delta_log")).unwrap() {
        let p = entry.unwrap().path();
        if p.to_string_lossy().ends_with(".json") && !p.to_string_lossy().contains("_commit_") {
            for line in std::fs::read_to_string(&p).unwrap().lines() {
                match serde_json::from_str::<Action>(line).unwrap() {
                    Action::Protocol(_) => protocols += 1,
                    Action::Metadata(_) => metadata += 1,
                    _ => {}
                }
            }
        }
    }
    (protocols, metadata)
}

/// Messages (provider, id) the rows hold more than once.
fn duplicates(rows: &[Row]) -> Vec<String> {
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in rows {
        let provider = r.partition.get("provider").cloned().unwrap_or_default();
        *seen.entry((provider, r.message_id.clone())).or_default() += 1;
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|((p, id), _)| format!("{p}/{id}"))
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
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

#[test]
fn a_local_table_equals_the_parquet_lake_and_replacements_travel_in_time() {
    let s = Scratch::new();
    let p = s.pipeline("tables.toml", &pipeline("./lake/delta"));
    let mut versions = Vec::new();
    for end in ends() {
        s.run(&["run", "--emulate", "--end", &end, p.to_str().unwrap()])
            .expect_code(0);
        versions.push(version(&s.path("lake/delta")));
    }
    let table = s.path("lake/delta");
    let lake = read_parquet(&s.path("lake/messages"));
    let latest = read_delta(&table, None);
    assert!(!lake.is_empty());
    assert_eq!(latest.len(), lake.len());
    assert!(latest == lake, "the table is the Parquet lake, row for row");
    assert_eq!(duplicates(&latest), Vec::<String>::new());
    assert_eq!(protocol_and_metadata(&table), (1, 1));

    // Some message was loaded by one run and replaced by a later one: the latest version has
    // it once, with the newer version; an earlier table version has the older one.
    let newest: BTreeMap<&str, i64> = latest
        .iter()
        .map(|r| (r.message_id.as_str(), r.version))
        .collect();
    let mut replaced = 0;
    for v in &versions[..versions.len() - 1] {
        for r in read_delta(&table, Some(*v)) {
            if newest
                .get(r.message_id.as_str())
                .is_some_and(|n| *n > r.version)
            {
                replaced += 1;
            }
        }
        assert_eq!(
            duplicates(&read_delta(&table, Some(*v))),
            Vec::<String>::new()
        );
    }
    assert!(replaced > 0, "earlier versions hold replaced rows");

    // A second run over the whole range adds no row.
    s.run(&["run", "--emulate", "--end", END, p.to_str().unwrap()])
        .expect_code(0);
    assert!(read_delta(&table, None) == lake);
    assert!(read_parquet(&s.path("lake/messages")) == lake);
}

/// A bucket on a SeaweedFS of its own, and the scratch directory of the runs writing to it.
struct Bucket {
    s3: SeaweedFs,
    store: Store,
    rt: tokio::runtime::Runtime,
    scratch: Scratch,
}

impl Bucket {
    fn new() -> Bucket {
        let s3 = SeaweedFs::start();
        s3.create_bucket(BUCKET);
        let store = s3.store(BUCKET);
        Bucket {
            s3,
            store,
            rt: runtime(),
            scratch: Scratch::new(),
        }
    }

    fn command(&self, p: &Path, end: &str) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--emulate", "--end", end, p.to_str().unwrap()])
            .current_dir(self.scratch.dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in self.s3.env() {
            cmd.env(k, v);
        }
        cmd
    }

    fn run_to(&self, p: &Path, end: &str) {
        let out = self.command(p, end).output().unwrap();
        assert!(
            out.status.success(),
            "run to {end}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every key below `prefix`.
    fn keys(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .rt
            .block_on(self.store.list(prefix))
            .unwrap()
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        keys.sort();
        keys
    }

    /// Downloads the table below `prefix` into the scratch directory, as a local table.
    fn download(&self, prefix: &str) -> PathBuf {
        let mirror = tempfile::tempdir_in(self.scratch.dir.path())
            .unwrap()
            .keep();
        for key in self.keys(prefix) {
            let local = mirror.join(&key);
            std::fs::create_dir_all(local.parent().unwrap()).unwrap();
            self.rt
                .block_on(self.store.download(&self.store.key(&key), &local))
                .unwrap();
        }
        mirror.join(prefix)
    }
}

/// Runs the pipeline to `end` as a child and kills it with SIGKILL the moment `ready` first
/// holds (or lets it finish). Returns whether it was killed.
fn kill_when(b: &Bucket, p: &Path, end: &str, ready: impl FnMut() -> bool) -> bool {
    let child = b.command(p, end).stderr(Stdio::null()).spawn().unwrap();
    common::kill_when(child, Duration::from_millis(2), ready)
}

#[test]
fn an_s3_table_killed_at_any_moment_ends_as_the_parquet_lake_with_one_protocol() {
    let b = Bucket::new();
    let p = b.scratch.pipeline(
        "tables.toml",
        &pipeline(&format!("s3://{BUCKET}/chat/delta")),
    );
    let log = "chat/delta/_delta_log/";
    let journals = "chat/delta/_chatlake/";
    let mut killed = 0;
    for (i, end) in ends().iter().enumerate() {
        let commits = b.keys(log).len();
        let was_killed = match i % 4 {
            // While fetching, before anything is written.
            0 => {
                let started = Instant::now();
                kill_when(&b, &p, end, || {
                    started.elapsed() > Duration::from_millis(150)
                })
            }
            // The moment a window's journal exists: its files are written, the ledger may or
            // may not have it, the table does not.
            1 => kill_when(&b, &p, end, || !b.keys(journals).is_empty()),
            // Right after a Delta commit of this run.
            2 => kill_when(&b, &p, end, || b.keys(log).len() > commits),
            // A while into the run.
            _ => {
                let started = Instant::now();
                kill_when(&b, &p, end, || {
                    started.elapsed() > Duration::from_millis(400)
                })
            }
        };
        killed += usize::from(was_killed);
        b.run_to(&p, end);
    }
    eprintln!("runs killed: {killed} of {}", ends().len());
    assert!(killed >= 3, "most runs were killed mid-way: {killed}");
    let table = b.download("chat/delta");
    let lake = read_parquet(&b.scratch.path("lake/messages"));
    let got = read_delta(&table, None);
    assert_eq!(duplicates(&got), Vec::<String>::new());
    assert_eq!(got.len(), lake.len());
    assert!(
        got == lake,
        "killed runs, run again, leave the table of one clean run"
    );
    assert_eq!(protocol_and_metadata(&table), (1, 1));
    assert!(
        b.keys(journals).is_empty(),
        "every journal is published or gone"
    );
}

/// Three pipelines (three workers with state of their own) load the same export into one S3
/// table at once: the table is created once and holds each worker's rows exactly once.
#[test]
fn concurrent_workers_commit_to_one_s3_table_exactly_once() {
    let b = Bucket::new();
    let table = format!("s3://{BUCKET}/chat/shared");
    let workers: Vec<PathBuf> = (0..3)
        .map(|w| {
            let body = pipeline(&table)
                .replace("name = \"tables\"", &format!("name = \"worker{w}\""))
                .replace("./lake/", &format!("./w{w}/"));
            b.scratch.pipeline(&format!("worker{w}.toml"), &body)
        })
        .collect();
    let children: Vec<_> = workers
        .iter()
        .map(|p| b.command(p, END).spawn().unwrap())
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let got = read_delta(&b.download("chat/shared"), None);
    let lake = read_parquet(&b.scratch.path("w0/messages"));
    assert!(!lake.is_empty());
    let mut want: Vec<Row> = (0..3).flat_map(|_| lake.clone()).collect();
    want.sort();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "every worker's rows are in the table once");
    let mirror = b.download("chat/shared");
    assert_eq!(protocol_and_metadata(&mirror), (1, 1));
}

/// A file of `get_file_uris`: a `file://` URL or a plain path, depending on the table's URL.
fn file_of(uri: &str) -> std::path::PathBuf {
    match url::Url::parse(uri) {
        Ok(url) if url.scheme() == "file" => url.to_file_path().unwrap(),
        _ => std::path::PathBuf::from(uri),
    }
}

/// Qlara (nothing below compares windows: split by window) and Zoom 1:1 chats and channels
/// below a keep-latest dedupe across runs (split by conversation) into a Parquet lake on local
/// disk and a Delta table on S3.
fn sharded_pipeline(table: &str) -> String {
    format!(
        r#"
[pipeline]
name = "tables"
state_dir = "./lake/_state"

[sources.sms]
type = "qlara_message_history"
start = "2025-01-01T00:00:00Z"
end = "2025-01-08T23:59:59Z"
window_days = 1
poll_interval = "20ms"
requests_per_minute = 2400
retry = {{ max_attempts = 5, initial_backoff = "10ms", max_backoff = "50ms" }}

[sources.zoom_dm]
type = "zoom_user_messages"
users = "all"
conversations = "all"
start = "2025-01-06T00:00:00Z"
end = "2025-01-07T23:59:59Z"
window_days = 1

[transforms.sms_rows]
type = "normalize"
inputs = ["sms"]

[transforms.zoom_rows]
type = "normalize"
inputs = ["zoom_dm"]

[transforms.zoom_latest]
type = "dedupe"
inputs = ["zoom_rows"]
key = ["provider", "message_id"]
keep = "latest"
across_runs = true

[sinks.lake]
type = "parquet"
inputs = ["sms_rows", "zoom_latest"]
path = "./lake/messages"
partition_by = ["provider", "sent_date"]

[sinks.table]
type = "delta"
inputs = ["sms_rows", "zoom_latest"]
path = "{table}"
partition_by = ["provider", "sent_date"]
"#
    )
}

/// Issue 15 items 3 and 5: four workers (`--shard K/4`, started together) load one S3 table as
/// one worker does: row for row, one protocol and metaData, no message twice; their Parquet
/// lake equals the one worker's too.
#[test]
fn four_shard_workers_load_one_s3_table_as_one_worker_does() {
    let b = Bucket::new();
    let one = Scratch::new();
    let p = one.pipeline(
        "tables.toml",
        &sharded_pipeline(&format!("s3://{BUCKET}/one/table")),
    );
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--emulate", p.to_str().unwrap()])
        .current_dir(one.dir.path())
        .env("RUST_LOG", "warn");
    for (k, v) in b.s3.env() {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = read_delta(&b.download("one/table"), None);
    assert!(!want.is_empty());
    assert!(want == read_parquet(&one.path("lake/messages")));

    let p = b.scratch.pipeline(
        "tables.toml",
        &sharded_pipeline(&format!("s3://{BUCKET}/four/table")),
    );
    let workers: Vec<_> = (0..4)
        .map(|k| {
            let mut cmd = Command::new(BIN);
            cmd.args(["run", "--emulate", p.to_str().unwrap()])
                .current_dir(b.scratch.dir.path())
                .env("RUST_LOG", "warn")
                .env("CHATLAKE_SHARD", format!("{k}/4"))
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            for (key, v) in b.s3.env() {
                cmd.env(key, v);
            }
            cmd.spawn().unwrap()
        })
        .collect();
    for (k, child) in workers.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "worker {k}/4: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mirror = b.download("four/table");
    let got = read_delta(&mirror, None);
    // Without a dedupe below it, a Qlara message whose delivery report arrived in a later
    // window's export is there once per export, for one worker as for four.
    assert_eq!(duplicates(&got), duplicates(&want));
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "four workers' table equals one worker's, row for row"
    );
    assert_eq!(protocol_and_metadata(&mirror), (1, 1), "created once");
    assert!(read_parquet(&b.scratch.path("lake/messages")) == want);
}

/// Issue 15 item 4: `chatlake lake vacuum` deletes the files replaced rows left behind (after a
/// dry run that only lists them), leaves the latest version whole, and refuses while a window
/// is written and not yet in the table.
#[test]
fn vacuum_deletes_replaced_files_keeps_the_latest_version_and_waits_for_pending_windows() {
    let s = Scratch::new();
    let p = s.pipeline("tables.toml", &pipeline("./lake/delta"));
    for end in ends() {
        s.run(&["run", "--emulate", "--end", &end, p.to_str().unwrap()])
            .expect_code(0);
    }
    let table = s.path("lake/delta");
    let lake = read_parquet(&s.path("lake/messages"));
    let parquet_files = |dir: &Path| common::files(dir, ".parquet").len();
    let before = parquet_files(&table);
    let in_table = rt_file_count(&table);
    assert!(
        before > in_table,
        "replacements left files the latest version does not list"
    );

    let dry = s
        .run(&[
            "lake",
            "vacuum",
            p.to_str().unwrap(),
            "--retention",
            "0s",
            "--dry-run",
        ])
        .expect_code(0);
    assert!(dry.stdout().contains("would delete"), "{}", dry.stdout());
    assert_eq!(parquet_files(&table), before, "a dry run deletes nothing");

    s.run(&["lake", "vacuum", p.to_str().unwrap(), "--retention", "0s"])
        .expect_code(0);
    assert_eq!(
        parquet_files(&table),
        in_table,
        "only the listed files are left"
    );
    assert!(
        read_delta(&table, None) == lake,
        "the latest version is whole"
    );

    // A window written and not yet committed to the table (its journal): vacuum waits.
    let journal = table.join("_chatlake/tables.table/sms-0000.json");
    std::fs::create_dir_all(journal.parent().unwrap()).unwrap();
    std::fs::write(&journal, b"{}").unwrap();
    let refused = s
        .run(&["lake", "vacuum", p.to_str().unwrap(), "--retention", "0s"])
        .expect_code(1);
    assert!(
        refused.stderr().contains("not yet in the table"),
        "{}",
        refused.stderr()
    );
}

/// How many data files the table's latest version lists.
fn rt_file_count(root: &Path) -> usize {
    let rt = runtime();
    let url = url::Url::from_directory_path(std::fs::canonicalize(root).unwrap()).unwrap();
    rt.block_on(async {
        DeltaTableBuilder::from_url(url)
            .unwrap()
            .load()
            .await
            .unwrap()
    })
    .get_file_uris()
    .unwrap()
    .count()
}
