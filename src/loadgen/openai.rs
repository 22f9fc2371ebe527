//! The load generator's OpenAI client: sends a trace record as a streaming
//! `/v1/chat/completions` (or `/v1/completions`) request to any OpenAI-compatible server
//! (dujiang's `--openai-addr`, vLLM, SGLang, llama.cpp's server) and times what comes
//! back exactly as the gRPC client does: TTFT at the first chunk carrying text, one token
//! per text chunk (the convention those servers follow), E2E at the finish reason.
//!
//! A trace record carries lengths, not text, so the request is built to reproduce them:
//! - `max_tokens` is the trace's output length and `ignore_eos: true` asks the server
//!   to produce all of it (vLLM, SGLang and llama.cpp honour it; a server that stops
//!   early shows in the report as `short_outputs`);
//! - the prompt is the trace's length in four-character words, with the trace's shared
//!   blocks as shared text ([`super::prompt`]); dujiang also gets the exact length and the
//!   block ids in headers (`x-dujiang-prompt-tokens`, `x-dujiang-prefix-hashes`), as the
//!   gRPC client sends them, and which other servers ignore.
//!
//! Refusals (429, 503) end the request with the status as its outcome, as a replay counts
//! a shed request; with `max_retries` they are sent again after the server's
//! `Retry-After`. Time-outs, refused connections and broken streams are failures with
//! their own status names; nothing a server sends can panic the client.

use super::prompt::{prompt_text, splitmix};
use super::stream::{Outcome, Placement, UsageCheck};
use crate::openai_client::sse::{read_chunk, SseDecoder};
use crate::request::Slo;
use crate::trace::TraceRecord;
use anyhow::{bail, Context as _};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use std::time::{Duration, Instant};

/// Which OpenAI endpoint the requests go to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`, the prompt as one user message.
    #[default]
    Chat,
    /// `POST /v1/completions`, the prompt as `prompt`.
    Completions,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/chat/completions",
            Endpoint::Completions => "/completions",
        }
    }
}

/// How the OpenAI client talks to its server.
#[derive(Clone, Debug)]
pub struct OpenAiOptions {
    pub endpoint: Endpoint,
    /// The `model` of every request; `None`: the first id `GET /v1/models` lists.
    pub model: Option<String>,
    /// Sent as `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Wall time a request may take, retries included, before it counts as `timeout`.
    pub request_timeout: Duration,
    /// Times a request refused with 429 or 503 is sent again after the server's
    /// `Retry-After` (1 s when it names none, at most [`MAX_RETRY_AFTER`]).
    pub max_retries: u32,
}

impl Default for OpenAiOptions {
    fn default() -> Self {
        OpenAiOptions {
            endpoint: Endpoint::Chat,
            model: None,
            api_key: None,
            request_timeout: Duration::from_secs(600),
            max_retries: 0,
        }
    }
}

/// Longest `Retry-After` the client waits before a retry.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The API base (`…/v1`) of a target URL, by the rule real-engine endpoints in a fleet
/// follow ([`crate::fleet::upstream::api_base`]): a URL without a path gets `/v1`, one with
/// a path (`http://host:8000/v1`, a gateway's `https://host/openai/v1`) is the base.
pub fn api_base(target: &str) -> anyhow::Result<String> {
    crate::fleet::upstream::api_base(target).map_err(|why| anyhow::anyhow!("--target {why}"))
}

use crate::openai_client::HttpClient;

/// A connected client: the HTTP connection pool and what every request carries.
#[derive(Clone)]
pub(super) struct Client {
    http: HttpClient,
    /// `{base}/chat/completions` or `{base}/completions`.
    url: Uri,
    /// Mixed into every prompt, random per run, so that runs never share a prefix cache.
    salt: u64,
    model: String,
    endpoint: Endpoint,
    auth: Option<HeaderValue>,
    timeout: Duration,
    max_retries: u32,
}

