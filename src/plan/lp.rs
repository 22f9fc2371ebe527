//! A small dense linear-program solver (two-phase simplex with Bland's rule) for the fleet
//! mix: a few dozen rows and a few hundred columns at most, so a dense tableau is both the
//! simplest and the fastest choice. The planner's integer program runs branch-and-bound
//! on top of it (see `mix.rs`); no crate on the registry is both pure Rust and kept up, and
//! the problem is small enough that an exact method written here is easy to check.

/// How a constraint's left side compares with its right side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Le,
    Ge,
    Eq,
}

/// `Σ coeff·x[var] (cmp) rhs`.
#[derive(Clone, Debug)]
pub struct Constraint {
    pub coeffs: Vec<(usize, f64)>,
    pub cmp: Cmp,
    pub rhs: f64,
}

/// What solving gave.
#[derive(Clone, Debug, PartialEq)]
pub enum LpOutcome {
    Optimal { x: Vec<f64>, objective: f64 },
    Infeasible,
    Unbounded,
}

const EPS: f64 = 1e-9;

/// A constraint with a non-negative right side: coefficients, comparison, right side.
type Row = (Vec<(usize, f64)>, Cmp, f64);
/// Bland's rule cannot cycle, so this only guards against numerical trouble.
const MAX_PIVOTS: usize = 50_000;

struct Tableau {
    rows: Vec<Vec<f64>>,
    basis: Vec<usize>,
    cols: usize,
}

impl Tableau {
    fn rhs(&self, i: usize) -> f64 {
        self.rows[i][self.cols]
    }

    fn pivot(&mut self, r: usize, c: usize) {
        let p = self.rows[r][c];
        for v in self.rows[r].iter_mut() {
            *v /= p;
        }
        let pivot_row = self.rows[r].clone();
        for (i, row) in self.rows.iter_mut().enumerate() {
            if i == r {
                continue;
            }
            let f = row[c];
            if f.abs() > 0.0 {
                for (v, pv) in row.iter_mut().zip(&pivot_row) {
                    *v -= f * pv;
                }
            }
        }
        self.basis[r] = c;
    }

    /// Minimises `cost·x` over the columns `allowed` may bring into the basis. Returns
    /// false when the objective is unbounded below.
    fn optimise(&mut self, cost: &[f64], allowed: &[bool]) -> bool {
        for _ in 0..MAX_PIVOTS {
            let entering = (0..self.cols).find(|&j| {
                if !allowed[j] || self.basis.contains(&j) {
                    return false;
                }
                let z: f64 = self
                    .basis
                    .iter()
                    .enumerate()
                    .map(|(i, &b)| cost[b] * self.rows[i][j])
                    .sum();
                cost[j] - z < -EPS
            });
            let Some(j) = entering else {
                return true;
            };
            let mut leave: Option<(usize, f64)> = None;
            for i in 0..self.rows.len() {
                let a = self.rows[i][j];
                if a > EPS {
                    let ratio = self.rhs(i) / a;
                    let better = match leave {
                        None => true,
                        Some((li, lr)) => {
                            ratio < lr - EPS
                                || (ratio <= lr + EPS && self.basis[i] < self.basis[li])
                        }
                    };
                    if better {
                        leave = Some((i, ratio));
                    }
                }
            }
            let Some((r, _)) = leave else {
                return false;
            };
            self.pivot(r, j);
        }
        true
    }
}

