//! `/metrics` as Prometheus sees it: the scrape carries real histograms (explicit buckets,
//! not summaries) with the catalogue's names and labels, passes `promtool check metrics`,
//! and a real Prometheus server scraping the daemon answers a `histogram_quantile` query
//! over TTFT with a number.
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package, which CI installs.
//! Missing binaries fail these tests with a message saying so: a silent skip would hide
//! that the exposition format is no longer checked.

mod serve_support;

use serve_support::*;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("`{name}` is not on PATH: install Debian's `prometheus` package (apt-get install -y prometheus), as .ci/run does")
    })
}

/// Runs a few requests so every histogram has samples.
async fn traffic(d: &dujiang::serve::RunningDaemon, n: u32) {
    let mut c = inference(d.grpc_addr).await;
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            generate(
                &mut c,
                tonic::Request::new(request(200 + i * 10, 5 + i % 4)),
            )
            .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().finished_count, 1);
    }
    // One request refused, so a shed counter appears too.
    let _ = c.generate(request(100, 0)).await;
}

#[tokio::test]
async fn scrape_has_histograms_and_passes_promtool() {
    let promtool = tool("promtool");
    let d = start(dujiang::serve::ServeConfig {
        time_scale: 20.0,
        ..config()
    })
    .await;
    traffic(&d, 20).await;
    let (code, text) = http_get(d.http_addr, "/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "dujiang_ttft_seconds",
        "dujiang_inter_token_seconds",
        "dujiang_e2e_seconds",
        "dujiang_queue_seconds",
        "dujiang_router_decision_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} histogram")),
            "{name}:\n{text}"
        );
        assert!(text.contains(&format!("{name}_bucket{{")), "{name}");
        assert!(text.contains(&format!("{name}_count{{")), "{name}");
    }
    assert!(text.contains("le=\"0.0005\""), "sub-millisecond bucket");
    assert!(text.contains("le=\"300\""), "five-minute bucket");
    assert!(text.contains("policy=\"predicted-latency\""));
    assert!(text.contains("chip=\"ascend-910b\"") || text.contains("chip=\"h20\""));
    assert_eq!(metric_sum(&text, "dujiang_requests_total"), 20.0);
    for gauge in [
        "dujiang_backend_running_requests",
        "dujiang_backend_waiting_requests",
        "dujiang_backend_kv_usage_ratio",
    ] {
        assert!(
            text.contains(&format!("{gauge}{{backend=\"h20-0\",pool=\"h20\"}}")),
            "{gauge}"
        );
    }
    assert!(!text.contains("quantile="), "histograms, not summaries");

    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    d.shutdown();
    d.wait().await.unwrap();
}

/// Kills the Prometheus server when the test ends, however it ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_answers_a_ttft_quantile() {
    let prometheus = tool("prometheus");
    let d = start(dujiang::serve::ServeConfig {
        time_scale: 20.0,
        ..config()
    })
    .await;
    let dir = std::env::temp_dir().join(format!("dujiang-prom-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: dujiang\n    static_configs:\n      - targets: ['{}']\n",
            d.http_addr
        ),
    )
    .unwrap();
    let (child, prom, log) = spawn_prometheus(
        Command::new(prometheus)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .stdout(Stdio::null()),
    )
    .await;
    let _server = Server(child);
    // Traffic spread over a few scrapes, so rate() has two points with a difference.
    let query = "/api/v1/query?query=histogram_quantile(0.99%2C%20sum%20by%20(le)%20(rate(dujiang_ttft_seconds_bucket%5B1m%5D)))";
    let mut answer = String::new();
    let mut value = None;
    for round in 0..30 {
        traffic(&d, 5).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if round < 3 {
            continue;
        }
        if let Ok(s) = tokio::net::TcpStream::connect(prom).await {
            drop(s);
            answer = http_get(prom, query).await.1;
            value = parse_vector_value(&answer);
            if value.is_some_and(f64::is_finite) {
                break;
            }
        }
    }
    let log = log.text();
    let value =
        value.unwrap_or_else(|| panic!("no quantile from Prometheus: {answer}\nlog:\n{log}"));
    assert!(
        value.is_finite() && value > 0.0 && value < 300.0,
        "p99 TTFT {value}: {answer}"
    );
    d.shutdown();
    d.wait().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The first sample value of an instant-vector answer: `"value":[<ts>,"<v>"]`.
fn parse_vector_value(json: &str) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let sample = v.get("data")?.get("result")?.get(0)?.get("value")?.get(1)?;
    sample.as_str()?.parse().ok()
}

