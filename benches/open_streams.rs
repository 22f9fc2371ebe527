//! Resident memory of the daemon holding 10,000 open `Generate` streams. Starts the real
//! binary (slow simulated time, so no stream finishes while measured), opens the streams
//! over 100 HTTP/2 connections, waits until every one has been admitted, and reads the
//! daemon's VmRSS from /proc. Goal (issue 5): under 200 MB. Not a criterion bench: the
//! figure is one measurement, printed with the idle baseline beside it.

use dujiang::wire::inference_client::InferenceClient;
use dujiang::wire::GenerateRequest;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const STREAMS: usize = 10_000;
const CONNECTIONS: usize = 100;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes every bench target.
    }
    let dir = std::env::temp_dir().join(format!("dujiang-open-streams-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let grpc = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let cfg = dir.join("serve.toml");
    std::fs::write(
        &cfg,
        format!(
            "grpc_addr = \"{grpc}\"\nadmin_addr = \"127.0.0.1:0\"\nhttp_addr = \"{http}\"\nopenai_addr = \"127.0.0.1:0\"\ntime_scale = 0.001\ngrace_period_ms = 0\n[admission]\nmax_in_flight = 1000000\nmax_waiting_per_backend = 1000000\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dujiang"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn dujiang serve");
    let pid = child.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(async {
        let url = format!("http://{grpc}");
        let start = Instant::now();
        let mut clients = Vec::new();
        while clients.len() < CONNECTIONS {
            match Channel::from_shared(url.clone()).unwrap().connect().await {
                Ok(ch) => clients.push(InferenceClient::new(ch)),
                Err(_) if start.elapsed() < Duration::from_secs(10) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("cannot connect: {e}"),
            }
        }
        let idle = rss_kib(pid);
        let t0 = Instant::now();
        let mut opened = Vec::with_capacity(STREAMS);
        let mut pending = Vec::new();
        for i in 0..STREAMS {
            let mut c = clients[i % CONNECTIONS].clone();
            pending.push(tokio::spawn(async move {
                let req = GenerateRequest {
                    prompt: "hold this stream open".into(),
                    prompt_tokens: Some(64),
                    max_tokens: 1000,
                    ..Default::default()
                };
                c.generate(req).await.map(|r| r.into_inner())
            }));
        }
        for p in pending {
            opened.push(p.await.unwrap().expect("stream admitted"));
        }
        let open_time = t0.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let loaded = rss_kib(pid);
        (idle, loaded, open_time, opened)
    });
    let (idle, loaded, open_time, opened) = result;
    println!(
        "open_streams: {} streams open; daemon RSS idle {:.1} MiB, with streams {:.1} MiB ({:.1} KiB per stream); opened in {:.2} s",
        opened.len(),
        idle as f64 / 1024.0,
        loaded as f64 / 1024.0,
        (loaded - idle) as f64 / opened.len() as f64,
        open_time.as_secs_f64()
    );
    drop(opened);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
