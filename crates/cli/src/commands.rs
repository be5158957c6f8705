//! The subcommands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chatlake_core::Secret;
use chatlake_core::config::{ConfigErrors, PipelineFile};
use chatlake_core::graph::{BuildOptions, Pipeline, Stage};
use chatlake_core::metrics::RunSummary;
use chatlake_core::runtime::Run;
use chatlake_core::stage::EmulatorProfile;
use chatlake_core::state::{StateStore, WindowStatus};
use chatlake_emulator::{Emulator, EmulatorConfig, Faults};
use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use clap::{Args, CommandFactory};

use crate::exit;
use crate::registry::registry;
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
        eprintln!("error: {e}");
    }
}

fn load(path: &Path, opts: &BuildOptions) -> Result<Pipeline, ConfigErrors> {
    let file = PipelineFile::load(path)?;
    Pipeline::build(file, &registry(), opts)
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
        eprintln!("error: cannot start the emulator: {e}");
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
            Ok(p) => println!(
                "{}: ok (pipeline `{}`, {} components)",
                path.display(),
                p.name(),
                p.nodes.len()
            ),
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
    let pipeline = match load(path, &opts) {
        Ok(p) => p,
        Err(errors) => {
            print_config_errors(&errors);
            return exit::BAD_INPUT;
        }
    };
    println!("pipeline `{}` ({})", pipeline.name(), path.display());
    println!("state: {}", pipeline.pipeline_state_dir().display());
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
                println!(
                    "source `{}`: {} window(s) to fetch",
                    node.spec.name,
                    windows.len()
                );
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
                eprintln!("error: {}: {e}", node.spec.name);
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
                eprintln!("error: {e}");
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
            eprintln!("error: {e}");
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
                Some(dir) => eprintln!("error: {}: {e}", dir.display()),
                None => eprintln!("error: {e}"),
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
            eprintln!("error: cannot start the emulator on {addr}: {e}");
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
        eprintln!("error: --metrics-file {e}");
        return exit::BAD_INPUT;
    }
    let mut facts = RunFacts::default();
    let code = run_pipeline(&args, &mut facts).await;
    let Some(path) = &args.metrics_file else {
        return code;
    };
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
    match metrics_file::write(path, &report) {
        Ok(()) => code,
        Err(e) => {
            // A scheduler watching the file would not see this run: fail it, so it is noticed
            // (what the run committed stays committed).
            eprintln!("error: --metrics-file {e}");
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
    let file = match PipelineFile::load(&args.pipeline) {
        Ok(f) => f,
        Err(errors) => {
            print_config_errors(&errors);
            return exit::BAD_INPUT;
        }
    };
    facts.pipeline = Some(file.pipeline.name.clone());
    facts.sources = file
        .components
        .iter()
        .filter(|c| c.role == chatlake_core::config::Role::Source)
        .map(|c| c.name.clone())
        .collect();
    let store = StateStore::new(file.pipeline_state_dir());
    facts.store = Some(store.clone());
    // Held until the run ends: planning reads the ledger, so it is taken before the build.
    let _lock = match store.lock() {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("error: {}: {e}", args.pipeline.display());
            return exit::RUN_FAILED;
        }
    };
    if args.full_refresh {
        // The lake holds exactly the ledger's windows, so forgetting them makes every sink remove
        // this pipeline's files when it starts, and the whole range is loaded again.
        match store.reset(None) {
            Ok(sources) => tracing::info!(
                ?sources,
                "--full-refresh: forgot the ledger; loading everything again"
            ),
            Err(e) => {
                eprintln!("error: --full-refresh: {e}");
                return exit::RUN_FAILED;
            }
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
                eprintln!("error: cannot start the emulator: {e}");
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
    };
    let pipeline = match Pipeline::build(file, &registry(), &opts) {
        Ok(p) => p,
        Err(errors) => {
            print_config_errors(&errors);
            return exit::BAD_INPUT;
        }
    };
    let run = Run::new(pipeline, run_id(Utc::now()));
    let show_progress = args
        .progress
        .unwrap_or_else(|| std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let progress = show_progress.then(|| summary::Progress::start(run.metrics()));
    let summary = run.execute().await;
    if let Some(p) = progress {
        p.finish().await;
    }
    if let Some(e) = emulator {
        e.shutdown().await;
    }
    summary::print(&summary);
    let code = summary.status.exit_code() as u8;
    facts.summary = Some(summary);
    code
}

/// `state show`: per source, the windows committed and failed and the latest committed end.
pub fn state_show(path: &Path, json: bool) -> u8 {
    let file = match PipelineFile::load(path) {
        Ok(f) => f,
        Err(errors) => {
            print_config_errors(&errors);
            return exit::BAD_INPUT;
        }
    };
    let store = StateStore::new(file.pipeline_state_dir());
    let ledgers = match store.all() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::RUN_FAILED;
        }
    };
    if json {
        match serde_json::to_string_pretty(&ledgers) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return exit::RUN_FAILED;
            }
        }
        return exit::OK;
    }
    println!(
        "pipeline `{}`: state in {}",
        file.pipeline.name,
        store.dir().display()
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
    let sources: Vec<&str> = file
        .components
        .iter()
        .filter(|c| c.role == chatlake_core::config::Role::Source)
        .map(|c| c.name.as_str())
        .collect();
    for source in sources {
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
        if !ledger.checkpoints.is_empty() {
            println!("  open checkpoints: {}", ledger.checkpoints.len());
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
        Err(e) => eprintln!("warning: cannot list removal logs: {e}"),
    }
    exit::OK
}

/// `state reset`: forgets one source's windows (or all); the next run loads them again and the
/// sinks remove their files when they start.
pub fn state_reset(path: &Path, source: Option<&str>) -> u8 {
    let file = match PipelineFile::load(path) {
        Ok(f) => f,
        Err(errors) => {
            print_config_errors(&errors);
            return exit::BAD_INPUT;
        }
    };
    if let Some(name) = source
        && !file
            .components
            .iter()
            .any(|c| c.role == chatlake_core::config::Role::Source && c.name == name)
    {
        eprintln!("error: {}: no source named `{name}`", path.display());
        return exit::BAD_INPUT;
    }
    let store = StateStore::new(file.pipeline_state_dir());
    let _lock = match store.lock() {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return exit::RUN_FAILED;
        }
    };
    match store.reset(source) {
        Ok(reset) if reset.is_empty() => println!("nothing to reset"),
        Ok(reset) => println!(
            "reset {}; the next run loads their windows again",
            reset.join(", ")
        ),
        Err(e) => {
            eprintln!("error: {e}");
            return exit::RUN_FAILED;
        }
    }
    exit::OK
}
