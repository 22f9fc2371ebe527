//! Replay fidelity at scale: what it measures is how closely virtual-time `dujiang replay`
//! predicts the daemon. It cuts the first N requests (default 2,000) of the Azure LLM
//! 2023 conversation trace from ../shared/traces, replays them, then starts the real
//! `dujiang serve` binary (same embedded demo fleet, same policy, seed 1) at a time scale
//! (default 4×) and sends the same requests with `dujiang load`, and prints
//! `dujiang compare` plus the relative differences of TTFT and E2E at p50/p90/p99.
//! Goal: within 5% at p50 and 10% at p99. It is a measurement, not a criterion timing,
//! because one run takes minutes of wall time (that is the point: real time).
//!
//! Environment: FIDELITY_REQUESTS (default 2000), FIDELITY_TIME_SCALE (default 4),
//! FIDELITY_POLICIES (comma-separated, default `round-robin,least-work`).
//! Run: `cargo bench --bench fidelity`.

use dujiang::loadgen::compare;
use dujiang::sim::Report;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dujiang"))
}

/// The header and the first `n` requests of the shared Azure trace.
fn excerpt(n: usize, dir: &Path) -> PathBuf {
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/traces/azure-llm-2023-conv.csv");
    let file =
        std::fs::File::open(&src).unwrap_or_else(|e| panic!("cannot open {}: {e}", src.display()));
    let out = dir.join(format!("azure-conv-head{n}.csv"));
    let mut w = std::io::BufWriter::new(std::fs::File::create(&out).unwrap());
    for line in BufReader::new(file).lines().take(n + 1) {
        writeln!(w, "{}", line.unwrap()).unwrap();
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[allow(clippy::disallowed_methods)] // polling a child process's port; no runtime here
fn start_daemon(policy: &str, scale: f64, log: &Path) -> (Daemon, String) {
    let (grpc, http) = (free_port(), free_port());
    let child = bin()
        .args(["serve", "--policy", policy, "--grace-period-ms", "1000"])
        .arg("--time-scale")
        .arg(scale.to_string())
        .arg("--grpc-addr")
        .arg(format!("127.0.0.1:{grpc}"))
        .arg("--http-addr")
        .arg(format!("127.0.0.1:{http}"))
        .args([
            "--admin-addr",
            "127.0.0.1:0",
            "--openai-addr",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start dujiang serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", grpc)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the daemon did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (Daemon(child), format!("http://127.0.0.1:{grpc}"))
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run dujiang");
    assert!(
        out.status.success(),
        "dujiang failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read(path: &Path) -> Report {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test --benches` run passes nothing
    // and should not spend minutes here.
    if !std::env::args().any(|a| a == "--bench") {
        println!("fidelity: skipped (run with `cargo bench --bench fidelity`)");
        return;
    }
    let n: usize = env_or("FIDELITY_REQUESTS", 2000);
    let scale: f64 = env_or("FIDELITY_TIME_SCALE", 4.0);
    let policies: String = env_or("FIDELITY_POLICIES", "round-robin,least-work".to_string());
    let dir = std::env::temp_dir().join(format!("dujiang-fidelity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = excerpt(n, &dir);
    println!("fidelity: {n} requests of the Azure 2023 conversation trace, time scale {scale}");
    for policy in policies.split(',') {
        let replay_json = dir.join(format!("replay-{policy}.json"));
        let load_json = dir.join(format!("load-{policy}.json"));
        run(bin()
            .args(["replay", "--policy", policy, "--trace"])
            .arg(&trace)
            .arg("--json")
            .arg(&replay_json)
            .stdout(Stdio::null()));
        let log = dir.join(format!("serve-{policy}.log"));
        let (daemon, target) = start_daemon(policy, scale, &log);
        let started = Instant::now();
        run(bin()
            .args(["load", "--progress", "off", "--target", &target, "--trace"])
            .arg(&trace)
            .arg("--time-scale")
            .arg(scale.to_string())
            .arg("--json")
            .arg(&load_json)
            .stdout(Stdio::null()));
        drop(daemon);
        let (a, b) = (read(&replay_json), read(&load_json));
        println!("daemon log: {}; reports: {}", log.display(), dir.display());
        println!(
            "\n=== {policy}: load test took {:.0} s wall ===",
            started.elapsed().as_secs_f64()
        );
        print!("{}", compare::render(&a, &b));
        let (pa, pb) = (&a.policies[0].stats, &b.policies[0].stats);
        let rel = |x: f64, y: f64| compare::relative(x, y).map_or(f64::NAN, |r| r * 100.0);
        println!(
            "{policy}: TTFT p50 {:+.1}% p90 {:+.1}% p99 {:+.1}% | E2E p50 {:+.1}% p90 {:+.1}% p99 {:+.1}%  (goal: |p50| ≤ 5%, |p99| ≤ 10%)",
            rel(pa.ttft_ms.p50, pb.ttft_ms.p50),
            rel(pa.ttft_ms.p90, pb.ttft_ms.p90),
            rel(pa.ttft_ms.p99, pb.ttft_ms.p99),
            rel(pa.e2e_ms.p50, pb.e2e_ms.p50),
            rel(pa.e2e_ms.p90, pb.e2e_ms.p90),
            rel(pa.e2e_ms.p99, pb.e2e_ms.p99),
        );
    }
}
