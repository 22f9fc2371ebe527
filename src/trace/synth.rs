//! Seeded synthetic traffic: Poisson arrivals, bursty arrivals (Gamma-distributed gaps with
//! a chosen coefficient of variation), and a 24-hour chat profile (evening peak, night
//! trough), with lognormal prompt and output lengths, optional shared prompt prefixes and
//! a share of batch-priority requests. A generator is an endless iterator of records; the
//! same config and seed give the same records on every machine (`StdRng` is ChaCha12).

use super::TraceRecord;
use crate::request::{Nanos, Priority, NANOS_PER_SEC};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp1, Gamma, LogNormal};

/// How arrivals are spaced. The mean rate is `SynthConfig::rate_rps` in every case.
#[derive(Clone, Debug, PartialEq)]
pub enum ArrivalProcess {
    /// Exponential gaps: memoryless, CV 1.
    Poisson,
    /// Gamma gaps with this coefficient of variation (> 1 is burstier than Poisson:
    /// clusters of requests separated by lulls; < 1 is more regular).
    Gamma { cv: f64 },
    /// A non-homogeneous Poisson process following a daily profile; the rate is the
    /// daily mean, so traces shorter than a day do not average to it.
    Diurnal(DiurnalProfile),
}

/// Relative request rate by hour of day, interpolated linearly between whole hours.
#[derive(Clone, Debug, PartialEq)]
pub struct DiurnalProfile {
    /// Relative rate at each whole hour 00:00 … 23:00; any positive scale (the generator
    /// divides by the mean).
    pub hourly: [f64; 24],
    /// Hour of day at which the trace starts (0 = midnight).
    pub start_hour: f64,
}

impl Default for DiurnalProfile {
    /// A consumer chat day: quiet from 02:00 to 06:00 (trough at 04:00), a morning rise, a
    /// working-day plateau, and the peak at 21:00, five times the trough. This is a shape
    /// assumption modelled on published descriptions of consumer chatbot traffic, not a
    /// fit to a public trace (none public covers a full consumer day with time of day).
    fn default() -> Self {
        DiurnalProfile {
            hourly: [
                0.55, 0.40, 0.30, 0.24, 0.20, 0.22, 0.30, 0.45, 0.60, 0.72, 0.80, 0.82, //
                0.75, 0.78, 0.82, 0.84, 0.85, 0.88, 0.92, 0.96, 0.99, 1.00, 0.90, 0.72,
            ],
            start_hour: 0.0,
        }
    }
}

impl DiurnalProfile {
    /// Rate at `hour` (0 ≤ hour < 24, wraps) relative to the daily mean.
    pub fn relative_rate(&self, hour: f64) -> f64 {
        let h = hour.rem_euclid(24.0);
        let i = h.floor() as usize % 24;
        let frac = h - h.floor();
        let v = self.hourly[i] + frac * (self.hourly[(i + 1) % 24] - self.hourly[i]);
        // The mean of a periodic piecewise-linear curve is the mean of its nodes.
        v / self.mean()
    }

    /// The whole hour of the day `h` (00 … 23) whose hour `[h, h+1)` carries the most
    /// traffic under the curve (the mean of its two end nodes, as the curve is linear
    /// between them); the earliest on a tie. With the default curve, 20:00 (20:00–21:00
    /// holds 0.995 of the peak node's rate; 21:00–22:00 0.95).
    pub fn busiest_hour(&self) -> u32 {
        let load = |h: usize| self.hourly[h] + self.hourly[(h + 1) % 24];
        (0..24).fold(0, |best, h| if load(h) > load(best) { h } else { best }) as u32
    }

    /// Highest hourly rate over lowest.
    pub fn peak_to_trough(&self) -> f64 {
        let max = self.hourly.iter().cloned().fold(f64::MIN, f64::max);
        let min = self.hourly.iter().cloned().fold(f64::MAX, f64::min);
        max / min
    }

    fn mean(&self) -> f64 {
        self.hourly.iter().sum::<f64>() / 24.0
    }

    /// Highest rate relative to the daily mean (the bounding rate for thinning).
    pub(super) fn max_relative(&self) -> f64 {
        self.hourly.iter().cloned().fold(f64::MIN, f64::max) / self.mean()
    }
}

/// A token-length distribution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LengthDist {
    Fixed(u32),
    /// `exp(N(mu, sigma²))`, rounded and clamped to `[min, max]`; the median is `exp(mu)`.
    LogNormal {
        mu: f64,
        sigma: f64,
        min: u32,
        max: u32,
    },
}

