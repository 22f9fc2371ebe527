//! The daemon's shared state and the request path every front end goes through: validate
//! the request, ask the routing policy for a backend (reading the lock-free load board),
//! let the shared admission controller ([`crate::admission`]) accept or shed it (batch
//! before interactive, per-backend waiting bounds, deadlines that cannot be met), and hand
//! it to that backend's driver. Also the fleet operations the Admin service exposes
//! (drain, faults, pools, policy, reload), moving requests off failed backends, and the
//! periodic straggler check.

mod admin_ops;
mod endpoints;
mod stragglers;
mod submit;
mod validate;

pub use submit::Wake;
pub use validate::estimate_tokens;

use super::backend::{spawn_backend, BackendHandle, Command, DriverContext, KvLinks};
use super::clock::SimClock;
use super::config::{AdmissionLimits, ReliabilityConfig, ServeConfig};
use super::error::ServeError;
use super::mailbox::Inbox;
use super::outlier::{OutlierConfig, OutlierDetector};
use super::routing::ActivePolicy;
use crate::admission::{self, Permit, Target};
use crate::fleet::{AtomicLoadBoard, BackendId, LoadView as _, PoolConfig};
use crate::metrics::{Metrics, PoolDescription};
use crate::profile::Catalogue;
use crate::request::{Nanos, Priority, Request, Slo};
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

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
    /// Driver handles indexed by backend id (`None` once removed); shared with the
    /// drivers, which hand prefilled requests to decode backends.
    backends: Arc<ArcSwap<Vec<Option<Arc<BackendHandle>>>>>,
    policy: ArcSwap<ActivePolicy>,
    /// The fleet file's policy and parameters: a switch to that policy, at start, by
    /// `SetPolicy` or by reload, gets these parameters, any other policy its defaults.
    fleet_policy: crate::fleet::PolicySpec,
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

/// The parameters policy `name` runs with: the fleet file's when the fleet names that
/// policy (they belong to it alone), else none, so the policy's defaults.
fn policy_params(fleet: &crate::fleet::PolicySpec, name: &str) -> toml::Table {
    if fleet.name == name {
        fleet.params.clone()
    } else {
        toml::Table::new()
    }
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
    /// On a prefill backend: the decode backend the policy paired it with.
    pub decode: Option<Arc<BackendHandle>>,
    pub deliveries: Inbox,
    pub deadline: Option<Instant>,
    pub received: Instant,
    /// The request as first placed (arrival on the fleet clock).
    pub request: Request,
    pub model: String,
    /// Held until the request's one terminal outcome is recorded.
    pub permit: Permit,
    /// The front end it came by (its counters' label).
    pub frontend: crate::metrics::Frontend,
    /// The request's text and what else a real engine is sent.
    pub ask: Arc<crate::serve::upstream::Ask>,
}

/// Where the router would place a request.
struct Placement {
    handle: Arc<BackendHandle>,
    /// Where a prefill backend hands it off, when the policy chose the pair.
    decode: Option<Arc<BackendHandle>>,
    /// The policy that chose it (latencies are labelled with it).
    policy: Arc<str>,
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
    /// The text, kept for a real engine.
    messages: Vec<crate::wire::ChatMessage>,
    prompt: String,
}

