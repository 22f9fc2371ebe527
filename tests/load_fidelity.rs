//! Replay fidelity: the same trace, fleet, policy and seed through virtual-time `Replay`
//! and through the daemon (wall-clock drivers, real gRPC on loopback) driven by the load
//! generator must agree on TTFT and E2E percentiles.
//!
//! Tolerance, and why: |daemon − replay| ≤ 15% of replay + 4 ms × time scale. Both drivers
//! run the same engine and policy code, so the only differences are wall-clock ones, and
//! they are of two kinds. (1) Each request picks up a few wall milliseconds the replay does
//! not have: the tokio timer wakes a backend driver up to ~1 ms after its step ends, the
//! admission round trip and the token messages cross loopback gRPC, and this test runs
//! an unoptimised build with daemon and client sharing two cores. Measured at about 2–3 ms
//! wall per request, which the time scale multiplies into simulated time: the absolute
//! term. (2) That jitter moves arrivals by a few simulated ms, which shifts batch
//! boundaries and, under load, who queues behind whom; on a 150–300-request sample a
//! p99 is the 2nd–3rd slowest request, so it moves with single requests: the relative
//! term. A wrong time scale, a lost prompt length or a different policy moves E2E (seconds
//! long here) by far more than this, which is what the test is for.

mod load_support;
mod serve_support;

use dujiang::fleet::FleetSpec;
use dujiang::loadgen::{self, Api, LoadConfig, OpenAiOptions};
use dujiang::profile::Catalogue;
use dujiang::serve::ServeConfig;
use dujiang::sim::{PolicyReport, Replay, ReplayConfig};
use dujiang::trace::{self, Format, ReadOptions, TraceExt, TraceRecord};
use std::path::PathBuf;

const RELATIVE: f64 = 0.15;

static ONE_DAEMON: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const WALL_MS: f64 = 4.0;

fn trace_records(limit: u64) -> Vec<TraceRecord> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/azure-llm-2023-conv-head300.csv");
    trace::open(path, Format::Auto, ReadOptions::default())
        .unwrap()
        .limit(limit)
        .collect::<Result<_, _>>()
        .unwrap()
}

fn replay(policy: &str, records: &[TraceRecord]) -> PolicyReport {
    replay_with(policy, records, ReplayConfig::default(), None)
}

fn replay_with(
    policy: &str,
    records: &[TraceRecord],
    cfg: ReplayConfig,
    faults: Option<&str>,
) -> PolicyReport {
    let pools = FleetSpec::embedded_demo()
        .resolve(&Catalogue::embedded())
        .unwrap();
    let policy = dujiang::policy::build(policy, &toml::Table::new(), 1).unwrap();
    let mut r = Replay::new(pools, policy, cfg).unwrap();
    if let Some(plan) = faults {
        r = r
            .with_faults(&dujiang::sim::FaultPlan::parse(plan, "faults.toml").unwrap())
            .unwrap();
    }
    r.run(
        records
            .iter()
            .cloned()
            .map(Ok::<_, std::convert::Infallible>),
    )
    .unwrap()
}

async fn daemon(policy: &str, records: &[TraceRecord], time_scale: f64) -> PolicyReport {
    daemon_and_metrics(policy, records, time_scale).await.0
}

/// [`daemon_and_metrics`] with `slow` slowed down by `factor` before the first request.
async fn daemon_slowed(
    policy: &str,
    records: &[TraceRecord],
    time_scale: f64,
    slow: &str,
    factor: f64,
) -> PolicyReport {
    daemon_run(
        policy,
        records,
        time_scale,
        Some((slow, factor)),
        &Api::Grpc,
    )
    .await
    .0
}

/// [`daemon`], also returning the daemon's `/metrics` scrape taken after the run.
async fn daemon_and_metrics(
    policy: &str,
    records: &[TraceRecord],
    time_scale: f64,
) -> (PolicyReport, String) {
    daemon_run(policy, records, time_scale, None, &Api::Grpc).await
}

