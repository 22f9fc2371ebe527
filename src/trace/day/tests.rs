//! Tests of the streaming day: shard and window exactness, the work a shard does, volume,
//! shape, prefixes, determinism and refused parameters.

use super::*;

const HOUR: Nanos = 3600 * NANOS_PER_SEC;
const DAY: Range<Nanos> = 0..24 * HOUR;

/// A 5e6-token day: a few thousand requests. Wide slots keep the debug build quick
/// (streams are opened per slot and bucket).
fn small(seed: u64) -> DayConfig {
    DayConfig {
        slot_s: 900,
        ..DayConfig::doubao(DOUBAO_TOKENS_PER_DAY_DEC_2025, 1e-7, seed)
    }
}

fn run(cfg: &DayConfig, shard: Shard, window: Range<Nanos>) -> (Vec<TraceRecord>, u64) {
    let mut d = DayTrace::new(cfg, shard, window).unwrap();
    let recs: Vec<_> = d.by_ref().collect();
    (recs, d.streams_opened())
}

fn rank(r: &TraceRecord) -> (Nanos, u64, u32) {
    (r.arrival_ns, r.session.unwrap(), r.prompt_tokens)
}

#[test]
fn cell_shards_union_is_the_day_and_each_opens_only_its_streams() {
    let cfg = small(3);
    let (whole, whole_streams) = run(&cfg, Shard::WHOLE, DAY);
    assert!(whole.len() > 2_000, "{} requests", whole.len());
    assert!(whole.windows(2).all(|w| rank(&w[0]) < rank(&w[1])));
    for n in [4u32, 3] {
        let mut merged = Vec::new();
        let mut streams = 0;
        for i in 0..n {
            let (recs, s) = run(&cfg, Shard { index: i, count: n }, DAY);
            for r in &recs {
                // The generator's shard is the fleet's cell, by the one partition rule.
                let slot = crate::trace::cells::cell_slot(r.session.unwrap());
                assert!(slot < cfg.buckets, "slot {slot}");
                assert_eq!(slot % n, i);
                assert_eq!(crate::trace::cell_of(r.session.unwrap(), n), i);
            }
            // A shard does about 1/N of the work, not the whole day's.
            assert!(
                (s as f64) < 1.3 * whole_streams as f64 / f64::from(n),
                "shard {i}/{n}: {s} of {whole_streams} streams"
            );
            streams += s;
            merged.extend(recs);
        }
        assert_eq!(streams, whole_streams, "N = {n}");
        merged.sort_by_key(rank);
        assert_eq!(merged, whole, "N = {n}");
    }
}

#[test]
fn a_sibling_shard_is_the_shard_made_afresh() {
    let cfg = small(9);
    let whole = DayTrace::new(&cfg, Shard::WHOLE, DAY).unwrap();
    for (shard, window) in [
        (Shard { index: 1, count: 4 }, DAY),
        (Shard { index: 2, count: 3 }, 5 * HOUR..7 * HOUR),
    ] {
        let fresh: Vec<_> = DayTrace::new(&cfg, shard, window.clone())
            .unwrap()
            .collect();
        let sibling: Vec<_> = whole.sibling(&cfg, shard, window).unwrap().collect();
        assert!(!fresh.is_empty());
        assert_eq!(sibling, fresh);
    }
}

#[test]
fn a_time_window_is_the_days_records_in_it_after_warm_up() {
    let cfg = small(5);
    let (whole, whole_streams) = run(&cfg, Shard::WHOLE, DAY);
    for (a, b) in [(0, 1), (10, 11), (23, 24)] {
        let w = a * HOUR..b * HOUR;
        let (recs, streams) = run(&cfg, Shard::WHOLE, w.clone());
        let want: Vec<_> = whole
            .iter()
            .filter(|r| w.contains(&r.arrival_ns))
            .cloned()
            .collect();
        assert!(!want.is_empty());
        assert_eq!(recs, want, "hours {a}-{b}");
        // One hour plus the 55-minute warm-up, not the day before it.
        assert!(
            (streams as f64) < 0.2 * whole_streams as f64,
            "hours {a}-{b}: {streams} of {whole_streams}"
        );
    }
    assert_eq!(cfg.warm_up_ns(), 11 * 300 * NANOS_PER_SEC);
}

