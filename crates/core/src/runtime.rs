//! Runs a checked [`Pipeline`]: one task per stage, bounded channels between them.
//!
//! * Backpressure: every edge is a bounded channel, and a producer waits on each of its
//!   consumers in turn, so the slowest consumer sets the pace and memory stays bounded.
//! * Fan-out: every consumer of a stage gets every event. Fan-in: a stage with several inputs
//!   reads one channel that all of them feed.
//! * Window markers: a stage that can receive a window along several paths (a diamond) acts on
//!   its marker only once the marker has arrived along every path, so a sink never commits a
//!   window before all of its rows are in. A window that failed on any path counts as failed.
//! * A sink commits a window when its marker arrives; windows still open when input ends (a stage
//!   upstream failed) are aborted, never committed.
//! * Once the ledger lists a window (every sink committed it), each sink publishes it
//!   ([`Sink::publish`]), between its writes, and before it finishes: a sink that stages its
//!   commits (object storage) makes them visible only then.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use indexmap::IndexMap;
use tokio::sync::mpsc;

use crate::config::Role;
use crate::dead_letter::DeadLetters;
use crate::durable::write_atomic;
use crate::event::{Event, WindowRef};
use crate::graph::{Pipeline, Stage, Topology};
use crate::metrics::{ComponentMetrics, RunStatus, RunSummary};
use crate::removal::RemovalLog;
use crate::stage::{
    Emitter, Output, RunInfo, Sink, SinkContext, SourceContext, StateOwner, Transform,
    TransformContext,
};
use crate::state::{LedgerEvent, StateStore, WindowStatus};
use crate::{Error, Result};

/// Events buffered per edge. Batches are ~8k rows (1–3 MB), and a full pipeline holds this many
/// on every edge: 8 kept ~100 MB more resident at 5M rows than 4 for no measurable speed (issue
/// 6), and 2 keeps 20–40 MB less than 4, again at the same speed on all three reference jobs
/// (issue 19, BENCHMARKS.md).
pub const CHANNEL_CAPACITY: usize = 2;

/// A pipeline about to run; its counters can be watched (progress) while it runs.
pub struct Run {
    pipeline: Pipeline,
    info: Arc<RunInfo>,
    metrics: IndexMap<String, (Role, String, Arc<ComponentMetrics>)>,
    dead_letters: DeadLetters,
}

impl Run {
    pub fn new(pipeline: Pipeline, run_id: String) -> Run {
        let info = Arc::new(RunInfo {
            pipeline: pipeline.name().to_string(),
            run_id: run_id.clone(),
            started_at: Utc::now(),
        });
        let metrics = pipeline
            .nodes
            .iter()
            .map(|n| {
                (
                    n.spec.name.clone(),
                    (n.spec.role, n.spec.type_name.clone(), Arc::default()),
                )
            })
            .collect();
        let dead_letters = DeadLetters::new(
            pipeline
                .pipeline_state_dir()
                .join("dead_letters")
                .join(format!("{run_id}.{}", crate::dead_letter::EXTENSION)),
        );
        Run {
            pipeline,
            info,
            metrics,
            dead_letters,
        }
    }

    pub fn info(&self) -> &RunInfo {
        &self.info
    }

    /// How many windows the sources will fetch, if their plans know it before the run (see
    /// [`crate::stage::Source::plan_is_complete`]); for a progress bar.
    pub fn planned_windows(&self) -> Option<u64> {
        let mut total = 0u64;
        for node in &self.pipeline.nodes {
            if let Stage::Source(source) = &node.stage {
                if !source.plan_is_complete() {
                    return None;
                }
                total += source.plan().ok()?.len() as u64;
            }
        }
        Some(total)
    }

    /// Live counters per component, in pipeline order.
    pub fn metrics(&self) -> Vec<(String, Role, Arc<ComponentMetrics>)> {
        self.metrics
            .iter()
            .map(|(n, (r, _, m))| (n.clone(), *r, m.clone()))
            .collect()
    }

