//! The HTTP side of the daemon: `/metrics` (Prometheus text exposition), `/healthz` (the
//! process is up) and `/readyz` (200 while serving, 503 before startup finishes and once
//! shutdown has begun, so a load balancer stops sending work before streams are cut).
//! `/observed` exports what proxied endpoints were observed doing as measured points
//! (TOML) for `dujiang calibrate --points`.

use super::daemon::Daemon;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/observed", get(observed))
        .with_state(daemon)
}

/// The Prometheus exposition; also served on the OpenAI port, where vLLM serves it.
pub(super) async fn metrics(State(d): State<Arc<Daemon>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        d.metrics.render(),
    )
}

async fn observed(State(d): State<Arc<Daemon>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/toml; charset=utf-8")],
        d.observed_points(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(d): State<Arc<Daemon>>) -> impl IntoResponse {
    if d.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
