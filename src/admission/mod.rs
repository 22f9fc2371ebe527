//! Admission control: whether a request is taken on at all. Queues are bounded globally
//! and per backend, batch work is shed before interactive work (it is admitted only below
//! lower watermarks), a request whose predicted time to first token already misses its
//! deadline is refused up front rather than left to time out, and an interactive request
//! whose predicted time to first token misses its SLO by more than a configured factor is
//! shed at once with a retry hint from the predicted drain time: under overload a fast
//! "come back in 3 s" helps a client more than a queue that answers in 30. Every refusal
//! carries a [`RejectReason`] that maps to one gRPC status at the boundary.
//!
//! [`AdmissionConfig::default`] is the one set of default limits: the daemon's `[admission]`
//! section, `dujiang replay` and `dujiang plan` all start from it.
//!
//! Nothing accepted is dropped silently: an accepted request holds a [`Permit`] that must
//! be finished with an [`Outcome`]. A permit dropped unfinished is counted as
//! `abandoned`, so `accepted = Σ outcomes + outstanding` always holds and a leak shows up
//! in the counters instead of vanishing. Pure and lock-free: counters are atomics shared by
//! every thread that admits.

use crate::engine::LoadSnapshot;
use crate::fleet::{BackendId, PoolInfo};
use crate::request::{Nanos, Priority, Request, Slo, NANOS_PER_MS};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

mod reason;
pub use reason::{grpc_code, Outcome, RejectReason};

/// Admission limits: the daemon's `[admission]` config section, and what replay and the
/// planner admit by. Field names are the config file's keys.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Requests admitted and not yet finished, over the whole scheduler.
    pub max_in_flight: u32,
    /// Waiting (not yet running) requests one backend may hold, for interactive requests.
    pub max_waiting_per_backend: u32,
    /// Retry hint for requests shed by a bound (not by prediction), milliseconds.
    pub retry_after_ms: u64,
    /// Batch requests are admitted only while in flight < this fraction of the limit.
    pub batch_watermark: f64,
    /// The per-backend waiting bound for batch requests; lower, so batch backs off first.
    pub batch_waiting_per_backend: u32,
    /// An interactive request whose predicted time to first token or per output token on
    /// its backend exceeds its SLO times this factor is shed. 0 turns shedding by
    /// prediction off.
    pub slo_shed_factor: f64,
}

impl Default for AdmissionConfig {
    /// The one default, for the daemon, replay and the planner alike. The bounds are wide
    /// backstops (memory, not latency); latency under overload is kept by shedding on
    /// predictions. Factor 1, shedding at the SLO itself: on 3,000 Azure conversation
    /// requests on the demo fleet it sheds nothing at the trace's rate and, at 10×, keeps
    /// ≥ 90% of accepted requests within the TTFT SLO (tests/overload.rs).
    fn default() -> Self {
        AdmissionConfig {
            max_in_flight: 100_000,
            max_waiting_per_backend: 1024,
            retry_after_ms: 1000,
            batch_watermark: 0.75,
            batch_waiting_per_backend: 256,
            slo_shed_factor: 1.0,
        }
    }
}

impl AdmissionConfig {
    /// Checks meaning (serde checks the schema). Errors name the field, relative to the
    /// `[admission]` section.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_in_flight == 0 {
            return Err(("max_in_flight", "must be at least 1".into()));
        }
        let w = self.batch_watermark;
        if !(w.is_finite() && w > 0.0 && w <= 1.0) {
            return Err(("batch_watermark", format!("must be in (0, 1], got {w}")));
        }
        let f = self.slo_shed_factor;
        if !(f.is_finite() && f >= 0.0) {
            return Err((
                "slo_shed_factor",
                format!("must be a non-negative number (0 disables), got {f}"),
            ));
        }
        Ok(())
    }
}

/// Where the router would send a request, as admission needs to know it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// The policy found no serving backend.
    NoBackend,
    /// The scheduler is shutting down.
    ShuttingDown,
    /// The policy's choice, its load and what the request is predicted to get there
    /// (build it with [`Target::predicted`], so both drivers predict alike).
    Backend {
        id: BackendId,
        load: LoadSnapshot,
        predicted_ttft_ns: Nanos,
        /// Time per output token with no more work arriving: one decode step of the batch
        /// the request joins. (Prefill queued ahead of it is done before its first token.)
        predicted_tpot_ns: Nanos,
        /// Prefill time of the request's own prompt there.
        prefill_ns: Nanos,
    },
}