    /// Runs to the end and returns the summary (also saved under the state directory).
    pub async fn execute(self) -> RunSummary {
        let Run {
            pipeline,
            info,
            metrics,
            dead_letters,
        } = self;
        let state_dir = pipeline.pipeline_state_dir();
        let started = Instant::now();
        let store = pipeline.state();
        // What the lake may hold: sinks delete files of any other window when they start. A
        // ledger that cannot be read must stop the run before a sink deletes anything.
        let lake = match store.lake_keys() {
            Ok(keys) => keys,
            Err(e) => return failed_before_start(&info, &metrics, started, &state_dir, e),
        };
        let committed = Arc::new(lake.all());
        // Committed windows the sources load again in this run (a changed input file). Their
        // files stay until the new load commits, as those of windows reset for reloading do:
        // transforms learn of them before any input, and sinks replace all of their earlier
        // files when they commit (also files the new commit does not overwrite).
        let loaded_again = Arc::new(windows_loaded_again(&pipeline, &lake.committed));
        let reloading = Arc::new(
            lake.reloading
                .union(&loaded_again)
                .cloned()
                .collect::<HashSet<String>>(),
        );
        // A worker of a sharded run removes leftovers of its own windows only (see
        // `SinkContext::leftovers_only_of`).
        let sharded = store.shard().is_some();
        let leftovers_only_of = if sharded {
            match store.started_unfinished() {
                Ok(keys) => Some(Arc::new(keys)),
                Err(e) => return failed_before_start(&info, &metrics, started, &state_dir, e),
            }
        } else {
            None
        };
        let owner = match store.identity() {
            Ok(id) => Arc::new(StateOwner {
                id,
                dir: state_dir.clone(),
            }),
            Err(e) => return failed_before_start(&info, &metrics, started, &state_dir, e),
        };

        let topology = Topology::of(&pipeline);
        let removal_targets = &topology.removal_targets;

        // One channel per consumer; producers hold a sender to each of their consumers.
        let mut receivers: HashMap<String, mpsc::Receiver<Event>> = HashMap::new();
        let mut senders_of: HashMap<String, Vec<mpsc::Sender<Event>>> = HashMap::new();
        for node in pipeline
            .nodes
            .iter()
            .filter(|n| n.spec.role != Role::Source)
        {
            let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
            receivers.insert(node.spec.name.clone(), rx);
            let mut distinct = HashSet::new();
            for input in node
                .spec
                .inputs
                .iter()
                .filter(|i| distinct.insert(i.as_str()))
            {
                senders_of
                    .entry(input.clone())
                    .or_default()
                    .push(tx.clone());
            }
        }

        let sink_cx = |name: &str| SinkContext {
            name: name.to_string(),
            metrics: metrics[name].2.clone(),
            dead_letters: dead_letters.clone(),
            run: info.clone(),
            committed: committed.clone(),
            reloading: reloading.clone(),
            owner: owner.clone(),
            leftovers_only_of: leftovers_only_of.clone(),
        };

        // Sinks start before anything runs: each clears what an interrupted run left, then the
        // removal logs earlier runs committed but did not finish applying are applied.
        let removals = RemovalLog::new(store.dir());
        let mut sinks: HashMap<String, Box<dyn Sink>> = HashMap::new();
        let mut nodes = Vec::new();
        for node in pipeline.nodes {
            match node.stage {
                Stage::Transform(mut t) => {
                    t.windows_loaded_again(&loaded_again);
                    nodes.push((node.spec, Some(Stage::Transform(t))));
                }
                Stage::Sink(mut sink) => {
                    let cx = sink_cx(&node.spec.name);
                    if let Err(e) = sink.start(&cx).await {
                        return failed_before_start(&info, &metrics, started, &state_dir, e);
                    }
                    sinks.insert(node.spec.name.clone(), sink);
                    nodes.push((node.spec, None));
                }
                stage => nodes.push((node.spec, Some(stage))),
            }
        }
        if let Err(e) =
            apply_removals(&removals, &store, removal_targets, &mut sinks, &sink_cx).await
        {
            return failed_before_start(&info, &metrics, started, &state_dir, e);
        }

        let (ledger_tx, ledger_rx) = mpsc::unbounded_channel();
        // Per sink: the ledger's word on each window it committed, for its publish.
        let mut recorded_txs = HashMap::new();
        let mut recorded_rxs = HashMap::new();
        for name in sinks.keys() {
            let (tx, rx) = mpsc::unbounded_channel();
            recorded_txs.insert(name.clone(), tx);
            recorded_rxs.insert(name.clone(), rx);
        }
        let coordinator = tokio::spawn(coordinate_commits(
            ledger_rx,
            recorded_txs,
            topology.sinks_per_source.clone(),
            store.clone(),
            info.run_id.clone(),
        ));

        let finished_sinks: Arc<std::sync::Mutex<HashMap<String, Box<dyn Sink>>>> = Arc::default();
        // Sinks that stopped on an error: they take no removals, but they drop the files of
        // windows the ledger does not list.
        let failed_sinks: Arc<std::sync::Mutex<HashMap<String, Box<dyn Sink>>>> = Arc::default();
        let mut tasks = Vec::new();
        for (spec, stage) in nodes {
            let name = spec.name.clone();
            let m = metrics[&name].2.clone();
            let expected = topology.expected_markers(&spec.inputs);
            let stage = match stage {
                Some(stage) => stage,
                None => Stage::Sink(sinks.remove(&name).expect("every sink was started")),
            };
            let task: tokio::task::JoinHandle<(f64, Result<()>)> = match stage {
                Stage::Source(source) => {
                    let mut out = Output::new(
                        name.clone(),
                        senders_of.remove(&name).unwrap_or_default(),
                        m.clone(),
                    )
                    .with_ledger(ledger_tx.clone());
                    if sharded {
                        out = out.recording_starts();
                    }
                    let cx = SourceContext {
                        name: name.clone(),
                        out,
                        metrics: m,
                        dead_letters: dead_letters.clone(),
                        run: info.clone(),
                        windows_at_once: fetch_windows_at_once(
                            topology.rows_held_below.contains(&name),
                        ),
                    };
                    tokio::spawn(timed(source.run(cx)))
                }
                Stage::Transform(t) => {
                    let rx = receivers
                        .remove(&name)
                        .expect("every consumer has a channel");
                    let out = Output::new(
                        name.clone(),
                        senders_of.remove(&name).unwrap_or_default(),
                        m.clone(),
                    );
                    let cx = TransformContext {
                        name,
                        metrics: m,
                        dead_letters: dead_letters.clone(),
                        run: info.clone(),
                    };
                    let merge = MarkerMerge::new(expected);
                    let copies = replicas(&*t);
                    if copies.is_empty() {
                        tokio::spawn(timed(run_transform(t, rx, out, merge, cx)))
                    } else {
                        tokio::spawn(timed(run_replicated(t, copies, rx, out, merge, cx)))
                    }
                }
                Stage::Sink(s) => {
                    let rx = receivers
                        .remove(&name)
                        .expect("every consumer has a channel");
                    let cx = sink_cx(&name);
                    let ledger = ledger_tx.clone();
                    let recorded = recorded_rxs
                        .remove(&name)
                        .expect("every sink has a ledger channel");
                    let finished = finished_sinks.clone();
                    let failed = failed_sinks.clone();
                    tokio::spawn(timed(async move {
                        let (sink, result) =
                            run_sink(s, rx, MarkerMerge::new(expected), cx, ledger, recorded).await;
                        let into = if result.is_ok() { finished } else { failed };
                        into.lock()
                            .expect("no task panics holding it")
                            .insert(name, sink);
                        result
                    }))
                }
            };
            tasks.push(task);
        }
        drop(senders_of);
        drop(ledger_tx);

        let mut seconds = Vec::new();
        let mut errors: Vec<Error> = Vec::new();
        for task in tasks {
            match task.await {
                Ok((secs, result)) => {
                    seconds.push(secs);
                    if let Err(e) = result {
                        errors.push(e);
                    }
                }
                Err(join) => {
                    seconds.push(started.elapsed().as_secs_f64());
                    errors.push(Error::component(
                        "runtime",
                        format!("a stage panicked: {join}"),
                    ));
                }
            }
        }
        let mut unlisted = HashSet::new();
        match coordinator.await {
            Ok(Ok(partial)) => unlisted = partial,
            Ok(Err(e)) => errors.push(e),
            Err(join) => errors.push(Error::component(
                "runtime",
                format!("the ledger task panicked: {join}"),
            )),
        }
        // After the run's last commit: rows its windows replaced leave the earlier files.
        let mut sinks =
            std::mem::take(&mut *finished_sinks.lock().expect("no task panics holding it"));
        if let Err(e) =
            apply_removals(&removals, &store, removal_targets, &mut sinks, &sink_cx).await
        {
            errors.push(e);
        }
        sinks.extend(std::mem::take(
            &mut *failed_sinks.lock().expect("no task panics holding it"),
        ));
        let windows_to_reload =
            match drop_unlisted_windows(&store, unlisted, &mut sinks, &sink_cx).await {
                Ok(n) => n,
                Err(e) => {
                    errors.push(e);
                    0
                }
            };
        if let Err(e) = dead_letters.flush() {
            errors.push(e);
        }
        // The root cause, not the stages that stopped because a neighbour did.
        let error = errors
            .iter()
            .find(|e| !matches!(e, Error::DownstreamClosed { .. }))
            .or(errors.first())
            .map(|e| e.to_string());
        if let Some(e) = &error {
            tracing::error!(error = %e, "run failed");
        }

        let components: Vec<_> = metrics
            .iter()
            .zip(seconds)
            .map(|((name, (role, type_name, m)), secs)| {
                m.summarize(name, &role.to_string(), type_name, secs)
            })
            .collect();
        let windows_failed: u64 = components.iter().map(|c| c.windows_failed).sum();
        let dead = dead_letters.count();
        let status = if error.is_some() || windows_failed > 0 {
            RunStatus::Failed
        } else if dead > 0 {
            RunStatus::DeadLettered
        } else {
            RunStatus::Succeeded
        };
        let summary = RunSummary {
            pipeline: info.pipeline.clone(),
            run_id: info.run_id.clone(),
            status,
            started_at: info.started_at,
            finished_at: Utc::now(),
            seconds: started.elapsed().as_secs_f64(),
            components,
            error,
            dead_letters: dead,
            dead_letter_file: dead_letters.path_if_written(),
            windows_to_reload,
        };
        if let Err(e) = save_summary(&summary, &state_dir) {
            tracing::warn!(error = %e, "could not save the run summary");
        }
        summary
    }
}

