//! Faults in virtual time: a [`FaultPlan`] resolved against the fleet's backends, applied
//! at its simulated instants (fail, recover, slow down), and the evacuation of a failed
//! backend: requests that produced no token yet are routed again; streaming ones continue
//! elsewhere, prefilling the prompt plus the tokens already produced (counted by the
//! engine, moved by the core's [`Request::resumed_after`], as the daemon does), up to the
//! retry budget, after which they count as `backend_failed`.

use super::{InFlight, Replay};
use crate::admission::Outcome;
use crate::fleet::{BackendId, BackendState};
use crate::policy::Route;
use crate::request::{Nanos, Request, RequestId};
use crate::sim::faults::{FaultAction, FaultPlan, FaultTarget};

/// What a fault plan did to one replay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultSummary {
    /// Fault events applied.
    pub faults: u64,
    /// Requests routed again because their backend failed before their first token.
    pub rerouted: u64,
    /// Streaming requests continued on another backend.
    pub migrated: u64,
    /// Requests lost to failures (retry budget spent, or nowhere to go).
    pub failed: u64,
    /// Backends the straggler check ejected, and re-admitted after probes.
    pub ejected: u64,
    pub readmitted: u64,
}

impl Replay {
    /// Applies `plan` during the replay. Its targets must name pools or backends of this
    /// fleet (`<pool>-<index>`).
    pub fn with_faults(mut self, plan: &FaultPlan) -> Result<Replay, String> {
        let membership = self.view.membership_arc().clone();
        let mut names = Vec::new();
        for pool in membership.pools() {
            for (k, (id, _)) in membership.pool_backends(pool.id).enumerate() {
                names.push((
                    pool.name().to_string(),
                    format!("{}-{k}", pool.name()),
                    id.index(),
                ));
            }
        }
        for ev in &plan.events {
            let backends: Vec<usize> = match &ev.target {
                FaultTarget::Pool(p) => names.iter().filter(|n| n.0 == *p).map(|n| n.2).collect(),
                FaultTarget::Backend(b) => {
                    names.iter().filter(|n| n.1 == *b).map(|n| n.2).collect()
                }
            };
            if backends.is_empty() {
                // Named as the file has it: its `[[fault]]` entry and key, and the names
                // of the kind it asked for.
                let (field, kind, name, mut known) = match &ev.target {
                    FaultTarget::Pool(p) => (
                        "pool",
                        "pool",
                        p,
                        names.iter().map(|n| n.0.as_str()).collect::<Vec<_>>(),
                    ),
                    FaultTarget::Backend(b) => (
                        "backend",
                        "backend",
                        b,
                        names.iter().map(|n| n.1.as_str()).collect(),
                    ),
                };
                known.dedup();
                return Err(format!(
                    "field `fault[{}].{field}`: no {kind} `{name}` in this fleet ({kind}s: {})",
                    ev.entry,
                    known.join(", ")
                ));
            }
            self.faults.push((ev.at_ns, backends, ev.action));
        }
        Ok(self)
    }

    pub(super) fn apply_fault(&mut self) {
        let (t, backends, action) = self.faults[self.next_fault].clone();
        self.next_fault += 1;
        self.now = self.now.max(t);
        let t = self.now;
        self.summary.faults += 1;
        for &b in &backends {
            self.step_backend(b, t);
            // Steps so far ran at the old factor.
            self.feed_step_ratio(b);
            let id = BackendId(b as u32);
            match action {
                FaultAction::Slowdown(f) => {
                    self.clocks[b].set_factor(t, f);
                    self.wake_stragglers(t);
                }
                FaultAction::Recover => {
                    self.clocks[b].set_factor(t, 1.0);
                    let _ = self.view.set_state(id, BackendState::Serving);
                }
                FaultAction::Fail => {
                    let _ = self.view.set_state(id, BackendState::Failed);
                }
            }
            self.reschedule(b);
        }
        if action == FaultAction::Fail {
            for &b in &backends {
                self.evacuate(b, t);
            }
        }
    }

    /// Moves every request off failed backend `b` at fleet time `t`.
    pub(super) fn evacuate(&mut self, b: usize, t: Nanos) {
        let mut victims: Vec<RequestId> = self
            .in_flight
            .iter()
            // KV on a link is on no engine; its arrival finds it a live decode backend.
            .filter(|(_, f)| f.backend.index() == b && !f.in_transfer)
            .map(|(&id, _)| id)
            .collect();
        // Hash order is not stable across runs; ids are.
        victims.sort_unstable();
        let local = self.clocks[b].local(t);
        for id in victims {
            // The engine knows what the request produced by now, as the daemon's driver,
            // which delivers every token, does.
            let produced = self.engines[b].tokens_produced(id, local).unwrap_or(0);
            self.engines[b].abort(id, local);
            let mut f = self.in_flight.remove(&id).expect("victim in flight");
            // `f.req` already counts earlier moves; the core's routine adds this one, and
            // the policy routes the enlarged request, as the daemon's does.
            let moved = match f.req.resumed_after(produced) {
                Some(m) if f.moves < self.cfg.migration_retries => m,
                _ => {
                    self.lose(f);
                    continue;
                }
            };
            let Some(nb) = self.policy.pick(&moved, &self.live(t), t) else {
                self.lose(f);
                continue;
            };
            let nb = nb.index();
            let engine_req = Request {
                arrival: self.clocks[nb].local(t),
                ..moved.clone()
            };
            self.step_backend(nb, t);
            match self.engines[nb].admit(engine_req, self.clocks[nb].local(t)) {
                Ok(()) => {
                    if f.first_token_at.is_some() {
                        self.summary.migrated += 1;
                    } else {
                        self.summary.rerouted += 1;
                    }
                    self.policy.on_routed(
                        &moved,
                        Route::whole(BackendId(nb as u32)),
                        &self.live(t),
                        t,
                    );
                    f.req.prompt_tokens = moved.prompt_tokens;
                    f.req.max_tokens = moved.max_tokens;
                    f.resumed += produced;
                    f.moves += 1;
                    f.backend = BackendId(nb as u32);
                    // The request now belongs to the pool that will complete it.
                    self.per_pool[f.pool].requests -= 1;
                    f.pool = self.backend_pool[nb];
                    self.per_pool[f.pool].requests += 1;
                    self.in_flight.insert(id, f);
                }
                Err(_) => self.lose(f),
            }
            self.publish_load(nb, t);
            self.reschedule(nb);
        }
        self.publish_load(b, t);
        self.reschedule(b);
    }

    pub(super) fn lose(&mut self, f: InFlight) {
        // A terminal outcome like any other, as the daemon tells its policy.
        self.policy
            .on_finished(&f.req, f.backend, f.resumed, self.now);
        self.summary.failed += 1;
        self.fleet.reject("backend_failed");
        self.per_pool[f.pool].reject("backend_failed");
        f.permit.finish(Outcome::Failed);
    }
}
