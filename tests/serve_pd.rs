//! Prefill/decode fleets in the daemon (issue 16): a long prompt is prefilled on one
//! backend, its KV crosses the fleet's link, and a backend of another pool decodes it on
//! the same client stream; `Started` and `/metrics` name both sides. Cancelling while the
//! KV is on the way frees it everywhere, and a decode backend failing meanwhile loses
//! nothing. Real daemons on loopback; the fleet's link is slow (8 Gb/s) so tests can act
//! while a transfer is in flight.

mod serve_openai_support;
mod serve_support;

use serve_support::*;
use std::time::Duration;

use dujiang::serve::ServeConfig;
use dujiang::wire::{self, generate_response::Event, inject_fault_request::Fault};

fn pd() -> ServeConfig {
    ServeConfig {
        fleet: data("serve_pd.toml"),
        ..config()
    }
}

/// One sample of a scrape by its exact series (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn scrape(d: &dujiang::serve::RunningDaemon) -> String {
    let (code, text) = http_get(d.http_addr, "/metrics").await;
    assert_eq!(code, 200);
    text
}

fn gauge(text: &str, name: &str, backend: &str, pool: &str) -> f64 {
    sample(
        text,
        &format!("{name}{{backend=\"{backend}\",pool=\"{pool}\"}}"),
    )
    .unwrap_or_else(|| panic!("no {name} for {backend}:\n{text}"))
}

/// Reads a stream to its end; the tokens it carried.
async fn tokens_to_the_end(stream: &mut tonic::Streaming<wire::GenerateResponse>) -> u32 {
    let mut tokens = 0;
    while let Some(m) = stream.message().await.unwrap() {
        if let Event::Tokens(t) = m.event.unwrap() {
            tokens += t.count;
        }
    }
    tokens
}

