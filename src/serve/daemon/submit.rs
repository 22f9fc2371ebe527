//! The request path: route a validated request (claiming its backend against the routing
//! epoch so concurrent decisions do not herd), let admission accept or shed it, hand it to
//! the backend's driver and wait for the driver to admit it; and moving an accepted
//! request off a failed backend.

use super::{Accepted, Daemon, Placement, ROUTE_ATTEMPTS};
use crate::admission::{self, RejectReason, Target};
use crate::engine::AdmitError;
use crate::fleet::{BackendState, Claim, LoadView, MaskedView, PoolMask};
use crate::metrics::Frontend;
use crate::policy::Route;
use crate::request::Request;
use crate::serve::backend::{BackendHandle, Command, Delivery, Refusal, Resume};
use crate::serve::error::ServeError;
use crate::serve::mailbox::{mailbox, Inbox};
use crate::serve::routing::ActivePolicy;
use crate::serve::stream::RequestStream;
use crate::serve::upstream::{Ask, Sampling};
use crate::wire;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

/// Where a moved request went: its backend, the decode backend a prefill backend hands
/// it to (when paired), and its new mailbox.
pub(in crate::serve) type Relocated = (Arc<BackendHandle>, Option<Arc<BackendHandle>>, Inbox);

impl Daemon {
    /// [`Daemon::submit_via`] the gRPC front end.
    pub async fn submit(
        &self,
        req: wire::GenerateRequest,
        received: Instant,
        deadline: Option<Instant>,
    ) -> Result<Accepted, ServeError> {
        self.submit_via(Frontend::Grpc, req, received, deadline)
            .await
    }

    /// Validates, routes, admits and hands over one request: the one path every front end
    /// translates its requests onto. Every refusal is counted by its reason
    /// (`dujiang_requests_shed_total`), whichever step refused.
    pub async fn submit_via(
        &self,
        frontend: Frontend,
        req: wire::GenerateRequest,
        received: Instant,
        deadline: Option<Instant>,
    ) -> Result<Accepted, ServeError> {
        let result = self
            .try_submit(frontend, req, Sampling::new(), received, deadline, None)
            .await;
        self.count_refusal(&result, frontend);
        result
    }

    /// [`Daemon::submit_via`] with sampling fields (`temperature`, `stop`, ...) that a
    /// real engine serving the request is sent as they came (simulated ones ignore them),
    /// for a caller that reads nothing before the request's start (or, `Wake::End`, its
    /// end): without a deadline to enforce meanwhile, its task is not woken for the
    /// backend's admission, which is counted when the driver posts it
    /// ([`Inbox::count_admission`]); a poll of a whole HTTP connection fewer per request.
    pub async fn submit_with(
        self: &Arc<Self>,
        frontend: Frontend,
        req: wire::GenerateRequest,
        sampling: Sampling,
        received: Instant,
        deadline: Option<Instant>,
        wake: Wake,
    ) -> Result<Accepted, ServeError> {
        let quiet = deadline.is_none().then_some((self, wake));
        let result = self
            .try_submit(frontend, req, sampling, received, deadline, quiet)
            .await;
        self.count_refusal(&result, frontend);
        result
    }

    /// Every refusal counted by its reason (`dujiang_requests_shed_total`).
    fn count_refusal(&self, result: &Result<Accepted, ServeError>, frontend: Frontend) {
        if let Err(e) = result {
            self.metrics.shed(self.refusal_reason(e), frontend);
        }
    }

