//! The replay's timeline: arrivals, completions, mean TTFT and E2E and requests routed
//! per pool, in fixed-width buckets of simulated time. The number of buckets is bounded:
//! when a replay runs past the last, neighbours merge and the width doubles, so memory
//! stays flat however long the trace.

use crate::request::Nanos;
use crate::sim::report::{add, round3, TimelineBucket};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Timeline {
    pub(crate) bucket_ns: Nanos,
    pub(crate) buckets: Vec<TimelineAcc>,
    pub(crate) max: usize,
    pub(crate) pools: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct TimelineAcc {
    pub(crate) arrivals: u64,
    pub(crate) completed: u64,
    pub(crate) ttft_sum_ns: u128,
    pub(crate) e2e_sum_ns: u128,
    pub(crate) routed: Vec<u64>,
}

impl TimelineAcc {
    pub(crate) fn absorb(&mut self, o: &TimelineAcc) {
        self.arrivals += o.arrivals;
        self.completed += o.completed;
        self.ttft_sum_ns += o.ttft_sum_ns;
        self.e2e_sum_ns += o.e2e_sum_ns;
        for (a, b) in self.routed.iter_mut().zip(&o.routed) {
            *a += b;
        }
    }
}

impl TimelineAcc {
    /// [`absorb`](Self::absorb) with checked sums, for buckets read back from files.
    fn try_absorb(&mut self, o: &TimelineAcc) -> Result<(), String> {
        add("arrivals", &mut self.arrivals, o.arrivals)?;
        add("completed", &mut self.completed, o.completed)?;
        add("ttft_sum_ns", &mut self.ttft_sum_ns, o.ttft_sum_ns)?;
        add("e2e_sum_ns", &mut self.e2e_sum_ns, o.e2e_sum_ns)?;
        for (i, (a, b)) in self.routed.iter_mut().zip(&o.routed).enumerate() {
            add(format_args!("routed[{i}]"), a, *b)?;
        }
        Ok(())
    }
}

impl Timeline {
    /// Checks a timeline read back from a file against what [`merge`](Self::merge) and
    /// [`report`](Self::report) assume, so a corrupted one is an error naming the field
    /// instead of a division by zero, an endless halving or a wrapped bucket start.
    pub(crate) fn check(&self, pools: usize) -> Result<(), String> {
        if self.pools != pools {
            return Err(format!("pools: {} for a fleet of {pools}", self.pools));
        }
        if self.bucket_ns == 0 {
            return Err("bucket_ns: 0".into());
        }
        if self.max == 0 {
            return Err("max: 0".into());
        }
        if self.buckets.len() > self.max {
            return Err(format!(
                "buckets: {} of at most {} (max)",
                self.buckets.len(),
                self.max
            ));
        }
        if self.bucket_ns.checked_mul(self.max as u64).is_none() {
            return Err(format!(
                "bucket_ns: {} ns × {} buckets (max) overflows u64",
                self.bucket_ns, self.max
            ));
        }
        for (i, b) in self.buckets.iter().enumerate() {
            if b.routed.len() != pools {
                return Err(format!(
                    "buckets[{i}].routed: {} counts for {pools} pools",
                    b.routed.len()
                ));
            }
        }
        Ok(())
    }

    /// [`halve`](Self::halve) with checked sums, for timelines read back from files.
    fn try_halve(&mut self) -> Result<(), String> {
        let wider = self
            .bucket_ns
            .checked_mul(2)
            .ok_or_else(|| format!("bucket_ns: {} × 2 overflows u64", self.bucket_ns))?;
        let mut merged = Vec::with_capacity(self.buckets.len().div_ceil(2));
        for (i, pair) in self.buckets.chunks(2).enumerate() {
            let mut acc = pair[0].clone();
            if let Some(b) = pair.get(1) {
                acc.try_absorb(b)
                    .map_err(|e| format!("buckets[{}].{e}", 2 * i))?;
            }
            merged.push(acc);
        }
        self.buckets = merged;
        self.bucket_ns = wider;
        Ok(())
    }

    pub(crate) fn at(&mut self, t: Nanos) -> &mut TimelineAcc {
        let mut i = (t / self.bucket_ns) as usize;
        while i >= self.max {
            self.halve();
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

    /// Halves the resolution: merges neighbours and doubles the width.
    fn halve(&mut self) {
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
    }

    /// Adds another timeline of the same pools (another cell's), exactly: both are brought
    /// to the wider of their widths (widths are the same start width doubled, so buckets
    /// nest), added bucket by bucket, and halved again while over the bound. The result
    /// depends only on the inputs taken together, not on the order they are merged in.
    pub(crate) fn merge(&mut self, other: &Timeline) -> Result<(), String> {
        if other.pools != self.pools || other.max != self.max {
            return Err(format!(
                "timelines of {} pools in at most {} buckets and of {} in {}",
                self.pools, self.max, other.pools, other.max
            ));
        }
        // Widths nest when the wider is the narrower doubled k times; checked before
        // halving, so a corrupted width cannot halve forever or overflow.
        let (narrow, wide) = if self.bucket_ns <= other.bucket_ns {
            (self.bucket_ns, other.bucket_ns)
        } else {
            (other.bucket_ns, self.bucket_ns)
        };
        if narrow == 0 || wide % narrow != 0 || !(wide / narrow).is_power_of_two() {
            return Err(format!(
                "timeline widths {} and {} ns do not nest",
                self.bucket_ns, other.bucket_ns
            ));
        }
        let mut other = other.clone();
        while self.bucket_ns < other.bucket_ns {
            self.try_halve()?;
        }
        while other.bucket_ns < self.bucket_ns {
            other.try_halve()?;
        }
        if self.buckets.len() < other.buckets.len() {
            let pools = self.pools;
            self.buckets
                .resize_with(other.buckets.len(), || TimelineAcc {
                    routed: vec![0; pools],
                    ..Default::default()
                });
        }
        for (i, (a, b)) in self.buckets.iter_mut().zip(&other.buckets).enumerate() {
            a.try_absorb(b).map_err(|e| format!("buckets[{i}].{e}"))?;
        }
        while self.buckets.len() > self.max {
            self.try_halve()?;
        }
        Ok(())
    }

    pub(crate) fn report(&self) -> Vec<TimelineBucket> {
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
