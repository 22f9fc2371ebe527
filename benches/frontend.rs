//! Front-end overhead of the daemon: `Complete` against a zero-latency chip (every engine
//! step takes ~0 ns, so all time is gRPC, validation, routing, the driver hop and the
//! delivery channel) versus a bare tonic service that answers the same request with a
//! response of the same size and does nothing else. Both run side by side in one process
//! over loopback with the same client, 32 calls in flight. Goal (issue 5): dujiang reaches
//! at least 80% of the bare service's requests per second. Criterion reports time per
//! call; requests per second is its inverse.
//!
//! The OpenAI HTTP front end the same way (issue 14, same goal): `POST /v1/chat/completions`
//! for 16 tokens, not streamed and streamed (SSE, one chunk a token, usage, `[DONE]`),
//! against a bare axum endpoint that answers each with the exact bytes and headers the
//! daemon sent for one real request, over HTTP/1.1 keep-alive connections with 32 requests
//! in flight, in the same run.

#[path = "support/bare.rs"]
mod bare;
#[path = "support/zero.rs"]
mod zero;

use criterion::{criterion_group, Criterion, Throughput};
use dujiang::fleet::PoolConfig;
use dujiang::serve::{FleetInput, ServeConfig};
use dujiang::wire::inference_client::InferenceClient;
use dujiang::wire::inference_server::{Inference, InferenceServer};
use dujiang::wire::{self, CompleteResponse, GenerateRequest};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const IN_FLIGHT: u64 = 32;
const MAX_TOKENS: u32 = 16;

fn request() -> GenerateRequest {
    GenerateRequest {
        prompt: "Explain how the Dujiangyan weir divides the Min river.".into(),
        prompt_tokens: Some(128),
        max_tokens: MAX_TOKENS,
        ..Default::default()
    }
}

/// The bare service: answers with a precomputed response shaped like the daemon's.
struct Echo {
    reply: CompleteResponse,
}

#[tonic::async_trait]
impl Inference for Echo {
    type GenerateStream = tokio_stream::Empty<Result<wire::GenerateResponse, tonic::Status>>;

    async fn generate(
        &self,
        _: tonic::Request<GenerateRequest>,
    ) -> Result<tonic::Response<Self::GenerateStream>, tonic::Status> {
        Ok(tonic::Response::new(tokio_stream::empty()))
    }

    async fn complete(
        &self,
        _: tonic::Request<GenerateRequest>,
    ) -> Result<tonic::Response<CompleteResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.reply.clone()))
    }
}

fn zero_latency_fleet() -> FleetInput {
    let perf = zero::zero_latency_perf();
    let step = perf
        .decode_step_ns(32, 32 * 256)
        .max(perf.prefill_ns(32 * 128, 0));
    assert!(
        step < 1_000,
        "the zero-latency chip takes {step} ns per step"
    );
    FleetInput {
        name: "zero".into(),
        model: perf.model.id.clone(),
        pools: vec![PoolConfig::new("zero", perf, 4)],
    }
}

async fn connect(addr: std::net::SocketAddr) -> InferenceClient<Channel> {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    InferenceClient::new(ch)
}

