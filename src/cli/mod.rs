//! The command-line front end: one file per subcommand, each with its clap `Args` and a
//! `run` function. Only this layer prints for people; the library returns data.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod policies;
mod profile;
mod replay;
mod serve;
mod trace;

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
    /// Replay a trace in virtual time through the scheduler; compare policies.
    Replay(replay::Args),
    /// Trace tools: generate a synthetic trace, summarise a trace file.
    Trace(trace::Args),
}

/// Parses arguments, runs the subcommand, and turns an error into a message and exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Profile(args) => profile::run(args),
        Command::Policies(args) => policies::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Trace(args) => trace::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
