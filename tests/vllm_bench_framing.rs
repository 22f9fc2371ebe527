//! What `vllm bench serve` needs from a server, checked without vLLM (which cannot be
//! installed here without torch): its `openai-chat` and `openai` (completions) backends
//! send the bodies below and read the stream as [`BenchStream::read`] does, and the
//! benchmark finds the model with `GET /v1/models`. Written from reading vLLM's benchmark
//! client (`vllm/benchmarks/lib/endpoint_request_func.py`, `vllm/benchmarks/serve.py`); the
//! parts it relies on are:
//!
//! - `GET /v1/models`: `data[0].id` and `data[0].root`.
//! - The request: chat with `messages[].content` as a list of text parts,
//!   `max_completion_tokens`, `stream`, `stream_options.include_usage`, `ignore_eos`;
//!   completions with `prompt`, `max_tokens`, `repetition_penalty`, `logprobs: null`, the
//!   same stream options. None may be refused.
//! - The response: status 200; events split on `\n\n`, each stripped; one starting with `:`
//!   skipped; the `data: ` prefix removed; anything but `[DONE]` parsed as JSON. A chunk with
//!   non-empty `choices` is a token: chat reads `choices[0]["delta"]` (a missing `delta` is
//!   an exception, failing the request) and its `content`, completions
//!   `choices[0]["text"]`; the first token's arrival is the TTFT, each later one's gap an
//!   inter-token latency. A chunk with empty `choices` and `usage` gives the output length
//!   (`completion_tokens`, which vLLM reports instead of re-tokenizing) and `prompt_tokens`.
//!   No token chunk at all fails the request.
//!
//! So the daemon must send one token per event, each when it is made (a buffered stream
//! gives vLLM inter-token latencies of zero), and the usage chunk last.

mod serve_support;

use dujiang::serve::{token_text, ServeConfig};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What vLLM's request function makes of one streamed answer.
#[derive(Debug, Default)]
struct BenchStream {
    status: u16,
    content_type: String,
    generated_text: String,
    ttft: Option<Duration>,
    itl: Vec<Duration>,
    /// From `usage.completion_tokens` / `usage.prompt_tokens`.
    output_tokens: Option<u64>,
    prompt_tokens: Option<u64>,
    /// Every event's payload after `data: ` (the framing checks read these).
    events: Vec<String>,
    /// Events that did not start with `data: ` (vLLM would feed them to the JSON parser
    /// with their prefix, and fail).
    unprefixed: Vec<String>,
    /// From the request's start to the last token's arrival (vLLM's latency).
    latency: Duration,
}

impl BenchStream {
    /// Posts `body` to `path` and reads the answer event by event, as it arrives.
    async fn read(addr: SocketAddr, path: &str, body: Value, chat: bool) -> BenchStream {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let req = hyper::Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .header("x-request-id", "bench-0")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let start = Instant::now();
        let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
            .await
            .expect("response head within 30 s")
            .expect("the daemon answers");
        let mut out = BenchStream {
            status: resp.status().as_u16(),
            content_type: resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            ..BenchStream::default()
        };
        let mut body = resp.into_body();
        let mut buffer = String::new();
        let mut last = start;
        while let Some(frame) = tokio::time::timeout(Duration::from_secs(30), body.frame())
            .await
            .expect("a body frame within 30 s")
        {
            let Ok(data) = frame.expect("the body reads").into_data() else {
                continue;
            };
            let arrived = Instant::now();
            buffer.push_str(std::str::from_utf8(&data).expect("UTF-8 body"));
            while let Some(end) = buffer.find("\n\n") {
                let event = buffer[..end].trim().to_string();
                buffer.drain(..end + 2);
                if event.is_empty() || event.starts_with(':') {
                    continue;
                }
                let Some(payload) = event.strip_prefix("data: ") else {
                    out.unprefixed.push(event);
                    continue;
                };
                out.events.push(payload.to_string());
                if payload == "[DONE]" {
                    continue;
                }
                let chunk: Value = serde_json::from_str(payload)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {payload}"));
                let choices = chunk["choices"].as_array().filter(|c| !c.is_empty());
                if let Some(choices) = choices {
                    let text = if chat {
                        let delta = choices[0]
                            .get("delta")
                            .unwrap_or_else(|| panic!("a chat chunk without delta: {payload}"));
                        delta["content"].as_str()
                    } else {
                        choices[0]["text"].as_str()
                    };
                    match out.ttft {
                        None => out.ttft = Some(arrived - start),
                        Some(_) => out.itl.push(arrived - last),
                    }
                    last = arrived;
                    out.generated_text.push_str(text.unwrap_or(""));
                } else if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
                    out.output_tokens = usage["completion_tokens"].as_u64();
                    out.prompt_tokens = usage["prompt_tokens"].as_u64();
                }
            }
        }
        assert!(
            buffer.trim().is_empty(),
            "a stream ending mid-event: {buffer:?}"
        );
        out.latency = last - start;
        out
    }
}

