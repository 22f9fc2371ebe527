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

use super::clock::{BackendClock, SimClock};
use super::mailbox::Outbox;
use super::outlier::StepRatio;
pub use super::upstream::Ask;
use crate::engine::{AdmitError, Engine, EngineConfig, EngineEvent, Granularity};
// Probes are the core's, the same ones replay sends.
use crate::fleet::outlier::{PROBE_ID_BASE, PROBE_MAX_TOKENS, PROBE_PROMPT_TOKENS};
use crate::fleet::{AtomicLoadBoard, BackendId, BackendState, Claim, LoadSlot, PoolConfig};
use crate::metrics::{
    BackendGauges, FinishedLatencies, LatencySummary, Metrics, Outcome, PoolHistograms, PoolMetrics,
};
use crate::request::{Nanos, Priority, Request, RequestId, Slo};
use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

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
    /// Ended by the daemon before finishing (backend removed, or shutdown).
    Ended(Outcome),
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
    },
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
}

/// Starts the driver task of one backend and returns its handle.
/// `index` is its place in its pool (a real engine's endpoint is the pool's `index`-th).
pub fn spawn_backend(
    ctx: &Arc<DriverContext>,
    id: BackendId,
    index: usize,
    name: String,
    pool: &PoolConfig,
) -> Arc<BackendHandle> {
    if let Some(upstream) = &pool.upstream {
        return super::upstream::spawn_proxy(ctx, id, index, name, pool, upstream);
    }
    let (tx, rx) = unbounded_channel();
    let perf = pool.perf.clone();
    let cfg = EngineConfig {
        block_size: pool.block_size,
        max_num_seqs: pool.max_num_seqs,
        max_batched_tokens: pool.max_batched_tokens,
        ..EngineConfig::for_perf(&perf)
    }
    .with_granularity(Granularity::PerToken);
    let handle = Arc::new(BackendHandle::new(ctx, id, name, pool, None, tx));
    let gauges = handle.gauges.0.clone();
    let slot = ctx.board.slot(id).unwrap_or_default();
    let driver = Driver {
        last_fleet: 0,
        engine: Engine::new(perf, cfg),
        clock: BackendClock::default(),
        ctx: ctx.clone(),
        gauges,
        ratio: StepRatio::new(ctx.ewma_alpha),
        last_step: None,
        probes: FxHashSet::default(),
        next_probe: PROBE_ID_BASE,
        summary: ctx.metrics.summary(&handle.pool),
        histograms: Vec::new(),
        handle: handle.clone(),
        slot,
        claims: Vec::new(),
        requests: FxHashMap::default(),
        events: Vec::new(),
        touched: Vec::new(),
        gaps: Vec::new(),
        retiring: false,
        rx,
    };
    tokio::spawn(driver.run());
    handle
}

/// One request inside a driver.
struct InFlight {
    deliver: Outbox,
    arrival: Nanos,
    prompt_tokens: u32,
    slo: Slo,
    started: bool,
    queue_ns: Nanos,
    first_token: Option<Nanos>,
    last_token: Nanos,
    delivered: u32,
    pending: u32,
    /// Tokens the client had before this backend took over (0 unless moved here).
    resumed: u32,
    /// Series of the policy that routed it.
    hist: Arc<PoolHistograms>,
}

/// tokio's timer fires on whole-millisecond ticks, so a sleep ends up to 1 ms after its
/// deadline: 0.5 ms late on average, which `--time-scale` multiplies into simulated time.
/// Aiming half a tick early, and treating an event that close as due, centres deliveries
/// on their modelled times instead (±0.5 ms).
const TIMER_SLACK: Duration = Duration::from_micros(500);

