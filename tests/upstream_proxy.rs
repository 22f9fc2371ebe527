//! dujiang as the router in front of real engines: `dujiang serve` processes stand in for
//! vLLM (they serve the OpenAI API on their own loopback ports) behind a routing daemon
//! whose fleet is one `kind = "openai"` pool. Both front ends stream the engines' own text;
//! an engine killed before a first token is routed around, taken out and probed back in
//! when it returns; a failure after the first token ends the client's stream cleanly; and
//! every request ends exactly once.

#[path = "serve_openai_support/mod.rs"]
mod openai_support;
mod upstream_support;

use dujiang::serve::token_text;
use dujiang::wire;
use std::time::Duration;
use upstream_support::*;

/// The text of a chat stream's content deltas, and its usage chunk's completion tokens.
fn chat_stream(resp: &openai_support::Resp) -> (String, Option<u64>, Vec<String>) {
    let mut text = String::new();
    let mut usage = None;
    let mut finish = Vec::new();
    for e in resp.events() {
        if e == "[DONE]" {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&e).unwrap();
        assert!(v.get("error").is_none(), "error event: {e}");
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(c);
        }
        if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
            finish.push(f.to_string());
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            usage = Some(n);
        }
    }
    (text, usage, finish)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_front_ends_stream_the_engines_text() {
    let dir = scratch("text");
    let a = Engine::start(&dir, "127.0.0.1:0").await;
    let b = Engine::start(&dir, "127.0.0.1:0").await;
    let d = router(
        &dir,
        &proxy_fleet(&[a.url(), b.url()], "round-robin"),
        |_| {},
    )
    .await;

    // OpenAI streaming chat: the engine's words, usage only when asked for.
    for usage in [false, true] {
        let body = openai_support::chat_body("Why split the river?", 12, true, usage);
        let resp = openai_support::post(d.openai_addr, "/v1/chat/completions", &[], &body).await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        assert_eq!(resp.header("x-dujiang-pool"), Some("real"));
        let (text, seen_usage, finish) = chat_stream(&resp);
        assert_eq!(text, token_text(0, 12));
        assert_eq!(seen_usage, usage.then_some(12), "{}", resp.body);
        assert_eq!(finish, ["length"], "{}", resp.body);
        assert!(resp.body.ends_with("data: [DONE]\n\n"));
    }
    // Not streamed, and /v1/completions.
    let body = openai_support::chat_body("Why split the river?", 5, false, false);
    let resp = openai_support::post(d.openai_addr, "/v1/chat/completions", &[], &body).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let v = resp.json();
    assert_eq!(v["choices"][0]["message"]["content"], token_text(0, 5));
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let body = r#"{"model":"llama-3-8b","prompt":"Once upon a time","max_tokens":4,"stream":true}"#;
    let resp = openai_support::post(d.openai_addr, "/v1/completions", &[], body).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let text: String = resp
        .events()
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| {
            let v: serde_json::Value = serde_json::from_str(e).unwrap();
            v["choices"][0]["text"].as_str().map(str::to_string)
        })
        .collect();
    assert_eq!(text, token_text(0, 4));

    // gRPC Generate and Complete: the same text, usage from the engine.
    let mut client = inference(d.grpc_addr).await;
    let req = wire::GenerateRequest {
        messages: vec![wire::ChatMessage {
            role: "user".into(),
            content: "Why split the river?".into(),
        }],
        max_tokens: 9,
        ..Default::default()
    };
    let mut stream = client.generate(req.clone()).await.unwrap().into_inner();
    let mut text = String::new();
    let mut finished = None;
    let mut started = None;
    while let Some(msg) = stream.message().await.unwrap() {
        match msg.event.unwrap() {
            wire::generate_response::Event::Started(s) => started = Some(s),
            wire::generate_response::Event::Tokens(t) => text.push_str(&t.text),
            wire::generate_response::Event::Finished(f) => finished = Some(f),
        }
    }
    assert_eq!(text, token_text(0, 9));
    assert_eq!(started.unwrap().pool, "real");
    assert_eq!(finished.unwrap().usage.unwrap().completion_tokens, 9);
    let done = client.complete(req).await.unwrap().into_inner();
    assert_eq!(done.text, token_text(0, 9));

    // Round-robin used both engines, and every request ended once, ok.
    let m = metrics(d.http_addr).await;
    assert_eq!(
        sum_of(&m, "dujiang_requests_total", &["outcome=\"ok\""]),
        6.0,
        "{m}"
    );
    assert_eq!(metric_sum(&m, "dujiang_requests_accepted_total"), 6.0);
    for (engine, _) in [(&a, 0), (&b, 1)] {
        let em = metrics(engine.serving.http).await;
        assert!(
            sum_of(&em, "dujiang_requests_total", &["outcome=\"ok\""]) >= 3.0,
            "{em}"
        );
    }
    assert!(
        series(
            &m,
            "dujiang_backend_prediction_ratio",
            &["backend=\"real-0\"", "phase=\"prefill\""]
        )
        .is_some(),
        "{m}"
    );
    d.shutdown();
    d.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_engine_is_routed_around_taken_out_and_probed_back_in() {
    let dir = scratch("kill");
    let a = Engine::start(&dir, "127.0.0.1:0").await;
    let mut b = Engine::start(&dir, "127.0.0.1:0").await;
    let b_addr = b.serving.openai;
    let d = router(
        &dir,
        &proxy_fleet(&[a.url(), b.url()], "round-robin"),
        |_| {},
    )
    .await;
    b.kill();
    // Every request succeeds: the ones routed to the dead engine fail to connect before
    // any token and go to the other.
    let mut client = inference(d.grpc_addr).await;
    for _ in 0..6 {
        let seen = generate(&mut client, tonic::Request::new(request(16, 3))).await;
        assert!(seen.status.is_none(), "{:?}", seen.status);
        assert_eq!(seen.tokens, 3);
        assert_eq!(seen.started.unwrap().backend, "real-0");
    }
    let m = metrics(d.http_addr).await;
    assert_eq!(
        sum_of(&m, "dujiang_requests_total", &["outcome=\"ok\""]),
        6.0,
        "{m}"
    );
    assert_eq!(metric_sum(&m, "dujiang_requests_total"), 6.0, "{m}");
    assert_eq!(metric_sum(&m, "dujiang_requests_accepted_total"), 6.0);
    assert_eq!(
        series(&m, "dujiang_backend_serving", &["backend=\"real-1\""]),
        Some(0.0),
        "{m}"
    );
    assert!(
        sum_of(
            &m,
            "dujiang_request_migrations_total",
            &["kind=\"rerouted\""]
        ) >= 1.0,
        "{m}"
    );

    // Back on its port: probes find it and it serves again.
    let b2 = Engine::start(&dir, &b_addr.to_string()).await;
    let back = eventually(Duration::from_secs(10), async || {
        series(
            &metrics(d.http_addr).await,
            "dujiang_backend_serving",
            &["backend=\"real-1\""],
        ) == Some(1.0)
    })
    .await;
    assert!(back, "the restarted engine was not probed back in");
    let mut used = std::collections::HashSet::new();
    for _ in 0..4 {
        let seen = generate(&mut client, tonic::Request::new(request(16, 2))).await;
        assert!(seen.status.is_none(), "{:?}", seen.status);
        used.insert(seen.started.unwrap().backend);
    }
    assert_eq!(used.len(), 2, "round-robin uses both again: {used:?}");
    drop(b2);
    d.shutdown();
    d.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_the_first_token_ends_the_stream_once_without_repeats() {
    let dir = scratch("midstream");
    let mut a = Engine::start(&dir, "127.0.0.1:0").await;
    let b = Engine::start(&dir, "127.0.0.1:0").await;
    let d = router(
        &dir,
        &proxy_fleet(&[a.url(), b.url()], "round-robin"),
        |_| {},
    )
    .await;
    // Round-robin starts at real-0 (engine a): a long answer, killed once it streams.
    let body = openai_support::chat_body("Tell a long story.", 400, true, true);
    let (s, buf) =
        openai_support::open(d.openai_addr, "/v1/chat/completions", &[], &body, 300).await;
    a.kill();
    let resp = openai_support::finish(s, buf).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-dujiang-backend"), Some("real-0"));
    let events = resp.events();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        resp.body
    );
    let error = &events[events.len() - 2];
    assert!(error.contains("\"error\""), "{}", resp.body);
    // The text before the error is a prefix of the engine's, nothing repeated.
    let mut text = String::new();
    for e in &events[..events.len() - 2] {
        let v: serde_json::Value = serde_json::from_str(e).unwrap();
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(c);
        }
    }
    assert!(
        !text.is_empty() && token_text(0, 400).starts_with(&text),
        "{text}"
    );
    let m = metrics(d.http_addr).await;
    assert_eq!(
        sum_of(&m, "dujiang_requests_total", &["outcome=\"failed\""]),
        1.0,
        "{m}"
    );
    assert_eq!(metric_sum(&m, "dujiang_requests_total"), 1.0, "{m}");
    // The other engine still serves.
    let body = openai_support::chat_body("Again?", 3, true, false);
    let resp = openai_support::post(d.openai_addr, "/v1/chat/completions", &[], &body).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(chat_stream(&resp).0, token_text(0, 3));
    drop(b);
    d.shutdown();
    d.wait().await.unwrap();
}