/// The value of the one sample whose line starts with `series` (name and labels as
/// rendered), if there is one.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Before any request, every series whose labels are known exists at 0: outcomes (fleet
/// and per pool), every refusal reason, both migration kinds, per pool its latency series
/// for the policy in force, tokens, SLO misses, straggler counters, `dujiang_pool_info` and
/// its cost, per backend its gauges. Idle pools therefore show up in sums and cost rules.
#[tokio::test]
async fn every_known_series_exists_before_the_first_request() {
    let d = start(config()).await;
    let (code, text) = http_get(d.http_addr, "/metrics").await;
    assert_eq!(code, 200);
    // Each front end's request series, so a rate by `frontend` sees both from the start.
    for f in ["grpc", "openai"] {
        for o in ["ok", "cancelled", "deadline_exceeded", "failed", "shutdown"] {
            let s = format!("dujiang_requests_total{{outcome=\"{o}\",frontend=\"{f}\"}}");
            assert_eq!(sample(&text, &s), Some(0.0), "{s}:\n{text}");
        }
        for r in dujiang::admission::RejectReason::ALL {
            let s = format!(
                "dujiang_requests_shed_total{{reason=\"{}\",frontend=\"{f}\"}}",
                r.as_str()
            );
            assert_eq!(sample(&text, &s), Some(0.0), "{s}:\n{text}");
        }
        let s = format!("dujiang_requests_accepted_total{{frontend=\"{f}\"}}");
        assert_eq!(sample(&text, &s), Some(0.0), "{s}:\n{text}");
    }
    for k in ["rerouted", "migrated"] {
        let s = format!("dujiang_request_migrations_total{{kind=\"{k}\"}}");
        assert_eq!(sample(&text, &s), Some(0.0), "{s}");
    }
    assert_eq!(
        sample(
            &text,
            "dujiang_router_retries_total{policy=\"predicted-latency\"}"
        ),
        Some(0.0)
    );
    let pools = dujiang::fleet::FleetSpec::embedded_demo()
        .resolve(&dujiang::profile::Catalogue::embedded())
        .unwrap();
    for p in &pools {
        let (pool, chip) = (&p.name, &p.perf.chip.id);
        let pl = format!("pool=\"{pool}\",chip=\"{chip}\",policy=\"predicted-latency\"");
        for s in [
            format!("dujiang_ttft_seconds_count{{{pl}}}"),
            format!("dujiang_e2e_seconds_count{{{pl}}}"),
            format!("dujiang_prompt_tokens_total{{pool=\"{pool}\"}}"),
            format!("dujiang_generated_tokens_total{{pool=\"{pool}\"}}"),
            format!("dujiang_slo_violations_total{{pool=\"{pool}\",objective=\"ttft\"}}"),
            format!("dujiang_slo_violations_total{{pool=\"{pool}\",objective=\"tpot\"}}"),
            format!("dujiang_backend_ejections_total{{pool=\"{pool}\"}}"),
            format!("dujiang_backend_readmissions_total{{pool=\"{pool}\"}}"),
            format!("dujiang_pool_requests_total{{pool=\"{pool}\",outcome=\"failed\"}}"),
            format!("dujiang_backend_running_requests{{backend=\"{pool}-0\",pool=\"{pool}\"}}"),
        ] {
            assert_eq!(sample(&text, &s), Some(0.0), "{s}:\n{text}");
        }
        let info = format!(
            "dujiang_pool_info{{pool=\"{pool}\",chip=\"{chip}\",vendor=\"{}\",model=\"{}\",engine=\"{}\",dtype=\"{}\",tp=\"1\",domestic=\"{}\",role=\"mixed\"}}",
            p.perf.chip.vendor,
            p.perf.model.id,
            p.perf.engine.engine,
            p.perf.dtype,
            p.domestic()
        );
        assert_eq!(sample(&text, &info), Some(1.0), "{info}:\n{text}");
        let cost = sample(
            &text,
            &format!("dujiang_pool_cost_usd_per_hour{{pool=\"{pool}\"}}"),
        )
        .unwrap_or_else(|| panic!("no cost for {pool}:\n{text}"));
        assert!(
            (cost - p.cost_per_hour_usd()).abs() < 1e-9,
            "{pool}: {cost}"
        );
    }
    d.shutdown();
    d.wait().await.unwrap();
}

