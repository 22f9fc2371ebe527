//! Reading real engines' load from their Prometheus `/metrics` (`dujiang::serve::scrape`):
//! text fixtures of vLLM, vLLM-Ascend, SGLang, MindIE and llama.cpp expositions, written from
//! each engine's documentation (each fixture's header names its source and the load it
//! holds), parsed into load; and scrapes over real HTTP on loopback: a server answering the
//! fixture, one that answers 404, one that accepts and never answers, a closed port. A
//! failed scrape is an error value naming the URL, never a panic or a hang past its timeout.

use dujiang::serve::scrape::{
    metrics_url, parse_exposition, scrape_once, MetricsDialect, ScrapeError, ScrapedLoad,
};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/metrics/{name}.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn load(running: f64, waiting: f64, kv: f64) -> ScrapedLoad {
    ScrapedLoad {
        running: Some(running),
        waiting: Some(waiting),
        kv_usage: Some(kv),
    }
}

/// The expected load each fixture's header states, parsed from that header so the fixture
/// and the test cannot drift apart silently.
fn expected_from_header(text: &str) -> ScrapedLoad {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("# Expected load: "))
        .expect("fixture states its expected load");
    let figure = |key: &str| -> f64 {
        let at = line
            .find(key)
            .unwrap_or_else(|| panic!("`{key}` in `{line}`"))
            + key.len()
            + 1;
        let rest = &line[at..];
        let end = rest.find([' ', ',', '(']).unwrap_or(rest.len());
        rest[..end]
            .parse()
            .unwrap_or_else(|e| panic!("`{key}` in `{line}`: {e}"))
    };
    load(figure("running"), figure("waiting"), figure("kv_usage"))
}

#[test]
fn fixtures_parse_into_the_load_their_documentation_gives() {
    let cases = [
        ("vllm", MetricsDialect::Vllm, load(5.0, 7.0, 0.5)),
        ("vllm-ascend", MetricsDialect::Vllm, load(12.0, 1.0, 0.8)),
        ("sglang", MetricsDialect::Sglang, load(28.0, 3.0, 0.28)),
        ("mindie", MetricsDialect::Mindie, load(24.0, 6.0, 0.75)),
        ("llamacpp", MetricsDialect::LlamaCpp, load(4.0, 2.0, 0.125)),
    ];
    for (name, dialect, want) in cases {
        let text = fixture(name);
        assert_eq!(
            expected_from_header(&text),
            want,
            "{name}: header and test agree"
        );
        let got = parse_exposition(dialect, &text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() < 1e-9,
            _ => false,
        };
        assert!(
            close(got.running, want.running)
                && close(got.waiting, want.waiting)
                && close(got.kv_usage, want.kv_usage),
            "{name}: got {got:?}, want {want:?}"
        );
        // The same exposition read as another engine's dialect finds none of its figures:
        // the names do not overlap (MindIE's unprefixed names are not vLLM's prefixed ones).
        for other in MetricsDialect::ALL.into_iter().filter(|d| *d != dialect) {
            let cross = parse_exposition(other, &text).unwrap();
            assert_eq!(cross, ScrapedLoad::default(), "{name} read as {other:?}");
        }
    }
}

#[test]
fn a_corrupted_fixture_names_the_bad_line() {
    let mut lines: Vec<String> = fixture("sglang").lines().map(String::from).collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("sglang:num_queue_reqs{"))
        .unwrap();
    lines[at] = lines[at].replace("} 3.0", "} three");
    let err = parse_exposition(MetricsDialect::Sglang, &lines.join("\n")).unwrap_err();
    assert!(
        matches!(&err, ScrapeError::Parse { line, .. } if *line == at + 1),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!("line {}", at + 1)) && text.contains("`three` is not a number"),
        "{text}"
    );
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A loopback server that answers every connection with `response` (a whole HTTP/1.1
/// response), or, when `response` is `None`, reads the request and never answers.
async fn serve(response: Option<String>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let _ = conn.read(&mut buf).await;
            match &response {
                Some(r) => {
                    let _ = conn.write_all(r.as_bytes()).await;
                    let _ = conn.shutdown().await;
                }
                // Keep the socket open so the client waits on it.
                None => held.push(conn),
            }
        }
    });
    (base, task)
}

fn http_ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn scrape_over_http_reads_the_engine_exposition() {
    let text = fixture("llamacpp");
    let (base, server) = serve(Some(http_ok(&text))).await;
    // A base URL written with the OpenAI prefix scrapes the server root's /metrics.
    let got = scrape_once(
        &client(),
        &format!("{base}/v1"),
        MetricsDialect::LlamaCpp,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(got, load(4.0, 2.0, 0.125));
    server.abort();
}

#[tokio::test]
async fn failed_scrapes_are_errors_naming_the_url_not_panics() {
    let timeout = Duration::from_millis(300);

    let (base, not_found) = serve(Some(
        "HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\nconnection: close\r\n\r\nnot found".into(),
    ))
    .await;
    let err = scrape_once(&client(), &base, MetricsDialect::Vllm, timeout)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ScrapeError::Status {
            url: metrics_url(&base),
            status: 404
        }
    );
    not_found.abort();

    let (base, garbage) = serve(Some(http_ok(
        "vllm:num_requests_running{model_name=\"m\" 1\n",
    )))
    .await;
    let err = scrape_once(&client(), &base, MetricsDialect::Vllm, timeout)
        .await
        .unwrap_err();
    assert!(matches!(err, ScrapeError::Parse { line: 1, .. }), "{err}");
    garbage.abort();

    let (base, hang) = serve(None).await;
    let started = Instant::now();
    let err = scrape_once(&client(), &base, MetricsDialect::Vllm, timeout)
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert_eq!(
        err,
        ScrapeError::Timeout {
            url: metrics_url(&base),
            timeout
        }
    );
    assert!(
        waited >= timeout && waited < timeout + Duration::from_secs(5),
        "a hung scrape ends at its timeout ({waited:?})"
    );
    hang.abort();

    // A port nobody listens on: bind one, note it, close it.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let err = scrape_once(&client(), &closed, MetricsDialect::Vllm, timeout)
        .await
        .unwrap_err();
    let ScrapeError::Http { url, message } = &err else {
        panic!("refused connection: {err}")
    };
    assert_eq!(url, &metrics_url(&closed));
    assert!(message.to_lowercase().contains("connect"), "{err}");

    let err = scrape_once(&client(), "not a url", MetricsDialect::Vllm, timeout)
        .await
        .unwrap_err();
    assert!(matches!(err, ScrapeError::Url { .. }), "{err}");
}
