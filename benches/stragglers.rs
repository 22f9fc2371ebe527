//! Cost of one straggler check (`Daemon::check_outliers`) as the fleet grows: it runs every
//! `check_interval_ms` (100 ms by default) over every backend, so it must grow linearly in
//! backends and stay small beside the interval, and it takes the admin lock only around a
//! state change, so admin operations never wait for a whole pass. Fleets of 64, 1,024 and
//! 4,096 H20 backends, none slowed, so no pass ejects anything: this is the cost every
//! pass pays, and time per backend should stay flat across sizes.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dujiang::serve::{Daemon, ServeConfig};

fn stragglers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("dujiang-bench-stragglers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut g = c.benchmark_group("stragglers/check");
    for n in [64u32, 1024, 4096] {
        let fleet = dir.join(format!("h20-{n}.toml"));
        std::fs::write(
            &fleet,
            format!("name = \"bench\"\nmodel = \"qwen3-8b\"\n[pools.h20]\nchip = \"h20\"\ncount = {n}\n"),
        )
        .unwrap();
        let cfg = ServeConfig {
            fleet,
            ..ServeConfig::default()
        };
        let daemon = rt.block_on(async { Daemon::start(&cfg, None, None).unwrap() });
        g.throughput(Throughput::Elements(u64::from(n)));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| daemon.check_outliers())
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, stragglers);
criterion_main!(benches);
