//! Standard output for the commands. Rust ignores SIGPIPE, so `print!` to a reader that
//! has gone (`dujiang replay … | head -3`) panics with a backtrace, and a writer gets
//! "Broken pipe" as an error like any other. Everything a command prints goes through
//! [`stdout`] (or the [`out!`] / [`outln!`] macros), whose writes fail with
//! [`ClosedStdout`] instead; [`super::main`] ends such a command quietly with status 141,
//! as SIGPIPE ends other Unix tools (`yes | head`). A broken pipe on any other stream (a
//! load test's connection) stays an error.

use std::io::{self, Write};

/// Exit status of a command whose reader went away: what a shell reports for a process
/// ended by SIGPIPE (128 + 13).
pub const CLOSED_STDOUT_EXIT: u8 = 141;

/// The reader of standard output has gone.
#[derive(Debug)]
pub struct ClosedStdout;

impl std::fmt::Display for ClosedStdout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for ClosedStdout {}

/// Locked standard output whose broken-pipe errors carry [`ClosedStdout`].
pub struct Stdout(io::StdoutLock<'static>);

pub fn stdout() -> Stdout {
    Stdout(io::stdout().lock())
}

fn mark(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        io::Error::new(io::ErrorKind::BrokenPipe, ClosedStdout)
    } else {
        e
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(mark)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf).map_err(mark)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(mark)
    }
}

/// Whether `err` (anywhere in its chain) is a write to a closed standard output.
pub fn is_closed_stdout(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.is::<ClosedStdout>()
            || c.downcast_ref::<io::Error>()
                .and_then(|e| e.get_ref())
                .is_some_and(|inner| inner.is::<ClosedStdout>())
    })
}

/// `print!` through [`stdout`]: an `io::Result` to `?`, not a panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!($crate::cli::stdout::stdout(), $($arg)*)
    }};
}

/// `println!` through [`stdout`]: an `io::Result` to `?`, not a panic.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!($crate::cli::stdout::stdout(), $($arg)*)
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_marked_broken_pipe_is_a_closed_stdout() {
        let marked = anyhow::Error::from(mark(io::Error::from(io::ErrorKind::BrokenPipe)))
            .context("writing the trace");
        assert!(is_closed_stdout(&marked));
        // A broken pipe elsewhere (a socket) is an error to report.
        let socket = anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(!is_closed_stdout(&socket));
        let other = anyhow::Error::from(mark(io::Error::from(io::ErrorKind::PermissionDenied)));
        assert!(!is_closed_stdout(&other));
    }
}
