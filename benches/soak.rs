//! Soak: the daemon under steady open-loop load for a long time (10 minutes by default;
//! `DUJIANG_SOAK_SECS` sets it), with a backend failing and recovering and another slowing
//! down and recovering every minute, so the failure, migration and straggler paths run
//! for the whole soak too. Every `DUJIANG_SOAK_WINDOW_SECS` (default 30) it prints the
//! window's completed requests per second, output tokens per second, client-observed p99
//! time to first token and end-to-end latency, and the process's resident memory. At the
//! end it checks what a leak would break: resident memory flat (the last window within
//! 25% of the second), nothing left in flight, every backend's KV usage back to zero, and
//! `dujiang_requests_accepted_total` equal to the sum of `dujiang_requests_total`.
//!
//! Run: `cargo bench --bench soak` (or `DUJIANG_SOAK_SECS=180 cargo bench --bench soak`).

use dujiang::serve::ServeConfig;
use dujiang::wire::{
    admin_client::AdminClient, generate_response::Event, inference_client::InferenceClient,
    inject_fault_request::Fault, BackendRef, GenerateRequest, GetStatsRequest, InjectFaultRequest,
    Priority,
};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Distribution, Exp};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Requests per wall second offered (Poisson).
const RATE: f64 = 60.0;
const TIME_SCALE: f64 = 10.0;

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

#[derive(Default)]
struct Window {
    ttft_us: Option<Histogram<u64>>,
    e2e_us: Option<Histogram<u64>>,
    completed: u64,
    tokens: u64,
    errors: u64,
}

impl Window {
    fn record(&mut self, ttft: Duration, e2e: Duration, tokens: u32) {
        let h = || Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("bounds");
        self.ttft_us
            .get_or_insert_with(h)
            .saturating_record(ttft.as_micros() as u64);
        self.e2e_us
            .get_or_insert_with(h)
            .saturating_record(e2e.as_micros() as u64);
        self.completed += 1;
        self.tokens += u64::from(tokens);
    }
}

async fn one(mut c: InferenceClient<Channel>, req: GenerateRequest, window: Arc<Mutex<Window>>) {
    let sent = Instant::now();
    let Ok(resp) = c.generate(req).await else {
        window.lock().errors += 1;
        return;
    };
    let mut stream = resp.into_inner();
    let (mut first, mut tokens) = (None, 0u32);
    loop {
        match stream.message().await {
            Ok(Some(m)) => match m.event {
                Some(Event::Tokens(t)) => {
                    first.get_or_insert_with(|| sent.elapsed());
                    tokens += t.count;
                }
                Some(Event::Finished(_)) => {
                    let e2e = sent.elapsed();
                    window.lock().record(first.unwrap_or(e2e), e2e, tokens);
                }
                _ => {}
            },
            Ok(None) => return,
            Err(_) => {
                window.lock().errors += 1;
                return;
            }
        }
    }
}

fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn soak() {
    let total = Duration::from_secs(env_secs("DUJIANG_SOAK_SECS", 600));
    let every = Duration::from_secs(env_secs("DUJIANG_SOAK_WINDOW_SECS", 30));
    let cfg = ServeConfig {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        openai_addr: "127.0.0.1:0".parse().unwrap(),
        time_scale: TIME_SCALE,
        fleet: concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/serve_four_h20.toml"
        )
        .into(),
        grace_period_ms: 5_000,
        ..ServeConfig::default()
    };
    let d = dujiang::serve::start(cfg, None)
        .await
        .expect("daemon starts");
    let channel = Channel::from_shared(format!("http://{}", d.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = InferenceClient::new(channel);
    let admin_channel = Channel::from_shared(format!("http://{}", d.admin_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = AdminClient::new(admin_channel);
    let window = Arc::new(Mutex::new(Window::default()));
    let sent = Arc::new(AtomicU64::new(0));

    // Faults: each minute h20-0 fails for 10 s, and h20-1 runs 3× slower for 20 s.
    let faults = {
        let mut a = admin.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(20)).await;
                let fail = InjectFaultRequest {
                    backend: "h20-0".into(),
                    fault: Some(Fault::Fail(true)),
                };
                let _ = a.inject_fault(fail).await;
                tokio::time::sleep(Duration::from_secs(10)).await;
                let _ = a
                    .clear_fault(BackendRef {
                        backend: "h20-0".into(),
                    })
                    .await;
                let slow = InjectFaultRequest {
                    backend: "h20-1".into(),
                    fault: Some(Fault::Slowdown(3.0)),
                };
                let _ = a.inject_fault(slow).await;
                tokio::time::sleep(Duration::from_secs(20)).await;
                let _ = a
                    .clear_fault(BackendRef {
                        backend: "h20-1".into(),
                    })
                    .await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        })
    };
    let load = {
        let (window, sent, client) = (window.clone(), sent.clone(), client.clone());
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(42);
            let gap = Exp::new(RATE).unwrap();
            let start = Instant::now();
            let mut at = 0.0f64;
            loop {
                at += gap.sample(&mut rng);
                tokio::time::sleep_until((start + Duration::from_secs_f64(at)).into()).await;
                let req = GenerateRequest {
                    prompt: "Explain how the Dujiangyan weir divides the Min river.".into(),
                    prompt_tokens: Some(rng.random_range(100..2000)),
                    max_tokens: rng.random_range(20..200),
                    priority: if rng.random_bool(0.3) {
                        Priority::Batch as i32
                    } else {
                        Priority::Interactive as i32
                    },
                    ..Default::default()
                };
                sent.fetch_add(1, Relaxed);
                tokio::spawn(one(client.clone(), req, window.clone()));
            }
        })
    };

    println!(
        "soak: {} s at {RATE} req/s offered, time scale {TIME_SCALE}, 4×H20 llama-3-8b, faults every minute",
        total.as_secs()
    );
    println!("  t_s  done/s  tok/s(wall)  ttft_p99_ms  e2e_p99_ms  errors  rss_mib");
    let began = Instant::now();
    let mut rss = Vec::new();
    while began.elapsed() < total {
        tokio::time::sleep(every.min(total.saturating_sub(began.elapsed()))).await;
        let w = std::mem::take(&mut *window.lock());
        let secs = every.as_secs_f64();
        let p99 = |h: &Option<Histogram<u64>>| {
            h.as_ref()
                .map_or(0.0, |h| h.value_at_quantile(0.99) as f64 / 1000.0)
        };
        let r = rss_mib();
        rss.push(r);
        println!(
            "{:5.0}  {:6.1}  {:11.0}  {:11.1}  {:10.1}  {:6}  {:7.1}",
            began.elapsed().as_secs_f64(),
            w.completed as f64 / secs,
            w.tokens as f64 / secs,
            p99(&w.ttft_us),
            p99(&w.e2e_us),
            w.errors,
            r
        );
    }
    load.abort();
    faults.abort();
    for b in ["h20-0", "h20-1"] {
        let _ = admin.clear_fault(BackendRef { backend: b.into() }).await;
    }
    // Let what is in flight finish.
    let settle = Instant::now();
    loop {
        let s = admin
            .get_stats(GetStatsRequest {})
            .await
            .unwrap()
            .into_inner();
        if s.in_flight == 0 || settle.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let scrape = d.daemon.metrics.render();
    let s = admin
        .get_stats(GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    let outcomes: u64 = s.outcomes.values().sum();
    let kv = metric_sum(&scrape, "dujiang_backend_kv_usage_ratio");
    println!(
        "soak: sent {}, accepted {}, outcomes {:?}, in flight {}, kv usage sum {kv}, migrations {}, ejections {}",
        sent.load(Relaxed),
        s.accepted,
        s.outcomes,
        s.in_flight,
        metric_sum(&scrape, "dujiang_request_migrations_total") + 0.0,
        metric_sum(&scrape, "dujiang_backend_ejections_total") + 0.0,
    );
    let base = rss.get(1).or(rss.first()).copied().unwrap_or(0.0);
    let last = rss.last().copied().unwrap_or(0.0);
    println!(
        "soak: resident memory {base:.1} MiB (second window) -> {last:.1} MiB (last), {:+.1}%",
        (last / base - 1.0) * 100.0
    );
    let mut ok = true;
    if last > base * 1.25 {
        println!("soak: FAIL resident memory grew by more than 25%");
        ok = false;
    }
    if s.in_flight != 0 || outcomes != s.accepted {
        println!("soak: FAIL accepted {} != outcomes {outcomes}", s.accepted);
        ok = false;
    }
    if kv != 0.0 {
        println!("soak: FAIL KV usage did not return to zero");
        ok = false;
    }
    d.shutdown();
    d.wait().await.unwrap();
    if !ok {
        std::process::exit(1);
    }
    println!("soak: ok");
}

fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test --benches` run passes nothing
    // and must not soak for ten minutes.
    if !std::env::args().any(|a| a == "--bench") {
        println!("soak: skipped (run with `cargo bench --bench soak`)");
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(soak());
}
