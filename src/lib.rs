//! dujiang routes LLM chat requests across pools of heterogeneous accelerators (Huawei
//! Ascend, Cambricon MLU, NVIDIA H20) using per-chip performance models.
//!
//! The crate is split into a pure core (`profile`, `engine`, `policy`, `fleet`,
//! `admission`, `trace`, `sim`, `plan`) that never touches tokio, clocks or sockets, and
//! drivers that pace that core: `sim` in virtual time, `serve` in wall-clock time. Because
//! both drivers run the same engine and policy code, a trace replayed in virtual time
//! predicts what the daemon does.
#![forbid(unsafe_code)]

pub mod admission;
pub mod calibrate;
pub mod cli;
pub mod config;
pub mod engine;
pub mod fleet;
pub mod loadgen;
pub mod metrics;
pub mod openai_client;
pub mod plan;
pub mod policy;
pub mod profile;
pub mod request;
pub mod serve;
pub mod sim;
pub mod tokens;
pub mod trace;
pub mod wire;
