//! A report as people read it: the table `dujiang replay`, `load` and `plan` print
//! (per policy and pool: counts, latency percentiles, SLO attainment, goodput, cost), the
//! SLO's tightest hours of a generated day, and the JSON that tools read.

use super::*;
use std::fmt::Write as _;

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serialises")
    }

    /// The table printed for people.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} of {} on fleet {}: {:.1} s simulated in {:.2} s wall",
            self.source, self.trace, self.fleet, self.simulated_seconds, self.wall_seconds
        );
        if let Some(cells) = &self.cells {
            s.push_str(&cells.to_text());
        }
        let header = format!(
            "{:<22} {:>8} {:>8} {:>7} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9} {:>8} {:>9} {:>9} {:>7}",
            "policy / pool",
            "requests",
            "complete",
            "reject",
            "TTFT p50",
            "TTFT p99",
            "TPOT p99",
            "E2E p50",
            "E2E p99",
            "queue p99",
            "SLO",
            "goodput/s",
            "cost $",
            "dom."
        );
        let _ = writeln!(s, "{header}");
        let row = |s: &mut String, name: &str, st: &Stats| {
            let _ = writeln!(
                s,
                "{:<22} {:>8} {:>8} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>8.0} {:>8.0} {:>9.1} {:>7.1}% {:>9.2} {:>9.2} {:>6.1}%",
                truncate(name, 22),
                st.requests,
                st.completed,
                st.rejected,
                st.ttft_ms.p50,
                st.ttft_ms.p99,
                st.tpot_ms.p99,
                st.e2e_ms.p50,
                st.e2e_ms.p99,
                st.queue_ms.p99,
                st.slo_attainment * 100.0,
                st.goodput_rps,
                st.cost_usd,
                st.domestic_token_share * 100.0
            );
        };
        for p in &self.policies {
            row(&mut s, &p.policy, &p.stats);
            for pool in &p.pools {
                let name = match pool.role.as_str() {
                    "" | "mixed" => format!("  {} ({})", pool.pool, pool.chip),
                    role => format!("  {} {role} ({})", pool.pool, pool.chip),
                };
                row(&mut s, &name, &pool.stats);
            }
            if let Some(line) = tightest_hours(&p.hourly, self.day_start_hour) {
                s.push_str(&line);
            }
            if p.stats.kv_transfers > 0 {
                let t = &p.stats.transfer_ms;
                let _ = writeln!(
                    s,
                    "  KV transfers: {} (hand-off to arrival: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms)",
                    p.stats.kv_transfers, t.p50, t.p99, t.max
                );
            }
        }
        let _ = writeln!(s, "latencies in ms; SLO = share of requests meeting TTFT and TPOT bounds; dom. = share of output tokens served by domestic chips");
        s
    }
}

/// `  SLO tightest: …`, the three hours of lowest attainment, for a run of several hours.
fn tightest_hours(hourly: &[HourSlo], day_start: Option<f64>) -> Option<String> {
    let mut hours: Vec<&HourSlo> = hourly.iter().filter(|h| h.requests > 0).collect();
    if hours.len() < 2 {
        return None;
    }
    hours.sort_by(|a, b| {
        a.slo_attainment
            .total_cmp(&b.slo_attainment)
            .then(a.hour.cmp(&b.hour))
    });
    let label = |h: u32| match day_start {
        Some(start) => {
            let at = (start + f64::from(h)).rem_euclid(24.0);
            format!(
                "{:02}:{:02}",
                at.floor() as u32,
                ((at.fract() * 60.0).round() as u32).min(59)
            )
        }
        None => format!("hour {h}"),
    };
    let worst: Vec<String> = hours
        .iter()
        .take(3)
        .map(|h| {
            format!(
                "{} {:.2}% of {}",
                label(h.hour),
                h.slo_attainment * 100.0,
                h.requests
            )
        })
        .collect();
    Some(format!(
        "  SLO tightest (by hour of arrival): {}\n",
        worst.join(", ")
    ))
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).chain(std::iter::once('…')).collect()
    }
}
