//! The routing policy in force, swappable at run time (Admin `SetPolicy`, config reload):
//! a policy from the registry in `crate::policy` paired with its name as a shared string
//! for metric labels.

use crate::fleet::{BackendId, LinkTable, LoadView};
use crate::metrics::{Metrics, PolicyMetrics};
use crate::policy::{self, Policy, PolicyError, Route};
use crate::request::{Nanos, Request};
use std::sync::{Arc, OnceLock};

/// Seed for the randomised policies; fixed so a daemon run is reproducible given the same
/// arrival order.
const POLICY_SEED: u64 = 0x6475_6a69_616e_6721;

pub struct ActivePolicy {
    pub name: Arc<str>,
    policy: Box<dyn Policy>,
    /// Its decision histogram and retry counter, resolved on the first decision.
    metrics: OnceLock<Arc<PolicyMetrics>>,
}

impl ActivePolicy {
    pub fn by_name(name: &str, params: &toml::Table) -> Result<ActivePolicy, PolicyError> {
        let policy = policy::build(name, params, POLICY_SEED)?;
        Ok(ActivePolicy {
            name: policy.name().into(),
            policy,
            metrics: OnceLock::new(),
        })
    }

    /// This policy's metric handles in `metrics` (one look-up per policy, not per call).
    pub fn metrics(&self, metrics: &Metrics) -> &PolicyMetrics {
        self.metrics.get_or_init(|| metrics.policy(&self.name))
    }

    /// A route: the backend that serves the request first, and where a prefill backend
    /// hands it off when the policy pairs them (prefill/decode fleets).
    pub fn pick_route(
        &self,
        req: &Request,
        view: &dyn LoadView,
        links: &LinkTable,
        now: Nanos,
    ) -> Option<Route> {
        self.policy.pick_route(req, view, links, now)
    }

    pub fn reads_load(&self) -> bool {
        self.policy.reads_load()
    }

    pub fn on_routed(&self, req: &Request, route: Route, view: &dyn LoadView, now: Nanos) {
        self.policy.on_routed(req, route, view, now);
    }

    pub fn on_finished(&self, req: &Request, backend: BackendId, output_tokens: u32, now: Nanos) {
        self.policy.on_finished(req, backend, output_tokens, now);
    }
}