#[test]
fn volume_and_shape_follow_the_config() {
    let cfg = DayConfig::doubao(DOUBAO_TOKENS_PER_DAY_DEC_2025, 1e-6, 1);
    let mut d = DayTrace::new(&cfg, Shard::WHOLE, DAY).unwrap();
    let mut tokens = 0u64;
    let mut by_hour = [0u64; 24];
    let mut n = 0u64;
    for r in d.by_ref() {
        tokens += u64::from(r.prompt_tokens) + u64::from(r.output_tokens);
        by_hour[(r.arrival_ns / HOUR) as usize] += 1;
        n += 1;
    }
    // Sessions cut at midnight lose a few late turns (about 2%), and ten thousand sessions
    // of lognormal lengths spread a few percent more: seeds 1-6 gave 47.4M-50.0M tokens.
    let want = 50e12 * 1e-6;
    assert!((tokens as f64 / want - 1.0).abs() < 0.07, "{tokens} tokens");
    let peak = (0..24).max_by_key(|&h| by_hour[h]).unwrap();
    let trough = (0..24).min_by_key(|&h| by_hour[h]).unwrap();
    assert!((20..=22).contains(&peak), "peak {peak}: {by_hour:?}");
    assert!((3..=5).contains(&trough), "trough {trough}: {by_hour:?}");
    // Memory is the open sessions, a small fraction of the day's requests.
    assert!(
        d.max_pending() * 50 < n as usize,
        "{} of {n}",
        d.max_pending()
    );
}

#[test]
fn later_turns_carry_the_earlier_turns_prefix() {
    let (recs, _) = run(&small(7), Shard::WHOLE, DAY);
    let mut last: std::collections::HashMap<u64, &TraceRecord> = Default::default();
    let mut follow_ups = 0;
    for r in &recs {
        assert_eq!(r.hash_ids.len() as u32, r.prompt_tokens.div_ceil(512));
        if let Some(prev) = last.get(&r.session.unwrap()) {
            follow_ups += 1;
            assert!(r.prompt_tokens > prev.prompt_tokens + prev.output_tokens - 1);
            let full = (prev.prompt_tokens / 512) as usize;
            assert_eq!(r.hash_ids[..full], prev.hash_ids[..full]);
        }
        last.insert(r.session.unwrap(), r);
    }
    let share = f64::from(follow_ups) / recs.len() as f64;
    assert!(share > 0.4, "follow-up share {share}");
}

#[test]
fn same_seed_same_day_other_seed_other_day() {
    let w = 9 * HOUR..10 * HOUR;
    assert_eq!(
        run(&small(1), Shard::WHOLE, w.clone()).0,
        run(&small(1), Shard::WHOLE, w.clone()).0
    );
    assert_ne!(
        run(&small(1), Shard::WHOLE, w.clone()).0,
        run(&small(2), Shard::WHOLE, w).0
    );
}

#[test]
fn bad_parameters_are_named() {
    let err = |cfg: DayConfig, shard: Shard, w: Range<Nanos>| match DayTrace::new(&cfg, shard, w) {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    };
    let mut c = small(0);
    c.scale = 0.0;
    assert!(err(c, Shard::WHOLE, DAY).contains("scale"));
    let mut c = small(0);
    c.buckets = 100;
    assert!(err(c, Shard::WHOLE, DAY).contains("buckets"));
    assert!(err(
        small(0),
        Shard {
            index: 0,
            count: 512
        },
        DAY
    )
    .contains("shard"));
    assert!(err(small(0), Shard::WHOLE, HOUR..HOUR).contains("window"));
    assert!("3/2".parse::<Shard>().is_err());
    assert!("x".parse::<Shard>().is_err());
    assert_eq!(
        "3/16".parse::<Shard>(),
        Ok(Shard {
            index: 3,
            count: 16
        })
    );
}