impl LengthDist {
    /// Prompt lengths of the Azure LLM inference trace 2023, conversation
    /// (`AzureLLMInferenceTrace_conv.csv`, 19,366 requests; Patel et al., "Splitwise",
    /// ISCA 2024, CC BY 4.0): mean and population standard deviation of ln(ContextTokens)
    /// are 6.6333 and 0.9852 (median e^6.6333 ≈ 760 tokens; the data's median is 1,020,
    /// its maximum 14,050 — the real distribution is lighter-tailed than a lognormal on
    /// the left). Computed by us from the full file.
    pub const AZURE_CONV_INPUT: LengthDist = LengthDist::LogNormal {
        mu: 6.6333,
        sigma: 0.9852,
        min: 1,
        max: 32_768,
    };

    /// Output lengths of the same trace: ln(GeneratedTokens) has mean 5.0190 and standard
    /// deviation 0.8590 (median e^5.019 ≈ 151; the data's median is 129, maximum 1,000).
    pub const AZURE_CONV_OUTPUT: LengthDist = LengthDist::LogNormal {
        mu: 5.0190,
        sigma: 0.8590,
        min: 1,
        max: 4_096,
    };

    pub(super) fn sampler(self) -> Result<LengthSampler, String> {
        match self {
            LengthDist::Fixed(n) => Ok(LengthSampler::Fixed(n)),
            LengthDist::LogNormal {
                mu,
                sigma,
                min,
                max,
            } => {
                if min > max {
                    return Err(format!("length range [{min}, {max}] is empty"));
                }
                let d = LogNormal::new(mu, sigma)
                    .map_err(|e| format!("bad lognormal (mu {mu}, sigma {sigma}): {e}"))?;
                Ok(LengthSampler::LogNormal(d, min, max))
            }
        }
    }
}

/// A [`LengthDist`] ready to draw from (the lognormal's constants precomputed).
pub(super) enum LengthSampler {
    Fixed(u32),
    LogNormal(LogNormal<f64>, u32, u32),
}

impl LengthSampler {
    pub(super) fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u32 {
        match self {
            LengthSampler::Fixed(n) => *n,
            LengthSampler::LogNormal(d, min, max) => {
                let v = d.sample(rng).round();
                v.clamp(f64::from(*min), f64::from(*max)) as u32
            }
        }
    }
}

/// Shared prompt prefixes (system prompts, few-shot templates): a share of requests start
/// with one of `prefixes` fixed block sequences, so a prefix cache can reuse their KV.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrefixSharing {
    /// Tokens per hash id (Mooncake uses 512).
    pub block_tokens: u32,
    /// Number of distinct shared prefixes, picked uniformly.
    pub prefixes: u32,
    /// Blocks in each shared prefix (a prompt shorter than that shares only its blocks).
    pub prefix_blocks: u32,
    /// Share of requests that start with a shared prefix (0 … 1).
    pub share_fraction: f64,
}

impl Default for PrefixSharing {
    fn default() -> Self {
        PrefixSharing {
            block_tokens: 512,
            prefixes: 8,
            prefix_blocks: 2,
            share_fraction: 0.5,
        }
    }
}

/// Everything a generator needs; `seed` fixes the output.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthConfig {
    pub process: ArrivalProcess,
    /// Mean requests per second.
    pub rate_rps: f64,
    pub input: LengthDist,
    pub output: LengthDist,
    /// `None`: records carry no hash ids.
    pub prefix: Option<PrefixSharing>,
    /// Share of requests with batch priority (0 … 1).
    pub batch_fraction: f64,
    pub seed: u64,
}

impl SynthConfig {
    /// `process` at `rate_rps`, Azure-conversation lengths, no prefixes, all interactive.
    pub fn new(process: ArrivalProcess, rate_rps: f64, seed: u64) -> Self {
        SynthConfig {
            process,
            rate_rps,
            input: LengthDist::AZURE_CONV_INPUT,
            output: LengthDist::AZURE_CONV_OUTPUT,
            prefix: None,
            batch_fraction: 0.0,
            seed,
        }
    }
}

