//! A real engine on loopback: llama.cpp (through `llama-cpp-python`'s OpenAI server, built by
//! test.sh) serving a tiny random-weight Llama GGUF that the test writes itself. These tests
//! talk to the engine directly over HTTP, proving the model loads and streams, before dujiang
//! is put in front of it.

mod llamacpp_support;
mod serve_openai_support;

use llamacpp_support::{sse_data, tiny_gguf, LlamaServer, Scratch, MODEL};
use serve_openai_support::post;

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
}
