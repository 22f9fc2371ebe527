//! The load view of a real engine includes what its own `/metrics` says: an engine that
//! other clients keep busy shows as busy to the router. A vLLM-like endpoint (a small
//! axum server with vLLM's metric names) is scraped every 50 ms; when its `/metrics` fails,
//! the figures go stale and are dropped, and the endpoint stays in routing.

mod upstream_support;

use dujiang::wire;
use std::sync::Arc;
use std::time::Duration;
use upstream_support::*;

const VLLM: &str =
    "# HELP vllm:num_requests_running Number of requests in model execution batches.\n\
# TYPE vllm:num_requests_running gauge\n\
vllm:num_requests_running{model_name=\"m\"} 7.0\n\
# TYPE vllm:num_requests_waiting gauge\n\
vllm:num_requests_waiting{model_name=\"m\"} 5.0\n\
# TYPE vllm:kv_cache_usage_perc gauge\n\
vllm:kv_cache_usage_perc{model_name=\"m\"} 0.5\n";

/// A vLLM stand-in serving `/metrics` (200 while `up`, else 500) and `/health`.
async fn fake_vllm(up: Arc<std::sync::atomic::AtomicBool>) -> std::net::SocketAddr {
    use std::sync::atomic::Ordering::Relaxed;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let up = up.load(Relaxed);
                async move {
                    if up {
                        (axum::http::StatusCode::OK, VLLM)
                    } else {
                        (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down")
                    }
                }
            }),
        )
        .route("/health", axum::routing::get(|| async { "" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engines_own_metrics_feed_the_load_view_and_a_failed_scrape_is_only_stale() {
    let dir = scratch("scrape");
    let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let addr = fake_vllm(up.clone()).await;
    let fleet = proxy_fleet(&[format!("http://{addr}")], "least-outstanding")
        .replace("chip = \"h20\"", "chip = \"h20\"\nmetrics = \"vllm\"");
    let d = router(&dir, &fleet, |c| c.upstream.scrape_interval_ms = 50).await;
    let mut adm = admin(d.admin_addr).await;
    let load =
        async |adm: &mut dujiang::wire::admin_client::AdminClient<tonic::transport::Channel>| {
            adm.list_backends(wire::ListBackendsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .backends[0]
                .load
                .unwrap()
        };
    let mut seen = None;
    for _ in 0..100 {
        let l = load(&mut adm).await;
        if l.waiting == 5 {
            seen = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let l = seen.expect("the scraped queue never showed");
    assert_eq!((l.waiting, l.running), (5, 7), "{l:?}");
    assert!((l.kv_usage - 0.5).abs() < 1e-3, "{l:?}");
    let m = metrics(d.http_addr).await;
    assert_eq!(
        series(
            &m,
            "dujiang_backend_waiting_requests",
            &["backend=\"real-0\""]
        ),
        Some(5.0),
        "{m}"
    );

    // The exporter fails: the figures go stale and are dropped; the endpoint still serves.
    up.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut dropped = false;
    for _ in 0..100 {
        if load(&mut adm).await.waiting == 0 {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(dropped, "stale scraped figures were kept");
    let m = metrics(d.http_addr).await;
    assert_eq!(
        series(&m, "dujiang_backend_serving", &["backend=\"real-0\""]),
        Some(1.0),
        "{m}"
    );
    d.shutdown();
    d.wait().await.unwrap();
}
