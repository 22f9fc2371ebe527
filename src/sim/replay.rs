//! The virtual-time driver: streams a trace through admission, a routing policy and one
//! engine per backend, jumping the clock from one event to the next. Nothing sleeps and
//! nothing reads a clock, so a replay is as fast as the CPU allows and the same inputs and
//! seed give the same report, bit for bit.
//!
//! A [`FaultPlan`] fails, recovers and slows backends at given simulated times, as the
//! daemon's fault injection does: requests on a failed backend that produced no token
//! yet are routed again; streaming ones continue elsewhere, prefilling the prompt plus
//! the tokens already produced (counted by the engine, moved by the core's
//! [`Request::resumed_after`], as the daemon does), up to the retry budget, after which
//! they count as `backend_failed`. A slowed backend's engine runs on a stretched local clock.
//!
//! Policies see each backend's load as of the moment they decide ([`LiveView`]): an
//! engine jumping over a decode stretch has done part of it by then, as the daemon's
//! engines, publishing after every step, show.
//!
//! Engines are woken through a queue with one entry per backend, its next event time,
//! re-keyed in place whenever that time changes ([`WakeQueue`]). Only requests in flight
//! are held, so memory stays flat however long the trace.

mod failover;
mod finish;
mod handoff;
mod live;
mod stragglers;
mod timeline;

pub use failover::FaultSummary;
pub use stragglers::StragglerConfig;

use super::faults::FaultAction;
use super::report::{PolicyReport, Tally};
use super::totals::{HourlySlo, RunTotals};
use super::transfer::Transfers;
use super::wake::WakeQueue;
use crate::admission::{Admission, AdmissionConfig, Outcome, Permit, Target};
use crate::engine::{DecodeStretch, Engine, EngineConfig, EngineEvent, Granularity, Role};
use crate::fleet::{BackendId, LinkTable, LoadView, PlainLoadView, PoolConfig, StretchClock};
use crate::policy::Policy;
use crate::request::{check_request, Nanos, Request, RequestId, RequestLimits, Slo, NANOS_PER_SEC};
use crate::trace::TraceRecord;
use rustc_hash::FxHashMap;
pub(crate) use timeline::Timeline;

/// How a replay runs.
#[derive(Clone, Debug)]
pub struct ReplayConfig {
    /// SLO for requests that carry none (default: the daemon's, [`Slo::default`]).
    pub slo: Slo,
    pub admission: AdmissionConfig,
    /// Most timeline buckets kept; the bucket width doubles to stay under it.
    pub max_timeline_buckets: usize,
    /// Times a request may be moved off a failed backend before it counts as failed.
    pub migration_retries: u32,
    /// The model requests ask for (the fleet's `model`), whose context bounds them as the
    /// daemon's check does; `None`: the first pool's.
    pub model: Option<String>,
    /// Straggler ejection as the daemon does it (`None`: off).
    pub stragglers: Option<StragglerConfig>,
    /// KV links between the pools (`None`: the documented defaults for every pair).
    pub links: Option<LinkTable>,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            slo: Slo::default(),
            // The daemon's limits, so a replay predicts what it sheds.
            admission: AdmissionConfig::default(),
            max_timeline_buckets: 240,
            migration_retries: 2,
            model: None,
            stragglers: Some(StragglerConfig::default()),
            links: None,
        }
    }
}

struct InFlight {
    req: Request,
    backend: BackendId,
    pool: usize,
    first_token_at: Option<Nanos>,
    permit: Permit,
    /// Tokens produced on earlier backends before a move (0 unless moved mid-stream).
    resumed: u32,
    moves: u32,
    /// Prefill/decode: the decode backend the policy paired with a prefill pick.
    decode: Option<BackendId>,
    /// When the request was first scheduled (its prefill began).
    scheduled_at: Option<Nanos>,
    /// Set at hand-off: when it happened, and the output tokens made before it. While
    /// the KV is on the link the request is on no engine.
    handoff: Option<(Nanos, u32)>,
    in_transfer: bool,
}

