//! The subcommands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chatlake_core::Secret;
use chatlake_core::config::{ConfigErrors, PipelineFile};
use chatlake_core::graph::{BuildOptions, Pipeline, Stage};
use chatlake_core::metrics::RunSummary;
use chatlake_core::runtime::Run;
use chatlake_core::shard::{Shard, StateLayout, check_layout};
use chatlake_core::stage::EmulatorProfile;
use chatlake_core::state::{StateStore, WindowStatus};
use chatlake_emulator::{Emulator, EmulatorConfig, Faults};

use crate::error_line;
use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use clap::{Args, CommandFactory};

use crate::exit;
use crate::registry::registry;
use crate::remote_state::{self, ObjectState};
use crate::{metrics_file, summary};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline file (TOML or YAML).
    pipeline: PathBuf,
    /// Start the built-in provider emulator on loopback and point every source at it.
    #[arg(long)]
    emulate: bool,
    #[command(flatten)]
    emulator: EmulatorArgs,
    /// Override every source's start (RFC 3339, or a date meaning 00:00 UTC).
    #[arg(long, value_parser = parse_time)]
    start: Option<DateTime<FixedOffset>>,
    /// Override every source's end.
    #[arg(long, value_parser = parse_time)]
    end: Option<DateTime<FixedOffset>>,
    /// Ignore incremental state and load the whole range again.
    #[arg(long)]
    full_refresh: bool,
    /// Show progress even when standard error is not a terminal (or never: --progress=false).
    #[arg(long)]
    progress: Option<bool>,
    /// Write the run's figures to this file in the Prometheus text format (for node_exporter's
    /// textfile collector), atomically, also when the run fails.
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf>,
    /// Run worker K of N (K from 0): N workers together load what one run would, each its own
    /// share of every source's windows, with its own ledger and lock in the shared state_dir.
    #[arg(long, value_name = "K/N", env = chatlake_core::shard::SHARD_VARIABLE)]
    shard: Option<Shard>,
}

/// Options of the emulator, for `emulate` and `run --emulate`.
#[derive(Debug, Clone, Args)]
pub struct EmulatorArgs {
    /// Seed of the emulator's deterministic data.
    #[arg(long = "seed", id = "emulator_seed", default_value_t = 42)]
    seed: u64,
    /// Data volume: 1.0 is about 1,000 LINE WORKS messages a day.
    #[arg(long = "scale", id = "emulator_scale", default_value_t = 1.0)]
    scale: f64,
    /// Faults to inject, e.g. `lineworks.trailer=2,lineworks.rate_limit=3` (see README).
    #[arg(long = "faults", id = "emulator_faults", value_parser = parse_faults)]
    faults: Option<Faults>,
}

fn parse_faults(s: &str) -> Result<Faults, String> {
    s.parse()
}

impl EmulatorArgs {
    fn config(&self) -> EmulatorConfig {
        EmulatorConfig {
            seed: self.seed,
            scale: self.scale,
            faults: self.faults.clone().unwrap_or_default(),
        }
    }
}

/// RFC 3339, or a bare date meaning its 00:00 UTC.
pub fn parse_time(s: &str) -> Result<DateTime<FixedOffset>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t);
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(|d| {
            d.and_hms_opt(0, 0, 0)
                .expect("midnight exists")
                .and_utc()
                .fixed_offset()
        })
        .map_err(|_| {
            format!("`{s}` is neither RFC 3339 (2025-01-01T00:00:00+09:00) nor a date (2025-01-01)")
        })
}

fn print_config_errors(errors: &ConfigErrors) {
    for e in &errors.0 {
        error_line!("{e}");
    }
}

/// Loads and builds a pipeline for `validate` and `plan`, which make no request: an
/// object-store `state_dir` is checked for syntax and replaced by an empty scratch directory.
fn load(
    path: &Path,
    opts: &BuildOptions,
) -> Result<(Pipeline, Option<remote_state::Offline>), ConfigErrors> {
    load_shard(path, opts, None)
}

/// [`load`] as worker `shard` of a sharded run would build it.
fn load_shard(
    path: &Path,
    opts: &BuildOptions,
    shard: Option<Shard>,
) -> Result<(Pipeline, Option<remote_state::Offline>), ConfigErrors> {
    let mut file = PipelineFile::load(path)?;
    file.shard = shard;
    let mut errors = ConfigErrors::default();
    let offline = remote_state::offline(&mut file).unwrap_or_else(|e| {
        errors.0.push(e);
        None
    });
    match Pipeline::build(file, &registry(), opts) {
        Ok(pipeline) if errors.0.is_empty() => Ok((pipeline, offline)),
        Ok(_) => Err(errors),
        Err(more) => {
            errors.0.extend(more.0);
            Err(errors)
        }
    }
}

/// Refuses (exit 2) a run or plan whose `--shard` does not match the state it would continue
/// (see [`chatlake_core::shard::check_layout`]); exit 1 if the state cannot be read.
async fn check_shard_layout(path: &Path, file: &PipelineFile) -> Result<(), u8> {
    let layout = state_layout(path, file).await?;
    check_layout(&layout, file.shard).map_err(|e| {
        error_line!("{}: {e}", path.display());
        exit::BAD_INPUT
    })
}

/// The shards (and unsharded ledgers) of `file`'s state directory, local or in an object
/// store; exit 1 if it cannot be read.
async fn state_layout(path: &Path, file: &PipelineFile) -> Result<StateLayout, u8> {
    Ok(match remote_state::object_state_dir(file) {
        Ok(Some(_)) => remote_state::shard_layout(file)
            .await
            .map_err(|e| remote_state::report(path, &e))?,
        Ok(None) => StateLayout::of_dir(&file.shared_state_dir()).map_err(|e| {
            error_line!(
                "{}: cannot read the state directory {}: {e}",
                path.display(),
                file.shared_state_dir().display()
            );
            exit::RUN_FAILED
        })?,
        // Reported where the file is checked.
        Err(_) => StateLayout::default(),
    })
}

