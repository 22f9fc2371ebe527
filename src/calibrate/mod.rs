//! Calibration: fits a performance model's software coefficients to measured points.
//!
//! A points file lists measurements (a prefill, a decode step, or a closed-loop served
//! run) of one serving stack each. Points are grouped by the coefficient set they inform
//! (an engine on a chip family). Groups that share coefficients are fitted together as one
//! pool by bounded least squares on log residuals ([`fit`]) — an engine release's software
//! across the chip families it runs on, an engine project's silicon coefficients across
//! its releases on one family (`pool.rs`) — then every point is checked by a leave-one-out
//! refit of its pool. A
//! [`Backend`] ties the generic fitter to a concrete performance model: which group a
//! point belongs to, which coefficients that group has, and the [`PerfModel`] a given
//! coefficient vector makes for a point. Pure: no I/O beyond what the caller passes in.

mod backend;
mod fit;
mod lengths;
pub mod observed;
mod points;
mod pool;
mod report;
mod workload;

pub use backend::{overlay, CatalogueBackend};
pub use fit::{fit, leave_one_out, Fit, FitError, FitOptions, Param, ParamStatus, Predictor};
pub use lengths::{normal_quantile, Lengths};
pub use points::{
    load_points, parse_csv_points, parse_points, parse_toml_points, Metric, Point, Workload, FIELDS,
};
pub use report::{goal_counts, pinned_ids, render_markdown, render_text, PointRow};
pub use workload::{closed_loop, predict, ServedRun};

use crate::profile::PerfModel;
use pool::{Layout, Slot};
use std::sync::Arc;

/// How points map onto a concrete performance model's coefficients. `Sync`: the leave-one-out
/// refits share one backend across rayon's threads.
pub trait Backend: Sync {
    /// The coefficient group a point informs (e.g. `vllm-0.7 on hopper`), or why the point
    /// cannot be modelled (unknown chip, engine or model).
    fn group(&self, point: &Point) -> Result<String, String>;
    /// The group's fittable coefficients, with bounds and current (prior) values.
    fn params(&self, group: &str) -> Vec<Param>;
    /// The performance model for `point` with the group's coefficients set to `values`.
    fn perf(&self, group: &str, values: &[f64], point: &Point) -> Result<PerfModel, String>;
    /// The key under which `group`'s coefficient `name` is shared (`pool.rs`): every group
    /// of the points giving the same coefficient the same key fits one shared value plus
    /// a deviation of its own held at zero. `None` keeps the coefficient the group's own.
    /// Groups that share any coefficient form one pool, fitted and left out together.
    fn share(&self, _group: &str, _name: &str) -> Option<String> {
        None
    }
    /// The coefficient of the same group that `name` is tied to by a ratio (see
    /// `pool.rs`), if any.
    fn tied(&self, _name: &str) -> Option<&'static str> {
        None
    }
}

/// One group's fit and its check.
#[derive(Clone, Debug)]
pub struct GroupFit {
    pub group: String,
    pub params: Vec<Param>,
    /// Indices into the points slice given to [`calibrate`].
    pub points: Vec<usize>,
    /// The group's coefficients and predictions (for pooled coefficients, the pool's value
    /// plus this group's deviation).
    pub fit: Fit,
    /// Prediction of each point by a fit to every other point of its pool (same order as
    /// `points`; for a pool of one point, the prior's prediction); `None` when skipped.
    pub loo: Option<Vec<f64>>,
    /// Predictions at the prior coefficients, before fitting.
    pub before: Vec<f64>,
    /// The other groups this group's pooled coefficients are shared with.
    pub pooled_with: Vec<String>,
    /// Per coefficient: shared with `pooled_with` (pool value + this group's deviation).
    pub pooled: Vec<bool>,
    /// Per coefficient, every point (index into the points slice) whose prediction moves
    /// with it and by how much: the group's own points, and for a pooled coefficient its
    /// siblings' too.
    pub pins: Vec<Vec<(usize, f64)>>,
}

/// Everything `dujiang calibrate` reports.
#[derive(Clone, Debug)]
pub struct Calibration {
    pub points: Vec<Point>,
    pub groups: Vec<GroupFit>,
}

/// Why calibration stopped.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error("{place}: point `{id}`: {message}")]
    Point {
        place: String,
        id: String,
        message: String,
    },
    #[error("group `{group}`: {error}")]
    Fit { group: String, error: FitError },
}

/// Adapts a backend and one pool's points to the fitter's [`Predictor`]: point `i` is
/// `points[i]` of group `groups[k]`, predicted with that group's coefficients.
struct PoolPredictor<'a, B: Backend + ?Sized> {
    backend: &'a B,
    groups: Vec<&'a str>,
    layout: &'a Layout,
    points: Vec<(usize, &'a Point)>,
}

impl<B: Backend + ?Sized> PoolPredictor<'_, B> {
    fn predict_with(&self, values: &[f64], i: usize) -> Result<f64, String> {
        let (k, p) = self.points[i];
        let perf = self.backend.perf(self.groups[k], values, p)?;
        predict(Arc::new(perf), p)
    }
}

