//! The `chatlake` command line (spec section 1). `main` maps every outcome to a documented exit
//! code: 0 success, 1 the run failed, 2 bad command line or pipeline file, 3 finished with
//! dead-lettered records, 130 interrupted (SIGINT or SIGTERM).

mod commands;
mod metrics_file;
mod otlp;
mod pipeline_test;
mod registry;
mod remote_state;
mod schema;
mod summary;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

pub use registry::registry;

/// Exit codes (spec section 1).
pub mod exit {
    pub const OK: u8 = 0;
    pub const RUN_FAILED: u8 = 1;
    pub const BAD_INPUT: u8 = 2;
    pub const DEAD_LETTERS: u8 = 3;
    /// Stopped by SIGINT or SIGTERM (128 + SIGINT, as shells report it).
    pub const INTERRUPTED: u8 = 130;
}

/// Whether logs are JSON (`--log-format json`): then errors printed for a person become JSON
/// log events too, so that every line on standard error parses.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints `error: …` for a person, or an `ERROR` event with `--log-format json`.
macro_rules! error_line {
    ($($arg:tt)*) => { $crate::print_error(format_args!($($arg)*)) };
}
pub(crate) use error_line;

pub(crate) fn print_error(message: std::fmt::Arguments<'_>) {
    if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::error!("{message}");
    } else {
        eprintln!("error: {message}");
    }
}

/// Prints `warning: …` for a person, or a `WARN` event with `--log-format json`.
pub(crate) fn print_warning(message: std::fmt::Arguments<'_>) {
    if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!("{message}");
    } else {
        eprintln!("warning: {message}");
    }
}

/// Whether logs are JSON lines.
pub(crate) fn json_logs() -> bool {
    JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed)
}

