//! The command-line front end: one file per subcommand, each with its clap `Args` and a
//! `run` function. Only this layer prints for people; the library returns data.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;

#[macro_use]
mod stdout;
mod calibrate;
mod compare;
mod load;
mod plan;
mod plan_day;
mod policies;
mod profile;
mod replay;
mod replay_shard;
mod replay_source;
mod request;
mod serve;
mod shards;
mod trace;

pub use plan::ThreadPool;

/// The catalogues a command reads: chips and models (embedded unless replaced) and engine
/// overlays on top (what `dujiang calibrate --out` writes).
#[derive(clap::Args, Debug)]
pub struct CatalogueArgs {
    /// Chip catalogue file (default: the built-in config/chips.toml).
    #[arg(long, value_name = "FILE")]
    pub chips: Option<std::path::PathBuf>,
    /// Model catalogue file (default: the built-in config/models.toml).
    #[arg(long, value_name = "FILE")]
    pub models: Option<std::path::PathBuf>,
    /// Engine catalogue overlay (e.g. what `dujiang calibrate --out` wrote); repeatable,
    /// later files win.
    #[arg(long, value_name = "FILE")]
    pub engines: Vec<std::path::PathBuf>,
}

impl CatalogueArgs {
    pub fn load(&self) -> anyhow::Result<crate::profile::Catalogue> {
        Ok(crate::profile::Catalogue::load_with_engines(
            self.chips.as_deref(),
            self.models.as_deref(),
            &self.engines,
        )?)
    }
}

#[derive(Parser, Debug)]
#[command(name = "dujiang", version, about = "Heterogeneous-accelerator LLM inference scheduler", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print a chip × model performance profile (prefill and decode sweeps, KV capacity).
    Profile(profile::Args),
    /// List the routing policies, one line each (`--params` for their parameters).
    Policies(policies::Args),
    /// Run the daemon: gRPC Inference/Admin, health, reflection, Prometheus /metrics.
    Serve(serve::Args),
    /// Send one chat request to a running daemon and print its token stream.
    Request(request::Args),
    /// Replay a trace (or a generated day) in virtual time through the scheduler; compare
    /// policies; `replay merge` adds up sharded runs.
    Replay(replay::Args),
    /// Plan the cheapest fleet that serves a trace within an SLO at a domestic-share floor.
    Plan(Box<plan::Args>),
    /// Trace tools: generate a synthetic trace, summarise a trace file.
    Trace(trace::Args),
    /// Open-loop load test of a running daemon from a trace or synthetic traffic.
    Load(load::Args),
    /// Two reports (replay or load JSON) side by side with relative differences.
    Compare(compare::Args),
    /// Fit the engine catalogue's coefficients to measured points; write an overlay.
    Calibrate(calibrate::Args),
}

/// Parses arguments, runs the subcommand, and turns an error into a message and exit code 1.
pub fn main() -> ExitCode {
    let cli = parse();
    let result = match cli.command {
        Command::Profile(args) => profile::run(args),
        Command::Policies(args) => policies::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Request(args) => request::run(args),
        Command::Plan(args) => plan::run(*args),
        Command::Trace(args) => trace::run(args),
        Command::Load(args) => load::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Calibrate(args) => calibrate::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if stdout::is_closed_stdout(&err) => ExitCode::from(stdout::CLOSED_STDOUT_EXIT),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Checks, before any work, that an output file named by `flag` can be created: its
/// directory exists and it is not itself a directory. A plan of minutes should not end in
/// "No such file or directory".
pub(crate) fn check_output(flag: &str, path: Option<&std::path::Path>) -> anyhow::Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !dir.is_dir() {
        anyhow::bail!(
            "{flag} {}: there is no directory {} to write it in",
            path.display(),
            dir.display()
        );
    }
    if path.is_dir() {
        anyhow::bail!("{flag} {}: is a directory", path.display());
    }
    Ok(())
}

/// Checks that a file the config file `config` names under `field` (its fleet, an engine
/// overlay) opens, and if not, blames the config file's line: the bare "fleet.toml: cannot
/// read" did not say where the name came from, nor that it is taken from the current
/// directory rather than the config file's.
pub(crate) fn check_config_path(
    config: &std::path::Path,
    field: &str,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let Err(e) = std::fs::File::open(path) else {
        return Ok(());
    };
    let name = config.display().to_string();
    let src = crate::config::read_text(config, &name).unwrap_or_default();
    Err(crate::config::ConfigError::at_field(
        &name,
        &src,
        field,
        format!(
            "{}: cannot read: {e} (a relative path is taken from the current directory)",
            path.display()
        ),
    )
    .into())
}

/// The command line, with negative numbers taken as values everywhere: `--rate-scale -1`
/// reaches the command's own check ("must be a positive number, got -1") rather than
/// clap's "unexpected argument '-1' found", which says the value was not even seen.
fn parse() -> Cli {
    fn negatives(cmd: clap::Command) -> clap::Command {
        cmd.allow_negative_numbers(true).mut_subcommands(negatives)
    }
    let matches = negatives(Cli::command()).get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}
