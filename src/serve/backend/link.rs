//! The fleet's KV links in wall-clock time: one task owns the pure link model replay uses
//! ([`crate::sim::transfer::Transfers`]: each prefill backend's transfers to one decode
//! pool share its link's rate, then pay its latency), sleeps until the model's next
//! arrival (scaled by `--time-scale` like every driver's steps), tells each prefill
//! backend when a transfer's last byte has left (it frees the KV then), and hands each
//! arrived request to its decode backend. A decode backend that stopped taking work while the KV
//! was on the way is replaced by another, chosen as replay does; with none left the
//! request's stream is told to move it.

use super::pd::{choose_decode, takes_handoffs, Handed};
use super::{secs, BackendHandle, Command, Delivery, DriverContext};
use crate::fleet::Link;
use crate::metrics::Metrics;
use crate::request::{Nanos, RequestId};
use crate::serve::clock::SimClock;
use crate::sim::Transfers;
use rustc_hash::FxHashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// As the drivers' (see `driver::TIMER_SLACK`): aim half a timer tick early.
const TIMER_SLACK: Duration = Duration::from_micros(500);

/// One hand-off's KV to move.
pub(super) struct Transfer {
    /// Fleet time of the hand-off.
    pub at: Nanos,
    /// The prefill backend (its transfers share its link).
    pub from: u32,
    pub to_pool: u32,
    /// The prefill backend's pool, for the transfer histogram's label.
    pub from_name: Arc<str>,
    pub link: Link,
    /// Bytes left to send when the prefill ended.
    pub bytes: f64,
    pub decode: Arc<BackendHandle>,
    pub handed: Box<Handed>,
}

/// What the link task is told.
enum Msg {
    Start(Transfer),
    /// The client went away while request `id`'s KV was being sent: it stops (at fleet
    /// time `at`), giving its share of the link back.
    Cancel {
        id: RequestId,
        at: Nanos,
    },
}

/// The sending end of the link task.
#[derive(Clone)]
pub struct KvLinks {
    tx: UnboundedSender<Msg>,
}

impl std::fmt::Debug for KvLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KvLinks")
    }
}

impl KvLinks {
    /// Starts the link task; it ends once every sender is gone.
    pub fn start(clock: SimClock, metrics: Arc<Metrics>) -> (KvLinks, LinkTask) {
        let (tx, rx) = unbounded_channel();
        (KvLinks { tx }, LinkTask { clock, metrics, rx })
    }

    pub(super) fn start_transfer(&self, t: Transfer) {
        if let Err(e) = self.tx.send(Msg::Start(t)) {
            // Only during shutdown: the request's stream moves or ends it.
            if let Msg::Start(t) = e.0 {
                t.handed.displace();
            }
        }
    }

    /// Stops sending request `id`'s KV (its client went away) at fleet time `at`.
    pub(super) fn cancel(&self, id: RequestId, at: Nanos) {
        let _ = self.tx.send(Msg::Cancel { id, at });
    }
}

/// The link task, before it runs (it needs the drivers' context, which holds its sender).
pub struct LinkTask {
    clock: SimClock,
    metrics: Arc<Metrics>,
    rx: UnboundedReceiver<Msg>,
}

impl LinkTask {
    /// Runs the task on the current runtime. It holds the context weakly, so the daemon's
    /// context (which holds the task's sender) is freed when the daemon is.
    pub fn spawn(self, ctx: &Arc<DriverContext>) {
        tokio::spawn(self.run(Arc::downgrade(ctx)));
    }

    async fn run(mut self, ctx: Weak<DriverContext>) {
        let mut transfers = Transfers::default();
        let mut pending: FxHashMap<RequestId, Transfer> = FxHashMap::default();
        let mut arrived = Vec::new();
        let mut sent = Vec::new();
        let mut last: Nanos = 0;
        loop {
            let due = transfers.next_at();
            let msg = match due.map(|t| self.clock.instant_at(t)) {
                Some(at) if at <= Instant::now() + TIMER_SLACK => {
                    tokio::task::yield_now().await;
                    None
                }
                Some(at) => tokio::select! {
                    biased;
                    m = self.rx.recv() => Some(m),
                    () = tokio::time::sleep_until(at.checked_sub(TIMER_SLACK).unwrap_or(at).into()) => None,
                },
                None => Some(self.rx.recv().await),
            };
            let mut now = self.clock.now().max(last);
            if msg.is_none() {
                now = now.max(due.unwrap_or(0));
            }
            last = now;
            transfers.advance_sent(now, &mut arrived, &mut sent);
            if !arrived.is_empty() || !sent.is_empty() {
                let Some(ctx) = ctx.upgrade() else { return };
                // The last byte has left: the prefill backend frees the KV.
                for (id, from, at) in sent.drain(..) {
                    if let Some(b) = ctx.handle(crate::fleet::BackendId(from)) {
                        b.send(Command::Sent { id, at });
                    }
                }
                for (id, at) in arrived.drain(..) {
                    if let Some(t) = pending.remove(&id) {
                        self.arrive(&ctx, t, at);
                    }
                }
            }
            let mut msg = msg;
            loop {
                match msg {
                    Some(None) => return,
                    Some(Some(Msg::Start(t))) => {
                        let id = t.handed.id();
                        transfers.start(t.at, t.from, t.to_pool, &t.link, id, t.bytes);
                        pending.insert(id, t);
                    }
                    // Off the link: nothing arrives for it. One already paying its
                    // latency arrives, and is dropped (its client is gone).
                    Some(Some(Msg::Cancel { id, at })) if transfers.cancel(at.max(now), id) => {
                        pending.remove(&id);
                    }
                    Some(Some(Msg::Cancel { .. })) | None => {}
                }
                msg = match self.rx.try_recv() {
                    Ok(t) => Some(Some(t)),
                    Err(_) => break,
                };
            }
        }
    }

    /// The KV of `t` arrived at fleet time `at`: its decode backend takes it.
    fn arrive(&self, ctx: &DriverContext, t: Transfer, at: Nanos) {
        self.metrics
            .kv_transfer(&t.from_name, &t.decode.pool)
            .record(secs(at.saturating_sub(t.at)));
        let handed = t.handed;
        if handed.abandoned() {
            return;
        }
        let membership = ctx.board.membership();
        let alive = |d: &BackendHandle| takes_handoffs(membership.backend(d.id).map(|e| e.state));
        let decode = if alive(&t.decode) {
            t.decode
        } else {
            // Its decode backend stopped while the KV was on the way.
            match choose_decode(ctx, &handed.req) {
                Some(d) if handed.handed_to(&d) => d,
                Some(_) => return,
                None => return handed.displace(),
            }
        };
        if let Err(h) = decode.send_transferred(handed) {
            // Its driver has exited (pool removed).
            let _ = h.flight.deliver.send(Delivery::Displaced);
        }
    }
}
