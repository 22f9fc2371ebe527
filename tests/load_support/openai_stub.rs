//! A stand-in OpenAI-compatible server for the load generator's tests: streams completions
//! the way a chosen real server does (vLLM, SGLang, llama.cpp's server: how the stream
//! opens, whether usage comes, how many tokens a chunk holds), with a fixed time to first
//! token and gap between tokens, and misbehaves on request, chosen by the prompt's length
//! (its text is four characters a token): refusals, broken and hanging streams. It records
//! each request's body and headers, so a test can check what the client sent.
#![allow(dead_code)]

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How the stub's streams look, after the servers the client must read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// vLLM: a role-only first chunk (`content: ""`), the last token and the finish
    /// reason in one chunk, `usage: null` on every chunk, then the usage chunk if asked.
    Vllm,
    /// SGLang-like: an empty-content chunk after every token, a finish chunk of its own
    /// with an empty delta, usage if asked; CRLF line ends.
    Sglang,
    /// llama.cpp-like: no role chunk, no usage ever, a finish chunk of its own.
    LlamaCpp,
    /// Two tokens in every chunk (a server streaming at an interval), usage correct.
    TwoTokensAChunk,
}

/// Prompt lengths (tokens) that choose a misbehaviour.
/// 429 with `Retry-After: 0.2` on the first attempt, served after.
pub const PROMPT_429_ONCE: u32 = 101;
/// 503 with `Retry-After: 1` on every attempt.
pub const PROMPT_503: u32 = 102;
/// Two tokens, then an error event and `[DONE]`.
pub const PROMPT_ERROR_EVENT: u32 = 103;
/// Two tokens, then the body ends cleanly without a finish reason or `[DONE]`.
pub const PROMPT_CUT: u32 = 104;
/// Headers, then nothing: the stream hangs.
pub const PROMPT_HANG: u32 = 105;
/// Two tokens, then the connection breaks mid-body.
pub const PROMPT_BREAK: u32 = 106;
/// Ends at end-of-sequence after one token, ignoring `ignore_eos`.
pub const PROMPT_EOS: u32 = 107;

/// One request the stub received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub body: serde_json::Value,
    pub headers: HeaderMap,
}

#[derive(Clone)]
struct Stub {
    flavour: Flavour,
    ttft: Duration,
    gap: Duration,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Prompts of requests refused once already (by their text).
    refused: Arc<Mutex<std::collections::HashSet<String>>>,
}

