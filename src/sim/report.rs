//! What a replay (or a load test against the daemon) reports: per policy, overall and per
//! pool, request counts, latency percentiles from HdrHistogram, SLO attainment, goodput,
//! cost and the domestic share of tokens. The JSON keys are a contract: `dujiang load`
//! writes the same layout so `dujiang compare` can put the two side by side.

use super::cells::CellsReport;
use crate::request::{Nanos, Slo};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

mod table;

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub mean: f64,
    pub max: f64,
}

/// Quantiles at which CDF plots are drawn.
pub const CDF_QUANTILES: [f64; 21] = [
    0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995,
    0.998, 0.999, 0.9999, 1.0,
];

/// A latency distribution recorded in microseconds (3 significant digits). It serialises
/// losslessly, as its recorded buckets: `[[value, count], …]` with each bucket's highest
/// equivalent value, which records back into the same bucket, so counts, percentiles,
/// mean, min and max all survive (a shard's partial report relies on it).
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyHistogram(Histogram<u64>);

impl Serialize for LatencyHistogram {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(None)?;
        for v in self.0.iter_recorded() {
            seq.serialize_element(&(v.value_iterated_to(), v.count_at_value()))?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for LatencyHistogram {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let buckets: Vec<(u64, u64)> = Vec::deserialize(d)?;
        let mut h = LatencyHistogram::default();
        // The crate saturates a count that does not fit; a file whose counts sum past
        // u64 is corrupted, and saturated counts would give wrong percentiles silently.
        let mut total = 0u64;
        for &(value, count) in &buckets {
            total = total.checked_add(count).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "histogram bucket {value} × {count}: the counts sum past {}",
                    u64::MAX
                ))
            })?;
        }
        for (value, count) in buckets {
            h.0.record_n(value, count).map_err(|e| {
                serde::de::Error::custom(format!("histogram bucket {value} × {count}: {e:?}"))
            })?;
        }
        Ok(h)
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        let mut h = Histogram::new(3).expect("3 significant digits is valid");
        h.auto(true);
        LatencyHistogram(h)
    }
}

impl LatencyHistogram {
    pub fn record_ns(&mut self, ns: Nanos) {
        // Auto-resizing histogram: recording cannot fail.
        let _ = self.0.record((ns / 1_000).max(1));
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        let _ = self.0.add(&other.0);
    }

    /// [`merge`](Self::merge) for counts read back from files: refuses, where the crate
    /// would saturate, a total count past u64. No bucket holds more than the total, so
    /// when the total fits no bucket saturates either.
    pub fn try_merge(&mut self, other: &LatencyHistogram) -> Result<(), String> {
        if self.len().checked_add(other.len()).is_none() {
            return Err(format!(
                "{} + {} samples overflow u64",
                self.len(),
                other.len()
            ));
        }
        self.0.add(&other.0).map_err(|e| format!("{e:?}"))
    }

    fn ms_at(&self, q: f64) -> f64 {
        round3(self.0.value_at_quantile(q) as f64 / 1_000.0)
    }

    pub fn percentiles(&self) -> Percentiles {
        if self.0.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: self.ms_at(0.5),
            p90: self.ms_at(0.9),
            p99: self.ms_at(0.99),
            p999: self.ms_at(0.999),
            mean: round3(self.0.mean() / 1_000.0),
            max: round3(self.0.max() as f64 / 1_000.0),
        }
    }

    /// (milliseconds, quantile) points of the CDF.
    pub fn cdf_ms(&self) -> Vec<(f64, f64)> {
        if self.0.is_empty() {
            return Vec::new();
        }
        CDF_QUANTILES.iter().map(|&q| (self.ms_at(q), q)).collect()
    }
}

/// Rounds to three decimals so reports print (and diff) cleanly.
pub fn round3(x: f64) -> f64 {
    (x * 1_000.0).round() / 1_000.0
}

