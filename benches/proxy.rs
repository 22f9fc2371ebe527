//! Overhead of the proxy hop (issue 15): dujiang routing to a real engine over its OpenAI
//! API, against calling that engine directly, in the same run. The engine is the real
//! `dujiang serve` binary in a process of its own (one simulated H20 at a time scale of
//! 10^6, so a step takes ~0 wall time and all its time is HTTP, framing and its own request
//! path); the router runs in this process, with the bench's client, on two worker threads,
//! its fleet one `kind = "openai"` pool over that engine. Direct and proxied calls go to
//! the same engine process, so the difference is the hop: the router's work and one more
//! loopback round trip.
//!
//! - Latency, printed once before criterion runs: time to first token (first chunk with
//!   text) and mean time per output token of streamed chats of 16 tokens, 8 in flight,
//!   direct and through the proxy; the added p99 TTFT is the goal's figure (≤ 1 ms).
//! - Throughput, criterion's groups: streamed chats with 32 in flight, direct and through
//!   the proxy (goal: the proxy reaches ≥ 0.8× the direct requests per second). Criterion
//!   reports time per request; requests per second is its inverse.
//! - The floor any HTTP router stands on, in both: `bare_forward`, a reverse proxy with
//!   nothing of a router in it (axum accepts, a pooled hyper client sends the request's
//!   bytes to the engine unread, and the engine's response body goes back unread). It
//!   parses no JSON, routes nothing, counts nothing and cancels nothing, so what it costs
//!   over `direct` is the cost of one more HTTP hop itself; a router cannot reach more of
//!   the direct rate on this host than it does.
//!
//! `DUJIANG_PROXY_PIN=1` pins the engine process to CPU 1 and this process to CPU 0 (a
//! router on a host of its own, as it would be in front of real accelerators, rather than
//! one taking CPU from the engine it measures).
//! `DUJIANG_PROXY_COUNT=<direct|through_proxy|bare_forward>:<n>` runs `n` streamed chats after a
//! warm-up and exits, without criterion: under `valgrind --tool=callgrind` (which follows
//! only this process) two counts give this process's instructions per request by
//! difference, the client's alone direct and the client's plus the router's proxied.

#[path = "support/bare.rs"]
mod bare;
#[path = "support/zero.rs"]
mod zero;

use criterion::{criterion_group, Criterion, Throughput};
use dujiang::fleet::{PoolConfig, UpstreamSpec};
use dujiang::openai_client::sse::{read_chunk, SseDecoder};
use dujiang::serve::{FleetInput, RunningDaemon, ServeConfig};
use http_body_util::BodyExt as _;
use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAX_TOKENS: u32 = 16;
const IN_FLIGHT: u64 = 32;
const LATENCY_IN_FLIGHT: usize = 8;
const LATENCY_REQUESTS: usize = 800;

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<hyper::body::Bytes>,
>;

fn config() -> ServeConfig {
    ServeConfig {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        openai_addr: "127.0.0.1:0".parse().unwrap(),
        ..ServeConfig::default()
    }
}

/// The engine's fleet: one simulated H20 serving llama-3-8b.
const ENGINE_FLEET: &str =
    "name = \"engine\"\nmodel = \"llama-3-8b\"\n\n[pools.h20]\nchip = \"h20\"\ncount = 1\n";

/// Simulated time per wall second in the engine: its modelled steps (milliseconds) take
/// nanoseconds, so it answers as fast as its own code runs. (Not much more: simulated
/// nanoseconds are a u64, which 10^9 would run through in 18 wall seconds.)
const ENGINE_TIME_SCALE: &str = "1e6";

/// The engine's serve config: no shedding by predicted latency (its H20 model predicts a
/// queue of simulated milliseconds, which a time scale of 10^6 makes nothing).
const ENGINE_CONFIG: &str = "[admission]\nslo_shed_factor = 0.0\n";

/// The engine process; killed when dropped.
struct Engine {
    child: Child,
    openai: std::net::SocketAddr,
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pins every thread of process `pid` to `cpu`, when asked.
fn pin(pid: u32, cpu: usize) {
    if std::env::var("DUJIANG_PROXY_PIN").as_deref() != Ok("1") {
        return;
    }
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "taskset could not pin pid {pid} to CPU {cpu}");
}

