//! A streaming, seekable synthetic day at provider scale (Doubao-like by default): sessions
//! arrive as a non-homogeneous Poisson process over a diurnal curve, each session is a
//! multi-turn conversation whose later turns resend the earlier context (same leading hash
//! ids, so prefix caches see real reuse), and the whole day is never materialised: the
//! iterator holds one pending entry per open session plus one per bucket, whatever the
//! day's volume.
//!
//! Seekable by construction. Sessions are split into `buckets` (a power of two) by their
//! key, and time into `slot_s` slots; the session starts of bucket `b` in slot `j` come
//! from their own RNG stream keyed by `(seed, j, b)`, and the draws of turn `k` of a session
//! from a stream keyed by `(seed, session key, k)`. A session's key is built to hash into
//! its bucket ([`super::cells`]: `cell_slot(key) == b`), so shard `I/N` (the buckets with
//! `b % N == I`) is exactly cell `I` of a fleet of `N` cells (`cell_of(key, N) == I`), for
//! any `N` up to `buckets`. It opens only its own streams, and a time window `[a, b)` starts at slot `(a − warm-up)` where the
//! warm-up is the longest a session can last, `(max_turns − 1) × think_max_s`; turns before
//! `a` are drawn but not emitted. The union of the shards (or of adjacent windows), merged
//! by `(arrival, session, turn)`, is exactly the unsharded stream, which is itself in that
//! order.
//!
//! Defaults and where they come from:
//! - Volume: 50 trillion tokens a day, Doubao in December 2025 (Volcano Engine president Tan
//!   Dai at FORCE, 18 Dec 2025; reported e.g. by cnyes, hao.cnyes.com/post/217684); the
//!   September 2025 figure was 30 trillion (The Paper, 16 Oct 2025, "as of end September").
//!   Tokens are counted as billed: the full prompt of every turn plus its output.
//! - Diurnal shape: [`DiurnalProfile::default`], an `estimate` (peak 21:00, trough 04:00,
//!   5:1). No public trace in /work/shared/traces covers a whole day: the Azure 2023
//!   conversation trace spans about one hour (18:15–19:15 UTC) and Mooncake's has no clock.
//! - First-turn prompt and output lengths: the Azure 2023 conversation lognormal fits
//!   ([`LengthDist::AZURE_CONV_INPUT`], [`LengthDist::AZURE_CONV_OUTPUT`]).
//! - Session shape (turns, follow-up length, think time, context cap): `estimate`s, see
//!   [`SessionShape::default`]. Hash ids use 512-token blocks, Mooncake's block size.

use super::cells::{unmix53, CELL_SLOTS};
use super::synth::{DiurnalProfile, LengthDist, LengthSampler};
use super::{Shard, TraceRecord};
use crate::request::{Nanos, Priority, NANOS_PER_SEC};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp1};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::ops::Range;

/// Doubao's daily tokens, December 2025 (Volcano Engine, FORCE conference, 18 Dec 2025).
pub const DOUBAO_TOKENS_PER_DAY_DEC_2025: f64 = 50e12;
/// Doubao's daily tokens at the end of September 2025 (Volcano Engine, reported 16 Oct 2025).
pub const DOUBAO_TOKENS_PER_DAY_SEP_2025: f64 = 30e12;

const NS_PER_SEC_F: f64 = NANOS_PER_SEC as f64;
const SECS_PER_DAY: f64 = 86_400.0;
/// Keys and hash ids stay below 2^53 so any JSON reader keeps them exact.
const MASK53: u64 = (1 << 53) - 1;

/// How a conversation unfolds after its first request.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionShape {
    /// Mean requests per session (geometric, at least 1).
    pub mean_turns: f64,
    /// Turns beyond this are cut (bounds the warm-up of a time window).
    pub max_turns: u32,
    /// New user tokens of every turn after the first (the first uses `DayConfig::input`).
    pub followup: LengthDist,
    /// Mean seconds from one turn's arrival to the next (reading, typing and the reply's
    /// generation), exponential, clamped to `[1, think_max_s]`.
    pub think_mean_s: f64,
    pub think_max_s: f64,
    /// A turn whose prompt would exceed this ends the session instead.
    pub max_context: u32,
}