/// Waits until the prefill backend has handed its only request off (after `Started`,
/// neither waiting nor running there); returns the scrape that showed it.
async fn until_handed_off(d: &dujiang::serve::RunningDaemon) -> String {
    let mut seen = String::new();
    assert!(
        eventually(Duration::from_secs(5), async || {
            let text = scrape(d).await;
            let idle = [
                "dujiang_backend_running_requests",
                "dujiang_backend_waiting_requests",
            ]
            .iter()
            .all(|g| gauge(&text, g, "ascend-0", "ascend") == 0.0);
            seen = text;
            idle
        })
        .await,
        "the prefill backend never handed off"
    );
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_prompt_is_prefilled_on_one_chip_and_decoded_on_another() {
    let d = start(pd()).await;
    let mut c = inference(d.grpc_addr).await;
    let long = generate(&mut c, tonic::Request::new(request(2000, 20))).await;
    assert!(long.status.is_none(), "{:?}", long.status);
    let s = long.started.expect("started");
    assert_eq!(
        (s.backend.as_str(), s.pool.as_str()),
        ("ascend-0", "ascend")
    );
    assert_eq!(
        (s.decode_pool.as_str(), s.decode_chip.as_str()),
        ("h20", "h20")
    );
    assert!(s.decode_backend.starts_with("h20-"), "{s:?}");
    assert_eq!(long.tokens, 20);
    let f = long.finished.expect("finished");
    assert_eq!(f.usage.unwrap().completion_tokens, 20);
    // The first token leaves from the decode side, after the KV: 2,000 tokens × 128 KiB
    // = 262,144,000 bytes at 1 byte/ns is 0.262 s of link alone.
    let ttft = f.timings.unwrap().ttft_seconds;
    assert!(ttft > 0.262, "TTFT {ttft} s does not include the transfer");

    // A prompt under the policy's threshold is served whole on a decode backend.
    let short = generate(&mut c, tonic::Request::new(request(100, 5))).await;
    let s = short.started.expect("started");
    assert_eq!(s.pool, "h20");
    assert!(s.decode_backend.is_empty(), "{s:?}");
    assert_eq!(short.tokens, 5);

    let text = scrape(&d).await;
    let transfer = "dujiang_kv_transfer_seconds_count{from_pool=\"ascend\",to_pool=\"h20\"}";
    assert_eq!(sample(&text, transfer), Some(1.0), "{text}");
    let secs = sample(
        &text,
        "dujiang_kv_transfer_seconds_sum{from_pool=\"ascend\",to_pool=\"h20\"}",
    )
    .unwrap();
    assert!((0.262..1.0).contains(&secs), "transfer {secs} s");
    assert!(
        text.contains("dujiang_pool_info{pool=\"ascend\"") && text.contains("role=\"prefill\""),
        "{text}"
    );
    // Both requests ended on the decode pool, which produced every output token.
    assert_eq!(
        sample(
            &text,
            "dujiang_pool_requests_total{pool=\"h20\",outcome=\"ok\"}"
        ),
        Some(2.0)
    );
    // The new series keep the exposition valid (CI installs promtool, as serve_metrics
    // requires).
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool on PATH (Debian's prometheus package)");
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    d.shutdown();
    d.wait().await.unwrap();
}

/// The daemon runs the same uncached-token threshold as replay: a conversation's first turn
/// (2,048 tokens, a fresh prefix) is split; once it has ended on an H20, whose engine
/// cached the arrived KV, a next turn whose whole-serving pick is a backend holding those
/// four blocks has 100 to 400 uncached tokens and is served whole there. With two H20s
/// either may be picked, but each split turn leaves its prefix on the one it ended on,
/// so of nine turns at least one is whole (every one splits without the record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_whose_prefix_a_decode_backend_holds_is_served_whole_there() {
    let d = start(pd()).await;
    let mut c = inference(d.grpc_addr).await;
    let turn = |k: u32| {
        let prompt = 2048 + 40 * k;
        wire::GenerateRequest {
            prefix_hashes: (0..u64::from(prompt.div_ceil(512)))
                .map(|b| 7000 + b)
                .collect(),
            ..request(prompt, 5)
        }
    };
    let first = generate(&mut c, tonic::Request::new(turn(0))).await;
    assert!(first.status.is_none(), "{:?}", first.status);
    assert_eq!(first.started.expect("started").pool, "ascend");
    let mut whole = 0;
    for k in 1..=9 {
        let r = generate(&mut c, tonic::Request::new(turn(k))).await;
        assert!(r.status.is_none(), "{:?}", r.status);
        assert_eq!(r.tokens, 5);
        let s = r.started.expect("started");
        if s.pool == "h20" {
            assert!(s.decode_backend.is_empty(), "{s:?}");
            whole += 1;
        }
    }
    assert!(whole > 0, "every turn was split");
    d.shutdown();
    d.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_while_the_kv_is_on_the_link_frees_it_on_both_sides() {
    let d = start(pd()).await;
    let mut c = inference(d.grpc_addr).await;
    // 400 output tokens: decoding would hold the decode backend for seconds.
    let mut stream = c.generate(request(2000, 400)).await.unwrap().into_inner();
    let Event::Started(s) = stream.message().await.unwrap().unwrap().event.unwrap() else {
        panic!("Started first");
    };
    until_handed_off(&d).await;
    drop(stream);
    // Well past the transfer's end (0.26 s): had the decode side taken it, it would be
    // running for seconds yet.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let text = scrape(&d).await;
    for (b, pool) in [("ascend-0", "ascend"), ("h20-0", "h20"), ("h20-1", "h20")] {
        assert_eq!(
            gauge(&text, "dujiang_backend_running_requests", b, pool),
            0.0,
            "{b} runs a cancelled request (decode side was {})",
            s.decode_backend
        );
        assert_eq!(
            gauge(&text, "dujiang_backend_kv_usage_ratio", b, pool),
            0.0,
            "{b} holds KV of a cancelled request"
        );
    }
    assert!(
        eventually(Duration::from_secs(2), async || {
            let text = scrape(&d).await;
            sample(
                &text,
                "dujiang_requests_total{outcome=\"cancelled\",frontend=\"grpc\"}",
            ) == Some(1.0)
        })
        .await
    );
    d.shutdown();
    d.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decode_backend_failing_during_the_transfer_loses_nothing() {
    let d = start(pd()).await;
    let mut c = inference(d.grpc_addr).await;
    let mut a = admin(d.admin_addr).await;
    let mut stream = c.generate(request(2000, 30)).await.unwrap().into_inner();
    let Event::Started(s) = stream.message().await.unwrap().unwrap().event.unwrap() else {
        panic!("Started first");
    };
    until_handed_off(&d).await;
    a.inject_fault(wire::InjectFaultRequest {
        backend: s.decode_backend.clone(),
        fault: Some(Fault::Fail(true)),
    })
    .await
    .unwrap();
    let (mut tokens, mut text) = (0, String::new());
    while let Some(m) = stream.message().await.unwrap() {
        match m.event.unwrap() {
            Event::Tokens(t) => {
                tokens += t.count;
                text.push_str(&t.text);
            }
            Event::Finished(f) => assert_eq!(f.usage.unwrap().completion_tokens, 30),
            Event::Started(_) => {}
        }
    }
    assert_eq!(tokens, 30);
    assert_eq!(
        text,
        dujiang::serve::token_text(0, 30),
        "each token once, in order"
    );
    let scrape_text = scrape(&d).await;
    let other = if s.decode_backend == "h20-0" {
        "h20-1"
    } else {
        "h20-0"
    };
    assert_eq!(
        gauge(
            &scrape_text,
            "dujiang_backend_running_requests",
            other,
            "h20"
        ),
        0.0
    );
    assert_eq!(
        sample(
            &scrape_text,
            "dujiang_requests_total{outcome=\"ok\",frontend=\"grpc\"}"
        ),
        Some(1.0)
    );
    d.shutdown();
    d.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefill_backend_failing_mid_prompt_loses_nothing() {
    let d = start(pd()).await;
    let mut c = inference(d.grpc_addr).await;
    let mut a = admin(d.admin_addr).await;
    let mut stream = c.generate(request(4000, 10)).await.unwrap().into_inner();
    let Event::Started(s) = stream.message().await.unwrap().unwrap().event.unwrap() else {
        panic!("Started first");
    };
    assert_eq!(s.backend, "ascend-0");
    a.inject_fault(wire::InjectFaultRequest {
        backend: "ascend-0".into(),
        fault: Some(Fault::Fail(true)),
    })
    .await
    .unwrap();
    let tokens = tokens_to_the_end(&mut stream).await;
    // With no prefill backend left the policy serves it whole on a decode backend.
    assert_eq!(tokens, 10);
    d.shutdown();
    d.wait().await.unwrap();
}

/// The OpenAI front end is unchanged for the client: the same answer, its placement
/// headers naming the prefill backend as before and the decode side in new headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_front_end_names_both_backends() {
    let d = start(pd()).await;
    for stream in [false, true] {
        let r = serve_openai_support::post(
            d.openai_addr,
            "/v1/chat/completions",
            &[("x-dujiang-prompt-tokens", "2000")],
            &serve_openai_support::chat_body("Why split the river?", 12, stream, true),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-dujiang-backend"), Some("ascend-0"));
        assert_eq!(r.header("x-dujiang-pool"), Some("ascend"));
        assert_eq!(r.header("x-dujiang-decode-pool"), Some("h20"));
        assert_eq!(r.header("x-dujiang-decode-chip"), Some("h20"));
        assert!(r
            .header("x-dujiang-decode-backend")
            .is_some_and(|b| b.starts_with("h20-")));
        let usage = if stream {
            let events = r.events();
            let last = &events[events.len() - 2];
            serde_json::from_str::<serde_json::Value>(last).unwrap()["usage"].clone()
        } else {
            r.json()["usage"].clone()
        };
        assert_eq!(usage["completion_tokens"], 12, "{}", r.body);
        assert_eq!(usage["prompt_tokens"], 2000, "{}", r.body);
    }
    d.shutdown();
    d.wait().await.unwrap();
}

/// The prefill backend keeps a handed-off prompt's KV until the link has sent it (the
/// bytes are read from it), then frees it: its KV usage stays up for the transfer
/// (2,000 tokens over 1 byte/ns: 0.262 s) and drops to 0 before the request ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prefill_side_holds_the_kv_until_the_bytes_have_left() {
    let d = start(pd()).await;
    let mut c = inference(d.grpc_addr).await;
    let mut stream = c.generate(request(2000, 200)).await.unwrap().into_inner();
    let Event::Started(_) = stream.message().await.unwrap().unwrap().event.unwrap() else {
        panic!("Started first");
    };
    let text = until_handed_off(&d).await;
    let held = gauge(
        &text,
        "dujiang_backend_kv_usage_ratio",
        "ascend-0",
        "ascend",
    );
    assert!(held > 0.0, "KV freed at the hand-off, not when sent");
    assert!(
        eventually(Duration::from_secs(3), async || {
            let text = scrape(&d).await;
            gauge(
                &text,
                "dujiang_backend_kv_usage_ratio",
                "ascend-0",
                "ascend",
            ) == 0.0
        })
        .await,
        "the prefill backend never freed the KV"
    );
    // Freed at the transfer's end, long before the 200-token decode is done.
    let tokens = tokens_to_the_end(&mut stream).await;
    assert_eq!(tokens, 200);
    d.shutdown();
    d.wait().await.unwrap();
}

/// Draining waits for requests whose KV is on the way: a decode backend drained while a
/// transfer to it is in flight still takes and finishes that request (it takes no new
/// work), and a daemon shut down meanwhile finishes it within its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_and_shutdown_wait_for_requests_in_transfer() {
    let d = start(pd()).await;
    let mut c = inference(d.grpc_addr).await;
    let mut a = admin(d.admin_addr).await;
    let mut stream = c.generate(request(2000, 30)).await.unwrap().into_inner();
    let Event::Started(s) = stream.message().await.unwrap().unwrap().event.unwrap() else {
        panic!("Started first");
    };
    until_handed_off(&d).await;
    a.drain_backend(wire::BackendRef {
        backend: s.decode_backend.clone(),
    })
    .await
    .unwrap();
    d.shutdown();
    let (mut tokens, mut finished) = (0, None);
    while let Some(m) = stream.message().await.unwrap() {
        match m.event.unwrap() {
            Event::Tokens(t) => {
                if tokens == 0 {
                    // Decoding where it was sent, though drained.
                    let text = scrape(&d).await;
                    let running = gauge(
                        &text,
                        "dujiang_backend_running_requests",
                        &s.decode_backend,
                        "h20",
                    );
                    assert_eq!(running, 1.0, "{text}");
                }
                tokens += t.count;
            }
            Event::Finished(f) => finished = Some(f),
            Event::Started(_) => {}
        }
    }
    assert_eq!(tokens, 30);
    // The request ended as a whole, not cut off by the shutdown. (Its outcome is read
    // from the stream: once the last stream has ended the daemon may close its metrics
    // port before a scrape gets there.)
    let f = finished.expect("a Finished event before the stream closed");
    assert_eq!(f.usage.unwrap().completion_tokens, 30);
    assert_eq!(f.finish_reason, wire::FinishReason::Length as i32);
    d.wait().await.unwrap();
}

/// Admin RemovePool keeps a prefill/decode fleet whole: the last prefill pool cannot go
/// while decode pools remain (they would serve whole requests as mixed pools under a
/// decode name), nor the last pool to decode on while prefill pools remain. With a mixed
/// pool added, the fleet is taken apart in an order that keeps it sound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_pool_never_leaves_a_prefill_or_decode_pool_stranded() {
    let d = start(pd()).await;
    let mut a = admin(d.admin_addr).await;
    let remove = |pool: &str| wire::RemovePoolRequest { pool: pool.into() };
    let err = a.remove_pool(remove("ascend")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("pool `ascend` cannot be removed")
            && err
                .message()
                .contains("decode pool `h20` would get no hand-offs"),
        "{}",
        err.message()
    );
    let err = a.remove_pool(remove("h20")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message()
            .contains("prefill pool `ascend` has nowhere to hand its KV off"),
        "{}",
        err.message()
    );
    // Both refusals left the fleet serving as it was.
    let mut c = inference(d.grpc_addr).await;
    let mut stream = c.generate(request(2000, 4)).await.unwrap().into_inner();
    assert_eq!(tokens_to_the_end(&mut stream).await, 4);
    a.add_pool(wire::AddPoolRequest {
        pool: "spare".into(),
        chip: "h20".into(),
        backends: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let removed = a.remove_pool(remove("h20")).await.unwrap().into_inner();
    assert_eq!(removed.backends_removed, 2);
    a.remove_pool(remove("ascend")).await.unwrap();
    let mut stream = c.generate(request(2000, 4)).await.unwrap().into_inner();
    assert_eq!(tokens_to_the_end(&mut stream).await, 4);
    d.shutdown();
}
