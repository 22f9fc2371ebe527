//! Fault plans for virtual-time replay (`dujiang replay --faults FILE`): at a simulated
//! time, fail a backend or a whole pool, recover it, or slow it down by a factor, so a
//! planner can ask what a chip failure at peak does to p99 TTFT.
//!
//! ```toml
//! [[fault]]
//! at_s = 600.0        # simulated seconds from the trace's start
//! pool = "h20"        # or: backend = "h20-3" (the daemon's `<pool>-<index>` names)
//! kind = "fail"       # "fail" | "recover" | "slowdown"
//!
//! [[fault]]
//! at_s = 900.0
//! backend = "ascend-0"
//! kind = "slowdown"
//! factor = 3.0        # step times ×3 from then on; "recover" ends it
//! ```
//!
//! A slowed backend's engine lives on a [`crate::fleet::StretchClock`], the same clock the
//! daemon's drivers use, so the engine itself never knows about faults.

use crate::config::{parse_toml, ConfigError};
use crate::request::{Nanos, NANOS_PER_SEC};
use std::path::Path;

/// What happens to the targeted backends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FaultAction {
    /// Requests on it are moved elsewhere (or fail); it takes no work until recovered.
    Fail,
    /// Clears a failure and any slowdown.
    Recover,
    /// Step times are multiplied by this factor from now on.
    Slowdown(f64),
}

