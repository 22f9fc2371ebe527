//! Calibration: fits a performance model's software coefficients to measured points.
//!
//! A points file lists measurements (a prefill, a decode step, or a closed-loop served
//! run) of one serving stack each. Points are grouped by the coefficient set they inform
//! (an engine on a chip family); each group is fitted on its own by bounded least squares
//! on log residuals ([`fit`]), then checked point by point with leave-one-out refits. A
//! [`Backend`] ties the generic fitter to a concrete performance model: which group a
//! point belongs to, which coefficients that group has, and the [`PerfModel`] a given
//! coefficient vector makes for a point. Pure: no I/O beyond what the caller passes in.

mod backend;
mod fit;
mod lengths;
mod points;
mod report;
mod workload;

pub use backend::{overlay, CatalogueBackend};
pub use fit::{fit, leave_one_out, Fit, FitError, FitOptions, Param, ParamStatus, Predictor};
pub use lengths::{normal_quantile, Lengths};
pub use points::{
    load_points, parse_csv_points, parse_points, parse_toml_points, Metric, Point, Workload, FIELDS,
};
pub use report::{pinned_ids, render_markdown, render_text, PointRow};
pub use workload::{closed_loop, predict, ServedRun};

use crate::profile::PerfModel;
use std::sync::Arc;

/// How points map onto a concrete performance model's coefficients.
pub trait Backend {
    /// The coefficient group a point informs (e.g. `vllm-0.7 on hopper`), or why the point
    /// cannot be modelled (unknown chip, engine or model).
    fn group(&self, point: &Point) -> Result<String, String>;
    /// The group's fittable coefficients, with bounds and current (prior) values.
    fn params(&self, group: &str) -> Vec<Param>;
    /// The performance model for `point` with the group's coefficients set to `values`.
    fn perf(&self, group: &str, values: &[f64], point: &Point) -> Result<PerfModel, String>;
}

/// One group's fit and its check.
#[derive(Clone, Debug)]
pub struct GroupFit {
    pub group: String,
    pub params: Vec<Param>,
    /// Indices into the points slice given to [`calibrate`].
    pub points: Vec<usize>,
    pub fit: Fit,
    /// Prediction of each point by a fit to the group's other points (same order as
    /// `points`; for a group of one point, the prior's prediction); `None` when skipped.
    pub loo: Option<Vec<f64>>,
    /// Predictions at the prior coefficients, before fitting.
    pub before: Vec<f64>,
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

/// Adapts a backend and one group's points to the fitter's [`Predictor`].
struct GroupPredictor<'a, B: Backend + ?Sized> {
    backend: &'a B,
    group: &'a str,
    points: Vec<&'a Point>,
}

impl<B: Backend + ?Sized> Predictor for GroupPredictor<'_, B> {
    fn predict(&self, params: &[f64], i: usize) -> Result<f64, String> {
        let p = self.points[i];
        let perf = self.backend.perf(self.group, params, p)?;
        predict(Arc::new(perf), p)
    }
}

/// Fits every group of `points` and checks each point by leave-one-out.
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
    let mut groups = Vec::new();
    for (group, idx) in names.into_iter().zip(members) {
        let params = backend.params(&group);
        let pred = GroupPredictor {
            backend,
            group: &group,
            points: idx.iter().map(|&i| &points[i]).collect(),
        };
        let measured: Vec<f64> = idx.iter().map(|&i| points[i].value).collect();
        let wrap = |source: FitError| match source {
            FitError::Predict { index, message } => {
                let p = &points[idx[index]];
                CalibrateError::Point {
                    place: p.place(),
                    id: p.id.clone(),
                    message,
                }
            }
            error => CalibrateError::Fit {
                group: group.clone(),
                error,
            },
        };
        let prior: Vec<f64> = params.iter().map(|p| p.prior).collect();
        let mut before = Vec::with_capacity(idx.len());
        for i in 0..idx.len() {
            let v = pred
                .predict(&prior, i)
                .map_err(|message| wrap(FitError::Predict { index: i, message }))?;
            before.push(v);
        }
        let mut f = fit(&params, &measured, &pred, opts).map_err(wrap)?;
        // Catalogue files carry four significant figures; report what those values
        // predict, so the report is exactly what the written overlay reproduces.
        for (v, p) in f.values.iter_mut().zip(&params) {
            *v = round_significant(*v, 4).clamp(p.lo, p.hi);
        }
        for (k, v) in f.predicted.iter_mut().enumerate() {
            *v = pred
                .predict(&f.values, k)
                .map_err(|message| wrap(FitError::Predict { index: k, message }))?;
        }
        // Without its one point a group has nothing to fit: its leave-one-out prediction
        // is the prior's.
        let loo = match (with_loo, idx.len()) {
            (false, _) => None,
            (true, 1) => Some(before.clone()),
            (true, _) => Some(leave_one_out(&params, &measured, &pred, opts, &f).map_err(wrap)?),
        };
        groups.push(GroupFit {
            group,
            params,
            points: idx,
            fit: f,
            loo,
            before,
        });
    }
    Ok(Calibration { points, groups })
}

/// `v` rounded to `digits` significant figures.
pub fn round_significant(v: f64, digits: i32) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let scale = 10f64.powi(digits - 1 - v.abs().log10().floor() as i32);
    (v * scale).round() / scale
}
