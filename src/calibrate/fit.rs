//! A small bounded least-squares fitter, generic over `predict(params, point) -> value`.
//!
//! Residuals are logarithmic, `ln(predicted / measured)`, so a 10% miss on a 20 ms TTFT
//! and on a 5,000 tokens/s throughput weigh the same. Parameters live in boxes (an
//! efficiency in (0, 1], an overhead ≥ 0); the solver is projected Levenberg–Marquardt
//! with a forward-difference Jacobian, in variables scaled by each parameter's prior, so
//! one damping works for a 0.5 efficiency and a 300 µs overhead alike. Problems here are
//! tiny (a dozen points, a handful of parameters), so a dense normal-equation solve is
//! plenty.
//!
//! A weak pull towards each parameter's prior (`prior_weight` per parameter, in the same
//! log-like units as the residuals) keeps directions that the points do not pin from
//! drifting: without it two overheads that only ever appear as a sum would wander along
//! their sum, and leave-one-out refits would swing. A parameter that no point moves at
//! all (a zero Jacobian column) is not fitted: it stays at its prior and is reported so.

use rayon::prelude::*;

/// One fitted coefficient: its name, box, and the value it starts from and is pulled to.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: String,
    pub lo: f64,
    pub hi: f64,
    pub prior: f64,
    /// The unit the solver measures this parameter in (steps, prior pull, sensitivity):
    /// its prior, unless that is zero and a typical magnitude is given instead.
    pub scale: f64,
    /// Weight of the pull towards `prior`, when not [`FitOptions::prior_weight`] (a pooled
    /// coefficient's per-family deviation is held more firmly than a free coefficient).
    pub pull: Option<f64>,
}

impl Param {
    /// A parameter measured in units of its prior, or of a hundredth of its box when the
    /// prior is zero (see [`Param::with_typical`]).
    pub fn new(name: impl Into<String>, lo: f64, hi: f64, prior: f64) -> Param {
        let prior = prior.clamp(lo, hi);
        Param {
            name: name.into(),
            lo,
            hi,
            prior,
            scale: if prior > 0.0 {
                prior
            } else {
                ((hi - lo) / 100.0).max(1e-12)
            },
            pull: None,
        }
    }

    /// Pulls the parameter towards its prior with weight `w` instead of the fit's default.
    pub fn with_pull(mut self, w: f64) -> Param {
        self.pull = Some(w);
        self
    }

    /// Sets the unit used when the prior is zero: a magnitude the parameter typically has
    /// (an overhead of zero says nothing about whether 10 µs or 10 ms is a big move).
    pub fn with_typical(mut self, typical: f64) -> Param {
        if self.prior <= 0.0 && typical > 0.0 {
            self.scale = typical;
        }
        self
    }

    fn scale(&self) -> f64 {
        self.scale
    }
}

/// How a parameter came out of the fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamStatus {
    /// Moved freely to its value.
    Fitted,
    /// Pressed against its lower bound (the points want it lower).
    AtLower,
    /// Pressed against its upper bound.
    AtUpper,
    /// No point's prediction depends on it: kept at its prior, not fitted.
    Unconstrained,
    /// A pooled coefficient no point of this group depends on: it takes the pooled value
    /// that its sibling groups' points fit.
    Shared,
    /// A tied coefficient no point tells apart from its base: it keeps the prior ratio to
    /// the base's fitted value.
    Tied,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FitOptions {
    pub max_iterations: usize,
    /// Weight of each parameter's pull towards its prior, relative to one point's log
    /// residual.
    pub prior_weight: f64,
    /// Largest |∂ ln predicted / ∂ (param / scale)| over the points below which a
    /// parameter counts as unconstrained: doubling it would move no prediction by 1%.
    pub unconstrained_below: f64,
    /// Weight holding a pooled coefficient's per-group deviation at zero, per unit of the
    /// coefficient's scale (see `pool.rs`).
    pub pool_weight: f64,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            max_iterations: 500,
            prior_weight: 0.02,
            unconstrained_below: 1e-2,
            pool_weight: super::pool::POOL_WEIGHT,
        }
    }
}

