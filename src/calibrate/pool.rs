//! Partial pooling: a coefficient shared by the groups that give it one key is a shared
//! value plus a deviation per group, so a group's few points are helped by its siblings'.
//!
//! Two levels (the keys come from the backend, `backend.rs`):
//! - Host overheads (per step, per layer, per sequence) and collective latencies are the
//!   engine release's code paths: vLLM 0.7's Python scheduler costs much the same whether
//!   it drives an H100, an A100 or an H20, and vLLM-Ascend's on a 910B or a 910C. Shared
//!   by the release's groups on every chip family.
//! - Efficiencies, half points, link efficiency and the all-reduce hop latency are
//!   silicon × kernels (the hop is the link's and its collective library's): how much of one
//!   chip family's peaks a project's kernels reach. Shared by the releases of one engine
//!   project on one silicon family (vLLM 0.7.3 and 0.20.1 on the A100; a chip's own entry
//!   with its family's, the 910C die with the 910B, which is the same Da Vinci die), never
//!   across families (the H20's cut-down compute is a family of its own).
//!
//! A pooled coefficient of group `g` is `shared + deviation_g`: the shared value is fitted
//! to every point of the groups sharing it, each deviation only to its group's points,
//! and deviations are pulled to zero ([`POOL_WEIGHT`]). So a point left out still has its
//! coefficients predicted from its siblings, and a group whose points say nothing about a
//! pooled coefficient (a TP1 chip and a collective latency) takes the value its siblings
//! fit.
//!
//! Within a group, a coefficient may be tied to another: the KV cache's read efficiency is
//! the weights' memory efficiency times a ratio of its own, held at the ratio of their
//! priors as firmly as a family's deviation from its pool. Both are reads of the same
//! memory by the same engine; they differ only by the attention kernel's access pattern,
//! so points that read little KV leave the ratio where it was and the two move together,
//! and only points that read much KV beside the weights (long-context or large-batch
//! decode) pull them apart.

use super::fit::Param;

/// How firmly a family's pooled coefficient is held at the pool's value: a deviation of
/// one scale unit (the coefficient's prior, or its typical size when the prior is 0)
/// costs as much as a point missed by a factor e^0.15. Put as a prior: host CPUs of
/// different generations and clocks run the same Python path some 30% apart (estimate),
/// and a published p50 is reproducible to ~5%, so a 30% deviation should cost about what
/// one 5% miss does: 0.05 / 0.3 ≈ 0.15. The same weight holds silicon coefficients shared
/// across releases or SKUs (estimate: two releases' kernels, or two clocks of one die,
/// reach fractions of the peaks some 30% apart); it was set before the silicon pooling
/// was fitted and not tuned to the leave-one-out result.
pub const POOL_WEIGHT: f64 = 0.15;

/// Where one group coefficient lives in the pool's parameter vector.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Slot {
    /// The group's own parameter.
    Own(usize),
    /// `shared + dev`, clamped to the coefficient's bounds.
    Pooled { shared: usize, dev: usize },
    /// `(the group's coefficient base) × ratio`, clamped to the coefficient's bounds: a
    /// coefficient tied to another of the same group (KV reads to weight reads), the
    /// ratio pulled to its prior, so only points that tell the two apart move it.
    Tied { base: usize, ratio: usize },
}

/// The parameter vector of a pool of groups fitted together.
#[derive(Clone, Debug)]
pub struct Layout {
    pub params: Vec<Param>,
    /// Per group, per group coefficient.
    pub slots: Vec<Vec<Slot>>,
    /// Per group, its own coefficients (bounds, priors) as the backend gives them.
    pub group_params: Vec<Vec<Param>>,
}