impl Default for SessionShape {
    /// All `estimate`s (no public figure for Doubao sessions): 2.5 turns on average, at most
    /// 12; follow-ups with median 120 tokens; 60 s mean think time, at most 5 minutes;
    /// 32k-token context.
    fn default() -> Self {
        SessionShape {
            mean_turns: 2.5,
            max_turns: 12,
            followup: LengthDist::LogNormal {
                mu: 120f64.ln(),
                sigma: 1.0,
                min: 1,
                max: 8_192,
            },
            think_mean_s: 60.0,
            think_max_s: 300.0,
            max_context: 32_768,
        }
    }
}

/// Everything that fixes a day; the same config gives the same records on every machine.
#[derive(Clone, Debug, PartialEq)]
pub struct DayConfig {
    /// Tokens (prompt + output of every request) in a full day at `scale` 1.
    pub tokens_per_day: f64,
    /// Share of that volume to generate (1e-6 is a millionth of the sessions).
    pub scale: f64,
    pub profile: DiurnalProfile,
    /// First-turn prompt length.
    pub input: LengthDist,
    pub output: LengthDist,
    pub session: SessionShape,
    /// Tokens per hash id.
    pub block_tokens: u32,
    /// Session partitions (a power of two); the most shards a day can be cut into.
    pub buckets: u32,
    /// Width of the time slots that key the session-start streams.
    pub slot_s: u32,
    pub seed: u64,
}

impl DayConfig {
    /// The Doubao-like defaults at `tokens_per_day` × `scale`.
    pub fn doubao(tokens_per_day: f64, scale: f64, seed: u64) -> Self {
        DayConfig {
            tokens_per_day,
            scale,
            profile: DiurnalProfile::default(),
            input: LengthDist::AZURE_CONV_INPUT,
            output: LengthDist::AZURE_CONV_OUTPUT,
            session: SessionShape::default(),
            block_tokens: 512,
            buckets: 256,
            slot_s: 60,
            seed,
        }
    }

    /// Longest a session can last: how far before a window its generation must start.
    pub fn warm_up_ns(&self) -> Nanos {
        let s = f64::from(self.session.max_turns.saturating_sub(1)) * self.session.think_max_s;
        (s * NS_PER_SEC_F).ceil() as Nanos
    }
}

/// A turn waiting for its arrival time. Ordered by `(t, key, turn)` only: the other fields
/// are state the key already determines.
#[derive(Debug)]
struct Pending {
    t: Nanos,
    key: u64,
    turn: u32,
    /// Tokens of the conversation so far (previous prompt + its output).
    context: u32,
    /// Total turns of the session, drawn at turn 0.
    turns: u32,
    /// For a first turn, the bucket generator to advance once it is taken.
    bucket: Option<usize>,
}

impl Pending {
    fn rank(&self) -> (Nanos, u64, u32) {
        (self.t, self.key, self.turn)
    }
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        self.rank() == o.rank()
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> Ordering {
        self.rank().cmp(&o.rank())
    }
}

/// Session starts of one bucket: thinning at the peak rate within each slot, the stream
/// reseeded from `(seed, slot, bucket)` at every slot boundary (exact for a Poisson
/// process: it is memoryless).
struct BucketGen {
    bucket: u64,
    slot: u64,
    rng: StdRng,
    t: f64,
    idx: u64,
    last: Option<Nanos>,
}

