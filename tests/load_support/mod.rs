//! A stand-in gRPC server for the load generator's tests: implements
//! `dujiang.v1.Inference` with a fixed response delay and status codes chosen by the
//! request, and records when each request arrived, so a test can check the sending
//! schedule independently of how the server answers. Its OpenAI counterpart is
//! [`openai_stub`].
#![allow(dead_code)]

pub mod openai_stub;

use dujiang::trace::TraceRecord;
use dujiang::wire::inference_server::{Inference, InferenceServer};
use dujiang::wire::{self, generate_response::Event};
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status};

/// How the stub answers a request, chosen by its `prompt_tokens`.
pub const PROMPT_OK: u32 = 100;
/// Refused at once with RESOURCE_EXHAUSTED.
pub const PROMPT_SHED: u32 = 101;
/// Started on pool `stub`, then the stream fails with UNAVAILABLE.
pub const PROMPT_FAIL_MID_STREAM: u32 = 102;

pub struct Stub {
    /// Time before the response begins (a slow server).
    pub delay: Duration,
    /// Wall instants at which requests arrived.
    pub arrivals: Arc<Mutex<Vec<Instant>>>,
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<wire::GenerateResponse, Status>> + Send>>;

fn event(e: Event) -> Result<wire::GenerateResponse, Status> {
    Ok(wire::GenerateResponse { event: Some(e) })
}

fn started() -> Event {
    Event::Started(wire::Started {
        request_id: String::new(),
        backend: "stub-0".into(),
        pool: "stub".into(),
        chip: "h20".into(),
        queue_seconds: 0.0,
        ..Default::default()
    })
}

#[tonic::async_trait]
impl Inference for Stub {
    type GenerateStream = ResponseStream;

    async fn generate(
        &self,
        request: Request<wire::GenerateRequest>,
    ) -> Result<Response<ResponseStream>, Status> {
        self.arrivals.lock().push(Instant::now());
        let req = request.into_inner();
        tokio::time::sleep(self.delay).await;
        let items: Vec<Result<wire::GenerateResponse, Status>> = match req.prompt_tokens {
            Some(PROMPT_SHED) => return Err(Status::new(Code::ResourceExhausted, "shed")),
            Some(PROMPT_FAIL_MID_STREAM) => vec![
                event(started()),
                Err(Status::new(Code::Unavailable, "backend failed")),
            ],
            _ => vec![
                event(started()),
                event(Event::Tokens(wire::TokenChunk {
                    text: "x".repeat(req.max_tokens as usize),
                    count: req.max_tokens,
                })),
                event(Event::Finished(wire::Finished::default())),
            ],
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn complete(
        &self,
        _request: Request<wire::GenerateRequest>,
    ) -> Result<Response<wire::CompleteResponse>, Status> {
        Err(Status::unimplemented("the stub only streams"))
    }
}

/// Starts a stub on a free loopback port; returns its address and its arrival log.
pub async fn start_stub(delay: Duration) -> (SocketAddr, Arc<Mutex<Vec<Instant>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let stub = Stub {
        delay,
        arrivals: arrivals.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(InferenceServer::new(stub))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, arrivals)
}

/// `n` requests `gap` apart (simulated time), each with `prompt` tokens and 4 output tokens.
pub fn evenly(n: u64, gap: Duration, prompt: u32) -> Vec<TraceRecord> {
    (0..n)
        .map(|i| TraceRecord {
            arrival_ns: i * gap.as_nanos() as u64,
            prompt_tokens: prompt,
            output_tokens: 4,
            ..TraceRecord::default()
        })
        .collect()
}

pub fn ok_records(
    records: Vec<TraceRecord>,
) -> impl Iterator<Item = Result<TraceRecord, std::convert::Infallible>> + Send + 'static {
    records.into_iter().map(Ok)
}