impl Client {
    /// Sets up the connection pool for the API at `base` (see [`api_base`]) and resolves
    /// the model, asking `GET {base}/models` when `opts` names none.
    pub async fn connect(base: &str, opts: &OpenAiOptions) -> anyhow::Result<Client> {
        let http =
            crate::openai_client::http_client(Duration::from_secs(10), Duration::from_secs(30))?;
        let auth = match &opts.api_key {
            Some(key) => Some(
                HeaderValue::from_str(&format!("Bearer {key}"))
                    .context("the API key is not a valid header value")?,
            ),
            None => None,
        };
        let url: Uri = format!("{base}{}", opts.endpoint.path())
            .parse()
            .with_context(|| format!("`{base}` does not make an endpoint URL"))?;
        let model = match &opts.model {
            Some(m) => m.clone(),
            None => first_model(&http, base, auth.as_ref()).await?,
        };
        let salt = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(Client {
            http,
            url,
            salt: splitmix(salt ^ u64::from(std::process::id())),
            model,
            endpoint: opts.endpoint,
            auth,
            timeout: opts.request_timeout,
            max_retries: opts.max_retries,
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// The request body for record `index`.
    pub fn body(&self, index: u64, rec: &TraceRecord) -> Vec<u8> {
        let prompt = prompt_text(self.salt, index, rec);
        let mut body = serde_json::json!({
            "model": self.model,
            "max_tokens": rec.output_tokens,
            "stream": true,
            "stream_options": {"include_usage": true},
            "ignore_eos": true,
        });
        match self.endpoint {
            Endpoint::Chat => {
                body["messages"] = serde_json::json!([{"role": "user", "content": prompt}])
            }
            Endpoint::Completions => body["prompt"] = prompt.into(),
        }
        serde_json::to_vec(&body).expect("a JSON value serialises")
    }

    fn request(&self, body: &Bytes, rec: &TraceRecord) -> Result<Request<Full<Bytes>>, String> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "text/event-stream")
            .header(
                USER_AGENT,
                concat!("dujiang-load/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        // Priority and SLO as headers, which every other server ignores (a body field
        // might not be: vLLM's `priority` is an integer).
        req = req.header(
            PRIORITY_HEADER,
            match rec.priority {
                crate::request::Priority::Interactive => "interactive",
                crate::request::Priority::Batch => "batch",
            },
        );
        // The trace's exact length and prefix blocks for dujiang, as the gRPC client sends
        // them (its estimate from the text would add the chat template's tokens).
        req = req.header(PROMPT_TOKENS_HEADER, rec.prompt_tokens.to_string());
        if !rec.hash_ids.is_empty() {
            let ids: Vec<String> = rec.hash_ids.iter().map(u64::to_string).collect();
            req = req.header(PREFIX_HASHES_HEADER, ids.join(","));
        }
        if let Some(slo) = rec.slo {
            let ms = |ns: u64| ns.div_ceil(crate::request::NANOS_PER_MS).to_string();
            req = req
                .header(SLO_TTFT_HEADER, ms(slo.ttft_ns))
                .header(SLO_TPOT_HEADER, ms(slo.tpot_ns));
        }
        req.body(Full::new(body.clone()))
            .map_err(|e| format!("building the request: {e}"))
    }

    /// Sends record `index` and reads its stream to the end (or the time-out).
    pub async fn send(&self, index: u64, rec: TraceRecord, due: Instant, slo: Slo) -> Outcome {
        let sent = Instant::now();
        let mut out = Outcome::new(&rec, due, sent, slo);
        let body = Bytes::from(self.body(index, &rec));
        let deadline = tokio::time::Instant::from_std(sent + self.timeout);
        let status = tokio::time::timeout_at(deadline, self.attempts(&body, &rec, sent, &mut out))
            .await
            .unwrap_or("timeout");
        out.status = status;
        if status != "ok" {
            out.completed = false;
            out.end = sent.elapsed();
            out.ended_at = sent + out.end;
        }
        out
    }

    /// Sends the request, again after each retried refusal; returns the final status.
    async fn attempts(
        &self,
        body: &Bytes,
        rec: &TraceRecord,
        sent: Instant,
        out: &mut Outcome,
    ) -> &'static str {
        loop {
            let req = match self.request(body, rec) {
                Ok(r) => r,
                Err(_) => return "bad_request",
            };
            let resp = match self.http.request(req).await {
                Ok(r) => r,
                Err(e) if e.is_connect() => return "connect_error",
                Err(_) => return "request_error",
            };
            let status = resp.status();
            if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
            {
                if out.retries < self.max_retries {
                    out.retries += 1;
                    let wait = retry_after(resp.headers()).unwrap_or(Duration::from_secs(1));
                    drop(resp);
                    tokio::time::sleep(wait.min(MAX_RETRY_AFTER)).await;
                    continue;
                }
                return http_status_name(status);
            }
            if !status.is_success() {
                return http_status_name(status);
            }
            out.placement = placement(resp.headers());
            return read_stream(resp.into_body(), sent, out).await;
        }
    }
}

/// Request headers dujiang's OpenAI front end reads for priority, SLO, the prompt's
/// length and its prefix blocks (other servers ignore them).
pub const PRIORITY_HEADER: &str = "x-dujiang-priority";
pub const SLO_TTFT_HEADER: &str = "x-dujiang-slo-ttft-ms";
pub const SLO_TPOT_HEADER: &str = "x-dujiang-slo-tpot-ms";
pub const PROMPT_TOKENS_HEADER: &str = "x-dujiang-prompt-tokens";
pub const PREFIX_HASHES_HEADER: &str = "x-dujiang-prefix-hashes";
/// Response headers naming where dujiang placed the request (other servers send none;
/// their requests are reported under pool `(unknown)`).
pub const POOL_HEADER: &str = "x-dujiang-pool";
pub const CHIP_HEADER: &str = "x-dujiang-chip";
pub const QUEUE_MS_HEADER: &str = "x-dujiang-queue-ms";

fn placement(headers: &HeaderMap) -> Option<Placement> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let pool = get(POOL_HEADER)?;
    Some(Placement {
        pool: pool.to_string(),
        chip: get(CHIP_HEADER).unwrap_or_default().to_string(),
        queue_ns: get(QUEUE_MS_HEADER)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map_or(0, |ms| (ms * 1e6).round() as u64),
    })
}

/// The wait a refusal asks for: `retry-after-ms` (milliseconds, sent by dujiang and read
/// first by the OpenAI SDKs), else `Retry-After` as delta-seconds (`2`, or `0.5` as some
/// servers send); an HTTP date or anything else unreadable: `None`.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let read = |name: &str| -> Option<f64> {
        let v: f64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
        (v.is_finite() && v >= 0.0).then_some(v.min(1e9))
    };
    read("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1e3))
        .or_else(|| read("retry-after").map(Duration::from_secs_f64))
}

