//! Two reports side by side (`dujiang compare A.json B.json`): for each policy in both,
//! every latency percentile, SLO attainment and goodput of A and B with B's difference
//! relative to A. Typically A is a virtual-time replay and B a load test of the daemon on
//! the same trace, and the differences say how far replay predicts the daemon.

use crate::sim::{PolicyReport, Report, Stats};
use std::fmt::Write as _;

/// One compared figure.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub metric: String,
    pub a: f64,
    pub b: f64,
    /// (b − a) / a; `None` when a is 0 and b is not (no meaningful ratio).
    pub relative: Option<f64>,
}

/// (b − a) / a, with 0 for two zeros and `None` for a zero baseline.
pub fn relative(a: f64, b: f64) -> Option<f64> {
    if a == b {
        Some(0.0)
    } else if a == 0.0 {
        None
    } else {
        Some((b - a) / a)
    }
}

/// Latency percentiles (ms), SLO attainment and goodput of two stats.
pub fn rows(a: &Stats, b: &Stats) -> Vec<Row> {
    let mut out = Vec::new();
    let mut push = |metric: String, a: f64, b: f64| {
        out.push(Row {
            metric,
            a,
            b,
            relative: relative(a, b),
        })
    };
    push("requests".into(), a.requests as f64, b.requests as f64);
    push("completed".into(), a.completed as f64, b.completed as f64);
    for (name, pa, pb) in [
        ("TTFT", &a.ttft_ms, &b.ttft_ms),
        ("TPOT", &a.tpot_ms, &b.tpot_ms),
        ("E2E", &a.e2e_ms, &b.e2e_ms),
        ("queue", &a.queue_ms, &b.queue_ms),
    ] {
        for (q, va, vb) in [
            ("p50", pa.p50, pb.p50),
            ("p90", pa.p90, pb.p90),
            ("p99", pa.p99, pb.p99),
            ("p999", pa.p999, pb.p999),
        ] {
            push(format!("{name} {q} ms"), va, vb);
        }
    }
    push("SLO attainment".into(), a.slo_attainment, b.slo_attainment);
    push("goodput req/s".into(), a.goodput_rps, b.goodput_rps);
    out
}

/// Policies to compare: those named in both, in A's order. Two one-policy reports are
/// compared even when the names differ (a daemon without the Admin service reports its
/// policy as `unknown`).
pub fn pairs<'a>(a: &'a Report, b: &'a Report) -> Vec<(&'a PolicyReport, &'a PolicyReport)> {
    let named: Vec<_> = a
        .policies
        .iter()
        .filter_map(|pa| {
            b.policies
                .iter()
                .find(|pb| pb.policy == pa.policy)
                .map(|pb| (pa, pb))
        })
        .collect();
    if named.is_empty() && a.policies.len() == 1 && b.policies.len() == 1 {
        return vec![(&a.policies[0], &b.policies[0])];
    }
    named
}

fn fmt_rel(r: Option<f64>) -> String {
    match r {
        Some(r) => format!("{:+.1}%", r * 100.0),
        None => "n/a".into(),
    }
}

fn table(s: &mut String, rows: &[Row]) {
    let _ = writeln!(s, "  {:<18} {:>12} {:>12} {:>9}", "", "A", "B", "B vs A");
    for r in rows {
        let _ = writeln!(
            s,
            "  {:<18} {:>12.3} {:>12.3} {:>9}",
            r.metric,
            r.a,
            r.b,
            fmt_rel(r.relative)
        );
    }
}

/// The comparison printed by `dujiang compare`.
pub fn render(a: &Report, b: &Report) -> String {
    let mut s = String::new();
    for (tag, r) in [("A", a), ("B", b)] {
        let _ = writeln!(
            s,
            "{tag}: {} of {} on {} (seed {}), {:.1} s simulated",
            r.source, r.trace, r.fleet, r.seed, r.simulated_seconds
        );
    }
    let pairs = pairs(a, b);
    if pairs.is_empty() {
        let names = |r: &Report| {
            r.policies
                .iter()
                .map(|p| p.policy.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            s,
            "no policy is in both reports (A: {}; B: {})",
            names(a),
            names(b)
        );
        return s;
    }
    for (pa, pb) in pairs {
        let title = if pa.policy == pb.policy {
            pa.policy.clone()
        } else {
            format!("{} (A) vs {} (B)", pa.policy, pb.policy)
        };
        let _ = writeln!(s, "\npolicy {title}");
        table(&mut s, &rows(&pa.stats, &pb.stats));
        for poa in &pa.pools {
            let Some(pob) = pb.pools.iter().find(|p| p.pool == poa.pool) else {
                continue;
            };
            if poa.stats.requests == 0 && pob.stats.requests == 0 {
                continue;
            }
            let _ = writeln!(s, "  pool {} ({})", poa.pool, poa.chip);
            let key = [
                "requests",
                "TTFT p50 ms",
                "TTFT p99 ms",
                "E2E p50 ms",
                "E2E p99 ms",
            ];
            let rows: Vec<Row> = rows(&poa.stats, &pob.stats)
                .into_iter()
                .filter(|r| key.contains(&r.metric.as_str()))
                .collect();
            table(&mut s, &rows);
        }
    }
    let _ = writeln!(s, "\nB vs A = (B − A) / A");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_differences() {
        assert_eq!(relative(100.0, 110.0), Some(0.1));
        assert_eq!(relative(0.0, 0.0), Some(0.0));
        assert_eq!(relative(0.0, 3.0), None);
        assert_eq!(fmt_rel(relative(200.0, 190.0)), "-5.0%");
    }
}