struct Driver {
    /// The latest fleet time this driver has advanced its engine to.
    last_fleet: Nanos,
    engine: Engine,
    clock: BackendClock,
    ctx: Arc<DriverContext>,
    handle: Arc<BackendHandle>,
    gauges: BackendGauges,
    ratio: StepRatio,
    /// (local, fleet) time of the last step end seen while busy.
    last_step: Option<(Nanos, Nanos)>,
    probes: FxHashSet<RequestId>,
    next_probe: RequestId,
    summary: Arc<LatencySummary>,
    /// Handles per routing policy seen, resolved once each.
    histograms: Vec<(Arc<str>, Arc<PoolHistograms>)>,
    slot: Arc<LoadSlot>,
    /// Claims of requests taken in since the last publish.
    claims: Vec<Claim>,
    /// Keyed by the daemon's sequential ids, looked up on every engine event: Fx, not
    /// SipHash (no untrusted keys; SipHash was ~5% of a zero-latency request's cost).
    requests: FxHashMap<RequestId, InFlight>,
    events: Vec<EngineEvent>,
    touched: Vec<RequestId>,
    gaps: Vec<u64>,
    retiring: bool,
    rx: UnboundedReceiver<Command>,
}

impl Driver {
    async fn run(mut self) {
        loop {
            let due = self
                .engine
                .next_event_at()
                .map(|local| self.clock.fleet(local));
            let wake = due.map(|fleet| self.ctx.clock.instant_at(fleet));
            let cmd = match wake {
                // Due, or due within the timer's slack (a request just admitted to an idle
                // engine, a step of a zero-latency profile, a high time scale): no sleep,
                // but the worker is handed back first. Without that, a driver whose events
                // are always due (steps far shorter than a loop turn) would run turn after
                // turn without ever returning to tokio, starving the gRPC server, the
                // other drivers and every stream sharing its worker thread.
                Some(at) if at <= Instant::now() + TIMER_SLACK => {
                    tokio::task::yield_now().await;
                    None
                }
                Some(at) => tokio::select! {
                    biased;
                    cmd = self.rx.recv() => Some(cmd),
                    () = tokio::time::sleep_until(at.checked_sub(TIMER_SLACK).unwrap_or(at).into()) => None,
                },
                None => Some(self.rx.recv().await),
            };
            // Engine time never runs backwards, and a timer wake-up counts as the event
            // it was set for even if it fired up to TIMER_SLACK early.
            let mut now_fleet = self.ctx.clock.now().max(self.last_fleet);
            if cmd.is_none() {
                now_fleet = now_fleet.max(due.unwrap_or(0));
            }
            self.last_fleet = now_fleet;
            self.advance(now_fleet);
            let mut exit = None;
            match cmd {
                Some(None) => exit = Some(Outcome::Shutdown),
                Some(Some(cmd)) => exit = self.handle_command(cmd, now_fleet),
                None => {}
            }
            // Take whatever else is queued now, so a burst is one wake-up, not many.
            while exit.is_none() {
                match self.rx.try_recv() {
                    Ok(cmd) => exit = self.handle_command(cmd, now_fleet),
                    Err(_) => break,
                }
            }
            if let Some(outcome) = exit {
                self.end_all(outcome, now_fleet);
                self.publish();
                return;
            }
            self.publish();
            if self.retiring && self.requests.is_empty() {
                return;
            }
        }
    }

    fn advance(&mut self, now_fleet: Nanos) {
        let now = self.clock.local(now_fleet);
        self.engine.advance(now, &mut self.events);
        let mut events = std::mem::take(&mut self.events);
        for ev in events.drain(..) {
            self.on_event(ev);
        }
        self.events = events;
        for id in std::mem::take(&mut self.touched) {
            if let Some(r) = self.requests.get_mut(&id) {
                flush(r);
            }
        }
        if !self.gaps.is_empty() {
            self.summary.record_inter_token(&self.gaps);
            self.gaps.clear();
        }
    }

    /// This pool's handles for requests `policy` routed.
    fn histograms(&mut self, policy: &Arc<str>) -> Arc<PoolHistograms> {
        if let Some((_, h)) = self.histograms.iter().find(|(p, _)| p == policy) {
            return h.clone();
        }
        let h = self.handle.pool_metrics.histograms(policy);
        self.histograms.push((policy.clone(), h.clone()));
        h
    }

