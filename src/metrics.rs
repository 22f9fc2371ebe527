//! The one catalogue of the daemon's metrics: every Prometheus name, its label set and its
//! histogram buckets live here, so names stay consistent (`dujiang_` prefix, units in the
//! name, `_total` only on counters) and label cardinality stays bounded (labels come only
//! from server-controlled sets: pool, chip, policy, outcome, reason, backend id).
//!
//! Each daemon owns its own [`Metrics`] (a Prometheus recorder that is *not* installed
//! globally), so several daemons can run in one test process without sharing counters.
//! Alongside the Prometheus histograms, [`LatencySummary`] keeps exact HdrHistogram
//! percentiles per pool for the Admin `GetStats` call.
//!
//! Latencies are recorded in simulated seconds (engine time), which equal wall seconds at
//! time scale 1: at `--time-scale 100` a dashboard still shows what the modelled chips do.

use hdrhistogram::Histogram as Hdr;
use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use parking_lot::{Mutex, RwLock};
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
/// Requests accepted (placed on a backend). Equals the sum of `dujiang_requests_total`
/// once everything in flight has ended.
pub const REQUESTS_ACCEPTED_TOTAL: &str = "dujiang_requests_accepted_total";
/// Accepted requests by terminal outcome ([`Outcome`]).
pub const REQUESTS_TOTAL: &str = "dujiang_requests_total";
/// Requests refused before acceptance, by reason.
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

/// The histograms of one (pool, chip, policy) combination, resolved once and reused.
#[derive(Clone)]
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

/// (pool, chip, policy) label values.
type PoolLabels = (Arc<str>, Arc<str>, Arc<str>);

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

