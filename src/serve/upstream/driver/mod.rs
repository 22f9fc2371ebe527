//! The driver of one proxied backend: a tokio task reading the same [`Command`]s a
//! simulated backend's driver reads, and one task per request that talks to the engine
//! ([`super::exchange`]) and turns what comes back into [`Delivery`]s.
//!
//! Failure handling keeps the one rule of the delivery contract, that a client never
//! sees a token twice: a request that fails before its first token is handed back
//! (`Displaced`) and its stream routes it to another backend, as it does a request whose
//! simulated backend failed; once a token has gone to the client, a failure ends the
//! request (`Failed`), because a real engine cannot be made to continue another engine's
//! output token for token. An endpoint that refuses connections is taken out of routing
//! at once, before its request is handed back, so the retry goes elsewhere; one failing
//! `max_failures` requests in a row is taken out too. A background task probes an
//! endpoint taken out until it answers and puts it back.
//!
//! The endpoint's load, as policies read it, is the router's own count of what it sent
//! there: requests waiting for a first token (and their prompt tokens) and requests
//! streaming (and their output tokens still owed), the token counts multiplied by the
//! endpoint's prediction ratios ([`super::ratio`]) so routing sees a slow endpoint as
//! holding more work. Where the engine exports Prometheus metrics the background task
//! also scrapes them every `scrape_interval_ms` ([`crate::serve::scrape`]): the engine's
//! own running and waiting counts (which include other clients' requests) raise the
//! router's, and its KV-cache fill is the backend's. A scrape that fails leaves the last
//! figures to go stale (dropped after four intervals); it never takes the endpoint out.

use super::exchange::{self, Call, Event, Failure, Target};
use super::ratio::PredictionRatio;
use super::{Ask, Observed};
use crate::calibrate::observed::Stack;
use crate::engine::LoadSnapshot;
use crate::fleet::outlier::{PROBE_ID_BASE, PROBE_MAX_TOKENS, PROBE_PROMPT_TOKENS};
use crate::fleet::upstream::server_root;
use crate::fleet::{BackendId, BackendState, Claim, PoolConfig, SlotHandle, UpstreamSpec};
use crate::metrics::{LatencySummary, Outcome, PoolHistograms};
use crate::policy::{predict, Prediction};
use crate::request::{Nanos, Priority, Request, RequestId};
use crate::serve::backend::{
    record_finished, BackendHandle, Command, Delivery, DriverContext, FinishReport, Refusal,
};
use crate::serve::mailbox::{mailbox, Outbox};
use crate::serve::scrape::{scrape_once, MetricsDialect, ScrapedLoad};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use rustc_hash::FxHashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::oneshot;

mod task;
use task::serve;

/// Starts the driver of the backend proxying to the pool's `index`-th endpoint.
pub fn spawn_proxy(
    ctx: &Arc<DriverContext>,
    id: BackendId,
    index: usize,
    name: String,
    pool: &PoolConfig,
    upstream: &UpstreamSpec,
) -> Arc<BackendHandle> {
    let base: Arc<str> = upstream
        .endpoints
        .get(index)
        .map_or("http://invalid.invalid/v1", String::as_str)
        .into();
    let (tx, rx) = unbounded_channel();
    let handle = Arc::new(BackendHandle::new(
        ctx,
        id,
        name,
        pool,
        Some(base.clone()),
        tx,
    ));
    let ratio_gauges = handle.pool_metrics.prediction_ratio(&handle.name);
    // The fleet file's dialect, else the engine's; "none" (or an engine without one): no
    // scraping.
    let dialect = match upstream.metrics.as_deref() {
        Some(name) => MetricsDialect::parse_name(name),
        None => MetricsDialect::for_engine(&pool.perf.engine.engine),
    };
    let endpoint = Arc::new(Endpoint {
        dialect,
        ctx: ctx.clone(),
        summary: ctx.metrics.summary(&handle.pool),
        slot: ctx.board.slot(id).unwrap_or_default(),
        handle: handle.clone(),
        base: base.clone(),
        targets: [
            Target::new(&format!("{base}/completions")),
            Target::new(&format!("{base}/chat/completions")),
        ],
        served_model: upstream.served_model.clone(),
        ratio_gauges,
        observed: ctx.upstream.observe(
            Stack {
                chip: pool.perf.chip.id.clone(),
                engine: pool.perf.engine.engine.clone(),
                model: pool.perf.model.id.clone(),
                tp: pool.perf.tp,
                dtype: pool.perf.dtype.as_str().to_string(),
            },
            base.clone(),
        ),
        state: parking_lot::Mutex::new(State {
            requests: FxHashMap::default(),
            streaming: 0,
            ratio: PredictionRatio::new(ctx.upstream.config.ewma_alpha),
            failures: 0,
            taken_out: false,
            scraped: None,
        }),
    });
    tokio::spawn(upkeep(Arc::downgrade(&endpoint)));
    let driver = Proxy {
        endpoint,
        rx,
        retiring: false,
        next_probe: PROBE_ID_BASE,
    };
    tokio::spawn(driver.run());
    handle
}

