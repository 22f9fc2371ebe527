//! One-pass summary of a trace: how many requests over how long, how bursty (the
//! coefficient of variation of inter-arrival gaps: 1 for Poisson, above 1 for bursts), and
//! the spread of prompt and output lengths. Constant memory: lengths go into HDR
//! histograms (3 significant digits, so percentiles are within 0.1 %), gaps into a running
//! mean and variance.

use super::reader::{ReadCounts, TraceReader};
use super::{Format, TraceError, TraceRecord};
use crate::request::{Nanos, NANOS_PER_SEC};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::io::BufRead;

/// Percentiles of a token-length distribution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LengthStats {
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

/// A trace's summary; the JSON form (`dujiang trace stats --json`) uses these field names.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TraceStats {
    pub format: String,
    pub requests: u64,
    /// Last arrival minus first, in seconds.
    pub duration_s: f64,
    /// `(requests - 1) / duration`, the reciprocal of the mean gap; `None` without a gap.
    pub mean_rate_rps: Option<f64>,
    /// Standard deviation over mean of the inter-arrival gaps; `None` without two gaps.
    pub interarrival_cv: Option<f64>,
    pub input_tokens: LengthStats,
    pub output_tokens: LengthStats,
    pub prefix_hashed_requests: u64,
    pub batch_requests: u64,
    /// Requests the trace marks as failed (BurstGPT), skipped.
    pub skipped_failed: u64,
    /// Broken lines skipped (only when reading with `OnError::Skip`).
    pub skipped_malformed: u64,
    /// Arrivals clamped to the one before.
    pub out_of_order: u64,
}

/// Accumulates records one at a time.
pub struct StatsBuilder {
    requests: u64,
    first: Option<Nanos>,
    last: Nanos,
    gaps: u64,
    gap_mean: f64,
    gap_m2: f64,
    input: Histogram<u64>,
    output: Histogram<u64>,
    input_sum: u128,
    output_sum: u128,
    // Exact maxima: the histograms round a maximum up to its bucket's edge.
    input_max: u32,
    output_max: u32,
    hashed: u64,
    batch: u64,
}

impl Default for StatsBuilder {
    fn default() -> Self {
        StatsBuilder {
            requests: 0,
            first: None,
            last: 0,
            gaps: 0,
            gap_mean: 0.0,
            gap_m2: 0.0,
            input: token_histogram(),
            output: token_histogram(),
            input_sum: 0,
            output_sum: 0,
            input_max: 0,
            output_max: 0,
            hashed: 0,
            batch: 0,
        }
    }
}

/// Covers every u32 token count at 3 significant digits (about 0.4 MB).
fn token_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, u64::from(u32::MAX), 3).expect("valid bounds and precision")
}

impl StatsBuilder {
    pub fn add(&mut self, rec: &TraceRecord) {
        if self.first.is_some() {
            // Welford's running variance: stable over ten million gaps.
            let gap = rec.arrival_ns.saturating_sub(self.last) as f64;
            self.gaps += 1;
            let d = gap - self.gap_mean;
            self.gap_mean += d / self.gaps as f64;
            self.gap_m2 += d * (gap - self.gap_mean);
        } else {
            self.first = Some(rec.arrival_ns);
        }
        self.last = rec.arrival_ns;
        self.requests += 1;
        self.input.saturating_record(u64::from(rec.prompt_tokens));
        self.output.saturating_record(u64::from(rec.output_tokens));
        self.input_sum += u128::from(rec.prompt_tokens);
        self.output_sum += u128::from(rec.output_tokens);
        self.input_max = self.input_max.max(rec.prompt_tokens);
        self.output_max = self.output_max.max(rec.output_tokens);
        self.hashed += u64::from(!rec.hash_ids.is_empty());
        self.batch += u64::from(rec.priority == crate::request::Priority::Batch);
    }