/// What is needed to sum up a run that is stopped from outside (SIGINT, SIGTERM) while
/// [`Run::execute`] is dropped mid-way: its identity and live counters.
pub struct RunProbe {
    info: Arc<RunInfo>,
    metrics: Vec<(String, Role, String, Arc<ComponentMetrics>)>,
    state_dir: std::path::PathBuf,
    started: Instant,
}

impl Run {
    /// A [`RunProbe`] of this run, taken before [`Run::execute`].
    pub fn probe(&self) -> RunProbe {
        RunProbe {
            info: self.info.clone(),
            metrics: self
                .metrics
                .iter()
                .map(|(n, (r, t, m))| (n.clone(), *r, t.clone(), m.clone()))
                .collect(),
            state_dir: self.pipeline.pipeline_state_dir(),
            started: Instant::now(),
        }
    }
}

impl RunProbe {
    /// The summary of the run stopped by `cause` (saved as any run's is): what was committed
    /// before the stop, with the status [`RunStatus::Interrupted`].
    pub fn interrupted(&self, cause: &str) -> RunSummary {
        let seconds = self.started.elapsed().as_secs_f64();
        let components = self
            .metrics
            .iter()
            .map(|(name, role, type_name, m)| {
                m.summarize(name, &role.to_string(), type_name, seconds)
            })
            .collect();
        let summary = RunSummary {
            pipeline: self.info.pipeline.clone(),
            run_id: self.info.run_id.clone(),
            status: RunStatus::Interrupted,
            started_at: self.info.started_at,
            finished_at: Utc::now(),
            seconds,
            components,
            error: Some(format!(
                "interrupted by {cause}: windows in flight were abandoned, as a crash leaves them; the next run fetches them again"
            )),
            dead_letters: 0,
            dead_letter_file: None,
            windows_to_reload: StateStore::new(&self.state_dir)
                .all()
                .map(|ledgers| {
                    ledgers
                        .values()
                        .flat_map(|l| l.windows.values())
                        .filter(|w| w.status == WindowStatus::Reload)
                        .count() as u64
                })
                .unwrap_or(0),
        };
        if let Err(e) = save_summary(&summary, &self.state_dir) {
            tracing::warn!(error = %e, "could not save the run summary");
        }
        summary
    }
}

