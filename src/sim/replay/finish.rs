//! The end of a replay: busy time closed at the last event, per-pool reports with cost
//! and utilisation, and the fleet-wide figures as the merge of the pools' tallies.

use super::Replay;
use crate::sim::report::{round3, PolicyReport, PoolReport, SloReport, Tally};

impl Replay {
    pub(super) fn finish(mut self) -> PolicyReport {
        let end = self.now;
        for b in 0..self.engines.len() {
            if let Some(since) = self.busy_since[b].take() {
                self.busy_ns[b] += u128::from(end.saturating_sub(since));
            }
        }
        debug_assert!(
            self.in_flight.is_empty(),
            "replay ended with requests in flight"
        );
        let seconds = end as f64 / 1e9;
        let hours = seconds / 3600.0;
        let mut pools = Vec::new();
        let mut total_cost = 0.0;
        for (p, pc) in self.pools.iter().enumerate() {
            let cost = pc.cost_per_hour_usd() * hours;
            total_cost += cost;
            let busy: u128 = (0..self.engines.len())
                .filter(|&b| self.backend_pool[b] == p)
                .map(|b| self.busy_ns[b])
                .sum();
            let capacity = f64::from(pc.count) * end as f64;
            pools.push(PoolReport {
                pool: pc.name.clone(),
                chip: pc.perf.chip.id.clone(),
                backends: pc.count,
                domestic: pc.domestic(),
                role: pc.role.as_str().to_string(),
                busy_fraction: if capacity > 0.0 {
                    round3(busy as f64 / capacity)
                } else {
                    0.0
                },
                stats: self.per_pool[p].stats(seconds, cost),
            });
        }
        // Completions are recorded per pool only (half the histogram work on the hot
        // path); the fleet-wide figures are their merge, plus what never reached a pool.
        let mut overall = Tally::default();
        for t in &self.per_pool {
            overall.merge(t);
        }
        overall.requests = self.fleet.requests;
        overall.rejected = std::mem::take(&mut self.fleet.rejected);
        PolicyReport {
            policy: self.policy.name().to_string(),
            simulated_seconds: round3(seconds),
            stats: overall.stats(seconds, total_cost),
            slo: SloReport::from(self.cfg.slo),
            pools,
            ttft_cdf: overall.ttft.cdf_ms(),
            e2e_cdf: overall.e2e.cdf_ms(),
            timeline_bucket_s: self.timeline.bucket_ns as f64 / 1e9,
            timeline: self.timeline.report(),
        }
    }
}