    pub fn finish(&self, format: Format, counts: Option<ReadCounts>) -> TraceStats {
        let duration_ns = self.first.map_or(0, |f| self.last - f);
        let duration_s = duration_ns as f64 / NANOS_PER_SEC as f64;
        let lengths = |h: &Histogram<u64>, sum: u128, max: u32| {
            if self.requests == 0 {
                return LengthStats::default();
            }
            LengthStats {
                mean: sum as f64 / self.requests as f64,
                // A bucket's upper edge may pass the true maximum; a percentile must not.
                p50: h.value_at_quantile(0.50).min(u64::from(max)),
                p90: h.value_at_quantile(0.90).min(u64::from(max)),
                p99: h.value_at_quantile(0.99).min(u64::from(max)),
                max: u64::from(max),
            }
        };
        let counts = counts.unwrap_or_default();
        TraceStats {
            format: format.to_string(),
            requests: self.requests,
            duration_s,
            mean_rate_rps: (duration_ns > 0).then(|| self.gaps as f64 / duration_s),
            interarrival_cv: (self.gaps >= 2 && self.gap_mean > 0.0)
                .then(|| (self.gap_m2 / self.gaps as f64).sqrt() / self.gap_mean),
            input_tokens: lengths(&self.input, self.input_sum, self.input_max),
            output_tokens: lengths(&self.output, self.output_sum, self.output_max),
            prefix_hashed_requests: self.hashed,
            batch_requests: self.batch,
            skipped_failed: counts.failed,
            skipped_malformed: counts.malformed,
            out_of_order: counts.out_of_order,
        }
    }
}

impl TraceStats {
    /// Summarises records from a generator or a transformed stream (no skip counts).
    pub fn of_records<'a>(records: impl IntoIterator<Item = &'a TraceRecord>) -> TraceStats {
        let mut b = StatsBuilder::default();
        records.into_iter().for_each(|r| b.add(r));
        b.finish(Format::Jsonl, None)
    }

    /// Reads a whole trace and summarises it with the reader's skip counts. Stops at the
    /// first error the reader yields.
    pub fn of_reader<R: BufRead>(reader: &mut TraceReader<R>) -> Result<TraceStats, TraceError> {
        let mut b = StatsBuilder::default();
        for rec in reader.by_ref() {
            b.add(&rec?);
        }
        Ok(b.finish(reader.format(), Some(reader.counts())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evenly_spaced_trace_has_zero_cv() {
        let recs: Vec<TraceRecord> = (0..11)
            .map(|i| TraceRecord {
                arrival_ns: i * 500_000_000,
                prompt_tokens: (i as u32 + 1) * 100,
                output_tokens: 10,
                ..TraceRecord::default()
            })
            .collect();
        let s = TraceStats::of_records(&recs);
        assert_eq!(s.requests, 11);
        assert_eq!(s.duration_s, 5.0);
        assert_eq!(s.mean_rate_rps, Some(2.0));
        assert_eq!(s.interarrival_cv, Some(0.0));
        assert_eq!(s.input_tokens.max, 1100);
        assert_eq!(s.input_tokens.p50, 600);
        assert_eq!(s.input_tokens.mean, 600.0);
        assert_eq!(s.output_tokens.p99, 10);
    }

    #[test]
    fn alternating_gaps_have_the_expected_cv() {
        // Gaps 1, 3, 1, 3, …: mean 2, sd 1, CV 0.5.
        let mut t = 0;
        let recs: Vec<TraceRecord> = (0..101)
            .map(|i| {
                let r = TraceRecord {
                    arrival_ns: t,
                    ..TraceRecord::default()
                };
                t += if i % 2 == 0 { 1_000 } else { 3_000 };
                r
            })
            .collect();
        let cv = TraceStats::of_records(&recs).interarrival_cv.unwrap();
        assert!((cv - 0.5).abs() < 1e-9, "{cv}");
    }

    #[test]
    fn empty_trace_has_no_rate() {
        let s = TraceStats::of_records(&[]);
        assert_eq!(s.requests, 0);
        assert_eq!(s.mean_rate_rps, None);
        assert_eq!(s.interarrival_cv, None);
    }
}