/// Starts an emulator for `validate --emulate` and `plan --emulate`: it binds loopback only and
/// is asked nothing; sources just see the URLs and credentials `run --emulate` would give them.
async fn offline_emulator(emulate: bool) -> Result<Option<Emulator>, u8> {
    if !emulate {
        return Ok(None);
    }
    Emulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        EmulatorConfig::default(),
    )
    .await
    .map(Some)
    .map_err(|e| {
        error_line!("cannot start the emulator: {e}");
        exit::RUN_FAILED
    })
}

pub async fn validate(paths: &[PathBuf], emulate: bool) -> u8 {
    let emulator = match offline_emulator(emulate).await {
        Ok(e) => e,
        Err(code) => return code,
    };
    let opts = BuildOptions {
        emulator: emulator.as_ref().map(profile),
        ..Default::default()
    };
    let mut failed = false;
    for path in paths {
        // `validate pipelines/*.toml` also names the pipelines' test files: check them as such.
        if crate::pipeline_test::is_test_file(path) {
            failed |= !crate::pipeline_test::validate_test_file(path);
            continue;
        }
        match load(path, &opts) {
            Ok((p, offline)) => {
                for warning in p.warnings() {
                    crate::print_warning(format_args!("{warning}"));
                }
                // State of sources the file no longer has; an object-store state_dir is not
                // read (validate makes no request): `run` and `state show` tell.
                if offline.is_none() {
                    let clashes = check_ledgers(&p.file, &p.state(), |w| {
                        crate::print_warning(format_args!("{}: {w}", path.display()))
                    });
                    for clash in clashes {
                        crate::print_warning(format_args!(
                            "{}: a run would refuse to start: {clash}",
                            path.display()
                        ));
                    }
                }
                // What a run would fail on at its start without the network: a files glob that
                // matches nothing (the run fails then, naming the pattern).
                for node in &p.nodes {
                    if let Stage::Source(source) = &node.stage
                        && let Err(e) = source.plan()
                    {
                        crate::print_warning(format_args!(
                            "{}: sources.{}: a run would fail at its start: {e}",
                            path.display(),
                            node.spec.name
                        ));
                    }
                }
                println!(
                    "{}: ok (pipeline `{}`, {} components)",
                    path.display(),
                    p.name(),
                    p.nodes.len()
                )
            }
            Err(errors) => {
                failed = true;
                print_config_errors(&errors);
            }
        }
    }
    if failed { exit::BAD_INPUT } else { exit::OK }
}

pub async fn plan(
    path: &Path,
    start: Option<DateTime<FixedOffset>>,
    end: Option<DateTime<FixedOffset>>,
    emulate: bool,
    shard: Option<Shard>,
) -> u8 {
    let emulator = match offline_emulator(emulate).await {
        Ok(e) => e,
        Err(code) => return code,
    };
    let plan_start = start.map(|t| t.to_rfc3339());
    let opts = BuildOptions {
        start,
        end,
        emulator: emulator.as_ref().map(profile),
        use_state: true,
        ..Default::default()
    };
    let (pipeline, offline) = match load_shard(path, &opts, shard) {
        Ok(loaded) => loaded,
        Err(errors) => {
            print_config_errors(&errors);
            return exit::BAD_INPUT;
        }
    };
    if offline.is_none()
        && let Err(code) = check_shard_layout(path, &pipeline.file).await
    {
        return code;
    }
    // Every worker's share, to show this one's among them: each worker's plan, by source.
    let mut shares: std::collections::HashMap<String, Vec<usize>> = Default::default();
    if let Some(worker) = pipeline.file.worker() {
        for k in 0..worker.count() {
            let Ok(other) = Shard::new(k, worker.count()) else {
                continue;
            };
            let built = match load_shard(path, &opts, Some(other)) {
                Ok((built, _)) => built,
                Err(errors) => {
                    print_config_errors(&errors);
                    return exit::BAD_INPUT;
                }
            };
            for node in &built.nodes {
                // Windows found at run time (discovered conversations) are split then.
                if let Stage::Source(s) = &node.stage
                    && s.plan_is_complete()
                {
                    shares
                        .entry(node.spec.name.clone())
                        .or_default()
                        .push(s.plan().map_or(0, |w| w.len()));
                }
            }
        }
    }
    println!("pipeline `{}` ({})", pipeline.name(), path.display());
    if let Some(worker) = pipeline.file.worker() {
        println!(
            "worker {worker}: its share of every source's windows (`--shard`); the other {} \
             workers load the rest",
            worker.count() - 1
        );
    }
    match &offline {
        Some(state) => println!(
            "state: {} (object storage, not read by plan: windows committed there are listed too)",
            state.url
        ),
        None => println!("state: {}", pipeline.pipeline_state_dir().display()),
    }
    println!();
    println!("graph:");
    for node in &pipeline.nodes {
        let inputs = if node.spec.inputs.is_empty() {
            String::new()
        } else {
            format!(" <- {}", node.spec.inputs.join(", "))
        };
        println!(
            "  {:<9} {:<16} type={}{}",
            node.spec.role, node.spec.name, node.spec.type_name, inputs
        );
        if let Stage::Sink(sink) = &node.stage
            && let Some(destination) = sink.destination()
        {
            println!("            writes to {destination}");
        }
    }
    let mut code = exit::OK;
    for node in &pipeline.nodes {
        let Stage::Source(source) = &node.stage else {
            continue;
        };
        println!();
        let ledger = pipeline.state().load(&node.spec.name).unwrap_or_default();
        let committed = ledger
            .windows
            .values()
            .filter(|w| w.status == WindowStatus::Committed)
            .count();
        match source.plan() {
            Ok(windows) => {
                match shares.get(&node.spec.name) {
                    Some(each) => println!(
                        "source `{}`: {} window(s) to fetch, of {} for all workers (by worker: {})",
                        node.spec.name,
                        windows.len(),
                        each.iter().sum::<usize>(),
                        each.iter()
                            .map(usize::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    None => println!(
                        "source `{}`: {} window(s) to fetch",
                        node.spec.name,
                        windows.len()
                    ),
                }
                if committed > 0 {
                    println!(
                        "  {committed} window(s) committed by earlier runs are skipped (`chatlake state show`); \
                         --full-refresh loads everything again"
                    );
                }
                if let Some(start) = &plan_start {
                    println!("  --start {start} wins over the file's start");
                }
                for note in source.plan_notes() {
                    println!("  warning: not fetched: {note}");
                }
                for w in windows {
                    println!("  [{:>3}] {}", w.window.index, w.window.label);
                    println!("        {}", w.request);
                }
            }
            Err(e) => {
                error_line!("{}: {e}", node.spec.name);
                code = exit::BAD_INPUT;
            }
        }
    }
    code
}

pub fn components(json: bool) -> u8 {
    let docs = registry().docs();
    if json {
        match serde_json::to_string_pretty(&docs) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                error_line!("{e}");
                return exit::RUN_FAILED;
            }
        }
        return exit::OK;
    }
    for doc in docs {
        println!("{} `{}`: {}", doc.role, doc.type_name, doc.summary);
        for o in doc.options {
            let default = match (&o.default, o.required) {
                (_, true) => "required".to_string(),
                (Some(d), _) => format!("default {d}"),
                (None, _) => "optional".to_string(),
            };
            println!(
                "    {:<22} {:<28} {:<18} {}",
                o.name, o.kind, default, o.description
            );
        }
        if !doc.example.is_empty() {
            println!("  example:");
            for line in doc.example.lines() {
                println!("    {line}");
            }
        }
        println!();
    }
    exit::OK
}