/// [`daemon`] driven over the daemon's OpenAI port (streaming chat) instead of gRPC.
async fn daemon_openai(policy: &str, records: &[TraceRecord], time_scale: f64) -> PolicyReport {
    let api = Api::OpenAi(OpenAiOptions::default());
    daemon_run(policy, records, time_scale, None, &api).await.0
}

async fn daemon_run(
    policy: &str,
    records: &[TraceRecord],
    time_scale: f64,
    slow: Option<(&str, f64)>,
    api: &Api,
) -> (PolicyReport, String) {
    daemon_run_on(None, policy, records, time_scale, slow, api).await
}

/// [`daemon_run`] on the fleet file `fleet` (`None`: the embedded demo fleet).
async fn daemon_run_on(
    fleet: Option<PathBuf>,
    policy: &str,
    records: &[TraceRecord],
    time_scale: f64,
    slow: Option<(&str, f64)>,
    api: &Api,
) -> (PolicyReport, String) {
    // One daemon at a time: each wants the machine's two cores to itself, and a client
    // starved by a concurrent test's daemon falls behind its schedule.
    let _one_at_a_time = ONE_DAEMON.lock().await;
    // A run in which the client could not keep its schedule compares nothing (see
    // `client_kept_up`): it is run again, a bounded number of times, and only a run that
    // kept the schedule is compared. A daemon that makes the client late every time
    // still fails here.
    for attempt in 1.. {
        let (report, metrics) =
            daemon_run_once(fleet.clone(), policy, records, time_scale, slow, api).await;
        match client_kept_up(policy, &report.load) {
            Ok(()) => return (report.report.policies.into_iter().next().unwrap(), metrics),
            Err(why) if attempt < VOID_RUNS => {
                eprintln!("{why}: void run {attempt}, running again")
            }
            Err(why) => panic!("{why} in {VOID_RUNS} runs out of {VOID_RUNS}"),
        }
    }
    unreachable!("the loop returns or panics")
}

/// Runs a comparison may void (the client fell behind) before the test fails.
const VOID_RUNS: u32 = 3;

/// One daemon started, driven by the load generator and shut down.
async fn daemon_run_once(
    fleet: Option<PathBuf>,
    policy: &str,
    records: &[TraceRecord],
    time_scale: f64,
    slow: Option<(&str, f64)>,
    api: &Api,
) -> (loadgen::LoadReport, String) {
    // The daemon gets its own runtime and threads, as in its own process, so the load
    // generator's sends never queue behind the daemon's tasks on shared workers.
    let (d, rt) = serve_support::start_apart(ServeConfig {
        time_scale,
        policy: policy.into(),
        grace_period_ms: 2_000,
        fleet: fleet.unwrap_or_default(),
        ..serve_support::config()
    })
    .await;
    if let Some((backend, factor)) = slow {
        use dujiang::wire::{inject_fault_request::Fault, InjectFaultRequest};
        serve_support::admin(d.admin_addr)
            .await
            .inject_fault(InjectFaultRequest {
                backend: backend.into(),
                fault: Some(Fault::Slowdown(factor)),
            })
            .await
            .unwrap();
    }
    let cfg = LoadConfig {
        target: match api {
            Api::Grpc => format!("http://{}", d.grpc_addr),
            Api::OpenAi(_) => format!("http://{}", d.openai_addr),
        },
        api: api.clone(),
        admin_target: Some(format!("http://{}", d.admin_addr)),
        time_scale,
        ..LoadConfig::default()
    };
    let report = loadgen::run(cfg, load_support::ok_records(records.to_vec()))
        .await
        .unwrap();
    let (code, metrics) = serve_support::http_get(d.http_addr, "/metrics").await;
    assert_eq!(code, 200);
    d.shutdown();
    rt.spawn(d.wait()).await.unwrap().unwrap();
    rt.shutdown_background();
    (report, metrics)
}

