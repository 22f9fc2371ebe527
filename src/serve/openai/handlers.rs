//! The endpoints: each reads its request ([`super::request`]), submits it on the daemon's
//! one request path ([`Daemon::submit_via`], the same routing, admission and pacing as
//! gRPC) and answers from the shared [`RequestStream`].
//!
//! A response starts once the request's backend has scheduled it (`Started`), so it can
//! name its placement in headers (`x-dujiang-backend`, `-pool`, `-chip`, `-queue-ms`) and
//! so every failure before that is still an HTTP status (429, 503, 504, ...). A streaming
//! response's body is then [`EventStream`]; dropping it (the client went away) drops the
//! request stream, which aborts the request and frees its KV cache.

use super::error::ApiError;
use super::request::{self, Endpoint};
use super::sse::{EventStream, Framer};
use crate::admission::RejectReason;
use crate::metrics::Frontend;
use crate::serve::backend::BackendHandle;
use crate::serve::daemon::{Daemon, Wake};
use crate::serve::stream::{token_word, RequestStream};
use crate::serve::MAX_REQUEST_BYTES;
use crate::wire::generate_response::Event;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio_stream::StreamExt;

pub async fn chat(State(d): State<Arc<Daemon>>, req: Request) -> Response {
    complete(d, Endpoint::Chat, req).await
}

pub async fn completions(State(d): State<Arc<Daemon>>, req: Request) -> Response {
    complete(d, Endpoint::Completions, req).await
}