impl<B: Backend + ?Sized> Predictor for PoolPredictor<'_, B> {
    fn predict(&self, params: &[f64], i: usize) -> Result<f64, String> {
        let k = self.points[i].0;
        self.predict_with(&self.layout.values(params, k), i)
    }
}

/// Fits every pool of groups of `points` and checks each point by leave-one-out.
pub fn calibrate<B: Backend + ?Sized>(
    points: Vec<Point>,
    backend: &B,
    opts: FitOptions,
    with_loo: bool,
) -> Result<Calibration, CalibrateError> {
    let mut names: Vec<String> = Vec::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    for (i, p) in points.iter().enumerate() {
        let g = backend.group(p).map_err(|message| CalibrateError::Point {
            place: p.place(),
            id: p.id.clone(),
            message,
        })?;
        match names.iter().position(|n| *n == g) {
            Some(k) => members[k].push(i),
            None => {
                names.push(g);
                members.push(vec![i]);
            }
        }
    }
    // Pools: groups joined by any shared coefficient (connected components), in order of
    // their first group; a group that shares nothing is its own pool.
    let pools = pools_of(backend, &names);
    let mut groups: Vec<GroupFit> = Vec::new();
    for pool in pools {
        groups.extend(fit_pool(
            &points, backend, opts, with_loo, &names, &members, &pool,
        )?);
    }
    // Report in the order groups first appear in the points.
    groups.sort_by_key(|g| names.iter().position(|n| *n == g.group));
    Ok(Calibration { points, groups })
}

/// Groups (indices into `names`) joined into pools by the coefficients they share, each
/// pool in order of its first group.
fn pools_of<B: Backend + ?Sized>(backend: &B, names: &[String]) -> Vec<Vec<usize>> {
    let keys: Vec<Vec<(String, String)>> = names
        .iter()
        .map(|g| {
            backend
                .params(g)
                .iter()
                .filter_map(|p| backend.share(g, &p.name).map(|k| (p.name.clone(), k)))
                .collect()
        })
        .collect();
    // Union-find over groups: two groups giving one coefficient the same key are joined.
    let mut root: Vec<usize> = (0..names.len()).collect();
    fn find(root: &mut [usize], mut i: usize) -> usize {
        while root[i] != i {
            root[i] = root[root[i]];
            i = root[i];
        }
        i
    }
    for a in 0..names.len() {
        for b in a + 1..names.len() {
            if keys[a].iter().any(|k| keys[b].contains(k)) {
                let (ra, rb) = (find(&mut root, a), find(&mut root, b));
                root[ra.max(rb)] = ra.min(rb);
            }
        }
    }
    let mut pools: Vec<(usize, Vec<usize>)> = Vec::new();
    for k in 0..names.len() {
        let r = find(&mut root, k);
        match pools.iter_mut().find(|(pr, _)| *pr == r) {
            Some((_, gs)) => gs.push(k),
            None => pools.push((r, vec![k])),
        }
    }
    pools.into_iter().map(|(_, gs)| gs).collect()
}

