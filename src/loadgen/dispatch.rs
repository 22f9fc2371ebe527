//! The sending schedule: one thread walks the trace, sleeps until each request's due time
//! and spawns the request's task on the runtime. It never waits on a response, so a slow
//! server cannot slow the schedule down; it only consults the in-flight count, to refuse
//! (and count) a send over the concurrency limit rather than wait for a free slot.
//!
//! The schedule runs on its own thread with the OS sleep rather than as a tokio task: the
//! tokio timer wheel has a resolution of one millisecond, which at a time scale of 20 is
//! 20 ms of simulated time on every send, while a thread sleep is accurate to tens of
//! microseconds.

use super::openai;
use super::stream::{self, Outcome};
use crate::request::{Nanos, Slo};
use crate::trace::TraceRecord;
use crate::wire::inference_client::InferenceClient;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;
use tonic::transport::Channel;

/// What the schedule tells the collector.
pub(super) enum Event {
    /// Due while the concurrency limit was reached: never sent.
    NotSent { scheduled_ns: Nanos },
    /// A sent request has ended, one way or another.
    Done(Box<Outcome>),
}

/// The client requests go out through.
pub(super) enum Sender {
    /// gRPC channels, requests spread round-robin over them.
    Grpc(Vec<InferenceClient<Channel>>),
    /// One HTTP client with its own connection pool.
    OpenAi(Arc<openai::Client>),
}

impl Sender {
    /// Sends request `index` from its own task and returns what the client saw.
    fn spawn_send(
        &self,
        runtime: &tokio::runtime::Handle,
        index: u64,
        rec: TraceRecord,
        due: Instant,
        slo: Slo,
        done: impl FnOnce(Outcome) + Send + 'static,
    ) {
        match self {
            Sender::Grpc(clients) => {
                let client = clients[index as usize % clients.len()].clone();
                runtime
                    .spawn(async move { done(stream::send(client, index, rec, due, slo).await) });
            }
            Sender::OpenAi(client) => {
                let client = client.clone();
                runtime.spawn(async move { done(client.send(index, rec, due, slo).await) });
            }
        }
    }
}

pub(super) struct Plan {
    pub start: Instant,
    pub time_scale: f64,
    pub concurrency_limit: Option<usize>,
    pub slo: Slo,
    pub sender: Sender,
    pub in_flight: Arc<AtomicUsize>,
    pub runtime: tokio::runtime::Handle,
}

impl Plan {
    /// The wall instant a record is due: its arrival compressed by the time scale.
    fn due(&self, arrival_ns: Nanos) -> Instant {
        self.start + Duration::from_secs_f64(arrival_ns as f64 / 1e9 / self.time_scale)
    }

    /// Sends every record on time; returns the first trace error, if any (records before
    /// it have been sent and are reported).
    pub fn run<I, E>(self, records: I, events: UnboundedSender<Event>) -> anyhow::Result<()>
    where
        I: Iterator<Item = Result<TraceRecord, E>>,
        E: Into<anyhow::Error>,
    {
        for (index, item) in records.enumerate() {
            let rec = item.map_err(Into::into)?;
            let due = self.due(rec.arrival_ns);
            sleep_until(due);
            if let Some(limit) = self.concurrency_limit {
                if self.in_flight.load(Ordering::Acquire) >= limit {
                    let _ = events.send(Event::NotSent {
                        scheduled_ns: rec.arrival_ns,
                    });
                    continue;
                }
            }
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            let (events, in_flight) = (events.clone(), self.in_flight.clone());
            self.sender.spawn_send(
                &self.runtime,
                index as u64,
                rec,
                due,
                self.slo,
                move |outcome| {
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                    let _ = events.send(Event::Done(Box::new(outcome)));
                },
            );
        }
        Ok(())
    }
}

#[allow(clippy::disallowed_methods)] // a driver owns time; see the module doc for why not tokio's
fn sleep_until(due: Instant) {
    loop {
        let now = Instant::now();
        if now >= due {
            return;
        }
        std::thread::sleep(due - now);
    }
}
