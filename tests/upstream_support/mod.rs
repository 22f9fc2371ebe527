//! Shared helpers for the proxy tests: `dujiang serve` processes as upstream "engines"
//! (each serves the OpenAI API on its own loopback port), fleet files of `kind = "openai"`
//! pools naming them, and a routing daemon started in-process in front of them.
#![allow(dead_code)]

#[path = "../serve_support/mod.rs"]
mod serve_support;
pub use serve_support::*;

use dujiang::serve::{RunningDaemon, ServeConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A fresh directory for one test's files.
pub fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dujiang-upstream-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The fleet every upstream engine runs: one simulated H20 serving llama-3-8b, so its
/// text is the daemon's placeholder word cycle and its pace the H20's model.
pub const ENGINE_FLEET: &str = r#"name = "engine"
model = "llama-3-8b"

[pools.h20]
chip = "h20"
count = 1
"#;

/// One upstream engine: a `dujiang serve` process.
pub struct Engine {
    pub child: Child,
    pub serving: Serving,
}

impl Engine {
    /// Starts an engine in `dir`; `openai` picks its OpenAI port (`127.0.0.1:0`: any).
    pub async fn start(dir: &Path, openai: &str) -> Engine {
        let fleet = dir.join("engine.toml");
        std::fs::write(&fleet, ENGINE_FLEET).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dujiang"));
        cmd.args(["serve", "--fleet"])
            .arg(&fleet)
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(["--admin-addr", "127.0.0.1:0", "--openai-addr", openai])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn dujiang serve");
        let out = Lines::read(child.stdout.take().unwrap());
        let serving = out
            .wait_for(Duration::from_secs(20), Serving::parse)
            .await
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("engine printed no serving line:\n{}", out.text())
            });
        Engine { child, serving }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.serving.openai)
    }

    /// SIGKILL: connections reset, the port refuses from now on.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fleet file with one `kind = "openai"` pool over `urls`.
pub fn proxy_fleet(urls: &[String], policy: &str) -> String {
    let list: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    format!(
        r#"name = "front"
model = "llama-3-8b"

[policy]
name = "{policy}"

[pools.real]
kind = "openai"
endpoints = [{}]
model = "llama-3-8b"
chip = "h20"
"#,
        list.join(", ")
    )
}

/// Starts a routing daemon in-process over `fleet` (written to `dir`).
pub async fn router(dir: &Path, fleet: &str, tune: impl FnOnce(&mut ServeConfig)) -> RunningDaemon {
    let path = dir.join("front.toml");
    std::fs::write(&path, fleet).unwrap();
    let mut cfg = config();
    cfg.fleet = path;
    cfg.upstream.probe_interval_ms = 100;
    tune(&mut cfg);
    start(cfg).await
}

/// One series' value from a /metrics text: `name{labels...}` containing every `has`.
pub fn series(text: &str, name: &str, has: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| has.iter().all(|h| l.contains(h)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

pub async fn metrics(addr: SocketAddr) -> String {
    http_get(addr, "/metrics").await.1
}

/// The sum of every series of `name` whose labels contain each of `has`.
pub fn sum_of(text: &str, name: &str, has: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| has.iter().all(|h| l.contains(h)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
