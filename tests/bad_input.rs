//! Bad input never panics and always gets a clear error: property tests with arbitrary
//! bytes and mutated valid files for the trace readers, the catalogue, fleet and daemon
//! config loaders, and request validation; and over real gRPC, oversized messages, absurd
//! `max_tokens`, empty and non-UTF-8 text, unknown enum values, and 2,000 tiny concurrent
//! streams opened and dropped, after which the daemon still serves and holds nothing.

mod serve_support;

use dujiang::fleet::FleetSpec;
use dujiang::profile::Catalogue;
use dujiang::serve::{Daemon, ServeConfig, ServeError, DEFAULT_CONFIG_TOML, MAX_REQUEST_BYTES};
use dujiang::trace::{Format, TraceReader};
use dujiang::wire::{self, inference_client::InferenceClient};
use proptest::prelude::*;
use serve_support::*;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tonic::Code;

const CHIPS: &str = include_str!("../config/chips.toml");
const MODELS: &str = include_str!("../config/models.toml");
const FLEET: &str = include_str!("data/serve_four_h20.toml");
const AZURE: &str = include_str!("data/azure-llm-2024-handmade.csv");
const BURSTGPT: &str = include_str!("data/burstgpt-handmade-v1.1.csv");
const MOONCAKE: &str = include_str!("data/mooncake-synthetic-head200.jsonl");

const FORMATS: [Format; 5] = [
    Format::Auto,
    Format::Azure,
    Format::BurstGpt,
    Format::Mooncake,
    Format::Jsonl,
];

/// `valid` with the byte range [at, at+len) replaced by `junk` (positions taken modulo the
/// length, so any generated numbers apply): mostly-valid input reaches deeper than noise.
fn mutate(valid: &str, at: usize, len: usize, junk: &[u8]) -> Vec<u8> {
    let b = valid.as_bytes();
    let at = at % (b.len() + 1);
    let end = (at + len).min(b.len());
    let mut out = b[..at].to_vec();
    out.extend_from_slice(junk);
    out.extend_from_slice(&b[end..]);
    out
}

/// Reads a whole trace; every error names the trace.
fn read_all(bytes: &[u8], format: Format) {
    let reader = TraceReader::new(std::io::Cursor::new(bytes), "fuzz.trace", format);
    for item in reader.take(10_000) {
        if let Err(e) = item {
            let msg = e.to_string();
            assert!(msg.starts_with("fuzz.trace"), "error names the file: {msg}");
            assert!(msg.len() > "fuzz.trace".len() + 2, "error says why: {msg}");
        }
    }
}

