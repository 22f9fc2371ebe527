//! A real engine on loopback: llama.cpp (through `llama-cpp-python`'s OpenAI server, built by
//! test.sh) serving a tiny random-weight Llama GGUF that the test writes itself. First the
//! engine alone over HTTP (the model loads and streams); then dujiang routing to two such
//! servers as one `kind = "openai"` pool: streaming through both front ends with the engine's
//! own text and usage, a client disconnect aborting the upstream request, a server killed
//! (requests before their first token go to the other, one cut after its first token ends
//! cleanly, nothing counted twice) and probed back in when it returns.

mod llamacpp_support;
#[path = "serve_openai_support/mod.rs"]
mod openai_support;
mod upstream_support;

use dujiang::wire;
use llamacpp_support::{sse_data, tiny_gguf, LlamaServer, Scratch, MODEL};
use openai_support::post;
use std::net::SocketAddr;
use std::time::Duration;
use upstream_support::{
    eventually, generate, inference, metric_sum, metrics, router, series, sum_of,
};

/// One pair of servers at a time: each test runs two engines and a daemon on two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[test]
fn the_tiny_model_is_the_same_file_for_the_same_seed() {
    let scratch = Scratch::new("gguf-seed");
    let a = std::fs::read(tiny_gguf(&scratch.0)).unwrap();
    let b = std::fs::read(tiny_gguf(&scratch.0)).unwrap();
    assert!(a.len() > 100_000, "a GGUF with weights: {} bytes", a.len());
    assert_eq!(&a[..4], b"GGUF");
    assert!(a == b, "same seed, same bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llamacpp_streams_a_chat_completion_from_the_tiny_model() {
    let scratch = Scratch::new("llama-direct");
    let model = tiny_gguf(&scratch.0);
    let server = LlamaServer::start(&model).await;

    let (status, models) = llamacpp_support::http_get(server.addr, "/v1/models")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(models.contains(MODEL), "{models}");

    let body = serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": 24,
        "stream": true,
        "temperature": 0.0,
    })
    .to_string();
    let resp = post(server.addr, "/v1/chat/completions", &[], &body).await;
    assert_eq!(resp.status, 200, "{}\n{}", resp.body, server.log());
    assert!(
        resp.header("content-type")
            .is_some_and(|t| t.starts_with("text/event-stream")),
        "{:?}",
        resp.headers
    );
    let data = sse_data(&resp.body);
    assert_eq!(
        data.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        resp.body
    );
    let chunks: Vec<serde_json::Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let content_chunks = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .count();
    let finish = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect::<Vec<_>>();
    eprintln!("{content_chunks} content chunks: {text:?}; finish {finish:?}");
    // The model never picks </s> (make_tiny_gguf.py), so the stream runs to max_tokens,
    // one printable-ASCII token per chunk.
    assert_eq!(finish, ["length"], "{}", resp.body);
    assert_eq!(content_chunks, 24, "{text:?}");
    assert!(text.chars().all(|c| (' '..='~').contains(&c)), "{text:?}");

    // This server has no Prometheus /metrics: a scrape of it is an error value (the router
    // keeps its own counts as stale-free data), not a panic, and the server serves on.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<hyper::body::Bytes>>();
    let scraped = dujiang::serve::scrape::scrape_once(
        &client,
        &server.base_url(),
        dujiang::serve::scrape::MetricsDialect::LlamaCpp,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        scraped,
        Err(dujiang::serve::scrape::ScrapeError::Status {
            url: format!("http://{}/metrics", server.addr),
            status: 404
        })
    );
    assert_eq!(
        llamacpp_support::http_get(server.addr, "/v1/models")
            .await
            .unwrap()
            .0,
        200
    );
}

/// A fleet of one `kind = "openai"` pool over the servers: the client's model
/// (`llama-3-8b`, the catalogue's) is served upstream as the tiny model's alias; the chip's
/// performance model is the router's prior; the servers' /metrics are scraped as llama.cpp's.
fn llama_fleet(servers: &[&LlamaServer]) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|s| format!("{:?}", s.base_url()))
        .collect();
    format!(
        r#"name = "front"
model = "llama-3-8b"

[policy]
name = "round-robin"

[pools.llama]
kind = "openai"
endpoints = [{}]
model = "{MODEL}"
chip = "h20"
metrics = "llamacpp"
"#,
        list.join(", ")
    )
}

