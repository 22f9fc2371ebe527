//! The OpenAI-compatible HTTP front end (`--openai-addr`, default `127.0.0.1:8000`, the
//! port vLLM's and SGLang's users' tools default to): `POST /v1/chat/completions` and
//! `POST /v1/completions`, streaming (SSE) and not, `GET /v1/models` (and one model by
//! name), `GET /health` and `GET /metrics` (the metrics port's exposition, where vLLM
//! serves it), with CORS for browser pages on the origins configured
//! ([`cors`]).
//!
//! A thin translation: a request is read into the daemon's one request type and goes down
//! the same submit path as a gRPC request (validation, routing, admission, pacing,
//! deadlines, migration and metrics are the daemon's, not this module's); the answer is
//! the shared request stream written as OpenAI's JSON or server-sent events. What is
//! particular to HTTP lives here: the request's JSON and headers ([`request`]), the prompt
//! length and prefix hashes from text ([`prompt`]), the event framing ([`sse`]) and the
//! error shape and status codes ([`error`]).

mod cors;
mod error;
mod handlers;
mod json;
mod prompt;
mod request;
mod sse;

use super::daemon::Daemon;
use axum::routing::{get, post};
use axum::Router;
use std::sync::{Arc, OnceLock};

static STARTED_UNIX: OnceLock<u64> = OnceLock::new();

/// When the front end first started in this process (Unix seconds): the models'
/// `created`.
fn started_unix() -> u64 {
    *STARTED_UNIX.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_secs())
    })
}

/// The front end's service: the router behind the CORS check for `allowed_origins`
/// ([`cors`]).
pub fn service(daemon: Arc<Daemon>, allowed_origins: &[String]) -> cors::Cors<Router> {
    cors::Cors::new(router(daemon), cors::Policy::new(allowed_origins))
}

fn router(daemon: Arc<Daemon>) -> Router {
    started_unix();
    Router::new()
        .route("/v1/chat/completions", post(handlers::chat))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/models", get(handlers::models))
        .route("/v1/models/{*model}", get(handlers::model))
        .route("/health", get(handlers::health))
        // As vLLM and SGLang serve it beside their API, so load testers (AIPerf, vllm bench)
        // find the server's metrics where they look by default; the same text as the
        // metrics port's.
        .route("/metrics", get(super::http::metrics))
        .fallback(handlers::not_found)
        // After the routes: it applies to the ones registered before it.
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .with_state(daemon)
}
