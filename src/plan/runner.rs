//! How the planner asks for replays. Every question it asks ("does this fleet meet the SLO
//! on this traffic?") is an independent, deterministic replay, so it hands them over in
//! batches and lets the caller decide how to run them: [`Sequential`] here, a thread pool
//! in the CLI. The results come back in job order, so the plan does not depend on how
//! many threads ran it.

use crate::fleet::{PolicySpec, PoolConfig};
use crate::request::{Nanos, Slo};
use crate::sim::{PolicyReport, Replay, ReplayConfig};
use crate::trace::TraceRecord;
use std::convert::Infallible;
use std::sync::Arc;

/// How a job places its records in time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Timing {
    /// Arrivals divided by this factor (2 = twice the rate).
    Scaled(f64),
    /// One request at a time, far apart: what each request gets on an idle backend.
    Isolated,
    /// Arrivals divided by `factor`, the records repeated (each pass shifted by the
    /// records' span plus one mean gap) until arrivals reach `min_ns` or `max_requests`
    /// have been sent. A capacity probe must run long enough for a queue to build: just
    /// above capacity, the backlog grows slowly and takes a minute or more to show.
    Looped {
        factor: f64,
        min_ns: Nanos,
        max_requests: usize,
    },
}

/// Gap between requests in an isolated replay: longer than any request runs.
const ISOLATION_GAP_NS: Nanos = 10_000 * 1_000_000_000;

/// One replay: a fleet, a policy, traffic and the per-request SLO to judge it by.
#[derive(Clone, Debug)]
pub struct ReplayJob {
    pub pools: Vec<PoolConfig>,
    pub policy: PolicySpec,
    pub seed: u64,
    pub slo: Slo,
    pub records: Arc<[TraceRecord]>,
    pub timing: Timing,
}

impl ReplayJob {
    /// Runs the replay on this thread.
    pub fn run(&self) -> Result<PolicyReport, String> {
        let policy = crate::policy::build(&self.policy.name, &self.policy.params, self.seed)
            .map_err(|e| e.to_string())?;
        let cfg = ReplayConfig {
            slo: self.slo,
            max_timeline_buckets: 2,
            ..ReplayConfig::default()
        };
        let pools: Vec<PoolConfig> = self.pools.iter().filter(|p| p.count > 0).cloned().collect();
        let replay = Replay::new(pools, policy, cfg)?;
        let records = arrivals(&self.records, self.timing).map(|(arrival_ns, r)| {
            Ok::<_, Infallible>(TraceRecord {
                arrival_ns,
                ..r.clone()
            })
        });
        match replay.run(records) {
            Ok(report) => Ok(report),
            Err(never) => match never {},
        }
    }
}

/// The records of a job with their arrival times, in order.
fn arrivals(
    records: &[TraceRecord],
    timing: Timing,
) -> Box<dyn Iterator<Item = (Nanos, &TraceRecord)> + '_> {
    match timing {
        Timing::Scaled(f) => Box::new(
            records
                .iter()
                .map(move |r| ((r.arrival_ns as f64 / f) as Nanos, r)),
        ),
        Timing::Isolated => Box::new(
            records
                .iter()
                .enumerate()
                .map(|(i, r)| (i as Nanos * ISOLATION_GAP_NS, r)),
        ),
        Timing::Looped {
            factor,
            min_ns,
            max_requests,
        } => {
            let n = records.len();
            let (first, last) = match (records.first(), records.last()) {
                (Some(a), Some(b)) => (a.arrival_ns, b.arrival_ns),
                _ => (0, 0),
            };
            let span = last - first;
            let period = (span + span / (n.max(2) as Nanos - 1)).max(1);
            Box::new(
                (0..)
                    .map(move |i| {
                        let r = &records[i % n];
                        let pass = (i / n) as Nanos;
                        let t = (r.arrival_ns - first) + pass * period;
                        ((t as f64 / factor) as Nanos, r, i)
                    })
                    .take_while(move |&(t, _, i)| i < n || (t < min_ns && i < max_requests))
                    .map(|(t, r, _)| (t, r)),
            )
        }
    }
}

/// Runs batches of replays and returns their results in job order.
pub trait ReplayRunner: Sync {
    fn run_all(&self, jobs: &[ReplayJob]) -> Vec<Result<PolicyReport, String>>;
}

/// One job after another on the calling thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sequential;

impl ReplayRunner for Sequential {
    fn run_all(&self, jobs: &[ReplayJob]) -> Vec<Result<PolicyReport, String>> {
        jobs.iter().map(ReplayJob::run).collect()
    }
}
