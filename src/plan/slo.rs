//! The latency objective a plan must meet, as written on the command line:
//! `ttft_p99<=2s,tpot_p99<=100ms` plus an attainment (the share of requests that must
//! meet every per-request bound). A replay passes when its attainment reaches the target
//! and every stated percentile is within its bound.

use crate::request::{Nanos, Slo, NANOS_PER_MS};
use crate::sim::report::{Percentiles, PolicyReport};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A latency measured per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Ttft,
    Tpot,
    E2e,
}

/// A percentile that reports carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantile {
    P50,
    P90,
    P99,
    P999,
}

impl Quantile {
    fn of(self, p: &Percentiles) -> f64 {
        match self {
            Quantile::P50 => p.p50,
            Quantile::P90 => p.p90,
            Quantile::P99 => p.p99,
            Quantile::P999 => p.p999,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Quantile::P50 => "p50",
            Quantile::P90 => "p90",
            Quantile::P99 => "p99",
            Quantile::P999 => "p999",
        }
    }
}

impl Metric {
    fn of(self, r: &PolicyReport) -> Percentiles {
        match self {
            Metric::Ttft => r.stats.ttft_ms,
            Metric::Tpot => r.stats.tpot_ms,
            Metric::E2e => r.stats.e2e_ms,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Metric::Ttft => "ttft",
            Metric::Tpot => "tpot",
            Metric::E2e => "e2e",
        }
    }
}

/// `metric_quantile <= ms`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bound {
    pub metric: Metric,
    pub quantile: Quantile,
    pub ms: f64,
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}_{}<={}ms",
            self.metric.as_str(),
            self.quantile.as_str(),
            self.ms
        )
    }
}

/// The bounds and the attainment target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SloSpec {
    pub bounds: Vec<Bound>,
    /// Share of requests (0 … 1] that must meet the per-request TTFT and TPOT bounds.
    pub attainment: f64,
}

/// The default objective: TTFT p99 ≤ 2 s, TPOT p99 ≤ 100 ms (the chat SLO used throughout).
pub const DEFAULT_SLO: &str = "ttft_p99<=2s,tpot_p99<=100ms";

fn parse_duration_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("us").or_else(|| s.strip_suffix("µs")) {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e3)
    } else {
        return None;
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v > 0.0).then_some(v * scale)
}

