//! CORS, so a web page served from another origin (a browser playground, a chat UI) can
//! call the OpenAI API, as vLLM's server allows with `--allowed-origins` (default: any).
//! The daemon's `allowed_origins` (config key and `--allowed-origins`) lists the origins;
//! `*` allows every one, an empty list none.
//!
//! Written by hand as a wrapper around the router rather than with tower-http's
//! `CorsLayer`: tower-http is not in the dependency tree, and the OpenAI SDKs, curl and the
//! load generator send no `Origin`, so their requests must cost what they cost before.
//! Such a request pays one header lookup and goes to the router as it did, its future
//! returned as it is (no box, no clone of the router): about 150 instructions of the
//! ~100,000 a request costs (benches/frontend.rs count mode under callgrind), most of
//! them the lookup.
//!
//! With an `Origin`:
//! - a preflight (`OPTIONS` with `Access-Control-Request-Method`) on an API path is
//!   answered here: 204 with `Access-Control-Allow-Origin`, `-Methods` (the path's),
//!   `-Headers` (the ones asked for, as vLLM's default `allowed_headers = ["*"]` does, so
//!   `Authorization` and `Content-Type` pass) and `-Max-Age`; from an origin not allowed,
//!   403 in OpenAI's error shape and no CORS headers, so the browser refuses the call;
//! - any other request goes to the router, and its response gets
//!   `Access-Control-Allow-Origin` and `-Expose-Headers` (so the page can read the
//!   placement headers) when the origin is allowed, nothing from CORS when not.
//!   `Vary: Origin` is added whenever the list is not `*`, since the answer then depends
//!   on the origin.
//!
//! Credentials (cookies) are not allowed, as vLLM's default `allow_credentials = false`:
//! the API has none to read, and a bearer token is a header, which the preflight allows.

use super::error::ApiError;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
// tower's `Service`, which axum's router implements; tower-service is not a direct
// dependency, and tonic re-exports it.
use tonic::codegen::Service;

/// How long a browser may keep a preflight's answer: Starlette's default, which vLLM
/// serves with.
const MAX_AGE_SECONDS: HeaderValue = HeaderValue::from_static("600");

const ANY: HeaderValue = HeaderValue::from_static("*");
const ORIGIN: HeaderValue = HeaderValue::from_static("origin");

/// The response headers a page may read besides the CORS-safelisted ones: the request id,
/// where the request ran, and a 429's retry hints.
const EXPOSED: HeaderValue = HeaderValue::from_static(
    "x-request-id, x-dujiang-backend, x-dujiang-pool, x-dujiang-chip, x-dujiang-queue-ms, \
     x-dujiang-decode-backend, x-dujiang-decode-pool, x-dujiang-decode-chip, retry-after, \
     retry-after-ms",
);

/// The origins allowed (see the module documentation).
#[derive(Debug)]
pub struct Policy {
    /// `*`: every origin, answered with `Access-Control-Allow-Origin: *`.
    any: bool,
    /// Otherwise these, compared with `Origin` byte for byte and echoed back.
    only: Vec<HeaderValue>,
}

impl Policy {
    /// The policy for a validated `allowed_origins` list; `None` when it is empty (CORS
    /// off: every request goes straight to the router). An entry that is not a header
    /// value (validation refuses those) can match no `Origin` and is left out.
    pub fn new(allowed: &[String]) -> Option<Policy> {
        if allowed.is_empty() {
            return None;
        }
        Some(Policy {
            any: allowed.iter().any(|o| o == "*"),
            only: allowed
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect(),
        })
    }

    /// `Access-Control-Allow-Origin` for `origin`, if it is allowed.
    fn allow(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.any {
            Some(ANY)
        } else {
            self.only.iter().find(|o| *o == origin).cloned()
        }
    }
}

/// The methods an API path serves, as the router routes them; `None`: not an API path
/// (its preflight goes to the router, which answers 404 or 405).
fn methods_of(path: &str) -> Option<HeaderValue> {
    match path {
        "/v1/chat/completions" | "/v1/completions" => Some(HeaderValue::from_static("POST")),
        "/v1/models" | "/health" => Some(HeaderValue::from_static("GET")),
        p if p.starts_with("/v1/models/") => Some(HeaderValue::from_static("GET")),
        _ => None,
    }
}

/// The router (`inner`) behind the CORS check.
#[derive(Clone)]
pub struct Cors<S> {
    inner: S,
    policy: Option<Arc<Policy>>,
}

