//! The cheapest integer fleet mix, in the spirit of Mélange (Griggs et al., "Mélange: Cost
//! Efficient Large Language Model Serving by Exploiting GPU Heterogeneity", 2024): choose
//! how many backends of each candidate kind to buy, and which share of each request-size
//! bucket each kind serves, so that every bucket's load is carried and the hourly cost is
//! least. Counts are integers, shares are continuous; the domestic-share floor is one more
//! linear row. Solved exactly by branch-and-bound over the counts on the LP relaxation
//! (`lp.rs`): with a handful of candidate kinds the tree stays small.

use super::lp::{minimize, Cmp, Constraint, LpOutcome};

/// One instance of the mix problem.
#[derive(Clone, Debug)]
pub struct MixProblem {
    /// Hourly cost of one backend of each candidate.
    pub cost: Vec<f64>,
    /// Per candidate, its contribution to the floor row `Σ floor_weight·n ≥ 0`: the
    /// candidate's weight (chips or dollars) times (1 if domestic else 0, minus the floor).
    pub floor_weight: Vec<f64>,
    /// `work[c][b]`: backends of candidate `c` needed to carry all of bucket `b`'s load
    /// (the bucket's rate over what one backend sustains); `None` when it cannot at all.
    pub work: Vec<Vec<Option<f64>>>,
}

/// Branch-and-bound nodes explored before settling for the best mix found so far.
const MAX_NODES: usize = 20_000;

impl MixProblem {
    fn buckets(&self) -> usize {
        self.work.first().map_or(0, Vec::len)
    }

    /// Solves the relaxation with `lo[c] ≤ n[c] ≤ hi[c]`; returns counts and cost.
    fn relaxation(&self, lo: &[u32], hi: &[Option<u32>]) -> Option<(Vec<f64>, f64)> {
        let nc = self.cost.len();
        let nb = self.buckets();
        // Variables: n[0..nc], then one share x[c][b] per pair that can serve.
        let mut share_var = vec![vec![None; nb]; nc];
        let mut nvars = nc;
        for (c, row) in self.work.iter().enumerate() {
            for (b, w) in row.iter().enumerate() {
                if w.is_some() {
                    share_var[c][b] = Some(nvars);
                    nvars += 1;
                }
            }
        }
        let mut cost = vec![0.0; nvars];
        cost[..nc].copy_from_slice(&self.cost);
        let mut rows = Vec::new();
        for b in 0..nb {
            let coeffs: Vec<(usize, f64)> = share_var
                .iter()
                .filter_map(|row| row[b].map(|v| (v, 1.0)))
                .collect();
            if coeffs.is_empty() {
                return None;
            }
            rows.push(Constraint {
                coeffs,
                cmp: Cmp::Eq,
                rhs: 1.0,
            });
        }
        for c in 0..nc {
            let mut coeffs: Vec<(usize, f64)> = (0..nb)
                .filter_map(|b| Some((share_var[c][b]?, self.work[c][b]?)))
                .collect();
            coeffs.push((c, -1.0));
            rows.push(Constraint {
                coeffs,
                cmp: Cmp::Le,
                rhs: 0.0,
            });
            if lo[c] > 0 {
                rows.push(Constraint {
                    coeffs: vec![(c, 1.0)],
                    cmp: Cmp::Ge,
                    rhs: f64::from(lo[c]),
                });
            }
            if let Some(h) = hi[c] {
                rows.push(Constraint {
                    coeffs: vec![(c, 1.0)],
                    cmp: Cmp::Le,
                    rhs: f64::from(h),
                });
            }
        }
        rows.push(Constraint {
            coeffs: self.floor_weight.iter().copied().enumerate().collect(),
            cmp: Cmp::Ge,
            rhs: 0.0,
        });
        match minimize(nvars, &cost, &rows) {
            LpOutcome::Optimal { x, objective } => Some((x[..nc].to_vec(), objective)),
            LpOutcome::Infeasible | LpOutcome::Unbounded => None,
        }
    }

