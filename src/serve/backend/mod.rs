//! Backend drivers: each simulated backend is one tokio task that owns an [`Engine`] at
//! per-token granularity and paces it in wall-clock time. The task sleeps until the wall
//! instant of the engine's next event only while the engine holds work; an idle backend
//! just waits on its command channel, so thousands of idle backends cost no timers and no
//! CPU.
//!
//! Every accepted request has a delivery mailbox ([`super::mailbox`]) to the gRPC handler
//! that streams it: bounded, and never waited on, so a client that stops reading neither
//! grows the daemon's memory nor stalls the backend's other requests. The driver turns
//! engine events into deliveries (Started, token chunks, Finished), records
//! latency metrics, and after every change writes the engine's load into the fleet's
//! atomic load board so routing policies read it without locks.
//!
//! Outcome accounting does not live here: a request may outlive its backend (it is moved
//! to another one when its backend fails), so the handler that streams it owns its
//! admission permit and records its one terminal outcome. A driver only reports what
//! happened: finished, displaced by a failure, or ended by shutdown.
//!
//! Drivers also measure themselves for straggler detection: every step's time on the
//! fleet clock (what clients observe) over its time in the engine's model (what the
//! performance model predicts) feeds an EWMA that the daemon's outlier check reads.
//!
//! Prefill/decode fleets run here with the engine and policy replay runs: a prefill
//! backend hands a request off after its first token ([`pd`]), its KV crosses the fleet's
//! modelled link in wall-clock time ([`link`]), and the decode backend continues the
//! same client stream.

mod driver;
mod link;
mod pd;

pub use driver::spawn_backend;
pub use link::KvLinks;

use super::clock::SimClock;
use super::mailbox::Outbox;
pub use super::upstream::Ask;
use crate::engine::AdmitError;
use crate::fleet::{AtomicLoadBoard, BackendId, Claim, Link, LinkTable, PoolConfig};
use crate::metrics::{
    BackendGauges, FinishedLatencies, LatencySummary, Metrics, Outcome, PoolHistograms, PoolMetrics,
};
use crate::request::{Nanos, Request, RequestId, Slo};
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// What a driver tells the handler of one request, in order: `Admitted` or `Refused`
/// first, then `Started`, `Tokens`…, and `Finished` or `Ended`.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Admitted,
    Refused(Refusal),
    /// Scheduled into its first step after `queue_ns` simulated ns in the queue.
    Started {
        queue_ns: Nanos,
    },
    /// `count` tokens; `text` is theirs when a real engine produced them (a proxied
    /// backend), `None` for simulated ones (the stream writes their placeholder text).
    Tokens {
        count: u32,
        text: Option<String>,
    },
    Finished(FinishReport),
    /// The backend failed after the client got tokens and the request cannot continue
    /// elsewhere (a real engine's output cannot be resumed token-exactly): the handler
    /// ends it as failed with this reason.
    Failed(String),
    /// The backend failed: the request is no longer on it, and every token it produced
    /// was delivered before this. The handler moves it elsewhere or ends it.
    Displaced,
    /// A prefill backend handed the request off: its KV is on the way to this decode
    /// backend, which continues it (aborts go there from now on).
    HandedOff(Decode),
    /// Ended by the daemon before finishing (backend removed, or shutdown).
    Ended(Outcome),
}

/// The decode backend a request was handed off to (equal when it is the same backend).
#[derive(Debug, Clone)]
pub struct Decode(pub Arc<BackendHandle>);

impl PartialEq for Decode {
    fn eq(&self, other: &Decode) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Why a backend did not take a request it was sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The request can never fit this backend (KV capacity).
    Engine(AdmitError),
    /// The backend failed, is retired, or the daemon is shutting down.
    Unavailable,
}

/// Latencies of a finished request, in simulated ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FinishReport {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub queue_ns: Nanos,
    pub ttft_ns: Nanos,
    /// Mean gap between tokens after the first; 0 for a one-token answer.
    pub mean_inter_token_ns: Nanos,
    pub e2e_ns: Nanos,
    /// The engine stopped before `max_tokens` (end of sequence or a stop string); only
    /// real engines do.
    pub stopped: bool,
}

