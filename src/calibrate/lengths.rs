//! Token-length distributions of served points. Benchmarks publish a few quantiles of
//! their prompt and output lengths (ShareGPT: p25/p50/p75 = 120/280/580), not the lengths
//! themselves, so a served point is replayed with lengths rebuilt from those quantiles:
//! log-length is taken as piecewise linear in the normal score between the stated
//! quantiles (exactly log-normal when two are given) and clipped at a stated `max`
//! (`max_tokens` of the run). The n requests take the quantiles (i + ½)/n, so the replay
//! is deterministic and its statistics move smoothly with the model's coefficients.

/// A length distribution: fixed, or quantile knots `(normal score, ln tokens)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Lengths {
    knots: Vec<(f64, f64)>,
    min: u32,
    max: u32,
}

impl Lengths {
    pub fn fixed(n: u32) -> Lengths {
        Lengths {
            knots: vec![(0.0, f64::from(n).ln())],
            min: n,
            max: n,
        }
    }

    /// `"280"` or space-separated `pNN=tokens` quantiles plus optional `min=` and `max=`,
    /// e.g. `"p25=120 p50=280 p75=580 max=512"`.
    pub fn parse(spec: &str) -> Result<Lengths, String> {
        let spec = spec.trim();
        if let Ok(n) = spec.parse::<u32>() {
            if n == 0 {
                return Err("a length must be at least 1".into());
            }
            return Ok(Lengths::fixed(n));
        }
        let mut knots = Vec::new();
        let (mut min, mut max) = (1u32, u32::MAX);
        for part in spec.split_whitespace() {
            let (key, val) = part.split_once('=').ok_or_else(|| {
                format!("`{part}`: expected pNN=tokens, min=tokens or max=tokens")
            })?;
            let tokens: u32 = val
                .parse()
                .ok()
                .filter(|&t| t >= 1)
                .ok_or_else(|| format!("`{part}`: `{val}` is not a token count ≥ 1"))?;
            match key {
                "min" => min = tokens,
                "max" => max = tokens,
                _ => {
                    let pct: f64 = key
                        .strip_prefix('p')
                        .and_then(|p| p.parse().ok())
                        .filter(|p: &f64| *p > 0.0 && *p < 100.0)
                        .ok_or_else(|| {
                            format!("`{part}`: `{key}` is not a percentile p1…p99 (or min, max)")
                        })?;
                    knots.push((normal_quantile(pct / 100.0), f64::from(tokens).ln()));
                }
            }
        }
        if knots.is_empty() {
            return Err(format!("`{spec}`: no pNN=tokens quantile"));
        }
        knots.sort_by(|a, b| a.0.total_cmp(&b.0));
        for w in knots.windows(2) {
            if w[1].0 - w[0].0 < 1e-9 {
                return Err(format!("`{spec}`: a percentile is given twice"));
            }
            if w[1].1 < w[0].1 {
                return Err(format!(
                    "`{spec}`: lengths must not fall as the percentile rises"
                ));
            }
        }
        if min > max {
            return Err(format!("`{spec}`: min is above max"));
        }
        Ok(Lengths { knots, min, max })
    }

    /// Length at quantile `u` in (0, 1).
    pub fn at(&self, u: f64) -> u32 {
        let z = normal_quantile(u);
        let k = &self.knots;
        let ln = if k.len() == 1 {
            k[0].1
        } else {
            // The segment containing z, or the nearest end segment extended.
            let i = k
                .iter()
                .rposition(|kn| kn.0 <= z)
                .unwrap_or(0)
                .min(k.len() - 2);
            let (z0, l0) = k[i];
            let (z1, l1) = k[i + 1];
            l0 + (l1 - l0) * (z - z0) / (z1 - z0)
        };
        let v = ln.exp().round();
        (v.clamp(f64::from(self.min), f64::from(self.max))) as u32
    }

    /// `n` lengths at the quantiles (i + ½)/n, in an order scrambled by a fixed stride so
    /// that consecutive requests are not sorted by length (`salt` picks the stride, so
    /// prompt and output orders differ).
    pub fn sample(&self, n: u32, salt: u32) -> Vec<u32> {
        let n = n.max(1);
        let sorted: Vec<u32> = (0..n)
            .map(|i| self.at((f64::from(i) + 0.5) / f64::from(n)))
            .collect();
        let stride = coprime_stride(n, salt);
        (0..n)
            .map(|i| sorted[((u64::from(i) * u64::from(stride)) % u64::from(n)) as usize])
            .collect()
    }

    /// Mean of `sample(n)`.
    pub fn mean(&self, n: u32) -> f64 {
        let s = self.sample(n, 0);
        s.iter().map(|&v| f64::from(v)).sum::<f64>() / s.len() as f64
    }
}

/// A stride near n·(golden ratio − 1) (shifted by `salt`) that is coprime to n, so
/// i ↦ i·stride mod n is a permutation.
fn coprime_stride(n: u32, salt: u32) -> u32 {
    if n <= 2 {
        return 1;
    }
    let mut s = ((f64::from(n) * 0.618_034) as u32 + salt) % n;
    loop {
        if s >= 1 && gcd(s, n) == 1 {
            return s;
        }
        s = (s + 1) % n;
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Inverse of the standard normal CDF (Acklam's rational approximation, relative error
/// below 1.2e-9), enough for placing quantiles.
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantile_known_values() {
        assert!(normal_quantile(0.5).abs() < 1e-9);
        assert!((normal_quantile(0.75) - 0.674_489_75).abs() < 1e-6);
        assert!((normal_quantile(0.99) - 2.326_347_87).abs() < 1e-6);
        assert!((normal_quantile(0.01) + 2.326_347_87).abs() < 1e-6);
    }

    #[test]
    fn quantiles_are_reproduced() {
        let l = Lengths::parse("p25=120 p50=280 p75=580 max=512").unwrap();
        assert_eq!(l.at(0.25), 120);
        assert_eq!(l.at(0.5), 280);
        assert_eq!(l.at(0.75), 512, "clipped at max");
        let s = l.sample(100, 0);
        let mut sorted = s.clone();
        sorted.sort_unstable();
        assert_eq!(sorted[49], 280.min(sorted[49]).max(sorted[49]));
        assert!(sorted[24] >= 115 && sorted[24] <= 125, "{}", sorted[24]);
        assert_ne!(s, sorted, "sample is scrambled");
        assert_eq!(Lengths::fixed(300).sample(5, 1), vec![300; 5]);
    }

    #[test]
    fn bad_specs_are_refused() {
        for bad in [
            "",
            "p50",
            "p50=0",
            "p100=5",
            "q50=3",
            "p25=300 p75=100",
            "p50=3 min=9 max=4",
        ] {
            assert!(Lengths::parse(bad).is_err(), "{bad}");
        }
    }
}