/// A virtual-time replay of one policy over one fleet.
pub struct Replay {
    view: PlainLoadView,
    engines: Vec<Engine>,
    backend_pool: Vec<usize>,
    pools: Vec<PoolConfig>,
    policy: Box<dyn Policy>,
    admission: Admission,
    cfg: ReplayConfig,
    wake: WakeQueue,
    busy_since: Vec<Option<Nanos>>,
    busy_ns: Vec<u128>,
    in_flight: FxHashMap<RequestId, InFlight>,
    /// Arrivals and rejections over the whole fleet; completions live in `per_pool`.
    fleet: Tally,
    per_pool: Vec<Tally>,
    timeline: Timeline,
    /// Requests and SLO met by hour of arrival.
    hourly: HourlySlo,
    events: Vec<EngineEvent>,
    now: Nanos,
    next_id: RequestId,
    clocks: Vec<StretchClock>,
    /// Each backend's decode stretch in flight, on the fleet clock (see [`LiveView`]).
    stretches: Vec<Option<DecodeStretch>>,
    /// Resolved fault events: (time, backends, action), in time order.
    faults: Vec<(Nanos, Vec<usize>, FaultAction)>,
    next_fault: usize,
    summary: FaultSummary,
    /// The model every request is checked against, and its context window.
    model: (String, u32),
    stragglers: Option<stragglers::Stragglers>,
    links: LinkTable,
    transfers: Transfers,
    arrived: Vec<(RequestId, Nanos)>,
}

impl Replay {
    pub fn new(
        pools: Vec<PoolConfig>,
        policy: Box<dyn Policy>,
        cfg: ReplayConfig,
    ) -> Result<Replay, String> {
        crate::fleet::check_roles(&pools).map_err(|(_, why)| why)?;
        let links = match &cfg.links {
            Some(l) if l.pools() == pools.len() => l.clone(),
            Some(l) => {
                return Err(format!(
                    "the link table covers {} pools; the fleet has {}",
                    l.pools(),
                    pools.len()
                ))
            }
            None => LinkTable::resolve(&pools, &[]).map_err(|(_, why)| why)?,
        };
        let view = PlainLoadView::from_pools(pools.clone()).map_err(|e| e.to_string())?;
        let membership = view.membership_arc().clone();
        let mut engines = Vec::new();
        let mut backend_pool = Vec::new();
        for (id, entry) in membership.backends() {
            debug_assert_eq!(id.index(), engines.len(), "backend ids are dense");
            let pool = membership
                .pool(entry.pool)
                .ok_or_else(|| format!("backend {} has no pool", id.0))?;
            let pc = &pool.config;
            let ecfg = EngineConfig {
                block_size: pc.block_size,
                max_num_seqs: pc.max_num_seqs,
                max_batched_tokens: pc.max_batched_tokens,
                ..EngineConfig::for_perf(&pc.perf)
            }
            .with_granularity(Granularity::PerEvent)
            .with_role(pc.role);
            engines.push(Engine::new(pc.perf.clone(), ecfg));
            backend_pool.push(entry.pool.index());
        }
        let n = engines.len();
        if n == 0 {
            return Err("the fleet has no backends".into());
        }
        let npools = pools.len();
        let model = match &cfg.model {
            None => &pools[0].perf.model,
            Some(m) => {
                &pools
                    .iter()
                    .find(|p| p.perf.model.id == *m)
                    .ok_or_else(|| format!("no pool serves model `{m}`"))?
                    .perf
                    .model
            }
        };
        let model = (model.id.clone(), model.max_context);
        Ok(Replay {
            view,
            engines,
            backend_pool,
            policy,
            admission: Admission::new(cfg.admission).with_default_slo(cfg.slo),
            wake: WakeQueue::new(n),
            busy_since: vec![None; n],
            busy_ns: vec![0; n],
            in_flight: FxHashMap::default(),
            fleet: Tally::default(),
            per_pool: vec![Tally::default(); npools],
            timeline: Timeline {
                bucket_ns: NANOS_PER_SEC,
                buckets: Vec::new(),
                max: cfg.max_timeline_buckets.max(2),
                pools: npools,
            },
            hourly: HourlySlo::default(),
            events: Vec::with_capacity(256),
            now: 0,
            next_id: 0,
            clocks: vec![StretchClock::default(); n],
            stretches: vec![None; n],
            faults: Vec::new(),
            next_fault: 0,
            summary: FaultSummary::default(),
            model,
            stragglers: cfg.stragglers.map(|c| stragglers::Stragglers::new(c, n)),
            links,
            transfers: Transfers::default(),
            arrived: Vec::new(),
            pools,
            cfg,
        })
    }