/// The report's name for an HTTP status that ended a request.
pub(super) fn http_status_name(status: StatusCode) -> &'static str {
    const NAMED: [(u16, &str); 12] = [
        (400, "http_400"),
        (401, "http_401"),
        (403, "http_403"),
        (404, "http_404"),
        (408, "http_408"),
        (413, "http_413"),
        (422, "http_422"),
        (429, "http_429"),
        (500, "http_500"),
        (502, "http_502"),
        (503, "http_503"),
        (504, "http_504"),
    ];
    let code = status.as_u16();
    match NAMED.iter().find(|(c, _)| *c == code) {
        Some((_, name)) => name,
        None if status.is_client_error() => "http_4xx",
        None if status.is_server_error() => "http_5xx",
        None => "http_other",
    }
}

/// Reads an event stream to its end, timing each text chunk; returns the status.
async fn read_stream(
    mut body: hyper::body::Incoming,
    sent: Instant,
    out: &mut Outcome,
) -> &'static str {
    let mut decoder = SseDecoder::default();
    let mut last: Option<Duration> = None;
    let mut finished: Option<Duration> = None;
    let mut usage: Option<u32> = None;
    let mut chunks = 0u32;
    let mut done = false;
    let mut status = "ok";
    'read: while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(_) => {
                status = "stream_error";
                break;
            }
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let at = sent.elapsed();
        let events = match decoder.push(&data) {
            Ok(e) => e,
            Err(_) => {
                status = "bad_response";
                break;
            }
        };
        for event in events {
            let chunk = match read_chunk(&event) {
                Ok(c) => c,
                Err(_) => {
                    status = "bad_response";
                    break 'read;
                }
            };
            if chunk.done {
                done = true;
                break 'read;
            }
            if chunk.error.is_some() {
                status = "error_event";
                break 'read;
            }
            if chunk.text {
                match last {
                    None => out.first_token = Some(at),
                    Some(prev) => out.gaps.push(at.saturating_sub(prev)),
                }
                last = Some(at);
                chunks += 1;
            }
            if chunk.finished && finished.is_none() {
                finished = Some(at);
            }
            if let Some(n) = chunk.completion_tokens {
                usage = Some(n);
            }
        }
    }
    let now = sent.elapsed();
    out.end = finished.unwrap_or(now);
    out.ended_at = sent + out.end;
    out.output_tokens = usage.unwrap_or(chunks);
    out.usage = match usage {
        None => UsageCheck::Missing,
        Some(n) if n == chunks => UsageCheck::Agrees,
        Some(_) => UsageCheck::Differs,
    };
    if status == "ok" && !done && finished.is_none() {
        // The body ended with neither a finish reason nor `[DONE]`: cut short.
        status = "incomplete_stream";
    }
    out.completed = status == "ok";
    status
}