/// Instructions to a driver. Unbounded: a handler never waits on a backend, and the
/// number of commands in flight is bounded by admission.
#[derive(Debug)]
pub enum Command {
    /// `req.arrival` is on the fleet clock; the driver re-bases it on its own.
    Admit {
        req: Request,
        /// What the router counted on this backend for the request; given back once
        /// the driver has published a load that includes it (or has refused it).
        claim: Claim,
        deliver: Outbox,
        /// Set when the request was moved here from a failed backend.
        resume: Option<Resume>,
        /// The policy that routed it here: its latencies are labelled with this one, not
        /// with whichever is in force when its tokens arrive.
        policy: Arc<str>,
        /// The request's text and what else a real engine is sent (simulated backends
        /// need only `req`).
        ask: Arc<Ask>,
        /// On a prefill backend: the decode backend the policy paired it with (`None`:
        /// one is chosen at the hand-off, as replay does).
        decode: Option<Arc<BackendHandle>>,
    },
    /// A handed-off request's KV has arrived: it joins this (decode) backend's batch.
    Transferred(Box<pd::Handed>),
    /// The link has sent the last byte of a request this (prefill) backend handed off,
    /// at fleet time `at`: its KV is freed.
    Sent { id: RequestId, at: Nanos },
    /// The handler gave up on the request (client gone, deadline).
    Abort { id: RequestId },
    /// Runs a small synthetic request so an ejected straggler produces step samples.
    Probe,
    /// Fault: every request leaves (`Displaced`). Sent after the membership marks the
    /// backend failed, which is what makes it refuse work until it serves again.
    Fail,
    /// Fault: multiply step times by this factor from now on.
    Slowdown(f64),
    /// Ends a slowdown (the membership says whether the backend serves).
    ClearFault,
    /// Ends everything it holds with `outcome` and exits (shutdown grace ran out).
    Retire(Outcome),
    /// Takes no new work and exits once what it holds has finished (pool removed).
    RetireWhenIdle,
}

/// A request continued on this backend after its first one failed. Its `req` already
/// carries the prompt plus the tokens delivered (to prefill again) and only the tokens
/// still owed; this says what the client has already seen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resume {
    /// Tokens the client already has; the report counts them, and the driver records no
    /// second time to first token.
    pub delivered: u32,
    /// Original prompt length, for the report.
    pub prompt_tokens: u32,
    /// Fleet time of the first token on the earlier backend, if there was one.
    pub first_token_at: Option<Nanos>,
    pub queue_ns: Nanos,
}

/// What the rest of the daemon knows about a backend: its identity and its channel.
#[derive(Debug)]
pub struct BackendHandle {
    pub id: BackendId,
    /// Server-assigned name, `<pool>-<index>`.
    pub name: Arc<str>,
    pub pool: Arc<str>,
    pub chip: Arc<str>,
    pub model: Arc<str>,
    pub tp: u32,
    /// The API base of the real engine this backend proxies to; `None`: simulated.
    pub endpoint: Option<Arc<str>>,
    commands: UnboundedSender<Command>,
    /// Current slowdown factor, for listings (the driver owns the real clock).
    slowdown: parking_lot::Mutex<f64>,
    /// The driver's step-time EWMA (f64 bits) and sample count, for the outlier check.
    step_ratio: AtomicU64,
    step_samples: AtomicU64,
    /// Whether the engine holds nothing (probes are sent only then).
    idle: AtomicBool,
    pub(super) gauges: GaugesHandle,
    /// The pool's series (outcomes are counted there by the request's handler).
    pub pool_metrics: Arc<PoolMetrics>,
}

/// A backend's gauges, shared by its driver and the straggler check.
#[derive(Clone)]
pub(super) struct GaugesHandle(pub BackendGauges);

impl std::fmt::Debug for GaugesHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackendGauges")
    }
}

impl std::ops::Deref for GaugesHandle {
    type Target = BackendGauges;
    fn deref(&self) -> &BackendGauges {
        &self.0
    }
}

impl BackendHandle {
    /// Sends a command; false when the driver has exited.
    pub fn send(&self, cmd: Command) -> bool {
        if let Command::Slowdown(f) = cmd {
            *self.slowdown.lock() = f;
        } else if matches!(cmd, Command::ClearFault) {
            *self.slowdown.lock() = 1.0;
        }
        self.commands.send(cmd).is_ok()
    }

    /// Hands an arrived request to this (decode) backend, or gives it back when the
    /// driver has exited.
    fn send_transferred(&self, h: Box<pd::Handed>) -> Result<(), Box<pd::Handed>> {
        self.commands
            .send(Command::Transferred(h))
            .map_err(|e| match e.0 {
                Command::Transferred(h) => h,
                _ => unreachable!("sent a Transferred"),
            })
    }

