//! Admission control: whether a request is taken on at all. Queues are bounded globally
//! and per backend, batch work is shed before interactive work (it is admitted only below
//! lower watermarks), and a request whose predicted time to first token already misses its
//! deadline is refused up front rather than left to time out. Every refusal carries a
//! [`RejectReason`] that maps to one gRPC status at the boundary.
//!
//! Nothing accepted is dropped silently: an accepted request holds a [`Permit`] that must
//! be finished with an [`Outcome`]. A permit dropped unfinished is counted as
//! `abandoned`, so `accepted = Σ outcomes + outstanding` always holds and a leak shows up
//! in the counters instead of vanishing. Pure and lock-free: counters are atomics shared by
//! every thread that admits.

use crate::engine::LoadSnapshot;
use crate::fleet::BackendId;
use crate::request::{Nanos, Priority, Request};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// gRPC status codes used here (grpc/grpc `doc/statuscodes.md`).
pub mod grpc_code {
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const UNAVAILABLE: i32 = 14;
}

/// Why a request was refused. Each variant's doc names the gRPC status it becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The global outstanding limit is reached. → `RESOURCE_EXHAUSTED` (8).
    QueueFull,
    /// A batch request arrived above the batch watermark: batch is shed first.
    /// → `RESOURCE_EXHAUSTED` (8).
    BatchShed,
    /// The chosen backend's waiting queue is at its limit. → `RESOURCE_EXHAUSTED` (8).
    BackendQueueFull,
    /// No backend is serving (all failed, or the fleet is empty). → `UNAVAILABLE` (14).
    NoHealthyBackend,
    /// The scheduler is draining for shutdown and takes nothing new. → `UNAVAILABLE` (14),
    /// which clients treat as "retry elsewhere".
    Draining,
    /// The predicted time to first token is later than the request's deadline.
    /// → `DEADLINE_EXCEEDED` (4).
    DeadlineUnmeetable,
    /// The request asks for nothing (zero output tokens). → `INVALID_ARGUMENT` (3).
    InvalidRequest,
}

impl RejectReason {
    pub const ALL: [RejectReason; 7] = [
        RejectReason::QueueFull,
        RejectReason::BatchShed,
        RejectReason::BackendQueueFull,
        RejectReason::NoHealthyBackend,
        RejectReason::Draining,
        RejectReason::DeadlineUnmeetable,
        RejectReason::InvalidRequest,
    ];

    /// The gRPC status code this reason becomes at the API boundary.
    pub fn grpc_code(self) -> i32 {
        match self {
            RejectReason::QueueFull | RejectReason::BatchShed | RejectReason::BackendQueueFull => {
                grpc_code::RESOURCE_EXHAUSTED
            }
            RejectReason::NoHealthyBackend | RejectReason::Draining => grpc_code::UNAVAILABLE,
            RejectReason::DeadlineUnmeetable => grpc_code::DEADLINE_EXCEEDED,
            RejectReason::InvalidRequest => grpc_code::INVALID_ARGUMENT,
        }
    }