/// Latency is measured from the actual send, so a send more than 10 ms late only moves
/// that one request's arrival, which moves no percentile here beyond the tolerance
/// (`the_tolerance_covers_the_daemons_timing_jitter`). This shared 2-core machine delays
/// the odd send by 10–20 ms; more than 2% late means the client could not keep the
/// schedule at all (another process had the cores) and the comparison is void.
fn client_kept_up(policy: &str, load: &loadgen::LoadSummary) -> Result<(), String> {
    eprintln!(
        "{policy}: send lag p99 {:.1} ms, max {:.1} ms; {} of {} sent late",
        load.send_lag_ms.p99, load.send_lag_ms.max, load.late_sent, load.scheduled
    );
    if load.late_sent * 50 <= load.scheduled {
        Ok(())
    } else {
        Err(format!("the client fell behind: {load:?}"))
    }
}

fn check(policy: &str, time_scale: f64, replay: &PolicyReport, load: &PolicyReport, what: &str) {
    let failures = misses(policy, time_scale, replay, load, what);
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Compares up to [`MISSED_RUNS`] daemon runs (`run`) with `replay`, until one agrees.
/// The daemon's clock is the wall's, shared with every other process on this 2-core
/// machine: a run can miss a TTFT tail when the host stalls the daemon for a few ms at
/// 5× (a stall the client's send lag does not show), and did so on an idle machine for
/// the load-aware and prefill/decode comparisons. A real difference (a wrong time
/// scale, a lost hand-off, a length not kept) misses in every run; each miss is printed.
async fn agree_in_some_run<F: std::future::Future<Output = PolicyReport>>(
    policy: &str,
    time_scale: f64,
    replay: &PolicyReport,
    what: &str,
    mut run: impl FnMut() -> F,
) {
    for attempt in 1..=MISSED_RUNS {
        let load = run().await;
        let failures = misses(policy, time_scale, replay, &load, what);
        if failures.is_empty() {
            return;
        }
        assert!(
            attempt < MISSED_RUNS,
            "missed in {MISSED_RUNS} runs of {MISSED_RUNS}: {failures:#?}"
        );
        eprintln!("run {attempt} missed, running again: {failures:#?}");
    }
}

/// Daemon runs a timing comparison may take before it fails (see [`agree_in_some_run`]).
const MISSED_RUNS: u32 = 3;

/// The percentiles on which `load` is further from `replay` than the tolerance.
fn misses(
    policy: &str,
    time_scale: f64,
    replay: &PolicyReport,
    load: &PolicyReport,
    what: &str,
) -> Vec<String> {
    assert_eq!(load.policy, policy);
    let n = replay.stats.requests;
    assert_eq!(
        (load.stats.requests, load.stats.completed),
        (n, replay.stats.completed)
    );
    let mut failures = Vec::new();
    for (name, r, l) in [
        ("TTFT p50", replay.stats.ttft_ms.p50, load.stats.ttft_ms.p50),
        ("TTFT p99", replay.stats.ttft_ms.p99, load.stats.ttft_ms.p99),
        ("E2E p50", replay.stats.e2e_ms.p50, load.stats.e2e_ms.p50),
        ("E2E p99", replay.stats.e2e_ms.p99, load.stats.e2e_ms.p99),
    ] {
        let allowed = RELATIVE * r + WALL_MS * time_scale;
        let line = format!(
            "{policy} {name}: replay {r:.1} ms, {what} {l:.1} ms ({:+.1}%), allowed ±{allowed:.1} ms",
            (l - r) / r * 100.0
        );
        eprintln!("{line}");
        if (l - r).abs() > allowed {
            failures.push(line);
        }
    }
    failures
}

/// Requests per pool, to compare where two runs routed.
fn pool_counts(p: &PolicyReport) -> Vec<(String, u64)> {
    p.pools
        .iter()
        .map(|x| (x.pool.clone(), x.stats.requests))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_and_replay_agree_on_latency_percentiles() {
    // Round-robin first: its choices do not depend on load, so both drivers route every
    // request alike and only timing can differ. 300 requests, 84 s of trace at 5×.
    let scale = 5.0;
    let records = trace_records(300);
    let r = replay("round-robin", &records);
    let l = daemon("round-robin", &records, scale).await;
    check("round-robin", scale, &r, &l, "daemon");
    assert_eq!(pool_counts(&r), pool_counts(&l), "round-robin routes alike");

    // Then a load-aware policy, which sees the daemon's load a few wall ms apart from the
    // replay's and may route a borderline request differently.
    // 300 requests, not fewer: with the chips' prefill speeds within 1.5× of each other
    // (profiles v2), whether the trace's few 4k-token prompts land on the 910Bs or the
    // H20s is a close call, and a p99 of 150 requests (the 2nd slowest) flips between the
    // two with single routing choices; the 3rd slowest of 300 does not.
    let records = trace_records(300);
    let r = replay("least-work", &records);
    agree_in_some_run("least-work", scale, &r, "daemon", || {
        daemon("least-work", &records, scale)
    })
    .await;
}

/// The same comparison with the daemon driven over its OpenAI port: `dujiang load --api
/// openai` streaming chats (one token per SSE chunk, timed by the client from the stream,
/// the trace's lengths in `x-dujiang-prompt-tokens` and `max_tokens`) must agree with
/// replay within the same tolerance as the gRPC client, and route alike under round-robin
/// (the pools come from the response's placement headers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_over_openai_and_replay_agree_on_latency_percentiles() {
    let scale = 5.0;
    let records = trace_records(300);
    let r = replay("round-robin", &records);
    let l = daemon_openai("round-robin", &records, scale).await;
    check("round-robin", scale, &r, &l, "daemon over OpenAI HTTP");
    assert_eq!(pool_counts(&r), pool_counts(&l), "round-robin routes alike");
}

/// Requests near the model's context (the demo fleet's llama-3-8b: 8,192 tokens): the
/// daemon must refuse exactly what replay refuses, for the same reasons, and serve the
/// rest alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_and_replay_refuse_the_same_long_prompts() {
    let scale = 5.0;
    let prompts = [6000u32, 8000, 8150, 8191, 8192, 9000, 7900, 4000];
    let outputs = [40u32, 150, 30, 1, 20, 10, 300, 60];
    let records: Vec<TraceRecord> = (0..150u64)
        .map(|i| TraceRecord {
            arrival_ns: i * 200_000_000,
            prompt_tokens: prompts[i as usize % prompts.len()],
            output_tokens: outputs[(i as usize / prompts.len() + i as usize) % outputs.len()],
            ..TraceRecord::default()
        })
        .collect();
    let r = replay("round-robin", &records);
    assert!(
        r.stats.rejected > 10 && r.stats.completed > 10,
        "{:?}",
        r.stats
    );
    let (l, metrics) = daemon_and_metrics("round-robin", &records, scale).await;
    let shed = |reason: &str| -> u64 {
        let key = format!("dujiang_requests_shed_total{{reason=\"{reason}\",frontend=\"grpc\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&key)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    for reason in dujiang::request::Invalid::ALL {
        let want = r
            .stats
            .rejected_by_reason
            .get(reason.as_str())
            .copied()
            .unwrap_or(0);
        eprintln!(
            "{}: replay {want}, daemon {}",
            reason.as_str(),
            shed(reason.as_str())
        );
        assert_eq!(shed(reason.as_str()), want, "{reason:?}");
    }
    assert_eq!(l.stats.rejected, r.stats.rejected, "{:?}", l.stats);
    check("round-robin", scale, &r, &l, "daemon");
}

/// A slowdown fault: one H20 backend runs 3× slower from the start, in the daemon by
/// Admin `InjectFault`, in replay by a fault plan at 0 s. Both run the same straggler
/// detector (replay's check and probe intervals set to the daemon's at this time scale)
/// and must agree on latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_and_replay_agree_under_a_slowdown() {
    let scale = 5.0;
    let records = trace_records(200);
    let ms = 1_000_000u64;
    let interval = dujiang::fleet::outlier::DEFAULT_CHECK_INTERVAL_MS * ms * scale as u64;
    let cfg = ReplayConfig {
        stragglers: Some(dujiang::sim::StragglerConfig {
            interval_ns: interval,
            detector: dujiang::fleet::outlier::OutlierConfig {
                probe_interval_ns: 2 * interval,
                ..Default::default()
            },
            ..Default::default()
        }),
        ..ReplayConfig::default()
    };
    let plan = "[[fault]]\nat_s = 0\nbackend = \"h20-0\"\nkind = \"slowdown\"\nfactor = 3.0\n";
    let r = replay_with("round-robin", &records, cfg, Some(plan));
    let l = daemon_slowed("round-robin", &records, scale, "h20-0", 3.0).await;
    check("round-robin", scale, &r, &l, "daemon");
}

