//! `dujiang load --api openai` against stand-in OpenAI-compatible servers on loopback that
//! stream as vLLM, SGLang and llama.cpp's server do: every flavour of stream is timed and
//! counted alike, refusals, error events, broken, cut and hanging streams and refused
//! connections are each counted by their status (never a panic), a refused request is
//! sent again after its Retry-After when asked, and the request carries what the issue
//! asks (model from /v1/models, max_tokens = the trace's output, ignore_eos, usage asked).

mod load_support;

use dujiang::loadgen::{self, Api, Endpoint, LoadConfig, LoadReport, OpenAiOptions};
use dujiang::trace::TraceRecord;
use load_support::ok_records;
use load_support::openai_stub::*;
use std::time::Duration;

const TTFT: Duration = Duration::from_millis(40);
const GAP: Duration = Duration::from_millis(5);

fn config(addr: std::net::SocketAddr, opts: OpenAiOptions) -> LoadConfig {
    LoadConfig {
        target: format!("http://{addr}"),
        api: Api::OpenAi(opts),
        admin_target: None,
        ..LoadConfig::default()
    }
}

/// `n` requests 20 ms apart with `prompt` tokens and `output` output tokens.
fn records(n: u64, prompt: u32, output: u32) -> Vec<TraceRecord> {
    (0..n)
        .map(|i| TraceRecord {
            arrival_ns: i * 20_000_000,
            prompt_tokens: prompt,
            output_tokens: output,
            ..TraceRecord::default()
        })
        .collect()
}

