//! One request to a real engine: the body it is sent (the served model name, the text,
//! `max_tokens`, `stream: true` with usage requested, and the client's sampling fields)
//! and the reading of its event stream into what the driver needs (response started,
//! text, finish reason, usage), with failures classified once near their cause.

use super::{Ask, PROMPT_IDS};
use crate::openai_client::sse::{read_chunk, Fed, SseDecoder};
use crate::openai_client::HttpClient;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, Uri};
use std::time::{Duration, Instant};

/// Fields the proxy sets itself; a client's sampling fields never override them.
const OWN_FIELDS: [&str; 6] = [
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "stream",
    "stream_options",
];

/// The JSON body for `ask` on an engine serving `served_model`: chat when the request
/// came with messages, a completion otherwise. Its members come in key order, the
/// client's sampling fields among the proxy's own, as a `serde_json::Map` would print
/// them; it is written straight out (building that map cost about ten thousand
/// instructions a request).
pub fn body(served_model: &str, ask: &Ask, max_tokens: u32) -> Vec<u8> {
    let chat = !ask.messages.is_empty();
    let text: usize = ask
        .messages
        .iter()
        .map(|m| m.role.len() + m.content.len() + 32)
        .sum();
    let mut out = Vec::with_capacity(160 + served_model.len() + ask.prompt.len() + text);
    // The proxy's own members, in key order: what the client sent under those names is
    // never forwarded.
    let own: [(&str, Own); 5] = if chat {
        [
            ("max_tokens", Own::MaxTokens),
            ("messages", Own::Messages),
            ("model", Own::Model),
            ("stream", Own::Stream),
            ("stream_options", Own::StreamOptions),
        ]
    } else {
        [
            ("max_tokens", Own::MaxTokens),
            ("model", Own::Model),
            ("prompt", Own::Prompt),
            ("stream", Own::Stream),
            ("stream_options", Own::StreamOptions),
        ]
    };
    let mut own = own.iter().peekable();
    let mut first = true;
    let write_own = |out: &mut Vec<u8>, first: &mut bool, key: &str, what: Own| {
        member(out, first, key);
        match what {
            Own::MaxTokens => write_json(out, &max_tokens),
            Own::Messages => {
                for (i, m) in ask.messages.iter().enumerate() {
                    out.extend_from_slice(if i == 0 { b"[" } else { b"," });
                    out.extend_from_slice(b"{\"content\":");
                    write_json(out, &m.content);
                    out.extend_from_slice(b",\"role\":");
                    write_json(out, &m.role);
                    out.push(b'}');
                }
                out.push(b']');
            }
            // Token ids come as the client sent them; text otherwise.
            Own::Prompt => match ask.sampling.get(PROMPT_IDS) {
                Some(ids @ serde_json::Value::Array(_)) => write_json(out, ids),
                _ => write_json(out, &ask.prompt),
            },
            Own::Model => write_json(out, served_model),
            Own::Stream => out.extend_from_slice(b"true"),
            // Usage is asked for always, for accounting; the client's own stream is
            // written by dujiang's front end and carries usage only if the client asked.
            Own::StreamOptions => out.extend_from_slice(b"{\"include_usage\":true}"),
        }
    };
    for (k, v) in &ask.sampling {
        if OWN_FIELDS.contains(&k.as_str()) {
            continue;
        }
        while let Some(&&(key, what)) = own.peek().filter(|(key, _)| *key < k.as_str()) {
            write_own(&mut out, &mut first, key, what);
            own.next();
        }
        member(&mut out, &mut first, k);
        write_json(&mut out, v);
    }
    for &(key, what) in own {
        write_own(&mut out, &mut first, key, what);
    }
    out.push(b'}');
    out
}

/// The members of an upstream body the proxy writes itself.
#[derive(Clone, Copy)]
enum Own {
    MaxTokens,
    Messages,
    Prompt,
    Model,
    Stream,
    StreamOptions,
}

/// Opens an object member: `{` or `,`, the key, `:`.
fn member(out: &mut Vec<u8>, first: &mut bool, key: &str) {
    out.push(if *first { b'{' } else { b',' });
    *first = false;
    write_json(out, key);
    out.push(b':');
}

fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    serde_json::to_writer(out, v).expect("a JSON value serialises");
}

/// What happened during an exchange, in order.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// Response headers arrived with a success status.
    Started,
    /// Output text (one chunk; a token by the servers' convention).
    Text(String),
    /// `finish_reason` of the first choice.
    Finish(String),
    /// The engine's usage figures.
    Usage {
        prompt: Option<u32>,
        completion: Option<u32>,
    },
}

/// Why an exchange failed.
#[derive(Debug, PartialEq)]
pub enum Failure {
    /// No connection (refused, unreachable, connect time-out): the endpoint is down.
    Connect(String),
    /// No response headers within the first-byte time-out.
    FirstByte(Duration),
    /// A non-success status; `message` is the start of the body.
    Status { code: u16, message: String },
    /// The connection broke, the stream was unreadable, or it carried an error event.
    Stream(String),
}

impl Failure {
    /// Whether another endpoint might serve the request: everything but a refusal of
    /// the request itself (a 4xx other than 408 and 429).
    pub fn retryable(&self) -> bool {
        match self {
            Failure::Status { code, .. } => {
                !(400..500).contains(code) || *code == 408 || *code == 429
            }
            _ => true,
        }
    }

    /// Whether it counts against the endpoint's health (a client's bad request does not).
    pub fn endpoint_fault(&self) -> bool {
        self.retryable() && !matches!(self, Failure::Status { code: 429, .. })
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "cannot connect: {e}"),
            Failure::FirstByte(t) => write!(f, "no response within {} ms", t.as_millis()),
            Failure::Status { code, message } => write!(f, "answered {code}: {message}"),
            Failure::Stream(e) => write!(f, "{e}"),
        }
    }
}

/// Where an endpoint's requests of one kind go, worked out once per endpoint rather than
/// per request: the URI (`{base}/chat/completions` or `{base}/completions`), and the
/// `Host` header the HTTP client would otherwise format for each request.
pub struct Target {
    /// Err: the URL does not parse (the request fails as it is built).
    uri: Result<Uri, String>,
    host: Option<HeaderValue>,
}

impl Target {
    pub fn new(url: &str) -> Target {
        match url.parse::<Uri>() {
            Ok(uri) => Target {
                host: host_header(&uri),
                uri: Ok(uri),
            },
            Err(e) => Target {
                uri: Err(e.to_string()),
                host: None,
            },
        }
    }
}

/// The `Host` header for `uri` as hyper-util's client writes it: the host, with the port
/// unless it is the scheme's default.
fn host_header(uri: &Uri) -> Option<HeaderValue> {
    let host = uri.host()?;
    let secure = matches!(uri.scheme_str(), Some("https" | "wss"));
    let text = match uri.port() {
        Some(p) if !matches!((p.as_u16(), secure), (443, true) | (80, false)) => {
            format!("{host}:{p}")
        }
        _ => host.to_string(),
    };
    HeaderValue::from_maybe_shared(Bytes::from(text)).ok()
}

/// Where and how to send one request.
pub struct Call<'a> {
    pub http: &'a HttpClient,
    pub target: &'a Target,
    pub body: Vec<u8>,
    pub first_byte_timeout: Duration,
    pub deadline: Option<Instant>,
    /// The router's prompt length, for engines that read dujiang's header.
    pub prompt_tokens: u32,
}

