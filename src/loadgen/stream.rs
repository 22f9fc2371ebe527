//! One request: a `Generate` stream sent from its own task, timed on the client side from
//! the moment the task starts sending to each token chunk and to `Finished`.

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
    /// `Finished` arrived and the stream ended OK.
    pub completed: bool,
    pub code: Code,
    pub slo: Slo,
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
    let mut out = Outcome {
        scheduled_ns: rec.arrival_ns,
        lag: sent.saturating_duration_since(due),
        placement: None,
        first_token: None,
        end: Duration::ZERO,
        ended_at: sent,
        gaps: Vec::new(),
        output_tokens: 0,
        completed: false,
        code: Code::Ok,
        slo: rec.slo.unwrap_or(default_slo),
    };
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
        Ok(()) => out.code = Code::Unknown,
        Err(status) => out.code = status.code(),
    }
    out
}