/// `schema`: the JSON Schema of pipeline files on standard output.
pub fn schema() -> u8 {
    match serde_json::to_string_pretty(&crate::schema::pipeline_schema(&registry())) {
        Ok(s) => {
            println!("{s}");
            exit::OK
        }
        Err(e) => {
            error_line!("{e}");
            exit::RUN_FAILED
        }
    }
}

/// `completions SHELL`: the completion script, generated from the command-line definition.
pub fn completions(shell: clap_complete::Shell) -> u8 {
    let mut command = crate::Cli::command();
    clap_complete::generate(shell, &mut command, "chatlake", &mut std::io::stdout());
    exit::OK
}

/// `man`: the man page in roff, generated from the command-line definition; with `dir`, the
/// page of every subcommand too (the main page's SUBCOMMANDS section refers to them).
pub fn man(dir: Option<&Path>) -> u8 {
    let command = crate::Cli::command();
    let written = match dir {
        None => clap_mangen::Man::new(command).render(&mut std::io::stdout()),
        Some(dir) => {
            std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(command, dir))
        }
    };
    match written {
        Ok(()) => exit::OK,
        Err(e) => {
            match dir {
                Some(dir) => error_line!("{}: {e}", dir.display()),
                None => error_line!("{e}"),
            }
            exit::RUN_FAILED
        }
    }
}

fn profile(emulator: &Emulator) -> EmulatorProfile {
    EmulatorProfile {
        root: emulator.base_url(),
        credentials: emulator
            .credentials()
            .into_iter()
            .map(|(k, v)| (k, Secret::new(v)))
            .collect(),
    }
}

pub async fn emulate(addr: SocketAddr, args: EmulatorArgs) -> u8 {
    let emulator = match Emulator::start(addr, args.config()).await {
        Ok(e) => e,
        Err(e) => {
            error_line!("cannot start the emulator on {addr}: {e}");
            return exit::RUN_FAILED;
        }
    };
    println!("emulator listening on {}", emulator.base_url());
    println!(
        "  LINE WORKS base_url  {}/v1.0   token_url {}/oauth2/v2.0/token",
        emulator.base_url(),
        emulator.base_url()
    );
    for (k, v) in emulator.credentials() {
        if k.ends_with("private_key") {
            println!("  {k:<28} (test RSA key, see crates/emulator/keys/)");
        } else {
            println!("  {k:<28} {v}");
        }
    }
    println!("press Ctrl-C to stop");
    let _ = tokio::signal::ctrl_c().await;
    emulator.shutdown().await;
    exit::OK
}

pub(crate) fn run_id(now: DateTime<Utc>) -> String {
    let nanos = now.timestamp_subsec_nanos() ^ std::process::id().rotate_left(16);
    format!("{}-{:06x}", now.format("%Y%m%dT%H%M%SZ"), nanos & 0xff_ffff)
}

/// What `run` learnt on its way, however far it got: what `--metrics-file` reports.
#[derive(Debug, Default)]
struct RunFacts {
    pipeline: Option<String>,
    sources: Vec<String>,
    store: Option<StateStore>,
    summary: Option<RunSummary>,
}