/// Which backends a fault hits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultTarget {
    Pool(String),
    /// `<pool>-<index>`, as the daemon names backends.
    Backend(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct FaultEvent {
    /// Its `[[fault]]` table's position in the file (0-based), which errors name: the
    /// events are kept in time order, not the file's.
    pub entry: usize,
    pub at_ns: Nanos,
    pub target: FaultTarget,
    pub action: FaultAction,
}

/// Fault events in time order (ties keep file order).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPlan {
    pub events: Vec<FaultEvent>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    #[serde(default)]
    fault: Vec<FaultSpec>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultSpec {
    at_s: f64,
    pool: Option<String>,
    backend: Option<String>,
    kind: String,
    factor: Option<f64>,
}

/// The largest slowdown a fault file or the Admin `InjectSlowdown` call accepts: a backend a
/// million times slower is as good as failed, and the stretch clock's products stay small.
pub const MAX_SLOWDOWN: f64 = 1e6;

/// Checks a slowdown factor: finite, at least 1 (a slowdown never speeds a backend up; a
/// factor like 1e-12 used to shrink step times to nothing and overflow the backend clock)
/// and at most [`MAX_SLOWDOWN`]. Shared by fault files and the daemon's Admin call.
pub fn check_slowdown_factor(factor: f64) -> Result<f64, String> {
    if factor.is_finite() && (1.0..=MAX_SLOWDOWN).contains(&factor) {
        Ok(factor)
    } else {
        Err(format!(
            "must be a slowdown factor from 1 to {MAX_SLOWDOWN:.0} (1 = normal speed), got {factor}"
        ))
    }
}

/// The line of the `n`-th (0-based) `[[fault]]` header, to place an error.
fn fault_line(src: &str, n: usize) -> Option<usize> {
    src.lines()
        .enumerate()
        .filter(|(_, l)| l.trim().starts_with("[[fault]]"))
        .nth(n)
        .map(|(i, _)| i + 1)
}

impl FaultPlan {
    pub fn parse(src: &str, file: &str) -> Result<FaultPlan, ConfigError> {
        let raw: PlanFile = parse_toml(src, file)?;
        let mut events = Vec::with_capacity(raw.fault.len());
        for (i, f) in raw.fault.into_iter().enumerate() {
            let err = |field: &str, message: String| {
                let mut e = ConfigError::new(file, message);
                e.line = fault_line(src, i);
                e.field = Some(format!("fault[{i}].{field}"));
                e
            };
            if !(f.at_s.is_finite() && f.at_s >= 0.0 && f.at_s < 1e9) {
                return Err(err(
                    "at_s",
                    format!(
                        "must be a time in seconds from 0 to below 1e9 (31 years), got {}",
                        f.at_s
                    ),
                ));
            }
            let target = match (f.pool, f.backend) {
                (Some(p), None) => FaultTarget::Pool(p),
                (None, Some(b)) => FaultTarget::Backend(b),
                _ => return Err(err("pool", "set exactly one of `pool` or `backend`".into())),
            };
            let action = match (f.kind.as_str(), f.factor) {
                ("fail", None) => FaultAction::Fail,
                ("recover", None) => FaultAction::Recover,
                ("slowdown", Some(x)) => match check_slowdown_factor(x) {
                    Ok(x) => FaultAction::Slowdown(x),
                    Err(message) => return Err(err("factor", message)),
                },
                ("slowdown", None) => {
                    return Err(err("factor", "a slowdown needs a `factor`".into()))
                }
                ("fail" | "recover", Some(_)) => {
                    return Err(err(
                        "factor",
                        format!(
                            "`factor` applies only to kind = \"slowdown\", not {:?}",
                            f.kind
                        ),
                    ))
                }
                (other, _) => {
                    return Err(err(
                        "kind",
                        format!(
                        "unknown kind {other:?}; expected \"fail\", \"recover\" or \"slowdown\""
                    ),
                    ))
                }
            };
            events.push(FaultEvent {
                entry: i,
                at_ns: (f.at_s * NANOS_PER_SEC as f64).round() as Nanos,
                target,
                action,
            });
        }
        events.sort_by_key(|e| e.at_ns);
        Ok(FaultPlan { events })
    }

    pub fn load(path: &Path) -> Result<FaultPlan, ConfigError> {
        let name = path.display().to_string();
        let src = crate::config::read_text(path, &name)?;
        FaultPlan::parse(&src, &name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_parses_and_sorts() {
        let src = r#"
[[fault]]
at_s = 900
backend = "h20-1"
kind = "slowdown"
factor = 3.0

[[fault]]
at_s = 60.5
pool = "h20"
kind = "fail"

[[fault]]
at_s = 120
pool = "h20"
kind = "recover"
"#;
        let plan = FaultPlan::parse(src, "faults.toml").unwrap();
        assert_eq!(
            plan.events,
            [
                FaultEvent {
                    entry: 1,
                    at_ns: 60_500_000_000,
                    target: FaultTarget::Pool("h20".into()),
                    action: FaultAction::Fail
                },
                FaultEvent {
                    entry: 2,
                    at_ns: 120_000_000_000,
                    target: FaultTarget::Pool("h20".into()),
                    action: FaultAction::Recover
                },
                FaultEvent {
                    entry: 0,
                    at_ns: 900_000_000_000,
                    target: FaultTarget::Backend("h20-1".into()),
                    action: FaultAction::Slowdown(3.0)
                },
            ]
        );
    }

    #[test]
    fn errors_name_the_fault_and_field() {
        let src = "[[fault]]\nat_s = 1\npool = \"a\"\nkind = \"fail\"\n\n[[fault]]\nat_s = 2\npool = \"a\"\nkind = \"explode\"\n";
        let e = FaultPlan::parse(src, "f.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("f.toml:6: field `fault[1].kind`: unknown kind \"explode\""),
            "{e}"
        );
        let e = FaultPlan::parse("[[fault]]\nat_s = 1\nkind = \"fail\"\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("exactly one of `pool` or `backend`"), "{e}");
        // Past the range is not "below 0".
        let e = FaultPlan::parse(
            "[[fault]]\nat_s = 1e30\npool = \"a\"\nkind = \"fail\"\n",
            "f.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("from 0 to below 1e9 (31 years), got 1000000000000000000000000000000"),
            "{e}"
        );
        let e = FaultPlan::parse(
            "[[fault]]\nat_s = 1\npool = \"a\"\nkind = \"slowdown\"\nfactor = -2\n",
            "f.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("fault[0].factor"), "{e}");
        // Below 1 a "slowdown" would speed the backend up; 1e-12 overflowed its clock.
        for bad in ["1e-12", "0.5", "0", "inf", "2e6"] {
            let src = format!(
                "[[fault]]\nat_s = 1\npool = \"a\"\nkind = \"fail\"\n\n\
                 [[fault]]\nat_s = 2\npool = \"a\"\nkind = \"slowdown\"\nfactor = {bad}\n"
            );
            let e = FaultPlan::parse(&src, "f.toml").unwrap_err().to_string();
            assert!(
                e.starts_with(
                    "f.toml:6: field `fault[1].factor`: must be a slowdown factor from 1"
                ),
                "{bad}: {e}"
            );
        }
        for good in ["1", "1.0", "3.5", "1e6"] {
            let src = format!(
                "[[fault]]\nat_s = 1\npool = \"a\"\nkind = \"slowdown\"\nfactor = {good}\n"
            );
            assert!(FaultPlan::parse(&src, "f.toml").is_ok(), "{good}");
        }
        let e = FaultPlan::parse(
            "[[fault]]\nat_s = 1\npool = \"a\"\nkind = \"fail\"\nwhen = 3\n",
            "f.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("when"), "{e}");
    }
}
