//! One pool's series, in a Prometheus recorder of the pool's own: its latency histograms
//! (per routing policy), token, SLO, outcome and straggler counters, its info and cost
//! gauges, and its backends' gauges. Removing the pool drops the recorder, and with it
//! every series that names the pool.

use super::histogram::OwnHistograms;
use super::*;

/// What the metrics say about a pool besides its name: `dujiang_pool_info`'s labels and
/// the hourly cost of its provisioned backends.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolDescription {
    pub chip: String,
    pub vendor: String,
    pub model: String,
    /// Serving engine id and dtype: two pools of one chip can run at very different
    /// speeds under different stacks, and the operator's dashboards should say which.
    pub engine: String,
    pub dtype: String,
    pub tp: u32,
    pub domestic: bool,
    /// `mixed`, `prefill` or `decode` (prefill/decode disaggregation).
    pub role: String,
    pub backends: u32,
    pub cost_usd_per_hour: f64,
}

impl PoolDescription {
    /// From a resolved pool configuration (chip, model and prices from the catalogue).
    pub fn of(pool: &crate::fleet::PoolConfig) -> PoolDescription {
        PoolDescription {
            chip: pool.perf.chip.id.clone(),
            vendor: pool.perf.chip.vendor.clone(),
            model: pool.perf.model.id.clone(),
            engine: pool.perf.engine.engine.clone(),
            dtype: pool.perf.dtype.to_string(),
            tp: pool.perf.tp,
            domestic: pool.domestic(),
            role: pool.role.as_str().into(),
            backends: pool.count,
            cost_usd_per_hour: pool.cost_per_hour_usd(),
        }
    }
}

/// A pool's recorder and the handles resolved in it.
pub struct PoolMetrics {
    pub name: Arc<str>,
    pub chip: Arc<str>,
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    by_policy: RwLock<HashMap<Arc<str>, Arc<PoolHistograms>>>,
    /// The latency histograms ([`histogram`]), rendered beside the recorder's series.
    own: OwnHistograms,
    outcomes: [Counter; Outcome::ALL.len()],
    ejections: Counter,
    readmissions: Counter,
}

impl std::fmt::Debug for PoolMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PoolMetrics({})", self.name)
    }
}