/// The first model `GET {base}/models` lists.
async fn first_model(
    http: &HttpClient,
    base: &str,
    auth: Option<&HeaderValue>,
) -> anyhow::Result<String> {
    let url = format!("{base}/models");
    let mut req = Request::builder().method(Method::GET).uri(&url);
    if let Some(auth) = auth {
        req = req.header(AUTHORIZATION, auth.clone());
    }
    let req = req.body(Full::new(Bytes::new()))?;
    let hint = "give --model, or --api grpc if this is a dujiang gRPC port";
    let resp = match tokio::time::timeout(Duration::from_secs(30), http.request(req))
        .await
        .with_context(|| format!("GET {url} timed out; {hint}"))?
    {
        Ok(resp) => resp,
        // Nothing listens there: neither hint would help (with --model every request
        // would fail to connect the same way).
        Err(e) if e.is_connect() => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot connect to {base} (GET {url}); is the server running there?"
            )))
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("GET {url} failed; {hint}"))),
    };
    let status = resp.status();
    let body = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
        .await
        .with_context(|| format!("GET {url}: the answer timed out"))?
        .with_context(|| format!("GET {url}: reading the answer"))?
        .to_bytes();
    if !status.is_success() {
        let shown: String = String::from_utf8_lossy(&body).chars().take(200).collect();
        bail!("GET {url} answered {status}: {shown}; {hint}");
    }
    model_from_list(&body).with_context(|| format!("GET {url}; {hint}"))
}

/// The first `data[].id` of a `/v1/models` answer.
pub(super) fn model_from_list(body: &[u8]) -> anyhow::Result<String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).context("the model list is not JSON")?;
    v.get("data")
        .and_then(|d| d.as_array())
        .and_then(|d| d.first())
        .and_then(|m| m.get("id"))
        .and_then(|id| id.as_str())
        .map(str::to_string)
        .context("the model list has no `data[0].id`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_give_the_api_base() {
        // The rule itself is tested with the fleet's endpoints; here, that errors name
        // the flag.
        assert_eq!(api_base("http://h:8000").unwrap(), "http://h:8000/v1");
        let err = api_base("grpc://h:50051").unwrap_err().to_string();
        assert!(err.starts_with("--target "), "{err}");
        assert!(err.contains("http:// or https://"), "{err}");
        assert!(api_base("not a url").is_err());
    }

    #[test]
    fn retry_after_and_status_names() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after", HeaderValue::from_static("0.25"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("-3"));
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        assert_eq!(http_status_name(StatusCode::TOO_MANY_REQUESTS), "http_429");
        assert_eq!(http_status_name(StatusCode::IM_A_TEAPOT), "http_4xx");
        assert_eq!(
            http_status_name(StatusCode::from_u16(599).unwrap()),
            "http_5xx"
        );
    }

    #[test]
    fn the_model_is_the_first_listed() {
        let list = br#"{"object":"list","data":[{"id":"llama-3-8b","object":"model"},{"id":"b"}]}"#;
        assert_eq!(model_from_list(list).unwrap(), "llama-3-8b");
        let err = model_from_list(br#"{"data":[]}"#).unwrap_err().to_string();
        assert!(err.contains("data[0].id"), "{err}");
        assert!(model_from_list(b"<html>").is_err());
    }

    #[tokio::test]
    async fn request_bodies_carry_lengths_stream_options_and_ignore_eos() {
        let mut client = Client::connect(
            "http://127.0.0.1:9/v1",
            &OpenAiOptions {
                model: Some("m".into()),
                ..OpenAiOptions::default()
            },
        )
        .await
        .unwrap();
        let rec = TraceRecord {
            prompt_tokens: 20,
            output_tokens: 33,
            ..TraceRecord::default()
        };
        let chat: serde_json::Value = serde_json::from_slice(&client.body(4, &rec)).unwrap();
        assert_eq!(chat["model"], "m");
        assert_eq!(chat["max_tokens"], 33);
        assert_eq!(chat["stream"], true);
        assert_eq!(chat["stream_options"]["include_usage"], true);
        assert_eq!(chat["ignore_eos"], true);
        assert_eq!(chat["messages"][0]["role"], "user");
        assert_eq!(chat["messages"][0]["content"].as_str().unwrap().len(), 80);
        assert!(chat.get("prompt").is_none());
        client.endpoint = Endpoint::Completions;
        let comp: serde_json::Value = serde_json::from_slice(&client.body(4, &rec)).unwrap();
        assert_eq!(comp["prompt"].as_str().unwrap().len(), 80);
        assert!(comp.get("messages").is_none());
        assert_eq!(comp["max_tokens"], 33);
    }
}
