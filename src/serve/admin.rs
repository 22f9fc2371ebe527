//! The `dujiang.v1.Admin` service: a thin translation between proto messages and the
//! daemon's fleet operations, which do the work and classify the errors. It is served on
//! its own listener (`admin_addr`), never on the data plane, and when a token is
//! configured every call must carry it ([`AdminAuth`]).

use super::backend::BackendHandle;
use super::daemon::Daemon;
use crate::engine::LoadSnapshot;
use crate::fleet::{BackendState, LoadView};
use crate::metrics::Percentiles;
use crate::wire::{self, admin_server::Admin};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};

/// Checks `authorization: Bearer <token>` on every Admin call when a token is configured.
/// The comparison runs in time that depends only on the configured token's length, so
/// timing does not reveal how much of a guess was right.
#[derive(Clone)]
pub struct AdminAuth {
    /// The whole expected header value, `Bearer <token>`; `None`: no token configured.
    expected: Option<Arc<[u8]>>,
}

impl AdminAuth {
    pub fn new(token: Option<String>) -> AdminAuth {
        AdminAuth {
            expected: token.map(|t| format!("Bearer {t}").into_bytes().into()),
        }
    }

    /// Reads the token file: its content with surrounding whitespace removed, which must
    /// not be empty.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<AdminAuth> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("admin_token_file {}: cannot read: {e}", path.display())
        })?;
        let token = text.trim();
        if token.is_empty() {
            anyhow::bail!("admin_token_file {}: the file is empty", path.display());
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            anyhow::bail!(
                "admin_token_file {}: the token must be printable ASCII without spaces \
                 (it travels in a gRPC header)",
                path.display()
            );
        }
        Ok(AdminAuth::new(Some(token.to_string())))
    }

    fn accepts(&self, given: Option<&[u8]>) -> bool {
        let Some(expected) = &self.expected else {
            return true;
        };
        let given = given.unwrap_or_default();
        // Byte by byte over the expected length (missing bytes compare as 0, which no
        // header byte is), then the lengths: no early exit on the first mismatch.
        let mut same = subtle::Choice::from(1);
        for (i, e) in expected.iter().enumerate() {
            same &= given.get(i).copied().unwrap_or(0).ct_eq(e);
        }
        same &= (given.len() as u64).ct_eq(&(expected.len() as u64));
        same.into()
    }
}

impl tonic::service::Interceptor for AdminAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let given = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        if self.accepts(given) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "Admin calls need `authorization: Bearer <token>` with the daemon's admin token",
            ))
        }
    }
}

pub struct AdminService {
    pub daemon: Arc<Daemon>,
}

fn load(l: &LoadSnapshot) -> wire::Load {
    wire::Load {
        waiting: l.waiting,
        running: l.running,
        queued_prefill_tokens: l.queued_prefill_tokens,
        remaining_decode_tokens: l.remaining_decode_tokens,
        kv_used_blocks: l.kv_used_blocks,
        kv_total_blocks: l.kv_total_blocks,
        kv_usage: l.kv_usage(),
        predicted_drain_seconds: l.predicted_drain_ns as f64 / 1e9,
    }
}

fn state(s: BackendState) -> wire::BackendState {
    match s {
        BackendState::Serving => wire::BackendState::Serving,
        BackendState::Draining => wire::BackendState::Draining,
        BackendState::Failed => wire::BackendState::Failed,
    }
}

fn percentiles(p: &Percentiles) -> wire::Percentiles {
    wire::Percentiles {
        count: p.count,
        p50: p.p50,
        p90: p.p90,
        p99: p.p99,
        p999: p.p999,
        max: p.max,
        mean: p.mean,
    }
}

