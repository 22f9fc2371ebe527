//! The client side of the OpenAI HTTP API, shared by the load generator (`dujiang load
//! --api openai`) and the daemon's proxy backends (`serve::upstream`): one HTTP client
//! type with its connection pool, the reader of completion streams ([`sse`]), and the
//! JSON reader both sides' hot paths share ([`json`]).

pub mod json;
pub mod sse;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// The HTTP client: HTTP/1.1 with keep-alive, and HTTP/2 where TLS negotiates it, over
/// rustls with bundled Mozilla roots (no OpenSSL, no system certificate store needed).
pub type HttpClient =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Builds an [`HttpClient`] whose connections give up after `connect_timeout` and whose
/// idle pooled connections close after `idle_timeout`.
pub fn http_client(
    connect_timeout: Duration,
    idle_timeout: Duration,
) -> anyhow::Result<HttpClient> {
    let mut tcp = HttpConnector::new();
    // Each token is a small write; Nagle's algorithm would hold them back.
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    tcp.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .context("setting up TLS")?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp);
    Ok(
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle_timeout)
            .build(https),
    )
}