/// The day (or a window or shard of it) as an iterator of records in arrival order.
pub struct DayTrace {
    seed: u64,
    profile: DiurnalProfile,
    peak_rel: f64,
    /// Mean gap between candidate session starts of one bucket at the peak rate, ns.
    peak_gap_ns: f64,
    slot_ns: u64,
    /// Sessions start before this (nothing later can land in the window).
    start_end_ns: Nanos,
    window: Range<Nanos>,
    gens: Vec<BucketGen>,
    heap: BinaryHeap<Reverse<Pending>>,
    input: LengthSampler,
    output: LengthSampler,
    followup: LengthSampler,
    shape: SessionShape,
    block_tokens: u32,
    streams: u64,
    max_pending: usize,
    sessions_per_s: f64,
    /// Mean tokens of a session (depends on the shape and lengths only, not the seed).
    tokens_per_session: f64,
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A well-mixed 64-bit function of several words (order matters).
fn mix(words: &[u64]) -> u64 {
    words
        .iter()
        .fold(0x6A09_E667_F3BC_C908, |h, &w| splitmix(h ^ w))
}

/// Domain tags keep the streams of different purposes apart.
const SLOT_STREAM: u64 = 1;
const TURN_STREAM: u64 = 2;
const SESSION_KEY: u64 = 3;
const FULL_BLOCK: u64 = 4;
const PART_BLOCK: u64 = 5;

impl DayTrace {
    /// The records of `shard` whose arrival falls in `window` (ns from the day's midnight;
    /// the profile repeats every 24 h, so windows past a day are allowed). Errors name the
    /// parameter at fault.
    pub fn new(cfg: &DayConfig, shard: Shard, window: Range<Nanos>) -> Result<DayTrace, String> {
        DayTrace::build(cfg, shard, window, None)
    }

    /// Another shard or window of the day `self` is a part of (made from `cfg`), without
    /// estimating its session rate again (a sample of 20,000 sessions): how a process
    /// replaying many cells opens each.
    pub fn sibling(
        &self,
        cfg: &DayConfig,
        shard: Shard,
        window: Range<Nanos>,
    ) -> Result<DayTrace, String> {
        DayTrace::build(cfg, shard, window, Some(self.tokens_per_session))
    }

    fn build(
        cfg: &DayConfig,
        shard: Shard,
        window: Range<Nanos>,
        tokens_per_session: Option<f64>,
    ) -> Result<DayTrace, String> {
        if !(cfg.tokens_per_day.is_finite() && cfg.tokens_per_day > 0.0) {
            return Err(format!(
                "tokens per day must be positive, got {}",
                cfg.tokens_per_day
            ));
        }
        if !(cfg.scale.is_finite() && cfg.scale > 0.0) {
            return Err(format!("scale must be positive, got {}", cfg.scale));
        }
        if cfg
            .profile
            .hourly
            .iter()
            .any(|v| !(v.is_finite() && *v > 0.0))
        {
            return Err("diurnal hourly rates must all be positive".into());
        }
        if !cfg.buckets.is_power_of_two() || cfg.buckets > CELL_SLOTS {
            return Err(format!(
                "buckets must be a power of two up to 65536, got {}",
                cfg.buckets
            ));
        }
        if shard.count == 0 || shard.index >= shard.count || shard.count > cfg.buckets {
            return Err(format!(
                "shard {}/{} needs 0 <= I < N <= buckets ({})",
                shard.index, shard.count, cfg.buckets
            ));
        }
        if cfg.slot_s == 0 || cfg.block_tokens == 0 {
            return Err("slot_s and block_tokens must be positive".into());
        }
        if window.start >= window.end {
            return Err(format!(
                "window [{}, {}) ns is empty",
                window.start, window.end
            ));
        }
        let s = &cfg.session;
        if !(s.mean_turns.is_finite() && s.mean_turns >= 1.0) || s.max_turns == 0 {
            return Err(format!(
                "sessions need mean turns >= 1 and max turns >= 1, got {} and {}",
                s.mean_turns, s.max_turns
            ));
        }
        if !(s.think_mean_s > 0.0 && s.think_max_s >= 1.0 && s.think_max_s.is_finite()) {
            return Err("think time needs mean > 0 and max >= 1 s".into());
        }
        let mut day = DayTrace {
            seed: cfg.seed,
            profile: cfg.profile.clone(),
            peak_rel: cfg.profile.max_relative(),
            peak_gap_ns: 0.0,
            slot_ns: u64::from(cfg.slot_s) * NANOS_PER_SEC,
            start_end_ns: window.end,
            window: window.clone(),
            gens: Vec::new(),
            heap: BinaryHeap::new(),
            input: cfg.input.sampler()?,
            output: cfg.output.sampler()?,
            followup: s.followup.sampler()?,
            shape: s.clone(),
            block_tokens: cfg.block_tokens,
            streams: 0,
            max_pending: 0,
            sessions_per_s: 0.0,
            tokens_per_session: 0.0,
        };
        day.tokens_per_session = match tokens_per_session {
            Some(t) => t,
            None => day.tokens_per_session(),
        };
        day.sessions_per_s = cfg.tokens_per_day * cfg.scale / SECS_PER_DAY / day.tokens_per_session;
        day.streams = 0;
        let bucket_peak_rate = day.sessions_per_s * day.peak_rel / f64::from(cfg.buckets);
        day.peak_gap_ns = NS_PER_SEC_F / bucket_peak_rate;
        let first_slot = window.start.saturating_sub(cfg.warm_up_ns()) / day.slot_ns;
        for b in (shard.index..cfg.buckets).step_by(shard.count as usize) {
            let mut g = BucketGen {
                bucket: u64::from(b),
                slot: first_slot,
                rng: StdRng::seed_from_u64(0),
                t: 0.0,
                idx: 0,
                last: None,
            };
            day.reseed(&mut g);
            let pos = day.gens.len();
            if let Some(p) = day.next_start(&mut g, pos) {
                day.heap.push(Reverse(p));
            }
            day.gens.push(g);
        }
        Ok(day)
    }

