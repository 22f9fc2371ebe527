//! The OpenAI-compatible HTTP front end over real loopback sockets, read with a raw HTTP
//! client: SSE framing as clients parse it, non-streaming answers, usage, `/v1/models`,
//! `/health`, and every error status with OpenAI's error shape.

mod serve_openai_support;
mod serve_support;

use dujiang::serve::{token_text, ServeConfig};
use serde_json::Value;
use serve_openai_support::*;
use serve_support::*;
use std::time::Duration;

fn two_h20() -> ServeConfig {
    ServeConfig {
        fleet: data("serve_two_h20.toml"),
        time_scale: 20.0,
        ..config()
    }
}

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";

#[tokio::test]
async fn a_streamed_chat_is_framed_as_openai_clients_parse_it() {
    let d = start(two_h20()).await;
    let prompt = "How does the Dujiangyan weir split the Min river?";
    let r = post(d.openai_addr, CHAT, &[], &chat_body(prompt, 12, true, true)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("x-dujiang-pool"), Some("h20"));
    assert!(r.header("x-dujiang-queue-ms").is_some());
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    // Twelve token chunks, then the usage chunk.
    assert_eq!(chunks.len(), 13, "{events:?}");
    let id = chunks[0]["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("chatcmpl-"), "{id}");
    for (i, c) in chunks[..12].iter().enumerate() {
        assert_eq!(c["id"], id.as_str());
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "llama-3-8b");
        assert!(c["created"].as_u64().unwrap() > 1_700_000_000);
        assert!(c.get("usage").is_none(), "no usage before the end: {c}");
        let choice = &c["choices"][0];
        let delta = choice.get("delta").expect("delta always present");
        assert_eq!(
            delta["content"],
            token_text(i as u32, 1).as_str(),
            "one token per chunk"
        );
        assert_eq!(
            delta.get("role").is_some(),
            i == 0,
            "role on the first chunk: {c}"
        );
        if i < 11 {
            assert!(choice["finish_reason"].is_null(), "{c}");
        } else {
            assert_eq!(choice["finish_reason"], "length");
        }
    }
    let usage = &chunks[12];
    assert_eq!(usage["choices"], serde_json::json!([]));
    let expected_prompt = dujiang::tokens::estimate_chat_tokens([prompt]);
    assert_eq!(usage["usage"]["prompt_tokens"], expected_prompt);
    assert_eq!(usage["usage"]["completion_tokens"], 12);
    assert_eq!(usage["usage"]["total_tokens"], expected_prompt + 12);

    // Without include_usage: no usage chunk; completions name their object.
    let body = serde_json::json!({"model": "llama-3-8b", "prompt": "The river", "max_tokens": 5,
        "stream": true, "ignore_eos": true})
    .to_string();
    let r = post(d.openai_addr, COMPLETIONS, &[], &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let events = r.events();
    assert_eq!(events.len(), 6, "{events:?}");
    let texts: String = events[..5]
        .iter()
        .map(|e| {
            let c: Value = serde_json::from_str(e).unwrap();
            assert_eq!(c["object"], "text_completion");
            c["choices"][0]["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(texts, token_text(0, 5));
    assert_eq!(events[5], "[DONE]");

    // vLLM's continuous_usage_stats: every chunk carries the usage so far.
    let body = serde_json::json!({"model": "llama-3-8b", "messages": [{"role": "user",
        "content": [{"type": "text", "text": "Hi"}]}], "max_completion_tokens": 3, "stream": true,
        "stream_options": {"include_usage": true, "continuous_usage_stats": true}})
    .to_string();
    let r = post(d.openai_addr, CHAT, &[], &body).await;
    let events = r.events();
    for (i, e) in events[..3].iter().enumerate() {
        let c: Value = serde_json::from_str(e).unwrap();
        assert_eq!(c["usage"]["completion_tokens"], i + 1, "{c}");
    }
}

#[tokio::test]
async fn non_streaming_answers_models_and_health() {
    let d = start(two_h20()).await;
    let r = post(
        d.openai_addr,
        CHAT,
        &[("x-request-id", "abc")],
        &chat_body("Hello", 7, false, false),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    // Written by the handler with the placement headers: once, and the body's length.
    let lengths: Vec<_> = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .collect();
    assert_eq!(lengths.len(), 1, "{:?}", r.headers);
    assert_eq!(lengths[0].1, r.body.len().to_string());
    // An id that is no header value is left out of the headers, the length still right.
    let mut odd: Value = serde_json::from_str(&chat_body("Hello", 7, false, false)).unwrap();
    odd["request_id"] = "bell\u{7}here".into();
    let o = post(d.openai_addr, CHAT, &[], &odd.to_string()).await;
    assert_eq!(o.status, 200, "{}", o.body);
    assert_eq!(o.header("x-request-id"), None, "{:?}", o.headers);
    assert_eq!(
        o.header("content-length"),
        Some(o.body.len().to_string().as_str())
    );
    assert_eq!(o.json()["id"], "chatcmpl-bell\u{7}here");
    let v = r.json();
    assert_eq!(v["id"], "chatcmpl-abc");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        token_text(0, 7).as_str()
    );
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 7);

    let r = post(
        d.openai_addr,
        COMPLETIONS,
        &[],
        r#"{"model":"llama-3-8b","prompt":[[1,2,3,4]],"max_tokens":2}"#,
    )
    .await;
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"]["prompt_tokens"], 4, "token ids count one each");
    assert_eq!(v["choices"][0]["text"], token_text(0, 2).as_str());

    let m = get(d.openai_addr, "/v1/models").await;
    assert_eq!(m.status, 200);
    let v = m.json();
    assert_eq!(v["object"], "list");
    let model = &v["data"][0];
    assert_eq!(model["id"], "llama-3-8b");
    assert_eq!(model["object"], "model");
    assert_eq!(model["root"], "llama-3-8b");
    assert!(model["created"].as_u64().unwrap() > 1_700_000_000);
    assert!(model["owned_by"].is_string());
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    // One model by name (the SDKs' models.retrieve): the list's object, or 404 naming
    // what is served.
    let one = get(d.openai_addr, "/v1/models/llama-3-8b").await;
    assert_eq!(one.status, 200);
    assert_eq!(&one.json(), model);
    let e = error_of(
        &get(d.openai_addr, "/v1/models/org/no-such-model").await,
        404,
    );
    assert_eq!(e["code"], "model_not_found");
    assert_eq!(e["param"], "model");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("`org/no-such-model`") && message.contains("serves llama-3-8b"),
        "{e}"
    );

    let e = error_of(&get(d.openai_addr, "/chat/completions").await, 404);
    assert_eq!(e["code"], "not_found");
    // The wrong method on a known path: 405 in the same shape (not an empty body), with
    // the method to use in the message and in `Allow`.
    let r = get(d.openai_addr, CHAT).await;
    let e = error_of(&r, 405);
    assert_eq!(e["code"], "method_not_allowed");
    assert!(e["message"].as_str().unwrap().contains("use POST"), "{e}");
    assert_eq!(r.header("allow"), Some("POST"));
    let r = post(d.openai_addr, "/v1/models", &[], "{}").await;
    let e = error_of(&r, 405);
    assert!(e["message"].as_str().unwrap().contains("use GET"), "{e}");
    // (503 while draining: serve_openai_lifecycle's SIGTERM test.)
    assert_eq!(get(d.openai_addr, "/health").await.status, 200);
    // The metrics port's exposition, also where vLLM serves it (load testers look there).
    let m = get(d.openai_addr, "/metrics").await;
    assert_eq!(m.status, 200);
    assert!(m
        .body
        .contains("dujiang_requests_accepted_total{frontend=\"openai\"}"));
}

/// Checks OpenAI's error shape and returns the error object.
fn error_of(r: &Resp, status: u16) -> Value {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    let e = v["error"].clone();
    for key in ["message", "type", "param", "code"] {
        assert!(e.get(key).is_some(), "error lacks {key}: {v}");
    }
    assert!(e["message"].as_str().unwrap().len() > 5);
    e
}

#[tokio::test]
async fn bad_requests_are_400_naming_the_field_and_an_unknown_model_404() {
    let d = start(two_h20()).await;
    let a = d.openai_addr;
    let msg = r#""messages":[{"role":"user","content":"hi"}]"#;
    let cases = [
        (format!("{{{msg},\"n\":2}}"), "n"),
        (format!("{{{msg},\"tools\":[{{\"type\":\"function\"}}]}}"), "tools"),
        (
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#.into(),
            "messages[0].content[0].type",
        ),
        (format!("{{{msg},\"max_tokens\":0}}"), "max_tokens"),
        (format!("{{{msg},\"max_tokens\":100000000}}"), "max_tokens"),
        (r#"{"messages":[{"role":"user","content":""}]}"#.into(), "messages[0].content"),
        ("{not json".into(), "body"),
        (format!("{{{msg},\"slo\":{{\"ttft_ms\":0}}}}"), "slo.ttft_ms"),
    ];
    for (body, field) in cases {
        let e = error_of(&post(a, CHAT, &[], &body).await, 400);
        assert_eq!(e["param"], field, "{body}: {e}");
        assert_eq!(e["type"], "invalid_request_error");
        assert!(e["message"].as_str().unwrap().contains(field), "{e}");
    }
    let e = error_of(
        &post(
            a,
            CHAT,
            &[("x-dujiang-priority", "urgent")],
            &format!("{{{msg}}}"),
        )
        .await,
        400,
    );
    assert_eq!(e["param"], "x-dujiang-priority");

    let e = error_of(
        &post(a, CHAT, &[], &format!("{{\"model\":\"gpt-9\",{msg}}}")).await,
        404,
    );
    assert_eq!(e["code"], "model_not_found");
    assert_eq!(e["param"], "model");

    // Every refusal is counted, under the OpenAI front end.
    let scrape = http_get(d.http_addr, "/metrics").await.1;
    let refused: f64 = scrape
        .lines()
        .filter(|l| {
            l.starts_with("dujiang_requests_shed_total{") && l.contains("frontend=\"openai\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(refused, 10.0, "{scrape}");
}

#[tokio::test]
async fn a_refusal_of_a_field_given_as_a_header_names_the_header() {
    let d = start(two_h20()).await;
    let body = r#"{"prompt":"hi","max_tokens":1}"#;
    let long_id = "r".repeat(200);
    let cases = [
        (("x-request-id", long_id.as_str()), "x-request-id"),
        (
            ("x-dujiang-prefix-hashes", "1,2,3"),
            "x-dujiang-prefix-hashes",
        ),
        (
            ("x-dujiang-prompt-tokens", "9000"),
            "x-dujiang-prompt-tokens",
        ),
    ];
    for (header, param) in cases {
        let e = error_of(
            &post(d.openai_addr, COMPLETIONS, &[header], body).await,
            400,
        );
        assert_eq!(e["param"], param, "{e}");
        assert!(e["message"].as_str().unwrap().starts_with(param), "{e}");
    }
    // The same field in the body keeps its own name.
    let e = error_of(
        &post(
            d.openai_addr,
            COMPLETIONS,
            &[("x-request-id", "short")],
            &format!(r#"{{"prompt":"hi","max_tokens":1,"request_id":"{long_id}"}}"#),
        )
        .await,
        400,
    );
    assert_eq!(e["param"], "request_id", "{e}");
}

#[tokio::test]
async fn shed_is_429_with_retry_after() {
    let mut cfg = two_h20();
    cfg.time_scale = 1.0;
    cfg.admission.max_in_flight = 1;
    cfg.admission.retry_after_ms = 1500;
    let d = start(cfg).await;
    // One long stream holds the only slot.
    let (held, _) = open(
        d.openai_addr,
        CHAT,
        &[],
        &chat_body("hold", 2000, true, false),
        1,
    )
    .await;
    let r = post(
        d.openai_addr,
        CHAT,
        &[],
        &chat_body("more", 4, false, false),
    )
    .await;
    let e = error_of(&r, 429);
    assert_eq!(e["code"], "queue_full");
    assert_eq!(
        r.header("retry-after"),
        Some("2"),
        "whole seconds, rounded up"
    );
    assert_eq!(r.header("retry-after-ms"), Some("1500"));
    drop(held);
}

#[tokio::test]
async fn no_healthy_backend_is_503_with_retry_after() {
    let d = start(two_h20()).await;
    let mut a = admin(d.admin_addr).await;
    for b in ["h20-0", "h20-1"] {
        a.inject_fault(dujiang::wire::InjectFaultRequest {
            backend: b.into(),
            fault: Some(dujiang::wire::inject_fault_request::Fault::Fail(true)),
        })
        .await
        .unwrap();
    }
    let r = post(d.openai_addr, CHAT, &[], &chat_body("hi", 4, true, false)).await;
    let e = error_of(&r, 503);
    assert_eq!(e["type"], "service_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
}

#[tokio::test]
async fn the_timeout_header_is_504_before_the_stream_and_an_sse_error_after() {
    let mut cfg = two_h20();
    cfg.time_scale = 1.0;
    let d = start(cfg).await;
    let timeout = [("x-dujiang-timeout-ms", "300")];
    // Not streaming: the deadline passes long before 2,000 tokens.
    let t0 = std::time::Instant::now();
    let r = post(
        d.openai_addr,
        CHAT,
        &timeout,
        &chat_body("slow", 2000, false, false),
    )
    .await;
    let e = error_of(&r, 504);
    assert_eq!(e["type"], "timeout");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());

    // Streaming: the stream started, so the timeout is an error event, then [DONE].
    let r = post(
        d.openai_addr,
        CHAT,
        &timeout,
        &chat_body("slow", 2000, true, false),
    )
    .await;
    assert_eq!(r.status, 200);
    let events = r.events();
    let n = events.len();
    assert!(n >= 3, "{events:?}");
    assert_eq!(events[n - 1], "[DONE]");
    let err: Value = serde_json::from_str(&events[n - 2]).unwrap();
    assert_eq!(err["error"]["code"], "deadline_exceeded", "{err}");
    for e in &events[..n - 2] {
        let c: Value = serde_json::from_str(e).unwrap();
        assert!(c["choices"][0]["finish_reason"].is_null(), "{c}");
    }
    let scrape = http_get(d.http_addr, "/metrics").await.1;
    assert!(
        scrape.contains(
            "dujiang_requests_total{outcome=\"deadline_exceeded\",frontend=\"openai\"} 2"
        ),
        "{scrape}"
    );
}

#[tokio::test]
async fn priority_and_slo_reach_admission_from_headers_and_body() {
    let mut cfg = two_h20();
    cfg.time_scale = 1.0;
    cfg.admission.max_in_flight = 4;
    // Batch is admitted only while fewer than 2 requests are in flight.
    cfg.admission.batch_watermark = 0.5;
    let d = start(cfg).await;
    let a = d.openai_addr;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(open(a, CHAT, &[], &chat_body("hold", 2000, true, false), 1).await);
    }
    let batch_header = post(
        a,
        CHAT,
        &[("x-dujiang-priority", "batch")],
        &chat_body("b", 4, false, false),
    )
    .await;
    assert_eq!(error_of(&batch_header, 429)["code"], "batch_shed");
    let body = serde_json::json!({"messages": [{"role": "user", "content": "b"}], "max_tokens": 4,
        "priority": "batch"})
    .to_string();
    assert_eq!(
        error_of(&post(a, CHAT, &[], &body).await, 429)["code"],
        "batch_shed"
    );
    // vLLM's integer priority: 0 is the default class, interactive.
    let body = serde_json::json!({"messages": [{"role": "user", "content": "i"}], "max_tokens": 4,
        "priority": 0})
    .to_string();
    assert_eq!(post(a, CHAT, &[], &body).await.status, 200);
    drop(held);

    // A 1 ms TTFT objective cannot be met by a 2,000-token prefill: shed at once, with the
    // predicted drain as the hint. Without it, the same request is served.
    let long = "word ".repeat(1600);
    let slo = [("x-dujiang-slo-ttft-ms", "1")];
    let r = post(a, CHAT, &slo, &chat_body(&long, 2, false, false)).await;
    assert_eq!(error_of(&r, 429)["code"], "slo_unmeetable");
    assert!(r.header("retry-after-ms").is_some());
    let body = serde_json::json!({"messages": [{"role": "user", "content": long}], "max_tokens": 2,
        "slo": {"ttft_ms": 1, "tpot_ms": 100}})
    .to_string();
    assert_eq!(
        error_of(&post(a, CHAT, &[], &body).await, 429)["code"],
        "slo_unmeetable"
    );
    assert_eq!(
        post(a, CHAT, &[], &chat_body(&long, 2, false, false))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn an_oversized_body_is_refused_in_openai_shape() {
    let d = start(two_h20()).await;
    let huge = chat_body(
        &"x".repeat(dujiang::serve::MAX_REQUEST_BYTES + 1),
        4,
        false,
        false,
    );
    let e = error_of(&post(d.openai_addr, CHAT, &[], &huge).await, 413);
    assert_eq!(e["param"], "body");
    // A body that cannot be read is a bad request, not one too large: broken chunked
    // framing, and a client that stops sending short of its Content-Length.
    let head = |framing: &str| {
        format!(
            "POST {CHAT} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Type: application/json\r\n{framing}\r\n\r\n"
        )
    };
    let chunked = head("Transfer-Encoding: chunked") + "zz\r\n{}\r\n0\r\n\r\n";
    let short = head("Content-Length: 100") + "{}";
    for raw in [chunked, short.clone()] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(d.openai_addr).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let e = error_of(&parse(&buf), 400);
        assert_eq!(e["param"], "body", "{raw:?}: {e}");
        assert!(
            e["message"].as_str().unwrap().contains("could not be read"),
            "{e}"
        );
    }
    // The oversized body and the broken framing are refusals; the body cut short is the
    // client going away, which is no invalid request (nor an accepted one).
    let invalid = || shed_count(&d, "invalid_request");
    assert_eq!(invalid(), Some(2));
    // Cut short by a reset rather than a FIN: the same, once the daemon has seen it.
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(d.openai_addr).await.unwrap();
        s.write_all(short.as_bytes()).await.unwrap();
        // Once the daemon is waiting for the rest of the body.
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.set_zero_linger().unwrap();
    }
    // Nothing to wait for when it is not counted: time for the daemon to read the reset.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(post(d.openai_addr, CHAT, &[], "{").await.status, 400);
    assert_eq!(invalid(), Some(3), "only the malformed JSON since");
    assert_eq!(d.daemon.metrics.accepted_count(), 0);
}

#[tokio::test]
async fn without_max_tokens_the_default_shrinks_to_fit_the_context_as_vllm_does() {
    let d = start(two_h20()).await;
    // Llama 3 8B's context in the catalogue: 8,192 tokens.
    const CONTEXT: u32 = 8192;
    let msg = r#""model":"llama-3-8b","messages":[{"role":"user","content":"hi"}]"#;
    // 5 tokens of room, less than the default 16: answered with those 5, not refused
    // naming a `max_tokens` the client never sent.
    for (path, body) in [
        (CHAT, format!("{{{msg}}}")),
        (
            COMPLETIONS,
            r#"{"model":"llama-3-8b","prompt":"hi"}"#.to_string(),
        ),
    ] {
        let room = (CONTEXT - 5).to_string();
        let r = post(
            d.openai_addr,
            path,
            &[("x-dujiang-prompt-tokens", &room)],
            &body,
        )
        .await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let v = r.json();
        assert_eq!(v["usage"]["completion_tokens"], 5, "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    }
    // With room to spare the default stays 16.
    let r = post(
        d.openai_addr,
        CHAT,
        &[("x-dujiang-prompt-tokens", "100")],
        &format!("{{{msg}}}"),
    )
    .await;
    assert_eq!(r.json()["usage"]["completion_tokens"], 16, "{}", r.body);
    // A limit the client did send is still held to the context, and named.
    let e = error_of(
        &post(
            d.openai_addr,
            CHAT,
            &[("x-dujiang-prompt-tokens", &(CONTEXT - 5).to_string())],
            &format!("{{{msg},\"max_tokens\":6}}"),
        )
        .await,
        400,
    );
    assert_eq!(e["param"], "max_tokens", "{e}");
    // A chat whose messages alone fill the context is refused naming them.
    let long = "word ".repeat(CONTEXT as usize * 2);
    let body = serde_json::json!({
        "model": "llama-3-8b",
        "messages": [{"role": "user", "content": long}],
    })
    .to_string();
    let e = error_of(&post(d.openai_addr, CHAT, &[], &body).await, 400);
    assert_eq!(e["param"], "messages", "{e}");
    assert!(
        e["message"].as_str().unwrap().starts_with("messages: "),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("8192-token context"),
        "{e}"
    );
    d.shutdown();
    d.wait().await.unwrap();
}
