//! One accepted request's life as a stream of events, whichever front end it came by: the
//! gRPC service sends each event as a `GenerateResponse`, the OpenAI HTTP front end as
//! server-sent events. Everything about a request after acceptance lives here once, so
//! the two front ends cannot disagree on it.
//!
//! The stream enforces the client's deadline itself and, when dropped before the request
//! ended (client gone), tells the backend to abort the sequence so its KV cache is freed
//! at once.
//!
//! The stream owns the request's life: its admission permit, and the one terminal outcome
//! recorded when it ends, whatever ends it. When its backend fails the stream moves it:
//! a request that produced nothing yet is routed again; one already streaming continues on
//! another backend, which prefills the prompt plus the tokens already sent and produces
//! only the tokens still owed, so the client sees each token index exactly once. After
//! `migration_retries` moves it ends with UNAVAILABLE. On a prefill/decode fleet the
//! prefill backend hands the request off (`Delivery::HandedOff`): the stream then follows
//! the decode backend, and an abort reaches both sides, so the KV is freed wherever it is.

use super::backend::{BackendHandle, Command, Delivery, FinishReport, Resume};
use super::daemon::{Accepted, Daemon};
use super::error::ServeError;
use super::mailbox::Inbox;
use crate::admission::{self, Permit};
use crate::metrics::Outcome;
use crate::request::{self, Nanos};
use crate::wire::{self, generate_response::Event};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio_stream::Stream;

/// One request's response stream.
pub struct RequestStream {
    daemon: Arc<Daemon>,
    /// The request as first placed.
    request: request::Request,
    model: String,
    client_id: String,
    backend: Arc<BackendHandle>,
    /// Where a prefill backend hands the request off (prefill/decode fleets): the
    /// policy's pair until the hand-off, then the backend that took it.
    decode: Option<Arc<BackendHandle>>,
    /// The prefill backend it was handed off from (it frees the KV once sent).
    prefill: Option<Arc<BackendHandle>>,
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
    /// The front end it came by.
    frontend: crate::metrics::Frontend,
    /// The request's text, for a backend it is moved to.
    ask: Arc<super::upstream::Ask>,
    /// The reader wants only the end ([`RequestStream::wake_only_at_end`]).
    quiet: bool,
    /// The reader names the placement and writes simulated tokens' text itself
    /// ([`RequestStream::bare_events`]).
    bare: bool,
}

impl RequestStream {
    pub fn new(daemon: Arc<Daemon>, a: Accepted) -> RequestStream {
        RequestStream {
            daemon,
            request: a.request,
            model: a.model,
            client_id: a.client_id,
            backend: a.backend,
            decode: a.decode,
            prefill: None,
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
            frontend: a.frontend,
            ask: a.ask,
            quiet: false,
            bare: false,
        }
    }

    /// The prompt length the request was accepted with, in tokens.
    pub fn prompt_tokens(&self) -> u32 {
        self.request.prompt_tokens
    }

    /// The output tokens the request asked for (the simulated backends produce exactly
    /// this many).
    pub fn max_tokens(&self) -> u32 {
        self.request.max_tokens
    }

    /// The model the request was accepted for.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The request id the client gave, or the one generated for it.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The backend serving the request now.
    pub fn backend(&self) -> &BackendHandle {
        &self.backend
    }

    /// The decode backend continuing it after a prefill backend, when known (the policy
    /// paired them, or the hand-off happened).
    pub fn decode_backend(&self) -> Option<&BackendHandle> {
        self.decode.as_deref()
    }

    /// Whether a real engine serves it: its tokens carry the engine's text, grouped as
    /// the engine sent them, and it may stop before `max_tokens`.
    pub fn proxied(&self) -> bool {
        self.backend.endpoint.is_some()
    }

    /// For a reader that answers once at the end (gRPC `Complete`, a non-streaming
    /// OpenAI response): its task is woken only by what ends or moves the request, not by
    /// every token chunk, and reads what came in between at once. Events, their order and
    /// the deadline are unchanged.
    pub fn wake_only_at_end(&mut self) {
        self.quiet = true;
        self.deliveries.wake_only_at_end();
    }

    /// For a reader that takes the placement from [`RequestStream::backend`] and
    /// [`RequestStream::client_id`], and writes simulated tokens' text itself from their
    /// index ([`token_word`]), as the OpenAI front end does: `Started` then carries only
    /// its queue time, and a simulated backend's token chunks no text (a real engine's
    /// keep theirs), so neither is copied into strings nobody reads. Events, their order,
    /// counts and the deadline are unchanged.
    pub fn bare_events(&mut self) {
        self.bare = true;
    }

    fn ended(&self) -> bool {
        self.permit.is_none()
    }

