//! Cells: a fleet file's `cells = N` deploys its pools N times over, as identical cells,
//! each serving the traffic whose partition key hashes into it (see [`crate::trace::cells`]
//! for the rule). Routing never crosses cells, so one cell replayed on its own slice of the
//! traffic is exact, and the whole fleet is N times a cell: N times its backends, chips and
//! cost per hour, at the same domestic share. That is how provider-scale stacks deploy
//! (tens of thousands of backends in cells of a few thousand), and it is what lets a day of
//! them replay as N independent pieces.
//!
//! ```toml
//! cells = 64              # default 1: the pools below are one cell
//! cell_key = "session"    # default "session": the partition key
//! ```
//!
//! `dujiang serve` runs one cell (the pools as written); `dujiang replay` runs all of them,
//! or with `--shard I/N` the cells `c ≡ I (mod N)`.

use super::membership::PoolConfig;
use crate::config::ConfigError;
use crate::trace::cells::CELL_SLOTS;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most cells a fleet can be cut into (the partition hash's slots).
pub const MAX_CELLS: u32 = CELL_SLOTS;

/// What traffic is partitioned by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CellKey {
    /// A record's session id (a record without one is its own session): every turn of a
    /// conversation lands in the same cell, so its prefix cache stays useful.
    #[default]
    Session,
}

impl CellKey {
    pub fn as_str(self) -> &'static str {
        match self {
            CellKey::Session => "session",
        }
    }
}

/// A fleet's cells: how many, and by what key traffic is split between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellSpec {
    pub count: u32,
    pub key: CellKey,
}

impl Default for CellSpec {
    fn default() -> Self {
        CellSpec {
            count: 1,
            key: CellKey::Session,
        }
    }
}

impl CellSpec {
    /// Checks a fleet file's `cells` and `cell_key` (as written, absent when `None`);
    /// errors name the file, line and field.
    pub fn from_file(
        file: &str,
        src: &str,
        count: Option<i64>,
        key: Option<&str>,
    ) -> Result<CellSpec, ConfigError> {
        let count = match count {
            None => 1,
            Some(n) if n < 1 => {
                return Err(ConfigError::at_field(
                    file,
                    src,
                    "cells",
                    format!("{n}: a fleet has at least 1 cell"),
                ))
            }
            Some(n) if n > i64::from(MAX_CELLS) => {
                return Err(ConfigError::at_field(
                    file,
                    src,
                    "cells",
                    format!("{n} is above the limit of {MAX_CELLS} cells"),
                ))
            }
            Some(n) => n as u32,
        };
        let key = match key {
            None | Some("session") => CellKey::Session,
            Some("user") => {
                return Err(ConfigError::at_field(
                    file,
                    src,
                    "cell_key",
                    "`user` needs user ids, which no supported trace format carries; use \
                     \"session\" (a user's conversations then spread over cells, each \
                     conversation whole)",
                ))
            }
            Some(other) => {
                return Err(ConfigError::at_field(
                    file,
                    src,
                    "cell_key",
                    format!("unknown partition key `{other}`; known: session"),
                ))
            }
        };
        Ok(CellSpec { count, key })
    }
}

/// A fleet's size and spend: of one cell, or of the whole fleet of cells.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetTotals {
    pub backends: u64,
    /// Chips (backends × tensor parallelism) by chip id.
    pub chips: BTreeMap<String, u64>,
    pub cost_per_hour_usd: f64,
    /// Domestic chips' share of all chips, and of the hourly spend.
    pub domestic_chip_share: f64,
    pub domestic_spend_share: f64,
}

impl FleetTotals {
    /// `cells` copies of `pools`.
    pub fn of(pools: &[PoolConfig], cells: u32) -> FleetTotals {
        let cells = u64::from(cells);
        let mut t = FleetTotals::default();
        let (mut domestic_chips, mut domestic_cost) = (0u64, 0.0);
        for p in pools {
            let chips = u64::from(p.count) * u64::from(p.perf.tp) * cells;
            t.backends += u64::from(p.count) * cells;
            *t.chips.entry(p.perf.chip.id.clone()).or_default() += chips;
            let cost = p.cost_per_hour_usd() * cells as f64;
            t.cost_per_hour_usd += cost;
            if p.domestic() {
                domestic_chips += chips;
                domestic_cost += cost;
            }
        }
        let all_chips: u64 = t.chips.values().sum();
        let share = |a: f64, b: f64| if b > 0.0 { round6(a / b) } else { 0.0 };
        t.domestic_chip_share = share(domestic_chips as f64, all_chips as f64);
        t.domestic_spend_share = share(domestic_cost, t.cost_per_hour_usd);
        t.cost_per_hour_usd = round6(t.cost_per_hour_usd);
        t
    }
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_keys_are_checked_with_their_place() {
        let src = "name = \"t\"\ncells = 0\ncell_key = \"user\"\n";
        let ok = CellSpec::from_file("f.toml", src, Some(8), None).unwrap();
        assert_eq!((ok.count, ok.key), (8, CellKey::Session));
        assert_eq!(
            CellSpec::from_file("f.toml", src, None, None).unwrap(),
            CellSpec::default()
        );
        for (count, key, line, field, says) in [
            (Some(0), None, 2, "cells", "at least 1"),
            (Some(-3), None, 2, "cells", "at least 1"),
            (Some(65_537), None, 2, "cells", "limit of 65536"),
            (Some(2), Some("user"), 3, "cell_key", "no supported trace"),
            (Some(2), Some("region"), 3, "cell_key", "known: session"),
        ] {
            let err = CellSpec::from_file("f.toml", src, count, key).unwrap_err();
            assert_eq!(err.line, Some(line), "{err}");
            assert_eq!(err.field.as_deref(), Some(field), "{err}");
            assert!(
                err.to_string().starts_with(&format!("f.toml:{line}")),
                "{err}"
            );
            assert!(err.message.contains(says), "{err}");
        }
    }
}