/// What the driver and its request tasks share.
struct Endpoint {
    ctx: Arc<DriverContext>,
    handle: Arc<BackendHandle>,
    /// API base (`http://host:8000/v1`).
    base: Arc<str>,
    /// Where completions (`[0]`) and chats (`[1]`) go.
    targets: [Target; 2],
    served_model: String,
    slot: SlotHandle,
    summary: Arc<LatencySummary>,
    /// `dujiang_backend_prediction_ratio{phase="prefill"|"decode"}`.
    ratio_gauges: [metrics::Gauge; 2],
    /// How its `/metrics` names load; `None`: not scraped.
    dialect: Option<MetricsDialect>,
    /// Clean observations, exported as measured points.
    observed: Arc<Observed>,
    state: parking_lot::Mutex<State>,
}

struct State {
    /// Keyed by the daemon's sequential ids (no untrusted keys): Fx, not SipHash.
    requests: FxHashMap<RequestId, Live>,
    /// How many of `requests` are streaming, kept as they start and end: read at every
    /// token, where counting them would cost a pass over every request in flight.
    streaming: u32,
    ratio: PredictionRatio,
    /// Requests failed in a row by the endpoint's fault.
    failures: u32,
    /// This driver took the endpoint out of routing (not an operator); probes put it back.
    taken_out: bool,
    /// The last successful scrape and when it was taken.
    scraped: Option<(ScrapedLoad, Instant)>,
}

/// One request in flight to the endpoint.
struct Live {
    cancel: Option<oneshot::Sender<End>>,
    prompt_tokens: u32,
    /// Output tokens still owed.
    remaining: u32,
    /// It has produced its first token.
    streaming: bool,
    /// No other request has been in flight to the endpoint since it was sent: its time to
    /// first token is a lone prefill.
    alone: bool,
}

/// Why the driver ends a request task before its exchange does.
#[derive(Clone, Copy, Debug)]
enum End {
    /// The client went away (its stream has recorded the outcome).
    Abort,
    /// A fault was injected: the backend failed.
    Displace,
    /// The daemon ends everything (shutdown, pool removed).
    Retire(Outcome),
    /// The exchange failed as the client's deadline ran out: the request's stream, which
    /// enforces the deadline, ends it.
    Deadline,
}

/// How close to the client's deadline a failed exchange counts as ended by it: the
/// engine's copy of the deadline and the router's own timer may fire a few timer ticks
/// apart.
const DEADLINE_SLACK: Duration = Duration::from_millis(5);

impl State {
    /// The load the router has put on the endpoint, uncorrected.
    fn raw_load(&self) -> LoadSnapshot {
        let mut l = LoadSnapshot::default();
        for r in self.requests.values() {
            if r.streaming {
                l.running += 1;
            } else {
                l.waiting += 1;
                l.queued_prefill_tokens += u64::from(r.prompt_tokens);
            }
            l.remaining_decode_tokens += u64::from(r.remaining);
        }
        l
    }
}

impl Endpoint {
    /// Publishes the endpoint's load (token counts corrected by its prediction ratios),
    /// its gauges and its straggler figures. Called with the state locked.
    fn publish(&self, st: &State) {
        let mut load = st.raw_load();
        load.queued_prefill_tokens =
            (load.queued_prefill_tokens as f64 * st.ratio.prefill_factor()) as u64;
        load.remaining_decode_tokens =
            (load.remaining_decode_tokens as f64 * st.ratio.decode_factor()) as u64;
        let stale_after = Duration::from_millis(4 * self.ctx.upstream.config.scrape_interval_ms);
        if let Some((s, _)) = st
            .scraped
            .as_ref()
            .filter(|(_, at)| at.elapsed() <= stale_after)
        {
            // The engine counts other clients' requests too; the router's own count may be
            // ahead of a scrape taken before its latest requests arrived. The larger wins.
            let count = |v: Option<f64>| v.map_or(0, |v| v.clamp(0.0, 1e6) as u32);
            load.running = load.running.max(count(s.running));
            load.waiting = load.waiting.max(count(s.waiting));
            if let Some(kv) = s.kv_usage {
                load.kv_total_blocks = KV_SCALE;
                load.kv_used_blocks = (kv.clamp(0.0, 1.0) * f64::from(KV_SCALE)) as u32;
            }
        }
        self.slot.store(&load);
        let g = &self.handle.gauges;
        g.running.set(f64::from(load.running));
        g.waiting.set(f64::from(load.waiting));
        g.kv_usage.set(load.kv_usage());
        self.ratio_gauges[0].set(st.ratio.prefill_factor());
        self.ratio_gauges[1].set(st.ratio.decode_factor());
        let (worst, samples) = st.ratio.worst();
        self.handle
            .publish_health(worst, samples, st.requests.is_empty());
    }

