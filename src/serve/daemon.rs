//! The daemon's shared state and the request path every front end goes through: validate
//! the request, ask the routing policy for a backend (reading the lock-free load board),
//! let the shared admission controller ([`crate::admission`]) accept or shed it (batch
//! before interactive, per-backend waiting bounds, deadlines that cannot be met), and hand
//! it to that backend's driver. Also the fleet operations the Admin service exposes
//! (drain, faults, pools, policy, reload), moving requests off failed backends, and the
//! periodic straggler check.

use super::backend::{
    spawn_backend, BackendHandle, Command, Delivery, DriverContext, Refusal, Resume,
};
use super::clock::SimClock;
use super::config::{AdmissionLimits, ReliabilityConfig, ServeConfig};
use super::error::ServeError;
use super::outlier::{BackendSample, OutlierAction, OutlierConfig, OutlierDetector};
use super::proto;
use super::routing::ActivePolicy;
use crate::admission::{self, Permit, RejectReason, Target};
use crate::engine::AdmitError;
use crate::fleet::{
    AtomicLoadBoard, BackendId, BackendState, Claim, LoadView, MaskedView, PoolConfig, PoolMask,
};
use crate::metrics::Metrics;
use crate::profile::{Catalogue, PerfModel};
use crate::request::{Nanos, Priority, Request, Slo, NANOS_PER_MS};
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Decisions a request's routing may take when it keeps racing others; the last one
/// commits whatever it picked. Each retry means another decision committed meanwhile,
/// so routing as a whole never stalls; the bound only caps one request's extra work.
const ROUTE_ATTEMPTS: u32 = 4;

/// Everything the services share.
pub struct Daemon {
    pub clock: SimClock,
    pub metrics: Arc<Metrics>,
    pub board: Arc<AtomicLoadBoard>,
    ctx: Arc<DriverContext>,
    /// Driver handles indexed by backend id (`None` once removed).
    backends: ArcSwap<Vec<Option<Arc<BackendHandle>>>>,
    policy: ArcSwap<ActivePolicy>,
    catalogue: Catalogue,
    pub fleet_name: String,
    default_model: String,
    limits: ArcSwap<AdmissionLimits>,
    admission: ArcSwap<admission::Admission>,
    pub reliability: ReliabilityConfig,
    outliers: parking_lot::Mutex<OutlierDetector>,
    ready: AtomicBool,
    accepting: AtomicBool,
    next_id: AtomicU64,
    config_path: Option<PathBuf>,
    /// Serialises admin changes to the fleet (rare; never on the request path).
    admin: parking_lot::Mutex<()>,
}

/// A fleet given directly instead of by file, for chips the catalogue does not list
/// (benchmarks use a zero-latency chip). Starts with the demo fleet's policy.
pub struct FleetInput {
    pub name: String,
    /// Default model id (must be in the embedded catalogue).
    pub model: String,
    pub pools: Vec<PoolConfig>,
}

/// A request a backend has accepted: the stream of what happens to it, and what it takes
/// to move it if that backend fails.
pub struct Accepted {
    pub client_id: String,
    pub backend: Arc<BackendHandle>,
    pub deliveries: UnboundedReceiver<Delivery>,
    pub deadline: Option<Instant>,
    pub received: Instant,
    /// The request as first placed (arrival on the fleet clock).
    pub request: Request,
    pub model: String,
    /// Held until the request's one terminal outcome is recorded.
    pub permit: Permit,
}

/// Where the router would place a request.
struct Placement {
    handle: Arc<BackendHandle>,
    target: Target,
}

/// A validated request: what the core needs plus what the reply echoes.
struct Validated {
    client_id: String,
    model: String,
    prompt_tokens: u32,
    max_tokens: u32,
    priority: Priority,
    slo: Option<Slo>,
    prefix_hashes: Vec<u64>,
    session: Option<u64>,
}

