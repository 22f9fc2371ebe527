//! Shared helpers for the daemon tests: start a daemon in-process on free ports, connect
//! tonic clients, and fetch HTTP endpoints with a minimal HTTP/1.1 client.
#![allow(dead_code)]

use dujiang::serve::{RunningDaemon, ServeConfig};
use dujiang::wire::admin_client::AdminClient;
use dujiang::wire::inference_client::InferenceClient;
use dujiang::wire::{self, generate_response::Event};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

pub fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// A config on free loopback ports.
pub fn config() -> ServeConfig {
    ServeConfig {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        openai_addr: "127.0.0.1:0".parse().unwrap(),
        grace_period_ms: 5_000,
        ..ServeConfig::default()
    }
}

pub async fn start(config: ServeConfig) -> RunningDaemon {
    dujiang::serve::start(config, None)
        .await
        .expect("daemon starts")
}

/// A daemon on a runtime of its own (as in its own process), so load a test drives is
/// served by threads the test's own waiting does not share. Shut it down on that runtime.
pub async fn start_apart(config: ServeConfig) -> (RunningDaemon, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let d = rt
        .spawn(dujiang::serve::start(config, None))
        .await
        .unwrap()
        .expect("daemon starts");
    (d, rt)
}

/// Requests refused for `reason` (`dujiang_requests_shed_total`, all front ends), if any.
pub fn shed_count(d: &RunningDaemon, reason: &str) -> Option<u64> {
    d.daemon.metrics.shed_counts().get(reason).copied()
}

pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

pub async fn inference(addr: SocketAddr) -> InferenceClient<Channel> {
    InferenceClient::new(channel(addr).await)
}

pub async fn admin(addr: SocketAddr) -> AdminClient<Channel> {
    AdminClient::new(channel(addr).await)
}

pub fn request(prompt_tokens: u32, max_tokens: u32) -> wire::GenerateRequest {
    wire::GenerateRequest {
        prompt: "Explain how the Dujiangyan weir divides the Min river.".into(),
        prompt_tokens: Some(prompt_tokens),
        max_tokens,
        ..Default::default()
    }
}

/// What a client saw of one stream.
#[derive(Debug, Default)]
pub struct Seen {
    pub started: Option<wire::Started>,
    pub tokens: u32,
    /// Wall time from sending to each token chunk, with its token count.
    pub chunks: Vec<(Duration, u32)>,
    pub finished: Option<wire::Finished>,
    pub finished_count: u32,
    pub status: Option<tonic::Status>,
}

/// Runs one Generate stream to its end.
pub async fn generate(
    client: &mut InferenceClient<Channel>,
    req: tonic::Request<wire::GenerateRequest>,
) -> Seen {
    let sent = Instant::now();
    let mut seen = Seen::default();
    let mut stream = match client.generate(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            seen.status = Some(status);
            return seen;
        }
    };
    loop {
        match stream.message().await {
            Ok(Some(msg)) => match msg.event.expect("event set") {
                Event::Started(s) => seen.started = Some(s),
                Event::Tokens(t) => {
                    seen.tokens += t.count;
                    seen.chunks.push((sent.elapsed(), t.count));
                }
                Event::Finished(f) => {
                    seen.finished = Some(f);
                    seen.finished_count += 1;
                }
            },
            Ok(None) => return seen,
            Err(status) => {
                seen.status = Some(status);
                return seen;
            }
        }
    }
}

/// GET over HTTP/1.1; returns (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("http connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, dechunk(&body))
}

/// Undoes `Transfer-Encoding: chunked` when present (heuristically: hex length lines).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((len_line, after)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(len) = usize::from_str_radix(len_line.trim(), 16) else {
            return body.to_string();
        };
        if len == 0 {
            return out;
        }
        if after.len() < len {
            return body.to_string();
        }
        out.push_str(&after[..len]);
        rest = after[len..].trim_start_matches("\r\n");
    }
}

