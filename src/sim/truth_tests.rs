//! Replay does what the daemon does where the two used to differ: a request moved off a
//! failed backend carries the tokens its engine really produced and is routed enlarged;
//! requests without an SLO carry the replay's.

use super::*;
use crate::engine::{Engine, EngineConfig, EngineEvent, Granularity};
use crate::fleet::{BackendId, LoadView, PoolConfig};
use crate::policy::{Policy, RoundRobin};
use crate::profile::fixtures::{h20, llama3_8b};
use crate::request::{Nanos, Request, Slo, NANOS_PER_MS};
use crate::trace::TraceRecord;
use parking_lot::Mutex;
use std::convert::Infallible;
use std::sync::Arc;

/// Round robin that remembers every request it was asked to place.
struct Recorder {
    inner: RoundRobin,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Policy for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn pick(&self, req: &Request, view: &dyn LoadView, now: Nanos) -> Option<BackendId> {
        self.seen.lock().push(req.clone());
        self.inner.pick(req, view, now)
    }
}

fn pools() -> Vec<PoolConfig> {
    let perf = Arc::new(crate::profile::fixtures::perf(&h20(), &llama3_8b(), 1).unwrap());
    vec![PoolConfig::new("a", perf, 2)]
}

fn recorded(cfg: ReplayConfig, plan: Option<&str>, rec: TraceRecord) -> Vec<Request> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let policy = Recorder {
        inner: RoundRobin::new(),
        seen: seen.clone(),
    };
    let mut r = Replay::new(pools(), Box::new(policy), cfg).unwrap();
    if let Some(plan) = plan {
        r = r
            .with_faults(&FaultPlan::parse(plan, "f.toml").unwrap())
            .unwrap();
    }
    let (report, _) = r.run_with_faults([Ok::<_, Infallible>(rec)]).unwrap();
    assert_eq!(report.stats.completed, 1);
    let seen = seen.lock().clone();
    seen
}

#[test]
fn a_moved_request_is_routed_with_the_tokens_its_engine_produced() {
    let rec = TraceRecord {
        prompt_tokens: 1000,
        output_tokens: 400,
        ..TraceRecord::default()
    };
    let fail_at: Nanos = 700 * NANOS_PER_MS;
    // The oracle: the same engine stepping token by token, as the daemon's drivers do.
    let pool = &pools()[0];
    let cfg = EngineConfig {
        block_size: pool.block_size,
        max_num_seqs: pool.max_num_seqs,
        max_batched_tokens: pool.max_batched_tokens,
        ..EngineConfig::for_perf(&pool.perf)
    }
    .with_granularity(Granularity::PerToken);
    let mut oracle = Engine::new(pool.perf.clone(), cfg);
    oracle.admit(rec.to_request(0), 0).unwrap();
    let mut events = Vec::new();
    oracle.advance(fail_at, &mut events);
    let produced = events
        .iter()
        .filter(|e| matches!(e, EngineEvent::Token { .. }))
        .count() as u32;
    assert!(produced > 1 && produced < 400, "mid-stream: {produced}");

    let plan = "[[fault]]\nat_s = 0.7\nbackend = \"a-0\"\nkind = \"fail\"\n";
    let seen = recorded(ReplayConfig::default(), Some(plan), rec);
    assert_eq!(seen.len(), 2, "placed, then moved once");
    assert_eq!(
        (seen[1].prompt_tokens, seen[1].max_tokens),
        (1000 + produced, 400 - produced),
        "routed enlarged by exactly what was produced"
    );
}

#[test]
fn requests_without_an_slo_carry_the_replays() {
    let slo = Slo {
        ttft_ns: 300 * NANOS_PER_MS,
        tpot_ns: 40 * NANOS_PER_MS,
    };
    let cfg = ReplayConfig {
        slo,
        ..ReplayConfig::default()
    };
    let rec = TraceRecord {
        prompt_tokens: 100,
        output_tokens: 4,
        ..TraceRecord::default()
    };
    let seen = recorded(cfg, None, rec);
    assert_eq!(
        seen[0].slo,
        Some(slo),
        "policies judge by the SLO the report uses"
    );
}

#[test]
fn a_slowed_backend_is_ejected_and_readmitted_once_it_recovers() {
    let plan = "[[fault]]\nat_s = 10\nbackend = \"a-0\"\nkind = \"slowdown\"\nfactor = 4.0\n\n\
                [[fault]]\nat_s = 30\nbackend = \"a-0\"\nkind = \"recover\"\n";
    let trace: Vec<TraceRecord> = (0..600u64)
        .map(|i| TraceRecord {
            arrival_ns: i * 100 * NANOS_PER_MS,
            prompt_tokens: 500,
            output_tokens: 50,
            ..TraceRecord::default()
        })
        .collect();
    let run = |stragglers: Option<StragglerConfig>| {
        let cfg = ReplayConfig {
            stragglers,
            ..ReplayConfig::default()
        };
        let policy = crate::policy::build("round-robin", &toml::Table::new(), 1).unwrap();
        Replay::new(pools(), policy, cfg)
            .unwrap()
            .with_faults(&FaultPlan::parse(plan, "f.toml").unwrap())
            .unwrap()
            .run_with_faults(trace.iter().cloned().map(Ok::<_, Infallible>))
            .unwrap()
    };
    let (with, s) = run(Some(StragglerConfig::default()));
    // The recover fault puts it back in service with its slow history; it is ejected
    // again at once and re-admitted once probes show the recovery, as in the daemon.
    assert!(s.ejected >= 1 && s.readmitted >= 1, "{s:?}");
    assert_eq!(with.stats.completed + with.stats.rejected, 600);
    let (without, s) = run(None);
    assert_eq!((s.ejected, s.readmitted), (0, 0));
    eprintln!(
        "E2E p99 with straggler ejection {} ms ({} shed), without {} ms ({} shed)",
        with.stats.e2e_ms.p99,
        with.stats.rejected,
        without.stats.e2e_ms.p99,
        without.stats.rejected
    );
    // Shedding by prediction keeps latency in bounds either way; ejection shows as
    // fewer requests shed for a backend that can no longer keep up.
    assert!(
        with.stats.completed > without.stats.completed,
        "ejecting the slowed backend serves more: {} vs {}",
        with.stats.completed,
        without.stats.completed
    );
}
