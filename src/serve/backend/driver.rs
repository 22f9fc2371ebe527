//! One simulated backend's driver task: an [`Engine`] at per-token granularity paced in
//! wall-clock time, turning engine events into deliveries and metrics (see the parent
//! module). The prefill/decode hand-off path is in [`super::pd`].

use super::{
    record_finished, secs, BackendHandle, Command, Delivery, DriverContext, FinishReport, Refusal,
};
use crate::engine::{Engine, EngineConfig, EngineEvent, Granularity, Role};
use crate::fleet::outlier::{PROBE_ID_BASE, PROBE_MAX_TOKENS, PROBE_PROMPT_TOKENS};
use crate::fleet::{BackendId, BackendState, Claim, PoolConfig, SlotHandle};
use crate::metrics::{BackendGauges, LatencySummary, Outcome, PoolHistograms};
use crate::request::{Nanos, Priority, Request, RequestId, Slo};
use crate::serve::clock::BackendClock;
use crate::serve::mailbox::Outbox;
use crate::serve::outlier::StepRatio;
use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

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
        return crate::serve::upstream::spawn_proxy(ctx, id, index, name, pool, upstream);
    }
    let (tx, rx) = unbounded_channel();
    let perf = pool.perf.clone();
    let cfg = EngineConfig {
        block_size: pool.block_size,
        max_num_seqs: pool.max_num_seqs,
        max_batched_tokens: pool.max_batched_tokens,
        ..EngineConfig::for_perf(&perf)
    }
    .with_granularity(Granularity::PerToken)
    .with_role(pool.role);
    let handle = Arc::new(BackendHandle::new(ctx, id, name, pool, None, tx));
    let gauges = handle.gauges.0.clone();
    let slot = ctx.board.slot(id).unwrap_or_default();
    let driver = Driver {
        last_fleet: 0,
        role: pool.role,
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
        gap_run: None,
        retiring: false,
        rx,
    };
    tokio::spawn(driver.run());
    handle
}

/// One request inside a driver. It moves whole to the decode backend at a hand-off.
pub(super) struct InFlight {
    pub(super) deliver: Outbox,
    pub(super) arrival: Nanos,
    pub(super) prompt_tokens: u32,
    pub(super) slo: Slo,
    pub(super) started: bool,
    pub(super) queue_ns: Nanos,
    pub(super) first_token: Option<Nanos>,
    pub(super) last_token: Nanos,
    pub(super) delivered: u32,
    pub(super) pending: u32,
    /// Tokens the client had before this backend took over (0 unless moved here).
    pub(super) resumed: u32,
    /// Series of the policy that routed it.
    pub(super) hist: Arc<PoolHistograms>,
    /// The policy that routed it (a decode backend resolves its own series by it).
    pub(super) policy: Arc<str>,
    /// The request as this engine took it: prompt and output lengths, priority.
    pub(super) engine_req: (u32, u32, Priority),
    /// Its prefix hashes, kept only when it will be handed off: the decode side caches
    /// the arrived KV under them.
    pub(super) hashes: Vec<u64>,
    /// On a prefill backend: it will be handed off, so its first token is held (the
    /// client gets it from the decode side, when the sequence joins a decode batch).
    pub(super) split: bool,
    /// On a decode backend: handed off, tokens held until it joins a batch.
    pub(super) held: bool,
    /// The decode backend the policy paired it with.
    pub(super) decode: Option<Arc<BackendHandle>>,
    /// Fleet time of its first step on this backend (a layer-wise link overlaps it).
    pub(super) scheduled_at: Option<Nanos>,
}

/// Equal inter-token gaps of one series, recorded as one sample with a count.
struct GapRun {
    hist: Arc<PoolHistograms>,
    gap: u64,
    count: usize,
}

impl GapRun {
    fn record(self) {
        self.hist
            .inter_token
            .record_many(secs(self.gap), self.count);
    }
}

/// tokio's timer fires on whole-millisecond ticks, so a sleep ends up to 1 ms after its
/// deadline: 0.5 ms late on average, which `--time-scale` multiplies into simulated time.
/// Aiming half a tick early, and treating an event that close as due, centres deliveries
/// on their modelled times instead (±0.5 ms).
const TIMER_SLACK: Duration = Duration::from_micros(500);