    /// Replays every record of `trace` (in arrival order) and returns the report.
    pub fn run<E, I>(self, trace: I) -> Result<PolicyReport, E>
    where
        I: IntoIterator<Item = Result<TraceRecord, E>>,
    {
        self.run_with_faults(trace).map(|(report, _)| report)
    }

    /// [`Replay::run`], also returning what the fault plan did.
    pub fn run_with_faults<E, I>(self, trace: I) -> Result<(PolicyReport, FaultSummary), E>
    where
        I: IntoIterator<Item = Result<TraceRecord, E>>,
    {
        self.drive(trace, Replay::finish)
    }

    /// Replays `trace` and returns the raw sums (to merge with other cells' before
    /// reporting; see [`RunTotals`]) and what the fault plan did.
    pub fn run_totals<E, I>(self, trace: I) -> Result<(RunTotals, FaultSummary), E>
    where
        I: IntoIterator<Item = Result<TraceRecord, E>>,
    {
        self.drive(trace, Replay::totals)
    }

    fn drive<E, I, T>(mut self, trace: I, end: fn(Replay) -> T) -> Result<(T, FaultSummary), E>
    where
        I: IntoIterator<Item = Result<TraceRecord, E>>,
    {
        let mut trace = trace.into_iter();
        let mut pending = trace.next().transpose()?;
        loop {
            // KV arriving over a link counts as an engine event: it wakes a decode engine.
            let transfer_t = self.transfers.next_at();
            let wake_t = self.peek_wake();
            let engine_t = match (wake_t, transfer_t) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let fault_t = self.faults.get(self.next_fault).map(|f| f.0);
            let arrival_t = pending.as_ref().map(|r| r.arrival_ns);
            if engine_t.is_none() && arrival_t.is_none() {
                // Faults after the last event would only stretch the report.
                break;
            }
            // Straggler checks run strictly between other events.
            let check_t = self.stragglers.as_ref().map(|s| s.next_check);
            if check_t.is_some_and(|c| {
                engine_t.is_none_or(|t| c < t)
                    && arrival_t.is_none_or(|a| c < a)
                    && fault_t.is_none_or(|f| c < f)
            }) {
                self.check_stragglers();
                continue;
            }
            // At equal times: engine steps, then faults, then arrivals.
            if fault_t
                .is_some_and(|f| engine_t.is_none_or(|t| f < t) && arrival_t.is_none_or(|a| f <= a))
            {
                self.apply_fault();
                continue;
            }
            match (&pending, engine_t) {
                (None, None) => break,
                // Engines first at equal times: a step that ends as a request arrives has
                // ended before the arrival is routed.
                (Some(rec), Some(t)) if t <= rec.arrival_ns => self.wake_or_deliver(wake_t, t),
                (None, Some(t)) => self.wake_or_deliver(wake_t, t),
                (Some(_), _) => {
                    let rec = pending.take().expect("pending record");
                    self.arrive(&rec);
                    pending = trace.next().transpose()?;
                }
            }
        }
        let mut summary = self.summary.clone();
        if let Some(s) = &self.stragglers {
            summary.ejected = s.ejected;
            summary.readmitted = s.readmitted;
        }
        Ok((end(self), summary))
    }

    fn peek_wake(&mut self) -> Option<Nanos> {
        self.wake.peek().map(|(t, _)| t)
    }

