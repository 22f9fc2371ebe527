//! Endpoints of pools of real engines, changed at run time: the Admin calls
//! `AddEndpoint`/`RemoveEndpoint`, and a config reload that finds a pool's endpoint list
//! changed in the fleet file. An endpoint is one backend; adding one starts its proxy
//! driver, removing one stops routing to it at once and lets its requests finish.

use super::Daemon;
use crate::fleet::upstream::api_base;
use crate::fleet::{FleetSpec, PoolConfig, PoolKind, UpstreamSpec};
use crate::serve::backend::{spawn_backend, BackendHandle, Command};
use crate::serve::error::ServeError;
use std::sync::Arc;

impl Daemon {
    /// Adds `url` to pool `pool` (of kind = "openai") as a new backend.
    pub fn add_endpoint(&self, pool: &str, url: &str) -> Result<Arc<BackendHandle>, ServeError> {
        let base = api_base(url).map_err(|why| ServeError::invalid("endpoint", why))?;
        let _serial = self.admin.lock();
        let (info, upstream) = self.real_pool(pool)?;
        if upstream.endpoints.contains(&base) {
            return Err(ServeError::AlreadyExists(format!(
                "endpoint: pool `{pool}` already has `{base}`"
            )));
        }
        let mut up = (*upstream).clone();
        up.endpoints.push(base.clone());
        let index = up.endpoints.len() - 1;
        let config = PoolConfig {
            count: info.config.count + 1,
            upstream: Some(Arc::new(up)),
            ..info.config.clone()
        };
        let id = self
            .board
            .add_backend(info.id, config.clone())
            .map_err(|e| ServeError::FailedPrecondition(e.to_string()))?;
        let mut handles: Vec<_> = self.backends.load().as_ref().clone();
        // Names are never reused within a pool: the next number after the highest.
        let next = handles
            .iter()
            .flatten()
            .filter(|h| &*h.pool == pool)
            .filter_map(|h| {
                h.name
                    .strip_prefix(pool)?
                    .strip_prefix('-')?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .map_or(0, |k| k + 1);
        let handle = spawn_backend(&self.ctx, id, index, format!("{pool}-{next}"), &config);
        if handles.len() <= id.index() {
            handles.resize(id.index() + 1, None);
        }
        handles[id.index()] = Some(handle.clone());
        self.backends.store(Arc::new(handles));
        tracing::info!(pool, endpoint = %base, backend = %handle.name, "endpoint added");
        Ok(handle)
    }

    /// Removes `url` from pool `pool`: no new work from now on, gone once idle.
    pub fn remove_endpoint(&self, pool: &str, url: &str) -> Result<Arc<BackendHandle>, ServeError> {
        let base = api_base(url).map_err(|why| ServeError::invalid("endpoint", why))?;
        let _serial = self.admin.lock();
        let (info, upstream) = self.real_pool(pool)?;
        let mut handles: Vec<_> = self.backends.load().as_ref().clone();
        let Some(slot) = handles.iter_mut().find(|h| {
            h.as_ref()
                .is_some_and(|h| &*h.pool == pool && h.endpoint.as_deref() == Some(base.as_str()))
        }) else {
            return Err(ServeError::NotFound(format!(
                "endpoint: pool `{pool}` has no endpoint `{base}`"
            )));
        };
        let handle = slot.clone().expect("found above");
        let mut up = (*upstream).clone();
        up.endpoints.retain(|e| *e != base);
        let config = PoolConfig {
            count: info.config.count.saturating_sub(1),
            upstream: Some(Arc::new(up)),
            ..info.config.clone()
        };
        self.board
            .remove_backend(handle.id, config)
            .map_err(|e| match e {
                crate::fleet::FleetError::EmptyPool(_) => ServeError::FailedPrecondition(format!(
                    "`{base}` is pool `{pool}`'s last endpoint; remove the pool instead"
                )),
                other => ServeError::FailedPrecondition(other.to_string()),
            })?;
        *slot = None;
        self.backends.store(Arc::new(handles));
        handle.gauges.serving.set(0.0);
        handle.send(Command::RetireWhenIdle);
        tracing::info!(pool, endpoint = %base, backend = %handle.name, "endpoint removed");
        Ok(handle)
    }

    /// A pool of real engines by name, with its endpoints.
    fn real_pool(
        &self,
        pool: &str,
    ) -> Result<(Arc<crate::fleet::PoolInfo>, Arc<UpstreamSpec>), ServeError> {
        let m = self.board.membership();
        let info = m
            .pool_by_name(pool)
            .cloned()
            .ok_or_else(|| ServeError::NotFound(format!("pool: no pool named `{pool}`")))?;
        let upstream = info.config.upstream.clone().ok_or_else(|| {
            ServeError::FailedPrecondition(format!(
                "pool `{pool}` is simulated; endpoints belong to pools of kind = \"openai\""
            ))
        })?;
        Ok((info, upstream))
    }

    /// Brings the endpoints of the fleet's pools of real engines in line with `spec`
    /// (pools themselves are not added or removed here: AddPool and RemovePool do that).
    /// Returns how many endpoints were added and removed.
    pub(super) fn reload_endpoints(&self, spec: &FleetSpec) -> Result<(usize, usize), ServeError> {
        let (mut added, mut removed) = (0, 0);
        for (name, pool) in &spec.pools {
            if pool.kind != PoolKind::Openai {
                continue;
            }
            let Ok((_, now)) = self.real_pool(name) else {
                continue;
            };
            let want = pool.endpoints.clone().unwrap_or_default();
            for e in want.iter().filter(|e| !now.endpoints.contains(e)) {
                self.add_endpoint(name, e)?;
                added += 1;
            }
            for e in now.endpoints.iter().filter(|e| !want.contains(e)) {
                self.remove_endpoint(name, e)?;
                removed += 1;
            }
        }
        Ok((added, removed))
    }
}
