//! Running the `dujiang` binary as a user does, for the command-line tests: run it from
//! the crate root, expect success (showing both streams when it fails) or a failure whose
//! message says what it should, and scratch files under a directory of the test process.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn dujiang(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dujiang"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("runs the binary")
}

/// Stdout of a run that must succeed.
pub fn ok(args: &[&str]) -> String {
    let out = dujiang(args);
    assert!(
        out.status.success(),
        "{args:?}: exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A run that must fail, saying `says` on stderr.
pub fn fails(args: &[&str], says: &str) {
    let out = dujiang(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(stderr.contains(says), "{args:?}: {stderr}");
}

/// `name` in this test process's own scratch directory `dujiang-{suite}-{pid}`.
pub fn tmp(suite: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dujiang-{suite}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `dujiang serve` flags putting every listener on a free port, so a daemon that does
/// start cannot collide with another (for the tests that expect it to refuse first).
#[allow(dead_code)] // the serve tests' only
pub const FREE_PORTS: &[&str] = &[
    "--grpc-addr",
    "127.0.0.1:0",
    "--admin-addr",
    "127.0.0.1:0",
    "--http-addr",
    "127.0.0.1:0",
    "--openai-addr",
    "127.0.0.1:0",
];