impl SloSpec {
    /// Parses `ttft_p99<=2s,tpot_p99<=100ms`; errors name the part that is wrong.
    pub fn parse(text: &str, attainment: f64) -> Result<SloSpec, String> {
        if !(attainment > 0.0 && attainment <= 1.0) {
            return Err(format!(
                "attainment must be in (0, 1], got {attainment} (0.99 = 99% of requests)"
            ));
        }
        let mut bounds = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = |why: &str| {
                format!(
                    "bad SLO term `{part}`: {why} (expected e.g. `ttft_p99<=2s`, metrics ttft/tpot/e2e, percentiles p50/p90/p99/p999, units us/ms/s)"
                )
            };
            let (lhs, rhs) = part.split_once("<=").ok_or_else(|| bad("no `<=`"))?;
            let (metric, quantile) = lhs
                .trim()
                .split_once('_')
                .ok_or_else(|| bad("left side is not metric_percentile"))?;
            let metric = match metric {
                "ttft" => Metric::Ttft,
                "tpot" => Metric::Tpot,
                "e2e" => Metric::E2e,
                _ => return Err(bad(&format!("unknown metric `{metric}`"))),
            };
            let quantile = match quantile {
                "p50" => Quantile::P50,
                "p90" => Quantile::P90,
                "p99" => Quantile::P99,
                "p999" => Quantile::P999,
                _ => return Err(bad(&format!("unknown percentile `{quantile}`"))),
            };
            let ms = parse_duration_ms(rhs)
                .ok_or_else(|| bad(&format!("`{}` is not a positive duration", rhs.trim())))?;
            // Two bounds on one percentile: only the tighter would count, so the other is
            // a typo or a leftover.
            if bounds
                .iter()
                .any(|b: &Bound| b.metric == metric && b.quantile == quantile)
            {
                return Err(bad(&format!(
                    "`{}` is bounded twice; give one bound per metric and percentile",
                    lhs.trim()
                )));
            }
            bounds.push(Bound {
                metric,
                quantile,
                ms,
            });
        }
        if bounds.is_empty() {
            return Err("the SLO names no bound (expected e.g. `ttft_p99<=2s`)".into());
        }
        Ok(SloSpec { bounds, attainment })
    }

    /// The per-request objective replays judge attainment by: the tightest TTFT and TPOT
    /// bounds given (no bound on a metric the SLO does not name).
    pub fn request_slo(&self) -> Slo {
        let tightest = |m: Metric| -> Nanos {
            self.bounds
                .iter()
                .filter(|b| b.metric == m)
                .map(|b| (b.ms * NANOS_PER_MS as f64) as Nanos)
                .min()
                .unwrap_or(Nanos::MAX)
        };
        Slo {
            ttft_ns: tightest(Metric::Ttft),
            tpot_ns: tightest(Metric::Tpot),
        }
    }

    /// How far a replay is from passing: 0 when it passes; otherwise the missing share of
    /// attainment plus a small weight per bound exceeded (relative excess), so repairs
    /// that shrink either count as progress.
    pub fn deficit(&self, r: &PolicyReport) -> f64 {
        let mut d = (self.attainment - r.stats.slo_attainment).max(0.0);
        for b in &self.bounds {
            let v = b.quantile.of(&b.metric.of(r));
            if v > b.ms {
                d += 0.01 * (v / b.ms - 1.0);
            }
        }
        d
    }

    pub fn meets(&self, r: &PolicyReport) -> bool {
        self.deficit(r) == 0.0
    }
}

impl fmt::Display for SloSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let terms: Vec<String> = self.bounds.iter().map(Bound::to_string).collect();
        write!(
            f,
            "{} at {}% attainment",
            terms.join(","),
            self.attainment * 100.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_default_and_derives_the_request_slo() {
        let s = SloSpec::parse(DEFAULT_SLO, 0.99).unwrap();
        assert_eq!(s.bounds.len(), 2);
        assert_eq!(s.request_slo(), Slo::default());
        let s = SloSpec::parse("e2e_p50<=30s, ttft_p90<=500ms,ttft_p99<=1.5s", 0.9).unwrap();
        assert_eq!(s.request_slo().ttft_ns, 500 * NANOS_PER_MS);
        assert_eq!(s.request_slo().tpot_ns, Nanos::MAX);
    }

    #[test]
    fn errors_name_the_bad_term() {
        for (text, needle) in [
            ("ttft_p99<2s", "no `<=`"),
            ("latency_p99<=2s", "unknown metric `latency`"),
            ("ttft_p95<=2s", "unknown percentile `p95`"),
            ("ttft_p99<=2", "not a positive duration"),
            ("", "names no bound"),
            (
                "ttft_p99<=1s, tpot_p99<=90ms,ttft_p99<=2s",
                "bad SLO term `ttft_p99<=2s`: `ttft_p99` is bounded twice",
            ),
        ] {
            let err = SloSpec::parse(text, 0.99).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
        assert!(SloSpec::parse(DEFAULT_SLO, 1.5).is_err());
        // Two percentiles of one metric are two bounds.
        assert!(SloSpec::parse("ttft_p50<=1s,ttft_p99<=2s", 0.99).is_ok());
    }

    #[test]
    fn deficit_counts_attainment_and_bounds() {
        let s = SloSpec::parse("ttft_p99<=1s", 0.99).unwrap();
        let mut r = PolicyReport::default();
        r.stats.slo_attainment = 0.995;
        r.stats.ttft_ms.p99 = 900.0;
        assert!(s.meets(&r));
        r.stats.ttft_ms.p99 = 1500.0;
        assert!((s.deficit(&r) - 0.005).abs() < 1e-12);
        r.stats.slo_attainment = 0.9;
        assert!(s.deficit(&r) > 0.09);
    }
}
