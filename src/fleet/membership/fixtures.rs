//! Hand-built pools for tests: a fast and a slow chip that differ only in speed and
//! price, so the policies' behaviour can be predicted without the catalogue.

use super::*;
use crate::profile::{ChipSpec, ModelSpec};

pub fn chip(id: &str, tflops: f64, tbps: f64, price: f64, domestic: bool) -> ChipSpec {
    // Built from the profile fixture so new spec fields need no edit here.
    let mut c = crate::profile::fixtures::h20();
    c.id = id.into();
    c.name = id.into();
    c.domestic = domestic;
    c.bf16_tflops = tflops;
    c.int8_tops = Some(tflops * 2.0);
    c.bandwidth_tbps = tbps;
    c.price_per_hour_usd = price;
    c
}

pub fn model() -> ModelSpec {
    crate::profile::fixtures::llama3_8b()
}

/// A pool of `count` backends; `speed` scales compute and bandwidth (1.0 ≈ an H20).
pub fn pool(name: &str, count: u32, speed: f64, price: f64, domestic: bool) -> PoolConfig {
    let c = chip(name, 148.0 * speed, 4.0 * speed, price, domestic);
    let mut engine = crate::profile::fixtures::engine();
    engine.coefficients.max_batch = 64;
    PoolConfig::new(
        name,
        Arc::new(PerfModel::new(&c, &engine, &model(), 1, crate::profile::Dtype::Bf16).unwrap()),
        count,
    )
}

/// A fast foreign pool and a slow, cheap domestic one, `n` backends each.
pub fn fast_and_slow(n: u32) -> Membership {
    Membership::from_pools([
        pool("fast", n, 1.0, 2.0, false),
        pool("slow", n, 0.25, 0.8, true),
    ])
    .unwrap()
}
