//! The report's account of a fleet of identical cells: the partition, the assumption that
//! makes replaying cells apart exact, and the fleet's size and spend per cell and whole.

use crate::fleet::{CellSpec, FleetTotals, PoolConfig};
use serde::{Deserialize, Serialize};

/// How a cellular fleet was replayed, and how big it is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CellsReport {
    pub count: u32,
    /// The partition key (`session`).
    pub key: String,
    pub assumption: String,
    /// One cell (the fleet file's pools) and the whole fleet (`count` cells).
    pub cell: FleetTotals,
    pub fleet: FleetTotals,
}

impl CellsReport {
    pub fn new(spec: CellSpec, pools: &[PoolConfig]) -> CellsReport {
        CellsReport {
            count: spec.count,
            key: spec.key.as_str().to_string(),
            assumption: format!(
                "routing never crosses cells: each of the {} cells runs the fleet file's pools \
                 on the requests whose {} hashes into it, so the whole fleet is {} x one cell \
                 (backends, chips and cost per hour; the domestic share is a cell's)",
                spec.count,
                spec.key.as_str(),
                spec.count
            ),
            cell: FleetTotals::of(pools, 1),
            fleet: FleetTotals::of(pools, spec.count),
        }
    }

    /// Lines for the text report.
    pub fn to_text(&self) -> String {
        let chips = |t: &FleetTotals| {
            t.chips
                .iter()
                .map(|(c, n)| format!("{n} {c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "cells: {} by {} hash; {}\n  one cell:    {} backends ({}), ${:.2}/h, domestic {:.1}% of chips, {:.1}% of spend\n  whole fleet: {} backends ({}), ${:.2}/h, domestic {:.1}% of chips, {:.1}% of spend\n",
            self.count,
            self.key,
            self.assumption,
            self.cell.backends,
            chips(&self.cell),
            self.cell.cost_per_hour_usd,
            self.cell.domestic_chip_share * 100.0,
            self.cell.domestic_spend_share * 100.0,
            self.fleet.backends,
            chips(&self.fleet),
            self.fleet.cost_per_hour_usd,
            self.fleet.domestic_chip_share * 100.0,
            self.fleet.domestic_spend_share * 100.0,
        )
    }
}
