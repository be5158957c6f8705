//! Runtime and graph tests with small in-memory stages, driven through real pipeline files.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::config::{InvalidConfig, PipelineFile};
use crate::graph::{BuildOptions, Pipeline};
use crate::metrics::RunStatus;
use crate::runtime::Run;
use crate::stage::*;
use crate::{Batch, Event, Registry, Result, Window, WindowRef};

/// (event, window index, rows)
type Seen = Vec<(String, u32, usize)>;
/// (batches sent, batches received)
type Flight = (Arc<AtomicI64>, Arc<AtomicI64>);

/// What each test sink saw, by sink id: ("batch", window, rows) / ("commit", window, 0) / ("abort", ..).
static SEEN: LazyLock<Mutex<HashMap<String, Seen>>> = LazyLock::new(Default::default);
/// Batches sent minus batches received, per test, to observe backpressure.
static IN_FLIGHT: LazyLock<Mutex<HashMap<String, Flight>>> = LazyLock::new(Default::default);

fn record(id: &str, what: &str, w: u32, rows: usize) {
    SEEN.lock()
        .unwrap()
        .entry(id.into())
        .or_default()
        .push((what.into(), w, rows));
}

fn seen(id: &str) -> Vec<(String, u32, usize)> {
    SEEN.lock().unwrap().get(id).cloned().unwrap_or_default()
}

