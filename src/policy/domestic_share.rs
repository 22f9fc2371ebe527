//! `domestic-share`: wraps any policy and keeps the share of tokens served by domestic
//! chips (Ascend, Cambricon) at or above `target` over a sliding window of `window_s`
//! seconds, as procurement rules increasingly require. Each decision asks: if this
//! request went to a foreign chip, would the window's domestic share stay at or above the
//! target? If so the inner policy chooses freely; if not it chooses among domestic pools
//! only. Either way the inner policy still picks the best allowed backend.
//!
//! Tokens are counted (prompt + output) when a request is routed (`on_routed`). The
//! window is a ring of time buckets of atomics, so concurrent decisions never lock; two
//! decisions racing on a bucket boundary may lose a handful of tokens from the count,
//! which moves the share by far less than one request does.

use super::{bad, build, params, Policy, PolicyError, Route};
use crate::fleet::{BackendId, LinkTable, LoadView, MaskedView};
use crate::request::{Nanos, Request, NANOS_PER_SEC};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const BUCKETS: usize = 16;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Params {
    inner: String,
    inner_params: toml::Table,
    target: f64,
    window_s: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            inner: "least-work".into(),
            inner_params: toml::Table::new(),
            target: 0.6,
            window_s: 60.0,
        }
    }
}

#[derive(Debug, Default)]
struct Bucket {
    /// Bucket number + 1 (0: never used).
    tag: AtomicU64,
    domestic: AtomicU64,
    total: AtomicU64,
}

/// Token counts over a sliding window of time buckets.
#[derive(Debug)]
struct Window {
    bucket_ns: u64,
    buckets: [Bucket; BUCKETS],
}

impl Window {
    fn new(window_ns: u64) -> Window {
        Window {
            bucket_ns: (window_ns / BUCKETS as u64).max(1),
            buckets: Default::default(),
        }
    }

    fn record(&self, now: Nanos, tokens: u64, domestic: bool) {
        let n = now / self.bucket_ns;
        let b = &self.buckets[(n % BUCKETS as u64) as usize];
        let tag = b.tag.load(Relaxed);
        if tag < n + 1 && b.tag.compare_exchange(tag, n + 1, Relaxed, Relaxed).is_ok() {
            b.domestic.store(0, Relaxed);
            b.total.store(0, Relaxed);
        }
        if domestic {
            b.domestic.fetch_add(tokens, Relaxed);
        }
        b.total.fetch_add(tokens, Relaxed);
    }

    /// (domestic, total) tokens in the window ending at `now`.
    fn sums(&self, now: Nanos) -> (u64, u64) {
        let mut acc = (0, 0);
        self.for_each_suffix(now, |d, t| {
            acc = (d, t);
            true
        });
        acc
    }

    /// Calls `f` with the running (domestic, total) sums of the newest bucket, the newest
    /// two, … up to the whole window, stopping early when `f` returns false.
    fn for_each_suffix(&self, now: Nanos, mut f: impl FnMut(u64, u64) -> bool) {
        let n = now / self.bucket_ns;
        let (mut d, mut t) = (0u64, 0u64);
        for k in 0..BUCKETS as u64 {
            let Some(number) = n.checked_sub(k) else {
                break;
            };
            let b = &self.buckets[(number % BUCKETS as u64) as usize];
            if b.tag.load(Relaxed) == number + 1 {
                d += b.domestic.load(Relaxed);
                t += b.total.load(Relaxed);
            }
            if !f(d, t.max(d)) {
                return;
            }
        }
    }

    /// Whether `tokens` more foreign tokens keep the domestic share at or above `target`
    /// in every suffix of the window. Checking suffixes, not only the whole window, is
    /// what keeps the share up as old buckets slide out: whatever remains of the window
    /// later is one of today's suffixes, and each was kept at the target.
    fn foreign_allowed(&self, now: Nanos, tokens: u64, target: f64) -> bool {
        let mut ok = true;
        self.for_each_suffix(now, |d, t| {
            ok = d as f64 >= target * (t + tokens) as f64;
            ok
        });
        ok
    }
}