/// Refusals before acceptance are counted whichever step refuses: an invalid request, no
/// serving backend (all drained), and the daemon draining for shutdown.
#[tokio::test]
async fn every_refusal_is_counted_with_its_reason() {
    let d = start(dujiang::serve::ServeConfig {
        fleet: data("serve_two_h20.toml"),
        ..config()
    })
    .await;
    let refused = |text: &str, r: &str| {
        sample(
            text,
            &format!("dujiang_requests_shed_total{{reason=\"{r}\",frontend=\"grpc\"}}"),
        )
        .unwrap()
    };
    let mut c = inference(d.grpc_addr).await;
    let err = c.generate(request(100, 0)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let mut unknown_model = request(100, 4);
    unknown_model.model = "no-such-model".into();
    let err = c.generate(unknown_model).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let mut a = admin(d.admin_addr).await;
    let backends = a
        .list_backends(dujiang::wire::ListBackendsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .backends;
    for b in &backends {
        a.drain_backend(dujiang::wire::BackendRef {
            backend: b.backend.clone(),
        })
        .await
        .unwrap();
    }
    let err = c.generate(request(100, 4)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let text = http_get(d.http_addr, "/metrics").await.1;
    // The shared request check's own reason, and the catch-all for the rest.
    assert_eq!(refused(&text, "invalid_no_output"), 1.0, "{text}");
    assert_eq!(refused(&text, "invalid_request"), 1.0, "{text}");
    assert_eq!(refused(&text, "no_healthy_backend"), 1.0, "{text}");
    // Nothing was accepted: the outage shows only in the refusal counter.
    assert_eq!(
        sample(&text, "dujiang_requests_accepted_total{frontend=\"grpc\"}"),
        Some(0.0)
    );
    // What shutdown does first (the listeners stay open while streams drain).
    d.daemon.stop_accepting();
    let err = c.generate(request(100, 4)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let text = http_get(d.http_addr, "/metrics").await.1;
    assert_eq!(refused(&text, "draining"), 1.0, "{text}");
    d.shutdown();
    d.wait().await.unwrap();
}

/// A request's latencies are labelled with the policy that routed it, even when the
/// policy changes while it streams.
#[tokio::test]
async fn latencies_are_labelled_by_the_policy_that_routed_the_request() {
    let d = start(dujiang::serve::ServeConfig {
        fleet: data("serve_two_h20.toml"),
        policy: "round-robin".into(),
        ..config()
    })
    .await;
    let mut c = inference(d.grpc_addr).await;
    // Time scale 1: 60 tokens take well over a second, so the switch lands mid-stream.
    let mut stream = c.generate(request(100, 60)).await.unwrap().into_inner();
    stream.message().await.unwrap().expect("started");
    admin(d.admin_addr)
        .await
        .set_policy(dujiang::wire::SetPolicyRequest {
            policy: "least-work".into(),
        })
        .await
        .unwrap();
    let mut finished = false;
    while let Some(m) = stream.message().await.unwrap() {
        finished |= matches!(
            m.event,
            Some(dujiang::wire::generate_response::Event::Finished(_))
        );
    }
    assert!(finished);
    let text = http_get(d.http_addr, "/metrics").await.1;
    let e2e = |policy: &str| {
        metric_sum(
            &text
                .lines()
                .filter(|l| l.contains(&format!("policy=\"{policy}\"")))
                .collect::<Vec<_>>()
                .join("\n"),
            "dujiang_e2e_seconds_count",
        )
    };
    assert_eq!(e2e("round-robin"), 1.0, "{text}");
    assert_eq!(e2e("least-work"), 0.0, "{text}");
    // The new policy's series were registered when it was chosen.
    assert_eq!(
        sample(
            &text,
            "dujiang_e2e_seconds_count{pool=\"h20\",chip=\"h20\",policy=\"least-work\"}"
        ),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "dujiang_router_retries_total{policy=\"least-work\"}"),
        Some(0.0),
        "{text}"
    );
    d.shutdown();
    d.wait().await.unwrap();
}

/// RemovePool takes every series naming the pool with it, the per-backend gauges too.
#[tokio::test]
async fn a_removed_pool_disappears_from_the_scrape() {
    let d = start(dujiang::serve::ServeConfig {
        fleet: data("serve_two_h20.toml"),
        ..config()
    })
    .await;
    let mut a = admin(d.admin_addr).await;
    a.add_pool(dujiang::wire::AddPoolRequest {
        pool: "extra".into(),
        chip: "ascend-910b".into(),
        backends: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    let text = http_get(d.http_addr, "/metrics").await.1;
    assert_eq!(
        sample(
            &text,
            "dujiang_backend_serving{backend=\"extra-1\",pool=\"extra\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("dujiang_pool_info{pool=\"extra\",chip=\"ascend-910b\""),
        "{text}"
    );
    a.remove_pool(dujiang::wire::RemovePoolRequest {
        pool: "extra".into(),
    })
    .await
    .unwrap();
    let text = http_get(d.http_addr, "/metrics").await.1;
    assert!(!text.contains("extra"), "{text}");
    assert!(text.contains("pool=\"h20\""), "{text}");
    d.shutdown();
    d.wait().await.unwrap();
}