impl Target {
    /// The target `req` has on backend `id` of `pool`, with load `load` (read before the
    /// request is counted there).
    pub fn predicted(id: BackendId, pool: &PoolInfo, load: LoadSnapshot, req: &Request) -> Target {
        let batch = (load.outstanding() + 1).min(pool.config.max_num_seqs.max(1));
        Target::Backend {
            id,
            load,
            predicted_ttft_ns: crate::policy::predict(pool, &load, req).ttft_ns,
            predicted_tpot_ns: pool.decode_step_ns(batch),
            prefill_ns: pool.prefill_ns(u64::from(req.prompt_tokens)),
        }
    }
}

/// How far ahead of now a backend's prefill-share clock may run before interactive work
/// is shed (see [`Admission::misses_slo`]): the span over which prefill may exceed its
/// share in a burst. Estimate: about one chat answer's decode time (200 tokens at 50 ms),
/// the span over which a stream feels the prefills admitted beside it.
const PREFILL_SHARE_WINDOW_NS: Nanos = 10 * crate::request::NANOS_PER_SEC;

/// Prefill-share clocks, one per backend id modulo this (more backends share clocks,
/// which only makes shedding earlier for them).
const PREFILL_SHARE_SLOTS: usize = 4096;

#[derive(Debug)]
struct Counters {
    outstanding: AtomicU32,
    outstanding_by_class: [AtomicU32; 2],
    accepted: [AtomicU64; 2],
    rejected: [AtomicU64; RejectReason::ALL.len()],
    finished: [AtomicU64; Outcome::ALL.len()],
    /// Per backend: the time up to which the prefill it was given has used its share
    /// (see [`Admission::misses_slo`]).
    prefill_share_until: Box<[AtomicU64]>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            outstanding: AtomicU32::default(),
            outstanding_by_class: Default::default(),
            accepted: Default::default(),
            rejected: Default::default(),
            finished: Default::default(),
            prefill_share_until: (0..PREFILL_SHARE_SLOTS)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

/// A point-in-time copy of the admission counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdmissionStats {
    pub outstanding: u32,
    /// Accepted requests by priority class (interactive, batch).
    pub accepted: [u64; 2],
    /// Rejections by reason, in [`RejectReason::ALL`] order.
    pub rejected: [u64; RejectReason::ALL.len()],
    /// Terminal outcomes, in [`Outcome::ALL`] order.
    pub finished: [u64; Outcome::ALL.len()],
}

impl AdmissionStats {
    pub fn accepted_total(&self) -> u64 {
        self.accepted.iter().sum()
    }

    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason.index()]
    }

    pub fn finished(&self, outcome: Outcome) -> u64 {
        self.finished[outcome.index()]
    }

    /// Every accepted request is either finished or still outstanding.
    pub fn balanced(&self) -> bool {
        self.accepted_total() == self.finished.iter().sum::<u64>() + u64::from(self.outstanding)
    }
}

/// The admission controller. Cheap to share: `&self` everywhere, atomics inside.
#[derive(Debug, Default)]
pub struct Admission {
    config: AdmissionConfig,
    /// The SLO of requests that carry none.
    default_slo: Slo,
    counters: Arc<Counters>,
}

/// Proof that a request was accepted. Finish it with its outcome; dropping it unfinished
/// counts as [`Outcome::Abandoned`].
#[derive(Debug)]
#[must_use = "an accepted request must be finished with an outcome"]
pub struct Permit {
    counters: Arc<Counters>,
    class: Priority,
    finished: bool,
}

impl Permit {
    pub fn priority(&self) -> Priority {
        self.class
    }

    /// Records the request's terminal outcome and frees its queue slot.
    pub fn finish(mut self, outcome: Outcome) {
        self.close(outcome);
    }

    fn close(&mut self, outcome: Outcome) {
        if self.finished {
            return;
        }
        self.finished = true;
        let c = &self.counters;
        c.finished[outcome.index()].fetch_add(1, Relaxed);
        c.outstanding_by_class[self.class.index()].fetch_sub(1, Relaxed);
        c.outstanding.fetch_sub(1, Relaxed);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.close(Outcome::Abandoned);
    }
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Admission {
        Admission {
            config,
            default_slo: Slo::default(),
            counters: Arc::default(),
        }
    }

    /// Judges requests that carry no SLO by `slo` (default: [`Slo::default`]).
    pub fn with_default_slo(mut self, slo: Slo) -> Admission {
        self.default_slo = slo;
        self
    }

    pub fn config(&self) -> &AdmissionConfig {
        &self.config
    }