/// The committed windows the sources load again in this run (see
/// [`crate::stage::Source::windows_loaded_again`]); a key the ledger does not list as committed
/// is an ordinary load. Sources find them before anything runs (a few file-system lookups).
fn windows_loaded_again(pipeline: &Pipeline, committed: &HashSet<String>) -> HashSet<String> {
    let keys: HashSet<String> = pipeline
        .nodes
        .iter()
        .filter_map(|n| match &n.stage {
            Stage::Source(s) => Some(s.windows_loaded_again()),
            _ => None,
        })
        .flatten()
        .filter(|k| committed.contains(k))
        .collect();
    if !keys.is_empty() {
        tracing::info!(
            windows = keys.len(),
            "committed windows are loaded again (their input changed); their earlier rows do not count as loaded before"
        );
    }
    keys
}

/// The summary of a run that could not start.
fn failed_before_start(
    info: &RunInfo,
    metrics: &IndexMap<String, (Role, String, Arc<ComponentMetrics>)>,
    started: Instant,
    state_dir: &Path,
    error: Error,
) -> RunSummary {
    tracing::error!(error = %error, "run failed");
    let summary = RunSummary {
        pipeline: info.pipeline.clone(),
        run_id: info.run_id.clone(),
        status: RunStatus::Failed,
        started_at: info.started_at,
        finished_at: Utc::now(),
        seconds: started.elapsed().as_secs_f64(),
        components: metrics
            .iter()
            .map(|(n, (r, t, m))| m.summarize(n, &r.to_string(), t, 0.0))
            .collect(),
        error: Some(error.to_string()),
        dead_letters: 0,
        dead_letter_file: None,
        windows_to_reload: 0,
    };
    let _ = save_summary(&summary, state_dir);
    summary
}

/// The ledger's word on a window a sink committed, sent to that sink.
#[derive(Debug)]
struct Recorded {
    window: WindowRef,
    /// Listed as committed: the sink publishes it. Otherwise another sink dropped it and it is
    /// never published (its staged files go with the run's `drop_windows`).
    committed: bool,
}

/// Writes a window into the ledger once every sink it reaches has committed it (or as failed
/// once every sink has dropped it). This is the run's commit point: see [`crate::state`]. Then
/// tells each sink that committed the window (`recorded`, by sink name), so it publishes it only
/// after the ledger lists it. Returns the keys of windows some sinks committed but that never
/// reached the ledger (another sink failed first): their files must not stay visible.
async fn coordinate_commits(
    mut rx: mpsc::UnboundedReceiver<LedgerEvent>,
    recorded: HashMap<String, mpsc::UnboundedSender<Recorded>>,
    sinks_per_source: HashMap<String, usize>,
    store: StateStore,
    run_id: String,
) -> Result<HashSet<String>> {
    // Per window: sinks heard from, whether all of them committed it, the sinks that did.
    let mut pending: HashMap<String, (usize, bool, Vec<String>)> = HashMap::new();
    let mut unlisted = HashSet::new();
    while let Some(event) = rx.recv().await {
        let (sink, window, committed) = match event {
            LedgerEvent::Sink {
                sink,
                window,
                committed,
            } => (sink, window, committed),
            LedgerEvent::Started { window, ack } => {
                let store = store.clone();
                let saved = tokio::task::spawn_blocking(move || store.start_window(&window))
                    .await
                    .map_err(|e| Error::component("ledger", e))
                    .and_then(|r| r);
                let _ = ack.send(saved);
                continue;
            }
            LedgerEvent::Checkpoint { window, value, ack } => {
                let store = store.clone();
                let saved = tokio::task::spawn_blocking(move || store.checkpoint(&window, value))
                    .await
                    .map_err(|e| Error::component("ledger", e))
                    .and_then(|r| r);
                let _ = ack.send(saved);
                continue;
            }
        };
        let need = sinks_per_source.get(&window.source).copied().unwrap_or(1);
        let key = window.key();
        let entry = pending.entry(key.clone()).or_insert((0, true, Vec::new()));
        entry.0 += 1;
        entry.1 &= committed;
        if committed {
            entry.2.push(sink);
        }
        if entry.0 < need {
            continue;
        }
        let (_, all_committed, committed_by) = pending.remove(&key).expect("just updated");
        let status = if all_committed {
            WindowStatus::Committed
        } else {
            if !committed_by.is_empty() {
                // Another path failed it: the sinks that committed it must drop its files.
                unlisted.insert(key);
            }
            WindowStatus::Failed
        };
        let (store, run_id, w) = (store.clone(), run_id.clone(), window.clone());
        tokio::task::spawn_blocking(move || store.record(&w, status, &run_id))
            .await
            .map_err(|e| Error::component("ledger", e))??;
        for sink in committed_by {
            if let Some(tx) = recorded.get(&sink) {
                // A sink that stopped has dropped its receiver; the next run's start publishes.
                let _ = tx.send(Recorded {
                    window: window.clone(),
                    committed: all_committed,
                });
            }
        }
    }
    unlisted.extend(
        pending
            .into_iter()
            .filter(|(_, (_, _, committed_by))| !committed_by.is_empty())
            .map(|(key, _)| key),
    );
    Ok(unlisted)
}