/// The prefill/decode fleet of `tests/data/pd_fidelity.toml`: two 910Bs prefill, two
/// H20s decode over the default staged link.
fn pd_fleet() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/pd_fidelity.toml")
}

/// Replay of `records` on the prefill/decode fleet with its policy and links.
fn replay_pd(records: &[TraceRecord]) -> PolicyReport {
    let spec = FleetSpec::load(&pd_fleet()).unwrap();
    let pools = spec.resolve(&Catalogue::embedded()).unwrap();
    let links = spec.link_table(&pools).unwrap();
    let policy = dujiang::policy::build(&spec.policy.name, &spec.policy.params, 1).unwrap();
    let cfg = ReplayConfig {
        links: Some(links),
        ..ReplayConfig::default()
    };
    Replay::new(pools, policy, cfg)
        .unwrap()
        .run(
            records
                .iter()
                .cloned()
                .map(Ok::<_, std::convert::Infallible>),
        )
        .unwrap()
}

/// A prefill/decode fleet (issue 16): the daemon's simulated backends hand prompts of 512
/// tokens or more from a 910B to an H20 over the modelled link in wall-clock time, replay
/// in virtual time; both must agree within the same tolerance as the mixed fleets. Most of
/// the trace's prompts (mean 1.2k tokens) are split, so TTFT includes prefill, transfer
/// (about 5 ms for 1.2k tokens) and the decode side's join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_and_replay_agree_on_a_prefill_decode_fleet() {
    let scale = 5.0;
    let records = trace_records(300);
    let r = replay_pd(&records);
    let handoffs: u64 = r.pools.iter().map(|p| p.stats.handoffs).sum();
    assert!(handoffs > 150, "most prompts split: {handoffs} hand-offs");
    agree_in_some_run("disaggregated", scale, &r, "daemon", || async {
        let (l, metrics) = daemon_run_on(
            Some(pd_fleet()),
            "disaggregated",
            &records,
            scale,
            None,
            &Api::Grpc,
        )
        .await;
        let transfers = metrics
            .lines()
            .find_map(|line| {
                line.strip_prefix(
                    "dujiang_kv_transfer_seconds_count{from_pool=\"ascend\",to_pool=\"h20\"} ",
                )?
                .trim()
                .parse::<f64>()
                .ok()
            })
            .unwrap_or(0.0) as u64;
        eprintln!("hand-offs: replay {handoffs}, daemon {transfers}");
        // Not retried: a hand-off count off by more than 5% is no timing jitter.
        assert!(
            transfers.abs_diff(handoffs) * 20 <= handoffs,
            "replay {handoffs} hand-offs, daemon {transfers}"
        );
        l
    })
    .await;
}

