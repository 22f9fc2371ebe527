//! The one catalogue of the daemon's metrics: every Prometheus name, its label set and its
//! histogram buckets live here, so names stay consistent (`dujiang_` prefix, units in the
//! name, `_total` only on counters) and label cardinality stays bounded (labels come only
//! from server-controlled sets: pool, chip, policy, outcome, reason, backend id).
//!
//! Each daemon owns its own [`Metrics`] (Prometheus recorders that are *not* installed
//! globally), so several daemons can run in one test process without sharing counters.
//! Fleet-wide series live in one recorder; each pool's in a recorder of its own
//! ([`PoolMetrics`]), so that removing a pool removes every series naming it, and a scrape
//! merges them ([`exposition`]). Alongside the Prometheus histograms, [`LatencySummary`]
//! keeps exact HdrHistogram percentiles per pool for the Admin `GetStats` call.
//!
//! Every series whose labels are known in advance is registered at 0 when its pool or the
//! daemon starts (every outcome, refusal reason and migration kind; each pool's counters,
//! info and cost), so rates and sums see it before its first event. The request path only
//! touches handles resolved once: no registry look-up per call.
//!
//! Latencies are recorded in simulated seconds (engine time), which equal wall seconds at
//! time scale 1: at `--time-scale 100` a dashboard still shows what the modelled chips do.

mod describe;
mod exposition;
mod histogram;
mod pool;
mod summary;

pub use pool::{PoolDescription, PoolMetrics};
pub use summary::{FinishedLatencies, LatencySummary, Percentiles, SummarySnapshot};

use crate::admission::RejectReason;
use crate::request::Invalid;
use describe::describe;
use histogram::OwnHistograms;
use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Time to first token, by pool, chip and policy.
pub const TTFT_SECONDS: &str = "dujiang_ttft_seconds";
/// Gap between consecutive output tokens of one request, by pool, chip and policy.
pub const INTER_TOKEN_SECONDS: &str = "dujiang_inter_token_seconds";
/// Arrival to last token, by pool, chip and policy.
pub const E2E_SECONDS: &str = "dujiang_e2e_seconds";
/// Time from admission to a backend until the first step that includes the request.
pub const QUEUE_SECONDS: &str = "dujiang_queue_seconds";
/// Wall time the routing policy took to pick a backend, by policy.
pub const ROUTER_DECISION_SECONDS: &str = "dujiang_router_decision_seconds";
/// Routing decisions taken again because another request's decision committed while
/// they looked (see `AtomicLoadBoard::claim`), by policy.
pub const ROUTER_RETRIES_TOTAL: &str = "dujiang_router_retries_total";
/// Requests accepted (placed on a backend), by front end. Equals the sum of
/// `dujiang_requests_total` once everything in flight has ended.
pub const REQUESTS_ACCEPTED_TOTAL: &str = "dujiang_requests_accepted_total";
/// Accepted requests by terminal outcome ([`Outcome`]) and front end ([`Frontend`]).
pub const REQUESTS_TOTAL: &str = "dujiang_requests_total";
/// Accepted requests by the pool they ended on and terminal outcome: what SLO burn rates
/// count failed, deadline-exceeded and abandoned (cancelled) requests from.
pub const POOL_REQUESTS_TOTAL: &str = "dujiang_pool_requests_total";
/// Every request refused before acceptance, by reason ([`RejectReason`]) and front end:
/// shed by admission, invalid, no healthy backend, draining.
pub const REQUESTS_SHED_TOTAL: &str = "dujiang_requests_shed_total";
/// Prompt tokens of accepted requests, by pool.
pub const PROMPT_TOKENS_TOTAL: &str = "dujiang_prompt_tokens_total";
/// Output tokens delivered, by pool.
pub const GENERATED_TOKENS_TOTAL: &str = "dujiang_generated_tokens_total";
/// Finished requests that missed their SLO, by pool and objective (`ttft` or `tpot`).
pub const SLO_VIOLATIONS_TOTAL: &str = "dujiang_slo_violations_total";
/// Requests accepted and not yet ended.
pub const IN_FLIGHT_REQUESTS: &str = "dujiang_in_flight_requests";
/// Per backend: requests in the running set.
pub const BACKEND_RUNNING_REQUESTS: &str = "dujiang_backend_running_requests";
/// Per backend: requests admitted but not yet scheduled.
pub const BACKEND_WAITING_REQUESTS: &str = "dujiang_backend_waiting_requests";
/// Per backend: KV-cache blocks in use over blocks available, in [0, 1].
pub const BACKEND_KV_USAGE_RATIO: &str = "dujiang_backend_kv_usage_ratio";