    /// Why a request was refused before acceptance, as the refusal counter labels it.
    fn refusal_reason(&self, e: &ServeError) -> &'static str {
        match e {
            ServeError::Shed { reason, .. } | ServeError::InvalidArgument { reason, .. } => reason,
            ServeError::DeadlineUnmeetable(_) | ServeError::DeadlineExceeded { .. } => {
                RejectReason::DeadlineUnmeetable.as_str()
            }
            ServeError::Unavailable(_) if !self.accepting.load(Relaxed) => {
                RejectReason::Draining.as_str()
            }
            ServeError::Unavailable(_) => RejectReason::NoHealthyBackend.as_str(),
            ServeError::NotFound(_)
            | ServeError::AlreadyExists(_)
            | ServeError::FailedPrecondition(_) => RejectReason::InvalidRequest.as_str(),
        }
    }

    async fn try_submit(
        &self,
        frontend: Frontend,
        req: wire::GenerateRequest,
        sampling: Sampling,
        received: Instant,
        deadline: Option<Instant>,
        quiet: Option<(&Arc<Daemon>, Wake)>,
    ) -> Result<Accepted, ServeError> {
        if !self.accepting.load(Relaxed) {
            return Err(ServeError::Unavailable(
                "the daemon is shutting down".into(),
            ));
        }
        let mut v = self.validate(req)?;
        let ask = Arc::new(Ask {
            messages: std::mem::take(&mut v.messages),
            prompt: std::mem::take(&mut v.prompt),
            sampling,
            deadline,
        });
        let id = self.next_id.fetch_add(1, Relaxed);
        let request = Request {
            id,
            arrival: self.clock.sim_at(received),
            prompt_tokens: v.prompt_tokens,
            max_tokens: v.max_tokens,
            priority: v.priority,
            slo: v.slo,
            prefix_hashes: v.prefix_hashes,
            session: v.session,
        };
        let placement = self.place(&request, &v.model)?;
        let deadline_sim = deadline.map(|d| self.clock.sim_at(d));
        let permit = match self.admission.load().admit(
            &request,
            placement.target,
            deadline_sim,
            request.arrival,
        ) {
            Ok(p) => p,
            Err(reason) => {
                self.board.release(placement.handle.id, Claim::of(&request));
                return Err(self.rejection(reason, &request, &placement));
            }
        };
        let mut placement = placement;
        let mut permit = permit;
        // A backend may stop serving between the routing decision and its driver taking
        // the request (failed, drained, ejected, removed): the driver refuses it, and it
        // is routed again among the backends still serving, as often as a decision may
        // be retried. The client sees UNAVAILABLE only if no backend takes it.
        for attempt in 1.. {
            let backend = placement.handle;
            let decode = placement.decode;
            let route = Route {
                first: backend.id,
                decode: decode.as_ref().map(|d| d.id),
            };
            self.policy
                .load()
                .on_routed(&request, route, &self.board.view(), request.arrival);
            let (tx, mut deliveries) = mailbox();
            if let Some((_, wake)) = quiet {
                deliveries.count_admission(self.metrics.clone(), frontend, wake == Wake::End);
            }
            let answer = if backend.send(Command::Admit {
                req: request.clone(),
                claim: Claim::of(&request),
                deliver: tx,
                resume: None,
                policy: placement.policy,
                ask: ask.clone(),
                decode: decode.clone(),
            }) {
                // The backend may now hold the request. Should this future be dropped
                // before its answer is read (the client went away), the guard tells the
                // backend to drop it too, so it does not run, holding KV, for nobody.
                let mut guard = Handover {
                    daemon: quiet.map(|(d, _)| d),
                    backend: &backend,
                    decode: &decode,
                    request: &request,
                    client_id: &v.client_id,
                    model: &v.model,
                    ask: &ask,
                    frontend,
                    received,
                    deadline,
                    held: Some((deliveries, permit)),
                };
                let answer = guard.inbox().recv().await;
                (deliveries, permit) = guard.disarm();
                answer
            } else {
                // The driver has exited (its pool was removed).
                self.board.release(backend.id, Claim::of(&request));
                None
            };
            let refused = match answer {
                Some(Delivery::Admitted) => {
                    // A quiet hand-over's was counted when the driver posted it.
                    if quiet.is_none() {
                        self.metrics.accepted(frontend);
                    }
                    // The request id is optional on the wire: one the client left empty
                    // is generated here, so every Started names its request.
                    let client_id = given_or_generated(v.client_id, request.id);
                    return Ok(Accepted {
                        client_id,
                        backend,
                        decode,
                        deliveries,
                        deadline,
                        received,
                        request,
                        model: v.model,
                        permit,
                        frontend,
                        ask,
                    });
                }
                Some(Delivery::Refused(Refusal::Engine(AdmitError::TooLarge {
                    needed,
                    capacity,
                }))) => ServeError::invalid(
                    "prompt_tokens",
                    format!(
                        "prompt plus max_tokens need {needed} tokens of KV cache; a {} backend holds {capacity}",
                        backend.chip
                    ),
                ),
                Some(Delivery::Refused(Refusal::Engine(e))) => {
                    ServeError::invalid("max_tokens", e.to_string())
                }
                _ if attempt < ROUTE_ATTEMPTS => {
                    tracing::debug!(backend = %backend.name, attempt, "backend stopped serving after routing; routing again");
                    match self.place(&request, &v.model) {
                        Ok(p) => {
                            placement = p;
                            continue;
                        }
                        Err(e) => e,
                    }
                }
                _ => ServeError::Unavailable(format!(
                    "backend {} is not taking work",
                    backend.name
                )),
            };
            // Never counted as accepted by the daemon's metrics; the admission controller
            // sees its slot given back as a failure.
            permit.finish(admission::Outcome::Failed);
            return Err(refused);
        }
        unreachable!("every attempt returns or continues")
    }

    /// Moves an accepted request whose backend failed: routed by the policy like a new
    /// request, but not subject to admission (it holds its slot already). `req` carries
    /// the prompt to prefill again and the tokens still owed.
    pub(in crate::serve) fn relocate(
        &self,
        req: Request,
        model: &str,
        resume: Option<Resume>,
        ask: Arc<Ask>,
    ) -> Result<Relocated, ServeError> {
        if !self.accepting.load(Relaxed) {
            return Err(ServeError::Unavailable(
                "the daemon is shutting down".into(),
            ));
        }
        let placement = self.place(&req, model)?;
        let backend = placement.handle;
        let policy = placement.policy;
        let decode = placement.decode;
        let route = Route {
            first: backend.id,
            decode: decode.as_ref().map(|d| d.id),
        };
        self.policy
            .load()
            .on_routed(&req, route, &self.board.view(), self.now());
        let (tx, rx) = mailbox();
        let claim = Claim::of(&req);
        if !backend.send(Command::Admit {
            req,
            claim,
            deliver: tx,
            resume,
            policy,
            ask,
            decode: decode.clone(),
        }) {
            self.board.release(backend.id, claim);
            return Err(ServeError::Unavailable(format!(
                "backend {} has stopped",
                backend.name
            )));
        }
        self.metrics.migration(resume.is_some());
        Ok((backend, decode, rx))
    }

    /// Asks the policy for a serving backend for `request`, claims it there (see
    /// [`AtomicLoadBoard::claim`]) and predicts its time to first token. A decision that
    /// raced another is taken again, up to [`ROUTE_ATTEMPTS`] times.
    fn place(&self, request: &Request, model: &str) -> Result<Placement, ServeError> {
        let policy = self.policy.load();
        for attempt in 1.. {
            let last = attempt == ROUTE_ATTEMPTS || !policy.reads_load();
            let seen = (!last).then(|| self.board.epoch());
            if let Some(p) = self.try_place(&policy, request, model, seen)? {
                return Ok(p);
            }
            policy.metrics(&self.metrics).retries.increment(1);
        }
        unreachable!("the last attempt always commits")
    }

    fn try_place(
        &self,
        policy: &ActivePolicy,
        request: &Request,
        model: &str,
        seen: Option<u64>,
    ) -> Result<Option<Placement>, ServeError> {
        let view = self.board.view();
        let mut mask = PoolMask::NONE;
        for p in view.membership().pools() {
            if p.config.perf.model.id == model {
                mask = mask.with(p.id);
            }
        }
        if mask == PoolMask::NONE {
            return Err(ServeError::invalid(
                "model",
                format!("no pool serves model `{model}`"),
            ));
        }
        let masked = MaskedView { inner: &view, mask };
        if masked.eligible_pools().next().is_none() {
            return Err(ServeError::Unavailable(format!(
                "no healthy backend serves model `{model}`"
            )));
        }
        let t0 = Instant::now();
        let route = policy.pick_route(request, &masked, &self.ctx.links, request.arrival);
        policy
            .metrics(&self.metrics)
            .decision
            .record(t0.elapsed().as_secs_f64());
        let picked = route.map(|r| r.first);
        let Some(id) = picked else {
            return Err(ServeError::Unavailable(format!(
                "no healthy backend serves model `{model}`"
            )));
        };
        let membership = view.membership();
        let Some(entry) = membership
            .backend(id)
            .filter(|e| e.state == BackendState::Serving)
        else {
            return Err(ServeError::Unavailable(format!(
                "policy chose backend {id:?}, which is not serving"
            )));
        };
        let handle = self
            .backends
            .load()
            .get(id.index())
            .cloned()
            .flatten()
            .ok_or_else(|| ServeError::Unavailable(format!("backend {id:?} has no driver")))?;
        // Read before the claim: the prediction adds this request itself.
        let load = masked.load(id);
        if !self.board.claim(id, Claim::of(request), seen) {
            return Ok(None);
        }
        let Some(pool) = membership.pool(entry.pool) else {
            self.board.release(id, Claim::of(request));
            return Err(ServeError::Unavailable(format!(
                "backend {id:?} has no pool"
            )));
        };
        // The pair's decode side, if the policy chose one and it is still there.
        let decode = route
            .and_then(|r| r.decode)
            .and_then(|d| self.backends.load().get(d.index()).cloned().flatten());
        Ok(Some(Placement {
            handle,
            decode,
            policy: policy.name.clone(),
            target: Target::predicted(id, pool, load, request),
        }))
    }

    /// Admission counters (accepted, rejected by reason, outstanding).
    pub fn admission_stats(&self) -> admission::AdmissionStats {
        self.admission.load().stats()
    }
}

