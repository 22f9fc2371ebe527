//! The open-loop load generator behind `dujiang load`: sends a trace's requests at the
//! trace's own arrival times, either to dujiang's gRPC port as `Generate` streams
//! ([`stream`]) or to any OpenAI-compatible server as streaming completions ([`openai`]),
//! measures what a client sees (TTFT, every inter-token gap, end-to-end latency, status
//! codes) and builds a
//! [`Report`](crate::sim::Report) with the same layout and JSON keys as `dujiang replay`,
//! so a load test and a virtual-time replay of the same trace can be compared.
//!
//! Open loop means the sending schedule never waits for the server. A dispatcher thread
//! sleeps until each request's arrival time and spawns one task per request; it never
//! looks at responses. A request that cannot go out on time is *counted as late*, never
//! quietly delayed (which would hide the server's slowness: coordinated omission):
//! - when `concurrency_limit` requests are already in flight the request is not sent at
//!   all and is reported as rejected with reason `late_not_sent`;
//! - when the request task starts more than `late_after` after its due time (the client
//!   itself fell behind) it is still sent, and counted in `load.late_sent`.
//!
//! Latencies run from the moment the request task starts sending, and are reported in
//! simulated time (wall × `time_scale`), matching a daemon started with the same
//! `--time-scale`. How far each send was behind its due time is reported separately
//! (`load.send_lag_ms`), so client lateness is visible instead of folded into latency.

mod collect;
pub mod compare;
mod dispatch;
pub mod openai;
mod progress;
mod prompt;
mod stream;

pub use collect::{LoadReport, LoadSummary};
pub use openai::{Endpoint, OpenAiOptions};
pub use progress::Progress;

use crate::request::Slo;
use crate::trace::TraceRecord;
use crate::wire::admin_client::AdminClient;
use crate::wire::inference_client::InferenceClient;
use anyhow::Context as _;
use collect::{Collector, PoolMeta};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The protocol the load generator speaks.
#[derive(Clone, Debug, Default)]
pub enum Api {
    /// dujiang's `Inference.Generate` over gRPC.
    #[default]
    Grpc,
    /// OpenAI's HTTP API with streaming (dujiang's `--openai-addr`, vLLM, SGLang, …).
    OpenAi(OpenAiOptions),
}

impl Api {
    /// The report's name for it.
    pub fn name(&self) -> &'static str {
        match self {
            Api::Grpc => "grpc",
            Api::OpenAi(_) => "openai",
        }
    }
}

/// Which API a target speaks when `--api` does not say (`dujiang load --api auto`):
/// - `grpc://` or `grpcs://`, or port 50051 (dujiang's gRPC default): gRPC;
/// - anything else — `http(s)://…/v1`, port 8000 (vLLM's and dujiang's OpenAI default),
///   30000 (SGLang), 8080 (llama.cpp) or none: OpenAI, the API nearly every server speaks.
pub fn detect_api(target: &str) -> &'static str {
    let lower = target.trim().to_ascii_lowercase();
    if lower.starts_with("grpc://") || lower.starts_with("grpcs://") {
        return "grpc";
    }
    match target.trim().parse::<hyper::Uri>() {
        Ok(uri) if uri.port_u16() == Some(50051) => "grpc",
        _ => "openai",
    }
}

/// A gRPC target as tonic takes it: `grpc://` and `grpcs://` become `http://` and
/// `https://`.
pub fn grpc_endpoint(target: &str) -> String {
    let t = target.trim();
    for (from, to) in [("grpc://", "http://"), ("grpcs://", "https://")] {
        if t.len() >= from.len() && t[..from.len()].eq_ignore_ascii_case(from) {
            return format!("{to}{}", &t[from.len()..]);
        }
    }
    t.to_string()
}

/// How a load test runs.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// The server's address: for gRPC the daemon's `http://host:port`, for OpenAI the API
    /// base (`http://host:8000/v1`, see [`openai::api_base`]).
    pub target: String,
    /// The protocol, and the OpenAI client's options.
    pub api: Api,
    /// The daemon's Admin address, asked once for the policy and the pools (chip, price,
    /// domesticity). `None`, or a daemon that does not answer there: pools are learnt
    /// from `Started` messages instead.
    pub admin_target: Option<String>,
    /// Arrival times are divided by this; latencies are multiplied by it. Use the daemon's
    /// `--time-scale`.
    pub time_scale: f64,
    /// Most requests in flight; a request due while this many are in flight is not sent
    /// and is counted as late. `None`: no limit.
    pub concurrency_limit: Option<usize>,
    /// A request whose send starts more than this (wall time) after its due time is
    /// counted as sent late.
    pub late_after: Duration,
    /// gRPC: HTTP/2 connections the requests are spread over (the OpenAI client opens
    /// HTTP/1.1 connections as requests need them). One connection carries at most
    /// the server's `max_concurrent_streams` streams at once and queues the rest inside
    /// the client, which would delay sends unseen; several connections keep that limit
    /// far above any realistic number in flight.
    pub connections: usize,
    /// SLO for requests whose trace record carries none.
    pub slo: Slo,
    /// Live progress display.
    pub progress: Progress,
    /// Requests expected, for the progress bar's percentage (optional).
    pub expected_requests: Option<u64>,
    /// What the report calls the traffic (`trace`) and the seed it records.
    pub trace_name: String,
    pub seed: u64,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            target: "http://127.0.0.1:50051".into(),
            api: Api::Grpc,
            admin_target: Some("http://127.0.0.1:50052".into()),
            time_scale: 1.0,
            concurrency_limit: None,
            late_after: Duration::from_millis(10),
            connections: 8,
            slo: Slo::default(),
            progress: Progress::Off,
            expected_requests: None,
            trace_name: String::new(),
            seed: 1,
        }
    }
}