pub async fn run(args: RunArgs) -> u8 {
    let started_at = Utc::now();
    if let Some(path) = &args.metrics_file
        && let Err(e) = metrics_file::check_path(path)
    {
        error_line!("--metrics-file {e}");
        return exit::BAD_INPUT;
    }
    let mut facts = RunFacts::default();
    let code = run_pipeline(&args, &mut facts).await;
    let otlp = crate::otlp::wanted();
    if args.metrics_file.is_none() && !otlp {
        return code;
    }
    let fallback_name = args
        .pipeline
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ledgers = match &facts.store {
        Some(store) => store.all().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the ledgers for --metrics-file");
            Default::default()
        }),
        None => Default::default(),
    };
    let report = metrics_file::RunReport {
        pipeline: facts.pipeline.as_deref().unwrap_or(&fallback_name),
        exit_code: code,
        started_at: facts.summary.as_ref().map_or(started_at, |s| s.started_at),
        finished_at: facts
            .summary
            .as_ref()
            .map_or_else(Utc::now, |s| s.finished_at),
        summary: facts.summary.as_ref(),
        sources: &facts.sources,
        ledgers: &ledgers,
    };
    if otlp {
        // A collector that is down must not fail a run that loaded its data: a warning.
        let families = metrics_file::families(&report);
        match tokio::task::spawn_blocking(move || crate::otlp::export(&families)).await {
            Ok(Ok(())) => tracing::info!("sent the run's metrics over OTLP"),
            Ok(Err(e)) => tracing::warn!("{e}"),
            Err(e) => tracing::warn!("the OTLP export panicked: {e}"),
        }
    }
    let Some(path) = &args.metrics_file else {
        return code;
    };
    match metrics_file::write(path, &report) {
        Ok(()) => code,
        Err(e) => {
            // A scheduler watching the file would not see this run: fail it, so it is noticed
            // (what the run committed stays committed).
            error_line!("--metrics-file {e}");
            if code == exit::OK {
                exit::RUN_FAILED
            } else {
                code
            }
        }
    }
}

async fn run_pipeline(args: &RunArgs, facts: &mut RunFacts) -> u8 {
    // Load first: a bad file is reported before anything starts.
    let mut file = match PipelineFile::load(&args.pipeline) {
        Ok(f) => f,
        Err(errors) => {
            print_config_errors(&errors);
            return exit::BAD_INPUT;
        }
    };
    file.shard = args.shard;
    if let Err(code) = check_shard_layout(&args.pipeline, &file).await {
        return code;
    }
    facts.pipeline = Some(file.pipeline.name.clone());
    facts.sources = file
        .components
        .iter()
        .filter(|c| c.role == chatlake_core::config::Role::Source)
        .map(|c| c.name.clone())
        .collect();
    // An object-store state_dir: checked before anything else, then worked on as a local copy.
    let object_state = match ObjectState::open(&mut file, None).await {
        Ok(state) => state,
        Err(e) => {
            return remote_state::report(&args.pipeline, &e);
        }
    };
    let store = StateStore::new(file.pipeline_state_dir());
    facts.store = Some(store.clone());
    // Held until the run ends: planning reads the ledger, so it is taken before the build.
    let _lock = match store.lock() {
        Ok(lock) => lock,
        Err(e) => {
            error_line!("{}: {e}", args.pipeline.display());
            return exit::RUN_FAILED;
        }
    };
    let run_id = run_id(Utc::now());
    let session = match &object_state {
        Some(state) => match state.begin(&run_id).await {
            Ok(session) => Some(session),
            Err(e) => {
                return remote_state::report(&args.pipeline, &e);
            }
        },
        None => None,
    };
    // A worker plans from every worker's ledger: with the state in an object store, copies of
    // the others' are fetched (read only) once this worker holds its lock.
    let peers = match &object_state {
        Some(state) if file.worker().is_some() => match state.fetch_peer_ledgers().await {
            Ok(peers) => Some(peers),
            Err(e) => {
                if let Some(session) = session {
                    let _ = session.finish().await;
                }
                return remote_state::report(&args.pipeline, &e);
            }
        },
        _ => None,
    };
    let code = run_locked(
        args,
        file,
        &store,
        session.as_ref(),
        run_id,
        peers.as_ref().map(|p| p.path().to_path_buf()),
        facts,
    )
    .await;
    match session.map(remote_state::Session::finish) {
        Some(finished) => match finished.await {
            Ok(()) => code,
            Err(e) => {
                error_line!("{}: {e}", args.pipeline.display());
                if code == exit::OK {
                    exit::RUN_FAILED
                } else {
                    code
                }
            }
        },
        None => code,
    }
}

