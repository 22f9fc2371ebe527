//! `dujiang load`'s generator over real gRPC on loopback: the sending schedule is open
//! loop (a slow server does not slow it), sends that cannot go out on time are counted as
//! late, every status code is accounted for, and `dujiang compare` prints the relative
//! differences of two reports.

mod load_support;
mod serve_support;

use dujiang::loadgen::{self, compare, LoadConfig};
use dujiang::trace::TraceRecord;
use load_support::*;
use std::time::{Duration, Instant};

fn config(addr: std::net::SocketAddr) -> LoadConfig {
    LoadConfig {
        target: format!("http://{addr}"),
        // The stubs serve no Admin; a daemon's tests set its admin address.
        admin_target: None,
        connections: 2,
        ..LoadConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_does_not_slow_the_schedule() {
    // Every response starts only after 1.5 s, while all 40 requests are due within 1 s: a
    // closed-loop client would send one and wait. The stub must see every request
    // arrive on schedule before it has answered any.
    let delay = Duration::from_millis(1500);
    let (addr, arrivals) = start_stub(delay).await;
    let gap = Duration::from_millis(25);
    let start = Instant::now();
    let report = loadgen::run(config(addr), ok_records(evenly(40, gap, PROMPT_OK)))
        .await
        .unwrap();
    let arrivals = arrivals.lock().clone();
    assert_eq!(arrivals.len(), 40);
    let first = arrivals[0];
    assert!(
        first.duration_since(start) < Duration::from_millis(200),
        "first send took {:?}",
        first.duration_since(start)
    );
    let last = *arrivals.iter().max().unwrap();
    assert!(
        last.duration_since(start) < delay,
        "the last request arrived {:?} after the start, after the first response was due",
        last.duration_since(start)
    );
    // Arrivals keep the schedule's spacing. Sending all at once, or one after another's
    // response, would put the last ones up to a second off. Loopback and a busy two-core
    // machine delay the odd send by 10–20 ms, so: every arrival within four gaps of its
    // due time relative to the first, and nine in ten within 20 ms.
    let mut sorted = arrivals.clone();
    sorted.sort();
    let offsets: Vec<f64> = sorted
        .iter()
        .enumerate()
        .map(|(i, at)| at.duration_since(first).as_secs_f64() - (gap * i as u32).as_secs_f64())
        .collect();
    for (i, off) in offsets.iter().enumerate() {
        assert!(
            off.abs() < 4.0 * gap.as_secs_f64(),
            "request {i} arrived {off:+.4} s off schedule"
        );
    }
    let on_time = offsets.iter().filter(|o| o.abs() < 0.020).count();
    assert!(
        on_time >= 36,
        "only {on_time} of 40 within 20 ms: {offsets:?}"
    );
    let l = &report.load;
    assert_eq!((l.scheduled, l.sent, l.late_not_sent), (40, 40, 0));
    let p = &report.report.policies[0];
    assert_eq!(p.stats.completed, 40);
    // Latency includes the server's delay: nothing was hidden by waiting to send.
    assert!(p.stats.e2e_ms.p50 >= 1500.0, "{:?}", p.stats.e2e_ms);
    assert_eq!(p.pools[0].pool, "stub");
    assert_eq!(p.pools[0].stats.output_tokens, 160);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_over_the_concurrency_limit_are_counted_late_not_delayed() {
    // Five requests fill the limit and stay in flight for 1 s; the other 15 fall due
    // within 200 ms, so none can be sent on time: they must be counted, not queued.
    let (addr, arrivals) = start_stub(Duration::from_millis(1000)).await;
    let cfg = LoadConfig {
        concurrency_limit: Some(5),
        ..config(addr)
    };
    let report = loadgen::run(
        cfg,
        ok_records(evenly(20, Duration::from_millis(10), PROMPT_OK)),
    )
    .await
    .unwrap();
    assert_eq!(
        arrivals.lock().len(),
        5,
        "only five requests reach the server"
    );
    let l = &report.load;
    assert_eq!((l.scheduled, l.sent, l.late_not_sent), (20, 5, 15));
    let s = &report.report.policies[0].stats;
    assert_eq!((s.requests, s.completed, s.rejected), (20, 5, 15));
    assert_eq!(s.rejected_by_reason.get("late_not_sent"), Some(&15));
    // The five sent meet the 2 s TTFT SLO; the fifteen never sent count as misses.
    assert_eq!(s.slo_attainment, 0.25, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_codes_are_counted_whatever_ends_a_request() {
    let (addr, _) = start_stub(Duration::from_millis(5)).await;
    let mut records = Vec::new();
    for (i, prompt) in [
        PROMPT_OK,
        PROMPT_SHED,
        PROMPT_OK,
        PROMPT_FAIL_MID_STREAM,
        PROMPT_SHED,
        PROMPT_OK,
        PROMPT_SHED,
    ]
    .into_iter()
    .enumerate()
    {
        records.push(TraceRecord {
            arrival_ns: i as u64 * 5_000_000,
            prompt_tokens: prompt,
            output_tokens: 3,
            ..TraceRecord::default()
        });
    }
    let report = loadgen::run(config(addr), ok_records(records))
        .await
        .unwrap();
    let codes = &report.load.status_codes;
    assert_eq!(codes.get("ok"), Some(&3), "{codes:?}");
    assert_eq!(codes.get("resource_exhausted"), Some(&3), "{codes:?}");
    assert_eq!(codes.get("unavailable"), Some(&1), "{codes:?}");
    assert_eq!(codes.values().sum::<u64>(), 7);
    let p = &report.report.policies[0];
    assert_eq!(p.policy, "unknown", "the stub has no Admin service");
    assert_eq!(
        (p.stats.requests, p.stats.completed, p.stats.rejected),
        (7, 3, 4)
    );
    assert_eq!(
        p.stats.rejected_by_reason.get("resource_exhausted"),
        Some(&3)
    );
    // The mid-stream failure had been placed on a pool: it counts there too.
    let stub = &p.pools[0];
    assert_eq!((stub.stats.requests, stub.stats.completed), (4, 3));
    assert_eq!(stub.stats.rejected_by_reason.get("unavailable"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_answers_invalid_requests_with_invalid_argument() {
    let d = serve_support::start(dujiang::serve::ServeConfig {
        fleet: serve_support::data("serve_two_h20.toml"),
        time_scale: 20.0,
        ..serve_support::config()
    })
    .await;
    let mut records = Vec::new();
    for i in 0..8u64 {
        let (prompt, output) = match i {
            2 | 5 => (300, 0),    // max_tokens 0
            6 => (1_000_000, 16), // longer than the model's context
            _ => (300, 16),
        };
        records.push(TraceRecord {
            arrival_ns: i * 20_000_000,
            prompt_tokens: prompt,
            output_tokens: output,
            ..TraceRecord::default()
        });
    }
    let cfg = LoadConfig {
        time_scale: 20.0,
        admin_target: Some(format!("http://{}", d.admin_addr)),
        ..config(d.grpc_addr)
    };
    let report = loadgen::run(cfg, ok_records(records)).await.unwrap();
    let codes = &report.load.status_codes;
    assert_eq!(codes.get("ok"), Some(&5), "{codes:?}");
    assert_eq!(codes.get("invalid_argument"), Some(&3), "{codes:?}");
    let p = &report.report.policies[0];
    assert_eq!(p.policy, "least-outstanding", "named by Admin.ListPools");
    assert_eq!(
        (p.stats.requests, p.stats.completed, p.stats.rejected),
        (8, 5, 3)
    );
    let h20 = p.pools.iter().find(|x| x.pool == "h20").unwrap();
    assert_eq!((h20.backends, h20.chip.as_str()), (2, "h20"));
    assert_eq!(h20.stats.output_tokens, 5 * 16);
    assert!(h20.stats.cost_usd > 0.0, "priced from Admin.ListPools");
    d.shutdown();
    d.wait().await.unwrap();
}

fn report_with(ttft_p50: f64, e2e_p99: f64) -> dujiang::sim::Report {
    let mut stats = dujiang::sim::Stats {
        requests: 100,
        completed: 100,
        slo_attainment: 0.9,
        goodput_rps: 2.0,
        ..Default::default()
    };
    stats.ttft_ms.p50 = ttft_p50;
    stats.e2e_ms.p99 = e2e_p99;
    dujiang::sim::Report {
        source: "replay".into(),
        trace: "t.csv".into(),
        fleet: "demo".into(),
        policies: vec![dujiang::sim::PolicyReport {
            policy: "round-robin".into(),
            stats,
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn compare_prints_relative_differences_per_percentile() {
    let a = report_with(200.0, 4000.0);
    let mut b = report_with(220.0, 3800.0);
    b.source = "load".into();
    let text = compare::render(&a, &b);
    let line = |metric: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(metric))
            .unwrap_or_else(|| panic!("no `{metric}` line in\n{text}"))
            .to_string()
    };
    assert!(line("TTFT p50 ms").ends_with("+10.0%"), "{text}");
    assert!(line("E2E p99 ms").ends_with("-5.0%"), "{text}");
    assert!(line("SLO attainment").ends_with("+0.0%"), "{text}");
    assert!(line("TTFT p99 ms").ends_with("+0.0%"), "two zeros: {text}");
    assert!(text.contains("A: replay of t.csv") && text.contains("B: load of t.csv"));
    let rows = compare::rows(&a.policies[0].stats, &b.policies[0].stats);
    let metrics: Vec<&str> = rows.iter().map(|r| r.metric.as_str()).collect();
    for m in ["TPOT p999 ms", "queue p90 ms", "goodput req/s"] {
        assert!(metrics.contains(&m), "{metrics:?}");
    }

    // Through the binary, from JSON files, a load report's extra `load` key included.
    let dir = std::env::temp_dir().join(format!("dujiang-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (pa, pb) = (dir.join("a.json"), dir.join("b.json"));
    std::fs::write(&pa, a.to_json()).unwrap();
    let with_load = loadgen::LoadReport {
        report: b,
        load: Default::default(),
    };
    std::fs::write(&pb, with_load.to_json()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dujiang"))
        .arg("compare")
        .arg(&pa)
        .arg(&pb)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), text);

    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"policies\": 3}").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dujiang"))
        .arg("compare")
        .arg(&pa)
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.json is not a dujiang report"), "{err}");
}
