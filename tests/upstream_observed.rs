//! What the router observes becomes calibration input: a router in front of a real
//! `dujiang serve` engine (its own process, on loopback) records the lone prefills and
//! the decode gaps of the requests it proxies, exports them on `GET /observed` as measured
//! points, and `dujiang calibrate --points` fits them alongside the shipped points.

#[path = "serve_openai_support/mod.rs"]
mod openai_support;
mod upstream_support;

use dujiang::calibrate::{parse_points, Metric, Workload};
use std::process::Command;
use upstream_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observed_points_feed_calibrate() {
    let dir = scratch("observed");
    let engine = Engine::start(&dir, "127.0.0.1:0").await;
    let d = router(&dir, &proxy_fleet(&[engine.url()], "round-robin"), |_| {}).await;

    // Nothing proxied yet: a header and no points.
    let (status, body) = http_get(d.http_addr, "/observed").await;
    assert_eq!(status, 200);
    assert!(
        parse_points(&body, "observed").unwrap().is_empty(),
        "{body}"
    );

    // Sequential requests: each is alone on the endpoint.
    for _ in 0..3 {
        let body = openai_support::chat_body("Why split the river?", 8, true, true);
        let resp = openai_support::post(d.openai_addr, "/v1/chat/completions", &[], &body).await;
        assert_eq!(resp.status, 200, "{}", resp.body);
    }

    let (status, body) = http_get(d.http_addr, "/observed").await;
    assert_eq!(status, 200);
    let points = parse_points(&body, "observed").unwrap_or_else(|e| panic!("{e}\n{body}"));
    let prefill: Vec<_> = points
        .iter()
        .filter(|p| p.metric == Metric::PrefillMs)
        .collect();
    let decode: Vec<_> = points
        .iter()
        .filter(|p| p.metric == Metric::StepMs)
        .collect();
    assert!(!prefill.is_empty(), "{body}");
    assert!(!decode.is_empty(), "{body}");
    for p in &points {
        assert!(p.value > 0.0 && p.value < 60_000.0, "{body}");
        assert!(p.source.contains(&engine.url()), "{body}");
        assert!(p.source.contains("front"), "{body}");
        assert_eq!((p.chip.as_str(), p.model.as_str()), ("h20", "llama-3-8b"));
    }
    assert!(matches!(prefill[0].workload, Workload::Prefill { tokens } if tokens > 0));
    assert!(
        matches!(decode[0].workload, Workload::Decode { batch: 1, context } if context > 0),
        "{body}"
    );

    // `dujiang calibrate` takes the file beside the shipped points.
    let file = dir.join("observed.toml");
    std::fs::write(&file, &body).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dujiang"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["calibrate", "--no-loo", "--points"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&decode[0].id), "{stdout}");
    assert!(stdout.contains("am-a-910b2-ttft"), "{stdout}");
    d.shutdown();
    d.wait().await.unwrap();
}