/// After the run: every sink deletes its files of windows the ledger does not list, so the lake
/// holds the ledger's windows when the run ends, not only when the next one starts. Those are
/// windows some sinks committed and the ledger never listed (`unlisted`: another sink failed
/// first; a window waiting to be reloaded keeps its files), and windows waiting to be reloaded
/// that committed windows now replace ([`StateStore::supersede_reloads`], dropped from the ledger
/// first, so a crash in between leaves files the next start removes). Returns how many windows
/// still wait to be loaded again (their files stay).
async fn drop_unlisted_windows(
    store: &StateStore,
    unlisted: HashSet<String>,
    sinks: &mut HashMap<String, Box<dyn Sink>>,
    sink_cx: &impl Fn(&str) -> SinkContext,
) -> Result<u64> {
    let lake = store.lake_keys()?;
    let mut gone: HashSet<String> = unlisted
        .into_iter()
        .filter(|k| !lake.committed.contains(k) && !lake.reloading.contains(k))
        .collect();
    if !gone.is_empty() {
        tracing::warn!(
            windows = gone.len(),
            "windows some sinks committed are not in the ledger (another sink failed); removing their files"
        );
    }
    let superseded = store.supersede_reloads()?;
    if !superseded.is_empty() {
        tracing::info!(
            windows = superseded.len(),
            "windows reset for reloading are replaced by this run's; removing their earlier files"
        );
    }
    gone.extend(superseded);
    if !gone.is_empty() {
        let mut names: Vec<&String> = sinks.keys().collect();
        names.sort();
        let names: Vec<String> = names.into_iter().cloned().collect();
        for name in names {
            let cx = sink_cx(&name);
            let sink = sinks.get_mut(&name).expect("listed above");
            sink.drop_windows(&gone, &cx).await?;
        }
    }
    let waiting = store.lake_keys()?.reloading.len() as u64;
    if waiting > 0 {
        tracing::warn!(
            windows = waiting,
            "windows reset for reloading were not loaded again; their earlier files stay in the lake \
             until a run loads them (`chatlake state show`)"
        );
    }
    Ok(waiting)
}

async fn timed(f: impl Future<Output = Result<()>>) -> (f64, Result<()>) {
    let start = Instant::now();
    let r = f.await;
    (start.elapsed().as_secs_f64(), r)
}

