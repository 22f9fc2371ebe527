//! `dujiang serve` paces with engine-catalogue overlays (`engines` in the config,
//! `--engines` on the command line): a fitted overlay replaces the embedded coefficients
//! for the pools it covers, and an unreadable overlay stops the daemon at start with the
//! file named.

use dujiang::profile::Catalogue;
use dujiang::serve::{Daemon, ServeConfig};
use std::path::PathBuf;

/// The embedded `vllm-0.7` on H20 entry with 31.5 ms more per-step decode overhead.
fn slow_h20() -> String {
    let mut c = Catalogue::embedded()
        .engine_for("h20", Some("vllm-0.7"))
        .unwrap()
        .coefficients;
    c.decode_step_overhead_us += 31_500.0;
    format!(
        "[engines.\"vllm-0.7\"]\nname = \"vLLM 0.7.3, our fit\"\nsource = \"a test's own overlay\"\n\n\
         [engines.\"vllm-0.7\".on.h20]\n{}",
        toml::to_string(&c).unwrap()
    )
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dujiang-serve-engines-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Batch-1 decode step of every pool, by pool name.
fn decode_steps(d: &Daemon) -> Vec<(String, u64)> {
    let membership = d.board.membership();
    let mut steps: Vec<_> = membership
        .pools()
        .map(|p| (p.config.name.clone(), p.config.perf.decode_step_ns(1, 1024)))
        .collect();
    steps.sort();
    steps
}

#[tokio::test]
async fn an_engine_overlay_changes_how_the_daemon_paces_the_pools_it_covers() {
    let dir = scratch("overlay");
    let overlay = dir.join("slow-h20.toml");
    std::fs::write(&overlay, slow_h20()).unwrap();
    let embedded = Daemon::start(&ServeConfig::default(), None, None).unwrap();
    let cfg = ServeConfig {
        engines: vec![overlay],
        ..ServeConfig::default()
    };
    let fitted = Daemon::start(&cfg, None, None).unwrap();
    let (before, after) = (decode_steps(&embedded), decode_steps(&fitted));
    assert_eq!(before.len(), after.len());
    for ((pool, b), (_, a)) in before.iter().zip(&after) {
        if pool.starts_with("h20") {
            // 31.5 ms more host time per step.
            assert_eq!(a - b, 31_500_000, "{pool}: {b} -> {a} ns");
        } else {
            assert_eq!(a, b, "{pool} is not covered by the overlay");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_unreadable_overlay_stops_the_daemon_naming_the_file() {
    let dir = scratch("bad");
    let bad = dir.join("typo.toml");
    std::fs::write(
        &bad,
        "[engines.\"vllm-0.7\".on.h20]\nprefill_efficiency = 1.5\n",
    )
    .unwrap();
    for path in [bad.clone(), dir.join("missing.toml")] {
        let cfg = ServeConfig {
            engines: vec![path.clone()],
            ..ServeConfig::default()
        };
        let err = format!(
            "{:#}",
            Daemon::start(&cfg, None, None).err().expect("refused")
        );
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(err.contains(name), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