impl PoolMetrics {
    pub(super) fn new(name: &str, chip: &str, described: Option<&PoolDescription>) -> PoolMetrics {
        let recorder = Metrics::builder().build_recorder();
        let handle = recorder.handle();
        describe(&recorder);
        let pool = || Label::new("pool", name.to_string());
        let counter = |metric: &'static str, extra: Vec<Label>| {
            let mut labels = vec![pool()];
            labels.extend(extra);
            let c = recorder.register_counter(&Key::from_parts(metric, labels), &meta());
            // Rendered from the start, so rates and sums never miss a series.
            c.increment(0);
            c
        };
        let outcomes = Outcome::ALL
            .map(|o| counter(POOL_REQUESTS_TOTAL, vec![Label::new("outcome", o.as_str())]));
        let ejections = counter(BACKEND_EJECTIONS_TOTAL, Vec::new());
        let readmissions = counter(BACKEND_READMISSIONS_TOTAL, Vec::new());
        if let Some(d) = described {
            let info = vec![
                pool(),
                Label::new("chip", d.chip.clone()),
                Label::new("vendor", d.vendor.clone()),
                Label::new("model", d.model.clone()),
                Label::new("engine", d.engine.clone()),
                Label::new("dtype", d.dtype.clone()),
                Label::new("tp", d.tp.to_string()),
                Label::new("domestic", if d.domestic { "true" } else { "false" }),
                Label::new("role", d.role.clone()),
            ];
            recorder
                .register_gauge(&Key::from_parts(POOL_INFO, info), &meta())
                .set(1.0);
            recorder
                .register_gauge(
                    &Key::from_parts(POOL_COST_USD_PER_HOUR, vec![pool()]),
                    &meta(),
                )
                .set(d.cost_usd_per_hour);
        }
        PoolMetrics {
            name: name.into(),
            chip: chip.into(),
            recorder,
            handle,
            by_policy: RwLock::default(),
            own: OwnHistograms::default(),
            outcomes,
            ejections,
            readmissions,
        }
    }

    /// Histograms and counters for requests this pool serves that `policy` routed. Resolved
    /// once per policy; callers keep the returned handles.
    pub fn histograms(&self, policy: &Arc<str>) -> Arc<PoolHistograms> {
        if let Some(h) = self.by_policy.read().get(policy) {
            return h.clone();
        }
        // Registered under the lock: a second registration would render the series twice.
        let mut by_policy = self.by_policy.write();
        if let Some(h) = by_policy.get(policy) {
            return h.clone();
        }
        let labels = [
            ("pool", &*self.name),
            ("chip", &*self.chip),
            ("policy", &**policy),
        ];
        let pool_only = vec![Label::new("pool", self.name.to_string())];
        let r = &self.recorder;
        let hist = |name: &'static str| self.own.register(name, &labels, LATENCY_BUCKETS_SECONDS);
        let counter = |name: &'static str, extra: Option<(&'static str, &'static str)>| {
            let mut l = pool_only.clone();
            if let Some((k, v)) = extra {
                l.push(Label::new(k, v));
            }
            let c = r.register_counter(&Key::from_parts(name, l), &meta());
            c.increment(0);
            c
        };
        let h = Arc::new(PoolHistograms {
            ttft: hist(TTFT_SECONDS),
            inter_token: hist(INTER_TOKEN_SECONDS),
            e2e: hist(E2E_SECONDS),
            queue: hist(QUEUE_SECONDS),
            prompt_tokens: counter(PROMPT_TOKENS_TOTAL, None),
            generated_tokens: counter(GENERATED_TOKENS_TOTAL, None),
            slo_ttft_violations: counter(SLO_VIOLATIONS_TOTAL, Some(("objective", "ttft"))),
            slo_tpot_violations: counter(SLO_VIOLATIONS_TOTAL, Some(("objective", "tpot"))),
        });
        by_policy.insert(policy.clone(), h.clone());
        h
    }

    /// A real-engine backend's prediction-ratio gauges, `[prefill, decode]`, at 1.
    pub fn prediction_ratio(&self, backend: &str) -> [metrics::Gauge; 2] {
        ["prefill", "decode"].map(|phase| {
            let labels = vec![
                Label::new("backend", backend.to_string()),
                Label::new("pool", self.name.to_string()),
                Label::new("phase", phase),
            ];
            let g = self
                .recorder
                .register_gauge(&Key::from_parts(BACKEND_PREDICTION_RATIO, labels), &meta());
            g.set(1.0);
            g
        })
    }

    /// Gauges for one of this pool's backends. `backend` must be a server-assigned id.
    pub fn backend(&self, backend: &str) -> BackendGauges {
        let labels = vec![
            Label::new("backend", backend.to_string()),
            Label::new("pool", self.name.to_string()),
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
        gauges.running.set(0.0);
        gauges.waiting.set(0.0);
        gauges.kv_usage.set(0.0);
        gauges.serving.set(1.0);
        gauges.ejected.set(0.0);
        gauges.step_time_ratio.set(1.0);
        gauges
    }

    /// Counts an accepted request that ended on this pool.
    pub fn ended(&self, outcome: Outcome) {
        self.outcomes[outcome as usize].increment(1);
    }

    /// Counts a straggler ejection (`ejected`) or a re-admission of one of its backends.
    pub fn ejection(&self, ejected: bool) {
        if ejected {
            self.ejections.increment(1);
        } else {
            self.readmissions.increment(1);
        }
    }

    pub(super) fn render(&self) -> String {
        let mut text = self.handle.render();
        text.push_str(&self.own.render(describe::help));
        text
    }

    pub(super) fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}