/// Accepted requests moved off a failed backend, by kind: `rerouted` (not yet producing
/// tokens) or `migrated` (streaming; prompt plus tokens sent are prefilled elsewhere).
pub const REQUEST_MIGRATIONS_TOTAL: &str = "dujiang_request_migrations_total";
/// Backends ejected from routing as stragglers, by pool.
pub const BACKEND_EJECTIONS_TOTAL: &str = "dujiang_backend_ejections_total";
/// Ejected backends re-admitted after probes showed recovery, by pool.
pub const BACKEND_READMISSIONS_TOTAL: &str = "dujiang_backend_readmissions_total";
/// Per backend: 1 while ejected as a straggler, else 0.
pub const BACKEND_EJECTED: &str = "dujiang_backend_ejected";
/// Per backend: 1 while it takes new requests (serving), 0 while draining, failed,
/// ejected or removed. `sum(dujiang_backend_serving) == 0` means nothing can be routed.
pub const BACKEND_SERVING: &str = "dujiang_backend_serving";
/// Per backend: EWMA of observed over predicted step time (1 = as modelled).
pub const BACKEND_STEP_TIME_RATIO: &str = "dujiang_backend_step_time_ratio";
/// Per real-engine backend and phase (`prefill`, `decode`): EWMA of observed over
/// predicted time to first token and time per output token. Far from 1 means the chip
/// catalogue is wrong for that stack; routing predictions are multiplied by it.
pub const BACKEND_PREDICTION_RATIO: &str = "dujiang_backend_prediction_ratio";
/// Prefill/decode fleets: time a handed-off request's KV took from the prefill backend's
/// hand-off to its arrival at the decode backend (queueing on a shared link included),
/// by prefill pool and decode pool.
pub const KV_TRANSFER_SECONDS: &str = "dujiang_kv_transfer_seconds";
/// Per pool, always 1: what it runs (chip, vendor, model, tp, domestic). Cost and domestic
/// share rules join on it instead of inferring chips from latency series.
pub const POOL_INFO: &str = "dujiang_pool_info";
/// Per pool: hourly price of its provisioned backends (catalogue chip price × tp ×
/// backends), whether they are busy or not.
pub const POOL_COST_USD_PER_HOUR: &str = "dujiang_pool_cost_usd_per_hour";

/// Request latency buckets in seconds: sub-millisecond (zero-latency test profiles, fast
/// decode steps) up to five minutes (long generations on a saturated pool).
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5,
    2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0,
];

/// Router decision buckets: a policy runs in microseconds; anything near 10 ms is a bug.
pub const ROUTER_BUCKETS_SECONDS: &[f64] = &[
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.01,
];

/// The front end a request came by: the label that tells the gRPC and the OpenAI HTTP
/// traffic apart on the request counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Frontend {
    /// `dujiang.v1.Inference` over gRPC.
    #[default]
    Grpc,
    /// The OpenAI-compatible HTTP API.
    Openai,
}

impl Frontend {
    pub const ALL: [Frontend; 2] = [Frontend::Grpc, Frontend::Openai];

    pub fn as_str(self) -> &'static str {
        match self {
            Frontend::Grpc => "grpc",
            Frontend::Openai => "openai",
        }
    }
}

/// How an accepted request ended. Exactly one per accepted request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Generated all its tokens.
    Ok,
    /// The client went away (stream dropped, call cancelled).
    Cancelled,
    /// The client's deadline ran out before the last token.
    DeadlineExceeded,
    /// Its backend failed (fault injection) or was removed.
    Failed,
    /// The daemon's grace period ended first.
    Shutdown,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::Cancelled,
        Outcome::DeadlineExceeded,
        Outcome::Failed,
        Outcome::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Cancelled => "cancelled",
            Outcome::DeadlineExceeded => "deadline_exceeded",
            Outcome::Failed => "failed",
            Outcome::Shutdown => "shutdown",
        }
    }
}