impl Layout {
    /// Lays out `group_params` (one list per group of the pool). A coefficient to which
    /// `share(k, name)` gives a key that two or more groups give it too is shared by them.
    /// A coefficient for which `tied(name)` names another coefficient of its group is that
    /// one times a ratio of its own (prior: the ratio of the two priors), held at its prior
    /// with `weight`; a tied coefficient is never shared.
    pub fn new(
        group_params: Vec<Vec<Param>>,
        share: impl Fn(usize, &str) -> Option<String>,
        tied: impl Fn(&str) -> Option<&'static str>,
        weight: f64,
    ) -> Self {
        let key = |k: usize, p: &Param| {
            let tied_here =
                tied(&p.name).is_some_and(|b| group_params[k].iter().any(|q| q.name == b));
            if tied_here {
                None
            } else {
                share(k, &p.name)
            }
        };
        let keys: Vec<Vec<Option<String>>> = group_params
            .iter()
            .enumerate()
            .map(|(k, gp)| gp.iter().map(|p| key(k, p)).collect())
            .collect();
        let mut params: Vec<Param> = Vec::new();
        // (coefficient, key) → the shared parameter's index.
        let mut shared_of: Vec<((String, String), usize)> = Vec::new();
        let mut slots = Vec::with_capacity(group_params.len());
        for (k, gp) in group_params.iter().enumerate() {
            for (j, p) in gp.iter().enumerate() {
                let Some(key) = &keys[k][j] else { continue };
                let id = (p.name.clone(), key.clone());
                if shared_of.iter().any(|(n, _)| *n == id) {
                    continue;
                }
                // The groups giving this coefficient the same key.
                let priors: Vec<f64> = group_params
                    .iter()
                    .enumerate()
                    .filter_map(|(o, og)| {
                        let i = og.iter().position(|q| q.name == p.name)?;
                        (keys[o][i].as_ref() == Some(key)).then_some(og[i].prior)
                    })
                    .collect();
                if priors.len() < 2 {
                    continue;
                }
                // The shared value starts from (and is weakly pulled to) the mean of the
                // groups' priors.
                let mean = priors.iter().sum::<f64>() / priors.len() as f64;
                let mut shared = Param::new(p.name.clone(), p.lo, p.hi, mean);
                if mean <= 0.0 {
                    shared.scale = p.scale;
                }
                shared_of.push((id, params.len()));
                params.push(shared);
            }
        }
        for (k, gp) in group_params.iter().enumerate() {
            let mut row = Vec::with_capacity(gp.len());
            for (j, p) in gp.iter().enumerate() {
                let base = tied(&p.name).and_then(|b| gp.iter().position(|q| q.name == b));
                if let Some(base) = base {
                    let b = &gp[base];
                    let ratio = p.prior / b.prior.max(b.lo).max(1e-12);
                    let lo = p.lo / b.hi.max(1e-12);
                    let hi = p.hi / b.lo.max(1e-12);
                    row.push(Slot::Tied {
                        base,
                        ratio: params.len(),
                    });
                    params.push(
                        Param::new(format!("{}/{}@{k}", p.name, b.name), lo, hi, ratio)
                            .with_pull(weight),
                    );
                    continue;
                }
                let found = keys[k][j].as_ref().and_then(|key| {
                    shared_of
                        .iter()
                        .find(|((n, kk), _)| *n == p.name && kk == key)
                });
                match found {
                    Some(&(_, shared)) => {
                        let span = p.hi - p.lo;
                        let scale = params[shared].scale;
                        let dev = Param::new(format!("{}@{k}", p.name), -span, span, 0.0)
                            .with_typical(scale)
                            .with_pull(weight);
                        row.push(Slot::Pooled {
                            shared,
                            dev: params.len(),
                        });
                        params.push(dev);
                    }
                    None => {
                        row.push(Slot::Own(params.len()));
                        params.push(p.clone());
                    }
                }
            }
            slots.push(row);
        }
        Layout {
            params,
            slots,
            group_params,
        }
    }

    /// Group `k`'s coefficient `j` at the pool's parameters `x`.
    pub fn value(&self, x: &[f64], k: usize, j: usize) -> f64 {
        let p = &self.group_params[k][j];
        match self.slots[k][j] {
            Slot::Own(i) => x[i],
            Slot::Pooled { shared, dev } => (x[shared] + x[dev]).clamp(p.lo, p.hi),
            Slot::Tied { base, ratio } => (self.value(x, k, base) * x[ratio]).clamp(p.lo, p.hi),
        }
    }

    /// Group `k`'s coefficients at `x`.
    pub fn values(&self, x: &[f64], k: usize) -> Vec<f64> {
        (0..self.slots[k].len())
            .map(|j| self.value(x, k, j))
            .collect()
    }

    /// The pool parameter whose sensitivity says what pins group `k`'s coefficient `j`:
    /// its own, the shared value (which the group's points move exactly as they move
    /// their deviation, and which every sibling's points move too), or a tied
    /// coefficient's ratio (what the points say about it apart from its base).
    pub fn pin_column(&self, k: usize, j: usize) -> usize {
        match self.slots[k][j] {
            Slot::Own(i) => i,
            Slot::Pooled { shared, .. } => shared,
            Slot::Tied { ratio, .. } => ratio,
        }
    }