    /// Stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::QueueFull => "queue_full",
            RejectReason::BatchShed => "batch_shed",
            RejectReason::BackendQueueFull => "backend_queue_full",
            RejectReason::NoHealthyBackend => "no_healthy_backend",
            RejectReason::Draining => "draining",
            RejectReason::DeadlineUnmeetable => "deadline_unmeetable",
            RejectReason::InvalidRequest => "invalid_request",
        }
    }

    /// Human-readable explanation, for status messages.
    pub fn message(self) -> &'static str {
        match self {
            RejectReason::QueueFull => "scheduler queue is full",
            RejectReason::BatchShed => "batch requests are being shed under load",
            RejectReason::BackendQueueFull => "the chosen backend's queue is full",
            RejectReason::NoHealthyBackend => "no backend is serving",
            RejectReason::Draining => "the scheduler is draining and takes no new requests",
            RejectReason::DeadlineUnmeetable => {
                "the predicted time to first token is later than the request's deadline"
            }
            RejectReason::InvalidRequest => "the request asks for zero output tokens",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// How an accepted request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// All tokens delivered.
    Completed,
    /// The client went away; the sequence was aborted and its KV freed.
    Cancelled,
    /// The request's deadline passed before it completed.
    DeadlineExceeded,
    /// Its backend failed and it could not be moved.
    Failed,
    /// The permit was dropped without an outcome: a bug in the caller, made visible.
    Abandoned,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Completed,
        Outcome::Cancelled,
        Outcome::DeadlineExceeded,
        Outcome::Failed,
        Outcome::Abandoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Cancelled => "cancelled",
            Outcome::DeadlineExceeded => "deadline_exceeded",
            Outcome::Failed => "failed",
            Outcome::Abandoned => "abandoned",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Queue bounds.
#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Requests admitted and not yet finished, over the whole scheduler.
    pub max_outstanding: u32,
    /// Batch requests are admitted only while outstanding < this fraction of the limit.
    pub batch_watermark: f64,
    /// Waiting (not yet running) requests one backend may hold, for interactive requests.
    pub max_waiting_per_backend: u32,
    /// The same bound for batch requests; lower, so batch backs off first.
    pub batch_waiting_per_backend: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_outstanding: 4096,
            batch_watermark: 0.75,
            max_waiting_per_backend: 128,
            batch_waiting_per_backend: 32,
        }
    }
}

/// Where the router would send a request, as admission needs to know it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// The policy found no serving backend.
    NoBackend,
    /// The scheduler is shutting down.
    ShuttingDown,
    /// The policy's choice, its load and the predicted time to first token there.
    Backend {
        id: BackendId,
        load: LoadSnapshot,
        predicted_ttft_ns: Nanos,
    },
}