async fn scrape(http: SocketAddr) -> String {
    serve_support::http_get(http, "/metrics").await.1
}

/// Checks one answer against what vLLM's client needs, and that its tokens came spread
/// over the decode as the daemon made them (the daemon's own inter-token seconds for this
/// one request are `decode_s`).
fn check(s: &BenchStream, tokens: u32, prompt_tokens: u64, decode_s: f64) {
    assert_eq!(s.status, 200);
    assert!(s.content_type.starts_with("text/event-stream"), "{s:?}");
    assert!(s.unprefixed.is_empty(), "events without `data: `: {s:?}");
    assert_eq!(s.events.last().map(String::as_str), Some("[DONE]"), "{s:?}");
    assert!(
        s.ttft.is_some(),
        "no token chunk: vLLM fails the request: {s:?}"
    );
    // One token per chunk: vLLM counts an inter-token latency per chunk after the first.
    assert_eq!(s.itl.len(), tokens as usize - 1, "{s:?}");
    assert_eq!(s.generated_text, token_text(0, tokens));
    assert_eq!(
        s.output_tokens,
        Some(tokens as u64),
        "usage.completion_tokens: {s:?}"
    );
    assert_eq!(
        s.prompt_tokens,
        Some(prompt_tokens),
        "usage.prompt_tokens: {s:?}"
    );
    // Not buffered: the client saw the tokens over (most of) the time the daemon spent
    // making them. A stream written at the end would show a span near zero.
    let span: f64 = s.itl.iter().map(Duration::as_secs_f64).sum();
    assert!(
        span >= 0.5 * decode_s,
        "tokens arrived over {span:.3} s of a {decode_s:.3} s decode: {:?}",
        s.itl
    );
    assert!(s.latency >= s.ttft.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_bench_serve_reads_dujiangs_streams() {
    // Time scale 1: tokens tens of ms apart in wall time, so buffering would show.
    let d = serve_support::start(ServeConfig {
        time_scale: 1.0,
        ..serve_support::config()
    })
    .await;
    let (openai, http) = (d.openai_addr, d.http_addr);
    let itl_sum = |text: &str| serve_support::metric_sum(text, "dujiang_inter_token_seconds_sum");

    // The model, as `vllm bench serve` finds it when not told.
    let (status, body) = serve_support::http_get(openai, "/v1/models").await;
    assert_eq!(status, 200, "{body}");
    let models: Value = serde_json::from_str(&body).unwrap();
    let model = models["data"][0]["id"]
        .as_str()
        .expect("data[0].id")
        .to_string();
    assert_eq!(models["data"][0]["root"], model.as_str(), "{body}");

    // openai-chat: the body vLLM's chat request function sends.
    let prompt = "Why does the Dujiangyan weir split the river in two?";
    let tokens = 12;
    let chat = json!({
        "model": model,
        "messages": [{"role": "user", "content": [{"type": "text", "text": prompt}]}],
        "max_completion_tokens": tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
        "ignore_eos": true,
    });
    let before = itl_sum(&scrape(http).await);
    let s = BenchStream::read(openai, "/v1/chat/completions", chat, true).await;
    let decode_s = itl_sum(&scrape(http).await) - before;
    eprintln!(
        "chat: ttft {:?}, itl {:?}, daemon decode {decode_s:.3} s",
        s.ttft, s.itl
    );
    check(
        &s,
        tokens,
        dujiang::tokens::estimate_chat_tokens([prompt]),
        decode_s,
    );

    // openai (completions): its body, with the sampling fields it always sends.
    let completions = json!({
        "model": model,
        "prompt": prompt,
        "repetition_penalty": 1.0,
        "max_tokens": tokens,
        "logprobs": null,
        "stream": true,
        "stream_options": {"include_usage": true},
        "ignore_eos": true,
    });
    let before = itl_sum(&scrape(http).await);
    let s = BenchStream::read(openai, "/v1/completions", completions, false).await;
    let decode_s = itl_sum(&scrape(http).await) - before;
    eprintln!(
        "completions: ttft {:?}, itl {:?}, daemon decode {decode_s:.3} s",
        s.ttft, s.itl
    );
    check(
        &s,
        tokens,
        dujiang::tokens::estimate_tokens(prompt),
        decode_s,
    );

    // Both counted once, as served to the OpenAI front end.
    let text = scrape(http).await;
    assert_eq!(
        serve_support::metric_sum(&text, "dujiang_requests_accepted_total"),
        2.0,
        "{text}"
    );
    d.shutdown();
    d.wait().await.unwrap();
}