    /// Records the request's terminal outcome (once; later calls do nothing).
    fn end(&mut self, outcome: Outcome) {
        if let Some(permit) = self.permit.take() {
            self.deadline = None;
            self.daemon.metrics.ended(outcome, self.frontend);
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
            // A hand-off not read yet names the backend that holds it now; and once the
            // mailbox is abandoned, a backend about to take it on (its KV on the way)
            // drops it instead, so its KV is freed on whichever side holds it.
            while let Some(d) = self.deliveries.try_recv() {
                if let Delivery::HandedOff(d) = d {
                    self.handed_to(d.0);
                }
            }
            self.deliveries.abandon();
            self.backend.send(Command::Abort {
                id: self.request.id,
            });
            // The prefill side may still hold its KV while the link sends it.
            if let Some(p) = self.prefill.take() {
                p.send(Command::Abort {
                    id: self.request.id,
                });
            }
            self.end(outcome);
        }
    }

    /// A prefill backend handed the request to `decode`, which continues it.
    fn handed_to(&mut self, decode: Arc<BackendHandle>) {
        tracing::trace!(from = %self.backend.name, to = %decode.name, "request handed off");
        if self.prefill.is_none() {
            self.prefill = Some(self.backend.clone());
        }
        self.backend = decode.clone();
        self.decode = Some(decode);
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
        let (backend, decode, deliveries) = self
            .daemon
            .relocate(req, &self.model, resume, self.ask.clone())
            .map_err(|e| match e {
                ServeError::Unavailable(why) => ServeError::Unavailable(format!(
                    "backend {} failed and the request could not be moved: {why}",
                    self.backend.name
                )),
                other => other,
            })?;
        tracing::debug!(from = %self.backend.name, to = %backend.name, delivered, "request moved");
        if self.quiet {
            deliveries.wake_only_at_end();
        }
        self.backend = backend;
        self.decode = decode;
        self.prefill = None;
        self.deliveries = deliveries;
        self.moves += 1;
        Ok(())
    }

    fn started(&self, queue_ns: u64) -> wire::Started {
        if self.bare {
            return wire::Started {
                queue_seconds: queue_ns as f64 / 1e9,
                ..wire::Started::default()
            };
        }
        // Copies of the names (not `to_string`, which formats through `Display`).
        let own = |s: &Arc<str>| String::from(&**s);
        let decode = self.decode.as_deref();
        wire::Started {
            request_id: self.client_id.clone(),
            backend: own(&self.backend.name),
            pool: own(&self.backend.pool),
            chip: own(&self.backend.chip),
            queue_seconds: queue_ns as f64 / 1e9,
            decode_backend: decode.map_or_else(String::new, |d| own(&d.name)),
            decode_pool: decode.map_or_else(String::new, |d| own(&d.pool)),
            decode_chip: decode.map_or_else(String::new, |d| own(&d.chip)),
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
        finish_reason: if r.stopped {
            wire::FinishReason::Stop
        } else {
            wire::FinishReason::Length
        } as i32,
        timings: Some(wire::Timings {
            queue_seconds: s(r.queue_ns),
            ttft_seconds: s(r.ttft_ns),
            mean_inter_token_seconds: s(r.mean_inter_token_ns),
            e2e_seconds: s(r.e2e_ns),
        }),
    }
}

impl Stream for RequestStream {
    type Item = Result<Event, ServeError>;

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
                    return Poll::Ready(Some(Err(ServeError::DeadlineExceeded { elapsed_ms })));
                }
            }
            let Poll::Ready(delivery) = this.deliveries.poll_recv(cx) else {
                return Poll::Pending;
            };
            let event = match delivery {
                // The backend a moved request went to took it.
                Some(Delivery::Admitted) => continue,
                Some(Delivery::HandedOff(d)) => {
                    this.handed_to(d.0);
                    continue;
                }
                // Its backend failed, or the one it was moved to could not take it.
                Some(Delivery::Displaced | Delivery::Refused(_)) => match this.relocate() {
                    Ok(()) => continue,
                    Err(e) => {
                        this.end(Outcome::Failed);
                        return Poll::Ready(Some(Err(e)));
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
                Some(Delivery::Tokens { count, text }) => {
                    if this.first_token_at.is_none() {
                        this.first_token_at = Some(this.daemon.now());
                    }
                    let text = match text {
                        Some(text) => text,
                        None if this.bare => String::new(),
                        None => token_text(this.tokens, count),
                    };
                    this.tokens += count;
                    Event::Tokens(wire::TokenChunk { text, count })
                }
                Some(Delivery::Failed(why)) => {
                    this.end(Outcome::Failed);
                    return Poll::Ready(Some(Err(ServeError::Unavailable(why))));
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
                    return Poll::Ready(Some(Err(ServeError::Unavailable(why))));
                }
                None => {
                    // The driver exited without ending the request (only if it panicked).
                    this.end(Outcome::Failed);
                    return Poll::Ready(Some(Err(ServeError::Unavailable(format!(
                        "backend {} stopped",
                        this.backend.name
                    )))));
                }
            };
            return Poll::Ready(Some(Ok(event)));
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
        s.push_str(token_word(i));
    }
    s
}

/// The text of token `index` of any stream (one piece of [`token_text`]).
pub fn token_word(index: u32) -> &'static str {
    WORDS[index as usize % WORDS.len()]
}
