//! The vocabulary of admission's answers: why a request was refused ([`RejectReason`],
//! each mapping to one gRPC status and one metric label) and how an accepted one ended
//! ([`Outcome`]), as the daemon's counters, replay's tallies and both front ends name them.

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
    /// An interactive request is predicted to miss its SLO (first token, or pace of tokens)
    /// by more than [`AdmissionConfig::slo_shed_factor`]. → `RESOURCE_EXHAUSTED` (8), with
    /// a retry hint from [`Admission::drain_ns`].
    SloUnmeetable,
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
    pub const ALL: [RejectReason; 8] = [
        RejectReason::QueueFull,
        RejectReason::BatchShed,
        RejectReason::BackendQueueFull,
        RejectReason::SloUnmeetable,
        RejectReason::NoHealthyBackend,
        RejectReason::Draining,
        RejectReason::DeadlineUnmeetable,
        RejectReason::InvalidRequest,
    ];

    /// The gRPC status code this reason becomes at the API boundary.
    pub fn grpc_code(self) -> i32 {
        match self {
            RejectReason::QueueFull
            | RejectReason::BatchShed
            | RejectReason::BackendQueueFull
            | RejectReason::SloUnmeetable => grpc_code::RESOURCE_EXHAUSTED,
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
            RejectReason::SloUnmeetable => "slo_unmeetable",
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
            RejectReason::SloUnmeetable => {
                "the predicted time to first token misses the request's TTFT SLO"
            }
            RejectReason::NoHealthyBackend => "no backend is serving",
            RejectReason::Draining => "the scheduler is draining and takes no new requests",
            RejectReason::DeadlineUnmeetable => {
                "the predicted time to first token is later than the request's deadline"
            }
            RejectReason::InvalidRequest => "the request asks for zero output tokens",
        }
    }

    #[inline]
    pub(super) fn index(self) -> usize {
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

    #[inline]
    pub(super) fn index(self) -> usize {
        self as usize
    }
}