/// One daemon's metrics: a private Prometheus recorder, cached handles, and exact per-pool
/// latency summaries.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    pools: RwLock<HashMap<PoolLabels, PoolHistograms>>,
    router: RwLock<HashMap<Arc<str>, Histogram>>,
    shed: RwLock<HashMap<&'static str, Counter>>,
    outcomes: [Counter; Outcome::ALL.len()],
    accepted: Counter,
    in_flight: Gauge,
    // Read-back copies of the counters for Admin `GetStats` (the exporter's handles are
    // write-only).
    outcome_counts: [AtomicU64; Outcome::ALL.len()],
    accepted_count: AtomicU64,
    shed_counts: Mutex<BTreeMap<&'static str, u64>>,
    summaries: RwLock<BTreeMap<Arc<str>, Arc<LatencySummary>>>,
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
        let outcomes = Outcome::ALL.map(|o| {
            recorder.register_counter(
                &Key::from_parts(REQUESTS_TOTAL, vec![Label::new("outcome", o.as_str())]),
                &meta(),
            )
        });
        let accepted = recorder.register_counter(&Key::from_name(REQUESTS_ACCEPTED_TOTAL), &meta());
        let in_flight = recorder.register_gauge(&Key::from_name(IN_FLIGHT_REQUESTS), &meta());
        let m = Metrics {
            recorder,
            handle,
            pools: RwLock::default(),
            router: RwLock::default(),
            shed: RwLock::default(),
            outcomes,
            accepted,
            in_flight,
            outcome_counts: Default::default(),
            accepted_count: AtomicU64::new(0),
            shed_counts: Mutex::default(),
            summaries: RwLock::default(),
        };
        m.describe();
        // Render every outcome from the start so `sum(dujiang_requests_total)` never
        // misses a series that has not happened yet.
        for c in &m.outcomes {
            c.increment(0);
        }
        m.accepted.increment(0);
        m
    }

    fn builder() -> PrometheusBuilder {
        let latency = [
            TTFT_SECONDS,
            INTER_TOKEN_SECONDS,
            E2E_SECONDS,
            QUEUE_SECONDS,
        ];
        let mut b = PrometheusBuilder::new();
        for name in latency {
            b = b
                .set_buckets_for_metric(Matcher::Full(name.to_string()), LATENCY_BUCKETS_SECONDS)
                .expect("latency buckets are non-empty");
        }
        b.set_buckets_for_metric(
            Matcher::Full(ROUTER_DECISION_SECONDS.to_string()),
            ROUTER_BUCKETS_SECONDS,
        )
        .expect("router buckets are non-empty")
    }

    fn describe(&self) {
        use metrics::Unit;
        let d = |name: &'static str, unit: Option<Unit>, help: &'static str, kind: u8| {
            let key = name.into();
            match kind {
                0 => self.recorder.describe_counter(key, unit, help.into()),
                1 => self.recorder.describe_gauge(key, unit, help.into()),
                _ => self.recorder.describe_histogram(key, unit, help.into()),
            }
        };
        let s = Some(Unit::Seconds);
        d(
            TTFT_SECONDS,
            s,
            "Time to first token in simulated seconds.",
            2,
        );
        d(
            INTER_TOKEN_SECONDS,
            s,
            "Gap between consecutive output tokens in simulated seconds.",
            2,
        );
        d(
            E2E_SECONDS,
            s,
            "Arrival to last token in simulated seconds.",
            2,
        );
        d(
            QUEUE_SECONDS,
            s,
            "Time waiting in a backend queue in simulated seconds.",
            2,
        );
        d(
            ROUTER_DECISION_SECONDS,
            s,
            "Wall time the routing policy took to choose a backend.",
            2,
        );
        d(
            ROUTER_RETRIES_TOTAL,
            None,
            "Routing decisions taken again because another committed meanwhile.",
            0,
        );
        d(
            REQUESTS_ACCEPTED_TOTAL,
            None,
            "Requests placed on a backend.",
            0,
        );
        d(
            REQUESTS_TOTAL,
            None,
            "Accepted requests by terminal outcome.",
            0,
        );
        d(
            REQUESTS_SHED_TOTAL,
            None,
            "Requests refused before acceptance, by reason.",
            0,
        );
        d(
            PROMPT_TOKENS_TOTAL,
            None,
            "Prompt tokens of accepted requests.",
            0,
        );
        d(
            GENERATED_TOKENS_TOTAL,
            None,
            "Output tokens delivered to clients.",
            0,
        );
        d(
            SLO_VIOLATIONS_TOTAL,
            None,
            "Finished requests that missed their SLO.",
            0,
        );
        d(
            IN_FLIGHT_REQUESTS,
            None,
            "Requests accepted and not yet ended.",
            1,
        );
        d(
            BACKEND_SERVING,
            None,
            "1 while a backend takes new requests; 0 while draining, failed, ejected or removed.",
            1,
        );
        d(
            BACKEND_RUNNING_REQUESTS,
            None,
            "Requests in a backend's running batch.",
            1,
        );
        d(
            BACKEND_WAITING_REQUESTS,
            None,
            "Requests waiting in a backend's queue.",
            1,
        );
        d(
            BACKEND_KV_USAGE_RATIO,
            None,
            "Fraction of a backend's KV-cache blocks in use.",
            1,
        );
        d(
            REQUEST_MIGRATIONS_TOTAL,
            None,
            "Accepted requests moved off a failed backend, by kind.",
            0,
        );
        d(
            BACKEND_EJECTIONS_TOTAL,
            None,
            "Backends ejected from routing as stragglers.",
            0,
        );
        d(
            BACKEND_READMISSIONS_TOTAL,
            None,
            "Ejected backends re-admitted after recovering.",
            0,
        );
        d(
            BACKEND_EJECTED,
            None,
            "1 while a backend is ejected as a straggler.",
            1,
        );
        d(
            BACKEND_STEP_TIME_RATIO,
            None,
            "EWMA of observed over predicted step time.",
            1,
        );
    }

    /// The Prometheus text exposition of everything recorded so far.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Periodic housekeeping the exporter needs when not installed globally.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Histograms and counters for requests served by `pool` (on `chip`) under `policy`.
    pub fn pool(&self, pool: &Arc<str>, chip: &Arc<str>, policy: &Arc<str>) -> PoolHistograms {
        let key = (pool.clone(), chip.clone(), policy.clone());
        if let Some(h) = self.pools.read().get(&key) {
            return h.clone();
        }
        let labels = vec![
            Label::new("pool", pool.to_string()),
            Label::new("chip", chip.to_string()),
            Label::new("policy", policy.to_string()),
        ];
        let pool_only = vec![Label::new("pool", pool.to_string())];
        let r = &self.recorder;
        let hist = |name: &'static str| {
            r.register_histogram(&Key::from_parts(name, labels.clone()), &meta())
        };
        let counter = |name: &'static str, extra: Option<(&'static str, &'static str)>| {
            let mut l = pool_only.clone();
            if let Some((k, v)) = extra {
                l.push(Label::new(k, v));
            }
            r.register_counter(&Key::from_parts(name, l), &meta())
        };
        let h = PoolHistograms {
            ttft: hist(TTFT_SECONDS),
            inter_token: hist(INTER_TOKEN_SECONDS),
            e2e: hist(E2E_SECONDS),
            queue: hist(QUEUE_SECONDS),
            prompt_tokens: counter(PROMPT_TOKENS_TOTAL, None),
            generated_tokens: counter(GENERATED_TOKENS_TOTAL, None),
            slo_ttft_violations: counter(SLO_VIOLATIONS_TOTAL, Some(("objective", "ttft"))),
            slo_tpot_violations: counter(SLO_VIOLATIONS_TOTAL, Some(("objective", "tpot"))),
        };
        self.pools.write().insert(key, h.clone());
        h
    }

    /// Router decision histogram for `policy`.
    pub fn router_decision(&self, policy: &Arc<str>) -> Histogram {
        if let Some(h) = self.router.read().get(policy) {
            return h.clone();
        }
        let h = self.recorder.register_histogram(
            &Key::from_parts(
                ROUTER_DECISION_SECONDS,
                vec![Label::new("policy", policy.to_string())],
            ),
            &meta(),
        );
        self.router.write().insert(policy.clone(), h.clone());
        h
    }

    /// Counts a routing decision that raced another and is taken again.
    pub fn router_retry(&self, policy: &Arc<str>) {
        self.recorder
            .register_counter(
                &Key::from_parts(
                    ROUTER_RETRIES_TOTAL,
                    vec![Label::new("policy", policy.to_string())],
                ),
                &meta(),
            )
            .increment(1);
    }

    /// Gauges for one backend. `backend` must be a server-assigned id.
    pub fn backend(&self, backend: &str, pool: &str) -> BackendGauges {
        let labels = vec![
            Label::new("backend", backend.to_string()),
            Label::new("pool", pool.to_string()),
        ];
        let g = |name: &'static str| {
            self.recorder
                .register_gauge(&Key::from_parts(name, labels.clone()), &meta())
        };
        let gauges = BackendGauges {
            running: g(BACKEND_RUNNING_REQUESTS),
            waiting: g(BACKEND_WAITING_REQUESTS),
            kv_usage: g(BACKEND_KV_USAGE_RATIO),
            ejected: g(BACKEND_EJECTED),
            step_time_ratio: g(BACKEND_STEP_TIME_RATIO),
            serving: g(BACKEND_SERVING),
        };
        gauges.serving.set(1.0);
        gauges.ejected.set(0.0);
        gauges.step_time_ratio.set(1.0);
        gauges
    }

    /// Counts an accepted request moved off a failed backend.
    pub fn migration(&self, streaming: bool) {
        let kind = if streaming { "migrated" } else { "rerouted" };
        self.recorder
            .register_counter(
                &Key::from_parts(REQUEST_MIGRATIONS_TOTAL, vec![Label::new("kind", kind)]),
                &meta(),
            )
            .increment(1);
    }

    /// Counts a straggler ejection (`ejected`) or a re-admission of `pool`'s backend.
    pub fn ejection(&self, pool: &str, ejected: bool) {
        let name = if ejected {
            BACKEND_EJECTIONS_TOTAL
        } else {
            BACKEND_READMISSIONS_TOTAL
        };
        self.recorder
            .register_counter(
                &Key::from_parts(name, vec![Label::new("pool", pool.to_string())]),
                &meta(),
            )
            .increment(1);
    }

    /// Counts a request refused before acceptance. `reason` comes from a fixed enum.
    pub fn shed(&self, reason: &'static str) {
        *self.shed_counts.lock().entry(reason).or_default() += 1;
        if let Some(c) = self.shed.read().get(reason) {
            c.increment(1);
            return;
        }
        let c = self.recorder.register_counter(
            &Key::from_parts(REQUESTS_SHED_TOTAL, vec![Label::new("reason", reason)]),
            &meta(),
        );
        c.increment(1);
        self.shed.write().insert(reason, c);
    }

    pub fn accepted(&self) {
        self.accepted.increment(1);
        self.accepted_count.fetch_add(1, Relaxed);
        self.in_flight.increment(1.0);
    }

    pub fn ended(&self, outcome: Outcome) {
        self.outcomes[outcome as usize].increment(1);
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

    /// Shed requests by reason.
    pub fn shed_counts(&self) -> BTreeMap<&'static str, u64> {
        self.shed_counts.lock().clone()
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

/// Exact latency percentiles of one pool, in simulated nanoseconds (HdrHistogram, three
/// significant digits, so p99.9 of a million samples is exact to 0.1%).
pub struct LatencySummary {
    inner: Mutex<SummaryHistograms>,
}

struct SummaryHistograms {
    ttft: Hdr<u64>,
    inter_token: Hdr<u64>,
    e2e: Hdr<u64>,
    queue: Hdr<u64>,
    completed: u64,
    slo_violations: u64,
}

impl Default for LatencySummary {
    fn default() -> Self {
        // 1 µs resolution up to an hour, three significant digits; longer values saturate.
        let h = || Hdr::new_with_bounds(1_000, 3_600 * 1_000_000_000, 3).expect("valid bounds");
        LatencySummary {
            inner: Mutex::new(SummaryHistograms {
                ttft: h(),
                inter_token: h(),
                e2e: h(),
                queue: h(),
                completed: 0,
                slo_violations: 0,
            }),
        }
    }
}

/// Percentiles of one latency, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    fn of(h: &Hdr<u64>) -> Percentiles {
        let s = |ns: u64| ns as f64 / 1e9;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: s(h.value_at_quantile(0.5)),
            p90: s(h.value_at_quantile(0.9)),
            p99: s(h.value_at_quantile(0.99)),
            p999: s(h.value_at_quantile(0.999)),
            max: s(h.max()),
            mean: h.mean() / 1e9,
        }
    }
}

