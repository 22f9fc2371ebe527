//! Prefill/decode disaggregation in virtual time: a prefill backend's hand-off puts the
//! prompt's KV on the link to the decode backend the policy paired it with (or one
//! chosen now, for a policy that picks single backends); the prefill backend frees the KV
//! when its last byte has left, and the KV's arrival admits the request there. The request belongs to the decode pool from the hand-off on: that pool
//! completes it, and counts the transfer time (hand-off to arrival, queueing on a shared
//! link included); the prefill pool counts the hand-off.

use super::Replay;
use crate::fleet::{BackendId, BackendState, LoadView};
use crate::policy::{pick_decode, PickRng};
use crate::request::{Nanos, Request, RequestId};

impl Replay {
    pub(super) fn on_handoff(
        &mut self,
        b: usize,
        id: RequestId,
        at: Nanos,
        kv_tokens: u32,
        generated: u32,
    ) {
        let Some(f) = self.in_flight.get(&id) else {
            // A straggler probe: nothing to send, its KV is freed at once.
            self.release_unsent(b, id);
            return;
        };
        let planned = f.decode.filter(|d| {
            self.view
                .membership()
                .backend(*d)
                .is_some_and(|e| e.state == BackendState::Serving)
        });
        let decode = planned.or_else(|| self.choose_decode(&f.req, at));
        let Some(decode) = decode else {
            let f = self.in_flight.remove(&id).expect("in flight");
            self.lose(f);
            self.release_unsent(b, id);
            return;
        };
        let (from_pool, to_pool) = (self.backend_pool[b], self.backend_pool[decode.index()]);
        let perf = &self.pools[from_pool].perf;
        let bytes = f64::from(kv_tokens) * perf.model.kv_bytes_per_token();
        let layers = perf.model.layers;
        let link = self.links.between(from_pool, to_pool);
        let f = self.in_flight.get_mut(&id).expect("in flight");
        let prefill_ns = at.saturating_sub(f.scheduled_at.unwrap_or(at));
        let exposed = link.exposed_bytes(bytes, layers, prefill_ns);
        self.transfers
            .start(at, b as u32, to_pool as u32, &link, id, exposed);
        f.handoff = Some((at, generated));
        f.in_transfer = true;
        f.backend = decode;
        self.per_pool[f.pool].requests -= 1;
        self.per_pool[f.pool].handoffs += 1;
        f.pool = to_pool;
        self.per_pool[to_pool].requests += 1;
    }

    /// Frees the KV of a hand-off that goes nowhere (the engine holds it until sent).
    fn release_unsent(&mut self, b: usize, id: RequestId) {
        let local = self.clocks[b].local(self.now);
        self.engines[b].release_handed_off(id, local);
    }

    /// A decode backend for a request whose prefill pick did not name one, or whose
    /// named one has failed since.
    fn choose_decode(&self, req: &Request, now: Nanos) -> Option<BackendId> {
        let mut rng = PickRng::for_request(0x5eed_d1ce, req);
        pick_decode(req, &self.live(now), &mut rng, 2).map(|(b, _)| b)
    }

    /// KV sent by `t` is freed on its prefill backend; KV that has arrived by `t` joins
    /// its decode backend's queue.
    pub(super) fn deliver(&mut self, t: Nanos) {
        self.now = self.now.max(t);
        let mut arrived = std::mem::take(&mut self.arrived);
        let mut sent = Vec::new();
        self.transfers.advance_sent(t, &mut arrived, &mut sent);
        for (id, from, at) in sent {
            let b = from as usize;
            self.step_backend(b, at);
            let local = self.clocks[b].local(at);
            if self.engines[b].release_handed_off(id, local) {
                self.publish_load(b, at);
                self.reschedule(b);
            }
        }
        for (id, at) in arrived.drain(..) {
            let Some(f) = self.in_flight.get_mut(&id) else {
                continue;
            };
            f.in_transfer = false;
            let (handoff_at, generated) = f.handoff.expect("handed off");
            let pool = f.pool;
            self.per_pool[pool].transfer.record_ns(at - handoff_at);
            let mut d = f.backend;
            // The decode side needs lengths, and the prompt's prefix hashes to cache the
            // arrived KV under (`Engine::admit_transferred`).
            let req = Request {
                id,
                arrival: 0,
                prompt_tokens: f.req.prompt_tokens,
                max_tokens: f.req.max_tokens,
                priority: f.req.priority,
                prefix_hashes: f.req.prefix_hashes.clone(),
                ..Request::default()
            };
            if self
                .view
                .membership()
                .backend(d)
                .is_none_or(|e| e.state != BackendState::Serving)
            {
                // Its decode backend failed while the KV was on the way.
                match self.choose_decode(&req, at) {
                    Some(nd) => d = nd,
                    None => {
                        let f = self.in_flight.remove(&id).expect("in flight");
                        self.lose(f);
                        continue;
                    }
                }
            }
            let nb = d.index();
            self.step_backend(nb, at);
            let local = self.clocks[nb].local(at);
            let engine_req = Request {
                arrival: local,
                ..req
            };
            match self.engines[nb].admit_transferred(engine_req, generated, local) {
                Ok(()) => {
                    let f = self.in_flight.get_mut(&id).expect("in flight");
                    f.backend = d;
                    if self.backend_pool[nb] != f.pool {
                        self.per_pool[f.pool].requests -= 1;
                        f.pool = self.backend_pool[nb];
                        self.per_pool[f.pool].requests += 1;
                    }
                }
                Err(_) => {
                    let f = self.in_flight.remove(&id).expect("in flight");
                    self.lose(f);
                }
            }
            self.publish_load(nb, at);
            self.reschedule(nb);
        }
        self.arrived = arrived;
    }
}