/// Everything counted for one pool, or for the whole fleet. Serialisable without loss
/// (integers and [`LatencyHistogram`]s), and [`Tally::merge`] is exact, so tallies of cells
/// replayed apart add up to the tally of all of them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub requests: u64,
    pub completed: u64,
    /// By reason; the reasons are `&'static str`s while replaying, owned once read back.
    pub rejected: BTreeMap<Cow<'static, str>, u64>,
    pub preempted: u64,
    pub ttft: LatencyHistogram,
    pub tpot: LatencyHistogram,
    pub e2e: LatencyHistogram,
    pub queue: LatencyHistogram,
    pub output_tokens: u64,
    pub slo_met: u64,
    pub domestic_tokens: u64,
    /// Prefills this pool handed off to a decode pool (prefill/decode disaggregation).
    pub handoffs: u64,
    /// Time KV took to reach this (decode) pool: hand-off to arrival, link queueing in.
    pub transfer: LatencyHistogram,
}

impl Tally {
    pub fn reject(&mut self, reason: &'static str) {
        *self.rejected.entry(Cow::Borrowed(reason)).or_default() += 1;
    }

    /// Records a completed request; returns whether it met `slo`.
    pub fn complete(
        &mut self,
        ttft: Nanos,
        e2e: Nanos,
        output_tokens: u32,
        slo: &Slo,
        domestic: bool,
    ) -> bool {
        self.completed += 1;
        self.ttft.record_ns(ttft);
        self.e2e.record_ns(e2e);
        let tpot = tpot_ns(ttft, e2e, output_tokens);
        if let Some(t) = tpot {
            self.tpot.record_ns(t);
        }
        self.output_tokens += u64::from(output_tokens);
        if domestic {
            self.domestic_tokens += u64::from(output_tokens);
        }
        let met = slo.met(ttft, tpot);
        if met {
            self.slo_met += 1;
        }
        met
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// [`merge`](Self::merge) with checked sums, for tallies read back from files (a
    /// shard's partial report): a sum that does not fit is an error naming the field, as
    /// its JSON key, instead of a panic (debug) or a wrapped count (release).
    pub fn try_merge(&mut self, other: &Tally) -> Result<(), String> {
        add("requests", &mut self.requests, other.requests)?;
        add("completed", &mut self.completed, other.completed)?;
        for (k, v) in &other.rejected {
            let mine = self.rejected.entry(k.clone()).or_default();
            add(format_args!("rejected.{k}"), mine, *v)?;
        }
        add("preempted", &mut self.preempted, other.preempted)?;
        for (field, a, b) in [
            ("ttft", &mut self.ttft, &other.ttft),
            ("tpot", &mut self.tpot, &other.tpot),
            ("e2e", &mut self.e2e, &other.e2e),
            ("queue", &mut self.queue, &other.queue),
            ("transfer", &mut self.transfer, &other.transfer),
        ] {
            a.try_merge(b).map_err(|e| format!("{field}: {e}"))?;
        }
        add(
            "output_tokens",
            &mut self.output_tokens,
            other.output_tokens,
        )?;
        add("slo_met", &mut self.slo_met, other.slo_met)?;
        add(
            "domestic_tokens",
            &mut self.domestic_tokens,
            other.domestic_tokens,
        )?;
        add("handoffs", &mut self.handoffs, other.handoffs)
    }

    /// The sum of `rejected`, or an error when it does not fit.
    pub fn try_rejected_total(&self) -> Result<u64, String> {
        let mut total = 0u64;
        for (k, v) in &self.rejected {
            add(format_args!("rejected.{k}"), &mut total, *v)?;
        }
        Ok(total)
    }

    pub fn merge(&mut self, other: &Tally) {
        self.requests += other.requests;
        self.completed += other.completed;
        for (k, v) in &other.rejected {
            *self.rejected.entry(k.clone()).or_default() += v;
        }
        self.preempted += other.preempted;
        self.ttft.merge(&other.ttft);
        self.tpot.merge(&other.tpot);
        self.e2e.merge(&other.e2e);
        self.queue.merge(&other.queue);
        self.output_tokens += other.output_tokens;
        self.slo_met += other.slo_met;
        self.domestic_tokens += other.domestic_tokens;
        self.handoffs += other.handoffs;
        self.transfer.merge(&other.transfer);
    }

    /// The report fields for this tally over `seconds` of simulated time at `cost_usd`.
    pub fn stats(&self, seconds: f64, cost_usd: f64) -> Stats {
        let per_s = |x: u64| {
            if seconds > 0.0 {
                round3(x as f64 / seconds)
            } else {
                0.0
            }
        };
        Stats {
            requests: self.requests,
            completed: self.completed,
            rejected: self.rejected_total(),
            rejected_by_reason: self
                .rejected
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            preempted: self.preempted,
            ttft_ms: self.ttft.percentiles(),
            tpot_ms: self.tpot.percentiles(),
            e2e_ms: self.e2e.percentiles(),
            queue_ms: self.queue.percentiles(),
            slo_attainment: if self.requests > 0 {
                round6(self.slo_met as f64 / self.requests as f64)
            } else {
                0.0
            },
            goodput_rps: per_s(self.slo_met),
            output_tokens: self.output_tokens,
            output_tokens_per_s: per_s(self.output_tokens),
            cost_usd: round6(cost_usd),
            cost_per_million_output_tokens_usd: if self.output_tokens > 0 {
                round6(cost_usd / self.output_tokens as f64 * 1e6)
            } else {
                0.0
            },
            domestic_token_share: if self.output_tokens > 0 {
                round6(self.domestic_tokens as f64 / self.output_tokens as f64)
            } else {
                0.0
            },
            handoffs: self.handoffs,
            kv_transfers: self.transfer.len(),
            transfer_ms: self.transfer.percentiles(),
        }
    }
}

/// `*a += b`, or an error naming `field` when the sum does not fit: for sums of counters
/// read back from files, where a corrupted number must not panic or wrap.
pub(crate) fn add<T: CheckedSum>(
    field: impl std::fmt::Display,
    a: &mut T,
    b: T,
) -> Result<(), String> {
    match a.checked_sum(b) {
        Some(s) => {
            *a = s;
            Ok(())
        }
        None => Err(format!("{field}: {a} + {b} overflows {}", T::NAME)),
    }
}

/// The unsigned integers [`add`] sums.
pub(crate) trait CheckedSum: Copy + std::fmt::Display + Sized {
    const NAME: &'static str;
    fn checked_sum(self, b: Self) -> Option<Self>;
}

macro_rules! checked_sum {
    ($($t:ty),*) => {$(
        impl CheckedSum for $t {
            const NAME: &'static str = stringify!($t);
            fn checked_sum(self, b: Self) -> Option<Self> {
                self.checked_add(b)
            }
        }
    )*};
}
checked_sum!(u32, u64, u128);

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Mean time per output token after the first; none for a one-token answer.
pub fn tpot_ns(ttft: Nanos, e2e: Nanos, output_tokens: u32) -> Option<Nanos> {
    (output_tokens > 1).then(|| e2e.saturating_sub(ttft) / u64::from(output_tokens - 1))
}

/// The numbers reported for a policy overall and for each pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub requests: u64,
    pub completed: u64,
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    pub preempted: u64,
    pub ttft_ms: Percentiles,
    pub tpot_ms: Percentiles,
    pub e2e_ms: Percentiles,
    pub queue_ms: Percentiles,
    pub slo_attainment: f64,
    pub goodput_rps: f64,
    pub output_tokens: u64,
    pub output_tokens_per_s: f64,
    pub cost_usd: f64,
    pub cost_per_million_output_tokens_usd: f64,
    pub domestic_token_share: f64,
    /// Prefill/decode disaggregation: prefills handed off, KV transfers received, and
    /// their time from hand-off to arrival (zero on a fleet without roles).
    #[serde(default)]
    pub handoffs: u64,
    #[serde(default)]
    pub kv_transfers: u64,
    #[serde(default)]
    pub transfer_ms: Percentiles,
}

