//! The fleet operations the Admin service exposes: routing policy, backend states and
//! injected faults, adding and removing pools, and config reload.

use super::Daemon;
use crate::fleet::{
    check_pool_name, BackendId, BackendState, PoolConfig, MAX_FLEET_BACKENDS, MAX_POOL_BACKENDS,
};
use crate::metrics::PoolDescription;
use crate::profile::{Catalogue, Dtype, PerfModel, ProfileError};
use crate::serve::backend::{BackendHandle, Command};
use crate::serve::config::ServeConfig;
use crate::serve::error::ServeError;
use crate::serve::routing::ActivePolicy;
use crate::wire;
use std::sync::Arc;

impl Daemon {
    /// Switches the routing policy; returns the previous and the new name. Naming the
    /// policy in force keeps it as it is, state and all (a `domestic-share` window, a
    /// round-robin turn); a switch to the fleet file's policy gets the fleet's parameters.
    pub fn set_policy(&self, name: &str) -> Result<(Arc<str>, Arc<str>), ServeError> {
        let _serial = self.admin.lock();
        let current = self.policy.load_full();
        if *current.name == *name {
            return Ok((current.name.clone(), current.name.clone()));
        }
        let policy = ActivePolicy::by_name(name, &super::policy_params(&self.fleet_policy, name))
            .map_err(|e| ServeError::invalid("policy", e.to_string()))?;
        let new = policy.name.clone();
        self.metrics.policy_in_force(&new);
        let old = self.policy.swap(Arc::new(policy));
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
        crate::sim::faults::check_slowdown_factor(factor)
            .map_err(|message| ServeError::invalid("slowdown", message))?;
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

    pub fn add_pool(&self, req: &wire::AddPoolRequest) -> Result<(), ServeError> {
        // Checked before anything is allocated: the name becomes metric labels and the
        // count sizes driver tasks, load slots and series.
        check_pool_name(&req.pool).map_err(|why| {
            ServeError::invalid(
                "pool",
                format!("{:?} {why} (pool names are [a-z0-9-]{{1,63}})", req.pool),
            )
        })?;
        let upstream = self.upstream_of(req)?;
        let backends = match &upstream {
            Some(up) if req.backends == 0 || req.backends as usize == up.endpoints.len() => {
                up.endpoints.len() as u32
            }
            Some(up) => {
                return Err(ServeError::invalid(
                    "backends",
                    format!(
                        "{} but {} endpoints: a pool of real engines has one backend per endpoint",
                        req.backends,
                        up.endpoints.len()
                    ),
                ))
            }
            None => req.backends,
        };
        if backends == 0 {
            return Err(ServeError::invalid("backends", "must be at least 1"));
        }
        if backends > MAX_POOL_BACKENDS {
            return Err(ServeError::invalid(
                "backends",
                format!(
                    "{} backends; a pool holds at most {MAX_POOL_BACKENDS} (and a fleet {MAX_FLEET_BACKENDS})",
                    req.backends
                ),
            ));
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
        // Empty engine and dtype mean what a fleet file that names neither gets: the chip's
        // default engine, the model's release format as the chip runs it.
        let named_engine = (!req.engine.is_empty()).then_some(req.engine.as_str());
        let engine = self
            .catalogue
            .engine_for(&req.chip, named_engine)
            .map_err(|e| {
                ServeError::invalid(
                    if named_engine.is_some() {
                        "engine"
                    } else {
                        "chip"
                    },
                    e,
                )
            })?;
        let named_dtype = if req.dtype.is_empty() {
            None
        } else {
            Some(
                req.dtype
                    .parse::<Dtype>()
                    .map_err(|e| ServeError::invalid("dtype", e))?,
            )
        };
        let dtype = named_dtype.unwrap_or_else(|| Catalogue::default_dtype(chip, model));
        let perf = PerfModel::new(chip, &engine, model, req.tp.max(1), dtype).map_err(|e| {
            let field = match (&e, named_dtype) {
                (ProfileError::UnsupportedDtype { .. }, Some(_)) => "dtype",
                (ProfileError::UnsupportedDtype { .. }, None) => "chip",
                _ => "tp",
            };
            ServeError::invalid(field, e.to_string())
        })?;
        let mut config = PoolConfig::new(req.pool.clone(), Arc::new(perf), backends);
        config.upstream = upstream.map(Arc::new);
        let _serial = self.admin.lock();
        let (_, ids) = self.board.add_pool(config.clone()).map_err(|e| match e {
            crate::fleet::FleetError::DuplicatePoolName(_) => {
                ServeError::AlreadyExists(e.to_string())
            }
            crate::fleet::FleetError::InvalidPoolName(..) => {
                ServeError::invalid("pool", e.to_string())
            }
            crate::fleet::FleetError::PoolTooLarge(..) => {
                ServeError::invalid("backends", e.to_string())
            }
            other => ServeError::FailedPrecondition(other.to_string()),
        })?;
        self.metrics.add_pool(
            &config.name,
            &PoolDescription::of(&config),
            &self.policy_name(),
        );
        let mut handles: Vec<_> = self.backends.load().as_ref().clone();
        self.spawn_pool(&config, &ids, &mut handles);
        self.backends.store(Arc::new(handles));
        tracing::info!(pool = %req.pool, chip = %req.chip, engine = %config.perf.engine.engine, dtype = %config.perf.dtype, backends, "pool added");
        Ok(())
    }

    /// The endpoints of an AddPool request for a pool of real engines, checked.
    fn upstream_of(
        &self,
        req: &wire::AddPoolRequest,
    ) -> Result<Option<crate::fleet::UpstreamSpec>, ServeError> {
        if req.endpoints.is_empty() {
            for (field, set) in [
                ("served_model", !req.served_model.is_empty()),
                ("metrics", !req.metrics.is_empty()),
            ] {
                if set {
                    return Err(ServeError::invalid(
                        field,
                        "belongs to a pool of real engines: give its endpoints",
                    ));
                }
            }
            return Ok(None);
        }
        let mut endpoints: Vec<String> = Vec::with_capacity(req.endpoints.len());
        for (i, url) in req.endpoints.iter().enumerate() {
            let base = crate::fleet::upstream::api_base(url).map_err(|why| {
                ServeError::invalid("endpoints", format!("endpoints[{i}]: {why}"))
            })?;
            if endpoints.contains(&base) {
                return Err(ServeError::invalid(
                    "endpoints",
                    format!("endpoints[{i}]: `{url}` is listed twice"),
                ));
            }
            endpoints.push(base);
        }
        if req.served_model.is_empty() {
            return Err(ServeError::invalid(
                "served_model",
                "a pool of real engines needs the model name its endpoints serve",
            ));
        }
        let metrics = (!req.metrics.is_empty()).then(|| req.metrics.clone());
        if let Some(m) = &metrics {
            if !crate::fleet::upstream::METRICS_DIALECTS.contains(&m.as_str()) {
                return Err(ServeError::invalid(
                    "metrics",
                    format!(
                        "unknown dialect `{m}`; known: {}",
                        crate::fleet::upstream::METRICS_DIALECTS.join(", ")
                    ),
                ));
            }
        }
        Ok(Some(crate::fleet::UpstreamSpec {
            endpoints,
            served_model: req.served_model.clone(),
            metrics,
        }))
    }

    /// Removes a pool; its backends finish what they hold and exit. Returns how many.
    pub fn remove_pool(&self, name: &str) -> Result<u32, ServeError> {
        let _serial = self.admin.lock();
        let membership = self.board.membership();
        let pool = membership
            .pool_by_name(name)
            .ok_or_else(|| ServeError::NotFound(format!("pool: no pool named `{name}`")))?;
        // The fleet left must still make sense as prefill/decode: without its last
        // prefill pool, decode pools would serve whole requests as mixed ones; without
        // the last pool to decode on, prefill pools would have nowhere to hand off.
        let rest: Vec<_> = membership
            .pools()
            .filter(|p| p.id != pool.id)
            .map(|p| p.config.clone())
            .collect();
        if !rest.is_empty() {
            crate::fleet::check_roles(&rest).map_err(|(_, why)| {
                ServeError::FailedPrecondition(format!(
                    "pool `{name}` cannot be removed: without it, {why}"
                ))
            })?;
        }
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
        // Its series go with it: latency, counters, info, cost and every backend's gauges.
        self.metrics.remove_pool(name);
        tracing::info!(pool = name, backends = ids.len(), "pool removed");
        Ok(ids.len() as u32)
    }

    /// Re-reads the config file: policy and admission limits take effect at once, and
    /// the endpoint lists of its fleet file's pools of real engines are applied.
    /// A policy that did not change keeps running as it is (see [`Daemon::set_policy`]).
    /// Returns the policy in force and what changed.
    pub fn reload_config(&self) -> Result<(Arc<str>, String), ServeError> {
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
        let admission = self.admission.load().reconfigured(cfg.admission);
        self.admission.store(Arc::new(admission));
        let mut message = "policy and admission limits reloaded".to_string();
        if !cfg.fleet.as_os_str().is_empty() {
            let spec = crate::fleet::FleetSpec::load(&cfg.fleet)
                .map_err(|e| ServeError::FailedPrecondition(e.to_string()))?;
            let (added, removed) = self.reload_endpoints(&spec)?;
            message.push_str(&format!("; endpoints: {added} added, {removed} removed"));
        }
        tracing::info!(file = %path.display(), %message, "config reloaded");
        Ok((self.policy_name(), message))
    }
}