    /// The next engine event at `t`: a step ending (engines first at equal times) or KV
    /// arriving.
    fn wake_or_deliver(&mut self, wake_t: Option<Nanos>, t: Nanos) {
        if wake_t == Some(t) {
            self.wake_one();
        } else {
            self.deliver(t);
        }
    }

    fn wake_one(&mut self) {
        let (t, b) = self.wake.peek().expect("peeked");
        self.now = self.now.max(t);
        self.step_backend(b, t);
    }

    fn reschedule(&mut self, b: usize) {
        let clock = self.clocks[b];
        self.wake
            .set(b, self.engines[b].next_event_at().map(|l| clock.fleet(l)));
    }

    fn publish_load(&mut self, b: usize, t: Nanos) {
        let engine = &self.engines[b];
        self.view
            .set_load(BackendId(b as u32), engine.routing_load());
        let clock = self.clocks[b];
        self.stretches[b] = engine.decode_stretch().map(|s| DecodeStretch {
            start: clock.fleet(s.start),
            end: clock.fleet(s.end),
            ..s
        });
        let busy = !engine.is_empty();
        match (busy, self.busy_since[b]) {
            (true, None) => self.busy_since[b] = Some(t),
            (false, Some(since)) => {
                self.busy_ns[b] += u128::from(t.saturating_sub(since));
                self.busy_since[b] = None;
            }
            _ => {}
        }
    }

    fn step_backend(&mut self, b: usize, t: Nanos) {
        let mut events = std::mem::take(&mut self.events);
        self.engines[b].advance(self.clocks[b].local(t), &mut events);
        for ev in events.drain(..) {
            self.on_event(ev, b);
        }
        self.events = events;
        self.publish_load(b, t);
        self.reschedule(b);
    }

    fn on_event(&mut self, ev: EngineEvent, b: usize) {
        let clock = self.clocks[b];
        match ev {
            EngineEvent::Scheduled { id, at } => {
                let at = clock.fleet(at);
                if let Some(f) = self.in_flight.get_mut(&id) {
                    if f.handoff.is_some() {
                        // Joined a decode batch with its KV: the client's first token
                        // leaves from here (as vLLM's and SGLang's P/D stream it).
                        f.first_token_at.get_or_insert(at);
                        return;
                    }
                    if f.moves > 0 || f.scheduled_at.is_some() {
                        return;
                    }
                    f.scheduled_at = Some(at);
                    // A slowed clock maps the arrival's own local instant up to a factor's
                    // worth of ns before the arrival (see `StretchClock`).
                    let wait = at.saturating_sub(f.req.arrival);
                    self.per_pool[f.pool].queue.record_ns(wait);
                }
            }
            EngineEvent::FirstToken { id, at } => {
                let prefill = self.pools[self.backend_pool[b]].role == Role::Prefill;
                if let Some(f) = self.in_flight.get_mut(&id) {
                    if prefill && f.req.max_tokens > 1 {
                        // Delivered with the hand-off, from the decode side.
                        return;
                    }
                    // After a mid-stream move the client's first token came earlier.
                    f.first_token_at.get_or_insert(clock.fleet(at));
                }
            }
            EngineEvent::Token { .. } => {}
            EngineEvent::Handoff {
                id,
                at,
                kv_tokens,
                generated,
            } => self.on_handoff(b, id, clock.fleet(at), kv_tokens, generated),
            EngineEvent::Preempted { id, .. } => {
                if let Some(f) = self.in_flight.get(&id) {
                    self.per_pool[f.pool].preempted += 1;
                }
            }
            EngineEvent::Finished {
                id,
                at,
                output_tokens,
            } => {
                let Some(mut f) = self.in_flight.remove(&id) else {
                    return;
                };
                let at = clock.fleet(at);
                let output_tokens = output_tokens + f.resumed;
                f.req.prompt_tokens -= f.resumed;
                f.req.max_tokens += f.resumed;
                let ttft = f.first_token_at.unwrap_or(at).saturating_sub(f.req.arrival);
                let e2e = at.saturating_sub(f.req.arrival);
                let slo = f.req.slo.unwrap_or(self.cfg.slo);
                let domestic = self.pools[f.pool].domestic();
                if self.per_pool[f.pool].complete(ttft, e2e, output_tokens, &slo, domestic) {
                    self.hourly.met(f.req.arrival);
                }
                let bucket = self.timeline.at(at);
                bucket.completed += 1;
                bucket.ttft_sum_ns += u128::from(ttft);
                bucket.e2e_sum_ns += u128::from(e2e);
                self.policy
                    .on_finished(&f.req, f.backend, output_tokens, at);
                f.permit.finish(Outcome::Completed);
            }
        }
    }

