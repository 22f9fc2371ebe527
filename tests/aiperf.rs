//! NVIDIA AIPerf, the load tester that succeeded genai-perf, unmodified (pinned in test.sh,
//! installed into $DUJIANG_CACHE/aiperf-venv) profiles `dujiang serve`'s OpenAI port over
//! loopback: 32 streaming chat requests at concurrency 4, 16 output tokens each
//! (`max_completion_tokens`, with `ignore_eos` as load testers send it). The test reads
//! AIPerf's own JSON export: every request completed without an error, each with exactly 16
//! output tokens by AIPerf's count and by the usage it parsed, and TTFT and inter-token
//! latency that agree with what the daemon measured itself (its /metrics, which AIPerf
//! also scrapes at its default place, the OpenAI port's `/metrics`, must count the same 32
//! requests).
//!
//! Nothing is downloaded while it runs: AIPerf's tokenizer is one the test writes
//! (tests/python/make_tiny_tokenizer.py) into a HuggingFace cache of its own, and
//! `HF_HUB_OFFLINE=1` makes any hub access fail at once instead of hanging. The venv
//! comes from `./test.sh` (which exports `DUJIANG_AIPERF_PYTHON`); under a plain
//! `cargo test` the test makes it itself through `./test.sh --setup aiperf-venv`, and fails,
//! naming the command, if that cannot be done. Nothing is skipped.

mod serve_support;
mod venv_support;

use dujiang::serve::ServeConfig;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const REQUESTS: u64 = 32;
const CONCURRENCY: u64 = 4;
const OUTPUT_TOKENS: u64 = 16;
const INPUT_TOKENS: u64 = 64;
/// AIPerf's own limit (coreutils `timeout`, which signals AIPerf's whole process group, so
/// its worker processes go too); it needs ~15 s of start-up and a few seconds of load.
const AIPERF_LIMIT_S: u64 = 180;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The AIPerf venv's python.
fn python() -> PathBuf {
    venv_support::python("DUJIANG_AIPERF_PYTHON", "aiperf-venv")
}

