//! The `dujiang` command: see `dujiang --help`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    dujiang::cli::main()
}