#[derive(Debug, Default)]
struct Counters {
    outstanding: AtomicU32,
    outstanding_by_class: [AtomicU32; 2],
    accepted: [AtomicU64; 2],
    rejected: [AtomicU64; RejectReason::ALL.len()],
    finished: [AtomicU64; Outcome::ALL.len()],
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
            counters: Arc::default(),
        }
    }

    pub fn config(&self) -> &AdmissionConfig {
        &self.config
    }

    /// The same counters under new bounds (a config reload): permits already issued keep
    /// counting against the new limits, so a reload never lets the bound be overrun.
    pub fn reconfigured(&self, config: AdmissionConfig) -> Admission {
        Admission {
            config,
            counters: self.counters.clone(),
        }
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
        let limit = if batch {
            (f64::from(self.config.max_outstanding) * self.config.batch_watermark) as u32
        } else {
            self.config.max_outstanding
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
mod tests {
    use super::*;

    fn req(priority: Priority) -> Request {
        Request {
            prompt_tokens: 100,
            max_tokens: 10,
            priority,
            ..Default::default()
        }
    }

    fn backend(waiting: u32, ttft: Nanos) -> Target {
        Target::Backend {
            id: BackendId(0),
            load: LoadSnapshot {
                waiting,
                ..Default::default()
            },
            predicted_ttft_ns: ttft,
        }
    }

    fn small() -> Admission {
        Admission::new(AdmissionConfig {
            max_outstanding: 8,
            batch_watermark: 0.5,
            max_waiting_per_backend: 4,
            batch_waiting_per_backend: 2,
        })
    }

    #[test]
    fn batch_is_shed_before_interactive() {
        let a = small();
        let mut permits = Vec::new();
        for _ in 0..4 {
            permits.push(
                a.admit(&req(Priority::Batch), backend(0, 0), None, 0)
                    .unwrap(),
            );
        }
        assert_eq!(
            a.admit(&req(Priority::Batch), backend(0, 0), None, 0)
                .unwrap_err(),
            RejectReason::BatchShed
        );
        for _ in 0..4 {
            permits.push(
                a.admit(&req(Priority::Interactive), backend(0, 0), None, 0)
                    .unwrap(),
            );
        }
        assert_eq!(
            a.admit(&req(Priority::Interactive), backend(0, 0), None, 0)
                .unwrap_err(),
            RejectReason::QueueFull
        );
        assert_eq!(a.outstanding_of(Priority::Batch), 4);
        permits.pop().unwrap().finish(Outcome::Completed);
        assert!(a
            .admit(&req(Priority::Interactive), backend(0, 0), None, 0)
            .is_ok_and(|p| {
                p.finish(Outcome::Cancelled);
                true
            }));
        let s = a.stats();
        assert_eq!(s.rejected(RejectReason::BatchShed), 1);
        assert_eq!(s.rejected(RejectReason::QueueFull), 1);
        assert!(s.balanced(), "{s:?}");
    }

    #[test]
    fn per_backend_queues_and_deadlines() {
        let a = small();
        let b = req(Priority::Batch);
        let i = req(Priority::Interactive);
        assert_eq!(
            a.admit(&b, backend(2, 0), None, 0).unwrap_err(),
            RejectReason::BackendQueueFull
        );
        a.admit(&i, backend(2, 0), None, 0)
            .unwrap()
            .finish(Outcome::Completed);
        assert_eq!(
            a.admit(&i, backend(4, 0), None, 0).unwrap_err(),
            RejectReason::BackendQueueFull
        );
        assert_eq!(
            a.admit(&i, backend(0, 500), Some(1_000), 600).unwrap_err(),
            RejectReason::DeadlineUnmeetable
        );
        a.admit(&i, backend(0, 400), Some(1_000), 600)
            .unwrap()
            .finish(Outcome::Completed);
        assert_eq!(
            a.admit(&i, Target::NoBackend, None, 0).unwrap_err(),
            RejectReason::NoHealthyBackend
        );
        assert_eq!(
            a.admit(&i, Target::ShuttingDown, None, 0).unwrap_err(),
            RejectReason::Draining
        );
        let empty = Request { max_tokens: 0, ..i };
        assert_eq!(
            a.admit(&empty, backend(0, 0), None, 0).unwrap_err(),
            RejectReason::InvalidRequest
        );
        assert_eq!(a.outstanding(), 0);
    }

    #[test]
    fn dropped_permits_are_counted_not_lost() {
        let a = small();
        {
            let _forgotten = a
                .admit(&req(Priority::Interactive), backend(0, 0), None, 0)
                .unwrap();
        }
        let s = a.stats();
        assert_eq!(s.finished(Outcome::Abandoned), 1);
        assert_eq!(s.outstanding, 0);
        assert!(s.balanced());
    }

    #[test]
    fn reasons_map_to_grpc_codes_and_stable_labels() {
        let codes: Vec<i32> = RejectReason::ALL.iter().map(|r| r.grpc_code()).collect();
        assert_eq!(codes, [8, 8, 8, 14, 14, 4, 3]);
        let labels: std::collections::BTreeSet<_> =
            RejectReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), RejectReason::ALL.len());
        assert!(labels
            .iter()
            .all(|l| l.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
    }

    #[test]
    fn the_global_limit_holds_under_concurrent_admission() {
        let a = Admission::new(AdmissionConfig {
            max_outstanding: 100,
            ..Default::default()
        });
        let held: Vec<Vec<Permit>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..1000)
                            .filter_map(|_| {
                                a.admit(&req(Priority::Interactive), backend(0, 0), None, 0)
                                    .ok()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(held.iter().map(Vec::len).sum::<usize>(), 100);
        assert_eq!(a.stats().rejected(RejectReason::QueueFull), 3900);
        for p in held.into_iter().flatten() {
            p.finish(Outcome::Completed);
        }
        assert!(a.stats().balanced());
    }
}
