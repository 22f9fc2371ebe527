//! Front-end overhead of the daemon: `Complete` against a zero-latency chip (every engine
//! step takes ~0 ns, so all time is gRPC, validation, routing, the driver hop and the
//! delivery channel) versus a bare tonic service that answers the same request with a
//! response of the same size and does nothing else. Both run side by side in one process
//! over loopback with the same client, 32 calls in flight. Goal (issue 5): dujiang reaches
//! at least 80% of the bare service's requests per second. Criterion reports time per
//! call; requests per second is its inverse.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dujiang::fleet::PoolConfig;
use dujiang::profile::{Catalogue, Dtype, EngineCoefficients, PerfModel};
use dujiang::serve::{FleetInput, ServeConfig};
use dujiang::wire::inference_client::InferenceClient;
use dujiang::wire::inference_server::{Inference, InferenceServer};
use dujiang::wire::{self, CompleteResponse, GenerateRequest};
use std::sync::Arc;
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
    let cat = Catalogue::embedded();
    let mut chip = cat.chip("h20").unwrap().clone();
    chip.id = "zero".into();
    chip.bf16_tflops = 1e12;
    chip.int8_tops = Some(1e12);
    chip.bandwidth_tbps = 1e12;
    chip.link_gbps = 1e12;
    let mut engine = cat.engine_for("h20", None).unwrap();
    let e = &mut engine.coefficients;
    for (field, _, _) in EngineCoefficients::FITTED {
        if field.ends_with("_us") || *field == "prefill_half_tokens" {
            e.set(field, 0.0).unwrap();
        }
    }
    let model = cat.model("llama-3-8b").unwrap();
    let perf = Arc::new(PerfModel::new(&chip, &engine, model, 1, Dtype::Bf16).unwrap());
    let step = perf
        .decode_step_ns(32, 32 * 256)
        .max(perf.prefill_ns(32 * 128, 0));
    assert!(
        step < 1_000,
        "the zero-latency chip takes {step} ns per step"
    );
    FleetInput {
        name: "zero".into(),
        model: model.id.clone(),
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

fn frontend(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (dujiang, echo) = rt.block_on(async {
        let cfg = ServeConfig {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            openai_addr: "127.0.0.1:0".parse().unwrap(),
            ..ServeConfig::default()
        };
        let d = dujiang::serve::start_with(cfg, None, Some(zero_latency_fleet()))
            .await
            .unwrap();
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
    });
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

criterion_group!(benches, frontend);
criterion_main!(benches);
