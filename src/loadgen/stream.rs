//! One request over gRPC: a `Generate` stream sent from its own task, timed on the client
//! side from the moment the task starts sending to each token chunk and to `Finished`.
//! Also the [`Outcome`] both clients (this one and [`super::openai`]) report.

use super::collect::code_name;
use crate::request::{Priority, Slo, NANOS_PER_MS};
use crate::trace::TraceRecord;
use crate::wire::{self, generate_response::Event, inference_client::InferenceClient};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

/// Where the daemon placed a request (its `Started` message).
#[derive(Clone, Debug)]
pub(super) struct Placement {
    pub pool: String,
    pub chip: String,
    /// Queue time as the daemon reports it, already in simulated ns.
    pub queue_ns: u64,
}

/// What the client saw of one sent request. Durations are wall time.
#[derive(Debug)]
pub(super) struct Outcome {
    /// Trace arrival, simulated ns from the start.
    pub scheduled_ns: u64,
    /// How long after its due time the send started.
    pub lag: Duration,
    pub placement: Option<Placement>,
    pub first_token: Option<Duration>,
    /// To `Finished`, or to the error that ended the stream.
    pub end: Duration,
    pub ended_at: Instant,
    /// One entry per output token after the first: the wall gap before it. Tokens that
    /// arrive together in one chunk share the chunk's gap evenly.
    pub gaps: Vec<Duration>,
    pub output_tokens: u32,
    /// Output tokens asked for (the trace's output length).
    pub max_tokens: u32,
    /// The stream ended as the protocol says a served request ends (`Finished`, or an
    /// OpenAI stream's finish reason or `[DONE]`).
    pub completed: bool,
    /// How the request ended, named as in the report's `status_codes`: `ok`, a gRPC code
    /// (`resource_exhausted`, …), an HTTP status (`http_429`, …) or a client-side failure
    /// (`timeout`, `connect_error`, …).
    pub status: &'static str,
    pub slo: Slo,
    /// Refusals that were retried after their `Retry-After` (OpenAI client only).
    pub retries: u32,
    /// What the server's usage report said against the tokens counted from the stream
    /// (OpenAI client only; `NotAsked` for gRPC, whose chunks carry exact counts).
    pub usage: UsageCheck,
}

/// The OpenAI stream's usage chunk against the token chunks counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum UsageCheck {
    #[default]
    NotAsked,
    /// The server sent no usage (some servers ignore `stream_options`).
    Missing,
    /// Usage equals the chunks that carried text.
    Agrees,
    /// Usage differs from the chunk count (a server that puts several tokens in one
    /// chunk); the report counts usage's figure.
    Differs,
}

impl Outcome {
    /// A request about to be sent at `sent`, due at `due`.
    pub fn new(rec: &TraceRecord, due: Instant, sent: Instant, default_slo: Slo) -> Outcome {
        Outcome {
            scheduled_ns: rec.arrival_ns,
            lag: sent.saturating_duration_since(due),
            placement: None,
            first_token: None,
            end: Duration::ZERO,
            ended_at: sent,
            gaps: Vec::new(),
            output_tokens: 0,
            max_tokens: rec.output_tokens,
            completed: false,
            status: "ok",
            slo: rec.slo.unwrap_or(default_slo),
            retries: 0,
            usage: UsageCheck::NotAsked,
        }
    }
}

/// The request a trace record becomes: exact prompt length, exact output length.
pub(super) fn request(index: u64, rec: &TraceRecord) -> wire::GenerateRequest {
    wire::GenerateRequest {
        request_id: format!("load-{index}"),
        // The daemon needs some prompt text; `prompt_tokens` sets the length it models.
        prompt: "load test".into(),
        prompt_tokens: Some(rec.prompt_tokens),
        max_tokens: rec.output_tokens,
        priority: match rec.priority {
            Priority::Interactive => wire::Priority::Interactive as i32,
            Priority::Batch => wire::Priority::Batch as i32,
        },
        slo: rec.slo.map(|s| wire::Slo {
            ttft_ms: s.ttft_ns.div_ceil(NANOS_PER_MS),
            tpot_ms: s.tpot_ns.div_ceil(NANOS_PER_MS),
        }),
        prefix_hashes: rec.hash_ids.clone(),
        session_id: rec.session,
        // Trace model names (`gpt-4`, …) are not the daemon's: use the fleet's model.
        model: String::new(),
        messages: Vec::new(),
    }
}

pub(super) async fn send(
    mut client: InferenceClient<Channel>,
    index: u64,
    rec: TraceRecord,
    due: Instant,
    default_slo: Slo,
) -> Outcome {
    let sent = Instant::now();
    let mut out = Outcome::new(&rec, due, sent, default_slo);
    let req = request(index, &rec);
    let mut finished = None;
    let result = async {
        let mut stream = client.generate(req).await?.into_inner();
        let mut last = None;
        while let Some(msg) = stream.message().await? {
            let at = sent.elapsed();
            match msg.event {
                Some(Event::Started(s)) => {
                    out.placement = Some(Placement {
                        pool: s.pool,
                        chip: s.chip,
                        queue_ns: (s.queue_seconds * 1e9).round() as u64,
                    })
                }
                Some(Event::Tokens(t)) if t.count > 0 => {
                    match last {
                        None => {
                            out.first_token = Some(at);
                            out.gaps
                                .extend(std::iter::repeat_n(Duration::ZERO, t.count as usize - 1));
                        }
                        Some(prev) => {
                            let gap = (at - prev) / t.count;
                            out.gaps.extend(std::iter::repeat_n(gap, t.count as usize));
                        }
                    }
                    last = Some(at);
                    out.output_tokens += t.count;
                }
                Some(Event::Finished(_)) => finished = Some(at),
                _ => {}
            }
        }
        Ok::<(), tonic::Status>(())
    }
    .await;
    let now = Instant::now();
    // E2E ends at `Finished`, not at the trailers that follow it.
    out.end = finished.unwrap_or(now - sent);
    out.ended_at = sent + out.end;
    match result {
        Ok(()) if finished.is_some() => out.completed = true,
        // A stream that ends OK without `Finished` broke the protocol.
        Ok(()) => out.status = code_name(Code::Unknown),
        Err(status) => out.status = code_name(status.code()),
    }
    out
}
