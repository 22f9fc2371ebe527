//! The traffic a plan must carry, cut into request-size buckets: quantiles of prompt length,
//! then quantiles of output length within each prompt class. Chips differ most by size (a long prompt is a short wait
//! on compute-rich chips and a long one on bandwidth-rich ones; long answers are the
//! reverse), so the mix is solved per bucket. Each bucket keeps its load (requests per
//! second over the whole trace) and a probe sub-trace (its first requests, in their own
//! arrival pattern) on which single-backend capacity is measured.

use crate::request::NANOS_PER_SEC;
use crate::trace::TraceRecord;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One request-size bucket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Prompt tokens, inclusive range.
    pub prompt_tokens: (u32, u32),
    /// Output tokens, inclusive range.
    pub output_tokens: (u32, u32),
    pub requests: u64,
    /// Mean arrival rate over the whole trace.
    pub rate_rps: f64,
    /// The first requests of the bucket, arrivals rebased to 0.
    #[serde(skip)]
    pub probe: Arc<[TraceRecord]>,
    /// Mean arrival rate of the probe sub-trace as recorded.
    #[serde(skip)]
    pub probe_rate_rps: f64,
}

/// A trace in memory, and its buckets.
#[derive(Clone, Debug)]
pub struct Workload {
    pub records: Arc<[TraceRecord]>,
    pub buckets: Vec<Bucket>,
    pub duration_s: f64,
}

/// Upper edges splitting `values` into `parts` quantile bins (duplicates merged).
fn quantile_edges(mut values: Vec<u32>, parts: usize) -> Vec<u32> {
    values.sort_unstable();
    let mut edges: Vec<u32> = (1..parts)
        .map(|i| values[(i * values.len() / parts).min(values.len() - 1)])
        .collect();
    edges.dedup();
    // A bin whose upper edge is the maximum would leave the last bin empty.
    let max = *values.last().expect("non-empty");
    edges.retain(|&e| e < max);
    edges
}

fn bin(edges: &[u32], v: u32) -> usize {
    edges.partition_point(|&e| e < v)
}

fn range(edges: &[u32], i: usize, min: u32, max: u32) -> (u32, u32) {
    let lo = if i == 0 { min } else { edges[i - 1] + 1 };
    let hi = edges.get(i).copied().unwrap_or(max);
    (lo, hi)
}

