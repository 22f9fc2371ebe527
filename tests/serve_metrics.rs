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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let _server = Server(
        Command::new(prometheus)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );
    let prom: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
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
    let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
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