/// A scratch directory (AIPerf's artifacts, the tokenizer's cache, AIPerf's temporary
/// files), removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `export[metric][stat]` as a number, or a panic naming it.
fn stat(export: &Value, metric: &str, stat: &str) -> f64 {
    export[metric][stat]
        .as_f64()
        .unwrap_or_else(|| panic!("AIPerf's export has no {metric}.{stat}: {}", export[metric]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiperf_profiles_streaming_chat_and_agrees_with_the_daemon() {
    let python = python();
    let aiperf = python.with_file_name("aiperf");
    let scratch =
        Scratch(std::env::temp_dir().join(format!("dujiang-aiperf-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&scratch.0);
    std::fs::create_dir_all(scratch.0.join("tmp")).unwrap();
    let hf_home = scratch.0.join("hf");
    let artifacts = scratch.0.join("artifacts");

    // The tokenizer, as the cached snapshot of a repo that exists only here.
    let out = std::process::Command::new(&python)
        .arg(repo("tests/python/make_tiny_tokenizer.py"))
        .arg(&hf_home)
        .output()
        .expect("running make_tiny_tokenizer.py");
    assert!(
        out.status.success(),
        "make_tiny_tokenizer.py failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let tokenizer = String::from_utf8_lossy(&out.stdout).trim().to_string();

    // Time scale 1: simulated seconds are wall seconds, so AIPerf's latencies and the
    // daemon's can be compared.
    let (d, rt) = serve_support::start_apart(ServeConfig {
        time_scale: 1.0,
        ..serve_support::config()
    })
    .await;
    let (openai, http) = (d.openai_addr, d.http_addr);

    let started = Instant::now();
    let mut cmd = tokio::process::Command::new("timeout");
    cmd.args(["-k", "10", &AIPERF_LIMIT_S.to_string()])
        .arg(&aiperf)
        .args(["profile", "--model", "llama-3-8b"])
        .args(["--url", &format!("http://{openai}")])
        .args(["--endpoint-type", "chat", "--streaming"])
        .args(["--tokenizer", &tokenizer])
        .args(["--request-count", &REQUESTS.to_string()])
        .args(["--concurrency", &CONCURRENCY.to_string()])
        .args(["--isl", &INPUT_TOKENS.to_string()])
        .args(["--osl", &OUTPUT_TOKENS.to_string()])
        .args(["--extra-inputs", "ignore_eos:true"])
        .args(["--random-seed", "7"])
        // No `--server-metrics`: AIPerf scrapes `<url>/metrics` by default, as vLLM serves
        // it, and so does the daemon's OpenAI port.
        .args(["--no-gpu-telemetry", "--ui-type", "none"])
        .arg("--artifact-dir")
        .arg(&artifacts)
        .current_dir(&scratch.0)
        .env("HF_HOME", &hf_home)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("TMPDIR", scratch.0.join("tmp"))
        .env("NO_COLOR", "1")
        .env("COLUMNS", "160")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(AIPERF_LIMIT_S + 30), cmd.output())
        .await
        .expect("AIPerf finishes")
        .expect("timeout and AIPerf run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "AIPerf ran {:.1} s:\n{stdout}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "AIPerf failed ({}):\n{stdout}\n{stderr}",
        out.status
    );

    let path = artifacts.join("profile_export_aiperf.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}\n{stdout}\n{stderr}", path.display()));
    let export: Value = serde_json::from_str(&text).expect("AIPerf's export is JSON");
    let n = REQUESTS as f64;

    // Every request sent, finished and none an error.
    assert_eq!(export["error_summary"], serde_json::json!([]), "{text}");
    assert_eq!(export["was_cancelled"], false, "{text}");
    assert_eq!(stat(&export, "request_count", "avg"), n, "successes");
    assert_eq!(stat(&export, "completed_request_count", "avg"), n);
    assert_eq!(stat(&export, "request_error_rate", "avg"), 0.0);

    // Exactly the output asked for: AIPerf's count of the streamed text (its tokenizer
    // makes one token of each word the daemon streams), the usage it parsed, and the
    // prompt lengths it synthesized.
    for metric in ["output_sequence_length", "usage_completion_tokens"] {
        assert_eq!(
            stat(&export, metric, "min"),
            OUTPUT_TOKENS as f64,
            "{metric}"
        );
        assert_eq!(
            stat(&export, metric, "max"),
            OUTPUT_TOKENS as f64,
            "{metric}"
        );
        assert_eq!(stat(&export, metric, "count"), n, "{metric}");
    }
    assert_eq!(stat(&export, "total_osl", "avg"), n * OUTPUT_TOKENS as f64);
    assert_eq!(
        stat(&export, "input_sequence_length", "avg"),
        INPUT_TOKENS as f64
    );

    // Latencies AIPerf measured, in ms, for every request. A request's second token may
    // share a read with its first when the machine is busy (AIPerf then counts 0 ms), so
    // only the median of that is bounded; the per-request mean gap cannot be 0 unless the
    // whole stream came at once.
    for metric in [
        "time_to_first_token",
        "time_to_second_token",
        "inter_token_latency",
    ] {
        assert_eq!(stat(&export, metric, "count"), n, "{metric}");
    }
    for (metric, s) in [
        ("time_to_first_token", "min"),
        ("time_to_second_token", "p50"),
        ("inter_token_latency", "min"),
    ] {
        assert!(
            stat(&export, metric, s) > 0.0,
            "{metric}.{s}: {}",
            export[metric]
        );
    }
    let ttft_ms = stat(&export, "time_to_first_token", "avg");
    let itl_ms = stat(&export, "inter_token_latency", "avg");

    // The daemon's own account: the same requests and tokens, and latencies a client can
    // only see later, not earlier, than the daemon produced them.
    let (_, scrape) = serve_support::http_get(http, "/metrics").await;
    let series = |name: &str, labels: &str| -> f64 {
        scrape
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{name}{{{labels}}} "))?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{scrape}"))
    };
    assert_eq!(
        series("dujiang_requests_accepted_total", "frontend=\"openai\""),
        n
    );
    assert_eq!(
        series(
            "dujiang_requests_total",
            "outcome=\"ok\",frontend=\"openai\""
        ),
        n
    );
    assert_eq!(
        serve_support::metric_sum(&scrape, "dujiang_generated_tokens_total"),
        n * OUTPUT_TOKENS as f64
    );
    let mean_ms = |name: &str| {
        1e3 * serve_support::metric_sum(&scrape, &format!("{name}_sum"))
            / serve_support::metric_sum(&scrape, &format!("{name}_count"))
    };
    let (daemon_ttft_ms, daemon_itl_ms) = (
        mean_ms("dujiang_ttft_seconds"),
        mean_ms("dujiang_inter_token_seconds"),
    );
    eprintln!(
        "TTFT: AIPerf {ttft_ms:.1} ms, daemon {daemon_ttft_ms:.1} ms; inter-token: AIPerf \
         {itl_ms:.2} ms, daemon {daemon_itl_ms:.2} ms"
    );
    assert!(
        ttft_ms >= 0.8 * daemon_ttft_ms && ttft_ms <= daemon_ttft_ms + 1_000.0,
        "AIPerf's TTFT {ttft_ms:.1} ms against the daemon's {daemon_ttft_ms:.1} ms"
    );
    assert!(
        itl_ms >= 0.8 * daemon_itl_ms && itl_ms <= 3.0 * daemon_itl_ms,
        "AIPerf's inter-token latency {itl_ms:.2} ms against the daemon's {daemon_itl_ms:.2} ms"
    );

    // AIPerf's own scrape of the OpenAI port's /metrics saw the same requests.
    let path = artifacts.join("server_metrics_export.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let server: Value =
        serde_json::from_str(&text).expect("AIPerf's server-metrics export is JSON");
    let accepted = server["metrics"]["dujiang_requests_accepted"]["series"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["labels"]["frontend"] == "openai"))
        .unwrap_or_else(|| panic!("no dujiang_requests_accepted{{frontend=openai}}: {text}"));
    assert_eq!(accepted["stats"]["total"].as_f64(), Some(n), "{accepted}");

    d.shutdown();
    rt.spawn(d.wait()).await.unwrap().unwrap();
    rt.shutdown_background();
}