fn min_max(values: impl Iterator<Item = u32>) -> (u32, u32) {
    values.fold((u32::MAX, 0), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

fn rate(records: &[TraceRecord]) -> f64 {
    let span_ns = match (records.first(), records.last()) {
        (Some(a), Some(b)) => b.arrival_ns.saturating_sub(a.arrival_ns),
        _ => 0,
    };
    if span_ns == 0 || records.len() < 2 {
        // Everything at once: call it one second's worth.
        records.len() as f64
    } else {
        (records.len() - 1) as f64 / (span_ns as f64 / NANOS_PER_SEC as f64)
    }
}

impl Workload {
    /// Buckets `records` (in arrival order) into `per_dim` × `per_dim` size classes and
    /// keeps up to `probe_requests` of each as its probe.
    pub fn new(
        records: Vec<TraceRecord>,
        per_dim: usize,
        probe_requests: usize,
    ) -> Result<Workload, String> {
        if records.len() < 2 {
            return Err(format!(
                "the trace has {} request(s); planning needs at least two",
                records.len()
            ));
        }
        let per_dim = per_dim.max(1);
        let duration_ns = records[records.len() - 1]
            .arrival_ns
            .saturating_sub(records[0].arrival_ns);
        if duration_ns == 0 {
            return Err(
                "every request of the trace arrives at the same instant; planning needs a rate"
                    .into(),
            );
        }
        let duration_s = duration_ns as f64 / NANOS_PER_SEC as f64;
        // Prompt classes first, then output classes within each prompt class (conditional
        // quantiles), so every bucket holds about 1/per_dim² of the requests even though
        // prompt and output lengths are correlated: a near-empty bucket would have no
        // meaningful rate to measure.
        let prompts: Vec<u32> = records.iter().map(|r| r.prompt_tokens).collect();
        let (pmin, pmax) = min_max(prompts.iter().copied());
        let pedges = quantile_edges(prompts, per_dim);
        let rows = pedges.len() + 1;
        let mut row_outputs: Vec<Vec<u32>> = vec![Vec::new(); rows];
        for r in &records {
            row_outputs[bin(&pedges, r.prompt_tokens)].push(r.output_tokens);
        }
        let row_ranges: Vec<(u32, u32)> = row_outputs
            .iter()
            .map(|o| min_max(o.iter().copied()))
            .collect();
        let oedges: Vec<Vec<u32>> = row_outputs
            .into_iter()
            .map(|o| {
                if o.is_empty() {
                    Vec::new()
                } else {
                    quantile_edges(o, per_dim)
                }
            })
            .collect();
        let cols = per_dim;
        let mut members: Vec<Vec<TraceRecord>> = vec![Vec::new(); rows * cols];
        let mut counts = vec![0u64; members.len()];
        for r in &records {
            let row = bin(&pedges, r.prompt_tokens);
            let i = row * cols + bin(&oedges[row], r.output_tokens);
            counts[i] += 1;
            if members[i].len() < probe_requests.max(1) {
                members[i].push(r.clone());
            }
        }
        let mut buckets = Vec::new();
        for (i, probe) in members.into_iter().enumerate() {
            if probe.is_empty() {
                continue;
            }
            let origin = probe[0].arrival_ns;
            let probe: Vec<TraceRecord> = probe
                .into_iter()
                .map(|r| TraceRecord {
                    arrival_ns: r.arrival_ns - origin,
                    ..r
                })
                .collect();
            buckets.push(Bucket {
                prompt_tokens: range(&pedges, i / cols, pmin, pmax),
                output_tokens: {
                    let row = i / cols;
                    let (lo, hi) = row_ranges[row];
                    range(&oedges[row], i % cols, lo, hi)
                },
                requests: counts[i],
                rate_rps: counts[i] as f64 / duration_s,
                probe_rate_rps: rate(&probe),
                probe: probe.into(),
            });
        }
        Ok(Workload {
            records: records.into(),
            buckets,
            duration_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(t_s: u64, p: u32, o: u32) -> TraceRecord {
        TraceRecord {
            arrival_ns: t_s * NANOS_PER_SEC,
            prompt_tokens: p,
            output_tokens: o,
            ..TraceRecord::default()
        }
    }

    #[test]
    fn buckets_cover_every_request_once() {
        let records: Vec<TraceRecord> = (0..100)
            .map(|i| rec(i, 100 + (i as u32 * 37) % 1000, 10 + (i as u32 * 53) % 300))
            .collect();
        let w = Workload::new(records, 2, 10).unwrap();
        assert_eq!(w.buckets.iter().map(|b| b.requests).sum::<u64>(), 100);
        assert!(w.buckets.len() >= 3, "{}", w.buckets.len());
        assert!((w.duration_s - 99.0).abs() < 1e-9);
        for b in &w.buckets {
            assert!(b.probe.len() <= 10 && b.probe[0].arrival_ns == 0);
            assert!(b.probe.iter().all(|r| {
                (b.prompt_tokens.0..=b.prompt_tokens.1).contains(&r.prompt_tokens)
                    && (b.output_tokens.0..=b.output_tokens.1).contains(&r.output_tokens)
            }));
        }
    }

    #[test]
    fn identical_sizes_make_one_bucket_and_short_traces_fail() {
        let w = Workload::new((0..10).map(|i| rec(i, 500, 50)).collect(), 3, 100).unwrap();
        assert_eq!(w.buckets.len(), 1);
        assert!((w.buckets[0].rate_rps - 10.0 / 9.0).abs() < 1e-9);
        assert!(Workload::new(vec![rec(0, 1, 1)], 3, 10).is_err());
    }
}