impl Daemon {
    /// Builds the fleet from `config` and starts one driver per backend. Must run inside a
    /// tokio runtime.
    pub fn start(
        config: &ServeConfig,
        config_path: Option<PathBuf>,
        fleet: Option<FleetInput>,
    ) -> anyhow::Result<Arc<Daemon>> {
        let catalogue = if config.engines.is_empty() {
            Catalogue::embedded()
        } else {
            Catalogue::load_with_engines(None, None, &config.engines)?
        };
        let (spec, pools, links) = match fleet {
            Some(f) => {
                let mut spec = crate::fleet::FleetSpec::embedded_demo();
                spec.name = f.name;
                spec.model = f.model;
                crate::fleet::check_roles(&f.pools).map_err(|(_, why)| anyhow::anyhow!(why))?;
                let links = crate::fleet::LinkTable::resolve(&f.pools, &[])
                    .map_err(|(field, why)| anyhow::anyhow!("{field}: {why}"))?;
                (spec, f.pools, links)
            }
            None => {
                let spec = if config.fleet.as_os_str().is_empty() {
                    crate::fleet::FleetSpec::embedded_demo()
                } else {
                    crate::fleet::FleetSpec::load(&config.fleet)?
                };
                let pools = spec.resolve(&catalogue)?;
                crate::fleet::check_simulated_roles(&pools)
                    .map_err(|(pool, why)| spec.error(&format!("pools.{pool}.role"), why))?;
                let links = spec.link_table(&pools)?;
                (spec, pools, links)
            }
        };
        let board = Arc::new(AtomicLoadBoard::from_pools(pools)?);
        let policy_name = if config.policy.is_empty() {
            spec.policy.name.clone()
        } else {
            config.policy.clone()
        };
        if policy_name == spec.policy.name {
            // The fleet file's policy: a bad name or parameter is placed on its lines.
            crate::policy::from_fleet(&spec, 0)?;
        }
        let policy =
            ActivePolicy::by_name(&policy_name, &policy_params(&spec.policy, &policy_name))?;
        let metrics = Arc::new(Metrics::new());
        let rel = config.reliability;
        let clock = SimClock::new(config.time_scale);
        let backends: Arc<ArcSwap<Vec<Option<Arc<BackendHandle>>>>> = Arc::default();
        let (kv, link_task) = KvLinks::start(clock, metrics.clone());
        let ctx = Arc::new(DriverContext {
            clock,
            metrics: metrics.clone(),
            board: board.clone(),
            ewma_alpha: rel.ewma_alpha,
            upstream: crate::serve::upstream::UpstreamContext::new(config.upstream),
            backends: backends.clone(),
            links,
            kv,
        });
        link_task.spawn(&ctx);
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
            backends,
            policy: ArcSwap::from_pointee(policy),
            fleet_policy: spec.policy.clone(),
            catalogue,
            fleet_name: spec.name.clone(),
            default_model: spec.model.clone(),
            limits: ArcSwap::from_pointee(config.admission),
            admission: ArcSwap::from_pointee(admission::Admission::new(config.admission)),
            reliability: rel,
            outliers: parking_lot::Mutex::new(outliers),
            ready: AtomicBool::new(false),
            accepting: AtomicBool::new(true),
            next_id: AtomicU64::new(1),
            config_path,
            admin: parking_lot::Mutex::new(()),
        };
        let membership = board.membership();
        // Every series a pool or the policy will have, registered at 0 before any request.
        {
            let policy = daemon.policy.load();
            policy.metrics(&daemon.metrics);
            for pool in membership.pools() {
                daemon.metrics.add_pool(
                    pool.name(),
                    &PoolDescription::of(&pool.config),
                    &policy.name,
                );
            }
        }
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
            let handle = spawn_backend(&self.ctx, id, k, name, pool);
            if into.len() <= id.index() {
                into.resize(id.index() + 1, None);
            }
            into[id.index()] = Some(handle);
        }
    }

    /// Every proxied endpoint's clean observations as measured points (`GET /observed`).
    pub fn observed_points(&self) -> String {
        self.ctx.upstream.observed_points(&self.fleet_name)
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

    /// Whether new requests are taken (false once shutdown began).
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Relaxed)
    }

    /// The models the fleet's pools serve, each once, in pool order.
    pub fn served_models(&self) -> Vec<String> {
        let view = self.board.view();
        let mut out: Vec<String> = Vec::new();
        for p in view.membership().pools() {
            let id = &p.config.perf.model.id;
            if !out.iter().any(|m| m == id) {
                out.push(id.clone());
            }
        }
        out
    }

    /// The model a request that names none is served with.
    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    /// The context, in tokens, of `model` (the default model when empty); none for a
    /// model the catalogue does not know (the request's validation refuses it).
    pub fn max_context(&self, model: &str) -> Option<u32> {
        let model = if model.is_empty() {
            self.default_model.as_str()
        } else {
            model
        };
        self.catalogue.model(model).map(|spec| spec.max_context)
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

    /// Tells the routing policy that `req` reached its terminal outcome on `backend` with
    /// `output_tokens` delivered, as replay does.
    pub(in crate::serve) fn request_ended(
        &self,
        req: &Request,
        backend: BackendId,
        output_tokens: u32,
    ) {
        self.policy
            .load()
            .on_finished(req, backend, output_tokens, self.now());
    }
}
