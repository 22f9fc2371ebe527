//! The capacity planner on a small synthetic trace (seeded Poisson arrivals with Azure
//! conversation lengths): its fleet meets the SLO in an independent replay of the fleet
//! file it writes, taking any one backend away breaks the SLO or the domestic floor, every
//! frontier point honours its floor, and impossible inputs fail with a clear message.
//!
//! The catalogue is the embedded one with the H20 made cheap, so that a foreign chip is
//! the bargain and the domestic floor actually costs something.

use dujiang::fleet::{FleetSpec, PolicySpec};
use dujiang::plan::{
    self, candidates, measure, Candidate, PlanInputs, PlanReport, PlanSettings, Sequential, Shard,
    ShareBy, SloSpec, Workload, DEFAULT_SLO,
};
use dujiang::profile::Catalogue;
use dujiang::sim::{Replay, ReplayConfig};
use dujiang::trace::{ArrivalProcess, LengthDist, SynthConfig, SyntheticTrace, TraceRecord};
use std::convert::Infallible;

const CHIPS: [&str; 2] = ["h20", "ascend-910b"];

fn catalogue() -> Catalogue {
    let mut cat = Catalogue::embedded();
    cat.chips.get_mut("h20").unwrap().price_per_hour_usd = 0.25;
    cat
}

fn records() -> Vec<TraceRecord> {
    // Chat-length answers, prompts shorter than Azure's (median ~300 tokens) so that the
    // cheap H20 can serve every size within the TTFT bound.
    let cfg = SynthConfig {
        input: LengthDist::LogNormal {
            mu: 5.7,
            sigma: 0.8,
            min: 16,
            max: 3000,
        },
        ..SynthConfig::new(ArrivalProcess::Poisson, 25.0, 7)
    };
    SyntheticTrace::new(cfg).unwrap().take(500).collect()
}