#[test]
fn a_bad_fleet_file_stops_serve_with_its_file_line_and_field() {
    let dir = scratch("badfleet");
    let fleet = dir.join("bad.toml");
    std::fs::write(
        &fleet,
        proxy_fleet(
            &[
                "http://127.0.0.1:8000".into(),
                "http://127.0.0.1:99999".into(),
            ],
            "round-robin",
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dujiang"))
        .args(["serve", "--fleet"])
        .arg(&fleet)
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args([
            "--admin-addr",
            "127.0.0.1:0",
            "--openai-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let place = format!("{}:9:1: field `pools.real.endpoints`", fleet.display());
    assert!(err.contains(&place), "{err}");
    assert!(
        err.contains("endpoints[1]") && err.contains("99999"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_or_out_of_time_ends_the_engines_request_too() {
    let dir = scratch("cancel");
    let a = Engine::start(&dir, "127.0.0.1:0").await;
    let d = router(&dir, &proxy_fleet(&[a.url()], "round-robin"), |_| {}).await;
    // A client that goes away mid-stream: the engine's request is cancelled, not run on.
    let body = openai_support::chat_body("Tell a long story.", 400, true, false);
    let (s, _) = openai_support::open(d.openai_addr, "/v1/chat/completions", &[], &body, 200).await;
    drop(s);
    let cancelled = eventually(Duration::from_secs(5), async || {
        sum_of(
            &metrics(a.serving.http).await,
            "dujiang_requests_total",
            &["outcome=\"cancelled\""],
        ) == 1.0
    })
    .await;
    assert!(cancelled, "{}", metrics(a.serving.http).await);
    // A deadline: the client's stream ends with the router's error, and the engine's
    // request ends as well (its own copy of the deadline, or the router hanging up).
    let resp = openai_support::post(
        d.openai_addr,
        "/v1/chat/completions",
        &[("x-dujiang-timeout-ms", "400")],
        &body,
    )
    .await;
    assert!(resp.body.contains("\"error\""), "{}", resp.body);
    let ended = eventually(Duration::from_secs(5), async || {
        let m = metrics(a.serving.http).await;
        sum_of(&m, "dujiang_requests_total", &["outcome=\"cancelled\""])
            + sum_of(
                &m,
                "dujiang_requests_total",
                &["outcome=\"deadline_exceeded\""],
            )
            == 2.0
    })
    .await;
    assert!(ended, "{}", metrics(a.serving.http).await);
    let m = metrics(d.http_addr).await;
    assert_eq!(
        sum_of(&m, "dujiang_requests_total", &["outcome=\"cancelled\""]),
        1.0,
        "{m}"
    );
    assert_eq!(
        sum_of(
            &m,
            "dujiang_requests_total",
            &["outcome=\"deadline_exceeded\""]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(sum_of(&m, "dujiang_requests_total", &[]), 2.0, "{m}");
    d.shutdown();
    d.wait().await.unwrap();
}

#[test]
fn the_readme_fleet_for_vllm_resolves_as_documented() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## In front of vLLM / vLLM-Ascend")
        .nth(1)
        .expect("the README section");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("its fleet example");
    let spec =
        dujiang::fleet::FleetSpec::parse(block, "README.md").unwrap_or_else(|e| panic!("{e}"));
    let pools = spec
        .resolve(&dujiang::profile::Catalogue::embedded())
        .unwrap_or_else(|e| panic!("{e}"));
    let ascend = pools.iter().find(|p| p.name == "ascend").unwrap();
    let up = ascend.upstream.as_deref().unwrap();
    assert_eq!(
        up.endpoints,
        ["http://10.0.0.11:8000/v1", "http://10.0.0.12:8000/v1"]
    );
    assert_eq!(up.served_model, "Qwen/Qwen3-8B");
    assert_eq!(
        (ascend.count, ascend.perf.model.id.as_str()),
        (2, "qwen3-8b")
    );
    assert_eq!(ascend.perf.engine.engine, "vllm-ascend-0.18");
    let h20 = pools.iter().find(|p| p.name == "h20").unwrap();
    assert_eq!(
        h20.upstream.as_deref().unwrap().metrics.as_deref(),
        Some("vllm")
    );
}