    /// Mean sessions per second over a day (before the diurnal shape).
    pub fn sessions_per_s(&self) -> f64 {
        self.sessions_per_s
    }

    /// RNG streams opened so far (one per slot and bucket, one per turn): the work done.
    pub fn streams_opened(&self) -> u64 {
        self.streams
    }

    /// Most turns pending at once so far: the generator's memory, in entries.
    pub fn max_pending(&self) -> usize {
        self.max_pending
    }

    fn reseed(&mut self, g: &mut BucketGen) {
        g.rng = StdRng::seed_from_u64(mix(&[self.seed, SLOT_STREAM, g.slot, g.bucket]));
        g.t = (g.slot * self.slot_ns) as f64;
        g.idx = 0;
        self.streams += 1;
    }

    /// The bucket's next session start, or `None` past the last slot that matters.
    fn next_start(&mut self, g: &mut BucketGen, pos: usize) -> Option<Pending> {
        loop {
            let slot_end = ((g.slot + 1) * self.slot_ns) as f64;
            let e: f64 = Exp1.sample(&mut g.rng);
            g.t += e * self.peak_gap_ns;
            if g.t >= slot_end {
                g.slot += 1;
                if g.slot * self.slot_ns >= self.start_end_ns {
                    return None;
                }
                self.reseed(g);
                continue;
            }
            let hour = self.profile.start_hour + g.t / (3600.0 * NS_PER_SEC_F);
            let keep = self.profile.relative_rate(hour) / self.peak_rel;
            if g.rng.random::<f64>() >= keep {
                continue;
            }
            g.idx += 1;
            // Strictly later than the bucket's previous start, so the heap order is the
            // total order (t, key, turn) whichever buckets a shard holds.
            let t = (g.t.round() as Nanos).max(g.last.map_or(0, |l| l + 1));
            if t >= self.start_end_ns {
                return None;
            }
            g.last = Some(t);
            let h = mix(&[self.seed, SESSION_KEY, g.slot, g.bucket, g.idx]) & MASK53;
            let slots = u64::from(CELL_SLOTS - 1);
            return Some(Pending {
                t,
                key: unmix53((h & !slots) | g.bucket),
                turn: 0,
                context: 0,
                turns: 0,
                bucket: Some(pos),
            });
        }
    }