/// One pool's share of a policy's run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolReport {
    pub pool: String,
    pub chip: String,
    pub backends: u32,
    pub domestic: bool,
    /// `mixed`, `prefill` or `decode`.
    #[serde(default)]
    pub role: String,
    /// Fraction of backend-time this pool's backends held work.
    pub busy_fraction: f64,
    #[serde(flatten)]
    pub stats: Stats,
}

/// Requests and latency in one slice of simulated time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelineBucket {
    pub start_s: f64,
    pub arrivals: u64,
    pub completed: u64,
    pub mean_ttft_ms: f64,
    pub mean_e2e_ms: f64,
    /// Requests routed to each pool in this slice, in `pools` order.
    pub routed_by_pool: Vec<u64>,
}

/// SLO attainment of the requests that arrived in one hour of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HourSlo {
    /// Hours from the run's time 0 (add the report's `day_start_hour` for a generated day).
    pub hour: u32,
    pub requests: u64,
    pub slo_attainment: f64,
}

/// One policy's run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyReport {
    pub policy: String,
    /// Time from the first arrival to the last completion, in simulated seconds.
    pub simulated_seconds: f64,
    #[serde(flatten)]
    pub stats: Stats,
    pub slo: SloReport,
    pub pools: Vec<PoolReport>,
    /// CDF points (ms, quantile) for plots.
    pub ttft_cdf: Vec<(f64, f64)>,
    pub e2e_cdf: Vec<(f64, f64)>,
    pub timeline_bucket_s: f64,
    pub timeline: Vec<TimelineBucket>,
    /// SLO attainment by hour of arrival (replay; empty from a load test, whose JSON keeps
    /// the replay's keys so `dujiang compare` reads both).
    #[serde(default)]
    pub hourly: Vec<HourSlo>,
}

