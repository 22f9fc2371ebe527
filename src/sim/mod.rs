//! Virtual-time simulation: the same engines, policies and admission control as the
//! daemon, driven by an event queue instead of a clock, so a day of traffic replays in
//! seconds and the result predicts what the daemon would do.

pub mod cells;
pub mod faults;
pub mod html;
mod replay;
pub mod report;
pub mod totals;
mod transfer;
mod wake;

pub use cells::CellsReport;
pub use faults::{FaultAction, FaultEvent, FaultPlan, FaultTarget};
pub use replay::{FaultSummary, Replay, ReplayConfig, StragglerConfig};
pub use report::{PolicyReport, PoolReport, Report, Stats};
pub use totals::{merge_runs, PoolFacts, RunTotals};
pub use transfer::Transfers;

#[cfg(test)]
mod pd_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod truth_tests;