fn inputs(floor: f64, slo: &str) -> PlanInputs {
    PlanInputs {
        trace: "synthetic".into(),
        format: "jsonl".into(),
        model: "llama-3-8b".into(),
        chips: CHIPS.iter().map(|c| c.to_string()).collect(),
        slo: slo.into(),
        attainment: 0.99,
        min_domestic_share: floor,
        share_by: ShareBy::Chips,
        policy: "least-work".into(),
        rate_scale: 1.0,
        max_tp: Some(1),
        buckets: 2,
        probe_requests: 100,
        probe_seconds: 40.0,
        seed: 1,
        chip_catalogue: None,
        model_catalogue: None,
        engine_catalogues: Vec::new(),
    }
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

fn run_plan(i: &PlanInputs) -> Result<(PlanReport, Vec<Candidate>), String> {
    let cands = candidates(&catalogue(), &i.model, &i.chips, i.max_tp)?;
    plan::check_floor(&cands, i.min_domestic_share)?;
    let workload = Workload::new(records(), i.buckets, i.probe_requests)?;
    let s = settings(i);
    let (m, replays) = measure(&workload, &cands, &s, &Sequential, Shard::WHOLE)?;
    let report = plan::plan(i, &workload, &cands, m, &s, &Sequential, replays)?;
    Ok((report, cands))
}

/// Replays the synthetic trace on a fleet file's pools, as `dujiang replay --fleet` would.
fn replay_fleet(toml_text: &str, slo: &SloSpec) -> dujiang::sim::PolicyReport {
    let spec = FleetSpec::parse(toml_text, "planned.toml").unwrap_or_else(|e| panic!("{e}"));
    let pools = spec.resolve(&catalogue()).unwrap_or_else(|e| panic!("{e}"));
    let policy = dujiang::policy::build(&spec.policy.name, &spec.policy.params, 1).unwrap();
    let cfg = ReplayConfig {
        slo: slo.request_slo(),
        ..ReplayConfig::default()
    };
    Replay::new(pools, policy, cfg)
        .unwrap()
        .run(records().into_iter().map(Ok::<_, Infallible>))
        .unwrap()
}

fn with_one_less(report: &PlanReport, pool: &str) -> PlanReport {
    let mut r = report.clone();
    let p = r.pools.iter_mut().find(|p| p.name == pool).unwrap();
    p.count -= 1;
    r.pools.retain(|p| p.count > 0);
    r
}

fn chip_share(report: &PlanReport) -> f64 {
    let chips = |dom: bool| -> u32 {
        report
            .pools
            .iter()
            .filter(|p| !dom || p.domestic)
            .map(|p| p.count * p.tp)
            .sum()
    };
    f64::from(chips(true)) / f64::from(chips(false).max(1))
}

#[test]
fn plan_meets_the_slo_is_near_minimal_and_honours_every_floor() {
    let i = inputs(0.3, DEFAULT_SLO);
    let slo = SloSpec::parse(&i.slo, i.attainment).unwrap();
    let (report, _) = run_plan(&i).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", report.to_table());
    assert!(!report.pools.is_empty());
    assert!(report.domestic_share >= 0.3 - 1e-9, "{}", report.to_table());
    assert!((chip_share(&report) - report.domestic_share).abs() < 1e-3);

    // An independent replay of the fleet file the plan writes meets the SLO.
    let verified = replay_fleet(&report.fleet_toml(), &slo);
    assert!(
        slo.meets(&verified),
        "{}\n{:?}",
        report.to_table(),
        verified.stats
    );
    assert_eq!(
        verified.stats.slo_attainment,
        report.predicted.slo_attainment
    );

    // Near-minimal: one backend fewer, from any pool and in particular the cheapest,
    // misses the SLO or the floor.
    let cheapest = report
        .pools
        .iter()
        .min_by(|a, b| {
            (a.cost_per_hour_usd / f64::from(a.count))
                .total_cmp(&(b.cost_per_hour_usd / f64::from(b.count)))
        })
        .unwrap()
        .name
        .clone();
    for pool in report.pools.iter().map(|p| p.name.clone()) {
        let smaller = with_one_less(&report, &pool);
        if smaller.pools.is_empty() {
            continue;
        }
        let breaks_floor = chip_share(&smaller) < 0.3 - 1e-9;
        let breaks_slo = !slo.meets(&replay_fleet(&smaller.fleet_toml(), &slo));
        assert!(
            breaks_floor || breaks_slo,
            "removing one {pool} backend (cheapest: {cheapest}) still passes:\n{}",
            report.to_table()
        );
    }

    // The frontier: every floor honoured, cost never falls as the floor rises, and the
    // floor costs something here (the cheap H20 is foreign).
    let floors: Vec<f64> = report
        .frontier
        .iter()
        .map(|f| f.min_domestic_share)
        .collect();
    assert_eq!(floors, [0.0, 0.3, 0.6, 1.0]);
    let mut last = 0.0;
    for f in &report.frontier {
        let cost = f
            .cost_per_hour_usd
            .unwrap_or_else(|| panic!("{:?}", f.note));
        assert!(
            f.domestic_share.unwrap() >= f.min_domestic_share - 1e-9,
            "{f:?}"
        );
        assert!(cost >= last - 1e-9, "{}", report.to_table());
        assert!(f.slo_attainment.unwrap() >= 0.99);
        last = cost;
    }
    let (free, all) = (&report.frontier[0], &report.frontier[3]);
    assert!(
        free.pools.iter().any(|p| p.chip == "h20"),
        "{}",
        report.to_table()
    );
    assert!(all.pools.iter().all(|p| p.domestic));
    assert!(all.cost_per_hour_usd > free.cost_per_hour_usd);
}

#[test]
fn fleet_file_and_json_carry_the_plan() {
    let (report, _) = run_plan(&inputs(0.0, DEFAULT_SLO)).unwrap();
    let spec = FleetSpec::parse(&report.fleet_toml(), "planned.toml").unwrap();
    assert_eq!(spec.policy.name, "least-work");
    assert_eq!(spec.model, "llama-3-8b");
    let pools = spec.resolve(&catalogue()).unwrap();
    let cost: f64 = pools.iter().map(|p| p.cost_per_hour_usd()).sum();
    assert!((cost - report.cost_per_hour_usd).abs() < 1e-6);
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    for key in [
        "cost_per_hour_usd",
        "domestic_share",
        "pools",
        "predicted",
        "frontier",
    ] {
        assert!(json.get(key).is_some(), "{key}");
    }
    assert!(json["pools"][0]["chip"].is_string() && json["pools"][0]["tp"].is_u64());
    assert!(json["predicted"]["ttft_ms"]["p99"].is_f64());
    let html = report.to_html();
    assert!(html.contains("<svg") && html.contains("domestic-share floor"));
}

#[test]
fn sharded_measurements_merge_into_the_same_numbers() {
    let i = inputs(0.0, DEFAULT_SLO);
    let cands = candidates(&catalogue(), &i.model, &i.chips, i.max_tp).unwrap();
    let workload = Workload::new(records(), i.buckets, i.probe_requests).unwrap();
    let s = settings(&i);
    let (whole, _) = measure(&workload, &cands, &s, &Sequential, Shard::WHOLE).unwrap();
    let parts: Vec<_> = (0..2)
        .map(|index| {
            measure(
                &workload,
                &cands,
                &s,
                &Sequential,
                Shard { index, count: 2 },
            )
            .unwrap()
            .0
        })
        .collect();
    for (k, w) in whole.iter().enumerate() {
        let measured: Vec<f64> = parts.iter().filter_map(|p| p[k].sustained_rps).collect();
        assert_eq!(measured, vec![w.sustained_rps.unwrap()], "pair {k}");
    }
}

#[test]
fn impossible_inputs_fail_with_a_clear_message() {
    let cat = catalogue();
    let err = candidates(&cat, "llama-3-8b", &["h20".into(), "tpu-v9".into()], None).unwrap_err();
    assert!(err.contains("unknown chip `tpu-v9`"), "{err}");
    let err = candidates(&cat, "deepseek-v3", &["mlu370-x8".into()], Some(1)).unwrap_err();
    assert!(err.contains("fits on none"), "{err}");

    let err = run_plan(&inputs(0.0, "ttft_p99<=1ms")).unwrap_err();
    assert!(err.contains("SLO unreachable"), "{err}");

    let mut foreign_only = inputs(0.5, DEFAULT_SLO);
    foreign_only.chips = vec!["h20".into()];
    let err = run_plan(&foreign_only).unwrap_err();
    assert!(err.contains("none of the chips is domestic"), "{err}");
}