/// The run, once it holds the pipeline's lock.
async fn run_locked(
    args: &RunArgs,
    file: PipelineFile,
    store: &StateStore,
    session: Option<&remote_state::Session>,
    run_id: String,
    peer_ledgers: Option<PathBuf>,
    facts: &mut RunFacts,
) -> u8 {
    if args.full_refresh {
        // Every window waits to be loaded again; its files stay in the lake until the window
        // that replaces it commits, so a refresh that fails part-way loses nothing.
        match store.reset(None) {
            Ok(sources) => tracing::info!(
                sources = ?sources.iter().map(|r| &r.source).collect::<Vec<_>>(),
                "--full-refresh: every window waits to be loaded again; earlier files stay until replaced"
            ),
            Err(e) => {
                error_line!("--full-refresh: {e}");
                return exit::RUN_FAILED;
            }
        }
        // The store forgets too, before any sink starts removing files.
        if let Some(session) = session
            && let Err(e) = session.push().await
        {
            error_line!("--full-refresh: {e}");
            return exit::RUN_FAILED;
        }
    }
    let emulator = if args.emulate {
        match Emulator::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            args.emulator.config(),
        )
        .await
        {
            Ok(e) => {
                tracing::info!(url = %e.base_url(), "emulator started");
                Some(e)
            }
            Err(e) => {
                error_line!("cannot start the emulator: {e}");
                return exit::RUN_FAILED;
            }
        }
    } else {
        None
    };
    let opts = BuildOptions {
        emulator: emulator.as_ref().map(profile),
        start: args.start,
        end: args.end,
        now: None,
        use_state: true,
        peer_ledgers,
    };
    let pipeline = match Pipeline::build(file, &registry(), &opts) {
        Ok(p) => p,
        Err(errors) => {
            print_config_errors(&errors);
            return exit::BAD_INPUT;
        }
    };
    for warning in pipeline.warnings() {
        tracing::warn!("{warning}");
    }
    let clashes = check_ledgers(&pipeline.file, store, |w| tracing::warn!("{w}"));
    if !clashes.is_empty() {
        for clash in clashes {
            error_line!("{}: {clash}", args.pipeline.display());
        }
        return exit::BAD_INPUT;
    }
    let run = Run::new(pipeline, run_id);
    let show_progress = args
        .progress
        .unwrap_or_else(|| std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let progress =
        show_progress.then(|| summary::Progress::start(run.metrics(), run.planned_windows()));
    let probe = run.probe();
    // SIGINT or SIGTERM (a person's Ctrl-C, Kubernetes stopping a Job) stops the run at once:
    // what committed stays, windows in flight are abandoned exactly as a crash would leave
    // them (every commit is write-then-rename-then-ledger), and the run is recorded as
    // interrupted. Waiting for windows in flight could outlast the scheduler's grace period.
    let summary = tokio::select! {
        summary = run.execute() => summary,
        cause = stop_signal() => {
            tracing::warn!(signal = cause, "stopping: windows in flight are abandoned; the next run fetches them again");
            probe.interrupted(cause)
        }
    };
    if let Some(p) = progress {
        p.finish().await;
    }
    if let Some(e) = emulator {
        e.shutdown().await;
    }
    summary::print(&summary);
    if crate::json_logs() {
        // One last event a log pipeline can key on, holding the whole summary.
        tracing::info!(
            run_id = %summary.run_id,
            status = ?summary.status,
            seconds = summary.seconds,
            summary = %serde_json::to_string(&summary).unwrap_or_default(),
            "run finished"
        );
    }
    let code = summary.status.exit_code() as u8;
    facts.summary = Some(summary);
    code
}

