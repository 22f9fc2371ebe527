//! The `dujiang.v1.Inference` service. `Generate` turns a request's deliveries into a
//! response stream; `Complete` drains the same stream into one answer.
//!
//! The gRPC front end is a thin translation: the request goes to [`Daemon::submit`] as
//! it came, and the shared [`RequestStream`] (which enforces the client's `grpc-timeout`
//! itself: the daemon serves gRPC without tonic's transport timeout layer, which would
//! report CANCELLED) is sent event by event, its error as the status.

use super::daemon::{Accepted, Daemon};
use super::error::ServeError;
use super::stream::RequestStream;
use crate::wire::{self, generate_response::Event, inference_server::Inference};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

/// The largest request the data plane decodes: room for a prompt filling the longest
/// context in the catalogue (131,072 tokens) at 16 bytes of UTF-8 per token, 2 MiB, plus
/// 1 MiB for chat framing and prefix hashes (8,192 blocks of 16 tokens, about 90 KiB).
/// Tokenizers average about 4 bytes per token on English and on Chinese (about 1.4
/// characters of 3 bytes each per token), so 16 is four times the usual (estimate).
/// A larger message is refused by the transport with OUT_OF_RANGE before it is decoded,
/// which also bounds what decoding can allocate (a packed `prefix_hashes` field expands
/// at most eightfold). tonic's default is 4 MiB.
pub const MAX_REQUEST_BYTES: usize = 3 << 20;

pub struct InferenceService {
    pub daemon: Arc<Daemon>,
}

#[tonic::async_trait]
impl Inference for InferenceService {
    type GenerateStream = GrpcStream;

    async fn generate(
        &self,
        request: Request<wire::GenerateRequest>,
    ) -> Result<Response<GrpcStream>, Status> {
        let accepted = self.admit(request).await?;
        Ok(Response::new(GrpcStream(RequestStream::new(
            self.daemon.clone(),
            accepted,
        ))))
    }

    async fn complete(
        &self,
        request: Request<wire::GenerateRequest>,
    ) -> Result<Response<wire::CompleteResponse>, Status> {
        let mut stream = RequestStream::new(self.daemon.clone(), self.admit(request).await?);
        stream.wake_only_at_end();
        let mut out = wire::CompleteResponse::default();
        while let Some(item) = stream.next().await {
            match item? {
                Event::Started(s) => out.started = Some(s),
                Event::Tokens(t) => out.text.push_str(&t.text),
                Event::Finished(f) => out.finished = Some(f),
            }
        }
        Ok(Response::new(out))
    }
}

impl InferenceService {
    async fn admit(&self, request: Request<wire::GenerateRequest>) -> Result<Accepted, ServeError> {
        let received = Instant::now();
        let deadline = grpc_timeout(request.metadata()).map(|t| received + t);
        self.daemon
            .submit(request.into_inner(), received, deadline)
            .await
    }
}

/// The `grpc-timeout` header: up to eight digits and a unit (H, M, S, m, u, n).
pub fn grpc_timeout(meta: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The shared request stream as gRPC sends it: each event a `GenerateResponse`, an error
/// the call's status.
pub struct GrpcStream(RequestStream);

impl Stream for GrpcStream {
    type Item = Result<wire::GenerateResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0).poll_next(cx).map(|item| {
            item.map(|r| {
                r.map(|event| wire::GenerateResponse { event: Some(event) })
                    .map_err(Status::from)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(grpc_timeout(&m), Some(Duration::from_millis(250)));
        m.insert("grpc-timeout", "3S".parse().unwrap());
        assert_eq!(grpc_timeout(&m), Some(Duration::from_secs(3)));
        m.insert("grpc-timeout", "123456789m".parse().unwrap());
        assert_eq!(grpc_timeout(&m), None, "more than eight digits");
        m.insert("grpc-timeout", "5x".parse().unwrap());
        assert_eq!(grpc_timeout(&m), None);
    }
}