    /// The cheapest integer counts, or `None` when no mix carries the load within the
    /// floor (a bucket no candidate can serve, or a floor no candidate can meet).
    pub fn solve(&self) -> Option<Vec<u32>> {
        let nc = self.cost.len();
        let mut best: Option<(Vec<u32>, f64)> = None;
        let mut stack = vec![(vec![0u32; nc], vec![None::<u32>; nc])];
        let mut nodes = 0;
        while let Some((lo, hi)) = stack.pop() {
            nodes += 1;
            if nodes > MAX_NODES && best.is_some() {
                break;
            }
            let Some((n, objective)) = self.relaxation(&lo, &hi) else {
                continue;
            };
            if best
                .as_ref()
                .is_some_and(|(_, b)| objective >= b - 1e-9 * b.abs().max(1.0))
            {
                continue;
            }
            let fractional = n
                .iter()
                .enumerate()
                .map(|(c, v)| (c, v - v.floor()))
                .filter(|&(_, f)| f > 1e-6 && f < 1.0 - 1e-6)
                .max_by(|a, b| (0.5 - (a.1 - 0.5).abs()).total_cmp(&(0.5 - (b.1 - 0.5).abs())));
            match fractional {
                None => {
                    let counts: Vec<u32> = n.iter().map(|v| v.round() as u32).collect();
                    let cost = counts
                        .iter()
                        .zip(&self.cost)
                        .map(|(&k, c)| f64::from(k) * c)
                        .sum();
                    if best.as_ref().is_none_or(|(_, b)| cost < *b) {
                        best = Some((counts, cost));
                    }
                }
                Some((c, _)) => {
                    let v = n[c];
                    let (mut down_hi, mut up_lo) = (hi.clone(), lo.clone());
                    down_hi[c] = Some(v.floor() as u32);
                    up_lo[c] = v.ceil() as u32;
                    // Depth-first, rounding up first: it reaches a feasible mix soonest,
                    // and that bound prunes the rest of the tree.
                    stack.push((lo, down_hi));
                    stack.push((up_lo, hi));
                }
            }
        }
        best.map(|(counts, _)| counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cheap_small_chip_and_floor_forces_domestic() {
        // Candidate 0: foreign, $0.5/h, carries bucket 0 at 0.5 backends, bucket 1 at 2.5.
        // Candidate 1: domestic, $1.5/h, carries bucket 0 at 1.0, bucket 1 at 1.2.
        let p = MixProblem {
            cost: vec![0.5, 1.5],
            floor_weight: vec![0.0, 0.0],
            work: vec![vec![Some(0.5), Some(2.5)], vec![Some(1.0), Some(1.2)]],
        };
        // No floor: three foreign ($1.5) carry 0.5 + 2.5; two are too few.
        assert_eq!(p.solve(), Some(vec![3, 0]));
        // All domestic by chip count (weights −1 for foreign, 0 for domestic): two carry
        // only 2 of the 2.2 needed.
        let all_domestic = MixProblem {
            floor_weight: vec![-1.0, 0.0],
            ..p.clone()
        };
        assert_eq!(all_domestic.solve(), Some(vec![0, 3]));
        // Half the chips domestic: (0 − 0.5)·n0 + (1 − 0.5)·n1 ≥ 0. One of each ($2)
        // works by splitting bucket 1: the foreign backend's spare half carries a fifth of
        // it, the domestic one the rest (0.8 × 1.2 = 0.96).
        let half = MixProblem {
            floor_weight: vec![-0.5, 0.5],
            ..p
        };
        assert_eq!(half.solve(), Some(vec![1, 1]));
    }

    #[test]
    fn a_bucket_nobody_serves_is_infeasible() {
        let p = MixProblem {
            cost: vec![1.0],
            floor_weight: vec![0.0],
            work: vec![vec![Some(1.0), None]],
        };
        assert_eq!(p.solve(), None);
    }
}