/// `records` with every arrival moved later by up to `spread_ns`, and one in 50 by up to
/// `late_ns` more (a late send), pseudo-randomly by `seed`.
fn jittered(records: &[TraceRecord], seed: u64, spread_ns: u64, late_ns: u64) -> Vec<TraceRecord> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out: Vec<TraceRecord> = records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.arrival_ns += next() % spread_ns;
            if next() % 50 == 0 {
                r.arrival_ns += next() % late_ns;
            }
            r
        })
        .collect();
    out.sort_by_key(|r| r.arrival_ns);
    out
}

/// The tolerance above must absorb what wall-clock driving does to arrivals and nothing
/// more: replays whose arrivals are jittered as the daemon's are (a few wall ms on every
/// request, 10–20 ms on an occasional late send, times the time scale) stay within it.
#[test]
fn the_tolerance_covers_the_daemons_timing_jitter() {
    let scale = 5.0;
    for (policy, n) in [("round-robin", 300), ("least-work", 300)] {
        let records = trace_records(n);
        let exact = replay(policy, &records);
        for seed in 1..=6 {
            let moved = jittered(
                &records,
                seed,
                3_000_000 * scale as u64,
                20_000_000 * scale as u64,
            );
            check(policy, scale, &exact, &replay(policy, &moved), "jittered");
        }
    }
    // And on the prefill/decode fleet, whose requests cross two backends and a link.
    let records = trace_records(300);
    let exact = replay_pd(&records);
    for seed in 1..=6 {
        let moved = jittered(
            &records,
            seed,
            3_000_000 * scale as u64,
            20_000_000 * scale as u64,
        );
        check(
            "disaggregated",
            scale,
            &exact,
            &replay_pd(&moved),
            "jittered",
        );
    }
}

