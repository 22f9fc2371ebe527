//! The official `openai` Python SDK, unmodified (pinned in test.sh, installed into
//! $DUJIANG_CACHE/venv), drives `dujiang serve`'s OpenAI port over loopback: a streaming
//! chat with `include_usage` whose usage equals the tokens streamed, completions streamed
//! and not, `models.list()`, and a 429 the SDK retries after the daemon's Retry-After.
//! The SDK calls run in tests/python/sdk_client.py, which prints what the SDK returned and
//! every HTTP response it saw.
//!
//! The venv comes from `./test.sh` (which exports `DUJIANG_OPENAI_PYTHON`); under a plain
//! `cargo test` the test makes it itself through `./test.sh --setup openai-venv`, and
//! fails, naming the command, if that cannot be done. Nothing is skipped.

mod serve_support;
mod venv_support;

use dujiang::serve::{RunningDaemon, ServeConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One daemon at a time: the SDK's Python start-up and the daemon share two cores.
static ONE_DAEMON: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The `openai` SDK venv's python.
fn python() -> PathBuf {
    venv_support::python("DUJIANG_OPENAI_PYTHON", "openai-venv")
}

/// Runs one SDK call against `addr`; returns whether it succeeded and what it printed.
async fn sdk(addr: std::net::SocketAddr, args: &[&str]) -> (bool, serde_json::Value) {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(python())
            .arg(repo("tests/python/sdk_client.py"))
            .args(args)
            .args(["--base-url", &format!("http://{addr}/v1")])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the SDK call finishes within 2 minutes")
    .expect("the venv's python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "sdk_client.py {args:?} printed no JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), value)
}

async fn stop(d: RunningDaemon, rt: tokio::runtime::Runtime) {
    d.shutdown();
    rt.spawn(d.wait()).await.unwrap().unwrap();
    rt.shutdown_background();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_streams_completes_and_lists_models() {
    let _one = ONE_DAEMON.lock().await;
    let (d, rt) = serve_support::start_apart(ServeConfig {
        time_scale: 20.0,
        ..serve_support::config()
    })
    .await;
    let addr = d.openai_addr;

    // models.list(): the fleet's model, with the fields the SDK's Model has and `root`.
    let (ok, v) = sdk(addr, &["models"]).await;
    assert!(ok, "{v}");
    let m = &v["models"][0];
    assert_eq!(m["object"], "model", "{v}");
    assert!(m["id"].as_str().is_some_and(|id| !id.is_empty()), "{v}");
    assert!(m["created"].is_u64() && m["owned_by"].is_string(), "{v}");
    assert_eq!(m["root"], m["id"], "{v}");
    // models.retrieve(id): the same object.
    assert_eq!(&v["retrieved"], m, "{v}");

    // A streaming chat asking for usage: 24 content chunks, one token each, usage 24.
    let (ok, v) = sdk(addr, &["chat-stream", "--max-tokens", "24"]).await;
    assert!(ok, "{v}");
    assert_eq!(v["content_chunks"], 24, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 24, "{v}");
    assert_eq!(v["finish_reason"], "length", "{v}");
    assert_eq!(
        v["objects"],
        serde_json::json!(["chat.completion.chunk"]),
        "{v}"
    );
    let prompt = "Why does the Dujiangyan weir split the river?";
    assert_eq!(
        v["usage"]["prompt_tokens"],
        dujiang::tokens::estimate_chat_tokens([prompt]),
        "{v}"
    );

    // Completions, not streamed and streamed.
    let (ok, v) = sdk(addr, &["completions", "--max-tokens", "8"]).await;
    assert!(ok, "{v}");
    assert_eq!(v["object"], "text_completion", "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 8, "{v}");
    assert_eq!(
        v["usage"]["prompt_tokens"],
        dujiang::tokens::estimate_tokens(prompt)
    );
    assert!(v["text"].as_str().is_some_and(|t| !t.is_empty()), "{v}");
    let (ok, v) = sdk(addr, &["completions-stream", "--max-tokens", "8"]).await;
    assert!(ok, "{v}");
    assert_eq!(v["content_chunks"], 8, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 8, "{v}");
    assert_eq!(v["objects"], serde_json::json!(["text_completion"]), "{v}");
    // A non-streamed chat too.
    let (ok, v) = sdk(addr, &["chat", "--max-tokens", "5"]).await;
    assert!(ok, "{v}");
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 5, "{v}");
    stop(d, rt).await;
}

/// A daemon that admits one request at a time (`max_in_flight = 1`, Retry-After 1 s) is
/// kept busy by a gRPC stream; the SDK's chat gets 429 and, with `max_retries`, waits the
/// Retry-After and tries again. Once the daemon has shed it, the busy stream is cancelled,
/// so the next try succeeds: the SDK must return the answer, having seen 429s and then 200,
/// at least the Retry-After apart, and the daemon's shed counter must count each 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_retries_a_429_after_retry_after() {
    let _one = ONE_DAEMON.lock().await;
    let mut config = ServeConfig {
        time_scale: 1.0,
        ..serve_support::config()
    };
    config.admission.max_in_flight = 1;
    config.admission.retry_after_ms = 1_000;
    let (d, rt) = serve_support::start_apart(config).await;
    let (openai, http) = (d.openai_addr, d.http_addr);

    // The busy stream: thousands of tokens at time scale 1, started before the SDK runs.
    let mut client = serve_support::inference(d.grpc_addr).await;
    let mut busy = client
        .generate(serve_support::request(64, 4_000))
        .await
        .expect("the busy request is admitted")
        .into_inner();
    busy.message()
        .await
        .unwrap()
        .expect("the busy request starts");

    let shed_key = "dujiang_requests_shed_total{reason=\"queue_full\",frontend=\"openai\"}";
    let sheds = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(shed_key)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    let sdk_call = tokio::spawn(async move {
        sdk(
            openai,
            &["chat-stream", "--max-tokens", "4", "--max-retries", "6"],
        )
        .await
    });
    // Cancel the busy stream once the daemon has refused the SDK at least once.
    let refused = serve_support::eventually(Duration::from_secs(60), async || {
        let (_, text) = serve_support::http_get(http, "/metrics").await;
        sheds(&text) >= 1
    })
    .await;
    assert!(refused, "the SDK's request was never shed");
    drop(busy);
    let (ok, v) = sdk_call.await.unwrap();
    assert!(ok, "the SDK gave up: {v}");
    assert_eq!(v["content_chunks"], 4, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 4, "{v}");

    let posts: Vec<&serde_json::Value> = v["responses"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["method"] == "POST")
        .collect();
    let statuses: Vec<u64> = posts
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    eprintln!("the SDK's POSTs: {posts:?}");
    let (last, refusals) = statuses.split_last().unwrap();
    assert!(
        !refusals.is_empty() && refusals.iter().all(|s| *s == 429) && *last == 200,
        "the SDK should see 429s, then 200: {statuses:?}"
    );
    for r in &posts[..refusals.len()] {
        assert_eq!(r["retry_after"], "1", "{v}");
    }
    // Each retry came at least the Retry-After (1 s) after the refusal before it.
    for pair in posts.windows(2) {
        let gap = pair[1]["at"].as_f64().unwrap() - pair[0]["at"].as_f64().unwrap();
        assert!(gap >= 0.95, "retried {gap:.3} s after a 429: {v}");
    }
    let (_, text) = serve_support::http_get(http, "/metrics").await;
    assert_eq!(sheds(&text), refusals.len() as u64, "{text}");
    stop(d, rt).await;
}
