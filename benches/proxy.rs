//! Overhead of the proxy hop (issue 15): dujiang routing to a real engine over its OpenAI
//! API, against calling that engine directly, in the same run. The engine is dujiang
//! itself on a zero-latency chip (every step ~0 ns, so all its time is HTTP, framing and
//! its own request path); the router's fleet is one `kind = "openai"` pool over it. Both
//! run in this process on two worker threads, over loopback.
//!
//! - Latency, printed once before criterion runs: time to first token (first chunk with
//!   text) and mean time per output token of streamed chats of 16 tokens, 8 in flight,
//!   direct and through the proxy; the added p99 TTFT is the goal's figure (≤ 1 ms).
//! - Throughput, criterion's groups: streamed chats with 32 in flight, direct and through
//!   the proxy (goal: the proxy reaches ≥ 0.8× the direct requests per second). Criterion
//!   reports time per request; requests per second is its inverse.

#[path = "support/zero.rs"]
mod zero;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dujiang::fleet::{PoolConfig, UpstreamSpec};
use dujiang::openai_client::sse::{read_chunk, SseDecoder};
use dujiang::serve::{FleetInput, RunningDaemon, ServeConfig};
use http_body_util::BodyExt as _;
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

/// The engine (zero-latency dujiang) and the router in front of it.
async fn start() -> (RunningDaemon, RunningDaemon) {
    let perf = zero::zero_latency_perf();
    let engine = dujiang::serve::start_with(
        config(),
        None,
        Some(FleetInput {
            name: "engine".into(),
            model: "llama-3-8b".into(),
            pools: vec![PoolConfig::new("zero", perf.clone(), 1)],
        }),
    )
    .await
    .unwrap();
    let mut pool = PoolConfig::new("real", perf, 1);
    pool.upstream = Some(Arc::new(UpstreamSpec {
        endpoints: vec![format!("http://{}/v1", engine.openai_addr)],
        served_model: "llama-3-8b".into(),
        metrics: Some("none".into()),
    }));
    let router = dujiang::serve::start_with(
        config(),
        None,
        Some(FleetInput {
            name: "front".into(),
            model: "llama-3-8b".into(),
            pools: vec![pool],
        }),
    )
    .await
    .unwrap();
    (engine, router)
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
    assert_eq!(resp.status(), 200);
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

fn proxy(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = client();
    let (engine, router) = rt.block_on(start());
    let url = |addr: std::net::SocketAddr| -> hyper::Uri {
        format!("http://{addr}/v1/chat/completions")
            .parse()
            .unwrap()
    };
    let (direct, proxied) = (url(engine.openai_addr), url(router.openai_addr));

    // Latency, direct and proxied alternately in rounds so machine noise hits both alike.
    rt.block_on(async {
        run(&client, &direct, 64, LATENCY_IN_FLIGHT).await;
        run(&client, &proxied, 64, LATENCY_IN_FLIGHT).await;
        let (mut d, mut p) = (Vec::new(), Vec::new());
        for _ in 0..4 {
            d.extend(run(&client, &direct, LATENCY_REQUESTS / 4, LATENCY_IN_FLIGHT).await);
            p.extend(run(&client, &proxied, LATENCY_REQUESTS / 4, LATENCY_IN_FLIGHT).await);
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
            "  time per output token (mean) direct {:.4} ms, proxied {:.4} ms: added {:.4} ms",
            ms(tok(&d)),
            ms(tok(&p)),
            ms(tok(&p)) - ms(tok(&d))
        );
    });

    let mut g = c.benchmark_group("proxy_stream_chat");
    g.throughput(Throughput::Elements(1));
    for (name, url) in [("direct", &direct), ("through_proxy", &proxied)] {
        g.bench_function(name, |b| {
            b.iter_custom(|n| {
                let start = Instant::now();
                rt.block_on(run(&client, url, n as usize, IN_FLIGHT as usize));
                start.elapsed()
            })
        });
    }
    g.finish();
    std::mem::forget((engine, router));
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5));
    targets = proxy
}
criterion_main!(benches);