    /// The same counters under new bounds (a config reload): permits already issued keep
    /// counting against the new limits, so a reload never lets the bound be overrun.
    pub fn reconfigured(&self, config: AdmissionConfig) -> Admission {
        Admission {
            config,
            default_slo: self.default_slo,
            counters: self.counters.clone(),
        }
    }

    /// The TTFT and TPOT an interactive request may be predicted to get before it is shed,
    /// or `None` when it is not judged by prediction (batch, or shedding turned off).
    fn allowance(&self, req: &Request) -> Option<Slo> {
        let f = self.config.slo_shed_factor;
        if req.priority == Priority::Batch || f <= 0.0 {
            return None;
        }
        let slo = req.slo.unwrap_or(self.default_slo);
        let scale = |ns: Nanos| (ns as f64 * f).min(Nanos::MAX as f64) as Nanos;
        Some(Slo {
            ttft_ns: scale(slo.ttft_ns),
            tpot_ns: scale(slo.tpot_ns),
        })
    }

    /// The share of a backend's time prefill may take while the streams it decodes at
    /// `step` per token keep `tpot`: a stream's mean time per token is `step / (1 − share)`
    /// when prefill chunks take `share` of the steps' time.
    fn prefill_share(step: Nanos, tpot: Nanos) -> f64 {
        1.0 - step as f64 / tpot.max(1) as f64
    }

    /// The prefill-share clock of `target`'s backend and what admitting `req` advances it
    /// by, or `None` when it is not tracked.
    fn share_debit(&self, req: &Request, target: &Target) -> Option<(&AtomicU64, Nanos)> {
        let Target::Backend {
            id,
            predicted_tpot_ns,
            prefill_ns,
            ..
        } = *target
        else {
            return None;
        };
        let f = self.config.slo_shed_factor;
        if f <= 0.0 {
            return None;
        }
        let tpot = req.slo.unwrap_or(self.default_slo).tpot_ns as f64 * f;
        // Floor 5%: a request may always be charged, however slow the decode step.
        let share = Self::prefill_share(predicted_tpot_ns, tpot as Nanos).max(0.05);
        let slot = &self.counters.prefill_share_until[id.index() % PREFILL_SHARE_SLOTS];
        Some((slot, (prefill_ns as f64 / share) as Nanos))
    }

    /// The prefill-share clock of `target`'s backend after admitting `req` at `now`, and
    /// the limit it may not pass (`now` + window), or `None` when it is not tracked.
    fn share_clock(&self, req: &Request, target: &Target, now: Nanos) -> Option<(Nanos, Nanos)> {
        let (slot, debit) = self.share_debit(req, target)?;
        let after = slot.load(Relaxed).max(now).saturating_add(debit);
        Some((after, now.saturating_add(PREFILL_SHARE_WINDOW_NS)))
    }

    /// Whether `req`, interactive, is predicted to miss its allowance on `target`: its
    /// first token too late (the queue ahead of it), or its tokens too slow. Tokens come
    /// too slowly when one decode step of the batch it joins is over the bound, or when
    /// the backend has been given more prompts than it can prefill beside its streams:
    /// every prefill chunk lengthens the step it shares, so a backend kept prefilling
    /// (overload sheds to the TTFT bound and no further) slows every stream it decodes.
    /// Each backend therefore keeps a prefill-share clock: admitting a prompt advances it
    /// by the prompt's prefill time divided by the share of time prefill may take there
    /// ([`Self::prefill_share`]); it never lags `now`, and an interactive request that
    /// would push it more than [`PREFILL_SHARE_WINDOW_NS`] ahead is shed. Bursts fit in
    /// the window; only a sustained rate above the share is refused.
    fn misses_slo(&self, req: &Request, target: &Target, now: Nanos) -> bool {
        let (
            Some(allowed),
            Target::Backend {
                predicted_ttft_ns,
                predicted_tpot_ns,
                ..
            },
        ) = (self.allowance(req), *target)
        else {
            return false;
        };
        predicted_ttft_ns > allowed.ttft_ns
            || predicted_tpot_ns > allowed.tpot_ns
            || self
                .share_clock(req, target, now)
                .is_some_and(|(after, limit)| after > limit)
    }