async fn complete(d: Arc<Daemon>, endpoint: Endpoint, req: Request) -> Response {
    match try_complete(&d, endpoint, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn try_complete(
    d: &Arc<Daemon>,
    endpoint: Endpoint,
    req: Request,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let (parts, body) = req.into_parts();
    // Refusals before the shared path are counted like the ones on it.
    let refused = |e: ApiError| {
        d.metrics
            .shed(RejectReason::InvalidRequest.as_str(), Frontend::Openai);
        e
    };
    let body = read_body(body).await.map_err(|e| match e {
        BodyError::TooLarge => {
            let mut e = ApiError::invalid("body", format!("larger than {MAX_REQUEST_BYTES} bytes"));
            e.status = StatusCode::PAYLOAD_TOO_LARGE;
            refused(e)
        }
        // Malformed chunked framing: a bad request, not one too large.
        BodyError::Unreadable(why) => refused(ApiError::invalid(
            "body",
            format!("could not be read: {why}"),
        )),
        // Not a refusal, so not counted as one: the request was never whole, as a gRPC
        // call cut off mid-message never reaches the daemon at all. Still answered, for a
        // client that only closed its sending half and reads on.
        BodyError::ClientGone(why) => {
            tracing::debug!(why, "an OpenAI client went away while sending its request");
            ApiError::invalid("body", format!("could not be read: {why}"))
        }
    })?;
    let parsed = request::parse(endpoint, &parts.headers, &body).map_err(refused)?;
    let deadline = parsed.timeout.map(|t| received + t);
    let mut wire = parsed.wire;
    if !parsed.max_tokens_given {
        // As vLLM: no limit named, the default shrinks to the room the context leaves
        // after the prompt. A prompt that leaves none is refused by the shared check,
        // naming the prompt (`messages` for a chat), not a `max_tokens` never sent.
        if let (Some(context), Some(prompt)) = (d.max_context(&wire.model), wire.prompt_tokens) {
            let room = context.saturating_sub(prompt);
            if room > 0 {
                wire.max_tokens = wire.max_tokens.min(room);
            }
        }
    }
    // Nothing is answered before the start (streamed) or the end (not).
    let wake = if parsed.stream {
        Wake::Started
    } else {
        Wake::End
    };
    let accepted = d
        .submit_with(
            Frontend::Openai,
            wire,
            parsed.sampling,
            received,
            deadline,
            wake,
        )
        .await
        .map_err(|e| parsed.from_headers.rename(e.into()))?;
    let mut stream = RequestStream::new(d.clone(), accepted);
    // The placement headers come from the stream's backend, simulated text from the
    // token index (here and in [`EventStream`]).
    stream.bare_events();
    if !parsed.stream {
        // Answered once at the end: no wake-up (a poll of the whole connection) per chunk.
        stream.wake_only_at_end();
    }
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |t| t.as_secs());
    let framer = Framer::new(
        endpoint,
        stream.client_id(),
        created,
        stream.model(),
        stream.prompt_tokens(),
        parsed.stream,
        parsed.include_usage && parsed.continuous_usage,
    );
    // Until the backend schedules it, anything that ends the request is an HTTP status.
    let queue_seconds = loop {
        match stream.next().await {
            Some(Ok(Event::Started(s))) => break s.queue_seconds,
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => {
                return Err(ApiError::from(crate::serve::ServeError::Unavailable(
                    "the request ended before it started".into(),
                )))
            }
        }
    };
    // Placed as it started: once a prefill backend hands the request off, the stream's
    // backend is the decode one, which the headers name apart.
    let placed = response_headers(&stream, queue_seconds, parsed.stream);
    if parsed.stream {
        let body = Body::new(EventStream::new(stream, framer, parsed.include_usage));
        let mut r = Response::new(body);
        *r.headers_mut() = placed.finish(None);
        return Ok(r);
    }
    let mut text = String::new();
    let mut tokens = 0u32;
    let mut finish = "length";
    while let Some(item) = stream.next().await {
        match item? {
            // A real engine's text as it came; a simulated backend's words by index.
            Event::Tokens(t) if stream.proxied() => {
                text.push_str(&t.text);
                tokens += t.count;
            }
            Event::Tokens(t) => {
                text.reserve(t.count as usize * 8);
                for i in tokens..tokens + t.count {
                    text.push_str(token_word(i));
                }
                tokens += t.count;
            }
            Event::Finished(f) => {
                finish = finish_reason(&f);
                // A real engine's usage is its own count, not the chunks'.
                if let Some(u) = f.usage {
                    tokens = u.completion_tokens;
                }
                break;
            }
            Event::Started(_) => {}
        }
    }
    let body = framer.complete(&text, tokens, finish);
    let length = body.len();
    let mut r = Response::new(Body::from(body));
    *r.headers_mut() = placed.finish(Some(length));
    Ok(r)
}

/// Why a request body was not read.
enum BodyError {
    /// Over [`MAX_REQUEST_BYTES`]: 413.
    TooLarge,
    /// The transport's reason (bad chunked framing): 400.
    Unreadable(String),
    /// The connection ended or was reset before the whole body came (fewer bytes than
    /// `Content-Length`, or no last chunk): the client went away.
    ClientGone(String),
}

/// Whether a body error is the client's connection ending early rather than what it sent
/// being malformed: hyper reports a body cut short as an I/O error (`UnexpectedEof`)
/// under its own, a reset as `ConnectionReset`; an HTTP/2 client that gives up resets its
/// stream (`RST_STREAM`, e.g. `CANCEL` when its request is dropped) or leaves the
/// connection (`GOAWAY`), which h2 reports as an error received from the remote.
fn client_gone(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let gone = |io: &std::io::Error| {
        matches!(
            io.kind(),
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
        )
    };
    let mut e = Some(e);
    while let Some(at) = e {
        if at.downcast_ref::<std::io::Error>().is_some_and(gone) {
            return true;
        }
        // h2's error names no source: its I/O error is asked for.
        if let Some(h2) = at.downcast_ref::<h2::Error>() {
            return h2.is_remote() || h2.get_io().is_some_and(gone);
        }
        e = at.source();
    }
    false
}

/// A request body of at most [`MAX_REQUEST_BYTES`]. A body that comes as one frame (a
/// small JSON body always does) is taken as it is, without collecting it into a list of
/// frames first; a longer one is gathered into one buffer.
async fn read_body(mut body: Body) -> Result<Bytes, BodyError> {
    use http_body_util::BodyExt as _;
    let mut first: Option<Bytes> = None;
    let mut more: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if client_gone(&e) {
                BodyError::ClientGone(root_cause(&e))
            } else {
                BodyError::Unreadable(root_cause(&e))
            }
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry nothing a request reads
        };
        let len = first.as_ref().map_or(0, Bytes::len) + more.len() + data.len();
        if len > MAX_REQUEST_BYTES {
            return Err(BodyError::TooLarge);
        }
        match &first {
            None => first = Some(data),
            Some(f) => {
                if more.is_empty() {
                    more.reserve(len);
                    more.extend_from_slice(f);
                }
                more.extend_from_slice(&data);
            }
        }
    }
    Ok(if more.is_empty() {
        first.unwrap_or_default()
    } else {
        Bytes::from(more)
    })
}

/// An error's root cause: axum's body error and hyper's both say only "error reading a
/// body from connection"; the innermost source says what was wrong.
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut e = e;
    while let Some(inner) = e.source() {
        e = inner;
    }
    e.to_string()
}

/// OpenAI's name for how a request finished.
pub fn finish_reason(f: &crate::wire::Finished) -> &'static str {
    if f.finish_reason == crate::wire::FinishReason::Stop as i32 {
        "stop"
    } else {
        "length"
    }
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_BACKEND: HeaderName = HeaderName::from_static("x-dujiang-backend");
static X_POOL: HeaderName = HeaderName::from_static("x-dujiang-pool");
static X_CHIP: HeaderName = HeaderName::from_static("x-dujiang-chip");
static X_QUEUE_MS: HeaderName = HeaderName::from_static("x-dujiang-queue-ms");
static X_DECODE_BACKEND: HeaderName = HeaderName::from_static("x-dujiang-decode-backend");
static X_DECODE_POOL: HeaderName = HeaderName::from_static("x-dujiang-decode-pool");
static X_DECODE_CHIP: HeaderName = HeaderName::from_static("x-dujiang-decode-chip");