/// Sum of a metric's samples in a Prometheus text scrape (all label sets).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `f` until it returns true or `limit` passes.
pub async fn eventually(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Lines a child process writes to one pipe, read on a thread of their own (so the child
/// never blocks on a full pipe) and kept for assertions and failure messages.
pub struct Lines {
    seen: std::sync::Arc<parking_lot::Mutex<Vec<String>>>,
}

impl Lines {
    pub fn read(pipe: impl std::io::Read + Send + 'static) -> Lines {
        let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(pipe)) {
                let Ok(line) = line else { return };
                sink.lock().push(line);
            }
        });
        Lines { seen }
    }

    /// Waits up to `limit` for a line that `pick` maps to `Some`.
    pub async fn wait_for<T>(
        &self,
        limit: Duration,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> Option<T> {
        let end = Instant::now() + limit;
        let mut next = 0;
        loop {
            {
                let seen = self.seen.lock();
                if let Some(t) = seen[next..].iter().find_map(|l| pick(l)) {
                    return Some(t);
                }
                next = seen.len();
            }
            if Instant::now() >= end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn text(&self) -> String {
        self.seen.lock().join("\n")
    }
}

/// The line `dujiang serve` prints on stdout once both ports accept connections:
/// `serving grpc=ADDR admin=ADDR http=ADDR pid=PID`, with the addresses it bound.
#[derive(Clone, Debug)]
pub struct Serving {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    pub http: SocketAddr,
    pub openai: SocketAddr,
    pub pid: u32,
}

impl Serving {
    pub fn parse(line: &str) -> Option<Serving> {
        let fields = line.strip_prefix("serving ")?;
        let field = |k: &str| {
            fields
                .split_whitespace()
                .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
        };
        Some(Serving {
            grpc: field("grpc")?.parse().ok()?,
            admin: field("admin")?.parse().ok()?,
            http: field("http")?.parse().ok()?,
            openai: field("openai")?.parse().ok()?,
            pid: field("pid")?.parse().ok()?,
        })
    }
}

/// Spawns the real `dujiang serve` from `cmd` on ports it picks itself
/// (`127.0.0.1:0`: the daemon binds and keeps them, so no port is freed for another test to
/// take meanwhile) and waits for its `serving` line, which must come from this very process.
/// Its stdout is taken; set up stderr as needed before the call.
pub async fn spawn_serve(cmd: &mut std::process::Command) -> (std::process::Child, Serving, Lines) {
    let mut child = cmd
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args([
            "--admin-addr",
            "127.0.0.1:0",
            "--openai-addr",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn dujiang serve");
    let out = Lines::read(child.stdout.take().unwrap());
    let serving = out
        .wait_for(Duration::from_secs(20), Serving::parse)
        .await
        .unwrap_or_else(|| {
            let _ = child.kill();
            panic!("dujiang serve printed no serving line:\n{}", out.text())
        });
    assert_eq!(serving.pid, child.id(), "the daemon that answered is ours");
    (child, serving, out)
}

/// Spawns Prometheus from `cmd` listening on a port it picks itself (`127.0.0.1:0`) and
/// returns the address it reports binding (its `msg="Listening on" address=ADDR` line).
/// Its stderr (the log) is taken and returned.
pub async fn spawn_prometheus(
    cmd: &mut std::process::Command,
) -> (std::process::Child, SocketAddr, Lines) {
    let mut child = cmd
        .arg("--web.listen-address=127.0.0.1:0")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn prometheus");
    let log = Lines::read(child.stderr.take().unwrap());
    let addr = log
        .wait_for(Duration::from_secs(30), |l| {
            let (_, rest) = l.split_once("msg=\"Listening on\"")?;
            rest.split_whitespace()
                .find_map(|f| f.strip_prefix("address="))?
                .parse()
                .ok()
        })
        .await
        .unwrap_or_else(|| {
            let _ = child.kill();
            panic!("prometheus reported no listening address:\n{}", log.text())
        });
    (child, addr, log)
}