    pub fn is_pooled(&self, k: usize, j: usize) -> bool {
        matches!(self.slots[k][j], Slot::Pooled { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(step_prior: f64, eff_prior: f64) -> Vec<Param> {
        vec![
            Param::new("step_us", 0.0, 1e4, step_prior),
            Param::new("eff", 0.01, 1.0, eff_prior),
        ]
    }

    #[test]
    fn software_is_shared_silicon_is_not() {
        let l = Layout::new(
            vec![group(1000.0, 0.5), group(3000.0, 0.7)],
            |_, n| (n == "step_us").then(|| "engine".to_string()),
            |_| None,
            POOL_WEIGHT,
        );
        // shared step, then per group: dev, eff.
        assert_eq!(l.params.len(), 5);
        assert_eq!(l.params[0].prior, 2000.0);
        assert!(l.is_pooled(0, 0) && l.is_pooled(1, 0));
        assert!(!l.is_pooled(0, 1));
        let mut x: Vec<f64> = l.params.iter().map(|p| p.prior).collect();
        assert_eq!(l.values(&x, 0), vec![2000.0, 0.5]);
        x[1] = -500.0; // group 0's deviation
        assert_eq!(l.values(&x, 0), vec![1500.0, 0.5]);
        assert_eq!(l.values(&x, 1), vec![2000.0, 0.7]);
        x[1] = -5000.0; // never below the coefficient's bound
        assert_eq!(l.value(&x, 0, 0), 0.0);
        assert_eq!(l.pin_column(1, 0), 0);
    }

    #[test]
    fn a_coefficient_is_shared_only_by_the_groups_giving_it_one_key() {
        // Three groups: the step overhead shared by all (one engine), the efficiency only
        // by groups 0 and 1 (one silicon family), group 2's its own.
        let family = ["davinci", "davinci", "hopper"];
        let l = Layout::new(
            vec![group(1000.0, 0.5), group(3000.0, 0.7), group(2000.0, 0.9)],
            |k, n| match n {
                "step_us" => Some("engine".to_string()),
                _ => Some(family[k].to_string()),
            },
            |_| None,
            POOL_WEIGHT,
        );
        assert!((0..3).all(|k| l.is_pooled(k, 0)));
        assert!(l.is_pooled(0, 1) && l.is_pooled(1, 1));
        assert!(!l.is_pooled(2, 1), "a family of one keeps its own");
        // Shared: step, davinci eff; then devs and group 2's own eff.
        assert_eq!(l.params[1].prior, 0.6, "the family's mean prior");
        let mut x: Vec<f64> = l.params.iter().map(|p| p.prior).collect();
        assert_eq!(l.values(&x, 2), vec![2000.0, 0.9]);
        x[1] = 0.8; // the shared davinci efficiency moves both its groups, not group 2
        assert!((l.value(&x, 0, 1) - 0.8).abs() < 1e-12);
        assert!((l.value(&x, 1, 1) - 0.8).abs() < 1e-12);
        assert_eq!(l.value(&x, 2, 1), 0.9);
    }

    #[test]
    fn a_tied_coefficient_follows_its_base_by_a_ratio_of_its_own() {
        let group = vec![
            Param::new("mem", 0.01, 1.0, 0.6),
            Param::new("kv", 0.01, 1.0, 0.48),
        ];
        let l = Layout::new(
            vec![group],
            |_, _| Some("all".to_string()),
            |n| (n == "kv").then_some("mem"),
            POOL_WEIGHT,
        );
        assert_eq!(l.params.len(), 2);
        assert!((l.params[1].prior - 0.8).abs() < 1e-12, "{:?}", l.params[1]);
        assert_eq!(l.params[1].pull, Some(POOL_WEIGHT));
        let mut x: Vec<f64> = l.params.iter().map(|p| p.prior).collect();
        assert!((l.value(&x, 0, 1) - 0.48).abs() < 1e-12);
        // Moving the base moves the tied coefficient with it; the ratio moves it alone.
        x[0] = 0.3;
        assert!((l.value(&x, 0, 1) - 0.24).abs() < 1e-12);
        x[1] = 0.5;
        assert!((l.value(&x, 0, 1) - 0.15).abs() < 1e-12);
        // Never outside the tied coefficient's own bounds.
        x[1] = 50.0;
        assert_eq!(l.value(&x, 0, 1), 1.0);
        assert_eq!(l.pin_column(0, 1), 1);
        assert!(!l.is_pooled(0, 1));
    }

    #[test]
    fn a_group_alone_keeps_its_own_coefficients() {
        let l = Layout::new(
            vec![group(1000.0, 0.5)],
            |_, _| Some("all".to_string()),
            |_| None,
            POOL_WEIGHT,
        );
        assert_eq!(l.params.len(), 2);
        assert!(!l.is_pooled(0, 0));
        let x: Vec<f64> = l.params.iter().map(|p| p.prior).collect();
        assert_eq!(l.values(&x, 0), vec![1000.0, 0.5]);
    }
}