/// Sends the request and reads its stream to the end, reporting each event to `on`.
/// Returns once the stream has finished (`[DONE]`, or its end after a finish reason).
pub async fn exchange(call: Call<'_>, mut on: impl FnMut(Event)) -> Result<(), Failure> {
    let uri = call
        .target
        .uri
        .clone()
        .map_err(|e| Failure::Stream(format!("building the request: {e}")))?;
    let mut req = Request::new(Full::new(Bytes::from(call.body)));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    // Names and values known in advance, not parsed from text per request.
    let headers = req.headers_mut();
    headers.reserve(6);
    headers.append(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.append(ACCEPT, HeaderValue::from_static("text/event-stream"));
    headers.append(
        USER_AGENT,
        HeaderValue::from_static(concat!("dujiang/", env!("CARGO_PKG_VERSION"))),
    );
    headers.append(
        HeaderName::from_static("x-dujiang-prompt-tokens"),
        HeaderValue::from(call.prompt_tokens),
    );
    if let Some(d) = call.deadline {
        // The engine may enforce the client's deadline itself (dujiang does); either way
        // the router ends the exchange when it runs out.
        let ms = d
            .saturating_duration_since(Instant::now())
            .as_millis()
            .max(1);
        headers.append(
            HeaderName::from_static("x-dujiang-timeout-ms"),
            HeaderValue::from(u64::try_from(ms).unwrap_or(u64::MAX)),
        );
    }
    // Last, where the client would have added it.
    if let Some(host) = &call.target.host {
        headers.append(HOST, host.clone());
    }
    let resp = match tokio::time::timeout(call.first_byte_timeout, call.http.request(req)).await {
        Err(_) => return Err(Failure::FirstByte(call.first_byte_timeout)),
        Ok(Err(e)) if e.is_connect() => return Err(Failure::Connect(source_chain(&e))),
        Ok(Err(e)) => {
            return Err(Failure::Stream(format!(
                "request failed: {}",
                source_chain(&e)
            )))
        }
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    if !status.is_success() {
        let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = error_message(&body);
        return Err(Failure::Status {
            code: status.as_u16(),
            message,
        });
    }
    on(Event::Started);
    let mut body = resp.into_body();
    let mut decoder = SseDecoder::default();
    let mut finished = false;
    let mut done = false;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| Failure::Stream(format!("the stream broke: {}", source_chain(&e))))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        // Each event is read where it lies in the frame (no copy per event).
        let read = decoder.push_each(&data, |event| {
            if done {
                return Ok(());
            }
            let chunk = read_chunk(event).map_err(Failure::Stream)?;
            if chunk.done {
                done = true;
                return Ok(());
            }
            if let Some(e) = chunk.error {
                return Err(Failure::Stream(format!(
                    "the engine reported an error: {e}"
                )));
            }
            if !chunk.content.is_empty() {
                on(Event::Text(chunk.content));
            }
            if let Some(reason) = chunk.finish_reason {
                finished = true;
                on(Event::Finish(reason));
            }
            if chunk.completion_tokens.is_some() || chunk.prompt_tokens.is_some() {
                on(Event::Usage {
                    prompt: chunk.prompt_tokens,
                    completion: chunk.completion_tokens,
                });
            }
            Ok(())
        });
        match read {
            Ok(()) => {}
            Err(Fed::Stream(e)) => return Err(Failure::Stream(format!("unreadable stream: {e}"))),
            Err(Fed::Event(f)) => return Err(f),
        }
        if done {
            return Ok(());
        }
    }
    if finished {
        Ok(())
    } else {
        Err(Failure::Stream(
            "the stream ended before the request finished".into(),
        ))
    }
}

