//! The calibration report: every point's measurement, prediction before and after the
//! fit, in-sample error and leave-one-out error, then each group's coefficients with the
//! points that pin them. Rendered as aligned text for the terminal and as Markdown for
//! `docs/calibration.md` (the same rows, so the doc is the report).

use super::fit::ParamStatus;
use super::{Calibration, GroupFit};
use std::fmt::Write as _;

/// One point's line of the report.
#[derive(Clone, Debug, PartialEq)]
pub struct PointRow {
    pub id: String,
    pub group: String,
    pub chip: String,
    pub engine: String,
    pub model: String,
    pub tp: u32,
    pub dtype: String,
    pub workload: String,
    pub metric: String,
    pub measured: f64,
    pub before: f64,
    pub predicted: f64,
    /// (predicted − measured) / measured.
    pub error: f64,
    pub loo_predicted: Option<f64>,
    /// max(loo/measured, measured/loo): 1.0 is perfect, the goal is ≤ 1.25.
    pub loo_factor: Option<f64>,
    pub source: String,
}

impl Calibration {
    /// The report's rows, grouped as fitted.
    pub fn rows(&self) -> Vec<PointRow> {
        let mut rows = Vec::new();
        for g in &self.groups {
            for (k, &i) in g.points.iter().enumerate() {
                let p = &self.points[i];
                let predicted = g.fit.predicted[k];
                let loo = g.loo.as_ref().map(|l| l[k]);
                rows.push(PointRow {
                    id: p.id.clone(),
                    group: g.group.clone(),
                    chip: p.chip.clone(),
                    engine: p.engine.clone(),
                    model: p.model.clone(),
                    tp: p.tp,
                    dtype: p.dtype.clone(),
                    workload: p.workload_label(),
                    metric: p.metric.to_string(),
                    measured: p.value,
                    before: g.before[k],
                    predicted,
                    error: predicted / p.value - 1.0,
                    loo_predicted: loo,
                    loo_factor: loo.map(|l| (l / p.value).max(p.value / l)),
                    source: p.source.clone(),
                });
            }
        }
        rows
    }
}

/// Points whose sensitivity to parameter `j` is at least a tenth of the largest, most
/// sensitive first (at most four), as `id (s)`.
/// A pooled coefficient lists the points of every group in its pool.
fn pinned_by(cal: &Calibration, g: &GroupFit, j: usize) -> String {
    let mut s: Vec<(f64, &str)> = g.pins[j]
        .iter()
        .map(|&(i, v)| (v.abs(), cal.points[i].id.as_str()))
        .collect();
    s.sort_by(|a, b| b.0.total_cmp(&a.0));
    let top = s.first().map_or(0.0, |t| t.0);
    if top < 1e-3 {
        return "nothing".into();
    }
    s.iter()
        .filter(|(v, _)| *v >= top / 10.0)
        .take(4)
        .map(|(v, id)| format!("{id} ({v:.2})"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn status_text(g: &GroupFit, j: usize) -> &'static str {
    match (g.fit.status[j], g.pooled[j]) {
        (ParamStatus::Fitted, false) => "fitted",
        (ParamStatus::Fitted, true) => "fitted (pooled)",
        (ParamStatus::AtLower, false) => "at lower bound",
        (ParamStatus::AtLower, true) => "at lower bound (pooled)",
        (ParamStatus::AtUpper, false) => "at upper bound",
        (ParamStatus::AtUpper, true) => "at upper bound (pooled)",
        (ParamStatus::Unconstrained, _) => "NOT FITTED: no point depends on it; kept at prior",
        (ParamStatus::Shared, _) => {
            "pooled: no point of this group depends on it; the value its siblings fit"
        }
        (ParamStatus::Tied, _) => {
            "tied: no point tells it apart from its base; the prior ratio to the base's fit"
        }
    }
}

/// Points within ±15% in-sample and within ×1.25 leave-one-out (the goals).
pub fn goal_counts(cal: &Calibration) -> (usize, usize, usize) {
    let rows = cal.rows();
    let in_sample = rows.iter().filter(|r| r.error.abs() <= 0.15).count();
    let loo = rows
        .iter()
        .filter(|r| r.loo_factor.is_some_and(|f| f <= 1.25))
        .count();
    (rows.len(), in_sample, loo)
}

/// ", pooled with …" for a group fitted with siblings (its software with the engine's
/// other families, its silicon coefficients with its own family's).
fn pooled_note(g: &GroupFit) -> String {
    if g.pooled_with.is_empty() {
        String::new()
    } else {
        format!(", pooled with {}", g.pooled_with.join(", "))
    }
}

/// The ids of the points that pin parameter `j` (as [`pinned_by`], without the numbers).
pub fn pinned_ids(cal: &Calibration, g: &GroupFit, j: usize) -> String {
    let text = pinned_by(cal, g, j);
    text.split(", ")
        .map(|s| s.split(" (").next().unwrap_or(s))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A number with about four significant figures, without exponent noise for the
/// magnitudes that occur here.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else if a >= 0.01 || a == 0.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.2e}")
    }
}

fn pct(e: f64) -> String {
    format!("{:+.1}%", e * 100.0)
}

fn factor(f: Option<f64>) -> String {
    f.map_or("-".into(), |f| format!("×{f:.3}"))
}

/// The report as Markdown tables (what `docs/calibration.md` embeds).
pub fn render_markdown(cal: &Calibration) -> String {
    let mut out = String::new();
    out.push_str(
        "| point | chip | engine | model | tp | dtype | workload | metric | measured | prior | fitted | error | leave-one-out | LOO factor |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in cal.rows() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.id,
            r.chip,
            r.engine,
            r.model,
            r.tp,
            r.dtype,
            r.workload,
            r.metric,
            num(r.measured),
            num(r.before),
            num(r.predicted),
            pct(r.error),
            r.loo_predicted.map_or("-".into(), num),
            factor(r.loo_factor),
        );
    }
    for g in &cal.groups {
        let _ = writeln!(
            out,
            "\n**{}** ({} points{}, {} iterations, Σ log² residual {:.4})\n",
            g.group,
            g.points.len(),
            pooled_note(g),
            g.fit.iterations,
            g.fit.cost
        );
        out.push_str("| coefficient | prior | fitted | bounds | status | pinned by (sensitivity) |\n|---|---|---|---|---|---|\n");
        for (j, p) in g.params.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | [{}, {}] | {} | {} |",
                p.name,
                num(p.prior),
                num(g.fit.values[j]),
                num(p.lo),
                num(p.hi),
                status_text(g, j),
                pins(cal, g, j),
            );
        }
    }
    out
}