pub struct StubServer {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

/// Starts a stub on a free loopback port.
pub async fn start_openai_stub(flavour: Flavour, ttft: Duration, gap: Duration) -> StubServer {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stub = Stub {
        flavour,
        ttft,
        gap,
        seen: seen.clone(),
        refused: Arc::default(),
    };
    let app = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .with_state(stub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    StubServer { addr, seen }
}

async fn models() -> impl IntoResponse {
    (
        [("content-type", "application/json")],
        r#"{"object":"list","data":[{"id":"stub-model","object":"model","created":0,"owned_by":"stub"},{"id":"other","object":"model","created":0,"owned_by":"stub"}]}"#,
    )
}

async fn chat(State(s): State<Stub>, headers: HeaderMap, body: Bytes) -> Response {
    s.answer("/v1/chat/completions", true, headers, body).await
}

async fn completions(State(s): State<Stub>, headers: HeaderMap, body: Bytes) -> Response {
    s.answer("/v1/completions", false, headers, body).await
}

fn error(status: StatusCode, retry_after: Option<&'static str>) -> Response {
    let mut r = (
        status,
        [("content-type", "application/json")],
        r#"{"error":{"message":"busy","type":"server_error","param":null,"code":null}}"#,
    )
        .into_response();
    if let Some(v) = retry_after {
        r.headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static(v));
    }
    r
}

impl Stub {
    async fn answer(self, path: &str, chat: bool, headers: HeaderMap, body: Bytes) -> Response {
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return error(StatusCode::BAD_REQUEST, None);
        };
        self.seen.lock().push(Seen {
            path: path.into(),
            body: json.clone(),
            headers,
        });
        let text = if chat {
            json["messages"][0]["content"].as_str().unwrap_or("")
        } else {
            json["prompt"].as_str().unwrap_or("")
        }
        .to_string();
        let prompt = (text.len() / 4) as u32;
        let max_tokens = json["max_tokens"].as_u64().unwrap_or(16) as u32;
        let usage = json["stream_options"]["include_usage"].as_bool() == Some(true);
        match prompt {
            PROMPT_429_ONCE if self.refused.lock().insert(text.clone()) => {
                return error(StatusCode::TOO_MANY_REQUESTS, Some("0.2"))
            }
            PROMPT_503 => return error(StatusCode::SERVICE_UNAVAILABLE, Some("1")),
            _ => {}
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let flavour = self.flavour;
        let (ttft, gap) = (self.ttft, self.gap);
        tokio::spawn(async move {
            let send = |s: String| {
                let tx = tx.clone();
                async move { tx.send(Ok(Bytes::from(s))).await.is_ok() }
            };
            let eol = if flavour == Flavour::Sglang {
                "\r\n"
            } else {
                "\n"
            };
            let event = |json: String| format!("data: {json}{eol}{eol}");
            let object = if chat {
                "chat.completion.chunk"
            } else {
                "text_completion"
            };
            let null_usage = if flavour == Flavour::Vllm {
                r#","usage":null"#
            } else {
                ""
            };
            let chunk = |content: &str, finish: Option<&str>| {
                let finish = finish.map_or("null".to_string(), |f| format!("\"{f}\""));
                let choice = if chat {
                    format!(
                        r#"{{"index":0,"delta":{{"content":"{content}"}},"finish_reason":{finish}}}"#
                    )
                } else {
                    format!(r#"{{"index":0,"text":"{content}","finish_reason":{finish}}}"#)
                };
                event(format!(
                    r#"{{"id":"x","object":"{object}","created":0,"model":"stub-model","choices":[{choice}]{null_usage}}}"#
                ))
            };
            if prompt == PROMPT_HANG {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            if chat && flavour == Flavour::Vllm {
                let role = r#"{"id":"x","object":"chat.completion.chunk","created":0,"model":"stub-model","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}"#;
                if !send(event(role.into())).await {
                    return;
                }
            }
            tokio::time::sleep(ttft).await;
            let output = match prompt {
                PROMPT_ERROR_EVENT | PROMPT_CUT | PROMPT_BREAK => 2.min(max_tokens),
                PROMPT_EOS => 1,
                _ => max_tokens,
            };
            let per_chunk = if flavour == Flavour::TwoTokensAChunk {
                2
            } else {
                1
            };
            let mut sent = 0;
            while sent < output {
                let n = per_chunk.min(output - sent);
                if sent > 0 {
                    // A chunk of n tokens took n token times to make.
                    tokio::time::sleep(gap * n).await;
                }
                sent += n;
                let last = sent == output
                    && !matches!(prompt, PROMPT_CUT | PROMPT_BREAK | PROMPT_ERROR_EVENT);
                let finish_here = last && flavour == Flavour::Vllm;
                let reason = if prompt == PROMPT_EOS {
                    "stop"
                } else {
                    "length"
                };
                let words = " tok".repeat(n as usize);
                if !send(chunk(&words, finish_here.then_some(reason))).await {
                    return;
                }
                if flavour == Flavour::Sglang && !send(chunk("", None)).await {
                    return;
                }
                if last && !finish_here && !send(chunk("", Some(reason))).await {
                    return;
                }
            }
            match prompt {
                PROMPT_CUT => return,
                PROMPT_BREAK => {
                    let _ = tx.send(Err(std::io::Error::other("broken"))).await;
                    return;
                }
                PROMPT_ERROR_EVENT => {
                    let _ = send(event(r#"{"error":{"message":"backend failed","type":"server_error","param":null,"code":500}}"#.into())).await;
                }
                _ => {
                    if usage && flavour != Flavour::LlamaCpp {
                        let u = format!(
                            r#"{{"id":"x","object":"{object}","created":0,"model":"stub-model","choices":[],"usage":{{"prompt_tokens":{prompt},"completion_tokens":{output},"total_tokens":{}}}}}"#,
                            prompt + output
                        );
                        if !send(event(u)).await {
                            return;
                        }
                    }
                }
            }
            let _ = send(event("[DONE]".into())).await;
        });
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        (
            [
                ("content-type", "text/event-stream"),
                ("cache-control", "no-cache"),
            ],
            body,
        )
            .into_response()
    }
}
