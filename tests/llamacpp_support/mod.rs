//! A real engine for the tests: llama.cpp through `llama-cpp-python`'s OpenAI-compatible
//! server (pinned in test.sh, built into $DUJIANG_CACHE/llama-venv), serving a tiny
//! random-weight Llama GGUF that tests/python/make_tiny_gguf.py writes (no weights are
//! downloaded). [`LlamaServer::start`] runs one on a free loopback port and waits until
//! `/v1/models` answers; dropping it kills the process.
//!
//! The venv comes from `./test.sh` (which exports `DUJIANG_LLAMA_PYTHON`); under a plain
//! `cargo test` it is made here through `./test.sh --setup llama-venv` (the first time
//! compiles llama.cpp: minutes). A failure names the command; nothing is skipped.
#![allow(dead_code)]
#[path = "../venv_support/mod.rs"]
mod venv;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The model name the servers answer to (`--model_alias`).
pub const MODEL: &str = "tiny-llama";

/// How long a server may take to load the model and answer `/v1/models`.
const START_LIMIT: Duration = Duration::from_secs(90);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The llama venv's python.
pub fn python() -> PathBuf {
    venv::python("DUJIANG_LLAMA_PYTHON", "llama-venv")
}

/// Writes the tiny model into `dir` (seeded: the same file every time) and returns its path.
pub fn tiny_gguf(dir: &Path) -> PathBuf {
    let path = dir.join("tiny-llama.gguf");
    let out = Command::new(python())
        .arg(repo("tests/python/make_tiny_gguf.py"))
        .arg(&path)
        .output()
        .expect("running make_tiny_gguf.py");
    assert!(
        out.status.success(),
        "make_tiny_gguf.py failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// A free loopback port (bound, then released for the server to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// One llama.cpp OpenAI server process.
pub struct LlamaServer {
    pub addr: SocketAddr,
    model: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl LlamaServer {
    /// Starts a server for `model` on a free port and waits until it answers.
    pub async fn start(model: &Path) -> LlamaServer {
        // Another process may take the port between probe and bind: try a few.
        let mut last = String::new();
        for attempt in 0..3 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let log = model.with_file_name(format!("server-{}-{attempt}.log", addr.port()));
            let mut server = LlamaServer {
                addr,
                model: model.to_path_buf(),
                log,
                child: None,
            };
            match server.spawn_and_wait().await {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("llama.cpp server did not start: {last}");
    }

    /// The OpenAI base URL (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Kills the process (as a crash would: SIGKILL, no goodbye to open connections).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same port and waits until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn_and_wait().await {
            panic!("llama.cpp server did not restart on {}: {e}", self.addr);
        }
    }

    /// What the server printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(&self.log).map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let port = self.addr.port().to_string();
        let child = Command::new(python())
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(&self.model)
            .args([
                "--model_alias",
                MODEL,
                "--host",
                "127.0.0.1",
                "--port",
                &port,
            ])
            // Single-threaded: the machine has two cores for everything. The context is
            // long enough for a stream that lasts seconds (the tiny model makes a token in
            // about a millisecond), for tests that act in the middle of one.
            .args([
                "--n_ctx",
                "4096",
                "--n_threads",
                "1",
                "--n_threads_batch",
                "1",
            ])
            .args(["--n_batch", "64", "--verbose", "false"])
            // The server's default cuts a running stream short (`[DONE]`) whenever another
            // request arrives; an engine behind a router must queue them instead.
            .args(["--interrupt_requests", "false"])
            // Its prints (e.g. "disconnected" when a client goes away) reach the log at once.
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", python().display()))?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "exited ({status}) before answering:\n{}",
                    self.log()
                ));
            }
            if let Ok((200, _)) = http_get(self.addr, "/v1/models").await {
                return Ok(());
            }
            if started.elapsed() > START_LIMIT {
                self.kill();
                return Err(format!(
                    "no answer on {} within {START_LIMIT:?}:\n{}",
                    self.addr,
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One GET on a fresh connection, bounded to 5 s: (status, body). Errors are strings
/// (a server still loading refuses connections).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no status line in {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
}

/// The `data:` payloads of a server-sent-event body, whether its lines end in `\n` or in
/// `\r\n` (sse-starlette, which llama-cpp-python's server uses, writes `\r\n`).
pub fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("data:"))
        .map(|d| d.trim_start().to_string())
        .collect()
}

/// A scratch directory for one test's model and server logs, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("dujiang-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
