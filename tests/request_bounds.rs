//! The daemon refuses what the core's shared request check refuses (prefix hashes beyond
//! the prompt's blocks, repeated hashes, an overlong `request_id`, a prompt past the
//! model's context), with INVALID_ARGUMENT naming the field, and counts each refusal in
//! `/metrics` under the same reason replay reports. Real gRPC and a real scrape on
//! loopback.

mod serve_support;

use dujiang::request::{Invalid, MAX_REQUEST_ID_BYTES, PREFIX_BLOCK_TOKENS};
use serve_support::*;
use tonic::Code;

fn shed(metrics: &str, reason: &str) -> f64 {
    let key = format!("dujiang_requests_shed_total{{reason=\"{reason}\",frontend=\"grpc\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_input_is_refused_and_counted_by_reason() {
    let d = start(config()).await;
    let mut client = inference(d.grpc_addr).await;

    // Two blocks' worth of prompt: two distinct hashes are fine.
    let mut ok = request(PREFIX_BLOCK_TOKENS + 1, 4);
    ok.prefix_hashes = vec![1, 2];
    ok.request_id = "r".repeat(MAX_REQUEST_ID_BYTES);
    let seen = generate(&mut client, tonic::Request::new(ok)).await;
    assert!(seen.status.is_none() && seen.tokens == 4, "{seen:?}");

    let mut too_many = request(PREFIX_BLOCK_TOKENS + 1, 4);
    too_many.prefix_hashes = vec![1, 2, 3];
    let mut repeated = request(4 * PREFIX_BLOCK_TOKENS, 4);
    repeated.prefix_hashes = vec![5, 6, 5];
    let mut long_id = request(100, 4);
    long_id.request_id = "r".repeat(MAX_REQUEST_ID_BYTES + 1);
    // The demo fleet's model has an 8,192-token context.
    let past_context = request(8192, 4);
    let output_past_context = request(8000, 193);
    let cases = [
        (too_many, Invalid::PrefixHashes, "prefix_hashes"),
        (repeated, Invalid::PrefixHashes, "prefix_hashes"),
        (long_id, Invalid::RequestId, "request_id"),
        (past_context, Invalid::PromptTooLong, "prompt"),
        (output_past_context, Invalid::OutputTooLong, "max_tokens"),
    ];
    for (req, _, field) in &cases {
        let seen = generate(&mut client, tonic::Request::new(req.clone())).await;
        let status = seen.status.expect("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{}", status.message());
    }
    let (code, metrics) = http_get(d.http_addr, "/metrics").await;
    assert_eq!(code, 200);
    for reason in Invalid::ALL {
        let want = cases.iter().filter(|c| c.1 == reason).count() as f64;
        assert_eq!(shed(&metrics, reason.as_str()), want, "{reason:?}");
    }
    d.shutdown();
    d.wait().await.unwrap();
}