    fn state_in_fleet(&self) -> Option<BackendState> {
        self.ctx
            .board
            .membership()
            .backend(self.handle.id)
            .map(|e| e.state)
    }

    /// Takes the endpoint out of routing until a probe finds it answering again, unless
    /// an operator has already taken it out (drained or failed it).
    fn take_out(&self, st: &mut State, why: &str) {
        if st.taken_out || self.state_in_fleet() != Some(BackendState::Serving) {
            return;
        }
        if self
            .ctx
            .board
            .set_state(self.handle.id, BackendState::Failed)
            .is_ok()
        {
            st.taken_out = true;
            self.handle.gauges.serving.set(0.0);
            tracing::warn!(backend = %self.handle.name, endpoint = %self.base, why, "endpoint taken out of routing");
        }
    }

    /// A probe answered: the endpoint serves again (if this driver took it out).
    fn put_back(&self) {
        let mut st = self.state.lock();
        if !st.taken_out {
            return;
        }
        st.taken_out = false;
        st.failures = 0;
        if self.state_in_fleet() == Some(BackendState::Failed)
            && self
                .ctx
                .board
                .set_state(self.handle.id, BackendState::Serving)
                .is_ok()
        {
            self.handle.gauges.serving.set(1.0);
            tracing::info!(backend = %self.handle.name, endpoint = %self.base, "endpoint answers again; back in routing");
        }
    }
}

struct Proxy {
    endpoint: Arc<Endpoint>,
    rx: UnboundedReceiver<Command>,
    retiring: bool,
    next_probe: RequestId,
}

impl Proxy {
    async fn run(mut self) {
        while let Some(cmd) = self.rx.recv().await {
            if self.command(cmd) {
                return;
            }
            if self.retiring && self.endpoint.state.lock().requests.is_empty() {
                return;
            }
        }
        self.end_all(End::Retire(Outcome::Shutdown));
    }

    /// Handles one command; true when the driver must exit.
    fn command(&mut self, cmd: Command) -> bool {
        let ep = &self.endpoint;
        match cmd {
            Command::Admit {
                req,
                claim,
                deliver,
                resume,
                policy,
                ask,
                decode: _,
            } => {
                let serving = ep.state_in_fleet() == Some(BackendState::Serving);
                // A request moved here mid-stream cannot continue on a real engine
                // token-exactly; its stream tries another backend or ends it.
                let resumed = resume.is_some_and(|r| r.delivered > 0);
                if self.retiring || !serving || resumed {
                    ep.slot.release(claim);
                    let _ = deliver.send(Delivery::Refused(Refusal::Unavailable));
                    return false;
                }
                let hist = ep.handle.pool_metrics.histograms(&policy);
                if resume.is_none() {
                    hist.prompt_tokens.increment(u64::from(req.prompt_tokens));
                }
                let _ = deliver.send(Delivery::Admitted);
                self.start(req, ask, deliver, Some(hist), claim);
            }
            // Real engines take no hand-offs (their pools are mixed): the request's stream
            // moves it.
            Command::Transferred(h) => h.displace(),
            Command::Sent { .. } => {}
            Command::Abort { id } => self.cancel(id, End::Abort),
            Command::Probe => {
                if ep.state_in_fleet() == Some(BackendState::Draining) && !self.retiring {
                    let id = self.next_probe;
                    self.next_probe += 1;
                    let req = Request {
                        id,
                        arrival: ep.ctx.clock.now(),
                        prompt_tokens: PROBE_PROMPT_TOKENS,
                        max_tokens: PROBE_MAX_TOKENS,
                        priority: Priority::Batch,
                        ..Request::default()
                    };
                    let ask = Arc::new(Ask {
                        prompt: "Dujiangyan ".repeat(PROBE_PROMPT_TOKENS as usize / 3),
                        ..Ask::default()
                    });
                    // Nobody reads a probe's deliveries; only its timings count.
                    let (out, _) = mailbox();
                    self.start(req, ask, out, None, Claim::default());
                }
            }
            Command::Fail => self.end_all(End::Displace),
            // A real engine's speed is its own; a slowdown is an operator's note on it.
            Command::Slowdown(_) | Command::ClearFault => {}
            Command::Retire(outcome) => {
                self.end_all(End::Retire(outcome));
                return true;
            }
            Command::RetireWhenIdle => self.retiring = true,
        }
        false
    }