    pub fn slowdown(&self) -> f64 {
        *self.slowdown.lock()
    }

    /// Observed over predicted step time (EWMA) and how many steps it covers.
    pub fn step_ratio(&self) -> (f64, u64) {
        (
            f64::from_bits(self.step_ratio.load(Relaxed)),
            self.step_samples.load(Relaxed),
        )
    }

    pub fn is_idle(&self) -> bool {
        self.idle.load(Relaxed)
    }

    /// A handle for a backend of `pool` whose driver reads `commands`.
    pub(super) fn new(
        ctx: &DriverContext,
        id: BackendId,
        name: String,
        pool: &PoolConfig,
        endpoint: Option<Arc<str>>,
        commands: UnboundedSender<Command>,
    ) -> BackendHandle {
        let perf = &pool.perf;
        let pool_metrics = ctx.metrics.pool_metrics(&pool.name, &perf.chip.id);
        let gauges = pool_metrics.backend(&name);
        BackendHandle {
            id,
            name: name.into(),
            pool: pool.name.as_str().into(),
            chip: perf.chip.id.as_str().into(),
            model: perf.model.id.as_str().into(),
            tp: perf.tp,
            endpoint,
            commands,
            slowdown: parking_lot::Mutex::new(1.0),
            step_ratio: AtomicU64::new(1f64.to_bits()),
            step_samples: AtomicU64::new(0),
            idle: AtomicBool::new(true),
            gauges: GaugesHandle(gauges),
            pool_metrics,
        }
    }

    /// Publishes a driver's step-time EWMA and whether it holds nothing.
    pub(super) fn publish_health(&self, ratio: f64, samples: u64, idle: bool) {
        self.idle.store(idle, Relaxed);
        self.step_ratio.store(ratio.to_bits(), Relaxed);
        self.step_samples.store(samples, Relaxed);
        self.gauges.step_time_ratio.set(ratio);
    }
}

/// Shared context every driver reads.
pub struct DriverContext {
    pub clock: SimClock,
    pub metrics: Arc<Metrics>,
    pub board: Arc<AtomicLoadBoard>,
    /// Weight of each step sample in the step-time EWMA.
    pub ewma_alpha: f64,
    /// How proxied backends talk to their real engines, and their shared HTTP client.
    pub upstream: super::upstream::UpstreamContext,
    /// Every driver's handle by backend id (`None` once removed): where a prefill backend
    /// finds the decode backend it hands off to.
    pub backends: Arc<ArcSwap<Vec<Option<Arc<BackendHandle>>>>>,
    /// The KV links between the fleet's pools (by pool index at start).
    pub links: LinkTable,
    /// The task moving KV over those links.
    pub kv: KvLinks,
}

impl DriverContext {
    /// The link from pool `from` to pool `to`; pools added at run time get the default.
    pub fn link(&self, from: usize, to: usize) -> Link {
        if from < self.links.pools() && to < self.links.pools() {
            self.links.between(from, to)
        } else {
            LinkTable::link(
                crate::fleet::DEFAULT_BANDWIDTH_GBPS,
                crate::fleet::DEFAULT_LATENCY_US,
            )
        }
    }

    /// A live backend's handle.
    pub fn handle(&self, id: BackendId) -> Option<Arc<BackendHandle>> {
        self.backends.load().get(id.index()).cloned().flatten()
    }
}

pub(super) fn secs(ns: Nanos) -> f64 {
    ns as f64 / 1e9
}

/// Records a finished request's SLO misses, E2E time and latency summary: the same for a
/// simulated backend and a real engine.
pub(super) fn record_finished(
    summary: &LatencySummary,
    h: &PoolHistograms,
    slo: Slo,
    r: &FinishReport,
) {
    let tpot = (r.completion_tokens > 1).then_some(r.mean_inter_token_ns);
    let ttft_missed = r.ttft_ns > slo.ttft_ns;
    let tpot_missed = tpot.is_some_and(|t| t > slo.tpot_ns);
    if ttft_missed {
        h.slo_ttft_violations.increment(1);
    }
    if tpot_missed {
        h.slo_tpot_violations.increment(1);
    }
    h.e2e.record(secs(r.e2e_ns));
    summary.record(&FinishedLatencies {
        queue_ns: r.queue_ns,
        ttft_ns: r.ttft_ns,
        e2e_ns: r.e2e_ns,
        slo_violated: ttft_missed || tpot_missed,
    });
}
