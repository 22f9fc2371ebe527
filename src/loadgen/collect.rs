//! Turns what the request tasks saw into the report: per-pool [`Tally`]s exactly as a
//! replay fills them (so `dujiang compare` lines the two up), plus what only a load test
//! has: status codes, send lateness and every inter-token gap.

use super::dispatch::Event;
use super::stream::{Outcome, UsageCheck};
use super::LoadConfig;
use crate::request::Nanos;
use crate::sim::report::{
    round3, LatencyHistogram, Percentiles, PolicyReport, PoolReport, SloReport, Tally,
    TimelineBucket,
};
use crate::sim::Report;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};
use tonic::Code;

/// Most timeline buckets, as in a replay.
const MAX_TIMELINE_BUCKETS: u64 = 240;

/// A pool as the daemon describes it (`Admin.ListPools`) or, failing that, as `Started`
/// messages name it (size and price then unknown: zero).
#[derive(Clone, Debug)]
pub(super) struct PoolMeta {
    pub name: String,
    pub chip: String,
    pub backends: u32,
    /// Per backend.
    pub price_per_hour_usd: f64,
    pub domestic: bool,
}

/// What only a load test reports, under the JSON key `load`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadSummary {
    pub target: String,
    pub time_scale: f64,
    pub concurrency_limit: Option<usize>,
    /// Wall milliseconds a send may start after its due time before it counts as late.
    pub late_after_ms: f64,
    /// Requests the trace asked for.
    pub scheduled: u64,
    pub sent: u64,
    /// Sent, but more than `late_after_ms` behind schedule.
    pub late_sent: u64,
    /// Due while the concurrency limit was reached: not sent (also in `rejected_by_reason`).
    pub late_not_sent: u64,
    /// How far behind its due time each send started, wall ms.
    pub send_lag_ms: Percentiles,
    /// Final status of every sent request: `ok`, a gRPC code (`invalid_argument`, …), an
    /// HTTP status (`http_429`, …) or a client-side failure (`timeout`, `connect_error`,
    /// `stream_error`, `error_event`, `bad_response`, `incomplete_stream`).
    pub status_codes: BTreeMap<String, u64>,
    /// Every gap between consecutive output tokens, simulated ms.
    pub inter_token_ms: Percentiles,
    /// The client's protocol: `grpc` or `openai` (older reports: empty).
    #[serde(default)]
    pub api: String,
    /// Requests refused (429/503) and sent again after the server's `Retry-After`, each
    /// retry counted (`--max-retries`; 0 by default, so that a refusal stays a refusal as
    /// in a replay).
    #[serde(default)]
    pub retried: u64,
    /// OpenAI streams that ended without a usage chunk, although the request asked for
    /// one (`stream_options.include_usage`); their tokens are counted from the chunks.
    #[serde(default)]
    pub usage_missing: u64,
    /// OpenAI streams whose usage differed from the text chunks counted (several tokens
    /// in one chunk); their tokens are usage's figure.
    #[serde(default)]
    pub usage_differs: u64,
    /// Completed requests with fewer output tokens than asked for: a server that stopped
    /// at end-of-sequence despite `ignore_eos`, which makes its latencies incomparable.
    #[serde(default)]
    pub short_outputs: u64,
}

/// A load test's report: a replay [`Report`] (same keys, `source` = `load`) plus `load`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    #[serde(flatten)]
    pub report: Report,
    pub load: LoadSummary,
}

impl LoadReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serialises")
    }

    /// The replay table, then the load test's own figures.
    pub fn to_table(&self) -> String {
        let mut s = self.report.to_table();
        let l = &self.load;
        let _ = writeln!(
            s,
            "sent {} of {} at time scale {}; late: {} sent behind schedule (> {} ms), {} not sent (concurrency limit {})",
            l.sent,
            l.scheduled,
            l.time_scale,
            l.late_sent,
            l.late_after_ms,
            l.late_not_sent,
            l.concurrency_limit
                .map_or("none".to_string(), |n| n.to_string())
        );
        let codes: Vec<String> = l
            .status_codes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(s, "status codes: {}", codes.join(", "));
        if l.retried + l.usage_missing + l.usage_differs + l.short_outputs > 0 {
            let _ = writeln!(
                s,
                "retried after Retry-After: {}; streams without usage: {}; usage differing from chunks: {}; outputs shorter than asked: {}",
                l.retried, l.usage_missing, l.usage_differs, l.short_outputs
            );
        }
        let _ = writeln!(
            s,
            "send lag ms (wall): p50 {:.3} p99 {:.3} max {:.3}; inter-token ms: p50 {:.1} p99 {:.1} p99.9 {:.1}",
            l.send_lag_ms.p50,
            l.send_lag_ms.p99,
            l.send_lag_ms.max,
            l.inter_token_ms.p50,
            l.inter_token_ms.p99,
            l.inter_token_ms.p999
        );
        s
    }
}