/// The handles of one (pool, chip, policy) combination, resolved once and reused.
pub struct PoolHistograms {
    pub ttft: Histogram,
    pub inter_token: Histogram,
    pub e2e: Histogram,
    pub queue: Histogram,
    pub prompt_tokens: Counter,
    pub generated_tokens: Counter,
    pub slo_ttft_violations: Counter,
    pub slo_tpot_violations: Counter,
}

/// The gauges of one backend.
#[derive(Clone)]
pub struct BackendGauges {
    pub running: Gauge,
    pub waiting: Gauge,
    pub kv_usage: Gauge,
    pub ejected: Gauge,
    pub step_time_ratio: Gauge,
    pub serving: Gauge,
}

/// The handles of one routing policy.
pub struct PolicyMetrics {
    pub decision: Histogram,
    pub retries: Counter,
}

/// Migration kinds, as `dujiang_request_migrations_total{kind}` labels them.
const MIGRATION_KINDS: [&str; 2] = ["rerouted", "migrated"];

/// (prefill pool, decode pool).
type PoolPair = (Arc<str>, Arc<str>);

/// One daemon's metrics: the fleet-wide recorder, each pool's, cached handles, and exact
/// per-pool latency summaries.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    pools: RwLock<BTreeMap<Arc<str>, Arc<PoolMetrics>>>,
    policies: RwLock<HashMap<Arc<str>, Arc<PolicyMetrics>>>,
    /// The router-decision histograms ([`histogram`]), rendered beside the recorder's.
    own: OwnHistograms,
    /// Refusal reasons: [`RejectReason`]s and the shared request check's [`Invalid`]s.
    refusal_labels: Vec<&'static str>,
    /// Indexed like `refusal_labels`, then by [`Frontend`].
    refusals: Vec<[Counter; Frontend::ALL.len()]>,
    refusal_counts: Vec<AtomicU64>,
    migrations: [Counter; MIGRATION_KINDS.len()],
    /// By [`Frontend`], then [`Outcome`].
    outcomes: [[Counter; Outcome::ALL.len()]; Frontend::ALL.len()],
    accepted: [Counter; Frontend::ALL.len()],
    in_flight: Gauge,
    // Read-back copies of the counters for Admin `GetStats` (the exporter's handles are
    // write-only).
    outcome_counts: [AtomicU64; Outcome::ALL.len()],
    accepted_count: AtomicU64,
    summaries: RwLock<BTreeMap<Arc<str>, Arc<LatencySummary>>>,
    /// KV transfer histograms by (prefill pool, decode pool).
    transfers: RwLock<HashMap<PoolPair, Histogram>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let recorder = Self::builder().build_recorder();
        let handle = recorder.handle();
        describe(&recorder);
        // Registered and rendered at 0 from the start.
        let counter = |name: &'static str, labels: Vec<Label>| {
            let c = recorder.register_counter(&Key::from_parts(name, labels), &meta());
            c.increment(0);
            c
        };
        let front = |f: Frontend| Label::new("frontend", f.as_str());
        let outcomes = Frontend::ALL.map(|f| {
            Outcome::ALL.map(|o| {
                counter(
                    REQUESTS_TOTAL,
                    vec![Label::new("outcome", o.as_str()), front(f)],
                )
            })
        });
        let refusal_labels: Vec<&'static str> = RejectReason::ALL
            .iter()
            .map(|r| r.as_str())
            .chain(Invalid::ALL.iter().map(|r| r.as_str()))
            .collect();
        let refusals = refusal_labels
            .iter()
            .map(|r| {
                Frontend::ALL.map(|f| {
                    counter(
                        REQUESTS_SHED_TOTAL,
                        vec![Label::new("reason", *r), front(f)],
                    )
                })
            })
            .collect();
        let migrations =
            MIGRATION_KINDS.map(|k| counter(REQUEST_MIGRATIONS_TOTAL, vec![Label::new("kind", k)]));
        let accepted = Frontend::ALL.map(|f| counter(REQUESTS_ACCEPTED_TOTAL, vec![front(f)]));
        let in_flight = recorder.register_gauge(&Key::from_name(IN_FLIGHT_REQUESTS), &meta());
        in_flight.set(0.0);
        Metrics {
            recorder,
            handle,
            pools: RwLock::default(),
            policies: RwLock::default(),
            own: OwnHistograms::default(),
            refusals,
            refusal_counts: refusal_labels.iter().map(|_| AtomicU64::new(0)).collect(),
            refusal_labels,
            migrations,
            outcomes,
            accepted,
            in_flight,
            outcome_counts: Default::default(),
            accepted_count: AtomicU64::new(0),
            summaries: RwLock::default(),
            transfers: RwLock::default(),
        }
    }

    /// The recorders' builder. The request-path histograms are the daemon's own
    /// ([`histogram`]); the recorders hold counters, gauges and the KV transfer histogram.
    fn builder() -> PrometheusBuilder {
        // The KV transfer histogram (one sample per prefill/decode hand-off) stays the
        // exporter's.
        PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(KV_TRANSFER_SECONDS.to_string()),
                LATENCY_BUCKETS_SECONDS,
            )
            .expect("latency buckets are non-empty")
    }

    /// The Prometheus text exposition of everything recorded so far, every pool included.
    pub fn render(&self) -> String {
        let pools: Vec<Arc<PoolMetrics>> = self.pools.read().values().cloned().collect();
        let mut fleet = self.handle.render();
        fleet.push_str(&self.own.render(describe::help));
        let renders: Vec<String> = std::iter::once(fleet)
            .chain(pools.iter().map(|p| p.render()))
            .collect();
        exposition::merge(renders.iter().map(String::as_str))
    }

    /// Periodic housekeeping the exporter needs when not installed globally.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
        for p in self.pools.read().values() {
            p.run_upkeep();
        }
    }

    /// Registers a pool's series (at 0, with its info and cost gauges, and histograms for
    /// `policy`), replacing any earlier pool of that name.
    pub fn add_pool(&self, name: &str, d: &PoolDescription, policy: &Arc<str>) -> Arc<PoolMetrics> {
        let p = Arc::new(PoolMetrics::new(name, &d.chip, Some(d)));
        p.histograms(policy);
        self.pools.write().insert(name.into(), p.clone());
        p
    }

    /// Removes every series of a pool (its backends' gauges included) and its summary.
    /// Backends still finishing its requests keep handles that no scrape renders.
    pub fn remove_pool(&self, name: &str) {
        self.pools.write().remove(name);
        self.summaries.write().remove(name);
    }

    /// A pool's metrics, created (without info or cost) if it was never added.
    pub fn pool_metrics(&self, pool: &str, chip: &str) -> Arc<PoolMetrics> {
        if let Some(p) = self.pools.read().get(pool) {
            return p.clone();
        }
        self.pools
            .write()
            .entry(pool.into())
            .or_insert_with(|| Arc::new(PoolMetrics::new(pool, chip, None)))
            .clone()
    }

    /// Histograms and counters for requests served by `pool` (on `chip`) that `policy`
    /// routed.
    pub fn pool(&self, pool: &Arc<str>, chip: &Arc<str>, policy: &Arc<str>) -> Arc<PoolHistograms> {
        self.pool_metrics(pool, chip).histograms(policy)
    }

    /// A routing policy's decision histogram and retry counter, registered on first use
    /// (callers keep the handles).
    pub fn policy(&self, policy: &Arc<str>) -> Arc<PolicyMetrics> {
        if let Some(p) = self.policies.read().get(policy) {
            return p.clone();
        }
        // Registered under the lock: a second registration would render the series twice.
        let mut policies = self.policies.write();
        if let Some(p) = policies.get(policy) {
            return p.clone();
        }
        let labels = vec![Label::new("policy", policy.to_string())];
        let p = Arc::new(PolicyMetrics {
            decision: self.own.register(
                ROUTER_DECISION_SECONDS,
                &[("policy", policy)],
                ROUTER_BUCKETS_SECONDS,
            ),
            retries: self
                .recorder
                .register_counter(&Key::from_parts(ROUTER_RETRIES_TOTAL, labels), &meta()),
        });
        p.retries.increment(0);
        policies.insert(policy.clone(), p.clone());
        p
    }

    /// Registers everything a newly chosen policy will label (its router series and every
    /// pool's histograms and counters for it) at 0, before its first decision.
    pub fn policy_in_force(&self, policy: &Arc<str>) {
        self.policy(policy);
        let pools: Vec<Arc<PoolMetrics>> = self.pools.read().values().cloned().collect();
        for p in pools {
            p.histograms(policy);
        }
    }

    /// Router decision histogram for `policy`.
    pub fn router_decision(&self, policy: &Arc<str>) -> Histogram {
        self.policy(policy).decision.clone()
    }

    /// Counts a routing decision that raced another and is taken again.
    pub fn router_retry(&self, policy: &Arc<str>) {
        self.policy(policy).retries.increment(1);
    }

    /// The KV transfer histogram from prefill pool `from` to decode pool `to`.
    pub fn kv_transfer(&self, from: &Arc<str>, to: &Arc<str>) -> Histogram {
        let key = (from.clone(), to.clone());
        if let Some(h) = self.transfers.read().get(&key) {
            return h.clone();
        }
        let labels = vec![
            Label::new("from_pool", from.to_string()),
            Label::new("to_pool", to.to_string()),
        ];
        let h = self
            .recorder
            .register_histogram(&Key::from_parts(KV_TRANSFER_SECONDS, labels), &meta());
        self.transfers.write().entry(key).or_insert(h).clone()
    }

    /// Counts an accepted request moved off a failed backend.
    pub fn migration(&self, streaming: bool) {
        self.migrations[usize::from(streaming)].increment(1);
    }

    /// Counts a straggler ejection (`ejected`) or a re-admission of `pool`'s backend.
    pub fn ejection(&self, pool: &str, ejected: bool) {
        if let Some(p) = self.pools.read().get(pool) {
            p.ejection(ejected);
        }
    }

    /// Counts a request refused before acceptance, by its reason's label (one of
    /// [`RejectReason::as_str`] or [`Invalid::as_str`]; any other counts as
    /// `invalid_request`, so the label set stays the registered one) and front end.
    pub fn shed(&self, reason: &str, frontend: Frontend) {
        let i = self
            .refusal_labels
            .iter()
            .position(|l| *l == reason)
            .or_else(|| {
                tracing::warn!(reason, "refusal reason not in the catalogue");
                self.refusal_labels
                    .iter()
                    .position(|l| *l == RejectReason::InvalidRequest.as_str())
            })
            .expect("invalid_request is a reason");
        self.refusals[i][frontend as usize].increment(1);
        self.refusal_counts[i].fetch_add(1, Relaxed);
    }

    pub fn accepted(&self, frontend: Frontend) {
        self.accepted[frontend as usize].increment(1);
        self.accepted_count.fetch_add(1, Relaxed);
        self.in_flight.increment(1.0);
    }

    pub fn ended(&self, outcome: Outcome, frontend: Frontend) {
        self.outcomes[frontend as usize][outcome as usize].increment(1);
        self.outcome_counts[outcome as usize].fetch_add(1, Relaxed);
        self.in_flight.decrement(1.0);
    }

    /// Requests accepted so far.
    pub fn accepted_count(&self) -> u64 {
        self.accepted_count.load(Relaxed)
    }

    /// Ended requests by outcome.
    pub fn outcome_counts(&self) -> Vec<(Outcome, u64)> {
        Outcome::ALL
            .iter()
            .map(|&o| (o, self.outcome_counts[o as usize].load(Relaxed)))
            .collect()
    }

    /// Requests accepted and not yet ended.
    pub fn in_flight(&self) -> u64 {
        let ended: u64 = self.outcome_counts.iter().map(|c| c.load(Relaxed)).sum();
        self.accepted_count().saturating_sub(ended)
    }

    /// Refused requests by reason (reasons that occurred).
    pub fn shed_counts(&self) -> BTreeMap<&'static str, u64> {
        self.refusal_labels
            .iter()
            .zip(&self.refusal_counts)
            .map(|(r, n)| (*r, n.load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// The exact-percentile summary for `pool`, created on first use.
    pub fn summary(&self, pool: &Arc<str>) -> Arc<LatencySummary> {
        if let Some(s) = self.summaries.read().get(pool) {
            return s.clone();
        }
        self.summaries
            .write()
            .entry(pool.clone())
            .or_default()
            .clone()
    }

    /// Every pool's summary, by pool name.
    pub fn summaries(&self) -> Vec<(Arc<str>, Arc<LatencySummary>)> {
        self.summaries
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

fn meta() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
}

#[cfg(test)]
mod tests;