impl Daemon {
    /// Builds the fleet from `config` and starts one driver per backend. Must run inside a
    /// tokio runtime.
    pub fn start(
        config: &ServeConfig,
        config_path: Option<PathBuf>,
        fleet: Option<FleetInput>,
    ) -> anyhow::Result<Arc<Daemon>> {
        let catalogue = Catalogue::embedded();
        let (spec, pools) = match fleet {
            Some(f) => {
                let mut spec = crate::fleet::FleetSpec::embedded_demo();
                spec.name = f.name;
                spec.model = f.model;
                (spec, f.pools)
            }
            None => {
                let spec = if config.fleet.as_os_str().is_empty() {
                    crate::fleet::FleetSpec::embedded_demo()
                } else {
                    crate::fleet::FleetSpec::load(&config.fleet)?
                };
                let pools = spec.resolve(&catalogue)?;
                (spec, pools)
            }
        };
        let board = Arc::new(AtomicLoadBoard::from_pools(pools)?);
        let policy_name = if config.policy.is_empty() {
            spec.policy.name.clone()
        } else {
            config.policy.clone()
        };
        // The fleet's policy parameters belong to the fleet's policy only.
        let params = if policy_name == spec.policy.name {
            spec.policy.params.clone()
        } else {
            toml::Table::new()
        };
        let policy = ActivePolicy::by_name(&policy_name, &params)?;
        let metrics = Arc::new(Metrics::new());
        let rel = config.reliability;
        let ctx = Arc::new(DriverContext {
            clock: SimClock::new(config.time_scale),
            metrics: metrics.clone(),
            board: board.clone(),
            policy_name: ArcSwap::from_pointee(policy.name.clone()),
            ewma_alpha: rel.ewma_alpha,
        });
        let outliers = OutlierDetector::new(OutlierConfig {
            straggler_ratio: rel.straggler_ratio,
            recover_ratio: rel.recover_ratio,
            min_samples: u64::from(rel.min_samples),
            max_ejection_fraction: rel.max_ejection_fraction,
            // Two checks apart, in simulated time.
            probe_interval_ns: (2.0 * rel.check_interval_ms as f64 * 1e6 * config.time_scale)
                as Nanos,
        });
        let daemon = Daemon {
            clock: ctx.clock,
            metrics,
            board: board.clone(),
            ctx,
            backends: ArcSwap::default(),
            policy: ArcSwap::from_pointee(policy),
            catalogue,
            fleet_name: spec.name.clone(),
            default_model: spec.model.clone(),
            limits: ArcSwap::from_pointee(config.admission),
            admission: ArcSwap::from_pointee(admission::Admission::new(
                config.admission.admission_config(),
            )),
            reliability: rel,
            outliers: parking_lot::Mutex::new(outliers),
            ready: AtomicBool::new(false),
            accepting: AtomicBool::new(true),
            next_id: AtomicU64::new(1),
            config_path,
            admin: parking_lot::Mutex::new(()),
        };
        let membership = board.membership();
        let mut handles = Vec::new();
        for pool in membership.pools() {
            let ids: Vec<BackendId> = membership
                .pool_backends(pool.id)
                .map(|(id, _)| id)
                .collect();
            daemon.spawn_pool(&pool.config, &ids, &mut handles);
        }
        daemon.backends.store(Arc::new(handles));
        Ok(Arc::new(daemon))
    }

    fn spawn_pool(
        &self,
        pool: &PoolConfig,
        ids: &[BackendId],
        into: &mut Vec<Option<Arc<BackendHandle>>>,
    ) {
        for (k, &id) in ids.iter().enumerate() {
            let name = format!("{}-{k}", pool.name);
            let handle = spawn_backend(&self.ctx, id, name, pool);
            if into.len() <= id.index() {
                into.resize(id.index() + 1, None);
            }
            into[id.index()] = Some(handle);
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Relaxed);
    }

    /// Stops taking new requests (shutdown). In-flight ones continue.
    pub fn stop_accepting(&self) {
        self.accepting.store(false, Relaxed);
        self.ready.store(false, Relaxed);
    }

    pub fn in_flight(&self) -> u64 {
        self.metrics.in_flight()
    }

    pub fn policy_name(&self) -> Arc<str> {
        self.policy.load().name.clone()
    }

    /// Every live backend's handle.
    pub fn backends(&self) -> Vec<Arc<BackendHandle>> {
        self.backends.load().iter().flatten().cloned().collect()
    }