/// Writes `runs/<run_id>.json` and `last_run.json` under `dir`, each atomically.
pub fn save_summary(summary: &RunSummary, dir: &Path) -> Result<()> {
    let json = serde_json::to_vec_pretty(summary).map_err(|e| Error::component("runtime", e))?;
    let runs = dir.join("runs");
    for dir in [dir, runs.as_path()] {
        crate::durable::create_private_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    write_atomic(&runs.join(format!("{}.json", summary.run_id)), &json)?;
    Ok(write_atomic(&dir.join("last_run.json"), &json)?)
}

/// Merges the markers of one window arriving along several inputs into one outcome.
struct MarkerMerge {
    expected: HashMap<String, usize>,
    pending: HashMap<String, (usize, bool)>,
}

impl MarkerMerge {
    fn new(expected: HashMap<String, usize>) -> Self {
        MarkerMerge {
            expected,
            pending: HashMap::new(),
        }
    }

    /// For a marker event: its window and whether it failed, once it has arrived along every
    /// input.
    fn arrive_marker(&mut self, marker: Event) -> Option<(WindowRef, bool)> {
        let (w, failed) = match marker {
            Event::WindowDone(w) => (w, false),
            Event::WindowFailed(w) => (w, true),
            Event::Batch(_) => unreachable!("a batch is not a marker"),
        };
        self.arrive(&w, failed).map(|failed| (w, failed))
    }

    /// Some(failed) once the marker of `window` has arrived along every input.
    fn arrive(&mut self, window: &WindowRef, failed: bool) -> Option<bool> {
        let need = self.expected.get(&window.source).copied().unwrap_or(1);
        if need <= 1 {
            return Some(failed);
        }
        let key = window.key();
        let entry = self.pending.entry(key.clone()).or_insert((0, false));
        entry.0 += 1;
        entry.1 |= failed;
        if entry.0 < need {
            return None;
        }
        let (_, failed) = self.pending.remove(&key).expect("just updated");
        Some(failed)
    }
}

async fn flush(emitter: &mut Emitter, out: &Output) -> Result<()> {
    for batch in emitter.drain() {
        out.send(batch).await?;
    }
    Ok(())
}

async fn run_transform(
    mut t: Box<dyn Transform>,
    mut rx: mpsc::Receiver<Event>,
    out: Output,
    mut merge: MarkerMerge,
    cx: TransformContext,
) -> Result<()> {
    let mut emitter = Emitter::default();
    let holds = t.holds_rows_until_finish();
    let mut held_markers = Vec::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Batch(batch) => {
                cx.metrics.add_records_in(batch.num_rows() as u64);
                t.transform(batch, &mut emitter, &cx)?;
                flush(&mut emitter, &out).await?;
            }
            marker => {
                let Some((w, failed)) = merge.arrive_marker(marker) else {
                    continue;
                };
                let marker = if failed {
                    t.window_failed(&w, &cx)?;
                    Event::WindowFailed(w)
                } else {
                    t.window_done(&w, &mut emitter, &cx)?;
                    flush(&mut emitter, &out).await?;
                    Event::WindowDone(w)
                };
                if holds {
                    held_markers.push(marker);
                } else {
                    out.forward(marker).await?;
                }
            }
        }
    }
    t.finish(&mut emitter, &cx)?;
    flush(&mut emitter, &out).await?;
    while t.finish_next(&mut emitter, &cx)? {
        flush(&mut emitter, &out).await?;
    }
    flush(&mut emitter, &out).await?;
    for marker in held_markers {
        out.forward(marker).await?;
    }
    Ok(())
}