/// "pinned by" for the report: nothing for a coefficient left unfitted.
fn pins(cal: &Calibration, g: &GroupFit, j: usize) -> String {
    if g.fit.status[j] == ParamStatus::Unconstrained {
        "-".into()
    } else {
        pinned_by(cal, g, j)
    }
}

/// The report as aligned plain text for the terminal.
pub fn render_text(cal: &Calibration) -> String {
    let mut out = String::new();
    let rows = cal.rows();
    let id_w = rows.iter().map(|r| r.id.len()).max().unwrap_or(5).max(5);
    for g in &cal.groups {
        let _ = writeln!(
            out,
            "== {} ({} points{}, {} iterations, sum of squared log residuals {:.4})",
            g.group,
            g.points.len(),
            pooled_note(g),
            g.fit.iterations,
            g.fit.cost
        );
        let _ = writeln!(
            out,
            "  {:<id_w$}  {:<22} {:<28} {:>10} {:>10} {:>10} {:>8} {:>10} {:>7}",
            "point", "workload", "metric", "measured", "prior", "fitted", "error", "LOO", "LOO ×"
        );
        for r in rows.iter().filter(|r| r.group == g.group) {
            let _ = writeln!(
                out,
                "  {:<id_w$}  {:<22} {:<28} {:>10} {:>10} {:>10} {:>8} {:>10} {:>7}",
                r.id,
                r.workload,
                r.metric,
                num(r.measured),
                num(r.before),
                num(r.predicted),
                pct(r.error),
                r.loo_predicted.map_or("-".into(), num),
                factor(r.loo_factor),
            );
        }
        let _ = writeln!(out, "  coefficients:");
        for (j, p) in g.params.iter().enumerate() {
            let _ = writeln!(
                out,
                "    {:<28} {:>10} -> {:>10}  [{}, {}]  {}; pinned by: {}",
                p.name,
                num(p.prior),
                num(g.fit.values[j]),
                num(p.lo),
                num(p.hi),
                status_text(g, j),
                pins(cal, g, j),
            );
        }
        out.push('\n');
    }
    let worst = rows.iter().map(|r| r.error.abs()).fold(0.0, f64::max);
    let worst_loo = rows.iter().filter_map(|r| r.loo_factor).fold(1.0, f64::max);
    let (n, in_sample, loo) = goal_counts(cal);
    let _ = writeln!(
        out,
        "{} points in {} groups: worst in-sample error {:.1}%, worst leave-one-out ×{:.3}; \
         {in_sample}/{n} within ±15%, {loo}/{n} within ×1.25 leave-one-out",
        rows.len(),
        cal.groups.len(),
        worst * 100.0,
        worst_loo
    );
    out
}