impl LoadConfig {
    fn validate(&self) -> anyhow::Result<()> {
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            anyhow::bail!(
                "time scale must be a positive number, got {}",
                self.time_scale
            );
        }
        if self.concurrency_limit == Some(0) {
            anyhow::bail!("concurrency limit must be at least 1");
        }
        if self.connections == 0 {
            anyhow::bail!("connections must be at least 1");
        }
        Ok(())
    }
}

/// Sends every record of `records` (non-decreasing arrivals, as trace readers yield them)
/// to `cfg.target` on schedule and returns the report once every request has ended.
/// Must run inside a multi-threaded tokio runtime.
pub async fn run<I, E>(cfg: LoadConfig, records: I) -> anyhow::Result<LoadReport>
where
    I: Iterator<Item = Result<TraceRecord, E>> + Send + 'static,
    E: Into<anyhow::Error> + Send + 'static,
{
    cfg.validate()?;
    let mut model = None;
    let sender = match &cfg.api {
        Api::Grpc => {
            let target = grpc_endpoint(&cfg.target);
            let mut clients = Vec::with_capacity(cfg.connections);
            for _ in 0..cfg.connections {
                let channel = Channel::from_shared(target.clone())
                    .with_context(|| format!("invalid target `{}`", cfg.target))?
                    .connect()
                    .await
                    .with_context(|| format!("cannot connect to {}", cfg.target))?;
                clients.push(InferenceClient::new(channel));
            }
            dispatch::Sender::Grpc(clients)
        }
        Api::OpenAi(opts) => {
            let base = openai::api_base(&cfg.target)?;
            let client = openai::Client::connect(&base, opts).await?;
            model = Some(client.model().to_string());
            dispatch::Sender::OpenAi(Arc::new(client))
        }
    };
    let (policy, pools) = match &cfg.admin_target {
        Some(admin) => fleet_info(admin).await,
        None => (None, Vec::new()),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut collector = Collector::new(&cfg, pools, start);
    let dispatcher = {
        let plan = dispatch::Plan {
            start,
            time_scale: cfg.time_scale,
            concurrency_limit: cfg.concurrency_limit,
            slo: cfg.slo,
            sender,
            in_flight: in_flight.clone(),
            runtime: tokio::runtime::Handle::current(),
        };
        tokio::task::spawn_blocking(move || plan.run(records, tx))
    };
    progress::drive(&cfg, &mut collector, rx, &in_flight, start).await;
    let sent = dispatcher.await.context("the dispatcher panicked")?;
    sent?;
    let wall = start.elapsed();
    let mut report = collector.finish(&cfg, policy, wall);
    if let Some(model) = model {
        report.report.fleet = format!("OpenAI server at {} (model {model})", cfg.target);
    }
    Ok(report)
}

/// The daemon's policy and pools from `Admin.ListPools` on its admin port, so the report
/// names the policy and carries each pool's chip, size, price and domesticity. A server
/// without the Admin service still works: pools are then learnt from `Started` messages.
async fn fleet_info(target: &str) -> (Option<String>, Vec<PoolMeta>) {
    let Ok(channel) = Channel::from_shared(target.to_string()) else {
        return (None, Vec::new());
    };
    let Ok(channel) = channel.connect().await else {
        return (None, Vec::new());
    };
    let mut admin = AdminClient::new(channel);
    let Ok(resp) = admin.list_pools(crate::wire::ListPoolsRequest {}).await else {
        return (None, Vec::new());
    };
    let resp = resp.into_inner();
    let pools = resp
        .pools
        .into_iter()
        .map(|p| PoolMeta {
            name: p.pool,
            chip: p.chip,
            backends: p.backends,
            price_per_hour_usd: p.price_per_hour_usd,
            domestic: p.domestic,
        })
        .collect();
    (Some(resp.policy).filter(|p| !p.is_empty()), pools)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_is_told_from_the_target() {
        for (target, api) in [
            ("grpc://10.0.0.1:9000", "grpc"),
            ("GRPCS://h", "grpc"),
            ("http://127.0.0.1:50051", "grpc"),
            ("http://127.0.0.1:8000", "openai"),
            ("http://h:8000/v1", "openai"),
            ("https://gw.example/openai/v1", "openai"),
            ("http://127.0.0.1:30000", "openai"),
            ("http://h:50051/v1", "grpc"),
        ] {
            assert_eq!(detect_api(target), api, "{target}");
        }
        assert_eq!(grpc_endpoint("grpc://h:1"), "http://h:1");
        assert_eq!(grpc_endpoint("grpcs://h:1"), "https://h:1");
        assert_eq!(grpc_endpoint("http://h:1"), "http://h:1");
    }
}