    fn arrive(&mut self, rec: &TraceRecord) {
        let t = rec.arrival_ns.max(self.now);
        self.now = t;
        let mut req = Request {
            arrival: t,
            ..rec.to_request(self.next_id)
        };
        // One SLO per request for every decision: policies, admission and the report all
        // judge by it, as the daemon's do by `Slo::default()` (this replay's default).
        req.slo.get_or_insert(self.cfg.slo);
        self.next_id += 1;
        self.fleet.requests += 1;
        self.hourly.arrived(t);
        self.timeline.at(t).arrivals += 1;
        // The daemon's own check, before routing: what it refuses is refused here too.
        // Trace records carry no client id to bound.
        let limits = RequestLimits {
            model: &self.model.0,
            max_context: self.model.1,
        };
        if let Err(e) = check_request(
            u64::from(req.prompt_tokens),
            req.max_tokens,
            &req.prefix_hashes,
            "",
            limits,
        ) {
            self.fleet.reject(e.reason.as_str());
            return;
        }
        let route = self.policy.pick_route(&req, &self.live(t), &self.links, t);
        let picked = route.map(|r| r.first);
        let target = match picked {
            None => Target::NoBackend,
            Some(id) => {
                let membership = self.view.membership();
                let load = self.live(t).load(id);
                match membership.backend(id).and_then(|e| membership.pool(e.pool)) {
                    Some(pool) => Target::predicted(id, pool, load, &req),
                    None => Target::NoBackend,
                }
            }
        };
        let pool = picked.map(|b| self.backend_pool[b.index()]);
        if let Some(p) = pool {
            self.per_pool[p].requests += 1;
            self.timeline.at(t).routed[p] += 1;
        }
        let permit = match self.admission.admit(&req, target, None, t) {
            Ok(permit) => permit,
            Err(reason) => {
                self.fleet.reject(reason.as_str());
                if let Some(p) = pool {
                    self.per_pool[p].reject(reason.as_str());
                }
                return;
            }
        };
        let b = picked.expect("admitted requests have a backend").index();
        // The engine must reach `t` before it takes the request.
        let mut events = std::mem::take(&mut self.events);
        let local = self.clocks[b].local(t);
        self.engines[b].advance(local, &mut events);
        for ev in events.drain(..) {
            self.on_event(ev, b);
        }
        self.events = events;
        let id = req.id;
        let engine_req = Request {
            arrival: local,
            ..req.clone()
        };
        match self.engines[b].admit(engine_req, local) {
            Ok(()) => {
                let routed = route.expect("admitted requests have a route");
                self.policy.on_routed(&req, routed, &self.live(t), t);
                self.in_flight.insert(
                    id,
                    InFlight {
                        req,
                        backend: BackendId(b as u32),
                        pool: self.backend_pool[b],
                        first_token_at: None,
                        permit,
                        resumed: 0,
                        moves: 0,
                        decode: route.and_then(|r| r.decode),
                        scheduled_at: None,
                        handoff: None,
                        in_transfer: false,
                    },
                );
            }
            Err(_) => {
                // Larger than the backend's whole KV cache: it can never run there.
                self.fleet.reject("too_large");
                self.per_pool[self.backend_pool[b]].reject("too_large");
                permit.finish(Outcome::Failed);
            }
        }
        self.publish_load(b, t);
        self.reschedule(b);
    }
}