/// A snapshot of one pool's [`LatencySummary`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SummarySnapshot {
    pub ttft: Percentiles,
    pub inter_token: Percentiles,
    pub e2e: Percentiles,
    pub queue: Percentiles,
    pub completed: u64,
    pub slo_violations: u64,
}

/// One finished request's latencies in simulated nanoseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct FinishedLatencies {
    pub queue_ns: u64,
    pub ttft_ns: u64,
    pub e2e_ns: u64,
    pub slo_violated: bool,
}

impl LatencySummary {
    pub fn record(&self, f: &FinishedLatencies) {
        let mut g = self.inner.lock();
        g.ttft.saturating_record(f.ttft_ns);
        g.e2e.saturating_record(f.e2e_ns);
        g.queue.saturating_record(f.queue_ns);
        g.completed += 1;
        g.slo_violations += u64::from(f.slo_violated);
    }

    /// Records gaps between consecutive tokens (batched per driver wake-up, so the lock is
    /// taken once per step rather than once per token).
    pub fn record_inter_token(&self, gaps_ns: &[u64]) {
        let mut g = self.inner.lock();
        for &gap in gaps_ns {
            g.inter_token.saturating_record(gap);
        }
    }

    pub fn snapshot(&self) -> SummarySnapshot {
        let g = self.inner.lock();
        SummarySnapshot {
            ttft: Percentiles::of(&g.ttft),
            inter_token: Percentiles::of(&g.inter_token),
            e2e: Percentiles::of(&g.e2e),
            queue: Percentiles::of(&g.queue),
            completed: g.completed,
            slo_violations: g.slo_violations,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_with_explicit_buckets() {
        let m = Metrics::new();
        let h = m.pool(&"a".into(), &"h20".into(), &"least-load".into());
        h.ttft.record(0.2);
        h.ttft.record(3.0);
        let text = m.render();
        assert!(text.contains("dujiang_ttft_seconds_bucket{pool=\"a\",chip=\"h20\",policy=\"least-load\",le=\"0.25\"} 1"), "{text}");
        assert!(
            text.contains(
                "dujiang_ttft_seconds_count{pool=\"a\",chip=\"h20\",policy=\"least-load\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE dujiang_ttft_seconds histogram"),
            "{text}"
        );
        assert!(!text.contains("quantile="), "no summaries: {text}");
    }

    #[test]
    fn outcomes_add_up_and_are_present_from_the_start() {
        let m = Metrics::new();
        let text = m.render();
        for o in Outcome::ALL {
            assert!(
                text.contains(&format!(
                    "dujiang_requests_total{{outcome=\"{}\"}} 0",
                    o.as_str()
                )),
                "{text}"
            );
        }
        m.accepted();
        m.accepted();
        m.ended(Outcome::Ok);
        m.ended(Outcome::Cancelled);
        let text = m.render();
        assert!(text.contains("dujiang_requests_accepted_total 2"), "{text}");
        assert!(
            text.contains("dujiang_requests_total{outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(text.contains("dujiang_in_flight_requests 0"), "{text}");
    }

    #[test]
    fn router_retries_count_per_policy() {
        let m = Metrics::new();
        let lw: Arc<str> = "least-work".into();
        m.router_retry(&lw);
        m.router_retry(&lw);
        m.router_retry(&"power-of-two".into());
        let text = m.render();
        assert!(
            text.contains("dujiang_router_retries_total{policy=\"least-work\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("dujiang_router_retries_total{policy=\"power-of-two\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn two_daemons_do_not_share_counters() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.shed("queue_full");
        assert!(a
            .render()
            .contains("dujiang_requests_shed_total{reason=\"queue_full\"} 1"));
        assert!(!b.render().contains("queue_full"));
    }

    #[test]
    fn summary_percentiles_are_exact_to_three_digits() {
        let s = LatencySummary::default();
        for i in 1..=1000u64 {
            s.record(&FinishedLatencies {
                ttft_ns: i * 1_000_000,
                e2e_ns: i * 2_000_000,
                ..Default::default()
            });
        }
        let snap = s.snapshot();
        assert_eq!(snap.completed, 1000);
        assert!((snap.ttft.p50 - 0.5).abs() < 0.001, "{:?}", snap.ttft);
        assert!((snap.ttft.p99 - 0.99).abs() < 0.001, "{:?}", snap.ttft);
        assert!((snap.ttft.p999 - 0.999).abs() < 0.001, "{:?}", snap.ttft);
        assert!((snap.e2e.max - 2.0).abs() < 0.002, "{:?}", snap.e2e);
    }
}
