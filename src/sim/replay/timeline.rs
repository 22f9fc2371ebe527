//! The replay's timeline: arrivals, completions, mean TTFT and E2E and requests routed
//! per pool, in fixed-width buckets of simulated time. The number of buckets is bounded:
//! when a replay runs past the last, neighbours merge and the width doubles, so memory
//! stays flat however long the trace.

use crate::request::Nanos;
use crate::sim::report::{round3, TimelineBucket};

pub(super) struct Timeline {
    pub(super) bucket_ns: Nanos,
    pub(super) buckets: Vec<TimelineAcc>,
    pub(super) max: usize,
    pub(super) pools: usize,
}

#[derive(Clone, Default)]
pub(super) struct TimelineAcc {
    pub(super) arrivals: u64,
    pub(super) completed: u64,
    pub(super) ttft_sum_ns: u128,
    pub(super) e2e_sum_ns: u128,
    pub(super) routed: Vec<u64>,
}

impl TimelineAcc {
    pub(super) fn absorb(&mut self, o: &TimelineAcc) {
        self.arrivals += o.arrivals;
        self.completed += o.completed;
        self.ttft_sum_ns += o.ttft_sum_ns;
        self.e2e_sum_ns += o.e2e_sum_ns;
        for (a, b) in self.routed.iter_mut().zip(&o.routed) {
            *a += b;
        }
    }
}

impl Timeline {
    pub(super) fn at(&mut self, t: Nanos) -> &mut TimelineAcc {
        let mut i = (t / self.bucket_ns) as usize;
        while i >= self.max {
            // Halve the resolution: merge neighbours and double the width.
            let merged: Vec<TimelineAcc> = self
                .buckets
                .chunks(2)
                .map(|pair| {
                    let mut acc = pair[0].clone();
                    if let Some(b) = pair.get(1) {
                        acc.absorb(b);
                    }
                    acc
                })
                .collect();
            self.buckets = merged;
            self.bucket_ns *= 2;
            i = (t / self.bucket_ns) as usize;
        }
        if self.buckets.len() <= i {
            let pools = self.pools;
            self.buckets.resize_with(i + 1, || TimelineAcc {
                routed: vec![0; pools],
                ..Default::default()
            });
        }
        &mut self.buckets[i]
    }

    pub(super) fn report(&self) -> Vec<TimelineBucket> {
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mean = |sum: u128| {
                    if b.completed > 0 {
                        round3(sum as f64 / b.completed as f64 / 1e6)
                    } else {
                        0.0
                    }
                };
                TimelineBucket {
                    start_s: round3((i as u64 * self.bucket_ns) as f64 / 1e9),
                    arrivals: b.arrivals,
                    completed: b.completed,
                    mean_ttft_ms: mean(b.ttft_sum_ns),
                    mean_e2e_ms: mean(b.e2e_sum_ns),
                    routed_by_pool: b.routed.clone(),
                }
            })
            .collect()
    }
}
