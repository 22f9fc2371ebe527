//! Request lives on the OpenAI front end over loopback: a client that disconnects frees
//! its KV cache, 1,000 concurrent streams all finish, accounting is exactly once across
//! the gRPC and HTTP front ends, and SIGTERM drains an HTTP stream like a gRPC one.

mod serve_openai_support;
mod serve_support;

use dujiang::serve::{RunningDaemon, ServeConfig};
use serde_json::Value;
use serve_openai_support::*;
use serve_support::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHAT: &str = "/v1/chat/completions";

fn two_h20(time_scale: f64) -> ServeConfig {
    ServeConfig {
        fleet: data("serve_two_h20.toml"),
        time_scale,
        ..config()
    }
}

/// A sample's value in a scrape (`name{labels}` exactly).
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Within 5 s of a client's disconnect: no KV held anywhere, and exactly one OpenAI
/// request counted as cancelled.
async fn assert_kv_freed_and_one_cancel(d: &RunningDaemon) {
    let freed = eventually(Duration::from_secs(5), async || {
        let s = http_get(d.http_addr, "/metrics").await.1;
        metric_sum(&s, "dujiang_backend_kv_usage_ratio") == 0.0
            && sample(
                &s,
                "dujiang_requests_total{outcome=\"cancelled\",frontend=\"openai\"}",
            ) == Some(1.0)
    })
    .await;
    assert!(freed, "{}", http_get(d.http_addr, "/metrics").await.1);
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_and_frees_kv() {
    let d = start(two_h20(1.0)).await;
    // A long prompt holds many KV blocks; read the first token, then hang up.
    let prompt = "word ".repeat(2000);
    let (socket, _) = open(
        d.openai_addr,
        CHAT,
        &[],
        &chat_body(&prompt, 4000, true, false),
        64,
    )
    .await;
    let busy = http_get(d.http_addr, "/metrics").await.1;
    assert!(
        metric_sum(&busy, "dujiang_backend_kv_usage_ratio") > 0.0,
        "the request holds KV: {busy}"
    );
    drop(socket);
    assert_kv_freed_and_one_cancel(&d).await;
    assert_eq!(d.daemon.in_flight(), 0);
}

#[tokio::test]
async fn a_non_streaming_client_that_disconnects_cancels_too() {
    let d = start(two_h20(1.0)).await;
    let prompt = "word ".repeat(2000);
    let mut s = tokio::net::TcpStream::connect(d.openai_addr).await.unwrap();
    let body = chat_body(&prompt, 4000, false, false);
    let req = format!(
        "POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes())
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || d.daemon.in_flight() == 1).await,
        "accepted"
    );
    drop(s);
    assert_kv_freed_and_one_cancel(&d).await;
    assert_eq!(d.daemon.in_flight(), 0);
}

/// A request body that sends `first` and then, if `stall`, nothing more for ever: a
/// client still uploading.
struct Upload {
    first: Option<hyper::body::Bytes>,
    stall: bool,
}

impl hyper::body::Body for Upload {
    type Data = hyper::body::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        match self.first.take() {
            Some(data) => Poll::Ready(Some(Ok(hyper::body::Frame::data(data)))),
            None if self.stall => Poll::Pending,
            None => Poll::Ready(None),
        }
    }
}

/// An HTTP/2 client that gives up on a request before its body is all sent resets the
/// stream (`RST_STREAM CANCEL`): that is a client gone, as a TCP reset mid-upload is over
/// HTTP/1.1, not an invalid request. It used to be counted as one.
#[tokio::test]
async fn an_http2_client_that_cancels_mid_upload_is_no_invalid_request() {
    let d = start(two_h20(1.0)).await;
    let tcp = tokio::net::TcpStream::connect(d.openai_addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let post = |first: &'static [u8], stall| {
        hyper::Request::post(format!("http://{}{CHAT}", d.openai_addr))
            .header("content-type", "application/json")
            .body(Upload {
                first: Some(hyper::body::Bytes::from_static(first)),
                stall,
            })
            .unwrap()
    };
    // Dropping the unanswered request is what resets its stream.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        send.send_request(post(b"{\"model\":", true)),
    )
    .await;
    assert!(gave_up.is_err(), "answered before its body was all sent");
    // A malformed body on the same connection after it: that one is a refusal.
    let bad = send.send_request(post(b"{", false)).await.unwrap();
    assert_eq!(bad.status(), 400);
    let invalid = || shed_count(&d, "invalid_request");
    // Time for the first request's handler to have read the reset, in case it comes last.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(invalid(), Some(1), "only the malformed body");
    assert_eq!(d.daemon.metrics.accepted_count(), 0);
}