/// Starts `dujiang serve` on the engine fleet and waits for its `serving` line.
fn start_engine() -> Engine {
    let fleet =
        std::env::temp_dir().join(format!("dujiang-proxy-bench-{}.toml", std::process::id()));
    std::fs::write(&fleet, ENGINE_FLEET).unwrap();
    let config = fleet.with_extension("serve.toml");
    std::fs::write(&config, ENGINE_CONFIG).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dujiang"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--fleet")
        .arg(&fleet)
        .args(["--time-scale", ENGINE_TIME_SCALE])
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args([
            "--admin-addr",
            "127.0.0.1:0",
            "--openai-addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dujiang serve");
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut openai = None;
    for line in out.lines() {
        let line = line.unwrap();
        if let Some(fields) = line.strip_prefix("serving ") {
            openai = fields
                .split_whitespace()
                .find_map(|f| f.strip_prefix("openai="))
                .and_then(|a| a.parse().ok());
            break;
        }
    }
    let _ = std::fs::remove_file(&fleet);
    let _ = std::fs::remove_file(&config);
    let Some(openai) = openai else {
        let _ = child.kill();
        panic!("the engine printed no serving line");
    };
    pin(child.id(), 1);
    pin(std::process::id(), 0);
    Engine { child, openai }
}

/// The router in front of `engine`: this process, its fleet one real-engine pool.
async fn start_router(engine: std::net::SocketAddr) -> RunningDaemon {
    // The router's prior for the pool: a chip as fast as the engine is (its steps take ~0
    // wall time), so the router predicts what it will see and sheds nothing.
    let perf = zero::zero_latency_perf();
    let mut pool = PoolConfig::new("real", perf, 1);
    pool.upstream = Some(Arc::new(UpstreamSpec {
        endpoints: vec![format!("http://{engine}/v1")],
        served_model: "llama-3-8b".into(),
        metrics: Some("none".into()),
    }));
    dujiang::serve::start_with(
        config(),
        None,
        Some(FleetInput {
            name: "front".into(),
            model: "llama-3-8b".into(),
            pools: vec![pool],
        }),
    )
    .await
    .unwrap()
}

/// The bare forwarding proxy in front of `engine` (see the module's doc), on this runtime.
async fn bare_forward(engine: std::net::SocketAddr) -> std::net::SocketAddr {
    let upstream: hyper_util::client::legacy::Client<_, axum::body::Body> = {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.set_nodelay(true);
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(IN_FLIGHT as usize)
            .build(http)
    };
    let forward = move |req: axum::extract::Request| {
        let upstream = upstream.clone();
        async move {
            let (mut parts, body) = req.into_parts();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            parts.uri = format!("http://{engine}{path}").parse().unwrap();
            let resp = upstream
                .request(hyper::Request::from_parts(parts, body))
                .await
                .unwrap();
            resp.map(axum::body::Body::new)
        }
    };
    bare::serve(axum::Router::new().fallback(forward)).await
}

fn body() -> hyper::body::Bytes {
    serde_json::to_vec(&serde_json::json!({
        "model": "llama-3-8b",
        "messages": [{"role": "user", "content": "Explain how the Dujiangyan weir divides the Min river."}],
        "max_tokens": MAX_TOKENS,
        "stream": true,
    }))
    .unwrap()
    .into()
}

/// One streamed chat: (time to the first text chunk, time from it to the last over the
/// tokens after the first).
async fn chat(
    client: &HttpClient,
    url: &hyper::Uri,
    body: &hyper::body::Bytes,
) -> (Duration, Duration) {
    let sent = Instant::now();
    let req = hyper::Request::post(url.clone())
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(body.clone()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    if resp.status() != 200 {
        let status = resp.status();
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        panic!(
            "{url} answered {status}: {}",
            String::from_utf8_lossy(&text)
        );
    }
    let mut body = resp.into_body();
    let mut sse = SseDecoder::default();
    let (mut first, mut last, mut chunks) = (None, Duration::ZERO, 0u32);
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.unwrap().into_data() else {
            continue;
        };
        let at = sent.elapsed();
        for event in sse.push(&data).unwrap() {
            let c = read_chunk(&event).unwrap();
            if c.text {
                first.get_or_insert(at);
                last = at;
                chunks += 1;
            }
        }
    }
    // The proxy forwards an engine's chunks as they come, but chunks that arrive faster
    // than the client reads (a zero-latency engine sends all 16 at once) go out as one.
    assert!(chunks >= 1);
    let first = first.unwrap();
    (first, (last - first) / (MAX_TOKENS - 1))
}

fn client() -> HttpClient {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(IN_FLIGHT as usize)
        .build(http)
}