    pub fn backend_by_name(&self, name: &str) -> Result<Arc<BackendHandle>, ServeError> {
        self.backends
            .load()
            .iter()
            .flatten()
            .find(|b| &*b.name == name)
            .cloned()
            .ok_or_else(|| ServeError::NotFound(format!("backend: no backend named `{name}`")))
    }

    /// Validates, routes, admits and hands over one request.
    pub async fn submit(
        &self,
        req: proto::GenerateRequest,
        received: Instant,
        deadline: Option<Instant>,
    ) -> Result<Accepted, ServeError> {
        if !self.accepting.load(Relaxed) {
            return Err(ServeError::Unavailable(
                "the daemon is shutting down".into(),
            ));
        }
        let v = self.validate(req)?;
        let limits = **self.limits.load();
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
                self.metrics.shed(reason.as_str());
                return Err(rejection(reason, &limits, &placement.handle));
            }
        };
        let backend = placement.handle;
        self.policy
            .load()
            .on_routed(&request, backend.id, &self.board.view(), request.arrival);
        let (tx, mut deliveries) = unbounded_channel();
        if !backend.send(Command::Admit {
            req: request.clone(),
            claim: Claim::of(&request),
            deliver: tx,
            resume: None,
        }) {
            self.board.release(backend.id, Claim::of(&request));
            permit.finish(admission::Outcome::Failed);
            return Err(ServeError::Unavailable(format!(
                "backend {} has stopped",
                backend.name
            )));
        }
        let refused = match deliveries.recv().await {
            Some(Delivery::Admitted) => {
                self.metrics.accepted();
                // The request id is optional on the wire: one the client left empty is
                // generated here, so every Started names its request.
                let client_id = if v.client_id.is_empty() {
                    format!("dj-{}", request.id)
                } else {
                    v.client_id
                };
                return Ok(Accepted {
                    client_id,
                    backend,
                    deliveries,
                    deadline,
                    received,
                    request,
                    model: v.model,
                    permit,
                });
            }
            Some(Delivery::Refused(Refusal::Engine(AdmitError::TooLarge { needed, capacity }))) => {
                ServeError::invalid(
                    "prompt_tokens",
                    format!("prompt plus max_tokens need {needed} tokens of KV cache; a {} backend holds {capacity}", backend.chip),
                )
            }
            Some(Delivery::Refused(Refusal::Engine(e))) => ServeError::invalid("max_tokens", e.to_string()),
            _ => ServeError::Unavailable(format!("backend {} is not taking work", backend.name)),
        };
        // Never counted as accepted by the daemon's metrics; the admission controller
        // sees its slot given back as a failure.
        permit.finish(admission::Outcome::Failed);
        Err(refused)
    }

    /// Moves an accepted request whose backend failed: routed by the policy like a new
    /// request, but not subject to admission (it holds its slot already). `req` carries
    /// the prompt to prefill again and the tokens still owed.
    pub(super) fn relocate(
        &self,
        req: Request,
        model: &str,
        resume: Option<Resume>,
    ) -> Result<(Arc<BackendHandle>, UnboundedReceiver<Delivery>), ServeError> {
        if !self.accepting.load(Relaxed) {
            return Err(ServeError::Unavailable(
                "the daemon is shutting down".into(),
            ));
        }
        let placement = self.place(&req, model)?;
        let backend = placement.handle;
        self.policy
            .load()
            .on_routed(&req, backend.id, &self.board.view(), self.now());
        let (tx, rx) = unbounded_channel();
        let claim = Claim::of(&req);
        if !backend.send(Command::Admit {
            req,
            claim,
            deliver: tx,
            resume,
        }) {
            self.board.release(backend.id, claim);
            return Err(ServeError::Unavailable(format!(
                "backend {} has stopped",
                backend.name
            )));
        }
        self.metrics.migration(resume.is_some());
        Ok((backend, rx))
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
            self.metrics.router_retry(&policy.name);
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
        let picked = policy.pick(request, &masked, request.arrival);
        self.metrics
            .router_decision(&policy.name)
            .record(t0.elapsed().as_secs_f64());
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
        let predicted_ttft_ns = membership.pool(entry.pool).map_or(0, |pool| {
            crate::policy::predict(pool, &load, request).ttft_ns
        });
        Ok(Some(Placement {
            handle,
            target: Target::Backend {
                id,
                load,
                predicted_ttft_ns,
            },
        }))
    }

    /// Admission counters (accepted, rejected by reason, outstanding).
    pub fn admission_stats(&self) -> admission::AdmissionStats {
        self.admission.load().stats()
    }

    /// One round of straggler detection: ejects backends whose steps run much slower
    /// than modelled, probes ejected ones, and re-admits those that recovered.
    pub fn check_outliers(&self) {
        let _serial = self.admin.lock();
        let membership = self.board.membership();
        let handles = self.backends();
        let mut samples = Vec::with_capacity(handles.len());
        let mut det = self.outliers.lock();
        for b in &handles {
            let Some(entry) = membership.backend(b.id) else {
                det.forget(b.id.0);
                b.gauges.serving.set(0.0);
                continue;
            };
            // Kept current here, on the outlier tick, so operator drains, failures and
            // ejections all show within one check interval.
            let serving = entry.state == BackendState::Serving;
            b.gauges.serving.set(if serving { 1.0 } else { 0.0 });
            if det.is_ejected(b.id.0) && entry.state != BackendState::Draining {
                // An operator resumed or failed it: no longer ours to manage.
                det.forget(b.id.0);
                b.gauges.ejected.set(0.0);
            }
            let (ratio, n) = b.step_ratio();
            samples.push(BackendSample {
                backend: b.id.0,
                pool: entry.pool.0,
                pool_size: membership.pool_backends(entry.pool).count() as u32,
                serving: entry.state == BackendState::Serving,
                ratio,
                samples: n,
                idle: b.is_idle(),
            });
        }
        let actions = det.evaluate(&samples, self.now());
        drop(det);
        for action in actions {
            let (id, state) = match action {
                OutlierAction::Probe(id) => {
                    if let Some(b) = handles.iter().find(|b| b.id.0 == id) {
                        b.send(Command::Probe);
                    }
                    continue;
                }
                OutlierAction::Eject(id) => (id, BackendState::Draining),
                OutlierAction::Readmit(id) => (id, BackendState::Serving),
            };
            let Some(b) = handles.iter().find(|b| b.id.0 == id) else {
                continue;
            };
            let ejected = state == BackendState::Draining;
            if self.board.set_state(b.id, state).is_ok() {
                b.gauges.ejected.set(if ejected { 1.0 } else { 0.0 });
                self.metrics.ejection(&b.pool, ejected);
                let (ratio, _) = b.step_ratio();
                tracing::warn!(
                    backend = %b.name,
                    ratio,
                    action = if ejected { "ejected" } else { "readmitted" },
                    "straggler check"
                );
            }
        }
    }

    fn validate(&self, req: proto::GenerateRequest) -> Result<Validated, ServeError> {
        let model = if req.model.is_empty() {
            self.default_model.clone()
        } else {
            req.model
        };
        let Some(spec) = self.catalogue.model(&model) else {
            return Err(ServeError::invalid(
                "model",
                format!("unknown model `{model}`"),
            ));
        };
        let text_tokens = if !req.messages.is_empty() {
            let mut n = 0u64;
            for (i, m) in req.messages.iter().enumerate() {
                if m.content.is_empty() {
                    return Err(ServeError::invalid(
                        "messages",
                        format!("message {i} has empty content"),
                    ));
                }
                // A chat template adds a few tokens per message (role markers).
                n += estimate_tokens(&m.content) + 4;
            }
            n
        } else if !req.prompt.is_empty() {
            estimate_tokens(&req.prompt)
        } else {
            return Err(ServeError::invalid(
                "messages",
                "either messages or prompt must be non-empty",
            ));
        };
        let prompt_tokens = match req.prompt_tokens {
            Some(0) => {
                return Err(ServeError::invalid(
                    "prompt_tokens",
                    "must be at least 1 when set",
                ))
            }
            Some(n) => u64::from(n),
            None => text_tokens,
        };
        let context = u64::from(spec.max_context);
        if prompt_tokens >= context {
            return Err(ServeError::invalid(
                "prompt",
                format!("prompt is {prompt_tokens} tokens; model `{model}` has a {context}-token context"),
            ));
        }
        if req.max_tokens == 0 {
            return Err(ServeError::invalid("max_tokens", "must be at least 1"));
        }
        if u64::from(req.max_tokens) + prompt_tokens > context {
            return Err(ServeError::invalid(
                "max_tokens",
                format!(
                    "{} tokens after a {prompt_tokens}-token prompt exceed model `{model}`'s {context}-token context",
                    req.max_tokens
                ),
            ));
        }
        let priority = match proto::Priority::try_from(req.priority) {
            Ok(proto::Priority::Batch) => Priority::Batch,
            Ok(_) => Priority::Interactive,
            Err(_) => {
                return Err(ServeError::invalid(
                    "priority",
                    format!("unknown priority {}", req.priority),
                ))
            }
        };
        let slo = req.slo.map(|s| {
            let d = Slo::default();
            Slo {
                ttft_ns: if s.ttft_ms == 0 {
                    d.ttft_ns
                } else {
                    s.ttft_ms.saturating_mul(NANOS_PER_MS)
                },
                tpot_ns: if s.tpot_ms == 0 {
                    d.tpot_ns
                } else {
                    s.tpot_ms.saturating_mul(NANOS_PER_MS)
                },
            }
        });
        Ok(Validated {
            client_id: req.request_id,
            model,
            prompt_tokens: prompt_tokens as u32,
            max_tokens: req.max_tokens,
            priority,
            slo,
            prefix_hashes: req.prefix_hashes,
            session: req.session_id,
        })
    }

    // ---- admin operations ----

    pub fn set_policy(&self, name: &str) -> Result<(Arc<str>, Arc<str>), ServeError> {
        let policy = ActivePolicy::by_name(name, &toml::Table::new())
            .map_err(|e| ServeError::invalid("policy", e.to_string()))?;
        let new = policy.name.clone();
        let old = self.policy.swap(Arc::new(policy));
        self.ctx.policy_name.store(Arc::new(new.clone()));
        tracing::info!(from = %old.name, to = %new, "routing policy changed");
        Ok((old.name.clone(), new))
    }

    pub fn set_backend_state(
        &self,
        name: &str,
        state: BackendState,
    ) -> Result<Arc<BackendHandle>, ServeError> {
        let _serial = self.admin.lock();
        let b = self.backend_by_name(name)?;
        self.board
            .set_state(b.id, state)
            .map_err(|e| ServeError::NotFound(e.to_string()))?;
        tracing::info!(backend = %b.name, state = state.as_str(), "backend state changed");
        Ok(b)
    }

    pub fn inject_fail(&self, name: &str) -> Result<Arc<BackendHandle>, ServeError> {
        let b = self.set_backend_state(name, BackendState::Failed)?;
        b.send(Command::Fail);
        Ok(b)
    }

    pub fn inject_slowdown(
        &self,
        name: &str,
        factor: f64,
    ) -> Result<Arc<BackendHandle>, ServeError> {
        if !(factor.is_finite() && factor > 0.0) {
            return Err(ServeError::invalid(
                "slowdown",
                format!("must be a positive factor, got {factor}"),
            ));
        }
        let b = self.backend_by_name(name)?;
        b.send(Command::Slowdown(factor));
        tracing::info!(backend = %b.name, factor, "backend slowed down");
        Ok(b)
    }

    pub fn clear_fault(&self, name: &str) -> Result<Arc<BackendHandle>, ServeError> {
        let b = self.backend_by_name(name)?;
        let failed = self
            .board
            .membership()
            .backend(b.id)
            .is_some_and(|e| e.state == BackendState::Failed);
        b.send(Command::ClearFault);
        if failed {
            self.set_backend_state(name, BackendState::Serving)?;
        }
        Ok(b)
    }

    pub fn add_pool(&self, req: &proto::AddPoolRequest) -> Result<(), ServeError> {
        if req.pool.is_empty() {
            return Err(ServeError::invalid("pool", "must not be empty"));
        }
        let chip = self
            .catalogue
            .chip(&req.chip)
            .ok_or_else(|| ServeError::invalid("chip", format!("unknown chip `{}`", req.chip)))?;
        let model_id = if req.model.is_empty() {
            &self.default_model
        } else {
            &req.model
        };
        let model = self
            .catalogue
            .model(model_id)
            .ok_or_else(|| ServeError::invalid("model", format!("unknown model `{model_id}`")))?;
        let perf = PerfModel::new(chip, model, req.tp.max(1))
            .map_err(|e| ServeError::invalid("tp", e.to_string()))?;
        if req.backends == 0 {
            return Err(ServeError::invalid("backends", "must be at least 1"));
        }
        let config = PoolConfig::new(req.pool.clone(), Arc::new(perf), req.backends);
        let _serial = self.admin.lock();
        let (_, ids) = self.board.add_pool(config.clone()).map_err(|e| match e {
            crate::fleet::FleetError::DuplicatePoolName(_) => {
                ServeError::AlreadyExists(e.to_string())
            }
            other => ServeError::FailedPrecondition(other.to_string()),
        })?;
        let mut handles: Vec<_> = self.backends.load().as_ref().clone();
        self.spawn_pool(&config, &ids, &mut handles);
        self.backends.store(Arc::new(handles));
        tracing::info!(pool = %req.pool, chip = %req.chip, backends = req.backends, "pool added");
        Ok(())
    }

    /// Removes a pool; its backends finish what they hold and exit. Returns how many.
    pub fn remove_pool(&self, name: &str) -> Result<u32, ServeError> {
        let _serial = self.admin.lock();
        let membership = self.board.membership();
        let pool = membership
            .pool_by_name(name)
            .ok_or_else(|| ServeError::NotFound(format!("pool: no pool named `{name}`")))?;
        let ids: Vec<BackendId> = membership
            .pool_backends(pool.id)
            .map(|(id, _)| id)
            .collect();
        self.board
            .remove_pool(pool.id)
            .map_err(|e| ServeError::NotFound(e.to_string()))?;
        let mut handles: Vec<_> = self.backends.load().as_ref().clone();
        for id in &ids {
            if let Some(h) = handles.get_mut(id.index()).and_then(Option::take) {
                h.send(Command::RetireWhenIdle);
            }
        }
        self.backends.store(Arc::new(handles));
        tracing::info!(pool = name, backends = ids.len(), "pool removed");
        Ok(ids.len() as u32)
    }

    /// Re-reads the config file: policy and admission limits take effect at once.
    pub fn reload_config(&self) -> Result<Arc<str>, ServeError> {
        let Some(path) = &self.config_path else {
            return Err(ServeError::FailedPrecondition(
                "the daemon was started without --config; there is nothing to reload".into(),
            ));
        };
        let cfg =
            ServeConfig::load(path).map_err(|e| ServeError::FailedPrecondition(e.to_string()))?;
        if !cfg.policy.is_empty() {
            self.set_policy(&cfg.policy)?;
        }
        self.limits.store(Arc::new(cfg.admission));
        let admission = self
            .admission
            .load()
            .reconfigured(cfg.admission.admission_config());
        self.admission.store(Arc::new(admission));
        tracing::info!(file = %path.display(), "config reloaded");
        Ok(self.policy_name())
    }

    /// Ends every request still held (the shutdown grace period ran out) and stops all
    /// drivers.
    pub fn retire_all(&self, outcome: crate::metrics::Outcome) {
        for b in self.backends() {
            b.send(Command::Retire(outcome));
        }
    }

    /// Simulated time now.
    pub fn now(&self) -> Nanos {
        self.clock.now()
    }
}

/// The status a refusal by the admission controller becomes, per [`RejectReason`]'s
/// documented mapping.
fn rejection(
    reason: RejectReason,
    limits: &AdmissionLimits,
    backend: &BackendHandle,
) -> ServeError {
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

/// Prompt length from text: about four characters per token for English under the
/// Llama 3 tokenizer; callers replaying a trace pass `prompt_tokens` instead.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}