/// A response's headers: where the request runs, for clients that report per pool (the
/// load generator does), and the body's content type (and, streamed, `no-cache`; not
/// streamed, its `content-length`).
///
/// This runs on every request, so the map is a copy of one made once per backend (pair)
/// and worker thread ([`HeaderTemplate`]) with only the request id and the queue time
/// written in: building it header by header hashed and checked every name and value each
/// time. A copy is also only as large as it needs to be, where a map made for the seven
/// headers of a stream reserves room for twelve, too large for the allocator's per-thread
/// cache. A whole answer's length is written by [`Placed::finish`] once the body is made,
/// last, as axum would add it: axum adding it to a copy that holds just its entries grew
/// the map (a new table, every entry hashed again) for that one header.
fn response_headers(stream: &RequestStream, queue_seconds: f64, streamed: bool) -> Placed {
    let backend = stream.backend();
    let decode = stream.decode_backend();
    let (mut h, queue_at) = HEADER_TEMPLATES.with_borrow_mut(|kept| {
        let same = |t: &HeaderTemplate| {
            Arc::ptr_eq(&t.backend, &backend.name)
                && t.streamed == streamed
                && match (&t.decode, decode) {
                    (None, None) => true,
                    (Some(a), Some(b)) => Arc::ptr_eq(a, &b.name),
                    _ => false,
                }
        };
        if let Some(t) = kept.iter().find(|t| same(t)) {
            return (t.map.clone(), t.queue_at);
        }
        let t = HeaderTemplate::new(backend, decode, streamed);
        let made = (t.map.clone(), t.queue_at);
        if kept.len() >= HEADER_TEMPLATES_KEPT {
            kept.remove(0);
        }
        kept.push(t);
        made
    });
    // The template's entries are in insertion order: the request id first, the queue time
    // at `queue_at` (no lookup by name).
    let id = HeaderValue::from_str(stream.client_id()).ok();
    let valid = id.is_some();
    let mut values = h.values_mut();
    if let (Some(slot), Some(id)) = (values.next(), id) {
        *slot = id;
    }
    if let Some(slot) = values.nth(queue_at - 1) {
        *slot = queue_ms(queue_seconds);
    }
    Placed { map: h, valid }
}

/// A response's headers from [`response_headers`], but for a whole answer's length.
struct Placed {
    map: HeaderMap,
    /// Whether the client's request id is valid in a header.
    valid: bool,
}

impl Placed {
    /// The headers, with `length` as `content-length` for a whole answer.
    fn finish(mut self, length: Option<usize>) -> HeaderMap {
        if let Some(length) = length {
            // The template's last entry (before the removal below, which moves entries).
            if let Some(slot) = self.map.values_mut().last() {
                let mut digits = itoa::Buffer::new();
                *slot = HeaderValue::from_str(digits.format(length)).expect("digits");
            }
        }
        if !self.valid {
            // Not valid in a header: left out.
            self.map.remove(&X_REQUEST_ID);
        }
        self.map
    }
}

/// Seconds as milliseconds with three decimals, what `{:.3}` of the milliseconds prints
/// (whole microseconds), without float formatting.
fn queue_ms(seconds: f64) -> HeaderValue {
    let us = (seconds * 1e6).round() as u64;
    let mut buf = [0u8; 32];
    let mut at = buf.len();
    let mut push = |d: u8| {
        at -= 1;
        buf[at] = d;
    };
    let mut frac = us % 1000;
    for _ in 0..3 {
        push(b'0' + (frac % 10) as u8);
        frac /= 10;
    }
    push(b'.');
    let mut ms = us / 1000;
    loop {
        push(b'0' + (ms % 10) as u8);
        ms /= 10;
        if ms == 0 {
            break;
        }
    }
    HeaderValue::from_bytes(&buf[at..]).expect("digits and a point")
}

/// How many backends' header templates a worker thread keeps.
const HEADER_TEMPLATES_KEPT: usize = 64;

/// A response's headers for one backend (and decode backend), streamed or not, with
/// placeholders for the per-request values: `x-request-id` (the first entry),
/// `x-dujiang-queue-ms` (entry `queue_at`) and, not streamed, `content-length` (the
/// last).
struct HeaderTemplate {
    /// The backend's name (the `Arc` itself: kept here, so its address names that
    /// backend alone), and the decode backend's.
    backend: Arc<str>,
    decode: Option<Arc<str>>,
    streamed: bool,
    map: HeaderMap,
    queue_at: usize,
}

