//! Two reports side by side (`dujiang compare A.json B.json`): for each policy in both,
//! every latency percentile, SLO attainment and goodput of A and B with B's difference
//! relative to A. Typically A is a virtual-time replay and B a load test of the daemon on
//! the same trace, and the differences say how far replay predicts the daemon.
//! [`excesses`] turns that into a check (`dujiang compare --max-diff PCT`): the
//! policy-level figures that differ by more than an allowed share.

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

/// The short name a figure is selected by (`--metric`): the printed name in lower case
/// without its unit, words joined by `-` ("TTFT p99 ms" → `ttft-p99`, "goodput req/s" →
/// `goodput`, "SLO attainment" → `slo-attainment`).
pub fn key(metric: &str) -> String {
    metric
        .split_whitespace()
        .filter(|w| !matches!(*w, "ms" | "req/s"))
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>()
        .join("-")
}

/// Every key [`key`] gives a policy-level figure, in printed order.
pub fn keys() -> Vec<String> {
    rows(&Stats::default(), &Stats::default())
        .iter()
        .map(|r| key(&r.metric))
        .collect()
}

/// A policy-level figure that differs by more than allowed.
#[derive(Clone, Debug, PartialEq)]
pub struct Excess {
    /// The policy as the comparison titles it (`A (A) vs B (B)` when the names differ).
    pub policy: String,
    pub row: Row,
}

impl std::fmt::Display for Excess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} ({}): A {:.3}, B {:.3}, {}",
            self.policy,
            self.row.metric,
            key(&self.row.metric),
            self.row.a,
            self.row.b,
            match self.row.relative {
                Some(r) => format!("{:+.1}%", r * 100.0),
                None => "from a zero baseline".into(),
            }
        )
    }
}

/// Why a comparison cannot be checked.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CheckError {
    #[error("unknown metric `{0}`; known: {known}", known = keys().join(", "))]
    UnknownMetric(String),
    #[error("the allowed difference must be a finite percentage ≥ 0, not {0}")]
    BadLimit(f64),
    #[error("no policy is in both reports, so nothing can be checked")]
    NothingCompared,
}

/// The policy-level figures of every compared pair whose |B − A| / A exceeds `max_pct`
/// percent, limited to the figures named in `only` (by [`key`]) unless it is empty. A zero
/// baseline exceeds any limit unless B is zero too: no ratio bounds it.
pub fn excesses(
    a: &Report,
    b: &Report,
    max_pct: f64,
    only: &[String],
) -> Result<Vec<Excess>, CheckError> {
    if !max_pct.is_finite() || max_pct < 0.0 {
        return Err(CheckError::BadLimit(max_pct));
    }
    let known = keys();
    if let Some(bad) = only.iter().find(|k| !known.contains(k)) {
        return Err(CheckError::UnknownMetric(bad.clone()));
    }
    let pairs = pairs(a, b);
    if pairs.is_empty() {
        return Err(CheckError::NothingCompared);
    }
    let mut out = Vec::new();
    for (pa, pb) in pairs {
        for row in rows(&pa.stats, &pb.stats) {
            if !only.is_empty() && !only.contains(&key(&row.metric)) {
                continue;
            }
            let over = match row.relative {
                Some(r) => r.abs() * 100.0 > max_pct,
                None => true,
            };
            if over {
                out.push(Excess {
                    policy: title(pa, pb),
                    row,
                });
            }
        }
    }
    Ok(out)
}

fn title(pa: &PolicyReport, pb: &PolicyReport) -> String {
    if pa.policy == pb.policy {
        pa.policy.clone()
    } else {
        format!("{} (A) vs {} (B)", pa.policy, pb.policy)
    }
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
        let _ = writeln!(s, "\npolicy {}", title(pa, pb));
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

    fn report(policy: &str, ttft_p99: f64, e2e_p99: f64) -> Report {
        let mut stats = Stats {
            requests: 10,
            completed: 10,
            ..Default::default()
        };
        stats.ttft_ms.p99 = ttft_p99;
        stats.e2e_ms.p99 = e2e_p99;
        Report {
            policies: vec![PolicyReport {
                policy: policy.into(),
                stats,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn keys_name_every_figure_once() {
        let k = keys();
        for want in [
            "ttft-p99",
            "e2e-p50",
            "queue-p999",
            "slo-attainment",
            "goodput",
        ] {
            assert!(k.contains(&want.to_string()), "{k:?}");
        }
        let mut unique = k.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), k.len());
    }

    #[test]
    fn excesses_name_the_figures_past_the_limit() {
        let a = report("least-work", 100.0, 1000.0);
        let b = report("least-work", 112.0, 1050.0);
        let over = excesses(&a, &b, 10.0, &[]).unwrap();
        assert_eq!(over.len(), 1, "{over:?}");
        assert_eq!(over[0].row.metric, "TTFT p99 ms");
        assert_eq!(
            over[0].to_string(),
            "least-work TTFT p99 ms (ttft-p99): A 100.000, B 112.000, +12.0%"
        );
        assert!(excesses(&a, &b, 12.5, &[]).unwrap().is_empty());
        assert!(excesses(&a, &b, 1.0, &["e2e-p99".into()]).unwrap().len() == 1);
        assert!(excesses(&a, &b, 5.0, &["e2e-p99".into()])
            .unwrap()
            .is_empty());
        // A zero baseline bounds nothing.
        let zero = report("least-work", 0.0, 1000.0);
        let over = excesses(&zero, &b, 1000.0, &["ttft-p99".into()]).unwrap();
        assert_eq!(over.len(), 1);
        assert!(over[0].to_string().ends_with("from a zero baseline"));
        assert_eq!(
            excesses(&a, &b, 10.0, &["ttft-p98".into()]),
            Err(CheckError::UnknownMetric("ttft-p98".into()))
        );
        for bad in [f64::NAN, f64::INFINITY, -1.0] {
            assert!(matches!(
                excesses(&a, &b, bad, &[]),
                Err(CheckError::BadLimit(_))
            ));
        }
        let mut two = report("round-robin", 1.0, 1.0);
        two.policies
            .push(report("random", 1.0, 1.0).policies.remove(0));
        assert_eq!(
            excesses(&a, &two, 10.0, &[]),
            Err(CheckError::NothingCompared)
        );
    }
}