/// The result of one fit.
#[derive(Clone, Debug, PartialEq)]
pub struct Fit {
    pub values: Vec<f64>,
    pub status: Vec<ParamStatus>,
    /// Predicted value of every point at `values`.
    pub predicted: Vec<f64>,
    /// `sensitivity[i][j]` = ∂ ln predicted_i / ∂ (param_j / scale_j) at the fit: how much
    /// point i pins parameter j.
    pub sensitivity: Vec<Vec<f64>>,
    pub iterations: usize,
    /// Σ squared log residuals of the points (the prior pull not included).
    pub cost: f64,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FitError {
    #[error("no points to fit")]
    NoPoints,
    #[error("point {index} cannot be predicted at the starting coefficients: {message}")]
    Predict { index: usize, message: String },
    #[error("the fit did not converge in {iterations} iterations: {reason}")]
    NoConvergence { iterations: usize, reason: String },
}

/// Something that predicts point `i` from a parameter vector.
pub trait Predictor {
    fn predict(&self, params: &[f64], point: usize) -> Result<f64, String>;
}

impl<F: Fn(&[f64], usize) -> Result<f64, String>> Predictor for F {
    fn predict(&self, params: &[f64], point: usize) -> Result<f64, String> {
        self(params, point)
    }
}

struct Solver<'a, P: Predictor + ?Sized> {
    params: &'a [Param],
    measured: &'a [f64],
    /// Points taking part (leave-one-out drops one).
    active: Vec<usize>,
    predictor: &'a P,
    opts: FitOptions,
}

impl<P: Predictor + ?Sized> Solver<'_, P> {
    /// Point log residuals for the active points, `None` if any prediction fails or is not
    /// a positive finite number.
    fn residuals(&self, x: &[f64]) -> Option<Vec<f64>> {
        let mut r = Vec::with_capacity(self.active.len() + x.len());
        for &i in &self.active {
            let p = self.predictor.predict(x, i).ok()?;
            if !(p.is_finite() && p > 0.0) {
                return None;
            }
            r.push((p / self.measured[i]).ln());
        }
        Some(r)
    }

    fn prior_residuals(&self, x: &[f64], r: &mut Vec<f64>) {
        for (p, &v) in self.params.iter().zip(x) {
            r.push(self.pull(p) * (v - p.prior) / p.scale());
        }
    }

    fn pull(&self, p: &Param) -> f64 {
        p.pull.unwrap_or(self.opts.prior_weight)
    }

    fn cost(&self, x: &[f64]) -> Option<f64> {
        let mut r = self.residuals(x)?;
        self.prior_residuals(x, &mut r);
        Some(r.iter().map(|v| v * v).sum())
    }

    /// Forward-difference Jacobian of the point residuals in scaled variables, stepping
    /// inwards at an upper bound. Columns of parameters not in `free` are zero.
    fn jacobian(&self, x: &[f64], r0: &[f64], free: &[bool]) -> Option<Vec<Vec<f64>>> {
        let n = self.active.len();
        let mut jac = vec![vec![0.0; x.len()]; n];
        for j in 0..x.len() {
            if !free[j] {
                continue;
            }
            let p = &self.params[j];
            let mut h = 1e-3 * p.scale();
            if x[j] + h > p.hi {
                h = -h;
            }
            let mut xh = x.to_vec();
            xh[j] += h;
            let rh = self.residuals(&xh)?;
            for i in 0..n {
                jac[i][j] = (rh[i] - r0[i]) / (h / p.scale());
            }
        }
        Some(jac)
    }

    fn project(&self, x: &mut [f64]) {
        for (v, p) in x.iter_mut().zip(self.params) {
            *v = v.clamp(p.lo, p.hi);
        }
    }

    /// Projected Levenberg–Marquardt from `x0` over the parameters marked `free`.
    fn run(&self, x0: &[f64], free: &[bool]) -> Result<(Vec<f64>, usize), FitError> {
        let m = x0.len();
        let mut x = x0.to_vec();
        self.project(&mut x);
        let Some(mut cost) = self.cost(&x) else {
            return Err(FitError::NoConvergence {
                iterations: 0,
                reason: "a point cannot be predicted at the starting coefficients".into(),
            });
        };
        let mut lambda = 1e-3;
        for iter in 0..self.opts.max_iterations {
            let r = self.residuals(&x).expect("cost was finite at x");
            let jac = self
                .jacobian(&x, &r, free)
                .ok_or_else(|| FitError::NoConvergence {
                    iterations: iter,
                    reason: "a point cannot be predicted next to the current coefficients".into(),
                })?;
            // Normal equations, with the prior rows (diagonal) added.
            let mut a = vec![vec![0.0; m]; m];
            let mut g = vec![0.0; m];
            for (i, row) in jac.iter().enumerate() {
                for j in 0..m {
                    g[j] += row[j] * r[i];
                    for k in 0..m {
                        a[j][k] += row[j] * row[k];
                    }
                }
            }
            for j in 0..m {
                let p = &self.params[j];
                let w2 = self.pull(p) * self.pull(p);
                a[j][j] += w2;
                g[j] += w2 * (x[j] - p.prior) / p.scale();
            }
            // Parameters at a bound whose gradient pushes them outwards stay put.
            let moving: Vec<bool> = (0..m)
                .map(|j| {
                    let p = &self.params[j];
                    free[j] && !((x[j] <= p.lo && g[j] > 0.0) || (x[j] >= p.hi && g[j] < 0.0))
                })
                .collect();
            let grad_norm: f64 = (0..m).filter(|&j| moving[j]).map(|j| g[j] * g[j]).sum();
            if grad_norm.sqrt() < 1e-10 {
                return Ok((x, iter));
            }
            let mut improved = false;
            while lambda < 1e12 {
                let idx: Vec<usize> = (0..m).filter(|&j| moving[j]).collect();
                let k = idx.len();
                let mut sys = vec![vec![0.0; k + 1]; k];
                for (a_i, &j) in idx.iter().enumerate() {
                    for (b_i, &l) in idx.iter().enumerate() {
                        sys[a_i][b_i] = a[j][l];
                    }
                    sys[a_i][a_i] += lambda * (a[j][j] + 1e-12);
                    sys[a_i][k] = -g[j];
                }
                let Some(step) = solve(sys) else {
                    lambda *= 4.0;
                    continue;
                };
                let mut xn = x.clone();
                for (a_i, &j) in idx.iter().enumerate() {
                    xn[j] += step[a_i] * self.params[j].scale();
                }
                self.project(&mut xn);
                match self.cost(&xn) {
                    Some(c) if c < cost => {
                        let change = cost - c;
                        x = xn;
                        let before = cost;
                        cost = c;
                        lambda = (lambda / 3.0).max(1e-9);
                        improved = true;
                        // Converged once a step gains less than a millionth of the
                        // cost: far below any measurement's precision.
                        if change <= 1e-6 * before.max(1e-12) {
                            return Ok((x, iter + 1));
                        }
                        break;
                    }
                    _ => lambda *= 4.0,
                }
            }
            if !improved {
                // No step in any damping lowers the cost: a (local) minimum.
                return Ok((x, iter + 1));
            }
        }
        Err(FitError::NoConvergence {
            iterations: self.opts.max_iterations,
            reason: format!(
                "the cost was still falling (now {cost:.3e}); the points may pull the coefficients \
                 towards a bound they cannot reach, or the model's step time is not smooth in them"
            ),
        })
    }
}