/// A streaming chat request body; `temperature: 0` makes the tiny model's text a function
/// of the prompt alone (greedy), so the same request to any server gives the same text.
fn chat(model: &str, content: &str, max_tokens: u32, usage: Option<bool>) -> String {
    let mut v = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": true,
        "temperature": 0.0,
    });
    if let Some(u) = usage {
        v["stream_options"] = serde_json::json!({"include_usage": u});
    }
    v.to_string()
}

/// What one chat stream carried: content text, content chunks, finish reasons, the usage
/// chunk's completion tokens, error events, and whether it ended with `[DONE]`.
#[derive(Debug, Default)]
struct Streamed {
    text: String,
    chunks: usize,
    finish: Vec<String>,
    usage: Option<u64>,
    errors: Vec<String>,
    done: bool,
}

fn read_chat(body: &str) -> Streamed {
    let mut s = Streamed::default();
    for d in sse_data(body) {
        if d == "[DONE]" {
            s.done = true;
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&d).unwrap_or_else(|e| panic!("{e}: {d}"));
        if v.get("error").is_some() {
            s.errors.push(d.clone());
            continue;
        }
        let choice = &v["choices"][0];
        if let Some(c) = choice["delta"]["content"]
            .as_str()
            .or(choice["text"].as_str())
        {
            if !c.is_empty() {
                s.text.push_str(c);
                s.chunks += 1;
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            s.finish.push(f.to_string());
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            s.usage = Some(n);
        }
    }
    s
}

/// The greedy text the engine itself gives for `content` (asked directly, not through dujiang).
async fn direct_text(server: &LlamaServer, content: &str, max_tokens: u32) -> String {
    let resp = post(
        server.addr,
        "/v1/chat/completions",
        &[],
        &chat(MODEL, content, max_tokens, None),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let s = read_chat(&resp.body);
    assert_eq!(s.chunks, max_tokens as usize, "{}", resp.body);
    s.text
}

fn grpc_request(content: &str, max_tokens: u32) -> wire::GenerateRequest {
    wire::GenerateRequest {
        messages: vec![wire::ChatMessage {
            role: "user".into(),
            content: content.into(),
        }],
        max_tokens,
        ..Default::default()
    }
}

/// Both servers, started side by side.
async fn two_servers(scratch: &Scratch) -> (LlamaServer, LlamaServer) {
    let model = tiny_gguf(&scratch.0);
    tokio::join!(LlamaServer::start(&model), LlamaServer::start(&model))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dujiang_streams_two_llamacpp_servers_through_both_front_ends_and_aborts_on_disconnect() {
    let _one = ONE_AT_A_TIME.lock().await;
    let scratch = Scratch::new("llama-front-ends");
    let (a, b) = two_servers(&scratch).await;
    // Scraped often: llama-cpp-python serves no /metrics, so every scrape is a 404.
    let d = router(&scratch.0, &llama_fleet(&[&a, &b]), |c| {
        c.upstream.scrape_interval_ms = 50
    })
    .await;
    let question = "Why split the river?";
    let want = direct_text(&b, question, 20).await;

    // OpenAI streaming chat, round-robin over both servers: each gives the engine's own
    // greedy text; usage (counted by dujiang: this server sends none) only when asked for.
    let mut backends = Vec::new();
    for usage in [Some(true), Some(false), None] {
        let resp = post(
            d.openai_addr,
            "/v1/chat/completions",
            &[],
            &chat("llama-3-8b", question, 20, usage),
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        assert_eq!(resp.header("x-dujiang-pool"), Some("llama"));
        backends.push(resp.header("x-dujiang-backend").unwrap_or("").to_string());
        let s = read_chat(&resp.body);
        assert_eq!(s.text, want, "{}", resp.body);
        // dujiang may carry two tokens that arrive together in one chunk: the text and the
        // usage are what must match.
        assert!((1..=20).contains(&s.chunks), "{}", resp.body);
        assert_eq!(s.finish, ["length"], "{}", resp.body);
        assert_eq!(
            s.usage,
            (usage == Some(true)).then_some(20),
            "{}",
            resp.body
        );
        assert!(s.errors.is_empty() && s.done, "{}", resp.body);
    }
    backends.sort();
    backends.dedup();
    assert_eq!(
        backends,
        ["llama-0", "llama-1"],
        "round-robin used both servers"
    );

    // Streamed completions: the engine's greedy text for the prompt, as it gives it directly.
    let body = |model: &str| {
        serde_json::json!({"model": model, "prompt": "Once upon a time", "max_tokens": 8,
                           "stream": true, "temperature": 0.0})
        .to_string()
    };
    let direct = post(a.addr, "/v1/completions", &[], &body(MODEL)).await;
    let routed = post(d.openai_addr, "/v1/completions", &[], &body("llama-3-8b")).await;
    assert_eq!(routed.status, 200, "{}", routed.body);
    let (direct, routed_s) = (read_chat(&direct.body), read_chat(&routed.body));
    assert_eq!(direct.chunks, 8, "{direct:?}");
    assert_eq!(routed_s.text, direct.text, "{}", routed.body);

    // gRPC Generate and Complete (no sampling fields: the server's default temperature, so
    // only the count and the usage are known).
    let mut client = inference(d.grpc_addr).await;
    let seen = generate(&mut client, tonic::Request::new(grpc_request(question, 9))).await;
    assert!(seen.status.is_none(), "{:?}", seen.status);
    assert_eq!(seen.tokens, 9);
    assert_eq!(seen.started.as_ref().unwrap().pool, "llama");
    assert_eq!(
        seen.finished
            .as_ref()
            .unwrap()
            .usage
            .unwrap()
            .completion_tokens,
        9
    );
    assert_eq!(seen.finished_count, 1);
    let done = client
        .complete(grpc_request(question, 7))
        .await
        .unwrap()
        .into_inner();
    assert!(!done.text.is_empty());
    assert_eq!(done.finished.unwrap().usage.unwrap().completion_tokens, 7);

    let m = metrics(d.http_addr).await;
    assert_eq!(
        sum_of(&m, "dujiang_requests_total", &["outcome=\"ok\""]),
        6.0,
        "{m}"
    );
    assert_eq!(metric_sum(&m, "dujiang_requests_total"), 6.0, "{m}");
    assert_eq!(
        metric_sum(&m, "dujiang_requests_accepted_total"),
        6.0,
        "{m}"
    );

    // Cancellation: a long stream whose client goes away after its first bytes. The server
    // it was sent to sees its client (dujiang) disconnect and stops generating.
    let (sock, head) = openai_support::open(
        d.openai_addr,
        "/v1/chat/completions",
        &[],
        &chat("llama-3-8b", "Tell a very long story.", 3500, Some(true)),
        200,
    )
    .await;
    let head = String::from_utf8_lossy(&head).to_string();
    let backend = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-dujiang-backend:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no backend header: {head}"));
    let server = if backend == "llama-0" { &a } else { &b };
    let before = server.log().matches("disconnected").count();
    drop(sock);
    let aborted = eventually(Duration::from_secs(10), async || {
        server.log().matches("disconnected").count() > before
    })
    .await;
    assert!(
        aborted,
        "{backend}'s server did not see the request end:\n{}",
        server.log()
    );
    let cancelled = eventually(Duration::from_secs(10), async || {
        sum_of(
            &metrics(d.http_addr).await,
            "dujiang_requests_total",
            &["outcome=\"cancelled\""],
        ) == 1.0
    })
    .await;
    assert!(cancelled, "{}", metrics(d.http_addr).await);
    // The aborted server is free again: a short request to it is answered at once, not after
    // the 3,500 tokens the abandoned request asked for.
    let again = direct_text(server, question, 5).await;
    assert!(want.starts_with(&again), "{again:?} vs {want:?}");

    // Dozens of failed scrapes (404) later, both servers are still in routing: a failed
    // scrape makes the engine's own figures stale, it never takes the endpoint out.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = metrics(d.http_addr).await;
    for backend in ["llama-0", "llama-1"] {
        let has = format!("backend=\"{backend}\"");
        assert_eq!(
            series(&m, "dujiang_backend_serving", &[&has]),
            Some(1.0),
            "{m}"
        );
    }

    d.shutdown();
    d.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_llamacpp_server_is_retried_around_fails_midstream_once_and_is_probed_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let scratch = Scratch::new("llama-kill");
    let (mut a, b) = two_servers(&scratch).await;
    let a_addr: SocketAddr = a.addr;
    let d = router(&scratch.0, &llama_fleet(&[&a, &b]), |_| {}).await;
    let story = "Tell a very long story.";
    let want = direct_text(&b, story, 600).await;

    // Round-robin starts at llama-0 (server a): a long answer, and a killed once it streams.
    let (sock, buf) = openai_support::open(
        d.openai_addr,
        "/v1/chat/completions",
        &[],
        &chat("llama-3-8b", story, 3500, Some(true)),
        200,
    )
    .await;
    a.kill();
    let resp = openai_support::finish(sock, buf).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-dujiang-backend"), Some("llama-0"));
    let s = read_chat(&resp.body);
    assert!(s.done, "the stream ends with [DONE]: {}", resp.body);
    assert_eq!(s.errors.len(), 1, "one error event: {}", resp.body);
    assert!(s.finish.is_empty() && s.usage.is_none(), "{}", resp.body);
    // What arrived is the engine's text from its start, nothing repeated or skipped.
    assert!(!s.text.is_empty(), "{}", resp.body);
    assert!(
        want.starts_with(&s.text) || s.text.starts_with(&want),
        "{:?} is not the engine's text {want:?}",
        s.text
    );

    // Now every request succeeds: those routed to the dead server fail to connect before
    // any token and are sent to the other.
    let mut client = inference(d.grpc_addr).await;
    for _ in 0..6 {
        let seen = generate(&mut client, tonic::Request::new(grpc_request(story, 4))).await;
        assert!(seen.status.is_none(), "{:?}", seen.status);
        assert_eq!(seen.tokens, 4);
        assert_eq!(seen.finished_count, 1);
        assert_eq!(seen.started.unwrap().backend, "llama-1");
    }
    let m = metrics(d.http_addr).await;
    // Seven requests, seven outcomes: one failed mid-stream, six ok, none twice.
    assert_eq!(
        sum_of(&m, "dujiang_requests_total", &["outcome=\"failed\""]),
        1.0,
        "{m}"
    );
    assert_eq!(
        sum_of(&m, "dujiang_requests_total", &["outcome=\"ok\""]),
        6.0,
        "{m}"
    );
    assert_eq!(metric_sum(&m, "dujiang_requests_total"), 7.0, "{m}");
    assert_eq!(
        metric_sum(&m, "dujiang_requests_accepted_total"),
        7.0,
        "{m}"
    );
    assert_eq!(
        series(&m, "dujiang_backend_serving", &["backend=\"llama-0\""]),
        Some(0.0),
        "{m}"
    );

    // Back on its port: the probes find it and round-robin uses both servers again.
    a.restart().await;
    assert_eq!(a.addr, a_addr);
    let back = eventually(Duration::from_secs(20), async || {
        series(
            &metrics(d.http_addr).await,
            "dujiang_backend_serving",
            &["backend=\"llama-0\""],
        ) == Some(1.0)
    })
    .await;
    assert!(
        back,
        "the restarted server was not probed back in:\n{}",
        metrics(d.http_addr).await
    );
    let mut used = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let seen = generate(&mut client, tonic::Request::new(grpc_request(story, 3))).await;
        assert!(seen.status.is_none(), "{:?}", seen.status);
        used.insert(seen.started.unwrap().backend);
    }
    assert_eq!(used.len(), 2, "both servers serve again: {used:?}");

    d.shutdown();
    d.wait().await.unwrap();
}
