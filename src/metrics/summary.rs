//! Exact per-pool latency percentiles (HdrHistogram) for the Admin `GetStats` call, kept
//! beside the Prometheus histograms, whose buckets only bound a percentile.

use hdrhistogram::Histogram as Hdr;
use parking_lot::Mutex;

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

    /// [`LatencySummary::record_inter_token`] of gaps given as (gap, how many times).
    pub fn record_inter_token_runs(&self, runs: &[(u64, u64)]) {
        let mut g = self.inner.lock();
        for &(gap, count) in runs {
            g.inter_token.saturating_record_n(gap, count);
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