/// Fits the groups `pool` (indices into `names`/`members`) together.
fn fit_pool<B: Backend + ?Sized>(
    points: &[Point],
    backend: &B,
    opts: FitOptions,
    with_loo: bool,
    names: &[String],
    members: &[Vec<usize>],
    pool: &[usize],
) -> Result<Vec<GroupFit>, CalibrateError> {
    let group_params: Vec<Vec<Param>> = pool.iter().map(|&k| backend.params(&names[k])).collect();
    let layout = Layout::new(
        group_params,
        |k, n| backend.share(&names[pool[k]], n),
        |n| backend.tied(n),
        opts.pool_weight,
    );
    // The pool's points, group by group; `rows[k]` are group k's rows.
    let mut pool_points: Vec<(usize, &Point)> = Vec::new();
    let mut global: Vec<usize> = Vec::new();
    let mut rows: Vec<Vec<usize>> = Vec::new();
    for (k, &g) in pool.iter().enumerate() {
        let mut r = Vec::new();
        for &i in &members[g] {
            r.push(pool_points.len());
            pool_points.push((k, &points[i]));
            global.push(i);
        }
        rows.push(r);
    }
    let pred = PoolPredictor {
        backend,
        groups: pool.iter().map(|&k| names[k].as_str()).collect(),
        layout: &layout,
        points: pool_points,
    };
    let measured: Vec<f64> = global.iter().map(|&i| points[i].value).collect();
    let label = pool
        .iter()
        .map(|&k| names[k].as_str())
        .collect::<Vec<_>>()
        .join(" + ");
    let wrap = |source: FitError| match source {
        FitError::Predict { index, message } => {
            let p = &points[global[index]];
            CalibrateError::Point {
                place: p.place(),
                id: p.id.clone(),
                message,
            }
        }
        error => CalibrateError::Fit {
            group: label.clone(),
            error,
        },
    };
    // Predictions at each group's own priors, before fitting.
    let priors: Vec<Vec<f64>> = layout
        .group_params
        .iter()
        .map(|gp| gp.iter().map(|p| p.prior).collect())
        .collect();
    let mut before = vec![0.0; measured.len()];
    for (r, b) in before.iter_mut().enumerate() {
        *b = pred
            .predict_with(&priors[pred.points[r].0], r)
            .map_err(|message| wrap(FitError::Predict { index: r, message }))?;
    }
    let joint = fit(&layout.params, &measured, &pred, opts).map_err(wrap)?;
    // Without its one point a pool has nothing to fit: its leave-one-out prediction is the
    // prior's.
    let loo = match (with_loo, measured.len()) {
        (false, _) => None,
        (true, 1) => Some(before.clone()),
        (true, _) => Some(leave_one_out(&layout.params, &measured, &pred, opts).map_err(wrap)?),
    };
    let mut out = Vec::with_capacity(pool.len());
    for (k, &g) in pool.iter().enumerate() {
        let gp = &layout.group_params[k];
        let mut status = Vec::with_capacity(gp.len());
        let mut values = Vec::with_capacity(gp.len());
        for (j, p) in gp.iter().enumerate() {
            let (s, v) = match layout.slots[k][j] {
                Slot::Own(i) => (joint.status[i], joint.values[i]),
                Slot::Pooled { shared, dev } => {
                    let v = layout.value(&joint.values, k, j);
                    match (joint.status[shared], joint.status[dev]) {
                        // Nothing in the pool depends on it: the group's own prior.
                        (ParamStatus::Unconstrained, _) => (ParamStatus::Unconstrained, p.prior),
                        (_, ParamStatus::Unconstrained) => (ParamStatus::Shared, v),
                        _ if v <= p.lo + 1e-9 * p.scale => (ParamStatus::AtLower, v),
                        _ if v >= p.hi - 1e-9 * p.scale => (ParamStatus::AtUpper, v),
                        _ => (ParamStatus::Fitted, v),
                    }
                }
                Slot::Tied { ratio, .. } => {
                    let v = layout.value(&joint.values, k, j);
                    match joint.status[ratio] {
                        // No point tells it apart from its base: it moves with the base.
                        ParamStatus::Unconstrained => (ParamStatus::Tied, v),
                        _ if v <= p.lo + 1e-9 * p.scale => (ParamStatus::AtLower, v),
                        _ if v >= p.hi - 1e-9 * p.scale => (ParamStatus::AtUpper, v),
                        _ => (ParamStatus::Fitted, v),
                    }
                }
            };
            status.push(s);
            // Catalogue files carry four significant figures; report what those values
            // predict, so the report is exactly what the written overlay reproduces.
            values.push(round_significant(v, 4).clamp(p.lo, p.hi));
        }
        let mut predicted = Vec::with_capacity(rows[k].len());
        for &r in &rows[k] {
            predicted.push(
                pred.predict_with(&values, r)
                    .map_err(|message| wrap(FitError::Predict { index: r, message }))?,
            );
        }
        let sensitivity = rows[k]
            .iter()
            .map(|&r| {
                (0..gp.len())
                    .map(|j| {
                        joint
                            .sensitivity
                            .get(r)
                            .map_or(0.0, |row| row[layout.pin_column(k, j)])
                    })
                    .collect()
            })
            .collect();
        let pins = (0..gp.len())
            .map(|j| {
                let col = layout.pin_column(k, j);
                let from: Vec<usize> = if layout.is_pooled(k, j) {
                    (0..global.len()).collect()
                } else {
                    rows[k].clone()
                };
                from.into_iter()
                    .map(|r| {
                        let s = joint.sensitivity.get(r).map_or(0.0, |row| row[col]);
                        (global[r], s)
                    })
                    .collect()
            })
            .collect();
        let cost = rows[k]
            .iter()
            .zip(&predicted)
            .map(|(&r, v)| (v / measured[r]).ln().powi(2))
            .sum();
        out.push(GroupFit {
            group: names[g].clone(),
            params: gp.clone(),
            points: members[g].clone(),
            fit: Fit {
                values,
                status,
                predicted,
                sensitivity,
                iterations: joint.iterations,
                cost,
            },
            loo: loo
                .as_ref()
                .map(|l| rows[k].iter().map(|&r| l[r]).collect()),
            before: rows[k].iter().map(|&r| before[r]).collect(),
            pooled_with: pool
                .iter()
                .filter(|&&o| o != g)
                .map(|&o| names[o].clone())
                .collect(),
            pooled: (0..gp.len()).map(|j| layout.is_pooled(k, j)).collect(),
            pins,
        });
    }
    Ok(out)
}

/// `v` rounded to `digits` significant figures.
pub fn round_significant(v: f64, digits: i32) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let scale = 10f64.powi(digits - 1 - v.abs().log10().floor() as i32);
    (v * scale).round() / scale
}
