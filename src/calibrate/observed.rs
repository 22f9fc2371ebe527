//! Points observed by the router: a proxied endpoint's clean observations, kept in bounded
//! memory and exported in the measured-points format `dujiang calibrate` reads, so a fleet
//! of real engines calibrates the catalogue from its own traffic. Only two kinds of sample
//! are clean enough to stand for an engine step: the time to first token of a request that
//! was alone on its endpoint from sending to first token (a single prefill of its prompt,
//! plus the network round trip), and the mean gap between one request's output tokens
//! with the mean count of requests streaming beside it as the batch. Samples fall into
//! power-of-two buckets (prompt length; batch and context); each bucket keeps its latest
//! few and exports their median, so memory stays bounded whatever the traffic.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

/// Samples kept per bucket (the latest win).
pub const PER_BUCKET: usize = 32;
/// Buckets kept per kind; samples for a new bucket beyond this are dropped.
pub const MAX_BUCKETS: usize = 64;

/// What the points describe: the stack the endpoint's pool is modelled as.
#[derive(Clone, Debug, PartialEq)]
pub struct Stack {
    pub chip: String,
    pub engine: String,
    pub model: String,
    pub tp: u32,
    pub dtype: String,
}

/// The latest samples of one bucket: (tokens the sample stands for, milliseconds).
#[derive(Clone, Debug, Default)]
struct Reservoir(VecDeque<(u64, f64)>);

impl Reservoir {
    fn push(&mut self, tokens: u64, ms: f64) {
        if self.0.len() == PER_BUCKET {
            self.0.pop_front();
        }
        self.0.push_back((tokens, ms));
    }

    /// Median tokens and median milliseconds (upper median on even counts).
    fn medians(&self) -> (u64, f64) {
        let mut t: Vec<u64> = self.0.iter().map(|s| s.0).collect();
        let mut v: Vec<f64> = self.0.iter().map(|s| s.1).collect();
        t.sort_unstable();
        v.sort_by(f64::total_cmp);
        (t[t.len() / 2], v[v.len() / 2])
    }
}

/// One endpoint's observations.
#[derive(Clone, Debug, Default)]
pub struct Observations {
    /// By prompt-length bucket.
    prefill: BTreeMap<u32, Reservoir>,
    /// By (batch, context bucket); the reservoir's tokens are contexts.
    decode: BTreeMap<(u64, u32), Reservoir>,
    /// Wall seconds (Unix) of the first and latest sample.
    window: Option<(u64, u64)>,
}

/// The bucket of `n`: the exponent of the smallest power of two ≥ n.
fn bucket(n: u64) -> u32 {
    n.max(1).next_power_of_two().trailing_zeros()
}

impl Observations {
    fn seen(&mut self, unix_s: u64) {
        let w = self.window.get_or_insert((unix_s, unix_s));
        w.0 = w.0.min(unix_s);
        w.1 = w.1.max(unix_s);
    }

    /// A request of `prompt_tokens` alone on the endpoint got its first token after
    /// `ttft_ms`.
    pub fn prefill(&mut self, prompt_tokens: u64, ttft_ms: f64, unix_s: u64) {
        if prompt_tokens == 0 || !(ttft_ms.is_finite() && ttft_ms > 0.0) {
            return;
        }
        let b = bucket(prompt_tokens);
        if self.prefill.len() >= MAX_BUCKETS && !self.prefill.contains_key(&b) {
            return;
        }
        self.prefill
            .entry(b)
            .or_default()
            .push(prompt_tokens, ttft_ms);
        self.seen(unix_s);
    }

    /// A request streamed with a mean gap of `per_token_ms` between output tokens, beside
    /// `batch` streaming requests (itself included) on average, at mean context `context`.
    pub fn decode(&mut self, batch: u64, context: u64, per_token_ms: f64, unix_s: u64) {
        if batch == 0 || context == 0 || !(per_token_ms.is_finite() && per_token_ms > 0.0) {
            return;
        }
        let key = (batch, bucket(context));
        if self.decode.len() >= MAX_BUCKETS && !self.decode.contains_key(&key) {
            return;
        }
        self.decode
            .entry(key)
            .or_default()
            .push(context, per_token_ms);
        self.seen(unix_s);
    }