/// The cores a run plans for: the machine's, or `CHATLAKE_THREADS`.
pub fn cores() -> usize {
    std::env::var("CHATLAKE_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// How many windows are worked on at once: files a source reads side by side, instances of a
/// transform that can be replicated. The stages of a pipeline already keep about two cores busy
/// by themselves (parser, transforms and the sink's encoder run concurrently), so one window per
/// two cores: on 2 cores, replicas and concurrent files made the LINE WORKS job 8 % slower and
/// 50 % bigger (issue 6, BENCHMARKS.md). At most [`MAX_REPLICAS`].
pub fn windows_at_once() -> usize {
    (cores() / 2).clamp(1, MAX_REPLICAS)
}

/// How many windows a source fetches side by side. While a transform below it holds every row
/// until its input ends (dedupe `keep = "latest"`), nothing downstream works during the fetch,
/// so it may use every core ([`cores`], at most [`MAX_REPLICAS`]): two Qlara files at once made
/// that job 6 % faster on 2 cores. Otherwise the sink encodes while the source parses, and one
/// window per two cores ([`windows_at_once`]) is faster.
pub fn fetch_windows_at_once(rows_held_below: bool) -> usize {
    if rows_held_below {
        cores().clamp(1, MAX_REPLICAS)
    } else {
        windows_at_once()
    }
}

/// More instances than this only add hand-offs: the stages around them are single.
const MAX_REPLICAS: usize = 4;

/// The extra instances of `t` to run beside it (empty: run it alone).
fn replicas(t: &dyn Transform) -> Vec<Box<dyn Transform>> {
    if t.holds_rows_until_finish() {
        return Vec::new();
    }
    let mut copies = Vec::new();
    for _ in 1..windows_at_once() {
        match t.replicate() {
            Some(copy) => copies.push(copy),
            None => break,
        }
    }
    copies
}

/// Runs `first` and its `copies` side by side. A router gives each window to an instance when
/// its first batch arrives (the one with the fewest open windows, then the shortest queue); the
/// window's later batches and its (merged) marker go to the same instance, so each instance sees
/// a window whole and in order, and windows are transformed on several cores at once.
async fn run_replicated(
    first: Box<dyn Transform>,
    copies: Vec<Box<dyn Transform>>,
    mut rx: mpsc::Receiver<Event>,
    out: Output,
    mut merge: MarkerMerge,
    cx: TransformContext,
) -> Result<()> {
    let mut lanes = Vec::new();
    let mut tasks = Vec::new();
    for t in std::iter::once(first).chain(copies) {
        let (tx, lane_rx) = mpsc::channel(CHANNEL_CAPACITY);
        lanes.push((tx, 0usize));
        // Markers reach a lane already merged: it passes each one on as it comes.
        let lane_merge = MarkerMerge::new(HashMap::new());
        tasks.push(tokio::spawn(run_transform(
            t,
            lane_rx,
            out.clone(),
            lane_merge,
            cx.clone(),
        )));
    }
    let mut owner: HashMap<String, usize> = HashMap::new();
    let mut routed = Ok(());
    while let Some(event) = rx.recv().await {
        let (lane, event) = match event {
            Event::Batch(batch) => {
                let key = batch.window.key();
                let lane = *owner.entry(key).or_insert_with(|| {
                    // Fewest open windows, then the shortest queue: a source that sends one
                    // window after another still spreads them while a lane is behind.
                    let lane = (0..lanes.len())
                        .min_by_key(|i| (lanes[*i].1, std::cmp::Reverse(lanes[*i].0.capacity())))
                        .expect("at least one lane");
                    lanes[lane].1 += 1;
                    lane
                });
                (lane, Event::Batch(batch))
            }
            marker => {
                let Some((w, failed)) = merge.arrive_marker(marker) else {
                    continue;
                };
                let lane = match owner.remove(&w.key()) {
                    Some(lane) => {
                        lanes[lane].1 -= 1;
                        lane
                    }
                    None => 0,
                };
                let marker = if failed {
                    Event::WindowFailed(w)
                } else {
                    Event::WindowDone(w)
                };
                (lane, marker)
            }
        };
        if lanes[lane].0.send(event).await.is_err() {
            // The lane stopped; its own result says why.
            routed = Err(Error::DownstreamClosed {
                component: cx.name.clone(),
            });
            break;
        }
    }
    drop(lanes);
    let mut result = Ok(());
    for task in tasks {
        let lane = task
            .await
            .map_err(|e| Error::component(&cx.name, format!("a stage panicked: {e}")))
            .and_then(|r| r);
        if result.is_ok() {
            result = lane;
        }
    }
    result.and(routed)
}

/// Applies every complete removal log (see [`crate::removal`]) to the sinks downstream of the
/// transform that wrote it, then deletes it. Only removals whose replacing window the ledger lists
/// as committed by the log's run count. A sink that stopped (not in `sinks`) keeps the log for the
/// next run.
async fn apply_removals(
    log: &RemovalLog,
    store: &StateStore,
    targets: &HashMap<String, Vec<String>>,
    sinks: &mut HashMap<String, Box<dyn Sink>>,
    sink_cx: &impl Fn(&str) -> SinkContext,
) -> Result<()> {
    let files = log.pending()?;
    if files.is_empty() {
        return Ok(());
    }
    let committed_by = store.committed_runs()?;
    for file in files {
        let Some(names) = targets.get(&file.transform) else {
            tracing::warn!(
                log = %file.path.display(),
                transform = %file.transform,
                "a removal log of a transform this pipeline no longer has is left unapplied"
            );
            continue;
        };
        let removals = file.read(&committed_by)?;
        let mut complete = true;
        for name in names {
            let Some(sink) = sinks.get_mut(name) else {
                complete = false;
                continue;
            };
            let cx = sink_cx(name);
            for removal in &removals {
                let n = sink.remove_rows(removal, &cx).await?;
                cx.metrics.add_records_removed(n);
            }
        }
        if complete {
            file.delete()?;
        }
    }
    Ok(())
}

/// Runs a started sink to the end of its input, publishing each window it committed once the
/// ledger lists it; hands it back for the removals that follow the run's commits.
async fn run_sink(
    mut sink: Box<dyn Sink>,
    rx: mpsc::Receiver<Event>,
    merge: MarkerMerge,
    cx: SinkContext,
    ledger: mpsc::UnboundedSender<LedgerEvent>,
    recorded: mpsc::UnboundedReceiver<Recorded>,
) -> (Box<dyn Sink>, Result<()>) {
    let mut publisher = Publisher {
        recorded: Some(recorded),
        awaiting: HashSet::new(),
    };
    let mut result = drive_sink(&mut sink, rx, merge, &cx, ledger, &mut publisher).await;
    // The ledger sender went with `drive_sink`, so the ledger task ends once every other stage
    // has, and the wait below ends with it. Windows the ledger listed are published even after
    // an error (the first error stays the run's); `finish` only after a clean run, as before.
    let published = publisher.publish_rest(&mut sink, &cx).await;
    if result.is_ok() {
        result = published;
    } else if let Err(e) = published {
        tracing::warn!(sink = %cx.name, "a publish failed after the sink had failed: {e}");
    }
    if result.is_ok() {
        result = sink.finish(&cx).await;
    }
    (sink, result)
}

/// A sink's windows committed but not yet listed by the ledger, and the ledger's answers.
struct Publisher {
    /// `None` once the ledger task has ended.
    recorded: Option<mpsc::UnboundedReceiver<Recorded>>,
    awaiting: HashSet<String>,
}

impl Publisher {
    /// The ledger's next answer, or never once it has ended (for `select!`).
    async fn next(&mut self) -> Option<Recorded> {
        match &mut self.recorded {
            Some(rx) => {
                let next = rx.recv().await;
                if next.is_none() {
                    self.recorded = None;
                }
                next
            }
            None => std::future::pending().await,
        }
    }

    /// Publishes `answer.window` if the ledger lists it as committed.
    async fn settle(
        &mut self,
        answer: Recorded,
        sink: &mut Box<dyn Sink>,
        cx: &SinkContext,
    ) -> Result<()> {
        self.awaiting.remove(&answer.window.key());
        if answer.committed {
            sink.publish(&answer.window, cx).await?;
        }
        Ok(())
    }

    /// Waits for the ledger's answer on every window still awaited and publishes the committed
    /// ones; returns at once when the ledger task has ended.
    async fn publish_rest(&mut self, sink: &mut Box<dyn Sink>, cx: &SinkContext) -> Result<()> {
        while !self.awaiting.is_empty() && self.recorded.is_some() {
            if let Some(answer) = self.next().await {
                self.settle(answer, sink, cx).await?;
            }
        }
        if !self.awaiting.is_empty() {
            tracing::debug!(
                sink = %cx.name,
                windows = self.awaiting.len(),
                "committed windows the ledger never listed are not published"
            );
        }
        Ok(())
    }
}

async fn drive_sink(
    sink: &mut Box<dyn Sink>,
    mut rx: mpsc::Receiver<Event>,
    mut merge: MarkerMerge,
    cx: &SinkContext,
    ledger: mpsc::UnboundedSender<LedgerEvent>,
    publisher: &mut Publisher,
) -> Result<()> {
    let mut open: IndexMap<String, WindowRef> = IndexMap::new();
    // Windows whose commit goes on beside the sink's writes (`Sink::begin_commit`), oldest
    // first: each tells the ledger once its rest has succeeded.
    let mut committing: VecDeque<(WindowRef, tokio::task::JoinHandle<Result<()>>)> =
        VecDeque::new();
    let committed = |w: WindowRef, publisher: &mut Publisher| {
        cx.metrics.add_window_done();
        publisher.awaiting.insert(w.key());
        let _ = ledger.send(LedgerEvent::Sink {
            sink: cx.name.clone(),
            window: w,
            committed: true,
        });
    };
    let result = loop {
        // The ledger's answers first: a window is published as soon as it is listed.
        let event = tokio::select! {
            biased;
            Some(answer) = publisher.next() => {
                if let Err(e) = publisher.settle(answer, sink, cx).await {
                    break Err(e);
                }
                continue;
            }
            rest = oldest_commit(&mut committing), if !committing.is_empty() => {
                let (w, _) = committing.pop_front().expect("not empty");
                match rest {
                    Ok(()) => committed(w, publisher),
                    Err(e) => break Err(e),
                }
                continue;
            }
            event = rx.recv() => match event {
                Some(event) => event,
                None => break Ok(()),
            },
        };
        let handled: Result<()> = async {
            match event {
                Event::Batch(batch) => {
                    cx.metrics.add_records_in(batch.num_rows() as u64);
                    open.entry(batch.window.key())
                        .or_insert_with(|| batch.window.clone());
                    sink.write(batch, cx).await?;
                }
                Event::WindowDone(w) => {
                    if let Some(failed) = merge.arrive(&w, false) {
                        open.shift_remove(&w.key());
                        if failed {
                            sink.abort(&w, cx).await?;
                            let _ = ledger.send(LedgerEvent::Sink {
                                sink: cx.name.clone(),
                                window: w,
                                committed: false,
                            });
                        } else {
                            match sink.begin_commit(&w, cx).await? {
                                None => committed(w, publisher),
                                Some(rest) => committing.push_back((w, tokio::spawn(rest))),
                            }
                        }
                    }
                }
                Event::WindowFailed(w) => {
                    if merge.arrive(&w, true).is_some() {
                        open.shift_remove(&w.key());
                        sink.abort(&w, cx).await?;
                        let _ = ledger.send(LedgerEvent::Sink {
                            sink: cx.name.clone(),
                            window: w,
                            committed: false,
                        });
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = handled {
            break Err(e);
        }
    };
    // Commits still going on end before the sink does: on success they count (the ledger may
    // list them); after a failure they are awaited too, so nothing of the sink runs on after
    // it, but they no longer count — the ledger never lists a window of a failed sink's commit
    // that had not finished by the failure.
    while let Some((w, mut handle)) = committing.pop_front() {
        let rest = join_commit(&mut handle).await;
        match (&result, rest) {
            (Ok(()), Ok(())) => committed(w, publisher),
            (Ok(()), Err(e)) => {
                // The first failure is the run's; later windows' commits still finish.
                while let Some((_, mut handle)) = committing.pop_front() {
                    let _ = join_commit(&mut handle).await;
                }
                return Err(e);
            }
            (Err(_), _) => {}
        }
    }
    result?;
    // Input ended with windows still open: a stage upstream stopped before finishing them.
    for (_, w) in open {
        tracing::warn!(sink = %cx.name, window = %w, "input ended before the window was complete; not committing it");
        sink.abort(&w, cx).await?;
    }
    Ok(())
}

/// The outcome of the oldest commit still going on (`committing` is not empty).
async fn oldest_commit(
    committing: &mut VecDeque<(WindowRef, tokio::task::JoinHandle<Result<()>>)>,
) -> Result<()> {
    let (_, handle) = committing.front_mut().expect("not empty");
    join_commit(handle).await
}

async fn join_commit(handle: &mut tokio::task::JoinHandle<Result<()>>) -> Result<()> {
    handle
        .await
        .map_err(|e| Error::component("runtime", format!("a window's commit panicked: {e}")))?
}

#[cfg(test)]
mod tests;