/// The trace's first 300 requests at 20× their rate: 300 arrivals in about 4 s of wall
/// time at time scale 1, several times what the demo fleet serves, so both drivers shed.
fn flood() -> Vec<TraceRecord> {
    trace_records(300)
        .into_iter()
        .map(|mut r| {
            r.arrival_ns /= 20;
            r
        })
        .collect()
}

/// Requests shed because their SLO was predicted unmeetable.
fn shed_by_prediction(r: &PolicyReport) -> u64 {
    r.stats
        .rejected_by_reason
        .get("slo_unmeetable")
        .copied()
        .unwrap_or(0)
}

/// Replays of the flood with arrivals jittered as the daemon's are (up to 3 ms on every
/// request, up to 20 ms more on one in 50): what replay predicts under the daemon's
/// timing noise.
fn jittered_floods(policy: &str) -> Vec<PolicyReport> {
    let records = flood();
    (1..=12)
        .map(|seed| replay(policy, &jittered(&records, seed, 3_000_000, 20_000_000)))
        .collect()
}

/// `what`'s range over `runs`, widened by the fidelity tolerance on each side.
fn band(runs: &[PolicyReport], what: impl Fn(&PolicyReport) -> f64) -> (f64, f64) {
    let values: Vec<f64> = runs.iter().map(what).collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo * (1.0 - RELATIVE) - 3.0, hi * (1.0 + RELATIVE) + 3.0)
}

/// Overload with shedding. Under overload, whether a request is shed depends on the queue
/// it finds, so a few ms of timing noise moves the count a lot: replays of the same flood
/// with arrivals jittered as the daemon's are shed 43 to 81 requests where the exact
/// replay sheds 41. The daemon, running the same admission rule on the same predictions,
/// must land within that spread (widened by the usual tolerance), on sheds, completions
/// and the median latencies of what it serves; a daemon that did not shed by prediction,
/// or shed by another rule, would not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_and_replay_shed_alike_under_overload() {
    let (policy, scale) = ("least-work", 1.0);
    let runs = jittered_floods(policy);
    assert!(runs.iter().all(|r| shed_by_prediction(r) > 0));
    let (l, metrics) = daemon_and_metrics(policy, &flood(), scale).await;
    let shed = metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(
                "dujiang_requests_shed_total{reason=\"slo_unmeetable\",frontend=\"grpc\"} ",
            )?
            .trim()
            .parse::<f64>()
            .ok()
        })
        .expect("the shed counter is exported");
    let mut failures = Vec::new();
    for (name, daemon, (lo, hi)) in [
        ("shed", shed, band(&runs, |r| shed_by_prediction(r) as f64)),
        (
            "completed",
            l.stats.completed as f64,
            band(&runs, |r| r.stats.completed as f64),
        ),
        (
            "TTFT p50",
            l.stats.ttft_ms.p50,
            band(&runs, |r| r.stats.ttft_ms.p50),
        ),
        (
            "E2E p50",
            l.stats.e2e_ms.p50,
            band(&runs, |r| r.stats.e2e_ms.p50),
        ),
    ] {
        let line =
            format!("{name}: daemon {daemon:.1}, jittered replays within [{lo:.1}, {hi:.1}]");
        eprintln!("{line}");
        if !(lo..=hi).contains(&daemon) {
            failures.push(line);
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
