//! Chaos: many concurrent gRPC clients for about ten seconds of wall time while backends
//! fail, slow down and recover, clients cancel streams and deadlines expire. At the end:
//! every accepted request had exactly one terminal outcome, the clients' tally and
//! `dujiang_requests_total` agree, no client saw a token index twice (each stream's text
//! is checked against the daemon's fixed word cycle), and every backend's KV usage,
//! running and waiting gauges are back to zero.
//!
//! Bounded: 48 clients, 10 s of load at time scale 20 (a few thousand requests), all
//! choices from seeded RNGs.

mod serve_support;

use dujiang::serve::ServeConfig;
use dujiang::wire::{self, generate_response::Event, inject_fault_request::Fault};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serve_support::*;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

const CLIENTS: u64 = 48;
const LOAD: Duration = Duration::from_secs(10);
const BACKENDS: [&str; 4] = ["h20-0", "h20-1", "h20-2", "h20-3"];

fn expected_text(tokens: u32) -> String {
    dujiang::serve::token_text(0, tokens)
}

/// What one client saw, summed.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    accepted: u64,
    ok: u64,
    cancelled: u64,
    deadline: u64,
    unavailable: u64,
    /// Refused before acceptance (shed, no backend, unmeetable deadline).
    refused: u64,
    /// The client's own transport timeout fired before the response headers: the daemon
    /// may or may not have accepted it.
    unknown: u64,
    tokens: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.accepted += o.accepted;
        self.ok += o.ok;
        self.cancelled += o.cancelled;
        self.deadline += o.deadline;
        self.unavailable += o.unavailable;
        self.refused += o.refused;
        self.unknown += o.unknown;
        self.tokens += o.tokens;
    }
}