/// The gRPC code's name in the style of the report's rejection reasons.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// One request on the timeline, in simulated ns from the start.
struct Point {
    arrival_ns: Nanos,
    pool: Option<usize>,
    /// (completion, ttft, e2e) for completed requests.
    done: Option<(Nanos, Nanos, Nanos)>,
}

pub(super) struct Collector {
    scale: f64,
    late_after: Duration,
    start: Instant,
    pools: Vec<PoolMeta>,
    per_pool: Vec<Tally>,
    /// Arrivals and rejections over the whole fleet; completions live in `per_pool`.
    fleet: Tally,
    inter_token: LatencyHistogram,
    send_lag: LatencyHistogram,
    pub live_ttft: LatencyHistogram,
    status: BTreeMap<&'static str, u64>,
    pub scheduled: u64,
    pub sent: u64,
    pub late_sent: u64,
    pub late_not_sent: u64,
    pub errors: u64,
    retried: u64,
    usage_missing: u64,
    usage_differs: u64,
    short_outputs: u64,
    points: Vec<Point>,
    end_ns: Nanos,
}

impl Collector {
    pub fn new(cfg: &LoadConfig, pools: Vec<PoolMeta>, start: Instant) -> Collector {
        Collector {
            scale: cfg.time_scale,
            late_after: cfg.late_after,
            start,
            per_pool: vec![Tally::default(); pools.len()],
            pools,
            fleet: Tally::default(),
            inter_token: LatencyHistogram::default(),
            send_lag: LatencyHistogram::default(),
            live_ttft: LatencyHistogram::default(),
            status: BTreeMap::new(),
            scheduled: 0,
            sent: 0,
            late_sent: 0,
            late_not_sent: 0,
            errors: 0,
            retried: 0,
            usage_missing: 0,
            usage_differs: 0,
            short_outputs: 0,
            points: Vec::new(),
            end_ns: 0,
        }
    }

    /// Wall time to simulated ns.
    fn sim(&self, d: Duration) -> Nanos {
        (d.as_nanos() as f64 * self.scale).round() as Nanos
    }

    fn pool_index(&mut self, name: &str, chip: &str) -> usize {
        if let Some(i) = self.pools.iter().position(|p| p.name == name) {
            return i;
        }
        self.pools.push(PoolMeta {
            name: name.to_string(),
            chip: chip.to_string(),
            backends: 0,
            price_per_hour_usd: 0.0,
            domestic: false,
        });
        self.per_pool.push(Tally::default());
        self.pools.len() - 1
    }

    pub fn record(&mut self, ev: Event) {
        self.scheduled += 1;
        self.fleet.requests += 1;
        match ev {
            Event::NotSent { scheduled_ns } => {
                self.late_not_sent += 1;
                self.fleet.reject("late_not_sent");
                self.end_ns = self.end_ns.max(scheduled_ns);
                self.points.push(Point {
                    arrival_ns: scheduled_ns,
                    pool: None,
                    done: None,
                });
            }
            Event::Done(o) => self.done(*o),
        }
    }

    fn done(&mut self, o: Outcome) {
        self.sent += 1;
        self.send_lag.record_ns(o.lag.as_nanos() as Nanos);
        if o.lag > self.late_after {
            self.late_sent += 1;
        }
        let code = o.status;
        *self.status.entry(code).or_default() += 1;
        self.retried += u64::from(o.retries);
        match o.usage {
            UsageCheck::NotAsked | UsageCheck::Agrees => {}
            UsageCheck::Missing => self.usage_missing += 1,
            UsageCheck::Differs => self.usage_differs += 1,
        }
        if o.completed && o.output_tokens < o.max_tokens {
            self.short_outputs += 1;
        }
        let pool = match &o.placement {
            Some(p) => Some(self.pool_index(&p.pool, &p.chip)),
            // Completed without saying where: keep it in the totals all the same.
            None if o.completed => Some(self.pool_index("(unknown)", "")),
            None => None,
        };
        if let Some(p) = pool {
            self.per_pool[p].requests += 1;
            if let Some(placement) = &o.placement {
                self.per_pool[p].queue.record_ns(placement.queue_ns);
            }
        }
        let ended_ns = self.sim(o.ended_at.saturating_duration_since(self.start));
        self.end_ns = self.end_ns.max(ended_ns).max(o.scheduled_ns);
        let mut done = None;
        match pool {
            Some(p) if o.completed => {
                let ttft = self.sim(o.first_token.unwrap_or(o.end));
                let e2e = self.sim(o.end);
                let domestic = self.pools[p].domestic;
                self.per_pool[p].complete(ttft, e2e, o.output_tokens, &o.slo, domestic);
                self.live_ttft.record_ns(ttft);
                for gap in &o.gaps {
                    self.inter_token.record_ns(self.sim(*gap));
                }
                done = Some((ended_ns, ttft, e2e));
            }
            _ => {
                self.errors += 1;
                self.fleet.reject(code);
                if let Some(p) = pool {
                    self.per_pool[p].reject(code);
                }
            }
        }
        self.points.push(Point {
            arrival_ns: o.scheduled_ns,
            pool,
            done,
        });
    }

