//! Planning time for the whole Azure LLM conversation trace (2023, 19,366 requests over an
//! hour; ../shared/traces/azure-llm-2023-conv.csv) with four chip kinds (h20, ascend-910b,
//! ascend-910c, mlu590) serving llama-3-8b at the default SLO (TTFT p99 ≤ 2 s, TPOT p99 ≤
//! 100 ms, 99% attainment) and a 30% domestic floor: the capacity sweep, the mix for each
//! of the five floors, and every verification, repair and trim replay, on every core. Goal:
//! under one minute on a 2-core machine. Two loads: the trace as recorded, and twenty times
//! its rate (a fleet of several pools). The plan each produces is printed once first.
//!
//! `cargo bench --bench plan -- --measurement-time 2 --warm-up-time 1`

use criterion::{criterion_group, criterion_main, Criterion};
use dujiang::cli::ThreadPool;
use dujiang::fleet::PolicySpec;
use dujiang::plan::{
    self, candidates, measure, PlanInputs, PlanReport, PlanSettings, ReplayRunner, Shard, ShareBy,
    SloSpec, Workload, DEFAULT_SLO,
};
use dujiang::profile::Catalogue;
use dujiang::trace::{self, Format, ReadOptions, TraceExt, TraceRecord};
use std::path::Path;
use std::time::{Duration, Instant};

const TRACE: &str = "../shared/traces/azure-llm-2023-conv.csv";

fn inputs(rate_scale: f64) -> PlanInputs {
    PlanInputs {
        trace: TRACE.into(),
        format: "azure".into(),
        model: "llama-3-8b".into(),
        chips: ["h20", "ascend-910b", "ascend-910c", "mlu590"]
            .map(String::from)
            .to_vec(),
        slo: DEFAULT_SLO.into(),
        attainment: 0.99,
        min_domestic_share: 0.3,
        share_by: ShareBy::Chips,
        policy: "least-work".into(),
        rate_scale,
        max_tp: None,
        buckets: 3,
        probe_requests: 2000,
        probe_seconds: 120.0,
        seed: 1,
        chip_catalogue: None,
        model_catalogue: None,
        engine_catalogues: Vec::new(),
    }
}

fn records(rate_scale: f64) -> Vec<TraceRecord> {
    trace::open(Path::new(TRACE), Format::Azure, ReadOptions::default())
        .expect("trace opens")
        .scale_rate(rate_scale)
        .collect::<Result<_, _>>()
        .expect("trace reads")
}

fn settings(i: &PlanInputs) -> PlanSettings {
    PlanSettings {
        slo: SloSpec::parse(&i.slo, i.attainment).unwrap(),
        share_by: i.share_by,
        policy: PolicySpec {
            name: i.policy.clone(),
            params: toml::Table::new(),
        },
        seed: i.seed,
        probe_seconds: i.probe_seconds,
    }
}

fn plan_once(i: &PlanInputs, records: &[TraceRecord], runner: &dyn ReplayRunner) -> PlanReport {
    let cands = candidates(&Catalogue::embedded(), &i.model, &i.chips, i.max_tp).unwrap();
    let workload = Workload::new(records.to_vec(), i.buckets, i.probe_requests).unwrap();
    let settings = settings(i);
    let (m, replays) = measure(&workload, &cands, &settings, runner, Shard::WHOLE).unwrap();
    plan::plan(i, &workload, &cands, m, &settings, runner, replays).unwrap()
}

fn bench(c: &mut Criterion) {
    if !Path::new(TRACE).exists() {
        eprintln!("{TRACE} not found: skipping the plan bench");
        return;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runner = ThreadPool { threads };
    let mut group = c.benchmark_group("plan/azure-conv-4-chips");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(30));
    for rate_scale in [1.0, 20.0] {
        let i = inputs(rate_scale);
        let recs = records(rate_scale);
        let started = Instant::now();
        let report = plan_once(&i, &recs, &runner);
        eprintln!(
            "\n{}planned once in {:.1} s on {threads} threads\n",
            report.to_table(),
            started.elapsed().as_secs_f64()
        );
        group.bench_function(format!("rate-x{rate_scale}"), |b| {
            b.iter(|| plan_once(&i, &recs, &runner))
        });
    }
    group.finish();

    // The mix solver alone, on the integer programs these two plans pose at each floor.
    let mut solver = c.benchmark_group("plan/mix-solve");
    for rate_scale in [1.0, 20.0] {
        let i = inputs(rate_scale);
        let recs = records(rate_scale);
        let cands = candidates(&Catalogue::embedded(), &i.model, &i.chips, i.max_tp).unwrap();
        let workload = Workload::new(recs, i.buckets, i.probe_requests).unwrap();
        let settings = settings(&i);
        let (m, _) = measure(&workload, &cands, &settings, &runner, Shard::WHOLE).unwrap();
        let problems: Vec<_> = [0.0, 0.3, 0.5, 0.7, 1.0]
            .into_iter()
            .map(|floor| plan::mix_problem(&workload, &cands, &m, i.share_by, floor).unwrap())
            .collect();
        solver.bench_function(format!("rate-x{rate_scale}"), |b| {
            b.iter(|| problems.iter().map(|p| p.solve()).collect::<Vec<_>>())
        });
    }
    solver.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