/// An endless, seeded stream of synthetic requests; bound it with `.take(n)` or
/// [`super::TraceExt::limit`].
pub struct SyntheticTrace {
    rng: StdRng,
    process: ArrivalProcess,
    /// Mean gap in ns (Poisson, Gamma) or the gap of the bounding process (Diurnal).
    mean_gap_ns: f64,
    gamma: Option<Gamma<f64>>,
    diurnal_max: f64,
    t_ns: f64,
    first: bool,
    input: LengthSampler,
    output: LengthSampler,
    prefix: Option<PrefixSharing>,
    batch_fraction: f64,
    next_hash: u64,
}

impl SyntheticTrace {
    /// Checks the config; errors say which parameter is out of range.
    pub fn new(cfg: SynthConfig) -> Result<SyntheticTrace, String> {
        if !(cfg.rate_rps.is_finite() && cfg.rate_rps > 0.0) {
            return Err(format!("rate must be positive, got {}", cfg.rate_rps));
        }
        if !(0.0..=1.0).contains(&cfg.batch_fraction) {
            return Err(format!(
                "batch fraction must be in [0, 1], got {}",
                cfg.batch_fraction
            ));
        }
        let mean_gap_ns = NANOS_PER_SEC as f64 / cfg.rate_rps;
        let mut gamma = None;
        let mut diurnal_max = 1.0;
        match &cfg.process {
            ArrivalProcess::Poisson => {}
            ArrivalProcess::Gamma { cv } => {
                if !(cv.is_finite() && *cv > 0.0) {
                    return Err(format!("Gamma CV must be positive, got {cv}"));
                }
                // Shape k = 1/CV² and scale θ = mean·CV² give mean kθ and CV 1/√k.
                let shape = 1.0 / (cv * cv);
                gamma = Some(
                    Gamma::new(shape, mean_gap_ns * cv * cv)
                        .map_err(|e| format!("bad Gamma: {e}"))?,
                );
            }
            ArrivalProcess::Diurnal(p) => {
                if p.hourly.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                    return Err("diurnal hourly rates must all be positive".into());
                }
                diurnal_max = p.max_relative();
            }
        }
        if let Some(p) = &cfg.prefix {
            if p.block_tokens == 0 || p.prefixes == 0 || !(0.0..=1.0).contains(&p.share_fraction) {
                return Err(
                    "prefix sharing needs block_tokens > 0, prefixes > 0, share in [0, 1]".into(),
                );
            }
        }
        let next_hash = cfg
            .prefix
            .map_or(0, |p| u64::from(p.prefixes) * u64::from(p.prefix_blocks));
        Ok(SyntheticTrace {
            rng: StdRng::seed_from_u64(cfg.seed),
            mean_gap_ns,
            gamma,
            diurnal_max,
            t_ns: 0.0,
            first: true,
            input: cfg.input.sampler()?,
            output: cfg.output.sampler()?,
            prefix: cfg.prefix,
            batch_fraction: cfg.batch_fraction,
            next_hash,
            process: cfg.process,
        })
    }

    /// Moves the clock to the next arrival. The first request arrives at 0.
    fn advance(&mut self) {
        if self.first {
            self.first = false;
            return;
        }
        match &self.process {
            ArrivalProcess::Poisson => {
                let e: f64 = Exp1.sample(&mut self.rng);
                self.t_ns += e * self.mean_gap_ns;
            }
            ArrivalProcess::Gamma { .. } => {
                let g = self.gamma.as_ref().expect("set for Gamma");
                self.t_ns += g.sample(&mut self.rng);
            }
            ArrivalProcess::Diurnal(profile) => {
                // Thinning (Lewis & Shedler): candidates at the peak rate, each kept with
                // probability rate(t) / peak rate.
                let peak_gap = self.mean_gap_ns / self.diurnal_max;
                loop {
                    let e: f64 = Exp1.sample(&mut self.rng);
                    self.t_ns += e * peak_gap;
                    let hour = profile.start_hour + self.t_ns / (3600.0 * NANOS_PER_SEC as f64);
                    let keep = profile.relative_rate(hour) / self.diurnal_max;
                    if self.rng.random::<f64>() < keep {
                        break;
                    }
                }
            }
        }
    }

    fn hash_ids(&mut self, prompt_tokens: u32) -> Vec<u64> {
        let Some(p) = self.prefix else {
            return Vec::new();
        };
        let blocks = prompt_tokens.div_ceil(p.block_tokens) as usize;
        let mut ids = Vec::with_capacity(blocks);
        if self.rng.random::<f64>() < p.share_fraction {
            let k = u64::from(self.rng.random_range(0..p.prefixes));
            let shared = blocks.min(p.prefix_blocks as usize) as u64;
            ids.extend((0..shared).map(|j| k * u64::from(p.prefix_blocks) + j));
        }
        while ids.len() < blocks {
            ids.push(self.next_hash);
            self.next_hash += 1;
        }
        ids
    }
}