    /// How long until `target` would take `req` within its allowance, if the backend
    /// works off what it holds at the predicted pace and nothing else arrives: the retry
    /// hint of a request shed as [`RejectReason::SloUnmeetable`]. The longer of the wait
    /// for its TTFT to fit and for the backend's prefill-share clock to come within the
    /// window. At least 1 ms, so a hint never says "now" for work that was just refused.
    pub fn drain_ns(&self, req: &Request, target: &Target, now: Nanos) -> Nanos {
        let (
            Some(allowed),
            Target::Backend {
                predicted_ttft_ns, ..
            },
        ) = (self.allowance(req), *target)
        else {
            return NANOS_PER_MS;
        };
        let share = self
            .share_clock(req, target, now)
            .map_or(0, |(after, limit)| after.saturating_sub(limit));
        predicted_ttft_ns
            .saturating_sub(allowed.ttft_ns)
            .max(share)
            .max(NANOS_PER_MS)
    }

    /// Decides whether `req` is taken on, given where the router would send it and its
    /// absolute `deadline` (if the client set one). On success the request counts as
    /// outstanding until its permit is finished.
    pub fn admit(
        &self,
        req: &Request,
        target: Target,
        deadline: Option<Nanos>,
        now: Nanos,
    ) -> Result<Permit, RejectReason> {
        let verdict = self.decide(req, target, deadline, now);
        if let Err(reason) = verdict {
            self.counters.rejected[reason.index()].fetch_add(1, Relaxed);
        }
        verdict
    }

    fn decide(
        &self,
        req: &Request,
        target: Target,
        deadline: Option<Nanos>,
        now: Nanos,
    ) -> Result<Permit, RejectReason> {
        if req.max_tokens == 0 {
            return Err(RejectReason::InvalidRequest);
        }
        let (load, ttft) = match target {
            Target::ShuttingDown => return Err(RejectReason::Draining),
            Target::NoBackend => return Err(RejectReason::NoHealthyBackend),
            Target::Backend {
                load,
                predicted_ttft_ns,
                ..
            } => (load, predicted_ttft_ns),
        };
        let batch = req.priority == Priority::Batch;
        let waiting_limit = if batch {
            self.config.batch_waiting_per_backend
        } else {
            self.config.max_waiting_per_backend
        };
        if load.waiting >= waiting_limit {
            return Err(RejectReason::BackendQueueFull);
        }
        if deadline.is_some_and(|d| now.saturating_add(ttft) > d) {
            return Err(RejectReason::DeadlineUnmeetable);
        }
        // Batch work may queue up to its deadline (above); interactive work that would
        // wait past its SLO is worth less than a prompt refusal the client can act on.
        if self.misses_slo(req, &target, now) {
            return Err(RejectReason::SloUnmeetable);
        }
        let limit = if batch {
            (f64::from(self.config.max_in_flight) * self.config.batch_watermark) as u32
        } else {
            self.config.max_in_flight
        };
        // Reserve a slot only if one is free: a compare-and-swap loop, so the limit holds
        // exactly however many threads admit at once.
        let reserved = self
            .counters
            .outstanding
            .fetch_update(Relaxed, Relaxed, |n| (n < limit).then_some(n + 1));
        if reserved.is_err() {
            return Err(if batch {
                RejectReason::BatchShed
            } else {
                RejectReason::QueueFull
            });
        }
        // Charge the prompt to its backend's prefill share (batch prompts too: they slow
        // the same streams). Threads admitting at once may each pass the check before
        // the other's charge lands; the window absorbs that.
        if let Some((slot, debit)) = self.share_debit(req, &target) {
            let _ = slot.fetch_update(Relaxed, Relaxed, |t| Some(t.max(now).saturating_add(debit)));
        }
        let class = req.priority;
        self.counters.outstanding_by_class[class.index()].fetch_add(1, Relaxed);
        self.counters.accepted[class.index()].fetch_add(1, Relaxed);
        Ok(Permit {
            counters: self.counters.clone(),
            class,
            finished: false,
        })
    }

    /// Requests accepted and not yet finished.
    pub fn outstanding(&self) -> u32 {
        self.counters.outstanding.load(Relaxed)
    }

    /// Outstanding requests of one priority class.
    pub fn outstanding_of(&self, class: Priority) -> u32 {
        self.counters.outstanding_by_class[class.index()].load(Relaxed)
    }

    pub fn stats(&self) -> AdmissionStats {
        let c = &self.counters;
        AdmissionStats {
            outstanding: c.outstanding.load(Relaxed),
            accepted: [c.accepted[0].load(Relaxed), c.accepted[1].load(Relaxed)],
            rejected: std::array::from_fn(|i| c.rejected[i].load(Relaxed)),
            finished: std::array::from_fn(|i| c.finished[i].load(Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests;