/// Solves a dense linear system given as an augmented matrix (Gaussian elimination with
/// partial pivoting); `None` if singular.
fn solve(mut m: Vec<Vec<f64>>) -> Option<Vec<f64>> {
    let n = m.len();
    for c in 0..n {
        let piv = (c..n).max_by(|&a, &b| m[a][c].abs().total_cmp(&m[b][c].abs()))?;
        if m[piv][c].abs() < 1e-300 {
            return None;
        }
        m.swap(c, piv);
        let (top, rest) = m.split_at_mut(c + 1);
        let pivot = &top[c];
        for row in rest.iter_mut() {
            let f = row[c] / pivot[c];
            for (v, p) in row[c..].iter_mut().zip(&pivot[c..]) {
                *v -= f * p;
            }
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| m[r][k] * x[k]).sum();
        x[r] = (m[r][n] - s) / m[r][r];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// Fits `params` to `measured` (one value per point). Parameters nothing depends on are
/// left at their priors and marked [`ParamStatus::Unconstrained`].
pub fn fit<P: Predictor + ?Sized>(
    params: &[Param],
    measured: &[f64],
    predictor: &P,
    opts: FitOptions,
) -> Result<Fit, FitError> {
    fit_subset(params, measured, predictor, opts, None).map(|(f, _)| f)
}

/// Fits without point `skip` (if any), from the priors, fitting only what the active
/// points depend on. Returns the fit over the active points and, when skipping, the
/// prediction for the skipped point.
fn fit_subset<P: Predictor + ?Sized>(
    params: &[Param],
    measured: &[f64],
    predictor: &P,
    opts: FitOptions,
    skip: Option<usize>,
) -> Result<(Fit, Option<f64>), FitError> {
    if measured.is_empty() {
        return Err(FitError::NoPoints);
    }
    let solver = Solver {
        params,
        measured,
        active: (0..measured.len()).filter(|&i| Some(i) != skip).collect(),
        predictor,
        opts,
    };
    let prior: Vec<f64> = params.iter().map(|p| p.prior).collect();
    for &i in &solver.active {
        predictor
            .predict(&prior, i)
            .and_then(|v| {
                if v.is_finite() && v > 0.0 {
                    Ok(v)
                } else {
                    Err(format!("predicted {v}"))
                }
            })
            .map_err(|message| FitError::Predict { index: i, message })?;
    }
    let all_free = vec![true; params.len()];
    // What the active points depend on, judged at the priors: a left-out point decides
    // neither the start nor which coefficients move.
    let (x0, free) = {
        let r0 = solver.residuals(&prior).expect("checked above");
        let jac =
            solver
                .jacobian(&prior, &r0, &all_free)
                .ok_or_else(|| FitError::NoConvergence {
                    iterations: 0,
                    reason: "a point cannot be predicted next to the starting coefficients".into(),
                })?;
        let free: Vec<bool> = (0..params.len())
            .map(|j| {
                jac.iter().map(|row| row[j].abs()).fold(0.0, f64::max) >= opts.unconstrained_below
            })
            .collect();
        (prior.clone(), free)
    };
    let (x, iterations) = solver.run(&x0, &free)?;
    let r = solver
        .residuals(&x)
        .expect("fit ends at a predictable point");
    let sensitivity = solver.jacobian(&x, &r, &all_free).unwrap_or_default();
    let predicted: Vec<f64> = solver
        .active
        .iter()
        .zip(&r)
        .map(|(&i, ri)| measured[i] * ri.exp())
        .collect();
    let status = (0..params.len())
        .map(|j| {
            let p = &params[j];
            if !free[j] {
                ParamStatus::Unconstrained
            } else if x[j] <= p.lo + 1e-9 * p.scale() {
                ParamStatus::AtLower
            } else if x[j] >= p.hi - 1e-9 * p.scale() {
                ParamStatus::AtUpper
            } else {
                ParamStatus::Fitted
            }
        })
        .collect();
    let held_out = match skip {
        Some(i) => Some(
            predictor
                .predict(&x, i)
                .map_err(|message| FitError::Predict { index: i, message })?,
        ),
        None => None,
    };
    let cost = r.iter().map(|v| v * v).sum();
    Ok((
        Fit {
            values: x,
            status,
            predicted,
            sensitivity,
            iterations,
            cost,
        },
        held_out,
    ))
}

/// Leave-one-out: for every point, the prediction of a fit to all the other points, made
/// exactly as the full fit is (from the priors, fitting what those points depend on), so
/// the held-out point shapes nothing it is then compared with.
///
/// The refits are independent, so they run on rayon's pool, one point per task: each is a
/// whole fit, and with dozens of points they are nearly all of `dujiang calibrate`'s time.
/// The results, and which error is reported (the lowest-numbered point's), are the same as
/// one after another.
pub fn leave_one_out<P: Predictor + Sync + ?Sized>(
    params: &[Param],
    measured: &[f64],
    predictor: &P,
    opts: FitOptions,
) -> Result<Vec<f64>, FitError> {
    let each: Vec<Result<f64, FitError>> = (0..measured.len())
        .into_par_iter()
        .map(|i| {
            fit_subset(params, measured, predictor, opts, Some(i))
                .map(|(_, held)| held.expect("skipping yields a held-out prediction"))
        })
        .collect();
    each.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// y = a·x + b at x = 1, 2, 4, 8; c never matters.
    fn linear(params: &[f64], i: usize) -> Result<f64, String> {
        let x = [1.0, 2.0, 4.0, 8.0][i];
        Ok(params[0] * x + params[1])
    }

    fn params() -> Vec<Param> {
        vec![
            Param::new("a", 0.0, 10.0, 1.0),
            Param::new("b", 0.0, 10.0, 1.0),
            Param::new("c", 0.0, 1.0, 0.5),
        ]
    }

    #[test]
    fn recovers_known_coefficients_and_refuses_an_unconstrained_one() {
        let measured: Vec<f64> = (0..4).map(|i| linear(&[2.0, 3.0], i).unwrap()).collect();
        let opts = FitOptions {
            prior_weight: 0.0,
            ..FitOptions::default()
        };
        let f = fit(&params(), &measured, &linear, opts).unwrap();
        assert!((f.values[0] - 2.0).abs() < 1e-4, "{:?}", f.values);
        assert!((f.values[1] - 3.0).abs() < 1e-4, "{:?}", f.values);
        assert_eq!(f.values[2], 0.5);
        assert_eq!(
            f.status,
            vec![
                ParamStatus::Fitted,
                ParamStatus::Fitted,
                ParamStatus::Unconstrained
            ]
        );
        for (p, m) in f.predicted.iter().zip(&measured) {
            assert!((p / m - 1.0).abs() < 1e-6);
        }
        // The slope is pinned mostly by the largest x, the intercept by the smallest.
        assert!(f.sensitivity[3][0] > f.sensitivity[0][0]);
        assert!(f.sensitivity[0][1] > f.sensitivity[3][1]);
    }

    #[test]
    fn a_zero_prior_is_measured_in_its_typical_unit() {
        let p = Param::new("overhead_us", 0.0, 1e4, 0.0);
        assert_eq!(p.scale, 100.0);
        assert_eq!(p.clone().with_typical(10.0).scale, 10.0);
        let q = Param::new("eff", 0.01, 1.0, 0.5).with_typical(10.0);
        assert_eq!(q.scale, 0.5, "a non-zero prior is its own unit");
        assert_eq!(
            Param::new("eff", 0.01, 1.0, 2.0).prior,
            1.0,
            "prior clamped to box"
        );
    }

    #[test]
    fn bounds_hold_and_are_reported() {
        // The data want b = −1; the box says b ≥ 0.
        let measured: Vec<f64> = [1.0, 2.0, 4.0, 8.0].iter().map(|x| 2.0 * x - 1.0).collect();
        let f = fit(&params(), &measured, &linear, FitOptions::default()).unwrap();
        assert_eq!(f.values[1], 0.0);
        assert_eq!(f.status[1], ParamStatus::AtLower);
        // With b held at 0, the log-space optimum is the geometric mean of y/x.
        let geo = (1.5f64 * 1.75 * 1.875).powf(0.25);
        assert!((f.values[0] - geo).abs() < 0.01, "{:?} vs {geo}", f.values);
    }

    #[test]
    fn leave_one_out_predicts_held_out_points() {
        let measured: Vec<f64> = (0..4).map(|i| linear(&[2.0, 3.0], i).unwrap()).collect();
        let loo = leave_one_out(&params(), &measured, &linear, FitOptions::default()).unwrap();
        for (l, m) in loo.iter().zip(&measured) {
            assert!((l / m - 1.0).abs() < 0.05, "{loo:?} vs {measured:?}");
        }
    }

    #[test]
    fn a_held_out_point_shapes_nothing_it_is_compared_with() {
        // Point 4 alone depends on c: held out, it must be predicted from the prior of c
        // whatever its measured value (a refit started from the full fit would keep most
        // of what point 4 taught c).
        let pred = |p: &[f64], i: usize| -> Result<f64, String> {
            if i == 4 {
                Ok(p[2] * 10.0)
            } else {
                linear(p, i)
            }
        };
        let held_out = |v4: f64| {
            let mut measured: Vec<f64> = (0..4).map(|i| linear(&[2.0, 3.0], i).unwrap()).collect();
            measured.push(v4);
            leave_one_out(&params(), &measured, &pred, FitOptions::default()).unwrap()[4]
        };
        let (low, high) = (held_out(0.5), held_out(50.0));
        assert_eq!(
            low, high,
            "the held-out value leaked into its own prediction"
        );
        assert!((low - 5.0).abs() < 1e-9, "c stays at its prior 0.5: {low}");
    }

    #[test]
    fn an_unpredictable_start_is_an_error_naming_the_point() {
        let bad = |p: &[f64], i: usize| {
            if i == 2 {
                Err("weights do not fit".to_string())
            } else {
                linear(p, i)
            }
        };
        let err = fit(
            &params(),
            &[1.0, 2.0, 3.0, 4.0],
            &bad,
            FitOptions::default(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            FitError::Predict {
                index: 2,
                message: "weights do not fit".into()
            }
        );
    }

    #[test]
    fn a_fit_that_runs_out_of_iterations_says_why() {
        let measured: Vec<f64> = (0..4).map(|i| linear(&[2.0, 3.0], i).unwrap()).collect();
        let opts = FitOptions {
            max_iterations: 1,
            ..FitOptions::default()
        };
        let err = fit(&params(), &measured, &linear, opts).unwrap_err();
        assert!(matches!(err, FitError::NoConvergence { .. }), "{err}");
        assert!(err.to_string().contains("did not converge"), "{err}");
    }
}
