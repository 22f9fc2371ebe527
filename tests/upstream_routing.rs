//! Routing over real engines: the chip model is the prior, observations correct it. Three
//! `dujiang serve` engines sit behind a routing daemon; one is slowed through its own Admin
//! `InjectFault`, which the router knows nothing of. Within seconds the router sends it
//! little traffic, and its prediction ratio on the router's /metrics shows why.

mod upstream_support;

use dujiang::wire;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use upstream_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_shifts_away_from_a_slowed_engine_and_its_ratio_shows_it() {
    let dir = scratch("slow");
    let mut engines = Vec::new();
    for _ in 0..3 {
        engines.push(Engine::start(&dir, "127.0.0.1:0").await);
    }
    let urls: Vec<String> = engines.iter().map(Engine::url).collect();
    let d = router(&dir, &proxy_fleet(&urls, "least-work"), |_| {}).await;
    let slowed = &engines[2];
    let mut engine_admin = admin(slowed.serving.admin).await;
    engine_admin
        .inject_fault(wire::InjectFaultRequest {
            backend: "h20-0".into(),
            fault: Some(wire::inject_fault_request::Fault::Slowdown(10.0)),
        })
        .await
        .unwrap();

    // Six clients, each sending one request after another for a few seconds.
    let placed = Arc::new(parking_lot::Mutex::new(Vec::<(Duration, String)>::new()));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let addr = d.grpc_addr;
        let placed = placed.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = inference(addr).await;
            while t0.elapsed() < Duration::from_secs(6) {
                let seen = generate(&mut client, tonic::Request::new(request(64, 16))).await;
                assert!(seen.status.is_none(), "{:?}", seen.status);
                let backend = seen.started.unwrap().backend;
                placed.lock().push((t0.elapsed(), backend));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let placed = placed.lock().clone();
    let late: Vec<&String> = placed
        .iter()
        .filter(|(at, _)| *at > Duration::from_secs(3))
        .map(|(_, b)| b)
        .collect();
    let mut by_backend: HashMap<&str, usize> = HashMap::new();
    for b in &late {
        *by_backend.entry(b.as_str()).or_default() += 1;
    }
    let slow_share = by_backend.get("real-2").copied().unwrap_or(0) as f64 / late.len() as f64;
    let m = metrics(d.http_addr).await;
    let ratio = |b: &str, phase: &str| {
        series(
            &m,
            "dujiang_backend_prediction_ratio",
            &[&format!("backend=\"{b}\""), &format!("phase=\"{phase}\"")],
        )
        .unwrap()
    };
    eprintln!(
        "after 3 s: {} requests, {by_backend:?} (slowed share {:.1}%); decode ratio real-0 {:.2}, real-2 {:.2}",
        late.len(),
        slow_share * 100.0,
        ratio("real-0", "decode"),
        ratio("real-2", "decode")
    );
    assert!(
        late.len() >= 20,
        "too few requests to judge: {}",
        late.len()
    );
    assert!(
        slow_share < 0.15,
        "the slowed engine still got {:.1}%",
        slow_share * 100.0
    );
    assert!(ratio("real-2", "decode") > 4.0, "{m}");
    assert!(ratio("real-0", "decode") < 2.0, "{m}");
    assert_eq!(
        sum_of(&m, "dujiang_requests_total", &[]),
        sum_of(&m, "dujiang_requests_total", &["outcome=\"ok\""])
    );
    d.shutdown();
    d.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowed_engine_is_ejected_as_a_straggler_and_readmitted_when_it_recovers() {
    let dir = scratch("straggler");
    let mut engines = Vec::new();
    for _ in 0..3 {
        engines.push(Engine::start(&dir, "127.0.0.1:0").await);
    }
    let urls: Vec<String> = engines.iter().map(Engine::url).collect();
    // Round-robin keeps sending the slowed engine its share until it is ejected.
    let d = router(&dir, &proxy_fleet(&urls, "round-robin"), |c| {
        c.reliability.min_samples = 6;
    })
    .await;
    let mut engine_admin = admin(engines[2].serving.admin).await;
    engine_admin
        .inject_fault(wire::InjectFaultRequest {
            backend: "h20-0".into(),
            fault: Some(wire::inject_fault_request::Fault::Slowdown(10.0)),
        })
        .await
        .unwrap();
    let ejected =
        |m: &str, b: &str| series(m, "dujiang_backend_ejected", &[&format!("backend=\"{b}\"")]);
    let t0 = Instant::now();
    let mut client = inference(d.grpc_addr).await;
    let mut out = false;
    while t0.elapsed() < Duration::from_secs(20) {
        let mut batch = Vec::new();
        for _ in 0..6 {
            let mut c = client.clone();
            batch.push(tokio::spawn(async move {
                generate(&mut c, tonic::Request::new(request(64, 8))).await
            }));
        }
        for t in batch {
            let seen = t.await.unwrap();
            assert!(seen.status.is_none(), "{:?}", seen.status);
        }
        if ejected(&metrics(d.http_addr).await, "real-2") == Some(1.0) {
            out = true;
            break;
        }
    }
    let m = metrics(d.http_addr).await;
    assert!(out, "the slowed engine was not ejected within 20 s:\n{m}");
    eprintln!("ejected after {:.1} s", t0.elapsed().as_secs_f64());
    assert_eq!(ejected(&m, "real-0"), Some(0.0), "{m}");
    assert_eq!(ejected(&m, "real-1"), Some(0.0), "{m}");
    // Ejected: new requests go to the others.
    for _ in 0..4 {
        let seen = generate(&mut client, tonic::Request::new(request(16, 2))).await;
        assert_ne!(seen.started.unwrap().backend, "real-2");
    }
    // The engine recovers: the router's probes see it and re-admit it.
    engine_admin
        .clear_fault(wire::BackendRef {
            backend: "h20-0".into(),
        })
        .await
        .unwrap();
    let back = eventually(Duration::from_secs(30), async || {
        ejected(&metrics(d.http_addr).await, "real-2") == Some(0.0)
    })
    .await;
    assert!(back, "{}", metrics(d.http_addr).await);
    d.shutdown();
    d.wait().await.unwrap();
}