impl Iterator for SyntheticTrace {
    type Item = TraceRecord;

    fn next(&mut self) -> Option<TraceRecord> {
        self.advance();
        let prompt_tokens = self.input.sample(&mut self.rng);
        let output_tokens = self.output.sample(&mut self.rng);
        let hash_ids = self.hash_ids(prompt_tokens);
        let priority =
            if self.batch_fraction > 0.0 && self.rng.random::<f64>() < self.batch_fraction {
                Priority::Batch
            } else {
                Priority::Interactive
            };
        Some(TraceRecord {
            arrival_ns: self.t_ns.round() as Nanos,
            prompt_tokens,
            output_tokens,
            hash_ids,
            priority,
            slo: None,
            session: None,
            model: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceStats;

    fn generate(cfg: SynthConfig, n: usize) -> Vec<TraceRecord> {
        SyntheticTrace::new(cfg).unwrap().take(n).collect()
    }

    #[test]
    fn poisson_matches_rate_and_cv() {
        let recs = generate(SynthConfig::new(ArrivalProcess::Poisson, 50.0, 1), 100_000);
        let s = TraceStats::of_records(&recs);
        let rate = s.mean_rate_rps.unwrap();
        assert!((rate / 50.0 - 1.0).abs() < 0.02, "rate {rate}");
        let cv = s.interarrival_cv.unwrap();
        assert!((cv - 1.0).abs() < 0.03, "cv {cv}");
    }

    #[test]
    fn gamma_matches_rate_and_cv() {
        for want in [0.5, 2.0, 4.0] {
            let recs = generate(
                SynthConfig::new(ArrivalProcess::Gamma { cv: want }, 20.0, 7),
                100_000,
            );
            let s = TraceStats::of_records(&recs);
            let rate = s.mean_rate_rps.unwrap();
            assert!((rate / 20.0 - 1.0).abs() < 0.03, "cv {want}: rate {rate}");
            let cv = s.interarrival_cv.unwrap();
            assert!((cv / want - 1.0).abs() < 0.05, "asked cv {want}, got {cv}");
        }
    }

    #[test]
    fn lognormal_medians_match_the_azure_fit() {
        let recs = generate(SynthConfig::new(ArrivalProcess::Poisson, 10.0, 3), 50_000);
        let s = TraceStats::of_records(&recs);
        let (mi, mo) = (6.6333f64.exp(), 5.0190f64.exp());
        assert!(
            (s.input_tokens.p50 as f64 / mi - 1.0).abs() < 0.03,
            "{:?}",
            s.input_tokens
        );
        assert!(
            (s.output_tokens.p50 as f64 / mo - 1.0).abs() < 0.03,
            "{:?}",
            s.output_tokens
        );
        // p90 of a lognormal is exp(mu + 1.2816 sigma).
        let p90 = (6.6333f64 + 1.2816 * 0.9852).exp();
        assert!(
            (s.input_tokens.p90 as f64 / p90 - 1.0).abs() < 0.05,
            "{:?}",
            s.input_tokens
        );
    }

    #[test]
    fn diurnal_has_the_daily_mean_and_the_evening_peak() {
        let rate = 2.0;
        let days = 2.0;
        let n = (rate * 86_400.0 * days) as usize;
        let profile = DiurnalProfile::default();
        assert_eq!(profile.peak_to_trough(), 5.0);
        let recs = generate(
            SynthConfig::new(ArrivalProcess::Diurnal(profile.clone()), rate, 11),
            n,
        );
        let span_days = recs.last().unwrap().arrival_ns as f64 / (86_400.0 * 1e9);
        assert!((span_days / days - 1.0).abs() < 0.02, "{span_days} days");
        // Requests per hour-of-day bucket, over all days.
        let mut by_hour = [0u64; 24];
        for r in &recs {
            by_hour[((r.arrival_ns / 3_600_000_000_000) % 24) as usize] += 1;
        }
        let peak_hour = (0..24).max_by_key(|&h| by_hour[h]).unwrap();
        let trough_hour = (0..24).min_by_key(|&h| by_hour[h]).unwrap();
        assert!(
            (20..=21).contains(&peak_hour),
            "peak at {peak_hour}: {by_hour:?}"
        );
        assert!(
            (3..=4).contains(&trough_hour),
            "trough at {trough_hour}: {by_hour:?}"
        );
        // Hour buckets average the interpolated curve: 20:00–21:00 vs 04:00–05:00 is
        // (0.99+1.00)/2 over (0.20+0.22)/2.
        let want = (0.99 + 1.00) / (0.20 + 0.22);
        let got = by_hour[20] as f64 / by_hour[4] as f64;
        assert!(
            (got / want - 1.0).abs() < 0.08,
            "peak/trough {got}, want {want}"
        );
    }

    #[test]
    fn busiest_hour_is_the_hour_with_most_traffic_under_the_curve() {
        let profile = DiurnalProfile::default();
        assert_eq!(profile.busiest_hour(), 20);
        // Its mean rate (the integral of the curve over the hour) beats every other hour's.
        let mean = |h: u32| {
            (0..600)
                .map(|i| profile.relative_rate(f64::from(h) + (f64::from(i) + 0.5) / 600.0))
                .sum::<f64>()
                / 600.0
        };
        let best = mean(20);
        for h in (0..24).filter(|&h| h != 20) {
            assert!(mean(h) < best, "hour {h}: {} >= {best}", mean(h));
        }
        // Wraps past midnight, and takes the earliest of equals.
        let mut night = DiurnalProfile {
            hourly: [1.0; 24],
            start_hour: 0.0,
        };
        night.hourly[23] = 5.0;
        night.hourly[0] = 5.0;
        assert_eq!(night.busiest_hour(), 23);
        assert_eq!(
            DiurnalProfile {
                hourly: [1.0; 24],
                start_hour: 0.0
            }
            .busiest_hour(),
            0
        );
    }

    #[test]
    fn same_seed_same_trace_other_seed_other_trace() {
        let cfg = |seed| SynthConfig {
            prefix: Some(PrefixSharing::default()),
            batch_fraction: 0.3,
            ..SynthConfig::new(ArrivalProcess::Gamma { cv: 3.0 }, 100.0, seed)
        };
        assert_eq!(generate(cfg(5), 1000), generate(cfg(5), 1000));
        assert_ne!(generate(cfg(5), 1000), generate(cfg(6), 1000));
    }

    #[test]
    fn prefixes_and_batch_share_follow_the_config() {
        let p = PrefixSharing {
            block_tokens: 512,
            prefixes: 4,
            prefix_blocks: 2,
            share_fraction: 0.6,
        };
        let recs = generate(
            SynthConfig {
                prefix: Some(p),
                batch_fraction: 0.25,
                ..SynthConfig::new(ArrivalProcess::Poisson, 10.0, 9)
            },
            20_000,
        );
        let mut shared = 0;
        for r in &recs {
            assert_eq!(r.hash_ids.len() as u32, r.prompt_tokens.div_ceil(512));
            if r.hash_ids.first().is_some_and(|&h| h < 8) {
                shared += 1;
                let k = r.hash_ids[0] / 2;
                if r.hash_ids.len() > 1 {
                    assert_eq!(r.hash_ids[1], k * 2 + 1);
                }
            }
        }
        let share = shared as f64 / recs.len() as f64;
        assert!((share - 0.6).abs() < 0.02, "shared {share}");
        let batch = recs
            .iter()
            .filter(|r| r.priority == Priority::Batch)
            .count() as f64
            / recs.len() as f64;
        assert!((batch - 0.25).abs() < 0.015, "batch {batch}");
    }

    #[test]
    fn arrivals_never_go_backwards_and_start_at_zero() {
        let recs = generate(
            SynthConfig::new(ArrivalProcess::Gamma { cv: 8.0 }, 1000.0, 2),
            10_000,
        );
        assert_eq!(recs[0].arrival_ns, 0);
        assert!(recs.windows(2).all(|w| w[0].arrival_ns <= w[1].arrival_ns));
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(SyntheticTrace::new(SynthConfig::new(ArrivalProcess::Poisson, 0.0, 0)).is_err());
        assert!(
            SyntheticTrace::new(SynthConfig::new(ArrivalProcess::Gamma { cv: 0.0 }, 1.0, 0))
                .is_err()
        );
        let mut cfg = SynthConfig::new(ArrivalProcess::Poisson, 1.0, 0);
        cfg.batch_fraction = 1.5;
        assert!(SyntheticTrace::new(cfg).is_err());
    }
}