impl HeaderTemplate {
    fn new(backend: &BackendHandle, decode: Option<&BackendHandle>, streamed: bool) -> Self {
        // A name, pool or chip not valid in a header is left out.
        let value = |s: &str| HeaderValue::from_str(s).ok();
        let mut map = HeaderMap::new();
        map.insert(X_REQUEST_ID.clone(), HeaderValue::from_static(""));
        let names = [&X_BACKEND, &X_POOL, &X_CHIP];
        for (name, v) in names
            .into_iter()
            .zip([&backend.name, &backend.pool, &backend.chip])
        {
            if let Some(v) = value(v) {
                map.insert(name.clone(), v);
            }
        }
        // Prefill/decode fleets: the backend continuing after `x-dujiang-backend` prefilled.
        if let Some(d) = decode {
            let names = [&X_DECODE_BACKEND, &X_DECODE_POOL, &X_DECODE_CHIP];
            for (name, v) in names.into_iter().zip([&d.name, &d.pool, &d.chip]) {
                if let Some(v) = value(v) {
                    map.insert(name.clone(), v);
                }
            }
        }
        let queue_at = map.len();
        map.insert(X_QUEUE_MS.clone(), HeaderValue::from_static("0.000"));
        if streamed {
            map.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            map.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        } else {
            map.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            // Last: its value is written per request by position.
            map.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        HeaderTemplate {
            backend: backend.name.clone(),
            decode: decode.map(|d| d.name.clone()),
            streamed,
            map,
            queue_at,
        }
    }
}

thread_local! {
    /// Recent backends' header templates.
    static HEADER_TEMPLATES: std::cell::RefCell<Vec<HeaderTemplate>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// `GET /v1/models`: the models the fleet's pools serve.
pub async fn models(State(d): State<Arc<Daemon>>) -> Response {
    let data: Vec<serde_json::Value> = d
        .served_models()
        .iter()
        .map(|id| model_object(id))
        .collect();
    json_response(serde_json::json!({ "object": "list", "data": data }))
}

/// `GET /v1/models/{model}` (the SDKs' `models.retrieve`): one served model, or 404
/// `model_not_found` naming the ones served. A name with slashes (`org/name`) is one
/// model, as the chat endpoints take it.
pub async fn model(State(d): State<Arc<Daemon>>, Path(id): Path<String>) -> Response {
    let served = d.served_models();
    if served.contains(&id) {
        return json_response(model_object(&id));
    }
    ApiError::from(crate::serve::ServeError::invalid(
        "model",
        format!(
            "the model `{id}` does not exist here; this server serves {}",
            served.join(", ")
        ),
    ))
    .into_response()
}

/// A model as OpenAI's `Model` object, with vLLM's `root` and `parent`.
fn model_object(id: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "object": "model",
        "created": super::started_unix(),
        "owned_by": "dujiang",
        "root": id,
        "parent": null,
    })
}

fn json_response(v: serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// Any other path: 404 in OpenAI's shape, naming the path, so a client pointed at the
/// wrong base URL (e.g. without `/v1`) sees why.
pub async fn not_found(uri: axum::http::Uri) -> Response {
    let mut e = ApiError::invalid("url", format!("no endpoint at `{}`", uri.path()));
    e.status = StatusCode::NOT_FOUND;
    e.code = "not_found".into();
    e.into_response()
}

/// A known path with the wrong method (a `GET` of `/v1/chat/completions`, a `POST` to
/// `/v1/models`): 405 in OpenAI's shape, naming the method to use, rather than axum's
/// empty body, which a client's error handling cannot read. axum adds the `Allow` header.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let path = uri.path();
    let allowed = match path {
        "/v1/chat/completions" | "/v1/completions" => "POST",
        _ => "GET",
    };
    let mut e = ApiError::invalid(
        "method",
        format!("`{method}` is not allowed on `{path}`; use {allowed}"),
    );
    e.status = StatusCode::METHOD_NOT_ALLOWED;
    e.code = "method_not_allowed".into();
    e.into_response()
}

/// `GET /health`: 200 while the daemon takes requests, 503 (with `Retry-After`) before
/// it is ready and once it drains.
pub async fn health(State(d): State<Arc<Daemon>>) -> Response {
    if d.is_ready() && d.is_accepting() {
        (StatusCode::OK, "").into_response()
    } else {
        ApiError::from(crate::serve::ServeError::Unavailable(
            "the daemon is not serving (starting or draining)".into(),
        ))
        .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_ms_prints_as_float_formatting_does() {
        for s in [
            0.0,
            0.000_000_4,
            0.000_001,
            0.0123456,
            1.5,
            12.000_999_6,
            3_600.25,
        ] {
            assert_eq!(queue_ms(s), format!("{:.3}", s * 1e3), "{s}");
        }
    }
}
