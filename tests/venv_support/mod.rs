//! The Python virtualenvs that tests drive real tools from (the `openai` SDK, AIPerf,
//! llama.cpp's server). `./test.sh` installs each under $DUJIANG_CACHE on first use and
//! exports its python; under a plain `cargo test` a test makes the venv itself through
//! `./test.sh --setup NAME`, and fails naming that command if it cannot. Nothing is skipped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The python of the venv `./test.sh --setup <setup>` makes: `env` when test.sh exported
/// it, else the path test.sh's set-up prints (made now if missing), once per test binary.
pub fn python(env: &str, setup: &str) -> PathBuf {
    static MADE: parking_lot::Mutex<Option<HashMap<String, PathBuf>>> =
        parking_lot::const_mutex(None);
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let mut made = MADE.lock();
    let made = made.get_or_insert_with(HashMap::new);
    if let Some(p) = made.get(setup) {
        return p.clone();
    }
    let out = std::process::Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("test.sh"))
        .args(["--setup", setup])
        .output()
        .unwrap_or_else(|e| panic!("running bash test.sh --setup {setup}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout.lines().last().unwrap_or("").trim().to_string();
    assert!(
        out.status.success() && !path.is_empty(),
        "no {setup}: `./test.sh --setup {setup}` failed ({}):\n{}\n\
         Run the tests with ./test.sh, which sets up what they need.",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    made.insert(setup.to_string(), PathBuf::from(&path));
    PathBuf::from(path)
}