/// Keeps domestic chips' token share at or above a target.
pub struct DomesticShare {
    inner: Box<dyn Policy>,
    target: f64,
    window: Window,
}

impl std::fmt::Debug for DomesticShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomesticShare")
            .field("inner", &self.inner.name())
            .field("target", &self.target)
            .finish()
    }
}

/// The longest `window_s` accepted: 30 days.
pub const MAX_WINDOW_S: f64 = 2_592_000.0;

impl DomesticShare {
    pub fn new(inner: Box<dyn Policy>, target: f64, window_ns: Nanos) -> Self {
        DomesticShare {
            inner,
            target,
            window: Window::new(window_ns),
        }
    }

    pub fn from_params(table: &toml::Table, seed: u64) -> Result<Self, PolicyError> {
        let p: Params = params("domestic-share", table)?;
        if !(0.0..=1.0).contains(&p.target) {
            return Err(bad(
                "domestic-share",
                format!("target {} must be in [0, 1]", p.target),
            ));
        }
        // Bounded so the window's nanoseconds fit without the float cast saturating.
        if !(p.window_s > 0.0 && p.window_s <= MAX_WINDOW_S) {
            return Err(bad(
                "domestic-share",
                format!(
                    "window_s {} must be positive and at most {MAX_WINDOW_S} (30 days)",
                    p.window_s
                ),
            ));
        }
        if p.inner == "domestic-share" {
            return Err(bad(
                "domestic-share",
                "inner cannot itself be domestic-share",
            ));
        }
        let inner = build(&p.inner, &p.inner_params, seed)
            .map_err(|e| bad("domestic-share", format!("inner: {e}")))?;
        Ok(DomesticShare::new(
            inner,
            p.target,
            (p.window_s * NANOS_PER_SEC as f64) as Nanos,
        ))
    }

    /// Domestic share of tokens routed in the window ending at `now` (1.0 when empty).
    pub fn share(&self, now: Nanos) -> f64 {
        let (d, t) = self.window.sums(now);
        if t == 0 {
            1.0
        } else {
            d as f64 / t as f64
        }
    }
}

fn tokens(req: &Request) -> u64 {
    u64::from(req.prompt_tokens) + u64::from(req.max_tokens)
}

impl Policy for DomesticShare {
    fn name(&self) -> &'static str {
        "domestic-share"
    }

    /// As load-aware as the inner policy: its own window changes only in `on_routed`,
    /// never between two tries of one decision, so re-deciding a load-blind inner policy
    /// (which counts its turns, as round robin does) would only skip backends.
    fn reads_load(&self) -> bool {
        self.inner.reads_load()
    }

    fn pick(&self, req: &Request, view: &dyn LoadView, now: Nanos) -> Option<BackendId> {
        if !self.window.foreign_allowed(now, tokens(req), self.target) {
            let domestic = domestic_only(view);
            if let Some(b) = self.inner.pick(req, &domestic, now) {
                return Some(b);
            }
        }
        self.inner.pick(req, view, now)
    }

    /// As [`Policy::pick`], passing the domestic-only view down to the inner policy's
    /// route, so a disaggregated inner policy pairs domestic pools when the share needs
    /// it. A split route counts in the window by its decode backend, which produces the
    /// output tokens the window and the report count.
    fn pick_route(
        &self,
        req: &Request,
        view: &dyn LoadView,
        links: &LinkTable,
        now: Nanos,
    ) -> Option<Route> {
        if !self.window.foreign_allowed(now, tokens(req), self.target) {
            let domestic = domestic_only(view);
            if let Some(r) = self.inner.pick_route(req, &domestic, links, now) {
                return Some(r);
            }
        }
        self.inner.pick_route(req, view, links, now)
    }

    fn on_routed(&self, req: &Request, route: Route, view: &dyn LoadView, now: Nanos) {
        let m = view.membership();
        let domestic = m
            .backend(route.output_side())
            .and_then(|e| m.pool(e.pool))
            .is_some_and(|p| p.domestic);
        self.window.record(now, tokens(req), domestic);
        self.inner.on_routed(req, route, view, now);
    }

    fn on_finished(&self, req: &Request, backend: BackendId, output_tokens: u32, now: Nanos) {
        self.inner.on_finished(req, backend, output_tokens, now);
    }
}