/// Runs `n` calls with IN_FLIGHT concurrent callers and returns the elapsed time.
async fn run(client: &InferenceClient<Channel>, n: u64) -> Duration {
    let start = Instant::now();
    let per = n.div_ceil(IN_FLIGHT);
    let mut tasks = Vec::new();
    for w in 0..IN_FLIGHT {
        let mut c = client.clone();
        let count = per.min(n.saturating_sub(w * per));
        tasks.push(tokio::spawn(async move {
            for _ in 0..count {
                let r = c.complete(request()).await.unwrap().into_inner();
                assert!(r.finished.is_some());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

/// The daemon on the zero-latency fleet, every port on loopback port 0.
async fn start_zero_latency() -> dujiang::serve::RunningDaemon {
    let cfg = ServeConfig {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        openai_addr: "127.0.0.1:0".parse().unwrap(),
        ..ServeConfig::default()
    };
    dujiang::serve::start_with(cfg, None, Some(zero_latency_fleet()))
        .await
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The daemon's gRPC client and the bare tonic echo's, both servers running on `rt`.
fn grpc_pair(rt: &tokio::runtime::Runtime) -> (InferenceClient<Channel>, InferenceClient<Channel>) {
    rt.block_on(async {
        let d = start_zero_latency().await;
        let client = connect(d.grpc_addr).await;
        // One real answer gives the echo service exactly the daemon's response size.
        let reply = client
            .clone()
            .complete(request())
            .await
            .unwrap()
            .into_inner();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(InferenceServer::new(Echo { reply }))
                // TCP_NODELAY as the daemon sets it, so both sides pay the same for small
                // writes and the comparison is of the servers, not of Nagle's algorithm.
                .serve_with_incoming(tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    |conn| {
                        if let Ok(tcp) = &conn {
                            let _ = tcp.set_nodelay(true);
                        }
                        conn
                    },
                )),
        );
        let echo = connect(addr).await;
        std::mem::forget(d);
        (client, echo)
    })
}

fn frontend(c: &mut Criterion) {
    let rt = runtime();
    let (dujiang, echo) = grpc_pair(&rt);
    let mut g = c.benchmark_group("complete");
    g.throughput(Throughput::Elements(1));
    g.bench_function("dujiang_zero_latency", |b| {
        b.iter_custom(|n| rt.block_on(run(&dujiang, n)))
    });
    g.bench_function("bare_tonic_echo", |b| {
        b.iter_custom(|n| rt.block_on(run(&echo, n)))
    });
    g.finish();
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<hyper::body::Bytes>,
>;

fn chat_body(stream: bool) -> hyper::body::Bytes {
    let mut body = serde_json::json!({
        "model": "llama-3-8b",
        "messages": [{"role": "user", "content": "Explain how the Dujiangyan weir divides the Min river."}],
        "max_tokens": MAX_TOKENS,
    });
    if stream {
        body["stream"] = true.into();
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    serde_json::to_vec(&body).unwrap().into()
}

/// One POST of `body`; returns the status, the headers and the whole body.
async fn post(
    client: &HttpClient,
    url: &hyper::Uri,
    body: &hyper::body::Bytes,
) -> (u16, hyper::HeaderMap, hyper::body::Bytes) {
    use http_body_util::BodyExt as _;
    let req = hyper::Request::post(url.clone())
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(body.clone()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, bytes)
}

/// Runs `n` POSTs with IN_FLIGHT concurrent callers and returns the elapsed time.
async fn run_http(
    client: &HttpClient,
    url: &hyper::Uri,
    body: &hyper::body::Bytes,
    n: u64,
) -> Duration {
    let start = Instant::now();
    let per = n.div_ceil(IN_FLIGHT);
    let mut tasks = Vec::new();
    for w in 0..IN_FLIGHT {
        let (c, url, body) = (client.clone(), url.clone(), body.clone());
        let count = per.min(n.saturating_sub(w * per));
        tasks.push(tokio::spawn(async move {
            for _ in 0..count {
                let (status, _, bytes) = post(&c, &url, &body).await;
                assert_eq!(status, 200);
                assert!(!bytes.is_empty());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

/// The bare endpoint: answers every POST with `reply`'s bytes and headers (all the
/// daemon sent but those hyper writes itself: date and the body's length or chunking).
async fn bare_axum(
    replies: Vec<(&'static str, hyper::HeaderMap, hyper::body::Bytes)>,
) -> std::net::SocketAddr {
    let mut app = axum::Router::new();
    for (path, mut headers, bytes) in replies {
        for own in ["date", "content-length", "transfer-encoding"] {
            headers.remove(own);
        }
        app = app.route(
            path,
            axum::routing::post(move || {
                let (headers, bytes) = (headers.clone(), bytes.clone());
                async move { (headers, bytes) }
            }),
        );
    }
    bare::serve(app).await
}

/// The OpenAI targets in the group's order: (name, url, body). The daemon and the bare
/// endpoint run on `rt`.
fn openai_targets(
    rt: &tokio::runtime::Runtime,
    client: &HttpClient,
) -> Vec<(&'static str, hyper::Uri, hyper::body::Bytes)> {
    let (plain, stream) = (chat_body(false), chat_body(true));
    let (dujiang_addr, bare_addr) = rt.block_on(async {
        let d = start_zero_latency().await;
        let addr = d.openai_addr;
        let url: hyper::Uri = format!("http://{addr}/v1/chat/completions")
            .parse()
            .unwrap();
        // One real answer of each kind: the bare endpoint sends exactly these bytes.
        let (s1, headers_plain, bytes_plain) = post(client, &url, &plain).await;
        let (s2, headers_stream, bytes_stream) = post(client, &url, &stream).await;
        assert_eq!((s1, s2), (200, 200));
        let ctype_stream = &headers_stream["content-type"];
        assert!(
            ctype_stream.as_bytes().starts_with(b"text/event-stream"),
            "{ctype_stream:?}"
        );
        let text = String::from_utf8_lossy(&bytes_stream);
        assert_eq!(
            text.matches("\"content\":").count() as u32,
            MAX_TOKENS,
            "{text}"
        );
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        let bare = bare_axum(vec![
            ("/plain", headers_plain, bytes_plain),
            ("/stream", headers_stream, bytes_stream),
        ])
        .await;
        std::mem::forget(d);
        (addr, bare)
    });
    let uri = |addr: std::net::SocketAddr, path: &str| -> hyper::Uri {
        format!("http://{addr}{path}").parse().unwrap()
    };
    let dujiang_url = uri(dujiang_addr, "/v1/chat/completions");
    vec![
        ("dujiang_zero_latency", dujiang_url.clone(), plain.clone()),
        ("bare_axum_same_bytes", uri(bare_addr, "/plain"), plain),
        ("dujiang_zero_latency_stream", dujiang_url, stream.clone()),
        (
            "bare_axum_same_bytes_stream",
            uri(bare_addr, "/stream"),
            stream,
        ),
    ]
}

fn http_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(IN_FLIGHT as usize)
        .build({
            let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
            http.set_nodelay(true);
            http
        })
}

fn openai_frontend(c: &mut Criterion) {
    let rt = runtime();
    let client = http_client();
    let targets = openai_targets(&rt, &client);
    let mut g = c.benchmark_group("openai_chat");
    g.throughput(Throughput::Elements(1));
    for (name, url, body) in &targets {
        g.bench_function(*name, |b| {
            b.iter_custom(|n| rt.block_on(run_http(&client, url, body, n)))
        });
    }
    g.finish();
}

/// `DUJIANG_FRONTEND_COUNT=<target>:<n>` runs one target `n` times after a warm-up of
/// 256 calls and exits, without criterion: a fixed amount of work, so instruction
/// counters (`valgrind --tool=callgrind`) taken at two counts give the cost of one
/// request by difference. Targets: the openai_chat group's names, and
/// `grpc_dujiang_zero_latency` / `grpc_bare_tonic_echo`.
fn count_mode(spec: &str) {
    let (name, n) = spec
        .split_once(':')
        .expect("DUJIANG_FRONTEND_COUNT is <target>:<n>");
    let n: u64 = n.parse().expect("a count of calls");
    let rt = runtime();
    if let Some(which) = name.strip_prefix("grpc_") {
        let (dujiang, echo) = grpc_pair(&rt);
        let client = match which {
            "dujiang_zero_latency" => dujiang,
            "bare_tonic_echo" => echo,
            other => panic!("no gRPC target `{other}`"),
        };
        rt.block_on(run(&client, 256));
        let t = rt.block_on(run(&client, n));
        eprintln!("{name}: {n} calls in {t:?}");
        return;
    }
    let client = http_client();
    let targets = openai_targets(&rt, &client);
    let (_, url, body) = targets
        .iter()
        .find(|(t, _, _)| *t == name)
        .unwrap_or_else(|| panic!("no target `{name}`"));
    rt.block_on(run_http(&client, url, body, 256));
    let t = rt.block_on(run_http(&client, url, body, n));
    eprintln!("{name}: {n} calls in {t:?}");
}

criterion_group!(benches, frontend, openai_frontend);

fn main() {
    if let Ok(spec) = std::env::var("DUJIANG_FRONTEND_COUNT") {
        count_mode(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