/// The SLO a report was judged against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SloReport {
    pub ttft_ms: f64,
    pub tpot_ms: f64,
}

impl From<Slo> for SloReport {
    fn from(s: Slo) -> Self {
        SloReport {
            ttft_ms: s.ttft_ns as f64 / 1e6,
            tpot_ms: s.tpot_ns as f64 / 1e6,
        }
    }
}

/// A whole report: one entry per policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Where the numbers come from: `replay` (virtual time) or `load` (the daemon).
    pub source: String,
    pub trace: String,
    pub fleet: String,
    pub seed: u64,
    pub simulated_seconds: f64,
    pub wall_seconds: f64,
    pub policies: Vec<PolicyReport>,
    /// A fleet of identical cells (`cells` > 1 in its file): how the traffic was split
    /// and the whole fleet's size; the figures above are over all cells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cells: Option<CellsReport>,
    /// A generated day's window: the hour of the day at the run's time 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day_start_hour: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_recorded_values() {
        let mut h = LatencyHistogram::default();
        for ms in 1..=1000u64 {
            h.record_ns(ms * 1_000_000);
        }
        let p = h.percentiles();
        assert!((p.p50 - 500.0).abs() <= 1.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() <= 1.0, "{p:?}");
        assert!((p.max - 1000.0).abs() <= 1.0, "{p:?}");
    }

    #[test]
    fn histograms_and_tallies_read_back_unchanged() {
        let mut t = Tally::default();
        for i in 0..5_000u64 {
            // Microseconds to minutes, so buckets of many magnitudes are used.
            t.ttft.record_ns(1_000 + i * i * 7_919);
            t.e2e.record_ns(i * 123_456_789);
        }
        t.reject("queue_full");
        t.requests = 5_001;
        let back: Tally = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.ttft.percentiles(), t.ttft.percentiles());
        assert_eq!(back.e2e.cdf_ms(), t.e2e.cdf_ms());
        assert_eq!(back.stats(10.0, 1.0), t.stats(10.0, 1.0));
    }

    #[test]
    fn tally_counts_slo_and_tokens() {
        let mut t = Tally::default();
        let slo = Slo::default();
        t.requests = 3;
        assert!(t.complete(1_000_000_000, 2_000_000_000, 11, &slo, true));
        assert!(!t.complete(3_000_000_000, 4_000_000_000, 11, &slo, false));
        t.reject("queue_full");
        let s = t.stats(10.0, 5.0);
        assert_eq!((s.completed, s.rejected), (2, 1));
        assert!((s.slo_attainment - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(s.goodput_rps, 0.1);
        assert_eq!(s.domestic_token_share, 0.5);
        assert!((s.cost_per_million_output_tokens_usd - 5.0 / 22.0 * 1e6).abs() < 1e-3);
        assert_eq!(tpot_ns(1_000, 11_000, 11), Some(1_000));
        assert_eq!(tpot_ns(1_000, 1_000, 1), None);
    }
}