fn flight(id: &str) -> Flight {
    IN_FLIGHT
        .lock()
        .unwrap()
        .entry(id.into())
        .or_default()
        .clone()
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct TestSourceConfig {
    windows: u32,
    batches: u32,
    #[serde(default)]
    fail_window: Option<u32>,
    /// Save a checkpoint for this window, then stop the source with an error.
    #[serde(default)]
    stop_in_window: Option<u32>,
    #[serde(default)]
    id: String,
    /// It can keep its records whole (`Source::keep_raw_records`); asked, it records "whole".
    #[serde(default)]
    can_keep_whole: bool,
}

struct TestSource {
    c: TestSourceConfig,
    name: String,
}

impl SourceConfig for TestSourceConfig {
    const TYPE: &'static str = "test_source";
    const SUMMARY: &'static str = "test";
    fn build(self, cx: &BuildContext) -> Result<Box<dyn Source>, InvalidConfig> {
        if self.windows == 0 {
            return Err(InvalidConfig::new("windows", "must be positive"));
        }
        Ok(Box::new(TestSource {
            c: self,
            name: cx.name.clone(),
        }))
    }
}

fn rows(n: usize) -> RecordBatch {
    let schema = Arc::new(Schema::new_with_metadata(
        vec![Field::new("n", DataType::Int64, false)],
        [(
            crate::schema::RECORD_TYPE_KEY.to_string(),
            "test.raw".to_string(),
        )]
        .into(),
    ));
    RecordBatch::try_new(
        schema,
        vec![Arc::new(Int64Array::from_iter_values(0..n as i64))],
    )
    .unwrap()
}

#[async_trait]
impl Source for TestSource {
    fn output_kind(&self) -> DataKind {
        DataKind::raw("test.raw")
    }
    fn plan(&self) -> Result<Vec<PlannedWindow>> {
        Ok(vec![])
    }
    fn keep_raw_records(&mut self) -> std::result::Result<(), String> {
        if !self.c.can_keep_whole {
            return Err("test sources cannot".into());
        }
        record(&self.c.id, "whole", 0, 0);
        Ok(())
    }
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<()> {
        let (sent, _) = flight(&self.c.id);
        for w in 0..self.c.windows {
            let window: WindowRef = Arc::new(Window {
                source: self.name.clone(),
                stream: "t".into(),
                index: w,
                start: None,
                end: None,
                utc_offset: chrono::FixedOffset::east_opt(0).unwrap(),
                label: format!("w{w}"),
                key_name: None,
            });
            cx.out
                .save_checkpoint(&window, serde_json::json!({"note": w}))
                .await?;
            if self.c.stop_in_window == Some(w) {
                return Err(crate::Error::component(&self.name, "stopped"));
            }
            for _ in 0..self.c.batches {
                cx.out.send(Batch::new(window.clone(), rows(10))).await?;
                sent.fetch_add(1, Ordering::SeqCst);
            }
            if self.c.fail_window == Some(w) {
                cx.out.window_failed(window, &"boom").await?;
            } else {
                cx.out.window_done(window).await?;
            }
        }
        Ok(())
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PassConfig {
    #[serde(default)]
    canonical_only: bool,
    /// Wants the records whole, as `normalize` with `raw = true`.
    #[serde(default)]
    wants_whole: bool,
}

struct Pass {
    canonical_only: bool,
    wants_whole: bool,
}

impl TransformConfig for PassConfig {
    const TYPE: &'static str = "pass";
    const SUMMARY: &'static str = "test";
    fn build(self, _: &BuildContext) -> Result<Box<dyn Transform>, InvalidConfig> {
        Ok(Box::new(Pass {
            canonical_only: self.canonical_only,
            wants_whole: self.wants_whole,
        }))
    }
}

impl Transform for Pass {
    fn output_kind(&self, input: &DataKind) -> Result<DataKind, String> {
        if self.canonical_only && !input.is_canonical() {
            return Err(format!("needs canonical messages, but gets {input}"));
        }
        Ok(input.clone())
    }
    fn transform(&mut self, batch: Batch, out: &mut Emitter, _: &TransformContext) -> Result<()> {
        out.push(batch);
        Ok(())
    }
    fn wants_raw_records(&self) -> bool {
        self.wants_whole
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct MemSinkConfig {
    id: String,
    #[serde(default)]
    delay_ms: u64,
    /// Its commit of this window fails (the sink stops).
    #[serde(default)]
    fail_commit: Option<u32>,
    /// Commits in two steps (`begin_commit`), the rest taking this long.
    #[serde(default)]
    rest_ms: u64,
    /// The rest of its commit of this window fails.
    #[serde(default)]
    fail_rest: Option<u32>,
}

struct MemSink {
    id: String,
    delay_ms: u64,
    fail_commit: Option<u32>,
    rest_ms: u64,
    fail_rest: Option<u32>,
}

/// Whether the ledger lists window `w` as committed right now.
fn listed(cx_dir: &std::path::Path, w: &WindowRef) -> Result<bool> {
    let ledger = crate::state::StateStore::new(cx_dir).load(&w.source)?;
    Ok(ledger
        .windows
        .values()
        .any(|l| l.label == w.label && l.status == crate::state::WindowStatus::Committed))
}

impl SinkConfig for MemSinkConfig {
    const TYPE: &'static str = "mem";
    const SUMMARY: &'static str = "test";
    fn build(self, _: &BuildContext) -> Result<Box<dyn Sink>, InvalidConfig> {
        Ok(Box::new(MemSink {
            id: self.id,
            delay_ms: self.delay_ms,
            fail_commit: self.fail_commit,
            rest_ms: self.rest_ms,
            fail_rest: self.fail_rest,
        }))
    }
}

#[async_trait]
impl Sink for MemSink {
    async fn write(&mut self, batch: Batch, _: &SinkContext) -> Result<()> {
        if self.delay_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(self.delay_ms)).await;
        }
        let (sent, received) = flight(&self.id);
        let r = received.fetch_add(1, Ordering::SeqCst) + 1;
        record(
            &self.id,
            "ahead",
            0,
            (sent.load(Ordering::SeqCst) - r).max(0) as usize,
        );
        record(&self.id, "batch", batch.window.index, batch.num_rows());
        Ok(())
    }
    async fn commit(&mut self, w: &WindowRef, _: &SinkContext) -> Result<()> {
        if self.fail_commit == Some(w.index) {
            return Err(crate::Error::component(&self.id, "commit refused"));
        }
        record(&self.id, "commit", w.index, 0);
        Ok(())
    }
    /// With `rest_ms`: records ("rest begins", window, 1 if listed) at once and ("rest ends",
    /// window, 1 if listed) when the rest is over.
    async fn begin_commit(
        &mut self,
        w: &WindowRef,
        cx: &SinkContext,
    ) -> Result<Option<CommitRest>> {
        if self.rest_ms == 0 {
            return self.commit(w, cx).await.map(|()| None);
        }
        let (id, w, dir) = (self.id.clone(), w.clone(), cx.owner.dir.clone());
        let (rest_ms, fails) = (self.rest_ms, self.fail_rest == Some(w.index));
        record(&id, "rest begins", w.index, listed(&dir, &w)? as usize);
        Ok(Some(Box::pin(async move {
            tokio::time::sleep(std::time::Duration::from_millis(rest_ms)).await;
            if fails {
                return Err(crate::Error::component(&id, "upload refused"));
            }
            record(&id, "rest ends", w.index, listed(&dir, &w)? as usize);
            Ok(())
        })))
    }
    /// Records ("publish", window, 1 if the ledger listed it as committed at that moment).
    async fn publish(&mut self, w: &WindowRef, cx: &SinkContext) -> Result<()> {
        let listed = listed(&cx.owner.dir, w)?;
        record(&self.id, "publish", w.index, listed as usize);
        Ok(())
    }
    async fn finish(&mut self, _: &SinkContext) -> Result<()> {
        record(&self.id, "finish", 0, 0);
        Ok(())
    }
    async fn abort(&mut self, w: &WindowRef, _: &SinkContext) -> Result<()> {
        record(&self.id, "abort", w.index, 0);
        Ok(())
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register_source::<TestSourceConfig>();
    r.register_transform::<PassConfig>();
    r.register_sink::<MemSinkConfig>();
    r
}

fn file(body: &str) -> std::path::PathBuf {
    let dir = crate::config::tests::tempdir();
    let p = dir.join("pipeline.toml");
    let state = dir.join("state");
    std::fs::write(
        &p,
        format!(
            "[pipeline]\nname = \"t\"\nstate_dir = {:?}\n{body}",
            state.to_str().unwrap()
        ),
    )
    .unwrap();
    p
}

fn build(body: &str) -> Result<Pipeline, crate::config::ConfigErrors> {
    let path = file(body);
    Pipeline::build(
        PipelineFile::load(&path)?,
        &registry(),
        &BuildOptions::default(),
    )
}

async fn run(body: &str) -> crate::metrics::RunSummary {
    let p = build(body).unwrap_or_else(|e| panic!("{e}"));
    Run::new(p, "run1".into()).execute().await
}

fn events(id: &str) -> Vec<(String, u32, usize)> {
    seen(id).into_iter().filter(|e| e.0 != "ahead").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_gives_every_consumer_every_batch_and_commits_each_window_after_its_rows() {
    let s = run(r#"
[sources.a]
type = "test_source"
windows = 3
batches = 4
[transforms.t]
type = "pass"
inputs = ["a"]
[sinks.x]
type = "mem"
id = "fanout-x"
inputs = ["t"]
[sinks.y]
type = "mem"
id = "fanout-y"
inputs = ["a"]
"#)
    .await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    for id in ["fanout-x", "fanout-y"] {
        let ev = events(id);
        assert_eq!(ev.iter().filter(|e| e.0 == "batch").count(), 12, "{id}");
        for w in 0..3 {
            let commit = ev
                .iter()
                .position(|e| e.0 == "commit" && e.1 == w)
                .expect("committed");
            let last_batch = ev.iter().rposition(|e| e.0 == "batch" && e.1 == w).unwrap();
            assert!(
                last_batch < commit,
                "{id}: window {w} committed before its last batch"
            );
        }
    }
    let sink = s.components.iter().find(|c| c.name == "x").unwrap();
    assert_eq!(sink.records_in, 120);
    assert_eq!(sink.windows_done, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diamond_commits_each_window_once_after_both_paths() {
    let s = run(r#"
[sources.a]
type = "test_source"
windows = 5
batches = 3
[sources.b]
type = "test_source"
windows = 2
batches = 1
[transforms.left]
type = "pass"
inputs = ["a"]
[transforms.right]
type = "pass"
inputs = ["a", "b"]
[sinks.x]
type = "mem"
id = "diamond"
inputs = ["left", "right"]
"#)
    .await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    let ev = events("diamond");
    // a's rows arrive twice (two paths), b's once: fan-in loses nothing.
    assert_eq!(
        ev.iter()
            .filter(|e| e.0 == "batch")
            .map(|e| e.2)
            .sum::<usize>(),
        (5 * 3 * 2 + 2) * 10
    );
    // One commit per window of each source: 5 + 2, never one per path.
    assert_eq!(ev.iter().filter(|e| e.0 == "commit").count(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_window_is_aborted_and_fails_the_run_while_others_commit() {
    let s = run(r#"
[sources.a]
type = "test_source"
windows = 3
batches = 2
fail_window = 1
[sinks.x]
type = "mem"
id = "failing"
inputs = ["a"]
"#)
    .await;
    assert_eq!(s.status, RunStatus::Failed);
    assert_eq!(s.status.exit_code(), 1);
    let ev = events("failing");
    assert!(ev.contains(&("abort".into(), 1, 0)));
    assert!(ev.contains(&("commit".into(), 0, 0)) && ev.contains(&("commit".into(), 2, 0)));
    assert!(!ev.contains(&("commit".into(), 1, 0)));
    assert!(s.components[0].failures[0].contains("boom"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_holds_the_source_back() {
    let s = run(r#"
[sources.a]
type = "test_source"
windows = 1
batches = 60
id = "slow"
[transforms.t]
type = "pass"
inputs = ["a"]
[sinks.x]
type = "mem"
id = "slow"
delay_ms = 5
inputs = ["t"]
"#)
    .await;
    assert_eq!(s.status, RunStatus::Succeeded);
    let max_ahead = seen("slow")
        .iter()
        .filter(|e| e.0 == "ahead")
        .map(|e| e.2)
        .max()
        .unwrap();
    // Two edges of CHANNEL_CAPACITY, plus one batch in each stage's hands.
    assert!(
        max_ahead <= 2 * super::CHANNEL_CAPACITY + 3,
        "source ran {max_ahead} batches ahead"
    );
}

#[test]
fn every_graph_error_is_reported_at_once_with_file_and_key() {
    let errors = build(
        r#"
[sources.a]
type = "test_source"
windows = 0
batches = 1
[sources.unused]
type = "test_source"
windows = 1
batches = 1
[sources.c]
type = "test_sourse"
[transforms.t1]
type = "pass"
inputs = ["t2"]
[transforms.t2]
type = "pass"
inputs = ["t1"]
[sinks.x]
type = "mem"
id = "e"
colour = "red"
inputs = ["a", "nope", "t1"]
"#,
    )
    .err()
    .expect("invalid");
    let text = errors.to_string();
    for want in [
        "pipeline.toml: sources.a.windows: must be positive",
        "sources.unused: `unused` is not used",
        "sources.c.type: unknown source type `test_sourse`, expected one of test_source",
        "sinks.x.colour: unknown field `colour`",
        "sinks.x.inputs[1]: unknown component `nope`",
        "the inputs form a cycle through t1, t2",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(
        text.lines().any(|l| l.ends_with("cycle through t1, t2")),
        "the sink below the cycle is not part of it:\n{text}"
    );
}

/// A transform that wants records whole gets them from every source above it, through other
/// transforms, and only from those; a source that cannot is a config error naming both.
#[test]
fn sources_above_a_transform_that_wants_records_whole_are_asked_for_them() {
    let p = build(
        r#"
[sources.a]
type = "test_source"
windows = 1
batches = 1
id = "whole-a"
can_keep_whole = true
[sources.b]
type = "test_source"
windows = 1
batches = 1
id = "whole-b"
can_keep_whole = true
[transforms.between]
type = "pass"
inputs = ["a"]
[transforms.wants]
type = "pass"
wants_whole = true
inputs = ["between"]
[sinks.x]
type = "mem"
id = "whole-x"
inputs = ["wants", "b"]
"#,
    );
    assert!(
        p.is_ok(),
        "{}",
        p.err().map(|e| e.to_string()).unwrap_or_default()
    );
    assert_eq!(seen("whole-a"), [("whole".to_string(), 0, 0)]);
    assert!(
        seen("whole-b").is_empty(),
        "b feeds only the sink: not asked"
    );

    let errors = build(
        r#"
[sources.a]
type = "test_source"
windows = 1
batches = 1
[transforms.wants]
type = "pass"
wants_whole = true
inputs = ["a"]
[sinks.x]
type = "mem"
id = "whole-y"
inputs = ["wants"]
"#,
    )
    .err()
    .expect("the source cannot");
    assert!(
        errors.to_string().contains(
            "sources.a: `wants` wants the provider's records whole (`raw = true`), but test sources cannot"
        ),
        "{errors}"
    );
}

#[test]
fn record_types_must_fit() {
    let errors = build(
        r#"
[sources.a]
type = "test_source"
windows = 1
batches = 1
[transforms.t]
type = "pass"
canonical_only = true
inputs = ["a"]
[sinks.x]
type = "mem"
id = "k"
inputs = ["t"]
"#,
    )
    .err()
    .expect("mismatch");
    assert!(
        errors.to_string().contains(
            "transforms.t.inputs: needs canonical messages, but gets raw `test.raw` records"
        ),
        "{errors}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_records_windows_after_their_commit_and_keeps_open_checkpoints() {
    let p = build(
        r#"
[sources.a]
type = "test_source"
windows = 4
batches = 1
fail_window = 1
stop_in_window = 3
[sinks.x]
type = "mem"
id = "ledger-x"
inputs = ["a"]
[sinks.y]
type = "mem"
id = "ledger-y"
inputs = ["a"]
"#,
    )
    .unwrap();
    let store = p.state();
    let s = Run::new(p, "run1".into()).execute().await;
    assert_eq!(s.status, RunStatus::Failed);
    let ledger = store.load("a").unwrap();
    let status: Vec<(u32, crate::state::WindowStatus)> = ledger
        .windows
        .values()
        .map(|w| (w.label[1..].parse().unwrap(), w.status))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    use crate::state::WindowStatus::{Committed, Failed};
    assert_eq!(status, vec![(0, Committed), (1, Failed), (2, Committed)]);
    // Window 3 never ended: its checkpoint is still there for the next run; the others' are gone.
    assert_eq!(ledger.checkpoints.len(), 1);
    assert_eq!(ledger.checkpoints.values().next().unwrap()["note"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_publish_each_window_after_the_ledger_lists_it_and_never_a_dropped_one() {
    // x and y both get every window; window 1 fails at the source (both abort it); y's commit
    // of window 3 fails, so x's commit of it never reaches the ledger. The writes are slowed so
    // that the ledger lists window 0 long before the last window arrives.
    let s = run(r#"
[sources.a]
type = "test_source"
windows = 6
batches = 3
fail_window = 1
[sinks.x]
type = "mem"
id = "publish-x"
delay_ms = 30
inputs = ["a"]
[sinks.y]
type = "mem"
id = "publish-y"
fail_commit = 3
inputs = ["a"]
"#)
    .await;
    assert_eq!(s.status, RunStatus::Failed);
    let ev = events("publish-x");
    let at = |what: &str, w: u32| ev.iter().position(|e| e.0 == what && e.1 == w);
    let published: Vec<u32> = ev
        .iter()
        .filter(|e| e.0 == "publish")
        .map(|e| e.1)
        .collect();
    assert_eq!(published, vec![0, 2], "{ev:?}");
    for e in ev.iter().filter(|e| e.0 == "publish") {
        assert_eq!(
            e.2, 1,
            "window {} published before the ledger listed it",
            e.1
        );
        assert!(at("commit", e.1).unwrap() < at("publish", e.1).unwrap());
    }
    // Aborted (1) and committed by x but never listed (3): never published.
    assert!(at("abort", 1).is_some() && at("publish", 1).is_none());
    assert!(at("commit", 3).is_some() && at("publish", 3).is_none());
    // Published soon after its commit, not at the end of the run.
    assert!(
        at("publish", 0).unwrap() < at("commit", 3).unwrap(),
        "{ev:?}"
    );
    // `finish` comes after every publish.
    assert_eq!(ev.last().unwrap().0, "finish", "{ev:?}");
    // The failed sink publishes the window the ledger listed before its failure.
    let ev = events("publish-y");
    assert!(ev.contains(&("publish".into(), 0, 1)), "{ev:?}");
    assert!(!ev.iter().any(|e| e.0 == "finish"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_of_a_commit_overlaps_the_next_windows_and_the_ledger_waits_for_it() {
    let s = run(r#"
[sources.a]
type = "test_source"
windows = 3
batches = 3
[sinks.x]
type = "mem"
id = "rest-x"
rest_ms = 150
inputs = ["a"]
"#)
    .await;
    assert_eq!(s.status, RunStatus::Succeeded);
    let ev = events("rest-x");
    let at = |what: &str, w: u32| {
        ev.iter()
            .position(|e| e.0 == what && e.1 == w)
            .unwrap_or_else(|| panic!("no {what} of window {w}: {ev:?}"))
    };
    for w in 0..3 {
        // Not listed while the rest runs; listed when it is published, after the rest.
        assert_eq!(ev[at("rest begins", w)].2, 0, "{ev:?}");
        assert_eq!(ev[at("rest ends", w)].2, 0, "{ev:?}");
        assert!(at("rest ends", w) < at("publish", w), "{ev:?}");
        assert_eq!(ev[at("publish", w)].2, 1, "{ev:?}");
    }
    // The sink wrote window 1 while window 0's rest was still going on.
    let first_of_1 = at("batch", 1);
    assert!(
        at("rest begins", 0) < first_of_1 && first_of_1 < at("rest ends", 0),
        "{ev:?}"
    );
    assert_eq!(ev.last().unwrap().0, "finish", "{ev:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rest_of_a_commit_fails_the_run_and_its_window_is_never_listed() {
    let p = build(
        r#"
[sources.a]
type = "test_source"
windows = 3
batches = 2
[sinks.x]
type = "mem"
id = "rest-fail-x"
rest_ms = 50
fail_rest = 1
inputs = ["a"]
"#,
    )
    .unwrap();
    let store = p.state();
    let s = Run::new(p, "run1".into()).execute().await;
    assert_eq!(s.status, RunStatus::Failed);
    let ledger = store.load("a").unwrap();
    let committed: Vec<&str> = ledger
        .windows
        .values()
        .filter(|l| l.status == crate::state::WindowStatus::Committed)
        .map(|l| l.label.as_str())
        .collect();
    assert!(committed.contains(&"w0"), "{committed:?}");
    assert!(!committed.contains(&"w1"), "{committed:?}");
    let ev = events("rest-fail-x");
    assert!(!ev.iter().any(|e| e.0 == "publish" && e.1 == 1), "{ev:?}");
    assert!(!ev.iter().any(|e| e.0 == "finish"), "{ev:?}");
}

/// Records (instance, event, window) for `replicated_windows_stay_whole_and_in_order`.
struct Tag {
    instance: usize,
    log: Arc<Mutex<Vec<(usize, String, u32)>>>,
}

impl Transform for Tag {
    fn output_kind(&self, input: &DataKind) -> Result<DataKind, String> {
        Ok(input.clone())
    }
    fn transform(&mut self, batch: Batch, out: &mut Emitter, _: &TransformContext) -> Result<()> {
        let n = batch
            .data
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0);
        self.log
            .lock()
            .unwrap()
            .push((self.instance, format!("batch{n}"), batch.window.index));
        out.push(batch);
        Ok(())
    }
    fn window_done(&mut self, w: &WindowRef, _: &mut Emitter, _: &TransformContext) -> Result<()> {
        self.log
            .lock()
            .unwrap()
            .push((self.instance, "done".into(), w.index));
        Ok(())
    }
}

#[tokio::test]
async fn replicated_windows_stay_whole_and_in_order() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let tag = |instance| -> Box<dyn Transform> {
        Box::new(Tag {
            instance,
            log: log.clone(),
        })
    };
    let window = |index: u32| -> WindowRef {
        Arc::new(Window {
            source: "s".into(),
            stream: "t".into(),
            index,
            start: None,
            end: None,
            utc_offset: chrono::FixedOffset::east_opt(0).unwrap(),
            label: format!("w{index}"),
            key_name: None,
        })
    };
    let numbered = |n: i64| {
        RecordBatch::try_new(
            rows(1).schema(),
            vec![Arc::new(Int64Array::from_iter_values([n]))],
        )
        .unwrap()
    };
    let (in_tx, in_rx) = tokio::sync::mpsc::channel(64);
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel(64);
    // Two windows open at once (as from a source reading two files), then a third.
    let events = [(0, 0), (1, 1), (0, 2), (1, 3), (0, 4)];
    for (w, n) in events {
        in_tx
            .send(Event::Batch(Batch::new(window(w), numbered(n))))
            .await
            .unwrap();
    }
    in_tx.send(Event::WindowDone(window(1))).await.unwrap();
    in_tx.send(Event::WindowDone(window(0))).await.unwrap();
    in_tx
        .send(Event::Batch(Batch::new(window(2), numbered(5))))
        .await
        .unwrap();
    in_tx.send(Event::WindowDone(window(2))).await.unwrap();
    drop(in_tx);
    let cx = TransformContext {
        name: "tag".into(),
        metrics: Arc::default(),
        dead_letters: crate::dead_letter::DeadLetters::in_dir(&crate::config::tests::tempdir()),
        run: Arc::new(RunInfo {
            pipeline: "p".into(),
            run_id: "r".into(),
            started_at: chrono::Utc::now(),
        }),
    };
    super::run_replicated(
        tag(0),
        vec![tag(1)],
        in_rx,
        Output::for_test("tag", out_tx),
        super::MarkerMerge::new(HashMap::new()),
        cx,
    )
    .await
    .unwrap();

    let log = log.lock().unwrap().clone();
    let instance_of = |w: u32| -> Vec<usize> {
        let mut i: Vec<usize> = log.iter().filter(|e| e.2 == w).map(|e| e.0).collect();
        i.dedup();
        i
    };
    assert_eq!(instance_of(0).len(), 1, "window 0 on one instance: {log:?}");
    assert_eq!(instance_of(1).len(), 1, "window 1 on one instance: {log:?}");
    assert_ne!(
        instance_of(0),
        instance_of(1),
        "open windows run side by side: {log:?}"
    );
    let order = |w: u32| -> Vec<String> {
        log.iter()
            .filter(|e| e.2 == w)
            .map(|e| e.1.clone())
            .collect()
    };
    assert_eq!(order(0), ["batch0", "batch2", "batch4", "done"]);
    assert_eq!(order(1), ["batch1", "batch3", "done"]);
    assert_eq!(order(2), ["batch5", "done"]);

    // Downstream gets every batch, and each window's marker after its batches.
    let mut seen: Vec<(String, u32)> = Vec::new();
    while let Some(event) = out_rx.recv().await {
        seen.push(match event {
            Event::Batch(b) => ("batch".into(), b.window.index),
            Event::WindowDone(w) => ("done".into(), w.index),
            Event::WindowFailed(w) => ("failed".into(), w.index),
        });
    }
    for w in 0..3 {
        let mine: Vec<&str> = seen
            .iter()
            .filter(|e| e.1 == w)
            .map(|e| e.0.as_str())
            .collect();
        let batches = events.iter().filter(|e| e.0 == w).count() + usize::from(w == 2);
        let mut expected = vec!["batch"; batches];
        expected.push("done");
        assert_eq!(mine, expected, "window {w}");
    }
}

#[test]
fn sources_fetch_on_every_core_while_rows_are_held_below_them() {
    let all = super::cores().clamp(1, super::MAX_REPLICAS);
    assert_eq!(super::fetch_windows_at_once(true), all);
    assert_eq!(
        super::fetch_windows_at_once(false),
        super::windows_at_once()
    );
    assert!(super::fetch_windows_at_once(false) <= super::fetch_windows_at_once(true));
}

#[test]
fn the_topology_counts_paths_sinks_and_removal_targets() {
    let p = build(
        r#"
[sources.a]
type = "test_source"
windows = 1
batches = 1
[sources.b]
type = "test_source"
windows = 1
batches = 1
[transforms.left]
type = "pass"
inputs = ["a"]
[transforms.right]
type = "pass"
inputs = ["a", "b"]
[sinks.x]
type = "mem"
id = "topology-x"
inputs = ["left", "right"]
[sinks.y]
type = "mem"
id = "topology-y"
inputs = ["a"]
"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let topology = crate::graph::Topology::of(&p);
    let counts = |pairs: &[(&str, usize)]| -> HashMap<String, usize> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    // a's markers reach x along both paths, b's along one.
    assert_eq!(
        topology.expected_markers(&["left".into(), "right".into()]),
        counts(&[("a", 2), ("b", 1)])
    );
    // An input listed twice is one path.
    assert_eq!(
        topology.expected_markers(&["a".into(), "a".into()]),
        counts(&[("a", 1)])
    );
    assert_eq!(topology.sinks_per_source, counts(&[("a", 2), ("b", 1)]));
    assert_eq!(topology.removal_targets["left"], vec!["x".to_string()]);
    assert_eq!(topology.removal_targets["right"], vec!["x".to_string()]);
    assert!(topology.rows_held_below.is_empty());
}