impl<S> Cors<S> {
    pub fn new(inner: S, policy: Option<Policy>) -> Cors<S> {
        Cors {
            inner,
            policy: policy.map(Arc::new),
        }
    }
}

impl<S> Service<Request> for Cors<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = CorsFuture<S::Future>;

    // Inlined into hyper's call of the router, so a request without `Origin` does not pay
    // a call on top of the header lookup and its future's poll stays a branch.
    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request) -> Self::Future {
        // The one check a request without `Origin` pays.
        let (Some(policy), Some(origin)) = (&self.policy, req.headers().get(header::ORIGIN)) else {
            return CorsFuture::Plain(self.inner.call(req));
        };
        let allow = policy.allow(origin);
        let vary = !policy.any;
        if req.method() == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            if let Some(methods) = methods_of(req.uri().path()) {
                let answer = match allow {
                    Some(allow) => preflight(allow, methods, req.headers(), vary),
                    None => refused(origin),
                };
                return CorsFuture::Answered(Some(answer));
            }
        }
        CorsFuture::Decorated {
            inner: self.inner.call(req),
            allow,
            vary,
        }
    }
}

/// 204 for an allowed origin's preflight.
fn preflight(allow: HeaderValue, methods: HeaderValue, asked: &HeaderMap, vary: bool) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
    if let Some(headers) = asked.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, headers.clone());
    }
    h.insert(header::ACCESS_CONTROL_MAX_AGE, MAX_AGE_SECONDS);
    if vary {
        h.insert(header::VARY, ORIGIN);
    }
    r
}

/// 403 for a preflight from an origin not allowed: no CORS headers, so the browser
/// refuses the call; the body says why for whoever looks at the network panel.
fn refused(origin: &HeaderValue) -> Response {
    let mut e = ApiError::invalid(
        "origin",
        format!(
            "`{}` is not an allowed origin; the daemon's allowed_origins (--allowed-origins) \
             lists the origins whose pages may call this API",
            String::from_utf8_lossy(origin.as_bytes())
        ),
    );
    e.status = StatusCode::FORBIDDEN;
    e.code = "origin_not_allowed".into();
    e.into_response()
}

/// The router's future, as it is for a request without `Origin`.
pub enum CorsFuture<F> {
    Plain(F),
    /// A request with `Origin`: the router's response, then the CORS headers.
    Decorated {
        inner: F,
        allow: Option<HeaderValue>,
        vary: bool,
    },
    /// A preflight answered here (taken when polled).
    Answered(Option<Response>),
}

impl<F> Future for CorsFuture<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            CorsFuture::Plain(f) => Pin::new(f).poll(cx),
            CorsFuture::Decorated { inner, allow, vary } => {
                let Ok(mut r) = ready!(Pin::new(inner).poll(cx));
                let h = r.headers_mut();
                if let Some(allow) = allow.take() {
                    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
                    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSED);
                }
                if *vary {
                    h.append(header::VARY, ORIGIN);
                }
                Poll::Ready(Ok(r))
            }
            // Polled again after it answered (hyper does not): an error, not a panic.
            CorsFuture::Answered(r) => Poll::Ready(Ok(r
                .take()
                .unwrap_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preflighted_paths_are_the_routed_ones() {
        for (path, methods) in [
            ("/v1/chat/completions", Some("POST")),
            ("/v1/completions", Some("POST")),
            ("/v1/models", Some("GET")),
            ("/v1/models/org/name", Some("GET")),
            ("/health", Some("GET")),
            ("/chat/completions", None),
            ("/metrics", None),
        ] {
            assert_eq!(
                methods_of(path).as_ref().map(|v| v.to_str().unwrap()),
                methods,
                "{path}"
            );
        }
    }

    #[test]
    fn an_origin_is_allowed_by_exact_match_or_star() {
        assert!(Policy::new(&[]).is_none());
        let any = Policy::new(&["*".into()]).unwrap();
        assert_eq!(
            any.allow(&HeaderValue::from_static("https://x.y")),
            Some(ANY)
        );
        let only = Policy::new(&["https://a.com".into(), "http://localhost:3000".into()]).unwrap();
        let a = HeaderValue::from_static("http://localhost:3000");
        assert_eq!(only.allow(&a), Some(a));
        for no in [
            "https://a.com:443",
            "http://a.com",
            "https://a.com.evil",
            "null",
        ] {
            assert_eq!(only.allow(&HeaderValue::from_static(no)), None, "{no}");
        }
    }
}