/// Waits for SIGINT or SIGTERM; names the one that came.
async fn stop_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// `state show`: per source, the windows committed and failed and the latest committed end.
pub async fn state_show(path: &Path, json: bool) -> u8 {
    let mut file = match PipelineFile::load(path) {
        Ok(f) => f,
        Err(errors) => {
            print_config_errors(&errors);
            return exit::BAD_INPUT;
        }
    };
    // An object-store state_dir is shown from a fresh copy (no lock: it only reads).
    let remote = match remote_state::snapshot(&mut file).await {
        Ok(remote) => remote,
        Err(e) => {
            return remote_state::report(path, &e);
        }
    };
    let store = StateStore::new(file.pipeline_state_dir());
    let ledgers = match store.all() {
        Ok(l) => l,
        Err(e) => {
            error_line!("{e}");
            return exit::RUN_FAILED;
        }
    };
    // The workers of sharded runs, each with its own ledgers (see `chatlake_core::shard`).
    let mut workers = std::collections::BTreeMap::new();
    match StateLayout::of_dir(store.dir()) {
        Ok(layout) => {
            for shard in layout.shards {
                match StateStore::new(store.dir().join(shard.dir_name())).all() {
                    Ok(l) => {
                        workers.insert(shard.to_string(), l);
                    }
                    Err(e) => {
                        error_line!("{e}");
                        return exit::RUN_FAILED;
                    }
                }
            }
        }
        Err(e) => {
            error_line!("{}: {e}", store.dir().display());
            return exit::RUN_FAILED;
        }
    }
    if json && !workers.is_empty() {
        let shards: std::collections::BTreeMap<String, _> = workers
            .iter()
            .map(|(shard, l)| (format!("shard {shard}"), l))
            .collect();
        match serde_json::to_string_pretty(&shards) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                error_line!("{e}");
                return exit::RUN_FAILED;
            }
        }
        return exit::OK;
    }
    if json {
        match serde_json::to_string_pretty(&ledgers) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                error_line!("{e}");
                return exit::RUN_FAILED;
            }
        }
        return exit::OK;
    }
    println!(
        "pipeline `{}`: state in {}",
        file.pipeline.name,
        remote
            .as_ref()
            .map_or_else(|| store.dir().display().to_string(), |r| r.url())
    );
    let last = std::fs::read(store.dir().join("last_run.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    if let Some(last) = &last {
        println!(
            "last run: {} {} at {}",
            last["run_id"].as_str().unwrap_or("?"),
            last["status"].as_str().unwrap_or("?"),
            last["finished_at"].as_str().unwrap_or("?")
        );
    }
    for source in pipeline_sources(&file) {
        let ledger = ledgers.get(source).cloned().unwrap_or_default();
        let committed = ledger
            .windows
            .values()
            .filter(|w| w.status == WindowStatus::Committed)
            .count();
        let failed: Vec<_> = ledger
            .windows
            .values()
            .filter(|w| w.status == WindowStatus::Failed)
            .collect();
        let mut streams: Vec<&str> = ledger.windows.values().map(|w| w.stream.as_str()).collect();
        streams.sort();
        streams.dedup();
        println!();
        println!(
            "source `{source}`: {committed} window(s) committed, {} failed, last run {}",
            failed.len(),
            ledger.last_run.as_deref().unwrap_or("-")
        );
        for stream in streams {
            let cursor = ledger
                .cursor(stream)
                .map(|c| c.to_rfc3339())
                .unwrap_or_else(|| "-".into());
            println!("  stream {stream}: committed through {cursor}");
        }
        for w in failed {
            println!("  failed: {} (run {})", w.label, w.run_id);
        }
        let reloading = ledger.reloading().count();
        if reloading > 0 {
            println!(
                "  {reloading} window(s) reset, waiting to be loaded again (their files stay in the lake until then)"
            );
        }
        if !ledger.checkpoints.is_empty() {
            println!("  open checkpoints: {}", ledger.checkpoints.len());
        }
    }
    // State of sources the file no longer has (renamed or removed): a renamed source would
    // load their range again; `rename-source` or `forget-source` settles them.
    let orphans: Vec<_> = ledgers
        .iter()
        .filter(|(name, _)| !pipeline_sources(&file).any(|s| s == name.as_str()))
        .collect();
    if !orphans.is_empty() {
        println!();
        println!("state of sources no longer in the pipeline file (renamed or removed):");
        for (name, ledger) in orphans {
            let (committed, range) = ledger.committed_summary();
            let range = range
                .map(|(s, e)| format!(" ({} .. {})", s.to_rfc3339(), e.to_rfc3339()))
                .unwrap_or_default();
            println!(
                "  source `{name}`: {committed} window(s) committed{range}, last run {}",
                ledger.last_run.as_deref().unwrap_or("-")
            );
        }
        println!(
            "  A source renamed from one of them loads its range again: `chatlake state \
             rename-source PIPELINE OLD NEW` continues it; `chatlake state forget-source PIPELINE \
             NAME` retires a removed one (its files stay in the lake)."
        );
    }
    match store.retired() {
        Ok(retired) if !retired.is_empty() => {
            println!();
            println!("retired sources (forgotten; their files stay in the lake):");
            for (name, ledger) in retired {
                println!(
                    "  source `{name}`: {} window(s) in the lake",
                    ledger.windows.len()
                );
            }
        }
        Ok(_) => {}
        Err(e) => crate::print_warning(format_args!("cannot list retired sources: {e}")),
    }
    for (name, ledger) in &ledgers {
        if let Some(keys) = &ledger.keys_from {
            println!();
            println!(
                "source `{name}` was renamed from `{keys}`: its windows' keys (and the lake's file names) keep `{keys}`"
            );
        }
    }
    for (shard, ledgers) in &workers {
        println!();
        println!("worker {shard} (run with --shard {shard}):");
        for source in pipeline_sources(&file) {
            let ledger = ledgers.get(source).cloned().unwrap_or_default();
            let count = |status| {
                ledger
                    .windows
                    .values()
                    .filter(|w| w.status == status)
                    .count()
            };
            println!(
                "  source `{source}`: {} window(s) committed, {} failed, {} unfinished, last run {}",
                count(WindowStatus::Committed),
                count(WindowStatus::Failed),
                ledger.started.len(),
                ledger.last_run.as_deref().unwrap_or("-")
            );
        }
    }
    // A run that stopped after committing rows that replace earlier ones, before the sinks took
    // the earlier versions out: the next run's start does it.
    match chatlake_core::removal::RemovalLog::new(store.dir()).logs() {
        Ok(logs) if !logs.is_empty() => {
            println!();
            println!(
                "{} removal log(s) not yet applied (the next run applies them before it fetches):",
                logs.len()
            );
            for log in logs {
                println!(
                    "  {} (run {}, {})",
                    log.path.display(),
                    log.run_id,
                    log.transform
                );
            }
        }
        Ok(_) => {}
        Err(e) => crate::print_warning(format_args!("cannot list removal logs: {e}")),
    }
    exit::OK
}

/// `state reset`: forgets one source's windows (or all): the next run loads them again. Nothing
/// in the lake is deleted here: the windows wait to be reloaded, and their files stay until the
/// windows that replace them commit. Lists what it forgets and asks first on a terminal. With an
/// object-store `state_dir` the state is fetched (taking the lock object, also for `--dry-run`)
/// and what changed is put back.
pub async fn state_reset(path: &Path, source: Option<&str>, yes: bool, dry_run: bool) -> u8 {
    let file = match PipelineFile::load(path) {
        Ok(f) => f,
        Err(errors) => {
            print_config_errors(&errors);
            return exit::BAD_INPUT;
        }
    };
    if let Some(name) = source
        && !pipeline_sources(&file).any(|s| s == name)
    {
        error_line!("{}: no source named `{name}`", path.display());
        return exit::BAD_INPUT;
    }
    change_state(path, file, dry_run, |file, store| {
        reset_locked(file, store, source, yes, dry_run)
    })
    .await
}

/// The names of a pipeline file's sources.
fn pipeline_sources(file: &PipelineFile) -> impl Iterator<Item = &str> {
    file.components
        .iter()
        .filter(|c| c.role == chatlake_core::config::Role::Source)
        .map(|c| c.name.as_str())
}