    /// Registers a request, predicts it on the endpoint's current load and starts its
    /// task. `hist: None` is a probe (no client, no latency series).
    fn start(
        &mut self,
        req: Request,
        ask: Arc<Ask>,
        out: Outbox,
        hist: Option<Arc<PoolHistograms>>,
        claim: Claim,
    ) {
        let ep = self.endpoint.clone();
        let (cancel, cancelled) = oneshot::channel();
        let predicted = {
            let mut st = ep.state.lock();
            let predicted = {
                let m = ep.ctx.board.membership();
                m.backend(ep.handle.id)
                    .and_then(|e| m.pool(e.pool).cloned())
                    .map(|pool| predict(&pool, &st.raw_load(), &req))
                    .unwrap_or_default()
            };
            let alone = st.requests.is_empty();
            for r in st.requests.values_mut() {
                r.alone = false;
            }
            st.requests.insert(
                req.id,
                Live {
                    cancel: Some(cancel),
                    prompt_tokens: req.prompt_tokens,
                    remaining: req.max_tokens,
                    streaming: false,
                    alone,
                },
            );
            ep.publish(&st);
            predicted
        };
        if hist.is_some() {
            ep.slot.release(claim);
        }
        tokio::spawn(serve(ep, req, ask, out, hist, predicted, cancelled));
    }

    fn cancel(&self, id: RequestId, end: End) {
        let mut st = self.endpoint.state.lock();
        if let Some(tx) = st.requests.get_mut(&id).and_then(|r| r.cancel.take()) {
            let _ = tx.send(end);
        }
    }

    fn end_all(&self, end: End) {
        let mut st = self.endpoint.state.lock();
        for r in st.requests.values_mut() {
            if let Some(tx) = r.cancel.take() {
                let _ = tx.send(end);
            }
        }
    }
}

/// A scraped KV fill is published as this many blocks out of [`KV_SCALE`] (policies read
/// the ratio).
const KV_SCALE: u32 = 10_000;

/// The endpoint's background task: while it is taken out, probes it every
/// `probe_interval_ms` and puts it back once it answers; while it serves, scrapes its
/// `/metrics` every `scrape_interval_ms` (when it has a dialect). Ends with the endpoint.
async fn upkeep(endpoint: Weak<Endpoint>) {
    let (probe_every, scrape_every) = match endpoint.upgrade() {
        Some(ep) => {
            let c = ep.ctx.upstream.config;
            (
                Duration::from_millis(c.probe_interval_ms),
                Duration::from_millis(c.scrape_interval_ms),
            )
        }
        None => return,
    };
    let mut probe = tokio::time::interval(probe_every);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scrape = tokio::time::interval(scrape_every);
    scrape.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let scraping = tokio::select! {
            _ = probe.tick() => false,
            _ = scrape.tick() => true,
        };
        let Some(ep) = endpoint.upgrade() else {
            return;
        };
        let taken_out = ep.state.lock().taken_out;
        if !scraping && taken_out {
            if answers(&ep, probe_every).await {
                ep.put_back();
            }
        } else if scraping && !taken_out {
            if let Some(dialect) = ep.dialect {
                // A scrape slower than a few intervals is as good as failed.
                let timeout = (scrape_every * 4).max(Duration::from_millis(200));
                match scrape_once(ep.ctx.upstream.http(), &ep.base, dialect, timeout).await {
                    Ok(load) => {
                        let mut st = ep.state.lock();
                        st.scraped = Some((load, Instant::now()));
                        ep.publish(&st);
                    }
                    // Stale, not dead: the last figures age out in publish.
                    Err(e) => {
                        tracing::debug!(backend = %ep.handle.name, error = %e, "scrape failed");
                        let st = ep.state.lock();
                        ep.publish(&st);
                    }
                }
            }
        }
    }
}

/// Whether the endpoint answers a health probe: `GET /health` (vLLM, SGLang, llama.cpp,
/// dujiang), or where that is not served, `GET {base}/models`.
async fn answers(ep: &Endpoint, timeout: Duration) -> bool {
    let root = server_root(&ep.base);
    for url in [format!("{root}/health"), format!("{}/models", ep.base)] {
        let Ok(req) = hyper::Request::get(&url).body(Full::new(Bytes::new())) else {
            return false;
        };
        let resp = match tokio::time::timeout(timeout, ep.ctx.upstream.http().request(req)).await {
            Ok(Ok(r)) => r,
            // Refused or silent: no need to ask the second path.
            _ => return false,
        };
        let status = resp.status();
        // Read the body so the connection goes back to the pool.
        let _ = tokio::time::timeout(timeout, resp.into_body().collect()).await;
        if status.is_success() {
            return true;
        }
        if status != hyper::StatusCode::NOT_FOUND {
            return false;
        }
    }
    false
}

/// Wall time in Unix seconds, for the observations' window.
fn unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn secs(ns: Nanos) -> f64 {
    ns as f64 / 1e9
}