    /// Draws turn `p`: its record (`None` when the context cap ends the session) and the
    /// session's next turn.
    fn draw(&mut self, p: &Pending) -> (Option<TraceRecord>, Option<Pending>) {
        let mut rng =
            StdRng::seed_from_u64(mix(&[self.seed, TURN_STREAM, p.key, u64::from(p.turn)]));
        self.streams += 1;
        let turns = if p.turn == 0 {
            self.draw_turns(&mut rng)
        } else {
            p.turns
        };
        let new = if p.turn == 0 {
            self.input.sample(&mut rng)
        } else {
            self.followup.sample(&mut rng)
        };
        let prompt = p.context.saturating_add(new);
        if prompt > self.shape.max_context {
            return (None, None);
        }
        let output = self.output.sample(&mut rng);
        let next = (p.turn + 1 < turns).then(|| {
            let e: f64 = Exp1.sample(&mut rng);
            let gap_s = (e * self.shape.think_mean_s).clamp(1.0, self.shape.think_max_s);
            Pending {
                t: p.t + (gap_s * NS_PER_SEC_F).round() as Nanos,
                key: p.key,
                turn: p.turn + 1,
                context: prompt.saturating_add(output),
                turns,
                bucket: None,
            }
        });
        let rec = TraceRecord {
            arrival_ns: p.t,
            prompt_tokens: prompt,
            output_tokens: output,
            hash_ids: self.hash_ids(p.key, p.turn, prompt),
            priority: Priority::Interactive,
            slo: None,
            session: Some(p.key),
            model: None,
        };
        (Some(rec), next)
    }

    /// Geometric with the configured mean, cut at `max_turns`.
    fn draw_turns(&self, rng: &mut StdRng) -> u32 {
        let m = self.shape.mean_turns;
        if m <= 1.0 {
            return 1;
        }
        let u: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
        let extra = (u.ln() / (1.0 - 1.0 / m).ln()).floor();
        (1.0 + extra).min(f64::from(self.shape.max_turns)) as u32
    }

    /// A full block's id depends only on the session and its position, so every later turn
    /// repeats the earlier turns' full blocks; the partial last block is this turn's own.
    fn hash_ids(&self, key: u64, turn: u32, prompt: u32) -> Vec<u64> {
        let full = u64::from(prompt / self.block_tokens);
        let mut ids: Vec<u64> = (0..full)
            .map(|b| mix(&[self.seed, FULL_BLOCK, key, b]) & MASK53)
            .collect();
        if !prompt.is_multiple_of(self.block_tokens) {
            ids.push(mix(&[self.seed, PART_BLOCK, key, full, u64::from(turn)]) & MASK53);
        }
        ids
    }

    /// Mean tokens (prompts + outputs) of a session, over a fixed sample of sessions
    /// independent of the seed, so the rate depends on the shape only.
    fn tokens_per_session(&mut self) -> f64 {
        const SAMPLE: u64 = 20_000;
        let seed = self.seed;
        self.seed = 0x5EED_CA1B;
        let mut total = 0u64;
        for key in 0..SAMPLE {
            let mut p = Pending {
                t: 0,
                key,
                turn: 0,
                context: 0,
                turns: 0,
                bucket: None,
            };
            loop {
                let (rec, next) = self.draw(&p);
                if let Some(r) = rec {
                    total += u64::from(r.prompt_tokens) + u64::from(r.output_tokens);
                }
                match next {
                    Some(n) => p = n,
                    None => break,
                }
            }
        }
        self.seed = seed;
        total as f64 / SAMPLE as f64
    }
}

impl Iterator for DayTrace {
    type Item = TraceRecord;

    fn next(&mut self) -> Option<TraceRecord> {
        loop {
            self.max_pending = self.max_pending.max(self.heap.len());
            let Reverse(p) = self.heap.pop()?;
            if p.t >= self.window.end {
                // Everything left is later still.
                self.heap.clear();
                return None;
            }
            if let Some(pos) = p.bucket {
                // Taking the vector out is O(1) and lets `next_start` borrow `self`.
                let mut gens = std::mem::take(&mut self.gens);
                if let Some(n) = self.next_start(&mut gens[pos], pos) {
                    self.heap.push(Reverse(n));
                }
                self.gens = gens;
            }
            let (rec, next) = self.draw(&p);
            if let Some(n) = next {
                self.heap.push(Reverse(n));
            }
            match rec {
                Some(r) if p.t >= self.window.start => return Some(r),
                _ => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests;
