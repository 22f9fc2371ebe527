//! Prefill/decode disaggregation in the daemon's simulated backends, with the engine and
//! policy replay runs (`sim::replay::handoff`): a prefill backend's engine hands a
//! request off after its first token; the driver sends the request's state (its client
//! mailbox included) with the prompt's KV over the fleet's link to the decode backend the
//! policy paired it with, or one chosen now by [`pick_decode`] as replay does; when the KV
//! has arrived the decode backend admits it ([`Engine::admit_transferred`]) and streams
//! the rest to the same client. The first token is held until the sequence joins a decode
//! batch: the client gets it from the decode side, as in vLLM's and SGLang's P/D and in
//! replay, so the transfer is part of TTFT.
//!
//! Nothing accepted is lost on the way: a decode backend that cannot take the request
//! (failed, retired, or out of room) answers `Displaced`, and the request's stream moves
//! it within its retry budget as for any failed backend. A client that went away while
//! the KV was on the link is dropped on arrival (its mailbox is abandoned).

use super::driver::{Driver, InFlight};
use super::link::Transfer;
use super::{BackendHandle, Decode, Delivery};
use crate::fleet::{BackendState, LoadView};
use crate::policy::{pick_decode, PickRng};
use crate::request::{Nanos, Request, RequestId};
use std::sync::Arc;

/// Seed of the decode pick made at hand-off time: replay's (`sim::replay::handoff`), so
/// both drivers pick alike.
const HANDOFF_SEED: u64 = 0x5eed_d1ce;

/// A handed-off request on its way to a decode backend.
pub struct Handed {
    /// Lengths, priority and prefix hashes as the prefill engine took it (the decode side
    /// caches the arrived KV under the hashes).
    pub(super) req: Request,
    /// Output tokens the prefill side produced.
    pub(super) generated: u32,
    pub(super) flight: InFlight,
}

impl std::fmt::Debug for Handed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handed")
            .field("req", &self.req)
            .field("generated", &self.generated)
            .finish_non_exhaustive()
    }
}

impl Handed {
    pub(super) fn id(&self) -> RequestId {
        self.req.id
    }

    /// The client's end is gone (cancelled, or its deadline ran out).
    pub(super) fn abandoned(&self) -> bool {
        self.flight.deliver.is_abandoned()
    }

    /// Tells the client's stream its request could not go on here; it moves it.
    pub fn displace(self) {
        let _ = self.flight.deliver.send(Delivery::Displaced);
    }

    /// Tells the client's stream which backend continues it.
    pub(super) fn handed_to(&self, decode: &Arc<BackendHandle>) -> bool {
        self.flight
            .deliver
            .send(Delivery::HandedOff(Decode(decode.clone())))
    }
}

/// Whether a decode backend can still take handed-off work: serving, or draining (it
/// finishes what was already on its way).
pub(super) fn takes_handoffs(state: Option<BackendState>) -> bool {
    matches!(state, Some(BackendState::Serving | BackendState::Draining))
}

/// A decode backend for `req` now, as replay chooses one when its prefill pick named
/// none or the one named has failed.
pub(super) fn choose_decode(
    ctx: &super::DriverContext,
    req: &Request,
) -> Option<Arc<BackendHandle>> {
    let view = ctx.board.view();
    let mut rng = PickRng::for_request(HANDOFF_SEED, req);
    let (b, _) = pick_decode(req, &view as &dyn LoadView, &mut rng, 2)?;
    ctx.handle(b)
}

impl Driver {
    /// The engine handed request `id` off at fleet time `at`: `kv_tokens` of KV move to a
    /// decode backend, which continues after `generated` output tokens.
    pub(super) fn hand_off(&mut self, id: RequestId, at: Nanos, kv_tokens: u32, generated: u32) {
        let Some(mut flight) = self.requests.remove(&id) else {
            return;
        };
        let (prompt_tokens, max_tokens, priority) = flight.engine_req;
        let req = Request {
            id,
            prompt_tokens,
            max_tokens,
            priority,
            prefix_hashes: std::mem::take(&mut flight.hashes),
            ..Request::default()
        };
        let handed = Handed {
            req,
            generated,
            flight,
        };
        let membership = self.ctx.board.membership();
        let planned = handed.flight.decode.clone().filter(|d| {
            membership
                .backend(d.id)
                .is_some_and(|e| e.state == BackendState::Serving)
        });
        let Some(decode) = planned.or_else(|| choose_decode(&self.ctx, &handed.req)) else {
            tracing::debug!(backend = %self.handle.name, id, "no decode backend for a hand-off");
            handed.displace();
            self.release_unsent(id);
            return;
        };
        if !handed.handed_to(&decode) {
            // The client went away during the prefill.
            self.release_unsent(id);
            return;
        }
        let perf = self.engine.perf();
        let bytes = f64::from(kv_tokens) * perf.model.kv_bytes_per_token();
        let layers = perf.model.layers;
        let from_pool = membership.backend(self.handle.id).map(|e| e.pool.index());
        let to_pool = membership.backend(decode.id).map(|e| e.pool.index());
        let (Some(from_pool), Some(to_pool)) = (from_pool, to_pool) else {
            handed.displace();
            self.release_unsent(id);
            return;
        };
        let link = self.ctx.link(from_pool, to_pool);
        let prefill_ns = at.saturating_sub(handed.flight.scheduled_at.unwrap_or(at));
        let exposed = link.exposed_bytes(bytes, layers, prefill_ns);
        self.ctx.kv.start_transfer(Transfer {
            at,
            from: self.handle.id.0,
            to_pool: to_pool as u32,
            from_name: self.handle.pool.clone(),
            link,
            bytes: exposed,
            decode,
            handed: Box::new(handed),
        });
    }

    /// A handed-off request whose KV arrived by fleet time `now_fleet` joins this
    /// backend's decode batch.
    pub(super) fn take_transferred(&mut self, h: Handed, now_fleet: Nanos) {
        if h.abandoned() {
            return;
        }
        if self.retiring || !takes_handoffs(self.state()) {
            h.displace();
            return;
        }
        let now = self.clock.local(now_fleet);
        let Handed {
            req,
            generated,
            mut flight,
        } = h;
        let id = req.id;
        let req = Request {
            arrival: now,
            ..req
        };
        match self.engine.admit_transferred(req, generated, now) {
            Ok(()) => {
                // Its latencies from here on are this pool's, as replay counts them.
                flight.hist = self.histograms(&flight.policy.clone());
                flight.split = false;
                flight.held = true;
                flight.decode = None;
                flight.scheduled_at = None;
                self.requests.insert(id, flight);
            }
            Err(e) => {
                tracing::debug!(backend = %self.handle.name, id, error = %e, "handed-off request refused");
                let _ = flight.deliver.send(Delivery::Displaced);
            }
        }
    }
}