    pub fn is_empty(&self) -> bool {
        self.window.is_none()
    }

    /// The observations as `[[point]]` tables: one per bucket, its medians as workload and
    /// value. `endpoint` is the API base; `router` names the router (its fleet).
    pub fn to_toml(&self, stack: &Stack, router: &str, endpoint: &str) -> String {
        let Some((from, to)) = self.window else {
            return String::new();
        };
        let slug: String = endpoint
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let head = |out: &mut String, id: String| {
            let _ = write!(
                out,
                "\n[[point]]\nid = {}\nchip = {}\nengine = {}\nmodel = {}\ntp = {}\ndtype = {}\n",
                quote(&id),
                quote(&stack.chip),
                quote(&stack.engine),
                quote(&stack.model),
                stack.tp,
                quote(&stack.dtype),
            );
        };
        let source = |n: usize, what: &str| {
            quote(&format!(
                "observed by dujiang router `{router}` at endpoint {endpoint}, unix time {from}..{to}: median of the latest {n} {what}"
            ))
        };
        let mut out = String::new();
        for (b, r) in &self.prefill {
            let (tokens, ms) = r.medians();
            head(&mut out, format!("obs-{slug}-prefill-{}", 1u64 << b));
            let _ = writeln!(
                out,
                "workload = \"prefill\"\ntokens = {tokens}\nmetric = \"prefill_ms\"\nvalue = {ms:.3}\nsource = {}",
                source(r.0.len(), "times to first token of a request alone on the endpoint (includes the network round trip)")
            );
        }
        for ((batch, b), r) in &self.decode {
            let (context, ms) = r.medians();
            head(
                &mut out,
                format!("obs-{slug}-decode-b{batch}-c{}", 1u64 << b),
            );
            let _ = writeln!(
                out,
                "workload = \"decode\"\nbatch = {batch}\ncontext = {context}\nmetric = \"step_ms\"\nvalue = {ms:.3}\nsource = {}",
                source(r.0.len(), "mean gaps between a request's output tokens, batch = mean requests streaming beside it")
            );
        }
        out
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(q, "\\u{:04X}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibrate::{parse_points, Metric, Workload};

    fn stack() -> Stack {
        Stack {
            chip: "ascend-910b".into(),
            engine: "vllm-ascend-0.18".into(),
            model: "llama-3-8b".into(),
            tp: 1,
            dtype: "bf16".into(),
        }
    }

    #[test]
    fn exports_bucket_medians_that_parse_as_points() {
        let mut o = Observations::default();
        assert_eq!(o.to_toml(&stack(), "r", "http://x/v1"), "");
        for (t, ms) in [(500, 40.0), (510, 42.0), (490, 90.0), (2000, 120.0)] {
            o.prefill(t, ms, 100);
        }
        o.decode(2, 600, 12.0, 105);
        o.decode(0, 600, 12.0, 106); // no batch: ignored
        let text = o.to_toml(&stack(), "r\"1", "http://127.0.0.1:8000/v1");
        let points = parse_points(&text, "observed").unwrap();
        assert_eq!(points.len(), 3);
        assert_eq!(points[0].workload, Workload::Prefill { tokens: 500 });
        assert_eq!(points[0].metric, Metric::PrefillMs);
        assert_eq!(points[0].value, 42.0);
        assert_eq!(
            points[2].workload,
            Workload::Decode {
                batch: 2,
                context: 600
            }
        );
        assert!(points[2].source.contains("http://127.0.0.1:8000/v1"));
        assert!(points[2].source.contains("100..105"));
    }

    #[test]
    fn memory_stays_bounded() {
        let mut o = Observations::default();
        for i in 0..10_000u64 {
            o.prefill(1 + i % 3000, 10.0, i);
            o.decode(1 + i, 100, 5.0, i);
        }
        assert!(o.prefill.values().all(|r| r.0.len() <= PER_BUCKET));
        assert_eq!(o.decode.len(), MAX_BUCKETS);
    }
}