/// Minimises `cost·x` subject to `constraints` and `x ≥ 0`, with `n_vars` variables.
pub fn minimize(n_vars: usize, cost: &[f64], constraints: &[Constraint]) -> LpOutcome {
    assert_eq!(cost.len(), n_vars, "one cost per variable");
    let m = constraints.len();
    // Make every right side non-negative, flipping the comparison with the sign.
    let rows: Vec<Row> = constraints
        .iter()
        .map(|c| {
            if c.rhs < 0.0 {
                let cmp = match c.cmp {
                    Cmp::Le => Cmp::Ge,
                    Cmp::Ge => Cmp::Le,
                    Cmp::Eq => Cmp::Eq,
                };
                (
                    c.coeffs.iter().map(|&(j, v)| (j, -v)).collect(),
                    cmp,
                    -c.rhs,
                )
            } else {
                (c.coeffs.clone(), c.cmp, c.rhs)
            }
        })
        .collect();
    let slacks = rows.iter().filter(|r| r.1 != Cmp::Eq).count();
    let artificials = rows.iter().filter(|r| r.1 != Cmp::Le).count();
    let cols = n_vars + slacks + artificials;
    let first_artificial = n_vars + slacks;
    let mut t = Tableau {
        rows: vec![vec![0.0; cols + 1]; m],
        basis: vec![0; m],
        cols,
    };
    let (mut s, mut a) = (n_vars, first_artificial);
    for (i, (coeffs, cmp, rhs)) in rows.iter().enumerate() {
        for &(j, v) in coeffs {
            assert!(j < n_vars, "variable {j} out of range");
            t.rows[i][j] += v;
        }
        t.rows[i][cols] = *rhs;
        match cmp {
            Cmp::Le => {
                t.rows[i][s] = 1.0;
                t.basis[i] = s;
                s += 1;
            }
            Cmp::Ge => {
                t.rows[i][s] = -1.0;
                s += 1;
                t.rows[i][a] = 1.0;
                t.basis[i] = a;
                a += 1;
            }
            Cmp::Eq => {
                t.rows[i][a] = 1.0;
                t.basis[i] = a;
                a += 1;
            }
        }
    }
    let mut allowed = vec![true; cols];
    if artificials > 0 {
        let phase1: Vec<f64> = (0..cols)
            .map(|j| if j >= first_artificial { 1.0 } else { 0.0 })
            .collect();
        t.optimise(&phase1, &allowed);
        let infeasibility: f64 = t
            .basis
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b >= first_artificial)
            .map(|(i, _)| t.rhs(i))
            .sum();
        if infeasibility > 1e-7 {
            return LpOutcome::Infeasible;
        }
        // Drive zero-valued artificials out of the basis where a real column can replace
        // them; a row where none can is redundant and its artificial stays at zero.
        for i in 0..m {
            if t.basis[i] >= first_artificial {
                if let Some(j) = (0..first_artificial).find(|&j| t.rows[i][j].abs() > EPS) {
                    t.pivot(i, j);
                }
            }
        }
        for flag in allowed.iter_mut().skip(first_artificial) {
            *flag = false;
        }
    }
    let mut phase2 = vec![0.0; cols];
    phase2[..n_vars].copy_from_slice(cost);
    if !t.optimise(&phase2, &allowed) {
        return LpOutcome::Unbounded;
    }
    let mut x = vec![0.0; n_vars];
    for (i, &b) in t.basis.iter().enumerate() {
        if b < n_vars {
            x[b] = t.rhs(i).max(0.0);
        }
    }
    let objective = x.iter().zip(cost).map(|(v, c)| v * c).sum();
    LpOutcome::Optimal { x, objective }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(coeffs: &[(usize, f64)], cmp: Cmp, rhs: f64) -> Constraint {
        Constraint {
            coeffs: coeffs.to_vec(),
            cmp,
            rhs,
        }
    }

    #[test]
    fn solves_a_small_diet_problem() {
        // min 2x + 3y  s.t. x + y >= 4, x + 3y >= 6, x <= 3  → x = 3, y = 1, cost 9.
        let out = minimize(
            2,
            &[2.0, 3.0],
            &[
                c(&[(0, 1.0), (1, 1.0)], Cmp::Ge, 4.0),
                c(&[(0, 1.0), (1, 3.0)], Cmp::Ge, 6.0),
                c(&[(0, 1.0)], Cmp::Le, 3.0),
            ],
        );
        let LpOutcome::Optimal { x, objective } = out else {
            panic!("{out:?}");
        };
        assert!((objective - 9.0).abs() < 1e-9, "{objective}");
        assert!(
            (x[0] - 3.0).abs() < 1e-9 && (x[1] - 1.0).abs() < 1e-9,
            "{x:?}"
        );
    }

    #[test]
    fn equalities_and_negative_right_sides() {
        // min x - y  s.t. x + y = 5, -x <= -1 (x >= 1), y <= 3 → x = 2, y = 3.
        let out = minimize(
            2,
            &[1.0, -1.0],
            &[
                c(&[(0, 1.0), (1, 1.0)], Cmp::Eq, 5.0),
                c(&[(0, -1.0)], Cmp::Le, -1.0),
                c(&[(1, 1.0)], Cmp::Le, 3.0),
            ],
        );
        let LpOutcome::Optimal { x, objective } = out else {
            panic!("{out:?}");
        };
        assert!((objective + 1.0).abs() < 1e-9 && (x[0] - 2.0).abs() < 1e-9);
    }

    #[test]
    fn reports_infeasible_and_unbounded() {
        let inf = minimize(
            1,
            &[1.0],
            &[c(&[(0, 1.0)], Cmp::Ge, 2.0), c(&[(0, 1.0)], Cmp::Le, 1.0)],
        );
        assert_eq!(inf, LpOutcome::Infeasible);
        let unb = minimize(1, &[-1.0], &[c(&[(0, 1.0)], Cmp::Ge, 0.0)]);
        assert_eq!(unb, LpOutcome::Unbounded);
    }
}