/// The client's request id, or [`generated_id`] when it gave none.
fn given_or_generated(given: impl AsRef<str> + Into<String>, id: u64) -> String {
    if given.as_ref().is_empty() {
        generated_id(id)
    } else {
        given.into()
    }
}

/// `dj-<id>`, the id of a request whose client named none: digits by `itoa`, not through
/// the formatting machinery (it runs for most requests).
fn generated_id(id: u64) -> String {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(id);
    let mut s = String::with_capacity(3 + digits.len());
    s.push_str("dj-");
    s.push_str(digits);
    s
}

/// How a caller of [`Daemon::submit_with`] is first woken after the hand-over: by the
/// request's start (its placement known: a streamed answer's headers), or only by its
/// end (an answer sent whole).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    Started,
    End,
}

/// The hand-over's guard against its future being dropped while it waits for the
/// driver's answer (the client went away), unless disarmed first. A request the driver
/// admitted, counted but not read yet ([`Inbox::count_admission`]), is accepted: it ends
/// as a request whose client left mid-way does (its stream dropped: aborted on its
/// backend, counted cancelled, its admission slot given back). Any other is dropped on
/// its backend, and the mailbox abandoned so an admission on its way is not counted.
struct Handover<'a> {
    /// Set for a quiet hand-over (the only kind whose admission is counted unread).
    daemon: Option<&'a Arc<Daemon>>,
    backend: &'a Arc<BackendHandle>,
    decode: &'a Option<Arc<BackendHandle>>,
    request: &'a Request,
    /// As the client gave it (empty: none).
    client_id: &'a str,
    model: &'a str,
    ask: &'a Arc<Ask>,
    frontend: Frontend,
    received: Instant,
    deadline: Option<Instant>,
    held: Option<(Inbox, admission::Permit)>,
}