async fn run(cfg: LoadConfig, recs: Vec<TraceRecord>) -> LoadReport {
    loadgen::run(cfg, ok_records(recs)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flavour_of_stream_is_timed_and_counted_alike() {
    for flavour in [
        Flavour::Vllm,
        Flavour::Sglang,
        Flavour::LlamaCpp,
        Flavour::TwoTokensAChunk,
    ] {
        for endpoint in [Endpoint::Chat, Endpoint::Completions] {
            let stub = start_openai_stub(flavour, TTFT, GAP).await;
            let opts = OpenAiOptions {
                endpoint,
                ..OpenAiOptions::default()
            };
            let report = run(config(stub.addr, opts), records(20, 64, 9)).await;
            let what = format!("{flavour:?} {endpoint:?}");
            let stats = &report.report.policies[0].stats;
            let load = &report.load;
            assert_eq!(load.api, "openai");
            assert_eq!(
                (stats.requests, stats.completed),
                (20, 20),
                "{what}: {load:?}"
            );
            assert_eq!(load.status_codes.get("ok"), Some(&20), "{what}");
            assert_eq!(load.short_outputs, 0, "{what}: 9 tokens each");
            // Usage: absent from llama.cpp, differing from the chunk count where a chunk
            // holds two tokens (the report then counts usage's 9), equal otherwise.
            let (missing, differs) = match flavour {
                Flavour::LlamaCpp => (20, 0),
                Flavour::TwoTokensAChunk => (0, 20),
                _ => (0, 0),
            };
            assert_eq!(
                (load.usage_missing, load.usage_differs),
                (missing, differs),
                "{what}"
            );
            // TTFT is the first chunk with text, not vLLM's role-only chunk that comes at
            // once: at least the stub's 40 ms.
            let ttft = &stats.ttft_ms;
            assert!(
                ttft.p50 >= 40.0 && ttft.p50 < 140.0,
                "{what}: TTFT p50 {}",
                ttft.p50
            );
            // 9 tokens, 5 ms apart: TPOT ≥ 5 ms. With two tokens a chunk the chunks come
            // 10 ms apart (the last holds one: 35 ms from the first chunk to the last), so
            // TPOT is 35 / 8 = 4.4 ms when tokens are counted from usage as they must be,
            // and 35 / 4 = 8.8 ms if chunks were taken for tokens.
            let tpot = stats.tpot_ms.p50;
            let (lo, hi) = match flavour {
                Flavour::TwoTokensAChunk => (4.0, 7.5),
                _ => (4.5, 40.0),
            };
            assert!(tpot >= lo && tpot < hi, "{what}: TPOT p50 {tpot}");
            let e2e = &stats.e2e_ms;
            assert!(e2e.p50 >= 40.0 + 8.0 * 4.5, "{what}: E2E p50 {}", e2e.p50);
            // What the client sent.
            let seen = stub.seen.lock().clone();
            assert_eq!(seen.len(), 20);
            let s = &seen[0];
            let path = match endpoint {
                Endpoint::Chat => "/v1/chat/completions",
                Endpoint::Completions => "/v1/completions",
            };
            assert_eq!(s.path, path);
            assert_eq!(s.body["model"], "stub-model", "the first of /v1/models");
            assert_eq!(s.body["max_tokens"], 9);
            assert_eq!(s.body["stream"], true);
            assert_eq!(s.body["ignore_eos"], true);
            assert_eq!(s.body["stream_options"]["include_usage"], true);
            assert_eq!(s.headers["x-dujiang-priority"], "interactive");
            assert_eq!(s.headers["x-dujiang-prompt-tokens"], "64");
            assert!(s.headers.get("authorization").is_none());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_failures_and_timeouts_are_counted_by_status() {
    let stub = start_openai_stub(Flavour::Vllm, TTFT, GAP).await;
    let mut recs = Vec::new();
    for (i, prompt) in [
        64,
        PROMPT_429_ONCE,
        PROMPT_503,
        PROMPT_ERROR_EVENT,
        PROMPT_CUT,
        PROMPT_HANG,
        PROMPT_BREAK,
        PROMPT_EOS,
    ]
    .into_iter()
    .enumerate()
    {
        for k in 0..3u64 {
            recs.push(TraceRecord {
                arrival_ns: (i as u64 * 3 + k) * 10_000_000,
                prompt_tokens: prompt,
                output_tokens: 6,
                ..TraceRecord::default()
            });
        }
    }
    let opts = OpenAiOptions {
        model: Some("named".into()),
        api_key: Some("sk-test".into()),
        request_timeout: Duration::from_millis(800),
        ..OpenAiOptions::default()
    };
    let report = run(config(stub.addr, opts), recs).await;
    let load = &report.load;
    let codes: Vec<(&str, u64)> = load
        .status_codes
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        codes,
        [
            ("error_event", 3),
            ("http_429", 3),
            ("http_503", 3),
            ("incomplete_stream", 3),
            // 64-token prompts and the early end-of-sequence ones.
            ("ok", 6),
            ("stream_error", 3),
            ("timeout", 3),
        ],
        "{load:?}"
    );
    let stats = &report.report.policies[0].stats;
    assert_eq!(
        (stats.requests, stats.completed, stats.rejected),
        (24, 6, 18)
    );
    assert_eq!(stats.rejected_by_reason.get("http_429"), Some(&3));
    assert_eq!(stats.rejected_by_reason.get("timeout"), Some(&3));
    // The server that stopped at end-of-sequence is flagged, its latencies kept.
    assert_eq!(load.short_outputs, 3);
    assert_eq!(load.retried, 0);
    let seen = stub.seen.lock().clone();
    assert!(seen.iter().all(|s| s.body["model"] == "named"));
    assert!(seen
        .iter()
        .all(|s| s.headers["authorization"] == "Bearer sk-test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_is_sent_again_after_retry_after() {
    let stub = start_openai_stub(Flavour::Vllm, TTFT, GAP).await;
    let opts = OpenAiOptions {
        max_retries: 2,
        ..OpenAiOptions::default()
    };
    // Each request is refused once with `Retry-After: 0.2`, then served.
    let report = run(config(stub.addr, opts), records(5, PROMPT_429_ONCE, 4)).await;
    let stats = &report.report.policies[0].stats;
    assert_eq!(stats.completed, 5, "{:?}", report.load);
    assert_eq!(report.load.retried, 5);
    assert_eq!(stub.seen.lock().len(), 10);
    // Latency runs from the first send: it includes the 200 ms wait.
    assert!(stats.ttft_ms.p50 >= 200.0 + 40.0, "{:?}", stats.ttft_ms);
    // 503 with `Retry-After: 1` on every attempt: two retries, then counted as refused.
    let stub = start_openai_stub(Flavour::Vllm, TTFT, GAP).await;
    let opts = OpenAiOptions {
        max_retries: 2,
        ..OpenAiOptions::default()
    };
    let started = std::time::Instant::now();
    let report = run(config(stub.addr, opts), records(2, PROMPT_503, 4)).await;
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(report.load.status_codes.get("http_503"), Some(&2));
    assert_eq!(report.load.retried, 4);
    assert_eq!(stub.seen.lock().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_not_there_is_a_clear_error_or_counted_failures() {
    // A port nobody listens on: found free, then closed.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // Without --model the model list is asked first: a clear error, naming the URL.
    let err = loadgen::run(
        config(addr, OpenAiOptions::default()),
        ok_records(records(3, 64, 4)),
    )
    .await
    .unwrap_err();
    let msg = format!("{err:#}");
    // Not "give --model": with one, every request fails to connect the same way.
    assert!(
        msg.starts_with(&format!(
            "cannot connect to http://{addr}/v1 (GET http://{addr}/v1/models); is the server running there?"
        )) && !msg.contains("--model"),
        "{msg}"
    );
    // With a model every request is sent, and each refused connection is counted.
    let opts = OpenAiOptions {
        model: Some("m".into()),
        ..OpenAiOptions::default()
    };
    let report = run(config(addr, opts), records(3, 64, 4)).await;
    assert_eq!(report.load.status_codes.get("connect_error"), Some(&3));
    assert_eq!(report.report.policies[0].stats.completed, 0);
}

/// Through the binary, a target nobody listens on fails the command (the report is still
/// written): every request failing to connect is not a load test's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_fails_when_no_request_could_connect() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = std::env::temp_dir().join(format!("dujiang-load-refused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("t.jsonl");
    std::fs::write(
        &trace,
        "{\"arrival_ms\": 0, \"input_tokens\": 64, \"output_tokens\": 8}\n{\"arrival_ms\": 5, \"input_tokens\": 64, \"output_tokens\": 8}\n",
    )
    .unwrap();
    let json = dir.join("load.json");
    let target = format!("http://{addr}");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dujiang"))
        .args([
            "load",
            "--target",
            &target,
            "--model",
            "m",
            "--progress",
            "off",
        ])
        .arg("--trace")
        .arg(&trace)
        .arg("--json")
        .arg(&json)
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "no request reached {target}: all 2 failed to connect; is the server running there?"
        )),
        "{err}"
    );
    assert!(json.exists(), "the report is still written");
    std::fs::remove_dir_all(&dir).ok();
}

/// A trace with no request is refused before anything is sent (it was "sent 0 of 0",
/// exit 0), and lines skipped under --skip-bad-lines are said, as replay says them.
#[test]
fn the_cli_refuses_an_empty_trace_and_says_what_it_skipped() {
    let dir = std::env::temp_dir().join(format!("dujiang-load-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let broken = dir.join("broken.jsonl");
    std::fs::write(
        &broken,
        "{\"arrival_ms\": 0, \"input_tokens\": 64, \"output_tokens\": 8}\n{\"arrival_ms\": 5}\n",
    )
    .unwrap();
    let load = |trace: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_dujiang"))
            .args(["load", "--target", "http://127.0.0.1:1", "--model", "m"])
            .args(["--progress", "off", "--skip-bad-lines", "--trace"])
            .arg(trace)
            .output()
            .unwrap()
    };
    let out = load(&empty);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("empty.jsonl: holds no request: the trace is empty"),
        "{err}"
    );
    let err = String::from_utf8_lossy(&load(&broken).stderr).into_owned();
    assert!(
        err.contains("broken.jsonl: skipped 1 broken line(s) (--skip-bad-lines); the first: ")
            && err.contains("broken.jsonl:2:"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Through the binary: `--api auto` takes a non-50051 http target for OpenAI, and the
/// JSON report has a replay's keys (plus `load`), so `dujiang compare` lines them up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_takes_an_http_target_for_openai_and_writes_a_replays_report() {
    let stub = start_openai_stub(Flavour::Vllm, TTFT, GAP).await;
    let dir = std::env::temp_dir().join(format!("dujiang-load-openai-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("t.jsonl");
    let lines: String = (0..15)
        .map(|i| {
            format!(
                "{{\"arrival_ms\": {}, \"input_tokens\": 64, \"output_tokens\": 8}}\n",
                i * 30
            )
        })
        .collect();
    std::fs::write(&trace, lines).unwrap();
    let (load_json, replay_json) = (dir.join("load.json"), dir.join("replay.json"));
    let bin = env!("CARGO_BIN_EXE_dujiang");
    let target = format!("http://{}", stub.addr);
    let stdout = run_ok(
        tokio::process::Command::new(bin)
            .args(["load", "--target", &target, "--progress", "off", "--trace"])
            .arg(&trace)
            .arg("--json")
            .arg(&load_json),
    )
    .await;
    assert!(stdout.contains("status codes: ok 15"), "{stdout}");
    run_ok(
        tokio::process::Command::new(bin)
            .args(["replay", "--trace"])
            .arg(&trace)
            .arg("--json")
            .arg(&replay_json),
    )
    .await;
    let read = |p: &std::path::Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let (load, replay) = (read(&load_json), read(&replay_json));
    assert_eq!(load["load"]["api"], "openai");
    assert_eq!(load["source"], "load");
    assert_eq!(
        load["fleet"],
        format!("OpenAI server at {target} (model stub-model)")
    );
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let mut replay_top = keys(&replay);
    replay_top.push("load".into());
    replay_top.sort();
    assert_eq!(keys(&load), replay_top);
    let (lp, rp) = (&load["policies"][0], &replay["policies"][0]);
    assert_eq!(keys(lp), keys(rp));
    assert_eq!(keys(&lp["ttft_ms"]), keys(&rp["ttft_ms"]));
    assert_eq!(lp["completed"], 15);
    let compared = run_ok(
        tokio::process::Command::new(bin)
            .arg("compare")
            .arg(&replay_json)
            .arg(&load_json),
    )
    .await;
    assert!(compared.contains("TTFT p50"));
    std::fs::remove_dir_all(&dir).ok();
}

/// Runs a command to success; its standard output.
async fn run_ok(cmd: &mut tokio::process::Command) -> String {
    let out = cmd.output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