/// Runs `change` on a pipeline's state for a `state` command that changes it: the pipeline's
/// lock is taken first (not for a dry run), so what is listed is what is changed and no run
/// writes in between; an object-store `state_dir` is fetched as a working copy (taking its lock
/// object, also for a dry run) and what changed is put back, deleted ledgers included.
async fn change_state(
    path: &Path,
    mut file: PipelineFile,
    dry_run: bool,
    change: impl FnOnce(&PipelineFile, &StateStore) -> u8,
) -> u8 {
    match state_layout(path, &file).await {
        Ok(layout) if !layout.shards.is_empty() => {
            error_line!(
                "{}: the state holds the ledgers of sharded workers (--shard), which the `state` \
                 commands do not change yet (a reset: run the workers with --full-refresh)",
                path.display()
            );
            return exit::BAD_INPUT;
        }
        Ok(_) => {}
        Err(code) => return code,
    }
    let object_state = match ObjectState::open(&mut file, None).await {
        Ok(state) => state,
        Err(e) => {
            return remote_state::report(path, &e);
        }
    };
    let store = StateStore::new(file.pipeline_state_dir());
    let _lock = if dry_run {
        None
    } else {
        match store.lock() {
            Ok(lock) => Some(lock),
            Err(e) => {
                error_line!("{}: {e}", path.display());
                return exit::RUN_FAILED;
            }
        }
    };
    let session = match &object_state {
        Some(state) => match state.begin(&run_id(Utc::now())).await {
            Ok(session) => Some(session),
            Err(e) => {
                return remote_state::report(path, &e);
            }
        },
        None => None,
    };
    let code = change(&file, &store);
    match session.map(remote_state::Session::finish) {
        Some(finished) => match finished.await {
            Ok(()) => code,
            Err(e) => {
                error_line!("{}: {e}", path.display());
                exit::RUN_FAILED
            }
        },
        None => code,
    }
}