async fn client(addr: std::net::SocketAddr, seed: u64, stop: Arc<AtomicBool>) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = inference(addr).await;
    let mut t = Tally::default();
    while !stop.load(Relaxed) {
        let max_tokens = rng.random_range(20..300u32);
        let mut body = request(rng.random_range(50..1500), max_tokens);
        if rng.random_bool(0.3) {
            body.priority = wire::Priority::Batch as i32;
        }
        let mut req = tonic::Request::new(body);
        let with_deadline = rng.random_bool(0.2);
        if with_deadline {
            req.set_timeout(Duration::from_millis(rng.random_range(150..1500)));
        }
        // Cancel only long answers, right after their first token, so the answer has
        // usually not finished on the daemon's side before the client hangs up (the
        // tally at the end allows for the times it has).
        let cancel = max_tokens >= 200 && rng.random_bool(0.15);
        let mut stream = match c.generate(req).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::Cancelled && with_deadline => {
                t.unknown += 1;
                continue;
            }
            Err(s) => {
                assert!(
                    matches!(
                        s.code(),
                        Code::ResourceExhausted | Code::Unavailable | Code::DeadlineExceeded
                    ),
                    "refusal with an unexpected status: {s:?}"
                );
                t.refused += 1;
                continue;
            }
        };
        t.accepted += 1;
        let (mut text, mut tokens, mut finished) = (String::new(), 0u32, 0u32);
        let end = loop {
            match stream.message().await {
                Ok(Some(msg)) => match msg.event.expect("event") {
                    Event::Started(_) => {}
                    Event::Tokens(chunk) => {
                        tokens += chunk.count;
                        text.push_str(&chunk.text);
                        if cancel {
                            break None;
                        }
                    }
                    Event::Finished(f) => {
                        finished += 1;
                        assert_eq!(f.usage.unwrap().completion_tokens, max_tokens);
                    }
                },
                Ok(None) => break Some(Ok(())),
                Err(s) => break Some(Err(s)),
            }
        };
        assert_eq!(text, expected_text(tokens), "tokens repeated or skipped");
        t.tokens += u64::from(tokens);
        match end {
            None => {
                drop(stream);
                t.cancelled += 1;
            }
            Some(Ok(())) => {
                assert_eq!(finished, 1, "one Finished per completed stream");
                assert_eq!(tokens, max_tokens);
                t.ok += 1;
            }
            Some(Err(s)) => {
                assert_eq!(finished, 0);
                match s.code() {
                    Code::DeadlineExceeded => t.deadline += 1,
                    Code::Unavailable => t.unavailable += 1,
                    other => panic!("accepted stream ended with {other:?}: {s:?}"),
                }
            }
        }
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_loses_nothing_and_counts_add_up() {
    let mut cfg = ServeConfig {
        time_scale: 20.0,
        fleet: data("serve_four_h20.toml"),
        ..config()
    };
    cfg.admission.max_in_flight = 300;
    cfg.reliability.migration_retries = 3;
    cfg.reliability.check_interval_ms = 25;
    let d = start(cfg).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(client(d.grpc_addr, 1000 + i, stop.clone())))
        .collect();

    let mut a = admin(d.admin_addr).await;
    let mut rng = StdRng::seed_from_u64(7);
    let (mut fails, mut slowdowns, mut clears) = (0, 0, 0);
    let mut failed = [false; 4];
    let began = std::time::Instant::now();
    while began.elapsed() < LOAD {
        tokio::time::sleep(Duration::from_millis(rng.random_range(80..250))).await;
        let k = rng.random_range(0..BACKENDS.len());
        let backend = BACKENDS[k].to_string();
        match rng.random_range(0..3) {
            // Keep at least two backends up.
            0 if failed.iter().filter(|f| **f).count() < 2 && !failed[k] => {
                a.inject_fault(wire::InjectFaultRequest {
                    backend,
                    fault: Some(Fault::Fail(true)),
                })
                .await
                .unwrap();
                failed[k] = true;
                fails += 1;
            }
            1 => {
                a.inject_fault(wire::InjectFaultRequest {
                    backend,
                    fault: Some(Fault::Slowdown(rng.random_range(2.0..5.0))),
                })
                .await
                .unwrap();
                slowdowns += 1;
            }
            _ => {
                a.clear_fault(wire::BackendRef { backend }).await.unwrap();
                failed[k] = false;
                clears += 1;
            }
        }
    }
    for b in BACKENDS {
        a.clear_fault(wire::BackendRef { backend: b.into() })
            .await
            .unwrap();
    }
    stop.store(true, Relaxed);
    let mut total = Tally::default();
    for c in clients {
        total.add(&c.await.unwrap());
    }
    eprintln!(
        "chaos: {fails} failures, {slowdowns} slowdowns, {clears} clears; clients saw {total:?}"
    );

    let stats = async |a: &mut wire::admin_client::AdminClient<_>| {
        a.get_stats(wire::GetStatsRequest {})
            .await
            .unwrap()
            .into_inner()
    };
    assert!(
        eventually(Duration::from_secs(10), async || stats(&mut a)
            .await
            .in_flight
            == 0)
        .await,
        "everything accepted ends: {:?}",
        stats(&mut a).await
    );
    let addr = d.http_addr;
    let gauges = async || {
        let text = http_get(addr, "/metrics").await.1;
        [
            metric_sum(&text, "dujiang_backend_kv_usage_ratio"),
            metric_sum(&text, "dujiang_backend_running_requests"),
            metric_sum(&text, "dujiang_backend_waiting_requests"),
        ]
    };
    assert!(
        eventually(Duration::from_secs(10), async || gauges().await == [0.0; 3]).await,
        "KV, running and waiting return to zero: {:?}",
        gauges().await
    );

    let s = stats(&mut a).await;
    let scrape = http_get(d.http_addr, "/metrics").await.1;
    let outcome = |o: &str| {
        let v = metric_sum(
            &scrape,
            &format!("dujiang_requests_total{{outcome=\"{o}\",frontend=\"grpc\"}}"),
        );
        assert_eq!(v as u64, s.outcomes[o], "scrape and GetStats agree on {o}");
        v as u64
    };
    let (ok, cancelled, deadline, failed_n, shutdown) = (
        outcome("ok"),
        outcome("cancelled"),
        outcome("deadline_exceeded"),
        outcome("failed"),
        outcome("shutdown"),
    );
    let accepted = metric_sum(&scrape, "dujiang_requests_accepted_total") as u64;
    assert_eq!(accepted, s.accepted);
    assert_eq!(
        accepted,
        ok + cancelled + deadline + failed_n + shutdown,
        "exactly one outcome per accepted request"
    );
    assert_eq!(shutdown, 0);
    // A client hangs up right after its first token of a long answer, but on a loaded
    // machine its task may not run again until the daemon has produced the whole answer:
    // then the daemon rightly counts `ok` what the client counts cancelled. Every such
    // race moves one request from cancelled to ok, never anywhere else.
    let raced = ok.checked_sub(total.ok).unwrap_or_else(|| {
        panic!(
            "the daemon counts {ok} completed, fewer than the clients' {}",
            total.ok
        )
    });
    assert!(
        raced <= total.cancelled,
        "{raced} more completed than the clients saw, but only {} cancels could race",
        total.cancelled
    );
    assert_eq!(deadline, total.deadline, "deadline exceeded");
    assert_eq!(
        failed_n, total.unavailable,
        "ended UNAVAILABLE after acceptance"
    );
    // A client-side timeout before the response headers leaves the client unsure whether
    // it was accepted; any such acceptance is a cancellation on the daemon's side.
    let unsure = accepted - total.accepted;
    assert!(unsure <= total.unknown, "{unsure} > {}", total.unknown);
    assert_eq!(cancelled + raced, total.cancelled + unsure, "cancelled");
    assert!(
        total.ok > 500,
        "enough traffic to mean something: {total:?}"
    );
    assert!(
        total.cancelled > 0 && total.deadline > 0,
        "cancellations and deadlines happened: {total:?}"
    );
    let migrations = metric_sum(&scrape, "dujiang_request_migrations_total");
    assert!(fails == 0 || migrations > 0.0, "failures moved requests");
    eprintln!(
        "chaos: accepted {accepted}, ok {ok}, cancelled {cancelled}, deadline {deadline}, failed {failed_n}, migrations {migrations}, ejections {}",
        metric_sum(&scrape, "dujiang_backend_ejections_total")
    );
    d.shutdown();
    d.wait().await.unwrap();
}