impl AdminService {
    fn backend_info(&self, b: &BackendHandle) -> wire::BackendInfo {
        let view = self.daemon.board.view();
        let st = view
            .membership()
            .backend(b.id)
            .map_or(wire::BackendState::Unspecified, |e| state(e.state));
        wire::BackendInfo {
            backend: b.name.to_string(),
            pool: b.pool.to_string(),
            chip: b.chip.to_string(),
            model: b.model.to_string(),
            tp: b.tp,
            state: st as i32,
            slowdown: b.slowdown(),
            load: Some(load(&view.load(b.id))),
            endpoint: b.endpoint.as_deref().unwrap_or_default().to_string(),
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_pools(
        &self,
        _: Request<wire::ListPoolsRequest>,
    ) -> Result<Response<wire::ListPoolsResponse>, Status> {
        let view = self.daemon.board.view();
        let m = view.membership();
        let pools = m
            .pools()
            .map(|p| {
                let mut total = LoadSnapshot::default();
                let mut n = 0;
                for (id, _) in m.pool_backends(p.id) {
                    let l = view.load(id);
                    n += 1;
                    total.waiting += l.waiting;
                    total.running += l.running;
                    total.queued_prefill_tokens += l.queued_prefill_tokens;
                    total.remaining_decode_tokens += l.remaining_decode_tokens;
                    total.kv_used_blocks += l.kv_used_blocks;
                    total.kv_total_blocks += l.kv_total_blocks;
                    total.predicted_drain_ns = total.predicted_drain_ns.max(l.predicted_drain_ns);
                }
                wire::PoolInfo {
                    pool: p.name().to_string(),
                    chip: p.config.perf.chip.id.clone(),
                    model: p.config.perf.model.id.clone(),
                    tp: p.config.perf.tp,
                    backends: n,
                    price_per_hour_usd: p.price_per_hour_usd,
                    domestic: p.domestic,
                    load: Some(load(&total)),
                }
            })
            .collect();
        Ok(Response::new(wire::ListPoolsResponse {
            pools,
            policy: self.daemon.policy_name().to_string(),
        }))
    }

    async fn list_backends(
        &self,
        request: Request<wire::ListBackendsRequest>,
    ) -> Result<Response<wire::ListBackendsResponse>, Status> {
        let pool = request.into_inner().pool;
        let backends = self
            .daemon
            .backends()
            .iter()
            .filter(|b| pool.is_empty() || *b.pool == *pool)
            .map(|b| self.backend_info(b))
            .collect();
        Ok(Response::new(wire::ListBackendsResponse { backends }))
    }

    async fn get_stats(
        &self,
        _: Request<wire::GetStatsRequest>,
    ) -> Result<Response<wire::GetStatsResponse>, Status> {
        let m = &self.daemon.metrics;
        let pools = m
            .summaries()
            .into_iter()
            .map(|(pool, s)| {
                let s = s.snapshot();
                wire::PoolStats {
                    pool: pool.to_string(),
                    ttft_seconds: Some(percentiles(&s.ttft)),
                    inter_token_seconds: Some(percentiles(&s.inter_token)),
                    e2e_seconds: Some(percentiles(&s.e2e)),
                    queue_seconds: Some(percentiles(&s.queue)),
                    completed: s.completed,
                    slo_violations: s.slo_violations,
                }
            })
            .collect();
        Ok(Response::new(wire::GetStatsResponse {
            pools,
            outcomes: m
                .outcome_counts()
                .into_iter()
                .map(|(o, n)| (o.as_str().to_string(), n))
                .collect(),
            accepted: m.accepted_count(),
            shed: m
                .shed_counts()
                .into_iter()
                .map(|(r, n)| (r.to_string(), n))
                .collect(),
            in_flight: m.in_flight(),
            policy: self.daemon.policy_name().to_string(),
        }))
    }

    async fn set_policy(
        &self,
        request: Request<wire::SetPolicyRequest>,
    ) -> Result<Response<wire::SetPolicyResponse>, Status> {
        let (previous, policy) = self.daemon.set_policy(&request.into_inner().policy)?;
        Ok(Response::new(wire::SetPolicyResponse {
            previous: previous.to_string(),
            policy: policy.to_string(),
        }))
    }

    async fn drain_backend(
        &self,
        request: Request<wire::BackendRef>,
    ) -> Result<Response<wire::BackendInfo>, Status> {
        let b = self
            .daemon
            .set_backend_state(&request.into_inner().backend, BackendState::Draining)?;
        Ok(Response::new(self.backend_info(&b)))
    }

    async fn resume_backend(
        &self,
        request: Request<wire::BackendRef>,
    ) -> Result<Response<wire::BackendInfo>, Status> {
        let b = self
            .daemon
            .set_backend_state(&request.into_inner().backend, BackendState::Serving)?;
        Ok(Response::new(self.backend_info(&b)))
    }

    async fn add_pool(
        &self,
        request: Request<wire::AddPoolRequest>,
    ) -> Result<Response<wire::PoolInfo>, Status> {
        let req = request.into_inner();
        self.daemon.add_pool(&req)?;
        let pools = self
            .list_pools(Request::new(wire::ListPoolsRequest {}))
            .await?
            .into_inner()
            .pools;
        let info = pools
            .into_iter()
            .find(|p| p.pool == req.pool)
            .ok_or_else(|| Status::internal("pool vanished right after it was added"))?;
        Ok(Response::new(info))
    }

    async fn remove_pool(
        &self,
        request: Request<wire::RemovePoolRequest>,
    ) -> Result<Response<wire::RemovePoolResponse>, Status> {
        let n = self.daemon.remove_pool(&request.into_inner().pool)?;
        Ok(Response::new(wire::RemovePoolResponse {
            backends_removed: n,
        }))
    }

    async fn inject_fault(
        &self,
        request: Request<wire::InjectFaultRequest>,
    ) -> Result<Response<wire::BackendInfo>, Status> {
        let req = request.into_inner();
        let b = match req.fault {
            Some(wire::inject_fault_request::Fault::Fail(true)) => {
                self.daemon.inject_fail(&req.backend)?
            }
            Some(wire::inject_fault_request::Fault::Slowdown(f)) => {
                self.daemon.inject_slowdown(&req.backend, f)?
            }
            _ => {
                return Err(Status::invalid_argument(
                    "fault: set `fail = true` or `slowdown`",
                ))
            }
        };
        Ok(Response::new(self.backend_info(&b)))
    }

    async fn clear_fault(
        &self,
        request: Request<wire::BackendRef>,
    ) -> Result<Response<wire::BackendInfo>, Status> {
        let b = self.daemon.clear_fault(&request.into_inner().backend)?;
        Ok(Response::new(self.backend_info(&b)))
    }

    async fn reload_config(
        &self,
        _: Request<wire::ReloadConfigRequest>,
    ) -> Result<Response<wire::ReloadConfigResponse>, Status> {
        let (policy, message) = self.daemon.reload_config()?;
        Ok(Response::new(wire::ReloadConfigResponse {
            policy: policy.to_string(),
            message,
        }))
    }

    async fn add_endpoint(
        &self,
        request: Request<wire::EndpointRef>,
    ) -> Result<Response<wire::BackendInfo>, Status> {
        let req = request.into_inner();
        let b = self.daemon.add_endpoint(&req.pool, &req.endpoint)?;
        Ok(Response::new(self.backend_info(&b)))
    }

    async fn remove_endpoint(
        &self,
        request: Request<wire::EndpointRef>,
    ) -> Result<Response<wire::BackendInfo>, Status> {
        let req = request.into_inner();
        let b = self.daemon.remove_endpoint(&req.pool, &req.endpoint)?;
        Ok(Response::new(self.backend_info(&b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let auth = AdminAuth::new(Some("s3cret".into()));
        assert!(auth.accepts(Some(b"Bearer s3cret")));
        for wrong in [
            &b""[..],
            b"Bearer",
            b"Bearer s3cre",
            b"Bearer s3cret2",
            b"Bearer S3cret",
            b"bearer s3cret",
            b"s3cret",
        ] {
            assert!(
                !auth.accepts(Some(wrong)),
                "{}",
                String::from_utf8_lossy(wrong)
            );
        }
        assert!(!auth.accepts(None));
        assert!(AdminAuth::new(None).accepts(None));
    }
}
