//! Helpers for the end-to-end tests: run the real `chatlake` binary in a scratch directory and
//! read the lake it leaves behind with the same libraries a user's tools would use.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

pub const BIN: &str = env!("CARGO_BIN_EXE_chatlake");

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A scratch working directory; relative lake paths in pipeline files land in it.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a pipeline file into the scratch directory.
    pub fn pipeline(&self, name: &str, body: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, body).expect("write pipeline");
        p
    }

    /// Runs `chatlake ARGS` in the scratch directory with a clean CHATLAKE__ environment.
    pub fn run(&self, args: &[&str]) -> Outcome {
        self.run_env(args, &[])
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Outcome {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1");
        for (k, _) in std::env::vars() {
            if k.starts_with("CHATLAKE__") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        Outcome(cmd.output().expect("run chatlake"))
    }
}

pub struct Outcome(pub Output);

impl Outcome {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    /// Asserts the exit code, showing both streams when it differs.
    pub fn expect_code(self, code: i32) -> Self {
        assert_eq!(
            self.code(),
            code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }
}

/// Every file under `dir` whose name ends in `suffix`, sorted.
pub fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Hive partition values from a file's path (`k=v` directories).
pub fn partitions(path: &Path) -> BTreeMap<String, String> {
    path.components()
        .filter_map(|c| c.as_os_str().to_str())
        .filter_map(|c| {
            c.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// One canonical row as read back from the lake.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Row {
    pub sent_at_us: i64,
    pub text: Option<String>,
    pub message_id: String,
    pub sender_id: Option<String>,
    pub sender_name: Option<String>,
    pub recipient: Option<String>,
    pub conversation_id: Option<String>,
    pub is_bot: bool,
    pub version: i64,
    pub partition: BTreeMap<String, String>,
}

fn str_col(b: &RecordBatch, name: &str, i: usize) -> Option<String> {
    let c = b.column_by_name(name)?;
    let c = c.as_string::<i32>();
    (!c.is_null(i)).then(|| c.value(i).to_string())
}

/// Reads every Parquet file under `dir`.
pub fn read_parquet(dir: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    for path in files(dir, ".parquet") {
        rows.extend(read_parquet_file(dir, &path));
    }
    rows.sort();
    rows
}

/// Reads one Parquet file below the lake root `dir` (its Hive directories are its partition).
pub fn read_parquet_file(dir: &Path, path: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    let part = partitions(path.strip_prefix(dir).expect("under dir"));
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).expect("open"))
        .expect("parquet")
        .build()
        .expect("reader");
    for batch in reader {
        let b = batch.expect("batch");
        for key in part.keys() {
            assert!(
                b.column_by_name(key).is_none(),
                "partition column {key} must not be in {path:?}"
            );
        }
        let sent = b.column_by_name("sent_at").expect("sent_at");
        assert_eq!(
            sent.data_type(),
            &arrow::datatypes::DataType::Timestamp(
                arrow::datatypes::TimeUnit::Microsecond,
                Some("UTC".into())
            )
        );
        let sent = sent.as_primitive::<TimestampMicrosecondType>();
        let bot = b
            .column_by_name("is_bot")
            .expect("is_bot")
            .as_boolean()
            .clone();
        let version = b
            .column_by_name("version")
            .expect("version")
            .as_primitive::<Int64Type>()
            .clone();
        for i in 0..b.num_rows() {
            rows.push(Row {
                sent_at_us: sent.value(i),
                text: str_col(&b, "text", i),
                message_id: str_col(&b, "message_id", i).expect("message_id"),
                sender_id: str_col(&b, "sender_id", i),
                sender_name: str_col(&b, "sender_name", i),
                recipient: str_col(&b, "recipient", i),
                conversation_id: str_col(&b, "conversation_id", i),
                is_bot: bot.value(i),
                version: version.value(i),
                partition: part.clone(),
            });
        }
    }
    rows
}

/// Reads every `.jsonl` or `.jsonl.gz` file under `dir` as JSON values.
pub fn read_jsonl(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for path in files(dir, ".jsonl")
        .into_iter()
        .chain(files(dir, ".jsonl.gz"))
    {
        let mut text = String::new();
        let f = File::open(&path).expect("open");
        if path.to_string_lossy().ends_with(".gz") {
            flate2::read::GzDecoder::new(f)
                .read_to_string(&mut text)
                .expect("gunzip");
        } else {
            std::io::BufReader::new(f)
                .read_to_string(&mut text)
                .expect("read");
        }
        for line in text.lines() {
            let mut v: serde_json::Value = serde_json::from_str(line).expect("json line");
            for (k, val) in partitions(path.strip_prefix(dir).expect("under dir")) {
                v[k] = serde_json::Value::String(val);
            }
            out.push(v);
        }
    }
    out
}

/// Unfinished files left in `dir` (there must be none after a run).
pub fn temp_files(dir: &Path) -> Vec<PathBuf> {
    files(dir, ".tmp")
}

/// Waits for `child` (a run), polling `ready` every `poll`; kills it with SIGKILL the moment
/// `ready` first holds, or lets it finish. Returns whether it was killed. Fails the test if the
/// run is still going after two minutes.
pub fn kill_when(
    mut child: std::process::Child,
    poll: std::time::Duration,
    mut ready: impl FnMut() -> bool,
) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if ready() {
            let killed = child.kill().is_ok();
            let _ = child.wait();
            return killed;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run did not finish"
        );
        std::thread::sleep(poll);
    }
}