    fn on_event(&mut self, ev: EngineEvent) {
        let at = self.clock.fleet(ev.at());
        self.sample_step(ev.at(), at);
        let id = ev.id();
        // Probes are rare: skip their lookup while there are none.
        if !self.probes.is_empty() && self.probes.contains(&id) {
            if let EngineEvent::Finished { .. } = ev {
                self.probes.remove(&id);
            }
            return;
        }
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        let h = r.hist.clone();
        match ev {
            EngineEvent::Scheduled { .. } => {
                if !r.started && r.resumed > 0 {
                    // The client saw its Started on the first backend.
                    r.started = true;
                } else if !r.started {
                    r.started = true;
                    let queue_ns = at.saturating_sub(r.arrival);
                    r.queue_ns = queue_ns;
                    h.queue.record(secs(queue_ns));
                    let _ = r.deliver.send(Delivery::Started { queue_ns });
                }
            }
            EngineEvent::FirstToken { .. } => {
                if r.first_token.is_none() && r.resumed > 0 {
                    // Re-prefilled after a move: not a first token for the client.
                    r.first_token = Some(at);
                } else if r.first_token.is_none() {
                    r.first_token = Some(at);
                    h.ttft.record(secs(at.saturating_sub(r.arrival)));
                }
            }
            EngineEvent::Token { .. } => {
                if r.delivered + r.pending > 0 {
                    let gap = at.saturating_sub(r.last_token);
                    h.inter_token.record(secs(gap));
                    self.gaps.push(gap);
                }
                r.last_token = at;
                r.pending += 1;
                if r.pending == 1 {
                    self.touched.push(id);
                }
            }
            // The daemon's simulated backends run mixed engines, which never hand off.
            EngineEvent::Handoff { .. } => {}
            EngineEvent::Finished { output_tokens, .. } => {
                let mut r = self.requests.remove(&id).expect("checked above");
                // Per-token granularity reports every token; make sure the count the client
                // sees is the engine's even if a token event was coalesced away.
                let seen = r.delivered + r.pending;
                if output_tokens > seen {
                    r.pending += output_tokens - seen;
                }
                flush(&mut r);
                let first = r.first_token.unwrap_or(at);
                let output_tokens = output_tokens + r.resumed;
                let report = FinishReport {
                    prompt_tokens: r.prompt_tokens,
                    completion_tokens: output_tokens,
                    queue_ns: r.queue_ns,
                    ttft_ns: first.saturating_sub(r.arrival),
                    mean_inter_token_ns: if output_tokens > 1 {
                        at.saturating_sub(first) / u64::from(output_tokens - 1)
                    } else {
                        0
                    },
                    e2e_ns: at.saturating_sub(r.arrival),
                    stopped: false,
                };
                record_finished(&self.summary, &h, r.slo, &report);
                let _ = r.deliver.send(Delivery::Finished(report));
            }
            EngineEvent::Preempted { .. } => {
                tracing::debug!(backend = %self.handle.name, id, "preempted: KV cache ran out");
            }
        }
    }

    /// This backend's state as the fleet's membership records it (`None` once removed).
    /// The router reads the same record, so it is the one truth about whether a backend
    /// takes work: one an operator resumes serves again at once, and one that failed, was
    /// drained or ejected after a request was routed to it refuses that request, which
    /// its handler then routes elsewhere.
    fn state(&self) -> Option<BackendState> {
        self.ctx
            .board
            .membership()
            .backend(self.handle.id)
            .map(|e| e.state)
    }