#[derive(Debug, Parser)]
#[command(
    name = "chatlake",
    version,
    about = "Pull message histories out of chat and messaging providers into a data lake."
)]
#[command(
    after_help = "Exit codes: 0 success; 1 the run failed (a window failed after retries, nothing of it \
committed); 2 bad command line or pipeline file; 3 finished, but records were dead-lettered; 130 \
interrupted by SIGINT or SIGTERM (windows in flight abandoned, as a crash leaves them)."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter (tracing env-filter syntax; default `info`, `warn` for `test`); RUST_LOG
    /// works too.
    #[arg(long, global = true)]
    log_level: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline.
    Run(commands::RunArgs),
    /// Load and check pipeline files without touching the network (test files, `x.tests.toml`,
    /// are checked as `test` checks them).
    Validate {
        #[arg(required = true)]
        pipelines: Vec<PathBuf>,
        /// Check the files as `run --emulate` would see them (emulator credentials).
        #[arg(long)]
        emulate: bool,
    },
    /// Print the graph and every request window each source would fetch (no network).
    Plan {
        pipeline: PathBuf,
        /// Like run's --start: overrides every source's start.
        #[arg(long, value_parser = commands::parse_time)]
        start: Option<chrono::DateTime<chrono::FixedOffset>>,
        /// Like run's --end.
        #[arg(long, value_parser = commands::parse_time)]
        end: Option<chrono::DateTime<chrono::FixedOffset>>,
        /// Plan as `run --emulate` would run (emulator URLs and credentials).
        #[arg(long)]
        emulate: bool,
        /// Plan worker K of N (K from 0): its share of the windows, as `run --shard` loads it.
        #[arg(long, value_name = "K/N", env = chatlake_core::shard::SHARD_VARIABLE)]
        shard: Option<chatlake_core::shard::Shard>,
    },
    /// List every registered source, transform and sink with its options and defaults.
    Components {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the tests of pipeline files: fixture inputs in, expected rows and assertions out.
    ///
    /// The tests of `p.toml` are in `p.tests.toml` (or `.tests.yaml`) next to it. Each runs the
    /// pipeline in a scratch directory (its own state directory and sink paths), with the named
    /// sources reading fixture files instead of their API. Exit 0 when every test passes, 1 when
    /// one fails (with a diff), 2 for a bad test or pipeline file.
    Test {
        /// Pipeline files (or their `.tests.toml` files).
        #[arg(required = true)]
        pipelines: Vec<PathBuf>,
        /// Keep each test's scratch directory (state, sink files, captured rows) and print it.
        #[arg(long)]
        keep: bool,
    },
    /// Maintain the Delta tables a pipeline's `delta` sinks write.
    Lake {
        #[command(subcommand)]
        command: LakeCommand,
    },
    /// Show or clear the incremental state (window ledger) of a pipeline.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Print the JSON Schema of pipeline files (for editors: Taplo, the YAML language server).
    Schema,
    /// Print a shell completion script.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `chatlake man > chatlake.1`, or write every page.
    Man {
        /// Write chatlake.1 and a page per subcommand (chatlake-run.1, ...) into this directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Serve the provider emulator standalone.
    Emulate {
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        #[command(flatten)]
        emulator: commands::EmulatorArgs,
    },
}

#[derive(Debug, Subcommand)]
enum LakeCommand {
    /// Delete data files no table version within the retention needs: files of replaced rows
    /// and dropped or reloaded windows, and files a killed run wrote but never committed.
    /// Time travel reaches back only as far as the retention. (Compaction, `optimize`, is not
    /// offered: see the README's "Tables and workers".)
    Vacuum {
        pipeline: PathBuf,
        /// Only this sink (default: every `delta` sink of the pipeline).
        #[arg(long)]
        sink: Option<String>,
        /// Keep files that left the table less than this long ago (e.g. `7days`, `24h`).
        #[arg(long, default_value = "7days", value_parser = humantime::parse_duration)]
        retention: std::time::Duration,
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// Per source: windows committed and failed, how far each stream is loaded.
    Show {
        pipeline: PathBuf,
        /// Print the ledgers as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Forget the windows of every source, or of one: the next run loads them again. Their
    /// files stay in the lake until the windows that replace them commit.
    Reset {
        pipeline: PathBuf,
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// Do not ask for confirmation (required when standard input is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
        /// Only list what would be forgotten.
        #[arg(long, conflicts_with = "yes")]
        dry_run: bool,
    },
    /// Give a renamed source the state of its old name: it goes on from where the old name
    /// stopped, with nothing loaded twice (the lake's files keep their names).
    RenameSource {
        pipeline: PathBuf,
        /// The name the state holds, no longer in the pipeline file.
        old: String,
        /// The source's name in the pipeline file now.
        new: String,
    },
    /// Retire the state of a source removed from the pipeline file: no warning of it any more.
    /// Its files stay in the lake (chatlake never deletes them).
    ForgetSource {
        pipeline: PathBuf,
        /// The source, no longer in the pipeline file.
        source: String,
        /// Do not ask for confirmation (required when standard input is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
        /// Only list what would be forgotten.
        #[arg(long, conflicts_with = "yes")]
        dry_run: bool,
    },
}

/// Entry point of the `chatlake` binary.
pub fn main() -> ExitCode {
    let _ = chatlake_allocator::tune();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::BAD_INPUT
            } else {
                exit::OK
            });
        }
    };
    // A test run's info lines would bury the results; its warnings still show.
    let default_level = match cli.command {
        Command::Test { .. } => "warn",
        _ => "info",
    };
    init_logging(
        cli.log_format,
        cli.log_level.as_deref().unwrap_or(default_level),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error_line!("cannot start the async runtime: {e}");
            return ExitCode::from(exit::RUN_FAILED);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => commands::run(args).await,
            Command::Validate { pipelines, emulate } => {
                commands::validate(&pipelines, emulate).await
            }
            Command::Plan {
                pipeline,
                start,
                end,
                emulate,
                shard,
            } => commands::plan(&pipeline, start, end, emulate, shard).await,
            Command::Components { json } => commands::components(json),
            Command::Test { pipelines, keep } => pipeline_test::test(&pipelines, keep).await,
            Command::Schema => commands::schema(),
            Command::Completions { shell } => commands::completions(shell),
            Command::Man { dir } => commands::man(dir.as_deref()),
            Command::Emulate { addr, emulator } => commands::emulate(addr, emulator).await,
            Command::Lake {
                command:
                    LakeCommand::Vacuum {
                        pipeline,
                        sink,
                        retention,
                        dry_run,
                    },
            } => commands::lake_vacuum(&pipeline, sink.as_deref(), retention, dry_run).await,
            Command::State {
                command: StateCommand::Show { pipeline, json },
            } => commands::state_show(&pipeline, json).await,
            Command::State {
                command:
                    StateCommand::Reset {
                        pipeline,
                        source,
                        yes,
                        dry_run,
                    },
            } => commands::state_reset(&pipeline, source.as_deref(), yes, dry_run).await,
            Command::State {
                command: StateCommand::RenameSource { pipeline, old, new },
            } => commands::state_rename_source(&pipeline, &old, &new).await,
            Command::State {
                command:
                    StateCommand::ForgetSource {
                        pipeline,
                        source,
                        yes,
                        dry_run,
                    },
            } => commands::state_forget_source(&pipeline, &source, yes, dry_run).await,
        }
    });
    ExitCode::from(code)
}

fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    // deltalake logs every commit at info and its kernel an ERROR ("No files in log segment")
    // whenever a table is created; a lost commit race is a warning there and routine here.
    // Unless the filter names them, they say only what goes wrong.
    let level = if level.contains("deltalake") || level.contains("kernel") {
        level.to_string()
    } else {
        format!("{level},deltalake_core=error,buoyant_kernel=off")
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&level));
    // Colour only for a person at a terminal (and never with NO_COLOR set): a scheduler's log
    // file gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(summary::LogWriter)
        .with_ansi(colour);
    JSON_LOGS.store(
        matches!(format, LogFormat::Json),
        std::sync::atomic::Ordering::Relaxed,
    );
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
