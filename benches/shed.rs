//! Cost of refusing a request under overload (issue 9: excess load is shed "in well under a
//! millisecond"). Measures `Daemon::submit` end to end for a request that is refused with
//! RESOURCE_EXHAUSTED (validation, the routing policy's pick over the load board, the
//! time-to-first-token prediction and the admission decision), for an interactive request
//! at the global limit and a batch request above the batch watermark; and the admission
//! controller's decision alone. Overload must cost the daemon little per refused request,
//! or shedding itself becomes the overload.

use criterion::{criterion_group, criterion_main, Criterion};
use dujiang::admission::{Admission, AdmissionConfig, Target};
use dujiang::engine::LoadSnapshot;
use dujiang::fleet::BackendId;
use dujiang::request::{Priority, Request};
use dujiang::serve::{Daemon, ServeConfig, ServeError};
use dujiang::wire::{GenerateRequest, Priority as WirePriority};
use std::time::Instant;

fn request(priority: WirePriority) -> GenerateRequest {
    GenerateRequest {
        prompt: "Explain how the Dujiangyan weir divides the Min river.".into(),
        prompt_tokens: Some(512),
        max_tokens: 128,
        priority: priority as i32,
        ..Default::default()
    }
}

fn shed(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut cfg = ServeConfig {
        // Slow simulated time: the requests holding the limit never finish.
        time_scale: 0.001,
        fleet: concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/serve_four_h20.toml"
        )
        .into(),
        ..ServeConfig::default()
    };
    cfg.admission.max_in_flight = 8;
    cfg.admission.batch_watermark = 0.5;
    let daemon = rt.block_on(async { Daemon::start(&cfg, None, None).unwrap() });
    let held: Vec<_> = (0..8)
        .map(|_| {
            rt.block_on(daemon.submit(request(WirePriority::Interactive), Instant::now(), None))
                .unwrap_or_else(|e| panic!("filling the limit: {e}"))
        })
        .collect();
    let mut g = c.benchmark_group("shed");
    for (name, priority, reason) in [
        (
            "interactive_at_limit",
            WirePriority::Interactive,
            "queue_full",
        ),
        ("batch_above_watermark", WirePriority::Batch, "batch_shed"),
    ] {
        g.bench_function(name, |b| {
            b.iter(
                || match rt.block_on(daemon.submit(request(priority), Instant::now(), None)) {
                    Err(ServeError::Shed { reason: r, .. }) => assert_eq!(r, reason),
                    other => panic!("expected a shed, got {:?}", other.err()),
                },
            )
        });
    }
    let admission = Admission::new(AdmissionConfig {
        max_in_flight: 1,
        ..AdmissionConfig::default()
    });
    let req = Request {
        prompt_tokens: 512,
        max_tokens: 128,
        priority: Priority::Interactive,
        ..Default::default()
    };
    let target = Target::Backend {
        id: BackendId(0),
        load: LoadSnapshot::default(),
        predicted_ttft_ns: 50_000_000,
        predicted_tpot_ns: 20_000_000,
        prefill_ns: 30_000_000,
    };
    let _hold = admission.admit(&req, target, None, 0).unwrap();
    g.bench_function("admission_decision_only", |b| {
        b.iter(|| {
            admission
                .admit(&req, target, Some(1_000_000_000), 0)
                .is_err()
        })
    });
    g.finish();
    drop(held);
}

criterion_group!(benches, shed);
criterion_main!(benches);
