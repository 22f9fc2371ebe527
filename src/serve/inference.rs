//! The `dujiang.v1.Inference` service. `Generate` turns a request's deliveries into a
//! response stream; `Complete` drains the same stream into one answer.
//!
//! The stream enforces the client's `grpc-timeout` itself (the daemon serves gRPC without
//! tonic's transport timeout layer, which would report CANCELLED) and, when dropped before
//! the request ended (client gone), tells the backend to abort the sequence so its KV
//! cache is freed at once.

use super::backend::{BackendHandle, Command, Delivery, FinishReport};
use super::daemon::{Admission, Daemon};
use super::error::ServeError;
use super::proto::{self, generate_response::Event, inference_server::Inference};
use crate::metrics::Outcome;
use crate::request::RequestId;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

pub struct InferenceService {
    pub daemon: Arc<Daemon>,
}

#[tonic::async_trait]
impl Inference for InferenceService {
    type GenerateStream = RequestStream;

    async fn generate(
        &self,
        request: Request<proto::GenerateRequest>,
    ) -> Result<Response<RequestStream>, Status> {
        let admission = self.admit(request).await?;
        Ok(Response::new(RequestStream::new(admission)))
    }

    async fn complete(
        &self,
        request: Request<proto::GenerateRequest>,
    ) -> Result<Response<proto::CompleteResponse>, Status> {
        let mut stream = RequestStream::new(self.admit(request).await?);
        let mut out = proto::CompleteResponse::default();
        while let Some(item) = stream.next().await {
            match item?.event {
                Some(Event::Started(s)) => out.started = Some(s),
                Some(Event::Tokens(t)) => out.text.push_str(&t.text),
                Some(Event::Finished(f)) => out.finished = Some(f),
                None => {}
            }
        }
        Ok(Response::new(out))
    }
}

impl InferenceService {
    async fn admit(
        &self,
        request: Request<proto::GenerateRequest>,
    ) -> Result<Admission, ServeError> {
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

/// One request's response stream.
pub struct RequestStream {
    id: RequestId,
    client_id: String,
    backend: Arc<BackendHandle>,
    deliveries: UnboundedReceiver<Delivery>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    received: Instant,
    /// Set once the request has ended as far as the driver is concerned, so dropping the
    /// stream sends no abort.
    ended: bool,
    /// Tokens delivered so far, to pick their text.
    tokens: u32,
}

impl RequestStream {
    fn new(a: Admission) -> RequestStream {
        RequestStream {
            id: a.id,
            client_id: a.client_id,
            backend: a.backend,
            deliveries: a.deliveries,
            deadline: a
                .deadline
                .map(|d| Box::pin(tokio::time::sleep_until(d.into()))),
            received: a.received,
            ended: false,
            tokens: 0,
        }
    }

    fn abort(&mut self, outcome: Outcome) {
        if !self.ended {
            self.ended = true;
            self.backend.send(Command::Abort {
                id: self.id,
                outcome,
            });
        }
    }

    fn started(&self, queue_ns: u64) -> proto::Started {
        proto::Started {
            request_id: self.client_id.clone(),
            backend: self.backend.name.to_string(),
            pool: self.backend.pool.to_string(),
            chip: self.backend.chip.to_string(),
            queue_seconds: queue_ns as f64 / 1e9,
        }
    }
}

fn finished(r: &FinishReport) -> proto::Finished {
    let s = |ns: u64| ns as f64 / 1e9;
    proto::Finished {
        usage: Some(proto::Usage {
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
        }),
        finish_reason: proto::FinishReason::Length as i32,
        timings: Some(proto::Timings {
            queue_seconds: s(r.queue_ns),
            ttft_seconds: s(r.ttft_ns),
            mean_inter_token_seconds: s(r.mean_inter_token_ns),
            e2e_seconds: s(r.e2e_ns),
        }),
    }
}

impl Stream for RequestStream {
    type Item = Result<proto::GenerateResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(sleep) = this.deadline.as_mut() {
            if sleep.as_mut().poll(cx).is_ready() {
                this.deadline = None;
                this.abort(Outcome::DeadlineExceeded);
                let elapsed_ms = this.received.elapsed().as_millis() as u64;
                return Poll::Ready(Some(
                    Err(ServeError::DeadlineExceeded { elapsed_ms }.into()),
                ));
            }
        }
        let Poll::Ready(delivery) = this.deliveries.poll_recv(cx) else {
            return Poll::Pending;
        };
        let event = match delivery {
            Some(Delivery::Started { queue_ns }) => Event::Started(this.started(queue_ns)),
            Some(Delivery::Tokens { count }) => {
                let text = token_text(this.tokens, count);
                this.tokens += count;
                Event::Tokens(proto::TokenChunk { text, count })
            }
            Some(Delivery::Finished(report)) => {
                this.ended = true;
                this.deadline = None;
                Event::Finished(finished(&report))
            }
            Some(Delivery::Ended(outcome)) => {
                this.ended = true;
                this.deadline = None;
                let why = match outcome {
                    Outcome::Shutdown => {
                        "the daemon shut down before the request finished".to_string()
                    }
                    _ => format!("backend {} failed", this.backend.name),
                };
                return Poll::Ready(Some(Err(ServeError::Unavailable(why).into())));
            }
            Some(Delivery::Admitted | Delivery::Refused(_)) => {
                return Poll::Ready(Some(Err(Status::internal("admission delivered twice"))));
            }
            None => {
                // The driver exited without ending the request (only if it panicked).
                this.ended = true;
                this.deadline = None;
                return Poll::Ready(Some(Err(ServeError::Unavailable(format!(
                    "backend {} stopped",
                    this.backend.name
                ))
                .into())));
            }
        };
        Poll::Ready(Some(Ok(proto::GenerateResponse { event: Some(event) })))
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        self.abort(Outcome::Cancelled);
    }
}

/// Placeholder text for simulated tokens: a fixed word cycle, so message sizes look like a
/// real stream (about five bytes per token) without any tokenizer.
const WORDS: [&str; 16] = [
    " the",
    " river",
    " splits",
    " into",
    " two",
    " channels",
    " at",
    " the",
    " weir",
    ",",
    " and",
    " water",
    " flows",
    " on",
    " evenly",
    ".",
];

fn token_text(first: u32, count: u32) -> String {
    let mut s = String::with_capacity(count as usize * 6);
    for i in first..first + count {
        s.push_str(WORDS[i as usize % WORDS.len()]);
    }
    s
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