    /// Returns the outcome to end everything with when the driver must exit.
    fn handle_command(&mut self, cmd: Command, now_fleet: Nanos) -> Option<Outcome> {
        let now = self.clock.local(now_fleet);
        match cmd {
            Command::Admit {
                mut req,
                claim,
                deliver,
                resume,
                policy,
                ask: _,
            } => {
                self.claims.push(claim);
                if self.retiring || self.state() != Some(BackendState::Serving) {
                    let _ = deliver.send(Delivery::Refused(Refusal::Unavailable));
                    return None;
                }
                let id = req.id;
                let arrival = req.arrival.min(now_fleet);
                let prompt_tokens = resume.map_or(req.prompt_tokens, |r| r.prompt_tokens);
                let slo = req.slo.unwrap_or_default();
                req.arrival = now;
                let hist = self.histograms(&policy);
                match self.engine.admit(req, now) {
                    Ok(()) => {
                        if resume.is_none() {
                            hist.prompt_tokens.increment(u64::from(prompt_tokens));
                        }
                        let _ = deliver.send(Delivery::Admitted);
                        let first_token = resume.and_then(|r| r.first_token_at);
                        self.requests.insert(
                            id,
                            InFlight {
                                deliver,
                                arrival,
                                prompt_tokens,
                                slo,
                                started: false,
                                queue_ns: resume.map_or(0, |r| r.queue_ns),
                                first_token,
                                last_token: now_fleet,
                                delivered: 0,
                                pending: 0,
                                resumed: resume.map_or(0, |r| r.delivered),
                                hist,
                            },
                        );
                    }
                    Err(e) => {
                        let _ = deliver.send(Delivery::Refused(Refusal::Engine(e)));
                    }
                }
            }
            Command::Abort { id } => {
                if self.requests.remove(&id).is_some() {
                    self.engine.abort(id, now);
                }
            }
            Command::Probe => {
                // Probes go to ejected (draining) backends; not to failed ones.
                let failed = matches!(self.state(), Some(BackendState::Failed) | None);
                if !failed && !self.retiring {
                    let id = self.next_probe;
                    self.next_probe += 1;
                    let probe = Request {
                        id,
                        arrival: now,
                        prompt_tokens: PROBE_PROMPT_TOKENS,
                        max_tokens: PROBE_MAX_TOKENS,
                        priority: Priority::Batch,
                        ..Request::default()
                    };
                    if self.engine.admit(probe, now).is_ok() {
                        self.probes.insert(id);
                    }
                }
            }
            // The membership already says Failed, so new work is refused from here on.
            Command::Fail => self.displace_all(now_fleet),
            Command::Slowdown(f) => self.clock.set_factor(now_fleet, f),
            Command::ClearFault => self.clock.set_factor(now_fleet, 1.0),
            Command::Retire(outcome) => return Some(outcome),
            Command::RetireWhenIdle => self.retiring = true,
        }
        None
    }

    fn end_all(&mut self, outcome: Outcome, now_fleet: Nanos) {
        let now = self.clock.local(now_fleet);
        for (id, r) in self.requests.drain() {
            self.engine.abort(id, now);
            let _ = r.deliver.send(Delivery::Ended(outcome));
        }
        self.abort_probes(now);
    }

    /// The backend failed: every request leaves it, with its produced tokens flushed
    /// first so the handler knows exactly where to continue.
    fn displace_all(&mut self, now_fleet: Nanos) {
        let now = self.clock.local(now_fleet);
        for (id, mut r) in self.requests.drain() {
            self.engine.abort(id, now);
            flush(&mut r);
            let _ = r.deliver.send(Delivery::Displaced);
        }
        self.abort_probes(now);
    }

    fn abort_probes(&mut self, now: Nanos) {
        for id in self.probes.drain() {
            self.engine.abort(id, now);
        }
        self.last_step = None;
    }

    /// One step sample: the fleet-clock time since the previous step end over the
    /// modelled time, while the engine stays busy.
    fn sample_step(&mut self, local: Nanos, fleet: Nanos) {
        match self.last_step {
            Some((l, f)) if local > l => {
                self.ratio.record(fleet.saturating_sub(f), local - l);
                self.last_step = Some((local, fleet));
            }
            Some(_) => {}
            None => self.last_step = Some((local, fleet)),
        }
    }

    fn publish(&mut self) {
        let load = self.engine.load();
        self.slot.store(&load);
        for claim in self.claims.drain(..) {
            self.slot.release(claim);
        }
        self.gauges.running.set(f64::from(load.running));
        self.gauges.waiting.set(f64::from(load.waiting));
        self.gauges.kv_usage.set(load.kv_usage());
        let idle = self.engine.is_empty();
        if idle {
            // An idle gap is not a step: sampling restarts with the next work.
            self.last_step = None;
        }
        self.handle
            .publish_health(self.ratio.value(), self.ratio.samples(), idle);
    }
}

/// Sends a request's coalesced tokens as one chunk.
fn flush(r: &mut InFlight) {
    if r.pending == 0 {
        return;
    }
    r.hist.generated_tokens.increment(u64::from(r.pending));
    let _ = r.deliver.send(Delivery::Tokens {
        count: r.pending,
        text: None,
    });
    r.delivered += r.pending;
    r.pending = 0;
}

fn secs(ns: Nanos) -> f64 {
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