/// `n` chats with `in_flight` concurrent callers; their (TTFT, per-token) samples.
async fn run(
    client: &HttpClient,
    url: &hyper::Uri,
    n: usize,
    in_flight: usize,
) -> Vec<(Duration, Duration)> {
    let per = n.div_ceil(in_flight);
    let body = body();
    let mut tasks = Vec::new();
    for w in 0..in_flight {
        let (c, url, body) = (client.clone(), url.clone(), body.clone());
        let count = per.min(n.saturating_sub(w * per));
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(count);
            for _ in 0..count {
                out.push(chat(&c, &url, &body).await);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn url(addr: std::net::SocketAddr) -> hyper::Uri {
    format!("http://{addr}/v1/chat/completions")
        .parse()
        .unwrap()
}

fn proxy(c: &mut Criterion) {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes every bench target.
    }
    let rt = runtime();
    let client = client();
    let engine = start_engine();
    let router = rt.block_on(start_router(engine.openai));
    let forward = rt.block_on(bare_forward(engine.openai));
    let (direct, proxied, bare) = (url(engine.openai), url(router.openai_addr), url(forward));

    // Latency, direct and proxied alternately in rounds so machine noise hits both alike.
    rt.block_on(async {
        run(&client, &direct, 64, LATENCY_IN_FLIGHT).await;
        run(&client, &proxied, 64, LATENCY_IN_FLIGHT).await;
        run(&client, &bare, 64, LATENCY_IN_FLIGHT).await;
        let (mut d, mut p, mut f) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..4 {
            d.extend(run(&client, &direct, LATENCY_REQUESTS / 4, LATENCY_IN_FLIGHT).await);
            p.extend(run(&client, &proxied, LATENCY_REQUESTS / 4, LATENCY_IN_FLIGHT).await);
            f.extend(run(&client, &bare, LATENCY_REQUESTS / 4, LATENCY_IN_FLIGHT).await);
        }
        let ms = |x: Duration| x.as_secs_f64() * 1e3;
        let ttft = |v: &[(Duration, Duration)], q| pct(v.iter().map(|s| s.0).collect(), q);
        let tok = |v: &[(Duration, Duration)]| {
            v.iter().map(|s| s.1).sum::<Duration>() / v.len() as u32
        };
        println!(
            "proxy latency ({} streamed chats of {MAX_TOKENS} tokens each way, {LATENCY_IN_FLIGHT} in flight):",
            d.len()
        );
        println!(
            "  TTFT p50 direct {:.3} ms, proxied {:.3} ms; p99 direct {:.3} ms, proxied {:.3} ms: added p99 {:.3} ms (goal <= 1 ms)",
            ms(ttft(&d, 0.5)),
            ms(ttft(&p, 0.5)),
            ms(ttft(&d, 0.99)),
            ms(ttft(&p, 0.99)),
            ms(ttft(&p, 0.99)) - ms(ttft(&d, 0.99))
        );
        println!(
            "  bare forwarding proxy: TTFT p50 {:.3} ms, p99 {:.3} ms: added p99 {:.3} ms",
            ms(ttft(&f, 0.5)),
            ms(ttft(&f, 0.99)),
            ms(ttft(&f, 0.99)) - ms(ttft(&d, 0.99))
        );
        println!(
            "  time per output token (mean) direct {:.4} ms, proxied {:.4} ms: added {:.4} ms",
            ms(tok(&d)),
            ms(tok(&p)),
            ms(tok(&p)) - ms(tok(&d))
        );
    });

    let mut g = c.benchmark_group("proxy_stream_chat");
    g.throughput(Throughput::Elements(1));
    for (name, url) in [
        ("direct", &direct),
        ("through_proxy", &proxied),
        ("bare_forward", &bare),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|n| {
                let start = Instant::now();
                rt.block_on(run(&client, url, n as usize, IN_FLIGHT as usize));
                start.elapsed()
            })
        });
    }
    g.finish();
    drop(engine);
    std::mem::forget(router);
}

/// See the module's doc: a fixed number of chats to one target, for instruction counts.
fn count_mode(spec: &str) {
    let (name, n) = spec
        .split_once(':')
        .expect("DUJIANG_PROXY_COUNT is <target>:<n>");
    let n: usize = n.parse().expect("a count of chats");
    let rt = runtime();
    let client = client();
    let engine = start_engine();
    let router = rt.block_on(start_router(engine.openai));
    let target = match name {
        "direct" => url(engine.openai),
        "through_proxy" => url(router.openai_addr),
        "bare_forward" => url(rt.block_on(bare_forward(engine.openai))),
        other => panic!("no target `{other}`"),
    };
    rt.block_on(run(&client, &target, 256, IN_FLIGHT as usize));
    let start = Instant::now();
    rt.block_on(run(&client, &target, n, IN_FLIGHT as usize));
    eprintln!("{name}: {n} chats in {:?}", start.elapsed());
    drop(engine);
    std::mem::forget(router);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5));
    targets = proxy
}

fn main() {
    if let Ok(spec) = std::env::var("DUJIANG_PROXY_COUNT") {
        count_mode(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