fn check_config_error(e: impl std::fmt::Display, file: &str) {
    let msg = e.to_string();
    assert!(msg.starts_with(file), "error names the file: {msg}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn trace_readers_take_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048), f in 0usize..5) {
        read_all(&bytes, FORMATS[f]);
    }

    #[test]
    fn trace_readers_take_mutated_traces(
        which in 0usize..3, at in any::<usize>(), len in 0usize..64,
        junk in proptest::collection::vec(any::<u8>(), 0..64), f in 0usize..5,
    ) {
        let valid = [AZURE, BURSTGPT, MOONCAKE][which];
        read_all(&mutate(valid, at, len, &junk), FORMATS[f]);
    }

    #[test]
    fn config_loaders_take_arbitrary_text(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = ServeConfig::parse(&text, "serve.toml") { check_config_error(e, "serve.toml"); }
        if let Err(e) = FleetSpec::parse(&text, "fleet.toml") { check_config_error(e, "fleet.toml"); }
        if let Err(e) = Catalogue::parse(&text, "chips.toml", MODELS, "models.toml") { check_config_error(e, "chips.toml"); }
        if let Err(e) = Catalogue::parse(CHIPS, "chips.toml", &text, "models.toml") { check_config_error(e, "models.toml"); }
    }

    #[test]
    fn config_loaders_take_mutated_files(
        which in 0usize..4, at in any::<usize>(), len in 0usize..32,
        junk in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let valid = [DEFAULT_CONFIG_TOML, FLEET, CHIPS, MODELS][which];
        let bytes = mutate(valid, at, len, &junk);
        let text = String::from_utf8_lossy(&bytes);
        match which {
            0 => if let Err(e) = ServeConfig::parse(&text, "serve.toml") { check_config_error(e, "serve.toml") },
            1 => match FleetSpec::parse(&text, "fleet.toml") {
                Ok(spec) => { let _ = spec.resolve(&Catalogue::embedded()); }
                Err(e) => check_config_error(e, "fleet.toml"),
            },
            2 => if let Err(e) = Catalogue::parse(&text, "chips.toml", MODELS, "models.toml") { check_config_error(e, "chips.toml") },
            _ => if let Err(e) = Catalogue::parse(CHIPS, "chips.toml", &text, "models.toml") { check_config_error(e, "models.toml") },
        }
    }

    #[test]
    fn request_validation_takes_arbitrary_requests(req in arbitrary_request()) {
        let (rt, daemon) = validation_daemon();
        match rt.block_on(daemon.submit(req, Instant::now(), None)) {
            // Accepted requests run to their end on the daemon; nothing to check here.
            Ok(_) => {}
            Err(ServeError::InvalidArgument { field, message, .. }) => {
                prop_assert!(
                    ["model", "messages", "prompt", "prompt_tokens", "max_tokens", "priority", "prefix_hashes", "request_id"].contains(&field),
                    "{field}"
                );
                prop_assert!(!message.is_empty());
            }
            Err(ServeError::Shed { .. } | ServeError::Unavailable(_)) => {}
            Err(other) => prop_assert!(false, "unexpected refusal: {other:?}"),
        }
    }
}

fn arbitrary_request() -> impl Strategy<Value = wire::GenerateRequest> {
    let text = prop_oneof![Just(String::new()), ".{0,64}", "[a-z ]{0,3000}"];
    let model = prop_oneof![
        Just(String::new()),
        Just("llama-3-8b".to_string()),
        Just("qwen3-8b".to_string()),
        ".{0,16}"
    ];
    let messages = proptest::collection::vec(
        (".{0,8}", text.clone()).prop_map(|(role, content)| wire::ChatMessage { role, content }),
        0..3,
    );
    let slo = proptest::option::of(
        (any::<u64>(), any::<u64>()).prop_map(|(ttft_ms, tpot_ms)| wire::Slo { ttft_ms, tpot_ms }),
    );
    (
        (".{0,16}", model, messages, text),
        (
            proptest::option::of(prop_oneof![0u32..10_000, any::<u32>()]),
            prop_oneof![0u32..10_000, any::<u32>()],
            prop_oneof![-2i32..4, any::<i32>()],
            slo,
            proptest::collection::vec(any::<u64>(), 0..40),
            proptest::option::of(any::<u64>()),
        ),
    )
        .prop_map(
            |(
                (request_id, model, messages, prompt),
                (prompt_tokens, max_tokens, priority, slo, prefix_hashes, session_id),
            )| wire::GenerateRequest {
                request_id,
                model,
                messages,
                prompt,
                prompt_tokens,
                max_tokens,
                priority,
                slo,
                prefix_hashes,
                session_id,
            },
        )
}

/// One daemon for all validation cases (no listeners: `submit` is the request path the
/// gRPC handlers call).
fn validation_daemon() -> &'static (tokio::runtime::Runtime, Arc<Daemon>) {
    static D: OnceLock<(tokio::runtime::Runtime, Arc<Daemon>)> = OnceLock::new();
    D.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let cfg = ServeConfig {
            time_scale: 1000.0,
            fleet: data("serve_four_h20.toml"),
            ..ServeConfig::default()
        };
        let daemon = rt.block_on(async { Daemon::start(&cfg, None, None).unwrap() });
        (rt, daemon)
    })
}