/// Multi-turn chats sent as a real client sends them (the whole history each turn, no
/// prefix hashes) stay with the backend holding their prefix under `prefix-affinity`,
/// because the hashes derived from the text agree on the shared blocks.
#[tokio::test]
async fn multi_turn_chats_keep_their_backend_under_prefix_affinity() {
    let d = start(ServeConfig {
        fleet: data("serve_four_h20.toml"),
        policy: "prefix-affinity".into(),
        time_scale: 50.0,
        ..config()
    })
    .await;
    let mut homes = std::collections::BTreeSet::new();
    for conv in 0..8 {
        // A system prompt of several full blocks, distinct per conversation.
        let system =
            format!("Conversation {conv}. ") + &"You answer as a hydrologist. ".repeat(100);
        let mut messages = vec![serde_json::json!({"role": "system", "content": system})];
        let mut backend: Option<String> = None;
        for turn in 0..3 {
            messages.push(serde_json::json!({"role": "user", "content": format!("Question {turn} about the weir?")}));
            let body =
                serde_json::json!({"model": "llama-3-8b", "messages": messages, "max_tokens": 4})
                    .to_string();
            let r = post(d.openai_addr, CHAT, &[], &body).await;
            assert_eq!(r.status, 200, "{}", r.body);
            let here = r.header("x-dujiang-backend").unwrap().to_string();
            if let Some(b) = &backend {
                assert_eq!(&here, b, "conversation {conv} turn {turn} moved");
            }
            backend = Some(here);
            let answer = r.json()["choices"][0]["message"]["content"].clone();
            messages.push(serde_json::json!({"role": "assistant", "content": answer}));
        }
        homes.insert(backend.unwrap());
    }
    assert!(
        homes.len() >= 2,
        "conversations spread over backends: {homes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_streams_all_finish() {
    let mut cfg = two_h20(200.0);
    cfg.admission.max_waiting_per_backend = 100_000;
    // Nothing shed for its predicted latency: the point is that all of them stream.
    cfg.admission.slo_shed_factor = 0.0;
    let d = start(cfg).await;
    let addr = d.openai_addr;
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            tokio::spawn(async move {
                let body = chat_body(&format!("Request {i} about the weir."), 8, true, true);
                post(addr, CHAT, &[], &body).await
            })
        })
        .collect();
    let mut tokens = 0u64;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let events = r.events();
        assert_eq!(events.last().unwrap(), "[DONE]");
        let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        assert_eq!(usage["usage"]["completion_tokens"], 8);
        tokens += (events.len() - 2) as u64;
    }
    assert_eq!(tokens, 8_000, "every token streamed once");
    let scrape = http_get(d.http_addr, "/metrics").await.1;
    assert_eq!(
        sample(
            &scrape,
            "dujiang_requests_total{outcome=\"ok\",frontend=\"openai\"}"
        ),
        Some(1000.0),
        "{scrape}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounting_is_exactly_once_across_both_front_ends() {
    let mut cfg = two_h20(50.0);
    cfg.admission.max_in_flight = 40;
    let d = start(cfg).await;
    let (grpc, openai) = (d.grpc_addr, d.openai_addr);
    // 60 of each at once against 40 slots: some finish, some are shed, and a few HTTP
    // clients hang up early.
    let mut tasks = Vec::new();
    for i in 0..60u32 {
        tasks.push(tokio::spawn(async move {
            let mut c = inference(grpc).await;
            let seen = generate(&mut c, tonic::Request::new(request(200, 30))).await;
            ("grpc", seen.status.is_none() && seen.tokens == 30)
        }));
        tasks.push(tokio::spawn(async move {
            let body = chat_body(&format!("turn {i}"), 30, true, false);
            if i % 10 == 0 {
                let r = post(openai, CHAT, &[("x-dujiang-timeout-ms", "1")], &body).await;
                return (
                    "openai",
                    r.status == 200 && r.body.contains("\"finish_reason\":\"length\""),
                );
            }
            let r = post(openai, CHAT, &[], &body).await;
            (
                "openai",
                r.status == 200 && r.body.contains("\"finish_reason\":\"length\""),
            )
        }));
    }
    let mut ok = [0u32; 2];
    for t in tasks {
        let (front, done) = t.await.unwrap();
        ok[usize::from(front == "openai")] += u32::from(done);
    }
    assert!(
        eventually(Duration::from_secs(5), async || d.daemon.in_flight() == 0).await,
        "everything ended"
    );
    let scrape = http_get(d.http_addr, "/metrics").await.1;
    for (i, front) in ["grpc", "openai"].iter().enumerate() {
        let label = format!("frontend=\"{front}\"");
        let of = |name: &str| -> f64 {
            scrape
                .lines()
                .filter(|l| l.starts_with(name) && l.contains(&label))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        let accepted = of("dujiang_requests_accepted_total{");
        let ended = of("dujiang_requests_total{");
        let shed = of("dujiang_requests_shed_total{");
        assert_eq!(
            accepted, ended,
            "{front}: every accepted request ended once"
        );
        assert_eq!(
            accepted + shed,
            60.0,
            "{front}: each request counted once: {scrape}"
        );
        let finished = sample(
            &scrape,
            &format!("dujiang_requests_total{{outcome=\"ok\",{label}}}"),
        );
        assert_eq!(
            finished,
            Some(f64::from(ok[i])),
            "{front}: ok = what clients saw finish"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_http_stream() {
    let (mut child, serving, _out) = spawn_serve(
        Command::new(env!("CARGO_BIN_EXE_dujiang"))
            .arg("serve")
            .args(["--time-scale", "2", "--grace-period-ms", "10000"])
            .env("RUST_LOG", "info")
            .stderr(Stdio::null()),
    )
    .await;
    let (openai, http) = (serving.openai, serving.http);
    let models = get(openai, "/v1/models").await.json();
    let model = models["data"][0]["id"].as_str().unwrap().to_string();
    let body =
        serde_json::json!({"model": model, "messages": [{"role": "user", "content": "Tell me"}],
        "max_tokens": 150, "stream": true, "stream_options": {"include_usage": true}})
        .to_string();
    let (socket, buf) = open(openai, CHAT, &[], &body, 64).await;
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(
        eventually(Duration::from_secs(5), async || get(openai, "/health")
            .await
            .status
            == 503)
        .await,
        "health turns 503 while draining"
    );
    let refused = post(openai, CHAT, &[], &body).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.header("retry-after").is_some());
    let r = finish(socket, buf).await;
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(
        usage["usage"]["completion_tokens"], 150,
        "the in-flight stream finished"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "daemon did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
    let _ = http;
}