/// `view` narrowed to the domestic pools.
fn domestic_only(view: &dyn LoadView) -> MaskedView<'_> {
    let mask = view
        .membership()
        .pools()
        .filter(|p| p.domestic)
        .map(|p| p.id)
        .collect();
    MaskedView { inner: view, mask }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::test_fleets::fast_and_slow;
    use crate::policy::testing::{req, run_fluid};
    use crate::policy::{LeastWork, Reach};

    #[test]
    fn holds_the_target_while_the_inner_policy_prefers_foreign_chips() {
        // least-work alone sends most work to the fast (foreign) pool.
        let n = 3000;
        let alone = run_fluid(
            &LeastWork::new(Reach::default(), 1),
            fast_and_slow(4),
            n,
            20_000_000,
        );
        assert!(alone[1] as f64 / (n as f64) < 0.4, "{alone:?}");
        for target in [0.3, 0.6, 0.9] {
            let p = DomesticShare::new(
                Box::new(LeastWork::new(Reach::default(), 1)),
                target,
                10 * NANOS_PER_SEC,
            );
            let per_pool = run_fluid(&p, fast_and_slow(4), n, 20_000_000);
            // Equal request sizes: the request share is the token share.
            let share = per_pool[1] as f64 / n as f64;
            assert!(
                share >= target - 0.01 && share < target + 0.1,
                "target {target}: {share} {per_pool:?}"
            );
            assert!(p.share((n - 1) * 20_000_000) >= target - 1e-9);
        }
    }

    #[test]
    fn holds_under_a_changing_mix_of_request_sizes() {
        let view = crate::fleet::PlainLoadView::new(fast_and_slow(2));
        let p = DomesticShare::new(
            Box::new(crate::policy::RoundRobin::new()),
            0.6,
            10 * NANOS_PER_SEC,
        );
        let mut window_ok = 0;
        for i in 0..5000u64 {
            let now = i * 10_000_000;
            // Phases of short, long, then mixed requests.
            let (prompt, out) = match (i / 1000) % 3 {
                0 => (100, 20),
                1 => (6000, 800),
                _ => (100 + (i % 7) as u32 * 900, 50 + (i % 5) as u32 * 200),
            };
            p.route(&req(i, prompt, out), &view, now).unwrap();
            if i > 200 && p.share(now) >= 0.6 - 1e-9 {
                window_ok += 1;
            }
        }
        assert_eq!(window_ok, 5000 - 201, "share fell below target");
    }

    #[test]
    fn over_a_load_blind_policy_it_is_never_re_decided() {
        let rr = || Box::new(crate::policy::RoundRobin::new());
        assert!(!DomesticShare::new(rr(), 0.6, NANOS_PER_SEC).reads_load());
        let lw = Box::new(LeastWork::new(Reach::default(), 1));
        assert!(DomesticShare::new(lw, 0.6, NANOS_PER_SEC).reads_load());
    }

    #[test]
    fn falls_back_when_no_domestic_backend_serves() {
        let mut view = crate::fleet::PlainLoadView::new(fast_and_slow(1));
        view.fail(BackendId(1)).unwrap();
        let p = DomesticShare::new(
            Box::new(crate::policy::RoundRobin::new()),
            1.0,
            NANOS_PER_SEC,
        );
        assert_eq!(p.route(&req(0, 10, 10), &view, 0), Some(BackendId(0)));
    }

    #[test]
    fn window_is_bounded() {
        let t = |s: &str| -> toml::Table { toml::from_str(s).unwrap() };
        assert!(DomesticShare::from_params(&t("window_s = 60"), 1).is_ok());
        for bad in [
            "window_s = 1e300",
            "window_s = inf",
            "window_s = 0",
            "window_s = -5",
        ] {
            let e = DomesticShare::from_params(&t(bad), 1)
                .expect_err(bad)
                .to_string();
            assert!(e.contains("at most 2592000"), "{bad}: {e}");
        }
    }
}