/// A request message with `prompt` as raw bytes: the only way to put non-UTF-8 on the
/// wire where the schema says `string`.
#[derive(Clone, PartialEq, prost::Message)]
struct RawGenerateRequest {
    #[prost(bytes = "vec", tag = "4")]
    prompt: Vec<u8>,
    #[prost(uint32, tag = "6")]
    max_tokens: u32,
}

async fn raw_generate(
    addr: std::net::SocketAddr,
    prompt: Vec<u8>,
) -> Result<tonic::Streaming<wire::GenerateResponse>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel(addr).await);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<RawGenerateRequest, wire::GenerateResponse>::default();
    grpc.server_streaming(
        tonic::Request::new(RawGenerateRequest {
            prompt,
            max_tokens: 5,
        }),
        tonic::codegen::http::uri::PathAndQuery::from_static("/dujiang.v1.Inference/Generate"),
        codec,
    )
    .await
    .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_get_clear_statuses_and_harm_nothing() {
    let d = start(ServeConfig {
        time_scale: 50.0,
        fleet: data("serve_four_h20.toml"),
        ..config()
    })
    .await;
    let mut c = inference(d.grpc_addr).await;
    let refuse = async |c: &mut InferenceClient<_>, req: wire::GenerateRequest| {
        c.generate(req).await.expect_err("refused")
    };

    // Over the data plane's message limit (3 MiB, under tonic's default of 4 MiB):
    // refused by the transport, before anything is decoded.
    let huge = wire::GenerateRequest {
        prompt: "x".repeat(MAX_REQUEST_BYTES),
        ..request(10, 10)
    };
    let s = refuse(&mut c, huge).await;
    assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
    assert!(
        s.message().contains(&MAX_REQUEST_BYTES.to_string()),
        "the refusal names the limit: {s:?}"
    );
    // A prompt filling the longest context at 16 bytes a token fits the limit: it is
    // decoded and validated (here against a model with an 8,192-token context).
    let long = wire::GenerateRequest {
        prompt: "\u{6c34}".repeat((131_072 * 16) / 3),
        prompt_tokens: None,
        ..request(10, 10)
    };
    let s = refuse(&mut c, long).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().starts_with("prompt:"), "{s:?}");
    for (req, field) in [
        (request(100, u32::MAX), "max_tokens:"),
        (request(u32::MAX, 10), "prompt:"),
        (
            wire::GenerateRequest {
                priority: 7,
                ..request(10, 10)
            },
            "priority:",
        ),
        (
            wire::GenerateRequest {
                prompt: String::new(),
                prompt_tokens: None,
                ..request(10, 10)
            },
            "messages:",
        ),
    ] {
        let s = refuse(&mut c, req).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().starts_with(field), "{field} {s:?}");
    }
    // Non-UTF-8 where the schema says string: a decode error naming the field.
    let s = raw_generate(d.grpc_addr, vec![0xff, 0xfe, b'a', 0xc3])
        .await
        .expect_err("non-UTF-8 refused");
    assert!(
        matches!(s.code(), Code::Internal | Code::InvalidArgument),
        "{s:?}"
    );
    assert!(s.message().contains("UTF-8"), "{s:?}");
    // The same raw path with valid text works, so the refusal was about the bytes.
    let mut ok = raw_generate(d.grpc_addr, b"hello weir".to_vec())
        .await
        .unwrap();
    let mut tokens = 0;
    while let Some(m) = ok.message().await.unwrap() {
        if let Some(wire::generate_response::Event::Tokens(t)) = m.event {
            tokens += t.count;
        }
    }
    assert_eq!(tokens, 5);
    // Nothing was accepted but the valid one, and it finished.
    let stats = admin(d.admin_addr)
        .await
        .get_stats(wire::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.outcomes["ok"], 1);
    d.shutdown();
    d.wait().await.unwrap();
}

