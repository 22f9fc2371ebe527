//! The `dujiang.v1.Inference` service. `Generate` turns a request's deliveries into a
//! response stream; `Complete` drains the same stream into one answer.
//!
//! The stream enforces the client's `grpc-timeout` itself (the daemon serves gRPC without
//! tonic's transport timeout layer, which would report CANCELLED) and, when dropped before
//! the request ended (client gone), tells the backend to abort the sequence so its KV
//! cache is freed at once.
//!
//! The stream owns the request's life: its admission permit, and the one terminal outcome
//! recorded when it ends, whatever ends it. When its backend fails the stream moves it:
//! a request that produced nothing yet is routed again; one already streaming continues on
//! another backend, which prefills the prompt plus the tokens already sent and produces
//! only the tokens still owed, so the client sees each token index exactly once. After
//! `migration_retries` moves it ends with UNAVAILABLE.

use super::backend::{BackendHandle, Command, Delivery, FinishReport, Resume};
use super::daemon::{Accepted, Daemon};
use super::error::ServeError;
use super::mailbox::Inbox;
use crate::admission::{self, Permit};
use crate::metrics::Outcome;
use crate::request::{self, Nanos};
use crate::wire::{self, generate_response::Event, inference_server::Inference};
use std::future::Future;
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
    type GenerateStream = RequestStream;

    async fn generate(
        &self,
        request: Request<wire::GenerateRequest>,
    ) -> Result<Response<RequestStream>, Status> {
        let accepted = self.admit(request).await?;
        Ok(Response::new(RequestStream::new(
            self.daemon.clone(),
            accepted,
        )))
    }

    async fn complete(
        &self,
        request: Request<wire::GenerateRequest>,
    ) -> Result<Response<wire::CompleteResponse>, Status> {
        let mut stream = RequestStream::new(self.daemon.clone(), self.admit(request).await?);
        let mut out = wire::CompleteResponse::default();
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

/// One request's response stream.
pub struct RequestStream {
    daemon: Arc<Daemon>,
    /// The request as first placed.
    request: request::Request,
    model: String,
    client_id: String,
    backend: Arc<BackendHandle>,
    deliveries: Inbox,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    received: Instant,
    /// Taken when the request ends; its outcome is recorded exactly then.
    permit: Option<Permit>,
    /// Tokens delivered so far, to pick their text and to resume after a move.
    tokens: u32,
    started_sent: bool,
    queue_ns: Nanos,
    /// Fleet time the client got its first token.
    first_token_at: Option<Nanos>,
    /// Times the request was moved off a failed backend.
    moves: u32,
}

impl RequestStream {
    fn new(daemon: Arc<Daemon>, a: Accepted) -> RequestStream {
        RequestStream {
            daemon,
            request: a.request,
            model: a.model,
            client_id: a.client_id,
            backend: a.backend,
            deliveries: a.deliveries,
            deadline: a
                .deadline
                .map(|d| Box::pin(tokio::time::sleep_until(d.into()))),
            received: a.received,
            permit: Some(a.permit),
            tokens: 0,
            started_sent: false,
            queue_ns: 0,
            first_token_at: None,
            moves: 0,
        }
    }

    fn ended(&self) -> bool {
        self.permit.is_none()
    }

    /// Records the request's terminal outcome (once; later calls do nothing).
    fn end(&mut self, outcome: Outcome) {
        if let Some(permit) = self.permit.take() {
            self.deadline = None;
            self.daemon.metrics.ended(outcome);
            self.daemon
                .request_ended(&self.request, self.backend.id, self.tokens);
            self.backend.pool_metrics.ended(outcome);
            permit.finish(match outcome {
                Outcome::Ok => admission::Outcome::Completed,
                Outcome::Cancelled => admission::Outcome::Cancelled,
                Outcome::DeadlineExceeded => admission::Outcome::DeadlineExceeded,
                Outcome::Failed | Outcome::Shutdown => admission::Outcome::Failed,
            });
        }
    }

    /// Ends the request from this side and tells its backend to drop it.
    fn abort(&mut self, outcome: Outcome) {
        if !self.ended() {
            self.backend.send(Command::Abort {
                id: self.request.id,
            });
            self.end(outcome);
        }
    }

    /// Moves the request off its failed backend, or says why it cannot be.
    fn relocate(&mut self) -> Result<(), ServeError> {
        let budget = self.daemon.reliability.migration_retries;
        if self.moves >= budget {
            return Err(ServeError::Unavailable(format!(
                "backend {} failed and the request was already moved {} times",
                self.backend.name, self.moves
            )));
        }
        let delivered = self.tokens;
        // The core's routine, which replay moves requests with too.
        let Some(req) = self.request.resumed_after(delivered) else {
            return Err(ServeError::Unavailable(format!(
                "backend {} failed after the last token",
                self.backend.name
            )));
        };
        let resume = (delivered > 0).then_some(Resume {
            delivered,
            prompt_tokens: self.request.prompt_tokens,
            first_token_at: self.first_token_at,
            queue_ns: self.queue_ns,
        });
        let (backend, deliveries) =
            self.daemon
                .relocate(req, &self.model, resume)
                .map_err(|e| match e {
                    ServeError::Unavailable(why) => ServeError::Unavailable(format!(
                        "backend {} failed and the request could not be moved: {why}",
                        self.backend.name
                    )),
                    other => other,
                })?;
        tracing::debug!(from = %self.backend.name, to = %backend.name, delivered, "request moved");
        self.backend = backend;
        self.deliveries = deliveries;
        self.moves += 1;
        Ok(())
    }

    fn started(&self, queue_ns: u64) -> wire::Started {
        wire::Started {
            request_id: self.client_id.clone(),
            backend: self.backend.name.to_string(),
            pool: self.backend.pool.to_string(),
            chip: self.backend.chip.to_string(),
            queue_seconds: queue_ns as f64 / 1e9,
        }
    }
}

fn finished(r: &FinishReport) -> wire::Finished {
    let s = |ns: u64| ns as f64 / 1e9;
    wire::Finished {
        usage: Some(wire::Usage {
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
        }),
        finish_reason: wire::FinishReason::Length as i32,
        timings: Some(wire::Timings {
            queue_seconds: s(r.queue_ns),
            ttft_seconds: s(r.ttft_ns),
            mean_inter_token_seconds: s(r.mean_inter_token_ns),
            e2e_seconds: s(r.e2e_ns),
        }),
    }
}

impl Stream for RequestStream {
    type Item = Result<wire::GenerateResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.ended() {
                return Poll::Ready(None);
            }
            if let Some(sleep) = this.deadline.as_mut() {
                if sleep.as_mut().poll(cx).is_ready() {
                    this.abort(Outcome::DeadlineExceeded);
                    let elapsed_ms = this.received.elapsed().as_millis() as u64;
                    return Poll::Ready(Some(Err(
                        ServeError::DeadlineExceeded { elapsed_ms }.into()
                    )));
                }
            }
            let Poll::Ready(delivery) = this.deliveries.poll_recv(cx) else {
                return Poll::Pending;
            };
            let event = match delivery {
                // The backend a moved request went to took it.
                Some(Delivery::Admitted) => continue,
                // Its backend failed, or the one it was moved to could not take it.
                Some(Delivery::Displaced | Delivery::Refused(_)) => match this.relocate() {
                    Ok(()) => continue,
                    Err(e) => {
                        this.end(Outcome::Failed);
                        return Poll::Ready(Some(Err(e.into())));
                    }
                },
                Some(Delivery::Started { queue_ns }) => {
                    if this.started_sent {
                        continue;
                    }
                    this.started_sent = true;
                    this.queue_ns = queue_ns;
                    Event::Started(this.started(queue_ns))
                }
                Some(Delivery::Tokens { count }) => {
                    if this.first_token_at.is_none() {
                        this.first_token_at = Some(this.daemon.now());
                    }
                    let text = token_text(this.tokens, count);
                    this.tokens += count;
                    Event::Tokens(wire::TokenChunk { text, count })
                }
                Some(Delivery::Finished(report)) => {
                    this.end(Outcome::Ok);
                    Event::Finished(finished(&report))
                }
                Some(Delivery::Ended(outcome)) => {
                    this.end(outcome);
                    let why = match outcome {
                        Outcome::Shutdown => {
                            "the daemon shut down before the request finished".to_string()
                        }
                        _ => format!("backend {} was removed", this.backend.name),
                    };
                    return Poll::Ready(Some(Err(ServeError::Unavailable(why).into())));
                }
                None => {
                    // The driver exited without ending the request (only if it panicked).
                    this.end(Outcome::Failed);
                    return Poll::Ready(Some(Err(ServeError::Unavailable(format!(
                        "backend {} stopped",
                        this.backend.name
                    ))
                    .into())));
                }
            };
            return Poll::Ready(Some(Ok(wire::GenerateResponse { event: Some(event) })));
        }
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

/// The text of tokens `first .. first + count` of any stream: the same for every request,
/// so a client (or a test) can check that a migrated stream repeated or skipped nothing.
pub fn token_text(first: u32, count: u32) -> String {
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