/// Asks `question` on a terminal. `Err(code)` when standard input is not a terminal (`command`
/// then needs `--yes` or `--dry-run`); `Ok(false)` for any answer but yes.
fn confirm(command: &str, question: &str) -> Result<bool, u8> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        error_line!(
            "standard input is not a terminal, so `{command}` cannot ask: \
             pass --yes to go ahead, or --dry-run to only list"
        );
        return Err(exit::BAD_INPUT);
    }
    print!("{question} [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    Ok(std::io::stdin().lock().read_line(&mut answer).is_ok()
        && matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// `state rename-source`: the state of `old` (a source renamed in the pipeline file) becomes
/// `new`'s, which goes on from where `old` stopped. The windows keep their keys, so the lake's
/// files, the dedupe history and the removal logs stay as they are and nothing is loaded twice.
pub async fn state_rename_source(path: &Path, old: &str, new: &str) -> u8 {
    let file = match PipelineFile::load(path) {
        Ok(f) => f,
        Err(errors) => {
            print_config_errors(&errors);
            return exit::BAD_INPUT;
        }
    };
    if !pipeline_sources(&file).any(|s| s == new) {
        error_line!(
            "{}: no source named `{new}`: rename the source in the pipeline file first",
            path.display()
        );
        return exit::BAD_INPUT;
    }
    if pipeline_sources(&file).any(|s| s == old) {
        error_line!(
            "{}: source `{old}` is still in the pipeline file: its state stays its own",
            path.display()
        );
        return exit::BAD_INPUT;
    }
    change_state(path, file, false, |file, store| {
        match store.rename_source(old, new) {
            Ok(renamed) => {
                println!(
                    "pipeline `{}`: source `{new}` took over the state of `{old}` ({} window(s)); \
                     the next run goes on from where `{old}` stopped",
                    file.pipeline.name, renamed.windows
                );
                if renamed.key_name != new {
                    println!(
                        "Its windows keep the keys of `{}`: the lake's file names still carry \
                         that name, and files of windows loaded from now on do too.",
                        renamed.key_name
                    );
                }
                exit::OK
            }
            Err(e @ chatlake_core::state::SourceStateError::State(_)) => {
                error_line!("{}: {e}", path.display());
                exit::RUN_FAILED
            }
            Err(e) => {
                error_line!("{}: {e}", path.display());
                exit::BAD_INPUT
            }
        }
    })
    .await
}

/// `state forget-source`: retires the state of a source removed from the pipeline file. Lists
/// what it forgets and asks first on a terminal; deletes nothing in the lake.
pub async fn state_forget_source(path: &Path, source: &str, yes: bool, dry_run: bool) -> u8 {
    let file = match PipelineFile::load(path) {
        Ok(f) => f,
        Err(errors) => {
            print_config_errors(&errors);
            return exit::BAD_INPUT;
        }
    };
    if pipeline_sources(&file).any(|s| s == source) {
        error_line!(
            "{}: source `{source}` is still in the pipeline file: remove it first, or use \
             `state reset --source {source}` to load it again",
            path.display()
        );
        return exit::BAD_INPUT;
    }
    change_state(path, file, dry_run, |file, store| {
        let ledgers = match store.all() {
            Ok(l) => l,
            Err(e) => {
                error_line!("{e}");
                return exit::RUN_FAILED;
            }
        };
        let Some(ledger) = ledgers.get(source) else {
            error_line!(
                "{}: there is no state of a source `{source}` (nothing was changed)",
                path.display()
            );
            return exit::BAD_INPUT;
        };
        let (committed, range) = ledger.committed_summary();
        let failed = ledger
            .windows
            .values()
            .filter(|w| w.status == WindowStatus::Failed)
            .count();
        println!(
            "pipeline `{}` (state in {}): {} source `{source}`",
            file.pipeline.name,
            store.dir().display(),
            if dry_run { "would forget" } else { "forgets" }
        );
        let range = range
            .map(|(s, e)| format!(" ({} .. {})", s.to_rfc3339(), e.to_rfc3339()))
            .unwrap_or_default();
        println!(
            "  {committed} committed window(s){range}, {} waiting to be reloaded, {failed} failed \
             window(s), {} open checkpoint(s)",
            ledger.reloading().count(),
            ledger.checkpoints.len()
        );
        println!(
            "Nothing is deleted from the lake: the files of its committed windows stay, and later \
             runs keep them. Its windows are kept in {}/ so they do.",
            store
                .dir()
                .join(chatlake_core::state::RETIRED_DIR)
                .display()
        );
        if dry_run {
            return exit::OK;
        }
        if !yes {
            match confirm("state forget-source", "Forget it?") {
                Ok(true) => {}
                Ok(false) => {
                    println!("nothing was forgotten");
                    return exit::OK;
                }
                Err(code) => return code,
            }
        }
        match store.forget_source(source) {
            Ok(_) => {
                println!("forgot source `{source}`; its files stay in the lake");
                exit::OK
            }
            Err(e) => {
                error_line!("{}: {e}", path.display());
                exit::RUN_FAILED
            }
        }
    })
    .await
}

/// Warns of the state of sources the pipeline file no longer has (`validate`, `run`), and
/// returns the sources that cannot run beside the ledgers (their windows would share keys with
/// a renamed source's), each as a message.
pub(crate) fn check_ledgers(
    file: &PipelineFile,
    store: &StateStore,
    warn: impl Fn(String),
) -> Vec<String> {
    match store.check_sources(pipeline_sources(file)) {
        Ok(check) => {
            for orphan in &check.orphans {
                warn(format!("{}: {orphan}", file.pipeline.name));
            }
            check.clashes.iter().map(ToString::to_string).collect()
        }
        Err(e) => {
            warn(format!(
                "cannot check the state for sources no longer in the pipeline file: {e}"
            ));
            Vec::new()
        }
    }
}

/// `state reset` once the state is at hand and locked: list, ask, forget.
fn reset_locked(
    file: &PipelineFile,
    store: &StateStore,
    source: Option<&str>,
    yes: bool,
    dry_run: bool,
) -> u8 {
    let preview = match store.reset_preview(source) {
        Ok(p) => p,
        Err(e) => {
            error_line!("{e}");
            return exit::RUN_FAILED;
        }
    };
    let forget: Vec<_> = preview.iter().filter(|r| !r.is_empty()).collect();
    if forget.is_empty() {
        println!("nothing to reset");
        return exit::OK;
    }
    println!(
        "pipeline `{}` (state in {}): {}",
        file.pipeline.name,
        store.dir().display(),
        if dry_run {
            "a reset would forget"
        } else {
            "a reset forgets"
        }
    );
    for r in &forget {
        let range = r
            .range
            .map(|(s, e)| format!(" ({} .. {})", s.to_rfc3339(), e.to_rfc3339()))
            .unwrap_or_default();
        println!(
            "  source `{}`: {} window(s) to load again{range}, {} failed window(s), {} open checkpoint(s)",
            r.source, r.reload, r.failed, r.checkpoints
        );
    }
    println!(
        "Their files stay in the lake until the next run loads these windows again; a window \
         that cannot be loaded again keeps its files."
    );
    if dry_run {
        return exit::OK;
    }
    if !yes {
        match confirm("state reset", "Forget them?") {
            Ok(true) => {}
            Ok(false) => {
                println!("nothing was reset");
                return exit::OK;
            }
            Err(code) => return code,
        }
    }
    match store.reset(source) {
        Ok(reset) if reset.is_empty() => println!("nothing to reset"),
        Ok(reset) => println!(
            "reset {}; the next run loads their windows again",
            reset
                .iter()
                .map(|r| r.source.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(e) => {
            error_line!("{e}");
            return exit::RUN_FAILED;
        }
    }
    exit::OK
}

/// `chatlake lake vacuum`: vacuums the table of every `delta` sink of the pipeline (or of
/// `only`), printing what was (or would be) deleted.
pub async fn lake_vacuum(
    path: &Path,
    only: Option<&str>,
    retention: std::time::Duration,
    dry_run: bool,
) -> u8 {
    use chatlake_core::SinkConfig as _;
    use chatlake_sink_delta::DeltaSinkConfig;
    let file = match PipelineFile::load(path) {
        Ok(f) => f,
        Err(errors) => {
            print_config_errors(&errors);
            return exit::BAD_INPUT;
        }
    };
    let sinks: Vec<_> = file
        .components
        .iter()
        .filter(|c| c.role == chatlake_core::config::Role::Sink)
        .filter(|c| c.type_name == DeltaSinkConfig::TYPE)
        .filter(|c| only.is_none_or(|name| c.name == name))
        .collect();
    if sinks.is_empty() {
        match only {
            Some(name) => error_line!("{}: no delta sink named `{name}`", path.display()),
            None => error_line!("{}: the pipeline has no delta sink", path.display()),
        }
        return exit::BAD_INPUT;
    }
    let mut code = exit::OK;
    for spec in sinks {
        let config: DeltaSinkConfig = match serde_json::from_value(spec.options.clone()) {
            Ok(c) => c,
            Err(e) => {
                error_line!("{}: {}: {e}", path.display(), spec.key());
                return exit::BAD_INPUT;
            }
        };
        match chatlake_sink_delta::maintenance::vacuum(
            &config,
            &file.pipeline.storage,
            retention,
            dry_run,
        )
        .await
        {
            Ok(done) => {
                let verb = if done.dry_run {
                    "would delete"
                } else {
                    "deleted"
                };
                println!(
                    "{}: {verb} {} files of {}",
                    spec.name,
                    done.files.len(),
                    config.path.display()
                );
                for f in &done.files {
                    println!("  {f}");
                }
            }
            Err(e) => {
                error_line!("{}: {e}", spec.key());
                code = exit::RUN_FAILED;
            }
        }
    }
    code
}