/// An error and its causes, `: `-joined (hyper's own message is only the outermost).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// The message of an OpenAI error body, or the body's start.
fn error_message(body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if let Some(m) = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(|e| e.get("message").or(Some(e)))
        .and_then(|m| m.as_str())
    {
        return m.chars().take(300).collect();
    }
    String::from_utf8_lossy(body).chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ChatMessage;

    #[test]
    fn bodies_name_the_served_model_and_keep_the_proxys_fields() {
        let mut sampling = super::super::Sampling::new();
        sampling.insert("temperature".into(), 0.5.into());
        sampling.insert("stream".into(), false.into());
        let ask = Ask {
            messages: vec![ChatMessage {
                role: "user".into(),
                content: "hi".into(),
            }],
            sampling,
            ..Ask::default()
        };
        let v: serde_json::Value = serde_json::from_slice(&body("Qwen/Qwen3-8B", &ask, 7)).unwrap();
        assert_eq!(v["model"], "Qwen/Qwen3-8B");
        assert_eq!(v["messages"][0]["content"], "hi");
        assert_eq!(v["max_tokens"], 7);
        assert_eq!(v["stream"], true);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["temperature"], 0.5);
        let ask = Ask {
            prompt: "once".into(),
            ..Ask::default()
        };
        let v: serde_json::Value = serde_json::from_slice(&body("m", &ask, 1)).unwrap();
        assert_eq!(v["prompt"], "once");
        assert!(v.get("messages").is_none());
        // A token-id prompt goes as the ids, not the daemon's placeholder text.
        let mut sampling = super::super::Sampling::new();
        sampling.insert(PROMPT_IDS.into(), serde_json::json!([1, 2, 3]));
        let ask = Ask {
            prompt: " ".into(),
            sampling,
            ..Ask::default()
        };
        let v: serde_json::Value = serde_json::from_slice(&body("m", &ask, 1)).unwrap();
        assert_eq!(v["prompt"], serde_json::json!([1, 2, 3]));
    }

    /// The body as it was built before: a `serde_json::Map` of every member, printed.
    fn body_by_map(served_model: &str, ask: &Ask, max_tokens: u32) -> Vec<u8> {
        let mut body = serde_json::Map::new();
        for (k, v) in &ask.sampling {
            if !OWN_FIELDS.contains(&k.as_str()) {
                body.insert(k.clone(), v.clone());
            }
        }
        body.insert("model".into(), served_model.into());
        if ask.messages.is_empty() {
            let prompt = match ask.sampling.get(PROMPT_IDS) {
                Some(ids @ serde_json::Value::Array(_)) => ids.clone(),
                _ => ask.prompt.as_str().into(),
            };
            body.insert("prompt".into(), prompt);
        } else {
            let messages = ask
                .messages
                .iter()
                .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
                .collect();
            body.insert("messages".into(), serde_json::Value::Array(messages));
        }
        body.insert("max_tokens".into(), max_tokens.into());
        body.insert("stream".into(), true.into());
        body.insert(
            "stream_options".into(),
            serde_json::json!({"include_usage": true}),
        );
        serde_json::to_vec(&serde_json::Value::Object(body)).unwrap()
    }

    #[test]
    fn bodies_are_written_as_the_map_printed_them() {
        let sampling: super::super::Sampling = serde_json::from_value(serde_json::json!({
            "a": 1, "frequency_penalty": 0.5, "max_tokens": 99, "min_p": null, "n": 2,
            "seed": 7, "stop": ["\n", "é\"x"], "stream": false, "stream_options": {"x": 1},
            "stream_p": "q", "temperature": 0.7, "we\"ird": {"k": [true]}, "z\u{1}": "\u{7f}",
            "model": "client's", "messages": [], "prompt": "p"
        }))
        .unwrap();
        let messages = vec![
            ChatMessage {
                role: "system".into(),
                content: "be \"brief\"\n".into(),
            },
            ChatMessage {
                role: "user".into(),
                content: "héllo".into(),
            },
        ];
        let mut ids = super::super::Sampling::new();
        ids.insert(PROMPT_IDS.into(), serde_json::json!([1, 2, 3]));
        ids.insert("logprobs".into(), 2.into());
        let asks = [
            Ask::default(),
            Ask {
                messages: messages.clone(),
                ..Ask::default()
            },
            Ask {
                messages,
                sampling: sampling.clone(),
                ..Ask::default()
            },
            Ask {
                prompt: "once \u{0} upon".into(),
                sampling,
                ..Ask::default()
            },
            Ask {
                prompt: " ".into(),
                sampling: ids,
                ..Ask::default()
            },
        ];
        for ask in &asks {
            for (model, max) in [("m", 0), ("Qwen/Qwen3-8B \"q\"", u32::MAX)] {
                let (new, old) = (body(model, ask, max), body_by_map(model, ask, max));
                assert_eq!(
                    String::from_utf8(new).unwrap(),
                    String::from_utf8(old).unwrap(),
                    "{ask:?}"
                );
            }
        }
    }

    #[test]
    fn failures_say_whether_to_retry() {
        let status = |code| Failure::Status {
            code,
            message: String::new(),
        };
        assert!(status(503).retryable() && status(503).endpoint_fault());
        assert!(status(429).retryable() && !status(429).endpoint_fault());
        assert!(!status(400).retryable() && !status(400).endpoint_fault());
        assert!(Failure::Connect("refused".into()).retryable());
        assert_eq!(
            error_message(br#"{"error":{"message":"too long","type":"x"}}"#),
            "too long"
        );
    }
}