impl Handover<'_> {
    fn inbox(&mut self) -> &mut Inbox {
        &mut self.held.as_mut().expect("armed").0
    }

    fn disarm(mut self) -> (Inbox, admission::Permit) {
        self.held.take().expect("armed")
    }
}

impl Drop for Handover<'_> {
    fn drop(&mut self) {
        let Some((deliveries, permit)) = self.held.take() else {
            return;
        };
        match self.daemon {
            Some(daemon) if deliveries.keep_if_admitted() => {
                let client_id = given_or_generated(self.client_id, self.request.id);
                drop(RequestStream::new(
                    daemon.clone(),
                    Accepted {
                        client_id,
                        backend: self.backend.clone(),
                        decode: self.decode.clone(),
                        deliveries,
                        deadline: self.deadline,
                        received: self.received,
                        request: self.request.clone(),
                        model: self.model.to_owned(),
                        permit,
                        frontend: self.frontend,
                        ask: self.ask.clone(),
                    },
                ));
            }
            _ => {
                self.backend.send(Command::Abort {
                    id: self.request.id,
                });
            }
        }
    }
}

impl Daemon {
    /// The status a refusal by the admission controller becomes, per [`RejectReason`]'s
    /// documented mapping. A request shed by prediction is told to come back when the
    /// queue ahead of it is predicted to have drained (wall milliseconds, at least 1);
    /// one shed by a bound gets the configured hint.
    fn rejection(
        &self,
        reason: RejectReason,
        request: &Request,
        placement: &Placement,
    ) -> ServeError {
        let limits = **self.limits.load();
        let backend = &placement.handle;
        match reason {
            RejectReason::QueueFull | RejectReason::BatchShed => ServeError::Shed {
                reason: reason.as_str(),
                message: format!(
                    "{} ({} in flight at most)",
                    reason.message(),
                    limits.max_in_flight
                ),
                retry_after_ms: limits.retry_after_ms,
            },
            RejectReason::BackendQueueFull => ServeError::Shed {
                reason: reason.as_str(),
                message: format!("{} (backend {})", reason.message(), backend.name),
                retry_after_ms: limits.retry_after_ms,
            },
            RejectReason::SloUnmeetable => {
                let drain =
                    self.admission
                        .load()
                        .drain_ns(request, &placement.target, request.arrival);
                let predicted = match placement.target {
                    Target::Backend {
                        predicted_ttft_ns, ..
                    } => predicted_ttft_ns,
                    _ => 0,
                };
                ServeError::Shed {
                    reason: reason.as_str(),
                    message: format!(
                        "{} (backend {}: predicted {} ms)",
                        reason.message(),
                        backend.name,
                        predicted / crate::request::NANOS_PER_MS
                    ),
                    retry_after_ms: (self.clock.wall(drain).as_millis() as u64).max(1),
                }
            }
            RejectReason::DeadlineUnmeetable => ServeError::DeadlineUnmeetable(format!(
                "{} (backend {})",
                reason.message(),
                backend.name
            )),
            RejectReason::InvalidRequest => ServeError::invalid("max_tokens", reason.message()),
            RejectReason::NoHealthyBackend | RejectReason::Draining => {
                ServeError::Unavailable(reason.message().into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_ids_print_as_format_does() {
        for id in [0, 7, 10, 1_234_567_890, u64::MAX] {
            assert_eq!(super::generated_id(id), format!("dj-{id}"));
        }
    }
}
