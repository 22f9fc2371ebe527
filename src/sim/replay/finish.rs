//! The end of a replay: busy time closed at the last event, and the run's raw sums
//! ([`RunTotals`]), from which the report (per-pool cost and utilisation, fleet-wide figures
//! as the merge of the pools' tallies) is rendered, alone or merged with other cells'.

use super::Replay;
use crate::sim::report::PolicyReport;
use crate::sim::totals::{PoolFacts, RunTotals};

impl Replay {
    pub(super) fn finish(self) -> PolicyReport {
        self.totals().report()
    }

    pub(super) fn totals(mut self) -> RunTotals {
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
        let busy_ns = (0..self.pools.len())
            .map(|p| {
                (0..self.engines.len())
                    .filter(|&b| self.backend_pool[b] == p)
                    .map(|b| self.busy_ns[b])
                    .sum()
            })
            .collect();
        RunTotals {
            policy: self.policy.name().to_string(),
            slo: self.cfg.slo,
            pools: PoolFacts::of(&self.pools),
            cells: 1,
            end_ns: end,
            requests: self.fleet.requests,
            rejected: std::mem::take(&mut self.fleet.rejected),
            tallies: std::mem::take(&mut self.per_pool),
            busy_ns,
            hourly: std::mem::take(&mut self.hourly),
            timeline: self.timeline,
        }
    }
}
