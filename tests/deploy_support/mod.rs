//! Shared helpers for the `deploy/` tests: run the real `dujiang` binary on free ports and
//! put load on it, find Prometheus' tools, and pull metric names out of the PromQL in the
//! rule files and the Grafana dashboard.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[path = "../serve_support/mod.rs"]
mod serve_support;
// Not every deploy test uses every helper.
#[allow(unused_imports)]
pub use serve_support::{
    eventually, generate, http_get, inference, request, spawn_prometheus, spawn_serve,
};

pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub fn read(path: &str) -> String {
    let p = repo(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// The rule files CI checks (`deploy/prometheus/*.rules.yml`), sorted.
pub fn rule_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("deploy/prometheus"))
        .expect("deploy/prometheus exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".rules.yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no deploy/prometheus/*.rules.yml");
    files
}

/// A Prometheus tool from Debian's `prometheus` package. Missing tools fail the test: a
/// silent skip would stop checking the deploy files without anyone noticing.
pub fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` is not on PATH: run the tests with ./test.sh, which installs \
             Debian's `prometheus` package on first use"
        )
    })
}

/// A loopback port nothing listens on, for a check that a connection is refused. Bound and
/// released, so never hand it to a server (another test may take it meanwhile): servers
/// bind port 0 themselves and report what they got ([`spawn_serve`], [`spawn_prometheus`]).
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process that is killed when the test ends, however it ends.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real `dujiang serve` binary on free loopback ports.
pub struct Daemon {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    _process: Process,
    _dir: TempDir,
}

/// Starts `dujiang serve` with `serve_toml` as its config file (listen addresses are
/// overridden on the command line: port 0, reported back by the daemon) and waits until
/// `/readyz` answers 200.
pub async fn start_daemon(serve_toml: &str, extra: &[&str]) -> Daemon {
    let dir = TempDir::new("daemon");
    let config = dir.0.join("serve.toml");
    std::fs::write(&config, serve_toml).unwrap();
    let (child, serving, _stdout) = spawn_serve(
        Command::new(env!("CARGO_BIN_EXE_dujiang"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::inherit()),
    )
    .await;
    let process = Process(child);
    let (grpc, http) = (serving.grpc, serving.http);
    let up = eventually(Duration::from_secs(15), async || {
        tokio::net::TcpStream::connect(http).await.is_ok()
            && http_get(http, "/readyz").await.0 == 200
    })
    .await;
    assert!(up, "dujiang serve did not become ready on {http}");
    Daemon {
        grpc,
        http,
        _process: process,
        _dir: dir,
    }
}

/// Sends `n` concurrent Generate streams of a few tokens each and returns how many ended
/// with RESOURCE_EXHAUSTED (shed). Every other stream must finish.
pub async fn burst(grpc: SocketAddr, n: u32) -> u32 {
    let c = inference(grpc).await;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move {
                generate(
                    &mut c,
                    tonic::Request::new(request(100 + 20 * i, 3 + i % 5)),
                )
                .await
            })
        })
        .collect();
    let mut shed = 0;
    for t in tasks {
        let seen = t.await.unwrap();
        match seen.status {
            Some(s) if s.code() == tonic::Code::ResourceExhausted => shed += 1,
            Some(s) => panic!("unexpected status {s:?}"),
            None => assert_eq!(seen.finished_count, 1, "stream finished"),
        }
    }
    shed
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("dujiang-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Identifiers in PromQL-ish text: `[a-zA-Z_:][a-zA-Z0-9_:]*`, in order of appearance.
fn identifiers(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start_ok = c.is_ascii_alphabetic() || c == b'_' || c == b':';
        // An identifier does not start in the middle of a number or of another word.
        let prev_ok = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if start_ok && prev_ok {
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            out.push(&text[s..i]);
        } else {
            i += 1;
        }
    }
    out
}

/// Raw metric names (`dujiang_…`, no colon) referenced in `text`.
pub fn raw_metric_names(text: &str) -> BTreeSet<String> {
    identifiers(text)
        .into_iter()
        .filter(|t| t.starts_with("dujiang_") && !t.contains(':'))
        .map(str::to_string)
        .collect()
}

/// Recording-rule names (`level:metric:operation`) referenced in `text`: identifiers with
/// a colon inside (a trailing colon is YAML's key separator, not a name).
pub fn recorded_names(text: &str) -> BTreeSet<String> {
    identifiers(text)
        .into_iter()
        .map(|t| t.trim_end_matches(':'))
        .filter(|t| t.contains(':') && !t.starts_with(':'))
        .map(str::to_string)
        .collect()
}

/// Rule-file text without whole-line comments (prose may discuss metrics that do not exist
/// yet; expressions, labels and annotations may not).
pub fn without_comments(yaml: &str) -> String {
    yaml.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The values of `- record: NAME` and `- alert: NAME` lines, as (kind, name).
pub fn rule_names(yaml: &str) -> Vec<(&'static str, String)> {
    yaml.lines()
        .filter_map(|l| {
            let l = l.trim_start().strip_prefix("- ")?;
            let (kind, rest) = if let Some(r) = l.strip_prefix("record:") {
                ("record", r)
            } else {
                ("alert", l.strip_prefix("alert:")?)
            };
            Some((kind, rest.trim().to_string()))
        })
        .collect()
}

/// Every string value in a JSON document, depth first.
pub fn json_strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| json_strings(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| json_strings(x, out)),
        _ => {}
    }
}

/// The PromQL queries of a Grafana dashboard: every `expr` and every variable query.
pub fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Array(a) => a.iter().for_each(|x| dashboard_queries(x, out)),
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                match (k.as_str(), x) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::Object(q)) => {
                        if let Some(serde_json::Value::String(s)) = q.get("query") {
                            out.push(s.clone());
                        }
                    }
                    _ => dashboard_queries(x, out),
                }
            }
        }
        _ => {}
    }
}

/// A Prometheus text exposition: sample names and each family's `# TYPE`.
pub struct Scrape {
    pub samples: BTreeSet<String>,
    pub types: std::collections::BTreeMap<String, String>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut samples = BTreeSet::new();
        let mut types = std::collections::BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    types.insert(name.to_string(), kind.to_string());
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                samples.insert(line[..end].to_string());
            }
        }
        Scrape { samples, types }
    }

    /// Whether a PromQL selector on `name` can match anything in this scrape, and if not,
    /// why. A histogram `h` is exposed only as `h_bucket`, `h_sum` and `h_count`: the bare
    /// family name selects nothing, and `_bucket` on a counter is not a series either.
    pub fn check(&self, name: &str) -> Result<(), String> {
        if self.samples.contains(name) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| self.types.get(*f).is_some_and(|t| t == "histogram"));
            let kind = family
                .map(|f| self.types[f].as_str())
                .or_else(|| self.types.get(name).map(String::as_str));
            return match kind {
                Some(_) => Ok(()),
                None => Err(format!("`{name}` is exposed without a # TYPE line")),
            };
        }
        if self.types.get(name).is_some_and(|t| t == "histogram") {
            return Err(format!(
                "`{name}` is a histogram: query `{name}_bucket`, `{name}_sum` or `{name}_count`"
            ));
        }
        Err(format!("`{name}` is not in the daemon's /metrics"))
    }
}

/// Reads the PromQL in the rule files and the dashboard: (raw names, recorded names used,
/// recorded names defined), each with where it was found.
pub struct DeployQueries {
    pub raw: Vec<(String, String)>,
    pub recorded_used: Vec<(String, String)>,
    pub recorded_defined: BTreeSet<String>,
}

pub fn deploy_queries() -> DeployQueries {
    let mut q = DeployQueries {
        raw: Vec::new(),
        recorded_used: Vec::new(),
        recorded_defined: BTreeSet::new(),
    };
    for file in rule_files() {
        let where_ = file
            .strip_prefix(repo(""))
            .unwrap_or(&file)
            .display()
            .to_string();
        let text = std::fs::read_to_string(&file).unwrap();
        for (kind, name) in rule_names(&text) {
            if kind == "record" {
                q.recorded_defined.insert(name);
            }
        }
        let body = without_comments(&text);
        q.raw.extend(
            raw_metric_names(&body)
                .into_iter()
                .map(|n| (n, where_.clone())),
        );
        q.recorded_used.extend(
            recorded_names(&body)
                .into_iter()
                .map(|n| (n, where_.clone())),
        );
    }
    let dash: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/dujiang.json")).expect("dashboard is JSON");
    let mut all = Vec::new();
    json_strings(&dash, &mut all);
    let text = all.join("\n");
    let where_ = "deploy/grafana/dujiang.json".to_string();
    q.raw.extend(
        raw_metric_names(&text)
            .into_iter()
            .map(|n| (n, where_.clone())),
    );
    q.recorded_used.extend(
        recorded_names(&text)
            .into_iter()
            .map(|n| (n, where_.clone())),
    );
    q
}

/// Percent-encodes a query-string value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