    pub fn finish(self, cfg: &LoadConfig, policy: Option<String>, wall: Duration) -> LoadReport {
        let seconds = self.end_ns as f64 / 1e9;
        let hours = seconds / 3600.0;
        let mut pools = Vec::new();
        let mut total_cost = 0.0;
        for (meta, tally) in self.pools.iter().zip(&self.per_pool) {
            let cost = meta.price_per_hour_usd * f64::from(meta.backends) * hours;
            total_cost += cost;
            pools.push(PoolReport {
                pool: meta.name.clone(),
                chip: meta.chip.clone(),
                backends: meta.backends,
                domestic: meta.domestic,
                // The daemon's pools do not report a role to clients.
                role: String::new(),
                // A client cannot see how long backends were busy.
                busy_fraction: 0.0,
                stats: tally.stats(seconds, cost),
            });
        }
        let mut overall = Tally::default();
        for t in &self.per_pool {
            overall.merge(t);
        }
        overall.requests = self.fleet.requests;
        overall.rejected = self.fleet.rejected.clone();
        let (bucket_ns, timeline) = self.timeline();
        let policy = PolicyReport {
            policy: policy.unwrap_or_else(|| "unknown".into()),
            simulated_seconds: round3(seconds),
            stats: overall.stats(seconds, total_cost),
            slo: SloReport::from(cfg.slo),
            pools,
            ttft_cdf: overall.ttft.cdf_ms(),
            e2e_cdf: overall.e2e.cdf_ms(),
            timeline_bucket_s: bucket_ns as f64 / 1e9,
            timeline,
            hourly: Vec::new(),
        };
        LoadReport {
            report: Report {
                source: "load".into(),
                trace: cfg.trace_name.clone(),
                fleet: format!("daemon at {}", cfg.target),
                seed: cfg.seed,
                simulated_seconds: round3(seconds),
                wall_seconds: round3(wall.as_secs_f64()),
                policies: vec![policy],
                cells: None,
                day_start_hour: None,
            },
            load: LoadSummary {
                target: cfg.target.clone(),
                time_scale: cfg.time_scale,
                concurrency_limit: cfg.concurrency_limit,
                late_after_ms: cfg.late_after.as_secs_f64() * 1e3,
                scheduled: self.scheduled,
                sent: self.sent,
                late_sent: self.late_sent,
                late_not_sent: self.late_not_sent,
                send_lag_ms: self.send_lag.percentiles(),
                status_codes: self
                    .status
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect(),
                inter_token_ms: self.inter_token.percentiles(),
                api: cfg.api.name().to_string(),
                retried: self.retried,
                usage_missing: self.usage_missing,
                usage_differs: self.usage_differs,
                short_outputs: self.short_outputs,
            },
        }
    }

    /// Buckets of one simulated second, doubled until there are at most 240 (a replay's
    /// rule, so the two timelines line up).
    fn timeline(&self) -> (Nanos, Vec<TimelineBucket>) {
        let mut width: Nanos = 1_000_000_000;
        while self.end_ns / width >= MAX_TIMELINE_BUCKETS {
            width *= 2;
        }
        let n = (self.end_ns / width + 1) as usize;
        #[derive(Clone, Default)]
        struct Acc {
            arrivals: u64,
            completed: u64,
            ttft: u128,
            e2e: u128,
            routed: Vec<u64>,
        }
        let mut acc = vec![
            Acc {
                routed: vec![0; self.pools.len()],
                ..Acc::default()
            };
            n
        ];
        for p in &self.points {
            let a = &mut acc[((p.arrival_ns / width) as usize).min(n - 1)];
            a.arrivals += 1;
            if let Some(pool) = p.pool {
                a.routed[pool] += 1;
            }
            if let Some((end, ttft, e2e)) = p.done {
                let b = &mut acc[((end / width) as usize).min(n - 1)];
                b.completed += 1;
                b.ttft += u128::from(ttft);
                b.e2e += u128::from(e2e);
            }
        }
        let buckets = acc
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                let mean = |sum: u128| {
                    if a.completed > 0 {
                        round3(sum as f64 / a.completed as f64 / 1e6)
                    } else {
                        0.0
                    }
                };
                TimelineBucket {
                    start_s: round3((i as u64 * width) as f64 / 1e9),
                    arrivals: a.arrivals,
                    completed: a.completed,
                    mean_ttft_ms: mean(a.ttft),
                    mean_e2e_ms: mean(a.e2e),
                    routed_by_pool: a.routed,
                }
            })
            .collect();
        (width, buckets)
    }
}