/// How many streams the open-and-drop test opens at once.
const TINY_STREAMS: usize = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_tiny_streams_opened_and_dropped_leave_nothing_behind() {
    let d = start(ServeConfig {
        time_scale: 1.0,
        fleet: data("serve_four_h20.toml"),
        ..config()
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(inference(d.grpc_addr).await);
    }
    let tasks: Vec<_> = (0..TINY_STREAMS)
        .map(|i| {
            let mut c = clients[i % clients.len()].clone();
            tokio::spawn(async move {
                match c.generate(request(8, 500)).await {
                    Ok(r) => {
                        let mut s = r.into_inner();
                        // Half read one message first; all hang up long before the end.
                        if i % 2 == 0 {
                            let _ = s.message().await;
                        }
                        true
                    }
                    Err(_) => false,
                }
            })
        })
        .collect();
    let mut accepted = 0u64;
    for t in tasks {
        accepted += u64::from(t.await.unwrap());
    }
    assert!(accepted > 0);
    let mut a = admin(d.admin_addr).await;
    assert!(
        eventually(Duration::from_secs(10), async || {
            a.get_stats(wire::GetStatsRequest {})
                .await
                .unwrap()
                .into_inner()
                .in_flight
                == 0
        })
        .await,
        "every dropped stream is ended"
    );
    let stats = a
        .get_stats(wire::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.accepted, accepted);
    assert_eq!(stats.outcomes["cancelled"], accepted);
    let addr = d.http_addr;
    assert!(
        eventually(Duration::from_secs(5), async || {
            let text = http_get(addr, "/metrics").await.1;
            metric_sum(&text, "dujiang_backend_kv_usage_ratio") == 0.0
                && metric_sum(&text, "dujiang_backend_running_requests") == 0.0
        })
        .await,
        "KV freed"
    );
    // Still serving.
    let seen = generate(&mut clients[0], tonic::Request::new(request(10, 3))).await;
    assert_eq!(seen.tokens, 3, "{:?}", seen.status);
    d.shutdown();
    d.wait().await.unwrap();
}

/// Text without a token count is measured by script: a Chinese prompt longer than the
/// model's context (llama-3-8b, 8,192) is refused, where four characters per token counted
/// it at a quarter of its length and accepted it; English of the same character count fits.
#[test]
fn chinese_text_is_counted_by_character_against_the_context() {
    let (rt, daemon) = validation_daemon();
    let ask = |prompt: String| wire::GenerateRequest {
        model: "llama-3-8b".into(),
        prompt,
        max_tokens: 8,
        ..Default::default()
    };
    let chinese = "都江堰分水鱼嘴".repeat(1_200); // 8,400 characters
    match rt.block_on(daemon.submit(ask(chinese), Instant::now(), None)) {
        Err(ServeError::InvalidArgument { message, .. }) => {
            assert!(
                message.contains("8400") || message.contains("8,400"),
                "{message}"
            )
        }
        Err(e) => panic!("refused for another reason: {e:?}"),
        Ok(_) => panic!("an 8,400-character Chinese prompt fits an 8,192-token context"),
    }
    let english = "weirdams".repeat(1_050); // 8,400 characters, ~2,100 tokens
    assert!(
        rt.block_on(daemon.submit(ask(english), Instant::now(), None))
            .is_ok(),
        "English of the same length fits"
    );
}

/// Admin `InjectSlowdown` takes only factors ≥ 1 (a slowdown never speeds a backend up; 1e-12
/// overflowed its clock), over real gRPC on the admin port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_slowdown_below_one_is_refused() {
    let d = start(config()).await;
    let mut a = admin(d.admin_addr).await;
    let slow = |factor: f64| wire::InjectFaultRequest {
        backend: "h20-0".into(),
        fault: Some(wire::inject_fault_request::Fault::Slowdown(factor)),
    };
    for bad in [1e-12, 0.5, 0.0, -3.0, f64::INFINITY, 1e7] {
        let e = a.inject_fault(slow(bad)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
        assert!(
            e.message().contains("slowdown factor from 1"),
            "{bad}: {}",
            e.message()
        );
    }
    let ok = a.inject_fault(slow(2.0)).await.unwrap().into_inner();
    assert_eq!(ok.slowdown, 2.0);
    d.shutdown();
    d.wait().await.unwrap();
}