pub(super) struct Driver {
    /// The latest fleet time this driver has advanced its engine to.
    last_fleet: Nanos,
    pub(super) role: Role,
    pub(super) engine: Engine,
    pub(super) clock: BackendClock,
    pub(super) ctx: Arc<DriverContext>,
    pub(super) handle: Arc<BackendHandle>,
    gauges: BackendGauges,
    ratio: StepRatio,
    /// (local, fleet) time of the last step end seen while busy.
    last_step: Option<(Nanos, Nanos)>,
    probes: FxHashSet<RequestId>,
    next_probe: RequestId,
    summary: Arc<LatencySummary>,
    /// Handles per routing policy seen, resolved once each.
    histograms: Vec<(Arc<str>, Arc<PoolHistograms>)>,
    slot: SlotHandle,
    /// Claims of requests taken in since the last publish.
    claims: Vec<Claim>,
    /// Keyed by the daemon's sequential ids, looked up on every engine event: Fx, not
    /// SipHash (no untrusted keys; SipHash was ~5% of a zero-latency request's cost).
    pub(super) requests: FxHashMap<RequestId, InFlight>,
    events: Vec<EngineEvent>,
    pub(super) touched: Vec<RequestId>,
    /// This wake-up's inter-token gaps for the pool's summary, equal neighbours as one
    /// (gap, count): a decode step gives every sequence of its batch a token at the same
    /// instant, so its gaps mostly repeat, and a repeat costs a count, not a sample.
    gaps: Vec<(u64, u64)>,
    /// The gaps of the latest run of equal ones under one routing policy's series, not
    /// yet in its histogram: the bucket search and the sum's update are paid once a run
    /// rather than once a token. Recorded at the end of each wake-up ([`Driver::advance`]).
    gap_run: Option<GapRun>,
    pub(super) retiring: bool,
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
        if let Some(run) = self.gap_run.take() {
            run.record();
        }
        if !self.gaps.is_empty() {
            self.summary.record_inter_token_runs(&self.gaps);
            self.gaps.clear();
        }
    }

    /// Frees the KV of a hand-off that goes nowhere (the engine holds it until sent), at
    /// the instant the engine has been advanced to.
    pub(super) fn release_unsent(&mut self, id: RequestId) {
        let now = self.clock.local(self.last_fleet);
        self.engine.release_handed_off(id, now);
    }

    /// This pool's handles for requests `policy` routed.
    pub(super) fn histograms(&mut self, policy: &Arc<str>) -> Arc<PoolHistograms> {
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
            match ev {
                EngineEvent::Finished { .. } => {
                    self.probes.remove(&id);
                }
                // A probe on a prefill backend ends at its hand-off: nothing to send.
                EngineEvent::Handoff { .. } => {
                    self.probes.remove(&id);
                    self.release_unsent(id);
                }
                _ => {}
            }
            return;
        }
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        match ev {
            EngineEvent::Scheduled { .. } => {
                r.scheduled_at.get_or_insert(at);
                if r.held {
                    // Handed off and now in a decode batch: the client's first token
                    // leaves from here (as vLLM's and SGLang's P/D stream it).
                    r.held = false;
                    if r.first_token.is_none() {
                        r.first_token = Some(at);
                        r.hist.ttft.record(secs(at.saturating_sub(r.arrival)));
                    }
                    r.last_token = at;
                    if r.pending > 0 {
                        self.touched.push(id);
                    }
                } else if !r.started && r.resumed > 0 {
                    // The client saw its Started on the first backend.
                    r.started = true;
                } else if !r.started {
                    r.started = true;
                    let queue_ns = at.saturating_sub(r.arrival);
                    r.queue_ns = queue_ns;
                    r.hist.queue.record(secs(queue_ns));
                    let _ = r.deliver.send(Delivery::Started { queue_ns });
                }
            }
            EngineEvent::FirstToken { .. } => {
                if r.split {
                    // Delivered with the hand-off, from the decode side.
                } else if r.first_token.is_none() && r.resumed > 0 {
                    // Re-prefilled after a move: not a first token for the client.
                    r.first_token = Some(at);
                } else if r.first_token.is_none() {
                    r.first_token = Some(at);
                    r.hist.ttft.record(secs(at.saturating_sub(r.arrival)));
                }
            }
            EngineEvent::Token { .. } => {
                if r.delivered + r.pending > 0 {
                    let gap = at.saturating_sub(r.last_token);
                    match &mut self.gap_run {
                        Some(run) if run.gap == gap && Arc::ptr_eq(&run.hist, &r.hist) => {
                            run.count += 1;
                        }
                        run => {
                            let next = GapRun {
                                hist: r.hist.clone(),
                                gap,
                                count: 1,
                            };
                            if let Some(done) = run.replace(next) {
                                done.record();
                            }
                        }
                    }
                    match self.gaps.last_mut() {
                        Some((g, n)) if *g == gap => *n += 1,
                        _ => self.gaps.push((gap, 1)),
                    }
                }
                r.last_token = at;
                r.pending += 1;
                if r.pending == 1 && !r.split && !r.held {
                    self.touched.push(id);
                }
            }
            EngineEvent::Handoff {
                kv_tokens,
                generated,
                ..
            } => self.hand_off(id, at, kv_tokens, generated),
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
                record_finished(&self.summary, &r.hist, r.slo, &report);
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
    pub(super) fn state(&self) -> Option<BackendState> {
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
                decode,
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
                let engine_req = (req.prompt_tokens, req.max_tokens, req.priority);
                let split = self.role == Role::Prefill && req.max_tokens > 1;
                let hashes = if split {
                    req.prefix_hashes.clone()
                } else {
                    Vec::new()
                };
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
                                policy,
                                engine_req,
                                hashes,
                                split,
                                held: false,
                                decode: decode.filter(|_| split),
                                scheduled_at: None,
                            },
                        );
                    }
                    Err(e) => {
                        let _ = deliver.send(Delivery::Refused(Refusal::Engine(e)));
                    }
                }
            }
            Command::Transferred(h) => self.take_transferred(*h, now_fleet),
            // Handled when it comes (its instant `at` has passed by a wake-up's jitter;
            // engine time never runs backwards).
            Command::Sent { id, at: _ } => {
                self.engine.release_handed_off(id, now);
            }
            // Also a request this (prefill) backend handed off, whose KV it still holds
            // while the link sends it: the client is gone, so it is freed now and its
            // transfer stops.
            Command::Abort { id } => {
                let here = self.requests.remove(&id).is_some();
                if self.engine.abort(id, now) && !here {
                    self.ctx.kv.cancel(id, now_fleet);
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
pub(super) fn flush(r: &mut InFlight) {
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
